//! End-to-end tests of the API commands (`novacron status | vms | migrate`): the real
//! binary against a small fake of the node's REST API (axum on 127.0.0.1:0, in this test
//! process), over real sockets and WebSockets.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const VM_A: &str = "a1b2c3d4e5f60718";
const VM_B: &str = "a1ff00000000beef";
const PEER: &str = "12D3KooWDestinationPeerOfTheTest";

#[derive(Default)]
struct Fake {
    /// Migrations cancelled through the API.
    cancelled: Vec<String>,
    /// The deadline of `POST /api/v1/drain`, once asked.
    drain: Option<u64>,
    /// The event stream waits for a drain (else it closes after its first event).
    expect_drain: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn vm(id: &str, state: &str) -> Value {
    json!({
        "id": id,
        "spec": {"name": "demo", "backend": "kvm", "guest": "builtin:counter", "kernel": null,
                 "initrd": null, "cmdline": null, "command": null, "mem_mib": 64, "vcpus": 1,
                 "migration": ["live", "warm"]},
        "state": state, "detail": null, "pid": 4242, "created_at_ms": 1, "updated_at_ms": 2,
        "snapshot_at_ms": null, "last_report": [1, 99], "adoptions": 0
    })
}

fn migration(id: &str, state: &str, phase: &str, round: u32, error: Option<&str>) -> Value {
    json!({
        "id": id, "vm_id": VM_A, "direction": "out", "peer": PEER, "mode": "live",
        "state": state, "started_at_ms": 1_000,
        "ended_at_ms": if state == "running" { Value::Null } else { json!(2_500) },
        "downtime_ms": if state == "done" { json!(7.5) } else { Value::Null },
        "wire_bytes": 1_048_576 * u64::from(round), "error": error,
        "progress": {"phase": phase, "round": round, "bytes_sent": 1_048_576 * u64::from(round),
                     "wire_bytes": 1_048_576 * u64::from(round), "bytes_skipped_zero": 0,
                     "bytes_skipped_held": 0, "bandwidth_bps": 10_485_760, "dirty_rate_bps": 0,
                     "est_remaining_ms": 500}
    })
}

fn api_error(status: StatusCode, text: &str) -> axum::response::Response {
    (status, Json(json!({ "error": text }))).into_response()
}

async fn start_migration(
    Path(id): Path<String>,
    Json(req): Json<Value>,
) -> axum::response::Response {
    if id != VM_A {
        return api_error(StatusCode::NOT_FOUND, &format!("no VM {id}"));
    }
    match req["to"].as_str() {
        Some("nobody") => api_error(
            StatusCode::BAD_REQUEST,
            "unknown peer nobody: give a PeerId of the cell or auto",
        ),
        // "stuck" runs until cancelled; "fail" ends failed; anything else ends done.
        Some(to) => (
            StatusCode::ACCEPTED,
            Json(migration(
                &format!("mig-{to}"),
                "running",
                "handshake",
                0,
                None,
            )),
        )
            .into_response(),
        None => api_error(StatusCode::BAD_REQUEST, "missing field to"),
    }
}

async fn watch(Path(id): Path<String>, ws: WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(move |mut socket| async move {
        let send = |v: Value| Message::Text(v.to_string().into());
        for round in 1..=3 {
            if socket
                .send(send(migration(&id, "running", "precopy", round, None)))
                .await
                .is_err()
            {
                return;
            }
        }
        match id.as_str() {
            "mig-stuck" => {
                // Until the client goes away.
                while socket.recv().await.is_some() {}
                return;
            }
            "mig-fail" => {
                let m = migration(
                    &id,
                    "failed",
                    "failed",
                    3,
                    Some("the peer ran out of memory"),
                );
                let _ = socket.send(send(m)).await;
            }
            _ => {
                let _ = socket
                    .send(send(migration(&id, "done", "done", 4, None)))
                    .await;
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    })
}

async fn cancel(State(fake): State<Shared>, Path(id): Path<String>) -> Json<Value> {
    fake.lock().unwrap().cancelled.push(id.clone());
    Json(migration(
        &id,
        "cancelled",
        "failed",
        3,
        Some("cancelled by the API"),
    ))
}

fn event(seq: u64, event: Value) -> Message {
    Message::Text(
        json!({"seq": seq, "at_ms": 1_000 * seq, "event": event})
            .to_string()
            .into(),
    )
}

/// A member event, then (when the test expects a drain, once it was asked) the node's VMs
/// leaving, then the end.
async fn events(State(fake): State<Shared>, ws: WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(move |mut socket| async move {
        let member = json!({"kind": "member", "peer_id": PEER, "live": true});
        if socket.send(event(1, member)).await.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let drain = loop {
            let (expected, asked) = {
                let f = fake.lock().unwrap();
                (f.expect_drain, f.drain)
            };
            if !expected || asked.is_some() || Instant::now() > deadline {
                break asked;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(d) = drain {
            let mut moved = vm(VM_A, "moved_away");
            moved["detail"] = json!(format!("runs on {PEER}"));
            for (seq, ev) in [
                json!({"kind": "draining", "deadline_s": d}),
                json!({"kind": "vm", "vm": vm(VM_A, "migrating")}),
                json!({"kind": "migration", "migration": migration("mig-d", "done", "done", 2, None)}),
                json!({"kind": "vm", "vm": moved}),
                json!({"kind": "vm", "vm": vm(VM_B, "suspended")}),
            ]
            .into_iter()
            .enumerate()
            {
                if socket.send(event(seq as u64 + 2, ev)).await.is_err() {
                    return;
                }
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    })
}

async fn drain(State(fake): State<Shared>, Json(body): Json<Value>) -> axum::response::Response {
    match body["deadline_s"].as_u64() {
        Some(d) => {
            fake.lock().unwrap().drain = Some(d);
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
        }
        None => api_error(StatusCode::BAD_REQUEST, "deadline_s: a number of seconds"),
    }
}

fn app(fake: Shared) -> Router {
    Router::new()
        .route(
            "/api/v1/node",
            get(|| async {
                Json(json!({
                    "peer_id": "12D3KooWTheLocalNode", "version": "0.1.0", "uptime_s": 7384.0,
                    "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"], "connected_peers": 2,
                    "routing_table_peers": 5, "wire_sent": 100, "wire_received": 200,
                    "cell": null, "summaries": []
                }))
            }),
        )
        .route(
            "/api/v1/politeness",
            get(|| async {
                Json(json!({"state": "throttled", "reasons": ["owner active"],
                            "owner_idle_s": 5, "on_battery": false, "cpu_cap_percent": 50,
                            "mem_cap_mib": 512}))
            }),
        )
        .route(
            "/api/v1/vms",
            get(|| async { Json(json!([vm(VM_A, "running"), vm(VM_B, "paused")])) }),
        )
        .route(
            "/api/v1/vms/{id}",
            get(|Path(id): Path<String>| async move {
                if id == VM_A || id == VM_B {
                    Json(vm(&id, "running")).into_response()
                } else {
                    api_error(StatusCode::NOT_FOUND, &format!("no VM {id}"))
                }
            }),
        )
        .route("/api/v1/vms/{id}/migrate", post(start_migration))
        .route(
            "/api/v1/migrations",
            get(|| async { Json(json!([migration("mig-x", "running", "precopy", 1, None)])) }),
        )
        .route("/api/v1/migrations/{id}/watch", get(watch))
        .route("/api/v1/migrations/{id}/cancel", post(cancel))
        .route("/api/v1/events", get(events))
        .route("/api/v1/drain", post(drain))
        .with_state(fake)
}

/// The fake API on 127.0.0.1:0, served from its own thread; its base URL.
fn serve() -> (String, Shared) {
    let fake = Shared::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let f = fake.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app(f)).await;
        });
    });
    (url, fake)
}

fn novacron(url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_novacron"));
    c.args(args)
        .args(["--api", url])
        // Nothing of the host's own node may leak in.
        .env_remove("NOVACRON_API")
        .env_remove("NOVACRON_DATA_DIR")
        .env_remove("NOVACRON_API_TOKEN");
    c
}

fn run(url: &str, args: &[&str]) -> Output {
    let out = novacron(url, args).output().expect("spawn novacron");
    eprintln!(
        "novacron {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[test]
fn vms_json_lists_and_a_prefix_names_one() {
    let (url, _) = serve();
    let out = run(&url, &["vms", "--json"]);
    assert!(out.status.success());
    let all = json_lines(&out);
    assert_eq!(all.len(), 1, "one JSON document");
    assert_eq!(all[0][0]["id"], VM_A);
    assert_eq!(all[0][1]["state"], "paused");

    let out = run(&url, &["vms", "show", "a1b", "--json"]);
    assert!(out.status.success());
    assert_eq!(json_lines(&out)[0]["id"], VM_A);

    let out = run(&url, &["vms"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("a1b2c3d4  demo  running"), "{text}");
}

#[test]
fn status_shows_the_node_at_a_glance() {
    let (url, _) = serve();
    let out = run(&url, &["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "node        12D3KooWTheLocalNode  version 0.1.0  up 2h03m",
        "politeness  throttled  cpu cap 50%, memory cap 512 MiB, owner idle 5.0 s (owner active)",
        "vms         1 paused, 1 running",
        "migrations  a1b2c3d4e5f60718 out to 12D3KooW…heTest",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let out = run(&url, &["status", "--json"]);
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["node"]["peer_id"], "12D3KooWTheLocalNode");
    assert_eq!(doc["vms_by_state"]["running"], 1);
    assert_eq!(doc["migrations_running"].as_array().map(Vec::len), Some(1));
}

#[test]
fn migrate_json_watches_until_done() {
    let (url, _) = serve();
    let out = run(&url, &["migrate", "a1b2", "--to", "auto", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&out);
    // The start answer, three progress updates, the final state.
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["state"], "running");
    assert_eq!(lines[2]["progress"]["round"], 2);
    assert_eq!(lines[4]["state"], "done");
    assert_eq!(lines[4]["id"], "mig-auto");
}

#[test]
fn a_failed_migration_exits_1_with_its_reason() {
    let (url, _) = serve();
    let out = run(&url, &["migrate", VM_A, "--to", "fail"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed: the peer ran out of memory") && err.contains("keeps running here"),
        "{err}"
    );
}

#[test]
fn errors_exit_1_and_say_what_to_do() {
    let (url, _) = serve();
    // The node refuses: its message, with the status.
    let out = run(&url, &["migrate", VM_A, "--to", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("novacron: error: cannot start migrating VM")
            && err.contains("400")
            && err.contains("unknown peer nobody: give a PeerId of the cell or auto"),
        "{err}"
    );
    // An ambiguous prefix lists the candidates.
    let out = run(&url, &["vms", "stop", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(VM_A) && err.contains(VM_B) && err.contains("more characters"),
        "{err}"
    );
    // No node at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let out = run(&dead, &["vms"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "no node answers at {dead}: is `novacron node` running?"
        )),
        "{err}"
    );
}

#[test]
fn ctrl_c_while_watching_cancels_the_migration() {
    let (url, fake) = serve();
    let mut child = novacron(&url, &["migrate", VM_A, "--to", "stuck", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn novacron");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // The start answer and the first update: it is watching.
    for _ in 0..2 {
        line.clear();
        stdout.read_line(&mut line).expect("a line");
        assert!(line.contains("\"running\""), "{line:?}");
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "novacron did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    eprintln!("--- stdout\n{rest}--- stderr\n{err}");
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        fake.lock().unwrap().cancelled,
        vec!["mig-stuck".to_string()]
    );
    assert!(
        err.contains("Ctrl-C: cancelling migration mig-stuck"),
        "{err}"
    );
    assert!(
        err.contains("was cancelled (cancelled by the API)"),
        "{err}"
    );
    assert!(
        rest.lines().last().unwrap_or("").contains("\"cancelled\""),
        "{rest}"
    );
}

#[test]
fn drain_follows_the_vms_until_none_is_active() {
    let (url, fake) = serve();
    fake.lock().unwrap().expect_drain = true;
    let out = run(&url, &["drain", "--deadline", "30"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(fake.lock().unwrap().drain, Some(30));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "draining: 2 VMs still active: a1b2c3d4e5f60718 (running), a1ff00000000beef (paused) within 30 s",
        &format!("vm         {VM_A} moved_away: runs on {PEER}"),
        "migration  mig-d out vm",
        "drained: no VM is active on the node",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    assert!(
        !text.contains("member"),
        "member events are not drain news\n{text}"
    );

    let (url, fake) = serve();
    fake.lock().unwrap().expect_drain = true;
    let out = run(&url, &["drain", "--json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.last(), Some(&json!({"drained": true, "active": {}})));
    assert_eq!(lines[0]["event"]["kind"], "draining");
}

#[test]
fn events_prints_a_line_per_event_and_ends_with_the_stream() {
    let (url, _) = serve();
    // No drain expected: the fake sends one member event and closes.
    let out = run(&url, &["events", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"]["peer_id"], PEER);
    let out = run(&url, &["events", "--kind", "vm,migration"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "filtered out");
    let out = run(&url, &["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with(&format!("#1     member     {PEER} up\n")),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed the event stream"));
}

/// A stdout whose reader is gone, as `| head` leaves it once it has its lines.
fn closed_stdout() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are ours: the read end is closed, the write end owned.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn a_closed_stdout_ends_each_command_quietly_with_141() {
    let (url, _) = serve();
    for args in [
        &["vms"][..],
        &["vms", "--json"],
        &["status"],
        &["status", "--json"],
        &["nodes"],
        &["events"],
        &["events", "--json"],
    ] {
        let out = novacron(&url, args)
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .expect("spawn novacron");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(141),
            "novacron {args:?} with its stdout closed: {:?}\n{stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "novacron {args:?}: {stderr}");
    }
}

#[test]
fn status_dial_addrs_prints_what_bootstrap_takes() {
    let (url, _) = serve();
    let out = run(&url, &["status", "--dial-addrs"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWTheLocalNode\n"
    );
}
