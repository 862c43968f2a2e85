use super::*;
use crate::api::types::ApiError;
use crate::api::types::{EventEnvelope, NodeEvent, VmSpec};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

fn spec() -> VmSpec {
    serde_json::from_str(r#"{"guest":"builtin:counter"}"#).unwrap()
}

/// A tiny fake of the node's API: just what these tests call.
fn app() -> Router {
    Router::new()
        .route(
            "/api/v1/vms",
            get(|| async {
                Json(vec![crate::model::fixtures::vm(
                    "a1",
                    crate::api::types::VmState::Running,
                )])
            })
            .post(|Json(spec): Json<serde_json::Value>| async move {
                match serde_json::from_value::<VmSpec>(spec) {
                    Ok(s) => {
                        let mut vm = crate::model::fixtures::vm(
                            "new1",
                            crate::api::types::VmState::Starting,
                        );
                        vm.spec = s;
                        (axum::http::StatusCode::CREATED, Json(vm)).into_response()
                    }
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        Json(ApiError {
                            error: format!("bad VM spec: {e}"),
                        }),
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/api/v1/vms/{id}",
            get(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    Json(ApiError {
                        error: "no VM zz: list them with GET /api/v1/vms".into(),
                    }),
                )
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 2 << 20] }))
        .route(
            "/chunked-big",
            get(|| async {
                let chunks = (0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 << 10]));
                axum::body::Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route("/text", get(|| async { "plain failure" }))
        .route(
            "/teapot",
            get(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .route(
            "/auth",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Bearer s3cret")
                {
                    Json(serde_json::json!({"ok": true})).into_response()
                } else {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        Json(ApiError {
                            error: "this API needs a bearer token off loopback".into(),
                        }),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route(
            "/api/v1/events",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    for seq in 1..=3u64 {
                        let ev = EventEnvelope {
                            seq,
                            at_ms: 1000 * seq,
                            event: NodeEvent::Draining { deadline_s: seq },
                        };
                        let text = serde_json::to_string(&ev).unwrap();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.send(Message::Close(None)).await;
                })
            }),
        )
        .route(
            "/huge-ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    let text = format!("\"{}\"", "y".repeat(2 << 20));
                    let _ = socket.send(Message::Text(text.into())).await;
                })
            }),
        )
}

async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app()).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn json_calls_and_error_answers_over_a_real_socket() {
    let base = serve().await;
    let c = ApiClient::new(&base, None, None).unwrap();
    let vms: Vec<crate::api::types::VmInfo> = c.get("/api/v1/vms").await.unwrap();
    assert_eq!(vms[0].id, "a1");
    let vm: crate::api::types::VmInfo = c.post("/api/v1/vms", &spec()).await.unwrap();
    assert_eq!(
        (vm.id.as_str(), vm.spec.guest.as_deref()),
        ("new1", Some("builtin:counter"))
    );

    // The node's ApiError message and status, as the node said them.
    let err = c
        .post::<_, serde_json::Value>(
            "/api/v1/vms",
            &serde_json::json!({"guest": "g", "memmib": 1}),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::Api { status: 400, .. })
            && text.contains("400")
            && text.contains("bad VM spec")
            && text.contains("memmib"),
        "{text}"
    );
    let err = c
        .get::<serde_json::Value>("/api/v1/vms/zz")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404") && err.contains("no VM zz"), "{err}");
    let err = c
        .get::<serde_json::Value>("/teapot")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("418") && err.contains("short and stout"),
        "{err}"
    );
    // A 2xx that is not the JSON expected.
    let err = c
        .get::<serde_json::Value>("/text")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not what this client expects"), "{err}");
    assert_eq!(c.get_text("/text").await.unwrap(), "plain failure");
}

