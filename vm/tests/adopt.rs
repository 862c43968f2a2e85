//! Adoptable VMM processes end to end: the real `novacron vmm` binary, real KVM, the real
//! jail. A VMM whose parent lets go (the control socket closes, as when the parent dies)
//! keeps its guest running and is taken back through its adopt socket.
//!
//! The binary under test is `novacron` from the node crate, found next to this test's
//! directory (`target/<profile>/novacron`) or through `NOVACRON_EXE`. `cargo test
//! --workspace` builds it; with `cargo test -p novacron-vm` build it first
//! (`cargo build -p novacron-node`), or these tests say that they skipped. A stale binary
//! (older than this crate's changes) fails them.
#![cfg(feature = "kvm")]

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use novacron_vm::guest_kit::{BuiltinGuest, CounterParams};
use novacron_vm::machine::layout::pv_event;
use novacron_vm::process::adopt::{read_tombstone, tombstone_path, PidFd};
use novacron_vm::process::control::{
    self, AdoptedState, Event, ExitReason, Launch, LaunchSource, SandboxSettings,
};
use novacron_vm::process::launcher::{LaunchError, VmmProcess};

const READY: Duration = Duration::from_secs(20);
const REPORT: Duration = Duration::from_secs(20);

/// The novacron binary, or None (and why) to skip.
fn novacron_exe(test: &str) -> Option<PathBuf> {
    if let Err(e) = novacron_vm::machine::check_kvm() {
        eprintln!("skipping {test}: {e}");
        return None;
    }
    let exe = match std::env::var_os("NOVACRON_EXE") {
        Some(p) => PathBuf::from(p),
        None => {
            let me = std::env::current_exe().ok()?;
            // target/<profile>/deps/adopt-<hash> -> target/<profile>/novacron
            me.parent()?.parent()?.join("novacron")
        }
    };
    if !exe.is_file() {
        eprintln!(
            "skipping {test}: no novacron binary at {} (cargo build -p novacron-node, or set \
             NOVACRON_EXE)",
            exe.display()
        );
        return None;
    }
    Some(exe)
}

fn counter(words: u64, passes: u64) -> String {
    BuiltinGuest::Counter(CounterParams {
        words,
        passes,
        ..CounterParams::default()
    })
    .to_string()
}

fn launch(vm_id: &str, spec: &str, adopt: Option<&Path>) -> Launch {
    Launch {
        vm_id: vm_id.into(),
        source: LaunchSource::Builtin { spec: spec.into() },
        mem_bytes: 64 << 20,
        vcpus: 1,
        fill_pattern: None,
        start_paused: false,
        sandbox: SandboxSettings::default(),
        adopt: adopt.map(Path::to_path_buf),
        result_blob: None,
    }
}

fn vm_id(tag: &str) -> String {
    format!("adopt-{tag}-{}", std::process::id())
}

fn cgroup(vm_id: &str) -> Option<String> {
    Some(format!("vm-{vm_id}"))
}

