//! Loading a Linux kernel for the x86-64 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
//!
//! [`load_linux`] validates the kernel file itself before handing it to linux-loader, so a
//! hostile or garbled file gives an error naming the file and the offending field instead of a
//! half-loaded guest. It writes the kernel, the command line, the initrd and the zero page
//! (`struct boot_params`); the caller still has to write the GDT/IDT and page tables, set the
//! special registers ([`super::long_mode_sregs`]) and the general registers:
//! RIP = [`LinuxBoot::entry_rip`], RSI = [`LinuxBoot::boot_params_addr`], RFLAGS = 0x2,
//! RBP = RDI = RBX = 0, interrupts disabled.
//!
//! Guest memory must be freshly zeroed (as anonymous mmap gives it): the ELF BSS and the rest
//! of the zero page's neighbours are not cleared here.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use super::regions::{low_ram_end, ram_regions};
use super::BootError;
use crate::machine::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, MAX_MEM_BYTES, MIN_MEM_BYTES,
    MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE, ZERO_PAGE_ADDR,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// "HdrS", little-endian.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// type_of_loader: "undefined" boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xFF;
/// kernel_alignment written into the synthesised header of an ELF kernel.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Offset of the setup header in a bzImage (and of `hdr` in `boot_params`).
const SETUP_HEADER_OFFSET: usize = 0x1F1;
/// Offset of the "HdrS" magic.
const HDRS_OFFSET: usize = 0x202;
/// The 64-bit entry point is this far into the protected-mode kernel.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced xloadflags and with it XLF_KERNEL_64.
const MIN_BOOT_PROTOCOL: u16 = 0x020C;
/// The header must reach at least the end of `init_size` (offset 0x264).
const MIN_HEADER_END: usize = 0x264;
/// loadflags: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// loadflags: heap_end_ptr is valid (we give the real-mode code no heap).
const CAN_USE_HEAP: u8 = 0x80;
/// xloadflags: the kernel has the 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 0x0001;
/// initrd_addr_max of kernels that leave the field 0 (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;

const ELF_HEADER_SIZE: usize = 64;
const ELF_PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// linux-loader parses notes looking for a PVH entry; their file range must be sane.
const PT_NOTE: u32 = 4;
/// e_phnum value meaning "the real count is elsewhere" (not supported).
const PN_XNUM: u16 = 0xFFFF;
/// How many leading bytes of the kernel are examined to recognise it.
const SNIFF_BYTES: usize = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();

/// The kind of kernel image found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF `vmlinux`, loaded at its physical addresses.
    Elf,
    /// A compressed bzImage, its protected-mode part loaded at `HIMEM_START`.
    BzImage,
}

/// Where a loaded Linux guest starts and what it occupies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    pub kind: KernelKind,
    /// 64-bit entry point (guest-physical = virtual under the identity map).
    pub entry_rip: u64,
    /// Guest-physical address of `struct boot_params`; goes into RSI.
    pub boot_params_addr: u64,
    /// Lowest guest-physical address the kernel image occupies.
    pub kernel_start: u64,
    /// End (exclusive) of the memory the kernel needs during early boot: ELF segments
    /// including BSS, or for a bzImage the larger of the loaded payload and the in-place
    /// decompression area (`init_size` from the decompression target).
    pub kernel_end: u64,
    /// Guest-physical range of the initrd, if one was loaded.
    pub initrd: Option<Range<u64>>,
}

