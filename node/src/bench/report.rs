//! A benchmark's results: named figures with units and goals, as a table or JSON. Each goal
//! is a bound the figure is checked against, so the report says whether it was met.

use serde_json::{Map, Value};

pub struct Figure {
    pub key: String,
    pub value: f64,
    pub unit: &'static str,
    /// The goal, if it has one.
    pub goal: Option<Goal>,
}

/// A figure's goal: a bound, in words for the table, and whether it applies to this run.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    bound: Bound,
    /// How the table shows it: `<= 5`, `<= 2x direct`, `<= 15 at 50 nodes`.
    text: String,
    /// Why it does not apply to this run (`at 50 nodes` on a mesh of 10), if so.
    not_here: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// Whether a figure met its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The goal is for other conditions than this run's.
    NotApplicable,
}

impl Goal {
    /// The figure must be at most `limit`.
    pub fn at_most(limit: f64) -> Goal {
        Goal {
            bound: Bound::AtMost(limit),
            text: format!("<= {limit}"),
            not_here: None,
        }
    }

    /// The figure must be at least `limit`.
    pub fn at_least(limit: f64) -> Goal {
        Goal {
            bound: Bound::AtLeast(limit),
            text: format!(">= {limit}"),
            not_here: None,
        }
    }

    /// Shown as `text` instead of the bare bound (a bound computed from a reference:
    /// `<= 2x direct`).
    pub fn shown_as(mut self, text: &str) -> Goal {
        self.text = text.to_string();
        self
    }

    /// The goal holds under `condition` (`at 50 nodes`), which this run `meets` or not.
    pub fn under(mut self, condition: &str, meets: bool) -> Goal {
        self.text = format!("{} {condition}", self.text);
        self.not_here = (!meets).then(|| condition.to_string());
        self
    }

    pub fn verdict(&self, value: f64) -> Verdict {
        if self.not_here.is_some() {
            return Verdict::NotApplicable;
        }
        let met = match self.bound {
            Bound::AtMost(limit) => value <= limit,
            Bound::AtLeast(limit) => value >= limit,
        };
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    /// The verdict in the table's words.
    fn verdict_text(&self, value: f64) -> String {
        match self.verdict(value) {
            Verdict::Met => "met".into(),
            Verdict::Missed => "MISSED".into(),
            Verdict::NotApplicable => format!(
                "n/a (only {})",
                self.not_here.as_deref().unwrap_or("elsewhere")
            ),
        }
    }
}

pub struct Report {
    pub suite: &'static str,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(suite: &'static str) -> Self {
        Report {
            suite,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &str, value: f64, unit: &'static str, goal: Option<Goal>) {
        self.figures.push(Figure {
            key: key.to_string(),
            value,
            unit,
            goal,
        });
    }

    /// One JSON object: {"suite": ..., "<key>": value, ..., "goals": {"<key>": {"goal":
    /// "<= 5", "met": true}}, "notes": [...]}. Keys with dots ("idle.downtime_ms") become
    /// nested objects among the figures; `goals` names each figure with a goal by its whole
    /// key, `met` null when the goal does not apply to the run.
    pub fn to_json(&self) -> String {
        let mut root = Map::new();
        root.insert("suite".into(), Value::from(self.suite));
        let mut goals = Map::new();
        for f in &self.figures {
            let rounded = (f.value * 1000.0).round() / 1000.0;
            insert_dotted(&mut root, &f.key, Value::from(rounded));
            if let Some(goal) = &f.goal {
                let met = match goal.verdict(f.value) {
                    Verdict::Met => Value::from(true),
                    Verdict::Missed => Value::from(false),
                    Verdict::NotApplicable => Value::Null,
                };
                let mut entry = Map::new();
                entry.insert("goal".into(), Value::from(goal.text.clone()));
                entry.insert("met".into(), met);
                goals.insert(f.key.clone(), Value::Object(entry));
            }
        }
        root.insert("goals".into(), Value::Object(goals));
        root.insert("notes".into(), Value::from(self.notes.clone()));
        Value::Object(root).to_string()
    }

    pub fn to_table(&self) -> String {
        let width = self.figures.iter().map(|f| f.key.len()).max().unwrap_or(10);
        let goal_width = self
            .figures
            .iter()
            .filter_map(|f| f.goal.as_ref().map(|g| g.text.chars().count()))
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("novacron bench {}\n\n", self.suite);
        let line = |figure: &str, value: &str, unit: &str, goal: &str, verdict: &str| {
            let text =
                format!("{figure:<width$}  {value:>12}  {unit:<6}  {goal:<goal_width$}  {verdict}");
            format!("{}\n", text.trim_end())
        };
        out.push_str(&line("figure", "value", "unit", "goal", "verdict"));
        for f in &self.figures {
            let (goal, verdict) = match &f.goal {
                Some(g) => (g.text.clone(), g.verdict_text(f.value)),
                None => (String::new(), String::new()),
            };
            out.push_str(&line(
                &f.key,
                &format!("{:.3}", f.value),
                f.unit,
                &goal,
                &verdict,
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("\nnote: {n}"));
        }
        out.push('\n');
        out
    }
}

/// Inserts `value` at a dotted path, creating the intermediate objects.
fn insert_dotted(map: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            map.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let child = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                insert_dotted(child, rest, value);
            }
        }
    }
}

