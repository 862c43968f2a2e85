//! Turns a launch request into the VMM process's jail (see `sandbox` for the mechanisms):
//! which paths it may touch, its cgroup limits, and the seccomp filter of each thread.

use crate::process::control::{Launch, LaunchSource};
use std::sync::Mutex;

use crate::machine::vcpu::ThreadSetup;
use crate::sandbox::{
    CgroupJoin, CgroupLimits, FsAccess, FsRule, Sandbox, SandboxError, SandboxPolicy, SeccompError,
    SeccompFilters, ThreadKind,
};

/// Memory the VMM process may use beyond guest RAM (its own heap, stacks, page tables,
/// snapshot buffers).
const VMM_MEMORY_MARGIN: u64 = 256 << 20;

/// Why the jail could not be entered or a thread not filtered. The texts give the whole
/// chain of causes, joined by ": " (they become the VMM's exit message).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{}", error_chain(.0))]
    Sandbox(SandboxError),
    #[error("{}", error_chain(.0))]
    Seccomp(SeccompError),
    #[error("internal: the cgroup join lock is poisoned")]
    CgroupJoinPoisoned,
}

/// The jail after its process-wide part is in force; threads still install their filters.
pub struct JailedThreads {
    filters: Option<SeccompFilters>,
    summary: String,
    /// The cgroup join, possibly still done by the pid-namespace waiter.
    join: Mutex<CgroupJoin>,
}

/// The cgroup name of a VM (the parent removes it after the process exits).
pub fn cgroup_name(vm_id: &str) -> String {
    format!("vm-{vm_id}")
}

/// Enters the process-wide jail. Must run while the process is single-threaded. With a
/// new pid namespace the sandbox forks: this returns in the child, which becomes pid 1.
/// The cgroup join may still be under way: call [`JailedThreads::wait_cgroup_joined`]
/// before touching guest memory.
pub fn enter(launch: &Launch) -> Result<JailedThreads, JailError> {
    if !launch.sandbox.enabled {
        return Ok(JailedThreads {
            filters: None,
            summary: "sandbox disabled".into(),
            join: Mutex::new(CgroupJoin::done()),
        });
    }
    let mut policy = SandboxPolicy::new(cgroup_name(&launch.vm_id));
    policy.fs_rules = fs_rules(launch);
    policy.cgroup = Some(CgroupLimits {
        memory_bytes: Some(
            launch
                .sandbox
                .memory_limit_bytes
                .unwrap_or(launch.mem_bytes + VMM_MEMORY_MARGIN),
        ),
        // One CPU per vCPU plus one for the VMM's own work (snapshots, migration streams).
        cpus: Some(
            launch
                .sandbox
                .cpu_limit
                .unwrap_or(f64::from(launch.vcpus) + 1.0),
        ),
    });
    let mut sandbox = Sandbox::prepare(&policy).map_err(JailError::Sandbox)?;
    let report = sandbox.enter_process_wide().map_err(JailError::Sandbox)?;
    tracing::info!(%report, "VMM sandbox in force");
    Ok(JailedThreads {
        filters: Some(sandbox.filters()),
        summary: report.to_string(),
        join: Mutex::new(sandbox.take_cgroup_join()),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// /dev/kvm, what the guest boots from (read-only), and the snapshot directories.
fn fs_rules(launch: &Launch) -> Vec<FsRule> {
    let mut rules = vec![FsRule {
        path: "/dev/kvm".into(),
        access: FsAccess::ReadWrite,
    }];
    let read_only = |path: &std::path::Path| FsRule {
        path: path.to_path_buf(),
        access: FsAccess::ReadOnly,
    };
    match &launch.source {
        LaunchSource::Builtin { .. } => {}
        LaunchSource::Linux { kernel, initrd, .. } => {
            rules.push(read_only(kernel));
            rules.extend(initrd.as_deref().map(read_only));
        }
        LaunchSource::Restore { dir } => rules.push(read_only(dir)),
        // The store is in `writable_dirs` (the parent puts it there).
        LaunchSource::Incoming { .. } => {}
    }
    rules.extend(launch.sandbox.writable_dirs.iter().map(|d| FsRule {
        path: d.clone(),
        access: FsAccess::ReadWrite,
    }));
    rules
}

impl JailedThreads {
    fn setup(&self, kind: ThreadKind) -> Option<ThreadSetup> {
        let filters = self.filters.clone()?;
        Some(Box::new(move || {
            filters
                .apply_to_current_thread(kind)
                .map_err(|e| JailError::Seccomp(e).into())
        }))
    }

    /// What a vCPU thread runs first.
    pub fn vcpu_thread_setup(&self) -> Option<ThreadSetup> {
        self.setup(ThreadKind::Vcpu)
    }

    /// What the control-socket reader thread runs first.
    pub fn control_thread_setup(&self) -> Option<ThreadSetup> {
        self.setup(ThreadKind::Vmm)
    }

    /// Blocks until the process is in its VM cgroup (at once if it already is). Call it
    /// before guest memory is mapped; an error means the VM must not start.
    pub fn wait_cgroup_joined(&self) -> Result<(), JailError> {
        let mut join = self
            .join
            .lock()
            .map_err(|_| JailError::CgroupJoinPoisoned)?;
        join.wait().map_err(JailError::Sandbox)
    }

    /// Filters the calling (main) thread. Also makes sure the cgroup join is complete, so
    /// no guest starts outside its limits even if a caller forgot to wait.
    pub fn lock_current_thread(&self) -> Result<(), JailError> {
        self.wait_cgroup_joined()?;
        match self.filters.as_ref() {
            Some(filters) => filters
                .apply_to_current_thread(ThreadKind::Vmm)
                .map_err(JailError::Seccomp),
            None => Ok(()),
        }
    }

    pub fn summary(&self) -> String {
        self.summary.clone()
    }
}
