//! `ChunkStore`: chunks in a directory, one file per chunk named by its hex id under a
//! two-hex-character fan-out directory (`ab/abcd…`), kept compressed (or raw when they did
//! not compress). Writes are atomic (temp file, fsync, link into place, fsync the directory);
//! reads verify the hash.
//!
//! Several stores (threads or processes) may share a directory: a chunk is put in place with
//! `link(2)`, which never replaces an existing file, so two writers of the same chunk both
//! succeed and one file remains. The size accounting is per `ChunkStore` value: it counts
//! what was on disk at `open` plus what this value wrote or removed since.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};

use super::bitmap::Bitmap;
use super::codec::{ChunkDecoder, ChunkEncoder, CodecError, EncodedChunk, Level};
use super::file_format::{self, FormatError, MAX_FILE_LEN};
use super::id::ChunkId;
use super::zero::is_zero;

/// Directory (inside the store) for files being written.
const TMP_DIR: &str = "tmp";

/// Age after which a temp file is removed by `open` even if a process with its writer's pid
/// runs: a writer in another pid namespace (a jailed VMM is pid 1 of its own) cannot be
/// checked from here, and no batch keeps its temp files anywhere near this long.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What went wrong in a store, naming the file or chunk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk store: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("chunk store: {path} is in the way of a fan-out directory")]
    NotADirectory { path: PathBuf },
    #[error("chunk store has no chunk {id}")]
    NotFound { id: ChunkId },
    #[error("corrupt chunk file {path}: {source}")]
    CorruptFormat { path: PathBuf, source: FormatError },
    #[error("corrupt chunk file {path}: {source}")]
    CorruptChunk { path: PathBuf, source: CodecError },
    #[error("corrupt chunk file {path}: {len} bytes, more than the {limit}-byte limit")]
    FileTooLarge {
        path: PathBuf,
        len: u64,
        limit: usize,
    },
    #[error("all-zero chunks are never stored (chunk of {len} bytes)")]
    ZeroChunk { len: usize },
    #[error("chunk {id} refused: {source}")]
    InvalidChunk { id: ChunkId, source: CodecError },
    #[error("chunk refused: {0}")]
    Codec(#[from] CodecError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Counts of what the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub chunks: u64,
    /// Sum of the chunk files' sizes (headers included).
    pub bytes_on_disk: u64,
}

/// What `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Put {
    pub id: ChunkId,
    /// False when the chunk was already there (nothing was rewritten).
    pub written: bool,
}

/// A content-addressed chunk store in one directory. `&self` methods are safe to call from
/// several threads.
#[derive(Debug)]
pub struct ChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    level: Level,
    chunks: AtomicU64,
    bytes: AtomicU64,
    /// `<pid>-<random>-`: this value's temp files are `<prefix><n>.tmp`. The pid tells
    /// `open` whether a leftover's writer still runs; the random part keeps writers with the
    /// same pid apart (two jailed VMMs are both pid 1 of their pid namespaces, and two values
    /// in one process count from 0 each), which would otherwise write the same temp file.
    temp_prefix: String,
    temp_counter: AtomicU64,
}

thread_local! {
    static ENCODER: RefCell<Option<ChunkEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ChunkDecoder>> = const { RefCell::new(None) };
}

/// Encodes with this thread's cached encoder (made anew when the level differs).
fn encode_cached(raw: &[u8], level: Level) -> Result<EncodedChunk, CodecError> {
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let encoder = match slot.take() {
            Some(e) if e.level() == level => e,
            _ => ChunkEncoder::new(level)?,
        };
        let encoder = slot.insert(encoder);
        encoder.encode(raw)
    })
}

/// Encodes `raw` at the store's level with this thread's cached encoder.
pub(super) fn encode_for(store: &ChunkStore, raw: &[u8]) -> Result<EncodedChunk, StoreError> {
    Ok(encode_cached(raw, store.level)?)
}

/// Decodes and verifies with this thread's cached decoder.
fn decode_cached(encoded: &EncodedChunk, id: &ChunkId, len: usize) -> Result<Vec<u8>, CodecError> {
    DECODER.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(ChunkDecoder::new)
            .decode(encoded, id, len)
    })
}

