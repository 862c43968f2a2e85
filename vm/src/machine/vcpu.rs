//! vCPU threads. Each vCPU lives on its own thread, which owns its `VcpuFd`, runs `KVM_RUN`
//! and emulates port I/O. The control thread talks to it through commands while it is
//! parked, and stops a running vCPU by setting the pause flag and kicking the thread with
//! a signal until it leaves `KVM_RUN` (a kick that lands just before `KVM_RUN` is retried,
//! so no wake-up is lost).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::machine::devices::pv_port::PvReport;
use crate::machine::devices::{Devices, PioOutcome};

/// Something a vCPU thread tells the control thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    /// A paravirtual-port report.
    Report { vcpu: usize, report: PvReport },
    /// The guest pulsed the i8042 reset line.
    Reset { vcpu: usize },
    /// The guest triple-faulted or powered off (KVM_EXIT_SHUTDOWN / SYSTEM_EVENT).
    Shutdown { vcpu: usize },
    /// KVM_RUN failed or returned an exit this VMM cannot handle; the vCPU stopped.
    Failed { vcpu: usize, reason: String },
}

type VcpuCall = Box<dyn FnOnce(&mut VcpuFd) + Send>;

enum Command {
    Run,
    Call(VcpuCall),
    Exit,
}

/// Where vCPU threads deliver their events (called on the vCPU thread: keep it short).
pub type EventSink = Arc<dyn Fn(VcpuEvent) + Send + Sync>;

/// State shared by the control thread and every vCPU thread.
pub struct VcpuShared {
    pub devices: Arc<Devices>,
    pub events: EventSink,
    pause_requested: AtomicBool,
    /// CLOCK_MONOTONIC nanoseconds of the first port-I/O exit (0 until it happens).
    first_io_exit_ns: AtomicU64,
}

impl VcpuShared {
    pub fn new(devices: Arc<Devices>, events: EventSink) -> Arc<Self> {
        Arc::new(VcpuShared {
            devices,
            events,
            pause_requested: AtomicBool::new(true),
            first_io_exit_ns: AtomicU64::new(0),
        })
    }

    /// CLOCK_MONOTONIC time of the guest's first port-I/O exit, if it happened.
    pub fn first_io_exit_ns(&self) -> Option<u64> {
        match self.first_io_exit_ns.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on this host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct VcpuThread {
    index: usize,
    commands: Sender<Command>,
    running: Arc<AtomicBool>,
    pthread: libc::pthread_t,
    join: Option<JoinHandle<()>>,
}

/// Work a vCPU thread does first, on itself (the sandbox installs its seccomp filter here).
/// A failure stops the vCPU with [`VcpuEvent::Failed`] and the error's text as reason.
pub type ThreadSetup = Box<dyn FnOnce() -> Result<(), SetupError> + Send>;

/// Why a thread's setup (or the work before guest memory is touched) failed; the
/// machine only reports its text. Boxed so `machine` does not depend on `process`.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// A vCPU thread that does not answer its owner.
#[derive(Debug, thiserror::Error)]
pub enum VcpuThreadError {
    #[error("vCPU {0} thread is gone")]
    Gone(usize),
    #[error("vCPU {0} thread died during a call")]
    DiedDuringCall(usize),
    #[error("vCPU {0} did not stop within 5 s")]
    DidNotStop(usize),
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs an empty handler without SA_RESTART so the signal makes
        // KVM_RUN return EINTR; the handler touches no state.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(kick_signal(), &act, std::ptr::null_mut());
        }
    });
}

