//! Signed job submissions: a job spec as its submitter wrote it, signed with the submitter's
//! ed25519 key, with a nonce and a validity window, so any node can check who submitted it
//! and that no byte of it changed on the way.
//!
//! Wire form: one [`SignedRecord`] envelope (domain [`JOB_DOMAIN`]) whose payload is an rkyv
//! archive of [`Submission`] `{ spec, nonce, issued_at, expires_at }`. `spec` is the spec's
//! JSON text exactly as signed; this module does not read it (the node parses and validates
//! it after the signature holds).
//!
//! The job's id is blake3 over the domain and the signed payload bytes: the signature covers
//! exactly those bytes, so a resent submission has the same id (replays are recognised by
//! id), and no one but the submitter can make another submission with a given id.
//!
//! [`verify`] refuses, in this order, each with its own error: more than
//! [`MAX_SIGNED_SUBMISSION_LEN`] bytes, an envelope or payload that fails bytecheck, a spec
//! over [`MAX_SPEC_LEN`], a signature that does not verify (forged, or altered after
//! signing), a validity window longer than [`MAX_SUBMISSION_LIFETIME_S`], an expired
//! submission, and one issued more than `records::MAX_CLOCK_SKEW_S` in the future. Whether
//! the submitter is trusted, and whether this id was seen before, is the node's call.

use std::fmt;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use rkyv::{Archive, Deserialize, Serialize};

use crate::identity::NodeIdentity;
use crate::records::{archive, check_len, unarchive, RecordError, SignedRecord, MAX_CLOCK_SKEW_S};
use crate::util::hex;

/// Domain string prepended to a submission before signing.
pub const JOB_DOMAIN: &[u8] = b"novacron-job-submission-v1";

/// Largest spec text in a submission (its signed form, hex-encoded, fits the API's 64 KiB
/// request body).
pub const MAX_SPEC_LEN: usize = 24 * 1024;

/// Largest signed submission accepted (envelope included); checked before anything else.
pub const MAX_SIGNED_SUBMISSION_LEN: usize = MAX_SPEC_LEN + 1024;

/// Longest validity window of a submission: it must reach a node within a day of signing.
pub const MAX_SUBMISSION_LIFETIME_S: u64 = 24 * 3600;

/// Default validity window `novacron submit` signs with.
pub const DEFAULT_SUBMISSION_LIFETIME_S: u64 = 3600;

/// What a submitter signs.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The job spec, JSON text.
    pub spec: Vec<u8>,
    /// Random: two submissions of one spec are two jobs.
    pub nonce: [u8; 16],
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; nodes refuse the submission from then on.
    pub expires_at: u64,
}

/// A job's id: blake3 over [`JOB_DOMAIN`] and the signed payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub [u8; 32]);

impl JobId {
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// Reads 64 hex digits.
    pub fn parse(text: &str) -> Option<JobId> {
        hex::decode_array(text).map(JobId)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.to_hex())
    }
}

/// A submitter, named by its public key: `ed25519:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubmitterId(pub [u8; 32]);

impl SubmitterId {
    pub const PREFIX: &'static str = "ed25519:";

    pub fn of(key: &VerifyingKey) -> SubmitterId {
        SubmitterId(key.to_bytes())
    }

    /// Reads `ed25519:<64 hex>` (the prefix may be left out); refuses a point that is not a
    /// valid ed25519 public key.
    pub fn parse(text: &str) -> Result<SubmitterId, String> {
        let hex_part = text
            .trim()
            .strip_prefix(Self::PREFIX)
            .unwrap_or(text.trim());
        let bytes: [u8; 32] = hex::decode_array(hex_part)
            .ok_or_else(|| format!("a submitter key is {}<64 hex digits>", SubmitterId::PREFIX))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not a valid ed25519 public key".to_string())?;
        Ok(SubmitterId(bytes))
    }
}

impl fmt::Display for SubmitterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(&self.0))
    }
}

impl fmt::Debug for SubmitterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmitterId({self})")
    }
}

/// A submission whose signature and validity window held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSubmission {
    pub id: JobId,
    pub submitter: SubmitterId,
    pub submission: Submission,
}

