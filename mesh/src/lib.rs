//! NovaCron's mesh crate.
//!
//! - [`identity`]: the node's ed25519 key on disk and the libp2p `PeerId` it gives.
//! - [`records`]: signed node records (addresses, capacity, version) and the book of the newest.
//! - [`cells`]: pure cell assignment, prefix length, representatives and signed summaries.
//! - [`chunks`]: the content-addressed chunk store that migration, snapshots and images share.
//! - [`workload`]: synthetic memory contents for chunk-store tests and benchmarks.
//!
//! The libp2p swarm, chitchat cells and placement come later; what is here is pure or local
//! to the node and is what the simulator reuses.

pub mod cells;
pub mod chunks;
pub mod identity;
pub mod records;
pub mod workload;