impl VcpuThread {
    pub fn spawn(
        index: usize,
        fd: VcpuFd,
        shared: Arc<VcpuShared>,
        setup: Option<ThreadSetup>,
    ) -> std::io::Result<Self> {
        install_kick_handler();
        let (tx, rx) = mpsc::channel();
        let running = Arc::new(AtomicBool::new(false));
        let (id_tx, id_rx) = mpsc::channel();
        let thread_running = running.clone();
        let join = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                let _ = id_tx.send(unsafe { libc::pthread_self() });
                if let Some(setup) = setup {
                    if let Err(e) = setup() {
                        (shared.events)(VcpuEvent::Failed {
                            vcpu: index,
                            reason: e.to_string(),
                        });
                        return;
                    }
                }
                thread_main(index, fd, &shared, &thread_running, rx)
            })?;
        let pthread = id_rx
            .recv()
            .map_err(|_| std::io::Error::other("vCPU thread died at start"))?;
        Ok(VcpuThread {
            index,
            commands: tx,
            running,
            pthread,
            join: Some(join),
        })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// Runs `f` on the vCPU thread (which must be parked) and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuFd) -> R + Send + 'static,
    ) -> Result<R, VcpuThreadError> {
        let (tx, rx) = mpsc::channel();
        let call: VcpuCall = Box::new(move |fd| {
            let _ = tx.send(f(fd));
        });
        self.commands
            .send(Command::Call(call))
            .map_err(|_| VcpuThreadError::Gone(self.index))?;
        rx.recv()
            .map_err(|_| VcpuThreadError::DiedDuringCall(self.index))
    }

    /// Lets the vCPU enter the guest.
    pub fn run(&self, shared: &VcpuShared) -> Result<(), VcpuThreadError> {
        shared.pause_requested.store(false, Ordering::Release);
        self.running.store(true, Ordering::Release);
        self.commands
            .send(Command::Run)
            .map_err(|_| VcpuThreadError::Gone(self.index))
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn kick(&self) {
        // SAFETY: the thread is alive until joined in Drop; the handler is installed.
        unsafe { libc::pthread_kill(self.pthread, kick_signal()) };
    }
}

/// Stops every running vCPU and waits until each has left KVM_RUN.
pub fn pause_all(threads: &[VcpuThread], shared: &VcpuShared) -> Result<(), VcpuThreadError> {
    shared.pause_requested.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in threads {
        while t.is_running() {
            t.kick();
            if Instant::now() > deadline {
                return Err(VcpuThreadError::DidNotStop(t.index));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        if self.is_running() {
            // The owner failed to pause first; stop it anyway.
            while self.is_running() {
                self.kick();
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let _ = self.commands.send(Command::Exit);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn thread_main(
    index: usize,
    mut fd: VcpuFd,
    shared: &VcpuShared,
    running: &AtomicBool,
    commands: Receiver<Command>,
) {
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Run => {
                if let Some(event) = run_until_stopped(index, &mut fd, shared) {
                    (shared.events)(event);
                }
                running.store(false, Ordering::Release);
            }
            Command::Call(f) => f(&mut fd),
            Command::Exit => break,
        }
    }
}

/// Runs the guest until a pause is requested (returns None) or the guest stops itself.
fn run_until_stopped(index: usize, fd: &mut VcpuFd, shared: &VcpuShared) -> Option<VcpuEvent> {
    loop {
        if shared.pause_requested.load(Ordering::Acquire) {
            return None;
        }
        let exit = match fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => {
                return Some(VcpuEvent::Failed {
                    vcpu: index,
                    reason: format!("KVM_RUN failed: {e}"),
                })
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                note_first_io_exit(shared);
                match shared.devices.pio_write(port, data) {
                    PioOutcome::Continue => {}
                    PioOutcome::Report(report) => {
                        (shared.events)(VcpuEvent::Report {
                            vcpu: index,
                            report,
                        });
                        if report.code == crate::machine::layout::pv_event::EXIT {
                            return None;
                        }
                    }
                    PioOutcome::Reset => return Some(VcpuEvent::Reset { vcpu: index }),
                }
            }
            VcpuExit::IoIn(port, data) => {
                note_first_io_exit(shared);
                shared.devices.pio_read(port, data);
            }
            VcpuExit::MmioRead(_, data) => data.fill(0xff),
            VcpuExit::MmioWrite(..) => {}
            VcpuExit::Intr => {}
            VcpuExit::Hlt => {
                // Only without an in-kernel LAPIC; treat like a spin-free idle.
                std::thread::sleep(Duration::from_millis(1));
            }
            VcpuExit::Shutdown | VcpuExit::SystemEvent(..) => {
                return Some(VcpuEvent::Shutdown { vcpu: index })
            }
            VcpuExit::FailEntry(reason, cpu) => {
                return Some(VcpuEvent::Failed {
                    vcpu: index,
                    reason: format!("KVM entry failed: reason {reason:#x} on cpu {cpu}"),
                })
            }
            VcpuExit::InternalError => {
                return Some(VcpuEvent::Failed {
                    vcpu: index,
                    reason: "KVM internal error (emulation failure)".into(),
                })
            }
            other => {
                return Some(VcpuEvent::Failed {
                    vcpu: index,
                    reason: format!("unhandled vCPU exit {other:?}"),
                })
            }
        }
    }
}

fn note_first_io_exit(shared: &VcpuShared) {
    if shared.first_io_exit_ns.load(Ordering::Relaxed) == 0 {
        let _ = shared.first_io_exit_ns.compare_exchange(
            0,
            monotonic_ns(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}
