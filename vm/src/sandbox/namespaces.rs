//! Best-effort entry into new Linux namespaces.
//!
//! [`enter`] must be called while the process is SINGLE-THREADED: the kernel refuses
//! `unshare(CLONE_NEWUSER | CLONE_NEWNS)` in a multi-threaded process, and a pid namespace
//! needs a `fork`. It checks `Threads:` in `/proc/self/status` and returns
//! [`NamespaceError::MultiThreaded`] otherwise.
//!
//! Each namespace is unshared on its own, so one the host forbids (e.g. `EPERM` without
//! `CAP_SYS_ADMIN`, `ENOSPC` at a namespace limit) does not stop the others; the
//! [`NamespaceReport`] says which were entered and why the rest were not.
//!
//! Everything here is raw syscalls on stack buffers (no allocation), so it may also run in a
//! forked child or a `pre_exec` hook.
//!
//! PID namespace: `unshare(CLONE_NEWPID)` only moves future children, and afterwards the
//! process may no longer create threads (`EINVAL` from `clone`). So [`enter`] forks: the
//! child continues as pid 1 of the new namespace (and returns), the original process stays
//! behind as a waiter that exits with the child's status (re-raising its fatal signal). The
//! pid the spawner knows is the waiter's; if the waiter dies, the child gets `SIGKILL`
//! (`PR_SET_PDEATHSIG`). `/proc` is not remounted, so it still shows the host's pids.
//!
//! Net namespace: the new namespace has only a down loopback; already-open sockets keep
//! working in their original namespace.

use std::fmt;

/// A namespace kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    User,
    Mount,
    Net,
    Ipc,
    Uts,
    Pid,
}

impl Namespace {
    /// Entry order: user first (it grants the capabilities for the rest), pid last (fork).
    pub const ORDER: [Namespace; 6] = [
        Namespace::User,
        Namespace::Mount,
        Namespace::Net,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Pid,
    ];

    fn clone_flag(self) -> libc::c_int {
        match self {
            Namespace::User => libc::CLONE_NEWUSER,
            Namespace::Mount => libc::CLONE_NEWNS,
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Pid => libc::CLONE_NEWPID,
        }
    }

    /// The name under `/proc/self/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Mount => "mnt",
            Namespace::Net => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Pid => "pid",
        }
    }
}

/// Which namespaces to enter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceRequest {
    /// New user namespace mapping the current uid/gid; only used when not root.
    pub user: bool,
    /// New mount namespace, then `/` made private recursively.
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    /// New pid namespace (forks; see the module docs).
    pub pid: bool,
}

impl NamespaceRequest {
    /// Every namespace.
    pub fn all() -> Self {
        Self {
            user: true,
            mount: true,
            net: true,
            ipc: true,
            uts: true,
            pid: true,
        }
    }

    /// Whether `ns` is requested.
    pub fn wants(&self, ns: Namespace) -> bool {
        match ns {
            Namespace::User => self.user,
            Namespace::Mount => self.mount,
            Namespace::Net => self.net,
            Namespace::Ipc => self.ipc,
            Namespace::Uts => self.uts,
            Namespace::Pid => self.pid,
        }
    }
}

/// The step of entering a namespace that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Unshare,
    /// `mount(None, "/", MS_REC | MS_PRIVATE)` after entering the mount namespace.
    MakeRootPrivate,
    /// Writing `/proc/self/setgroups`.
    Setgroups,
    /// Writing `/proc/self/uid_map`.
    UidMap,
    /// Writing `/proc/self/gid_map`.
    GidMap,
    /// Forking into the new pid namespace.
    Fork,
}

/// What happened to one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    NotRequested,
    Entered,
    /// Not needed: a user namespace is only created when not running as root.
    NotNeededAsRoot,
    /// The host refused; `errno` from `step`.
    Failed {
        step: Step,
        errno: i32,
    },
}

/// The outcome for every namespace, in [`Namespace::ORDER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceReport {
    outcomes: [(Namespace, Outcome); 6],
}

