//! Who may use the dashboard. Callers on this machine are trusted, as by the API, but only
//! when the page was asked for by a loopback name (`localhost`, `127.0.0.1`, `[::1]`): a
//! page of another site whose name was re-pointed at 127.0.0.1 (DNS rebinding) is a
//! stranger. Strangers sign in once with the node's API token and then carry a session
//! cookie derived from it (HttpOnly, SameSite=Strict, Secure over TLS); without one they get
//! the sign-in page (401), and nothing at all when the node has no token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Form;
use novacron_dashboard::csrf::{same, session_for_token, LOOPBACK, SESSION_COOKIE};
use novacron_dashboard::pages::Page;
use novacron_dashboard::shell::{document, Frame};
use novacron_dashboard::views;
use serde::Deserialize;

use super::Dashboard;
use crate::api::rest::auth::is_loopback;
use crate::api::service::NodeService;

/// The session of a caller not signed in (only the sign-in form uses its CSRF token).
pub const ANONYMOUS: &str = "anonymous";
/// How long a session cookie lasts: 30 days.
const SESSION_MAX_AGE_S: u64 = 30 * 24 * 3600;

/// The caller's session, as [`require_access`] found it.
#[derive(Clone, Debug)]
pub struct Access {
    pub session: String,
}

/// Why an action was refused before it reached the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The form's CSRF token is missing, wrong or from before a restart.
    Csrf,
    /// The browser says the form came from another site's page.
    Origin,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let why = match self {
            Refused::Csrf => {
                "The form's CSRF token is missing or stale: reload the page and try again.\n"
            }
            Refused::Origin => "This action came from another site's page: refused.\n",
        };
        (StatusCode::FORBIDDEN, why).into_response()
    }
}

/// Refuses a POST whose `Origin` (sent by browsers) is not the dashboard itself.
pub fn check_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(Refused::Origin),
    }
}

/// Whether the Host header names this machine by a loopback name.
pub fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The caller's session: [`LOOPBACK`] for this machine, else its valid session cookie.
pub fn session_of<S>(
    d: &Dashboard<S>,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Option<String> {
    if peer.is_some_and(is_loopback) && host_is_loopback(headers) {
        return Some(LOOPBACK.to_string());
    }
    let token = d.auth.token()?;
    let given = cookie(headers, SESSION_COOKIE)?;
    same(given, &session_for_token(token)).then(|| given.to_string())
}

fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// Lets callers with a session through (noting it as [`Access`]); others get the sign-in
/// page, or a refusal when the node has no token to sign in with.
pub async fn require_access<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let open = path.starts_with("/assets/") || path == "/login";
    let session = session_of(&d, peer_ip(&req), req.headers());
    match (session, open) {
        (Some(session), _) => {
            req.extensions_mut().insert(Access { session });
            next.run(req).await
        }
        (None, true) => {
            req.extensions_mut().insert(Access {
                session: ANONYMOUS.into(),
            });
            next.run(req).await
        }
        (None, false) if !d.auth.has_token() => (
            StatusCode::FORBIDDEN,
            "This node's dashboard answers only on its own machine (it has no API token: \
             set api.tokenFile, or run `novacron node install`).\n",
        )
            .into_response(),
        (None, false) if req.method() == Method::GET && !path.starts_with("/events") => {
            login_response(&d, StatusCode::UNAUTHORIZED, false)
        }
        (None, false) => (
            StatusCode::UNAUTHORIZED,
            "Sign in first: open the dashboard's /login page.\n",
        )
            .into_response(),
    }
}

fn login_response<S>(d: &Dashboard<S>, status: StatusCode, failed: bool) -> Response {
    let csrf = d.csrf.token(ANONYMOUS);
    let frame = Frame {
        page: Page::Login,
        node_name: d.node_name.clone(),
        csrf: csrf.clone(),
        notice: None,
    };
    let html = document(&frame, views::login::render(&csrf, failed));
    (status, super::answers::html_headers(), html).into_response()
}

pub async fn login_page<S: NodeService>(State(d): State<Arc<Dashboard<S>>>) -> Response {
    login_response(&d, StatusCode::OK, false)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// Checks the token; sets the session cookie and goes to the overview when it is right.
pub async fn login<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(refused) = check_origin(&headers) {
        return refused.into_response();
    }
    if !d.csrf.check(ANONYMOUS, &form.csrf) {
        return Refused::Csrf.into_response();
    }
    let Some(token) = d.auth.token() else {
        return (
            StatusCode::FORBIDDEN,
            "This node has no API token to sign in with.\n",
        )
            .into_response();
    };
    if !same(form.token.trim(), token) {
        tracing::info!("dashboard: a sign-in with a wrong token");
        return login_response(&d, StatusCode::UNAUTHORIZED, true);
    }
    let secure = if d.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_MAX_AGE_S}{secure}",
        session_for_token(token)
    );
    let mut resp = super::answers::see_other("/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_loopback_names_count_as_this_machine() {
        for host in [
            "localhost:3000",
            "127.0.0.1:3000",
            "[::1]:3000",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(host_is_loopback(&headers(&[("host", host)])), "{host}");
        }
        for host in [
            "evil.example:3000",
            "10.0.0.1:3000",
            "localhost.evil.example",
            "[::2]:3000",
        ] {
            assert!(!host_is_loopback(&headers(&[("host", host)])), "{host}");
        }
        assert!(!host_is_loopback(&HeaderMap::new()));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; novacron_session=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "novacron_session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn a_post_from_another_site_is_refused_and_one_from_here_passes() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("localhost:3000"));
        assert!(
            check_origin(&h).is_ok(),
            "no Origin: not a browser's cross-site form"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:3000"),
        );
        assert!(check_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(check_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&h).is_err());
    }
}
