//! What a starting daemon does with each VM its database lists: the VM is accounted for
//! whatever moment the previous daemon died at.
//!
//! * Its VMM still runs (same pid, same start time, its adoption socket answers): adopt it;
//!   the guest never stopped.
//! * Its VMM is gone and left a tombstone: the tombstone says how it ended (exited, migrated
//!   away, failed).
//! * Its VMM is gone without a word (killed with the daemon, the host rebooted): restore it
//!   from its last checkpoint, or mark it failed when it has none.
//! * A VMM that died while migrating out, without a tombstone, is NOT restored: the
//!   destination may run it (the VMM writes its tombstone right after the confirm, so only a
//!   kill in that instant gets here); it is marked failed, in doubt, naming the peer.
//!
//! * A migration the dead daemon left open is settled from what was found ([`settle`]): an
//!   incoming one is done when the VM certainly started here ([`incoming_started`]) and
//!   otherwise stays open, so a source in doubt that asks hears "unknown", never a guess;
//!   an outgoing one ended when the VMM did (done, rolled back, or in doubt with the VM
//!   paused here).
//!
//! Any VMM process of a VM that is not adopted is killed (its cgroup emptied), so none
//! leaks and none runs twice.

use novacron_vm::control::ExitReason;
use novacron_vm::launcher::describe_reason;

use crate::api::types::{MigrationDirection, VmState};
use crate::state::VmRecord;

use super::paths::VmPaths;

/// What was found of a VM's VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// A process with the recorded pid and start time.
    Alive,
    /// No such process; its tombstone, if it wrote one.
    Gone(Option<ExitReason>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Nothing to do: the VM is history or waits suspended.
    Keep,
    Adopt,
    /// Start a VMM from the VM's last checkpoint.
    Restore,
    /// The VM ended while nobody watched: record it.
    Ended {
        state: VmState,
        detail: String,
    },
}

/// Decides what to do with one VM (pure: the effects are in the manager).
pub fn plan(record: &VmRecord, found: &Found, has_snapshot: bool) -> Plan {
    let state = record.info.state;
    if !state.is_active() {
        return Plan::Keep;
    }
    match found {
        Found::Alive => Plan::Adopt,
        Found::Gone(Some(ExitReason::MigratedAway)) => Plan::Ended {
            state: VmState::MovedAway,
            detail: "moved away while the daemon was down".into(),
        },
        Found::Gone(Some(reason @ ExitReason::Failed { .. })) | Found::Gone(Some(reason))
            if state == VmState::Migrating =>
        {
            // A tombstone that is not MigratedAway: the migration rolled back and the VM
            // ended afterwards, or failed.
            ended_by(reason, has_snapshot)
        }
        Found::Gone(None) if state == VmState::Migrating => Plan::Ended {
            state: VmState::Failed,
            detail: "its VMM died during a migration without saying whether the destination \
                     took it; it may run there (not restored, so it cannot run twice)"
                .into(),
        },
        Found::Gone(Some(reason)) => ended_by(reason, has_snapshot),
        Found::Gone(None) if has_snapshot => Plan::Restore,
        Found::Gone(None) => Plan::Ended {
            state: VmState::Failed,
            detail: "its VMM died with the daemon and there was no checkpoint to restore".into(),
        },
    }
}

fn ended_by(reason: &ExitReason, has_snapshot: bool) -> Plan {
    match reason {
        ExitReason::MigratedAway => Plan::Ended {
            state: VmState::MovedAway,
            detail: "moved away while the daemon was down".into(),
        },
        ExitReason::Failed { .. } if has_snapshot => Plan::Restore,
        ExitReason::Failed { .. } => Plan::Ended {
            state: VmState::Failed,
            detail: describe_reason(reason),
        },
        _ => Plan::Ended {
            state: VmState::Exited,
            detail: describe_reason(reason),
        },
    }
}

