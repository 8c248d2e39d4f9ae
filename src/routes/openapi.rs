//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the body types' `ToSchema` derives, so
//! it cannot drift from the code.

use axum::{response::IntoResponse, routing::get, Json, Router};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::state::AppState;

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "sse-fanout",
        description = "Server-Sent Events fan-out over Redis pub/sub. Every error body is `{\"error\":{\"code\",\"message\"}}`."
    ),
    paths(
        super::accounts::create_account,
        super::accounts::get_account,
        super::events::stream_events,
        super::mercure::subscribe,
        super::mercure::publish,
        super::health::health,
        super::health::live,
        super::metrics::metrics,
        openapi_json,
    ),
    components(schemas(
        crate::model::Account,
        crate::model::NewAccount,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        super::mercure::PublishForm,
        super::health::HealthBody,
        super::health::LiveBody,
    )),
    modifiers(&PublishToken)
)]
pub struct ApiDoc;

/// Declares the optional `PUBLISH_TOKEN` bearer scheme.
#[derive(Debug)]
struct PublishToken;

impl Modify for PublishToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "publishToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required by POST /accounts only when PUBLISH_TOKEN is set",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "publisherJwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Publisher JWT whose mercure.publish covers every topic (SPEC §8.4), or PUBLISH_TOKEN; \
                         not needed when no publisher credential is configured",
                    ))
                    .build(),
            ),
        );
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
