//! The dashboard end to end: real `novacron node` processes on loopback and headless
//! Chromium. Every page loads with its content; a VM, a live migration (started from the
//! page's own action) with its progress bar, and a job submitted from the form appear and
//! finish on the open page without a reload; a killed node is marked dead on the overview;
//! a dropped event stream is shown and recovers; nothing is fetched from anywhere but the
//! node. Screenshots of every page go to `target/dashboard-screenshots/`.
//!
//! Security over plain HTTP: loopback is trusted only by a loopback Host (DNS rebinding is
//! a stranger); a stranger gets the sign-in page, signs in with the API token and carries an
//! HttpOnly, SameSite=Strict session cookie; an action without its CSRF token, or from
//! another site's page, is refused and changes nothing.
//!
//! Skips (saying why) without KVM or Chromium; `NOVACRON_REQUIRE_BROWSER=1` (CI) makes a
//! missing browser a failure.

#[path = "common/browser.rs"]
mod browser;
#[allow(dead_code)]
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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::launch_or_skip;
use guest::kvm_usable;
use mesh::wait_listening;
use node_api::http;
use novacron_node::bench::browser::Browser;
use proc::Proc;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Builtin guests run ~1000x slower than native here.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);
const TOKEN: &str = "dashboard-test-token-0123456789abcdef0123456789abcdef";

/// Where screenshots go: `target/dashboard-screenshots/`.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots")
}

struct Node {
    proc: Proc,
    dir: PathBuf,
    peer: String,
    addr: String,
}

/// Starts `novacron node` on `dir` with `config` (YAML) and `extra` flags; waits until ready.
fn start(name: &str, dir: &Path, config: &str, listen: &str, extra: &[&str]) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let config_path = dir.join("node.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut args = vec![
        "node",
        "--config",
        config_path.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        listen,
        "--kad-server",
        "--api-port",
        "0",
        "--ephemeral",
    ];
    args.extend(extra);
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

fn dashboard_url(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("dashboard.url"))
        .expect("dashboard.url")
        .trim()
        .to_string()
}

fn kill(p: &Proc, sig: i32) {
    unsafe { libc::kill(p.pid(), sig) };
}

/// Waits for `predicate` (JS) on the page; panics with the page's text and the nodes' logs.
fn wait_page(b: &mut Browser, what: &str, predicate: &str, timeout: Duration, nodes: &[&Proc]) {
    if b.wait_for(predicate, timeout).expect("the browser answers") {
        return;
    }
    let text = b
        .eval("document.body ? document.body.innerText : ''")
        .unwrap_or(Value::Null);
    let logs: Vec<String> = nodes.iter().map(|p| p.dump()).collect();
    panic!(
        "timed out waiting for {what}\n--- page:\n{text}\n{}",
        logs.join("\n")
    );
}

