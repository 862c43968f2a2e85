//! The destination side of a migration as a sans-IO state machine.
//!
//! It validates every message, asks the driver which offered chunks its store already holds
//! ([`Output::CheckHave`]), wants only the others, verifies every chunk against its hash
//! before asking for it to be written, and starts the VM at most once, only after the full
//! state arrived. Before [`Output::StartVm`] any failure discards what it got
//! ([`Output::DiscardVm`]); after it, nothing makes it discard.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use novacron_mesh::chunks::{Bitmap, ChunkDecoder, ChunkId, ChunkSize, EncodedChunk};
use tracing::{debug, info, warn};

use super::messages::{
    MemRegion, Message, Mode, OfferEntry, ZeroRun, MAX_OFFER_CHUNKS, PROTOCOL_VERSION,
};
use super::{Geometry, ProtocolError};

#[derive(Clone, Debug)]
pub struct DestinationConfig {
    /// Largest guest this side accepts.
    pub max_mem_bytes: u64,
    /// Most vCPUs this side accepts.
    pub max_vcpus: u32,
    /// Silence from the source, once the hello arrived, after which it gives up.
    pub timeout: Duration,
    /// Refuse any other VM.
    pub expect_vm_id: Option<[u8; 16]>,
}

impl Default for DestinationConfig {
    fn default() -> Self {
        Self {
            max_mem_bytes: 64 << 30,
            max_vcpus: 64,
            timeout: Duration::from_secs(10),
            expect_vm_id: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Received(Message),
    /// Answer to [`Output::CheckHave`]: bit `i` set = the store holds `ids[i]`.
    Have {
        round: u32,
        seq: u32,
        held: Bitmap,
    },
    /// A [`Message::Chunk`] that a driver thread already checked with [`verify_chunk`]
    /// (or the reason it failed), so decompression and hashing run off the protocol thread.
    Chunk(Result<VerifiedChunk, ProtocolError>),
    /// The VM started after [`Output::StartVm`].
    VmStarted,
    /// The state was refused or the VM could not start; nothing runs here.
    StartFailed {
        reason: String,
    },
    LinkDown,
    /// The local user cancels; too late once the VM is starting.
    Cancel {
        reason: String,
    },
    /// Time passed: `now` since the driver's epoch (the same epoch as [`Destination::new`]).
    /// Due at [`Destination::next_deadline`]; any other time is harmless.
    Tick {
        now: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send(Message),
    /// Allocate guest memory (zeroed) for this layout.
    PrepareMemory {
        vm_id: [u8; 16],
        regions: Vec<MemRegion>,
        vcpus: u32,
        chunk_size: ChunkSize,
        mode: Mode,
    },
    /// Which of these ids does the chunk store hold? Answer with [`Input::Have`].
    CheckHave {
        round: u32,
        seq: u32,
        ids: Vec<ChunkId>,
    },
    /// Zero `count` chunks from `start`.
    ZeroChunks {
        start: u64,
        count: u64,
    },
    /// Copy the chunk `id` from the store into chunk `index`. The store verifies what it
    /// reads; if the read fails, the driver feeds [`Input::Cancel`] (the migration rolls back).
    CopyFromStore {
        index: u64,
        id: ChunkId,
    },
    /// Write these verified bytes into each of `indices`.
    WriteChunk {
        indices: Vec<u64>,
        bytes: Vec<u8>,
    },
    /// Restore the state and run the VM; answer with [`Input::VmStarted`] or
    /// [`Input::StartFailed`]. Emitted at most once.
    StartVm {
        state: Vec<u8>,
    },
    /// Throw away the prepared memory and everything received.
    DiscardVm,
    /// Migration over, nothing runs here.
    Fail {
        reason: String,
    },
    /// Migration over, the VM runs here.
    Done,
}

/// Chunk bytes that were decoded and hashed to the id they came with, and fit the chunk's
/// place in guest memory; only [`verify_chunk`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedChunk {
    index: u64,
    id: ChunkId,
    plain: Vec<u8>,
}

impl VerifiedChunk {
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// Decodes a received chunk (bounded: never more than the chunk's length) and checks that
/// it hashes to `id` and that `index` lies in guest memory. Drivers call it on reader
/// threads, each with its own decoder, and feed the result as [`Input::Chunk`].
pub fn verify_chunk(
    decoder: &mut ChunkDecoder,
    geo: &Geometry,
    index: u64,
    id: [u8; 32],
    raw: bool,
    bytes: Vec<u8>,
) -> Result<VerifiedChunk, ProtocolError> {
    let len = geo.chunk_len(index).ok_or(ProtocolError::Index {
        what: "chunk",
        index,
        count: geo.chunk_count(),
    })?;
    let id = ChunkId::from_bytes(id);
    let plain = decoder
        .decode_owned(EncodedChunk { raw, bytes }, &id, len)
        .map_err(|e| ProtocolError::CorruptChunk {
            index,
            reason: e.to_string(),
        })?;
    Ok(VerifiedChunk { index, id, plain })
}

/// [`verify_chunk`] for a received message: a `Chunk` is verified, any other message is
/// handed back untouched (`Err`).
pub fn verify_chunk_message(
    decoder: &mut ChunkDecoder,
    geo: &Geometry,
    msg: Message,
) -> Result<Result<VerifiedChunk, ProtocolError>, Message> {
    match msg {
        Message::Chunk {
            index,
            id,
            raw,
            bytes,
        } => Ok(verify_chunk(decoder, geo, index, id, raw, bytes)),
        other => Err(other),
    }
}

/// A wanted chunk: the id offered for its index and the same-id indices of the offer that
/// wait for its bytes.
struct Wanted {
    id: ChunkId,
    dups: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    AwaitHello,
    Receiving,
    Starting,
    Running,
    Failed,
}

pub struct Destination {
    cfg: DestinationConfig,
    state: State,
    geo: Option<Geometry>,
    now: Duration,
    last_heard: Duration,
    round: u32,
    /// What each non-zero chunk in memory hashes to, as far as this side wrote it.
    current: HashMap<u64, ChunkId>,
    /// Offers waiting for the driver's have answer, by seq.
    checks: HashMap<u32, Vec<OfferEntry>>,
    seen_seqs: HashSet<u32>,
    wanted: HashMap<u64, Wanted>,
    missing: Vec<u64>,
    /// Chunks a round ack reported missing that have not been written since: a switchover
    /// is refused while any is left (the source sends the state right after its final
    /// round, without waiting for that round's ack).
    owed: BTreeSet<u64>,
    prepared: bool,
    /// A [`Message::Query`] came while starting: answer once the start resolves.
    query_pending: bool,
}

impl Destination {
    /// A destination waiting for the hello; `now` is the driver's time since its epoch.
    pub fn new(cfg: DestinationConfig, now: Duration) -> Self {
        Self {
            cfg,
            state: State::AwaitHello,
            geo: None,
            now,
            last_heard: now,
            round: 0,
            current: HashMap::new(),
            checks: HashMap::new(),
            seen_seqs: HashSet::new(),
            wanted: HashMap::new(),
            missing: Vec::new(),
            owed: BTreeSet::new(),
            prepared: false,
            query_pending: false,
        }
    }

    /// The earliest time at which an [`Input::Tick`] would change anything (the silence
    /// timeout while receiving), or `None` when no time limit runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        (self.state == State::Receiving).then(|| self.last_heard.saturating_add(self.cfg.timeout))
    }

    /// True once it has started (or is starting) the VM.
    pub fn started(&self) -> bool {
        matches!(self.state, State::Starting | State::Running)
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Running | State::Failed)
    }

    pub fn geometry(&self) -> Option<&Geometry> {
        self.geo.as_ref()
    }

    /// Wanted chunks of the current round that have not arrived yet. A driver that reads
    /// chunks on other streams than the control messages holds a [`Message::RoundDone`] or
    /// [`Message::Switchover`] back until this is 0 (or the link fails).
    pub fn awaiting_chunks(&self) -> usize {
        if self.state == State::Receiving {
            self.wanted.len()
        } else {
            0
        }
    }

    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        let result = match input {
            Input::Received(msg) => {
                self.last_heard = self.now;
                self.on_message(msg, &mut out)
            }
            Input::Have { round, seq, held } => self.on_have(round, seq, held, &mut out),
            Input::Chunk(chunk) => {
                if self.state == State::Receiving {
                    self.last_heard = self.now;
                    self.on_chunk(chunk, &mut out)
                } else {
                    Ok(())
                }
            }
            Input::VmStarted => {
                self.on_started(&mut out);
                Ok(())
            }
            Input::StartFailed { reason } => {
                self.on_start_failed(reason, &mut out);
                Ok(())
            }
            Input::LinkDown => {
                self.fail("link down".into(), false, &mut out);
                Ok(())
            }
            Input::Cancel { reason } => {
                self.fail(format!("cancelled: {reason}"), true, &mut out);
                Ok(())
            }
            Input::Tick { now } => {
                self.on_tick(now, &mut out);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.fail(e.to_string(), true, &mut out);
        }
        out
    }

    fn on_message(&mut self, msg: Message, out: &mut Vec<Output>) -> Result<(), ProtocolError> {
        match (self.state, msg) {
            (_, Message::Query { vm_id }) => {
                self.on_query(vm_id, out);
                Ok(())
            }
            (State::Failed | State::Running | State::Starting, _) => Ok(()),
            (_, Message::Abort { reason }) => {
                self.fail(format!("source aborted: {reason}"), false, out);
                Ok(())
            }
            (State::AwaitHello, hello @ Message::Hello { .. }) => self.on_hello(hello, out),
            (
                State::Receiving,
                Message::Offer {
                    round,
                    seq,
                    chunks,
                    zeros,
                },
            ) => self.on_offer(round, seq, chunks, zeros, out),
            (
                State::Receiving,
                Message::Chunk {
                    index,
                    id,
                    raw,
                    bytes,
                },
            ) => {
                let chunk = self.geo().and_then(|geo| {
                    verify_chunk(&mut ChunkDecoder::new(), geo, index, id, raw, bytes)
                });
                self.on_chunk(chunk, out)
            }
            (State::Receiving, Message::RoundDone { round, .. }) => self.on_round_done(round, out),
            (State::Receiving, Message::Switchover { state }) => self.on_switchover(state, out),
            (state, msg) => Err(ProtocolError::Unexpected {
                kind: msg.kind(),
                phase: state_name(state),
            }),
        }
    }

    fn on_hello(&mut self, hello: Message, out: &mut Vec<Output>) -> Result<(), ProtocolError> {
        let Message::Hello {
            version,
            vm_id,
            regions,
            vcpus,
            chunk_size,
            mode,
        } = hello
        else {
            return Err(ProtocolError::Unexpected {
                kind: hello.kind(),
                phase: "AwaitHello",
            });
        };
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::Version {
                got: version,
                want: PROTOCOL_VERSION,
            });
        }
        if let Some(want) = self.cfg.expect_vm_id.filter(|w| *w != vm_id) {
            return Err(ProtocolError::VmId { got: vm_id, want });
        }
        let size = ChunkSize::new(u64::from(chunk_size))
            .map_err(|_| ProtocolError::ChunkSize { got: chunk_size })?;
        if vcpus == 0 || vcpus > self.cfg.max_vcpus {
            return Err(ProtocolError::Vcpus {
                got: vcpus,
                limit: self.cfg.max_vcpus,
            });
        }
        let geo = Geometry::new(&regions, size, self.cfg.max_mem_bytes)?;
        info!(chunks = geo.chunk_count(), ?mode, "migration accepted");
        out.push(Output::PrepareMemory {
            vm_id,
            regions,
            vcpus,
            chunk_size: size,
            mode,
        });
        out.push(Output::Send(Message::Ready));
        self.geo = Some(geo);
        self.prepared = true;
        self.state = State::Receiving;
        Ok(())
    }

    fn geo(&self) -> Result<&Geometry, ProtocolError> {
        self.geo.as_ref().ok_or(ProtocolError::Unexpected {
            kind: "chunk data",
            phase: "AwaitHello",
        })
    }

    fn check_round(&self, what: &'static str, round: u32) -> Result<(), ProtocolError> {
        if round == self.round {
            Ok(())
        } else {
            Err(ProtocolError::Round {
                what,
                got: round,
                want: self.round,
            })
        }
    }

    fn on_offer(
        &mut self,
        round: u32,
        seq: u32,
        chunks: Vec<OfferEntry>,
        zeros: Vec<ZeroRun>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        self.check_round("offer", round)?;
        if !self.seen_seqs.insert(seq) {
            return Err(ProtocolError::Seq { round, seq });
        }
        let geo = self.geo()?;
        let covered = zeros
            .iter()
            .fold(chunks.len() as u64, |n, z| n.saturating_add(z.count));
        if covered > MAX_OFFER_CHUNKS as u64 {
            return Err(ProtocolError::OfferTooLarge {
                round,
                seq,
                got: covered,
                limit: MAX_OFFER_CHUNKS as u64,
            });
        }
        for e in &chunks {
            geo.check_index("offer", e.index)?;
        }
        for z in &zeros {
            geo.check_index("offer zero run", z.start)?;
            geo.check_index("offer zero run end", z.start + z.count.saturating_sub(1))?;
        }
        for z in zeros {
            for index in z.start..z.start + z.count {
                self.current.remove(&index);
                self.owed.remove(&index);
            }
            out.push(Output::ZeroChunks {
                start: z.start,
                count: z.count,
            });
        }
        let ids = chunks.iter().map(|e| ChunkId::from_bytes(e.id)).collect();
        out.push(Output::CheckHave { round, seq, ids });
        self.checks.insert(seq, chunks);
        Ok(())
    }

    fn on_have(
        &mut self,
        round: u32,
        seq: u32,
        held: Bitmap,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        if self.state != State::Receiving {
            return Ok(());
        }
        self.check_round("have answer", round)?;
        let Some(chunks) = self.checks.remove(&seq) else {
            return Err(ProtocolError::Seq { round, seq });
        };
        if held.len() != chunks.len() {
            return Err(ProtocolError::HaveShape {
                round,
                seq,
                got: held.len(),
                want: chunks.len(),
            });
        }
        let mut want = Bitmap::new(chunks.len());
        let mut first_of: HashMap<ChunkId, u64> = HashMap::new();
        for (i, e) in chunks.iter().enumerate() {
            let id = ChunkId::from_bytes(e.id);
            if self.current.get(&e.index) == Some(&id) {
                continue;
            }
            if held.get(i) {
                out.push(Output::CopyFromStore { index: e.index, id });
                self.current.insert(e.index, id);
                self.owed.remove(&e.index);
            } else if let Some(first) = first_of.get(&id).and_then(|f| self.wanted.get_mut(f)) {
                first.dups.push(e.index);
            } else {
                want.set(i);
                first_of.insert(id, e.index);
                self.wanted.insert(
                    e.index,
                    Wanted {
                        id,
                        dups: Vec::new(),
                    },
                );
            }
        }
        debug!(
            round,
            seq,
            offered = chunks.len(),
            wanted = want.count_ones(),
            "want"
        );
        out.push(Output::Send(Message::Want {
            round,
            seq,
            len: chunks.len() as u32,
            words: want.words().to_vec(),
        }));
        Ok(())
    }

    fn on_chunk(
        &mut self,
        chunk: Result<VerifiedChunk, ProtocolError>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        let VerifiedChunk { index, id, plain } = chunk?;
        let Some(wanted) = self.wanted.remove(&index) else {
            return Err(ProtocolError::Unwanted {
                index,
                round: self.round,
            });
        };
        let mut indices = vec![index];
        if wanted.id == id {
            indices.extend(wanted.dups);
        } else {
            // The guest wrote the chunk after the offer: these duplicates still lack the
            // offered bytes; the source sends them again next round.
            self.missing.extend(wanted.dups);
        }
        for &i in &indices {
            self.current.insert(i, id);
            self.owed.remove(&i);
        }
        out.push(Output::WriteChunk {
            indices,
            bytes: plain,
        });
        Ok(())
    }

    fn on_round_done(&mut self, round: u32, out: &mut Vec<Output>) -> Result<(), ProtocolError> {
        self.check_round("round done", round)?;
        self.check_round_complete()?;
        let mut missing = std::mem::take(&mut self.missing);
        missing.sort_unstable();
        missing.dedup();
        for &i in &missing {
            self.current.remove(&i);
        }
        self.owed.extend(missing.iter().copied());
        out.push(Output::Send(Message::RoundAck { round, missing }));
        self.round = round.saturating_add(1);
        self.seen_seqs.clear();
        Ok(())
    }

    fn check_round_complete(&self) -> Result<(), ProtocolError> {
        if self.wanted.is_empty() && self.checks.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::RoundIncomplete {
                round: self.round,
                wanted: self.wanted.len(),
                unchecked: self.checks.len(),
            })
        }
    }

    fn on_switchover(
        &mut self,
        state: Vec<u8>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        self.check_round_complete()?;
        if !self.missing.is_empty() || !self.seen_seqs.is_empty() {
            return Err(ProtocolError::RoundIncomplete {
                round: self.round,
                wanted: self.missing.len(),
                unchecked: self.seen_seqs.len(),
            });
        }
        if let Some(&first) = self.owed.first() {
            return Err(ProtocolError::StillOwed {
                count: self.owed.len(),
                first,
            });
        }
        info!(
            round = self.round,
            state_bytes = state.len(),
            "switchover: starting the VM"
        );
        self.state = State::Starting;
        out.push(Output::StartVm { state });
        Ok(())
    }

    fn on_started(&mut self, out: &mut Vec<Output>) {
        if self.state != State::Starting {
            return;
        }
        self.state = State::Running;
        out.push(Output::Send(Message::Confirm));
        if std::mem::take(&mut self.query_pending) {
            out.push(Output::Send(Message::Status { started: true }));
        }
        out.push(Output::Done);
    }

    fn on_start_failed(&mut self, reason: String, out: &mut Vec<Output>) {
        if self.state != State::Starting {
            return;
        }
        // Not started: fall back to the pre-start rules, which discard and tell the source.
        self.state = State::Receiving;
        self.fail(format!("VM did not start: {reason}"), true, out);
        if std::mem::take(&mut self.query_pending) {
            out.push(Output::Send(Message::Status { started: false }));
        }
    }

    fn on_query(&mut self, vm_id: [u8; 16], out: &mut Vec<Output>) {
        match self.state {
            State::Running => out.push(Output::Send(Message::Status { started: true })),
            State::Starting => self.query_pending = true,
            _ => {
                // From now on this side never starts: the source will resume.
                self.fail(
                    format!("source {vm_id:02x?} asked after losing the link"),
                    false,
                    out,
                );
                out.push(Output::Send(Message::Status { started: false }));
            }
        }
    }

    fn on_tick(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.now = self.now.max(now);
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if self.now >= deadline {
            let silent = self.now.saturating_sub(self.last_heard);
            let reason = format!(
                "no message from the source for {} ms (timeout {} ms)",
                silent.as_millis(),
                self.cfg.timeout.as_millis()
            );
            self.fail(reason, true, out);
        }
    }

    /// Gives up before the VM started: discard, tell the source (when `tell`). No-op once
    /// the VM is starting or running, or when already failed.
    fn fail(&mut self, reason: String, tell: bool, out: &mut Vec<Output>) {
        if matches!(self.state, State::Starting | State::Running | State::Failed) {
            return;
        }
        warn!(%reason, "migration failed; discarding what was received");
        if tell {
            out.push(Output::Send(Message::Abort {
                reason: reason.clone(),
            }));
        }
        if self.prepared {
            out.push(Output::DiscardVm);
        }
        self.state = State::Failed;
        self.wanted.clear();
        self.checks.clear();
        self.current.clear();
        out.push(Output::Fail { reason });
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::AwaitHello => "AwaitHello",
        State::Receiving => "Receiving",
        State::Starting => "Starting",
        State::Running => "Running",
        State::Failed => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::chunks::{encode_chunk, Level};

    fn hello() -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            vm_id: [2; 16],
            regions: vec![MemRegion {
                guest_addr: 0,
                len: 4 * 4096,
            }],
            vcpus: 1,
            chunk_size: 4096,
            mode: Mode::Warm,
        }
    }

    fn ready() -> Destination {
        let mut d = Destination::new(DestinationConfig::default(), Duration::ZERO);
        let out = d.handle(Input::Received(hello()));
        assert!(out.contains(&Output::Send(Message::Ready)), "{out:?}");
        d
    }

    #[test]
    fn next_deadline_is_exactly_when_the_silence_timeout_fires() {
        let timeout = DestinationConfig::default().timeout;
        let mut d = Destination::new(DestinationConfig::default(), Duration::ZERO);
        assert_eq!(d.next_deadline(), None, "no limit runs before the hello");
        let heard = Duration::from_millis(777);
        assert!(d.handle(Input::Tick { now: heard }).is_empty());
        d.handle(Input::Received(hello()));
        let deadline = heard + timeout;
        assert_eq!(d.next_deadline(), Some(deadline));
        let before = deadline - Duration::from_nanos(1);
        assert!(d.handle(Input::Tick { now: before }).is_empty());
        assert_eq!(d.next_deadline(), Some(deadline), "a tick is not a message");
        let out = d.handle(Input::Tick { now: deadline });
        assert!(
            fail_reason(&out).is_some_and(|r| r.starts_with("no message from the source")),
            "{out:?}"
        );
        assert_eq!(d.next_deadline(), None, "nothing is due once it failed");
    }

    fn fail_reason(out: &[Output]) -> Option<&str> {
        out.iter().find_map(|o| match o {
            Output::Fail { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    fn entry(index: u64, bytes: &[u8]) -> OfferEntry {
        OfferEntry {
            index,
            id: *ChunkId::of(bytes).as_bytes(),
        }
    }

    fn chunk(index: u64, bytes: &[u8]) -> Message {
        let enc = encode_chunk(bytes, Level::new(1).unwrap()).unwrap();
        Message::Chunk {
            index,
            id: *ChunkId::of(bytes).as_bytes(),
            raw: enc.raw,
            bytes: enc.bytes,
        }
    }

    /// Offers `entries` in round 0 with nothing held; returns the want words.
    fn offer(d: &mut Destination, entries: Vec<OfferEntry>) -> Vec<u64> {
        let n = entries.len();
        d.handle(Input::Received(Message::Offer {
            round: 0,
            seq: 0,
            chunks: entries,
            zeros: vec![],
        }));
        let out = d.handle(Input::Have {
            round: 0,
            seq: 0,
            held: Bitmap::new(n),
        });
        out.iter()
            .find_map(|o| match o {
                Output::Send(Message::Want { words, .. }) => Some(words.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn wrong_version_is_refused_and_nothing_is_prepared() {
        let mut d = Destination::new(DestinationConfig::default(), Duration::ZERO);
        let Message::Hello {
            vm_id,
            regions,
            chunk_size,
            mode,
            ..
        } = hello()
        else {
            unreachable!()
        };
        let out = d.handle(Input::Received(Message::Hello {
            version: 99,
            vm_id,
            vcpus: 1,
            regions,
            chunk_size,
            mode,
        }));
        assert!(fail_reason(&out).unwrap().contains("version 99"));
        assert!(!out.contains(&Output::DiscardVm));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Send(Message::Abort { .. }))));
    }

    #[test]
    fn duplicates_are_wanted_once_and_filled_from_the_first() {
        let mut d = ready();
        let a = vec![7u8; 4096];
        assert_eq!(offer(&mut d, vec![entry(1, &a), entry(3, &a)]), vec![0b01]);
        let out = d.handle(Input::Received(chunk(1, &a)));
        assert_eq!(
            out,
            vec![Output::WriteChunk {
                indices: vec![1, 3],
                bytes: a
            }]
        );
    }

    #[test]
    fn a_first_copy_changed_before_sending_leaves_its_duplicates_missing() {
        let mut d = ready();
        let (a, b) = (vec![7u8; 4096], vec![8u8; 4096]);
        offer(&mut d, vec![entry(1, &a), entry(3, &a)]);
        d.handle(Input::Received(chunk(1, &b)));
        let out = d.handle(Input::Received(Message::RoundDone {
            round: 0,
            dirty_bytes: 0,
        }));
        assert_eq!(
            out,
            vec![Output::Send(Message::RoundAck {
                round: 0,
                missing: vec![3]
            })]
        );
    }

    #[test]
    fn corrupt_or_unwanted_chunks_abort_and_discard() {
        let mut d = ready();
        let a = vec![7u8; 4096];
        offer(&mut d, vec![entry(1, &a)]);
        let Message::Chunk {
            index,
            id,
            raw,
            mut bytes,
        } = chunk(1, &a)
        else {
            unreachable!()
        };
        bytes[0] ^= 1;
        let out = d.handle(Input::Received(Message::Chunk {
            index,
            id: [0; 32],
            raw,
            bytes,
        }));
        assert!(
            fail_reason(&out).unwrap().contains("chunk 1 is corrupt"),
            "{out:?}"
        );
        assert!(out.contains(&Output::DiscardVm));
        let _ = id;

        let mut d = ready();
        let out = d.handle(Input::Received(chunk(2, &a)));
        assert!(fail_reason(&out).unwrap().contains("not wanted"), "{out:?}");
        assert!(out.contains(&Output::DiscardVm));
    }

    #[test]
    fn the_vm_starts_at_most_once_and_is_never_discarded_after() {
        let mut d = ready();
        let out = d.handle(Input::Received(Message::Switchover { state: vec![1] }));
        assert_eq!(out, vec![Output::StartVm { state: vec![1] }]);
        assert!(d
            .handle(Input::Received(Message::Switchover { state: vec![1] }))
            .is_empty());
        assert!(d.handle(Input::LinkDown).is_empty());
        assert!(d
            .handle(Input::Received(Message::Abort { reason: "x".into() }))
            .is_empty());
        let out = d.handle(Input::VmStarted);
        assert!(out.contains(&Output::Send(Message::Confirm)));
        assert!(d
            .handle(Input::Tick {
                now: Duration::from_millis(1 << 40)
            })
            .is_empty());
        let out = d.handle(Input::Received(Message::Query { vm_id: [2; 16] }));
        assert_eq!(out, vec![Output::Send(Message::Status { started: true })]);
    }

    #[test]
    fn switchover_with_chunks_outstanding_is_refused() {
        let mut d = ready();
        let a = vec![7u8; 4096];
        offer(&mut d, vec![entry(1, &a)]);
        let out = d.handle(Input::Received(Message::Switchover { state: vec![] }));
        assert!(!out.iter().any(|o| matches!(o, Output::StartVm { .. })));
        assert!(
            fail_reason(&out).unwrap().contains("wanted chunks"),
            "{out:?}"
        );
    }

    #[test]
    fn a_query_before_start_makes_it_never_start() {
        let mut d = ready();
        let out = d.handle(Input::Received(Message::Query { vm_id: [2; 16] }));
        assert!(out.contains(&Output::DiscardVm));
        assert!(out.contains(&Output::Send(Message::Status { started: false })));
        let out = d.handle(Input::Received(Message::Switchover { state: vec![] }));
        assert!(out.is_empty());
    }

    #[test]
    fn a_switchover_before_missing_chunks_came_again_is_refused() {
        let (a, b) = (vec![7u8; 4096], vec![8u8; 4096]);
        // Round 0 leaves chunk 3 missing (its first copy changed before it was sent).
        let setup = || {
            let mut d = ready();
            offer(&mut d, vec![entry(1, &a), entry(3, &a)]);
            d.handle(Input::Received(chunk(1, &b)));
            d.handle(Input::Received(Message::RoundDone {
                round: 0,
                dirty_bytes: 0,
            }));
            d
        };
        let mut d = setup();
        let out = d.handle(Input::Received(Message::Switchover { state: vec![] }));
        assert!(!out.iter().any(|o| matches!(o, Output::StartVm { .. })));
        assert!(
            fail_reason(&out)
                .unwrap()
                .contains("1 chunks reported missing"),
            "{out:?}"
        );
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Send(Message::Abort { .. }))));

        // Sent again in round 1, the switchover goes ahead.
        let mut d = setup();
        d.handle(Input::Received(Message::Offer {
            round: 1,
            seq: 0,
            chunks: vec![entry(3, &b)],
            zeros: vec![],
        }));
        d.handle(Input::Have {
            round: 1,
            seq: 0,
            held: Bitmap::new(1),
        });
        d.handle(Input::Received(chunk(3, &b)));
        d.handle(Input::Received(Message::RoundDone {
            round: 1,
            dirty_bytes: 0,
        }));
        let out = d.handle(Input::Received(Message::Switchover { state: vec![] }));
        assert_eq!(out, vec![Output::StartVm { state: vec![] }]);
    }
}
