//! In-process machine tests on real KVM: lifecycle, snapshots into real directories,
//! restore into a second machine, and dirty tracking across a failed snapshot.
#![cfg(feature = "kvm")]

mod common;
use common::{io, kvm_usable, no_setup, wait_report, Console};

use std::sync::mpsc::Receiver;

use novacron_vm::guest_kit::{
    counter_expected, counter_expected_output, result_line, BuiltinGuest, CounterParams,
    DirtierParams,
};
use novacron_vm::machine::layout::{pv_event, PAGE_SIZE};
use novacron_vm::machine::memory::hash_range;
use novacron_vm::machine::vcpu::VcpuEvent;
use novacron_vm::{BootSource, Lifecycle, Machine, MachineConfig, SnapshotKind};

fn boot(guest: &str, mem_bytes: u64) -> (Machine, Console, Receiver<VcpuEvent>) {
    let (io, console, rx) = io();
    let config = MachineConfig {
        mem_bytes,
        vcpus: 1,
    };
    let mut m = Machine::create(&config, io, &no_setup).unwrap();
    let guest: BuiltinGuest = guest.parse().unwrap();
    m.load(&BootSource::Builtin(guest)).unwrap();
    (m, console, rx)
}

#[test]
fn lifecycle_and_wrong_state_errors() {
    if !kvm_usable("lifecycle") {
        return;
    }
    let (mut m, console, rx) = boot("builtin:counter:words=1024,passes=100000", 64 << 20);
    assert_eq!(m.lifecycle(), Lifecycle::Created);
    m.resume().unwrap();
    wait_report(&rx, pv_event::PROGRESS, 2);
    m.pause().unwrap();
    assert_eq!(m.lifecycle(), Lifecycle::Paused);
    let err = m
        .load(&BootSource::Builtin(BuiltinGuest::Hello))
        .unwrap_err();
    assert!(err.to_string().contains("Paused"), "{err}");
    m.resume().unwrap();
    m.stop().unwrap();
    assert!(m.resume().is_err());
    assert!(console.text().is_empty());
}

#[test]
fn a_counter_printing_its_passes_prints_what_its_reference_says() {
    if !kvm_usable("counter progress") {
        return;
    }
    let params = CounterParams {
        words: 512,
        passes: 4,
        print_passes: true,
        ..CounterParams::default()
    };
    let (mut m, console, rx) = boot(&BuiltinGuest::Counter(params).to_string(), 64 << 20);
    m.resume().unwrap();
    wait_report(&rx, pv_event::EXIT, 0);
    m.stop().unwrap();
    assert_eq!(console.text(), counter_expected_output(&params));
    assert!(console.text().starts_with("pass=0000000000000001\n"));
}

#[test]
fn a_failed_snapshot_gives_its_dirty_pages_back() {
    if !kvm_usable("failed snapshot") {
        return;
    }
    let params = CounterParams {
        words: 32 * 1024,
        passes: 6,
        ..CounterParams::default()
    };
    let spec = BuiltinGuest::Counter(params).to_string();
    let (mut m, _, rx) = boot(&spec, 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    m.resume().unwrap();
    wait_report(&rx, pv_event::PROGRESS, 1);
    m.pause().unwrap();
    m.snapshot(&snap, SnapshotKind::Full).unwrap();
    m.resume().unwrap();
    // The full snapshot caught the guest in pass 2 at the latest, so pass 3 ran after it
    // and wrote every page of the range.
    wait_report(&rx, pv_event::PROGRESS, 3);
    m.pause().unwrap();
    // A snapshot into a path that cannot be a directory fails...
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    assert!(m
        .snapshot(&blocker.join("snap"), SnapshotKind::Incremental)
        .is_err());
    // ...and the next incremental one still carries every page written since the full one.
    let stats = m.snapshot(&snap, SnapshotKind::Incremental).unwrap();
    assert!(stats.pages >= params.words * 8 / PAGE_SIZE, "{stats:?}");
    drop(m);

    let (io, console, rx) = io();
    let mut restored = Machine::restore(&snap, io, &no_setup).unwrap();
    restored.resume().unwrap();
    wait_report(&rx, pv_event::EXIT, 0);
    restored.stop().unwrap();
    assert_eq!(
        console.text().trim_end(),
        result_line(counter_expected(&params))
    );
}

#[test]
fn restored_memory_is_identical_through_a_chain_of_layers() {
    if !kvm_usable("memory identity") {
        return;
    }
    let dirtier = DirtierParams {
        mib: 4,
        rate_mib_s: 0,
        ..DirtierParams::default()
    };
    let spec = BuiltinGuest::Dirtier(dirtier).to_string();
    let mem_bytes = 256 << 20;
    let (mut m, _, rx) = boot(&spec, mem_bytes);
    novacron_vm::machine::memory::fill_pattern(
        m.memory(),
        novacron_vm::machine::layout::PATTERN_BASE,
        8 << 20,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pages = dirtier.mib * 256;
    m.snapshot(dir.path(), SnapshotKind::Full).unwrap();
    for lap in 1..=2 {
        m.resume().unwrap();
        wait_report(&rx, pv_event::PROGRESS, lap * pages + 100);
        m.pause().unwrap();
        m.snapshot(dir.path(), SnapshotKind::Incremental).unwrap();
    }
    let (io, _, _) = io();
    let restored = Machine::restore(dir.path(), io, &no_setup).unwrap();
    assert_eq!(restored.lifecycle(), Lifecycle::Paused);
    assert_eq!(
        hash_range(m.memory(), 0, mem_bytes).unwrap(),
        hash_range(restored.memory(), 0, mem_bytes).unwrap()
    );
    let regs_a = m.capture_state().unwrap();
    let regs_b = restored.capture_state().unwrap();
    assert_eq!(regs_a.vcpus[0].regs, regs_b.vcpus[0].regs);
    assert_eq!(regs_a.vcpus[0].sregs, regs_b.vcpus[0].sregs);
}
