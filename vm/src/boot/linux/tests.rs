use super::*;
use std::io::Write;
use vm_memory::bitmap::AtomicBitmap;

type Mem = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// A named corruption of a test image.
type Tweak = (&'static str, fn(&mut Vec<u8>));

const MIB: u64 = 1 << 20;
const TEST_INIT_SIZE: u32 = 0x80_0000;

fn guest(mem_bytes: u64) -> Mem {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    Mem::from_ranges(&ranges).expect("test guest memory")
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Payload byte at offset `i` of the protected-mode kernel.
fn payload_byte(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

/// A minimal bzImage: setup sectors with a 2.15 setup header, then `payload` bytes of
/// "protected-mode kernel".
fn bzimage(setup_sects: u8, payload: usize) -> Vec<u8> {
    let setup = (usize::from(setup_sects) + 1) * 512;
    let mut b = vec![0u8; setup + payload];
    b[0x1F1] = setup_sects;
    put16(&mut b, 0x1FE, 0xAA55);
    b[0x200] = 0xEB;
    b[0x201] = 0x6A; // header ends at 0x26C
    b[0x202..0x206].copy_from_slice(b"HdrS");
    put16(&mut b, 0x206, 0x020F);
    b[0x211] = 0x01; // LOADED_HIGH
    put32(&mut b, 0x214, 0x10_0000);
    put32(&mut b, 0x22C, 0x7FFF_FFFF);
    put32(&mut b, 0x230, 0x20_0000);
    b[0x234] = 1; // relocatable
    put16(&mut b, 0x236, 0x1); // XLF_KERNEL_64
    put32(&mut b, 0x238, 2047);
    put64(&mut b, 0x258, 0x100_0000); // pref_address
    put32(&mut b, 0x260, TEST_INIT_SIZE);
    for i in 0..payload {
        b[setup + i] = payload_byte(i);
    }
    b
}

const ELF_LOAD: u64 = 0x100_0000;
const ELF_ENTRY: u64 = ELF_LOAD + 0x40;
const ELF_CODE_LEN: usize = 0x3000;
const ELF_BSS_END: u64 = 0x180_0000;

/// A minimal x86-64 ELF vmlinux: one PT_LOAD of code at 16 MiB, one PT_LOAD of BSS
/// (p_filesz 0) up to 24 MiB, and a PT_NOTE without a PVH note.
fn elf() -> Vec<u8> {
    let phoff = 64usize;
    let phnum = 3usize;
    let code_off = 0x1000usize;
    let mut b = vec![0u8; code_off + ELF_CODE_LEN];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    put16(&mut b, 16, 2); // ET_EXEC
    put16(&mut b, 18, 62);
    put32(&mut b, 20, 1);
    put64(&mut b, 24, ELF_ENTRY);
    put64(&mut b, 32, phoff as u64);
    put16(&mut b, 52, 64);
    put16(&mut b, 54, 56);
    put16(&mut b, 56, phnum as u16);
    let ph = |b: &mut Vec<u8>, i: usize, ty: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
        let p = phoff + i * 56;
        put32(b, p, ty);
        put32(b, p + 4, 5);
        put64(b, p + 8, off);
        put64(b, p + 16, paddr | 0xFFFF_FFFF_8000_0000);
        put64(b, p + 24, paddr);
        put64(b, p + 32, filesz);
        put64(b, p + 40, memsz);
        put64(b, p + 48, 0x20_0000);
    };
    ph(
        &mut b,
        0,
        1,
        code_off as u64,
        ELF_LOAD,
        ELF_CODE_LEN as u64,
        ELF_CODE_LEN as u64,
    );
    ph(
        &mut b,
        1,
        1,
        0,
        ELF_LOAD + 0x20_0000,
        0,
        ELF_BSS_END - ELF_LOAD - 0x20_0000,
    );
    ph(&mut b, 2, 4, 0x200, 0, 0, 0);
    for i in 0..ELF_CODE_LEN {
        b[code_off + i] = payload_byte(i);
    }
    b
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(bytes).expect("write temp file");
    f.flush().expect("flush temp file");
    f
}

fn load(
    mem: &Mem,
    mem_bytes: u64,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<LinuxBoot, BootError> {
    let kernel = file_with(kernel);
    let initrd = initrd.map(file_with);
    let mut kf = kernel.reopen().expect("reopen kernel");
    let mut inf = initrd.as_ref().map(|f| f.reopen().expect("reopen initrd"));
    load_linux(mem, mem_bytes, &mut kf, inf.as_mut(), cmdline)
}

fn params(mem: &Mem) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_ADDR))
        .expect("read boot_params")
}

