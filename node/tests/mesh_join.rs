//! End-to-end: five real `novacron node` processes on loopback join through the first one
//! (some over TCP, some over QUIC), every one ends up with all the others in its Kademlia
//! table, a node killed with -9 and restarted on its data directory comes back with the same
//! PeerId and rejoins, and SIGTERM stops a node cleanly.
//!
//! Every wait has a timeout; the processes are killed when their guards drop and their
//! stderr is printed when the test fails.

#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::path::Path;
use std::time::{Duration, Instant};

use proc::Proc;

const NODES: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The processes of one test; prints everything they said if the test fails.
struct Mesh {
    procs: Vec<Proc>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("{}", p.dump());
            }
        }
    }
}

fn spawn_node(name: &str, data_dir: &Path, bootstrap: Option<&str>) -> Proc {
    let dir = data_dir.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "node",
        "--data-dir",
        dir,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--kad-server",
        "--api-port",
        "0",
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    Proc::spawn(name, &args)
}

/// The node's PeerId and its full dial address for `transport` ("tcp" or "quic-v1"), from
/// its `listening on` lines.
fn wait_listening(p: &Proc, transport: &str) -> (String, String) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = p.stderr();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("novacron: node ") else {
                continue;
            };
            let Some((peer, addr)) = rest.split_once(" listening on ") else {
                continue;
            };
            if addr.split('/').any(|part| part == transport) {
                return (peer.to_string(), addr.trim().to_string());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} printed no {transport} listen address within {START_TIMEOUT:?}",
            p.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last routing-table size the node printed.
fn table_size(p: &Proc) -> Option<usize> {
    p.stderr().lines().rev().find_map(|l| {
        l.strip_prefix("novacron: routing table has ")?
            .strip_suffix(" peers")?
            .parse()
            .ok()
    })
}

fn wait_tables(procs: &[&Proc], want: usize) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        let sizes: Vec<Option<usize>> = procs.iter().map(|p| table_size(p)).collect();
        if sizes.iter().all(|s| *s == Some(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "routing tables did not all reach {want} peers within {JOIN_TIMEOUT:?}: {sizes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn five_nodes_join_through_one_and_a_killed_node_rejoins_with_its_peer_id() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dirs: Vec<_> = (0..NODES)
        .map(|i| tmp.path().join(format!("n{i}")))
        .collect();
    let mut mesh = Mesh { procs: Vec::new() };

    mesh.procs.push(spawn_node("n0", &dirs[0], None));
    let (boot_id, boot_tcp) = wait_listening(&mesh.procs[0], "tcp");
    let (_, boot_quic) = wait_listening(&mesh.procs[0], "quic-v1");
    assert!(boot_tcp.ends_with(&format!("/p2p/{boot_id}")), "{boot_tcp}");
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        // Half the nodes join over QUIC.
        let via = if i % 2 == 0 { &boot_quic } else { &boot_tcp };
        mesh.procs
            .push(spawn_node(&format!("n{i}"), dir, Some(via)));
    }
    let ids: Vec<String> = mesh
        .procs
        .iter()
        .map(|p| wait_listening(p, "tcp").0)
        .collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        NODES,
        "every node has its own PeerId: {ids:?}"
    );

    // No peers other than these exist, so N-1 entries means every other node.
    wait_tables(&mesh.procs.iter().collect::<Vec<_>>(), NODES - 1);
    eprintln!("all {NODES} joined after {:?}", started.elapsed());

    // kill -9 one node and start it again on the same data directory.
    let victim = 3;
    mesh.procs[victim].kill_tree();
    let bootstrap = boot_tcp.clone();
    let again = spawn_node("n3-again", &dirs[victim], Some(&bootstrap));
    mesh.procs.push(again);
    let restarted = mesh.procs.len() - 1;
    let (again_id, _) = wait_listening(&mesh.procs[restarted], "tcp");
    assert_eq!(again_id, ids[victim], "the restarted node kept its PeerId");
    wait_tables(&[&mesh.procs[restarted]], NODES - 1);
    eprintln!("restarted node rejoined after {:?}", started.elapsed());

    // SIGTERM stops a node cleanly.
    let last = &mut mesh.procs[NODES - 1];
    // SAFETY: kill(2) with plain integers on our own child.
    let rc = unsafe { libc::kill(last.pid(), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM: {}", std::io::Error::last_os_error());
    let status = last.wait(EXIT_TIMEOUT);
    assert!(status.success(), "SIGTERM exit: {status:?}");
    assert!(
        last.stderr()
            .contains(&format!("novacron: node {} stopped", ids[NODES - 1])),
        "no stop line"
    );
}
