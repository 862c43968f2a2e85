#![no_main]
//! See `novacron_vm_fuzz::snapshot_load` for the input format and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::snapshot_load::check(data);
});
