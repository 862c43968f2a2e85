//! Runs the [`Destination`] state machine over [`Links`] (TCP or Unix stream sockets): the control stream and one
//! reader thread per data stream, which decode and verify chunks ([`verify_chunk`]) before
//! the protocol thread sees them. The machine is created as soon as the hello names its
//! layout, chunks are written into it as they arrive, and the state is applied at
//! switchover, so the VM's downtime covers only the last round and the state.
//!
//! Chunks travel on other streams than the control messages, so a `RoundDone` or
//! `Switchover` can overtake the last chunks of its round; such messages (and everything
//! after them on the control stream) wait until the state machine has every wanted chunk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use novacron_mesh::chunks::{Bitmap, ChunkDecoder, ChunkId, ChunkSize, ChunkStore, StoreError};

use super::keep_in_store::{Kept, ReceivedKeeper};

use super::destination::{verify_chunk_message, Destination, DestinationConfig, Input, Output};
use super::links::{Links, MigrationStream};
use super::machine_glue::GlueError;
use super::messages::{MemRegion, Message};
use super::wire::{write_message, FrameReader};
use super::{Geometry, ProtocolError};
use crate::machine::state::{MachineState, StateError};
use crate::machine::vcpu::monotonic_ns;
use crate::machine::VmError;
use crate::machine::{Machine, MachineConfig};

/// Longest the driver sleeps without asking its host whether to stop
/// ([`DestinationHost::cancelled`] is polled: it cannot wake the driver, whose link events
/// come on a channel of their own). Link events wake it at once, the machine's deadline when
/// due.
const HOST_POLL: Duration = Duration::from_millis(5);
/// Events (mostly decoded chunks, 16 KiB each) queued for the protocol thread: readers
/// wait beyond this, so a slow writer bounds memory instead of growing without limit.
const EVENT_QUEUE: usize = 512;

/// Why the driver could not carry out what the destination machine asked; the text becomes
/// the reason the migration is cancelled (or the VM refused) with.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot share a migration stream: {0}")]
    ShareStream(std::io::Error),
    #[error("cannot start a migration reader: {0}")]
    SpawnReader(std::io::Error),
    #[error("{0} vCPUs")]
    Vcpus(u32),
    /// The host could not build the machine ([`DestinationHost::create_machine`]).
    #[error("{0}")]
    Host(String),
    #[error(
        "the source's memory layout {layout:x?} is not what this VMM builds for {} MiB \
         ({built:x?})",
        mem_bytes >> 20
    )]
    Layout {
        layout: Vec<(u64, u64)>,
        mem_bytes: u64,
        built: Vec<(u64, u64)>,
    },
    #[error(transparent)]
    Memory(#[from] GlueError),
    #[error("chunk {0} is outside guest memory")]
    Outside(u64),
    #[error("chunk {id} from the store: {source}")]
    Store {
        id: ChunkId,
        source: Box<StoreError>,
    },
    #[error("asked to copy chunk {0} without a store")]
    NoStore(ChunkId),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("internal: chunk data before the memory was prepared")]
    NotPrepared,
    #[error("internal: no machine to write into")]
    NoMachineToWrite,
    #[error("internal: no machine to start")]
    NoMachineToStart,
}

pub struct DestinationOptions {
    pub config: DestinationConfig,
    /// Chunks already held here (earlier snapshots, images, VMs); only missing ones travel.
    /// The chunks received are kept there too ([`ReceivedKeeper`]).
    pub store: Option<Arc<ChunkStore>>,
    /// Hash all guest memory before resuming, into [`DestinationSummary::memory_blake3`].
    pub hash_memory: bool,
}

/// The process around the driver.
pub trait DestinationHost {
    /// Builds a machine for `config` (guest memory mapped, zero, untouched).
    fn create_machine(&mut self, config: &MachineConfig) -> Result<Machine, String>;

