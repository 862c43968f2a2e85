//! In-memory simulation of a whole migration: both state machines, a queue link carrying
//! real frames, fake guest memory with a fake dirtying guest, and fault injection at every
//! step. [`Sim::outcome`] checks the invariant every run must end in.
//!
//! Public behind the feature `sim` so a simulator can run real migrations (the same
//! [`Source`] and [`Destination`]) in virtual time; the tests below run it in every mode with
//! every fault at every step. The harness asserts the protocol's promises as it goes (never
//! paused twice, never discarded without a confirm, ...) and panics when one is broken: a
//! broken promise is a bug in the core, not an outcome.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use novacron_mesh::chunks::{encode_chunk, is_zero, Bitmap, ChunkId, ChunkRef, ChunkSize, Level};

use super::destination::{self, Destination, DestinationConfig};
use super::messages::{decode_frame, encode_frame, MemRegion, Message, Mode};
use super::source::{self, Source, SourceConfig};
use super::{Geometry, Progress};

const CHUNK: usize = 4096;
/// Frames each direction of the link carries per simulated millisecond.
const FRAMES_PER_MS: usize = 4;
const BANDWIDTH_BPS: u64 = 64 << 20;
/// Virtual time per step: the guest dirties, the link delivers, both sides tick.
const STEP: Duration = Duration::from_millis(1);
const MAX_SIM: Duration = Duration::from_secs(60);

/// The guest memory layout of every run: two regions, the first with a short last chunk.
pub fn regions() -> Vec<MemRegion> {
    vec![
        MemRegion {
            guest_addr: 0,
            len: 40 * CHUNK as u64 + 1000,
        },
        MemRegion {
            guest_addr: 1 << 32,
            len: 24 * CHUNK as u64,
        },
    ]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Byte range of chunk `index` in memory laid out as the regions back to back.
fn chunk_range(geo: &Geometry, index: u64) -> Range<usize> {
    let (region, offset) = geo.locate(index).unwrap();
    let base: u64 = geo.regions()[..region].iter().map(|r| r.len).sum();
    let start = (base + offset) as usize;
    start..start + geo.chunk_len(index).unwrap()
}

fn ref_of(geo: &Geometry, mem: &[u8], index: u64) -> ChunkRef {
    let bytes = &mem[chunk_range(geo, index)];
    ChunkRef {
        index,
        id: (!is_zero(bytes)).then(|| ChunkId::of(bytes)),
        len: bytes.len() as u32,
    }
}

/// Guest memory: random chunks, some zero chunks, and duplicates (chunk 3 == 5 == 60).
fn initial_memory(geo: &Geometry, rng: &mut Rng) -> Vec<u8> {
    let total: u64 = geo.regions().iter().map(|r| r.len).sum();
    let mut mem = vec![0u8; total as usize];
    for i in 0..geo.chunk_count() {
        if i % 7 == 0 {
            continue;
        }
        for b in &mut mem[chunk_range(geo, i)] {
            *b = rng.next() as u8;
        }
    }
    let first = mem[chunk_range(geo, 3)].to_vec();
    for dup in [5, 60] {
        mem[chunk_range(geo, dup)].copy_from_slice(&first);
    }
    mem
}

/// A fault injected once, when a given number of frames were delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The link breaks both ways; what was queued is lost.
    DropLink,
    /// The local user cancels at the source.
    CancelSource,
    /// The destination cancels.
    CancelDestination,
    /// The next chunk on its way to the destination gets a flipped bit.
    CorruptChunk,
    /// The link stops carrying anything, without breaking.
    Stall,
}

/// Every [`Fault`].
pub const FAULTS: [Fault; 5] = [
    Fault::DropLink,
    Fault::CancelSource,
    Fault::CancelDestination,
    Fault::CorruptChunk,
    Fault::Stall,
];

struct SrcSide {
    m: Source,
    mem: Vec<u8>,
    paused: bool,
    discarded: bool,
    throttle: u8,
    dirty: BTreeSet<u64>,
    heard_confirm: bool,
    in_doubt: bool,
    failed: bool,
    throttled_ever: bool,
    last_progress: Option<Progress>,
}

struct DstSide {
    m: Destination,
    mem: Option<Vec<u8>>,
    store: HashMap<ChunkId, Vec<u8>>,
    starts: u32,
    discarded: bool,
    chunks_received: usize,
    fail_start: bool,
}

