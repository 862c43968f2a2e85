//! A CLI migration that fails leaves the guest where it was. Before the destination
//! confirms, the source is authoritative: whatever fails — nobody listening, a destination
//! that closes before the handshake, one that dies mid-transfer, one that refuses — `vm run
//! --migrate-to` (and `vm migrate`) keeps the VM running here, says the migration rolled
//! back, prints the guest's result as an uninterrupted run would, and exits 3 ("the VM did
//! not move"). A destination that vanishes after the switchover leaves the migration in
//! doubt: the VM is never resumed here, it is saved paused, and `vm run` exits 4; restoring
//! the saved VM finishes the guest. Each failure point runs in every mode where the modes
//! differ (cold pauses before the hello, warm after it, live after pre-copy).
//!
//! Real processes, real KVM, the real jail; each test skips when /dev/kvm is unusable.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::cli_migration::{
    dump, migrate_through_proxy, result_lines, spawn_migrating, spawn_receiver, spawn_source,
    EXIT_TIMEOUT,
};
use common::confirm_cutter::ConfirmCutter;
use common::guest::{counter, kvm_usable};
use common::proc::Proc;
use common::proxy::ProxyConfig;

/// `vm run --migrate-to` when the VM did not move and ran here (docs/migration.md).
const EXIT_NOT_MOVED: i32 = 3;
/// `vm run --migrate-to` when the migration ended in doubt and the VM was saved paused.
const EXIT_IN_DOUBT: i32 = 4;
const ROLLED_BACK: &str = "novacron: migration rolled back, the VM keeps running here: ";
const MODES: [&str; 3] = ["live", "warm", "cold"];

/// The source ran the guest to its end after a rollback: its result once, on its stdout,
/// the rollback said with `why` in it, and exit status 3.
fn assert_ran_here(src: &Proc, status: ExitStatus, expected: &str, why: &str) {
    let err = src.stderr();
    assert_eq!(
        status.code(),
        Some(EXIT_NOT_MOVED),
        "{}: exit status {status:?}",
        src.name
    );
    assert_eq!(result_lines(&src.stdout()), vec![expected], "{}", src.name);
    let line = err
        .lines()
        .find(|l| l.contains(ROLLED_BACK))
        .unwrap_or_else(|| panic!("{}: no rollback message in:\n{err}", src.name));
    assert!(
        line.contains(why),
        "{}: the rollback does not say {why:?}: {line}",
        src.name
    );
    assert!(err.contains("novacron: the VM did not move to "), "{err}");
    assert!(!err.contains("novacron: migrated in"), "{err}");
}

/// `vm SUBCOMMAND` of `spec` migrating to `to` in `mode` half a second in, when no
/// receiver is ours to wait for: the process, once it exited, and its status.
fn run_alone(subcommand: &str, spec: &str, to: SocketAddr, mode: &str) -> (Proc, ExitStatus) {
    let mut src = spawn_migrating(subcommand, spec, to, 500, &["--mode", mode]);
    let s = src.wait(EXIT_TIMEOUT);
    dump(&[&src]);
    (src, s)
}

/// A port on loopback where nothing listens.
fn nothing_listening() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn a_migration_to_nothing_leaves_the_guest_running_here() {
    if !kvm_usable("migration to nothing") {
        return;
    }
    let (spec, expected) = counter(2);
    let to = nothing_listening();
    // `vm migrate` is the progress-bar variant of `vm run --migrate-to`.
    for subcommand in ["run", "migrate"] {
        let (src, s) = run_alone(subcommand, &spec, to, "live");
        assert_ran_here(&src, s, &expected, "cannot reach the destination");
        assert!(src.stderr().contains("refused"), "{}", src.stderr());
    }
    // With --json the failure is a JSON line and the guest's console goes to stderr.
    let mut src = spawn_source(&spec, to, 500, &["--json"]);
    let s = src.wait(EXIT_TIMEOUT);
    dump(&[&src]);
    assert_eq!(s.code(), Some(EXIT_NOT_MOVED));
    assert_eq!(result_lines(&src.stderr()), vec![expected.as_str()]);
    let failed: Vec<serde_json::Value> = src
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|v: &serde_json::Value| v["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "one failed line: {}", src.stdout());
    assert!(failed[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("cannot reach the destination")));
}

/// A destination that accepts every connection and closes it at once.
fn closing_destination() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    addr
}

