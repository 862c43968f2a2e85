//! The OpenAPI 3.1 document of the API (`GET /api/v1/openapi.json`), from the handlers'
//! `#[utoipa::path]` attributes and the types' `ToSchema`.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers::{self, CellsView, DrainAccepted, DrainRequest};
use crate::api::types::{
    ApiError, Backend, EventEnvelope, MigrationDirection, MigrationInfo, MigrationMode,
    MigrationProgressInfo, MigrationRequest, MigrationState, NodeEvent, OwnerRequest, OwnerSetting,
    PolitenessInfo, VmInfo, VmSpec, VmState,
};
use crate::api::{CellStatus, MemberStatus, NodeStatus, SummaryStatus};

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
    info(title = "NovaCron node API", description = "One NovaCron node: its VMs, migrations, mesh view and politeness state."),
    paths(
        handlers::node, handlers::peers, handlers::cells,
        handlers::list_vms, handlers::create_vm, handlers::get_vm, handlers::delete_vm,
        handlers::pause_vm, handlers::resume_vm, handlers::migrate_vm,
        handlers::list_migrations, handlers::get_migration, handlers::cancel_migration,
        handlers::watch_migration, handlers::politeness, handlers::set_owner, handlers::drain,
        handlers::events,
        handlers::openapi, handlers::metrics,
    ),
    components(schemas(
        ApiError, Backend, MigrationMode, VmSpec, VmState, VmInfo, MigrationRequest,
        MigrationDirection, MigrationState, MigrationProgressInfo, MigrationInfo, PolitenessInfo,
        OwnerSetting, OwnerRequest,
        EventEnvelope, NodeEvent, NodeStatus, CellStatus, MemberStatus, SummaryStatus, CellsView,
        DrainRequest, DrainAccepted,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The document as JSON (rendered once).
pub fn document() -> Result<String, String> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()))
        .clone()
}
