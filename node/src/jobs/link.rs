//! The job protocol on the mesh: `/novacron/job/1` streams, one request and one response
//! each ([`super::wire`]). [`JobLink::start`] serves requests with a handler; [`JobLink::request`]
//! asks a peer.
//!
//! Serving is hostile-facing: at most [`JobLinkConfig::max_in_flight`] requests are handled at
//! once (a stream beyond that is closed unanswered), a request must arrive within
//! `read_timeout`, and frames are bounded by [`MAX_FRAME`]. A request that does not decode is
//! answered with a refusal naming the fault, never handled.
//!
//! libp2p-stream's accept queue holds one stream and drops the next if two arrive before the
//! accept loop takes the first (see `mesh_migration`): a stream that ends before any answer is
//! opened again, up to [`OPEN_TRIES`] times. Requests are idempotent for that reason (a
//! placement of a replica already placed on the node answers with the same VM).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use novacron_mesh::swarm::{MeshNode, PeerId, Stream, StreamProtocol};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::wire::{body_len, JobRequest, JobResponse, WireError, LEN_PREFIX, MAX_FRAME};

pub const JOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/novacron/job/1");

/// Times a stream is opened before a drop by the peer's accept queue counts as a failure.
pub const OPEN_TRIES: u32 = 3;

#[derive(Clone, Debug)]
pub struct JobLinkConfig {
    /// Opening a stream (dialling the peer if needed).
    pub open_timeout: Duration,
    /// From the request sent to the answer read (the peer's handler included).
    pub answer_timeout: Duration,
    /// Serving: the request must arrive within this.
    pub read_timeout: Duration,
    /// Serving: requests handled at once, all peers together.
    pub max_in_flight: usize,
}

