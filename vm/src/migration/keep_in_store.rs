//! Keeping a VM's memory in the chunk store, so that a migration back to this host (or a
//! restore from a replicated checkpoint) sends only what changed: the source keeps the VM's
//! memory after it moved away ([`keep_memory`]), the destination keeps the chunks it
//! receives while they arrive ([`ReceivedKeeper`]).

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use novacron_mesh::chunks::{is_zero, Batch, ChunkSize, ChunkStore, StoreError};

use super::machine_glue::GlueError;
use crate::machine::Machine;

/// Why chunks could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Memory(#[from] GlueError),
    #[error("cannot start the chunk keeper: {0}")]
    Spawn(std::io::Error),
    #[error("the chunk keeper panicked")]
    Panicked,
}

/// Chunks written to the store, chunks it already held, and chunks not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub new_chunks: u64,
    pub held_chunks: u64,
    /// Received chunks the keeper could not take in time ([`ReceivedKeeper`]).
    pub skipped_chunks: u64,
}

/// Chunks per committed batch: bounds the encoded bytes held in memory (a VMM's cgroup
/// leaves little beyond guest memory).
const BATCH_CHUNKS: usize = 1024;

/// Received chunks waiting for the keeper thread (16 KiB each). A chunk that arrives while
/// the queue is full is not kept: a slow disk never slows a migration down.
const KEEP_QUEUE: usize = 256;

/// Chunks added to a store in atomic batches of [`BATCH_CHUNKS`], counted.
struct Keeping<'a> {
    store: &'a ChunkStore,
    batch: Batch<'a>,
    /// Chunks added to the current batch (a duplicate counts again).
    added: u64,
    kept: Kept,
}

impl<'a> Keeping<'a> {
    fn new(store: &'a ChunkStore) -> Self {
        Self {
            store,
            batch: store.batch(),
            added: 0,
            kept: Kept::default(),
        }
    }

    fn add(&mut self, bytes: &[u8]) -> Result<(), KeepError> {
        self.batch.put(bytes)?;
        self.added += 1;
        if self.batch.len() >= BATCH_CHUNKS {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), KeepError> {
        let batch = std::mem::replace(&mut self.batch, self.store.batch());
        let outcome = batch.commit()?;
        let written = outcome.written as u64;
        self.kept.new_chunks += written;
        self.kept.held_chunks += self.added.saturating_sub(written);
        self.added = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<Kept, KeepError> {
        self.commit()?;
        Ok(self.kept)
    }
}

/// Stores every non-zero chunk of `machine`'s memory that `store` lacks, in atomic batches
/// of [`BATCH_CHUNKS`]. The machine should be paused or stopped (a running guest would make
/// the ids describe bytes that no longer exist).
pub fn keep_memory(
    machine: &mut Machine,
    store: &ChunkStore,
    size: ChunkSize,
) -> Result<Kept, KeepError> {
    let refs = machine.touched_chunk_refs(size)?;
    let mut keeping = Keeping::new(store);
    for r in refs {
        let Some(id) = r.id else { continue };
        if store.contains(&id) {
            keeping.kept.held_chunks += 1;
            continue;
        }
        let bytes = machine.read_chunk(r.index, size)?;
        keeping.add(&bytes)?;
    }
    keeping.finish()
}

/// Keeps the chunks an incoming migration receives (already verified against their ids) in
/// a store, on a thread of its own, while the migration goes on: the same VM received
/// again, or a retry after a rollback, then sends only what the store lacks. Best effort:
/// see [`KEEP_QUEUE`].
pub struct ReceivedKeeper {
    tx: Option<SyncSender<Vec<u8>>>,
    skipped: u64,
    thread: JoinHandle<Result<Kept, KeepError>>,
}

impl ReceivedKeeper {
    /// Starts the keeper thread (it runs under the calling thread's jail).
    pub fn start(store: Arc<ChunkStore>) -> Result<Self, KeepError> {
        Self::spawn(store, || {})
    }

    /// [`start`](Self::start), the thread running `first` before it keeps anything.
    fn spawn(
        store: Arc<ChunkStore>,
        first: impl FnOnce() + Send + 'static,
    ) -> Result<Self, KeepError> {
        let (tx, rx) = mpsc::sync_channel(KEEP_QUEUE);
        let thread = std::thread::Builder::new()
            .name("chunk-keeper".into())
            .spawn(move || {
                first();
                keep_received(&store, rx)
            })
            .map_err(KeepError::Spawn)?;
        Ok(Self {
            tx: Some(tx),
            skipped: 0,
            thread,
        })
    }

    /// Hands a received chunk's bytes to the keeper; skipped if it is behind (or failed).
    pub fn offer(&mut self, bytes: Vec<u8>) {
        if is_zero(&bytes) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.skipped += 1,
        }
    }

    /// Waits until everything offered is committed (or the keeper failed).
    pub fn finish(mut self) -> Result<Kept, KeepError> {
        self.tx = None;
        let mut kept = self.thread.join().map_err(|_| KeepError::Panicked)??;
        kept.skipped_chunks += self.skipped;
        Ok(kept)
    }
}

fn keep_received(store: &ChunkStore, rx: Receiver<Vec<u8>>) -> Result<Kept, KeepError> {
    let mut keeping = Keeping::new(store);
    for bytes in rx {
        keeping.add(&bytes)?;
    }
    keeping.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::chunks::{ChunkId, Level};

    fn chunk(n: u32) -> Vec<u8> {
        let mut bytes = vec![(n % 251) as u8 + 1; 16 * 1024];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        bytes
    }

    fn store() -> (tempfile::TempDir, Arc<ChunkStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ChunkStore::open(dir.path(), Level::default()).unwrap());
        (dir, store)
    }