/// Waits for a PROGRESS report of at least `min`; returns its value.
fn progress_at_least(vmm: &mut VmmProcess, min: u64) -> u64 {
    vmm.wait_for(REPORT, |e| match e {
        Event::Guest { code, value } if *code == pv_event::PROGRESS && *value >= min => {
            Some(Ok(*value))
        }
        Event::Exited(reason) => Some(Err(format!("the VM ended: {reason:?}"))),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("no progress report >= {min}: {e}"))
    .unwrap_or_else(|e| panic!("no progress report >= {min}: {e}"))
}

fn wait_exited(vmm: &mut VmmProcess) -> ExitReason {
    vmm.wait_for(REPORT, |e| match e {
        Event::Exited(reason) => Some(reason.clone()),
        _ => None,
    })
    .expect("an exited event")
}

fn poll_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_abandoned_vmm_keeps_running_and_is_adopted() {
    let Some(exe) = novacron_exe("an_abandoned_vmm_keeps_running_and_is_adopted") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vmm.sock");
    let id = vm_id("run");
    let spec = counter(4096, 1_000_000);
    let mut vmm =
        VmmProcess::spawn(&exe, &launch(&id, &spec, Some(&socket)), Stdio::null()).expect("spawn");
    let ready = vmm.wait_ready(READY).expect("ready");
    // The whole jail is on (as root: namespaces and landlock too) and adoption works in it.
    eprintln!("sandbox: {}", ready.sandbox);
    let ticks = vmm.start_ticks().expect("start ticks of the spawned VMM");
    assert_eq!(
        novacron_vm::process::adopt::process_start_ticks(vmm.pid()),
        Some(ticks)
    );
    let before = progress_at_least(&mut vmm, 2);

    // The parent lets go: the control socket closes, nobody kills the process.
    let pid = vmm.abandon();
    // A session of its own: a terminal's Ctrl-C or a kill of our process group misses it.
    // SAFETY: getsid with a pid.
    assert_eq!(
        unsafe { libc::getsid(pid as libc::pid_t) },
        pid as libc::pid_t
    );
    let watch = PidFd::open(pid).unwrap();
    assert!(
        !watch.wait_exit(Some(Duration::from_millis(300))).unwrap(),
        "the VMM ended when its control channel closed"
    );
    assert!(!tombstone_path(&socket).exists());

    let (mut vmm, adopted) = VmmProcess::adopt(&socket, pid, cgroup(&id)).expect("adopt");
    assert_eq!(adopted.vm_id, id);
    assert_eq!(adopted.state, AdoptedState::Running);
    assert_eq!(adopted.exit, None);
    let (code, last) = adopted.last_guest.expect("the newest guest report");
    assert!(code == pv_event::PROGRESS && last >= before, "{adopted:?}");
    assert_eq!(vmm.pid(), pid);
    assert_eq!(vmm.start_ticks(), Some(ticks));
    // The guest kept running: newer reports than any before the adoption.
    progress_at_least(&mut vmm, last + 1);

    // One owner at a time: a second connection is turned away, saying why.
    let mut second = BufReader::new(UnixStream::connect(&socket).unwrap());
    match control::recv::<Event>(&mut second) {
        Ok(Event::CommandFailed { message }) => assert!(message.contains("owner"), "{message}"),
        other => panic!("a second connection got {other:?}"),
    }
    let err = VmmProcess::adopt(&socket, pid, None)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("already has an owner"), "{err}");
    // ... and the refused attempt did not hurt the VM or its owner.
    progress_at_least(&mut vmm, last + 2);

    vmm.send(&control::Command::Stop).unwrap();
    assert_eq!(wait_exited(&mut vmm), ExitReason::Stopped);
    let status = vmm.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(read_tombstone(&socket).unwrap(), Some(ExitReason::Stopped));
    assert!(
        !socket.exists(),
        "the VMM removes its adopt socket on a clean exit"
    );
}

#[test]
fn a_guest_that_ends_while_orphaned_reports_through_adoption() {
    let Some(exe) = novacron_exe("a_guest_that_ends_while_orphaned_reports_through_adoption")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vmm.sock");
    let id = vm_id("exit");
    let spec = counter(4096, 200);
    let mut vmm =
        VmmProcess::spawn(&exe, &launch(&id, &spec, Some(&socket)), Stdio::null()).expect("spawn");
    vmm.wait_ready(READY).expect("ready");
    let pid = vmm.abandon();
    // The tombstone appears when the guest has ended; the process waits for an owner.
    poll_until("the tombstone", Duration::from_secs(25), || {
        tombstone_path(&socket).exists()
    });
    let watch = PidFd::open(pid).unwrap();
    assert!(!watch.wait_exit(Some(Duration::ZERO)).unwrap());

    let (mut vmm, adopted) = VmmProcess::adopt(&socket, pid, cgroup(&id)).expect("adopt");
    let exit = ExitReason::GuestExit { status: 0 };
    assert_eq!(adopted.state, AdoptedState::Exited);
    assert_eq!(adopted.exit, Some(exit.clone()));
    assert_eq!(adopted.last_guest, Some((pv_event::EXIT, 0)));
    assert!(adopted.dropped_events >= 1, "{adopted:?}");
    assert_eq!(wait_exited(&mut vmm), exit);
    let status = vmm.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(read_tombstone(&socket).unwrap(), Some(exit));
}

