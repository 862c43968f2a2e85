//! `novacron bench migrate`: live migration between two jailed VMM processes over loopback
//! TCP, on the workloads QEMU 7.2 was measured on (1 GiB guests, 64 MiB of the pattern at
//! 16 MiB): an idle guest, a paced dirtier, incompressible memory, and a migration back to
//! a host whose chunk store still holds the VM's memory. References measured in the same
//! run: zstd level 1 over the same bytes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use novacron_vm::machine::layout::{pv_event, PATTERN_BASE};
use novacron_vm::migration::links;
use novacron_vm::process::control::{
    Command, Event, FillData, Launch, LaunchSource, MigrateOut, MigrationMode, MigrationSummary,
    OnNoConverge, SandboxSettings,
};
use novacron_vm::process::launcher::VmmProcess;

use super::report::{in_scratch_dir, median, Goal, Report};

#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs of each workload (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    mem_mib: u64,
    /// Parallel data streams.
    #[arg(long, default_value_t = 2)]
    streams: u8,
    /// Live-migration downtime budget, ms.
    #[arg(long, default_value_t = 50)]
    downtime_budget: u64,
    /// Workloads to run (all by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,dirtier,random,remigrate"
    )]
    workloads: Vec<Workload>,
    /// Where chunk stores are kept (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Idle,
    Dirtier,
    Random,
    Remigrate,
}

impl MigrateBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);
/// The pattern every workload starts with: 64 MiB at guest-physical 16 MiB.
const PATTERN_LEN: u64 = 64 * MIB;
/// Where the random workload's bytes go, and how many.
const RANDOM_LEN: u64 = 256 * MIB;
/// Share of memory the remigrate workload dirties between the two moves, in percent.
const REMIGRATE_DIRTY_PERCENT: u64 = 4;

pub fn run(args: &MigrateBenchArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    in_scratch_dir("migrate", args.dir.as_deref(), |scratch| {
        Bench {
            exe,
            args,
            scratch: scratch.to_path_buf(),
        }
        .measure()
    })
}

/// The idle workload (`builtin:idle`, the pattern, migrated after 2 s) moved `runs` times
/// by the direct-TCP path with this suite's default settings (1 GiB, 2 streams, 50 ms
/// budget): the reference of `bench node`'s mesh migration. Chunk stores go under `scratch`.
pub(super) fn idle_reference(runs: usize, scratch: &Path) -> anyhow::Result<Medians> {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        args: MigrateBenchArgs,
    }
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let args = Defaults::try_parse_from(["migrate", "--workloads", "idle"])?.args;
    let bench = Bench {
        exe,
        args: &args,
        scratch: scratch.to_path_buf(),
    };
    bench.repeat(runs.max(1), || {
        bench.idle_or_dirtier("builtin:idle", IDLE_MIGRATE_AFTER_MS)
    })
}

/// How long the idle workload runs before it is migrated.
pub(super) const IDLE_MIGRATE_AFTER_MS: u64 = 2000;

struct Bench<'a> {
    exe: PathBuf,
    args: &'a MigrateBenchArgs,
    scratch: PathBuf,
}

/// One migration's figures.
struct Moved {
    downtime_ms: f64,
    /// The source's final pause to the destination's confirm arriving at the source: what
    /// the node daemon reports as a migration's `downtime_ms`.
    pause_to_confirm_ms: f64,
    total_ms: f64,
    wire_bytes: u64,
    rounds: u32,
    /// CPU time both VMM processes used for the migration, and the source's alone.
    cpu_ns: u64,
    source_cpu_ns: u64,
    /// The destination VMM, running the VM.
    destination: VmmProcess,
}