fn shot(b: &mut Browser, name: &str) {
    let path = screenshots().join(format!("{name}.png"));
    b.screenshot(&path).expect("a screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Marks the page so a reload (which would clear the mark) is seen.
const MARK: &str = "window.__novacronMark = 1";
const STILL_MARKED: &str = "window.__novacronMark === 1";

#[test]
fn the_dashboard_follows_the_mesh_live_in_a_browser() {
    let test = "the_dashboard_follows_the_mesh_live_in_a_browser";
    if !kvm_usable(test) {
        return;
    }
    let Some(mut b) = launch_or_skip(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = novacron_mesh::submitter_key::SubmitterKey::create(&keys.join("dash.key")).unwrap();
    let config = format!(
        "trustedSubmitters:\n  - {}\ndashboard:\n  keysDir: {}\n",
        key.public(),
        keys.display()
    );
    let a = start(
        "a",
        &tmp.path().join("a"),
        &config,
        "/ip4/127.0.0.1/tcp/0",
        &[],
    );
    let b_node = start(
        "b",
        &tmp.path().join("b"),
        &config,
        "/ip4/127.0.0.1/tcp/0",
        &["--bootstrap", &a.addr, "--dashboard-port", "0"],
    );
    assert!(
        !b_node.dir.join("dashboard.url").exists(),
        "--dashboard-port 0 turns the dashboard off"
    );
    let url = dashboard_url(&a.dir);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let procs = [&a.proc, &b_node.proc];
    b.viewport(1280, 900, false).unwrap();

    // The overview: both members live.
    b.goto(&format!("{url}/")).unwrap();
    wait_page(
        &mut b,
        "both members live on the overview",
        &format!(
            "(() => {{ const r = document.querySelector('tr[data-peer=\"{}\"]'); return !!r && r.innerText.includes('live'); }})()",
            b_node.peer
        ),
        TIMEOUT,
        &procs,
    );
    let text = b.eval("document.body.innerText").unwrap();
    let text = text.as_str().unwrap();
    for want in ["Nodes live", "This cell", "Churn, last hour", "vCPUs free"] {
        assert!(
            text.contains(want),
            "{want} missing on the overview:\n{text}"
        );
    }
    shot(&mut b, "overview");

    // A VM appears on the open VMs page without a reload.
    b.goto(&format!("{url}/vms")).unwrap();
    b.eval(MARK).unwrap();
    let (guest, _) = guest::counter(60);
    // Memory the host fills, so the move takes long enough for its progress bar to show.
    let spec = json!({ "guest": guest, "mem_mib": 1024, "prefill_mib": 900 });
    let (status, body) = http(&a.dir, "POST", "/api/v1/vms", Some(&spec));
    assert_eq!(status, 201, "{body}");
    let vm: Value = serde_json::from_str(&body).unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    wait_page(
        &mut b,
        "the new VM running on the VMs page",
        &format!(
            "(() => {{ const r = document.querySelector('tr[data-vm=\"{id}\"]'); return !!r && r.innerText.includes('running'); }})()"
        ),
        TIMEOUT,
        &procs,
    );
    assert_eq!(
        b.eval(STILL_MARKED).unwrap(),
        json!(true),
        "the page reloaded"
    );
    shot(&mut b, "vms");

    // A live migration started from the page's own action: its progress bar shows while it
    // runs, and it lands in the history as done, all on the open page.
    b.goto(&format!("{url}/migrations")).unwrap();
    b.eval(MARK).unwrap();
    b.eval(
        "window.__progress = []; new MutationObserver(() => {
            document.querySelectorAll('[role=progressbar]').forEach(p => window.__progress.push(p.getAttribute('aria-valuenow')));
        }).observe(document.body, { subtree: true, childList: true, attributes: true })",
    )
    .unwrap();
    let started = b
        .eval(&format!(
            "fetch('/vms/{id}/migrate', {{ method: 'POST', body: new URLSearchParams({{
                csrf: document.querySelector('meta[name=csrf-token]').content, mode: 'live', target: '{}' }}) }})
             .then(r => r.status)",
            b_node.peer
        ))
        .unwrap();
    assert_eq!(
        started,
        json!(200),
        "the migrate action (its redirect followed)"
    );
    wait_page(
        &mut b,
        "the migration done in the history",
        &format!(
            "(() => {{ const r = document.querySelector('[data-live=history] tr[data-migration]'); return !!r && r.innerText.includes('done') && r.innerText.includes('{id}'); }})()"
        ),
        GUEST_TIMEOUT,
        &procs,
    );
    let seen = b.eval("window.__progress").unwrap();
    assert!(
        !seen.as_array().unwrap().is_empty(),
        "no progress bar was seen while the migration ran"
    );
    eprintln!("progress values seen: {seen}");
    assert_eq!(
        b.eval(STILL_MARKED).unwrap(),
        json!(true),
        "the page reloaded"
    );
    shot(&mut b, "migrations");

    // A job submitted from the form is accepted, runs and succeeds on its open page, and
    // its log follows live.
    b.goto(&format!("{url}/jobs")).unwrap();
    b.eval(
        "document.getElementById('spec').value = 'name: from-the-form\\npayload:\\n  guest: builtin:counter\\narguments: [passes=2]\\n';
         document.querySelector('select[name=key]').value = 'dash';
         document.getElementById('submit-job').submit(); true",
    )
    .unwrap();
    wait_page(
        &mut b,
        "the job page after submitting",
        "location.pathname.startsWith('/jobs/') && document.body.innerText.includes('Job accepted')",
        TIMEOUT,
        &procs,
    );
    b.eval(MARK).unwrap();
    wait_page(
        &mut b,
        "the job succeeded on its page",
        "document.querySelector('[data-live=summary]').innerText.includes('succeeded')",
        GUEST_TIMEOUT,
        &procs,
    );
    wait_page(
        &mut b,
        "the job's log followed to its end",
        "(() => { const l = document.getElementById('log'); return !!l && l.innerText.includes('result='); })()",
        TIMEOUT,
        &procs,
    );
    assert_eq!(
        b.eval(STILL_MARKED).unwrap(),
        json!(true),
        "the page reloaded"
    );
    let job_text = b.eval("document.body.innerText").unwrap();
    assert!(
        job_text.as_str().unwrap().contains("Download result"),
        "{job_text}"
    );
    let result = b
        .eval("fetch(document.querySelector('a[download]').href).then(r => r.text())")
        .unwrap();
    assert!(
        !result.as_str().unwrap().is_empty(),
        "an empty result download"
    );
    shot(&mut b, "job");
    b.goto(&format!("{url}/jobs")).unwrap();
    shot(&mut b, "jobs");

    // The node page: politeness with its reason, charts, events.
    b.goto(&format!("{url}/node")).unwrap();
    wait_page(
        &mut b,
        "four charts on the node page",
        "document.querySelectorAll('figure.chart polyline').length >= 4",
        TIMEOUT,
        &procs,
    );
    let node_text = b.eval("document.body.innerText").unwrap();
    for want in [
        "Politeness",
        "Over time",
        "CPU (host)",
        "Recent events",
        &a.peer,
    ] {
        assert!(
            node_text.as_str().unwrap().contains(want),
            "{want}: {node_text}"
        );
    }
    shot(&mut b, "node");

    // A killed node is marked dead on the open overview.
    b.goto(&format!("{url}/")).unwrap();
    b.eval(MARK).unwrap();
    kill(&b_node.proc, libc::SIGKILL);
    wait_page(
        &mut b,
        "the killed node marked dead",
        &format!(
            "(() => {{ const r = document.querySelector('tr[data-peer=\"{}\"]'); return !!r && r.innerText.includes('dead'); }})()",
            b_node.peer
        ),
        TIMEOUT,
        &[&a.proc],
    );
    assert_eq!(
        b.eval(STILL_MARKED).unwrap(),
        json!(true),
        "the page reloaded"
    );

    // The event stream drops (the node is killed): the page says so; it comes back with
    // the node (on the same port) and the page says that too, still without a reload.
    wait_page(
        &mut b,
        "the stream connected",
        "document.body.dataset.connected === '1'",
        TIMEOUT,
        &[&a.proc],
    );
    kill(&a.proc, libc::SIGKILL);
    let mut a_proc = a.proc;
    a_proc.wait(TIMEOUT);
    wait_page(
        &mut b,
        "the page saying the connection dropped",
        "!document.getElementById('connection').hidden && document.body.dataset.connected === '0'",
        TIMEOUT,
        &[],
    );
    let port_s = port.to_string();
    let listen = a.addr.split("/p2p/").next().unwrap().to_string();
    let a2 = start(
        "a-again",
        &a.dir,
        &config,
        &listen,
        &["--dashboard-port", &port_s],
    );
    wait_page(
        &mut b,
        "the page reconnected",
        "document.getElementById('connection').hidden && document.body.dataset.connected === '1'",
        TIMEOUT,
        &[&a2.proc],
    );
    assert_eq!(
        b.eval(STILL_MARKED).unwrap(),
        json!(true),
        "the page reloaded"
    );

    // The sign-in page strangers see.
    b.goto(&format!("{url}/login")).unwrap();
    shot(&mut b, "login");

    // A phone, dark theme.
    b.viewport(390, 844, true).unwrap();
    b.color_scheme("dark").unwrap();
    b.goto(&format!("{url}/")).unwrap();
    shot(&mut b, "overview-phone-dark");
    let overflow = b
        .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
        .unwrap();
    assert_eq!(overflow, json!(true), "the overview is wider than a phone");

    // Nothing came from anywhere but the node, and no script failed.
    let origin = format!("http://localhost:{port}/");
    let foreign: Vec<String> = b
        .requested_urls()
        .into_iter()
        .filter(|u| !u.starts_with(&origin) && !u.starts_with("about:") && !u.starts_with("data:"))
        .collect();
    assert!(foreign.is_empty(), "requests elsewhere: {foreign:?}");
    let errors = b.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:?}");
}

