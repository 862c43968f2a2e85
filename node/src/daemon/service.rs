//! The daemon as the REST API sees it ([`NodeService`]): each call checks what the node's
//! state and its owner's policy allow, then hands the work to the VM manager or the mesh
//! migrations.

use tokio::sync::broadcast;

use crate::api::service::{NodeService, ServiceError, ServiceResult, VmDeleted};
use crate::api::types::{
    EventEnvelope, JobInfo, JobLogs, MigrationInfo, MigrationRequest, OwnerSetting, PolitenessInfo,
    VmInfo, VmSpec, VmState,
};
use crate::api::NodeStatus;

use super::{lock, Daemon};
use crate::policy::admission::Load;

impl NodeService for Daemon {
    async fn status(&self) -> ServiceResult<NodeStatus> {
        Daemon::status(self).await.map_err(ServiceError::from)
    }

    fn vms(&self) -> Vec<VmInfo> {
        self.vms.list()
    }

    fn vm(&self, id: &str) -> Option<VmInfo> {
        self.vms.get(id)
    }

    async fn create_vm(&self, spec: VmSpec) -> ServiceResult<VmInfo> {
        // 400 for a spec that cannot run, 503 for one that does not fit now: both before
        // anything is recorded.
        let spec = self.vms.check(spec).await?;
        // A process's files, fetched before anything is recorded: a set the mesh cannot
        // give is the request's fault, named.
        self.vms
            .fetch_files(&spec)
            .await
            .map_err(|e| ServiceError::BadRequest(format!("files: {e}")))?;
        let ask = Load::new(spec.vcpus, spec.mem_mib << 20);
        let id = self.admit_then(ask, || self.vms.record_new(spec))?;
        self.vms.start_new(&id).await
    }

    async fn delete_vm(&self, id: &str) -> ServiceResult<VmDeleted> {
        let vm = self
            .vms
            .get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("no VM {id}")))?;
        if vm.state.is_active() || vm.state == VmState::Suspended {
            let vm = self.vms.stop(id).await?;
            return Ok(VmDeleted::Stopped(Box::new(vm)));
        }
        let moved = {
            // No offer of this VM is admitted meanwhile: it would come back under this id.
            let _one_at_a_time = lock(&self.admitting);
            if lock(&self.reservations).holds(id, self.started.elapsed()) {
                return Err(ServiceError::Conflict(format!(
                    "VM {id} is migrating in from a peer: wait until it runs here"
                )));
            }
            self.vms.remove_ended(id)?
        };
        self.vms.dispose(moved).await;
        Ok(VmDeleted::Removed)
    }

    async fn pause_vm(&self, id: &str) -> ServiceResult<VmInfo> {
        self.vms.pause(id).await
    }

    async fn resume_vm(&self, id: &str) -> ServiceResult<VmInfo> {
        if self
            .vms
            .get(id)
            .is_some_and(|v| v.state == VmState::Suspended)
        {
            return self.resume_suspended(id).await;
        }
        // A paused VM holds its room already; it runs again only while the node may run VMs.
        if let Some(closed) = self.closed() {
            return Err(ServiceError::Unavailable(format!(
                "VMs may not run on this node now: {closed}"
            )));
        }
        self.vms.resume(id).await
    }

    fn migrations(&self) -> Vec<MigrationInfo> {
        self.vms.registry().migrations()
    }

    fn migration(&self, id: &str) -> Option<MigrationInfo> {
        self.vms.registry().migration(id)
    }

    async fn start_migration(
        &self,
        vm_id: &str,
        request: MigrationRequest,
    ) -> ServiceResult<MigrationInfo> {
        self.migrate_vm(vm_id, request).await
    }

    async fn cancel_migration(&self, id: &str) -> ServiceResult<MigrationInfo> {
        self.cancel_vm_migration(id).await
    }

    fn politeness(&self) -> PolitenessInfo {
        self.politeness_info()
    }

    async fn set_owner(&self, owner: OwnerSetting) -> ServiceResult<PolitenessInfo> {
        self.set_owner_override(owner).await
    }

    async fn drain(&self, deadline_s: u64) -> ServiceResult<()> {
        self.start_drain(std::time::Duration::from_secs(deadline_s));
        Ok(())
    }

    fn jobs(&self) -> Vec<JobInfo> {
        self.jobs_known()
    }

    async fn cell_jobs(&self) -> Vec<JobInfo> {
        let listed = Daemon::cell_jobs(self).await;
        if listed.unanswered > 0 {
            tracing::info!(
                unanswered = listed.unanswered,
                "cell members did not list their jobs in time; their jobs are left out"
            );
        }
        listed.jobs
    }

    async fn submit_job(&self, submission: Vec<u8>) -> ServiceResult<JobInfo> {
        self.arc()?.submit_job(&submission).await
    }

    async fn job(&self, id: &str) -> ServiceResult<JobInfo> {
        Daemon::job(self, id).await
    }

    async fn cancel_job(&self, id: &str) -> ServiceResult<JobInfo> {
        self.arc()?.cancel_job(id).await
    }

    async fn job_logs(
        &self,
        id: &str,
        replica: Option<u32>,
        offset: u64,
    ) -> ServiceResult<JobLogs> {
        let job = Daemon::job(self, id).await?;
        let (bytes, next_offset, finished) = Daemon::job_logs(self, id, replica, offset).await?;
        let replica = replica.unwrap_or_else(|| {
            job.replicas
                .iter()
                .find(|r| r.result_hash.is_some() && r.result_hash == job.result_hash)
                .or_else(|| job.replicas.iter().find(|r| r.node.is_some()))
                .map_or(0, |r| r.index)
        });
        Ok(JobLogs {
            job_id: job.id,
            replica,
            offset,
            next_offset,
            finished,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    async fn job_result(&self, id: &str) -> ServiceResult<Vec<u8>> {
        Daemon::job_result(self, id).await
    }

    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.bus.subscribe()
    }

    async fn metrics_text(&self) -> String {
        self.refresh_metrics().await;
        self.metrics.encode()
    }
}

impl Daemon {
    /// The daemon as shared, for work that outlives the call.
    fn arc(&self) -> ServiceResult<std::sync::Arc<Daemon>> {
        self.myself
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| ServiceError::Unavailable("the node is stopping".into()))
    }
}
