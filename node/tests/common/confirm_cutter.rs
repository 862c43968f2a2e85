//! A proxy that makes a migration "in doubt": it forwards the first session normally until
//! the source's `Switchover` frame has gone through on the control stream, then swallows
//! everything the destination sends back (its `Confirm` is lost) and, a moment later, cuts
//! that session's connections. Later connections (the source reconnecting to ask whether
//! the VM started) are forwarded untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use novacron_vm::migration::links::PREAMBLE_LEN;
use novacron_vm::migration::messages::{decode_frame, Message};

struct Shared {
    target: SocketAddr,
    /// Set once the first session's Switchover went through.
    cut: AtomicBool,
    /// Connections of the first session (both ends), to shut down.
    first: Mutex<Vec<TcpStream>>,
    connections: AtomicUsize,
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
            target,
            cut: AtomicBool::new(false),
            first: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(s.target) else {
                    continue;
                };
                let n = s.connections.fetch_add(1, Ordering::SeqCst);
                // The first session is the first 3 connections (control + 2 data streams).
                let first = n < 3;
                if first {
                    let mut all = s.first.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = s.clone();
                std::thread::spawn(move || upstream(client, server, first && n == 0, &up));
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

/// Source -> destination. On the first control stream, frames are parsed so the cut
/// happens right after the Switchover frame.
fn upstream(mut from: TcpStream, mut to: TcpStream, watch: bool, shared: &Arc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen: Vec<u8> = Vec::new();
    let mut parsed = PREAMBLE_LEN;
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
    let _ = to.shutdown(Shutdown::Write);
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
                    for sock in s.first.lock().unwrap().drain(..) {
                        let _ = sock.shutdown(Shutdown::Both);
                    }
                });
            }
        }
    }
}

/// Destination -> source; on the first session, nothing goes through after the cut.
fn downstream(mut from: TcpStream, mut to: TcpStream, first: bool, shared: &Shared) {
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
    let _ = to.shutdown(Shutdown::Write);
}
