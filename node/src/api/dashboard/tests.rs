//! The dashboard's routes over the fake service, one request at a time (no sockets): every
//! page whole and as a fragment, errors as pages with their status, flashes shown once,
//! actions reaching the service only with their CSRF token, assets and their ETags, and
//! the event stream's names. (Real processes and a real browser: tests/dashboard.rs.)

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use novacron_dashboard::csrf::LOOPBACK;

use super::{router, Dashboard, NodeMemory};
use crate::api::rest::fake::{self, Fake};
use crate::api::rest::tests::{call, Answer, Req};
use crate::api::rest::ApiAuth;
use crate::api::types::{JobState, MigrationState, NodeEvent, OwnerSetting};

const TOKEN: &str = "5f0e9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";

fn app(fake: &Arc<Fake>) -> (Router, Arc<Dashboard<Fake>>) {
    let d = Arc::new(
        Dashboard::new(
            fake.clone(),
            Arc::new(NodeMemory::default()),
            ApiAuth::with_token(TOKEN),
            "node-under-test".into(),
            None,
            false,
        )
        .unwrap(),
    );
    (router(d.clone()), d)
}

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

fn get(uri: &str) -> Req<'_> {
    Req::new("GET", uri).header("host", "localhost:3000")
}

fn post<'a>(uri: &'a str, form: String) -> Req<'a> {
    Req::new("POST", uri)
        .header("host", "localhost:3000")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
}

