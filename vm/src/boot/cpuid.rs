//! Filtering `KVM_GET_SUPPORTED_CPUID` output into what one vCPU of a NovaCron guest sees.
//!
//! Topology presented: one socket, one core per vCPU, one thread per core. vCPU i has
//! (x2)APIC id i, matching the MP table. What changes, leaf by leaf:
//!
//! - **1**: EBX[31:24] initial APIC id = vCPU index; EBX[23:16] addressable logical processors
//!   = vCPU count rounded up to a power of two; EBX[7:0] brand index cleared. EDX.HTT set only
//!   with more than one vCPU. ECX.HYPERVISOR (bit 31) set. Cleared because nothing behind them
//!   is emulated or wanted: ECX DTES64, MONITOR (mwait would halt a vCPU the VMM cannot see),
//!   DS-CPL, VMX (no nested virtualisation: its state is not in snapshots), SMX, EST, TM2,
//!   PDCM (no PMU); EDX DS, ACPI (thermal MSRs), TM, PBE.
//!   TSC-deadline (ECX bit 24) and x2APIC (ECX bit 21) are kept as KVM reports them: the
//!   in-kernel LAPIC emulates both. KVM does not report TSC-deadline in supported CPUID; the
//!   integrator may set it when `KVM_CAP_TSC_DEADLINE_TIMER` is present.
//! - **4** (Intel caches): EAX[31:26] cores per package - 1; EAX[25:14] threads sharing the
//!   cache - 1: 0 for L1/L2 (per core), all vCPUs for L3 and beyond.
//! - **6** (thermal/power): everything cleared except EAX.ARAT (bit 2, the LAPIC timer keeps
//!   running in deep C-states, true of KVM's emulated timer).
//! - **0xA** (architectural PMU): all zero, version 0 = no PMU.
//! - **0xB / 0x1F** (extended topology), each subleaf present: 0 = SMT level (shift 0, one
//!   thread), 1 = core level (shift log2 of the rounded count, `vcpu_count` processors), higher
//!   = invalid level; EDX = x2APIC id. Subleaves 0 and 1 are added if KVM omitted them.
//! - **0x40000000**: KVM signature "KVMKVMKVM" and max leaf at least 0x40000001. The KVM
//!   paravirtual feature leaf 0x40000001 is kept as KVM reports it (kvmclock, async PF, steal
//!   time, PV EOI, PV unhalt are all in-kernel).
//! - AMD/Hygon only: **0x80000008** ECX[7:0] = vCPU count - 1, ECX[15:12] = APIC id core
//!   bits; **0x8000001E** extended APIC id = vCPU index, one thread per core, node 0.
//!
//! Everything else passes through unchanged (e.g. leaf 7 features, XSAVE leaves).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_POWER: u32 = 6;
const LEAF_PMU: u32 = 0xA;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001E;

/// Leaf 1 ECX bits cleared.
const LEAF1_ECX_CLEAR: u32 = (1 << 2) // DTES64
    | (1 << 3) // MONITOR
    | (1 << 4) // DS-CPL
    | (1 << 5) // VMX
    | (1 << 6) // SMX
    | (1 << 7) // EST
    | (1 << 8) // TM2
    | (1 << 15); // PDCM
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bits cleared: DS, ACPI, TM, PBE.
const LEAF1_EDX_CLEAR: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 1 EDX: HTT (EBX[23:16] is valid).
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX: ARAT.
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4B4D_564B, 0x564B_4D56, 0x0000_004D];
/// Leaf 0 EBX of "AuthenticAMD" and "HygonGenuine".
const VENDOR_AMD_EBX: u32 = 0x6874_7541;
const VENDOR_HYGON_EBX: u32 = 0x6F67_7948;
/// Topology level types of leaves 0xB/0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The topology a vCPU reports.
#[derive(Debug, Clone, Copy)]
struct Topology {
    index: u32,
    count: u32,
    /// `count` rounded up to a power of two: the APIC id space of the package.
    addressable: u32,
    /// Bits of the APIC id that number the core.
    core_shift: u32,
}

impl Topology {
    fn new(vcpu_index: u8, vcpu_count: u8) -> Self {
        let count = u32::from(vcpu_count.max(1));
        let addressable = count.next_power_of_two();
        Topology {
            index: u32::from(vcpu_index),
            count,
            addressable,
            core_shift: addressable.trailing_zeros(),
        }
    }
}

