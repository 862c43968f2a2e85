//! Chunk sets across real libp2p on loopback: in-process mesh nodes (Kademlia servers from
//! the start), each with its own chunk store in a temp directory, publishing sets as DHT
//! providers and fetching them from several providers in parallel over `/novacron/chunks/1`.

#![cfg(feature = "swarm")]

mod common;

use common::{dial_addr, eventually, loopback_config, WAIT};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use novacron_mesh::chunks::{ChunkStore, Level};
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::swarm::chunk_exchange::read_frame;
use novacron_mesh::swarm::{
    ChunkExchange, ExchangeConfig, MeshNode, Multiaddr, PeerId, CHUNKS_PROTOCOL,
};
use novacron_mesh::transfer::wire::{Request, Response, MAX_RESPONSE_BODY};
use novacron_mesh::transfer::{ChunkSetManifest, RateConfig};
use novacron_mesh::workload::{PatternStream, RandomStream};
use tokio::time::timeout;

/// A mesh node with its own store and exchange.
struct Peer {
    node: MeshNode,
    ex: ChunkExchange,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn id(&self) -> PeerId {
        self.node.peer_id()
    }

    fn store(&self) -> &ChunkStore {
        self.ex.store()
    }
}

/// Temp directories on tmpfs when there is one: the store fsyncs every chunk file, and the
/// tests measure the exchange, not the disk.
fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn start_peer(bootstrap: Vec<Multiaddr>, cfg: ExchangeConfig) -> Peer {
    let node = MeshNode::start(
        &NodeIdentity::generate().unwrap(),
        loopback_config(bootstrap),
    )
    .unwrap();
    let dir = temp_dir();
    let store = Arc::new(ChunkStore::open(dir.path(), Level::default()).unwrap());
    let ex = ChunkExchange::start(&node, store, cfg).unwrap();
    Peer {
        node,
        ex,
        _dir: dir,
    }
}

/// `n` peers joined through the first, each knowing all others in its routing table.
async fn mesh(cfgs: Vec<ExchangeConfig>) -> Vec<Peer> {
    let mut cfgs = cfgs.into_iter();
    let first = start_peer(vec![], cfgs.next().unwrap());
    let boot = dial_addr(&first.node).await;
    let mut peers = vec![first];
    for cfg in cfgs {
        peers.push(start_peer(vec![boot.clone()], cfg));
    }
    let ids: Vec<PeerId> = peers.iter().map(Peer::id).collect();
    for p in &peers {
        eventually("every routing table to hold every peer", || async {
            let table = p.node.routing_table_peers().await.ok()?;
            ids.iter()
                .filter(|id| **id != p.id())
                .all(|id| table.contains(id))
                .then_some(())
        })
        .await;
    }
    peers
}

/// The benchmark pattern with a run of zero chunks in it.
fn pattern_set(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    PatternStream::new().fill(&mut data);
    let hole = len / 3;
    data[hole..hole + 5 * 16384].fill(0);
    data
}

/// Publishes `data` on each of `peers` (each its own copy in its own store).
async fn publish_on(peers: &[&Peer], name: &str, data: &[u8]) -> [u8; 32] {
    let mut id = None;
    for p in peers {
        let m = ChunkSetManifest::from_store_data(name, data, p.store()).unwrap();
        let got = p.ex.publish(&p.node, &m).await.unwrap();
        assert_eq!(*id.get_or_insert(got), got, "same data, same id");
    }
    id.unwrap()
}

/// Waits until `peer` finds all of `want` providing `id` in the DHT.
async fn wait_providers(peer: &Peer, id: [u8; 32], want: &[PeerId]) {
    eventually("the providers in the DHT", || async {
        let found = peer.node.providers(DhtKey::ChunkSet(id)).await.ok()?;
        want.iter().all(|p| found.contains(p)).then_some(())
    })
    .await;
}

fn reassembled(peer: &Peer, id: [u8; 32]) -> Vec<u8> {
    peer.ex
        .manifest(&id)
        .expect("the fetched set is served")
        .reassemble(peer.store())
        .unwrap()
}

