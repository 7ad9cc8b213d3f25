//! What the bench programs share: a fresh database per measurement and settling PostgreSQL.
#![allow(dead_code)]

use sqlx::Connection;
use tenantd::config::{DatabaseConfig, DatabaseUrl};
use tenantd::store::Store;

/// A whitespace-separated list from the environment, or `default`.
pub(crate) fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The URL of a fresh database for `backend` (`sqlite`: a new file in `dir`; `postgres`:
/// `tenantd_bench` dropped and created again on `BENCH_POSTGRES_URL`).
pub(crate) async fn fresh_url(backend: &str, dir: &std::path::Path) -> String {
    if backend == "postgres" {
        let server = postgres_server();
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .expect("postgres");
        sqlx::query("DROP DATABASE IF EXISTS tenantd_bench WITH (FORCE)")
            .execute(&mut conn)
            .await
            .expect("drop");
        sqlx::query("CREATE DATABASE tenantd_bench")
            .execute(&mut conn)
            .await
            .expect("create");
        bench_database_url()
    } else {
        let file = dir.join(format!("bench-{}.db", uuid::Uuid::new_v4().simple()));
        format!("sqlite://{}", file.display())
    }
}

fn postgres_server() -> String {
    std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn bench_database_url() -> String {
    let mut url = url::Url::parse(&postgres_server()).unwrap();
    url.set_path("/tenantd_bench");
    url.to_string()
}

/// A migrated store on a fresh database.
pub(crate) async fn fresh(backend: &str, dir: &std::path::Path) -> Store {
    let config = DatabaseConfig {
        url: DatabaseUrl::new(fresh_url(backend, dir).await),
        max_connections: 16,
        ..Default::default()
    };
    let store = Store::connect(&config).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// `CHECKPOINT; ANALYZE` between enqueue and drain, as the peer script does.
pub(crate) async fn settle(backend: &str) {
    if backend == "postgres" {
        let mut conn = sqlx::PgConnection::connect(&bench_database_url())
            .await
            .expect("connect");
        sqlx::query("CHECKPOINT")
            .execute(&mut conn)
            .await
            .expect("checkpoint");
        sqlx::query("ANALYZE jobs")
            .execute(&mut conn)
            .await
            .expect("analyze");
    }
}
