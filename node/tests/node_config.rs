//! `novacron node --config`: the sample file is accepted as it is (and the node runs
//! from it); unknown keys, bad values and bad environment variables stop the node before it
//! starts, with an error that names the key or variable.

#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::time::Duration;

use proc::Proc;

const TIMEOUT: Duration = Duration::from_secs(30);

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

/// Runs `novacron node ARGS` expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_novacron"));
    cmd.arg("node").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run novacron node");
    assert!(!out.status.success(), "the node started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_sample_config_runs_a_node_and_bad_ones_are_named() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let sample = write(
        tmp.path(),
        "node.yaml",
        &format!(
            "nodeId: node1\nlogLevel: info\napi: {{host: 0.0.0.0, port: 8080, tlsEnabled: false}}\n\
             dataDir: {}\nmesh: {{listen: [\"/ip4/127.0.0.1/tcp/0\"], kadServer: true}}\n",
            data.display()
        ),
    );
    let mut node = Proc::spawn("node1", &["node", "--config", &sample]);
    let line = node.wait_stderr_line(" listening on /ip4/127.0.0.1/tcp/", TIMEOUT);
    assert!(
        line.is_some(),
        "the node did not start from the sample\n{}",
        node.dump()
    );
    assert!(
        data.join("node.key").exists(),
        "the key went to the configured dataDir"
    );
    // SAFETY: kill(2) with plain integers on our own child.
    assert_eq!(unsafe { libc::kill(node.pid(), libc::SIGTERM) }, 0);
    assert!(node.wait(TIMEOUT).success(), "{}", node.dump());

    let unknown = write(tmp.path(), "unknown.yaml", "nodeID: node1\n");
    let err = refused(&["--config", &unknown], &[]);
    assert!(
        err.contains("nodeID") && err.contains("unknown.yaml"),
        "{err}"
    );

    let bad_port = write(tmp.path(), "port.yaml", "api: {port: 99999}\n");
    let err = refused(&["--config", &bad_port], &[]);
    assert!(err.contains("port") && err.contains("port.yaml"), "{err}");

    let err = refused(&["--config", &sample], &[("API_PORT", "eighty")]);
    assert!(err.contains("API_PORT") && err.contains("eighty"), "{err}");
    let err = refused(&["--config", &sample], &[("LOG_LEVEL", "chatty")]);
    assert!(err.contains("LOG_LEVEL") && err.contains("chatty"), "{err}");

    let err = refused(&[], &[]);
    assert!(err.contains("--data-dir"), "{err}");
}
