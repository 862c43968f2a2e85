//! Fetching: the driver of the pure [`FetchScheduler`] (one task per request, a stream
//! reused request after request), the manifest request and the verified batch commit.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::{
    read_frame, ChunkExchange, ExchangeError, FetchReport, FrameError, CHUNKS_PROTOCOL,
    EVENT_QUEUE, OPEN_TIMEOUT, OPEN_TRIES,
};
use crate::chunks::{ChunkId, ChunkStore, EncodedChunk, StoreError};
use crate::dht_keys::DhtKey;
use crate::swarm::MeshNode;
use crate::transfer::fetch::{
    Action, Arrival, FetchScheduler, Heard, PeerStats, Progress, RequestId, SchedulerReport,
};
use crate::transfer::manifest::{hex, ChunkSetManifest};
use crate::transfer::wire::{Request, Response, MAX_CHUNK_BODY, MAX_RESPONSE_BODY};

impl ChunkExchange {
    /// Fetches chunk set `id` from its providers in the DHT into the local store, then
    /// serves and provides it. `node` must be the node the exchange was started on.
    pub async fn fetch(&self, node: &MeshNode, id: [u8; 32]) -> Result<FetchReport, ExchangeError> {
        self.fetch_up_to(node, id, u64::MAX).await
    }

    /// [`fetch`](Self::fetch), refusing a set whose manifest says it holds more than
    /// `max_len` bytes before any of its chunks is asked for.
    pub async fn fetch_up_to(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        max_len: u64,
    ) -> Result<FetchReport, ExchangeError> {
        self.check_node(node)?;
        let started = Instant::now();
        let mut providers: Vec<PeerId> = node
            .providers(DhtKey::ChunkSet(id))
            .await?
            .into_iter()
            .filter(|p| *p != self.shared.local)
            .collect();
        providers.sort();
        if providers.is_empty() {
            return Err(ExchangeError::NoProviders(hex(&id)));
        }
        self.fetch_inner(node, id, providers, started, max_len)
            .await
    }

    /// [`fetch`](Self::fetch) from the given providers, without a DHT lookup (benchmarks,
    /// and peers known from elsewhere: their addresses must be known to the swarm).
    pub async fn fetch_from(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        providers: &[PeerId],
    ) -> Result<FetchReport, ExchangeError> {
        self.fetch_from_up_to(node, id, providers, u64::MAX).await
    }

    /// [`fetch_from`](Self::fetch_from), refusing a set whose manifest says it holds more
    /// than `max_len` bytes before any of its chunks is asked for.
    pub async fn fetch_from_up_to(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        providers: &[PeerId],
        max_len: u64,
    ) -> Result<FetchReport, ExchangeError> {
        self.check_node(node)?;
        let providers: Vec<PeerId> = providers
            .iter()
            .copied()
            .filter(|p| *p != self.shared.local)
            .collect();
        if providers.is_empty() {
            return Err(ExchangeError::NoProviders(hex(&id)));
        }
        self.fetch_inner(node, id, providers, Instant::now(), max_len)
            .await
    }

