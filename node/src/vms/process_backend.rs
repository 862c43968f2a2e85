//! The daemon's side of a `process`-backend VM: a command run by `novacron jail-run` (see
//! `cli::jail_run` for the jail itself) that the VM manager supervises.
//!
//! Layout of a VM directory `dir`: `dir/work` (the command's home and only writable place,
//! owned by uid 65534), `dir/console.log` (the command's stdout and stderr, appended),
//! `dir/exit-status` (how the command ended, written by the jail's supervisor). `dir` is
//! made searchable by others (mode 0711) so the jail user can reach its work directory by
//! its absolute path; the directories above it must be searchable too.
//!
//! The process the daemon knows (`pid`) is the jail's outermost process: with a pid
//! namespace the sandbox's waiter, whose death kills everything in the jail. It runs in its
//! own session, so it survives the daemon (and a terminal's Ctrl-C); a restarted daemon
//! takes it back with [`ProcessVm::adopt`] from its pid and start time.
//!
//! What it cannot do: a process VM has no snapshot and no migration of its own (it moves by
//! cold restart); an adopted process is not our child, so its exit status comes only from
//! the status file, and when the jail died before writing it the outcome is
//! [`ExitOutcome::Unknown`]. Dropping a handle leaves the process running and, if it was
//! our child, unreaped until the daemon exits.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use novacron_vm::sandbox::cgroup::{self, CgroupLayout};
use novacron_vm::sandbox::VmCgroup;

use crate::api::types::VmSpec;

/// The user and group a process VM's command runs as (`nobody`/`nogroup`).
pub const JAIL_UID: u32 = 65534;
pub const JAIL_GID: u32 = 65534;
/// `jail-run` exit codes before the command runs (as env(1)).
pub const EXIT_JAIL_FAILED: u8 = 125;
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
pub const EXIT_NOT_FOUND: u8 = 127;
/// File names inside the VM directory.
pub const WORK_DIR: &str = "work";
pub const CONSOLE_LOG: &str = "console.log";
pub const STATUS_FILE: &str = "exit-status";

/// A process-backend VM moves by cold restart: the destination's one-byte answer on the
/// control stream once the command runs there.
pub const RESTARTED: u8 = 1;

/// How long a killed jail may take to disappear, and a cgroup to freeze.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest status file read (it holds one short line).
const STATUS_FILE_MAX: u64 = 64;
/// Largest /proc/PID/stat or cmdline read.
const PROC_FILE_MAX: u64 = 64 * 1024;

/// How a process VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitOutcome {
    /// The command (or, with codes 125-127 and no command started, the jail) exited.
    Exited { code: i32 },
    /// Killed by `signal`; `oom` when its cgroup recorded an OOM kill.
    Killed { signal: i32, oom: bool },
    /// An adopted process ended without a status record (the jail itself was killed):
    /// a process that is not our child cannot be waited for, so its status is lost.
    Unknown,
}

impl ExitOutcome {
    /// In words, for `VmInfo::detail`.
    pub fn describe(&self) -> String {
        match *self {
            ExitOutcome::Exited { code } if code == i32::from(EXIT_JAIL_FAILED) => {
                "exited with status 125: the jail could not be set up, or the command \
                 failed that way (console.log says which)"
                    .into()
            }
            ExitOutcome::Exited { code } if code == i32::from(EXIT_NOT_FOUND) => {
                "exited with status 127: the command was not found (console.log says why)".into()
            }
            ExitOutcome::Exited { code } if code == i32::from(EXIT_NOT_EXECUTABLE) => {
                "exited with status 126: the command cannot be executed (console.log says why)"
                    .into()
            }
            ExitOutcome::Exited { code } => format!("exited with status {code}"),
            ExitOutcome::Killed { signal, oom: true } => {
                format!("killed by signal {signal}: out of memory in its cgroup (raise mem_mib)")
            }
            ExitOutcome::Killed { signal, oom: false } => format!("killed by signal {signal}"),
            ExitOutcome::Unknown => {
                "ended; its exit status is unknown (adopted after a daemon restart, and the \
                 jail left no status record)"
                    .into()
            }
        }
    }
}

