//! API latency: `GET /api/v1/vms` under closed-loop keep-alive clients, against an axum
//! server in this process answering the same bytes from memory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::measured_node::MeasuredNode;
use super::{idle_spec, ms, NodeBenchArgs};
use crate::bench::report::{percentile, Goal, Report};

/// API load before the measured span.
const WARMUP: Duration = Duration::from_secs(1);
/// VMs the API answers about, as a node with work does.
const API_VMS: usize = 4;
/// What the clients ask for.
pub(super) const API_PATH: &str = "/api/v1/vms";

pub(super) fn api_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (daemon, _) = MeasuredNode::start(rt, "api", &scratch.join("api"), None)?;
    let (running, body) = rt.block_on(async {
        let mut running = 0;
        for _ in 0..API_VMS {
            match daemon
                .create_running(&idle_spec(crate::api::types::default_mem_mib(), None))
                .await
            {
                Ok(_) => running += 1,
                // Its slots (one per CPU) are taken: as much work as the node takes.
                Err(e) if running > 0 && refused_for_capacity(&e) => break,
                Err(e) => return Err(e),
            }
        }
        anyhow::Ok((running, daemon.client.get_text(API_PATH).await?))
    })?;
    let measured = load(rt, daemon.api, args.clients, args.seconds)?;
    // The reference runs alone: the daemon and its VMs are gone by then.
    drop(daemon);
    let reference = reference_load(rt, Bytes::from(body.clone()), args)?;

    let p99 = measured.percentile(99.0);
    let ref_p99 = reference.percentile(99.0);
    report.add("api_p50_ms", measured.percentile(50.0), "ms", None);
    report.add("api_p99_ms", p99, "ms", Some(Goal::at_most(20.0)));
    report.add("api_max_ms", measured.percentile(100.0), "ms", None);
    report.add("api_requests_per_s", measured.per_second(), "1/s", None);
    report.add("api_body_bytes", body.len() as f64, "B", None);
    report.add(
        "reference_http_p50_ms",
        reference.percentile(50.0),
        "ms",
        None,
    );
    report.add("reference_http_p99_ms", ref_p99, "ms", None);
    report.add(
        "reference_http_max_ms",
        reference.percentile(100.0),
        "ms",
        None,
    );
    report.add(
        "reference_http_requests_per_s",
        reference.per_second(),
        "1/s",
        None,
    );
    report.add("api_p99_vs_reference", p99 / ref_p99.max(1e-9), "x", None);
    report.add(
        "api_requests_per_s_vs_reference",
        measured.per_second() / reference.per_second().max(1e-9),
        "x",
        None,
    );
    report.notes.push(format!(
        "api: GET {API_PATH} ({running} idle VMs, as many of {API_VMS} as the node's slots \
         take, {} B answers) by {} closed-loop clients on \
         one client thread, each its own keep-alive connection (set up before the clock \
         starts), {WARMUP:?} warm-up then {} s measured; latency is request written to \
         answer read; the reference is an axum server (axum-server, 2 worker threads like \
         the daemon) in the bench process answering the same bytes from memory",
        body.len(),
        args.clients,
        args.seconds
    ));
    Ok(())
}

/// Whether the node answered 503: it takes no more VMs now (its slots or memory are taken).
fn refused_for_capacity(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::api::client::ClientError>()
        .is_some_and(|c| matches!(c, crate::api::client::ClientError::Api { status: 503, .. }))
}

/// The latencies of one load run (ms, sorted) and the span they were counted over.
struct Load {
    sorted_ms: Vec<f64>,
    span: Duration,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.sorted_ms, p)
    }

    fn per_second(&self) -> f64 {
        self.sorted_ms.len() as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

/// `clients` connections to `addr`, each sending `GET /api/v1/vms` and waiting for the
/// answer in a loop: a warm-up, then `seconds` of requests whose latency is counted.
fn load(rt: &Runtime, addr: SocketAddr, clients: usize, seconds: u64) -> anyhow::Result<Load> {
    rt.block_on(async {
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let s = TcpStream::connect(addr).await.with_context(|| {
                format!(
                    "load client {} of {clients} cannot connect to {addr} (each client is a \
                     socket: lower --clients or raise `ulimit -n`)",
                    i + 1
                )
            })?;
            s.set_nodelay(true)?;
            conns.push(LoadConn::open(s, addr).await?);
        }
        let from = Instant::now() + WARMUP;
        let until = from + Duration::from_secs(seconds);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|c| tokio::spawn(client_loop(c, from, until)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.context("a load client panicked")??);
        }
        all.sort_by(f64::total_cmp);
        Ok(Load {
            sorted_ms: all,
            span: until - from,
        })
    })
}

/// One client: request, read the whole answer, again, until `until`; the latencies (ms) of
/// the requests sent from `from` on.
async fn client_loop(
    mut conn: LoadConn,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(latencies);
        }
        let answer = conn.get().await.with_context(|| {
            format!(
                "GET {API_PATH} on a keep-alive connection after {} answers",
                latencies.len()
            )
        })?;
        let done = Instant::now();
        if answer.status != 200 {
            bail!("GET {API_PATH} answered {}", answer.status);
        }
        if sent >= from {
            latencies.push(ms(done - sent));
        }
    }
}

