//! The API's WebSocket streams (`/events`, `/migrations/{id}/watch`) as parsed messages.

use hyper::Method;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite;

use super::connection::Stream;
use super::error::error_answer;
use super::{ApiClient, ClientError};

impl ApiClient {
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
