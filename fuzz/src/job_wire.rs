//! `jobs::wire`: the job protocol's frames (`/novacron/job/1`), which any peer of the mesh
//! may send a node as a request, or answer a node's request with.
//!
//! Input: one frame body, as the job link hands it to `JobRequest::decode` (the serving
//! side) and `JobResponse::decode` (the asking side); both read every input. Invariants:
//! nothing panics; a body over `MAX_FRAME` is refused as too large, and only such a body;
//! an accepted request validates again, and keeps every bound the daemon relies on (job ids
//! are 64 lower-case hex digits, replica numbers below `MAX_REPLICA_INDEX`, a `Hold` has 1
//! to `MAX_CHECKPOINT_FILES` distinctly named files, each name one plain path component
//! `valid_file_name` accepts, ...); an accepted request or response re-encodes to a frame
//! within `MAX_FRAME` whose prefix `body_len` reads back, whose body decodes to an equal
//! value and encodes again to the same bytes, and the same message padded past `MAX_FRAME`
//! is refused. The first four bytes, read as a length prefix, pass `body_len` exactly when
//! within `MAX_FRAME`; the input as text passes `valid_file_name` only if it is one plain
//! path component; and the node's own refusal carrying the input as its reason (cut to
//! `MAX_REASON`) decodes at the other end.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Component, Path};
use std::time::Duration;

use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::submission::{verify, MAX_SIGNED_SUBMISSION_LEN};
use novacron_mesh::util::hex;
use novacron_node::jobs::signed_status::{check_answer, ReplicaStatus};
use novacron_node::jobs::spec_file::parse_spec;
use novacron_node::jobs::wire::{
    body_len, valid_file_name, CheckpointFile, JobRequest, JobResponse, ReplicaReport, WireError,
    LEN_PREFIX, MAX_CHECKPOINT_FILES, MAX_FRAME, MAX_HOLDERS, MAX_LISTED, MAX_LOG_CHUNK,
    MAX_PEER_ID_TEXT, MAX_REASON, MAX_REPLICA_INDEX,
};
use novacron_node::model::{
    Backend, JobInfo, JobState, ReplicaCheckpoint, ReplicaInfo, ReplicaState,
};

use crate::Seed;

/// Most bytes a request's encoding adds to the body it was read from: a `null` for each
/// optional field the body left out (a report's nine, a place's `restore`). Only a body
/// this close to `MAX_FRAME` may decode and then be too large to send on.
const REQUEST_SLACK: usize = 256;

/// A job's status may encode to more than the body it was read from (each replica's
/// omitted optional fields come back as `null`, under 3 times the bytes): a status body
/// over this may decode and then be too large to send on.
const STATUS_MAX_REENCODABLE: usize = MAX_FRAME / 4;

/// A list of jobs may grow more (each bare job's spec comes back with every default, a few
/// hundred bytes): a list body over this may decode and then be too large to send on.
const JOBS_MAX_REENCODABLE: usize = MAX_FRAME / 16;

/// Longest checkpoint file name (`valid_file_name`'s limit).
const MAX_FILE_NAME: usize = 64;

pub fn check(data: &[u8]) -> bool {
    check_prefix(data);
    check_name(data);
    check_own_refusal(data);
    let request = check_request(data);
    let response = check_response(data);
    request || response
}

/// `body_len` accepts a prefix exactly when it announces at most `MAX_FRAME` bytes.
fn check_prefix(data: &[u8]) {
    let Some(prefix) = data.first_chunk::<LEN_PREFIX>() else {
        return;
    };
    let announced = u32::from_le_bytes(*prefix) as usize;
    match body_len(*prefix) {
        Ok(len) => assert!(
            len == announced && len <= MAX_FRAME,
            "prefix {prefix:?} read as {len}"
        ),
        Err(e) => assert!(
            announced > MAX_FRAME && e == WireError::TooLarge { len: announced },
            "prefix {prefix:?} ({announced} bytes) refused: {e}"
        ),
    }
}

fn check_name(data: &[u8]) {
    if let Ok(name) = std::str::from_utf8(data) {
        if valid_file_name(name) {
            assert_plain_name(name);
        }
    }
}

