//! Batched puts: chunks are encoded as they are added, then `commit` writes every temp file
//! and syncs it, links them all into place, and syncs each directory touched once, instead of
//! once per chunk.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use super::codec::EncodedChunk;
use super::id::ChunkId;
use super::store::{checked_id, verify_encoded, ChunkStore, Durability, StoreError, TempFile};

/// Chunks waiting to be committed to a [`ChunkStore`]. Holds their encoded bytes in memory
/// until `commit`: the caller bounds a batch's size. Dropping it uncommitted writes nothing.
pub struct Batch<'a> {
    store: &'a ChunkStore,
    pending: Vec<Pending>,
    ids: HashSet<ChunkId>,
}

struct Pending {
    id: ChunkId,
    encoded: EncodedChunk,
    len: usize,
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// Chunks written by this commit.
    pub written: usize,
    /// Chunks that were already stored (by an earlier put or another writer): not rewritten.
    pub already: usize,
}

impl ChunkStore {
    /// A new batch: many puts made durable together.
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self)
    }
}

impl<'a> Batch<'a> {
    fn new(store: &'a ChunkStore) -> Self {
        Self {
            store,
            pending: Vec::new(),
            ids: HashSet::new(),
        }
    }

    /// Chunks added so far (duplicates counted once).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds a raw chunk (1 byte to 64 KiB, not all zero), compressing it now.
    pub fn put(&mut self, raw: &[u8]) -> Result<ChunkId, StoreError> {
        let id = checked_id(raw)?;
        if self.ids.contains(&id) || self.store.contains(&id) {
            return Ok(id);
        }
        let encoded = super::store::encode_for(self.store, raw)?;
        self.push(id, encoded, raw.len());
        Ok(id)
    }

    /// Adds an encoded chunk from outside, after checking it decodes to `len` bytes that hash
    /// to `id`.
    pub fn put_encoded(
        &mut self,
        id: &ChunkId,
        encoded: EncodedChunk,
        len: usize,
    ) -> Result<(), StoreError> {
        if self.ids.contains(id) || self.store.contains(id) {
            return Ok(());
        }
        verify_encoded(id, &encoded, len)?;
        self.push(*id, encoded, len);
        Ok(())
    }

    fn push(&mut self, id: ChunkId, encoded: EncodedChunk, len: usize) {
        self.ids.insert(id);
        self.pending.push(Pending { id, encoded, len });
    }

    /// Makes every chunk of the batch durable. On error no temp file is left and no chunk
    /// file is left partial: a chunk is under its final name only complete and synced. A
    /// failure while linking (after all files are written) may leave the chunks linked before
    /// it in place, complete; their directory entries may not yet be durable.
    pub fn commit(self) -> Result<BatchOutcome, StoreError> {
        let store = self.store;
        let mut outcome = BatchOutcome::default();
        let todo: Vec<Pending> = self
            .pending
            .into_iter()
            .filter(|p| {
                let have = store.contains(&p.id);
                outcome.already += usize::from(have);
                !have
            })
            .collect();
        let mut temps = Vec::with_capacity(todo.len());
        let result = write_all(store, &todo, &mut temps)
            .and_then(|()| link_all(store, &todo, &temps, &mut outcome));
        for temp in &temps {
            store.remove_temp(&temp.path);
        }
        result.map(|()| outcome)
    }
}

/// Writes one temp file per chunk, then syncs them all at once, pushing each to `temps` as soon as it exists so
/// the caller can remove them whatever happens.
fn write_all(
    store: &ChunkStore,
    todo: &[Pending],
    temps: &mut Vec<TempFile>,
) -> Result<(), StoreError> {
    for p in todo {
        temps.push(store.write_temp_with(&p.encoded, p.len, Durability::Deferred)?);
    }
    store.sync_temps(temps)
}

