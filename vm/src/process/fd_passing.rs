//! Passing sockets to a jailed VMM process: the VMM has no network of its own (it runs in
//! an empty network namespace and seccomp forbids socket/connect), so its parent opens the
//! migration streams and hands them over the control socket with SCM_RIGHTS, attached to
//! the control line that uses them. A stream is any connected stream socket: TCP, or a Unix
//! socket whose other end the parent bridges to a libp2p stream.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::migration::links::MigrationStream;

/// Most descriptors one control line may carry (control stream plus data streams).
pub const MAX_FDS: usize = 16;

/// Descriptors received so far, in arrival order, until a command takes them.
pub type FdQueue = Arc<Mutex<VecDeque<OwnedFd>>>;

/// A control socket reader that keeps the descriptors that arrive with the bytes.
pub struct FdStream {
    sock: UnixStream,
    fds: FdQueue,
}

impl FdStream {
    pub fn new(sock: UnixStream) -> (Self, FdQueue) {
        let fds = FdQueue::default();
        (
            Self {
                sock,
                fds: fds.clone(),
            },
            fds,
        )
    }

    /// A reader for a new connection that queues its descriptors on an existing `fds`
    /// queue (an adopted VMM's next owner: commands find their streams where they did).
    pub fn with_queue(sock: UnixStream, fds: FdQueue) -> Self {
        Self { sock, fds }
    }
}

impl AsRawFd for FdStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut fds = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points into `buf`, which outlives the call.
        let (n, nfds) = unsafe { self.sock.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if nfds > 0 {
            let mut queue = self.fds.lock().unwrap_or_else(|p| p.into_inner());
            for &fd in &fds[..nfds] {
                // SAFETY: recvmsg just created these descriptors for this process; nothing
                // else owns them.
                queue.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        Ok(n)
    }
}

/// Takes every queued descriptor as a migration stream.
pub fn take_streams(queue: &FdQueue) -> Vec<MigrationStream> {
    let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
    queue.drain(..).map(MigrationStream::from).collect()
}

/// Sends `line` with `streams` (sockets: TCP or Unix) attached to its first byte.
pub fn send_with_streams<S: AsFd>(
    sock: &mut UnixStream,
    line: &[u8],
    streams: &[S],
) -> io::Result<()> {
    if streams.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} streams, at most {MAX_FDS} per message", streams.len()),
        ));
    }
    let fds: Vec<RawFd> = streams.iter().map(|s| s.as_fd().as_raw_fd()).collect();
    let sent = sock
        .send_with_fds(&[line], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    sock.write_all(&line[sent..])?;
    sock.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn streams_arrive_with_their_line_and_work() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        send_with_streams(&mut a, b"first\n", &[server]).unwrap();
        send_with_streams::<TcpStream>(&mut a, b"second\n", &[]).unwrap();
        let (stream, queue) = FdStream::new(b);
        let mut r = io::BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "first\n");
        let mut got = take_streams(&queue);
        assert_eq!(got.len(), 1);
        got[0].write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "second\n");
        assert!(take_streams(&queue).is_empty());
    }

    #[test]
    fn a_unix_stream_works_after_passing_and_half_close_reaches_the_peer() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (mut near, far) = UnixStream::pair().unwrap();
        send_with_streams(&mut a, b"go\n", &[far]).unwrap();
        let (stream, queue) = FdStream::new(b);
        let mut r = io::BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut got = take_streams(&queue);
        assert_eq!(got.len(), 1);
        let mut s = got.remove(0);
        let mut clone = s.try_clone().unwrap();
        clone.write_all(b"over").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = Vec::new();
        near.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"over");
        near.write_all(b"back").unwrap();
        near.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"back");
    }
}