/// What a holder needs of a file name it joins to its directory: one plain component,
/// not hidden (temp files start with a dot), short.
fn assert_plain_name(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= MAX_FILE_NAME,
        "file name {name:?}: length"
    );
    assert!(
        !name.starts_with('.') && !name.contains(['/', '\\', '\0']),
        "file name {name:?} is hidden or has a separator"
    );
    let components: Vec<_> = Path::new(name).components().collect();
    assert_eq!(
        components,
        [Component::Normal(name.as_ref())],
        "file name {name:?} is not one plain path component"
    );
    let dir = Path::new("/var/lib/novacron/held/job/0");
    assert_eq!(
        dir.join(name).parent(),
        Some(dir),
        "file name {name:?} leaves its directory"
    );
}

/// The node's refusal of a request carries a reason from outside (an error's text); cut to
/// `MAX_REASON`, it is never refused by the peer it is sent to.
fn check_own_refusal(data: &[u8]) {
    let reason = String::from_utf8_lossy(data).into_owned();
    let frame = JobResponse::refuse(reason.as_str())
        .encode()
        .unwrap_or_else(|e| panic!("a refusal does not encode: {e}"));
    let body = frame_body(&frame);
    match JobResponse::decode(body) {
        Ok(JobResponse::Refuse { reason: sent }) => {
            assert!(
                sent.len() <= MAX_REASON && reason.starts_with(&sent),
                "the refusal's reason is not a prefix of at most {MAX_REASON} bytes"
            );
            let next = reason[sent.len()..].chars().next();
            assert!(
                next.is_none_or(|c| sent.len() + c.len_utf8() > MAX_REASON),
                "the reason was cut at {} bytes, short of {MAX_REASON}",
                sent.len()
            );
        }
        other => panic!("the node's own refusal reads back as {other:?}"),
    }
}

/// How a body any decoder refused was refused: as too large exactly when it is.
fn assert_refused(data: &[u8], e: &WireError) {
    assert!(!e.to_string().is_empty(), "an error without words");
    let too_large = data.len() > MAX_FRAME;
    assert_eq!(
        matches!(e, WireError::TooLarge { .. }),
        too_large,
        "a {}-byte body refused with: {e}",
        data.len()
    );
    if too_large {
        assert_eq!(*e, WireError::TooLarge { len: data.len() });
    }
}

/// The frame's body, after checking its prefix announces it within `MAX_FRAME`.
fn frame_body(frame: &[u8]) -> &[u8] {
    let (prefix, body) = frame
        .split_first_chunk::<LEN_PREFIX>()
        .unwrap_or_else(|| panic!("a frame of {} bytes has no prefix", frame.len()));
    assert!(
        body.len() <= MAX_FRAME,
        "encoded a {}-byte body",
        body.len()
    );
    assert_eq!(
        body_len(*prefix),
        Ok(body.len()),
        "the prefix does not announce the body"
    );
    body
}

thread_local! {
    /// `MAX_FRAME + 1` spaces, to pad an accepted body past the limit.
    static PADDED: RefCell<Vec<u8>> = RefCell::new(vec![b' '; MAX_FRAME + 1]);
}

/// `decode` on `data` padded with (JSON) spaces to one byte over `MAX_FRAME`.
fn decode_padded<T>(
    data: &[u8],
    decode: fn(&[u8]) -> Result<T, WireError>,
) -> Result<T, WireError> {
    PADDED.with(|padded| {
        let mut padded = padded.borrow_mut();
        padded[..data.len()].copy_from_slice(data);
        let result = decode(&padded);
        padded[..data.len()].fill(b' ');
        result
    })
}

