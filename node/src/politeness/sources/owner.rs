//! The owner-activity hook: files in the data directory whose presence says what the owner
//! is doing, for tests and for desktops whose input the devices do not show.
//!
//! `<dataDir>/owner-active`: the owner is using the machine now. `<dataDir>/owner-idle`: the
//! owner has been away for a long time. Both present: active (the owner's side wins). The
//! check is two `lstat` calls; the content of the files is not read.

use std::path::Path;

use super::super::observation::OwnerSignal;

pub const OWNER_ACTIVE_FILE: &str = "owner-active";
pub const OWNER_IDLE_FILE: &str = "owner-idle";

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
}
