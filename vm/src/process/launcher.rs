//! The parent's side of a VMM process: spawn `novacron vmm` with a control socket on fd 3,
//! send it commands, read its events, and turn its death into a clear error. A VMM dies
//! with the process that spawned it ([`crate::process::child_lifetime`]), unless it is adoptable
//! (`Launch.adopt`): that one also gets a listening socket on fd 4 and outlives its parent;
//! a later parent takes it back with [`VmmProcess::adopt`] (docs/vm.md, "Adoption").

use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::exit::describe_reason;
use crate::machine::vcpu::monotonic_ns;
use crate::process::adopt::{AdoptError, PidFd};
use crate::process::control::{
    self, AdoptedState, Command, ControlError, Event, ExitReason, Launch,
};

/// The cgroup name of a VM's jailed VMM (its owner empties and removes it).
pub use crate::process::jail::cgroup_name;

/// An adoptable VMM's stderr, in its adopt socket's directory.
pub const VMM_LOG_NAME: &str = "vmm.log";

/// The file descriptor number the VMM process finds its control socket on.
pub const CONTROL_FD: i32 = 3;

/// The file descriptor number an adoptable VMM process finds its adopt listener on.
pub const ADOPT_FD: i32 = 4;

/// How long [`VmmProcess::adopt`] waits for the VMM's [`Event::Adopted`]. A VMM busy in a
/// long command (a snapshot, a migration's rollback) answers after it.
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the VMM process {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("VMM process: {0}")]
    Control(#[from] ControlError),
    #[error("the VMM process died: {0}")]
    Died(String),
    #[error("the VMM process sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Stopped(String),
    #[error("{0}")]
    AdoptSocket(#[from] AdoptError),
    #[error("cannot adopt VMM process {pid} through {socket}: {problem}")]
    Adopt {
        pid: u32,
        socket: PathBuf,
        problem: String,
    },
}

/// What an adopted VMM said when its new owner connected ([`Event::Adopted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub vm_id: String,
    pub state: AdoptedState,
    /// The newest guest report, (code, value).
    pub last_guest: Option<(u32, u64)>,
    /// Why the VM ended while nobody owned it; [`Event::Exited`] follows.
    pub exit: Option<ExitReason>,
    /// Events the VMM could not send while nobody owned it.
    pub dropped_events: u64,
}

/// The VMM process: our child, or adopted (then waited for and signalled through a pidfd,
/// and its exit status is unknowable unless it happens to be our child after all).
enum Process {
    Child(Child),
    Adopted(PidFd),
}

/// What a VMM process says when its machine is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub process_start_ns: u64,
    pub ready_ns: u64,
    pub guest: String,
    pub sandbox: String,
}

pub struct VmmProcess {
    process: Process,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// CLOCK_MONOTONIC ns just before the process was spawned (0 for an adopted process).
    pub spawned_ns: u64,
    /// The VM's cgroup, which only the parent can remove once the process is gone.
    cgroup: Option<String>,
    exited: Option<std::process::ExitStatus>,
    /// Start time of the process in clock ticks ([`crate::process::adopt::process_start_ticks`]).
    start_ticks: Option<u64>,
    /// The adopt socket (absolute), for an adoptable VMM.
    adopt: Option<PathBuf>,
    /// Dropping leaves the process alone ([`VmmProcess::abandon`]).
    abandoned: bool,
}

/// A fresh VM id: this process's pid and the monotonic clock, unique on this host.
pub fn new_vm_id() -> String {
    format!("{}-{:x}", std::process::id(), monotonic_ns())
}

impl VmmProcess {
    /// Spawns `exe vmm` (the novacron binary) and sends it `launch`. The guest's serial
    /// console goes to `stdout`.
    pub fn spawn(exe: &Path, launch: &Launch, stdout: Stdio) -> Result<Self, LaunchError> {
        Self::spawn_with_streams::<std::os::fd::OwnedFd>(exe, launch, stdout, &[])
    }