fn check_request(data: &[u8]) -> bool {
    let request = match JobRequest::decode(data) {
        Ok(r) => r,
        Err(e) => {
            assert_refused(data, &e);
            return false;
        }
    };
    assert!(
        data.len() <= MAX_FRAME,
        "accepted a {}-byte body",
        data.len()
    );
    assert_eq!(
        request.validate(),
        Ok(()),
        "an accepted request does not validate: {request:?}"
    );
    assert_request_bounds(&request);
    let frame = match request.encode() {
        Ok(frame) => frame,
        Err(e) => {
            assert!(
                matches!(e, WireError::TooLarge { .. }) && data.len() + REQUEST_SLACK > MAX_FRAME,
                "an accepted {}-byte request does not encode: {e}",
                data.len()
            );
            return true;
        }
    };
    let body = frame_body(&frame);
    assert!(
        body.len() <= data.len() + REQUEST_SLACK,
        "a {}-byte request encodes to {} bytes",
        data.len(),
        body.len()
    );
    let back = JobRequest::decode(body)
        .unwrap_or_else(|e| panic!("a re-encoded request is refused: {e}: {request:?}"));
    assert_eq!(back, request, "a request changed through encode/decode");
    assert_eq!(
        back.encode(),
        Ok(frame),
        "a request's encoding is not stable"
    );
    assert_eq!(
        decode_padded(data, JobRequest::decode),
        Err(WireError::TooLarge { len: MAX_FRAME + 1 }),
        "a request over the limit was not refused as too large"
    );
    true
}

fn is_job_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn assert_job_id(id: &str) {
    assert!(is_job_id(id), "accepted job id or hash {id:?}");
}

fn assert_replica(replica: u32) {
    assert!(replica < MAX_REPLICA_INDEX, "accepted replica {replica}");
}

fn assert_submission(hex: &str) {
    assert!(
        !hex.is_empty() && hex.len() <= 2 * MAX_SIGNED_SUBMISSION_LEN,
        "accepted a {}-byte submission",
        hex.len()
    );
}

fn assert_peer(peer: &str) {
    assert!(
        peer.len() <= MAX_PEER_ID_TEXT,
        "accepted a {}-byte peer id",
        peer.len()
    );
}

/// The bounds the daemon relies on, restated apart from `validate`.
fn assert_request_bounds(request: &JobRequest) {
    match request {
        JobRequest::Offer {
            job_id,
            vcpus,
            memory_mib,
            ..
        } => {
            assert_job_id(job_id);
            assert!(*vcpus > 0 && *memory_mib > 0, "an empty offer was accepted");
        }
        JobRequest::Place {
            submission,
            replica,
            ..
        } => {
            assert_submission(submission);
            assert_replica(*replica);
        }
        JobRequest::Hold {
            submission,
            replica,
            origin,
            files,
            ..
        } => {
            assert_submission(submission);
            assert_replica(*replica);
            assert!(!origin.is_empty(), "a hold without an origin");
            assert_peer(origin);
            assert_files(files);
        }
        JobRequest::Handover {
            submission,
            replica,
            vm_id,
            origin,
            console_set,
            ..
        } => {
            assert_submission(submission);
            assert_replica(*replica);
            if let Some(set) = console_set {
                assert_job_id(set);
            }
            assert!(
                !vm_id.is_empty() && vm_id.len() <= 64,
                "accepted VM id {vm_id:?}"
            );
            assert_peer(origin);
        }
        JobRequest::Report(report) => assert_report(report),
        JobRequest::Release { job_id, replica }
        | JobRequest::Cancel { job_id, replica }
        | JobRequest::Logs {
            job_id, replica, ..
        } => {
            assert_job_id(job_id);
            assert_replica(*replica);
        }
        JobRequest::Status { job_id } => assert_job_id(job_id),
        JobRequest::List { limit } => {
            assert!(
                (1..=MAX_LISTED as u32).contains(limit),
                "a list of {limit} jobs asked for"
            )
        }
    }
}

fn assert_files(files: &[CheckpointFile]) {
    assert!(
        (1..=MAX_CHECKPOINT_FILES).contains(&files.len()),
        "a hold of {} files was accepted",
        files.len()
    );
    let mut names = HashSet::new();
    for f in files {
        assert!(
            valid_file_name(&f.name),
            "a hold named file {:?} valid_file_name refuses",
            f.name
        );
        assert_plain_name(&f.name);
        assert!(names.insert(&f.name), "a hold named {:?} twice", f.name);
        assert_job_id(&f.set);
    }
}

