//! `novacron sim`: the simulator (simulator/, crate novacron-sim) on a scenario file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use novacron_sim::run::{run, EpidemicSummary, KademliaSummary, Progress};
use novacron_sim::scenario::Scenario;
use novacron_sim::sweep::{self, Setting};

use super::output::outln;

/// Scenario files are small; a bigger file is a mistake, refused before it is read.
const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Run a scenario: writes summary.json, CSV series, SVG plots and report.md into --out
    /// and prints a summary.
    ///
    /// Example: novacron sim run simulator/scenarios/flat-serf.toml --out /tmp/serf
    #[command(verbatim_doc_comment)]
    Run(SimRunArgs),
    /// Run a scenario for every combination of values of some of its keys and for several
    /// seeds, one run per core: each run's files go into --out/run-N/, and sweep.csv has a
    /// row a run (its settings, then every figure of its summary).
    ///
    /// Example: novacron sim sweep simulator/scenarios/smoke-1k.toml --out /tmp/sweep \
    ///            --set kademlia.alpha=1,2,3 --set network.loss=0,0.05 --seeds 4
    #[command(verbatim_doc_comment)]
    Sweep(SimSweepArgs),
}

#[derive(clap::Args, Debug)]
pub struct SimSweepArgs {
    /// The scenario (TOML; see simulator/scenarios/ and docs/simulator.md).
    scenario: PathBuf,
    /// Directory for the results (created if missing; its files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// A key by its dotted path and the values it takes: KEY=VALUE[,VALUE...]; repeat for
    /// more keys (every combination runs).
    #[arg(long = "set", value_name = "KEY=VALUES")]
    settings: Vec<String>,
    /// Seeds per combination: the scenario's `run.seed` and the ones after it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    seeds: u64,
    /// Runs at once (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SimRunArgs {
    /// The scenario (TOML; see simulator/scenarios/ and docs/simulator.md).
    scenario: PathBuf,
    /// Directory for the results (created if missing; its files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Seed of every random draw (default: the scenario's `run.seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run_command(cmd: SimCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SimCommand::Run(args) => run_scenario(&args),
        SimCommand::Sweep(args) => run_sweep(&args),
    }
}

fn read_scenario(path: &std::path::Path) -> anyhow::Result<Scenario> {
    Ok(read_scenario_text(path)?.0)
}

/// The scenario and its text, checked.
fn read_scenario_text(path: &std::path::Path) -> anyhow::Result<(Scenario, String)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the scenario {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_SCENARIO_BYTES,
        "the scenario {} is {} bytes, more than the {MAX_SCENARIO_BYTES} a scenario may have",
        path.display(),
        meta.len()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the scenario {}", path.display()))?;
    let scenario = Scenario::parse(&text)
        .with_context(|| format!("{} is not a scenario to run", path.display()))?;
    Ok((scenario, text))
}

