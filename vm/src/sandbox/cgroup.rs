//! A per-VM cgroup with a memory and CPU limit, on cgroup v2 or v1 (detected at run time).
//!
//! Layout: `<hierarchy>/novacron/<vm name>`. On v2 the hierarchy is the cgroup2 mount (whose
//! `cgroup.controllers` must list `memory` and `cpu`); `+memory +cpu` are enabled in the
//! `subtree_control` of the root and of `novacron/`. On v1 a directory is made in the
//! `memory` and in the `cpu` hierarchies. A hybrid host whose cgroup2 mount has no controllers
//! uses v1.
//!
//! What this cannot do: it does not delegate (chown) the cgroup to an unprivileged user, and
//! it needs write access to the hierarchy (root, or a delegated subtree mounted as the
//! hierarchy root). The limits are the kernel's: exceeding `memory` triggers the OOM killer
//! inside the cgroup, which kills the VMM alone.
//!
//! The directory is removed on [`VmCgroup::remove`] or on drop (errors then only logged).
//! Remaining processes are killed first only if asked ([`VmCgroup::kill_on_cleanup`]).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the parent cgroup of every VM cgroup.
pub const PARENT: &str = "novacron";
/// CFS period used for the CPU limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Largest CPU count accepted for a limit.
const MAX_CPUS: f64 = 4096.0;
/// How long removal waits for killed processes to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cgroup controllers are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy mounted at `root`.
    V2 { root: PathBuf },
    /// Legacy hierarchies of the memory and cpu controllers (may be the same mount).
    V1 { memory: PathBuf, cpu: PathBuf },
}

/// Limits of one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory limit in bytes (guest RAM plus VMM overhead).
    pub memory_bytes: Option<u64>,
    /// CPU limit as a number of CPUs (0.5 = half a CPU, 2.0 = two CPUs).
    pub cpus: Option<f64>,
}

/// Errors detecting, creating, joining or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: writing {value:?} to {path} failed")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: cannot create directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: cannot remove directory {path}")]
    Rmdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cgroup: no usable hierarchy in /proc/self/mountinfo (need cgroup2 with memory and cpu \
         controllers, or cgroup v1 memory and cpu mounts)"
    )]
    NoHierarchy,
    #[error("cgroup: invalid VM cgroup name {name:?} (1-64 chars of [A-Za-z0-9_.-], not . or ..)")]
    InvalidName { name: String },
    #[error("cgroup: CPU limit {cpus} is out of range (must be finite, > 0 and <= {MAX_CPUS})")]
    InvalidCpus { cpus: f64 },
    #[error("cgroup: memory limit {bytes} bytes is too small (minimum 1 MiB)")]
    InvalidMemory { bytes: u64 },
    #[error("cgroup: {path} still holds {count} process(es) (first pid {first})")]
    Busy {
        path: PathBuf,
        count: usize,
        first: i32,
    },
    #[error("cgroup: malformed pid {line:?} in {path}")]
    BadPid { path: PathBuf, line: String },
}

/// A cgroup mount found in mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgroupMount {
    mount_point: PathBuf,
    /// `None` for cgroup2, else the v1 controllers of the mount.
    v1_controllers: Option<Vec<String>>,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// The cgroup mounts of a `/proc/self/mountinfo` text.
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_opts = right.next().unwrap_or("");
            let v1_controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(
                    super_opts
                        .split(',')
                        .filter(|o| !o.starts_with("name=") && *o != "rw" && *o != "ro")
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => return None,
            };
            Some(CgroupMount {
                mount_point: unescape_mount_path(mount_point),
                v1_controllers,
            })
        })
        .collect()
}

/// Choose the layout from the mounts; `v2_usable` says whether a cgroup2 mount offers
/// `memory` and `cpu`.
fn choose_layout(
    mounts: &[CgroupMount],
    v2_usable: impl Fn(&Path) -> bool,
) -> Option<CgroupLayout> {
    let v2 = mounts
        .iter()
        .filter(|m| m.v1_controllers.is_none())
        .find(|m| v2_usable(&m.mount_point));
    if let Some(m) = v2 {
        return Some(CgroupLayout::V2 {
            root: m.mount_point.clone(),
        });
    }
    let v1_with = |controller: &str| {
        mounts.iter().find_map(|m| {
            m.v1_controllers
                .as_ref()
                .filter(|c| c.iter().any(|c| c == controller))
                .map(|_| m.mount_point.clone())
        })
    };
    Some(CgroupLayout::V1 {
        memory: v1_with("memory")?,
        cpu: v1_with("cpu")?,
    })
}