/// One e820 memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a guest with `mem_bytes` of RAM laid out by [`ram_regions`]:
/// `[0, EBDA_START)` RAM, `[EBDA_START, HIMEM_START)` reserved (EBDA, MP table, legacy ROM
/// area), `[HIMEM_START, end of low RAM)` RAM, and the RAM above 4 GiB if any.
///
/// Assumes `mem_bytes > HIMEM_START` (every size the VMM accepts is).
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(mem_bytes);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Loads `kernel` (ELF vmlinux or bzImage), `initrd` and `cmdline` into `mem`, a guest of
/// `mem_bytes` bytes whose RAM is laid out by [`ram_regions`], and writes `boot_params` at
/// `ZERO_PAGE_ADDR`.
///
/// Errors (never panics) on: a size outside `MIN_MEM_BYTES..=MAX_MEM_BYTES` or not backed by
/// `mem`; an empty, truncated or unrecognised kernel; a bzImage older than boot protocol 2.12
/// or without the 64-bit entry; ELF segments below `HIMEM_START` or past low RAM; a kernel
/// that needs more memory than the guest has below the MMIO hole; a command line longer than
/// `CMDLINE_MAX_SIZE` (or the kernel's own `cmdline_size`); an initrd that does not fit
/// between the kernel and `min(initrd_addr_max, end of low RAM)`. Every check but the
/// backing runs before guest memory is written, and is what [`check_linux`] runs.
///
/// Files are identified in errors by their `/proc/self/fd` link; no error quotes their
/// bytes.
pub fn load_linux<M: GuestMemoryBackend>(
    mem: &M,
    mem_bytes: u64,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<LinuxBoot, BootError> {
    let (kernel_path, initrd) = named(kernel, initrd);
    load_linux_image(mem, mem_bytes, kernel, &kernel_path, initrd, cmdline)
}

/// Checks that `kernel`, `initrd` and `cmdline` would load into a guest of `mem_bytes`
/// bytes, without guest memory: every check of [`load_linux`] (formats, sizes, placement),
/// reading only the headers of the kernel and the size of the initrd. What the load would
/// return, or the error it would give. For callers that accept a VM before its VMM exists.
pub fn check_linux(
    mem_bytes: u64,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<LinuxBoot, BootError> {
    let (kernel_path, initrd) = named(kernel, initrd);
    check_linux_image(mem_bytes, kernel, &kernel_path, initrd, cmdline)
}

/// The kernel's name in errors, and the initrd with its own.
fn named<'a>(
    kernel: &File,
    initrd: Option<&'a mut File>,
) -> (PathBuf, Option<(&'a mut File, PathBuf)>) {
    let initrd = initrd.map(|file| {
        let path = fd_path(file);
        (file, path)
    });
    (fd_path(kernel), initrd)
}

/// [`check_linux`] over any seekable image source, with the names to report in errors.
pub fn check_linux_image<K, I>(
    mem_bytes: u64,
    kernel: &mut K,
    kernel_path: &Path,
    initrd: Option<(&mut I, PathBuf)>,
    cmdline: &str,
) -> Result<LinuxBoot, BootError>
where
    K: Read + Seek,
    I: Read + Seek,
{
    let initrd = initrd.map(|(file, path)| (file as &mut dyn ReadSeek, path));
    plan_linux(mem_bytes, kernel, kernel_path, initrd, cmdline).map(|plan| plan.boot())
}

/// [`load_linux`] over any seekable image source, with the names to report in errors.
pub fn load_linux_image<M, K, I>(
    mem: &M,
    mem_bytes: u64,
    kernel: &mut K,
    kernel_path: &Path,
    initrd: Option<(&mut I, PathBuf)>,
    cmdline: &str,
) -> Result<LinuxBoot, BootError>
where
    M: GuestMemoryBackend,
    K: Read + Seek + ReadVolatile,
    I: Read + Seek + ReadVolatile,
{
    check_memory(mem, mem_bytes)?;
    let mut initrd = initrd;
    let plan = plan_linux(
        mem_bytes,
        kernel,
        kernel_path,
        initrd
            .as_mut()
            .map(|(file, path)| (&mut **file as &mut dyn ReadSeek, path.clone())),
        cmdline,
    )?;
    write_kernel(mem, kernel, kernel_path, &plan.kernel)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &plan.cmdline).map_err(|source| {
        BootError::BadCmdline {
            reason: format!("writing it at {CMDLINE_ADDR:#x} failed: {source}"),
        }
    })?;
    if let (Some((file, path)), Some(range)) = (initrd, &plan.initrd) {
        write_initrd(mem, file, &path, range)?;
    }
    mem.write_obj(plan.params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootError::GuestWrite {
            what: "boot_params",
            addr: ZERO_PAGE_ADDR,
            source,
        })?;
    let boot = plan.boot();
    tracing::debug!(
        kind = ?boot.kind,
        entry = boot.entry_rip,
        kernel_end = boot.kernel_end,
        initrd = ?boot.initrd,
        "linux kernel loaded"
    );
    Ok(boot)
}

/// A seekable image source, as a trait object (the initrd of a plan).
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A Linux boot checked against the guest's size, before guest memory is written.
struct LinuxPlan {
    kernel: LoadedKernel,
    cmdline: Cmdline,
    initrd: Option<Range<u64>>,
    params: boot_params,
}

impl LinuxPlan {
    fn boot(&self) -> LinuxBoot {
        LinuxBoot {
            kind: self.kernel.kind,
            entry_rip: self.kernel.entry,
            boot_params_addr: ZERO_PAGE_ADDR,
            kernel_start: self.kernel.start,
            kernel_end: self.kernel.end,
            initrd: self.initrd.clone(),
        }
    }
}

/// Every check of a Linux boot into a guest of `mem_bytes` bytes: the size, the command
/// line, the kernel's format and footprint, the initrd's place, the boot parameters.
fn plan_linux<K: Read + Seek>(
    mem_bytes: u64,
    kernel: &mut K,
    kernel_path: &Path,
    initrd: Option<(&mut dyn ReadSeek, PathBuf)>,
    cmdline: &str,
) -> Result<LinuxPlan, BootError> {
    let ram_end = check_memory_size(mem_bytes)?;
    let cmdline = build_cmdline(cmdline)?;
    let kernel = inspect_kernel(kernel, kernel_path, ram_end)?;
    check_cmdline_fits_kernel(&cmdline, &kernel.header)?;
    let initrd = match initrd {
        Some((file, path)) => Some(place_initrd_file(file, &path, &kernel, ram_end)?),
        None => None,
    };
    let params = build_boot_params(&kernel, cmdline_len(&cmdline)?, initrd.clone(), mem_bytes)?;
    Ok(LinuxPlan {
        kernel,
        cmdline,
        initrd,
        params,
    })
}

/// What the format-specific loaders found.
struct LoadedKernel {
    kind: KernelKind,
    entry: u64,
    start: u64,
    end: u64,
    /// Setup header for boot_params: the bzImage's own, or a synthesised one for ELF.
    header: setup_header,
}

fn fd_path(file: &File) -> PathBuf {
    let fd = file.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|_| PathBuf::from(format!("<fd {fd}>")))
}

