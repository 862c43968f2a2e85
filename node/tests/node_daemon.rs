//! The node daemon end to end: real `novacron node` processes on loopback, real jailed VMMs
//! (KVM), driven through the CLI and the REST API: mesh migration between two daemons, drain
//! on SIGTERM, the owner-activity signal, kill -9 and restart, and a metrics scrape.

#[path = "common/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "common/node_api.rs"]
mod node_api;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use guest::{counter, kvm_usable};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use mesh::{live_count, wait_listening, wait_until};
use node_api::{http, pid_alive, vmm_processes};
use proc::Proc;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Builtin guests run ~1000x slower than native here: a counter pass takes about 1.3 s
/// alone on a 2-core machine, more while other tests run.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

/// A node under test: its process, data directory, PeerId and dial address, and when this
/// run of it started (ms since the epoch, as the node records times).
struct Node {
    proc: Proc,
    dir: PathBuf,
    peer: String,
    addr: String,
    started_ms: u64,
}

/// Starts a node on `dir` (with `config` as its YAML file when given), joined through
/// `bootstrap`, and waits until its API answers.
fn start_node(name: &str, dir: &Path, bootstrap: Option<&str>, config: Option<&str>) -> Node {
    start_node_with(name, dir, bootstrap, config, &[])
}

/// [`start_node`] with `extra` flags.
fn start_node_with(
    name: &str,
    dir: &Path,
    bootstrap: Option<&str>,
    config: Option<&str>,
    extra: &[&str],
) -> Node {
    start_node_on(name, dir, "/ip4/127.0.0.1/tcp/0", bootstrap, config, extra)
}

/// As [`start_node_with`], listening on `listen`.
fn start_node_on(
    name: &str,
    dir: &Path,
    listen: &str,
    bootstrap: Option<&str>,
    config: Option<&str>,
    extra: &[&str],
) -> Node {
    let started_ms = now_ms();
    std::fs::create_dir_all(dir).unwrap();
    let dir_s = dir.to_str().unwrap().to_string();
    let mut args: Vec<String> = vec!["node".into()];
    if let Some(yaml) = config {
        let path = dir.join("node.yaml");
        std::fs::write(&path, yaml).unwrap();
        args.extend(["--config".into(), path.to_str().unwrap().into()]);
    }
    args.extend(
        [
            "--data-dir",
            &dir_s,
            "--listen",
            listen,
            "--kad-server",
            "--api-port",
            "0",
        ]
        .map(String::from),
    );
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap".into(), b.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(name, &refs);
    let (peer, addr) = wait_listening(&mut proc);
    assert!(
        proc.wait_stderr_line("novacron: ready, API at", TIMEOUT)
            .is_some(),
        "{} did not get ready\n{}",
        name,
        proc.dump()
    );
    Node {
        proc,
        dir: dir.to_path_buf(),
        peer,
        addr,
        started_ms,
    }
}

/// Kills the node's daemon with SIGKILL (its VMMs run on) and starts it again.
fn kill_and_restart(node: Node, name: &str, bootstrap: &str) -> Node {
    let mut node = node;
    signal(&node, libc::SIGKILL);
    node.proc.wait(TIMEOUT);
    restart(node, name, bootstrap)
}

