//! The dashboard's HTTP side: its own listener (`dashboard.host:dashboard.port`, default
//! http://localhost:3000), behind the same hostile-facing accept loop as the API
//! (connection caps, head and idle timeouts; TLS when the API uses TLS). Pages are rendered
//! by `novacron-dashboard` from what [`NodeService`] answers, as the REST API does.
//!
//! - [`access`]: who may look (loopback by its Host, others with a session cookie from the
//!   API token) and the sign-in page;
//! - [`pages`]: the pages, whole or as the fragment the live script swaps in, a job's log
//!   and result, the assets;
//! - [`actions`]: the POSTs, each checked against the session's CSRF token;
//! - [`answers`]: the HTML headers and redirects the handlers share;
//! - [`stream`]: the server-sent events that drive live updates;
//! - [`memory`]: what the node keeps for the charts, churn and recent events.

pub mod access;
pub mod actions;
pub mod answers;
pub mod memory;
pub mod pages;
pub mod stream;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use novacron_dashboard::csrf::CsrfKey;
use novacron_dashboard::shell::Notice;

use super::rest::listener::{self, ListenerLimits};
use super::rest::ApiAuth;
use crate::api::service::NodeService;
use crate::config::{DashboardConfig, DEFAULT_DASHBOARD_PORT};
pub use memory::NodeMemory;

/// Where a node writes its dashboard's URL (`<dataDir>/dashboard.url`), as it does the API's.
pub const URL_FILE: &str = "dashboard.url";

/// Outcomes of actions waiting to be shown once (kept at most).
const MAX_FLASHES: usize = 64;

/// Everything a dashboard handler gets.
pub struct Dashboard<S> {
    pub service: Arc<S>,
    pub memory: Arc<NodeMemory>,
    pub csrf: CsrfKey,
    /// The API's token: sessions are derived from it.
    pub auth: ApiAuth,
    /// The node's name in the header.
    pub node_name: String,
    /// Where the submitter keys the node signs with are (None: the default keys directory).
    pub keys_dir: Option<PathBuf>,
    /// Cookies are `Secure` when the dashboard is served over TLS.
    pub tls: bool,
    flashes: Mutex<VecDeque<(String, Notice)>>,
}

impl<S> Dashboard<S> {
    pub fn new(
        service: Arc<S>,
        memory: Arc<NodeMemory>,
        auth: ApiAuth,
        node_name: String,
        keys_dir: Option<PathBuf>,
        tls: bool,
    ) -> Result<Dashboard<S>, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Dashboard {
            service,
            memory,
            csrf: CsrfKey::new(key),
            auth,
            node_name,
            keys_dir,
            tls,
            flashes: Mutex::default(),
        })
    }

    /// Keeps `notice` to show once; returns its id for the redirect.
    pub fn flash(&self, notice: Notice) -> String {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = self.flashes.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() == MAX_FLASHES {
            f.pop_front();
        }
        f.push_back((id.clone(), notice));
        id
    }

    /// The notice `id` names, once.
    pub fn take_flash(&self, id: &str) -> Option<Notice> {
        let mut f = self.flashes.lock().unwrap_or_else(|p| p.into_inner());
        let at = f.iter().position(|(k, _)| k == id)?;
        f.remove(at).map(|(_, n)| n)
    }
}

/// The dashboard's routes.
pub fn router<S: NodeService>(dashboard: Arc<Dashboard<S>>) -> Router {
    use pages as p;
    Router::new()
        .route("/", get(p::overview::<S>))
        .route("/node", get(p::node::<S>))
        .route("/vms", get(p::vms::<S>))
        .route("/jobs", get(p::jobs::<S>).post(actions::submit_job::<S>))
        .route("/jobs/{id}", get(p::job::<S>))
        .route("/jobs/{id}/log", get(p::job_log::<S>))
        .route("/jobs/{id}/result", get(p::job_result::<S>))
        .route("/jobs/{id}/cancel", post(actions::cancel_job::<S>))
        .route("/migrations", get(p::migrations::<S>))
        .route("/vms/{id}/{action}", post(actions::vm_action::<S>))
        .route("/node/owner", post(actions::set_owner::<S>))
        .route("/node/drain", post(actions::drain::<S>))
        .route("/events", get(stream::events::<S>))
        .route(
            "/login",
            get(access::login_page::<S>).post(access::login::<S>),
        )
        .route("/assets/{file}", get(p::asset))
        .fallback(p::not_found)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            access::require_access::<S>,
        ))
        .layer(axum::middleware::map_response(pages::security_headers))
        .with_state(dashboard)
}

/// The dashboard's port bound (before the node starts anything else, like the API's), with
/// what it shares with the API: the token and TLS.
pub struct PreparedDashboard {
    listener: std::net::TcpListener,
    auth: ApiAuth,
    tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("dashboard: cannot listen on {addr}: {source} (is another node or program on that port? set dashboard.port, DASHBOARD_PORT or --dashboard-port; 0 turns it off)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("dashboard: no random bytes for its CSRF key: {0}")]
    Random(String),
}

/// Binds the dashboard's port as `config` says (None when it is off). The default port,
/// when taken, gives way to any free one (several nodes on one machine); a configured one
/// must be free.
pub fn prepare(
    config: &DashboardConfig,
    api: &super::rest::PreparedApi,
) -> Result<Option<PreparedDashboard>, DashboardError> {
    let (port, fallback) = match config.port {
        Some(0) => return Ok(None),
        Some(p) => (p, false),
        None => (DEFAULT_DASHBOARD_PORT, true),
    };
    let want = SocketAddr::new(config.host, port);
    let bind = |addr: SocketAddr| {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    };
    let listener = match bind(want) {
        Ok(l) => l,
        Err(e) if fallback && e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(config.host, 0);
            let l = bind(any).map_err(|source| DashboardError::Bind { addr: any, source })?;
            eprintln!(
                "novacron: port {port} is taken (another node?): the dashboard takes a free port"
            );
            l
        }
        Err(source) => return Err(DashboardError::Bind { addr: want, source }),
    };
    Ok(Some(PreparedDashboard {
        listener,
        auth: api.auth().clone(),
        tls: api.tls_config(),
    }))
}

impl PreparedDashboard {
    /// Serves the dashboard of `service` until `shutdown`.
    pub fn serve<S: NodeService>(
        self,
        limits: ListenerLimits,
        service: Arc<S>,
        memory: Arc<NodeMemory>,
        node_name: String,
        keys_dir: Option<PathBuf>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<BoundDashboard, DashboardError> {
        let tls = self.tls.is_some();
        let dashboard = Dashboard::new(service, memory, self.auth, node_name, keys_dir, tls)
            .map_err(|e| DashboardError::Random(e.to_string()))?;
        let acceptor = self.tls.map(tokio_rustls::TlsAcceptor::from);
        serve(
            self.listener,
            acceptor,
            limits,
            Arc::new(dashboard),
            shutdown,
        )
        .map_err(|source| DashboardError::Bind {
            addr: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
            source,
        })
    }
}

/// The dashboard's listener, bound.
pub struct BoundDashboard {
    pub addr: SocketAddr,
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl BoundDashboard {
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Serves `dashboard` on `listener` (with `tls` when given) until `shutdown`.
pub fn serve<S: NodeService>(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ListenerLimits,
    dashboard: Arc<Dashboard<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<BoundDashboard> {
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = match addr.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let url = format!("{scheme}://{host}:{}", addr.port());
    let app = router(dashboard);
    let task = tokio::spawn(listener::run(listener, app, tls, limits, None, shutdown));
    Ok(BoundDashboard { addr, url, task })
}
