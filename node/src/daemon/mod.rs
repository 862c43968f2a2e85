//! The running node: the mesh swarm, its cell, and the local API that reports on them.
//!
//! Minimal for now (the node issue completes it): what runs is the mesh; VMs, jobs,
//! politeness and persistence come with the daemon proper.

pub mod lines;

use std::sync::Arc;
use std::time::Instant;

use novacron_mesh::swarm::MeshNode;

use crate::api::socket::Handler;
use crate::api::{NodeStatus, Request, Response};

/// What a running node owns and reports on.
pub struct Daemon {
    pub mesh: MeshNode,
    pub started: Instant,
}

impl Daemon {
    pub fn new(mesh: MeshNode) -> Arc<Daemon> {
        Arc::new(Daemon {
            mesh,
            started: Instant::now(),
        })
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
            cell: None,
        })
    }
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => match self.status().await {
                Ok(s) => Response::Status(Box::new(s)),
                Err(e) => Response::Error(format!("{e:#}")),
            },
        }
    }
}
