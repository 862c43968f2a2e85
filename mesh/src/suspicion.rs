//! Confirming the failure detector's "dead" with a direct probe before anyone acts on it
//! (SWIM's suspicion, with chitchat's phi accrual as the suspicion source).
//!
//! Why: phi accrual judges a member by how late its heartbeats reach this node through
//! gossip. When this node, the member or the gossip between them is slow for a while (a
//! loaded host; measured: 100 nodes on 2 cores, load average over 100, gave 19 false "down"s
//! in one `bench mesh` run), the heartbeats are late although the member is alive. A false
//! "down" is not harmless: it moves work for nothing. So a member the detector gives up on is
//! only *suspected*: it is still reported live while one direct probe (a fresh stream to it,
//! answered by its own network stack) runs. An answer refutes the suspicion for
//! [`SuspicionConfig::refuted_for`], after which a member the detector still holds dead is
//! probed again. A refusal (dial refused, protocol not served) confirms it dead, and so do
//! [`SuspicionConfig::attempts`] probes in a row unanswered within
//! [`SuspicionConfig::probe_timeout`] (one silent probe is not enough on a loaded host). A
//! dead member that was never reported live (known only from gossip, or already confirmed)
//! is not probed.
//!
//! What it costs: a probe per suspicion, none while every member is heard. What it adds to a
//! real failure's detection: the probe of a process that is gone fails at once (the dial is
//! refused), so a round or two of the driver; a host that vanished (no refusal) adds the
//! probe timeout once per attempt.
//!
//! Pure: the driver passes `now` (since its epoch), the detector's view each round and each
//! probe's outcome. Keys are generic so the simulator can use its own node ids; ordered, so
//! which suspects get the probe slots first is reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How suspicion is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspicionConfig {
    /// A probe not answered within this is silent.
    pub probe_timeout: Duration,
    /// Silent probes in a row that confirm a member dead (a refused one confirms at once).
    pub attempts: u8,
    /// How long an answered probe keeps a member live while the detector still holds it dead.
    pub refuted_for: Duration,
    /// Probes in flight at once; other suspects wait (still reported live) for a slot.
    pub max_probes: usize,
}

impl Default for SuspicionConfig {
    fn default() -> Self {
        SuspicionConfig {
            probe_timeout: Duration::from_secs(5),
            attempts: 2,
            refuted_for: Duration::from_secs(10),
            max_probes: 8,
        }
    }
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The member answered: it is alive.
    Answered,
    /// Its host or stack said no (dial refused, protocol not served, connection reset): the
    /// process is gone, or its cell is.
    Refused,
    /// No word within the timeout: gone, or too slow to tell; probed again up to
    /// [`SuspicionConfig::attempts`] times.
    Silent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Suspected; waiting for a probe slot, after `silent` silent probes.
    Waiting { silent: u8 },
    /// A probe started at this time, after `silent` silent probes.
    Probing { started: Duration, silent: u8 },
    /// A probe was answered; live until then.
    Refuted { until: Duration },
    /// No answer: dead, until the detector hears it again.
    Confirmed,
}

/// The members under suspicion.
#[derive(Clone, Debug)]
pub struct Suspicion<K> {
    cfg: SuspicionConfig,
    states: BTreeMap<K, State>,
    /// Members the last round reported live: until the next round judges a newer "dead",
    /// they keep that.
    last_live: BTreeSet<K>,
    /// Probes answered so far: the false "dead"s the detector would have caused.
    refuted: u64,
}

impl<K: Copy + Ord> Suspicion<K> {
    pub fn new(cfg: SuspicionConfig) -> Suspicion<K> {
        Suspicion {
            cfg,
            states: BTreeMap::new(),
            last_live: BTreeSet::new(),
            refuted: 0,
        }
    }

