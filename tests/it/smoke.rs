//! The classic demo, end to end: two instances on one Redis.

use std::time::Duration;

use crate::support::{post_account, SseClient, TestApp, TestRedis};

#[tokio::test]
async fn event_posted_on_one_instance_reaches_a_client_of_the_other() {
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestApp::spawn(&["--server-id", "backend-1", "--redis-url", &url]).await;
    let b = TestApp::spawn(&["--server-id", "backend-2", "--redis-url", &url]).await;
    let (mut client, server) = SseClient::open(&format!("{}/events/sse", a.base()), None).await;
    assert_eq!(server, "backend-1");
    let http = reqwest::Client::new();
    let (status, account) = post_account(&http, &b.base(), "다중서버테스트", 999_999).await;
    assert_eq!(status, 201);
    let frames = client.messages(1, Duration::from_secs(2)).await;
    let event = frames.last().unwrap().json();
    assert_eq!(event["type"], "account.created");
    assert_eq!(event["serverId"], "backend-2");
    assert_eq!(event["data"], account);
    assert_eq!(frames.last().unwrap().id.as_deref(), event["id"].as_str());
    a.shutdown().await;
    b.shutdown().await;
}
