//! Serving: the accept loop, one task per stream, and the answer to each request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{bump, read_frame, FrameError, Shared};
use crate::chunks::{ChunkId, StoreError};
use crate::transfer::rate::Refusal;
use crate::transfer::wire::{Request, Response, WireError, MAX_REQUEST_BODY, MAX_RETRY_AFTER_MS};

pub(super) async fn accept_loop(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams) {
    // Owning the served streams' tasks here means aborting this loop ends them too.
    let mut served = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
                    bump(&shared.counters.refused, 1);
                    debug!(%peer, "chunk stream refused: too many streams");
                    continue;
                };
                bump(&shared.counters.streams, 1);
                let shared = shared.clone();
                served.spawn(async move {
                    serve_stream(&shared, peer, stream).await;
                    drop(permit);
                });
            }
            Some(_) = served.join_next(), if !served.is_empty() => {}
        }
    }
}

/// Why a served stream was closed.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("cannot write: {0}")]
    Write(io::Error),
    #[error("no request or no progress for {0:?}")]
    Idle(Duration),
}

pub(super) async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    peer: PeerId,
    mut stream: S,
) {
    let admitted = shared.limiter().open_stream(&peer, shared.now());
    if let Err(refusal) = admitted {
        bump(&shared.counters.refused, 1);
        debug!(%peer, %refusal, "chunk stream refused");
        let busy = Response::Busy {
            retry_after_ms: retry_ms(&refusal),
        };
        let _ = tokio::time::timeout(shared.cfg.idle_timeout, async {
            stream.write_all(&busy.encode()).await?;
            stream.close().await
        })
        .await;
        return;
    }
    let result = serve_requests(shared, peer, &mut stream).await;
    shared.limiter().close_stream(&peer);
    match result {
        Ok(()) => {}
        Err(e @ (ServeError::Frame(FrameError::Wire(_)) | ServeError::Wire(_))) => {
            bump(&shared.counters.refused, 1);
            debug!(%peer, error = %e, "malformed chunk request: stream closed");
        }
        Err(e) => debug!(%peer, error = %e, "chunk stream closed"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
}

fn retry_ms(refusal: &Refusal) -> u32 {
    let ms = refusal.retry_after().as_millis().max(1);
    u32::try_from(ms)
        .unwrap_or(MAX_RETRY_AFTER_MS)
        .min(MAX_RETRY_AFTER_MS)
}

async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    peer: PeerId,
    stream: &mut S,
) -> Result<(), ServeError> {
    let idle = shared.cfg.idle_timeout;
    loop {
        let body = match tokio::time::timeout(idle, read_frame(stream, MAX_REQUEST_BODY)).await {
            Err(_) => return Err(ServeError::Idle(idle)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(body))) => body,
            Ok(Err(e)) => return Err(e.into()),
        };
        let request = Request::decode(&body)?;
        bump(&shared.counters.requests, 1);
        tokio::time::timeout(idle, answer(shared, peer, stream, request))
            .await
            .map_err(|_| ServeError::Idle(idle))??;
    }
}

async fn answer<S: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: PeerId,
    stream: &mut S,
    request: Request,
) -> Result<(), ServeError> {
    // Manifests (up to 4 MiB) count against the byte rate like chunks.
    let admitted = shared.limiter().admit(&peer, shared.now());
    if let Err(refusal) = admitted {
        bump(&shared.counters.busy, 1);
        let busy = Response::Busy {
            retry_after_ms: retry_ms(&refusal),
        };
        send(shared, stream, &busy.encode()).await?;
        return stream.flush().await.map_err(ServeError::Write);
    }
    let charge = |frame: &[u8]| {
        shared
            .limiter()
            .take(&peer, frame.len() as u64, shared.now());
    };
    match request {
        Request::Manifest(id) => {
            let found = shared.sets_read().manifests.get(&id).cloned();
            let response = match found {
                Some(bytes) => Response::Manifest(bytes.to_vec()),
                None => {
                    bump(&shared.counters.not_found, 1);
                    Response::NotFound(id)
                }
            };
            let frame = response.encode();
            charge(&frame);
            send(shared, stream, &frame).await?;
        }
        Request::Chunks(ids) => {
            for id in ids {
                let frame = chunk_response(shared, id).await.encode();
                charge(&frame);
                send(shared, stream, &frame).await?;
            }
            send(shared, stream, &Response::End.encode()).await?;
        }
    }
    stream.flush().await.map_err(ServeError::Write)
}

async fn send<S: AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    frame: &[u8],
) -> Result<(), ServeError> {
    stream.write_all(frame).await.map_err(ServeError::Write)?;
    bump(&shared.counters.bytes, frame.len() as u64);
    Ok(())
}

