//! `novacron bench mesh`: N real `novacron node` processes on loopback, one cell up to ~300.
//!
//! - `join_all_s`: from starting the joiners (the first node already listens) until every
//!   node has reported its whole cell live (its `cell member ... up (N live)` lines);
//! - steady state, after the join settles: `bytes_per_node_per_s`, bytes on the wire sent +
//!   received per node per second (libp2p's counters after noise and yamux: everything), and
//!   by protocol: the cell gossip's own frames and the rest (Kademlia, identify, ping,
//!   gossipsub, multiplexing); `idle_cpu_pct_per_node`, the nodes' CPU time from /proc over
//!   the same window, in percent of one core per node, and `rss_mib_per_node`;
//! - `failure_detect_s_p50` / `_max`: `--kill` nodes are killed with SIGKILL at once; for each
//!   victim and each surviving member, the time from the kill until that member reported it
//!   down (a `down` before the kill is not a detection); `false_alarms`: `down` lines about
//!   a node that was alive, from the join until the end of the run;
//! - `chunk_fetch_mib_s`: a `--fetch-mib` pattern set published on two nodes, fetched by a
//!   third (chunk phase, raw MiB/s), against one plain loopback TCP connection in this
//!   process moving the same bytes (`loopback_tcp_mib_s`) and storing them durably in a fresh
//!   local chunk store (`local_store_put_mib_s`: the same per-chunk work minus the network).
//!
//! The figures include the cost of running N processes on this machine's cores; a node's
//! own work per second is what the bytes and CPU figures show.

use std::time::{Duration, Instant};

use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use novacron_mesh::chunks::{ChunkStore, Level};
use novacron_mesh::transfer::ChunkSetManifest;
use novacron_mesh::workload::PatternStream;

