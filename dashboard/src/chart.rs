//! Line charts as SVG, drawn on the server: a y axis with units, an x axis of minutes before
//! now, one polyline per series, a legend. No script is needed to see them.

use leptos::prelude::*;

use crate::format;

/// Drawing area, in SVG units (the SVG scales to its container).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Points drawn per series at most (a bucket keeps its largest value: peaks stay visible).
pub const MAX_POINTS: usize = 240;

/// What a chart's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Bytes,
    BytesPerSecond,
}

impl Unit {
    fn label(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.0}%"),
            Unit::Bytes => format::bytes(v as u64),
            Unit::BytesPerSecond => format::rate(v),
        }
    }

    /// The top of the y axis for values up to `max`: a round number at or above it.
    fn axis_max(self, max: f64) -> f64 {
        match self {
            Unit::Percent => 100.0,
            Unit::Bytes | Unit::BytesPerSecond => {
                if max <= 0.0 {
                    return 1024.0;
                }
                // 1, 2 or 5 times a power of 2 in KiB steps reads well with binary units.
                let mut step = 1.0;
                while step * 5.0 < max {
                    step *= 2.0;
                }
                [1.0, 2.0, 4.0, 5.0]
                    .iter()
                    .map(|m| m * step)
                    .find(|v| *v >= max)
                    .unwrap_or(step * 8.0)
            }
        }
    }
}

/// One line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: &'static str,
    /// `(at_ms, value)`, oldest first.
    pub points: Vec<(u64, f64)>,
}

/// A chart's SVG geometry, computed apart from its markup so it can be checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// One `points` attribute per series.
    pub lines: Vec<String>,
    /// `(y, label)` of each y tick.
    pub y_ticks: Vec<(f64, String)>,
    /// `(x, label)` of each x tick.
    pub x_ticks: Vec<(f64, String)>,
}

/// Lays out `series` ending at `now_ms` over `span_ms`.
pub fn geometry(unit: Unit, series: &[Series], now_ms: u64, span_ms: u64) -> Geometry {
    let span_ms = span_ms.max(60_000);
    let start = now_ms.saturating_sub(span_ms);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let top = unit.axis_max(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |at: u64| LEFT + (at.saturating_sub(start) as f64 / span_ms as f64) * plot_w;
    let y_of = |v: f64| TOP + plot_h - (v.clamp(0.0, top) / top) * plot_h;
    let lines = series
        .iter()
        .map(|s| {
            downsample(&s.points)
                .iter()
                .filter(|(at, _)| *at >= start)
                .map(|&(at, v)| format!("{:.1},{:.1}", x_of(at), y_of(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let y_ticks = (0..=4)
        .map(|i| {
            let v = top * i as f64 / 4.0;
            (y_of(v), unit.label(v))
        })
        .collect();
    let x_ticks = (0..=4u64)
        .map(|i| {
            let back = span_ms * (4 - i) / 4;
            let label = match back {
                0 => "now".to_string(),
                b if span_ms < 300_000 => format!("−{} s", b / 1000),
                b => format!("−{} min", b / 60_000),
            };
            (x_of(now_ms - back.min(now_ms)), label)
        })
        .collect();
    Geometry {
        lines,
        y_ticks,
        x_ticks,
    }
}

/// At most [`MAX_POINTS`] points: consecutive buckets, each its latest time and largest value.
fn downsample(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .map(|c| {
            let at = c.last().map_or(0, |p| p.0);
            (at, c.iter().map(|p| p.1).fold(f64::MIN, f64::max))
        })
        .collect()
}

/// A chart: its title, axes in `unit`, and one line per series (at most four styles).
pub fn line_chart(
    title: &'static str,
    unit: Unit,
    series: Vec<Series>,
    now_ms: u64,
    span_ms: u64,
) -> impl IntoView {
    let g = geometry(unit, &series, now_ms, span_ms);
    let axis_bottom = HEIGHT - BOTTOM;
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let last = s.points.last().map_or("–".to_string(), |p| unit.label(p.1));
            view! {
                <li><span class=format!("swatch s{i}")></span>{format!("{}: ", s.label)}<b>{last}</b></li>
            }
        })
        .collect_view();
    let grid = g
        .y_ticks
        .iter()
        .map(|(y, label)| {
            view! {
                <line class="grid" x1=LEFT x2=WIDTH - RIGHT y1=*y y2=*y></line>
                <text class="tick" x=LEFT - 6.0 y=y + 4.0 text-anchor="end">{label.clone()}</text>
            }
        })
        .collect_view();
    let x_labels = g
        .x_ticks
        .iter()
        .map(|(x, label)| {
            view! {
                <text class="tick" x=*x y=axis_bottom + 18.0 text-anchor="middle">{label.clone()}</text>
            }
        })
        .collect_view();
    let lines = g
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, points)| view! { <polyline class=format!("line s{i}") points=points></polyline> })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label=title>
                {grid}
                <line class="axis" x1=LEFT x2=LEFT y1=TOP y2=axis_bottom></line>
                <line class="axis" x1=LEFT x2=WIDTH - RIGHT y1=axis_bottom y2=axis_bottom></line>
                {x_labels}
                {lines}
            </svg>
            <ul class="legend">{legend}</ul>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_lines_stay_inside_them() {
        let s = vec![Series {
            label: "sent",
            points: vec![(0, 0.0), (30_000, 3_000.0), (60_000, 1_500.0)],
        }];
        let g = geometry(Unit::BytesPerSecond, &s, 60_000, 60_000);
        assert_eq!(g.y_ticks.last().unwrap().1, "4.0 KiB/s");
        assert_eq!(g.y_ticks[0].1, "0 B/s");
        assert_eq!(g.x_ticks.last().unwrap().1, "now");
        assert_eq!(g.x_ticks[0].1, "−60 s");
        assert_eq!(g.x_ticks[1].1, "−45 s");
        for pair in g.lines[0].split(' ') {
            let (x, y) = pair.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
        }
        assert_eq!(Unit::Percent.axis_max(3.0), 100.0);
        assert_eq!(Unit::Bytes.axis_max(0.0), 1024.0);
    }

    #[test]
    fn long_series_are_thinned_keeping_peaks() {
        let mut points: Vec<(u64, f64)> = (0..2_000).map(|i| (i * 1_000, 1.0)).collect();
        points[1_234].1 = 99.0;
        let d = downsample(&points);
        assert!(d.len() <= MAX_POINTS);
        assert!(d.iter().any(|p| p.1 == 99.0));
    }

    #[test]
    fn a_chart_renders_its_title_units_and_legend() {
        let html = line_chart(
            "CPU",
            Unit::Percent,
            vec![Series {
                label: "host",
                points: vec![(1_000, 12.0), (3_000, 40.0)],
            }],
            3_000,
            600_000,
        )
        .to_html();
        assert!(html.contains("<figcaption>CPU</figcaption>"), "{html}");
        assert!(html.contains("100%") && html.contains("−10 min"), "{html}");
        assert!(html.contains("host: <b>40%</b>"), "{html}");
        assert!(html.contains("<polyline"), "{html}");
    }
}
