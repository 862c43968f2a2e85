//! `novacron bench node`: the node daemon as volunteers and operators meet it.
//!
//! - `daemon_start_to_ready_ms`: from spawning `novacron node` on a fresh data directory to
//!   the first 200 answer of `GET /api/v1/node`, and `daemon_restart_to_ready_ms` on the same
//!   directory right after a kill -9 (identity key and database exist). Reference: spawn to
//!   exit of `novacron --version`, the floor of starting this binary at all.
//! - `api_p99_ms`: `GET /api/v1/vms` of a daemon running up to 4 idle VMs (as many as its
//!   slots take, one per CPU), under `--clients` closed-loop clients, each on its own
//!   keep-alive HTTP/1.1 connection. Reference: the same load against a minimal axum server
//!   in this process answering the same bytes from memory.
//! - `mesh_migrate_downtime_ms`: live migration of the migration issue's idle workload
//!   between two daemons on loopback (libp2p streams), alternating direction. Reference: the
//!   same workload moved by `bench migrate`'s direct-TCP path between two bare VMMs.
//!
//! What it cannot do: separate the load generator from the server. On this 2-core machine
//! the clients (one thread) and the daemon (two runtime threads) share the cores, so the API
//! latencies include waiting for a core; the reference pays the same. It cannot SIGTERM a
//! daemon either (the local-mesh process handle only kills), so a restart follows a kill -9.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::migrate::{idle_reference, IDLE_MIGRATE_AFTER_MS};
use super::report::{in_scratch_dir, median, percentile, Goal, Report};
use crate::api::client::{path_segment, ApiClient, ClientError};
use crate::api::types::{
    Backend, MigrationInfo, MigrationMode, MigrationRequest, MigrationState, VmInfo, VmSpec,
    VmState,
};
use crate::api::{MemberStatus, NodeStatus};
use crate::local_mesh::NodeProc;

#[derive(Args, Debug)]
pub struct NodeBenchArgs {
    /// Daemon starts (fresh, then restart) and mesh migrations measured; medians reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent API clients, each on its own keep-alive HTTP/1.1 connection.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Seconds of API load measured, after a 1 s warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Parts to run (all by default).
    #[arg(long, value_delimiter = ',', default_value = "start,api,migrate")]
    parts: Vec<Part>,
    /// Scratch directory for the daemons' data directories (default: under the system temp
    /// dir); removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Daemon start and restart to the first API answer.
    Start,
    /// API latency under concurrent clients.
    Api,
    /// Live migration between two daemons.
    Migrate,
}

const MAX_RUNS: usize = 100;
/// Each client holds a socket in this process and one in the server's.
const MAX_CLIENTS: usize = 5000;
const MAX_SECONDS: u64 = 600;

impl NodeBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }

    /// Refuses values the bench cannot run with, naming the flag and its range.
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_RUNS).contains(&self.runs) {
            bail!("--runs {}: give 1 to {MAX_RUNS}", self.runs);
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            bail!(
                "--clients {}: give 1 to {MAX_CLIENTS} (each client is a connection)",
                self.clients
            );
        }
        if !(1..=MAX_SECONDS).contains(&self.seconds) {
            bail!("--seconds {}: give 1 to {MAX_SECONDS}", self.seconds);
        }
        if self.parts.is_empty() {
            bail!("--parts is empty: give some of start,api,migrate");
        }
        Ok(())
    }

    fn wants(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

/// How long a daemon may take to answer, and two daemons to see each other.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one migration (or a VM start) may take on this slow machine.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stop is retried while the node answers 409 Conflict.
const STOP_RETRY: Duration = Duration::from_secs(10);
/// API load before the measured span.
const WARMUP: Duration = Duration::from_secs(1);
/// VMs the API answers about, as a node with work does.
const API_VMS: usize = 4;
const API_PATH: &str = "/api/v1/vms";
/// The migration issue's idle workload: 1 GiB guest, 64 MiB of the pattern at 16 MiB.
const MIGRATE_MEM_MIB: u64 = 1024;
const MIGRATE_PREFILL_MIB: u64 = 64;
/// The downtime budget `bench migrate` uses by default, so both paths aim at the same.
const DOWNTIME_BUDGET_MS: u64 = 50;

pub fn run(args: &NodeBenchArgs) -> anyhow::Result<Report> {
    args.check()?;
    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
    );
    in_scratch_dir("node", args.dir.as_deref(), |scratch| {
        let mut report = Report::new("node");
        if args.wants(Part::Start) {
            start_figures(&rt, args, scratch, &mut report)?;
        }
        if args.wants(Part::Api) {
            api_figures(&rt, args, scratch, &mut report)?;
        }
        if args.wants(Part::Migrate) {
            migrate_figures(&rt, args, scratch, &mut report)?;
        }
        report.notes.push(format!(
            "daemons, VMMs and the bench share this machine's {} cores{}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            if cfg!(debug_assertions) {
                "; debug build: every figure is slower than a release build's"
            } else {
                ""
            }
        ));
        Ok(report)
    })
}

