//! Page runs: contiguous ranges of guest pages, and their construction from dirty bitmaps.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{Result, StorageError};
use crate::machine::layout::PAGE_SIZE;

/// `pages` consecutive guest pages starting at the page-aligned `first_page_gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRun {
    pub first_page_gpa: u64,
    pub pages: u64,
}

impl PageRun {
    /// Length in bytes, or `None` if it overflows `u64`.
    pub fn bytes(&self) -> Option<u64> {
        self.pages.checked_mul(PAGE_SIZE)
    }

    /// Guest-physical address just past the run, or `None` if it overflows `u64`.
    pub fn end_gpa(&self) -> Option<u64> {
        self.bytes()?.checked_add(self.first_page_gpa)
    }
}

/// Turns a dirty bitmap into sorted, coalesced runs. Bit `i` (bit `i % 64` of word `i / 64`,
/// KVM's dirty-log layout) marks page `i` of a region starting at `region_gpa` that holds
/// `region_pages` pages. Bits past `region_pages` are ignored, as are pages whose address
/// would not fit in a `u64`.
pub fn runs_from_dirty_bitmap(region_gpa: u64, region_pages: u64, bitmap: &[u64]) -> Vec<PageRun> {
    let max_pages = (u64::MAX - region_gpa) / PAGE_SIZE;
    let region_pages = region_pages.min(max_pages);
    let mut runs = RunBuilder::default();
    for (index, &word) in bitmap.iter().enumerate() {
        let base = index as u64 * 64;
        if base >= region_pages {
            break;
        }
        let valid = region_pages - base;
        let word = if valid < 64 {
            word & ((1u64 << valid) - 1)
        } else {
            word
        };
        push_word_runs(&mut runs, region_gpa, base, word);
    }
    runs.finish()
}

/// Appends the runs of set bits of one bitmap word (page index `base` is bit 0).
fn push_word_runs(runs: &mut RunBuilder, region_gpa: u64, base: u64, word: u64) {
    let mut bit = 0u32;
    while bit < 64 {
        let rest = word >> bit;
        if rest == 0 {
            return;
        }
        bit += rest.trailing_zeros();
        let ones = (word >> bit).trailing_ones();
        runs.push(
            region_gpa + (base + u64::from(bit)) * PAGE_SIZE,
            u64::from(ones),
        );
        bit += ones;
    }
}

/// Accumulates runs in increasing address order, joining adjacent ones.
#[derive(Default)]
struct RunBuilder {
    done: Vec<PageRun>,
    current: Option<PageRun>,
}

impl RunBuilder {
    fn push(&mut self, gpa: u64, pages: u64) {
        if let Some(cur) = self.current.as_mut() {
            if cur.end_gpa() == Some(gpa) {
                cur.pages += pages;
                return;
            }
            self.done.push(*cur);
        }
        self.current = Some(PageRun {
            first_page_gpa: gpa,
            pages,
        });
    }

    fn finish(mut self) -> Vec<PageRun> {
        self.done.extend(self.current);
        self.done
    }
}

/// Sorts runs and merges overlapping or adjacent ones; drops empty runs. Fails on a run that
/// is not page-aligned or whose end overflows.
pub fn merge_runs(runs: &[PageRun]) -> Result<Vec<PageRun>> {
    let mut sorted: Vec<PageRun> = runs.iter().copied().filter(|r| r.pages > 0).collect();
    for r in &sorted {
        check_run_shape(r).map_err(|reason| StorageError::InvalidRuns { reason })?;
    }
    sorted.sort_unstable();
    let mut merged: Vec<PageRun> = Vec::with_capacity(sorted.len());
    for run in sorted {
        let end = run.end_gpa().unwrap_or(u64::MAX);
        match merged.last_mut() {
            Some(last) if last.end_gpa().is_some_and(|e| e >= run.first_page_gpa) => {
                let last_end = last.end_gpa().unwrap_or(u64::MAX);
                last.pages = (last_end.max(end) - last.first_page_gpa) / PAGE_SIZE;
            }
            _ => merged.push(run),
        }
    }
    Ok(merged)
}

/// One run per contiguous stretch of guest memory: every page of `mem`.
pub fn runs_of_all_memory(mem: &GuestMemoryMmap<AtomicBitmap>) -> Result<Vec<PageRun>> {
    let runs: Vec<PageRun> = mem
        .iter()
        .map(|r| PageRun {
            first_page_gpa: r.start_addr().0,
            pages: r.len() / PAGE_SIZE,
        })
        .collect();
    merge_runs(&runs)
}

/// What is wrong with page runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run at gpa {gpa:#x} is not aligned to {PAGE_SIZE}")]
    Unaligned { gpa: u64 },
    #[error("run at gpa {gpa:#x} has 0 pages")]
    Empty { gpa: u64 },
    #[error("run at gpa {gpa:#x} with {pages} pages overflows the address space")]
    Overflow { gpa: u64, pages: u64 },
    /// Run `index` of a list is malformed.
    #[error("run {index}: {source}")]
    Run { index: usize, source: Box<RunError> },
    #[error(
        "run {index} at gpa {gpa:#x} overlaps or precedes the previous run ending at \
         {prev_end:#x}"
    )]
    Overlap {
        index: usize,
        gpa: u64,
        prev_end: u64,
    },
    #[error("run {index}: length does not fit in usize")]
    TooLong { index: usize },
    #[error("run {index} [{gpa:#x}, {end:#x}) is not inside guest memory")]
    Outside { index: usize, gpa: u64, end: u64 },
    #[error("{count} runs, above the limit of {limit}")]
    TooMany { count: usize, limit: u64 },
    #[error("{0} runs overflow the run table size")]
    TableOverflow(u64),
    #[error("run at {gpa:#x} is too long")]
    HostTooLong { gpa: u64 },
    /// Guest memory cannot map the run (vm-memory's reason).
    #[error("run at {gpa:#x}: {reason}")]
    Unmapped { gpa: u64, reason: String },
}

