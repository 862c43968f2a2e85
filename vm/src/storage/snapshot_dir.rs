//! A snapshot directory: `MANIFEST`, one state file and a chain of memory layers.
//!
//! Writing a snapshot of generation `g` writes `layer-<g>.ncl`, then `state-<g>.ncs`, then
//! replaces `MANIFEST` (the commit point), each atomically (temp + fsync + rename + fsync of
//! the directory). Names are never reused: `g` is above every generation found in the
//! directory. Until the manifest rename the old manifest and every file it names are
//! untouched, so a crash at any point leaves the previous snapshot loadable. After the commit,
//! files no longer referenced (older layers and states, temp files of crashed writes) are
//! deleted.
//!
//! A [`SnapshotDir`] holds an exclusive `flock` on the directory, so one writer at a time.
//! What this cannot do: [`load`] takes no lock; if a writer commits and collects garbage
//! while a reader is between reading the manifest and reading a layer, the reader gets
//! [`StorageError::NotFound`] and can simply retry.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::atomic::{is_temp_name, sync_concurrently, sync_dir, FaultHook, PendingFile, WriteStep};
use super::checksummed::{check_file_len, kind, read_checksummed_hashed, write_framed_into};
use super::manifest::{Manifest, ManifestEntry, MAX_CHAIN_LAYERS, MAX_MANIFEST_BYTES};
use super::memory_layer::{apply_layer, LayerInfo, PreparedLayer};
use super::page_runs::PageRun;
use super::{Result, StorageError};

/// Name of the manifest file.
pub const MANIFEST_NAME: &str = "MANIFEST";
/// Largest state file payload accepted (written or read).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

const LAYER_PREFIX: &str = "layer-";
const LAYER_SUFFIX: &str = ".ncl";
const STATE_PREFIX: &str = "state-";
const STATE_SUFFIX: &str = ".ncs";

type BoxedHook = Box<dyn Fn(&Path, WriteStep) -> io::Result<()> + Send + Sync>;

/// What a snapshot write did.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub generation: u64,
    /// Layers in the chain after this write (1 after a full snapshot).
    pub chain_len: usize,
    pub layer: LayerInfo,
    /// State file size in bytes.
    pub state_bytes: u64,
    /// Time spent in fsync over all files and directory syncs.
    pub sync_time: Duration,
    /// Files deleted after the commit.
    pub removed_files: usize,
    pub elapsed: Duration,
}

/// A memory layer named by a loaded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub path: PathBuf,
    pub hash: blake3::Hash,
    pub bytes: u64,
    pub pages: u64,
}

/// A snapshot read back: the verified state bytes and the layers to apply, oldest first.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub generation: u64,
    pub state: Vec<u8>,
    pub layers: Vec<LayerRef>,
    /// Guest memory regions (start gpa, length) the snapshot was taken from.
    pub memory: Vec<(u64, u64)>,
    dir: PathBuf,
}

/// What [`LoadedSnapshot::apply_memory`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStats {
    pub layers: usize,
    /// Every page run any layer wrote (runs of later layers may overlap earlier ones).
    pub applied: Vec<PageRun>,
    pub pages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The writer side of a snapshot directory.
pub struct SnapshotDir {
    dir: PathBuf,
    /// Open directory handle holding the exclusive flock; released on drop.
    _lock: File,
    /// The committed manifest, or why there is no usable one.
    base: std::result::Result<Manifest, Arc<StorageError>>,
    next_generation: u64,
    fault_hook: Option<BoxedHook>,
}

impl std::fmt::Debug for SnapshotDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotDir")
            .field("dir", &self.dir)
            .field("base_generation", &self.base.as_ref().map(|m| m.generation))
            .field("next_generation", &self.next_generation)
            .finish()
    }
}

