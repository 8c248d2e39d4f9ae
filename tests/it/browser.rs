//! The web page (SPEC §6) in a real browser: Debian's headless Chromium,
//! driven through chromedriver. Two instances share one Redis; page A is on
//! instance 1 and page B on instance 2. Proves: both connect and name their
//! server; the form on A creates an account whose (non-ASCII) name reaches B
//! within 3 s; an invalid balance shows the server's message beside the field
//! and creates nothing; after instance 2 restarts on the same port, B shows
//! "reconnecting", then resumes and shows the events posted meanwhile exactly
//! once (after its own reconnect was refused while the instance was down). Also:
//! labelled inputs, Enter submits, no sideways scrolling at phone width, no
//! script or CSP errors in the console. A second scenario watches one
//! account's topic with the topic field and sees only its events. Screenshots go to
//! `target/browser-artifacts/`, including the side-by-side view that
//! `docs/screenshot.png` was taken from.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    browser::{Browser, Chromedriver},
    eventually, post_account, TestApp, TestRedis,
};

/// Generous for a loaded 2-core machine; the SPEC's 3 s is asserted separately.
const WAIT: Duration = Duration::from_secs(15);

fn instance_args<'a>(server_id: &'a str, redis_url: &'a str) -> [&'a str; 4] {
    ["--server-id", server_id, "--redis-url", redis_url]
}

fn history_len(redis: &TestRedis) -> u64 {
    redis::cmd("XLEN")
        .arg("user-events:history")
        .query(&mut redis.conn())
        .unwrap()
}

/// Waits until `page` has a row with this event id and returns the rows.
async fn wait_for_row(page: &Browser, id: &str, timeout: Duration) -> Vec<(String, String)> {
    eventually(timeout, &format!("a row for event {id}"), || async {
        let rows = page.rows().await;
        rows.iter().any(|(row, _)| row == id).then_some(rows)
    })
    .await
}

/// Console entries at level SEVERE (script errors, CSP violations, failed
/// requests), as `level: message` lines.
async fn severe_console(page: &Browser) -> Vec<String> {
    page.console()
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| format!("{}: {}", e["level"], e["message"]))
        .collect()
}

/// Two pages on two instances: live fan-out, form validation, resume after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_two_instances_create_validate_and_resume_after_restart() {
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("browser scenario did not finish within 180 s");
}