impl NamespaceReport {
    fn new() -> Self {
        Self {
            outcomes: Namespace::ORDER.map(|ns| (ns, Outcome::NotRequested)),
        }
    }

    fn set(&mut self, ns: Namespace, outcome: Outcome) {
        for slot in self.outcomes.iter_mut() {
            if slot.0 == ns {
                slot.1 = outcome;
            }
        }
    }

    /// The outcome of `ns`.
    pub fn outcome(&self, ns: Namespace) -> Outcome {
        self.outcomes
            .iter()
            .find(|(n, _)| *n == ns)
            .map_or(Outcome::NotRequested, |(_, o)| *o)
    }

    /// Whether `ns` was entered.
    pub fn entered(&self, ns: Namespace) -> bool {
        self.outcome(ns) == Outcome::Entered
    }

    /// All outcomes in entry order.
    pub fn outcomes(&self) -> &[(Namespace, Outcome)] {
        &self.outcomes
    }
}

impl fmt::Display for NamespaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("namespaces:")?;
        for (ns, outcome) in &self.outcomes {
            let name = ns.proc_name();
            match outcome {
                Outcome::NotRequested => write!(f, " {name}=not-requested")?,
                Outcome::Entered => write!(f, " {name}=entered")?,
                Outcome::NotNeededAsRoot => write!(f, " {name}=not-needed(root)")?,
                Outcome::Failed { step, errno } => write!(
                    f,
                    " {name}=failed({step:?}: {})",
                    std::io::Error::from_raw_os_error(*errno)
                )?,
            }
        }
        Ok(())
    }
}

/// Errors that stop [`enter`] before it changes anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error(
        "namespaces: the process has {threads} threads (/proc/self/status Threads:); \
         namespaces must be entered while single-threaded, before any thread is spawned"
    )]
    MultiThreaded { threads: u32 },
    #[error("namespaces: cannot read /proc/self/status (errno {errno})")]
    StatusUnreadable { errno: i32 },
    #[error("namespaces: /proc/self/status has no readable Threads: field")]
    StatusMalformed,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Read up to `buf.len()` bytes of a NUL-terminated path with raw syscalls.
fn read_small_file(path: &std::ffi::CStr, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: path is NUL-terminated; the fd is ours and closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reading into the unused tail of buf.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 {
            let e = errno();
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    Ok(len)
}

/// The `Threads:` value of a `/proc/<pid>/status` text.
fn parse_threads(status: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"Threads:";
    let start = status
        .split(|&b| b == b'\n')
        .find(|line| line.starts_with(KEY))?;
    let digits = start[KEY.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    let mut value: u32 = 0;
    let mut any = false;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// The number of threads of the calling process.
pub fn thread_count() -> Result<u32, NamespaceError> {
    let mut buf = [0u8; 8192];
    let len = read_small_file(c"/proc/self/status", &mut buf)
        .map_err(|errno| NamespaceError::StatusUnreadable { errno })?;
    parse_threads(&buf[..len]).ok_or(NamespaceError::StatusMalformed)
}

/// Fail unless the calling process has exactly one thread.
pub fn ensure_single_threaded() -> Result<(), NamespaceError> {
    match thread_count()? {
        1 => Ok(()),
        threads => Err(NamespaceError::MultiThreaded { threads }),
    }
}

fn unshare(ns: Namespace) -> Result<(), Outcome> {
    // SAFETY: unshare takes a flag word only.
    if unsafe { libc::unshare(ns.clone_flag()) } == 0 {
        Ok(())
    } else {
        Err(Outcome::Failed {
            step: Step::Unshare,
            errno: errno(),
        })
    }
}

/// Write all of `data` to `path` with raw syscalls.
fn write_small_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), i32> {
    // SAFETY: path is NUL-terminated; the fd is ours and closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: data is a valid slice; proc id-map files need a single write.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if n < 0 {
        Err(errno())
    } else if n as usize != data.len() {
        Err(libc::EIO)
    } else {
        Ok(())
    };
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    result
}

/// Format `"<id> <id> 1\n"` (an identity map of one id) into `buf`; returns the length.
fn format_id_map(id: u32, buf: &mut [u8; 32]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = id;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    for _ in 0..2 {
        for i in (0..n).rev() {
            buf[len] = digits[i];
            len += 1;
        }
        buf[len] = b' ';
        len += 1;
    }
    buf[len] = b'1';
    buf[len + 1] = b'\n';
    len + 2
}

/// New user namespace in which the current uid/gid map to themselves.
fn enter_user() -> Outcome {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if let Err(outcome) = unshare(Namespace::User) {
        return outcome;
    }
    let failed = |step, errno| Outcome::Failed { step, errno };
    if let Err(e) = write_small_file(c"/proc/self/setgroups", b"deny") {
        return failed(Step::Setgroups, e);
    }
    let mut buf = [0u8; 32];
    let len = format_id_map(uid, &mut buf);
    if let Err(e) = write_small_file(c"/proc/self/uid_map", &buf[..len]) {
        return failed(Step::UidMap, e);
    }
    let len = format_id_map(gid, &mut buf);
    if let Err(e) = write_small_file(c"/proc/self/gid_map", &buf[..len]) {
        return failed(Step::GidMap, e);
    }
    Outcome::Entered
}

/// New mount namespace with `/` made private so no mount leaks back to the host.
fn enter_mount() -> Outcome {
    if let Err(outcome) = unshare(Namespace::Mount) {
        return outcome;
    }
    // SAFETY: constant NUL-terminated strings; null fstype/data are allowed for MS_PRIVATE.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Outcome::Failed {
            step: Step::MakeRootPrivate,
            errno: errno(),
        };
    }
    Outcome::Entered
}