/// The status line the jail's supervisor writes when the command ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRecord {
    Exited(i32),
    Killed(i32),
}

impl ExitRecord {
    pub fn to_line(self) -> String {
        match self {
            ExitRecord::Exited(code) => format!("exited {code}\n"),
            ExitRecord::Killed(signal) => format!("killed {signal}\n"),
        }
    }

    /// `None` for anything but one well-formed line.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, value) = text.trim_end_matches('\n').split_once(' ')?;
        let value: i32 = value.parse().ok()?;
        match kind {
            "exited" if (0..=255).contains(&value) => Some(ExitRecord::Exited(value)),
            "killed" if (1..=64).contains(&value) => Some(ExitRecord::Killed(value)),
            _ => None,
        }
    }

    /// The supervisor's own exit code (the shell's 128+signal convention).
    pub fn exit_code(self) -> u8 {
        match self {
            ExitRecord::Exited(code) => u8::try_from(code).unwrap_or(EXIT_JAIL_FAILED),
            ExitRecord::Killed(signal) => u8::try_from(128 + signal).unwrap_or(255),
        }
    }
}

/// The cgroup name of a process VM (`proc-<id>`), or why `id` cannot name one.
pub fn cgroup_name(id: &str) -> Result<String, String> {
    let ok = !id.is_empty()
        && id.len() <= 59
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        return Err(format!(
            "VM id {id:?} cannot name a cgroup: use 1-59 characters of [A-Za-z0-9_.-]"
        ));
    }
    Ok(format!("proc-{id}"))
}

/// Checks a `VmSpec.command`: a program by absolute path, then its arguments.
pub fn validate_command<S: AsRef<OsStr>>(command: &[S]) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err("command is empty: give the program's absolute path first".into());
    };
    let program = Path::new(program.as_ref());
    if !program.is_absolute() {
        return Err(format!(
            "command program {} is not an absolute path (there is no PATH lookup: write \
             e.g. /usr/bin/{})",
            program.display(),
            program.display()
        ));
    }
    if command.len() > 4096 {
        return Err(format!(
            "command has {} arguments; the limit is 4096",
            command.len()
        ));
    }
    Ok(())
}

/// Reads the file `rel` (a relative path of plain names) from the work directory of the
/// process VM in `dir` once its command has ended: at most `max` bytes, a regular file
/// reached without following any symlink (the jail's user wrote that directory; a link
/// to a host file, a FIFO or a device is refused, naming what it is, never read).
pub fn read_work_file(dir: &Path, rel: &str, max: u64) -> Result<Vec<u8>, String> {
    read_untrusted_file(&dir.join(WORK_DIR), "the work directory", rel, max)
}

/// [`read_work_file`] of `rel` under `base` (named `base_name` in errors), a directory a
/// jailed process could write: the VM directory, where a VMM leaves its guest's result blob.
pub fn read_untrusted_file(
    base: &Path,
    base_name: &str,
    rel: &str,
    max: u64,
) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let names: Vec<&OsStr> = Path::new(rel)
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(format!("{rel}: give a relative path of plain names")),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err("an empty path".into());
    }
    let mut at: OwnedFd = fs::File::open(base)
        .map_err(|e| format!("{base_name}: {e}"))?
        .into();
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let c_name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| format!("{rel}: a NUL in the path"))?;
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_NONBLOCK
            } else {
                libc::O_DIRECTORY
            };
        // SAFETY: a valid directory fd and a NUL-terminated name.
        let fd = unsafe { libc::openat(at.as_raw_fd(), c_name.as_ptr(), flags) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => format!("{rel}: not found (nothing wrote it)"),
                Some(libc::ELOOP) => format!("{rel}: a symlink is in the way (not followed)"),
                Some(libc::ENOTDIR) => format!(
                    "{rel}: a part of the path is not a directory (or is a symlink, not followed)"
                ),
                _ => format!("{rel}: {e}"),
            });
        }
        // SAFETY: a fresh fd of ours.
        at = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let file = fs::File::from(at);
    let meta = file.metadata().map_err(|e| format!("{rel}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{rel}: not a regular file"));
    }
    if meta.len() > max {
        return Err(format!(
            "{rel}: {} bytes, over the {max}-byte limit",
            meta.len()
        ));
    }
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{rel}: {e}"))?;
    if data.len() as u64 > max {
        return Err(format!("{rel}: grew over the {max}-byte limit while read"));
    }
    Ok(data)
}

fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    fs::File::open(path)?.take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// The start time of process `pid`, in clock ticks after boot (the VM engine's reading of
/// /proc/PID/stat, which the VMM adoption uses too).
pub fn start_ticks_of(pid: u32) -> Result<u64, String> {
    novacron_vm::process::adopt::process_start_ticks(pid)
        .ok_or_else(|| format!("process {pid}: no readable start time in /proc/{pid}/stat"))
}

/// The `oom_kill` counter of a cgroup's `memory.events` (v2) or `memory.oom_control` (v1).
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The mount point of the cgroup v1 `freezer` hierarchy in a mountinfo text.
fn freezer_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        (fstype == "cgroup"
            && options.split(',').any(|o| o == "freezer")
            && !mount_point.contains('\\'))
        .then(|| PathBuf::from(mount_point))
    })
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, String> {
    let raw_pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} is out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => format!("process {pid} does not exist"),
            _ => format!("pidfd_open({pid}): {e} (needs Linux 5.3 or later)"),
        });
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the pidfd's process has exited, waiting up to `timeout`.
fn pidfd_exited(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        let interrupted =
            rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}

/// Signals process group `pgid`; false when it no longer exists.
fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// How a VM was paused, so resume undoes the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pause {
    V2Freeze(PathBuf),
    V1Freezer(PathBuf),
    Signals,
}

/// A running (or ended) process VM.
#[derive(Debug)]
pub struct ProcessVm {
    id: String,
    dir: PathBuf,
    pid: u32,
    start_ticks: u64,
    pidfd: OwnedFd,
    /// Our child (spawned by this daemon), or `None` when adopted.
    child: Option<Child>,
    exited: Option<ExitOutcome>,
    paused: Option<Pause>,
    cleaned_up: bool,
}

