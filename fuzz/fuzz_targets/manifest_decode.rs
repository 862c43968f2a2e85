#![no_main]
//! See `novacron_vm_fuzz::manifest_decode` for the input format and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::manifest_decode::check(data);
});
