//! The recovery plan: what a starting daemon does with each VM its database lists: the VM is accounted for
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
//! * A VM that was migrating in is never restored from a checkpoint (one from an earlier
//!   stay here is stale, and the VM runs on its source unless it started here): it is
//!   adopted, or recorded as its VMM left it ([`incoming_outcome`]).
//! * A VMM that answers adoption only to say its VM ended (it waited for an owner to tell)
//!   is judged by that reason, as a tombstone: adopting it is not a VM that runs here.
//!
//! * A migration the dead daemon left open is settled from what was found ([`settle`]): an
//!   incoming one is done when the VM certainly started here, failed when its VMM certainly
//!   never started it ([`incoming_outcome`]), and otherwise stays open, so a source in doubt
//!   that asks hears "unknown", never a guess; an outgoing one ended when the VMM did (done,
//!   rolled back, or in doubt with the VM paused here). A migration whose VM the dead daemon
//!   had not yet given a VMM is settled from the VM's record ([`settle_without_vmm`]).
//!
//! Any VMM process of a VM that is not adopted is killed (its cgroup emptied), so none
//! leaks and none runs twice.
//!
//! Pure: the daemon (`vms/restart.rs`) gathers what it finds of each VMM (`vms/recovery.rs`
//! reads tombstones, checks processes and kills leftovers) and carries out the plan.

use novacron_vm::exit::{
    describe_reason, ExitReason, INCOMING_ROLLED_BACK_PREFIX, IN_DOUBT_PREFIX,
};

use novacron_model::{MigrationDirection, VmState};

/// What was found of a VM's VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// A process with the recorded pid and start time.
    Alive,
    /// No such process; its tombstone, if it wrote one.
    Gone(Option<ExitReason>),
    /// No VMM was launched for the VM's last start: no pid was recorded (the daemon records
    /// it as soon as it sent the launch) and no VMM left a tombstone.
    NeverLaunched,
}

