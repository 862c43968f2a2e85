//! The route handlers: each translates one request into a [`NodeService`] call and its
//! answer into JSON. The `#[utoipa::path]` attributes are the OpenAPI document's source.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiFailure, IdPath, JsonBody, OptionalJsonBody};
use super::{ws, ApiState};
use crate::api::service::{NodeService, VmDeleted};
use crate::api::types::{
    ApiError, EventEnvelope, MigrationInfo, MigrationRequest, OwnerRequest, PolitenessInfo, VmInfo,
    VmSpec,
};
use crate::api::{CellStatus, MemberStatus, NodeStatus, SummaryStatus};

type ApiResult<T> = Result<T, ApiFailure>;

/// Longest drain deadline, seconds.
pub const MAX_DRAIN_S: u64 = 3600;
pub const DEFAULT_DRAIN_S: u64 = 120;

/// `GET /api/v1/cells`: the node's cell and the summaries it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CellsView {
    pub cell: Option<CellStatus>,
    pub summaries: Vec<SummaryStatus>,
}

/// `POST /api/v1/drain`; an empty body is the defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Seconds for every VM to move away or be snapshotted (1-3600, default 120).
    #[serde(default = "default_drain")]
    pub deadline_s: u64,
}

fn default_drain() -> u64 {
    DEFAULT_DRAIN_S
}

impl Default for DrainRequest {
    fn default() -> Self {
        DrainRequest {
            deadline_s: DEFAULT_DRAIN_S,
        }
    }
}

/// The answer to a drain: it has started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DrainAccepted {
    pub draining: bool,
    pub deadline_s: u64,
}

#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses((status = 200, description = "Who the node is and what it sees", body = NodeStatus),
        (status = 401, body = ApiError), (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn node<S: NodeService>(State(st): State<ApiState<S>>) -> ApiResult<Json<NodeStatus>> {
    Ok(Json(st.service.status().await?))
}

#[utoipa::path(get, path = "/api/v1/peers", tag = "node",
    responses((status = 200, description = "The members of the node's cell (empty before it has one)", body = [MemberStatus]),
        (status = 401, body = ApiError), (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn peers<S: NodeService>(
    State(st): State<ApiState<S>>,
) -> ApiResult<Json<Vec<MemberStatus>>> {
    let status = st.service.status().await?;
    Ok(Json(status.cell.map(|c| c.members).unwrap_or_default()))
}

#[utoipa::path(get, path = "/api/v1/cells", tag = "node",
    responses((status = 200, description = "The node's cell and the cell summaries it holds", body = CellsView),
        (status = 401, body = ApiError), (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn cells<S: NodeService>(State(st): State<ApiState<S>>) -> ApiResult<Json<CellsView>> {
    let status = st.service.status().await?;
    Ok(Json(CellsView {
        cell: status.cell,
        summaries: status.summaries,
    }))
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms",
    responses((status = 200, description = "Every VM the node knows", body = [VmInfo]), (status = 401, body = ApiError)))]
pub async fn list_vms<S: NodeService>(State(st): State<ApiState<S>>) -> Json<Vec<VmInfo>> {
    Json(st.service.vms())
}

#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = VmSpec,
    responses((status = 201, description = "The VM is starting", body = VmInfo),
        (status = 400, description = "Malformed JSON, unknown fields or an impossible spec", body = ApiError),
        (status = 401, body = ApiError), (status = 409, body = ApiError),
        (status = 413, description = "Body over 64 KiB", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 500, body = ApiError),
        (status = 503, description = "No capacity, draining, or the owner needs the machine", body = ApiError)))]
pub async fn create_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    JsonBody(spec): JsonBody<VmSpec>,
) -> ApiResult<(StatusCode, Json<VmInfo>)> {
    Ok((StatusCode::CREATED, Json(st.service.create_vm(spec).await?)))
}

#[utoipa::path(get, path = "/api/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<VmInfo>> {
    st.service
        .vm(&id)
        .map(Json)
        .ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no VM {id:?} on this node")))
}

#[utoipa::path(delete, path = "/api/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, description = "The VM was active or suspended: it is stopped now and its record kept (a second DELETE removes it)", body = VmInfo),
        (status = 204, description = "The VM had ended (exited, failed, moved away): its record and its files (console, checkpoints) are removed"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "Migrating (cancel it first), migrating in, or still ending", body = ApiError), (status = 500, body = ApiError)))]
pub async fn delete_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    Ok(match st.service.delete_vm(&id).await? {
        VmDeleted::Stopped(vm) => Json(*vm).into_response(),
        VmDeleted::Removed => StatusCode::NO_CONTENT.into_response(),
    })
}