/// Checks `mem_bytes` against the VMM limits; returns the end of RAM below the MMIO hole.
fn check_memory_size(mem_bytes: u64) -> Result<u64, BootError> {
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&mem_bytes) {
        return Err(BootError::MemorySize {
            mem_bytes,
            min: MIN_MEM_BYTES,
            max: MAX_MEM_BYTES,
        });
    }
    Ok(low_ram_end(mem_bytes))
}

/// Checks `mem_bytes` ([`check_memory_size`]) and that `mem` backs every RAM region.
fn check_memory<M: GuestMemoryBackend>(mem: &M, mem_bytes: u64) -> Result<(), BootError> {
    check_memory_size(mem_bytes)?;
    for (start, len) in ram_regions(mem_bytes) {
        for addr in [start, start + len - 1] {
            if !mem.address_in_range(GuestAddress(addr)) {
                return Err(BootError::MemoryNotBacked { addr, mem_bytes });
            }
        }
    }
    Ok(())
}

fn build_cmdline(cmdline: &str) -> Result<Cmdline, BootError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE,
        });
    }
    let built =
        Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(|e| BootError::BadCmdline {
            reason: e.to_string(),
        })?;
    cmdline_len(&built)?;
    Ok(built)
}

/// Length of the command line without its NUL.
fn cmdline_len(cmdline: &Cmdline) -> Result<usize, BootError> {
    cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .map_err(|e| BootError::BadCmdline {
            reason: e.to_string(),
        })
}

