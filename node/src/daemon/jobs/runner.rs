//! Running replicas of other nodes' jobs (and of jobs submitted here): the answer to an
//! offer, taking a placement (the submission checked again here: signature, trust, spec; the
//! VM admitted by this node's own accounting), following the replica's VM to its end,
//! reading its result, and reporting each change to the job's origin until it acknowledges.
//!
//! A placement is idempotent: the same replica and generation placed again answers with
//! the VM already running it (the origin may have lost the first answer). Two replicas of
//! one job never run on one node.

use std::sync::Arc;
use std::time::Duration;

use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::submission::{self, JobId};
use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::{hex, lock};

use super::{ReportTo, NO_REPLICAS};
use crate::api::service::ServiceError;
use crate::api::types::{now_ms, VmState};
use crate::daemon::{capacity, Daemon};
use crate::jobs::signed_status::ReplicaStatus;
use crate::jobs::vm_spec::replica_vm_spec;
use crate::jobs::wire::{JobResponse, ReplicaReport, MAX_LOG_CHUNK};
use crate::model::{
    result_hash, Backend, JobInfo, JobSpec, JobState, ReplicaInfo, ReplicaState,
    MAX_RESULT_BLOB_BYTES, MAX_SERIAL_BYTES,
};
use crate::policy::admission::Load;
use crate::state::{JobRecord, JobRole};
use crate::vms::paths::VmPaths;

/// How soon a report the origin was not ready for is sent again, and how many times in a
/// row before it waits for the follower's tick (a second).
const NOT_YET_RETRY: Duration = Duration::from_millis(20);
const NOT_YET_TRIES: u32 = 50;

/// A replica's result as read when its VM ended.
struct ReadResult {
    hash: String,
    /// The serial output (a command's stdout and stderr).
    serial: Vec<u8>,
    /// The result file, as read out of the work directory.
    blob: Option<Vec<u8>>,
}

/// Reads the result of the replica VM `vm_id` as `spec` declares it: a failure names why
/// (an output over its limit, a result file missing, too large or not a plain file).
fn read_result(
    data_dir: &std::path::Path,
    vm_id: &str,
    spec: &JobSpec,
) -> Result<ReadResult, String> {
    let paths = VmPaths::new(data_dir, vm_id);
    let serial = crate::vms::console::read_output(&paths, MAX_SERIAL_BYTES)?;
    let blob = match (&spec.result.file, spec.result.blob) {
        (Some(rel), _) => Some(
            crate::vms::process_backend::read_work_file(&paths.dir, rel, MAX_RESULT_BLOB_BYTES)
                .map_err(|e| format!("result.file {e}"))?,
        ),
        // Written by the VMM (jailed, driven by the guest): read without following links.
        (None, true) => Some(
            crate::vms::process_backend::read_untrusted_file(
                &paths.dir,
                "the VM's directory",
                crate::vms::paths::RESULT_BLOB,
                MAX_RESULT_BLOB_BYTES,
            )
            .map_err(|e| format!("the guest's result blob: {e}"))?,
        ),
        (None, false) => None,
    };
    let serial_part = spec.result.serial.then_some(serial.as_slice());
    Ok(ReadResult {
        hash: result_hash(serial_part, blob.as_deref()),
        serial,
        blob,
    })
}

/// Replicas in other cells are looked over this often (ticks of a second; their probes are
/// 5 s apart, so nothing is lost by not reading the origin's rows every second).
const REMOTE_WATCH_EVERY_TICKS: u64 = 5;

/// Held checkpoint copies and unused payload files are swept this often (ticks of a
/// second).
const SWEEP_EVERY_TICKS: u64 = 60;

impl Daemon {
    /// Would this node take a replica of this size now (by its own accounting)?
    pub(super) fn job_offer(&self, _backend: Backend, vcpus: u8, memory_mib: u64) -> JobResponse {
        if !self.jobs.run_replicas {
            return JobResponse::refuse(NO_REPLICAS);
        }
        let acc = self.accounting();
        if let Err(short) = acc.admit(Load::new(vcpus, memory_mib << 20)) {
            return JobResponse::refuse(format!("this node cannot take it now: {short}"));
        }
        let free = acc.free();
        JobResponse::Offer {
            free_vcpus: free.slots,
            free_memory_mib: free.mem_bytes >> 20,
            free_slots: free.slots,
            load_permille: capacity::host_load_permille(),
        }
    }

