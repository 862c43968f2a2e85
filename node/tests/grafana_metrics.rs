//! The Grafana dashboard (`docs/grafana/novacron.json`) and the Prometheus scrape config
//! (`docs/prometheus.yml`) against a real `novacron node`: every metric name a panel or a
//! template variable queries is in the node's live `/metrics`, the dashboard is well formed
//! (titles, units, the data source variable, a panel for each part of the node), and, when
//! `promtool` is installed, `promtool check config` accepts the scrape config and
//! `promtool check metrics` the live exposition (required with
//! `NOVACRON_REQUIRE_PROMTOOL=1`, as `.ci/run` sets).

#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "common/node_api.rs"]
mod node_api;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mesh::spawn_api_node;
use node_api::http;
use serde_json::Value;

const DATA_SOURCE: &str = "${DS_PROMETHEUS}";
const INSTANCE_QUERY: &str = "label_values(novacron_mesh_connected_peers, instance)";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn dashboard() -> Value {
    let path = repo_file("docs/grafana/novacron.json");
    let text = std::fs::read_to_string(&path).expect("read docs/grafana/novacron.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel of the dashboard, rows and the panels inside rows (collapsed ones) included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("")
}

/// The PromQL of a panel's targets.
fn panel_exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// Every query of the dashboard, with where it is: panel targets and template variables
/// (a variable's query is a string or, as Grafana 10 writes it, `{"query": ...}`).
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dash) {
        for e in panel_exprs(p) {
            out.push((format!("panel {:?}", title(p)), e.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = format!("variable {}", v["name"]);
        let query = match &v["query"] {
            Value::String(q) => Some(q.as_str()),
            q => q["query"].as_str(),
        };
        for q in query.into_iter().chain(v["definition"].as_str()) {
            out.push((name.clone(), q.to_string()));
        }
    }
    out
}

/// The `novacron_...` metric names in a query.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("novacron_") {
        let preceded = rest[..at].chars().next_back().is_some_and(word);
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// What a scrape exposes: each family's `# TYPE` (the 0.0.4 name: a counter's is its
/// `_total` sample name) and the names of the samples present.
struct Exposed {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exposed {
    fn parse(text: &str) -> Exposed {
        let mut families = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exposed { families, samples }
    }

    /// Whether a query may name `name`: a sample that is there, a family with a `# TYPE`
    /// line (a labelled family with no samples yet), or a histogram's `_bucket`, `_sum` or
    /// `_count` series (a summary's `_sum` and `_count`).
    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.families.contains_key(name) {
            return true;
        }
        [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ]
        .iter()
        .any(|(suffix, kinds)| {
            name.strip_suffix(suffix)
                .and_then(|family| self.families.get(family))
                .is_some_and(|kind| kinds.contains(&kind.as_str()))
        })
    }

    /// The names `queries` use that the scrape does not have, with where they are used.
    fn missing(&self, queries: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (place, expr) in queries {
            for name in metric_names(expr) {
                if !self.has(&name) {
                    out.push(format!("{name} ({place}: {expr})"));
                }
            }
        }
        out
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `promtool` from PATH; None (after saying why the check is skipped) when it is not
/// installed, unless `NOVACRON_REQUIRE_PROMTOOL=1`, which makes that a failure.
fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("NOVACRON_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "{test}: NOVACRON_REQUIRE_PROMTOOL=1 but promtool is not on PATH"
        );
        eprintln!(
            "{test}: promtool checks skipped: promtool is not on PATH (apt-get install \
             prometheus; .ci/run installs it)"
        );
    }
    found
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));

    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("DS_PROMETHEUS");
    assert_eq!(ds["type"], "datasource", "{ds}");
    assert_eq!(ds["query"], "prometheus", "{ds}");
    let instance = var("instance");
    assert_eq!(instance["type"], "query", "{instance}");
    assert_eq!(instance["datasource"]["uid"], DATA_SOURCE, "{instance}");
    assert_eq!(instance["definition"], INSTANCE_QUERY, "{instance}");

    let panels = all_panels(&dash);
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(!title(p).trim().is_empty(), "a panel has no title: {p}");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("no id: {p}"));
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        if is_row(p) {
            continue;
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(!unit.is_empty(), "panel {:?} has no unit", title(p));
        assert_eq!(p["datasource"]["type"], "prometheus", "{}", title(p));
        assert_eq!(p["datasource"]["uid"], DATA_SOURCE, "{}", title(p));
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {:?} has no query", title(p));
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            assert_eq!(t["datasource"]["uid"], DATA_SOURCE, "{}", title(p));
            assert!(
                expr.contains("instance=~\"$instance\""),
                "panel {:?} ignores the instance variable: {expr}",
                title(p)
            );
        }
    }

    // A panel for each part of the node, found by what it queries.
    let queries = |p: &Value, name: &str| panel_exprs(p).iter().any(|e| e.contains(name));
    let quantile = |p: &Value, bucket: &str| {
        panel_exprs(p)
            .iter()
            .any(|e| e.contains("histogram_quantile(") && e.contains(bucket))
    };
    let heatmap = |p: &Value, bucket: &str| p["type"] == "heatmap" && queries(p, bucket);
    type Found<'a> = &'a dyn Fn(&Value) -> bool;
    let wanted: [(&str, Found); 10] = [
        ("mesh peers", &|p| {
            queries(p, "novacron_mesh_connected_peers")
        }),
        ("cell members", &|p| queries(p, "novacron_cell_members")),
        ("mesh size", &|p| queries(p, "novacron_mesh_size_estimate")),
        ("failure detections", &|p| {
            queries(p, "rate(novacron_failure_detections_total")
        }),
        ("VMs", &|p| queries(p, "novacron_vms")),
        ("migrations by result", &|p| {
            queries(p, "novacron_migrations_total") && queries(p, "result")
        }),
        ("migration downtime p50/p99", &|p| {
            quantile(p, "novacron_migration_downtime_seconds_bucket")
                && queries(p, "histogram_quantile(0.5")
                && queries(p, "histogram_quantile(0.99")
        }),
        ("migration downtime heatmap", &|p| {
            heatmap(p, "novacron_migration_downtime_seconds_bucket")
        }),
        ("API latency", &|p| {
            quantile(p, "novacron_api_request_duration_seconds_bucket")
        }),
        ("politeness", &|p| queries(p, "novacron_politeness_state")),
    ];
    for (what, found) in wanted {
        assert!(
            panels.iter().any(|p| !is_row(p) && found(p)),
            "no panel for {what}"
        );
    }
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| is_row(p))
        .map(|p| title(p))
        .collect();
    for row in ["Mesh", "VMs", "Migrations", "API", "Politeness"] {
        assert!(rows.contains(&row), "no row {row}: {rows:?}");
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_in_a_live_scrape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir).expect("data dir");
    // The machine's own load (this test suite) is not the owner's.
    std::fs::write(dir.join("owner-idle"), "").expect("owner-idle");
    let mut node = spawn_api_node("n1", &dir, &[]);

    // One API request first, so the request families have samples (they would still count
    // by their TYPE lines without).
    let (status, _) = http(&dir, "GET", "/api/v1/node", None);
    assert_eq!(status, 200, "{}", node.dump());
    let (status, text) = http(&dir, "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}\n{}", node.dump());
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the scrape parses as Prometheus text");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "novacron_api_requests_total"),
        "{text}"
    );

    let exposed = Exposed::parse(&text);
    assert!(
        exposed.families.len() >= 15,
        "{:?}\n{text}",
        exposed.families
    );
    let queries = dashboard_queries(&dashboard());
    let named: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(named.len() >= 15, "the dashboard names only {named:?}");
    let missing = exposed.missing(&queries);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the node does not expose:\n{}\n\nscrape:\n{text}",
        missing.join("\n")
    );
    eprintln!(
        "{} metric names the dashboard queries are in the scrape",
        named.len()
    );

    if let Some(promtool) = promtool("every_metric_the_dashboard_queries_is_in_a_live_scrape") {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn promtool");
        child
            .stdin
            .take()
            .expect("promtool stdin")
            .write_all(text.as_bytes())
            .expect("write the scrape to promtool");
        let out = child.wait_with_output().expect("promtool check metrics");
        eprintln!("promtool check metrics: {}", output_text(&out));
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}\nscrape:\n{text}",
            output_text(&out)
        );
    }
    node.kill_tree();
}

