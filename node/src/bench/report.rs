//! A benchmark's results: named figures with units and goals, as a table or JSON.

use serde_json::{Map, Value};

pub struct Figure {
    pub key: String,
    pub value: f64,
    pub unit: &'static str,
    /// The goal, in words ("<= 5"), if it has one.
    pub goal: Option<String>,
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

    pub fn add(&mut self, key: &str, value: f64, unit: &'static str, goal: Option<&str>) {
        self.figures.push(Figure {
            key: key.to_string(),
            value,
            unit,
            goal: goal.map(str::to_string),
        });
    }

    /// One JSON object: {"suite": ..., "<key>": value, ..., "notes": [...]}. Keys with dots
    /// ("idle.downtime_ms") become nested objects.
    pub fn to_json(&self) -> String {
        let mut root = Map::new();
        root.insert("suite".into(), Value::from(self.suite));
        for f in &self.figures {
            let rounded = (f.value * 1000.0).round() / 1000.0;
            insert_dotted(&mut root, &f.key, Value::from(rounded));
        }
        root.insert("notes".into(), Value::from(self.notes.clone()));
        Value::Object(root).to_string()
    }

    pub fn to_table(&self) -> String {
        let width = self.figures.iter().map(|f| f.key.len()).max().unwrap_or(10);
        let mut out = format!("novacron bench {}\n\n", self.suite);
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:<6}  {}\n",
            "figure", "value", "unit", "goal"
        ));
        for f in &self.figures {
            out.push_str(&format!(
                "{:<width$}  {:>12.3}  {:<6}  {}\n",
                f.key,
                f.value,
                f.unit,
                f.goal.as_deref().unwrap_or("")
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
        r.add("a_ms", 1.23456, "ms", Some("<= 5"));
        r.add("idle.downtime_ms", 2.0, "ms", None);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["a_ms"], 1.235);
        assert_eq!(v["idle"]["downtime_ms"], 2.0);
        assert!(r.to_table().contains("idle.downtime_ms"));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
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