impl SnapshotDir {
    /// Creates `dir` if needed, locks it, reads its manifest (if any) and removes leftovers
    /// of crashed writes. A missing or damaged manifest is not an error here: only
    /// [`Self::write_incremental`] needs it, and [`Self::write_full`] replaces it.
    pub fn create_or_open(dir: &Path) -> Result<SnapshotDir> {
        create_dir_durably(dir)?;
        let lock = lock_dir(dir)?;
        let manifest = read_manifest(dir);
        match &manifest {
            Err(StorageError::NotFound { .. }) => {
                tracing::debug!(dir = %dir.display(), "new snapshot directory")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), reason = %e, "no usable snapshot manifest")
            }
            Ok(_) => {}
        }
        let base = manifest.map_err(Arc::new);
        let highest = highest_generation(dir)?;
        let committed = base.as_ref().map_or(0, |m| m.generation);
        let mut this = SnapshotDir {
            dir: dir.to_path_buf(),
            _lock: lock,
            base,
            next_generation: highest.max(committed) + 1,
            fault_hook: None,
        };
        this.collect_garbage();
        Ok(this)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Generation of the committed snapshot, if there is a usable one.
    pub fn committed_generation(&self) -> Option<u64> {
        self.base.as_ref().ok().map(|m| m.generation)
    }

    /// Reads back the committed snapshot (see [`load`]).
    pub fn load(&self) -> Result<LoadedSnapshot> {
        load(&self.dir)
    }

    /// Writes a full snapshot: `state` and the pages of `runs` (every page the guest may have
    /// touched; pages outside them restore as zero). Starts a new chain.
    pub fn write_full(
        &mut self,
        state: &[u8],
        mem: &GuestMemoryMmap<AtomicBitmap>,
        runs: &[PageRun],
    ) -> Result<WriteReport> {
        self.write(state, mem, runs, Vec::new())
    }

    /// Writes an incremental snapshot: `state` and the pages of `runs` (those dirtied since
    /// the previous snapshot), appended to the committed chain. Fails with
    /// [`StorageError::NoBase`] without a committed snapshot, [`StorageError::ChainTooLong`]
    /// when the chain is full and [`StorageError::LayoutMismatch`] if `mem`'s regions differ.
    pub fn write_incremental(
        &mut self,
        state: &[u8],
        mem: &GuestMemoryMmap<AtomicBitmap>,
        runs: &[PageRun],
    ) -> Result<WriteReport> {
        let base = self.base.as_ref().map_err(|reason| StorageError::NoBase {
            dir: self.dir.clone(),
            reason: reason.clone(),
        })?;
        if base.layers.len() >= MAX_CHAIN_LAYERS {
            return Err(StorageError::ChainTooLong {
                dir: self.dir.clone(),
                limit: MAX_CHAIN_LAYERS,
            });
        }
        check_layout(&self.dir, &base.memory, mem)?;
        let chain = base.layers.clone();
        self.write(state, mem, runs, chain)
    }

    /// Writes layer, state and manifest for the next generation on top of `chain`.
    fn write(
        &mut self,
        state: &[u8],
        mem: &GuestMemoryMmap<AtomicBitmap>,
        runs: &[PageRun],
        chain: Vec<ManifestEntry>,
    ) -> Result<WriteReport> {
        let started = Instant::now();
        check_state_len(&self.dir, state)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let result = self.write_and_commit(generation, state, mem, runs, chain);
        let (manifest, layer, sync_time) = match result {
            Ok(done) => done,
            Err(e) => {
                // The failure may have come after the manifest rename: trust the disk.
                self.base = read_manifest(&self.dir).map_err(Arc::new);
                return Err(e);
            }
        };
        let chain_len = manifest.layers.len();
        self.base = Ok(manifest);
        let removed_files = self.collect_garbage();
        let report = WriteReport {
            generation,
            chain_len,
            layer,
            state_bytes: state.len() as u64 + super::checksummed::HEADER_LEN as u64,
            sync_time,
            removed_files,
            elapsed: started.elapsed(),
        };
        tracing::info!(dir = %self.dir.display(), generation, chain_len,
            pages = report.layer.pages, ms = report.elapsed.as_secs_f64() * 1e3,
            layer_write_ms = report.layer.elapsed.as_secs_f64() * 1e3,
            sync_ms = sync_time.as_secs_f64() * 1e3, "snapshot committed");
        Ok(report)
    }

    /// Stages layer, state and manifest as temp files, then commits them (see
    /// [`commit_staged`]). On failure every temp file not yet renamed is removed.
    fn write_and_commit(
        &self,
        generation: u64,
        state: &[u8],
        mem: &GuestMemoryMmap<AtomicBitmap>,
        runs: &[PageRun],
        chain: Vec<ManifestEntry>,
    ) -> Result<(Manifest, LayerInfo, Duration)> {
        let hook: Option<FaultHook<'_>> = self.fault_hook.as_deref().map(|h| h as FaultHook<'_>);
        // Validate the runs before anything touches the disk.
        let prepared = PreparedLayer::new(mem, runs)?;
        let mut files = Vec::with_capacity(3);
        let result = self.stage(generation, state, mem, &prepared, chain, hook, &mut files);
        let result = result.and_then(|(manifest, mut layer)| {
            let sync = commit_staged(&self.dir, &mut files)?;
            layer.sync_time = sync.files_fsync;
            Ok((manifest, layer, sync.total))
        });
        if result.is_err() {
            files.into_iter().for_each(PendingFile::discard);
        }
        result
    }

    /// Writes the layer, state and manifest temp files of `generation` (in that order, into
    /// `files`), unsynced. Returns the manifest and the layer's figures.
    #[allow(clippy::too_many_arguments)]
    fn stage<'h>(
        &self,
        generation: u64,
        state: &[u8],
        mem: &GuestMemoryMmap<AtomicBitmap>,
        prepared: &PreparedLayer<'_>,
        mut chain: Vec<ManifestEntry>,
        hook: Option<FaultHook<'h>>,
        files: &mut Vec<PendingFile<'h>>,
    ) -> Result<(Manifest, LayerInfo)> {
        let layer_name = format!("{LAYER_PREFIX}{generation:020}{LAYER_SUFFIX}");
        let layer = prepared.write_into(push(files, &self.dir.join(&layer_name), hook)?)?;
        let state_name = format!("{STATE_PREFIX}{generation:020}{STATE_SUFFIX}");
        let state_file = push(files, &self.dir.join(&state_name), hook)?;
        let state_hash = write_framed_into(state_file, kind::STATE, state)?;
        chain.push(ManifestEntry {
            name: layer_name,
            hash: layer.hash,
            bytes: layer.bytes,
            pages: layer.pages,
        });
        let manifest = Manifest {
            generation,
            memory: memory_layout(mem),
            state: ManifestEntry {
                name: state_name,
                hash: state_hash,
                bytes: state.len() as u64 + super::checksummed::HEADER_LEN as u64,
                pages: 0,
            },
            layers: chain,
        };
        let manifest_path = self.dir.join(MANIFEST_NAME);
        let payload = manifest
            .encode()
            .map_err(|reason| StorageError::InvalidManifest {
                path: manifest_path.clone(),
                reason,
            })?;
        write_framed_into(push(files, &manifest_path, hook)?, kind::MANIFEST, &payload)?;
        Ok((manifest, layer))
    }

    /// Deletes temp files and layer/state files the committed manifest does not name.
    /// Does nothing without a usable manifest (its files might still be wanted). Failures
    /// are logged, not returned: the snapshot is already committed. Returns files deleted.
    fn collect_garbage(&mut self) -> usize {
        let Ok(manifest) = &self.base else {
            return 0;
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list snapshot dir");
                return 0;
            }
        };
        let referenced =
            |n: &str| n == manifest.state.name || manifest.layers.iter().any(|l| l.name == n);
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = is_temp_name(name) || generation_of(name).is_some();
            if !ours || referenced(name) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(file = %entry.path().display(), error = %e,
                    "cannot delete unreferenced snapshot file"),
            }
        }
        removed
    }

    /// Installs a hook called after every step of every file write (crash testing).
    #[cfg(test)]
    pub(crate) fn set_fault_hook(&mut self, hook: Option<BoxedHook>) {
        self.fault_hook = hook;
    }
}

