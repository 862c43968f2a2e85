//! A fault-injecting TCP proxy between a migration source and its destination. It
//! accepts on 127.0.0.1:0, connects each connection to the real destination and pumps both
//! directions in threads. It can limit the bandwidth source -> destination (all
//! connections together), drop every connection, stall (stop forwarding, sockets kept
//! open) and corrupt a run of bytes of one stream in flight.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the preamble every migration connection starts with; its 7th byte is the
/// stream's index (0 control, 1.. data).
const PREAMBLE_LEN: u64 = 24;
const INDEX_BYTE: u64 = 6;

/// XOR `len` bytes from `offset` (counted from the connection's first byte, preamble
/// included) of the source -> destination direction of the stream with index `stream`.
#[derive(Clone, Copy, Debug)]
pub struct Corrupt {
    pub stream: u8,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyConfig {
    /// Bytes per second source -> destination, over all connections together.
    pub rate_bps: Option<u64>,
    pub corrupt: Option<Corrupt>,
}

struct Shared {
    target: SocketAddr,
    cfg: ProxyConfig,
    closing: AtomicBool,
    stalled: AtomicBool,
    /// Both ends of every connection, to shut them all down at once.
    sockets: Mutex<Vec<TcpStream>>,
    /// Bytes forwarded source -> destination, all connections.
    forwarded: AtomicU64,
    connections: AtomicUsize,
    corrupted: AtomicU64,
    /// When the rate limit lets the next bytes go.
    next_send: Mutex<Instant>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(target: SocketAddr, cfg: ProxyConfig) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local address");
        if cfg.rate_bps.is_some() {
            // A rate-limited link is only a bottleneck if the source cannot park megabytes
            // in the proxy's socket buffers: with autotuned buffers (several MB per
            // connection on loopback) the source can have written everything, state
            // included, while `forwarded` still says a fraction, and a kill "mid-transfer"
            // lands after the switchover. Accepted sockets inherit this small buffer.
            set_receive_buffer(&listener, 64 * 1024);
        }
        listener
            .set_nonblocking(true)
            .expect("proxy: nonblocking listener");
        let shared = Arc::new(Shared {
            target,
            cfg,
            closing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            forwarded: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            corrupted: AtomicU64::new(0),
            next_send: Mutex::new(Instant::now()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    /// Bytes forwarded source -> destination so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes XORed so far.
    pub fn corrupted(&self) -> u64 {
        self.shared.corrupted.load(Ordering::SeqCst)
    }

    /// Waits until at least `bytes` went source -> destination; false after `timeout`.
    pub fn wait_forwarded(&self, bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.forwarded() < bytes {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Shuts every connection down, both directions, both ends. New connections are still
    /// accepted afterwards (a glitch, not a partition).
    pub fn drop_all(&self) {
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Stops forwarding in both directions; the sockets stay open.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.stalled.store(false, Ordering::SeqCst);
        self.drop_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.closing.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                eprintln!("proxy: accept failed: {e}");
                return;
            }
        };
        let _ = client.set_nonblocking(false);
        let server = match TcpStream::connect(shared.target) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("proxy: cannot reach {}: {e}", shared.target);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let clones = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) = clones else {
            eprintln!("proxy: cannot clone a socket");
            continue;
        };
        shared.sockets.lock().unwrap().extend([client, server]);
        let up = shared.clone();
        std::thread::spawn(move || pump(c1, s1, true, &up));
        let down = shared.clone();
        std::thread::spawn(move || pump(s2, c2, false, &down));
    }
}

impl Shared {
    fn wait_while_stalled(&self) {
        while self.stalled.load(Ordering::SeqCst) && !self.closing.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sleeps as long as the rate limit says `n` more bytes take.
    fn pace(&self, n: usize) {
        let Some(rate) = self.cfg.rate_bps else {
            return;
        };
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        let until = {
            let mut next = self.next_send.lock().unwrap();
            let start = (*next).max(Instant::now());
            *next = start + cost;
            *next
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

/// Copies `from` -> `to` until either side fails; `upstream` is source -> destination
/// (rate-limited, counted, corrupted when asked).
fn pump(mut from: TcpStream, mut to: TcpStream, upstream: bool, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pos: u64 = 0;
    let mut stream_index: Option<u8> = None;
    loop {
        shared.wait_while_stalled();
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if upstream {
            let end = pos + n as u64;
            if pos <= INDEX_BYTE && INDEX_BYTE < end {
                stream_index = Some(chunk[(INDEX_BYTE - pos) as usize]);
            }
            if let (Some(c), Some(i)) = (shared.cfg.corrupt, stream_index) {
                if i == c.stream && c.offset >= PREAMBLE_LEN {
                    let from_off = c.offset.max(pos);
                    let to_off = (c.offset + c.len).min(end);
                    for off in from_off..to_off {
                        chunk[(off - pos) as usize] ^= 0xA5;
                        shared.corrupted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            shared.pace(n);
        }
        shared.wait_while_stalled();
        if to.write_all(chunk).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        pos += n as u64;
        if upstream {
            shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}

/// SO_RCVBUF of `listener` (and so of the sockets it accepts), which also turns the
/// kernel's receive buffer autotuning off for them.
fn set_receive_buffer(listener: &TcpListener, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket this proxy owns, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "proxy: SO_RCVBUF: {}",
        std::io::Error::last_os_error()
    );
}
