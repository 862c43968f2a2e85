//! The pages: each handler reads what its page shows from the node (the same answers the
//! REST API gives) and renders it whole, or only its content when the live script asks
//! (`?fragment=1`). Also a job's log (JSON, for following it), its result (a download),
//! the assets, and the headers every answer carries.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use leptos::prelude::*;
use novacron_dashboard::assets;
use novacron_dashboard::filter::ListFilter;
use novacron_dashboard::pages::Page;
use novacron_dashboard::shell::{document, fragment, Frame};
use novacron_dashboard::views::{self, job::LogView};
use serde::{Deserialize, Serialize};

use super::access::Access;
use super::answers::html_headers;
use super::Dashboard;
use crate::api::service::{NodeService, ServiceError};
use crate::clock::now_ms;

/// What a page's query string may say.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    /// `1`: only the content (for the live script).
    pub fragment: Option<String>,
    /// An action's outcome to show once.
    pub flash: Option<String>,
    pub state: String,
    pub q: String,
}

impl PageQuery {
    fn filter(&self) -> ListFilter {
        ListFilter {
            state: self.state.clone(),
            q: self.q.clone(),
        }
        .normalized()
    }
}

/// What every answer carries: nothing from elsewhere may run, frame or be sniffed.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// `content` as `page`: whole, or only its content when the query asks for the fragment.
fn respond<S>(
    d: &Dashboard<S>,
    access: &Access,
    page: Page,
    query: &PageQuery,
    content: impl IntoView + 'static,
) -> Response {
    let html = if query.fragment.is_some() {
        fragment(content)
    } else {
        let frame = Frame {
            page,
            node_name: d.node_name.clone(),
            csrf: d.csrf.token(&access.session),
            notice: query.flash.as_deref().and_then(|id| d.take_flash(id)),
        };
        document(&frame, content)
    };
    (html_headers(), html).into_response()
}

/// A page that says what went wrong, with the status that says it too.
pub fn error_page<S>(d: &Dashboard<S>, access: &Access, page: Page, e: ServiceError) -> Response {
    let status = crate::api::rest::error::status_of(&e);
    let message = e.to_string();
    let content = view! {
        <h1>{page.title()}</h1>
        <p class="notice error" role="alert">{message}</p>
        <p><a href=page.section().path()>{format!("Back to {}", page.section().title())}</a></p>
    };
    let mut resp = respond(d, access, page, &PageQuery::default(), content);
    *resp.status_mut() = status;
    resp
}

pub async fn overview<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Query(query): Query<PageQuery>,
) -> Response {
    let status = match d.service.status().await {
        Ok(s) => s,
        Err(e) => return error_page(&d, &access, Page::Overview, e),
    };
    let now_ms = now_ms();
    let data = views::overview::OverviewData {
        status,
        churn: d.memory.churn_counts(now_ms),
        now_ms,
    };
    respond(
        &d,
        &access,
        Page::Overview,
        &query,
        views::overview::render(data),
    )
}

pub async fn node<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Query(query): Query<PageQuery>,
) -> Response {
    let status = match d.service.status().await {
        Ok(s) => s,
        Err(e) => return error_page(&d, &access, Page::Node, e),
    };
    let data = views::node::NodeData {
        status,
        politeness: d.service.politeness(),
        vms: d.service.vms(),
        events: d.memory.recent_events(),
        samples: d.memory.samples(),
        draining: d.memory.draining(),
        csrf: d.csrf.token(&access.session),
        now_ms: now_ms(),
    };
    respond(&d, &access, Page::Node, &query, views::node::render(data))
}

pub async fn vms<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Query(query): Query<PageQuery>,
) -> Response {
    // Where a VM may move: the cell's other live members.
    let targets = match d.service.status().await {
        Ok(s) => s
            .live_members()
            .filter(|m| m.peer_id != s.peer_id)
            .map(|m| m.peer_id.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut vms = d.service.vms();
    vms.sort_by_key(|v| std::cmp::Reverse(v.created_at_ms));
    let data = views::vms::VmsData {
        vms,
        filter: query.filter(),
        targets,
        csrf: d.csrf.token(&access.session),
        now_ms: now_ms(),
    };
    respond(&d, &access, Page::Vms, &query, views::vms::render(data))
}

pub async fn jobs<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Query(query): Query<PageQuery>,
) -> Response {
    let data = views::jobs::JobsData {
        jobs: d.service.jobs(),
        filter: query.filter(),
        keys: super::actions::key_names(d.keys_dir.as_deref()),
        csrf: d.csrf.token(&access.session),
        now_ms: now_ms(),
    };
    respond(&d, &access, Page::Jobs, &query, views::jobs::render(data))
}

pub async fn job<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let job = match d.service.job(&id).await {
        Ok(j) => j,
        Err(e) => return error_page(&d, &access, Page::Job, e),
    };
    let log = d
        .service
        .job_logs(&id, None, 0)
        .await
        .ok()
        .map(|l| LogView {
            text: l.text,
            next_offset: l.next_offset,
            finished: l.finished,
        });
    let data = views::job::JobData {
        job,
        log,
        csrf: d.csrf.token(&access.session),
        now_ms: now_ms(),
    };
    respond(&d, &access, Page::Job, &query, views::job::render(data))
}

pub async fn migrations<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Query(query): Query<PageQuery>,
) -> Response {
    let data = views::migrations::MigrationsData {
        migrations: d.service.migrations(),
        now_ms: now_ms(),
    };
    respond(
        &d,
        &access,
        Page::Migrations,
        &query,
        views::migrations::render(data),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogQuery {
    offset: u64,
}

/// A piece of a job's log, for the page that follows it.
#[derive(Debug, Serialize)]
pub struct LogChunk {
    text: String,
    next_offset: u64,
    done: bool,
}

pub async fn job_log<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    match d.service.job_logs(&id, None, q.offset).await {
        Ok(l) => Json(LogChunk {
            text: l.text,
            next_offset: l.next_offset,
            done: l.finished,
        })
        .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// The job's agreed result, as a file to save (never shown inline).
pub async fn job_result<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Path(id): Path<String>,
) -> Response {
    match d.service.job_result(&id).await {
        Ok(bytes) => {
            let name =
                if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!("{id}.result")
                } else {
                    "job.result".into()
                };
            let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = assets::find(&format!("/assets/{file}")) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let etag = a.etag();
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let etag = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, etag),
        ],
        a.body,
    )
        .into_response()
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        html_headers(),
        "<!DOCTYPE html><title>Not found</title><p>No such page. <a href=\"/\">The mesh</a></p>",
    )
        .into_response()
}
