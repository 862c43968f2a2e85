//! Signed job views: what lets a node show a job it learned from another node without
//! trusting that node.
//!
//! - The **job record** is the submission itself, signed by its submitter: its blake3 hash is
//!   the job's id, so a `Status` answer carries it and the asker checks id and signature
//!   and takes the spec and the submitter from it, never from the answer's own fields.
//! - A **replica status** is signed by the node that runs the replica: each report a runner
//!   sends to the origin carries a [`ReplicaStatus`] in an ed25519 envelope of the node's
//!   identity ([`SignedRecord`], domain [`REPLICA_STATUS_DOMAIN`]). The origin checks that
//!   the signer is the reporting peer and that the statement says what the report says,
//!   keeps the latest one in the replica's row (`ReplicaInfo.signed_status`) and passes it
//!   on in `Status` answers.
//!
//! [`check_answer`] is what an asker applies to a whole answer: the submission, each
//! replica's result against what its node signed, and the job's agreed result against a
//! quorum of signed results. An origin can still lie about what is pending (it can hide a
//! replica, or call a job running that ended); it cannot invent a spec, a submitter, a
//! result or a node's word. Pure: bytes and values in, a verdict out.

use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::SignedRecord;
use novacron_mesh::submission;
use novacron_mesh::util::hex;
use serde::{Deserialize, Serialize};

use crate::jobs::wire::ReplicaReport;
use crate::model::{JobInfo, JobSpec, ReplicaInfo, ReplicaState};

/// Domain of a replica status signature (never valid as another record's).
pub const REPLICA_STATUS_DOMAIN: &[u8] = b"novacron-replica-status-v1";
pub use crate::jobs::wire::MAX_SIGNED_STATUS;

/// What a runner says of its replica, signed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStatus {
    pub job_id: String,
    pub replica: u32,
    pub generation: u64,
    pub state: ReplicaState,
    pub result_hash: Option<String>,
    pub log_set: Option<String>,
    pub result_set: Option<String>,
    /// When the node said it (its clock, ms since the epoch).
    pub at_ms: u64,
}

/// Why a signed status or a job answer is not believed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedStatusError {
    #[error("the report of replica {replica} is not signed by its node")]
    Unsigned { replica: u32 },
    #[error("the signed status is not hex")]
    NotHex,
    #[error("the signed status is {len} bytes, over the {MAX_SIGNED_STATUS}-byte limit")]
    TooLarge { len: usize },
    #[error("the signed status does not verify: {0}")]
    BadSignature(String),
    #[error("the signed status is not a replica status: {0}")]
    BadPayload(String),
    #[error("the status of replica {replica} is signed by {signer}, not by {expected}")]
    WrongSigner {
        replica: u32,
        signer: String,
        expected: String,
    },
    #[error("the signed status of replica {replica} says {what} differently")]
    Differs { replica: u32, what: &'static str },
    #[error("the answer carries no submission to check the job against")]
    NoSubmission,
    #[error("the submission in the answer is not job {0}'s")]
    NotThisJob(String),
    #[error("the submission in the answer does not verify: {0}")]
    BadSubmission(String),
    #[error("replica {replica} shows a result that its node did not sign")]
    UnsignedResult { replica: u32 },
    #[error(
        "the agreed result {hash} is signed by {signed} node(s), fewer than the quorum of {quorum}"
    )]
    ResultWithoutQuorum {
        hash: String,
        signed: usize,
        quorum: u8,
    },
}

impl ReplicaStatus {
    /// What a runner's own row `r` of job `job_id` says, as of `at_ms`.
    pub fn of_replica(job_id: &str, r: &ReplicaInfo, at_ms: u64) -> ReplicaStatus {
        ReplicaStatus {
            job_id: job_id.to_string(),
            replica: r.index,
            generation: r.generation,
            state: r.state,
            result_hash: r.result_hash.clone(),
            log_set: r.log_set.clone(),
            result_set: r.result_set.clone(),
            at_ms,
        }
    }