/// Creates the temp file for `target`, keeps it in `files` (so a failure can discard it)
/// and returns it.
fn push<'f, 'h>(
    files: &'f mut Vec<PendingFile<'h>>,
    target: &Path,
    hook: Option<FaultHook<'h>>,
) -> Result<&'f mut PendingFile<'h>> {
    files.push(PendingFile::create(target, hook)?);
    let last = files.len() - 1;
    Ok(&mut files[last])
}

/// Time spent making a snapshot durable.
struct CommitSync {
    /// The three file fsyncs, run together (the layer's dominates).
    files_fsync: Duration,
    /// Wall time of all fsyncs (files, run together, and the two directory syncs).
    total: Duration,
}

/// Commits staged temp files `[layer, state, manifest]`, in this order:
/// 1. fsync all three at once (their journal commits and device flushes overlap);
/// 2. rename layer and state to their final names, fsync the directory: both names are
///    durable before anything can name them;
/// 3. rename the manifest over `MANIFEST` (the commit point), fsync the directory.
///
/// A crash before step 3 leaves the old manifest, naming only old files; after it, every
/// file the new manifest names is durable. Two directory fsyncs instead of one per file.
fn commit_staged(dir: &Path, files: &mut [PendingFile<'_>]) -> Result<CommitSync> {
    let [layer, state, manifest] = files else {
        return Err(StorageError::Io {
            path: dir.to_path_buf(),
            op: "commit snapshot",
            source: io::Error::other(format!("{} staged files, expected 3", files.len())),
        });
    };
    let started = Instant::now();
    let handles = [
        layer.sync_handle(),
        state.sync_handle(),
        manifest.sync_handle(),
    ];
    let files_fsync = sync_concurrently(&handles)?;
    for f in [&*layer, &*state, &*manifest] {
        f.synced()?;
    }
    layer.rename()?;
    state.rename()?;
    sync_dir(dir)?;
    layer.dir_synced()?;
    state.dir_synced()?;
    manifest.rename()?;
    sync_dir(dir)?;
    manifest.dir_synced()?;
    Ok(CommitSync {
        files_fsync,
        total: started.elapsed(),
    })
}

fn check_state_len(dir: &Path, state: &[u8]) -> Result<()> {
    if state.len() as u64 > MAX_STATE_BYTES {
        return Err(StorageError::TooLarge {
            path: dir.to_path_buf(),
            what: "state size",
            value: state.len() as u64,
            limit: MAX_STATE_BYTES,
        });
    }
    Ok(())
}

/// Creates the directory (and parents) and makes its entry durable if it was new.
fn create_dir_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, "create snapshot dir", e))?;
    sync_dir(&super::atomic::parent_dir(dir))?;
    Ok(())
}

