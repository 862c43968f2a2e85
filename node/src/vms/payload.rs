//! A VM's payload files from the mesh: a process's files (its spec's `files`) and a job's
//! kernel or initrd by chunk set.
//!
//! Each set is fetched once into the node's payload directory, `<dataDir>/payloads/<set id>`:
//! content-addressed, written whole or not at all (temp and rename), every chunk verified
//! against its blake3 id on the way, so a file there is trusted as the set it is named
//! after. Before each start of a process (the first, a restart from scratch, a cold move's
//! arrival) its files are copied from there into the command's work directory.
//!
//! The work directory belongs to the jail's user, who may have left anything in it — a
//! symlink named like a payload file, to have root write through it. A file is therefore
//! written under a fresh name created exclusively (`O_EXCL`, so never through a link) and
//! renamed over its name, which replaces whatever is there without following it.
//!
//! The directory is swept while the node runs ([`sweep`], every minute): a set no VM of the
//! node's registry names (as a file, a kernel or an initrd) goes once nothing has needed it
//! for [`KEEP_UNUSED`] — each fetch, or each time a start finds the set already here,
//! touches the file, and a placement records its VM within seconds of that. Temp files of
//! fetches that never finished go after the same time.
//!
//! What this cannot do: files carry no mode (they are 0644: the jail runs programs from the
//! system directories only, so a script is run as `/bin/sh run.sh`).

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use std::collections::HashSet;

use crate::model::{is_chunk_set_id, PayloadFile, VmSpec};

/// The payload directory's name in the data directory.
pub const PAYLOAD_DIR: &str = "payloads";
/// Largest file of a payload fetched from the mesh.
pub const MAX_PAYLOAD_FILE_BYTES: u64 = 1 << 30;

/// How long one start (or placement) may spend fetching its payload: under the job link's
/// 30 s answer timeout, so an origin hears a refusal rather than its own timeout.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What a fetch returns: done, or why not (naming the set).
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Fetches chunk sets from the mesh (the daemon's chunk exchange).
pub trait PayloadSource: Send + Sync {
    /// Fetches chunk set `set` (hex) into the file `out`, whole or not at all, refusing a
    /// set of more than `max` bytes before fetching its chunks.
    fn fetch(&self, set: &str, out: &Path, max: u64) -> FetchFuture;
}

/// Where chunk set `set` is kept in `payload_dir`.
pub fn payload_file(payload_dir: &Path, set: &str) -> PathBuf {
    payload_dir.join(set)
}

/// Fetches each of `sets` that `payload_dir` does not hold yet, one after another.
pub async fn fetch_missing(
    source: Option<&dyn PayloadSource>,
    payload_dir: &Path,
    sets: &[String],
) -> Result<(), String> {
    for set in sets {
        if !is_chunk_set_id(set) {
            return Err(format!("chunk set {set:?} is not 64 hex digits"));
        }
        let out = payload_file(payload_dir, set);
        if out.is_file() {
            // Needed now: the sweep keeps it for a while from here.
            let touched = std::fs::File::options()
                .write(true)
                .open(&out)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if let Err(e) = touched {
                tracing::debug!(file = %out.display(), error = %e, "cannot touch a payload file");
            }
            continue;
        }
        let Some(source) = source else {
            return Err(format!(
                "chunk set {set}: this node is not on a mesh to fetch it from"
            ));
        };
        std::fs::create_dir_all(payload_dir)
            .map_err(|e| format!("cannot create {}: {e}", payload_dir.display()))?;
        source
            .fetch(set, &out, MAX_PAYLOAD_FILE_BYTES)
            .await
            .map_err(|e| format!("cannot fetch chunk set {set}: {e}"))?;
        // Readable by the jails (a VMM reads its kernel, a command's files are copied).
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("cannot make {} readable: {e}", out.display()))?;
    }
    Ok(())
}

