//! Model-specific registers: the values a vCPU boots with and the list a snapshot saves.

use kvm_bindings::kvm_msr_entry;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
pub const MSR_IA32_APICBASE: u32 = 0x1B;
pub const MSR_IA32_TSC_ADJUST: u32 = 0x3B;
pub const MSR_IA32_SPEC_CTRL: u32 = 0x48;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MCG_STATUS: u32 = 0x17A;
pub const MSR_IA32_MCG_CTL: u32 = 0x17B;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
pub const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
pub const MSR_MTRR_FIX_64K_00000: u32 = 0x250;
pub const MSR_MTRR_FIX_16K_80000: u32 = 0x258;
pub const MSR_MTRR_FIX_16K_A0000: u32 = 0x259;
pub const MSR_MTRR_FIX_4K_C0000: u32 = 0x268;
pub const MSR_IA32_CR_PAT: u32 = 0x277;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6E0;
pub const MSR_IA32_XSS: u32 = 0xDA0;
pub const MSR_STAR: u32 = 0xC000_0081;
pub const MSR_LSTAR: u32 = 0xC000_0082;
pub const MSR_CSTAR: u32 = 0xC000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
pub const MSR_FS_BASE: u32 = 0xC000_0100;
pub const MSR_GS_BASE: u32 = 0xC000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
pub const MSR_TSC_AUX: u32 = 0xC000_0103;
pub const MSR_AMD64_VIRT_SPEC_CTRL: u32 = 0xC001_011F;
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4B56_4D00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4B56_4D02;
pub const MSR_KVM_STEAL_TIME: u32 = 0x4B56_4D03;
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4B56_4D04;
pub const MSR_KVM_POLL_CONTROL: u32 = 0x4B56_4D05;
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4B56_4D06;

/// MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`) enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;

/// MTRR_DEF_TYPE: MTRRs enabled (bit 11), default memory type write-back (6). Without it
/// Linux finds MTRRs disabled and skips PAT initialisation.
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// Variable-range MTRR pairs saved (base/mask 0..7).
const MTRR_VARIABLE_PAIRS: u32 = 8;

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSRs to set with `KVM_SET_MSRS` before a vCPU first runs: the fast system-call
/// MSRs zeroed (the guest programs its own), `KERNEL_GS_BASE` zeroed, the TSC at 0 (every
/// vCPU of a fresh VM starts at the same count), MISC_ENABLE with fast strings on, and
/// MTRRs enabled with write-back as the default type (PAT still makes MMIO uncached).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

/// Every MSR a snapshot saves, in restore order, before filtering.
fn snapshot_candidates() -> Vec<u32> {
    let mut list: Vec<u32> = boot_msr_entries().iter().map(|e| e.index).collect();
    list.extend([
        MSR_IA32_TSC_ADJUST,
        MSR_IA32_APICBASE,
        MSR_FS_BASE,
        MSR_GS_BASE,
        MSR_TSC_AUX,
        MSR_IA32_CR_PAT,
        MSR_IA32_SPEC_CTRL,
        MSR_AMD64_VIRT_SPEC_CTRL,
        MSR_IA32_XSS,
        MSR_IA32_MCG_STATUS,
        MSR_IA32_MCG_CTL,
        MSR_MTRR_FIX_64K_00000,
        MSR_MTRR_FIX_16K_80000,
        MSR_MTRR_FIX_16K_A0000,
    ]);
    list.extend((0..8).map(|i| MSR_MTRR_FIX_4K_C0000 + i));
    list.extend((0..MTRR_VARIABLE_PAIRS * 2).map(|i| MSR_MTRR_PHYS_BASE0 + i));
    list.extend([
        MSR_KVM_WALL_CLOCK,
        MSR_KVM_SYSTEM_TIME,
        MSR_KVM_WALL_CLOCK_NEW,
        MSR_KVM_SYSTEM_TIME_NEW,
        // The async-PF interrupt vector before the enable MSR that may select it.
        MSR_KVM_ASYNC_PF_INT,
        MSR_KVM_ASYNC_PF_EN,
        MSR_KVM_STEAL_TIME,
        MSR_KVM_PV_EOI_EN,
        MSR_KVM_POLL_CONTROL,
        // Last: KVM interprets the deadline against the guest TSC, so the TSC must already be
        // restored when it is written.
        MSR_IA32_TSC_DEADLINE,
    ]);
    list
}

/// The MSRs a snapshot must save and restore, keeping only those in `supported` (the output
/// of `KVM_GET_MSR_INDEX_LIST`), in an order safe to restore with one `KVM_SET_MSRS`: TSC
/// before TSC_ADJUST and TSC_DEADLINE (deadline last), APIC_BASE before the paravirtual MSRs,
/// MSR_KVM_ASYNC_PF_INT before MSR_KVM_ASYNC_PF_EN.
///
/// EFER is not listed: it travels in `kvm_sregs`. Restore the LAPIC (`KVM_SET_LAPIC`) after
/// these MSRs, since APIC_BASE decides the LAPIC mode. Does not include MSRs only reported by
/// `KVM_GET_MSR_FEATURE_INDEX_LIST` (feature MSRs, not per-vCPU state).
pub fn snapshot_msr_indices(supported: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for index in snapshot_candidates() {
        if supported.contains(&index) && !out.contains(&index) {
            out.push(index);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_entries_have_expected_values() {
        let entries = boot_msr_entries();
        let get = |i: u32| entries.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        for i in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
        ] {
            assert_eq!(get(i), Some(0), "msr {i:#x}");
        }
        assert_eq!(entries.len(), 11);
    }

    #[test]
    fn snapshot_list_is_filtered_by_support() {
        let supported = [
            MSR_IA32_TSC,
            MSR_IA32_TSC_DEADLINE,
            MSR_KVM_SYSTEM_TIME_NEW,
            MSR_LSTAR,
            0x1234_5678,
        ];
        let list = snapshot_msr_indices(&supported);
        assert_eq!(
            list,
            vec![
                MSR_LSTAR,
                MSR_IA32_TSC,
                MSR_KVM_SYSTEM_TIME_NEW,
                MSR_IA32_TSC_DEADLINE
            ]
        );
        assert!(snapshot_msr_indices(&[]).is_empty());
    }

    #[test]
    fn full_support_gives_full_list_in_safe_order() {
        let all = snapshot_candidates();
        let list = snapshot_msr_indices(&all);
        assert_eq!(list.len(), all.len(), "no duplicates in the candidate list");
        let pos = |i: u32| list.iter().position(|x| *x == i).expect("present");
        assert!(pos(MSR_IA32_TSC) < pos(MSR_IA32_TSC_DEADLINE));
        assert!(pos(MSR_IA32_TSC) < pos(MSR_IA32_TSC_ADJUST));
        assert_eq!(list.last(), Some(&MSR_IA32_TSC_DEADLINE));
        for i in [
            MSR_IA32_CR_PAT,
            MSR_TSC_AUX,
            MSR_IA32_APICBASE,
            MSR_KVM_STEAL_TIME,
            MSR_KVM_PV_EOI_EN,
            MSR_KVM_ASYNC_PF_EN,
            MSR_MTRR_DEF_TYPE,
            MSR_MTRR_PHYS_BASE0 + 15,
            MSR_MTRR_FIX_4K_C0000 + 7,
            MSR_IA32_SPEC_CTRL,
        ] {
            assert!(list.contains(&i), "msr {i:#x}");
        }
    }
}