    /// What `report` says, as of `at_ms`.
    pub fn of(report: &ReplicaReport, at_ms: u64) -> ReplicaStatus {
        ReplicaStatus {
            job_id: report.job_id.clone(),
            replica: report.replica,
            generation: report.generation,
            state: report.state,
            result_hash: report.result_hash.clone(),
            log_set: report.log_set.clone(),
            result_set: report.result_set.clone(),
            at_ms,
        }
    }

    /// Checks that `report` carries its sender's (`signer`'s) signed word for what it says.
    pub fn check_report(report: &ReplicaReport, signer: &str) -> Result<(), SignedStatusError> {
        let signed = report
            .signed_status
            .as_deref()
            .ok_or(SignedStatusError::Unsigned {
                replica: report.replica,
            })?;
        ReplicaStatus::of(report, 0).check_signed(signed, signer)
    }

    /// Signs the status as `identity` (hex of the envelope).
    pub fn sign(&self, identity: &NodeIdentity) -> String {
        // Plain data: serde_json cannot fail on it, nor rkyv on the envelope.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let envelope = SignedRecord::seal(identity, REPLICA_STATUS_DOMAIN, payload);
        hex::encode(&envelope.encode().unwrap_or_default())
    }

    /// Opens a signed status (hex): the status and who signed it (a peer id).
    pub fn open(signed: &str) -> Result<(ReplicaStatus, String), SignedStatusError> {
        if signed.len() > 2 * MAX_SIGNED_STATUS {
            return Err(SignedStatusError::TooLarge {
                len: signed.len() / 2,
            });
        }
        let bytes = hex::decode(signed).ok_or(SignedStatusError::NotHex)?;
        let envelope = SignedRecord::decode(&bytes, MAX_SIGNED_STATUS)
            .map_err(|e| SignedStatusError::BadSignature(e.to_string()))?;
        let signer = envelope
            .open(REPLICA_STATUS_DOMAIN)
            .map_err(|e| SignedStatusError::BadSignature(e.to_string()))?;
        let status: ReplicaStatus = serde_json::from_slice(&envelope.record_bytes)
            .map_err(|e| SignedStatusError::BadPayload(e.to_string()))?;
        Ok((status, signer.to_string()))
    }

    /// Checks that `signed` is `signer`'s word and says exactly what `self` says (the time
    /// aside).
    pub fn check_signed(&self, signed: &str, signer: &str) -> Result<(), SignedStatusError> {
        let theirs = self.check_signed_result(signed, signer)?;
        if theirs.state != self.state {
            return Err(SignedStatusError::Differs {
                replica: self.replica,
                what: "the state",
            });
        }
        Ok(())
    }

    /// [`check_signed`](Self::check_signed) of everything but the state (which an origin may
    /// set by itself: cancelled, placed again): which replica, its generation and its
    /// result. Returns what was signed.
    fn check_signed_result(
        &self,
        signed: &str,
        signer: &str,
    ) -> Result<ReplicaStatus, SignedStatusError> {
        let (theirs, by) = ReplicaStatus::open(signed)?;
        if by != signer {
            return Err(SignedStatusError::WrongSigner {
                replica: self.replica,
                signer: by,
                expected: signer.to_string(),
            });
        }
        let differs = |what| SignedStatusError::Differs {
            replica: self.replica,
            what,
        };
        if theirs.job_id != self.job_id || theirs.replica != self.replica {
            return Err(differs("which replica it is"));
        }
        if theirs.generation != self.generation {
            return Err(differs("the generation"));
        }
        if (&theirs.result_hash, &theirs.log_set, &theirs.result_set)
            != (&self.result_hash, &self.log_set, &self.result_set)
        {
            return Err(differs("the result"));
        }
        Ok(theirs)
    }
}