impl Default for JobLinkConfig {
    fn default() -> Self {
        JobLinkConfig {
            open_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            max_in_flight: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("job protocol: {protocol} is already served on this node", protocol = JOB_PROTOCOL)]
    AlreadyStarted,
    #[error("job protocol: cannot open a stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    #[error("job protocol: {peer} did not {what} within {after:?}")]
    Timeout {
        peer: PeerId,
        what: &'static str,
        after: Duration,
    },
    #[error("job protocol: {peer}: {source}")]
    Io {
        peer: PeerId,
        source: std::io::Error,
    },
    #[error("job protocol: {peer} answered with something unreadable: {reason}")]
    Protocol { peer: PeerId, reason: String },
    #[error("job protocol: cannot encode the request: {0}")]
    Encode(WireError),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Answers one valid request from a peer.
pub type Handler = Arc<dyn Fn(PeerId, JobRequest) -> BoxFuture<JobResponse> + Send + Sync>;
type Opener = dyn Fn(PeerId) -> BoxFuture<Result<Stream, String>> + Send + Sync;

/// Serving and asking on `/novacron/job/1`; serving stops when this is dropped.
pub struct JobLink {
    opener: Arc<Opener>,
    cfg: JobLinkConfig,
    accept: JoinHandle<()>,
}

impl Drop for JobLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl JobLink {
    /// Serves the protocol on `mesh` with `handler`. Must run inside a tokio runtime.
    pub fn start(
        mesh: &MeshNode,
        handler: Handler,
        cfg: JobLinkConfig,
    ) -> Result<JobLink, LinkError> {
        let mut control = mesh.stream_control();
        let incoming = control
            .accept(JOB_PROTOCOL)
            .map_err(|_| LinkError::AlreadyStarted)?;
        let accept = tokio::spawn(accept_loop(incoming, handler, cfg.clone()));
        let opener: Arc<Opener> = Arc::new(move |peer| {
            let mut control = control.clone();
            Box::pin(async move {
                control
                    .open_stream(peer, JOB_PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        Ok(JobLink {
            opener,
            cfg,
            accept,
        })
    }

    /// Sends `request` to `peer` and reads its answer.
    pub async fn request(
        &self,
        peer: PeerId,
        request: &JobRequest,
    ) -> Result<JobResponse, LinkError> {
        let frame = request.encode().map_err(LinkError::Encode)?;
        for _ in 0..OPEN_TRIES {
            let mut s = self.open(peer).await?;
            let sent = async {
                s.write_all(&frame).await?;
                s.flush().await
            };
            match tokio::time::timeout(self.cfg.open_timeout, sent).await {
                Err(_) => {
                    return Err(LinkError::Timeout {
                        peer,
                        what: "take the request",
                        after: self.cfg.open_timeout,
                    })
                }
                Ok(Err(e)) if retryable(&e) => continue,
                Ok(Err(source)) => return Err(LinkError::Io { peer, source }),
                Ok(Ok(())) => {}
            }
            let after = self.cfg.answer_timeout;
            let body = match tokio::time::timeout(after, read_frame(&mut s)).await {
                Err(_) => {
                    return Err(LinkError::Timeout {
                        peer,
                        what: "answer",
                        after,
                    })
                }
                // Dropped before anything was read (see the module doc): open again.
                Ok(Ok(None)) => continue,
                Ok(Err(ReadError::Io(e))) if retryable(&e) => continue,
                Ok(Err(e)) => {
                    return Err(LinkError::Protocol {
                        peer,
                        reason: e.to_string(),
                    })
                }
                Ok(Ok(Some(body))) => body,
            };
            let _ = s.close().await;
            return JobResponse::decode(&body).map_err(|e| LinkError::Protocol {
                peer,
                reason: e.to_string(),
            });
        }
        Err(LinkError::Protocol {
            peer,
            reason: format!("closed the stream {OPEN_TRIES} times without answering"),
        })
    }

    async fn open(&self, peer: PeerId) -> Result<Stream, LinkError> {
        let after = self.cfg.open_timeout;
        match tokio::time::timeout(after, (self.opener)(peer)).await {
            Err(_) => Err(LinkError::Timeout {
                peer,
                what: "accept a job stream",
                after,
            }),
            Ok(Err(reason)) => Err(LinkError::Open { peer, reason }),
            Ok(Ok(s)) => Ok(s),
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] WireError),
}

/// One length-prefixed frame, bounded by [`MAX_FRAME`]; None at end of stream before it.
async fn read_frame(s: &mut Stream) -> Result<Option<Vec<u8>>, ReadError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < prefix.len() {
        let n = s.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = body_len(prefix)?;
    debug_assert!(len <= MAX_FRAME);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn accept_loop<I>(mut incoming: I, handler: Handler, cfg: JobLinkConfig)
where
    I: futures::Stream<Item = (PeerId, Stream)> + Unpin,
{
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    while let Some((peer, stream)) = incoming.next().await {
        // Over the cap: the stream is dropped unanswered (the peer sees it closed).
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "job request refused: too many in flight");
            continue;
        };
        let handler = handler.clone();
        let read_timeout = cfg.read_timeout;
        let answer_timeout = cfg.answer_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            serve_one(peer, stream, handler, read_timeout, answer_timeout).await;
        });
    }
}

async fn serve_one(
    peer: PeerId,
    mut stream: Stream,
    handler: Handler,
    read_timeout: Duration,
    answer_timeout: Duration,
) {
    let body = match tokio::time::timeout(read_timeout, read_frame(&mut stream)).await {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            reply(&mut stream, &JobResponse::refuse(e.to_string())).await;
            return;
        }
    };
    let response = match JobRequest::decode(&body) {
        Ok(request) => match tokio::time::timeout(answer_timeout, handler(peer, request)).await {
            Ok(r) => r,
            Err(_) => JobResponse::refuse("the node took too long to answer"),
        },
        Err(e) => JobResponse::refuse(format!("bad request: {e}")),
    };
    reply(&mut stream, &response).await;
}

async fn reply(stream: &mut Stream, response: &JobResponse) {
    let frame = match response.encode() {
        Ok(f) => f,
        Err(e) => match JobResponse::refuse(format!("cannot encode the answer: {e}")).encode() {
            Ok(f) => f,
            Err(_) => return,
        },
    };
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    let _ = stream.close().await;
}
