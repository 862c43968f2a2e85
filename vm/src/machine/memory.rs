//! Guest memory: creation from the RAM map, dirty-page accounting, and the benchmark
//! pattern the host writes into a guest before it starts.
//!
//! Two sources say a page changed: KVM's dirty log (pages the guest wrote) and vm-memory's
//! own bitmap (pages the VMM wrote through `Bytes`, e.g. a host fill). [`DirtyTracker`]
//! folds both into bitmaps per region: `touched` (ever written: what a full snapshot must
//! save) and one "written since you last took them" set per [`DirtyConsumer`]: snapshot
//! checkpoints (what an incremental snapshot saves) and migration rounds (what the next
//! round sends). A consumer whose work failed hands its bits back with
//! [`DirtyTracker::restore_to`], so no write is ever forgotten.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::machine::layout::PAGE_SIZE;

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

    /// The same regions with no page set.
    pub fn cleared(&self) -> Self {
        PageBitmaps {
            regions: self
                .regions
                .iter()
                .map(|(start, words)| (*start, vec![0; words.len()]))
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

/// Who consumes "pages written since I last looked". Each consumer has its own set, taken
/// and given back on its own, so a migration round never hides a page from the next
/// incremental snapshot, nor the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyConsumer {
    /// Snapshots: pages written since the last successful snapshot.
    Checkpoint,
    /// Migration: pages written since the last migration round was collected.
    MigrationRound,
}

impl DirtyConsumer {
    /// Every consumer; the tracker keeps one set per entry, in this order.
    pub const ALL: [DirtyConsumer; 2] = [DirtyConsumer::Checkpoint, DirtyConsumer::MigrationRound];

    fn slot(self) -> usize {
        match self {
            DirtyConsumer::Checkpoint => 0,
            DirtyConsumer::MigrationRound => 1,
        }
    }
}

/// Folds KVM's dirty log and the VMM's own write bitmap into a "touched" page set and one
/// "since last taken" set per [`DirtyConsumer`]. See the module documentation.
#[derive(Debug)]
pub struct DirtyTracker {
    touched: PageBitmaps,
    since: [PageBitmaps; DirtyConsumer::ALL.len()],
}

impl DirtyTracker {
    pub fn new(layout: &[(u64, u64)]) -> Self {
        Self::from_restored(PageBitmaps::empty_for(layout))
    }

    /// Starts from a restored image: `present` pages hold data, none is dirty yet for any
    /// consumer.
    pub fn from_restored(present: PageBitmaps) -> Self {
        let empty = present.cleared();
        DirtyTracker {
            touched: present,
            since: [empty.clone(), empty],
        }
    }

    /// Records the pages of region `index` that one dirty source reported.
    pub fn absorb(&mut self, index: usize, bits: &[u64]) {
        let sets = std::iter::once(&mut self.touched).chain(self.since.iter_mut());
        for set in sets {
            if let Some((_, words)) = set.regions.get_mut(index) {
                or_into(words, bits);
            }
        }
    }

    /// Pages ever written, by the guest or the VMM.
    pub fn touched(&self) -> &PageBitmaps {
        &self.touched
    }

    /// Takes the pages written since `consumer` last took them, leaving its set empty; the
    /// other consumers' sets are untouched. Give them back with
    /// [`restore_to`](Self::restore_to) if what the consumer did with them failed.
    pub fn take(&mut self, consumer: DirtyConsumer) -> PageBitmaps {
        let set = &mut self.since[consumer.slot()];
        let empty = set.cleared();
        std::mem::replace(set, empty)
    }

    /// Puts back pages `consumer` took and could not use.
    pub fn restore_to(&mut self, consumer: DirtyConsumer, taken: &PageBitmaps) {
        self.since[consumer.slot()].merge(taken);
    }

    /// [`take`](Self::take) for snapshots.
    pub fn take_since_checkpoint(&mut self) -> PageBitmaps {
        self.take(DirtyConsumer::Checkpoint)
    }

    /// [`restore_to`](Self::restore_to) for snapshots.
    pub fn restore(&mut self, taken: &PageBitmaps) {
        self.restore_to(DirtyConsumer::Checkpoint, taken);
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
    let mut stream = novacron_mesh::workload::PatternStream::new();
    fill_with(mem, gpa, len, |buf| stream.fill(buf))
}

/// Writes `len` incompressible bytes from `seed` at `gpa`.
pub fn fill_random(mem: &GuestMem, gpa: u64, len: u64, seed: u64) -> Result<(), MemoryError> {
    let mut stream = novacron_mesh::workload::RandomStream::new(seed);
    fill_with(mem, gpa, len, |buf| stream.fill(buf))
}

/// Writes `len` bytes at `gpa`, produced 4 MiB at a time (a whole-guest fill must not need
/// a second guest's worth of memory in the VMM's cgroup).
fn fill_with(
    mem: &GuestMem,
    gpa: u64,
    len: u64,
    mut produce: impl FnMut(&mut [u8]),
) -> Result<(), MemoryError> {
    const STEP: u64 = 4 << 20;
    let mut buf = vec![0u8; STEP.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = STEP.min(len - done) as usize;
        produce(&mut buf[..n]);
        let at = gpa + done;
        mem.write_slice(&buf[..n], GuestAddress(at))
            .map_err(|source| MemoryError::Write {
                gpa: at,
                len: n as u64,
                source,
            })?;
        done += n as u64;
    }
    Ok(())
}

/// blake3 of guest memory in [gpa, gpa + len), for comparing two machines' memory.
pub fn hash_range(mem: &GuestMem, gpa: u64, len: u64) -> Result<blake3::Hash, MemoryError> {
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(|source| MemoryError::Write { gpa, len, source })?;
    Ok(blake3::hash(&buf))
}

/// blake3 of all guest memory, region after region, read 4 MiB at a time. Migration tests
/// compare it on both sides at switchover.
pub fn memory_digest(mem: &GuestMem) -> Result<blake3::Hash, MemoryError> {
    const STEP: u64 = 4 << 20;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; STEP as usize];
    for (gpa, len) in region_layout(mem) {
        let mut done = 0;
        while done < len {
            let n = STEP.min(len - done);
            let at = gpa + done;
            mem.read_slice(&mut buf[..n as usize], GuestAddress(at))
                .map_err(|source| MemoryError::Write {
                    gpa: at,
                    len: n,
                    source,
                })?;
            hasher.update(&buf[..n as usize]);
            done += n;
        }
    }
    Ok(hasher.finalize())
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
    fn consumers_take_and_restore_independently() {
        let layout = [(0, 1 << 20), (1 << 32, 1 << 20)];
        let mut tracker = DirtyTracker::new(&layout);
        tracker.absorb(0, &[0b1010]);
        let round = tracker.take(DirtyConsumer::MigrationRound);
        assert_eq!(round.count_pages(), 2);
        tracker.absorb(1, &[0b1]);
        // The checkpoint still sees everything; the migration set only what came after.
        let checkpoint = tracker.take(DirtyConsumer::Checkpoint);
        assert_eq!(checkpoint.count_pages(), 3);
        let next_round = tracker.take(DirtyConsumer::MigrationRound);
        assert_eq!(next_round.count_pages(), 1);
        assert_eq!(next_round.regions[1].1[0], 1);
        // A failed round gives its pages back to itself only.
        tracker.restore_to(DirtyConsumer::MigrationRound, &round);
        assert_eq!(tracker.take(DirtyConsumer::Checkpoint).count_pages(), 0);
        assert_eq!(tracker.take(DirtyConsumer::MigrationRound), round);
        assert_eq!(tracker.touched().count_pages(), 3);
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
