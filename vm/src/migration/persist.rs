//! Keeping a VM's memory in the chunk store after it moved away, so that a migration back
//! to this host (or a restore from a replicated checkpoint) sends only what changed.

use novacron_mesh::chunks::{ChunkSize, ChunkStore};

use crate::machine::Machine;

/// Chunks written to the store and chunks it already held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub new_chunks: u64,
    pub held_chunks: u64,
}

/// Chunks per committed batch: bounds the encoded bytes held in memory (a VMM's cgroup
/// leaves little beyond guest memory).
const BATCH_CHUNKS: usize = 1024;

/// Stores every non-zero chunk of `machine`'s memory that `store` lacks, in atomic batches
/// of [`BATCH_CHUNKS`]. The machine should be paused or stopped (a running guest would make the ids
/// describe bytes that no longer exist).
pub fn keep_memory(
    machine: &mut Machine,
    store: &ChunkStore,
    size: ChunkSize,
) -> Result<Kept, String> {
    let refs = machine
        .touched_chunk_refs(size)
        .map_err(|e| e.to_string())?;
    let mut kept = Kept::default();
    let mut batch = store.batch();
    for r in refs {
        let Some(id) = r.id else { continue };
        if store.contains(&id) {
            kept.held_chunks += 1;
            continue;
        }
        let bytes = machine
            .read_chunk(r.index, size)
            .map_err(|e| e.to_string())?;
        batch.put(&bytes).map_err(|e| e.to_string())?;
        kept.new_chunks += 1;
        if batch.len() >= BATCH_CHUNKS {
            batch.commit().map_err(|e| e.to_string())?;
            batch = store.batch();
        }
    }
    batch.commit().map_err(|e| e.to_string())?;
    Ok(kept)
}
