//! `load_linux_image`: ELF vmlinux and bzImage kernels (and an initrd) from memory into a
//! 16 MiB guest.
//!
//! Input: a flags byte (bit 0: load an initrd, the input's last 256 bytes; bits 1-2: which
//! command line), then the kernel. Invariants when a kernel loads: the entry point lies in
//! the kernel's range, the kernel and initrd lie inside RAM above the boot tables and do not
//! overlap, and the zero page holds the boot_params magic and the e820 map; and
//! `check_linux_image` (the check without guest memory) gives the same figures.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use novacron_vm::boot::linux::{check_linux_image, load_linux_image};
use novacron_vm::boot::{ram_regions, KernelKind};
use novacron_vm::machine::layout::{CMDLINE_ADDR, HIMEM_START, ZERO_PAGE_ADDR};

use crate::Seed;

const MEM_BYTES: u64 = 16 << 20;
const WITH_INITRD: u8 = 1;
const INITRD_BYTES: usize = 256;
const CMDLINES: [&str; 4] = ["", "console=ttyS0 reboot=k panic=1", "a=\"b c\"", "x"];
/// Offsets in boot_params of `e820_entries`, `hdr.type_of_loader` and `hdr.cmd_line_ptr`.
const E820_ENTRIES_OFFSET: u64 = 0x1E8;
const TYPE_OF_LOADER_OFFSET: u64 = 0x210;
const CMD_LINE_PTR_OFFSET: u64 = 0x228;

fn guest() -> GuestMemoryMmap<AtomicBitmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(MEM_BYTES)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges)
        .unwrap_or_else(|e| panic!("fuzz harness: cannot map guest memory: {e}"))
}

pub fn check(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let (kernel, initrd) = if flags & WITH_INITRD != 0 && rest.len() > INITRD_BYTES {
        let (k, i) = rest.split_at(rest.len() - INITRD_BYTES);
        (k, Some(i))
    } else {
        (rest, None)
    };
    let cmdline = CMDLINES[usize::from(flags >> 1) % CMDLINES.len()];
    let mem = guest();
    let mut kernel_src = Cursor::new(kernel);
    let mut initrd_src = initrd.map(Cursor::new);
    let initrd_arg = initrd_src
        .as_mut()
        .map(|src| (src, PathBuf::from("/fuzz/initrd")));
    let result = load_linux_image(
        &mem,
        MEM_BYTES,
        &mut kernel_src,
        Path::new("/fuzz/kernel"),
        initrd_arg,
        cmdline,
    );
    // The check the node runs before a VM is recorded passes whatever loads, with the same
    // figures, and refuses nothing that loads.
    let mut check_initrd = initrd.map(Cursor::new);
    let checked = check_linux_image(
        MEM_BYTES,
        &mut Cursor::new(kernel),
        Path::new("/fuzz/kernel"),
        check_initrd
            .as_mut()
            .map(|src| (src, PathBuf::from("/fuzz/initrd"))),
        cmdline,
    );
    if let Ok(boot) = &result {
        assert_eq!(checked.as_ref().ok(), Some(boot), "checked {checked:?}");
    }
    let Ok(boot) = result else {
        return false;
    };
    assert!(boot.kernel_start >= HIMEM_START && boot.kernel_start < boot.kernel_end);
    assert!(boot.kernel_end <= MEM_BYTES, "{boot:?}");
    assert!(
        (boot.kernel_start..boot.kernel_end).contains(&boot.entry_rip),
        "{boot:?}"
    );
    if boot.kind == KernelKind::BzImage {
        assert_eq!(boot.entry_rip, HIMEM_START + 0x200);
    }
    assert_eq!(boot.initrd.is_some(), initrd.is_some());
    if let (Some(range), Some(bytes)) = (&boot.initrd, initrd) {
        assert!(
            range.start >= boot.kernel_end && range.end <= MEM_BYTES,
            "{boot:?}"
        );
        assert_eq!(range.end - range.start, bytes.len() as u64);
        let mut got = vec![0u8; bytes.len()];
        mem.read_slice(&mut got, GuestAddress(range.start))
            .unwrap_or_else(|e| panic!("initrd not in memory: {e}"));
        assert_eq!(got, bytes, "initrd bytes differ");
    }
    check_zero_page(&mem);
    true
}