/// Creates the fan-out directories, links every temp file into place, then syncs each
/// directory touched once.
fn link_all(
    store: &ChunkStore,
    todo: &[Pending],
    temps: &[TempFile],
    outcome: &mut BatchOutcome,
) -> Result<(), StoreError> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut created_any = false;
    for p in todo {
        if dirs.insert(store.fanout_of(&p.id)) {
            created_any |= store.ensure_fanout(&p.id)?;
        }
    }
    for (p, temp) in todo.iter().zip(temps) {
        if store.link_into_place(temp, &p.id)? {
            outcome.written += 1;
        } else {
            outcome.already += 1;
        }
    }
    for dir in &dirs {
        store.sync_dir(dir)?;
    }
    if created_any {
        store.sync_dir(store.root())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::codec::tests::{noise, text};
    use crate::chunks::codec::{encode_chunk, Level};
    use crate::chunks::store::tests::{files_in, open};
    use crate::chunks::StoreStats;
    use std::fs;

    /// `n` distinct chunks whose ids all fall in different fan-out directories.
    fn chunks_in_distinct_dirs(n: usize) -> Vec<Vec<u8>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for i in 0.. {
            let raw = text(4000 + i);
            if seen.insert(ChunkId::of(&raw).fanout()) {
                out.push(raw);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn commit_stores_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let pre = store.put(&text(5000)).unwrap().id;
        let mut batch = store.batch();
        let chunks = chunks_in_distinct_dirs(5);
        let mut ids = Vec::new();
        for c in &chunks {
            ids.push(batch.put(c).unwrap());
        }
        batch.put(&chunks[0]).unwrap(); // duplicate within the batch
        assert_eq!(batch.put(&text(5000)).unwrap(), pre); // already stored
        let raw = noise(4096, 11);
        let enc = encode_chunk(&raw, Level::default()).unwrap();
        batch
            .put_encoded(&ChunkId::of(&raw), enc, raw.len())
            .unwrap();
        assert!(batch.put(&[0u8; 100]).is_err());
        assert_eq!(batch.len(), 6);
        let outcome = batch.commit().unwrap();
        assert_eq!(
            outcome,
            BatchOutcome {
                written: 6,
                already: 0
            }
        );
        for (c, id) in chunks.iter().zip(&ids) {
            assert_eq!(store.get(id).unwrap(), *c);
        }
        assert_eq!(store.get(&ChunkId::of(&raw)).unwrap(), raw);
        assert_eq!(store.stats().chunks, 7);
        assert!(files_in(store.tmp_dir()).is_empty());
        assert!(store.batch().commit().unwrap() == BatchOutcome::default());
    }

    #[test]
    fn a_chunk_stored_meanwhile_is_counted_as_already() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(6000);
        let mut batch = store.batch();
        batch.put(&raw).unwrap();
        store.put(&raw).unwrap();
        assert_eq!(
            batch.commit().unwrap(),
            BatchOutcome {
                written: 0,
                already: 1
            }
        );
        assert_eq!(store.stats().chunks, 1);
    }

    #[test]
    fn dropped_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut batch = store.batch();
        batch.put(&text(7000)).unwrap();
        drop(batch);
        assert_eq!(store.stats(), StoreStats::default());
        assert!(files_in(store.tmp_dir()).is_empty());
        assert_eq!(files_in(dir.path()), ["tmp"]);
    }

    /// After a failed commit: no temp file of the batch, no chunk under its final name.
    fn assert_nothing_left(store: &ChunkStore, ids: &[ChunkId], planted: &[String]) {
        assert_eq!(files_in(store.tmp_dir()), planted);
        for id in ids {
            assert!(!store.contains(id), "{id} is in place after a failed batch");
            assert!(!store.path_of(id).exists());
        }
        assert_eq!(store.stats(), StoreStats::default());
    }

    #[test]
    fn failure_while_writing_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let chunks = chunks_in_distinct_dirs(5);
        let mut batch = store.batch();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| batch.put(c).unwrap()).collect();
        // A file already where the third temp file will be written: that write fails.
        let planted = store.future_temp_name(2);
        fs::write(store.tmp_dir().join(&planted), b"x").unwrap();
        let err = batch.commit().err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains(&planted)),
            "{err:?}"
        );
        assert_nothing_left(&store, &ids, &[planted]);
    }

    #[test]
    fn failure_before_linking_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let chunks = chunks_in_distinct_dirs(5);
        let mut batch = store.batch();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| batch.put(c).unwrap()).collect();
        // A file where the fourth chunk's fan-out directory must go.
        let fan = store.fanout_of(&ids[3]);
        fs::write(&fan, b"x").unwrap();
        let err = batch.commit().err();
        assert!(
            matches!(&err, Some(StoreError::NotADirectory { path }) if *path == fan),
            "{err:?}"
        );
        assert_nothing_left(&store, &ids, &[]);
        // With the obstacle gone, the same chunks commit.
        fs::remove_file(&fan).unwrap();
        let mut batch = store.batch();
        for c in &chunks {
            batch.put(c).unwrap();
        }
        assert_eq!(batch.commit().unwrap().written, 5);
    }
}
