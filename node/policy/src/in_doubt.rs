//! A migration in doubt, and how it settles later: its streams broke after the VM's state
//! left, so the source could not know whether the destination started the VM, and its VMM
//! ended the migration with the VM paused here (or a restart found it so). Its record is
//! failed with an error beginning [`IN_DOUBT_PREFIX`]; it is not settled ([`settled`]) and
//! counts as neither done nor failed until it is.
//!
//! It settles from the truth, never from a guess ([`settle`], pure): the VM's tombstone saying
//! it moved away; the VM running here again; or the peer's answer, from its durable record of
//! the incoming migration, when asked (at start and periodically, by the daemon). "Started
//! there": done, the copy here is discarded. "Never started there": rolled back, the VM
//! resumes here (or comes back from its checkpoint if its VMM died meanwhile). A peer that
//! cannot say, or cannot be reached, leaves it in doubt, to be asked again.

use novacron_vm::exit::{ExitReason, IN_DOUBT_PREFIX};

use novacron_model::{MigrationDirection, MigrationInfo, MigrationState};

/// Whether `m` is an outgoing migration that ended in doubt and has not settled since.
pub fn in_doubt(m: &MigrationInfo) -> bool {
    m.direction == MigrationDirection::Out
        && m.state == MigrationState::Failed
        && m.error
            .as_deref()
            .is_some_and(|e| e.starts_with(IN_DOUBT_PREFIX))
}

/// Whether `m` has its final outcome: ended, and not in doubt.
pub fn settled(m: &MigrationInfo) -> bool {
    m.state.is_final() && !in_doubt(m)
}

/// What the peer said when asked whether it started the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAnswer {
    Started,
    /// It never started the VM and never will (its record of the migration is final).
    NotStarted,
    /// It cannot say (its record is open or missing), or could not be asked: why.
    Unknown(String),
}

/// What is here of the VM.
#[derive(Clone, Debug, PartialEq)]
pub enum Here {
    /// Its VMM holds it paused, as the doubt left it.
    Paused,
    /// It runs here again: it did not move.
    Running,
    /// No VMM runs it. `tombstone`: how its last VMM ended, if it said; `died`: the VM's
    /// record says it failed (nobody chose to end it); `restorable`: it has a checkpoint.
    NoVmm {
        tombstone: Option<ExitReason>,
        died: bool,
        restorable: bool,
    },
    /// Its VMM is busy with it (migrating, starting): not now.
    Busy,
}

/// What the node does here once the migration rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Resume,
    /// Start it from its checkpoint (its VMM died while it was in doubt).
    Restore,
    Nothing,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It runs on the peer: the migration is done, a paused copy here is discarded.
    MovedAway(String),
    /// It never started on the peer: the migration rolled back.
    RolledBack { why: String, then: Then },
    /// Only the peer's answer can settle it: ask, then settle again with the answer.
    AskPeer,
    /// Nothing settles it yet: why.
    StillInDoubt(String),
}

