//! Per-thread seccomp allowlists for the `novacron vmm` process.
//!
//! The allowlist is the data table [`GROUPS`]: one entry per purpose, each naming the thread
//! kinds it applies to. To tune the list after an `strace -f` of a real VM, edit that table
//! and nothing else. Every syscall outside a thread's list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`), so the daemon sees its `novacron vmm` child die of `SIGSYS`.
//!
//! There is deliberately no switch (flag, env var) that disables the filters.
//!
//! What this cannot do: seccomp sees syscall numbers and register arguments only, so it
//! cannot check pointed-to data (paths, socket addresses) — landlock fences the filesystem.
//! Filters are inherited by threads created afterwards and stack: a vCPU thread spawned by a
//! filtered VMM thread runs under both filters, which is why every `Vcpu` rule is also a `Vmm`
//! rule (a unit test checks it).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The `_IOC_TYPE` byte of every KVM ioctl request (`KVMIO` in `linux/kvm.h`).
pub const KVM_IOCTL_TYPE: u8 = 0xAE;

/// Which thread of the VMM process a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Main/control thread: event loop, snapshot files, control socket, thread creation.
    Vmm,
    /// A vCPU thread: `KVM_RUN`, port I/O emulation, serial output to stdout.
    Vcpu,
}

impl ThreadKind {
    /// Every thread kind, in a fixed order.
    pub const ALL: [ThreadKind; 2] = [ThreadKind::Vmm, ThreadKind::Vcpu];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThreadKind::Vmm => f.write_str("vmm"),
            ThreadKind::Vcpu => f.write_str("vcpu"),
        }
    }
}

/// A condition on a syscall's register arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgMatch {
    /// Any arguments.
    Any,
    /// `ioctl` whose request (arg 1) has this `_IOC_TYPE` byte (bits 8..16).
    IoctlType(u8),
    /// Argument `arg` (0-based) equals `value` (compared as 32 bits).
    Equals { arg: u8, value: u64 },
}

/// One allowed syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The libc constant name, e.g. `SYS_openat`.
    pub constant: &'static str,
    /// The syscall number on this architecture.
    pub nr: i64,
    /// Which arguments are allowed.
    pub args: ArgMatch,
}

impl Allowed {
    /// The syscall name as strace prints it (`openat`).
    pub fn name(&self) -> &'static str {
        self.constant.trim_start_matches("SYS_")
    }
}

/// A group of syscalls allowed for one purpose on some thread kinds.
#[derive(Clone, Copy, Debug)]
pub struct SyscallGroup {
    /// Why these are needed (shown in logs and docs).
    pub purpose: &'static str,
    /// The thread kinds this group is allowed on.
    pub threads: &'static [ThreadKind],
    /// The syscalls.
    pub syscalls: &'static [Allowed],
}

impl SyscallGroup {
    fn applies_to(&self, kind: ThreadKind) -> bool {
        self.threads.contains(&kind)
    }
}

macro_rules! sys {
    ($nr:ident) => {
        Allowed {
            constant: stringify!($nr),
            nr: libc::$nr,
            args: ArgMatch::Any,
        }
    };
    ($nr:ident, $args:expr) => {
        Allowed {
            constant: stringify!($nr),
            nr: libc::$nr,
            args: $args,
        }
    };
}

const BOTH: &[ThreadKind] = &[ThreadKind::Vmm, ThreadKind::Vcpu];
const VMM_ONLY: &[ThreadKind] = &[ThreadKind::Vmm];

