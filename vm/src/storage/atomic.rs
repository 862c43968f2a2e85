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
    let mut pending = PendingFile::create(path, hook)?;
    let steps = (|| {
        pending.write(write)?;
        let file_sync = pending.sync()?;
        pending.rename()?;
        let dir_sync = sync_dir(&parent_dir(path))?;
        pending.dir_synced()?;
        Ok(SyncTime(file_sync + dir_sync))
    })();
    if steps.is_err() {
        pending.discard();
    }
    steps
}

/// One file on its way to replacing `target`: a temp file in the same directory that is
/// written, fsynced and renamed over the target in separate steps, so a caller can batch the
/// fsyncs of several files and share one directory fsync among their renames.
///
/// The steps must run in order (write, [`sync`](Self::sync), [`rename`](Self::rename), then
/// a directory fsync by the caller followed by [`dir_synced`](Self::dir_synced)); each calls
/// the fault hook. What this cannot do: it never removes the temp file by itself (a simulated
/// crash must leave it behind); call [`discard`](Self::discard) after a failure.
pub(crate) struct PendingFile<'h> {
    target: PathBuf,
    temp: PathBuf,
    file: File,
    hook: Option<FaultHook<'h>>,
    renamed: bool,
}

impl std::fmt::Debug for PendingFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFile")
            .field("target", &self.target)
            .field("temp", &self.temp)
            .field("renamed", &self.renamed)
            .finish()
    }
}

impl<'h> PendingFile<'h> {
    /// Creates the (empty) temp file for `target`, mode 0600 (snapshots hold guest memory).
    pub(crate) fn create(target: &Path, hook: Option<FaultHook<'h>>) -> Result<Self> {
        let temp = temp_path(target)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| StorageError::io(&temp, "create temp file", e))?;
        let pending = PendingFile {
            target: target.to_path_buf(),
            temp,
            file,
            hook,
            renamed: false,
        };
        match pending.step(WriteStep::TempCreated, "create temp file (injected)") {
            Ok(()) => Ok(pending),
            Err(e) => {
                pending.discard();
                Err(e)
            }
        }
    }

    /// The path the file will have once renamed.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Hands the open temp file to `write`.
    pub(crate) fn write<F>(&mut self, write: F) -> Result<()>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        self.write_file(|mut file| write(&mut file))
    }

    /// Hands the open temp file to `write` as a shared `&File`, which several threads may
    /// use at once (e.g. one writing, one starting writeback with `fdatasync`).
    pub(crate) fn write_file<F>(&mut self, write: F) -> Result<()>
    where
        F: FnOnce(&File) -> io::Result<()>,
    {
        write(&self.file).map_err(|e| StorageError::io(&self.temp, "write temp file", e))?;
        self.step(WriteStep::DataWritten, "write temp file (injected)")
    }

    /// What another thread needs to fsync the temp file (the fault hook may not be
    /// shareable between threads). Report the finished fsync with [`synced`](Self::synced)
    /// on the thread that owns the hook.
    pub(crate) fn sync_handle(&self) -> SyncHandle<'_> {
        SyncHandle {
            file: &self.file,
            temp: &self.temp,
        }
    }

    /// Reports a completed [`SyncHandle::sync`] to the fault hook.
    pub(crate) fn synced(&self) -> Result<()> {
        self.step(WriteStep::FileSynced, "fsync temp file (injected)")
    }

    /// Fsyncs the temp file, then [`synced`](Self::synced); returns the time fsync took.
    pub(crate) fn sync(&self) -> Result<Duration> {
        let took = self.sync_handle().sync()?;
        self.synced()?;
        Ok(took)
    }

    /// Renames the temp file over the target. Only after [`sync`](Self::sync).
    pub(crate) fn rename(&mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.target)
            .map_err(|e| StorageError::io(&self.target, "rename temp file over target", e))?;
        self.renamed = true;
        self.hook_step(WriteStep::Renamed, &self.target, "rename (injected)")
    }

    /// Reports that the caller fsynced the directory after [`rename`](Self::rename).
    pub(crate) fn dir_synced(&self) -> Result<()> {
        let dir = parent_dir(&self.target);
        self.hook_step(WriteStep::DirSynced, &dir, "fsync dir (injected)")
    }

    /// Removes the temp file unless it was already renamed (after a failed step).
    pub(crate) fn discard(self) {
        if !self.renamed {
            drop(self.file);
            remove_temp(&self.temp);
        }
    }

    fn step(&self, step: WriteStep, op: &'static str) -> Result<()> {
        self.hook_step(step, &self.temp, op)
    }

    fn hook_step(&self, step: WriteStep, blame: &Path, op: &'static str) -> Result<()> {
        match self.hook {
            Some(h) => h(&self.target, step).map_err(|e| StorageError::io(blame, op, e)),
            None => Ok(()),
        }
    }
}

/// A pending file's open temp file, to fsync from any thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncHandle<'a> {
    file: &'a File,
    temp: &'a Path,
}

impl SyncHandle<'_> {
    /// Makes the temp file's data durable; returns the time fsync took.
    pub(crate) fn sync(self) -> Result<Duration> {
        let started = Instant::now();
        self.file
            .sync_all()
            .map_err(|e| StorageError::io(self.temp, "fsync temp file", e))?;
        Ok(started.elapsed())
    }
}

/// Fsyncs several pending files at once, one thread each (the first on this thread), so
/// their journal commits and device flushes overlap instead of queueing. Returns the wall
/// time. Falls back to this thread if a thread cannot be started.
pub(crate) fn sync_concurrently(handles: &[SyncHandle<'_>]) -> Result<Duration> {
    let started = Instant::now();
    let Some((first, rest)) = handles.split_first() else {
        return Ok(Duration::ZERO);
    };
    std::thread::scope(|s| {
        let mut inline = Vec::new();
        let mut spawned = Vec::new();
        for &h in rest {
            match std::thread::Builder::new()
                .name("snapshot-fsync".into())
                .spawn_scoped(s, move || h.sync())
            {
                Ok(j) => spawned.push((h, j)),
                Err(e) => {
                    tracing::debug!(error = %e, "fsync thread not started; syncing inline");
                    inline.push(h);
                }
            }
        }
        let mut result = first.sync().map(|_| ());
        for h in inline {
            result = result.and(h.sync().map(|_| ()));
        }
        for (h, j) in spawned {
            let r = j.join().unwrap_or_else(|_| {
                Err(StorageError::Io {
                    path: h.temp.to_path_buf(),
                    op: "fsync temp file",
                    source: io::Error::other("fsync thread panicked"),
                })
            });
            result = result.and(r.map(|_| ()));
        }
        result
    })?;
    Ok(started.elapsed())
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
