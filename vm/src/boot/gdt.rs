//! The boot GDT/IDT and the special registers of a vCPU entering 64-bit long mode.
//!
//! GDT layout (8-byte entries at `BOOT_GDT_ADDR`):
//!
//! | selector | entry                                                   |
//! |----------|---------------------------------------------------------|
//! | 0x00     | null                                                    |
//! | 0x08     | TSS (only its hidden part matters, see below)           |
//! | 0x10     | 64-bit code, `__BOOT_CS` of the Linux 64-bit boot protocol |
//! | 0x18     | flat data, `__BOOT_DS` of the Linux 64-bit boot protocol |
//!
//! The TSS sits at 0x08 rather than after the data segment because `layout.rs` puts the IDT at
//! `BOOT_GDT_ADDR + 0x20`: a fifth GDT entry would overlap it. A long-mode TSS descriptor is
//! 16 bytes; ours is only the low 8 bytes, which is enough because KVM loads TR from
//! `kvm_sregs` and the guest never executes `ltr` with this selector (Linux installs its own
//! GDT and TSS before it needs one).

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::machine::layout::{BOOT_GDT_ADDR, BOOT_IDT_ADDR, PML4_ADDR};

/// Selector of the TSS descriptor.
pub const TSS_SELECTOR: u16 = 0x08;
/// Selector of the 64-bit code segment (`__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;

/// Access byte + flags nibble of a 64-bit code segment: G=1, L=1, P=1, S=1, type=0xB
/// (execute/read, accessed).
const CODE64_FLAGS: u16 = 0xA09B;
/// Flat data segment: G=1, D/B=1 (32-bit), P=1, S=1, type=0x3 (read/write, accessed).
const DATA_FLAGS: u16 = 0xC093;
/// TSS: P=1, S=0 (system), type=0xB (busy 64-bit TSS, what VMX requires of TR in long mode).
const TSS_FLAGS: u16 = 0x008B;
/// Limit of a minimal 104-byte TSS.
const TSS_LIMIT: u32 = 0x67;

/// Encodes a segment descriptor. `flags` holds the access byte in bits 0..8 and the
/// G/D-B/L/AVL nibble in bits 12..16; `limit` is 20 bits (scaled by 4 KiB when G=1).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xFF00_0000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0x000F_0000) << 32)
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0xFFFF)
}

/// The boot GDT, indexed by selector / 8.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
    gdt_entry(CODE64_FLAGS, 0, 0xF_FFFF),
    gdt_entry(DATA_FLAGS, 0, 0xF_FFFF),
];

/// Byte size of the boot GDT.
pub const BOOT_GDT_SIZE: u64 = (BOOT_GDT.len() * 8) as u64;

// The GDT must end before the IDT starts.
const _: () = assert!(BOOT_GDT_ADDR + BOOT_GDT_SIZE <= BOOT_IDT_ADDR);

/// Decodes descriptor `entry` into the KVM segment register form, with `selector`.
pub fn segment_from_descriptor(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xFFFF) | ((entry >> 32) & 0x000F_0000)) as u32;
    let granular = bit(55) == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    let base = ((entry >> 16) & 0x00FF_FFFF) | ((entry >> 32) & 0xFF00_0000);
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xF) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The segment register for `selector` in [`BOOT_GDT`]; `None` for a selector outside it.
pub fn boot_segment(selector: u16) -> Option<kvm_segment> {
    let entry = BOOT_GDT.get(usize::from(selector >> 3))?;
    Some(segment_from_descriptor(*entry, selector))
}

