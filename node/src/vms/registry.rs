//! What the daemon knows of its VMs and migrations, in memory, written through to the
//! database and announced on the event bus. One lock each, held only to copy or change a
//! record, never across I/O with a VMM.
//!
//! A VM is announced when it appears and when something an event says changes: its state,
//! detail or VMM pid ([`announced`]). Guest progress reports, checkpoints and timestamps
//! are kept (and readable through the API) but not announced: they would repeat the same
//! `running (pid N)` every second.

use novacron_mesh::util::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::{now_ms, MigrationInfo, NodeEvent, VmInfo, VmState};
use crate::state::{StateDb, VmRecord};

use super::events::EventBus;

/// Finished migrations kept in memory for the API (all are in the database).
const MIGRATIONS_KEPT: usize = 256;

/// Told of each migration the moment it settles ([`crate::policy::in_doubt::settled`]).
type SettledObserver = Box<dyn Fn(&MigrationInfo) + Send + Sync>;

pub struct Registry {
    vms: Mutex<BTreeMap<String, Slot>>,
    migrations: Mutex<BTreeMap<String, MigrationInfo>>,
    db: Arc<StateDb>,
    pub bus: Arc<EventBus>,
    on_settled: OnceLock<SettledObserver>,
}

struct Slot {
    record: VmRecord,
}

impl Registry {
    /// Loads what the database holds.
    pub fn load(db: Arc<StateDb>, bus: Arc<EventBus>) -> anyhow::Result<Registry> {
        let vms = db
            .vms()?
            .into_iter()
            .map(|record| (record.info.id.clone(), Slot { record }))
            .collect();
        let migrations = db
            .migrations(MIGRATIONS_KEPT)?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        Ok(Registry {
            vms: Mutex::new(vms),
            migrations: Mutex::new(migrations),
            db,
            bus,
            on_settled: OnceLock::new(),
        })
    }

    /// Calls `observe` with each migration that settles from now on, once, as it settles:
    /// the ones loaded settled had their moment in an earlier run (set it once, before
    /// anything can settle).
    pub fn on_settled(&self, observe: impl Fn(&MigrationInfo) + Send + Sync + 'static) {
        if self.on_settled.set(Box::new(observe)).is_err() {
            tracing::error!("a second observer of settled migrations was ignored");
        }
    }

    pub fn vm(&self, id: &str) -> Option<VmRecord> {
        lock(&self.vms).get(id).map(|s| s.record.clone())
    }

    pub fn vms(&self) -> Vec<VmRecord> {
        lock(&self.vms).values().map(|s| s.record.clone()).collect()
    }

    pub fn vm_infos(&self) -> Vec<VmInfo> {
        lock(&self.vms)
            .values()
            .map(|s| s.record.info.clone())
            .collect()
    }

    /// Adds a new VM (persisted before it is announced).
    pub fn insert(&self, record: VmRecord) -> anyhow::Result<()> {
        self.db.put_vm(&record)?;
        let info = record.info.clone();
        lock(&self.vms).insert(info.id.clone(), Slot { record });
        self.bus.publish(NodeEvent::Vm { vm: Box::new(info) });
        Ok(())
    }

    /// Changes a VM's record, persists it and announces it if [`announced`] says so;
    /// returns the new record.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut VmRecord)) -> Option<VmRecord> {
        let (record, announce) = {
            let mut vms = lock(&self.vms);
            let slot = vms.get_mut(id)?;
            let before = slot.record.info.clone();
            change(&mut slot.record);
            slot.record.info.updated_at_ms = now_ms();
            let announce = announced(&before, &slot.record.info);
            (slot.record.clone(), announce)
        };
        if let Err(e) = self.db.put_vm(&record) {
            tracing::error!(vm = id, error = %e, "cannot persist the VM's state");
        }
        if announce {
            self.bus.publish(NodeEvent::Vm {
                vm: Box::new(record.info.clone()),
            });
        }
        Some(record)
    }

    /// Forgets a VM that ended (exited, failed, moved away): its row and its record. Not
    /// announced (an ended VM changes nothing a client follows). 409 for a VM that is still
    /// here (active or suspended).
    pub fn remove_ended(&self, id: &str) -> ServiceResult<()> {
        let mut vms = lock(&self.vms);
        let state = vms
            .get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))?
            .record
            .info
            .state;
        if state.is_active() || state == VmState::Suspended {
            return Err(ServiceError::Conflict(format!(
                "VM {id} is {}: stop it first",
                state.as_str()
            )));
        }
        // Under the lock, so nothing records the VM again in between.
        self.db
            .delete_vm(id)
            .map_err(|e| ServiceError::Internal(format!("cannot remove VM {id}: {e}")))?;
        vms.remove(id);
        Ok(())
    }

    /// A guest progress report: kept in memory (the API shows it), not announced.
    pub fn report(&self, id: &str, code: u32, value: u64) {
        if let Some(slot) = lock(&self.vms).get_mut(id) {
            slot.record.info.last_report = Some((code, value));
        }
    }

    pub fn migration(&self, id: &str) -> Option<MigrationInfo> {
        lock(&self.migrations).get(id).cloned()
    }

    /// Migrations, newest first.
    pub fn migrations(&self) -> Vec<MigrationInfo> {
        let mut all: Vec<MigrationInfo> = lock(&self.migrations).values().cloned().collect();
        all.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then(a.id.cmp(&b.id)));
        all
    }

    /// Adds or replaces a migration; persisted when `persist` (starts and ends: progress
    /// updates are only announced).
    pub fn put_migration(&self, m: MigrationInfo, persist: bool) {
        if persist {
            if let Err(e) = self.db.put_migration(&m) {
                tracing::error!(migration = %m.id, error = %e, "cannot persist the migration");
            }
        }
        let settles = {
            let mut all = lock(&self.migrations);
            let was_settled = all.get(&m.id).is_some_and(crate::policy::in_doubt::settled);
            all.insert(m.id.clone(), m.clone());
            if all.len() > MIGRATIONS_KEPT {
                let oldest = all
                    .values()
                    .filter(|m| m.state.is_final())
                    .min_by_key(|m| m.started_at_ms)
                    .map(|m| m.id.clone());
                if let Some(id) = oldest {
                    all.remove(&id);
                }
            }
            !was_settled && crate::policy::in_doubt::settled(&m)
        };
        if let Some(observe) = self.on_settled.get().filter(|_| settles) {
            observe(&m);
        }
        self.bus.publish(NodeEvent::Migration {
            migration: Box::new(m),
        });
    }

    /// Changes a migration (see [`put_migration`](Self::put_migration)).
    pub fn update_migration(
        &self,
        id: &str,
        persist: bool,
        change: impl FnOnce(&mut MigrationInfo),
    ) -> Option<MigrationInfo> {
        let mut m = self.migration(id)?;
        change(&mut m);
        self.put_migration(m.clone(), persist);
        Some(m)
    }
}

