//! Runs the [`Source`] state machine against a live [`Machine`] over [`Links`] (TCP or Unix stream sockets): the
//! protocol messages on the control stream, the chunks spread over the data streams by a
//! pool of sender threads (read from guest memory, hash, compress, write), each owning one
//! stream. The state machine decides; this module only carries out its outputs and feeds
//! it what happened, with the time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use novacron_mesh::chunks::{ChunkEncoder, ChunkId, ChunkRef, ChunkSize, CodecError, Level};

use super::level::{level_for_bandwidth, MIN_LEVEL};
use super::links::{Links, MigrationStream};
use super::machine_glue::{ChunkReader, GlueError};
use super::messages::{MemRegion, Message, Mode};
use super::source::{Input, NoConverge, Output, Source, SourceConfig};
use super::wire::{write_message, FrameReader, WireError};
use super::{whole_ms, Phase, Progress, ProtocolError};
use crate::machine::layout::PAGE_SIZE;
use crate::machine::memory::DirtyConsumer;
use crate::machine::state::StateError;
use crate::machine::vcpu::monotonic_ns;
use crate::machine::{Lifecycle, Machine, VmError};

/// Longest the driver sleeps without looking at its host: host inputs (cancel, reconnection,
/// a vCPU that ended) come through [`SourceHost::poll`], which cannot wake it (the link
/// events and the host have separate channels), so it looks at least this often. Everything
/// else wakes it when due: link events at once, the machine's deadline, measurements,
/// reports, throttle steps and the in-doubt wait at their time.
const HOST_POLL: Duration = Duration::from_millis(10);
/// How often measurements (bandwidth, dirty rate, zstd level) are fed to the machine.
const MEASURE_EVERY: Duration = Duration::from_millis(50);
/// Progress reports to the host at most this often (phase changes always go out).
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Throttle duty-cycle period: the vCPUs are paused for `percent` of each period.
const THROTTLE_PERIOD: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub mode: Mode,
    pub chunk_size: ChunkSize,
    pub downtime_budget_ms: u64,
    pub max_rounds: u32,
    pub max_precopy_ms: u64,
    pub on_no_converge: NoConverge,
    /// Silence from the destination after which the migration fails (or is in doubt).
    pub timeout_ms: u64,
    /// Hash all guest memory at switchover (paused, after the last round) into
    /// [`Summary::memory_blake3`]. Costs downtime; for tests.
    pub hash_memory: bool,
    /// How long to wait for the host to reconnect when in doubt before giving up (the VM
    /// then stays paused for an operator). A cancel while in doubt gives up at once.
    pub in_doubt_wait_ms: u64,
}

impl SourceOptions {
    pub fn new(mode: Mode) -> Self {
        let d = SourceConfig::new([0; 16], Vec::new(), 1, mode);
        Self {
            mode,
            chunk_size: d.chunk_size,
            downtime_budget_ms: whole_ms(d.downtime_budget),
            max_rounds: d.max_rounds,
            max_precopy_ms: whole_ms(d.max_precopy),
            on_no_converge: d.on_no_converge,
            timeout_ms: whole_ms(d.timeout),
            in_doubt_wait_ms: 60_000,
            hash_memory: false,
        }
    }
}

/// What the process running the driver feeds it besides the network.
pub enum HostInput {
    Cancel(String),
    /// New links to the destination, after [`SourceHost::in_doubt`].
    Reconnected(Links),
}

/// The process around the driver: where progress goes, where cancels and reconnections
/// come from.
pub trait SourceHost {
    fn report(&mut self, report: &Report);
    /// The link failed after the state was sent: please reconnect (answer with
    /// [`HostInput::Reconnected`]).
    fn in_doubt(&mut self);
    /// A host input, if one is waiting. Must not block.
    fn poll(&mut self) -> Option<HostInput>;
}

/// A progress report with what only the driver knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub progress: Progress,
    /// Bytes of chunks the machine counted as sent that the senders have not written yet.
    pub bytes_queued: u64,
    /// Bytes written to the sockets (frames, compressed chunks, preambles excluded).
    pub wire_bytes: u64,
    pub zstd_level: i32,
    /// Share of vCPU time auto-converge takes away, percent (0: not throttling).
    pub throttle_percent: u8,
}

