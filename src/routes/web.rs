//! The page of SPEC §6 at `/` (SPEC §3.6): the files of `web/` built into the
//! binary, so `/` works whatever the working directory; `WEB_DIR` serves that
//! directory from disk instead, for working on the page without rebuilding.

use std::path::Path;

use axum::{
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use tower_http::services::ServeDir;

use crate::state::AppState;

/// `web/` at compile time. `debug-embed` makes debug builds embed too, so the
/// tests run the same code path as a release binary.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Page;

/// Adds the page as the router's fallback: files from `web_dir` when given,
/// else the embedded copy of `web/`.
pub(super) fn fallback(router: Router<AppState>, web_dir: Option<&Path>) -> Router<AppState> {
    match web_dir {
        Some(dir) => {
            router.fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        }
        None => router.fallback(embedded),
    }
}

/// One embedded file: `Content-Type` from its extension, a strong `ETag`
/// (its SHA-256, computed at build time) with `Cache-Control: no-cache`, so
/// browsers revalidate and get `304 Not Modified` until the binary changes
/// (RFC 9110 §13.1.2, RFC 9111 §5.2.2.4). `/` and `…/` mean `index.html`.
/// Unknown paths get `404` and other methods `405`, both without a body here:
/// `error::json_layer_errors` gives them the SPEC §3 JSON body.
async fn embedded(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
        )
            .into_response();
    }
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let Some(file) = Page::get(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = etag(&file.metadata.sha256_hash());
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
    let cache = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if not_modified {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(header::CONTENT_TYPE, file.metadata.mimetype().to_owned())],
        cache,
        file.data,
    )
        .into_response()
}

/// `"<hex of the hash>"`: an entity tag in its quoted form (RFC 9110 §8.8.3).
fn etag(hash: &[u8]) -> String {
    let mut tag = String::with_capacity(hash.len() * 2 + 2);
    tag.push('"');
    for byte in hash {
        tag.push_str(&format!("{byte:02x}"));
    }
    tag.push('"');
    tag
}
