//! Memory layer files: guest pages of a set of page runs, checksummed with blake3.
//!
//! Layout (little endian):
//! ```text
//! 0    header (64 bytes): magic b"NCVL", version u16, reserved u16, page size u32,
//!      reserved u32, run count u64, total pages u64, data offset u64, 24 reserved bytes
//! 64   run table: run count x (first page gpa u64, pages u64), sorted, non-overlapping
//!      zero padding up to `data offset` (page-aligned)
//! data the pages of every run, in table order
//! end  trailer (40 bytes): b"NCVLEND\0", blake3 of every byte before the trailer
//! ```
//! The hash covers header, table and data, so [`LayerInfo::hash`] (kept in the manifest)
//! pins the whole file.
//!
//! Writing streams straight from guest memory: the main thread `write`s guest slices to the
//! file while a second thread hashes the same slices. Applying reads the file straight into
//! guest memory with `pread`, chunk by chunk, while a second thread hashes each chunk right
//! after it lands (still hot in cache).
//!
//! What this cannot do: applying writes guest memory *before* the checksum is known to be
//! good. On any error the target memory holds a partial mix and must be discarded; this is
//! meant for the fresh, not yet started VM of a restore. Writes made by [`apply_layer`] are
//! not recorded in the memory's `AtomicBitmap`. Neither function pauses vCPUs: the caller
//! guarantees nothing else touches the memory meanwhile.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::atomic::{parent_dir, sync_dir, FaultHook, PendingFile};
use super::checksummed::check_file_len;
use super::page_runs::{merge_runs, validate_runs, PageRun, RunError};
use super::{Result, StorageError};
use crate::machine::layout::{MAX_MEM_BYTES, PAGE_SIZE};

/// Magic at the start of a layer file.
pub const LAYER_MAGIC: [u8; 4] = *b"NCVL";
/// Magic at the start of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"NCVLEND\0";
/// Layer format version written and accepted.
pub const LAYER_VERSION: u16 = 1;
/// Fixed header length.
pub const LAYER_HEADER_LEN: u64 = 64;
/// Bytes per run-table entry.
pub const RUN_ENTRY_LEN: u64 = 16;
/// Trailer length.
pub const TRAILER_LEN: u64 = 40;
/// Most runs one layer may hold (a 64 MiB run table).
pub const MAX_LAYER_RUNS: u64 = 1 << 22;
/// Most pages one layer may hold: all of the largest guest memory the VMM accepts.
pub const MAX_LAYER_PAGES: u64 = MAX_MEM_BYTES / PAGE_SIZE;
/// Guest memory is written, read and hashed in chunks of at most this many bytes, so a chunk
/// is still in cache when the hashing thread reads it.
const CHUNK_BYTES: usize = 1 << 20;
/// Threads reading layer data into guest memory while applying. 2 measured ~15% slower
/// than 1 on the 2-core debug build (the hashing thread is then the bottleneck); retune for
/// release builds on larger machines.
const READ_LANES: usize = 1;
/// Buffers per `writev` call (Linux's IOV_MAX).
const IOV_BATCH: usize = 1024;
/// Large layers are handed to the page cache in groups of this many bytes, each followed
/// by an early `fdatasync` (see `write_with_early_writeback`).
const WRITEBACK_BYTES: usize = 16 << 20;
/// Chunks read ahead of the hashing thread while applying.
const APPLY_QUEUE_DEPTH: usize = 32;

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// File name (no directory).
    pub file_name: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Guest pages stored.
    pub pages: u64,
    /// Runs in the table (after merging).
    pub runs: u64,
    /// blake3 of everything before the trailer.
    pub hash: blake3::Hash,
    /// Time spent in fsync (file + directory).
    pub sync_time: Duration,
    /// Time of the whole write.
    pub elapsed: Duration,
}

/// What [`apply_layer`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub runs: u64,
    /// The page runs this layer wrote into guest memory.
    pub applied: Vec<PageRun>,
    pub pages: u64,
    /// File size in bytes.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LayerHeader {
    run_count: u64,
    total_pages: u64,
    data_offset: u64,
}

impl LayerHeader {
    fn data_end(&self) -> Option<u64> {
        self.total_pages
            .checked_mul(PAGE_SIZE)?
            .checked_add(self.data_offset)
    }
}

