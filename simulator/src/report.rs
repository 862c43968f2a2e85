//! A run's output directory: `summary.json`, CSV series, an SVG plot and `report.md`
//! embedding it. Each file is written to a temporary name and renamed, so a directory never
//! holds half a file; none holds wall-clock figures, so the same scenario and seed give the
//! same bytes.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::epidemic::Broadcast;
use crate::run::RunOutput;
use crate::serf_model;

/// The files a run writes, in the order they are written.
pub const FILES: &[&str] = &[
    "summary.json",
    "broadcasts.csv",
    "dissemination.csv",
    "dissemination.svg",
    "report.md",
];

/// Steps per round of the dissemination series.
const STEPS_PER_ROUND: f64 = 4.0;

/// Writes `out`'s files into `dir` (created if missing).
pub fn write(out: &RunOutput, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let summary = serde_json::to_string_pretty(&out.summary).map_err(io::Error::other)? + "\n";
    write_atomically(&dir.join("summary.json"), summary.as_bytes())?;
    write_atomically(
        &dir.join("broadcasts.csv"),
        broadcasts_csv(&out.broadcasts).as_bytes(),
    )?;
    let series = dissemination(&out.broadcasts);
    write_atomically(
        &dir.join("dissemination.csv"),
        series_csv(&series).as_bytes(),
    )?;
    let svg = dissemination_svg(out, &series)?;
    write_atomically(&dir.join("dissemination.svg"), svg.as_bytes())?;
    write_atomically(&dir.join("report.md"), report_md(out).as_bytes())?;
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("an output path without a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(String::new, |v| format!("{v:.4}"))
}

fn broadcasts_csv(bs: &[Broadcast]) -> String {
    let mut s = String::from("broadcast,origin,live,rounds_to_target,rounds_to_all,messages\n");
    for (i, b) in bs.iter().enumerate() {
        let _ = writeln!(
            s,
            "{i},{},{},{},{},{}",
            b.origin,
            b.live,
            fmt_opt(b.rounds_to_target),
            fmt_opt(b.rounds_to_all),
            b.messages
        );
    }
    s
}

/// Per broadcast: the share of live members that had the message at each quarter round,
/// up to the round its last member got it.
fn dissemination(bs: &[Broadcast]) -> Vec<Vec<(f64, f64)>> {
    bs.iter()
        .map(|b| {
            let last = b.reached_at_rounds.last().copied().unwrap_or(0.0);
            let steps = (last * STEPS_PER_ROUND).ceil() as usize + 1;
            (0..=steps)
                .map(|k| {
                    let r = k as f64 / STEPS_PER_ROUND;
                    let reached = b.reached_at_rounds.partition_point(|t| *t <= r);
                    (r, reached as f64 / b.live.max(1) as f64)
                })
                .collect()
        })
        .collect()
}

fn series_csv(series: &[Vec<(f64, f64)>]) -> String {
    let mut s = String::from("broadcast,round,reached_fraction\n");
    for (i, points) in series.iter().enumerate() {
        for (r, f) in points {
            let _ = writeln!(s, "{i},{r:.2},{f:.6}");
        }
    }
    s
}

fn dissemination_svg(out: &RunOutput, series: &[Vec<(f64, f64)>]) -> io::Result<String> {
    let s = &out.summary;
    let max_round = series
        .iter()
        .flat_map(|p| p.last().map(|(r, _)| *r))
        .fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| io::Error::other(e.to_string());
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Dissemination: {} nodes, fanout {}", s.nodes, s.fanout),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_round, 0.0..1.0)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc("rounds")
            .y_desc("share of live members reached")
            .draw()
            .map_err(draw)?;
        for points in series {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), BLUE.mix(0.35)))
                .map_err(draw)?;
        }
        let n = s.nodes;
        let closed = (0..=(max_round * STEPS_PER_ROUND) as usize).map(|k| {
            let r = k as f64 / STEPS_PER_ROUND;
            (
                r,
                serf_model::reached_fraction(r, n, s.fanout, s.loss, s.failed_fraction),
            )
        });
        chart
            .draw_series(LineSeries::new(closed, RED.stroke_width(2)))
            .map_err(draw)?
            .label("Serf closed form")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

fn report_md(out: &RunOutput) -> String {
    let s = &out.summary;
    let name = if s.scenario.is_empty() {
        "scenario"
    } else {
        &s.scenario
    };
    let mut md = format!("# Simulation: {name}\n\n");
    let _ = writeln!(
        md,
        "Flat epidemic (memberlist-style gossip), {} nodes, fanout {}, interval {} ms, seed {}, {} broadcasts, {} events.\n",
        s.nodes, s.fanout, s.interval_ms, s.seed, s.broadcasts, s.events
    );
    md.push_str("| figure | value |\n|---|---|\n");
    let pct = s.target_fraction * 100.0;
    for (label, v) in [
        (
            format!("rounds to {pct}% p50"),
            fmt_opt(s.rounds_to_target_p50),
        ),
        (
            format!("rounds to {pct}% p90"),
            fmt_opt(s.rounds_to_target_p90),
        ),
        (
            format!("rounds to {pct}% max"),
            fmt_opt(s.rounds_to_target_max),
        ),
        (
            "rounds to all p50".to_string(),
            fmt_opt(s.rounds_to_all_p50),
        ),
        (
            format!("Serf closed form, rounds to {pct}%"),
            format!("{:.4}", s.closed_form_rounds),
        ),
        ("p50 / closed form".to_string(), fmt_opt(s.vs_closed_form)),
        (
            "broadcasts that died out".to_string(),
            s.died_out.to_string(),
        ),
        (
            "messages per node".to_string(),
            format!("{:.3}", s.messages_per_node_mean),
        ),
    ] {
        let _ = writeln!(md, "| {label} | {v} |");
    }
    md.push_str("\n![dissemination](dissemination.svg)\n\nSeries: `dissemination.csv` (share reached per quarter round, per broadcast), `broadcasts.csv`.\n");
    md
}
