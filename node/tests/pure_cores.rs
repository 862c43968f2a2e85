//! The pure cores stay pure: the crates' builds without their I/O features (what the
//! simulator links: mesh's chunks, records, cells, summaries and transfer scheduler; vm's
//! migration protocol and its in-memory harness; node's domain model and its policy crate), and the
//! simulator itself, pull in no async runtime, no libp2p, no chitchat, no KVM and no
//! database. Checked on the resolved dependency graph (`cargo tree -e normal`), so a
//! dependency that creeps in through another crate is caught too.

use std::process::Command;

/// Crates no pure core may depend on, directly or not.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "libp2p",
    "libp2p-stream",
    "chitchat",
    "kvm-ioctls",
    "kvm-bindings",
    "vm-memory",
    "rusqlite",
    "axum",
    "hyper",
];

/// Each pure build: the package and the features it is built with.
const PURE_BUILDS: &[(&str, &[&str])] = &[
    ("novacron-mesh", &[]),
    ("novacron-vm", &["sim"]),
    ("novacron-node", &[]),
    // The node's decisions, which the simulator links.
    ("novacron-policy", &[]),
    // The simulator itself: it drives the cores in virtual time, never their drivers.
    ("novacron-sim", &[]),
];

/// The names of every crate in `package`'s normal dependency graph, built with `features`
/// and, unless `defaults`, without its default features.
fn dependency_names(package: &str, defaults: bool, features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["tree", "--manifest-path", manifest, "--offline", "--locked"])
        .args(["-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"]);
    if !defaults {
        cmd.arg("--no-default-features");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree for {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        names.iter().any(|n| n == package),
        "cargo tree did not list {package} itself: {names:?}"
    );
    names
}

#[test]
fn the_pure_cores_depend_on_no_runtime_network_kvm_or_database_crate() {
    for (package, features) in PURE_BUILDS {
        let names = dependency_names(package, false, features);
        let found: Vec<&String> = names
            .iter()
            .filter(|n| FORBIDDEN.contains(&n.as_str()))
            .collect();
        assert!(
            found.is_empty(),
            "{package} (features {features:?}, no defaults) depends on {found:?}"
        );
    }
}

#[test]
fn the_check_sees_what_the_full_builds_pull_in() {
    // The same query on the node with its daemon feature must find the forbidden crates:
    // otherwise the check above could pass by reading the graph wrong.
    let names = dependency_names("novacron-node", true, &[]);
    for crate_name in ["tokio", "libp2p", "chitchat", "kvm-ioctls", "rusqlite"] {
        assert!(
            names.iter().any(|n| n == crate_name),
            "the daemon build does not list {crate_name}: {names:?}"
        );
    }
}
