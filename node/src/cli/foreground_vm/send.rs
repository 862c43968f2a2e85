//! Migration from the command line: the options of `novacron vm run --migrate-to` /
//! `novacron vm migrate`, opening the streams and handing them to the VMM, following the
//! migration to its end (a rollback, or a doubt, leaves the guest here), and showing
//! progress (an indicatif bar on a terminal, or JSON lines with `--json`).
//!
//! Before the destination confirms, the source is authoritative: whatever fails (nobody
//! listening, a destination that closes, refuses or dies) the VM goes on here and `vm run`
//! prints the guest's output as an uninterrupted run would, then exits with
//! [`EXIT_NOT_MOVED`]. A migration left in doubt (the state left, the destination did not
//! say whether it started the VM) never resumes the VM here: it is saved, paused, to a
//! snapshot directory an operator may restore, and `vm run` exits with [`EXIT_IN_DOUBT`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use novacron_vm::migration::links::{self, MAX_DATA_STREAMS};
use novacron_vm::process::control::{
    Command, Event, ExitReason, MigrateOut, MigrationEnd, MigrationMode, MigrationProgress,
    MigrationSummary, OnNoConverge, SnapshotMode, IN_DOUBT_PREFIX,
};
use novacron_vm::process::launcher::{LaunchError, VmmProcess};
use serde::Serialize;

/// Exit status of `vm run --migrate-to` and `vm migrate` when the VM did not move: the
/// migration failed (nothing was listening, the destination refused, closed or died, the
/// guest ended first) and the guest ran here to its end, its output on stdout as usual.
pub const EXIT_NOT_MOVED: u8 = 3;
/// Exit status when the migration ended in doubt: the VM was saved, paused, not resumed.
pub const EXIT_IN_DOUBT: u8 = 4;

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
/// While in doubt: how long the destination is asked again, and how often.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// One migration of `vm run --migrate-to`, from its start to its end.
pub struct CliMigration {
    addr: SocketAddr,
    opts: MigrateOpts,
    store: Option<PathBuf>,
    view: ProgressView,
    session: Option<[u8; 16]>,
    /// While in doubt: when to ask the destination again.
    reconnect_at: Option<Instant>,
    /// When the first doubt began plus [`RECONNECT_FOR`]: asking ends then, however often
    /// a reconnection broke again.
    doubt_until: Option<Instant>,
    /// How it ended when it did not move the VM.
    end: Option<MigrationEnd>,
    /// Where a VM left in doubt is saved (the jail lets the VMM write there).
    save_dir: InDoubtDir,
}

impl CliMigration {
    /// A migration to `addr` not started yet; `save_dir` must be one of the VMM's writable
    /// directories.
    pub fn new(
        addr: SocketAddr,
        opts: MigrateOpts,
        store: Option<PathBuf>,
        mem_bytes: u64,
        save_dir: InDoubtDir,
    ) -> Self {
        Self {
            addr,
            view: ProgressView::new(opts.json, mem_bytes),
            opts,
            store,
            session: None,
            reconnect_at: None,
            doubt_until: None,
            end: None,
            save_dir,
        }
    }

