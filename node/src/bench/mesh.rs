//! `novacron bench mesh`: N real `novacron node` processes on loopback.
//!
//! - `join_all_s`: from starting the joiners (the first node already listens) until every
//!   node has reported its whole cell live (its `cell member ... up (N live)` lines);
//! - `bytes_per_node_per_s`: steady state after the join settles, bytes on the wire sent +
//!   received per node per second (libp2p's counters after noise and yamux: gossip, pings,
//!   identify, Kademlia refreshes, everything), and the cell gossip's own share;
//! - `failure_detect_s_p50` / `_max`: `--kill` nodes are killed with SIGKILL at once; for each
//!   victim and each surviving member, the time until that member reported it down.
//!
//! The figures include the cost of running N processes on this machine's cores; a node's
//! own work per second is what the bytes figure shows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::report::{in_scratch_dir, median, Report};
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
    let mut mesh = LocalMesh::start(scratch, args.nodes, &[])?;
    let mut report = Report::new("mesh");
    report.add("nodes", args.nodes as f64, "", None);

    let join = wait_all_live(&mesh, args.nodes, timeout)?;
    report.add(
        "join_all_s",
        join.as_secs_f64(),
        "s",
        Some("<= 15 at 50 nodes"),
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
        Some("<= 20000 at 50 nodes"),
    );
    report.add("cell_gossip_bytes_per_node_per_s", gossip, "B/s", None);

    let (p50, max) = failure_detection(&mut mesh, args.kill, timeout)?;
    report.add("failure_detect_s_p50", p50, "s", Some("<= 10 at 50 nodes"));
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
