//! The node a job was submitted through: it checks the submission, keeps the job, places
//! its replicas on distinct nodes (itself included), takes their reports, decides by quorum,
//! replaces replicas whose node died, and answers for the job.
//!
//! A replica is placed by asking a few candidates for offers (this cell's members by their
//! gossip, then representatives of other cells by their signed summaries), choosing by best
//! fit and confirming with the chosen node, which admits or refuses by its own accounting;
//! a refusal or a timeout moves on to the next candidate. A replica whose node died gets a
//! new generation and is placed again: restored by a peer holding its latest checkpoint
//! when one can, else from the beginning; the dead node, if it returns, learns the newer
//! generation when it reports and stops its stale copy.

use std::sync::Arc;
use std::time::Duration;

use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::submission::{self, SubmitterId};
use novacron_mesh::swarm::clock::unix_now;
use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::{hex, lock};

use std::collections::HashMap;

use novacron_mesh::cells::{CellId, SummaryRecord};
use novacron_mesh::swarm::clock::Epoch;

use super::runner::parse_job_id;
use super::{NOT_YET, STALE};
use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::now_ms;
use crate::daemon::Daemon;
use crate::jobs::signed_status::{check_answer, ReplicaStatus};
use crate::jobs::wire::{JobRequest, JobResponse, ReplicaReport, MAX_LOG_CHUNK};
use crate::model::{
    result_hash, JobInfo, JobSpec, JobState, MemberStatus, ReplicaCheckpoint, ReplicaInfo,
    ReplicaState, MAX_RESULT_BLOB_BYTES, MAX_SERIAL_BYTES,
};
use crate::policy::job_fencing;
use crate::policy::job_placement::{
    rank_cells, Need, Offer, PlacementSearch, SearchAction, SearchLimits, SearchPlan,
};
use crate::policy::quorum::{self, Verdict};
use crate::policy::submitters::AdmitError;
use crate::state::{JobRecord, JobRole};

/// How long a replica nobody can take waits before it is offered again.
const PLACE_RETRY: Duration = Duration::from_secs(3);
/// How long a lookup of a job in the DHT may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node asked about a job may take to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of new replicas after the results disagreed.
pub const MAX_RETRIES: u32 = 2;

