#![no_main]
//! See `novacron_vm_fuzz::migration_stream` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::migration_stream::check(data);
});
