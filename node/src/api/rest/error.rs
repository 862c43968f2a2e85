//! Every error the API answers: a status and a JSON [`ApiError`] body. Axum's own
//! rejections (plain text) never reach a client: the body and path extractors here make
//! their own, and the fallbacks answer unknown routes and methods.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::api::service::ServiceError;
use crate::api::types::ApiError;

/// Largest request body read, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a request body may take to arrive in full.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest VM or migration id accepted in a path, bytes.
pub const MAX_ID_BYTES: usize = 128;

/// An error answer: a status code and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The HTTP status that says what `e` is.
pub fn status_of(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServiceError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> ApiFailure {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %e, "API request failed on the node");
        }
        ApiFailure::new(status, e.to_string())
    }
}

/// A JSON request body: `Content-Type: application/json` (or `application/*+json`), at
/// most [`MAX_BODY_BYTES`], decoded into `T` (whose unknown fields are errors).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiFailure> {
        let (json_type, bytes) = read_body(req).await?;
        if !json_type {
            return Err(wrong_type());
        }
        decode(&bytes).map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body without a content type is `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiFailure> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let (json_type, bytes) = read_body(req).await?;
        if bytes.is_empty() && !has_type {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !json_type {
            return Err(wrong_type());
        }
        if bytes.trim_ascii() == b"null" {
            return Ok(OptionalJsonBody(T::default()));
        }
        decode(&bytes).map(OptionalJsonBody)
    }
}

fn wrong_type() -> ApiFailure {
    ApiFailure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the body must be JSON: send Content-Type: application/json",
    )
}

fn too_large() -> ApiFailure {
    ApiFailure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over the {MAX_BODY_BYTES}-byte limit of this API"),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// Whether the content type is JSON, and the body (read up to the limit).
async fn read_body(req: Request) -> Result<(bool, axum::body::Bytes), ApiFailure> {
    let json_type = is_json(req.headers());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let Ok(collected) = tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await else {
        return Err(ApiFailure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok((json_type, collected.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiFailure::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Decodes a request body: a JSON object (every request type is one: an array, which serde
/// would take for a struct's fields in order, is refused), whose whole numbers may be written
/// with a zero fraction (`2041.0` is an integer in JSON Schema, as the OpenAPI document
/// says); unknown fields and bad values are named.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiFailure::bad_request(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiFailure::bad_request(format!(
            "the body must be a JSON object, not {}",
            json_kind(&value)
        )));
    }
    let bytes = if whole_floats_to_integers(&mut value) {
        std::borrow::Cow::Owned(serde_json::to_vec(&value).map_err(|e| {
            ApiFailure::bad_request(format!("cannot re-read the request body: {e}"))
        })?)
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    decode_object(&bytes)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Writes every float with no fraction (within ±2^53, where floats are exact) as an integer;
/// says whether it changed anything.
fn whole_floats_to_integers(v: &mut serde_json::Value) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 || f.abs() > EXACT {
                return false;
            }
            *n = if f < 0.0 {
                serde_json::Number::from(f as i64)
            } else {
                serde_json::Number::from(f as u64)
            };
            true
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, i| whole_floats_to_integers(i) | changed),
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .fold(false, |changed, i| whole_floats_to_integers(i) | changed),
        _ => false,
    }
}

fn decode_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiFailure::bad_request(format!("malformed JSON: {e}"))
            }
            Category::Data => {
                let text = e.to_string();
                match key_before(bytes, e.line(), e.column()) {
                    Some(key) if !text.contains("field") => ApiFailure::bad_request(format!(
                        "invalid request body: field `{key}`: {text}"
                    )),
                    _ => ApiFailure::bad_request(format!("invalid request body: {text}")),
                }
            }
        }
    })
}

/// The last object key before `line`:`column` (1-based, as serde_json reports) in `json`:
/// the field a type error is about (serde_json's message gives only the position).
fn key_before(json: &[u8], line: usize, column: usize) -> Option<String> {
    let mut offset = 0;
    for _ in 1..line {
        offset += json.get(offset..)?.iter().position(|b| *b == b'\n')? + 1;
    }
    let end = (offset + column).min(json.len());
    let prefix = json.get(..end)?;
    let mut key = None;
    let mut i = 0;
    while i < prefix.len() {
        if prefix[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < prefix.len() && prefix[j] != b'"' {
            j += if prefix[j] == b'\\' { 2 } else { 1 };
        }
        let literal = prefix.get(start..j.min(prefix.len()))?;
        let mut k = j + 1;
        while k < prefix.len() && prefix[k].is_ascii_whitespace() {
            k += 1;
        }
        if prefix.get(k) == Some(&b':') {
            key = Some(String::from_utf8_lossy(literal).chars().take(64).collect());
        }
        i = j + 1;
    }
    key
}

/// The `{id}` of a route: percent-decoded, at most [`MAX_ID_BYTES`].
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiFailure::bad_request(format!("bad id in the path: {}", e.body_text()))
            })?;
        if id.len() > MAX_ID_BYTES {
            return Err(ApiFailure::bad_request(format!(
                "the id is {} bytes, over the {MAX_ID_BYTES}-byte limit",
                id.len()
            )));
        }
        Ok(IdPath(id))
    }
}

/// A route's query string decoded into `T` (whose unknown fields are errors); a bad one is
/// a 400 naming the fault.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        let axum::extract::Query(q) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiFailure::bad_request(format!("bad query: {}", e.body_text())))?;
        Ok(QueryParams(q))
    }
}

/// Unknown routes.
pub async fn not_found(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}: the API is under /api/v1 (routes in /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// Known routes asked with a method they do not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {} (methods per route in /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_with_a_zero_fraction_are_integers_and_others_are_kept() {
        let mut v =
            serde_json::json!({"a": 2041.0, "b": [1.0, -3.0, 0.5], "c": {"d": 1e300}, "e": "7.0"});
        assert!(whole_floats_to_integers(&mut v));
        assert_eq!(
            v,
            serde_json::json!({"a": 2041, "b": [1, -3, 0.5], "c": {"d": 1e300}, "e": "7.0"})
        );
        assert_eq!(v["a"].as_u64(), Some(2041));
        let mut plain = serde_json::json!({"a": 1, "b": "x"});
        assert!(!whole_floats_to_integers(&mut plain));
    }

    #[test]
    fn service_errors_map_to_their_status() {
        for (e, status) in [
            (ServiceError::NotFound("x".into()), 404),
            (ServiceError::BadRequest("x".into()), 400),
            (ServiceError::Conflict("x".into()), 409),
            (ServiceError::Forbidden("x".into()), 403),
            (ServiceError::TooMany("x".into()), 429),
            (ServiceError::Unavailable("x".into()), 503),
            (ServiceError::Internal("x".into()), 500),
        ] {
            let f = ApiFailure::from(e);
            assert_eq!(f.status.as_u16(), status);
            assert_eq!(f.message, "x");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            n: u64,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            name: String,
            inner: Inner,
        }
        let err = decode::<Outer>(b"{\"name\": \"a\\\"b\",\n \"inner\": {\"n\": -1}}")
            .unwrap_err()
            .message;
        assert!(err.contains("field `n`"), "{err}");
        let err = decode::<Outer>(b"{\"name\": 5}").unwrap_err().message;
        assert!(err.contains("field `name`"), "{err}");
        assert_eq!(key_before(b"[1, 2]", 1, 3), None);
    }

    #[test]
    fn json_content_types_are_recognised() {
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("json", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&h), json, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
