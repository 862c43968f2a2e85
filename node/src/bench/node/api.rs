//! API latency: `GET /api/v1/vms` under closed-loop keep-alive clients, against an axum
//! server in this process answering the same bytes from memory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let request: Arc<[u8]> =
        format!("GET {API_PATH} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n")
            .into_bytes()
            .into();
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
            conns.push(s);
        }
        let from = Instant::now() + WARMUP;
        let until = from + Duration::from_secs(seconds);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(client_loop(s, request.clone(), from, until)))
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
    mut s: TcpStream,
    request: Arc<[u8]>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut chunk = vec![0u8; 16 << 10];
    let mut buf = Vec::with_capacity(16 << 10);
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(latencies);
        }
        s.write_all(&request).await?;
        buf.clear();
        let answer = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "the server closed a keep-alive connection after {} answers",
                    latencies.len()
                );
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(a) = parse_response(&buf)? {
                break a;
            }
        };
        let done = Instant::now();
        if answer.status != 200 {
            bail!("GET {API_PATH} answered {}", answer.status);
        }
        if answer.len != buf.len() {
            bail!(
                "the server sent {} bytes after the answer, unasked",
                buf.len() - answer.len
            );
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

/// One complete HTTP/1.1 answer at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Head and body, in bytes.
    len: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum AnswerError {
    #[error("the answer's head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the answer's head is not an HTTP/1.x status line and headers: {0}")]
    Malformed(String),
    #[error("the answer has no Content-Length (chunked or close-delimited bodies are not read)")]
    NoLength,
    #[error("the answer's body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
}

/// Whether `buf` holds a whole answer yet (sans-IO: the caller reads, this only looks).
/// Reads only Content-Length bodies: what axum sends for a JSON answer.
fn parse_response(buf: &[u8]) -> Result<Option<Answer>, AnswerError> {
    let scan = &buf[..buf.len().min(MAX_HEAD + 4)];
    let Some(end) = scan.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(AnswerError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| AnswerError::Malformed("not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let status = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| AnswerError::Malformed(format!("status {code:?}")))?,
        _ => return Err(AnswerError::Malformed(format!("{status_line:?}"))),
    };
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| AnswerError::Malformed(format!("header {line:?}")))?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AnswerError::NoLength);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| AnswerError::Malformed(format!("Content-Length {value:?}")))?,
            );
        }
    }
    let body = match (length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err(AnswerError::NoLength),
    };
    if body > MAX_BODY {
        return Err(AnswerError::BodyTooLarge(body));
    }
    let len = end + 4 + body;
    Ok((buf.len() >= len).then_some(Answer { status, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_only_with_their_whole_body() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        let whole = Answer {
            status: 200,
            len: answer.len(),
        };
        assert_eq!(parse_response(answer), Ok(Some(whole)));
        // Every prefix is incomplete, never an error.
        for cut in 0..answer.len() {
            assert_eq!(parse_response(&answer[..cut]), Ok(None), "cut at {cut}");
        }
        // A second answer behind the first is not counted in the first's length.
        let mut two = answer.to_vec();
        two.extend_from_slice(answer);
        assert_eq!(parse_response(&two).unwrap().unwrap().len, answer.len());
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(not_found).unwrap().unwrap().status, 404);
    }

    #[test]
    fn answers_the_clients_cannot_read_are_errors() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(AnswerError::NoLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n"),
            Err(AnswerError::NoLength)
        );
        assert!(matches!(
            parse_response(b"SSH-2.0-x\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_response(huge.as_bytes()),
            Err(AnswerError::BodyTooLarge(MAX_BODY + 1))
        );
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_response(&endless), Err(AnswerError::HeadTooLarge));
        assert_eq!(parse_response(&endless[..MAX_HEAD]), Ok(None));
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