async fn scenario() {
    let redis = TestRedis::start();
    let url = redis.url();
    let app1 = TestApp::spawn(&instance_args("backend-1", &url)).await;
    let app2 = TestApp::spawn(&instance_args("backend-2", &url)).await;
    let addr2 = app2.addr;
    let http = reqwest::Client::new();

    let driver = Chromedriver::start().await;
    let a = driver.browser(1000, 800).await;
    let b = driver.browser(1000, 800).await;
    a.client.goto(&format!("{}/", app1.base())).await.unwrap();
    b.client.goto(&format!("{}/", app2.base())).await.unwrap();

    // Both connect and show the instance they are connected to.
    a.wait_state("open", WAIT).await;
    b.wait_state("open", WAIT).await;
    eventually(WAIT, "A to show backend-1", || async {
        (a.text("server-id").await == "backend-1").then_some(())
    })
    .await;
    eventually(WAIT, "B to show backend-2", || async {
        (b.text("server-id").await == "backend-2").then_some(())
    })
    .await;
    assert_eq!(
        a.js("return window.sseFanout.serverId();").await,
        "backend-1"
    );
    assert_eq!(a.text("events-empty").await, "No events yet.");
    // Both inputs are labelled.
    assert_eq!(
        a.js("return ['name', 'balance'].map(function (id) {
                var l = document.getElementById(id).labels; return l.length ? l[0].textContent : ''; });")
            .await,
        json!(["Name", "Balance"])
    );
    a.screenshot("01-a-open").await;
    b.screenshot("01-b-open").await;

    // The form on A creates an account; its name reaches B within 3 s.
    let name = format!("브라우저-{}", uuid::Uuid::now_v7());
    a.fill("name", &name).await;
    a.fill("balance", "1234").await;
    let submitted = Instant::now();
    a.click("create").await;
    let id = eventually(WAIT, "the new account's row on B", || async {
        b.rows()
            .await
            .into_iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id)
    })
    .await;
    let latency = submitted.elapsed();
    assert!(
        latency < Duration::from_secs(3),
        "B showed the event {latency:?} after the click"
    );
    assert_eq!(b.rows().await, vec![(id.clone(), name.clone())]);
    assert_eq!(
        wait_for_row(&a, &id, WAIT).await,
        vec![(id.clone(), name.clone())]
    );
    let result = eventually(WAIT, "A's result line", || async {
        Some(a.text("result").await).filter(|r| !r.is_empty())
    })
    .await;
    assert!(
        result.contains(&name) && result.contains("backend-1"),
        "unexpected result line: {result}"
    );
    // The row shows type, name, balance, origin and time.
    let row = b
        .js("var li = document.querySelector('#events li.event');
             return ['.type', '.name', '.balance', '.origin', 'time.time'].map(function (s) {
               return li.querySelector(s).textContent; });")
        .await;
    assert_eq!(row[0], "account.created");
    assert_eq!(row[1], json!(name));
    assert_eq!(row[2], "1234");
    assert_eq!(row[3], "backend-1");
    assert!(!row[4].as_str().unwrap().is_empty(), "no time shown");
    // The form was reset for the next entry.
    assert_eq!(
        a.js("return [document.getElementById('name').value, document.getElementById('balance').value];")
            .await,
        json!(["", ""])
    );
    a.screenshot("02-a-created").await;
    b.screenshot("02-b-received").await;

    // An invalid balance: the server's message next to the field; nothing created.
    let xlen = history_len(&redis);
    let invalid_name = format!("invalid-{}", uuid::Uuid::now_v7());
    a.fill("name", &invalid_name).await;
    // Submitted from the keyboard this time: Enter in the balance field.
    a.fill("balance", "12.5\u{E007}").await;
    let message = eventually(WAIT, "the balance error on A", || async {
        Some(a.text("balance-error").await).filter(|m| !m.is_empty())
    })
    .await;
    let server_says: Value = http
        .post(format!("{}/accounts", app1.base()))
        .json(&json!({ "name": invalid_name, "balance": "12.5" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json!(message), server_says["error"]["message"]);
    assert!(message.starts_with("balance"), "{message}");
    assert_eq!(a.text("name-error").await, "");
    assert_eq!(
        a.js("return document.getElementById('balance').getAttribute('aria-invalid');")
            .await,
        "true"
    );
    assert_eq!(history_len(&redis), xlen, "the invalid POST added an event");
    a.screenshot("03-a-invalid-balance").await;
    // Nothing arrived on B either: the next event after it is the next row.
    let marker = format!("marker-{}", uuid::Uuid::now_v7());
    assert_eq!(post_account(&http, &app1.base(), &marker, 1).await.0, 201);
    wait_for_name(&b, &marker, WAIT).await;
    assert_eq!(names(&b).await, [marker.as_str(), name.as_str()]);

    // Restart instance 2 on the same port: B shows "reconnecting", then
    // resumes and shows the events posted meanwhile exactly once.
    app2.shutdown().await;
    b.wait_state("reconnecting", WAIT).await;
    b.screenshot("04-b-reconnecting").await;
    let run = uuid::Uuid::now_v7();
    let missed: Vec<String> = (1..=3).map(|i| format!("während-{i}-{run}")).collect();
    for n in &missed {
        assert_eq!(post_account(&http, &app1.base(), n, 7).await.0, 201);
    }
    wait_for_name(&a, &missed[2], WAIT).await;
    // Keep instance 2 down until B's own reconnect attempt has failed, so the
    // resume below follows a refused connection, not just a quick restart.
    let console_b = std::cell::RefCell::new(Vec::new());
    let refused = eventually(WAIT, "B's reconnect to be refused", || async {
        let entries = severe_console(&b).await;
        let found = entries
            .iter()
            .find(|l| l.contains("/events/sse") && l.contains("ERR_CONNECTION_REFUSED"))
            .cloned();
        console_b.borrow_mut().extend(entries);
        found
    })
    .await;
    eprintln!("B while instance 2 was down: {refused}");
    assert_eq!(
        b.js("return window.sseFanout.state();").await,
        "reconnecting"
    );
    let app2 = TestApp::spawn_on(addr2, &instance_args("backend-2", &url)).await;
    b.wait_state("open", WAIT).await;
    wait_for_name(&b, &missed[2], WAIT).await;
    // One more live event: any duplicate from the replay would arrive before it.
    let after = format!("after-{run}");
    assert_eq!(post_account(&http, &app1.base(), &after, 8).await.0, 201);
    wait_for_name(&b, &after, WAIT).await;
    wait_for_name(&a, &after, WAIT).await;
    let expected = [
        after.as_str(),
        &missed[2],
        &missed[1],
        &missed[0],
        &marker,
        &name,
    ];
    assert_eq!(names(&b).await, expected);
    assert_eq!(names(&a).await, expected);
    // Same event ids, in the same order, on both pages; each exactly once.
    let ids_b: Vec<String> = b.rows().await.into_iter().map(|(id, _)| id).collect();
    let ids_a: Vec<String> = a.rows().await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids_b, ids_a);
    for id in &ids_b {
        let count = b
            .client
            .execute(
                "return document.querySelectorAll('#events li.event[data-event-id=\"' + arguments[0] + '\"]').length;",
                vec![json!(id)],
            )
            .await
            .unwrap();
        assert_eq!(count, 1, "rows for event {id} on B");
    }
    let mut seen_b: Vec<String> =
        serde_json::from_value(b.js("return window.sseFanout.events();").await).unwrap();
    seen_b.reverse();
    assert_eq!(
        seen_b, ids_b,
        "B's de-duplication set differs from its rows"
    );
    assert_eq!(b.text("server-id").await, "backend-2");
    assert_eq!(
        b.js("return document.getElementById('notice').hidden;")
            .await,
        true,
        "B showed a reset notice: {}",
        b.text("notice-text").await
    );
    b.screenshot("05-b-resumed").await;

    // The console: only the expected failures (the refused reconnects while
    // instance 2 was down, the 422 of the invalid POST); no script or CSP errors.
    let mut console_b = console_b.into_inner();
    console_b.extend(severe_console(&b).await);
    let console_a = severe_console(&a).await;
    for (lines, expected_failures) in [
        (console_a, ["/accounts", "422"]),
        (console_b, ["/events/sse", "ERR_CONNECTION_REFUSED"]),
    ] {
        for line in lines {
            assert!(
                expected_failures.iter().all(|part| line.contains(part)),
                "unexpected console error: {line}"
            );
        }
    }

    // Phone-sized: one column, nothing wider than the screen.
    a.client.set_window_size(400, 860).await.unwrap();
    let (width, overflow) = {
        let v = a
            .js("return [window.innerWidth, document.documentElement.scrollWidth - document.documentElement.clientWidth];")
            .await;
        (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())
    };
    assert!(width <= 500, "window is {width} px wide");
    assert_eq!(overflow, 0, "the page scrolls sideways at {width} px");
    a.screenshot("06-a-phone").await;

    side_by_side(&driver, &app1, &app2, &http).await;

    a.close().await;
    b.close().await;
    app1.shutdown().await;
    app2.shutdown().await;
}

/// The event names on `page`, newest first.
async fn names(page: &Browser) -> Vec<String> {
    page.rows().await.into_iter().map(|(_, n)| n).collect()
}

/// Waits until `page` shows a row for the account `name`.
async fn wait_for_name(page: &Browser, name: &str, timeout: Duration) {
    eventually(timeout, &format!("a row for {name:?}"), || async {
        names(page).await.iter().any(|n| n == name).then_some(())
    })
    .await;
}

/// Both instances' pages side by side in one window (two iframes), after a
/// form submission on the left: `target/browser-artifacts/side-by-side.png`,
/// the source of `docs/screenshot.png`.
async fn side_by_side(
    driver: &Chromedriver,
    app1: &TestApp,
    app2: &TestApp,
    http: &reqwest::Client,
) {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("side-by-side.html");
    std::fs::write(
        &html,
        format!(
            "<!doctype html><meta charset=utf-8><title>sse-fanout: two instances</title>
             <style>body{{margin:0;display:flex;gap:4px;background:#9aa3b2}}
             iframe{{flex:1;height:100vh;border:0;background:#fff}}</style>
             <iframe src=\"{}/\"></iframe><iframe src=\"{}/\"></iframe>",
            app1.base(),
            app2.base()
        ),
    )
    .unwrap();
    let page = driver.browser(1200, 800).await;
    page.client
        .goto(&format!("file://{}", html.display()))
        .await
        .unwrap();
    for frame in [0, 1] {
        page.client.enter_frame(frame).await.unwrap();
        page.wait_state("open", WAIT).await;
        page.client.enter_parent_frame().await.unwrap();
    }
    assert_eq!(
        post_account(http, &app2.base(), "Zoë Müller", 250).await.0,
        201
    );
    page.client.enter_frame(0).await.unwrap();
    wait_for_name(&page, "Zoë Müller", WAIT).await;
    page.fill("name", "다중서버테스트").await;
    page.fill("balance", "999999").await;
    page.click("create").await;
    wait_for_name(&page, "다중서버테스트", WAIT).await;
    eventually(WAIT, "the result line", || async {
        (!page.text("result").await.is_empty()).then_some(())
    })
    .await;
    page.settle().await;
    page.client.enter_parent_frame().await.unwrap();
    page.client.enter_frame(1).await.unwrap();
    wait_for_name(&page, "다중서버테스트", WAIT).await;
    assert_eq!(names(&page).await, ["다중서버테스트", "Zoë Müller"]);
    page.settle().await;
    page.client.enter_parent_frame().await.unwrap();
    page.screenshot("side-by-side").await;
    page.close().await;
}

/// The topic field (SPEC §8.2, issue 10 "Page"): watching `accounts/<id>`
/// shows that account's retained and live events and no other; back to `*`
/// shows everything again, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_field_shows_only_that_topics_events() {
    tokio::time::timeout(Duration::from_secs(120), topic_scenario())
        .await
        .expect("topic scenario did not finish within 120 s");
}

async fn topic_scenario() {
    let redis = TestRedis::start();
    let url = redis.url();
    let app = TestApp::spawn(&instance_args("backend-1", &url)).await;
    let http = reqwest::Client::new();
    let (_, first) = post_account(&http, &app.base(), "watched account", 1).await;
    let (_, second) = post_account(&http, &app.base(), "another account", 2).await;
    let watched = format!("accounts/{}", first["id"].as_str().unwrap());

    let driver = Chromedriver::start().await;
    let page = driver.browser(1000, 800).await;
    page.client.goto(&format!("{}/", app.base())).await.unwrap();
    page.wait_state("open", WAIT).await;
    assert_eq!(
        page.js("var l = document.getElementById('topic').labels; return [l.length ? l[0].textContent : '', document.getElementById('topic').value];")
            .await,
        json!(["Topic", "*"])
    );

    page.fill("topic", &watched).await;
    page.click("watch").await;
    // The retained history of that topic only.
    eventually(WAIT, "the watched account's row", || async {
        (names(&page).await == ["watched account"]).then_some(())
    })
    .await;
    assert_eq!(
        page.js("return window.sseFanout.topic();").await,
        json!(watched)
    );
    page.wait_state("open", WAIT).await;

    // Live: another account (other topic), then an update on the watched
    // topic. History order is one order, so if the other account were shown
    // it would be before the update.
    post_account(&http, &app.base(), "not watched", 3).await;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", &watched)
        .append_pair("data", r#"{"name":"update for the watched account"}"#)
        .finish();
    let response = http
        .post(format!("{}/.well-known/mercure", app.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(WAIT, "the update's row", || async {
        names(&page)
            .await
            .contains(&"update for the watched account".to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(
        names(&page).await,
        ["update for the watched account", "watched account"]
    );
    page.screenshot("06-topic-filter").await;

    // Back to everything: all four, once each, newest first.
    page.fill("topic", "*").await;
    page.click("watch").await;
    eventually(WAIT, "every event again", || async {
        (names(&page).await.len() == 4).then_some(())
    })
    .await;
    assert_eq!(
        names(&page).await,
        [
            "update for the watched account",
            "not watched",
            second["name"].as_str().unwrap(),
            "watched account"
        ]
    );
    assert_eq!(severe_console(&page).await, Vec::<String>::new());
    page.close().await;
    app.shutdown().await;
}
