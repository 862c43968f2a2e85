//! What the node announces as it happens (the API's event stream, the dashboard's feed).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::job::JobInfo;
use super::migration::MigrationInfo;
use super::politeness::PolitenessInfo;
use super::vm::VmInfo;

/// One event of `GET /api/v1/events` (WebSocket, one JSON text message each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EventEnvelope {
    /// Increases by one per event of this daemon run.
    pub seq: u64,
    pub at_ms: u64,
    pub event: NodeEvent,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A VM appeared or changed state, detail or VMM pid (progress reports and checkpoints
    /// are not announced: read them from the VM).
    Vm { vm: Box<VmInfo> },
    /// A migration started, progressed or ended.
    Migration { migration: Box<MigrationInfo> },
    /// A cell member came up or went down.
    Member { peer_id: String, live: bool },
    /// The politeness decision changed.
    Politeness { politeness: PolitenessInfo },
    /// The node is draining (SIGTERM or `novacron drain`): VMs move away before it exits.
    Draining { deadline_s: u64 },
    /// A job this node knows (submitted through it, or one it runs a replica of) changed.
    Job { job: Box<JobInfo> },
}

impl NodeEvent {
    /// The event's kind, as its JSON `kind` tag names it (`vm`, `migration`, `member`,
    /// `politeness`, `draining`, `job`).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeEvent::Vm { .. } => "vm",
            NodeEvent::Migration { .. } => "migration",
            NodeEvent::Member { .. } => "member",
            NodeEvent::Politeness { .. } => "politeness",
            NodeEvent::Draining { .. } => "draining",
            NodeEvent::Job { .. } => "job",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_the_json_tag() {
        let e = NodeEvent::Draining { deadline_s: 3 };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], e.kind());
        let e = NodeEvent::Member {
            peer_id: "p".into(),
            live: true,
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["kind"], e.kind());
    }
}
