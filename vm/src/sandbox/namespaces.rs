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
//! Cgroup join by the waiter ([`enter_with_attach`]): attaching a task to a cgroup v1
//! hierarchy waits for an RCU grace period (the first `cgroup.procs` write of a burst took
//! ~5.6 ms here, the second ~0.03 ms). Given a [`ChildAttach`], the waiter writes the child's
//! pid into each `cgroup.procs` right after the fork while the child goes on, and reports
//! the outcome through a pipe; the child gets an [`AttachGate`] and must pass it before it
//! allocates anything sizeable (guest memory). A fork or a thread creation racing with the
//! attach is either moved with the process or inherits the new cgroup (the kernel's
//! threadgroup lock), so no thread of the child escapes.
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

/// Format `value` in decimal into `buf`; returns the length.
fn format_decimal(value: u32, buf: &mut [u8; 32]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = value;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    n
}

/// Format `"<id> <id> 1\n"` (an identity map of one id) into `buf`; returns the length.
/// No allocation: it runs in a forked child of a multi-threaded process.
fn format_id_map(id: u32, buf: &mut [u8; 32]) -> usize {
    let mut number = [0u8; 32];
    let n = format_decimal(id, &mut number);
    let mut len = 0;
    for _ in 0..2 {
        buf[len..len + n].copy_from_slice(&number[..n]);
        len += n;
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

/// `cgroup.procs` files the waiter moves the pid-1 child into, prepared before the fork.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildAttach {
    procs_files: Vec<std::ffi::CString>,
}

impl ChildAttach {
    /// Attach to `<dir>/cgroup.procs` for each dir. A path with a NUL byte is refused.
    pub fn new(dirs: &[std::path::PathBuf]) -> Option<Self> {
        let procs_files = dirs
            .iter()
            .map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .ok()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { procs_files })
    }

    /// Writes `pid` into every file; the first errno on failure. Raw syscalls only.
    fn attach(&self, pid: libc::pid_t) -> Result<(), i32> {
        let mut buf = [0u8; 32];
        let len = format_decimal(pid.unsigned_abs(), &mut buf);
        for path in &self.procs_files {
            write_small_file(path, &buf[..len])?;
        }
        Ok(())
    }
}

/// The child's side of a cgroup join done by the waiter: pass it before allocating guest
/// memory. Dropping it without [`wait`](Self::wait) leaves the join unchecked.
#[derive(Debug)]
pub struct AttachGate {
    fd: std::os::fd::OwnedFd,
}

/// Why the waiter's cgroup join did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    #[error("cgroup join by the pid-namespace waiter failed: writing cgroup.procs: errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Write { errno: i32 },
    #[error("the pid-namespace waiter exited before reporting the cgroup join")]
    WaiterGone,
    #[error("reading the cgroup join report from the waiter failed: errno {errno}")]
    Read { errno: i32 },
}

impl AttachGate {
    /// Blocks until the waiter reports; Ok once the process is in every cgroup.
    pub fn wait(self) -> Result<(), AttachError> {
        use std::os::fd::AsRawFd;
        let mut word = [0u8; 4];
        let mut len = 0;
        while len < word.len() {
            // SAFETY: reading into the unused tail of a stack buffer from our own fd.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    word[len..].as_mut_ptr().cast(),
                    word.len() - len,
                )
            };
            match n {
                0 => return Err(AttachError::WaiterGone),
                n if n < 0 && errno() == libc::EINTR => {}
                n if n < 0 => return Err(AttachError::Read { errno: errno() }),
                n => len += n as usize,
            }
        }
        match i32::from_ne_bytes(word) {
            0 => Ok(()),
            errno => Err(AttachError::Write { errno }),
        }
    }
}

/// In the waiter: attach the child and report the errno (0: joined) on `report_fd`.
fn waiter_attach(attach: &ChildAttach, child: libc::pid_t, report_fd: libc::c_int) {
    let code: i32 = match attach.attach(child) {
        Ok(()) => 0,
        Err(0) => libc::EIO,
        Err(e) => e,
    };
    let word = code.to_ne_bytes();
    // SAFETY: writing a 4-byte stack buffer to our own pipe end, then closing it. A pipe
    // write this small is atomic; if the child is gone the write fails and nobody cares.
    unsafe {
        libc::write(report_fd, word.as_ptr().cast(), word.len());
        libc::close(report_fd);
    }
}

fn close_pair(fds: [libc::c_int; 2]) {
    // SAFETY: closing our own fds (-1 entries are skipped).
    unsafe {
        for fd in fds {
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}

/// New pid namespace: fork, the child returns as pid 1, the parent becomes the waiter
/// (after attaching the child to its cgroup when asked).
fn enter_pid(attach: Option<&ChildAttach>) -> (Outcome, Option<AttachGate>) {
    if let Err(outcome) = unshare(Namespace::Pid) {
        return (outcome, None);
    }
    let failed_fork = |errno| Outcome::Failed {
        step: Step::Fork,
        errno,
    };
    // The waiter reports the cgroup join on this pipe: [child reads, waiter writes].
    let mut report = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if attach.is_some() && unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return (failed_fork(errno()), None);
    }
    // The waiter holds the write end until it exits, so the child can tell (POLLHUP) whether
    // it died before PR_SET_PDEATHSIG was armed. getppid() cannot: it is 0 across the
    // namespace boundary.
    let mut alive = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = errno();
        close_pair(report);
        return (failed_fork(e), None);
    }
    // SAFETY: the process is single-threaded (checked by `enter`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        close_pair(alive);
        close_pair(report);
        return (failed_fork(e), None);
    }
    if pid > 0 {
        close_pair([alive[0], report[0]]);
        if let Some(attach) = attach {
            waiter_attach(attach, pid, report[1]);
        }
        become_waiter(pid);
    }
    close_pair([report[1], -1]);
    // SAFETY: report[0] is the read end of the pipe made above, owned by nobody else.
    let gate = (report[0] >= 0).then(|| AttachGate {
        fd: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(report[0]) },
    });
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
    (Outcome::Entered, gate)
}

