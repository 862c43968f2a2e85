//! Placing one replica of a mesh job: which cells to look in, which peer's offer to take,
//! and the search that asks peers and confirms one. Pure: the daemon reads the cell
//! summaries and its cell's members it holds, drives a [`PlacementSearch`] with the answers
//! peers send, and sleeps until [`PlacementSearch::next_deadline`]; the simulator drives
//! the same search in virtual time.
//!
//! - [`rank_cells`]: the cells whose newest signed summary says a replica fits, best first.
//! - [`choose_offer`]: among the offers peers sent, the best fit.
//! - [`PlacementSearch`]: one replica's search over cells and their members, offer rounds,
//!   timeouts and the confirmation.
//! - [`yields_to_higher`]: whether a replica waits for a starved one of higher priority.
//! - [`placement_decision`]: the whole decision for one replica from the node's view, with
//!   the members' gossiped capacity standing in for their offers (what `novacron bench
//!   jobs` measures).
//!
//! What this cannot do: summaries and gossip are hints, seconds old and self-reported; a
//! peer's offer is what it says at the time of asking, and only its confirmation places a
//! replica. Replicas of a job land on distinct nodes because the caller passes the nodes
//! already holding one as `exclude`: two searches for one job running at once must be
//! given each other's confirmed peers.

mod decision;
mod offer;
mod priority;
mod rank;
mod search;
pub mod synthetic;

pub use decision::{placement_decision, Decision, View};
pub use offer::{best_fit, by_fit, choose_offer, Offer, Room};
pub use priority::yields_to_higher;
pub use rank::{rank_cells, RankedCell};
pub use search::{GiveUpReason, PlacementSearch, SearchAction, SearchLimits, SearchPlan};

use novacron_model::JobSpec;

/// What one replica needs of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Need {
    /// A replica of `spec`.
    pub fn of(spec: &JobSpec) -> Need {
        Need {
            vcpus: spec.vcpus.into(),
            memory_mib: spec.memory_mib,
        }
    }

    /// The memory in bytes (saturating).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(1 << 20)
    }
}
