//! `novacron migrate VM --to PEER|auto`: asks the local node (REST API) to move a VM over
//! the mesh, then watches it on `/migrations/{id}/watch` until it ends: an indicatif bar on
//! a terminal, JSON lines with `--json`. Exit code 0 when the VM runs on the peer, 1 when
//! the migration failed or was cancelled. Ctrl-C cancels the migration (a second Ctrl-C
//! leaves without waiting for the node to confirm).
//!
//! Not to be confused with `novacron vm migrate` (a foreground VM sent over direct TCP).

use crate::cli::output::outln;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use super::api_args::{block_on, interrupts, ApiArgs};
use super::human::{bytes, duration_ms, short_peer};
use crate::api::client::{path_segment, ApiClient};
use crate::api::types::{MigrationInfo, MigrationMode, MigrationRequest, MigrationState, VmInfo};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The VM (its id or a unique prefix).
    vm: String,
    /// The destination: a PeerId, or `auto` for the peer with the most free capacity.
    #[arg(long, value_name = "PEER|auto")]
    to: String,
    #[arg(long, value_enum, default_value = "live")]
    mode: ModeArg,
    /// Live mode switches over once the estimated downtime is at most this (ms)
    /// [default: the node's].
    #[arg(long, value_name = "MS")]
    downtime_budget: Option<u64>,
    /// Start it and print the migration; do not watch.
    #[arg(long)]
    detach: bool,
    /// JSON lines on stdout: the migration as it starts, each update, the final state.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Live,
    Warm,
    Cold,
}

/// How often the watch stream may drop before the command gives up on it.
const WATCH_RECONNECTS: u32 = 3;

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    block_on(migrate(client, args))
}