    /// [`spawn`](Self::spawn), passing `streams` with the launch message (an incoming
    /// migration's streams, control first: connected stream sockets, TCP or Unix).
    pub fn spawn_with_streams<S: std::os::fd::AsFd>(
        exe: &Path,
        launch: &Launch,
        stdout: Stdio,
        streams: &[S],
    ) -> Result<Self, LaunchError> {
        let (parent_end, child_end) = UnixStream::pair().map_err(|source| LaunchError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        let (launch, listener) = prepare_adoption(launch)?;
        let launch = &launch;
        let child_fd = child_end.as_raw_fd();
        let listener_fd = listener.as_ref().map(AsRawFd::as_raw_fd);
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("vmm").stdin(Stdio::null()).stdout(stdout);
        if let Some(log) = launch.adopt.as_deref().and_then(Path::parent) {
            // An adoptable VMM outlives its owner: it must not hold the owner's stderr
            // (a pipe someone waits on to close), so it logs beside its socket.
            let log = log.join(VMM_LOG_NAME);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| LaunchError::Spawn {
                    exe: format!("{} (log {})", exe.display(), log.display()),
                    source,
                })?;
            cmd.stderr(file);
        }
        let nice = launch.sandbox.nice;
        if let Some(n) = nice.filter(|n| !(-20..=19).contains(n)) {
            return Err(LaunchError::Spawn {
                exe: exe.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("niceness {n} is outside -20..=19"),
                ),
            });
        }
        // SAFETY: between fork and exec only async-signal-safe calls on fds we own, and
        // setpriority on the child itself.
        unsafe {
            cmd.pre_exec(move || {
                place_fds(child_fd, listener_fd)?;
                nice.map_or(Ok(()), set_nice)
            });
        }
        let spawned_ns = monotonic_ns();
        // A VMM nobody can adopt dies with this process, whichever thread spawns it and
        // however this process ends (even while the VMM is too busy to see its control
        // channel close); an adoptable one outlives it by design.
        let child = match launch.adopt {
            None => crate::process::child_lifetime::spawn(cmd, libc::SIGKILL),
            Some(_) => cmd.spawn(),
        }
        .map_err(|source| LaunchError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        // The VMM holds the listener now; once it is gone, connecting is refused.
        drop(listener);
        drop(child_end);
        let reader_end = parent_end.try_clone().map_err(ControlError::from)?;
        let mut process = VmmProcess {
            start_ticks: crate::process::adopt::process_start_ticks(child.id()),
            process: Process::Child(child),
            reader: BufReader::new(reader_end),
            writer: parent_end,
            spawned_ns,
            cgroup: launch
                .sandbox
                .enabled
                .then(|| crate::process::jail::cgroup_name(&launch.vm_id)),
            exited: None,
            adopt: launch.adopt.clone(),
            abandoned: false,
        };
        process.send_raw_with_streams(launch, streams)?;
        Ok(process)
    }