/// Where the data starts for a table of `run_count` runs: after header and table, page-aligned.
fn data_offset_for(run_count: u64) -> Option<u64> {
    let end = run_count
        .checked_mul(RUN_ENTRY_LEN)?
        .checked_add(LAYER_HEADER_LEN)?;
    end.checked_next_multiple_of(PAGE_SIZE)
}

/// Writes the pages of `runs` (any order; overlapping or adjacent runs are merged) from `mem`
/// into a new layer file at `path`, atomically.
pub fn write_layer(
    path: &Path,
    mem: &GuestMemoryMmap<AtomicBitmap>,
    runs: &[PageRun],
) -> Result<LayerInfo> {
    write_layer_with(path, mem, runs, None)
}

/// [`write_layer`] with a fault hook.
pub(crate) fn write_layer_with(
    path: &Path,
    mem: &GuestMemoryMmap<AtomicBitmap>,
    runs: &[PageRun],
    hook: Option<FaultHook<'_>>,
) -> Result<LayerInfo> {
    let started = Instant::now();
    let prepared = PreparedLayer::new(mem, runs)?;
    let mut pending = PendingFile::create(path, hook)?;
    let result = (|| {
        let mut info = prepared.write_into(&mut pending)?;
        let file_sync = pending.sync()?;
        pending.rename()?;
        let dir_sync = sync_dir(&parent_dir(path))?;
        pending.dir_synced()?;
        info.sync_time = file_sync + dir_sync;
        info.elapsed = started.elapsed();
        Ok(info)
    })();
    if result.is_err() {
        pending.discard();
    }
    result
}

/// A layer whose runs were validated against guest memory and whose header and run table
/// are encoded: everything but the I/O. Borrows the guest memory it will write.
pub(crate) struct PreparedLayer<'m> {
    runs: u64,
    pages: u64,
    prefix: Vec<u8>,
    chunks: Vec<&'m [u8]>,
}

impl<'m> PreparedLayer<'m> {
    /// Merges and validates `runs` (any order; overlapping or adjacent runs are merged)
    /// against `mem` and encodes the file prefix. Touches no file.
    pub(crate) fn new(mem: &'m GuestMemoryMmap<AtomicBitmap>, runs: &[PageRun]) -> Result<Self> {
        let runs = merge_runs(runs)?;
        let pages =
            validate_runs(&runs, mem).map_err(|reason| StorageError::InvalidRuns { reason })?;
        if runs.len() as u64 > MAX_LAYER_RUNS {
            return Err(StorageError::InvalidRuns {
                reason: RunError::TooMany {
                    count: runs.len(),
                    limit: MAX_LAYER_RUNS,
                },
            });
        }
        let prefix = encode_prefix(&runs, pages)?;
        let chunks = guest_chunks(mem, &runs)
            .map_err(|reason| StorageError::InvalidRuns { reason })?
            .into_iter()
            // SAFETY: the ranges come from `mem`'s mappings, which outlive `'m` (`mem` is
            // borrowed for it); the caller guarantees no one writes guest memory during the
            // snapshot.
            .map(|(ptr, len)| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
            .collect();
        Ok(PreparedLayer {
            runs: runs.len() as u64,
            pages,
            prefix,
            chunks,
        })
    }

    /// Writes the whole layer (prefix, pages, trailer) into `pending` while another thread
    /// hashes it. Does not sync or rename: `sync_time` is zero and `elapsed` covers the
    /// write only.
    pub(crate) fn write_into(&self, pending: &mut PendingFile<'_>) -> Result<LayerInfo> {
        let started = Instant::now();
        let mut hash = None;
        pending.write_file(|file| {
            let h = write_and_hash(file, &self.prefix, &self.chunks)?;
            let mut w = file;
            w.write_all(&encode_trailer(&h))?;
            hash = Some(h);
            Ok(())
        })?;
        let path = pending.target();
        let hash = hash.ok_or_else(|| StorageError::Io {
            path: path.to_path_buf(),
            op: "hash layer",
            source: io::Error::other("writer returned without a hash"),
        })?;
        let info = LayerInfo {
            file_name: file_name_of(path),
            bytes: self.prefix.len() as u64 + self.pages * PAGE_SIZE + TRAILER_LEN,
            pages: self.pages,
            runs: self.runs,
            hash,
            sync_time: Duration::ZERO,
            elapsed: started.elapsed(),
        };
        tracing::debug!(path = %path.display(), pages = info.pages, runs = info.runs,
            bytes = info.bytes, write_ms = info.elapsed.as_secs_f64() * 1e3,
            "memory layer data written");
        Ok(info)
    }
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes prefix and chunks on this thread while another thread hashes them (and, for
/// large layers, a third starts writeback early; see [`write_with_early_writeback`]).
fn write_and_hash(file: &File, prefix: &[u8], chunks: &[&[u8]]) -> io::Result<blake3::Hash> {
    std::thread::scope(|s| {
        let hasher = s.spawn(|| {
            let mut h = blake3::Hasher::new();
            h.update(prefix);
            for c in chunks {
                h.update(c);
            }
            h.finalize()
        });
        let written = write_with_early_writeback(s, file, prefix, chunks);
        let hash = hasher
            .join()
            .map_err(|_| io::Error::other("layer hashing thread panicked"));
        written.and(hash)
    })
}

/// Writes prefix then chunks. When there is more than [`WRITEBACK_BYTES`] of data, a helper
/// thread runs `fdatasync` each time another [`WRITEBACK_BYTES`] has been handed to the page
/// cache, so the device writes earlier data while this thread copies later data (the final
/// fsync then has little left to do). An error of any early `fdatasync` fails the write:
/// the kernel reports a writeback error only once per open file, so the final fsync could
/// miss it.
fn write_with_early_writeback<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    file: &'s File,
    prefix: &[u8],
    chunks: &[&[u8]],
) -> io::Result<()> {
    let all: Vec<&[u8]> = std::iter::once(prefix)
        .chain(chunks.iter().copied())
        .collect();
    let total: usize = all.iter().map(|c| c.len()).sum();
    let mut w: &File = file;
    if total <= WRITEBACK_BYTES {
        return write_all_chunks(&mut w, &all);
    }
    let (tx, rx) = mpsc::channel::<()>();
    let syncer = std::thread::Builder::new()
        .name("layer-writeback".into())
        .spawn_scoped(scope, move || -> io::Result<()> {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                file.sync_data()?;
            }
            Ok(())
        });
    let syncer = match syncer {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "writeback thread not started");
            return write_all_chunks(&mut w, &all);
        }
    };
    let mut written = Ok(());
    for group in groups_of_bytes(&all, WRITEBACK_BYTES) {
        written = write_all_chunks(&mut w, group);
        if written.is_err() {
            break;
        }
        // A closed channel means the syncer failed; its error is reported below.
        let _ = tx.send(());
    }
    drop(tx);
    let synced = syncer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("layer writeback thread panicked")));
    written.and(synced)
}

