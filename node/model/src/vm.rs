//! A VM: what to run (its spec), where it is in its life, and what the node knows of it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a VM runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A KVM microVM in a jailed VMM process (the VM engine).
    #[default]
    Kvm,
    /// A command in the same jail, for hosts without KVM; it moves only by cold restart.
    Process,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kvm => "kvm",
            Backend::Process => "process",
        }
    }
}

/// How a VM may move when its node needs it gone, in the order tried.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    Live,
    Warm,
    Cold,
}

impl MigrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMode::Live => "live",
            MigrationMode::Warm => "warm",
            MigrationMode::Cold => "cold",
        }
    }
}

/// What to run: `POST /api/v1/vms`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// A name for people (1-64 printable characters); the id names the VM.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub name: Option<String>,
    #[serde(default)]
    pub backend: Backend,
    /// kvm: a builtin guest kit program (`builtin:counter:passes=4`).
    #[serde(default)]
    pub guest: Option<String>,
    /// kvm: a Linux kernel on this host to boot instead of a builtin guest.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// process: the program (an absolute path) and its arguments.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 256)]
    pub command: Option<Vec<String>>,
    /// Guest memory (kvm) or memory limit (process), MiB.
    #[serde(default = "default_mem_mib")]
    #[schema(minimum = 4, maximum = 1048576)]
    pub mem_mib: u64,
    #[serde(default = "default_vcpus")]
    #[schema(minimum = 1, maximum = 32)]
    pub vcpus: u8,
    /// How the VM moves when its node needs it gone (default live, then warm).
    #[serde(default = "default_migration_modes")]
    #[schema(min_items = 1, max_items = 3)]
    pub migration: Vec<MigrationMode>,
    /// kvm, builtin guests: before the guest starts, the host writes the benchmark pattern
    /// into this many MiB of guest memory at the pattern base (16 MiB), as the migration
    /// benchmarks' workloads do (benchmarks and tests).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub prefill_mib: Option<u64>,
    /// kvm: checkpoint this VM this often, seconds (default: the node's
    /// `checkpointIntervalS`); a job's replica gets its job's `checkpointIntervalS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 5, maximum = 86400)]
    pub checkpoint_interval_s: Option<u64>,
    /// kvm: the downtime budget of this VM's live moves, ms, when a move does not give one
    /// (politeness, drain); default 300. A job's replica gets its job's
    /// `migration.downtimeBudgetMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60000)]
    pub downtime_budget_ms: Option<u64>,
    /// 0 (lowest) to 9: when the node must give memory back, VMs of lower priority leave
    /// first (default 5). A job's replica gets its job's `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<u8>,
    /// process: files fetched from the mesh by chunk set and placed in the command's
    /// directory before it starts (again before each restart from scratch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 64)]
    pub files: Vec<PayloadFile>,
}

/// A file of a process's payload: its name in the command's directory and the chunk set
/// (64 hex digits) it is fetched from, verified chunk by chunk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PayloadFile {
    /// Its name in the command's directory (no `/`, not `.` or `..`).
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[serde(alias = "chunk_set")]
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub chunk_set: String,
}

/// Most files one payload places.
pub const MAX_PAYLOAD_FILES: usize = 64;
/// Digits of a chunk-set id (the hex blake3 of its manifest).
pub const CHUNK_SET_ID_HEX: usize = 64;

/// Checks a payload's files: a field under the list (`[2].name`) and why, on the first
/// fault.
pub fn check_payload_files(files: &[PayloadFile]) -> Result<(), (String, String)> {
    if files.len() > MAX_PAYLOAD_FILES {
        return Err((
            String::new(),
            format!("{} files, more than {MAX_PAYLOAD_FILES}", files.len()),
        ));
    }
    for (i, f) in files.iter().enumerate() {
        if f.name.is_empty()
            || f.name.len() > 255
            || f.name == "."
            || f.name == ".."
            || f.name.contains(['/', '\0'])
        {
            return Err((
                format!("[{i}].name"),
                "give a plain file name (no /, not . or ..)".into(),
            ));
        }
        if files[..i].iter().any(|o| o.name == f.name) {
            return Err((format!("[{i}].name"), "a file name is given twice".into()));
        }
        if !is_chunk_set_id(&f.chunk_set) {
            return Err((
                format!("[{i}].chunkSet"),
                format!("a chunk-set id is {CHUNK_SET_ID_HEX} hex digits"),
            ));
        }
    }
    Ok(())
}