    /// Opens the streams to the destination and tells the VMM to migrate over them. A
    /// destination that cannot be reached leaves the VM running here (recorded as rolled
    /// back); an error means the VMM process is gone.
    pub fn start(&mut self, vmm: &mut VmmProcess) -> Result<(), LaunchError> {
        let session = links::new_session();
        let links = match links::connect(self.addr, self.opts.streams, session, CONNECT_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let reason = format!("cannot reach the destination {}: {e}", self.addr);
                self.rolled_back(&reason, &MigrationSummary::default());
                return Ok(());
            }
        };
        vmm.send_with_streams(
            &migrate_out(&self.opts, session, self.store.clone()),
            &links.into_streams(),
        )?;
        self.session = Some(session);
        Ok(())
    }

    /// When [`tick`](Self::tick) has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// While in doubt: asks the destination again (new streams to the same address, on
    /// which the VMM asks whether the VM started there). After [`RECONNECT_FOR`] without an
    /// answer it cancels, and the VMM ends the migration in doubt, the VM paused.
    pub fn tick(&mut self, vmm: &mut VmmProcess) -> Result<(), LaunchError> {
        let (Some(next), Some(until), Some(session)) =
            (self.reconnect_at, self.doubt_until, self.session)
        else {
            return Ok(());
        };
        let now = Instant::now();
        if now < next {
            return Ok(());
        }
        if now >= until {
            self.reconnect_at = None;
            let reason = format!(
                "the destination {} did not answer for {} s",
                self.addr,
                RECONNECT_FOR.as_secs()
            );
            return vmm.send(&Command::CancelMigration { reason });
        }
        match links::connect(self.addr, 1, session, CONNECT_TIMEOUT) {
            Ok(l) => {
                self.reconnect_at = None;
                vmm.send_with_streams(&Command::MigrationReconnect { session }, &l.into_streams())
            }
            Err(e) => {
                tracing::debug!(error = %e, "the destination is not reachable yet");
                self.reconnect_at = Some(now + RECONNECT_EVERY);
                Ok(())
            }
        }
    }

    /// Follows a migration event of the VMM; false for other events. An error means the
    /// VMM process is gone.
    pub fn on_event(&mut self, vmm: &mut VmmProcess, event: &Event) -> Result<bool, LaunchError> {
        match event {
            Event::MigrationProgress(p) => self.view.progress(p),
            Event::MigratedOut(summary) => self.view.done(summary),
            Event::MigrationInDoubt => {
                let now = Instant::now();
                if self.doubt_until.is_none() {
                    self.view.note(
                        "the link failed after the VM state was sent; the VM stays paused \
                         until the destination says whether it started",
                    );
                }
                self.doubt_until.get_or_insert(now + RECONNECT_FOR);
                // A reconnection that just broke is not retried at once.
                self.reconnect_at = Some(now + RECONNECT_EVERY);
            }
            Event::MigrationFailed { reason, summary } => match MigrationEnd::of(reason) {
                MigrationEnd::RolledBack => self.rolled_back(reason, summary),
                MigrationEnd::InDoubt => {
                    self.reconnect_at = None;
                    self.end = Some(MigrationEnd::InDoubt);
                    self.view.failed(reason, summary);
                    let why = reason.strip_prefix(IN_DOUBT_PREFIX).unwrap_or(reason);
                    eprintln!(
                        "novacron: migration in doubt:{why}; the destination {} may run the \
                         VM, so it is not resumed here. Saving it, paused, to {}",
                        self.addr,
                        self.save_dir.path().display()
                    );
                    vmm.send(&Command::Snapshot {
                        dir: self.save_dir.path().to_path_buf(),
                        mode: SnapshotMode::Full,
                        then_stop: true,
                    })?;
                }
            },
            Event::SnapshotDone { dir, .. } if self.end == Some(MigrationEnd::InDoubt) => {
                self.save_dir.keep();
                eprintln!(
                    "novacron: the VM is saved, paused, in {}. Check whether {} runs it: if it \
                     does not, resume it here with `novacron vm restore {}`; if it does, \
                     delete the directory.",
                    dir.display(),
                    self.addr,
                    dir.display()
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn rolled_back(&mut self, reason: &str, summary: &MigrationSummary) {
        self.end = Some(MigrationEnd::RolledBack);
        self.view.failed(reason, summary);
    }

    /// The exit status once the VMM ended: see [`exit_status`].
    pub fn exit_status(&self, reason: &ExitReason) -> anyhow::Result<ExitCode> {
        let code = exit_status(reason, self.end).map_err(anyhow::Error::msg)?;
        if code == EXIT_NOT_MOVED {
            eprintln!(
                "novacron: the VM did not move to {}: it ran here (exit status {code})",
                self.addr
            );
        }
        Ok(ExitCode::from(code))
    }
}

/// The exit status of `vm run --migrate-to`: a guest that failed is an error (status 1) as
/// without a migration; otherwise 0 when the VM moved, [`EXIT_IN_DOUBT`] when it was saved
/// in doubt, and [`EXIT_NOT_MOVED`] when it ran here instead (rolled back, never started,
/// or the guest ended first).
pub fn exit_status(reason: &ExitReason, end: Option<MigrationEnd>) -> Result<u8, String> {
    super::ended::ended_well(reason)?;
    Ok(match (reason, end) {
        (ExitReason::MigratedAway, _) => 0,
        (_, Some(MigrationEnd::InDoubt)) => EXIT_IN_DOUBT,
        _ => EXIT_NOT_MOVED,
    })
}

/// The directory a VM left in doubt is saved to: made before the VMM starts (its jail only
/// lets it write into directories that exist then), removed at the end unless it holds the
/// VM.
pub struct InDoubtDir {
    path: PathBuf,
    keep: bool,
}

impl InDoubtDir {
    /// `<temp dir>/novacron-in-doubt-<vm id>`.
    pub fn create(vm_id: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("novacron-in-doubt-{vm_id}"));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for InDoubtDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn migrate_out(opts: &MigrateOpts, session: [u8; 16], store: Option<PathBuf>) -> Command {
    Command::MigrateOut(MigrateOut {
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
    })
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
    /// The bar starts at the VM's size; each report sets its total to the rounds offered
    /// so far (see [`MigrationProgress::bytes_total`]).
    pub fn new(json: bool, mem_bytes: u64) -> Self {
        if json {
            return ProgressView::Json;
        }
        let bar = crate::cli::output::migration_bar(mem_bytes);
        ProgressView::Bar(bar)
    }

    pub fn progress(&self, p: &MigrationProgress) {
        match self {
            ProgressView::Json => print_json(&JsonLine::Progress(p)),
            ProgressView::Bar(bar) => {
                if p.bytes_total > 0 {
                    bar.set_length(p.bytes_total);
                }
                bar.set_position(p.bytes_done.min(p.bytes_total));
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

    /// The migration ended without moving the VM: rolled back (said here), or in doubt.
    pub fn failed(&self, reason: &str, s: &MigrationSummary) {
        match self {
            ProgressView::Json => print_json(&JsonLine::Failed { reason, summary: s }),
            ProgressView::Bar(bar) => bar.finish_and_clear(),
        }
        if MigrationEnd::of(reason) == MigrationEnd::RolledBack {
            eprintln!("novacron: migration rolled back, the VM keeps running here: {reason}");
        }
    }

    /// A line about the migration, above the bar.
    pub fn note(&self, text: &str) {
        match self {
            // println would print nothing while the bar is hidden (not a terminal).
            ProgressView::Bar(bar) => bar.suspend(|| eprintln!("novacron: {text}")),
            ProgressView::Json => eprintln!("novacron: {text}"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_says_whether_the_vm_moved() {
        let halted = ExitReason::GuestExit { status: 0 };
        let rolled_back = Some(MigrationEnd::RolledBack);
        let in_doubt = Some(MigrationEnd::InDoubt);
        assert_eq!(exit_status(&ExitReason::MigratedAway, None), Ok(0));
        // Ran here to its end: after a rollback, or because it ended before moving.
        assert_eq!(exit_status(&halted, rolled_back), Ok(EXIT_NOT_MOVED));
        assert_eq!(exit_status(&halted, None), Ok(EXIT_NOT_MOVED));
        // Saved paused (the save stops it) after a doubt.
        assert_eq!(
            exit_status(&ExitReason::Stopped, in_doubt),
            Ok(EXIT_IN_DOUBT)
        );
        // A guest that failed is an error whatever the migration did.
        let failed = ExitReason::GuestExit { status: 3 };
        assert!(exit_status(&failed, rolled_back).is_err_and(|e| e.contains("status 3")));
        let died = ExitReason::Failed {
            message: "vCPU 0: triple fault".into(),
        };
        assert!(exit_status(&died, None).is_err_and(|e| e.contains("triple fault")));
    }
}
