//! `apply_layer`: a memory layer file (header, run table, page data, blake3 trailer) applied
//! to a small guest memory with two adjacent regions and one after a hole.
//!
//! Input: a flags byte, then the file. Flag bit 0 re-seals the trailer (magic and the blake3
//! of everything before it) so the fuzzer reaches the data path despite the checksum; bit 1
//! passes the trailer's hash as the manifest's; bit 2 passes a wrong manifest hash.
//! Invariants when a layer applies: no wrong manifest hash was accepted, the applied runs are
//! sorted, disjoint, inside memory and add up to the reported pages, guest memory inside them
//! holds exactly the file's data in table order, and memory outside them is still zero.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use novacron_vm::machine::layout::PAGE_SIZE;
use novacron_vm::storage::memory_layer::{TRAILER_LEN, TRAILER_MAGIC};
use novacron_vm::storage::{apply_layer, write_layer, PageRun};

use crate::{scratch, Seed};

/// Two adjacent regions (a run may span them) and one after a hole.
pub const LAYOUT: &[(u64, usize)] = &[(0, 64 << 10), (64 << 10, 64 << 10), (256 << 10, 32 << 10)];

const RESEAL: u8 = 1;
const PASS_TRAILER_HASH: u8 = 2;
const PASS_WRONG_HASH: u8 = 4;

/// A zeroed guest memory of `layout`.
pub fn memory(layout: &[(u64, usize)]) -> GuestMemoryMmap<AtomicBitmap> {
    let ranges: Vec<(GuestAddress, usize)> =
        layout.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges)
        .unwrap_or_else(|e| panic!("fuzz harness: cannot map guest memory: {e}"))
}

fn reseal(file: &mut [u8]) {
    let trailer = TRAILER_LEN as usize;
    if file.len() < trailer {
        return;
    }
    let body = file.len() - trailer;
    let hash = blake3::hash(&file[..body]);
    file[body..body + 8].copy_from_slice(&TRAILER_MAGIC);
    file[body + 8..].copy_from_slice(hash.as_bytes());
}

fn trailer_hash(file: &[u8]) -> Option<blake3::Hash> {
    let at = file.len().checked_sub(32)?;
    let bytes: [u8; 32] = file[at..].try_into().ok()?;
    Some(blake3::Hash::from_bytes(bytes))
}

pub fn check(data: &[u8]) -> bool {
    let Some((&flags, file)) = data.split_first() else {
        return false;
    };
    let mut file = file.to_vec();
    if flags & RESEAL != 0 {
        reseal(&mut file);
    }
    let expected = if flags & PASS_WRONG_HASH != 0 {
        Some(blake3::hash(b"not this layer"))
    } else if flags & PASS_TRAILER_HASH != 0 {
        trailer_hash(&file)
    } else {
        None
    };
    let dir = scratch::dir();
    let path = scratch::file(dir.path(), "layer", &file);
    let mem = memory(LAYOUT);
    let Ok(stats) = apply_layer(&path, &mem, expected) else {
        return false;
    };
    assert!(
        flags & PASS_WRONG_HASH == 0,
        "a wrong manifest hash was accepted"
    );
    assert_eq!(stats.bytes, file.len() as u64);
    assert_eq!(stats.runs, stats.applied.len() as u64);
    check_memory(&mem, &stats.applied, stats.pages, &file);
    true
}

/// Guest memory holds the file's data inside `runs` (in table order) and zero elsewhere.
fn check_memory(mem: &GuestMemoryMmap<AtomicBitmap>, runs: &[PageRun], pages: u64, file: &[u8]) {
    let page = PAGE_SIZE as usize;
    // The header's data offset (checked by the reader against the run count).
    let mut offset = file[32..40]
        .try_into()
        .map(|b| u64::from_le_bytes(b) as usize)
        .unwrap_or_else(|_| panic!("an accepted layer has no data offset field"));
    let mut prev_end = 0u64;
    let mut total = 0u64;
    for run in runs {
        assert!(run.pages > 0 && run.first_page_gpa >= prev_end, "{runs:?}");
        let len = run.pages as usize * page;
        let mut got = vec![0u8; len];
        mem.read_slice(&mut got, GuestAddress(run.first_page_gpa))
            .unwrap_or_else(|e| panic!("applied run {run:?} is not in guest memory: {e}"));
        assert_eq!(got, file[offset..offset + len], "run {run:?} data differs");
        offset += len;
        prev_end = run.first_page_gpa + len as u64;
        total += run.pages;
    }
    assert_eq!(total, pages, "runs do not add up to the reported pages");
    assert_eq!(offset + TRAILER_LEN as usize, file.len());
    for &(start, len) in LAYOUT {
        for p in 0..(len / page) as u64 {
            let gpa = start + p * PAGE_SIZE;
            let inside = runs
                .iter()
                .any(|r| gpa >= r.first_page_gpa && gpa < r.first_page_gpa + r.pages * PAGE_SIZE);
            if inside {
                continue;
            }
            let mut got = vec![0u8; page];
            mem.read_slice(&mut got, GuestAddress(gpa))
                .unwrap_or_else(|e| panic!("page {gpa:#x}: {e}"));
            assert!(
                got.iter().all(|&b| b == 0),
                "page {gpa:#x} outside every run changed"
            );
        }
    }
}

/// A layer file of `runs` written by the real writer from patterned memory.
pub fn layer_file(runs: &[PageRun]) -> Vec<u8> {
    let mem = memory(LAYOUT);
    for &(start, len) in LAYOUT {
        let pattern: Vec<u8> = (0..len)
            .map(|i| (i / 7) as u8 ^ (start >> 12) as u8)
            .collect();
        mem.write_slice(&pattern, GuestAddress(start))
            .unwrap_or_else(|e| panic!("seed memory: {e}"));
    }
    let dir = scratch::dir();
    let path = dir.path().join("layer");
    write_layer(&path, &mem, runs).unwrap_or_else(|e| panic!("seed layer: {e}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn with_flags(flags: u8, file: Vec<u8>) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend(file);
    out
}

pub fn seeds() -> Vec<Seed> {
    let run = |first_page_gpa, pages| PageRun {
        first_page_gpa,
        pages,
    };
    vec![
        ("empty", with_flags(PASS_TRAILER_HASH, layer_file(&[]))),
        (
            "one_page",
            with_flags(PASS_TRAILER_HASH, layer_file(&[run(0x3000, 1)])),
        ),
        (
            // Two runs: one across the region boundary would need 2 pages; keep seeds small.
            "two_runs",
            with_flags(
                RESEAL | PASS_TRAILER_HASH,
                layer_file(&[run(0xF000, 1), run(256 << 10, 1)]),
            ),
        ),
    ]
}
