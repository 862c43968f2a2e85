//! The source side of a migration as a sans-IO state machine.
//!
//! The source never sees memory bytes: it asks the driver for each round's chunk refs
//! ([`Output::CollectRound`]) and tells it which chunks to read, compress and send
//! ([`Output::SendChunk`]). It decides when to switch over, and it alone decides the fate of
//! the VM on its side: [`Output::DiscardVm`] only after [`Message::Confirm`] (or a
//! destination's [`Message::Status`] saying it started), [`Output::ResumeVm`] on any
//! rollback while the VM is paused.

use std::collections::HashMap;
use std::time::Duration;

use novacron_mesh::chunks::{Bitmap, ChunkId, ChunkRef, ChunkSize};
use tracing::{debug, info, warn};

use super::messages::{
    MemRegion, Message, Mode, OfferEntry, ZeroRun, MAX_OFFER_CHUNKS, PROTOCOL_VERSION,
};
use super::{whole_ms, Geometry, Phase, Progress, ProtocolError};

/// What to do when live pre-copy does not converge within the round or time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoConverge {
    /// Ask the driver to throttle the vCPUs harder each round (auto-converge).
    Throttle,
    /// Pause and finish as a warm migration.
    FallbackWarm,
}

/// First throttle step and increment, in percent of vCPU time taken away.
const THROTTLE_FIRST: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub vm_id: [u8; 16],
    pub regions: Vec<MemRegion>,
    pub vcpus: u32,
    pub chunk_size: ChunkSize,
    pub mode: Mode,
    /// Switch over once the estimated downtime is at most this (compared in whole
    /// milliseconds, the unit of the estimate).
    pub downtime_budget: Duration,
    /// Live rounds before [`SourceConfig::on_no_converge`] applies.
    pub max_rounds: u32,
    /// Pre-copy time before [`SourceConfig::on_no_converge`] applies.
    pub max_precopy: Duration,
    pub on_no_converge: NoConverge,
    /// Silence from the peer, while waiting for it, after which the migration fails.
    pub timeout: Duration,
}