    /// One round of the detector's view: each member with whether the detector holds it live
    /// and whether it was reported live last round. Members not listed are forgotten.
    /// Returns the members to probe now.
    pub fn round(
        &mut self,
        members: impl IntoIterator<Item = (K, bool, bool)>,
        now: Duration,
    ) -> Vec<K> {
        let mut seen = BTreeSet::new();
        let mut live = BTreeSet::new();
        for (member, detector_live, was_reported_live) in members {
            seen.insert(member);
            if detector_live {
                self.states.remove(&member);
                live.insert(member);
                continue;
            }
            let state = self.states.get(&member).copied();
            let next = match state {
                None if was_reported_live => Some(State::Waiting { silent: 0 }),
                None => None,
                Some(State::Refuted { until }) if now >= until => {
                    Some(State::Waiting { silent: 0 })
                }
                // A probe whose outcome never came back (its task is gone) counts as
                // refused, with a round of grace.
                Some(State::Probing { started, .. })
                    if now.saturating_sub(started) > self.cfg.probe_timeout * 2 =>
                {
                    Some(State::Confirmed)
                }
                other => other,
            };
            match next {
                Some(s) => self.states.insert(member, s),
                None => self.states.remove(&member),
            };
            if next.is_some_and(|s| s != State::Confirmed) {
                live.insert(member);
            }
        }
        self.states.retain(|m, _| seen.contains(m));
        self.last_live = live;
        // At least one probe, or suspects would wait (live) for ever.
        let mut slots = self.cfg.max_probes.max(1).saturating_sub(
            self.states
                .values()
                .filter(|s| matches!(s, State::Probing { .. }))
                .count(),
        );
        let mut probes = Vec::new();
        for (member, state) in &mut self.states {
            if slots == 0 {
                break;
            }
            if let State::Waiting { silent } = *state {
                *state = State::Probing {
                    started: now,
                    silent,
                };
                probes.push(*member);
                slots -= 1;
            }
        }
        probes
    }

    /// A probe of `member` ended. An outcome nobody waits for (the member was heard again,
    /// or forgotten, meanwhile) is ignored.
    pub fn probed(&mut self, member: K, outcome: ProbeOutcome, now: Duration) {
        let Some(state) = self.states.get_mut(&member) else {
            return;
        };
        let State::Probing { silent, .. } = *state else {
            return;
        };
        *state = match outcome {
            ProbeOutcome::Answered => {
                self.refuted += 1;
                State::Refuted {
                    until: now + self.cfg.refuted_for,
                }
            }
            ProbeOutcome::Silent if silent.saturating_add(1) < self.cfg.attempts => {
                State::Waiting { silent: silent + 1 }
            }
            ProbeOutcome::Silent | ProbeOutcome::Refused => State::Confirmed,
        };
    }

    /// Whether to report `member` live, given the detector's word (which may be newer than
    /// the last round: a member that round reported live stays live until the next one).
    pub fn reported_live(&self, member: &K, detector_live: bool) -> bool {
        detector_live
            || match self.states.get(member) {
                Some(State::Confirmed) => false,
                Some(_) => true,
                None => self.last_live.contains(member),
            }
    }

    /// Probes answered so far: the detector's false "dead"s that were not reported.
    pub fn refuted(&self) -> u64 {
        self.refuted
    }

