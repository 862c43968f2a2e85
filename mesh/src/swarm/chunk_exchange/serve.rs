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

async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
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
    if !shared.sets_read().chunks.contains(&id) {
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
