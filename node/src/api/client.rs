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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

use super::types::ApiError;

/// Largest answer body (and WebSocket message) read.
pub const MAX_BODY: usize = 16 << 20;
/// How long connecting (TCP, then TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, connect included; WebSocket streams have no limit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Why a call failed. Each message names the URL and says what to do where it can.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node answers at {url}: is `novacron node` running? (start it, or pass --api/--data-dir)")]
    NotRunning { url: String },
    #[error("the node answered {status} to {method} {url}: {message}")]
    Api {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: no answer within {secs} s (is the node overloaded or stuck?)")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: the answer is larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: the node's answer is not what this client expects ({reason}): are the node and the CLI the same version?")]
    Decode { url: String, reason: String },
    #[error("API URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
}

/// Where the API is and how to talk to it.
#[derive(Clone)]
pub struct ApiClient {
    scheme_https: bool,
    host: String,
    port: u16,
    /// The base URL's path without its trailing slash ("" for most).
    prefix: String,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_body: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
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

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self, path: &str) -> String {
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

    /// TCP (then TLS) to the API, within the connect timeout.
    async fn connect(&self, path: &str) -> Result<Stream, ClientError> {
        let url = self.url(path);
        let secs = self.connect_timeout.as_secs();
        match tokio::time::timeout(self.connect_timeout, self.connect_inner(&url)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { url, secs }),
        }
    }

    async fn connect_inner(&self, url: &str) -> Result<Stream, ClientError> {
        let tcp = match TcpStream::connect((self.host.as_str(), self.port)).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                return Err(ClientError::NotRunning {
                    url: self.base_url(),
                })
            }
            Err(e) => {
                return Err(ClientError::Transport {
                    url: url.to_string(),
                    reason: format!("cannot connect to {}: {e}", self.authority()),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(cfg) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        ClientError::Tls {
                            url: url.to_string(),
                            reason: format!("{:?} is not a server name: {e}", self.host),
                        }
                    })?;
                let tls = tls::TlsStream::connect(tcp, cfg.clone(), name)
                    .await
                    .map_err(|e| ClientError::Tls {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }

    /// Opens the WebSocket at `path` (e.g. `/api/v1/events`); each text message is parsed
    /// as a `T`. Only the connect and the handshake are timed.
    pub async fn websocket<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<WsStream<T>, ClientError> {
        let url = self.url(path);
        let ws_url = format!(
            "{}://{}{}{}",
            if self.scheme_https { "wss" } else { "ws" },
            self.authority(),
            self.prefix,
            path
        );
        let stream = self.connect(path).await?;
        use tungstenite::client::IntoClientRequest;
        let mut request =
            ws_url
                .as_str()
                .into_client_request()
                .map_err(|e| ClientError::BadUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::BadUrl {
                    url: url.clone(),
                    reason: "the API token is not a valid header value".into(),
                })?;
            request
                .headers_mut()
                .insert(tungstenite::http::header::AUTHORIZATION, value);
        }
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(self.max_body))
            .max_frame_size(Some(self.max_body));
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        let secs = self.request_timeout.as_secs();
        let (ws, _) = match tokio::time::timeout(self.request_timeout, handshake).await {
            Err(_) => return Err(ClientError::Timeout { url, secs }),
            Ok(Ok(ok)) => ok,
            Ok(Err(tungstenite::Error::Http(response))) => {
                let (parts, body) = response.into_parts();
                let body = body.unwrap_or_default();
                return Err(error_answer(&Method::GET, &url, parts.status, &body));
            }
            Ok(Err(e)) => {
                return Err(ClientError::Transport {
                    url,
                    reason: format!("WebSocket handshake: {e}"),
                })
            }
        };
        Ok(WsStream {
            ws,
            url,
            max: self.max_body,
            _t: std::marker::PhantomData,
        })
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

/// The error a non-2xx answer maps to: the node's `ApiError` message, or a short excerpt
/// of whatever else it sent.
fn error_answer(method: &Method, url: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no explanation")
                    .to_string()
            } else {
                text.to_string()
            }
        }
    };
    let message = if status == StatusCode::UNAUTHORIZED {
        format!("{message} (give the node's API token: --token-file FILE or NOVACRON_API_TOKEN)")
    } else {
        message
    };
    ClientError::Api {
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        message,
    }
}

