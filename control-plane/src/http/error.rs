//! The one API error type and the extractors whose rejections use it: every non-2xx answer
//! is `{"error": {"code", "message"}}`. 4xx messages tell the client what to fix; 5xx are
//! opaque to the client and logged with their cause chain. Errors produced outside the
//! handlers (the router's 404 and 405, layers) get the same shape from [`json_errors`]; those
//! hyper answers itself, before any router, get it from [`super::listener`].

use axum::body::{Body, HttpBody};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dataminer_wire::ErrorBody;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unavailable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r = (self.status, axum::Json(ErrorBody::new(self.code, self.message))).into_response();
        if unavailable {
            // The database is down; clients (agents included) retry after this.
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let Some((status, code)) = e.client_status() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            return ApiError::new(status, code, e.to_string());
        }
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (code, status) = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", StatusCode::UNPROCESSABLE_ENTITY),
            s => ("malformed_json", if s.is_client_error() { s } else { StatusCode::BAD_REQUEST }),
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

/// A JSON body (and a JSON answer) whose rejections are [`ApiError`]s: 400 for malformed
/// JSON, 413 over the body limit, 415 without `application/json`, 422 when it does not fit
/// the type. Numbers with a zero fraction (`3.0`) count as integers, as JSON Schema (and so
/// the OpenAPI document) says they are.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = json_value(req, state).await?;
        decode(value, |_| {}).map(AppJson)
    }
}

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

/// `Path` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

pub type ApiResult<T> = Result<AppJson<T>, ApiError>;

/// A JSON body of the agent protocol. Like [`AppJson`] (same rejections), except that fields
/// this control plane does not know are ignored and logged instead of refused: during a
/// rolling upgrade a newer agent may send more than we understand, and refusing its result
/// would make the task dead. (The agent body types do not deny unknown fields; user body
/// types do, so [`AppJson`] refuses them there.)
#[derive(Debug)]
pub struct AgentJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AgentJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = json_value(req, state).await?;
        // A few names, each cut short, are enough to tell which agent version sends what.
        let mut ignored = Vec::new();
        let mut count = 0usize;
        let parsed = decode(value, |path| {
            count += 1;
            if ignored.len() < 10 {
                ignored.push(path.chars().take(100).collect::<String>());
            }
        })?;
        if count > 0 {
            tracing::warn!(fields = ?ignored, count, "ignored unknown fields in an agent request (a newer agent?)");
        }
        Ok(AgentJson(parsed))
    }
}

/// The body as JSON, with integral floats turned into integers.
async fn json_value<S: Send + Sync>(req: Request, state: &S) -> Result<serde_json::Value, ApiError> {
    let axum::Json(mut value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
    integral_floats_to_integers(&mut value);
    Ok(value)
}

/// JSON has one number type: JSON Schema counts `3.0` as the integer 3, serde does not.
fn integral_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Exactly representable integers only (|f| < 2^53), so nothing is rounded.
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    *n = serde_json::Number::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// Typed decoding with the path of the offending field in the message; `ignored` hears of
/// every field the type does not know (and does not deny).
fn decode<T: DeserializeOwned>(value: serde_json::Value, mut ignored: impl FnMut(String)) -> Result<T, ApiError> {
    let mut note = |path: serde_ignored::Path<'_>| ignored(path.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut note);
    serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::unprocessable(
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {}: {}", e.path(), e.inner()),
        )
    })
}

/// The stable code of an error status that arose outside the handlers.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        s if s.is_server_error() => "internal",
        _ => "refused",
    }
}

/// Paths echoed in messages are cut short: a client may send a very long one.
fn short(path: &str) -> String {
    const MAX: usize = 200;
    if path.len() <= MAX {
        return path.to_string();
    }
    let mut end = MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// The router's fallback: no route has this path.
pub async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {}", short(uri.path())))
}

/// Catch-all: an error response with an empty body (the router's 405, a layer's refusal) is
/// rewritten into the one error shape. Its headers (`Allow`, `WWW-Authenticate`) are kept.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = short(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || resp.body().size_hint().exact() != Some(0) {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no route for {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            format!("{method} is not allowed on {path}; allowed: {allowed}")
        }
        s if s.is_server_error() => "internal error; see the server log".to_string(),
        s => s.canonical_reason().unwrap_or("request refused").to_string(),
    };
    let body = match serde_json::to_vec(&ErrorBody::new(code_for(status), message)) {
        Ok(b) => b,
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
