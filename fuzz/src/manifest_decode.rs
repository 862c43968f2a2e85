//! `Manifest::decode`: the snapshot manifest payload (generation, memory regions, state
//! and layer entries).
//!
//! Invariants when a manifest decodes: its encoding is byte-identical to the input (one
//! encoding per manifest), every referenced name is a plain file name, the counts respect
//! the limits, and the chain is not empty.

use std::path::Path;

use novacron_vm::storage::manifest::{
    check_name, Manifest, ManifestEntry, MAX_CHAIN_LAYERS, MAX_REGIONS,
};

use crate::Seed;

pub fn check(data: &[u8]) -> bool {
    let path = Path::new("/fuzz/MANIFEST");
    let manifest = match Manifest::decode(path, data) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.to_string().contains("/fuzz/MANIFEST"), "{e}");
            return false;
        }
    };
    let encoded = manifest
        .encode()
        .unwrap_or_else(|e| panic!("a decoded manifest does not encode: {e}"));
    assert_eq!(encoded, data, "decoded manifest has a second encoding");
    assert!(manifest.memory.len() <= MAX_REGIONS);
    assert!(!manifest.layers.is_empty() && manifest.layers.len() <= MAX_CHAIN_LAYERS);
    for entry in std::iter::once(&manifest.state).chain(&manifest.layers) {
        assert!(check_name(&entry.name).is_ok(), "{:?}", entry.name);
        assert!(!entry.name.contains('/') && !entry.name.starts_with('.'));
    }
    true
}

fn entry(name: &str, bytes: u64, pages: u64) -> ManifestEntry {
    ManifestEntry {
        name: name.into(),
        hash: blake3::hash(name.as_bytes()),
        bytes,
        pages,
    }
}

/// A manifest as `SnapshotDir` writes it after `layers` snapshots.
pub fn sample(layers: u64) -> Manifest {
    Manifest {
        generation: layers,
        memory: vec![(0, 2 << 20), (2 << 20, 2 << 20), (8 << 20, 1 << 20)],
        state: entry(&format!("state-{layers}.ncs"), 700, 0),
        layers: (1..=layers)
            .map(|g| entry(&format!("layer-{g}.ncl"), 4096 * (g + 1) + 40, g))
            .collect(),
    }
}

pub fn seeds() -> Vec<Seed> {
    let encode = |m: Manifest| {
        m.encode()
            .unwrap_or_else(|e| panic!("seed manifest does not encode: {e}"))
    };
    vec![
        ("one_layer", encode(sample(1))),
        ("three_layers", encode(sample(3))),
    ]
}
