//! `novacron node install`: what a volunteer runs once. Writes a default configuration, an
//! API token and a systemd unit, and says how to start the service. Files that exist are
//! kept (a reinstall never replaces the owner's configuration or token); the unit is
//! rewritten (it belongs to the program).
//!
//! The unit runs the node as root: the VMM jail needs /dev/kvm, namespaces and a delegated
//! cgroup subtree. Around that the service is hardened: the file system is read-only except
//! the data directory, no home directories, private /tmp, no kernel tunables, modules or
//! logs, only the address families the mesh uses, only /dev/kvm among real devices.
//!
//! `--root DIR` writes everything under DIR instead of `/` (packaging and tests).

use crate::cli::output;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Write under this directory instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Directory of the configuration and API token.
    #[arg(long, value_name = "DIR", default_value = "/etc/novacron")]
    config_dir: PathBuf,
    /// The node's data directory (key, chunks, database).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/novacron")]
    data_dir: PathBuf,
    /// Where the systemd unit goes.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// The binary the unit runs (default: this one).
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// A peer to join through (repeatable), written into the configuration.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
}

/// The unit's file name.
pub const UNIT_NAME: &str = "novacron-node.service";

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this binary's path")?,
    };
    let config = args.config_dir.join("node.yaml");
    let token = args.config_dir.join("api.token");
    let unit = args.unit_dir.join(UNIT_NAME);
    let under = |p: &Path| under(&args.root, p);

    std::fs::create_dir_all(under(&args.config_dir))
        .with_context(|| format!("cannot create {}", under(&args.config_dir).display()))?;
    std::fs::create_dir_all(under(&args.data_dir))
        .with_context(|| format!("cannot create {}", under(&args.data_dir).display()))?;
    // Searchable by others (not readable): a process-backend VM runs as nobody and must
    // reach its work directory under it; everything secret inside is 0600.
    std::fs::set_permissions(
        under(&args.data_dir),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .with_context(|| format!("cannot set the mode of {}", under(&args.data_dir).display()))?;
    std::fs::create_dir_all(under(&args.unit_dir))
        .with_context(|| format!("cannot create {}", under(&args.unit_dir).display()))?;

    let wrote_config = write_new(
        &under(&config),
        default_config(&args.data_dir, &args.bootstrap).as_bytes(),
        0o644,
    )?;
    let wrote_token = write_new(&under(&token), new_token()?.as_bytes(), 0o600)?;
    replace(
        &under(&unit),
        unit_file(&bin, &config, &args.data_dir).as_bytes(),
    )?;

    output::print(&summary(
        &args.root,
        [
            (&config, Some(wrote_config)),
            (&token, Some(wrote_token)),
            (&unit, None),
            (&args.data_dir, None),
        ],
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// What the install did, naming the files where they are (under `root`), then how to start
/// and follow the service. `paths`: configuration, token, unit and data directory as the
/// installed system sees them, with whether the file was written (None: always written, or
/// a directory).
fn summary(root: &Path, paths: [(&Path, Option<bool>); 4]) -> String {
    let under = |p: &Path| under(root, p);
    let said = |wrote: Option<bool>| match wrote {
        Some(false) => "  kept (it exists)",
        Some(true) | None => "  written",
    };
    let [(config, c), (token, t), (unit, _), (data, _)] = paths;
    let mut out = format!(
        "configuration  {}{}\nAPI token      {}{}\nsystemd unit   {}{}\ndata directory {}\n",
        under(config).display(),
        said(c),
        under(token).display(),
        said(t),
        under(unit).display(),
        said(None),
        under(data).display(),
    );
    if root != Path::new("/") {
        out.push_str(&format!(
            "(written under {}: the unit and the configuration name these paths without it, as \
             the system they are copied to will see them)\n",
            root.display()
        ));
    }
    out.push_str(&format!(
        "\nStart it now and at every boot:\n    systemctl daemon-reload && systemctl enable --now \
         novacron-node\nFollow it:  journalctl -u novacron-node -f    Members of its cell:  \
         novacron nodes --data-dir {}\n",
        data.display()
    ));
    out
}

/// Where `path` of the installed system is written: under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The configuration a fresh install starts from (every key the node reads, commented).
fn default_config(data_dir: &Path, bootstrap: &[String]) -> String {
    let peers = if bootstrap.is_empty() {
        "[]".to_string()
    } else {
        format!(
            "[{}]",
            bootstrap
                .iter()
                .map(|b| format!("{b:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "# NovaCron node configuration. Environment variables NODE_ID, LOG_LEVEL, API_PORT and\n\
         # DB_URL override these keys; `novacron node` flags override both.\n\
         nodeId: {name}\n\
         logLevel: info\n\
         # The local API; off loopback it requires the token in api.token.\n\
         api: {{host: 127.0.0.1, port: 8080, tlsEnabled: false}}\n\
         dataDir: {data}\n\
         mesh:\n  \
           listen: [\"/ip4/0.0.0.0/tcp/4001\", \"/ip4/0.0.0.0/udp/4001/quic-v1\"]\n  \
           # Peers to join through, each ending in /p2p/PEERID.\n  \
           bootstrap: {peers}\n",
        name = hostname(),
        data = data_dir.display(),
    )
}

fn unit_file(bin: &Path, config: &Path, data_dir: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=NovaCron volunteer compute node\n\
         Documentation=https://github.com/novacron/novacron\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={bin} node --config {config}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # SIGTERM drains the node (VMs move away) before it exits. Only the daemon is\n\
         # signalled: after a crash, or a drain cut short, its VMMs keep their VMs running\n\
         # and the restarted daemon adopts them.\n\
         KillMode=process\n\
         TimeoutStopSec=120s\n\
         LimitNOFILE=65536\n\
         # VMM jails: namespaces, seccomp and a delegated cgroup subtree per VM.\n\
         Delegate=yes\n\
         DevicePolicy=closed\n\
         DeviceAllow=/dev/kvm rw\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths={data}\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectClock=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         SystemCallArchitectures=native\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin = bin.display(),
        config = config.display(),
        data = data_dir.display(),
    )
}

/// 32 random bytes as hex.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let mut hex = novacron_mesh::util::hex::encode(&bytes);
    hex.push('\n');
    Ok(hex)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "node".into())
}

/// Creates `path` with `bytes` and `mode` unless it exists; returns whether it wrote.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Writes `path` through a temp file renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path)
        .with_context(|| format!("cannot move the unit to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    #[test]
    fn the_default_config_loads_and_names_the_bootstrap_peers() {
        let text = default_config(
            Path::new("/var/lib/novacron"),
            &[
                "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                    .into(),
            ],
        );
        let cfg = NodeConfig::from_yaml(&text).unwrap();
        cfg.check().unwrap();
        assert_eq!(
            cfg.data_dir.as_deref(),
            Some(Path::new("/var/lib/novacron"))
        );
        assert_eq!(cfg.mesh.bootstrap.len(), 1);
        assert_eq!(cfg.mesh.listen.len(), 2);
    }

    #[test]
    fn the_summary_names_the_files_where_they_were_written() {
        let paths = |wrote| {
            [
                (Path::new("/etc/novacron/node.yaml"), Some(wrote)),
                (Path::new("/etc/novacron/api.token"), Some(true)),
                (Path::new("/etc/systemd/system/novacron-node.service"), None),
                (Path::new("/var/lib/novacron"), None),
            ]
        };
        let text = summary(Path::new("/tmp/r"), paths(false));
        for line in [
            "configuration  /tmp/r/etc/novacron/node.yaml  kept (it exists)",
            "API token      /tmp/r/etc/novacron/api.token  written",
            "systemd unit   /tmp/r/etc/systemd/system/novacron-node.service  written",
            "data directory /tmp/r/var/lib/novacron",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}\n{text}");
        }
        assert!(text.contains("written under /tmp/r"), "{text}");
        // The service's own view: the data directory it will use.
        assert!(
            text.contains("novacron nodes --data-dir /var/lib/novacron"),
            "{text}"
        );
        let plain = summary(Path::new("/"), paths(true));
        assert!(
            plain.contains("configuration  /etc/novacron/node.yaml  written"),
            "{plain}"
        );
        assert!(!plain.contains("written under"), "{plain}");
    }

    #[test]
    fn the_unit_restarts_on_failure_and_is_hardened() {
        let unit = unit_file(
            Path::new("/usr/bin/novacron"),
            Path::new("/etc/novacron/node.yaml"),
            Path::new("/var/lib/novacron"),
        );
        for line in [
            "ExecStart=/usr/bin/novacron node --config /etc/novacron/node.yaml",
            "Restart=on-failure",
            "KillMode=process",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/novacron",
            "DeviceAllow=/dev/kvm rw",
            "NoNewPrivileges=yes",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line:?}\n{unit}");
        }
    }
}
