//! A VM's serial console and the part of it that belongs to a checkpoint.
//!
//! The VMM's stdout appends to `<vm>/console.log`. When it takes a snapshot it reports the
//! file's length while the guest was paused (`SnapshotDone.console_bytes`); the supervisor
//! then copies that much of the console into the snapshot directory as
//! `console-<generation>.log`. The copy travels with the checkpoint (a holder gets it with
//! the other files), and a restore — here after a crash, or on a holder after this node
//! died — puts it back as the console before the guest runs again. The restored guest
//! prints again what it printed after the checkpoint, so the console reads exactly as the
//! output of an uninterrupted run, with no line lost or doubled.
//!
//! A VM that moved here live arrives with what it printed on the nodes it ran on before
//! (`console.before`, written once the node it left hands the output over); its output is
//! that followed by its console here. A checkpoint's copy holds both, so a restore needs
//! only the copy.
//!
//! A checkpoint without the copy (written by an older node, or with a console that was not
//! a file) is restored as before: the new output is appended.

use std::io::Read;
use std::path::{Path, PathBuf};

use novacron_vm::storage::snapshot_dir::MANIFEST_NAME;

use super::paths::VmPaths;

const PREFIX: &str = "console-";
/// What the VM printed before it came to this node.
const BEFORE: &str = "console.before";
const SUFFIX: &str = ".log";

/// The name of the console copy of checkpoint `generation` in a snapshot directory.
pub fn checkpoint_console_name(generation: u64) -> String {
    format!("{PREFIX}{generation}{SUFFIX}")
}

