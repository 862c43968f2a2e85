//! `novacron bench jobs`: mesh jobs as a submitter and the mesh meet them.
//!
//! - `placements_per_s`: the pure placement decision for one replica
//!   ([`placement_decision`]) over a 50,000-node view (256 cells' signed summaries, three per
//!   cell, and the node's own cell of 195 members: [`synthetic::view_of_50k`]), on one core.
//!   Reference, same run: the node's older member-only choice
//!   ([`crate::policy::placement::candidates`]) over the same 195 members.
//! - `submit_to_running_ms_p50`: 5 local `novacron node` processes; a builtin-guest job
//!   submitted (signed) through node-001's API (an entry node: `--no-job-replicas`, so the
//!   replica always runs on a peer) until node-001 reports the replica running. Reference:
//!   a VM created directly through a runner node's API until it runs (the VMM start the job
//!   path adds placement and two mesh round trips to).
//! - `recovery_s`: a long job's runner killed with kill -9 (its VMMs die with it) until the
//!   job runs again on a surviving node, as its origin reports it.
//!
//! What it cannot do yet: `checkpoint_push_mib_s` (checkpoint layers are not pushed to
//! peers yet: see docs/jobs.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use novacron_mesh::cells::CellId;
use novacron_mesh::submission::Submission;
use novacron_mesh::submitter_key::SubmitterKey;
use novacron_mesh::swarm::clock::unix_now;
use novacron_mesh::util::hex;

use super::report::{in_scratch_dir, median, Goal, Report};
use crate::api::client::{path_segment, ApiClient};
use crate::api::types::{JobInfo, ReplicaState, SubmitJobRequest, VmInfo, VmSpec, VmState};
use crate::local_mesh::{LocalMesh, STOP_GRACE};
use crate::policy::job_placement::{placement_decision, synthetic, Decision, Need, View};

#[derive(Args, Debug)]
pub struct JobsBenchArgs {
    /// Local nodes for the submit and recovery figures.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Jobs submitted (and VMs created, for the reference); medians reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds the placement decision is repeated.
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Parts to run (all by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "placement,submit,recovery"
    )]
    parts: Vec<Part>,
    /// Scratch directory for the nodes' data directories (default: under the system temp
    /// dir); removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The pure placement decision over a 50,000-node view.
    Placement,
    /// Submit to running through a local mesh.
    Submit,
    /// kill -9 of a job's runner to the job running again.
    Recovery,
}

impl JobsBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

/// The issue's goals.
const PLACEMENTS_GOAL: f64 = 50_000.0;
const SUBMIT_GOAL_MS: f64 = 150.0;
const RECOVERY_GOAL_S: f64 = 10.0;
const WAIT: Duration = Duration::from_secs(120);

pub fn run(args: &JobsBenchArgs) -> anyhow::Result<Report> {
    if !(2..=50).contains(&args.nodes) || !(1..=100).contains(&args.runs) {
        bail!("--nodes must be 2-50 and --runs 1-100");
    }
    let mut report = Report::new("jobs");
    if args.parts.contains(&Part::Placement) {
        placements(&mut report, Duration::from_secs(args.seconds.clamp(1, 60)));
    }
    if args.parts.iter().any(|p| *p != Part::Placement) {
        in_scratch_dir("jobs", args.dir.as_deref(), |dir| {
            through_a_mesh(args, dir, &mut report)
        })?;
    }
    report.notes.push(
        "checkpoint_push_mib_s: not measured (checkpoints are not pushed to peers yet)".into(),
    );
    Ok(report)
}