impl Daemon {
    /// Takes a signed submission (checked completely before anything is kept).
    pub async fn submit_job(self: &Arc<Self>, bytes: &[u8]) -> ServiceResult<JobInfo> {
        let verified = submission::verify(bytes, unix_now())
            .map_err(|e| ServiceError::BadRequest(format!("submission refused: {e}")))?;
        self.check_trusted(&verified.submitter)?;
        let spec: JobSpec = serde_json::from_slice(&verified.submission.spec)
            .map_err(|e| ServiceError::BadRequest(format!("the job spec: {e}")))?;
        spec.validate()
            .map_err(|e| ServiceError::BadRequest(format!("the job spec: {e}")))?;
        let id = verified.id.to_hex();
        let now = now_ms();
        let trusted = (self.jobs.trust.0)().map_err(ServiceError::Internal)?;
        let info = {
            let _one_writer = lock(&self.jobs.origin_writes);
            // The gate remembers ids since this start; the database, from before it.
            if self
                .state_db
                .job(&id, JobRole::Origin)
                .map_err(internal)?
                .is_some()
            {
                return Err(ServiceError::Conflict(format!(
                    "job {id} was already submitted: a resent (replayed) submission is \
                     refused; sign the spec again (`novacron submit` does) for a new job"
                )));
            }
            lock(&self.jobs.gate)
                .admit_verified(&trusted, &verified, unix_now())
                .map_err(|e| match e {
                    AdmitError::Untrusted { .. } => ServiceError::Forbidden(e.to_string()),
                    AdmitError::Replayed { .. } => ServiceError::Conflict(e.to_string()),
                    AdmitError::Expired { .. } => ServiceError::BadRequest(e.to_string()),
                    AdmitError::QuotaExceeded { .. }
                    | AdmitError::TooManyRemembered { .. }
                    | AdmitError::RateLimited { .. } => ServiceError::TooMany(e.to_string()),
                })?;
            let info = JobInfo {
                id: id.clone(),
                submitter: verified.submitter.to_string(),
                state: JobState::Queued,
                detail: None,
                origin: self.mesh.peer_id().to_string(),
                replicas: (0..u32::from(spec.replicas)).map(new_replica).collect(),
                spec,
                result_hash: None,
                retries: 0,
                submitted_at_ms: now,
                updated_at_ms: now,
            };
            let kept = self.state_db.put_job(&JobRecord {
                role: JobRole::Origin,
                info: info.clone(),
                submission: bytes.to_vec(),
                expires_at: verified.submission.expires_at,
            });
            if let Err(e) = kept {
                lock(&self.jobs.gate).job_ended(verified.submitter);
                return Err(internal(e));
            }
            info
        };
        self.announce_job(&info);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.mesh.start_providing(DhtKey::Job(verified.id.0)).await {
                tracing::debug!(error = %e, "cannot announce the job in the DHT");
            }
        });
        self.clone().place_waiting(&id);
        Ok(info)
    }

    /// Jobs this node knows: the ones submitted through it, and the ones it runs a replica
    /// of (as their runner sees them), newest first.
    pub fn jobs_known(&self) -> Vec<JobInfo> {
        let copies = self.state_db.jobs(JobRole::Runner).unwrap_or_default();
        super::cell_list::merge(self.origin_jobs(), copies.into_iter().map(|r| r.info))
    }

    /// The jobs submitted through this node, newest first.
    pub(super) fn origin_jobs(&self) -> Vec<JobInfo> {
        let rows = self.state_db.jobs(JobRole::Origin).unwrap_or_default();
        super::cell_list::merge(rows.into_iter().map(|r| r.info), [])
    }

    /// What this node itself knows of a job: its origin's view if it is the origin, else
    /// its runner's.
    pub(super) fn local_job(&self, id: &str) -> Option<JobInfo> {
        self.local_job_record(id).map(|r| r.info)
    }

    /// `job` as this node shows it to others: a runner's row carries its own replica's
    /// status signed now (an origin's rows carry what the runners signed).
    pub(super) fn signed_view(&self, mut job: JobInfo, role: JobRole) -> JobInfo {
        if role == JobRole::Runner {
            let me = self.mesh.peer_id().to_string();
            for r in job
                .replicas
                .iter_mut()
                .filter(|r| r.node.as_deref() == Some(&me))
            {
                let status = ReplicaStatus::of_replica(&job.id, r, now_ms());
                r.signed_status = Some(status.sign(&self.identity));
            }
        }
        job
    }

    /// [`local_job`](Self::local_job) with the signed submission it came with.
    pub(super) fn local_job_record(&self, id: &str) -> Option<JobRecord> {
        for role in [JobRole::Origin, JobRole::Runner] {
            if let Ok(Some(r)) = self.state_db.job(id, role) {
                return Some(r);
            }
        }
        None
    }

    /// A job as its origin knows it: from this node, else from the nodes the DHT says
    /// know it (a runner's view leads to its origin).
    pub async fn job(&self, id: &str) -> ServiceResult<JobInfo> {
        let job_id = parse_job_id(id)?;
        let id = job_id.to_hex();
        if let Some(job) = self.local_job(&id) {
            if job.origin == self.mesh.peer_id().to_string() {
                return Ok(job);
            }
            if let Ok(origin) = job.origin.parse::<PeerId>() {
                if let Ok(theirs) = self.ask_status(origin, &id).await {
                    return Ok(theirs);
                }
            }
            return Ok(job);
        }
        let providers =
            tokio::time::timeout(LOOKUP_TIMEOUT, self.mesh.providers(DhtKey::Job(job_id.0)))
                .await
                .map_err(|_| {
                    ServiceError::NotFound(format!(
                        "no node of the mesh said it knows job {id} within {LOOKUP_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| ServiceError::Unavailable(format!("cannot look the job up: {e}")))?;
        let mut seen = None;
        for peer in providers {
            if let Ok(job) = self.ask_status(peer, &id).await {
                if job.origin == peer.to_string() {
                    return Ok(job);
                }
                if let Ok(origin) = job.origin.parse::<PeerId>() {
                    if let Ok(theirs) = self.ask_status(origin, &id).await {
                        return Ok(theirs);
                    }
                }
                seen = Some(job);
            }
        }
        seen.ok_or_else(|| ServiceError::NotFound(format!("no node of the mesh knows job {id}")))
    }

    async fn ask_status(&self, peer: PeerId, id: &str) -> Result<JobInfo, String> {
        let link = self.jobs.link().ok_or("the job protocol is not running")?;
        let request = JobRequest::Status { job_id: id.into() };
        match tokio::time::timeout(STATUS_TIMEOUT, link.request(peer, &request)).await {
            // Believed for what is signed: the submitter's submission, the nodes' results.
            Ok(Ok(JobResponse::Status { job, submission })) => {
                check_answer(id, *job, submission.as_deref())
                    .map_err(|e| format!("{peer}'s answer is not believed: {e}"))
            }
            Ok(Ok(other)) => Err(format!("{peer} answered {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("{peer} did not answer within {STATUS_TIMEOUT:?}")),
        }
    }

    /// Cancels a job submitted through this node: its replicas are stopped where they run.
    pub async fn cancel_job(self: &Arc<Self>, id: &str) -> ServiceResult<JobInfo> {
        let id = parse_job_id(id)?.to_hex();
        let Some(rec) = self.state_db.job(&id, JobRole::Origin).map_err(internal)? else {
            return match self.local_job(&id) {
                Some(job) => Err(ServiceError::Conflict(format!(
                    "job {id} was submitted through {}: cancel it there",
                    job.origin
                ))),
                None => Err(ServiceError::NotFound(format!("no job {id} on this node"))),
            };
        };
        if rec.info.state.is_final() {
            return Err(ServiceError::Conflict(format!(
                "job {id} has ended ({})",
                rec.info.state.as_str()
            )));
        }
        let running: Vec<(String, u32)> = rec
            .info
            .replicas
            .iter()
            .filter(|r| !r.state.is_final())
            .filter_map(|r| Some((r.node.clone()?, r.index)))
            .collect();
        let job = self
            .update_origin(&id, |job| {
                job.state = JobState::Cancelled;
                job.detail = Some("cancelled by its submitter".into());
                for r in job.replicas.iter_mut().filter(|r| !r.state.is_final()) {
                    r.state = ReplicaState::Cancelled;
                }
            })
            .ok_or_else(|| ServiceError::Internal("the job vanished".into()))?;
        for (node, index) in running {
            self.clone().send_cancel(id.clone(), node, index);
        }
        Ok(job)
    }

    fn send_cancel(self: Arc<Self>, job_id: String, node: String, replica: u32) {
        self.tell(node, JobRequest::Cancel { job_id, replica });
    }

    /// Tells `node` to drop its copy of replica `replica`'s checkpoint (best effort).
    fn send_release(self: Arc<Self>, job_id: String, node: String, replica: u32) {
        self.tell(node, JobRequest::Release { job_id, replica });
    }

    /// Sends `request` to `node` (answered here if it is this node), in the background,
    /// best effort: the answer is only logged.
    pub(super) fn tell(self: Arc<Self>, node: String, request: JobRequest) {
        tokio::spawn(async move {
            let Ok(peer) = node.parse::<PeerId>() else {
                return;
            };
            let answer = if peer == self.mesh.peer_id() {
                Ok(self.clone().answer_job_request(peer, request).await)
            } else {
                let Some(link) = self.jobs.link() else { return };
                link.request(peer, &request)
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = answer {
                tracing::debug!(%peer, error = %e, "a job request was not answered");
            }
        });
    }

    /// Serial output of replica `replica` (default: one whose result won, else the first)
    /// from `offset`: from this node if it runs it, else from the node that does, else from
    /// the replica's published output.
    pub async fn job_logs(
        &self,
        id: &str,
        replica: Option<u32>,
        offset: u64,
    ) -> ServiceResult<(Vec<u8>, u64, bool)> {
        let job = self.job(id).await?;
        let r = pick_replica(&job, replica)?;
        if let JobResponse::Logs {
            data,
            next_offset,
            finished,
        } = self.job_logs_here(&job.id, r.index, offset)
        {
            return Ok((
                hex::decode(&data).unwrap_or_default(),
                next_offset,
                finished,
            ));
        }
        if let (Some(node), Some(link)) = (
            r.node.as_deref().and_then(|n| n.parse::<PeerId>().ok()),
            self.jobs.link(),
        ) {
            let ask = JobRequest::Logs {
                job_id: job.id.clone(),
                replica: r.index,
                offset,
            };
            if let Ok(JobResponse::Logs {
                data,
                next_offset,
                finished,
            }) = link.request(node, &ask).await
            {
                let bytes = hex::decode(&data).ok_or_else(|| {
                    ServiceError::Internal(format!("{node} sent output that is not hex"))
                })?;
                return Ok((bytes, next_offset, finished));
            }
        }
        let Some(set) = &r.log_set else {
            return Err(ServiceError::Unavailable(format!(
                "replica {} of job {} has no output this node can reach now",
                r.index, job.id
            )));
        };
        let all = self.fetch_set(set, MAX_SERIAL_BYTES).await?;
        let from = (offset as usize).min(all.len());
        let to = (from + MAX_LOG_CHUNK).min(all.len());
        Ok((
            all[from..to].to_vec(),
            to as u64,
            r.state.is_final() && to == all.len(),
        ))
    }

    /// The job's agreed result (the output of a replica whose hash won).
    pub async fn job_result(&self, id: &str) -> ServiceResult<Vec<u8>> {
        let job = self.job(id).await?;
        let Some(hash) = &job.result_hash else {
            return Err(ServiceError::Conflict(format!(
                "job {} has no result yet ({})",
                job.id,
                job.state.as_str()
            )));
        };
        let winners = job
            .replicas
            .iter()
            .filter(|r| r.result_hash.as_ref() == Some(hash));
        let declared = &job.spec.result;
        for r in winners {
            // What the hash covers: the serial output (the log), the result file, or both.
            let blob = match declared.has_blob() {
                true => match self
                    .fetch_output(&r.result_set, MAX_RESULT_BLOB_BYTES)
                    .await
                {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot fetch a replica's result");
                        continue;
                    }
                },
                false => None,
            };
            let serial_set = match declared.has_blob() {
                true => &r.log_set,
                false => &r.result_set,
            };
            let serial = match declared.serial {
                false => Ok(None),
                true => self
                    .fetch_output(serial_set, MAX_SERIAL_BYTES)
                    .await
                    .map(Some),
            };
            let serial = match serial {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot fetch a replica's output");
                    continue;
                }
            };
            if result_hash(serial.as_deref(), blob.as_deref()) == *hash {
                return Ok(blob.or(serial).unwrap_or_default());
            }
            tracing::warn!(job = %job.id, replica = r.index, "a result's bytes do not match its hash");
        }
        Err(ServiceError::Unavailable(format!(
            "no node holding job {}'s result answers now",
            job.id
        )))
    }

    /// A replica's output by its chunk set (none: it was empty, which publishes no set).
    async fn fetch_output(&self, set: &Option<String>, max: u64) -> ServiceResult<Vec<u8>> {
        match set {
            Some(set) => self.fetch_set(set, max).await,
            None => Ok(Vec::new()),
        }
    }

    async fn fetch_set(&self, set: &str, max: u64) -> ServiceResult<Vec<u8>> {
        super::super::chunk_sets::fetch_bytes(&self.mesh, &self.exchange, set, max)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("cannot fetch chunk set {set}: {e:#}")))
    }

    /// A report from the node running a replica of a job submitted here.
    pub(super) fn job_report(self: &Arc<Self>, from: PeerId, report: ReplicaReport) -> JobResponse {
        let Ok(Some(rec)) = self.state_db.job(&report.job_id, JobRole::Origin) else {
            return JobResponse::refuse("this node is not the job's origin");
        };
        let Some(r) = rec.info.replicas.iter().find(|r| r.index == report.replica) else {
            return JobResponse::refuse(format!("the job has no replica {}", report.replica));
        };
        let from_s = from.to_string();
        if r.node.is_none() && report.generation == r.generation && r.state == ReplicaState::Placing
        {
            // The runner's first word can come before its "admitted" answer is recorded
            // here: not stale, not yet taken (it says it again).
            return JobResponse::refuse(format!(
                "{NOT_YET}: this replica's placement is still being recorded"
            ));
        }
        // The replica's VM moved (politeness, drain) from the node on record to `from`.
        let moved_here = report.generation == r.generation
            && report.moved_from.is_some()
            && report.moved_from == r.node
            && r.node.as_deref() != Some(from_s.as_str());
        if moved_here && r.state != ReplicaState::Migrating {
            return JobResponse::refuse(format!(
                "{NOT_YET}: the replica's move is not on record here"
            ));
        }
        // The node it left says where it went, after the node it reached already did.
        if report.moved_to.is_some() && report.moved_to == r.node {
            return JobResponse::Ack;
        }
        if !moved_here
            && (report.generation < r.generation || r.node.as_deref() != Some(from_s.as_str()))
        {
            return JobResponse::refuse(format!(
                "{STALE}: replica {} of job {} is at generation {} on {}; stop this copy",
                r.index,
                report.job_id,
                r.generation,
                r.node.as_deref().unwrap_or("no node yet")
            ));
        }
        // Whatever changes the replica here is its sender's signed word (kept to show others),
        // checked before anything changes.
        if let Err(e) = ReplicaStatus::check_report(&report, &from_s) {
            return JobResponse::refuse(e.to_string());
        }
        if let Some(to) = &report.moved_to {
            let (job_id, index, to) = (report.job_id.clone(), report.replica, to.clone());
            let generation = report.generation;
            self.update_origin(&job_id, |job| {
                if let Some(r) = job.replicas.iter_mut().find(|r| {
                    r.index == index
                        && r.generation == generation
                        && r.node.as_deref() == Some(from_s.as_str())
                }) {
                    r.node = Some(to.clone());
                    r.moved_from = Some(from_s.clone());
                    r.state = ReplicaState::Running;
                    r.detail = Some(format!("its VM moved from {from_s} to {to}"));
                }
                job.state = progress_state(job);
            });
            return JobResponse::Ack;
        }
        if moved_here {
            let (job_id, index) = (report.job_id.clone(), report.replica);
            let (generation, came_from) = (report.generation, report.moved_from.clone());
            self.update_origin(&job_id, |job| {
                if let Some(r) = job
                    .replicas
                    .iter_mut()
                    .find(|r| r.index == index && r.generation == generation && r.node == came_from)
                {
                    r.detail = Some(format!(
                        "its VM moved from {} to {from_s}",
                        r.node.as_deref().unwrap_or("?")
                    ));
                    r.moved_from = r.node.take();
                    r.node = Some(from_s.clone());
                }
            });
        }
        if r.state.is_final() {
            return JobResponse::Ack;
        }
        if report.state == ReplicaState::Lost {
            // The node lost its copy (it restarted without it): placed again, fenced by a
            // new generation.
            let (job_id, index) = (report.job_id.clone(), report.replica);
            let detail = report.detail.clone();
            let generation = report.generation;
            self.update_origin(&job_id, |job| {
                // Checked again under the writer's lock: the replica may have moved on.
                if let Some(r) = job.replicas.iter_mut().find(|r| {
                    r.index == index
                        && r.generation == generation
                        && r.node.as_deref() == Some(from_s.as_str())
                }) {
                    r.generation += 1;
                    r.state = ReplicaState::Placing;
                    r.node = None;
                    r.vm_id = None;
                    r.detail = Some(format!(
                        "lost on {from} ({}); placed again",
                        detail.as_deref().unwrap_or("no reason given")
                    ));
                }
                job.state = progress_state(job);
            });
            self.clone().place_waiting(&job_id);
            return JobResponse::Ack;
        }
        let mut cancel = Vec::new();
        let mut retry = false;
        let mut decided = None;
        let mut superseded = false;
        let updated = self.update_origin(&report.job_id, |job| {
            if let Some(r) = job.replicas.iter_mut().find(|r| r.index == report.replica) {
                // Checked again under the writer's lock: a death or a loss handled since
                // the check above gave the replica a new generation or node.
                if r.generation != report.generation || r.node.as_deref() != Some(from_s.as_str()) {
                    superseded = true;
                    return;
                }
                r.state = report.state;
                r.vm_id = report.vm_id.clone().or(r.vm_id.take());
                r.result_hash = report.result_hash.clone();
                r.log_set = report.log_set.clone();
                r.result_set = report.result_set.clone();
                r.detail = report.detail.clone();
                if report.checkpoint.is_some() {
                    r.checkpoint = report.checkpoint.as_deref().cloned();
                }
                r.restored_from = report.restored_from.or(r.restored_from);
                r.signed_status = report.signed_status.clone();
            }
            let replicas: Vec<quorum::ReplicaReport> =
                job.replicas.iter().map(quorum::ReplicaReport::of).collect();
            let verdict = quorum::decide(
                quorum::QuorumRule::of(&job.spec, MAX_RETRIES),
                &replicas,
                job.retries,
            );
            match &verdict {
                Verdict::Pending => job.state = progress_state(job),
                Verdict::Succeeded {
                    hash, disagreeing, ..
                } => {
                    job.state = JobState::Succeeded;
                    job.result_hash = Some(hash.clone());
                    job.detail = (!disagreeing.is_empty())
                        .then(|| format!("outvoted: {}", disagreeing.join(", ")));
                }
                Verdict::Retry {
                    replicas_to_add, ..
                } => {
                    job.retries += 1;
                    let next = job.replicas.iter().map(|r| r.index + 1).max().unwrap_or(0);
                    for i in 0..u32::from(*replicas_to_add) {
                        job.replicas.push(new_replica(next + i));
                    }
                    job.state = progress_state(job);
                    job.detail = Some(format!(
                        "the results cannot agree: {replicas_to_add} more replica(s) on other \
                         nodes, retry {} of {MAX_RETRIES}",
                        job.retries
                    ));
                    retry = true;
                }
                Verdict::Failed { reason } => {
                    job.state = JobState::Failed;
                    job.detail = Some(reason.to_string());
                }
            }
            decided = Some(verdict);
            if job.state.is_final() {
                for r in job.replicas.iter_mut().filter(|r| !r.state.is_final()) {
                    r.state = ReplicaState::Cancelled;
                    if let Some(node) = &r.node {
                        cancel.push((node.clone(), r.index));
                    }
                }
            }
        });
        if superseded {
            return JobResponse::refuse(format!(
                "{STALE}: replica {} of job {} was placed again meanwhile; stop this copy",
                report.replica, report.job_id
            ));
        }
        if let Some(Verdict::Succeeded {
            agreeing,
            disagreeing,
            ..
        }) = &decided
        {
            self.count_reputation(agreeing, disagreeing);
        }
        if let Some(job) = updated {
            for (node, index) in cancel {
                self.clone().send_cancel(job.id.clone(), node, index);
            }
            if retry {
                self.clone().place_waiting(&job.id);
            }
        }
        JobResponse::Ack
    }

    /// Counts agreement and disagreement in the reputation tally, and notes each node's
    /// standing in the peer table.
    fn count_reputation(&self, agreeing: &[String], disagreeing: &[String]) {
        let mut tally = lock(&self.jobs.reputation);
        for peer in agreeing {
            tally.agreed(peer);
        }
        for peer in disagreeing {
            tally.disagreed(peer);
        }
        for peer in agreeing.iter().chain(disagreeing) {
            let t = tally.tally(peer);
            let note = format!(
                "job results: {} agreed, {} outvoted (score {} per mille)",
                t.agreements,
                t.disagreements,
                t.score_permille()
            );
            if let Err(e) = self.state_db.note_peer(peer, &note, &[], now_ms()) {
                tracing::warn!(%peer, error = %e, "cannot note a peer's reputation");
            }
        }
    }

    /// Reads, changes and writes an origin row; announces and returns the job.
    fn update_origin(&self, id: &str, change: impl FnOnce(&mut JobInfo)) -> Option<JobInfo> {
        let job = {
            let _one_writer = lock(&self.jobs.origin_writes);
            let mut rec = self.state_db.job(id, JobRole::Origin).ok()??;
            let before = rec.info.clone();
            change(&mut rec.info);
            if rec.info == before {
                return Some(before);
            }
            if rec.info.state.is_final() && !before.state.is_final() {
                if let Ok(s) = SubmitterId::parse(&rec.info.submitter) {
                    lock(&self.jobs.gate).job_ended(s);
                }
                self.release_checkpoints(&rec.info);
            }
            rec.info.updated_at_ms = now_ms();
            if let Err(e) = self.state_db.put_job(&rec) {
                tracing::warn!(job = id, error = %e, "cannot record a job's change");
                return None;
            }
            rec.info
        };
        self.announce_job(&job);
        Some(job)
    }

    /// Places every replica of `id` still waiting for a node, each in its own task.
    fn place_waiting(self: Arc<Self>, id: &str) {
        let Ok(Some(rec)) = self.state_db.job(id, JobRole::Origin) else {
            return;
        };
        for r in rec
            .info
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Placing)
        {
            if self.jobs.claim_placement(id, r.index) {
                let me = self.clone();
                let (id, index) = (id.to_string(), r.index);
                tokio::spawn(async move {
                    me.place_replica(&id, index).await;
                    me.jobs.end_placement(&id, index);
                });
            }
        }
    }

    /// Places one replica by a [`PlacementSearch`] (cells ranked by their summaries, offers
    /// from their members, the best fit confirmed); searched again after [`PLACE_RETRY`]
    /// while nobody takes it and the job lives. A round is skipped while a replica of a job
    /// of higher priority found no node (at most a few in a row).
    async fn place_replica(self: &Arc<Self>, id: &str, index: u32) {
        let mut yielded = 0;
        loop {
            let Ok(Some(rec)) = self.state_db.job(id, JobRole::Origin) else {
                return;
            };
            let Some(r) = rec.info.replicas.iter().find(|r| r.index == index) else {
                return;
            };
            if rec.info.state.is_final() || r.state != ReplicaState::Placing {
                return;
            }
            let generation = r.generation;
            let priority = rec.info.spec.priority;
            if self.jobs.yields(id, index, priority, yielded) {
                yielded += 1;
                let detail =
                    format!("replica {index} waits: a job of higher priority found no node yet");
                self.update_origin(id, |job| job.detail = Some(detail));
                tokio::time::sleep(PLACE_RETRY).await;
                continue;
            }
            yielded = 0;
            let restored = match &r.checkpoint {
                Some(c) => self.restore_once(&rec, index, generation, c).await,
                None => Err(String::new()),
            };
            let restored_from = restored.as_ref().ok().map(|(_, _, seq)| *seq);
            let placed = match restored {
                Ok((peer, vm_id, _)) => Ok((peer, vm_id)),
                Err(why) => {
                    if !why.is_empty() {
                        tracing::info!(job = id, index, reason = %why, "no holder restored the replica; it starts from the beginning");
                    }
                    self.search_once(&rec, index, generation).await
                }
            };
            self.jobs.set_starved(id, index, priority, placed.is_err());
            match placed {
                Ok((peer, vm_id)) => {
                    self.update_origin(id, |job| {
                        if let Some(r) = job
                            .replicas
                            .iter_mut()
                            .find(|r| r.index == index && r.generation == generation)
                        {
                            if r.state == ReplicaState::Placing {
                                r.state = ReplicaState::Starting;
                                r.node = Some(peer);
                                r.vm_id = Some(vm_id);
                                r.restored_from = restored_from;
                                r.detail = restored_from.map(|seq| {
                                    format!("restored from checkpoint {seq} held by its node")
                                });
                            }
                        }
                        job.state = progress_state(job);
                        job.detail = None;
                    });
                    return;
                }
                Err(why) => {
                    let detail = format!("replica {index} not placed yet: {why}; trying again");
                    self.update_origin(id, |job| job.detail = Some(crate::jobs::wire::cut(detail)));
                }
            }
            tokio::time::sleep(PLACE_RETRY).await;
        }
    }

    /// One search for replica `index` at `generation`: the chosen peer and its VM, or why
    /// none took it.
    async fn search_once(
        self: &Arc<Self>,
        rec: &JobRecord,
        index: u32,
        generation: u64,
    ) -> Result<(String, String), String> {
        let spec = &rec.info.spec;
        let need = Need::of(spec);
        // Replicas of a job land on distinct nodes.
        let exclude: Vec<String> = rec
            .info
            .replicas
            .iter()
            .filter(|o| o.index != index)
            .filter_map(|o| o.node.clone())
            .collect();
        let Some(own_cell) = self.cell.read().await.as_ref().map(|c| c.cell()) else {
            return Err("this node has no cell yet".into());
        };
        let members = self
            .cell_status()
            .await
            .map(|c| c.members)
            .unwrap_or_default();
        let summaries = self.mesh.cell_summaries().await.unwrap_or_default();
        let seed = rand_seed();
        let cells = rank_cells(&summaries, own_cell, need, unix_now(), seed)
            .iter()
            .map(|c| c.cell)
            .collect();
        let plan = SearchPlan {
            cells,
            own_cell,
            need,
            exclude,
            seed,
        };
        let epoch = Epoch::start();
        let (mut search, mut actions) =
            PlacementSearch::start(plan, &members, SearchLimits::default(), epoch.now());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
        let mut admitted: HashMap<String, String> = HashMap::new();
        loop {
            for action in std::mem::take(&mut actions) {
                match action {
                    SearchAction::LookUpMembers { cell } => {
                        let _ = tx.send(Answer::Members(cell, contacts_of(&summaries, cell)));
                    }
                    SearchAction::AskOffers { peers } => {
                        for peer in peers {
                            let (me, tx, spec) = (self.clone(), tx.clone(), spec.clone());
                            let id = rec.info.id.clone();
                            tokio::spawn(async move {
                                let offer = me.ask_offer(&peer, &id, &spec).await;
                                let _ = tx.send(Answer::Offer(peer, offer));
                            });
                        }
                    }
                    SearchAction::Confirm { peer } => {
                        let (me, tx, rec) = (self.clone(), tx.clone(), rec.clone());
                        tokio::spawn(async move {
                            let placed = me.confirm(&peer, &rec, index, generation, None).await;
                            let _ = tx.send(Answer::Confirm(peer, placed));
                        });
                    }
                    SearchAction::Release { peer } => {
                        self.clone().send_cancel(rec.info.id.clone(), peer, index);
                    }
                    SearchAction::Placed { peer } => {
                        let vm = admitted.remove(&peer).unwrap_or_default();
                        return Ok((peer, vm));
                    }
                    SearchAction::GiveUp { reason } => return Err(reason.to_string()),
                }
            }
            let due = search
                .next_deadline()
                .map(|d| epoch.instant(d))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60));
            tokio::select! {
                answer = rx.recv() => {
                    let now = epoch.now();
                    actions = match answer {
                        Some(Answer::Members(cell, members)) => search.members_of_cell(cell, &members, now),
                        Some(Answer::Offer(peer, Ok(offer))) => search.offer_received(&peer, offer, now),
                        Some(Answer::Offer(peer, Err(e))) => search.offer_refused(&peer, &e, now),
                        Some(Answer::Confirm(peer, Ok(vm))) => {
                            admitted.insert(peer.clone(), vm);
                            search.confirmed(&peer, now)
                        }
                        Some(Answer::Confirm(peer, Err(e))) => search.confirm_refused(&peer, &e, now),
                        None => return Err("the search's answers stopped".into()),
                    };
                }
                _ = tokio::time::sleep_until(due) => actions = search.tick(epoch.now()),
            }
        }
    }

    /// An offer from `peer` (or this node).
    async fn ask_offer(&self, peer: &str, id: &str, spec: &JobSpec) -> Result<Offer, String> {
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| format!("{peer} is not a peer id"))?;
        let answer = if peer_id == self.mesh.peer_id() {
            self.job_offer(spec.backend, spec.vcpus, spec.memory_mib)
        } else {
            let link = self.jobs.link().ok_or("the job protocol is not running")?;
            let ask = JobRequest::Offer {
                job_id: id.to_string(),
                backend: spec.backend,
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
            };
            link.request(peer_id, &ask)
                .await
                .map_err(|e| e.to_string())?
        };
        match answer {
            JobResponse::Offer {
                free_vcpus,
                free_memory_mib,
                free_slots,
                load_permille,
            } => Ok(Offer {
                peer: peer.to_string(),
                free_vcpus,
                free_memory_mib,
                free_slots,
                load_permille,
            }),
            JobResponse::Refuse { reason } => Err(reason),
            other => Err(format!("answered {other:?}")),
        }
    }

    /// Asks `peer` (or this node) to run replica `index` at `generation`: its VM's id.
    async fn confirm(
        self: &Arc<Self>,
        peer: &str,
        rec: &JobRecord,
        index: u32,
        generation: u64,
        restore: Option<u64>,
    ) -> Result<String, String> {
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| format!("{peer} is not a peer id"))?;
        let answer = if peer_id == self.mesh.peer_id() {
            let me = self.mesh.peer_id();
            self.job_place(me, &rec.submission, index, generation, restore)
                .await
        } else {
            let link = self.jobs.link().ok_or("the job protocol is not running")?;
            let ask = JobRequest::Place {
                submission: hex::encode(&rec.submission),
                replica: index,
                generation,
                restore,
            };
            link.request(peer_id, &ask)
                .await
                .map_err(|e| e.to_string())?
        };
        match answer {
            JobResponse::Admitted { vm_id } => Ok(vm_id),
            JobResponse::Refuse { reason } => Err(reason),
            other => Err(format!("answered {other:?}")),
        }
    }

    /// Asks the holders of checkpoint `c` of replica `index` not known dead, in the fenced
    /// restore order of `generation` (see `policy::job_fencing`), to run it from there, one
    /// at a time: the first that admits it restores it. A holder this node's cell declares
    /// dead is skipped; one in another cell (the runner's) is asked, and answers or times
    /// out. The holder, its VM and the checkpoint it restored; or why none did.
    async fn restore_once(
        self: &Arc<Self>,
        rec: &JobRecord,
        index: u32,
        generation: u64,
        c: &ReplicaCheckpoint,
    ) -> Result<(String, String, u64), String> {
        let dead: Vec<String> = self
            .cell_status()
            .await
            .map(|s| {
                s.members
                    .into_iter()
                    .filter(|m| !m.live)
                    .map(|m| m.peer_id)
                    .collect()
            })
            .unwrap_or_default();
        // Replicas of a job land on distinct nodes.
        let taken: Vec<&str> = rec
            .info
            .replicas
            .iter()
            .filter(|o| o.index != index && !o.state.is_final())
            .filter_map(|o| o.node.as_deref())
            .collect();
        let job =
            novacron_mesh::submission::JobId::parse(&rec.info.id).ok_or("the job id is not hex")?;
        let order =
            job_fencing::restore_order(&job, index, generation.saturating_sub(1), &c.holders);
        let mut why = Vec::new();
        for holder in order {
            if dead.iter().any(|p| p == holder) || taken.contains(&holder) {
                continue;
            }
            match self
                .confirm(holder, rec, index, generation, Some(c.seq))
                .await
            {
                Ok(vm) => return Ok((holder.to_string(), vm, c.seq)),
                Err(e) => why.push(format!("{holder}: {e}")),
            }
        }
        match why.is_empty() {
            true => Err("no holder of its checkpoint is left".into()),
            false => Err(why.join("; ")),
        }
    }

    /// The job ended: its replicas' checkpoint holders drop their copies (best effort; a
    /// holder that misses this drops its copy once the job's runtime is long past).
    fn release_checkpoints(&self, job: &JobInfo) {
        let Some(me) = self.myself.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        for r in &job.replicas {
            for holder in r.checkpoint.iter().flat_map(|c| c.holders.iter()) {
                me.clone()
                    .send_release(job.id.clone(), holder.clone(), r.index);
            }
        }
    }

    /// A cell member died: each replica of a job submitted here that ran on it gets a new
    /// generation and is placed again: restored by a holder of its latest checkpoint, or
    /// from the beginning when it has none (see docs/jobs.md).
    pub(in crate::daemon) fn jobs_node_died(self: &Arc<Self>, peer: &PeerId) {
        let dead = peer.to_string();
        for rec in self.state_db.jobs(JobRole::Origin).unwrap_or_default() {
            let job = &rec.info;
            let hit = !job.state.is_final()
                && job
                    .replicas
                    .iter()
                    .any(|r| !r.state.is_final() && r.node.as_deref() == Some(&dead));
            if !hit {
                continue;
            }
            self.update_origin(&job.id, |job| {
                for r in job.replicas.iter_mut() {
                    if !r.state.is_final() && r.node.as_deref() == Some(&dead) {
                        place_again(r, format!("its node {dead} died; placed again"));
                    }
                }
                job.state = progress_state(job);
            });
            self.clone().place_waiting(&job.id);
        }
    }

    /// Replica `index` of `job_id`, if it still runs at `generation` on `node`, is placed
    /// again (its node is presumed dead or lost it: `detail` says which).
    pub(super) fn place_replica_again(
        self: &Arc<Self>,
        job_id: &str,
        index: u32,
        generation: u64,
        node: &str,
        detail: &str,
    ) {
        let mut moved = false;
        self.update_origin(job_id, |job| {
            if let Some(r) = job.replicas.iter_mut().find(|r| {
                r.index == index
                    && r.generation == generation
                    && r.node.as_deref() == Some(node)
                    && !r.state.is_final()
            }) {
                place_again(r, format!("{detail}; placed again"));
                moved = true;
            }
            job.state = progress_state(job);
        });
        if moved {
            self.clone().place_waiting(job_id);
        }
    }

    /// At start: jobs submitted here that are not decided go on being placed.
    pub(super) async fn resume_origin_jobs(self: Arc<Self>) {
        let rows = self.state_db.jobs(JobRole::Origin).unwrap_or_default();
        let mut active: HashMap<SubmitterId, u32> = HashMap::new();
        for rec in rows.iter().filter(|r| !r.info.state.is_final()) {
            if let Ok(s) = SubmitterId::parse(&rec.info.submitter) {
                *active.entry(s).or_default() += 1;
            }
        }
        {
            let mut gate = lock(&self.jobs.gate);
            for (s, n) in active {
                gate.set_active(s, n);
            }
        }
        for rec in rows {
            if !rec.info.state.is_final() {
                self.clone().place_waiting(&rec.info.id);
            }
        }
    }
}

