//! The router over the fake service, one request at a time (no sockets): every route,
//! every error mapping, auth, metrics labels, the OpenAPI document, and a property test of
//! hostile bodies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::error::MAX_ID_BYTES;
use super::fake::{self, Fake};
use super::{router, ApiAuth};
use crate::api::service::ServiceError;
use crate::api::types::{ApiError, MigrationInfo, MigrationState, OwnerSetting, VmInfo, VmState};

const TOKEN: &str = "5f0e9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        let e: ApiError = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an ApiError ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        assert_eq!(
            self.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        e.error
    }
}

pub(crate) struct Req<'a> {
    method: &'a str,
    uri: &'a str,
    peer: Option<&'a str>,
    headers: Vec<(&'a str, String)>,
    body: Vec<u8>,
}

impl<'a> Req<'a> {
    pub fn new(method: &'a str, uri: &'a str) -> Req<'a> {
        Req {
            method,
            uri,
            peer: Some("127.0.0.1:40000"),
            headers: vec![],
            body: vec![],
        }
    }

    fn json(mut self, v: &Value) -> Self {
        self.headers
            .push(("content-type", "application/json".into()));
        self.body = serde_json::to_vec(v).unwrap();
        self
    }

    pub fn from(mut self, peer: Option<&'a str>) -> Self {
        self.peer = peer;
        self
    }

    pub fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
}

pub(crate) async fn call(app: &Router, req: Req<'_>) -> Answer {
    let mut builder = Request::builder().method(req.method).uri(req.uri);
    for (k, v) in &req.headers {
        builder = builder.header(*k, v.as_str());
    }
    let mut request = builder.body(Body::from(req.body)).unwrap();
    if let Some(p) = req.peer {
        let addr: SocketAddr = p.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(addr));
    }
    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
    let resp = hyper::service::Service::call(&svc, request).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

fn app_with(fake: &Arc<Fake>, auth: ApiAuth) -> Router {
    router(fake.clone(), fake.metrics.clone(), auth)
}

fn app(fake: &Arc<Fake>) -> Router {
    app_with(fake, ApiAuth::with_token(TOKEN))
}

