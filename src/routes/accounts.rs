//! `POST /accounts` and `GET /accounts/{id}` (SPEC §3.1, §3.2).

use axum::{
    extract::{Path, Request, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use crate::{
    error::{ApiError, ErrorBody},
    model::{Account, NewAccount},
    state::AppState,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/accounts", post(create_account))
        .route("/accounts/{id}", get(get_account))
}

/// Validates, stores and publishes; `201` with `Location` and the account.
#[utoipa::path(post, path = "/accounts", tag = "accounts",
    request_body(content = NewAccount, content_type = "application/json"),
    security((), ("publishToken" = [])),
    responses(
        (status = 201, description = "Stored and published", body = Account,
            headers(("Location" = String, description = "/accounts/{id}"))),
        (status = 400, description = "`invalid_json`: not syntactically valid JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: PUBLISH_TOKEN or MERCURE_PUBLISHER_JWT_KEY is set and the bearer token is missing or wrong, or the publisher JWT does not cover the topic `accounts`", body = ErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 408, description = "`request_timeout`: the body did not arrive within REQUEST_TIMEOUT_SECS", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "`validation_failed`: wrong shape, type, range or unknown field", body = ErrorBody),
        (status = 503, description = "`bus_unavailable`: the event could not be published", body = ErrorBody,
            headers(("Retry-After" = String))),
    ))]
pub(super) async fn create_account(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    // SPEC §8.4: the same rule as a Mercure publish, for the topic `accounts`.
    state
        .authorizer
        .authorize_publish(request.headers(), request.uri().query(), &["accounts"])?;
    let value = crate::error::json_body(request, state.config.max_body_bytes).await?;
    let (name, balance) = NewAccount::from_json(value)?;
    let account = state
        .bus
        .create_account(name, balance, state.config.account_events_private)
        .await?;
    tracing::info!(account.id = %account.id, "created account {}", account.id);
    let location = format!("/accounts/{}", account.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(account),
    )
        .into_response())
}

/// `200` with the account, `404` for an unknown or malformed id.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id (UUID)")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 404, description = "`not_found`: unknown or malformed id", body = ErrorBody),
        (status = 408, description = "`request_timeout`", body = ErrorBody),
        (status = 503, description = "`bus_unavailable`", body = ErrorBody, headers(("Retry-After" = String))),
    ))]
pub(super) async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("account"))?;
    match state.bus.get_account(id).await? {
        Some(account) => Ok(Json(account).into_response()),
        None => Err(ApiError::NotFound("account")),
    }
}
