//! The Mercure hub endpoint `/.well-known/mercure` (SPEC §8): `GET`
//! subscribes (see [`super::events`]), `POST` publishes an update.

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use crate::{error::ApiError, model::NewUpdate, state::AppState};

/// Most topics one update may carry (SPEC §8.3).
pub const MAX_TOPICS: usize = 1000;

/// The hub path (Mercure draft-07 "Discovery").
pub const HUB_PATH: &str = "/.well-known/mercure";

pub(super) fn router() -> Router<AppState> {
    Router::new().route(HUB_PATH, get(subscribe).post(publish))
}

/// Subscribes to topics in the Mercure format (SPEC §8.2, §8.5).
#[utoipa::path(get, path = "/.well-known/mercure", tag = "mercure",
    params(
        ("topic" = Vec<String>, Query, description = "Topic selectors (`*`, exact, RFC 6570 URI template); repeatable, 1 to 1,000"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id, or `earliest`"),
        ("lastEventID" = Option<String>, Query, description = "Resume after this event id (the header wins); `lastEventId` too"),
        ("authorization" = Option<String>, Query, description = "Subscriber JWT, when no Authorization header is sent"),
    ),
    responses(
        (status = 200, description = "An endless text/event-stream: per update `event:` (if typed), `retry:` (if set), `id:`, one `data:` line per line of data; `:` comments as keep-alive",
            body = String, content_type = "text/event-stream",
            headers(("Last-Event-ID" = String, description = "On resume: the id just before the first event sent, or `earliest`"))),
        (status = 400, description = "`bad_request`: no `topic`, or more than 1,000", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`: invalid or expired subscriber token, or none while anonymous subscribers are refused", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 503, description = "`too_many_clients`: MAX_SSE_CLIENTS reached", body = crate::error::ErrorBody,
            headers(("Retry-After" = String))),
    ))]
pub(super) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    super::events::subscribe_mercure(state, headers, uri).await
}

/// The fields of a publish request, as `application/x-www-form-urlencoded`.
/// Only the OpenAPI schema: the form is parsed strictly by `parse_form`.
#[allow(dead_code, reason = "read by utoipa only, never constructed")]
#[derive(Debug, utoipa::ToSchema)]
pub(super) struct PublishForm {
    /// Repeatable; the first is canonical, the others alternates.
    pub topic: Vec<String>,
    /// The update's data (any text, may hold newlines).
    pub data: Option<String>,
    /// Present (any value, e.g. `on`) = a private update.
    pub private: Option<String>,
    /// The update id; generated (the stream entry id) when absent.
    pub id: Option<String>,
    /// SSE event type.
    pub r#type: Option<String>,
    /// SSE `retry:` in ms (digits).
    #[schema(pattern = "^[0-9]+$")]
    pub retry: Option<String>,
}

/// Publishes an update (SPEC §8.3): `200 text/plain` with its id once it is
/// in history and on the channel; an error means neither happened.
#[utoipa::path(post, path = "/.well-known/mercure", tag = "mercure",
    request_body(content = PublishForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("publisherJwt" = [])),
    responses(
        (status = 200, description = "Stored and published (or, for an `id` still in history, already was); the body is the event id", body = String, content_type = "text/plain"),
        (status = 400, description = "`bad_request`: no topic, over 1,000 topics, unparsable form, bad `retry`, CR/LF/NUL in `id`/`type`, `id` starting with `#` or equal to `earliest`", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`: missing or invalid publisher credentials, or a topic not covered by `mercure.publish`", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "`forbidden`: a topic inside `/.well-known/mercure`", body = crate::error::ErrorBody),
        (status = 408, description = "`request_timeout`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES", body = crate::error::ErrorBody),
        (status = 503, description = "`bus_unavailable`: nothing was published", body = crate::error::ErrorBody,
            headers(("Retry-After" = String))),
    ))]
pub(super) async fn publish(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(state.config.max_body_bytes))?;
    let update = parse_form(&parts.headers, &body)?;
    let topics: Vec<&str> = update.topics.iter().map(String::as_str).collect();
    state
        .authorizer
        .authorize_publish(&parts.headers, parts.uri.query(), &topics)?;
    if let Some(topic) = topics.iter().find(|t| t.contains(HUB_PATH)) {
        return Err(ApiError::Forbidden(format!(
            "topic {topic} is inside the reserved {HUB_PATH} namespace"
        )));
    }
    let id = state.bus.publish(&update).await?;
    tracing::info!(event.id = %id, topics = topics.len(), "published an update");
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        id,
    )
        .into_response())
}