    /// Runs replica `replica` (at `generation`) of the signed submission `origin` sent:
    /// from the beginning, or from the checkpoint held here (`restore`: its number or a
    /// later one).
    pub(super) async fn job_place(
        self: &Arc<Self>,
        origin: PeerId,
        submission_bytes: &[u8],
        replica: u32,
        generation: u64,
        restore: Option<u64>,
    ) -> JobResponse {
        match self
            .place_here(origin, submission_bytes, replica, generation, restore)
            .await
        {
            Ok(vm_id) => JobResponse::Admitted { vm_id },
            Err(reason) => JobResponse::refuse(reason),
        }
    }

    async fn place_here(
        self: &Arc<Self>,
        origin: PeerId,
        submission_bytes: &[u8],
        replica: u32,
        generation: u64,
        restore: Option<u64>,
    ) -> Result<String, String> {
        if !self.jobs.run_replicas {
            return Err(NO_REPLICAS.into());
        }
        let (verified, spec) = self.open_trusted(submission_bytes)?;
        let job_id = verified.id.to_hex();
        // Outside the one-at-a-time section: a slow fetch holds up no other placement.
        self.fetch_replica_payload(&spec).await?;
        // One placement at a time: the check for a replica already here and its record
        // must not interleave with another's.
        let _one_at_a_time = self.jobs.placing.lock().await;
        if let Some(held) = self
            .state_db
            .job(&job_id, JobRole::Runner)
            .map_err(|e| e.to_string())?
        {
            if let Some(r) = held.info.replicas.first() {
                if r.index == replica && r.generation == generation {
                    if let Some(vm) = &r.vm_id {
                        return Ok(vm.clone());
                    }
                }
                if !r.state.is_final() {
                    return Err(format!(
                        "this node already runs replica {} of job {job_id}; replicas of a job \
                         run on distinct nodes",
                        r.index
                    ));
                }
            }
        }
        let vm_spec = replica_vm_spec(&job_id, replica, &spec, &self.vms.payload_dir())?;
        let vm_spec = self.vms.check(vm_spec).await.map_err(|e| e.to_string())?;
        // The checkpoint, taken (no other use of it) before anything is recorded.
        let held = restore
            .map(|seq| self.take_held(&job_id, replica, seq, generation))
            .transpose()?;
        let ask = Load::new(vm_spec.vcpus, vm_spec.mem_mib << 20);
        let vm_id = self
            .admit_then(ask, || self.vms.record_new(vm_spec))
            .map_err(|e| e.to_string())?;
        if let Some(held) = &held {
            let to = VmPaths::new(&self.data_dir, &vm_id).snapshot();
            if let Err(e) = super::checkpoint_hold::copy_checkpoint(&held.dir, &to) {
                let reason = format!("cannot restore the checkpoint: {e}");
                self.vms.registry().update(&vm_id, |r| {
                    r.info.state = VmState::Failed;
                    r.info.detail = Some(reason.clone());
                });
                return Err(reason);
            }
        }
        let now = now_ms();
        let info = JobInfo {
            id: job_id.clone(),
            spec,
            submitter: verified.submitter.to_string(),
            state: JobState::Placed,
            detail: None,
            origin: origin.to_string(),
            replicas: vec![ReplicaInfo {
                index: replica,
                state: ReplicaState::Starting,
                node: Some(self.mesh.peer_id().to_string()),
                generation,
                vm_id: Some(vm_id.clone()),
                result_hash: None,
                log_set: None,
                result_set: None,
                detail: None,
                updated_at_ms: now,
                moved_from: None,
                checkpoint: None,
                restored_from: held.as_ref().map(|h| h.seq),
                signed_status: None,
            }],
            result_hash: None,
            retries: 0,
            submitted_at_ms: now,
            updated_at_ms: now,
        };
        let record = JobRecord {
            role: JobRole::Runner,
            info,
            submission: submission_bytes.to_vec(),
            expires_at: verified.submission.expires_at,
        };
        if let Err(e) = self.state_db.put_job(&record) {
            // The VM is recorded but never started: record its end so it holds nothing.
            let reason = format!("cannot record the job: {e}");
            self.vms.registry().update(&vm_id, |r| {
                r.info.state = VmState::Failed;
                r.info.detail = Some(reason.clone());
            });
            return Err(reason);
        }
        self.jobs.watch(vm_id.clone(), job_id.clone());
        self.announce_job(&record.info);
        let me = self.clone();
        tokio::spawn(async move {
            let key = DhtKey::Job(verified.id.0);
            if let Err(e) = me.mesh.start_providing(key).await {
                tracing::debug!(error = %e, "cannot announce the job in the DHT");
            }
        });
        let started = match &held {
            None => self.vms.start_new(&vm_id).await,
            Some(_) => self.vms.start_new_from_snapshot(&vm_id).await,
        };
        if let (Some(held), Ok(_)) = (held, &started) {
            // This node runs the replica now: its own checkpoints go to other holders.
            self.withdraw_files(&held.files);
            super::checkpoint_hold::drop_copy(&held.dir);
        }
        match started {
            Ok(_) => Ok(vm_id),
            // The VM failed to start: the watcher reports it; the origin tries elsewhere.
            Err(e) => Err(format!("the VM did not start: {e}")),
        }
    }

