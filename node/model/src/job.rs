//! A job: work someone submitted to the mesh (its spec, signed by the submitter), where it
//! is in its life, and its replicas (one VM each, on distinct nodes).
//!
//! The spec is what a submitter writes (YAML or JSON, camelCase like the node config;
//! unknown keys are refused with the key named). [`JobSpec::validate`] checks every field
//! against its bounds without touching the file system; the node that runs a replica checks
//! what only it can (a kernel path inside its image directories, a chunk set it can fetch).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::vm::{
    check_payload_files, is_chunk_set_id, Backend, MigrationMode, PayloadFile, CHUNK_SET_ID_HEX,
};

/// Bounds of a spec's fields.
pub const MAX_JOB_NAME_CHARS: usize = 64;
pub const MAX_JOB_VCPUS: u8 = 32;
pub const MIN_JOB_MEMORY_MIB: u64 = 4;
pub const MAX_JOB_MEMORY_MIB: u64 = 1 << 20;
pub const MAX_JOB_ARGS: usize = 256;
pub const MAX_JOB_ARG_BYTES: usize = 4096;
pub const MAX_REPLICAS: u8 = 16;
/// Longest run a spec may ask for: a week.
pub const MAX_RUNTIME_S: u64 = 7 * 24 * 3600;
pub const DEFAULT_MAX_RUNTIME_S: u64 = 3600;
pub const CHECKPOINT_INTERVAL_S: std::ops::RangeInclusive<u64> = 5..=86_400;
pub const MAX_PRIORITY: u8 = 9;
pub const DEFAULT_PRIORITY: u8 = 5;
pub const MAX_DOWNTIME_BUDGET_MS: u64 = 60_000;
pub const DEFAULT_DOWNTIME_BUDGET_MS: u64 = 300;
/// Largest result blob a guest may leave (the serial output has its own bound).
pub const MAX_RESULT_BLOB_BYTES: u64 = 64 << 20;
/// Largest serial output kept as a job's log and result.
pub const MAX_SERIAL_BYTES: u64 = 16 << 20;

/// What a job runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people (1-64 printable characters).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub backend: Backend,
    pub payload: JobPayload,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Appended to the payload: a builtin guest's `key=value` parameters, a kernel's command
    /// line, a command's arguments.
    #[serde(default)]
    pub arguments: Vec<String>,
    /// The job fails when a replica has run this long (seconds of running, moves included).
    #[serde(default = "default_max_runtime_s")]
    pub max_runtime_s: u64,
    /// How often a running replica is checkpointed and its new layers pushed to peers
    /// (seconds; default: the running node's own interval).
    #[serde(default)]
    pub checkpoint_interval_s: Option<u64>,
    /// How many nodes run the job, each on its own.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// How many replicas' result hashes must agree (default: a majority of the replicas).
    #[serde(default)]
    pub quorum: Option<u8>,
    #[serde(default)]
    pub migration: JobMigration,
    /// 0 (lowest) to 9; higher is placed first and evicted last.
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default)]
    pub result: ResultSource,
}

/// What a replica boots or starts. Exactly one of `guest`, `kernel` or `command`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobPayload {
    /// kvm: a builtin guest kit program (`builtin:counter:passes=4`).
    #[serde(default)]
    pub guest: Option<String>,
    /// kvm: a Linux kernel.
    #[serde(default)]
    pub kernel: Option<ImageRef>,
    #[serde(default)]
    pub initrd: Option<ImageRef>,
    /// process: the program (an absolute path inside the jail) and its first arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// process: files placed in the command's directory before it starts.
    #[serde(default)]
    pub files: Vec<PayloadFile>,
}

/// A file the job needs: a path on the running node (inside its image directories) or a
/// chunk set fetched from the mesh. Exactly one of the two.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRef {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub chunk_set: Option<String>,
}

