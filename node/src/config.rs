//! The node's configuration: a YAML file, then environment variables, then flags.
//!
//! The file accepts the sample of the node issue as it is:
//!
//! ```yaml
//! nodeId: node1
//! logLevel: info
//! api: {host: 0.0.0.0, port: 8080, tlsEnabled: false}
//! ```
//!
//! plus `dataDir`, `dbUrl`, a `mesh` section (`listen`, `bootstrap`, `kadServer`, `mdns`,
//! `relayServer`) and a `vm` section (`imageDirs`). Unknown keys, keys given twice and bad
//! values are errors that name the key and where it is. Environment variables `NODE_ID`,
//! `LOG_LEVEL`, `API_PORT`, `DASHBOARD_PORT`, `DB_URL` override the
//! file; flags override both. Everything has a default, so no file is needed.
//!
//! `trustedSubmitters` lists the submitter keys (`ed25519:<64 hex digits>`) whose jobs the
//! node accepts, besides those in its trust file (`<dataDir>/trusted-submitters`, edited by
//! `novacron keys trust|untrust`; see [`crate::jobs::trust`]).
//!
//! The `politeness` section holds the owner's rules with BOINC's defaults
//! ([`crate::policy::politeness::Policy`]).
//!
//! Checked before the node makes anything: [`NodeConfig::load`] (values; a bad one set in the
//! file is named with its line, a key given twice too, via [`crate::yaml_keys`]) and
//! [`NodeConfig::check_paths`] (what the paths name on this machine).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use novacron_mesh::submission::SubmitterId;
use novacron_mesh::swarm::{peer_id_of_addr, Multiaddr, Protocol};
use serde::Deserialize;

use crate::policy::politeness::Policy;
use crate::yaml_keys::{key_lines, KeyLines};

/// Largest config file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {len} bytes is over the {MAX_FILE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("config {path}: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("config key {key}: {reason}")]
    Value { key: &'static str, reason: String },
    /// A bad value set in the file: where it is.
    #[error("config {path} line {line}: key {key}: {reason}")]
    ValueAt {
        path: PathBuf,
        line: usize,
        key: &'static str,
        reason: String,
    },
}

/// How much the node logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err("not one of error, warn, info, debug, trace".into()),
        }
    }
}

/// The node's HTTP API (`/api/v1`, `/metrics`; see `api::rest`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiConfig {
    pub host: IpAddr,
    /// 0 asks for any free port (the bound address is written to `<dataDir>/api.url`).
    pub port: u16,
    pub tls_enabled: bool,
    /// The bearer token callers off loopback must send (the file's contents, trimmed).
    /// Default: `<dataDir>/api.token` if it exists, else [`INSTALLED_TOKEN_FILE`] if it
    /// exists, else none (then only loopback callers are served).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and private key for TLS; with neither, a self-signed pair is
    /// made in the data directory on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections open at once, from everyone (callers on this machine get a few more).
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 /64).
    pub max_connections_per_address: usize,
    /// A connection on which no byte moves for this long is closed (seconds).
    pub idle_timeout_s: u64,
}

/// Bounds of the API's connection settings.
pub const API_MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=65_536;
pub const API_IDLE_TIMEOUT_S: std::ops::RangeInclusive<u64> = 30..=3600;

/// Where `novacron node install` writes the API token.
pub const INSTALLED_TOKEN_FILE: &str = "/etc/novacron/api.token";

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            tls_enabled: false,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: 256,
            max_connections_per_address: 32,
            idle_timeout_s: 60,
        }
    }
}

impl ApiConfig {
    /// The token file in force: `api.tokenFile` when set, else the first of
    /// `<data_dir>/api.token` and [`INSTALLED_TOKEN_FILE`] that exists.
    pub fn token_file(&self, data_dir: &Path) -> Option<PathBuf> {
        if let Some(f) = &self.token_file {
            return Some(f.clone());
        }
        [
            data_dir.join("api.token"),
            PathBuf::from(INSTALLED_TOKEN_FILE),
        ]
        .into_iter()
        .find(|p| p.exists())
    }
}

/// The browser dashboard (`api::dashboard`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DashboardConfig {
    pub host: IpAddr,
    /// 0 turns the dashboard off. Unset: [`DEFAULT_DASHBOARD_PORT`], or any free port when
    /// another program (another node) holds it; a port set here must be free.
    pub port: Option<u16>,
    /// Where the submitter keys the dashboard signs jobs with are (default: the keys
    /// directory `novacron keys` uses for the node's user).
    pub keys_dir: Option<PathBuf>,
}