/// A WebSocket whose text messages are JSON `T`s.
pub struct WsStream<T> {
    ws: tokio_tungstenite::WebSocketStream<Stream>,
    url: String,
    max: usize,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> WsStream<T> {
    /// The next message; `None` once the server closed the stream. Pings are answered and
    /// binary messages skipped.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        use futures::StreamExt;
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(tungstenite::Error::ConnectionClosed) => return None,
                Err(tungstenite::Error::Capacity(_)) => {
                    return Some(Err(ClientError::TooLarge {
                        url: self.url.clone(),
                        limit: self.max,
                    }))
                }
                Err(e) => {
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    }))
                }
            };
            match msg {
                tungstenite::Message::Text(text) => {
                    return Some(serde_json::from_str(text.as_str()).map_err(|e| {
                        ClientError::Decode {
                            url: self.url.clone(),
                            reason: e.to_string(),
                        }
                    }))
                }
                tungstenite::Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Closes the stream politely (errors are ignored: the CLI is leaving anyway).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// TLS trusting the certificates of `ca` (PEM), ring provider.
fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let len = std::fs::metadata(ca)
        .map_err(|e| format!("--ca {}: cannot read it: {e}", ca.display()))?
        .len();
    if len > MAX_CA_BYTES {
        return Err(format!(
            "--ca {}: {len} bytes is over the {MAX_CA_BYTES}-byte limit",
            ca.display()
        ));
    }
    let pem =
        std::fs::read(ca).map_err(|e| format!("--ca {}: cannot read it: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| format!("--ca {}: not a PEM certificate: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: unusable certificate: {e}", ca.display()))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "--ca {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A connection to the API: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A rustls client connection driven over a tokio `TcpStream`: rustls works on blocking
/// `Read`/`Write`, so an adapter turns the socket's `Pending` into `WouldBlock` and back.
/// It cannot do early data or renegotiate keys on demand (rustls does key updates itself).
pub mod tls {
    use std::io::{self, Read, Write};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::ServerName;
    use rustls::ClientConnection;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    pub struct TlsStream {
        io: TcpStream,
        conn: ClientConnection,
    }

    /// The socket as blocking I/O for one poll: `Pending` becomes `WouldBlock`.
    struct SyncIo<'a, 'b> {
        io: &'a mut TcpStream,
        cx: &'a mut Context<'b>,
    }

    impl Read for SyncIo<'_, '_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
                Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for SyncIo<'_, '_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
                Poll::Ready(r) => r,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            match Pin::new(&mut *self.io).poll_flush(self.cx) {
                Poll::Ready(r) => r,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl TlsStream {
        /// Connects TLS over `io` and completes the handshake (certificate checked).
        pub async fn connect(
            io: TcpStream,
            config: Arc<rustls::ClientConfig>,
            name: ServerName<'static>,
        ) -> io::Result<TlsStream> {
            let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut s = TlsStream { io, conn };
            std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
            Ok(s)
        }

        fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            while self.conn.is_handshaking() {
                if self.conn.wants_write() {
                    match self.poll_write_tls(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                    continue;
                }
                if self.conn.wants_read() {
                    match self.poll_read_tls(cx) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection during the TLS handshake",
                            )))
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            self.poll_write_tls(cx)
        }

        /// Writes every TLS record rustls holds; `Pending` when the socket is full.
        fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            while self.conn.wants_write() {
                let mut io = SyncIo {
                    io: &mut self.io,
                    cx,
                };
                match self.conn.write_tls(&mut io) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        }

        /// Reads TLS records into rustls and processes them; the bytes read (0 at EOF).
        fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.conn.read_tls(&mut io) {
                Ok(n) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // Tell the server why (the alert rustls queued), best effort.
                        let _ = self.poll_write_tls(cx);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    Poll::Ready(Ok(n))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        }
    }

    impl AsyncRead for TlsStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            // Bounded: each pass either returns or feeds rustls new bytes.
            for _ in 0..64 {
                match this.conn.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if this.conn.wants_write() {
                    if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                match this.poll_read_tls(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl AsyncWrite for TlsStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            loop {
                let n = this.conn.writer().write(buf)?;
                if n > 0 || buf.is_empty() {
                    if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                // rustls' buffer is full: send some of it, then try again.
                match this.poll_write_tls(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.conn.writer().flush()?;
            match this.poll_write_tls(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
                other => other,
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.conn.send_close_notify();
            match this.poll_write_tls(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
                other => other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    Json(vec![crate::api::fixtures::vm(
                        "a1",
                        crate::api::types::VmState::Running,
                    )])
                })
                .post(|Json(spec): Json<serde_json::Value>| async move {
                    match serde_json::from_value::<VmSpec>(spec) {
                        Ok(s) => {
                            let mut vm = crate::api::fixtures::vm(
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
}