/// Parses and validates the form (SPEC §8.3's 400 rows; each error says why).
fn parse_form(headers: &HeaderMap, body: &Bytes) -> Result<NewUpdate, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return bad(format!(
            "expected Content-Type: application/x-www-form-urlencoded, got {content_type:?}"
        ));
    }
    let mut update = NewUpdate {
        topics: Vec::new(),
        r#type: None,
        data: String::new(),
        private: false,
        retry: None,
        id: None,
    };
    for (name, value) in form_fields(body)? {
        match name.as_str() {
            "topic" => update.topics.push(value),
            "data" => update.data = value,
            "private" => update.private = true,
            "id" => update.id = Some(value).filter(|v| !v.is_empty()),
            "type" => update.r#type = Some(value).filter(|v| !v.is_empty()),
            "retry" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return bad(format!(
                        "retry must be digits (milliseconds), got {value:?}"
                    ));
                }
                update.retry =
                    Some(value.parse().map_err(|_| {
                        ApiError::BadRequest(format!("retry {value} is too large"))
                    })?);
            }
            _ => {}
        }
    }
    if update.topics.is_empty() {
        return bad("missing \"topic\" field: an update needs at least one topic".to_owned());
    }
    if update.topics.len() > MAX_TOPICS {
        return bad(format!(
            "at most {MAX_TOPICS} topics per update, got {}",
            update.topics.len()
        ));
    }
    for (field, value) in [("id", &update.id), ("type", &update.r#type)] {
        if value
            .as_deref()
            .is_some_and(|v| v.contains(['\r', '\n', '\0']))
        {
            return bad(format!("{field} must not contain CR, LF or NUL"));
        }
    }
    if let Some(id) = &update.id {
        if id.starts_with('#') {
            return bad(format!("id {id:?} must not start with #"));
        }
        if id == "earliest" {
            return bad("id must not be \"earliest\": it is reserved for resume".to_owned());
        }
    }
    Ok(update)
}

/// Decodes `application/x-www-form-urlencoded` strictly (WHATWG URL
/// §5.1 with errors kept): `+` is a space, a `%` must start a two-digit hex
/// escape (`%zz` is an error, where lenient parsers pass it through), and
/// the decoded text must be UTF-8.
fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("form body is not UTF-8".to_owned()))?;
    let decode = |raw: &str| -> Result<String, ApiError> {
        let bytes = raw.as_bytes();
        for (at, _) in raw.match_indices('%') {
            let hex = bytes.get(at + 1..at + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(ApiError::BadRequest(format!(
                    "unparsable form: malformed percent-escape at byte {at} of {raw:?}"
                )));
            }
        }
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| {
                ApiError::BadRequest(format!("unparsable form: {raw:?} does not decode to UTF-8"))
            })
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<NewUpdate, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        parse_form(&headers, &Bytes::from(body.to_owned())).map_err(|e| e.to_string())
    }

    #[test]
    fn publish_form_fields_and_400_rows() {
        let u =
            form("topic=a%2F1&topic=b+c&data=x%0Ay&private=on&id=urn%3A1&type=t&retry=10").unwrap();
        assert_eq!(u.topics, ["a/1", "b c"]);
        assert_eq!((u.data.as_str(), u.private), ("x\ny", true));
        assert_eq!(
            (u.id.as_deref(), u.r#type.as_deref(), u.retry),
            (Some("urn:1"), Some("t"), Some(10))
        );
        assert!(form("data=x").unwrap_err().contains("topic"));
        assert!(form("topic=a&data=%zz").unwrap_err().contains("percent"));
        assert!(form("topic=a&data=%FF").unwrap_err().contains("UTF-8"));
        assert!(form("topic=a&retry=1s").unwrap_err().contains("retry"));
        assert!(form("topic=a&retry=").unwrap_err().contains("retry"));
        assert!(form("topic=a&id=%0D").unwrap_err().contains("CR"));
        assert!(form("topic=a&type=a%00").unwrap_err().contains("NUL"));
        assert!(form("topic=a&id=%23x").unwrap_err().contains('#'));
        assert!(form("topic=a&id=earliest")
            .unwrap_err()
            .contains("earliest"));
        let many = vec!["topic=t"; MAX_TOPICS + 1].join("&");
        assert!(form(&many).unwrap_err().contains("at most"));
        assert_eq!(
            form(&many[..many.len() - 8]).unwrap().topics.len(),
            MAX_TOPICS
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(parse_form(&headers, &Bytes::from_static(b"topic=a")).is_err());
    }
}
