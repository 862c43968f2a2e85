//! The TCP migration drivers on real KVM and real loopback sockets, in one process: a
//! counter guest moved mid-run in each mode finishes on the destination with the reference
//! result, and a chunk corrupted in flight rolls the migration back with the guest still
//! running (and finishing) on the source.
#![cfg(feature = "kvm")]

mod common;
use common::{io, kvm_usable, no_setup, wait_report, Console};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use novacron_mesh::chunks::{ChunkSize, ChunkStore, Level};
use novacron_vm::guest_kit::{counter_expected, result_line, BuiltinGuest, CounterParams};
use novacron_vm::machine::layout::pv_event;
use novacron_vm::machine::vcpu::VcpuEvent;
use novacron_vm::migration::destination::DestinationConfig;
use novacron_vm::migration::drive_destination::{
    run_destination, DestinationHost, DestinationOptions, DestinationOutcome,
};
use novacron_vm::migration::drive_source::{
    run_source, HostInput, Report, SourceHost, SourceOptions, SourceOutcome,
};
use novacron_vm::migration::keep_in_store::keep_memory;
use novacron_vm::migration::links::{accept, connect, new_session, PREAMBLE_LEN};
use novacron_vm::migration::messages::Mode;
use novacron_vm::{BootSource, Machine, MachineConfig};

const MEM_BYTES: u64 = 64 << 20;

fn params() -> CounterParams {
    CounterParams {
        words: 256 * 1024,
        passes: 6,
        ..CounterParams::default()
    }
}

struct QuietSource;

impl SourceHost for QuietSource {
    fn report(&mut self, _: &Report) {}
    fn in_doubt(&mut self) {}
    fn poll(&mut self) -> Option<HostInput> {
        None
    }
}

struct Dest {
    console: Option<(Console, Receiver<VcpuEvent>)>,
}

impl DestinationHost for Dest {
    fn create_machine(&mut self, config: &MachineConfig) -> Result<Machine, String> {
        let (io, console, rx) = io();
        self.console = Some((console, rx));
        Machine::create(config, io, &no_setup).map_err(|e| e.to_string())
    }
}

/// Starts a counter guest and migrates it to `addr` once it reported progress.
fn source_thread(
    addr: SocketAddr,
    mode: Mode,
) -> std::thread::JoinHandle<(SourceOutcome, String, Option<u64>)> {
    std::thread::spawn(move || {
        let (io_a, console_a, rx) = io();
        let config = MachineConfig {
            mem_bytes: MEM_BYTES,
            vcpus: 1,
        };
        let mut m = Machine::create(&config, io_a, &no_setup).unwrap();
        m.load(&BootSource::Builtin(BuiltinGuest::Counter(params())))
            .unwrap();
        m.resume().unwrap();
        wait_report(&rx, pv_event::PROGRESS, 1);
        let links = connect(addr, 2, new_session(), Duration::from_secs(5)).unwrap();
        let outcome = run_source(
            &mut m,
            links,
            [3; 16],
            &SourceOptions::new(mode),
            &mut QuietSource,
        );
        // After a rollback the guest must still run here and finish.
        let exit = matches!(outcome, SourceOutcome::RolledBack { .. })
            .then(|| wait_report(&rx, pv_event::EXIT, 0));
        drop(m);
        (outcome, console_a.text(), exit)
    })
}

fn options() -> DestinationOptions {
    DestinationOptions {
        config: DestinationConfig::default(),
        store: None,
        hash_memory: false,
    }
}

#[test]
fn a_counter_moved_mid_run_in_each_mode_keeps_its_result() {
    if !kvm_usable("migration over TCP") {
        return;
    }
    for mode in [Mode::Live, Mode::Warm, Mode::Cold] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let source = source_thread(listener.local_addr().unwrap(), mode);
        let links = accept(&listener, Duration::from_secs(60)).unwrap();
        let mut host = Dest { console: None };
        let outcome = run_destination(links, options(), &mut host);
        let DestinationOutcome::Running {
            mut machine,
            summary,
        } = outcome
        else {
            panic!("{mode:?}: destination did not start the VM");
        };
        let (source_outcome, source_text, _) = source.join().unwrap();
        let SourceOutcome::Moved(s) = source_outcome else {
            panic!("{mode:?}: source outcome {source_outcome:?}");
        };
        assert!(s.report.wire_bytes > 0 && summary.wire_bytes > 0);
        assert!(summary.resumed_ns.unwrap() > s.paused_ns.unwrap());
        let (console, rx) = host.console.take().unwrap();
        wait_report(&rx, pv_event::EXIT, 0);
        machine.stop().unwrap();
        assert_eq!(
            console.text().trim_end(),
            result_line(counter_expected(&params())),
            "{mode:?}"
        );
        assert!(
            source_text.is_empty(),
            "{mode:?}: source printed {source_text:?}"
        );
    }
}

