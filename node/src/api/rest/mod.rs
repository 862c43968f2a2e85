//! The node's REST API under `/api/v1` and its Prometheus `/metrics`, over any
//! [`NodeService`]: routes ([`router`]), JSON errors ([`error`]), bearer-token auth off
//! loopback ([`auth`]), WebSocket streams ([`ws`]), the OpenAPI document ([`openapi`]),
//! TLS ([`tls`]) and the listener ([`serve()`]).
//!
//! Every answer that is not a success is a JSON `ApiError {error}`; docs/node.md lists the
//! routes. What this layer cannot do: rate-limit callers, or authenticate browsers' WebSocket
//! connections from off the machine (they cannot set an `Authorization` header).

pub mod auth;
pub mod connections;
pub mod error;
pub mod handlers;
pub mod jobs;
pub(crate) mod listener;
pub mod openapi;
mod serve;
pub mod tls;
mod watched;
pub mod ws;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_e2e;
#[cfg(test)]
mod tests_limits;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use auth::ApiAuth;
pub(crate) use serve::write_atomic;
pub use serve::{limits, prepare, PreparedApi};

use crate::api::service::NodeService;
use crate::metrics::Metrics;

/// What every handler gets.
pub struct ApiState<S> {
    pub service: Arc<S>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            service: self.service.clone(),
        }
    }
}

/// The API's routes over `service`; requests are counted in `metrics` and checked
/// against `auth`. Serve it with connect info (`SocketAddr`), or every caller is remote.
pub fn router<S: NodeService>(service: Arc<S>, metrics: Arc<Metrics>, auth: ApiAuth) -> Router {
    use handlers as h;
    Router::new()
        .route("/api/v1/node", get(h::node::<S>))
        .route("/api/v1/peers", get(h::peers::<S>))
        .route("/api/v1/cells", get(h::cells::<S>))
        .route("/api/v1/vms", get(h::list_vms::<S>).post(h::create_vm::<S>))
        .route(
            "/api/v1/vms/{id}",
            get(h::get_vm::<S>).delete(h::delete_vm::<S>),
        )
        .route("/api/v1/vms/{id}/pause", post(h::pause_vm::<S>))
        .route("/api/v1/vms/{id}/resume", post(h::resume_vm::<S>))
        .route("/api/v1/vms/{id}/migrate", post(h::migrate_vm::<S>))
        .route("/api/v1/migrations", get(h::list_migrations::<S>))
        .route("/api/v1/migrations/{id}", get(h::get_migration::<S>))
        .route(
            "/api/v1/migrations/{id}/cancel",
            post(h::cancel_migration::<S>),
        )
        .route(
            "/api/v1/migrations/{id}/watch",
            get(h::watch_migration::<S>),
        )
        .route(
            "/api/v1/jobs",
            get(jobs::list_jobs::<S>).post(jobs::submit_job::<S>),
        )
        .route(
            "/api/v1/jobs/{id}",
            get(jobs::get_job::<S>).delete(jobs::cancel_job::<S>),
        )
        .route("/api/v1/jobs/{id}/logs", get(jobs::job_logs::<S>))
        .route("/api/v1/jobs/{id}/result", get(jobs::job_result::<S>))
        .route("/api/v1/politeness", get(h::politeness::<S>))
        .route("/api/v1/politeness/owner", post(h::set_owner::<S>))
        .route("/api/v1/drain", post(h::drain::<S>))
        .route("/api/v1/events", get(h::events::<S>))
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/metrics", get(h::metrics::<S>))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::new(auth),
            auth::require_auth,
        ))
        .layer(middleware::from_fn_with_state(metrics, metered))
        .with_state(ApiState { service })
}

/// Counts each answered request by method, matched route template and status.
async fn metered(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.api_request(method, &route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The method as a label: the standard ones, anything else `other` (bounded label values).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
