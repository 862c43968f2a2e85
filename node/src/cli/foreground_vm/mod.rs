//! `novacron vm ...`: one microVM in the foreground, in its own sandboxed VMM process.

mod ended;
mod paths;
mod receive;
mod send;

use crate::cli::output::outln;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use novacron_vm::process::control::{
    Command, Event, Launch, LaunchSource, SandboxProbe, SandboxSettings, SnapshotMode,
};
use novacron_vm::process::launcher::{LaunchError, VmmProcess};

use crate::size::parse_size;
use ended::exit_code;
use paths::{absolute, readable_file};
use send::{CliMigration, InDoubtDir, MigrateOpts};

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Boot a guest and stream its serial console to stdout; exits 0 when the guest halts.
    ///
    /// Examples:
    ///   novacron vm run --guest builtin:counter --mem 256M --vcpus 1
    ///   novacron vm run --guest builtin:counter --snapshot-at 1500 --snapshot-to /tmp/snap
    ///   novacron vm run --kernel bzImage --initrd initrd.img --cmdline "console=ttyS0"
    ///   novacron vm run --guest builtin:counter --migrate-to 127.0.0.1:7070 \
    ///       --migrate-after 1500 --mode live
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Boot a guest and migrate it mid-run to a `novacron vm receive`, with a progress bar
    /// (or JSON lines with --json). Same options as `run`; --migrate-to is required.
    ///
    /// Example:
    ///   novacron vm migrate --guest builtin:dirtier --mem 1G --migrate-to 127.0.0.1:7070 \
    ///       --migrate-after 3000 --mode live --json
    #[command(verbatim_doc_comment)]
    Migrate(Box<RunArgs>),
    /// Wait for a migrating VM, run it here and stream the rest of its console to stdout.
    ///
    /// Example:
    ///   novacron vm receive --listen 127.0.0.1:7070 --store /var/lib/novacron/chunks
    #[command(verbatim_doc_comment)]
    Receive(receive::ReceiveArgs),
    /// Resume a snapshot in a fresh VMM process and stream the rest of its output.
    ///
    /// Example: novacron vm restore /tmp/snap
    Restore(RestoreArgs),
    /// Check the VMM jail on this host: start a jailed VMM, have it try to open a file
    /// outside its allowed paths and make a forbidden system call; both must fail.
    CheckSandbox,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, conflicts_with = "kernel", help = format!("A builtin guest kit program: {}", novacron_vm::guest_kit::usage()))]
    guest: Option<String>,
    /// A Linux kernel (bzImage or ELF vmlinux) to boot instead of a builtin guest.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(
        long,
        requires = "kernel",
        default_value = "console=ttyS0 reboot=k panic=1"
    )]
    cmdline: String,
    /// Guest memory (64M, 1G, ...; the default is `vms create`'s too; builtin:dirtier's
    /// default working set needs 256M).
    #[arg(long, default_value = crate::api::types::DEFAULT_MEM, value_parser = parse_size)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Before the guest starts, fill guest memory with the benchmark pattern:
    /// ADDR:LEN (e.g. 16M:64M).
    #[arg(long, value_parser = parse_fill)]
    fill_pattern: Option<(u64, u64)>,
    #[command(flatten)]
    migrate: MigrateOpts,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Milliseconds after the guest starts at which to snapshot it: one value stops the
    /// guest into --snapshot-to; a list (1000,2000,3000) writes a full snapshot, then
    /// incremental ones, and stops at the last.
    #[arg(long, value_delimiter = ',', requires = "snapshot_to")]
    snapshot_at: Vec<u64>,
    /// Where --snapshot-at writes (created if missing).
    #[arg(long, requires = "snapshot_at")]
    snapshot_to: Option<PathBuf>,
    /// Run the VMM without its sandbox (for measuring the sandbox's cost only).
    #[arg(long)]
    no_sandbox: bool,
    /// Chunk store of this host: after migrating away, the VM's memory chunks are kept
    /// here, so a migration back sends only what changed (created if missing).
    #[arg(long)]
    store: Option<PathBuf>,
}

