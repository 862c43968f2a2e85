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

#[test]
fn install_writes_config_token_and_unit_keeps_them_on_reinstall_and_the_node_runs_from_them() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    let data = tmp.path().join("data");
    let (root_s, data_s) = (root.to_str().unwrap(), data.to_str().unwrap());
    let install = |extra: &[&str]| {
        let mut args = vec!["node", "install", "--root", root_s, "--data-dir", data_s];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn("install", &args);
        assert!(p.wait(TIMEOUT).success(), "{}", p.dump());
        p.stdout()
    };
    let first = install(&[]);
    assert!(first.contains("systemctl daemon-reload && systemctl enable --now novacron-node"));
    let config = root.join("etc/novacron/node.yaml");
    let token = root.join("etc/novacron/api.token");
    let unit = root.join("etc/systemd/system/novacron-node.service");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token), 0o600, "the API token is the owner's only");
    let token_text = std::fs::read_to_string(&token).unwrap();
    assert_eq!(token_text.trim().len(), 64, "{token_text:?}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("Restart=on-failure"), "{unit_text}");
    assert!(
        unit_text.contains("node --config /etc/novacron/node.yaml"),
        "{unit_text}"
    );

    // A reinstall keeps the owner's configuration and token.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("logLevel: info", "logLevel: warn"),
    )
    .unwrap();
    let again = install(&[]);
    assert!(again.contains("kept (it exists)"), "{again}");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("logLevel: warn"));
    assert_eq!(std::fs::read_to_string(&token).unwrap(), token_text);

    // The node runs from the installed configuration (on a loopback port for the test).
    let mut node = Proc::spawn(
        "installed",
        &[
            "node",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api-port",
            "0",
        ],
    );
    let line = node.wait_stderr_line(" listening on /ip4/127.0.0.1/tcp/", TIMEOUT);
    assert!(line.is_some(), "{}", node.dump());
    assert!(
        data.join("node.key").exists(),
        "the key is in the installed dataDir"
    );
}

#[test]
fn bad_settings_stop_the_node_before_it_makes_anything() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let nothing_made = |what: &str| {
        assert!(
            !data.exists(),
            "{what}: the node made {} ({:?})",
            data.display(),
            std::fs::read_dir(&data).map(|d| d.count())
        );
    };
    let elsewhere = tmp.path().join("nonexistent/dir/x.db");

    let err = refused(
        &["--data-dir", data_s],
        &[("DB_URL", "postgres://db.example/novacron")],
    );
    assert!(
        err.contains("DB_URL") && err.contains("postgres://"),
        "{err}"
    );
    nothing_made("a DB_URL that is not SQLite");

    let url = format!("sqlite://{}", elsewhere.display());
    let err = refused(&["--data-dir", data_s], &[("DB_URL", &url)]);
    assert!(err.contains("nonexistent/dir"), "{err}");
    nothing_made("a DB_URL in a directory that does not exist");
    assert!(
        !tmp.path().join("nonexistent").exists(),
        "a mistyped DB_URL made directories"
    );

    let err = refused(
        &[
            "--data-dir",
            data_s,
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/4001",
        ],
        &[],
    );
    assert!(err.contains("/p2p/PEERID"), "{err}");
    nothing_made("a bootstrap address without /p2p/");

    let err = refused(
        &["--data-dir", data_s, "--listen", "/ip4/127.0.0.1/udp/0"],
        &[],
    );
    assert!(err.contains("mesh.listen"), "{err}");
    nothing_made("a listen address no transport takes");

    let range = write(
        tmp.path(),
        "range.yaml",
        "nodeId: n\npoliteness:\n  startHour: 25\n",
    );
    let err = refused(&["--config", &range, "--data-dir", data_s], &[]);
    assert!(
        err.contains(&format!("{range} line 3: key politeness.startHour")),
        "{err}"
    );
    nothing_made("an hour of 25");

    let twice = write(
        tmp.path(),
        "twice.yaml",
        "nodeId: a\nlogLevel: info\nnodeId: b\n",
    );
    let err = refused(&["--config", &twice, "--data-dir", data_s], &[]);
    assert!(
        err.contains(&twice) && err.contains("line 3: key nodeId is given twice (first at line 1)"),
        "{err}"
    );
    nothing_made("a key given twice");

    let token = tmp.path().join("missing.token");
    let no_token = write(
        tmp.path(),
        "token.yaml",
        &format!("api: {{tokenFile: {}}}\n", token.display()),
    );
    let err = refused(&["--config", &no_token, "--data-dir", data_s], &[]);
    assert!(
        err.contains("api.tokenFile") && err.contains("missing.token"),
        "{err}"
    );
    nothing_made("a token file that is not there");
}

#[test]
fn a_node_that_fails_after_binding_its_socket_leaves_no_socket_behind() {
    // The mesh's port is taken (found only when the swarm listens, after the API socket is
    // bound): the node stops, and its data directory keeps no node.sock.
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let err = refused(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--api-port",
            "0",
        ],
        &[],
    );
    assert!(err.contains(&listen), "{err}");
    assert!(data.join("node.key").exists(), "it got as far as its key");
    assert!(
        !data.join("node.sock").exists(),
        "a stale node.sock was left"
    );
    drop(taken);
}
