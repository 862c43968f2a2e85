//! The VMM process (`novacron vmm`): one VM per process, jailed, driven over the control
//! socket on fd 3. Its stdout is the guest's serial console.
//!
//! Order matters: the launch message is read while the process is single-threaded, so the
//! process-wide sandbox (cgroup, rlimits, namespaces, landlock) applies to every thread
//! created after it; each thread then installs its own seccomp filter.
//!
//! An adoptable VMM (`Launch.adopt`, listener on fd 4) does not stop when its control
//! channel closes: the VM goes on, events are dropped, and the control thread accepts the
//! next owner (docs/vm.md, "Adoption").

use std::io::BufReader;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest_kit::BuiltinGuest;
use crate::machine::layout::{pv_event, PAGE_SIZE};
use crate::machine::memory::fill_pattern;
use crate::machine::snapshot::{SnapshotError, SnapshotKind};
use crate::machine::vcpu::{monotonic_ns, EventSink, VcpuEvent};
use crate::machine::{BootSource, Machine, MachineConfig, MachineIo, VmError};
use crate::process::adopt::{self, Owner, OwnerError, ORPHAN_EXIT_WAIT, PARENT_GONE};
use crate::process::control::{
    self, AdoptedState, Command, Event, ExitReason, FillData, Launch, LaunchSource, SandboxProbe,
    SnapshotMode,
};
use crate::process::fd_passing::{FdQueue, FdStream};
use crate::process::input::Input;
use crate::process::jail::{self, JailError, JailedThreads};
use crate::process::launcher::{ADOPT_FD, CONTROL_FD};
use crate::process::migration::{self, ReceiveError};
use crate::process::result_port::ResultPort;
use crate::process::usage::current_rss_bytes;

/// Why the VMM process ends in failure. The text is the message of
/// [`ExitReason::Failed`] (and of stderr when the parent could not be told).
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmmError {
    #[error("vm id {0:?} is not 1-32 characters of [A-Za-z0-9_-]")]
    BadVmId(String),
    #[error(
        "the snapshot in {} needs {} MiB and {} vCPUs, but this VMM was sized for \
         {} MiB and {} vCPUs",
        dir.display(),
        needs.mem_bytes >> 20,
        needs.vcpus,
        sized.mem_bytes >> 20,
        sized.vcpus
    )]
    SnapshotTooBig {
        dir: PathBuf,
        needs: MachineConfig,
        sized: MachineConfig,
    },
    #[error("cannot start the control thread: {0}")]
    ControlThread(std::io::Error),
    #[error("internal: every event source is gone")]
    EventSourcesGone,
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    GuestKit(#[from] crate::guest_kit::GuestKitError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}

/// Entry point of `novacron vmm`. Returns the process exit code.
pub fn main() -> i32 {
    let process_start_ns = monotonic_ns();
    // SAFETY: the spawner put our end of the control socket on CONTROL_FD; nothing else
    // in this process owns that descriptor.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let writer = match control.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("novacron vmm: control socket on fd {CONTROL_FD} is unusable: {e}");
            return 2;
        }
    };
    let (control, fds) = FdStream::new(control);
    let mut reader = BufReader::new(control);
    let launch: Launch = match control::recv(&mut reader) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("novacron vmm: no launch message: {e}");
            return 2;
        }
    };
    let mut owner = Owner::new(writer, launch.adopt.is_some());
    let listener = match launch
        .adopt
        .is_some()
        .then(|| adopt::take_listener(ADOPT_FD))
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            let message = e.to_string();
            let _ = owner.send(&Event::Exited(ExitReason::Failed {
                message: message.clone(),
            }));
            eprintln!("novacron vmm: {message}");
            return 2;
        }
    };
    let mut inputs = None;
    let result = run(
        process_start_ns,
        &launch,
        Control {
            reader,
            listener,
            fds: &fds,
        },
        &mut owner,
        &mut inputs,
    );
    // An error of `run` goes to stderr when the parent could not be told (and it is not
    // that very failure).
    let (reason, quiet) = match result {
        Ok(reason) => (reason, true),
        Err(e) => {
            let message = e.to_string();
            let quiet = message.contains(PARENT_GONE);
            (ExitReason::Failed { message }, quiet)
        }
    };
    let code = match &reason {
        ExitReason::Failed { .. } => 1,
        _ => 0,
    };
    let told = finish(&launch, &reason, &mut owner, inputs.as_ref());
    if let (false, false, ExitReason::Failed { message }) = (told, quiet, &reason) {
        eprintln!("novacron vmm: {message}");
    }
    code
}