/// Why a submission is refused; each says what is wrong in words a submitter acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    #[error("the submission is {len} bytes, more than the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("the submission is not a signed job submission: {0}")]
    Malformed(String),
    #[error("the spec is {len} bytes, more than the limit of {limit}")]
    SpecTooLarge { len: usize, limit: usize },
    #[error(
        "the signature by {submitter} does not verify: the spec was altered after signing, or \
         the signature was forged"
    )]
    BadSignature { submitter: String },
    #[error(
        "the submission is valid for {lifetime_s} s, more than the limit of {limit} s (sign it \
         again with a shorter validity)"
    )]
    BadLifetime { lifetime_s: u64, limit: u64 },
    #[error(
        "the submission expired at unix time {expires_at} (now {now}): sign it again \
         (`novacron submit` signs afresh each time)"
    )]
    Expired { expires_at: u64, now: u64 },
    #[error(
        "the submission was issued at unix time {issued_at}, more than {skew} s after now \
         ({now}): check the submitter's clock"
    )]
    FromTheFuture { issued_at: u64, now: u64, skew: u64 },
    #[error("cannot sign the submission: {0}")]
    Encode(String),
}

impl Submission {
    /// A submission of `spec` (JSON text) issued at `now` (since the unix epoch), valid for
    /// `lifetime`.
    pub fn new(spec: Vec<u8>, nonce: [u8; 16], now: Duration, lifetime: Duration) -> Submission {
        Submission {
            spec,
            nonce,
            issued_at: now.as_secs(),
            expires_at: now.as_secs() + lifetime.as_secs().max(1),
        }
    }

    /// Signs the submission as `key`; refuses what nodes would refuse for its size.
    pub fn sign(&self, key: &NodeIdentity) -> Result<Vec<u8>, SubmissionError> {
        check_len("spec", self.spec.len(), MAX_SPEC_LEN).map_err(|_| {
            SubmissionError::SpecTooLarge {
                len: self.spec.len(),
                limit: MAX_SPEC_LEN,
            }
        })?;
        let payload =
            archive("submission", self).map_err(|e| SubmissionError::Encode(e.to_string()))?;
        let bytes = SignedRecord::seal(key, JOB_DOMAIN, payload)
            .encode()
            .map_err(|e| SubmissionError::Encode(e.to_string()))?;
        if bytes.len() > MAX_SIGNED_SUBMISSION_LEN {
            return Err(SubmissionError::TooLarge {
                len: bytes.len(),
                limit: MAX_SIGNED_SUBMISSION_LEN,
            });
        }
        Ok(bytes)
    }
}

/// The id of a signed payload.
fn job_id(payload: &[u8]) -> JobId {
    let mut h = blake3::Hasher::new();
    h.update(JOB_DOMAIN);
    h.update(payload);
    JobId(*h.finalize().as_bytes())
}

/// Checks wire bytes from anyone (see the module doc) at `now` (since the unix epoch):
/// what the node a job is submitted through does.
pub fn verify(bytes: &[u8], now: Duration) -> Result<VerifiedSubmission, SubmissionError> {
    let v = open(bytes)?;
    check_window(v.submission.issued_at, v.submission.expires_at, now)?;
    Ok(v)
}

/// Checks everything [`verify`] does but the validity window: what a node asked to run (or
/// restore) a replica of a job does. The window bounds when a job may enter the mesh; the
/// node it entered through checked it, and a replica placed or restored later (a retry, a
/// recovery) runs after it closed.
pub fn open(bytes: &[u8]) -> Result<VerifiedSubmission, SubmissionError> {
    if bytes.len() > MAX_SIGNED_SUBMISSION_LEN {
        return Err(SubmissionError::TooLarge {
            len: bytes.len(),
            limit: MAX_SIGNED_SUBMISSION_LEN,
        });
    }
    let malformed = |e: RecordError| SubmissionError::Malformed(e.to_string());
    let signed = SignedRecord::decode(bytes, MAX_SIGNED_SUBMISSION_LEN).map_err(malformed)?;
    let submission: Submission =
        unarchive("submission", &signed.record_bytes).map_err(malformed)?;
    if submission.spec.len() > MAX_SPEC_LEN {
        return Err(SubmissionError::SpecTooLarge {
            len: submission.spec.len(),
            limit: MAX_SPEC_LEN,
        });
    }
    let submitter = VerifyingKey::from_bytes(&signed.public_key)
        .map(|k| SubmitterId::of(&k))
        .map_err(|_| {
            SubmissionError::Malformed("its public key is not a valid ed25519 key".into())
        })?;
    signed
        .open(JOB_DOMAIN)
        .map_err(|_| SubmissionError::BadSignature {
            submitter: submitter.to_string(),
        })?;
    Ok(VerifiedSubmission {
        id: job_id(&signed.record_bytes),
        submitter,
        submission,
    })
}

