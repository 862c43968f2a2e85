//! The VMM process (`novacron vmm`): one VM per process, jailed, driven over the control
//! socket on fd 3. Its stdout is the guest's serial console.
//!
//! Order matters: the launch message is read while the process is single-threaded, so the
//! process-wide sandbox (cgroup, rlimits, namespaces, landlock) applies to every thread
//! created after it; each thread then installs its own seccomp filter.

use std::io::BufReader;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::{
    self, Command, Event, ExitReason, FillData, Launch, LaunchSource, SandboxProbe, SnapshotMode,
};
use crate::fd_passing::{FdQueue, FdStream};
use crate::guest_kit::BuiltinGuest;
use crate::launcher::CONTROL_FD;
use crate::layout::{pv_event, PAGE_SIZE};
use crate::machine::{BootSource, Machine, MachineConfig, MachineIo, VmError};
use crate::memory::fill_pattern;
use crate::snapshot::SnapshotKind;
use crate::vcpu::{monotonic_ns, EventSink, VcpuEvent};
use crate::vmm_migration;
use crate::vmm_sandbox::{self, JailedThreads};

pub(crate) enum Input {
    Command(Command),
    ControlClosed(String),
    Vcpu(VcpuEvent),
}

/// Entry point of `novacron vmm`. Returns the process exit code.
pub fn main() -> i32 {
    let process_start_ns = monotonic_ns();
    // SAFETY: the spawner put our end of the control socket on CONTROL_FD; nothing else
    // in this process owns that descriptor.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut writer = match control.try_clone() {
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
    match run(process_start_ns, launch, reader, &fds, &mut writer) {
        Ok(reason) => {
            let code = match &reason {
                ExitReason::Failed { .. } => 1,
                _ => 0,
            };
            let _ = control::send(&mut writer, &Event::Exited(reason));
            code
        }
        Err(message) => {
            let reported = control::send(
                &mut writer,
                &Event::Exited(ExitReason::Failed {
                    message: message.clone(),
                }),
            );
            // The parent shows the error; stderr is for when it could not be told.
            if reported.is_err() && !message.contains(PARENT_GONE) {
                eprintln!("novacron vmm: {message}");
            }
            1
        }
    }
}

fn run(
    process_start_ns: u64,
    launch: Launch,
    reader: BufReader<FdStream>,
    fds: &FdQueue,
    writer: &mut UnixStream,
) -> Result<ExitReason, String> {
    if launch.vm_id.is_empty()
        || launch.vm_id.len() > 32
        || !launch
            .vm_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "vm id {:?} is not 1-32 characters of [A-Za-z0-9_-]",
            launch.vm_id
        ));
    }
    // Without KVM nothing else matters; say so before the jail hides /dev from view.
    crate::machine::check_kvm().map_err(|e| e.to_string())?;
    let jail = vmm_sandbox::enter(&launch)?;
    let jailed_ns = monotonic_ns();
    let (tx, rx) = mpsc::channel::<Input>();
    spawn_control_reader(reader, tx.clone(), &jail)?;
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
    let mut machine = match &launch.source {
        LaunchSource::Incoming { .. } => {
            // Bytes from the network are parsed only under the seccomp filter.
            jail.lock_current_thread()?;
            vmm_migration::receive(&launch, io, &jail, fds, writer)?
        }
        LaunchSource::Restore { dir } => {
            let saved = Machine::describe_snapshot(dir).map_err(|e| e.to_string())?;
            if saved.mem_bytes > launch.mem_bytes || saved.vcpus > launch.vcpus {
                return Err(format!(
                    "the snapshot in {} needs {} MiB and {} vCPUs, but this VMM was sized for \
                     {} MiB and {} vCPUs",
                    dir.display(),
                    saved.mem_bytes >> 20,
                    saved.vcpus,
                    launch.mem_bytes >> 20,
                    launch.vcpus
                ));
            }
            let joined = || jail.wait_cgroup_joined();
            Machine::restore_gated(dir, io, &vcpu_setup, &joined).map_err(|e| e.to_string())?
        }
        LaunchSource::Builtin { spec } => {
            let guest: BuiltinGuest = spec.parse().map_err(|e| format!("{e}"))?;
            build(&launch, io, &jail, BootSource::Builtin(guest))?
        }
        LaunchSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => build(
            &launch,
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
        machine.resume().map_err(|e| e.to_string())?;
    }
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    tracing::debug!(
        jail_ms = ms(process_start_ns, jailed_ns),
        build_ms = ms(jailed_ns, built_ns),
        start_ms = ms(built_ns, monotonic_ns()),
        "VMM start phases"
    );
    send(
        writer,
        &Event::Ready {
            process_start_ns,
            ready_ns: monotonic_ns(),
            guest: machine.guest_description().to_string(),
            sandbox: jail.summary(),
        },
    )?;
    event_loop(&mut machine, &rx, fds, writer)
}

/// Creates the machine; the KVM objects are made while the cgroup join may still be under
/// way, guest memory only once it is complete.
fn build(
    launch: &Launch,
    io: MachineIo,
    jail: &JailedThreads,
    source: BootSource,
) -> Result<Machine, String> {
    let config = MachineConfig {
        mem_bytes: launch.mem_bytes,
        vcpus: launch.vcpus,
    };
    let vcpu_setup = |_index| jail.vcpu_thread_setup();
    let joined = || jail.wait_cgroup_joined();
    let mut machine =
        Machine::create_gated(&config, io, &vcpu_setup, &joined).map_err(|e| e.to_string())?;
    if let Some((gpa, len)) = launch.fill_pattern {
        fill_pattern(machine.memory(), gpa, len).map_err(|e| e.to_string())?;
    }
    machine.load(&source).map_err(|e| e.to_string())?;
    Ok(machine)
}