/// The control channel as `main` hands it to `run`.
struct Control<'a> {
    reader: BufReader<FdStream>,
    /// The adopt listener (adoptable VMMs only).
    listener: Option<OwnedFd>,
    fds: &'a FdQueue,
}

/// The VM has ended: leave the tombstone, tell the owner (waiting for one for a while if
/// nobody owns the VMM), and remove the adopt socket. True if an owner was told.
///
/// The tombstone is written before the wait, so it is there even if the VMM is killed
/// while it waits; a process that is still alive is adopted, not judged by its tombstone.
fn finish(
    launch: &Launch,
    reason: &ExitReason,
    owner: &mut Owner,
    inputs: Option<&Receiver<Input>>,
) -> bool {
    let Some(socket) = &launch.adopt else {
        return owner.send(&Event::Exited(reason.clone())).is_ok();
    };
    if let Err(e) = adopt::write_tombstone(socket, reason) {
        tracing::warn!(error = %e, "could not leave the exit tombstone");
    }
    if owner.is_owned() {
        let _ = owner.send(&Event::Exited(reason.clone()));
    }
    if !owner.is_owned() {
        if let Some(inputs) = inputs {
            wait_for_owner(&launch.vm_id, reason, owner, inputs);
        }
    }
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::debug!(error = %e, "could not remove the adopt socket; its owner will");
    }
    owner.is_owned()
}

/// Stays alive up to [`ORPHAN_EXIT_WAIT`] so that a new owner learns how the VM ended.
fn wait_for_owner(vm_id: &str, reason: &ExitReason, owner: &mut Owner, inputs: &Receiver<Input>) {
    let deadline = Instant::now() + ORPHAN_EXIT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inputs.recv_timeout(left) {
            Ok(Input::Adopted(writer)) => {
                let _ = owner.adopt(writer, vm_id, AdoptedState::Exited, Some(reason.clone()));
                let _ = owner.send(&Event::Exited(reason.clone()));
                if owner.is_owned() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("nobody adopted the ended VM; its tombstone says how it ended");
                return;
            }
        }
    }
}

/// Builds and runs the VM. `inputs` receives the event loop's input channel once there is
/// one, so that `finish` can wait for a new owner on it.
fn run(
    process_start_ns: u64,
    launch: &Launch,
    control: Control<'_>,
    writer: &mut Owner,
    inputs: &mut Option<Receiver<Input>>,
) -> Result<ExitReason, VmmError> {
    let fds = control.fds;
    if launch.vm_id.is_empty()
        || launch.vm_id.len() > 32
        || !launch
            .vm_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(VmmError::BadVmId(launch.vm_id.clone()));
    }
    // Without KVM nothing else matters; say so before the jail hides /dev from view.
    crate::machine::check_kvm()?;
    let jail = jail::enter(launch)?;
    let jailed_ns = monotonic_ns();
    let (tx, rx) = mpsc::channel::<Input>();
    spawn_control_reader(control, tx.clone(), &jail)?;
    let rx = &*inputs.insert(rx);
    let sink_tx = Mutex::new(tx);
    let events: EventSink = Arc::new(move |e| {
        if let Ok(tx) = sink_tx.lock() {
            let _ = tx.send(Input::Vcpu(e));
        }
    });
    let io = MachineIo {
        serial: Box::new(std::io::stdout()),
        events,
    };
    let vcpu_setup = |_index| jail.vcpu_thread_setup();
    let running = matches!(launch.source, LaunchSource::Incoming { .. });
    // Inputs that arrived while a migration ran, handled first by the event loop.
    let mut deferred: Vec<Input> = Vec::new();
    let mut machine = match &launch.source {
        LaunchSource::Incoming { .. } => {
            // Bytes from the network are parsed only under the seccomp filter.
            jail.lock_current_thread()?;
            migration::receive(launch, io, &jail, fds, writer, rx, &mut deferred)?
        }
        LaunchSource::Restore { dir } => {
            let saved = Machine::describe_snapshot(dir)?;
            if saved.mem_bytes > launch.mem_bytes || saved.vcpus > launch.vcpus {
                return Err(VmmError::SnapshotTooBig {
                    dir: dir.clone(),
                    needs: saved,
                    sized: MachineConfig {
                        mem_bytes: launch.mem_bytes,
                        vcpus: launch.vcpus,
                    },
                });
            }
            let joined = || jail.wait_cgroup_joined().map_err(Into::into);
            Machine::restore_gated(dir, io, &vcpu_setup, &joined)?
        }
        LaunchSource::Builtin { spec } => {
            let guest: BuiltinGuest = spec.parse()?;
            build(launch, io, &jail, BootSource::Builtin(guest))?
        }
        LaunchSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => build(
            launch,
            io,
            &jail,
            BootSource::Linux {
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                cmdline: cmdline.clone(),
            },
        )?,
    };
    let built_ns = monotonic_ns();
    jail.lock_current_thread()?;
    if !launch.start_paused && !running {
        machine.resume()?;
    }
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    tracing::debug!(
        jail_ms = ms(process_start_ns, jailed_ns),
        build_ms = ms(jailed_ns, built_ns),
        start_ms = ms(built_ns, monotonic_ns()),
        "VMM start phases"
    );
    writer.send(&Event::Ready {
        process_start_ns,
        ready_ns: monotonic_ns(),
        guest: machine.guest_description().to_string(),
        sandbox: jail.summary(),
    })?;
    let port = ResultPort::new(launch.result_blob.clone());
    event_loop(&mut machine, &launch.vm_id, rx, fds, writer, deferred, port)
}

