//! The REST API fuzzed from its own OpenAPI document against a real `novacron node`:
//! schemathesis (from PyPI; `.ci/run` installs it in a venv) generates requests from
//! `/api/v1/openapi.json` — valid ones, invalid ones and stateful sequences that follow the
//! document's links (create a VM, then pause, resume, migrate, stop it) — and checks that no
//! answer is a 5xx and that every status, content type, header and body is one the document
//! declares. The drain route runs last, on its own: it puts the node into a state it never
//! leaves.
//!
//! Needs the `schemathesis` command: `NOVACRON_SCHEMATHESIS` names it, else it is looked for
//! on PATH; without it the test says so and passes, unless `NOVACRON_REQUIRE_API_FUZZ=1`
//! (CI) makes that a failure. The daemon runs VMs on KVM when /dev/kvm is usable; without it
//! VM creation answers what it answers on such a host, and that is checked the same way.

#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh::{api_url, spawn_api_node};
use proc::Proc;

/// The checks that make the document the truth of the API.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NOVACRON_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("schemathesis"))
            .find(|p| p.is_file())
    })
}

/// One schemathesis run over the operations `filter` selects; panics with its report unless
/// every check passed.
fn fuzz(st: &Path, url: &str, filter: &[&str], examples: u32, node: &Proc) {
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(st)
        .arg("run")
        .arg(format!("{url}/api/v1/openapi.json"))
        .args(["--url", url, "--checks", CHECKS])
        .args(filter)
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", "20261206", "--workers", "1", "--no-color"])
        .args(["--request-timeout", "30", "--generation-database", "none"])
        .arg("--report-dir")
        .arg(report.path())
        // It keeps a cache (.schemathesis/) in its working directory: not in the tree.
        .current_dir(report.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found the API and its document disagreeing:\n{text}\n--- node ---\n{}",
        node.dump()
    );
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(14)..].join("\n"));
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let Some(st) = schemathesis() else {
        assert!(
            std::env::var("NOVACRON_REQUIRE_API_FUZZ").as_deref() != Ok("1"),
            "NOVACRON_REQUIRE_API_FUZZ=1 but schemathesis is not installed \
             (NOVACRON_SCHEMATHESIS or PATH)"
        );
        eprintln!(
            "skipped: schemathesis is not installed (pip install schemathesis, or set \
             NOVACRON_SCHEMATHESIS); .ci/run installs it"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    // The machine's own load (this test suite) is not the owner's.
    std::fs::write(dir.join("owner-idle"), "").unwrap();
    let mut node = spawn_api_node("n1", &dir, &[]);
    let url = api_url(&dir);

    fuzz(&st, &url, &["--exclude-path", "/api/v1/drain"], 40, &node);
    // One operation has no links to follow: no stateful phase.
    fuzz(
        &st,
        &url,
        &[
            "--include-path",
            "/api/v1/drain",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        40,
        &node,
    );

    assert!(
        node.try_wait().is_none(),
        "the node died under the fuzzer\n{}",
        node.dump()
    );
    // The node and every VMM the fuzzer made it start.
    node.kill_tree();
}
