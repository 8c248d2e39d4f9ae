//! Real-browser fixtures: [`Chromedriver`] runs Debian's `chromedriver` on a
//! free port (killed on drop, with every Chromium it started); [`Browser`] is
//! one headless Chromium session driven over WebDriver with `fantoccini`.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::http::Method;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Where browser tests save screenshots: `<target dir>/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `chromedriver` child process in its own process group, so that dropping
/// it also ends the Chromium processes it launched (even when a test panics
/// before closing its sessions).
#[derive(Debug)]
pub struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    /// Starts `chromedriver` (from `SSE_FANOUT_CHROMEDRIVER` or `PATH`) on a
    /// free port and waits up to 20 s until `/status` reports ready. A missing
    /// chromedriver is a setup error (scripts/test installs it), never a skip.
    pub async fn start() -> Self {
        let bin =
            std::env::var("SSE_FANOUT_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("failed to run {bin:?} (install chromium-driver; scripts/test does): {err}")
            });
        let driver = Self { child, port };
        let http = reqwest::Client::new();
        let status = format!("{}/status", driver.url());
        super::eventually(Duration::from_secs(20), "chromedriver /status", || {
            let request = http.get(&status).send();
            async move {
                let body: Value = request.await.ok()?.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        driver
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Opens a new headless Chromium session with a fresh profile and a
    /// `width`×`height` window.
    pub async fn browser(&self, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let chromium =
            std::env::var("SSE_FANOUT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url())
            .await
            .unwrap_or_else(|err| panic!("could not start a Chromium session: {err}"));
        Browser {
            client,
            _profile: profile,
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Chromium session.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Text content of the element with this id ("" if it has none).
    pub async fn text(&self, id: &str) -> String {
        let value = self
            .client
            .execute(
                "var el = document.getElementById(arguments[0]); return el ? el.textContent : null;",
                vec![json!(id)],
            )
            .await
            .unwrap();
        value
            .as_str()
            .unwrap_or_else(|| panic!("no element #{id}"))
            .to_owned()
    }

    /// Runs `script` (a function body) and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits up to `timeout` until `#state` reads `state` (text and
    /// `data-state` agree).
    pub async fn wait_state(&self, state: &str, timeout: Duration) {
        super::eventually(timeout, &format!("connection state {state:?}"), || async {
            let shown = self
                .js("var el = document.getElementById('state'); return [el.textContent, el.getAttribute('data-state')];")
                .await;
            (shown == json!([state, state])).then_some(())
        })
        .await;
    }

    /// The event rows, newest first: `(data-event-id, .name text)`.
    pub async fn rows(&self) -> Vec<(String, String)> {
        let value = self
            .js(
                "return Array.from(document.querySelectorAll('#events li.event')).map(function (li) {
                   var name = li.querySelector('.name');
                   return [li.getAttribute('data-event-id'), name ? name.textContent : ''];
                 });",
            )
            .await;
        serde_json::from_value(value).unwrap()
    }

    /// Replaces the value of the input `#id` by typing `text` into it.
    pub async fn fill(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Clicks the element `#id`.
    pub async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Waits (≤ 10 s) until the current document has no running CSS
    /// animation (the new-row flash), then for two animation frames, so that
    /// what a screenshot shows is the settled DOM.
    pub async fn settle(&self) {
        super::eventually(Duration::from_secs(10), "animations to finish", || async {
            let running = self
                .js("return document.getAnimations().filter(function (a) { return a.playState === 'running'; }).length;")
                .await;
            (running == 0).then_some(())
        })
        .await;
        self.client
            .execute_async(
                "var done = arguments[arguments.length - 1];
                 requestAnimationFrame(function () { requestAnimationFrame(function () { done(); }); });",
                vec![],
            )
            .await
            .unwrap();
    }

    /// Saves a PNG screenshot of the viewport as `<artifacts>/<name>.png`,
    /// after [`settle`](Self::settle).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        self.settle().await;
        let png = self.client.screenshot().await.unwrap();
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser console log since the last call (chromedriver's legacy log
    /// endpoint): CSP violations, script errors, failed requests.
    pub async fn console(&self) -> Vec<Value> {
        let value = self.client.issue_cmd(GetBrowserLog).await.unwrap();
        match value {
            Value::Array(entries) => entries,
            other => panic!("unexpected log answer: {other}"),
        }
    }

    /// Ends the session (and its Chromium).
    pub async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// `POST /session/{id}/se/log {"type":"browser"}` (chromedriver extension).
#[derive(Debug)]
struct GetBrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for GetBrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