/// What happened, with the figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub report: Report,
    /// CLOCK_MONOTONIC ns: start, the final pause, the end (confirm or rollback).
    pub started_ns: u64,
    pub paused_ns: Option<u64>,
    pub ended_ns: u64,
    /// blake3 of guest memory at switchover, when asked for.
    pub memory_blake3: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceOutcome {
    /// The destination runs the VM; it is stopped here.
    Moved(Summary),
    /// The VM stays here, running as before (or paused if it was).
    RolledBack { reason: String, summary: Summary },
    /// The state went out and nobody could say whether the destination started: the VM is
    /// paused here, for an operator to decide.
    InDoubt(Summary),
}

/// Why the driver could not set up or carry out what the source machine asked; the text
/// becomes the reason the migration rolls back with.
#[derive(Debug, thiserror::Error)]
enum DriverError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Memory(#[from] GlueError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot share a data stream: {0}")]
    ShareData(std::io::Error),
    #[error("cannot share the control stream: {0}")]
    ShareControl(std::io::Error),
    #[error("cannot start the control reader: {0}")]
    SpawnControlReader(std::io::Error),
    #[error("cannot start a sender thread: {0}")]
    SpawnSender(std::io::Error),
    #[error("chunk {0} asked again is outside guest memory")]
    AskedAgainOutside(u64),
    #[error("sender queue poisoned")]
    QueuePoisoned,
    #[error("zstd level {level}: {source}")]
    Level { level: i32, source: CodecError },
}

/// What the reader and sender threads report, tagged with the generation of the links
/// they serve: after a reconnection, the old links' last words are stale.
enum Event {
    Received(u32, Message),
    LinkDown(u32, String),
}

/// Migrates `machine` (running or paused) out over `links`.
pub fn run_source(
    machine: &mut Machine,
    links: Links,
    vm_id: [u8; 16],
    opts: &SourceOptions,
    host: &mut dyn SourceHost,
) -> SourceOutcome {
    let started_ns = monotonic_ns();
    let mut driver = match SourceDriver::new(machine, links, vm_id, opts, started_ns) {
        Ok(d) => d,
        Err(e) => {
            return SourceOutcome::RolledBack {
                reason: e.to_string(),
                summary: Summary {
                    report: Report {
                        progress: Progress::default(),
                        bytes_queued: 0,
                        wire_bytes: 0,
                        zstd_level: MIN_LEVEL,
                        throttle_percent: 0,
                    },
                    started_ns,
                    paused_ns: None,
                    ended_ns: monotonic_ns(),
                    memory_blake3: None,
                },
            }
        }
    };
    let outcome = driver.run(machine, host);
    driver.close();
    outcome
}

struct SourceDriver {
    source: Source,
    opts: SourceOptions,
    t0: Instant,
    events: Receiver<Event>,
    event_tx: Sender<Event>,
    control: MigrationStream,
    control_bytes: u64,
    pool: SenderPool,
    links: Links,
    throttle: Throttle,
    started_ns: u64,
    paused_ns: Option<u64>,
    last_collect: Instant,
    last_measure: Instant,
    last_report: Instant,
    last_phase: Option<Phase>,
    /// Wire bytes and chunks done at the last measurement.
    last_wire: (u64, u64),
    wire_bps: Option<u64>,
    bandwidth_bps: u64,
    dirty_rate_bps: u64,
    fail_reason: Option<String>,
    memory_blake3: Option<String>,
    /// Links in use: 0 the first, one more per reconnection.
    generation: u32,
    /// When the link bandwidth was last sampled, and whether senders had work then.
    last_measure_at: Instant,
    was_busy: bool,
}