/// Wait for `child` and end this process the way it ended. Never returns.
fn become_waiter(child: libc::pid_t) -> ! {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc < 0 && errno() != libc::EINTR {
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(127) };
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restore the default action and re-raise so the spawner sees the same
        // signal; _exit is the fallback if the signal does not terminate us.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
    }
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// New pid namespace: fork, the child returns as pid 1, the parent becomes the waiter.
fn enter_pid() -> Outcome {
    if let Err(outcome) = unshare(Namespace::Pid) {
        return outcome;
    }
    // The waiter holds the write end until it exits, so the child can tell (POLLHUP) whether
    // it died before PR_SET_PDEATHSIG was armed. getppid() cannot: it is 0 across the
    // namespace boundary.
    let mut alive = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Outcome::Failed {
            step: Step::Fork,
            errno: errno(),
        };
    }
    // SAFETY: the process is single-threaded (checked by `enter`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(alive[0]);
            libc::close(alive[1]);
        }
        return Outcome::Failed {
            step: Step::Fork,
            errno: e,
        };
    }
    if pid > 0 {
        // SAFETY: closing our own read end.
        unsafe { libc::close(alive[0]) };
        become_waiter(pid);
    }
    // SAFETY: plain integer arguments and our own fds.
    unsafe {
        libc::close(alive[1]);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        let mut pfd = libc::pollfd {
            fd: alive[0],
            events: libc::POLLIN,
            revents: 0,
        };
        let polled = libc::poll(&mut pfd, 1, 0);
        libc::close(alive[0]);
        if polled != 0 {
            // The waiter is gone (hang-up) or poll failed: nobody would report our exit.
            libc::_exit(127);
        }
    }
    Outcome::Entered
}

