//! A replica's VM that moved to another node (the owner needed the machine, the node
//! drained): its job record follows it. The node it left sends `Handover` to the node it
//! reached, which checks the submission by its own trust, takes a runner row for the VM it
//! now runs and reports to the origin as the replica's node (`moved_from`); the node it left
//! ends its row and tells the origin too (`moved_to`). The origin accepts either word first
//! (see `origin::job_report`); the replica keeps its generation (the VM moved, it did not
//! restart).
//!
//! The output the VM printed before the move goes with the handover: the node it left
//! serves it as a chunk set and names it, and the node it reached fetches it before it takes
//! the replica, so the replica's output (its log, and a result read from it) is whole,
//! wherever it ends (`vms::console`).
//!
//! What this cannot do: follow a VM whose handover is never taken (the node it reached
//! refuses, or stays unreachable for [`HANDOVER_FOR`]): the node it left then reports the
//! replica lost, and the origin places it again from the beginning.

use std::sync::Arc;
use std::time::Duration;

use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::{hex, lock};

use super::runner::report_of;
use super::ReportTo;
use crate::api::types::{now_ms, MigrationDirection, MigrationState};
use crate::daemon::Daemon;
use crate::jobs::wire::{JobRequest, JobResponse};
use crate::model::{JobInfo, JobState, ReplicaInfo, ReplicaState, MAX_SERIAL_BYTES};
use crate::state::{JobRecord, JobRole};

/// A `Handover` as received: the replica of the signed `submission` whose VM `vm_id` came
/// here, and the chunk set of what it printed before.
pub(super) struct Arrival<'a> {
    pub submission: &'a [u8],
    pub replica: u32,
    pub generation: u64,
    pub vm_id: &'a str,
    pub origin: &'a str,
    pub console_set: Option<&'a str>,
}

/// How long the node a VM left keeps trying to hand its replica over.
const HANDOVER_FOR: Duration = Duration::from_secs(60);
const HANDOVER_RETRY: Duration = Duration::from_millis(500);

impl Daemon {
    /// The replica of `job_id` whose VM `vm_id` moved away: hands it to the node it reached.
    pub(super) async fn hand_over(self: Arc<Self>, job_id: String, vm_id: String) {
        let deadline = tokio::time::Instant::now() + HANDOVER_FOR;
        let mut last = String::from("no migration of the VM out of this node is on record");
        // The VM left: its output here is complete. Served until the handover is settled.
        let console_set = self.serve_output(&vm_id).await;
        let settled = self
            .hand_over_until(&job_id, &vm_id, &console_set, deadline, &mut last)
            .await;
        if let Some(set) = &console_set {
            if let Ok(id) = crate::daemon::chunk_sets::parse_id(set) {
                self.exchange.withdraw(&id);
            }
        }
        if settled {
            return;
        }
        tracing::warn!(job = %job_id, vm = %vm_id, "the replica's handover failed: {last}");
        self.update_runner(&job_id, |r| {
            r.state = ReplicaState::Lost;
            r.detail = Some(format!(
                "its VM moved away but the node it reached did not take the job: {last}"
            ));
        });
    }