/// The loader-owned fields of boot_params: e820 map size (3 entries for 16 MiB), loader
/// type and command line address.
fn check_zero_page(mem: &GuestMemoryMmap<AtomicBitmap>) {
    let byte = |off: u64| -> u8 {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + off))
            .unwrap_or_else(|e| panic!("zero page unreadable: {e}"))
    };
    assert_eq!(byte(E820_ENTRIES_OFFSET), 3);
    assert_eq!(byte(TYPE_OF_LOADER_OFFSET), 0xFF);
    let cmdline: u32 = mem
        .read_obj(GuestAddress(ZERO_PAGE_ADDR + CMD_LINE_PTR_OFFSET))
        .unwrap_or_else(|e| panic!("zero page unreadable: {e}"));
    assert_eq!(u64::from(cmdline), CMDLINE_ADDR);
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// A minimal bzImage (boot protocol 2.15, 64-bit entry, relocatable) whose decompression
/// area fits the 16 MiB guest.
pub fn bzimage() -> Vec<u8> {
    let setup_sects = 1u8;
    let setup = (usize::from(setup_sects) + 1) * 512;
    let mut b = vec![0u8; setup + 0x300];
    b[0x1F1] = setup_sects;
    put(&mut b, 0x1FE, &0xAA55u16.to_le_bytes());
    b[0x200] = 0xEB;
    b[0x201] = 0x6A; // header ends at 0x26C
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &0x020Fu16.to_le_bytes());
    b[0x211] = 0x01; // LOADED_HIGH
    put(&mut b, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut b, 0x22C, &0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
    put(&mut b, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    b[0x234] = 1; // relocatable
    put(&mut b, 0x236, &1u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut b, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut b, 0x258, &0x20_0000u64.to_le_bytes()); // pref_address
    put(&mut b, 0x260, &0x40_0000u32.to_le_bytes()); // init_size
    for (i, byte) in b[setup..].iter_mut().enumerate() {
        *byte = (i * 7 + 3) as u8;
    }
    b
}

/// A minimal x86-64 ELF vmlinux: a PT_LOAD of code at 2 MiB, a PT_LOAD of BSS up to 4 MiB
/// and an empty PT_NOTE.
pub fn elf() -> Vec<u8> {
    let (phoff, code_off, code_len) = (64usize, 0x200usize, 0x200usize);
    let (load, bss, bss_end) = (0x20_0000u64, 0x30_0000u64, 0x40_0000u64);
    let mut b = vec![0u8; code_off + code_len];
    put(&mut b, 0, b"\x7fELF\x02\x01\x01");
    put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut b, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &(load + 0x40).to_le_bytes()); // entry
    put(&mut b, 32, &(phoff as u64).to_le_bytes());
    put(&mut b, 52, &64u16.to_le_bytes());
    put(&mut b, 54, &56u16.to_le_bytes());
    put(&mut b, 56, &3u16.to_le_bytes());
    let headers = [
        (
            1u32,
            code_off as u64,
            load,
            code_len as u64,
            code_len as u64,
        ),
        (1, 0, bss, 0, bss_end - bss),
        (4, 0x100, 0, 0, 0),
    ];
    for (i, (ty, off, paddr, filesz, memsz)) in headers.into_iter().enumerate() {
        let p = phoff + i * 56;
        put(&mut b, p, &ty.to_le_bytes());
        put(&mut b, p + 4, &5u32.to_le_bytes());
        put(&mut b, p + 8, &off.to_le_bytes());
        put(
            &mut b,
            p + 16,
            &(paddr | 0xFFFF_FFFF_8000_0000).to_le_bytes(),
        );
        put(&mut b, p + 24, &paddr.to_le_bytes());
        put(&mut b, p + 32, &filesz.to_le_bytes());
        put(&mut b, p + 40, &memsz.to_le_bytes());
        put(&mut b, p + 48, &0x20_0000u64.to_le_bytes());
    }
    for (i, byte) in b[code_off..].iter_mut().enumerate() {
        *byte = (i * 5 + 1) as u8;
    }
    b
}

fn input(flags: u8, kernel: Vec<u8>, initrd: bool) -> Vec<u8> {
    let mut out = vec![flags | u8::from(initrd)];
    out.extend(kernel);
    if initrd {
        out.extend((0..INITRD_BYTES).map(|i| (i * 3) as u8));
    }
    out
}

pub fn seeds() -> Vec<Seed> {
    vec![
        ("elf", input(2, elf(), false)),
        ("elf_initrd", input(4, elf(), true)),
        ("bzimage", input(2, bzimage(), false)),
        ("bzimage_initrd", input(0, bzimage(), true)),
    ]
}
