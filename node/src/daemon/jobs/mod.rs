//! Jobs on a running node, both sides of them:
//!
//! - `origin`: the node a job was submitted through checks the signed submission (signature,
//!   window, trust, replay, the submitter's rate and quota), keeps the job, places its
//!   replicas on distinct nodes, takes their reports, decides by quorum, cancels, and
//!   answers for the job (status, logs, result) to any node that asks.
//! - `runner`: a node asked to run a replica checks the submission again by its own trust,
//!   admits the VM by its own accounting, follows it to its end and reports to the origin.
//! - `handover`: a replica's VM that moved (politeness, drain) takes its job record along.
//! - `checkpoint_push`: a runner pushes its replicas' checkpoints to peers of the cell.
//! - `checkpoint_hold`: a peer holds them, and restores a replica from one when asked.
//! - `cell_list`: the jobs of the cell, asked of its live members.
//! - `remote_watch`: an origin's probes of the nodes of its replicas in other cells.
//! - `serve`: the job protocol's requests, dispatched to those.
//!
//! What a node keeps here in memory is rebuilt from its database at start.

mod cell_list;
mod checkpoint_hold;
mod checkpoint_push;
mod handover;
mod origin;
mod remote_watch;
mod runner;
mod serve;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use novacron_mesh::submission::SubmitterId;
use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::lock;

pub use cell_list::CellJobs;

use crate::jobs::link::JobLink;
use crate::jobs::wire::ReplicaReport;
use crate::policy::quorum::Reputation;
use crate::policy::submitters::{SubmitterGate, SubmitterLimits};

/// The VMs of the replicas this node's runner rows say are not over: the ones a restarted
/// daemon must not restore by itself.
pub(super) fn replica_vms(db: &crate::state::StateDb) -> HashSet<String> {
    db.jobs(crate::state::JobRole::Runner)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let replica = r.info.replicas.into_iter().next()?;
            (!replica.state.is_final())
                .then_some(replica.vm_id)
                .flatten()
        })
        .collect()
}

/// The refusal of a node started with `--no-job-replicas`.
pub(super) const NO_REPLICAS: &str =
    "this node runs no job replicas (it was started with --no-job-replicas)";

/// What a refusal of a report from a superseded replica starts with; the runner stops its
/// copy when it reads it.
pub(super) const STALE: &str = "stale generation";

/// What a refusal of a report the origin is about to be ready for starts with (the
/// placement or the move it follows is being recorded): the runner says it again shortly.
pub(super) const NOT_YET: &str = "not yet";

/// Who the node trusts to submit jobs now (asked on each use: the trust file may change).
#[derive(Clone)]
pub struct TrustSource(pub Arc<dyn Fn() -> Result<BTreeSet<SubmitterId>, String> + Send + Sync>);

impl std::fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustSource")
    }
}

/// A report for a job's origin.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ReportTo {
    pub origin: PeerId,
    pub report: ReplicaReport,
}

/// The daemon's job bookkeeping in memory.
pub struct JobsHere {
    link: OnceLock<JobLink>,
    trust: TrustSource,
    /// Held while a replica is placed on this node (its checks and its record).
    placing: tokio::sync::Mutex<()>,
    /// Held while a runner row is read, changed and written.
    runner_writes: Mutex<()>,
    /// Held while an origin row is read, changed and written.
    origin_writes: Mutex<()>,
    /// Held checkpoint copies in use (written, restored or dropped), by `<job>-<replica>`.
    holding: Arc<Mutex<HashSet<String>>>,
    /// Jobs whose replica here has a checkpoint push in flight (until it ends) or a failed
    /// one (until its retry): no new push before this instant.
    pushing: Mutex<HashMap<String, checkpoint_push::Pushing>>,
    /// Per VM of a replica here: its checkpoint files published as chunk sets.
    published: Mutex<HashMap<String, checkpoint_push::Published>>,
    /// VM id -> job id of the replicas running here.
    watched: Mutex<HashMap<String, String>>,
    /// Per job: the newest report its origin has not acknowledged, and whether it is being
    /// sent now.
    reports: Mutex<HashMap<String, (ReportTo, bool)>>,
    /// Replicas this node (as origin) is placing now: one is never placed twice at once.
    placing_replicas: Mutex<HashSet<(String, u32)>>,
    /// Of those, the ones whose last search found no node, with their job's priority.
    starved: Mutex<HashMap<(String, u32), u8>>,
    /// Per-submitter trust, replay, quota and rate ([`SubmitterGate`]).
    gate: Mutex<SubmitterGate>,
    /// Agreement of peers' results with the quorum.
    reputation: Mutex<Reputation>,
    /// Replicas placed (as origin) outside this node's cell, and what their nodes answered.
    remote: Mutex<crate::policy::remote_runners::RemoteWatch>,
    /// Whether replicas run here at all.
    run_replicas: bool,
    /// Tests only: replicas run here report a wrong hash.
    corrupt_results: bool,
}

