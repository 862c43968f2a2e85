//! The demo's job story, told once the cell is up: three jobs signed with a submitter key
//! the demo made and submitted through node-001 (an entry node: it places jobs and runs
//! none, `--no-job-replicas`), each followed to its end in plain words:
//!
//! 1. `hello`: one replica; where it ran, how long it took, what it printed.
//! 2. `tally`: three replicas on three nodes; the result the quorum agreed on.
//! 3. `marathon`: a long counter, checkpointed every 5 s; once it runs, its VM is moved
//!    live to another node (its job record follows it); once a checkpoint of it there is
//!    held by two peers, that node is killed (kill -9, its VMMs die with it); node-001's
//!    cell declares it dead, a holder restores the job from the checkpoint at a new
//!    generation, and it finishes with the result an uninterrupted run prints.
//!
//! Pure bookkeeping and words; the demo's loop calls [`JobStory::step`] every tick with what
//! it needs to act ([`Act`]) and records each step's outcome for `--check --json`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::types::{JobInfo, JobState, ReplicaState};

/// The marathon's guest: long enough to be killed mid-run and to finish after it moved.
pub const MARATHON_GUEST: &str = "builtin:counter:passes=20";
/// How long the marathon runs before it is moved, and again before its node is killed.
const MOVE_AFTER: Duration = Duration::from_secs(2);
const KILL_AFTER: Duration = Duration::from_millis(1500);
/// How long any job of the story may take to get where the story waits for.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// One step's outcome, for `demo --check --json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepReport {
    pub step: &'static str,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

/// What the story asks of the demo.
pub enum Act {
    /// Sign and submit this spec (JSON) through node-001; report the job with
    /// [`JobStory::submitted`].
    Submit { spec: String },
    /// Read this job from node-001; report with [`JobStory::seen`].
    Look { job: String },
    /// Kill node `node` (index) with kill -9.
    Kill { node: usize },
    /// Move VM `vm` live from node `from` to node `to`; report with [`JobStory::moved`].
    Migrate { vm: String, from: usize, to: usize },
    /// Say this line.
    Say(String),
}

#[derive(Clone, Debug)]
enum Phase {
    Hello,
    Tally,
    Marathon,
    /// The marathon runs on node `on` (VM `vm`) since `since`; `moved`: it was moved once;
    /// `held`: peers hold a checkpoint of it.
    MarathonRuns {
        on: usize,
        vm: String,
        since: Instant,
        moved: bool,
        held: bool,
    },
    /// Its VM is being moved from `from` to `to`.
    Moving {
        from: usize,
        to: usize,
        vm: String,
        since: Instant,
    },
    /// Its node was killed at `at`.
    Killed {
        on: usize,
        at: Instant,
    },
    /// It runs again on `on` (generation 2 or later).
    Recovered,
    Done,
}

pub struct JobStory {
    phase: Phase,
    /// The job of the current phase once submitted, and when.
    job: Option<(String, Instant)>,
    asked: bool,
    pub reports: Vec<StepReport>,
}

impl Default for JobStory {
    fn default() -> Self {
        JobStory {
            phase: Phase::Hello,
            job: None,
            asked: false,
            reports: Vec::new(),
        }
    }
}