// ---------------------------------------------------------------------------------------
// Start to ready.

/// Where a start's time went, from the spawn: the daemon's own stderr lines (read by a
/// thread as they come, so a line's time is when it was read) and the first 200 answer.
struct StartTimes {
    /// `novacron: API on ...`: after the identity key (made on a fresh directory), the
    /// SQLite database and its schema migrations, the libp2p swarm, VM recovery and the
    /// REST listener's bind.
    api_bound: Duration,
    /// `novacron: ready, API at ...`: after the listen addresses and routing table are
    /// printed (the swarm's first answers).
    ready_line: Duration,
    /// The first 200 answer to `GET /api/v1/node`, polled every millisecond once `api.url`
    /// exists. It can come before the ready line: the API serves from its bind on.
    first_200: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn start_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let (mut fresh, mut again, mut floor) = (vec![], vec![], vec![]);
    let (mut bound, mut ready_line) = (vec![], vec![]);
    for run in 0..args.runs {
        let dir = scratch.join(format!("start-{run}"));
        let (daemon, t) = Daemon::start(rt, &format!("start-{run}"), &dir, None)?;
        fresh.push(ms(t.first_200));
        bound.push(ms(t.api_bound));
        ready_line.push(ms(t.ready_line));
        drop(daemon);
        let (daemon, t) = Daemon::start(rt, &format!("restart-{run}"), &dir, None)?;
        again.push(ms(t.first_200));
        drop(daemon);
        floor.push(ms(process_start(&exe)?));
    }
    let fresh = median(&mut fresh);
    let floor = median(&mut floor);
    report.add(
        "daemon_start_to_ready_ms",
        fresh,
        "ms",
        Some(Goal::at_most(300.0)),
    );
    report.add("daemon_restart_to_ready_ms", median(&mut again), "ms", None);
    report.add("process_start_ms", floor, "ms", None);
    report.add(
        "daemon_start_vs_process_start",
        fresh / floor.max(1e-9),
        "x",
        None,
    );
    report.add(
        "daemon_start_parts.api_bound_ms",
        median(&mut bound),
        "ms",
        None,
    );
    report.add(
        "daemon_start_parts.ready_line_ms",
        median(&mut ready_line),
        "ms",
        None,
    );
    report.notes.push(format!(
        "start: median of {} fresh data directories; restart on the same directory right \
         after a kill -9; process_start_ms is spawn to exit of `novacron --version`",
        args.runs
    ));
    Ok(())
}