    /// Fetches what the replica's VM needs from the mesh before anything is recorded (a
    /// refusal to the origin, not a VM that fails later): its kernel and initrd by chunk
    /// set, and a command's files (copied from this node's copy whenever it starts).
    async fn fetch_replica_payload(&self, spec: &JobSpec) -> Result<(), String> {
        let mut sets = crate::jobs::vm_spec::payload_sets(spec);
        sets.extend(spec.payload.files.iter().map(|f| f.chunk_set.clone()));
        self.vms
            .fetch_payload(&sets)
            .await
            .map_err(|e| format!("the payload: {e}"))
    }

    /// Stops a replica here because its origin says so (cancelled, or decided without it).
    pub(super) async fn job_cancel_here(
        &self,
        from: PeerId,
        job_id: &str,
        replica: u32,
    ) -> JobResponse {
        let Ok(Some(rec)) = self.state_db.job(job_id, JobRole::Runner) else {
            return JobResponse::NotFound;
        };
        if rec.info.origin != from.to_string() && from != self.mesh.peer_id() {
            return JobResponse::refuse("only the job's origin cancels its replicas");
        }
        let Some(r) = rec.info.replicas.first().filter(|r| r.index == replica) else {
            return JobResponse::NotFound;
        };
        if r.state.is_final() {
            return JobResponse::Ack;
        }
        let vm = r.vm_id.clone();
        self.update_runner(job_id, |r| {
            r.state = ReplicaState::Cancelled;
            r.detail = Some("cancelled by the job's origin".into());
        });
        if let Some(vm) = vm {
            if let Err(e) = self.vms.stop(&vm).await {
                tracing::debug!(vm, error = %e, "stopping a cancelled replica");
            }
        }
        JobResponse::Ack
    }

    /// Serial output of a replica that runs or ran here, from `offset`.
    pub(super) fn job_logs_here(&self, job_id: &str, replica: u32, offset: u64) -> JobResponse {
        let Ok(Some(rec)) = self.state_db.job(job_id, JobRole::Runner) else {
            return JobResponse::NotFound;
        };
        let Some(r) = rec.info.replicas.first().filter(|r| r.index == replica) else {
            return JobResponse::NotFound;
        };
        let Some(vm) = &r.vm_id else {
            return JobResponse::NotFound;
        };
        let paths = VmPaths::new(&self.data_dir, vm);
        match crate::vms::console::read_output_from(&paths, offset, MAX_LOG_CHUNK) {
            Ok(bytes) => JobResponse::Logs {
                next_offset: offset + bytes.len() as u64,
                finished: r.state.is_final() && bytes.len() < MAX_LOG_CHUNK,
                data: hex::encode(&bytes),
            },
            Err(e) => JobResponse::refuse(format!("cannot read the replica's output: {e}")),
        }
    }

    /// Changes this node's replica of `job_id` and reports the change to the job's origin.
    pub(super) fn update_runner(&self, job_id: &str, change: impl FnOnce(&mut ReplicaInfo)) {
        let updated = {
            let _one_writer = lock(&self.jobs.runner_writes);
            let Ok(Some(mut rec)) = self.state_db.job(job_id, JobRole::Runner) else {
                return;
            };
            let Some(r) = rec.info.replicas.first_mut() else {
                return;
            };
            let before = r.clone();
            change(r);
            if *r == before {
                return;
            }
            r.updated_at_ms = now_ms();
            rec.info.state = runner_job_state(r.state);
            rec.info.updated_at_ms = r.updated_at_ms;
            if let Err(e) = self.state_db.put_job(&rec) {
                tracing::warn!(job = job_id, error = %e, "cannot record a replica's change");
                return;
            }
            rec.info
        };
        self.announce_job(&updated);
        if let (Some(r), Ok(origin)) = (updated.replicas.first(), updated.origin.parse::<PeerId>())
        {
            self.report_now(ReportTo {
                origin,
                report: report_of(&updated.id, r),
            });
        }
    }

