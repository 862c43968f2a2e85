//! A restarted daemon accounts for every VM the state database lists: it adopts the VMMs
//! still running, restores the VMs that have a checkpoint, records how the others ended,
//! and settles the migrations the dead daemon left open. The decisions are the recovery
//! plan's ([`recovery`]); this carries them out.

use crate::api::types::{
    now_ms, Backend, MigrationDirection, MigrationInfo, MigrationState, VmState,
};
use crate::state::VmRecord;

use super::adoption::Adoption;
use super::leftovers;
use super::manager::VmManager;
use super::paths::VmPaths;
use crate::policy::recovery::{self as plan, Found, Plan, Settled};

/// What a starting daemon found (see [`recovery`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveryReport {
    pub adopted: Vec<String>,
    pub restored: Vec<String>,
    /// VMs that ended while the daemon was down, with their new state.
    pub ended: Vec<(String, VmState)>,
    /// VMs of job replicas that would have been restored from a local checkpoint but were
    /// not: their job's origin may have placed the replica elsewhere meanwhile, so a copy
    /// here must never run again on its own say (recorded as exited; the origin decides).
    pub not_restored: Vec<String>,
}

/// Removes and returns the first item of `items` that `pick` accepts.
fn take_first<T>(items: &mut Vec<T>, pick: impl Fn(&T) -> bool) -> Option<T> {
    let at = items.iter().position(pick)?;
    Some(items.remove(at))
}

impl VmManager {
    /// Accounts for every VM the database lists (see [`recovery`]). Blocking; run once at
    /// start, before the API takes requests. VMs in `never_restore` (job replicas) are not
    /// restored from a checkpoint: they are recorded as exited and listed in
    /// [`RecoveryReport::not_restored`].
    pub fn recover(&self, never_restore: &std::collections::HashSet<String>) -> RecoveryReport {
        self.sweep_removed();
        let mut report = RecoveryReport::default();
        // Every migration still open was left so by the dead daemon (or by an earlier
        // recovery that could not tell whether the VM started here: still nobody can).
        let mut open: Vec<MigrationInfo> = self
            .registry
            .migrations()
            .into_iter()
            .filter(|m| m.state == MigrationState::Running)
            .filter(|m| !(m.direction == MigrationDirection::In && m.error.is_some()))
            .collect();
        for record in self.registry.vms() {
            let id = record.info.id.clone();
            let paths = self.paths(&id);
            let alive = record
                .info
                .pid
                .is_some_and(|pid| leftovers::same_process(pid, record.pid_start_ticks));
            let process = record.info.spec.backend == Backend::Process;
            let ended = |paths: &VmPaths| match process {
                true => leftovers::read_process_status(paths),
                false => leftovers::read_tombstone(paths),
            };
            // A process can always start again from scratch; a KVM VM needs its checkpoint.
            let restorable = process || paths.has_snapshot();
            // The migration of this VM left open, if the VM is still arriving or leaving (a
            // VM recorded as neither never got a VMM for it: settled below).
            let migration = match record.info.state.is_active() {
                true => take_first(&mut open, |m| m.vm_id == id),
                false => None,
            };
            let migrating_in = migration
                .as_ref()
                .filter(|m| m.direction == MigrationDirection::In)
                .map(|m| m.peer.clone());
            let plan_for = |found: &Found| {
                plan::plan(
                    record.info.state,
                    found,
                    restorable,
                    migrating_in.as_deref(),
                )
            };
            let mut found = plan::found(
                alive,
                record.info.pid.is_some(),
                (!alive).then(|| ended(&paths)).flatten(),
            );
            let mut plan = plan_for(&found);
            if plan == Plan::Adopt {
                let adopted = match process {
                    true => self.adopt_process(&record, &paths),
                    false => self.adopt_patiently(&record, &paths),
                };
                match adopted {
                    Ok(Adoption::Supervised) => {
                        self.settle_open_migration(&record, &found, migration.as_ref());
                        report.adopted.push(id);
                        continue;
                    }
                    Ok(Adoption::Ended(reason)) => {
                        // It only waited to say how the VM ended: as good as its tombstone.
                        found = Found::Gone(reason.or_else(|| ended(&paths)));
                        plan = plan_for(&found);
                    }
                    Err(e) => {
                        tracing::warn!(vm = %id, error = %e, "cannot adopt its VMM; killing it");
                        leftovers::kill_leftovers(
                            &self.vmm_id(&id),
                            record.info.pid,
                            record.pid_start_ticks,
                        );
                        found = Found::Gone(ended(&paths));
                        plan = plan_for(&found);
                    }
                }
            }
            self.settle_open_migration(&record, &found, migration.as_ref());
            match plan {
                Plan::Keep => {
                    // Its end is on record: a VMM still there (one that waits to tell how
                    // its VM ended, or a suspended VM's) has nothing left to run.
                    leftovers::kill_leftovers(
                        &self.vmm_id(&id),
                        record.info.pid,
                        record.pid_start_ticks,
                    );
                }
                Plan::Adopt => {}
                Plan::Restore if never_restore.contains(&id) => {
                    leftovers::kill_leftovers(&self.vmm_id(&id), None, None);
                    self.registry.update(&id, |r| {
                        r.info.state = VmState::Exited;
                        r.info.pid = None;
                        r.pid_start_ticks = None;
                        r.info.detail = Some(
                            "a job replica whose VMM died with the node: not restored here \
                             (its job's origin decides where it runs next)"
                                .into(),
                        );
                    });
                    report.not_restored.push(id);
                }
                Plan::Restore => {
                    leftovers::kill_leftovers(&self.vmm_id(&id), None, None);
                    match self.start_vm(&id, true) {
                        Ok(()) => report.restored.push(id),
                        Err(e) => {
                            self.registry.update(&id, |r| {
                                r.info.state = VmState::Failed;
                                r.info.pid = None;
                                r.info.detail =
                                    Some(format!("could not restore its checkpoint: {e}"));
                            });
                            report.ended.push((id, VmState::Failed));
                        }
                    }
                }
                Plan::Ended { state, detail } => {
                    leftovers::kill_leftovers(&self.vmm_id(&id), None, None);
                    self.registry.update(&id, |r| {
                        r.info.state = state;
                        r.info.detail = Some(detail);
                        r.info.pid = None;
                        r.pid_start_ticks = None;
                    });
                    report.ended.push((id, state));
                }
            }
        }
        for m in open {
            let vm = self.registry.vm(&m.vm_id).map(|r| r.info.state);
            let settled = plan::settle_without_vmm(m.direction, vm);
            self.record_settled(&m, &settled);
        }
        report
    }