impl ProcessVm {
    /// Starts `exe jail-run ... -- <spec.command>` for VM `id` in `dir` (created if
    /// missing), in its own session, its output appended to `dir/console.log`. Unless it
    /// may `outlive` this process (to be adopted by the next daemon), the kernel kills it
    /// when this process ends ([`novacron_vm::process::child_lifetime`]).
    pub fn spawn(
        exe: &Path,
        id: &str,
        dir: &Path,
        spec: &VmSpec,
        outlive: bool,
    ) -> Result<ProcessVm, String> {
        cgroup_name(id)?;
        let command = spec
            .command
            .as_deref()
            .ok_or("a process VM needs `command` (the program's absolute path and arguments)")?;
        validate_command(command)?;
        let work = dir.join(WORK_DIR);
        fs::create_dir_all(&work)
            .map_err(|e| format!("cannot create the work directory {}: {e}", work.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("cannot make {} searchable (0711): {e}", dir.display()))?;
        let status_file = dir.join(STATUS_FILE);
        match fs::remove_file(&status_file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove the old {}: {e}",
                    status_file.display()
                ))
            }
        }
        let log_path = dir.join(CONSOLE_LOG);
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate the {} fd: {e}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("jail-run")
            .arg("--id")
            .arg(id)
            .arg("--work")
            .arg(&work)
            .arg("--mem-mib")
            .arg(spec.mem_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--status-file")
            .arg(&status_file)
            .arg("--")
            .args(command)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: setsid and setpriority are async-signal-safe; setsid only fails if we
        // already lead a group.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The lowest priority, as every VM (`politeness::VM_NICE`).
                novacron_vm::process::launcher::set_nice(
                    novacron_vm::process::launcher::LOWEST_PRIORITY_NICE,
                )
            });
        }
        let mut child = match outlive {
            true => cmd.spawn(),
            false => novacron_vm::process::child_lifetime::spawn(cmd, libc::SIGKILL),
        }
        .map_err(|e| format!("cannot start {} jail-run: {e}", exe.display()))?;
        let pid = child.id();
        // Our unreaped child cannot vanish, so these only fail on a broken /proc.
        let opened = pidfd_open(pid).and_then(|fd| Ok((fd, start_ticks_of(pid)?)));
        let (pidfd, start_ticks) = match opened {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("VM {id}: {e}"));
            }
        };
        tracing::info!(vm = id, pid, "process VM started");
        Ok(ProcessVm {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            pid,
            start_ticks,
            pidfd,
            child: Some(child),
            exited: None,
            paused: None,
            cleaned_up: false,
        })
    }

    /// Takes back the jail of VM `id` in `dir` that a previous daemon started: `pid` must
    /// still be the process that started at `start_ticks` and run `jail-run --id <id>`.
    pub fn adopt(id: &str, dir: &Path, pid: u32, start_ticks: u64) -> Result<ProcessVm, String> {
        cgroup_name(id)?;
        // Open first, then check: the pidfd pins this very process, so a pid reused after
        // the check cannot slip in.
        let pidfd = pidfd_open(pid).map_err(|e| format!("adopting VM {id}: {e}"))?;
        let actual = start_ticks_of(pid).map_err(|e| format!("adopting VM {id}: {e}"))?;
        if actual != start_ticks {
            return Err(format!(
                "adopting VM {id}: process {pid} started at tick {actual}, not {start_ticks}: \
                 it is another process that reused the pid (the VM's jail is gone)"
            ));
        }
        let cmdline_path = PathBuf::from(format!("/proc/{pid}/cmdline"));
        let cmdline = read_limited(&cmdline_path, PROC_FILE_MAX)
            .map_err(|e| format!("adopting VM {id}: reading {}: {e}", cmdline_path.display()))?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_jail = args.get(1) == Some(&&b"jail-run"[..])
            && args
                .windows(2)
                .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
        if !is_jail {
            return Err(format!(
                "adopting VM {id}: process {pid} is not `novacron jail-run --id {id}`"
            ));
        }
        tracing::info!(vm = id, pid, "process VM adopted");
        Ok(ProcessVm {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            pid,
            start_ticks,
            pidfd,
            child: None,
            exited: None,
            paused: None,
            cleaned_up: false,
        })
    }

    /// The jail's outermost process (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its start time (field 22 of /proc/PID/stat): store it with the pid for [`adopt`](Self::adopt).
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Lets go without stopping it (as if the daemon died): returns (pid, start ticks).
    pub fn release(self) -> (u32, u64) {
        (self.pid, self.start_ticks)
    }

    /// How it ended, without blocking; `None` while it runs. Cleans up its cgroup once.
    pub fn try_exit(&mut self) -> Option<ExitOutcome> {
        if self.exited.is_none() {
            let waited = match &mut self.child {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(Some(status)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(vm = self.id, "waiting for the jail failed: {e}");
                        None
                    }
                },
                None => pidfd_exited(&self.pidfd, Duration::ZERO).then_some(None),
            };
            let status = waited?;
            let outcome = self.outcome(status);
            tracing::info!(
                vm = self.id,
                outcome = outcome.describe(),
                "process VM ended"
            );
            self.exited = Some(outcome);
        }
        if let Err(e) = self.cleanup() {
            tracing::warn!(vm = self.id, "{e}");
        }
        self.exited
    }

    /// [`try_exit`](Self::try_exit), waiting up to `timeout` for the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitOutcome> {
        if self.exited.is_none() {
            pidfd_exited(&self.pidfd, timeout);
        }
        self.try_exit()
    }

    fn outcome(&self, status: Option<std::process::ExitStatus>) -> ExitOutcome {
        let recorded = read_limited(&self.dir.join(STATUS_FILE), STATUS_FILE_MAX)
            .ok()
            .and_then(|b| ExitRecord::parse(&String::from_utf8_lossy(&b)));
        let oom = self.oom_kills().unwrap_or(0) > 0;
        match (recorded, status) {
            (Some(ExitRecord::Exited(code)), _) => ExitOutcome::Exited { code },
            (Some(ExitRecord::Killed(signal)), _) => ExitOutcome::Killed { signal, oom },
            (None, Some(s)) => match (s.code(), s.signal()) {
                (Some(code), _) => ExitOutcome::Exited { code },
                (None, Some(signal)) => ExitOutcome::Killed { signal, oom },
                (None, None) => ExitOutcome::Unknown,
            },
            (None, None) => ExitOutcome::Unknown,
        }
    }

    fn cgroup_layout(&self) -> Result<CgroupLayout, String> {
        cgroup::detect().map_err(|e| format!("VM {}: {e}", self.id))
    }

    /// The VM's memory/cpu cgroup directories, if it exists.
    fn cgroup_dirs(&self) -> Option<Vec<PathBuf>> {
        let layout = self.cgroup_layout().ok()?;
        let name = cgroup_name(&self.id).ok()?;
        let cg = VmCgroup::open(&layout, &name).ok()?;
        let dirs = cg.dirs().to_vec();
        cg.keep();
        Some(dirs)
    }

    fn oom_kills(&self) -> Option<u64> {
        let dir = self.cgroup_dirs()?.into_iter().next()?;
        ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|f| fs::read_to_string(dir.join(f)).ok())
            .and_then(|t| parse_oom_kills(&t))
    }

    /// Freezes every process of the jail: cgroup v2 `cgroup.freeze`, else the v1 freezer
    /// hierarchy, else SIGSTOP to its process group (which a process that left the group
    /// escapes).
    pub fn pause(&mut self) -> Result<(), String> {
        if self.paused.is_some() {
            return Ok(());
        }
        if self.try_exit().is_some() {
            return Err(format!("VM {}: cannot pause, it has ended", self.id));
        }
        let layout = self.cgroup_layout()?;
        let how = match (&layout, self.cgroup_dirs()) {
            (CgroupLayout::V2 { .. }, Some(dirs)) => {
                let dir = dirs.into_iter().next().ok_or("no cgroup directory")?;
                write(&dir.join("cgroup.freeze"), "1")?;
                let frozen = wait_until(FREEZE_TIMEOUT, || {
                    fs::read_to_string(dir.join("cgroup.events"))
                        .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
                });
                if frozen.is_err() {
                    // A pause that failed leaves the VM running, not half frozen.
                    let _ = write(&dir.join("cgroup.freeze"), "0");
                    return Err(format!("VM {}: {} did not freeze", self.id, dir.display()));
                }
                Pause::V2Freeze(dir)
            }
            (CgroupLayout::V1 { .. }, Some(dirs)) => match self.v1_freezer_dir() {
                Some(freezer) => {
                    if let Err(e) = self.v1_freeze(&dirs[0], &freezer) {
                        // A pause that failed leaves the VM running, not half frozen.
                        let _ = write(&freezer.join("freezer.state"), "THAWED");
                        return Err(e);
                    }
                    Pause::V1Freezer(freezer)
                }
                None => self.stop_signals()?,
            },
            (_, None) => self.stop_signals()?,
        };
        tracing::info!(vm = self.id, ?how, "process VM paused");
        self.paused = Some(how);
        Ok(())
    }

    fn stop_signals(&self) -> Result<Pause, String> {
        if !signal_group(self.pid, libc::SIGSTOP) {
            return Err(format!(
                "VM {}: SIGSTOP to process group {}: {}",
                self.id,
                self.pid,
                std::io::Error::last_os_error()
            ));
        }
        Ok(Pause::Signals)
    }

    fn v1_freezer_dir(&self) -> Option<PathBuf> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let name = cgroup_name(&self.id).ok()?;
        Some(freezer_mount(&mountinfo)?.join(cgroup::PARENT).join(name))
    }

    /// Moves every process of the memory cgroup into the freezer cgroup and freezes it,
    /// again until no process forked in between is left outside.
    fn v1_freeze(&self, memory_dir: &Path, freezer: &Path) -> Result<(), String> {
        fs::create_dir_all(freezer)
            .map_err(|e| format!("VM {}: cannot create {}: {e}", self.id, freezer.display()))?;
        for _ in 0..20 {
            let members = read_pids(&memory_dir.join("cgroup.procs"))?;
            let frozen = read_pids(&freezer.join("cgroup.procs"))?;
            let outside: Vec<u32> = members
                .into_iter()
                .filter(|p| !frozen.contains(p))
                .collect();
            let state = fs::read_to_string(freezer.join("freezer.state")).unwrap_or_default();
            if outside.is_empty() && state.trim() == "FROZEN" {
                return Ok(());
            }
            for pid in outside {
                // A process that exited meanwhile is ESRCH: nothing to freeze.
                if let Err(e) = fs::write(freezer.join("cgroup.procs"), pid.to_string()) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(format!(
                            "VM {}: moving pid {pid} into {}: {e}",
                            self.id,
                            freezer.display()
                        ));
                    }
                }
            }
            write(&freezer.join("freezer.state"), "FROZEN")?;
            wait_until(FREEZE_TIMEOUT, || {
                fs::read_to_string(freezer.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
            })
            .map_err(|_| format!("VM {}: {} did not freeze", self.id, freezer.display()))?;
        }
        Err(format!(
            "VM {}: processes kept forking while being frozen",
            self.id
        ))
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<(), String> {
        let Some(how) = self.paused.take() else {
            return Ok(());
        };
        let result = match &how {
            Pause::V2Freeze(dir) => write(&dir.join("cgroup.freeze"), "0"),
            Pause::V1Freezer(dir) => write(&dir.join("freezer.state"), "THAWED"),
            Pause::Signals => {
                // A group that is gone has nothing left to continue.
                signal_group(self.pid, libc::SIGCONT);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.paused = Some(how);
            return Err(e);
        }
        tracing::info!(vm = self.id, "process VM resumed");
        Ok(())
    }

    /// SIGTERM to the jail's process group (the command gets it from the jail's
    /// supervisor too), SIGKILL to the whole jail after `grace`; then removes its cgroups.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitOutcome, String> {
        if self.try_exit().is_none() {
            if let Err(e) = self.resume() {
                tracing::warn!(vm = self.id, "thawing before the stop: {e}");
            }
            signal_group(self.pid, libc::SIGTERM);
            if self.wait_exit(grace).is_none() {
                tracing::info!(vm = self.id, ?grace, "no exit after SIGTERM: SIGKILL");
                self.kill_everything();
                if self.wait_exit(KILL_TIMEOUT).is_none() {
                    return Err(format!(
                        "VM {}: process {} is still there {KILL_TIMEOUT:?} after SIGKILL",
                        self.id, self.pid
                    ));
                }
            }
        }
        self.cleanup()?;
        self.exited
            .ok_or_else(|| format!("VM {}: internal: no outcome after the exit", self.id))
    }

    fn kill_everything(&mut self) {
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        signal_group(self.pid, libc::SIGKILL);
        if let Some(Pause::V1Freezer(dir)) = &self.paused {
            // v1 frozen tasks die only once thawed.
            let _ = write(&dir.join("freezer.state"), "THAWED");
        }
        if let Some(dirs) = self.cgroup_dirs() {
            if let Ok(pids) = read_pids(&dirs[0].join("cgroup.procs")) {
                for pid in pids {
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill takes plain integers.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }

    /// Once the jail has exited: kill stragglers and remove its cgroups.
    fn cleanup(&mut self) -> Result<(), String> {
        if self.cleaned_up || self.exited.is_none() {
            return Ok(());
        }
        self.paused = None;
        if let Some(freezer) = self.v1_freezer_dir().filter(|d| d.exists()) {
            let _ = write(&freezer.join("freezer.state"), "THAWED");
        }
        let layout = self.cgroup_layout()?;
        let name = cgroup_name(&self.id)?;
        match VmCgroup::open(&layout, &name) {
            Ok(mut cg) => {
                cg.kill_on_cleanup(true);
                cg.remove()
                    .map_err(|e| format!("VM {}: removing its cgroup: {e}", self.id))?;
            }
            Err(e) => tracing::debug!(vm = self.id, "no cgroup to remove: {e}"),
        }
        if let Some(freezer) = self.v1_freezer_dir().filter(|d| d.exists()) {
            wait_until(KILL_TIMEOUT, || match fs::remove_dir(&freezer) {
                Ok(()) => true,
                Err(e) => e.kind() == ErrorKind::NotFound,
            })
            .map_err(|_| {
                format!(
                    "VM {}: cannot remove the freezer cgroup {}",
                    self.id,
                    freezer.display()
                )
            })?;
        }
        self.cleaned_up = true;
        Ok(())
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn read_pids(path: &Path) -> Result<Vec<u32>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|_| format!("malformed pid {l:?} in {}", path.display()))
        })
        .collect()
}

