//! `novacron jobs` and `novacron job show|logs|result|cancel`: jobs through a node's API.
//! A job id may be given by a unique prefix of a job the node knows; a full id is asked of
//! the mesh when the node does not know it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};

use super::api_args::{block_on, interrupts, ApiArgs};
use super::human::{ago, resolve_id, short_ids, short_peer, Table};
use super::output::outln;
use crate::api::client::{path_segment, ApiClient};
use crate::api::types::{now_ms, JobInfo, JobLogs, JobState, ReplicaState};
use crate::model::MAX_SERIAL_BYTES;

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, placed, running, migrating, succeeded, failed,
    /// cancelled, lost).
    #[arg(long, value_parser = parse_state)]
    state: Option<JobState>,
    /// Only the jobs this node knows (submitted through it, or running here); by default
    /// the jobs of the node's whole cell are listed.
    #[arg(long)]
    here: bool,
    /// Print JSON: the list as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// A job state by its word (`running`, `succeeded`, ...).
fn parse_state(word: &str) -> Result<JobState, String> {
    JobState::parse(word).ok_or_else(|| {
        let words: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("not a job state: give one of {}", words.join(", "))
    })
}

#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    cmd: JobCommand,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// The job as its origin knows it: spec, state, replicas and their result hashes.
    Show { id: String },
    /// A replica's serial output (default: the one whose result won, else the first).
    Logs {
        id: String,
        #[arg(long)]
        replica: Option<u32>,
        /// Keep printing as the replica writes, until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Write the job's agreed result to FILE (verified against its hash), or to stdout.
    Result {
        id: String,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Cancel a job (through the node it was submitted through).
    Cancel { id: String },
}

pub fn run_list(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    block_on(async move {
        let scope = if args.here { "node" } else { "cell" };
        let path = match args.state {
            Some(s) => format!("/api/v1/jobs?scope={scope}&state={}", s.as_str()),
            None => format!("/api/v1/jobs?scope={scope}"),
        };
        let jobs: Vec<JobInfo> = client.get(&path).await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&jobs)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let short = short_ids(&ids, 8);
        let mut t = Table::new(&[
            "ID",
            "STATE",
            "REPLICAS",
            "NAME",
            "ORIGIN",
            "SUBMITTED",
            "DETAIL",
        ]);
        let now = now_ms();
        for (j, id) in jobs.iter().zip(short) {
            t.row(vec![
                id,
                j.state.as_str().to_string(),
                replicas_summary(j),
                j.spec.name.clone().unwrap_or_default(),
                short_peer(&j.origin),
                ago(now, j.submitted_at_ms),
                j.detail.clone().unwrap_or_default(),
            ]);
        }
        outln!("{}", t.render().trim_end())?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run(args: JobArgs) -> anyhow::Result<ExitCode> {
    let client = args
        .api
        .client()?
        .with_max_body(MAX_SERIAL_BYTES as usize + 4096);
    let json = args.json;
    block_on(async move {
        match args.cmd {
            JobCommand::Show { id } => {
                let id = resolve(&client, &id).await?;
                let job: JobInfo = client.get(&job_path(&id, "")).await?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&job)?)?;
                } else {
                    show(&job)?;
                }
            }
            JobCommand::Logs {
                id,
                replica,
                follow,
            } => {
                let id = resolve(&client, &id).await?;
                logs(&client, &id, replica, follow, json).await?;
            }
            JobCommand::Result { id, out } => {
                let id = resolve(&client, &id).await?;
                match out {
                    Some(path) => {
                        let bytes = client.get_bytes(&job_path(&id, "/result")).await?;
                        write_atomically(&path, &bytes)?;
                        eprintln!("{} bytes written to {}", bytes.len(), path.display());
                    }
                    None => print_result(&client, &id, None).await?,
                }
            }
            JobCommand::Cancel { id } => {
                let id = resolve(&client, &id).await?;
                let job: Option<JobInfo> = client.delete(&job_path(&id, "")).await?;
                let job = job.ok_or_else(|| anyhow!("the node answered without the job"))?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&job)?)?;
                } else {
                    outln!("{}", job_line(&job))?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn job_path(id: &str, rest: &str) -> String {
    format!("/api/v1/jobs/{}{rest}", path_segment(id))
}

/// A full id as given, or the job the node knows whose id starts with the prefix.
async fn resolve(client: &ApiClient, given: &str) -> anyhow::Result<String> {
    if given.len() == 64 {
        return Ok(given.to_string());
    }
    let jobs: Vec<JobInfo> = client.get("/api/v1/jobs?scope=cell").await?;
    resolve_id(
        jobs.iter().map(|j| j.id.as_str()),
        given,
        "job",
        "novacron jobs",
    )
    .map_err(|e| anyhow!(e))
}

/// `abcdef012345 running: 1 of 1 replicas running` and the detail.
pub fn job_line(job: &JobInfo) -> String {
    let mut t = format!(
        "job {} {}: {}",
        &job.id[..job.id.len().min(12)],
        job.state.as_str(),
        replicas_summary(job)
    );
    if let Some(d) = &job.detail {
        t.push_str(&format!(" ({d})"));
    }
    t
}

/// `2/3 running, 1 finished`: what the replicas are doing.
fn replicas_summary(job: &JobInfo) -> String {
    let mut counts: Vec<(ReplicaState, usize)> = Vec::new();
    for r in &job.replicas {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.state, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    format!("{} of {}", parts.join(", "), job.replicas.len())
}

fn show(job: &JobInfo) -> anyhow::Result<()> {
    outln!("job        {}", job.id)?;
    if let Some(n) = &job.spec.name {
        outln!("name       {n}")?;
    }
    outln!("state      {}", job.state.as_str())?;
    if let Some(d) = &job.detail {
        outln!("detail     {d}")?;
    }
    outln!("submitter  {}", job.submitter)?;
    outln!("origin     {}", job.origin)?;
    outln!("submitted  {}", ago(now_ms(), job.submitted_at_ms))?;
    outln!(
        "asks       {} vCPU, {} MiB, {} replica(s), quorum {}, priority {}",
        job.spec.vcpus,
        job.spec.memory_mib,
        job.spec.replicas,
        job.spec.quorum(),
        job.spec.priority
    )?;
    if let Some(h) = &job.result_hash {
        outln!("result     {h}")?;
    }
    let mut t = Table::new(&["REPLICA", "STATE", "GEN", "NODE", "VM", "RESULT", "DETAIL"]);
    for r in &job.replicas {
        t.row(vec![
            r.index.to_string(),
            r.state.as_str().to_string(),
            r.generation.to_string(),
            r.node.as_deref().map(short_peer).unwrap_or_default(),
            r.vm_id.clone().unwrap_or_default(),
            r.result_hash
                .as_deref()
                .map(|h| h[..h.len().min(12)].to_string())
                .unwrap_or_default(),
            r.detail.clone().unwrap_or_default(),
        ]);
    }
    outln!("{}", t.render().trim_end())
}

async fn logs(
    client: &ApiClient,
    id: &str,
    replica: Option<u32>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut sigint = interrupts()?;
    let mut offset = 0u64;
    let mut replica = replica;
    loop {
        let mut path = job_path(id, &format!("/logs?offset={offset}"));
        if let Some(r) = replica {
            path.push_str(&format!("&replica={r}"));
        }
        let chunk: JobLogs = client.get(&path).await?;
        replica = Some(chunk.replica);
        if json {
            outln!("{}", serde_json::to_string(&chunk)?)?;
        } else if !chunk.text.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk.text.as_bytes())?;
            out.flush()?;
        }
        let got = chunk.next_offset > offset;
        offset = chunk.next_offset;
        if got {
            continue;
        }
        if !follow || chunk.finished {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = sigint.recv() => return Ok(()),
        }
    }
}

/// Writes the job's result to stdout.
pub async fn print_result(
    client: &ApiClient,
    id: &str,
    _replica: Option<u32>,
) -> anyhow::Result<()> {
    let bytes = client.get_bytes(&job_path(id, "/result")).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in its directory (fsync, rename).
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