/// Forwards connections to `target`, flipping 64 bytes of every data stream from `flip_at`
/// on (counted after its preamble): more than any archive padding, so the damage always
/// lands in a checked field or chunk bytes. (Every data stream: how the senders share the
/// chunks between them depends on scheduling, but together they carry megabytes.)
fn corrupting_proxy(target: SocketAddr, flip_at: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { return };
            let server = TcpStream::connect(target).unwrap();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(s2, c2, None));
            let flip = (n >= 1).then_some(PREAMBLE_LEN + flip_at);
            std::thread::spawn(move || pump(client, server, flip));
        }
    });
    addr
}

fn pump(mut from: TcpStream, mut to: TcpStream, flip: Option<usize>) {
    let mut buf = [0u8; 64 << 10];
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                if (at..at + 64).contains(&(seen + i)) {
                    *b ^= 0x5a;
                }
            }
        }
        seen += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_chunk_corrupted_in_flight_rolls_back_and_the_guest_finishes_on_the_source() {
    if !kvm_usable("migration rollback over TCP") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = corrupting_proxy(listener.local_addr().unwrap(), 20_000);
    let source = source_thread(proxy, Mode::Live);
    let links = accept(&listener, Duration::from_secs(60)).unwrap();
    let mut host = Dest { console: None };
    let outcome = run_destination(links, options(), &mut host);
    let DestinationOutcome::Failed { reason, .. } = outcome else {
        panic!("destination started a VM from a corrupt stream");
    };
    assert!(
        reason.contains("corrupt") || reason.contains("frame"),
        "{reason}"
    );
    let (source_outcome, source_text, exit) = source.join().unwrap();
    let SourceOutcome::RolledBack { reason, .. } = source_outcome else {
        panic!("source outcome {source_outcome:?}");
    };
    assert!(!reason.is_empty());
    assert_eq!(exit, Some(0));
    assert_eq!(
        source_text.trim_end(),
        result_line(counter_expected(&params()))
    );
}

/// Records the largest throttle any progress report showed.
#[derive(Default)]
struct Recorder {
    max_throttle: u8,
    reports: usize,
}

impl SourceHost for Recorder {
    fn report(&mut self, r: &Report) {
        self.max_throttle = self.max_throttle.max(r.throttle_percent);
        self.reports += 1;
    }
    fn in_doubt(&mut self) {}
    fn poll(&mut self) -> Option<HostInput> {
        None
    }
}

/// Migrates `m` over loopback to a fresh machine; returns both outcomes and the
/// destination's console.
fn migrate_machine(
    m: &mut Machine,
    opts: SourceOptions,
    dest_opts: DestinationOptions,
    host: &mut dyn SourceHost,
) -> (SourceOutcome, DestinationOutcome) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let session = new_session();
    let receiver = std::thread::spawn(move || {
        let links = accept(&listener, Duration::from_secs(30)).unwrap();
        let mut host = Dest { console: None };
        let outcome = run_destination(links, dest_opts, &mut host);
        // Keep the console alive as long as the machine.
        (outcome, host.console.map(|(c, _)| c))
    });
    let links = connect(addr, 2, session, Duration::from_secs(5)).unwrap();
    let outcome = run_source(m, links, session, &opts, host);
    let (dest, _console) = receiver.join().unwrap();
    (outcome, dest)
}

