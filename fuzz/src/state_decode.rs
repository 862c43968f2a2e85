//! `MachineState::decode`: the rkyv state archive of a snapshot, validated by bytecheck.
//!
//! Invariants when an archive decodes: re-encoding and decoding gives the same value, and
//! the KVM blobs restore would read back through `from_blob` give an error, never a panic.

use novacron_vm::machine::state::{
    from_blob, to_blob, MachineState, PvPortSnapshot, SerialSnapshot, VcpuState,
    STATE_FORMAT_VERSION,
};

use crate::Seed;

pub fn check(data: &[u8]) -> bool {
    let Ok(state) = MachineState::decode(data) else {
        return false;
    };
    let again = state
        .encode()
        .and_then(|bytes| MachineState::decode(&bytes))
        .unwrap_or_else(|e| panic!("a decoded state does not survive re-encoding: {e}"));
    assert_eq!(again, state, "decode(encode(state)) differs");
    assert_eq!(state.format_version, STATE_FORMAT_VERSION);
    read_blobs(&state);
    true
}

/// Reads the blobs the way `Machine::restore` does; only errors are allowed.
fn read_blobs(state: &MachineState) {
    let _ = from_blob::<kvm_bindings::kvm_pit_state2>("PIT", &state.pit);
    let _ = from_blob::<kvm_bindings::kvm_clock_data>("clock", &state.clock);
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        let _ = from_blob::<kvm_bindings::kvm_irqchip>("irqchip", chip);
    }
    for v in &state.vcpus {
        let _ = from_blob::<kvm_bindings::kvm_regs>("regs", &v.regs);
        let _ = from_blob::<kvm_bindings::kvm_sregs>("sregs", &v.sregs);
        let _ = from_blob::<kvm_bindings::kvm_lapic_state>("lapic", &v.lapic);
    }
}

fn vcpu(seed: u8) -> VcpuState {
    VcpuState {
        regs: to_blob(&kvm_bindings::kvm_regs {
            rip: 0x10_0000,
            rax: u64::from(seed),
            ..Default::default()
        }),
        sregs: vec![seed.wrapping_add(1); 16],
        xsave: vec![],
        xcrs: vec![0; 8],
        debug_regs: vec![],
        lapic: vec![seed; 16],
        mp_state: vec![0; 4],
        vcpu_events: vec![],
        msrs: vec![(0x10, 42), (0xC000_0080, 0x500)],
        cpuid: vec![],
        tsc_khz: 2_000_000,
    }
}

/// A small but complete state, as the machine would capture it (blobs shortened).
pub fn sample(vcpus: u8) -> MachineState {
    MachineState {
        format_version: STATE_FORMAT_VERSION,
        mem_regions: vec![(0, 64 << 20)],
        guest: "builtin:counter:words=1024,passes=2,base=0x200000".into(),
        vcpus: (0..vcpus).map(vcpu).collect(),
        pic_master: vec![1; 16],
        pic_slave: vec![2; 16],
        ioapic: vec![3; 32],
        pit: to_blob(&kvm_bindings::kvm_pit_state2::default()),
        clock: to_blob(&kvm_bindings::kvm_clock_data::default()),
        serial: SerialSnapshot {
            registers: [0, 0, 0, 1, 3, 0x60, 0, 0, 0],
            in_buffer: b"hi".to_vec(),
        },
        pv_port: PvPortSnapshot {
            value_lo: 7,
            value_hi: 0,
        },
    }
}

pub fn seeds() -> Vec<Seed> {
    let encode = |s: MachineState| {
        s.encode()
            .unwrap_or_else(|e| panic!("seed state does not encode: {e}"))
    };
    let mut two_regions = sample(1);
    two_regions.mem_regions = vec![(0, 0xD000_0000), (1 << 32, 1 << 30)];
    vec![
        ("one_vcpu", encode(sample(1))),
        ("two_vcpus", encode(sample(2))),
        ("two_regions", encode(two_regions)),
    ]
}
