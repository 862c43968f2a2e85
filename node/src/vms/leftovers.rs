//! What a dead daemon's VMMs left, as a starting daemon finds it, and the cleanup of what it
//! does not adopt: the tombstone a VMM left, the status line a process-backend jail wrote,
//! whether a recorded pid is still the same process, and killing leftovers. The decisions
//! on what is found are the recovery plan's ([`crate::policy::recovery`]).

use novacron_vm::exit::ExitReason;

use super::paths::VmPaths;

/// The exit reason a VMM wrote as it exited, if it did (and the file is sound): the VM
/// engine's tombstone beside the VM's adoption socket.
pub fn read_tombstone(paths: &VmPaths) -> Option<ExitReason> {
    novacron_vm::process::adopt::read_tombstone(&paths.control_socket())
        .map_err(|e| tracing::warn!(error = %e, "unreadable tombstone"))
        .ok()
        .flatten()
}

/// How a process-backend VM's command ended, from the status line its jail wrote (as an
/// exit reason: a clean exit, or a failure such as a kill).
pub fn read_process_status(paths: &VmPaths) -> Option<ExitReason> {
    let bytes = std::fs::read(paths.dir.join(super::process_backend::STATUS_FILE)).ok()?;
    if bytes.len() > 64 {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    match super::process_backend::ExitRecord::parse(&text)? {
        super::process_backend::ExitRecord::Exited(code) => Some(ExitReason::GuestExit {
            status: code.max(0) as u64,
        }),
        super::process_backend::ExitRecord::Killed(signal) => Some(ExitReason::Failed {
            message: format!("the command was killed by signal {signal}"),
        }),
    }
}

/// Whether `pid` is the process recorded: same pid and same start time.
pub fn same_process(pid: u32, start_ticks: Option<u64>) -> bool {
    match (
        start_ticks,
        novacron_vm::process::adopt::process_start_ticks(pid),
    ) {
        (Some(want), Some(have)) => want == have,
        _ => false,
    }
}

/// Kills whatever still runs of VM `id`: its cgroup's processes, and the recorded process
/// if it is still the same one.
/// `vmm_id` names the VMM on this host ([`super::VmManager::vmm_id`]).
pub fn kill_leftovers(vmm_id: &str, pid: Option<u32>, start_ticks: Option<u64>) {
    let id = vmm_id;
    if let Some(pid) = pid.filter(|&p| same_process(p, start_ticks)) {
        // SAFETY: kill(2) with a pid checked to be the VMM we recorded (pid + start time).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let name = novacron_vm::process::launcher::cgroup_name(id);
    let removed = novacron_vm::sandbox::cgroup::detect()
        .and_then(|layout| novacron_vm::sandbox::VmCgroup::open(&layout, &name))
        .and_then(|mut cgroup| {
            cgroup.kill_on_cleanup(true);
            cgroup.remove()
        });
    if let Err(e) = removed {
        tracing::debug!(vm = id, "no cgroup left to empty: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_read_when_sound() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(read_tombstone(&paths), None);
        std::fs::write(
            novacron_vm::process::adopt::tombstone_path(&paths.control_socket()),
            br#"{"reason":"migrated_away"}"#,
        )
        .unwrap();
        assert_eq!(read_tombstone(&paths), Some(ExitReason::MigratedAway));
        std::fs::write(
            novacron_vm::process::adopt::tombstone_path(&paths.control_socket()),
            b"garbage",
        )
        .unwrap();
        assert_eq!(read_tombstone(&paths), None);
    }
}
