//! The streams of one migration: a control stream for the protocol messages and one or
//! more data streams that carry chunks in parallel. Each stream opens with a fixed 24-byte
//! preamble naming the migration session and the stream's place in it, so the listener can
//! group streams that arrive in any order.
//!
//! A stream is any connected stream socket ([`MigrationStream`]): a TCP connection (the
//! CLI's `--migrate-to` / `vm receive`) or one end of a Unix socketpair whose other end a
//! daemon bridges to a libp2p stream of the mesh.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Bytes of the preamble: magic, version, stream index, stream count, session id.
pub const PREAMBLE_LEN: usize = 24;
const MAGIC: [u8; 4] = *b"NCMG";
const PREAMBLE_VERSION: u16 = 1;
/// Most data streams of one migration.
pub const MAX_DATA_STREAMS: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub session: [u8; 16],
    /// 0 is the control stream, 1.. the data streams.
    pub index: u8,
    /// Streams in the session, control included.
    pub count: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("not a NovaCron migration stream (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("migration stream preamble version {0}, this side speaks {PREAMBLE_VERSION}")]
    Version(u16),
    #[error("stream {index} of {count}: a session has 2 to {} streams", MAX_DATA_STREAMS + 1)]
    Shape { index: u8, count: u8 },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("migration stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete migration session arrived within {0:?}")]
    Timeout(Duration),
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PREAMBLE_VERSION.to_le_bytes());
        out[6] = self.index;
        out[7] = self.count;
        out[8..].copy_from_slice(&self.session);
        out
    }

    pub fn decode(b: &[u8; PREAMBLE_LEN]) -> Result<Self, LinkError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(LinkError::Magic(magic));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != PREAMBLE_VERSION {
            return Err(LinkError::Version(version));
        }
        let (index, count) = (b[6], b[7]);
        if !(2..=MAX_DATA_STREAMS + 1).contains(&count) || index >= count {
            return Err(LinkError::Shape { index, count });
        }
        let mut session = [0u8; 16];
        session.copy_from_slice(&b[8..]);
        Ok(Self {
            session,
            index,
            count,
        })
    }
}

/// One connected stream socket of a migration: TCP, or a Unix stream socket (one end of a
/// socketpair a daemon bridges to the mesh). Reading, writing, shutting down and cloning are
/// the same system calls for both (read, write, shutdown, fcntl, as std's sockets use: what
/// the VMM's seccomp filter allows), so the drivers need not know which it is; half-close (shutdown of the
/// write side, the peer reads end of stream) works on both.
///
/// What it cannot do: tell which kind of socket it holds (that would take getsockopt, which
/// the jailed VMM may not call), so TCP options (TCP_NODELAY) are set by whoever opens a TCP
/// connection, before it becomes a `MigrationStream`; an fd that is not a socket fails on
/// the first read or write (ENOTSOCK), not when it is wrapped.
#[derive(Debug)]
pub struct MigrationStream(OwnedFd);

impl MigrationStream {
    /// Another handle on the same socket (close-on-exec).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown on a descriptor this value owns.
        cvt(unsafe { libc::shutdown(self.0.as_raw_fd(), how) }).map(drop)
    }

    /// Read timeout (None: block forever). Calls setsockopt: for the parent process only,
    /// the VMM's seccomp filter forbids it.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(t) if t.is_zero() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a zero read timeout would mean none; pass None to block",
                ))
            }
            Some(t) => libc::timeval {
                tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_usec: t.subsec_micros().max(u32::from(t.as_secs() == 0)) as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: a timeval we own, with its size, for the duration of the call.
        cvt(unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writes at most `buf.len()` bytes into `buf`, which outlives the call.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        cvt_size(n)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes from `buf`. A peer that went away is an
        // EPIPE error: Rust programs ignore SIGPIPE.
        let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        cvt_size(n)
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Read for MigrationStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
}

impl Read for &MigrationStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
}

impl Write for MigrationStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &MigrationStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl From<TcpStream> for MigrationStream {
    fn from(s: TcpStream) -> Self {
        Self(s.into())
    }
}

impl From<UnixStream> for MigrationStream {
    fn from(s: UnixStream) -> Self {
        Self(s.into())
    }
}

/// The caller promises a connected stream socket (see the type's doc for what happens if not).
impl From<OwnedFd> for MigrationStream {
    fn from(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

impl From<MigrationStream> for OwnedFd {
    fn from(s: MigrationStream) -> Self {
        s.0
    }
}

impl AsFd for MigrationStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for MigrationStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FromRawFd for MigrationStream {
    /// # Safety
    /// `fd` must be an open descriptor nothing else owns.
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        Self(OwnedFd::from_raw_fd(fd))
    }
}

/// The streams of one migration, control first.
#[derive(Debug)]
pub struct Links {
    pub session: [u8; 16],
    pub control: MigrationStream,
    pub data: Vec<MigrationStream>,
}

impl Links {
    /// Every stream, control first (the order in which they are handed to a VMM process).
    pub fn into_streams(self) -> Vec<MigrationStream> {
        std::iter::once(self.control).chain(self.data).collect()
    }

    /// Rebuilds links from [`into_streams`](Self::into_streams)' order.
    pub fn from_streams(session: [u8; 16], mut streams: Vec<MigrationStream>) -> Option<Self> {
        if streams.len() < 2 {
            return None;
        }
        let control = streams.remove(0);
        Some(Self {
            session,
            control,
            data: streams,
        })
    }