    async fn fetch_inner(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        providers: Vec<PeerId>,
        started: Instant,
        max_len: u64,
    ) -> Result<FetchReport, ExchangeError> {
        let (manifest, bytes, manifest_from) = match self.manifest(&id) {
            Some(m) => {
                let bytes = m.encode()?;
                (m, bytes, None)
            }
            None => {
                let (m, bytes, from) = self.get_manifest(id, &providers).await?;
                (m, bytes, Some(from))
            }
        };
        if manifest.total_len() > max_len {
            return Err(ExchangeError::TooLarge {
                id: hex(&id),
                len: manifest.total_len(),
                max: max_len,
            });
        }
        let all: Vec<(ChunkId, u32)> = manifest
            .chunks()
            .iter()
            .map(|c| (c.chunk_id(), c.len))
            .collect();
        let set_chunks = all.len();
        let store = self.shared.store.clone();
        let wanted = tokio::task::spawn_blocking(move || {
            all.into_iter()
                .filter(|(id, _)| !store.contains(id))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ExchangeError::Task(e.to_string()))?;
        let already_held = set_chunks - wanted.len();
        debug!(set = %hex(&id), wanted = wanted.len(), already_held, providers = providers.len(), "fetching chunk set");

        let chunk_start = Instant::now();
        let report = self.fetch_chunks(id, wanted, providers).await?;
        let chunk_seconds = chunk_start.elapsed().as_secs_f64();

        self.serve_set(id, bytes, &manifest)?;
        let providing = match node.start_providing(DhtKey::ChunkSet(id)).await {
            Ok(()) => true,
            Err(e) => {
                warn!(set = %hex(&id), error = %e, "fetched a chunk set but cannot provide it");
                false
            }
        };
        let mut per_peer: Vec<(PeerId, PeerStats)> = report.per_peer.into_iter().collect();
        per_peer.sort_by(|a, b| b.1.chunks.cmp(&a.1.chunks).then(a.0.cmp(&b.0)));
        let out = FetchReport {
            id,
            name: manifest.name().to_string(),
            total_len: manifest.total_len(),
            set_chunks,
            already_held,
            chunks: report.chunks,
            bytes: report.bytes,
            wire_bytes: report.wire_bytes,
            seconds: started.elapsed().as_secs_f64(),
            chunk_seconds,
            mib_per_sec: mib_per_sec(report.bytes, chunk_seconds),
            providers: per_peer,
            manifest_from,
            retries: report.retries,
            busy: report.busy,
            bad_providers: report.bad_peers,
            gone_providers: report.gone_peers,
            providing,
        };
        info!(set = %hex(&id), chunks = out.chunks, bytes = out.bytes, seconds = out.chunk_seconds, mib_per_sec = out.mib_per_sec, retries = out.retries, bad = out.bad_providers.len(), "chunk set fetched");
        Ok(out)
    }

    /// Asks providers in turn for the manifest until one sends bytes hashing to `id`.
    async fn get_manifest(
        &self,
        id: [u8; 32],
        providers: &[PeerId],
    ) -> Result<(ChunkSetManifest, Vec<u8>, PeerId), ExchangeError> {
        let mut last = String::from("no provider answered");
        for &peer in providers {
            let ask = ask_manifest(self.control.clone(), peer, id);
            let bytes = match tokio::time::timeout(self.shared.cfg.manifest_timeout, ask).await {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    last = format!("{peer} does not serve it");
                    continue;
                }
                Ok(Err(e)) => {
                    last = format!("{peer}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{peer} did not answer in time");
                    continue;
                }
            };
            match ChunkSetManifest::decode_for(&id, &bytes) {
                Ok(m) => return Ok((m, bytes, peer)),
                Err(e) => {
                    warn!(%peer, set = %hex(&id), error = %e, "provider sent a bad manifest");
                    last = format!("{peer}: {e}");
                }
            }
        }
        Err(ExchangeError::NoManifest { id: hex(&id), last })
    }

    /// Drives the scheduler: spawns one task per request, feeds their news back.
    async fn fetch_chunks(
        &self,
        id: [u8; 32],
        wanted: Vec<(ChunkId, u32)>,
        providers: Vec<PeerId>,
    ) -> Result<SchedulerReport<PeerId>, ExchangeError> {
        let shared = &self.shared;
        let mut sched = FetchScheduler::new(wanted, providers, shared.cfg.fetch);
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let mut tasks = Tasks::default();
        let mut idle: HashMap<PeerId, Vec<Stream>> = HashMap::new();
        let mut openers: HashMap<PeerId, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
        loop {
            let now = shared.now();
            for action in sched.poll(now) {
                match action {
                    Action::Send {
                        request,
                        peer,
                        chunks,
                    } => {
                        let chunks = chunks
                            .into_iter()
                            .map(|c| (c, sched.expected_len(&c).unwrap_or(0)))
                            .collect();
                        let job = RequestJob {
                            request,
                            peer,
                            chunks,
                            stream: idle.get_mut(&peer).and_then(Vec::pop),
                            control: self.control.clone(),
                            open_lock: openers.entry(peer).or_default().clone(),
                            store: shared.store.clone(),
                            events: tx.clone(),
                        };
                        tasks
                            .0
                            .insert(request, tokio::spawn(job.run()).abort_handle());
                    }
                    Action::Cancel { request, peer } => {
                        if let Some(task) = tasks.0.remove(&request) {
                            task.abort();
                        }
                        idle.remove(&peer);
                    }
                }
            }
            match sched.progress(now) {
                Progress::Running => {}
                Progress::Done(report) => return Ok(report),
                Progress::Failed { missing, report } => {
                    return Err(ExchangeError::Incomplete {
                        id: hex(&id),
                        missing,
                        report: Box::new(report),
                    })
                }
            }
            let event = match sched.next_deadline(now) {
                Some(at) => {
                    let at = shared.epoch.instant(at);
                    tokio::select! {
                        event = rx.recv() => event,
                        () = tokio::time::sleep_until(at) => continue,
                    }
                }
                None => rx.recv().await,
            };
            // The loop holds a sender: the channel never closes while it runs.
            let Some(event) = event else { continue };
            match event {
                Event::Chunk {
                    request,
                    id,
                    arrival,
                } => {
                    if sched.chunk_arrived(request, &id, arrival) == Heard::Unasked {
                        warn!(chunk = %id, "provider sent a chunk it was not asked for");
                    }
                }
                Event::NotFound { request, id } => {
                    sched.not_found(request, &id);
                }
                Event::Done {
                    request,
                    peer,
                    stream,
                } => {
                    tasks.0.remove(&request);
                    if sched.request_done(request) == Heard::Taken {
                        idle.entry(peer).or_default().push(stream);
                    }
                }
                Event::Busy {
                    request,
                    peer,
                    retry_after,
                    stream,
                } => {
                    tasks.0.remove(&request);
                    let heard = sched.busy(request, retry_after, shared.now());
                    if let (Heard::Taken, Some(stream)) = (heard, stream) {
                        idle.entry(peer).or_default().push(stream);
                    }
                }
                Event::Failed { request, reason } => {
                    tasks.0.remove(&request);
                    debug!(request, %reason, "chunk request failed");
                    sched.request_failed(request);
                }
                Event::Store(e) => return Err(e.into()),
            }
        }
    }
}

