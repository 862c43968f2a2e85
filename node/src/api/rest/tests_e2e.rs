//! The API over real sockets: [`serve`] on loopback and on a non-loopback address of this
//! machine (auth as a remote caller sees it), HTTPS with the self-signed certificate, the
//! WebSocket streams, and a Prometheus scrape.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::fake::{self, Fake};
use super::listener::ListenerLimits;
use super::serve::{serve, serve_with, BoundApi};
use crate::api::types::{EventEnvelope, MigrationInfo, MigrationState, NodeEvent};
use crate::config::ApiConfig;

const TOKEN: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

pub(super) struct Running {
    pub(super) api: BoundApi,
    stop: oneshot::Sender<()>,
    pub(super) fake: Arc<Fake>,
    pub(super) _dir: tempfile::TempDir,
}

impl Running {
    pub(super) async fn shut(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.api.stopped())
            .await
            .expect("the server stops within its grace")
            .unwrap();
    }
}

async fn start(host: IpAddr, tls: bool, capacity: usize) -> Running {
    start_with(host, tls, capacity, None).await
}

/// A server on `host` (TLS or not) over a fake node, with the listener's limits given or
/// from the default configuration.
pub(super) async fn start_with(
    host: IpAddr,
    tls: bool,
    capacity: usize,
    limits: Option<ListenerLimits>,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.token"), format!("{TOKEN}\n")).unwrap();
    let config = ApiConfig {
        host,
        port: 0,
        tls_enabled: tls,
        ..ApiConfig::default()
    };
    let fake = Fake::new(capacity);
    let (stop, stopped) = oneshot::channel::<()>();
    let api = serve_with(
        &config,
        limits.unwrap_or_else(|| super::serve::limits(&config)),
        dir.path(),
        fake.clone(),
        fake.metrics.clone(),
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    Running {
        api,
        stop,
        fake,
        _dir: dir,
    }
}

/// One HTTP/1.1 request on `stream` (Connection: close); status, headers, body.
fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: node\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after Connection: close.
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A plain HTTP request to `to`, off the async runtime. A client on this machine calling a
/// non-loopback address of it has that address as its source (the kernel routes it over
/// lo), so the server sees a remote caller.
async fn http(to: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let path = path.to_string();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(to).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        exchange(stream, "GET", &path, token.as_deref())
    })
    .await
    .unwrap()
}

