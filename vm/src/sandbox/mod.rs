//! The jail of one `novacron vmm` process: cgroup, rlimits, namespaces, landlock, seccomp.
//!
//! A misbehaving guest or VMM must die alone: the memory limit OOM-kills inside the VM's
//! cgroup, a syscall outside the allowlist kills the process with `SIGSYS`, and the daemon
//! sees its child exit with a clear status.
//!
//! # Ordering (the integrator must follow it)
//!
//! 1. [`Sandbox::prepare`] in the `novacron vmm` process, early, before it spawns any thread:
//!    compiles the seccomp filters (allocates), creates the cgroup (writes `/sys/fs/cgroup`),
//!    opens every landlock rule path. Open `/dev/kvm`, disk images and sockets now too if
//!    you can: files opened before step 2 are not subject to landlock.
//! 2. [`Sandbox::enter_process_wide`] while still SINGLE-THREADED (checked: `Threads:` in
//!    `/proc/self/status`), in this order: set rlimits, unshare namespaces (a pid namespace
//!    forks: see [`namespaces`]), join the cgroup, enforce landlock. Landlock binds this
//!    thread and every thread created afterwards.
//!    When the pid namespace forks (and no user namespace is needed), the cgroup join is
//!    done by the waiter, in parallel with the child, because a cgroup v1 attach waits for
//!    an RCU grace period (~5.6 ms measured). The child then holds a pending
//!    [`CgroupJoin`] (see [`Sandbox::take_cgroup_join`]) and MUST [`CgroupJoin::wait`] it
//!    before touching guest memory or running the guest: until then only the VMM's small
//!    startup allocations (KVM VM, memslot metadata, irqchip, PIT, vCPUs, thread stacks)
//!    are charged to the spawner's cgroup instead of the VM's. Dropping a pending join without waiting is a
//!    bug: the limits would hold only if the waiter happened to succeed.
//! 3. Every thread calls [`Sandbox::apply_thread_filter`] (or
//!    [`SeccompFilters::apply_to_current_thread`] on a clone from [`Sandbox::filters`]) with
//!    its [`ThreadKind`] before touching guest input. Filters stack with the inherited ones:
//!    a vCPU thread spawned after the main thread applied the `Vmm` filter runs under both.
//!
//! The cgroup: the process that joined its cgroup cannot remove it; after step 2 the sandbox
//! no longer removes it on drop. The spawner removes it after the VMM exits with
//! `VmCgroup::open(&cgroup::detect()?, name)?` then `kill_on_cleanup(true)` and `remove()`.
//!
//! There is no switch that turns the sandbox off.

pub mod cgroup;
pub mod landlock;
pub mod namespaces;
pub mod rlimits;
pub mod seccomp;
mod store_under_jail;

use std::fmt;
use std::path::PathBuf;

pub use self::cgroup::{CgroupError, CgroupLayout, CgroupLimits, VmCgroup};
pub use self::landlock::{FsAccess, FsRule, LandlockError, LandlockReport};
pub use self::namespaces::{AttachError, NamespaceError, NamespaceReport, NamespaceRequest};
pub use self::rlimits::{RlimitError, RlimitPolicy, RlimitReport};
pub use self::seccomp::{SeccompError, SeccompFilters, ThreadKind};

/// Everything the jail of one VM should do.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxPolicy {
    /// Name of the VM's cgroup (`novacron/<vm_name>`): 1-64 chars of `[A-Za-z0-9_.-]`.
    pub vm_name: String,
    /// The only paths the VMM may reach after step 2 (empty: no filesystem at all).
    pub fs_rules: Vec<FsRule>,
    /// Also deny TCP (and, on newer kernels, UDP) bind/connect through landlock.
    pub deny_network: bool,
    pub rlimits: RlimitPolicy,
    pub namespaces: NamespaceRequest,
    /// Create a cgroup with these limits (`None`: no cgroup).
    pub cgroup: Option<CgroupLimits>,
}

impl SandboxPolicy {
    /// A policy with every namespace, default rlimits, no network, no filesystem and no
    /// cgroup; add `fs_rules` and `cgroup` limits for the VM.
    pub fn new(vm_name: impl Into<String>) -> Self {
        Self {
            vm_name: vm_name.into(),
            fs_rules: Vec::new(),
            deny_network: true,
            rlimits: RlimitPolicy::default(),
            namespaces: NamespaceRequest::all(),
            cgroup: None,
        }
    }
}

