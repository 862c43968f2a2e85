//! The VMM process's side of migration: glue between the control channel (commands with
//! streams attached, progress events) and the drivers in [`crate::migration`].

use std::sync::mpsc::Receiver;

use std::path::{Path, PathBuf};

use novacron_mesh::chunks::{ChunkSize, ChunkStore, Level, StoreError};

use crate::machine::layout::pv_event;
use crate::machine::vcpu::VcpuEvent;
use crate::machine::{Machine, MachineConfig, MachineIo};
use crate::migration::destination::DestinationConfig;
use crate::migration::drive_destination::{
    run_destination, DestinationHost, DestinationOptions, DestinationOutcome,
};
use crate::migration::drive_source::{
    run_source, HostInput, Report, SourceHost, SourceOptions, SourceOutcome, Summary,
};
use crate::migration::keep_in_store::{keep_memory, KeepError, Kept};
use crate::migration::links::Links;
use crate::migration::messages::{Message, Mode};
use crate::migration::source::NoConverge;
use crate::migration::wire::write_message;
use crate::migration::Phase;
use crate::process::adopt::{Owner, OwnerError};
use crate::process::control::{
    Command, Event, ExitReason, Launch, LaunchSource, MigrateOut, MigrationMode, MigrationProgress,
    MigrationSummary, OnNoConverge, INCOMING_ROLLED_BACK_PREFIX,
};
use crate::process::fd_passing::{take_streams, FdQueue};
use crate::process::input::Input;
use crate::process::jail::JailedThreads;
use crate::process::usage::cpu_time_ns;

/// Chunk size of migrations and of the chunks kept in stores.
pub const CHUNK_SIZE: ChunkSize = ChunkSize::K16;

/// Why a migration could not be set up, or its chunks kept, in this process.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("chunk store {}: {source}", dir.display())]
    Store {
        dir: PathBuf,
        source: Box<StoreError>,
    },
    #[error("a migration needs a control stream and at least one data stream; {0} came")]
    Streams(usize),
    #[error(transparent)]
    Keep(#[from] KeepError),
}

/// Why an incoming migration gave no running VM. Every text but `NotIncoming` starts with
/// [`INCOMING_ROLLED_BACK_PREFIX`] (the node tells a rollback by it) or is the owner's.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("internal: not an incoming launch")]
    NotIncoming,
    #[error("{INCOMING_ROLLED_BACK_PREFIX} {0}")]
    SetupRolledBack(SetupError),
    /// The destination driver's reason (the protocol carries reasons as text).
    #[error("{INCOMING_ROLLED_BACK_PREFIX} {0}")]
    RolledBack(String),
    #[error(transparent)]
    Owner(#[from] OwnerError),
}

fn open_store(dir: &Path) -> Result<ChunkStore, SetupError> {
    ChunkStore::open(dir, Level::default()).map_err(|e| SetupError::Store {
        dir: dir.to_path_buf(),
        source: Box::new(e),
    })
}

fn links_from(queue: &FdQueue, session: [u8; 16]) -> Result<Links, SetupError> {
    let streams = take_streams(queue);
    let n = streams.len();
    Links::from_streams(session, streams).ok_or(SetupError::Streams(n))
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Handshake => "handshake",
        Phase::Precopy => "precopy",
        Phase::Stopped => "stopped",
        Phase::AwaitConfirm => "await_confirm",
        Phase::Done => "done",
        Phase::Failed => "failed",
        Phase::InDoubt => "in_doubt",
    }
}

pub fn progress_of(report: &Report) -> MigrationProgress {
    let p = &report.progress;
    MigrationProgress {
        phase: phase_name(p.phase).into(),
        round: p.round,
        bytes_sent: p.bytes_sent,
        bytes_skipped_zero: p.bytes_skipped_zero,
        bytes_skipped_held: p.bytes_skipped_held,
        bytes_total: p.bytes_total,
        bytes_done: p
            .bytes_done()
            .saturating_sub(report.bytes_queued)
            .min(p.bytes_total),
        wire_bytes: report.wire_bytes,
        dirty_rate_bps: p.dirty_rate_bps,
        bandwidth_bps: p.bandwidth_bps,
        est_remaining_ms: p.est_remaining_ms,
        est_downtime_ms: p.est_downtime_ms,
        zstd_level: report.zstd_level,
        throttle_percent: report.throttle_percent,
    }
}