#[derive(Default)]
struct Link {
    to_dst: VecDeque<Vec<u8>>,
    to_src: VecDeque<Vec<u8>>,
    down: bool,
    stalled: bool,
}

/// One migration: both machines, the link between them and the fake guest.
pub struct Sim {
    geo: Geometry,
    src: SrcSide,
    dst: DstSide,
    link: Link,
    /// Virtual time since the start.
    now: Duration,
    rng: Rng,
    /// Chunks the guest writes per millisecond while it runs unthrottled.
    dirty_per_ms: u64,
    delivered: usize,
    fault: Option<(usize, Fault)>,
    corrupt_next: bool,
    resolved: bool,
}

impl Sim {
    /// A migration configured by `cfg` (its regions are the guest's memory) of a guest that
    /// writes `dirty_per_ms` chunks per simulated millisecond while it runs.
    ///
    /// # Panics
    /// When `cfg` is refused by [`Source::new`].
    pub fn new(cfg: SourceConfig, dirty_per_ms: u64) -> Self {
        let geo = Geometry::new(&cfg.regions, cfg.chunk_size, u64::MAX).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mem = initial_memory(&geo, &mut rng);
        let dst_cfg = DestinationConfig {
            timeout: Duration::from_millis(300),
            ..DestinationConfig::default()
        };
        Sim {
            src: SrcSide {
                m: Source::new(cfg).unwrap(),
                mem,
                paused: false,
                discarded: false,
                throttle: 0,
                dirty: BTreeSet::new(),
                heard_confirm: false,
                in_doubt: false,
                failed: false,
                throttled_ever: false,
                last_progress: None,
            },
            dst: DstSide {
                m: Destination::new(dst_cfg, Duration::ZERO),
                mem: None,
                store: HashMap::new(),
                starts: 0,
                discarded: false,
                chunks_received: 0,
                fail_start: false,
            },
            geo,
            link: Link::default(),
            now: Duration::ZERO,
            rng,
            dirty_per_ms,
            delivered: 0,
            fault: None,
            corrupt_next: false,
            resolved: false,
        }
    }

    fn send(&mut self, to_dst: bool, msg: &Message) {
        if self.link.down {
            return;
        }
        let frame = encode_frame(msg).unwrap();
        if to_dst {
            self.link.to_dst.push_back(frame);
        } else {
            self.link.to_src.push_back(frame);
        }
    }

