//! Scratch files for the decoders that only read files.
//!
//! Files go to `/dev/shm` when it is writable (no disk I/O per fuzz iteration), else to the
//! system temp directory. Each call makes a fresh directory that is removed when dropped.

use std::path::Path;

/// A fresh, empty scratch directory.
pub fn dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("novacron-fuzz-");
        b
    };
    builder()
        .tempdir_in(shm)
        .or_else(|_| builder().tempdir())
        .unwrap_or_else(|e| panic!("fuzz harness: cannot create a scratch directory: {e}"))
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes)
        .unwrap_or_else(|e| panic!("fuzz harness: cannot write {}: {e}", path.display()));
    path
}