#[tokio::test]
async fn tokens_are_sent_and_a_401_says_how_to_give_one() {
    let base = serve().await;
    let err = ApiClient::new(&base, None, None)
        .unwrap()
        .get::<serde_json::Value>("/auth")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("--token-file"), "{err}");
    let ok: serde_json::Value = ApiClient::new(&base, Some("s3cret".into()), None)
        .unwrap()
        .get("/auth")
        .await
        .unwrap();
    assert_eq!(ok["ok"], true);
    assert!(ApiClient::new(&base, Some("two words".into()), None).is_err());
}

#[tokio::test]
async fn a_refused_connection_says_to_start_the_node() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = ApiClient::new(&url, None, None)
        .unwrap()
        .get::<serde_json::Value>("/api/v1/node")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("no node answers at {url}: is `novacron node` running? (start it, or pass --api/--data-dir)")
    );
}

#[tokio::test]
async fn answers_are_size_limited_and_requests_timed() {
    let base = serve().await;
    let c = ApiClient::new(&base, None, None)
        .unwrap()
        .with_max_body(1 << 20);
    for path in ["/big", "/chunked-big"] {
        let err = c.get_text(path).await.unwrap_err();
        assert!(
            matches!(err, ClientError::TooLarge { limit: 1048576, .. }),
            "{path}: {err}"
        );
    }
    let err = c
        .websocket::<String>("/huge-ws")
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    let c = c.with_timeouts(Duration::from_secs(1), Duration::from_millis(300));
    let err = c.get_text("/slow").await.unwrap_err().to_string();
    assert!(err.contains("no answer within"), "{err}");
}

#[tokio::test]
async fn a_websocket_yields_parsed_messages_until_closed() {
    let base = serve().await;
    let c = ApiClient::new(&base, None, None).unwrap();
    let mut ws = c
        .websocket::<EventEnvelope>("/api/v1/events")
        .await
        .unwrap();
    let mut seqs = Vec::new();
    while let Some(ev) = ws.next().await {
        seqs.push(ev.unwrap().seq);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    // A route that is not a WebSocket: the node's answer, as for any call.
    let err = c
        .websocket::<EventEnvelope>("/api/v1/vms/zz")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("404") && err.contains("no VM zz"), "{err}");
}

#[test]
fn bad_urls_are_refused_with_an_example() {
    for (url, needle) in [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("ftp://x:1", "http or https"),
        ("http://x:1/?q=1", "query"),
        ("https://127.0.0.1:1", "--ca"),
    ] {
        let err = ApiClient::new(url, None, None).unwrap_err().to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
    let c = ApiClient::new("http://[::1]:8080/base/", None, None).unwrap();
    assert_eq!(c.base_url(), "http://[::1]:8080/base");
    assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
}

/// A TLS server with a fresh self-signed certificate for 127.0.0.1; its PEM.
async fn serve_tls() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let pem = ck.cert.pem();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        )
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg)),
    );
    tokio::spawn(async move {
        let _ = server.serve(app().into_make_service()).await;
    });
    (format!("https://{addr}"), pem)
}

#[tokio::test]
async fn https_trusts_the_given_certificate_only() {
    let (base, pem) = serve_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("node.crt");
    std::fs::write(&ca, &pem).unwrap();
    let c = ApiClient::new(&base, None, Some(&ca)).unwrap();
    let vms: Vec<crate::api::types::VmInfo> = c.get("/api/v1/vms").await.unwrap();
    assert_eq!(vms.len(), 1);
    let mut ws = c
        .websocket::<EventEnvelope>("/api/v1/events")
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().seq, 1);
    // Big answers cross many TLS records.
    assert_eq!(c.get_text("/big").await.unwrap().len(), 2 << 20);

    // Another certificate: the handshake fails and says TLS.
    let (_, other) = serve_tls().await;
    let wrong = dir.path().join("other.crt");
    std::fs::write(&wrong, other).unwrap();
    let err = ApiClient::new(&base, None, Some(&wrong))
        .unwrap()
        .get::<serde_json::Value>("/api/v1/vms")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = ApiClient::new(&base, None, Some(&junk))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no certificate in it"), "{err}");
}
