//! `submission::verify`: signed job submissions anyone may send to a node.
//!
//! Invariants when bytes verify (at a fixed clock): they were within the size limit, and so
//! is the spec; the validity window holds at that clock; verifying again gives the same job
//! id and submitter (the id is fixed by the signed bytes).

use std::time::Duration;

use novacron_mesh::submission::{
    verify, Submission, MAX_SIGNED_SUBMISSION_LEN, MAX_SPEC_LEN, MAX_SUBMISSION_LIFETIME_S,
};
use novacron_mesh::submitter_key::SubmitterKey;
use novacron_node::jobs::spec_file::{parse_spec, to_signed_json};

use crate::Seed;

/// The clock every check and seed uses (unix seconds).
pub const NOW: u64 = 1_800_000_000;

pub fn check(data: &[u8]) -> bool {
    let now = Duration::from_secs(NOW);
    let Ok(v) = verify(data, now) else {
        return false;
    };
    assert!(
        data.len() <= MAX_SIGNED_SUBMISSION_LEN,
        "over the size limit"
    );
    assert!(
        v.submission.spec.len() <= MAX_SPEC_LEN,
        "spec over its limit"
    );
    let s = &v.submission;
    assert!(
        s.issued_at < s.expires_at
            && s.expires_at - s.issued_at <= MAX_SUBMISSION_LIFETIME_S
            && NOW < s.expires_at,
        "a submission outside its window verified: {s:?}"
    );
    let again = verify(data, now).expect("verified once, then refused");
    assert_eq!(
        (again.id, again.submitter),
        (v.id, v.submitter),
        "a second verify differs"
    );
    true
}

pub fn seeds() -> Vec<Seed> {
    let key = SubmitterKey::from_seed(&[11; 32]).expect("seed key");
    crate::job_spec::specs()
        .into_iter()
        .take(2)
        .enumerate()
        .map(|(i, (name, text))| {
            let spec = parse_spec(name, &text).expect("seed spec");
            let bytes = Submission::new(
                to_signed_json(&spec),
                [i as u8; 16],
                Duration::from_secs(NOW - 60),
                Duration::from_secs(3600),
            )
            .sign(key.identity())
            .expect("seed submission signs");
            (if i == 0 { "guest" } else { "kernel" }, bytes)
        })
        .collect()
}