#[tokio::test]
async fn every_page_renders_whole_and_as_its_fragment() {
    let fake = Fake::new(16);
    let (app, _) = app(&fake);
    let job = "ab".repeat(32);
    fake.jobs.lock().unwrap().insert(
        job.clone(),
        novacron_model::fixtures::job_info_in(&job, JobState::Running),
    );
    fake.migrations
        .lock()
        .unwrap()
        .insert("m1".into(), fake::migration("m1", "vm0"));
    let job_page = format!("/jobs/{job}");
    for (path, want) in [
        ("/", "This cell"),
        ("/node", "Politeness"),
        ("/vms", "VMs"),
        ("/jobs", "Submit a job"),
        (job_page.as_str(), "Replicas"),
        ("/migrations", "In flight"),
    ] {
        let a = call(&app, get(path)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", text(&a));
        let html = text(&a);
        assert!(html.starts_with("<!DOCTYPE html>"), "{path}");
        assert!(html.contains(want), "{path}: {want} missing");
        assert!(html.contains("node-under-test"), "{path}");
        let frag = call(&app, get(&format!("{path}?fragment=1"))).await;
        let frag_html = text(&frag);
        assert!(
            frag_html.starts_with("<main id=\"main\">"),
            "{path}: {frag_html}"
        );
        assert!(
            frag_html.contains(want) && !frag_html.contains("<nav"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn errors_are_pages_with_their_status() {
    let fake = Fake::new(16);
    let (app, _) = app(&fake);
    let a = call(&app, get("/jobs/nope")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(text(&a).contains("no job nope"), "{}", text(&a));
    let a = call(&app, get("/no/such/page")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    fake.fail_with(crate::api::service::ServiceError::Internal(
        "disk on fire".into(),
    ));
    let a = call(&app, get("/")).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(text(&a).contains("disk on fire"));
}

#[tokio::test]
async fn actions_need_the_sessions_csrf_token_and_their_outcome_shows_once() {
    let fake = Fake::new(16);
    let (app, d) = app(&fake);
    let token = d.csrf.token(LOOPBACK);
    let a = call(&app, post("/node/owner", "owner=active".into())).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(*fake.owner.lock().unwrap(), OwnerSetting::Auto);
    let a = call(
        &app,
        post(
            "/node/drain",
            format!("deadline_s=5&csrf={}", "0".repeat(64)),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(*fake.drained.lock().unwrap(), None);

    let a = call(
        &app,
        post("/node/owner", format!("owner=active&csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(*fake.owner.lock().unwrap(), OwnerSetting::Active);
    let to = a.headers["location"].to_str().unwrap().to_string();
    assert!(to.starts_with("/node?flash="), "{to}");
    let page = text(&call(&app, get(&to)).await);
    assert!(page.contains("Owner set to active"), "{page}");
    let again = text(&call(&app, get(&to)).await);
    assert!(!again.contains("Owner set to active"), "a flash shows once");

    // Bad values are said, not done.
    let a = call(
        &app,
        post("/node/drain", format!("deadline_s=0&csrf={token}")),
    )
    .await;
    let page = text(&call(&app, get(a.headers["location"].to_str().unwrap())).await);
    assert!(page.contains("1 to 3600 seconds"), "{page}");
    assert_eq!(*fake.drained.lock().unwrap(), None);
    let a = call(
        &app,
        post("/node/drain", format!("deadline_s=30&csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(*fake.drained.lock().unwrap(), Some(30));

    // A job action reaches the service; its refusal comes back as the notice.
    let job = "cd".repeat(32);
    fake.jobs.lock().unwrap().insert(
        job.clone(),
        novacron_model::fixtures::job_info_in(&job, JobState::Running),
    );
    let path = format!("/jobs/{job}/cancel");
    let a = call(&app, post(&path, format!("csrf={token}"))).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(fake.jobs.lock().unwrap()[&job].state, JobState::Cancelled);
    let a = call(&app, post(&path, format!("csrf={token}"))).await;
    let page = text(&call(&app, get(a.headers["location"].to_str().unwrap())).await);
    assert!(page.contains("has ended"), "{page}");

    // A submission signed with a key the node does not hold is refused before the service.
    let a = call(
        &app,
        post(
            "/jobs",
            format!(
                "csrf={token}&key=nobody&spec=payload%3A%0A%20%20guest%3A%20builtin%3Ahello%0A"
            ),
        ),
    )
    .await;
    let page = text(&call(&app, get(a.headers["location"].to_str().unwrap())).await);
    assert!(page.contains("no submitter key nobody"), "{page}");
    let a = call(
        &app,
        post("/jobs", format!("csrf={token}&key=x&spec=payload%3A%20%5B")),
    )
    .await;
    let page = text(&call(&app, get(a.headers["location"].to_str().unwrap())).await);
    assert!(
        page.contains("the form&#x27;s spec") || page.contains("the form's spec"),
        "{page}"
    );
}

#[tokio::test]
async fn a_migration_started_from_the_page_lands_on_the_migrations_page() {
    let fake = Fake::new(16);
    let (app, d) = app(&fake);
    let token = d.csrf.token(LOOPBACK);
    let created = call(&app, Req::new("GET", "/").header("host", "localhost:3000")).await;
    assert_eq!(created.status, StatusCode::OK);
    let vm = crate::api::service::NodeService::create_vm(
        fake.as_ref(),
        serde_json::from_str(r#"{"guest":"builtin:counter"}"#).unwrap(),
    )
    .await
    .unwrap();
    let path = format!("/vms/{}/migrate", vm.id);
    let a = call(
        &app,
        post(&path, format!("csrf={token}&mode=sideways&target=auto")),
    )
    .await;
    let page = text(&call(&app, get(a.headers["location"].to_str().unwrap())).await);
    assert!(page.contains("No migration mode"), "{page}");
    let a = call(
        &app,
        post(&path, format!("csrf={token}&mode=live&target=auto")),
    )
    .await;
    let to = a.headers["location"].to_str().unwrap().to_string();
    assert!(to.starts_with("/migrations?flash="), "{to}");
    let id = fake
        .migrations
        .lock()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap();
    fake.update_migration(&id, MigrationState::Done);
    let page = text(&call(&app, get(&to)).await);
    assert!(
        page.contains("Moving VM") && page.contains(">done<"),
        "{page}"
    );
    let a = call(
        &app,
        post(&format!("/vms/{}/explode", vm.id), format!("csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn strangers_get_the_sign_in_page_and_assets_revalidate() {
    let fake = Fake::new(16);
    let (app, _) = app(&fake);
    let a = call(&app, get("/").from(Some("203.0.113.9:5000"))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(text(&a).contains("action=\"/login\""));
    let a = call(&app, get("/assets/live.js").from(Some("203.0.113.9:5000"))).await;
    assert_eq!(a.status, StatusCode::OK, "assets need no session");
    let etag = a.headers["etag"].to_str().unwrap().to_string();
    let a = call(&app, get("/assets/live.js").header("if-none-match", etag)).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    let a = call(&app, get("/assets/../Cargo.toml")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Without a token no stranger gets in at all.
    let d = Arc::new(
        Dashboard::new(
            fake.clone(),
            Arc::new(NodeMemory::default()),
            ApiAuth::loopback_only(),
            "n".into(),
            None,
            false,
        )
        .unwrap(),
    );
    let a = call(&router(d), get("/").from(Some("203.0.113.9:5000"))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sign_in_over_tls_sets_a_secure_session_cookie() {
    let fake = Fake::new(16);
    let d = Arc::new(
        Dashboard::new(
            fake.clone(),
            Arc::new(NodeMemory::default()),
            ApiAuth::with_token(TOKEN),
            "n".into(),
            None,
            true,
        )
        .unwrap(),
    );
    let csrf = d.csrf.token(super::access::ANONYMOUS);
    let app = router(d);
    let a = call(
        &app,
        post("/login", format!("csrf={csrf}&token={TOKEN}")).from(Some("203.0.113.9:5000")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let a = call(
        &app,
        get("/vms")
            .from(Some("203.0.113.9:5000"))
            .header("cookie", session),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[test]
fn every_node_event_has_its_stream_name() {
    use super::stream::kind;
    let names: Vec<&str> = [
        NodeEvent::Draining { deadline_s: 1 },
        NodeEvent::Member {
            peer_id: "p".into(),
            live: true,
        },
    ]
    .iter()
    .map(kind)
    .collect();
    assert_eq!(names, ["draining", "member"]);
    // Every topic a page listens to is a name the stream sends.
    for page in novacron_dashboard::pages::NAVIGATION {
        for t in page.topics() {
            assert!(
                [
                    "vm",
                    "migration",
                    "member",
                    "politeness",
                    "draining",
                    "job",
                    "sample"
                ]
                .contains(t),
                "{t}"
            );
        }
    }
}
