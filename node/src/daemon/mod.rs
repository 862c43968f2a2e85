//! The running node: the mesh swarm, the chunk exchange, its cell, and the local API that
//! reports on them.
//!
//! Minimal for now (the node issue completes it): what runs is the mesh; VMs, jobs,
//! politeness and persistence come with the daemon proper.

pub mod capacity;
mod cell;
mod chunk_sets;
pub mod lines;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use novacron_mesh::chunks::{ChunkStore, Level};
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::swarm::cell::{CellConfig, CellMembership};
use novacron_mesh::swarm::{ChunkExchange, ExchangeConfig, MeshNode, Multiaddr};

use crate::api::socket::Handler;
use crate::api::{CellStatus, MemberStatus, NodeStatus, Request, Response, SummaryStatus};

/// How often the node refreshes what it tells its cell, looks for members in the DHT and,
/// as a representative, republishes its cell's summary.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// A summary is republished after this many maintenance rounds (well inside its lifetime).
const SUMMARY_EVERY_ROUNDS: u32 = 6;

/// The chunk store's directory inside the data directory.
pub const CHUNKS_DIR: &str = "chunks";

/// What a running node owns and reports on.
pub struct Daemon {
    pub mesh: Arc<MeshNode>,
    pub exchange: ChunkExchange,
    pub cell: CellMembership,
    identity: NodeIdentity,
    pub started: Instant,
}

impl Daemon {
    /// Opens the chunk store, starts serving chunk sets and joins the node's cell.
    pub async fn start(
        mesh: MeshNode,
        identity: NodeIdentity,
        data_dir: &Path,
    ) -> anyhow::Result<Arc<Daemon>> {
        let dir = data_dir.join(CHUNKS_DIR);
        let store = ChunkStore::open(&dir, Level::default())
            .with_context(|| format!("chunk store {}", dir.display()))?;
        let exchange = ChunkExchange::start(&mesh, Arc::new(store), ExchangeConfig::default())?;
        let mesh = Arc::new(mesh);
        let me = cell::member_info(&capacity::host_capacity(), Vec::new());
        let cell = CellMembership::start(mesh.clone(), CellConfig::default(), me).await?;
        Ok(Arc::new(Daemon {
            mesh,
            exchange,
            cell,
            identity,
            started: Instant::now(),
        }))
    }

    /// Keeps the node's cell entry current, finds members through the DHT and publishes the
    /// cell's summary when this node is a representative; runs until the task is dropped.
    pub async fn maintain(self: Arc<Daemon>) {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u32 = 0;
        let mut told = None;
        loop {
            tick.tick().await;
            let addrs = self.advertised_addrs().await;
            let info = cell::member_info(&capacity::host_capacity(), addrs);
            if told.as_ref() != Some(&info) {
                self.cell.update_self(info.clone()).await;
                told = Some(info);
            }
            // The DHT needs a routing table; the first rounds may find none yet.
            if round % SUMMARY_EVERY_ROUNDS <= 1 {
                match cell::find_members_in_dht(&self.mesh, &self.cell).await {
                    Ok(n) => tracing::debug!(n, "cell members found in the DHT"),
                    Err(e) => tracing::debug!(error = %e, "cell lookup in the DHT"),
                }
            }
            if round % SUMMARY_EVERY_ROUNDS == 1 {
                match cell::publish_summary_if_representative(
                    &self.mesh,
                    &self.identity,
                    &self.cell,
                )
                .await
                {
                    Ok(true) => tracing::info!(cell = %self.cell.cell(), "cell summary published"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot publish the cell summary"),
                }
            }
            round = round.wrapping_add(1);
        }
    }

    /// Listen addresses worth telling the cell (no unspecified ones).
    async fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs = self.mesh.listen_addrs().await.unwrap_or_default();
        addrs.retain(|a| {
            !a.iter().any(|p| {
                matches!(p, novacron_mesh::swarm::Protocol::Ip4(ip) if ip.is_unspecified())
                    || matches!(p, novacron_mesh::swarm::Protocol::Ip6(ip) if ip.is_unspecified())
            })
        });
        addrs
    }

    /// Stops serving and the swarm (once the API no longer holds the daemon).
    pub async fn stop(self: Arc<Daemon>) {
        match Arc::try_unwrap(self) {
            Ok(d) => {
                drop(d.exchange);
                d.cell.stop().await;
                match Arc::try_unwrap(d.mesh) {
                    Ok(mesh) => mesh.stop().await,
                    Err(_) => tracing::warn!("the mesh is still shared; it stops with the process"),
                }
            }
            Err(_) => tracing::warn!("the API still holds the node; it stops with the process"),
        }
    }

    pub async fn status(&self) -> anyhow::Result<NodeStatus> {
        let wire = self.mesh.wire_bytes().await?;
        Ok(NodeStatus {
            peer_id: self.mesh.peer_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            listen_addrs: self
                .mesh
                .listen_addrs()
                .await?
                .iter()
                .map(|a| a.to_string())
                .collect(),
            connected_peers: self.mesh.connected_peers().await?.len(),
            routing_table_peers: self.mesh.routing_table_peers().await?.len(),
            wire_sent: wire.sent,
            wire_received: wire.received,
            cell: Some(self.cell_status().await),
            summaries: self.summaries().await?,
        })
    }

    async fn cell_status(&self) -> CellStatus {
        let mut members: Vec<MemberStatus> = self
            .cell
            .members()
            .await
            .into_iter()
            .map(|m| MemberStatus {
                peer_id: m.peer.to_string(),
                live: m.live,
                vcpus: m.info.vcpus,
                mem_mib: m.info.mem_mib,
                free_slots: m.info.free_slots,
                load_permille: m.info.load_permille.into(),
                version: m.info.version,
                addrs: m.info.addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        members.sort_by(|a, b| b.live.cmp(&a.live).then(a.peer_id.cmp(&b.peer_id)));
        let bytes = self.cell.cell_bytes();
        CellStatus {
            id: self.cell.cell().to_string(),
            members,
            gossip_sent: bytes.sent,
            gossip_received: bytes.received,
        }
    }

    async fn summaries(&self) -> anyhow::Result<Vec<SummaryStatus>> {
        Ok(self
            .mesh
            .cell_summaries()
            .await?
            .into_iter()
            .map(|r| {
                let s = &r.summary;
                SummaryStatus {
                    cell: format!("{}/{:x}", s.prefix_bits, s.prefix),
                    signer: novacron_mesh::swarm::PeerId::from_bytes(&r.signer)
                        .map_or_else(|_| "?".into(), |p| p.to_string()),
                    issued_at: r.issued_at,
                    members: s.members,
                    total_vcpus: s.total_vcpus,
                    free_vcpus: s.free_vcpus,
                    total_memory_mib: s.total_memory_bytes / (1024 * 1024),
                    free_slots: s.free_slots,
                    mean_load_permille: s.mean_load_permille.into(),
                }
            })
            .collect())
    }
}

fn answer<T>(result: anyhow::Result<T>, wrap: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => wrap(v),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => answer(self.status().await, |s| Response::Status(Box::new(s))),
            Request::PublishFile { path, name } => answer(
                chunk_sets::publish(&self.mesh, &self.exchange, &path, name).await,
                Response::Published,
            ),
            Request::Fetch { id, out } => answer(
                chunk_sets::fetch(&self.mesh, &self.exchange, &id, &out).await,
                |f| Response::Fetched(Box::new(f)),
            ),
        }
    }
}