/// Starts the ended node's daemon again on the same address, joined through `bootstrap`.
fn restart(node: Node, name: &str, bootstrap: &str) -> Node {
    let listen = node.addr.split("/p2p/").next().unwrap().to_string();
    start_node_on(name, &node.dir, &listen, Some(bootstrap), None, &[])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs `novacron COMMAND --data-dir DIR ARGS...` to completion (the flag right after the
/// command, so a trailing `--command PROGRAM ARGS...` stays last).
fn cli(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_novacron"));
    cmd.args(&args[..1])
        .arg("--data-dir")
        .arg(dir)
        .args(&args[1..]);
    cmd.output().expect("run novacron")
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let out = cli(dir, args);
    assert!(
        out.status.success(),
        "novacron {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "novacron {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn vms(dir: &Path) -> Vec<Value> {
    match cli_json(dir, &["vms", "--json"]) {
        Value::Array(v) => v,
        other => panic!("vms --json gave {other}"),
    }
}

fn vm(dir: &Path, id: &str) -> Option<Value> {
    vms(dir).into_iter().find(|v| v["id"] == id)
}

fn state_of(dir: &Path, id: &str) -> String {
    vm(dir, id).map_or_else(String::new, |v| v["state"].as_str().unwrap_or("").into())
}

/// Creates a VM running `guest` and returns its id.
fn create(dir: &Path, guest: &str) -> String {
    let v = cli_json(
        dir,
        &["vms", "create", "--guest", guest, "--mem", "32M", "--json"],
    );
    assert_eq!(v["state"], "running", "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn console(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join("vms").join(id).join("console.log")).unwrap_or_default()
}

/// Sends `sig` to the node's daemon process only (not its VMMs).
fn signal(node: &Node, sig: i32) {
    // SAFETY: kill(2) with plain integers on our own child.
    assert_eq!(unsafe { libc::kill(node.proc.pid(), sig) }, 0);
}

/// Every thread of `pid` runs at niceness 19 (field 19 of /proc/PID/task/TID/stat), as
/// BOINC runs volunteer work; the daemon itself keeps its own.
fn assert_runs_at_lowest_priority(pid: i64) {
    let nice_of = |stat: &str| {
        let after_comm = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
        after_comm
            .split(' ')
            .nth(16)
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the VM's process runs");
    let mut threads = 0;
    for task in tasks {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        assert_eq!(nice_of(&stat), 19, "pid {pid}: {stat}");
        threads += 1;
    }
    assert!(threads >= 1);
    let own = std::fs::read_to_string("/proc/self/stat").unwrap();
    if nice_of(&own) == 19 {
        eprintln!("note: this test runs at niceness 19 itself, so the check proves little");
    }
}

/// Plain HTTP GET on the node's API; (status, body).
fn http_get(dir: &Path, path: &str) -> (u16, String) {
    http(dir, "GET", path, None)
}

/// Stops every VM still active on the node (test cleanup: adopted VMMs are no children of
/// the test's processes, so dropping them would not kill them).
fn stop_all(dir: &Path) {
    for v in vms(dir) {
        if matches!(v["state"].as_str(), Some("running" | "paused")) {
            let _ = cli(dir, &["vms", "stop", v["id"].as_str().unwrap()]);
        }
    }
}

#[test]
fn a_live_migration_between_two_daemons_keeps_the_counter_result() {
    if !kvm_usable("a_live_migration_between_two_daemons_keeps_the_counter_result") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("a", &tmp.path().join("a"), None, None);
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    let (guest, expected) = counter(8);
    let id = create(&a.dir, &guest);
    let out = cli(
        &a.dir,
        &["migrate", &id, "--to", &b.peer, "--mode", "live", "--json"],
    );
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "migrate failed: {lines}{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.proc.dump(),
        b.proc.dump()
    );
    let last: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["peer"], b.peer.as_str());
    assert!(last["downtime_ms"].as_f64().is_some(), "{last}");
    assert_eq!(state_of(&a.dir, &id), "moved_away");
    assert_eq!(state_of(&b.dir, &id), "running");
    // The migration is on record on both sides, in each node's database.
    let inbound = cli_json(&b.dir, &["vms", "show", &id, "--json"]);
    assert_eq!(inbound["id"], id.as_str());
    wait_until(
        "the guest to finish on b",
        GUEST_TIMEOUT,
        &[&a.proc, &b.proc],
        || console(&b.dir, &id).contains(&expected),
    );
    assert!(
        !console(&a.dir, &id).contains(&expected),
        "the guest finished on the source too"
    );
    wait_until("the VM to exit on b", TIMEOUT, &[&b.proc], || {
        state_of(&b.dir, &id) == "exited"
    });
    assert!(vmm_processes(&id).is_empty(), "a VMM of {id} is left");
}

#[test]
fn sigterm_drains_every_vm_to_a_peer_before_exit() {
    if !kvm_usable("sigterm_drains_every_vm_to_a_peer_before_exit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut a = start_node("a", &tmp.path().join("a"), None, None);
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    wait_until(
        "b to see a in its cell",
        TIMEOUT,
        &[&a.proc, &b.proc],
        || live_count(&a.proc) == Some(2),
    );
    let (guest, _) = counter(2000);
    let ids = [create(&a.dir, &guest), create(&a.dir, &guest)];
    signal(&a, libc::SIGTERM);
    let status = a.proc.wait(TIMEOUT);
    assert!(
        status.success(),
        "a did not drain cleanly\n{}",
        a.proc.dump()
    );
    assert!(
        a.proc.stderr().contains("novacron: drained"),
        "{}",
        a.proc.dump()
    );
    // The source is done at the destination's confirm; the destination records the VM
    // as running a moment later, when its VMM reports it.
    wait_until("both VMs running on b", TIMEOUT, &[&b.proc], || {
        ids.iter().all(|id| state_of(&b.dir, id) == "running")
    });
    stop_all(&b.dir);
    // The sources' VMMs end on their own after the confirm; none may stay.
    wait_until("no VMM of the moved VMs left", TIMEOUT, &[&b.proc], || {
        ids.iter().all(|id| vmm_processes(id).is_empty())
    });
}

#[test]
fn the_owner_needing_the_machine_moves_vms_away() {
    if !kvm_usable("the_owner_needing_the_machine_moves_vms_away") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    // This host has no input devices: the hook says the owner has been away a long time.
    std::fs::write(a_dir.join("owner-idle"), b"").unwrap();
    let a = start_node(
        "a",
        &a_dir,
        None,
        Some("politeness: {runWhileInUse: false}\n"),
    );
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    wait_until("a and b in one cell", TIMEOUT, &[&a.proc, &b.proc], || {
        live_count(&a.proc) == Some(2)
    });
    let (guest, _) = counter(2000);
    let id = create(&a.dir, &guest);
    let p = cli_json(&a.dir, &["status", "--json"]);
    assert_eq!(p["politeness"]["state"], "run", "{p}");
    // The owner comes back.
    std::fs::remove_file(a_dir.join("owner-idle")).unwrap();
    std::fs::write(a_dir.join("owner-active"), b"").unwrap();
    wait_until("the VM to move to b", TIMEOUT, &[&a.proc, &b.proc], || {
        state_of(&b.dir, &id) == "running" && state_of(&a.dir, &id) == "moved_away"
    });
    let p = cli_json(&a.dir, &["status", "--json"]);
    assert_eq!(p["politeness"]["state"], "evacuate", "{p}");
    // While the owner is active, the node takes no new VMs.
    let out = cli(&a.dir, &["vms", "create", "--guest", &guest, "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owner"), "{err}");
    stop_all(&b.dir);
}

#[test]
fn a_daemon_killed_with_sigkill_finds_every_vm_again() {
    if !kvm_usable("a_daemon_killed_with_sigkill_finds_every_vm_again") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let config = "checkpointIntervalS: 5\n";
    let mut a = start_node("a", &dir, None, Some(config));
    let (guest, expected) = counter(30);
    let running = create(&dir, &guest);
    let paused = create(&dir, &guest);
    let v = cli_json(&dir, &["vms", "pause", &paused, "--json"]);
    assert_eq!(v["state"], "paused", "{v}");
    wait_until(
        "a checkpoint of the running VM",
        TIMEOUT,
        &[&a.proc],
        || vm(&dir, &running).is_some_and(|v| v["snapshot_at_ms"].is_u64()),
    );
    let before = vms(&dir);
    let pid_of = |vms: &[Value], id: &str| {
        vms.iter()
            .find(|v| v["id"] == id)
            .and_then(|v| v["pid"].as_i64())
            .unwrap_or(0)
    };
    let (run_pid, paused_pid) = (pid_of(&before, &running), pid_of(&before, &paused));
    for pid in [run_pid, paused_pid] {
        assert_runs_at_lowest_priority(pid);
    }

    // kill -9 of the daemon alone: the VMMs run on and are adopted.
    signal(&a, libc::SIGKILL);
    a.proc.wait(TIMEOUT);
    assert!(pid_alive(run_pid) && pid_alive(paused_pid));
    let mut a = start_node("a2", &dir, None, Some(config));
    assert!(a.proc.stderr().contains("2 adopted"), "{}", a.proc.dump());
    let after = vms(&dir);
    for (id, state, pid) in [
        (&running, "running", run_pid),
        (&paused, "paused", paused_pid),
    ] {
        let v = after.iter().find(|v| v["id"] == id.as_str()).unwrap();
        assert_eq!(v["state"], state, "{v}");
        assert_eq!(v["pid"].as_i64(), Some(pid), "{v}");
        assert_eq!(v["adoptions"], 1, "{v}");
    }
    // The adopted VMMs still obey.
    let v = cli_json(&dir, &["vms", "resume", &paused, "--json"]);
    assert_eq!(v["state"], "running", "{v}");

    // kill -9 of the daemon and of one VMM: that VM comes back from its checkpoint, the
    // other is adopted again; none is lost and none runs twice.
    signal(&a, libc::SIGKILL);
    a.proc.wait(TIMEOUT);
    // SAFETY: kill(2) on the pid the node reported for its VMM.
    unsafe { libc::kill(run_pid as i32, libc::SIGKILL) };
    wait_until("the VMM to die", TIMEOUT, &[], || {
        vmm_processes(&running).len() <= 1 && !pid_alive(run_pid)
    });
    let a = start_node("a3", &dir, None, Some(config));
    let err = a.proc.stderr();
    assert!(err.contains("1 adopted, 1 restored"), "{}", a.proc.dump());
    let v = vm(&dir, &running).unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_ne!(v["pid"].as_i64(), Some(run_pid), "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("checkpoint"),
        "{v}"
    );
    assert_eq!(vm(&dir, &paused).unwrap()["adoptions"], 2);
    // The restored guest still computes the right result.
    wait_until(
        "the restored guest to finish",
        GUEST_TIMEOUT,
        &[&a.proc],
        || console(&dir, &running).contains(&expected),
    );

    // A real daemon's metrics parse as Prometheus text.
    let (status, body) = http_get(&dir, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let vm_gauge = |state: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "novacron_vms" && s.labels.get("state") == Some(state))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => -1.0,
            })
    };
    assert!(vm_gauge("running").is_some(), "{body}");
    stop_all(&dir);
    for id in [&running, &paused] {
        assert!(vmm_processes(id).is_empty(), "a VMM of {id} is left");
    }
}

#[test]
fn an_ephemeral_nodes_vms_die_with_it_even_by_sigkill() {
    if !kvm_usable("an_ephemeral_nodes_vms_die_with_it_even_by_sigkill") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("e");
    let mut e = start_node_with("e", &dir, None, None, &["--ephemeral"]);
    let (guest, _) = counter(1000);
    let id = create(&dir, &guest);
    let pid = vm(&dir, &id).and_then(|v| v["pid"].as_i64()).unwrap_or(0);
    assert!(pid_alive(pid), "{}", e.proc.dump());
    // Unlike a_daemon_killed_with_sigkill_finds_every_vm_again: nobody will adopt it.
    signal(&e, libc::SIGKILL);
    e.proc.wait(TIMEOUT);
    wait_until(
        "the VMM to die with its node",
        Duration::from_secs(10),
        &[],
        || !pid_alive(pid) && vmm_processes(&id).is_empty(),
    );
}

#[test]
fn a_vm_paused_after_a_migration_in_doubt_is_neither_moved_nor_parked() {
    if !kvm_usable("a_vm_paused_after_a_migration_in_doubt_is_neither_moved_nor_parked") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let a = start_node("a", &dir, None, None);
    let (guest, _) = counter(2000);
    let id = create(&dir, &guest);
    let v = cli_json(&dir, &["vms", "pause", &id, "--json"]);
    assert_eq!(v["state"], "paused", "{v}");
    let pid = vm(&dir, &id).unwrap()["pid"].as_i64().unwrap();
    // What a migration that ended in doubt leaves (the VMM-level path is tested in
    // mesh_migrate.rs): the VM paused here, its last migration failed "in doubt".
    signal(&a, libc::SIGKILL);
    let mut a = a;
    a.proc.wait(TIMEOUT);
    let peer = "12D3KooWPeerThatMayRunItxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let db = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    db.execute(
        "INSERT INTO migrations (id, vm_id, direction, peer, mode, state, started_at_ms,
             ended_at_ms, wire_bytes, error)
         VALUES ('00112233aabbccdd', ?1, 'out', ?2, 'live', 'failed', 1, 2, 0,
             'in doubt: nobody could say whether the destination started the VM')",
        [&id, peer],
    )
    .unwrap();
    drop(db);
    let mut a = start_node("a2", &dir, None, None);
    assert!(a.proc.stderr().contains("1 adopted"), "{}", a.proc.dump());
    assert_eq!(state_of(&dir, &id), "paused");

    // Moving it could run it twice: refused, saying what to do.
    let out = cli(&dir, &["migrate", &id, "--to", "auto"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in doubt") && err.contains(peer), "{err}");

    // A drain neither moves nor snapshots it (a snapshot would come back running): the
    // node exits and leaves it paused for the next start.
    signal(&a, libc::SIGTERM);
    let status = a.proc.wait(TIMEOUT);
    assert!(status.success(), "{}", a.proc.dump());
    assert!(pid_alive(pid), "the paused VM's VMM was stopped");
    let a = start_node("a3", &dir, None, None);
    assert!(a.proc.stderr().contains("1 adopted"), "{}", a.proc.dump());
    assert_eq!(state_of(&dir, &id), "paused");
    // An operator who checked the peer decides; after that the VM is an ordinary one (a
    // pause later does not make it look in doubt again).
    let v = cli_json(&dir, &["vms", "resume", &id, "--json"]);
    assert_eq!(v["state"], "running", "{v}");
    let v = cli_json(&dir, &["vms", "pause", &id, "--json"]);
    assert_eq!(v["state"], "paused", "{v}");
    let out = cli(&dir, &["migrate", &id, "--to", "auto"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("in doubt"), "{err}");
    let v = cli_json(&dir, &["vms", "stop", &id, "--json"]);
    assert_eq!(v["state"], "exited", "{v}");
    assert!(vmm_processes(&id).is_empty(), "a VMM of {id} is left");
}

#[test]
fn bad_api_bodies_get_clear_errors_from_a_real_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("a", &tmp.path().join("a"), None, None);
    let out = cli(
        &a.dir,
        &["vms", "create", "--guest", "builtin:nope", "--json"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest") && err.contains("400"), "{err}");
    let out = cli(&a.dir, &["vms", "stop", "0123456789abcdef"]);
    assert!(!out.status.success());
    let (status, body) = http_get(&a.dir, "/api/v1/vms/nope");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
}

/// `peer`'s entry in the cell as the node on `by` reports it (`GET /api/v1/peers`).
fn member_seen(by: &Path, peer: &str) -> Option<Value> {
    let (status, body) = http_get(by, "/api/v1/peers");
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Vec<Value>>(&body)
        .ok()?
        .into_iter()
        .find(|m| m["peer_id"] == peer)
}

/// Waits until the node on `by` hears `peer` gossip `free` free slots.
fn wait_free_slots(by: &Node, peer: &Node, free: u64) {
    wait_until(
        &format!(
            "{} to hear {free} free slots of {}",
            by.proc.name, peer.proc.name
        ),
        TIMEOUT,
        &[&by.proc, &peer.proc],
        || member_seen(&by.dir, &peer.peer).is_some_and(|m| m["free_slots"] == free),
    );
}

#[test]
fn a_node_admits_by_its_slots_and_memory_and_its_cell_hears_what_is_left() {
    if !kvm_usable("a_node_admits_by_its_slots_and_memory_and_its_cell_hears_what_is_left") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // One slot each, whatever this host's CPUs (maxCpusPct rounds down, to at least one).
    let config = "politeness: {maxCpusPct: 1}\n";
    let a = start_node("a", &tmp.path().join("a"), None, Some(config));
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), Some(config));
    wait_until("a and b in one cell", TIMEOUT, &[&a.proc, &b.proc], || {
        live_count(&a.proc) == Some(2)
    });
    wait_free_slots(&b, &a, 1);
    assert_eq!(member_seen(&b.dir, &a.peer).unwrap()["vcpus"], 1);

    // More memory than the politeness cap leaves: 503 naming it, nothing recorded.
    let huge = serde_json::json!({"guest": "builtin:idle", "mem_mib": 1u64 << 20});
    let (status, body) = http(&a.dir, "POST", "/api/v1/vms", Some(&huge));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("memory: 1048576 MiB asked"), "{body}");
    assert!(vms(&a.dir).is_empty());

    // A VM takes a's slot: the next one is refused naming the slots, and b hears it.
    let on_a = create(&a.dir, "builtin:idle");
    let idle = serde_json::json!({"guest": "builtin:idle", "mem_mib": 32});
    let (status, body) = http(&a.dir, "POST", "/api/v1/vms", Some(&idle));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("slots: 1 in use of 1"), "{body}");
    assert_eq!(vms(&a.dir).len(), 1);
    wait_free_slots(&b, &a, 0);

    // b full too: placement skips it, and b refuses the VM when named, by the same rule.
    let on_b = create(&b.dir, "builtin:idle");
    wait_free_slots(&a, &b, 0);
    let out = cli(&a.dir, &["migrate", &on_a, "--to", "auto"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("free slot"), "{err}");
    let out = cli(&a.dir, &["migrate", &on_a, "--to", &b.peer]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("slots: 1 in use of 1"), "{err}");
    assert_eq!(state_of(&a.dir, &on_a), "running");
    assert_eq!(vms(&b.dir).len(), 1, "b recorded nothing of the refused VM");

    // A VM that stops frees its slot, and the cell hears that too.
    let v = cli_json(&b.dir, &["vms", "stop", &on_b, "--json"]);
    assert_eq!(v["state"], "exited", "{v}");
    wait_free_slots(&a, &b, 1);
    stop_all(&a.dir);
    wait_free_slots(&b, &a, 1);
}

#[test]
fn delete_stops_a_running_vm_and_removes_one_that_ended() {
    if !kvm_usable("delete_stops_a_running_vm_and_removes_one_that_ended") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = start_node("a", &dir, None, None);
    let vm_path = |id: &str| format!("/api/v1/vms/{id}");
    // A guest that prints and exits: its record stays, exited.
    let hello = serde_json::json!({"guest": "builtin:hello", "mem_mib": 32});
    let (status, body) = http(&dir, "POST", "/api/v1/vms", Some(&hello));
    assert_eq!(status, 201, "{body}");
    let ended: Value = serde_json::from_str(&body).unwrap();
    let ended = ended["id"].as_str().unwrap().to_string();
    wait_until("the hello guest to exit", GUEST_TIMEOUT, &[&a.proc], || {
        state_of(&dir, &ended) == "exited"
    });
    assert!(dir.join("vms").join(&ended).join("console.log").is_file());
    // stop refuses it, pointing at rm; rm of a running VM is refused the other way.
    let out = cli(&dir, &["vms", "stop", &ended]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vms rm"));
    let running = create(&dir, "builtin:idle");
    let out = cli(&dir, &["vms", "rm", &running]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));

    // DELETE of the VM that ended removes its record and its files.
    let (status, body) = http(&dir, "DELETE", &vm_path(&ended), None);
    assert_eq!(status, 204, "{body}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(http_get(&dir, &vm_path(&ended)).0, 404);
    assert!(!dir.join("vms").join(&ended).exists());

    // DELETE of a running VM stops it and keeps its record; a second one removes it (the
    // node may still be reaping its VMM for a moment: 409, try again).
    let (status, body) = http(&dir, "DELETE", &vm_path(&running), None);
    assert_eq!(status, 200, "{body}");
    let stopped: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert!(vm(&dir, &running).is_some());
    wait_until("the stopped VM to be removed", TIMEOUT, &[&a.proc], || {
        let (status, body) = http(&dir, "DELETE", &vm_path(&running), None);
        assert!(status == 204 || status == 409, "{status} {body}");
        status == 204
    });
    assert!(vms(&dir).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(http(&dir, "DELETE", &vm_path(&running), None).0, 404);

    // Gone for good: a restarted node does not find them.
    signal(&a, libc::SIGKILL);
    a.proc.wait(TIMEOUT);
    let _a = start_node("a2", &dir, None, None);
    assert!(vms(&dir).is_empty());
}

/// `GET /api/v1/politeness` of the node on `dir`.
fn politeness(dir: &Path) -> Value {
    let (status, body) = http_get(dir, "/api/v1/politeness");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_owner_override_beats_the_hook_files_and_outlives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    // The hook file says the owner is away; in idle-only mode VMs may run.
    std::fs::write(dir.join("owner-idle"), b"").unwrap();
    let config = Some("politeness: {runWhileInUse: false}\n");
    let mut a = start_node("a", &dir, None, config);
    wait_until("the policy to run VMs", TIMEOUT, &[&a.proc], || {
        politeness(&dir)["state"] == "run"
    });
    assert_eq!(politeness(&dir)["owner_override"], "auto");

    // "I'm using it": the answer already carries the new decision.
    let (status, body) = http(
        &dir,
        "POST",
        "/api/v1/politeness/owner",
        Some(&serde_json::json!({"owner": "active"})),
    );
    assert_eq!(status, 200, "{body}");
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (p["state"].as_str(), p["owner_override"].as_str()),
        (Some("evacuate"), Some("active"))
    );
    assert!(p["reasons"].to_string().contains("owner"), "{p}");
    // The node takes no VM meanwhile, saying why.
    let idle = serde_json::json!({"guest": "builtin:idle", "mem_mib": 32});
    let (status, body) = http(&dir, "POST", "/api/v1/vms", Some(&idle));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the owner needs the machine"), "{body}");

    // Kept across a restart (kill -9 included).
    signal(&a, libc::SIGKILL);
    a.proc.wait(TIMEOUT);
    let a = start_node("a2", &dir, None, config);
    wait_until("the kept override to decide", TIMEOUT, &[&a.proc], || {
        let p = politeness(&dir);
        p["state"] == "evacuate" && p["owner_override"] == "active"
    });

    // The CLI sets it too: auto hands the owner back to the hook file (idle: run) ...
    let p = cli_json(&dir, &["owner", "auto", "--json"]);
    assert_eq!(
        (p["state"].as_str(), p["owner_override"].as_str()),
        (Some("run"), Some("auto"))
    );
    assert!(!dir.join("owner-override").exists());
    // ... and the override beats the hook file either way.
    std::fs::remove_file(dir.join("owner-idle")).unwrap();
    std::fs::write(dir.join("owner-active"), b"").unwrap();
    wait_until("the hook file to decide", TIMEOUT, &[&a.proc], || {
        politeness(&dir)["state"] == "evacuate"
    });
    let p = cli_json(&dir, &["owner", "idle", "--json"]);
    assert_eq!(
        (p["state"].as_str(), p["owner_override"].as_str()),
        (Some("run"), Some("idle"))
    );
    let out = cli(&dir, &["owner", "auto"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("politeness  evacuate"), "{text}");
}

#[test]
fn bad_vm_specs_get_400_naming_the_field_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("a", &tmp.path().join("a"), None, None);
    // A file outside the node's image directories, and one inside that is no kernel; both
    // begin as /etc/passwd does.
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let images = a.dir.join("images");
    assert!(
        images.is_dir(),
        "the default image directory is made at start"
    );
    let notes = images.join("notes.txt");
    std::fs::write(&notes, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let escape = images.join("escape");
    std::os::unix::fs::symlink(&secret, &escape).unwrap();
    let cases = [
        // The dirtier's default working set (96 MiB + 128 MiB) does not fit 64 MiB.
        (
            serde_json::json!({"guest": "builtin:dirtier", "mem_mib": 64}),
            "guest: ",
        ),
        // Its data would overwrite the boot tables.
        (
            serde_json::json!({"guest": "builtin:counter:passes=1,base=0x0", "mem_mib": 64}),
            "guest: ",
        ),
        (
            serde_json::json!({"kernel": "/etc/passwd", "mem_mib": 64}),
            "kernel: ",
        ),
        (
            serde_json::json!({"kernel": secret, "mem_mib": 64}),
            "kernel: ",
        ),
        (
            serde_json::json!({"kernel": escape, "mem_mib": 64}),
            "kernel: ",
        ),
        (
            serde_json::json!({"kernel": images.join("../../secret"), "mem_mib": 64}),
            "kernel: ",
        ),
        (
            serde_json::json!({"kernel": notes, "mem_mib": 64}),
            "kernel: ",
        ),
    ];
    for (spec, field) in cases {
        let (status, body) = http(&a.dir, "POST", "/api/v1/vms", Some(&spec));
        assert_eq!(status, 400, "{spec}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(error.starts_with(field), "{spec}: {error}");
        for leak in ["root:", "bash", "72 6f 6f 74"] {
            assert!(!error.contains(leak), "{spec}: {error}");
        }
    }
    // Nothing was recorded, nothing made on disk.
    assert!(vms(&a.dir).is_empty());
    let vm_dirs = std::fs::read_dir(a.dir.join("vms")).map_or(0, |d| d.count());
    assert_eq!(vm_dirs, 0);
}

#[test]
fn the_cli_reaches_an_https_api_by_the_node_certificate_and_refuses_another() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node(
        "a",
        &tmp.path().join("a"),
        None,
        Some("api: {tlsEnabled: true}\n"),
    );
    let url = std::fs::read_to_string(a.dir.join("api.url")).unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // The CLI trusts the certificate the node made in its data directory.
    let status = cli_json(&a.dir, &["status", "--json"]);
    assert!(status.to_string().contains(&a.peer), "{status}");
    assert!(cli_json(&a.dir, &["vms", "--json"]).is_array());

    // The event stream is a WebSocket over the same TLS.
    let mut events =
        kvm_usable("the_cli_reaches_an_https_api_by_the_node_certificate").then(|| {
            Proc::spawn(
                "events",
                &["events", "--json", "--data-dir", a.dir.to_str().unwrap()],
            )
        });
    if let Some(events) = &mut events {
        std::thread::sleep(Duration::from_millis(500)); // let it subscribe
        let (guest, _) = counter(1);
        let id = create(&a.dir, &guest);
        wait_until("the VM's event over https", TIMEOUT, &[&a.proc], || {
            events.stdout().contains(&id)
        });
        stop_all(&a.dir);
        events.kill_tree();
    }

    // Trusting another certificate, the CLI refuses the node's and says so.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_pem = tmp.path().join("other.crt");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let out = cli(&a.dir, &["status", "--ca", other_pem.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");

    // Plain http on the https port gets no answer (the server may close the connection
    // before the request is written: a broken pipe is no answer either).
    let host = url.trim().trim_start_matches("https://").to_string();
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(s, "GET /api/v1/node HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain http answered");
}

#[test]
fn a_process_vm_moves_cold_and_is_adopted_after_kill_9() {
    if !nix_root("a_process_vm_moves_cold_and_is_adopted_after_kill_9") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The jailed command runs as nobody: it must be able to traverse to its work directory.
    for d in [
        tmp.path().to_path_buf(),
        tmp.path().join("a"),
        tmp.path().join("b"),
    ] {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    }
    let a = start_node("a", &tmp.path().join("a"), None, None);
    let mut b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    let script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    let v = cli_json(
        &a.dir,
        &[
            "vms",
            "create",
            "--backend",
            "process",
            "--json",
            "--command",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    let id = v["id"].as_str().unwrap().to_string();
    wait_until("the command to print on a", TIMEOUT, &[&a.proc], || {
        console(&a.dir, &id).contains("tick 2")
    });
    // A live move is refused: a process has no memory to copy.
    let out = cli(&a.dir, &["migrate", &id, "--to", &b.peer, "--mode", "live"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold"));
    let out = cli(
        &a.dir,
        &["migrate", &id, "--to", &b.peer, "--mode", "cold", "--json"],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&a.dir, &id), "moved_away");
    wait_until("the command to run on b", TIMEOUT, &[&b.proc], || {
        console(&b.dir, &id).contains("tick 2")
    });
    let pid = vm(&b.dir, &id).unwrap()["pid"].as_i64().unwrap();
    assert_runs_at_lowest_priority(pid);
    signal(&b, libc::SIGKILL);
    b.proc.wait(TIMEOUT);
    assert!(pid_alive(pid), "the command died with its daemon");
    // As if b had died between starting the command and recording the move done: its
    // record of the incoming migration is still open.
    let db = rusqlite::Connection::open(b.dir.join("state.db")).unwrap();
    let reopened = db
        .execute(
            "UPDATE migrations SET state = 'running', ended_at_ms = NULL
             WHERE vm_id = ?1 AND direction = 'in' AND state = 'done'",
            [&id],
        )
        .unwrap();
    assert_eq!(reopened, 1, "b's record of the incoming migration");
    drop(db);
    let b = start_node("b2", &b.dir, Some(&a.addr), None);
    assert!(b.proc.stderr().contains("1 adopted"), "{}", b.proc.dump());
    // The adopted command is the VM started here: the restart closes the record as done,
    // so a source in doubt that asks is told "started".
    let (status, body) = http_get(&b.dir, "/api/v1/migrations");
    assert_eq!(status, 200, "{body}");
    let migrations: Vec<Value> = serde_json::from_str(&body).unwrap();
    let incoming = migrations
        .iter()
        .find(|m| m["vm_id"] == id.as_str() && m["direction"] == "in")
        .unwrap_or_else(|| panic!("no incoming migration of {id}: {body}"));
    assert_eq!(incoming["state"], "done", "{incoming}");
    let v = vm(&b.dir, &id).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid)),
        "{v}"
    );
    let v = cli_json(&b.dir, &["vms", "stop", &id, "--json"]);
    assert_eq!(v["state"], "exited", "{v}");
    assert!(!pid_alive(pid));
}

fn nix_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: the process jail needs root (namespaces, cgroups)");
    }
    root
}

#[test]
fn a_vm_no_peer_takes_is_snapshotted_at_drain_and_resumes_at_the_next_start() {
    if !kvm_usable("a_vm_no_peer_takes_is_snapshotted_at_drain_and_resumes_at_the_next_start") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = start_node("a", &dir, None, None);
    let (guest, expected) = counter(12);
    let id = create(&dir, &guest);
    wait_until("the guest to make progress", TIMEOUT, &[&a.proc], || {
        vm(&dir, &id).is_some_and(|v| v["last_report"].is_array())
    });
    // Alone in the mesh: nobody can take the VM, so the drain parks it on disk.
    signal(&a, libc::SIGTERM);
    assert!(a.proc.wait(TIMEOUT).success(), "{}", a.proc.dump());
    assert!(vmm_processes(&id).is_empty(), "the VMM outlived the drain");
    assert!(dir
        .join("vms")
        .join(&id)
        .join("snapshot/MANIFEST")
        .is_file());
    // The next start finds it suspended and, the policy allowing, resumes it from there.
    let a = start_node("a2", &dir, None, None);
    wait_until("the VM to resume", TIMEOUT, &[&a.proc], || {
        state_of(&dir, &id) == "running"
    });
    let v = vm(&dir, &id).unwrap();
    assert!(
        v["detail"].as_str().unwrap_or("").contains("checkpoint"),
        "{v}"
    );
    wait_until(
        "the resumed guest to finish",
        GUEST_TIMEOUT,
        &[&a.proc],
        || console(&dir, &id).contains(&expected),
    );
    assert_eq!(console(&dir, &id).matches(&expected).count(), 1);
}

/// The node's migration records (newest first).
fn migrations(dir: &Path) -> Vec<Value> {
    let (status, body) = http_get(dir, "/api/v1/migrations");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("migrations: {e}: {body}"))
}

fn migration(dir: &Path, id: &str) -> Option<Value> {
    migrations(dir).into_iter().find(|m| m["id"] == id)
}

/// Whether a migration record has its final outcome: ended, and not in doubt.
fn settled(m: &Value) -> bool {
    let in_doubt = m["direction"] == "out"
        && m["state"] == "failed"
        && m["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("in doubt:"));
    m["state"] != "running" && !in_doubt
}

/// `novacron_migrations_total` by (direction, result), the zeros left out.
fn migrations_total(dir: &Path) -> BTreeMap<(String, String), u64> {
    let (status, body) = http_get(dir, "/metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "novacron_migrations_total")
        .filter_map(|s| {
            let prometheus_parse::Value::Counter(v) = s.value else {
                panic!("{s:?} is no counter");
            };
            let key = (s.labels.get("direction")?, s.labels.get("result")?);
            (v > 0.0).then(|| ((key.0.to_string(), key.1.to_string()), v as u64))
        })
        .collect()
}

/// What the counters of a node's current run must say: the records it settled since it
/// started (a restart starts the counters again; each run counts what it settles), by
/// direction and result.
fn settled_in_this_run(node: &Node) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for m in migrations(&node.dir) {
        if settled(&m) && m["ended_at_ms"].as_u64().unwrap_or(0) >= node.started_ms {
            let key = (
                m["direction"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            );
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

/// The cgroups (one per VMM, named after the VM and the node) that processes of VM `id`
/// run in.
fn vmm_cgroups(id: &str) -> BTreeSet<String> {
    let needle = format!("/vm-{id}-");
    vmm_processes(id)
        .into_iter()
        .filter_map(|pid| {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let at = cgroups.find(&needle)?;
            let name = cgroups[at + 1..].split(['/', '\n']).next()?;
            Some(name.to_string())
        })
        .collect()
}

/// Who is killed, relative to the migration.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Source,
    Destination,
}

/// When, as the source's record shows the migration.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KillAt {
    /// As soon as `migrate --detach` returned (the destination accepted the offer).
    Accepted,
    /// While the first round's chunks travel (live: the VM runs).
    Precopy,
    /// While the memory travels with the VM paused (warm).
    Paused,
    /// At the first sight of the wait for the confirm, or of the end if it passed unseen.
    Ending,
}

/// Moves VM `id` from `nodes[from]` to the other node with `migrate --detach`, kills the
/// daemon of `victim` at `at` and restarts it, waits until both records of the migration
/// settled, and checks the truth: the VM runs in exactly one place, both records say where
/// (done: there; failed: here), and each node's counters count what its current run
/// settled. Returns where the VM runs now.
fn migrate_and_kill(
    nodes: &mut [Option<Node>; 2],
    from: usize,
    id: &str,
    victim: Victim,
    at: KillAt,
) -> usize {
    let to = 1 - from;
    let (src, dst) = (nodes[from].as_ref().unwrap(), nodes[to].as_ref().unwrap());
    let mode = if at == KillAt::Paused { "warm" } else { "live" };
    let started = cli_json(
        &src.dir,
        &[
            "migrate", id, "--to", &dst.peer, "--mode", mode, "--detach", "--json",
        ],
    );
    let mid = started["id"].as_str().unwrap().to_string();
    let phase = |m: &Value| m["progress"]["phase"].as_str().unwrap_or("").to_string();
    // Well inside the first (or, warm, the only) round of the prefilled memory.
    let under_way = || {
        let m = migration(&src.dir, &mid).unwrap();
        assert_eq!(m["state"], "running", "the migration ended first: {m}");
        m["wire_bytes"].as_u64().unwrap_or(0) > 4 << 20
    };
    let procs = [&src.proc, &dst.proc];
    match at {
        KillAt::Accepted => {}
        KillAt::Precopy | KillAt::Paused => {
            wait_until("the first round", TIMEOUT, &procs, under_way)
        }
        KillAt::Ending => wait_until("the end", TIMEOUT, &procs, || {
            let m = migration(&src.dir, &mid).unwrap();
            m["state"] != "running" || phase(&m) == "await_confirm"
        }),
    }
    let (killed, other) = match victim {
        Victim::Source => (from, to),
        Victim::Destination => (to, from),
    };
    let bootstrap = nodes[other].as_ref().unwrap().addr.clone();
    let node = nodes[killed].take().unwrap();
    let name = format!("{}+", node.proc.name);
    nodes[killed] = Some(kill_and_restart(node, &name, &bootstrap));
    let (src, dst) = (nodes[from].as_ref().unwrap(), nodes[to].as_ref().unwrap());
    let context = format!("migration {mid} of {id}, {victim:?} killed at {at:?}");
    wait_until(
        &format!("both records of {context} to settle"),
        Duration::from_secs(150),
        &[&src.proc, &dst.proc],
        || {
            migration(&src.dir, &mid).is_some_and(|m| settled(&m))
                && migration(&dst.dir, &mid).is_none_or(|m| settled(&m))
        },
    );
    let out = migration(&src.dir, &mid).unwrap();
    let moved = out["state"] == "done";
    eprintln!("{context}: {} ({})", out["state"], out["error"]);
    match migration(&dst.dir, &mid) {
        Some(inc) => assert_eq!(inc["state"], out["state"], "{context}: {out} vs {inc}"),
        // A destination that died before it recorded anything never received the VM.
        None => assert!(!moved, "{context}: done without a record there: {out}"),
    }
    let (here, there) = if moved { (to, from) } else { (from, to) };
    let (runs, left) = (
        nodes[here].as_ref().unwrap(),
        nodes[there].as_ref().unwrap(),
    );
    let placed = || state_of(&runs.dir, id) == "running" && vmm_cgroups(id).len() == 1;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !placed() {
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: the VM does not run where its records say ({out}): {} on {}, {} on \
             {}, VMMs in {:?}\n{}\n{}",
            state_of(&runs.dir, id),
            runs.proc.name,
            state_of(&left.dir, id),
            left.proc.name,
            vmm_cgroups(id),
            runs.proc.dump(),
            left.proc.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = state_of(&left.dir, id);
    assert!(
        gone.is_empty() || gone == "moved_away",
        "{context}: the VM is {gone} where it does not run"
    );
    for node in [runs, left] {
        assert_eq!(
            migrations_total(&node.dir),
            settled_in_this_run(node),
            "{context}: counters of {}",
            node.proc.name
        );
    }
    here
}

#[test]
fn records_and_counters_on_both_sides_tell_the_truth_whichever_daemon_is_killed_when() {
    if !kvm_usable(
        "records_and_counters_on_both_sides_tell_the_truth_whichever_daemon_is_killed_when",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("a", &tmp.path().join("a"), None, None);
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    // 128 MiB of pattern: the first round takes seconds, so a kill during it lands there;
    // the counter runs far longer than the test.
    let (guest, _) = counter(100_000);
    let v = cli_json(
        &a.dir,
        &[
            "vms",
            "create",
            "--guest",
            &guest,
            "--mem",
            "256M",
            "--prefill",
            "128M",
            "--json",
        ],
    );
    let id = v["id"].as_str().unwrap().to_string();
    let mut nodes = [Some(a), Some(b)];
    let mut at = 0;
    for (victim, when) in [
        (Victim::Destination, KillAt::Accepted),
        (Victim::Destination, KillAt::Precopy),
        (Victim::Source, KillAt::Precopy),
        (Victim::Destination, KillAt::Paused),
        (Victim::Source, KillAt::Paused),
        (Victim::Destination, KillAt::Ending),
        (Victim::Source, KillAt::Ending),
    ] {
        at = migrate_and_kill(&mut nodes, at, &id, victim, when);
    }
    let runs = nodes[at].as_ref().unwrap();
    let v = cli_json(&runs.dir, &["vms", "stop", &id, "--json"]);
    assert_eq!(v["state"], "exited", "{v}");
    assert!(vmm_processes(&id).is_empty(), "a VMM of {id} is left");
}

#[test]
fn a_source_in_doubt_settles_from_its_peers_answer_when_it_starts() {
    if !kvm_usable("a_source_in_doubt_settles_from_its_peers_answer_when_it_starts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = start_node("a", &tmp.path().join("a"), None, None);
    let b = start_node("b", &tmp.path().join("b"), Some(&a.addr), None);
    let (guest, _) = counter(100_000);
    let moved = create(&a.dir, &guest);
    let stays = create(&a.dir, &guest);
    let v = cli_json(&a.dir, &["vms", "pause", &stays, "--json"]);
    assert_eq!(v["state"], "paused", "{v}");
    let out = cli(&a.dir, &["migrate", &moved, "--to", &b.peer]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved_id = migrations(&a.dir)
        .into_iter()
        .find(|m| m["vm_id"] == moved.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(
        "the moved VM's source VMM to exit",
        TIMEOUT,
        &[&a.proc],
        || vmm_cgroups(&moved).len() == 1,
    );

    // What two migrations left in doubt leave, the daemons dead meanwhile (the VMM-level
    // paths are tested in mesh_migrate.rs): `moved` ran on b, but its source VMM died
    // without a word and its record is in doubt; `stays` waits paused here, in doubt about
    // a migration b never started (b's record of it is final).
    let (mut a, mut b) = (a, b);
    for node in [&mut a, &mut b] {
        signal(node, libc::SIGKILL);
        node.proc.wait(TIMEOUT);
    }
    let doubt = "in doubt: nobody could say whether the destination started the VM";
    let never = "0011223344556677";
    let db = rusqlite::Connection::open(a.dir.join("state.db")).unwrap();
    db.execute(
        "UPDATE migrations SET state = 'failed', error = ?2 WHERE id = ?1",
        [&moved_id, doubt],
    )
    .unwrap();
    db.execute(
        "UPDATE vms SET state = 'failed', pid = NULL WHERE id = ?1",
        [&moved],
    )
    .unwrap();
    db.execute(
        "INSERT INTO migrations (id, vm_id, direction, peer, mode, state, started_at_ms,
             ended_at_ms, wire_bytes, error)
         VALUES (?1, ?2, 'out', ?3, 'live', 'failed', 1, 2, 0, ?4)",
        [never, &stays, &b.peer, doubt],
    )
    .unwrap();
    drop(db);
    std::fs::remove_file(a.dir.join("vms").join(&moved).join("exit.json")).unwrap();
    let db = rusqlite::Connection::open(b.dir.join("state.db")).unwrap();
    db.execute(
        "INSERT INTO migrations (id, vm_id, direction, peer, mode, state, started_at_ms,
             ended_at_ms, wire_bytes, error)
         VALUES (?1, ?2, 'in', ?3, 'live', 'failed', 1, 2, 0,
             'incoming migration rolled back: link down')",
        [never, &stays, &a.peer],
    )
    .unwrap();
    drop(db);
    let b = restart(b, "b2", &a.addr);
    let a = restart(a, "a2", &b.addr);

    // a asks b when it starts: "started" settles `moved` done (it runs on b); "never
    // started" settles `stays` rolled back and resumes it here.
    wait_until(
        "a's migrations in doubt to settle",
        Duration::from_secs(90),
        &[&a.proc, &b.proc],
        || {
            [&moved_id, never]
                .iter()
                .all(|id| migration(&a.dir, id).is_some_and(|m| settled(&m)))
        },
    );
    assert_eq!(migration(&a.dir, &moved_id).unwrap()["state"], "done");
    assert_eq!(state_of(&a.dir, &moved), "moved_away");
    assert_eq!(state_of(&b.dir, &moved), "running");
    let rolled_back = migration(&a.dir, never).unwrap();
    assert_eq!(rolled_back["state"], "failed", "{rolled_back}");
    let why = rolled_back["error"].as_str().unwrap();
    assert!(
        why.contains("rolled back") && why.contains(&b.peer),
        "{why}"
    );
    wait_until(
        "the VM b never started to run here",
        TIMEOUT,
        &[&a.proc],
        || state_of(&a.dir, &stays) == "running",
    );
    // Each counts what it settled in this run: a both, b nothing.
    let counted = |dir: &Path| migrations_total(dir);
    assert_eq!(counted(&a.dir), settled_in_this_run(&a));
    assert_eq!(counted(&a.dir).values().sum::<u64>(), 2);
    assert_eq!(counted(&b.dir), BTreeMap::new());
    for (node, id) in [(&b, &moved), (&a, &stays)] {
        let v = cli_json(&node.dir, &["vms", "stop", id, "--json"]);
        assert_eq!(v["state"], "exited", "{v}");
        assert!(vmm_processes(id).is_empty(), "a VMM of {id} is left");
    }
}