/// Creates the machine; the KVM objects are made while the cgroup join may still be under
/// way, guest memory only once it is complete.
fn build(
    launch: &Launch,
    io: MachineIo,
    jail: &JailedThreads,
    source: BootSource,
) -> Result<Machine, VmmError> {
    let config = MachineConfig {
        mem_bytes: launch.mem_bytes,
        vcpus: launch.vcpus,
    };
    let vcpu_setup = |_index| jail.vcpu_thread_setup();
    let joined = || jail.wait_cgroup_joined().map_err(Into::into);
    let mut machine = Machine::create_gated(&config, io, &vcpu_setup, &joined)?;
    if let Some((gpa, len)) = launch.fill_pattern {
        fill_pattern(machine.memory(), gpa, len).map_err(VmError::from)?;
    }
    machine.load(&source)?;
    Ok(machine)
}

fn spawn_control_reader(
    control: Control<'_>,
    tx: Sender<Input>,
    jail: &JailedThreads,
) -> Result<(), VmmError> {
    let setup = jail.control_thread_setup();
    let Control {
        reader,
        listener,
        fds,
    } = control;
    let fds = fds.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Some(setup) = setup {
                if let Err(e) = setup() {
                    let _ = tx.send(Input::ControlClosed(format!("control thread jail: {e}")));
                    return;
                }
            }
            control_thread(reader, listener, &fds, &tx);
        })
        .map(|_| ())
        .map_err(VmmError::ControlThread)
}

/// Reads commands from the owner; for an adoptable VMM, then waits for the next owner and
/// reads its commands, and so on. Returns when the event loop is gone, or when the channel
/// closed and the VMM is not adoptable.
fn control_thread(
    mut reader: BufReader<FdStream>,
    listener: Option<OwnedFd>,
    fds: &FdQueue,
    tx: &Sender<Input>,
) {
    loop {
        let Some(why) = serve_owner(&mut reader, listener.as_ref(), tx) else {
            return;
        };
        if tx.send(Input::ControlClosed(why)).is_err() {
            return;
        }
        let Some(listener) = &listener else { return };
        let (conn, writer) = match adopt::accept_owner(listener).and_then(|conn| {
            let writer = conn.try_clone()?;
            Ok((conn, writer))
        }) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "the adopt socket failed: nobody can adopt this VMM");
                return;
            }
        };
        // Streams the previous owner sent and no command took are not the new owner's.
        fds.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if tx.send(Input::Adopted(writer)).is_err() {
            return;
        }
        reader = BufReader::new(FdStream::with_queue(conn, fds.clone()));
    }
}