fn assert_report(r: &ReplicaReport) {
    assert_job_id(&r.job_id);
    if let Some(signed) = &r.signed_status {
        // Opening a signature from the network never panics; what opens names a signer.
        if let Ok((_, signer)) = ReplicaStatus::open(signed) {
            assert!(!signer.is_empty());
        }
    }
    assert_replica(r.replica);
    for hash in [&r.result_hash, &r.log_set, &r.result_set]
        .into_iter()
        .flatten()
    {
        assert_job_id(hash);
    }
    assert!(
        r.detail.as_ref().is_none_or(|d| d.len() <= MAX_REASON),
        "a report's detail is over {MAX_REASON} bytes"
    );
    assert!(
        r.vm_id.as_ref().is_none_or(|v| v.len() <= 64),
        "a report's VM id is over 64 bytes"
    );
    for peer in [&r.moved_to, &r.moved_from].into_iter().flatten() {
        assert_peer(peer);
    }
    if let Some(c) = &r.checkpoint {
        assert!(
            c.holders.len() <= MAX_HOLDERS,
            "a checkpoint with {} holders",
            c.holders.len()
        );
        for h in &c.holders {
            assert_peer(h);
        }
    }
}

fn check_response(data: &[u8]) -> bool {
    let response = match JobResponse::decode(data) {
        Ok(r) => r,
        Err(e) => {
            assert_refused(data, &e);
            return false;
        }
    };
    assert!(
        data.len() <= MAX_FRAME,
        "accepted a {}-byte body",
        data.len()
    );
    let status = match &response {
        JobResponse::Refuse { reason } => {
            assert!(reason.len() <= MAX_REASON, "a {}-byte reason", reason.len());
            false
        }
        JobResponse::Logs { data, .. } => {
            assert!(
                data.len() <= 2 * MAX_LOG_CHUNK,
                "{} hex digits of logs",
                data.len()
            );
            false
        }
        JobResponse::Status { job, submission } => {
            assert_job_id(&job.id);
            // Checking an answer reads signatures and the submission: never a panic, and
            // a believed answer's spec is the submission's.
            if let Ok(shown) = check_answer(&job.id, (**job).clone(), submission.as_deref()) {
                let bytes = submission
                    .as_deref()
                    .and_then(hex::decode)
                    .expect("checked");
                let v = novacron_mesh::submission::open(&bytes).expect("checked");
                assert_eq!(v.id.to_hex(), job.id, "believed another job's submission");
                assert_eq!(shown.submitter, v.submitter.to_string());
            }
            true
        }
        JobResponse::Jobs { jobs } => {
            assert!(jobs.len() <= MAX_LISTED, "a list of {} jobs", jobs.len());
            jobs.iter().for_each(|j| assert_job_id(&j.id));
            true
        }
        _ => false,
    };
    let reencodable = match &response {
        JobResponse::Jobs { .. } => JOBS_MAX_REENCODABLE,
        _ => STATUS_MAX_REENCODABLE,
    };
    let frame = match response.encode() {
        Ok(frame) => frame,
        Err(e) => {
            assert!(
                status && matches!(e, WireError::TooLarge { .. }) && data.len() > reencodable,
                "an accepted {}-byte response does not encode: {e}",
                data.len()
            );
            return true;
        }
    };
    let body = frame_body(&frame);
    // Every field of a response but a job's status is required: nothing comes back longer.
    assert!(
        status || body.len() <= data.len(),
        "a {}-byte response encodes to {} bytes",
        data.len(),
        body.len()
    );
    let back = JobResponse::decode(body)
        .unwrap_or_else(|e| panic!("a re-encoded response is refused: {e}: {response:?}"));
    assert_eq!(back, response, "a response changed through encode/decode");
    assert_eq!(
        back.encode(),
        Ok(frame),
        "a response's encoding is not stable"
    );
    assert_eq!(
        decode_padded(data, JobResponse::decode),
        Err(WireError::TooLarge { len: MAX_FRAME + 1 }),
        "a response over the limit was not refused as too large"
    );
    true
}

const ORIGIN: &str = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";
const RUNNER: &str = "12D3KooWHhBvQbMi6QBnY7GAL2HQcCzDfPBbJkWwKgi7WUuEaxrw";
const HOLDER: &str = "12D3KooWLRPJAA5o6Z6KhshGX8ubTqAzeLZ9kZzkN5iyATrLGdUv";
const VM_ID: &str = "3f9a0c51d2e84b7a";

