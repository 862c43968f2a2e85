//! Per-vCPU x86-64 register work that runs on the vCPU's own thread: boot-time setup, and
//! saving/restoring every piece of vCPU state for snapshots.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use crate::boot;
use crate::machine::state::{from_blob, to_blob, VcpuState};
use crate::machine::{kvm_err, VmError};

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as libc::c_char;
    }
}

/// Routes LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's BIOS leaves them.
fn set_local_interrupts(fd: &VcpuFd) -> Result<(), VmError> {
    let mut lapic = fd.get_lapic().map_err(kvm_err("get LAPIC"))?;
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = (lapic_reg(&lapic, reg) & !0x700) | (mode << 8);
        set_lapic_reg(&mut lapic, reg, value);
    }
    fd.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))
}

/// Puts vCPU `index` in its boot state. The bootstrap processor (index 0) starts at
/// `entry` in 64-bit mode with `rsp = stack` and `rsi = boot_params` (Linux's 64-bit boot
/// protocol); the others wait for INIT/SIPI in the in-kernel LAPIC.
pub fn configure_boot_vcpu(
    fd: &mut VcpuFd,
    index: usize,
    entry: u64,
    stack: u64,
    boot_params: u64,
) -> Result<(), VmError> {
    let msrs = Msrs::from_entries(&boot::msrs::boot_msr_entries())
        .map_err(|e| VmError::Vcpu(format!("boot MSR list: {e:?}")))?;
    fd.set_msrs(&msrs).map_err(kvm_err("set boot MSRs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(kvm_err("set FPU"))?;
    set_local_interrupts(fd)?;
    if index != 0 {
        return Ok(());
    }
    let mut sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
    boot::gdt::long_mode_sregs(&mut sregs);
    fd.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
    let regs = kvm_bindings::kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: stack,
        rbp: stack,
        rsi: boot_params,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(kvm_err("set regs"))
}

/// Captures every piece of a parked vCPU's state.
pub fn save_vcpu(fd: &mut VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VmError> {
    let mut msrs =
        Msrs::new(msr_indices.len()).map_err(|e| VmError::Vcpu(format!("MSR list: {e:?}")))?;
    for (entry, &index) in msrs.as_mut_slice().iter_mut().zip(msr_indices) {
        entry.index = index;
    }
    let read = fd.get_msrs(&mut msrs).map_err(kvm_err("get MSRs"))?;
    if read != msr_indices.len() {
        let failed = msr_indices.get(read).copied().unwrap_or_default();
        return Err(VmError::Vcpu(format!(
            "KVM read {read} of {} MSRs; MSR {failed:#x} failed",
            msr_indices.len()
        )));
    }
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get CPUID"))?;
    Ok(VcpuState {
        regs: to_blob(&fd.get_regs().map_err(kvm_err("get regs"))?),
        sregs: to_blob(&fd.get_sregs().map_err(kvm_err("get sregs"))?),
        xsave: to_blob(&fd.get_xsave().map_err(kvm_err("get XSAVE"))?),
        xcrs: to_blob(&fd.get_xcrs().map_err(kvm_err("get XCRs"))?),
        debug_regs: to_blob(&fd.get_debug_regs().map_err(kvm_err("get debug regs"))?),
        lapic: to_blob(&fd.get_lapic().map_err(kvm_err("get LAPIC"))?),
        mp_state: to_blob(&fd.get_mp_state().map_err(kvm_err("get MP state"))?),
        vcpu_events: to_blob(&fd.get_vcpu_events().map_err(kvm_err("get vCPU events"))?),
        msrs: msrs.as_slice().iter().map(|e| (e.index, e.data)).collect(),
        cpuid: cpuid.as_slice().iter().flat_map(to_blob).collect(),
        tsc_khz: fd.get_tsc_khz().map_err(kvm_err("get TSC frequency"))?,
    })
}

/// Puts saved state back into a fresh vCPU, in the order KVM requires: CPUID first (it
/// decides which state is valid), the LAPIC before the MSRs (the TSC-deadline MSR needs
/// the LAPIC mode), vCPU events last (pending exceptions and NMIs refer to the restored
/// registers).
pub fn restore_vcpu(fd: &mut VcpuFd, s: &VcpuState) -> Result<(), VmError> {
    let entry_size = std::mem::size_of::<kvm_bindings::kvm_cpuid_entry2>();
    if s.cpuid.len() % entry_size != 0 {
        return Err(VmError::Vcpu(format!(
            "saved CPUID is {} bytes, not a whole number of {entry_size}-byte entries",
            s.cpuid.len()
        )));
    }
    let entries = s
        .cpuid
        .chunks_exact(entry_size)
        .map(|c| from_blob("CPUID entry", c))
        .collect::<Result<Vec<kvm_bindings::kvm_cpuid_entry2>, _>>()?;
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|e| VmError::Vcpu(format!("saved CPUID has too many entries: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
    if s.tsc_khz != 0 {
        let here = fd.get_tsc_khz().map_err(kvm_err("get TSC frequency"))?;
        if here != s.tsc_khz {
            fd.set_tsc_khz(s.tsc_khz)
                .map_err(kvm_err("set TSC frequency (TSC scaling)"))?;
        }
    }
    fd.set_mp_state(from_blob("MP state", &s.mp_state)?)
        .map_err(kvm_err("set MP state"))?;
    fd.set_regs(&from_blob("regs", &s.regs)?)
        .map_err(kvm_err("set regs"))?;
    fd.set_sregs(&from_blob("sregs", &s.sregs)?)
        .map_err(kvm_err("set sregs"))?;
    let xsave: kvm_bindings::kvm_xsave = from_blob("XSAVE", &s.xsave)?;
    // SAFETY: kvm_xsave is the legacy 4 KiB structure KVM_SET_XSAVE reads in full.
    unsafe { fd.set_xsave(&xsave) }.map_err(kvm_err("set XSAVE"))?;
    fd.set_xcrs(&from_blob("XCRs", &s.xcrs)?)
        .map_err(kvm_err("set XCRs"))?;
    fd.set_debug_regs(&from_blob("debug regs", &s.debug_regs)?)
        .map_err(kvm_err("set debug regs"))?;
    fd.set_lapic(&from_blob("LAPIC", &s.lapic)?)
        .map_err(kvm_err("set LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| VmError::Vcpu(format!("saved MSR list too long: {e:?}")))?;
    let written = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    if written != entries.len() {
        let failed = entries.get(written).map(|e| e.index).unwrap_or_default();
        return Err(VmError::Vcpu(format!(
            "KVM refused saved MSR {failed:#x} ({written} of {} restored)",
            entries.len()
        )));
    }
    fd.set_vcpu_events(&from_blob("vCPU events", &s.vcpu_events)?)
        .map_err(kvm_err("set vCPU events"))
}
