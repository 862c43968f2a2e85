//! Test fixtures of the domain model, shared by the tests of the modules that decide on,
//! show or store it.

use super::{JobInfo, JobState, VmInfo, VmState};

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

/// A job record of a builtin guest with no replicas yet, in `state`.
pub fn job_info_in(id: &str, state: JobState) -> JobInfo {
    JobInfo {
        id: id.into(),
        spec: serde_json::from_str(r#"{"payload": {"guest": "builtin:hello"}}"#).expect("spec"),
        submitter: "ed25519:aa".into(),
        state,
        detail: None,
        origin: "12D3KooWSelf".into(),
        replicas: vec![],
        result_hash: None,
        retries: 0,
        submitted_at_ms: 1,
        updated_at_ms: 1,
    }
}

/// [`job_info_in`] a running job.
pub fn job_info(id: &str) -> JobInfo {
    job_info_in(id, JobState::Running)
}