fn e820_of(p: &boot_params) -> Vec<E820Entry> {
    let table = p.e820_table;
    table[..usize::from(p.e820_entries)]
        .iter()
        .map(|e| E820Entry {
            addr: e.addr,
            size: e.size,
            kind: e.r#type,
        })
        .collect()
}

fn cmdline_in(mem: &Mem, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
        .expect("read cmdline");
    buf
}

#[test]
fn e820_for_256_mib() {
    let map = e820_map(256 * MIB);
    assert_eq!(
        map,
        vec![
            E820Entry {
                addr: 0,
                size: 0x9FC00,
                kind: E820_RAM
            },
            E820Entry {
                addr: 0x9FC00,
                size: 0x100000 - 0x9FC00,
                kind: E820_RESERVED
            },
            E820Entry {
                addr: 0x100000,
                size: 256 * MIB - 0x100000,
                kind: E820_RAM
            },
        ]
    );
}

#[test]
fn e820_for_5_gib() {
    let five = 5u64 << 30;
    let map = e820_map(five);
    assert_eq!(map.len(), 4);
    assert_eq!(
        map[2],
        E820Entry {
            addr: 0x100000,
            size: 0xD000_0000 - 0x100000,
            kind: E820_RAM
        }
    );
    assert_eq!(
        map[3],
        E820Entry {
            addr: 1 << 32,
            size: five - 0xD000_0000,
            kind: E820_RAM
        }
    );
    let ram: u64 = map
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum();
    assert_eq!(ram + (HIMEM_START - EBDA_START), five);
}

#[test]
fn bzimage_loads_with_boot_params() {
    let mem_bytes = 256 * MIB;
    let mem = guest(mem_bytes);
    let image = bzimage(4, 0x4000);
    let boot = load(
        &mem,
        mem_bytes,
        &image,
        None,
        "console=ttyS0 reboot=k panic=1",
    )
    .expect("load");
    assert_eq!(boot.kind, KernelKind::BzImage);
    assert_eq!(boot.entry_rip, 0x100200);
    assert_eq!(boot.boot_params_addr, ZERO_PAGE_ADDR);
    assert_eq!(boot.kernel_start, HIMEM_START);
    // Decompression: 1 MiB aligned up to 2 MiB is below pref_address 16 MiB.
    assert_eq!(boot.kernel_end, 0x100_0000 + u64::from(TEST_INIT_SIZE));
    assert_eq!(boot.initrd, None);

    let mut payload = vec![0u8; 0x4000];
    mem.read_slice(&mut payload, GuestAddress(HIMEM_START))
        .expect("read kernel");
    assert!(payload
        .iter()
        .enumerate()
        .all(|(i, b)| *b == payload_byte(i)));

    let p = params(&mem);
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, 0xAA55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, 0x020F);
    assert_eq!(hdr.type_of_loader, 0xFF);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.ramdisk_image }, 0);
    assert_eq!({ hdr.ramdisk_size }, 0);
    assert_eq!({ hdr.init_size }, TEST_INIT_SIZE);
    assert_eq!({ hdr.kernel_info_offset }, 0);
    assert_eq!(e820_of(&p), e820_map(mem_bytes));
    let cmd = b"console=ttyS0 reboot=k panic=1\0";
    assert_eq!(cmdline_in(&mem, cmd.len()), cmd);
}