    /// Takes back a running adoptable VMM whose previous owner is gone: checks that `pid`
    /// is the process listening on `socket`, connects, and reads [`Event::Adopted`] (within
    /// [`ADOPT_TIMEOUT`]). Then commands and events work as for a spawned VMM; `wait`,
    /// `kill` and `pid` work although the process is not our child. `cgroup` is the VM's
    /// cgroup name (`vm-<vm_id>` for a jailed VMM), removed once the process is gone.
    ///
    /// The caller should have checked `pid` against the start time it recorded
    /// ([`crate::process::adopt::process_start_ticks`]); this refuses a pid that does not hold the
    /// socket's listener, but cannot tell when /proc hides the process's descriptors. On
    /// any error the process is left alone (not killed).
    pub fn adopt(
        socket: &Path,
        pid: u32,
        cgroup: Option<String>,
    ) -> Result<(VmmProcess, Adopted), LaunchError> {
        let fail = |problem: String| LaunchError::Adopt {
            pid,
            socket: socket.to_path_buf(),
            problem,
        };
        let pidfd = PidFd::open(pid).map_err(|e| {
            fail(match e.raw_os_error() {
                Some(libc::ESRCH) => {
                    "there is no such process (it ended: read its tombstone)".into()
                }
                _ => format!("cannot open a pidfd: {e}"),
            })
        })?;
        let absolute = crate::process::adopt::absolute_socket_path(socket)?;
        match crate::process::adopt::listens_on(pid, ADOPT_FD, &absolute) {
            Ok(true) => {}
            Ok(false) => {
                return Err(fail(format!(
                    "the process does not hold this socket's listener on fd {ADOPT_FD}: it \
                     is not this VM's VMM (a recycled pid?) or the VMM is gone"
                )))
            }
            Err(e) => tracing::debug!(pid, error = %e, "cannot check the VMM's descriptors"),
        }
        let stream = UnixStream::connect(&absolute).map_err(|e| fail(format!("connect: {e}")))?;
        let reader = stream.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut process = VmmProcess {
            process: Process::Adopted(pidfd),
            reader: BufReader::new(reader),
            writer: stream,
            spawned_ns: 0,
            cgroup,
            exited: None,
            start_ticks: crate::process::adopt::process_start_ticks(pid),
            adopt: Some(absolute),
            // Until the VMM accepted us, an error must not kill it.
            abandoned: true,
        };
        match process.next_event(Some(ADOPT_TIMEOUT)) {
            Ok(Event::Adopted {
                vm_id,
                state,
                last_guest,
                exit,
                dropped_events,
            }) => {
                process.abandoned = false;
                let adopted = Adopted {
                    vm_id,
                    state,
                    last_guest,
                    exit,
                    dropped_events,
                };
                Ok((process, adopted))
            }
            Ok(Event::CommandFailed { message }) => {
                Err(fail(format!("the VMM refused the connection: {message}")))
            }
            Ok(other) => Err(fail(format!(
                "the VMM's first event was {other:?}, not adopted"
            ))),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Closes the control channel and forgets the process without stopping or waiting for
    /// it, as if this parent had died: an adoptable VMM keeps its VM running for the next
    /// owner; another stops it. Its cgroup stays. Returns the pid. A child that later ends
    /// stays a zombie until this process adopts and waits for it, or exits.
    pub fn abandon(mut self) -> u32 {
        self.abandoned = true;
        self.pid()
    }

    /// The adopt socket of an adoptable VMM (absolute). Its directory holds the tombstone:
    /// [`crate::process::adopt::read_tombstone`].
    pub fn adopt_socket(&self) -> Option<&Path> {
        self.adopt.as_deref()
    }

    /// The process's start time in clock ticks after boot; record it with the pid so a
    /// later owner never adopts a recycled pid. None if /proc could not say.
    pub fn start_ticks(&self) -> Option<u64> {
        self.start_ticks
    }

    fn send_raw_with_streams<T: serde::Serialize, S: std::os::fd::AsFd>(
        &mut self,
        msg: &T,
        streams: &[S],
    ) -> Result<(), LaunchError> {
        if streams.is_empty() {
            return self.send_raw(msg);
        }
        let mut line = serde_json::to_vec(msg).map_err(ControlError::from)?;
        line.push(b'\n');
        crate::process::fd_passing::send_with_streams(&mut self.writer, &line, streams)
            .map_err(|e| self.explain(ControlError::Io(e)))
    }

    /// Sends a command with `streams` attached (a migration's streams, control first:
    /// connected stream sockets, TCP or Unix).
    pub fn send_with_streams<S: std::os::fd::AsFd>(
        &mut self,
        cmd: &Command,
        streams: &[S],
    ) -> Result<(), LaunchError> {
        self.send_raw_with_streams(cmd, streams)
    }

    fn send_raw<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), LaunchError> {
        control::send(&mut self.writer, msg).map_err(|e| self.explain(e))
    }

    pub fn send(&mut self, cmd: &Command) -> Result<(), LaunchError> {
        self.send_raw(cmd)
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(child) => child.id(),
            Process::Adopted(pidfd) => pidfd.pid(),
        }
    }