impl JobStory {
    pub fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The node the story means to kill (where the marathon runs or is being moved to, until
    /// it is killed): the touring VM must not go there, or the kill would wait for it to
    /// leave while the marathon runs to its end.
    pub fn doomed_node(&self) -> Option<usize> {
        match self.phase {
            Phase::MarathonRuns { on, .. } => Some(on),
            Phase::Moving { to, .. } => Some(to),
            _ => None,
        }
    }

    /// The next thing to do. `wanderer_on`: the node holding the demo's touring VM (its node
    /// is not killed while it is there).
    /// `live`: the nodes node-001 sees live (indices).
    pub fn step(&mut self, wanderer_on: Option<usize>, live: &[usize]) -> Vec<Act> {
        let Some((job, since)) = self.job.clone() else {
            if self.asked || matches!(self.phase, Phase::Done) {
                return Vec::new();
            }
            self.asked = true;
            let spec = match self.phase {
                Phase::Hello => {
                    r#"{"name":"hello","payload":{"guest":"builtin:hello"},"memoryMib":16}"#
                        .to_string()
                }
                Phase::Tally => r#"{"name":"tally","payload":{"guest":"builtin:counter:passes=1"},
                    "memoryMib":32,"replicas":3,"quorum":2}"#
                    .to_string(),
                _ => format!(
                    r#"{{"name":"marathon","payload":{{"guest":"{MARATHON_GUEST}"}},"memoryMib":32,
                    "checkpointIntervalS":5}}"#
                ),
            };
            return vec![Act::Submit { spec }];
        };
        if since.elapsed() > STEP_TIMEOUT {
            let step = self.step_name();
            self.report(
                step,
                false,
                since,
                format!("no end within {STEP_TIMEOUT:?}"),
            );
            self.phase = Phase::Done;
            return vec![Act::Say(format!(
                "job story: {step} did not get on within {STEP_TIMEOUT:?}; the story stops"
            ))];
        }
        if let Phase::MarathonRuns {
            on,
            ref vm,
            since,
            moved: false,
            ..
        } = self.phase
        {
            // A live node to move it to: not node-001 (the entry node), not where it is, not
            // where the touring VM is (that node is not killed while the VM is there).
            let to = live
                .iter()
                .copied()
                .find(|&n| n != 0 && n != on && Some(n) != wanderer_on);
            if let (true, Some(to)) = (since.elapsed() >= MOVE_AFTER, to) {
                let vm = vm.clone();
                self.phase = Phase::Moving {
                    from: on,
                    to,
                    vm: vm.clone(),
                    since: Instant::now(),
                };
                return vec![
                    Act::Migrate { vm, from: on, to },
                    Act::Say(format!(
                        "moving job marathon's VM live from {} to {}",
                        node_name(on),
                        node_name(to)
                    )),
                ];
            }
        }
        if let Phase::MarathonRuns {
            on,
            since,
            moved: true,
            held: true,
            ..
        } = self.phase
        {
            if since.elapsed() >= KILL_AFTER && wanderer_on != Some(on) {
                self.phase = Phase::Killed {
                    on,
                    at: Instant::now(),
                };
                return vec![
                    Act::Say(format!(
                        "killing {} (kill -9) while it runs job marathon: its VMs die with it",
                        node_name(on)
                    )),
                    Act::Kill { node: on },
                ];
            }
        }
        vec![Act::Look { job }]
    }

    /// The job a [`Act::Submit`] made (or why it failed).
    pub fn submitted(&mut self, job: Result<JobInfo, String>) -> Vec<Act> {
        self.asked = false;
        match job {
            Ok(j) => {
                let line = format!(
                    "job {} ({}) submitted through node-001: {} replica(s), quorum {}",
                    j.spec.name.as_deref().unwrap_or("?"),
                    j.id.get(..12).unwrap_or(&j.id),
                    j.spec.replicas,
                    j.spec.quorum()
                );
                self.job = Some((j.id, Instant::now()));
                vec![Act::Say(line)]
            }
            Err(e) => {
                let step = self.step_name();
                self.report(step, false, Instant::now(), e.clone());
                self.phase = Phase::Done;
                vec![Act::Say(format!("job story: cannot submit {step}: {e}"))]
            }
        }
    }

    /// What node-001 says of the current job; `names` turns PeerIds into demo names,
    /// `result` fetches the agreed result's first line.
    pub fn seen(
        &mut self,
        job: &JobInfo,
        names: &dyn Fn(&str) -> (String, Option<usize>),
        result: &mut dyn FnMut(&str) -> String,
    ) -> Vec<Act> {
        let Some((_, since)) = self.job.clone() else {
            return Vec::new();
        };
        let node_of = |r: &crate::api::types::ReplicaInfo| {
            r.node.as_deref().map(names).unwrap_or(("?".into(), None))
        };
        match self.phase.clone() {
            Phase::Hello | Phase::Tally if job.state.is_final() => {
                let step = self.step_name();
                let ok = job.state == JobState::Succeeded;
                let ran: Vec<String> = job
                    .replicas
                    .iter()
                    .filter(|r| r.result_hash.is_some())
                    .map(|r| node_of(r).0)
                    .collect();
                let detail = match (ok, step) {
                    (true, "hello") => format!(
                        "ran on {} in {:.1} s and printed {:?}",
                        ran.join(", "),
                        since.elapsed().as_secs_f64(),
                        result(&job.id)
                    ),
                    (true, _) => format!(
                        "{} replicas on {} agree on result {} ({:?})",
                        ran.len(),
                        ran.join(", "),
                        job.result_hash
                            .as_deref()
                            .and_then(|h| h.get(..12))
                            .unwrap_or("?"),
                        result(&job.id)
                    ),
                    (false, _) => format!(
                        "{}: {}",
                        job.state.as_str(),
                        job.detail.as_deref().unwrap_or("no detail")
                    ),
                };
                self.report(step, ok, since, detail.clone());
                self.next_phase();
                vec![Act::Say(format!(
                    "job {step} {}: {detail}",
                    job.state.as_str()
                ))]
            }
            Phase::Marathon => {
                let r = &job.replicas[0];
                match (r.state, node_of(r)) {
                    (ReplicaState::Running, (name, Some(on))) => {
                        self.phase = Phase::MarathonRuns {
                            on,
                            vm: r.vm_id.clone().unwrap_or_default(),
                            since: Instant::now(),
                            moved: false,
                            held: false,
                        };
                        vec![Act::Say(format!("job marathon runs on {name}"))]
                    }
                    _ if job.state.is_final() => self.marathon_failed(job, since),
                    _ => Vec::new(),
                }
            }
            Phase::Moving {
                from,
                to,
                vm,
                since: moving_since,
            } => {
                let r = &job.replicas[0];
                match (r.generation, node_of(r)) {
                    (1, (name, Some(now))) if now == to => {
                        let detail = format!(
                            "its VM moved live from {} to {name}; the job's record followed it \
                             (same generation, {:.1} s)",
                            node_name(from),
                            moving_since.elapsed().as_secs_f64()
                        );
                        self.report("job_move", true, moving_since, detail.clone());
                        self.phase = Phase::MarathonRuns {
                            on: to,
                            vm,
                            since: Instant::now(),
                            moved: true,
                            held: false,
                        };
                        vec![Act::Say(format!("job marathon: {detail}"))]
                    }
                    _ if job.state.is_final() => self.marathon_failed(job, since),
                    _ => Vec::new(),
                }
            }
            Phase::MarathonRuns {
                on,
                vm,
                since: runs_since,
                moved: true,
                held: false,
            } => {
                let r = &job.replicas[0];
                match &r.checkpoint {
                    Some(c) if !c.holders.is_empty() && node_of(r).1 == Some(on) => {
                        let holders: Vec<String> = c.holders.iter().map(|h| names(h).0).collect();
                        self.phase = Phase::MarathonRuns {
                            on,
                            vm,
                            since: runs_since,
                            moved: true,
                            held: true,
                        };
                        vec![Act::Say(format!(
                            "job marathon's checkpoint {} ({:.1} MiB) is held by {}: pushed in \
                             {} ms",
                            c.seq,
                            c.bytes as f64 / (1 << 20) as f64,
                            holders.join(" and "),
                            c.push_ms
                        ))]
                    }
                    _ if job.state.is_final() => self.marathon_failed(job, since),
                    _ => Vec::new(),
                }
            }
            Phase::Killed { on, at } => {
                let r = &job.replicas[0];
                match (r.generation, r.state, node_of(r)) {
                    (g, ReplicaState::Running, (name, Some(now))) if g > 1 && now != on => {
                        let how = match r.restored_from {
                            Some(seq) => format!("restored from checkpoint {seq}"),
                            None => "started over: no holder restored it".to_string(),
                        };
                        self.report(
                            "recovery",
                            r.restored_from.is_some(),
                            at,
                            format!(
                                "{} died; the job runs again on {name} (generation {g}), {how}, \
                                 {:.1} s later",
                                node_name(on),
                                at.elapsed().as_secs_f64()
                            ),
                        );
                        self.phase = Phase::Recovered;
                        vec![Act::Say(format!(
                            "node-001's cell saw {} die: job marathon is placed again on {name} \
                             (generation {g}) and {how} ({:.1} s after the kill)",
                            node_name(on),
                            at.elapsed().as_secs_f64()
                        ))]
                    }
                    _ if job.state.is_final() => self.marathon_failed(job, since),
                    _ => Vec::new(),
                }
            }
            Phase::Recovered if job.state.is_final() => {
                let ok = job.state == JobState::Succeeded;
                let detail = match ok {
                    true => format!("succeeded after the move and printed {:?}", result(&job.id)),
                    false => job.detail.clone().unwrap_or_default(),
                };
                self.report("marathon", ok, since, detail.clone());
                self.phase = Phase::Done;
                vec![Act::Say(format!(
                    "job marathon {}: {detail}",
                    job.state.as_str()
                ))]
            }
            _ => Vec::new(),
        }
    }

    /// How the move an [`Act::Migrate`] asked for ended (`Err`: it did not).
    pub fn moved(&mut self, outcome: Result<(), String>) -> Vec<Act> {
        let Phase::Moving {
            from, vm, since, ..
        } = self.phase.clone()
        else {
            return Vec::new();
        };
        match outcome {
            Ok(()) => Vec::new(),
            Err(e) => {
                self.report("job_move", false, since, e.clone());
                // The story goes on where the VM still is.
                self.phase = Phase::MarathonRuns {
                    on: from,
                    vm,
                    since: Instant::now(),
                    moved: true,
                    held: false,
                };
                vec![Act::Say(format!("job marathon's VM did not move: {e}"))]
            }
        }
    }

    fn marathon_failed(&mut self, job: &JobInfo, since: Instant) -> Vec<Act> {
        let detail = format!(
            "ended {} before the story's kill and recovery: {}",
            job.state.as_str(),
            job.detail.as_deref().unwrap_or("no detail")
        );
        self.report("marathon", false, since, detail.clone());
        self.phase = Phase::Done;
        vec![Act::Say(format!("job marathon {detail}"))]
    }

    fn next_phase(&mut self) {
        self.job = None;
        self.phase = match self.phase {
            Phase::Hello => Phase::Tally,
            Phase::Tally => Phase::Marathon,
            _ => Phase::Done,
        };
    }

    fn step_name(&self) -> &'static str {
        match self.phase {
            Phase::Hello => "hello",
            Phase::Tally => "tally",
            Phase::Killed { .. } => "recovery",
            _ => "marathon",
        }
    }

    fn report(&mut self, step: &'static str, ok: bool, since: Instant, detail: String) {
        self.reports.push(StepReport {
            step,
            ok,
            seconds: since.elapsed().as_secs_f64(),
            detail,
        });
    }
}