/// Checks a job `answer` to a `Status` request for job `id` (hex), with the signed
/// `submission` (hex) it came with. Returns the job with its spec and submitter taken
/// from the submission.
pub fn check_answer(
    id: &str,
    mut answer: JobInfo,
    submission_hex: Option<&str>,
) -> Result<JobInfo, SignedStatusError> {
    let bytes = submission_hex
        .and_then(hex::decode)
        .ok_or(SignedStatusError::NoSubmission)?;
    let verified =
        submission::open(&bytes).map_err(|e| SignedStatusError::BadSubmission(e.to_string()))?;
    if verified.id.to_hex() != id || answer.id != id {
        return Err(SignedStatusError::NotThisJob(id.to_string()));
    }
    let spec: JobSpec = serde_json::from_slice(&verified.submission.spec)
        .map_err(|e| SignedStatusError::BadSubmission(format!("its spec: {e}")))?;
    answer.spec = spec;
    answer.submitter = verified.submitter.to_string();

    // Each result shown is its node's word (a replica without one needs none: where it
    // is and how it stands are the origin's to say).
    let mut signed_results: Vec<(&str, &str)> = Vec::new();
    for r in &answer.replicas {
        if (&r.result_hash, &r.log_set, &r.result_set) == (&None, &None, &None) {
            continue;
        }
        let (Some(signed), Some(node)) = (&r.signed_status, r.node.as_deref()) else {
            return Err(SignedStatusError::UnsignedResult { replica: r.index });
        };
        let status = ReplicaStatus::of_replica(id, r, 0).check_signed_result(signed, node)?;
        if let (ReplicaState::Finished, Some(hash)) = (status.state, &r.result_hash) {
            if !signed_results.iter().any(|(n, _)| *n == node) {
                signed_results.push((node, hash));
            }
        }
    }
    // The agreed result: a quorum of distinct nodes signed it.
    if let Some(hash) = &answer.result_hash {
        let quorum = answer.spec.quorum();
        let signed = signed_results.iter().filter(|(_, h)| h == hash).count();
        if signed < usize::from(quorum) {
            return Err(SignedStatusError::ResultWithoutQuorum {
                hash: hash.clone(),
                signed,
                quorum,
            });
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_mesh::submission::Submission;
    use std::time::Duration;

    fn node(seed: u8) -> NodeIdentity {
        NodeIdentity::from_seed(&[seed; 32]).unwrap()
    }

    /// A signed submission of a job asking for `replicas` replicas and `quorum`, its id, and
    /// the job as its origin would show it with one finished replica per signing node.
    fn job(replicas: u8, quorum: u8, runners: &[&NodeIdentity]) -> (String, String, JobInfo) {
        let spec = format!(
            r#"{{"payload": {{"guest": "builtin:hello"}}, "replicas": {replicas}, "quorum": {quorum}}}"#
        );
        let nonce = [replicas; 16];
        let (now, life) = (Duration::from_secs(1_000), Duration::from_secs(600));
        let submission = Submission::new(spec.into_bytes(), nonce, now, life);
        let bytes = submission.sign(&node(99)).unwrap();
        let verified = submission::open(&bytes).unwrap();
        let id = verified.id.to_hex();
        let mut info = crate::model::fixtures::job_info(&id);
        info.spec = serde_json::from_str(r#"{"payload": {"guest": "builtin:idle"}}"#).unwrap();
        info.submitter = "ed25519:forged".into();
        let hash = "ab".repeat(32);
        for (i, runner) in runners.iter().enumerate() {
            let mut r = ReplicaInfo {
                index: i as u32,
                state: ReplicaState::Finished,
                node: Some(runner.peer_id().to_string()),
                generation: 1,
                vm_id: None,
                result_hash: Some(hash.clone()),
                log_set: Some("cd".repeat(32)),
                result_set: Some("cd".repeat(32)),
                detail: None,
                updated_at_ms: 1,
                moved_from: None,
                checkpoint: None,
                restored_from: None,
                signed_status: None,
            };
            r.signed_status = Some(ReplicaStatus::of_replica(&id, &r, 5).sign(runner));
            info.replicas.push(r);
        }
        info.result_hash = Some(hash);
        info.state = crate::model::JobState::Succeeded;
        (hex::encode(&bytes), id, info)
    }

    #[test]
    fn a_signed_status_opens_as_its_signer_and_nothing_else() {
        let (_, id, info) = job(1, 1, &[&node(1)]);
        let r = &info.replicas[0];
        let signed = r.signed_status.clone().unwrap();
        let (status, signer) = ReplicaStatus::open(&signed).unwrap();
        assert_eq!(signer, node(1).peer_id().to_string());
        assert_eq!(status, ReplicaStatus::of_replica(&id, r, 5));
        status.check_signed(&signed, &signer).unwrap();
        // Someone else's word.
        let err = status
            .check_signed(&signed, &node(2).peer_id().to_string())
            .unwrap_err();
        assert!(
            matches!(err, SignedStatusError::WrongSigner { .. }),
            "{err}"
        );
        // Another result than the one signed.
        let mut other = status.clone();
        other.result_hash = Some("ef".repeat(32));
        let err = other.check_signed(&signed, &signer).unwrap_err();
        assert_eq!(
            err,
            SignedStatusError::Differs {
                replica: 0,
                what: "the result"
            }
        );
        // A flipped byte, junk, and too much.
        let mut bytes = hex::decode(&signed).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        assert!(ReplicaStatus::open(&hex::encode(&bytes)).is_err());
        assert_eq!(ReplicaStatus::open("zz"), Err(SignedStatusError::NotHex));
        let huge = "00".repeat(MAX_SIGNED_STATUS + 1);
        assert!(matches!(
            ReplicaStatus::open(&huge),
            Err(SignedStatusError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_answer_is_believed_for_what_is_signed() {
        let (submission, id, info) = job(2, 2, &[&node(1), &node(2)]);
        let shown = check_answer(&id, info.clone(), Some(&submission)).unwrap();
        // The spec and the submitter come from the submission, not from the answer.
        assert_eq!(shown.spec.replicas, 2);
        let submitter = submission::SubmitterId::of(&node(99).public());
        assert_eq!(shown.submitter, submitter.to_string());
        // No submission, or another job's.
        assert_eq!(
            check_answer(&id, info.clone(), None).unwrap_err(),
            SignedStatusError::NoSubmission
        );
        let (theirs, _, _) = job(1, 1, &[]);
        assert!(matches!(
            check_answer(&id, info.clone(), Some(&theirs)).unwrap_err(),
            SignedStatusError::NotThisJob(_)
        ));
        // A result its node did not sign.
        let mut unsigned = info.clone();
        unsigned.replicas[1].signed_status = None;
        assert_eq!(
            check_answer(&id, unsigned, Some(&submission)).unwrap_err(),
            SignedStatusError::UnsignedResult { replica: 1 }
        );
        // A node's word moved to another replica's row.
        let mut moved = info.clone();
        moved.replicas[1].signed_status = moved.replicas[0].signed_status.clone();
        assert!(matches!(
            check_answer(&id, moved, Some(&submission)).unwrap_err(),
            SignedStatusError::WrongSigner { replica: 1, .. }
        ));
        // An agreed result that only one of the two nodes of the quorum signed.
        let mut short = info.clone();
        short.replicas[1].result_hash = Some("ef".repeat(32));
        let r = short.replicas[1].clone();
        short.replicas[1].signed_status =
            Some(ReplicaStatus::of_replica(&id, &r, 5).sign(&node(2)));
        assert_eq!(
            check_answer(&id, short, Some(&submission)).unwrap_err(),
            SignedStatusError::ResultWithoutQuorum {
                hash: "ab".repeat(32),
                signed: 1,
                quorum: 2
            }
        );
        // Where a replica is and how it stands without a result are the origin's to say.
        let mut pending = info;
        pending.result_hash = None;
        pending.state = crate::model::JobState::Running;
        for r in &mut pending.replicas {
            (r.result_hash, r.log_set, r.result_set, r.signed_status) = (None, None, None, None);
            r.state = ReplicaState::Running;
        }
        check_answer(&id, pending, Some(&submission)).unwrap();
    }
}
