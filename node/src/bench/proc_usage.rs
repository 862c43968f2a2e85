//! What processes cost the machine, read from /proc: CPU time and resident memory.

use anyhow::Context;

/// CPU time of process `pid` so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let ticks =
        parse_cpu_ticks(&stat).with_context(|| format!("no CPU times in /proc/{pid}/stat"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// The clock ticks per second of /proc's times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line.
fn parse_cpu_ticks(stat: &[u8]) -> Option<u64> {
    let utime = novacron_vm::process::adopt::stat_field(stat, 14)?;
    let stime = novacron_vm::process::adopt::stat_field(stat, 15)?;
    Some(utime + stime)
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The peak resident set of process `pid` so far (its high-water mark), in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_past_a_name_with_parentheses() {
        let line =
            b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 900 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(42));
        assert_eq!(parse_cpu_ticks(b"4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks(b"no parenthesis"), None);
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(me).unwrap() >= before);
        assert!(rss_kib(me).unwrap() > 100);
    }
}