/// The median of some samples (0 when there are none).
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

/// The `p`-th percentile (0 < p <= 100) of samples already sorted ascending, by nearest rank:
/// the smallest sample with at least `p`% of the samples at or below it (0 when there are
/// none). No interpolation: with 200 samples the p99 is the 198th, whatever lies between.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    // p * n first: exact for integral p, so p99 of 1000 is rank 990, not 991.
    let rank = (p.clamp(0.0, 100.0) * n as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Runs `measure` in a scratch directory (`dir`, or a fresh one under the system temp dir
/// named after `suite`), removed afterwards whatever happened.
pub fn in_scratch_dir<T>(
    suite: &str,
    dir: Option<&std::path::Path>,
    measure: impl FnOnce(&std::path::Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let scratch = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("novacron-bench-{suite}-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let result = measure(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nests_dotted_keys_and_table_lists_all() {
        let mut r = Report::new("vm");
        r.add("a_ms", 1.23456, "ms", Some(Goal::at_most(5.0)));
        r.add("idle.downtime_ms", 2.0, "ms", None);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["a_ms"], 1.235);
        assert_eq!(v["idle"]["downtime_ms"], 2.0);
        assert!(r.to_table().contains("idle.downtime_ms"));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn every_goal_says_met_or_missed_in_the_table_and_the_json() {
        let mut r = Report::new("migrate");
        r.add("idle.downtime_ms", 1.5, "ms", Some(Goal::at_most(2.0)));
        r.add("dirtier.downtime_ms", 7.0, "ms", Some(Goal::at_most(5.0)));
        r.add("at_limit", 5.0, "ms", Some(Goal::at_most(5.0)));
        r.add("ratio", 0.25, "x", Some(Goal::at_least(0.8)));
        r.add(
            "mesh_ms",
            9.0,
            "ms",
            Some(Goal::at_most(2.0 * 4.0).shown_as("<= 2x direct")),
        );
        r.add(
            "join_s",
            20.0,
            "s",
            Some(Goal::at_most(15.0).under("at 50 nodes", false)),
        );
        r.add("plain", 3.0, "B", None);
        let table = r.to_table();
        let row = |key: &str| {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(key))
                .unwrap_or_else(|| panic!("no row {key}\n{table}"))
                .to_string()
        };
        let header: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["figure", "value", "unit", "goal", "verdict"],
            "{table}"
        );
        assert!(
            row("idle.downtime_ms").contains("<= 2 ") && row("idle.downtime_ms").ends_with(" met"),
            "{table}"
        );
        assert!(row("dirtier.downtime_ms").ends_with("MISSED"), "{table}");
        assert!(row("at_limit").ends_with("met"), "{table}");
        assert!(row("ratio").contains(">= 0.8") && row("ratio").ends_with("MISSED"));
        assert!(row("mesh_ms").contains("<= 2x direct") && row("mesh_ms").ends_with("MISSED"));
        assert!(
            row("join_s").contains("<= 15 at 50 nodes")
                && row("join_s").ends_with("n/a (only at 50 nodes)"),
            "{table}"
        );
        assert!(row("plain").ends_with("B"), "{table}");

        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        let goals = &v["goals"];
        assert_eq!(goals["idle.downtime_ms"]["met"], true);
        assert_eq!(goals["idle.downtime_ms"]["goal"], "<= 2");
        assert_eq!(goals["dirtier.downtime_ms"]["met"], false);
        assert_eq!(goals["ratio"]["met"], false);
        assert_eq!(goals["mesh_ms"]["goal"], "<= 2x direct");
        assert!(goals["join_s"]["met"].is_null());
        assert!(goals.get("plain").is_none());
        assert_eq!(goals.as_object().unwrap().len(), 6);
        // Met at 50 nodes, the goal applies.
        let g = Goal::at_most(15.0).under("at 50 nodes", true);
        assert_eq!(
            (g.verdict(14.0), g.verdict(16.0)),
            (Verdict::Met, Verdict::Missed)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&hundred, 0.5), 1.0);
        // 1000 samples: p99 is the 990th, so the 10 slowest lie above it.
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&thousand, 99.0), 990.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        // 3 samples: p50 is the 2nd, p99 the 3rd (the maximum).
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 99.0), 3.0);
    }
}
