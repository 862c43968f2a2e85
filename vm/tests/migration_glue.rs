//! The machine-side glue of a migration on real KVM, without a driver or sockets: rounds of
//! chunks read from a running guest, written into a second machine created for the first's
//! state, which then finishes the guest's work.
#![cfg(feature = "kvm")]

mod common;
use common::{io, kvm_usable, no_setup, wait_report};

use std::collections::BTreeMap;

use novacron_mesh::chunks::{ChunkRef, ChunkSize};
use novacron_vm::guest_kit::{counter_expected, result_line, BuiltinGuest, CounterParams};
use novacron_vm::machine::layout::pv_event;
use novacron_vm::machine::memory::{hash_range, DirtyConsumer};
use novacron_vm::{BootSource, Machine, MachineConfig};

const MEM_BYTES: u64 = 64 << 20;
const SIZE: ChunkSize = ChunkSize::K16;

/// What the destination holds so far: chunk index -> bytes (`None` = all zero).
type Held = BTreeMap<u64, Option<Vec<u8>>>;

/// Reads the non-zero chunks of `refs` from `m` into `held`, as a source sends them.
fn send(m: &Machine, refs: &[ChunkRef], held: &mut Held) {
    for r in refs {
        let bytes = (!r.is_zero()).then(|| m.read_chunk(r.index, SIZE).unwrap());
        if let Some(b) = &bytes {
            assert_eq!(b.len(), r.len as usize);
        }
        held.insert(r.index, bytes);
    }
}

#[test]
fn rounds_of_chunks_move_a_running_counter_to_a_second_machine() {
    if !kvm_usable("migration glue") {
        return;
    }
    let params = CounterParams {
        words: 256 * 1024,
        passes: 12,
        ..CounterParams::default()
    };
    let (io_a, console_a, rx) = io();
    let config = MachineConfig {
        mem_bytes: MEM_BYTES,
        vcpus: 1,
    };
    let mut source = Machine::create(&config, io_a, &no_setup).unwrap();
    source
        .load(&BootSource::Builtin(BuiltinGuest::Counter(params)))
        .unwrap();
    let all = source.geometry(SIZE).unwrap().chunk_count();
    assert_eq!(all, MEM_BYTES / SIZE.bytes() as u64);

    // Round 0, while the guest runs: take (and drop) the round set first, then all memory.
    source.resume().unwrap();
    wait_report(&rx, pv_event::PROGRESS, 1);
    source
        .take_dirty_pages(DirtyConsumer::MigrationRound)
        .unwrap();
    let round0 = source.chunk_refs(None, SIZE).unwrap();
    assert_eq!(round0.len() as u64, all);
    assert!(round0.iter().enumerate().all(|(i, r)| r.index == i as u64));
    let mut held = Held::new();
    send(&source, &round0, &mut held);

    // Round 1, still running: only chunks with a dirty page, a strict subset.
    wait_report(&rx, pv_event::PROGRESS, 3);
    let dirty = source
        .take_dirty_pages(DirtyConsumer::MigrationRound)
        .unwrap();
    assert!(dirty.count_pages() > 0);
    let round1 = source.chunk_refs(Some(&dirty), SIZE).unwrap();
    assert!(
        !round1.is_empty() && (round1.len() as u64) < all,
        "{}",
        round1.len()
    );
    send(&source, &round1, &mut held);

    // Switchover: pause, last round, state.
    source.pause().unwrap();
    let dirty = source
        .take_dirty_pages(DirtyConsumer::MigrationRound)
        .unwrap();
    let last = source.chunk_refs(Some(&dirty), SIZE).unwrap();
    send(&source, &last, &mut held);
    let state = source.capture_state().unwrap();
    // The migration rounds did not eat the snapshot checkpoint's pages.
    let checkpoint = source.take_dirty_pages(DirtyConsumer::Checkpoint).unwrap();
    assert!(checkpoint.count_pages() >= dirty.count_pages());

    let (io_b, console_b, rx_b) = io();
    let mut dest = Machine::create_for_state(&state, io_b, &no_setup, &|| Ok(())).unwrap();
    for (index, bytes) in &held {
        if let Some(bytes) = bytes {
            dest.write_chunk(*index, SIZE, bytes).unwrap();
        }
    }
    assert!(dest.write_chunk(all, SIZE, &[0; 16384]).is_err());
    assert!(dest.write_chunk(0, SIZE, &[0; 100]).is_err());
    dest.apply_state(&state).unwrap();
    assert_eq!(
        hash_range(source.memory(), 0, MEM_BYTES).unwrap(),
        hash_range(dest.memory(), 0, MEM_BYTES).unwrap()
    );
    // Nothing can be applied twice.
    assert!(dest.apply_state(&state).is_err());
    drop(source);

    dest.resume().unwrap();
    wait_report(&rx_b, pv_event::EXIT, 0);
    dest.stop().unwrap();
    let text = console_b.text();
    assert_eq!(text.trim_end(), result_line(counter_expected(&params)));
    assert!(console_a.text().is_empty());
}
