//! The VMM jail against the code it guards. Every code path the `novacron vmm` process can
//! take runs in a test under the real jail (seccomp, landlock, namespaces, cgroup, rlimits),
//! launched as the CLI or the daemon launches it: a call the allowlist lacks kills the VMM
//! with SIGSYS, and the test fails.
//!
//! [`rows`] is the coverage matrix: for each launch, command and migration side of the
//! control protocol, the tests that run it in the jail. Its matches are exhaustive, so a new
//! launch kind or command does not compile until it has a row; `the_matrix_names_real_tests`
//! checks that every test it names exists. The paths no other test took — a chunk store on
//! either side of a migration (where `syncfs` once killed the VMM), a re-migration that
//! reuses held chunks, and the commands only the daemon and the benchmark send — run here.
//!
//! Each test skips with a message when /dev/kvm is unusable.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::cli_migration::move_counter;
use common::guest::kvm_usable;
use common::proc::Proc;
use novacron_vm::machine::layout::PATTERN_BASE;
use novacron_vm::migration::links;
use novacron_vm::process::control::{
    Command, Event, ExitReason, FillData, Launch, LaunchSource, MigrateOut, MigrationMode,
    SandboxProbe, SandboxSettings, SnapshotMode,
};
use novacron_vm::process::launcher::{new_vm_id, VmmProcess};

/// Where a path runs under the real jail: (test file under the workspace, test function).
type Covered = &'static [(&'static str, &'static str)];

const HERE: &str = "node/tests/jail_paths.rs";
const VM_CLI: &str = "node/tests/vm_cli.rs";
const VM_MIGRATE: &str = "node/tests/vm_migrate.rs";
const ADOPT: &str = "vm/tests/adopt.rs";
const DAEMON: &str = "node/tests/node_daemon.rs";
const MESH: &str = "node/tests/mesh_migrate.rs";