/// How a replica moves when its node needs the machine back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMigration {
    /// Modes in the order tried (default live, then warm).
    #[serde(default = "default_modes")]
    pub modes: Vec<MigrationMode>,
    /// A live move stops the guest at most this long (milliseconds).
    #[serde(default = "default_downtime_budget_ms")]
    pub downtime_budget_ms: u64,
}

impl Default for JobMigration {
    fn default() -> Self {
        JobMigration {
            modes: default_modes(),
            downtime_budget_ms: DEFAULT_DOWNTIME_BUDGET_MS,
        }
    }
}

/// Where a replica's result is read from once it ends. Its result hash is [`result_hash`]
/// of the serial output (when `serial`) and the blob (when one is declared).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResultSource {
    /// The guest's serial output (a command's stdout and stderr) is the result.
    #[serde(default = "yes")]
    pub serial: bool,
    /// process: a file the command leaves in its directory (a relative path).
    #[serde(default)]
    pub file: Option<String>,
    /// kvm: the blob the guest hands over through the result port (docs/jobs.md).
    #[serde(default)]
    pub blob: bool,
}

impl ResultSource {
    /// Whether the result has a blob part: a process's result file or a kvm guest's blob
    /// (published as the replica's result set, its output as its log set).
    pub fn has_blob(&self) -> bool {
        self.file.is_some() || self.blob
    }
}

impl Default for ResultSource {
    fn default() -> Self {
        ResultSource {
            serial: true,
            file: None,
            blob: false,
        }
    }
}

/// A replica's result hash (hex blake3): of the serial output alone, of the blob alone, or,
/// with both, of the serial output's length (8 bytes, little-endian), the serial output and
/// the blob, so no two different pairs hash alike.
pub fn result_hash(serial: Option<&[u8]>, blob: Option<&[u8]>) -> String {
    let mut h = blake3::Hasher::new();
    match (serial, blob) {
        (Some(s), Some(b)) => {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s);
            h.update(b);
        }
        (Some(only), None) | (None, Some(only)) => {
            h.update(only);
        }
        (None, None) => {}
    }
    h.finalize().to_hex().to_string()
}

fn yes() -> bool {
    true
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory_mib() -> u64 {
    super::vm::DEFAULT_MEM_MIB
}
fn default_max_runtime_s() -> u64 {
    DEFAULT_MAX_RUNTIME_S
}
fn default_replicas() -> u8 {
    1
}
fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}
fn default_modes() -> Vec<MigrationMode> {
    vec![MigrationMode::Live, MigrationMode::Warm]
}
fn default_downtime_budget_ms() -> u64 {
    DEFAULT_DOWNTIME_BUDGET_MS
}