#[test]
fn auto_converge_throttles_a_guest_that_dirties_faster_than_the_budget() {
    if !kvm_usable("auto-converge") {
        return;
    }
    let (io_a, _console, rx) = io();
    let config = MachineConfig {
        mem_bytes: MEM_BYTES,
        vcpus: 1,
    };
    let mut m = Machine::create(&config, io_a, &no_setup).unwrap();
    // Unpaced: the guest rewrites its 16 MiB as fast as it can.
    m.load(&BootSource::Builtin(
        "builtin:dirtier:mib=16,rate=0,base=33554432"
            .parse()
            .unwrap(),
    ))
    .unwrap();
    m.resume().unwrap();
    wait_report(&rx, pv_event::STARTED, 0);
    let mut opts = SourceOptions::new(Mode::Live);
    opts.downtime_budget_ms = 0;
    // Past the first round the limit applies: the first round (all of memory) never
    // converges, so the throttle starts deterministically.
    opts.max_rounds = 1;
    opts.on_no_converge = novacron_vm::migration::source::NoConverge::Throttle;
    opts.hash_memory = true;
    let dest_opts = DestinationOptions {
        hash_memory: true,
        ..options()
    };
    let mut recorder = Recorder::default();
    let (outcome, dest) = migrate_machine(&mut m, opts, dest_opts, &mut recorder);
    let SourceOutcome::Moved(summary) = outcome else {
        panic!("not moved: {outcome:?}");
    };
    let DestinationOutcome::Running {
        mut machine,
        summary: dest_summary,
    } = dest
    else {
        panic!("the destination did not start the VM");
    };
    machine.stop().unwrap();
    assert!(
        recorder.max_throttle >= 20,
        "never throttled (max {}% over {} reports)",
        recorder.max_throttle,
        recorder.reports
    );
    assert!(summary.report.progress.round >= 2, "{summary:?}");
    assert_eq!(
        summary.report.throttle_percent, 0,
        "throttle lifted at the end"
    );
    assert!(summary.memory_blake3.is_some());
    assert_eq!(summary.memory_blake3, dest_summary.memory_blake3);
}

#[test]
fn a_vm_moved_back_to_a_host_that_kept_its_chunks_sends_only_what_changed() {
    if !kvm_usable("remigration") {
        return;
    }
    let store_dir = tempfile::tempdir().unwrap();
    let (io_a, _console_a, _rx) = io();
    let config = MachineConfig {
        mem_bytes: MEM_BYTES,
        vcpus: 1,
    };
    let mut a = Machine::create(&config, io_a, &no_setup).unwrap();
    a.load(&BootSource::Builtin(BuiltinGuest::Idle)).unwrap();
    novacron_vm::machine::memory::fill_pattern(a.memory(), 16 << 20, 8 << 20).unwrap();
    a.resume().unwrap();
    let (outcome, dest) = migrate_machine(
        &mut a,
        SourceOptions::new(Mode::Live),
        options(),
        &mut QuietSource,
    );
    let SourceOutcome::Moved(first) = outcome else {
        panic!("first move: {outcome:?}");
    };
    let store = ChunkStore::open(store_dir.path(), Level::new(1).unwrap()).unwrap();
    let kept = keep_memory(&mut a, &store, ChunkSize::K16).unwrap();
    assert!(kept.new_chunks >= 512, "{kept:?}");
    drop(a);
    let DestinationOutcome::Running { machine: mut b, .. } = dest else {
        panic!("first move did not start");
    };
    // One chunk changes on B; the rest is what A kept.
    novacron_vm::machine::memory::fill_random(b.memory(), 20 << 20, 16 << 10, 99).unwrap();
    let mut opts = SourceOptions::new(Mode::Live);
    opts.hash_memory = true;
    let back = DestinationOptions {
        store: Some(std::sync::Arc::new(
            ChunkStore::open(store_dir.path(), Level::new(1).unwrap()).unwrap(),
        )),
        hash_memory: true,
        ..options()
    };
    let (outcome, dest) = migrate_machine(&mut b, opts, back, &mut QuietSource);
    let SourceOutcome::Moved(second) = outcome else {
        panic!("second move: {outcome:?}");
    };
    let DestinationOutcome::Running {
        machine: mut c,
        summary,
    } = dest
    else {
        panic!("second move did not start");
    };
    c.stop().unwrap();
    assert!(summary.chunks_from_store >= 500, "{summary:?}");
    assert!(summary.chunks_received <= 8, "{summary:?}");
    assert!(
        second.report.wire_bytes * 20 < first.report.wire_bytes,
        "second {} vs first {}",
        second.report.wire_bytes,
        first.report.wire_bytes
    );
    assert_eq!(second.memory_blake3, summary.memory_blake3);
}
