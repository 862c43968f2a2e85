//! End-to-end tests of the `process` backend: `ProcessVm` (from the node's
//! library) driving the real `novacron jail-run`, real cgroups, real namespaces. The jail
//! needs root; each test says why it skipped without it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use novacron_node::model::{Backend, VmSpec};
use novacron_node::vms::process_backend::{ExitOutcome, ProcessVm, CONSOLE_LOG, WORK_DIR};
use novacron_vm::sandbox::{cgroup, VmCgroup};

const EXE: &str = env!("CARGO_BIN_EXE_novacron");
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn usable(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {test}: the process jail needs root (namespaces, cgroups)");
        return false;
    }
    if let Err(e) = cgroup::detect() {
        eprintln!("skipped {test}: {e}");
        return false;
    }
    true
}

fn spec(command: &[&str], mem_mib: u64) -> VmSpec {
    VmSpec {
        name: None,
        backend: Backend::Process,
        guest: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        mem_mib,
        vcpus: 1,
        migration: vec![novacron_node::model::MigrationMode::Cold],
        prefill_mib: None,
        checkpoint_interval_s: None,
        downtime_budget_ms: None,
        files: Vec::new(),
        priority: None,
    }
}

/// A VM directory the jail user can traverse (tempdirs are 0700).
fn vm_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    dir
}

fn unique_id(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(CONSOLE_LOG)).unwrap_or_default()
}

/// Whether VM `id`'s cgroup exists (without removing it).
fn cgroup_exists(id: &str) -> bool {
    let layout = cgroup::detect().unwrap();
    match VmCgroup::open(&layout, &format!("proc-{id}")) {
        Ok(cg) => {
            cg.keep();
            true
        }
        Err(_) => false,
    }
}

fn poll_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(tag: &str, dir: &Path, command: &[&str], mem_mib: u64) -> (String, ProcessVm) {
    let id = unique_id(tag);
    let vm = ProcessVm::spawn(Path::new(EXE), &id, dir, &spec(command, mem_mib), true)
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    (id, vm)
}

fn finish(vm: &mut ProcessVm, dir: &Path) -> ExitOutcome {
    let outcome = vm.wait_exit(EXIT_TIMEOUT);
    eprintln!("outcome {outcome:?}\n--- console.log\n{}", console(dir));
    outcome.expect("the process VM did not end in time")
}

#[test]
fn output_lands_in_the_console_log_with_the_exit_code() {
    if !usable("output_lands_in_the_console_log_with_the_exit_code") {
        return;
    }
    let dir = vm_dir();
    let (id, mut vm) = start(
        "output",
        dir.path(),
        &[
            "/bin/sh",
            "-c",
            "echo hello from $(id -u) in $PWD; echo oops >&2; exit 7",
        ],
        32,
    );
    assert_eq!(finish(&mut vm, dir.path()), ExitOutcome::Exited { code: 7 });
    let log = console(dir.path());
    let work = dir.path().join(WORK_DIR);
    assert!(
        log.contains(&format!("hello from 65534 in {}", work.display())),
        "{log}"
    );
    assert!(log.contains("oops"), "{log}");
    assert!(!cgroup_exists(&id), "the cgroup outlived the VM");
}

#[test]
fn a_missing_program_is_exit_127_with_a_reason() {
    if !usable("a_missing_program_is_exit_127_with_a_reason") {
        return;
    }
    let dir = vm_dir();
    let (_, mut vm) = start("missing", dir.path(), &["/nonexistent/prog"], 32);
    assert_eq!(
        finish(&mut vm, dir.path()),
        ExitOutcome::Exited { code: 127 }
    );
    assert!(
        console(dir.path()).contains("/nonexistent/prog not found"),
        "{}",
        console(dir.path())
    );
}