impl SourceConfig {
    /// Defaults from the issue: 50 ms budget, 30 rounds, 30 s of pre-copy, fall back to warm.
    pub fn new(vm_id: [u8; 16], regions: Vec<MemRegion>, vcpus: u32, mode: Mode) -> Self {
        Self {
            vm_id,
            regions,
            vcpus,
            chunk_size: ChunkSize::K16,
            mode,
            downtime_budget: Duration::from_millis(50),
            max_rounds: 30,
            max_precopy: Duration::from_secs(30),
            on_no_converge: NoConverge::FallbackWarm,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Received(Message),
    /// The chunk refs of a round: all memory for a full round, else the chunks dirtied since
    /// the previous collect plus the `extra` indices asked for.
    RoundData {
        round: u32,
        refs: Vec<ChunkRef>,
    },
    /// Latest measurements from the driver, bytes per second.
    Measured {
        bandwidth_bps: u64,
        dirty_rate_bps: u64,
    },
    /// The archived vCPU/device state asked for by [`Output::CaptureState`].
    StateCaptured(Vec<u8>),
    /// The connection broke (reset, closed, unreadable frame). Every chunk the driver was
    /// asked to send may have arrived.
    LinkDown,
    /// The connection broke and the driver proved that a chunk the destination wanted never
    /// left: it stopped its senders (their streams shut, the threads joined) with a wanted
    /// chunk unwritten. The destination starts the VM only once every chunk it wanted
    /// arrived, so it cannot have started it, even after the state went out: the VM is
    /// resumed here (a warm or cold migration's state leaves while its chunks still flow).
    LinkDownWithChunksUnsent,
    /// A new connection to the destination exists (only used while in doubt).
    Reconnected,
    /// The local user cancels. Too late once the state was sent.
    Cancel {
        reason: String,
    },
    /// Time passed: `now` since the driver's epoch (the same epoch as [`Source::start`]).
    /// Due at [`Source::next_deadline`]; any other time is harmless.
    Tick {
        now: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send(Message),
    /// Pause (warm, live switchover) or stop (cold) the vCPUs.
    PauseVm,
    /// Rollback: run the VM again here.
    ResumeVm,
    /// Take this percentage of vCPU time away (0 = no throttle).
    Throttle {
        percent: u8,
    },
    /// Answer with [`Input::RoundData`]: all memory when `full`, else the dirty chunks since
    /// the last collect plus `extra`. For live mode the driver starts dirty logging before
    /// reading a full round.
    CollectRound {
        round: u32,
        full: bool,
        extra: Vec<u64>,
    },
    /// Read chunk `index`, hash and compress it, and send it as [`Message::Chunk`] with the
    /// id of the bytes read (which may differ from `id` if the guest wrote it meanwhile).
    SendChunk {
        index: u64,
        id: ChunkId,
    },
    /// Answer with [`Input::StateCaptured`]; the VM is paused.
    CaptureState,
    /// The destination runs the VM: destroy it here.
    DiscardVm,
    /// The link failed after the state was sent. Keep the VM paused, reconnect and feed
    /// [`Input::Reconnected`].
    InDoubt,
    Progress(Progress),
    /// The migration is over and rolled back.
    Fail {
        reason: String,
    },
}

/// One offer of the current round, until its want arrives.
struct SentOffer {
    chunks: Vec<(u64, ChunkId, u32)>,
}

enum State {
    Idle,
    Handshake,
    /// Waiting for the driver's round data.
    Collecting,
    /// Offers out; `offers` holds those not yet answered.
    Offering {
        offers: HashMap<u32, SentOffer>,
    },
    AwaitAck,
    AwaitCapture,
    AwaitConfirm,
    InDoubt,
    Resolving,
    Done,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Handshake => "Handshake",
            State::Collecting => "Collecting",
            State::Offering { .. } => "Offering",
            State::AwaitAck => "AwaitAck",
            State::AwaitCapture => "AwaitCapture",
            State::AwaitConfirm => "AwaitConfirm",
            State::InDoubt => "InDoubt",
            State::Resolving => "Resolving",
            State::Done => "Done",
            State::Failed => "Failed",
        }
    }

    /// Phases in which the source waits for the peer, so silence counts toward the timeout.
    fn waits_for_peer(&self) -> bool {
        matches!(
            self,
            State::Handshake
                | State::Offering { .. }
                | State::AwaitAck
                | State::AwaitConfirm
                | State::Resolving
        )
    }
}

pub struct Source {
    cfg: SourceConfig,
    geo: Geometry,
    state: State,
    now: Duration,
    last_heard: Duration,
    paused: bool,
    throttle: u8,
    round: u32,
    /// True once the VM is paused for good: the current round is a final one.
    final_round: bool,
    /// The final round's ack, not yet in: the state goes out right after the final round
    /// (memory can no longer change), and the ack only has to say nothing is missing.
    final_ack_due: bool,
    round_started: Duration,
    precopy_started: Duration,
    round_dirty_bytes: u64,
    round_left_bytes: u64,
    progress: Progress,
}

impl Source {
    /// Checks the configuration; [`Source::start`] begins.
    pub fn new(cfg: SourceConfig) -> Result<Self, ProtocolError> {
        let geo = Geometry::new(&cfg.regions, cfg.chunk_size, u64::MAX)?;
        Ok(Self {
            cfg,
            geo,
            state: State::Idle,
            now: Duration::ZERO,
            last_heard: Duration::ZERO,
            paused: false,
            throttle: 0,
            round: 0,
            final_round: false,
            final_ack_due: false,
            round_started: Duration::ZERO,
            precopy_started: Duration::ZERO,
            round_dirty_bytes: 0,
            round_left_bytes: 0,
            progress: Progress::default(),
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The last progress figures.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// True once the migration ended either way (done or rolled back).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// The earliest time at which an [`Input::Tick`] would change anything (the silence
    /// timeout while waiting for the peer), or `None` when no time limit runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.state
            .waits_for_peer()
            .then(|| self.last_heard.saturating_add(self.cfg.timeout))
    }

    /// Sends the hello (stopping the VM first in cold mode). `now` is the driver's time since
    /// its epoch; every later [`Input::Tick`] counts from the same epoch.
    pub fn start(&mut self, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        if !matches!(self.state, State::Idle) {
            return out;
        }
        self.now = now;
        self.last_heard = now;
        if self.cfg.mode == Mode::Cold {
            self.pause(&mut out);
        }
        out.push(Output::Send(Message::Hello {
            version: PROTOCOL_VERSION,
            vm_id: self.cfg.vm_id,
            regions: self.cfg.regions.clone(),
            vcpus: self.cfg.vcpus,
            chunk_size: self.cfg.chunk_size.bytes() as u32,
            mode: self.cfg.mode,
        }));
        self.state = State::Handshake;
        self.report(&mut out);
        out
    }

    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.state, State::Done | State::Failed | State::Idle) {
            return out;
        }
        let result = match input {
            Input::Received(msg) => {
                self.last_heard = self.now;
                self.on_message(msg, &mut out)
            }
            Input::RoundData { round, refs } => self.on_round_data(round, refs, &mut out),
            Input::Measured {
                bandwidth_bps,
                dirty_rate_bps,
            } => {
                self.progress.bandwidth_bps = bandwidth_bps;
                self.progress.dirty_rate_bps = dirty_rate_bps;
                Ok(())
            }
            Input::StateCaptured(state) => self.on_state(state, &mut out),
            Input::LinkDown => {
                self.link_lost("link down", &mut out);
                Ok(())
            }
            Input::LinkDownWithChunksUnsent => {
                if !matches!(self.state, State::Done | State::Failed) {
                    self.fail(
                        "link down before every chunk was sent".into(),
                        true,
                        &mut out,
                    );
                }
                Ok(())
            }
            Input::Reconnected => {
                self.on_reconnected(&mut out);
                Ok(())
            }
            Input::Cancel { reason } => {
                self.on_cancel(reason, &mut out);
                Ok(())
            }
            Input::Tick { now } => {
                self.on_tick(now, &mut out);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.on_protocol_error(e, &mut out);
        }
        out
    }

    fn on_message(&mut self, msg: Message, out: &mut Vec<Output>) -> Result<(), ProtocolError> {
        match (&mut self.state, msg) {
            (_, Message::Abort { reason }) => {
                // The destination only aborts before it starts the VM, so resuming is safe
                // even after the state was sent.
                self.fail(format!("destination aborted: {reason}"), false, out);
                Ok(())
            }
            (State::Handshake, Message::Ready) => {
                if self.cfg.mode == Mode::Warm {
                    self.pause(out);
                }
                self.precopy_started = self.now;
                self.final_round = self.paused;
                self.collect(0, true, Vec::new(), out);
                Ok(())
            }
            (
                State::Offering { .. },
                Message::Want {
                    round,
                    seq,
                    len,
                    words,
                },
            ) => self.on_want(round, seq, len, words, out),
            (State::AwaitAck, Message::RoundAck { round, missing }) => {
                self.on_ack(round, missing, out)
            }
            (State::AwaitConfirm, Message::RoundAck { round, missing }) if self.final_ack_due => {
                self.on_final_ack(round, missing)
            }
            (State::AwaitConfirm | State::InDoubt | State::Resolving, Message::Confirm) => {
                self.finish(out);
                Ok(())
            }
            (State::Resolving, Message::Status { started }) => {
                if started {
                    self.finish(out);
                } else {
                    self.fail("destination did not start the VM".into(), false, out);
                }
                Ok(())
            }
            (state, msg) => Err(ProtocolError::Unexpected {
                kind: msg.kind(),
                phase: state.name(),
            }),
        }
    }

    fn on_round_data(
        &mut self,
        round: u32,
        refs: Vec<ChunkRef>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        if !matches!(self.state, State::Collecting) {
            return Err(ProtocolError::Unexpected {
                kind: "RoundData",
                phase: self.state.name(),
            });
        }
        if round != self.round {
            return Err(ProtocolError::Round {
                what: "round data",
                got: round,
                want: self.round,
            });
        }
        for r in &refs {
            self.check_ref(r)?;
        }
        self.round_dirty_bytes = refs.iter().map(|r| u64::from(r.len)).sum();
        self.progress.bytes_total += self.round_dirty_bytes;
        let zero_bytes: u64 = refs
            .iter()
            .filter(|r| r.is_zero())
            .map(|r| u64::from(r.len))
            .sum();
        self.progress.bytes_skipped_zero += zero_bytes;
        self.round_left_bytes = self.round_dirty_bytes - zero_bytes;
        let offers = split_offers(&refs);
        let mut pending = HashMap::with_capacity(offers.len());
        for (seq, (chunks, zeros)) in offers.into_iter().enumerate() {
            let seq = seq as u32;
            let entries = chunks
                .iter()
                .map(|(index, id, _)| OfferEntry {
                    index: *index,
                    id: *id.as_bytes(),
                })
                .collect();
            out.push(Output::Send(Message::Offer {
                round,
                seq,
                chunks: entries,
                zeros,
            }));
            pending.insert(seq, SentOffer { chunks });
        }
        debug!(
            round,
            offers = pending.len(),
            bytes = self.round_dirty_bytes,
            "round offered"
        );
        self.last_heard = self.now;
        if pending.is_empty() {
            self.round_done(out);
        } else {
            self.state = State::Offering { offers: pending };
        }
        self.report(out);
        Ok(())
    }

    fn check_ref(&self, r: &ChunkRef) -> Result<(), ProtocolError> {
        self.geo.check_index("round data", r.index)?;
        let want = self.geo.chunk_len(r.index).unwrap_or(0);
        if r.len as usize != want {
            return Err(ProtocolError::RefLength {
                index: r.index,
                got: r.len,
                want,
            });
        }
        Ok(())
    }

    fn on_want(
        &mut self,
        round: u32,
        seq: u32,
        len: u32,
        words: Vec<u64>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        if round != self.round {
            return Err(ProtocolError::Round {
                what: "want",
                got: round,
                want: self.round,
            });
        }
        let State::Offering { offers } = &mut self.state else {
            return Err(ProtocolError::Seq { round, seq });
        };
        let Some(offer) = offers.remove(&seq) else {
            return Err(ProtocolError::Seq { round, seq });
        };
        let nwords = words.len();
        let bad_shape = || ProtocolError::WantShape {
            seq,
            got: len,
            words: nwords,
            want: offer.chunks.len(),
        };
        if len as usize != offer.chunks.len() {
            return Err(bad_shape());
        }
        let wanted = Bitmap::from_words(words, len as usize).ok_or_else(bad_shape)?;
        let all_answered = offers.is_empty();
        for (i, (index, id, clen)) in offer.chunks.iter().enumerate() {
            let bytes = u64::from(*clen);
            if wanted.get(i) {
                self.progress.bytes_sent += bytes;
                out.push(Output::SendChunk {
                    index: *index,
                    id: *id,
                });
            } else {
                self.progress.bytes_skipped_held += bytes;
            }
            self.round_left_bytes = self.round_left_bytes.saturating_sub(bytes);
        }
        if all_answered {
            self.round_done(out);
        }
        Ok(())
    }

    /// Ends the round. A final round's end goes out with the state instead: the VM is
    /// paused, so the round's chunks are exactly what memory holds, the state is captured
    /// while they are still on their way, and `RoundDone` and `Switchover` leave back to
    /// back. Waiting for the round's ack first would only add a round trip to the downtime;
    /// the destination starts the VM only once every chunk it wanted arrived.
    fn round_done(&mut self, out: &mut Vec<Output>) {
        if self.final_round {
            out.push(Output::CaptureState);
            self.state = State::AwaitCapture;
            self.report(out);
            return;
        }
        out.push(Output::Send(self.round_done_message()));
        self.state = State::AwaitAck;
    }

    fn round_done_message(&self) -> Message {
        Message::RoundDone {
            round: self.round,
            dirty_bytes: self.round_dirty_bytes,
        }
    }

    /// The final round's ack, after the state went out. Nothing can be
    /// missing from memory that could not change; a destination that says otherwise is
    /// broken, and refuses the switchover itself (it tracks what it is still owed).
    fn on_final_ack(&mut self, round: u32, missing: Vec<u64>) -> Result<(), ProtocolError> {
        if round != self.round {
            return Err(ProtocolError::Round {
                what: "final round ack",
                got: round,
                want: self.round,
            });
        }
        self.final_ack_due = false;
        match missing.first() {
            None => Ok(()),
            Some(&first) => Err(ProtocolError::FinalRoundMissing {
                round,
                count: missing.len(),
                first,
            }),
        }
    }

    fn on_ack(
        &mut self,
        round: u32,
        missing: Vec<u64>,
        out: &mut Vec<Output>,
    ) -> Result<(), ProtocolError> {
        if round != self.round {
            return Err(ProtocolError::Round {
                what: "round ack",
                got: round,
                want: self.round,
            });
        }
        for &index in &missing {
            self.geo.check_index("round ack", index)?;
        }
        let next = round.saturating_add(1);
        let est = self.estimate_downtime_ms();
        self.progress.est_downtime_ms = est;
        let converged = est.is_some_and(|ms| ms <= whole_ms(self.cfg.downtime_budget));
        if converged || self.give_up_precopy(out) {
            info!(round, est_downtime_ms = ?est, converged, "switching over");
            self.pause(out);
            self.final_round = true;
        }
        self.collect(next, false, missing, out);
        Ok(())
    }

    /// Dirty bytes expected in the next round (measured dirty rate over the last round's
    /// length, or the last round's size when no rate was measured) over the bandwidth.
    fn estimate_downtime_ms(&self) -> Option<u64> {
        let bw = self.progress.bandwidth_bps;
        if bw == 0 {
            return None;
        }
        let elapsed = whole_ms(self.now)
            .saturating_sub(whole_ms(self.round_started))
            .max(1);
        let mem = self.geo.chunk_count() * self.geo.chunk_size().bytes() as u64;
        let dirty = if self.progress.dirty_rate_bps > 0 {
            (u128::from(self.progress.dirty_rate_bps) * u128::from(elapsed) / 1000)
                .min(u128::from(mem)) as u64
        } else {
            self.round_dirty_bytes
        };
        Some((u128::from(dirty) * 1000 / u128::from(bw)) as u64)
    }

    /// Past the round or time limit: throttle harder (false: keep iterating) or give up on
    /// pre-copy (true: switch over now). A throttle already at its maximum for as many
    /// rounds again switches over too, over budget, rather than never finishing.
    fn give_up_precopy(&mut self, out: &mut Vec<Output>) -> bool {
        let rounds = self.round.saturating_add(1);
        let elapsed = self.now.saturating_sub(self.precopy_started);
        if rounds < self.cfg.max_rounds && elapsed < self.cfg.max_precopy {
            return false;
        }
        match self.cfg.on_no_converge {
            NoConverge::FallbackWarm => true,
            NoConverge::Throttle => {
                if self.throttle == THROTTLE_MAX && rounds >= self.cfg.max_rounds.saturating_mul(2)
                {
                    warn!(
                        rounds,
                        "auto-converge failed at full throttle; switching over"
                    );
                    return true;
                }
                self.throttle = if self.throttle == 0 {
                    THROTTLE_FIRST
                } else {
                    self.throttle
                        .saturating_add(THROTTLE_STEP)
                        .min(THROTTLE_MAX)
                };
                out.push(Output::Throttle {
                    percent: self.throttle,
                });
                false
            }
        }
    }

    fn collect(&mut self, round: u32, full: bool, extra: Vec<u64>, out: &mut Vec<Output>) {
        self.round = round;
        self.round_started = self.now;
        out.push(Output::CollectRound { round, full, extra });
        self.state = State::Collecting;
    }

    fn on_state(&mut self, state: Vec<u8>, out: &mut Vec<Output>) -> Result<(), ProtocolError> {
        if !matches!(self.state, State::AwaitCapture) {
            return Err(ProtocolError::Unexpected {
                kind: "StateCaptured",
                phase: self.state.name(),
            });
        }
        out.push(Output::Send(self.round_done_message()));
        self.final_ack_due = true;
        out.push(Output::Send(Message::Switchover { state }));
        self.last_heard = self.now;
        self.state = State::AwaitConfirm;
        self.report(out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Output>) {
        out.push(Output::DiscardVm);
        self.state = State::Done;
        info!(round = self.round, "migration done; VM discarded here");
        self.report(out);
    }

    fn on_reconnected(&mut self, out: &mut Vec<Output>) {
        if matches!(self.state, State::InDoubt) {
            out.push(Output::Send(Message::Query {
                vm_id: self.cfg.vm_id,
            }));
            self.last_heard = self.now;
            self.state = State::Resolving;
        }
    }

    fn on_cancel(&mut self, reason: String, out: &mut Vec<Output>) {
        if self.state_sent() {
            warn!(%reason, "cancel ignored: the state is already with the destination");
            return;
        }
        self.fail(format!("cancelled: {reason}"), true, out);
    }

    fn on_tick(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.now = self.now.max(now);
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if self.now >= deadline {
            let silent = self.now.saturating_sub(self.last_heard);
            let reason = format!(
                "no message from the destination for {} ms in phase {} (timeout {} ms)",
                silent.as_millis(),
                self.state.name(),
                self.cfg.timeout.as_millis()
            );
            self.link_lost(&reason, out);
        }
    }

    /// After the state went out, a lost link or a silent peer leaves the outcome unknown
    /// (unless a wanted chunk never left: [`Input::LinkDownWithChunksUnsent`]).
    fn state_sent(&self) -> bool {
        matches!(
            self.state,
            State::AwaitConfirm | State::InDoubt | State::Resolving
        )
    }

    fn link_lost(&mut self, reason: &str, out: &mut Vec<Output>) {
        if self.state_sent() {
            if !matches!(self.state, State::InDoubt) {
                warn!(
                    reason,
                    "link lost after switchover: in doubt, VM stays paused"
                );
                self.state = State::InDoubt;
                out.push(Output::InDoubt);
                self.report(out);
            }
            return;
        }
        self.fail(reason.to_string(), true, out);
    }

    fn on_protocol_error(&mut self, e: ProtocolError, out: &mut Vec<Output>) {
        if self.state_sent() {
            // The destination may have started; only its answer can settle it.
            warn!(error = %e, "protocol error after switchover: in doubt");
            self.link_lost(&e.to_string(), out);
            return;
        }
        self.fail(e.to_string(), true, out);
    }

    fn pause(&mut self, out: &mut Vec<Output>) {
        if !self.paused {
            out.push(Output::PauseVm);
            self.paused = true;
        }
    }

    /// Rolls back: tells the peer (when `tell`), lifts the throttle, resumes a paused VM.
    fn fail(&mut self, reason: String, tell: bool, out: &mut Vec<Output>) {
        warn!(%reason, paused = self.paused, "migration rolled back");
        if tell {
            out.push(Output::Send(Message::Abort {
                reason: reason.clone(),
            }));
        }
        if self.throttle != 0 {
            self.throttle = 0;
            out.push(Output::Throttle { percent: 0 });
        }
        if self.paused {
            self.paused = false;
            out.push(Output::ResumeVm);
        }
        self.state = State::Failed;
        self.report(out);
        out.push(Output::Fail { reason });
    }

    fn report(&mut self, out: &mut Vec<Output>) {
        self.progress.phase = match self.state {
            State::Idle | State::Handshake => Phase::Handshake,
            State::Done => Phase::Done,
            State::Failed => Phase::Failed,
            State::InDoubt | State::Resolving => Phase::InDoubt,
            State::AwaitConfirm => Phase::AwaitConfirm,
            _ if self.paused => Phase::Stopped,
            _ => Phase::Precopy,
        };
        self.progress.round = self.round;
        let bw = self.progress.bandwidth_bps;
        self.progress.est_remaining_ms =
            (bw > 0).then(|| (u128::from(self.round_left_bytes) * 1000 / u128::from(bw)) as u64);
        out.push(Output::Progress(self.progress.clone()));
    }
}

/// The non-zero chunks and zero runs of one offer.
type OfferParts = (Vec<(u64, ChunkId, u32)>, Vec<ZeroRun>);

/// Cuts a round's refs into offers of at most [`MAX_OFFER_CHUNKS`] chunks each, zero
/// chunks folded into runs of consecutive indices.
fn split_offers(refs: &[ChunkRef]) -> Vec<OfferParts> {
    refs.chunks(MAX_OFFER_CHUNKS)
        .map(|part| {
            let mut chunks = Vec::new();
            let mut zeros: Vec<ZeroRun> = Vec::new();
            for r in part {
                match r.id {
                    Some(id) => chunks.push((r.index, id, r.len)),
                    None => match zeros.last_mut() {
                        Some(run) if run.start + run.count == r.index => run.count += 1,
                        _ => zeros.push(ZeroRun {
                            start: r.index,
                            count: 1,
                        }),
                    },
                }
            }
            (chunks, zeros)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(index: u64, id: Option<u8>) -> ChunkRef {
        ChunkRef {
            index,
            id: id.map(|b| ChunkId::from_bytes([b; 32])),
            len: 4096,
        }
    }

    #[test]
    fn offers_fold_zero_runs_and_respect_the_size_limit() {
        let refs = vec![
            r(0, None),
            r(1, None),
            r(2, Some(1)),
            r(3, None),
            r(5, None),
        ];
        let offers = split_offers(&refs);
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].0.len(), 1);
        assert_eq!(
            offers[0].1,
            vec![
                ZeroRun { start: 0, count: 2 },
                ZeroRun { start: 3, count: 1 },
                ZeroRun { start: 5, count: 1 }
            ]
        );
        let many: Vec<_> = (0..MAX_OFFER_CHUNKS as u64 * 2 + 1)
            .map(|i| r(i, Some(1)))
            .collect();
        assert_eq!(split_offers(&many).len(), 3);
    }

    fn source(mode: Mode) -> Source {
        let regions = vec![MemRegion {
            guest_addr: 0,
            len: 8 * 4096,
        }];
        let mut cfg = SourceConfig::new([1; 16], regions, 1, mode);
        cfg.chunk_size = ChunkSize::K4;
        Source::new(cfg).unwrap()
    }

    /// A progress bar's figures: the total is what the rounds offered so far cover (all of
    /// memory, then each round's dirty bytes), and what is dealt with never passes it.
    #[test]
    fn progress_totals_grow_with_the_rounds_and_bound_what_is_done() {
        let mut s = source(Mode::Live);
        s.start(Duration::ZERO);
        s.handle(Input::Received(Message::Ready));
        let all: Vec<ChunkRef> = (0..8).map(|i| r(i, (i >= 2).then_some(i as u8))).collect();
        let mut outs = s.handle(Input::RoundData {
            round: 0,
            refs: all,
        });
        let memory = 8 * 4096;
        assert_eq!(s.progress().bytes_total, memory);
        assert_eq!(s.progress().bytes_done(), 2 * 4096, "the zero chunks");
        outs.extend(s.handle(Input::Received(Message::Want {
            round: 0,
            seq: 0,
            len: 6,
            words: vec![0b111111],
        })));
        assert_eq!(s.progress().bytes_done(), memory);
        // No bandwidth measured yet: another round, of two re-dirtied chunks.
        outs.extend(s.handle(Input::Received(Message::RoundAck {
            round: 0,
            missing: Vec::new(),
        })));
        outs.extend(s.handle(Input::RoundData {
            round: 1,
            refs: vec![r(3, Some(30)), r(4, Some(31))],
        }));
        assert_eq!(s.progress().round, 1);
        assert_eq!(s.progress().bytes_total, memory + 2 * 4096);
        assert_eq!(s.progress().bytes_done(), memory);
        outs.extend(s.handle(Input::Received(Message::Want {
            round: 1,
            seq: 0,
            len: 2,
            words: vec![0b01],
        })));
        let p = s.progress();
        assert_eq!(
            (p.bytes_done(), p.bytes_total),
            (memory + 2 * 4096, memory + 2 * 4096)
        );
        assert_eq!(p.bytes_skipped_held, 4096);
        for o in &outs {
            if let Output::Progress(p) = o {
                assert!(p.bytes_done() <= p.bytes_total, "{p:?}");
            }
        }
    }

    #[test]
    fn confirm_before_switchover_rolls_back_and_never_discards() {
        let mut s = source(Mode::Warm);
        s.start(Duration::ZERO);
        let out = s.handle(Input::Received(Message::Ready));
        assert!(out.contains(&Output::PauseVm));
        let out = s.handle(Input::Received(Message::Confirm));
        assert!(out.contains(&Output::ResumeVm), "{out:?}");
        assert!(!out.contains(&Output::DiscardVm));
        assert!(s.is_finished());
    }

    #[test]
    fn next_deadline_is_exactly_when_the_silence_timeout_fires() {
        let mut s = source(Mode::Live);
        assert_eq!(s.next_deadline(), None, "no limit runs before the start");
        let t0 = Duration::from_millis(1_234);
        s.start(t0);
        let deadline = t0 + SourceConfig::new([0; 16], Vec::new(), 1, Mode::Live).timeout;
        assert_eq!(s.next_deadline(), Some(deadline));
        let before = deadline - Duration::from_nanos(1);
        assert!(s.handle(Input::Tick { now: before }).is_empty());
        assert_eq!(s.next_deadline(), Some(deadline), "a tick is not a message");
        let out = s.handle(Input::Tick { now: deadline });
        assert!(
            out.iter().any(|o| matches!(o, Output::Fail { .. })),
            "{out:?}"
        );
        assert_eq!(s.next_deadline(), None, "nothing is due once it failed");
    }

    #[test]
    fn a_message_moves_the_deadline_and_collecting_has_none() {
        let mut s = source(Mode::Live);
        s.start(Duration::ZERO);
        let timeout = SourceConfig::new([0; 16], Vec::new(), 1, Mode::Live).timeout;
        let heard = Duration::from_secs(3);
        s.handle(Input::Tick { now: heard });
        let out = s.handle(Input::Received(Message::Ready));
        assert!(out.iter().any(|o| matches!(o, Output::CollectRound { .. })));
        assert_eq!(
            s.next_deadline(),
            None,
            "the driver, not the peer, is awaited"
        );
        let refs = (0..4).map(|i| r(i, Some(i as u8 + 1))).collect();
        s.handle(Input::RoundData { round: 0, refs });
        assert_eq!(s.next_deadline(), Some(heard + timeout));
        let just_before = heard + timeout - Duration::from_nanos(1);
        assert!(!s
            .handle(Input::Tick { now: just_before })
            .iter()
            .any(|o| matches!(o, Output::Fail { .. })));
        assert!(s
            .handle(Input::Tick {
                now: heard + timeout
            })
            .iter()
            .any(|o| matches!(o, Output::Fail { .. })));
    }

    #[test]
    fn timeout_in_handshake_fails_without_resume_when_never_paused() {
        let mut s = source(Mode::Live);
        s.start(Duration::ZERO);
        assert!(s
            .handle(Input::Tick {
                now: Duration::from_secs(5)
            })
            .is_empty());
        let out = s.handle(Input::Tick {
            now: Duration::from_secs(20),
        });
        assert!(!out.contains(&Output::ResumeVm));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Fail { reason } if reason.contains("no message"))));
    }