/// One of each launch kind, command and migration side the VMM knows.
enum VmmPath<'a> {
    Launch(&'a LaunchSource),
    Command(&'a Command),
    /// Both sides of a migration in this mode, with and without chunk stores.
    Migration(MigrationMode),
    /// The VMM's life without an owner: adoptable, orphaned, adopted, tombstone.
    Adoption,
}

/// The coverage matrix.
fn rows(path: &VmmPath<'_>) -> Covered {
    match path {
        VmmPath::Launch(source) => match source {
            LaunchSource::Builtin { .. } => &[(VM_CLI, "counter_prints_the_reference_result")],
            // The kernel file is opened and parsed inside the jail; stock kernels do not
            // boot on this project's machines (docs/vm.md), the boot itself runs with
            // NOVACRON_TEST_KERNEL.
            LaunchSource::Linux { .. } => &[
                (VM_CLI, "bad_input_gets_an_error_that_names_the_problem"),
                (VM_CLI, "linux_boots_to_its_console_when_a_kernel_is_given"),
            ],
            LaunchSource::Restore { .. } => &[(
                VM_CLI,
                "counter_survives_a_chain_of_incremental_snapshots_across_processes",
            )],
            LaunchSource::Incoming { store: _, .. } => &[
                (
                    HERE,
                    "live_migration_keeps_chunks_on_both_sides_in_the_jail",
                ),
                (
                    HERE,
                    "a_second_receive_of_the_same_guest_reuses_the_chunks_it_kept",
                ),
                (
                    MESH,
                    "a_counter_moves_live_over_bridged_libp2p_streams_and_keeps_its_result",
                ),
            ],
        },
        VmmPath::Command(cmd) => match cmd {
            Command::Pause | Command::Resume | Command::Stats | Command::Fill { .. } => {
                &[(HERE, "every_command_runs_in_the_jail")]
            }
            Command::Snapshot { mode, .. } => match mode {
                SnapshotMode::Full | SnapshotMode::Incremental => &[(
                    VM_CLI,
                    "counter_survives_a_chain_of_incremental_snapshots_across_processes",
                )],
            },
            Command::Probe(_) => &[(VM_CLI, "the_jail_denies_files_and_kills_forbidden_syscalls")],
            Command::Stop => &[(HERE, "every_command_runs_in_the_jail")],
            Command::MigrateOut(_) => &[
                (
                    HERE,
                    "live_migration_keeps_chunks_on_both_sides_in_the_jail",
                ),
                (
                    VM_MIGRATE,
                    "dropped_links_mid_migration_roll_back_to_the_source",
                ),
            ],
            Command::MigrationReconnect { .. } => &[(
                VM_MIGRATE,
                "a_lost_confirm_is_resolved_by_asking_the_destination",
            )],
            Command::CancelMigration { .. } => &[(HERE, "every_command_runs_in_the_jail")],
        },
        VmmPath::Migration(mode) => match mode {
            MigrationMode::Live => &[
                (
                    HERE,
                    "live_migration_keeps_chunks_on_both_sides_in_the_jail",
                ),
                (
                    HERE,
                    "a_second_receive_of_the_same_guest_reuses_the_chunks_it_kept",
                ),
                (VM_MIGRATE, "live_migration_moves_a_running_counter"),
            ],
            MigrationMode::Warm => &[
                (
                    HERE,
                    "warm_migration_keeps_chunks_on_both_sides_in_the_jail",
                ),
                (VM_MIGRATE, "warm_migration_moves_a_running_counter"),
            ],
            MigrationMode::Cold => &[
                (
                    HERE,
                    "cold_migration_keeps_chunks_on_both_sides_in_the_jail",
                ),
                (VM_MIGRATE, "cold_migration_moves_a_running_counter"),
            ],
        },
        VmmPath::Adoption => &[
            (ADOPT, "an_abandoned_vmm_keeps_running_and_is_adopted"),
            (
                ADOPT,
                "a_guest_that_ends_while_orphaned_reports_through_adoption",
            ),
            (
                ADOPT,
                "a_paused_vm_is_adopted_paused_and_an_adopted_vmm_can_be_killed",
            ),
            (DAEMON, "a_daemon_killed_with_sigkill_finds_every_vm_again"),
            (
                MESH,
                "a_source_in_doubt_whose_owner_is_gone_stays_paused_and_is_adopted_at_once",
            ),
        ],
    }
}

/// The source of a test file named in the matrix.
fn test_source(file: &str) -> &'static str {
    match file {
        HERE => include_str!("jail_paths.rs"),
        VM_CLI => include_str!("vm_cli.rs"),
        VM_MIGRATE => include_str!("vm_migrate.rs"),
        ADOPT => include_str!("../../vm/tests/adopt.rs"),
        DAEMON => include_str!("node_daemon.rs"),
        MESH => include_str!("mesh_migrate.rs"),
        other => panic!("the matrix names {other}, which this test does not read"),
    }
}

#[test]
fn the_matrix_names_real_tests() {
    let dir = Path::new("/");
    let launches = [
        LaunchSource::Builtin { spec: "x".into() },
        LaunchSource::Linux {
            kernel: dir.into(),
            initrd: None,
            cmdline: String::new(),
        },
        LaunchSource::Restore { dir: dir.into() },
        LaunchSource::Incoming {
            session: [0; 16],
            store: Some(dir.into()),
            verify_memory: false,
        },
    ];
    let migrate = MigrateOut {
        store: Some(dir.into()),
        ..MigrateOut::new([0; 16], MigrationMode::Live)
    };
    let commands = [
        Command::Pause,
        Command::Resume,
        Command::Snapshot {
            dir: dir.into(),
            mode: SnapshotMode::Full,
            then_stop: false,
        },
        Command::Snapshot {
            dir: dir.into(),
            mode: SnapshotMode::Incremental,
            then_stop: true,
        },
        Command::Stats,
        Command::Fill {
            gpa: 0,
            len: 0,
            data: FillData::Pattern,
        },
        Command::Probe(SandboxProbe::ForbiddenSyscall),
        Command::Stop,
        Command::MigrateOut(migrate),
        Command::MigrationReconnect { session: [0; 16] },
        Command::CancelMigration {
            reason: String::new(),
        },
    ];
    let mut paths: Vec<VmmPath<'_>> = launches.iter().map(VmmPath::Launch).collect();
    paths.extend(commands.iter().map(VmmPath::Command));
    paths.extend(
        [
            MigrationMode::Live,
            MigrationMode::Warm,
            MigrationMode::Cold,
        ]
        .map(VmmPath::Migration),
    );
    paths.push(VmmPath::Adoption);
    for path in &paths {
        let covered = rows(path);
        assert!(!covered.is_empty(), "a VMM path without a test");
        for (file, test) in covered {
            let source = test_source(file);
            assert!(
                source.contains(&format!("fn {test}()")),
                "the matrix names {file}::{test}, which does not exist"
            );
        }
    }
}

