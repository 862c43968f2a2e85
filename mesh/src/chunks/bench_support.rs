//! Measurements behind `novacron bench chunks`: for each chunk size, how fast a buffer is cut
//! and hashed, compressed, decompressed and verified, and put into and read back from a store
//! on disk, next to blake3 and zstd level 1 over the whole buffer measured in the same run.
//! Figures are MiB/s of the buffer's length (zero chunks count as processed), so stages and
//! references compare directly. Single-threaded unless a figure says otherwise.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Instant;

use super::chunking::{chunk_refs_on, ChunkRef, ChunkSize};
use super::codec::{ChunkDecoder, ChunkEncoder, CodecError, EncodedChunk, Level};
use super::store::{ChunkStore, StoreError};

/// Chunks per batch commit in the store figures.
const BATCH_CHUNKS: usize = 1024;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: {0}")]
    Codec(#[from] CodecError),
    #[error("bench: {0}")]
    Store(#[from] StoreError),
    #[error("bench: cannot use scratch directory {path}: {source}")]
    Scratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("bench: chunk {index} read back differs from the buffer")]
    Mismatch { index: u64 },
}

/// Figures for one chunk size.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeFigures {
    pub chunk_size: ChunkSize,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Non-zero chunks kept raw (incompressible).
    pub raw_chunks: u64,
    /// Cut + zero check + blake3 per chunk, one thread.
    pub hash_mib_s: f64,
    /// The same on all cores (`threads` of them).
    pub hash_all_mib_s: f64,
    /// Encoding every non-zero chunk at zstd 1, with the entropy pre-check.
    pub compress_mib_s: f64,
    /// The same without the pre-check (zstd decides alone).
    pub compress_no_precheck_mib_s: f64,
    /// Buffer length / bytes of all encoded chunks (zero chunks cost nothing).
    pub ratio: f64,
    /// Decoding and verifying every non-zero chunk.
    pub decompress_mib_s: f64,
    /// Batched puts (compression, temp files, fsyncs, links) into an empty store.
    pub put_mib_s: f64,
    /// Gets (read, decode, verify) of every non-zero chunk.
    pub get_mib_s: f64,
}

/// One run over one buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkBench {
    pub buffer_bytes: u64,
    pub threads: usize,
    /// blake3 of the whole buffer, one thread.
    pub blake3_mib_s: f64,
    /// zstd level 1 of the whole buffer as one frame, one thread.
    pub zstd1_mib_s: f64,
    pub zstd1_ratio: f64,
    pub sizes: Vec<SizeFigures>,
}

/// Measures every chunk size over `buf`, using a fresh directory under `scratch` for the store
/// figures (removed afterwards). Takes seconds for tens of MiB; the store figures depend on
/// the file system under `scratch`.
pub fn measure(buf: &[u8], scratch: &Path) -> Result<ChunkBench, BenchError> {
    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mib = buf.len() as f64 / (1024.0 * 1024.0);
    let rate = |secs: f64| mib / secs.max(1e-9);

    let (_, secs) = timed(|| blake3::hash(buf));
    let blake3_mib_s = rate(secs);
    let (frame, secs) = timed(|| zstd::bulk::compress(buf, 1));
    let frame = frame.map_err(|e| BenchError::Scratch {
        path: scratch.to_path_buf(),
        source: e,
    })?;
    let zstd1_mib_s = rate(secs);
    let zstd1_ratio = buf.len() as f64 / frame.len().max(1) as f64;

    let sizes = ChunkSize::ALL
        .iter()
        .map(|&size| measure_size(buf, size, threads, scratch, &rate))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChunkBench {
        buffer_bytes: buf.len() as u64,
        threads,
        blake3_mib_s,
        zstd1_mib_s,
        zstd1_ratio,
        sizes,
    })
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