    fn feed_src(&mut self, input: source::Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for o in self.src.m.handle(input) {
                self.do_src(o, &mut inputs);
            }
        }
    }

    fn start_src(&mut self) {
        let outs = self.src.m.start(self.now);
        let mut inputs = VecDeque::new();
        for o in outs {
            self.do_src(o, &mut inputs);
        }
        while let Some(input) = inputs.pop_front() {
            for o in self.src.m.handle(input) {
                self.do_src(o, &mut inputs);
            }
        }
    }

    fn do_src(&mut self, o: source::Output, inputs: &mut VecDeque<source::Input>) {
        use source::Output as O;
        match o {
            O::Send(m) => self.send(true, &m),
            O::PauseVm => {
                assert!(!self.src.paused, "paused twice");
                self.src.paused = true;
            }
            O::ResumeVm => {
                assert!(self.src.paused, "resumed a running VM");
                self.src.paused = false;
            }
            O::Throttle { percent } => {
                self.src.throttle = percent;
                self.src.throttled_ever |= percent > 0;
            }
            O::CollectRound { round, full, extra } => {
                let indices: BTreeSet<u64> = if full {
                    (0..self.geo.chunk_count()).collect()
                } else {
                    self.src.dirty.iter().copied().chain(extra).collect()
                };
                self.src.dirty.clear();
                let refs = indices
                    .into_iter()
                    .map(|i| ref_of(&self.geo, &self.src.mem, i))
                    .collect();
                inputs.push_back(source::Input::RoundData { round, refs });
            }
            O::SendChunk { index, .. } => {
                let bytes = self.src.mem[chunk_range(&self.geo, index)].to_vec();
                let enc = encode_chunk(&bytes, Level::new(1).unwrap()).unwrap();
                let msg = Message::Chunk {
                    index,
                    id: *ChunkId::of(&bytes).as_bytes(),
                    raw: enc.raw,
                    bytes: enc.bytes,
                };
                self.send(true, &msg);
            }
            O::CaptureState => {
                assert!(self.src.paused, "state captured from a running VM");
                inputs.push_back(source::Input::StateCaptured(b"vcpu-state".to_vec()));
            }
            O::DiscardVm => {
                assert!(self.src.heard_confirm, "source discarded without confirm");
                self.src.discarded = true;
            }
            O::InDoubt => self.src.in_doubt = true,
            O::Progress(p) => {
                assert!(
                    p.bytes_done() <= p.bytes_total,
                    "progress past its total: {p:?}"
                );
                self.src.last_progress = Some(p)
            }
            O::Fail { .. } => self.src.failed = true,
        }
    }

    fn feed_dst(&mut self, input: destination::Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for o in self.dst.m.handle(input) {
                self.do_dst(o, &mut inputs);
            }
        }
    }

    fn do_dst(&mut self, o: destination::Output, inputs: &mut VecDeque<destination::Input>) {
        use destination::Output as O;
        match o {
            O::Send(m) => self.send(false, &m),
            O::PrepareMemory { regions, .. } => {
                let total: u64 = regions.iter().map(|r| r.len).sum();
                self.dst.mem = Some(vec![0; total as usize]);
            }
            O::CheckHave { round, seq, ids } => {
                let mut held = Bitmap::new(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    if self.dst.store.contains_key(id) {
                        held.set(i);
                    }
                }
                inputs.push_back(destination::Input::Have { round, seq, held });
            }
            O::ZeroChunks { start, count } => {
                let mem = self.dst.mem.as_mut().unwrap();
                for i in start..start + count {
                    mem[chunk_range(&self.geo, i)].fill(0);
                }
            }
            O::CopyFromStore { index, id } => {
                let bytes = self.dst.store[&id].clone();
                let mem = self.dst.mem.as_mut().unwrap();
                mem[chunk_range(&self.geo, index)].copy_from_slice(&bytes);
            }
            O::WriteChunk { indices, bytes } => {
                let mem = self.dst.mem.as_mut().unwrap();
                for i in indices {
                    mem[chunk_range(&self.geo, i)].copy_from_slice(&bytes);
                }
            }
            O::StartVm { state } => {
                assert_eq!(state, b"vcpu-state");
                if self.dst.fail_start {
                    inputs.push_back(destination::Input::StartFailed {
                        reason: "state refused".into(),
                    });
                } else {
                    self.dst.starts += 1;
                    inputs.push_back(destination::Input::VmStarted);
                }
            }
            O::DiscardVm => {
                assert_eq!(self.dst.starts, 0, "destination discarded a started VM");
                self.dst.discarded = true;
                self.dst.mem = None;
            }
            O::Fail { .. } | O::Done => {}
        }
    }

    /// The guest writes `n` chunks: mostly a changed byte, sometimes a zeroed chunk or a
    /// copy of another chunk (so duplicates and zero chunks appear between rounds).
    fn dirty_guest(&mut self) {
        if self.src.paused || self.src.discarded || self.dirty_per_ms == 0 {
            return;
        }
        let n = self.dirty_per_ms * u64::from(100 - self.src.throttle.min(100)) / 100;
        for _ in 0..n {
            let index = self.rng.below(self.geo.chunk_count());
            let range = chunk_range(&self.geo, index);
            match self.rng.below(10) {
                0 => self.src.mem[range].fill(0),
                1 => {
                    let from = chunk_range(&self.geo, 3);
                    if from.len() == range.len() {
                        let copy = self.src.mem[from].to_vec();
                        self.src.mem[range].copy_from_slice(&copy);
                    }
                }
                _ => {
                    let at = range.start + self.rng.below(range.len() as u64) as usize;
                    self.src.mem[at] = self.src.mem[at].wrapping_add(1);
                }
            }
            self.src.dirty.insert(index);
        }
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::DropLink => {
                self.link.down = true;
                self.link.to_dst.clear();
                self.link.to_src.clear();
                self.feed_src(source::Input::LinkDown);
                self.feed_dst(destination::Input::LinkDown);
            }
            Fault::CancelSource => self.feed_src(source::Input::Cancel {
                reason: "test".into(),
            }),
            Fault::CancelDestination => self.feed_dst(destination::Input::Cancel {
                reason: "test".into(),
            }),
            Fault::CorruptChunk => self.corrupt_next = true,
            Fault::Stall => self.link.stalled = true,
        }
    }

    fn deliver(&mut self) {
        if self.link.down || self.link.stalled {
            return;
        }
        for _ in 0..FRAMES_PER_MS {
            if let Some(frame) = self.link.to_dst.pop_front() {
                let msg = self.corrupt(frame_msg(&frame));
                if matches!(msg, Message::Chunk { .. }) {
                    self.dst.chunks_received += 1;
                }
                self.count_step();
                self.feed_dst(destination::Input::Received(msg));
            }
            if self.link.down || self.link.stalled {
                return;
            }
            if let Some(frame) = self.link.to_src.pop_front() {
                let msg = frame_msg(&frame);
                if matches!(msg, Message::Confirm | Message::Status { started: true }) {
                    self.src.heard_confirm = true;
                }
                self.count_step();
                self.feed_src(source::Input::Received(msg));
            }
            if self.link.down || self.link.stalled {
                return;
            }
        }
    }

    fn corrupt(&mut self, msg: Message) -> Message {
        match msg {
            Message::Chunk {
                index,
                id,
                raw,
                mut bytes,
            } if self.corrupt_next => {
                self.corrupt_next = false;
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
                Message::Chunk {
                    index,
                    id,
                    raw,
                    bytes,
                }
            }
            other => other,
        }
    }

    fn count_step(&mut self) {
        self.delivered += 1;
        if let Some((at, fault)) = self.fault {
            if self.delivered == at {
                self.inject(fault);
            }
        }
    }

    /// A new connection for a source in doubt.
    fn reconnect(&mut self) {
        self.resolved = true;
        self.link = Link::default();
        self.feed_src(source::Input::Reconnected);
    }

    /// Injects `fault` once `at` frames were delivered (0: before the first).
    pub fn set_fault(&mut self, at: usize, fault: Fault) {
        self.fault = Some((at, fault));
    }

    /// Makes the destination refuse the switchover state.
    pub fn refuse_start(&mut self) {
        self.dst.fail_start = true;
    }

    /// Frames delivered so far, both directions.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// True when the source went in doubt and a new connection asked the destination.
    pub fn resolved(&self) -> bool {
        self.resolved
    }

    /// Chunks that reached the destination.
    pub fn chunks_received(&self) -> usize {
        self.dst.chunks_received
    }

    /// The source's last progress report.
    pub fn progress(&self) -> Option<&Progress> {
        self.src.last_progress.as_ref()
    }

    /// Runs the migration to its end, one simulated millisecond at a time.
    ///
    /// # Panics
    /// When it does not end within a simulated minute, or a machine breaks a promise.
    pub fn run(&mut self) {
        self.start_src();
        if let Some((0, fault)) = self.fault {
            self.inject(fault);
        }
        while self.now < MAX_SIM {
            if self.src.m.is_finished() && (self.dst.m.is_finished() || self.dst.mem.is_none()) {
                return;
            }
            self.now += STEP;
            self.feed_src(source::Input::Tick { now: self.now });
            self.feed_dst(destination::Input::Tick { now: self.now });
            let rate = self.dirty_per_ms * u64::from(100 - self.src.throttle.min(100)) / 100;
            self.feed_src(source::Input::Measured {
                bandwidth_bps: BANDWIDTH_BPS,
                dirty_rate_bps: rate * CHUNK as u64 * 1000,
            });
            self.dirty_guest();
            self.deliver();
            if self.src.in_doubt && !self.resolved && self.dst.m.is_finished() {
                self.reconnect();
            }
        }
        panic!(
            "simulation did not finish in {MAX_SIM:?} (fault {:?})",
            self.fault
        );
    }
}