/// What comes back to a placement search.
enum Answer {
    Members(CellId, Vec<MemberStatus>),
    Offer(String, Result<Offer, String>),
    Confirm(String, Result<String, String>),
}

/// The members of another cell this node can name: its summary's contacts (its
/// representatives), each shown with the cell's free figures (a hint: the offer is the truth).
fn contacts_of(summaries: &[SummaryRecord], cell: CellId) -> Vec<MemberStatus> {
    let Some(newest) = summaries
        .iter()
        .filter(|s| s.summary.cell().ok() == Some(cell))
        .max_by_key(|s| s.issued_at)
    else {
        return Vec::new();
    };
    let s = &newest.summary;
    s.contact_peers()
        .unwrap_or_default()
        .iter()
        .map(|p| MemberStatus {
            peer_id: p.to_string(),
            live: true,
            signed: true,
            vcpus: s.free_vcpus.min(u64::from(u32::MAX)) as u32,
            mem_mib: s.free_memory_bytes >> 20,
            free_slots: s.free_slots.min(u64::from(u32::MAX)) as u32,
            load_permille: s.mean_load_permille.into(),
            version: String::new(),
            addrs: Vec::new(),
        })
        .collect()
}

/// A fresh seed for the order among equals.
fn rand_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return now_ms();
    }
    u64::from_le_bytes(b)
}

