//! Mesh jobs end to end: real `novacron node` processes on loopback, real jailed VMMs (KVM),
//! jobs signed with submitter keys and sent through `novacron submit` and the REST API.
//!
//! - A job submitted through one node runs somewhere in the cell, and its result is read
//!   from a node that neither placed nor ran it (found through the DHT).
//! - A replicated job succeeds by quorum, and a node that reports wrong results (started
//!   with the test flag `--test-corrupt-job-results`) is outvoted and named.
//! - Untrusted, tampered, replayed, expired and invalid submissions are each refused with
//!   their own message; a flood from one submitter is rate-limited while another still
//!   gets in.
//! - A job placed in a cell its origin cannot see: its runner killed, the origin's probes
//!   presume it dead and a holder in that cell restores it (`--test-cell-bits`).
//! - kill -9 of the node running a job: the job is placed again on a surviving node (a new
//!   generation) and finishes with the result of an uninterrupted run; no two VMMs ever
//!   run it at once; the dead node's return does not fork it.
//!
//! The tests skip with a message when /dev/kvm is unusable.

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

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use guest::kvm_usable;
use mesh::{live_count, wait_listening, wait_until};
use node_api::{http, vmm_processes};
use novacron_mesh::submission::Submission;
use novacron_mesh::submitter_key::SubmitterKey;
use proc::Proc;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Builtin guests run ~1000x slower than native here.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

struct Node {
    proc: Proc,
    dir: PathBuf,
    peer: String,
    addr: String,
}

/// Starts a node on `dir` trusting `trust` (public keys), joined through `bootstrap`.
fn start(name: &str, dir: &Path, bootstrap: Option<&str>, trust: &[&str], extra: &[&str]) -> Node {
    start_on(name, dir, "/ip4/127.0.0.1/tcp/0", bootstrap, trust, extra)
}

fn start_on(
    name: &str,
    dir: &Path,
    listen: &str,
    bootstrap: Option<&str>,
    trust: &[&str],
    extra: &[&str],
) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("node.yaml");
    let keys: Vec<String> = trust.iter().map(|k| format!("  - {k}")).collect();
    // Items of `extra` that start with `yaml:` are more config lines, the rest flags.
    let (yaml, flags): (Vec<&str>, Vec<&str>) = extra.iter().partition(|e| e.starts_with("yaml:"));
    let yaml: Vec<&str> = yaml.iter().map(|y| &y[5..]).collect();
    std::fs::write(
        &config,
        format!(
            "trustedSubmitters:\n{}\n{}\n",
            keys.join("\n"),
            yaml.join("\n")
        ),
    )
    .unwrap();
    let dir_s = dir.to_str().unwrap().to_string();
    let config_s = config.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec![
        "node",
        "--config",
        &config_s,
        "--data-dir",
        &dir_s,
        "--listen",
        listen,
        "--kad-server",
        "--api-port",
        "0",
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend(flags);
    let mut proc = Proc::spawn(name, &args);
    let (peer, addr) = wait_listening(&mut proc);
    assert!(
        proc.wait_stderr_line("novacron: ready, API at", TIMEOUT)
            .is_some(),
        "{name} did not get ready\n{}",
        proc.dump()
    );
    Node {
        proc,
        dir: dir.to_path_buf(),
        peer,
        addr,
    }
}

/// `n` nodes (the first is the bootstrap), each trusting `trust`, all seeing each other live.
fn cell(tmp: &Path, n: usize, trust: &[&str], extra: impl Fn(usize) -> Vec<String>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let bootstrap = nodes.first().map(|b| b.addr.clone());
        let flags = extra(i);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        nodes.push(start(
            &format!("node-{i}"),
            &tmp.join(format!("n{i}")),
            bootstrap.as_deref(),
            trust,
            &flags,
        ));
    }
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    wait_until(
        "every node to see the whole cell live",
        TIMEOUT,
        &procs,
        || {
            nodes
                .iter()
                .all(|n| live_count(&n.proc) == Some(n_live(n)) && n_live(n) == nodes.len())
        },
    );
    nodes
}

/// The live count a node reports in its last member line (0 before any).
fn n_live(n: &Node) -> usize {
    live_count(&n.proc).unwrap_or(0)
}

/// A new submitter key file `dir/keys/NAME.key`, and its public key.
fn key(dir: &Path, name: &str) -> (SubmitterKey, String) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = SubmitterKey::create(&keys.join(format!("{name}.key"))).unwrap();
    let public = key.public().to_string();
    (key, public)
}

fn novacron(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_novacron"))
        .args(args)
        .output()
        .expect("run novacron")
}

