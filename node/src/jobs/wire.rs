//! The job protocol's messages (`/novacron/job/1`): one request and one response per
//! stream, each a frame of a 4-byte little-endian length and that much JSON, at most
//! [`MAX_FRAME`] bytes. Pure: bytes in, values out; every bound is checked here, before
//! the daemon looks at a message (fuzzed: `fuzz/`, target `job_wire`).
//!
//! ```text
//! origin -> candidate   Offer { job, size }             <- Offer { free ... } | Refuse
//! origin -> candidate   Place { submission, replica }   <- Admitted { vm } | Refuse
//! runner -> origin      Report { job, replica, state }  <- Ack | Refuse
//! anyone -> holder      Status { job }                  <- Status { job, submission } | NotFound
//! anyone -> runner      Logs { job, replica, offset }   <- Logs { bytes } | NotFound
//! cell peer -> origin   List { limit }                  <- Jobs { newest first }
//! origin -> runner      Cancel { job, replica }         <- Ack | NotFound
//! runner -> runner      Handover { submission, replica, vm, console }  <- Ack | Refuse
//! runner -> holder      Hold { submission, replica, checkpoint files }  <- Ack | Refuse
//! origin -> holder      Place { ..., restore: seq }     <- Admitted { vm } | Refuse
//! origin|runner -> holder  Release { job, replica }     <- Ack | NotFound
//! ```
//!
//! `Hold` asks a peer to keep a replica's latest checkpoint (its files as chunk sets, which
//! the holder fetches from the mesh); a `Place` with `restore` asks a holder to run the
//! replica from that checkpoint when the replica's node died.
//!
//! `Handover` follows a replica's VM that moved to another node (politeness, drain): the
//! node it left tells the node it reached which job the VM runs, and both tell the origin
//! (`moved_to` from the one, `moved_from` from the other), in whichever order they arrive.
//!
//! The stream is authenticated by the mesh (noise): the receiver knows which peer sent a
//! request, and a report is believed only from the node the origin placed the replica on.

use serde::{Deserialize, Serialize};

use crate::model::{Backend, JobInfo, ReplicaCheckpoint, ReplicaState, MAX_REPLICAS};

/// Largest frame body: a signed submission (up to 25 KiB) in hex, or a job with its spec.
pub const MAX_FRAME: usize = 256 << 10;
pub const LEN_PREFIX: usize = 4;
/// Most serial output bytes one `Logs` answer carries.
pub const MAX_LOG_CHUNK: usize = 64 << 10;
/// Longest reason or detail sent (longer ones are cut at a character).
pub const MAX_REASON: usize = 1024;
/// Most jobs one `List` answer holds.
pub const MAX_LISTED: usize = 50;
/// The bytes of jobs a `List` answer fills at most (the rest of a frame is the envelope).
pub const LIST_BUDGET: usize = MAX_FRAME - 4096;

