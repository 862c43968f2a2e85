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
//! - `checkpoint_push_mib_s`: a job whose guest fills 64 MiB with pseudo-random words
//!   (`builtin:counter`, 8 Mi words), checkpointed every 5 s: the first (full) checkpoint's bytes times its 2
//!   holders over the push's time as the runner reports it (publishing its files as chunk
//!   sets, both holders fetching them, until both answer). Reference, same run: node-001
//!   (which holds nothing) fetches the checkpoint's largest layer, published by the runner,
//!   as a chunk set (`chunk_fetch_mib_s`, one copy from one provider).
//! - `recovery_s`: that job's runner killed with kill -9 (its VMMs die with it) until the
//!   job runs again on a surviving node restored from the checkpoint, as its origin reports
//!   it.

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
use crate::api::{Request, Response};
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
    /// A checkpoint pushed to 2 peers; kill -9 of the job's runner to the job running
    /// again, restored from it.
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
        &[
            "--no-job-replicas".to_string(),
            "--dashboard-port".to_string(),
            "0".to_string(),
        ],
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
        let r = recovery(mesh, &clients, key).await?;
        report.add("checkpoint_mib", r.checkpoint_mib, "MiB", None);
        report.add("checkpoint_push_mib_s", r.push_mib_s, "MiB/s", None);
        report.add("checkpoint_publish_ms", r.publish_ms, "ms", None);
        report.add("checkpoint_push_ms", r.push_ms, "ms", None);
        report.add("chunk_fetch_mib_s", r.fetch_mib_s, "MiB/s", None);
        report.add(
            "checkpoint_push_vs_chunk_fetch",
            r.push_mib_s / r.fetch_mib_s.max(1e-9),
            "x",
            None,
        );
        report.add(
            "recovery_s",
            r.recovery_s,
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

/// What the recovery part measured.
struct Recovery {
    checkpoint_mib: f64,
    publish_ms: f64,
    push_ms: f64,
    push_mib_s: f64,
    fetch_mib_s: f64,
    recovery_s: f64,
}

/// Checkpoint holders of a bench job.
const HOLDERS: usize = crate::policy::job_fencing::HOLDERS;

/// A job checkpointed to its peers, then its runner killed: the push's rate, the reference
/// fetch's, and the seconds until the job runs again, restored from the checkpoint.
async fn recovery(
    mesh: &mut LocalMesh,
    clients: &[ApiClient],
    key: &SubmitterKey,
) -> anyhow::Result<Recovery> {
    // node-001 (the origin, an entry node) runs no replica: the runner is another node.
    let origin = &clients[0];
    // 8 Mi words: 64 MiB of pseudo-random data written within the first checkpoint
    // interval (a pass takes ~4 s on the nested development KVM), unique and incompressible.
    let spec = r#"{"payload":{"guest":"builtin:counter:words=8388608,passes=1000000"},
        "memoryMib":128,"checkpointIntervalS":5}"#;
    let (_, job) = submit_until_running(origin, key, spec, 200).await?;
    let path = format!("/api/v1/jobs/{}", path_segment(&job.id));
    let held = Instant::now();
    let (job, checkpoint) = loop {
        let now: JobInfo = origin.get(&path).await?;
        if let Some(c) = now.replicas[0]
            .checkpoint
            .clone()
            .filter(|c| c.holders.len() == HOLDERS)
        {
            break (now, c);
        }
        if now.state.is_final() || held.elapsed() > WAIT {
            cancel(origin, &now).await;
            bail!(
                "job {} has no checkpoint held by {HOLDERS} peers after {:?}: {:?}",
                now.id,
                held.elapsed(),
                now.replicas[0].detail
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let runner = job.replicas[0].node.clone().unwrap_or_default();
    let victim = mesh
        .nodes
        .iter()
        .position(|n| n.peer_id().as_deref() == Some(runner.as_str()))
        .filter(|v| *v != 0)
        .with_context(|| format!("job {} runs on {runner}, not a runner node", job.id))?;
    let vm = job.replicas[0].vm_id.clone().unwrap_or_default();
    let fetch_mib_s = reference_fetch(mesh, victim, &vm).await?;
    let mib = checkpoint.bytes as f64 / (1 << 20) as f64;
    let push_mib_s = mib * HOLDERS as f64 / (checkpoint.push_ms.max(1) as f64 / 1000.0);

    let killed = Instant::now();
    mesh.nodes[victim].kill9();
    loop {
        let now: JobInfo = origin.get(&path).await?;
        let r = &now.replicas[0];
        if r.generation > 1 && r.state == ReplicaState::Running {
            let recovery_s = killed.elapsed().as_secs_f64();
            cancel(origin, &now).await;
            if r.restored_from.is_none() {
                bail!(
                    "job {} ran again from the beginning, not from its checkpoint",
                    now.id
                );
            }
            return Ok(Recovery {
                checkpoint_mib: mib,
                publish_ms: checkpoint.publish_ms as f64,
                push_ms: checkpoint.push_ms as f64,
                push_mib_s,
                fetch_mib_s,
                recovery_s,
            });
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

/// The reference: node-001 fetches the largest memory layer of VM `vm`'s checkpoint on node
/// `runner`, which publishes it, as a chunk set: MiB/s.
async fn reference_fetch(mesh: &LocalMesh, runner: usize, vm: &str) -> anyhow::Result<f64> {
    let snapshot = crate::vms::paths::VmPaths::new(&mesh.nodes[runner].data_dir, vm).snapshot();
    let layer = std::fs::read_dir(&snapshot)
        .with_context(|| format!("cannot read {}", snapshot.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ncl"))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .with_context(|| format!("no memory layer in {}", snapshot.display()))?;
    let copy = mesh.nodes[0].data_dir.with_file_name("reference-layer.ncl");
    std::fs::copy(layer.path(), &copy)
        .with_context(|| format!("cannot copy {}", layer.path().display()))?;
    let id = match mesh.nodes[runner].ask(&Request::PublishFile {
        path: copy.clone(),
        name: Some("reference".into()),
    })? {
        Response::Published(p) => p.id,
        other => bail!("the runner could not publish the layer: {other:?}"),
    };
    let out = copy.with_extension("fetched");
    let fetched = match mesh.nodes[0].ask(&Request::Fetch {
        id,
        out: out.clone(),
    })? {
        Response::Fetched(f) => f,
        other => bail!("node-001 could not fetch the layer: {other:?}"),
    };
    let same = std::fs::read(&out)? == std::fs::read(&copy)?;
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&copy);
    if !same {
        bail!("the fetched layer differs from the published one");
    }
    Ok(fetched.mib_per_sec)
}
