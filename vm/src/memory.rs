//! Guest memory: creation from the RAM map, dirty-page accounting, and the benchmark
//! pattern the host writes into a guest before it starts.
//!
//! Two sources say a page changed: KVM's dirty log (pages the guest wrote) and vm-memory's
//! own bitmap (pages the VMM wrote through `Bytes`, e.g. a host fill). [`DirtyTracker`]
//! folds both into two bitmaps per region: `touched` (ever written: what a full snapshot
//! must save) and `since_checkpoint` (written since the last successful snapshot: what an
//! incremental snapshot saves). A failed snapshot hands its bits back with
//! [`DirtyTracker::restore`], so no write is ever forgotten.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::layout::PAGE_SIZE;

/// Guest memory as this VMM maps it: anonymous, private, with a dirty bitmap for VMM writes.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {bytes} bytes of guest memory: {source}")]
    Map {
        bytes: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("region of {0} bytes is not a whole number of 4 KiB pages")]
    Unaligned(u64),
    #[error("cannot write {len} bytes at guest address {gpa:#x}: {source}")]
    Write {
        gpa: u64,
        len: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// Maps anonymous guest memory for the given (guest-physical start, length) regions.
pub fn create_guest_memory(regions: &[(u64, u64)]) -> Result<GuestMem, MemoryError> {
    let total: u64 = regions.iter().map(|r| r.1).sum();
    let mut ranges = Vec::with_capacity(regions.len());
    for &(start, len) in regions {
        if len % PAGE_SIZE != 0 || start % PAGE_SIZE != 0 {
            return Err(MemoryError::Unaligned(len));
        }
        ranges.push((GuestAddress(start), len as usize));
    }
    GuestMem::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        bytes: total,
        source,
    })
}

/// The (guest-physical start, length) of every region, in address order.
pub fn region_layout(mem: &GuestMem) -> Vec<(u64, u64)> {
    mem.iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect()
}

/// Number of u64 words a bitmap of `len` bytes of memory needs (one bit per page).
pub fn bitmap_words(len: u64) -> usize {
    (len.div_ceil(PAGE_SIZE) as usize).div_ceil(64)
}

/// Per-region dirty bitmaps, one bit per 4 KiB page, bit i of word w = page 64*w + i.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageBitmaps {
    /// (region guest-physical start, words)
    pub regions: Vec<(u64, Vec<u64>)>,
}

impl PageBitmaps {
    pub fn empty_for(layout: &[(u64, u64)]) -> Self {
        PageBitmaps {
            regions: layout
                .iter()
                .map(|&(start, len)| (start, vec![0u64; bitmap_words(len)]))
                .collect(),
        }
    }

    pub fn count_pages(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|(_, w)| w.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// ORs `other` into `self`; both must describe the same layout.
    pub fn merge(&mut self, other: &PageBitmaps) {
        for ((_, mine), (_, theirs)) in self.regions.iter_mut().zip(&other.regions) {
            or_into(mine, theirs);
        }
    }

    /// Sets the bits of the pages covering [gpa, gpa + len).
    pub fn mark_range(&mut self, gpa: u64, len: u64) {
        for (start, words) in &mut self.regions {
            let region_len = words.len() as u64 * 64 * PAGE_SIZE;
            let lo = gpa.max(*start);
            let hi = (gpa + len).min(*start + region_len);
            if lo >= hi {
                continue;
            }
            for page in (lo - *start) / PAGE_SIZE..(hi - *start).div_ceil(PAGE_SIZE) {
                words[(page / 64) as usize] |= 1 << (page % 64);
            }
        }
    }
}

fn or_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}

/// Folds KVM's dirty log and the VMM's own write bitmap into "touched" and
/// "since checkpoint" page sets. See the module documentation.
#[derive(Debug)]
pub struct DirtyTracker {
    touched: PageBitmaps,
    since_checkpoint: PageBitmaps,
}

impl DirtyTracker {
    pub fn new(layout: &[(u64, u64)]) -> Self {
        DirtyTracker {
            touched: PageBitmaps::empty_for(layout),
            since_checkpoint: PageBitmaps::empty_for(layout),
        }
    }

