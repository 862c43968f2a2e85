//! The node's domain model: its VMs, the jobs it knows, their migrations, its cell as it sees it, what the
//! politeness policy allows and the events it announces. Plain data (serde, and the
//! OpenAPI schema the API publishes); the policy cores decide on it, the daemon keeps it,
//! the API and the dashboard show it.

mod event;
#[cfg(feature = "fixtures")]
pub mod fixtures;
mod job;
mod mesh;
mod migration;
mod politeness;
mod vm;

pub use event::{EventEnvelope, NodeEvent};
pub use job::{
    result_hash, ImageRef, JobInfo, JobMigration, JobPayload, JobSpec, JobState, ReplicaCheckpoint,
    ReplicaInfo, ReplicaState, ResultSource, SpecError, CHECKPOINT_INTERVAL_S, DEFAULT_PRIORITY,
    MAX_DOWNTIME_BUDGET_MS, MAX_PRIORITY, MAX_REPLICAS, MAX_RESULT_BLOB_BYTES, MAX_SERIAL_BYTES,
};
pub use mesh::{CellStatus, MemberStatus, NodeStatus, ProtocolBytesStatus, SummaryStatus};
pub use migration::{MigrationDirection, MigrationInfo, MigrationProgressInfo, MigrationState};
pub use politeness::{OwnerSetting, PolitenessInfo};
pub use vm::{
    check_payload_files, default_mem_mib, default_migration_modes, default_vcpus, is_chunk_set_id,
    Backend, MigrationMode, PayloadFile, VmInfo, VmSpec, VmState, DEFAULT_MEM, DEFAULT_MEM_MIB,
    MAX_PAYLOAD_FILES,
};
