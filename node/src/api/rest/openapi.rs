//! The OpenAPI 3.1 document of the API (`GET /api/v1/openapi.json`), from the handlers'
//! `#[utoipa::path]` attributes and the types' `ToSchema`.

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ApiFailure;
use super::handlers::{self, CellsView, DrainAccepted, DrainRequest};
use super::jobs::{self as job_routes, JobFilter, JobScope, LogsQuery};
use crate::api::types::{
    ApiError, Backend, EventEnvelope, ImageRef, JobInfo, JobLogs, JobMigration, JobPayload,
    JobSpec, JobState, MigrationDirection, MigrationInfo, MigrationMode, MigrationProgressInfo,
    MigrationRequest, MigrationState, NodeEvent, OwnerRequest, OwnerSetting, PayloadFile,
    PolitenessInfo, ReplicaCheckpoint, ReplicaInfo, ReplicaState, ResultSource, SubmitJobRequest,
    VmInfo, VmSpec, VmState,
};
use crate::api::{CellStatus, MemberStatus, NodeStatus, ProtocolBytesStatus, SummaryStatus};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's api.token; not needed from loopback (127.0.0.0/8, ::1)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "NovaCron node API", description = "One NovaCron node: its VMs, jobs, migrations, mesh view and politeness state."),
    paths(
        handlers::node, handlers::peers, handlers::cells,
        handlers::list_vms, handlers::create_vm, handlers::get_vm, handlers::delete_vm,
        handlers::pause_vm, handlers::resume_vm, handlers::migrate_vm,
        handlers::list_migrations, handlers::get_migration, handlers::cancel_migration,
        handlers::watch_migration, handlers::politeness, handlers::set_owner, handlers::drain,
        handlers::events,
        job_routes::list_jobs, job_routes::submit_job, job_routes::get_job, job_routes::cancel_job,
        job_routes::job_logs, job_routes::job_result,
        openapi, handlers::metrics,
    ),
    components(schemas(
        ApiError, Backend, MigrationMode, VmSpec, VmState, VmInfo, MigrationRequest,
        MigrationDirection, MigrationState, MigrationProgressInfo, MigrationInfo, PolitenessInfo,
        OwnerSetting, OwnerRequest,
        EventEnvelope, NodeEvent, NodeStatus, CellStatus, MemberStatus, SummaryStatus, ProtocolBytesStatus, CellsView,
        DrainRequest, DrainAccepted,
        SubmitJobRequest, JobInfo, JobSpec, JobPayload, ImageRef, PayloadFile, JobMigration,
        ResultSource, JobState, ReplicaCheckpoint, ReplicaInfo, ReplicaState, JobLogs, JobFilter, JobScope, LogsQuery,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "node",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    match document() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the OpenAPI document: {e}"),
        )
        .into_response(),
    }
}

/// The document as JSON (rendered once).
pub fn document() -> Result<String, String> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(|e| e.to_string())?;
        add_what_attributes_cannot_say(&mut doc);
        serde_json::to_string(&doc).map_err(|e| e.to_string())
    })
    .clone()
}

/// Operations a created resource's id leads to: (operation that answers with the resource
/// and its status, operations that take its id in the path).
const LINKS: [(&str, &str, &str, &[&str]); 3] = [
    (
        "/api/v1/vms",
        "post",
        "201",
        &["get_vm", "delete_vm", "pause_vm", "resume_vm", "migrate_vm"],
    ),
    (
        "/api/v1/vms/{id}/migrate",
        "post",
        "202",
        &["get_migration", "cancel_migration", "watch_migration"],
    ),
    (
        "/api/v1/jobs",
        "post",
        "201",
        &["get_job", "cancel_job", "job_logs", "job_result"],
    ),
];

/// What the handlers' attributes cannot express: every `{id}` path parameter's length
/// limits (as [`IdPath`](super::error::IdPath) enforces them), that a VM spec names what it
/// runs, and OpenAPI links from the operations that create VMs and migrations to those that
/// take their ids (so clients and API fuzzers can follow them).
fn add_what_attributes_cannot_say(doc: &mut serde_json::Value) {
    use serde_json::json;
    // A spec names what it runs: a builtin guest or a kernel (kvm), or a command (process);
    // `{}` is no spec. (Which goes with which backend is the check's, answered with 400.)
    if let Some(spec) = doc.pointer_mut("/components/schemas/VmSpec") {
        // Each mode at most once (the check refuses a repeat).
        if let Some(modes) = spec.pointer_mut("/properties/migration") {
            modes["uniqueItems"] = json!(true);
        }
        spec["anyOf"] = json!([
            {"required": ["guest"]},
            {"required": ["kernel"]},
            {"required": ["command"]},
        ]);
    }
    // A job's payload names exactly one thing to run.
    if let Some(payload) = doc.pointer_mut("/components/schemas/JobPayload") {
        payload["anyOf"] = json!([
            {"required": ["guest"]},
            {"required": ["kernel"]},
            {"required": ["command"]},
        ]);
    }
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let params = op.get_mut("parameters").and_then(|p| p.as_array_mut());
            for param in params.into_iter().flatten() {
                if param["in"] == "path" && param["name"] == "id" {
                    param["schema"] = json!({
                        "type": "string",
                        "minLength": 1,
                        "maxLength": super::error::MAX_ID_BYTES,
                    });
                }
            }
        }
    }
    for (path, method, status, targets) in LINKS {
        let Some(response) = paths
            .get_mut(path)
            .and_then(|p| p.get_mut(method))
            .and_then(|o| o.get_mut("responses"))
            .and_then(|r| r.get_mut(status))
        else {
            continue;
        };
        let links: serde_json::Map<String, serde_json::Value> = targets
            .iter()
            .map(|op| {
                (
                    (*op).to_string(),
                    json!({"operationId": op, "parameters": {"id": "$response.body#/id"}}),
                )
            })
            .collect();
        response["links"] = serde_json::Value::Object(links);
    }
}
