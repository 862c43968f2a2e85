//! A real `novacron node` under a connection flood on its REST API: 300 connections that
//! send nothing, from 30 loopback addresses, are capped by the listener (the rest turned
//! away at once), the daemon's descriptors stay bounded, every silent connection
//! is closed within the head deadline (10 s) instead of being kept for ever, and the node
//! answers as before. (The per-address cap, and the operator on loopback getting in while
//! remote callers fill the API, are tested in the API's own tests, which call from a
//! non-loopback address.)

#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mesh::{api_url, spawn_api_node};

const TIMEOUT: Duration = Duration::from_secs(60);

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A TCP connection to `to` from `source` (any loopback address works as a source on Linux).
fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sin = |ip: IpAddr, port: u16| {
            let IpAddr::V4(v4) = ip else {
                panic!("IPv4 only")
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(v4).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let from = sin(source, 0);
        assert_eq!(
            libc::bind(fd, &from as *const _ as *const libc::sockaddr, len),
            0,
            "bind {source}: {}",
            std::io::Error::last_os_error()
        );
        let dest = sin(to.ip(), to.port());
        assert_eq!(
            libc::connect(fd, &dest as *const _ as *const libc::sockaddr, len),
            0,
            "connect {to}: {}",
            std::io::Error::last_os_error()
        );
        use std::os::fd::FromRawFd;
        TcpStream::from_raw_fd(fd)
    }
}

/// Whether the server closed `conn` within `wait` (anything it wrote first is returned).
fn closed_within(conn: &mut TcpStream, wait: Duration) -> Option<String> {
    conn.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if got.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                return None
            }
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn api_addr(dir: &std::path::Path) -> SocketAddr {
    api_url(dir)
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

/// `GET /metrics` over a fresh connection.
fn scrape(to: SocketAddr) -> String {
    use std::io::Write;
    let mut conn = TcpStream::connect(to).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

fn status_works(dir: &std::path::Path) -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_novacron"))
        .args(["status", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn a_flood_of_silent_connections_is_capped_and_cut_and_the_node_keeps_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.yaml");
    std::fs::write(&config, "api: {maxConnections: 64}\n").unwrap();
    let mut node = spawn_api_node("n1", &dir, &["--config", config.to_str().unwrap()]);
    let to = api_addr(&dir);
    let baseline = fd_count(node.pid());

    let started = Instant::now();
    let mut conns = Vec::new();
    for host in 2..32u8 {
        for _ in 0..10 {
            conns.push(connect_from(IpAddr::from([127, 0, 0, host]), to));
        }
    }
    // Turned away at once: everything beyond 64 + the loopback reserve of 16.
    let mut refused = 0;
    let mut held = Vec::new();
    for mut c in conns {
        match closed_within(&mut c, Duration::from_millis(20)) {
            Some(text) => {
                assert!(
                    text.is_empty() || text.starts_with("HTTP/1.1 503"),
                    "{text}"
                );
                refused += 1;
            }
            None => held.push(c),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "classifying took too long to be meaningful: {:?}",
        started.elapsed()
    );
    assert_eq!(held.len(), 80, "{refused} refused\n{}", node.dump());
    let during = fd_count(node.pid());
    assert!(
        during <= baseline + 80 + 16,
        "the daemon holds {during} descriptors (baseline {baseline})"
    );
    // Every silent connection is closed by the daemon within its head deadline (10 s).
    for c in &mut held {
        let left = Duration::from_secs(25).saturating_sub(started.elapsed());
        assert!(
            closed_within(c, left.max(Duration::from_millis(1))).is_some(),
            "a silent connection was still open {:?} after it was made",
            started.elapsed()
        );
    }
    assert!(status_works(&dir), "{}", node.dump());
    let text = scrape(to);
    let refused_total: f64 = ["listener_full", "address_full"]
        .iter()
        .map(|reason| {
            let needle = format!("novacron_api_connections_refused_total{{reason=\"{reason}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(needle.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
        })
        .sum();
    assert_eq!(refused_total, refused as f64, "{text}");
    assert!(
        !node.stderr().contains("Too many open files"),
        "{}",
        node.dump()
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(node.pid(), libc::SIGTERM) };
    assert!(node.wait(TIMEOUT).success(), "{}", node.dump());
}
