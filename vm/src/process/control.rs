//! The control protocol between a VMM process and whoever spawned it: JSON lines over a
//! Unix socket pair. The parent does not trust the VMM process (a guest may have taken it
//! over), so lines are size-limited and every field is validated where it is used.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

// How a VM ended is part of the control protocol's vocabulary (events carry it).
pub use crate::exit::{ExitReason, INCOMING_ROLLED_BACK_PREFIX, IN_DOUBT_PREFIX};

/// Where a migration that did not complete left the VM at its source, from the reason of
/// [`Event::MigrationFailed`] (the VMM decides; its owners only read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationEnd {
    /// The destination never ran it: the VM runs here as before (or stays paused if it was).
    RolledBack,
    /// The state left and nobody could say whether the destination started the VM: it stays
    /// paused here, and must not run here before someone checked the destination.
    InDoubt,
}

impl MigrationEnd {
    pub fn of(reason: &str) -> Self {
        if reason.starts_with(IN_DOUBT_PREFIX) {
            MigrationEnd::InDoubt
        } else {
            MigrationEnd::RolledBack
        }
    }
}

/// Longest line either side accepts.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What the VMM process should run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LaunchSource {
    /// A builtin guest kit program, by spec ("builtin:counter:passes=4").
    Builtin { spec: String },
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Restore the snapshot in this directory.
    Restore { dir: PathBuf },
    /// Receive a migrating VM over the migration streams passed with the launch message
    /// (control stream first, SCM_RIGHTS). `mem_bytes` and `vcpus` of the launch are the
    /// most this side accepts. Chunks the `store` holds are not sent again.
    Incoming {
        session: [u8; 16],
        store: Option<PathBuf>,
        /// Hash all guest memory before resuming (tests; costs downtime).
        verify_memory: bool,
    },
}

/// The first message: everything the VMM process needs to build its machine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Launch {
    /// Names the VM (its cgroup is `novacron/vm-<vm_id>`): 1-32 of [A-Za-z0-9_-].
    pub vm_id: String,
    pub source: LaunchSource,
    /// Guest memory. For a restore, the most the snapshot may have (it sizes the jail);
    /// `Machine::describe_snapshot` reads what a snapshot needs.
    pub mem_bytes: u64,
    /// vCPUs. For a restore, the most the snapshot may have.
    pub vcpus: u8,
    /// Before start, the host writes the benchmark pattern here: (guest address, length).
    pub fill_pattern: Option<(u64, u64)>,
    /// Stay paused after building the machine until told to resume.
    pub start_paused: bool,
    pub sandbox: SandboxSettings,
    /// Make the VMM adoptable through this Unix socket path (see docs/vm.md, "Adoption"):
    /// the spawner binds it and passes the listener on `ADOPT_FD`; when the control
    /// channel closes the VM keeps running until a new owner connects. Its directory also
    /// receives the exit tombstone (`exit.json`). None: the VMM stops when the channel
    /// closes.
    #[serde(default)]
    pub adopt: Option<PathBuf>,
    /// Where a result blob the guest hands over is written (`process::result_port`); None:
    /// the guest's blobs are refused. Its directory must be one of the jail's writable ones.
    #[serde(default)]
    pub result_blob: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SandboxSettings {
    /// Jail the process (seccomp, landlock, namespaces, rlimits, cgroup). Off only for
    /// measuring the sandbox's own cost.
    pub enabled: bool,
    /// Directories the VMM may write snapshots into (it may create them).
    pub writable_dirs: Vec<PathBuf>,
    /// cgroup memory limit; None = guest memory plus a margin for the VMM.
    pub memory_limit_bytes: Option<u64>,
    /// cgroup CPU limit in CPUs (1.5 = one and a half); None = one per vCPU plus one.
    pub cpu_limit: Option<f64>,
    /// Scheduling niceness of the VMM and every thread it starts (-20 to 19; 19 is the
    /// lowest priority, what BOINC gives volunteer work). Set in the child before exec, so
    /// no thread ever runs at another one. None keeps the spawner's.
    #[serde(default)]
    pub nice: Option<i8>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            enabled: true,
            writable_dirs: Vec::new(),
            memory_limit_bytes: None,
            cpu_limit: None,
            nice: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    Full,
    Incremental,
}

/// What an adopted VM is doing when its new owner connects.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdoptedState {
    Running,
    /// Paused (by a command, or by a migration left in doubt).
    Paused,
    /// The VM ended while nobody owned it; `exit` says why, and the VMM exits next.
    Exited,
}

