//! Where a VM's files live: `<dataDir>/vms/<id>/`.

use std::path::{Path, PathBuf};

/// The VMs' directory inside the data directory.
pub const VMS_DIR: &str = "vms";
/// The result blob's name in a VM's directory ([`VmPaths::result_blob`]).
pub const RESULT_BLOB: &str = "result.blob";

#[derive(Clone, Debug)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(data_dir: &Path, id: &str) -> VmPaths {
        VmPaths {
            dir: data_dir.join(VMS_DIR).join(id),
        }
    }

    /// The socket a restarted daemon re-adopts the VMM through.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The guest's serial console (appended across restores and adoptions).
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Where the VMM writes the result blob its guest hands over (`result_port`).
    pub fn result_blob(&self) -> PathBuf {
        self.dir.join(RESULT_BLOB)
    }

    /// The VM's checkpoints (a snapshot directory: full, then incremental layers).
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// Whether a committed snapshot is there.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot().join("MANIFEST").is_file()
    }
}