    /// Serves what VM `vm_id` printed here (and brought) as a chunk set: its id, or None when
    /// it printed nothing or cannot be read (the handover goes on without it).
    async fn serve_output(&self, vm_id: &str) -> Option<String> {
        let paths = crate::vms::paths::VmPaths::new(&self.data_dir, vm_id);
        let output = match crate::vms::console::read_output(&paths, MAX_SERIAL_BYTES) {
            Ok(o) if o.is_empty() => return None,
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(vm = vm_id, error = %e, "the VM's output does not go with it");
                return None;
            }
        };
        let name = format!("{vm_id}.console");
        match crate::daemon::chunk_sets::serve_bytes(&self.mesh, &self.exchange, output, name).await
        {
            Ok(p) => Some(p.id),
            Err(e) => {
                tracing::warn!(vm = vm_id, error = %e, "the VM's output does not go with it");
                None
            }
        }
    }

    /// Asks the node VM `vm_id` reached to take its replica until it does (true) or the
    /// replica ended here, or `deadline` passes (false, `last` says why).
    async fn hand_over_until(
        &self,
        job_id: &str,
        vm_id: &str,
        console_set: &Option<String>,
        deadline: tokio::time::Instant,
        last: &mut String,
    ) -> bool {
        while tokio::time::Instant::now() < deadline {
            let Ok(Some(rec)) = self.state_db.job(job_id, JobRole::Runner) else {
                return true;
            };
            let Some(r) = rec.info.replicas.first().cloned() else {
                return true;
            };
            if r.state.is_final() {
                return true;
            }
            if let Some(to) = self.moved_to(vm_id) {
                let ask = JobRequest::Handover {
                    submission: hex::encode(&rec.submission),
                    replica: r.index,
                    generation: r.generation,
                    vm_id: vm_id.to_string(),
                    origin: rec.info.origin.clone(),
                    console_set: console_set.clone(),
                };
                let answer = match self.jobs.link() {
                    Some(link) => link.request(to, &ask).await.map_err(|e| e.to_string()),
                    None => Err("the job protocol is not running".into()),
                };
                match answer {
                    Ok(JobResponse::Ack) => {
                        self.handed_over(job_id, &to.to_string());
                        return true;
                    }
                    Ok(JobResponse::Refuse { reason }) => *last = reason,
                    Ok(other) => *last = format!("{to} answered {other:?}"),
                    Err(e) => *last = e,
                }
            }
            tokio::time::sleep(HANDOVER_RETRY).await;
        }
        false
    }

    /// The peer VM `vm_id` moved to, by the newest finished outgoing migration of it.
    fn moved_to(&self, vm_id: &str) -> Option<PeerId> {
        self.vms
            .registry()
            .migrations()
            .into_iter()
            .filter(|m| {
                m.vm_id == vm_id
                    && m.direction == MigrationDirection::Out
                    && m.state == MigrationState::Done
            })
            .max_by_key(|m| m.ended_at_ms)
            .and_then(|m| m.peer.parse().ok())
    }

    /// The node `to` took the replica: this node's row ends, and the origin hears where the
    /// replica runs now.
    fn handed_over(&self, job_id: &str, to: &str) {
        let updated = {
            let _one_writer = lock(&self.jobs.runner_writes);
            let Ok(Some(mut rec)) = self.state_db.job(job_id, JobRole::Runner) else {
                return;
            };
            let Some(r) = rec.info.replicas.first_mut() else {
                return;
            };
            r.state = ReplicaState::Cancelled;
            r.detail = Some(format!("its VM moved to {to}, which runs it now"));
            r.updated_at_ms = now_ms();
            rec.info.state = JobState::Cancelled;
            rec.info.detail = r.detail.clone();
            rec.info.updated_at_ms = r.updated_at_ms;
            if let Err(e) = self.state_db.put_job(&rec) {
                tracing::warn!(job = job_id, error = %e, "cannot record a handover");
                return;
            }
            rec.info
        };
        self.announce_job(&updated);
        let (Some(r), Ok(origin)) = (updated.replicas.first(), updated.origin.parse::<PeerId>())
        else {
            return;
        };
        let mut report = report_of(job_id, r);
        report.state = ReplicaState::Running;
        report.moved_to = Some(to.to_string());
        self.report_now(ReportTo { origin, report });
    }

    /// `from` says the VM of a replica moved here: take its job (checked by this node's own
    /// trust), follow the VM, and tell the origin.
    pub(super) async fn take_handover(
        self: &Arc<Self>,
        from: PeerId,
        arrival: Arrival<'_>,
    ) -> JobResponse {
        match self.take_handover_checked(from, arrival).await {
            Ok(()) => JobResponse::Ack,
            Err(reason) => JobResponse::refuse(reason),
        }
    }

    async fn take_handover_checked(
        self: &Arc<Self>,
        from: PeerId,
        arrival: Arrival<'_>,
    ) -> Result<(), String> {
        let Arrival {
            submission: submission_bytes,
            replica,
            generation,
            vm_id,
            origin,
            console_set,
        } = arrival;
        let (verified, spec) = self.open_trusted(submission_bytes)?;
        let origin_peer: PeerId = origin
            .parse()
            .map_err(|_| format!("{origin:?} is not a peer id"))?;
        let Some(vm) = self.vms.get(vm_id) else {
            return Err(format!("VM {vm_id} does not run here"));
        };
        // The VM must have come here from the sender, by a finished migration.
        let came_from_sender = self.vms.registry().migrations().into_iter().any(|m| {
            m.vm_id == vm_id
                && m.direction == MigrationDirection::In
                && m.state == MigrationState::Done
                && m.peer == from.to_string()
        });
        if !came_from_sender || !vm.state.is_active() {
            return Err(format!("VM {vm_id} did not come here from {from}"));
        }
        let job_id = verified.id.to_hex();
        let _one_at_a_time = self.jobs.placing.lock().await;
        if let Ok(Some(held)) = self.state_db.job(&job_id, JobRole::Runner) {
            if let Some(r) = held.info.replicas.first() {
                if r.vm_id.as_deref() == Some(vm_id) && !r.state.is_final() {
                    return Ok(()); // taken already (a resent handover)
                }
                if !r.state.is_final() {
                    return Err(format!(
                        "this node already runs replica {} of job {job_id}",
                        r.index
                    ));
                }
            }
        }
        if let Some(set) = console_set {
            // From the sender only: it serves the set, and no one else is asked for it.
            let chunk_sets = crate::daemon::chunk_sets::fetch_bytes_from;
            let output = chunk_sets(&self.mesh, &self.exchange, set, &[from], MAX_SERIAL_BYTES)
                .await
                .map_err(|e| format!("cannot fetch the output the VM printed before: {e:#}"))?;
            let paths = crate::vms::paths::VmPaths::new(&self.data_dir, vm_id);
            crate::vms::console::keep_arrived(&paths, &output)?;
            // Kept in the VM's directory: the chunks need not be served from here.
            if let Ok(id) = crate::daemon::chunk_sets::parse_id(set) {
                self.exchange.withdraw(&id);
            }
        }
        let now = now_ms();
        let me = self.mesh.peer_id().to_string();
        let replica_info = ReplicaInfo {
            index: replica,
            state: ReplicaState::Running,
            node: Some(me),
            generation,
            vm_id: Some(vm_id.to_string()),
            result_hash: None,
            log_set: None,
            result_set: None,
            detail: Some(format!("moved here from {from}")),
            updated_at_ms: now,
            moved_from: Some(from.to_string()),
            checkpoint: None,
            restored_from: None,
            signed_status: None,
        };
        let info = JobInfo {
            id: job_id.clone(),
            spec,
            submitter: verified.submitter.to_string(),
            state: JobState::Running,
            detail: None,
            origin: origin.to_string(),
            replicas: vec![replica_info.clone()],
            result_hash: None,
            retries: 0,
            submitted_at_ms: now,
            updated_at_ms: now,
        };
        self.state_db
            .put_job(&JobRecord {
                role: JobRole::Runner,
                info: info.clone(),
                submission: submission_bytes.to_vec(),
                expires_at: verified.submission.expires_at,
            })
            .map_err(|e| format!("cannot record the job: {e}"))?;
        self.jobs.watch(vm_id.to_string(), job_id.clone());
        self.announce_job(&info);
        self.report_now(ReportTo {
            origin: origin_peer,
            report: report_of(&job_id, &replica_info),
        });
        Ok(())
    }
}