/// How long a payload file that no VM names stays after it was last needed.
pub const KEEP_UNUSED: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The chunk sets `spec` needs from the payload directory `payload_dir`: its files, and its
/// kernel and initrd when they are files there.
pub fn sets_of(spec: &VmSpec, payload_dir: &Path) -> Vec<String> {
    let mut sets: Vec<String> = spec.files.iter().map(|f| f.chunk_set.clone()).collect();
    for path in [&spec.kernel, &spec.initrd].into_iter().flatten() {
        let path = Path::new(path);
        if path.parent() == Some(payload_dir) {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                sets.push(name.to_string());
            }
        }
    }
    sets
}

/// Whether the payload directory's entry `name`, last needed `age` ago, goes: a chunk set
/// not in `in_use`, or a temp file of a fetch, either older than `keep`. Anything else is
/// not the sweep's to remove.
pub fn goes(
    name: &str,
    in_use: &HashSet<String>,
    age: std::time::Duration,
    keep: std::time::Duration,
) -> bool {
    let ours = is_chunk_set_id(name) && !in_use.contains(name) || name.starts_with(".tmp");
    ours && age >= keep
}

/// Removes what [`goes`] from `payload_dir`; returns the paths removed. Blocking.
pub fn sweep(
    payload_dir: &Path,
    in_use: &HashSet<String>,
    keep: std::time::Duration,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(payload_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if goes(&name, in_use, age, keep) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an unused payload file")
                }
            }
        }
    }
    removed
}

/// Copies `files` from `payload_dir` into the work directory `work` (created if missing),
/// each replacing whatever has its name there (see the module doc). Blocking.
pub fn place_files(payload_dir: &Path, work: &Path, files: &[PayloadFile]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(work)
        .map_err(|e| format!("cannot create the work directory {}: {e}", work.display()))?;
    for f in files {
        let from = payload_file(payload_dir, &f.chunk_set);
        let mut source = std::fs::File::open(&from).map_err(|e| {
            format!(
                "files: {} (chunk set {}) is not in the payload directory: {e}",
                f.name, f.chunk_set
            )
        })?;
        let (tmp, mut out) = exclusive_temp(work)?;
        let copied = std::io::copy(&mut source, &mut out)
            .and_then(|_| out.flush())
            .and_then(|_| out.sync_all());
        let placed = copied.and_then(|_| std::fs::rename(&tmp, work.join(&f.name)));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("files: cannot place {}: {e}", f.name));
        }
    }
    Ok(())
}