/// Splits `bufs` into consecutive groups of about `bytes` bytes each (whole buffers).
fn groups_of_bytes<'a, 'b>(bufs: &'a [&'b [u8]], bytes: usize) -> Vec<&'a [&'b [u8]]> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, b) in bufs.iter().enumerate() {
        size += b.len();
        if size >= bytes {
            groups.push(&bufs[start..=i]);
            (start, size) = (i + 1, 0);
        }
    }
    if start < bufs.len() {
        groups.push(&bufs[start..]);
    }
    groups
}

/// Writes `bufs` with `writev`, up to [`IOV_BATCH`] buffers per call, so many small runs
/// (an incremental snapshot) do not cost one syscall each.
fn write_all_chunks(w: &mut dyn Write, bufs: &[&[u8]]) -> io::Result<()> {
    for batch in bufs.chunks(IOV_BATCH) {
        let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = w.write_vectored(rest)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "layer write made no progress",
                ));
            }
            IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

/// Header, run table and zero padding up to the (page-aligned) data offset.
fn encode_prefix(runs: &[PageRun], total_pages: u64) -> Result<Vec<u8>> {
    let run_count = runs.len() as u64;
    let data_offset = data_offset_for(run_count).ok_or(StorageError::InvalidRuns {
        reason: RunError::TableOverflow(run_count),
    })?;
    let mut out = Vec::with_capacity(data_offset as usize);
    out.extend_from_slice(&LAYER_MAGIC);
    out.extend_from_slice(&LAYER_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&run_count.to_le_bytes());
    out.extend_from_slice(&total_pages.to_le_bytes());
    out.extend_from_slice(&data_offset.to_le_bytes());
    out.resize(LAYER_HEADER_LEN as usize, 0);
    for r in runs {
        out.extend_from_slice(&r.first_page_gpa.to_le_bytes());
        out.extend_from_slice(&r.pages.to_le_bytes());
    }
    out.resize(data_offset as usize, 0);
    Ok(out)
}

