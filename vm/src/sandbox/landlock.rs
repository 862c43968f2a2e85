//! Filesystem (and optionally TCP) confinement with Landlock.
//!
//! Two steps, so the part that opens paths and allocates runs early and the part that
//! restricts is a few syscalls:
//! 1. [`prepare`] opens every rule's path (`O_PATH`) and builds the ruleset.
//! 2. [`PreparedLandlock::restrict_current_thread`] enforces it.
//!
//! Landlock restricts the CALLING THREAD and the threads and processes it creates afterwards;
//! threads that already exist stay unrestricted. Enforce it before spawning vCPU (or any
//! other) threads. It cannot be undone, and it sets `PR_SET_NO_NEW_PRIVS`.
//!
//! Best effort: the ruleset asks for every access right this crate version knows (up to its
//! newest ABI); a kernel with an older ABI enforces the subset it knows, and the report says
//! the enforcement was partial (or absent when the kernel has no Landlock).
//!
//! What it cannot do: files already open when the ruleset is enforced (e.g. `/dev/kvm`, disk
//! images opened earlier) keep working whatever the rules say. A device opened AFTER it
//! needs a `ReadWrite` rule, which includes the device-ioctl right (ABI 5+), or its ioctls
//! fail with `EACCES`.

use std::fmt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, ABI,
};

/// The newest Landlock ABI this version of the `landlock` crate knows.
const NEWEST_KNOWN_ABI: ABI = ABI::V10;

/// What a rule grants beneath its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsAccess {
    /// Read files, list directories, execute.
    ReadOnly,
    /// Everything: also write, create, remove, rename, truncate, device ioctls.
    ReadWrite,
}

/// Allow `access` to `path` and everything beneath it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsRule {
    pub path: PathBuf,
    pub access: FsAccess,
}

impl FsRule {
    /// A read-only rule.
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            access: FsAccess::ReadOnly,
        }
    }

    /// A read-write rule.
    pub fn read_write(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            access: FsAccess::ReadWrite,
        }
    }
}

/// Errors building or enforcing the ruleset.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock: cannot open rule path {path} ({access:?})")]
    OpenPath {
        path: PathBuf,
        access: FsAccess,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("landlock: cannot stat rule path {path}")]
    StatPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("landlock: building the ruleset failed")]
    Build {
        #[source]
        source: RulesetError,
    },
    #[error("landlock: adding the {access:?} rule for {path} failed")]
    AddRule {
        path: PathBuf,
        access: FsAccess,
        #[source]
        source: RulesetError,
    },
    #[error("landlock: enforcing the ruleset on the calling thread failed")]
    Restrict {
        #[source]
        source: RulesetError,
    },
}

/// How much of the requested confinement the kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Every requested right is enforced.
    Full,
    /// The kernel's Landlock ABI is older than this crate's: the rights it knows are enforced.
    Partial,
    /// Nothing is enforced (no Landlock in the kernel, or disabled at boot).
    NotEnforced,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Enforcement::Full => "fully enforced",
            Enforcement::Partial => "partially enforced",
            Enforcement::NotEnforced => "NOT enforced",
        })
    }
}

/// Landlock support of the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLandlock {
    /// Available; `abi` is the ABI used (the lower of the kernel's and this crate's).
    Available { abi: i32 },
    /// Built in but disabled at boot.
    NotEnabled,
    /// Not built into the kernel.
    NotImplemented,
}

/// What [`PreparedLandlock::restrict_current_thread`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandlockReport {
    pub enforcement: Enforcement,
    pub kernel: KernelLandlock,
    /// Number of path rules in the ruleset.
    pub rules: usize,
    /// Whether TCP bind/connect were requested to be denied.
    pub tcp_denied: bool,
    /// Whether `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
}

