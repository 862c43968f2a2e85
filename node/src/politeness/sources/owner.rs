//! The owner-activity hook: files in the data directory whose presence says what the owner
//! is doing, for tests and for desktops whose input the devices do not show.
//!
//! `<dataDir>/owner-active`: the owner is using the machine now. `<dataDir>/owner-idle`: the
//! owner has been away for a long time. Both present: active (the owner's side wins). The
//! check is two `lstat` calls; the content of the files is not read.
//!
//! The API's override (`POST /api/v1/politeness/owner`), which beats these files, is kept in
//! `<dataDir>/owner-override` (`active` or `idle`; no file: none), so a volunteer who said
//! "I'm using it" is not forgotten by a restart.

use std::io::Write;
use std::path::Path;

use crate::policy::politeness::observation::OwnerSignal;

pub const OWNER_ACTIVE_FILE: &str = "owner-active";
pub const OWNER_IDLE_FILE: &str = "owner-idle";
pub const OWNER_OVERRIDE_FILE: &str = "owner-override";

/// The override the API set, as kept in the data directory; an unreadable or garbled file is
/// an error naming it (the caller decides what that means).
pub fn read_override(data_dir: &Path) -> Result<Option<OwnerSignal>, String> {
    let path = data_dir.join(OWNER_OVERRIDE_FILE);
    let text = match super::read_limited(&path, 64) {
        Some(t) => t,
        None if !path.exists() => return Ok(None),
        None => return Err(format!("{}: cannot be read", path.display())),
    };
    match text.trim() {
        "active" => Ok(Some(OwnerSignal::Active)),
        "idle" => Ok(Some(OwnerSignal::Idle)),
        _ => Err(format!(
            "{}: holds neither \"active\" nor \"idle\"",
            path.display()
        )),
    }
}

/// Keeps the override (None: removes it), written to a temporary file, synced and renamed
/// over the old one, so a crash leaves the old or the new setting, never half of one.
pub fn write_override(data_dir: &Path, signal: Option<OwnerSignal>) -> std::io::Result<()> {
    let path = data_dir.join(OWNER_OVERRIDE_FILE);
    let word = match signal {
        None => {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => sync_dir(data_dir),
            }
        }
        Some(OwnerSignal::Active) => "active",
        Some(OwnerSignal::Idle) => "idle",
    };
    let tmp = data_dir.join(format!("{OWNER_OVERRIDE_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{word}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub fn owner_signal_file(data_dir: &Path) -> Option<OwnerSignal> {
    let present = |name: &str| std::fs::symlink_metadata(data_dir.join(name)).is_ok();
    if present(OWNER_ACTIVE_FILE) {
        Some(OwnerSignal::Active)
    } else if present(OWNER_IDLE_FILE) {
        Some(OwnerSignal::Idle)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_the_signal_and_active_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(owner_signal_file(dir.path()), None);
        std::fs::write(dir.path().join(OWNER_IDLE_FILE), "").unwrap();
        assert_eq!(owner_signal_file(dir.path()), Some(OwnerSignal::Idle));
        std::fs::create_dir(dir.path().join(OWNER_ACTIVE_FILE)).unwrap();
        assert_eq!(owner_signal_file(dir.path()), Some(OwnerSignal::Active));
        assert_eq!(owner_signal_file(Path::new("/nonexistent")), None);
    }

    #[test]
    fn the_override_is_kept_across_reads_and_removed_by_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_override(dir.path()), Ok(None));
        write_override(dir.path(), Some(OwnerSignal::Active)).unwrap();
        assert_eq!(read_override(dir.path()), Ok(Some(OwnerSignal::Active)));
        write_override(dir.path(), Some(OwnerSignal::Idle)).unwrap();
        assert_eq!(read_override(dir.path()), Ok(Some(OwnerSignal::Idle)));
        write_override(dir.path(), None).unwrap();
        write_override(dir.path(), None).unwrap();
        assert_eq!(read_override(dir.path()), Ok(None));
        assert!(!dir.path().join("owner-override.tmp").exists());
        // It is not one of the hook files.
        write_override(dir.path(), Some(OwnerSignal::Active)).unwrap();
        assert_eq!(owner_signal_file(dir.path()), None);
        std::fs::write(dir.path().join(OWNER_OVERRIDE_FILE), "busy\n").unwrap();
        let err = read_override(dir.path()).unwrap_err();
        assert!(err.contains(OWNER_OVERRIDE_FILE), "{err}");
    }
}
