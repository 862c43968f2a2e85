//! The accept loop of a hostile-facing HTTP/1.1 listener: every accepted connection takes a
//! place in the [`ConnectionGate`] or is closed at once (plain HTTP callers get a 503 saying
//! why), is [`Watched`] for silence, finishes its TLS handshake and each request head within
//! a deadline, and is served by hyper's HTTP/1 connection (WebSocket upgrades included) with
//! the caller's address known to the handlers (`ConnectInfo<SocketAddr>`).
//!
//! HTTP/1.1 only: nothing the API serves needs HTTP/2, and HTTP/2's own flow control would
//! be one more way to hold a connection open.
//!
//! On shutdown the listener closes at once; open connections finish the request they are in
//! (graceful) within the grace, and are dropped after it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::connections::{ConnectionCaps, ConnectionGate, Refusal};
use super::watched::Watched;
use crate::metrics::Metrics;

/// Longest request head read (headers included).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    pub caps: ConnectionCaps,
    /// A TLS handshake, and each request head, must arrive within this.
    pub head_timeout: Duration,
    /// A connection on which no byte moves for this long is closed.
    pub idle_timeout: Duration,
    /// How long open connections get to finish after shutdown.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then waits (up to the grace) for
/// open connections. Connections open and refused are counted in `metrics` when given (the
/// API's; the dashboard's listener is not counted there).
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ListenerLimits,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()>,
) {
    let gauge = metrics.clone();
    let gate = ConnectionGate::observed(limits.caps, move |open| {
        if let Some(m) = &gauge {
            m.api_connections(open)
        }
    });
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept_errors = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let permit = match gate.enter(peer.ip()) {
                        Ok(permit) => permit,
                        Err(refusal) => {
                            refuse(&tcp, refusal, tls.is_some(), metrics.as_deref());
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let io = Watched::new(tcp, permit, limits.head_timeout, limits.idle_timeout);
                    let conn = Connection {
                        app: app.clone(),
                        peer,
                        limits,
                        stopped: stopped.clone(),
                    };
                    let tls = tls.clone();
                    connections.spawn(conn.serve(io, tls));
                }
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                    // taken: the caps keep the first rare; wait a moment rather than spin.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = accept_errors, "API: cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::debug!(
            left = connections.len(),
            "API connections cut at the end of the grace"
        );
        connections.shutdown().await;
    }
}

/// Turns a connection away without waiting for it: a plain HTTP caller is told why in a
/// 503 written only if the socket takes it at once.
fn refuse(tcp: &TcpStream, refusal: Refusal, tls: bool, metrics: Option<&Metrics>) {
    if let Some(m) = metrics {
        m.api_connection_refused(refusal.label());
    }
    tracing::debug!(peer = ?tcp.peer_addr().ok(), ?refusal, "API connection refused");
    if tls {
        return;
    }
    let body = serde_json::json!({ "error": refusal.message() }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(answer.as_bytes());
}

/// One accepted connection.
struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ListenerLimits,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, io: Watched<TcpStream>, tls: Option<TlsAcceptor>) {
        match tls {
            None => self.http(io).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.head_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => self.http(stream).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn http<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let service = self
            .app
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.head_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            // Told to stop (or the accept loop is gone).
            _ = self.stopped.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "API connection ended with an error");
        }
    }
}