/// A spec field that breaks its rule: the field's path (`payload.kernel.path`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl JobSpec {
    /// The quorum in force: the spec's, or a majority of the replicas.
    pub fn quorum(&self) -> u8 {
        self.quorum.unwrap_or(self.replicas / 2 + 1)
    }

    /// Checks every field against its bounds and the payload against the backend (see the
    /// module doc); the first fault found, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            let n = name.chars().count();
            if n == 0 || n > MAX_JOB_NAME_CHARS || name.chars().any(|c| c.is_control()) {
                return Err(bad(
                    "name",
                    format!("give 1-{MAX_JOB_NAME_CHARS} printable characters"),
                ));
            }
        }
        if !(1..=MAX_JOB_VCPUS).contains(&self.vcpus) {
            return Err(bad(
                "vcpus",
                format!("{} is outside 1..={MAX_JOB_VCPUS}", self.vcpus),
            ));
        }
        if !(MIN_JOB_MEMORY_MIB..=MAX_JOB_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(bad(
                "memoryMib",
                format!(
                    "{} is outside {MIN_JOB_MEMORY_MIB}..={MAX_JOB_MEMORY_MIB}",
                    self.memory_mib
                ),
            ));
        }
        check_strings("arguments", &self.arguments)?;
        if self.max_runtime_s == 0 || self.max_runtime_s > MAX_RUNTIME_S {
            return Err(bad(
                "maxRuntimeS",
                format!("{} is outside 1..={MAX_RUNTIME_S}", self.max_runtime_s),
            ));
        }
        if let Some(i) = self.checkpoint_interval_s {
            if !CHECKPOINT_INTERVAL_S.contains(&i) {
                return Err(bad(
                    "checkpointIntervalS",
                    format!(
                        "{i} is outside {}..={}",
                        CHECKPOINT_INTERVAL_S.start(),
                        CHECKPOINT_INTERVAL_S.end()
                    ),
                ));
            }
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(bad(
                "replicas",
                format!("{} is outside 1..={MAX_REPLICAS}", self.replicas),
            ));
        }
        if let Some(q) = self.quorum {
            if q == 0 || q > self.replicas {
                return Err(bad(
                    "quorum",
                    format!("{q} is outside 1..={} (the replicas)", self.replicas),
                ));
            }
        }
        self.check_migration()?;
        if self.priority > MAX_PRIORITY {
            return Err(bad(
                "priority",
                format!("{} is outside 0..={MAX_PRIORITY}", self.priority),
            ));
        }
        self.check_payload()?;
        self.check_result()
    }

    fn check_migration(&self) -> Result<(), SpecError> {
        let modes = &self.migration.modes;
        if modes.is_empty() || modes.len() > 3 {
            return Err(bad("migration.modes", "give 1 to 3 of live, warm, cold"));
        }
        for (i, m) in modes.iter().enumerate() {
            if modes[..i].contains(m) {
                return Err(bad("migration.modes", "a mode is given twice"));
            }
        }
        if self.backend == Backend::Process && modes != &[MigrationMode::Cold] {
            return Err(bad(
                "migration.modes",
                "a process-backend job moves only by a cold restart: give [cold]",
            ));
        }
        let b = self.migration.downtime_budget_ms;
        if b == 0 || b > MAX_DOWNTIME_BUDGET_MS {
            return Err(bad(
                "migration.downtimeBudgetMs",
                format!("{b} is outside 1..={MAX_DOWNTIME_BUDGET_MS}"),
            ));
        }
        Ok(())
    }

    fn check_payload(&self) -> Result<(), SpecError> {
        let p = &self.payload;
        let given = [p.guest.is_some(), p.kernel.is_some(), p.command.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(bad(
                "payload",
                "give exactly one of guest, kernel or command",
            ));
        }
        match self.backend {
            Backend::Kvm => {
                if p.command.is_some() || !p.files.is_empty() {
                    return Err(bad(
                        "payload.command",
                        "a command (and its files) runs on the process backend: set backend: process",
                    ));
                }
                if let Some(guest) = &p.guest {
                    if !guest.starts_with("builtin:") || guest.contains(char::is_whitespace) {
                        return Err(bad(
                            "payload.guest",
                            "name a builtin guest (builtin:NAME[:key=value,...])",
                        ));
                    }
                }
                if p.initrd.is_some() && p.kernel.is_none() {
                    return Err(bad("payload.initrd", "an initrd needs a kernel"));
                }
                if let Some(k) = &p.kernel {
                    check_image("payload.kernel", k)?;
                }
                if let Some(i) = &p.initrd {
                    check_image("payload.initrd", i)?;
                }
            }
            Backend::Process => {
                let Some(command) = &p.command else {
                    return Err(bad(
                        "payload.command",
                        "the process backend runs a command: give one",
                    ));
                };
                if command.is_empty() || !command[0].starts_with('/') {
                    return Err(bad(
                        "payload.command",
                        "the first item is the program, an absolute path",
                    ));
                }
                check_strings("payload.command", command)?;
                check_payload_files(&p.files)
                    .map_err(|(under, reason)| bad(format!("payload.files{under}"), reason))?;
            }
        }
        Ok(())
    }

    fn check_result(&self) -> Result<(), SpecError> {
        if let Some(file) = &self.result.file {
            if self.backend != Backend::Process {
                return Err(bad(
                    "result.file",
                    "a result file is read from a process-backend job's directory",
                ));
            }
            let path = std::path::Path::new(file);
            let plain = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if file.is_empty() || !plain || file.len() > 255 {
                return Err(bad(
                    "result.file",
                    "give a relative path inside the command's directory (no .., no leading /)",
                ));
            }
        }
        if self.result.blob && self.backend != Backend::Kvm {
            return Err(bad(
                "result.blob",
                "a result blob is what a kvm guest hands over through the result port (a \
                 process job names a result file)",
            ));
        }
        if !self.result.serial && self.result.file.is_none() && !self.result.blob {
            return Err(bad(
                "result",
                "nothing to read a result from: keep serial: true, name a file or take the \
                 blob",
            ));
        }
        Ok(())
    }
}

