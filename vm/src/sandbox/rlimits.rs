//! Resource limits of the `novacron vmm` process.
//!
//! Soft and hard limits are both set to the value, so the VMM cannot raise them again
//! (lowering a hard limit is irreversible without `CAP_SYS_RESOURCE`).
//!
//! `RLIMIT_FSIZE`: exceeding it normally kills the process with `SIGXFSZ`. [`apply`] sets
//! `SIGXFSZ` to ignored so the write fails with `EFBIG` instead, which the snapshot writer
//! reports as a clear error.
//!
//! `RLIMIT_NPROC` counts every process and thread of the real uid, machine-wide, and root
//! ignores it; it is skipped as root and must leave room for the vCPU threads otherwise.
//!
//! Raw `setrlimit`/`getrlimit` only (no allocation): safe in a forked child.

use std::fmt;

/// A limited resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Open file descriptors.
    NoFile,
    /// Core dump size (always 0: guest memory must not land in a core file).
    Core,
    /// Processes/threads of the real uid.
    NProc,
    /// Largest file the process may write.
    FSize,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::NoFile => libc::RLIMIT_NOFILE,
            Resource::Core => libc::RLIMIT_CORE,
            Resource::NProc => libc::RLIMIT_NPROC,
            Resource::FSize => libc::RLIMIT_FSIZE,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::NoFile => "RLIMIT_NOFILE",
            Resource::Core => "RLIMIT_CORE",
            Resource::NProc => "RLIMIT_NPROC",
            Resource::FSize => "RLIMIT_FSIZE",
        })
    }
}

/// The limits to set. `None` leaves a resource as inherited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RlimitPolicy {
    /// Maximum open fds.
    pub nofile: Option<u64>,
    /// Maximum processes+threads of the uid (skipped as root).
    pub nproc: Option<u64>,
    /// Maximum size in bytes of any file the VMM writes (snapshots included).
    pub fsize: Option<u64>,
}

impl Default for RlimitPolicy {
    /// 1024 fds, no NPROC limit, files up to 64 GiB. Core dumps are always disabled.
    fn default() -> Self {
        Self {
            nofile: Some(1024),
            nproc: None,
            fsize: Some(64 << 30),
        }
    }
}

/// What happened to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RlimitOutcome {
    NotRequested,
    Set(u64),
    /// `RLIMIT_NPROC` as root: the kernel would ignore it.
    SkippedAsRoot,
}

/// The outcome per resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RlimitReport {
    pub nofile: RlimitOutcome,
    pub core: RlimitOutcome,
    pub nproc: RlimitOutcome,
    pub fsize: RlimitOutcome,
}

impl fmt::Display for RlimitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rlimits:")?;
        for (r, o) in [
            (Resource::NoFile, self.nofile),
            (Resource::Core, self.core),
            (Resource::NProc, self.nproc),
            (Resource::FSize, self.fsize),
        ] {
            match o {
                RlimitOutcome::NotRequested => write!(f, " {r}=inherited")?,
                RlimitOutcome::Set(v) => write!(f, " {r}={v}")?,
                RlimitOutcome::SkippedAsRoot => write!(f, " {r}=skipped(root ignores it)")?,
            }
        }
        Ok(())
    }
}

/// Errors setting a limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RlimitError {
    #[error(
        "rlimits: setting {resource} to {value} failed: {}{}",
        std::io::Error::from_raw_os_error(*errno),
        hard_hint(*current_hard, *value)
    )]
    Set {
        resource: Resource,
        value: u64,
        current_hard: u64,
        errno: i32,
    },
    #[error("rlimits: ignoring SIGXFSZ failed (errno {errno})")]
    IgnoreSigxfsz { errno: i32 },
}

fn hard_hint(current_hard: u64, value: u64) -> String {
    if value > current_hard {
        format!(" (current hard limit is {current_hard}; raising it needs CAP_SYS_RESOURCE)")
    } else {
        String::new()
    }
}

