//! NovaCron's mesh crate.
//!
//! Without features it is the pure core: no IO, no tokio, libp2p or chitchat, no clock (callers
//! pass `now` as a `Duration`: since their epoch, or since the unix epoch where times are
//! compared across machines), so the simulator and the fuzzers run the same code as the node.
//! Everything decoded from outside is size-limited and validated before use.
//!
//! - [`identity`]: the node's ed25519 key on disk (`<data_dir>/node.key`, 0600) and its `PeerId`.
//! - [`records`]: signed node records, their verification and the book of each peer's newest.
//! - [`cells`]: cell assignment by a prefix of blake3(PeerId), prefix length, signed summaries.
//! - [`submission`]: signed job submissions (the submitter's signature, nonce, validity window)
//!   and the job id they define.
//! - [`submitter_key`]: a submitter's signing key on disk (the node key's format, its own magic).
//! - [`summaries`]: who publishes a cell's summary, how it is built, the book of those heard.
//! - [`cell_wire`]: cell membership (chitchat's format) on streams: frames, a validating parser
//!   and encoder, short ids, admission caps.
//! - [`subnet_cap`]: the routing table's per-subnet cap (Sybil resistance): classification and
//!   verdict, shared by the swarm and the simulator's Kademlia model.
//! - [`bootstrap_backoff`]: when a node whose routing table is small bootstraps again.
//! - [`table_refresh`]: when a node refreshes its routing table (jittered, so nodes started
//!   together refresh apart).
//! - [`jitter`]: waits drawn around a period from a seed, and the splitmix64 mix.
//! - [`dht_keys`]: the DHT key namespaces (cells, chunk sets); only these are stored for others.
//! - [`gossip_pace`]: how often a node starts exchanges with its cell: the interval that keeps
//!   cell gossip within its byte budget, following the live cell size with hysteresis.
//! - [`chunks`]: the content-addressed chunk store that migration, snapshots and images share.
//! - [`transfer`]: chunk sets across the mesh: manifests, wire messages, the fetch scheduler,
//!   per-peer rate limits.
//! - [`util`]: lower-case hex and a poison-tolerant lock.
//! - [`workload`]: synthetic memory contents for chunk-store tests and benchmarks.
//!
//! Feature `swarm` adds the drivers, with IO (what the node uses):
//!
//! - `swarm`: the libp2p swarm (TCP/QUIC, Kademlia, identify, autonat, relay, dcutr, mDNS,
//!   gossipsub) behind the async `MeshNode` handle; cells (chitchat over libp2p streams,
//!   `swarm::cell`, `swarm::cell_transport`); the chunk exchange (`swarm::chunk_exchange`:
//!   serving and fetching chunk sets); the drivers' clocks (`swarm::clock`).

pub mod bootstrap_backoff;
pub mod cell_wire;
pub mod cells;
pub mod chunks;
pub mod dht_keys;
pub mod gossip_pace;
pub mod identity;
pub mod jitter;
pub mod records;
pub mod submission;
pub mod submitter_key;
pub mod subnet_cap;
pub mod summaries;
pub mod suspicion;
#[cfg(feature = "swarm")]
pub mod swarm;
pub mod table_refresh;
pub mod transfer;
pub mod util;
pub mod workload;