/// A bzImage states the longest command line it accepts (protocol 2.06+).
fn check_cmdline_fits_kernel(cmdline: &Cmdline, header: &setup_header) -> Result<(), BootError> {
    let limit = header.cmdline_size;
    let version = header.version;
    let len = cmdline_len(cmdline)?;
    if version >= 0x0206 && limit != 0 && len as u64 > u64::from(limit) {
        return Err(BootError::CmdlineTooLong {
            len,
            max: limit as usize + 1,
        });
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads up to `SNIFF_BYTES` from the start of the image.
fn read_head<F: Read + Seek + ?Sized>(file: &mut F, path: &Path) -> Result<Vec<u8>, BootError> {
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    file.take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io_err(path))?;
    Ok(head)
}

/// Checks the kernel image (format, headers, footprint in a guest whose low RAM ends at
/// `ram_end`) without loading it.
fn inspect_kernel<F: Read + Seek + ?Sized>(
    file: &mut F,
    path: &Path,
    ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    let size = file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    if size == 0 {
        return Err(BootError::KernelEmpty {
            path: path.to_path_buf(),
        });
    }
    let head = read_head(file, path)?;
    if head.starts_with(b"\x7fELF") {
        inspect_elf(file, path, &head, size, ram_end)
    } else if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(b"HdrS") {
        inspect_bzimage(path, &head, size, ram_end)
    } else {
        Err(BootError::NotAKernel {
            path: path.to_path_buf(),
        })
    }
}

/// Loads an inspected kernel into guest memory.
fn write_kernel<M, F>(
    mem: &M,
    file: &mut F,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(), BootError>
where
    M: GuestMemoryBackend,
    F: Read + Seek + ReadVolatile,
{
    let loaded = match kernel.kind {
        KernelKind::Elf => Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map(drop),
        KernelKind::BzImage => {
            BzImage::load(mem, Some(GuestAddress(HIMEM_START)), file, None).map(drop)
        }
    };
    loaded.map_err(|source| BootError::KernelLoad {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// ELF vmlinux
// ---------------------------------------------------------------------------------------

fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The fields of an ELF64 program header the loader uses.
#[derive(Debug, Clone, Copy)]
struct ElfSegment {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

impl ElfSegment {
    fn parse(b: &[u8]) -> Self {
        ElfSegment {
            p_type: le32(b, 0),
            offset: le64(b, 8),
            paddr: le64(b, 24),
            filesz: le64(b, 32),
            memsz: le64(b, 40),
        }
    }
}

/// The fields of an ELF64 header the loader uses, checked for an x86-64 executable.
struct ElfHeader {
    entry: u64,
    phoff: u64,
    phnum: u16,
}

/// Why an ELF header is not one the loader takes. Each text is the reason in
/// [`BootError::BadElf`].
#[derive(Debug, thiserror::Error)]
enum ElfHeaderError {
    #[error("file is {len} bytes, shorter than the {ELF_HEADER_SIZE}-byte ELF header")]
    Short { len: usize },
    #[error("EI_CLASS is {0}, expected {ELFCLASS64} (64-bit)")]
    Class(u8),
    #[error("EI_DATA is {0}, expected {ELFDATA2LSB} (little-endian)")]
    Data(u8),
    #[error("e_machine is {0}, expected {EM_X86_64} (x86-64)")]
    Machine(u16),
    #[error("e_phentsize is {0}, expected {ELF_PHDR_SIZE}")]
    PhentSize(u16),
    #[error("e_phoff {0:#x} points into the ELF header")]
    PhoffInHeader(u64),
    #[error("e_phnum is {0}: no usable program headers")]
    Phnum(u16),
}

fn parse_elf_header(head: &[u8]) -> Result<ElfHeader, ElfHeaderError> {
    if head.len() < ELF_HEADER_SIZE {
        return Err(ElfHeaderError::Short { len: head.len() });
    }
    if head[4] != ELFCLASS64 {
        return Err(ElfHeaderError::Class(head[4]));
    }
    if head[5] != ELFDATA2LSB {
        return Err(ElfHeaderError::Data(head[5]));
    }
    let machine = le16(head, 18);
    if machine != EM_X86_64 {
        return Err(ElfHeaderError::Machine(machine));
    }
    let phentsize = le16(head, 54);
    if usize::from(phentsize) != ELF_PHDR_SIZE {
        return Err(ElfHeaderError::PhentSize(phentsize));
    }
    let phoff = le64(head, 32);
    if phoff < ELF_HEADER_SIZE as u64 {
        return Err(ElfHeaderError::PhoffInHeader(phoff));
    }
    let phnum = le16(head, 56);
    if phnum == 0 || phnum == PN_XNUM {
        return Err(ElfHeaderError::Phnum(phnum));
    }
    Ok(ElfHeader {
        entry: le64(head, 24),
        phoff,
        phnum,
    })
}

fn read_elf_segments<F: Read + Seek + ?Sized>(
    file: &mut F,
    path: &Path,
    header: &ElfHeader,
    size: u64,
) -> Result<Vec<ElfSegment>, BootError> {
    let bad = |reason: String| BootError::BadElf {
        path: path.to_path_buf(),
        reason,
    };
    let table_len = u64::from(header.phnum) * ELF_PHDR_SIZE as u64;
    let table_end = header.phoff.checked_add(table_len);
    if table_end.is_none_or(|end| end > size) {
        return Err(bad(format!(
            "program header table ({} entries at {:#x}) runs past the end of the {size}-byte file",
            header.phnum, header.phoff
        )));
    }
    file.seek(SeekFrom::Start(header.phoff))
        .map_err(io_err(path))?;
    let mut table = vec![0u8; table_len as usize];
    file.read_exact(&mut table).map_err(io_err(path))?;
    Ok(table
        .chunks_exact(ELF_PHDR_SIZE)
        .map(ElfSegment::parse)
        .collect())
}

/// Checks one PT_LOAD segment; returns its guest-physical range.
fn check_elf_segment(
    seg: &ElfSegment,
    index: usize,
    size: u64,
    ram_end: u64,
    path: &Path,
) -> Result<Range<u64>, BootError> {
    let bad = |reason: String| BootError::BadElf {
        path: path.to_path_buf(),
        reason: format!("program header {index}: {reason}"),
    };
    if seg.filesz > seg.memsz {
        return Err(bad(format!(
            "p_filesz {:#x} is larger than p_memsz {:#x}",
            seg.filesz, seg.memsz
        )));
    }
    if seg
        .offset
        .checked_add(seg.filesz)
        .is_none_or(|end| end > size)
    {
        return Err(bad(format!(
            "file range {:#x}+{:#x} runs past the end of the {size}-byte file",
            seg.offset, seg.filesz
        )));
    }
    if seg.paddr < HIMEM_START {
        return Err(bad(format!(
            "p_paddr {:#x} is below {HIMEM_START:#x}, where the boot tables live",
            seg.paddr
        )));
    }
    let end = seg.paddr.saturating_add(seg.memsz);
    if end > ram_end {
        return Err(BootError::KernelTooBig {
            path: path.to_path_buf(),
            kernel_end: end,
            ram_end,
        });
    }
    Ok(seg.paddr..end)
}

/// A PT_NOTE must lie inside the file: linux-loader walks it note by note.
fn check_elf_note(seg: &ElfSegment, index: usize, size: u64, path: &Path) -> Result<(), BootError> {
    if seg
        .offset
        .checked_add(seg.filesz)
        .is_none_or(|end| end > size)
    {
        return Err(BootError::BadElf {
            path: path.to_path_buf(),
            reason: format!(
                "program header {index}: note range {:#x}+{:#x} runs past the end of the \
                 {size}-byte file",
                seg.offset, seg.filesz
            ),
        });
    }
    Ok(())
}

fn inspect_elf<F: Read + Seek + ?Sized>(
    file: &mut F,
    path: &Path,
    head: &[u8],
    size: u64,
    ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    let bad = |reason: String| BootError::BadElf {
        path: path.to_path_buf(),
        reason,
    };
    let header = parse_elf_header(head).map_err(|e| bad(e.to_string()))?;
    let segments = read_elf_segments(file, path, &header, size)?;
    let mut ranges = Vec::new();
    for (index, seg) in segments.iter().enumerate() {
        match seg.p_type {
            PT_LOAD => ranges.push(check_elf_segment(seg, index, size, ram_end, path)?),
            PT_NOTE => check_elf_note(seg, index, size, path)?,
            _ => {}
        }
    }
    let (Some(start), Some(end)) = (
        ranges.iter().map(|r| r.start).min(),
        ranges.iter().map(|r| r.end).max(),
    ) else {
        return Err(bad("no PT_LOAD program header".to_string()));
    };
    if !ranges.iter().any(|r| r.contains(&header.entry)) {
        return Err(bad(format!(
            "entry point {:#x} is outside every PT_LOAD segment",
            header.entry
        )));
    }
    Ok(LoadedKernel {
        kind: KernelKind::Elf,
        entry: header.entry,
        start,
        end,
        header: elf_setup_header(),
    })
}

/// The setup header an ELF kernel lacks, with what the kernel reads from it.
fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        type_of_loader: KERNEL_LOADER_OTHER,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// bzImage
// ---------------------------------------------------------------------------------------

/// Why a bzImage's setup header is not one the loader takes. Each text is the reason in
/// [`BootError::BadBzImage`].
#[derive(Debug, thiserror::Error)]
enum BzImageHeaderError {
    #[error("file is only {len} bytes")]
    NoJumpByte { len: usize },
    #[error(
        "setup header ends at {header_end:#x} (jump byte {jump:#04x}), before init_size \
         at {MIN_HEADER_END:#x}"
    )]
    HeaderEndsEarly { header_end: usize, jump: u8 },
    #[error("file is only {len} bytes, the setup header needs {copy_end:#x}")]
    Short { len: usize, copy_end: usize },
    #[error(
        "boot protocol version {0:#06x} is older than {MIN_BOOT_PROTOCOL:#06x}, the \
         first with a declared 64-bit entry point"
    )]
    OldProtocol(u16),
    #[error("loadflags {0:#04x} lacks LOADED_HIGH (a zImage, not a bzImage)")]
    NotLoadedHigh(u8),
    #[error("xloadflags {0:#06x} lacks XLF_KERNEL_64: no 64-bit entry point")]
    No64BitEntry(u16),
    #[error("init_size is 0")]
    NoInitSize,
    #[error("kernel_alignment {0:#x} of a relocatable kernel is not a power of two")]
    Alignment(u32),
}

/// Copies the setup header out of the first bytes of a bzImage. Bytes past the header's own
/// end (0x202 + the jump displacement at 0x201) belong to the setup code, not the header, and
/// are left zero, as the boot protocol asks for fields a kernel does not define.
fn parse_setup_header(head: &[u8]) -> Result<setup_header, BzImageHeaderError> {
    let jump = *head
        .get(0x201)
        .ok_or(BzImageHeaderError::NoJumpByte { len: head.len() })?;
    let header_end = HDRS_OFFSET + usize::from(jump);
    if header_end < MIN_HEADER_END {
        return Err(BzImageHeaderError::HeaderEndsEarly { header_end, jump });
    }
    let copy_end = header_end.min(SNIFF_BYTES);
    let bytes = head
        .get(SETUP_HEADER_OFFSET..copy_end)
        .ok_or(BzImageHeaderError::Short {
            len: head.len(),
            copy_end,
        })?;
    let mut header = setup_header::default();
    header.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
    Ok(header)
}

/// Checks the protocol version and flags the 64-bit entry needs.
fn check_bzimage_header(header: &setup_header) -> Result<(), BzImageHeaderError> {
    let version = header.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(BzImageHeaderError::OldProtocol(version));
    }
    let loadflags = header.loadflags;
    if loadflags & LOADED_HIGH == 0 {
        return Err(BzImageHeaderError::NotLoadedHigh(loadflags));
    }
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageHeaderError::No64BitEntry(xloadflags));
    }
    if header.init_size == 0 {
        return Err(BzImageHeaderError::NoInitSize);
    }
    let align = header.kernel_alignment;
    if header.relocatable_kernel != 0 && !align.is_power_of_two() {
        return Err(BzImageHeaderError::Alignment(align));
    }
    Ok(())
}