fn check_window(issued_at: u64, expires_at: u64, now: Duration) -> Result<(), SubmissionError> {
    let now = now.as_secs();
    let lifetime_s = expires_at.saturating_sub(issued_at);
    if lifetime_s == 0 || lifetime_s > MAX_SUBMISSION_LIFETIME_S {
        return Err(SubmissionError::BadLifetime {
            lifetime_s,
            limit: MAX_SUBMISSION_LIFETIME_S,
        });
    }
    if now >= expires_at {
        return Err(SubmissionError::Expired { expires_at, now });
    }
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW_S) {
        return Err(SubmissionError::FromTheFuture {
            issued_at,
            now,
            skew: MAX_CLOCK_SKEW_S,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn key(n: u8) -> NodeIdentity {
        NodeIdentity::from_seed(&[n; 32]).unwrap()
    }

    fn signed(spec: &str, nonce: u8) -> Vec<u8> {
        Submission::new(
            spec.as_bytes().to_vec(),
            [nonce; 16],
            NOW,
            Duration::from_secs(600),
        )
        .sign(&key(1))
        .unwrap()
    }

    #[test]
    fn a_signed_submission_verifies_with_its_submitter_and_a_stable_id() {
        let bytes = signed(r#"{"payload":{"guest":"builtin:hello"}}"#, 1);
        let v = verify(&bytes, NOW).unwrap();
        assert_eq!(v.submitter, SubmitterId::of(&key(1).public()));
        assert_eq!(
            v.submission.spec,
            br#"{"payload":{"guest":"builtin:hello"}}"#
        );
        assert_eq!(
            verify(&bytes, NOW).unwrap().id,
            v.id,
            "a resend has the same id"
        );
        let other = verify(&signed(r#"{"payload":{"guest":"builtin:hello"}}"#, 2), NOW).unwrap();
        assert_ne!(other.id, v.id, "another nonce, another job");
        assert_eq!(JobId::parse(&v.id.to_hex()), Some(v.id));
        let text = v.submitter.to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        assert_eq!(SubmitterId::parse(&text), Ok(v.submitter));
    }

    #[test]
    fn an_altered_spec_or_a_forged_key_fails_the_signature() {
        let bytes = signed(r#"{"payload":{"guest":"builtin:hello"},"vcpus":1}"#, 1);
        // Change the spec's vcpus from 1 to 9 in place.
        let at = bytes.windows(9).position(|w| w == b"\"vcpus\":1").unwrap() + 8;
        let mut altered = bytes.clone();
        altered[at] = b'9';
        assert!(matches!(
            verify(&altered, NOW),
            Err(SubmissionError::BadSignature { .. })
        ));
        // Another key's public key put in the envelope.
        let mut envelope = SignedRecord::decode(&bytes, MAX_SIGNED_SUBMISSION_LEN).unwrap();
        envelope.public_key = key(2).public().to_bytes();
        let e = verify(&envelope.encode().unwrap(), NOW).unwrap_err();
        assert!(matches!(e, SubmissionError::BadSignature { .. }), "{e}");
        assert!(e.to_string().contains("altered"), "{e}");
    }

    #[test]
    fn windows_are_checked_each_with_its_own_error() {
        let bytes = signed("{}", 1);
        let e = verify(&bytes, NOW + Duration::from_secs(600)).unwrap_err();
        assert!(matches!(e, SubmissionError::Expired { .. }), "{e}");
        let e = verify(&bytes, NOW - Duration::from_secs(MAX_CLOCK_SKEW_S + 1)).unwrap_err();
        assert!(matches!(e, SubmissionError::FromTheFuture { .. }), "{e}");
        let long = Submission::new(
            b"{}".to_vec(),
            [0; 16],
            NOW,
            Duration::from_secs(MAX_SUBMISSION_LIFETIME_S + 1),
        )
        .sign(&key(1))
        .unwrap();
        let e = verify(&long, NOW).unwrap_err();
        assert!(matches!(e, SubmissionError::BadLifetime { .. }), "{e}");
        // A runner opens an expired submission: the signature still holds.
        assert_eq!(open(&bytes).unwrap(), verify(&bytes, NOW).unwrap());
    }

    #[test]
    fn sizes_and_garbage_are_refused_before_any_signature_work() {
        let e = verify(&vec![0u8; MAX_SIGNED_SUBMISSION_LEN + 1], NOW).unwrap_err();
        assert!(matches!(e, SubmissionError::TooLarge { .. }), "{e}");
        let e = verify(b"not a submission", NOW).unwrap_err();
        assert!(matches!(e, SubmissionError::Malformed(_)), "{e}");
        let big = Submission::new(
            vec![b' '; MAX_SPEC_LEN + 1],
            [0; 16],
            NOW,
            Duration::from_secs(60),
        );
        assert!(matches!(
            big.sign(&key(1)),
            Err(SubmissionError::SpecTooLarge { .. })
        ));
        assert!(SubmitterId::parse("ed25519:00").is_err());
        assert!(SubmitterId::parse(&format!("ed25519:{}", "zz".repeat(32))).is_err());
    }
}
