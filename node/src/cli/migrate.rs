//! Migration from the command line: the options of `novacron vm run --migrate-to` /
//! `novacron vm migrate`, opening the streams and handing them to the VMM, and showing
//! progress (an indicatif bar on a terminal, or JSON lines with `--json`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use novacron_vm::control::{
    Command, MigrateOut, MigrationMode, MigrationProgress, MigrationSummary, OnNoConverge,
};
use novacron_vm::launcher::VmmProcess;
use novacron_vm::migration::links::{self, Links, MAX_DATA_STREAMS};
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Live,
    Warm,
    Cold,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NoConvergeArg {
    /// Throttle the vCPUs harder each round (auto-converge).
    Throttle,
    /// Pause and finish as a warm migration.
    Warm,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateOpts {
    /// Migrate the VM to a `novacron vm receive` listening at this address (host:port).
    #[arg(long)]
    pub migrate_to: Option<String>,
    /// Milliseconds after the guest starts at which to migrate it.
    #[arg(long, default_value_t = 0, requires = "migrate_to")]
    pub migrate_after: u64,
    #[arg(long, value_enum, default_value = "live", requires = "migrate_to")]
    pub mode: ModeArg,
    /// Live mode switches over once the estimated downtime is at most this (ms).
    #[arg(long, default_value_t = 50)]
    pub downtime_budget: u64,
    /// Live rounds before --on-no-converge applies.
    #[arg(long, default_value_t = 30)]
    pub max_rounds: u32,
    /// Pre-copy milliseconds before --on-no-converge applies.
    #[arg(long, default_value_t = 30_000)]
    pub max_precopy: u64,
    #[arg(long, value_enum, default_value = "warm")]
    pub on_no_converge: NoConvergeArg,
    /// Parallel data streams.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=MAX_DATA_STREAMS as i64))]
    pub streams: u8,
    /// Print progress as JSON lines on stdout (the guest console then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Hash all guest memory at switchover and print it (costs downtime; for checks).
    #[arg(long)]
    pub verify_memory: bool,
}

impl MigrateOpts {
    pub fn target(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(to) = &self.migrate_to else {
            return Ok(None);
        };
        let addr = to
            .to_socket_addrs()
            .with_context(|| format!("--migrate-to {to}: not a host:port"))?
            .next()
            .with_context(|| format!("--migrate-to {to}: the name has no address"))?;
        Ok(Some(addr))
    }
}

/// How long connecting to a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the streams to `addr` and tells the VMM to migrate over them.
pub fn start(
    vmm: &mut VmmProcess,
    addr: SocketAddr,
    opts: &MigrateOpts,
    store: Option<PathBuf>,
) -> anyhow::Result<[u8; 16]> {
    let session = links::new_session();
    let links = links::connect(addr, opts.streams, session, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot reach the destination {addr}"))?;
    let cmd = Command::MigrateOut(MigrateOut {
        session,
        mode: match opts.mode {
            ModeArg::Live => MigrationMode::Live,
            ModeArg::Warm => MigrationMode::Warm,
            ModeArg::Cold => MigrationMode::Cold,
        },
        downtime_budget_ms: opts.downtime_budget,
        max_rounds: opts.max_rounds,
        max_precopy_ms: opts.max_precopy,
        on_no_converge: match opts.on_no_converge {
            NoConvergeArg::Throttle => OnNoConverge::Throttle,
            NoConvergeArg::Warm => OnNoConverge::Warm,
        },
        store,
        verify_memory: opts.verify_memory,
    });
    vmm.send_with_streams(&cmd, &links.into_streams())?;
    Ok(session)
}

/// After the VMM reported the link lost past switchover: new streams to the same address,
/// retried for a while, so the destination can say whether it started the VM.
pub fn reconnect(vmm: &mut VmmProcess, addr: SocketAddr, session: [u8; 16]) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..60 {
        match links::connect(addr, 1, session, CONNECT_TIMEOUT) {
            Ok(l) => {
                let l: Links = l;
                vmm.send_with_streams(&Command::MigrationReconnect { session }, &l.into_streams())?;
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    match last {
        Some(e) => bail!("cannot reach the destination again: {e}"),
        None => bail!("cannot reach the destination again"),
    }
}

/// Shows migration progress.
pub enum ProgressView {
    Bar(ProgressBar),
    Json,
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonLine<'a> {
    Progress(&'a MigrationProgress),
    Done {
        summary: &'a MigrationSummary,
        downtime_bound_ms: Option<f64>,
        total_ms: f64,
    },
    Failed {
        reason: &'a str,
        summary: &'a MigrationSummary,
    },
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl ProgressView {
    pub fn new(json: bool, mem_bytes: u64) -> Self {
        if json {
            return ProgressView::Json;
        }
        let bar = ProgressBar::new(mem_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} migrating [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        ProgressView::Bar(bar)
    }

    pub fn progress(&self, p: &MigrationProgress) {
        match self {
            ProgressView::Json => print_json(&JsonLine::Progress(p)),
            ProgressView::Bar(bar) => {
                let done = p.bytes_sent + p.bytes_skipped_zero + p.bytes_skipped_held;
                if done > bar.length().unwrap_or(0) {
                    bar.set_length(done);
                }
                bar.set_position(done);
                let est = |v: Option<u64>| v.map_or("?".into(), |ms| format!("{ms} ms"));
                bar.set_message(format!(
                    "{} round {} | wire {:.1} MiB | zero {:.0} MiB, held {:.0} MiB | dirty {:.1} \
                     MiB/s | bw {:.0} MiB/s | left {} | downtime {}{}",
                    p.phase,
                    p.round,
                    mib(p.wire_bytes),
                    mib(p.bytes_skipped_zero),
                    mib(p.bytes_skipped_held),
                    mib(p.dirty_rate_bps),
                    mib(p.bandwidth_bps),
                    est(p.est_remaining_ms),
                    est(p.est_downtime_ms),
                    if p.throttle_percent > 0 {
                        format!(" | throttle {}%", p.throttle_percent)
                    } else {
                        String::new()
                    },
                ));
            }
        }
    }

    pub fn done(&self, s: &MigrationSummary) {
        let total_ms = s.ended_ns.saturating_sub(s.started_ns) as f64 / 1e6;
        let downtime_bound_ms = s
            .paused_ns
            .map(|p| s.ended_ns.saturating_sub(p) as f64 / 1e6);
        match self {
            ProgressView::Json => print_json(&JsonLine::Done {
                summary: s,
                downtime_bound_ms,
                total_ms,
            }),
            ProgressView::Bar(bar) => {
                bar.finish_and_clear();
                eprintln!(
                    "novacron: migrated in {total_ms:.0} ms over {} rounds: {:.1} MiB on the \
                     wire, {:.1} MiB sent, {:.1} MiB zero, {:.1} MiB already held; paused to \
                     confirmed {}",
                    s.progress.round + 1,
                    mib(s.progress.wire_bytes),
                    mib(s.progress.bytes_sent),
                    mib(s.progress.bytes_skipped_zero),
                    mib(s.progress.bytes_skipped_held),
                    downtime_bound_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
                );
            }
        }
        if let Some(h) = &s.memory_blake3 {
            eprintln!("novacron: memory blake3 at switchover (source): {h}");
        }
    }

    pub fn failed(&self, reason: &str, s: &MigrationSummary) {
        match self {
            ProgressView::Json => print_json(&JsonLine::Failed { reason, summary: s }),
            ProgressView::Bar(bar) => bar.finish_and_clear(),
        }
        eprintln!("novacron: migration rolled back, the VM keeps running here: {reason}");
    }
}

/// One JSON line on stdout. A reader that went away (`| head`) must not stop the migration:
/// write errors are ignored.
fn print_json<T: Serialize>(line: &T) {
    use std::io::Write;
    if let Ok(text) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|_| out.flush());
    }
}
