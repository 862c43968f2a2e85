//! The builtin guests the end-to-end tests run, and whether this host can run them.

use novacron_vm::guest_kit::{counter_expected, result_line, BuiltinGuest, CounterParams};

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
