//! A client of the node's REST API (`/api/v1`): JSON requests with typed answers, error
//! answers (`ApiError`) turned into errors that show the node's message and status, and the
//! WebSocket streams (`/events`, `/migrations/{id}/watch`) as parsed messages.
//!
//! Plain HTTP and HTTPS (rustls with the ring provider). HTTPS trusts only the certificate
//! (or CA) file it is given: there are no system roots, so `https://` without a CA file is
//! refused with an error that says to pass `--ca`.
//!
//! One connection per request (hyper's `conn::http1` over a stream this module connects):
//! the CLI makes a handful of calls, and owning the connect step lets it time the connect
//! and name a refused connection precisely. What it cannot do: HTTP/2, proxies, keep-alive
//! across requests, redirects.

mod connection;
mod error;
#[cfg(test)]
mod tests;
mod websocket;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Uri};
use serde::de::DeserializeOwned;
use serde::Serialize;

use connection::tls_config;
use error::error_answer;
pub use error::ClientError;

/// Largest answer body (and WebSocket message) read.
pub const MAX_BODY: usize = 16 << 20;
/// How long connecting (TCP, then TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, connect included; WebSocket streams have no limit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Where the API is and how to talk to it.
#[derive(Clone)]
pub struct ApiClient {
    pub(super) scheme_https: bool,
    pub(super) host: String,
    pub(super) port: u16,
    /// The base URL's path without its trailing slash ("" for most).
    pub(super) prefix: String,
    pub(super) token: Option<String>,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) max_body: usize,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ApiClient")
            .field("base", &self.base_url())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ApiClient {
    /// A client of the API at `base_url` (`http://127.0.0.1:8080`), sending `token` as a
    /// bearer token when given; `ca` is the PEM certificate(s) to trust for `https://`.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base_url
            .trim()
            .parse()
            .map_err(|_| bad("not a URL: give one like http://127.0.0.1:8080"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("no scheme: give one like http://127.0.0.1:8080")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(bad("a base URL has no query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        let tls = match (https, ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(Arc::new(tls_config(ca).map_err(|reason| {
                ClientError::Tls {
                    url: base_url.to_string(),
                    reason,
                }
            })?)),
            (true, None) => {
                return Err(ClientError::Tls {
                    url: base_url.to_string(),
                    reason: "no certificate to trust: pass --ca FILE (the node's certificate, \
                             PEM) or set NOVACRON_API_CA"
                        .into(),
                })
            }
        };
        if let Some(t) = &token {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::BadUrl {
                    url: base_url.to_string(),
                    reason: "the API token must be printable ASCII without spaces".into(),
                });
            }
        }
        Ok(ApiClient {
            scheme_https: https,
            host,
            port,
            prefix,
            token,
            tls,
            max_body: MAX_BODY,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// Reads at most `max` bytes of each answer (default [`MAX_BODY`]).
    #[allow(dead_code)] // tests today; callers with other limits later
    pub fn with_max_body(mut self, max: usize) -> Self {
        self.max_body = max;
        self
    }

    /// Changes the connect and request timeouts (defaults 5 s and 30 s).
    #[allow(dead_code)] // tests today; callers with other limits later
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// The base URL as given (normalized).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.scheme_https { "https" } else { "http" },
            self.authority(),
            self.prefix
        )
    }

    pub(super) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// `GET path` answered with JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.send(Method::GET, path, None).await?;
        self.decode(path, &body)
    }

    /// `POST path` with a JSON body, answered with JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            reason: format!("cannot encode the request: {e}"),
        })?;
        let answer = self.send(Method::POST, path, Some(json)).await?;
        self.decode(path, &answer)
    }

    /// `POST path` with a JSON body; whatever the successful answer holds is ignored.
    pub async fn post_ignore<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            reason: format!("cannot encode the request: {e}"),
        })?;
        self.send(Method::POST, path, Some(json)).await.map(|_| ())
    }

    /// `DELETE path` answered with JSON, or with no content (None: the resource is gone).
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        let body = self.send(Method::DELETE, path, None).await?;
        if body.is_empty() {
            return Ok(None);
        }
        self.decode(path, &body).map(Some)
    }

    /// `GET path` answered with bytes (e.g. a job's result).
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// `GET path` answered with text (e.g. `/metrics`).
    #[allow(dead_code)] // tests today; a metrics command later
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.send(Method::GET, path, None).await?;
        String::from_utf8(body.to_vec()).map_err(|_| ClientError::Decode {
            url: self.url(path),
            reason: "not UTF-8 text".into(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    /// One request; the body of a 2xx answer, or the error it maps to.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let url = self.url(path);
        let secs = self.request_timeout.as_secs();
        match tokio::time::timeout(self.request_timeout, self.send_inner(&method, path, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { url, secs }),
        }
    }

    async fn send_inner(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let url = self.url(path);
        let transport = |e: hyper::Error| ClientError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let stream = self.connect(path).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(transport)?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("API connection ended: {e}");
            }
        });
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.prefix, path))
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        if let Some(len) = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.max_body as u64 {
                conn_task.abort();
                return Err(ClientError::TooLarge {
                    url,
                    limit: self.max_body,
                });
            }
        }
        let collected = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await;
        conn_task.abort();
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ClientError::TooLarge {
                    url,
                    limit: self.max_body,
                })
            }
            Err(e) => {
                return Err(ClientError::Transport {
                    url,
                    reason: format!("reading the answer: {e}"),
                })
            }
        };
        if status.is_success() {
            return Ok(bytes);
        }
        Err(error_answer(method, &url, status, &bytes))
    }
}

/// `s` as one URL path segment: everything but unreserved characters percent-encoded.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
