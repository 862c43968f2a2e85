//! The fetch scheduler: which chunks of a set to ask which provider for, and what to do
//! when answers come back, fail, or never come.
//!
//! Sans-IO: the caller feeds it what happened (a chunk arrived verified or not, a chunk was
//! not found, a request ended, failed, was refused as busy) and the time (`now`, a
//! [`Duration`] since any fixed epoch), and [`FetchScheduler::poll`] says what to do next:
//! send a request of up to `batch_chunks` ids to a peer, or cancel one. No clock, no
//! sockets: tests drive it with simulated providers and virtual time.
//!
//! Policy:
//! - every usable provider gets batches, up to `max_in_flight_per_peer` each, the least
//!   loaded first, so a set is fetched from all providers in parallel;
//! - a chunk whose request failed or timed out goes back to the queue and is asked of
//!   another provider when there is one (the failing one otherwise); after
//!   `max_attempts_per_chunk` failed attempts it is given up;
//! - a provider that sends a chunk that does not verify, or one it was not asked for, is
//!   dropped at once (all its requests cancelled) and reported as bad;
//! - a provider whose requests fail `max_failures_per_peer` times in a row is dropped as
//!   gone; a provider that answers `NotFound` for a chunk is not asked for it again;
//! - a busy provider is left alone until its `retry_after` has passed (not a failure).
//!
//! The fetch ends [`Progress::Done`] with a [`SchedulerReport`], or [`Progress::Failed`] naming
//! the chunks no provider could give, once nothing is in flight and nothing can be sent.
//!
//! What this cannot do: it does not find providers (the caller may add some with
//! [`FetchScheduler::add_provider`]) and does not judge speed beyond the request timeout
//! (a slow but steady provider keeps its share of batches).

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::chunks::ChunkId;

use super::wire::MAX_IDS_PER_REQUEST;

/// Identifies one request the scheduler asked for.
pub type RequestId = u64;

/// How a fetch is spread and when it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchConfig {
    /// Chunk ids per request (1 to 64).
    pub batch_chunks: usize,
    /// Requests in flight to one provider at a time.
    pub max_in_flight_per_peer: usize,
    /// A request not finished after this long is cancelled and counted as failed.
    pub request_timeout: Duration,
    /// Failed requests in a row after which a provider is dropped as gone.
    pub max_failures_per_peer: u32,
    /// Failed attempts after which a chunk is given up.
    pub max_attempts_per_chunk: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            batch_chunks: 32,
            max_in_flight_per_peer: 4,
            request_timeout: Duration::from_secs(10),
            max_failures_per_peer: 3,
            max_attempts_per_chunk: 6,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for these chunks as request `request`.
    Send {
        request: RequestId,
        peer: P,
        chunks: Vec<ChunkId>,
    },
    /// Stop request `request` (timed out, or its provider was dropped); later news of it
    /// is ignored.
    Cancel { request: RequestId, peer: P },
}

/// What one provider gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub chunks: u64,
    /// Raw (uncompressed) bytes.
    pub bytes: u64,
    /// Bytes as sent (compressed chunks).
    pub wire_bytes: u64,
    pub requests: u64,
    pub failed_requests: u64,
    pub busy: u64,
}

/// Why a provider was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// It sent a chunk that did not verify, or one it was not asked for.
    Bad,
    /// Its requests kept failing.
    Gone,
}

/// How a fetch went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerReport<P: Eq + Hash> {
    /// Chunks fetched and their raw bytes.
    pub chunks: u64,
    pub bytes: u64,
    /// Bytes of chunk frames received (compressed).
    pub wire_bytes: u64,
    /// Per provider that was asked anything.
    pub per_peer: HashMap<P, PeerStats>,
    /// Chunks asked again after a failure, a timeout, a bad answer or a `NotFound`.
    pub retries: u64,
    /// Busy answers received.
    pub busy: u64,
    /// Providers dropped for sending bad chunks.
    pub bad_peers: Vec<P>,
    /// Providers dropped because their requests kept failing.
    pub gone_peers: Vec<P>,
}

