//! Who may call the API: anyone on this machine (loopback), and others with the node's
//! bearer token. The decision ([`authorize`]) is a pure function of the caller's address,
//! its `Authorization` header and the token; the middleware only feeds it.
//!
//! What this cannot do: tell people on this machine apart (every local user, and anything
//! that relays to loopback such as a reverse proxy on the same host, is trusted), or rate
//! limit guesses (a 32-byte random token makes guessing pointless, and comparisons are
//! constant-time so timing does not help).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiFailure;

/// Largest token file read, bytes.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;
/// Shortest token accepted (install writes 64 hex digits).
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("API token file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API token file {path}: {reason}; write 32 random bytes hex-encoded into it (novacron node install does) or point api.tokenFile elsewhere")]
    Bad { path: PathBuf, reason: String },
}

/// The node's API token, if it has one.
#[derive(Clone, Default)]
pub struct ApiAuth {
    token: Option<String>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ApiAuth {
    /// No token: only loopback callers are served.
    pub fn loopback_only() -> ApiAuth {
        ApiAuth { token: None }
    }

    pub fn with_token(token: impl Into<String>) -> ApiAuth {
        ApiAuth {
            token: Some(token.into()),
        }
    }

    /// The token in `path` (its contents, trimmed), or loopback only when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<ApiAuth, TokenError> {
        let Some(path) = path else {
            return Ok(ApiAuth::loopback_only());
        };
        let read_err = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let bad = |reason: String| TokenError::Bad {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(bad(format!("over the {MAX_TOKEN_FILE_BYTES}-byte limit")));
        }
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_CHARS {
            return Err(bad(format!(
                "the token is {} characters, fewer than {MIN_TOKEN_CHARS}",
                token.len()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the token has spaces or characters a header cannot carry".into(),
            ));
        }
        Ok(ApiAuth::with_token(token))
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The token, for what derives from it (the dashboard's sessions).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// Whether `ip` is this machine: 127.0.0.0/8, ::1, or an IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why a caller is refused (always 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoTokenConfigured,
    MissingHeader,
    NotBearer,
    WrongToken,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::NoTokenConfigured => {
                "this node has no API token, so it serves only callers on its own machine: \
                 create one with `novacron node install` (it writes /etc/novacron/api.token) \
                 or set api.tokenFile, restart the node, then send Authorization: Bearer <token>"
            }
            Refusal::MissingHeader => {
                "calls from off this machine need Authorization: Bearer <token> \
                 (the token is the node's api.token file)"
            }
            Refusal::NotBearer => {
                "the Authorization header must be `Bearer <token>` (the node's api.token file)"
            }
            Refusal::WrongToken => "the bearer token is not this node's API token",
        }
    }
}

/// The decision: loopback callers pass; others need the node's token as a bearer token.
pub fn authorize(
    peer: Option<IpAddr>,
    authorization: Option<&[u8]>,
    auth: &ApiAuth,
) -> Result<(), Refusal> {
    if peer.is_some_and(is_loopback) {
        return Ok(());
    }
    let Some(token) = &auth.token else {
        return Err(Refusal::NoTokenConfigured);
    };
    let Some(value) = authorization else {
        return Err(Refusal::MissingHeader);
    };
    let Some(given) = bearer(value) else {
        return Err(Refusal::NotBearer);
    };
    if constant_time_eq(given, token.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// The credentials of `Bearer <credentials>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    if start == 0 {
        return None;
    }
    let creds = rest.get(start..)?;
    let end = creds.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    creds.get(..end).filter(|c| !c.is_empty())
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The middleware: refuses with 401, `WWW-Authenticate: Bearer` and a JSON reason.
pub async fn require_auth(
    axum::extract::State(auth): axum::extract::State<std::sync::Arc<ApiAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match authorize(peer, header, &auth) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(?peer, ?refusal, "API call refused");
            let mut resp =
                ApiFailure::new(StatusCode::UNAUTHORIZED, refusal.message()).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"novacron\""),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn loopback_in_every_spelling_passes_without_a_token() {
        for a in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                authorize(ip(a), None, &ApiAuth::loopback_only()),
                Ok(()),
                "{a}"
            );
        }
        for a in ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "0.0.0.0", "::"] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn remote_callers_need_the_exact_token() {
        let auth = ApiAuth::with_token(TOKEN);
        let remote = ip("192.0.2.7");
        let header = format!("Bearer {TOKEN}");
        assert_eq!(authorize(remote, Some(header.as_bytes()), &auth), Ok(()));
        let lower = format!("bearer   {TOKEN} ");
        assert_eq!(authorize(remote, Some(lower.as_bytes()), &auth), Ok(()));
        assert_eq!(authorize(None, Some(header.as_bytes()), &auth), Ok(()));
        assert_eq!(authorize(remote, None, &auth), Err(Refusal::MissingHeader));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearer  ",
            "Bearerxyz",
            "",
        ] {
            assert_eq!(
                authorize(remote, Some(bad.as_bytes()), &auth),
                Err(Refusal::NotBearer),
                "{bad:?}"
            );
        }
        let short = format!("Bearer {}", &TOKEN[..63]);
        let long = format!("Bearer {TOKEN}0");
        let flipped = format!("Bearer {}0", &TOKEN[..63]);
        for bad in [short, long, flipped] {
            assert_eq!(
                authorize(remote, Some(bad.as_bytes()), &auth),
                Err(Refusal::WrongToken),
                "{bad}"
            );
        }
        assert_eq!(
            authorize(remote, Some(header.as_bytes()), &ApiAuth::loopback_only()),
            Err(Refusal::NoTokenConfigured)
        );
        assert!(Refusal::NoTokenConfigured
            .message()
            .contains("novacron node install"));
        assert!(Refusal::NoTokenConfigured
            .message()
            .contains("api.tokenFile"));
    }

    #[test]
    fn the_token_file_is_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let auth = ApiAuth::load(Some(&path)).unwrap();
        assert_eq!(auth.token.as_deref(), Some(TOKEN));
        assert!(
            !format!("{auth:?}").contains(TOKEN),
            "the token is not logged"
        );
        assert!(!ApiAuth::load(None).unwrap().has_token());

        for (content, needle) in [
            ("short\n".to_string(), "fewer than"),
            ("a b c d e f g h i j k l m n\n".to_string(), "spaces"),
            ("x".repeat(5000), "limit"),
        ] {
            std::fs::write(&path, content).unwrap();
            let err = ApiAuth::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("api.token"), "{err}");
        }
        let err = ApiAuth::load(Some(&dir.path().join("none")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none") && err.contains("cannot read"), "{err}");
    }
}