    /// Members suspected now (waiting for a probe, probing, or refuted and held live).
    pub fn suspected(&self) -> usize {
        self.states
            .values()
            .filter(|s| **s != State::Confirmed)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn cfg() -> SuspicionConfig {
        SuspicionConfig {
            probe_timeout: s(5),
            attempts: 2,
            refuted_for: s(10),
            max_probes: 2,
        }
    }

    #[test]
    fn a_suspect_stays_live_while_probed_and_an_answer_refutes_it() {
        let mut sus = Suspicion::new(cfg());
        assert!(sus.round([(1, true, true)], s(0)).is_empty());
        // The detector gives up on 1: it is probed, and still reported live.
        assert_eq!(sus.round([(1, false, true)], s(1)), vec![1]);
        assert!(sus.reported_live(&1, false));
        assert!(
            sus.round([(1, false, true)], s(2)).is_empty(),
            "one probe at a time"
        );
        sus.probed(1, ProbeOutcome::Answered, s(2));
        assert!(sus.reported_live(&1, false));
        // Refuted for 10 s; then probed again if the detector still holds it dead.
        assert!(sus.round([(1, false, true)], s(11)).is_empty());
        assert_eq!(sus.round([(1, false, true)], s(12)), vec![1]);
        // Heard again: no longer suspected; a late outcome is ignored.
        assert!(sus.round([(1, true, true)], s(13)).is_empty());
        sus.probed(1, ProbeOutcome::Refused, s(14));
        assert!(sus.reported_live(&1, true));
        assert_eq!(sus.suspected(), 0);
        assert_eq!(sus.refuted(), 1);
    }

    #[test]
    fn no_answer_confirms_and_a_confirmed_member_is_not_probed_again() {
        let mut sus = Suspicion::new(cfg());
        assert_eq!(sus.round([(7, false, true)], s(0)), vec![7]);
        sus.probed(7, ProbeOutcome::Refused, s(0));
        assert!(!sus.reported_live(&7, false));
        assert!(sus.round([(7, false, false)], s(1)).is_empty());
        assert!(sus.round([(7, false, false)], s(100)).is_empty());
        assert!(!sus.reported_live(&7, false));
        // It comes back: live, and a new failure is suspected afresh.
        sus.round([(7, true, false)], s(101));
        assert!(sus.reported_live(&7, true));
        assert_eq!(sus.round([(7, false, true)], s(102)), vec![7]);
    }

    #[test]
    fn a_newer_dead_verdict_waits_for_the_next_round() {
        let mut sus = Suspicion::new(cfg());
        sus.round([(1, true, true), (2, false, false)], s(0));
        // Between rounds the detector gives up on 1: still live until a round probes it.
        assert!(sus.reported_live(&1, false));
        assert!(!sus.reported_live(&2, false));
        assert_eq!(
            sus.round([(1, false, true), (2, false, false)], s(1)),
            vec![1]
        );
        sus.probed(1, ProbeOutcome::Refused, s(1));
        assert!(!sus.reported_live(&1, false));
        sus.round([(1, false, false), (2, false, false)], s(2));
        assert!(!sus.reported_live(&1, false));
    }

    #[test]
    fn a_silent_probe_is_tried_again_and_a_refused_one_is_final() {
        let mut sus = Suspicion::new(cfg());
        let view = [(1, false, true), (2, false, true)];
        assert_eq!(sus.round(view, s(0)), vec![1, 2]);
        sus.probed(1, ProbeOutcome::Silent, s(5));
        sus.probed(2, ProbeOutcome::Refused, s(0));
        assert!(sus.reported_live(&1, false));
        assert!(!sus.reported_live(&2, false));
        // 1 is probed a second time; silent again, it is dead.
        assert_eq!(sus.round(view, s(6)), vec![1]);
        assert!(sus.reported_live(&1, false));
        sus.probed(1, ProbeOutcome::Silent, s(11));
        assert!(!sus.reported_live(&1, false));
        assert!(sus.round(view, s(12)).is_empty());
        assert!(!sus.reported_live(&1, false));
    }

    #[test]
    fn a_member_never_reported_live_is_not_probed() {
        let mut sus = Suspicion::new(cfg());
        assert!(sus.round([(3, false, false)], s(0)).is_empty());
        assert!(!sus.reported_live(&3, false));
        assert_eq!(sus.suspected(), 0);
    }

    #[test]
    fn a_lost_outcome_confirms_after_twice_the_timeout() {
        let mut sus = Suspicion::new(cfg());
        assert_eq!(sus.round([(2, false, true)], s(0)), vec![2]);
        assert!(sus.round([(2, false, true)], s(10)).is_empty());
        assert!(sus.reported_live(&2, false));
        sus.round([(2, false, true)], s(11));
        assert!(!sus.reported_live(&2, false));
    }

    #[test]
    fn probes_are_capped_and_the_rest_wait_live() {
        let mut sus = Suspicion::new(cfg());
        let all = |live: bool| (0..5).map(move |m| (m, live, true));
        let first = sus.round(all(false), s(0));
        assert_eq!(first.len(), 2);
        assert_eq!(sus.suspected(), 5);
        assert!((0..5).all(|m| sus.reported_live(&m, false)));
        assert!(sus.round(all(false), s(1)).is_empty());
        for m in &first {
            sus.probed(*m, ProbeOutcome::Answered, s(1));
        }
        let second = sus.round(all(false), s(2));
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|m| !first.contains(m)));
        // Members that leave the list are forgotten.
        sus.round([(0, false, true)], s(3));
        assert!(sus.suspected() <= 1);
    }
}