/// Rewrites `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `vcpu_index` of `vcpu_count`;
/// see the module documentation for every change. Call it once per vCPU on a fresh copy.
///
/// A `vcpu_count` of 0 is treated as 1. If the entry array is full, missing topology
/// subleaves cannot be added; that is logged and the existing ones are still rewritten.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_index: u8, vcpu_count: u8) {
    if vcpu_index >= vcpu_count.max(1) {
        tracing::warn!(vcpu_index, vcpu_count, "vCPU index outside the vCPU count");
    }
    let topo = Topology::new(vcpu_index, vcpu_count);
    let amd = is_amd(cpuid.as_slice());
    let has_hypervisor_leaf = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_KVM_FEATURES);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => filter_features(entry, &topo),
            LEAF_CACHE_PARAMS => filter_cache_params(entry, &topo),
            LEAF_POWER => filter_power(entry),
            LEAF_PMU => clear(entry),
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => filter_topology(entry, &topo),
            LEAF_HYPERVISOR => filter_hypervisor(entry, has_hypervisor_leaf),
            LEAF_AMD_SIZES if amd => filter_amd_sizes(entry, &topo),
            LEAF_AMD_EXT_APIC if amd => filter_amd_ext_apic(entry, &topo),
            _ => {}
        }
    }
    add_missing_topology_subleaves(cpuid, &topo);
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| e.ebx == VENDOR_AMD_EBX || e.ebx == VENDOR_HYGON_EBX)
}

fn clear(entry: &mut kvm_cpuid_entry2) {
    entry.eax = 0;
    entry.ebx = 0;
    entry.ecx = 0;
    entry.edx = 0;
}

fn filter_features(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    let clflush = entry.ebx & 0x0000_FF00;
    let logical = topo.addressable.min(0xFF);
    entry.ebx = (topo.index << 24) | (logical << 16) | clflush;
    entry.ecx = (entry.ecx & !LEAF1_ECX_CLEAR) | LEAF1_ECX_HYPERVISOR;
    entry.edx &= !LEAF1_EDX_CLEAR;
    if topo.count > 1 {
        entry.edx |= LEAF1_EDX_HTT;
    } else {
        entry.edx &= !LEAF1_EDX_HTT;
    }
}

fn filter_cache_params(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    if entry.eax & 0x1F == 0 {
        return; // no cache at this subleaf
    }
    let level = (entry.eax >> 5) & 0x7;
    let cores_minus_one = (topo.addressable - 1).min(0x3F);
    let sharing_minus_one = if level >= 3 {
        (topo.addressable - 1).min(0xFFF)
    } else {
        0
    };
    entry.eax = (entry.eax & 0x3FFF) | (sharing_minus_one << 14) | (cores_minus_one << 26);
}

fn filter_power(entry: &mut kvm_cpuid_entry2) {
    let arat = entry.eax & LEAF6_EAX_ARAT;
    clear(entry);
    entry.eax = arat;
}

/// Leaf 0xB/0x1F registers for `subleaf`.
fn topology_subleaf(subleaf: u32, topo: &Topology) -> [u32; 4] {
    let (shift, processors, level) = match subleaf {
        0 => (0, 1, LEVEL_SMT),
        1 => (topo.core_shift, topo.count, LEVEL_CORE),
        _ => (0, 0, 0),
    };
    [
        shift,
        processors,
        (level << 8) | (subleaf & 0xFF),
        topo.index,
    ]
}

fn filter_topology(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    let [eax, ebx, ecx, edx] = topology_subleaf(entry.index, topo);
    entry.eax = eax;
    entry.ebx = ebx;
    entry.ecx = ecx;
    entry.edx = edx;
}

fn add_missing_topology_subleaves(cpuid: &mut CpuId, topo: &Topology) {
    for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let present: Vec<u32> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == function)
            .map(|e| e.index)
            .collect();
        if present.is_empty() {
            continue; // KVM does not offer the leaf; do not invent it
        }
        for subleaf in [0u32, 1] {
            if present.contains(&subleaf) {
                continue;
            }
            let mut entry = kvm_cpuid_entry2 {
                function,
                index: subleaf,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            filter_topology(&mut entry, topo);
            if let Err(e) = cpuid.push(entry) {
                tracing::warn!(function, subleaf, error = ?e, "cannot add CPUID topology subleaf");
            }
        }
    }
}

fn filter_hypervisor(entry: &mut kvm_cpuid_entry2, has_features_leaf: bool) {
    if has_features_leaf {
        entry.eax = entry.eax.max(LEAF_KVM_FEATURES);
    }
    let [ebx, ecx, edx] = KVM_SIGNATURE;
    entry.ebx = ebx;
    entry.ecx = ecx;
    entry.edx = edx;
}

fn filter_amd_sizes(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    let nc = (topo.count - 1) & 0xFF;
    entry.ecx = (entry.ecx & !0xF0FF) | ((topo.core_shift & 0xF) << 12) | nc;
}

