//! Timing helpers for `novacron bench snapshot`: one call writes a full snapshot, restores it
//! into fresh memory, and writes an incremental snapshot, reporting each duration and the
//! fsync share. Example (512 MiB guest, 64 MiB touched, 8 MiB incremental):
//!
//! ```no_run
//! use novacron_vm::storage::bench_support::measure;
//! let dir = std::env::temp_dir().join("novacron-snapshot-bench");
//! let f = measure(&dir, 512 << 20, 64 << 20, 8 << 20).unwrap();
//! println!("full {:?} (fsync {:?}), restore {:?}, incremental {:?}",
//!     f.full.elapsed, f.full.sync_time, f.restore_total, f.incremental.elapsed);
//! ```
//!
//! What this cannot do: it measures with whatever page cache state the machine is in (the
//! restore reads files just written, so they are cached, as after a local checkpoint).

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::page_runs::PageRun;
use super::snapshot_dir::{load, RestoreStats, SnapshotDir, WriteReport};
use super::{Result, StorageError};
use crate::layout::{PAGE_SIZE, PATTERN_BASE};

/// Figures of one [`measure`] run.
#[derive(Debug, Clone)]
pub struct BenchFigures {
    pub full: WriteReport,
    /// `load` (manifest + state + layer checks).
    pub restore_load: Duration,
    /// `apply_memory` of the full layer into fresh memory.
    pub restore_apply: RestoreStats,
    /// load + apply.
    pub restore_total: Duration,
    pub incremental: WriteReport,
}

/// Builds a `mem_bytes` guest with `touched_bytes` of pseudo-random data from
/// [`PATTERN_BASE`], snapshots it fully into `dir`, restores it into a fresh guest (checking
/// the result), then dirties `incremental_bytes` (every other page of the touched area) and
/// writes an incremental snapshot.
pub fn measure(
    dir: &Path,
    mem_bytes: usize,
    touched_bytes: u64,
    incremental_bytes: u64,
) -> Result<BenchFigures> {
    let src = fresh_memory(mem_bytes)?;
    fill(&src, PATTERN_BASE, touched_bytes, 1)?;
    let touched = [PageRun {
        first_page_gpa: PATTERN_BASE,
        pages: touched_bytes / PAGE_SIZE,
    }];
    let mut snap = SnapshotDir::create_or_open(dir)?;
    let full = snap.write_full(b"bench state", &src, &touched)?;

    let dst = fresh_memory(mem_bytes)?;
    let started = Instant::now();
    let loaded = load(dir)?;
    let restore_load = started.elapsed();
    let restore_apply = loaded.apply_memory(&dst)?;
    let restore_total = started.elapsed();
    check_equal(&src, &dst, PATTERN_BASE, touched_bytes)?;

    let dirty = dirty_every_other_page(&src, incremental_bytes)?;
    let incremental = snap.write_incremental(b"bench state 2", &src, &dirty)?;
    Ok(BenchFigures {
        full,
        restore_load,
        restore_apply,
        restore_total,
        incremental,
    })
}

fn bench_error(reason: String) -> StorageError {
    StorageError::InvalidRuns { reason }
}

fn fresh_memory(bytes: usize) -> Result<GuestMemoryMmap<AtomicBitmap>> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|e| bench_error(format!("cannot create {bytes} bytes of guest memory: {e}")))
}

/// Writes pseudo-random (incompressible, non-zero) bytes.
fn fill(mem: &GuestMemoryMmap<AtomicBitmap>, gpa: u64, len: u64, seed: u64) -> Result<()> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for off in (0..len).step_by(PAGE_SIZE as usize) {
        for word in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(gpa + off))
            .map_err(|e| bench_error(format!("fill at {:#x}: {e}", gpa + off)))?;
    }
    Ok(())
}

fn dirty_every_other_page(mem: &GuestMemoryMmap<AtomicBitmap>, bytes: u64) -> Result<Vec<PageRun>> {
    let mut runs = Vec::new();
    for i in 0..bytes / PAGE_SIZE {
        let gpa = PATTERN_BASE + 2 * i * PAGE_SIZE;
        fill(mem, gpa, PAGE_SIZE, i + 7)?;
        runs.push(PageRun {
            first_page_gpa: gpa,
            pages: 1,
        });
    }
    Ok(runs)
}

fn check_equal(
    a: &GuestMemoryMmap<AtomicBitmap>,
    b: &GuestMemoryMmap<AtomicBitmap>,
    gpa: u64,
    len: u64,
) -> Result<()> {
    let mut x = vec![0u8; 1 << 20];
    let mut y = vec![0u8; 1 << 20];
    for off in (0..len).step_by(x.len()) {
        let n = (len - off).min(x.len() as u64) as usize;
        let at = GuestAddress(gpa + off);
        a.read_slice(&mut x[..n], at)
            .and_then(|_| b.read_slice(&mut y[..n], at))
            .map_err(|e| bench_error(format!("compare at {:#x}: {e}", gpa + off)))?;
        if x[..n] != y[..n] {
            return Err(bench_error(format!(
                "restored memory differs near {:#x}",
                gpa + off
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_measure_runs_and_restores_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure(dir.path(), 32 << 20, 4 << 20, 1 << 20).unwrap();
        assert_eq!(f.full.layer.pages, 1024);
        assert_eq!(f.restore_apply.pages, 1024);
        assert_eq!(f.incremental.layer.pages, 256);
        assert_eq!(f.incremental.layer.runs, 256);
        assert_eq!(f.incremental.chain_len, 2);
    }

    /// `cargo test -p novacron-vm --lib storage::bench_support -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: prints timings for 512 MiB guest / 64 MiB touched / 8 MiB incremental"]
    fn print_timings() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5 {
            let sub = dir.path().join(format!("r{round}"));
            let f = measure(&sub, 512 << 20, 64 << 20, 8 << 20).unwrap();
            std::fs::remove_dir_all(&sub).unwrap();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "full {:.1} ms (fsync {:.1}, layer {:.1}) | restore {:.1} ms (load {:.2}, apply {:.1}) | incremental {:.1} ms (fsync {:.1})",
                ms(f.full.elapsed),
                ms(f.full.sync_time),
                ms(f.full.layer.elapsed),
                ms(f.restore_total),
                ms(f.restore_load),
                ms(f.restore_apply.elapsed),
                ms(f.incremental.elapsed),
                ms(f.incremental.sync_time),
            );
        }
    }
}