/// `placements_per_s` and its reference.
fn placements(report: &mut Report, for_how_long: Duration) {
    let now = Duration::from_secs(1_800_000_000);
    let views: Vec<_> = (1..=8).map(|s| synthetic::view_of_50k(s, now)).collect();
    let need = Need {
        vcpus: 1,
        memory_mib: 512,
    };
    let own = CellId::new(8, 0x2a).expect("a valid cell");
    let (mut n, started) = (0u64, Instant::now());
    let mut placed = 0u64;
    while started.elapsed() < for_how_long {
        for (i, (summaries, members)) in views.iter().enumerate() {
            let view = View {
                summaries,
                own_cell: own,
                own_members: members,
            };
            if matches!(
                placement_decision(&view, need, &[], now, n ^ i as u64),
                Decision::Peer(_)
            ) {
                placed += 1;
            }
            n += 1;
        }
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    let (mut m, started) = (0u64, Instant::now());
    while started.elapsed() < for_how_long {
        for (_, members) in &views {
            let c = crate::policy::placement::candidates(members, "me", need.memory_mib, &[], m);
            std::hint::black_box(c);
            m += 1;
        }
    }
    let reference = m as f64 / started.elapsed().as_secs_f64();
    report.add(
        "placements_per_s",
        per_s,
        "/s",
        Some(Goal::at_least(PLACEMENTS_GOAL)),
    );
    report.add("member_only_choices_per_s", reference, "/s", None);
    report.add("placements_vs_member_only", per_s / reference, "x", None);
    report.notes.push(format!(
        "placements over a 50,000-node view (256 cells x 3 summaries, 195 members), one core; \
         {placed} of {n} decisions found a member"
    ));
}

fn through_a_mesh(
    args: &JobsBenchArgs,
    dir: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let key = SubmitterKey::create(&dir.join("bench.key")).context("a submitter key")?;
    let config = dir.join("node.yaml");
    std::fs::write(
        &config,
        format!("trustedSubmitters:\n  - {}\n", key.public()),
    )?;
    let extra = vec!["--config".to_string(), config.display().to_string()];
    let mut mesh = LocalMesh::start(
        &dir.join("mesh"),
        args.nodes,
        &extra,
        &["--no-job-replicas".to_string()],
        &|| false,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(measure(args, &mut mesh, &key, report));
    mesh.stop(STOP_GRACE, &|| false);
    result
}

async fn measure(
    args: &JobsBenchArgs,
    mesh: &mut LocalMesh,
    key: &SubmitterKey,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for node in &mesh.nodes {
        let deadline = Instant::now() + WAIT;
        let url = loop {
            if let Some(u) = node.api_url() {
                break u;
            }
            if Instant::now() > deadline {
                bail!("{} wrote no api.url", node.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        clients.push(ApiClient::new(&url, None, None)?);
    }
    wait_cell(&clients[0], args.nodes).await?;
    let origin = &clients[0];
    if args.parts.contains(&Part::Submit) {
        let mut jobs = Vec::new();
        let mut vms = Vec::new();
        for i in 0..args.runs {
            let spec = r#"{"payload":{"guest":"builtin:idle"},"memoryMib":16}"#;
            let (ms, job) = submit_until_running(origin, key, spec, i as u8).await?;
            jobs.push(ms);
            cancel(origin, &job).await;
            let started = Instant::now();
            let vm_spec: VmSpec = serde_json::from_value(
                serde_json::json!({"guest": "builtin:idle", "mem_mib": 16}),
            )?;
            let vm: VmInfo = clients[1].post("/api/v1/vms", &vm_spec).await?;
            if vm.state != VmState::Running {
                bail!("the reference VM is {}", vm.state.as_str());
            }
            vms.push(started.elapsed().as_secs_f64() * 1000.0);
            let _ = clients[1]
                .delete::<VmInfo>(&format!("/api/v1/vms/{}", path_segment(&vm.id)))
                .await;
        }
        let job_ms = median(&mut jobs);
        let vm_ms = median(&mut vms);
        report.add(
            "submit_to_running_ms_p50",
            job_ms,
            "ms",
            Some(Goal::at_most(SUBMIT_GOAL_MS)),
        );
        report.add("vm_create_to_running_ms_p50", vm_ms, "ms", None);
        report.add("submit_vs_vm_create", job_ms / vm_ms.max(1e-9), "x", None);
    }
    if args.parts.contains(&Part::Recovery) {
        let secs = recovery(mesh, &clients, key).await?;
        report.add(
            "recovery_s",
            secs,
            "s",
            Some(Goal::at_most(RECOVERY_GOAL_S)),
        );
    }
    report.notes.push(format!(
        "{} local nodes (ephemeral, one cell); jobs signed and submitted through node-001's API",
        args.nodes
    ));
    Ok(())
}

/// Waits until node-001 sees `n` live members.
async fn wait_cell(client: &ApiClient, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status: crate::api::NodeStatus = client.get("/api/v1/node").await?;
        let live = status
            .cell
            .map_or(0, |c| c.members.iter().filter(|m| m.live).count());
        if live >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {live} of {n} nodes live after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signed(key: &SubmitterKey, spec: &str, nonce: u8) -> anyhow::Result<SubmitJobRequest> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    n[0] = nonce;
    let bytes = Submission::new(
        spec.as_bytes().to_vec(),
        n,
        unix_now(),
        Duration::from_secs(600),
    )
    .sign(key.identity())?;
    Ok(SubmitJobRequest {
        submission: hex::encode(&bytes),
    })
}

/// Submits `spec` and polls its origin until a replica runs: the milliseconds, and the job.
async fn submit_until_running(
    origin: &ApiClient,
    key: &SubmitterKey,
    spec: &str,
    nonce: u8,
) -> anyhow::Result<(f64, JobInfo)> {
    let body = signed(key, spec, nonce)?;
    let started = Instant::now();
    let job: JobInfo = origin.post("/api/v1/jobs", &body).await?;
    let path = format!("/api/v1/jobs/{}", path_segment(&job.id));
    loop {
        let now: JobInfo = origin.get(&path).await?;
        if now
            .replicas
            .iter()
            .any(|r| r.state == ReplicaState::Running)
        {
            return Ok((started.elapsed().as_secs_f64() * 1000.0, now));
        }
        if now.state.is_final() || started.elapsed() > WAIT {
            bail!(
                "job {} is {} ({:?})",
                now.id,
                now.state.as_str(),
                now.detail
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn cancel(origin: &ApiClient, job: &JobInfo) {
    let _ = origin
        .delete::<JobInfo>(&format!("/api/v1/jobs/{}", path_segment(&job.id)))
        .await;
}

/// A long job's runner killed: seconds until the job runs again elsewhere.
async fn recovery(
    mesh: &mut LocalMesh,
    clients: &[ApiClient],
    key: &SubmitterKey,
) -> anyhow::Result<f64> {
    // node-001 (the origin, an entry node) runs no replica: the runner is another node.
    let origin = &clients[0];
    let spec = r#"{"payload":{"guest":"builtin:idle"},"memoryMib":16}"#;
    {
        let (_, job) = submit_until_running(origin, key, spec, 200).await?;
        let runner = job.replicas[0].node.clone().unwrap_or_default();
        let victim = mesh
            .nodes
            .iter()
            .position(|n| n.peer_id().as_deref() == Some(runner.as_str()))
            .filter(|v| *v != 0)
            .with_context(|| format!("job {} runs on {runner}, not a runner node", job.id))?;
        let killed = Instant::now();
        mesh.nodes[victim].kill9();
        let path = format!("/api/v1/jobs/{}", path_segment(&job.id));
        loop {
            let now: JobInfo = origin.get(&path).await?;
            let r = &now.replicas[0];
            if r.generation > 1 && r.state == ReplicaState::Running {
                let secs = killed.elapsed().as_secs_f64();
                cancel(origin, &now).await;
                return Ok(secs);
            }
            if killed.elapsed() > WAIT {
                bail!(
                    "job {} did not run again within {WAIT:?}: {:?}",
                    now.id,
                    now.detail
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
