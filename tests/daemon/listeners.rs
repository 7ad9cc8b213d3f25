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