#[test]
fn the_scrape_config_passes_promtool() {
    let config = repo_file("docs/prometheus.yml");
    let text = std::fs::read_to_string(&config).expect("read docs/prometheus.yml");
    for needed in [
        "job_name: novacron",
        "scrape_interval: 15s",
        "metrics_path: /metrics",
        "api.url",
        "credentials_file:",
    ] {
        assert!(
            text.contains(needed),
            "docs/prometheus.yml lacks {needed:?}"
        );
    }
    let Some(promtool) = promtool("the_scrape_config_passes_promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool check config");
    eprintln!("promtool check config: {}", output_text(&out));
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn names_are_found_in_queries_and_unknown_ones_reported() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(novacron_migration_downtime_seconds_bucket\
         {instance=~\"$instance\"}[5m]))) + novacron_not_a_metric+xnovacron_ignored",
    );
    let want: BTreeSet<String> = [
        "novacron_migration_downtime_seconds_bucket",
        "novacron_not_a_metric",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, want);

    let exposed = Exposed::parse(
        "# HELP novacron_migrations_total Migrations.\n\
         # TYPE novacron_migrations_total counter\n\
         novacron_migrations_total{direction=\"in\",result=\"done\"} 0\n\
         # HELP novacron_api_requests_total Requests.\n\
         # TYPE novacron_api_requests_total counter\n\
         # HELP novacron_vms VMs.\n\
         # TYPE novacron_vms gauge\n\
         novacron_vms{state=\"running\"} 1\n\
         # HELP novacron_migration_downtime_seconds Downtime.\n\
         # TYPE novacron_migration_downtime_seconds histogram\n\
         novacron_migration_downtime_seconds_sum 0.0\n\
         novacron_migration_downtime_seconds_count 0\n\
         novacron_migration_downtime_seconds_bucket{le=\"+Inf\"} 0\n",
    );
    for name in [
        "novacron_migrations_total",
        // A family without samples yet, known by its TYPE line.
        "novacron_api_requests_total",
        "novacron_vms",
        "novacron_migration_downtime_seconds_bucket",
        "novacron_migration_downtime_seconds_sum",
        "novacron_migration_downtime_seconds_count",
    ] {
        assert!(exposed.has(name), "{name}");
    }
    for name in [
        "novacron_not_a_metric",
        // The OpenMetrics family name of a counter is not what a 0.0.4 scrape exposes.
        "novacron_migrations",
        // A gauge has no buckets.
        "novacron_vms_bucket",
    ] {
        assert!(!exposed.has(name), "{name}");
    }
    let queries = [(
        "panel \"x\"".to_string(),
        "rate(novacron_migrations_total[5m]) / novacron_not_a_metric".to_string(),
    )];
    let missing = exposed.missing(&queries);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("novacron_not_a_metric (panel \"x\""),
        "{missing:?}"
    );
}
