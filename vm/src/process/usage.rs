//! What the VMM process uses of the host, from getrusage (which needs no filesystem access,
//! which the jail does not give): its peak memory and its CPU time.

/// Peak resident set size of this process. The VMM's memory only grows, so the peak is
/// the current size; getrusage needs no filesystem access, which the jail does not give.
pub(crate) fn current_rss_bytes() -> u64 {
    rusage().map_or(0, |u| u.ru_maxrss.max(0) as u64 * 1024)
}

fn rusage() -> Option<libc::rusage> {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

/// CPU time (user + system) this process used so far, all threads, ended ones included.
pub(crate) fn cpu_time_ns() -> u64 {
    let ns =
        |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000_000 + t.tv_usec.max(0) as u64 * 1000;
    rusage().map_or(0, |u| ns(u.ru_utime) + ns(u.ru_stime))
}
