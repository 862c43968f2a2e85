//! Test fixtures of the domain model, shared by the tests of the modules that decide on,
//! show or store it.

use super::{VmInfo, VmState};

/// A VM record with every field set, in `state`.
pub fn vm(id: &str, state: VmState) -> VmInfo {
    VmInfo {
        id: id.into(),
        spec: serde_json::from_str(r#"{"guest":"builtin:counter","name":"demo"}"#).expect("spec"),
        state,
        detail: None,
        pid: Some(42),
        created_at_ms: 1_000,
        updated_at_ms: 2_000,
        snapshot_at_ms: None,
        last_report: Some((1, 7)),
        adoptions: 0,
    }
}