/// The first of `jobs` that fit in one `Jobs` answer: at most `limit` (and [`MAX_LISTED`]),
/// and at most [`LIST_BUDGET`] bytes of JSON.
pub fn fit_listed(jobs: impl IntoIterator<Item = JobInfo>, limit: u32) -> Vec<JobInfo> {
    let mut used = 0;
    let mut out = Vec::new();
    for job in jobs.into_iter().take((limit as usize).min(MAX_LISTED)) {
        // A JobInfo is plain data: serde_json cannot fail on it.
        let len = serde_json::to_vec(&job).map_or(usize::MAX, |b| b.len() + 1);
        if used + len > LIST_BUDGET {
            break;
        }
        used += len;
        out.push(job);
    }
    out
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobRequest {
    /// Would the node take a replica of this size now?
    Offer {
        job_id: String,
        backend: Backend,
        vcpus: u8,
        memory_mib: u64,
    },
    /// Run replica `replica` at `generation` of the signed submission (hex); report to the
    /// sender, the job's origin.
    Place {
        submission: String,
        replica: u32,
        generation: u64,
        /// Restore it from the checkpoint the receiver holds for it (this number or a
        /// later one) instead of starting it from the beginning.
        #[serde(default)]
        restore: Option<u64>,
    },
    /// Keep replica `replica`'s checkpoint `seq` of the signed submission (hex) until the
    /// job ends: fetch the chunk sets of its files; the replica runs at `generation` on the
    /// sender, and `origin` places it.
    Hold {
        submission: String,
        replica: u32,
        generation: u64,
        origin: String,
        seq: u64,
        files: Vec<CheckpointFile>,
    },
    /// Drop the checkpoint held for replica `replica` of `job_id`.
    Release { job_id: String, replica: u32 },
    /// A replica's node tells the job's origin where the replica is.
    Report(ReplicaReport),
    /// Stop a replica (the job was cancelled or decided).
    Cancel { job_id: String, replica: u32 },
    /// What the node knows of a job.
    Status { job_id: String },
    /// Serial output of a replica the node runs or ran, from `offset`.
    Logs {
        job_id: String,
        replica: u32,
        offset: u64,
    },
    /// The jobs submitted through the receiver, newest first: at most `limit` (and at most
    /// [`MAX_LISTED`]), fewer if they would not fit in a frame.
    List { limit: u32 },
    /// The replica's VM `vm_id` moved to the receiver: it runs the replica from now on and
    /// reports to `origin`.
    Handover {
        submission: String,
        replica: u32,
        generation: u64,
        vm_id: String,
        origin: String,
        /// The chunk set (served by the sender) of what the VM printed before it moved:
        /// the receiver's output of the replica starts with it.
        #[serde(default)]
        console_set: Option<String>,
    },
}

/// Where a replica is, as its node reports it to the origin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    pub job_id: String,
    pub replica: u32,
    pub generation: u64,
    pub state: ReplicaState,
    pub vm_id: Option<String>,
    pub result_hash: Option<String>,
    pub log_set: Option<String>,
    pub result_set: Option<String>,
    pub detail: Option<String>,
    /// The replica's VM moved to this peer (sent by the node it left).
    #[serde(default)]
    pub moved_to: Option<String>,
    /// The replica's VM came from this peer (sent by the node it reached).
    #[serde(default)]
    pub moved_from: Option<String>,
    /// Its latest checkpoint held by peers.
    #[serde(default)]
    pub checkpoint: Option<Box<ReplicaCheckpoint>>,
    /// The checkpoint this generation was restored from.
    #[serde(default)]
    pub restored_from: Option<u64>,
    /// The state and result above, signed by the reporting node
    /// (`jobs::signed_status::ReplicaStatus`, hex).
    #[serde(default)]
    pub signed_status: Option<String>,
}

/// One file of a checkpoint (the snapshot directory's `MANIFEST`, state or a memory layer)
/// as a chunk set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    pub name: String,
    /// The chunk set's id (64 hex digits).
    pub set: String,
    pub bytes: u64,
}

/// Most files in one checkpoint (a manifest, a state file and a chain of layers).
pub const MAX_CHECKPOINT_FILES: usize = 64;
/// Most holders a checkpoint lists.
pub const MAX_HOLDERS: usize = 8;
/// Largest checkpoint file name.
const MAX_FILE_NAME: usize = 64;

/// Whether `name` is a plain file name a holder may create: letters, digits, `-`, `_`,
/// `.`, not starting with a dot, at most [`MAX_FILE_NAME`] bytes.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_files(files: &[CheckpointFile]) -> Result<(), WireError> {
    if files.is_empty() || files.len() > MAX_CHECKPOINT_FILES {
        return Err(field("files", "a checkpoint has 1 to 64 files"));
    }
    for (i, f) in files.iter().enumerate() {
        if !valid_file_name(&f.name) || files[..i].iter().any(|o| o.name == f.name) {
            return Err(field("files", "file names are plain, short and distinct"));
        }
        if !valid_hex_id(&Some(f.set.clone())) {
            return Err(field("files", "chunk sets are 64 hex digits"));
        }
    }
    Ok(())
}