    /// Queues `to` for its origin and sends it now; the follower's tick sends it again until
    /// the origin takes it.
    pub(super) fn report_now(&self, mut to: ReportTo) {
        // This node's word, signed: the origin keeps it to show others.
        let status = ReplicaStatus::of(&to.report, now_ms());
        to.report.signed_status = Some(status.sign(&self.identity));
        self.jobs.queue_report(to.clone());
        if let Some(me) = self.myself.get().and_then(std::sync::Weak::upgrade) {
            tokio::spawn(me.send_report(to));
        }
    }

    /// Follows the VMs of replicas here: their state changes become replica changes, a VM
    /// that ended leaves its result, and one past its job's runtime is stopped.
    pub(super) async fn follow_replicas(self: Arc<Self>) {
        let mut events = self.bus.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        // What ended while the daemon was down is looked at once.
        for vm in self.jobs.watched() {
            if let Some(info) = self.vms.get(&vm) {
                self.vm_changed(&info.id, info.state, info.detail.clone())
                    .await;
            }
        }
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(env) => {
                        if let crate::model::NodeEvent::Vm { vm } = env.event {
                            self.vm_changed(&vm.id, vm.state, vm.detail.clone()).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for vm in self.jobs.watched() {
                            if let Some(info) = self.vms.get(&vm) {
                                self.vm_changed(&info.id, info.state, info.detail.clone()).await;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    self.stop_overdue().await;
                    if ticks.is_multiple_of(REMOTE_WATCH_EVERY_TICKS) {
                        self.watch_remote_replicas().await;
                    }
                    self.clone().send_reports();
                    self.push_checkpoints();
                    ticks += 1;
                    if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                        self.sweep_held();
                        let vms = self.vms.clone();
                        tokio::task::spawn_blocking(move || vms.sweep_payloads());
                    }
                }
            }
        }
    }

    async fn vm_changed(&self, vm_id: &str, state: VmState, detail: Option<String>) {
        let Some(job_id) = self.jobs.job_of(vm_id) else {
            return;
        };
        let next = match state {
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Suspended => {
                ReplicaState::Running
            }
            VmState::Migrating => ReplicaState::Migrating,
            VmState::Exited => ReplicaState::Finished,
            VmState::Failed => ReplicaState::Failed,
            VmState::MovedAway => ReplicaState::Migrating,
        };
        if next == ReplicaState::Finished {
            self.finish(&job_id, vm_id).await;
            return;
        }
        if state == VmState::MovedAway {
            self.unwatch_replica_vm(vm_id);
            if let Some(me) = self.myself.get().and_then(std::sync::Weak::upgrade) {
                tokio::spawn(me.hand_over(job_id, vm_id.to_string()));
            }
            return;
        }
        self.update_runner(&job_id, |r| {
            if r.state.is_final() {
                return;
            }
            r.state = next;
            if next == ReplicaState::Failed || state == VmState::MovedAway {
                r.detail = detail;
            }
        });
    }

    /// The replica's VM ended: its result is read (the serial output, the declared result
    /// file, or both; see [`result_hash`]) and kept as chunk sets: the serial output as the
    /// replica's log, the file (or else the serial output) as its result.
    async fn finish(&self, job_id: &str, vm_id: &str) {
        let Ok(Some(rec)) = self.state_db.job(job_id, JobRole::Runner) else {
            return;
        };
        if rec.info.replicas.first().is_none_or(|r| r.state.is_final()) {
            self.unwatch_replica_vm(vm_id);
            return;
        }
        let outcome = match read_result(&self.data_dir, vm_id, &rec.info.spec) {
            Ok(read) => {
                let mut hash = read.hash;
                if self.jobs.corrupt_results {
                    tracing::warn!(job = job_id, "reporting a corrupt result (test flag)");
                    hash = blake3::hash(hash.as_bytes()).to_hex().to_string();
                }
                let short = job_id.get(..12).unwrap_or(job_id);
                let base = format!("job-{short}-{}", rec.info.replicas[0].index);
                let log = self
                    .publish_output(job_id, read.serial, format!("{base}.log"))
                    .await;
                let result = match read.blob {
                    Some(blob) => {
                        self.publish_output(job_id, blob, format!("{base}.result"))
                            .await
                    }
                    None => log.clone(),
                };
                Ok((hash, log, result))
            }
            Err(reason) => Err(reason),
        };
        self.unwatch_replica_vm(vm_id);
        self.update_runner(job_id, |r| match outcome {
            Ok((hash, log, result)) => {
                r.state = ReplicaState::Finished;
                r.result_hash = Some(hash);
                r.log_set = log;
                r.result_set = result;
            }
            Err(reason) => {
                r.state = ReplicaState::Failed;
                r.detail = Some(reason);
            }
        });
    }

