//! NovaCron's mesh crate.
//!
//! - [`identity`]: the node's ed25519 key on disk (`<data_dir>/node.key`, 0600) and the
//!   libp2p `PeerId` it gives.
//! - [`records`]: signed node records (addresses, capacity, version, reachability) with a
//!   sequence number and expiry, their verification, and the book of each peer's newest.
//! - [`cell_wire`]: frames of cell membership (chitchat) on libp2p streams: a validating
//!   parser of chitchat's format, virtual gossip addresses and admission caps.
//! - [`cells`]: pure cell assignment by a prefix of blake3(PeerId), the prefix length for a
//!   mesh size (with hysteresis), rendezvous representatives and signed cell summaries.
//! - [`summaries`]: which members publish their cell's summary, how it is built, the book of
//!   summaries heard (newest per signer, capped) and the one to trust when signers disagree.
//! - [`dht_keys`]: the DHT key namespaces (cells, chunk sets); only these are stored for others.
//! - [`chunks`]: the content-addressed chunk store that migration, snapshots and images share.
//! - [`swarm`]: the libp2p swarm (TCP/QUIC, Kademlia with a per-subnet cap, identify,
//!   autonat, relay, dcutr, mDNS, gossipsub) behind the async [`swarm::MeshNode`] handle.
//! - [`transfer`]: chunk sets across the mesh: manifests, the `/novacron/chunks/1` messages,
//!   the fetch scheduler and per-peer rate limits (pure; the glue is `swarm::chunk_exchange`).
//! - [`workload`]: synthetic memory contents for chunk-store tests and benchmarks.
//!
//! [`records`] and [`cells`] do no IO and read no clock (callers pass `now`), so the
//! simulator runs the same code as the node. Everything decoded from outside is size-limited
//! and bytecheck-validated before use. Chitchat inside cells, chunk transfer over the mesh and
//! placement are not here yet.

pub mod cell_wire;
pub mod cells;
pub mod chunks;
pub mod dht_keys;
pub mod identity;
pub mod records;
pub mod summaries;
#[cfg(feature = "swarm")]
pub mod swarm;
pub mod transfer;
pub mod util;
pub mod workload;