impl ChunkStore {
    /// Opens (creating if needed) a store in `dir`; new chunks are compressed at `level`.
    /// Removes temp files left by writers that no longer run, and counts what is stored.
    pub fn open(dir: impl AsRef<Path>, level: Level) -> Result<Self, StoreError> {
        let root = dir.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(io_err("create directory", &root))?;
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        remove_stale_temps(&tmp)?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Io {
            op: "name temp files in",
            path: tmp.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let store = Self {
            root,
            tmp,
            level,
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            temp_prefix: format!("{}-{:016x}-", std::process::id(), u64::from_le_bytes(nonce)),
            temp_counter: AtomicU64::new(0),
        };
        let stats = store.scan()?;
        store.chunks.store(stats.chunks, Ordering::Relaxed);
        store.bytes.store(stats.bytes_on_disk, Ordering::Relaxed);
        debug!(root = %store.root.display(), chunks = stats.chunks, bytes = stats.bytes_on_disk, "chunk store opened");
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Where chunk `id` lives: `<root>/<first byte hex>/<id hex>`.
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        self.fanout_dir(id).join(id.to_string())
    }

    fn fanout_dir(&self, id: &ChunkId) -> PathBuf {
        self.root.join(id.fanout())
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes_on_disk: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether a file for `id` exists (its content is checked only by `get`).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).is_file()
    }

    /// One bit per id, set when the store holds that chunk.
    pub fn have(&self, ids: &[ChunkId]) -> Bitmap {
        let mut bits = Bitmap::new(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if self.contains(id) {
                bits.set(i);
            }
        }
        bits
    }

    /// Stores one chunk (1 byte to 64 KiB, not all zero); idempotent: a chunk already there is
    /// not rewritten. Durable when it returns.
    pub fn put(&self, raw: &[u8]) -> Result<Put, StoreError> {
        let id = checked_id(raw)?;
        if self.contains(&id) {
            return Ok(Put { id, written: false });
        }
        let encoded = encode_cached(raw, self.level)?;
        let written = self.write_one(&id, &encoded, raw.len())?;
        Ok(Put { id, written })
    }

    /// Stores a chunk received already encoded (e.g. from a peer) without recompressing it,
    /// after decoding it and checking it hashes to `id`. Returns whether it was written.
    pub fn put_encoded(
        &self,
        id: &ChunkId,
        encoded: &EncodedChunk,
        len: usize,
    ) -> Result<bool, StoreError> {
        if self.contains(id) {
            return Ok(false);
        }
        verify_encoded(id, encoded, len)?;
        self.write_one(id, encoded, len)
    }

    /// Writes, syncs and links one chunk into place, then syncs its directory.
    fn write_one(
        &self,
        id: &ChunkId,
        encoded: &EncodedChunk,
        len: usize,
    ) -> Result<bool, StoreError> {
        let temp = self.write_temp(encoded, len)?;
        let result = self.ensure_fanout(id).and_then(|created| {
            let linked = self.link_into_place(&temp, id)?;
            self.sync_dir(&self.fanout_dir(id))?;
            if created {
                self.sync_dir(&self.root)?;
            }
            Ok(linked)
        });
        self.remove_temp(&temp.path);
        result
    }

    /// Reads, decodes and verifies chunk `id`. Never returns bytes that do not hash to `id`.
    pub fn get(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(id);
        let (encoded, len) = self.read_file(id, &path)?;
        decode_cached(&encoded, id, len).map_err(|source| StoreError::CorruptChunk { path, source })
    }

    /// The stored encoding of `id` and its raw length, to serve to a peer without
    /// recompressing. The header is checked but the hash is NOT: the receiver must verify
    /// (as `put_encoded` and `decode_chunk` do).
    pub fn get_encoded(&self, id: &ChunkId) -> Result<(EncodedChunk, usize), StoreError> {
        let path = self.path_of(id);
        self.read_file(id, &path)
    }