/// Forwards the owner's commands until its connection ends (Some(why)) or the event loop
/// is gone (None). Meanwhile a second connection to the adopt socket is turned away.
fn serve_owner(
    reader: &mut BufReader<FdStream>,
    listener: Option<&OwnedFd>,
    tx: &Sender<Input>,
) -> Option<String> {
    loop {
        if let Some(listener) = listener {
            if !reader.buffer().contains(&b'\n') {
                match adopt::wait_readable(reader.get_ref().as_raw_fd(), listener) {
                    Ok(adopt::Ready::Control) => {}
                    Ok(adopt::Ready::Listener) => {
                        adopt::refuse_one(listener);
                        continue;
                    }
                    Err(e) => return Some(format!("waiting for the control channel: {e}")),
                }
            }
        }
        match control::recv::<Command>(reader) {
            Ok(cmd) => {
                if tx.send(Input::Command(cmd)).is_err() {
                    return None;
                }
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}

fn event_loop(
    machine: &mut Machine,
    vm_id: &str,
    rx: &Receiver<Input>,
    fds: &FdQueue,
    writer: &mut Owner,
    mut deferred: Vec<Input>,
    mut port: ResultPort,
) -> Result<ExitReason, VmmError> {
    let mut first_exit_reported = false;
    loop {
        let input = if deferred.is_empty() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Err(VmmError::EventSourcesGone),
            }
        } else {
            Some(deferred.remove(0))
        };
        if !first_exit_reported {
            if let Some(at_ns) = machine.first_io_exit_ns() {
                writer.send(&Event::FirstIoExit { at_ns })?;
                first_exit_reported = true;
            }
        }
        let Some(input) = input else { continue };
        match input {
            Input::Vcpu(event) => {
                if let Some(reason) = on_vcpu_event(machine, event, writer, &mut port)? {
                    return Ok(reason);
                }
            }
            Input::Command(Command::MigrateOut(cmd)) => {
                let exit = migration::migrate_out(machine, cmd, fds, rx, writer, &mut deferred)?;
                if let Some(reason) = exit {
                    return Ok(reason);
                }
            }
            Input::Command(cmd) => {
                if let Some(reason) = on_command(machine, cmd, writer)? {
                    return Ok(reason);
                }
            }
            Input::ControlClosed(why) if writer.adoptable() => writer.orphan(&why),
            Input::ControlClosed(why) => {
                // The owner is gone; a VM nobody controls must not keep running.
                machine.stop()?;
                return Ok(ExitReason::Failed {
                    message: format!("control channel lost: {why}"),
                });
            }
            Input::Adopted(stream) => {
                let state = match machine.lifecycle() {
                    crate::machine::Lifecycle::Running => AdoptedState::Running,
                    _ => AdoptedState::Paused,
                };
                writer.adopt(stream, vm_id, state, None)?;
                tracing::info!("adopted by a new owner");
            }
        }
    }
}

fn on_vcpu_event(
    machine: &mut Machine,
    event: VcpuEvent,
    writer: &mut Owner,
    port: &mut ResultPort,
) -> Result<Option<ExitReason>, VmmError> {
    let reason = match event {
        VcpuEvent::Report { report, .. } => {
            match port.on_report(machine.memory(), report.code, report.value) {
                Ok(Some(len)) => tracing::info!(len, "the guest handed over its result blob"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "the guest's result blob is refused"),
            }
            writer.send(&Event::Guest {
                code: report.code,
                value: report.value,
            })?;
            if report.code != pv_event::EXIT {
                return Ok(None);
            }
            ExitReason::GuestExit {
                status: report.value,
            }
        }
        VcpuEvent::Reset { .. } => ExitReason::Reset,
        VcpuEvent::Shutdown { .. } => ExitReason::Shutdown,
        VcpuEvent::Failed { vcpu, reason } => ExitReason::Failed {
            message: format!("vCPU {vcpu}: {reason}"),
        },
    };
    machine.stop()?;
    Ok(Some(reason))
}

fn on_command(
    machine: &mut Machine,
    cmd: Command,
    writer: &mut Owner,
) -> Result<Option<ExitReason>, VmmError> {
    let outcome: Result<Option<Event>, VmError> = match cmd {
        Command::Pause => machine.pause().map(|_| Some(Event::Paused)),
        Command::Resume => machine.resume().map(|_| Some(Event::Resumed)),
        Command::Stats => machine.sync_dirty_log().map(|_| {
            Some(Event::Stats {
                rss_bytes: current_rss_bytes(),
                guest_touched_bytes: machine.dirty.touched().count_pages() * PAGE_SIZE,
            })
        }),
        Command::Probe(probe) => Ok(Some(run_probe(&probe))),
        Command::Fill { gpa, len, data } => {
            fill(machine, gpa, len, data).map(|_| Some(Event::Filled))
        }
        Command::MigrateOut(_)
        | Command::MigrationReconnect { .. }
        | Command::CancelMigration { .. } => Ok(Some(Event::CommandFailed {
            message: "no migration is in progress".into(),
        })),
        Command::Stop => {
            machine.stop()?;
            return Ok(Some(ExitReason::Stopped));
        }
        Command::Snapshot {
            dir,
            mode,
            then_stop,
        } => {
            let event = snapshot(machine, &dir, mode, then_stop)?;
            writer.send(&event)?;
            if then_stop && matches!(event, Event::SnapshotDone { .. }) {
                return Ok(Some(ExitReason::Stopped));
            }
            return Ok(None);
        }
    };
    let event = outcome.unwrap_or_else(|e| {
        Some(Event::CommandFailed {
            message: e.to_string(),
        })
    });
    if let Some(event) = event {
        writer.send(&event)?;
    }
    Ok(None)
}

fn fill(machine: &Machine, gpa: u64, len: u64, data: FillData) -> Result<(), VmError> {
    let result = match data {
        FillData::Pattern => fill_pattern(machine.memory(), gpa, len),
        FillData::Random { seed } => {
            crate::machine::memory::fill_random(machine.memory(), gpa, len, seed)
        }
    };
    Ok(result?)
}

fn run_probe(probe: &SandboxProbe) -> Event {
    match probe {
        SandboxProbe::Open { path } => match std::fs::File::open(path) {
            Ok(_) => Event::ProbeResult {
                allowed: true,
                detail: format!("opened {}", path.display()),
            },
            Err(e) => Event::ProbeResult {
                allowed: false,
                detail: format!("open {}: {e}", path.display()),
            },
        },
        SandboxProbe::ForbiddenSyscall => {
            // SAFETY: socket(2) with constant arguments; the descriptor is closed at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: closing the descriptor socket(2) just returned.
                unsafe { libc::close(fd) };
            }
            Event::ProbeResult {
                allowed: true,
                detail: format!("socket(AF_INET) returned {fd}: no seccomp filter stopped it"),
            }
        }
    }
}