/// Whether the cgroup2 hierarchy at `root` has the memory and cpu controllers.
fn v2_has_controllers(root: &Path) -> bool {
    fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| {
        let listed: Vec<&str> = c.split_whitespace().collect();
        listed.contains(&"memory") && listed.contains(&"cpu")
    })
}

/// Detect the layout of this host from `/proc/self/mountinfo`.
pub fn detect() -> Result<CgroupLayout, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    choose_layout(&parse_mountinfo(&text), v2_has_controllers).ok_or(CgroupError::NoHierarchy)
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if name.is_empty() || name.len() > 64 || !ok_chars || name == "." || name == ".." {
        return Err(CgroupError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The CFS quota in microseconds for `cpus` CPUs.
fn cpu_quota_us(cpus: f64) -> Result<u64, CgroupError> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > MAX_CPUS {
        return Err(CgroupError::InvalidCpus { cpus });
    }
    // In range by the check above: at most 4096 * 100_000.
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    Ok(quota.max(MIN_CPU_QUOTA_US))
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir_if_missing(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Mkdir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The pids listed in `dir/cgroup.procs`.
fn read_procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    read_file(&path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::BadPid {
                path: path.clone(),
                line: l.to_owned(),
            })
        })
        .collect()
}

/// Enable `+memory +cpu` for the children of `dir` unless already enabled.
fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current = read_file(&path)?;
    let enabled: Vec<&str> = current.split_whitespace().collect();
    if enabled.contains(&"memory") && enabled.contains(&"cpu") {
        return Ok(());
    }
    write_file(&path, "+memory +cpu")
}

/// One VM's cgroup (one directory on v2, two on v1).
#[derive(Debug)]
pub struct VmCgroup {
    layout: CgroupLayout,
    /// v2: `[dir]`; v1: `[memory dir, cpu dir]` (one if both share a mount).
    dirs: Vec<PathBuf>,
    kill_on_cleanup: bool,
    removed: bool,
}