/// `vm receive --store DST` and `vm run --store SRC --migrate-to` of a counter in `mode`:
/// the VM moves and finishes at the destination, and nothing died in its jail. Returns both
/// processes, to read what they printed.
fn migrate_with_stores(mode: &str, src_store: &Path, dst_store: &Path) -> (Proc, Proc) {
    let (src, dst) = move_counter(
        mode,
        &["--store", path_str(dst_store)],
        &["--store", path_str(src_store)],
    );
    let all = format!("{}{}", src.stderr(), dst.stderr());
    assert!(
        !all.contains("SIGSYS"),
        "{mode}: a VMM was killed by its seccomp filter"
    );
    (src, dst)
}

/// The number between `before` and `after` on a line of `text`.
fn figure(text: &str, before: &str, after: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(before)?;
            let (n, _) = rest.split_once(after)?;
            n.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no line with {before:?}N{after:?} in:\n{text}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn keeps_chunks_on_both_sides(mode: &str) {
    if !kvm_usable(&format!("{mode} migration with stores")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = migrate_with_stores(mode, &dir.path().join("src"), &dir.path().join("dst"));
    assert!(
        figure(
            &src.stderr(),
            "kept the VM's memory in the chunk store: ",
            " new chunks"
        ) > 0,
        "{mode}: the source kept nothing in its store"
    );
    assert!(
        figure(
            &dst.stderr(),
            "kept the chunks received in the chunk store: ",
            " new"
        ) > 0,
        "{mode}: the destination kept nothing in its store"
    );
}

#[test]
fn live_migration_keeps_chunks_on_both_sides_in_the_jail() {
    keeps_chunks_on_both_sides("live");
}

#[test]
fn warm_migration_keeps_chunks_on_both_sides_in_the_jail() {
    keeps_chunks_on_both_sides("warm");
}

#[test]
fn cold_migration_keeps_chunks_on_both_sides_in_the_jail() {
    keeps_chunks_on_both_sides("cold");
}

/// The same guest received twice into one store: the second receive copies from the store
/// what the first kept, and says how many chunks (it said `0 from the store` every time
/// when a receiver kept nothing). A receive into the store the source kept after the move
/// (the VM coming back to a host that held it) reuses chunks too.
#[test]
fn a_second_receive_of_the_same_guest_reuses_the_chunks_it_kept() {
    if !kvm_usable("re-migration from a store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src_store, dst_store) = (dir.path().join("src"), dir.path().join("dst"));
    let (_, first) = migrate_with_stores("live", &src_store, &dst_store);
    let first_from_store = figure(&first.stderr(), "chunks received, ", " from the store");
    assert_eq!(first_from_store, 0, "an empty store cannot give chunks");
    for (store, what) in [(&dst_store, "the receiver's"), (&src_store, "the source's")] {
        let other = tempfile::tempdir().unwrap();
        let (_, again) = migrate_with_stores("live", other.path(), store);
        let reused = figure(&again.stderr(), "chunks received, ", " from the store");
        assert!(
            reused > 0,
            "receiving the same guest into {what} store reused no chunk"
        );
    }
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `cmd` and waits for the event `pick` accepts; a failed command, a dead or silent
/// VMM fails the test naming `what`.
fn expect(vmm: &mut VmmProcess, cmd: Command, what: &str, pick: fn(&Event) -> bool) -> Event {
    vmm.send(&cmd).unwrap_or_else(|e| panic!("{what}: {e}"));
    let event = vmm
        .wait_for(COMMAND_TIMEOUT, |e| match e {
            Event::CommandFailed { message } => Some(Err(message.clone())),
            e if pick(e) => Some(Ok(e.clone())),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("{what}: the VMM died or went silent: {e}"));
    event.unwrap_or_else(|m| panic!("{what} failed: {m}"))
}

/// A VMM launched as `vm run` launches it, driven through the commands only the daemon and
/// the benchmark send: statistics, fills, pause and resume, a migration cancelled while it
/// waits for the destination, and stop.
#[test]
fn every_command_runs_in_the_jail() {
    if !kvm_usable("VMM commands in the jail") {
        return;
    }
    let launch = Launch {
        vm_id: new_vm_id(),
        source: LaunchSource::Builtin {
            spec: "builtin:idle".into(),
        },
        mem_bytes: 64 << 20,
        vcpus: 1,
        fill_pattern: None,
        start_paused: false,
        adopt: None,
        result_blob: None,
        sandbox: SandboxSettings::default(),
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_novacron"));
    let mut vmm = VmmProcess::spawn(exe, &launch, Stdio::null()).expect("spawn the VMM");
    let ready = vmm.wait_ready(Duration::from_secs(60)).expect("ready");
    assert!(ready.sandbox.contains("landlock"), "{}", ready.sandbox);
    let t = COMMAND_TIMEOUT;
    let stats = expect(&mut vmm, Command::Stats, "stats", |e| {
        matches!(e, Event::Stats { .. })
    });
    assert!(matches!(stats, Event::Stats { rss_bytes, .. } if rss_bytes > 0));
    for data in [FillData::Pattern, FillData::Random { seed: 3 }] {
        let fill = Command::Fill {
            gpa: PATTERN_BASE,
            len: 1 << 20,
            data,
        };
        expect(&mut vmm, fill, "fill", |e| matches!(e, Event::Filled));
    }
    expect(&mut vmm, Command::Pause, "pause", |e| {
        matches!(e, Event::Paused)
    });
    expect(&mut vmm, Command::Resume, "resume", |e| {
        matches!(e, Event::Resumed)
    });
    // A destination that accepts the connections and never answers: the migration waits
    // in its handshake until cancelled, and the VM goes on.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let session = links::new_session();
    let streams = links::connect(listener.local_addr().unwrap(), 1, session, t).unwrap();
    let migrate = Command::MigrateOut(MigrateOut::new(session, MigrationMode::Live));
    vmm.send_with_streams(&migrate, &streams.into_streams())
        .expect("start the migration");
    let cancel = Command::CancelMigration {
        reason: "cancelled by the test".into(),
    };
    let failed = expect(&mut vmm, cancel, "cancel", |e| {
        matches!(e, Event::MigrationFailed { .. })
    });
    assert!(
        matches!(&failed, Event::MigrationFailed { reason, .. } if reason.contains("cancelled by the test")),
        "{failed:?}"
    );
    expect(&mut vmm, Command::Stats, "stats after the rollback", |e| {
        matches!(e, Event::Stats { .. })
    });
    vmm.send(&Command::Stop).expect("stop");
    let end = vmm
        .wait_for(t, |e| match e {
            Event::Exited(r) => Some(r.clone()),
            _ => None,
        })
        .expect("the VMM's exit");
    assert_eq!(end, ExitReason::Stopped);
    let status = vmm.wait().expect("wait for the VMM");
    assert!(status.success(), "{status:?}");
}
