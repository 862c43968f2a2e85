//! Why a call of the API failed, in words that name the URL and say what to do.

use hyper::{Method, StatusCode};

use crate::api::types::ApiError;

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

/// The error a non-2xx answer maps to: the node's `ApiError` message, or a short excerpt
/// of whatever else it sent.
pub(super) fn error_answer(
    method: &Method,
    url: &str,
    status: StatusCode,
    body: &[u8],
) -> ClientError {
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