fn measure_size(
    buf: &[u8],
    size: ChunkSize,
    threads: usize,
    scratch: &Path,
    rate: &dyn Fn(f64) -> f64,
) -> Result<SizeFigures, BenchError> {
    let (refs, secs) = timed(|| chunk_refs_on(buf, size, 1));
    let hash_mib_s = rate(secs);
    let (_, secs) = timed(|| chunk_refs_on(buf, size, threads));
    let hash_all_mib_s = rate(secs);

    let (encoded, secs) = timed(|| encode_all(buf, size, &refs, true));
    let encoded = encoded?;
    let compress_mib_s = rate(secs);
    let (plain, secs) = timed(|| encode_all(buf, size, &refs, false));
    plain?;
    let compress_no_precheck_mib_s = rate(secs);
    let stored: usize = encoded.iter().map(|(_, e)| e.bytes.len()).sum();

    let (decoded, secs) = timed(|| decode_all(buf, size, &encoded));
    decoded?;
    let decompress_mib_s = rate(secs);

    let (put_secs, get_secs) = store_round_trip(buf, size, &refs, scratch)?;
    Ok(SizeFigures {
        chunk_size: size,
        chunks: refs.len() as u64,
        zero_chunks: refs.iter().filter(|r| r.is_zero()).count() as u64,
        raw_chunks: encoded.iter().filter(|(_, e)| e.raw).count() as u64,
        hash_mib_s,
        hash_all_mib_s,
        compress_mib_s,
        compress_no_precheck_mib_s,
        ratio: buf.len() as f64 / stored.max(1) as f64,
        decompress_mib_s,
        put_mib_s: rate(put_secs),
        get_mib_s: rate(get_secs),
    })
}

/// The bytes of chunk `r` in `buf`.
fn chunk_of<'a>(buf: &'a [u8], size: ChunkSize, r: &ChunkRef) -> &'a [u8] {
    let start = r.offset(size) as usize;
    &buf[start..start + r.len as usize]
}

fn encode_all<'r>(
    buf: &[u8],
    size: ChunkSize,
    refs: &'r [ChunkRef],
    precheck: bool,
) -> Result<Vec<(&'r ChunkRef, EncodedChunk)>, CodecError> {
    let mut enc = ChunkEncoder::new(Level::default())?.with_entropy_precheck(precheck);
    refs.iter()
        .filter(|r| !r.is_zero())
        .map(|r| Ok((r, enc.encode(chunk_of(buf, size, r))?)))
        .collect()
}

fn decode_all(
    buf: &[u8],
    size: ChunkSize,
    encoded: &[(&ChunkRef, EncodedChunk)],
) -> Result<(), BenchError> {
    let mut dec = ChunkDecoder::new();
    let mut out = vec![0u8; size.bytes()];
    for (r, e) in encoded {
        let Some(id) = r.id else { continue };
        let dst = &mut out[..r.len as usize];
        dec.decode_into(e, &id, dst)?;
        if dst != chunk_of(buf, size, r) {
            return Err(BenchError::Mismatch { index: r.index });
        }
    }
    Ok(())
}

/// Seconds to put every non-zero chunk (in batches) into a fresh store, and to get them back.
fn store_round_trip(
    buf: &[u8],
    size: ChunkSize,
    refs: &[ChunkRef],
    scratch: &Path,
) -> Result<(f64, f64), BenchError> {
    let dir = scratch.join(format!(
        "chunk-bench-{}-{}",
        std::process::id(),
        size.bytes()
    ));
    let scratch_err = |source| BenchError::Scratch {
        path: dir.clone(),
        source,
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(scratch_err)?;
    }
    let result = (|| {
        let store = ChunkStore::open(&dir, Level::default())?;
        let nonzero: Vec<&ChunkRef> = refs.iter().filter(|r| !r.is_zero()).collect();
        let (put, put_secs) = timed(|| -> Result<(), BenchError> {
            for group in nonzero.chunks(BATCH_CHUNKS) {
                let mut batch = store.batch();
                for r in group {
                    batch.put(chunk_of(buf, size, r))?;
                }
                batch.commit()?;
            }
            Ok(())
        });
        put?;
        let (got, get_secs) = timed(|| -> Result<(), BenchError> {
            for r in &nonzero {
                let Some(id) = r.id else { continue };
                if store.get(&id)? != chunk_of(buf, size, r) {
                    return Err(BenchError::Mismatch { index: r.index });
                }
            }
            Ok(())
        });
        got?;
        Ok((put_secs, get_secs))
    })();
    std::fs::remove_dir_all(&dir).map_err(scratch_err)?;
    result
}

