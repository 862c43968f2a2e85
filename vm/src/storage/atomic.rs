//! Atomic file replacement: write a temp file in the same directory, fsync it, rename it over
//! the target, fsync the directory. A crash at any point leaves either the old file or the new
//! one under the target name, never a mix; at worst a stray temp file remains (named
//! `.<target>.tmp.<pid>.<n>`, see [`is_temp_name`]), which [`super::SnapshotDir`] removes.
//!
//! What this cannot do: it does not lock; two writers of the same target race and the last
//! rename wins. It cannot make the rename durable on file systems that ignore directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Result, StorageError};

/// The steps of an atomic write, in order. A fault hook is called after each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// The temp file exists (empty).
    TempCreated,
    /// All bytes were handed to the kernel (not yet durable).
    DataWritten,
    /// The temp file's data is durable.
    FileSynced,
    /// The temp file was renamed over the target.
    Renamed,
    /// The directory entry is durable: the write is complete.
    DirSynced,
}

/// Called after each [`WriteStep`] with the target path. Returning an error makes the write
/// fail as if that step had failed; panicking simulates a crash (nothing is cleaned up).
pub type FaultHook<'a> = &'a dyn Fn(&Path, WriteStep) -> io::Result<()>;

/// How long the fsyncs of one atomic write took (file + directory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTime(pub Duration);

/// Marker inside temp file names; see [`is_temp_name`].
const TEMP_MARKER: &str = ".tmp.";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `path` with the bytes `write` produces.
///
/// The temp file is created with mode 0600 (snapshots hold guest memory) and removed if
/// `write` or any step before the rename fails.
pub fn write_atomically<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    write_atomically_with(path, None, write).map(|_| ())
}

/// [`write_atomically`] with an optional fault hook; returns the time spent in fsync.
pub(crate) fn write_atomically_with<F>(
    path: &Path,
    hook: Option<FaultHook<'_>>,
    write: F,
) -> Result<SyncTime>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = parent_dir(path);
    let temp = temp_path(path)?;
    let step = |s: WriteStep| hook.map_or(Ok(()), |h| h(path, s));

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| StorageError::io(&temp, "create temp file", e))?;
    let file_sync = match fill_and_sync(&mut file, &temp, write, &step) {
        Ok(t) => t,
        Err(e) => {
            drop(file);
            remove_temp(&temp);
            return Err(e);
        }
    };
    drop(file);

    if let Err(e) = std::fs::rename(&temp, path) {
        remove_temp(&temp);
        return Err(StorageError::io(path, "rename temp file over target", e));
    }
    step(WriteStep::Renamed).map_err(|e| StorageError::io(path, "rename (injected)", e))?;

    let dir_sync = sync_dir(&dir)?;
    step(WriteStep::DirSynced).map_err(|e| StorageError::io(&dir, "fsync dir (injected)", e))?;
    Ok(SyncTime(file_sync + dir_sync))
}

/// Steps before the rename: write, fsync; returns the fsync time.
fn fill_and_sync<F>(
    file: &mut File,
    temp: &Path,
    write: F,
    step: &dyn Fn(WriteStep) -> io::Result<()>,
) -> Result<Duration>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let io_err = |op| move |e| StorageError::io(temp, op, e);
    step(WriteStep::TempCreated).map_err(io_err("create temp file (injected)"))?;
    write(file).map_err(io_err("write temp file"))?;
    step(WriteStep::DataWritten).map_err(io_err("write temp file (injected)"))?;
    let started = Instant::now();
    file.sync_all().map_err(io_err("fsync temp file"))?;
    let synced = started.elapsed();
    step(WriteStep::FileSynced).map_err(io_err("fsync temp file (injected)"))?;
    Ok(synced)
}

/// Fsyncs a directory so renames and unlinks inside it are durable; returns the time taken.
pub(crate) fn sync_dir(dir: &Path) -> Result<Duration> {
    let started = Instant::now();
    let handle = File::open(dir).map_err(|e| StorageError::io(dir, "open dir for fsync", e))?;
    handle
        .sync_all()
        .map_err(|e| StorageError::io(dir, "fsync dir", e))?;
    Ok(started.elapsed())
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temp name unique within this process and distinct from other processes' (pid).
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StorageError::Io {
            path: path.to_path_buf(),
            op: "derive temp file name",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no UTF-8 file name"),
        })?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = format!(".{name}{TEMP_MARKER}{}.{n}", std::process::id());
    Ok(parent_dir(path).join(temp))
}

/// Whether a directory entry name is a temp file left by [`write_atomically`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

fn remove_temp(temp: &Path) {
    if let Err(e) = std::fs::remove_file(temp) {
        tracing::warn!(path = %temp.display(), error = %e, "could not remove temp file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, |w| w.write_all(b"one")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomically(&path, |w| w.write_all(b"two!")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two!");
        assert_eq!(names(dir.path()), vec!["f"]);
    }

    #[test]
    fn failed_write_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, |w| w.write_all(b"old")).unwrap();
        let err = write_atomically(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("write temp file"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["f"]);
    }

    #[test]
    fn injected_failure_before_rename_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, |w| w.write_all(b"old")).unwrap();
        for fail_at in [
            WriteStep::TempCreated,
            WriteStep::DataWritten,
            WriteStep::FileSynced,
        ] {
            let hook = |_: &Path, s: WriteStep| {
                if s == fail_at {
                    Err(io::Error::other("injected"))
                } else {
                    Ok(())
                }
            };
            let r = write_atomically_with(&path, Some(&hook), |w| w.write_all(b"new"));
            assert!(r.is_err());
            assert_eq!(std::fs::read(&path).unwrap(), b"old");
            assert_eq!(names(dir.path()), vec!["f"]);
        }
    }

    #[test]
    fn hook_sees_every_step_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let seen = std::cell::RefCell::new(Vec::new());
        let hook = |_: &Path, s: WriteStep| {
            seen.borrow_mut().push(s);
            Ok(())
        };
        write_atomically_with(&path, Some(&hook), |w| w.write_all(b"x")).unwrap();
        assert_eq!(
            seen.into_inner(),
            vec![
                WriteStep::TempCreated,
                WriteStep::DataWritten,
                WriteStep::FileSynced,
                WriteStep::Renamed,
                WriteStep::DirSynced
            ]
        );
    }

    #[test]
    fn crash_leaves_old_file_or_new_file_and_a_recognisable_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, |w| w.write_all(b"old")).unwrap();
        let crash_at = Cell::new(WriteStep::DataWritten);
        let hook = |_: &Path, s: WriteStep| {
            if s == crash_at.get() {
                panic!("simulated crash");
            }
            Ok(())
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_atomically_with(&path, Some(&hook), |w| w.write_all(b"new"))
        }));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let left = names(dir.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|n| is_temp_name(n)), "{left:?}");
        crash_at.set(WriteStep::Renamed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_atomically_with(&path, Some(&hook), |w| w.write_all(b"new"))
        }));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn temp_names_are_unique_and_recognised() {
        let p = Path::new("/x/MANIFEST");
        let a = temp_path(p).unwrap();
        let b = temp_path(p).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x")));
        assert!(is_temp_name(a.file_name().unwrap().to_str().unwrap()));
        assert!(!is_temp_name("MANIFEST"));
        assert!(!is_temp_name("layer-1.ncl"));
    }
}