    /// Settles the migration of the VM of `record` that the dead daemon left open
    /// ([`plan::settle`]), after the VM itself was accounted for.
    fn settle_open_migration(
        &self,
        record: &VmRecord,
        found: &Found,
        migration: Option<&MigrationInfo>,
    ) {
        let Some(migration) = migration else { return };
        let id = &record.info.id;
        let adopted_as = matches!(found, Found::Alive)
            .then(|| self.registry.vm(id).map(|r| r.info.state))
            .flatten();
        let settled = plan::settle(
            migration.direction,
            found,
            record.info.state,
            adopted_as,
            &migration.peer,
        );
        self.record_settled(migration, &settled);
        if let (Settled::Failed(why), Some(VmState::Paused)) = (&settled, adopted_as) {
            self.registry
                .update(id, |r| r.info.detail = Some(format!("migration {why}")));
        }
    }

    /// Records how a migration left open or in doubt ended.
    pub(super) fn record_settled(&self, migration: &MigrationInfo, settled: &Settled) {
        tracing::info!(vm = %migration.vm_id, migration = %migration.id, ?settled, "migration settled");
        self.registry
            .update_migration(&migration.id, true, |m| match settled {
                Settled::Done => {
                    m.state = MigrationState::Done;
                    m.ended_at_ms = Some(now_ms());
                    m.error = None;
                }
                Settled::Failed(why) => {
                    m.state = MigrationState::Failed;
                    m.ended_at_ms = Some(now_ms());
                    m.error = Some(why.clone());
                }
                Settled::Open(why) => m.error = Some(why.clone()),
            });
    }
}