fn filter_amd_ext_apic(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    entry.eax = topo.index;
    entry.ebx = topo.index & 0xFF; // compute unit id; threads per unit - 1 = 0
    entry.ecx = 0; // node 0, one node per package
    entry.edx = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    /// A plausible Intel host: leaf 1 with VMX, MONITOR, PDCM, DS, ACPI, TM set; caches
    /// L1d/L1i/L2/L3; a PMU; only subleaf 0 of leaf 0xB.
    fn intel_host() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0x1F, 0x756E_6547, 0x6C65_746E, 0x4965_6E69]),
            entry(
                1,
                0,
                [
                    0x000906EA,
                    0x0A10_0800 | 0x05,
                    0xFFFA_B3BF | (1 << 31),
                    0xBFEB_FBFF,
                ],
            ),
            entry(4, 0, [0x1C00_4121, 0, 0, 0]),
            entry(4, 1, [0x1C00_4122, 0, 0, 0]),
            entry(4, 2, [0x1C00_4143, 0, 0, 0]),
            entry(4, 3, [0x1C03_C163, 0, 0, 0]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(6, 0, [0x0000_27F7, 2, 9, 0]),
            entry(7, 0, [0, 0x029C_6FBF, 0x4000_0000, 0xBC00_0400]),
            entry(0xA, 0, [0x0704_8304, 0, 0, 0x603]),
            entry(0xB, 0, [1, 2, 0x100, 3]),
            entry(0x4000_0000, 0, [0x4000_0001, 0, 0, 0]),
            entry(0x4000_0001, 0, [0x0100_7AFB, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        ])
        .expect("synthetic cpuid")
    }

    #[test]
    fn leaf1_identity_and_features() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 3, 6);
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.eax, 0x000906EA, "signature untouched");
        assert_eq!(l1.ebx >> 24, 3, "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xFF, 8, "6 rounded up to 8");
        assert_eq!((l1.ebx >> 8) & 0xFF, 0x08, "clflush size kept");
        assert_eq!(l1.ebx & 0xFF, 0, "brand index cleared");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        for bit in [2, 3, 4, 5, 6, 7, 8, 15] {
            assert_eq!(l1.ecx & (1 << bit), 0, "ecx bit {bit}");
        }
        assert_ne!(l1.ecx & (1 << 21), 0, "x2apic kept");
        assert_ne!(l1.ecx & (1 << 0), 0, "sse3 kept");
        for bit in [21, 22, 29, 31] {
            assert_eq!(l1.edx & (1 << bit), 0, "edx bit {bit}");
        }
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.edx & (1 << 25), 0, "sse kept");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 0, 1);
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xFF, 1);
        assert_eq!(l1.ebx >> 24, 0);
    }

    #[test]
    fn cache_leaf_topology() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 0, 4);
        for sub in 0..3 {
            let e = find(&cpuid, 4, sub);
            assert_eq!(e.eax >> 26, 3, "cores-1, subleaf {sub}");
            assert_eq!((e.eax >> 14) & 0xFFF, 0, "L1/L2 per core, subleaf {sub}");
            assert_eq!(e.eax & 0x3FFF, find(&intel_host(), 4, sub).eax & 0x3FFF);
        }
        let l3 = find(&cpuid, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xFFF, 3, "L3 shared by all 4");
        assert_eq!(find(&cpuid, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn power_and_pmu_leaves_cleared() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 0, 2);
        let l6 = find(&cpuid, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
        let la = find(&cpuid, 0xA, 0);
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));
        assert_eq!(find(&cpuid, 7, 0).ebx, 0x029C_6FBF, "leaf 7 untouched");
    }

    #[test]
    fn extended_topology_rewritten_and_completed() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 5, 6);
        let smt = find(&cpuid, 0xB, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, 0xB, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        assert!(
            !cpuid.as_slice().iter().any(|e| e.function == 0x1F),
            "absent leaf 0x1F is not invented"
        );
    }

    #[test]
    fn hypervisor_leaf_signature() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 0, 1);
        let h = find(&cpuid, 0x4000_0000, 0);
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        assert_eq!(h.eax, 0x4000_0001);
        assert_eq!(find(&cpuid, 0x4000_0001, 0).eax, 0x0100_7AFB);
        assert_eq!(
            find(&cpuid, 0x8000_0008, 0).ecx,
            0,
            "Intel: AMD leaf untouched"
        );
    }

    #[test]
    fn amd_core_count_leaves() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0, 0, [0x10, VENDOR_AMD_EBX, 0x444D_4163, 0x6974_6E65]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0000_700F, 0]),
            entry(0x8000_001E, 0, [7, 0x0107, 0x0300, 0]),
        ])
        .expect("synthetic cpuid");
        filter_cpuid(&mut cpuid, 2, 3);
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx, (2 << 12) | 2);
        let ext = find(&cpuid, 0x8000_001E, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
    }

    #[test]
    fn zero_count_is_treated_as_one() {
        let mut cpuid = intel_host();
        filter_cpuid(&mut cpuid, 0, 0);
        let core = find(&cpuid, 0xB, 1);
        assert_eq!((core.eax, core.ebx), (0, 1));
    }
}