fn encode_trailer(hash: &blake3::Hash) -> [u8; TRAILER_LEN as usize] {
    let mut t = [0u8; TRAILER_LEN as usize];
    t[..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..].copy_from_slice(hash.as_bytes());
    t
}

/// Host address ranges covering `runs` in order, split at region boundaries and into chunks
/// of at most [`CHUNK_BYTES`]. The runs must already be validated against `mem`.
fn guest_chunks(
    mem: &GuestMemoryMmap<AtomicBitmap>,
    runs: &[PageRun],
) -> std::result::Result<Vec<(*mut u8, usize)>, RunError> {
    let mut out = Vec::new();
    for run in runs {
        let gpa = run.first_page_gpa;
        let len = run
            .bytes()
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(RunError::HostTooLong { gpa })?;
        for slice in mem.get_slices(GuestAddress(gpa), len) {
            let slice = slice.map_err(|e| RunError::Unmapped {
                gpa,
                reason: e.to_string(),
            })?;
            let base = slice.ptr_guard_mut().as_ptr();
            let mut done = 0;
            while done < slice.len() {
                let n = CHUNK_BYTES.min(slice.len() - done);
                // The mmap backend's pointers stay valid for the life of `mem`.
                out.push((base.wrapping_add(done), n));
                done += n;
            }
        }
    }
    Ok(out)
}

/// Applies the layer at `path` to `mem`: validates header, run table and file length, then
/// reads every page into place while hashing. `expected_hash` (from the manifest) is
/// compared with the trailer before memory is touched and with the computed hash at the end.
///
/// On error `mem` may hold part of the layer (see the module docs); the file is never changed.
pub fn apply_layer(
    path: &Path,
    mem: &GuestMemoryMmap<AtomicBitmap>,
    expected_hash: Option<blake3::Hash>,
) -> Result<LayerStats> {
    apply_layer_with_lanes(path, mem, expected_hash, READ_LANES)
}

