//! Parameter sweeps (`novacron sim sweep`): one scenario run for every combination of the
//! values given for some of its keys and for every seed, the runs spread over the cores.
//!
//! A sweep sets keys by their dotted path in the scenario (`kademlia.alpha=2,3,4`); each
//! combination is re-checked by [`Scenario::parse`], so a value that cannot be simulated is
//! an error naming its key before any run starts. Each run is the same as `sim run` with
//! that scenario and seed: its output depends on nothing else, so the sweep's results do not
//! depend on how many cores ran it or in which order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::run::{run, RunOutput};
use crate::scenario::{Scenario, ScenarioError};

/// Why a sweep cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SweepError {
    #[error("sweep: `{0}` is not KEY=VALUE[,VALUE...] (e.g. kademlia.alpha=2,3,4)")]
    BadSetting(String),
    #[error("sweep: {key}: a part of the path is a value, not a table")]
    NotATable { key: String },
    #[error("sweep: {key} = {value}: {error}")]
    Invalid {
        key: String,
        value: String,
        error: ScenarioError,
    },
    #[error("sweep: {0} runs is more than the {MAX_RUNS} a sweep may have")]
    TooMany(usize),
    #[error("sweep: nothing to run (no seeds)")]
    Empty,
    #[error("sweep: {0}")]
    Scenario(ScenarioError),
}

/// The most runs one sweep may ask for.
pub const MAX_RUNS: usize = 10_000;

/// One key and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: String,
    pub values: Vec<toml::Value>,
}