/// A non-loopback IPv4 address of this machine, if it has one.
pub(super) fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills the pointer with a list freed below; entries are only read.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET {
                let sin = &*(sa as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_callers_need_no_token_and_the_url_file_names_the_port() {
    let node = start("127.0.0.1".parse().unwrap(), false, 64).await;
    let addr = node.api.addr;
    assert_ne!(addr.port(), 0);
    let url = std::fs::read_to_string(node._dir.path().join("api.url")).unwrap();
    assert_eq!(url.trim(), format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(node.api.url, url.trim());

    let (status, _, body) = http(addr, "/api/v1/node", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("12D3KooWSelf"));
    let (status, _, body) = http(addr, "/api/v1/nope", None).await;
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");

    let (status, head, text) = http(addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    for family in crate::metrics::FAMILIES {
        assert!(
            scrape.docs.contains_key(family),
            "{family} missing in\n{text}"
        );
    }
    let node_requests = scrape.samples.iter().find(|s| {
        s.metric == "novacron_api_requests_total" && s.labels.get("route") == Some("/api/v1/node")
    });
    assert!(node_requests.is_some(), "{text}");
    node.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_off_loopback_need_the_token() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped: this host has no non-loopback IPv4 address to call from");
        return;
    };
    let node = start(ip, false, 64).await;
    let addr = node.api.addr;
    assert_eq!(addr.ip(), ip);
    // The client's source address is the non-loopback one (same host, routed over lo).
    let (status, head, body) = http(addr, "/api/v1/node", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _, _) = http(addr, "/metrics", None).await;
    assert_eq!(status, 401, "/metrics follows the same rule");
    let (status, _, body) = http(addr, "/api/v1/node", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http(addr, "/api/v1/node", Some("0a1b")).await;
    assert_eq!(status, 401);
    node.shut().await;

    // Bound on every address: the same node trusts loopback and asks others for the token.
    let node = start("0.0.0.0".parse().unwrap(), false, 64).await;
    let port = node.api.addr.port();
    let local = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let (status, _, _) = http(local, "/api/v1/node", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = http(SocketAddr::new(ip, port), "/api/v1/node", None).await;
    assert_eq!(status, 401);
    node.shut().await;
}

pub(super) fn tls_client(trusted: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(trusted).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

async fn https(
    client: Arc<rustls::ClientConfig>,
    to: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(to).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake so a refused certificate shows as an error here.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        let (status, _, body) = exchange(tls, "GET", &path, None);
        Ok((status, body))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_self_signed_certificate_and_its_fingerprint() {
    let node = start("127.0.0.1".parse().unwrap(), true, 64).await;
    let cert = node._dir.path().join("tls.crt");
    assert!(
        node.api.url.starts_with("https://127.0.0.1:"),
        "{}",
        node.api.url
    );
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(
        node.api.tls_fingerprint.as_deref(),
        Some(super::tls::fingerprint(der.as_ref()).as_str())
    );

    let (status, body) = https(tls_client(&cert), node.api.addr, "/api/v1/node")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("12D3KooWSelf"));

    // A client that trusts another certificate refuses this one.
    let other = tempfile::tempdir().unwrap();
    super::tls::setup(
        &ApiConfig {
            tls_enabled: true,
            ..ApiConfig::default()
        },
        other.path(),
    )
    .unwrap();
    let err = https(
        tls_client(&other.path().join("tls.crt")),
        node.api.addr,
        "/api/v1/node",
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    node.shut().await;
}

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let req = format!("ws://{addr}{path}").into_client_request().unwrap();
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_events_in_order_and_closes_on_lag() {
    let node = start("127.0.0.1".parse().unwrap(), false, 256).await;
    let mut ws = ws_connect(node.api.addr, "/api/v1/events").await;
    for i in 0..50u64 {
        node.fake.publish(NodeEvent::Draining { deadline_s: i });
    }
    for i in 0..50u64 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("event within 10 s")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else {
            panic!("{msg:?}")
        };
        let e: EventEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(e.seq, i);
        assert_eq!(e.event, NodeEvent::Draining { deadline_s: i });
    }
    ws.close(None).await.unwrap();
    node.shut().await;

    // A client that does not read falls behind a small channel and is told so.
    let node = start("127.0.0.1".parse().unwrap(), false, 8).await;
    let mut ws = ws_connect(node.api.addr, "/api/v1/events").await;
    let mut vm = fake::migration("m-big", "vm0");
    vm.error = Some("x".repeat(32 * 1024));
    for _ in 0..1000 {
        node.fake.publish(NodeEvent::Migration {
            migration: Box::new(vm.clone()),
        });
    }
    let mut texts = 0;
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("the stream ends")
            .expect("a close frame before the end")
            .unwrap();
        match msg {
            Message::Text(_) => texts += 1,
            Message::Close(frame) => break frame.expect("a close reason"),
            _ => {}
        }
    };
    assert!(texts < 1000, "{texts}");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("too slow"), "{}", close.reason);
    node.shut().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_msg(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
        .expect("a good frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_watch_sends_now_then_changes_and_closes_on_the_final_state() {
    let node = start("127.0.0.1".parse().unwrap(), false, 64).await;
    node.fake
        .migrations
        .lock()
        .unwrap()
        .insert("m0".into(), fake::migration("m0", "vm0"));
    let mut ws = ws_connect(node.api.addr, "/api/v1/migrations/m0/watch").await;
    let Message::Text(first) = next_msg(&mut ws).await else {
        panic!()
    };
    let m: MigrationInfo = serde_json::from_str(&first).unwrap();
    assert_eq!(m.state, MigrationState::Running);
    node.fake.publish(NodeEvent::Draining { deadline_s: 1 });
    let mut other = fake::migration("m1", "vm1");
    other.state = MigrationState::Failed;
    node.fake.publish(NodeEvent::Migration {
        migration: Box::new(other),
    });
    node.fake.update_migration("m0", MigrationState::Done);
    let Message::Text(second) = next_msg(&mut ws).await else {
        panic!()
    };
    let m: MigrationInfo = serde_json::from_str(&second).unwrap();
    assert_eq!((m.id.as_str(), m.state), ("m0", MigrationState::Done));
    let Message::Close(Some(frame)) = next_msg(&mut ws).await else {
        panic!("a close after the final state")
    };
    assert_eq!(frame.code, CloseCode::Normal);
    assert!(frame.reason.contains("done"), "{}", frame.reason);
    drop(ws);
    node.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        port,
        ..ApiConfig::default()
    };
    let fake = Fake::new(4);
    let err = serve(
        &config,
        dir.path(),
        fake.clone(),
        fake.metrics.clone(),
        async {},
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("api.port"), "{err}");
    drop(taken);
}