/// A new file in `dir` under a random name, created exclusively and without following a
/// link, readable by the jail's user.
fn exclusive_temp(dir: &Path) -> Result<(PathBuf, std::fs::File), String> {
    for _ in 0..8 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a temp name: {e}"))?;
        let path = dir.join(format!(
            ".novacron-{}",
            novacron_mesh::util::hex::encode(&bytes)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create a file in {}: {e}", dir.display())),
        }
    }
    Err(format!("cannot find a free temp name in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_takes_only_unused_sets_and_old_temp_files_once_they_are_old() {
        use std::time::Duration;
        let keep = Duration::from_secs(60);
        let (old, young) = (Duration::from_secs(61), Duration::from_secs(59));
        let used = "ab".repeat(32);
        let unused = "cd".repeat(32);
        let in_use: HashSet<String> = [used.clone()].into();
        assert!(goes(&unused, &in_use, old, keep));
        assert!(!goes(&unused, &in_use, young, keep), "needed not long ago");
        assert!(!goes(&used, &in_use, old, keep), "a VM names it");
        assert!(goes(".tmpA1b2C3", &in_use, old, keep));
        assert!(
            !goes(".tmpA1b2C3", &in_use, young, keep),
            "a fetch may be writing it"
        );
        for other in ["notes.txt", "ab", &"ab".repeat(31), "run.sh"] {
            assert!(
                !goes(other, &in_use, old, keep),
                "{other} is not the sweep's"
            );
        }
        // On disk: everything is young, so nothing goes; with no grace, only the unused set.
        let dir = tempfile::tempdir().unwrap();
        for name in [&used, &unused, &"notes".to_string()] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("ef".repeat(32))).unwrap();
        assert!(sweep(dir.path(), &in_use, keep).is_empty());
        let removed = sweep(dir.path(), &in_use, Duration::ZERO);
        assert_eq!(removed, vec![dir.path().join(&unused)]);
        assert!(dir.path().join(&used).is_file() && dir.path().join("notes").is_file());
    }

    #[test]
    fn a_spec_needs_its_files_and_a_kernel_fetched_into_the_payload_directory() {
        let dir = Path::new("/var/lib/novacron/payloads");
        let set = "ab".repeat(32);
        let mut spec: VmSpec = serde_json::from_str(r#"{"guest": "builtin:hello"}"#).unwrap();
        spec.kernel = Some(dir.join(&set).to_string_lossy().into_owned());
        spec.initrd = Some("/srv/images/initrd".into());
        spec.files = vec![PayloadFile {
            name: "run.sh".into(),
            chunk_set: "cd".repeat(32),
        }];
        assert_eq!(sets_of(&spec, dir), vec!["cd".repeat(32), set]);
    }
    use std::sync::Mutex;

    /// A source that writes a fixed body for each set and counts its calls.
    struct Fixed {
        body: Vec<u8>,
        calls: Mutex<Vec<(String, u64)>>,
    }

    impl PayloadSource for Fixed {
        fn fetch(&self, set: &str, out: &Path, max: u64) -> FetchFuture {
            self.calls.lock().unwrap().push((set.to_string(), max));
            let (out, body) = (out.to_path_buf(), self.body.clone());
            Box::pin(async move { std::fs::write(out, body).map_err(|e| e.to_string()) })
        }
    }

    fn file(name: &str, set: &str) -> PayloadFile {
        PayloadFile {
            name: name.into(),
            chunk_set: set.into(),
        }
    }

    #[tokio::test]
    async fn sets_are_fetched_once_and_placed_over_whatever_the_jail_left() {
        let tmp = tempfile::tempdir().unwrap();
        let (payloads, work) = (tmp.path().join("payloads"), tmp.path().join("work"));
        let source = Fixed {
            body: b"echo hi\n".to_vec(),
            calls: Mutex::new(Vec::new()),
        };
        let set = "ab".repeat(32);
        for _ in 0..2 {
            fetch_missing(Some(&source), &payloads, std::slice::from_ref(&set))
                .await
                .unwrap();
        }
        assert_eq!(
            *source.calls.lock().unwrap(),
            [(set.clone(), MAX_PAYLOAD_FILE_BYTES)],
            "a held set is not fetched again"
        );
        // The jail left a symlink named like the file, pointing at a file of the host.
        std::fs::create_dir_all(&work).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        std::os::unix::fs::symlink(&victim, work.join("run.sh")).unwrap();
        place_files(&payloads, &work, &[file("run.sh", &set)]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
        let placed = work.join("run.sh");
        assert!(!std::fs::symlink_metadata(&placed).unwrap().is_symlink());
        assert_eq!(std::fs::read(&placed).unwrap(), b"echo hi\n");
        let names: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left");
    }

    #[tokio::test]
    async fn a_missing_set_or_source_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let set = "cd".repeat(32);
        let e = fetch_missing(None, tmp.path(), std::slice::from_ref(&set))
            .await
            .unwrap_err();
        assert!(e.contains(&set) && e.contains("not on a mesh"), "{e}");
        let e = fetch_missing(None, tmp.path(), &["../etc".to_string()])
            .await
            .unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = place_files(tmp.path(), &tmp.path().join("w"), &[file("a", &set)]).unwrap_err();
        assert!(e.contains("not in the payload directory"), "{e}");
    }
}
