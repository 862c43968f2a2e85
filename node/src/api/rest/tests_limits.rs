//! The API's listener under hostile callers, over real sockets: hundreds of idle
//! connections are capped per address and per listener and cut when silent, the operator on
//! loopback still gets in while remote callers fill the API, slow heads and stalled bodies
//! are cut, a silent TLS caller is cut, and every place is given back.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::connections::{ConnectionCaps, LOOPBACK_RESERVE};
use super::listener::ListenerLimits;
use super::tests_e2e::{non_loopback_ipv4, start_with, Running};

/// Caps as given; heads (and TLS handshakes) due within `head_s`, silence cut after 2 s.
fn limits(max: usize, per_address: usize, head_s: u64) -> ListenerLimits {
    ListenerLimits {
        caps: ConnectionCaps { max, per_address },
        head_timeout: Duration::from_secs(head_s),
        idle_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
    }
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// What the server did with a connection within `wait`: nothing yet (held), or closed it,
/// with whatever it wrote first.
#[derive(Debug)]
enum Seen {
    Held,
    Closed(String),
}

async fn seen(conn: &mut TcpStream, wait: Duration) -> Seen {
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Err(_) if got.is_empty() => Seen::Held,
        _ => Seen::Closed(String::from_utf8_lossy(&got).into_owned()),
    }
}

/// Classifies every connection at once (each waits `wait`).
async fn classify(conns: &mut [TcpStream], wait: Duration) -> Vec<Seen> {
    futures::future::join_all(conns.iter_mut().map(|c| seen(c, wait))).await
}

fn count_held(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s, Seen::Held)).count()
}

async fn open_connections(node: &Running) -> f64 {
    let text = node.fake.metrics.encode();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "novacron_api_connections")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
        .unwrap()
}

async fn get_status(to: SocketAddr) -> u16 {
    let mut conn = TcpStream::connect(to).await.unwrap();
    conn.write_all(b"GET /api/v1/node HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut text))
        .await
        .expect("an answer")
        .unwrap();
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_silent_callers_are_capped_and_cut_and_every_place_given_back() {
    let max = 64;
    // Long enough a head deadline that the first callers still hold their places while the
    // others connect on a loaded machine.
    let node = start_with(
        "127.0.0.1".parse().unwrap(),
        false,
        64,
        Some(limits(max, 16, 6)),
    )
    .await;
    let to = node.api.addr;

    // 300 from 30 loopback addresses: the listener holds its cap plus the loopback reserve,
    // and turns the rest away at once, saying why.
    let mut conns = Vec::new();
    for host in 2..32u8 {
        let source = IpAddr::from([127, 0, 0, host]);
        for _ in 0..10 {
            conns.push(connect_from(source, to).await);
        }
    }
    let seen_all = classify(&mut conns, Duration::from_millis(1500)).await;
    assert_eq!(
        count_held(&seen_all),
        max + LOOPBACK_RESERVE,
        "{seen_all:?}"
    );
    for s in &seen_all {
        if let Seen::Closed(text) = s {
            assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
            assert!(text.contains("holds its cap of 64 connections"), "{text:?}");
        }
    }

    // Silent: every held connection is cut (head timeout 6 s after it was accepted), and
    // every place is given back.
    let started = Instant::now();
    let mut held: Vec<TcpStream> = conns
        .into_iter()
        .zip(&seen_all)
        .filter(|(_, s)| matches!(s, Seen::Held))
        .map(|(c, _)| c)
        .collect();
    let after = classify(&mut held, Duration::from_secs(12)).await;
    assert_eq!(count_held(&after), 0, "{after:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_connections(&node).await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_connections(&node).await, 0.0);
    let text = node.fake.metrics.encode();
    let refused = 300 - max - LOOPBACK_RESERVE;
    assert!(
        text.contains(&format!(
            "novacron_api_connections_refused_total{{reason=\"listener_full\"}} {refused}"
        )),
        "{text}"
    );

    // And the API answers as before.
    assert_eq!(get_status(to).await, 200);
    node.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_address_is_capped_and_the_operator_on_loopback_still_gets_in() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address to call from");
        return;
    };
    // The address's cap: 8 of 20 held, the rest told which cap.
    let node = start_with(
        "0.0.0.0".parse().unwrap(),
        false,
        64,
        Some(limits(32, 8, 6)),
    )
    .await;
    let remote = SocketAddr::new(ip, node.api.addr.port());
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(connect_from(ip, remote).await);
    }
    let seen_one_address = classify(&mut conns, Duration::from_millis(1500)).await;
    assert_eq!(count_held(&seen_one_address), 8, "{seen_one_address:?}");
    assert!(seen_one_address.iter().all(|s| match s {
        Seen::Held => true,
        Seen::Closed(t) => t.contains("your address holds its cap of 8"),
    }));
    drop(conns);
    node.shut().await;

    // The listener's cap, filled from off the machine: the operator still gets in.
    let max = 8;
    let node = start_with(
        "0.0.0.0".parse().unwrap(),
        false,
        64,
        Some(limits(max, max, 6)),
    )
    .await;
    let port = node.api.addr.port();
    let remote = SocketAddr::new(ip, port);
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(connect_from(ip, remote).await);
    }
    let seen = classify(&mut conns, Duration::from_millis(1500)).await;
    assert_eq!(count_held(&seen), max, "{seen:?}");
    assert_eq!(
        get_status(SocketAddr::new([127, 0, 0, 1].into(), port)).await,
        200
    );
    let mut one_more = connect_from(ip, remote).await;
    assert!(matches!(
        seen_one(&mut one_more).await,
        Seen::Closed(t) if t.contains("the node's API holds its cap of 8")
    ));
    drop(conns);
    node.shut().await;
}

async fn seen_one(conn: &mut TcpStream) -> Seen {
    seen(conn, Duration::from_millis(1500)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_and_a_stalled_body_are_cut() {
    let node = start_with(
        "127.0.0.1".parse().unwrap(),
        false,
        64,
        Some(limits(64, 16, 2)),
    )
    .await;
    let to = node.api.addr;

    // Slowloris: a header byte every 300 ms never finishes the head; cut at the head
    // timeout (2 s) although bytes keep coming.
    let mut slow = TcpStream::connect(to).await.unwrap();
    slow.write_all(b"GET /api/v1/node HTTP/1.1\r\nHost: n\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow_write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), slow_read.read_to_end(&mut answer)).await;
    let cut = started.elapsed();
    trickle.abort();
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(5),
        "the trickled head was cut after {cut:?}"
    );

    // A body that stops halfway: no byte moves for the idle timeout, so the connection goes.
    let mut stalled = TcpStream::connect(to).await.unwrap();
    stalled
        .write_all(
            b"POST /api/v1/vms HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"guest\":",
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert!(matches!(
        seen(&mut stalled, Duration::from_secs(8)).await,
        Seen::Closed(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    node.shut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_caller_is_cut_at_the_handshake_deadline() {
    let node = start_with(
        "127.0.0.1".parse().unwrap(),
        true,
        64,
        Some(limits(64, 16, 2)),
    )
    .await;
    let mut silent = TcpStream::connect(node.api.addr).await.unwrap();
    let started = Instant::now();
    assert!(matches!(
        seen(&mut silent, Duration::from_secs(8)).await,
        Seen::Closed(_)
    ));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    node.shut().await;
}
