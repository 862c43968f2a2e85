//! Intel MultiProcessor Specification 1.4 table, so a Linux guest without ACPI finds its
//! vCPUs and the IOAPIC.
//!
//! The floating pointer structure sits at `EBDA_START` (639 KiB, the "last KiB of base memory"
//! Linux scans); the configuration table follows it directly and may run past the first KiB
//! into the rest of the `[EBDA_START, HIMEM_START)` range the e820 map reserves.
//!
//! Only kernels built with CONFIG_X86_MPPARSE read it (Debian's generic kernel does: it logs
//! "Intel MultiProcessor Specification v1.4", our CPUs and "IOAPIC[0]: apic_id N"). Kernels
//! without it (e.g. Debian's cloud flavour) need ACPI (a MADT) to see more than one CPU or the
//! IOAPIC, and on such kernels `acpi=off` disables the local APIC altogether.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::machine::layout::{EBDA_START, HIMEM_START, MAX_VCPUS};

/// Physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// Physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// ISA interrupt lines routed 1:1 to IOAPIC pins.
pub const ISA_IRQS: u8 = 16;

const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const SPEC_REV_1_4: u8 = 4;
/// Local APIC version of an integrated (xAPIC) APIC.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version of the 82093AA-compatible KVM IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPU signature: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPU feature flags: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs".
const ALL_LAPICS: u8 = 0xFF;

/// Byte size of the whole MP table (floating pointer + configuration table) for `vcpus`.
pub fn mptable_size(vcpus: u8) -> usize {
    FLOATING_POINTER_LEN + config_table_len(vcpus)
}

fn config_table_len(vcpus: u8) -> usize {
    CONFIG_HEADER_LEN
        + usize::from(vcpus) * PROCESSOR_ENTRY_LEN
        + SMALL_ENTRY_LEN // bus
        + SMALL_ENTRY_LEN // ioapic
        + usize::from(ISA_IRQS) * SMALL_ENTRY_LEN
        + 2 * SMALL_ENTRY_LEN // LINT0, LINT1
}

fn entry_count(vcpus: u8) -> u16 {
    u16::from(vcpus) + 2 + u16::from(ISA_IRQS) + 2
}

/// Byte whose addition makes `bytes` sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the MP table for `vcpus` vCPUs to live at guest-physical `base`. vCPU i has local
/// APIC id i (CPU 0 is the bootstrap processor); the IOAPIC has id `vcpus`; ISA IRQ n goes to
/// IOAPIC pin n (edge, active high, as the bus defines); LINT0 is ExtINT and LINT1 NMI on every
/// local APIC.
pub fn build_mptable(vcpus: u8, base: u64) -> Result<Vec<u8>, BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::VcpuCount {
            count: vcpus,
            max: MAX_VCPUS,
        });
    }
    let size = mptable_size(vcpus);
    let space = HIMEM_START.saturating_sub(base);
    if size as u64 > space {
        return Err(BootError::MpTableTooBig {
            vcpus,
            size,
            space,
            start: base,
            end: HIMEM_START,
        });
    }
    let config_addr = (base + FLOATING_POINTER_LEN as u64) as u32;
    let mut table = floating_pointer(config_addr);
    table.extend(config_table(vcpus));
    Ok(table)
}

fn floating_pointer(config_addr: u32) -> Vec<u8> {
    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&config_addr.to_le_bytes());
    fp.push(1); // length in 16-byte paragraphs
    fp.push(SPEC_REV_1_4);
    fp.push(0); // checksum, patched below
    fp.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present, no IMCR
    fp[10] = checksum(&fp);
    fp
}

fn config_table(vcpus: u8) -> Vec<u8> {
    let len = config_table_len(vcpus);
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&(len as u16).to_le_bytes());
    t.push(SPEC_REV_1_4);
    t.push(0); // checksum, patched below
    t.extend_from_slice(b"NOVACRON");
    t.extend_from_slice(b"MICROVM     ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&entry_count(vcpus).to_le_bytes());
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    t.push(0); // extended table checksum
    t.push(0); // reserved
    for cpu in 0..vcpus {
        processor_entry(&mut t, cpu);
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    t.push(ENTRY_IOAPIC);
    t.push(vcpus); // IOAPIC id
    t.push(IOAPIC_VERSION);
    t.push(1); // enabled
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..ISA_IRQS {
        t.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            vcpus,
            irq,
        ]);
    }
    t.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        ALL_LAPICS,
        0,
    ]);
    t.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        ALL_LAPICS,
        1,
    ]);
    debug_assert_eq!(t.len(), len);
    t[7] = checksum(&t);
    t
}

