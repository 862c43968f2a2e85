//! Cutting a byte slice (a guest memory region, say) into fixed-size chunks, each named by its
//! blake3 hash, with all-zero chunks detected and never hashed.

use std::fmt;
use std::num::NonZeroUsize;
use std::thread;

use super::id::ChunkId;
use super::zero::is_zero;

/// The largest chunk any part of the store or the wire accepts, raw.
pub const MAX_CHUNK_SIZE: usize = 64 * 1024;

/// Inputs at least this large are hashed on several threads.
const PARALLEL_MIN_BYTES: usize = 4 * 1024 * 1024;

/// A validated chunk size: 4, 16 or 64 KiB. The default, 16 KiB, was chosen with
/// `novacron bench chunks` (docs/benchmarks.md): the best zstd ratio on the benchmark
/// pattern, hashing as fast as 64 KiB, and zero elision as fine-grained as 4 KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChunkSize {
    K4,
    #[default]
    K16,
    K64,
}

/// A chunk size that is not one of the supported ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk size {got} bytes is not supported: use 4096, 16384 or 65536 (4, 16 or 64 KiB)")]
pub struct ChunkSizeError {
    pub got: u64,
}

impl ChunkSize {
    /// Every supported size, smallest first.
    pub const ALL: [ChunkSize; 3] = [ChunkSize::K4, ChunkSize::K16, ChunkSize::K64];

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, ChunkSizeError> {
        match bytes {
            4096 => Ok(Self::K4),
            16384 => Ok(Self::K16),
            65536 => Ok(Self::K64),
            got => Err(ChunkSizeError { got }),
        }
    }

    pub const fn bytes(self) -> usize {
        match self {
            Self::K4 => 4096,
            Self::K16 => 16384,
            Self::K64 => 65536,
        }
    }

    /// Number of chunks `len` bytes are cut into (the last one may be short).
    pub const fn count(self, len: usize) -> usize {
        len.div_ceil(self.bytes())
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} KiB", self.bytes() / 1024)
    }
}

/// One chunk of a cut slice: its position, its id (`None` for an all-zero chunk, which is
/// never hashed, stored or sent) and its length (the chunk size, or less for the last one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub index: u64,
    pub id: Option<ChunkId>,
    pub len: u32,
}

impl ChunkRef {
    pub fn is_zero(&self) -> bool {
        self.id.is_none()
    }

    /// Byte offset of this chunk in the slice it was cut from.
    pub fn offset(&self, size: ChunkSize) -> u64 {
        self.index * size.bytes() as u64
    }
}

/// Cuts `data` into chunks of `size` and names each one. Large inputs are hashed on all
/// available cores (scoped threads, one contiguous run of chunks each).
pub fn chunk_refs(data: &[u8], size: ChunkSize) -> Vec<ChunkRef> {
    let threads = if data.len() >= PARALLEL_MIN_BYTES {
        thread::available_parallelism().map_or(1, NonZeroUsize::get)
    } else {
        1
    };
    chunk_refs_on(data, size, threads)
}

