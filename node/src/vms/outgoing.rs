//! VMs leaving this node: handing a VM's VMM the streams of its migration out, and
//! settling a migration that ended in doubt ([`in_doubt`]).

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use novacron_vm::process::control::MigrateOut;

use crate::api::service::ServiceResult;
use crate::api::types::{now_ms, MigrationDirection, MigrationInfo, VmState};

use super::leftovers;
use super::manager::VmManager;
use super::supervisor::{self, Cmd};
use crate::policy::in_doubt;

impl VmManager {
    /// The peer that may run VM `id`, if the VM is paused here because its last migration
    /// ended in doubt. Nothing automatic may then move, park or resume it: only an operator
    /// who checked that peer decides (resume or stop it).
    pub fn in_doubt_with(&self, id: &str) -> Option<String> {
        let vm = self.registry.vm(id)?;
        if vm.info.state != VmState::Paused {
            return None;
        }
        self.last_outgoing_migration(id)
            .filter(in_doubt::in_doubt)
            .map(|m| m.peer)
    }

    /// The newest migration of VM `id` away from this node.
    fn last_outgoing_migration(&self, id: &str) -> Option<MigrationInfo> {
        self.registry
            .migrations()
            .into_iter()
            .filter(|m| m.vm_id == id && m.direction == MigrationDirection::Out)
            .max_by_key(|m| m.started_at_ms)
    }

    /// Marks the in-doubt end of VM `id`'s last migration as settled by an operator who
    /// resumed the VM here, so a later pause does not make it look in doubt again.
    pub(super) fn record_operator_resolution(&self, id: &str) {
        if let Some(m) = self.last_outgoing_migration(id) {
            self.registry.update_migration(&m.id, true, |m| {
                let was = m.error.take().unwrap_or_default();
                m.error = Some(format!("resumed here by an operator after: {was}"));
                m.ended_at_ms = Some(now_ms());
            });
        }
    }

    /// This node's migrations in doubt (each the newest outgoing one of its VM), with what
    /// is here of the VM ([`in_doubt`]).
    pub fn in_doubt_here(&self) -> Vec<(MigrationInfo, in_doubt::Here)> {
        let mut found = Vec::new();
        for vm in self.registry.vm_infos() {
            let Some(m) = self
                .last_outgoing_migration(&vm.id)
                .filter(in_doubt::in_doubt)
            else {
                continue;
            };
            let here = match vm.state {
                VmState::Paused => in_doubt::Here::Paused,
                VmState::Running => in_doubt::Here::Running,
                state if state.is_active() => in_doubt::Here::Busy,
                state => {
                    let paths = self.paths(&vm.id);
                    in_doubt::Here::NoVmm {
                        tombstone: leftovers::read_tombstone(&paths),
                        died: state == VmState::Failed,
                        restorable: paths.has_snapshot(),
                    }
                }
            };
            found.push((m, here));
        }
        found
    }

    /// Carries out how migration `m`, in doubt, settled ([`in_doubt::settle`]): the VM here
    /// first, then the record, so a daemon killed in between settles it again the same way.
    pub async fn settle_in_doubt(
        self: &Arc<Self>,
        m: &MigrationInfo,
        here: &in_doubt::Here,
        outcome: &in_doubt::Outcome,
    ) {
        use in_doubt::{Outcome, Then};
        let id = &m.vm_id;
        let settled = match outcome {
            Outcome::AskPeer | Outcome::StillInDoubt(_) => {
                tracing::info!(vm = %id, migration = %m.id, ?outcome, "migration still in doubt");
                return;
            }
            Outcome::MovedAway(why) => {
                let detail = format!("runs on {} (a migration in doubt settled: {why})", m.peer);
                if *here == in_doubt::Here::Paused {
                    // Its paused copy here goes: the VM runs there.
                    if let Err(e) = self.discard(id, detail).await {
                        tracing::warn!(vm = %id, error = %e, "cannot discard the copy here");
                        return;
                    }
                } else {
                    self.registry.update(id, |r| {
                        r.info.state = VmState::MovedAway;
                        r.info.detail = Some(detail);
                        r.info.pid = None;
                    });
                }
                crate::policy::recovery::Settled::Done
            }
            Outcome::RolledBack { why, then } => {
                let detail = format!("migration rolled back: {why}");
                match then {
                    Then::Resume => {
                        if let Err(e) = self.ask(id, Cmd::Resume).await {
                            tracing::warn!(vm = %id, error = %e, "cannot resume the VM");
                            return;
                        }
                        self.registry
                            .update(id, |r| r.info.detail = Some(detail.clone()));
                    }
                    Then::Restore => self.restore_after_doubt(id, &detail).await,
                    Then::Nothing => {}
                }
                crate::policy::recovery::Settled::Failed(format!("rolled back: {why}"))
            }
        };
        self.record_settled(m, &settled);
    }

    /// Brings VM `id` back from its checkpoint: its VMM died while its migration was in
    /// doubt, and the peer never started it.
    async fn restore_after_doubt(self: &Arc<Self>, id: &str, detail: &str) {
        leftovers::kill_leftovers(&self.vmm_id(id), None, None);
        let me = self.clone();
        let vm_id = id.to_string();
        let restored = tokio::task::spawn_blocking(move || me.start_vm(&vm_id, true))
            .await
            .unwrap_or_else(|e| Err(format!("restore task: {e}")));
        self.registry.update(id, |r| match restored {
            Ok(()) => r.info.detail = Some(format!("{detail}; restored from its last checkpoint")),
            Err(e) => {
                r.info.state = VmState::Failed;
                r.info.pid = None;
                r.info.detail = Some(format!("{detail}; could not restore its checkpoint: {e}"));
            }
        });
    }

    /// Stops the VMM of VM `id`, which runs elsewhere now: its record says moved away, with
    /// `detail`. Answers once the VMM exited.
    async fn discard(&self, id: &str, detail: String) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::Discard { detail, reply }).await?;
        self.wait_state(id, |s| !s.is_active(), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Hands `streams` (control first) to the VM's VMM and starts migrating it out; the
    /// supervisor records the migration's progress and end under `migration_id`.
    pub async fn migrate_out(
        &self,
        id: &str,
        cmd: MigrateOut,
        streams: Vec<UnixStream>,
        migration_id: &str,
        peer: &str,
        in_doubt: Option<supervisor::InDoubtSender>,
    ) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::MigrateOut {
            cmd: Box::new(cmd),
            streams,
            migration_id: migration_id.to_string(),
            peer: peer.to_string(),
            in_doubt,
            reply,
        })
        .await
    }

    /// Hands a migration in doubt new streams to the destination (control first), on which
    /// the VMM asks whether the VM started there.
    pub async fn reconnect_migration(
        &self,
        id: &str,
        session: [u8; 16],
        streams: Vec<UnixStream>,
    ) -> ServiceResult<()> {
        self.ask(id, |reply| Cmd::ReconnectMigration {
            session,
            streams,
            reply,
        })
        .await
    }

    pub async fn cancel_migration(&self, id: &str, reason: &str) -> ServiceResult<()> {
        let reason = reason.to_string();
        self.ask(id, |reply| Cmd::CancelMigration { reason, reply })
            .await
    }
}