fn internal(e: crate::state::StateError) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// A replica whose node is gone: a new generation (which fences the old copy), to be placed
/// again (restored from its checkpoint when it has one).
fn place_again(r: &mut ReplicaInfo, detail: String) {
    r.generation += 1;
    r.state = ReplicaState::Placing;
    r.node = None;
    r.vm_id = None;
    r.detail = Some(detail);
}

fn new_replica(index: u32) -> ReplicaInfo {
    ReplicaInfo {
        index,
        state: ReplicaState::Placing,
        node: None,
        generation: 1,
        vm_id: None,
        result_hash: None,
        log_set: None,
        result_set: None,
        detail: None,
        updated_at_ms: now_ms(),
        moved_from: None,
        checkpoint: None,
        restored_from: None,
        signed_status: None,
    }
}

/// The replica `asked`, or one whose result won, or the first.
fn pick_replica(job: &JobInfo, asked: Option<u32>) -> ServiceResult<&ReplicaInfo> {
    match asked {
        Some(i) => job
            .replicas
            .iter()
            .find(|r| r.index == i)
            .ok_or_else(|| ServiceError::NotFound(format!("job {} has no replica {i}", job.id))),
        None => job
            .replicas
            .iter()
            .find(|r| r.result_hash.is_some() && r.result_hash == job.result_hash)
            .or_else(|| job.replicas.iter().find(|r| r.node.is_some()))
            .or(job.replicas.first())
            .ok_or_else(|| ServiceError::NotFound(format!("job {} has no replicas", job.id))),
    }
}

/// The state of a job not yet decided, from its replicas.
fn progress_state(job: &JobInfo) -> JobState {
    let live: Vec<ReplicaState> = job
        .replicas
        .iter()
        .map(|r| r.state)
        .filter(|s| !s.is_final())
        .collect();
    if live.contains(&ReplicaState::Migrating) {
        JobState::Migrating
    } else if live.contains(&ReplicaState::Running) {
        JobState::Running
    } else if live.contains(&ReplicaState::Placing) {
        JobState::Queued
    } else {
        JobState::Placed
    }
}