/// The same load against an axum server in this process that answers `GET /api/v1/vms`
/// with `body` from memory: the floor of HTTP on this machine.
fn reference_load(rt: &Runtime, body: Bytes, args: &NodeBenchArgs) -> anyhow::Result<Load> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the reference server's runtime")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        API_PATH,
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(hyper::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let server = server_rt.spawn(axum_server::from_tcp(listener).serve(app.into_make_service()));
    let result = load(rt, addr, args.clients, args.seconds);
    server.abort();
    server_rt.shutdown_background();
    result
}

/// The largest answer head and body the load clients read.
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 16 << 20;

/// One load client's keep-alive HTTP/1.1 connection, by hyper's `conn::http1` as the REST
/// client ([`crate::api::client`]) uses it: it asks `GET /api/v1/vms` and reads each whole
/// answer.
struct LoadConn {
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection; ends with it.
    driver: tokio::task::JoinHandle<()>,
    host: HeaderValue,
}

/// One complete answer: its status and how long its body was.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body_len: usize,
}

#[derive(Debug, thiserror::Error)]
enum AnswerError {
    /// The connection failed, or the answer was not HTTP/1.x the client can read (a head
    /// over [`MAX_HEAD`] included).
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the answer's body is over the {MAX_BODY}-byte limit")]
    BodyTooLarge,
    #[error("the answer's body: {0}")]
    Body(String),
}

impl LoadConn {
    /// A connection on `stream` (connected to `addr`); no bytes move yet.
    async fn open(stream: TcpStream, addr: SocketAddr) -> anyhow::Result<LoadConn> {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("load connection ended: {e}");
            }
        });
        let host = HeaderValue::from_str(&addr.to_string()).context("Host header")?;
        Ok(LoadConn {
            sender,
            driver,
            host,
        })
    }

    /// Sends `GET /api/v1/vms` and reads its whole answer.
    async fn get(&mut self) -> Result<Answer, AnswerError> {
        let mut request = hyper::Request::new(Empty::new());
        *request.uri_mut() = hyper::Uri::from_static(API_PATH);
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        headers.insert(
            hyper::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        self.sender.ready().await?;
        let answer = self.sender.send_request(request).await?;
        let status = answer.status().as_u16();
        let body = answer.into_body();
        if body.size_hint().lower() > MAX_BODY as u64 {
            return Err(AnswerError::BodyTooLarge);
        }
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => AnswerError::Http(*e),
                Err(e) if e.is::<LengthLimitError>() => AnswerError::BodyTooLarge,
                Err(e) => AnswerError::Body(e.to_string()),
            })?;
        Ok(Answer {
            status,
            body_len: body.to_bytes().len(),
        })
    }
}

impl Drop for LoadConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a [`LoadConn`] makes of `bytes` sent (in small pieces) as the answer to its
    /// request by a server that then closes the connection, or keeps it open when `hold`.
    async fn answer_to(bytes: Vec<u8>, hold: bool) -> Result<Answer, AnswerError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = s.read(&mut request).await;
            for piece in bytes.chunks(7) {
                if s.write_all(piece).await.and(s.flush().await).is_err() {
                    return;
                }
            }
            if hold {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = LoadConn::open(stream, addr).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), conn.get())
            .await
            .expect("an answer or an error in time");
        server.abort();
        got
    }

    #[tokio::test]
    async fn answers_are_complete_only_with_their_whole_body() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        let whole = Answer {
            status: 200,
            body_len: 2,
        };
        assert_eq!(answer_to(answer.to_vec(), true).await.unwrap(), whole);
        // Cut anywhere, the server closing: an error, never an answer.
        for cut in [0, 10, answer.len() - 3, answer.len() - 1] {
            let got = answer_to(answer[..cut].to_vec(), false).await;
            assert!(got.is_err(), "cut at {cut}: {got:?}");
        }
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            answer_to(not_found.to_vec(), true).await.unwrap().status,
            404
        );
        // hyper reads chunked bodies too (the hand-written parser refused them).
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n";
        assert_eq!(answer_to(chunked.to_vec(), true).await.unwrap(), whole);
    }

    #[tokio::test]
    async fn answers_the_clients_cannot_read_are_errors() {
        let got = answer_to(b"SSH-2.0-x\r\n\r\n".to_vec(), true).await;
        assert!(matches!(got, Err(AnswerError::Http(_))), "{got:?}");
        let got = answer_to(
            b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n".to_vec(),
            true,
        )
        .await;
        assert!(matches!(got, Err(AnswerError::Http(_))), "{got:?}");
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let got = answer_to(huge.into_bytes(), true).await;
        assert!(matches!(got, Err(AnswerError::BodyTooLarge)), "{got:?}");
        let mut endless = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        endless.resize(MAX_HEAD + 1, b'a');
        let got = answer_to(endless, true).await;
        assert!(matches!(got, Err(AnswerError::Http(_))), "{got:?}");
    }

    #[test]
    fn load_figures_count_requests_over_the_span() {
        let load = Load {
            sorted_ms: (1..=1000).map(|i| f64::from(i) / 10.0).collect(),
            span: Duration::from_secs(5),
        };
        assert_eq!(load.per_second(), 200.0);
        assert_eq!(load.percentile(50.0), 50.0);
        assert_eq!(load.percentile(99.0), 99.0);
        assert_eq!(load.percentile(100.0), 100.0);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