impl fmt::Display for LandlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "landlock {} ({} path rules",
            self.enforcement, self.rules
        )?;
        if self.tcp_denied {
            f.write_str(", tcp bind/connect denied")?;
        }
        match self.kernel {
            KernelLandlock::Available { abi } => write!(f, ", abi {abi})"),
            KernelLandlock::NotEnabled => f.write_str(", disabled at boot)"),
            KernelLandlock::NotImplemented => f.write_str(", not in kernel)"),
        }
    }
}

/// A ruleset with every path opened, ready to enforce.
#[derive(Debug)]
pub struct PreparedLandlock {
    ruleset: RulesetCreated,
    rules: usize,
    tcp_denied: bool,
}

/// The rights of `access` valid on `path` (files cannot carry directory rights).
fn rights_for(path: &Path, access: FsAccess) -> Result<BitFlags<AccessFs>, LandlockError> {
    let wanted = match access {
        FsAccess::ReadOnly => AccessFs::from_read(NEWEST_KNOWN_ABI),
        FsAccess::ReadWrite => AccessFs::from_all(NEWEST_KNOWN_ABI),
    };
    let meta = std::fs::metadata(path).map_err(|source| LandlockError::StatPath {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        Ok(wanted)
    } else {
        Ok(wanted & AccessFs::from_file(NEWEST_KNOWN_ABI))
    }
}

/// The empty ruleset: handles every filesystem right (and TCP if `deny_tcp`).
fn empty_ruleset(deny_tcp: bool) -> Result<RulesetCreated, LandlockError> {
    let build = |source| LandlockError::Build { source };
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(NEWEST_KNOWN_ABI))
        .map_err(build)?;
    if deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(NEWEST_KNOWN_ABI))
            .map_err(build)?;
    }
    ruleset.create().map_err(build)
}

