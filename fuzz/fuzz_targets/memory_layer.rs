#![no_main]
//! See `novacron_vm_fuzz::memory_layer` for the input format and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::memory_layer::check(data);
});