    /// Publishes a non-empty output as a chunk set (none when empty or on failure, which is
    /// logged: the result hash stands without it).
    async fn publish_output(&self, job_id: &str, bytes: Vec<u8>, name: String) -> Option<String> {
        if bytes.is_empty() {
            return None;
        }
        match super::super::chunk_sets::publish_bytes(&self.mesh, &self.exchange, bytes, name).await
        {
            Ok(p) => Some(p.id),
            Err(e) => {
                tracing::warn!(job = job_id, error = %e, "cannot publish a replica's output");
                None
            }
        }
    }

    /// Stops replicas that ran past their job's `maxRuntimeS`.
    async fn stop_overdue(&self) {
        for vm_id in self.jobs.watched() {
            let Some(job_id) = self.jobs.job_of(&vm_id) else {
                continue;
            };
            let (Some(vm), Ok(Some(rec))) = (
                self.vms.get(&vm_id),
                self.state_db.job(&job_id, JobRole::Runner),
            ) else {
                continue;
            };
            let ran_ms = now_ms().saturating_sub(vm.created_at_ms);
            if !vm.state.is_active() || ran_ms <= rec.info.spec.max_runtime_s * 1000 {
                continue;
            }
            self.update_runner(&job_id, |r| {
                r.state = ReplicaState::Failed;
                r.detail = Some(format!(
                    "ran past its maxRuntimeS of {} s",
                    rec.info.spec.max_runtime_s
                ));
            });
            self.unwatch_replica_vm(&vm_id);
            if let Err(e) = self.vms.stop(&vm_id).await {
                tracing::warn!(vm = vm_id, error = %e, "cannot stop an overdue replica");
            }
        }
    }

    /// Sends every report its origin has not acknowledged (in the background).
    fn send_reports(self: Arc<Self>) {
        for to in self.jobs.unacked() {
            let me = self.clone();
            tokio::spawn(async move { me.send_report(to).await });
        }
    }

    pub(super) async fn send_report(self: Arc<Self>, to: ReportTo) {
        self.send_report_try(to, 0).await
    }