/// THE allowlist. Tune it here (and only here) from `strace -f -c novacron vmm ...`.
/// x86_64-only syscalls (legacy `poll`, `epoll_wait`, `renameat`) sit in [`LEGACY_X86_64`].
pub const GROUPS: &[SyscallGroup] = &[
    SyscallGroup {
        purpose: "I/O on already-open fds: serial to stdout, eventfds, disk images",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_read),
            sys!(SYS_write),
            sys!(SYS_readv),
            sys!(SYS_writev),
            sys!(SYS_pread64),
            sys!(SYS_pwrite64),
            // A vCPU thread may drop (close) its own vCPU fd or eventfds when it ends.
            sys!(SYS_close),
            // ... and std (built with debug assertions) checks that a descriptor is open
            // before it closes it: fcntl(fd, F_GETFD), which only reads the fd's flags.
            sys!(
                SYS_fcntl,
                ArgMatch::Equals {
                    arg: 1,
                    value: libc::F_GETFD as u64
                }
            ),
        ],
    },
    SyscallGroup {
        purpose: "KVM ioctls (type 0xAE) on /dev/kvm, the VM fd and vCPU fds",
        threads: BOTH,
        syscalls: &[sys!(SYS_ioctl, ArgMatch::IoctlType(KVM_IOCTL_TYPE))],
    },
    SyscallGroup {
        purpose: "terminal ioctls of a process writing stdout (isatty, non-blocking stdin)",
        threads: BOTH,
        syscalls: &[
            sys!(
                SYS_ioctl,
                ArgMatch::Equals {
                    arg: 1,
                    value: libc::TCGETS
                }
            ),
            sys!(
                SYS_ioctl,
                ArgMatch::Equals {
                    arg: 1,
                    value: libc::FIONBIO
                }
            ),
        ],
    },
    SyscallGroup {
        purpose: "memory: allocator, thread stacks, guest memory housekeeping",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_mmap),
            sys!(SYS_munmap),
            sys!(SYS_mprotect),
            sys!(SYS_madvise),
            sys!(SYS_mremap),
            sys!(SYS_brk),
        ],
    },
    SyscallGroup {
        purpose: "locks and scheduling",
        threads: BOTH,
        syscalls: &[sys!(SYS_futex), sys!(SYS_sched_yield)],
    },
    SyscallGroup {
        purpose: "signals: vCPU kick handler, masks, handler return, alternate stacks",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_rt_sigaction),
            sys!(SYS_rt_sigprocmask),
            sys!(SYS_rt_sigreturn),
            sys!(SYS_sigaltstack),
        ],
    },
    SyscallGroup {
        purpose: "vCPU kicks (signal a vCPU thread out of KVM_RUN) and identity",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_tgkill),
            sys!(SYS_tkill),
            sys!(SYS_getpid),
            sys!(SYS_gettid),
        ],
    },
    SyscallGroup {
        purpose: "time (when the vDSO falls back to the syscall) and sleeps",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_clock_gettime),
            sys!(SYS_clock_nanosleep),
            sys!(SYS_nanosleep),
        ],
    },
    SyscallGroup {
        purpose: "event loop: epoll, ppoll, eventfds, timerfds",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_epoll_create1),
            sys!(SYS_epoll_ctl),
            sys!(SYS_epoll_pwait),
            sys!(SYS_epoll_pwait2),
            sys!(SYS_ppoll),
            sys!(SYS_eventfd2),
            sys!(SYS_timerfd_create),
            sys!(SYS_timerfd_settime),
            sys!(SYS_timerfd_gettime),
        ],
    },
    SyscallGroup {
        purpose: "thread and process lifetime (glibc/std thread start and exit)",
        threads: BOTH,
        syscalls: &[
            sys!(SYS_exit),
            sys!(SYS_exit_group),
            sys!(SYS_rseq),
            sys!(SYS_set_robust_list),
            sys!(SYS_getrandom),
            sys!(SYS_restart_syscall),
            // std names a new thread from inside it, i.e. under the inherited Vmm filter.
            sys!(
                SYS_prctl,
                ArgMatch::Equals {
                    arg: 0,
                    value: libc::PR_SET_NAME as u64
                }
            ),
        ],
    },
    SyscallGroup {
        purpose: "files: snapshots, state, disk images (paths fenced by landlock)",
        threads: VMM_ONLY,
        syscalls: &[
            sys!(SYS_openat),
            sys!(SYS_fstat),
            sys!(SYS_newfstatat),
            sys!(SYS_statx),
            sys!(SYS_lseek),
            sys!(SYS_fsync),
            sys!(SYS_fdatasync),
            // A chunk-store batch (chunks kept after a move, or received) makes all its temp
            // files durable with one syncfs of the store's file system instead of one
            // fdatasync per chunk (mesh/src/chunks/store.rs, `sync_temps`).
            sys!(SYS_syncfs),
            sys!(SYS_ftruncate),
            sys!(SYS_renameat2),
            // The chunk store publishes a chunk by hard-linking its temp file.
            sys!(SYS_linkat),
            sys!(SYS_unlinkat),
            sys!(SYS_mkdirat),
            sys!(SYS_getdents64),
            sys!(SYS_fcntl),
            // Snapshot directories are locked against a second writer.
            sys!(SYS_flock),
        ],
    },
    SyscallGroup {
        purpose: "thread creation: vCPU threads, hashing pool",
        threads: VMM_ONLY,
        syscalls: &[
            sys!(SYS_clone),
            sys!(SYS_clone3),
            // std::thread::available_parallelism (rayon pool sizing).
            sys!(SYS_sched_getaffinity),
        ],
    },
    SyscallGroup {
        purpose: "process statistics reported to the parent (resident memory)",
        threads: VMM_ONLY,
        syscalls: &[sys!(SYS_getrusage)],
    },
    SyscallGroup {
        purpose: "a thread spawned under this filter installs its own (stacked) vCPU filter",
        threads: VMM_ONLY,
        syscalls: &[
            sys!(
                SYS_prctl,
                ArgMatch::Equals {
                    arg: 0,
                    value: libc::PR_SET_NO_NEW_PRIVS as u64
                }
            ),
            sys!(
                SYS_seccomp,
                ArgMatch::Equals {
                    arg: 0,
                    value: libc::SECCOMP_SET_MODE_FILTER as u64
                }
            ),
        ],
    },
    SyscallGroup {
        purpose: "already-open sockets: control channel, migration stream (no socket/connect/bind)",
        threads: VMM_ONLY,
        syscalls: &[
            sys!(SYS_sendmsg),
            sys!(SYS_recvmsg),
            sys!(SYS_sendto),
            sys!(SYS_recvfrom),
            // Unblocking migration readers when a migration ends.
            sys!(SYS_shutdown),
        ],
    },
    SyscallGroup {
        purpose: "an adoptable VMM accepts its next owner on the inherited adopt listener only",
        threads: VMM_ONLY,
        syscalls: &[sys!(
            SYS_accept4,
            ArgMatch::Equals {
                arg: 0,
                value: crate::process::launcher::ADOPT_FD as u64
            }
        )],
    },
];

