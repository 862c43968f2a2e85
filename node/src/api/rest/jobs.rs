//! The job routes: submit a signed job, list and read jobs, cancel, follow a replica's
//! output, download the agreed result. The `#[utoipa::path]` attributes are the OpenAPI
//! document's source.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiFailure, IdPath, JsonBody, QueryParams};
use super::ApiState;
use crate::api::service::NodeService;
use crate::api::types::{ApiError, JobInfo, JobLogs, JobState, SubmitJobRequest};

type ApiResult<T> = Result<T, ApiFailure>;

/// Filters of `GET /api/v1/jobs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this submitter (`ed25519:<hex>`).
    pub submitter: Option<String>,
    /// `node` (the default): jobs this node knows. `cell`: also the jobs submitted through
    /// the live members of its cell (each asked, within 3 s; one that does not answer is
    /// left out).
    pub scope: Option<JobScope>,
}

/// Which jobs `GET /api/v1/jobs` lists.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobScope {
    Node,
    Cell,
}

/// Where `GET /api/v1/jobs/{id}/logs` reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The replica (default: one whose result won, else the first placed).
    pub replica: Option<u32>,
    /// Byte offset to read from (default 0).
    #[serde(default)]
    pub offset: u64,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobFilter),
    responses((status = 200, description = "Jobs this node knows (submitted through it, or running a replica here), or with scope=cell those of its cell's live members too; newest first", body = [JobInfo]),
        (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn list_jobs<S: NodeService>(
    State(st): State<ApiState<S>>,
    QueryParams(filter): QueryParams<JobFilter>,
) -> Json<Vec<JobInfo>> {
    let mut jobs = match filter.scope {
        Some(JobScope::Cell) => st.service.cell_jobs().await,
        Some(JobScope::Node) | None => st.service.jobs(),
    };
    jobs.retain(|j| filter.state.is_none_or(|s| j.state == s));
    jobs.retain(|j| filter.submitter.as_ref().is_none_or(|s| &j.submitter == s));
    Json(jobs)
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitJobRequest,
    responses((status = 201, description = "The job is accepted and being placed", body = JobInfo),
        (status = 400, description = "Not a valid signed submission (forged, altered, expired, from the future) or an invalid spec", body = ApiError),
        (status = 401, body = ApiError),
        (status = 403, description = "The node does not trust the submitter", body = ApiError),
        (status = 409, description = "Replayed: this submission was already taken", body = ApiError),
        (status = 413, description = "Body over 64 KiB", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 429, description = "The submitter is over its rate or quota", body = ApiError),
        (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn submit_job<S: NodeService>(
    State(st): State<ApiState<S>>,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> ApiResult<(StatusCode, Json<JobInfo>)> {
    let bytes = novacron_mesh::util::hex::decode(&req.submission)
        .ok_or_else(|| ApiFailure::bad_request("submission: not hex"))?;
    Ok((
        StatusCode::CREATED,
        Json(st.service.submit_job(bytes).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id (64 hex digits)")),
    responses((status = 200, description = "The job as its origin knows it", body = JobInfo),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 503, body = ApiError)))]
pub async fn get_job<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<JobInfo>> {
    Ok(Json(st.service.job(&id).await?))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Cancelled: its replicas are being stopped", body = JobInfo),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "The job has ended, or was submitted through another node", body = ApiError),
        (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn cancel_job<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Json<JobInfo>> {
    Ok(Json(st.service.cancel_job(&id).await?))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), LogsQuery),
    responses((status = 200, description = "Up to 64 KiB of a replica's serial output from the offset", body = JobLogs),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn job_logs<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Json<JobLogs>> {
    Ok(Json(st.service.job_logs(&id, q.replica, q.offset).await?))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/result", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The agreed result's bytes (verified against its hash)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "No result yet", body = ApiError),
        (status = 500, body = ApiError), (status = 503, body = ApiError)))]
pub async fn job_result<S: NodeService>(
    State(st): State<ApiState<S>>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let bytes = st.service.job_result(&id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