/// Takes an exclusive, non-blocking flock on the directory.
fn lock_dir(dir: &Path) -> Result<File> {
    let handle = File::open(dir).map_err(|e| StorageError::io(dir, "open snapshot dir", e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StorageError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(StorageError::io(dir, "flock snapshot dir", err));
    }
    Ok(handle)
}

/// The generation encoded in a layer or state file name.
fn generation_of(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(LAYER_PREFIX)
        .and_then(|r| r.strip_suffix(LAYER_SUFFIX))
        .or_else(|| {
            name.strip_prefix(STATE_PREFIX)
                .and_then(|r| r.strip_suffix(STATE_SUFFIX))
        })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Highest generation among the layer/state files present (0 if none).
fn highest_generation(dir: &Path) -> Result<u64> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, "list snapshot dir", e))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(generation_of))
        .max()
        .unwrap_or(0))
}

fn memory_layout(mem: &GuestMemoryMmap<AtomicBitmap>) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

fn describe_layout(regions: &[(u64, u64)]) -> String {
    let parts: Vec<String> = regions
        .iter()
        .map(|(s, l)| format!("[{s:#x}+{l:#x}]"))
        .collect();
    parts.join(" ")
}

fn check_layout(
    dir: &Path,
    expected: &[(u64, u64)],
    mem: &GuestMemoryMmap<AtomicBitmap>,
) -> Result<()> {
    let found = memory_layout(mem);
    if found != expected {
        return Err(StorageError::LayoutMismatch {
            dir: dir.to_path_buf(),
            expected: describe_layout(expected),
            found: describe_layout(&found),
        });
    }
    Ok(())
}

/// Reads and checks the committed manifest in `dir`: which files make the snapshot (a
/// copier ships `MANIFEST` and those). Never changes anything on disk.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_NAME);
    let (payload, _) = read_checksummed_hashed(&path, kind::MANIFEST, MAX_MANIFEST_BYTES)?;
    Manifest::decode(&path, &payload)
}

/// Reads the committed snapshot in `dir`: the manifest, the state file (verified against
/// its own checksum and the manifest's hash) and the list of layers (each checked to exist
/// with the size the manifest records; their contents are verified by
/// [`LoadedSnapshot::apply_memory`]). Never changes anything on disk.
pub fn load(dir: &Path) -> Result<LoadedSnapshot> {
    let manifest = read_manifest(dir)?;
    let state_path = dir.join(&manifest.state.name);
    let (state, hash) = read_checksummed_hashed(&state_path, kind::STATE, MAX_STATE_BYTES)?;
    if hash != manifest.state.hash {
        return Err(StorageError::ChecksumMismatch {
            path: state_path,
            detail: "state file differs from the hash in the manifest",
        });
    }
    let layers = manifest
        .layers
        .iter()
        .map(|l| layer_ref(dir, l))
        .collect::<Result<Vec<_>>>()?;
    Ok(LoadedSnapshot {
        generation: manifest.generation,
        state,
        layers,
        memory: manifest.memory,
        dir: dir.to_path_buf(),
    })
}

fn layer_ref(dir: &Path, entry: &ManifestEntry) -> Result<LayerRef> {
    let path = dir.join(&entry.name);
    let meta = std::fs::metadata(&path).map_err(|e| StorageError::io(&path, "stat layer", e))?;
    check_file_len(&path, entry.bytes, meta.len())?;
    Ok(LayerRef {
        path,
        hash: entry.hash,
        bytes: entry.bytes,
        pages: entry.pages,
    })
}