/// One body: a message's frame without its length prefix.
fn body(frame: Result<Vec<u8>, WireError>) -> Vec<u8> {
    let mut frame = frame.unwrap_or_else(|e| panic!("seed message does not encode: {e}"));
    frame.drain(..LEN_PREFIX);
    frame
}

fn set_of(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex().to_string()
}

/// The signed submission of the `submission` target's first seed, in hex; its job id; and
/// the job as a node that knows it would report it.
fn job() -> (String, String, JobInfo) {
    let (_, signed) = crate::submission::seeds().swap_remove(0);
    let now = Duration::from_secs(crate::submission::NOW);
    let v = verify(&signed, now).expect("seed submission verifies");
    let spec = parse_spec("signed.json", &v.submission.spec).expect("seed spec");
    let id = v.id.to_hex();
    let now_ms = crate::submission::NOW * 1000;
    let finisher = NodeIdentity::from_seed(&[7; 32]).expect("a seed identity");
    let info = JobInfo {
        id: id.clone(),
        spec,
        submitter: v.submitter.to_string(),
        state: JobState::Running,
        detail: None,
        origin: ORIGIN.into(),
        replicas: vec![
            ReplicaInfo {
                index: 0,
                state: ReplicaState::Running,
                node: Some(RUNNER.into()),
                generation: 2,
                vm_id: Some(VM_ID.into()),
                result_hash: None,
                log_set: None,
                result_set: None,
                detail: None,
                updated_at_ms: now_ms,
                moved_from: None,
                checkpoint: Some(checkpoint(now_ms)),
                restored_from: Some(3),
                signed_status: None,
            },
            ReplicaInfo {
                index: 1,
                state: ReplicaState::Finished,
                node: Some(finisher.peer_id().to_string()),
                generation: 1,
                vm_id: Some("0c1d2e3f4a5b6c7d".into()),
                result_hash: Some(set_of("result")),
                log_set: Some(set_of("log")),
                result_set: None,
                detail: Some("exited 0".into()),
                updated_at_ms: now_ms,
                moved_from: Some(ORIGIN.into()),
                checkpoint: None,
                restored_from: None,
                signed_status: None,
            },
        ],
        result_hash: None,
        retries: 0,
        submitted_at_ms: now_ms - 60_000,
        updated_at_ms: now_ms,
    };
    // The finished replica's result is its node's signed word, as an origin shows it.
    let mut info = info;
    let r = info.replicas[1].clone();
    info.replicas[1].signed_status =
        Some(ReplicaStatus::of_replica(&id, &r, now_ms).sign(&finisher));
    (hex::encode(&signed), id, info)
}

/// A checkpoint held by two peers. Read from JSON rather than built field by field, so a
/// field added to it with a default does not break this crate's build (it changes the
/// seeds: `cargo run --example make_seeds`).
fn checkpoint(now_ms: u64) -> ReplicaCheckpoint {
    let json = format!(
        r#"{{"seq":4,"holders":["{HOLDER}","{ORIGIN}"],"bytes":{},"pushed_bytes":{},"push_ms":140,"taken_at_ms":{}}}"#,
        9 << 20,
        3 << 20,
        now_ms - 5_000
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("seed checkpoint: {e}"))
}