/// The dashboard's port unless configured.
pub const DEFAULT_DASHBOARD_PORT: u16 = 3000;

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            keys_dir: None,
        }
    }
}

/// How the node joins the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MeshConfig {
    #[serde(deserialize_with = "multiaddrs")]
    pub listen: Vec<Multiaddr>,
    #[serde(deserialize_with = "multiaddrs")]
    pub bootstrap: Vec<Multiaddr>,
    pub kad_server: bool,
    pub mdns: bool,
    pub relay_server: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            bootstrap: Vec::new(),
            kad_server: false,
            mdns: false,
            relay_server: false,
        }
    }
}

/// `/ip4|ip6/ADDRESS/tcp/PORT` or `/ip4|ip6/ADDRESS/udp/PORT/quic-v1`: what the node's
/// transports listen on.
fn is_listenable(addr: &Multiaddr) -> bool {
    let parts: Vec<Protocol> = addr.iter().collect();
    matches!(
        parts.as_slice(),
        [Protocol::Ip4(_) | Protocol::Ip6(_), Protocol::Tcp(_)]
            | [
                Protocol::Ip4(_) | Protocol::Ip6(_),
                Protocol::Udp(_),
                Protocol::QuicV1
            ]
    )
}

fn multiaddrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a multiaddr: {e}")))
        })
        .collect()
}

/// How the node runs VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VmConfig {
    /// The only directories a VM's kernel and initrd may come from through the API
    /// (absolute; symlinks are followed only when they stay inside). Default:
    /// `<dataDir>/images`, created at start.
    pub image_dirs: Option<Vec<PathBuf>>,
}

/// The image directory of a data directory.
pub const IMAGES_DIR: &str = "images";

impl VmConfig {
    /// The image directories in force for `data_dir`.
    pub fn image_dirs(&self, data_dir: &Path) -> Vec<PathBuf> {
        self.image_dirs
            .clone()
            .unwrap_or_else(|| vec![data_dir.join(IMAGES_DIR)])
    }
}

/// Everything the node is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// A name for the operator's eyes (the node's identity is its key's PeerId).
    pub node_id: Option<String>,
    pub log_level: LogLevel,
    pub api: ApiConfig,
    pub dashboard: DashboardConfig,
    /// Where the node keeps its key, chunks and database.
    pub data_dir: Option<PathBuf>,
    /// The database (default: SQLite in the data directory).
    pub db_url: Option<String>,
    pub mesh: MeshConfig,
    /// What VMs may do on the volunteer's machine (BOINC's defaults).
    pub politeness: Policy,
    pub vm: VmConfig,
    /// On SIGTERM, VMs move away within this many seconds; past it they are snapshotted.
    pub drain_deadline_s: u64,
    /// Running VMs are checkpointed this often (BOINC's default checkpoint interval, 60 s,
    /// from ../shared/data/mesh-models.toml), so a crash loses at most this much work.
    pub checkpoint_interval_s: u64,
    /// Submitter keys (`ed25519:<64 hex digits>`) whose signed jobs this node accepts, on
    /// top of its trust file's. Checked by [`NodeConfig::check`].
    pub trusted_submitters: Vec<String>,
    /// How many jobs each trusted submitter may submit through this node.
    pub submitter_limits: SubmitterLimitsConfig,
}

/// Per-submitter limits of the jobs this node takes as their origin (a token bucket and a
/// quota; see `policy::submitters`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SubmitterLimitsConfig {
    /// Submissions a submitter may make at once (1..=10000; default 10).
    pub burst: u32,
    /// Then one more every this many milliseconds (0: no rate limit; at most an hour;
    /// default 1000).
    pub refill_every_ms: u64,
    /// Jobs of one submitter active at once (1..=1000000; default 100).
    pub max_active_jobs: u32,
}

impl Default for SubmitterLimitsConfig {
    fn default() -> Self {
        let d = crate::policy::submitters::SubmitterLimits::default();
        SubmitterLimitsConfig {
            burst: d.burst,
            refill_every_ms: d.refill_every.as_millis() as u64,
            max_active_jobs: d.max_active_jobs,
        }
    }
}

impl SubmitterLimitsConfig {
    /// The limits in force.
    pub fn limits(&self) -> crate::policy::submitters::SubmitterLimits {
        crate::policy::submitters::SubmitterLimits::new(
            self.burst,
            std::time::Duration::from_millis(self.refill_every_ms),
            self.max_active_jobs,
        )
    }
}