#[test]
fn bzimage_header_stops_at_its_own_end() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let mut image = bzimage(4, 0x1000);
    image[0x201] = 0x66; // a 2.14 kernel: header ends at 0x268, setup code follows
    put32(&mut image, 0x268, 0xDEAD_BEEF);
    // Loader-owned fields the file should not have set.
    put32(&mut image, 0x218, 0x1234_5000);
    put32(&mut image, 0x21C, 0x1000);
    put64(&mut image, 0x250, 0x5000);
    load(&mem, mem_bytes, &image, None, "").expect("load");
    let hdr = params(&mem).hdr;
    assert_eq!({ hdr.kernel_info_offset }, 0, "setup code is not header");
    assert_eq!({ hdr.ramdisk_image }, 0);
    assert_eq!({ hdr.ramdisk_size }, 0);
    assert_eq!({ hdr.setup_data }, 0);
    assert_eq!({ hdr.init_size }, TEST_INIT_SIZE);
}

#[test]
fn bzimage_setup_sects_zero_means_four() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let mut image = bzimage(4, 0x1000);
    image[0x1F1] = 0;
    load(&mem, mem_bytes, &image, None, "").expect("load");
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(HIMEM_START))
        .expect("read");
    assert_eq!(
        first,
        [
            payload_byte(0),
            payload_byte(1),
            payload_byte(2),
            payload_byte(3)
        ]
    );
}

#[test]
fn initrd_placed_high_and_page_aligned() {
    let mem_bytes = 256 * MIB;
    let mem = guest(mem_bytes);
    let initrd: Vec<u8> = (0..0x12345u32).map(|i| (i % 251) as u8).collect();
    let boot = load(&mem, mem_bytes, &bzimage(4, 0x4000), Some(&initrd), "").expect("load");
    let range = boot.initrd.clone().expect("initrd range");
    assert_eq!(range.start % PAGE_SIZE, 0);
    assert_eq!(range.end - range.start, initrd.len() as u64);
    assert!(range.end <= mem_bytes);
    assert!(mem_bytes - range.end < PAGE_SIZE, "as high as possible");
    assert!(range.start >= boot.kernel_end);
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, GuestAddress(range.start))
        .expect("read initrd");
    assert_eq!(back, initrd);
    let hdr = params(&mem).hdr;
    assert_eq!(u64::from(hdr.ramdisk_image), range.start);
    assert_eq!(u64::from(hdr.ramdisk_size), initrd.len() as u64);
}

#[test]
fn initrd_respects_initrd_addr_max() {
    let mem_bytes = 2048 * MIB;
    let mem = guest(mem_bytes);
    let mut image = bzimage(4, 0x1000);
    put32(&mut image, 0x22C, 0x37FF_FFFF);
    let boot = load(&mem, mem_bytes, &image, Some(&[7u8; 5000]), "").expect("load");
    let range = boot.initrd.expect("initrd");
    assert!(range.end <= 0x3800_0000);
    assert!(0x3800_0000 - range.end < PAGE_SIZE);
}

#[test]
fn initrd_too_big_or_empty_is_rejected() {
    let mem_bytes = 32 * MIB;
    let mem = guest(mem_bytes);
    // Kernel needs up to 24 MiB; 9 MiB of initrd cannot fit below 32 MiB.
    let big = vec![1u8; 9 * MIB as usize];
    let err = load(&mem, mem_bytes, &bzimage(4, 0x1000), Some(&big), "").expect_err("too big");
    assert!(
        matches!(err, BootError::InitrdDoesNotFit { size, .. } if size == 9 * MIB),
        "{err}"
    );
    let err = load(&mem, mem_bytes, &bzimage(4, 0x1000), Some(&[]), "").expect_err("empty");
    assert!(matches!(err, BootError::InitrdEmpty { .. }), "{err}");
}

