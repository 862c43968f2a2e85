//! Removing an ended VM: its record goes, its files are moved out of the way at once and
//! deleted afterwards (or at the next start, after a crash).

use std::path::PathBuf;

use crate::api::service::{ServiceError, ServiceResult};
use crate::api::types::now_ms;

use super::manager::{lock, VmManager};
use super::paths;

/// Files of removed VMs are moved to `<dataDir>/vms/<this><id>-<ms>` first (at once, under
/// the name no VM can have), then deleted; a start deletes any a crash left.
const REMOVED_PREFIX: &str = ".removed-";

impl VmManager {
    /// Removes the record of a VM that ended (exited, failed, moved away), and moves its
    /// files out of the way; returns where they went, for [`dispose`](Self::dispose). Only
    /// once its supervisor has reaped its VMM (else 409: try again).
    pub fn remove_ended(&self, id: &str) -> ServiceResult<Option<PathBuf>> {
        if lock(&self.supervisors).contains_key(id) {
            return Err(ServiceError::Conflict(format!(
                "VM {id} has ended but its VMM is still being reaped: try again in a moment"
            )));
        }
        let dir = self.paths(id).dir;
        let trash = dir.with_file_name(format!("{REMOVED_PREFIX}{id}-{}", now_ms()));
        let moved = match std::fs::rename(&dir, &trash) {
            Ok(()) => Some(trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ServiceError::Internal(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                )))
            }
        };
        if let Err(e) = self.registry.remove_ended(id) {
            // Not removable after all: its files go back.
            if let Some(t) = &moved {
                if let Err(back) = std::fs::rename(t, &dir) {
                    tracing::error!(vm = id, error = %back, "cannot put the VM's files back");
                }
            }
            return Err(e);
        }
        lock(&self.handles).remove(id);
        Ok(moved)
    }

    /// Deletes the files [`remove_ended`](Self::remove_ended) moved away (logged if it
    /// cannot; the next start tries again).
    pub async fn dispose(&self, moved: Option<PathBuf>) {
        let Some(dir) = moved else { return };
        let deleted = tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("removal task: {e}")));
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "cannot delete a removed VM's files");
        }
    }

    /// Deletes the files of VMs removed before a crash (blocking, at start).
    pub(super) fn sweep_removed(&self) {
        let vms = self.opts.data_dir.join(paths::VMS_DIR);
        let Ok(entries) = std::fs::read_dir(&vms) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(REMOVED_PREFIX))
            {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot delete a removed VM's files");
                }
            }
        }
    }
}