/// Where the fetch is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress<P: Eq + Hash> {
    Running,
    Done(SchedulerReport<P>),
    /// These chunks could not be had from any provider.
    Failed {
        missing: Vec<ChunkId>,
        report: SchedulerReport<P>,
    },
}

/// What a verified or refused chunk means for the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The chunk decoded to the expected bytes (`wire_bytes` as received).
    Verified { wire_bytes: u64 },
    /// It did not decode or verify: the provider lies or its store is corrupt.
    Invalid,
}

/// What the scheduler did with news.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// It changed the fetch.
    Taken,
    /// It was about a request already cancelled or finished: ignored.
    Stale,
    /// The chunk was not part of that request: its provider is now dropped as bad.
    Unasked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    InFlight(RequestId),
    Done,
    Lost,
}

#[derive(Debug)]
struct ChunkState<P> {
    id: ChunkId,
    len: u32,
    status: Status,
    /// Providers that said they do not have it.
    not_at: Vec<P>,
    /// The provider of the last failed attempt (asked again only if no other can be).
    failed_at: Option<P>,
    failures: u32,
}

#[derive(Debug)]
struct PeerState {
    in_flight: usize,
    busy_until: Duration,
    failures_in_a_row: u32,
    dropped: Option<Dropped>,
    stats: PeerStats,
}

#[derive(Debug)]
struct InFlight<P> {
    peer: P,
    /// Chunk indices not answered yet.
    remaining: Vec<usize>,
    deadline: Duration,
}

/// The fetch of one chunk set's missing chunks.
#[derive(Debug)]
pub struct FetchScheduler<P> {
    cfg: FetchConfig,
    chunks: Vec<ChunkState<P>>,
    by_id: HashMap<ChunkId, usize>,
    queue: VecDeque<usize>,
    /// In the order they were added (the first is preferred on ties).
    peer_order: Vec<P>,
    peers: HashMap<P, PeerState>,
    requests: HashMap<RequestId, InFlight<P>>,
    next_request: RequestId,
    outbox: Vec<Action<P>>,
    done: usize,
    retries: u64,
    busy: u64,
}

impl<P: Clone + Eq + Hash + Debug> FetchScheduler<P> {
    /// A fetch of `wanted` chunks (id and raw length; duplicates are fetched once) from
    /// `providers`. Leave out chunks already held.
    pub fn new(
        wanted: impl IntoIterator<Item = (ChunkId, u32)>,
        providers: impl IntoIterator<Item = P>,
        cfg: FetchConfig,
    ) -> Self {
        let cfg = FetchConfig {
            batch_chunks: cfg.batch_chunks.clamp(1, MAX_IDS_PER_REQUEST),
            max_in_flight_per_peer: cfg.max_in_flight_per_peer.max(1),
            max_failures_per_peer: cfg.max_failures_per_peer.max(1),
            max_attempts_per_chunk: cfg.max_attempts_per_chunk.max(1),
            ..cfg
        };
        let mut s = FetchScheduler {
            cfg,
            chunks: Vec::new(),
            by_id: HashMap::new(),
            queue: VecDeque::new(),
            peer_order: Vec::new(),
            peers: HashMap::new(),
            requests: HashMap::new(),
            next_request: 0,
            outbox: Vec::new(),
            done: 0,
            retries: 0,
            busy: 0,
        };
        for (id, len) in wanted {
            if s.by_id.contains_key(&id) {
                continue;
            }
            let index = s.chunks.len();
            s.by_id.insert(id, index);
            s.chunks.push(ChunkState {
                id,
                len,
                status: Status::Pending,
                not_at: Vec::new(),
                failed_at: None,
                failures: 0,
            });
            s.queue.push_back(index);
        }
        for p in providers {
            s.add_provider(p);
        }
        s
    }