/// Peers whose result agreement is remembered.
const REPUTATION_PEERS: usize = 4096;

impl JobsHere {
    pub fn new(
        trust: TrustSource,
        limits: SubmitterLimits,
        run_replicas: bool,
        corrupt_results: bool,
    ) -> JobsHere {
        JobsHere {
            link: OnceLock::new(),
            trust,
            placing: tokio::sync::Mutex::new(()),
            starved: Mutex::new(HashMap::new()),
            runner_writes: Mutex::new(()),
            origin_writes: Mutex::new(()),
            holding: Arc::new(Mutex::new(HashSet::new())),
            pushing: Mutex::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            placing_replicas: Mutex::new(HashSet::new()),
            gate: Mutex::new(SubmitterGate::new(limits)),
            reputation: Mutex::new(Reputation::new(REPUTATION_PEERS)),
            remote: Mutex::default(),
            run_replicas,
            corrupt_results,
        }
    }

    fn link(&self) -> Option<&JobLink> {
        self.link.get()
    }

    fn watch(&self, vm: String, job: String) {
        lock(&self.watched).insert(vm, job);
    }

    /// Stops following `vm`; the checkpoint files it published, to withdraw.
    fn unwatch(&self, vm: &str) -> Vec<crate::jobs::wire::CheckpointFile> {
        if let Some(job) = lock(&self.watched).remove(vm) {
            lock(&self.pushing).remove(&job);
        }
        lock(&self.published)
            .remove(vm)
            .map(|p| p.into_values().collect())
            .unwrap_or_default()
    }

    fn watched(&self) -> Vec<String> {
        lock(&self.watched).keys().cloned().collect()
    }

    fn job_of(&self, vm: &str) -> Option<String> {
        lock(&self.watched).get(vm).cloned()
    }

    fn queue_report(&self, to: ReportTo) {
        lock(&self.reports).insert(to.report.job_id.clone(), (to, false));
    }

    fn unacked(&self) -> Vec<ReportTo> {
        lock(&self.reports)
            .values()
            .filter(|(_, sending)| !sending)
            .map(|(to, _)| to.clone())
            .collect()
    }

    /// Marks `to` as being sent; false if it is already, or no longer the newest.
    fn start_sending(&self, to: &ReportTo) -> bool {
        match lock(&self.reports).get_mut(&to.report.job_id) {
            Some((held, sending)) if held == to && !*sending => {
                *sending = true;
                true
            }
            _ => false,
        }
    }

    /// The origin took `to`: forget it unless a newer report replaced it meanwhile.
    fn acked(&self, to: &ReportTo) {
        let mut reports = lock(&self.reports);
        if reports
            .get(&to.report.job_id)
            .is_some_and(|(held, _)| held == to)
        {
            reports.remove(&to.report.job_id);
        }
    }

    /// Forgets every report of `job` (its replica here is superseded).
    fn acked_job(&self, job: &str) {
        lock(&self.reports).remove(job);
    }

    fn send_failed(&self, to: &ReportTo) {
        if let Some((held, sending)) = lock(&self.reports).get_mut(&to.report.job_id) {
            if held == to {
                *sending = false;
            }
        }
    }

    /// Claims replica `index` of `job` for placement; false if it is being placed already.
    fn claim_placement(&self, job: &str, index: u32) -> bool {
        lock(&self.placing_replicas).insert((job.to_string(), index))
    }

    fn end_placement(&self, job: &str, index: u32) {
        let key = (job.to_string(), index);
        lock(&self.starved).remove(&key);
        lock(&self.placing_replicas).remove(&key);
    }

    /// Whether replica `index` of `job` (at `priority`, `yielded` rounds skipped in a row)
    /// waits this round for a starved replica of a job of higher priority
    /// ([`yields_to_higher`](crate::policy::job_placement::yields_to_higher)).
    fn yields(&self, job: &str, index: u32, priority: u8, yielded: u32) -> bool {
        let starved = lock(&self.starved);
        let others = starved
            .iter()
            .filter(|((j, i), _)| !(j == job && *i == index))
            .map(|(_, p)| *p);
        crate::policy::job_placement::yields_to_higher(priority, others, yielded)
    }

    /// Records whether replica `index` of `job` found a node at its last search.
    fn set_starved(&self, job: &str, index: u32, priority: u8, starved: bool) {
        let key = (job.to_string(), index);
        match starved {
            true => lock(&self.starved).insert(key, priority),
            false => lock(&self.starved).remove(&key),
        };
    }
}
