//! The types of the node's REST API (`/api/v1`) and its event stream. What the API reports is
//! the node's domain model ([`crate::model`], re-exported here); the request bodies and the
//! error body are the API's own. JSON, snake_case; every request type refuses unknown
//! fields so a typo is an error, not a silent default.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::model::{
    default_mem_mib, default_migration_modes, default_vcpus, Backend, EventEnvelope, ImageRef,
    JobInfo, JobMigration, JobPayload, JobSpec, JobState, MigrationDirection, MigrationInfo,
    MigrationMode, MigrationProgressInfo, MigrationState, NodeEvent, OwnerSetting, PayloadFile,
    PolitenessInfo, ReplicaCheckpoint, ReplicaInfo, ReplicaState, ResultSource, VmInfo, VmSpec,
    VmState, DEFAULT_MEM, DEFAULT_MEM_MIB,
};

/// `POST /api/v1/vms/{id}/migrate`, and `novacron migrate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    /// A PeerId, or `auto` to pick the peer with the most free capacity in the cell.
    pub to: String,
    #[serde(default = "default_mode")]
    pub mode: MigrationMode,
    /// Live mode switches over once the estimated downtime is at most this.
    #[serde(default)]
    pub downtime_budget_ms: Option<u64>,
}

fn default_mode() -> MigrationMode {
    MigrationMode::Live
}

/// `POST /api/v1/politeness/owner`. The setting survives a restart of the node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerRequest {
    pub owner: OwnerSetting,
}

/// `POST /api/v1/jobs`: a signed job submission (what `novacron submit` makes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    /// The signed submission's bytes, hex.
    #[schema(max_length = 51200)]
    pub submission: String,
}

/// `GET /api/v1/jobs/{id}/logs`: serial output of one replica from an offset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobLogs {
    pub job_id: String,
    pub replica: u32,
    /// Byte offset of `text` in the replica's output.
    pub offset: u64,
    /// Where the next read starts.
    pub next_offset: u64,
    /// The replica ended and `next_offset` is its output's end.
    pub finished: bool,
    /// The bytes as UTF-8 (invalid sequences replaced); `/result` gives exact bytes.
    pub text: String,
}

/// Every error answer of the API: a status code and this body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ApiError {
    /// What went wrong and, where it helps, what to do.
    pub error: String,
}

pub use crate::clock::now_ms;
