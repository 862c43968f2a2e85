//! The builtin guests the end-to-end tests run, and whether this host can run them.

use novacron_vm::guest_kit::{
    counter_expected, counter_expected_blob, counter_expected_output, result_line, BuiltinGuest,
    CounterParams,
};

/// Whether KVM works here; says why `test` skips when it does not.
pub fn kvm_usable(test: &str) -> bool {
    novacron_vm::machine::check_kvm()
        .map_err(|e| eprintln!("skipping {test}: {e}"))
        .is_ok()
}

/// The counter guest with `passes` passes (its spec), and the result line it prints when
/// it ends.
pub fn counter(passes: u64) -> (String, String) {
    let params = CounterParams {
        passes,
        ..CounterParams::default()
    };
    (
        BuiltinGuest::Counter(params).to_string(),
        result_line(counter_expected(&params)),
    )
}

/// The counter guest with `passes` passes that prints a line after each pass (its spec),
/// and everything it prints when it runs uninterrupted.
#[allow(dead_code)] // not every test binary that includes this file uses it
pub fn counter_printing_passes(passes: u64) -> (String, String) {
    let params = CounterParams {
        passes,
        print_passes: true,
        ..CounterParams::default()
    };
    (
        BuiltinGuest::Counter(params).to_string(),
        counter_expected_output(&params),
    )
}

/// The counter guest with `passes` passes that hands its result over through the result
/// port (its spec), and the blob it hands over.
#[allow(dead_code)] // not every test binary that includes this file uses it
pub fn counter_handing_over_a_blob(passes: u64) -> (String, Vec<u8>) {
    let params = CounterParams {
        passes,
        result_blob: true,
        ..CounterParams::default()
    };
    (
        BuiltinGuest::Counter(params).to_string(),
        counter_expected_blob(&params),
    )
}