/// Writes [`BOOT_GDT`] at `BOOT_GDT_ADDR` and an empty (all-zero) IDT slot at
/// `BOOT_IDT_ADDR`. The IDT limit in the special registers is 0, so the guest takes no
/// exception through it: any fault before the guest installs its own IDT triple-faults,
/// which KVM reports as a shutdown exit.
pub fn write_gdt_and_idt<M: GuestMemoryBackend>(mem: &M) -> Result<(), BootError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        let addr = BOOT_GDT_ADDR + (i as u64) * 8;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(|source| BootError::GuestWrite {
                what: "GDT entry",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
        .map_err(|source| BootError::GuestWrite {
            what: "IDT",
            addr: BOOT_IDT_ADDR,
            source,
        })
}

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.MP: `wait`/`fwait` honour CR0.TS (the x87 setup Linux itself uses).
pub const X86_CR0_MP: u64 = 1 << 1;
/// CR0.ET: 387-class FPU present (hard-wired to 1 on every x86-64 CPU).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting (#MF) instead of the legacy IRQ13 path.
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0.PG: paging, required together with EFER.LME for long mode.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR: the OS uses fxsave/fxrstor, so SSE instructions do not #UD.
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: unmasked SSE exceptions raise #XM rather than #UD.
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (KVM wants it set explicitly when entering with PG=1).
pub const EFER_LMA: u64 = 1 << 10;

/// Puts `sregs` (normally the output of `KVM_GET_SREGS` on a fresh vCPU) into 64-bit long
/// mode with the boot GDT, the empty IDT and the identity page tables at `PML4_ADDR`:
///
/// - GDTR = `BOOT_GDT_ADDR`, limit `BOOT_GDT_SIZE - 1`; IDTR = `BOOT_IDT_ADDR`, limit 0.
/// - CS = `CODE_SELECTOR` (64-bit code); DS, ES, FS, GS, SS = `DATA_SELECTOR`; TR =
///   `TSS_SELECTOR`. These are what the Linux 64-bit boot protocol requires of `__BOOT_CS`
///   and `__BOOT_DS`.
/// - CR0 = PE | MP | ET | NE | PG. CD and NW are cleared (the reset value has them set,
///   which would make the guest run uncached); WP and AM are left to the guest.
/// - CR3 = `PML4_ADDR`.
/// - CR4 = PAE | OSFXSR | OSXMMEXCPT: PAE for long mode, the other two so compiled code may
///   use SSE from the first instruction (the builtin guest kit does).
/// - EFER = LME | LMA. SCE (syscall) and NXE are left clear: the boot page tables never set
///   NX, and Linux enables both itself.
///
/// Does not touch LDTR, APIC base or the debug registers. Does not write guest memory: call
/// [`write_gdt_and_idt`] and `identity_page_tables` too.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (BOOT_GDT_SIZE - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 0;

    let code = segment_from_descriptor(BOOT_GDT[usize::from(CODE_SELECTOR >> 3)], CODE_SELECTOR);
    let data = segment_from_descriptor(BOOT_GDT[usize::from(DATA_SELECTOR >> 3)], DATA_SELECTOR);
    let tss = segment_from_descriptor(BOOT_GDT[usize::from(TSS_SELECTOR >> 3)], TSS_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test guest memory")
    }

    #[test]
    fn descriptor_encoding_matches_known_values() {
        assert_eq!(gdt_entry(0xA09B, 0, 0xFFFFF), 0x00AF_9B00_0000_FFFF);
        assert_eq!(gdt_entry(0xC093, 0, 0xFFFFF), 0x00CF_9300_0000_FFFF);
        assert_eq!(gdt_entry(0x008B, 0, 0x67), 0x0000_8B00_0000_0067);
        // Base bytes land in bits 16..40 and 56..64.
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0x1_2345),
            0x1201_9334_5678_2345
        );
    }

    #[test]
    fn boot_gdt_has_linux_selectors() {
        assert_eq!(BOOT_GDT[0], 0);
        assert_eq!(BOOT_GDT[2], 0x00AF_9B00_0000_FFFF);
        assert_eq!(BOOT_GDT[3], 0x00CF_9300_0000_FFFF);
        assert_eq!(CODE_SELECTOR, 0x10);
        assert_eq!(DATA_SELECTOR, 0x18);
    }

    #[test]
    fn code_segment_decodes() {
        let cs = boot_segment(CODE_SELECTOR).expect("code selector in GDT");
        assert_eq!(cs.base, 0);
        assert_eq!(cs.limit, 0xFFFF_FFFF);
        assert_eq!(cs.selector, 0x10);
        assert_eq!(cs.type_, 0xB);
        assert_eq!(
            (cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g),
            (1, 0, 0, 1, 1, 1)
        );
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments_decode() {
        let ds = boot_segment(DATA_SELECTOR).expect("data selector in GDT");
        assert_eq!((ds.type_, ds.db, ds.l, ds.s, ds.g), (3, 1, 0, 1, 1));
        assert_eq!(ds.limit, 0xFFFF_FFFF);
        let tr = boot_segment(TSS_SELECTOR).expect("tss selector in GDT");
        assert_eq!((tr.type_, tr.s, tr.present, tr.g), (0xB, 0, 1, 0));
        assert_eq!(tr.limit, 0x67);
        assert!(boot_segment(0x40).is_none());
        assert_eq!(boot_segment(0).map(|s| s.unusable), Some(1));
    }

    #[test]
    fn gdt_and_idt_written_to_guest() {
        let mem = guest_mem();
        mem.write_obj(0xFFFF_FFFF_FFFF_FFFFu64, GuestAddress(BOOT_IDT_ADDR))
            .expect("prefill");
        write_gdt_and_idt(&mem).expect("write gdt");
        for (i, want) in BOOT_GDT.iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(BOOT_GDT_ADDR + i as u64 * 8))
                .expect("read gdt");
            assert_eq!(got, *want, "entry {i}");
        }
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_ADDR)).expect("read idt");
        assert_eq!(idt, 0);
    }

    #[test]
    fn gdt_write_fails_cleanly_without_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)])
            .expect("test guest memory");
        let err = write_gdt_and_idt(&mem).expect_err("no memory at 0x500");
        assert!(err.to_string().contains("0x500"), "{err}");
    }

    #[test]
    fn sregs_are_long_mode() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        long_mode_sregs(&mut sregs);
        assert_eq!(sregs.cr0, 0x8000_0033);
        assert_eq!(sregs.cr0 & (1 << 30 | 1 << 29), 0, "CD/NW cleared");
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_eq!(sregs.cr4, 0x620);
        assert_eq!(sregs.efer, 0x500);
        assert_eq!(sregs.gdt.base, BOOT_GDT_ADDR);
        assert_eq!(sregs.gdt.limit, 31);
        assert_eq!(sregs.idt.base, BOOT_IDT_ADDR);
        assert_eq!(sregs.idt.limit, 0);
        assert_eq!(sregs.cs.selector, 0x10);
        assert_eq!(sregs.cs.l, 1);
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(seg.selector, 0x18);
            assert_eq!(seg.type_, 3);
        }
        assert_eq!(sregs.tr.selector, TSS_SELECTOR);
    }
}