/// [`apply_layer`] reading on `read_lanes` threads.
fn apply_layer_with_lanes(
    path: &Path,
    mem: &GuestMemoryMmap<AtomicBitmap>,
    expected_hash: Option<blake3::Hash>,
    read_lanes: usize,
) -> Result<LayerStats> {
    let started = Instant::now();
    let file = File::open(path).map_err(|e| StorageError::io(path, "open layer", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io(path, "stat layer", e))?
        .len();
    let header = read_header(&file, path, file_len)?;
    let prefix = read_at(&file, path, 0, header.data_offset, "read run table")?;
    let runs = parse_runs(&prefix, header.run_count);
    check_runs(path, &runs, &header, mem)?;
    let stored = read_trailer(&file, path, file_len)?;
    if expected_hash.is_some_and(|h| h != stored) {
        return Err(StorageError::ChecksumMismatch {
            path: path.to_path_buf(),
            detail: "layer hash in the trailer differs from the manifest's",
        });
    }
    let chunks = guest_chunks(mem, &runs).map_err(|e| invalid(path, e.to_string()))?;
    let computed = fill_and_hash(&file, path, &prefix, chunks, header.data_offset, read_lanes)?;
    if computed != stored {
        return Err(StorageError::ChecksumMismatch {
            path: path.to_path_buf(),
            detail: "layer contents do not match the blake3 in the trailer",
        });
    }
    Ok(LayerStats {
        runs: header.run_count,
        applied: runs,
        pages: header.total_pages,
        bytes: file_len,
        elapsed: started.elapsed(),
    })
}

fn invalid(path: &Path, reason: String) -> StorageError {
    StorageError::InvalidLayer {
        path: path.to_path_buf(),
        reason,
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads and checks the fixed header, including the file length it implies.
fn read_header(file: &File, path: &Path, file_len: u64) -> Result<LayerHeader> {
    let min = LAYER_HEADER_LEN + TRAILER_LEN;
    if file_len < min {
        return Err(StorageError::Truncated {
            path: path.to_path_buf(),
            expected: min,
            found: file_len,
        });
    }
    let h = read_at(file, path, 0, LAYER_HEADER_LEN, "read layer header")?;
    let header = parse_header(path, &h)?;
    let data_end = header
        .data_end()
        .ok_or_else(|| invalid(path, "data size overflows".into()))?;
    check_file_len(path, data_end.saturating_add(TRAILER_LEN), file_len)?;
    Ok(header)
}

fn parse_header(path: &Path, h: &[u8]) -> Result<LayerHeader> {
    let p = || path.to_path_buf();
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != LAYER_MAGIC {
        return Err(StorageError::BadMagic {
            path: p(),
            expected: LAYER_MAGIC,
            found: magic,
        });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != LAYER_VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: p(),
            found: version,
            supported: LAYER_VERSION,
        });
    }
    let page_size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if u64::from(page_size) != PAGE_SIZE {
        return Err(invalid(
            path,
            format!("page size {page_size}, expected {PAGE_SIZE}"),
        ));
    }
    let header = LayerHeader {
        run_count: le_u64(h, 16),
        total_pages: le_u64(h, 24),
        data_offset: le_u64(h, 32),
    };
    check_header_limits(path, &header)?;
    Ok(header)
}

fn check_header_limits(path: &Path, header: &LayerHeader) -> Result<()> {
    let too_large = |what, value, limit| StorageError::TooLarge {
        path: path.to_path_buf(),
        what,
        value,
        limit,
    };
    if header.run_count > MAX_LAYER_RUNS {
        return Err(too_large("run count", header.run_count, MAX_LAYER_RUNS));
    }
    if header.total_pages > MAX_LAYER_PAGES {
        return Err(too_large("page count", header.total_pages, MAX_LAYER_PAGES));
    }
    if header.run_count > header.total_pages {
        return Err(invalid(
            path,
            format!(
                "{} runs but only {} pages (every run holds at least one page)",
                header.run_count, header.total_pages
            ),
        ));
    }
    let expected = data_offset_for(header.run_count);
    if expected != Some(header.data_offset) {
        return Err(invalid(
            path,
            format!(
                "data offset {} does not match {} runs (expected {expected:?})",
                header.data_offset, header.run_count
            ),
        ));
    }
    Ok(())
}

fn parse_runs(prefix: &[u8], run_count: u64) -> Vec<PageRun> {
    let table = &prefix[LAYER_HEADER_LEN as usize..];
    table
        .chunks_exact(RUN_ENTRY_LEN as usize)
        .take(run_count as usize)
        .map(|e| PageRun {
            first_page_gpa: le_u64(e, 0),
            pages: le_u64(e, 8),
        })
        .collect()
}

/// Checks the run table against the header and the target memory.
fn check_runs(
    path: &Path,
    runs: &[PageRun],
    header: &LayerHeader,
    mem: &GuestMemoryMmap<AtomicBitmap>,
) -> Result<()> {
    let total = validate_runs(runs, mem).map_err(|e| invalid(path, e.to_string()))?;
    if total != header.total_pages {
        return Err(invalid(
            path,
            format!(
                "runs hold {total} pages but the header says {}",
                header.total_pages
            ),
        ));
    }
    Ok(())
}

fn read_trailer(file: &File, path: &Path, file_len: u64) -> Result<blake3::Hash> {
    let t = read_at(
        file,
        path,
        file_len - TRAILER_LEN,
        TRAILER_LEN,
        "read trailer",
    )?;
    if t[..8] != TRAILER_MAGIC {
        return Err(invalid(path, format!("bad trailer magic {:02x?}", &t[..8])));
    }
    let mut h = [0u8; 32];
    h.copy_from_slice(&t[8..]);
    Ok(blake3::Hash::from_bytes(h))
}

/// Reads `len` bytes at `offset` into a new buffer. Callers bound `len` by the file length.
fn read_at(file: &File, path: &Path, offset: u64, len: u64, op: &'static str) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| invalid(path, format!("{op}: length {len}")))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StorageError::io(path, op, e))?;
    Ok(buf)
}

/// Reads the data area chunk by chunk into guest memory on `read_lanes` threads (chunk
/// `i` on lane `i % read_lanes`; faulting in fresh guest pages is the dominant cost and
/// scales with threads) while another thread hashes `prefix` and then every chunk, in file
/// order, right after it lands. Returns the hash of prefix + data.
fn fill_and_hash(
    file: &File,
    path: &Path,
    prefix: &[u8],
    chunks: Vec<(*mut u8, usize)>,
    data_offset: u64,
    read_lanes: usize,
) -> Result<blake3::Hash> {
    let count = chunks.len();
    let read_lanes = read_lanes.max(1);
    let mut lanes: Vec<Vec<(u64, &mut [u8])>> = (0..read_lanes).map(|_| Vec::new()).collect();
    let mut offset = data_offset;
    for (i, (ptr, len)) in chunks.into_iter().enumerate() {
        // SAFETY: the chunks come from validated, sorted, non-overlapping runs, so the
        // slices are disjoint; they lie in `mem`'s mappings, which outlive this call; the
        // caller guarantees nothing else accesses this memory (fresh VM, vCPUs not running).
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        lanes[i % read_lanes].push((offset, slice));
        offset += len as u64;
    }
    std::thread::scope(|s| {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..read_lanes)
            .map(|_| mpsc::sync_channel::<&[u8]>(APPLY_QUEUE_DEPTH))
            .unzip();
        let hasher = s.spawn(move || hash_in_order(prefix, count, receivers));
        let mut lanes = lanes.into_iter().zip(senders);
        let main_lane = lanes.next();
        let helpers: Vec<_> = lanes
            .map(|(lane, tx)| s.spawn(move || read_lane(file, path, lane, tx)))
            .collect();
        let mut read = main_lane.map_or(Ok(()), |(lane, tx)| read_lane(file, path, lane, tx));
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(thread_panicked(path, "read layer")));
            read = read.and(r);
        }
        let hash = hasher
            .join()
            .map_err(|_| thread_panicked(path, "hash layer"));
        read.and(hash)
    })
}

