//! Smoke test of the bench tool against a real sse-fanout server started
//! in-process on the memory bus (no Redis): every published event reaches
//! every client exactly once. No timing assertions.

use std::time::Duration;

use clap::Parser as _;
use sse_fanout_bench::Args;
use tokio_util::sync::CancellationToken;

/// Topic fan-out through the Mercure endpoints: each client gets exactly the
/// events of its topic, the `*` clients get every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_clients_of_its_topic_once() {
    let config = sse_fanout::config::Config::parse_from([
        "sse-fanout",
        "--port",
        "0",
        "--mercure-publisher-jwt-key",
        "smoke-key",
    ])
    .expect("valid server config")
    .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sse_fanout::run(config, listener, shutdown.clone()));
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"mercure": {"publish": ["*"]}}),
        &jsonwebtoken::EncodingKey::from_secret(b"smoke-key").unwrap(),
    )
    .unwrap();

    let args = Args::parse_from([
        "sse-fanout-bench".to_owned(),
        format!("--sse=http://{addr}/.well-known/mercure?topic={{topic}}"),
        format!("--wildcard-sse=http://{addr}/.well-known/mercure?topic=*"),
        format!("--publish=http://{addr}/.well-known/mercure"),
        "--publish-mode=mercure".to_owned(),
        format!("--publish-token={jwt}"),
        "--clients=20".to_owned(),
        "--topics=5".to_owned(),
        "--wildcard-clients=3".to_owned(),
        "--rate=50".to_owned(),
        "--duration=2".to_owned(),
        "--warmup=0.5".to_owned(),
        "--drain=1".to_owned(),
        "--no-progress".to_owned(),
    ]);
    let report = sse_fanout_bench::run(args).await.expect("bench runs");
    eprintln!("{report}");

    assert_eq!(report.connections.ok, 23, "{:?}", report.errors);
    assert_eq!(report.events.ok, 100, "{:?}", report.errors);
    // 4 clients per topic see their topic's events, 3 see all of them.
    let expected = 4 * report.events.ok + 3 * report.events.ok;
    assert_eq!(report.deliveries.expected, expected);
    assert_eq!(report.deliveries.total, expected);
    assert_eq!(report.deliveries.missing, 0);
    assert_eq!(report.deliveries.misdelivered, 0);
    assert_eq!(report.deliveries.duplicates, 0);
    assert_eq!(report.deliveries.order_disagreements, 0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_every_client_once() {
    let config = sse_fanout::config::Config::parse_from([
        "sse-fanout",
        "--port",
        "0",
        "--server-id",
        "bench-smoke",
    ])
    .expect("valid server config")
    .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sse_fanout::run(config, listener, shutdown.clone()));

    let args = Args::parse_from([
        "sse-fanout-bench".to_owned(),
        format!("--sse=http://{addr}/events/sse"),
        format!("--publish=http://{addr}/accounts"),
        "--clients=20".to_owned(),
        "--rate=50".to_owned(),
        "--duration=2".to_owned(),
        "--warmup=0.5".to_owned(),
        "--drain=1".to_owned(),
        "--no-progress".to_owned(),
    ]);
    let report = sse_fanout_bench::run(args).await.expect("bench runs");
    eprintln!("{report}");

    assert_eq!(report.connections.ok, 20, "{:?}", report.errors);
    assert_eq!(report.connections.eligible, 20);
    assert_eq!(report.events.scheduled, 100);
    assert_eq!(report.events.ok, 100, "{:?}", report.errors);
    assert_eq!(report.deliveries.total, 20 * report.events.ok);
    assert_eq!(report.deliveries.expected, 20 * report.events.ok);
    assert_eq!(report.deliveries.missing, 0);
    assert_eq!(report.deliveries.duplicates, 0);
    assert_eq!(report.deliveries.order_disagreements, 0);
    assert_eq!(report.latency_ms.count, report.deliveries.total);
    // The report serializes as one JSON object.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["deliveries"]["missing"], 0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}
