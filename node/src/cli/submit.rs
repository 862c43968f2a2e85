//! `novacron submit job.yaml`: reads and checks a job spec, signs it with a submitter key
//! (fresh nonce and validity window each time), and sends it through the node's API. With
//! `--wait`, follows the job to its end with a progress display and prints its result.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use novacron_mesh::submission::{Submission, DEFAULT_SUBMISSION_LIFETIME_S};
use novacron_mesh::swarm::clock::unix_now;
use novacron_mesh::util::hex;

use super::api_args::{block_on, interrupts, ApiArgs};
use super::jobs::{job_line, print_result};
use super::keys::load_submitter_key;
use super::output::outln;
use crate::api::client::path_segment;
use crate::api::types::{JobInfo, JobState, SubmitJobRequest};
use crate::jobs::spec_file::{read_spec_file, to_signed_json};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job spec (YAML or JSON; see docs/jobs.md).
    spec: PathBuf,
    /// The submitter key to sign with: a name in the keys directory [default: default].
    #[arg(long, default_value = "default")]
    key: String,
    /// The keys directory [default: $NOVACRON_KEYS_DIR, $XDG_CONFIG_HOME/novacron/keys,
    /// ~/.config/novacron/keys].
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// Nodes accept the signed submission for this many seconds.
    #[arg(long, default_value_t = DEFAULT_SUBMISSION_LIFETIME_S, value_name = "SECONDS")]
    valid_for: u64,
    /// Follow the job to its end (a progress display); print its result when it succeeds.
    #[arg(long)]
    wait: bool,
    /// Print JSON: the job as accepted (with --wait: as it ended).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let name = args.spec.display().to_string();
    let spec = read_spec_file(&args.spec, &name)?;
    let key = load_submitter_key(args.keys_dir.as_deref(), &args.key)?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| anyhow::anyhow!("no random bytes for the nonce: {e}"))?;
    let signed = Submission::new(
        to_signed_json(&spec),
        nonce,
        unix_now(),
        Duration::from_secs(args.valid_for),
    )
    .sign(key.identity())
    .context("cannot sign the job")?;
    let client = args
        .api
        .client()?
        .with_max_body(crate::model::MAX_SERIAL_BYTES as usize + 4096);
    block_on(async move {
        let body = SubmitJobRequest {
            submission: hex::encode(&signed),
        };
        let job: JobInfo = client.post("/api/v1/jobs", &body).await?;
        if !args.wait {
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&job)?)?;
            } else {
                outln!("job {} accepted: {}", job.id, job.state.as_str())?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let job = follow(&client, &job.id, args.json).await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&job)?)?;
        } else if job.state == JobState::Succeeded {
            print_result(&client, &job.id, None).await?;
        }
        Ok(if job.state == JobState::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Polls the job until it ends (or Ctrl-C), drawing its state on a spinner.
async fn follow(
    client: &crate::api::client::ApiClient,
    id: &str,
    quiet: bool,
) -> anyhow::Result<JobInfo> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut sigint = interrupts()?;
    let path = format!("/api/v1/jobs/{}", path_segment(id));
    loop {
        let job: JobInfo = client.get(&path).await?;
        bar.set_message(job_line(&job));
        if job.state.is_final() {
            bar.finish_and_clear();
            if !quiet {
                eprintln!("{}", job_line(&job));
            }
            return Ok(job);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = sigint.recv() => {
                bar.finish_and_clear();
                anyhow::bail!("stopped waiting; the job goes on (novacron job show {id})");
            }
        }
    }
}
