//! `novacron bench dashboard`: what the dashboard costs.
//!
//! - `page_p99_ms`: the slowest page's p99 server time, rendering each page whole (frame
//!   included) from a view of 200 cell members, 50 other cells, 1,000 VMs, 1,000 jobs (3
//!   replicas each), 1,000 migrations, an hour of samples and 200 events. Reference:
//!   `serde_json` encoding of the same data (what the REST API answers for it), measured in
//!   the same run; the ratio is reported.
//! - `event_to_paint_ms_p50`: from a change made through a real node's API (the owner
//!   override, alternated) to headless Chromium painting it on the open node page (the
//!   frame after the live region is swapped in). Reference: the same event reaching the
//!   page's event stream (`event_to_stream_ms_p50`); the rest is the fragment's fetch,
//!   render and swap.
//! - `rss_overhead_mib`: a real node's resident memory with the dashboard on (every page
//!   served a few times, the charts' ring filling) minus the same node's with it off, each
//!   after the same settling time, in the same run.
//!
//! What it cannot do: take the page times through the node's HTTP stack with that much
//! state (a node here runs a handful of VMs, not 1,000); the HTTP layer adds well under a
//! millisecond (`bench node`'s API figures).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use novacron_dashboard::filter::ListFilter;
use novacron_dashboard::history::{ChurnCounts, History, Reading, CAPACITY, SAMPLE_EVERY_MS};
use novacron_dashboard::pages::Page;
use novacron_dashboard::shell::{document, Frame};
use novacron_dashboard::views;

use super::browser::Browser;
use super::report::{self, in_scratch_dir, Goal, Report};
use crate::api::types::{
    EventEnvelope, JobInfo, JobSpec, JobState, MigrationDirection, MigrationInfo, MigrationMode,
    MigrationProgressInfo, MigrationState, NodeEvent, OwnerSetting, PolitenessInfo, ReplicaInfo,
    ReplicaState, VmInfo, VmSpec, VmState,
};
use crate::api::{CellStatus, MemberStatus, NodeStatus, SummaryStatus};
use crate::local_mesh::NodeProc;

#[derive(Args, Debug)]
pub struct DashboardBenchArgs {
    /// Renders of each page measured (after 10 warm-up renders).
    #[arg(long, default_value_t = 200)]
    renders: usize,
    /// Changes painted in the browser.
    #[arg(long, default_value_t = 30)]
    paints: usize,
    /// Seconds each node settles before its memory is read.
    #[arg(long, default_value_t = 8)]
    settle_s: u64,
    /// Scratch directory for the nodes' data directories (default: under the system temp
    /// dir); removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl DashboardBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(args: &DashboardBenchArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("dashboard");
    pages(args, &mut report);
    in_scratch_dir("dashboard", args.dir.as_deref(), |scratch| {
        live(args, scratch, &mut report)?;
        memory(args, scratch, &mut report)
    })?;
    Ok(report)
}

/// The `p`-th percentile of `samples` (sorted here).
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    report::percentile(samples, p)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- page_p99_ms -------------------------------------------------------------------------

/// The big view the pages are rendered from.
struct View {
    status: NodeStatus,
    vms: Vec<VmInfo>,
    jobs: Vec<JobInfo>,
    migrations: Vec<MigrationInfo>,
    events: Vec<EventEnvelope>,
    history: History,
    politeness: PolitenessInfo,
}

fn peer(i: usize) -> String {
    format!("12D3KooWBenchPeer{i:030}")
}