#[test]
fn elf_loads_with_synthesised_header() {
    let mem_bytes = 128 * MIB;
    let mem = guest(mem_bytes);
    let initrd = [9u8; 3000];
    let boot = load(&mem, mem_bytes, &elf(), Some(&initrd), "root=/dev/vda").expect("load");
    assert_eq!(boot.kind, KernelKind::Elf);
    assert_eq!(boot.entry_rip, ELF_ENTRY);
    assert_eq!(boot.kernel_start, ELF_LOAD);
    assert_eq!(boot.kernel_end, ELF_BSS_END, "BSS counts");
    let mut code = vec![0u8; ELF_CODE_LEN];
    mem.read_slice(&mut code, GuestAddress(ELF_LOAD))
        .expect("read");
    assert!(code.iter().enumerate().all(|(i, b)| *b == payload_byte(i)));

    let p = params(&mem);
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, 0xAA55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xFF);
    assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ hdr.cmdline_size }, "root=/dev/vda".len() as u32);
    let range = boot.initrd.expect("initrd");
    assert_eq!(u64::from(hdr.ramdisk_image), range.start);
    assert!(mem_bytes - range.end < PAGE_SIZE);
    assert_eq!(e820_of(&p), e820_map(mem_bytes));
}

#[test]
fn five_gib_guest_gets_high_ram_in_e820() {
    let mem_bytes = 5u64 << 30;
    let mem = guest(mem_bytes);
    let boot = load(&mem, mem_bytes, &bzimage(4, 0x1000), Some(&[1u8; 100]), "").expect("load");
    let p = params(&mem);
    assert_eq!(e820_of(&p), e820_map(mem_bytes));
    assert_eq!(p.e820_entries, 4);
    let range = boot.initrd.expect("initrd");
    assert!(range.end <= MMIO_GAP_START, "initrd below the hole");
}

#[test]
fn cmdline_too_long_is_rejected() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let long = "a".repeat(CMDLINE_MAX_SIZE);
    let err = load(&mem, mem_bytes, &elf(), None, &long).expect_err("too long");
    assert!(
        matches!(err, BootError::CmdlineTooLong { len, max } if len == CMDLINE_MAX_SIZE && max == CMDLINE_MAX_SIZE),
        "{err}"
    );
    // One byte shorter fits our buffer.
    let fits = "a".repeat(CMDLINE_MAX_SIZE - 1);
    load(&mem, mem_bytes, &elf(), None, &fits).expect("max length fits");
    // The bzImage says 2047 bytes at most.
    let err = load(
        &mem,
        mem_bytes,
        &bzimage(4, 0x1000),
        None,
        &"b".repeat(2048),
    )
    .expect_err("kernel limit");
    assert!(
        matches!(
            err,
            BootError::CmdlineTooLong {
                len: 2048,
                max: 2048
            }
        ),
        "{err}"
    );
    let err = load(&mem, mem_bytes, &elf(), None, "a\0b").expect_err("NUL");
    assert!(matches!(err, BootError::BadCmdline { .. }), "{err}");
}

#[test]
fn empty_and_unknown_kernels_name_the_file() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let empty = file_with(&[]);
    let mut f = empty.reopen().expect("reopen");
    let err = load_linux(&mem, mem_bytes, &mut f, None, "").expect_err("empty");
    assert!(matches!(err, BootError::KernelEmpty { .. }), "{err}");
    assert!(
        err.to_string().contains(&*empty.path().to_string_lossy()),
        "{err}"
    );

    // Any file the VMM can read may be named: the error says what is missing and never
    // quotes what the file holds (here "root:x:0:0", as /etc/passwd would begin).
    let junk = file_with(b"root:x:0:0:root:/root:/bin/bash\n");
    let mut f = junk.reopen().expect("reopen");
    let err = load_linux(&mem, mem_bytes, &mut f, None, "").expect_err("junk");
    assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&*junk.path().to_string_lossy()), "{msg}");
    assert!(msg.contains("no boot signature"), "{msg}");
    for leak in ["root", "72 6f 6f 74", "726f6f74", "bash"] {
        assert!(!msg.contains(leak), "{leak:?} in {msg}");
    }

    let err = load(&mem, mem_bytes, &vec![0u8; 0x1000], None, "").expect_err("zeros");
    assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    assert!(!err.to_string().contains("00 00"), "{err}");
}

