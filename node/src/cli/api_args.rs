//! How the API commands find the local node's REST API and its token (`ApiArgs`, flattened
//! into each command), and the small runtime they run on.
//!
//! The API's base URL, first found wins:
//! 1. `--api URL`, 2. env `NOVACRON_API`,
//! 3. `--data-dir DIR` (reads `DIR/api.url`, which the daemon writes once bound),
//! 4. env `NOVACRON_DATA_DIR` (the same),
//! 5. the config file (`--config FILE`, else `/etc/novacron/node.yaml` when it exists): its
//!    `dataDir`'s `api.url`, else `api.host`/`api.port` (0.0.0.0 and :: mean loopback),
//!    https when `api.tlsEnabled`,
//! 6. the built-in defaults (http://127.0.0.1:8080).
//!
//! The token: `--token-file FILE`, env `NOVACRON_API_TOKEN` (the token itself), then the
//! first readable of `api.token` next to the config file (where `novacron node install`
//! writes it) and `<dataDir>/api.token`. An unreadable default token file is skipped (a
//! user who is not root can still use the API on loopback, where no token is needed).
//!
//! The certificate an https API is trusted by: `--ca FILE`, env `NOVACRON_API_CA`, then the
//! config's `api.tlsCert`, then `<dataDir>/tls.crt` (the self-signed one the node makes).
//!
//! What it cannot do: read a token path from the config file (the config has no such key
//! yet), or find a node whose API URL is nowhere on this host.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::api::client::ApiClient;
use crate::config::NodeConfig;

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/novacron/node.yaml";
/// Largest `api.url` or token file read.
const MAX_SMALL_FILE: u64 = 4096;

/// Where the node's API is: shared by every command that talks to it.
#[derive(Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// The node's API base URL, e.g. http://127.0.0.1:8080 (env NOVACRON_API).
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,
    /// The running node's data directory: its API URL is in DIR/api.url
    /// (env NOVACRON_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's config file [default: /etc/novacron/node.yaml if it exists].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A file holding the API token (env NOVACRON_API_TOKEN holds the token itself).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The certificate (PEM) to trust for an https API (env NOVACRON_API_CA).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The API found: its URL, the token and the CA file, and where the URL came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    /// Where the URL came from, for error messages ("--api", "NOVACRON_API", a file...).
    pub source: String,
}