    /// Removes chunk `id`; returns whether it was there. The removal is not fsynced: after a
    /// crash the chunk may reappear, which a content-addressed store tolerates.
    pub fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.path_of(id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.chunks.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Reads a chunk file, refusing one larger than any valid chunk file before reading it.
    fn read_file(&self, id: &ChunkId, path: &Path) -> Result<(EncodedChunk, usize), StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { id: *id })
            }
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let mut bytes = Vec::with_capacity(MAX_FILE_LEN.min(64 * 1024 + 64));
        // One byte past the limit tells an oversized file from one exactly at the limit.
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", path))?;
        if bytes.len() > MAX_FILE_LEN {
            let len = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
            return Err(StoreError::FileTooLarge {
                path: path.to_path_buf(),
                len,
                limit: MAX_FILE_LEN,
            });
        }
        file_format::decode_file(bytes).map_err(|source| StoreError::CorruptFormat {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the chunk file to a fresh temp file and syncs its data.
    pub(super) fn write_temp(
        &self,
        encoded: &EncodedChunk,
        len: usize,
    ) -> Result<TempFile, StoreError> {
        self.write_temp_with(encoded, len, Durability::Synced)
    }

    /// Writes the chunk file to a fresh temp file, syncing its data only if asked (a batch
    /// writes all its temp files, then makes them durable at once with [`Self::sync_temps`]).
    pub(super) fn write_temp_with(
        &self,
        encoded: &EncodedChunk,
        len: usize,
        durability: Durability,
    ) -> Result<TempFile, StoreError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self.temp_path(n);
        let bytes = file_format::encode_file(encoded, len);
        let mut file = File::create_new(&path).map_err(io_err("create temp file", &path))?;
        // From here on the file is ours: remove it if it cannot be completed.
        let written = file.write_all(&bytes).and_then(|()| match durability {
            Durability::Synced => file.sync_data(),
            Durability::Deferred => Ok(()),
        });
        match written {
            Ok(()) => Ok(TempFile {
                path,
                len: bytes.len() as u64,
            }),
            Err(e) => {
                self.remove_temp(&path);
                Err(io_err("write temp file", &path)(e))
            }
        }
    }

    /// The path of this value's temp file number `n`.
    fn temp_path(&self, n: u64) -> PathBuf {
        self.tmp.join(format!("{}{n}.tmp", self.temp_prefix))
    }

    pub(super) fn remove_temp(&self, temp: &Path) {
        if let Err(e) = fs::remove_file(temp) {
            warn!(path = %temp.display(), error = %e, "cannot remove chunk temp file");
        }
    }

    /// Makes sure the fan-out directory of `id` exists; returns whether it was created (then
    /// the root directory needs a sync).
    pub(super) fn ensure_fanout(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let dir = self.fanout_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if dir.is_dir() {
                    Ok(false)
                } else {
                    Err(StoreError::NotADirectory { path: dir })
                }
            }
            Err(e) => Err(io_err("create directory", &dir)(e)),
        }
    }

    /// Links a synced temp file to the chunk's final name. Never replaces an existing file:
    /// returns false when the chunk was already there.
    pub(super) fn link_into_place(
        &self,
        temp: &TempFile,
        id: &ChunkId,
    ) -> Result<bool, StoreError> {
        let target = self.path_of(id);
        match fs::hard_link(&temp.path, &target) {
            Ok(()) => {
                self.chunks.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(temp.len, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("link chunk into place at", &target)(e)),
        }
    }

    /// Makes the data of unsynced temp files durable: one `syncfs(2)` of the store's file
    /// system (one journal commit for a whole batch instead of one per chunk); if the kernel
    /// refuses it, each file's data is synced on its own.
    pub(super) fn sync_temps(&self, temps: &[TempFile]) -> Result<(), StoreError> {
        if temps.is_empty() {
            return Ok(());
        }
        let dir = File::open(&self.tmp).map_err(io_err("open temp directory", &self.tmp))?;
        // SAFETY: syncfs takes a file descriptor we own for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        warn!(error = %err, "syncfs failed; syncing chunk files one by one");
        for temp in temps {
            File::open(&temp.path)
                .and_then(|f| f.sync_data())
                .map_err(io_err("sync temp file", &temp.path))?;
        }
        Ok(())
    }

    pub(super) fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", dir))
    }

    pub(super) fn fanout_of(&self, id: &ChunkId) -> PathBuf {
        self.fanout_dir(id)
    }

    /// Counts the chunk files on disk.
    fn scan(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats::default();
        let entries = fs::read_dir(&self.root).map_err(io_err("list", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let name = entry.file_name();
            let is_fanout = name.len() == 2
                && name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_fanout && entry.path().is_dir() {
                scan_fanout(&entry.path(), &mut stats)?;
            }
        }
        Ok(stats)
    }
}

/// Adds the chunk files of one fan-out directory to `stats`; other files are skipped.
fn scan_fanout(dir: &Path, stats: &mut StoreStats) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let is_chunk = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<ChunkId>().is_ok());
        if !is_chunk {
            warn!(path = %entry.path().display(), "not a chunk file: ignored");
            continue;
        }
        let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
        stats.chunks += 1;
        stats.bytes_on_disk += meta.len();
    }
    Ok(())
}

/// Whether a temp file's data is synced as it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    Synced,
    Deferred,
}