#[test]
fn a_destination_that_closes_before_the_handshake_leaves_the_guest_here_in_each_mode() {
    if !kvm_usable("destination closing before the handshake") {
        return;
    }
    let (spec, expected) = counter(2);
    let to = closing_destination();
    for mode in MODES {
        let (src, s) = run_alone("run", &spec, to, mode);
        // The connection may break while the streams open (nothing reached the VMM) or
        // in the VMM's handshake; either way nothing moved.
        assert_ran_here(&src, s, &expected, "");
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Kills the `vm receive` process (not its VMM) while the source's migration is under way,
/// through a rate-limited proxy so the kill lands mid-transfer. The source rolls back
/// (resuming the VM it paused, in warm and cold mode), the guest finishes there once, and
/// the destination's VMM, whose owner is gone, neither starts the VM nor outlives it.
#[test]
fn a_destination_killed_mid_transfer_leaves_the_guest_here_in_each_mode() {
    if !kvm_usable("destination killed mid-transfer") {
        return;
    }
    let (spec, expected) = counter(6);
    for mode in MODES {
        let rate = ProxyConfig {
            rate_bps: Some(8_000_000),
            corrupt: None,
        };
        let extra = ["--mode", mode, "--fill-pattern", "16M:64M"];
        let (mut src, mut dst, proxy) = migrate_through_proxy(&spec, rate, 500, &extra);
        if !proxy.wait_forwarded(8_000_000, Duration::from_secs(60)) {
            dump(&[&src, &dst]);
            panic!(
                "{mode}: only {} bytes went through in 60 s",
                proxy.forwarded()
            );
        }
        let vmm = dst.children();
        dst.kill_only();
        let s = src.wait(EXIT_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vmm.iter().all(|&p| gone(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let lingering: Vec<i32> = vmm.iter().copied().filter(|&p| !gone(p)).collect();
        for &pid in &lingering {
            // SAFETY: kill(2) on the VMM this test's receiver spawned.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        dump(&[&src, &dst]);
        assert!(
            lingering.is_empty(),
            "{mode}: the destination's VMM {lingering:?} outlived its killed owner"
        );
        assert!(
            result_lines(&dst.stdout()).is_empty(),
            "{mode}: ran at the destination"
        );
        assert_ran_here(&src, s, &expected, "");
    }
}

#[test]
fn a_destination_that_refuses_leaves_the_guest_here_in_each_mode() {
    if !kvm_usable("refused migration") {
        return;
    }
    let (spec, expected) = counter(2);
    for mode in MODES {
        let (mut dst, addr) = spawn_receiver(&["--max-mem", "64M"]);
        let mut src = spawn_source(&spec, addr, 500, &["--mode", mode]);
        let s = src.wait(EXIT_TIMEOUT);
        let d = dst.wait(EXIT_TIMEOUT);
        dump(&[&src, &dst]);
        assert!(!d.success(), "{mode}: the receiver exited 0 without a VM");
        assert_ran_here(&src, s, &expected, "exceeds the limit of 67108864 bytes");
    }
    // A chunk store that broke after the receiver checked it: its VMM refuses, naming it.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut dst, addr) = spawn_receiver(&["--store", store.to_str().unwrap()]);
    break_store(&store);
    let mut src = spawn_source(&spec, addr, 500, &["--mode", "live"]);
    let s = src.wait(EXIT_TIMEOUT);
    let d = dst.wait(EXIT_TIMEOUT);
    dump(&[&src, &dst]);
    assert!(!d.success(), "the receiver exited 0 without a VM");
    assert_ran_here(&src, s, &expected, "chunk store");
}

/// Puts a file where the store's temp directory is: opening it fails.
fn break_store(store: &Path) {
    let tmp = store.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
}

/// The destination vanishes after the source sent the VM's state, before its confirm came
/// back: the source cannot know whether the VM runs there. It never resumes it; it asks
/// again for a minute, then saves the VM paused and exits 4 naming the directory. Restoring
/// that directory finishes the guest (the destination that vanished did not).
#[test]
fn a_destination_that_vanishes_before_confirming_leaves_the_guest_paused_and_saved() {
    if !kvm_usable("destination vanishing in doubt") {
        return;
    }
    let (spec, expected) = counter(3);
    let (mut dst, dst_addr) = spawn_receiver(&[]);
    let cutter = ConfirmCutter::start(dst_addr);
    let mut src = spawn_source(&spec, cutter.addr, 800, &["--mode", "live"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cutter.cut() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cutter.cut(), "no Switchover went through");
    dst.kill_tree();
    let s = src.wait(Duration::from_secs(180));
    dump(&[&src, &dst]);
    let err = src.stderr();
    assert_eq!(s.code(), Some(EXIT_IN_DOUBT), "{s:?}");
    assert!(err.contains("migration in doubt"), "{err}");
    assert!(
        !err.contains(ROLLED_BACK),
        "an in-doubt VM was resumed here"
    );
    assert!(
        result_lines(&src.stdout()).is_empty(),
        "the guest ran on here"
    );
    const SAVED: &str = "novacron: the VM is saved, paused, in ";
    let saved = err
        .lines()
        .find_map(|l| l.split_once(SAVED).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("the source did not say where it saved the VM:\n{err}"));
    let saved = saved
        .split_once(". ")
        .map_or(saved.as_str(), |(d, _)| d)
        .to_string();
    let mut restored = Proc::spawn("restore", &["vm", "restore", &saved]);
    let r = restored.wait(EXIT_TIMEOUT);
    dump(&[&restored]);
    let _ = std::fs::remove_dir_all(&saved);
    assert!(r.success(), "{r:?}");
    assert_eq!(result_lines(&restored.stdout()), vec![expected.as_str()]);
}