impl fmt::Display for ChunkBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "buffer {:.0} MiB, {} threads; references: blake3 {:.0} MiB/s, zstd-1 {:.0} MiB/s ratio {:.2}x (one thread, whole buffer)",
            self.buffer_bytes as f64 / (1024.0 * 1024.0),
            self.threads,
            self.blake3_mib_s,
            self.zstd1_mib_s,
            self.zstd1_ratio
        )?;
        writeln!(
            f,
            "{:>6} {:>7} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8}",
            "chunk",
            "chunks",
            "zero",
            "raw",
            "hash",
            "hash*N",
            "zstd1",
            "zstd1-np",
            "ratio",
            "dec+ver",
            "put",
            "get"
        )?;
        for s in &self.sizes {
            writeln!(
                f,
                "{:>6} {:>7} {:>6} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>6.2}x {:>8.0} {:>8.0} {:>8.0}",
                s.chunk_size.to_string().replace(' ', ""),
                s.chunks,
                s.zero_chunks,
                s.raw_chunks,
                s.hash_mib_s,
                s.hash_all_mib_s,
                s.compress_mib_s,
                s.compress_no_precheck_mib_s,
                s.ratio,
                s.decompress_mib_s,
                s.put_mib_s,
                s.get_mib_s
            )?;
        }
        write!(
            f,
            "(MiB/s of the buffer; hash*N on all threads; zstd1-np without the entropy pre-check)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{mostly_zero, pattern, random};

    #[test]
    fn measure_reports_consistent_counts() {
        let dir = tempfile::tempdir().unwrap();
        let buf = mostly_zero(1 << 20);
        let b = measure(&buf, dir.path()).unwrap();
        assert_eq!(b.buffer_bytes, 1 << 20);
        assert_eq!(b.sizes.len(), 3);
        let k4 = &b.sizes[0];
        assert_eq!(
            (k4.chunk_size, k4.chunks, k4.zero_chunks),
            (ChunkSize::K4, 256, 248)
        );
        let k64 = &b.sizes[2];
        assert_eq!((k64.chunks, k64.zero_chunks), (16, 8));
        assert!(b.sizes.iter().all(|s| s.raw_chunks == 0 && s.ratio > 20.0));
        assert!(b
            .sizes
            .iter()
            .all(|s| s.put_mib_s > 0.0 && s.get_mib_s > 0.0));
        // The scratch store is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let table = b.to_string();
        assert!(table.contains("4KiB") && table.contains("64KiB"), "{table}");
        let rnd = measure(&random(1 << 18, 5), dir.path()).unwrap();
        assert!(rnd.sizes.iter().all(|s| s.raw_chunks == s.chunks), "{rnd}");
    }

    /// The figures for the report: `cargo test -p novacron-mesh --release -- --ignored
    /// --nocapture bench_table` (NOVACRON_BENCH_DIR picks the store's file system).
    #[test]
    #[ignore = "benchmark: run by hand in release"]
    fn bench_table() {
        let dir = std::env::var_os("NOVACRON_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let len = 64 << 20;
        for (name, buf) in [
            ("pattern", pattern(len)),
            ("random", random(len, 0x9E37_79B9)),
            ("mostly-zero", mostly_zero(len)),
        ] {
            let b = measure(&buf, &dir).unwrap();
            println!("== {name} (store in {})\n{b}\n", dir.display());
        }
    }
}
