//! Guest-physical memory map and I/O port map shared by the machine, the Linux boot path
//! and the builtin guest kit. Everything here is an ABI between host and guest: change a
//! value and old snapshots stop restoring.

/// Page size the VMM tracks dirtiness in (KVM's dirty log is per 4 KiB page).
pub const PAGE_SIZE: u64 = 4096;

/// Lowest guest-physical address any guest may use for its own data.
/// Below this live the tables the VMM writes at boot.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table: an empty, zero-limit IDT (guests here never take exceptions).
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// Linux "zero page" (struct boot_params).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Identity-mapping page tables: PML4, one PDPT, four PDs of 2 MiB pages (maps 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xA000;
pub const PD_ADDR: u64 = 0xB000;
pub const PD_COUNT: u64 = 4;
/// Highest guest-physical address (exclusive) the boot page tables map.
pub const IDENTITY_MAPPED_END: u64 = PD_COUNT << 30;
/// Kernel command line for Linux guests.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the EBDA / legacy hole; RAM below this is usable by Linux.
pub const EBDA_START: u64 = 0x9FC00;
/// Start of high memory: Linux kernels are loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Guest-physical start of the 32-bit MMIO hole; RAM above it is relocated above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xD000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Builtin guest kit: initial stack pointer (stack grows down below it, inside the first MiB).
pub const GUEST_KIT_STACK_TOP: u64 = 0x8_0000;
/// Builtin guest kit: where program code is loaded and where execution starts.
pub const GUEST_KIT_CODE_ADDR: u64 = 0x10_0000;
/// Builtin guest kit: end (exclusive) of the region reserved for code.
pub const GUEST_KIT_CODE_END: u64 = 0x20_0000;
/// Builtin guest kit: default base of the `counter` program's data range.
pub const COUNTER_DEFAULT_BASE: u64 = 0x20_0000;
/// Builtin guest kit: default base of the `dirtier` program's working set (96 MiB).
pub const DIRTIER_DEFAULT_BASE: u64 = 96 << 20;
/// Where the host writes the pattern data before a benchmark guest starts (16 MiB).
pub const PATTERN_BASE: u64 = 16 << 20;

/// Smallest and largest guest memory the VMM accepts.
pub const MIN_MEM_BYTES: u64 = 4 << 20;
pub const MAX_MEM_BYTES: u64 = 1 << 40;
/// Largest vCPU count the VMM accepts.
pub const MAX_VCPUS: u8 = 64;

/// 8250 UART (COM1): ports and IRQ line.
pub const COM1_PORT_BASE: u16 = 0x3f8;
pub const COM1_PORT_LEN: u16 = 8;
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller: data and command/status ports. Writing 0xFE to the command
/// port pulses the CPU reset line, which this VMM treats as "guest asked to stop".
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_RESET_COMMAND: u8 = 0xFE;

/// NovaCron paravirtual report port. A guest reports an event as three 32-bit `out`s:
/// value low half to `PV_PORT_VALUE_LO`, high half to `PV_PORT_VALUE_HI`, then the event
/// code to `PV_PORT_EVENT`, which commits the (code, value) pair.
pub const PV_PORT_EVENT: u16 = 0x600;
pub const PV_PORT_VALUE_LO: u16 = 0x604;
pub const PV_PORT_VALUE_HI: u16 = 0x608;
pub const PV_PORT_LEN: u16 = 12;

/// Event codes of the paravirtual port.
pub mod pv_event {
    /// The guest program started; value: program id.
    pub const STARTED: u32 = 1;
    /// Progress; value: a monotonically growing counter (passes done, pages dirtied).
    pub const PROGRESS: u32 = 2;
    /// A result; value: the 64-bit result.
    pub const RESULT: u32 = 3;
    /// The guest is done and asks the VMM to stop it; value: exit status (0 = success).
    pub const EXIT: u32 = 4;
    /// The result port: where the guest's result blob starts; value: its guest-physical
    /// address (`process::result_port`).
    pub const RESULT_BLOB_ADDR: u32 = 5;
    /// The result port: hands the blob over; value: its length in bytes.
    pub const RESULT_BLOB_LEN: u32 = 6;
}