/// Polls `done` (kernel state with no change notification) until true or `timeout`.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_file_is_read_only_when_it_is_a_regular_file_reached_without_links() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join(WORK_DIR);
        fs::create_dir_all(work.join("out")).unwrap();
        fs::write(work.join("out/result.txt"), b"42\n").unwrap();
        assert_eq!(
            read_work_file(tmp.path(), "out/result.txt", 16).unwrap(),
            b"42\n"
        );
        let secret = tmp.path().join("host-secret");
        fs::write(&secret, b"do not echo").unwrap();
        std::os::unix::fs::symlink(&secret, work.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), work.join("up")).unwrap();
        let fifo = std::ffi::CString::new(work.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (rel, why) in [
            ("link.txt", "symlink"),
            ("up/host-secret", "symlink, not followed"),
            ("fifo", "not a regular file"),
            ("out", "not a regular file"),
            ("missing", "nothing wrote it"),
            ("out/result.txt/x", "not a directory"),
            ("../host-secret", "plain names"),
        ] {
            let e = read_work_file(tmp.path(), rel, 16).unwrap_err();
            assert!(e.contains(why), "{rel}: {e}");
            assert!(!e.contains("do not echo"), "{e}");
        }
        let e = read_work_file(tmp.path(), "out/result.txt", 2).unwrap_err();
        assert!(e.contains("over the 2-byte limit"), "{e}");
    }

    #[test]
    fn start_ticks_of_a_live_process_and_not_of_a_missing_one() {
        // The parsing itself (odd command names) is tested where it lives, in novacron-vm.
        let own = start_ticks_of(std::process::id()).unwrap();
        assert!(own > 0);
        assert!(start_ticks_of(u32::MAX).is_err());
    }

    #[test]
    fn exit_records_round_trip_and_refuse_junk() {
        for r in [
            ExitRecord::Exited(0),
            ExitRecord::Exited(3),
            ExitRecord::Killed(9),
        ] {
            assert_eq!(ExitRecord::parse(&r.to_line()), Some(r));
        }
        assert_eq!(ExitRecord::Killed(9).exit_code(), 137);
        assert_eq!(ExitRecord::Exited(3).exit_code(), 3);
        for junk in [
            "",
            "exited",
            "exited x",
            "killed 0",
            "exited 300",
            "died 1\n",
        ] {
            assert_eq!(ExitRecord::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn ids_and_commands_are_checked() {
        assert_eq!(cgroup_name("vm-1.a_b").as_deref(), Ok("proc-vm-1.a_b"));
        for bad in ["", "a/b", "a b", &"x".repeat(60)] {
            let e = cgroup_name(bad).unwrap_err();
            assert!(e.contains("1-59 characters"), "{e}");
        }
        assert!(validate_command(&["/bin/true"]).is_ok());
        let e = validate_command(&["true"]).unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        let e = validate_command::<&str>(&[]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn finds_oom_kills_and_the_freezer_mount() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n";
        assert_eq!(parse_oom_kills(v1), Some(0));
        let mountinfo = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            freezer_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            freezer_mount("41 31 0:38 / /x rw - cgroup2 cgroup2 rw\n"),
            None
        );
    }
}