fn frame_msg(frame: &[u8]) -> Message {
    let (msg, used) = decode_frame(frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    msg
}

/// Where the VM ended up.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub enum Outcome {
    StayedOnSource,
    MovedToDestination,
}

/// How a run broke the invariant of [`check_outcome`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    #[error("destination started the VM {0} times")]
    StartedMoreThanOnce(u32),
    #[error("source runs but the destination kept the memory")]
    DestinationKeptMemory,
    #[error("source runs still throttled at {0}%")]
    StillThrottled(u8),
    #[error("destination runs but the source still holds a paused VM")]
    SourceStillHolds,
    #[error("source discarded without a confirmation")]
    DiscardedUnconfirmed,
    #[error("destination memory differs from the source's")]
    MemoryDiffers,
    #[error("the VM runs twice")]
    RunsTwice,
    #[error(
        "the VM runs nowhere (source paused={paused} discarded={discarded} in_doubt={in_doubt})"
    )]
    RunsNowhere {
        paused: bool,
        discarded: bool,
        in_doubt: bool,
    },
}

/// The invariant of every run: the VM runs in exactly one place. Either the source runs it
/// (never discarded) and the destination never started and holds nothing, or the destination
/// started it exactly once with memory identical to the paused source's and the source
/// discarded it after hearing the confirmation.
pub fn check_outcome(sim: &Sim) -> Result<Outcome, InvariantError> {
    let (s, d) = (&sim.src, &sim.dst);
    if d.starts > 1 {
        return Err(InvariantError::StartedMoreThanOnce(d.starts));
    }
    let src_runs = !s.paused && !s.discarded;
    let dst_runs = d.starts == 1;
    match (src_runs, dst_runs) {
        (true, false) => {
            if d.mem.is_some() {
                return Err(InvariantError::DestinationKeptMemory);
            }
            if s.throttle != 0 {
                return Err(InvariantError::StillThrottled(s.throttle));
            }
            Ok(Outcome::StayedOnSource)
        }
        (false, true) => {
            if !s.discarded {
                return Err(InvariantError::SourceStillHolds);
            }
            if !s.heard_confirm {
                return Err(InvariantError::DiscardedUnconfirmed);
            }
            if d.mem.as_deref() != Some(&s.mem[..]) {
                return Err(InvariantError::MemoryDiffers);
            }
            Ok(Outcome::MovedToDestination)
        }
        (true, true) => Err(InvariantError::RunsTwice),
        (false, false) => Err(InvariantError::RunsNowhere {
            paused: s.paused,
            discarded: s.discarded,
            in_doubt: s.in_doubt,
        }),
    }
}