fn check_checkpoint(c: &Option<Box<ReplicaCheckpoint>>) -> Result<(), WireError> {
    let Some(c) = c else {
        return Ok(());
    };
    if c.holders.len() > MAX_HOLDERS || c.holders.iter().any(|h| h.len() > MAX_PEER_ID_TEXT) {
        return Err(field("checkpoint", "at most 8 holders, each a peer id"));
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobResponse {
    Offer {
        free_vcpus: u32,
        free_memory_mib: u64,
        free_slots: u32,
        load_permille: u16,
    },
    Admitted {
        vm_id: String,
    },
    /// A `Hold` done: the checkpoint is on the holder's disk; it fetched this many bytes
    /// (on the wire) for it, in `ms`.
    Held {
        fetched_bytes: u64,
        ms: u64,
    },
    Ack,
    Status {
        job: Box<JobInfo>,
        /// The job's signed submission (hex): what the asker checks the job against.
        #[serde(default)]
        submission: Option<String>,
    },
    /// An answer to `List`.
    Jobs {
        jobs: Vec<JobInfo>,
    },
    Logs {
        /// Hex of the bytes from the asked offset.
        data: String,
        next_offset: u64,
        /// The replica ended: no more output will come.
        finished: bool,
    },
    NotFound,
    Refuse {
        reason: String,
    },
}

/// Why bytes are not a valid frame or message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME} bytes")]
    TooLarge { len: usize },
    #[error("frame is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("{field}: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

fn field(field: &'static str, reason: &'static str) -> WireError {
    WireError::Field { field, reason }
}

/// A job id is 64 lower-case hex digits (blake3 of the signed submission).
pub fn valid_job_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_hex_id(id: &Option<String>) -> bool {
    id.as_deref().is_none_or(valid_job_id)
}

fn short(text: &Option<String>) -> bool {
    text.as_deref().is_none_or(|t| t.len() <= MAX_REASON)
}

impl JobRequest {
    /// Checks every bound (ids, replica numbers, lengths).
    pub fn validate(&self) -> Result<(), WireError> {
        let (job_id, replica) = match self {
            JobRequest::Offer {
                job_id,
                vcpus,
                memory_mib,
                ..
            } => {
                if *vcpus == 0 || *memory_mib == 0 {
                    return Err(field("vcpus", "ask for at least one vCPU and some memory"));
                }
                (job_id, None)
            }
            JobRequest::Handover {
                submission,
                replica,
                vm_id,
                origin,
                console_set,
                ..
            } => {
                check_submission(submission)?;
                if vm_id.is_empty() || vm_id.len() > 64 || origin.len() > MAX_PEER_ID_TEXT {
                    return Err(field("vm_id", "a VM id and an origin peer id"));
                }
                if !valid_hex_id(console_set) {
                    return Err(field("console_set", "a chunk set is 64 hex digits"));
                }
                return check_replica(*replica);
            }
            JobRequest::Place {
                submission,
                replica,
                ..
            } => {
                check_submission(submission)?;
                return check_replica(*replica);
            }
            JobRequest::Hold {
                submission,
                replica,
                origin,
                files,
                ..
            } => {
                check_submission(submission)?;
                if origin.is_empty() || origin.len() > MAX_PEER_ID_TEXT {
                    return Err(field("origin", "not a peer id"));
                }
                check_files(files)?;
                return check_replica(*replica);
            }
            JobRequest::Report(r) => {
                if !valid_hex_id(&r.result_hash)
                    || !valid_hex_id(&r.log_set)
                    || !valid_hex_id(&r.result_set)
                {
                    return Err(field("result", "hashes and chunk sets are 64 hex digits"));
                }
                if !short(&r.detail) || r.vm_id.as_ref().is_some_and(|v| v.len() > 64) {
                    return Err(field("detail", "too long"));
                }
                if [&r.moved_to, &r.moved_from]
                    .iter()
                    .any(|p| p.as_ref().is_some_and(|p| p.len() > MAX_PEER_ID_TEXT))
                {
                    return Err(field("moved_to", "not a peer id"));
                }
                check_checkpoint(&r.checkpoint)?;
                check_signed_status(&r.signed_status)?;
                (&r.job_id, Some(r.replica))
            }
            JobRequest::Cancel { job_id, replica }
            | JobRequest::Release { job_id, replica }
            | JobRequest::Logs {
                job_id, replica, ..
            } => (job_id, Some(*replica)),
            JobRequest::Status { job_id } => (job_id, None),
            JobRequest::List { limit } => {
                if *limit == 0 || *limit as usize > MAX_LISTED {
                    return Err(field("limit", "ask for 1 to 50 jobs"));
                }
                return Ok(());
            }
        };
        if !valid_job_id(job_id) {
            return Err(field("job_id", "a job id is 64 lower-case hex digits"));
        }
        replica.map_or(Ok(()), check_replica)
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_json(self)
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let r: JobRequest = decode_json(body)?;
        r.validate()?;
        Ok(r)
    }
}

fn check_submission(hex: &str) -> Result<(), WireError> {
    if hex.is_empty() || hex.len() > 2 * novacron_mesh::submission::MAX_SIGNED_SUBMISSION_LEN {
        return Err(field("submission", "empty or over the size limit"));
    }
    Ok(())
}

/// Largest signed replica status (its envelope's bytes; `jobs::signed_status`).
pub const MAX_SIGNED_STATUS: usize = 2048;

fn check_signed_status(signed: &Option<String>) -> Result<(), WireError> {
    let max = 2 * MAX_SIGNED_STATUS;
    if signed
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > max)
    {
        return Err(field("signed_status", "empty or over the size limit"));
    }
    Ok(())
}

/// Longest peer id in text (an ed25519 PeerId is 52 characters).
pub const MAX_PEER_ID_TEXT: usize = 128;

/// Replicas are numbered from 0; retries add new numbers, up to this many in all.
pub const MAX_REPLICA_INDEX: u32 = MAX_REPLICAS as u32 * 8;

fn check_replica(replica: u32) -> Result<(), WireError> {
    if replica >= MAX_REPLICA_INDEX {
        return Err(field("replica", "beyond the most replicas a job can have"));
    }
    Ok(())
}

impl JobResponse {
    pub fn refuse(reason: impl Into<String>) -> JobResponse {
        JobResponse::Refuse {
            reason: cut(reason.into()),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_json(self)
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let r: JobResponse = decode_json(body)?;
        match &r {
            JobResponse::Refuse { reason } if reason.len() > MAX_REASON => {
                Err(field("reason", "too long"))
            }
            JobResponse::Logs { data, .. } if data.len() > 2 * MAX_LOG_CHUNK => {
                Err(field("data", "more than one log chunk"))
            }
            JobResponse::Status { job, .. } if !valid_job_id(&job.id) => {
                Err(field("job.id", "a job id is 64 lower-case hex digits"))
            }
            JobResponse::Status {
                submission: Some(s),
                ..
            } if check_submission(s).is_err() => {
                Err(field("submission", "empty or over the size limit"))
            }
            JobResponse::Status { job, .. }
                if job
                    .replicas
                    .iter()
                    .any(|r| check_signed_status(&r.signed_status).is_err()) =>
            {
                Err(field("signed_status", "over the size limit"))
            }
            JobResponse::Jobs { jobs } if jobs.len() > MAX_LISTED => {
                Err(field("jobs", "more than 50 jobs"))
            }
            JobResponse::Jobs { jobs } if jobs.iter().any(|j| !valid_job_id(&j.id)) => {
                Err(field("jobs.id", "a job id is 64 lower-case hex digits"))
            }
            _ => Ok(r),
        }
    }
}

/// `text` cut to [`MAX_REASON`] bytes at a character boundary.
pub fn cut(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut at = MAX_REASON;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// The body length a prefix announces, if within the limit.
pub fn body_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge { len });
    }
    Ok(len)
}

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let body = serde_json::to_vec(value).map_err(|e| WireError::Json(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(LEN_PREFIX + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge { len: body.len() });
    }
    serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let reqs = [
            JobRequest::Offer {
                job_id: id(),
                backend: Backend::Kvm,
                vcpus: 1,
                memory_mib: 64,
            },
            JobRequest::Place {
                submission: "00ff".into(),
                replica: 1,
                generation: 2,
                restore: Some(7),
            },
            JobRequest::Hold {
                submission: "00ff".into(),
                replica: 0,
                generation: 1,
                origin: "12D3KooWorigin".into(),
                seq: 3,
                files: vec![CheckpointFile {
                    name: "layer-3.ncl".into(),
                    set: id(),
                    bytes: 4096,
                }],
            },
            JobRequest::Release {
                job_id: id(),
                replica: 0,
            },
            JobRequest::Report(ReplicaReport {
                job_id: id(),
                replica: 0,
                generation: 1,
                state: ReplicaState::Finished,
                vm_id: Some("0123".into()),
                result_hash: Some(id()),
                log_set: Some(id()),
                result_set: None,
                detail: None,
                moved_to: None,
                moved_from: Some("12D3KooWpeer".into()),
                checkpoint: Some(Box::new(ReplicaCheckpoint {
                    seq: 3,
                    holders: vec!["12D3KooWholder".into()],
                    bytes: 1 << 20,
                    pushed_bytes: 1 << 19,
                    push_ms: 12,
                    publish_ms: 5,
                    taken_at_ms: 1,
                })),
                restored_from: Some(2),
                signed_status: Some("00".into()),
            }),
            JobRequest::Handover {
                submission: "00ff".into(),
                replica: 0,
                generation: 1,
                vm_id: "0123".into(),
                origin: "12D3KooWorigin".into(),
                console_set: Some(id()),
            },
            JobRequest::Cancel {
                job_id: id(),
                replica: 0,
            },
            JobRequest::Status { job_id: id() },
            JobRequest::List { limit: 50 },
            JobRequest::Logs {
                job_id: id(),
                replica: 0,
                offset: 10,
            },
        ];
        for r in reqs {
            let frame = r.encode().unwrap();
            assert_eq!(JobRequest::decode(&frame[LEN_PREFIX..]).unwrap(), r);
        }
        let resp = JobResponse::refuse("x".repeat(5000));
        let frame = resp.encode().unwrap();
        match JobResponse::decode(&frame[LEN_PREFIX..]).unwrap() {
            JobResponse::Refuse { reason } => assert_eq!(reason.len(), MAX_REASON),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, what) in [
            (r#"{"type":"status","job_id":"xyz"}"#, "job_id"),
            (
                r#"{"type":"cancel","job_id":"ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB","replica":0}"#,
                "job_id",
            ),
            (
                &format!(
                    r#"{{"type":"logs","job_id":"{}","replica":99999,"offset":0}}"#,
                    id()
                ),
                "replica",
            ),
            (
                r#"{"type":"place","submission":"","replica":0,"generation":0}"#,
                "submission",
            ),
            (r#"{"type":"status","job_id":"x","extra":1}"#, "extra"),
            (r#"{"type":"list","limit":0}"#, "limit"),
            (r#"{"type":"list","limit":51}"#, "limit"),
            (&hold("../MANIFEST", &id()), "files"),
            (&hold(".hidden", &id()), "files"),
            (&hold("layer-1.ncl", "zz"), "files"),
            (
                r#"{"type":"hold","submission":"00","replica":0,"generation":1,"origin":"o","seq":1,"files":[]}"#,
                "files",
            ),
        ] {
            let e = JobRequest::decode(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(what), "{json}: {e}");
        }
        assert!(body_len((MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
    }

    fn hold(name: &str, set: &str) -> String {
        format!(
            r#"{{"type":"hold","submission":"00","replica":0,"generation":1,"origin":"o","seq":1,"files":[{{"name":"{name}","set":"{set}","bytes":1}}]}}"#
        )
    }

    #[test]
    fn a_list_answer_fits_in_a_frame_and_is_checked() {
        let job = |i: u8, args: usize| {
            let mut j = crate::model::fixtures::job_info(&format!("{i:02x}").repeat(32));
            j.spec.arguments = vec!["x".repeat(4000); args];
            j
        };
        // Small jobs: the limit decides.
        let small: Vec<JobInfo> = (0..60).map(|i| job(i, 0)).collect();
        assert_eq!(fit_listed(small.clone(), 5).len(), 5);
        assert_eq!(fit_listed(small, 500).len(), MAX_LISTED);
        // Large ones (4 MB of arguments each at most): the frame decides, and it encodes.
        let large: Vec<JobInfo> = (0..20).map(|i| job(i, 20)).collect();
        let fitted = fit_listed(large, 50);
        assert!(!fitted.is_empty() && fitted.len() < 20, "{}", fitted.len());
        let frame = JobResponse::Jobs {
            jobs: fitted.clone(),
        }
        .encode()
        .unwrap();
        match JobResponse::decode(&frame[LEN_PREFIX..]).unwrap() {
            JobResponse::Jobs { jobs } => assert_eq!(jobs, fitted),
            other => panic!("{other:?}"),
        }
        let mut bad = job(1, 0);
        bad.id = "xyz".into();
        let body = serde_json::to_vec(&JobResponse::Jobs { jobs: vec![bad] }).unwrap();
        assert!(JobResponse::decode(&body)
            .unwrap_err()
            .to_string()
            .contains("jobs.id"));
    }

    #[test]
    fn checkpoint_file_names_are_plain() {
        for ok in ["MANIFEST", "layer-12.ncl", "state-3.ncs"] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/etc", ".tmp", &"a".repeat(65), "é"] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = JobRequest::decode(&bytes);
            let _ = JobResponse::decode(&bytes);
        }
    }
}