impl ApiArgs {
    /// Finds the API as the module doc says, reading the environment through `env` and
    /// taking `default_config` as the config file when `--config` is not given.
    pub fn discover(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        default_config: &Path,
    ) -> anyhow::Result<Endpoint> {
        let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let env_data_dir = env_nonempty("NOVACRON_DATA_DIR").map(PathBuf::from);

        // The config is needed for the URL only when nothing earlier names it, but its
        // directories also hold the token: load it when given or present, lazily.
        let config_path = match &self.config {
            Some(p) => Some(p.clone()),
            None => default_config
                .exists()
                .then(|| default_config.to_path_buf()),
        };
        let load_config = || -> anyhow::Result<Option<NodeConfig>> {
            match &config_path {
                None => Ok(None),
                Some(p) => NodeConfig::load(Some(p), env).map(Some).with_context(|| {
                    format!(
                        "cannot find the API from the config file {} (or pass --api URL)",
                        p.display()
                    )
                }),
            }
        };

        let mut config: Option<NodeConfig> = None;
        let (url, source) = if let Some(u) = &self.api {
            (u.trim().to_string(), "--api".to_string())
        } else if let Some(u) = env_nonempty("NOVACRON_API") {
            (u.trim().to_string(), "NOVACRON_API".to_string())
        } else if let Some(dir) = &self.data_dir {
            (read_api_url(dir, "--data-dir")?, api_url_path(dir))
        } else if let Some(dir) = &env_data_dir {
            (read_api_url(dir, "NOVACRON_DATA_DIR")?, api_url_path(dir))
        } else {
            config = load_config()?;
            match &config {
                Some(cfg) => {
                    let from_dir = cfg
                        .data_dir
                        .as_deref()
                        .and_then(|d| read_small(&d.join("api.url")).ok().map(|u| (u, d)));
                    match from_dir {
                        Some((u, d)) => (u, api_url_path(d)),
                        None => (
                            config_url(cfg),
                            format!(
                                "{} (api.host, api.port)",
                                config_path
                                    .as_deref()
                                    .map_or("the config".into(), |p| p.display().to_string())
                            ),
                        ),
                    }
                }
                None => (
                    config_url(&NodeConfig::default()),
                    "the default address (no --api, NOVACRON_API, --data-dir or config file)"
                        .to_string(),
                ),
            }
        };

        let named_token = if let Some(f) = &self.token_file {
            Some(read_small(f).with_context(|| format!("--token-file {}", f.display()))?)
        } else {
            env_nonempty("NOVACRON_API_TOKEN").map(|t| t.trim().to_string())
        };
        let named_ca = self
            .ca
            .clone()
            .or_else(|| env_nonempty("NOVACRON_API_CA").map(PathBuf::from));
        let https = url.starts_with("https://");

        // The files the node keeps next to its config and in its data directory.
        let mut data_dir = None;
        if named_token.is_none() || (https && named_ca.is_none()) {
            if config.is_none() {
                // Only its directories matter here: a config that does not load is not an
                // error when the URL came from elsewhere.
                config = load_config().ok().flatten();
            }
            data_dir = self
                .data_dir
                .clone()
                .or(env_data_dir)
                .or_else(|| config.as_ref().and_then(|c| c.data_dir.clone()));
        }
        let token = named_token.or_else(|| {
            config_path
                .as_deref()
                .and_then(Path::parent)
                .map(|d| d.join("api.token"))
                .into_iter()
                .chain(data_dir.as_ref().map(|d| d.join("api.token")))
                .find_map(|c| read_small(&c).ok())
        });
        // An https API's certificate: the operator's (api.tlsCert), else the self-signed
        // one the node made in its data directory.
        let ca = named_ca.or_else(|| {
            if !https {
                return None;
            }
            config
                .as_ref()
                .and_then(|c| c.api.tls_cert.clone())
                .into_iter()
                .chain(data_dir.as_ref().map(|d| d.join("tls.crt")))
                .find(|p| p.is_file())
        });
        Ok(Endpoint {
            url,
            token,
            ca,
            source,
        })
    }

    /// Finds the API from the real environment and builds a client for it.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let env = |k: &str| std::env::var(k).ok();
        let ep = self.discover(&env, Path::new(DEFAULT_CONFIG))?;
        tracing::debug!(url = %ep.url, source = %ep.source, "API found");
        ApiClient::new(&ep.url, ep.token, ep.ca.as_deref())
            .with_context(|| format!("the API URL came from {}", ep.source))
    }
}

fn api_url_path(dir: &Path) -> String {
    dir.join("api.url").display().to_string()
}

/// `DIR/api.url`, with an error that says what to do when it is not there.
fn read_api_url(dir: &Path, flag: &str) -> anyhow::Result<String> {
    let path = dir.join("api.url");
    match read_small(&path) {
        Ok(u) => Ok(u),
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(|e| e.kind())
                == Some(std::io::ErrorKind::NotFound) =>
        {
            bail!(
                "{flag} {}: no api.url in it: is `novacron node --data-dir {}` running? \
                 (it writes api.url once its API listens)",
                dir.display(),
                dir.display()
            )
        }
        Err(e) => Err(e.context(format!("{flag} {}", dir.display()))),
    }
}

/// A small text file, trimmed; empty or oversized files are errors.
fn read_small(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_SMALL_FILE {
        bail!(
            "{}: {len} bytes is over the {MAX_SMALL_FILE}-byte limit",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)?;
    let text = text.trim();
    if text.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(text.to_string())
}

/// The URL the config's `api` section names; an unspecified host means loopback.
fn config_url(cfg: &NodeConfig) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let host = match cfg.api.host {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        h => h,
    };
    let scheme = if cfg.api.tls_enabled { "https" } else { "http" };
    match host {
        IpAddr::V4(a) => format!("{scheme}://{a}:{}", cfg.api.port),
        IpAddr::V6(a) => format!("{scheme}://[{a}]:{}", cfg.api.port),
    }
}