fn run_sweep(args: &SimSweepArgs) -> anyhow::Result<ExitCode> {
    let (scenario, text) = read_scenario_text(&args.scenario)?;
    let settings = args
        .settings
        .iter()
        .map(|s| Setting::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let first = scenario.run.seed;
    let seeds: Vec<u64> = (0..args.seeds).map(|i| first.wrapping_add(i)).collect();
    let runs = sweep::plan(&text, &settings, &seeds)?;
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        |j| j as usize,
    );
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        super::output::progress_bar(
            runs.len() as u64,
            "{spinner} sweeping [{bar:30}] {pos}/{len} runs {wide_msg}",
        )
    });
    let started = Instant::now();
    let outs = sweep::run_all(&runs, jobs, &|_, _| {
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    });
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for (r, out) in runs.iter().zip(&outs) {
        let dir = args.out.join(format!("run-{}", r.index));
        novacron_sim::report::write(out, &dir)
            .with_context(|| format!("cannot write the results into {}", dir.display()))?;
    }
    let csv = sweep::table_csv(&runs, &outs);
    let csv_path = args.out.join("sweep.csv");
    let tmp = args.out.join(".sweep.csv.tmp");
    std::fs::write(&tmp, csv.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &csv_path))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let events: u64 = outs.iter().map(|o| o.summary.events).sum();
    let events_per_s = events as f64 / wall_s.max(1e-9);
    let peak = peak_rss_mib();
    if args.json {
        let results = runs
            .iter()
            .zip(&outs)
            .map(|(r, o)| {
                let mut v = serde_json::to_value(&o.summary)?;
                if let Some(obj) = v.as_object_mut() {
                    let params: serde_json::Map<String, serde_json::Value> = r
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect();
                    obj.insert("params".into(), params.into());
                    obj.insert("run".into(), r.index.into());
                }
                Ok(v)
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let v = serde_json::json!({
            "runs": runs.len(),
            "jobs": jobs,
            "wall_s": wall_s,
            "events": events,
            "events_per_s": events_per_s,
            "peak_rss_mib": peak,
            "out": args.out.display().to_string(),
            "results": results,
        });
        outln!("{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    for (r, o) in runs.iter().zip(&outs) {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "run {:<4} seed {:<6} {:<40} {} events",
            r.index,
            r.seed,
            params.join(" "),
            o.summary.events
        )?;
    }
    outln!(
        "sweep         {} runs on {jobs} threads in {wall_s:.2} s wall ({events_per_s:.0} events/s), peak RSS {} MiB",
        runs.len(),
        opt(peak)
    )?;
    outln!(
        "results       {} (one row a run: {})",
        args.out.display(),
        csv_path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// This process's peak resident set, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let kib = crate::bench::proc_usage::peak_rss_kib(std::process::id()).ok()?;
    Some(kib as f64 / 1024.0)
}

fn run_scenario(args: &SimRunArgs) -> anyhow::Result<ExitCode> {
    let scenario = read_scenario(&args.scenario)?;
    let seed = args.seed.unwrap_or(scenario.run.seed);
    let bar = (!args.json && std::io::stderr().is_terminal())
        .then(|| super::output::progress_bar(1, "{spinner} simulating [{bar:30}] {wide_msg}"));
    let started = Instant::now();
    let mut on_progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            let rate = p.events as f64 / secs;
            bar.set_message(if p.in_sim_time {
                format!(
                    "{:.2} of {:.2} simulated hours, {rate:.0} events/s",
                    p.done as f64 / 3.6e9,
                    p.total as f64 / 3.6e9
                )
            } else {
                format!("{} of {} broadcasts, {rate:.0} events/s", p.done, p.total)
            });
        }
    };
    let out = run(&scenario, seed, &mut on_progress);
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    novacron_sim::report::write(&out, &args.out)
        .with_context(|| format!("cannot write the results into {}", args.out.display()))?;
    let s = &out.summary;
    let events_per_s = s.events as f64 / wall_s.max(1e-9);
    let peak = peak_rss_mib();
    if args.json {
        let mut v = serde_json::to_value(s)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("wall_s".into(), wall_s.into());
            obj.insert("events_per_s".into(), events_per_s.into());
            obj.insert("peak_rss_mib".into(), peak.into());
            obj.insert("out".into(), args.out.display().to_string().into());
        }
        outln!("{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "scenario      {} ({} nodes, seed {}, {:.2} simulated hours; {})",
        s.scenario,
        s.nodes,
        s.seed,
        s.sim_hours,
        s.models.join(", ")
    )?;
    if let Some(e) = &s.epidemic {
        print_epidemic(e)?;
    }
    if let Some(c) = &s.churn {
        outln!(
            "churn         availability {:.3} (clusters: {:.3}), {} departures, {} arrivals",
            c.availability,
            c.availability_expected,
            c.departures,
            c.arrivals
        )?;
    }
    if let Some(o) = &s.owner {
        outln!(
            "owners        VMs may run {:.3} of up-time ({:.3} of it with the owner there), must leave {:.3}; {:.3} evacuations a node-hour",
            o.polite_run_fraction,
            o.run_owner_active_fraction,
            o.evacuate_fraction,
            o.evacuations_per_node_hour
        )?;
    }
    if let Some(k) = &s.kademlia {
        print_kademlia(k)?;
    }
    outln!(
        "events        {} in {wall_s:.2} s wall ({events_per_s:.0} events/s), peak RSS {} MiB",
        s.events,
        opt(peak)
    )?;
    outln!("results       {}", args.out.display())?;
    Ok(ExitCode::SUCCESS)
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

fn print_epidemic(e: &EpidemicSummary) -> anyhow::Result<()> {
    let pct = e.target_fraction * 100.0;
    outln!(
        "epidemic      fanout {}, interval {} ms, {} broadcasts",
        e.fanout,
        e.interval_ms,
        e.broadcasts
    )?;
    outln!(
        "rounds to {pct}%  p50 {}  p90 {}  max {}",
        opt(e.rounds_to_target_p50),
        opt(e.rounds_to_target_p90),
        opt(e.rounds_to_target_max)
    )?;
    outln!(
        "closed form   {:.2} rounds (Serf); p50 / closed form {}",
        e.closed_form_rounds,
        opt(e.vs_closed_form)
    )?;
    outln!("died out      {} of {}", e.died_out, e.broadcasts)?;
    Ok(())
}

fn print_kademlia(k: &KademliaSummary) -> anyhow::Result<()> {
    outln!(
        "lookups       {}: hops p50 {} p90 {} (walk p50 {} p90 {}), latency p50 {} ms p99 {} ms",
        k.lookups,
        opt(k.lookup_hops_p50),
        opt(k.lookup_hops_p90),
        opt(k.lookup_walk_hops_p50),
        opt(k.lookup_walk_hops_p90),
        opt(k.lookup_latency_ms_p50),
        opt(k.lookup_latency_ms_p99)
    )?;
    outln!(
        "              found the closest live server {}, {} unresponsive peers a lookup",
        opt(k.lookup_success),
        opt(k.lookup_unresponsive_mean)
    )?;
    outln!(
        "tables        {} entries, {} stale, {:.0} state bytes a node",
        opt(k.table_entries_mean),
        opt(k.table_stale_fraction_mean),
        k.state_bytes_per_node
    )?;
    Ok(())
}