/// Whether the process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Enter the requested namespaces, best effort. See the module docs (single thread, pid
/// namespace fork).
pub fn enter(request: NamespaceRequest) -> Result<NamespaceReport, NamespaceError> {
    ensure_single_threaded()?;
    Ok(enter_single_threaded(request, None).0)
}

/// [`enter`], and if the pid namespace is entered with `attach` given, the waiter moves
/// the child into those cgroups: the gate says when that is done (see the module docs).
/// Without a fork there is no gate: the caller must join by itself. The user namespace
/// must not be requested (a non-root waiter in it could not write the host's cgroupfs).
pub fn enter_with_attach(
    request: NamespaceRequest,
    attach: &ChildAttach,
) -> Result<(NamespaceReport, Option<AttachGate>), NamespaceError> {
    ensure_single_threaded()?;
    Ok(enter_single_threaded(request, Some(attach)))
}

/// [`enter`] without the thread check, for callers that just made it (it reads
/// `/proc/self/status`, which is not free).
pub(crate) fn enter_single_threaded(
    request: NamespaceRequest,
    attach: Option<&ChildAttach>,
) -> (NamespaceReport, Option<AttachGate>) {
    let mut report = NamespaceReport::new();
    let mut gate = None;
    for ns in Namespace::ORDER {
        if !request.wants(ns) {
            continue;
        }
        let outcome = match ns {
            Namespace::User if is_root() => Outcome::NotNeededAsRoot,
            Namespace::User => enter_user(),
            Namespace::Mount => enter_mount(),
            Namespace::Pid => {
                let (outcome, pid_gate) = enter_pid(attach);
                gate = pid_gate;
                outcome
            }
            Namespace::Net | Namespace::Ipc | Namespace::Uts => match unshare(ns) {
                Ok(()) => Outcome::Entered,
                Err(outcome) => outcome,
            },
        };
        report.set(ns, outcome);
    }
    (report, gate)
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
    fn formats_decimal() {
        let mut buf = [0u8; 32];
        let len = format_decimal(0, &mut buf);
        assert_eq!(&buf[..len], b"0");
        let len = format_decimal(4_294_967_295, &mut buf);
        assert_eq!(&buf[..len], b"4294967295");
        let len = format_decimal(31337, &mut buf);
        assert_eq!(&buf[..len], b"31337");
    }

    /// The waiter moves the pid-1 child into the cgroup and the gate opens only then; the
    /// child checks its own /proc/self/cgroup after the gate.
    #[test]
    fn waiter_joins_the_child_to_its_cgroup() {
        use crate::sandbox::cgroup::{detect, CgroupLimits, VmCgroup};
        if !is_root() {
            eprintln!("skipped: cgroups and pid namespaces need root");
            return;
        }
        let Ok(layout) = detect() else {
            eprintln!("skipped: no usable cgroup hierarchy");
            return;
        };
        let name = format!("test-waiter-join-{}", std::process::id());
        let mut cgroup = VmCgroup::create(&layout, &name, &CgroupLimits::default()).unwrap();
        cgroup.kill_on_cleanup(true);
        let attach = ChildAttach::new(cgroup.dirs()).unwrap();
        let needle = format!("/novacron/{name}\n");
        let expected_lines = cgroup.dirs().len();
        let request = NamespaceRequest {
            pid: true,
            ..NamespaceRequest::default()
        };
        // SAFETY: fork; the child makes raw syscalls only (no allocation) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let (report, gate) = enter_single_threaded(request, Some(&attach));
            // SAFETY: (child) raw syscalls only, then _exit.
            unsafe {
                if !report.entered(Namespace::Pid) || libc::getpid() != 1 {
                    libc::_exit(20);
                }
                let Some(gate) = gate else { libc::_exit(21) };
                if gate.wait().is_err() {
                    libc::_exit(22);
                }
                let mut buf = [0u8; 4096];
                let Ok(len) = read_small_file(c"/proc/self/cgroup", &mut buf) else {
                    libc::_exit(23);
                };
                let lines = buf[..len]
                    .windows(needle.len())
                    .filter(|w| *w == needle.as_bytes())
                    .count();
                libc::_exit(if lines == expected_lines { 7 } else { 24 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child (the waiter).
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 7, "child reported a failure");
        cgroup.remove().unwrap();
    }

    #[test]
    fn gate_reports_a_failed_join_and_a_vanished_waiter() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let gate = AttachGate {
            // SAFETY: the read end was just made and is owned by nobody else.
            fd: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) },
        };
        let attach = ChildAttach::new(&["/nonexistent/novacron-cgroup".into()]).unwrap();
        waiter_attach(&attach, 1, fds[1]);
        assert_eq!(
            gate.wait(),
            Err(AttachError::Write {
                errno: libc::ENOENT
            })
        );

        // SAFETY: as above.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: as above; the write end is closed without a report.
        let gate = AttachGate {
            fd: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) },
        };
        // SAFETY: closing our own write end.
        unsafe { libc::close(fds[1]) };
        assert_eq!(gate.wait(), Err(AttachError::WaiterGone));
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