fn summary_of(s: &Summary, cpu_ns: u64) -> MigrationSummary {
    MigrationSummary {
        progress: progress_of(&s.report),
        started_ns: s.started_ns,
        paused_ns: s.paused_ns,
        ended_ns: s.ended_ns,
        memory_blake3: s.memory_blake3.clone(),
        cpu_ns,
    }
}

/// The VMM as the source driver's host: progress to the parent, cancels and reconnections
/// from it; other commands and vCPU events wait until the migration is over.
struct VmmSourceHost<'a> {
    writer: &'a mut Owner,
    rx: &'a Receiver<Input>,
    fds: &'a FdQueue,
    deferred: &'a mut Vec<Input>,
    parent_gone: bool,
}

impl SourceHost for VmmSourceHost<'_> {
    fn report(&mut self, report: &Report) {
        let event = Event::MigrationProgress(progress_of(report));
        self.parent_gone |= self.writer.send(&event).is_err();
    }

    fn in_doubt(&mut self) {
        self.parent_gone |= self.writer.send(&Event::MigrationInDoubt).is_err();
    }

    fn poll(&mut self) -> Option<HostInput> {
        // An adoptable VMM whose owner is gone sends nothing and fails nothing: it rolls
        // back all the same (nobody would learn the outcome), and is adopted afterwards.
        self.parent_gone |= !self.writer.is_owned();
        if self.parent_gone {
            return Some(HostInput::Cancel("the parent process is gone".into()));
        }
        loop {
            match self.rx.try_recv().ok()? {
                Input::Command(Command::CancelMigration { reason }) => {
                    return Some(HostInput::Cancel(reason))
                }
                Input::Command(Command::MigrationReconnect { session }) => {
                    match links_from(self.fds, session) {
                        Ok(links) => return Some(HostInput::Reconnected(links)),
                        Err(e) => tracing::warn!(error = %e, "reconnection refused"),
                    }
                }
                Input::Vcpu(event) if ends_the_vm(&event) => {
                    // A VM whose guest ended (or whose vCPU failed) must not be moved: roll
                    // back, and let the event end it here afterwards.
                    let why = describe_end(&event);
                    self.deferred.push(Input::Vcpu(event));
                    return Some(HostInput::Cancel(why));
                }
                Input::ControlClosed(why) => {
                    self.parent_gone = true;
                    self.deferred.push(Input::ControlClosed(why));
                    return Some(HostInput::Cancel("the control channel closed".into()));
                }
                other => self.deferred.push(other),
            }
        }
    }
}

/// True for vCPU events after which the VM does not go on (the VMM stops it).
fn ends_the_vm(event: &VcpuEvent) -> bool {
    match event {
        VcpuEvent::Report { report, .. } => report.code == pv_event::EXIT,
        VcpuEvent::Reset { .. } | VcpuEvent::Shutdown { .. } | VcpuEvent::Failed { .. } => true,
    }
}

fn describe_end(event: &VcpuEvent) -> String {
    match event {
        VcpuEvent::Report { report, .. } => {
            format!(
                "the guest exited (status {}) during the migration",
                report.value
            )
        }
        VcpuEvent::Reset { .. } => "the guest reset itself during the migration".into(),
        VcpuEvent::Shutdown { .. } => "the guest shut down during the migration".into(),
        VcpuEvent::Failed { vcpu, reason } => format!("vCPU {vcpu} failed: {reason}"),
    }
}

