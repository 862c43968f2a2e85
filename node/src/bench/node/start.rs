//! Daemon start and restart to the first API answer, against the floor of starting this
//! binary at all.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::runtime::Runtime;

use super::measured_node::MeasuredNode;
use super::{ms, NodeBenchArgs};
use crate::bench::report::{median, Goal, Report};

pub(super) fn start_figures(
    rt: &Arc<Runtime>,
    args: &NodeBenchArgs,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let (mut fresh, mut again, mut floor) = (vec![], vec![], vec![]);
    let (mut bound, mut ready_line) = (vec![], vec![]);
    for run in 0..args.runs {
        let dir = scratch.join(format!("start-{run}"));
        let (daemon, t) = MeasuredNode::start(rt, &format!("start-{run}"), &dir, None)?;
        fresh.push(ms(t.first_200));
        bound.push(ms(t.api_bound));
        ready_line.push(ms(t.ready_line));
        drop(daemon);
        let (daemon, t) = MeasuredNode::start(rt, &format!("restart-{run}"), &dir, None)?;
        again.push(ms(t.first_200));
        drop(daemon);
        floor.push(ms(process_start(&exe)?));
    }
    let fresh = median(&mut fresh);
    let floor = median(&mut floor);
    report.add(
        "daemon_start_to_ready_ms",
        fresh,
        "ms",
        Some(Goal::at_most(300.0)),
    );
    report.add("daemon_restart_to_ready_ms", median(&mut again), "ms", None);
    report.add("process_start_ms", floor, "ms", None);
    report.add(
        "daemon_start_vs_process_start",
        fresh / floor.max(1e-9),
        "x",
        None,
    );
    report.add(
        "daemon_start_parts.api_bound_ms",
        median(&mut bound),
        "ms",
        None,
    );
    report.add(
        "daemon_start_parts.ready_line_ms",
        median(&mut ready_line),
        "ms",
        None,
    );
    report.notes.push(format!(
        "start: median of {} fresh data directories; restart on the same directory right \
         after a kill -9; process_start_ms is spawn to exit of `novacron --version`",
        args.runs
    ));
    Ok(())
}

/// Spawn to exit of `novacron --version`.
fn process_start(exe: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run novacron --version")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("novacron --version exited with {status}");
    }
    Ok(took)
}
