//! `novacron bench mesh`: N real `novacron node` processes on loopback.
//!
//! - `join_all_s`: from starting the joiners (the first node already listens) until every
//!   node has reported its whole cell live (its `cell member ... up (N live)` lines);
//! - `bytes_per_node_per_s`: steady state after the join settles, bytes on the wire sent +
//!   received per node per second (libp2p's counters after noise and yamux: gossip, pings,
//!   identify, Kademlia refreshes, everything), and the cell gossip's own share;
//! - `failure_detect_s_p50` / `_max`: `--kill` nodes are killed with SIGKILL at once; for each
//!   victim and each surviving member, the time until that member reported it down;
//! - `chunk_fetch_mib_s`: a `--fetch-mib` pattern set published on two nodes, fetched by a
//!   third (chunk phase, raw MiB/s), against one plain loopback TCP connection in this
//!   process moving the same bytes (`loopback_tcp_mib_s`) and storing them durably in a fresh
//!   local chunk store (`local_store_put_mib_s`: the same per-chunk work minus the network).
//!
//! The figures include the cost of running N processes on this machine's cores; a node's
//! own work per second is what the bytes figure shows.

use std::time::{Duration, Instant};

use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use novacron_mesh::chunks::{ChunkStore, Level};
use novacron_mesh::transfer::ChunkSetManifest;
use novacron_mesh::workload::PatternStream;

use super::report::{in_scratch_dir, median, Goal, Report};
use crate::api::{Request, Response};
use crate::daemon::lines::{parse_member_line, MemberChange};
use crate::local_mesh::{LocalMesh, NodeProc};

#[derive(Args, Debug)]
pub struct MeshBenchArgs {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Nodes killed with SIGKILL for the failure-detection figures.
    #[arg(long, default_value_t = 5)]
    kill: usize,
    /// Seconds of steady state over which bytes are counted.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    /// MiB of the chunk set fetched (a pattern that compresses ~2x, as memory does).
    #[arg(long, default_value_t = 64)]
    fetch_mib: usize,
    /// Give up waiting for the join (or a detection) after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Scratch directory for the nodes' data directories (default: under the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl MeshBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(args: &MeshBenchArgs) -> anyhow::Result<Report> {
    if args.nodes < 2 || args.kill >= args.nodes {
        bail!("bench mesh needs at least 2 nodes and fewer --kill than --nodes");
    }
    in_scratch_dir("mesh", args.dir.as_deref(), |scratch| {
        measure(args, scratch)
    })
}