fn node_name(i: usize) -> String {
    super::view::Names::name(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, state: JobState, replicas: Vec<(ReplicaState, &str, u64)>) -> JobInfo {
        let spec = serde_json::json!({"name": name, "payload": {"guest": "builtin:hello"}});
        JobInfo {
            id: "ab".repeat(32),
            spec: serde_json::from_value(spec).unwrap(),
            submitter: "ed25519:00".into(),
            state,
            detail: None,
            origin: "o".into(),
            replicas: replicas
                .into_iter()
                .enumerate()
                .map(
                    |(i, (state, node, generation))| crate::api::types::ReplicaInfo {
                        index: i as u32,
                        state,
                        node: Some(node.into()),
                        generation,
                        vm_id: None,
                        result_hash: (state == ReplicaState::Finished).then(|| "cd".repeat(32)),
                        log_set: None,
                        result_set: None,
                        detail: None,
                        updated_at_ms: 0,
                        moved_from: None,
                        checkpoint: None,
                        restored_from: None,
                        signed_status: None,
                    },
                )
                .collect(),
            result_hash: (state == JobState::Succeeded).then(|| "cd".repeat(32)),
            retries: 0,
            submitted_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn names(peer: &str) -> (String, Option<usize>) {
        let i: usize = peer.trim_start_matches('p').parse().unwrap();
        (node_name(i), Some(i))
    }

    #[test]
    fn the_story_runs_its_steps_in_order_and_kills_the_marathons_node() {
        let mut s = JobStory::default();
        let mut result = |_: &str| "result=1".to_string();
        assert!(matches!(
            s.step(None, &[0, 1, 2, 3, 4])[..],
            [Act::Submit { .. }]
        ));
        assert!(
            s.step(None, &[0, 1, 2, 3, 4]).is_empty(),
            "one submission at a time"
        );
        s.submitted(Ok(job("hello", JobState::Queued, vec![])));
        assert!(matches!(
            s.step(None, &[0, 1, 2, 3, 4])[..],
            [Act::Look { .. }]
        ));
        let says = s.seen(
            &job(
                "hello",
                JobState::Succeeded,
                vec![(ReplicaState::Finished, "p2", 1)],
            ),
            &names,
            &mut result,
        );
        assert!(
            matches!(&says[..], [Act::Say(l)] if l.contains("node-003")),
            "hello names its node"
        );
        // Tally.
        assert!(
            matches!(&s.step(None, &[0, 1, 2, 3, 4])[..], [Act::Submit { spec }] if spec.contains("tally"))
        );
        s.submitted(Ok(job("tally", JobState::Queued, vec![])));
        s.seen(
            &job(
                "tally",
                JobState::Succeeded,
                vec![(ReplicaState::Finished, "p1", 1)],
            ),
            &names,
            &mut result,
        );
        // Marathon: runs on node 3, which holds the touring VM: no kill until it leaves.
        s.step(None, &[0, 1, 2, 3, 4]);
        s.submitted(Ok(job("marathon", JobState::Queued, vec![])));
        s.seen(
            &job(
                "marathon",
                JobState::Running,
                vec![(ReplicaState::Running, "p3", 1)],
            ),
            &names,
            &mut result,
        );
        assert!(matches!(
            s.phase,
            Phase::MarathonRuns {
                on: 3,
                moved: false,
                ..
            }
        ));
        // After a while its VM is moved live to the first other live node that is neither
        // the entry node nor the touring VM's.
        if let Phase::MarathonRuns { since, .. } = &mut s.phase {
            *since -= MOVE_AFTER;
        }
        assert_eq!(s.doomed_node(), Some(3), "the touring VM keeps off it");
        let acts = s.step(Some(1), &[0, 1, 2, 3, 4]);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Act::Migrate { from: 3, to: 2, .. })),
            "not to node 1: the touring VM is there"
        );
        assert_eq!(s.doomed_node(), Some(2));
        s.phase = Phase::MarathonRuns {
            on: 3,
            vm: "v".into(),
            since: Instant::now() - MOVE_AFTER,
            moved: false,
            held: false,
        };
        let acts = s.step(Some(2), &[0, 1, 2, 3, 4]);
        assert!(acts
            .iter()
            .any(|a| matches!(a, Act::Migrate { from: 3, to: 1, .. })));
        s.seen(
            &job(
                "marathon",
                JobState::Running,
                vec![(ReplicaState::Running, "p1", 1)],
            ),
            &names,
            &mut result,
        );
        // No kill before peers hold a checkpoint of it there.
        if let Phase::MarathonRuns { since, .. } = &mut s.phase {
            *since -= KILL_AFTER;
        }
        assert!(matches!(
            s.step(None, &[0, 1, 2, 3, 4])[..],
            [Act::Look { .. }]
        ));
        let mut held = job(
            "marathon",
            JobState::Running,
            vec![(ReplicaState::Running, "p1", 1)],
        );
        held.replicas[0].checkpoint = Some(crate::model::ReplicaCheckpoint {
            seq: 1,
            holders: vec!["p2".into(), "p4".into()],
            bytes: 2 << 20,
            pushed_bytes: 4 << 20,
            push_ms: 300,
            publish_ms: 100,
            taken_at_ms: 0,
        });
        let says = s.seen(&held, &names, &mut result);
        assert!(
            matches!(&says[..], [Act::Say(l)] if l.contains("node-003 and node-005")),
            "the holders are named"
        );
        assert!(matches!(s.phase, Phase::MarathonRuns { held: true, .. }));
        // Its node holds the touring VM: no kill until it leaves.
        s.phase = Phase::MarathonRuns {
            on: 3,
            vm: "v".into(),
            since: Instant::now() - KILL_AFTER,
            moved: true,
            held: true,
        };
        assert!(matches!(
            s.step(Some(3), &[0, 1, 2, 3, 4])[..],
            [Act::Look { .. }]
        ));
        let acts = s.step(Some(1), &[0, 1, 2, 3, 4]);
        assert!(acts.iter().any(|a| matches!(a, Act::Kill { node: 3 })));
        // Restored elsewhere from the checkpoint, then done.
        let mut restored = job(
            "marathon",
            JobState::Running,
            vec![(ReplicaState::Running, "p2", 2)],
        );
        restored.replicas[0].restored_from = Some(1);
        s.seen(&restored, &names, &mut result);
        assert!(matches!(s.phase, Phase::Recovered));
        assert!(s
            .reports
            .last()
            .unwrap()
            .detail
            .contains("restored from checkpoint 1"));
        s.seen(
            &job(
                "marathon",
                JobState::Succeeded,
                vec![(ReplicaState::Finished, "p2", 2)],
            ),
            &names,
            &mut result,
        );
        assert!(
            s.done() && s.reports.iter().all(|r| r.ok),
            "{:?}",
            s.reports
        );
        let steps: Vec<&str> = s.reports.iter().map(|r| r.step).collect();
        assert_eq!(
            steps,
            ["hello", "tally", "job_move", "recovery", "marathon"]
        );
    }

    #[test]
    fn a_failed_submission_ends_the_story_as_failed() {
        let mut s = JobStory::default();
        s.step(None, &[0, 1, 2, 3, 4]);
        s.submitted(Err("403: untrusted".into()));
        assert!(s.done() && s.reports.iter().any(|r| !r.ok));
    }
}