/// Runs an async command body on a small runtime of its own.
pub fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// Ctrl-C (SIGINT) from now on. One listener for the command's whole life: a Ctrl-C that
/// comes between two waits is kept, not lost (and does not kill the process). Call it
/// inside the runtime, before the work that Ctrl-C should interrupt.
pub fn interrupts() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")
}

/// An environment of `pairs` as the discovery functions read one (tests).
#[cfg(test)]
pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        flag_dir: PathBuf,
        env_dir: PathBuf,
        cfg_data_dir: PathBuf,
        config: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, url: &str| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("api.url"), format!("{url}\n")).unwrap();
            d
        };
        let flag_dir = mk("flag", "http://127.0.0.1:3");
        let env_dir = mk("env", "http://127.0.0.1:4");
        let cfg_data_dir = mk("cfgdata", "http://127.0.0.1:5");
        let etc = tmp.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let config = etc.join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "dataDir: {}\napi: {{host: 0.0.0.0, port: 6}}\n",
                cfg_data_dir.display()
            ),
        )
        .unwrap();
        Fixture {
            _tmp: tmp,
            flag_dir,
            env_dir,
            cfg_data_dir,
            config,
        }
    }

    #[test]
    fn discovery_takes_the_first_source_in_order() {
        let f = fixture();
        let full_env = env_of(&[
            ("NOVACRON_API", "http://127.0.0.1:2"),
            ("NOVACRON_DATA_DIR", f.env_dir.to_str().unwrap()),
        ]);
        let no_default = Path::new("/nonexistent/node.yaml");
        let mut args = ApiArgs {
            api: Some("http://127.0.0.1:1".into()),
            data_dir: Some(f.flag_dir.clone()),
            config: Some(f.config.clone()),
            ..ApiArgs::default()
        };
        let url = |args: &ApiArgs, env: &dyn Fn(&str) -> Option<String>| {
            args.discover(env, no_default).unwrap().url
        };
        assert_eq!(url(&args, &full_env), "http://127.0.0.1:1");
        args.api = None;
        assert_eq!(url(&args, &full_env), "http://127.0.0.1:2");
        let env = env_of(&[("NOVACRON_DATA_DIR", f.env_dir.to_str().unwrap())]);
        assert_eq!(url(&args, &env), "http://127.0.0.1:3");
        args.data_dir = None;
        assert_eq!(url(&args, &env), "http://127.0.0.1:4");
        let none = env_of(&[]);
        assert_eq!(url(&args, &none), "http://127.0.0.1:5");
        // The config's dataDir has no api.url: its api section, 0.0.0.0 meaning loopback.
        std::fs::remove_file(f.cfg_data_dir.join("api.url")).unwrap();
        assert_eq!(url(&args, &none), "http://127.0.0.1:6");
        // The default config is read only when it exists.
        args.config = None;
        assert_eq!(
            args.discover(&none, &f.config).unwrap().url,
            "http://127.0.0.1:6"
        );
        let ep = args.discover(&none, no_default).unwrap();
        assert_eq!(ep.url, "http://127.0.0.1:8080");
        assert!(ep.source.contains("default"), "{}", ep.source);
    }

    #[test]
    fn tls_and_ipv6_configs_give_https_and_brackets() {
        let cfg =
            NodeConfig::from_yaml("api: {host: '::', port: 9443, tlsEnabled: true}\n").unwrap();
        assert_eq!(config_url(&cfg), "https://[::1]:9443");
    }

    #[test]
    fn the_token_comes_from_the_flag_the_env_or_the_default_files() {
        let f = fixture();
        let etc = f.config.parent().unwrap();
        std::fs::write(etc.join("api.token"), "etc-token\n").unwrap();
        std::fs::write(f.cfg_data_dir.join("api.token"), "data-token\n").unwrap();
        let flag_token = f.flag_dir.join("t");
        std::fs::write(&flag_token, " flag-token \n").unwrap();
        let no_default = Path::new("/nonexistent/node.yaml");
        let mut args = ApiArgs {
            config: Some(f.config.clone()),
            token_file: Some(flag_token),
            ..ApiArgs::default()
        };
        let env = env_of(&[("NOVACRON_API_TOKEN", "env-token")]);
        let none = env_of(&[]);
        let token = |args: &ApiArgs, env: &dyn Fn(&str) -> Option<String>| {
            args.discover(env, no_default).unwrap().token
        };
        assert_eq!(token(&args, &env).as_deref(), Some("flag-token"));
        args.token_file = None;
        assert_eq!(token(&args, &env).as_deref(), Some("env-token"));
        assert_eq!(token(&args, &none).as_deref(), Some("etc-token"));
        std::fs::remove_file(etc.join("api.token")).unwrap();
        assert_eq!(token(&args, &none).as_deref(), Some("data-token"));
        std::fs::remove_file(f.cfg_data_dir.join("api.token")).unwrap();
        assert_eq!(token(&args, &none), None);
        // A named token file that is missing is an error naming it.
        args.token_file = Some(PathBuf::from("/nonexistent/token"));
        let err = format!("{:#}", args.discover(&none, no_default).unwrap_err());
        assert!(err.contains("--token-file /nonexistent/token"), "{err}");
    }

    #[test]
    fn an_https_api_is_trusted_by_the_flag_the_env_the_config_or_the_node_certificate() {
        let f = fixture();
        let dir = f.flag_dir.clone();
        std::fs::write(dir.join("api.url"), "https://127.0.0.1:9443\n").unwrap();
        let no_default = Path::new("/nonexistent/node.yaml");
        let mut args = ApiArgs {
            data_dir: Some(dir.clone()),
            ca: Some(PathBuf::from("/flag/ca.pem")),
            ..ApiArgs::default()
        };
        let env = env_of(&[("NOVACRON_API_CA", "/env/ca.pem")]);
        let none = env_of(&[]);
        let ca = |args: &ApiArgs, env: &dyn Fn(&str) -> Option<String>| {
            args.discover(env, no_default).unwrap().ca
        };
        assert_eq!(ca(&args, &env), Some(PathBuf::from("/flag/ca.pem")));
        args.ca = None;
        assert_eq!(ca(&args, &env), Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(ca(&args, &none), None, "no certificate file exists yet");
        std::fs::write(dir.join("tls.crt"), "pem").unwrap();
        assert_eq!(ca(&args, &none), Some(dir.join("tls.crt")));
        // The config's own certificate comes before the data directory's.
        let own = f.config.parent().unwrap().join("own.crt");
        std::fs::write(&own, "pem").unwrap();
        std::fs::write(
            &f.config,
            format!(
                "api: {{tlsEnabled: true, tlsCert: {0}, tlsKey: {0}}}\n",
                own.display()
            ),
        )
        .unwrap();
        args.config = Some(f.config.clone());
        assert_eq!(ca(&args, &none), Some(own));
        // Plain http needs no certificate.
        std::fs::write(dir.join("api.url"), "http://127.0.0.1:8080\n").unwrap();
        assert_eq!(ca(&args, &none), None);
    }

    #[test]
    fn errors_say_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let args = ApiArgs {
            data_dir: Some(tmp.path().to_path_buf()),
            ..ApiArgs::default()
        };
        let err = args
            .discover(&env_of(&[]), Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no api.url") && err.contains("novacron node --data-dir"),
            "{err}"
        );
        let bad = tmp.path().join("bad.yaml");
        std::fs::write(&bad, "apii: {}\n").unwrap();
        let args = ApiArgs {
            config: Some(bad.clone()),
            ..ApiArgs::default()
        };
        let err = format!(
            "{:#}",
            args.discover(&env_of(&[]), Path::new("/nonexistent"))
                .unwrap_err()
        );
        assert!(err.contains("apii") && err.contains("--api URL"), "{err}");
        // ... but a bad config does not matter when the URL is given.
        let args = ApiArgs {
            api: Some("http://127.0.0.1:1".into()),
            config: Some(bad),
            ..ApiArgs::default()
        };
        assert!(args.discover(&env_of(&[]), Path::new("/x")).is_ok());
    }
}
