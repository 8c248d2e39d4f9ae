//! The page at `/` (SPEC §3.6) from the real binary:
//!
//! - started in an empty temp directory (no `web/` next to it), it serves `/`,
//!   `/app.js` and `/style.css` with the right `Content-Type` and exactly the bytes
//!   of the repository's `web/`: the page is built into the binary;
//! - each file has an `ETag` and `Cache-Control: no-cache`; `If-None-Match` with
//!   it gives `304`; unknown paths and other methods get the JSON errors;
//! - `WEB_DIR` serves that directory instead.

use crate::support::ServerProcess;

/// `(path, file in web/, Content-Type prefix)`.
const PAGE: [(&str, &str, &str); 3] = [
    ("/", "index.html", "text/html"),
    ("/app.js", "app.js", "text/javascript"),
    ("/style.css", "style.css", "text/css"),
];

fn repo_web_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/web/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn the_binary_serves_its_embedded_page_from_an_empty_directory() {
    let empty = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn_in(empty.path(), &[]).await;
    let http = reqwest::Client::new();
    for (path, file, content_type) in PAGE {
        let url = format!("{}{path}", server.base());
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let headers = response.headers().clone();
        let got_type = headers["content-type"].to_str().unwrap();
        assert!(
            got_type.starts_with(content_type),
            "{path}: Content-Type {got_type}, expected {content_type}"
        );
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{path}: ETag {etag}"
        );
        let body = response.bytes().await.unwrap();
        assert!(
            body.as_ref() == repo_web_file(file).as_slice(),
            "{path}: body differs from web/{file}"
        );

        let revalidated = http
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304, "{path} with If-None-Match");
        assert_eq!(revalidated.headers()["etag"], etag.as_str());
        let stale = http
            .get(&url)
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path} with another ETag");
    }

    let missing = http
        .get(format!("{}/no-such-file.js", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let post = http
        .delete(format!("{}/app.js", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let body: serde_json::Value = post.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
}

#[tokio::test]
async fn web_dir_serves_that_directory_instead() {
    let empty = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("index.html"), "<p>work in progress</p>").unwrap();
    std::fs::write(other.path().join("extra.css"), "p { color: red }").unwrap();
    let web_dir = other.path().to_str().unwrap();
    let server = ServerProcess::spawn_in(empty.path(), &[("WEB_DIR", web_dir)]).await;
    let http = reqwest::Client::new();

    let index = http.get(server.base()).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(index.text().await.unwrap(), "<p>work in progress</p>");
    let css = http
        .get(format!("{}/extra.css", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    // The embedded page is not mixed in: only WEB_DIR's files exist.
    let app_js = http
        .get(format!("{}/app.js", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(app_js.status(), 404);
}