    #[test]
    fn keeping_commits_in_batches_and_counts_what_was_there() {
        let (_dir, store) = store();
        store.put(&chunk(0)).unwrap();
        let mut keeping = Keeping::new(&store);
        let n = BATCH_CHUNKS as u32 + 10;
        for i in 0..n {
            keeping.add(&chunk(i)).unwrap();
        }
        // The first batch is committed once full.
        assert_eq!(keeping.kept.new_chunks, BATCH_CHUNKS as u64);
        keeping.add(&chunk(5)).unwrap();
        let kept = keeping.finish().unwrap();
        assert_eq!(
            kept,
            Kept {
                new_chunks: u64::from(n) - 1,
                held_chunks: 2,
                skipped_chunks: 0
            }
        );
        assert_eq!(store.stats().chunks, u64::from(n));
    }

    #[test]
    fn received_chunks_are_kept_and_counted() {
        let (_dir, store) = store();
        store.put(&chunk(0)).unwrap();
        let mut keeper = ReceivedKeeper::start(store.clone()).unwrap();
        // Fewer than the queue holds: none is skipped.
        for i in 0..100 {
            keeper.offer(chunk(i));
        }
        keeper.offer(vec![0; 16 * 1024]);
        let kept = keeper.finish().unwrap();
        assert_eq!(
            kept,
            Kept {
                new_chunks: 99,
                held_chunks: 1,
                skipped_chunks: 0
            }
        );
        assert_eq!(store.get(&ChunkId::of(&chunk(7))).ok(), Some(chunk(7)));
    }

    #[test]
    fn a_keeper_that_is_behind_skips_chunks_instead_of_blocking() {
        let (_dir, store) = store();
        let (go, wait) = mpsc::channel::<()>();
        let mut keeper = ReceivedKeeper::spawn(store.clone(), move || {
            let _ = wait.recv();
        })
        .unwrap();
        let n = KEEP_QUEUE as u32 + 10;
        for i in 0..n {
            keeper.offer(chunk(i));
        }
        go.send(()).unwrap();
        let kept = keeper.finish().unwrap();
        assert_eq!(
            kept,
            Kept {
                new_chunks: KEEP_QUEUE as u64,
                held_chunks: 0,
                skipped_chunks: 10
            }
        );
        assert_eq!(store.stats().chunks, KEEP_QUEUE as u64);
    }
}