/// How a migration in doubt with `peer` settles, from what is here and, once asked, what
/// the peer answered (`answer` None: not asked yet; what is here may settle it alone, else
/// the outcome is [`Outcome::AskPeer`]).
pub fn settle(here: &Here, answer: Option<&PeerAnswer>, peer: &str) -> Outcome {
    match (here, answer) {
        (
            Here::NoVmm {
                tombstone: Some(ExitReason::MigratedAway),
                ..
            },
            _,
        ) => Outcome::MovedAway("its VMM's tombstone says it moved away".into()),
        (Here::Running, _) => Outcome::RolledBack {
            why: "it runs here again".into(),
            then: Then::Nothing,
        },
        (Here::Busy, _) => Outcome::StillInDoubt("the VM is busy here".into()),
        (_, None) => Outcome::AskPeer,
        (_, Some(PeerAnswer::Unknown(why))) => Outcome::StillInDoubt(why.clone()),
        (_, Some(PeerAnswer::Started)) => {
            Outcome::MovedAway(format!("{peer} said it started the VM"))
        }
        (here, Some(PeerAnswer::NotStarted)) => {
            let then = match here {
                Here::Paused => Then::Resume,
                Here::NoVmm {
                    died: true,
                    restorable: true,
                    ..
                } => Then::Restore,
                _ => Then::Nothing,
            };
            Outcome::RolledBack {
                why: format!("{peer} said it never started the VM"),
                then,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::MigrationMode;

    fn migration(
        direction: MigrationDirection,
        state: MigrationState,
        error: &str,
    ) -> MigrationInfo {
        MigrationInfo {
            id: "00112233aabbccdd".into(),
            vm_id: "v".into(),
            direction,
            peer: "p".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1,
            ended_at_ms: Some(2),
            downtime_ms: None,
            wire_bytes: 0,
            error: (!error.is_empty()).then(|| error.to_string()),
            progress: None,
        }
    }

    #[test]
    fn only_an_outgoing_failure_in_doubt_is_unsettled_among_ended_migrations() {
        use MigrationDirection::{In, Out};
        let doubt = format!("{IN_DOUBT_PREFIX} nobody could say");
        let m = migration(Out, MigrationState::Failed, &doubt);
        assert!(in_doubt(&m) && !settled(&m));
        let resumed = format!("resumed here by an operator after: {doubt}");
        for (direction, state, error) in [
            (Out, MigrationState::Done, ""),
            (Out, MigrationState::Failed, "link down"),
            (Out, MigrationState::Failed, resumed.as_str()),
            (Out, MigrationState::Cancelled, ""),
            (In, MigrationState::Failed, doubt.as_str()),
            (In, MigrationState::Done, ""),
        ] {
            let m = migration(direction, state, error);
            assert!(!in_doubt(&m) && settled(&m), "{m:?}");
        }
        let open = migration(Out, MigrationState::Running, "");
        assert!(!in_doubt(&open) && !settled(&open));
    }

    fn no_vmm(tombstone: Option<ExitReason>, died: bool, restorable: bool) -> Here {
        Here::NoVmm {
            tombstone,
            died,
            restorable,
        }
    }

    #[test]
    fn every_situation_and_answer_settles_by_the_truth_or_stays_in_doubt() {
        let started = PeerAnswer::Started;
        let not_started = PeerAnswer::NotStarted;
        let unknown = PeerAnswer::Unknown("its record is open".into());
        let answers = [None, Some(&started), Some(&not_started), Some(&unknown)];
        let heres = [
            Here::Paused,
            Here::Running,
            Here::Busy,
            no_vmm(Some(ExitReason::MigratedAway), false, false),
            no_vmm(None, true, true),
            no_vmm(None, true, false),
            no_vmm(Some(ExitReason::Stopped), false, true),
            no_vmm(
                Some(ExitReason::Failed {
                    message: "boom".into(),
                }),
                true,
                true,
            ),
        ];
        for here in &heres {
            for answer in answers {
                let outcome = settle(here, answer, "peerP");
                let expected = match (here, answer) {
                    // The local truth needs nobody's word.
                    (
                        Here::NoVmm {
                            tombstone: Some(ExitReason::MigratedAway),
                            ..
                        },
                        _,
                    ) => "moved",
                    (Here::Running, _) => "rolled back",
                    (Here::Busy, _) => "doubt",
                    // Otherwise only the peer's durable answer settles it.
                    (_, None) => "ask",
                    (_, Some(PeerAnswer::Unknown(_))) => "doubt",
                    (_, Some(PeerAnswer::Started)) => "moved",
                    (_, Some(PeerAnswer::NotStarted)) => "rolled back",
                };
                let got = match &outcome {
                    Outcome::MovedAway(_) => "moved",
                    Outcome::RolledBack { .. } => "rolled back",
                    Outcome::StillInDoubt(_) => "doubt",
                    Outcome::AskPeer => "ask",
                };
                assert_eq!(got, expected, "{here:?} {answer:?}: {outcome:?}");
            }
        }
    }

    #[test]
    fn a_rolled_back_vm_resumes_or_comes_back_only_if_it_did_not_end_by_choice() {
        let then = |here: &Here| match settle(here, Some(&PeerAnswer::NotStarted), "peerP") {
            Outcome::RolledBack { then, .. } => then,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            settle(&Here::Paused, Some(&PeerAnswer::NotStarted), "peerP"),
            Outcome::RolledBack { why, .. } if why.contains("peerP")
        ));
        assert_eq!(then(&Here::Paused), Then::Resume);
        assert_eq!(then(&no_vmm(None, true, true)), Then::Restore);
        let crashed = Some(ExitReason::Failed {
            message: "boom".into(),
        });
        assert_eq!(then(&no_vmm(crashed, true, true)), Then::Restore);
        // No checkpoint: the VM is lost here, and the record says so.
        assert_eq!(then(&no_vmm(None, true, false)), Then::Nothing);
        // An operator stopped it: it stays stopped.
        assert_eq!(
            then(&no_vmm(Some(ExitReason::Stopped), false, true)),
            Then::Nothing
        );
        assert_eq!(then(&Here::Running), Then::Nothing);
        let unknown = PeerAnswer::Unknown("unreachable".into());
        assert_eq!(
            settle(&Here::Paused, Some(&unknown), "p"),
            Outcome::StillInDoubt("unreachable".into())
        );
    }
}
