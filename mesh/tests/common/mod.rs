//! Helpers shared by the swarm tests: a loopback node's config, polling for a condition and a
//! node's dial address.
#![allow(dead_code)] // each test binary uses a subset

use std::future::Future;
use std::time::Duration;

use novacron_mesh::swarm::{MeshNode, Multiaddr, SwarmConfig};
use tokio::time::{sleep, Instant};

/// How long any single wait of these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// A node on an ephemeral loopback TCP port, serving the DHT (autonat never confirms
/// loopback), joining through `bootstrap`.
pub fn loopback_config(bootstrap: Vec<Multiaddr>) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0"
            .parse()
            .expect("a loopback multiaddr")],
        bootstrap,
        force_kad_server: true,
        ..SwarmConfig::default()
    }
}

/// Polls `check` every 50 ms until it returns Some, or panics naming `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// The node's first listen address, without `/p2p/`.
pub async fn listen_addr(node: &MeshNode) -> Multiaddr {
    eventually("a listen address", || async {
        node.listen_addrs().await.ok()?.into_iter().next()
    })
    .await
}

/// The node's first listen address with its `/p2p/` suffix (a bootstrap address).
pub async fn dial_addr(node: &MeshNode) -> Multiaddr {
    let addr = listen_addr(node).await;
    format!("{addr}/p2p/{}", node.peer_id())
        .parse()
        .expect("a listen address plus /p2p/ parses")
}