/// The stored chunk, or `NotFound` when it is not part of a served set or not readable.
async fn chunk_response(shared: &Shared, id: ChunkId) -> Response {
    let not_found = || {
        bump(&shared.counters.not_found, 1);
        Response::NotFound(*id.as_bytes())
    };
    if !shared.sets_read().serves_chunk(&id) {
        return not_found();
    }
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.get_encoded(&id)).await {
        Ok(Ok((encoded, len))) => {
            bump(&shared.counters.chunks, 1);
            Response::Chunk {
                id,
                encoded,
                // A stored chunk is at most 64 KiB (the file header is checked).
                raw_len: len as u32,
            }
        }
        Ok(Err(StoreError::NotFound { .. })) => not_found(),
        Ok(Err(e)) => {
            warn!(chunk = %id, error = %e, "cannot serve a stored chunk");
            not_found()
        }
        Err(e) => {
            warn!(chunk = %id, error = %e, "chunk read task failed");
            not_found()
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncRead, AsyncWriteExt};

    use super::*;
    use crate::swarm::chunk_exchange::fixtures::*;
    use crate::swarm::chunk_exchange::{ExchangeConfig, ServeStats};
    use crate::transfer::rate::RateConfig;
    use crate::transfer::wire::MAX_RESPONSE_BODY;

    const SET: [u8; 32] = [7; 32];
    const MANIFEST: &[u8] = b"manifest bytes";

    /// Serves `server` (as `peer`) until the stream ends.
    fn serve(shared: &Arc<Shared>, peer: PeerId, server: Pipe) -> tokio::task::JoinHandle<()> {
        let shared = shared.clone();
        tokio::spawn(async move { serve_stream(&shared, peer, server).await })
    }

    async fn ask(client: &mut Pipe, request: &Request) {
        client.write_all(&request.encode()).await.unwrap();
        client.flush().await.unwrap();
    }

    /// The next answer, `None` once the server closed the stream.
    async fn next<R: AsyncRead + Unpin>(client: &mut R) -> Option<Response> {
        let body = read_frame(client, MAX_RESPONSE_BODY).await.unwrap()?;
        Some(Response::decode(&body).unwrap())
    }

    /// A stream from `peer` that got the manifest answered, still open.
    async fn open_and_get_the_manifest(
        shared: &Arc<Shared>,
        peer: PeerId,
    ) -> (Pipe, tokio::task::JoinHandle<()>) {
        let (mut client, server) = pipe();
        let served = serve(shared, peer, server);
        ask(&mut client, &Request::Manifest(SET)).await;
        assert!(matches!(
            next(&mut client).await,
            Some(Response::Manifest(_))
        ));
        (client, served)
    }

    /// Closes a stream and waits for the server to end it.
    async fn end((mut client, served): (Pipe, tokio::task::JoinHandle<()>)) {
        client.close().await.unwrap();
        served.await.unwrap();
    }

    fn stats(shared: &Shared) -> ServeStats {
        shared.counters.snapshot()
    }

    #[tokio::test]
    async fn serves_the_chunks_and_manifests_of_served_sets_and_nothing_else() {
        let fx = Fixture::new(3);
        let [a, b, held] = [fx.chunks[0], fx.chunks[1], fx.chunks[2]];
        let shared = fx.serving(ExchangeConfig::default(), &[a, b], (SET, MANIFEST));
        let (mut client, server) = pipe();
        let served = serve(&shared, PeerId::random(), server);

        let unknown = ChunkId::of(b"never stored");
        ask(&mut client, &Request::Chunks(vec![a, unknown, held, b])).await;
        // Served chunks come as stored, in the order asked; `unknown` and `held` (in the
        // store but in no served set) are not found.
        let chunk = |id: ChunkId| {
            let (encoded, len) = fx.store.get_encoded(&id).unwrap();
            Response::Chunk {
                id,
                encoded,
                raw_len: len as u32,
            }
        };
        let expected = [
            chunk(a),
            Response::NotFound(*unknown.as_bytes()),
            Response::NotFound(*held.as_bytes()),
            chunk(b),
            Response::End,
        ];
        for want in expected {
            assert_eq!(next(&mut client).await, Some(want));
        }

        // The stream carries the next requests.
        ask(&mut client, &Request::Manifest(SET)).await;
        assert_eq!(
            next(&mut client).await,
            Some(Response::Manifest(MANIFEST.to_vec()))
        );
        ask(&mut client, &Request::Manifest([9; 32])).await;
        assert_eq!(next(&mut client).await, Some(Response::NotFound([9; 32])));

        // A clean end of the stream ends its task, and the server closes its side.
        client.close().await.unwrap();
        served.await.unwrap();
        assert_eq!(next(&mut client).await, None);
        let s = stats(&shared);
        assert_eq!((s.requests, s.chunks, s.not_found), (3, 2, 3));
        assert_eq!((s.busy, s.refused), (0, 0));
        assert!(s.bytes > 2 * 16, "{s:?}");
    }

    #[tokio::test]
    async fn hostile_requests_close_the_stream_and_count_as_refused() {
        let fx = Fixture::new(1);
        let shared = fx.serving(ExchangeConfig::default(), &fx.chunks, (SET, MANIFEST));
        // Frames are `u32 BE length || body`.
        let oversize = ((MAX_REQUEST_BODY + 1) as u32).to_be_bytes().to_vec();
        let mut unknown_tag = 1u32.to_be_bytes().to_vec();
        unknown_tag.push(0xff);
        let no_ids = Request::Chunks(Vec::new()).encode();
        let repeated = Request::Chunks(vec![fx.chunks[0], fx.chunks[0]]).encode();
        let mut truncated_id = Request::Chunks(vec![fx.chunks[0]]).encode();
        truncated_id.truncate(truncated_id.len() - 1);
        let body_len = (truncated_id.len() - 4) as u32;
        truncated_id[..4].copy_from_slice(&body_len.to_be_bytes());
        let cases = [oversize, unknown_tag, no_ids, repeated, truncated_id];
        for (i, frame) in cases.iter().enumerate() {
            let (mut client, server) = pipe();
            let served = serve(&shared, PeerId::random(), server);
            client.write_all(frame).await.unwrap();
            client.flush().await.unwrap();
            // Nothing is answered: the server closes the stream.
            assert_eq!(next(&mut client).await, None, "case {i}");
            served.await.unwrap();
            assert_eq!(stats(&shared).refused, i as u64 + 1, "case {i}");
        }
        assert_eq!(stats(&shared).requests, 0);

        // A frame cut short by the end of the stream only closes it (not a malformed one).
        let (mut client, server) = pipe();
        let served = serve(&shared, PeerId::random(), server);
        client.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        client.close().await.unwrap();
        served.await.unwrap();
        assert_eq!(next(&mut client).await, None);
        assert_eq!(stats(&shared).refused, cases.len() as u64);
    }

    #[tokio::test]
    async fn a_peer_over_its_byte_rate_is_told_to_wait() {
        let fx = Fixture::new(1);
        let cfg = ExchangeConfig {
            rate: RateConfig {
                bytes_per_sec: 1000,
                burst_bytes: 1,
                ..RateConfig::default()
            },
            ..ExchangeConfig::default()
        };
        let shared = fx.serving(cfg, &fx.chunks, (SET, MANIFEST));
        let (mut client, server) = pipe();
        let served = serve(&shared, PeerId::random(), server);
        // The first request is served in full (the bucket was not empty) and leaves a debt.
        ask(&mut client, &Request::Chunks(fx.chunks.clone())).await;
        assert!(matches!(
            next(&mut client).await,
            Some(Response::Chunk { .. })
        ));
        assert_eq!(next(&mut client).await, Some(Response::End));
        // The next ones are refused with the time to wait, on the same stream.
        for _ in 0..2 {
            ask(&mut client, &Request::Manifest(SET)).await;
            match next(&mut client).await {
                Some(Response::Busy { retry_after_ms }) => {
                    assert!((1..=MAX_RETRY_AFTER_MS).contains(&retry_after_ms))
                }
                other => panic!("expected busy, got {other:?}"),
            }
        }
        client.close().await.unwrap();
        served.await.unwrap();
        let s = stats(&shared);
        assert_eq!((s.requests, s.busy, s.chunks), (3, 2, 1));
    }

    #[tokio::test]
    async fn a_peer_over_its_stream_limit_is_refused_with_busy() {
        let fx = Fixture::new(1);
        let cfg = ExchangeConfig {
            rate: RateConfig {
                max_streams_per_peer: 1,
                ..RateConfig::default()
            },
            ..ExchangeConfig::default()
        };
        let shared = fx.serving(cfg, &fx.chunks, (SET, MANIFEST));
        let peer = PeerId::random();
        // Once the first stream answers, it is admitted and holds the peer's only slot.
        let first = open_and_get_the_manifest(&shared, peer).await;
        let (mut second, server) = pipe();
        serve(&shared, peer, server).await.unwrap();
        assert!(matches!(
            next(&mut second).await,
            Some(Response::Busy { .. })
        ));
        assert_eq!(next(&mut second).await, None);
        assert_eq!(stats(&shared).refused, 1);
        // Another peer is not affected; the slot frees when the first stream ends.
        end(open_and_get_the_manifest(&shared, PeerId::random()).await).await;
        end(first).await;
        end(open_and_get_the_manifest(&shared, peer).await).await;
    }

    #[tokio::test]
    async fn a_silent_stream_is_closed_after_the_idle_timeout() {
        let fx = Fixture::new(1);
        let cfg = ExchangeConfig {
            idle_timeout: Duration::from_millis(50),
            ..ExchangeConfig::default()
        };
        let shared = fx.serving(cfg, &fx.chunks, (SET, MANIFEST));
        let (mut client, server) = pipe();
        let served = serve(&shared, PeerId::random(), server);
        // Half a frame, then nothing.
        client.write_all(&[0, 0]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the server gave up on the idle stream")
            .unwrap();
        assert_eq!(next(&mut client).await, None);
        assert_eq!(stats(&shared).refused, 0);
    }
}