    /// Why the migration must stop now (its owner is gone, say), polled between events.
    /// Before the VM starts here this rolls the migration back and tells the source why;
    /// afterwards it changes nothing.
    fn cancelled(&mut self) -> Option<String> {
        None
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationSummary {
    /// Bytes read from every stream.
    pub wire_bytes: u64,
    pub chunks_received: u64,
    pub chunks_from_store: u64,
    /// What the store kept of the chunks received (None: no store, or keeping failed).
    pub kept: Option<Kept>,
    /// CLOCK_MONOTONIC ns when the VM was resumed here.
    pub resumed_ns: Option<u64>,
    /// blake3 of guest memory just before the VM resumed, when asked for.
    pub memory_blake3: Option<String>,
}

pub enum DestinationOutcome {
    /// The VM runs here.
    Running {
        machine: Machine,
        summary: DestinationSummary,
    },
    /// Nothing runs here; whatever was received is gone.
    Failed {
        reason: String,
        summary: DestinationSummary,
    },
}

enum Event {
    Control(Message),
    Data(Message),
    Chunk(Result<super::destination::VerifiedChunk, ProtocolError>),
    LinkDown(String),
}

/// Receives a VM over `links`.
pub fn run_destination(
    links: Links,
    opts: DestinationOptions,
    host: &mut dyn DestinationHost,
) -> DestinationOutcome {
    let keeper = opts.store.clone().and_then(|store| {
        ReceivedKeeper::start(store)
            .map_err(|e| tracing::warn!(error = %e, "received chunks will not be kept"))
            .ok()
    });
    let mut d = DestinationDriver {
        dest: Destination::new(opts.config, Duration::ZERO),
        store: opts.store,
        keeper,
        hash_memory: opts.hash_memory,
        t0: Instant::now(),
        geometry: Arc::new(OnceLock::new()),
        wire: Arc::new(AtomicU64::new(0)),
        machine: None,
        written: Vec::new(),
        summary: DestinationSummary::default(),
        outcome: None,
    };
    d.run(links, host)
}

struct DestinationDriver {
    dest: Destination,
    store: Option<Arc<ChunkStore>>,
    keeper: Option<ReceivedKeeper>,
    hash_memory: bool,
    t0: Instant,
    geometry: Arc<OnceLock<Geometry>>,
    wire: Arc<AtomicU64>,
    machine: Option<Machine>,
    /// Chunks this side wrote (the rest of fresh memory is zero and need not be cleared).
    written: Vec<bool>,
    summary: DestinationSummary,
    outcome: Option<Result<(), String>>,
}

impl DestinationDriver {
    fn run(&mut self, links: Links, host: &mut dyn DestinationHost) -> DestinationOutcome {
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        let mut control = match self.start_readers(&links, tx) {
            Ok(c) => c,
            Err(e) => return self.failed(e.to_string()),
        };
        let mut held: VecDeque<Message> = VecDeque::new();
        loop {
            let now = self.t0.elapsed();
            let wait = match self.dest.next_deadline() {
                Some(deadline) => deadline.saturating_sub(now).min(HOST_POLL),
                None => HOST_POLL,
            };
            let event = rx.recv_timeout(wait);
            // The time first: a deadline that passed while waiting counts before the event.
            let now = self.t0.elapsed();
            self.feed(Input::Tick { now }, &mut control, host);
            match event {
                Ok(event) => self.on_event(event, &mut held, &mut control, host),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.feed(Input::LinkDown, &mut control, host)
                }
            }
            while self.dest.awaiting_chunks() == 0 {
                let Some(msg) = held.pop_front() else { break };
                self.feed(Input::Received(msg), &mut control, host);
            }
            if let Some(reason) = host.cancelled() {
                self.feed(Input::Cancel { reason }, &mut control, host);
            }
            match self.outcome.take() {
                Some(Ok(())) => {
                    links.shutdown();
                    self.finish_keeping();
                    self.summary.wire_bytes = self.wire.load(Ordering::Relaxed);
                    return match self.machine.take() {
                        Some(machine) => DestinationOutcome::Running {
                            machine,
                            summary: self.summary.clone(),
                        },
                        None => self.failed("internal: started without a machine".into()),
                    };
                }
                Some(Err(reason)) => {
                    links.shutdown();
                    return self.failed(reason);
                }
                None => {}
            }
        }
    }

    fn failed(&mut self, reason: String) -> DestinationOutcome {
        self.machine = None;
        self.finish_keeping();
        self.summary.wire_bytes = self.wire.load(Ordering::Relaxed);
        DestinationOutcome::Failed {
            reason,
            summary: self.summary.clone(),
        }
    }

    /// Waits for the chunk keeper to commit what it was given (the VM already runs, or is
    /// gone): a retry after a rollback finds those chunks too.
    fn finish_keeping(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        match keeper.finish() {
            Ok(kept) => self.summary.kept = Some(kept),
            Err(e) => tracing::warn!(error = %e, "could not keep the received chunks"),
        }
    }

    /// Feeds one event; a control message that must wait for chunks (and any after it)
    /// goes to `held`.
    fn on_event(
        &mut self,
        event: Event,
        held: &mut VecDeque<Message>,
        control: &mut MigrationStream,
        host: &mut dyn DestinationHost,
    ) {
        let input = match event {
            Event::Control(msg) => {
                let waits = matches!(msg, Message::RoundDone { .. } | Message::Switchover { .. });
                if !held.is_empty() || (waits && self.dest.awaiting_chunks() > 0) {
                    held.push_back(msg);
                    return;
                }
                Input::Received(msg)
            }
            Event::Data(msg) => Input::Received(msg),
            Event::Chunk(chunk) => Input::Chunk(chunk),
            Event::LinkDown(why) => {
                tracing::warn!(%why, "migration link down");
                Input::LinkDown
            }
        };
        self.feed(input, control, host);
    }

    /// Hands `input` to the state machine and carries out everything that follows.
    fn feed(
        &mut self,
        input: Input,
        control: &mut MigrationStream,
        host: &mut dyn DestinationHost,
    ) {
        let mut pending = VecDeque::from([input]);
        while let Some(input) = pending.pop_front() {
            for output in self.dest.handle(input) {
                pending.extend(self.execute(control, host, output));
            }
        }
    }

    fn start_readers(
        &self,
        links: &Links,
        tx: SyncSender<Event>,
    ) -> Result<MigrationStream, DriverError> {
        let share = |s: &MigrationStream| s.try_clone().map_err(DriverError::ShareStream);
        let control = share(&links.control)?;
        spawn_reader(
            "mig-control".into(),
            control,
            tx.clone(),
            self.wire.clone(),
            None,
        )?;
        for (n, s) in links.data.iter().enumerate() {
            spawn_reader(
                format!("mig-recv{n}"),
                share(s)?,
                tx.clone(),
                self.wire.clone(),
                Some(self.geometry.clone()),
            )?;
        }
        share(&links.control)
    }

    fn execute(
        &mut self,
        control: &mut MigrationStream,
        host: &mut dyn DestinationHost,
        output: Output,
    ) -> Vec<Input> {
        match output {
            Output::Send(msg) => match write_message(control, &msg) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, kind = msg.kind(), "control stream write failed");
                    vec![Input::LinkDown]
                }
            },
            Output::PrepareMemory {
                regions,
                vcpus,
                chunk_size,
                ..
            } => cancel_on_error(self.prepare(host, &regions, vcpus, chunk_size)),
            Output::CheckHave { round, seq, ids } => {
                let held = match &self.store {
                    Some(store) => store.have(&ids),
                    None => Bitmap::new(ids.len()),
                };
                vec![Input::Have { round, seq, held }]
            }
            Output::ZeroChunks { start, count } => {
                let result = (start..start.saturating_add(count))
                    .try_for_each(|index| self.zero_chunk(index));
                cancel_on_error(result)
            }
            Output::CopyFromStore { index, id } => {
                let result = match &self.store {
                    Some(store) => store
                        .get(&id)
                        .map_err(|e| DriverError::Store {
                            id,
                            source: Box::new(e),
                        })
                        .and_then(|bytes| self.write_chunk(index, &bytes)),
                    None => Err(DriverError::NoStore(id)),
                };
                self.summary.chunks_from_store += 1;
                cancel_on_error(result)
            }
            Output::WriteChunk { indices, bytes } => {
                self.summary.chunks_received += 1;
                let result = indices
                    .iter()
                    .try_for_each(|&index| self.write_chunk(index, &bytes));
                if let (Ok(()), Some(keeper)) = (&result, &mut self.keeper) {
                    keeper.offer(bytes);
                }
                cancel_on_error(result)
            }
            Output::StartVm { state } => match self.start(&state) {
                Ok(()) => vec![Input::VmStarted],
                Err(e) => vec![Input::StartFailed {
                    reason: e.to_string(),
                }],
            },
            Output::DiscardVm => {
                self.machine = None;
                Vec::new()
            }
            Output::Fail { reason } => {
                self.outcome = Some(Err(reason));
                Vec::new()
            }
            Output::Done => {
                self.outcome = Some(Ok(()));
                Vec::new()
            }
        }
    }

    fn prepare(
        &mut self,
        host: &mut dyn DestinationHost,
        regions: &[MemRegion],
        vcpus: u32,
        chunk_size: ChunkSize,
    ) -> Result<(), DriverError> {
        let mem_bytes = regions.iter().map(|r| r.len).sum();
        let vcpus = u8::try_from(vcpus).map_err(|_| DriverError::Vcpus(vcpus))?;
        let machine = host
            .create_machine(&MachineConfig { mem_bytes, vcpus })
            .map_err(DriverError::Host)?;
        let layout: Vec<(u64, u64)> = regions.iter().map(|r| (r.guest_addr, r.len)).collect();
        if machine.layout() != layout.as_slice() {
            return Err(DriverError::Layout {
                layout,
                mem_bytes,
                built: machine.layout().to_vec(),
            });
        }
        let geo = machine.geometry(chunk_size)?;
        self.written = vec![false; geo.chunk_count() as usize];
        let _ = self.geometry.set(geo);
        self.machine = Some(machine);
        Ok(())
    }

    fn geo(&self) -> Result<&Geometry, DriverError> {
        self.geometry.get().ok_or(DriverError::NotPrepared)
    }

    fn write_chunk(&mut self, index: u64, bytes: &[u8]) -> Result<(), DriverError> {
        let size = self.geo()?.chunk_size();
        let machine = self.machine.as_ref().ok_or(DriverError::NoMachineToWrite)?;
        machine.write_chunk(index, size, bytes)?;
        if let Some(w) = self.written.get_mut(index as usize) {
            *w = true;
        }
        Ok(())
    }

    /// Zeroes a chunk this side wrote before; fresh memory is already zero.
    fn zero_chunk(&mut self, index: u64) -> Result<(), DriverError> {
        if !self.written.get(index as usize).copied().unwrap_or(false) {
            return Ok(());
        }
        let len = self
            .geo()?
            .chunk_len(index)
            .ok_or(DriverError::Outside(index))?;
        self.write_chunk(index, &vec![0u8; len])?;
        self.written[index as usize] = false;
        Ok(())
    }

    fn start(&mut self, state: &[u8]) -> Result<(), DriverError> {
        let machine = self.machine.as_mut().ok_or(DriverError::NoMachineToStart)?;
        let state = MachineState::decode(state)?;
        machine.apply_state(&state)?;
        if self.hash_memory {
            self.summary.memory_blake3 = crate::machine::memory::memory_digest(machine.memory())
                .map(|h| h.to_hex().to_string())
                .ok();
        }
        machine.resume()?;
        self.summary.resumed_ns = Some(monotonic_ns());
        Ok(())
    }
}

