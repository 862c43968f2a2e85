//! Validating a job's result the BOINC way: several replicas run the job on distinct nodes,
//! and the result counts once `quorum` of them report the same result hash. Pure: the
//! job's origin node calls [`decide`] with the replicas as they stand after each report and
//! does what the [`Verdict`] says (record the result and cancel the rest, place new
//! replicas, fail the job); [`Reputation`] keeps a bounded tally of which peers agreed with
//! the accepted result and which did not.
//!
//! The rules, in order:
//! - Each node votes once, with the first hash it reported (in the order given, which the
//!   daemon keeps as arrival order): a node that somehow ran two replicas, or reports
//!   twice, cannot make a quorum alone.
//! - As soon as `quorum` nodes agree: [`Verdict::Succeeded`], naming the agreeing nodes and
//!   those that reported another hash (the daemon counts them against their reputation).
//!   When two hashes both have a quorum (a quorum under a majority), the first to reach it
//!   in report order wins.
//! - While the largest group plus the replicas still running could reach the quorum:
//!   [`Verdict::Pending`].
//! - Otherwise, every replica failed: [`Verdict::Failed`] (a job every node fails on is the
//!   job's fault, not the nodes'); the retries are used up: failed; else
//!   [`Verdict::Retry`] with just enough new replicas for the largest group to reach the
//!   quorum, on nodes that never held a replica of the job.
//!
//! What this cannot do: agreement is evidence, not proof. Colluding nodes that return the
//! same wrong hash win a quorum; distinct nodes, a random choice of them (placement's
//! seed) and the reputation make that costly, not impossible. A failed replica is not a
//! disagreement: volunteer machines fail for reasons of their own.

use std::collections::{BTreeMap, BTreeSet};

use novacron_model::{JobSpec, ReplicaInfo, ReplicaState};

/// How a job's results are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumRule {
    /// Replicas the spec asks for.
    pub replicas: u8,
    /// Nodes that must report the same hash (taken as 1 to `replicas`, whatever it says).
    pub quorum: u8,
    /// Rounds of new replicas after the results could no longer agree.
    pub max_retries: u32,
}

impl QuorumRule {
    /// The rule of `spec`, with the node's retry limit.
    pub fn of(spec: &JobSpec, max_retries: u32) -> QuorumRule {
        QuorumRule {
            replicas: spec.replicas,
            quorum: spec.quorum(),
            max_retries,
        }
    }
}

/// Where one replica stands, as far as validation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Placed or running: it may still report.
    Pending,
    /// It ended with a result of this hash.
    Hash(String),
    /// It ended without a result.
    Failed,
}

/// One replica: its index, its node (none while being placed) and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    pub index: u32,
    pub node: Option<String>,
    pub outcome: Outcome,
}

impl ReplicaReport {
    /// A replica as the job record holds it. A lost replica is pending (recovery may
    /// restore it; the daemon marks it failed when recovery gives up), a finished one
    /// without a hash failed, a cancelled one failed.
    pub fn of(r: &ReplicaInfo) -> ReplicaReport {
        let outcome = match (r.state, &r.result_hash) {
            (ReplicaState::Finished, Some(hash)) => Outcome::Hash(hash.clone()),
            (ReplicaState::Finished | ReplicaState::Failed | ReplicaState::Cancelled, _) => {
                Outcome::Failed
            }
            (
                ReplicaState::Placing
                | ReplicaState::Starting
                | ReplicaState::Running
                | ReplicaState::Migrating
                | ReplicaState::Lost,
                _,
            ) => Outcome::Pending,
        };
        ReplicaReport {
            index: r.index,
            node: r.node.clone(),
            outcome,
        }
    }
}

/// What the job's origin does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Wait for more results.
    Pending,
    /// `hash` is the job's result; cancel the replicas still running.
    Succeeded {
        hash: String,
        agreeing: Vec<String>,
        /// Nodes that reported another hash.
        disagreeing: Vec<String>,
    },
    /// The results can no longer agree: place this many new replicas, on none of
    /// `exclude_nodes` (every node that held a replica of the job).
    Retry {
        replicas_to_add: u8,
        exclude_nodes: Vec<String>,
    },
    /// The job fails.
    Failed { reason: QuorumFailure },
}

/// Why validation failed a job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumFailure {
    #[error("every replica failed ({failed} of them): the job fails wherever it runs")]
    AllFailed { failed: usize },
    #[error(
        "the replicas' results disagree ({results} different results, no {quorum} alike) \
         after {retries} retries, the limit"
    )]
    RetriesExhausted {
        retries: u32,
        results: usize,
        quorum: u8,
    },
}