    /// Waits for the next event; `timeout` None waits forever.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Event, LaunchError> {
        if timeout.is_some_and(|t| t.is_zero()) {
            // A deadline that already passed (the socket refuses a zero timeout).
            return Err(LaunchError::Timeout(Duration::ZERO));
        }
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(ControlError::from)?;
        match control::recv(&mut self.reader) {
            Ok(e) => Ok(e),
            Err(ControlError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(LaunchError::Timeout(timeout.unwrap_or_default()))
            }
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Waits for events until `pick` accepts one.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, LaunchError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(LaunchError::Timeout(timeout));
            }
            let event = self.next_event(Some(left))?;
            if let Some(t) = pick(&event) {
                return Ok(t);
            }
        }
    }

    /// Waits until the machine is built (and running unless launched paused).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, LaunchError> {
        self.wait_for(timeout, |e| match e {
            Event::Ready {
                process_start_ns,
                ready_ns,
                guest,
                sandbox,
            } => Some(Ok(Ready {
                process_start_ns: *process_start_ns,
                ready_ns: *ready_ns,
                guest: guest.clone(),
                sandbox: sandbox.clone(),
            })),
            Event::Exited(reason) => Some(Err(LaunchError::Stopped(describe_reason(reason)))),
            _ => None,
        })?
    }

    /// When the channel broke, the process usually died: say how.
    fn explain(&mut self, e: ControlError) -> LaunchError {
        if !matches!(e, ControlError::Closed | ControlError::Io(_)) {
            return LaunchError::Control(e);
        }
        for _ in 0..100 {
            match &mut self.process {
                Process::Child(child) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return LaunchError::Died(describe_exit(status));
                    }
                }
                Process::Adopted(pidfd) => {
                    if pidfd.wait_exit(Some(Duration::ZERO)).unwrap_or(false) {
                        return LaunchError::Died(self.describe_adopted_end());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        LaunchError::Control(e)
    }

    /// How an adopted process that ended did so: its real status if it is our child after
    /// all, else what its tombstone says.
    fn describe_adopted_end(&self) -> String {
        if let Process::Adopted(pidfd) = &self.process {
            if let Some(status) = pidfd.try_reap() {
                return describe_exit(status);
            }
        }
        match self
            .adopt
            .as_deref()
            .map(crate::process::adopt::read_tombstone)
        {
            Some(Ok(Some(reason))) => {
                format!("ended: {} (its tombstone)", describe_reason(&reason))
            }
            Some(Err(e)) => format!("ended; {e}"),
            _ => "ended without a tombstone (killed?); it is not our child, so its exit status \
                  is unknown"
                .into(),
        }
    }

    /// Waits for the process to exit and cleans up after it (cgroup, adopt socket). Closing
    /// the control channel first tells a VMM that is still running to stop; an adoptable
    /// VMM would go on without an owner, so it is sent [`Command::Stop`] first.
    ///
    /// An adopted process is not our child: its status is made up from its tombstone
    /// (exit code 1 for [`ExitReason::Failed`], else 0), and without a tombstone this
    /// fails with an error that says so.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        if self.adopt.is_some() {
            let _ = control::send(&mut self.writer, &Command::Stop);
        }
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        let status = match &mut self.process {
            Process::Child(child) => child.wait()?,
            Process::Adopted(pidfd) => {
                pidfd.wait_exit(None)?;
                match pidfd.try_reap() {
                    Some(status) => status,
                    None => self.status_from_tombstone()?,
                }
            }
        };
        self.exited = Some(status);
        self.clean_up();
        Ok(status)
    }

    fn status_from_tombstone(&self) -> std::io::Result<std::process::ExitStatus> {
        let socket = self.adopt.as_deref().unwrap_or(Path::new(""));
        match crate::process::adopt::read_tombstone(socket) {
            Ok(Some(ExitReason::Failed { .. })) => Ok(std::process::ExitStatus::from_raw(1 << 8)),
            Ok(Some(_)) => Ok(std::process::ExitStatus::from_raw(0)),
            Ok(None) => Err(std::io::Error::other(format!(
                "the adopted VMM process {} ended without a tombstone in {} (killed, e.g. \
                 SIGKILL or out of memory); it is not our child, so its exit status is unknown",
                self.pid(),
                crate::process::adopt::tombstone_path(socket).display()
            ))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// Kills the process (SIGKILL) and cleans up after it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            match &mut self.process {
                Process::Child(child) => {
                    let _ = child.kill();
                    if let Ok(status) = child.wait() {
                        self.exited = Some(status);
                    }
                }
                Process::Adopted(pidfd) => {
                    let _ = pidfd.signal(libc::SIGKILL);
                    if pidfd
                        .wait_exit(Some(Duration::from_secs(10)))
                        .unwrap_or(false)
                    {
                        let status = pidfd.try_reap();
                        self.exited =
                            Some(status.unwrap_or_else(|| {
                                std::process::ExitStatus::from_raw(libc::SIGKILL)
                            }));
                    }
                }
            }
        }
        self.clean_up();
    }

    /// After the process is gone: remove its cgroup and, if it could not (killed), its
    /// adopt socket.
    fn clean_up(&mut self) {
        self.remove_cgroup();
        if self.exited.is_some() {
            if let Some(socket) = &self.adopt {
                let refused = UnixStream::connect(socket)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
                if refused {
                    let _ = std::fs::remove_file(socket);
                }
            }
        }
    }

    fn remove_cgroup(&mut self) {
        let Some(name) = self.cgroup.take() else {
            return;
        };
        let removed = crate::sandbox::cgroup::detect()
            .and_then(|layout| crate::sandbox::VmCgroup::open(&layout, &name))
            .and_then(|mut cgroup| {
                cgroup.kill_on_cleanup(true);
                cgroup.remove()
            });
        if let Err(e) = removed {
            tracing::debug!("cgroup {name}: {e}");
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if !self.abandoned {
            self.kill();
        }
    }
}