/// Parent -> VMM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "cmd")]
pub enum Command {
    Pause,
    Resume,
    /// Pause, snapshot into `dir`, then stop the VM (`then_stop`) or resume it.
    Snapshot {
        dir: PathBuf,
        mode: SnapshotMode,
        then_stop: bool,
    },
    /// Report process statistics.
    Stats,
    /// The host writes data into guest memory (benchmarks and tests: "the host fills guest
    /// memory where a test needs data"); the writes count as dirty like the guest's.
    Fill {
        gpa: u64,
        len: u64,
        data: FillData,
    },
    /// Check the jail from inside: try something it must forbid and report what happened.
    Probe(SandboxProbe),
    /// Stop the guest and exit.
    Stop,
    /// Migrate the VM out over the streams passed with this message (control stream first,
    /// SCM_RIGHTS). The VMM exits once the destination confirms; on any failure the VM
    /// keeps running here.
    MigrateOut(MigrateOut),
    /// New streams to the destination after [`Event::MigrationInDoubt`].
    MigrationReconnect {
        session: [u8; 16],
    },
    /// Abandon the migration in progress (too late once the state was sent).
    CancelMigration {
        reason: String,
    },
}

/// What [`Command::Fill`] writes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FillData {
    /// The benchmark pattern (`novacron_mesh::workload::pattern`), ~1.95x with zstd-1.
    Pattern,
    /// Incompressible bytes from `seed` (`novacron_mesh::workload::random`).
    Random { seed: u64 },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    Cold,
    Warm,
    Live,
}

/// What live pre-copy does when it does not converge.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNoConverge {
    /// Throttle the vCPUs harder each round (auto-converge).
    Throttle,
    /// Pause and finish as a warm migration.
    Warm,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MigrateOut {
    pub session: [u8; 16],
    pub mode: MigrationMode,
    pub downtime_budget_ms: u64,
    pub max_rounds: u32,
    pub max_precopy_ms: u64,
    pub on_no_converge: OnNoConverge,
    /// After the move, keep the VM's memory chunks here, so a later migration back to this
    /// host sends only what changed.
    pub store: Option<PathBuf>,
    /// Hash all guest memory at switchover (tests; costs downtime).
    pub verify_memory: bool,
}

impl MigrateOut {
    /// A migration of session `session` in `mode` with the defaults every owner starts from:
    /// a 50 ms downtime budget, at most 30 rounds or 30 s of pre-copy and then a warm
    /// finish, no chunk store, no memory hash.
    pub fn new(session: [u8; 16], mode: MigrationMode) -> Self {
        Self {
            session,
            mode,
            downtime_budget_ms: 50,
            max_rounds: 30,
            max_precopy_ms: 30_000,
            on_no_converge: OnNoConverge::Warm,
            store: None,
            verify_memory: false,
        }
    }
}

/// Migration progress, as the VMM reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrationProgress {
    /// handshake, precopy, stopped, await_confirm, done, failed, in_doubt.
    pub phase: String,
    pub round: u32,
    pub bytes_sent: u64,
    pub bytes_skipped_zero: u64,
    pub bytes_skipped_held: u64,
    /// What a progress bar shows: bytes of all rounds offered so far (all of memory in the
    /// first round, plus each later round's dirty bytes), and how many of them are dealt
    /// with (written to a stream, all-zero, or held by the destination). `bytes_done` never
    /// exceeds `bytes_total`.
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes on the wire: frames with compressed chunks.
    pub wire_bytes: u64,
    pub dirty_rate_bps: u64,
    pub bandwidth_bps: u64,
    pub est_remaining_ms: Option<u64>,
    pub est_downtime_ms: Option<u64>,
    pub zstd_level: i32,
    /// Share of vCPU time auto-converge takes away, percent.
    pub throttle_percent: u8,
}

/// The end of a migration on the source, with CLOCK_MONOTONIC timestamps.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrationSummary {
    pub progress: MigrationProgress,
    pub started_ns: u64,
    /// When the VM was paused for the last time (None: never paused).
    pub paused_ns: Option<u64>,
    /// Confirm received (moved) or rollback finished.
    pub ended_ns: u64,
    /// blake3 of guest memory at switchover, when `verify_memory` asked for it.
    pub memory_blake3: Option<String>,
    /// CPU time the VMM process used during the migration (all its threads).
    pub cpu_ns: u64,
}

/// A self-check of the VMM's jail (`novacron vm check-sandbox`, and the tests).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "probe")]
pub enum SandboxProbe {
    /// Open `path` for reading from the VMM's main thread.
    Open { path: PathBuf },
    /// Make a system call outside the seccomp allowlist (`socket(AF_INET)`): a jailed VMM
    /// is killed by SIGSYS; an unjailed one reports that it was allowed.
    ForbiddenSyscall,
}

