//! Crash-safe, checksummed snapshot storage.
//!
//! A snapshot is a directory holding one opaque state file (the integrator's rkyv archive of
//! vCPU and device state), a chain of memory layer files (one full layer, then incremental
//! layers holding only the pages dirtied since the previous snapshot) and a `MANIFEST` that
//! names them with their blake3 hashes. The manifest rename is the commit point.
//!
//! Submodules, one job each:
//! - [`atomic`]: temp file + fsync + rename + fsync of the directory.
//! - [`checksummed`]: small framed files (magic, version, kind, length, blake3 of payload).
//! - [`page_runs`]: page runs and dirty-bitmap to run conversion.
//! - [`memory_layer`]: writing guest pages into a layer file and applying it back.
//! - [`manifest`]: the manifest's binary format.
//! - [`snapshot_dir`]: the snapshot directory (full/incremental writes, load, garbage collection).
//!
//! What this module cannot do: it does not pause vCPUs. Every function that reads or writes
//! guest memory assumes no vCPU runs and no other thread touches that memory meanwhile
//! (otherwise the written pages are torn and their checksum will not match on restore).

pub mod atomic;
pub mod checksummed;
pub mod manifest;
pub mod memory_layer;
pub mod page_runs;
pub mod snapshot_dir;

use std::io;
use std::path::{Path, PathBuf};

pub use atomic::write_atomically;
pub use checksummed::{read_checksummed, write_checksummed};
pub use memory_layer::{apply_layer, write_layer, LayerInfo, LayerStats};
pub use page_runs::{merge_runs, runs_from_dirty_bitmap, runs_of_all_memory, PageRun};
pub use snapshot_dir::{
    load, read_manifest, LayerRef, LoadedSnapshot, RestoreStats, SnapshotDir, WriteReport,
};

/// Everything that can go wrong reading or writing snapshot storage. Every variant names the
/// file (or directory) involved and the value that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: truncated: expected {expected} bytes, found {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: unexpected trailing bytes: expected {expected} bytes, found {found}")]
    TrailingBytes {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        path: PathBuf,
        expected: [u8; 4],
        found: [u8; 4],
    },
    #[error("{path}: unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error("{path}: wrong file kind {found}, expected {expected}")]
    WrongKind {
        path: PathBuf,
        expected: u16,
        found: u16,
    },
    #[error("{path}: {what} is {value}, above the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("{path}: checksum mismatch: {detail}")]
    ChecksumMismatch { path: PathBuf, detail: &'static str },
    #[error("{path}: invalid memory layer: {reason}")]
    InvalidLayer { path: PathBuf, reason: String },
    #[error("invalid page runs: {reason}")]
    InvalidRuns { reason: page_runs::RunError },
    #[error("{path}: invalid manifest: {reason}")]
    InvalidManifest {
        path: PathBuf,
        reason: manifest::ManifestError,
    },
    #[error("{dir}: no base snapshot for an incremental snapshot ({reason}); write a full snapshot first")]
    NoBase {
        dir: PathBuf,
        /// Why the directory has no usable manifest (shared: the directory keeps it).
        reason: std::sync::Arc<StorageError>,
    },
    #[error("{dir}: layer chain already holds {limit} layers (the limit); write a full snapshot")]
    ChainTooLong { dir: PathBuf, limit: usize },
    #[error("{dir}: guest memory layout {found} does not match the snapshot's {expected}")]
    LayoutMismatch {
        dir: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{dir}: snapshot directory is locked by another writer")]
    Locked { dir: PathBuf },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, StorageError>;

impl StorageError {
    /// Wraps an I/O error, turning "not found" into [`StorageError::NotFound`].
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            StorageError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        }
    }
}
