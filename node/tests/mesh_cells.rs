//! End-to-end: twenty real `novacron node` processes on loopback form one cell.
//!
//! All join through one bootstrap node; every member sees the whole cell live (its member
//! lines and `novacron nodes --json`, with each member's capacity key-values); a node killed
//! with -9 is reported down by every other member; a chunk set published on one node
//! (`novacron chunks publish`) is fetched, verified and reassembled byte for byte by another
//! (`novacron chunks fetch`); the killed node restarts on its data directory with the same
//! PeerId and every member sees it live again.

#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::time::{Duration, Instant};

use mesh::{live_count, member_lines, spawn_node, wait_listening, wait_until};
use proc::Proc;

const NODES: usize = 20;
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
const DETECT_TIMEOUT: Duration = Duration::from_secs(60);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn run_cli(name: &str, args: &[&str]) -> Proc {
    let mut p = Proc::spawn(name, args);
    let status = p.wait(CLI_TIMEOUT);
    assert!(status.success(), "{name} failed\n{}", p.dump());
    p
}

fn nodes_json(dir: &std::path::Path) -> serde_json::Value {
    let p = run_cli(
        "nodes",
        &["nodes", "--json", "--data-dir", dir.to_str().unwrap()],
    );
    serde_json::from_str(p.stdout().trim()).expect("nodes --json prints one JSON object")
}

#[test]
fn twenty_nodes_form_a_cell_detect_a_kill_share_a_chunk_set_and_take_a_restart_back() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dirs: Vec<_> = (0..NODES)
        .map(|i| tmp.path().join(format!("n{i:02}")))
        .collect();
    let mut procs: Vec<Proc> = Vec::new();
    let mut first = spawn_node("n00", &dirs[0], "127.0.0.1", None, &[]);
    let (_, bootstrap) = wait_listening(&mut first);
    procs.push(first);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        procs.push(spawn_node(
            &format!("n{i:02}"),
            dir,
            "127.0.0.1",
            Some(&bootstrap),
            &[],
        ));
    }
    let peers: Vec<String> = procs.iter_mut().map(|p| wait_listening(p).0).collect();

    let all: Vec<&Proc> = procs.iter().collect();
    wait_until(
        "every node to see the whole cell live",
        JOIN_TIMEOUT,
        &all,
        || procs.iter().all(|p| live_count(p) == Some(NODES)),
    );
    eprintln!(
        "{NODES} nodes saw their whole cell after {:?}",
        started.elapsed()
    );

    // The API agrees, with every member's key-values.
    let status = nodes_json(&dirs[7]);
    let members = status["cell"]["members"].as_array().expect("cell members");
    let live: Vec<&serde_json::Value> = members.iter().filter(|m| m["live"] == true).collect();
    assert_eq!(live.len(), NODES, "{status}");
    for m in &live {
        assert!(m["vcpus"].as_u64().unwrap_or(0) >= 1, "{m}");
        assert!(m["mem_mib"].as_u64().unwrap_or(0) > 0, "{m}");
        assert!(!m["addrs"].as_array().unwrap().is_empty(), "{m}");
        assert!(
            peers.contains(&m["peer_id"].as_str().unwrap().to_string()),
            "{m}"
        );
    }

    // kill -9 one member: every other member reports it down.
    let victim = 13;
    procs[victim].kill_tree();
    let killed_at = Instant::now();
    let others: Vec<usize> = (0..NODES).filter(|&i| i != victim).collect();
    let all: Vec<&Proc> = procs.iter().collect();
    wait_until(
        "every member to report the killed node down",
        DETECT_TIMEOUT,
        &all,
        || {
            others
                .iter()
                .all(|&i| member_lines(&procs[i], &peers[victim], "down") >= 1)
        },
    );
    eprintln!(
        "kill -9 detected by all {} members after {:?}",
        others.len(),
        killed_at.elapsed()
    );

    // A chunk set published on one node is fetched by another, verified, byte for byte.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let input = tmp.path().join("input.bin");
    std::fs::write(&input, &data).unwrap();
    let published = run_cli(
        "publish",
        &[
            "chunks",
            "publish",
            "--data-dir",
            dirs[2].to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    let id = published.stdout().trim().to_string();
    assert_eq!(id.len(), 64, "publish prints the set id: {id:?}");
    let output = tmp.path().join("output.bin");
    let fetched = run_cli(
        "fetch",
        &[
            "chunks",
            "fetch",
            "--json",
            "--data-dir",
            dirs[17].to_str().unwrap(),
            &id,
            "--out",
            output.to_str().unwrap(),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(fetched.stdout().trim()).expect("fetch --json prints one object");
    assert_eq!(
        report["bytes"].as_u64(),
        Some(data.len() as u64),
        "{report}"
    );
    assert_eq!(
        std::fs::read(&output).unwrap(),
        data,
        "the fetched set is byte-identical"
    );

    // The killed node restarts on its data directory: same PeerId, live again everywhere.
    let mut again = spawn_node(
        "n13-again",
        &dirs[victim],
        "127.0.0.1",
        Some(&bootstrap),
        &[],
    );
    let (again_id, _) = wait_listening(&mut again);
    assert_eq!(
        again_id, peers[victim],
        "the restarted node kept its PeerId"
    );
    procs.push(again);
    let all: Vec<&Proc> = procs.iter().collect();
    wait_until(
        "every member to see the restarted node live again",
        JOIN_TIMEOUT,
        &all,
        || {
            others
                .iter()
                .all(|&i| member_lines(&procs[i], &peers[victim], "up") >= 2)
                && live_count(procs.last().unwrap()) == Some(NODES)
        },
    );
    eprintln!("restart rejoined after {:?} in all", started.elapsed());
}