    /// Starts from a restored image: `present` pages hold data, none is dirty yet.
    pub fn from_restored(present: PageBitmaps) -> Self {
        let layout_empty = PageBitmaps {
            regions: present
                .regions
                .iter()
                .map(|(s, w)| (*s, vec![0; w.len()]))
                .collect(),
        };
        DirtyTracker {
            touched: present,
            since_checkpoint: layout_empty,
        }
    }

    /// Records the pages of region `index` that one dirty source reported.
    pub fn absorb(&mut self, index: usize, bits: &[u64]) {
        if let (Some((_, t)), Some((_, s))) = (
            self.touched.regions.get_mut(index),
            self.since_checkpoint.regions.get_mut(index),
        ) {
            or_into(t, bits);
            or_into(s, bits);
        }
    }

    /// Pages ever written, by the guest or the VMM.
    pub fn touched(&self) -> &PageBitmaps {
        &self.touched
    }

    /// Takes the pages written since the last checkpoint, leaving the set empty.
    /// Give them back with [`restore`](Self::restore) if the checkpoint fails.
    pub fn take_since_checkpoint(&mut self) -> PageBitmaps {
        let empty = PageBitmaps::empty_for(
            &self
                .since_checkpoint
                .regions
                .iter()
                .map(|(s, w)| (*s, w.len() as u64 * 64 * PAGE_SIZE))
                .collect::<Vec<_>>(),
        );
        std::mem::replace(&mut self.since_checkpoint, empty)
    }

    /// Puts back pages taken by a checkpoint that failed.
    pub fn restore(&mut self, taken: &PageBitmaps) {
        self.since_checkpoint.merge(taken);
    }
}

/// Drains vm-memory's bitmap of VMM writes for every region, in region order.
pub fn take_vmm_dirty_bits(mem: &GuestMem) -> Vec<Vec<u64>> {
    mem.iter()
        .map(|r| std::ops::Deref::deref(r).bitmap().get_and_reset())
        .collect()
}

/// Writes the benchmark pattern (`novacron_mesh::workload::pattern`) into guest memory through vm-memory, so the pages count as
/// touched and dirty.
pub fn fill_pattern(mem: &GuestMem, gpa: u64, len: u64) -> Result<(), MemoryError> {
    let data = novacron_mesh::workload::pattern(len as usize);
    mem.write_slice(&data, GuestAddress(gpa))
        .map_err(|source| MemoryError::Write { gpa, len, source })
}

/// blake3 of guest memory in [gpa, gpa + len), for comparing two machines' memory.
pub fn hash_range(mem: &GuestMem, gpa: u64, len: u64) -> Result<blake3::Hash, MemoryError> {
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(|source| MemoryError::Write { gpa, len, source })?;
    Ok(blake3::hash(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_writes_are_tracked_and_put_back_on_failure() {
        let mem = create_guest_memory(&[(0, 1 << 20)]).unwrap();
        let layout = region_layout(&mem);
        let mut tracker = DirtyTracker::new(&layout);
        fill_pattern(&mem, 8192, 5000).unwrap();
        for (i, bits) in take_vmm_dirty_bits(&mem).iter().enumerate() {
            tracker.absorb(i, bits);
        }
        assert_eq!(tracker.touched().count_pages(), 2);
        let taken = tracker.take_since_checkpoint();
        assert_eq!(taken.count_pages(), 2);
        assert_eq!(tracker.take_since_checkpoint().count_pages(), 0);
        tracker.restore(&taken);
        assert_eq!(tracker.take_since_checkpoint(), taken);
        assert_eq!(tracker.touched().count_pages(), 2);
    }

    #[test]
    fn mark_range_covers_partial_pages() {
        let mut b = PageBitmaps::empty_for(&[(0, 1 << 20)]);
        b.mark_range(4095, 2);
        assert_eq!(b.count_pages(), 2);
        b.mark_range(1 << 30, 4096);
        assert_eq!(b.count_pages(), 2);
    }

    #[test]
    fn unaligned_region_is_refused() {
        assert!(matches!(
            create_guest_memory(&[(0, 1000)]),
            Err(MemoryError::Unaligned(1000))
        ));
    }
}
