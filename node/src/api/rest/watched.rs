//! A listener's accepted stream, watched: it holds the connection's place in the
//! [`ConnectionGate`](super::connections::ConnectionGate) for as long as it lives, and fails
//! with `TimedOut` once no byte has moved either way for a while — a caller that connects and
//! says nothing, stops reading its answers, or stalls halfway through a body cannot hold a
//! descriptor for long. The first bytes must come sooner than later ones (`first`, then
//! `idle` after any progress).
//!
//! The timer is checked only while the server waits on the stream, so a request whose
//! handler takes its time is not cut: nothing waits on the stream then.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connections::ConnectionPermit;

pub struct Watched<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: ConnectionPermit,
}

impl<S> Watched<S> {
    /// Watches `inner`: its first bytes are due within `first`, later ones within `idle` of
    /// the last progress.
    pub fn new(inner: S, permit: ConnectionPermit, first: Duration, idle: Duration) -> Self {
        Watched {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(first)),
            _permit: permit,
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Pending stays pending until the deadline; then the stream fails.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "no bytes moved on the connection for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// What a write's poll means for the connection: bytes written are progress; a write
    /// that waits counts toward the stall that closes it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.stalled(cx).map(Err),
            ready => ready,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.stalled(cx).map(Err),
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stalled(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.stalled(cx).map(Err),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::connections::{ConnectionCaps, ConnectionGate};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn watched(
        first: Duration,
        idle: Duration,
    ) -> (
        Watched<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        std::sync::Arc<ConnectionGate>,
    ) {
        let gate = ConnectionGate::new(ConnectionCaps {
            max: 4,
            per_address: 4,
        });
        let permit = gate.enter([192, 0, 2, 1].into()).unwrap();
        let (ours, theirs) = tokio::io::duplex(64);
        (Watched::new(ours, permit, first, idle), theirs, gate)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_caller_is_cut_at_the_first_deadline_and_its_place_given_back() {
        let (mut s, _peer, gate) = watched(Duration::from_secs(10), Duration::from_secs(60));
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(gate.open(), 1);
        drop(s);
        assert_eq!(gate.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_either_way_moves_the_deadline_to_idle() {
        let (mut s, mut peer, _gate) = watched(Duration::from_secs(10), Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(9)).await;
        peer.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        // Past the first deadline, within idle of the read.
        tokio::time::sleep(Duration::from_secs(50)).await;
        s.write_all(b"ok").await.unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        peer.write_all(b"x").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let at = Instant::now();
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(at.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_reading_is_cut() {
        let (mut s, _peer, _gate) = watched(Duration::from_secs(10), Duration::from_secs(60));
        // The duplex buffer holds 64 bytes; the caller never reads.
        let started = Instant::now();
        let err = s.write_all(&[7u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