/// End of the memory a bzImage loaded at `load` uses while it decompresses itself. The
/// 64-bit entry (arch/x86/boot/compressed/head_64.S) decompresses to `load` rounded up to
/// `kernel_alignment` but not below `pref_address` (LOAD_PHYSICAL_ADDR) for a relocatable
/// kernel, to `pref_address` otherwise, and needs `init_size` bytes from there.
fn bzimage_footprint_end(header: &setup_header, load: u64, payload: u64) -> Option<u64> {
    let pref = header.pref_address;
    let base = if header.relocatable_kernel != 0 {
        let align = u64::from(header.kernel_alignment);
        let aligned = load.checked_add(align - 1)? & !(align - 1);
        aligned.max(pref)
    } else {
        pref
    };
    let decompress_end = base.checked_add(u64::from(header.init_size))?;
    Some(decompress_end.max(load.checked_add(payload)?))
}

fn inspect_bzimage(
    path: &Path,
    head: &[u8],
    size: u64,
    ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    let bad = |reason: String| BootError::BadBzImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut header = parse_setup_header(head).map_err(|e| bad(e.to_string()))?;
    check_bzimage_header(&header).map_err(|e| bad(e.to_string()))?;
    let sects = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_bytes = (sects + 1) * 512;
    let payload = size.saturating_sub(setup_bytes);
    if payload <= BZIMAGE_ENTRY64_OFFSET {
        return Err(bad(format!(
            "{setup_bytes} bytes of setup code (setup_sects {sects}) leave {payload} bytes of \
             protected-mode kernel in a {size}-byte file, too few to hold the 64-bit entry at \
             {BZIMAGE_ENTRY64_OFFSET:#x}"
        )));
    }
    let end = bzimage_footprint_end(&header, HIMEM_START, payload).unwrap_or(u64::MAX);
    if end > ram_end {
        return Err(BootError::KernelTooBig {
            path: path.to_path_buf(),
            kernel_end: end,
            ram_end,
        });
    }
    prepare_bzimage_header(&mut header);
    Ok(LoadedKernel {
        kind: KernelKind::BzImage,
        entry: HIMEM_START + BZIMAGE_ENTRY64_OFFSET,
        start: HIMEM_START,
        end,
        header,
    })
}

