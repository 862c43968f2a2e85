//! `novacron sim run` end to end: the real binary on the committed scenario files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn novacron() -> Command {
    Command::new(env!("CARGO_BIN_EXE_novacron"))
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
    let run = novacron()
        .args(["sim", "run"])
        .arg(scenario("smoke-1k.toml"))
        .arg("--out")
        .arg(&out)
        .args(["--seed", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
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
    let table = novacron()
        .args(["sim", "run"])
        .arg(scenario("smoke-1k.toml"))
        .arg("--out")
        .arg(&out)
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
        let run = novacron()
            .args(["sim", "run"])
            .arg(&bad)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1));
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(key), "{err}");
        assert!(!err.contains("secret-value"), "the file was echoed: {err}");
        assert!(!out.exists(), "a refused scenario wrote results");
    }
}