#[test]
fn without_adopt_the_vm_stops_when_the_channel_closes() {
    let Some(exe) = novacron_exe("without_adopt_the_vm_stops_when_the_channel_closes") else {
        return;
    };
    let id = vm_id("plain");
    let spec = counter(4096, 1_000_000);
    let mut vmm = VmmProcess::spawn(&exe, &launch(&id, &spec, None), Stdio::null()).expect("spawn");
    vmm.wait_ready(READY).expect("ready");
    assert!(vmm.adopt_socket().is_none());
    let pid = vmm.abandon();
    let watch = PidFd::open(pid).unwrap();
    assert!(
        watch.wait_exit(Some(Duration::from_secs(20))).unwrap(),
        "a VMM that is not adoptable must stop when its owner is gone"
    );
    let status = watch.try_reap().expect("our child");
    assert_eq!(status.code(), Some(1), "{status:?}");
    // Its cgroup is the parent's to remove; a later owner would; here the test does.
    let _ = novacron_vm::sandbox::cgroup::detect()
        .and_then(|l| novacron_vm::sandbox::VmCgroup::open(&l, &format!("vm-{id}")))
        .and_then(|mut c| {
            c.kill_on_cleanup(true);
            c.remove()
        });
}

#[test]
fn adopting_the_wrong_pid_or_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vmm.sock");
    // No such process.
    let err = VmmProcess::adopt(&socket, 0x3fff_fff0, None)
        .err()
        .expect("no such process");
    assert!(matches!(err, LaunchError::Adopt { .. }), "{err}");
    assert!(err.to_string().contains("no such process"), "{err}");
    // A live process that is not a VMM, and a socket nobody listens on.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let err = VmmProcess::adopt(&socket, sleeper.id(), None)
        .err()
        .expect("not the VMM");
    assert!(err.to_string().contains("not this VM's VMM"), "{err}");
    assert!(err.to_string().contains("vmm.sock"), "{err}");
    // The refused adoption left the process alone.
    assert!(sleeper.try_wait().unwrap().is_none());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(listener);
    let missing = dir.path().join("missing").join("vmm.sock");
    let err = VmmProcess::adopt(&missing, std::process::id(), None)
        .err()
        .expect("missing socket");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_paused_vm_is_adopted_paused_and_an_adopted_vmm_can_be_killed() {
    let Some(exe) = novacron_exe("a_paused_vm_is_adopted_paused_and_an_adopted_vmm_can_be_killed")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vmm.sock");
    let id = vm_id("paused");
    let mut l = launch(&id, &counter(4096, 1_000_000), Some(&socket));
    l.start_paused = true;
    let mut vmm = VmmProcess::spawn(&exe, &l, Stdio::null()).expect("spawn");
    vmm.wait_ready(READY).expect("ready");
    let pid = vmm.abandon();

    let (mut vmm, adopted) = VmmProcess::adopt(&socket, pid, cgroup(&id)).expect("adopt");
    assert_eq!(adopted.state, AdoptedState::Paused);
    assert_eq!(
        adopted.last_guest, None,
        "a paused guest reported {adopted:?}"
    );
    vmm.send(&control::Command::Resume).unwrap();
    progress_at_least(&mut vmm, 1);

    // Killed outright: no tombstone, and the owner removes the socket the VMM could not.
    let watch = PidFd::open(pid).unwrap();
    vmm.kill();
    assert!(watch.wait_exit(Some(Duration::ZERO)).unwrap());
    assert!(!socket.exists(), "the killed VMM's socket file stays");
    assert_eq!(read_tombstone(&socket).unwrap(), None);
    let err = VmmProcess::adopt(&socket, pid, None).err().expect("gone");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
}
