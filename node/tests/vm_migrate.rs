//! End-to-end tests of VM migration between two real `novacron` processes on loopback:
//! `novacron vm receive` on one side, `novacron vm run --migrate-to` on the other, real
//! KVM, the real jail. The fault tests put a fault-injecting TCP proxy (tests/common) in
//! between and check that the VM is never lost and never runs twice.
//!
//! Each test skips with a message when /dev/kvm is unusable. Every wait has a timeout and
//! every process is killed (with its VMM) when its guard drops, so a hang fails the test
//! instead of blocking CI. The processes' output is printed on stderr (shown on failure).

mod common;

use common::guest::{counter, kvm_usable};
use std::time::{Duration, Instant};

use common::cli_migration::{
    dump, migrate_through_proxy, move_counter, result_lines, spawn_receiver, spawn_source,
    wait_both, EXIT_TIMEOUT,
};
use common::confirm_cutter::ConfirmCutter;
use common::proxy::{Corrupt, ProxyConfig};

/// Source -> destination bandwidth through the proxy in the fault tests: ~33 MB on the
/// wire then take ~4 s, so a fault lands mid-migration.
const FAULT_RATE_BPS: u64 = 8_000_000;
/// Bytes through the proxy (~1 s at FAULT_RATE_BPS, about a quarter of the migration)
/// after which a fault is injected.
const FAULT_AFTER_BYTES: u64 = 8_000_000;
/// Guest data filled before the fault tests' migrations (64 MiB at 16 MiB).
const FILL: &str = "16M:64M";
/// `vm run --migrate-to`'s exit status when the VM did not move and ran here.
const EXIT_NOT_MOVED: i32 = 3;

/// The hex blake3 after `prefix` on a line of `text`.
fn memory_hash(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in:\n{text}"));
    let hash = line.split_once(prefix).map(|(_, h)| h.trim()).unwrap_or("");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "expected 64 hex digits after {prefix:?}, got {line:?}"
    );
    hash.to_string()
}

/// A counter migrated mid-run finishes on the destination with the reference result; the
/// source prints no result.
fn counter_moves_mid_run(mode: &str) {
    if !kvm_usable(&format!("{mode} migration")) {
        return;
    }
    move_counter(mode, &[], &[]);
}

#[test]
fn live_migration_moves_a_running_counter() {
    counter_moves_mid_run("live");
}

#[test]
fn warm_migration_moves_a_running_counter() {
    counter_moves_mid_run("warm");
}

#[test]
fn cold_migration_moves_a_running_counter() {
    counter_moves_mid_run("cold");
}

#[test]
fn live_migration_of_a_dirtier_keeps_memory_identical() {
    if !kvm_usable("memory hash") {
        return;
    }
    let (mut dst, addr) = spawn_receiver(&["--verify-memory"]);
    let mut src = spawn_source(
        "builtin:dirtier",
        addr,
        1000,
        &["--mode", "live", "--verify-memory"],
    );
    let s = src.wait(EXIT_TIMEOUT);
    const DST: &str = "novacron: memory blake3 at switchover (destination): ";
    const SRC: &str = "novacron: memory blake3 at switchover (source): ";
    let dst_line = dst.wait_stderr_line(DST, Duration::from_secs(30));
    // The dirtier never exits: stop the destination now that it reported.
    dst.kill_tree();
    dump(&[&src, &dst]);
    assert!(s.success(), "the source failed: {s:?}");
    assert!(dst_line.is_some(), "the destination printed no memory hash");
    let src_hash = memory_hash(&src.stderr(), SRC);
    let dst_hash = memory_hash(&dst.stderr(), DST);
    assert_eq!(
        src_hash, dst_hash,
        "guest memory differs between source and destination at switchover"
    );
}

