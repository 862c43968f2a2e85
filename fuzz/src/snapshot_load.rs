//! `storage::load` and `LoadedSnapshot::apply_memory`: a snapshot directory whose manifest
//! payload comes from the fuzzer, framed with a correct checksum, next to real state and
//! layer files written by `SnapshotDir` (a full snapshot, generation 1, then an incremental
//! one, generation 2; the files of both stay).
//!
//! Invariants when a snapshot loads: the state is byte-identical to one of the state files
//! written (the manifest's hash pins it) and decodes as a `MachineState`, every layer path
//! stays inside the directory, and applying memory either fails or restores exactly the
//! memory the snapshot was taken from (when the manifest names the real chain) and only
//! pages inside guest memory.

use std::path::Path;
use std::sync::OnceLock;

use vm_memory::{Bytes, GuestAddress};

use novacron_vm::machine::state::MachineState;
use novacron_vm::storage::checksummed::{kind, HEADER_LEN};
use novacron_vm::storage::manifest::Manifest;
use novacron_vm::storage::snapshot_dir::MANIFEST_NAME;
use novacron_vm::storage::{load, write_checksummed, PageRun, SnapshotDir};

use crate::memory_layer::{memory, LAYOUT};
use crate::{scratch, state_decode, Seed};

/// The files of the fixture snapshot directory, and the manifest payloads naming them.
struct Fixture {
    files: Vec<(String, Vec<u8>)>,
    states: Vec<Vec<u8>>,
    /// Manifest payloads of generation 1 and 2.
    manifests: Vec<Vec<u8>>,
    /// Layer names of the generation-2 chain, oldest first.
    chain: Vec<String>,
    /// Guest memory after generation 2, region by region of LAYOUT.
    memory: Vec<u8>,
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("fixture: cannot read {}: {e}", path.display()))
}

fn dump(mem: &novacron_vm::machine::memory::GuestMem) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, len) in LAYOUT {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(start))
            .unwrap_or_else(|e| panic!("fixture: reading memory: {e}"));
        out.extend(buf);
    }
    out
}

/// Panics with `what` on an error: the fixture is built by the harness, not from input.
fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("fixture: {what}: {e}"))
}

fn build_fixture() -> Fixture {
    let dir = scratch::dir();
    let mem = memory(LAYOUT);
    let mut snap = must("open", SnapshotDir::create_or_open(dir.path()));
    let run = |first_page_gpa, pages| PageRun {
        first_page_gpa,
        pages,
    };
    let generations: [(u8, Vec<PageRun>); 2] = [
        (1, vec![run(0, 1), run(0x1_0000, 1)]),
        (2, vec![run(0x4_0000, 1)]),
    ];
    let mut fx = Fixture {
        files: Vec::new(),
        states: Vec::new(),
        manifests: Vec::new(),
        chain: Vec::new(),
        memory: Vec::new(),
    };
    for (generation, runs) in generations {
        for r in &runs {
            let fill = vec![generation.wrapping_mul(0x3B); r.pages as usize * 4096];
            must(
                "fill",
                mem.write_slice(&fill, GuestAddress(r.first_page_gpa)),
            );
        }
        let state = must("encode state", state_decode::sample(generation).encode());
        if generation == 1 {
            must("full", snap.write_full(&state, &mem, &runs));
        } else {
            must("incremental", snap.write_incremental(&state, &mem, &runs));
        }
        let framed = read(&dir.path().join(MANIFEST_NAME));
        let payload = framed[HEADER_LEN..].to_vec();
        let manifest = must("manifest", Manifest::decode(Path::new("fixture"), &payload));
        let newest = manifest.layers.last().map(|l| l.name.clone());
        for name in std::iter::once(manifest.state.name).chain(newest) {
            let bytes = read(&dir.path().join(&name));
            fx.files.push((name, bytes));
        }
        fx.chain = manifest.layers.into_iter().map(|l| l.name).collect();
        fx.manifests.push(payload);
        fx.states.push(state);
    }
    fx.memory = dump(&mem);
    fx
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

pub fn check(data: &[u8]) -> bool {
    let fx = fixture();
    let dir = scratch::dir();
    for (name, bytes) in &fx.files {
        scratch::file(dir.path(), name, bytes);
    }
    write_checksummed(&dir.path().join(MANIFEST_NAME), kind::MANIFEST, data)
        .unwrap_or_else(|e| panic!("fuzz harness: writing the manifest: {e}"));
    let Ok(loaded) = load(dir.path()) else {
        return false;
    };
    assert!(
        fx.states.contains(&loaded.state),
        "loaded state is not a state file"
    );
    MachineState::decode(&loaded.state)
        .unwrap_or_else(|e| panic!("a written state does not decode: {e}"));
    for layer in &loaded.layers {
        assert_eq!(
            layer.path.parent(),
            Some(dir.path()),
            "{}",
            layer.path.display()
        );
    }
    let mem = memory(LAYOUT);
    if let Ok(stats) = loaded.apply_memory(&mem) {
        assert_eq!(stats.layers, loaded.layers.len());
        let real_chain = Manifest::decode(Path::new("m"), data)
            .map(|m| m.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>())
            .is_ok_and(|names| names == fx.chain);
        if real_chain {
            assert!(
                dump(&mem) == fx.memory,
                "restored memory differs from the snapshot"
            );
        }
    }
    true
}

pub fn seeds() -> Vec<Seed> {
    let fx = fixture();
    vec![
        ("generation_1", fx.manifests[0].clone()),
        ("generation_2", fx.manifests[1].clone()),
    ]
}