impl Setting {
    /// `path=v1,v2,...`; each value is a TOML value (a number, `true`, a quoted string).
    pub fn parse(text: &str) -> Result<Setting, SweepError> {
        let bad = || SweepError::BadSetting(text.chars().take(200).collect());
        let (key, values) = text.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        let valid_key = !key.is_empty()
            && key.len() <= 200
            && key.split('.').all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !valid_key {
            return Err(bad());
        }
        let values = values
            .split(',')
            .map(|v| {
                let v = v.trim();
                toml::from_str::<BTreeMap<String, toml::Value>>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut m| m.remove("v"))
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Setting {
            key: key.to_string(),
            values,
        })
    }
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRun {
    pub index: usize,
    pub seed: u64,
    /// `(key, value)` of each setting, in the order given.
    pub params: Vec<(String, String)>,
    pub scenario: Scenario,
}

fn set_path(doc: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), SweepError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = doc;
    for p in parts {
        // A table the scenario left out (it has defaults) is created; the scenario's check
        // then judges the whole.
        table = table
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| SweepError::NotATable {
                key: key.to_string(),
            })?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// Every combination of `settings` for every seed, each checked, in a fixed order.
pub fn plan(text: &str, settings: &[Setting], seeds: &[u64]) -> Result<Vec<SweepRun>, SweepError> {
    if seeds.is_empty() {
        return Err(SweepError::Empty);
    }
    Scenario::parse(text).map_err(SweepError::Scenario)?;
    let base: toml::Table = toml::from_str(text)
        .map_err(|e| SweepError::Scenario(ScenarioError::Parse(e.message().to_string())))?;
    let total = settings
        .iter()
        .try_fold(seeds.len(), |n, s| n.checked_mul(s.values.len()))
        .unwrap_or(usize::MAX);
    if total > MAX_RUNS {
        return Err(SweepError::TooMany(total));
    }
    let mut runs = Vec::with_capacity(total);
    let mut pick = vec![0usize; settings.len()];
    loop {
        let mut doc = base.clone();
        let mut params = Vec::with_capacity(settings.len());
        for (s, &i) in settings.iter().zip(&pick) {
            let v = s.values[i].clone();
            params.push((s.key.clone(), v.to_string()));
            set_path(&mut doc, &s.key, v)?;
        }
        let text = toml::to_string(&doc).unwrap_or_default();
        let scenario = Scenario::parse(&text).map_err(|error| {
            let (key, value) = params.last().cloned().unwrap_or_default();
            SweepError::Invalid { key, value, error }
        })?;
        for &seed in seeds {
            runs.push(SweepRun {
                index: runs.len(),
                seed,
                params: params.clone(),
                scenario: scenario.clone(),
            });
        }
        // The next combination, the last setting fastest.
        let mut k = settings.len();
        loop {
            if k == 0 {
                return Ok(runs);
            }
            k -= 1;
            pick[k] += 1;
            if pick[k] < settings[k].values.len() {
                break;
            }
            pick[k] = 0;
        }
    }
}

/// Runs `runs` on `jobs` threads; `done` is called (from any thread) after each. The
/// outputs come back in the runs' order.
pub fn run_all(
    runs: &[SweepRun],
    jobs: usize,
    done: &(dyn Fn(usize, &RunOutput) + Sync),
) -> Vec<RunOutput> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunOutput>>> = Mutex::new(vec![None; runs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, runs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = runs.get(i) else { break };
                let out = run(&r.scenario, r.seed, &mut |_| {});
                done(i, &out);
                if let Ok(mut slots) = results.lock() {
                    slots[i] = Some(out);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// `sweep.csv`: a row a run: index, seed, the settings, then every number of its summary
/// (the union of keys over the runs, sorted; empty where a run has none).
pub fn table_csv(runs: &[SweepRun], outs: &[RunOutput]) -> String {
    let figures: Vec<BTreeMap<String, String>> = outs
        .iter()
        .map(|o| {
            let v = serde_json::to_value(&o.summary).unwrap_or_default();
            v.as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, x)| x.is_number())
                        .map(|(k, x)| (k.clone(), x.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let mut keys: Vec<&String> = figures.iter().flat_map(|f| f.keys()).collect();
    keys.sort();
    keys.dedup();
    let setting_keys: Vec<&str> = runs
        .first()
        .map(|r| r.params.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let mut s = String::from("run,seed");
    for k in setting_keys
        .iter()
        .copied()
        .chain(keys.iter().map(|k| k.as_str()))
    {
        let _ = write!(s, ",{k}");
    }
    s.push('\n');
    for (r, f) in runs.iter().zip(&figures) {
        let _ = write!(s, "{},{}", r.index, r.seed);
        for (_, v) in &r.params {
            let _ = write!(s, ",{}", v.replace(',', ";"));
        }
        for k in &keys {
            let _ = write!(s, ",{}", f.get(*k).map_or("", String::as_str));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [run]
        nodes = 300
        hours = 0.1
        [kademlia]
        lookups = 50
    "#;

    #[test]
    fn settings_parse_as_toml_values_and_bad_ones_are_refused() {
        let s = Setting::parse("kademlia.alpha=2, 3,4").unwrap();
        assert_eq!(s.key, "kademlia.alpha");
        assert_eq!(s.values.len(), 3);
        assert_eq!(s.values[1], toml::Value::Integer(3));
        for bad in ["alpha", "=3", "a..b=1", "k=", "k=1,,2", "k=[1", "k y=1"] {
            assert!(Setting::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plan_is_every_combination_for_every_seed_each_checked() {
        let settings = [
            Setting::parse("kademlia.alpha=1,3").unwrap(),
            Setting::parse("network.loss=0.0,0.05,0.1").unwrap(),
        ];
        let plan = plan(BASE, &settings, &[7, 8]).unwrap();
        assert_eq!(plan.len(), 12);
        assert_eq!(plan[0].scenario.kademlia.as_ref().unwrap().alpha, 1);
        assert_eq!(plan[0].scenario.network.loss, 0.0);
        assert_eq!((plan[0].seed, plan[1].seed), (7, 8));
        assert_eq!(plan[2].scenario.network.loss, 0.05);
        assert_eq!(plan[11].scenario.kademlia.as_ref().unwrap().alpha, 3);
        assert_eq!(plan[11].params[1], ("network.loss".into(), "0.1".into()));
        // A value the scenario refuses names its key; a missing table is named too.
        let err = super::plan(BASE, &[Setting::parse("network.loss=2.0").unwrap()], &[1]);
        assert!(matches!(err, Err(SweepError::Invalid { ref key, .. }) if key == "network.loss"));
        // A table left out is created, and judged whole: [epidemic] needs more than a fanout.
        let err = super::plan(BASE, &[Setting::parse("epidemic.fanout=3").unwrap()], &[1]);
        assert!(err.unwrap_err().to_string().contains("interval_ms"));
        let err = super::plan(BASE, &[Setting::parse("run.nodes.x=3").unwrap()], &[1]);
        assert!(matches!(err, Err(SweepError::NotATable { .. })), "{err:?}");
        let err = super::plan(BASE, &[Setting::parse("kademlia.alfa=3").unwrap()], &[1]);
        assert!(err.unwrap_err().to_string().contains("alfa"));
        assert_eq!(super::plan(BASE, &[], &[]), Err(SweepError::Empty));
        assert!(matches!(
            super::plan("[run]\nnodes = 1\n", &[], &[1]),
            Err(SweepError::Scenario(_))
        ));
    }

    #[test]
    fn runs_give_the_same_results_on_any_number_of_threads() {
        let settings = [Setting::parse("kademlia.alpha=1,3").unwrap()];
        let plan = plan(BASE, &settings, &[1, 2]).unwrap();
        let one = run_all(&plan, 1, &|_, _| {});
        let three = run_all(&plan, 3, &|_, _| {});
        assert_eq!(one, three);
        assert_eq!(table_csv(&plan, &one), table_csv(&plan, &three));
        let csv = table_csv(&plan, &one);
        let header = csv.lines().next().unwrap();
        assert!(header.starts_with("run,seed,kademlia.alpha,"), "{header}");
        assert!(header.contains("lookup_hops_p50"), "{header}");
        assert_eq!(csv.lines().count(), 5);
        // alpha 1 sends fewer queries at once than alpha 3: slower lookups.
        let latency = |o: &RunOutput| {
            o.summary
                .kademlia
                .as_ref()
                .unwrap()
                .lookup_latency_ms_p50
                .unwrap()
        };
        assert!(
            latency(&one[0]) > latency(&one[2]),
            "{} vs {}",
            latency(&one[0]),
            latency(&one[2])
        );
    }
}