impl LoadedSnapshot {
    /// Applies every layer, oldest first, to `mem`, which must have the snapshot's region
    /// layout and be zero-filled (fresh): pages no layer holds are left as they are. On
    /// error `mem` holds a partial restore and must be discarded (see
    /// [`super::memory_layer`]).
    pub fn apply_memory(&self, mem: &GuestMemoryMmap<AtomicBitmap>) -> Result<RestoreStats> {
        let started = Instant::now();
        check_layout(&self.dir, &self.memory, mem)?;
        let mut stats = RestoreStats {
            layers: 0,
            applied: Vec::new(),
            pages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
        };
        for layer in &self.layers {
            let s = apply_layer(&layer.path, mem, Some(layer.hash))?;
            stats.layers += 1;
            stats.pages += s.pages;
            stats.bytes += s.bytes;
            stats.applied.extend(s.applied);
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::layout::PAGE_SIZE;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    const P: u64 = PAGE_SIZE;
    /// Two adjacent regions (runs may span them) and one after a hole.
    const LAYOUT: &[(u64, usize)] = &[(0, 2 << 20), (2 << 20, 2 << 20), (8 << 20, 1 << 20)];

    fn mem() -> GuestMemoryMmap<AtomicBitmap> {
        let r: Vec<_> = LAYOUT.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    fn run(gpa: u64, pages: u64) -> PageRun {
        PageRun {
            first_page_gpa: gpa,
            pages,
        }
    }

    fn scribble(mem: &GuestMemoryMmap<AtomicBitmap>, runs: &[PageRun], seed: u64) {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for r in runs {
            let bytes: Vec<u8> = (0..r.pages * P)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            mem.write_slice(&bytes, GuestAddress(r.first_page_gpa))
                .unwrap();
        }
    }

    fn image(mem: &GuestMemoryMmap<AtomicBitmap>) -> Vec<u8> {
        let mut out = Vec::new();
        for &(gpa, len) in LAYOUT {
            let mut v = vec![0u8; len];
            mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
            out.extend_from_slice(&v);
        }
        out
    }

    /// Loads the snapshot and applies it to fresh memory: (state, memory image).
    fn restore(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
        let loaded = load(dir)?;
        let target = mem();
        loaded.apply_memory(&target)?;
        Ok((loaded.state, image(&target)))
    }

    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        contents(dir).into_keys().collect()
    }

    /// The three snapshots of the round-trip scenario, written into `snap`.
    fn write_chain(snap: &mut SnapshotDir, src: &GuestMemoryMmap<AtomicBitmap>) {
        let runs0 = [run(0, 16), run((2 << 20) - 8 * P, 16), run(8 << 20, 64)];
        scribble(src, &runs0, 1);
        assert_eq!(snap.write_full(b"s0", src, &runs0).unwrap().chain_len, 1);
        let runs1 = [run(4 * P, 4), run((8 << 20) + 100 * P, 10), run(20 * P, 1)];
        scribble(src, &runs1, 2);
        assert_eq!(
            snap.write_incremental(b"s1", src, &runs1)
                .unwrap()
                .chain_len,
            2
        );
        let runs2 = [run(2 << 20, 3), run(1 << 20, 1)];
        scribble(src, &runs2, 3);
        assert_eq!(
            snap.write_incremental(b"s2", src, &runs2)
                .unwrap()
                .chain_len,
            3
        );
    }

    #[test]
    fn full_plus_two_incrementals_restore_identical_memory() {
        let dir = tempfile::tempdir().unwrap();
        let src = mem();
        let mut snap = SnapshotDir::create_or_open(dir.path()).unwrap();
        write_chain(&mut snap, &src);
        let (state, restored) = restore(dir.path()).unwrap();
        assert_eq!(state, b"s2");
        assert!(restored == image(&src), "restored memory differs");
        assert_eq!(names(dir.path()).len(), 5, "{:?}", names(dir.path()));

        // A new full snapshot starts a new chain and the old files go away.
        scribble(&src, &[run(30 * P, 2)], 9);
        let all = crate::storage::runs_of_all_memory(&src).unwrap();
        let report = snap.write_full(b"f", &src, &all).unwrap();
        assert_eq!(report.chain_len, 1);
        assert_eq!(report.removed_files, 4);
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
        let (state, restored) = restore(dir.path()).unwrap();
        assert_eq!(state, b"f");
        assert!(restored == image(&src));
    }

    /// A hook that records steps, and fails or panics at step `at` (counted from 0).
    fn hook(at: usize, panic: bool, seen: Arc<Mutex<Vec<(String, WriteStep)>>>) -> BoxedHook {
        let counter = AtomicUsize::new(0);
        Box::new(move |path: &Path, step: WriteStep| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            seen.lock().unwrap().push((name, step));
            if counter.fetch_add(1, Ordering::SeqCst) == at {
                if panic {
                    panic!("simulated crash at step {at}");
                }
                return Err(io::Error::other("injected failure"));
            }
            Ok(())
        })
    }

    /// Runs one more snapshot on top of the chain, with a fault at step `at`; returns the
    /// steps seen and whether the write returned Ok.
    fn faulty_write(
        dir: &Path,
        src: &GuestMemoryMmap<AtomicBitmap>,
        full: bool,
        at: usize,
        panic: bool,
    ) -> (Vec<(String, WriteStep)>, Option<bool>, SnapshotDir) {
        let mut snap = SnapshotDir::create_or_open(dir).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        snap.set_fault_hook(Some(hook(at, panic, seen.clone())));
        let dirty = [run(3 * P, 2), run(8 << 20, 1)];
        scribble(src, &dirty, 77);
        let runs = if full {
            crate::storage::runs_of_all_memory(src).unwrap()
        } else {
            dirty.to_vec()
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if full {
                snap.write_full(b"new", src, &runs).is_ok()
            } else {
                snap.write_incremental(b"new", src, &runs).is_ok()
            }
        }))
        .ok();
        snap.set_fault_hook(None);
        let seen = seen.lock().unwrap().clone();
        (seen, outcome, snap)
    }

    /// Keeps the expected panics of simulated crashes out of the test output.
    fn quiet_simulated_crashes() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let msg = info.payload().downcast_ref::<String>();
                if !msg.is_some_and(|m| m.starts_with("simulated crash")) {
                    default(info);
                }
            }));
        });
    }

    fn crash_or_fail_at_every_step(full: bool, panic: bool) {
        quiet_simulated_crashes();
        // Find the steps of a clean write and where the commit (manifest rename) is.
        let probe = tempfile::tempdir().unwrap();
        let src = mem();
        write_chain(
            &mut SnapshotDir::create_or_open(probe.path()).unwrap(),
            &src,
        );
        let (steps, outcome, _) = faulty_write(probe.path(), &src, full, usize::MAX, panic);
        assert_eq!(outcome, Some(true));
        assert_eq!(steps.len(), 15, "{steps:?}");
        let commit = steps
            .iter()
            .position(|(n, s)| n == MANIFEST_NAME && *s == WriteStep::Renamed)
            .unwrap();

        for at in 0..steps.len() {
            let dir = tempfile::tempdir().unwrap();
            let src = mem();
            write_chain(&mut SnapshotDir::create_or_open(dir.path()).unwrap(), &src);
            let before = restore(dir.path()).unwrap();
            let (_, outcome, snap) = faulty_write(dir.path(), &src, full, at, panic);
            assert_eq!(outcome, if panic { None } else { Some(false) }, "step {at}");
            let after = restore(dir.path()).unwrap();
            if at < commit {
                assert!(after == before, "step {at}: previous snapshot changed");
            } else {
                assert_eq!(after.0, b"new", "step {at}");
                assert!(after.1 == image(&src), "step {at}: new snapshot wrong");
            }
            // The same writer (after a failure) or a fresh one (after a crash) goes on.
            let mut snap = if panic {
                drop(snap);
                SnapshotDir::create_or_open(dir.path()).unwrap()
            } else {
                snap
            };
            let leftovers: Vec<String> = names(dir.path())
                .into_iter()
                .filter(|n| is_temp_name(n))
                .collect();
            assert!(leftovers.is_empty(), "step {at}: {leftovers:?}");
            // Pages dirtied for the failed write are still dirty: the caller re-sends them.
            let dirty = [run(3 * P, 2), run(8 << 20, 1), run(40 * P, 1)];
            scribble(&src, &dirty[2..], 5);
            snap.write_incremental(b"later", &src, &dirty).unwrap();
            let later = restore(dir.path()).unwrap();
            assert_eq!(later.0, b"later");
            assert!(later.1 == image(&src), "step {at}: later snapshot wrong");
            let expected_files = 2 + load(dir.path()).unwrap().layers.len();
            assert_eq!(
                names(dir.path()).len(),
                expected_files,
                "step {at}: {:?}",
                names(dir.path())
            );
        }
    }

    #[test]
    fn every_file_is_durable_before_the_manifest_names_it() {
        let dir = chain_dir();
        let src = mem();
        let (steps, outcome, _) = faulty_write(dir.path(), &src, false, usize::MAX, false);
        assert_eq!(outcome, Some(true));
        let at = |name_prefix: &str, step: WriteStep| {
            steps
                .iter()
                .position(|(n, s)| n.starts_with(name_prefix) && *s == step)
                .unwrap_or_else(|| panic!("no {step:?} of {name_prefix}: {steps:?}"))
        };
        let commit = at(MANIFEST_NAME, WriteStep::Renamed);
        for file in [LAYER_PREFIX, STATE_PREFIX, MANIFEST_NAME] {
            assert!(at(file, WriteStep::DataWritten) < at(file, WriteStep::FileSynced));
            // No rename before every file's data is durable.
            for other in [LAYER_PREFIX, STATE_PREFIX, MANIFEST_NAME] {
                assert!(
                    at(file, WriteStep::FileSynced) < at(other, WriteStep::Renamed),
                    "{file} synced after {other} renamed: {steps:?}"
                );
            }
        }
        for file in [LAYER_PREFIX, STATE_PREFIX] {
            assert!(at(file, WriteStep::DirSynced) < commit, "{steps:?}");
        }
        assert_eq!(commit + 1, at(MANIFEST_NAME, WriteStep::DirSynced));
        assert_eq!(commit + 2, steps.len());
    }

    #[test]
    fn crash_at_any_step_of_an_incremental_keeps_the_previous_snapshot() {
        crash_or_fail_at_every_step(false, true);
    }

    #[test]
    fn crash_at_any_step_of_a_full_keeps_the_previous_snapshot() {
        crash_or_fail_at_every_step(true, true);
    }

    #[test]
    fn failure_at_any_step_keeps_the_previous_snapshot_and_cleans_up() {
        crash_or_fail_at_every_step(false, false);
        crash_or_fail_at_every_step(true, false);
    }

    fn chain_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = mem();
        write_chain(&mut SnapshotDir::create_or_open(dir.path()).unwrap(), &src);
        dir
    }

    /// Offsets worth flipping in a file of `len` bytes: all of small files, a spread of
    /// header, table, data and trailer bytes of large ones.
    fn offsets(len: usize) -> Vec<usize> {
        if len <= 512 {
            return (0..len).collect();
        }
        let mut v: Vec<usize> = (0..80).step_by(3).collect();
        v.extend([
            100,
            4095,
            4096,
            4097,
            len / 2,
            len - 41,
            len - 40,
            len - 35,
            len - 1,
        ]);
        v
    }

    #[test]
    fn flipping_any_byte_of_any_file_is_an_error_naming_it() {
        let dir = chain_dir();
        let good = contents(dir.path());
        for (name, bytes) in &good {
            for off in offsets(bytes.len()) {
                let mut bad = bytes.clone();
                bad[off] ^= 0x10;
                std::fs::write(dir.path().join(name), &bad).unwrap();
                let tampered = contents(dir.path());
                let err = restore(dir.path()).unwrap_err();
                assert!(
                    err.to_string().contains(name.as_str()),
                    "{name}@{off}: {err}"
                );
                assert!(
                    contents(dir.path()) == tampered,
                    "{name}@{off}: read changed disk"
                );
            }
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        restore(dir.path()).unwrap();
    }

    #[test]
    fn truncating_or_deleting_any_file_is_an_error_naming_it() {
        let dir = chain_dir();
        let good = contents(dir.path());
        for (name, bytes) in &good {
            let path = dir.path().join(name);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                std::fs::write(&path, &bytes[..cut]).unwrap();
                let err = restore(dir.path()).unwrap_err();
                assert!(
                    matches!(err, StorageError::Truncated { .. })
                        && err.to_string().contains(name.as_str()),
                    "{name} cut to {cut}: {err}"
                );
            }
            std::fs::remove_file(&path).unwrap();
            let err = restore(dir.path()).unwrap_err();
            assert!(
                matches!(&err, StorageError::NotFound { path: p } if p == &path),
                "{name} deleted: {err}"
            );
            std::fs::write(&path, bytes).unwrap();
        }
        restore(dir.path()).unwrap();
    }

    #[test]
    fn swapped_layers_are_caught_by_the_manifest_hash() {
        let dir = chain_dir();
        let loaded = load(dir.path()).unwrap();
        let a = std::fs::read(&loaded.layers[1].path).unwrap();
        let b = std::fs::read(&loaded.layers[2].path).unwrap();
        std::fs::write(&loaded.layers[1].path, &b).unwrap();
        std::fs::write(&loaded.layers[2].path, &a).unwrap();
        let err = restore(dir.path()).unwrap_err();
        assert!(err.to_string().contains("layer-"), "{err}");
    }

    #[test]
    fn incremental_needs_a_usable_base() {
        let dir = tempfile::tempdir().unwrap();
        let src = mem();
        let mut snap = SnapshotDir::create_or_open(&dir.path().join("new/sub")).unwrap();
        let err = snap.write_incremental(b"", &src, &[run(0, 1)]).unwrap_err();
        assert!(matches!(err, StorageError::NoBase { .. }), "{err}");
        assert!(err.to_string().contains("full snapshot"), "{err}");
        drop(snap);

        let dir = chain_dir();
        let manifest = dir.path().join(MANIFEST_NAME);
        let mut bytes = std::fs::read(&manifest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&manifest, &bytes).unwrap();
        let before = contents(dir.path());
        let mut snap = SnapshotDir::create_or_open(dir.path()).unwrap();
        assert!(
            contents(dir.path()) == before,
            "open deleted files without a manifest"
        );
        let err = snap.write_incremental(b"", &src, &[run(0, 1)]).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        scribble(&src, &[run(0, 1)], 4);
        snap.write_full(b"again", &src, &[run(0, 1)]).unwrap();
        let (state, restored) = restore(dir.path()).unwrap();
        assert_eq!(state, b"again");
        assert!(restored == image(&src));
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
    }

    #[test]
    fn chain_length_is_limited() {
        let dir = tempfile::tempdir().unwrap();
        let src = mem();
        let mut snap = SnapshotDir::create_or_open(dir.path()).unwrap();
        snap.write_full(b"0", &src, &[run(0, 1)]).unwrap();
        for i in 1..MAX_CHAIN_LAYERS as u64 {
            snap.write_incremental(b"i", &src, &[run(i * P, 1)])
                .unwrap();
        }
        let err = snap
            .write_incremental(b"i", &src, &[run(0, 1)])
            .unwrap_err();
        assert!(
            matches!(err, StorageError::ChainTooLong { limit: 64, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("write a full snapshot"), "{err}");
        assert_eq!(load(dir.path()).unwrap().layers.len(), MAX_CHAIN_LAYERS);
        assert_eq!(
            snap.write_full(b"f", &src, &[run(0, 1)]).unwrap().chain_len,
            1
        );
    }

    #[test]
    fn one_writer_at_a_time_and_layout_is_checked() {
        let dir = chain_dir();
        let snap = SnapshotDir::create_or_open(dir.path()).unwrap();
        let err = SnapshotDir::create_or_open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        drop(snap);
        let mut snap = SnapshotDir::create_or_open(dir.path()).unwrap();

        let other =
            GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let err = snap
            .write_incremental(b"", &other, &[run(0, 1)])
            .unwrap_err();
        assert!(matches!(err, StorageError::LayoutMismatch { .. }), "{err}");
        let err = load(dir.path()).unwrap().apply_memory(&other).unwrap_err();
        assert!(matches!(err, StorageError::LayoutMismatch { .. }), "{err}");
    }

    #[test]
    fn generations_and_names() {
        assert_eq!(generation_of("layer-00000000000000000012.ncl"), Some(12));
        assert_eq!(generation_of("state-7.ncs"), Some(7));
        for n in [
            "layer-.ncl",
            "layer-1.ncs",
            "layer-+1.ncl",
            "MANIFEST",
            "xlayer-1.ncl",
        ] {
            assert_eq!(generation_of(n), None, "{n}");
        }
        // Unrelated files in the directory are left alone.
        let dir = chain_dir();
        std::fs::write(dir.path().join("notes.txt"), b"keep").unwrap();
        std::fs::write(dir.path().join("layer-99999.ncl"), b"stale").unwrap();
        let mut snap = SnapshotDir::create_or_open(dir.path()).unwrap();
        assert!(dir.path().join("notes.txt").exists());
        assert!(!dir.path().join("layer-99999.ncl").exists());
        // The next generation is above every name seen, so nothing is overwritten.
        assert_eq!(snap.next_generation, 100_000);
        let src = mem();
        let r = snap.write_incremental(b"x", &src, &[run(0, 1)]).unwrap();
        assert_eq!(r.generation, 100_000);
    }
}
