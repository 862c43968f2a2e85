//! A run's output directory: `summary.json`, CSV series, SVG plots and `report.md`
//! embedding them, for each model that ran. Each file is written to a temporary name and
//! renamed, so a directory never holds half a file; none holds wall-clock figures, so the
//! same scenario and seed give the same bytes.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::epidemic::Broadcast;
use crate::kademlia::Lookup;
use crate::overlay::Sample;
use crate::run::{ChurnSummary, EpidemicSummary, KademliaSummary, OwnerSummary, RunOutput};
use crate::serf_model;

/// Steps per round of the dissemination series.
const STEPS_PER_ROUND: f64 = 4.0;

/// Writes `out`'s files into `dir` (created if missing); returns their names, in the order
/// they were written.
pub fn write(out: &RunOutput, dir: &Path) -> io::Result<Vec<&'static str>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let mut put = |name: &'static str, text: String| -> io::Result<()> {
        write_atomically(&dir.join(name), text.as_bytes())?;
        files.push(name);
        Ok(())
    };
    let summary = serde_json::to_string_pretty(&out.summary).map_err(io::Error::other)? + "\n";
    put("summary.json", summary)?;
    if let Some(e) = &out.summary.epidemic {
        put("broadcasts.csv", broadcasts_csv(&out.broadcasts))?;
        let series = dissemination(&out.broadcasts);
        put("dissemination.csv", series_csv(&series))?;
        put(
            "dissemination.svg",
            dissemination_svg(out.summary.nodes, e, &series)?,
        )?;
    }
    if let Some(o) = &out.overlay {
        put("mesh.csv", samples_csv(&o.samples))?;
        put("mesh.svg", mesh_svg(&o.samples, o.hours)?)?;
        if out.summary.kademlia.is_some() {
            put("lookups.csv", lookups_csv(&o.lookups))?;
            put("lookup_hops.svg", hops_svg(&o.lookups)?)?;
        }
    }
    put("report.md", report_md(out))?;
    Ok(files)
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

fn samples_csv(samples: &[Sample]) -> String {
    let mut s = String::from("hour,up,servers_up,table_entries_mean,stale_fraction\n");
    for x in samples {
        let _ = writeln!(
            s,
            "{:.4},{},{},{:.2},{:.6}",
            x.at_h, x.up, x.servers_up, x.table_entries_mean, x.stale_fraction
        );
    }
    s
}

fn lookups_csv(ls: &[Lookup]) -> String {
    let mut s = String::from(
        "lookup,from,hops,walk_hops,latency_ms,queries,unresponsive,finished,found_closest\n",
    );
    for (i, l) in ls.iter().enumerate() {
        let _ = writeln!(
            s,
            "{i},{},{},{},{:.3},{},{},{},{}",
            l.from,
            l.hops,
            l.walk_hops,
            l.latency.as_millis_f64(),
            l.queries,
            l.unresponsive,
            u8::from(l.finished),
            u8::from(l.found_closest)
        );
    }
    s
}

/// One line of a chart; only labelled lines are in the legend.
struct Line {
    label: Option<String>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
}