/// Syscalls that exist on x86_64 but not on newer architectures.
#[cfg(target_arch = "x86_64")]
pub const LEGACY_X86_64: &[SyscallGroup] = &[
    SyscallGroup {
        purpose: "event loop: legacy poll and epoll_wait",
        threads: BOTH,
        syscalls: &[sys!(SYS_poll), sys!(SYS_epoll_wait)],
    },
    SyscallGroup {
        purpose: "files: legacy path calls glibc still uses for rename(3), unlink(3), mkdir(3)",
        threads: VMM_ONLY,
        syscalls: &[
            sys!(SYS_rename),
            sys!(SYS_renameat),
            sys!(SYS_unlink),
            sys!(SYS_mkdir),
        ],
    },
];

/// Syscalls that exist on x86_64 but not on newer architectures.
#[cfg(not(target_arch = "x86_64"))]
pub const LEGACY_X86_64: &[SyscallGroup] = &[];

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: this architecture ({arch}) has no seccomp filter support in seccompiler")]
    UnsupportedArch {
        arch: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: building the {kind} filter failed")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: invalid argument condition on {syscall} for the {kind} filter")]
    Condition {
        kind: ThreadKind,
        syscall: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: installing the {kind} filter on thread {tid} failed")]
    Install {
        kind: ThreadKind,
        tid: i64,
        #[source]
        source: seccompiler::Error,
    },
}

/// Every group (portable and architecture-specific) that applies to `kind`.
fn groups_for(kind: ThreadKind) -> impl Iterator<Item = &'static SyscallGroup> {
    GROUPS
        .iter()
        .chain(LEGACY_X86_64.iter())
        .filter(move |g| g.applies_to(kind))
}

/// Every syscall allowed on `kind`, in table order (duplicates for per-argument rules).
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<Allowed> {
    groups_for(kind)
        .flat_map(|g| g.syscalls.iter().copied())
        .collect()
}

/// The seccompiler rule for one argument condition (`None` = unconditional).
fn rule_for(kind: ThreadKind, allowed: &Allowed) -> Result<Option<SeccompRule>, SeccompError> {
    let condition = match allowed.args {
        ArgMatch::Any => return Ok(None),
        ArgMatch::IoctlType(ty) => SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xFF00),
            u64::from(ty) << 8,
        ),
        ArgMatch::Equals { arg, value } => {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        }
    };
    let wrap = |source| SeccompError::Condition {
        kind,
        syscall: allowed.name(),
        source,
    };
    let condition = condition.map_err(wrap)?;
    SeccompRule::new(vec![condition]).map(Some).map_err(wrap)
}

/// The per-syscall rule map for `kind`: an empty rule list means "any arguments".
fn rule_map(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = std::collections::BTreeSet::new();
    for allowed in allowed_syscalls(kind) {
        match rule_for(kind, &allowed)? {
            None => {
                unconditional.insert(allowed.nr);
            }
            Some(rule) => rules.entry(allowed.nr).or_default().push(rule),
        }
    }
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    Ok(rules)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    let arch = std::env::consts::ARCH;
    TargetArch::try_from(arch).map_err(|source| SeccompError::UnsupportedArch { arch, source })
}