/// One HTTP/1.1 exchange on `addr` with `host` as Host; (status, headers, body).
fn raw(addr: &str, host: &str, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let text = request.replace("{host}", host);
    s.write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

fn get(addr: &str, host: &str, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        host,
        &format!("GET {path} HTTP/1.1\r\nHost: {{host}}\r\n{cookie}Connection: close\r\n\r\n"),
    )
}

fn post(addr: &str, host: &str, path: &str, form: &str, extra: &str) -> (u16, String, String) {
    raw(
        addr,
        host,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {{host}}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
}

/// The CSRF token a page carries.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .expect("a csrf meta tag")
        + 27;
    page[at..].split('"').next().unwrap().to_string()
}

fn owner_override(dir: &Path) -> String {
    let (_, body) = http(dir, "GET", "/api/v1/politeness", None);
    let v: Value = serde_json::from_str(&body).unwrap();
    v["owner_override"].as_str().unwrap().to_string()
}

#[test]
fn strangers_sign_in_and_actions_need_their_csrf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("api.token"), TOKEN).unwrap();
    let n = start(
        "n",
        &dir,
        "dashboard:\n  host: 0.0.0.0\n",
        "/ip4/127.0.0.1/tcp/0",
        &["--dashboard-port", "0"],
    );
    // --dashboard-port 0 after the file's host: off.
    assert!(!dir.join("dashboard.url").exists());
    drop(n);

    let n = start(
        "n",
        &dir,
        "dashboard:\n  host: 0.0.0.0\n",
        "/ip4/127.0.0.1/tcp/0",
        &[],
    );
    let url = dashboard_url(&dir);
    let port = url.rsplit(':').next().unwrap().to_string();
    let local = format!("127.0.0.1:{port}");
    let here = format!("localhost:{port}");

    // This machine, by a loopback name: trusted.
    let (status, _, page) = get(&local, &here, "/", None);
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);

    // An action without its token, with a wrong one, or from another site's page: refused,
    // and nothing changed.
    let before = owner_override(&n.dir);
    let (status, _, body) = post(&local, &here, "/node/owner", "owner=active", "");
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = post(&local, &here, "/node/owner", "owner=active&csrf=00", "");
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &local,
        &here,
        "/node/owner",
        &format!("owner=active&csrf={csrf}"),
        "Origin: https://evil.example\r\n",
    );
    assert_eq!(status, 403);
    let (status, _, _) = post(&local, &here, "/node/drain", "deadline_s=5", "");
    assert_eq!(status, 403, "a drain without its token");
    assert_eq!(owner_override(&n.dir), before);
    // With it: done, and the page it lands on says so.
    let (status, head, _) = post(
        &local,
        &here,
        "/node/owner",
        &format!("owner=active&csrf={csrf}"),
        &format!("Origin: http://{here}\r\n"),
    );
    assert_eq!(status, 303, "{head}");
    assert_eq!(owner_override(&n.dir), "active");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a redirect")
        .to_string();
    let (_, _, landed) = get(&local, &here, &location, None);
    assert!(landed.contains("Owner set to active"), "{landed}");

    // A page of another site re-pointed at 127.0.0.1 (DNS rebinding): a stranger.
    let (status, _, page) = get(&local, &format!("evil.example:{port}"), "/", None);
    assert_eq!(status, 401);
    assert!(page.contains("action=\"/login\""), "{page}");
    let (status, _, _) = get(&local, &format!("evil.example:{port}"), "/events", None);
    assert_eq!(status, 401, "the event stream needs a session too");

    // A stranger from another address (this machine's non-loopback one, when it has one).
    let remote_ip = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .map(str::to_string)
        });
    let (addr, host) = match &remote_ip {
        Some(ip) => (format!("{ip}:{port}"), format!("{ip}:{port}")),
        None => {
            eprintln!("no global IPv4 address: the stranger calls from loopback by another name");
            (local.clone(), format!("evil.example:{port}"))
        }
    };
    let (status, _, page) = get(&addr, &host, "/vms", None);
    assert_eq!(status, 401, "{page}");
    let login_csrf = csrf_of(&page);
    let (status, _, page) = post(
        &addr,
        &host,
        "/login",
        &format!("csrf={login_csrf}&token=wrong-token"),
        "",
    );
    assert_eq!(status, 401);
    assert!(page.contains("not this node"), "{page}");
    let (status, _, _) = post(&addr, &host, "/login", &format!("token={TOKEN}"), "");
    assert_eq!(status, 403, "a sign-in without its CSRF token");
    let (status, head, _) = post(
        &addr,
        &host,
        "/login",
        &format!("csrf={login_csrf}&token={TOKEN}"),
        "",
    );
    assert_eq!(status, 303, "{head}");
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{attr} missing: {set_cookie}");
    }
    assert!(
        !set_cookie.contains(TOKEN),
        "the cookie holds the token itself"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let (status, _, page) = get(&addr, &host, "/vms", Some(&cookie));
    assert_eq!(status, 200, "{page}");
    // The stranger's CSRF token is its session's, not loopback's.
    let remote_csrf = csrf_of(&page);
    assert_ne!(remote_csrf, csrf);
    let (status, _, _) = raw(
        &addr,
        &host,
        &format!(
            "POST /node/owner HTTP/1.1\r\nHost: {{host}}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\nowner=auto&csrf={csrf}",
            "owner=auto&csrf=".len() + csrf.len()
        ),
    );
    assert_eq!(status, 403, "another session's CSRF token");
    assert_eq!(owner_override(&n.dir), "active");
    let form = format!("owner=auto&csrf={remote_csrf}");
    let (status, _, _) = raw(
        &addr,
        &host,
        &format!(
            "POST /node/owner HTTP/1.1\r\nHost: {{host}}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303);
    assert_eq!(owner_override(&n.dir), "auto");
    // A forged cookie is nobody's session.
    let (status, _, _) = get(&addr, &host, "/", Some("novacron_session=00ff"));
    assert_eq!(status, 401);

    // Every answer forbids framing and foreign scripts.
    let (_, head, _) = get(&local, &here, "/", None);
    let head = head.to_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    drop(n);
}