/// Whether `name` is a console copy's name (of any generation).
fn is_console_copy(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The console copy of the committed checkpoint in `snapshot_dir`, if it has one.
pub fn checkpoint_console(snapshot_dir: &Path) -> Option<PathBuf> {
    let manifest = novacron_vm::storage::read_manifest(snapshot_dir).ok()?;
    let path = snapshot_dir.join(checkpoint_console_name(manifest.generation));
    path.is_file().then_some(path)
}

/// Keeps the first `bytes` of the console as the copy of the checkpoint just committed,
/// and drops the copies of older ones. `bytes` is what the VMM reported while paused.
pub fn keep_for_checkpoint(paths: &VmPaths, bytes: u64) -> Result<PathBuf, String> {
    let dir = paths.snapshot();
    let manifest = novacron_vm::storage::read_manifest(&dir)
        .map_err(|e| format!("cannot read the checkpoint's {MANIFEST_NAME}: {e}"))?;
    let name = checkpoint_console_name(manifest.generation);
    let path = dir.join(&name);
    let console = paths.console();
    let mut from = std::fs::File::open(&console)
        .map_err(|e| format!("cannot open {}: {e}", console.display()))?;
    let len = from.metadata().map(|m| m.len()).unwrap_or(0);
    if len < bytes {
        return Err(format!(
            "{} holds {len} bytes, fewer than the {bytes} of the checkpoint",
            console.display()
        ));
    }
    let before = paths.dir.join(BEFORE);
    novacron_vm::storage::write_atomically(&path, |w| {
        match std::fs::File::open(&before) {
            Ok(mut b) => {
                std::io::copy(&mut b, w)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let copied = std::io::copy(&mut (&mut from).take(bytes), w)?;
        if copied != bytes {
            return Err(std::io::Error::other("the console shrank while copied"));
        }
        w.flush()
    })
    .map_err(|e| format!("cannot keep the console of the checkpoint: {e}"))?;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().into_owned();
            if other != name && is_console_copy(&other) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(path)
}

/// Before the VM is restored from its checkpoint: the console becomes the checkpoint's copy
/// of it (replaced whole, atomically). Returns whether there was a copy to rewind to.
pub fn rewind_to_checkpoint(paths: &VmPaths) -> Result<bool, String> {
    let Some(copy) = checkpoint_console(&paths.snapshot()) else {
        return Ok(false);
    };
    let console = paths.console();
    let mut from =
        std::fs::File::open(&copy).map_err(|e| format!("cannot open {}: {e}", copy.display()))?;
    novacron_vm::storage::write_atomically(&console, |w| {
        std::io::copy(&mut from, w)?;
        w.flush()
    })
    .map_err(|e| format!("cannot rewind {}: {e}", console.display()))?;
    // The copy holds what came before too (a crash before this line rewinds again).
    match std::fs::remove_file(paths.dir.join(BEFORE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {BEFORE}: {e}"))
        }
        _ => {}
    }
    Ok(true)
}

/// Keeps `output`, what the VM printed on the nodes it ran on before it moved here.
pub fn keep_arrived(paths: &VmPaths, output: &[u8]) -> Result<(), String> {
    novacron_vm::storage::write_atomically(&paths.dir.join(BEFORE), |w| {
        w.write_all(output)?;
        w.flush()
    })
    .map_err(|e| format!("cannot keep the output the VM brought: {e}"))
}

/// The two files of the VM's output, in order, with their lengths (0 when absent).
fn parts(paths: &VmPaths) -> std::io::Result<[(PathBuf, u64); 2]> {
    let len = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    };
    let before = paths.dir.join(BEFORE);
    let console = paths.console();
    Ok([
        (before.clone(), len(&before)?),
        (console.clone(), len(&console)?),
    ])
}

/// The VM's whole serial output (what it brought, then its console here); an error when it
/// is over `max` bytes.
pub fn read_output(paths: &VmPaths, max: u64) -> Result<Vec<u8>, String> {
    let parts = parts(paths).map_err(|e| format!("cannot read the output: {e}"))?;
    let total: u64 = parts.iter().map(|(_, len)| len).sum();
    if total > max {
        return Err(format!(
            "its serial output is {total} bytes, over the {max}-byte limit"
        ));
    }
    read_output_from(paths, 0, max as usize).map_err(|e| format!("cannot read the output: {e}"))
}

/// Up to `max` bytes of the VM's whole output from `offset`.
pub fn read_output_from(paths: &VmPaths, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut out = Vec::new();
    let mut skip = offset;
    for (path, len) in parts(paths)? {
        if skip >= len {
            skip -= len;
            continue;
        }
        let want = (max - out.len()) as u64;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(skip))?;
        // No further than the length measured: the two parts stay in step.
        f.take(want.min(len - skip)).read_to_end(&mut out)?;
        skip = 0;
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_copies_are_recognised() {
        assert!(is_console_copy("console-7.log"));
        assert!(is_console_copy(&checkpoint_console_name(12)));
        for other in [
            "console-.log",
            "console-7.txt",
            "console-x.log",
            "console.log",
            "MANIFEST",
        ] {
            assert!(!is_console_copy(other), "{other}");
        }
    }

    #[test]
    fn the_output_is_what_the_vm_brought_then_its_console_here() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(tmp.path(), "vm-1");
        std::fs::create_dir_all(&paths.dir).unwrap();
        assert_eq!(read_output(&paths, 100).unwrap(), b"");
        std::fs::write(paths.console(), b"-here").unwrap();
        assert_eq!(read_output(&paths, 100).unwrap(), b"-here");
        keep_arrived(&paths, b"there").unwrap();
        assert_eq!(read_output(&paths, 100).unwrap(), b"there-here");
        let err = read_output(&paths, 9).unwrap_err();
        assert!(err.contains("10 bytes") && err.contains("9-byte"), "{err}");
        // Any window of it, across the two files.
        for offset in 0..=11u64 {
            for max in 0..=11usize {
                let want: Vec<u8> = b"there-here"
                    .iter()
                    .skip(offset as usize)
                    .take(max)
                    .copied()
                    .collect();
                assert_eq!(
                    read_output_from(&paths, offset, max).unwrap(),
                    want,
                    "{offset} {max}"
                );
            }
        }
    }

    #[test]
    fn without_a_checkpoint_there_is_nothing_to_keep_or_rewind() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(tmp.path(), "vm-1");
        std::fs::create_dir_all(paths.snapshot()).unwrap();
        std::fs::write(paths.console(), b"hello\n").unwrap();
        let err = keep_for_checkpoint(&paths, 6).unwrap_err();
        assert!(err.contains(MANIFEST_NAME), "{err}");
        assert!(!rewind_to_checkpoint(&paths).unwrap());
        assert_eq!(std::fs::read(paths.console()).unwrap(), b"hello\n");
    }
}