/// A line chart as SVG text.
fn line_chart(
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    (x_max, y_max): (f64, f64),
    lines: &[Line],
) -> io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| io::Error::other(e.to_string());
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(draw)?;
        let mut labelled = false;
        for line in lines {
            let series = chart
                .draw_series(LineSeries::new(line.points.iter().copied(), line.style))
                .map_err(draw)?;
            if let Some(label) = &line.label {
                let style = line.style;
                series
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
                labelled = true;
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(draw)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

fn dissemination_svg(
    nodes: u64,
    e: &EpidemicSummary,
    series: &[Vec<(f64, f64)>],
) -> io::Result<String> {
    let max_round = series
        .iter()
        .flat_map(|p| p.last().map(|(r, _)| *r))
        .fold(1.0, f64::max);
    let mut lines: Vec<Line> = series
        .iter()
        .map(|points| Line {
            label: None,
            points: points.clone(),
            style: BLUE.mix(0.35).into(),
        })
        .collect();
    let closed = (0..=(max_round * STEPS_PER_ROUND) as usize)
        .map(|k| {
            let r = k as f64 / STEPS_PER_ROUND;
            let f = serf_model::reached_fraction(r, nodes, e.fanout, e.loss, e.failed_fraction);
            (r, f)
        })
        .collect();
    lines.push(Line {
        label: Some("Serf closed form".into()),
        points: closed,
        style: RED.stroke_width(2),
    });
    line_chart(
        &format!("Dissemination: {nodes} nodes, fanout {}", e.fanout),
        ("rounds", "share of live members reached"),
        (max_round, 1.0),
        &lines,
    )
}

fn mesh_svg(samples: &[Sample], hours: f64) -> io::Result<String> {
    let nodes_up_max = samples.iter().map(|s| s.up).max().unwrap_or(1).max(1) as f64;
    let share = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.at_h, f(s))).collect();
    let lines = [
        Line {
            label: Some("hosts up (share of the most up)".into()),
            points: share(&|s| s.up as f64 / nodes_up_max),
            style: BLUE.stroke_width(2),
        },
        Line {
            label: Some("stale routing-table entries".into()),
            points: share(&|s| s.stale_fraction),
            style: RED.stroke_width(2),
        },
    ];
    line_chart(
        "The mesh over time",
        ("hours", "share"),
        (hours.max(1e-6), 1.0),
        &lines,
    )
}

/// The share of lookups with at most `x` hops, for x = 0..=max.
fn cdf(values: impl Iterator<Item = u32> + Clone) -> Vec<(f64, f64)> {
    let n = values.clone().count().max(1) as f64;
    let max = values.clone().max().unwrap_or(0);
    (0..=max)
        .map(|x| {
            let at_most = values.clone().filter(|&v| v <= x).count() as f64;
            (f64::from(x), at_most / n)
        })
        .collect()
}

fn hops_svg(ls: &[Lookup]) -> io::Result<String> {
    let hops = cdf(ls.iter().map(|l| l.hops));
    let walk = cdf(ls.iter().map(|l| l.walk_hops));
    let x_max = walk.last().map_or(1.0, |p| p.0.max(1.0));
    let lines = [
        Line {
            label: Some("hops to the k closest".into()),
            points: hops,
            style: BLUE.stroke_width(2),
        },
        Line {
            label: Some("walk hops".into()),
            points: walk,
            style: RED.stroke_width(2),
        },
    ];
    line_chart(
        &format!("Lookup hops, {} lookups (CDF)", ls.len()),
        ("hops", "share of lookups"),
        (x_max, 1.0),
        &lines,
    )
}

fn table(md: &mut String, rows: &[(String, String)]) {
    md.push_str("| figure | value |\n|---|---|\n");
    for (label, v) in rows {
        let _ = writeln!(md, "| {label} | {v} |");
    }
    md.push('\n');
}

fn epidemic_md(md: &mut String, e: &EpidemicSummary) {
    let _ = writeln!(
        md,
        "## Flat epidemic\n\nmemberlist-style gossip, fanout {}, interval {} ms, {} broadcasts.\n",
        e.fanout, e.interval_ms, e.broadcasts
    );
    let pct = e.target_fraction * 100.0;
    table(
        md,
        &[
            (
                format!("rounds to {pct}% p50"),
                fmt_opt(e.rounds_to_target_p50),
            ),
            (
                format!("rounds to {pct}% p90"),
                fmt_opt(e.rounds_to_target_p90),
            ),
            (
                format!("rounds to {pct}% max"),
                fmt_opt(e.rounds_to_target_max),
            ),
            ("rounds to all p50".into(), fmt_opt(e.rounds_to_all_p50)),
            (
                format!("Serf closed form, rounds to {pct}%"),
                format!("{:.4}", e.closed_form_rounds),
            ),
            ("p50 / closed form".into(), fmt_opt(e.vs_closed_form)),
            ("broadcasts that died out".into(), e.died_out.to_string()),
            (
                "messages per node".into(),
                format!("{:.3}", e.messages_per_node_mean),
            ),
        ],
    );
    md.push_str("![dissemination](dissemination.svg)\n\nSeries: `dissemination.csv` (share reached per quarter round, per broadcast), `broadcasts.csv`.\n\n");
}

