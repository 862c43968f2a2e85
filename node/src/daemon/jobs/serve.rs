//! The job protocol's requests from peers, dispatched to the origin and runner sides.

use std::sync::{Arc, Weak};

use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::hex;

use crate::daemon::Daemon;
use crate::jobs::link::{Handler, JobLink, JobLinkConfig};
use crate::jobs::wire::{JobRequest, JobResponse};

impl Daemon {
    /// Serves `/novacron/job/1` for this daemon (once, at start).
    /// `not_restored`: the replica VMs the recovery did not restore (their replicas are lost
    /// here, and their origins are told so).
    pub(in crate::daemon) fn serve_jobs(
        self: &Arc<Self>,
        not_restored: &[String],
    ) -> anyhow::Result<()> {
        let weak: Weak<Daemon> = Arc::downgrade(self);
        let handler: Handler = Arc::new(move |peer, request| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(daemon) => daemon.answer_job_request(peer, request).await,
                    None => JobResponse::refuse("the node is stopping"),
                }
            })
        });
        let link = JobLink::start(&self.mesh, handler, JobLinkConfig::default())?;
        let _ = self.jobs.link.set(link);
        self.resume_runner_rows(not_restored);
        tokio::spawn(self.clone().follow_replicas());
        tokio::spawn(self.clone().resume_origin_jobs());
        Ok(())
    }

    /// Answers `request` from `peer` (this node's own requests to itself come here too).
    pub(super) async fn answer_job_request(
        self: Arc<Self>,
        peer: PeerId,
        request: JobRequest,
    ) -> JobResponse {
        match request {
            JobRequest::Offer {
                backend,
                vcpus,
                memory_mib,
                ..
            } => self.job_offer(backend, vcpus, memory_mib),
            JobRequest::Place {
                submission,
                replica,
                generation,
                restore,
            } => match hex::decode(&submission) {
                Some(bytes) => {
                    self.job_place(peer, &bytes, replica, generation, restore)
                        .await
                }
                None => JobResponse::refuse("the submission is not hex"),
            },
            JobRequest::Hold {
                submission,
                replica,
                generation,
                origin,
                seq,
                files,
            } => match hex::decode(&submission) {
                Some(bytes) => {
                    self.job_hold(peer, &bytes, replica, generation, &origin, seq, files)
                        .await
                }
                None => JobResponse::refuse("the submission is not hex"),
            },
            JobRequest::Release { job_id, replica } => self.job_release(peer, &job_id, replica),
            JobRequest::Report(report) => self.job_report(peer, report),
            JobRequest::Cancel { job_id, replica } => {
                self.job_cancel_here(peer, &job_id, replica).await
            }
            JobRequest::Status { job_id } => match self.local_job_record(&job_id) {
                Some(rec) => JobResponse::Status {
                    job: Box::new(self.signed_view(rec.info, rec.role)),
                    submission: Some(hex::encode(&rec.submission)),
                },
                None => JobResponse::NotFound,
            },
            JobRequest::Logs {
                job_id,
                replica,
                offset,
            } => self.job_logs_here(&job_id, replica, offset),
            JobRequest::List { limit } => self.jobs_listed_here(limit),
            JobRequest::Handover {
                submission,
                replica,
                generation,
                vm_id,
                origin,
                console_set,
            } => match hex::decode(&submission) {
                Some(submission) => {
                    let arrival = super::handover::Arrival {
                        submission: &submission,
                        replica,
                        generation,
                        vm_id: &vm_id,
                        origin: &origin,
                        console_set: console_set.as_deref(),
                    };
                    self.take_handover(peer, arrival).await
                }
                None => JobResponse::refuse("the submission is not hex"),
            },
        }
    }
}