fn big_view() -> View {
    let members = (0..200)
        .map(|i| MemberStatus {
            peer_id: peer(i),
            live: i % 17 != 0,
            signed: true,
            vcpus: 8,
            mem_mib: 16_384,
            free_slots: (i % 4) as u32,
            load_permille: (i * 37 % 1000) as u32,
            version: "0.1.0".into(),
            addrs: vec![format!("/ip4/10.0.{}.{}/tcp/4001", i / 250, i % 250)],
        })
        .collect();
    let summaries = (0..50)
        .map(|i| SummaryStatus {
            cell: format!("8/{i:02x}"),
            signer: peer(1000 + i),
            issued_at: 1_700_000_000,
            members: 180,
            total_vcpus: 1440,
            free_vcpus: 700,
            total_memory_mib: 180 * 16_384,
            free_slots: 300,
            mean_load_permille: 450,
        })
        .collect();
    let status = NodeStatus {
        peer_id: peer(0),
        version: "0.1.0".into(),
        uptime_s: 86_400.0,
        listen_addrs: vec!["/ip4/10.0.0.1/tcp/4001".into()],
        connected_peers: 60,
        routing_table_peers: 180,
        wire_sent: 1 << 33,
        wire_received: 1 << 33,
        wire_by_protocol: Vec::new(),
        mesh_size_estimate: 9_200,
        cell: Some(CellStatus {
            id: "8/00".into(),
            members,
            gossip_sent: 1 << 30,
            gossip_received: 1 << 30,
            gossip_interval_ms: 1000,
        }),
        summaries,
    };
    let vm_spec: VmSpec =
        serde_json::from_str(r#"{"guest":"builtin:counter","name":"bench"}"#).expect("a VM spec");
    let vms = (0..1000)
        .map(|i| VmInfo {
            id: format!("vm-{i:08x}"),
            spec: vm_spec.clone(),
            state: VmState::ALL[i % VmState::ALL.len()],
            detail: None,
            pid: Some(1000 + i as u32),
            created_at_ms: 1_700_000_000_000 + i as u64,
            updated_at_ms: 1_700_000_000_000 + i as u64,
            snapshot_at_ms: None,
            last_report: Some((1, i as u64)),
            adoptions: 0,
        })
        .collect();
    let job_spec: JobSpec =
        serde_json::from_str(r#"{"payload":{"guest":"builtin:counter"},"replicas":3}"#)
            .expect("a job spec");
    let jobs = (0..1000)
        .map(|i| JobInfo {
            id: format!("{i:064x}"),
            spec: job_spec.clone(),
            submitter: format!("ed25519:{:064x}", 7),
            state: JobState::ALL[i % JobState::ALL.len()],
            detail: None,
            origin: peer(0),
            replicas: (0..3)
                .map(|r| ReplicaInfo {
                    index: r,
                    state: ReplicaState::Running,
                    node: Some(peer(i % 200 + r as usize)),
                    generation: 1,
                    vm_id: Some(format!("vm-{i:08x}")),
                    result_hash: Some(format!("{:064x}", i)),
                    log_set: None,
                    result_set: None,
                    detail: None,
                    updated_at_ms: 1_700_000_000_000,
                    moved_from: None,
                    checkpoint: None,
                    restored_from: None,
                    signed_status: None,
                })
                .collect(),
            result_hash: None,
            retries: 0,
            submitted_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_000,
        })
        .collect();
    let migrations = (0..1000)
        .map(|i| MigrationInfo {
            id: format!("m-{i:08x}"),
            vm_id: format!("vm-{i:08x}"),
            direction: if i % 2 == 0 {
                MigrationDirection::Out
            } else {
                MigrationDirection::In
            },
            peer: peer(i % 200),
            mode: MigrationMode::Live,
            state: if i < 20 {
                MigrationState::Running
            } else {
                MigrationState::Done
            },
            started_at_ms: 1_700_000_000_000,
            ended_at_ms: (i >= 20).then_some(1_700_000_002_000),
            downtime_ms: (i >= 20).then_some(12.5),
            wire_bytes: 64 << 20,
            error: None,
            progress: Some(MigrationProgressInfo {
                phase: "precopy".into(),
                round: 2,
                bytes_total: 256 << 20,
                bytes_done: 100 << 20,
                bandwidth_bps: 100 << 20,
                ..MigrationProgressInfo::default()
            }),
        })
        .collect();
    let events = (0..200)
        .map(|i| EventEnvelope {
            seq: i,
            at_ms: 1_700_000_000_000 + i,
            event: NodeEvent::Member {
                peer_id: peer(i as usize),
                live: i % 2 == 0,
            },
        })
        .collect();
    let mut history = History::new();
    for i in 0..=CAPACITY as u64 {
        history.record(Reading {
            at_ms: 1_700_000_000_000 + i * SAMPLE_EVERY_MS,
            cpu_busy: i * 37,
            cpu_total: i * 100,
            mem_used_bytes: (4 << 30) + (i % 100) * (1 << 20),
            mem_total_bytes: 16 << 30,
            wire_sent: i * 20_000,
            wire_received: i * 19_000,
            gossip_sent: i * 6_000,
            gossip_received: i * 6_100,
        });
    }
    let politeness = PolitenessInfo {
        state: "run".into(),
        reasons: vec![],
        owner_idle_s: Some(600),
        on_battery: false,
        cpu_cap_percent: 100,
        mem_cap_mib: 8192,
        owner_override: OwnerSetting::Auto,
    };
    View {
        status,
        vms,
        jobs,
        migrations,
        events,
        history,
        politeness,
    }
}

/// Renders `page` whole from `v`, as the node's handler does (its data cloned out of the
/// node's state first).
fn render(page: Page, v: &View, now_ms: u64) -> String {
    let frame = Frame {
        page,
        node_name: "bench".into(),
        csrf: "0".repeat(64),
        notice: None,
    };
    let csrf = frame.csrf.clone();
    match page {
        Page::Overview => document(
            &frame,
            views::overview::render(views::overview::OverviewData {
                status: v.status.clone(),
                churn: ChurnCounts::default(),
                now_ms,
            }),
        ),
        Page::Node => document(
            &frame,
            views::node::render(views::node::NodeData {
                status: v.status.clone(),
                politeness: v.politeness.clone(),
                vms: v.vms.clone(),
                events: v.events.clone(),
                samples: v.history.samples(),
                draining: None,
                csrf,
                now_ms,
            }),
        ),
        Page::Vms => document(
            &frame,
            views::vms::render(views::vms::VmsData {
                vms: v.vms.clone(),
                filter: ListFilter::default(),
                targets: v.status.live_members().map(|m| m.peer_id.clone()).collect(),
                csrf,
                now_ms,
            }),
        ),
        Page::Jobs => document(
            &frame,
            views::jobs::render(views::jobs::JobsData {
                jobs: v.jobs.clone(),
                filter: ListFilter::default(),
                keys: vec!["default".into()],
                csrf,
                now_ms,
            }),
        ),
        Page::Job => document(
            &frame,
            views::job::render(views::job::JobData {
                job: v.jobs[0].clone(),
                log: Some(views::job::LogView {
                    text: "pass 0001\n".repeat(6_500),
                    next_offset: 65_000,
                    finished: false,
                }),
                csrf,
                now_ms,
            }),
        ),
        Page::Migrations => document(
            &frame,
            views::migrations::render(views::migrations::MigrationsData {
                migrations: v.migrations.clone(),
                now_ms,
            }),
        ),
        Page::Login => document(&frame, views::login::render(&csrf, false)),
    }
}

/// What the REST API would answer for the same data (the reference).
fn encode(page: Page, v: &View) -> usize {
    let json = match page {
        Page::Overview => serde_json::to_vec(&v.status),
        Page::Node => serde_json::to_vec(&(&v.status, &v.politeness, &v.vms, &v.events)),
        Page::Vms => serde_json::to_vec(&v.vms),
        Page::Jobs => serde_json::to_vec(&v.jobs),
        Page::Job => serde_json::to_vec(&v.jobs[0]),
        Page::Migrations => serde_json::to_vec(&v.migrations),
        Page::Login => Ok(Vec::new()),
    };
    json.map_or(0, |j| j.len())
}

fn pages(args: &DashboardBenchArgs, report: &mut Report) {
    let v = big_view();
    let now_ms = 1_700_000_000_000 + CAPACITY as u64 * SAMPLE_EVERY_MS;
    let mut worst = (0.0, Page::Overview, 0.0, 0usize);
    for page in [
        Page::Overview,
        Page::Node,
        Page::Vms,
        Page::Jobs,
        Page::Job,
        Page::Migrations,
    ] {
        let mut bytes = 0;
        for _ in 0..10 {
            bytes = render(page, &v, now_ms).len();
        }
        let mut times = Vec::with_capacity(args.renders);
        let mut refs = Vec::with_capacity(args.renders);
        for _ in 0..args.renders.max(1) {
            let t = Instant::now();
            std::hint::black_box(render(page, &v, now_ms));
            times.push(ms(t.elapsed()));
            let t = Instant::now();
            std::hint::black_box(encode(page, &v));
            refs.push(ms(t.elapsed()));
        }
        let p99 = percentile(&mut times, 99.0);
        let ref_p50 = report::median(&mut refs);
        let p50 = report::median(&mut times);
        let name = page.title().to_lowercase();
        report.add(&format!("{name}_page_p50_ms"), p50, "ms", None);
        report.add(&format!("{name}_page_p99_ms"), p99, "ms", None);
        report.add(
            &format!("{name}_page_kib"),
            bytes as f64 / 1024.0,
            "KiB",
            None,
        );
        report.add(&format!("{name}_json_p50_ms"), ref_p50, "ms", None);
        if p99 > worst.0 {
            worst = (
                p99,
                page,
                if ref_p50 > 0.0 { p50 / ref_p50 } else { 0.0 },
                bytes,
            );
        }
    }
    report.add("page_p99_ms", worst.0, "ms", Some(Goal::at_most(50.0)));
    report.add("slowest_page_vs_json_p50", worst.2, "x", None);
    report.notes.push(format!(
        "page_p99_ms: the {} page ({} KiB) is the slowest; views of 200 members, 50 cells, 1,000 VMs, 1,000 jobs, 1,000 migrations, an hour of samples; reference: serde_json of the same data",
        worst.1.title(),
        worst.3 / 1024
    ));
}

// ---- event_to_paint_ms_p50 ---------------------------------------------------------------

/// A node started by the bench, with its dashboard on a free port or off.
fn start_node(scratch: &Path, name: &str, dashboard: bool) -> anyhow::Result<NodeProc> {
    let dir = scratch.join(name);
    let port = match dashboard {
        true => free_port().context("no free port for the dashboard")?,
        false => 0,
    };
    let args = [
        "--ephemeral".to_string(),
        "--dashboard-port".to_string(),
        port.to_string(),
    ];
    let mut node = NodeProc::spawn(name, &dir, None, &args)?;
    node.wait_listening(Duration::from_secs(60))?;
    node.wait_line(
        "novacron: ready, API at ",
        Instant::now() + Duration::from_secs(60),
    )?;
    Ok(node)
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

fn read_url(dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = dir.join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string())
}

/// POSTs the owner override through the node's API.
fn set_owner(api: &str, owner: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let host = api.trim_start_matches("http://");
    let body = format!("{{\"owner\":\"{owner}\"}}");
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /api/v1/politeness/owner HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!(
            "the owner override was refused: {}",
            answer.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn live(args: &DashboardBenchArgs, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    let node = start_node(scratch, "painted", true)?;
    let dir = scratch.join("painted");
    let dashboard = read_url(&dir, "dashboard.url")?;
    let api = read_url(&dir, "api.url")?;
    let mut b = Browser::launch().context("headless Chromium")?;
    b.goto(&format!("{dashboard}/node"))?;
    if !b.wait_for(
        "document.body.dataset.connected === '1'",
        Duration::from_secs(30),
    )? {
        bail!("the node page's event stream never connected");
    }
    // Marks when the page's stream hears a politeness event, and when the swapped-in
    // override is painted (the animation frame after the swap).
    b.eval(
        "window.__heard = null; window.__painted = null; window.__want = null;
         new EventSource('/events').addEventListener('politeness', () => { if (window.__heard === null) window.__heard = Date.now(); });
         new MutationObserver(() => {
           const o = document.getElementById('owner-override');
           if (o && o.textContent === window.__want && window.__painted === null) {
             requestAnimationFrame(() => { if (window.__painted === null) window.__painted = Date.now(); });
           }
         }).observe(document.body, { subtree: true, childList: true, characterData: true });
         true",
    )?;
    let mut paint: Vec<f64> = Vec::new();
    let mut heard: Vec<f64> = Vec::new();
    for i in 0..args.paints.max(1) {
        let owner = if i % 2 == 0 { "idle" } else { "active" };
        b.eval(&format!(
            "window.__heard = null; window.__painted = null; window.__want = '{owner}'; true"
        ))?;
        let t0 = unix_ms();
        set_owner(&api, owner)?;
        if !b.wait_for("window.__painted !== null", Duration::from_secs(10))? {
            bail!("change {i} ({owner}) was never painted");
        }
        let painted = b.eval("window.__painted")?.as_f64().unwrap_or(f64::NAN);
        let got = b.eval("window.__heard")?.as_f64().unwrap_or(f64::NAN);
        paint.push(painted - t0);
        heard.push(got - t0);
        std::thread::sleep(Duration::from_millis(200));
    }
    set_owner(&api, "auto")?;
    drop(b);
    drop(node);
    let p50 = report::median(&mut paint);
    let p90 = percentile(&mut paint, 90.0);
    let h50 = report::median(&mut heard);
    report.add(
        "event_to_paint_ms_p50",
        p50,
        "ms",
        Some(Goal::at_most(250.0)),
    );
    report.add("event_to_paint_ms_p90", p90, "ms", None);
    report.add("event_to_stream_ms_p50", h50, "ms", None);
    report.notes.push(format!(
        "event_to_paint_ms: {} owner-override changes through the API, painted on the open node page in headless Chromium; reference event_to_stream_ms: the same events reaching the page's event stream",
        args.paints.max(1)
    ));
    Ok(())
}

// ---- rss_overhead_mib --------------------------------------------------------------------

/// The node's median RSS over a few readings after `settle`, in MiB; `touch` runs first.
fn settled_rss(node: &NodeProc, settle: Duration, touch: &dyn Fn()) -> anyhow::Result<f64> {
    let end = Instant::now() + settle;
    while Instant::now() < end {
        touch();
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut readings = Vec::new();
    for _ in 0..5 {
        readings.push(super::proc_usage::rss_kib(node.pid())? as f64 / 1024.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(report::median(&mut readings))
}

fn memory(args: &DashboardBenchArgs, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    let settle = Duration::from_secs(args.settle_s);
    let off = start_node(scratch, "off", false)?;
    let rss_off = settled_rss(&off, settle, &|| {})?;
    drop(off);
    let on = start_node(scratch, "on", true)?;
    let url = read_url(&scratch.join("on"), "dashboard.url")?;
    let pages = [
        "/",
        "/node",
        "/vms",
        "/jobs",
        "/migrations",
        "/assets/live.js",
    ];
    let touch = || {
        for p in pages {
            let _ = get(&url, p);
        }
    };
    let rss_on = settled_rss(&on, settle, &touch)?;
    drop(on);
    report.add("rss_dashboard_off_mib", rss_off, "MiB", None);
    report.add("rss_dashboard_on_mib", rss_on, "MiB", None);
    report.add(
        "rss_overhead_mib",
        rss_on - rss_off,
        "MiB",
        Some(Goal::at_most(10.0)),
    );
    report.notes.push(format!(
        "rss_overhead_mib: a node's median RSS after {} s with the dashboard on (every page fetched every 0.5 s) minus another's with it off",
        args.settle_s
    ));
    Ok(())
}

/// One GET of `path` on `base` (`http://localhost:PORT`), body read and dropped.
fn get(base: &str, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let addr = host.replacen("localhost", "127.0.0.1", 1);
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = Vec::new();
    s.read_to_end(&mut sink)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_from_the_big_view() {
        let v = big_view();
        for page in [Page::Overview, Page::Vms, Page::Jobs, Page::Migrations] {
            let html = render(page, &v, 1_700_000_100_000);
            assert!(html.len() > 10_000, "{page:?}: {}", html.len());
            assert!(encode(page, &v) > 1_000);
        }
    }
}