fn churn_md(md: &mut String, c: &ChurnSummary) {
    md.push_str(
        "## Churn\n\nHosts alternate up and down intervals of their cluster, from equilibrium.\n\n",
    );
    table(
        md,
        &[
            ("availability".into(), format!("{:.4}", c.availability)),
            (
                "clusters' long-run availability".into(),
                format!("{:.4}", c.availability_expected),
            ),
            ("departures".into(), c.departures.to_string()),
            ("arrivals".into(), c.arrivals.to_string()),
            (
                "departures per node-hour".into(),
                format!("{:.4}", c.departures_per_node_hour),
            ),
        ],
    );
}

fn kademlia_md(md: &mut String, k: &KademliaSummary) {
    md.push_str("## Kademlia\n\nRouting tables and iterative lookups (libp2p's rules, the node's subnet cap and refresh schedule).\n\n");
    table(
        md,
        &[
            ("lookups".into(), k.lookups.to_string()),
            (
                "hops to the k closest p50 / p90 / p99".into(),
                format!(
                    "{} / {} / {}",
                    fmt_opt(k.lookup_hops_p50),
                    fmt_opt(k.lookup_hops_p90),
                    fmt_opt(k.lookup_hops_p99)
                ),
            ),
            (
                "walk hops p50 / p90".into(),
                format!(
                    "{} / {}",
                    fmt_opt(k.lookup_walk_hops_p50),
                    fmt_opt(k.lookup_walk_hops_p90)
                ),
            ),
            (
                "latency ms p50 / p90 / p99".into(),
                format!(
                    "{} / {} / {}",
                    fmt_opt(k.lookup_latency_ms_p50),
                    fmt_opt(k.lookup_latency_ms_p90),
                    fmt_opt(k.lookup_latency_ms_p99)
                ),
            ),
            (
                "found the closest live server".into(),
                fmt_opt(k.lookup_success),
            ),
            ("queries per lookup".into(), fmt_opt(k.lookup_queries_mean)),
            (
                "unresponsive peers per lookup".into(),
                fmt_opt(k.lookup_unresponsive_mean),
            ),
            ("table refreshes".into(), k.table_refreshes.to_string()),
            ("table entries (mean)".into(), fmt_opt(k.table_entries_mean)),
            (
                "stale table entries (mean share)".into(),
                fmt_opt(k.table_stale_fraction_mean),
            ),
            (
                "state bytes per node".into(),
                format!("{:.0}", k.state_bytes_per_node),
            ),
        ],
    );
    md.push_str(
        "![lookup hops](lookup_hops.svg)\n\nSeries: `lookups.csv` (one line a lookup).\n\n",
    );
}

fn owner_md(md: &mut String, o: &OwnerSummary) {
    md.push_str("## Owners and politeness\n\nOwners come and go at their machines; the node's own politeness state machine decides.\n\n");
    table(
        md,
        &[
            (
                "VMs may run (share of up-time)".into(),
                format!("{:.4}", o.polite_run_fraction),
            ),
            (
                "of which with the owner at the machine".into(),
                format!("{:.4}", o.run_owner_active_fraction),
            ),
            (
                "VMs must leave (share of up-time)".into(),
                format!("{:.4}", o.evacuate_fraction),
            ),
            (
                "evacuations per node-hour".into(),
                format!("{:.4}", o.evacuations_per_node_hour),
            ),
            (
                "owner returns while VMs ran, per node-hour".into(),
                format!("{:.4}", o.owner_returns_per_node_hour),
            ),
        ],
    );
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
        "{} nodes, seed {}, {:.3} simulated hours, {} events; models: {}.\n",
        s.nodes,
        s.seed,
        s.sim_hours,
        s.events,
        s.models.join(", ")
    );
    if let Some(e) = &s.epidemic {
        epidemic_md(&mut md, e);
    }
    if let Some(c) = &s.churn {
        churn_md(&mut md, c);
    }
    if let Some(o) = &s.owner {
        owner_md(&mut md, o);
    }
    if out.overlay.is_some() {
        md.push_str("![the mesh over time](mesh.svg)\n\nSeries: `mesh.csv` (hosts up, routing-table entries and their stale share, 96 samples).\n\n");
    }
    if let Some(k) = &s.kademlia {
        kademlia_md(&mut md, k);
    }
    md
}