/// [`chunk_refs`] on exactly `threads` threads (at least one; the caller's thread is one of
/// them). Exposed for benchmarks that compare one core with many.
pub fn chunk_refs_on(data: &[u8], size: ChunkSize, threads: usize) -> Vec<ChunkRef> {
    let chunks = size.count(data.len());
    let threads = threads.clamp(1, chunks.max(1));
    if threads == 1 {
        return refs_of_run(data, size, 0);
    }
    // Whole chunks per thread, so every run but the last starts and ends on a chunk boundary.
    let per_thread = chunks.div_ceil(threads) * size.bytes();
    let mut runs = data.chunks(per_thread).enumerate();
    let first = runs.next();
    thread::scope(|scope| {
        let handles: Vec<_> = runs
            .map(|(n, run)| {
                let first_index = (n * per_thread / size.bytes()) as u64;
                scope.spawn(move || refs_of_run(run, size, first_index))
            })
            .collect();
        let mut out = Vec::with_capacity(chunks);
        if let Some((_, run)) = first {
            out.extend(refs_of_run(run, size, 0));
        }
        for handle in handles {
            match handle.join() {
                Ok(refs) => out.extend(refs),
                // Hashing does not panic; if a thread did anyway, re-raise it here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Chunk refs of one contiguous run whose first chunk has index `first_index`.
fn refs_of_run(run: &[u8], size: ChunkSize, first_index: u64) -> Vec<ChunkRef> {
    run.chunks(size.bytes())
        .zip(first_index..)
        .map(|(chunk, index)| ChunkRef {
            index,
            id: (!is_zero(chunk)).then(|| ChunkId::of(chunk)),
            // A chunk is at most MAX_CHUNK_SIZE (64 KiB) long, so it fits.
            len: chunk.len() as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_16_kib() {
        assert_eq!(ChunkSize::default().bytes(), 16 << 10);
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn sizes_are_validated() {
        for s in ChunkSize::ALL {
            assert_eq!(ChunkSize::new(s.bytes() as u64), Ok(s));
        }
        for bad in [0u64, 1, 2048, 4095, 8192, 32768, 131072, u64::MAX] {
            let err = ChunkSize::new(bad);
            assert_eq!(err, Err(ChunkSizeError { got: bad }));
        }
        let msg = ChunkSize::new(8192).err().map(|e| e.to_string());
        assert!(msg.is_some_and(|m| m.contains("8192") && m.contains("4096")));
        assert!(ChunkSize::ALL.iter().all(|s| s.bytes() <= MAX_CHUNK_SIZE));
        assert_eq!(ChunkSize::K16.to_string(), "16 KiB");
    }

    #[test]
    fn cuts_with_short_last_chunk_and_zero_chunks() {
        let size = ChunkSize::K4;
        let mut data = sample(3 * 4096 + 100);
        data[4096..8192].fill(0);
        let refs = chunk_refs(&data, size);
        assert_eq!(refs.len(), 4);
        assert_eq!(
            refs.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(
            refs.iter().map(|r| r.len).collect::<Vec<_>>(),
            [4096, 4096, 4096, 100]
        );
        assert!(refs[1].is_zero());
        assert_eq!(refs[0].id, Some(ChunkId::of(&data[..4096])));
        assert_eq!(refs[2].id, Some(ChunkId::of(&data[8192..12288])));
        assert_eq!(refs[3].id, Some(ChunkId::of(&data[12288..])));
        assert_eq!(refs[3].offset(size), 12288);
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_refs(&[], ChunkSize::K64).is_empty());
        assert!(chunk_refs_on(&[], ChunkSize::K64, 4).is_empty());
    }

    #[test]
    fn a_short_zero_tail_is_zero() {
        let mut data = sample(4096 + 10);
        data[4096..].fill(0);
        let refs = chunk_refs(&data, ChunkSize::K4);
        assert_eq!(
            refs[1],
            ChunkRef {
                index: 1,
                id: None,
                len: 10
            }
        );
    }

    #[test]
    fn threads_give_the_same_answer() {
        for size in ChunkSize::ALL {
            let mut data = sample(size.bytes() * 13 + 17);
            data[size.bytes() * 5..size.bytes() * 6].fill(0);
            let one = chunk_refs_on(&data, size, 1);
            for threads in [2, 3, 4, 13, 14, 100] {
                assert_eq!(
                    chunk_refs_on(&data, size, threads),
                    one,
                    "{size} x{threads}"
                );
            }
            assert_eq!(chunk_refs(&data, size), one);
        }
    }

    #[test]
    fn large_input_takes_the_parallel_path() {
        let data = sample(PARALLEL_MIN_BYTES + 4096 * 3 + 1);
        let refs = chunk_refs(&data, ChunkSize::K4);
        assert_eq!(refs, chunk_refs_on(&data, ChunkSize::K4, 1));
        assert_eq!(refs.len(), PARALLEL_MIN_BYTES / 4096 + 4);
    }
}