/// Compile the BPF program for one thread kind.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rule_map(kind)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(|source| SeccompError::Build { kind, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Build { kind, source })
}

/// The compiled filters of every thread kind. Compile them before dropping privileges or
/// entering the landlock domain (compilation allocates; installing does not).
#[derive(Clone, Debug)]
pub struct SeccompFilters {
    vmm: Arc<BpfProgram>,
    vcpu: Arc<BpfProgram>,
}

impl SeccompFilters {
    /// Compile the filters of all thread kinds.
    pub fn compile() -> Result<Self, SeccompError> {
        Ok(Self {
            vmm: Arc::new(compile(ThreadKind::Vmm)?),
            vcpu: Arc::new(compile(ThreadKind::Vcpu)?),
        })
    }

    /// The compiled program of `kind`.
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
        }
    }

    /// Install the `kind` filter on the calling thread only (and the threads it creates
    /// later). Sets `PR_SET_NO_NEW_PRIVS` first. Irreversible.
    ///
    /// On success this makes only the `prctl` and `seccomp` syscalls and does not allocate,
    /// so it may be called in a forked child.
    pub fn apply_to_current_thread(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.program(kind)).map_err(|source| SeccompError::Install {
            kind,
            // SAFETY: gettid has no arguments and cannot fail.
            tid: unsafe { libc::syscall(libc::SYS_gettid) },
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn vcpu_rules_are_a_subset_of_vmm_rules() {
        // A vCPU thread spawned from a filtered VMM thread runs under both filters.
        let vmm: HashSet<(i64, ArgMatchKey)> = allowed_syscalls(ThreadKind::Vmm)
            .iter()
            .map(|a| (a.nr, key(a.args)))
            .collect();
        for a in allowed_syscalls(ThreadKind::Vcpu) {
            assert!(
                vmm.contains(&(a.nr, key(a.args))),
                "{} ({:?}) is allowed on vcpu but not on vmm",
                a.name(),
                a.args
            );
        }
    }

    type ArgMatchKey = (u8, u8, u64);
    fn key(m: ArgMatch) -> ArgMatchKey {
        match m {
            ArgMatch::Any => (0, 0, 0),
            ArgMatch::IoctlType(t) => (1, t, 0),
            ArgMatch::Equals { arg, value } => (2, arg, value),
        }
    }

    #[test]
    fn forbidden_calls_are_not_in_any_list() {
        for kind in ThreadKind::ALL {
            let names: Vec<&str> = allowed_syscalls(kind).iter().map(|a| a.name()).collect();
            for bad in [
                "socket", "connect", "bind", "listen", "accept", "ptrace", "execve", "open",
                "mount", "unshare", "setns", "kill",
            ] {
                assert!(!names.contains(&bad), "{bad} must not be allowed on {kind}");
            }
        }
    }

    #[test]
    fn accept4_only_on_the_adopt_listener_and_only_on_vmm_threads() {
        let only_adopt_fd = ArgMatch::Equals {
            arg: 0,
            value: crate::process::launcher::ADOPT_FD as u64,
        };
        let accepts: Vec<Allowed> = allowed_syscalls(ThreadKind::Vmm)
            .into_iter()
            .filter(|a| a.name() == "accept4")
            .collect();
        assert_eq!(accepts.len(), 1);
        assert_eq!(accepts[0].args, only_adopt_fd);
        assert!(!allowed_syscalls(ThreadKind::Vcpu)
            .iter()
            .any(|a| a.name() == "accept4"));
    }

    #[test]
    fn vcpu_has_no_file_or_socket_or_clone_calls() {
        let names: Vec<&str> = allowed_syscalls(ThreadKind::Vcpu)
            .iter()
            .map(|a| a.name())
            .collect();
        for vmm_only in [
            "openat", "unlinkat", "clone", "clone3", "sendmsg", "recvfrom",
        ] {
            assert!(!names.contains(&vmm_only), "{vmm_only} allowed on vcpu");
        }
        assert!(names.contains(&"ioctl"));
        assert!(names.contains(&"write"));
    }

    #[test]
    fn ioctl_has_only_conditional_rules() {
        for kind in ThreadKind::ALL {
            let map = rule_map(kind).unwrap();
            let ioctl = map.get(&libc::SYS_ioctl).expect("ioctl present");
            assert_eq!(ioctl.len(), 3, "KVM type + TCGETS + FIONBIO on {kind}");
            assert!(map.get(&libc::SYS_write).is_some_and(|r| r.is_empty()));
        }
    }

    #[test]
    fn filters_compile_for_every_kind() {
        let filters = SeccompFilters::compile().unwrap();
        for kind in ThreadKind::ALL {
            assert!(!filters.program(kind).is_empty());
        }
        assert!(filters.program(ThreadKind::Vmm).len() > filters.program(ThreadKind::Vcpu).len());
    }

    /// What a forked child does after installing its filter.
    #[derive(Clone, Copy)]
    enum ChildAction {
        AllowedOnly,
        KvmIoctlOnBadFd,
        Socket,
        Ptrace,
        Tiocsti,
        Openat,
        /// accept4 on the adopt fd (allowed: EBADF) and then on fd 5 (forbidden).
        AcceptAdoptThenOther,
        AcceptAdoptOnly,
    }

    /// Fork; in the child install `kind`'s filter and run `action` with raw syscalls only.
    /// Returns the child's wait status.
    fn run_filtered_child(filters: &SeccompFilters, kind: ThreadKind, action: ChildAction) -> i32 {
        let path = c"/dev/null";
        // SAFETY: fork in a multi-threaded test: the child only makes raw syscalls and exits
        // with _exit; the filter was compiled before forking.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls on constant arguments, then _exit.
            unsafe {
                if filters.apply_to_current_thread(kind).is_err() {
                    libc::_exit(90);
                }
                let _ = libc::getpid();
                let _ = libc::write(-1, path.as_ptr().cast(), 1);
                match action {
                    ChildAction::AllowedOnly => {}
                    ChildAction::KvmIoctlOnBadFd => {
                        // KVM_GET_API_VERSION = _IO(0xAE, 0x00); EBADF, but allowed.
                        let _ = libc::ioctl(-1, 0xAE00);
                    }
                    ChildAction::Socket => {
                        let _ = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    }
                    ChildAction::Ptrace => {
                        let _ = libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                    }
                    ChildAction::Tiocsti => {
                        let c = 0u8;
                        let _ = libc::ioctl(0, libc::TIOCSTI, &c);
                    }
                    ChildAction::Openat => {
                        let _ = libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY);
                    }
                    ChildAction::AcceptAdoptOnly | ChildAction::AcceptAdoptThenOther => {
                        let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
                        let nb = libc::SOCK_NONBLOCK;
                        let _ = libc::accept4(crate::process::launcher::ADOPT_FD, addr, len, nb);
                        if matches!(action, ChildAction::AcceptAdoptThenOther) {
                            let _ = libc::accept4(
                                crate::process::launcher::ADOPT_FD + 1,
                                addr,
                                len,
                                nb,
                            );
                        }
                    }
                }
                libc::_exit(0);
            }
        }
        wait_for(pid)
    }

    fn wait_for(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid, "waitpid");
        status
    }

    fn killed_by_sigsys(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    fn exited_zero(status: i32) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[test]
    fn allowed_calls_survive_the_vcpu_filter() {
        let filters = SeccompFilters::compile().unwrap();
        for action in [ChildAction::AllowedOnly, ChildAction::KvmIoctlOnBadFd] {
            let status = run_filtered_child(&filters, ThreadKind::Vcpu, action);
            assert!(exited_zero(status), "status {status:#x}");
        }
    }

    #[test]
    fn forbidden_calls_kill_the_process_with_sigsys() {
        let filters = SeccompFilters::compile().unwrap();
        for (kind, action) in [
            (ThreadKind::Vcpu, ChildAction::Socket),
            (ThreadKind::Vcpu, ChildAction::Ptrace),
            (ThreadKind::Vcpu, ChildAction::Tiocsti),
            (ThreadKind::Vcpu, ChildAction::Openat),
            (ThreadKind::Vmm, ChildAction::Socket),
            (ThreadKind::Vmm, ChildAction::Tiocsti),
            (ThreadKind::Vmm, ChildAction::AcceptAdoptThenOther),
            (ThreadKind::Vcpu, ChildAction::AcceptAdoptOnly),
        ] {
            let status = run_filtered_child(&filters, kind, action);
            assert!(killed_by_sigsys(status), "{kind}: status {status:#x}");
        }
    }

    #[test]
    fn vmm_filter_allows_files() {
        let filters = SeccompFilters::compile().unwrap();
        let status = run_filtered_child(&filters, ThreadKind::Vmm, ChildAction::Openat);
        assert!(exited_zero(status), "status {status:#x}");
        let status = run_filtered_child(&filters, ThreadKind::Vmm, ChildAction::AcceptAdoptOnly);
        assert!(exited_zero(status), "status {status:#x}");
    }
}