impl Bench<'_> {
    fn mem_bytes(&self) -> u64 {
        self.args.mem_mib * MIB
    }

    fn measure(&self) -> anyhow::Result<Report> {
        let mut report = Report::new("migrate");
        let runs = self.args.runs.max(1);
        let pattern = novacron_mesh::workload::pattern(PATTERN_LEN as usize);
        let touched_zstd = zstd::bulk::compress(&pattern, 1)?.len() as u64;

        let wants = |w| self.args.workloads.contains(&w);
        if wants(Workload::Idle) {
            self.idle(&mut report, runs, touched_zstd)?;
        }
        if wants(Workload::Dirtier) {
            self.dirtier(&mut report, runs)?;
        }
        if wants(Workload::Random) {
            self.random_figures(&mut report)?;
        }
        if wants(Workload::Remigrate) {
            self.remigrate_figures(&mut report)?;
        }
        Ok(report)
    }

    fn idle(&self, report: &mut Report, runs: usize, touched_zstd: u64) -> anyhow::Result<()> {
        let idle = self.repeat(runs, || {
            self.idle_or_dirtier("builtin:idle", IDLE_MIGRATE_AFTER_MS)
        })?;
        report.add(
            "idle.downtime_ms",
            idle.downtime_ms,
            "ms",
            Some(Goal::at_most(2.0)),
        );
        report.add(
            "idle.total_ms",
            idle.total_ms,
            "ms",
            Some(Goal::at_most(500.0)),
        );
        report.add("idle.wire_bytes", idle.wire_bytes, "B", None);
        report.add("idle.touched_zstd_bytes", touched_zstd as f64, "B", None);
        report.add(
            "idle.wire_vs_touched_zstd",
            idle.wire_bytes / touched_zstd as f64,
            "x",
            Some(Goal::at_most(1.1)),
        );
        report.add("idle.rounds", idle.rounds, "", None);
        Ok(())
    }

    fn dirtier(&self, report: &mut Report, runs: usize) -> anyhow::Result<()> {
        let dirtier = self.repeat(runs, || self.idle_or_dirtier("builtin:dirtier", 3000))?;
        report.add(
            "dirtier.downtime_ms",
            dirtier.downtime_ms,
            "ms",
            Some(Goal::at_most(5.0)),
        );
        report.add(
            "dirtier.total_ms",
            dirtier.total_ms,
            "ms",
            Some(Goal::at_most(1200.0)),
        );
        report.add("dirtier.rounds", dirtier.rounds, "", None);
        report.add(
            "dirtier.wire_bytes",
            dirtier.wire_bytes,
            "B",
            Some(Goal::at_most(44_000_000.0)),
        );
        Ok(())
    }

    fn random_figures(&self, report: &mut Report) -> anyhow::Result<()> {
        let RandomFigures {
            pipeline,
            cores_used: cores,
            source_cores,
            zstd1,
        } = self.random()?;
        report.add("random.pipeline_mib_s", pipeline, "MiB/s", None);
        report.add("random.zstd1_mib_s", zstd1, "MiB/s", None);
        report.add("random.cores_used", cores, "", None);
        report.add(
            "random.pipeline_per_core_mib_s",
            pipeline / cores.max(1e-9),
            "MiB/s",
            None,
        );
        report.add(
            "random.pipeline_vs_zstd1_per_core",
            pipeline / (zstd1 * cores.max(1e-9)),
            "x",
            Some(Goal::at_least(0.8)),
        );
        // The sending side alone: what replaces "compress with zstd" in the pipeline.
        report.add("random.source_cores_used", source_cores, "", None);
        report.add(
            "random.pipeline_vs_zstd1_per_source_core",
            pipeline / (zstd1 * source_cores.max(1e-9)),
            "x",
            None,
        );
        Ok(())
    }

    fn remigrate_figures(&self, report: &mut Report) -> anyhow::Result<()> {
        let (first, second) = self.remigrate()?;
        report.add("remigrate.first_wire_bytes", first as f64, "B", None);
        report.add("remigrate.wire_bytes", second as f64, "B", None);
        report.add(
            "remigrate.second_vs_first",
            second as f64 / first.max(1) as f64,
            "x",
            Some(Goal::at_most(0.1)),
        );
        Ok(())
    }

    /// Medians of `runs` runs of a workload.
    fn repeat(
        &self,
        runs: usize,
        mut once: impl FnMut() -> anyhow::Result<Moved>,
    ) -> anyhow::Result<Medians> {
        let (mut down, mut total, mut wire, mut rounds) = (vec![], vec![], vec![], vec![]);
        let mut to_confirm = vec![];
        for _ in 0..runs {
            let mut m = once()?;
            let _ = m.destination.send(&Command::Stop);
            let _ = m.destination.wait();
            down.push(m.downtime_ms);
            to_confirm.push(m.pause_to_confirm_ms);
            total.push(m.total_ms);
            wire.push(m.wire_bytes as f64);
            rounds.push(f64::from(m.rounds));
        }
        Ok(Medians {
            downtime_ms: median(&mut down),
            pause_to_confirm_ms: median(&mut to_confirm),
            total_ms: median(&mut total),
            wire_bytes: median(&mut wire),
            rounds: median(&mut rounds),
        })
    }

    /// The published workloads: the pattern, then `spec` runs for `after_ms` and migrates.
    fn idle_or_dirtier(&self, spec: &str, after_ms: u64) -> anyhow::Result<Moved> {
        let mut source = self.spawn_source(spec, None)?;
        if spec == "builtin:dirtier" {
            // The dirtier reports PROGRESS as it laps; wait for it to run, then the rest.
            source.wait_for(TIMEOUT, |e| match e {
                Event::Guest { code, .. } if *code == pv_event::STARTED => Some(()),
                _ => None,
            })?;
        }
        std::thread::sleep(Duration::from_millis(after_ms));
        let moved = self.migrate(&mut source, None, None)?;
        let _ = source.wait();
        Ok(moved)
    }

    /// 256 MiB of incompressible bytes (and nothing else): pipeline MiB/s, the cores it kept
    /// busy (CPU time of both VMMs over wall time), and zstd-1 on one core over the same
    /// bytes.
    fn random(&self) -> anyhow::Result<RandomFigures> {
        let mut source = self.spawn_source_filled("builtin:idle", None, None)?;
        source.send(&Command::Fill {
            gpa: PATTERN_BASE,
            len: RANDOM_LEN,
            data: FillData::Random { seed: 7 },
        })?;
        source.wait_for(TIMEOUT, |e| matches!(e, Event::Filled).then_some(()))?;
        let mut m = self.migrate(&mut source, None, None)?;
        let _ = source.wait();
        let _ = m.destination.send(&Command::Stop);
        let _ = m.destination.wait();
        let moved_mib = RANDOM_LEN as f64 / MIB as f64;
        let pipeline = moved_mib / (m.total_ms / 1e3);
        let cores_used = m.cpu_ns as f64 / 1e6 / m.total_ms;
        let source_cores = m.source_cpu_ns as f64 / 1e6 / m.total_ms;
        let data = novacron_mesh::workload::random(RANDOM_LEN as usize, 7);
        // One reused context, chunk by chunk like the pipeline: zstd at its best.
        let mut zstd1 = zstd::bulk::Compressor::new(1)?;
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(16 << 10)];
        let t = Instant::now();
        let mut compressed = 0usize;
        for piece in data.chunks(16 << 10) {
            compressed += zstd1.compress_to_buffer(piece, &mut out)?;
        }
        let zstd1 = RANDOM_LEN as f64 / MIB as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(compressed);
        Ok(RandomFigures {
            pipeline,
            cores_used,
            source_cores,
            zstd1,
        })
    }

    /// A -> B with the guest's memory filled, dirty 4% on B, B -> A: wire bytes of both.
    fn remigrate(&self) -> anyhow::Result<(u64, u64)> {
        let store_a = self.scratch.join("store-a");
        let fill_len = self.mem_bytes() - PATTERN_BASE - 16 * MIB;
        let mut a = self.spawn_source("builtin:idle", Some(&store_a))?;
        a.send(&Command::Fill {
            gpa: PATTERN_BASE,
            len: fill_len,
            data: FillData::Pattern,
        })?;
        a.wait_for(TIMEOUT, |e| matches!(e, Event::Filled).then_some(()))?;
        let first = self.migrate(&mut a, Some(&store_a), None)?;
        a.wait_for(TIMEOUT, |e| match e {
            Event::ChunksKept { .. } => Some(()),
            _ => None,
        })?;
        let _ = a.wait();
        let mut b = first.destination;
        let dirty = self.mem_bytes() * REMIGRATE_DIRTY_PERCENT / 100;
        b.send(&Command::Fill {
            gpa: PATTERN_BASE + 64 * MIB,
            len: dirty,
            data: FillData::Random { seed: 11 },
        })?;
        b.wait_for(TIMEOUT, |e| matches!(e, Event::Filled).then_some(()))?;
        let mut second = self.migrate(&mut b, None, Some(&store_a))?;
        let _ = b.wait();
        let _ = second.destination.send(&Command::Stop);
        let _ = second.destination.wait();
        Ok((first.wire_bytes, second.wire_bytes))
    }

    /// A source VMM running `spec` with the pattern at 16 MiB.
    fn spawn_source(&self, spec: &str, store: Option<&Path>) -> anyhow::Result<VmmProcess> {
        self.spawn_source_filled(spec, store, Some((PATTERN_BASE, PATTERN_LEN)))
    }

    fn spawn_source_filled(
        &self,
        spec: &str,
        store: Option<&Path>,
        fill_pattern: Option<(u64, u64)>,
    ) -> anyhow::Result<VmmProcess> {
        let launch = Launch {
            vm_id: novacron_vm::process::launcher::new_vm_id(),
            source: LaunchSource::Builtin { spec: spec.into() },
            mem_bytes: self.mem_bytes(),
            vcpus: 1,
            fill_pattern,
            start_paused: false,
            adopt: None,
            result_blob: None,
            sandbox: vmm_sandbox(store),
        };
        if let Some(dir) = store {
            std::fs::create_dir_all(dir)?;
        }
        let mut vmm = VmmProcess::spawn(&self.exe, &launch, Stdio::null())?;
        vmm.wait_ready(TIMEOUT)?;
        Ok(vmm)
    }

    /// Migrates `source` live to a fresh destination VMM (with `dest_store`), keeping the
    /// source's chunks in `source_store` after the move.
    fn migrate(
        &self,
        source: &mut VmmProcess,
        source_store: Option<&Path>,
        dest_store: Option<&Path>,
    ) -> anyhow::Result<Moved> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr: SocketAddr = listener.local_addr()?;
        let session = links::new_session();
        let out = links::connect(addr, self.args.streams, session, Duration::from_secs(5))?;
        let incoming = links::accept(&listener, Duration::from_secs(5))?;
        if let Some(dir) = dest_store {
            std::fs::create_dir_all(dir)?;
        }
        let launch = Launch {
            vm_id: novacron_vm::process::launcher::new_vm_id(),
            source: LaunchSource::Incoming {
                session,
                store: dest_store.map(Path::to_path_buf),
                verify_memory: false,
            },
            mem_bytes: self.mem_bytes(),
            vcpus: 1,
            fill_pattern: None,
            start_paused: false,
            adopt: None,
            result_blob: None,
            sandbox: vmm_sandbox(dest_store),
        };
        let mut destination = VmmProcess::spawn_with_streams(
            &self.exe,
            &launch,
            Stdio::null(),
            &incoming.into_streams(),
        )?;
        source.send_with_streams(
            &Command::MigrateOut(MigrateOut {
                session,
                mode: MigrationMode::Live,
                downtime_budget_ms: self.args.downtime_budget,
                max_rounds: 30,
                max_precopy_ms: 30_000,
                on_no_converge: OnNoConverge::Warm,
                store: source_store.map(Path::to_path_buf),
                verify_memory: false,
            }),
            &out.into_streams(),
        )?;
        let summary: MigrationSummary = source
            .wait_for(TIMEOUT, |e| match e {
                Event::MigratedOut(s) => Some(Ok(s.clone())),
                Event::MigrationFailed { reason, .. } => Some(Err(reason.clone())),
                _ => None,
            })?
            .map_err(|reason| anyhow::anyhow!("the migration rolled back: {reason}"))?;
        let (resumed_ns, dest_cpu_ns) = destination.wait_for(TIMEOUT, |e| match e {
            Event::MigratedIn {
                resumed_ns, cpu_ns, ..
            } => Some((*resumed_ns, *cpu_ns)),
            _ => None,
        })?;
        let Some(paused_ns) = summary.paused_ns else {
            bail!("the source never paused the VM");
        };
        Ok(Moved {
            downtime_ms: resumed_ns.saturating_sub(paused_ns) as f64 / 1e6,
            pause_to_confirm_ms: summary.ended_ns.saturating_sub(paused_ns) as f64 / 1e6,
            total_ms: summary.ended_ns.saturating_sub(summary.started_ns) as f64 / 1e6,
            wire_bytes: summary.progress.wire_bytes,
            rounds: summary.progress.round + 1,
            cpu_ns: summary.cpu_ns + dest_cpu_ns,
            source_cpu_ns: summary.cpu_ns,
            destination,
        })
    }
}

struct RandomFigures {
    pipeline: f64,
    cores_used: f64,
    source_cores: f64,
    zstd1: f64,
}

/// Medians of one workload's runs.
pub(super) struct Medians {
    /// Source pause to destination resume (one clock across both processes).
    pub(super) downtime_ms: f64,
    /// Source pause to the confirm back at the source (the daemon's `downtime_ms`).
    pub(super) pause_to_confirm_ms: f64,
    /// From the source VMM receiving the command to the confirm.
    pub(super) total_ms: f64,
    pub(super) wire_bytes: f64,
    pub(super) rounds: f64,
}

/// The jail of a benchmark VMM that may write chunks into `store`. It runs at the niceness
/// the node daemon gives its VMMs, so `bench node` compares like with like.
fn vmm_sandbox(store: Option<&Path>) -> SandboxSettings {
    SandboxSettings {
        writable_dirs: store.map(Path::to_path_buf).into_iter().collect(),
        nice: Some(crate::politeness::VM_NICE),
        ..SandboxSettings::default()
    }
}
