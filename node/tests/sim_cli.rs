//! `novacron sim run` end to end: the real binary on the committed scenario files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `novacron sim <what> <scenario> --out <out>`, more arguments to add.
fn sim(what: &str, scenario: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_novacron"));
    cmd.args(["sim", what]).arg(scenario).arg("--out").arg(out);
    cmd
}

/// Runs `cmd`, which must succeed, and parses the one JSON object it prints.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../simulator/scenarios")
        .join(name)
}

#[test]
fn a_run_prints_one_json_object_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let v = json_of(sim("run", &scenario("smoke-1k.toml"), &out).args(["--seed", "3", "--json"]));
    for key in [
        "nodes",
        "sim_hours",
        "wall_s",
        "peak_rss_mib",
        "events",
        "events_per_s",
        "rounds_to_target_p50",
        "closed_form_rounds",
        "lookup_hops_p50",
        "lookup_hops_p90",
        "availability",
        "polite_run_fraction",
    ] {
        assert!(
            v.get(key).is_some_and(|x| !x.is_null()),
            "{key} missing: {v}"
        );
    }
    assert_eq!(v["nodes"], 1000);
    assert_eq!(v["seed"], 3);
    assert!(v["events"].as_u64().unwrap() > 1000);
    for f in [
        "summary.json",
        "broadcasts.csv",
        "dissemination.csv",
        "dissemination.svg",
        "mesh.csv",
        "mesh.svg",
        "lookups.csv",
        "lookup_hops.svg",
        "report.md",
    ] {
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len > 0, "{f} is empty");
    }
    // The human table says where the results are.
    let table = sim("run", &scenario("smoke-1k.toml"), &out)
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("closed form") && text.contains("events"),
        "{text}"
    );
}

#[test]
fn a_bad_scenario_is_refused_naming_the_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let out = dir.path().join("results");
    for (text, key) in [
        (
            "[run]\nnodes = 1000\n[epidemic]\nfanout = 0\ninterval_ms = 200\nbroadcasts = 1\n",
            "epidemic.fanout",
        ),
        (
            "[run]\nnodes = 1000\nnodez = 4\n[epidemic]\nfanout = 3\ninterval_ms = 200\nbroadcasts = 1\n",
            "nodez",
        ),
        ("root:x:0:0:secret-value\n", "line 1"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let run = sim("run", &bad, &out)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1));
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(key), "{err}");
        assert!(!err.contains("secret-value"), "the file was echoed: {err}");
        assert!(!out.exists(), "a refused scenario wrote results");
    }
}

#[test]
fn a_sweep_runs_every_combination_and_tabulates_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let v = json_of(sim("sweep", &scenario("smoke-1k.toml"), &out).args([
        "--set",
        "kademlia.alpha=1,3",
        "--seeds",
        "2",
        "--json",
    ]));
    assert_eq!(v["runs"], 4);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["params"]["kademlia.alpha"], "1");
    assert_eq!(results[3]["params"]["kademlia.alpha"], "3");
    assert_eq!(
        (results[0]["seed"].clone(), results[1]["seed"].clone()),
        (1.into(), 2.into())
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("run,seed,kademlia.alpha,"), "{csv}");
    for i in 0..4 {
        assert!(out.join(format!("run-{i}/summary.json")).exists());
    }
    // A run of the sweep is the run `sim run` makes with the same settings and seed.
    let single = dir.path().join("single");
    let alpha1 = dir.path().join("alpha1.toml");
    let text = std::fs::read_to_string(scenario("smoke-1k.toml")).unwrap();
    std::fs::write(
        &alpha1,
        text.replace("lookups = 2000", "lookups = 2000\nalpha = 1"),
    )
    .unwrap();
    let one = sim("run", &alpha1, &single)
        .args(["--seed", "2"])
        .output()
        .unwrap();
    assert!(one.status.success());
    assert_ne!(
        std::fs::read(out.join("run-1/lookups.csv")).unwrap(),
        std::fs::read(out.join("run-3/lookups.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(single.join("lookups.csv")).unwrap(),
        std::fs::read(out.join("run-1/lookups.csv")).unwrap()
    );
    // A value the scenario refuses is named, and nothing is written.
    let refused = dir.path().join("refused");
    let bad = sim("sweep", &scenario("smoke-1k.toml"), &refused)
        .args(["--set", "network.loss=0.1,7"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("network.loss"), "{err}");
    assert!(!refused.exists());
}