    /// Shuts every stream down (both directions), so threads blocked on them return.
    pub fn shutdown(&self) {
        for s in std::iter::once(&self.control).chain(&self.data) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A fresh random session id.
pub fn new_session() -> [u8; 16] {
    let mut id = [0u8; 16];
    // SAFETY: getrandom writes at most `id.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        // Entropy unavailable: a clock-derived id still keeps concurrent sessions apart.
        let t = crate::machine::vcpu::monotonic_ns().to_le_bytes();
        id[..8].copy_from_slice(&t);
        id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}

/// Opens the control stream and `data_streams` data streams to `addr`.
pub fn connect(
    addr: SocketAddr,
    data_streams: u8,
    session: [u8; 16],
    timeout: Duration,
) -> Result<Links, LinkError> {
    let count = data_streams.clamp(1, MAX_DATA_STREAMS) + 1;
    let mut streams = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| LinkError::Connect { addr, source })?;
        s.set_nodelay(true)?;
        s.write_all(
            &Preamble {
                session,
                index,
                count,
            }
            .encode(),
        )?;
        streams.push(MigrationStream::from(s));
    }
    let control = streams.remove(0);
    Ok(Links {
        session,
        control,
        data: streams,
    })
}

/// Accepts connections until one session has all its streams, within `timeout`. Streams
/// with a bad preamble, or that send none within a second, are dropped (and logged).
pub fn accept(listener: &TcpListener, timeout: Duration) -> Result<Links, LinkError> {
    let deadline = Instant::now() + timeout;
    let mut partial: HashMap<[u8; 16], Vec<Option<MigrationStream>>> = HashMap::new();
    listener.set_nonblocking(true)?;
    loop {
        let (mut s, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(LinkError::Timeout(timeout));
                }
                wait_readable(listener, left)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut raw = [0u8; PREAMBLE_LEN];
        let pre = match s
            .read_exact(&mut raw)
            .map_err(LinkError::from)
            .and_then(|_| Preamble::decode(&raw))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "dropping a connection that is not a migration stream");
                continue;
            }
        };
        s.set_read_timeout(None)?;
        s.set_nodelay(true)?;
        let s = MigrationStream::from(s);
        let slots = partial
            .entry(pre.session)
            .or_insert_with(|| (0..pre.count).map(|_| None).collect());
        let fits = slots.len() == pre.count as usize;
        match slots.get_mut(pre.index as usize) {
            Some(slot @ None) if fits => *slot = Some(s),
            _ => {
                tracing::warn!(%peer, ?pre, "dropping a duplicate or inconsistent migration stream");
                continue;
            }
        }
        let slots = partial
            .get(&pre.session)
            .map(|v| v.iter().all(Option::is_some));
        if slots == Some(true) {
            let streams = partial
                .remove(&pre.session)
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            listener.set_nonblocking(false)?;
            return Links::from_streams(pre.session, streams).ok_or(LinkError::Shape {
                index: pre.index,
                count: pre.count,
            });
        }
    }
}

/// Sleeps until `listener` has a connection to accept or `limit` passed (no busy loop: a
/// receiver may wait for hours).
fn wait_readable(listener: &TcpListener, limit: Duration) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one pollfd we own, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preambles_round_trip_and_bad_ones_are_named() {
        let p = Preamble {
            session: [5; 16],
            index: 2,
            count: 3,
        };
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad[0] = b'X';
        assert!(matches!(Preamble::decode(&bad), Err(LinkError::Magic(_))));
        let mut bad = p.encode();
        bad[6] = 3;
        assert!(matches!(
            Preamble::decode(&bad),
            Err(LinkError::Shape { .. })
        ));
        let mut bad = p.encode();
        bad[7] = MAX_DATA_STREAMS + 2;
        assert!(Preamble::decode(&bad).is_err());
        let mut bad = p.encode();
        bad[4] = 9;
        assert!(matches!(Preamble::decode(&bad), Err(LinkError::Version(9))));
    }

    #[test]
    fn streams_of_a_session_are_grouped_whatever_else_connects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            // Noise first: a stranger, then a truncated preamble.
            let mut stranger = TcpStream::connect(addr).unwrap();
            stranger.write_all(&[0u8; PREAMBLE_LEN]).unwrap();
            let mut cut = TcpStream::connect(addr).unwrap();
            cut.write_all(b"NCMG").unwrap();
            let links = connect(addr, 2, [7; 16], Duration::from_secs(5)).unwrap();
            let mut control = links.control;
            control.write_all(b"c").unwrap();
            let mut d1 = links.data.into_iter().nth(1).unwrap();
            d1.write_all(b"2").unwrap();
            (stranger, cut)
        });
        let links = accept(&listener, Duration::from_secs(10)).unwrap();
        assert_eq!(links.session, [7; 16]);
        assert_eq!(links.data.len(), 2);
        let mut b = [0u8; 1];
        let mut control = links.control;
        control.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"c");
        let mut d1 = links.data.into_iter().nth(1).unwrap();
        d1.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"2");
        drop(client.join().unwrap());
    }

    #[test]
    fn accept_gives_up_after_its_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = accept(&listener, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, LinkError::Timeout(_)), "{err}");
    }
}