impl SourceDriver {
    fn new(
        machine: &Machine,
        links: Links,
        vm_id: [u8; 16],
        opts: &SourceOptions,
        started_ns: u64,
    ) -> Result<Self, DriverError> {
        let regions: Vec<MemRegion> = machine
            .layout()
            .iter()
            .map(|&(guest_addr, len)| MemRegion { guest_addr, len })
            .collect();
        let mut cfg =
            SourceConfig::new(vm_id, regions, u32::from(machine.config().vcpus), opts.mode);
        cfg.chunk_size = opts.chunk_size;
        cfg.downtime_budget = Duration::from_millis(opts.downtime_budget_ms);
        cfg.max_rounds = opts.max_rounds;
        cfg.max_precopy = Duration::from_millis(opts.max_precopy_ms);
        cfg.on_no_converge = opts.on_no_converge;
        cfg.timeout = Duration::from_millis(opts.timeout_ms);
        let source = Source::new(cfg)?;
        let reader = machine.chunk_reader(opts.chunk_size)?;
        let (event_tx, events) = mpsc::channel();
        let data = links
            .data
            .iter()
            .map(MigrationStream::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(DriverError::ShareData)?;
        let pool = SenderPool::start(data, reader, event_tx.clone())?;
        spawn_control_reader(&links.control, event_tx.clone(), 0)?;
        let control = links
            .control
            .try_clone()
            .map_err(DriverError::ShareControl)?;
        let now = Instant::now();
        Ok(Self {
            source,
            opts: opts.clone(),
            t0: now,
            events,
            event_tx,
            control,
            control_bytes: 0,
            pool,
            links,
            throttle: Throttle::default(),
            started_ns,
            paused_ns: None,
            last_collect: now,
            last_measure: now,
            last_report: now,
            last_phase: None,
            last_wire: (0, 0),
            wire_bps: None,
            bandwidth_bps: 0,
            dirty_rate_bps: 0,
            fail_reason: None,
            memory_blake3: None,
            generation: 0,
            last_measure_at: now,
            was_busy: false,
        })
    }

    /// Time since the driver's epoch, the machine's clock.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// How long to sleep for the next event: until the first of the machine's deadline,
    /// the next measurement, report or throttle step and the end of the in-doubt wait, and
    /// never past [`HOST_POLL`].
    fn wait(&self, in_doubt_since: Option<Instant>) -> Duration {
        let now = self.now();
        let at = |due: Instant| due.saturating_duration_since(Instant::now());
        let mut wait = HOST_POLL
            .min(at(self.last_measure + MEASURE_EVERY))
            .min(at(self.last_report + REPORT_EVERY));
        if let Some(deadline) = self.source.next_deadline() {
            wait = wait.min(deadline.saturating_sub(now));
        }
        if let Some(step) = self.throttle.next_step(now) {
            wait = wait.min(step.saturating_sub(now));
        }
        if let Some(since) = in_doubt_since {
            // Strictly past the wait, as the check in the loop asks.
            let end = since + Duration::from_millis(self.opts.in_doubt_wait_ms);
            wait = wait.min(at(end) + Duration::from_millis(1));
        }
        wait
    }

    fn run(&mut self, machine: &mut Machine, host: &mut dyn SourceHost) -> SourceOutcome {
        let mut pending: VecDeque<Output> = self.source.start(self.now()).into();
        let mut in_doubt_since: Option<Instant> = None;
        loop {
            while let Some(output) = pending.pop_front() {
                let inputs = self.execute(machine, host, output, &mut in_doubt_since);
                for input in inputs {
                    pending.extend(self.source.handle(input));
                }
            }
            if let Some(outcome) = self.finished(machine) {
                return outcome;
            }
            if let Some(since) = in_doubt_since {
                if since.elapsed() > Duration::from_millis(self.opts.in_doubt_wait_ms) {
                    return SourceOutcome::InDoubt(self.summary());
                }
            }
            while let Some(input) = host.poll() {
                match input {
                    HostInput::Cancel(reason) if in_doubt_since.is_some() => {
                        // Only the destination's answer could settle it, and the host will
                        // not reconnect (it cancelled, or it is gone): end in doubt now,
                        // the VM paused here, instead of waiting for links that won't come.
                        tracing::warn!(%reason, "cancelled while in doubt: the VM stays paused");
                        return SourceOutcome::InDoubt(self.summary());
                    }
                    HostInput::Cancel(reason) => {
                        pending.extend(self.source.handle(Input::Cancel { reason }))
                    }
                    HostInput::Reconnected(links) => {
                        if let Err(e) = self.reconnect(links) {
                            tracing::warn!(error = %e, "reconnection unusable");
                            continue;
                        }
                        in_doubt_since = None;
                        pending.extend(self.source.handle(Input::Reconnected));
                    }
                }
            }
            let event = self.events.recv_timeout(self.wait(in_doubt_since));
            // The time first: a deadline that passed while waiting counts before the input.
            pending.extend(self.source.handle(Input::Tick { now: self.now() }));
            let input = match event {
                Ok(Event::Received(generation, _) | Event::LinkDown(generation, _))
                    if generation != self.generation =>
                {
                    None
                }
                Ok(Event::Received(_, msg)) => {
                    // A round's end is when the machine decides on convergence: give it
                    // fresh figures first.
                    if matches!(msg, Message::RoundAck { .. }) {
                        pending.extend(self.measure());
                    }
                    Some(Input::Received(msg))
                }
                Ok(Event::LinkDown(_, why)) => {
                    tracing::warn!(%why, "migration link down");
                    Some(Input::LinkDown)
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Input::LinkDown),
            };
            if let Some(input) = input {
                pending.extend(self.source.handle(input));
            }
            self.throttle.step(machine, self.now());
            if self.last_measure.elapsed() >= MEASURE_EVERY {
                pending.extend(self.measure());
            }
            if self.last_report.elapsed() >= REPORT_EVERY {
                self.last_report = Instant::now();
                host.report(&self.report());
            }
        }
    }

    fn finished(&mut self, machine: &mut Machine) -> Option<SourceOutcome> {
        if !self.source.is_finished() {
            return None;
        }
        let summary = self.summary();
        Some(match self.source.progress().phase {
            Phase::Done => SourceOutcome::Moved(summary),
            _ => {
                self.throttle.release(machine);
                SourceOutcome::RolledBack {
                    reason: self.fail_reason.take().unwrap_or_default(),
                    summary,
                }
            }
        })
    }

    fn summary(&self) -> Summary {
        Summary {
            report: self.report(),
            started_ns: self.started_ns,
            paused_ns: self.paused_ns,
            ended_ns: monotonic_ns(),
            memory_blake3: self.memory_blake3.clone(),
        }
    }

    fn report(&self) -> Report {
        let mut progress = self.source.progress().clone();
        // The machine counts a chunk as sent once it is wanted; the senders may still have
        // it queued. What is left is both.
        let queued = match progress.phase {
            Phase::Done | Phase::Failed => 0,
            _ => {
                (self.pool.pending() * self.opts.chunk_size.bytes() as u64).min(progress.bytes_sent)
            }
        };
        let bw = progress.bandwidth_bps;
        if bw > 0 && queued > 0 {
            let queued_ms = (u128::from(queued) * 1000 / u128::from(bw)) as u64;
            progress.est_remaining_ms = Some(progress.est_remaining_ms.unwrap_or(0) + queued_ms);
        }
        Report {
            progress,
            bytes_queued: queued,
            wire_bytes: self.pool.stats.wire.load(Ordering::Relaxed) + self.control_bytes,
            zstd_level: self.pool.stats.level.load(Ordering::Relaxed),
            throttle_percent: self.throttle.percent,
        }
    }

    /// Carries out one output; returns the inputs it produced.
    fn execute(
        &mut self,
        machine: &mut Machine,
        host: &mut dyn SourceHost,
        output: Output,
        in_doubt_since: &mut Option<Instant>,
    ) -> Vec<Input> {
        match output {
            Output::Send(msg) => match write_message(&mut self.control, &msg) {
                Ok(n) => {
                    self.control_bytes += n as u64;
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = msg.kind(), "control stream write failed");
                    vec![Input::LinkDown]
                }
            },
            Output::PauseVm => {
                self.throttle.release(machine);
                self.throttle.percent = 0;
                let paused = machine.pause();
                self.paused_ns = Some(monotonic_ns());
                match paused {
                    Ok(()) => Vec::new(),
                    Err(e) => vec![Input::Cancel {
                        reason: format!("cannot pause the VM: {e}"),
                    }],
                }
            }
            Output::ResumeVm => {
                self.throttle.release(machine);
                if let Err(e) = machine.resume() {
                    tracing::error!(error = %e, "cannot resume the VM after a rollback");
                }
                Vec::new()
            }
            Output::Throttle { percent } => {
                tracing::info!(percent, "auto-converge: throttling the vCPUs");
                self.throttle.percent = percent;
                if percent == 0 {
                    self.throttle.release(machine);
                }
                // A throttle change is news for whoever watches, like a phase change.
                host.report(&self.report());
                Vec::new()
            }
            Output::CollectRound { round, full, extra } => {
                match self.collect(machine, full, &extra) {
                    Ok(refs) => vec![Input::RoundData { round, refs }],
                    Err(e) => vec![Input::Cancel {
                        reason: e.to_string(),
                    }],
                }
            }
            Output::SendChunk { index, id } => {
                // Refs collected after the final pause describe memory nothing can change
                // any more: their ids need no second hash. Before it, the guest may have
                // written the chunk since it was offered.
                let trusted = self.paused_ns.is_some().then_some(id);
                self.pool.submit(Job { index, trusted });
                Vec::new()
            }
            Output::CaptureState => {
                // Last chance before the state leaves: the VM is paused, so anything its
                // vCPUs reported (a guest exit, say) is with the host by now.
                let mut inputs = Vec::new();
                while let Some(input) = host.poll() {
                    match input {
                        HostInput::Cancel(reason) => inputs.push(Input::Cancel { reason }),
                        HostInput::Reconnected(_) => {}
                    }
                }
                if !inputs.is_empty() {
                    return inputs;
                }
                if self.opts.hash_memory {
                    self.memory_blake3 = crate::machine::memory::memory_digest(machine.memory())
                        .map(|h| h.to_hex().to_string())
                        .ok();
                }
                let state = machine
                    .capture_state()
                    .map_err(DriverError::from)
                    .and_then(|s| Ok(s.encode()?));
                match state {
                    Ok(bytes) => vec![Input::StateCaptured(bytes)],
                    Err(e) => vec![Input::Cancel {
                        reason: format!("cannot capture the VM state: {e}"),
                    }],
                }
            }
            Output::DiscardVm => {
                if let Err(e) = machine.stop() {
                    tracing::error!(error = %e, "stopping the migrated VM");
                }
                Vec::new()
            }
            Output::InDoubt => {
                self.links.shutdown();
                // No chunk leaves after this: with the streams shut, every sender ends
                // (a write under way fails); joined, their counts are final. A wanted chunk
                // never written means the destination cannot have started the VM.
                self.pool.stop();
                if self.pool.pending() > 0 {
                    tracing::warn!(
                        unsent = self.pool.pending(),
                        "link lost before every chunk was sent: the destination cannot start the VM"
                    );
                    return vec![Input::LinkDownWithChunksUnsent];
                }
                *in_doubt_since = Some(Instant::now());
                host.in_doubt();
                Vec::new()
            }
            Output::Progress(p) => {
                // Phase changes go out at once; the loop reports the rest periodically.
                if self.last_phase != Some(p.phase) {
                    self.last_phase = Some(p.phase);
                    self.last_report = Instant::now();
                    host.report(&self.report());
                }
                Vec::new()
            }
            Output::Fail { reason } => {
                self.fail_reason = Some(reason);
                Vec::new()
            }
        }
    }

