//! Helpers for end-to-end tests with `novacron node` processes: start one (optionally inside
//! a network namespace), read its PeerId and dial address, and wait for the cell-member
//! lines it prints (`novacron: cell member PEER up|down (N live)`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::proc::Proc;

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `novacron node` on `data_dir` listening on TCP at `ip` (port 0), serving the DHT,
/// joined through `bootstrap`; inside `wrapper` (e.g. `ip netns exec NS`) when given.
pub fn spawn_node(
    name: &str,
    data_dir: &Path,
    ip: &str,
    bootstrap: Option<&str>,
    wrapper: &[&str],
) -> Proc {
    let dir = data_dir.to_str().expect("utf-8 temp path");
    let listen = format!("/ip4/{ip}/tcp/0");
    let mut args = vec![
        "node",
        "--data-dir",
        dir,
        "--listen",
        &listen,
        "--kad-server",
        "--api-port",
        "0",
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    Proc::spawn_wrapped(name, wrapper, &args)
}

/// Starts `novacron node` on `data_dir` (mesh and API on loopback, the API on a free port)
/// with `extra` flags, and waits until it says it is ready; [`api_url`] then names its API.
pub fn spawn_api_node(name: &str, data_dir: &Path, extra: &[&str]) -> Proc {
    let dir = data_dir.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "node",
        "--data-dir",
        dir,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api-port",
        "0",
    ];
    args.extend(extra);
    let mut node = Proc::spawn(name, &args);
    assert!(
        node.wait_stderr_line("novacron: ready, API at", START_TIMEOUT)
            .is_some(),
        "{}",
        node.dump()
    );
    node
}

/// The URL a node wrote to `<data_dir>/api.url`.
pub fn api_url(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("api.url"))
        .expect("api.url")
        .trim()
        .to_string()
}

/// The node's PeerId and dial address (`.../p2p/PEERID`) from its `listening on` line.
pub fn wait_listening(p: &mut Proc) -> (String, String) {
    let line = p
        .wait_stderr_line(" listening on ", START_TIMEOUT)
        .unwrap_or_else(|| panic!("{} printed no listen address\n{}", p.name, p.dump()));
    let rest = line
        .strip_prefix("novacron: node ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let (peer, addr) = rest
        .split_once(" listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (peer.to_string(), addr.trim().to_string())
}

/// The live count of the node's last `cell member` line.
pub fn live_count(p: &Proc) -> Option<usize> {
    p.stderr().lines().rev().find_map(|l| {
        let rest = l.strip_prefix("novacron: cell member ")?;
        let (_, count) = rest.rsplit_once(" (")?;
        count.strip_suffix(" live)")?.parse().ok()
    })
}

/// How many times the node printed `member PEER <word>` (word: up or down).
pub fn member_lines(p: &Proc, peer: &str, word: &str) -> usize {
    let needle = format!("novacron: cell member {peer} {word} (");
    p.stderr()
        .lines()
        .filter(|l| l.starts_with(&needle))
        .count()
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; panics with `what` and the
/// output of `procs` then.
pub fn wait_until(what: &str, timeout: Duration, procs: &[&Proc], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            for p in procs {
                eprintln!("{}", p.dump());
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