/// Requests of every kind and responses of every kind, as bodies.
pub fn seeds() -> Vec<Seed> {
    let (submission, job_id, info) = job();
    let files = [
        "MANIFEST",
        "state-00000000000000000004.ncs",
        "layer-00000000000000000001.ncl",
        "layer-00000000000000000004.ncl",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, name)| CheckpointFile {
        name: name.into(),
        set: set_of(name),
        bytes: if i < 2 { 4096 << i } else { 4 << 20 },
    })
    .collect();
    let requests = [
        (
            "request_offer",
            JobRequest::Offer {
                job_id: job_id.clone(),
                backend: Backend::Kvm,
                vcpus: 1,
                memory_mib: 64,
            },
        ),
        (
            "request_place",
            JobRequest::Place {
                submission: submission.clone(),
                replica: 0,
                generation: 1,
                restore: None,
            },
        ),
        (
            "request_place_restore",
            JobRequest::Place {
                submission: submission.clone(),
                replica: 0,
                generation: 2,
                restore: Some(4),
            },
        ),
        (
            "request_hold",
            JobRequest::Hold {
                submission: submission.clone(),
                replica: 0,
                generation: 1,
                origin: ORIGIN.into(),
                seq: 4,
                files,
            },
        ),
        (
            "request_release",
            JobRequest::Release {
                job_id: job_id.clone(),
                replica: 0,
            },
        ),
        (
            "request_report_checkpoint",
            JobRequest::Report(ReplicaReport {
                job_id: job_id.clone(),
                replica: 0,
                generation: 2,
                state: ReplicaState::Running,
                vm_id: Some(VM_ID.into()),
                result_hash: None,
                log_set: None,
                result_set: None,
                detail: Some("restored from checkpoint 3".into()),
                moved_to: None,
                moved_from: None,
                checkpoint: Some(Box::new(checkpoint(crate::submission::NOW * 1000))),
                restored_from: Some(3),
                signed_status: None,
            }),
        ),
        (
            "request_cancel",
            JobRequest::Cancel {
                job_id: job_id.clone(),
                replica: 1,
            },
        ),
        (
            "request_status",
            JobRequest::Status {
                job_id: job_id.clone(),
            },
        ),
        ("request_list", JobRequest::List { limit: 50 }),
        (
            "request_logs",
            JobRequest::Logs {
                job_id: job_id.clone(),
                replica: 0,
                offset: 4096,
            },
        ),
        (
            "request_handover",
            JobRequest::Handover {
                submission: submission.clone(),
                replica: 0,
                generation: 1,
                vm_id: VM_ID.into(),
                origin: ORIGIN.into(),
                console_set: Some(set_of("console")),
            },
        ),
    ];
    let responses = [
        (
            "response_offer",
            JobResponse::Offer {
                free_vcpus: 6,
                free_memory_mib: 12_288,
                free_slots: 3,
                load_permille: 250,
            },
        ),
        (
            "response_admitted",
            JobResponse::Admitted {
                vm_id: VM_ID.into(),
            },
        ),
        (
            "response_held",
            JobResponse::Held {
                fetched_bytes: 3 << 20,
                ms: 140,
            },
        ),
        ("response_ack", JobResponse::Ack),
        (
            "response_jobs",
            JobResponse::Jobs {
                jobs: vec![info.clone()],
            },
        ),
        (
            "response_status",
            JobResponse::Status {
                job: Box::new(info),
                submission: Some(submission.clone()),
            },
        ),
        (
            "response_logs",
            JobResponse::Logs {
                data: hex::encode(b"pass 1 of 4\npass 2 of 4\n"),
                next_offset: 4120,
                finished: false,
            },
        ),
        ("response_not_found", JobResponse::NotFound),
        (
            "response_refuse",
            JobResponse::refuse("stale: this node holds generation 2 of replica 0"),
        ),
    ];
    requests
        .into_iter()
        .map(|(name, r)| (name, body(r.encode())))
        .chain(
            responses
                .into_iter()
                .map(|(name, r)| (name, body(r.encode()))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        seeds()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no seed {name}"))
            .1
    }

    /// The message's `type` tag.
    fn tag(body: &[u8]) -> String {
        let text = std::str::from_utf8(body).unwrap();
        let at = text.find(r#""type":""#).unwrap() + r#""type":""#.len();
        text[at..].split('"').next().unwrap().to_string()
    }

    #[test]
    fn the_seeds_cover_every_request_and_response() {
        let mut requests = HashSet::new();
        let mut responses = HashSet::new();
        for (name, body) in seeds() {
            if name.starts_with("request_") {
                let r = JobRequest::decode(&body).unwrap();
                if let JobRequest::Place { restore, .. } = r {
                    requests.insert(format!("place restore={}", restore.is_some()));
                }
                requests.insert(tag(&body));
                assert!(JobResponse::decode(&body).is_err(), "{name}");
            } else {
                JobResponse::decode(&body).unwrap();
                responses.insert(tag(&body));
                assert!(JobRequest::decode(&body).is_err(), "{name}");
            }
        }
        for t in [
            "offer",
            "place",
            "place restore=true",
            "place restore=false",
            "hold",
            "release",
            "report",
            "cancel",
            "status",
            "list",
            "logs",
            "handover",
        ] {
            assert!(requests.contains(t), "no {t} request seed");
        }
        for t in [
            "offer",
            "admitted",
            "held",
            "ack",
            "status",
            "jobs",
            "logs",
            "not_found",
            "refuse",
        ] {
            assert!(responses.contains(t), "no {t} response seed");
        }
    }

    #[test]
    fn a_message_padded_to_the_limit_is_read_and_one_byte_more_is_refused() {
        for name in ["request_hold", "response_status"] {
            let mut body = seed(name);
            body.resize(MAX_FRAME, b' ');
            assert!(check(&body), "{name} padded to the limit");
            body.push(b' ');
            assert!(!check(&body), "{name} over the limit");
            assert_eq!(
                JobRequest::decode(&body).unwrap_err(),
                WireError::TooLarge { len: MAX_FRAME + 1 }
            );
        }
        assert_eq!(body_len((MAX_FRAME as u32).to_le_bytes()), Ok(MAX_FRAME));
        for len in [MAX_FRAME as u32 + 1, u32::MAX] {
            assert_eq!(
                body_len(len.to_le_bytes()),
                Err(WireError::TooLarge { len: len as usize })
            );
        }
    }

    #[test]
    fn a_status_of_bare_replicas_grows_but_re_encodes_up_to_its_bound() {
        let replica = r#"{"index":0,"state":"lost","generation":0,"updated_at_ms":0}"#;
        let head = format!(
            r#"{{"type":"status","job":{{"id":"{}","spec":{{"payload":{{"guest":"builtin:hello"}}}},"submitter":"s","state":"running","origin":"o","retries":0,"submitted_at_ms":0,"updated_at_ms":0,"replicas":["#,
            "ab".repeat(32)
        );
        let n = (STATUS_MAX_REENCODABLE - head.len() - 3) / (replica.len() + 1);
        let body = format!("{head}{}]}}}}", vec![replica; n].join(","));
        assert!(body.len() <= STATUS_MAX_REENCODABLE);
        assert!(check(body.as_bytes()));
        let frame = JobResponse::decode(body.as_bytes())
            .unwrap()
            .encode()
            .unwrap();
        assert!(
            frame.len() > 2 * body.len() && frame.len() < 3 * body.len(),
            "{} bytes encode to {}",
            body.len(),
            frame.len()
        );
    }

    #[test]
    fn a_list_of_bare_jobs_grows_but_re_encodes_up_to_its_bound() {
        let job = format!(
            r#"{{"id":"{}","spec":{{"payload":{{}}}},"submitter":"","state":"running","origin":"","retries":0,"submitted_at_ms":0,"updated_at_ms":0,"replicas":[]}}"#,
            "ab".repeat(32)
        );
        let body = format!(
            r#"{{"type":"jobs","jobs":[{}]}}"#,
            vec![job.as_str(); MAX_LISTED].join(",")
        );
        assert!(body.len() <= JOBS_MAX_REENCODABLE, "{}", body.len());
        assert!(check(body.as_bytes()));
        let frame = JobResponse::decode(body.as_bytes())
            .unwrap()
            .encode()
            .unwrap();
        assert!(
            frame.len() > body.len(),
            "{} bytes encode to {}",
            body.len(),
            frame.len()
        );
        let one_more = format!(
            r#"{{"type":"jobs","jobs":[{}]}}"#,
            vec![job.as_str(); MAX_LISTED + 1].join(",")
        );
        assert!(!check(one_more.as_bytes()));
    }

    #[test]
    fn holds_naming_files_outside_the_directory_are_refused() {
        let hold = String::from_utf8(seed("request_hold")).unwrap();
        assert!(hold.contains("\"MANIFEST\""));
        for bad in ["../MANIFEST", "/etc/passwd", ".tmp", "a/b", ".."] {
            let body = hold.replacen("\"MANIFEST\"", &format!("{bad:?}"), 1);
            assert!(!check(body.as_bytes()), "{bad}");
        }
    }
}