const PARENT_GONE: &str = "cannot report to the parent";

pub(crate) fn send(writer: &mut UnixStream, event: &Event) -> Result<(), String> {
    control::send(writer, event).map_err(|e| format!("{PARENT_GONE}: {e}"))
}

fn spawn_control_reader(
    mut reader: BufReader<FdStream>,
    tx: Sender<Input>,
    jail: &JailedThreads,
) -> Result<(), String> {
    let setup = jail.control_thread_setup();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Some(setup) = setup {
                if let Err(e) = setup() {
                    let _ = tx.send(Input::ControlClosed(format!("control thread jail: {e}")));
                    return;
                }
            }
            loop {
                match control::recv::<Command>(&mut reader) {
                    Ok(cmd) => {
                        if tx.send(Input::Command(cmd)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Input::ControlClosed(e.to_string()));
                        return;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the control thread: {e}"))
}

fn event_loop(
    machine: &mut Machine,
    rx: &Receiver<Input>,
    fds: &FdQueue,
    writer: &mut UnixStream,
) -> Result<ExitReason, String> {
    let mut first_exit_reported = false;
    // Inputs that arrived while a migration ran, handled after it.
    let mut deferred: Vec<Input> = Vec::new();
    loop {
        let input = if deferred.is_empty() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("internal: every event source is gone".into())
                }
            }
        } else {
            Some(deferred.remove(0))
        };
        if !first_exit_reported {
            if let Some(at_ns) = machine.first_io_exit_ns() {
                send(writer, &Event::FirstIoExit { at_ns })?;
                first_exit_reported = true;
            }
        }
        let Some(input) = input else { continue };
        match input {
            Input::Vcpu(event) => {
                if let Some(reason) = on_vcpu_event(machine, event, writer)? {
                    return Ok(reason);
                }
            }
            Input::Command(Command::MigrateOut(cmd)) => {
                let exit =
                    vmm_migration::migrate_out(machine, cmd, fds, rx, writer, &mut deferred)?;
                if let Some(reason) = exit {
                    return Ok(reason);
                }
            }
            Input::Command(cmd) => {
                if let Some(reason) = on_command(machine, cmd, writer)? {
                    return Ok(reason);
                }
            }
            Input::ControlClosed(why) => {
                // The owner is gone; a VM nobody controls must not keep running.
                machine.stop().map_err(|e| e.to_string())?;
                return Ok(ExitReason::Failed {
                    message: format!("control channel lost: {why}"),
                });
            }
        }
    }
}

fn on_vcpu_event(
    machine: &mut Machine,
    event: VcpuEvent,
    writer: &mut UnixStream,
) -> Result<Option<ExitReason>, String> {
    let reason = match event {
        VcpuEvent::Report { report, .. } => {
            send(
                writer,
                &Event::Guest {
                    code: report.code,
                    value: report.value,
                },
            )?;
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
    machine.stop().map_err(|e| e.to_string())?;
    Ok(Some(reason))
}

fn on_command(
    machine: &mut Machine,
    cmd: Command,
    writer: &mut UnixStream,
) -> Result<Option<ExitReason>, String> {
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
            machine.stop().map_err(|e| e.to_string())?;
            return Ok(Some(ExitReason::Stopped));
        }
        Command::Snapshot {
            dir,
            mode,
            then_stop,
        } => {
            let event = snapshot(machine, &dir, mode, then_stop)?;
            send(writer, &event)?;
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
        send(writer, &event)?;
    }
    Ok(None)
}

fn fill(machine: &Machine, gpa: u64, len: u64, data: FillData) -> Result<(), VmError> {
    let result = match data {
        FillData::Pattern => fill_pattern(machine.memory(), gpa, len),
        FillData::Random { seed } => crate::memory::fill_random(machine.memory(), gpa, len, seed),
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

/// Pauses, snapshots, and resumes unless told to stop. A failed snapshot is reported and
/// the VM keeps running as before.
fn snapshot(
    machine: &mut Machine,
    dir: &Path,
    mode: SnapshotMode,
    then_stop: bool,
) -> Result<Event, String> {
    let was_running = machine.lifecycle() == crate::machine::Lifecycle::Running;
    machine.pause().map_err(|e| e.to_string())?;
    let kind = match mode {
        SnapshotMode::Full => SnapshotKind::Full,
        SnapshotMode::Incremental => SnapshotKind::Incremental,
    };
    let result = machine.snapshot(dir, kind);
    let ok = result.is_ok();
    if was_running && !(then_stop && ok) {
        machine.resume().map_err(|e| e.to_string())?;
    }
    Ok(match result {
        Ok(stats) => Event::SnapshotDone {
            dir: dir.to_path_buf(),
            mode,
            pages: stats.pages,
            state_bytes: stats.state_bytes,
            micros: stats.elapsed.as_micros() as u64,
        },
        Err(e) => Event::CommandFailed {
            message: format!("snapshot to {} failed: {e}", dir.display()),
        },
    })
}

/// Peak resident set size of this process. The VMM's memory only grows, so the peak is
/// the current size; getrusage needs no filesystem access, which the jail does not give.
fn current_rss_bytes() -> u64 {
    rusage().map_or(0, |u| u.ru_maxrss.max(0) as u64 * 1024)
}

fn rusage() -> Option<libc::rusage> {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

/// CPU time (user + system) this process used so far, all threads, ended ones included.
pub(crate) fn cpu_time_ns() -> u64 {
    let ns =
        |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000_000 + t.tv_usec.max(0) as u64 * 1000;
    rusage().map_or(0, |u| ns(u.ru_utime) + ns(u.ru_stime))
}
