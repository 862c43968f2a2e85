//! Identity-mapping page tables for entering long mode.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::machine::layout::{IDENTITY_MAPPED_END, PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};

/// Page-table entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry bit: maps a 2 MiB page rather than pointing to a page table.
pub const PDE_HUGE: u64 = 1 << 7;

const ENTRIES_PER_TABLE: u64 = 512;
const TABLE_BYTES: u64 = ENTRIES_PER_TABLE * 8;
const HUGE_PAGE: u64 = 2 << 20;

/// Writes PML4 (at `PML4_ADDR`) -> one PDPT (at `PDPT_ADDR`) -> `PD_COUNT` page directories
/// (from `PD_ADDR`) of 2 MiB pages, mapping `[0, IDENTITY_MAPPED_END)` virtual to the same
/// physical addresses, present and writable, supervisor only, cacheable.
///
/// Every other PML4/PDPT entry is written as zero, so stale data in guest memory cannot create
/// extra mappings. The MMIO hole is mapped too (the LAPIC and IOAPIC live there). RAM above
/// 4 GiB is not mapped: Linux builds its own tables before it touches it.
pub fn identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), BootError> {
    let mut pml4 = vec![0u64; ENTRIES_PER_TABLE as usize];
    pml4[0] = PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE;
    write_table(mem, "PML4", PML4_ADDR, &pml4)?;

    let mut pdpt = vec![0u64; ENTRIES_PER_TABLE as usize];
    for (i, entry) in pdpt.iter_mut().enumerate().take(PD_COUNT as usize) {
        *entry = (PD_ADDR + i as u64 * TABLE_BYTES) | PTE_PRESENT | PTE_WRITABLE;
    }
    write_table(mem, "PDPT", PDPT_ADDR, &pdpt)?;

    let pd: Vec<u64> = (0..ENTRIES_PER_TABLE * PD_COUNT)
        .map(|i| (i * HUGE_PAGE) | PTE_PRESENT | PTE_WRITABLE | PDE_HUGE)
        .collect();
    debug_assert_eq!(
        ENTRIES_PER_TABLE * PD_COUNT * HUGE_PAGE,
        IDENTITY_MAPPED_END
    );
    write_table(mem, "page directories", PD_ADDR, &pd)
}

fn write_table<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    entries: &[u64],
) -> Result<(), BootError> {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| BootError::GuestWrite { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn read(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr))
            .expect("read page table entry")
    }

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        let pml4e = read(mem, PML4_ADDR + ((va >> 39) & 0x1FF) * 8);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read(mem, (pml4e & !0xFFF) + ((va >> 30) & 0x1FF) * 8);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read(mem, (pdpte & !0xFFF) + ((va >> 21) & 0x1FF) * 8);
        if pde & PTE_PRESENT == 0 || pde & PDE_HUGE == 0 {
            return None;
        }
        Some((pde & !0x1F_FFFF & 0x000F_FFFF_FFFF_F000) | (va & 0x1F_FFFF))
    }

    #[test]
    fn tables_identity_map_first_4gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .expect("test guest memory");
        // Stale garbage must not survive.
        mem.write_slice(&[0xFFu8; 0x6000], GuestAddress(PML4_ADDR))
            .expect("prefill");
        identity_page_tables(&mem).expect("write tables");

        assert_eq!(read(&mem, PML4_ADDR), PDPT_ADDR | 0x3);
        assert_eq!(read(&mem, PML4_ADDR + 8), 0);
        assert_eq!(read(&mem, PDPT_ADDR), PD_ADDR | 0x3);
        assert_eq!(read(&mem, PDPT_ADDR + 3 * 8), (PD_ADDR + 3 * 0x1000) | 0x3);
        assert_eq!(read(&mem, PDPT_ADDR + 4 * 8), 0);
        assert_eq!(read(&mem, PD_ADDR), 0x83);
        assert_eq!(read(&mem, PD_ADDR + 8), 0x20_0083);
        assert_eq!(read(&mem, PD_ADDR + 2047 * 8), 0xFFE0_0083);

        for va in [
            0u64,
            0x7000,
            0x10_0000,
            0x123_4567,
            0xFEE0_0000,
            IDENTITY_MAPPED_END - 1,
        ] {
            assert_eq!(translate(&mem, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, IDENTITY_MAPPED_END), None);
        assert_eq!(translate(&mem, 1 << 39), None);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xA000)])
            .expect("test guest memory");
        let err = identity_page_tables(&mem).expect_err("PDPT not backed");
        assert!(err.to_string().contains("PDPT"), "{err}");
    }
}