fn chunks_from(report: &novacron_mesh::swarm::FetchReport, peer: PeerId) -> u64 {
    report
        .providers
        .iter()
        .find(|(p, _)| *p == peer)
        .map_or(0, |(_, s)| s.chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_two_nodes_is_fetched_from_both_in_parallel() {
    let peers = mesh(vec![ExchangeConfig::default(); 3]).await;
    let (a, b, c) = (&peers[0], &peers[1], &peers[2]);
    let data = pattern_set((4 << 20) + 12345);
    let id = publish_on(&[a, b], "image-4m", &data).await;
    wait_providers(c, id, &[a.id(), b.id()]).await;

    let report = timeout(WAIT, c.ex.fetch(&c.node, id))
        .await
        .unwrap()
        .unwrap();
    let m = a.ex.manifest(&id).unwrap();
    assert_eq!(report.chunks as usize, m.chunks().len());
    assert_eq!(report.bytes, m.stored_bytes());
    assert_eq!(report.set_chunks, m.chunks().len());
    assert!(report.wire_bytes < report.bytes, "chunks travel compressed");
    let (from_a, from_b) = (chunks_from(&report, a.id()), chunks_from(&report, b.id()));
    assert!(
        from_a > 0 && from_b > 0,
        "both providers used: {from_a} + {from_b}"
    );
    assert_eq!(from_a + from_b, report.chunks);
    assert!(report.bad_providers.is_empty() && report.gone_providers.is_empty());
    assert!(report.manifest_from.is_some());
    assert!(report.providing);
    assert_eq!(reassembled(c, id), data, "byte-identical after reassembly");
    println!(
        "4 MiB set: {} chunks ({} from A, {} from B) in {:.3} s, {:.1} MiB/s",
        report.chunks, from_a, from_b, report.chunk_seconds, report.mib_per_sec
    );

    // C now provides the set too, and a second fetch has nothing left to fetch.
    wait_providers(a, id, &[c.id()]).await;
    let again = c.ex.fetch(&c.node, id).await.unwrap();
    assert_eq!(again.chunks, 0);
    assert_eq!(again.already_held, m.chunks().len());
    assert!(again.manifest_from.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_serving_corrupt_chunks_is_reported_and_the_fetch_completes() {
    let peers = mesh(vec![ExchangeConfig::default(); 3]).await;
    let (honest, liar, c) = (&peers[0], &peers[1], &peers[2]);
    let data = pattern_set(2 << 20);
    let id = publish_on(&[honest, liar], "tampered", &data).await;
    // Flip the last byte of every chunk file in the liar's store: the headers stay valid,
    // so it serves them, but no chunk decodes to its id.
    let m = liar.ex.manifest(&id).unwrap();
    for chunk in m.chunks() {
        let path = liar.store().path_of(&chunk.chunk_id());
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    }
    wait_providers(c, id, &[honest.id(), liar.id()]).await;

    let report = timeout(WAIT, c.ex.fetch(&c.node, id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.bad_providers, vec![liar.id()]);
    assert_eq!(chunks_from(&report, liar.id()), 0);
    assert_eq!(report.chunks as usize, m.chunks().len());
    assert!(report.retries > 0);
    assert!(liar.ex.serve_stats().chunks > 0, "the liar did serve");
    assert_eq!(reassembled(c, id), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_vanishing_mid_fetch_is_replaced_by_the_other() {
    // Slow providers (4 MiB/s each) so the fetch is still running when one stops.
    let slow = ExchangeConfig {
        rate: RateConfig {
            bytes_per_sec: 4 << 20,
            burst_bytes: 256 << 10,
            ..RateConfig::default()
        },
        ..ExchangeConfig::default()
    };
    let mut peers = mesh(vec![slow.clone(), slow, ExchangeConfig::default()]).await;
    let c = peers.pop().unwrap();
    let b = peers.pop().unwrap();
    let a = peers.pop().unwrap();
    // Random data (kept raw) makes every byte count against the rate.
    let mut data = vec![0u8; 8 << 20];
    RandomStream::new(11).fill(&mut data);
    let id = publish_on(&[&a, &b], "vanishing", &data).await;
    wait_providers(&c, id, &[a.id(), b.id()]).await;
    let b_id = b.id();

    let fetch = c.ex.fetch(&c.node, id);
    let kill = async {
        eventually("the fetch to be under way", || async {
            (c.store().stats().chunks >= 32).then_some(())
        })
        .await;
        let total = a.ex.manifest(&id).unwrap().chunks().len() as u64;
        assert!(c.store().stats().chunks < total, "fetch finished too early");
        let Peer { node, ex, _dir } = b;
        drop(ex);
        node.stop().await;
    };
    let (report, ()) = tokio::join!(timeout(WAIT, fetch), kill);
    let report = report.unwrap().unwrap();
    assert_eq!(report.gone_providers, vec![b_id], "{report:?}");
    assert!(report.retries > 0);
    assert!(chunks_from(&report, a.id()) > chunks_from(&report, b_id));
    assert_eq!(reassembled(&c, id), data);
}

/// Sends raw bytes on a fresh stream and waits until the server closes it; returns what
/// it answered first, if anything.
async fn send_raw(from: &Peer, to: PeerId, bytes: &[u8]) -> Option<Response> {
    let mut control = from.node.stream_control();
    let mut stream = control.open_stream(to, CHUNKS_PROTOCOL).await.unwrap();
    let _ = stream.write_all(bytes).await;
    // Half-close: the server sees the end of what we send and must not wait for more.
    let _ = stream.close().await;
    let answer = timeout(WAIT, read_frame(&mut stream, MAX_RESPONSE_BODY))
        .await
        .expect("the server neither answered nor closed the stream");
    let first = answer
        .ok()
        .flatten()
        .and_then(|body| Response::decode(&body).ok());
    // Whatever it answered, the stream must end.
    let mut rest = Vec::new();
    let end = timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the server kept a garbage stream open");
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_refused_and_serving_goes_on() {
    let peers = mesh(vec![ExchangeConfig::default(); 2]).await;
    let (a, c) = (&peers[0], &peers[1]);
    let data = pattern_set(1 << 20);
    let id = publish_on(&[a], "small", &data).await;

    let mut garbage: Vec<Vec<u8>> = vec![
        // A header announcing a 4 GiB request.
        u32::MAX.to_be_bytes().to_vec(),
        // A header announcing 1 MiB, then a little data.
        [(1u32 << 20).to_be_bytes().as_slice(), &[2; 100]].concat(),
        // An unknown message.
        [1u32.to_be_bytes().as_slice(), &[0x7f]].concat(),
        // A response where a request belongs.
        Response::End.encode(),
        // 65 chunk ids.
        [2u32.to_be_bytes().as_slice(), &[0x02, 65]].concat(),
        // An empty frame.
        vec![0, 0, 0, 0],
        // A manifest request cut short.
        Request::Manifest(id).encode()[..20].to_vec(),
    ];
    let mut noise = vec![0u8; 4096];
    RandomStream::new(3).fill(&mut noise);
    garbage.push(noise);
    let before = a.ex.serve_stats().refused;
    for (i, g) in garbage.iter().enumerate() {
        let answer = send_raw(c, a.id(), g).await;
        assert!(answer.is_none(), "garbage {i} got an answer: {answer:?}");
    }
    let refused = a.ex.serve_stats().refused - before;
    assert!(refused >= 6, "{refused} streams refused");

    // A valid request for something unknown gets NotFound; the server still serves.
    let unknown = send_raw(c, a.id(), &Request::Manifest([9; 32]).encode()).await;
    assert_eq!(unknown, Some(Response::NotFound([9; 32])));
    // Chunks outside any published set are not served, even if stored.
    let private = a.store().put(b"a private chunk").unwrap().id;
    let answer = send_raw(c, a.id(), &Request::Chunks(vec![private]).encode()).await;
    assert_eq!(answer, Some(Response::NotFound(*private.as_bytes())));

    let report = timeout(WAIT, c.ex.fetch_from(&c.node, id, &[a.id()]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reassembled(c, id), data);
    assert!(report.chunks > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_provider_answers_busy_and_the_fetcher_waits() {
    const RATE: u64 = 4 << 20;
    const BURST: u64 = 128 << 10;
    let limited = ExchangeConfig {
        rate: RateConfig {
            bytes_per_sec: RATE,
            burst_bytes: BURST,
            ..RateConfig::default()
        },
        ..ExchangeConfig::default()
    };
    // Small requests, two at a time: at most 2 x 8 chunks are ever admitted into debt.
    let mut fetcher = ExchangeConfig::default();
    fetcher.fetch.batch_chunks = 8;
    fetcher.fetch.max_in_flight_per_peer = 2;
    let peers = mesh(vec![limited, fetcher]).await;
    let (a, c) = (&peers[0], &peers[1]);
    let data = pattern_set(4 << 20);
    let id = publish_on(&[a], "limited", &data).await;
    wait_providers(c, id, &[a.id()]).await;

    let report = timeout(WAIT, c.ex.fetch(&c.node, id))
        .await
        .unwrap()
        .unwrap();
    assert!(report.busy > 0, "{report:?}");
    assert_eq!(a.ex.serve_stats().busy, report.busy);
    assert!(report.gone_providers.is_empty() && report.bad_providers.is_empty());
    assert_eq!(
        report.retries, 0,
        "busy answers are waited out, not retried"
    );
    // What went past the burst and the debt of two requests took its time at the rate.
    let paced = report.wire_bytes.saturating_sub(BURST + 2 * 8 * 9000);
    let floor = paced as f64 / RATE as f64;
    assert!(
        floor > 0.3,
        "the test must pace: {} wire bytes",
        report.wire_bytes
    );
    assert!(
        report.chunk_seconds >= floor * 0.95,
        "{} s for {} wire bytes",
        report.chunk_seconds,
        report.wire_bytes
    );
    assert_eq!(reassembled(c, id), data);
    println!(
        "rate-limited fetch: {} busy answers, {:.2} s for {} wire bytes ({:.2} MiB/s on the wire, limit {} MiB/s)",
        report.busy,
        report.chunk_seconds,
        report.wire_bytes,
        report.wire_bytes as f64 / (1 << 20) as f64 / report.chunk_seconds,
        RATE >> 20
    );
}

/// Loopback throughput of a 64 MiB pattern set fetched from two providers (debug build;
/// stores on tmpfs). Prints the figures; `cargo test --test chunk_exchange -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_a_64_mib_pattern_set_from_two_providers() {
    let peers = mesh(vec![ExchangeConfig::default(); 3]).await;
    let (a, b, c) = (&peers[0], &peers[1], &peers[2]);
    let mut data = vec![0u8; 64 << 20];
    PatternStream::new().fill(&mut data);
    let id = publish_on(&[a, b], "pattern-64m", &data).await;
    let wire_before = c.node.wire_bytes().await.unwrap();
    let report = timeout(
        Duration::from_secs(60),
        c.ex.fetch_from(&c.node, id, &[a.id(), b.id()]),
    )
    .await
    .unwrap()
    .unwrap();
    let wire_after = c.node.wire_bytes().await.unwrap();
    assert_eq!(report.bytes, 64 << 20);
    println!(
        "64 MiB pattern set: {} chunks in {:.2} s = {:.1} MiB/s raw ({:.1} MiB/s of chunk frames; \
         {} MiB received on the wire); from A {}, from B {}; retries {}",
        report.chunks,
        report.chunk_seconds,
        report.mib_per_sec,
        report.wire_bytes as f64 / (1 << 20) as f64 / report.chunk_seconds,
        (wire_after.received - wire_before.received) >> 20,
        chunks_from(&report, a.id()),
        chunks_from(&report, b.id()),
        report.retries
    );
    println!("per provider: {:?}", report.providers);
    let m = a.ex.manifest(&id).unwrap();
    let mut out = Vec::with_capacity(data.len());
    m.reassemble_to(c.store(), &mut out).unwrap();
    assert!(out == data, "byte-identical");
}
