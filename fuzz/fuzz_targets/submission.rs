#![no_main]
//! See `novacron_vm_fuzz::submission` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::submission::check(data);
});