/// Whether the process runs as root (effective uid 0).
fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Enter the requested namespaces, best effort. See the module docs (single thread, pid
/// namespace fork).
pub fn enter(request: NamespaceRequest) -> Result<NamespaceReport, NamespaceError> {
    ensure_single_threaded()?;
    let mut report = NamespaceReport::new();
    for ns in Namespace::ORDER {
        if !request.wants(ns) {
            continue;
        }
        let outcome = match ns {
            Namespace::User if is_root() => Outcome::NotNeededAsRoot,
            Namespace::User => enter_user(),
            Namespace::Mount => enter_mount(),
            Namespace::Pid => enter_pid(),
            Namespace::Net | Namespace::Ipc | Namespace::Uts => match unshare(ns) {
                Ok(()) => Outcome::Entered,
                Err(outcome) => outcome,
            },
        };
        report.set(ns, outcome);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_threads_field() {
        let status = b"Name:\tx\nState:\tR\nThreads:\t17\nSigQ:\t0/1\n";
        assert_eq!(parse_threads(status), Some(17));
        assert_eq!(parse_threads(b"Name:\tx\n"), None);
        assert_eq!(parse_threads(b"Threads:\t\n"), None);
        assert_eq!(parse_threads(b"Threads:\t99999999999\n"), None);
    }

    #[test]
    fn formats_identity_map() {
        let mut buf = [0u8; 32];
        let len = format_id_map(1000, &mut buf);
        assert_eq!(&buf[..len], b"1000 1000 1\n");
        let len = format_id_map(0, &mut buf);
        assert_eq!(&buf[..len], b"0 0 1\n");
        let len = format_id_map(u32::MAX, &mut buf);
        assert_eq!(&buf[..len], b"4294967295 4294967295 1\n");
    }

    #[test]
    fn refuses_when_multi_threaded() {
        // Keep a second thread alive so the check cannot pass even with --test-threads=1.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let result = enter(NamespaceRequest::all());
        drop(tx);
        helper.join().unwrap();
        match result {
            Err(NamespaceError::MultiThreaded { threads }) => assert!(threads >= 2),
            other => panic!("expected MultiThreaded, got {other:?}"),
        }
    }

    fn ns_inode(ns: &str) -> u64 {
        std::fs::metadata(format!("/proc/self/ns/{ns}"))
            .unwrap()
            .ino()
    }

    /// In the child: whether /proc/self/ns/<name> now has a different inode.
    ///
    /// # Safety
    /// Raw syscalls only.
    unsafe fn inode_changed(path: &std::ffi::CStr, before: u64) -> bool {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(path.as_ptr(), &mut st) == 0 && st.st_ino != before
    }

    #[test]
    fn forked_child_enters_new_namespaces() {
        if !is_root() {
            eprintln!("skipped: needs root to unshare mount/net/ipc/uts/pid namespaces");
            return;
        }
        let before = [
            ns_inode("mnt"),
            ns_inode("net"),
            ns_inode("ipc"),
            ns_inode("uts"),
            ns_inode("pid"),
        ];
        let paths = [
            c"/proc/self/ns/mnt",
            c"/proc/self/ns/net",
            c"/proc/self/ns/ipc",
            c"/proc/self/ns/uts",
        ];
        // SAFETY: fork; the child only calls `enter` (raw syscalls, no allocation) and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls only, then _exit.
            unsafe {
                let report = match enter(NamespaceRequest::all()) {
                    Ok(r) => r,
                    Err(_) => libc::_exit(20),
                };
                for (i, ns) in [
                    Namespace::Mount,
                    Namespace::Net,
                    Namespace::Ipc,
                    Namespace::Uts,
                ]
                .into_iter()
                .enumerate()
                {
                    if !report.entered(ns) {
                        libc::_exit(30 + i as i32);
                    }
                    if !inode_changed(paths[i], before[i]) {
                        libc::_exit(40 + i as i32);
                    }
                }
                if report.outcome(Namespace::User) != Outcome::NotNeededAsRoot {
                    libc::_exit(50);
                }
                if !report.entered(Namespace::Pid) {
                    libc::_exit(51);
                }
                // We are the forked pid-1 of the new namespace.
                if libc::getpid() != 1 {
                    libc::_exit(52);
                }
                libc::_exit(7);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child (the waiter).
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        // 7 comes from the pid-1 grandchild, forwarded by the waiter.
        assert_eq!(libc::WEXITSTATUS(status), 7, "child reported a failure");
        assert_eq!(
            ns_inode("net"),
            before[1],
            "parent namespace must not change"
        );
    }
}
