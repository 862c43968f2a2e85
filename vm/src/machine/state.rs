//! The saved state of a machine: everything except guest memory, as one rkyv archive.
//!
//! KVM's state structures are plain `repr(C)` data; they are kept as byte blobs of exactly
//! their size (checked on the way back, through zerocopy, so no byte pattern is unsound),
//! and KVM itself validates their contents when they are set. Archives read from disk are
//! validated by bytecheck before anything is used.

use rkyv::{Archive, Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Bumped whenever the layout below changes; older archives are refused by number.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Largest state archive accepted from disk or the network.
pub const MAX_STATE_BYTES: usize = 16 << 20;

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MachineState {
    pub format_version: u32,
    /// (guest-physical start, length) of every RAM region.
    pub mem_regions: Vec<(u64, u64)>,
    /// What booted: a builtin guest spec, or "linux".
    pub guest: String,
    pub vcpus: Vec<VcpuState>,
    /// KVM_GET_IRQCHIP for the master PIC, slave PIC and IOAPIC.
    pub pic_master: Vec<u8>,
    pub pic_slave: Vec<u8>,
    pub ioapic: Vec<u8>,
    /// KVM_GET_PIT2.
    pub pit: Vec<u8>,
    /// KVM_GET_CLOCK.
    pub clock: Vec<u8>,
    pub serial: SerialSnapshot,
    pub pv_port: PvPortSnapshot,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VcpuState {
    pub regs: Vec<u8>,
    pub sregs: Vec<u8>,
    pub xsave: Vec<u8>,
    pub xcrs: Vec<u8>,
    pub debug_regs: Vec<u8>,
    pub lapic: Vec<u8>,
    pub mp_state: Vec<u8>,
    pub vcpu_events: Vec<u8>,
    /// (index, value) of every MSR the snapshot list names that KVM supports.
    pub msrs: Vec<(u32, u64)>,
    /// The CPUID entries the vCPU ran with (kvm_cpuid_entry2 blobs, concatenated).
    pub cpuid: Vec<u8>,
    pub tsc_khz: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvPortSnapshot {
    pub value_lo: u32,
    pub value_hi: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state archive is not valid: {0}")]
    Invalid(String),
    #[error("state archive is {0} bytes, over the {MAX_STATE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error(
        "state format version {found} is not supported (this build reads {STATE_FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("saved {what} is {found} bytes, expected {expected}")]
    BlobSize {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("cannot encode machine state: {0}")]
    Encode(String),
}

impl MachineState {
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .map_err(|e| StateError::Encode(e.to_string()))
    }

    /// Validates and decodes an archive that came from outside.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(StateError::TooLarge(bytes.len()));
        }
        // rkyv needs aligned input; copying into an aligned buffer costs microseconds.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let state = rkyv::from_bytes::<MachineState, rkyv::rancor::Error>(&aligned)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if state.format_version != STATE_FORMAT_VERSION {
            return Err(StateError::Version {
                found: state.format_version,
            });
        }
        Ok(state)
    }
}

/// The bytes of a KVM state structure.
pub fn to_blob<T: IntoBytes + Immutable>(value: &T) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// A KVM state structure back from its bytes; the length must match exactly.
pub fn from_blob<T: FromBytes>(what: &'static str, bytes: &[u8]) -> Result<T, StateError> {
    T::read_from_bytes(bytes).map_err(|_| StateError::BlobSize {
        what,
        expected: std::mem::size_of::<T>(),
        found: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MachineState {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x10_0000,
            rax: 42,
            ..Default::default()
        };
        MachineState {
            format_version: STATE_FORMAT_VERSION,
            mem_regions: vec![(0, 64 << 20)],
            guest: "builtin:hello".into(),
            vcpus: vec![VcpuState {
                regs: to_blob(&regs),
                sregs: vec![],
                xsave: vec![],
                xcrs: vec![],
                debug_regs: vec![],
                lapic: vec![],
                mp_state: vec![],
                vcpu_events: vec![],
                msrs: vec![(0x10, 99)],
                cpuid: vec![],
                tsc_khz: 2_000_000,
            }],
            pic_master: vec![1, 2],
            pic_slave: vec![],
            ioapic: vec![],
            pit: vec![],
            clock: vec![],
            serial: SerialSnapshot::default(),
            pv_port: PvPortSnapshot::default(),
        }
    }

    #[test]
    fn round_trip_and_blob_sizes() {
        let s = sample();
        let bytes = s.encode().unwrap();
        let back = MachineState::decode(&bytes).unwrap();
        assert_eq!(back, s);
        let regs: kvm_bindings::kvm_regs = from_blob("regs", &back.vcpus[0].regs).unwrap();
        assert_eq!((regs.rip, regs.rax), (0x10_0000, 42));
        let err = from_blob::<kvm_bindings::kvm_regs>("regs", &[0; 3]).unwrap_err();
        assert!(err.to_string().contains("regs is 3 bytes"), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let bytes = sample().encode().unwrap();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(MachineState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0xA5;
        }
        let _ = MachineState::decode(&flipped); // must not panic; may or may not be valid
        let mut wrong_version = sample();
        wrong_version.format_version = 99;
        let err = MachineState::decode(&wrong_version.encode().unwrap()).unwrap_err();
        assert!(matches!(err, StateError::Version { found: 99 }));
    }
}
