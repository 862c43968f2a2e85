//! What the REST API asks of the node: the daemon implements [`NodeService`]; the HTTP
//! layer only translates requests and answers (tests drive it with a small fake).

use std::future::Future;

use tokio::sync::broadcast;

use super::types::{
    EventEnvelope, JobInfo, JobLogs, MigrationInfo, MigrationRequest, OwnerSetting, PolitenessInfo,
    VmInfo, VmSpec,
};
use super::NodeStatus;

/// Why a request could not be done; each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ServiceError {
    /// 404: no such VM or migration.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request names something impossible (a bad spec, an unknown peer).
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request does not fit the current state (stop a VM that is migrating).
    #[error("{0}")]
    Conflict(String),
    /// 403: the node does not take this from whoever asks (an untrusted submitter).
    #[error("{0}")]
    Forbidden(String),
    /// 429: the submitter sent too much too fast, or holds its whole quota.
    #[error("{0}")]
    TooMany(String),
    /// 503: the node cannot take it now (no capacity, draining, the owner needs the machine).
    #[error("{0}")]
    Unavailable(String),
    /// 500: something on this node failed; the message says what.
    #[error("{0}")]
    Internal(String),
}

impl From<anyhow::Error> for ServiceError {
    fn from(e: anyhow::Error) -> Self {
        ServiceError::Internal(format!("{e:#}"))
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// What `DELETE /api/v1/vms/{id}` did.
#[derive(Debug, PartialEq)]
pub enum VmDeleted {
    /// The VM was active (or suspended): it is stopped now, its record kept (200).
    Stopped(Box<VmInfo>),
    /// The VM had ended (exited, failed, moved away): its record and files are gone (204).
    Removed,
}

/// The node as the API sees it.
pub trait NodeService: Send + Sync + 'static {
    /// Who the node is, its cell and the summaries it holds.
    fn status(&self) -> impl Future<Output = ServiceResult<NodeStatus>> + Send;

    /// Every VM the node knows (running ones and the history it keeps), by id.
    fn vms(&self) -> Vec<VmInfo>;
    fn vm(&self, id: &str) -> Option<VmInfo>;
    fn create_vm(&self, spec: VmSpec) -> impl Future<Output = ServiceResult<VmInfo>> + Send;
    /// Stops an active (or suspended) VM; removes the record and files of one that ended.
    fn delete_vm(&self, id: &str) -> impl Future<Output = ServiceResult<VmDeleted>> + Send;
    fn pause_vm(&self, id: &str) -> impl Future<Output = ServiceResult<VmInfo>> + Send;
    fn resume_vm(&self, id: &str) -> impl Future<Output = ServiceResult<VmInfo>> + Send;

    /// Migrations in and out, newest first.
    fn migrations(&self) -> Vec<MigrationInfo>;
    fn migration(&self, id: &str) -> Option<MigrationInfo>;
    /// Starts moving a VM; answers once the migration is under way (watch it by id or on the
    /// event stream).
    fn start_migration(
        &self,
        vm_id: &str,
        request: MigrationRequest,
    ) -> impl Future<Output = ServiceResult<MigrationInfo>> + Send;
    fn cancel_migration(
        &self,
        id: &str,
    ) -> impl Future<Output = ServiceResult<MigrationInfo>> + Send;

    /// What the politeness policy allows now.
    fn politeness(&self) -> PolitenessInfo;
    /// Sets the owner override (`Auto` clears it), kept across restarts; answers with what
    /// the policy allows once it decided with the new word.
    fn set_owner(
        &self,
        owner: OwnerSetting,
    ) -> impl Future<Output = ServiceResult<PolitenessInfo>> + Send;
    /// Starts draining: every VM moves away (or is snapshotted) within `deadline_s`.
    fn drain(&self, deadline_s: u64) -> impl Future<Output = ServiceResult<()>> + Send;

    /// Jobs this node knows (submitted through it, or running a replica here), newest first.
    fn jobs(&self) -> Vec<JobInfo>;
    /// [`jobs`](Self::jobs) and those submitted through the live members of this node's
    /// cell, newest first.
    fn cell_jobs(&self) -> impl Future<Output = Vec<JobInfo>> + Send;
    /// Takes a signed submission (bytes): checked completely (signature, window, trust,
    /// replay, the submitter's rate and quota, the spec) before anything is kept.
    fn submit_job(
        &self,
        submission: Vec<u8>,
    ) -> impl Future<Output = ServiceResult<JobInfo>> + Send;
    /// A job as its origin knows it (asked through the mesh when this node does not).
    fn job(&self, id: &str) -> impl Future<Output = ServiceResult<JobInfo>> + Send;
    /// Cancels a job submitted through this node.
    fn cancel_job(&self, id: &str) -> impl Future<Output = ServiceResult<JobInfo>> + Send;
    /// Serial output of a replica (default: the winning one) from `offset`.
    fn job_logs(
        &self,
        id: &str,
        replica: Option<u32>,
        offset: u64,
    ) -> impl Future<Output = ServiceResult<JobLogs>> + Send;
    /// The job's agreed result's bytes.
    fn job_result(&self, id: &str) -> impl Future<Output = ServiceResult<Vec<u8>>> + Send;

    /// Node, VM and migration events from now on.
    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope>;
    /// Prometheus text exposition of the node's metrics.
    fn metrics_text(&self) -> impl Future<Output = String> + Send;
}