/// Runs an outgoing migration. `Some(exit)` when the VM left (the process should exit).
pub fn migrate_out(
    machine: &mut Machine,
    cmd: MigrateOut,
    fds: &FdQueue,
    rx: &Receiver<Input>,
    writer: &mut Owner,
    deferred: &mut Vec<Input>,
) -> Result<Option<ExitReason>, OwnerError> {
    let links = match links_from(fds, cmd.session) {
        Ok(l) => l,
        Err(e) => {
            writer.send(&Event::MigrationFailed {
                reason: e.to_string(),
                summary: MigrationSummary::default(),
            })?;
            return Ok(None);
        }
    };
    let mut opts = SourceOptions::new(match cmd.mode {
        MigrationMode::Cold => Mode::Cold,
        MigrationMode::Warm => Mode::Warm,
        MigrationMode::Live => Mode::Live,
    });
    opts.chunk_size = CHUNK_SIZE;
    opts.hash_memory = cmd.verify_memory;
    opts.downtime_budget_ms = cmd.downtime_budget_ms;
    opts.max_rounds = cmd.max_rounds;
    opts.max_precopy_ms = cmd.max_precopy_ms;
    opts.on_no_converge = match cmd.on_no_converge {
        OnNoConverge::Throttle => NoConverge::Throttle,
        OnNoConverge::Warm => NoConverge::FallbackWarm,
    };
    let mut host = VmmSourceHost {
        writer,
        rx,
        fds,
        deferred,
        parent_gone: false,
    };
    let cpu_before = cpu_time_ns();
    let outcome = run_source(machine, links, cmd.session, &opts, &mut host);
    let cpu_ns = cpu_time_ns().saturating_sub(cpu_before);
    match outcome {
        SourceOutcome::Moved(summary) => {
            writer.send(&Event::MigratedOut(summary_of(&summary, cpu_ns)))?;
            if let Some(dir) = &cmd.store {
                let kept = open_store(dir).and_then(|store| {
                    keep_memory(machine, &store, CHUNK_SIZE).map_err(SetupError::from)
                });
                match kept {
                    Ok(k) => writer.send(&kept_event(&k))?,
                    Err(e) => tracing::warn!(error = %e, "could not keep the VM's chunks"),
                }
            }
            Ok(Some(ExitReason::MigratedAway))
        }
        SourceOutcome::RolledBack { reason, summary } => {
            writer.send(&Event::MigrationFailed {
                reason,
                summary: summary_of(&summary, cpu_ns),
            })?;
            Ok(None)
        }
        SourceOutcome::InDoubt(summary) => {
            writer.send(&Event::MigrationFailed {
                reason: format!(
                    "{} nobody could say whether the destination started the VM; it stays \
                         paused here",
                    crate::process::control::IN_DOUBT_PREFIX
                ),
                summary: summary_of(&summary, cpu_ns),
            })?;
            Ok(None)
        }
    }
}

fn kept_event(k: &Kept) -> Event {
    Event::ChunksKept {
        new_chunks: k.new_chunks,
        held_chunks: k.held_chunks,
        skipped_chunks: k.skipped_chunks,
    }
}

struct VmmDestinationHost<'a> {
    io: Option<MachineIo>,
    jail: &'a JailedThreads,
    max: MachineConfig,
    /// Inputs of the event loop that arrive meanwhile: handled after the migration.
    rx: &'a Receiver<Input>,
    deferred: &'a mut Vec<Input>,
    /// An adoptable VMM goes on without an owner (the next one adopts it); another must
    /// not start a VM nobody controls.
    adoptable: bool,
    owner_gone: bool,
}

impl DestinationHost for VmmDestinationHost<'_> {
    fn create_machine(&mut self, config: &MachineConfig) -> Result<Machine, String> {
        if config.mem_bytes > self.max.mem_bytes || config.vcpus > self.max.vcpus {
            return Err(format!(
                "the VM needs {} MiB and {} vCPUs; this VMM was sized for {} MiB and {} vCPUs",
                config.mem_bytes >> 20,
                config.vcpus,
                self.max.mem_bytes >> 20,
                self.max.vcpus
            ));
        }
        let io = self
            .io
            .take()
            .ok_or_else(|| "internal: a second machine for one migration".to_string())?;
        let vcpu_setup = |_index| self.jail.vcpu_thread_setup();
        let joined = || self.jail.wait_cgroup_joined().map_err(Into::into);
        Machine::create_gated(config, io, &vcpu_setup, &joined).map_err(|e| e.to_string())
    }

    fn cancelled(&mut self) -> Option<String> {
        while let Ok(input) = self.rx.try_recv() {
            let closed = matches!(input, Input::ControlClosed(_));
            self.deferred.push(input);
            if closed && !self.adoptable && !self.owner_gone {
                self.owner_gone = true;
                return Some("the destination's owner is gone".into());
            }
        }
        None
    }
}