/// Read `(soft, hard)` of `resource`.
pub fn get(resource: Resource) -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(resource.raw(), &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Set soft = hard = `value` for `resource`.
pub fn set(resource: Resource, value: u64) -> Result<(), RlimitError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: lim is a valid in-pointer.
    if unsafe { libc::setrlimit(resource.raw(), &lim) } == 0 {
        return Ok(());
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Err(RlimitError::Set {
        resource,
        value,
        current_hard: get(resource).map_or(u64::MAX, |(_, hard)| hard),
        errno,
    })
}

fn set_optional(resource: Resource, value: Option<u64>) -> Result<RlimitOutcome, RlimitError> {
    match value {
        None => Ok(RlimitOutcome::NotRequested),
        Some(v) => set(resource, v).map(|()| RlimitOutcome::Set(v)),
    }
}

fn ignore_sigxfsz() -> Result<(), RlimitError> {
    // SAFETY: setting a standard disposition for a signal number.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(RlimitError::IgnoreSigxfsz { errno });
    }
    Ok(())
}

/// Apply `policy` to the calling process (rlimits are process-wide).
pub fn apply(policy: &RlimitPolicy) -> Result<RlimitReport, RlimitError> {
    let nofile = set_optional(Resource::NoFile, policy.nofile)?;
    set(Resource::Core, 0)?;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let nproc = match policy.nproc {
        Some(_) if root => RlimitOutcome::SkippedAsRoot,
        other => set_optional(Resource::NProc, other)?,
    };
    let fsize = set_optional(Resource::FSize, policy.fsize)?;
    if policy.fsize.is_some() {
        ignore_sigxfsz()?;
    }
    Ok(RlimitReport {
        nofile,
        core: RlimitOutcome::Set(0),
        nproc,
        fsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_exit_code(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn forked_child_sets_and_reads_back_limits() {
        let policy = RlimitPolicy {
            nofile: Some(77),
            nproc: Some(4096),
            fsize: Some(4096),
        };
        // SAFETY: fork; the child only makes raw syscalls (apply on success does not
        // allocate) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls only, then _exit.
            unsafe {
                let report = match apply(&policy) {
                    Ok(r) => r,
                    Err(_) => libc::_exit(20),
                };
                let code = match (
                    get(Resource::NoFile),
                    get(Resource::Core),
                    get(Resource::FSize),
                ) {
                    (Ok((77, 77)), Ok((0, 0)), Ok((4096, 4096))) => 0,
                    _ => 21,
                };
                let nproc_ok = if libc::geteuid() == 0 {
                    report.nproc == RlimitOutcome::SkippedAsRoot
                } else {
                    matches!(get(Resource::NProc), Ok((4096, 4096)))
                };
                if code != 0 || !nproc_ok {
                    libc::_exit(22);
                }
                // fd 77 is over the limit now: dup2 to it must fail with EBADF.
                if libc::dup2(0, 80) != -1 {
                    libc::_exit(23);
                }
                // Writing past RLIMIT_FSIZE fails with EFBIG instead of killing us.
                let fd = libc::memfd_create(c"fsize".as_ptr(), 0);
                let big = [0u8; 8192];
                if fd < 0 || libc::write(fd, big.as_ptr().cast(), big.len()) != 4096 {
                    libc::_exit(24);
                }
                if libc::write(fd, big.as_ptr().cast(), 1) != -1
                    || *libc::__errno_location() != libc::EFBIG
                {
                    libc::_exit(25);
                }
                libc::_exit(0);
            }
        }
        assert_eq!(wait_exit_code(pid), 0);
    }

    #[test]
    fn raising_the_hard_limit_unprivileged_is_a_clear_error() {
        // SAFETY: fork; the child makes raw syscalls and formats nothing.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls only, then _exit.
            unsafe {
                // Lower, then try to raise again without CAP_SYS_RESOURCE.
                if set(Resource::NoFile, 64).is_err() {
                    libc::_exit(30);
                }
                // Leaving uid 0 clears the effective capabilities.
                if libc::geteuid() == 0 && libc::setresuid(65534, 65534, 65534) != 0 {
                    libc::_exit(31);
                }
                match set(Resource::NoFile, 128) {
                    Err(RlimitError::Set {
                        current_hard: 64,
                        errno: libc::EPERM,
                        ..
                    }) => libc::_exit(0),
                    _ => libc::_exit(32),
                }
            }
        }
        assert_eq!(wait_exit_code(pid), 0);
        let err = RlimitError::Set {
            resource: Resource::NoFile,
            value: 128,
            current_hard: 64,
            errno: libc::EPERM,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("RLIMIT_NOFILE") && msg.contains("128"),
            "{msg}"
        );
        assert!(msg.contains("hard limit is 64"), "{msg}");
    }
}
