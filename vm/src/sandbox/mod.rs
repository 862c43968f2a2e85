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
//!    `/proc/self/status`), in this order: join the cgroup, set rlimits, unshare namespaces
//!    (a pid namespace forks: see [`namespaces`]), enforce landlock. Landlock binds this thread
//!    and every thread created afterwards.
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

use std::fmt;
use std::path::PathBuf;

pub use self::cgroup::{CgroupError, CgroupLayout, CgroupLimits, VmCgroup};
pub use self::landlock::{FsAccess, FsRule, LandlockError, LandlockReport};
pub use self::namespaces::{NamespaceError, NamespaceReport, NamespaceRequest};
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
}

/// Where the VMM's cgroup is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupReport {
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
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
                "cgroup {} {:?}; ",
                if c.v2 { "v2" } else { "v1" },
                c.dirs
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
        })
    }

    /// Step 2, once, while single-threaded: join the cgroup, set rlimits, enter namespaces,
    /// enforce landlock on this thread and its future threads. Without a cgroup this makes
    /// raw syscalls only (it may then run in a forked child).
    pub fn enter_process_wide(&mut self) -> Result<SandboxReport, SandboxError> {
        let Some(prepared_landlock) = self.landlock.take() else {
            return Err(SandboxError::AlreadyEntered {
                vm_name: self.vm_name.clone(),
            });
        };
        namespaces::ensure_single_threaded()?;
        let cgroup = self.join_cgroup()?;
        let rlimits = rlimits::apply(&self.rlimits)?;
        let namespaces = namespaces::enter(self.namespaces)?;
        let landlock = prepared_landlock.restrict_current_thread()?;
        Ok(SandboxReport {
            cgroup,
            rlimits,
            namespaces,
            landlock,
        })
    }

    /// Move this process into the VM cgroup, which it then no longer removes on drop.
    fn join_cgroup(&mut self) -> Result<Option<CgroupReport>, SandboxError> {
        let Some(cgroup) = self.cgroup.take() else {
            return Ok(None);
        };
        cgroup.add_pid(std::process::id())?;
        let report = CgroupReport {
            v2: matches!(cgroup.layout(), CgroupLayout::V2 { .. }),
            dirs: cgroup.dirs().to_vec(),
        };
        cgroup.keep();
        Ok(Some(report))
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
