//! The parent's side of a VMM process: spawn `novacron vmm` with a control socket on fd 3,
//! send it commands, read its events, and turn its death into a clear error.

use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::control::{self, Command, ControlError, Event, ExitReason, Launch};
use crate::vcpu::monotonic_ns;

/// The file descriptor number the VMM process finds its control socket on.
pub const CONTROL_FD: i32 = 3;

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
    child: Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// CLOCK_MONOTONIC ns just before the process was spawned.
    pub spawned_ns: u64,
    /// The VM's cgroup, which only the parent can remove once the process is gone.
    cgroup: Option<String>,
    exited: Option<std::process::ExitStatus>,
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
        let child_fd = child_end.as_raw_fd();
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("vmm").stdin(Stdio::null()).stdout(stdout);
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 of an fd we
        // own onto CONTROL_FD (dup2 clears close-on-exec on the copy).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(child_fd, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned_ns = monotonic_ns();
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        drop(child_end);
        let reader_end = parent_end.try_clone().map_err(ControlError::from)?;
        let mut process = VmmProcess {
            child,
            reader: BufReader::new(reader_end),
            writer: parent_end,
            spawned_ns,
            cgroup: launch
                .sandbox
                .enabled
                .then(|| crate::vmm_sandbox::cgroup_name(&launch.vm_id)),
            exited: None,
        };
        process.send_raw_with_streams(launch, streams)?;
        Ok(process)
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
        crate::fd_passing::send_with_streams(&mut self.writer, &line, streams)
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
        self.child.id()
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
            if let Ok(Some(status)) = self.child.try_wait() {
                return LaunchError::Died(describe_exit(status));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        LaunchError::Control(e)
    }

    /// Waits for the process to exit (closing its control channel first, which tells a
    /// VMM that is still running to stop) and removes its cgroup.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        let status = self.child.wait()?;
        self.exited = Some(status);
        self.remove_cgroup();
        Ok(status)
    }

    /// Kills the process (SIGKILL) and cleans up after it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
        self.remove_cgroup();
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
        self.kill();
    }
}

/// A reason a VM stopped, in words.
pub fn describe_reason(reason: &ExitReason) -> String {
    match reason {
        ExitReason::GuestExit { status } => format!("the guest exited with status {status}"),
        ExitReason::Reset => "the guest reset itself".into(),
        ExitReason::Shutdown => "the guest shut down".into(),
        ExitReason::Stopped => "stopped on request".into(),
        ExitReason::Failed { message } => message.clone(),
        ExitReason::MigratedAway => "the VM migrated away".into(),
    }
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