fn thread_panicked(path: &Path, op: &'static str) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        op,
        source: io::Error::other("worker thread panicked"),
    }
}

/// Hashes `prefix`, then `count` chunks taken round-robin from the lanes' channels. Stops
/// early if a lane hangs up (its reader failed; the caller reports that error).
fn hash_in_order(prefix: &[u8], count: usize, lanes: Vec<mpsc::Receiver<&[u8]>>) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(prefix);
    for i in 0..count {
        match lanes[i % lanes.len()].recv() {
            Ok(chunk) => {
                h.update(chunk);
            }
            Err(_) => break,
        }
    }
    h.finalize()
}

fn read_lane<'a>(
    file: &File,
    path: &Path,
    lane: Vec<(u64, &'a mut [u8])>,
    tx: mpsc::SyncSender<&'a [u8]>,
) -> Result<()> {
    for (offset, slice) in lane {
        file.read_exact_at(slice, offset)
            .map_err(|e| StorageError::io(path, "read layer data", e))?;
        if tx.send(slice).is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryRegion};

    pub(crate) fn mem_of(ranges: &[(u64, usize)]) -> GuestMemoryMmap<AtomicBitmap> {
        let r: Vec<(GuestAddress, usize)> =
            ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    fn fill_pattern(mem: &GuestMemoryMmap<AtomicBitmap>, seed: u64) {
        for region in mem.iter() {
            let start = region.start_addr().0;
            let len = region.len() as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| ((start as usize + i) as u64).wrapping_mul(seed) as u8 ^ (i >> 12) as u8)
                .collect();
            mem.write_slice(&bytes, GuestAddress(start)).unwrap();
        }
    }

    fn dump(mem: &GuestMemoryMmap<AtomicBitmap>, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    fn run(gpa: u64, pages: u64) -> PageRun {
        PageRun {
            first_page_gpa: gpa,
            pages,
        }
    }

    /// Two adjacent regions (a run may span them) and one after a hole.
    const LAYOUT: &[(u64, usize)] = &[(0, 2 << 20), (2 << 20, 2 << 20), (8 << 20, 1 << 20)];

    fn written_layer() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        GuestMemoryMmap<AtomicBitmap>,
        LayerInfo,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer");
        let src = mem_of(LAYOUT);
        fill_pattern(&src, 31);
        let runs = [
            run(0, 3),
            run((2 << 20) - 5 * PAGE_SIZE, 10),
            run(8 << 20, 256),
        ];
        let info = write_layer(&path, &src, &runs).unwrap();
        (dir, path, src, info)
    }

    #[test]
    fn round_trip_copies_exactly_the_runs() {
        let (_d, path, src, info) = written_layer();
        assert_eq!(info.pages, 3 + 10 + 256);
        assert_eq!(info.runs, 3);
        assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(info.bytes, PAGE_SIZE + info.pages * PAGE_SIZE + TRAILER_LEN);
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(
            info.hash,
            blake3::hash(&whole[..whole.len() - TRAILER_LEN as usize])
        );

        let dst = mem_of(LAYOUT);
        let stats = apply_layer(&path, &dst, Some(info.hash)).unwrap();
        assert_eq!(stats.pages, info.pages);
        let p = PAGE_SIZE as usize;
        assert_eq!(dump(&dst, 0, 3 * p), dump(&src, 0, 3 * p));
        assert_eq!(dump(&dst, 3 * p as u64, p), vec![0u8; p]);
        let span = (2 << 20) - 5 * PAGE_SIZE;
        assert_eq!(dump(&dst, span, 10 * p), dump(&src, span, 10 * p));
        assert_eq!(dump(&dst, span + 10 * PAGE_SIZE, p), vec![0u8; p]);
        assert_eq!(dump(&dst, 8 << 20, 1 << 20), dump(&src, 8 << 20, 1 << 20));
    }

    #[test]
    fn several_read_lanes_restore_the_same_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let src = mem_of(LAYOUT);
        fill_pattern(&src, 7);
        // Enough data for several chunks per lane, spanning the region boundary.
        let info = write_layer(&path, &src, &[run(PAGE_SIZE, 900), run(8 << 20, 200)]).unwrap();
        for lanes in [1, 2, 3] {
            let dst = mem_of(LAYOUT);
            apply_layer_with_lanes(&path, &dst, Some(info.hash), lanes).unwrap();
            let n = 900 * PAGE_SIZE as usize;
            assert_eq!(
                dump(&dst, PAGE_SIZE, n),
                dump(&src, PAGE_SIZE, n),
                "{lanes} lanes"
            );
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last_data = bytes.len() - TRAILER_LEN as usize - 1;
        bytes[last_data] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = apply_layer_with_lanes(&path, &mem_of(LAYOUT), Some(info.hash), 3).unwrap_err();
        assert!(
            matches!(err, StorageError::ChecksumMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn groups_cover_every_buffer_once_in_order() {
        let bufs: Vec<&[u8]> = vec![&[1; 3], &[2; 5], &[3; 1], &[4; 8], &[5; 2]];
        let groups = groups_of_bytes(&bufs, 6);
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(groups.concat(), bufs);
        assert!(groups_of_bytes(&[], 6).is_empty());
    }

    #[test]
    fn large_layer_written_with_early_writeback_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        let layout: &[(u64, usize)] = &[(0, 48 << 20)];
        let src = mem_of(layout);
        fill_pattern(&src, 13);
        // More than two writeback groups, in runs of different sizes.
        let runs = [run(PAGE_SIZE, 7000), run(40 << 20, 2048), run(30 << 20, 1)];
        let info = write_layer(&path, &src, &runs).unwrap();
        assert!(info.pages * PAGE_SIZE > 2 * WRITEBACK_BYTES as u64);
        let whole = std::fs::read(&path).unwrap();
        let body = &whole[..whole.len() - TRAILER_LEN as usize];
        assert_eq!(info.hash, blake3::hash(body));
        let dst = mem_of(layout);
        apply_layer(&path, &dst, Some(info.hash)).unwrap();
        for r in runs {
            let len = (r.pages * PAGE_SIZE) as usize;
            assert!(dump(&dst, r.first_page_gpa, len) == dump(&src, r.first_page_gpa, len));
        }
    }

    #[test]
    fn writer_merges_and_rejects_bad_runs() {
        let dir = tempfile::tempdir().unwrap();
        let src = mem_of(LAYOUT);
        let path = dir.path().join("l");
        let info = write_layer(&path, &src, &[run(PAGE_SIZE, 2), run(0, 2)]).unwrap();
        assert_eq!((info.runs, info.pages), (1, 3));
        for bad in [run(5 << 20, 1), run(100, 1), run((9 << 20) - PAGE_SIZE, 2)] {
            let err = write_layer(&dir.path().join("bad"), &src, &[bad]).unwrap_err();
            assert!(matches!(err, StorageError::InvalidRuns { .. }), "{err}");
        }
        assert!(!dir.path().join("bad").exists());
        let empty = write_layer(&dir.path().join("e"), &src, &[]).unwrap();
        assert_eq!(empty.pages, 0);
        apply_layer(&dir.path().join("e"), &src, Some(empty.hash)).unwrap();
    }

    #[test]
    fn every_region_of_the_file_detects_a_flipped_byte() {
        let (_d, path, _src, info) = written_layer();
        let good = std::fs::read(&path).unwrap();
        let len = good.len();
        let p = PAGE_SIZE as usize;
        // header fields, run table, padding, first/middle/last data byte, trailer.
        let offsets = [
            0,
            4,
            8,
            16,
            24,
            32,
            40,
            63,
            64,
            72,
            80,
            100,
            p - 1,
            p,
            p + 5000,
            len - 41,
            len - 40,
            len - 33,
            len - 1,
        ];
        for off in offsets {
            let mut bad = good.clone();
            bad[off] ^= 0x80;
            std::fs::write(&path, &bad).unwrap();
            let dst = mem_of(LAYOUT);
            let err = apply_layer(&path, &dst, Some(info.hash)).unwrap_err();
            assert!(
                err.to_string().contains(path.to_str().unwrap()),
                "{off}: {err}"
            );
            // Without the manifest hash only the trailer protects the data: still caught.
            let err = apply_layer(&path, &dst, None).unwrap_err();
            assert!(
                err.to_string().contains(path.to_str().unwrap()),
                "{off}: {err}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bad,
                "a failed read changed the file"
            );
        }
    }

    #[test]
    fn truncated_or_extended_file_is_an_error() {
        let (_d, path, _src, info) = written_layer();
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 10, 64, 100, 4096, 5000, good.len() - 41, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = apply_layer(&path, &mem_of(LAYOUT), Some(info.hash)).unwrap_err();
            assert!(
                matches!(err, StorageError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &longer).unwrap();
        let err = apply_layer(&path, &mem_of(LAYOUT), Some(info.hash)).unwrap_err();
        assert!(matches!(err, StorageError::TrailingBytes { .. }), "{err}");
        let err = apply_layer(&path.with_extension("gone"), &mem_of(LAYOUT), None).unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    }

    #[test]
    fn wrong_manifest_hash_is_caught_before_memory_is_touched() {
        let (_d, path, _src, _info) = written_layer();
        let dst = mem_of(LAYOUT);
        let err = apply_layer(&path, &dst, Some(blake3::hash(b"other"))).unwrap_err();
        assert!(
            matches!(err, StorageError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert_eq!(dump(&dst, 0, 4096), vec![0u8; 4096]);
    }

    /// Builds a layer file from a hand-made header and table (and the right length/trailer
    /// unless the test breaks them) to exercise the reader's validation.
    fn hostile(path: &Path, run_count: u64, total_pages: u64, runs: &[PageRun], data_pages: u64) {
        let data_offset = data_offset_for(runs.len() as u64).unwrap();
        let mut prefix = encode_prefix(runs, total_pages).unwrap();
        prefix[16..24].copy_from_slice(&run_count.to_le_bytes());
        prefix[32..40].copy_from_slice(&data_offset.to_le_bytes());
        let mut file = prefix;
        file.resize((data_offset + data_pages * PAGE_SIZE) as usize, 0xAB);
        let hash = blake3::hash(&file);
        file.extend_from_slice(&encode_trailer(&hash));
        std::fs::write(path, &file).unwrap();
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        let mem = mem_of(LAYOUT);
        let p = PAGE_SIZE;
        let cases: Vec<(u64, u64, Vec<PageRun>, u64, &str)> = vec![
            (u64::MAX, 1, vec![run(0, 1)], 1, "run count"),
            (1, u64::MAX / 2, vec![run(0, 1)], 1, "page count"),
            (1 << 20, 1 << 21, vec![run(0, 1)], 1, "data offset"),
            (
                2,
                1,
                vec![run(0, 1), run(p, 1)],
                1,
                "2 runs but only 1 pages",
            ),
            (2, 4, vec![run(0, 2), run(p, 2)], 4, "overlaps"),
            (2, 2, vec![run(p, 1), run(0, 1)], 2, "overlaps or precedes"),
            (1, 0, vec![run(0, 0)], 0, "1 runs but only 0 pages"),
            (1, 1, vec![run(123, 1)], 1, "not aligned"),
            (
                1,
                300,
                vec![run(4 << 20, 300)],
                300,
                "not inside guest memory",
            ),
            (
                1,
                300,
                vec![run((9 << 20) - 2 * p, 300)],
                300,
                "not inside guest memory",
            ),
            (1, 5, vec![run(0, 4)], 5, "header says 5"),
        ];
        for (count, total, runs, data_pages, want) in cases {
            hostile(&path, count, total, &runs, data_pages);
            let err = apply_layer(&path, &mem, None).unwrap_err();
            assert!(err.to_string().contains(want), "want {want:?}, got: {err}");
        }
        // A valid hand-made file passes, proving the cases above fail for their own reason.
        hostile(&path, 1, 2, &[run(0, 2)], 2);
        apply_layer(&path, &mem, None).unwrap();
        assert_eq!(dump(&mem, 0, 4), vec![0xAB; 4]);
    }
}