/// What was found of a VM's VMM from what the dead daemon recorded: whether the recorded
/// process still runs (`alive`), whether a pid was recorded at all, and the tombstone.
pub fn found(alive: bool, pid_recorded: bool, tombstone: Option<ExitReason>) -> Found {
    match (alive, pid_recorded, tombstone) {
        (true, _, _) => Found::Alive,
        (false, false, None) => Found::NeverLaunched,
        (false, _, tombstone) => Found::Gone(tombstone),
    }
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

/// Decides what to do with one VM in `state` (its recorded state). `migrating_in`:
/// the peer of the VM's open incoming migration, if it has one.
pub fn plan(state: VmState, found: &Found, has_snapshot: bool, migrating_in: Option<&str>) -> Plan {
    if !state.is_active() {
        return Plan::Keep;
    }
    match (found, migrating_in) {
        (Found::Alive, _) => Plan::Adopt,
        (found, Some(peer)) => incoming_ended(found, peer),
        (Found::Gone(reason), None) => here_ended(state, reason.as_ref(), has_snapshot),
        (Found::NeverLaunched, None) => here_ended(state, None, has_snapshot),
    }
}

/// A VM migrating in whose VMM is gone: recorded by what it left, never restored.
fn incoming_ended(found: &Found, peer: &str) -> Plan {
    match (incoming_outcome(found), found) {
        (Incoming::Started, Found::Gone(Some(reason))) => ended_by(reason, false),
        (Incoming::NotStarted, _) => Plan::Ended {
            state: VmState::MovedAway,
            detail: format!(
                "its incoming migration from {peer} ended while the daemon was down: {}; it \
                 runs there",
                never_started(found)
            ),
        },
        _ => Plan::Ended {
            state: VmState::Failed,
            detail: format!(
                "its VMM ended during its incoming migration from {peer} without saying whether \
                 it started the VM; not restored here (it may run there)"
            ),
        },
    }
}

/// A VM that ran here (or was leaving) whose VMM is gone, with its tombstone if it left one.
fn here_ended(state: VmState, reason: Option<&ExitReason>, has_snapshot: bool) -> Plan {
    match reason {
        Some(reason) => ended_by(reason, has_snapshot),
        None if state == VmState::Migrating => Plan::Ended {
            state: VmState::Failed,
            detail: "its VMM died during a migration without saying whether the destination \
                     took it; it may run there (not restored, so it cannot run twice)"
                .into(),
        },
        None if has_snapshot => Plan::Restore,
        None => Plan::Ended {
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

/// Whether a VM migrating in started here, as far as its VMM can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    Started,
    /// Its VMM never started it and never will: the VM runs on its source.
    NotStarted,
    /// Nobody can tell.
    Unknown,
}

/// Whether a VM that was migrating in when the daemon died started here, from what its VMM
/// left ([`Found::Alive`]: the VMM was adopted running or paused). A destination VMM
/// answers adoption only once it runs the VM, and every tombstone but a failure needs a
/// guest that ran here. A failure that says the incoming migration rolled back proves the
/// VMM never started it; any other failure, or no word at all, cannot be told apart from a
/// guest that started and then died.
pub fn incoming_outcome(found: &Found) -> Incoming {
    match found {
        Found::Alive => Incoming::Started,
        Found::Gone(Some(ExitReason::Failed { message }))
            if message.starts_with(INCOMING_ROLLED_BACK_PREFIX) =>
        {
            Incoming::NotStarted
        }
        Found::Gone(Some(ExitReason::Failed { .. })) | Found::Gone(None) => Incoming::Unknown,
        Found::Gone(Some(_)) => Incoming::Started,
        Found::NeverLaunched => Incoming::NotStarted,
    }
}

/// Why a VM migrating in certainly never started here ([`Incoming::NotStarted`]).
fn never_started(found: &Found) -> String {
    match found {
        Found::Gone(Some(reason)) => describe_reason(reason),
        _ => "the daemon died before it launched a VMM for the VM".into(),
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
/// recovery found of the VM's VMM, the VM's recorded state (`was`) and, for an adopted one,
/// its state after adoption. A source VMM answers adoption only once its migration ended:
/// running means rolled back, paused means it ended in doubt (the VMM gives up waiting as
/// soon as its owner is gone). A VM not recorded as migrating never had its VMM told to
/// migrate (the record says so as soon as the VMM took the command): it never left.
pub fn settle(
    direction: MigrationDirection,
    found: &Found,
    was: VmState,
    adopted_as: Option<VmState>,
    peer: &str,
) -> Settled {
    if direction == MigrationDirection::In {
        return match incoming_outcome(found) {
            Incoming::Started => Settled::Done,
            Incoming::NotStarted => Settled::Failed(format!(
                "{} (while the daemon was down): the VM runs on {peer}",
                never_started(found)
            )),
            _ => Settled::Open(
                "the daemon restarted during this migration and the VM's VMM left no word of \
                 having started it: whether it did is unknown"
                    .into(),
            ),
        };
    }
    let in_doubt = IN_DOUBT_PREFIX;
    let migrating = was == VmState::Migrating;
    match found {
        Found::Alive if adopted_as == Some(VmState::Running) => {
            Settled::Failed("rolled back while the daemon was down: the VM runs here".into())
        }
        Found::Alive | Found::Gone(None) | Found::NeverLaunched if !migrating => Settled::Failed(
            "the daemon died before the VM's VMM took the migration: the VM never left".into(),
        ),
        Found::Alive => Settled::Failed(format!(
            "{in_doubt} it ended while the daemon was down, with the VM paused here: it may run \
             on {peer}; check there before resuming it"
        )),
        Found::Gone(Some(ExitReason::MigratedAway)) => Settled::Done,
        Found::Gone(Some(reason)) => Settled::Failed(format!(
            "the VM ended here during the migration: {}",
            describe_reason(reason)
        )),
        Found::Gone(None) | Found::NeverLaunched => Settled::Failed(format!(
            "{in_doubt} its VMM died with the daemon during the migration: the VM may run on \
             {peer}"
        )),
    }
}

/// Settles a migration the dead daemon left open whose VM it had not (yet) given a VMM
/// for it: the VM's record is not one of a VM arriving or leaving (`vm`: its state, None if
/// there is none). A VM migrating in gets its record (starting) before its VMM exists, so
/// this one never started here; a VM that left had its end recorded by its VMM's events.
pub fn settle_without_vmm(direction: MigrationDirection, vm: Option<VmState>) -> Settled {
    match (direction, vm) {
        (MigrationDirection::In, _) => Settled::Failed(
            "the daemon died before it started a VMM for the VM: it never ran here".into(),
        ),
        (MigrationDirection::Out, Some(VmState::MovedAway)) => Settled::Done,
        (MigrationDirection::Out, Some(state)) => Settled::Failed(format!(
            "the daemon died during the migration; the VM is {} here",
            state.as_str()
        )),
        (MigrationDirection::Out, None) => {
            Settled::Failed("the daemon died during the migration; the VM is unknown here".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rolled_back_in() -> Found {
        Found::Gone(Some(ExitReason::Failed {
            message: format!("{} link down", INCOMING_ROLLED_BACK_PREFIX),
        }))
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
            let r = state;
            assert_eq!(plan(r, &Found::Alive, false, None), Plan::Adopt);
            assert_eq!(plan(r, &gone, true, None), Plan::Restore);
            assert!(matches!(
                plan(r, &gone, false, None),
                Plan::Ended {
                    state: VmState::Failed,
                    ..
                }
            ));
            assert!(matches!(
                plan(r, &stopped, true, None),
                Plan::Ended {
                    state: VmState::Exited,
                    ..
                }
            ));
            assert!(matches!(
                plan(r, &moved, true, None),
                Plan::Ended {
                    state: VmState::MovedAway,
                    ..
                }
            ));
            assert_eq!(plan(r, &failed, true, None), Plan::Restore);
        }
    }

    #[test]
    fn a_vm_that_died_migrating_is_never_restored_without_a_word() {
        let r = VmState::Migrating;
        let p = plan(r, &Found::Gone(None), true, None);
        assert!(
            matches!(&p, Plan::Ended { state: VmState::Failed, detail } if detail.contains("twice")),
            "{p:?}"
        );
        assert_eq!(plan(r, &Found::Alive, true, None), Plan::Adopt);
        assert!(matches!(
            plan(r, &Found::Gone(Some(ExitReason::MigratedAway)), true, None),
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
            assert_eq!(plan(state, &Found::Gone(None), true, None), Plan::Keep);
        }
    }

    #[test]
    fn an_incoming_vm_started_here_only_if_its_vmm_answered_or_its_guest_ran() {
        assert_eq!(incoming_outcome(&Found::Alive), Incoming::Started);
        for ran in [
            ExitReason::GuestExit { status: 0 },
            ExitReason::Reset,
            ExitReason::Shutdown,
            ExitReason::Stopped,
            ExitReason::MigratedAway,
        ] {
            assert_eq!(incoming_outcome(&Found::Gone(Some(ran))), Incoming::Started);
        }
        assert_eq!(incoming_outcome(&Found::Gone(None)), Incoming::Unknown);
        assert_eq!(
            incoming_outcome(&Found::Gone(Some(ExitReason::Failed {
                message: "migration link down".into()
            }))),
            Incoming::Unknown
        );
        // Only the destination VMM's own word that it rolled back proves it never started.
        assert_eq!(incoming_outcome(&rolled_back_in()), Incoming::NotStarted);
    }

    #[test]
    fn a_vm_migrating_in_is_never_restored_and_ends_as_its_vmm_left_it() {
        // A checkpoint of an earlier stay here is stale: the VM runs on its source.
        let r = VmState::Starting;
        let plan_in = |found: &Found| plan(r, found, true, Some("peerS"));
        assert_eq!(plan_in(&Found::Alive), Plan::Adopt);
        let Plan::Ended { state, detail } = plan_in(&rolled_back_in()) else {
            panic!("not ended");
        };
        assert_eq!(state, VmState::MovedAway);
        assert!(
            detail.contains("peerS") && detail.contains("link down"),
            "{detail}"
        );
        for unknown in [
            Found::Gone(None),
            Found::Gone(Some(ExitReason::Failed {
                message: "boom".into(),
            })),
        ] {
            let p = plan_in(&unknown);
            assert!(
                matches!(&p, Plan::Ended { state: VmState::Failed, detail } if detail.contains("peerS")),
                "{p:?}"
            );
        }
        assert!(matches!(
            plan_in(&Found::Gone(Some(ExitReason::GuestExit { status: 0 }))),
            Plan::Ended {
                state: VmState::Exited,
                ..
            }
        ));
        assert!(matches!(
            plan_in(&Found::Gone(Some(ExitReason::MigratedAway))),
            Plan::Ended {
                state: VmState::MovedAway,
                ..
            }
        ));
    }

    #[test]
    fn an_open_migration_is_settled_by_what_its_vmm_left() {
        use MigrationDirection::{In, Out};
        let failed = Found::Gone(Some(ExitReason::Failed {
            message: "boom".into(),
        }));
        let moved = Found::Gone(Some(ExitReason::MigratedAway));
        assert_eq!(
            settle(
                In,
                &Found::Alive,
                VmState::Starting,
                Some(VmState::Running),
                "p"
            ),
            Settled::Done
        );
        assert!(matches!(
            settle(In, &failed, VmState::Starting, None, "p"),
            Settled::Open(_)
        ));
        assert!(
            matches!(settle(In, &rolled_back_in(), VmState::Starting, None, "peerS"), Settled::Failed(w) if w.contains("peerS") && w.contains("link down"))
        );
        assert_eq!(
            settle(
                In,
                &Found::Gone(Some(ExitReason::GuestExit { status: 0 })),
                VmState::Starting,
                None,
                "p"
            ),
            Settled::Done
        );
        assert!(matches!(
            settle(In, &Found::Gone(None), VmState::Starting, None, "p"),
            Settled::Open(_)
        ));

        assert_eq!(
            settle(Out, &moved, VmState::Migrating, None, "p"),
            Settled::Done
        );
        let rolled_back = settle(
            Out,
            &Found::Alive,
            VmState::Migrating,
            Some(VmState::Running),
            "p",
        );
        assert!(matches!(&rolled_back, Settled::Failed(w) if w.contains("rolled back")));
        for (found, adopted_as) in [
            (Found::Alive, Some(VmState::Paused)),
            (Found::Gone(None), None),
        ] {
            let Settled::Failed(why) = settle(Out, &found, VmState::Migrating, adopted_as, "peerX")
            else {
                panic!("not failed");
            };
            assert!(
                why.starts_with(IN_DOUBT_PREFIX) && why.contains("peerX"),
                "{why}"
            );
        }
        assert!(
            matches!(settle(Out, &failed, VmState::Migrating, None, "p"), Settled::Failed(w) if w.contains("boom"))
        );
    }

    #[test]
    fn a_migration_whose_vm_had_no_vmm_for_it_is_settled_from_the_vm_record() {
        use MigrationDirection::{In, Out};
        for vm in [None, Some(VmState::MovedAway), Some(VmState::Failed)] {
            assert!(matches!(settle_without_vmm(In, vm), Settled::Failed(_)));
        }
        assert_eq!(
            settle_without_vmm(Out, Some(VmState::MovedAway)),
            Settled::Done
        );
        for vm in [
            None,
            Some(VmState::Exited),
            Some(VmState::Failed),
            Some(VmState::Suspended),
        ] {
            assert!(matches!(settle_without_vmm(Out, vm), Settled::Failed(_)));
        }
    }

    #[test]
    fn a_vmm_never_launched_is_told_apart_from_one_gone_without_a_word() {
        let stone = Some(ExitReason::Stopped);
        assert_eq!(found(true, true, None), Found::Alive);
        assert_eq!(found(true, false, None), Found::Alive);
        assert_eq!(found(false, true, None), Found::Gone(None));
        assert_eq!(
            found(false, true, stone.clone()),
            Found::Gone(stone.clone())
        );
        assert_eq!(found(false, false, stone.clone()), Found::Gone(stone));
        assert_eq!(found(false, false, None), Found::NeverLaunched);

        // A VM migrating in that never got its VMM never started here.
        assert_eq!(
            incoming_outcome(&Found::NeverLaunched),
            Incoming::NotStarted
        );
        let r = VmState::Starting;
        assert!(matches!(
            plan(r, &Found::NeverLaunched, true, Some("peerS")),
            Plan::Ended { state: VmState::MovedAway, detail } if detail.contains("peerS")
        ));
        let settled = settle(
            MigrationDirection::In,
            &Found::NeverLaunched,
            VmState::Starting,
            None,
            "peerS",
        );
        assert!(
            matches!(&settled, Settled::Failed(w) if w.contains("peerS") && w.contains("launched")),
            "{settled:?}"
        );
        // Any other VM: as gone without a word.
        assert_eq!(plan(r, &Found::NeverLaunched, true, None), Plan::Restore);
    }

    #[test]
    fn a_vm_whose_vmm_never_took_the_migration_never_left() {
        use MigrationDirection::Out;
        // The record says migrating once the VMM took the command; before that, nothing
        // left, whatever state the VMM is in: no doubt about it.
        for (found, adopted_as) in [
            (Found::Alive, Some(VmState::Paused)),
            (Found::Gone(None), None),
            (Found::NeverLaunched, None),
        ] {
            for was in [VmState::Running, VmState::Paused] {
                let settled = settle(Out, &found, was, adopted_as, "p");
                assert!(
                    matches!(&settled, Settled::Failed(w) if w.contains("never left")),
                    "{found:?} {was:?}: {settled:?}"
                );
            }
        }
        let settled = settle(
            Out,
            &Found::NeverLaunched,
            VmState::Migrating,
            None,
            "peerX",
        );
        assert!(
            matches!(&settled, Settled::Failed(w) if w.starts_with(IN_DOUBT_PREFIX)),
            "{settled:?}"
        );
    }
}
