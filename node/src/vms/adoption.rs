//! Adopting a VM's VMM (or a process-backend VM's command) that outlived the daemon that
//! started it: a restarted daemon takes it back under a supervisor.

use std::time::Duration;

use novacron_vm::process::control::{AdoptedState, Event};
use novacron_vm::process::launcher::VmmProcess;

use crate::api::types::VmState;
use crate::state::VmRecord;

use super::leftovers;
use super::manager::VmManager;
use super::paths::VmPaths;
use super::process_backend::ProcessVm;

/// How long a restarted daemon asks a VMM that a migration keeps busy to be adopted.
const MIGRATING_ADOPT_PATIENCE: Duration = Duration::from_secs(120);

/// What adopting a VM's VMM came to.
pub(super) enum Adoption {
    /// Its VM runs (or waits paused) under a supervisor again.
    Supervised,
    /// Its VM had ended (how, if it said): the VMM exited.
    Ended(Option<novacron_vm::process::control::ExitReason>),
}

impl VmManager {
    /// Takes a process-backend VM's running command back (by pid and start time).
    pub(super) fn adopt_process(
        &self,
        record: &VmRecord,
        paths: &VmPaths,
    ) -> Result<Adoption, String> {
        let id = &record.info.id;
        let pid = record.info.pid.ok_or("no pid recorded")?;
        let ticks = record.pid_start_ticks.ok_or("no start time recorded")?;
        let process = ProcessVm::adopt(&self.vmm_id(id), &paths.dir, pid, ticks)?;
        self.supervise_process(id, process, |r| r.info.adoptions += 1);
        Ok(Adoption::Supervised)
    }

    /// [`adopt`](Self::adopt), asked again while the VMM lives and a migration keeps it
    /// busy: a VMM answers adoption only once its migration ended, which its owner's death
    /// cuts short at the VMM's next look at its inputs, but one busy with a round on a loaded
    /// host may take longer than one try. Giving up would kill what may be the VM's only copy.
    pub(super) fn adopt_patiently(
        &self,
        record: &VmRecord,
        paths: &VmPaths,
    ) -> Result<Adoption, String> {
        let migrating = matches!(record.info.state, VmState::Migrating | VmState::Starting);
        let deadline = std::time::Instant::now() + MIGRATING_ADOPT_PATIENCE;
        loop {
            match self.adopt(record, paths) {
                Err(e)
                    if migrating
                        && std::time::Instant::now() < deadline
                        && record.info.pid.is_some_and(|pid| {
                            leftovers::same_process(pid, record.pid_start_ticks)
                        }) =>
                {
                    tracing::warn!(vm = %record.info.id, error = %e, "its VMM is busy migrating; asking again");
                }
                adopted => return adopted,
            }
        }
    }

    /// Takes a running VMM back through its adoption socket. A VMM whose VM ended while
    /// nobody owned it only says how, and is let exit.
    fn adopt(&self, record: &VmRecord, paths: &VmPaths) -> Result<Adoption, String> {
        let id = &record.info.id;
        let pid = record.info.pid.ok_or("no pid recorded")?;
        let cgroup = self
            .opts
            .sandbox
            .then(|| novacron_vm::process::launcher::cgroup_name(&self.vmm_id(id)));
        let (mut vmm, adopted) =
            VmmProcess::adopt(&paths.control_socket(), pid, cgroup).map_err(|e| e.to_string())?;
        let state = match adopted.state {
            AdoptedState::Paused => VmState::Paused,
            AdoptedState::Running => VmState::Running,
            AdoptedState::Exited => {
                // It says how the VM ended next; told, it stops waiting for an owner and
                // exits (cut short, it would wait on).
                let told = vmm.wait_for(novacron_vm::process::launcher::ADOPT_TIMEOUT, |e| {
                    matches!(e, Event::Exited(_)).then_some(())
                });
                match told
                    .map_err(|e| e.to_string())
                    .and_then(|()| vmm.wait().map_err(|e| e.to_string()))
                {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(vm = %id, error = %e, "the ended VMM did not exit: killing it");
                        vmm.kill();
                    }
                }
                return Ok(Adoption::Ended(adopted.exit));
            }
        };
        self.supervise(id, vmm, |r| {
            r.info.adoptions += 1;
            r.info.last_report = adopted.last_guest.or(r.info.last_report);
            r.info.state = state;
        });
        Ok(Adoption::Supervised)
    }
}