    /// The refs of a round: every touched chunk (and zero refs for the rest) for a full
    /// round, else the chunks dirtied since the last collect plus `extra`.
    fn collect(
        &mut self,
        machine: &mut Machine,
        full: bool,
        extra: &[u64],
    ) -> Result<Vec<ChunkRef>, DriverError> {
        let size = self.opts.chunk_size;
        // Taking the set starts (or restarts) dirty tracking for the next round.
        let mut pages = machine.take_dirty_pages(DirtyConsumer::MigrationRound)?;
        let elapsed = self.last_collect.elapsed();
        self.last_collect = Instant::now();
        if full {
            return Ok(machine.touched_chunk_refs(size)?);
        }
        let dirty_bytes = pages.count_pages() * PAGE_SIZE;
        self.dirty_rate_bps =
            (u128::from(dirty_bytes) * 1_000_000_000 / elapsed.as_nanos().max(1)) as u64;
        let geo = machine.geometry(size)?;
        for &index in extra {
            let (region, offset) = geo
                .locate(index)
                .ok_or(DriverError::AskedAgainOutside(index))?;
            let start = geo.regions()[region].guest_addr + offset;
            let len = geo.chunk_len(index).unwrap_or(0) as u64;
            pages.mark_range(start, len);
        }
        Ok(machine.chunk_refs(Some(&pages), size)?)
    }