fn measure(args: &MeshBenchArgs, scratch: &std::path::Path) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let off = ["--dashboard-port".to_string(), "0".to_string()];
    let mut mesh = LocalMesh::start(scratch, args.nodes, &[], &off, &|| false)?;
    let mut report = Report::new("mesh");
    // The mesh goals are for 50 nodes.
    let at_50 = args.nodes == 50;
    report.add("nodes", args.nodes as f64, "", None);

    let join = wait_all_live(&mesh, args.nodes, timeout)?;
    report.add(
        "join_all_s",
        join.as_secs_f64(),
        "s",
        Some(Goal::at_most(15.0).under("at 50 nodes", at_50)),
    );
    for node in &mesh.nodes {
        let live = node.status()?.live_members().count();
        if live != args.nodes {
            bail!(
                "{} reported {live} live members in its status, not {}",
                node.name,
                args.nodes
            );
        }
    }

    std::thread::sleep(Duration::from_secs(5));
    let (total, gossip) = steady_bytes(&mesh, Duration::from_secs(args.steady_secs))?;
    report.add(
        "bytes_per_node_per_s",
        total,
        "B/s",
        Some(Goal::at_most(20_000.0).under("at 50 nodes", at_50)),
    );
    report.add("cell_gossip_bytes_per_node_per_s", gossip, "B/s", None);

    let fetch = chunk_fetch(&mesh, scratch, args.fetch_mib)?;
    report.add("chunk_fetch_mib_s", fetch.mib_per_sec, "MiB/s", None);
    report.add("chunk_fetch_providers", fetch.providers as f64, "", None);
    report.add("loopback_tcp_mib_s", fetch.tcp_mib_per_sec, "MiB/s", None);
    report.add(
        "local_store_put_mib_s",
        fetch.store_mib_per_sec,
        "MiB/s",
        None,
    );
    report.add(
        "chunk_fetch_vs_local_store_put",
        fetch.mib_per_sec / fetch.store_mib_per_sec.max(1e-9),
        "x",
        None,
    );
    report.add(
        "chunk_fetch_vs_loopback_tcp",
        fetch.mib_per_sec / fetch.tcp_mib_per_sec.max(1e-9),
        "x",
        None,
    );

    let (p50, max) = failure_detection(&mut mesh, args.kill, timeout)?;
    report.add(
        "failure_detect_s_p50",
        p50,
        "s",
        Some(Goal::at_most(10.0).under("at 50 nodes", at_50)),
    );
    report.add("failure_detect_s_max", max, "s", None);

    report.notes.push(format!(
        "{} node processes on loopback TCP on this machine ({} cores); bytes are sent + \
         received per node, counted by libp2p after noise and yamux",
        args.nodes,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    Ok(report)
}

/// How long until every node's member lines reached `n` live members.
fn wait_all_live(mesh: &LocalMesh, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        let reached: Vec<Option<Instant>> = mesh
            .nodes
            .iter()
            .map(|node| {
                node.find_line(|line| match parse_member_line(line) {
                    Some((MemberChange::Up, _, live)) if live >= n => Some(()),
                    _ => None,
                })
                .map(|(at, ())| at)
            })
            .collect();
        if reached.iter().all(Option::is_some) {
            let last = reached.into_iter().flatten().max().unwrap_or(mesh.started);
            return Ok(last.saturating_duration_since(mesh.started));
        }
        if Instant::now() > deadline {
            let done = reached.iter().filter(|r| r.is_some()).count();
            bail!("after {timeout:?} only {done} of {n} nodes saw their whole cell live");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mean (all wire bytes, cell gossip bytes) per node per second over `span`.
fn steady_bytes(mesh: &LocalMesh, span: Duration) -> anyhow::Result<(f64, f64)> {
    let sample = |node: &NodeProc| -> anyhow::Result<(Instant, u64, u64)> {
        let s = node.status()?;
        let gossip = s
            .cell
            .as_ref()
            .map_or(0, |c| c.gossip_sent + c.gossip_received);
        Ok((Instant::now(), s.wire_sent + s.wire_received, gossip))
    };
    let before: Vec<_> = mesh.nodes.iter().map(sample).collect::<Result<_, _>>()?;
    std::thread::sleep(span);
    let after: Vec<_> = mesh.nodes.iter().map(sample).collect::<Result<_, _>>()?;
    let (mut total, mut gossip) = (0.0, 0.0);
    for ((t0, w0, g0), (t1, w1, g1)) in before.iter().zip(&after) {
        let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
        total += w1.saturating_sub(*w0) as f64 / secs;
        gossip += g1.saturating_sub(*g0) as f64 / secs;
    }
    let n = mesh.nodes.len() as f64;
    Ok((total / n, gossip / n))
}

struct FetchFigures {
    mib_per_sec: f64,
    providers: usize,
    tcp_mib_per_sec: f64,
    store_mib_per_sec: f64,
}

/// Publishes a `mib` MiB pattern file on two nodes and fetches it on a third (the chunk phase
/// rate, verified chunks written to its store), then moves the same bytes over one plain
/// loopback TCP connection in this process, as the reference.
fn chunk_fetch(mesh: &LocalMesh, scratch: &Path, mib: usize) -> anyhow::Result<FetchFigures> {
    if mesh.nodes.len() < 3 {
        bail!("the chunk fetch needs 3 nodes");
    }
    let mut data = vec![0u8; mib << 20];
    PatternStream::new().fill(&mut data);
    let file = scratch.join("chunk-set.bin");
    std::fs::write(&file, &data).with_context(|| format!("cannot write {}", file.display()))?;
    let mut id = String::new();
    for node in &mesh.nodes[1..3] {
        match node.ask(&Request::PublishFile {
            path: file.clone(),
            name: Some("bench".into()),
        })? {
            Response::Published(p) => id = p.id,
            other => bail!("{} could not publish: {other:?}", node.name),
        }
    }
    let out = scratch.join("chunk-set.fetched");
    let fetched = match mesh.nodes[mesh.nodes.len() - 1].ask(&Request::Fetch {
        id,
        out: out.clone(),
    })? {
        Response::Fetched(f) => f,
        other => bail!("the fetch failed: {other:?}"),
    };
    if std::fs::read(&out)? != data {
        bail!("the fetched chunk set differs from the published file");
    }
    Ok(FetchFigures {
        mib_per_sec: fetched.mib_per_sec,
        providers: fetched.providers.len(),
        tcp_mib_per_sec: loopback_tcp_mib_s(&data)?,
        store_mib_per_sec: local_store_put_mib_s(&data, &scratch.join("reference-store"))?,
    })
}

/// MiB/s of chunking, hashing, compressing and durably storing `data` in a fresh local
/// chunk store: what a fetch does with each chunk minus the network.
fn local_store_put_mib_s(data: &[u8], dir: &Path) -> anyhow::Result<f64> {
    let store = ChunkStore::open(dir, Level::default())?;
    // Flush what the benchmark wrote before (the set's file, the fetched copy), so the
    // store's syncs time only its own chunks.
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    let started = Instant::now();
    ChunkSetManifest::from_store_data("reference", data, &store)?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(data.len() as f64 / secs / (1 << 20) as f64)
}

/// MiB/s of `data` written through one loopback TCP connection and read on the other end.
fn loopback_tcp_mib_s(data: &[u8]) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let len = data.len();
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    });
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(data)?;
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reference reader panicked"))??;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if got != len {
        bail!("the reference connection carried {got} of {len} bytes");
    }
    Ok(len as f64 / secs / (1 << 20) as f64)
}