/// What `replicas` (every replica of the job placed or being placed, in report order)
/// call for under `rule`, after `retries` rounds of new replicas. See the module doc. New
/// replicas are asked for as soon as no quorum is possible, while others may still run:
/// those count towards the quorum when they report.
pub fn decide(rule: QuorumRule, replicas: &[ReplicaReport], retries: u32) -> Verdict {
    let quorum_n = rule.quorum.clamp(1, rule.replicas.max(1));
    let quorum = usize::from(quorum_n);
    // Each node's first hash, and the groups of nodes per hash in order of appearance.
    let mut voted: BTreeSet<&str> = BTreeSet::new();
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut winner: Option<usize> = None;
    for r in replicas {
        let (Some(node), Outcome::Hash(hash)) = (&r.node, &r.outcome) else {
            continue;
        };
        if !voted.insert(node) {
            continue;
        }
        let g = match groups.iter().position(|(h, _)| h == hash) {
            Some(g) => g,
            None => {
                groups.push((hash, Vec::new()));
                groups.len() - 1
            }
        };
        groups[g].1.push(node);
        if winner.is_none() && groups[g].1.len() >= quorum {
            winner = Some(g);
        }
    }
    if let Some(w) = winner {
        let (hash, agreeing) = &groups[w];
        let disagreeing = groups
            .iter()
            .enumerate()
            .filter(|(g, _)| *g != w)
            .flat_map(|(_, (_, nodes))| nodes.iter().map(|n| n.to_string()))
            .collect();
        return Verdict::Succeeded {
            hash: hash.to_string(),
            agreeing: agreeing.iter().map(|n| n.to_string()).collect(),
            disagreeing,
        };
    }
    // Replicas that may still vote: pending, on a node that has not voted yet.
    let may_vote = replicas
        .iter()
        .filter(|r| r.outcome == Outcome::Pending)
        .filter(|r| r.node.as_deref().is_none_or(|n| !voted.contains(n)))
        .count();
    let largest = groups.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
    if largest + may_vote >= quorum {
        return Verdict::Pending;
    }
    if !replicas.is_empty() && replicas.iter().all(|r| r.outcome == Outcome::Failed) {
        return Verdict::Failed {
            reason: QuorumFailure::AllFailed {
                failed: replicas.len(),
            },
        };
    }
    if retries >= rule.max_retries {
        return Verdict::Failed {
            reason: QuorumFailure::RetriesExhausted {
                retries,
                results: groups.len(),
                quorum: quorum_n,
            },
        };
    }
    let exclude: BTreeSet<&str> = replicas.iter().filter_map(|r| r.node.as_deref()).collect();
    Verdict::Retry {
        replicas_to_add: u8::try_from(quorum - largest - may_vote).unwrap_or(u8::MAX),
        exclude_nodes: exclude.into_iter().map(str::to_string).collect(),
    }
}

/// Most peers [`Reputation`] remembers by default.
pub const DEFAULT_REPUTATION_PEERS: usize = 10_000;

/// One peer's record in validations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub agreements: u32,
    pub disagreements: u32,
}

impl Tally {
    /// Laplace's estimate that the peer agrees, in permille: (agreements + 1) / (votes + 2).
    /// An unknown peer scores 500; one disagreement among many agreements costs little,
    /// a peer that mostly disagrees sinks towards 0.
    pub fn score_permille(&self) -> u16 {
        let a = u64::from(self.agreements);
        let n = a + u64::from(self.disagreements);
        u16::try_from((a + 1) * 1000 / (n + 2)).unwrap_or(1000)
    }
}

/// Per-peer tallies of agreement with accepted results, for at most `max_peers` peers: the
/// peer least recently counted is forgotten first (it comes back as unknown, scoring 500,
/// so a bad peer can be forgotten: the cost of a fresh identity is what keeps that rare).
#[derive(Clone, Debug)]
pub struct Reputation {
    max_peers: usize,
    clock: u64,
    peers: BTreeMap<String, (Tally, u64)>,
    by_age: BTreeMap<u64, String>,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation::new(DEFAULT_REPUTATION_PEERS)
    }
}