    /// Feeds bandwidth and dirty rate, and moves the zstd level.
    fn measure(&mut self) -> Vec<Output> {
        self.last_measure = Instant::now();
        let stats = &self.pool.stats;
        let busy = stats.busy_ns.load(Ordering::Relaxed);
        let plain = stats.plain.load(Ordering::Relaxed);
        if busy > 0 && plain > 0 {
            let workers = self.pool.workers.len().max(1) as u128;
            self.bandwidth_bps =
                (u128::from(plain) * 1_000_000_000 * workers / u128::from(busy)) as u64;
        }
        // Link bandwidth: wire bytes over wall time, for windows the senders were busy in
        // from start to end (work queued at both ends).
        let wire = stats.wire.load(Ordering::Relaxed);
        let done = stats.done.load(Ordering::Relaxed);
        let busy_window = self.pool.pending() > 0 && done > self.last_wire.1;
        let elapsed = self.last_measure_at.elapsed();
        if busy_window && self.was_busy && !elapsed.is_zero() {
            let bps =
                (u128::from(wire - self.last_wire.0) * 1_000_000_000 / elapsed.as_nanos()) as u64;
            self.wire_bps = Some(match self.wire_bps {
                Some(old) => (old * 3 + bps) / 4,
                None => bps,
            });
        }
        self.was_busy = self.pool.pending() > 0;
        self.last_wire = (wire, done);
        self.last_measure_at = Instant::now();
        let level = stats.level.load(Ordering::Relaxed);
        let next = level_for_bandwidth(self.wire_bps);
        if next != level {
            tracing::debug!(level, next, wire_bps = ?self.wire_bps, "zstd level");
            stats.level.store(next, Ordering::Relaxed);
        }
        self.source.handle(Input::Measured {
            bandwidth_bps: self.bandwidth_bps,
            dirty_rate_bps: self.dirty_rate_bps,
        })
    }