/// Aborts the request tasks of a fetch when it ends or is dropped.
#[derive(Default)]
struct Tasks(HashMap<RequestId, AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

fn mib_per_sec(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / (1024.0 * 1024.0) / seconds
    } else {
        0.0
    }
}

// ---- fetching ----

/// Asks `peer` for manifest `id`, waiting out up to three `Busy` answers (the caller
/// bounds the whole with a timeout). `None`: the peer does not serve it.
async fn ask_manifest(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    id: [u8; 32],
) -> Result<Option<Vec<u8>>, String> {
    let mut stream = control
        .open_stream(peer, CHUNKS_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let mut busy = 0;
    loop {
        stream
            .write_all(&Request::Manifest(id).encode())
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let body = read_frame(&mut stream, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream closed without an answer")?;
        match Response::decode(&body).map_err(|e| e.to_string())? {
            Response::Manifest(bytes) => {
                let _ = stream.close().await;
                return Ok(Some(bytes));
            }
            Response::NotFound(_) => return Ok(None),
            Response::Busy { retry_after_ms } if busy < 3 => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
            }
            other => return Err(format!("unexpected answer {}", kind(&other))),
        }
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Manifest(_) => "manifest",
        Response::NotFound(_) => "not-found",
        Response::Chunk { .. } => "chunk",
        Response::End => "end",
        Response::Busy { .. } => "busy",
    }
}

/// News from a request task to its fetch.
enum Event {
    Chunk {
        request: RequestId,
        id: ChunkId,
        arrival: Arrival,
    },
    NotFound {
        request: RequestId,
        id: ChunkId,
    },
    /// Answered to its end; the stream can carry the next request.
    Done {
        request: RequestId,
        peer: PeerId,
        stream: Stream,
    },
    Busy {
        request: RequestId,
        peer: PeerId,
        retry_after: Duration,
        stream: Option<Stream>,
    },
    Failed {
        request: RequestId,
        reason: String,
    },
    Store(StoreError),
}

/// A chunk as received, before verification.
struct Received {
    id: ChunkId,
    encoded: EncodedChunk,
    raw_len: u32,
}

/// What a request's answer was (rarely `Busy`: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// Wait this long; the stream can carry the next request.
    Busy(Duration, Option<Stream>),
    Chunks {
        received: Vec<Received>,
        not_found: Vec<ChunkId>,
        /// A chunk that cannot be right whatever its bytes (not asked, wrong length).
        violation: Option<ChunkId>,
        stream: Option<Stream>,
    },
}

struct RequestJob {
    request: RequestId,
    peer: PeerId,
    /// Ids asked and their raw lengths from the manifest.
    chunks: Vec<(ChunkId, u32)>,
    stream: Option<Stream>,
    control: libp2p_stream::Control,
    /// Held while opening a stream to `peer` (shared by the fetch's requests to it).
    open_lock: Arc<tokio::sync::Mutex<()>>,
    store: Arc<ChunkStore>,
    events: mpsc::Sender<Event>,
}

