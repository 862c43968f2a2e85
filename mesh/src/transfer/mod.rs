//! Chunk sets across the mesh, the parts that do no IO: what a set is made of
//! ([`manifest`]), the messages of `/novacron/chunks/1` ([`wire`]), which provider to ask
//! for which chunks ([`fetch`]) and how much to serve each peer ([`rate`]).
//!
//! The libp2p glue that runs them is `swarm::chunk_exchange` (feature "swarm"). Everything
//! here takes `now` from its caller and is built without libp2p, so the fuzzers and a
//! simulator use the same code as the node.

pub mod fetch;
pub mod manifest;
pub mod rate;
pub mod wire;

pub use fetch::{
    Action, Arrival, FetchConfig, FetchScheduler, Heard, PeerStats, Progress, RequestId,
    SchedulerReport,
};
pub use manifest::{manifest_id, ChunkSetManifest, ManifestChunk, ManifestError};
pub use rate::{RateConfig, RateLimiter, Refusal};
pub use wire::{Request, Response, WireError};