#[test]
fn check_linux_agrees_with_the_load_without_guest_memory() {
    let mem_bytes = 64 * MIB;
    let check = |kernel: &[u8], initrd: Option<&[u8]>, mem_bytes: u64, cmdline: &str| {
        let kernel = file_with(kernel);
        let initrd = initrd.map(file_with);
        let mut kf = kernel.reopen().expect("reopen kernel");
        let mut inf = initrd.as_ref().map(|f| f.reopen().expect("reopen initrd"));
        check_linux(mem_bytes, &mut kf, inf.as_mut(), cmdline)
    };
    for (kernel, initrd) in [(bzimage(4, 0x4000), Some(vec![9u8; 10_000])), (elf(), None)] {
        let checked = check(&kernel, initrd.as_deref(), mem_bytes, "console=ttyS0")
            .expect("a good kernel checks");
        let mem = guest(mem_bytes);
        let loaded =
            load(&mem, mem_bytes, &kernel, initrd.as_deref(), "console=ttyS0").expect("and loads");
        assert_eq!(checked, loaded);
    }
    // What the load refuses, the check refuses the same way.
    let too_big = check(&elf(), None, 16 * MIB, "").expect_err("too big");
    assert!(
        matches!(too_big, BootError::KernelTooBig { .. }),
        "{too_big}"
    );
    let initrd = vec![1u8; (60 * MIB) as usize];
    let err = check(&bzimage(4, 0x1000), Some(&initrd), mem_bytes, "").expect_err("initrd");
    assert!(matches!(err, BootError::InitrdDoesNotFit { .. }), "{err}");
    let err = check(b"not a kernel", None, mem_bytes, "").expect_err("junk");
    assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    let err = check(&elf(), None, MIB, "").expect_err("memory");
    assert!(matches!(err, BootError::MemorySize { .. }), "{err}");
}

#[test]
fn truncated_kernels_are_rejected() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let image = bzimage(4, 0x1000);
    for cut in [0x206, 0x230, 0x26B, 0x400, 5 * 512 + 0x100] {
        let err = load(&mem, mem_bytes, &image[..cut], None, "").expect_err("truncated bzImage");
        assert!(
            matches!(err, BootError::BadBzImage { .. }),
            "cut {cut:#x}: {err}"
        );
    }
    let image = elf();
    for cut in [4, 40, 64, 64 + 56 * 2, 0x1800] {
        let err = load(&mem, mem_bytes, &image[..cut], None, "").expect_err("truncated ELF");
        assert!(matches!(err, BootError::BadElf { .. }), "cut {cut}: {err}");
    }
}