fn check_strings(field: &str, items: &[String]) -> Result<(), SpecError> {
    if items.len() > MAX_JOB_ARGS {
        return Err(bad(
            field,
            format!("{} items, more than {MAX_JOB_ARGS}", items.len()),
        ));
    }
    for (i, s) in items.iter().enumerate() {
        if s.len() > MAX_JOB_ARG_BYTES || s.contains('\0') {
            return Err(bad(
                format!("{field}[{i}]"),
                format!("give at most {MAX_JOB_ARG_BYTES} bytes and no NUL"),
            ));
        }
    }
    Ok(())
}

fn check_image(field: &str, image: &ImageRef) -> Result<(), SpecError> {
    match (&image.path, &image.chunk_set) {
        (Some(path), None) => {
            if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
                return Err(bad(format!("{field}.path"), "give an absolute path"));
            }
            Ok(())
        }
        (None, Some(id)) => check_chunk_set(&format!("{field}.chunkSet"), id),
        _ => Err(bad(field, "give exactly one of path or chunkSet")),
    }
}

fn check_chunk_set(field: &str, id: &str) -> Result<(), SpecError> {
    if !is_chunk_set_id(id) {
        return Err(bad(
            field,
            format!("a chunk-set id is {CHUNK_SET_ID_HEX} hex digits"),
        ));
    }
    Ok(())
}

/// Where a job is in its life. `queued -> placed -> running -> (migrating) -> succeeded |
/// failed | cancelled | lost`; a job whose replicas disagree goes back to `queued` for new
/// replicas, up to its retry limit.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted; waiting for nodes to take its replicas.
    Queued,
    /// Every replica has a node; not all of them run yet.
    Placed,
    Running,
    /// A replica is moving to another node.
    Migrating,
    /// A quorum of replicas agreed on the result.
    Succeeded,
    /// The replicas failed, disagreed past the retry limit, or ran out of time.
    Failed,
    Cancelled,
    /// The nodes under it vanished and no checkpoint holder could restore it.
    Lost,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Placed => "placed",
            JobState::Running => "running",
            JobState::Migrating => "migrating",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Placed,
        JobState::Running,
        JobState::Migrating,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Lost,
    ];
}

/// Where one replica is in its life, as its running node reports it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Being offered to nodes.
    Placing,
    /// A node admitted it and is starting it.
    Starting,
    Running,
    Migrating,
    /// It ended and left a result (its hash is known).
    Finished,
    /// It ended without a result (the VM failed, ran out of time).
    Failed,
    Cancelled,
    /// Its node died; recovery decides what comes next.
    Lost,
}

