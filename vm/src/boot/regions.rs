//! Guest RAM regions: where RAM lives in guest-physical space for a given memory size.

use crate::machine::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Splits `mem_bytes` of guest RAM around the 32-bit MMIO hole: one region `[0, mem)` when it
/// fits below `MMIO_GAP_START`, else `[0, MMIO_GAP_START)` plus the remainder starting at
/// `MMIO_GAP_END` (4 GiB). Returns `(guest_physical_address, length)` pairs in ascending order.
///
/// Does not validate `mem_bytes` against the VMM limits (`MIN_MEM_BYTES`/`MAX_MEM_BYTES`);
/// a zero size yields no regions.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes == 0 {
        return Vec::new();
    }
    if mem_bytes <= MMIO_GAP_START {
        return vec![(0, mem_bytes)];
    }
    vec![
        (0, MMIO_GAP_START),
        (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
    ]
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn exactly_gap_start_is_one_region() {
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_guest_is_split_at_the_gap() {
        let five_gib = 5u64 << 30;
        let regions = ram_regions(five_gib);
        assert_eq!(
            regions,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, five_gib - MMIO_GAP_START)
            ]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, five_gib);
        assert_eq!(low_ram_end(five_gib), MMIO_GAP_START);
    }

    #[test]
    fn one_byte_over_the_gap() {
        let regions = ram_regions(MMIO_GAP_START + 1);
        assert_eq!(regions[1], (MMIO_GAP_END, 1));
    }

    #[test]
    fn zero_is_empty() {
        assert!(ram_regions(0).is_empty());
    }
}