use super::detection::{self, DetectionScore};
use super::proc_usage;
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
    /// Seconds after the join before the steady window starts (the join's own lookups and
    /// first bootstrap retries are over by then).
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,
    /// Seconds of steady state over which bytes and CPU are counted.
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// MiB of the chunk set fetched (a pattern that compresses ~2x, as memory does).
    #[arg(long, default_value_t = 64)]
    fetch_mib: usize,
    /// Start the joiners at this many per second, as volunteers arrive (0: all at once). With
    /// a pace, `join_all_s` counts from the last joiner's start.
    #[arg(long, default_value_t = 0.0)]
    start_per_sec: f64,
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
    let gap = if args.start_per_sec > 0.0 {
        Duration::try_from_secs_f64(1.0 / args.start_per_sec).context("--start-per-sec")?
    } else {
        Duration::ZERO
    };
    let mut mesh = LocalMesh::start_paced(scratch, args.nodes, &[], &off, &|| false, gap)?;
    let mut report = Report::new("mesh");
    let n = args.nodes;
    // The goals: 50 nodes as measured first, full-size cells (100-250) since.
    let small = n <= 50;
    report.add("nodes", n as f64, "", None);
    if !gap.is_zero() {
        report.add(
            "start_spread_s",
            mesh.last_started
                .saturating_duration_since(mesh.started)
                .as_secs_f64(),
            "s",
            None,
        );
    }

    let join = wait_all_live(&mesh, n, timeout)?;
    let joined = Instant::now();
    report.add(
        "join_all_s",
        join.as_secs_f64(),
        "s",
        Some(if small {
            Goal::at_most(15.0).under("up to 50 nodes", true)
        } else {
            Goal::at_most(60.0).under("over 50 nodes", true)
        }),
    );
    for node in &mesh.nodes {
        let live = node.status()?.live_members().count();
        if live != n {
            bail!(
                "{} reported {live} live members in its status, not {n}",
                node.name
            );
        }
    }

    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let steady = steady_state(&mesh, Duration::from_secs(args.steady_secs))?;
    report.add(
        "bytes_per_node_per_s",
        steady.wire,
        "B/s",
        Some(Goal::at_most(20_000.0)),
    );
    report.add(
        "cell_gossip_bytes_per_node_per_s",
        steady.gossip,
        "B/s",
        None,
    );
    for (protocol, rate) in &steady.by_protocol {
        report.add(
            &format!("bytes_per_node_per_s.{protocol}"),
            *rate,
            "B/s",
            None,
        );
    }
    report.add(
        "gossip_interval_s_mean",
        steady.gossip_interval_s,
        "s",
        None,
    );
    report.add(
        "idle_cpu_pct_per_node",
        steady.cpu_pct,
        "%",
        Some(Goal::at_most(0.3)),
    );
    report.add("rss_mib_per_node", steady.rss_mib, "MiB", None);

    if args.fetch_mib > 0 {
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
    }

    let mut score = failure_detection(&mut mesh, args.kill, joined, timeout)?;
    let max = score.samples.iter().copied().fold(0.0, f64::max);
    report.add(
        "failure_detect_s_p50",
        median(&mut score.samples),
        "s",
        Some(if small {
            Goal::at_most(10.0).under("up to 50 nodes", true)
        } else {
            Goal::at_most(16.0).under("over 50 nodes", true)
        }),
    );
    report.add("failure_detect_s_max", max, "s", None);
    report.add(
        "false_alarms",
        score.false_alarms as f64,
        "",
        Some(Goal::at_most(0.0)),
    );

    report.notes.push(format!(
        "{n} node processes on loopback TCP on this machine ({} cores); bytes are sent + \
         received per node, counted by libp2p after noise and yamux; CPU and RSS from /proc",
        std::thread::available_parallelism().map_or(1, |c| c.get())
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
            let last = reached
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(mesh.last_started);
            return Ok(last.saturating_duration_since(mesh.last_started));
        }
        if Instant::now() > deadline {
            let done = reached.iter().filter(|r| r.is_some()).count();
            let behind: Vec<String> = mesh
                .nodes
                .iter()
                .zip(&reached)
                .filter(|(_, r)| r.is_none())
                .take(5)
                .map(|(node, _)| format!("{} ({})", node.name, live_counts(node)))
                .collect();
            bail!(
                "after {timeout:?} only {done} of {n} nodes saw their whole cell live; behind: {}",
                behind.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The most members `node` reported live at once, and how many it reports live now.
fn live_counts(node: &NodeProc) -> String {
    let (most, last, downs) = node.with_lines(|lines| {
        lines.iter().fold(
            (0, 0, 0),
            |(most, last, downs), (_, line)| match parse_member_line(line) {
                Some((MemberChange::Up, _, live)) => (most.max(live), live, downs),
                Some((MemberChange::Down, _, live)) => (most, live, downs + 1),
                None => (most, last, downs),
            },
        )
    });
    format!("at most {most} live, {last} at its last change, {downs} down reports")
}

/// What a node costs in steady state, per node: means over the nodes.
struct Steady {
    /// All wire bytes (sent + received) per second.
    wire: f64,
    /// Cell gossip frames (sent + received) per second.
    gossip: f64,
    /// Payload bytes (sent + received) per second by protocol, then `framing`: the rest of
    /// the wire bytes (multiplexer headers, encryption, handshakes).
    by_protocol: Vec<(String, f64)>,
    /// The nodes' gossip interval at the end of the window, in seconds.
    gossip_interval_s: f64,
    /// CPU time in percent of one core.
    cpu_pct: f64,
    rss_mib: f64,
}

/// Per-node means over `span` of the steady state.
fn steady_state(mesh: &LocalMesh, span: Duration) -> anyhow::Result<Steady> {
    struct Sample {
        at: Instant,
        wire: u64,
        gossip: u64,
        interval_ms: u64,
        cpu_s: f64,
        by_protocol: Vec<(String, u64)>,
    }
    let sample = |node: &NodeProc| -> anyhow::Result<Sample> {
        let s = node.status()?;
        let cell = s.cell.as_ref();
        Ok(Sample {
            at: Instant::now(),
            wire: s.wire_sent + s.wire_received,
            gossip: cell.map_or(0, |c| c.gossip_sent + c.gossip_received),
            interval_ms: cell.map_or(0, |c| c.gossip_interval_ms),
            cpu_s: proc_usage::cpu_seconds(node.pid())?,
            by_protocol: s
                .wire_by_protocol
                .iter()
                .map(|p| (p.protocol.clone(), p.sent + p.received))
                .collect(),
        })
    };
    let before: Vec<Sample> = mesh.nodes.iter().map(sample).collect::<Result<_, _>>()?;
    std::thread::sleep(span);
    let after: Vec<Sample> = mesh.nodes.iter().map(sample).collect::<Result<_, _>>()?;
    let mut rss_kib = 0;
    for node in &mesh.nodes {
        rss_kib += proc_usage::rss_kib(node.pid())?;
    }
    let n = mesh.nodes.len() as f64;
    let mut out = Steady {
        wire: 0.0,
        gossip: 0.0,
        by_protocol: Vec::new(),
        gossip_interval_s: 0.0,
        cpu_pct: 0.0,
        rss_mib: rss_kib as f64 / 1024.0 / n,
    };
    for (b, a) in before.iter().zip(&after) {
        let secs = a.at.duration_since(b.at).as_secs_f64().max(1e-3);
        out.wire += a.wire.saturating_sub(b.wire) as f64 / secs / n;
        out.gossip += a.gossip.saturating_sub(b.gossip) as f64 / secs / n;
        out.gossip_interval_s += a.interval_ms as f64 / 1000.0 / n;
        out.cpu_pct += (a.cpu_s - b.cpu_s).max(0.0) / secs * 100.0 / n;
        for (protocol, bytes) in &a.by_protocol {
            let was = b
                .by_protocol
                .iter()
                .find(|(p, _)| p == protocol)
                .map_or(0, |x| x.1);
            let rate = bytes.saturating_sub(was) as f64 / secs / n;
            match out.by_protocol.iter_mut().find(|(p, _)| p == protocol) {
                Some((_, sum)) => *sum += rate,
                None => out.by_protocol.push((protocol.clone(), rate)),
            }
        }
    }
    let payload: f64 = out.by_protocol.iter().map(|(_, r)| r).sum();
    out.by_protocol
        .push(("framing".to_string(), (out.wire - payload).max(0.0)));
    Ok(out)
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

/// Kills `kill` nodes at once (never the first), waits until every survivor reported each
/// victim down (or `timeout`), and scores the member lines: detections after the kill, and
/// false alarms since `joined`.
fn failure_detection(
    mesh: &mut LocalMesh,
    kill: usize,
    joined: Instant,
    timeout: Duration,
) -> anyhow::Result<DetectionScore> {
    let n = mesh.nodes.len();
    let step = (n - 1) / kill.max(1);
    let victims: Vec<usize> = (0..kill).map(|k| 1 + k * step.max(1)).collect();
    let mut peers = Vec::new();
    for node in &mesh.nodes {
        peers.push(node.status().context("node status")?.peer_id);
    }
    let killed_at = Instant::now();
    for &v in &victims {
        mesh.nodes[v].kill9();
    }
    let deadline = killed_at + timeout;
    let score = loop {
        let observers: Vec<(String, detection::MemberLines)> = mesh
            .nodes
            .iter()
            .zip(&peers)
            .map(|(node, peer)| {
                let lines = node.with_lines(|lines| {
                    detection::member_lines(lines.iter().map(|(at, l)| (*at, l.as_str())))
                });
                (peer.clone(), lines)
            })
            .collect();
        let score = detection::score(&observers, &victims, joined, killed_at);
        if score.missing.is_empty() {
            break score;
        }
        if Instant::now() > deadline {
            let (i, peer) = &score.missing[0];
            bail!(
                "{} did not report {peer} down within {timeout:?} ({} reports missing)",
                mesh.nodes[*i].name,
                score.missing.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Ok(score)
}