/// The length of the console (stdout) when it is a regular file.
fn console_len() -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat fills the buffer it is given and touches nothing else; fd 1 stays open.
    let rc = unsafe { libc::fstat(1, st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it wrote the whole struct.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(st.st_size as u64)
}

/// Pauses, snapshots, and resumes unless told to stop. A failed snapshot is reported and
/// the VM keeps running as before.
fn snapshot(
    machine: &mut Machine,
    dir: &Path,
    mode: SnapshotMode,
    then_stop: bool,
) -> Result<Event, VmError> {
    let was_running = machine.lifecycle() == crate::machine::Lifecycle::Running;
    machine.pause()?;
    let kind = match mode {
        SnapshotMode::Full => SnapshotKind::Full,
        SnapshotMode::Incremental => SnapshotKind::Incremental,
    };
    let result = machine.snapshot(dir, kind);
    // Paused, the console flushed: no byte of output is newer than the snapshot.
    let console_bytes = console_len();
    let ok = result.is_ok();
    if was_running && !(then_stop && ok) {
        machine.resume()?;
    }
    Ok(match result {
        Ok(stats) => Event::SnapshotDone {
            dir: dir.to_path_buf(),
            mode,
            pages: stats.pages,
            state_bytes: stats.state_bytes,
            micros: stats.elapsed.as_micros() as u64,
            console_bytes,
        },
        Err(e) => Event::CommandFailed {
            message: format!("snapshot to {} failed: {e}", dir.display()),
        },
    })
}