/// Open every rule's path and build the ruleset. A missing path is an error (a rule that
/// silently vanished would leave the VMM unable to write where it must).
///
/// With `deny_tcp`, TCP (and, on newer kernels, UDP) bind/connect are denied too; sockets
/// already connected keep working.
pub fn prepare(rules: &[FsRule], deny_tcp: bool) -> Result<PreparedLandlock, LandlockError> {
    let mut ruleset = empty_ruleset(deny_tcp)?;
    for rule in rules {
        let rights = rights_for(&rule.path, rule.access)?;
        let fd = PathFd::new(&rule.path).map_err(|source| LandlockError::OpenPath {
            path: rule.path.clone(),
            access: rule.access,
            source,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(|source| LandlockError::AddRule {
                path: rule.path.clone(),
                access: rule.access,
                source,
            })?;
    }
    Ok(PreparedLandlock {
        ruleset,
        rules: rules.len(),
        tcp_denied: deny_tcp,
    })
}

impl PreparedLandlock {
    /// Enforce the ruleset on the calling thread (and its future children). Irreversible.
    /// Makes only `prctl` and `landlock_restrict_self` syscalls, so it may run in a forked
    /// child.
    pub fn restrict_current_thread(self) -> Result<LandlockReport, LandlockError> {
        let rules = self.rules;
        let tcp_denied = self.tcp_denied;
        let status = self
            .ruleset
            .restrict_self()
            .map_err(|source| LandlockError::Restrict { source })?;
        Ok(LandlockReport {
            enforcement: match status.ruleset {
                RulesetStatus::FullyEnforced => Enforcement::Full,
                RulesetStatus::PartiallyEnforced => Enforcement::Partial,
                RulesetStatus::NotEnforced => Enforcement::NotEnforced,
            },
            kernel: match status.landlock {
                LandlockStatus::Available { effective_abi, .. } => KernelLandlock::Available {
                    abi: effective_abi as i32,
                },
                LandlockStatus::NotEnabled => KernelLandlock::NotEnabled,
                LandlockStatus::NotImplemented => KernelLandlock::NotImplemented,
            },
            rules,
            tcp_denied,
            no_new_privs: status.no_new_privs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn missing_rule_path_is_a_clear_error() {
        let err = prepare(&[FsRule::read_only("/nonexistent/novacron-xyz")], false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/novacron-xyz"), "{msg}");
    }

    #[test]
    fn file_rules_drop_directory_rights() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let on_file = rights_for(&file, FsAccess::ReadWrite).unwrap();
        assert!(!on_file.contains(AccessFs::ReadDir));
        assert!(!on_file.contains(AccessFs::MakeReg));
        assert!(on_file.contains(AccessFs::WriteFile));
        let on_dir = rights_for(dir.path(), FsAccess::ReadOnly).unwrap();
        assert!(on_dir.contains(AccessFs::ReadDir));
        assert!(!on_dir.contains(AccessFs::WriteFile));
    }

    const CHILD_OK: i32 = 0;
    const CHILD_NOT_ENFORCED: i32 = 10;
    const CHILD_RESTRICT_FAILED: i32 = 11;
    const CHILD_INSIDE_READ_FAILED: i32 = 12;
    const CHILD_INSIDE_CREATE_FAILED: i32 = 13;
    const CHILD_OUTSIDE_OPENED: i32 = 14;
    const CHILD_OUTSIDE_WRONG_ERRNO: i32 = 15;
    const CHILD_RO_WRITE_OPENED: i32 = 16;

    fn cpath(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// Open `path` in the child; the errno on failure, 0 on success.
    ///
    /// # Safety
    /// Only raw syscalls; `path` is a valid C string.
    unsafe fn try_open(path: &CString, flags: i32) -> i32 {
        let fd = libc::open(path.as_ptr(), flags, 0o600);
        if fd < 0 {
            *libc::__errno_location()
        } else {
            libc::close(fd);
            0
        }
    }

    #[test]
    fn child_confined_to_temp_dir() {
        let rw = tempfile::tempdir().unwrap();
        let ro = tempfile::tempdir().unwrap();
        let inside = rw.path().join("inside");
        std::fs::write(&inside, b"hello").unwrap();
        let ro_file = ro.path().join("ro");
        std::fs::write(&ro_file, b"ro").unwrap();
        let inside_c = cpath(&inside);
        let created_c = cpath(&rw.path().join("created"));
        let ro_c = cpath(&ro_file);
        let outside_c = cpath(Path::new("/etc/passwd"));
        let prepared = prepare(
            &[FsRule::read_write(rw.path()), FsRule::read_only(ro.path())],
            false,
        )
        .unwrap();

        // SAFETY: the child only makes raw syscalls (the ruleset was built before fork).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls on C strings built before fork, then _exit.
            unsafe {
                let code = match prepared.restrict_current_thread() {
                    Err(_) => CHILD_RESTRICT_FAILED,
                    Ok(r) if r.enforcement == Enforcement::NotEnforced => CHILD_NOT_ENFORCED,
                    Ok(_) if try_open(&inside_c, libc::O_RDONLY) != 0 => CHILD_INSIDE_READ_FAILED,
                    Ok(_) if try_open(&created_c, libc::O_CREAT | libc::O_WRONLY) != 0 => {
                        CHILD_INSIDE_CREATE_FAILED
                    }
                    Ok(_) if try_open(&ro_c, libc::O_WRONLY) == 0 => CHILD_RO_WRITE_OPENED,
                    Ok(_) => match try_open(&outside_c, libc::O_RDONLY) {
                        0 => CHILD_OUTSIDE_OPENED,
                        libc::EACCES => CHILD_OK,
                        _ => CHILD_OUTSIDE_WRONG_ERRNO,
                    },
                };
                libc::_exit(code);
            }
        }
        drop(prepared);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        match libc::WEXITSTATUS(status) {
            CHILD_OK => {}
            CHILD_NOT_ENFORCED => {
                eprintln!("skipped: landlock is not supported by this kernel");
            }
            code => panic!("landlock child failed with code {code}"),
        }
        assert!(rw.path().join("created").exists());
    }
}