#[utoipa::path(post, path = "/api/v1/vms/{id}/pause", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 500, body = ApiError)))]
pub async fn pause_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<VmInfo>> {
    Ok(Json(st.service.pause_vm(&id).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{id}/resume", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn resume_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<VmInfo>> {
    Ok(Json(st.service.resume_vm(&id).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{id}/migrate", tag = "migrations", params(("id" = String, Path, description = "VM id")),
    request_body = MigrationRequest,
    responses((status = 202, description = "The migration is under way", body = MigrationInfo),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError),
        (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn migrate_vm<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
    JsonBody(request): JsonBody<MigrationRequest>,
) -> ApiResult<(StatusCode, Json<MigrationInfo>)> {
    let m = st.service.start_migration(&id, request).await?;
    Ok((StatusCode::ACCEPTED, Json(m)))
}

#[utoipa::path(get, path = "/api/v1/migrations", tag = "migrations",
    responses((status = 200, description = "Migrations in and out, newest first", body = [MigrationInfo]), (status = 401, body = ApiError)))]
pub async fn list_migrations<S: NodeService>(
    State(st): State<ApiState<S>>,
) -> Json<Vec<MigrationInfo>> {
    Json(st.service.migrations())
}

#[utoipa::path(get, path = "/api/v1/migrations/{id}", tag = "migrations", params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationInfo), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_migration<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<MigrationInfo>> {
    find_migration(&st, &id).map(Json)
}

fn find_migration<S: NodeService>(st: &ApiState<S>, id: &str) -> ApiResult<MigrationInfo> {
    st.service.migration(id).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no migration {id:?} on this node"),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/migrations/{id}/cancel", tag = "migrations", params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, description = "The migration, cancelled (the VM stays on the source)", body = MigrationInfo),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "Already past the point of no return, or ended", body = ApiError), (status = 500, body = ApiError)))]
pub async fn cancel_migration<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<MigrationInfo>> {
    Ok(Json(st.service.cancel_migration(&id).await?))
}

/// A plain request to a WebSocket route: 426 Upgrade Required, naming the protocol to
/// upgrade to (RFC 9110 §15.5.22) and the WebSocket version spoken.
fn upgrade_failure(e: WebSocketUpgradeRejection) -> Response {
    let mut resp = ApiFailure::new(
        StatusCode::UPGRADE_REQUIRED,
        format!(
            "this route is a WebSocket: connect with Upgrade: websocket ({})",
            e.body_text()
        ),
    )
    .into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        header::HeaderValue::from_static("13"),
    );
    resp
}

#[utoipa::path(get, path = "/api/v1/migrations/{id}/watch", tag = "migrations", params(("id" = String, Path, description = "Migration id")),
    responses((status = 101, description = "WebSocket: the MigrationInfo now, then each change as a JSON text message; closes (1000) after a final state", body = MigrationInfo),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 426, description = "Not a WebSocket upgrade request", body = ApiError)))]
pub async fn watch_migration<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    // Subscribe before reading the state, so no change falls between the two.
    let events = st.service.subscribe();
    let current = find_migration(&st, &id).map_err(IntoResponse::into_response)?;
    let upgrade = upgrade.map_err(upgrade_failure)?;
    let service = st.service.clone();
    Ok(limit(upgrade).on_upgrade(move |socket| {
        ws::watch_migration(socket, current, events, move || service.migration(&id))
    }))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "node",
    responses((status = 101, description = "WebSocket: each EventEnvelope as a JSON text message, in order; a client that falls behind gets a close frame (1008) saying so", body = EventEnvelope),
        (status = 401, body = ApiError), (status = 426, description = "Not a WebSocket upgrade request", body = ApiError)))]
pub async fn events<S: NodeService>(
    State(st): State<ApiState<S>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    let upgrade = upgrade.map_err(upgrade_failure)?;
    let events = st.service.subscribe();
    Ok(limit(upgrade).on_upgrade(move |socket| ws::event_stream(socket, events)))
}

fn limit(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(ws::MAX_CLIENT_MESSAGE)
        .max_frame_size(ws::MAX_CLIENT_MESSAGE)
}

#[utoipa::path(get, path = "/api/v1/politeness", tag = "node",
    responses((status = 200, description = "What the politeness policy lets the node do now", body = PolitenessInfo), (status = 401, body = ApiError)))]
pub async fn politeness<S: NodeService>(State(st): State<ApiState<S>>) -> Json<PolitenessInfo> {
    Json(st.service.politeness())
}

#[utoipa::path(post, path = "/api/v1/politeness/owner", tag = "node", request_body = OwnerRequest,
    responses((status = 200, description = "The override is set (kept across restarts; auto clears it); what the politeness policy allows with it", body = PolitenessInfo),
        (status = 400, description = "Malformed JSON, an unknown field, or owner not one of active, idle, auto", body = ApiError),
        (status = 401, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError),
        (status = 500, description = "The setting could not be kept on disk", body = ApiError)))]
pub async fn set_owner<S: NodeService>(
    State(st): State<ApiState<S>>,
    JsonBody(req): JsonBody<OwnerRequest>,
) -> ApiResult<Json<PolitenessInfo>> {
    Ok(Json(st.service.set_owner(req.owner).await?))
}

#[utoipa::path(post, path = "/api/v1/drain", tag = "node", request_body(content = Option<DrainRequest>, description = "Optional; an empty body is deadline_s 120"),
    responses((status = 202, description = "Draining has started", body = DrainAccepted),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError),
        (status = 413, body = ApiError), (status = 415, body = ApiError), (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn drain<S: NodeService>(
    State(st): State<ApiState<S>>,
    OptionalJsonBody(req): OptionalJsonBody<DrainRequest>,
) -> ApiResult<(StatusCode, Json<DrainAccepted>)> {
    if req.deadline_s == 0 || req.deadline_s > MAX_DRAIN_S {
        return Err(ApiFailure::bad_request(format!(
            "deadline_s {} is outside 1-{MAX_DRAIN_S} seconds (default {DEFAULT_DRAIN_S})",
            req.deadline_s
        )));
    }
    st.service.drain(req.deadline_s).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainAccepted {
            draining: true,
            deadline_s: req.deadline_s,
        }),
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4; off loopback it needs the bearer token like every route", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, body = ApiError)))]
pub async fn metrics<S: NodeService>(State(st): State<ApiState<S>>) -> Response {
    let text = st.service.metrics_text().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