fn parse_fill(s: &str) -> Result<(u64, u64), String> {
    let (addr, len) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: give ADDR:LEN, e.g. 16M:64M"))?;
    Ok((parse_size(addr)?, parse_size(len)?))
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Receive(args) => receive::run(args),
        VmCommand::Migrate(args) if args.migrate.migrate_to.is_none() => {
            bail!("vm migrate needs --migrate-to HOST:PORT")
        }
        VmCommand::Run(args) | VmCommand::Migrate(args) => {
            let source = match (&args.guest, &args.kernel) {
                (Some(spec), None) => LaunchSource::Builtin { spec: spec.clone() },
                (None, Some(kernel)) => LaunchSource::Linux {
                    kernel: readable_file("kernel", kernel)?,
                    initrd: args
                        .initrd
                        .as_deref()
                        .map(|i| readable_file("initrd", i))
                        .transpose()?,
                    cmdline: args.cmdline.clone(),
                },
                _ => bail!("say what to boot: --guest builtin:NAME or --kernel PATH"),
            };
            if let Some(spec) = &args.guest {
                // Refused here, before a VMM starts, with what the VMM would say.
                let machine = novacron_vm::MachineConfig {
                    mem_bytes: args.mem,
                    vcpus: args.vcpus,
                };
                machine.validate()?;
                spec.parse::<novacron_vm::guest_kit::BuiltinGuest>()
                    .and_then(|g| g.validate(args.mem))
                    .map_err(|e| anyhow::anyhow!("--guest: {e}"))?;
            }
            let plan = Plan {
                fill_pattern: args.fill_pattern,
                migrate: Some(args.migrate.clone()),
            };
            drive(source, args.mem, args.vcpus, &args.common, None, &plan)
        }
        VmCommand::CheckSandbox => check_sandbox(),
        VmCommand::Restore(args) => {
            let dir = absolute(&args.dir)?;
            if !dir.is_dir() {
                bail!("{} is not a snapshot directory", dir.display());
            }
            let saved = novacron_vm::Machine::describe_snapshot(&dir)
                .with_context(|| format!("cannot restore {}", dir.display()))?;
            drive(
                LaunchSource::Restore { dir: dir.clone() },
                saved.mem_bytes,
                saved.vcpus,
                &args.common,
                Some(&dir),
                &Plan::default(),
            )
        }
    }
}

/// What to do with the VM besides running it.
#[derive(Default)]
struct Plan {
    fill_pattern: Option<(u64, u64)>,
    migrate: Option<MigrateOpts>,
}

/// Something `drive` does at a time after the guest started.
enum Due {
    Snapshot,
    Migrate,
}