impl ReplicaState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReplicaState::Finished
                | ReplicaState::Failed
                | ReplicaState::Cancelled
                | ReplicaState::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Placing => "placing",
            ReplicaState::Starting => "starting",
            ReplicaState::Running => "running",
            ReplicaState::Migrating => "migrating",
            ReplicaState::Finished => "finished",
            ReplicaState::Failed => "failed",
            ReplicaState::Cancelled => "cancelled",
            ReplicaState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<ReplicaState> {
        [
            ReplicaState::Placing,
            ReplicaState::Starting,
            ReplicaState::Running,
            ReplicaState::Migrating,
            ReplicaState::Finished,
            ReplicaState::Failed,
            ReplicaState::Cancelled,
            ReplicaState::Lost,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One replica of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ReplicaInfo {
    /// 0-based; a retried replica gets a new index.
    pub index: u32,
    pub state: ReplicaState,
    /// The node running (or that ran) it.
    pub node: Option<String>,
    /// Bumped each time the replica is restored elsewhere; a node holding an older
    /// generation never resumes it.
    pub generation: u64,
    /// The VM on its node.
    pub vm_id: Option<String>,
    /// Hex blake3 of its result (see [`ResultSource`]).
    pub result_hash: Option<String>,
    /// Chunk sets of its serial output and its result blob.
    pub log_set: Option<String>,
    pub result_set: Option<String>,
    pub detail: Option<String>,
    pub updated_at_ms: u64,
    /// The node its VM came from, when it moved (politeness, drain) at this generation.
    #[serde(default)]
    pub moved_from: Option<String>,
    /// Its latest checkpoint held by peers (kvm replicas with checkpoints on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<ReplicaCheckpoint>,
    /// The checkpoint this generation was restored from (None: it started from the
    /// beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    /// The latest status its node signed (hex of an ed25519 envelope of the node's identity;
    /// `jobs::signed_status`): on the origin's row, what backs its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_status: Option<String>,
}

/// A replica's checkpoint as its peers hold it: what a holder restores from when the
/// replica's node dies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ReplicaCheckpoint {
    /// The checkpoint's number on the replica's VM (rises with each checkpoint).
    pub seq: u64,
    /// Peers holding it (in no order).
    pub holders: Vec<String>,
    /// Bytes of the checkpoint's files (MANIFEST, state, memory layers).
    pub bytes: u64,
    /// Bytes sent to its holders for it (layers they already held are not sent again).
    pub pushed_bytes: u64,
    /// How long pushing it to every holder took, ms: publishing its new files as chunk
    /// sets (`publish_ms` of it), then the holders fetching them.
    pub push_ms: u64,
    #[serde(default)]
    pub publish_ms: u64,
    pub taken_at_ms: u64,
}

/// A job as the node that knows it sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct JobInfo {
    /// Hex blake3 of the signed submission.
    pub id: String,
    pub spec: JobSpec,
    /// The submitter's public key (`ed25519:<hex>`).
    pub submitter: String,
    pub state: JobState,
    pub detail: Option<String>,
    /// The node the job was submitted through (it places it and counts the votes).
    pub origin: String,
    pub replicas: Vec<ReplicaInfo>,
    /// The agreed result's hash, once a quorum agrees.
    pub result_hash: Option<String>,
    /// Rounds of new replicas after disagreement.
    pub retries: u32,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<JobSpec, String> {
        let spec: JobSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_minimal_spec_gets_the_defaults() {
        let s = spec(r#"{"payload":{"guest":"builtin:counter"}}"#).unwrap();
        assert_eq!(
            (s.vcpus, s.memory_mib, s.replicas, s.quorum()),
            (1, 64, 1, 1)
        );
        assert_eq!(s.priority, DEFAULT_PRIORITY);
        assert!(s.result.serial);
        let s = spec(r#"{"payload":{"guest":"builtin:counter"},"replicas":3}"#).unwrap();
        assert_eq!(s.quorum(), 2);
    }

    #[test]
    fn result_hashes_tell_every_pair_of_output_and_blob_apart() {
        let plain = |b: &[u8]| blake3::hash(b).to_hex().to_string();
        assert_eq!(result_hash(Some(b"out"), None), plain(b"out"));
        assert_eq!(result_hash(None, Some(b"blob")), plain(b"blob"));
        let both = result_hash(Some(b"ab"), Some(b"c"));
        assert_ne!(both, result_hash(Some(b"a"), Some(b"bc")));
        assert_ne!(both, plain(b"abc"));
        assert_ne!(
            result_hash(Some(b""), Some(b"x")),
            result_hash(None, Some(b"x"))
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = spec(r#"{"payload":{"guest":"builtin:counter"},"memmory":4}"#).unwrap_err();
        assert!(e.contains("memmory"), "{e}");
        let e = spec(r#"{"payload":{"guest":"builtin:counter","kernal":{}}}"#).unwrap_err();
        assert!(e.contains("kernal"), "{e}");
    }

    #[test]
    fn each_rule_names_its_field() {
        for (json, field) in [
            (r#"{"payload":{}}"#, "payload:"),
            (
                r#"{"payload":{"guest":"builtin:a","command":["/bin/true"]}}"#,
                "payload:",
            ),
            (r#"{"payload":{"guest":"linux"}}"#, "payload.guest"),
            (r#"{"payload":{"guest":"builtin:a"},"vcpus":0}"#, "vcpus"),
            (
                r#"{"payload":{"guest":"builtin:a"},"memoryMib":1}"#,
                "memoryMib",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"replicas":17}"#,
                "replicas",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"replicas":2,"quorum":3}"#,
                "quorum",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"maxRuntimeS":0}"#,
                "maxRuntimeS",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"checkpointIntervalS":1}"#,
                "checkpointIntervalS",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"priority":10}"#,
                "priority",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"migration":{"modes":[]}}"#,
                "migration.modes",
            ),
            (
                r#"{"payload":{"kernel":{"path":"vmlinux"}}}"#,
                "payload.kernel.path",
            ),
            (
                r#"{"payload":{"kernel":{"chunkSet":"abc"}}}"#,
                "payload.kernel.chunkSet",
            ),
            (
                r#"{"payload":{"kernel":{"path":"/k","chunkSet":"abc"}}}"#,
                "payload.kernel:",
            ),
            (
                r#"{"backend":"process","payload":{"command":["true"]},"migration":{"modes":["cold"]}}"#,
                "payload.command",
            ),
            (
                r#"{"backend":"process","payload":{"command":["/bin/true"]}}"#,
                "migration.modes",
            ),
            (
                r#"{"backend":"process","payload":{"command":["/bin/true"],"files":[{"name":"../x","chunkSet":"00"}]},"migration":{"modes":["cold"]}}"#,
                "payload.files[0].name",
            ),
            (
                r#"{"backend":"process","payload":{"command":["/bin/true"]},"migration":{"modes":["cold"]},"result":{"file":"/etc/passwd"}}"#,
                "result.file",
            ),
            (
                r#"{"payload":{"guest":"builtin:a"},"result":{"serial":false}}"#,
                "result:",
            ),
        ] {
            let e = spec(json).unwrap_err();
            assert!(e.starts_with(field), "{json}: {e}");
        }
    }

    #[test]
    fn a_process_job_with_files_and_a_result_file_passes() {
        let id = "ab".repeat(32);
        let json = format!(
            r#"{{"backend":"process","payload":{{"command":["/bin/sh","run.sh"],
            "files":[{{"name":"run.sh","chunkSet":"{id}"}}]}},
            "migration":{{"modes":["cold"]}},"result":{{"file":"out/result.bin"}}}}"#
        );
        spec(&json).unwrap();
    }

    #[test]
    fn states_read_back_from_their_words() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert!(JobState::Lost.is_final() && !JobState::Migrating.is_final());
        assert_eq!(
            ReplicaState::parse("finished"),
            Some(ReplicaState::Finished)
        );
    }
}