    #[test]
    fn round_data_with_a_wrong_length_is_refused() {
        let mut s = source(Mode::Cold);
        s.start(Duration::ZERO);
        s.handle(Input::Received(Message::Ready));
        let mut bad = r(0, Some(1));
        bad.len = 100;
        let out = s.handle(Input::RoundData {
            round: 0,
            refs: vec![bad],
        });
        assert!(out.contains(&Output::ResumeVm));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Fail { reason } if reason.contains("length of 100"))));
    }

    #[test]
    fn want_of_the_wrong_shape_is_refused() {
        let mut s = source_offering_two_chunks(Mode::Cold);
        let out = s.handle(Input::Received(Message::Want {
            round: 0,
            seq: 0,
            len: 2,
            words: vec![0b111],
        }));
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Fail { reason } if reason.contains("want for offer 0"))
            ),
            "{out:?}"
        );
    }

    /// A source of `mode` whose round 0 offers two chunks.
    fn source_offering_two_chunks(mode: Mode) -> Source {
        let mut s = source(mode);
        s.start(Duration::ZERO);
        s.handle(Input::Received(Message::Ready));
        s.handle(Input::RoundData {
            round: 0,
            refs: vec![r(0, Some(1)), r(1, Some(2))],
        });
        s
    }

    /// A warm source through its one (final) round: offers answered, chunks asked for.
    fn warm_source_after_final_round() -> (Source, Vec<Output>) {
        let mut s = source_offering_two_chunks(Mode::Warm);
        let out = s.handle(Input::Received(Message::Want {
            round: 0,
            seq: 0,
            len: 2,
            words: vec![0b11],
        }));
        (s, out)
    }

    #[test]
    fn a_link_lost_with_chunks_unsent_after_the_state_rolls_back_and_resumes() {
        // All chunks written: the destination may have started; in doubt, still paused.
        let (mut s, _) = warm_source_after_final_round();
        s.handle(Input::StateCaptured(vec![9]));
        assert!(s.state_sent());
        let out = s.handle(Input::LinkDown);
        assert!(out.contains(&Output::InDoubt), "{out:?}");
        assert!(!out.contains(&Output::ResumeVm));
        // A wanted chunk never left: the destination cannot have started; resumed here.
        let (mut s, _) = warm_source_after_final_round();
        s.handle(Input::StateCaptured(vec![9]));
        let out = s.handle(Input::LinkDownWithChunksUnsent);
        assert!(out.contains(&Output::ResumeVm), "{out:?}");
        assert!(!out.contains(&Output::InDoubt));
        assert!(!out.contains(&Output::DiscardVm));
        assert!(out.iter().any(
            |o| matches!(o, Output::Fail { reason } if reason.contains("before every chunk"))
        ));
        assert!(s.is_finished());
        // The driver answers the machine's in-doubt (whatever declared it: a broken link
        // or a silent peer) with its proof: in doubt, then resumed.
        let (mut s, _) = warm_source_after_final_round();
        s.handle(Input::StateCaptured(vec![9]));
        assert!(s
            .handle(Input::Tick {
                now: Duration::from_secs(60)
            })
            .contains(&Output::InDoubt));
        let out = s.handle(Input::LinkDownWithChunksUnsent);
        assert!(out.contains(&Output::ResumeVm), "{out:?}");
        // After the end, nothing more happens.
        assert!(s.handle(Input::LinkDownWithChunksUnsent).is_empty());
    }

    #[test]
    fn the_state_follows_the_final_round_without_waiting_for_its_ack() {
        let (mut s, out) = warm_source_after_final_round();
        assert!(out.contains(&Output::CaptureState), "{out:?}");
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Send(Message::RoundDone { .. }))),
            "the round's end waits for the state: {out:?}"
        );
        let out = s.handle(Input::StateCaptured(vec![9]));
        let sent: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                Message::RoundDone {
                    round: 0,
                    dirty_bytes: 2 * 4096
                },
                Message::Switchover { state: vec![9] }
            ]
        );
        // The ack arrives while the confirm is awaited: nothing to do.
        let out = s.handle(Input::Received(Message::RoundAck {
            round: 0,
            missing: vec![],
        }));
        assert!(out.is_empty(), "{out:?}");
        let out = s.handle(Input::Received(Message::Confirm));
        assert!(out.contains(&Output::DiscardVm));
    }

    #[test]
    fn an_ack_before_the_final_round_ended_rolls_back() {
        let (mut s, _) = warm_source_after_final_round();
        let out = s.handle(Input::Received(Message::RoundAck {
            round: 0,
            missing: vec![],
        }));
        assert!(out.contains(&Output::ResumeVm), "{out:?}");
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Fail { reason } if reason.contains("RoundAck"))));
        assert!(s.handle(Input::StateCaptured(vec![9])).is_empty());
    }

    #[test]
    fn a_final_ack_with_missing_chunks_after_the_state_left_is_in_doubt() {
        let (mut s, _) = warm_source_after_final_round();
        s.handle(Input::StateCaptured(vec![9]));
        let out = s.handle(Input::Received(Message::RoundAck {
            round: 0,
            missing: vec![1],
        }));
        assert!(out.contains(&Output::InDoubt), "{out:?}");
        assert!(!out.contains(&Output::ResumeVm));
        assert!(!out.contains(&Output::DiscardVm));
        // The destination refuses such a switchover and says so: the VM runs here again.
        let out = s.handle(Input::Received(Message::Abort {
            reason: "still owed".into(),
        }));
        assert!(out.contains(&Output::ResumeVm), "{out:?}");
    }
}
