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

/// A connection from `source` (a loopback address of its own) to `to`.
async fn connect_from(source: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// One handshake on an open connection; the answer's first line.
async fn handshake_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /webhooks/graph?validationToken=open HTTP/1.1\r\nHost: tenantd\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// At the connection cap the new connection is admitted and the one that made no progress
/// for longest (opened, never finished a request) is closed: a client that finishes requests
/// keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_stalest_connection_makes_room() {
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.max_connections = 2;
    config.listener.header_read_timeout_ms = 30_000;
    let app = crate::helpers::spawn_app_with(config).await;
    let mut idle = tokio::net::TcpStream::connect(app.public).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut busy = tokio::net::TcpStream::connect(app.public).await.unwrap();
    assert!(handshake_on(&mut busy).await.starts_with("HTTP/1.1 200"));
    let mut third = tokio::net::TcpStream::connect(app.public).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection that never sent a request makes room"
    );
    assert!(
        handshake_on(&mut busy).await.starts_with("HTTP/1.1 200"),
        "the busy one is kept"
    );
    assert!(
        handshake_on(&mut third).await.starts_with("HTTP/1.1 200"),
        "the new one is served"
    );
    app.stop().await.unwrap();
}

/// A keep-alive connection that finished a request and then sits idle is closed after the
/// header read timeout: idle connections do not pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.header_read_timeout_ms = 300;
    let app = crate::helpers::spawn_app_with(config).await;
    let mut stream = tokio::net::TcpStream::connect(app.public).await.unwrap();
    assert!(handshake_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed");
    assert!(took < Duration::from_secs(5), "{took:?}");
    app.stop().await.unwrap();
}

/// One address cannot take the listener: past its own cap, its stalest connection goes,
/// while another address's connections are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_capped_without_touching_another() {
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.max_connections = 100;
    config.listener.max_connections_per_peer = 2;
    config.listener.header_read_timeout_ms = 30_000;
    let app = crate::helpers::spawn_app_with(config).await;
    let mut other = connect_from("127.0.0.2", app.public).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut first = connect_from("127.0.0.1", app.public).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _second = connect_from("127.0.0.1", app.public).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect_from("127.0.0.1", app.public).await;
    assert!(
        closed_within(&mut first, Duration::from_secs(5))
            .await
            .is_some(),
        "the address's stalest connection makes room"
    );
    assert!(handshake_on(&mut third).await.starts_with("HTTP/1.1 200"));
    assert!(
        handshake_on(&mut other).await.starts_with("HTTP/1.1 200"),
        "the other address's older, idle connection is untouched"
    );
    app.stop().await.unwrap();
}

/// Headers complete, then a body that never comes, or comes a byte at a time: 408 and the
/// connection closed, within the body deadline; others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_or_dribbles_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let mut config = crate::helpers::test_config(&db);
    config.listener.body_read_timeout_ms = 1_500;
    config.listener.body_min_bytes_per_second = 4_096;
    let app = crate::helpers::spawn_app_with(config).await;
    let head = b"POST /webhooks/graph HTTP/1.1\r\nHost: tenantd\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n";
    let mut silent = tokio::net::TcpStream::connect(app.public).await.unwrap();
    silent.write_all(head).await.unwrap();
    silent.write_all(b"{\"value\": [").await.unwrap();
    let mut dribbling = tokio::net::TcpStream::connect(app.public).await.unwrap();
    dribbling.write_all(head).await.unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..40 {
            if dribbling.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut answer = vec![0u8; 512];
        let read = dribbling.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..read]).to_string()
    });
    assert!(handshake_ok(&app).await, "others are served meanwhile");
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut answer))
        .await
        .expect("answered within the body deadline")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    assert!(closed_within(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    let dribbled = tokio::time::timeout(Duration::from_secs(5), dribble)
        .await
        .expect("the dribbling client is cut off")
        .unwrap();
    assert!(dribbled.starts_with("HTTP/1.1 408"), "{dribbled}");
    app.stop().await.unwrap();
}