/// Errors of any sandbox step; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: compiling seccomp filters")]
    Seccomp(#[from] SeccompError),
    #[error("sandbox: cgroup step")]
    Cgroup(#[from] CgroupError),
    #[error("sandbox: rlimit step")]
    Rlimits(#[from] RlimitError),
    #[error("sandbox: namespace step")]
    Namespaces(#[from] NamespaceError),
    #[error("sandbox: landlock step")]
    Landlock(#[from] LandlockError),
    #[error("sandbox: enter_process_wide was already called for VM {vm_name:?}")]
    AlreadyEntered { vm_name: String },
    #[error("sandbox: joining the VM cgroup {dirs:?}")]
    CgroupJoin {
        dirs: Vec<PathBuf>,
        #[source]
        source: AttachError,
    },
}

/// The VM cgroup join, possibly still under way in the pid-namespace waiter. Wait for it
/// before guest memory is mapped (see the module docs).
#[derive(Debug)]
pub struct CgroupJoin {
    pending: Option<namespaces::AttachGate>,
    dirs: Vec<PathBuf>,
}

impl CgroupJoin {
    /// A join that is already complete (or no cgroup at all).
    pub fn done() -> Self {
        Self {
            pending: None,
            dirs: Vec::new(),
        }
    }

    /// Whether [`wait`](Self::wait) would block on the waiter.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Blocks until the process is in its cgroup; an error means it is not, and the VM
    /// must not start. Later calls return at once.
    pub fn wait(&mut self) -> Result<(), SandboxError> {
        let Some(gate) = self.pending.take() else {
            return Ok(());
        };
        gate.wait().map_err(|source| SandboxError::CgroupJoin {
            dirs: self.dirs.clone(),
            source,
        })
    }
}

/// Where the VMM's cgroup is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupReport {
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
    /// The join is done by the pid-namespace waiter (see [`CgroupJoin`]).
    pub joined_by_waiter: bool,
}

/// What [`Sandbox::enter_process_wide`] applied. Log it (`Display` is one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    pub cgroup: Option<CgroupReport>,
    pub rlimits: RlimitReport,
    pub namespaces: NamespaceReport,
    pub landlock: LandlockReport,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cgroup {
            Some(c) => write!(
                f,
                "cgroup {} {:?}{}; ",
                if c.v2 { "v2" } else { "v1" },
                c.dirs,
                if c.joined_by_waiter {
                    " (joined by the waiter)"
                } else {
                    ""
                }
            )?,
            None => f.write_str("no cgroup; ")?,
        }
        write!(
            f,
            "{}; {}; {}",
            self.rlimits, self.namespaces, self.landlock
        )
    }
}

/// A prepared jail (step 1); see the module docs for the ordering.
#[derive(Debug)]
pub struct Sandbox {
    vm_name: String,
    filters: SeccompFilters,
    cgroup: Option<VmCgroup>,
    landlock: Option<landlock::PreparedLandlock>,
    rlimits: RlimitPolicy,
    namespaces: NamespaceRequest,
    join: CgroupJoin,
}

impl Sandbox {
    /// Step 1: compile the seccomp filters, create the cgroup, open the landlock paths.
    /// Nothing is restricted yet. Dropping the result removes the cgroup again.
    pub fn prepare(policy: &SandboxPolicy) -> Result<Self, SandboxError> {
        let filters = SeccompFilters::compile()?;
        let prepared_landlock = landlock::prepare(&policy.fs_rules, policy.deny_network)?;
        let cgroup = match &policy.cgroup {
            Some(limits) => Some(VmCgroup::create(
                &cgroup::detect()?,
                &policy.vm_name,
                limits,
            )?),
            None => None,
        };
        Ok(Self {
            vm_name: policy.vm_name.clone(),
            filters,
            cgroup,
            landlock: Some(prepared_landlock),
            rlimits: policy.rlimits,
            namespaces: policy.namespaces,
            join: CgroupJoin::done(),
        })
    }

    /// Step 2, once, while single-threaded: set rlimits, enter namespaces, join the cgroup
    /// (possibly through the pid-namespace waiter: see [`take_cgroup_join`](Self::take_cgroup_join)),
    /// enforce landlock on this thread and its future threads. Without a cgroup this makes
    /// raw syscalls only (it may then run in a forked child).
    pub fn enter_process_wide(&mut self) -> Result<SandboxReport, SandboxError> {
        let Some(prepared_landlock) = self.landlock.take() else {
            return Err(SandboxError::AlreadyEntered {
                vm_name: self.vm_name.clone(),
            });
        };
        namespaces::ensure_single_threaded()?;
        let rlimits = rlimits::apply(&self.rlimits)?;
        let attach = self.waiter_attach();
        let (namespaces, gate) =
            namespaces::enter_single_threaded(self.namespaces, attach.as_ref());
        let cgroup = self.join_cgroup(gate)?;
        let landlock = prepared_landlock.restrict_current_thread()?;
        Ok(SandboxReport {
            cgroup,
            rlimits,
            namespaces,
            landlock,
        })
    }

    /// What the pid-namespace waiter should attach, when it can: a cgroup, a pid namespace
    /// that forks, and no user namespace (as root none is made), whose waiter could not
    /// write the host's cgroupfs.
    fn waiter_attach(&self) -> Option<namespaces::ChildAttach> {
        let cgroup = self.cgroup.as_ref()?;
        let needs_user_ns = self.namespaces.user && !namespaces::is_root();
        if !self.namespaces.pid || needs_user_ns {
            return None;
        }
        namespaces::ChildAttach::new(cgroup.dirs())
    }

    /// Move this process into the VM cgroup (or take the waiter's pending join), which it
    /// then no longer removes on drop: the spawner does.
    fn join_cgroup(
        &mut self,
        gate: Option<namespaces::AttachGate>,
    ) -> Result<Option<CgroupReport>, SandboxError> {
        let Some(cgroup) = self.cgroup.take() else {
            return Ok(None);
        };
        let joined_by_waiter = gate.is_some();
        match gate {
            Some(gate) => {
                self.join = CgroupJoin {
                    pending: Some(gate),
                    dirs: cgroup.dirs().to_vec(),
                }
            }
            None => cgroup.add_pid(std::process::id())?,
        }
        let report = CgroupReport {
            v2: matches!(cgroup.layout(), CgroupLayout::V2 { .. }),
            dirs: cgroup.dirs().to_vec(),
            joined_by_waiter,
        };
        cgroup.keep();
        Ok(Some(report))
    }

    /// The cgroup join after step 2: complete, or pending in the waiter. The caller must
    /// [`CgroupJoin::wait`] before touching guest memory. Later calls return a done join.
    pub fn take_cgroup_join(&mut self) -> CgroupJoin {
        std::mem::replace(&mut self.join, CgroupJoin::done())
    }

    /// Step 3: install the `kind` filter on the calling thread. Irreversible.
    pub fn apply_thread_filter(&self, kind: ThreadKind) -> Result<(), SandboxError> {
        Ok(self.filters.apply_to_current_thread(kind)?)
    }

    /// The compiled filters, cheap to clone into the threads that apply them.
    pub fn filters(&self) -> SeccompFilters {
        self.filters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_refuses_when_multi_threaded_and_only_once() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let mut sandbox = Sandbox::prepare(&SandboxPolicy::new("test-mt")).unwrap();
        let first = sandbox.enter_process_wide();
        drop(tx);
        helper.join().unwrap();
        assert!(
            matches!(
                first,
                Err(SandboxError::Namespaces(
                    NamespaceError::MultiThreaded { .. }
                ))
            ),
            "{first:?}"
        );
        let second = sandbox.enter_process_wide();
        assert!(
            matches!(second, Err(SandboxError::AlreadyEntered { .. })),
            "{second:?}"
        );
    }

    #[test]
    fn policy_errors_name_the_problem() {
        let mut policy = SandboxPolicy::new("bad/name");
        policy.cgroup = Some(CgroupLimits::default());
        policy.fs_rules = vec![FsRule::read_only("/")];
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 && cgroup::detect().is_ok() {
            let err = Sandbox::prepare(&policy).unwrap_err();
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(chain.contains("bad/name"), "{chain}");
        }
        policy.fs_rules = vec![FsRule::read_write("/nonexistent/novacron-vm-state")];
        let err = Sandbox::prepare(&policy).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("/nonexistent/novacron-vm-state"), "{chain}");
    }

    /// The whole sequence in a forked child (no cgroup, so only raw syscalls after fork):
    /// enter, apply the vCPU filter, check what still works, then make a forbidden call.
    #[test]
    fn forked_child_runs_the_full_sequence() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the full sequence (mount/net/pid namespaces) needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut policy = SandboxPolicy::new("test-full");
        policy.fs_rules = vec![FsRule::read_write(dir.path())];
        let mut sandbox = Sandbox::prepare(&policy).unwrap();
        let file = std::ffi::CString::new(
            dir.path()
                .join("state")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();

        // SAFETY: fork; the child makes raw syscalls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls only.
            unsafe {
                let Ok(report) = sandbox.enter_process_wide() else {
                    libc::_exit(20);
                };
                if libc::getpid() != 1 || !report.namespaces.entered(namespaces::Namespace::Net) {
                    libc::_exit(21);
                }
                // Files: inside the rule is fine, outside is EACCES (before seccomp).
                let fd = libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                if fd < 0 || libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) >= 0 {
                    libc::_exit(22);
                }
                if sandbox.apply_thread_filter(ThreadKind::Vmm).is_err()
                    || sandbox.apply_thread_filter(ThreadKind::Vcpu).is_err()
                {
                    libc::_exit(23);
                }
                if libc::write(fd, c"ok".as_ptr().cast(), 2) != 2 {
                    libc::_exit(24);
                }
                // Forbidden on a vCPU thread: this must kill the process (via the waiter).
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(25);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "expected death by SIGSYS, got exit code {} / status {status:#x}",
            libc::WEXITSTATUS(status)
        );
        assert_eq!(std::fs::read(dir.path().join("state")).unwrap(), b"ok");
    }
}