#[test]
fn it_cannot_write_outside_its_work_dir() {
    if !usable("it_cannot_write_outside_its_work_dir") {
        return;
    }
    let dir = vm_dir();
    let escape = PathBuf::from(format!("/tmp/novacron-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&escape);
    let script = format!(
        "echo inside > $HOME/inside; echo x > {}; echo write-rc=$?",
        escape.display()
    );
    let (_, mut vm) = start("escape", dir.path(), &["/bin/sh", "-c", &script], 32);
    assert_eq!(finish(&mut vm, dir.path()), ExitOutcome::Exited { code: 0 });
    let log = console(dir.path());
    assert!(log.contains("write-rc=2"), "{log}");
    assert!(!escape.exists(), "{} appeared", escape.display());
    assert_eq!(
        std::fs::read_to_string(dir.path().join(WORK_DIR).join("inside")).unwrap(),
        "inside\n"
    );
}

#[test]
fn it_has_no_network_while_the_host_does() {
    if !usable("it_has_no_network_while_the_host_does") {
        return;
    }
    // dash has no /dev/tcp: bash is the small TCP client every host has.
    let bash = Path::new("/bin/bash");
    if !bash.exists() {
        eprintln!("skipped it_has_no_network_while_the_host_does: no /bin/bash");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");

    let outside = std::process::Command::new(bash)
        .args(["-c", &probe])
        .output()
        .unwrap();
    assert!(outside.status.success(), "{outside:?}");
    assert!(listener.accept().is_ok(), "the host probe did not arrive");

    let dir = vm_dir();
    let (_, mut vm) = start("net", dir.path(), &["/bin/bash", "-c", &probe], 32);
    let outcome = finish(&mut vm, dir.path());
    assert!(
        matches!(outcome, ExitOutcome::Exited { code } if code != 0),
        "{outcome:?}"
    );
    assert!(!console(dir.path()).contains("connected"));
    assert!(
        listener.accept().is_err(),
        "a connection from the jail arrived"
    );
}

#[test]
fn a_memory_hog_is_killed_by_the_oom_killer() {
    if !usable("a_memory_hog_is_killed_by_the_oom_killer") {
        return;
    }
    let dir = vm_dir();
    // tail keeps the last lines of an input without newlines: all of it.
    let (id, mut vm) = start("hog", dir.path(), &["/usr/bin/tail", "/dev/zero"], 16);
    let outcome = finish(&mut vm, dir.path());
    assert_eq!(
        outcome,
        ExitOutcome::Killed {
            signal: libc::SIGKILL,
            oom: true
        }
    );
    assert!(outcome.describe().contains("out of memory"));
    assert!(!cgroup_exists(&id));
}

fn counter(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(WORK_DIR).join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn pause_freezes_and_resume_continues() {
    if !usable("pause_freezes_and_resume_continues") {
        return;
    }
    let dir = vm_dir();
    let script = "i=0; while :; do i=$((i+1)); echo $i > count.tmp; mv count.tmp count; done";
    let (id, mut vm) = start("pause", dir.path(), &["/bin/sh", "-c", script], 32);
    poll_until("the counter to run", EXIT_TIMEOUT, || {
        counter(dir.path()) > 10
    });
    vm.pause().unwrap();
    let frozen = counter(dir.path());
    // Nothing to poll for: a frozen counter shows only as no change over a while.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        counter(dir.path()),
        frozen,
        "the counter moved while paused"
    );
    assert_eq!(vm.try_exit(), None);
    vm.resume().unwrap();
    poll_until("the counter to continue", EXIT_TIMEOUT, || {
        counter(dir.path()) > frozen + 10
    });
    let outcome = vm.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(
        outcome,
        ExitOutcome::Killed {
            signal: libc::SIGTERM,
            oom: false
        }
    );
    assert!(!cgroup_exists(&id));
}

#[test]
fn stop_terminates_then_kills_and_removes_the_cgroup() {
    if !usable("stop_terminates_then_kills_and_removes_the_cgroup") {
        return;
    }
    let dir = vm_dir();
    // Ignores SIGTERM (and so do the sleeps it starts): only SIGKILL ends it.
    let script = "trap '' TERM; echo ready > ready; while :; do sleep 1; done";
    let (id, mut vm) = start("stop", dir.path(), &["/bin/sh", "-c", script], 32);
    poll_until("the shell to start", EXIT_TIMEOUT, || {
        dir.path().join(WORK_DIR).join("ready").exists()
    });
    assert!(cgroup_exists(&id), "no cgroup while running");
    let started = Instant::now();
    let outcome = vm.stop(Duration::from_millis(300)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        matches!(outcome, ExitOutcome::Killed { signal, .. } if signal == libc::SIGKILL),
        "{outcome:?}"
    );
    assert!(!cgroup_exists(&id), "the cgroup outlived the stop");
}

#[test]
fn a_released_process_is_adopted_by_pid_and_start_ticks() {
    if !usable("a_released_process_is_adopted_by_pid_and_start_ticks") {
        return;
    }
    let dir = vm_dir();
    let script = "echo ready > ready; exec sleep 1000";
    let (id, vm) = start("adopt", dir.path(), &["/bin/sh", "-c", script], 32);
    // Stop it only once the command runs: a jail killed while it starts leaves no record.
    poll_until("the command to start", EXIT_TIMEOUT, || {
        dir.path().join(WORK_DIR).join("ready").exists()
    });
    let (pid, ticks) = vm.release();

    let wrong = ProcessVm::adopt(&id, dir.path(), pid, ticks + 1).unwrap_err();
    assert!(wrong.contains("reused the pid"), "{wrong}");
    let other = ProcessVm::adopt("someone-else", dir.path(), pid, ticks).unwrap_err();
    assert!(other.contains("is not `novacron jail-run"), "{other}");

    let mut adopted = ProcessVm::adopt(&id, dir.path(), pid, ticks).unwrap();
    assert_eq!((adopted.pid(), adopted.start_ticks()), (pid, ticks));
    assert_eq!(adopted.try_exit(), None);
    let outcome = adopted.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(
        outcome,
        ExitOutcome::Killed {
            signal: libc::SIGTERM,
            oom: false
        }
    );
    assert!(!cgroup_exists(&id));
    // The released process was this test's child: reap it.
    let mut status = 0;
    // SAFETY: waiting for our own (exited) child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
}
