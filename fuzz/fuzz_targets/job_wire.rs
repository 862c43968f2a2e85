#![no_main]
//! See `novacron_vm_fuzz::job_wire` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    novacron_vm_fuzz::job_wire::check(data);
});