    fn reconnect(&mut self, links: Links) -> Result<(), DriverError> {
        self.generation += 1;
        spawn_control_reader(&links.control, self.event_tx.clone(), self.generation)?;
        self.control = links
            .control
            .try_clone()
            .map_err(DriverError::ShareControl)?;
        self.links = links;
        Ok(())
    }

    fn close(self) {
        self.links.shutdown();
        self.pool.close();
    }
}

/// Reads the control stream into events until it fails.
fn spawn_control_reader(
    stream: &MigrationStream,
    tx: Sender<Event>,
    generation: u32,
) -> Result<(), DriverError> {
    let stream = stream.try_clone().map_err(DriverError::ShareControl)?;
    std::thread::Builder::new()
        .name("mig-control".into())
        .spawn(move || {
            let mut reader = FrameReader::new(stream);
            loop {
                match reader.read_message() {
                    Ok(msg) => {
                        if tx.send(Event::Received(generation, msg)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ =
                            tx.send(Event::LinkDown(generation, format!("control stream: {e}")));
                        return;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(DriverError::SpawnControlReader)
}

/// Counters the sender threads share with the driver.
#[derive(Default)]
struct PoolStats {
    /// Uncompressed chunk bytes sent.
    plain: AtomicU64,
    wire: AtomicU64,
    busy_ns: AtomicU64,
    /// Chunks submitted to and finished by the senders.
    submitted: AtomicU64,
    done: AtomicU64,
    level: AtomicI32,
}

/// One chunk to send: its index, and its id when the VM was paused for good before the
/// round was collected (the bytes cannot have changed, so they need not be hashed again).
struct Job {
    index: u64,
    trusted: Option<ChunkId>,
}

/// Sender threads, one per data stream, taking chunk indices from one queue.
struct SenderPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    stats: Arc<PoolStats>,
}

impl SenderPool {
    fn start(
        streams: Vec<MigrationStream>,
        reader: ChunkReader,
        events: Sender<Event>,
    ) -> Result<Self, DriverError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(PoolStats::default());
        stats.level.store(MIN_LEVEL, Ordering::Relaxed);
        let mut workers = Vec::with_capacity(streams.len());
        for (n, stream) in streams.into_iter().enumerate() {
            let (rx, reader, stats, events) =
                (rx.clone(), reader.clone(), stats.clone(), events.clone());
            let handle = std::thread::Builder::new()
                .name(format!("mig-send{n}"))
                .spawn(move || {
                    if let Err(e) = send_chunks(stream, &rx, &reader, &stats) {
                        let _ = events.send(Event::LinkDown(0, format!("data stream {n}: {e}")));
                    }
                })
                .map_err(DriverError::SpawnSender)?;
            workers.push(handle);
        }
        Ok(Self {
            jobs: Some(tx),
            workers,
            stats,
        })
    }

    /// Chunks submitted and not yet written.
    fn pending(&self) -> u64 {
        let s = &self.stats;
        s.submitted
            .load(Ordering::Relaxed)
            .saturating_sub(s.done.load(Ordering::Relaxed))
    }

    /// Queues a chunk; the sender reads it and sends it with the id of what it read.
    fn submit(&self, job: Job) {
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(jobs) = &self.jobs {
            // A send error means every sender died; each reported why (link down).
            let _ = jobs.send(job);
        }
    }

    fn close(mut self) {
        self.stop();
    }

    /// Takes no more chunks and waits for every sender to end (each ends when the queue is
    /// empty and closed, or when its stream fails); the counters are final after it.
    fn stop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One sender thread: chunk indices in, `Chunk` frames out on its own stream.
fn send_chunks(
    mut stream: MigrationStream,
    jobs: &Mutex<Receiver<Job>>,
    reader: &ChunkReader,
    stats: &PoolStats,
) -> Result<(), DriverError> {
    let size = reader.geometry().chunk_size();
    let mut buf = Vec::with_capacity(size.bytes());
    let mut level = stats.level.load(Ordering::Relaxed);
    let mut encoder = encoder_at(level)?;
    loop {
        let Job { index, trusted } = {
            let jobs = jobs.lock().map_err(|_| DriverError::QueuePoisoned)?;
            match jobs.recv() {
                Ok(i) => i,
                Err(_) => return Ok(()),
            }
        };
        let begin = Instant::now();
        let wanted = stats.level.load(Ordering::Relaxed);
        if wanted != level {
            level = wanted;
            encoder = encoder_at(level)?;
        }
        reader.read_into(index, &mut buf)?;
        let id = trusted.unwrap_or_else(|| ChunkId::of(&buf));
        let enc = encoder.encode(&buf)?;
        let msg = Message::Chunk {
            index,
            id: *id.as_bytes(),
            raw: enc.raw,
            bytes: enc.bytes,
        };
        let n = write_message(&mut stream, &msg)?;
        let done = Instant::now();
        stats.plain.fetch_add(buf.len() as u64, Ordering::Relaxed);
        stats.wire.fetch_add(n as u64, Ordering::Relaxed);
        stats.done.fetch_add(1, Ordering::Relaxed);
        stats
            .busy_ns
            .fetch_add((done - begin).as_nanos() as u64, Ordering::Relaxed);
    }
}

fn encoder_at(level: i32) -> Result<ChunkEncoder, DriverError> {
    Level::new(level)
        .and_then(ChunkEncoder::new)
        .map_err(|source| DriverError::Level { level, source })
}

/// Auto-converge: pauses the vCPUs for `percent` of every period while pre-copy runs.
#[derive(Default)]
struct Throttle {
    percent: u8,
    /// True while this throttle holds the VM paused.
    holding: bool,
}

impl Throttle {
    /// Time into the current period at which the vCPUs run again.
    fn off_for(&self) -> Duration {
        THROTTLE_PERIOD * u32::from(self.percent) / 100
    }

    /// Pauses or resumes for the current point of the duty cycle.
    fn step(&mut self, machine: &mut Machine, now: Duration) {
        if self.percent == 0 {
            return;
        }
        let off = period_offset(now) < self.off_for();
        match (off, self.holding, machine.lifecycle()) {
            (true, false, Lifecycle::Running) => self.holding = machine.pause().is_ok(),
            (false, true, _) => self.release(machine),
            _ => {}
        }
    }

    /// When the duty cycle next switches between paused and running, if it runs.
    fn next_step(&self, now: Duration) -> Option<Duration> {
        if self.percent == 0 {
            return None;
        }
        let into = period_offset(now);
        let period_start = now - into;
        let off = self.off_for();
        Some(if into < off {
            period_start + off
        } else {
            period_start + THROTTLE_PERIOD
        })
    }

    fn release(&mut self, machine: &mut Machine) {
        if std::mem::take(&mut self.holding) && machine.lifecycle() == Lifecycle::Paused {
            if let Err(e) = machine.resume() {
                tracing::error!(error = %e, "cannot resume a throttled VM");
            }
        }
    }
}

/// Time into the current throttle period.
fn period_offset(now: Duration) -> Duration {
    let period = THROTTLE_PERIOD.as_nanos();
    Duration::from_nanos((now.as_nanos() % period) as u64)
}