/// Checks one run on its own: page-aligned, non-empty, end representable.
fn check_run_shape(run: &PageRun) -> std::result::Result<u64, RunError> {
    let gpa = run.first_page_gpa;
    if gpa % PAGE_SIZE != 0 {
        return Err(RunError::Unaligned { gpa });
    }
    if run.pages == 0 {
        return Err(RunError::Empty { gpa });
    }
    run.end_gpa().ok_or(RunError::Overflow {
        gpa,
        pages: run.pages,
    })
}

/// Checks that runs are well formed, strictly increasing, non-overlapping and inside `mem`.
/// Returns the total page count, or a reason naming the offending run.
pub(crate) fn validate_runs(
    runs: &[PageRun],
    mem: &GuestMemoryMmap<AtomicBitmap>,
) -> std::result::Result<u64, RunError> {
    let mut prev_end = 0u64;
    let mut total = 0u64;
    for (index, run) in runs.iter().enumerate() {
        let gpa = run.first_page_gpa;
        let end = check_run_shape(run).map_err(|e| RunError::Run {
            index,
            source: Box::new(e),
        })?;
        if index > 0 && gpa < prev_end {
            return Err(RunError::Overlap {
                index,
                gpa,
                prev_end,
            });
        }
        let len = usize::try_from(end - gpa).map_err(|_| RunError::TooLong { index })?;
        if !mem.check_range(GuestAddress(gpa), len) {
            return Err(RunError::Outside { index, gpa, end });
        }
        prev_end = end;
        total += run.pages;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gpa: u64, pages: u64) -> PageRun {
        PageRun {
            first_page_gpa: gpa,
            pages,
        }
    }

    /// Reference conversion: one bit at a time.
    fn naive(region_gpa: u64, region_pages: u64, bitmap: &[u64]) -> Vec<PageRun> {
        let mut b = RunBuilder::default();
        for page in 0..region_pages.min(bitmap.len() as u64 * 64) {
            if bitmap[(page / 64) as usize] >> (page % 64) & 1 == 1 {
                b.push(region_gpa + page * PAGE_SIZE, 1);
            }
        }
        b.finish()
    }

    #[test]
    fn bitmap_examples() {
        let g = 0x10_0000;
        assert!(runs_from_dirty_bitmap(g, 128, &[0, 0]).is_empty());
        assert_eq!(runs_from_dirty_bitmap(g, 128, &[1]), vec![run(g, 1)]);
        assert_eq!(
            runs_from_dirty_bitmap(g, 128, &[u64::MAX, u64::MAX]),
            vec![run(g, 128)]
        );
        // bit 63 of word 0 and bit 0 of word 1 join into one run.
        assert_eq!(
            runs_from_dirty_bitmap(g, 128, &[1 << 63, 1]),
            vec![run(g + 63 * PAGE_SIZE, 2)]
        );
        assert_eq!(
            runs_from_dirty_bitmap(g, 128, &[0b1011_0110]),
            vec![
                run(g + PAGE_SIZE, 2),
                run(g + 4 * PAGE_SIZE, 2),
                run(g + 7 * PAGE_SIZE, 1)
            ]
        );
        // bits past the region are ignored.
        assert_eq!(runs_from_dirty_bitmap(g, 3, &[u64::MAX]), vec![run(g, 3)]);
        assert!(runs_from_dirty_bitmap(g, 64, &[0, u64::MAX]).is_empty());
    }

    #[test]
    fn bitmap_matches_reference_on_pseudo_random_words() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..200 {
            let words: Vec<u64> = (0..8)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match round % 4 {
                        0 => x,
                        1 => x & (x >> 3),
                        2 => x | (x << 5),
                        _ => 0,
                    }
                })
                .collect();
            let pages = 8 * 64 - (round % 70);
            assert_eq!(
                runs_from_dirty_bitmap(0x4000, pages, &words),
                naive(0x4000, pages, &words),
                "round {round}"
            );
        }
    }

    #[test]
    fn merge_sorts_and_coalesces() {
        let p = PAGE_SIZE;
        let merged = merge_runs(&[
            run(10 * p, 2),
            run(0, 1),
            run(11 * p, 5),
            run(p, 1),
            run(30 * p, 0),
        ])
        .unwrap();
        assert_eq!(merged, vec![run(0, 2), run(10 * p, 6)]);
        assert!(merge_runs(&[run(1, 1)]).is_err());
        assert!(merge_runs(&[run(u64::MAX - PAGE_SIZE + 1, 2)]).is_err());
    }

    #[test]
    fn validation_rejects_bad_runs() {
        let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ])
        .unwrap();
        let p = PAGE_SIZE;
        // Spanning two adjacent regions is fine.
        assert_eq!(
            validate_runs(&[run(0, 10), run(200 * p, 100)], &mem),
            Ok(110)
        );
        let bad: [&[PageRun]; 6] = [
            &[run(0, 10), run(5 * p, 1)], // overlap
            &[run(10 * p, 1), run(0, 1)], // unsorted
            &[run(0, 0)],                 // empty
            &[run(100, 1)],               // unaligned
            &[run(500 * p, 100)],         // runs into the hole at 2 MiB
            &[run((5 << 20) - p, 2)],     // past the end of memory
        ];
        for runs in bad {
            assert!(validate_runs(runs, &mem).is_err(), "{runs:?}");
        }
        assert_eq!(
            runs_of_all_memory(&mem).unwrap(),
            vec![run(0, 512), run(4 << 20, 256)]
        );
    }
}
