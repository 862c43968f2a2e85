//! A KVM machine: VM, guest memory, in-kernel irqchip and PIT, devices and vCPU threads,
//! with the lifecycle created -> running <-> paused -> stopped.

pub mod arch;
pub mod devices;
pub mod layout;
pub mod memory;
pub mod snapshot;
pub mod state;
pub mod vcpu;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::guest_kit::BuiltinGuest;
use crate::machine::devices::pv_port::PvPort;
use crate::machine::devices::serial::{SerialConsole, SerialSink};
use crate::machine::devices::Devices;
use crate::machine::memory::{
    create_guest_memory, region_layout, take_vmm_dirty_bits, DirtyConsumer, DirtyTracker, GuestMem,
    MemoryError, PageBitmaps,
};
use crate::machine::vcpu::{pause_all, EventSink, ThreadSetup, VcpuShared, VcpuThread};
use layout::{COM1_IRQ, MAX_MEM_BYTES, MAX_VCPUS, MIN_MEM_BYTES};

/// Address of the three pages KVM needs for the TSS on Intel (just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    pub mem_bytes: u64,
    pub vcpus: u8,
}

/// What to boot.
#[derive(Clone, Debug)]
pub enum BootSource {
    Builtin(BuiltinGuest),
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest memory of {0} bytes is out of range: give between 4 MiB and 1 TiB, in whole 4 KiB pages")]
    BadMemorySize(u64),
    #[error("{0} vCPUs is out of range: give 1 to {MAX_VCPUS}")]
    BadVcpuCount(u8),
    #[error("cannot open /dev/kvm ({0}): this host has no usable KVM; check that the kvm module is loaded and that you may open /dev/kvm")]
    NoKvm(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0}, which the VMM needs")]
    MissingCapability(&'static str),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("vCPU: {0}")]
    Vcpu(String),
    #[error("vCPU: {0}")]
    VcpuThread(crate::machine::vcpu::VcpuThreadError),
    #[error("guest kit: {0}")]
    GuestKit(#[from] crate::guest_kit::GuestKitError),
    #[error("boot: {0}")]
    Boot(#[from] crate::boot::BootError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the machine is {actual:?}, but this needs it {needed}")]
    WrongState {
        actual: Lifecycle,
        needed: &'static str,
    },
    #[error("machine state: {0}")]
    State(#[from] crate::machine::state::StateError),
    #[error("before touching guest memory: {0}")]
    BeforeMemory(crate::machine::vcpu::SetupError),
    #[error("the machine state does not fit this VMM: {0}")]
    StateMismatch(StateMismatchError),
}

/// How a saved machine state does not fit this VMM (or the machine made for it).
#[derive(Debug, thiserror::Error)]
pub enum StateMismatchError {
    #[error("{0} vCPUs")]
    TooManyVcpus(usize),
    #[error("the sizes of its {0} memory regions add up past 64 bits")]
    MemoryOverflow(usize),
    #[error("memory regions {state:?} do not match this machine's layout {machine:?}")]
    Layout {
        state: Vec<(u64, u64)>,
        machine: Vec<(u64, u64)>,
    },
    #[error("the state has {state} vCPUs, the machine {machine}")]
    VcpuCount { state: usize, machine: usize },
    #[error(transparent)]
    Serial(#[from] crate::machine::devices::serial::SerialRestoreError),
}

/// Says whether this host can run VMs: `/dev/kvm` opens. The error says what to check.
pub fn check_kvm() -> Result<(), VmError> {
    Kvm::new().map(drop).map_err(VmError::NoKvm)
}

/// Maps a failed KVM ioctl to an error that says which one.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), VmError> {
        if self.mem_bytes < MIN_MEM_BYTES
            || self.mem_bytes > MAX_MEM_BYTES
            || self.mem_bytes % layout::PAGE_SIZE != 0
        {
            return Err(VmError::BadMemorySize(self.mem_bytes));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::BadVcpuCount(self.vcpus));
        }
        Ok(())
    }
}

/// Where a machine's output goes.
pub struct MachineIo {
    /// The guest's serial console output.
    pub serial: SerialSink,
    /// vCPU events (paravirtual reports, resets, failures).
    pub events: EventSink,
}

/// Makes the per-thread setup (seccomp filter) for vCPU `index`.
pub type VcpuSetupFactory<'a> = &'a dyn Fn(usize) -> Option<ThreadSetup>;

/// Runs once, after the VM, irqchip, PIT, devices and vCPUs exist and before anything
/// touches guest memory (the sandbox waits for its cgroup join here). An error stops the
/// creation.
pub type BeforeMemory<'a> = &'a dyn Fn() -> Result<(), crate::machine::vcpu::SetupError>;

pub struct Machine {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMem,
    layout: Vec<(u64, u64)>,
    pub(crate) vcpus: Vec<VcpuThread>,
    shared: Arc<VcpuShared>,
    pub(crate) dirty: DirtyTracker,
    lifecycle: Lifecycle,
    guest: String,
    config: MachineConfig,
}

impl Machine {
    /// Creates the VM, its memory, irqchip, PIT, devices and parked vCPU threads.
    /// `io.serial` receives the guest's console output, `io.events` what vCPUs report.
    pub fn create(
        config: &MachineConfig,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
    ) -> Result<Machine, VmError> {
        Self::create_inner(config, io, vcpu_setup, &|| Ok(()))
    }

    /// [`create`](Self::create), calling `before_memory` after the KVM objects exist and
    /// before anything touches guest memory, so slow work elsewhere (a cgroup join) overlaps
    /// with the KVM setup.
    pub fn create_gated(
        config: &MachineConfig,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
        before_memory: BeforeMemory<'_>,
    ) -> Result<Machine, VmError> {
        Self::create_inner(config, io, vcpu_setup, before_memory)
    }

    /// The creation order. Guest memory is mapped (not touched: nothing is allocated or
    /// charged yet) and given to KVM first, right after the VM: a memslot change waits for
    /// an SRCU grace period once an irqchip exists (3-9 ms on this nested host, against
    /// ~0.1 ms before it). Then the irqchip, PIT (whose kernel thread takes 2-5 ms), devices
    /// and vCPUs; then `before_memory`, which runs while the process may still be joining
    /// its cgroup. Nothing writes guest memory before it returns, so every guest page is
    /// charged to the VM's cgroup; only KVM's per-page metadata from the memslot (8 bytes
    /// per 4 KiB page with shadow paging, 0.2% of guest RAM) is charged to the spawner's.
    pub(crate) fn create_inner(
        config: &MachineConfig,
        io: MachineIo,
        vcpu_setup: VcpuSetupFactory<'_>,
        before_memory: BeforeMemory<'_>,
    ) -> Result<Machine, VmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::UserMemory, "user memory regions"),
            (Cap::Pit2, "PIT2"),
            (Cap::Irqfd, "irqfd"),
            (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let mem = create_guest_memory(&boot::ram_regions(config.mem_bytes))?;
        register_memory(&vm, &mem)?;
        let layout = region_layout(&mem);
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Thread)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let devices = Arc::new(Devices::new(
            SerialConsole::new(serial_irq, io.serial),
            PvPort::default(),
        ));
        let shared = VcpuShared::new(devices, io.events);

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create vCPU"))?;
            let mut cpuid = supported_cpuid.clone();
            boot::cpuid::filter_cpuid(&mut cpuid, index, config.vcpus);
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            let thread = VcpuThread::spawn(
                index as usize,
                fd,
                shared.clone(),
                vcpu_setup(index as usize),
            )
            .map_err(VmError::Thread)?;
            vcpus.push(thread);
        }
        before_memory().map_err(VmError::BeforeMemory)?;
        Ok(Machine {
            kvm,
            vm,
            mem,
            dirty: DirtyTracker::new(&layout),
            layout,
            vcpus,
            shared,
            lifecycle: Lifecycle::Created,
            guest: String::new(),
            config: config.clone(),
        })
    }

    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    pub(crate) fn set_lifecycle(&mut self, l: Lifecycle) {
        self.lifecycle = l;
    }

    pub fn guest_description(&self) -> &str {
        &self.guest
    }

    pub(crate) fn set_guest_description(&mut self, g: String) {
        self.guest = g;
    }

    pub(crate) fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub(crate) fn layout(&self) -> &[(u64, u64)] {
        &self.layout
    }

    pub fn devices(&self) -> &Devices {
        &self.shared.devices
    }

    /// CLOCK_MONOTONIC time of the guest's first port-I/O exit.
    pub fn first_io_exit_ns(&self) -> Option<u64> {
        self.shared.first_io_exit_ns()
    }

    /// Runs `f` on vCPU `index`'s thread; the machine must not be running.
    pub(crate) fn on_vcpu<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce(&mut VcpuFd) -> R + Send + 'static,
    ) -> Result<R, VmError> {
        let t = self
            .vcpus
            .get(index)
            .ok_or_else(|| VmError::Vcpu(format!("no vCPU {index}")))?;
        t.call(f).map_err(VmError::VcpuThread)
    }

    /// TSC frequency KVM gives the guest, in kHz.
    pub fn tsc_khz(&self) -> Result<u32, VmError> {
        self.on_vcpu(0, |fd| fd.get_tsc_khz())?
            .map_err(kvm_err("get TSC frequency"))
    }

    /// Loads what to boot and sets every vCPU's registers for it. Does not start.
    pub fn load(&mut self, source: &BootSource) -> Result<(), VmError> {
        self.require(Lifecycle::Created, "freshly created")?;
        boot::gdt::write_gdt_and_idt(&self.mem)?;
        boot::identity_page_tables(&self.mem)?;
        let (entry, stack, boot_params) = match source {
            BootSource::Builtin(guest) => {
                let image = guest.assemble(self.config.mem_bytes, self.tsc_khz()?)?;
                self.mem
                    .write_slice(&image.code, GuestAddress(image.load_addr))
                    .map_err(|source| {
                        VmError::Memory(MemoryError::Write {
                            gpa: image.load_addr,
                            len: image.code.len() as u64,
                            source,
                        })
                    })?;
                self.guest = guest.to_string();
                (image.entry, image.stack_top, 0)
            }
            BootSource::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut kernel_file = open(kernel)?;
                let mut initrd_file = initrd.as_deref().map(open).transpose()?;
                boot::mptable::setup_mptable(&self.mem, self.config.vcpus)?;
                let linux = boot::linux::load_linux(
                    &self.mem,
                    self.config.mem_bytes,
                    &mut kernel_file,
                    initrd_file.as_mut(),
                    cmdline,
                )?;
                self.guest = "linux".into();
                (linux.entry_rip, 0, linux.boot_params_addr)
            }
        };
        for index in 0..self.vcpus.len() {
            self.on_vcpu(index, move |fd| {
                crate::machine::arch::configure_boot_vcpu(fd, index, entry, stack, boot_params)
            })??;
        }
        Ok(())
    }

    fn require(&self, state: Lifecycle, needed: &'static str) -> Result<(), VmError> {
        if self.lifecycle == state {
            Ok(())
        } else {
            Err(VmError::WrongState {
                actual: self.lifecycle,
                needed,
            })
        }
    }

    /// Starts (from created) or resumes (from paused) every vCPU.
    pub fn resume(&mut self) -> Result<(), VmError> {
        if !matches!(self.lifecycle, Lifecycle::Created | Lifecycle::Paused) {
            return Err(VmError::WrongState {
                actual: self.lifecycle,
                needed: "created or paused",
            });
        }
        for t in &self.vcpus {
            t.run(&self.shared).map_err(VmError::VcpuThread)?;
        }
        self.lifecycle = Lifecycle::Running;
        Ok(())
    }

    /// Stops every vCPU between two instructions; device and memory state stay coherent.
    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.lifecycle == Lifecycle::Running {
            pause_all(&self.vcpus, &self.shared).map_err(VmError::VcpuThread)?;
            self.lifecycle = Lifecycle::Paused;
            self.shared.devices.flush_console();
        }
        Ok(())
    }

    /// Stops the machine for good.
    pub fn stop(&mut self) -> Result<(), VmError> {
        self.pause()?;
        self.lifecycle = Lifecycle::Stopped;
        Ok(())
    }

    /// Folds KVM's dirty log and the VMM's own writes into the dirty tracker.
    pub fn sync_dirty_log(&mut self) -> Result<(), VmError> {
        for (slot, &(_, len)) in self.layout.iter().enumerate() {
            let bits = self
                .vm
                .get_dirty_log(slot as u32, len as usize)
                .map_err(kvm_err("get dirty log"))?;
            self.dirty.absorb(slot, &bits);
        }
        for (slot, bits) in take_vmm_dirty_bits(&self.mem).iter().enumerate() {
            self.dirty.absorb(slot, bits);
        }
        Ok(())
    }

    /// Syncs the dirty log, then takes the pages written since `consumer` last took them
    /// (the other consumers keep theirs). Pages the guest writes after the sync count for
    /// the next take; so a reader that takes first and reads after never misses a write.
    pub fn take_dirty_pages(&mut self, consumer: DirtyConsumer) -> Result<PageBitmaps, VmError> {
        self.sync_dirty_log()?;
        Ok(self.dirty.take(consumer))
    }

    /// Gives back pages from [`take_dirty_pages`](Self::take_dirty_pages) that `consumer`
    /// could not use (a failed round or snapshot), so the next take carries them again.
    pub fn restore_dirty_pages(&mut self, consumer: DirtyConsumer, taken: &PageBitmaps) {
        self.dirty.restore_to(consumer, taken);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = pause_all(&self.vcpus, &self.shared);
        self.shared.devices.flush_console();
        // vCPU threads exit and close their fds before the VM fd and memory go.
        self.vcpus.clear();
    }
}

/// Gives every region to KVM with dirty logging on. The cost of each call is the memslot
/// swap's SRCU grace period, not the flag: measured with and without
/// KVM_MEM_LOG_DIRTY_PAGES, 1 to 512 MiB, the spread (0.1-8 ms) followed the host's load.
fn register_memory(vm: &VmFd, mem: &GuestMem) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Vcpu(format!("guest memory region has no host mapping: {e}")))?;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping is owned by `mem`, which the Machine keeps alive for as
        // long as the VM exists (fields drop in order: vcpus, then vm, then mem).
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(kvm_err("set memory region"))?;
    }
    Ok(())
}

fn open(path: &Path) -> Result<File, VmError> {
    File::open(path).map_err(|source| VmError::Open {
        path: path.to_path_buf(),
        source,
    })
}