/// The exit reason a VMM wrote as it exited, if it did (and the file is sound): the VM
/// engine's tombstone beside the VM's adoption socket.
pub fn read_tombstone(paths: &VmPaths) -> Option<ExitReason> {
    novacron_vm::adopt::read_tombstone(&paths.control_socket())
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
    match (start_ticks, novacron_vm::adopt::process_start_ticks(pid)) {
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
    let name = novacron_vm::launcher::cgroup_name(id);
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

/// Whether a VM that was migrating in when the daemon died certainly started here, from
/// what its VMM left ([`Found::Alive`]: the VMM was adopted). A destination VMM answers
/// adoption only once it runs the VM, and every tombstone but a failure needs a guest that
/// ran here. A failure, or no word at all, cannot be told apart from a transfer that broke.
pub fn incoming_started(found: &Found) -> bool {
    match found {
        Found::Alive => true,
        Found::Gone(Some(ExitReason::Failed { .. })) | Found::Gone(None) => false,
        Found::Gone(Some(_)) => true,
    }
}

/// How a migration the dead daemon left open ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    Done,
    /// It ended without moving the VM; why.
    Failed(String),
    /// Nobody can tell: it stays open; why.
    Open(String),
}

/// Settles a migration of `direction` with `peer` that the dead daemon left open, from what
/// recovery found of the VM's VMM and, for an adopted one, the VM's state after adoption.
/// A source VMM answers adoption only once its migration ended: running means rolled back,
/// paused means it ended in doubt (the VMM gives up waiting as soon as its owner is gone).
pub fn settle(
    direction: MigrationDirection,
    found: &Found,
    adopted_as: Option<VmState>,
    peer: &str,
) -> Settled {
    if direction == MigrationDirection::In {
        return if incoming_started(found) {
            Settled::Done
        } else {
            Settled::Open(
                "the daemon restarted during this migration and the VM's VMM left no word of \
                 having started it: whether it did is unknown"
                    .into(),
            )
        };
    }
    let in_doubt = novacron_vm::control::IN_DOUBT_PREFIX;
    match found {
        Found::Alive if adopted_as == Some(VmState::Running) => {
            Settled::Failed("rolled back while the daemon was down: the VM runs here".into())
        }
        Found::Alive => Settled::Failed(format!(
            "{in_doubt} it ended while the daemon was down, with the VM paused here: it may run \
             on {peer}; check there before resuming it"
        )),
        Found::Gone(Some(ExitReason::MigratedAway)) => Settled::Done,
        Found::Gone(Some(reason)) => Settled::Failed(format!(
            "the VM ended here during the migration: {}",
            describe_reason(reason)
        )),
        Found::Gone(None) => Settled::Failed(format!(
            "{in_doubt} its VMM died with the daemon during the migration: the VM may run on \
             {peer}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::VmInfo;

    fn record(state: VmState) -> VmRecord {
        VmRecord {
            info: VmInfo {
                id: "v".into(),
                spec: serde_json::from_str(r#"{"guest":"builtin:counter"}"#).unwrap(),
                state,
                detail: None,
                pid: Some(1),
                created_at_ms: 0,
                updated_at_ms: 0,
                snapshot_at_ms: None,
                last_report: None,
                adoptions: 0,
            },
            pid_start_ticks: Some(1),
        }
    }

    #[test]
    fn every_active_vm_is_adopted_restored_or_ended() {
        let gone = Found::Gone(None);
        let stopped = Found::Gone(Some(ExitReason::Stopped));
        let moved = Found::Gone(Some(ExitReason::MigratedAway));
        let failed = Found::Gone(Some(ExitReason::Failed {
            message: "boom".into(),
        }));
        for state in [VmState::Starting, VmState::Running, VmState::Paused] {
            let r = record(state);
            assert_eq!(plan(&r, &Found::Alive, false), Plan::Adopt);
            assert_eq!(plan(&r, &gone, true), Plan::Restore);
            assert!(matches!(
                plan(&r, &gone, false),
                Plan::Ended {
                    state: VmState::Failed,
                    ..
                }
            ));
            assert!(matches!(
                plan(&r, &stopped, true),
                Plan::Ended {
                    state: VmState::Exited,
                    ..
                }
            ));
            assert!(matches!(
                plan(&r, &moved, true),
                Plan::Ended {
                    state: VmState::MovedAway,
                    ..
                }
            ));
            assert_eq!(plan(&r, &failed, true), Plan::Restore);
        }
    }

    #[test]
    fn a_vm_that_died_migrating_is_never_restored_without_a_word() {
        let r = record(VmState::Migrating);
        let p = plan(&r, &Found::Gone(None), true);
        assert!(
            matches!(&p, Plan::Ended { state: VmState::Failed, detail } if detail.contains("twice")),
            "{p:?}"
        );
        assert_eq!(plan(&r, &Found::Alive, true), Plan::Adopt);
        assert!(matches!(
            plan(&r, &Found::Gone(Some(ExitReason::MigratedAway)), true),
            Plan::Ended {
                state: VmState::MovedAway,
                ..
            }
        ));
    }

    #[test]
    fn history_and_suspended_vms_are_kept() {
        for state in [
            VmState::Exited,
            VmState::Failed,
            VmState::MovedAway,
            VmState::Suspended,
        ] {
            assert_eq!(plan(&record(state), &Found::Gone(None), true), Plan::Keep);
        }
    }

    #[test]
    fn tombstones_are_read_when_sound() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(read_tombstone(&paths), None);
        std::fs::write(
            novacron_vm::adopt::tombstone_path(&paths.control_socket()),
            br#"{"reason":"migrated_away"}"#,
        )
        .unwrap();
        assert_eq!(read_tombstone(&paths), Some(ExitReason::MigratedAway));
        std::fs::write(
            novacron_vm::adopt::tombstone_path(&paths.control_socket()),
            b"garbage",
        )
        .unwrap();
        assert_eq!(read_tombstone(&paths), None);
    }

    #[test]
    fn an_incoming_vm_started_here_only_if_its_vmm_answered_or_its_guest_ran() {
        assert!(incoming_started(&Found::Alive));
        for ran in [
            ExitReason::GuestExit { status: 0 },
            ExitReason::Reset,
            ExitReason::Shutdown,
            ExitReason::Stopped,
            ExitReason::MigratedAway,
        ] {
            assert!(incoming_started(&Found::Gone(Some(ran))));
        }
        assert!(!incoming_started(&Found::Gone(None)));
        assert!(!incoming_started(&Found::Gone(Some(ExitReason::Failed {
            message: "migration link down".into()
        }))));
    }

    #[test]
    fn an_open_migration_is_settled_by_what_its_vmm_left() {
        use MigrationDirection::{In, Out};
        let failed = Found::Gone(Some(ExitReason::Failed {
            message: "boom".into(),
        }));
        let moved = Found::Gone(Some(ExitReason::MigratedAway));
        assert_eq!(
            settle(In, &Found::Alive, Some(VmState::Running), "p"),
            Settled::Done
        );
        assert!(matches!(settle(In, &failed, None, "p"), Settled::Open(_)));
        assert!(matches!(
            settle(In, &Found::Gone(None), None, "p"),
            Settled::Open(_)
        ));

        assert_eq!(settle(Out, &moved, None, "p"), Settled::Done);
        let rolled_back = settle(Out, &Found::Alive, Some(VmState::Running), "p");
        assert!(matches!(&rolled_back, Settled::Failed(w) if w.contains("rolled back")));
        for (found, adopted_as) in [
            (Found::Alive, Some(VmState::Paused)),
            (Found::Gone(None), None),
        ] {
            let Settled::Failed(why) = settle(Out, &found, adopted_as, "peerX") else {
                panic!("not failed");
            };
            assert!(
                why.starts_with(novacron_vm::control::IN_DOUBT_PREFIX) && why.contains("peerX"),
                "{why}"
            );
        }
        assert!(
            matches!(settle(Out, &failed, None, "p"), Settled::Failed(w) if w.contains("boom"))
        );
    }
}
