//! The API's listener: binds `api.host:api.port` (0 = any free port), serves HTTP or HTTPS
//! through the hostile-facing accept loop of [`super::listener`] (connection caps, head and
//! idle timeouts, descriptors kept for the node), writes `<dataDir>/api.url` for the CLI and
//! tests, and shuts down gracefully when told.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::auth::{ApiAuth, TokenError};
use super::connections::{fd_limit, ConnectionCaps};
use super::listener::{self, ListenerLimits};
use super::tls::{self, TlsError};
use crate::api::service::NodeService;
use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// How long open connections (event streams included) get to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to finish a TLS handshake or send a request's head, the first
/// one included (slow or silent clients hold no connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits `config` sets, within this process's descriptor limit.
pub fn limits(config: &ApiConfig) -> ListenerLimits {
    let caps = ConnectionCaps {
        max: config.max_connections,
        per_address: config.max_connections_per_address,
    };
    ListenerLimits {
        caps: fd_limit().map_or(caps, |n| caps.within_fd_limit(n)),
        head_timeout: HEADER_READ_TIMEOUT,
        idle_timeout: Duration::from_secs(config.idle_timeout_s),
        shutdown_grace: SHUTDOWN_GRACE,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API: cannot listen on {addr}: {source} (is another node or program on that port? set api.port or API_PORT, 0 for any free port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("API: {0}")]
    Token(#[from] TokenError),
    #[error("API: {0}")]
    Tls(#[from] TlsError),
    #[error("API: cannot write {path}: {source}")]
    UrlFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running API server.
pub struct BoundApi {
    /// The address it listens on (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// How a client on this machine reaches it (`http://127.0.0.1:41234`), as in `api.url`.
    pub url: String,
    /// The certificate's SHA-256 fingerprint when serving TLS.
    pub tls_fingerprint: Option<String>,
    task: JoinHandle<()>,
}

impl BoundApi {
    /// Waits until the server has stopped (after the shutdown future completed and open
    /// connections finished or the grace ran out).
    pub async fn stopped(self) -> std::io::Result<()> {
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("the API task ended badly: {e}")))
    }
}

/// The file the URL is written to.
pub fn url_path(data_dir: &Path) -> PathBuf {
    data_dir.join("api.url")
}

/// Serves `service` as `config` says until `shutdown` completes. The token is read from
/// `config.token_file(data_dir)`; with TLS the certificate comes from the config or is made
/// in `data_dir`. Returns once listening.
#[cfg(test)]
pub async fn serve<S: NodeService>(
    config: &ApiConfig,
    data_dir: &Path,
    service: Arc<S>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<BoundApi, ServeError> {
    serve_with(config, limits(config), data_dir, service, metrics, shutdown).await
}

/// [`serve`] with the listener's limits given.
#[cfg(test)]
pub async fn serve_with<S: NodeService>(
    config: &ApiConfig,
    limits: ListenerLimits,
    data_dir: &Path,
    service: Arc<S>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<BoundApi, ServeError> {
    prepare(config, data_dir)?.serve(limits, data_dir, service, metrics, shutdown)
}

/// The API made ready to serve, before the node it serves exists: its token read, its TLS
/// certificate loaded (or made), its port bound. A node does this before it joins the mesh,
/// so a port in use or a bad certificate stops it before anything else starts.
pub struct PreparedApi {
    auth: ApiAuth,
    tls: Option<tls::TlsSetup>,
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

/// Prepares the API `config` describes (see [`PreparedApi`]).
pub fn prepare(config: &ApiConfig, data_dir: &Path) -> Result<PreparedApi, ServeError> {
    let token_file = config.token_file(data_dir);
    let auth = ApiAuth::load(token_file.as_deref())?;
    let tls = if config.tls_enabled {
        Some(tls::setup(config, data_dir)?)
    } else {
        None
    };

    let want = SocketAddr::new(config.host, config.port);
    let bind_err = |source| ServeError::Bind { addr: want, source };
    let listener = std::net::TcpListener::bind(want).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    match &token_file {
        Some(f) if auth.has_token() => {
            tracing::info!(token_file = %f.display(), "API token loaded")
        }
        _ if !is_loopback_only(config.host) => eprintln!(
            "novacron: the API has no token: it answers only callers on this machine \
             (run `novacron node install` or set api.tokenFile)"
        ),
        _ => {}
    }
    Ok(PreparedApi {
        auth,
        tls,
        listener,
        addr,
    })
}

impl PreparedApi {
    /// The API's token (the dashboard derives its sessions from it).
    pub fn auth(&self) -> &ApiAuth {
        &self.auth
    }

    /// The API's TLS setup, when it serves TLS (the dashboard serves the same).
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.as_ref().map(|t| t.config.clone())
    }

    /// Serves `service` (on the current tokio runtime) until `shutdown` completes, and
    /// writes the URL to `<data_dir>/api.url`.
    pub fn serve<S: NodeService>(
        self,
        limits: ListenerLimits,
        data_dir: &Path,
        service: Arc<S>,
        metrics: Arc<Metrics>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<BoundApi, ServeError> {
        let addr = self.addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", reachable(addr));
        let app = super::router(service, metrics.clone(), self.auth);
        let fingerprint = self.tls.as_ref().map(|t| t.fingerprint.clone());
        let acceptor = self.tls.map(|t| {
            eprintln!(
                "novacron: API TLS certificate {}{} SHA-256 {}",
                t.cert_path.display(),
                if t.generated {
                    " (self-signed, made now)"
                } else {
                    ""
                },
                t.fingerprint
            );
            tokio_rustls::TlsAcceptor::from(t.config)
        });
        tracing::debug!(
            max = limits.caps.max,
            per_address = limits.caps.per_address,
            idle_s = limits.idle_timeout.as_secs(),
            "API connection limits"
        );
        let task = tokio::spawn(listener::run(
            listener,
            app,
            acceptor,
            limits,
            Some(metrics),
            shutdown,
        ));

        let path = url_path(data_dir);
        write_atomic(&path, format!("{url}\n").as_bytes()).map_err(|source| {
            ServeError::UrlFile {
                path: path.clone(),
                source,
            }
        })?;
        eprintln!("novacron: API on {url} (listening on {addr})");
        Ok(BoundApi {
            addr,
            url,
            tls_fingerprint: fingerprint,
            task,
        })
    }
}

/// Whether binding `host` keeps the API on this machine.
fn is_loopback_only(host: IpAddr) -> bool {
    super::auth::is_loopback(host)
}

/// The address a local client dials: the bound one, with a wildcard host made loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Writes `bytes` to `path` whole or not at all (temp file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("url.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_are_written_as_loopback() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(reachable(a).to_string(), "127.0.0.1:80");
        let a: SocketAddr = "[::]:80".parse().unwrap();
        assert_eq!(reachable(a).to_string(), "[::1]:80");
        let a: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(reachable(a), a);
    }
}