/// Is `id` a chunk-set id (64 hex digits)?
pub fn is_chunk_set_id(id: &str) -> bool {
    id.len() == CHUNK_SET_ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A VM's memory when none is given, in MiB: the API's, `vms create --mem`'s and
/// `vm run --mem`'s default (64 MiB fits every builtin guest's defaults but the dirtier's,
/// which wants 256M).
pub const DEFAULT_MEM_MIB: u64 = 64;

/// [`DEFAULT_MEM_MIB`] as the CLI writes sizes (its `--mem` default); the compiler checks
/// that both say the same.
pub const DEFAULT_MEM: &str = "64M";

const _: () = assert!(mib_of(DEFAULT_MEM) == DEFAULT_MEM_MIB);

/// The MiB of a size written `<digits>M` (at compile time; anything else does not compile).
const fn mib_of(size: &str) -> u64 {
    let b = size.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        n = n * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    assert!(i > 0 && i + 1 == b.len() && b[i] == b'M');
    n
}

pub fn default_mem_mib() -> u64 {
    DEFAULT_MEM_MIB
}

pub fn default_vcpus() -> u8 {
    1
}

pub fn default_migration_modes() -> Vec<MigrationMode> {
    vec![MigrationMode::Live, MigrationMode::Warm]
}

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Its VMM process is being started (or restored).
    Starting,
    Running,
    /// Paused by a person or the API; resumes when told.
    Paused,
    /// Migrating out of this node.
    Migrating,
    /// Snapshotted and stopped because the owner needs the machine and no peer could take
    /// it; resumes from the snapshot when the politeness policy allows.
    Suspended,
    /// The guest ended (exit, reset, power-off) or was stopped.
    Exited,
    /// The VMM failed; `detail` says why.
    Failed,
    /// It runs on another node now (`detail` names the peer).
    MovedAway,
}

impl VmState {
    /// Whether the VM still occupies this node (counts against its capacity).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Migrating
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Migrating => "migrating",
            VmState::Suspended => "suspended",
            VmState::Exited => "exited",
            VmState::Failed => "failed",
            VmState::MovedAway => "moved_away",
        }
    }

    pub const ALL: [VmState; 8] = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Migrating,
        VmState::Suspended,
        VmState::Exited,
        VmState::Failed,
        VmState::MovedAway,
    ];
}

/// A VM this node runs or ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VmInfo {
    pub id: String,
    pub spec: VmSpec,
    pub state: VmState,
    /// Why it is in this state, when that is not obvious (the failure, the peer it moved to).
    pub detail: Option<String>,
    /// The VMM (or process backend) process, while one runs.
    pub pid: Option<u32>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The last snapshot the node holds of it (Unix ms), for restarts and suspends.
    pub snapshot_at_ms: Option<u64>,
    /// The last paravirtual report of the guest (code, value): builtin guests report progress.
    pub last_report: Option<(u32, u64)>,
    /// How many times a restarted daemon found this VM's VMM still running and took it back.
    pub adoptions: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_gets_the_defaults_and_typos_are_refused() {
        let spec: VmSpec = serde_json::from_str(r#"{"guest":"builtin:counter"}"#).unwrap();
        assert_eq!(spec.backend, Backend::Kvm);
        assert_eq!(spec.mem_mib, 64);
        assert_eq!(spec.vcpus, 1);
        assert_eq!(
            spec.migration,
            vec![MigrationMode::Live, MigrationMode::Warm]
        );
        let err = serde_json::from_str::<VmSpec>(r#"{"guest":"builtin:counter","memmib":4}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("memmib"), "{err}");
    }
}