fn cancel_on_error(result: Result<(), DriverError>) -> Vec<Input> {
    match result {
        Ok(()) => Vec::new(),
        Err(e) => vec![Input::Cancel {
            reason: e.to_string(),
        }],
    }
}

/// Reads one stream into events. Data streams verify chunks here once the geometry is
/// known; anything else is passed on for the state machine to judge.
fn spawn_reader(
    name: String,
    stream: MigrationStream,
    tx: SyncSender<Event>,
    wire: Arc<AtomicU64>,
    geometry: Option<Arc<OnceLock<Geometry>>>,
) -> Result<(), DriverError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut reader = FrameReader::new(stream);
            let mut decoder = ChunkDecoder::new();
            let mut counted = 0;
            loop {
                let msg = reader.read_message();
                let read = reader.bytes_read();
                wire.fetch_add(read - counted, Ordering::Relaxed);
                counted = read;
                let event = match (msg, &geometry) {
                    (Err(e), _) => {
                        let _ = tx.send(Event::LinkDown(format!("{name}: {e}")));
                        return;
                    }
                    (Ok(msg), None) => Event::Control(msg),
                    (Ok(msg), Some(geo)) => match geo.get() {
                        Some(geo) => match verify_chunk_message(&mut decoder, geo, msg) {
                            Ok(chunk) => Event::Chunk(chunk),
                            Err(other) => Event::Data(other),
                        },
                        None => Event::Data(msg),
                    },
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(DriverError::SpawnReader)
}
