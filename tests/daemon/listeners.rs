//! The admin and public listeners of an in-process daemon, on both backends.

use std::time::Duration;

use crate::helpers::{parse_prometheus, spawn_app, TestDb};
use tenantd::instance::Instance;

crate::on_both_backends!(
    healthz_answers_200_while_running,
    readyz_is_200_then_503_naming_the_database_once_it_is_gone,
    metrics_parse_as_prometheus_text_with_build_process_and_http_metrics,
    unknown_paths_are_404_on_both_listeners,
    a_graceful_stop_records_the_instance_as_stopped,
);

async fn healthz_answers_200_while_running(db: TestDb) {
    let app = spawn_app(&db).await;
    let response = app.get_admin("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "alive");
    app.stop().await.unwrap();
}

async fn readyz_is_200_then_503_naming_the_database_once_it_is_gone(db: TestDb) {
    let app = spawn_app(&db).await;
    let response = app.get_admin("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");

    db.make_unavailable().await;

    let started = std::time::Instant::now();
    let response = app.get_admin("/readyz").await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "readyz must not hang on a dead database"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    let problems = body["problems"].as_array().expect("problems listed");
    let database = problems
        .iter()
        .find(|p| p["component"] == "database")
        .unwrap_or_else(|| panic!("database not named in {body}"));
    let reason = database["reason"].as_str().unwrap();
    assert!(
        [
            "database_unreachable",
            "database_file_missing",
            "database_query_failed",
            "database_not_migrated"
        ]
        .contains(&reason),
        "unexpected reason {reason}"
    );
    app.shutdown.stop();
    let _ = app.handle.await;
}

async fn metrics_parse_as_prometheus_text_with_build_process_and_http_metrics(db: TestDb) {
    let app = spawn_app(&db).await;
    // Traffic on both listeners, so request metrics exist with their labels.
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
    assert_eq!(app.get_public("/nowhere/123").await.status(), 404);
    let response = app.get_admin("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let samples = parse_prometheus(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));

    let build = samples
        .iter()
        .find(|s| s.name == "tenantd_build_info")
        .expect("build info");
    assert_eq!(build.value, 1.0);
    assert!(build
        .labels
        .iter()
        .any(|(k, v)| k == "version" && v == env!("CARGO_PKG_VERSION")));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(samples.iter().any(|s| s.name == name), "{name} missing");
    }
    let label = |s: &crate::helpers::Sample, key: &str| {
        s.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(samples
        .iter()
        .any(|s| s.name == "tenantd_http_requests_total"
            && label(s, "listener") == "admin"
            && label(s, "route") == "/healthz"
            && label(s, "status") == "200"));
    // A raw path never becomes a label: unknown paths are counted as `unmatched`.
    assert!(samples
        .iter()
        .any(|s| s.name == "tenantd_http_requests_total"
            && label(s, "listener") == "public"
            && label(s, "route") == "unmatched"
            && label(s, "status") == "404"));
    assert!(!text.contains("/nowhere/123"));
    assert!(samples
        .iter()
        .any(|s| s.name == "tenantd_http_request_duration_seconds_bucket"));
    app.stop().await.unwrap();
}

async fn unknown_paths_are_404_on_both_listeners(db: TestDb) {
    let app = spawn_app(&db).await;
    for response in [
        app.get_public("/").await,
        app.get_public("/webhooks/nope").await,
        app.get_admin("/admin").await,
    ] {
        assert_eq!(response.status(), 404);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    app.stop().await.unwrap();
}

async fn a_graceful_stop_records_the_instance_as_stopped(db: TestDb) {
    let app = spawn_app(&db).await;
    let store = db.store().await;
    let id = app.instance_id.clone();
    assert!(Instance::running(&store).await.unwrap().contains(&id));
    app.stop().await.expect("clean stop");
    assert!(!Instance::running(&store).await.unwrap().contains(&id));
    store.close().await;
}

/// Reads until the server closes the connection (or answers); how long that took.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A handshake on a new connection (a pooled one may have been closed as idle).
async fn handshake_ok(app: &crate::helpers::TestApp) -> bool {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(format!(
            "http://{}/webhooks/graph?validationToken=still%20served",
            app.public
        ))
        .send()
        .await
        .unwrap()
        .status()
        == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_without_stalling_others() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.header_read_timeout_ms = 300;
    let app = crate::helpers::spawn_app_with(config).await;
    let mut slow = tokio::net::TcpStream::connect(app.public).await.unwrap();
    slow.write_all(b"POST /webhooks/graph HTTP/1.1\r\nHost: tenantd\r\nContent-Type: appl")
        .await
        .unwrap();
    // Meanwhile others are answered.
    assert!(handshake_ok(&app).await);
    let took = closed_within(&mut slow, Duration::from_secs(10))
        .await
        .expect("the slow client is cut off");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(handshake_ok(&app).await);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_are_closed_and_open_ones_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.max_connections = 2;
    config.listener.header_read_timeout_ms = 30_000;
    let app = crate::helpers::spawn_app_with(config).await;
    let mut first = tokio::net::TcpStream::connect(app.public).await.unwrap();
    let second = tokio::net::TcpStream::connect(app.public).await.unwrap();
    // Give the listener a moment to accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(app.public).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5))
            .await
            .is_some(),
        "the third connection is closed at once"
    );
    // An open connection is still served.
    first
        .write_all(b"GET /webhooks/graph?validationToken=open HTTP/1.1\r\nHost: tenantd\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let read = first.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("open"), "{answer}");
    // Once one closes, new connections are accepted again.
    drop(second);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handshake_ok(&app).await);
    app.stop().await.unwrap();
}