    /// `send_report`, the `tries`-th time in a row the origin said "not yet".
    async fn send_report_try(self: Arc<Self>, to: ReportTo, tries: u32) {
        if !self.jobs.start_sending(&to) {
            return;
        }
        let answer = if to.origin == self.mesh.peer_id() {
            Ok(self.job_report(to.origin, to.report.clone()))
        } else {
            match self.jobs.link() {
                Some(link) => link
                    .request(
                        to.origin,
                        &crate::jobs::wire::JobRequest::Report(to.report.clone()),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the job protocol is not running".into()),
            }
        };
        match answer {
            Ok(JobResponse::Ack) => self.jobs.acked(&to),
            Ok(JobResponse::Refuse { reason }) if reason.starts_with(super::STALE) => {
                // A newer generation runs elsewhere: this copy must never go on.
                tracing::warn!(job = %to.report.job_id, "{reason}; stopping this replica");
                self.jobs.acked(&to);
                let vm = to.report.vm_id.clone();
                self.update_runner(&to.report.job_id, |r| {
                    r.state = ReplicaState::Cancelled;
                    r.detail = Some(reason);
                });
                self.jobs.acked_job(&to.report.job_id);
                if let Some(vm) = vm {
                    self.unwatch_replica_vm(&vm);
                    let _ = self.vms.stop(&vm).await;
                }
            }
            Ok(JobResponse::Refuse { reason })
                if reason.starts_with(super::NOT_YET) && tries < NOT_YET_TRIES =>
            {
                // The origin is about to record what this report follows (the placement's
                // answer, the move): said again shortly, not at the next tick.
                self.jobs.send_failed(&to);
                tokio::time::sleep(NOT_YET_RETRY).await;
                Box::pin(self.send_report_try(to, tries + 1)).await;
            }
            Ok(other) => {
                tracing::debug!(job = %to.report.job_id, answer = ?other, "report not taken");
                self.jobs.send_failed(&to);
            }
            Err(e) => {
                tracing::debug!(job = %to.report.job_id, error = %e, "report not delivered");
                self.jobs.send_failed(&to);
            }
        }
    }

    /// The jobs this node has runner rows of, for a restarted daemon: the VMs of replicas not
    /// over are watched again, replicas whose VM the recovery did not restore
    /// (`not_restored`) are lost here, and every replica's last state is reported again.
    pub(super) fn resume_runner_rows(&self, not_restored: &[String]) {
        let Ok(rows) = self.state_db.jobs(JobRole::Runner) else {
            return;
        };
        for rec in rows {
            let Some(r) = rec.info.replicas.first() else {
                continue;
            };
            let Some(vm) = r.vm_id.clone() else { continue };
            if r.state.is_final() {
                // Said once more, in case the origin never heard it.
                if let Ok(origin) = rec.info.origin.parse::<PeerId>() {
                    self.jobs.queue_report(ReportTo {
                        origin,
                        report: report_of(&rec.info.id, r),
                    });
                }
                continue;
            }
            if not_restored.contains(&vm) {
                self.update_runner(&rec.info.id, |r| {
                    r.state = ReplicaState::Lost;
                    r.detail = Some(
                        "its VMM died with this node; not restored here, so it cannot run twice"
                            .into(),
                    );
                });
                continue;
            }
            self.jobs.watch(vm, rec.info.id.clone());
        }
    }

    /// Opens a signed submission from a peer: its signature and window, this node's trust
    /// in its submitter, and its spec, each refusal saying which.
    pub(super) fn open_trusted(
        &self,
        submission_bytes: &[u8],
    ) -> Result<(submission::VerifiedSubmission, JobSpec), String> {
        let verified = submission::open(submission_bytes).map_err(|e| e.to_string())?;
        self.check_trusted(&verified.submitter)
            .map_err(|e| e.to_string())?;
        let spec: JobSpec = serde_json::from_slice(&verified.submission.spec)
            .map_err(|e| format!("the job spec does not parse: {e}"))?;
        spec.validate()
            .map_err(|e| format!("the job spec is invalid: {e}"))?;
        Ok((verified, spec))
    }

    /// Whether this node trusts `submitter` now (its config and its trust file).
    pub(super) fn check_trusted(
        &self,
        submitter: &novacron_mesh::submission::SubmitterId,
    ) -> Result<(), ServiceError> {
        let trusted = (self.jobs.trust.0)().map_err(ServiceError::Internal)?;
        if trusted.contains(submitter) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "this node does not trust submitter {submitter}: its operator runs \
                 `novacron keys trust {submitter}` (or lists it in trustedSubmitters) to \
                 take its jobs"
            )))
        }
    }

    pub(super) fn announce_job(&self, job: &JobInfo) {
        self.bus.publish(crate::model::NodeEvent::Job {
            job: Box::new(job.clone()),
        });
    }
}

/// The report of replica `r` of `job_id`.
pub(super) fn report_of(job_id: &str, r: &ReplicaInfo) -> ReplicaReport {
    ReplicaReport {
        job_id: job_id.to_string(),
        replica: r.index,
        generation: r.generation,
        state: r.state,
        vm_id: r.vm_id.clone(),
        result_hash: r.result_hash.clone(),
        log_set: r.log_set.clone(),
        result_set: r.result_set.clone(),
        detail: r.detail.clone().map(crate::jobs::wire::cut),
        moved_to: None,
        moved_from: r.moved_from.clone(),
        checkpoint: r.checkpoint.clone().map(Box::new),
        restored_from: r.restored_from,
        signed_status: None,
    }
}

/// The job as a runner shows it: the state of its one replica here.
fn runner_job_state(r: ReplicaState) -> JobState {
    match r {
        ReplicaState::Placing => JobState::Queued,
        ReplicaState::Starting => JobState::Placed,
        ReplicaState::Running => JobState::Running,
        ReplicaState::Migrating => JobState::Migrating,
        ReplicaState::Finished => JobState::Succeeded,
        ReplicaState::Failed => JobState::Failed,
        ReplicaState::Cancelled => JobState::Cancelled,
        ReplicaState::Lost => JobState::Lost,
    }
}

/// Parses a job id from the API or the wire.
pub(super) fn parse_job_id(id: &str) -> Result<JobId, ServiceError> {
    JobId::parse(id)
        .ok_or_else(|| ServiceError::BadRequest(format!("{id:?} is not a job id (64 hex digits)")))
}