/// A temp file holding a complete chunk file (synced, or to be synced by its batch).
#[derive(Debug)]
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

/// The id of a chunk the store accepts: 1 byte to 64 KiB, not all zero.
pub(super) fn checked_id(raw: &[u8]) -> Result<ChunkId, StoreError> {
    if raw.len() > super::MAX_CHUNK_SIZE || raw.is_empty() {
        return Err(CodecError::ChunkLength {
            len: raw.len(),
            max: super::MAX_CHUNK_SIZE,
        }
        .into());
    }
    if is_zero(raw) {
        return Err(StoreError::ZeroChunk { len: raw.len() });
    }
    Ok(ChunkId::of(raw))
}

/// Checks that an encoded chunk from outside decodes to `len` bytes hashing to `id`.
pub(super) fn verify_encoded(
    id: &ChunkId,
    encoded: &EncodedChunk,
    len: usize,
) -> Result<(), StoreError> {
    let raw = decode_cached(encoded, id, len)
        .map_err(|source| StoreError::InvalidChunk { id: *id, source })?;
    if is_zero(&raw) {
        return Err(StoreError::ZeroChunk { len });
    }
    Ok(())
}

/// Removes temp files whose writer process is gone (a crash mid-write), and any older than
/// [`STALE_TEMP_AGE`]. Recent files of live processes, this one included, are left alone.
fn remove_stale_temps(tmp: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(tmp).map_err(io_err("list", tmp))? {
        let entry = entry.map_err(io_err("list", tmp))?;
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if !alive || old {
            debug!(path = %entry.path().display(), "removing stale chunk temp file");
            if let Err(e) = fs::remove_file(entry.path()) {
                warn!(path = %entry.path().display(), error = %e, "cannot remove stale temp file");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
impl ChunkStore {
    /// The name the temp file written `ahead` writes from now will carry (tests plant files
    /// in its way).
    pub(super) fn future_temp_name(&self, ahead: u64) -> String {
        let n = self.temp_counter.load(Ordering::Relaxed) + ahead;
        let path = self.temp_path(n);
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub(super) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::chunks::codec::tests::{noise, text};
    use crate::chunks::file_format::HEADER_LEN;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    pub(crate) fn open(dir: &Path) -> ChunkStore {
        ChunkStore::open(dir, Level::default()).unwrap()
    }

    pub(crate) fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn put_get_round_trip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for raw in [text(65536), noise(4096, 1), text(100), vec![7u8]] {
            let put = store.put(&raw).unwrap();
            assert!(put.written);
            assert_eq!(put.id, ChunkId::of(&raw));
            let path = store.path_of(&put.id);
            let hex = put.id.to_string();
            assert_eq!(path, dir.path().join(&hex[..2]).join(&hex));
            assert!(path.is_file() && store.contains(&put.id));
            assert_eq!(store.get(&put.id).unwrap(), raw);
        }
        assert_eq!(store.stats().chunks, 4);
        assert!(files_in(store.tmp_dir()).is_empty());
        // Compressible chunks are stored compressed, incompressible ones raw.
        let (enc, len) = store.get_encoded(&ChunkId::of(&text(65536))).unwrap();
        assert!(!enc.raw && enc.bytes.len() < 65536 / 4 && len == 65536);
        let (enc, _) = store.get_encoded(&ChunkId::of(&noise(4096, 1))).unwrap();
        assert!(enc.raw);
    }

    #[test]
    fn stats_follow_puts_removes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.put(&text(4096)).unwrap().id;
        let b = store.put(&noise(4096, 2)).unwrap().id;
        let disk = |id: &ChunkId| fs::metadata(store.path_of(id)).unwrap().len();
        let expected = StoreStats {
            chunks: 2,
            bytes_on_disk: disk(&a) + disk(&b),
        };
        assert_eq!(expected.bytes_on_disk, disk(&a) + 4096 + HEADER_LEN as u64);
        assert_eq!(store.stats(), expected);
        assert_eq!(open(dir.path()).stats(), expected);
        assert!(store.remove(&a).unwrap());
        assert!(!store.remove(&a).unwrap());
        assert_eq!(store.stats().chunks, 1);
        assert_eq!(store.stats().bytes_on_disk, 4096 + HEADER_LEN as u64);
        assert!(matches!(store.get(&a), Err(StoreError::NotFound { id }) if id == a));
        assert_eq!(open(dir.path()).stats(), store.stats());
    }

    #[test]
    fn put_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(16384);
        let first = store.put(&raw).unwrap();
        let inode = fs::metadata(store.path_of(&first.id)).unwrap().ino();
        let stats = store.stats();
        let again = store.put(&raw).unwrap();
        assert_eq!(
            again,
            Put {
                id: first.id,
                written: false
            }
        );
        assert_eq!(fs::metadata(store.path_of(&first.id)).unwrap().ino(), inode);
        assert_eq!(store.stats(), stats);
        // A second store on the same directory does not rewrite it either.
        let other = open(dir.path());
        assert!(!other.put(&raw).unwrap().written);
        let enc = crate::chunks::encode_chunk(&raw, Level::default()).unwrap();
        assert!(!other.put_encoded(&first.id, &enc, raw.len()).unwrap());
        assert_eq!(fs::metadata(store.path_of(&first.id)).unwrap().ino(), inode);
    }

    #[test]
    fn concurrent_puts_of_one_chunk_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(65536);
        let written: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.put(&raw).unwrap().written))
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert!(written >= 1);
        assert_eq!(store.stats().chunks, 1);
        assert_eq!(store.get(&ChunkId::of(&raw)).unwrap(), raw);
        assert!(files_in(store.tmp_dir()).is_empty());
    }

    #[test]
    fn refuses_zero_empty_and_oversized_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(matches!(
            store.put(&[0u8; 4096]),
            Err(StoreError::ZeroChunk { len: 4096 })
        ));
        assert!(matches!(
            store.put(&[]),
            Err(StoreError::Codec(CodecError::ChunkLength { len: 0, .. }))
        ));
        let big = vec![1u8; 65537];
        let err = store.put(&big).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|m| m.contains("65537") && m.contains("65536")),
            "{err:?}"
        );
        assert_eq!(store.stats(), StoreStats::default());
    }

    #[test]
    fn have_gives_a_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let ids: Vec<ChunkId> = (0..70).map(|i| ChunkId::of(&text(100 + i))).collect();
        for i in [0usize, 3, 64, 69] {
            store.put(&text(100 + i)).unwrap();
        }
        let bits = store.have(&ids);
        assert_eq!(bits.len(), 70);
        assert_eq!(bits.ones().collect::<Vec<_>>(), [0, 3, 64, 69]);
        assert!(store.have(&[]).is_empty());
    }

    #[test]
    fn put_encoded_verifies_before_storing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(4096);
        let id = ChunkId::of(&raw);
        let enc = crate::chunks::encode_chunk(&raw, Level::new(19).unwrap()).unwrap();
        // Claimed under another id: refused, nothing stored.
        let liar = ChunkId::of(b"not this");
        let err = store.put_encoded(&liar, &enc, raw.len()).err();
        assert!(
            matches!(err, Some(StoreError::InvalidChunk { id, .. }) if id == liar),
            "{err:?}"
        );
        assert!(!store.contains(&liar));
        // A valid zstd frame of zeros, correctly named, is still a zero chunk: refused.
        let zeros = crate::chunks::encode_chunk(&[0u8; 4096], Level::default()).unwrap();
        let zid = ChunkId::of(&[0u8; 4096]);
        assert!(matches!(
            store.put_encoded(&zid, &zeros, 4096),
            Err(StoreError::ZeroChunk { .. })
        ));
        assert!(store.put_encoded(&id, &enc, raw.len()).unwrap());
        assert_eq!(store.get_encoded(&id).unwrap(), (enc, raw.len()));
        assert_eq!(store.get(&id).unwrap(), raw);
        assert!(files_in(store.tmp_dir()).is_empty());
    }

    /// Rewrites the file of `id` with `f` applied to its bytes.
    fn tamper(store: &ChunkStore, id: &ChunkId, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let path = store.path_of(id);
        let mut bytes = fs::read(&path).unwrap();
        f(&mut bytes);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn assert_names(err: Option<StoreError>, path: &Path) {
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(&path.display().to_string()),
            "error does not name the file: {msg:?}"
        );
    }

    /// The read failed its hash check, and the error names the chunk's file.
    fn assert_hash_mismatch(err: Option<StoreError>, path: &Path) {
        assert!(
            matches!(
                &err,
                Some(StoreError::CorruptChunk {
                    source: CodecError::HashMismatch { .. },
                    ..
                })
            ),
            "{err:?}"
        );
        assert_names(err, path);
    }

    #[test]
    fn corrupted_compressed_chunk_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(65536);
        let id = store.put(&raw).unwrap().id;
        let clean = fs::read(store.path_of(&id)).unwrap();
        let mut errors = 0;
        for pos in 0..clean.len() {
            let path = tamper(&store, &id, |b| {
                b.clone_from(&clean);
                b[pos] ^= 0x20;
            });
            match store.get(&id) {
                Ok(out) => assert_eq!(out, raw, "pos {pos}: wrong bytes returned"),
                Err(e) => {
                    errors += 1;
                    assert_names(Some(e), &path);
                }
            }
        }
        assert!(errors > clean.len() / 2, "{errors} of {}", clean.len());
    }

    #[test]
    fn corrupted_raw_chunk_fails_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = noise(4096, 5);
        let id = store.put(&raw).unwrap().id;
        let path = tamper(&store, &id, |b| b[HEADER_LEN + 1000] ^= 1);
        assert_hash_mismatch(store.get(&id).err(), &path);
    }

    #[test]
    fn truncated_oversized_and_swapped_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.put(&text(8192)).unwrap().id;
        let b = store.put(&noise(8192, 3)).unwrap().id;
        let len = fs::metadata(store.path_of(&a)).unwrap().len() as usize;
        for cut in [0, 3, HEADER_LEN - 1, HEADER_LEN, len - 1] {
            let path = tamper(&store, &a, |bytes| bytes.truncate(cut));
            let err = store.get(&a).err();
            assert!(
                matches!(err, Some(StoreError::CorruptFormat { .. })),
                "cut {cut}: {err:?}"
            );
            assert_names(err, &path);
            store.remove(&a).unwrap();
            store.put(&text(8192)).unwrap();
        }
        let path = tamper(&store, &a, |bytes| bytes.resize(MAX_FILE_LEN + 1, 0));
        let err = store.get(&a).err();
        assert!(
            matches!(err, Some(StoreError::FileTooLarge { .. })),
            "{err:?}"
        );
        assert_names(err, &path);
        // The file of `b` under the name of `a`: well-formed, but not `a`.
        let b_bytes = fs::read(store.path_of(&b)).unwrap();
        let path = tamper(&store, &a, |bytes| bytes.clone_from(&b_bytes));
        assert_hash_mismatch(store.get(&a).err(), &path);
    }

    #[test]
    fn open_removes_temps_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let dead = store.tmp_dir().join("999999999-0.tmp");
        let junk = store.tmp_dir().join("junk");
        let mine = store
            .tmp_dir()
            .join(format!("{}-77.tmp", std::process::id()));
        // A live pid's file an hour old: a writer in another pid namespace (a jailed VMM
        // is pid 1 there) that died; no batch keeps temp files that long.
        let old = store.tmp_dir().join("1-0123456789abcdef-5.tmp");
        for p in [&dead, &junk, &mine, &old] {
            fs::write(p, b"partial").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(hour_ago))
            .unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            files_in(store.tmp_dir()),
            [format!("{}-77.tmp", std::process::id())]
        );
        assert_eq!(store.stats(), StoreStats::default());
    }

    /// Two writers of one store with the same pid (two values in one process here; two
    /// jailed VMMs, each pid 1 of its own pid namespace, in production) commit batches at
    /// the same time: their temp files never collide.
    #[test]
    fn writers_with_the_same_pid_never_share_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (open(dir.path()), open(dir.path()));
        assert_ne!(a.future_temp_name(0), b.future_temp_name(0));
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for (store, seed) in [(&a, 1u8), (&b, 2u8)] {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    for round in 0..4u8 {
                        let mut batch = store.batch();
                        for i in 0..64u8 {
                            batch
                                .put(&noise(
                                    4096,
                                    u64::from_le_bytes([seed, round, i, 0, 0, 0, 0, 0]),
                                ))
                                .unwrap();
                        }
                        batch.commit().unwrap();
                    }
                });
            }
        });
        assert_eq!(open(dir.path()).stats().chunks, 2 * 4 * 64);
        assert!(files_in(a.tmp_dir()).is_empty());
    }

    #[test]
    fn blocked_fanout_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let raw = text(4096);
        let fan = store.fanout_of(&ChunkId::of(&raw));
        fs::write(&fan, b"in the way").unwrap();
        let err = store.put(&raw).err();
        assert!(
            matches!(&err, Some(StoreError::NotADirectory { path }) if *path == fan),
            "{err:?}"
        );
        assert!(files_in(store.tmp_dir()).is_empty());
        assert_eq!(store.stats(), StoreStats::default());
    }
}