/// Fills the loader-written fields of a bzImage's own header.
fn prepare_bzimage_header(header: &mut setup_header) {
    header.code32_start = HIMEM_START as u32;
    header.type_of_loader = KERNEL_LOADER_OTHER;
    // Whatever the file holds here is not ours; set again if an initrd is loaded.
    header.ramdisk_image = 0;
    header.ramdisk_size = 0;
    // No real-mode heap: the 64-bit entry skips the real-mode code that would use it.
    header.loadflags &= !CAN_USE_HEAP;
    header.heap_end_ptr = 0;
    // No setup_data list; a PC, not one of the special sub-architectures.
    header.setup_data = 0;
    header.hardware_subarch = 0;
    header.hardware_subarch_data = 0;
}

// ---------------------------------------------------------------------------------------
// initrd and boot_params
// ---------------------------------------------------------------------------------------

/// Highest end (exclusive) the initrd may reach for this kernel.
fn initrd_limit(kernel: &LoadedKernel, ram_end: u64) -> u64 {
    match kernel.kind {
        // The kernel itself reads ramdisk_image wherever it is; only the 32-bit field
        // bounds it, and low RAM always fits.
        KernelKind::Elf => ram_end,
        KernelKind::BzImage => {
            let max = match kernel.header.initrd_addr_max {
                0 => DEFAULT_INITRD_ADDR_MAX,
                m => m,
            };
            ram_end.min(u64::from(max) + 1)
        }
    }
}