/// The configuration of the tests: 4 KiB chunks, 300 ms timeout, 1 ms downtime budget,
/// at most 20 rounds.
pub fn config(mode: Mode) -> SourceConfig {
    let mut cfg = SourceConfig::new([9; 16], regions(), 1, mode);
    cfg.chunk_size = ChunkSize::K4;
    cfg.timeout = Duration::from_millis(300);
    cfg.downtime_budget = Duration::from_millis(1);
    cfg.max_rounds = 20;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::source::NoConverge;
    use crate::migration::Phase;

    fn complete(mode: Mode, dirty_per_ms: u64) -> Sim {
        let mut sim = Sim::new(config(mode), dirty_per_ms);
        sim.run();
        assert_eq!(check_outcome(&sim), Ok(Outcome::MovedToDestination));
        sim
    }

    #[test]
    fn cold_warm_and_live_complete_with_identical_memory() {
        for mode in [Mode::Cold, Mode::Warm, Mode::Live] {
            let sim = complete(mode, 4);
            let p = sim.src.last_progress.clone().unwrap();
            assert_eq!(p.phase, Phase::Done, "{mode:?}");
            let mem = sim.src.mem.len() as u64;
            assert!(
                p.bytes_sent + p.bytes_skipped_zero + p.bytes_skipped_held >= mem,
                "{mode:?}: {p:?}"
            );
            if mode == Mode::Live {
                assert!(p.round >= 2, "live should iterate: {p:?}");
            } else {
                assert_eq!(p.round, 0, "{mode:?} is one round");
            }
        }
    }

    #[test]
    fn duplicates_and_zero_chunks_are_not_sent() {
        let sim = complete(Mode::Cold, 0);
        let geo = &sim.geo;
        let ids: BTreeSet<ChunkId> = (0..geo.chunk_count())
            .filter_map(|i| ref_of(geo, &sim.src.mem, i).id)
            .collect();
        assert_eq!(sim.dst.chunks_received, ids.len());
        let p = sim.src.last_progress.unwrap();
        assert!(p.bytes_skipped_zero >= 9 * CHUNK as u64);
    }

    #[test]
    fn destination_holding_chunks_receives_only_the_missing_ones() {
        let mut sim = Sim::new(config(Mode::Warm), 0);
        let geo = sim.geo.clone();
        let mut distinct = BTreeSet::new();
        for i in 0..geo.chunk_count() {
            let bytes = sim.src.mem[chunk_range(&geo, i)].to_vec();
            if is_zero(&bytes) {
                continue;
            }
            distinct.insert(ChunkId::of(&bytes));
            if i % 2 == 0 {
                sim.dst.store.insert(ChunkId::of(&bytes), bytes);
            }
        }
        let held: BTreeSet<ChunkId> = sim.dst.store.keys().copied().collect();
        sim.run();
        assert_eq!(check_outcome(&sim), Ok(Outcome::MovedToDestination));
        let missing = distinct.difference(&held).count();
        assert!(missing > 0 && missing < distinct.len());
        assert_eq!(sim.dst.chunks_received, missing);
        assert!(sim.src.last_progress.unwrap().bytes_skipped_held > 0);
    }

    #[test]
    fn live_that_cannot_converge_falls_back_to_warm_at_the_round_or_time_limit() {
        let mut by_rounds = config(Mode::Live);
        by_rounds.max_rounds = 3;
        by_rounds.downtime_budget = Duration::ZERO;
        let mut by_time = by_rounds.clone();
        by_time.max_rounds = 1000;
        by_time.max_precopy = Duration::from_millis(40);
        for (cfg, limit) in [(by_rounds, "rounds"), (by_time, "time")] {
            let mut sim = Sim::new(cfg, 20);
            sim.run();
            assert_eq!(check_outcome(&sim), Ok(Outcome::MovedToDestination));
            let p = sim.src.last_progress.unwrap();
            assert!(p.round >= 2 && p.round <= 10, "{limit}: {p:?}");
            assert!(!sim.src.throttled_ever, "{limit}");
        }
    }

    #[test]
    fn live_that_cannot_converge_throttles_when_asked() {
        let mut cfg = config(Mode::Live);
        cfg.max_rounds = 3;
        cfg.on_no_converge = NoConverge::Throttle;
        let mut sim = Sim::new(cfg, 40);
        sim.run();
        assert_eq!(check_outcome(&sim), Ok(Outcome::MovedToDestination));
        assert!(sim.src.throttled_ever);
    }

    #[test]
    fn refused_state_rolls_back() {
        for mode in [Mode::Cold, Mode::Warm, Mode::Live] {
            let mut sim = Sim::new(config(mode), 2);
            sim.dst.fail_start = true;
            sim.run();
            assert_eq!(check_outcome(&sim), Ok(Outcome::StayedOnSource), "{mode:?}");
            assert!(sim.src.failed);
        }
    }

    /// Every fault at every delivered frame, in every mode: the VM runs exactly once. Also
    /// checks that the loop reaches both outcomes, so it covers the switchover window.
    #[test]
    fn every_fault_at_every_step_keeps_the_vm_running_exactly_once() {
        for mode in [Mode::Cold, Mode::Warm, Mode::Live] {
            let clean = complete(mode, 4).delivered;
            let mut outcomes: HashMap<(Fault, Outcome), usize> = HashMap::new();
            let mut in_doubt: HashMap<Outcome, usize> = HashMap::new();
            for fault in FAULTS {
                for at in 0..=clean + 1 {
                    let mut sim = Sim::new(config(mode), 4);
                    sim.fault = Some((at, fault));
                    sim.run();
                    match check_outcome(&sim) {
                        Ok(o) => {
                            *outcomes.entry((fault, o)).or_default() += 1;
                            if sim.resolved {
                                *in_doubt.entry(o).or_default() += 1;
                            }
                        }
                        Err(e) => panic!("{mode:?}, {fault:?} at frame {at}/{clean}: {e}"),
                    }
                }
            }
            for fault in [Fault::DropLink, Fault::Stall, Fault::CancelDestination] {
                assert!(
                    outcomes.contains_key(&(fault, Outcome::StayedOnSource)),
                    "{mode:?} {fault:?}: {outcomes:?}"
                );
            }
            assert!(
                outcomes.contains_key(&(Fault::CorruptChunk, Outcome::StayedOnSource)),
                "{mode:?}: {outcomes:?}"
            );
            assert!(
                outcomes.contains_key(&(Fault::DropLink, Outcome::MovedToDestination)),
                "{mode:?}: {outcomes:?}"
            );
            // The switchover window was hit both ways: state lost (source resumes after asking)
            // and confirm lost (destination runs, source discards after asking).
            assert_eq!(
                in_doubt.len(),
                2,
                "{mode:?}: in-doubt outcomes {in_doubt:?}"
            );
        }
    }
}