/// Bounds of the drain deadline and the checkpoint interval (seconds).
pub const MAX_DRAIN_DEADLINE_S: u64 = 3600;
pub const CHECKPOINT_INTERVAL_S: std::ops::RangeInclusive<u64> =
    crate::model::CHECKPOINT_INTERVAL_S;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: None,
            log_level: LogLevel::Info,
            api: ApiConfig::default(),
            dashboard: DashboardConfig::default(),
            data_dir: None,
            db_url: None,
            mesh: MeshConfig::default(),
            politeness: Policy::default(),
            vm: VmConfig::default(),
            drain_deadline_s: 120,
            checkpoint_interval_s: 60,
            trusted_submitters: Vec::new(),
            submitter_limits: SubmitterLimitsConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Reads `path` (when given), then applies the environment as `env` reports it. A value
    /// the file sets that [`check`](Self::check) refuses is named with the file and line.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let (mut cfg, lines) = match path {
            Some(p) => {
                let (cfg, lines) = NodeConfig::from_file(p)?;
                (cfg, Some((p, lines)))
            }
            None => (NodeConfig::default(), None),
        };
        let from_env = cfg.apply_env(env)?;
        cfg.check().map_err(|e| match (e, lines) {
            (ConfigError::Value { key, reason }, Some((path, lines)))
                if !from_env.contains(&key) =>
            {
                match lines.line_of(key) {
                    Some(line) => ConfigError::ValueAt {
                        path: path.to_path_buf(),
                        line,
                        key,
                        reason,
                    },
                    None => ConfigError::Value { key, reason },
                }
            }
            (e, _) => e,
        })?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<(NodeConfig, KeyLines), ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let yaml_err = |message| ConfigError::Yaml {
            path: path.to_path_buf(),
            message,
        };
        let lines = key_lines(&text).map_err(|d| yaml_err(d.to_string()))?;
        let cfg = NodeConfig::from_yaml(&text).map_err(yaml_err)?;
        Ok((cfg, lines))
    }

    /// Parses YAML text; an empty document is the defaults. (A key given twice is refused by
    /// [`NodeConfig::load`], which knows the lines.)
    pub fn from_yaml(text: &str) -> Result<NodeConfig, String> {
        if text.trim().is_empty() {
            return Ok(NodeConfig::default());
        }
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the environment; returns the keys it set.
    fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<&'static str>, ConfigError> {
        let mut set = Vec::new();
        if let Some(v) = env("NODE_ID") {
            self.node_id = Some(v);
            set.push("nodeId");
        }
        if let Some(v) = env("LOG_LEVEL") {
            set.push("logLevel");
            self.log_level = v.parse().map_err(|reason| ConfigError::Env {
                var: "LOG_LEVEL",
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = env("API_PORT") {
            set.push("api.port");
            self.api.port = v.trim().parse().map_err(|_| ConfigError::Env {
                var: "API_PORT",
                value: v.clone(),
                reason: "not a port number (0-65535; 0 = any free port)".into(),
            })?;
        }
        if let Some(v) = env("DASHBOARD_PORT") {
            set.push("dashboard.port");
            self.dashboard.port = Some(v.trim().parse().map_err(|_| ConfigError::Env {
                var: "DASHBOARD_PORT",
                value: v.clone(),
                reason: "not a port number (0-65535; 0 turns the dashboard off)".into(),
            })?);
        }
        if let Some(v) = env("DB_URL") {
            self.db_url = Some(v);
            set.push("dbUrl");
        }
        Ok(set)
    }

    /// Values each key must hold whatever set them.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_DRAIN_DEADLINE_S).contains(&self.drain_deadline_s) {
            return Err(ConfigError::Value {
                key: "drainDeadlineS",
                reason: format!(
                    "{} is outside 1..={MAX_DRAIN_DEADLINE_S} seconds",
                    self.drain_deadline_s
                ),
            });
        }
        if !CHECKPOINT_INTERVAL_S.contains(&self.checkpoint_interval_s) {
            return Err(ConfigError::Value {
                key: "checkpointIntervalS",
                reason: format!(
                    "{} is outside {}..={} seconds",
                    self.checkpoint_interval_s,
                    CHECKPOINT_INTERVAL_S.start(),
                    CHECKPOINT_INTERVAL_S.end()
                ),
            });
        }
        let limits = &self.submitter_limits;
        for (key, value, range) in [
            ("submitterLimits.burst", limits.burst as u64, 1..=10_000),
            (
                "submitterLimits.refillEveryMs",
                limits.refill_every_ms,
                0..=3_600_000,
            ),
            (
                "submitterLimits.maxActiveJobs",
                limits.max_active_jobs as u64,
                1..=1_000_000,
            ),
        ] {
            if !range.contains(&value) {
                return Err(ConfigError::Value {
                    key,
                    reason: format!("{value} is outside {}..={}", range.start(), range.end()),
                });
            }
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_control()) {
                return Err(ConfigError::Value {
                    key: "nodeId",
                    reason: format!("{id:?} must be 1 to 64 printable characters"),
                });
            }
        }
        match (&self.api.tls_cert, &self.api.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Value {
                    key: "api.tlsKey",
                    reason: "api.tlsCert is set but not its key: set api.tlsKey to the PEM \
                             private key (or remove both for a self-signed certificate)"
                        .into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Value {
                    key: "api.tlsCert",
                    reason: "api.tlsKey is set but not its certificate: set api.tlsCert to the \
                             PEM certificate chain (or remove both for a self-signed one)"
                        .into(),
                })
            }
            (Some(_), Some(_)) if !self.api.tls_enabled => {
                return Err(ConfigError::Value {
                    key: "api.tlsEnabled",
                    reason: "api.tlsCert and api.tlsKey are set but TLS is off: set \
                             api.tlsEnabled: true (or remove them)"
                        .into(),
                })
            }
            _ => {}
        }
        for (key, path) in [
            ("api.tokenFile", &self.api.token_file),
            ("api.tlsCert", &self.api.tls_cert),
            ("api.tlsKey", &self.api.tls_key),
        ] {
            if let Some(p) = path {
                if p.as_os_str().is_empty() {
                    return Err(ConfigError::Value {
                        key,
                        reason: "an empty path: give a file or remove the key".into(),
                    });
                }
            }
        }
        if !API_MAX_CONNECTIONS.contains(&self.api.max_connections) {
            return Err(ConfigError::Value {
                key: "api.maxConnections",
                reason: format!(
                    "{} is outside {}..={}",
                    self.api.max_connections,
                    API_MAX_CONNECTIONS.start(),
                    API_MAX_CONNECTIONS.end()
                ),
            });
        }
        if !(1..=self.api.max_connections).contains(&self.api.max_connections_per_address) {
            return Err(ConfigError::Value {
                key: "api.maxConnectionsPerAddress",
                reason: format!(
                    "{} is outside 1..={} (api.maxConnections)",
                    self.api.max_connections_per_address, self.api.max_connections
                ),
            });
        }
        if !API_IDLE_TIMEOUT_S.contains(&self.api.idle_timeout_s) {
            return Err(ConfigError::Value {
                key: "api.idleTimeoutS",
                reason: format!(
                    "{} is outside {}..={} seconds (event streams are pinged every 20 s)",
                    self.api.idle_timeout_s,
                    API_IDLE_TIMEOUT_S.start(),
                    API_IDLE_TIMEOUT_S.end()
                ),
            });
        }
        for dir in self.vm.image_dirs.iter().flatten() {
            if !dir.is_absolute() {
                return Err(ConfigError::Value {
                    key: "vm.imageDirs",
                    reason: format!("{} is not an absolute path", dir.display()),
                });
            }
        }
        if self.mesh.listen.is_empty() {
            return Err(ConfigError::Value {
                key: "mesh.listen",
                reason: "at least one address is needed".into(),
            });
        }
        if let Some(addr) = self.mesh.listen.iter().find(|a| !is_listenable(a)) {
            return Err(ConfigError::Value {
                key: "mesh.listen",
                reason: format!(
                    "{addr} is not an address the node can listen on: give \
                     /ip4|ip6/ADDRESS/tcp/PORT or /ip4|ip6/ADDRESS/udp/PORT/quic-v1"
                ),
            });
        }
        if let Some(addr) = self
            .mesh
            .bootstrap
            .iter()
            .find(|a| peer_id_of_addr(a).is_none())
        {
            return Err(ConfigError::Value {
                key: "mesh.bootstrap",
                reason: format!(
                    "{addr} does not end in /p2p/PEERID (the peer's id, as its node prints in \
                     `listening on .../p2p/PEERID`)"
                ),
            });
        }
        if let Some(url) = &self.db_url {
            crate::state::db_path(Some(url), Path::new("/")).map_err(|e| ConfigError::Value {
                key: "dbUrl",
                reason: e.to_string(),
            })?;
        }
        self.politeness.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            reason: e.reason,
        })?;
        self.trusted_submitters()?;
        Ok(())
    }

    /// The configured submitter keys, each read by [`SubmitterId::parse`]; a bad one is
    /// named by its place in the list (not echoed: it may be anything pasted there).
    pub fn trusted_submitters(&self) -> Result<Vec<SubmitterId>, ConfigError> {
        self.trusted_submitters
            .iter()
            .enumerate()
            .map(|(i, text)| {
                SubmitterId::parse(text).map_err(|reason| ConfigError::Value {
                    key: "trustedSubmitters",
                    reason: format!("item {} of the list: {reason}", i + 1),
                })
            })
            .collect()
    }

    /// What the configuration names on this machine, checked before the node creates or
    /// opens anything: the data directory is a directory (or does not exist yet: the node
    /// makes it), the database's directory exists (only the data directory itself is made),
    /// and the API files it names are readable files. Returns the database's path.
    pub fn check_paths(&self, data_dir: &Path) -> Result<PathBuf, ConfigError> {
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(ConfigError::Value {
                key: "dataDir",
                reason: format!("{} exists and is not a directory", data_dir.display()),
            });
        }
        let db = crate::state::db_path(self.db_url.as_deref(), data_dir).map_err(|e| {
            ConfigError::Value {
                key: "dbUrl",
                reason: e.to_string(),
            }
        })?;
        if let Some(dir) = db.parent().filter(|d| *d != data_dir) {
            if !dir.is_dir() {
                return Err(ConfigError::Value {
                    key: "dbUrl",
                    reason: format!(
                        "the database's directory {} does not exist (the node makes only its \
                         data directory; create it, or put the database there)",
                        dir.display()
                    ),
                });
            }
        }
        if db.is_dir() {
            return Err(ConfigError::Value {
                key: "dbUrl",
                reason: format!("{} is a directory, not a database file", db.display()),
            });
        }
        for (key, path) in [
            ("api.tokenFile", &self.api.token_file),
            ("api.tlsCert", &self.api.tls_cert),
            ("api.tlsKey", &self.api.tls_key),
        ] {
            let Some(path) = path else { continue };
            if let Err(e) = std::fs::File::open(path).and_then(|f| f.metadata()) {
                return Err(ConfigError::Value {
                    key,
                    reason: format!("cannot read {}: {e}", path.display()),
                });
            }
            if !path.is_file() {
                return Err(ConfigError::Value {
                    key,
                    reason: format!("{} is not a file", path.display()),
                });
            }
        }
        Ok(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_issue_sample_is_accepted_as_it_is() {
        let cfg = NodeConfig::from_yaml(
            "nodeId: node1\nlogLevel: info\napi: {host: 0.0.0.0, port: 8080, tlsEnabled: false}\n",
        )
        .unwrap();
        assert_eq!(cfg.node_id.as_deref(), Some("node1"));
        assert_eq!(cfg.log_level, LogLevel::Info);
        assert_eq!(cfg.api.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(cfg.api.port, 8080);
        assert!(!cfg.api.tls_enabled);
        assert_eq!(cfg.mesh, MeshConfig::default());
        cfg.check().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        for (yaml, needle) in [
            ("nodeID: x\n", "nodeID"),
            ("api: {port: 8080, tls: true}\n", "tls"),
            ("logLevel: loud\n", "loud"),
            ("api: {port: 70000}\n", "port"),
            ("api: {host: not-an-ip}\n", "host"),
            ("mesh: {listen: [\"/ip4/1.2.3.4/tcpp/1\"]}\n", "tcpp"),
            ("api: {tokenfile: /x}\n", "tokenfile"),
            ("api: {tlsCert: [1, 2]}\n", "tlsCert"),
            ("api: {tlsKey: {a: 1}}\n", "tlsKey"),
        ] {
            let err = NodeConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
        for (yaml, key) in [
            ("nodeId: \"\"\n", "nodeId"),
            ("drainDeadlineS: 0\n", "drainDeadlineS"),
            ("drainDeadlineS: 99999\n", "drainDeadlineS"),
            ("checkpointIntervalS: 1\n", "checkpointIntervalS"),
        ] {
            let cfg = NodeConfig::from_yaml(yaml).unwrap();
            let err = cfg.check().unwrap_err().to_string();
            assert!(err.contains(key), "{yaml:?}: {err}");
        }
        let cfg = NodeConfig::from_yaml("drainDeadlineS: 30\ncheckpointIntervalS: 10\n").unwrap();
        cfg.check().unwrap();
        assert_eq!((cfg.drain_deadline_s, cfg.checkpoint_interval_s), (30, 10));
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, "nodeId: node1\nlogLevel: info\napi: {port: 8080}\n").unwrap();
        let env = |k: &str| match k {
            "NODE_ID" => Some("node2".to_string()),
            "LOG_LEVEL" => Some("DEBUG".to_string()),
            "API_PORT" => Some("9090".to_string()),
            "DB_URL" => Some("sqlite:///var/lib/novacron/state.db".to_string()),
            _ => None,
        };
        let cfg = NodeConfig::load(Some(&path), env).unwrap();
        assert_eq!(cfg.node_id.as_deref(), Some("node2"));
        assert_eq!(cfg.log_level, LogLevel::Debug);
        assert_eq!(cfg.api.port, 9090);
        assert_eq!(
            cfg.db_url.as_deref(),
            Some("sqlite:///var/lib/novacron/state.db")
        );

        let err = NodeConfig::load(Some(&path), |k: &str| {
            (k == "API_PORT").then(|| "eighty".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("API_PORT") && err.contains("eighty"), "{err}");
        let err = NodeConfig::load(None, |k: &str| (k == "LOG_LEVEL").then(|| "x".to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("LOG_LEVEL"), "{err}");
    }

    #[test]
    fn politeness_section_defaults_parses_and_names_bad_keys() {
        let cfg = NodeConfig::from_yaml("nodeId: n\n").unwrap();
        assert_eq!(cfg.politeness, Policy::default());
        let cfg = NodeConfig::from_yaml(
            "politeness:\n  runWhileInUse: false\n  idleTimeToRunMin: 5\n  startHour: 22\n  \
             endHour: 7\n  days: {sat: {startHour: 0, endHour: 24}}\n",
        )
        .unwrap();
        cfg.check().unwrap();
        assert!(!cfg.politeness.run_while_in_use);
        assert_eq!(cfg.politeness.idle_time_to_run_min, 5);
        assert_eq!(cfg.politeness.ram_max_used_idle_pct, 90);

        for (yaml, needle) in [
            ("politeness: {ramMaxUsedBusy: 50}\n", "ramMaxUsedBusy"),
            ("politeness: {cpuUsageLimitPct: -5}\n", "cpuUsageLimitPct"),
            (
                "politeness: {days: {mon: {startHour: 1, endHour: 2, x: 1}}}\n",
                "x",
            ),
        ] {
            let err = NodeConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
        for (yaml, key) in [
            (
                "politeness: {ramMaxUsedIdlePct: 120}\n",
                "politeness.ramMaxUsedIdlePct",
            ),
            ("politeness: {endHour: 25}\n", "politeness.endHour"),
            (
                "politeness: {days: {fri: {startHour: 30, endHour: 1}}}\n",
                "politeness.days.fri.startHour",
            ),
        ] {
            let err = NodeConfig::from_yaml(yaml).unwrap().check().unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("config key {key}:")),
                "{yaml:?}: {text}"
            );
        }
    }

    fn load_text(text: &str, env: impl Fn(&str) -> Option<String>) -> (String, ConfigError) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, text).unwrap();
        let err = NodeConfig::load(Some(&path), env).unwrap_err();
        (path.display().to_string(), err)
    }

    #[test]
    fn submitter_limits_are_read_and_become_the_gates_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(
            &path,
            "submitterLimits:\n  burst: 3\n  refillEveryMs: 0\n  maxActiveJobs: 2\n",
        )
        .unwrap();
        let cfg = NodeConfig::load(Some(&path), no_env).unwrap();
        let limits = cfg.submitter_limits.limits();
        assert_eq!(
            (limits.burst, limits.refill_every, limits.max_active_jobs),
            (3, std::time::Duration::ZERO, 2)
        );
        assert_eq!(
            NodeConfig::default().submitter_limits.limits(),
            crate::policy::submitters::SubmitterLimits::default()
        );
    }

    #[test]
    fn a_refused_value_and_a_key_given_twice_name_the_file_and_line() {
        let (path, err) = load_text(
            "nodeId: n\npoliteness:\n  idleTimeToRunMin: 3\n  startHour: 25\n",
            no_env,
        );
        assert!(
            matches!(
                &err,
                ConfigError::ValueAt {
                    line: 4,
                    key: "politeness.startHour",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("config {path} line 4: key politeness.startHour: "))
                && text.contains("25"),
            "{text}"
        );
        let (_, err) = load_text(
            "api:\n  port: 0\n  maxConnections: 8\n  maxConnectionsPerAddress: 9\n",
            no_env,
        );
        assert!(
            matches!(
                &err,
                ConfigError::ValueAt {
                    line: 4,
                    key: "api.maxConnectionsPerAddress",
                    ..
                }
            ),
            "{err}"
        );
        let (_, err) = load_text("submitterLimits:\n  burst: 0\n", no_env);
        assert!(
            matches!(
                &err,
                ConfigError::ValueAt {
                    line: 2,
                    key: "submitterLimits.burst",
                    ..
                }
            ),
            "{err}"
        );
        let (_, err) = load_text(
            "mesh:\n  bootstrap: [\"/ip4/127.0.0.1/tcp/4001\"]\n",
            no_env,
        );
        let text = err.to_string();
        assert!(
            text.contains("line 2: key mesh.bootstrap") && text.contains("/p2p/PEERID"),
            "{text}"
        );

        // Twice at the top (serde names no line there) and twice inside a map (serde keeps
        // the last without a word).
        let (path, err) = load_text("nodeId: a\nlogLevel: info\nnodeId: b\n", no_env);
        assert_eq!(
            err.to_string(),
            format!("config {path}: line 3: key nodeId is given twice (first at line 1)")
        );
        let (_, err) = load_text(
            "politeness:\n  days:\n    mon: {startHour: 1, endHour: 2}\n    mon: {startHour: 3, endHour: 4}\n",
            no_env,
        );
        assert!(
            err.to_string()
                .contains("line 4: key politeness.days.mon is given twice (first at line 3)"),
            "{err}"
        );
    }

    #[test]
    fn a_value_the_environment_set_names_the_variable_not_the_file() {
        let (_, err) = load_text("nodeId: fine\n", |k: &str| {
            (k == "NODE_ID").then(String::new)
        });
        assert!(
            matches!(&err, ConfigError::Value { key: "nodeId", .. }),
            "{err:?}"
        );
        let (_, err) = load_text("logLevel: info\n", |k: &str| {
            (k == "DB_URL").then(|| "postgres://db/x".to_string())
        });
        assert!(
            matches!(&err, ConfigError::Value { key: "dbUrl", .. })
                && err.to_string().contains("postgres://db/x"),
            "{err:?}"
        );
    }

    #[test]
    fn trusted_submitters_are_read_and_a_bad_one_is_named_with_its_line() {
        let key = novacron_mesh::identity::NodeIdentity::from_seed(&[4; 32]).unwrap();
        let good = SubmitterId::of(&key.public()).to_string();
        let cfg = NodeConfig::from_yaml(&format!("trustedSubmitters: [\"{good}\"]\n")).unwrap();
        cfg.check().unwrap();
        assert_eq!(
            cfg.trusted_submitters().unwrap(),
            vec![SubmitterId::of(&key.public())]
        );
        assert_eq!(NodeConfig::default().trusted_submitters().unwrap(), vec![]);

        let (path, err) = load_text(
            &format!("nodeId: n\ntrustedSubmitters:\n  - {good}\n  - ed25519:abc\n"),
            no_env,
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "config {path} line 2: key trustedSubmitters: item 2 of the list"
            )),
            "{text}"
        );
        let err = NodeConfig::from_yaml("trustedSubmitters: ed25519:00\n").unwrap_err();
        assert!(err.contains("trustedSubmitters"), "{err}");
    }

    #[test]
    fn listen_and_bootstrap_addresses_are_checked_before_the_node_starts() {
        for ok in [
            "mesh: {listen: [\"/ip4/0.0.0.0/tcp/0\", \"/ip6/::/udp/4001/quic-v1\"]}\n",
            "mesh: {bootstrap: [\"/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWGC2hQ2Qq2Dxrv9JjKxzuTMaK5Tdq4PXDKXsN2Jg2sE8q\"]}\n",
        ] {
            NodeConfig::from_yaml(ok).unwrap().check().unwrap();
        }
        for (bad, key) in [
            ("mesh: {listen: [\"/ip4/0.0.0.0/udp/0\"]}\n", "mesh.listen"),
            (
                "mesh: {listen: [\"/dns4/example.org/tcp/1\"]}\n",
                "mesh.listen",
            ),
            (
                "mesh: {bootstrap: [\"/ip4/10.0.0.1/tcp/4001\"]}\n",
                "mesh.bootstrap",
            ),
        ] {
            let err = NodeConfig::from_yaml(bad).unwrap().check().unwrap_err();
            assert!(
                matches!(&err, ConfigError::Value { key: k, .. } if *k == key),
                "{bad}: {err}"
            );
        }
    }

    /// `cfg`'s path check of `data` fails with every one of `words` in its message.
    fn assert_paths_refused(cfg: &NodeConfig, data: &Path, words: &[&str]) {
        let err = cfg.check_paths(data).unwrap_err().to_string();
        assert!(words.iter().all(|w| err.contains(w)), "{words:?}: {err}");
    }

    /// A config whose API section is `api`.
    fn with_api(api: ApiConfig) -> NodeConfig {
        NodeConfig {
            api,
            ..NodeConfig::default()
        }
    }

    #[test]
    fn paths_are_checked_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = NodeConfig::default();
        assert_eq!(cfg.check_paths(&data).unwrap(), data.join("state.db"));
        assert!(!data.exists(), "checking makes nothing");

        let elsewhere = NodeConfig {
            db_url: Some(format!(
                "sqlite://{}/nonexistent/dir/x.db",
                dir.path().display()
            )),
            ..NodeConfig::default()
        };
        assert_paths_refused(&elsewhere, &data, &["dbUrl", "nonexistent/dir"]);
        assert!(!dir.path().join("nonexistent").exists());

        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        assert_paths_refused(&cfg, &file, &["dataDir", "not a directory"]);

        let missing_token = with_api(ApiConfig {
            token_file: Some(dir.path().join("no-token")),
            ..ApiConfig::default()
        });
        assert_paths_refused(&missing_token, &data, &["api.tokenFile", "no-token"]);
        let dir_as_cert = with_api(ApiConfig {
            tls_enabled: true,
            tls_cert: Some(dir.path().to_path_buf()),
            tls_key: Some(file.clone()),
            ..ApiConfig::default()
        });
        assert_paths_refused(&dir_as_cert, &data, &["api.tlsCert"]);
    }

    #[test]
    fn image_directories_default_to_the_data_directory_and_must_be_absolute() {
        let cfg = NodeConfig::from_yaml("nodeId: n\n").unwrap();
        assert_eq!(
            cfg.vm.image_dirs(Path::new("/var/lib/novacron")),
            vec![PathBuf::from("/var/lib/novacron/images")]
        );
        let cfg = NodeConfig::from_yaml("vm: {imageDirs: [/srv/kernels, /opt/images]}\n").unwrap();
        cfg.check().unwrap();
        assert_eq!(
            cfg.vm.image_dirs(Path::new("/d")),
            vec![PathBuf::from("/srv/kernels"), PathBuf::from("/opt/images")]
        );
        let err = NodeConfig::from_yaml("vm: {imageDirs: [kernels]}\n")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vm.imageDirs") && err.contains("kernels"),
            "{err}"
        );
        let err = NodeConfig::from_yaml("vm: {imagedirs: [/x]}\n").unwrap_err();
        assert!(err.contains("imagedirs"), "{err}");
    }

    #[test]
    fn no_file_is_the_defaults_and_a_missing_file_is_named() {
        assert_eq!(
            NodeConfig::load(None, no_env).unwrap(),
            NodeConfig::default()
        );
        let err = NodeConfig::load(Some(Path::new("/nonexistent/node.yaml")), no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/node.yaml"), "{err}");
    }

    #[test]
    fn api_token_and_tls_keys_are_read_and_checked() {
        let cfg = NodeConfig::from_yaml(
            "api: {port: 0, tlsEnabled: true, tokenFile: /etc/t, tlsCert: /c.pem, tlsKey: /k.pem}\n",
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.api.port, 0, "port 0 is an ephemeral port");
        assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("/etc/t")));
        assert_eq!(cfg.api.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(cfg.api.tls_key.as_deref(), Some(Path::new("/k.pem")));

        for (yaml, key) in [
            ("api: {tlsEnabled: true, tlsCert: /c.pem}\n", "api.tlsKey"),
            ("api: {tlsEnabled: true, tlsKey: /k.pem}\n", "api.tlsCert"),
            ("api: {tlsCert: /c.pem, tlsKey: /k.pem}\n", "api.tlsEnabled"),
            ("api: {tokenFile: \"\"}\n", "api.tokenFile"),
        ] {
            let err = NodeConfig::from_yaml(yaml)
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{yaml:?}: {err}");
        }
        let cfg = NodeConfig::load(None, |k: &str| (k == "API_PORT").then(|| "0".into())).unwrap();
        assert_eq!(cfg.api.port, 0);
    }

    #[test]
    fn the_token_file_defaults_to_the_data_directory_when_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiConfig::default();
        let installed = Path::new(INSTALLED_TOKEN_FILE).exists();
        let found = api.token_file(dir.path());
        if installed {
            assert_eq!(found.as_deref(), Some(Path::new(INSTALLED_TOKEN_FILE)));
        } else {
            assert_eq!(found, None);
        }
        std::fs::write(dir.path().join("api.token"), "ab\n").unwrap();
        assert_eq!(
            api.token_file(dir.path()),
            Some(dir.path().join("api.token"))
        );
        let set = ApiConfig {
            token_file: Some("/elsewhere".into()),
            ..ApiConfig::default()
        };
        assert_eq!(
            set.token_file(dir.path()),
            Some(PathBuf::from("/elsewhere"))
        );
    }
}