impl Reputation {
    /// Remembers at most `max_peers` peers (at least one).
    pub fn new(max_peers: usize) -> Reputation {
        Reputation {
            max_peers: max_peers.max(1),
            clock: 0,
            peers: BTreeMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Counts a verdict: agreements and disagreements of a success; nothing otherwise.
    pub fn record(&mut self, verdict: &Verdict) {
        if let Verdict::Succeeded {
            agreeing,
            disagreeing,
            ..
        } = verdict
        {
            for peer in agreeing {
                self.agreed(peer);
            }
            for peer in disagreeing {
                self.disagreed(peer);
            }
        }
    }

    pub fn agreed(&mut self, peer: &str) {
        let t = self.touch(peer);
        t.agreements = t.agreements.saturating_add(1);
    }

    pub fn disagreed(&mut self, peer: &str) {
        let t = self.touch(peer);
        t.disagreements = t.disagreements.saturating_add(1);
    }

    /// `peer`'s tally (zero when unknown or forgotten).
    pub fn tally(&self, peer: &str) -> Tally {
        self.peers.get(peer).map(|(t, _)| *t).unwrap_or_default()
    }

    /// `peer`'s score ([`Tally::score_permille`]).
    pub fn score_permille(&self, peer: &str) -> u16 {
        self.tally(peer).score_permille()
    }

    /// Peers remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// `peer`'s entry, made the most recent (created, forgetting the oldest, if new).
    fn touch(&mut self, peer: &str) -> &mut Tally {
        self.clock += 1;
        let stamp = self.clock;
        if let Some((_, old)) = self.peers.get(peer) {
            self.by_age.remove(old);
        } else if self.peers.len() >= self.max_peers {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.peers.remove(&oldest);
            }
        }
        self.by_age.insert(stamp, peer.to_string());
        let entry = self
            .peers
            .entry(peer.to_string())
            .or_insert((Tally::default(), stamp));
        entry.1 = stamp;
        &mut entry.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(replicas: u8, quorum: u8) -> QuorumRule {
        QuorumRule {
            replicas,
            quorum,
            max_retries: 2,
        }
    }

    fn hash(index: u32, node: &str, h: &str) -> ReplicaReport {
        ReplicaReport {
            index,
            node: Some(node.into()),
            outcome: Outcome::Hash(h.into()),
        }
    }

    fn failed(index: u32, node: &str) -> ReplicaReport {
        ReplicaReport {
            index,
            node: Some(node.into()),
            outcome: Outcome::Failed,
        }
    }

    fn pending(index: u32, node: &str) -> ReplicaReport {
        ReplicaReport {
            index,
            node: Some(node.into()),
            outcome: Outcome::Pending,
        }
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_quorum_succeeds_as_soon_as_it_agrees_and_names_who_disagreed() {
        let r = rule(3, 2);
        assert_eq!(
            decide(
                r,
                &[hash(0, "a", "h1"), pending(1, "b"), pending(2, "c")],
                0
            ),
            Verdict::Pending
        );
        assert_eq!(
            decide(
                r,
                &[hash(0, "a", "h1"), hash(1, "b", "h2"), pending(2, "c")],
                0
            ),
            Verdict::Pending
        );
        assert_eq!(
            decide(
                r,
                &[hash(0, "a", "h1"), hash(1, "b", "h2"), hash(2, "c", "h1")],
                0
            ),
            Verdict::Succeeded {
                hash: "h1".into(),
                agreeing: strings(&["a", "c"]),
                disagreeing: strings(&["b"]),
            }
        );
        // Two agreeing of three: done without waiting for the third.
        assert_eq!(
            decide(
                r,
                &[hash(0, "a", "h1"), hash(1, "b", "h1"), pending(2, "c")],
                0
            ),
            Verdict::Succeeded {
                hash: "h1".into(),
                agreeing: strings(&["a", "b"]),
                disagreeing: vec![],
            }
        );
        // A quorum above the replicas (a spec not validated) is taken as all of them.
        assert!(matches!(
            decide(rule(2, 5), &[hash(0, "a", "x"), hash(1, "b", "x")], 0),
            Verdict::Succeeded { .. }
        ));
        // A single replica is its own quorum.
        assert!(matches!(
            decide(rule(1, 1), &[hash(0, "a", "x")], 0),
            Verdict::Succeeded { .. }
        ));
    }

    #[test]
    fn one_node_votes_once() {
        // Node a ran two replicas (or reported twice): its second hash does not count.
        let r = rule(3, 2);
        let reports = [hash(0, "a", "h1"), hash(1, "a", "h1"), pending(2, "b")];
        assert_eq!(decide(r, &reports, 0), Verdict::Pending);
        // Its pending second replica cannot vote either: no quorum possible without b...
        let reports = [hash(0, "a", "h1"), pending(1, "a"), failed(2, "b")];
        assert!(matches!(
            decide(r, &reports, 0),
            Verdict::Retry {
                replicas_to_add: 1,
                ..
            }
        ));
        // ...and a hash without a node is not a vote.
        let anonymous = ReplicaReport {
            index: 3,
            node: None,
            outcome: Outcome::Hash("h1".into()),
        };
        assert!(matches!(
            decide(r, &[hash(0, "a", "h1"), anonymous, failed(2, "b")], 0),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn results_that_cannot_agree_call_for_new_replicas_on_new_nodes() {
        let r = rule(3, 2);
        let reports = [hash(0, "a", "h1"), failed(1, "b"), hash(2, "c", "h2")];
        assert_eq!(
            decide(r, &reports, 0),
            Verdict::Retry {
                replicas_to_add: 1,
                exclude_nodes: strings(&["a", "b", "c"]),
            }
        );
        // Three different answers with a quorum of 3: two more to agree with one of them.
        let reports = [hash(0, "a", "x"), hash(1, "b", "y"), hash(2, "c", "z")];
        assert!(matches!(
            decide(rule(3, 3), &reports, 1),
            Verdict::Retry {
                replicas_to_add: 2,
                ..
            }
        ));
        // The new replica agrees: success, and the odd one out is named.
        let mut more = vec![hash(0, "a", "h1"), failed(1, "b"), hash(2, "c", "h2")];
        more.push(hash(3, "d", "h1"));
        assert_eq!(
            decide(r, &more, 1),
            Verdict::Succeeded {
                hash: "h1".into(),
                agreeing: strings(&["a", "d"]),
                disagreeing: strings(&["c"]),
            }
        );
    }

    #[test]
    fn the_job_fails_when_every_replica_failed_or_the_retries_are_used_up() {
        let r = rule(2, 2);
        assert_eq!(
            decide(r, &[failed(0, "a"), failed(1, "b")], 0),
            Verdict::Failed {
                reason: QuorumFailure::AllFailed { failed: 2 }
            }
        );
        let reports = [hash(0, "a", "x"), hash(1, "b", "y")];
        assert!(matches!(decide(r, &reports, 1), Verdict::Retry { .. }));
        let Verdict::Failed { reason } = decide(r, &reports, 2) else {
            panic!("retries used up, yet not failed");
        };
        assert_eq!(
            reason,
            QuorumFailure::RetriesExhausted {
                retries: 2,
                results: 2,
                quorum: 2
            }
        );
        assert!(reason.to_string().contains("after 2 retries"), "{reason}");
    }

    #[test]
    fn new_replicas_are_asked_for_while_others_still_run_if_they_cannot_make_it() {
        // Quorum 3 of 3: x, y, and one running: even if it says x, two is not three.
        let reports = [hash(0, "a", "x"), hash(1, "b", "y"), pending(2, "c")];
        assert_eq!(
            decide(rule(3, 3), &reports, 0),
            Verdict::Retry {
                replicas_to_add: 1,
                exclude_nodes: strings(&["a", "b", "c"]),
            }
        );
    }

    #[test]
    fn of_two_quorums_the_first_reached_wins() {
        let r = rule(4, 2);
        let reports = [
            hash(0, "a", "y"),
            hash(1, "b", "x"),
            hash(2, "c", "x"),
            hash(3, "d", "y"),
        ];
        let Verdict::Succeeded {
            hash, disagreeing, ..
        } = decide(r, &reports, 0)
        else {
            panic!()
        };
        assert_eq!((hash.as_str(), disagreeing), ("x", strings(&["a", "d"])));
    }

    #[test]
    fn job_records_read_as_reports() {
        let info = |state, hash: Option<&str>| ReplicaInfo {
            index: 4,
            state,
            node: Some("n".into()),
            generation: 0,
            vm_id: None,
            result_hash: hash.map(str::to_string),
            log_set: None,
            result_set: None,
            detail: None,
            updated_at_ms: 0,
            moved_from: None,
            checkpoint: None,
            restored_from: None,
            signed_status: None,
        };
        let outcome = |state, h| ReplicaReport::of(&info(state, h)).outcome;
        assert_eq!(
            outcome(ReplicaState::Finished, Some("h")),
            Outcome::Hash("h".into())
        );
        assert_eq!(outcome(ReplicaState::Finished, None), Outcome::Failed);
        assert_eq!(outcome(ReplicaState::Cancelled, Some("h")), Outcome::Failed);
        assert_eq!(outcome(ReplicaState::Lost, None), Outcome::Pending);
        assert_eq!(outcome(ReplicaState::Running, None), Outcome::Pending);
    }

    #[test]
    fn reputation_counts_verdicts_and_forgets_the_least_recent_peer_first() {
        let mut rep = Reputation::new(3);
        assert_eq!(rep.score_permille("new"), 500);
        rep.record(&Verdict::Succeeded {
            hash: "h".into(),
            agreeing: strings(&["a", "b"]),
            disagreeing: strings(&["c"]),
        });
        rep.record(&Verdict::Pending);
        assert_eq!(
            rep.tally("a"),
            Tally {
                agreements: 1,
                disagreements: 0
            }
        );
        assert_eq!(
            rep.tally("c"),
            Tally {
                agreements: 0,
                disagreements: 1
            }
        );
        assert!(rep.score_permille("a") > 500 && rep.score_permille("c") < 500);
        for _ in 0..20 {
            rep.disagreed("c");
        }
        assert!(rep.score_permille("c") < 50);
        // a is the least recently counted: a fourth peer pushes it out.
        rep.agreed("d");
        assert_eq!(rep.len(), 3);
        assert_eq!(rep.tally("a"), Tally::default());
        assert_eq!(rep.tally("b").agreements, 1);
        // Counting b again makes c the oldest.
        rep.agreed("b");
        rep.agreed("e");
        assert_eq!(rep.tally("c"), Tally::default());
        assert_eq!(rep.tally("b").agreements, 2);
    }

    fn arb_report() -> impl Strategy<Value = ReplicaReport> {
        let outcome = prop_oneof![
            Just(Outcome::Pending),
            Just(Outcome::Failed),
            (0u8..3).prop_map(|h| Outcome::Hash(format!("h{h}"))),
        ];
        (0u32..16, 0u8..6, outcome).prop_map(|(index, n, outcome)| ReplicaReport {
            index,
            node: Some(format!("n{n}")),
            outcome,
        })
    }

    proptest! {
        #[test]
        fn verdicts_follow_the_votes(
            reports in prop::collection::vec(arb_report(), 0..10),
            quorum in 1u8..4,
            retries in 0u32..4,
        ) {
            let r = QuorumRule { replicas: 3, quorum, max_retries: 2 };
            // First hash per node.
            let mut votes: BTreeMap<&str, &str> = BTreeMap::new();
            for rep in &reports {
                if let (Some(n), Outcome::Hash(h)) = (&rep.node, &rep.outcome) {
                    votes.entry(n).or_insert(h);
                }
            }
            match decide(r, &reports, retries) {
                Verdict::Succeeded { hash, agreeing, disagreeing } => {
                    prop_assert!(agreeing.len() >= usize::from(quorum));
                    for n in &agreeing {
                        prop_assert_eq!(votes[n.as_str()], hash.as_str());
                    }
                    for n in &disagreeing {
                        prop_assert!(votes[n.as_str()] != hash.as_str());
                    }
                    prop_assert_eq!(agreeing.len() + disagreeing.len(), votes.len());
                }
                Verdict::Retry { replicas_to_add, exclude_nodes } => {
                    prop_assert!(retries < 2 && replicas_to_add >= 1);
                    for rep in &reports {
                        prop_assert!(exclude_nodes.contains(rep.node.as_ref().unwrap()));
                    }
                    // Enough new replicas that the largest group could reach the quorum.
                    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
                    for h in votes.values() {
                        *sizes.entry(h).or_default() += 1;
                    }
                    let largest = sizes.values().copied().max().unwrap_or(0);
                    let running = reports.iter().filter(|r| r.outcome == Outcome::Pending).count();
                    prop_assert!(largest + usize::from(replicas_to_add) <= usize::from(quorum));
                    prop_assert!(
                        largest + running + usize::from(replicas_to_add) >= usize::from(quorum)
                    );
                }
                Verdict::Pending => {
                    prop_assert!(reports.iter().any(|r| r.outcome == Outcome::Pending));
                }
                Verdict::Failed { reason: QuorumFailure::AllFailed { .. } } => {
                    prop_assert!(!reports.is_empty());
                    prop_assert!(reports.iter().all(|r| r.outcome == Outcome::Failed));
                }
                Verdict::Failed { reason: QuorumFailure::RetriesExhausted { .. } } => {
                    prop_assert!(retries >= 2);
                }
            }
        }
    }
}