impl VmCgroup {
    /// Create (or reuse an empty leftover) `novacron/<name>` with `limits`.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, CgroupError> {
        validate_name(name)?;
        let quota = limits.cpus.map(cpu_quota_us).transpose()?;
        if let Some(bytes) = limits.memory_bytes.filter(|b| *b < (1 << 20)) {
            return Err(CgroupError::InvalidMemory { bytes });
        }
        let dirs = Self::dirs_for(layout, name);
        let cgroup = Self {
            layout: layout.clone(),
            dirs,
            kill_on_cleanup: false,
            removed: false,
        };
        // From here on, a failure drops `cgroup`, which removes what was created.
        cgroup.make_dirs()?;
        cgroup.ensure_empty()?;
        cgroup.write_limits(limits.memory_bytes, quota)?;
        tracing::info!(dirs = ?cgroup.dirs, ?limits, "created VM cgroup");
        Ok(cgroup)
    }

    fn make_dirs(&self) -> Result<(), CgroupError> {
        if let CgroupLayout::V2 { root } = &self.layout {
            enable_v2_controllers(root)?;
            mkdir_if_missing(&root.join(PARENT))?;
            enable_v2_controllers(&root.join(PARENT))?;
        }
        for dir in &self.dirs {
            if let Some(parent) = dir.parent() {
                mkdir_if_missing(parent)?;
            }
            mkdir_if_missing(dir)?;
        }
        Ok(())
    }

    fn ensure_empty(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let procs = read_procs(dir)?;
            if let Some(&first) = procs.first() {
                return Err(CgroupError::Busy {
                    path: dir.clone(),
                    count: procs.len(),
                    first,
                });
            }
        }
        Ok(())
    }

    fn write_limits(&self, memory: Option<u64>, quota_us: Option<u64>) -> Result<(), CgroupError> {
        match &self.layout {
            CgroupLayout::V2 { .. } => {
                let dir = &self.dirs[0];
                if let Some(bytes) = memory {
                    write_file(&dir.join("memory.max"), &bytes.to_string())?;
                }
                if let Some(q) = quota_us {
                    write_file(&dir.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
                }
            }
            CgroupLayout::V1 { .. } => {
                let memory_dir = &self.dirs[0];
                let cpu_dir = self.dirs.last().unwrap_or(memory_dir);
                if let Some(bytes) = memory {
                    write_file(
                        &memory_dir.join("memory.limit_in_bytes"),
                        &bytes.to_string(),
                    )?;
                }
                if let Some(q) = quota_us {
                    write_file(
                        &cpu_dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                    )?;
                    write_file(&cpu_dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Re-attach to an existing `novacron/<name>` (e.g. in the daemon, to remove the cgroup
    /// of a `novacron vmm` process that has exited). Fails if a directory is missing.
    pub fn open(layout: &CgroupLayout, name: &str) -> Result<Self, CgroupError> {
        validate_name(name)?;
        let dirs = Self::dirs_for(layout, name);
        for dir in &dirs {
            if !dir.is_dir() {
                return Err(CgroupError::Read {
                    path: dir.clone(),
                    source: std::io::Error::from(ErrorKind::NotFound),
                });
            }
        }
        Ok(Self {
            layout: layout.clone(),
            dirs,
            kill_on_cleanup: false,
            removed: false,
        })
    }

    fn dirs_for(layout: &CgroupLayout, name: &str) -> Vec<PathBuf> {
        match layout {
            CgroupLayout::V2 { root } => vec![root.join(PARENT).join(name)],
            CgroupLayout::V1 { memory, cpu } => {
                let mut dirs = vec![memory.join(PARENT).join(name)];
                if cpu != memory {
                    dirs.push(cpu.join(PARENT).join(name));
                }
                dirs
            }
        }
    }

    /// Stop owning the directory: it is not removed on drop. For the process that joined
    /// its own cgroup (it cannot remove a cgroup it is in); whoever spawned it removes it.
    pub fn keep(mut self) {
        self.removed = true;
    }

    /// The cgroup directories (v2: one; v1: memory then cpu).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The detected layout this cgroup lives in.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Kill remaining processes when removing (default: no; removal then fails if busy).
    pub fn kill_on_cleanup(&mut self, kill: bool) {
        self.kill_on_cleanup = kill;
    }

    /// Move process `pid` (all its threads) into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for dir in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// The pids in the cgroup (of the first directory).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(&self.dirs[0])
    }

    /// SIGKILL everything in the cgroup and wait until it is empty.
    fn kill_all(&self) -> Result<(), CgroupError> {
        let dir = &self.dirs[0];
        let kill_file = dir.join("cgroup.kill");
        let use_kill_file = matches!(self.layout, CgroupLayout::V2 { .. }) && kill_file.exists();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let procs = read_procs(dir)?;
            let Some(&first) = procs.first() else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(CgroupError::Busy {
                    path: dir.clone(),
                    count: procs.len(),
                    first,
                });
            }
            if use_kill_file {
                write_file(&kill_file, "1")?;
            } else {
                for pid in procs {
                    // SAFETY: kill takes plain integers; a pid that already exited is ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// rmdir, retrying while the kernel still counts exiting tasks (`EBUSY`).
    fn rmdir(dir: &Path) -> Result<(), CgroupError> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(CgroupError::Rmdir {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    fn cleanup(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        if self.kill_on_cleanup {
            self.kill_all()?;
        }
        for dir in &self.dirs {
            if dir.exists() {
                if let Some(&first) = read_procs(dir)?.first() {
                    return Err(CgroupError::Busy {
                        path: dir.clone(),
                        count: read_procs(dir)?.len(),
                        first,
                    });
                }
            }
            Self::rmdir(dir)?;
        }
        self.removed = true;
        Ok(())
    }

    /// Remove the cgroup (killing what remains if [`kill_on_cleanup`](Self::kill_on_cleanup)).
    /// The `novacron/` parent is left in place for other VMs.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.cleanup()
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::warn!(error = %e, dirs = ?self.dirs, "leaving VM cgroup behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_ONLY: &str = "\
22 1 0:21 / / rw - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    const V1_COMOUNTED: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/my\\040memory rw shared:13 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_host_without_v2_controllers_uses_v1() {
        let layout = choose_layout(&parse_mountinfo(HYBRID), |_| false).unwrap();
        assert_eq!(
            layout,
            CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
            }
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let layout = choose_layout(&parse_mountinfo(V2_ONLY), |_| true).unwrap();
        assert_eq!(
            layout,
            CgroupLayout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(choose_layout(&parse_mountinfo(V2_ONLY), |_| false), None);
    }

    #[test]
    fn v1_comounted_cpu_and_escaped_paths() {
        let layout = choose_layout(&parse_mountinfo(V1_COMOUNTED), |_| false).unwrap();
        assert_eq!(
            layout,
            CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/my memory".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
            }
        );
    }

    #[test]
    fn validates_names_and_limits() {
        for bad in ["", ".", "..", "a/b", "x y", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("vm-1_a.b").unwrap();
        assert_eq!(cpu_quota_us(0.5).unwrap(), 50_000);
        assert_eq!(cpu_quota_us(2.0).unwrap(), 200_000);
        assert_eq!(cpu_quota_us(0.001).unwrap(), MIN_CPU_QUOTA_US);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 5000.0] {
            assert!(cpu_quota_us(bad).is_err(), "{bad}");
        }
    }

    fn usable_layout() -> Option<CgroupLayout> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating cgroups needs root");
            return None;
        }
        match detect() {
            Ok(layout) => Some(layout),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    fn unique_name(tag: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("test-{tag}-{}-{nanos}", std::process::id())
    }

    /// Fork a child that blocks in pause() until killed.
    fn spawn_sleeper() -> libc::pid_t {
        // SAFETY: the child only calls pause/_exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) raw syscalls only.
            unsafe {
                loop {
                    libc::pause();
                }
            }
        }
        pid
    }

    fn reap(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn create_limit_join_and_remove() {
        let Some(layout) = usable_layout() else {
            return;
        };
        let name = unique_name("limits");
        let limits = CgroupLimits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
        };
        let cgroup = VmCgroup::create(&layout, &name, &limits).unwrap();
        let dirs = cgroup.dirs().to_vec();
        match &layout {
            CgroupLayout::V2 { .. } => {
                let d = &dirs[0];
                assert_eq!(read_file(&d.join("memory.max")).unwrap().trim(), "67108864");
                assert_eq!(
                    read_file(&d.join("cpu.max")).unwrap().trim(),
                    "50000 100000"
                );
            }
            CgroupLayout::V1 { .. } => {
                let mem = &dirs[0];
                let cpu = dirs.last().unwrap();
                let limit = read_file(&mem.join("memory.limit_in_bytes")).unwrap();
                assert_eq!(limit.trim(), "67108864");
                let quota = read_file(&cpu.join("cpu.cfs_quota_us")).unwrap();
                assert_eq!(quota.trim(), "50000");
                let period = read_file(&cpu.join("cpu.cfs_period_us")).unwrap();
                assert_eq!(period.trim(), "100000");
            }
        }

        let child = spawn_sleeper();
        let joined = cgroup.add_pid(child as u32);
        let membership = fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap_or_default();
        // SAFETY: killing our own child.
        unsafe { libc::kill(child, libc::SIGKILL) };
        reap(child);
        joined.unwrap();
        let suffix = format!("/{PARENT}/{name}");
        let lines_in: Vec<&str> = membership
            .lines()
            .filter(|l| l.ends_with(&suffix))
            .collect();
        let expected = match layout {
            CgroupLayout::V2 { .. } => 1,
            CgroupLayout::V1 { .. } => dirs.len(),
        };
        assert_eq!(lines_in.len(), expected, "{membership}");

        cgroup.remove().unwrap();
        for d in &dirs {
            assert!(!d.exists(), "{} still exists", d.display());
        }
    }

    #[test]
    fn remove_refuses_busy_unless_killing() {
        let Some(layout) = usable_layout() else {
            return;
        };
        let name = unique_name("kill");
        let mut cgroup = VmCgroup::create(&layout, &name, &CgroupLimits::default()).unwrap();
        let child = spawn_sleeper();
        if let Err(e) = cgroup.add_pid(child as u32) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
            reap(child);
            panic!("add_pid: {e}");
        }
        assert_eq!(cgroup.procs().unwrap(), vec![child]);
        let busy = cgroup.cleanup();
        assert!(matches!(busy, Err(CgroupError::Busy { .. })), "{busy:?}");

        // Reap in parallel: a killed child stays a zombie until waited for.
        let reaper = std::thread::spawn(move || reap(child));
        cgroup.kill_on_cleanup(true);
        let dirs = cgroup.dirs().to_vec();
        cgroup.remove().unwrap();
        let status = reaper.join().unwrap();
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        for d in &dirs {
            assert!(!d.exists(), "{} still exists", d.display());
        }
    }
}
