//! The bridge between a libp2p stream and a VMM: the VMM cannot hold a libp2p stream, so
//! each stream gets a Unix socketpair; the VMM gets one end (blocking, for
//! `VmmProcess::spawn_with_streams` / `send_with_streams`) and a task copies bytes both ways
//! between the other end and the libp2p stream, 64 KiB at a time per direction (nothing else
//! is buffered: a slow side slows the other).
//!
//! End of stream one way becomes a shutdown of the write side the other way (half-close), so
//! the migration drivers see exactly what a TCP connection would show them. The task ends
//! when both directions ended, or at the first error either way: then both sides are closed
//! (the VMM sees its link down and rolls back, or goes in doubt, as the protocol says).
//!
//! What this cannot do: bridge a stream for a process in another host, or outlive the tokio
//! runtime it runs on (a runtime shut down closes every bridge, which the VMMs see as links
//! down).

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::AbortHandle;

/// Bytes per copy, each direction.
const COPY_BUF: usize = 64 << 10;

/// Bytes bridged for one migration, all its streams together.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// From the VMM to the peer.
    pub to_peer: AtomicU64,
    /// From the peer to the VMM.
    pub from_peer: AtomicU64,
    /// Bridges still running.
    pub running: AtomicU64,
}

/// The bridges of one migration: their counters, and a way to cut them all.
#[derive(Clone, Debug)]
pub struct Bridges {
    counters: Arc<BridgeCounters>,
    tasks: Vec<AbortHandle>,
}

impl Bridges {
    pub fn new() -> Self {
        Self {
            counters: Arc::new(BridgeCounters::default()),
            tasks: Vec::new(),
        }
    }

    pub fn bytes_to_peer(&self) -> u64 {
        self.counters.to_peer.load(Ordering::Relaxed)
    }

    pub fn bytes_from_peer(&self) -> u64 {
        self.counters.from_peer.load(Ordering::Relaxed)
    }

    /// Bridges of this migration still copying.
    #[cfg(test)]
    pub fn running(&self) -> u64 {
        self.counters.running.load(Ordering::Relaxed)
    }

    /// Cuts every stream at once (both ends closed): the VMMs see their links down.
    /// Dropping `Bridges` does not do this; the bridges run until their streams end.
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Starts a bridge for `stream`; returns the VMM's end. Must run inside a tokio runtime.
    pub fn add<S>(&mut self, stream: S) -> io::Result<StdUnixStream>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (vmm_end, ours) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        let counters = self.counters.clone();
        counters.running.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            let guard = Running(counters.clone());
            if let Err(e) = run(stream, ours, &counters).await {
                tracing::debug!(error = %e, "migration bridge closed on an error");
            }
            drop(guard);
        });
        self.tasks.push(task.abort_handle());
        Ok(vmm_end)
    }
}

impl Default for Bridges {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a bridge out however its task ends (aborted included).
struct Running(Arc<BridgeCounters>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Copies both ways until both ended, or either failed (then everything is dropped, which
/// closes both sides).
async fn run<S>(
    stream: S,
    unix: tokio::net::UnixStream,
    counters: &BridgeCounters,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut peer_rx, mut peer_tx) = stream.split();
    let (mut vmm_rx, mut vmm_tx) = unix.into_split();
    let from_peer = async {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = peer_rx.read(&mut buf).await?;
            if n == 0 {
                // Half-close: the VMM reads end of stream, and may still write.
                vmm_tx.shutdown().await?;
                return Ok::<(), io::Error>(());
            }
            vmm_tx.write_all(&buf[..n]).await?;
            counters.from_peer.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let to_peer = async {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = vmm_rx.read(&mut buf).await?;
            if n == 0 {
                peer_tx.close().await?;
                return Ok::<(), io::Error>(());
            }
            peer_tx.write_all(&buf[..n]).await?;
            peer_tx.flush().await?;
            counters.to_peer.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    futures::future::try_join(from_peer, to_peer)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio_util_free::duplex;

    /// An in-memory duplex pipe with futures' traits (tokio's duplex, adapted by hand so
    /// the tests need no compat crate).
    mod tokio_util_free {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Compat(pub tokio::io::DuplexStream);

        impl futures::AsyncRead for Compat {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<std::io::Result<usize>> {
                let mut rb = tokio::io::ReadBuf::new(buf);
                match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut rb) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }

        impl futures::AsyncWrite for Compat {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
            }
            fn poll_close(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
            }
        }

        pub fn duplex() -> (Compat, tokio::io::DuplexStream) {
            let (a, b) = tokio::io::duplex(4096);
            (Compat(a), b)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_both_ways_and_half_close_propagates() {
        let (peer_side, mut remote) = duplex();
        let mut bridges = Bridges::new();
        let vmm = bridges.add(peer_side).unwrap();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let sent = big.clone();
        let vmm_thread = std::thread::spawn(move || {
            let mut vmm = vmm;
            vmm.write_all(&sent).unwrap();
            vmm.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            vmm.read_to_end(&mut back).unwrap();
            back
        });
        let mut got = Vec::new();
        remote.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        remote
            .write_all(b"answer after the half-close")
            .await
            .unwrap();
        remote.shutdown().await.unwrap();
        let back = tokio::task::spawn_blocking(move || vmm_thread.join().unwrap())
            .await
            .unwrap();
        assert_eq!(back, b"answer after the half-close");
        assert_eq!(bridges.bytes_to_peer(), 1_000_000);
        assert_eq!(bridges.bytes_from_peer(), 27);
        for _ in 0..500 {
            if bridges.running() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the bridge did not end after both directions ended");
    }

    #[tokio::test]
    async fn an_aborted_bridge_closes_the_vmm_end() {
        let (peer_side, _remote) = duplex();
        let mut bridges = Bridges::new();
        let vmm = bridges.add(peer_side).unwrap();
        bridges.abort();
        let n = tokio::task::spawn_blocking(move || {
            let mut vmm = vmm;
            vmm.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut b = [0u8; 1];
            vmm.read(&mut b)
        })
        .await
        .unwrap();
        assert_eq!(n.unwrap(), 0, "the VMM end reads end of stream");
    }
}