#[test]
fn unsupported_bzimages_are_rejected() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let cases: [Tweak; 5] = [
        ("older than", |b| put16(b, 0x206, 0x020A)),
        ("LOADED_HIGH", |b| b[0x211] = 0),
        ("XLF_KERNEL_64", |b| put16(b, 0x236, 0)),
        ("init_size is 0", |b| put32(b, 0x260, 0)),
        ("kernel_alignment", |b| put32(b, 0x230, 0x30_0000)),
    ];
    for (needle, tweak) in cases {
        let mut image = bzimage(4, 0x1000);
        tweak(&mut image);
        let err = load(&mem, mem_bytes, &image, None, "").expect_err(needle);
        assert!(matches!(err, BootError::BadBzImage { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn unsupported_elfs_are_rejected() {
    let mem_bytes = 64 * MIB;
    let mem = guest(mem_bytes);
    let cases: [Tweak; 8] = [
        ("EI_CLASS", |b| b[4] = 1),
        ("EI_DATA", |b| b[5] = 2),
        ("e_machine", |b| put16(b, 18, 3)),
        ("e_phentsize", |b| put16(b, 54, 32)),
        ("entry point", |b| put64(b, 24, 0x200_0000)),
        ("below", |b| put64(b, 64 + 24, 0x8000)),
        ("p_filesz", |b| put64(b, 64 + 32, 0x10_0000)),
        ("note range", |b| put64(b, 64 + 2 * 56 + 8, u64::MAX - 4)),
    ];
    for (needle, tweak) in cases {
        let mut image = elf();
        tweak(&mut image);
        let err = load(&mem, mem_bytes, &image, None, "").expect_err(needle);
        assert!(matches!(err, BootError::BadElf { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn kernels_too_big_for_memory_are_rejected() {
    // 16 MiB of RAM: the ELF wants up to 24 MiB, the bzImage decompresses up to 24 MiB.
    let mem_bytes = 16 * MIB;
    let mem = guest(mem_bytes);
    let err = load(&mem, mem_bytes, &elf(), None, "").expect_err("elf too big");
    assert!(
        matches!(err, BootError::KernelTooBig { ram_end, .. } if ram_end == mem_bytes),
        "{err}"
    );
    // Only the BSS segment is too big.
    let err = load(&mem, 20 * MIB, &elf(), None, "");
    assert!(
        matches!(err, Err(BootError::MemoryNotBacked { .. })),
        "{err:?}"
    );
    let mem20 = guest(20 * MIB);
    let err = load(&mem20, 20 * MIB, &elf(), None, "").expect_err("bss too big");
    assert!(
        matches!(
            err,
            BootError::KernelTooBig {
                kernel_end: ELF_BSS_END,
                ..
            }
        ),
        "{err}"
    );
    let err = load(&mem, mem_bytes, &bzimage(4, 0x1000), None, "").expect_err("bz too big");
    assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
    // A hostile p_memsz that wraps.
    let mut image = elf();
    put64(&mut image, 64 + 56 + 40, u64::MAX);
    let err = load(&mem, mem_bytes, &image, None, "").expect_err("wrap");
    assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
}

#[test]
fn bad_memory_sizes_are_rejected() {
    let mem = guest(64 * MIB);
    let err = load(&mem, MIB, &elf(), None, "").expect_err("too small");
    assert!(matches!(err, BootError::MemorySize { .. }), "{err}");
    let err = load(&mem, 128 * MIB, &elf(), None, "").expect_err("not backed");
    assert!(matches!(err, BootError::MemoryNotBacked { .. }), "{err}");
}

/// Deterministic xorshift for the mutation test.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_kernels_never_panic() {
    let mem_bytes = 32 * MIB;
    let mem = guest(mem_bytes);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for base in [bzimage(4, 0x2000), elf()] {
        for _ in 0..300 {
            let mut image = base.clone();
            for _ in 0..(next(&mut state) % 8 + 1) {
                let pos = (next(&mut state) % 0x300) as usize;
                image[pos] = next(&mut state) as u8;
            }
            let cut = (next(&mut state) as usize) % (image.len() + 1);
            if next(&mut state) % 4 == 0 {
                image.truncate(cut);
            }
            // Any result is fine; panicking is not.
            let _ = load(&mem, mem_bytes, &image, Some(&[1u8; 64]), "x");
        }
    }
}

/// Loads the kernel named by NOVACRON_TEST_KERNEL, if any.
#[test]
fn real_kernel_from_environment() {
    let Some(path) = std::env::var_os("NOVACRON_TEST_KERNEL") else {
        eprintln!("skipped: NOVACRON_TEST_KERNEL is not set");
        return;
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: cannot open NOVACRON_TEST_KERNEL={path:?}: {e}");
            return;
        }
    };
    let mem_bytes = 512 * MIB;
    let mem = guest(mem_bytes);
    let boot = load_linux(&mem, mem_bytes, &mut file, None, "console=ttyS0 panic=1")
        .expect("real kernel loads");
    let p = params(&mem);
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, 0xAA55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xFF);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!(e820_of(&p), e820_map(mem_bytes));
    assert!(boot.kernel_end <= mem_bytes);
    match boot.kind {
        KernelKind::BzImage => {
            assert_eq!(boot.entry_rip, HIMEM_START + 0x200);
            assert!({ hdr.version } >= 0x020C);
            assert_ne!({ hdr.xloadflags } & 1, 0);
        }
        KernelKind::Elf => assert!(boot.entry_rip >= HIMEM_START),
    }
    eprintln!("loaded {path:?}: {boot:?}");
}