/// Spawn to exit of `novacron --version`.
fn process_start(exe: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run novacron --version")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("novacron --version exited with {status}");
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// A daemon under measurement.

/// A `novacron node --ephemeral` process started by the bench. Dropping it stops every VM
/// it runs (through its API), kills it (its VMMs die with it), then kills any VMM process
/// still in a cgroup of this node: nothing the bench started outlives it, also when a
/// measurement fails half-way. It must
/// be dropped outside the runtime (it blocks on it).
struct Daemon {
    proc: NodeProc,
    client: ApiClient,
    rt: Arc<Runtime>,
    /// The REST API's socket address.
    api: SocketAddr,
    peer: String,
    /// Its dial address (`.../p2p/PEERID`).
    addr: String,
}

impl Daemon {
    /// Starts a daemon on `dir` (joined through `bootstrap`) and waits for its first 200
    /// answer and its ready line.
    fn start(
        rt: &Arc<Runtime>,
        name: &str,
        dir: &Path,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<(Daemon, StartTimes)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A killed daemon leaves its api.url behind; polling it would find a dead port.
        let url_file = dir.join("api.url");
        let _ = std::fs::remove_file(&url_file);
        let spawned = Instant::now();
        // Ephemeral: the VMs of a daemon the bench kills die with it.
        let mut proc = NodeProc::spawn(name, dir, bootstrap, &["--ephemeral".into()])?;
        let deadline = spawned + START_TIMEOUT;
        let (client, api, answered) = match rt.block_on(first_answer(&url_file, deadline)) {
            Ok(first) => first,
            Err(e) => bail!("node {name}: {e:#}\nits stderr:\n{}", proc.stderr()),
        };
        let (addr, peer) = proc.wait_listening(START_TIMEOUT)?;
        let api_bound = wait_line(&proc, "novacron: API on ", deadline)?;
        let ready_line = wait_line(&proc, "novacron: ready, API at ", deadline)?;
        let times = StartTimes {
            api_bound: api_bound.saturating_duration_since(spawned),
            ready_line: ready_line.saturating_duration_since(spawned),
            first_200: answered.saturating_duration_since(spawned),
        };
        Ok((
            Daemon {
                proc,
                client,
                rt: rt.clone(),
                api,
                peer,
                addr,
            },
            times,
        ))
    }

    /// Creates a VM and waits until it runs.
    async fn create_running(&self, spec: &VmSpec) -> anyhow::Result<VmInfo> {
        let vm: VmInfo = self.client.post("/api/v1/vms", spec).await?;
        let path = format!("/api/v1/vms/{}", path_segment(&vm.id));
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        let mut vm = vm;
        while vm.state != VmState::Running {
            if !vm.state.is_active() || Instant::now() > deadline {
                bail!(
                    "VM {} on {} is {} ({}), not running",
                    vm.id,
                    self.proc.name,
                    vm.state.as_str(),
                    vm.detail.as_deref().unwrap_or("no detail")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            vm = self.client.get(&path).await?;
        }
        Ok(vm)
    }

    /// Whether this node's cell view has `peer` live.
    async fn sees_live(&self, peer: &str) -> bool {
        self.client
            .get::<Vec<MemberStatus>>("/api/v1/peers")
            .await
            .is_ok_and(|members| members.iter().any(|m| m.peer_id == peer && m.live))
    }

    /// Stops every active VM through the API (best effort, logged).
    async fn stop_vms(&self) {
        let vms = match self.client.get::<Vec<VmInfo>>(API_PATH).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(node = %self.proc.name, error = %e, "cannot list VMs to stop them");
                return;
            }
        };
        for vm in vms.iter().filter(|v| v.state.is_active()) {
            if let Err(e) = self.stop_vm(&vm.id).await {
                tracing::warn!(vm = %vm.id, error = %e, "cannot stop a VM of the bench");
            }
        }
    }

    /// Stops a VM, retrying while the node answers 409 (a VM that just migrated in is
    /// `running` a moment before its supervisor takes commands).
    async fn stop_vm(&self, id: &str) -> Result<Option<VmInfo>, ClientError> {
        let path = format!("/api/v1/vms/{}", path_segment(id));
        let deadline = Instant::now() + STOP_RETRY;
        loop {
            match self.client.delete::<VmInfo>(&path).await {
                Err(ClientError::Api { status: 409, .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.rt.block_on(self.stop_vms());
        self.proc.kill9();
        match self.peer.parse::<novacron_mesh::swarm::PeerId>() {
            Ok(peer) => kill_vmms_of(&crate::vms::host_tag(&peer.to_bytes())),
            Err(e) => tracing::warn!(peer = %self.peer, error = %e, "cannot name its VMMs"),
        }
    }
}

/// Polls `api.url` and then `GET /api/v1/node` until the first 200 answer: the client, the
/// API's socket address and when the answer came.
async fn first_answer(
    url_file: &Path,
    deadline: Instant,
) -> anyhow::Result<(ApiClient, SocketAddr, Instant)> {
    let mut target: Option<(ApiClient, SocketAddr)> = None;
    let mut last = format!("{} never appeared", url_file.display());
    loop {
        if target.is_none() {
            // Written atomically by the daemon (temp + rename): never half a URL.
            if let Ok(url) = std::fs::read_to_string(url_file) {
                let url = url.trim();
                let api = url
                    .strip_prefix("http://")
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .with_context(|| {
                        format!("{}: {url:?} is no http://IP:PORT", url_file.display())
                    })?;
                target = Some((ApiClient::new(url, None, None)?, api));
            }
        }
        if let Some((client, api)) = &target {
            match client.get::<NodeStatus>("/api/v1/node").await {
                Ok(_) => return Ok((client.clone(), *api, Instant::now())),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            bail!("no 200 answer to GET /api/v1/node within {START_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// When the node's first stderr line starting with `prefix` was read.
fn wait_line(proc: &NodeProc, prefix: &str, deadline: Instant) -> anyhow::Result<Instant> {
    loop {
        if let Some((at, ())) = proc.find_line(|l| l.starts_with(prefix).then_some(())) {
            return Ok(at);
        }
        if Instant::now() > deadline {
            bail!(
                "node {} printed no {prefix:?} line; its stderr:\n{}",
                proc.name,
                proc.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILLs every process in a VM cgroup of the node tagged `tag` (`vm-<id>-<tag>`): the
/// VMMs a killed daemon left behind. Only for after the daemon is dead.
fn kill_vmms_of(tag: &str) {
    let suffix = format!("-{tag}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let ours = cgroups
            .split(['/', '\n'])
            .any(|seg| seg.starts_with("vm-") && seg.ends_with(&suffix));
        if ours {
            tracing::warn!(pid, "killing a VMM the bench's daemon left behind");
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn idle_spec(mem_mib: u64, prefill_mib: Option<u64>) -> VmSpec {
    VmSpec {
        name: Some("bench-node".into()),
        backend: Backend::Kvm,
        guest: Some("builtin:idle".into()),
        kernel: None,
        initrd: None,
        cmdline: None,
        command: None,
        mem_mib,
        vcpus: 1,
        migration: crate::api::types::default_migration_modes(),
        prefill_mib,
    }
}

// ---------------------------------------------------------------------------------------
// API latency.

fn api_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (daemon, _) = Daemon::start(rt, "api", &scratch.join("api"), None)?;
    let (running, body) = rt.block_on(async {
        let mut running = 0;
        for _ in 0..API_VMS {
            match daemon
                .create_running(&idle_spec(crate::api::types::default_mem_mib(), None))
                .await
            {
                Ok(_) => running += 1,
                // Its slots (one per CPU) are taken: as much work as the node takes.
                Err(e) if running > 0 && refused_for_capacity(&e) => break,
                Err(e) => return Err(e),
            }
        }
        anyhow::Ok((running, daemon.client.get_text(API_PATH).await?))
    })?;
    let measured = load(rt, daemon.api, args.clients, args.seconds)?;
    // The reference runs alone: the daemon and its VMs are gone by then.
    drop(daemon);
    let reference = reference_load(rt, Bytes::from(body.clone()), args)?;

    let p99 = measured.percentile(99.0);
    let ref_p99 = reference.percentile(99.0);
    report.add("api_p50_ms", measured.percentile(50.0), "ms", None);
    report.add("api_p99_ms", p99, "ms", Some(Goal::at_most(20.0)));
    report.add("api_max_ms", measured.percentile(100.0), "ms", None);
    report.add("api_requests_per_s", measured.per_second(), "1/s", None);
    report.add("api_body_bytes", body.len() as f64, "B", None);
    report.add(
        "reference_http_p50_ms",
        reference.percentile(50.0),
        "ms",
        None,
    );
    report.add("reference_http_p99_ms", ref_p99, "ms", None);
    report.add(
        "reference_http_max_ms",
        reference.percentile(100.0),
        "ms",
        None,
    );
    report.add(
        "reference_http_requests_per_s",
        reference.per_second(),
        "1/s",
        None,
    );
    report.add("api_p99_vs_reference", p99 / ref_p99.max(1e-9), "x", None);
    report.add(
        "api_requests_per_s_vs_reference",
        measured.per_second() / reference.per_second().max(1e-9),
        "x",
        None,
    );
    report.notes.push(format!(
        "api: GET {API_PATH} ({running} idle VMs, as many of {API_VMS} as the node's slots \
         take, {} B answers) by {} closed-loop clients on \
         one client thread, each its own keep-alive connection (set up before the clock \
         starts), {WARMUP:?} warm-up then {} s measured; latency is request written to \
         answer read; the reference is an axum server (axum-server, 2 worker threads like \
         the daemon) in the bench process answering the same bytes from memory",
        body.len(),
        args.clients,
        args.seconds
    ));
    Ok(())
}

/// Whether the node answered 503: it takes no more VMs now (its slots or memory are taken).
fn refused_for_capacity(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::api::client::ClientError>()
        .is_some_and(|c| matches!(c, crate::api::client::ClientError::Api { status: 503, .. }))
}

/// The latencies of one load run (ms, sorted) and the span they were counted over.
struct Load {
    sorted_ms: Vec<f64>,
    span: Duration,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.sorted_ms, p)
    }

    fn per_second(&self) -> f64 {
        self.sorted_ms.len() as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

/// `clients` connections to `addr`, each sending `GET /api/v1/vms` and waiting for the
/// answer in a loop: a warm-up, then `seconds` of requests whose latency is counted.
fn load(rt: &Runtime, addr: SocketAddr, clients: usize, seconds: u64) -> anyhow::Result<Load> {
    let request: Arc<[u8]> =
        format!("GET {API_PATH} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n")
            .into_bytes()
            .into();
    rt.block_on(async {
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let s = TcpStream::connect(addr).await.with_context(|| {
                format!(
                    "load client {} of {clients} cannot connect to {addr} (each client is a \
                     socket: lower --clients or raise `ulimit -n`)",
                    i + 1
                )
            })?;
            s.set_nodelay(true)?;
            conns.push(s);
        }
        let from = Instant::now() + WARMUP;
        let until = from + Duration::from_secs(seconds);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(client_loop(s, request.clone(), from, until)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.context("a load client panicked")??);
        }
        all.sort_by(f64::total_cmp);
        Ok(Load {
            sorted_ms: all,
            span: until - from,
        })
    })
}

/// One client: request, read the whole answer, again, until `until`; the latencies (ms) of
/// the requests sent from `from` on.
async fn client_loop(
    mut s: TcpStream,
    request: Arc<[u8]>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut chunk = vec![0u8; 16 << 10];
    let mut buf = Vec::with_capacity(16 << 10);
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(latencies);
        }
        s.write_all(&request).await?;
        buf.clear();
        let answer = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "the server closed a keep-alive connection after {} answers",
                    latencies.len()
                );
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(a) = parse_response(&buf)? {
                break a;
            }
        };
        let done = Instant::now();
        if answer.status != 200 {
            bail!("GET {API_PATH} answered {}", answer.status);
        }
        if answer.len != buf.len() {
            bail!(
                "the server sent {} bytes after the answer, unasked",
                buf.len() - answer.len
            );
        }
        if sent >= from {
            latencies.push(ms(done - sent));
        }
    }
}

/// The same load against an axum server in this process that answers `GET /api/v1/vms`
/// with `body` from memory: the floor of HTTP on this machine.
fn reference_load(rt: &Runtime, body: Bytes, args: &NodeBenchArgs) -> anyhow::Result<Load> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the reference server's runtime")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        API_PATH,
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(hyper::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let server = server_rt.spawn(axum_server::from_tcp(listener).serve(app.into_make_service()));
    let result = load(rt, addr, args.clients, args.seconds);
    server.abort();
    server_rt.shutdown_background();
    result
}

/// The largest answer head and body the load clients read.
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 16 << 20;

/// One complete HTTP/1.1 answer at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Head and body, in bytes.
    len: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum AnswerError {
    #[error("the answer's head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the answer's head is not an HTTP/1.x status line and headers: {0}")]
    Malformed(String),
    #[error("the answer has no Content-Length (chunked or close-delimited bodies are not read)")]
    NoLength,
    #[error("the answer's body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
}

/// Whether `buf` holds a whole answer yet (sans-IO: the caller reads, this only looks).
/// Reads only Content-Length bodies: what axum sends for a JSON answer.
fn parse_response(buf: &[u8]) -> Result<Option<Answer>, AnswerError> {
    let scan = &buf[..buf.len().min(MAX_HEAD + 4)];
    let Some(end) = scan.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(AnswerError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| AnswerError::Malformed("not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let status = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| AnswerError::Malformed(format!("status {code:?}")))?,
        _ => return Err(AnswerError::Malformed(format!("{status_line:?}"))),
    };
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| AnswerError::Malformed(format!("header {line:?}")))?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AnswerError::NoLength);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| AnswerError::Malformed(format!("Content-Length {value:?}")))?,
            );
        }
    }
    let body = match (length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err(AnswerError::NoLength),
    };
    if body > MAX_BODY {
        return Err(AnswerError::BodyTooLarge(body));
    }
    let len = end + 4 + body;
    Ok((buf.len() >= len).then_some(Answer { status, len }))
}

// ---------------------------------------------------------------------------------------
// Mesh migration.

/// One mesh migration's figures.
struct MeshMove {
    downtime_ms: f64,
    total_ms: f64,
    wire_bytes: f64,
}

fn migrate_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (mut down, mut total, mut wire) = (vec![], vec![], vec![]);
    {
        let (a, _) = Daemon::start(rt, "a", &scratch.join("mesh-a"), None)?;
        let (b, _) = Daemon::start(rt, "b", &scratch.join("mesh-b"), Some(&a.addr))?;
        rt.block_on(async {
            let deadline = Instant::now() + START_TIMEOUT;
            while !(a.sees_live(&b.peer).await && b.sees_live(&a.peer).await) {
                if Instant::now() > deadline {
                    bail!("a and b did not see each other live within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })?;
        for run in 0..args.runs {
            let (from, to) = if run % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let m = rt.block_on(mesh_migrate(from, to))?;
            down.push(m.downtime_ms);
            total.push(m.total_ms);
            wire.push(m.wire_bytes);
        }
        // The daemons (and their VMs) stop here, before the reference runs.
    }
    let direct = idle_reference(args.runs, &scratch.join("direct"))?;
    let down = median(&mut down);
    report.add(
        "mesh_migrate_downtime_ms",
        down,
        "ms",
        Some(Goal::at_most(2.0 * direct.pause_to_confirm_ms).shown_as("<= 2x direct")),
    );
    report.add("mesh_migrate_total_ms", median(&mut total), "ms", None);
    report.add("mesh_migrate_wire_bytes", median(&mut wire), "B", None);
    report.add(
        "direct_migrate_pause_to_confirm_ms",
        direct.pause_to_confirm_ms,
        "ms",
        None,
    );
    report.add("direct_migrate_downtime_ms", direct.downtime_ms, "ms", None);
    report.add("direct_migrate_total_ms", direct.total_ms, "ms", None);
    report.add("direct_migrate_wire_bytes", direct.wire_bytes, "B", None);
    report.add(
        "mesh_migrate_downtime_vs_direct",
        down / direct.pause_to_confirm_ms.max(1e-9),
        "x",
        Some(Goal::at_most(2.0)),
    );
    report.notes.push(format!(
        "migrate: builtin:idle, {MIGRATE_MEM_MIB} MiB guest, {MIGRATE_PREFILL_MIB} MiB of the \
         pattern, live, {DOWNTIME_BUDGET_MS} ms budget, migrated {IDLE_MIGRATE_AFTER_MS} ms \
         after it runs; {} runs alternating a->b, b->a (a fresh VM each). Mesh downtime is \
         the daemon's: the source's final pause to the destination's confirm at the source; \
         the ratio divides it by the same span of the direct-TCP path \
         (direct_migrate_pause_to_confirm_ms); direct_migrate_downtime_ms is `bench \
         migrate`'s pause-to-resume. Mesh total is the daemon's migration record (ms \
         clock: streams opened over libp2p, destination VMM spawned, confirm); direct \
         total is from the source VMM's command to the confirm",
        args.runs
    ));
    Ok(())
}

/// A fresh idle VM on `from`, moved live to `to`; stopped there afterwards.
async fn mesh_migrate(from: &Daemon, to: &Daemon) -> anyhow::Result<MeshMove> {
    let vm = from
        .create_running(&idle_spec(MIGRATE_MEM_MIB, Some(MIGRATE_PREFILL_MIB)))
        .await?;
    // The workload of `bench migrate`: the guest runs this long before it moves.
    tokio::time::sleep(Duration::from_millis(IDLE_MIGRATE_AFTER_MS)).await;
    let id = path_segment(&vm.id);
    let started: MigrationInfo = from
        .client
        .post(
            &format!("/api/v1/vms/{id}/migrate"),
            &MigrationRequest {
                to: to.peer.clone(),
                mode: MigrationMode::Live,
                downtime_budget_ms: Some(DOWNTIME_BUDGET_MS),
            },
        )
        .await?;
    let path = format!("/api/v1/migrations/{}", path_segment(&started.id));
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    let mut m = started;
    while !m.state.is_final() {
        if Instant::now() > deadline {
            bail!(
                "migration {} of VM {} to {} did not end within {MIGRATE_TIMEOUT:?}",
                m.id,
                vm.id,
                to.proc.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        m = from.client.get(&path).await?;
    }
    if m.state != MigrationState::Done {
        bail!(
            "migration {} of VM {} from {} to {} ended {:?}: {}",
            m.id,
            vm.id,
            from.proc.name,
            to.proc.name,
            m.state,
            m.error.as_deref().unwrap_or("no reason given")
        );
    }
    let Some(downtime_ms) = m.downtime_ms else {
        bail!("migration {} is done but reports no downtime", m.id);
    };
    let total_ms = m
        .ended_at_ms
        .unwrap_or(m.started_at_ms)
        .saturating_sub(m.started_at_ms) as f64;
    if let Err(e) = to.stop_vm(&vm.id).await {
        tracing::warn!(vm = %vm.id, error = %e, "cannot stop the moved VM (stopped at the end)");
    }
    Ok(MeshMove {
        downtime_ms,
        total_ms,
        wire_bytes: m.wire_bytes as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        suite: crate::bench::Suite,
    }

    fn parse(args: &[&str]) -> Result<NodeBenchArgs, String> {
        let all = ["bench", "node"].iter().chain(args).copied();
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.suite {
            crate::bench::Suite::Node(a) => Ok(a),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn arguments_have_the_issue_defaults_and_bad_ones_are_named() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.runs, a.clients, a.seconds), (5, 200, 5));
        assert_eq!(a.parts, vec![Part::Start, Part::Api, Part::Migrate]);
        assert!(!a.json() && a.dir.is_none());
        a.check().unwrap();

        let a = parse(&[
            "--runs",
            "3",
            "--clients",
            "50",
            "--seconds",
            "2",
            "--parts",
            "api,start",
            "--json",
        ])
        .unwrap();
        assert_eq!((a.runs, a.clients, a.seconds), (3, 50, 2));
        assert!(a.wants(Part::Api) && a.wants(Part::Start) && !a.wants(Part::Migrate));
        assert!(a.json());

        let err = parse(&["--parts", "api,nope"]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err = parse(&["--clients=-3"]).unwrap_err();
        assert!(err.contains("--clients"), "{err}");
        for (flag, value) in [
            ("--clients", "0"),
            ("--clients", "100000"),
            ("--runs", "0"),
            ("--seconds", "0"),
        ] {
            let err = parse(&[flag, value])
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn answers_are_complete_only_with_their_whole_body() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        let whole = Answer {
            status: 200,
            len: answer.len(),
        };
        assert_eq!(parse_response(answer), Ok(Some(whole)));
        // Every prefix is incomplete, never an error.
        for cut in 0..answer.len() {
            assert_eq!(parse_response(&answer[..cut]), Ok(None), "cut at {cut}");
        }
        // A second answer behind the first is not counted in the first's length.
        let mut two = answer.to_vec();
        two.extend_from_slice(answer);
        assert_eq!(parse_response(&two).unwrap().unwrap().len, answer.len());
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(not_found).unwrap().unwrap().status, 404);
    }

    #[test]
    fn answers_the_clients_cannot_read_are_errors() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(AnswerError::NoLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n"),
            Err(AnswerError::NoLength)
        );
        assert!(matches!(
            parse_response(b"SSH-2.0-x\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_response(huge.as_bytes()),
            Err(AnswerError::BodyTooLarge(MAX_BODY + 1))
        );
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_response(&endless), Err(AnswerError::HeadTooLarge));
        assert_eq!(parse_response(&endless[..MAX_HEAD]), Ok(None));
    }

    #[test]
    fn load_figures_count_requests_over_the_span() {
        let load = Load {
            sorted_ms: (1..=1000).map(|i| f64::from(i) / 10.0).collect(),
            span: Duration::from_secs(5),
        };
        assert_eq!(load.per_second(), 200.0);
        assert_eq!(load.percentile(50.0), 50.0);
        assert_eq!(load.percentile(99.0), 99.0);
        assert_eq!(load.percentile(100.0), 100.0);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
