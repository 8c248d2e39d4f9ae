//! The HTTP error contract (SPEC §3): one enum, one status mapping, one JSON
//! body shape `{"error":{"code","message"}}`.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};

use crate::{auth::AuthError, bus::BusError, model::ValidationError};

/// The body of every error response (SPEC §3); also its OpenAPI schema.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// `code` for programs, `message` for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// snake_case, e.g. `validation_failed`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// Human text; names the field for `validation_failed`.
    pub message: String,
}

/// Every error a route can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_json`: the body is not syntactically valid JSON.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// 415 `unsupported_media_type`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422 `validation_failed`; the message names the field.
    #[error("{0}")]
    ValidationFailed(#[from] ValidationError),
    /// 413 `payload_too_large`.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 404 `not_found`.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 401 `unauthorized` with `WWW-Authenticate: Bearer` (plus
    /// `error="invalid_token"` when the token itself was bad); the message
    /// says why (SPEC §8.3, §8.4).
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// 503 `bus_unavailable`; the source is logged, not sent.
    #[error("the event bus is unavailable, try again")]
    BusUnavailable(#[source] BusError),
    /// 503 `too_many_clients` with `Retry-After` (seconds).
    #[error("too many SSE clients on this instance, retry later")]
    TooManyClients {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// 405 `method_not_allowed`: the path exists, the method does not.
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    /// 408 `request_timeout`: the request took longer than `REQUEST_TIMEOUT_SECS`.
    #[error("the request took too long")]
    RequestTimeout,
    /// 403 `forbidden`: the request is understood and refused (a topic in
    /// the reserved `/.well-known/mercure` namespace, SPEC §8.3).
    #[error("{0}")]
    Forbidden(String),
    /// 400 `bad_request`: any other malformed request.
    #[error("{0}")]
    BadRequest(String),
}

impl ApiError {
    /// The only place a status code is chosen for an error.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::ValidationFailed(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BusUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable"),
            ApiError::TooManyClients { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_clients")
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        }
    }

    /// The error behind a bodiless status that a layer (not a handler) chose:
    /// axum's 405, the static files' 404, the timeout layer's 408.
    fn from_layer_status(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::NOT_FOUND => Some(ApiError::NotFound("resource")),
            StatusCode::METHOD_NOT_ALLOWED => Some(ApiError::MethodNotAllowed),
            StatusCode::REQUEST_TIMEOUT => Some(ApiError::RequestTimeout),
            _ => None,
        }
    }
}

/// Middleware: gives error responses made by layers (which have no
/// `Content-Type`) the SPEC §3 JSON body, keeping their `Allow` header.
/// Handler errors already are [`ApiError`]s and pass through untouched.
pub async fn json_layer_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.headers().contains_key(header::CONTENT_TYPE) {
        return response;
    }
    let Some(error) = ApiError::from_layer_status(response.status()) else {
        return response;
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut json = error.into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    json
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        ApiError::BusUnavailable(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            let source = std::error::Error::source(&self).map(ToString::to_string);
            tracing::warn!(
                error.code = code,
                error.source = source.as_deref(),
                "{code}: {self}"
            );
        } else {
            tracing::debug!(error.code = code, "{code}: {self}");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::TooManyClients { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::BusUnavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(reason) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, reason.www_authenticate());
            }
            _ => {}
        }
        response
    }
}

/// `axum::Json` whose rejections become [`ApiError`]s (axum `error-handling` example).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(err) => {
                ApiError::InvalidJson(inner_message(&err.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonDataError(err) => {
                ApiError::InvalidJson(inner_message(&err.body_text()))
            }
            JsonRejection::BytesRejection(err) => {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(0)
                } else {
                    ApiError::BadRequest(err.body_text())
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// axum prefixes serde's message with its own sentence; keep serde's part.
fn inner_message(text: &str) -> String {
    text.rsplit_once(": ").map_or(text, |(_, m)| m).to_owned()
}

/// Extracts a body as [`serde_json::Value`], mapping every failure to the
/// SPEC §3.1 table. Validation of the shape happens after, with field names.
pub async fn json_body(
    request: Request,
    max_body_bytes: usize,
) -> Result<serde_json::Value, ApiError> {
    match AppJson::<serde_json::Value>::from_request(request, &()).await {
        Ok(AppJson(value)) => Ok(value),
        Err(ApiError::PayloadTooLarge(_)) => Err(ApiError::PayloadTooLarge(max_body_bytes)),
        // `"\ud800"` is valid JSON text (RFC 8259 §8.2) but no Unicode
        // string: a value problem (422), not a syntax one (400).
        Err(ApiError::InvalidJson(message)) if is_lone_surrogate(&message) => {
            Err(ApiError::ValidationFailed(ValidationError {
                field: "body".to_owned(),
                message:
                    "strings must be Unicode text: a \\u escape is an unpaired UTF-16 surrogate"
                        .to_owned(),
            }))
        }
        Err(err) => Err(err),
    }
}

/// serde_json's messages for a `\u` escape that is an unpaired surrogate.
fn is_lone_surrogate(message: &str) -> bool {
    message.contains("lone leading surrogate in hex escape")
        || message.contains("unexpected end of hex escape")
}