/// Spawns the VMM process and follows it to the end.
fn drive(
    source: LaunchSource,
    mem_bytes: u64,
    vcpus: u8,
    common: &CommonArgs,
    restored_from: Option<&Path>,
    plan: &Plan,
) -> anyhow::Result<ExitCode> {
    let snapshot_to = common.snapshot_to.as_deref().map(absolute).transpose()?;
    if let Some(dir) = &snapshot_to {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create snapshot directory {}", dir.display()))?;
    }
    let store = common.store.as_deref().map(absolute).transpose()?;
    if let Some(dir) = &store {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create chunk store {}", dir.display()))?;
    }
    if common.snapshot_at.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--snapshot-at times must increase");
    }
    let migrate = plan.migrate.as_ref().filter(|m| m.migrate_to.is_some());
    let target = migrate.map(MigrateOpts::target).transpose()?.flatten();
    // (ms, what), latest first, so the next one is at the end.
    let mut schedule: Vec<(u64, Due)> = common
        .snapshot_at
        .iter()
        .map(|&ms| (ms, Due::Snapshot))
        .chain(migrate.map(|m| (m.migrate_after, Due::Migrate)))
        .collect();
    schedule.sort_by_key(|(ms, _)| std::cmp::Reverse(*ms));
    let json = migrate.is_some_and(|m| m.json);
    let vm_id = novacron_vm::process::launcher::new_vm_id();
    // Where a VM whose migration ends in doubt is saved: it must exist before the jail.
    let save_dir = migrate.map(|_| InDoubtDir::create(&vm_id)).transpose()?;
    let launch = Launch {
        vm_id,
        source,
        mem_bytes,
        vcpus,
        fill_pattern: plan.fill_pattern,
        start_paused: false,
        adopt: None,
        result_blob: None,
        sandbox: SandboxSettings {
            enabled: !common.no_sandbox,
            writable_dirs: snapshot_to
                .iter()
                .chain(&store)
                .cloned()
                .chain(save_dir.as_ref().map(|d| d.path().to_path_buf()))
                .collect(),
            ..SandboxSettings::default()
        },
    };
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    // With --json, stdout carries JSON lines only; the guest console goes to stderr.
    let console = if json {
        Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?)
    } else {
        Stdio::inherit()
    };
    let mut vmm = VmmProcess::spawn(&exe, &launch, console)?;
    vmm.wait_ready(Duration::from_secs(60))
        .context("the VM did not start")?;
    let started = Instant::now();
    let mut migration = match (migrate, target, save_dir) {
        (Some(m), Some(addr), Some(dir)) => Some(CliMigration::new(
            addr,
            m.clone(),
            store.clone(),
            mem_bytes,
            dir,
        )),
        _ => None,
    };
    let mut snapshot_left = common.snapshot_at.len();
    // The first snapshot continues the chain it was restored from, if it writes there.
    let mut next_mode = match (restored_from, &snapshot_to) {
        (Some(from), Some(to)) if from == to.as_path() => SnapshotMode::Incremental,
        _ => SnapshotMode::Full,
    };
    loop {
        let due = schedule
            .last()
            .map(|(ms, _)| started + Duration::from_millis(*ms));
        let wake = [due, migration.as_ref().and_then(CliMigration::deadline)]
            .into_iter()
            .flatten()
            .min();
        let timeout = wake.map(|at| at.saturating_duration_since(Instant::now()));
        let event = match vmm.next_event(timeout) {
            Ok(e) => e,
            Err(LaunchError::Timeout(_)) => {
                if let Some(m) = &mut migration {
                    m.tick(&mut vmm)?;
                }
                if due.is_none_or(|at| at > Instant::now()) {
                    continue;
                }
                match schedule.pop() {
                    Some((_, Due::Snapshot)) => {
                        snapshot_left -= 1;
                        let dir = snapshot_to
                            .clone()
                            .context("internal: no snapshot directory")?;
                        vmm.send(&Command::Snapshot {
                            dir,
                            mode: next_mode,
                            then_stop: snapshot_left == 0 && migrate.is_none(),
                        })?;
                        next_mode = SnapshotMode::Incremental;
                    }
                    Some((_, Due::Migrate)) => {
                        if let Some(m) = &mut migration {
                            m.start(&mut vmm)?;
                        }
                    }
                    None => {}
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(m) = &mut migration {
            if m.on_event(&mut vmm, &event)? {
                continue;
            }
        }
        match event {
            Event::SnapshotDone {
                dir,
                mode,
                pages,
                micros,
                ..
            } => eprintln!(
                "novacron: {mode:?} snapshot of {pages} pages written to {} in {:.1} ms",
                dir.display(),
                micros as f64 / 1000.0
            ),
            Event::CommandFailed { message } => bail!("{message}"),
            Event::ChunksKept {
                new_chunks,
                held_chunks,
                ..
            } => eprintln!(
                "novacron: kept the VM's memory in the chunk store: {new_chunks} new chunks, \
                 {held_chunks} already there"
            ),
            Event::Exited(reason) => {
                let _ = vmm.wait();
                if let Some((ms, _)) = schedule.last() {
                    eprintln!(
                        "novacron: the guest ended before what was due at {ms} ms: it did \
                         not happen"
                    );
                }
                return match &migration {
                    Some(m) => m.exit_status(&reason),
                    None => exit_code(reason),
                };
            }
            _ => {}
        }
    }
}

/// Runs the jail's self-checks and prints what each found.
fn check_sandbox() -> anyhow::Result<ExitCode> {
    let launch = Launch {
        vm_id: novacron_vm::process::launcher::new_vm_id(),
        source: LaunchSource::Builtin {
            spec: "builtin:hello".into(),
        },
        mem_bytes: 16 << 20,
        vcpus: 1,
        fill_pattern: None,
        start_paused: true,
        adopt: None,
        result_blob: None,
        sandbox: SandboxSettings::default(),
    };
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let mut vmm = VmmProcess::spawn(&exe, &launch, Stdio::null())?;
    let ready = vmm.wait_ready(Duration::from_secs(60))?;
    outln!("jail: {}", ready.sandbox)?;
    let mut ok = true;
    for path in ["/etc/passwd", "/proc/1/environ", "/root"] {
        vmm.send(&Command::Probe(SandboxProbe::Open { path: path.into() }))?;
        let (allowed, detail) = probe_result(&mut vmm)?;
        ok &= !allowed;
        outln!("{:<8} {detail}", if allowed { "OPEN" } else { "denied" })?;
    }
    vmm.send(&Command::Probe(SandboxProbe::ForbiddenSyscall))?;
    match probe_result(&mut vmm) {
        Ok((_, detail)) => {
            ok = false;
            outln!("ALLOWED  {detail}")?;
        }
        Err(e) => outln!("killed   socket(AF_INET): {e}")?,
    }
    if ok {
        outln!("the VMM jail holds on this host")?;
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the VMM jail let something through (see above)")
    }
}

fn probe_result(vmm: &mut VmmProcess) -> Result<(bool, String), LaunchError> {
    vmm.wait_for(Duration::from_secs(10), |e| match e {
        Event::ProbeResult { allowed, detail } => Some((*allowed, detail.clone())),
        _ => None,
    })
}
