//! `novacron vm ...`: one microVM in the foreground, in its own sandboxed VMM process.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use novacron_vm::control::{
    Command, Event, ExitReason, Launch, LaunchSource, SandboxProbe, SandboxSettings, SnapshotMode,
};
use novacron_vm::launcher::{describe_reason, LaunchError, VmmProcess};

use crate::size::parse_size;

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Boot a guest and stream its serial console to stdout; exits 0 when the guest halts.
    ///
    /// Examples:
    ///   novacron vm run --guest builtin:counter --mem 256M --vcpus 1
    ///   novacron vm run --guest builtin:counter --snapshot-at 1500 --snapshot-to /tmp/snap
    ///   novacron vm run --kernel bzImage --initrd initrd.img --cmdline "console=ttyS0"
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
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
    /// A builtin guest kit program: builtin:hello, builtin:counter[:words=N,passes=N],
    /// builtin:dirtier[:mib=N,rate=N,base=ADDR].
    #[arg(long, conflicts_with = "kernel")]
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
    /// Guest memory (256M, 1G, ...).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
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
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Run(args) => {
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
                spec.parse::<novacron_vm::guest_kit::BuiltinGuest>()
                    .map_err(|e| anyhow::anyhow!("--guest: {e}"))?;
            }
            drive(source, args.mem, args.vcpus, &args.common, None)
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
            )
        }
    }
}

/// The absolute path of a file the VMM will read, checked now so the error is plain.
fn readable_file(what: &str, p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::File::open(p).with_context(|| format!("cannot read {what} {}", p.display()))?;
    absolute(p)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))
}

/// Spawns the VMM process and follows it to the end.
fn drive(
    source: LaunchSource,
    mem_bytes: u64,
    vcpus: u8,
    common: &CommonArgs,
    restored_from: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let snapshot_to = common.snapshot_to.as_deref().map(absolute).transpose()?;
    if let Some(dir) = &snapshot_to {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create snapshot directory {}", dir.display()))?;
    }
    let mut schedule = common.snapshot_at.clone();
    if schedule.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--snapshot-at times must increase");
    }
    schedule.reverse();
    let launch = Launch {
        vm_id: novacron_vm::launcher::new_vm_id(),
        source,
        mem_bytes,
        vcpus,
        fill_pattern: None,
        start_paused: false,
        sandbox: SandboxSettings {
            enabled: !common.no_sandbox,
            writable_dirs: snapshot_to.iter().cloned().collect(),
            ..SandboxSettings::default()
        },
    };
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let mut vmm = VmmProcess::spawn(&exe, &launch, Stdio::inherit())?;
    vmm.wait_ready(Duration::from_secs(60))
        .context("the VM did not start")?;
    let started = Instant::now();
    // The first snapshot continues the chain it was restored from, if it writes there.
    let mut next_mode = match (restored_from, &snapshot_to) {
        (Some(from), Some(to)) if from == to.as_path() => SnapshotMode::Incremental,
        _ => SnapshotMode::Full,
    };
    loop {
        let timeout = schedule
            .last()
            .map(|ms| Duration::from_millis(*ms).saturating_sub(started.elapsed()));
        let event = match vmm.next_event(timeout) {
            Ok(e) => e,
            Err(LaunchError::Timeout(_)) => {
                schedule.pop();
                let dir = snapshot_to
                    .clone()
                    .context("internal: no snapshot directory")?;
                vmm.send(&Command::Snapshot {
                    dir,
                    mode: next_mode,
                    then_stop: schedule.is_empty(),
                })?;
                next_mode = SnapshotMode::Incremental;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
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
            Event::Exited(reason) => {
                let _ = vmm.wait();
                if let Some(ms) = schedule.last() {
                    eprintln!(
                        "novacron: the guest ended before the snapshot at {ms} ms: no snapshot \
                         was written for it"
                    );
                }
                return match reason {
                    ExitReason::GuestExit { status: 0 }
                    | ExitReason::Stopped
                    | ExitReason::Shutdown
                    | ExitReason::Reset => Ok(ExitCode::SUCCESS),
                    other => bail!("{}", describe_reason(&other)),
                };
            }
            _ => {}
        }
    }
}

/// Runs the jail's self-checks and prints what each found.
fn check_sandbox() -> anyhow::Result<ExitCode> {
    let launch = Launch {
        vm_id: novacron_vm::launcher::new_vm_id(),
        source: LaunchSource::Builtin {
            spec: "builtin:hello".into(),
        },
        mem_bytes: 16 << 20,
        vcpus: 1,
        fill_pattern: None,
        start_paused: true,
        sandbox: SandboxSettings::default(),
    };
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let mut vmm = VmmProcess::spawn(&exe, &launch, Stdio::null())?;
    let ready = vmm.wait_ready(Duration::from_secs(60))?;
    println!("jail: {}", ready.sandbox);
    let mut ok = true;
    for path in ["/etc/passwd", "/proc/1/environ", "/root"] {
        vmm.send(&Command::Probe(SandboxProbe::Open { path: path.into() }))?;
        let (allowed, detail) = probe_result(&mut vmm)?;
        ok &= !allowed;
        println!("{:<8} {detail}", if allowed { "OPEN" } else { "denied" });
    }
    vmm.send(&Command::Probe(SandboxProbe::ForbiddenSyscall))?;
    match probe_result(&mut vmm) {
        Ok((_, detail)) => {
            ok = false;
            println!("ALLOWED  {detail}");
        }
        Err(e) => println!("killed   socket(AF_INET): {e}"),
    }
    if ok {
        println!("the VMM jail holds on this host");
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