    /// Adds a provider (one already known is left as it is).
    pub fn add_provider(&mut self, peer: P) {
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peer_order.push(peer.clone());
        self.peers.insert(
            peer,
            PeerState {
                in_flight: 0,
                busy_until: Duration::ZERO,
                failures_in_a_row: 0,
                dropped: None,
                stats: PeerStats::default(),
            },
        );
    }

    /// The raw length of a wanted chunk (to check what arrives against).
    pub fn expected_len(&self, id: &ChunkId) -> Option<u32> {
        self.by_id.get(id).map(|&i| self.chunks[i].len)
    }

    /// Chunks wanted in all and fetched so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.chunks.len(), self.done)
    }

    fn request_of(&self, request: RequestId, id: &ChunkId) -> Result<(P, usize), Heard> {
        let r = self.requests.get(&request).ok_or(Heard::Stale)?;
        let index = self.by_id.get(id).copied().ok_or(Heard::Unasked)?;
        if !r.remaining.contains(&index) {
            return Err(Heard::Unasked);
        }
        Ok((r.peer.clone(), index))
    }

    /// Takes chunk `id` off what `request` still owes; a provider answering with a chunk it
    /// was not asked for is dropped as bad.
    fn answer_to(&mut self, request: RequestId, id: &ChunkId) -> Result<(P, usize), Heard> {
        let (peer, index) = match self.request_of(request, id) {
            Ok(v) => v,
            Err(Heard::Unasked) => {
                self.drop_peer(request, Dropped::Bad);
                return Err(Heard::Unasked);
            }
            Err(h) => return Err(h),
        };
        if let Some(r) = self.requests.get_mut(&request) {
            r.remaining.retain(|&i| i != index);
        }
        Ok((peer, index))
    }

    /// A chunk of request `request` arrived, verified or not.
    pub fn chunk_arrived(&mut self, request: RequestId, id: &ChunkId, arrival: Arrival) -> Heard {
        let (peer, index) = match self.answer_to(request, id) {
            Ok(v) => v,
            Err(h) => return h,
        };
        match arrival {
            Arrival::Verified { wire_bytes } => {
                let len = u64::from(self.chunks[index].len);
                self.chunks[index].status = Status::Done;
                self.done += 1;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats.chunks += 1;
                    p.stats.bytes += len;
                    p.stats.wire_bytes += wire_bytes;
                }
            }
            Arrival::Invalid => {
                self.requeue(index, Some(&peer), true);
                self.drop_peer(request, Dropped::Bad);
            }
        }
        Heard::Taken
    }

    /// The provider of `request` does not have chunk `id`.
    pub fn not_found(&mut self, request: RequestId, id: &ChunkId) -> Heard {
        let (peer, index) = match self.answer_to(request, id) {
            Ok(v) => v,
            Err(h) => return h,
        };
        self.chunks[index].not_at.push(peer);
        self.requeue(index, None, false);
        Heard::Taken
    }

    /// Request `request` was answered to its end. Chunks it left unanswered are asked
    /// elsewhere, and the request counts as failed.
    pub fn request_done(&mut self, request: RequestId) -> Heard {
        let Some(r) = self.requests.remove(&request) else {
            return Heard::Stale;
        };
        let complete = r.remaining.is_empty();
        for &index in &r.remaining {
            self.requeue(index, Some(&r.peer), true);
        }
        self.finish_request(&r.peer, complete);
        Heard::Taken
    }

    /// Request `request` failed (stream error, refused, closed early): its unanswered
    /// chunks go back to the queue.
    pub fn request_failed(&mut self, request: RequestId) -> Heard {
        let Some(r) = self.requests.remove(&request) else {
            return Heard::Stale;
        };
        for &index in &r.remaining {
            self.requeue(index, Some(&r.peer), true);
        }
        self.finish_request(&r.peer, false);
        Heard::Taken
    }

    /// The provider of `request` is busy: nothing of it was served; its chunks go back to
    /// the queue (not a failure) and the provider is left alone for `retry_after`.
    pub fn busy(&mut self, request: RequestId, retry_after: Duration, now: Duration) -> Heard {
        let Some(r) = self.requests.remove(&request) else {
            return Heard::Stale;
        };
        for &index in r.remaining.iter().rev() {
            self.chunks[index].status = Status::Pending;
            self.queue.push_front(index);
        }
        self.busy += 1;
        if let Some(p) = self.peers.get_mut(&r.peer) {
            p.in_flight = p.in_flight.saturating_sub(1);
            p.busy_until = p.busy_until.max(now + retry_after);
            p.stats.busy += 1;
        }
        Heard::Taken
    }

    fn finish_request(&mut self, peer: &P, ok: bool) {
        let max = self.cfg.max_failures_per_peer;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.in_flight = p.in_flight.saturating_sub(1);
        if ok {
            p.failures_in_a_row = 0;
            return;
        }
        p.failures_in_a_row += 1;
        p.stats.failed_requests += 1;
        if p.failures_in_a_row >= max && p.dropped.is_none() {
            p.dropped = Some(Dropped::Gone);
            self.cancel_all_of(peer);
        }
    }

    /// Puts a chunk back in the queue after an attempt at `peer` (a failure when `failed`).
    fn requeue(&mut self, index: usize, peer: Option<&P>, failed: bool) {
        let c = &mut self.chunks[index];
        if matches!(c.status, Status::Done | Status::Lost) {
            return;
        }
        self.retries += 1;
        if failed {
            c.failures += 1;
            c.failed_at = peer.cloned();
        }
        if c.failures >= self.cfg.max_attempts_per_chunk {
            c.status = Status::Lost;
            return;
        }
        c.status = Status::Pending;
        self.queue.push_front(index);
    }

    /// Drops the provider of `request` and cancels all its requests.
    fn drop_peer(&mut self, request: RequestId, why: Dropped) {
        let Some(peer) = self.requests.get(&request).map(|r| r.peer.clone()) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.dropped.is_none() {
                p.dropped = Some(why);
            }
        }
        self.cancel_all_of(&peer);
    }

    fn cancel_all_of(&mut self, peer: &P) {
        let ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.peer == *peer)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(r) = self.requests.remove(&id) {
                for &index in &r.remaining {
                    self.requeue(index, Some(peer), true);
                }
                self.outbox.push(Action::Cancel {
                    request: id,
                    peer: peer.clone(),
                });
            }
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.in_flight = 0;
        }
    }

    /// Expires late requests and hands out batches; returns what to do now.
    pub fn poll(&mut self, now: Duration) -> Vec<Action<P>> {
        let late: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(peer) = self.requests.get(&id).map(|r| r.peer.clone()) {
                self.request_failed(id);
                self.outbox.push(Action::Cancel { request: id, peer });
            }
        }
        self.assign(now);
        std::mem::take(&mut self.outbox)
    }

    fn usable(&self, now: Duration) -> Vec<P> {
        let mut ready: Vec<(usize, usize, P)> = self
            .peer_order
            .iter()
            .enumerate()
            .filter_map(|(order, peer)| {
                let p = self.peers.get(peer)?;
                (p.dropped.is_none()
                    && p.busy_until <= now
                    && p.in_flight < self.cfg.max_in_flight_per_peer)
                    .then(|| (p.in_flight, order, peer.clone()))
            })
            .collect();
        ready.sort_by_key(|&(in_flight, order, _)| (in_flight, order));
        ready.into_iter().map(|(_, _, p)| p).collect()
    }

    fn alive(&self) -> Vec<P> {
        self.peer_order
            .iter()
            .filter(|p| self.peers.get(*p).is_some_and(|s| s.dropped.is_none()))
            .cloned()
            .collect()
    }

    /// Whether `peer` may be asked for chunk `index`.
    fn may_ask(&self, index: usize, peer: &P, alive: &[P]) -> bool {
        let c = &self.chunks[index];
        if c.not_at.contains(peer) {
            return false;
        }
        if c.failed_at.as_ref() != Some(peer) {
            return true;
        }
        // It failed here last time: only if no other live provider may have it.
        !alive.iter().any(|q| q != peer && !c.not_at.contains(q))
    }

    fn assign(&mut self, now: Duration) {
        let alive = self.alive();
        loop {
            let usable = self.usable(now);
            let mut sent = false;
            for peer in usable {
                let batch = self.take_batch(&peer, &alive);
                if batch.is_empty() {
                    continue;
                }
                let request = self.next_request;
                self.next_request += 1;
                for &i in &batch {
                    self.chunks[i].status = Status::InFlight(request);
                }
                let chunks = batch.iter().map(|&i| self.chunks[i].id).collect();
                self.requests.insert(
                    request,
                    InFlight {
                        peer: peer.clone(),
                        remaining: batch,
                        deadline: now + self.cfg.request_timeout,
                    },
                );
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.in_flight += 1;
                    p.stats.requests += 1;
                }
                self.outbox.push(Action::Send {
                    request,
                    peer,
                    chunks,
                });
                sent = true;
            }
            if !sent {
                break;
            }
        }
    }

    /// Takes up to a batch of queued chunks `peer` may be asked for, keeping the others
    /// queued in order.
    fn take_batch(&mut self, peer: &P, alive: &[P]) -> Vec<usize> {
        let mut batch = Vec::new();
        let mut skipped = Vec::new();
        while batch.len() < self.cfg.batch_chunks {
            let Some(index) = self.queue.pop_front() else {
                break;
            };
            if self.chunks[index].status != Status::Pending {
                continue;
            }
            if self.may_ask(index, peer, alive) {
                batch.push(index);
            } else {
                skipped.push(index);
            }
        }
        for index in skipped.into_iter().rev() {
            self.queue.push_front(index);
        }
        batch
    }

    /// When the caller should poll again if nothing else happens: the next request
    /// deadline or the end of a provider's busy time.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let deadlines = self.requests.values().map(|r| r.deadline);
        let busy = self
            .peers
            .values()
            .filter(|p| p.dropped.is_none() && p.busy_until > now)
            .map(|p| p.busy_until);
        deadlines.chain(busy).min()
    }

    /// Where the fetch stands (after [`poll`](Self::poll)).
    pub fn progress(&mut self, now: Duration) -> Progress<P> {
        if self.done == self.chunks.len() {
            return Progress::Done(self.report());
        }
        if !self.requests.is_empty() {
            return Progress::Running;
        }
        // Nothing in flight: can anything still be asked, now or once a busy one is free?
        let alive = self.alive();
        let waiting = alive.iter().any(|p| {
            self.peers.get(p).is_some_and(|s| s.busy_until > now)
                && self.queue.iter().any(|&i| {
                    self.chunks[i].status == Status::Pending && self.may_ask(i, p, &alive)
                })
        });
        if waiting {
            return Progress::Running;
        }
        let missing = self
            .chunks
            .iter()
            .filter(|c| c.status != Status::Done)
            .map(|c| c.id)
            .collect();
        Progress::Failed {
            missing,
            report: self.report(),
        }
    }

    /// The report so far.
    pub fn report(&self) -> SchedulerReport<P> {
        let mut r = SchedulerReport {
            chunks: 0,
            bytes: 0,
            wire_bytes: 0,
            per_peer: HashMap::new(),
            retries: self.retries,
            busy: self.busy,
            bad_peers: Vec::new(),
            gone_peers: Vec::new(),
        };
        for peer in &self.peer_order {
            let Some(p) = self.peers.get(peer) else {
                continue;
            };
            r.chunks += p.stats.chunks;
            r.bytes += p.stats.bytes;
            r.wire_bytes += p.stats.wire_bytes;
            if p.stats.requests > 0 {
                r.per_peer.insert(peer.clone(), p.stats);
            }
            match p.dropped {
                Some(Dropped::Bad) => r.bad_peers.push(peer.clone()),
                Some(Dropped::Gone) => r.gone_peers.push(peer.clone()),
                None => {}
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// How a simulated provider behaves.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Behaviour {
        Honest,
        /// Answers after this long.
        Slow(Duration),
        /// Sends a corrupt chunk for every chunk whose first id byte is even.
        Lying,
        /// Never answers; its streams break at once.
        Gone,
        /// Busy on its first n requests.
        BusyFirst(u32),
        /// Vanishes after answering this many requests.
        VanishAfter(u32),
        /// Has only chunks whose first id byte is odd.
        Partial,
    }

    struct Sim {
        s: FetchScheduler<u32>,
        behaviours: HashMap<u32, Behaviour>,
        served: HashMap<u32, u32>,
        /// (finish time, request, peer, chunks)
        pending: Vec<(Duration, RequestId, u32, Vec<ChunkId>)>,
        now: Duration,
        cancelled: Vec<RequestId>,
    }

    fn wanted(n: usize) -> Vec<(ChunkId, u32)> {
        (0..n)
            .map(|i| (ChunkId::of(&(i as u64).to_le_bytes()), 16384))
            .collect()
    }

    impl Sim {
        fn new(n: usize, peers: &[(u32, Behaviour)], cfg: FetchConfig) -> Sim {
            Sim {
                s: FetchScheduler::new(wanted(n), peers.iter().map(|p| p.0), cfg),
                behaviours: peers.iter().copied().collect(),
                served: HashMap::new(),
                pending: Vec::new(),
                now: Duration::ZERO,
                cancelled: Vec::new(),
            }
        }

        fn act(&mut self) {
            for a in self.s.poll(self.now) {
                match a {
                    Action::Send {
                        request,
                        peer,
                        chunks,
                    } => {
                        assert!(!chunks.is_empty() && chunks.len() <= 64);
                        let delay = match self.behaviours[&peer] {
                            Behaviour::Slow(d) => d,
                            _ => 5 * MS,
                        };
                        self.pending.push((self.now + delay, request, peer, chunks));
                    }
                    Action::Cancel { request, .. } => {
                        self.cancelled.push(request);
                        self.pending.retain(|p| p.1 != request);
                    }
                }
            }
        }

        /// Delivers the earliest pending request (or jumps to the next deadline).
        fn step(&mut self) -> bool {
            self.act();
            let next = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.0)
                .map(|(i, _)| i);
            let Some(i) = next else {
                match self.s.next_deadline(self.now) {
                    Some(t) if t > self.now => {
                        self.now = t;
                        return true;
                    }
                    _ => return false,
                }
            };
            let (at, request, peer, chunks) = self.pending.remove(i);
            if let Some(w) = self.s.next_deadline(self.now) {
                if w < at {
                    // A deadline comes first: put it back and let poll expire it.
                    self.pending.push((at, request, peer, chunks));
                    self.now = w;
                    return true;
                }
            }
            self.now = at;
            let served = self.served.entry(peer).or_default();
            *served += 1;
            let n = *served;
            match self.behaviours[&peer] {
                Behaviour::Gone => {
                    self.s.request_failed(request);
                }
                Behaviour::VanishAfter(k) if n > k => {
                    self.s.request_failed(request);
                }
                Behaviour::BusyFirst(k) if n <= k => {
                    self.s.busy(request, 50 * MS, self.now);
                }
                b => {
                    for id in &chunks {
                        let even = id.as_bytes()[0] % 2 == 0;
                        if b == Behaviour::Partial && even {
                            self.s.not_found(request, id);
                            continue;
                        }
                        let arrival = if b == Behaviour::Lying && even {
                            Arrival::Invalid
                        } else {
                            Arrival::Verified { wire_bytes: 8000 }
                        };
                        if self.s.chunk_arrived(request, id, arrival) != Heard::Taken {
                            break;
                        }
                    }
                    self.s.request_done(request);
                }
            }
            true
        }

        fn run(&mut self) -> Progress<u32> {
            for _ in 0..100_000 {
                let more = self.step();
                self.act();
                match self.s.progress(self.now) {
                    Progress::Running => assert!(more, "stuck at {:?}", self.now),
                    done => return done,
                }
            }
            panic!("did not finish");
        }
    }

    fn done(p: Progress<u32>) -> SchedulerReport<u32> {
        match p {
            Progress::Done(r) => r,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn honest_providers_share_the_work() {
        let mut sim = Sim::new(
            1000,
            &[
                (1, Behaviour::Honest),
                (2, Behaviour::Honest),
                (3, Behaviour::Honest),
            ],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 1000);
        assert_eq!(r.bytes, 1000 * 16384);
        assert_eq!(r.retries, 0);
        for p in 1..=3 {
            let got = r.per_peer[&p].chunks;
            assert!((250..=420).contains(&got), "peer {p}: {got}");
        }
        assert!(r.bad_peers.is_empty() && r.gone_peers.is_empty());
    }

    #[test]
    fn requests_are_spread_in_parallel_from_the_first_poll() {
        let mut s = FetchScheduler::new(wanted(1000), [1u32, 2], FetchConfig::default());
        let actions = s.poll(Duration::ZERO);
        assert_eq!(actions.len(), 8, "4 in flight to each of 2 peers");
        let to_1 = actions
            .iter()
            .filter(|a| matches!(a, Action::Send { peer: 1, .. }))
            .count();
        assert_eq!(to_1, 4);
        // No chunk is asked twice.
        let mut all: Vec<ChunkId> = actions
            .iter()
            .flat_map(|a| match a {
                Action::Send { chunks, .. } => chunks.clone(),
                _ => vec![],
            })
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 8 * 32);
        assert!(s.poll(Duration::ZERO).is_empty(), "all slots taken");
    }

    #[test]
    fn a_lying_provider_is_dropped_and_reported() {
        let mut sim = Sim::new(
            500,
            &[(1, Behaviour::Honest), (2, Behaviour::Lying)],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 500);
        assert_eq!(r.bad_peers, vec![2]);
        assert!(r.retries > 0);
        // Cancelled requests of the liar were reported to the caller.
        assert!(!sim.cancelled.is_empty());
    }

    #[test]
    fn a_gone_provider_is_dropped_and_its_chunks_fetched_elsewhere() {
        let mut sim = Sim::new(
            500,
            &[(1, Behaviour::Gone), (2, Behaviour::Honest)],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 500);
        assert_eq!(r.gone_peers, vec![1]);
        assert_eq!(r.per_peer[&2].chunks, 500);
    }

    #[test]
    fn a_provider_vanishing_mid_fetch_is_replaced() {
        let mut sim = Sim::new(
            2000,
            &[(1, Behaviour::VanishAfter(10)), (2, Behaviour::Honest)],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 2000);
        assert!(r.per_peer[&1].chunks >= 10 * 32, "{:?}", r.per_peer[&1]);
        assert_eq!(r.gone_peers, vec![1]);
    }

    #[test]
    fn slow_providers_time_out_and_are_dropped() {
        let cfg = FetchConfig {
            request_timeout: 100 * MS,
            ..FetchConfig::default()
        };
        let mut sim = Sim::new(
            300,
            &[
                (1, Behaviour::Slow(Duration::from_secs(5))),
                (2, Behaviour::Honest),
            ],
            cfg,
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 300);
        assert_eq!(r.gone_peers, vec![1]);
        assert!(sim.now < Duration::from_secs(2), "{:?}", sim.now);
        assert!(
            !sim.cancelled.is_empty(),
            "timed-out requests are cancelled"
        );
    }

    #[test]
    fn a_slow_provider_within_the_timeout_still_helps() {
        let mut sim = Sim::new(
            300,
            &[(1, Behaviour::Slow(200 * MS)), (2, Behaviour::Honest)],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert!(r.per_peer[&1].chunks > 0);
        assert!(r.gone_peers.is_empty());
    }

    #[test]
    fn busy_providers_are_waited_for_not_dropped() {
        let mut sim = Sim::new(200, &[(1, Behaviour::BusyFirst(3))], FetchConfig::default());
        let r = done(sim.run());
        assert_eq!(r.chunks, 200);
        assert!(r.busy >= 3);
        assert_eq!(r.retries, 0, "busy is not a retry");
        assert!(sim.now >= 50 * MS);
        assert!(r.gone_peers.is_empty());
    }

    #[test]
    fn chunks_nobody_has_fail_the_fetch_by_name() {
        let mut sim = Sim::new(
            100,
            &[(1, Behaviour::Partial), (2, Behaviour::Partial)],
            FetchConfig::default(),
        );
        match sim.run() {
            Progress::Failed { missing, report } => {
                let even = wanted(100)
                    .into_iter()
                    .filter(|(id, _)| id.as_bytes()[0] % 2 == 0)
                    .count();
                assert_eq!(missing.len(), even);
                assert!(missing.iter().all(|id| id.as_bytes()[0] % 2 == 0));
                assert_eq!(report.chunks as usize, 100 - even);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_and_full_providers_together_complete() {
        let mut sim = Sim::new(
            300,
            &[(1, Behaviour::Partial), (2, Behaviour::Honest)],
            FetchConfig::default(),
        );
        let r = done(sim.run());
        assert_eq!(r.chunks, 300);
    }

    #[test]
    fn all_providers_gone_fails() {
        let mut sim = Sim::new(
            100,
            &[(1, Behaviour::Gone), (2, Behaviour::Gone)],
            FetchConfig::default(),
        );
        match sim.run() {
            Progress::Failed { missing, report } => {
                assert_eq!(missing.len(), 100);
                assert_eq!(report.gone_peers.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_providers_or_nothing_wanted() {
        let mut s = FetchScheduler::<u32>::new(wanted(3), [], FetchConfig::default());
        assert!(s.poll(Duration::ZERO).is_empty());
        assert!(matches!(
            s.progress(Duration::ZERO),
            Progress::Failed { ref missing, .. } if missing.len() == 3
        ));
        let mut s = FetchScheduler::new(vec![], [1u32], FetchConfig::default());
        assert!(s.poll(Duration::ZERO).is_empty());
        assert!(matches!(s.progress(Duration::ZERO), Progress::Done(_)));
    }

    #[test]
    fn unasked_chunks_make_a_provider_bad_and_stale_news_is_ignored() {
        let mut s = FetchScheduler::new(wanted(10), [1u32, 2], FetchConfig::default());
        let actions = s.poll(Duration::ZERO);
        let Action::Send { request, .. } = actions[0].clone() else {
            panic!()
        };
        let stranger = ChunkId::of(b"not asked");
        assert_eq!(
            s.chunk_arrived(request, &stranger, Arrival::Verified { wire_bytes: 1 }),
            Heard::Unasked
        );
        assert_eq!(s.report().bad_peers.len(), 1);
        assert_eq!(s.request_done(request), Heard::Stale);
        assert_eq!(s.request_failed(999), Heard::Stale);
        let cancels = s.poll(Duration::ZERO);
        assert!(cancels
            .iter()
            .any(|a| matches!(a, Action::Cancel { request: r, .. } if *r == request)));
    }

    #[test]
    fn duplicates_are_fetched_once() {
        let mut w = wanted(5);
        w.extend(wanted(5));
        let s = FetchScheduler::new(w, [1u32], FetchConfig::default());
        assert_eq!(s.counts(), (5, 0));
    }
}