/// `novacron job WHAT ID --data-dir` of `node`: its stdout, once it succeeded.
fn job_cli(node: &Node, what: &str, id: &str) -> Vec<u8> {
    let out = novacron(&["job", what, id, "--data-dir", node.dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json_of(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `novacron job show ID --json` asked of `node`.
fn job(node: &Node, id: &str) -> Value {
    let dir = node.dir.to_str().unwrap();
    json_of(
        &novacron(&["job", "show", id, "--json", "--data-dir", dir]),
        "job show",
    )
}

/// Writes a job spec and submits it through `node` with `key` (in `keys_dir`); the job.
fn submit(node: &Node, keys_dir: &Path, key: &str, spec: &str) -> Value {
    let path = node.dir.join(format!(
        "job-{}.yaml",
        blake3::hash(spec.as_bytes()).to_hex()
    ));
    std::fs::write(&path, spec).unwrap();
    let out = novacron(&[
        "submit",
        path.to_str().unwrap(),
        "--key",
        key,
        "--keys-dir",
        keys_dir.to_str().unwrap(),
        "--json",
        "--data-dir",
        node.dir.to_str().unwrap(),
    ]);
    json_of(&out, "submit")
}

fn wait_job(node: &Node, id: &str, procs: &[&Proc], done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(
        "the job to get where the test waits for",
        GUEST_TIMEOUT,
        procs,
        || {
            last = job(node, id);
            done(&last)
        },
    );
    last
}

fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

/// A signed submission of `spec` (JSON) by `key`, issued at `issued` for `lifetime`.
fn signed(key: &SubmitterKey, spec: &str, nonce: u8, issued: Duration, lifetime: u64) -> Vec<u8> {
    Submission::new(
        spec.as_bytes().to_vec(),
        [nonce; 16],
        issued,
        Duration::from_secs(lifetime),
    )
    .sign(key.identity())
    .unwrap()
}

fn post_submission(node: &Node, bytes: &[u8]) -> (u16, String) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    http(
        &node.dir,
        "POST",
        "/api/v1/jobs",
        Some(&serde_json::json!({ "submission": hex })),
    )
}

const HELLO: &str = "Hello from the NovaCron guest kit";

#[test]
fn a_job_runs_and_its_result_is_read_from_a_node_that_did_not_run_it() {
    if !kvm_usable("a_job_runs_and_its_result_is_read_from_a_node_that_did_not_run_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    let nodes = cell(tmp.path(), 3, &[&public], |_| vec![]);
    let spec = "name: hello\npayload:\n  guest: builtin:hello\nmemoryMib: 16\n";
    let accepted = submit(&nodes[1], &keys_dir, "alice", spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["origin"].as_str(), Some(nodes[1].peer.as_str()));
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    let done = wait_job(&nodes[1], &id, &procs, |j| j["state"] == "succeeded");
    let runner = done["replicas"][0]["node"].as_str().unwrap().to_string();
    // A node that neither placed nor ran the job finds it through the DHT.
    let other = nodes
        .iter()
        .find(|n| n.peer != runner && n.peer != nodes[1].peer);
    let reader = other.unwrap_or(&nodes[0]);
    let seen = job(reader, &id);
    assert_eq!(seen["state"], "succeeded", "{seen}");
    assert_eq!(seen["result_hash"], done["result_hash"]);
    // What it shows is what was signed: the submitter's submission (checked against the job
    // id), and the result in the words of the node that ran it.
    assert_eq!(seen["submitter"].as_str(), Some(public.as_str()), "{seen}");
    assert!(seen["replicas"][0]["signed_status"].is_string(), "{seen}");
    let out = reader.dir.join("result.out");
    let got = novacron(&[
        "job",
        "result",
        &id[..12],
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        nodes[1].dir.to_str().unwrap(),
    ]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let text = String::from_utf8_lossy(&job_cli(reader, "result", &id)).to_string();
    assert!(text.contains(HELLO), "{text}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    assert_eq!(
        blake3::hash(text.as_bytes()).to_hex().as_str(),
        done["result_hash"].as_str().unwrap()
    );
    let logs = novacron(&[
        "job",
        "logs",
        &id,
        "--data-dir",
        reader.dir.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains(HELLO));
    // Every node of the cell lists it, as its origin sees it; with --here, only the nodes
    // that placed or ran it.
    let list = |node: &Node, here: bool| -> Vec<Value> {
        let dir = node.dir.to_str().unwrap();
        let mut args = vec!["jobs", "--json", "--data-dir", dir];
        if here {
            args.push("--here");
        }
        let v = json_of(&novacron(&args), "jobs");
        v.as_array().unwrap().clone()
    };
    for node in &nodes {
        let rows = list(node, false);
        let row = rows.iter().find(|j| j["id"] == id.as_str());
        let row = row.unwrap_or_else(|| panic!("{} does not list the job: {rows:?}", node.peer));
        assert_eq!(row["state"], "succeeded");
        assert_eq!(row["origin"].as_str(), Some(nodes[1].peer.as_str()));
    }
    assert!(list(&nodes[1], true).iter().any(|j| j["id"] == id.as_str()));
    if let Some(other) = other {
        assert!(!list(other, true).iter().any(|j| j["id"] == id.as_str()));
    }
}

#[test]
fn a_replicated_job_succeeds_by_quorum_and_a_faulty_node_is_outvoted() {
    if !kvm_usable("a_replicated_job_succeeds_by_quorum_and_a_faulty_node_is_outvoted") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    // Node 2 reports wrong results. Three nodes, three replicas: one lands on each.
    let mut nodes = cell(tmp.path(), 3, &[&public], |i| match i {
        2 => vec!["--test-corrupt-job-results".into()],
        _ => vec![],
    });
    let faulty = nodes[2].peer.clone();
    let (guest, _) = guest::counter(1);
    let spec = format!(
        "name: counted\npayload:\n  guest: {guest}\nmemoryMib: 32\nreplicas: 3\nquorum: 3\n"
    );
    let accepted = submit(&nodes[0], &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    // Two agree, one does not: no quorum of three is possible, so the origin asks for one
    // more replica on a node that held none, which only a fourth node can be.
    let retried = wait_job(&nodes[0], &id, &procs, |j| j["retries"].as_u64() == Some(1));
    assert_eq!(
        retried["replicas"].as_array().unwrap().len(),
        4,
        "{retried}"
    );
    let bootstrap = nodes[0].addr.clone();
    nodes.push(start(
        "node-3",
        &tmp.path().join("n3"),
        Some(&bootstrap),
        &[&public],
        &[],
    ));
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    let done = wait_job(&nodes[0], &id, &procs, |j| {
        j["state"]
            .as_str()
            .is_some_and(|s| s == "succeeded" || s == "failed")
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    let replicas = done["replicas"].as_array().unwrap();
    let nodes_used: std::collections::BTreeSet<&str> =
        replicas.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes_used.len(), 4, "replicas on distinct nodes: {done}");
    let winner = done["result_hash"].as_str().unwrap();
    for r in replicas {
        let agrees = r["result_hash"].as_str() == Some(winner);
        assert_eq!(agrees, r["node"].as_str() != Some(faulty.as_str()), "{r}");
    }
    assert!(
        done["detail"].as_str().unwrap_or("").contains(&faulty),
        "the outvoted node is named: {done}"
    );
}

#[test]
fn bad_submissions_are_refused_each_with_its_own_message_and_a_flood_starves_no_one() {
    if !kvm_usable(
        "bad_submissions_are_refused_each_with_its_own_message_and_a_flood_starves_no_one",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = key(tmp.path(), "alice");
    let (bob, bob_pub) = key(tmp.path(), "bob");
    let (mallory, _) = key(tmp.path(), "mallory");
    let node = start(
        "node",
        &tmp.path().join("n"),
        None,
        &[&alice_pub, &bob_pub],
        &[],
    );
    let spec = r#"{"payload":{"guest":"builtin:hello"},"memoryMib":8}"#;

    let (status, body) = post_submission(&node, &signed(&mallory, spec, 1, now(), 600));
    assert_eq!(status, 403, "untrusted: {body}");
    assert!(
        body.contains("does not trust") || body.contains("not trusted"),
        "{body}"
    );
    assert!(body.contains("novacron keys trust"), "{body}");

    let mut tampered = signed(&alice, spec, 2, now(), 600);
    let at = tampered
        .windows(13)
        .position(|w| w == b"\"memoryMib\":8")
        .expect("the spec in the envelope")
        + 12;
    tampered[at] = b'9';
    let (status, body) = post_submission(&node, &tampered);
    assert_eq!(status, 400, "tampered: {body}");
    assert!(body.contains("does not verify"), "{body}");

    let expired = signed(&alice, spec, 3, now() - Duration::from_secs(7200), 3600);
    let (status, body) = post_submission(&node, &expired);
    assert_eq!(status, 400, "expired: {body}");
    assert!(body.contains("expired"), "{body}");

    let bad_spec = signed(
        &alice,
        r#"{"payload":{"guest":"builtin:hello"},"memoryMib":1}"#,
        4,
        now(),
        600,
    );
    let (status, body) = post_submission(&node, &bad_spec);
    assert_eq!(status, 400, "bad spec: {body}");
    assert!(body.contains("memoryMib"), "{body}");

    let once = signed(&alice, spec, 5, now(), 600);
    let (status, body) = post_submission(&node, &once);
    assert_eq!(status, 201, "first: {body}");
    let (status, body) = post_submission(&node, &once);
    assert_eq!(status, 409, "replayed: {body}");
    assert!(body.contains("already submitted"), "{body}");

    // Alice floods: past her burst she is told to slow down...
    let mut limited = 0;
    for n in 0..20u8 {
        let (status, body) = post_submission(&node, &signed(&alice, spec, 100 + n, now(), 600));
        match status {
            201 => {}
            429 => {
                assert!(body.contains("too fast"), "{body}");
                limited += 1;
            }
            other => panic!("flood: {other} {body}"),
        }
    }
    assert!(limited >= 5, "only {limited} of 20 rate-limited");
    // ...while Bob still gets in.
    let (status, body) = post_submission(&node, &signed(&bob, spec, 1, now(), 600));
    assert_eq!(status, 201, "bob after alice's flood: {body}");

    // The CLI says the same to a submitter whose key the node does not trust.
    let keys_dir = tmp.path().join("keys");
    let path = tmp.path().join("job.json");
    std::fs::write(&path, spec).unwrap();
    let out = novacron(&[
        "submit",
        path.to_str().unwrap(),
        "--key",
        "mallory",
        "--keys-dir",
        keys_dir.to_str().unwrap(),
        "--data-dir",
        node.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("trust"), "{err}");
}

#[test]
fn a_job_whose_node_is_killed_resumes_on_a_checkpoint_holder_once_and_the_nodes_return_does_not_fork_it(
) {
    if !kvm_usable(
        "a_job_whose_node_is_killed_resumes_on_a_checkpoint_holder_once_and_the_nodes_return_does_not_fork_it",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    // Runners die with their daemons (--ephemeral): a kill -9 is the machine vanishing.
    let mut nodes = cell(tmp.path(), 3, &[&public], |i| match i {
        0 => vec![
            "yaml:politeness:".into(),
            "yaml:  runWhileInUse: false".into(),
        ],
        _ => vec!["--ephemeral".into()],
    });
    // The origin takes no replica itself: its owner is using the machine (and VMs may not
    // run while the owner does).
    let owner = novacron(&[
        "owner",
        "active",
        "--data-dir",
        nodes[0].dir.to_str().unwrap(),
    ]);
    assert!(
        owner.status.success(),
        "{}",
        String::from_utf8_lossy(&owner.stderr)
    );
    // It prints a line after each pass: its output grows while it runs.
    let (guest, expected) = guest::counter_printing_passes(20);
    let spec =
        format!("name: long\npayload:\n  guest: {guest}\nmemoryMib: 32\ncheckpointIntervalS: 5\n");
    let accepted = submit(&nodes[0], &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    // It runs, checkpoints, and its checkpoint is held by the two other nodes.
    let running = wait_job(&nodes[0], &id, &procs, |j| {
        j["state"] == "running"
            && j["replicas"][0]["checkpoint"]["holders"]
                .as_array()
                .is_some_and(|h| h.len() == 2)
    });
    let first = running["replicas"][0].clone();
    let checkpoint = first["checkpoint"].clone();
    let seq = checkpoint["seq"].as_u64().unwrap();
    assert!(checkpoint["bytes"].as_u64().unwrap() > 0, "{checkpoint}");
    let victim_peer = first["node"].as_str().unwrap().to_string();
    let first_vm = first["vm_id"].as_str().unwrap().to_string();
    assert_eq!(vmm_processes(&first_vm).len(), 1, "one VMM runs it");
    let victim = nodes.iter().position(|n| n.peer == victim_peer).unwrap();
    assert_ne!(victim, 0, "the origin took no replica");
    let mut holders: Vec<String> = checkpoint["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    holders.sort();
    let mut others: Vec<String> = nodes
        .iter()
        .filter(|n| n.peer != victim_peer)
        .map(|n| n.peer.clone())
        .collect();
    others.sort();
    assert_eq!(holders, others, "held by the nodes that do not run it");
    // The machine vanishes.
    nodes[victim].proc.kill_tree();
    wait_until("the killed node's VMM to be gone", TIMEOUT, &[], || {
        vmm_processes(&first_vm).is_empty()
    });
    let survivor = 3 - victim;
    let procs: Vec<&Proc> = [&nodes[0].proc, &nodes[survivor].proc].into();
    let moved = wait_job(&nodes[0], &id, &procs, |j| {
        j["replicas"][0]["generation"].as_u64() == Some(2) && j["replicas"][0]["state"] == "running"
    });
    let second_vm = moved["replicas"][0]["vm_id"].as_str().unwrap().to_string();
    // The origin's owner uses its machine: the other holder restored it, from the
    // checkpoint it held (or a later one it got before the kill).
    assert_eq!(
        moved["replicas"][0]["node"].as_str(),
        Some(nodes[survivor].peer.as_str())
    );
    let restored_from = moved["replicas"][0]["restored_from"].as_u64();
    assert!(
        restored_from.is_some_and(|r| r >= seq),
        "restored from checkpoint {seq} or later: {moved}"
    );
    let (status, vm) = http(
        &nodes[survivor].dir,
        "GET",
        &format!("/api/v1/vms/{second_vm}"),
        None,
    );
    assert_eq!(status, 200, "{vm}");
    assert!(
        vm.contains("restored from its last checkpoint"),
        "its VMM started from the checkpoint's files: {vm}"
    );
    eprintln!("checkpoint {checkpoint}; restored from {restored_from:?}");
    assert!(vmm_processes(&first_vm).is_empty(), "never two at once");
    let done = wait_job(&nodes[0], &id, &procs, |j| {
        j["state"].as_str().is_some_and(|s| s != "running")
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    // Its result is what an uninterrupted run prints.
    let result = novacron(&[
        "job",
        "result",
        &id,
        "--data-dir",
        nodes[0].dir.to_str().unwrap(),
    ]);
    // Every line, once, in order: the checkpoint carried the output printed before it, and
    // the lines printed between the checkpoint and the kill are printed again, not doubled.
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(text, expected, "the output of an uninterrupted run");

    // The dead node comes back: its copy is not restored, and the job is not forked.
    let listen = nodes[victim]
        .addr
        .split("/p2p/")
        .next()
        .unwrap()
        .to_string();
    let bootstrap = nodes[0].addr.clone();
    let back = start_on(
        "back",
        &nodes[victim].dir.clone(),
        &listen,
        Some(&bootstrap),
        &[&public],
        &["--ephemeral"],
    );
    nodes[victim] = back;
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        vmm_processes(&first_vm).is_empty(),
        "the stale copy never runs again"
    );
    let after = job(&nodes[0], &id);
    assert_eq!(after["state"], "succeeded");
    assert_eq!(after["result_hash"], done["result_hash"]);
    assert_eq!(after["replicas"].as_array().unwrap().len(), 1, "{after}");
    assert!(
        vmm_processes(&second_vm).is_empty(),
        "the finished replica's VMM is gone"
    );
}

/// A data directory under `tmp` whose node key puts the node in cell `prefix` of
/// `bits` prefix bits (keys are made until one does).
fn dir_in_cell(tmp: &Path, name: &str, bits: u8, prefix: u32) -> PathBuf {
    let dir = tmp.join(name);
    loop {
        let identity = novacron_mesh::identity::NodeIdentity::load_or_create(&dir).unwrap();
        if novacron_mesh::cells::cell_id(&identity.peer_id(), bits).prefix() == prefix {
            return dir;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_replica_in_another_cell_whose_node_goes_silent_is_restored_by_its_holder() {
    if !kvm_usable("a_replica_in_another_cell_whose_node_goes_silent_is_restored_by_its_holder") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    // Two cells of two nodes (one prefix bit). Cell 0 places and runs nothing; the job goes
    // to cell 1, whose nodes the origin's failure detector never sees.
    let bits = ["--test-cell-bits", "1"];
    let a0 = start(
        "a0",
        &dir_in_cell(tmp.path(), "a0", 1, 0),
        None,
        &[&public],
        &[bits[0], bits[1], "--no-job-replicas"],
    );
    let boot = a0.addr.clone();
    let a1 = start(
        "a1",
        &dir_in_cell(tmp.path(), "a1", 1, 0),
        Some(&boot),
        &[&public],
        &[bits[0], bits[1], "--no-job-replicas"],
    );
    let mut b: Vec<Node> = (0..2)
        .map(|i| {
            let name = format!("b{i}");
            let dir = dir_in_cell(tmp.path(), &name, 1, 1);
            start(
                &name,
                &dir,
                Some(&boot),
                &[&public],
                &[bits[0], bits[1], "--ephemeral"],
            )
        })
        .collect();
    let all: Vec<&Node> = [&a0, &a1].into_iter().chain(b.iter()).collect();
    let procs: Vec<&Proc> = all.iter().map(|n| &n.proc).collect();
    wait_until(
        "each node to see its cell of two live",
        TIMEOUT,
        &procs,
        || all.iter().all(|n| n_live(n) == 2),
    );
    let (guest, expected) = guest::counter_printing_passes(40);
    let spec =
        format!("name: far\npayload:\n  guest: {guest}\nmemoryMib: 32\ncheckpointIntervalS: 5\n");
    let accepted = submit(&a0, &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let running = wait_job(&a0, &id, &procs, |j| {
        j["state"] == "running"
            && j["replicas"][0]["checkpoint"]["holders"]
                .as_array()
                .is_some_and(|h| !h.is_empty())
    });
    let first = running["replicas"][0].clone();
    let runner = first["node"].as_str().unwrap().to_string();
    let victim = b.iter().position(|n| n.peer == runner);
    let victim = victim.unwrap_or_else(|| panic!("placed in the other cell: {running}"));
    assert_eq!(
        first["checkpoint"]["holders"][0].as_str(),
        Some(b[1 - victim].peer.as_str()),
        "held in the runner's cell: {running}"
    );
    let first_vm = first["vm_id"].as_str().unwrap().to_string();
    b[victim].proc.kill_tree();
    let survivor = &b[1 - victim];
    let procs: Vec<&Proc> = [&a0.proc, &a1.proc, &survivor.proc].into();
    // Only the origin's probes can tell: after ~30 s of silence, a new generation, restored
    // by the holder.
    let moved = wait_job(&a0, &id, &procs, |j| {
        j["replicas"][0]["generation"].as_u64() == Some(2) && j["replicas"][0]["state"] == "running"
    });
    let r = &moved["replicas"][0];
    assert_eq!(r["node"].as_str(), Some(survivor.peer.as_str()), "{moved}");
    assert!(
        r["restored_from"].as_u64().is_some(),
        "restored from its checkpoint: {moved}"
    );
    assert!(vmm_processes(&first_vm).is_empty(), "never two at once");
    let done = wait_job(&a0, &id, &procs, |j| {
        j["state"].as_str().is_some_and(|s| s != "running")
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    let result = novacron(&["job", "result", &id, "--data-dir", a0.dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(text, expected, "the output of an uninterrupted run");
}

#[test]
fn a_job_whose_owner_needs_the_machine_moves_live_and_its_record_follows_it() {
    if !kvm_usable("a_job_whose_owner_needs_the_machine_moves_live_and_its_record_follows_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    // node-0 places jobs and runs none; the others give way when their owner is active.
    let nodes = cell(tmp.path(), 3, &[&public], |i| match i {
        0 => vec!["--no-job-replicas".into()],
        _ => vec![
            "yaml:politeness:".into(),
            "yaml:  runWhileInUse: false".into(),
        ],
    });
    // It prints a line after each pass: some before the move, the rest after it.
    let (guest, expected) = guest::counter_printing_passes(12);
    let spec = format!(
        "name: mover\npayload:\n  guest: {guest}\nmemoryMib: 32\nmigration:\n  \
         downtimeBudgetMs: 250\n"
    );
    let accepted = submit(&nodes[0], &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    let running = wait_job(&nodes[0], &id, &procs, |j| j["state"] == "running");
    let from = running["replicas"][0]["node"].as_str().unwrap().to_string();
    let vm = running["replicas"][0]["vm_id"]
        .as_str()
        .unwrap()
        .to_string();
    let owner_node = nodes.iter().find(|n| n.peer == from).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The volunteer sits down at the machine: its VMs must go.
    let owner = novacron(&[
        "owner",
        "active",
        "--data-dir",
        owner_node.dir.to_str().unwrap(),
    ]);
    assert!(
        owner.status.success(),
        "{}",
        String::from_utf8_lossy(&owner.stderr)
    );
    let moved = wait_job(&nodes[0], &id, &procs, |j| {
        j["replicas"][0]["node"].as_str().is_some_and(|n| n != from)
    });
    let r = &moved["replicas"][0];
    assert_eq!(r["generation"], 1, "a move is not a restart: {moved}");
    assert_eq!(r["moved_from"].as_str(), Some(from.as_str()), "{moved}");
    assert_eq!(
        r["vm_id"].as_str(),
        Some(vm.as_str()),
        "the same VM runs on: {moved}"
    );
    // The VM moved with its job's downtime budget, which travels with it.
    let to = nodes
        .iter()
        .find(|n| Some(n.peer.as_str()) == r["node"].as_str())
        .unwrap();
    let (status, there) = http(&to.dir, "GET", &format!("/api/v1/vms/{vm}"), None);
    assert_eq!(status, 200, "{there}");
    let there: Value = serde_json::from_str(&there).unwrap();
    assert_eq!(there["spec"]["downtime_budget_ms"], 250, "{there}");
    let done = wait_job(&nodes[0], &id, &procs, |j| {
        j["state"]
            .as_str()
            .is_some_and(|s| s != "running" && s != "migrating")
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    let result = novacron(&[
        "job",
        "result",
        &id,
        "--data-dir",
        nodes[0].dir.to_str().unwrap(),
    ]);
    // The whole output, as an unmoved run prints it: the lines printed before the move came
    // with the handover.
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(text, expected, "the output of an unmoved run");
    // The node it left has nothing of it running, and its own record of it is closed.
    assert!(vmm_processes(&vm).is_empty());
    let left = json_of(
        &novacron(&[
            "jobs",
            "--here",
            "--json",
            "--data-dir",
            owner_node.dir.to_str().unwrap(),
        ]),
        "jobs",
    );
    let row = left
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["state"], "cancelled", "{row}");
}

/// Publishes `bytes` as a chunk set from `node`; its id.
fn publish(node: &Node, name: &str, bytes: &[u8]) -> String {
    let file = node.dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let out = novacron(&[
        "chunks",
        "publish",
        "--data-dir",
        node.dir.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_process_jobs_files_come_from_the_mesh_and_its_result_file_is_read_safely() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the process jail needs root (namespaces, cgroups)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The jail's user reaches its work directory by its absolute path.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    let nodes = cell(tmp.path(), 3, &[&public], |_| vec![]);
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    // A host file only root can read, which the command links to.
    let secret = tmp.path().join("host-secret");
    std::fs::write(&secret, "TOP-SECRET-7f3a").unwrap();
    let script = format!(
        "mkdir -p out\nwc -c < data.txt > out/sum.txt\necho \"read $(cat data.txt)\"\n\
         ln -s {} sneaky.txt\n",
        secret.display()
    );
    let script = script.as_bytes();
    let data = "0123456789".repeat(10);
    let run_set = publish(&nodes[0], "run.sh", script);
    // The data is provided by two nodes.
    let data_set = publish(&nodes[0], "data.txt", data.as_bytes());
    assert_eq!(publish(&nodes[2], "data.txt", data.as_bytes()), data_set);
    let spec = |result_file: &str| {
        format!(
            "name: files\nbackend: process\npayload:\n  command: [/bin/sh, run.sh]\n  files:\n\
             \x20   - {{name: run.sh, chunkSet: {run_set}}}\n\
             \x20   - {{name: data.txt, chunkSet: {data_set}}}\n\
             migration: {{modes: [cold]}}\nresult: {{file: {result_file}}}\n"
        )
    };
    let accepted = submit(&nodes[1], &keys_dir, "alice", &spec("out/sum.txt"));
    let id = accepted["id"].as_str().unwrap().to_string();
    let done = wait_job(&nodes[1], &id, &procs, |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    let serial = format!("read {data}\n");
    let blob = b"100\n";
    assert_eq!(
        done["result_hash"].as_str().unwrap(),
        novacron_node::model::result_hash(Some(serial.as_bytes()), Some(blob)),
        "the hash covers the output and the result file: {done}"
    );
    // The result file and the log, read from a node that did not run the job.
    let runner = done["replicas"][0]["node"].as_str().unwrap().to_string();
    let reader = nodes.iter().find(|n| n.peer != runner).unwrap();
    assert_eq!(job_cli(reader, "result", &id), blob);
    assert_eq!(
        String::from_utf8_lossy(&job_cli(reader, "logs", &id)),
        serial
    );

    // A result file that is a symlink to a host file fails the job, naming why, and
    // nothing of the host file is read or told.
    let accepted = submit(&nodes[1], &keys_dir, "alice", &spec("sneaky.txt"));
    let id = accepted["id"].as_str().unwrap().to_string();
    let done = wait_job(&nodes[1], &id, &procs, |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(done["state"], "failed", "{done}");
    let detail = done["replicas"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("result.file sneaky.txt: a symlink"),
        "{done}"
    );
    assert!(!done.to_string().contains("TOP-SECRET"), "{done}");
    let got = novacron(&[
        "job",
        "result",
        &id,
        "--data-dir",
        reader.dir.to_str().unwrap(),
    ]);
    assert!(!got.status.success());
    assert!(!String::from_utf8_lossy(&got.stdout).contains("TOP-SECRET"));

    // A plain process VM takes files by chunk set too: through the REST API on the node
    // that published them (from its own store), through the CLI on one that fetches them.
    let body = serde_json::json!({
        "backend": "process",
        "command": ["/bin/sh", "run.sh"],
        "migration": ["cold"],
        "files": [{"name": "run.sh", "chunkSet": run_set}, {"name": "data.txt", "chunkSet": data_set}],
    });
    let (status, text) = http(&nodes[0].dir, "POST", "/api/v1/vms", Some(&body));
    assert_eq!(status, 201, "{text}");
    let by_api: Value = serde_json::from_str(&text).unwrap();
    let run_file = format!("run.sh={run_set}");
    let data_file = format!("data.txt={data_set}");
    let by_cli = json_of(
        &novacron(&[
            "vms",
            "create",
            "--json",
            "--data-dir",
            nodes[1].dir.to_str().unwrap(),
            "--backend",
            "process",
            "--migration",
            "cold",
            "--file",
            &run_file,
            "--file",
            &data_file,
            "--command",
            "/bin/sh",
            "run.sh",
        ]),
        "vms create --file",
    );
    for (node, vm) in [(&nodes[0], &by_api), (&nodes[1], &by_cli)] {
        let vm_id = vm["id"].as_str().unwrap();
        wait_until("the VM's command to end", TIMEOUT, &procs, || {
            let (_, text) = http(&node.dir, "GET", &format!("/api/v1/vms/{vm_id}"), None);
            text.contains("\"exited\"")
        });
        let vm_dir = node.dir.join("vms").join(vm_id);
        let sum = std::fs::read_to_string(vm_dir.join("work/out/sum.txt")).unwrap();
        assert_eq!(sum, "100\n", "{}", vm_dir.display());
    }
    // A set nobody provides is the request's fault, named, and nothing is recorded.
    let mut bad = body.clone();
    bad["files"][1]["chunkSet"] = Value::from("ab".repeat(32));
    let before = http(&nodes[1].dir, "GET", "/api/v1/vms", None).1;
    let (status, text) = http(&nodes[1].dir, "POST", "/api/v1/vms", Some(&bad));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(&"ab".repeat(32)), "{text}");
    assert_eq!(http(&nodes[1].dir, "GET", "/api/v1/vms", None).1, before);

    // A file no node provides: the placement is refused, naming the set.
    let missing = "ab".repeat(32);
    let bad = spec("out/sum.txt").replace(&data_set, &missing);
    let accepted = submit(&nodes[1], &keys_dir, "alice", &bad);
    let id = accepted["id"].as_str().unwrap().to_string();
    let stuck = wait_job(&nodes[1], &id, &procs, |j| {
        j.to_string().contains(&format!("chunk set {missing}"))
    });
    assert_ne!(stuck["state"], "succeeded", "{stuck}");
}

#[test]
fn a_kvm_guests_result_blob_is_the_jobs_result_and_a_guest_that_hands_none_over_fails() {
    if !kvm_usable("a_kvm_guests_result_blob_is_the_jobs_result") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    let nodes = cell(tmp.path(), 3, &[&public], |_| vec![]);
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    // The result is the blob alone: 8 bytes the guest leaves in its memory and hands over.
    let (guest, blob) = guest::counter_handing_over_a_blob(2);
    let spec = format!(
        "name: blob\npayload:\n  guest: {guest}\nmemoryMib: 32\nresult:\n  serial: false\n  \
         blob: true\n"
    );
    let accepted = submit(&nodes[1], &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let done = wait_job(&nodes[1], &id, &procs, |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["result_hash"].as_str(),
        Some(blake3::hash(&blob).to_hex().as_str()),
        "the result hash is the blob's"
    );
    // Read back from a node that did not run it, byte for byte.
    let runner = done["replicas"][0]["node"].as_str().unwrap().to_string();
    let reader = nodes.iter().find(|n| n.peer != runner).unwrap();
    let out = reader.dir.join("result.bin");
    let got = novacron(&[
        "job",
        "result",
        &id,
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        reader.dir.to_str().unwrap(),
    ]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), blob);

    // A guest that hands nothing over fails its replica, saying so.
    let spec = "name: noblob\npayload:\n  guest: builtin:hello\nmemoryMib: 16\nresult:\n  \
                blob: true\n";
    let accepted = submit(&nodes[1], &keys_dir, "alice", spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let ended = wait_job(&nodes[1], &id, &procs, |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(ended.to_string().contains("result blob"), "{ended}");
}

#[test]
fn a_kernel_given_by_chunk_set_is_fetched_by_the_node_that_boots_it() {
    let Some(kernel) = std::env::var_os("NOVACRON_TEST_KERNEL") else {
        eprintln!(
            "skipped: set NOVACRON_TEST_KERNEL to a vmlinux or bzImage (.ci/run fetches one)"
        );
        return;
    };
    if !kvm_usable("a_kernel_given_by_chunk_set_is_fetched_by_the_node_that_boots_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = key(tmp.path(), "alice");
    let keys_dir = tmp.path().join("keys");
    let nodes = cell(tmp.path(), 3, &[&public], |_| vec![]);
    let procs: Vec<&Proc> = nodes.iter().map(|n| &n.proc).collect();
    let bytes = std::fs::read(&kernel).unwrap();
    let set = publish(&nodes[0], "vmlinux", &bytes);
    // Node 0 serves the kernel; any other node that runs the job fetches it.
    let spec = format!(
        "name: linux\npayload:\n  kernel: {{chunkSet: {set}}}\nmemoryMib: 512\n\
         arguments: [earlyprintk=serial]\nmigration: {{modes: [cold]}}\n"
    );
    let accepted = submit(&nodes[1], &keys_dir, "alice", &spec);
    let id = accepted["id"].as_str().unwrap().to_string();
    let running = wait_job(&nodes[1], &id, &procs, |j| {
        j["state"] == "running" || j["state"] == "failed"
    });
    assert_eq!(running["state"], "running", "{running}");
    let runner = running["replicas"][0]["node"].as_str().unwrap().to_string();
    let at = nodes.iter().find(|n| n.peer == runner).unwrap();
    let fetched = at.dir.join("payloads").join(&set);
    assert_eq!(
        blake3::hash(&std::fs::read(&fetched).unwrap()),
        blake3::hash(&bytes),
        "the runner holds the kernel it fetched, byte for byte"
    );
    // The kernel boots: its banner reaches the replica's log.
    let mut log = String::new();
    wait_until(
        "the kernel's banner in the job's log",
        GUEST_TIMEOUT,
        &procs,
        || {
            let out = novacron(&[
                "job",
                "logs",
                &id,
                "--data-dir",
                nodes[1].dir.to_str().unwrap(),
            ]);
            log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.contains("Linux version")
        },
    );
    let out = novacron(&[
        "job",
        "cancel",
        &id,
        "--data-dir",
        nodes[1].dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
