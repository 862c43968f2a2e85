//! A proxy that makes a migration "in doubt": it forwards the first session normally until
//! the source's `Switchover` frame has gone through on the control stream, then swallows
//! everything the destination sends back (its `Confirm` is lost) and, a moment later, cuts
//! that session's connections. Later connections (the source reconnecting to ask whether
//! the VM started) are forwarded untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use novacron_vm::migration::links::PREAMBLE_LEN;
use novacron_vm::migration::messages::{decode_frame, Message};

/// A stream socket the cutter can copy, clone and shut down (TCP or Unix).
pub trait Pipe: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn cut(&self, how: Shutdown) -> std::io::Result<()>;
}

impl Pipe for TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn cut(&self, how: Shutdown) -> std::io::Result<()> {
        self.shutdown(how)
    }
}

impl Pipe for UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn cut(&self, how: Shutdown) -> std::io::Result<()> {
        self.shutdown(how)
    }
}

type Cutter = Box<dyn FnOnce() + Send>;

struct Shared {
    target: Option<SocketAddr>,
    /// Set once the first session's Switchover went through.
    cut: AtomicBool,
    /// Shut-downs of the first session's connections (both ends).
    first: Mutex<Vec<Cutter>>,
    connections: AtomicUsize,
}

fn cutter<P: Pipe>(p: &P) -> Cutter {
    let p = p.duplicate().expect("cutter: clone");
    Box::new(move || {
        let _ = p.cut(Shutdown::Both);
    })
}

/// Splices the cutter into one session's streams, control first, as a VMM holds them (no
/// links preamble): returns the ends to hand the destination VMM instead of `streams`.
pub fn splice(streams: Vec<UnixStream>) -> (CutWatch, Vec<UnixStream>) {
    let shared = Arc::new(Shared {
        target: None,
        cut: AtomicBool::new(false),
        first: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
    });
    let mut ends = Vec::new();
    for (i, outer) in streams.into_iter().enumerate() {
        let (inner, vmm_end) = UnixStream::pair().expect("cutter: socketpair");
        {
            let mut all = shared.first.lock().unwrap();
            all.push(cutter(&outer));
            all.push(cutter(&inner));
        }
        let (o2, i2) = (outer.try_clone().unwrap(), inner.try_clone().unwrap());
        let up = shared.clone();
        std::thread::spawn(move || upstream(outer, inner, (i == 0).then_some(0), &up));
        let down = shared.clone();
        std::thread::spawn(move || downstream(i2, o2, true, &down));
        ends.push(vmm_end);
    }
    (CutWatch(shared), ends)
}

/// Whether a spliced session was cut.
pub struct CutWatch(Arc<Shared>);

impl CutWatch {
    pub fn cut(&self) -> bool {
        self.0.cut.load(Ordering::SeqCst)
    }
}

pub struct ConfirmCutter {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ConfirmCutter {
    pub fn start(target: SocketAddr) -> ConfirmCutter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cutter: bind");
        let addr = listener.local_addr().expect("cutter: address");
        let shared = Arc::new(Shared {
            target: Some(target),
            cut: AtomicBool::new(false),
            first: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Some(Ok(server)) = s.target.map(TcpStream::connect) else {
                    continue;
                };
                let n = s.connections.fetch_add(1, Ordering::SeqCst);
                // The first session is the first 3 connections (control + 2 data streams).
                let first = n < 3;
                if first {
                    let mut all = s.first.lock().unwrap();
                    all.push(cutter(&client));
                    all.push(cutter(&server));
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = s.clone();
                // The control stream's frames start after the links preamble.
                let watch = (first && n == 0).then_some(PREAMBLE_LEN);
                std::thread::spawn(move || upstream(client, server, watch, &up));
                let down = s.clone();
                std::thread::spawn(move || downstream(s2, c2, first, &down));
            }
        });
        ConfirmCutter { addr, shared }
    }

    /// True once a Switchover went through and the first session was cut.
    pub fn cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

/// Source -> destination. On the first control stream (`watch`: where its frames start),
/// frames are parsed so the cut happens right after the Switchover frame.
fn upstream<P: Pipe>(mut from: P, mut to: P, watch: Option<usize>, shared: &Arc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen: Vec<u8> = Vec::new();
    let mut parsed = watch.unwrap_or(0);
    let watch = watch.is_some();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Parse before forwarding, so the cut is in force before the destination can answer.
        if watch && !shared.cut.load(Ordering::SeqCst) {
            seen.extend_from_slice(&buf[..n]);
            watch_frames(&seen, &mut parsed, shared);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.cut(Shutdown::Write);
}

fn watch_frames(seen: &[u8], parsed: &mut usize, shared: &Arc<Shared>) {
    {
        while let Ok(Some((msg, used))) = decode_frame(seen.get(*parsed..).unwrap_or(&[])) {
            *parsed += used;
            if matches!(msg, Message::Switchover { .. }) {
                shared.cut.store(true, Ordering::SeqCst);
                let s = shared.clone();
                std::thread::spawn(move || {
                    // Let the destination start the VM and answer; then cut.
                    std::thread::sleep(Duration::from_millis(500));
                    for cut in s.first.lock().unwrap().drain(..) {
                        cut();
                    }
                });
            }
        }
    }
}

/// Destination -> source; on the first session, nothing goes through after the cut.
fn downstream<P: Pipe>(mut from: P, mut to: P, first: bool, shared: &Shared) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first && shared.cut.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.cut(Shutdown::Write);
}