/// VMM -> parent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The machine is built (and running unless `start_paused`).
    Ready {
        /// CLOCK_MONOTONIC ns when the VMM process began building its machine.
        process_start_ns: u64,
        /// CLOCK_MONOTONIC ns when the machine was built and (unless paused) resumed.
        ready_ns: u64,
        guest: String,
        sandbox: String,
    },
    /// The guest's first port-I/O exit, CLOCK_MONOTONIC ns.
    FirstIoExit {
        at_ns: u64,
    },
    /// A paravirtual-port report.
    Guest {
        code: u32,
        value: u64,
    },
    Paused,
    Resumed,
    /// A [`Command::Fill`] is written.
    Filled,
    SnapshotDone {
        dir: PathBuf,
        mode: SnapshotMode,
        pages: u64,
        state_bytes: u64,
        micros: u64,
        /// The console file's length (the VMM's stdout, flushed) while the VM was paused
        /// for the snapshot: the serial output that belongs to the snapshot. None when
        /// stdout is not a regular file.
        #[serde(default)]
        console_bytes: Option<u64>,
    },
    Stats {
        rss_bytes: u64,
        guest_touched_bytes: u64,
    },
    /// What a sandbox probe found: whether the jail allowed it, and the error if not.
    ProbeResult {
        allowed: bool,
        detail: String,
    },
    /// A command failed; the VM is as it was before the command.
    CommandFailed {
        message: String,
    },
    MigrationProgress(MigrationProgress),
    /// The destination runs the VM; this VMM exits next ([`ExitReason::MigratedAway`]).
    MigratedOut(MigrationSummary),
    /// Rolled back: the VM runs here as before.
    MigrationFailed {
        reason: String,
        summary: MigrationSummary,
    },
    /// The link failed after the state was sent: the VM stays paused until new streams
    /// ([`Command::MigrationReconnect`]) let the destination say whether it started.
    MigrationInDoubt,
    /// The VM's chunks kept in the chunk store: by a source after the move finished (its
    /// memory), by a destination after it received the VM (the chunks received; right
    /// after [`Event::MigratedIn`]).
    ChunksKept {
        new_chunks: u64,
        held_chunks: u64,
        /// Received chunks not kept because the disk could not keep up.
        #[serde(default)]
        skipped_chunks: u64,
    },
    /// This VMM received a VM, which now runs here.
    MigratedIn {
        resumed_ns: u64,
        wire_bytes: u64,
        chunks_received: u64,
        chunks_from_store: u64,
        /// blake3 of guest memory before it resumed, when `verify_memory` asked for it.
        memory_blake3: Option<String>,
        /// CPU time the VMM process used from its start to the VM's resume.
        cpu_ns: u64,
    },
    /// The VM stopped and the process is about to exit.
    Exited(ExitReason),
    /// The first event on a connection to the adopt socket: this connection owns the VMM
    /// now. Events the VMM could not send while nobody owned it were dropped
    /// (`dropped_events`), except the newest guest report (`last_guest`, (code, value))
    /// and the exit (`exit`, then [`Event::Exited`] follows).
    Adopted {
        vm_id: String,
        state: AdoptedState,
        last_guest: Option<(u32, u64)>,
        exit: Option<ExitReason>,
        dropped_events: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control channel closed")]
    Closed,
    #[error("control line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message as one line.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ControlError> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

/// Reads one message, refusing lines over the limit without buffering them.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> Result<T, ControlError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(ControlError::Closed);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if line.len() + chunk.len() > MAX_LINE_BYTES {
            return Err(ControlError::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        r.consume(used);
        if done {
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn messages_round_trip_one_per_line() {
        let mut buf = Vec::new();
        send(&mut buf, &Command::Pause).unwrap();
        send(
            &mut buf,
            &Event::Exited(ExitReason::GuestExit { status: 0 }),
        )
        .unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(recv::<Command>(&mut r).unwrap(), Command::Pause);
        assert_eq!(
            recv::<Event>(&mut r).unwrap(),
            Event::Exited(ExitReason::GuestExit { status: 0 })
        );
        assert!(matches!(recv::<Event>(&mut r), Err(ControlError::Closed)));
    }

    #[test]
    fn launch_lines_without_adopt_still_parse() {
        let line = br#"{"vm_id":"a","source":{"kind":"builtin","spec":"builtin:hello"},"mem_bytes":67108864,"vcpus":1,"fill_pattern":null,"start_paused":false,"sandbox":{"enabled":true,"writable_dirs":[],"memory_limit_bytes":null,"cpu_limit":null}}
"#;
        let launch: Launch = recv(&mut Cursor::new(line.to_vec())).unwrap();
        assert_eq!(launch.adopt, None);
    }

    #[test]
    fn adopted_event_has_its_documented_shape() {
        let event = Event::Adopted {
            vm_id: "vm1".into(),
            state: AdoptedState::Running,
            last_guest: Some((3, 7)),
            exit: None,
            dropped_events: 2,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "adopted");
        assert_eq!(json["state"], "running");
        assert_eq!(json["last_guest"], serde_json::json!([3, 7]));
        let mut buf = Vec::new();
        send(&mut buf, &event).unwrap();
        assert_eq!(recv::<Event>(&mut Cursor::new(buf)).unwrap(), event);
    }

    #[test]
    fn oversized_and_garbled_lines_are_refused() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        assert!(matches!(
            recv::<Command>(&mut Cursor::new(long)),
            Err(ControlError::TooLong)
        ));
        assert!(matches!(
            recv::<Command>(&mut Cursor::new(b"{\"cmd\":\"explode\"}\n".to_vec())),
            Err(ControlError::Malformed(_))
        ));
    }
}
