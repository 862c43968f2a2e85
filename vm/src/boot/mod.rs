//! x86-64 boot pieces the machine calls: guest RAM regions, the long-mode boot environment
//! (GDT, identity page tables, special registers), the Linux 64-bit boot protocol loader, the
//! Intel MP table, the CPUID filter and the boot/snapshot MSR lists.
//!
//! Nothing here touches KVM: every function is pure or writes into a `GuestMemoryBackend`,
//! so it is unit-tested without /dev/kvm. The integrator owns the ioctls and their order.

pub mod cpuid;
pub mod gdt;
pub mod linux;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regions;

pub use cpuid::filter_cpuid;
pub use gdt::{long_mode_sregs, write_gdt_and_idt};
pub use linux::{check_linux, e820_map, load_linux, E820Entry, KernelKind, LinuxBoot};
pub use mptable::setup_mptable;
pub use msrs::{boot_msr_entries, snapshot_msr_indices};
pub use paging::identity_page_tables;
pub use regions::ram_regions;

use std::path::PathBuf;

/// Everything that can go wrong while preparing a guest to boot. Messages name the file,
/// field, value and limit involved.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("failed to write {what} to guest memory at {addr:#x}: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("guest memory size {mem_bytes:#x} is outside the accepted range [{min:#x}, {max:#x}]")]
    MemorySize { mem_bytes: u64, min: u64, max: u64 },
    #[error(
        "guest memory does not back address {addr:#x}, although the guest was declared with \
         {mem_bytes:#x} bytes of RAM"
    )]
    MemoryNotBacked { addr: u64, mem_bytes: u64 },
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} is empty")]
    KernelEmpty { path: PathBuf },
    /// Says what is missing, never what the file holds: the path may name any file the
    /// VMM can read (the node refuses paths outside its image directories first).
    #[error(
        "kernel {path} is neither an ELF vmlinux nor a bzImage: no boot signature \
         (\\x7fELF at offset 0 or \"HdrS\" at offset 0x202)"
    )]
    NotAKernel { path: PathBuf },
    #[error("ELF kernel {path} is not loadable: {reason}")]
    BadElf { path: PathBuf, reason: String },
    #[error("bzImage kernel {path} is not loadable: {reason}")]
    BadBzImage { path: PathBuf, reason: String },
    #[error(
        "kernel {path} needs guest memory up to {kernel_end:#x}, but RAM below the 4 GiB \
         hole ends at {ram_end:#x}"
    )]
    KernelTooBig {
        path: PathBuf,
        kernel_end: u64,
        ram_end: u64,
    },
    #[error("loading kernel {path} into guest memory failed: {source}")]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel command line is {len} bytes plus NUL, more than the limit of {max} bytes")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line is invalid: {reason}")]
    BadCmdline { reason: String },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} is empty")]
    InitrdEmpty { path: PathBuf },
    #[error(
        "initrd {path} of {size:#x} bytes does not fit between the kernel end {lowest:#x} and \
         the highest usable initrd address {highest_end:#x}"
    )]
    InitrdDoesNotFit {
        path: PathBuf,
        size: u64,
        lowest: u64,
        highest_end: u64,
    },
    #[error("e820 map needs {entries} entries, but boot_params holds at most {max}")]
    E820Full { entries: usize, max: usize },
    #[error("MP table: vCPU count {count} is outside 1..={max}")]
    VcpuCount { count: u8, max: u8 },
    #[error(
        "MP table of {size} bytes for {vcpus} vCPUs does not fit the {space} bytes between \
         {start:#x} and {end:#x}"
    )]
    MpTableTooBig {
        vcpus: u8,
        size: usize,
        space: u64,
        start: u64,
        end: u64,
    },
}