#[test]
fn json_progress_is_machine_readable() {
    if !kvm_usable("JSON progress") {
        return;
    }
    let (spec, expected) = counter(3);
    let (mut dst, addr) = spawn_receiver(&[]);
    let mut src = spawn_source(&spec, addr, 1000, &["--mode", "live", "--json"]);
    let (s, d) = wait_both(&mut src, &mut dst);
    assert!(s.success(), "the source failed: {s:?}");
    assert!(d.success(), "the destination failed: {d:?}");
    assert_eq!(result_lines(&dst.stdout()), vec![expected.as_str()]);
    assert!(result_lines(&src.stderr()).is_empty());
    let out = src.stdout();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a stdout line of --json is not JSON ({e}): {l:?}"))
        })
        .collect();
    let event = |v: &serde_json::Value| v["event"].as_str().unwrap_or("").to_string();
    let progress: Vec<_> = lines.iter().filter(|v| event(v) == "progress").collect();
    assert!(!progress.is_empty(), "no progress line");
    let mem = 256u64 << 20;
    for p in &progress {
        assert!(p["phase"].is_string(), "progress without a phase: {p}");
        assert!(p["round"].is_u64(), "progress without a round: {p}");
        assert!(p["bytes_sent"].is_u64(), "progress without bytes_sent: {p}");
        // A progress bar's figures: never past its total, which starts at the VM's size
        // (the first round) and grows only by what later rounds re-send.
        let (done, total) = (p["bytes_done"].as_u64(), p["bytes_total"].as_u64());
        assert!(
            done.zip(total).is_some_and(|(d, t)| d <= t),
            "progress past its total: {p}"
        );
        assert!(
            total.is_some_and(|t| t == 0 || t >= mem),
            "the first round covers the whole VM: {p}"
        );
    }
    let last = lines.last().expect("at least one JSON line");
    assert_eq!(event(last), "done", "the last line: {last}");
    assert_eq!(
        lines.iter().filter(|v| event(v) == "done").count(),
        1,
        "one done line"
    );
    assert!(
        lines
            .iter()
            .all(|v| ["progress", "done"].contains(&&*event(v))),
        "only progress and done events on a successful migration"
    );
    let summary = &last["summary"];
    let started = summary["started_ns"].as_u64().expect("summary.started_ns");
    let ended = summary["ended_ns"].as_u64().expect("summary.ended_ns");
    assert!(ended > started, "ended_ns {ended} <= started_ns {started}");
    assert!(
        summary["paused_ns"].is_u64(),
        "a live migration pauses the VM at switchover: {summary}"
    );
    let p = &summary["progress"];
    assert_eq!(p["phase"], "done", "{summary}");
    assert_eq!(p["bytes_done"], p["bytes_total"], "all done: {summary}");
    assert!(p["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{summary}");
    assert!(p["wire_bytes"].as_u64().is_some_and(|b| b > 0), "{summary}");
    assert!(
        p["bytes_skipped_zero"].as_u64().is_some_and(|b| b > 0),
        "a mostly empty guest skips zero chunks: {summary}"
    );
    let total_ms = last["total_ms"].as_f64().expect("total_ms");
    let downtime = last["downtime_bound_ms"]
        .as_f64()
        .expect("downtime_bound_ms");
    assert!(
        total_ms > 0.0 && downtime >= 0.0 && downtime <= total_ms,
        "{last}"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillDestinationVmm,
    KillSourceVmm,
    DropLinks,
    Stall,
    Corrupt,
}

/// Migrates a counter with `passes` passes (64 MiB of filled data) live through a
/// rate-limited proxy, injects `fault` mid-migration and checks the VM survived in
/// exactly one place.
fn migrate_with_fault(fault: Fault, passes: u64) {
    if !kvm_usable(&format!("{fault:?}")) {
        return;
    }
    let (spec, expected) = counter(passes);
    let (mut src, mut dst, proxy) = migrate_through_proxy(
        &spec,
        ProxyConfig {
            rate_bps: Some(FAULT_RATE_BPS),
            // Past 200 KB on the first data stream: inside chunk data, not padding.
            corrupt: (fault == Fault::Corrupt).then_some(Corrupt {
                stream: 1,
                offset: 256 * 1024,
                len: 64,
            }),
        },
        500,
        &["--mode", "live", "--fill-pattern", FILL],
    );
    let t0 = Instant::now();
    if fault != Fault::Corrupt {
        if !proxy.wait_forwarded(FAULT_AFTER_BYTES, Duration::from_secs(60)) {
            dump(&[&src, &dst]);
            panic!(
                "{fault:?}: only {} bytes went through the proxy in 60 s",
                proxy.forwarded()
            );
        }
        match fault {
            Fault::KillDestinationVmm => {
                dst.kill_vmm();
            }
            Fault::KillSourceVmm => {
                src.kill_vmm();
            }
            Fault::DropLinks => proxy.drop_all(),
            Fault::Stall => proxy.stall(),
            Fault::Corrupt => unreachable!(),
        }
        eprintln!(
            "{fault:?} injected {:?} after the source started, {} bytes forwarded",
            t0.elapsed(),
            proxy.forwarded()
        );
    }
    let (s, d) = wait_both(&mut src, &mut dst);
    eprintln!(
        "{fault:?}: {:?} in all; proxy: {} connections, {} bytes forwarded, {} bytes \
         corrupted",
        t0.elapsed(),
        proxy.connections(),
        proxy.forwarded(),
        proxy.corrupted()
    );
    if fault == Fault::Corrupt {
        assert_eq!(
            proxy.corrupted(),
            64,
            "the proxy did not corrupt the stream"
        );
    }

    // The destination never ran the guest to its end.
    assert!(
        result_lines(&dst.stdout()).is_empty(),
        "{fault:?}: the destination ran the guest"
    );
    assert!(
        !d.success(),
        "{fault:?}: the receiver exited 0 though no VM arrived"
    );
    assert!(
        !dst.stderr().contains("novacron: VM received"),
        "{fault:?}: the destination started the VM (the fault came too late?)"
    );
    if fault != Fault::KillDestinationVmm {
        assert!(
            dst.stderr().contains("incoming migration rolled back"),
            "{fault:?}: the receiver did not say the incoming migration rolled back"
        );
    }

    if fault == Fault::KillSourceVmm {
        // The VM died with its VMM; the destination must not have brought it back.
        assert!(
            !s.success(),
            "the source exited 0 though its VMM was killed"
        );
        assert!(
            result_lines(&src.stdout()).is_empty(),
            "the source printed a result though its VMM was killed"
        );
        let err = src.stderr().to_lowercase();
        assert!(
            err.contains("sigkill") || err.contains("killed") || err.contains("died"),
            "the source did not report that its VMM died"
        );
        return;
    }
    // Rolled back: the VM finished at the source, exactly once, and the exit status says
    // it did not move.
    assert_eq!(
        s.code(),
        Some(EXIT_NOT_MOVED),
        "{fault:?}: the source's exit status: {s:?}"
    );
    assert!(
        src.stderr()
            .contains("novacron: migration rolled back, the VM keeps running here"),
        "{fault:?}: the source did not report a rollback"
    );
    assert!(
        !src.stderr().contains("novacron: migrated in"),
        "{fault:?}: the source reported a completed migration"
    );
    assert_eq!(
        result_lines(&src.stdout()),
        vec![expected.as_str()],
        "{fault:?}: the source's result after the rollback"
    );
}

#[test]
fn destination_vmm_killed_mid_migration_rolls_back_to_the_source() {
    migrate_with_fault(Fault::KillDestinationVmm, 6);
}

#[test]
fn source_vmm_killed_mid_migration_is_not_started_at_the_destination() {
    migrate_with_fault(Fault::KillSourceVmm, 6);
}

#[test]
fn dropped_links_mid_migration_roll_back_to_the_source() {
    migrate_with_fault(Fault::DropLinks, 6);
}

#[test]
fn stalled_links_time_out_and_roll_back_to_the_source() {
    // The protocol timeout is 10 s and the guest keeps running during live pre-copy: it
    // must still be running when the source gives up.
    migrate_with_fault(Fault::Stall, 16);
}

#[test]
fn a_chunk_corrupted_in_flight_rolls_back_to_the_source() {
    migrate_with_fault(Fault::Corrupt, 6);
}

/// The guest ends while a live migration is still in pre-copy (64 MiB at 4 MB/s through
/// the proxy take ~9 s; two counter passes take ~2.5 s). Its result must appear exactly
/// once, the finished VM must not be started at the destination, and both sides must
/// exit.
#[test]
fn a_guest_that_ends_during_precopy_is_not_started_at_the_destination() {
    if !kvm_usable("guest exit during pre-copy") {
        return;
    }
    let (spec, expected) = counter(2);
    let (mut src, mut dst, _proxy) = migrate_through_proxy(
        &spec,
        ProxyConfig {
            rate_bps: Some(4_000_000),
            corrupt: None,
        },
        500,
        &["--mode", "live", "--fill-pattern", FILL],
    );
    let s = src.wait(EXIT_TIMEOUT);
    eprintln!("{}", src.dump());
    // Whatever the destination does, it must be done 30 s after the source exited.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dst.try_wait().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = dst.try_wait();
    dst.kill_tree();
    eprintln!("{}", dst.dump());
    let (src_out, dst_out) = (src.stdout(), dst.stdout());
    let mut results = result_lines(&src_out);
    results.extend(result_lines(&dst_out));
    assert_eq!(results, vec![expected.as_str()], "the result, exactly once");
    let moved = result_lines(&src_out).is_empty();
    assert_eq!(
        s.code(),
        Some(if moved { 0 } else { EXIT_NOT_MOVED }),
        "the source's exit status: {s:?}"
    );
    if !result_lines(&src_out).is_empty() {
        assert!(
            !dst.stderr().contains("novacron: VM received"),
            "the guest ended at the source, yet the destination started the VM"
        );
    }
    let d = d.expect("the receiver did not exit within 30 s of the source");
    if !result_lines(&src_out).is_empty() {
        assert!(!d.success(), "the receiver exited 0 though no VM arrived");
    }
}

/// The link fails after the source sent the state, and the destination's Confirm is lost:
/// the source cannot know whether the VM started there. It keeps the VM paused, reconnects,
/// asks (`Query`), learns from `novacron vm receive` that it started, and discards its
/// copy: the guest's result appears once, at the destination.
#[test]
fn a_lost_confirm_is_resolved_by_asking_the_destination() {
    if !kvm_usable("in-doubt migration") {
        return;
    }
    let (spec, expected) = counter(3);
    let (mut dst, dst_addr) = spawn_receiver(&[]);
    let cutter = ConfirmCutter::start(dst_addr);
    let mut src = spawn_source(&spec, cutter.addr, 1000, &["--mode", "live"]);
    let s = src.wait(EXIT_TIMEOUT);
    let d = dst.wait(EXIT_TIMEOUT);
    eprintln!("{}\n{}", src.dump(), dst.dump());
    assert!(cutter.cut(), "the cutter never saw a Switchover");
    assert!(
        cutter.connections() > 3,
        "the source never reconnected ({} connections)",
        cutter.connections()
    );
    assert!(
        src.stderr()
            .contains("the link failed after the VM state was sent"),
        "the source did not report the doubt"
    );
    assert!(s.success(), "source: {s:?}");
    assert!(d.success(), "destination: {d:?}");
    assert!(
        result_lines(&src.stdout()).is_empty(),
        "the source ran the guest too"
    );
    assert_eq!(result_lines(&dst.stdout()), vec![expected.as_str()]);
}

/// A destination that accepts at most 64 MiB refuses a 256 MiB VM with a reason naming the
/// sizes; the source keeps its VM, which finishes there.
#[test]
fn a_vm_too_large_for_the_destination_is_refused_and_stays_at_the_source() {
    if !kvm_usable("oversized migration") {
        return;
    }
    let (spec, expected) = counter(3);
    let (mut dst, dst_addr) = spawn_receiver(&["--max-mem", "64M"]);
    let mut src = spawn_source(&spec, dst_addr, 500, &["--mode", "live"]);
    let (s, d) = wait_both(&mut src, &mut dst);
    assert_eq!(s.code(), Some(EXIT_NOT_MOVED), "source: {s:?}");
    assert!(!d.success(), "the receiver exited 0 without a VM");
    let reason = src.stderr();
    assert!(
        reason.contains("migration rolled back")
            && reason.contains("exceeds the limit of 67108864 bytes"),
        "the source did not say why: {reason}"
    );
    assert_eq!(result_lines(&src.stdout()), vec![expected.as_str()]);
    assert!(result_lines(&dst.stdout()).is_empty());
}
