//! A migration into or out of this node, and where it is.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::vm::MigrationMode;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationDirection {
    Out,
    In,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Running,
    /// The destination confirmed: the VM runs there.
    Done,
    /// Rolled back: the VM runs on the source as before (`error` says why).
    Failed,
    Cancelled,
}

impl MigrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Running => "running",
            MigrationState::Done => "done",
            MigrationState::Failed => "failed",
            MigrationState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, MigrationState::Running)
    }
}

/// Where a migration is (the VMM's progress report).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MigrationProgressInfo {
    /// handshake, precopy, stopped, await_confirm, done, failed, in_doubt.
    pub phase: String,
    pub round: u32,
    pub bytes_sent: u64,
    pub wire_bytes: u64,
    pub bytes_skipped_zero: u64,
    pub bytes_skipped_held: u64,
    /// Bytes of all rounds offered so far: all of memory in the first round, plus each later
    /// round's dirty bytes. What a progress bar's total is.
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes of `bytes_total` dealt with (written to a stream, all-zero, or held by the
    /// peer); never more than `bytes_total`.
    #[serde(default)]
    pub bytes_done: u64,
    pub bandwidth_bps: u64,
    pub dirty_rate_bps: u64,
    pub est_remaining_ms: Option<u64>,
}

/// A migration into or out of this node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MigrationInfo {
    pub id: String,
    pub vm_id: String,
    pub direction: MigrationDirection,
    /// The other node's PeerId.
    pub peer: String,
    pub mode: MigrationMode,
    pub state: MigrationState,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// How long the VM was paused (source side, final).
    pub downtime_ms: Option<f64>,
    pub wire_bytes: u64,
    pub error: Option<String>,
    pub progress: Option<MigrationProgressInfo>,
}