/// Receives the VM over the streams that came with an [`LaunchSource::Incoming`] launch;
/// returns it running. Inputs of the event loop that arrive meanwhile go to `deferred`; a
/// VMM that is not adoptable and loses its owner before the VM runs rolls back.
pub fn receive(
    launch: &Launch,
    io: MachineIo,
    jail: &JailedThreads,
    fds: &FdQueue,
    writer: &mut Owner,
    rx: &Receiver<Input>,
    deferred: &mut Vec<Input>,
) -> Result<Machine, ReceiveError> {
    let LaunchSource::Incoming {
        session,
        store,
        verify_memory,
    } = &launch.source
    else {
        return Err(ReceiveError::NotIncoming);
    };
    let (session, verify_memory) = (*session, *verify_memory);
    let max = MachineConfig {
        mem_bytes: launch.mem_bytes,
        vcpus: launch.vcpus,
    };
    let mut links = links_from(fds, session).map_err(ReceiveError::SetupRolledBack)?;
    let store = match store.as_deref().map(open_store).transpose() {
        Ok(store) => store.map(std::sync::Arc::new),
        Err(e) => {
            let reason = e.to_string();
            // The source learns why instead of seeing the links drop.
            let abort = Message::Abort {
                reason: reason.clone(),
            };
            if let Err(e) = write_message(&mut links.control, &abort) {
                tracing::debug!(error = %e, "could not tell the source");
            }
            links.shutdown();
            return Err(ReceiveError::SetupRolledBack(e));
        }
    };
    let opts = DestinationOptions {
        config: DestinationConfig {
            max_mem_bytes: max.mem_bytes,
            max_vcpus: u32::from(max.vcpus),
            expect_vm_id: Some(session),
            ..DestinationConfig::default()
        },
        store,
        hash_memory: verify_memory,
    };
    let mut host = VmmDestinationHost {
        io: Some(io),
        jail,
        max,
        rx,
        deferred,
        adoptable: launch.adopt.is_some(),
        owner_gone: false,
    };
    match run_destination(links, opts, &mut host) {
        DestinationOutcome::Running { machine, summary } => {
            writer.send(&Event::MigratedIn {
                resumed_ns: summary.resumed_ns.unwrap_or_default(),
                wire_bytes: summary.wire_bytes,
                chunks_received: summary.chunks_received,
                chunks_from_store: summary.chunks_from_store,
                memory_blake3: summary.memory_blake3,
                cpu_ns: cpu_time_ns(),
            })?;
            if let Some(k) = &summary.kept {
                writer.send(&kept_event(k))?;
            }
            Ok(machine)
        }
        DestinationOutcome::Failed { reason, .. } => Err(ReceiveError::RolledBack(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::Progress;

    /// The bar shows what was written, not what was only queued, and never more than the
    /// rounds offered.
    #[test]
    fn progress_counts_queued_chunks_as_not_done() {
        let report = Report {
            progress: Progress {
                bytes_sent: 96 << 20,
                bytes_skipped_zero: 400 << 20,
                bytes_skipped_held: 0,
                bytes_total: 512 << 20,
                ..Progress::default()
            },
            bytes_queued: 64 << 20,
            wire_bytes: 30 << 20,
            zstd_level: 1,
            throttle_percent: 0,
        };
        let p = progress_of(&report);
        assert_eq!((p.bytes_done, p.bytes_total), (432 << 20, 512 << 20));
        assert_eq!(p.bytes_sent, 96 << 20);
    }
}