async fn create(app: &Router) -> VmInfo {
    let a = call(
        app,
        Req::new("POST", "/api/v1/vms").json(&json!({"guest": "builtin:counter"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.json());
    serde_json::from_slice(&a.body).unwrap()
}

#[tokio::test]
async fn node_peers_cells_and_politeness_answer_from_the_service() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let a = call(&app, Req::new("GET", "/api/v1/node")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["peer_id"], "12D3KooWSelf");

    let a = call(&app, Req::new("GET", "/api/v1/peers")).await;
    assert_eq!(a.status, StatusCode::OK);
    let peers = a.json();
    assert_eq!(peers.as_array().unwrap().len(), 2);
    assert_eq!(peers[1]["peer_id"], "12D3KooWPeer");
    assert_eq!(peers[1]["live"], false);

    let a = call(&app, Req::new("GET", "/api/v1/cells")).await;
    assert_eq!(a.status, StatusCode::OK);
    let cells = a.json();
    assert_eq!(cells["cell"]["id"], "1/0");
    assert_eq!(cells["summaries"][0]["members"], 2);

    let a = call(&app, Req::new("GET", "/api/v1/politeness")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["state"], "run");

    fake.fail_with(ServiceError::Unavailable("mesh not started".into()));
    let a = call(&app, Req::new("GET", "/api/v1/peers")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.error(), "mesh not started");
}

#[tokio::test]
async fn the_vm_routes_create_read_stop_pause_and_resume() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let vm = create(&app).await;
    assert_eq!(vm.id, "vm0");
    assert_eq!(vm.spec.mem_mib, 64, "defaults filled in");

    let a = call(&app, Req::new("GET", "/api/v1/vms")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()[0]["id"], "vm0");
    let a = call(&app, Req::new("GET", "/api/v1/vms/vm0")).await;
    assert_eq!(a.json()["state"], "starting");

    let a = call(&app, Req::new("POST", "/api/v1/vms/vm0/pause")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["state"], "paused");
    let a = call(&app, Req::new("POST", "/api/v1/vms/vm0/resume")).await;
    assert_eq!(a.json()["state"], "running");
    let a = call(&app, Req::new("POST", "/api/v1/vms/vm0/resume")).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.error().contains("running"));
    let a = call(&app, Req::new("DELETE", "/api/v1/vms/vm0")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["state"], "exited");
    assert_eq!(fake.vm_state("vm0"), Some(VmState::Exited));
    // A second DELETE removes the record of the VM that ended: 204, no body, gone.
    let a = call(&app, Req::new("DELETE", "/api/v1/vms/vm0")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.body.is_empty());
    assert_eq!(fake.vm_state("vm0"), None);
    let a = call(&app, Req::new("GET", "/api/v1/vms/vm0")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    for (method, uri) in [
        ("GET", "/api/v1/vms/nope"),
        ("DELETE", "/api/v1/vms/nope"),
        ("POST", "/api/v1/vms/nope/pause"),
        ("POST", "/api/v1/vms/nope/resume"),
    ] {
        let a = call(&app, Req::new(method, uri)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert!(a.error().contains("nope"), "{method} {uri}");
    }
    let long = format!("/api/v1/vms/{}", "x".repeat(200));
    let a = call(&app, Req::new("GET", &long)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("128-byte"), "{}", a.error());
}

#[tokio::test]
async fn the_owner_override_is_set_shown_and_cleared() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let set = |body: Value| {
        call(
            &app,
            Req::new("POST", "/api/v1/politeness/owner").json(&body),
        )
    };
    let a = call(&app, Req::new("GET", "/api/v1/politeness")).await;
    assert_eq!(a.json()["owner_override"], "auto");
    let a = set(json!({"owner": "active"})).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
    assert_eq!(a.json()["owner_override"], "active");
    let a = call(&app, Req::new("GET", "/api/v1/politeness")).await;
    assert_eq!(a.json()["owner_override"], "active");
    let a = set(json!({"owner": "auto"})).await;
    assert_eq!(a.json()["owner_override"], "auto");
    // Anything else names the problem; nothing changes.
    for bad in [
        json!({"owner": "busy"}),
        json!({"owner": "active", "until": 5}),
        json!({}),
        json!(null),
    ] {
        let a = set(bad.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(!a.error().is_empty());
    }
    assert_eq!(*fake.owner.lock().unwrap(), OwnerSetting::Auto);
    let a = call(&app, Req::new("GET", "/api/v1/politeness/owner")).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    fake.fail_with(ServiceError::Internal("cannot keep it".into()));
    let a = set(json!({"owner": "idle"})).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.error(), "cannot keep it");
}

#[tokio::test]
async fn every_service_error_maps_to_its_status_with_a_json_body() {
    let fake = Fake::new(16);
    let app = app(&fake);
    for (e, status) in [
        (ServiceError::NotFound("n".into()), 404),
        (ServiceError::BadRequest("b".into()), 400),
        (ServiceError::Conflict("c".into()), 409),
        (ServiceError::Unavailable("u".into()), 503),
        (ServiceError::Internal("i".into()), 500),
    ] {
        let text = e.to_string();
        fake.fail_with(e);
        let a = call(
            &app,
            Req::new("POST", "/api/v1/vms").json(&json!({"guest": "builtin:counter"})),
        )
        .await;
        assert_eq!(a.status.as_u16(), status);
        assert_eq!(a.error(), text);
    }
}

#[tokio::test]
async fn migrations_start_list_read_cancel() {
    let fake = Fake::new(16);
    let app = app(&fake);
    create(&app).await;
    let a = call(
        &app,
        Req::new("POST", "/api/v1/vms/vm0/migrate").json(&json!({"to": "auto", "mode": "warm"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let m: MigrationInfo = serde_json::from_slice(&a.body).unwrap();
    assert_eq!((m.id.as_str(), m.peer.as_str()), ("m0", "auto"));

    let a = call(&app, Req::new("GET", "/api/v1/migrations")).await;
    assert_eq!(a.json()[0]["id"], "m0");
    let a = call(&app, Req::new("GET", "/api/v1/migrations/m0")).await;
    assert_eq!(a.json()["state"], "running");
    let a = call(&app, Req::new("POST", "/api/v1/migrations/m0/cancel")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["state"], "cancelled");
    let a = call(&app, Req::new("POST", "/api/v1/migrations/m0/cancel")).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    a.error();
    let a = call(&app, Req::new("GET", "/api/v1/migrations/m9")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("m9"));
    let a = call(
        &app,
        Req::new("POST", "/api/v1/vms/vm9/migrate").json(&json!({"to": "auto"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = call(
        &app,
        Req::new("POST", "/api/v1/vms/vm0/migrate")
            .json(&json!({"to": "auto", "mode": "teleport"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("teleport"), "{}", a.error());
}

fn job(id: &str, state: crate::api::types::JobState) -> crate::api::types::JobInfo {
    crate::model::fixtures::job_info_in(id, state)
}

#[tokio::test]
async fn the_job_routes_list_filter_read_cancel_and_answer_errors_as_json() {
    use crate::api::types::JobState;
    let fake = Fake::new(16);
    let app = app(&fake);
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    fake.jobs
        .lock()
        .unwrap()
        .insert(a.clone(), job(&a, JobState::Running));
    let mut done = job(&b, JobState::Succeeded);
    done.result_hash = Some("c".repeat(64));
    fake.jobs.lock().unwrap().insert(b.clone(), done);

    let all = call(&app, Req::new("GET", "/api/v1/jobs")).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json().as_array().unwrap().len(), 2);
    let running = call(&app, Req::new("GET", "/api/v1/jobs?state=running")).await;
    assert_eq!(running.json().as_array().unwrap().len(), 1);
    assert_eq!(running.json()[0]["id"], json!(a));
    let bad = call(&app, Req::new("GET", "/api/v1/jobs?state=sleeping")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("bad query"), "{}", bad.error());
    let bad = call(&app, Req::new("GET", "/api/v1/jobs?colour=red")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("colour"), "{}", bad.error());

    let one = call(&app, Req::new("GET", &format!("/api/v1/jobs/{a}"))).await;
    assert_eq!(one.json()["state"], "running");
    let none = call(
        &app,
        Req::new("GET", &format!("/api/v1/jobs/{}", "d".repeat(64))),
    )
    .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let logs = call(
        &app,
        Req::new("GET", &format!("/api/v1/jobs/{a}/logs?offset=2")),
    )
    .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(logs.json()["text"], "llo\n");
    let early = call(&app, Req::new("GET", &format!("/api/v1/jobs/{a}/result"))).await;
    assert_eq!(early.status, StatusCode::CONFLICT);
    let result = call(&app, Req::new("GET", &format!("/api/v1/jobs/{b}/result"))).await;
    assert_eq!(result.status, StatusCode::OK);
    assert_eq!(
        result.headers.get("content-type").unwrap(),
        "application/octet-stream"
    );
    assert_eq!(result.body, b"hello\n");

    let cancelled = call(&app, Req::new("DELETE", &format!("/api/v1/jobs/{a}"))).await;
    assert_eq!(cancelled.json()["state"], "cancelled");
    let again = call(&app, Req::new("DELETE", &format!("/api/v1/jobs/{a}"))).await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let not_hex = call(
        &app,
        Req::new("POST", "/api/v1/jobs").json(&json!({"submission": "zz"})),
    )
    .await;
    assert_eq!(not_hex.status, StatusCode::BAD_REQUEST);
    assert!(not_hex.error().contains("not hex"), "{}", not_hex.error());
    let typo = call(
        &app,
        Req::new("POST", "/api/v1/jobs").json(&json!({"submision": "00"})),
    )
    .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert!(typo.error().contains("submision"), "{}", typo.error());
}

#[tokio::test]
async fn drain_takes_an_optional_bounded_deadline() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let a = call(&app, Req::new("POST", "/api/v1/drain")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json(), json!({"draining": true, "deadline_s": 120}));
    assert_eq!(*fake.drained.lock().unwrap(), Some(120));
    let a = call(
        &app,
        Req::new("POST", "/api/v1/drain").json(&json!({"deadline_s": 30})),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(*fake.drained.lock().unwrap(), Some(30));
    // JSON null is the schema's "no body"; a whole number may carry a zero fraction (JSON
    // Schema's integer); an array is not an object, whatever serde would make of it.
    let a = call(&app, Req::new("POST", "/api/v1/drain").json(&json!(null))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(*fake.drained.lock().unwrap(), Some(120));
    let a = call(
        &app,
        Req::new("POST", "/api/v1/drain").json(&json!({"deadline_s": 45.0})),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(*fake.drained.lock().unwrap(), Some(45));
    for (body, needle) in [
        (json!([]), "must be a JSON object, not an array"),
        (json!([30]), "must be a JSON object, not an array"),
        (json!(30), "must be a JSON object, not a number"),
        (json!({"deadline_s": 30.5}), "deadline_s"),
        (json!({"deadline_s": 0}), "1-3600"),
        (json!({"deadline_s": 3601}), "3601"),
        (json!({"deadline_s": -1}), "deadline_s"),
        (json!({"deadline": 5}), "unknown field `deadline`"),
    ] {
        let a = call(&app, Req::new("POST", "/api/v1/drain").json(&body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(a.error().contains(needle), "{body}: {}", a.error());
    }
    let a = call(
        &app,
        Req::new("POST", "/api/v1/drain")
            .header("content-type", "text/plain")
            .body("30"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    a.error();
}

#[tokio::test]
async fn bad_bodies_get_400_413_415_naming_the_problem() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let post = |body: &'static [u8], ct: Option<&'static str>| {
        let mut r = Req::new("POST", "/api/v1/vms").body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r
    };
    let a = call(&app, post(b"{\"guest\": ", Some("application/json"))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().starts_with("malformed JSON"), "{}", a.error());
    let a = call(&app, post(b"{\"guest\": 5}", Some("application/json"))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("invalid request body"), "{}", a.error());
    let a = call(&app, post(b"{\"memmib\": 5}", Some("application/json"))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.error().contains("unknown field `memmib`"),
        "{}",
        a.error()
    );
    let a = call(&app, post(b"{}", None)).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(a.error().contains("application/json"));
    let a = call(&app, post(b"{}", Some("text/plain"))).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let a = call(&app, post(b"{}", Some("application/json; charset=utf-8"))).await;
    assert_eq!(a.status, StatusCode::CREATED);

    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(70 * 1024));
    let a = call(
        &app,
        Req::new("POST", "/api/v1/vms")
            .header("content-type", "application/json")
            .header("content-length", big.len().to_string())
            .body(big.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("65536-byte"), "{}", a.error());
    // Without a length announced, the limit is met while reading.
    let a = call(
        &app,
        Req::new("POST", "/api/v1/vms")
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    a.error();
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_404_and_405() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let a = call(&app, Req::new("GET", "/api/v2/node")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("/api/v2/node"));
    for (method, uri) in [
        ("PUT", "/api/v1/node"),
        ("DELETE", "/api/v1/vms"),
        ("GET", "/api/v1/drain"),
        ("POST", "/metrics"),
    ] {
        let a = call(&app, Req::new(method, uri)).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert!(a.error().contains(method), "{}", a.error());
    }
    // The WebSocket routes asked without an upgrade.
    for uri in ["/api/v1/events", "/api/v1/migrations/m0/watch"] {
        create(&app).await;
        let _ = call(
            &app,
            Req::new("POST", "/api/v1/vms/vm0/migrate").json(&json!({"to": "auto"})),
        )
        .await;
        let a = call(&app, Req::new("GET", uri)).await;
        assert_eq!(a.status, StatusCode::UPGRADE_REQUIRED, "{uri}");
        assert_eq!(
            a.headers.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(a.error().contains("WebSocket"), "{}", a.error());
    }
    let a = call(&app, Req::new("GET", "/api/v1/migrations/none/watch")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn remote_callers_need_the_token_and_loopback_does_not() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let remote = Some("192.0.2.10:5000");
    for route in ["/api/v1/node", "/metrics", "/api/v1/nonexistent"] {
        let a = call(&app, Req::new("GET", route).from(remote)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{route}");
        assert_eq!(
            a.headers.get("www-authenticate").unwrap(),
            "Bearer realm=\"novacron\""
        );
        assert!(a.error().contains("Authorization: Bearer"), "{}", a.error());
    }
    let a = call(
        &app,
        Req::new("GET", "/api/v1/node")
            .from(remote)
            .header("authorization", format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &app,
        Req::new("GET", "/api/v1/node")
            .from(remote)
            .header("authorization", "Bearer nope"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("not this node's"), "{}", a.error());
    // Unknown peer address: treated as remote.
    let a = call(&app, Req::new("GET", "/api/v1/node").from(None)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    for local in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
        let a = call(&app, Req::new("GET", "/api/v1/node").from(Some(local))).await;
        assert_eq!(a.status, StatusCode::OK, "{local}");
    }

    let tokenless = app_with(&fake, ApiAuth::loopback_only());
    let a = call(
        &tokenless,
        Req::new("GET", "/api/v1/node")
            .from(remote)
            .header("authorization", format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let e = a.error();
    assert!(
        e.contains("no API token") && e.contains("novacron node install"),
        "{e}"
    );
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_metrics_are_prometheus_text() {
    let fake = Fake::new(16);
    let app = app(&fake);
    create(&app).await;
    call(&app, Req::new("GET", "/api/v1/vms/vm0")).await;
    call(&app, Req::new("GET", "/api/v1/vms/other")).await;
    call(&app, Req::new("GET", "/nowhere")).await;
    call(
        &app,
        Req::new("GET", "/api/v1/node").from(Some("192.0.2.1:1")),
    )
    .await;
    let a = call(&app, Req::new("GET", "/metrics")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(a.body).unwrap();
    let count = |route: &str, status: &str| {
        let needle = format!(
            "novacron_api_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(count("/api/v1/vms/{id}", "200"), "1");
    assert_eq!(count("/api/v1/vms/{id}", "404"), "1");
    assert_eq!(count("unmatched", "404"), "1");
    assert_eq!(count("/api/v1/node", "401"), "1");
    assert!(!text.contains("vms/vm0"), "raw paths never become labels");
}

/// The VmSpec schema's bounds are the ones the spec check enforces, so a client that keeps to
/// the document is not refused for a size, and one that does not is told before it asks.
#[test]
fn the_vm_spec_schema_states_the_checks_bounds() {
    use crate::vms::spec::{MAX_COMMAND_ARGS, MAX_MEM_MIB, MAX_NAME_CHARS, MAX_VCPUS, MIN_MEM_MIB};
    let doc: Value = serde_json::from_str(&super::openapi::document().unwrap()).unwrap();
    let spec = &doc["components"]["schemas"]["VmSpec"]["properties"];
    assert_eq!(spec["mem_mib"]["minimum"], json!(MIN_MEM_MIB));
    assert_eq!(spec["mem_mib"]["maximum"], json!(MAX_MEM_MIB));
    assert_eq!(spec["vcpus"]["minimum"], json!(1));
    assert_eq!(spec["vcpus"]["maximum"], json!(MAX_VCPUS));
    assert_eq!(spec["name"]["maxLength"], json!(MAX_NAME_CHARS));
    assert_eq!(spec["command"]["maxItems"], json!(MAX_COMMAND_ARGS));
    assert_eq!(spec["migration"]["uniqueItems"], json!(true));
    assert_eq!(spec["prefill_mib"]["minimum"], json!(1));
    // `{}` runs nothing: the document says one of these is required.
    let any_of = &doc["components"]["schemas"]["VmSpec"]["anyOf"];
    let required: Vec<&Value> = any_of
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["required"][0])
        .collect();
    assert_eq!(
        required,
        [&json!("guest"), &json!("kernel"), &json!("command")]
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_with_bodies_and_errors() {
    let fake = Fake::new(16);
    let app = app(&fake);
    let a = call(&app, Req::new("GET", "/api/v1/openapi.json")).await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let routes = [
        ("get", "/api/v1/node"),
        ("get", "/api/v1/peers"),
        ("get", "/api/v1/cells"),
        ("get", "/api/v1/vms"),
        ("post", "/api/v1/vms"),
        ("get", "/api/v1/vms/{id}"),
        ("delete", "/api/v1/vms/{id}"),
        ("post", "/api/v1/vms/{id}/pause"),
        ("post", "/api/v1/vms/{id}/resume"),
        ("post", "/api/v1/vms/{id}/migrate"),
        ("get", "/api/v1/migrations"),
        ("get", "/api/v1/migrations/{id}"),
        ("post", "/api/v1/migrations/{id}/cancel"),
        ("get", "/api/v1/migrations/{id}/watch"),
        ("get", "/api/v1/politeness"),
        ("post", "/api/v1/politeness/owner"),
        ("post", "/api/v1/drain"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/jobs"),
        ("post", "/api/v1/jobs"),
        ("get", "/api/v1/jobs/{id}"),
        ("delete", "/api/v1/jobs/{id}"),
        ("get", "/api/v1/jobs/{id}/logs"),
        ("get", "/api/v1/jobs/{id}/result"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/metrics"),
    ];
    for (method, path) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["responses"].is_object(), "{method} {path}");
    }
    let body_ref = |path: &str| {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            .to_string()
    };
    let delete = &doc["paths"]["/api/v1/vms/{id}"]["delete"]["responses"];
    assert!(
        delete["200"].is_object() && delete["204"].is_object(),
        "{delete}"
    );
    assert!(body_ref("/api/v1/vms").contains("VmSpec"));
    assert!(body_ref("/api/v1/vms/{id}/migrate").contains("MigrationRequest"));
    assert!(body_ref("/api/v1/drain").contains("DrainRequest"));
    assert!(body_ref("/api/v1/politeness/owner").contains("OwnerRequest"));
    assert!(body_ref("/api/v1/jobs").contains("SubmitJobRequest"));
    let created = &doc["paths"]["/api/v1/jobs"]["post"]["responses"]["201"]["links"];
    assert_eq!(created.as_object().unwrap().len(), 4, "{created}");
    for status in ["403", "409", "429"] {
        assert!(
            doc["paths"]["/api/v1/jobs"]["post"]["responses"][status].is_object(),
            "{status}"
        );
    }
    let errors = &doc["paths"]["/api/v1/vms"]["post"]["responses"];
    for status in ["400", "401", "413", "415", "503"] {
        assert!(
            errors[status]["content"]["application/json"]["schema"]
                .to_string()
                .contains("ApiError"),
            "{status}: {}",
            errors[status]
        );
    }
    for schema in [
        "VmSpec",
        "VmInfo",
        "NodeStatus",
        "MigrationInfo",
        "EventEnvelope",
        "ApiError",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // What the attributes cannot say: id limits, and links from what creates an id to the
    // operations that take it.
    for (method, path) in routes.iter().filter(|(_, p)| p.contains("{id}")) {
        let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
        let id = params.iter().find(|p| p["name"] == "id").unwrap();
        assert_eq!(id["schema"]["maxLength"], json!(MAX_ID_BYTES), "{path}");
        assert_eq!(id["schema"]["minLength"], json!(1), "{path}");
    }
    let created = &doc["paths"]["/api/v1/vms"]["post"]["responses"]["201"]["links"];
    for op in ["get_vm", "delete_vm", "pause_vm", "resume_vm", "migrate_vm"] {
        assert_eq!(created[op]["operationId"], json!(op));
        assert_eq!(created[op]["parameters"]["id"], json!("$response.body#/id"));
        let exists = doc["paths"].as_object().unwrap().values().any(|item| {
            item.as_object()
                .unwrap()
                .values()
                .any(|o| o["operationId"] == json!(op))
        });
        assert!(exists, "link to an operation that is not there: {op}");
    }
    let started = &doc["paths"]["/api/v1/vms/{id}/migrate"]["post"]["responses"]["202"]["links"];
    assert_eq!(started.as_object().unwrap().len(), 3);
}

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("backend".to_string()),
        Just("guest".to_string()),
        Just("mem_mib".to_string()),
        Just("vcpus".to_string()),
        Just("migration".to_string()),
        Just("command".to_string()),
        Just("to".to_string()),
        Just("mode".to_string()),
        Just("downtime_budget_ms".to_string()),
        Just("deadline_s".to_string()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("live".to_string()),
            Just("kvm".to_string()),
            Just("process".to_string()),
            Just("builtin:counter".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| {
            // Valid JSON cut short.
            let mut b = serde_json::to_vec(&v).unwrap();
            b.truncate(b.len() / 2);
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_bodies_never_get_a_5xx_and_errors_are_api_errors(
        body in body_strategy(),
        route in 0usize..3,
        content_type in prop_oneof![Just(Some("application/json")), Just(None), Just(Some("text/plain"))],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fake = Fake::new(16);
            let app = app(&fake);
            create(&app).await;
            let uri = ["/api/v1/vms", "/api/v1/vms/vm0/migrate", "/api/v1/drain"][route];
            let mut req = Req::new("POST", uri).body(body.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let a = call(&app, req).await;
            prop_assert!(!a.status.is_server_error(), "{uri} {:?}: {}", String::from_utf8_lossy(&body), a.status);
            if !a.status.is_success() {
                let parsed: Result<ApiError, _> = serde_json::from_slice(&a.body);
                prop_assert!(parsed.is_ok(), "{uri}: {} {:?}", a.status, String::from_utf8_lossy(&a.body));
            }
            Ok(())
        })?;
    }
}

impl Fake {
    fn vm_state(&self, id: &str) -> Option<VmState> {
        self.vms.lock().unwrap().get(id).map(|v| v.state)
    }
}

#[test]
fn fake_migration_updates_publish_events() {
    let fake = Fake::new(4);
    let mut rx = fake.events.subscribe();
    fake.migrations
        .lock()
        .unwrap()
        .insert("m0".into(), fake::migration("m0", "vm0"));
    fake.update_migration("m0", MigrationState::Done);
    let e = rx.try_recv().unwrap();
    assert_eq!(e.seq, 0);
}
