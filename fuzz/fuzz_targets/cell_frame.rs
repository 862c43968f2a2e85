#![no_main]
//! See `novacron_vm_fuzz::cell_frame` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::cell_frame::check(data);
});