/// Picks the page-aligned address of an initrd of `size` bytes, as high as possible below
/// `limit` and not below `lowest`.
fn place_initrd(size: u64, lowest: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= lowest).then_some(start)
}

/// Where an initrd goes: its size read from `file`, its place chosen above the kernel.
fn place_initrd_file<F: Read + Seek + ?Sized>(
    file: &mut F,
    path: &Path,
    kernel: &LoadedKernel,
    ram_end: u64,
) -> Result<Range<u64>, BootError> {
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|source| BootError::InitrdRead {
            path: path.to_path_buf(),
            source,
        })?;
    if size == 0 {
        return Err(BootError::InitrdEmpty {
            path: path.to_path_buf(),
        });
    }
    let lowest = kernel.end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let limit = initrd_limit(kernel, ram_end);
    let start = place_initrd(size, lowest, limit).ok_or_else(|| BootError::InitrdDoesNotFit {
        path: path.to_path_buf(),
        size,
        lowest,
        highest_end: limit,
    })?;
    Ok(start..start + size)
}

/// Copies the initrd into its place in guest memory.
fn write_initrd<M, F>(mem: &M, file: &mut F, path: &Path, at: &Range<u64>) -> Result<(), BootError>
where
    M: GuestMemoryBackend,
    F: Read + Seek + ReadVolatile,
{
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::InitrdRead {
            path: path.to_path_buf(),
            source,
        })?;
    // The range is below MMIO_GAP_START (< 4 GiB), so its length fits usize.
    mem.read_exact_volatile_from(GuestAddress(at.start), file, (at.end - at.start) as usize)
        .map_err(|source| BootError::GuestWrite {
            what: "initrd",
            addr: at.start,
            source,
        })
}

fn build_boot_params(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<Range<u64>>,
    mem_bytes: u64,
) -> Result<boot_params, BootError> {
    let mut params = boot_params {
        hdr: kernel.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if kernel.kind == KernelKind::Elf {
        params.hdr.cmdline_size = cmdline_len as u32;
    }
    if let Some(range) = initrd {
        // Below MMIO_GAP_START (< 4 GiB) by construction.
        params.hdr.ramdisk_image = range.start as u32;
        params.hdr.ramdisk_size = (range.end - range.start) as u32;
    }
    let map = e820_map(mem_bytes);
    let mut table = params.e820_table;
    if map.len() > table.len() {
        return Err(BootError::E820Full {
            entries: map.len(),
            max: table.len(),
        });
    }
    for (slot, entry) in table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_table = table;
    params.e820_entries = map.len() as u8;
    Ok(params)
}

#[cfg(test)]
mod tests;