/// Kills `kill` nodes at once (never the first) and times, for every survivor, its `down`
/// line for each victim. Returns (p50, max) in seconds.
fn failure_detection(
    mesh: &mut LocalMesh,
    kill: usize,
    timeout: Duration,
) -> anyhow::Result<(f64, f64)> {
    let n = mesh.nodes.len();
    let step = (n - 1) / kill.max(1);
    let victims: Vec<usize> = (0..kill).map(|k| 1 + k * step.max(1)).collect();
    let mut victim_peers = Vec::new();
    for &v in &victims {
        victim_peers.push(mesh.nodes[v].status().context("victim status")?.peer_id);
    }
    let killed_at = Instant::now();
    for &v in &victims {
        mesh.nodes[v].kill9();
    }
    let deadline = killed_at + timeout;
    let mut samples = Vec::new();
    for (i, node) in mesh.nodes.iter().enumerate() {
        if victims.contains(&i) {
            continue;
        }
        for peer in &victim_peers {
            let seen = loop {
                let found = node.find_line(|line| match parse_member_line(line) {
                    Some((MemberChange::Down, p, _)) if p == peer => Some(()),
                    _ => None,
                });
                if let Some((at, ())) = found {
                    break at;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not report {peer} down within {timeout:?}",
                        node.name
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            samples.push(seen.saturating_duration_since(killed_at).as_secs_f64());
        }
    }
    let max = samples.iter().copied().fold(0.0, f64::max);
    Ok((median(&mut samples), max))
}