/// For an adoptable launch: binds its socket and lets the VMM write the socket's directory
/// (tombstone, socket removal). Returns the launch to send.
fn prepare_adoption(
    launch: &Launch,
) -> Result<(Launch, Option<std::os::unix::net::UnixListener>), LaunchError> {
    let mut launch = launch.clone();
    let Some(socket) = &launch.adopt else {
        return Ok((launch, None));
    };
    let listener = crate::process::adopt::bind_listener(socket)?;
    let socket = crate::process::adopt::absolute_socket_path(socket)?;
    let dir = socket.parent().unwrap_or(Path::new("/")).to_path_buf();
    if launch.sandbox.enabled && !launch.sandbox.writable_dirs.contains(&dir) {
        launch.sandbox.writable_dirs.push(dir);
    }
    launch.adopt = Some(socket);
    Ok((launch, Some(listener)))
}

/// In the child between fork and exec (async-signal-safe calls only): the control socket
/// on [`CONTROL_FD`], the adopt listener on [`ADOPT_FD`], and for an adoptable VMM a session
/// of its own.
///
/// Why setsid rather than setpgid: both keep a terminal's Ctrl-C and a harness's
/// kill(-pgid) away from the VMM, but only a new session also detaches it from the
/// controlling terminal, so the terminal's hang-up (SIGHUP when the owner's shell exits)
/// and job-control stops (SIGTTOU) cannot reach it either. The VMM needs no terminal.
fn place_fds(control: i32, listener: Option<i32>) -> std::io::Result<()> {
    // SAFETY: fcntl, dup2 and setsid on descriptors this process owns.
    unsafe {
        // Copy both above the fixed numbers first: either may sit on 3 or 4 already, and
        // dup2 of an fd onto itself would keep its close-on-exec flag.
        let control = libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10);
        if control < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = match listener {
            Some(fd) => {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Some(copy)
            }
            None => None,
        };
        // dup2 clears close-on-exec on the copy.
        if libc::dup2(control, CONTROL_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(listener) = listener {
            if libc::dup2(listener, ADOPT_FD) < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The niceness of Linux's lowest scheduling priority.
pub const LOWEST_PRIORITY_NICE: i8 = 19;

/// In the child between fork and exec: its niceness, which every thread it starts inherits.
/// Lowering it below the spawner's needs CAP_SYS_NICE; the spawn then fails with EACCES.
/// Async-signal-safe, for other spawners' `pre_exec` too.
pub fn set_nice(nice: i8) -> std::io::Result<()> {
    // SAFETY: setpriority on the calling process; no memory is touched.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, libc::c_int::from(nice)) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// "exited with status 1", "killed by SIGSYS (a syscall outside the seccomp allowlist)".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(libc::SIGSYS)) => {
            "killed by SIGSYS: it made a system call outside its seccomp allowlist".into()
        }
        (None, Some(libc::SIGKILL)) => {
            "killed by SIGKILL (out of memory in its cgroup, or killed by hand)".into()
        }
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended in an unknown way".into(),
    }
}