fn processor_entry(t: &mut Vec<u8>, cpu: u8) {
    let flags = if cpu == 0 {
        CPU_ENABLED | CPU_BOOTSTRAP
    } else {
        CPU_ENABLED
    };
    t.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
    t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
    t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
    t.extend_from_slice(&[0; 8]);
}

/// Writes the MP table for `vcpus` vCPUs at `EBDA_START`.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), BootError> {
    let table = build_mptable(vcpus, EBDA_START)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|source| BootError::GuestWrite {
            what: "MP table",
            addr: EBDA_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn written_table(vcpus: u8) -> Vec<u8> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .expect("test guest memory");
        setup_mptable(&mem, vcpus).expect("mptable");
        let mut buf = vec![0u8; mptable_size(vcpus)];
        mem.read_slice(&mut buf, GuestAddress(EBDA_START))
            .expect("read back");
        buf
    }

    #[test]
    fn floating_pointer_is_valid() {
        let t = written_table(2);
        let fp = &t[..16];
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(u64::from(u32_at(fp, 4)), EBDA_START + 16);
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        assert_eq!(sum(fp), 0);
        assert_eq!(fp[11], 0, "feature byte 1: config table present");
    }

    #[test]
    fn config_table_checksum_and_counts() {
        for vcpus in [1u8, 2, 7, MAX_VCPUS] {
            let t = written_table(vcpus);
            let ct = &t[16..];
            assert_eq!(&ct[..4], b"PCMP");
            let len = usize::from(u16_at(ct, 4));
            assert_eq!(len, ct.len());
            assert_eq!(sum(&ct[..len]), 0, "{vcpus} vCPUs");
            assert_eq!(u32_at(ct, 36), LAPIC_ADDR);
            let count = usize::from(u16_at(ct, 34));
            // Walk the entries as Linux does.
            let mut off = 44;
            let mut cpus = Vec::new();
            let mut ioapic = None;
            let mut irqs = Vec::new();
            let mut lints = 0;
            for _ in 0..count {
                match ct[off] {
                    0 => {
                        cpus.push((ct[off + 1], ct[off + 3]));
                        off += 20;
                    }
                    1 => {
                        assert_eq!(&ct[off + 2..off + 8], b"ISA   ");
                        off += 8;
                    }
                    2 => {
                        ioapic = Some((ct[off + 1], u32_at(ct, off + 4)));
                        off += 8;
                    }
                    3 => {
                        irqs.push((ct[off + 5], ct[off + 6], ct[off + 7]));
                        off += 8;
                    }
                    4 => {
                        lints += 1;
                        off += 8;
                    }
                    other => panic!("unknown entry type {other}"),
                }
            }
            assert_eq!(off, len);
            assert_eq!(cpus.len(), usize::from(vcpus));
            for (i, (id, flags)) in cpus.iter().enumerate() {
                assert_eq!(usize::from(*id), i);
                assert_eq!(*flags, if i == 0 { 3 } else { 1 });
            }
            assert_eq!(ioapic, Some((vcpus, IOAPIC_ADDR)));
            assert_eq!(irqs.len(), 16);
            for (n, (src, dst_apic, pin)) in irqs.iter().enumerate() {
                assert_eq!(
                    (usize::from(*src), *dst_apic, usize::from(*pin)),
                    (n, vcpus, n)
                );
            }
            assert_eq!(lints, 2);
        }
    }

    #[test]
    fn bad_vcpu_counts_are_rejected() {
        assert!(matches!(
            build_mptable(0, EBDA_START),
            Err(BootError::VcpuCount { count: 0, .. })
        ));
        assert!(matches!(
            build_mptable(MAX_VCPUS + 1, EBDA_START),
            Err(BootError::VcpuCount { .. })
        ));
    }

    #[test]
    fn table_too_big_for_space_is_rejected() {
        let base = HIMEM_START - mptable_size(4) as u64 + 1;
        let err = build_mptable(4, base).expect_err("one byte short");
        assert!(
            matches!(err, BootError::MpTableTooBig { vcpus: 4, .. }),
            "{err}"
        );
        assert!(build_mptable(4, base - 1).is_ok());
    }
}