/// Whether a change of a VM's record is news on the event stream: its state, detail or VMM
/// pid changed (what an event line shows). Not its progress, checkpoint or timestamps.
pub fn announced(before: &VmInfo, after: &VmInfo) -> bool {
    before.state != after.state || before.detail != after.detail || before.pid != after.pid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::VmState;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&dir.path().join("s.db")).unwrap());
        let bus = Arc::new(EventBus::new(Some(db.clone())));
        (dir, Registry::load(db, bus).unwrap())
    }

    #[test]
    fn a_vm_is_announced_on_real_changes_only() {
        let (_dir, reg) = registry();
        let mut vm = crate::model::fixtures::vm("v1", VmState::Starting);
        vm.pid = None;
        let mut events = reg.bus.subscribe();
        reg.insert(VmRecord {
            info: vm,
            pid_start_ticks: None,
        })
        .unwrap();
        let mut states = || {
            let mut seen = Vec::new();
            while let Ok(ev) = events.try_recv() {
                if let NodeEvent::Vm { vm } = ev.event {
                    seen.push((vm.state, vm.pid));
                }
            }
            seen
        };
        assert_eq!(states(), [(VmState::Starting, None)]);
        reg.update("v1", |r| r.info.pid = Some(7));
        reg.update("v1", |r| r.info.state = VmState::Running);
        // Told twice (a resume of a running VM), checkpointed, reporting progress: no news.
        reg.update("v1", |r| r.info.state = VmState::Running);
        reg.update("v1", |r| r.info.snapshot_at_ms = Some(5));
        for pass in 0..5 {
            reg.report("v1", 2, pass);
        }
        assert_eq!(
            states(),
            [(VmState::Starting, Some(7)), (VmState::Running, Some(7))]
        );
        // Kept all the same.
        let kept = reg.vm("v1").unwrap().info;
        assert_eq!(
            (kept.snapshot_at_ms, kept.last_report),
            (Some(5), Some((2, 4)))
        );
        reg.update("v1", |r| {
            r.info.detail = Some("migration rolled back".into())
        });
        reg.update("v1", |r| {
            r.info.state = VmState::Exited;
            r.info.pid = None;
        });
        assert_eq!(
            states(),
            [(VmState::Running, Some(7)), (VmState::Exited, None)]
        );
    }

    use crate::api::types::{MigrationDirection, MigrationMode, MigrationState};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn migration(id: &str, state: MigrationState, error: Option<&str>) -> MigrationInfo {
        MigrationInfo {
            id: id.into(),
            vm_id: "v".into(),
            direction: MigrationDirection::Out,
            peer: "p".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1,
            ended_at_ms: None,
            downtime_ms: None,
            wire_bytes: 0,
            error: error.map(String::from),
            progress: None,
        }
    }

    fn load(db: &Arc<StateDb>) -> (Registry, Arc<AtomicUsize>) {
        let registry =
            Registry::load(db.clone(), Arc::new(EventBus::new(None))).expect("registry loads");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        registry.on_settled(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        (registry, seen)
    }

    #[test]
    fn a_migration_is_observed_once_when_it_settles_and_never_again_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&dir.path().join("state.db")).unwrap());
        let (registry, seen) = load(&db);
        let doubt = format!(
            "{} nobody could say",
            novacron_vm::process::control::IN_DOUBT_PREFIX
        );
        registry.put_migration(migration("m1", MigrationState::Running, None), true);
        registry.put_migration(migration("m1", MigrationState::Failed, Some(&doubt)), true);
        assert_eq!(seen.load(Ordering::SeqCst), 0, "in doubt is not settled");
        registry.update_migration("m1", true, |m| {
            m.state = MigrationState::Done;
            m.error = None;
        });
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        registry.update_migration("m1", true, |m| m.wire_bytes = 7);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a later change is no new end"
        );
        registry.put_migration(migration("m2", MigrationState::Running, None), true);
        registry.put_migration(migration("m3", MigrationState::Running, None), true);
        registry.update_migration("m2", true, |m| m.state = MigrationState::Failed);
        assert_eq!(seen.load(Ordering::SeqCst), 2);

        // A restart: what settled before was observed by the run that settled it.
        let (registry, seen) = load(&db);
        registry.update_migration("m1", true, |m| m.wire_bytes = 8);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        registry.update_migration("m3", true, |m| m.state = MigrationState::Done);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}