impl RequestJob {
    async fn run(mut self) {
        let request = self.request;
        let event = match self.exchange().await {
            Err(reason) => Event::Failed { request, reason },
            Ok(Answer::Busy(retry_after, stream)) => Event::Busy {
                request,
                peer: self.peer,
                retry_after,
                stream,
            },
            Ok(Answer::Chunks {
                received,
                not_found,
                violation,
                stream,
            }) => match self.store_verified(received).await {
                Err(e) => Event::Store(e),
                Ok(invalid) => {
                    for id in not_found {
                        let _ = self.events.send(Event::NotFound { request, id }).await;
                    }
                    match (invalid.or(violation), stream) {
                        (Some(id), _) => Event::Chunk {
                            request,
                            id,
                            arrival: Arrival::Invalid,
                        },
                        (None, Some(stream)) => Event::Done {
                            request,
                            peer: self.peer,
                            stream,
                        },
                        (None, None) => Event::Failed {
                            request,
                            reason: "answer ended early".into(),
                        },
                    }
                }
            },
        };
        let _ = self.events.send(event).await;
    }

    /// Sends the request and reads its whole answer (chunks are not verified yet).
    ///
    /// A stream that ends before any answer is replaced by a fresh one, up to
    /// [`OPEN_TRIES`] times: an idle stream the server closed, or a new stream dropped by
    /// the server's libp2p-stream accept queue, which holds one stream and drops the next
    /// if two arrive before the accept loop runs. New streams to one peer are opened one at
    /// a time (`open_lock`) so that a fetch does not cause such bursts itself.
    async fn exchange(&mut self) -> Result<Answer, String> {
        for attempt in 0..OPEN_TRIES {
            let mut stream = match self.stream.take() {
                Some(s) => s,
                None => {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    }
                    let _one_at_a_time = self.open_lock.lock().await;
                    let open = self.control.open_stream(self.peer, CHUNKS_PROTOCOL);
                    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
                        Ok(opened) => opened.map_err(|e| e.to_string())?,
                        // Retried like a stream that ended early (see OPEN_TIMEOUT).
                        Err(_) => continue,
                    }
                }
            };
            match Self::attempt(&self.chunks, &mut stream).await? {
                Some(Answer::Chunks {
                    received,
                    not_found,
                    violation: None,
                    ..
                }) => {
                    return Ok(Answer::Chunks {
                        received,
                        not_found,
                        violation: None,
                        stream: Some(stream),
                    })
                }
                Some(Answer::Busy(retry_after, _)) => {
                    return Ok(Answer::Busy(retry_after, Some(stream)))
                }
                Some(answer) => return Ok(answer),
                None => {}
            }
        }
        Err("no stream to the provider answered (each closed early or did not open in time)".into())
    }

    /// One try on `stream`: `None` when it ended before the first answer frame.
    async fn attempt<S: AsyncRead + AsyncWrite + Unpin>(
        chunks: &[(ChunkId, u32)],
        stream: &mut S,
    ) -> Result<Option<Answer>, String> {
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
        let sent = stream.write_all(&Request::Chunks(ids).encode()).await;
        if sent.is_err() || stream.flush().await.is_err() {
            return Ok(None);
        }
        let first = match read_frame(stream, MAX_CHUNK_BODY).await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(None),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut next = Some(first);
        let mut open: HashMap<ChunkId, u32> = chunks.iter().copied().collect();
        let mut received = Vec::with_capacity(open.len());
        let mut not_found = Vec::new();
        loop {
            let body = match next.take() {
                Some(body) => body,
                None => read_frame(stream, MAX_CHUNK_BODY)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the stream closed mid-answer")?,
            };
            match Response::decode(&body).map_err(|e| e.to_string())? {
                Response::Busy { retry_after_ms }
                    if received.is_empty() && not_found.is_empty() =>
                {
                    let wait = Duration::from_millis(u64::from(retry_after_ms));
                    return Ok(Some(Answer::Busy(wait, None)));
                }
                Response::Chunk {
                    id,
                    encoded,
                    raw_len,
                } => match open.remove(&id) {
                    Some(expected) if expected == raw_len => received.push(Received {
                        id,
                        encoded,
                        raw_len,
                    }),
                    _ => {
                        return Ok(Some(Answer::Chunks {
                            received,
                            not_found,
                            violation: Some(id),
                            stream: None,
                        }))
                    }
                },
                Response::NotFound(raw) => {
                    let id = ChunkId::from_bytes(raw);
                    if open.remove(&id).is_none() {
                        return Ok(Some(Answer::Chunks {
                            received,
                            not_found,
                            violation: Some(id),
                            stream: None,
                        }));
                    }
                    not_found.push(id);
                }
                Response::End => {
                    return Ok(Some(Answer::Chunks {
                        received,
                        not_found,
                        violation: None,
                        stream: None,
                    }))
                }
                other => return Err(format!("unexpected {} in a chunk answer", kind(&other))),
            }
        }
    }

    /// Verifies the received chunks and puts them in the store in one batch, off the
    /// async threads; reports each verified one. Returns the first that did not verify
    /// (the ones after it are dropped unverified).
    async fn store_verified(
        &mut self,
        received: Vec<Received>,
    ) -> Result<Option<ChunkId>, StoreError> {
        if received.is_empty() {
            return Ok(None);
        }
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || verify_and_store(&store, received))
            .await
            .map_err(|e| StoreError::Io {
                op: "run the store task for",
                path: std::path::PathBuf::from("chunk batch"),
                source: io::Error::other(e.to_string()),
            })??;
        for &(id, wire_bytes) in &outcome.verified {
            let _ = self
                .events
                .send(Event::Chunk {
                    request: self.request,
                    id,
                    arrival: Arrival::Verified { wire_bytes },
                })
                .await;
        }
        Ok(outcome.invalid)
    }
}

