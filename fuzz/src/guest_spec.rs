//! Builtin guest specs (`builtin:<program>[:key=value,...]`): parsing, then validation and
//! assembly for a small and a large guest.
//!
//! Invariants: a spec that parses prints back (Display) to a spec that parses to the same
//! guest; `validate` passes every spec that assembles, and a spec it passes fails to assemble
//! only for the TSC; assembly either fails or yields code that fits the guest kit code
//! region, and a `counter`/`dirtier` data range that lies above the code region and inside
//! the guest's identity-mapped RAM below the MMIO hole.

use novacron_vm::guest_kit::{BuiltinGuest, GuestKitError};
use novacron_vm::machine::layout::{
    GUEST_KIT_CODE_ADDR, GUEST_KIT_CODE_END, IDENTITY_MAPPED_END, MIN_MEM_BYTES, MMIO_GAP_START,
};

use crate::Seed;

/// (guest memory bytes, TSC kHz) every parsed spec is assembled for.
const GUESTS: [(u64, u32); 3] = [(MIN_MEM_BYTES, 0), (256 << 20, 2_000_000), (8 << 30, 1)];

pub fn check(data: &[u8]) -> bool {
    let Ok(spec) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(guest) = spec.parse::<BuiltinGuest>() else {
        return false;
    };
    let printed = guest.to_string();
    let again: BuiltinGuest = printed
        .parse()
        .unwrap_or_else(|e| panic!("printed spec {printed:?} does not parse: {e}"));
    assert_eq!(again, guest, "spec {spec:?} printed as {printed:?}");
    for (mem_bytes, tsc_khz) in GUESTS {
        // What `validate` (run before a VM is recorded or spawned) passes, `assemble` (in
        // the VMM) refuses only for the TSC it alone knows.
        let valid = guest.validate(mem_bytes).is_ok();
        let assembled = guest.assemble(mem_bytes, tsc_khz);
        match &assembled {
            Ok(_) => assert!(
                valid,
                "{guest:?} assembled for {mem_bytes:#x} bytes but did not validate"
            ),
            Err(e) => assert!(
                !valid
                    || matches!(
                        e,
                        GuestKitError::MissingTscKhz { .. } | GuestKitError::RateTooHigh { .. }
                    ),
                "{guest:?} validated for {mem_bytes:#x} bytes, then failed to assemble: {e}"
            ),
        }
        if let Ok(image) = assembled {
            assert!(!image.code.is_empty());
            assert!(image.code.len() as u64 <= GUEST_KIT_CODE_END - GUEST_KIT_CODE_ADDR);
            if let Some((base, len)) = data_range(&guest) {
                let end = base.checked_add(len);
                let limit = mem_bytes.min(MMIO_GAP_START).min(IDENTITY_MAPPED_END);
                assert!(
                    base >= GUEST_KIT_CODE_END && end.is_some_and(|e| e <= limit),
                    "{guest:?} assembled for {mem_bytes:#x} bytes with its data outside RAM"
                );
            }
        }
    }
    true
}

/// The data range a program touches, if its length is representable.
fn data_range(guest: &BuiltinGuest) -> Option<(u64, u64)> {
    match guest {
        BuiltinGuest::Hello | BuiltinGuest::Idle => None,
        BuiltinGuest::Counter(p) => Some((p.base, p.words.saturating_mul(8))),
        BuiltinGuest::Dirtier(p) => Some((p.base, p.mib.saturating_mul(1 << 20))),
    }
}

pub fn seeds() -> Vec<Seed> {
    let text = |s: &str| s.as_bytes().to_vec();
    vec![
        ("hello", text("builtin:hello")),
        (
            "counter",
            text("builtin:counter:words=1024,passes=8,base=0x200000"),
        ),
        (
            "dirtier",
            text("builtin:dirtier:mib=1,rate=0X14,base=0x6000000"),
        ),
    ]
}
