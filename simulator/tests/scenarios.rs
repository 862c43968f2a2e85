//! The scenario files under `simulator/scenarios/`: each parses, `flat-serf.toml` matches
//! Serf's closed form, and a run's output files depend on its seed and on nothing else.

use std::path::{Path, PathBuf};

use novacron_sim::report;
use novacron_sim::run::run;
use novacron_sim::scenario::Scenario;

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

fn load(name: &str) -> Scenario {
    let text = std::fs::read_to_string(scenario_path(name)).unwrap();
    Scenario::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_scenario_file_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(scenario_path("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "only {seen} scenario files");
}

#[test]
fn flat_serf_matches_serfs_closed_form_within_ten_percent() {
    let s = load("flat-serf.toml");
    let out = run(&s, s.run.seed, &mut |_| {});
    assert_eq!(out.summary.nodes, 50_000);
    let sum = out.summary.epidemic.as_ref().unwrap();
    assert_eq!(sum.died_out, 0);
    // mesh-models.toml: 99.99% of 50,000 in 7 rounds at fanout 3.
    assert_eq!(sum.closed_form_rounds.ceil(), 7.0);
    let ratio = sum.vs_closed_form.unwrap();
    assert!(
        (ratio - 1.0).abs() <= 0.10,
        "simulated p50 {:?} rounds against the closed form's {}",
        sum.rounds_to_target_p50,
        sum.closed_form_rounds
    );
}

fn files_of(dir: &Path, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

#[test]
fn the_same_seed_writes_the_same_files_and_another_seed_does_not() {
    let s = load("smoke-1k.toml");
    let tmp = std::env::temp_dir().join(format!("novacron-sim-test-{}", std::process::id()));
    let dirs = ["a", "b", "c"].map(|d| tmp.join(d));
    let mut written = Vec::new();
    for (dir, seed) in dirs.iter().zip([7, 7, 8]) {
        written.push(report::write(&run(&s, seed, &mut |_| {}), dir).unwrap());
    }
    assert!(written.iter().all(|w| *w == written[0]));
    for f in [
        "summary.json",
        "dissemination.svg",
        "mesh.csv",
        "mesh.svg",
        "lookups.csv",
        "lookup_hops.svg",
        "report.md",
    ] {
        assert!(written[0].contains(&f), "{f} not written: {:?}", written[0]);
    }
    let names = &written[0];
    let (a, b, c) = (
        files_of(&dirs[0], names),
        files_of(&dirs[1], names),
        files_of(&dirs[2], names),
    );
    assert_eq!(a, b, "the same seed wrote different files");
    for ((name, x), (_, y)) in a.iter().zip(&c) {
        assert_ne!(x, y, "{name} did not change with the seed");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["nodes"], 1000);
    assert_eq!(summary["seed"], 7);
    let md = std::fs::read_to_string(dirs[0].join("report.md")).unwrap();
    assert!(md.contains("![dissemination](dissemination.svg)"), "{md}");
    let svg = std::fs::read_to_string(dirs[0].join("dissemination.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("Serf closed form"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn lookups_at_fifteen_thousand_servers_take_the_hops_ipfs_measured() {
    let s = load("ipfs-dht-15k.toml");
    let out = run(&s, s.run.seed, &mut |_| {});
    let k = out.summary.kademlia.as_ref().unwrap();
    assert_eq!(k.lookups, 20_000);
    // ProbeLab RFM17 (mesh-models.toml [kademlia]): hops p50 3, walk hops p50 4, p90 6.
    let (hops, walk50, walk90) = (
        k.lookup_hops_p50.unwrap(),
        k.lookup_walk_hops_p50.unwrap(),
        k.lookup_walk_hops_p90.unwrap(),
    );
    assert!((3.0..=4.0).contains(&hops), "hops p50 {hops}");
    assert!((3.0..=5.0).contains(&walk50), "walk hops p50 {walk50}");
    assert!(walk90 <= 6.0, "walk hops p90 {walk90}");
    assert!(k.lookup_success.unwrap() > 0.99, "{k:?}");
}

#[test]
fn churn_keeps_the_clusters_availability_lookups_route_around_it_and_owners_send_vms_away() {
    let s = load("smoke-1k.toml");
    let out = run(&s, s.run.seed, &mut |_| {});
    let c = out.summary.churn.as_ref().unwrap();
    assert!(c.departures > 50 && c.arrivals > 50, "{c:?}");
    assert!(
        (c.availability - c.availability_expected).abs() < 0.05,
        "{c:?}"
    );
    let k = out.summary.kademlia.as_ref().unwrap();
    assert!(k.table_stale_fraction_mean.unwrap() > 0.0, "{k:?}");
    assert!(k.lookup_unresponsive_mean.unwrap() > 0.0, "{k:?}");
    assert!(k.lookup_success.unwrap() > 0.8, "{k:?}");
    // Owners come back and the node's politeness (idle-only in this scenario) sends VMs away.
    let o = out.summary.owner.as_ref().unwrap();
    assert!(o.evacuations_per_node_hour > 0.1, "{o:?}");
    assert!(
        (0.3..0.95).contains(&o.polite_run_fraction)
            && o.polite_run_fraction + o.evacuate_fraction <= 1.0 + 1e-9,
        "{o:?}"
    );
    assert_eq!(o.run_owner_active_fraction, 0.0, "{o:?}");
}