struct Verified {
    verified: Vec<(ChunkId, u64)>,
    invalid: Option<ChunkId>,
}

/// Blocking: decodes and checks each chunk against its id and length, then commits the
/// good ones before the first bad one.
fn verify_and_store(store: &ChunkStore, received: Vec<Received>) -> Result<Verified, StoreError> {
    let mut batch = store.batch();
    let mut out = Verified {
        verified: Vec::with_capacity(received.len()),
        invalid: None,
    };
    for r in received {
        let wire_bytes = r.encoded.bytes.len() as u64;
        match batch.put_encoded(&r.id, r.encoded, r.raw_len as usize) {
            Ok(()) => out.verified.push((r.id, wire_bytes)),
            Err(
                StoreError::InvalidChunk { .. }
                | StoreError::ZeroChunk { .. }
                | StoreError::Codec(_),
            ) => {
                out.invalid = Some(r.id);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    batch.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use futures::{AsyncWriteExt, Future};

    use super::*;
    use crate::swarm::chunk_exchange::fixtures::*;
    use crate::swarm::chunk_exchange::ExchangeConfig;
    use crate::transfer::wire::MAX_REQUEST_BODY;

    fn asked(ids: &[ChunkId]) -> Vec<(ChunkId, u32)> {
        ids.iter().map(|id| (*id, CHUNK_LEN)).collect()
    }

    /// A request's exchange against a fake server: `answer` gets the request it read and
    /// the server's end of the stream.
    async fn attempt_against<F, Fut>(
        chunks: &[(ChunkId, u32)],
        answer: F,
    ) -> Result<Option<Answer>, String>
    where
        F: FnOnce(Request, Pipe) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (mut client, mut server) = pipe();
        let fake = tokio::spawn(async move {
            let body = read_frame(&mut server, MAX_REQUEST_BODY).await.unwrap();
            let request = Request::decode(&body.unwrap()).unwrap();
            answer(request, server).await;
        });
        let out = RequestJob::attempt(chunks, &mut client).await;
        fake.await.unwrap();
        out
    }

    async fn reply(mut server: Pipe, answers: Vec<Response>) {
        for a in answers {
            server.write_all(&a.encode()).await.unwrap();
        }
        server.close().await.unwrap();
    }

    fn stored(fx: &Fixture, id: ChunkId) -> Response {
        let (encoded, len) = fx.store.get_encoded(&id).unwrap();
        Response::Chunk {
            id,
            encoded,
            raw_len: len as u32,
        }
    }

    #[tokio::test]
    async fn a_request_against_the_real_server_fetches_and_stores_verified_chunks() {
        let provider = Fixture::new(2);
        let shared = provider.serving(ExchangeConfig::default(), &provider.chunks, ([1; 32], b""));
        let (mut client, server) = pipe();
        let served = tokio::spawn(async move {
            crate::swarm::chunk_exchange::serve::serve_stream(&shared, PeerId::random(), server)
                .await
        });
        let missing = ChunkId::of(&[5; CHUNK_LEN as usize]);
        let want = asked(&[provider.chunks[0], missing, provider.chunks[1]]);
        let Ok(Some(Answer::Chunks {
            received,
            not_found,
            violation: None,
            stream: None,
        })) = RequestJob::attempt(&want, &mut client).await
        else {
            panic!("expected the chunks");
        };
        assert_eq!(not_found, vec![missing]);
        let got: Vec<ChunkId> = received.iter().map(|r| r.id).collect();
        assert_eq!(got, provider.chunks);

        let fetcher = Fixture::new(0);
        let outcome = verify_and_store(&fetcher.store, received).unwrap();
        assert_eq!(outcome.invalid, None);
        assert_eq!(outcome.verified.len(), 2);
        for (i, id) in provider.chunks.iter().enumerate() {
            assert_eq!(fetcher.store.get(id).unwrap(), raw(i as u8));
        }
        client.close().await.unwrap();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_hash_to_its_id_is_not_stored() {
        let fx = Fixture::new(2);
        let [a, b] = [fx.chunks[0], fx.chunks[1]];
        // The provider sends a's bytes as b (same length, so only the hash tells).
        let Response::Chunk { encoded, .. } = stored(&fx, a) else {
            unreachable!()
        };
        let forged = Response::Chunk {
            id: b,
            encoded,
            raw_len: CHUNK_LEN,
        };
        let answers = vec![stored(&fx, a), forged, Response::End];
        let answer = attempt_against(&asked(&[a, b]), move |request, server| async move {
            assert_eq!(request, Request::Chunks(vec![a, b]));
            reply(server, answers).await
        })
        .await;
        let Ok(Some(Answer::Chunks {
            received,
            violation: None,
            ..
        })) = answer
        else {
            panic!("expected the chunks");
        };
        let fetcher = Fixture::new(0);
        let outcome = verify_and_store(&fetcher.store, received).unwrap();
        assert_eq!(outcome.invalid, Some(b));
        assert_eq!(outcome.verified.len(), 1);
        assert!(fetcher.store.contains(&a));
        assert!(!fetcher.store.contains(&b));
    }

    #[tokio::test]
    async fn chunks_not_asked_for_or_of_the_wrong_length_are_violations() {
        let fx = Fixture::new(2);
        let [a, b] = [fx.chunks[0], fx.chunks[1]];
        let mut wrong_len = stored(&fx, a);
        if let Response::Chunk { raw_len, .. } = &mut wrong_len {
            *raw_len = CHUNK_LEN - 1;
        }
        let cases = [
            (vec![stored(&fx, b), Response::End], b),
            (vec![Response::NotFound(*b.as_bytes()), Response::End], b),
            (vec![wrong_len, Response::End], a),
        ];
        for (answers, culprit) in cases {
            let answer =
                attempt_against(&asked(&[a]), move |_, server| reply(server, answers)).await;
            assert!(
                matches!(answer, Ok(Some(Answer::Chunks { violation: Some(id), .. })) if id == culprit),
                "culprit {culprit}"
            );
        }
    }

    #[tokio::test]
    async fn busy_early_ends_and_wrong_answers_are_told_apart() {
        let fx = Fixture::new(1);
        let want = asked(&fx.chunks);
        let busy = Response::Busy {
            retry_after_ms: 250,
        };
        let answer = attempt_against(&want, move |_, server| reply(server, vec![busy])).await;
        assert!(matches!(
            answer,
            Ok(Some(Answer::Busy(wait, None))) if wait == Duration::from_millis(250)
        ));
        // A stream that ends before any answer: the caller tries another stream.
        let answer = attempt_against(&want, |_, server| reply(server, Vec::new())).await;
        assert!(matches!(answer, Ok(None)));
        // An answer that is not one to a chunk request, or a stream cut mid-answer.
        let manifest = Response::Manifest(b"m".to_vec());
        let answer = attempt_against(&want, move |_, server| reply(server, vec![manifest])).await;
        assert!(matches!(answer, Err(e) if e.contains("unexpected manifest")));
        let first = stored(&fx, fx.chunks[0]);
        let answer = attempt_against(
            &asked(&[fx.chunks[0], ChunkId::of(b"x")]),
            move |_, server| reply(server, vec![first]),
        )
        .await;
        assert!(matches!(answer, Err(e) if e.contains("closed mid-answer")));
    }
}