async fn migrate(client: ApiClient, args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let mut sigint = interrupts()?;
    let vm_id = super::node_vms::resolve(&client, &args.vm).await?;
    let vm: VmInfo = client
        .get(&format!("/api/v1/vms/{}", path_segment(&vm_id)))
        .await?;
    let request = MigrationRequest {
        to: args.to.clone(),
        mode: match args.mode {
            ModeArg::Live => MigrationMode::Live,
            ModeArg::Warm => MigrationMode::Warm,
            ModeArg::Cold => MigrationMode::Cold,
        },
        downtime_budget_ms: args.downtime_budget,
    };
    let started: MigrationInfo = client
        .post(
            &format!("/api/v1/vms/{}/migrate", path_segment(&vm_id)),
            &request,
        )
        .await
        .with_context(|| format!("cannot start migrating VM {vm_id}"))?;
    let view = View::new(args.json, vm.spec.mem_mib.saturating_mul(1 << 20));
    view.update(&started);
    if args.detach {
        if !args.json {
            outln!(
                "migration {} of VM {vm_id} to {} started (watch: novacron events --kind migration)",
                started.id, started.peer
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let last = watch(&client, &started, &view, &mut sigint).await?;
    Ok(view.finish(&last))
}

/// Follows the migration until it reaches a final state; Ctrl-C cancels it.
async fn watch(
    client: &ApiClient,
    started: &MigrationInfo,
    view: &View,
    sigint: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<MigrationInfo> {
    let id = path_segment(&started.id);
    let mut last = started.clone();
    let mut cancelled = false;
    let mut drops = 0;
    while !last.state.is_final() {
        let mut ws = client
            .websocket::<MigrationInfo>(&format!("/api/v1/migrations/{id}/watch"))
            .await?;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(m)) => {
                        view.update(&m);
                        let done = m.state.is_final();
                        last = m;
                        if done {
                            ws.close().await;
                            return Ok(last);
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
                _ = sigint.recv() => {
                    if cancelled {
                        view.clear();
                        bail!("left while migration {} is being cancelled; see `novacron events`", last.id);
                    }
                    cancelled = true;
                    view.note(&format!(
                        "Ctrl-C: cancelling migration {} (Ctrl-C again to leave now)",
                        last.id
                    ));
                    let cancel = client
                        .post::<_, MigrationInfo>(
                            &format!("/api/v1/migrations/{id}/cancel"),
                            &serde_json::json!({}),
                        )
                        .await;
                    let m = match cancel {
                        Ok(m) => m,
                        Err(e) => {
                            // It may have ended meanwhile: the watch says how.
                            view.note(&format!("the node did not cancel it: {e}"));
                            continue;
                        }
                    };
                    view.update(&m);
                    let done = m.state.is_final();
                    last = m;
                    if done {
                        return Ok(last);
                    }
                }
            }
        }
        // The stream ended without a final state: ask, then watch again.
        last = client.get(&format!("/api/v1/migrations/{id}")).await?;
        if !last.state.is_final() {
            drops += 1;
            if drops > WATCH_RECONNECTS {
                bail!(
                    "the node keeps closing the watch of migration {} while it runs; follow it \
                     with `novacron events --kind migration`",
                    last.id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(last)
}

/// How progress is shown.
enum View {
    Bar(ProgressBar),
    Json,
}

impl View {
    fn new(json: bool, mem_bytes: u64) -> View {
        if json {
            return View::Json;
        }
        let bar = crate::cli::output::migration_bar(mem_bytes);
        bar.enable_steady_tick(Duration::from_millis(200));
        View::Bar(bar)
    }

    fn update(&self, m: &MigrationInfo) {
        match self {
            View::Json => print_json(m),
            View::Bar(bar) => {
                if let Some(p) = &m.progress {
                    if p.bytes_total > 0 {
                        bar.set_length(p.bytes_total);
                    }
                    bar.set_position(p.bytes_done.min(p.bytes_total));
                }
                bar.set_message(progress_text(m));
            }
        }
    }

    fn note(&self, text: &str) {
        match self {
            View::Json => eprintln!("novacron: {text}"),
            View::Bar(bar) => bar.println(format!("novacron: {text}")),
        }
    }

    fn clear(&self) {
        if let View::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }

    /// Says how it ended; the exit code.
    fn finish(&self, m: &MigrationInfo) -> ExitCode {
        self.clear();
        let json = matches!(self, View::Json);
        match m.state {
            MigrationState::Done => {
                if !json {
                    // The exit status tells how the migration ended, read or not.
                    let _ = outln!("{}", done_text(m));
                }
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("novacron: {}", failed_text(m));
                ExitCode::from(1)
            }
        }
    }
}

/// The bar's message: phase, round, bytes, bandwidth, ETA.
pub fn progress_text(m: &MigrationInfo) -> String {
    let Some(p) = &m.progress else {
        return format!("{} to {}", state_word(m.state), short_peer(&m.peer));
    };
    format!(
        "{} round {} | wire {} | {}/s | ETA {}",
        p.phase,
        p.round,
        bytes(p.wire_bytes),
        bytes(p.bandwidth_bps),
        p.est_remaining_ms.map_or("?".into(), duration_ms)
    )
}

fn state_word(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Running => "starting",
        MigrationState::Done => "done",
        MigrationState::Failed => "failed",
        MigrationState::Cancelled => "cancelled",
    }
}

pub fn done_text(m: &MigrationInfo) -> String {
    let took = m
        .ended_at_ms
        .map(|e| duration_ms(e.saturating_sub(m.started_at_ms)));
    format!(
        "VM {} runs on {} now: migrated in {}, downtime {}, {} on the wire",
        m.vm_id,
        m.peer,
        took.unwrap_or_else(|| "?".into()),
        m.downtime_ms.map_or("?".into(), |d| format!("{d:.1} ms")),
        bytes(m.wire_bytes)
    )
}

pub fn failed_text(m: &MigrationInfo) -> String {
    let why = m.error.as_deref().unwrap_or("no reason given");
    match m.state {
        MigrationState::Cancelled => format!(
            "migration {} of VM {} was cancelled ({why}); the VM keeps running here",
            m.id, m.vm_id
        ),
        _ => format!(
            "migration {} of VM {} to {} failed: {why}; the VM keeps running here",
            m.id, m.vm_id, m.peer
        ),
    }
}

/// One JSON line on stdout; a reader that went away must not stop the watch (its exit
/// status tells how the migration ended).
fn print_json<T: serde::Serialize>(v: &T) {
    if let Ok(text) = serde_json::to_string(v) {
        let _ = outln!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{MigrationDirection, MigrationProgressInfo};

    fn mig(state: MigrationState) -> MigrationInfo {
        MigrationInfo {
            id: "m1".into(),
            vm_id: "vm1".into(),
            direction: MigrationDirection::Out,
            peer: "12D3KooWPeer".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1_000,
            ended_at_ms: Some(3_500),
            downtime_ms: Some(12.4),
            wire_bytes: 3 << 20,
            error: Some("the peer refused: no capacity".into()),
            progress: None,
        }
    }

    #[test]
    fn texts_say_what_happened() {
        let mut m = mig(MigrationState::Running);
        assert_eq!(progress_text(&m), "starting to 12D3KooWPeer");
        m.progress = Some(MigrationProgressInfo {
            phase: "precopy".into(),
            round: 2,
            wire_bytes: 5 << 20,
            bandwidth_bps: 40 << 20,
            est_remaining_ms: Some(1500),
            ..Default::default()
        });
        assert_eq!(
            progress_text(&m),
            "precopy round 2 | wire 5.0 MiB | 40 MiB/s | ETA 1.5 s"
        );
        assert_eq!(
            done_text(&mig(MigrationState::Done)),
            "VM vm1 runs on 12D3KooWPeer now: migrated in 2.5 s, downtime 12.4 ms, 3.0 MiB on the wire"
        );
        let f = failed_text(&mig(MigrationState::Failed));
        assert!(
            f.contains("failed: the peer refused") && f.contains("keeps running here"),
            "{f}"
        );
        assert!(failed_text(&mig(MigrationState::Cancelled)).contains("was cancelled"));
    }
}
