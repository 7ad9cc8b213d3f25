//! The database: one connection pool, SQLite or PostgreSQL picked at run time from the URL
//! scheme, the embedded migrations of both dialects, and the readiness probe.
//!
//! Owns `_sqlx_migrations` (the migration ledger). Invariants: code above the store never sees
//! a database type, only [`Store`] and the owning modules' queries; both dialects carry the same
//! migrations (checked at build time); SQLite runs in WAL mode with `synchronous=FULL`, a busy
//! timeout and foreign keys on; PostgreSQL sessions carry a statement timeout.

use std::borrow::Cow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::SqlSafeStr;

use crate::config::{DatabaseConfig, DatabaseUrl};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// Longest a readiness probe waits on the database before calling it unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, single host.
    Sqlite,
    /// Shared by several instances.
    Postgres,
}

impl Backend {
    /// Picks the backend from a URL scheme.
    pub fn from_url(url: &DatabaseUrl) -> Option<Self> {
        match url.scheme()?.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// `sqlite` or `postgres`, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store has. Queries written once with
/// `$1`, `$2`, ... placeholders (each used once, in order) run on both SQLite and PostgreSQL.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        if let Some($pool) = $store.sqlite() {
            $body
        } else if let Some($pool) = $store.postgres() {
            $body
        } else {
            unreachable!("a store has one of the two pools")
        }
    };
}
pub(crate) use with_pool;

/// Runs a writing statement: on SQLite inside `BEGIN IMMEDIATE` after this process's write
/// turn, so a statement that reads before it writes takes the lock up front instead of failing
/// with `SQLITE_BUSY_SNAPSHOT`, and so this process's writers queue fairly instead of spinning
/// in SQLite's busy handler (where a steady stream of queue writes could starve an occasional
/// writer past the busy timeout); on PostgreSQL on the pool. The second form takes the
/// statement text per dialect. The function's error type converts from [`StoreError`].
macro_rules! write_tx {
    ($store:expr, |$conn:ident| $body:expr) => {
        $crate::store::write_tx!($store, (), (), |$conn, _unused| $body)
    };
    ($store:expr, $sqlite_sql:expr, $postgres_sql:expr, |$conn:ident, $sql:ident| $body:expr) => {
        if let Some(pool) = $store.sqlite() {
            let _turn = $store.sqlite_write_turn().await;
            let mut tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err($crate::store::StoreError::from)?;
            let $sql = $sqlite_sql;
            let out = {
                let $conn = &mut *tx;
                $body
            };
            tx.commit().await.map_err($crate::store::StoreError::from)?;
            out
        } else if let Some(pool) = $store.postgres() {
            let $sql = $postgres_sql;
            let $conn = pool;
            $body
        } else {
            unreachable!("a store has one of the two pools")
        }
    };
}
pub(crate) use write_tx;

/// Runs several statements in one transaction, `$conn` being the transaction's connection
/// (use it as `&mut *$conn`): on SQLite `BEGIN IMMEDIATE` after this process's write turn (as
/// [`write_tx`]), on PostgreSQL a plain `BEGIN`.
macro_rules! transaction {
    ($store:expr, |$conn:ident| $body:expr) => {
        if let Some(pool) = $store.sqlite() {
            let _turn = $store.sqlite_write_turn().await;
            let mut tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err($crate::store::StoreError::from)?;
            let out = {
                let $conn = &mut *tx;
                $body
            };
            tx.commit().await.map_err($crate::store::StoreError::from)?;
            out
        } else if let Some(pool) = $store.postgres() {
            let mut tx = pool
                .begin()
                .await
                .map_err($crate::store::StoreError::from)?;
            let out = {
                let $conn = &mut *tx;
                $body
            };
            tx.commit().await.map_err($crate::store::StoreError::from)?;
            out
        } else {
            unreachable!("a store has one of the two pools")
        }
    };
}
pub(crate) use transaction;

/// A connection outside the pool (see [`Store::open_dedicated`]).
#[derive(Debug)]
pub(crate) enum DedicatedConnection {
    /// On SQLite.
    Sqlite(sqlx::SqliteConnection),
    /// On PostgreSQL.
    Postgres(sqlx::PgConnection),
}

/// Why the database could not be used. Messages carry no password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names an engine tenantd does not speak.
    #[error("unsupported database URL {url}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// Opening the database failed.
    #[error("cannot open the database {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why, password redacted.
        reason: String,
    },
    /// A probe or query could not reach the database.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// Migrations known to this binary are not all applied.
    #[error("database schema is not migrated: {0}")]
    NotMigrated(String),
    /// The SQLite file this process opened is gone or was replaced: writes would be lost.
    #[error("database file {} was removed or replaced while tenantd was running", .0.display())]
    FileReplaced(PathBuf),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(String),
}

impl StoreError {
    /// Stable reason code for readiness bodies, metrics and logs.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::UnsupportedUrl { .. } => "database_unsupported",
            Self::Connect { .. } => "database_connect_failed",
            Self::Unreachable(_) => "database_unreachable",
            Self::NotMigrated(_) => "database_not_migrated",
            Self::FileReplaced(_) => "database_file_missing",
            Self::Migrate(_) => "database_migration_failed",
            Self::Query(_) => "database_query_failed",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unreachable(err.to_string())
            }
            other => Self::Query(other.to_string()),
        }
    }
}

/// The file a SQLite URL names; `None` for PostgreSQL, an in-memory database or a URL that
/// does not parse (connecting reports that).
pub fn sqlite_file(url: &DatabaseUrl) -> Option<PathBuf> {
    if Backend::from_url(url) != Some(Backend::Sqlite) {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url.expose()).ok()?;
    let filename = options.get_filename();
    let on_disk = !filename.as_os_str().is_empty() && filename.to_str() != Some(":memory:");
    on_disk.then(|| filename.to_path_buf())
}

/// The identity of the SQLite file as opened, to notice it being deleted or swapped.
#[derive(Debug)]
struct FileIdentity {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    fn still_in_place(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|meta| meta.dev() == self.device && meta.ino() == self.inode)
            .unwrap_or(false)
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite {
        pool: SqlitePool,
        file: Option<Arc<FileIdentity>>,
    },
    Postgres(PgPool),
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// SQLite has one writer at a time: this process's writers take turns here rather than
    /// contending for the file lock (other processes still wait on the busy timeout).
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Replaces the URL's password wherever a driver message might repeat it.
fn sanitize(message: &str, url: &DatabaseUrl) -> String {
    let mut message = message.replace(url.expose(), &url.redacted());
    if let Some(password) = url::Url::parse(url.expose())
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty())
    {
        message = message.replace(&password, crate::secret::REDACTED);
    }
    message
}

impl Store {
    /// Opens the pool. For SQLite the file and its folder are created when missing.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] or [`StoreError::Connect`].
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let url = &config.url;
        let connect_failed = |err: &dyn std::fmt::Display| StoreError::Connect {
            url: url.redacted(),
            reason: sanitize(&err.to_string(), url),
        };
        let acquire_timeout = Duration::from_secs(config.acquire_timeout_seconds);
        match Backend::from_url(url) {
            Some(Backend::Sqlite) => {
                let options = SqliteConnectOptions::from_str(url.expose())
                    .map_err(|e| connect_failed(&e))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(config.busy_timeout_seconds))
                    .foreign_keys(true);
                let filename = options.get_filename().to_path_buf();
                let on_disk =
                    !filename.as_os_str().is_empty() && filename.to_str() != Some(":memory:");
                if on_disk {
                    if let Some(parent) = filename.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent).map_err(|e| connect_failed(&e))?;
                    }
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    // A SQLite connection is a handle on a local file: nothing can hang up on
                    // it, so the ping sqlx sends before every acquire is only a thread hand-off.
                    .test_before_acquire(false)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| connect_failed(&e))?;
                let file = on_disk
                    .then(|| FileIdentity::of(&filename))
                    .flatten()
                    .map(Arc::new);
                Ok(Self {
                    pool: Pool::Sqlite { pool, file },
                    writer: Arc::default(),
                })
            }
            Some(Backend::Postgres) => {
                let timeout_ms = (config.statement_timeout_seconds * 1000).to_string();
                let options = PgConnectOptions::from_str(url.expose())
                    .map_err(|e| connect_failed(&e))?
                    .application_name("tenantd")
                    .options([("statement_timeout", timeout_ms.as_str())]);
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .test_before_acquire(false)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| connect_failed(&e))?;
                Ok(Self {
                    pool: Pool::Postgres(pool),
                    writer: Arc::default(),
                })
            }
            None => Err(StoreError::UnsupportedUrl {
                url: url.redacted(),
            }),
        }
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite { .. } => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    fn migrator(&self) -> Migrator {
        let embedded = match self.backend() {
            Backend::Sqlite => embedded::SQLITE,
            Backend::Postgres => embedded::POSTGRES,
        };
        Migrator::with_migrations(
            embedded
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    }

    /// Versions of the migrations built into this binary, in order.
    pub fn known_migrations(&self) -> Vec<i64> {
        self.migrator().iter().map(|m| m.version).collect()
    }

    /// Applies every pending migration; returns the versions applied by this call. Safe to run
    /// from several processes at once (PostgreSQL takes an advisory lock).
    ///
    /// # Errors
    /// [`StoreError::Migrate`] with the failing migration.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.applied_migrations().await.unwrap_or_default();
        let migrator = self.migrator();
        let result = match &self.pool {
            Pool::Sqlite { pool, .. } => migrator.run(pool).await,
            Pool::Postgres(pool) => migrator.run(pool).await,
        };
        result.map_err(|err| StoreError::Migrate(err.to_string()))?;
        Ok(self
            .known_migrations()
            .into_iter()
            .filter(|version| !before.contains(version))
            .collect())
    }

    /// Versions recorded as successfully applied.
    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        const SQL: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let versions = match &self.pool {
            Pool::Sqlite { pool, .. } => sqlx::query_scalar(SQL).fetch_all(pool).await?,
            Pool::Postgres(pool) => sqlx::query_scalar(SQL).fetch_all(pool).await?,
        };
        Ok(versions)
    }

    /// Readiness: the database answers, every built-in migration is applied, and (SQLite) the
    /// file opened at start is still the one on disk.
    ///
    /// # Errors
    /// The first problem found, with its reason code.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        if let Pool::Sqlite {
            file: Some(file), ..
        } = &self.pool
        {
            if !file.still_in_place() {
                return Err(StoreError::FileReplaced(file.path.clone()));
            }
        }
        let applied = tokio::time::timeout(PROBE_TIMEOUT, self.applied_migrations())
            .await
            .map_err(|_| StoreError::Unreachable("no answer within 2 s".into()))?
            .map_err(|err| match err {
                // A missing ledger means `tenantd migrate` never ran here.
                StoreError::Query(msg) if msg.contains("_sqlx_migrations") => {
                    StoreError::NotMigrated("no migrations applied".into())
                }
                other => other,
            })?;
        let missing: Vec<i64> = self
            .known_migrations()
            .into_iter()
            .filter(|version| !applied.contains(version))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::NotMigrated(format!(
                "pending migrations {missing:?}; run `tenantd migrate`"
            )))
        }
    }

    /// Closes every pooled connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite { pool, .. } => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// The SQLite pool, for the modules that own SQLite tables.
    /// Waits for this process's turn to write to SQLite (see `writer`).
    pub(crate) async fn sqlite_write_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// A connection of its own, outside the pool, with the pool's settings, for a writer that
    /// is busy all the time (the webhook intake): it never waits for the pool or pings before
    /// use, and on SQLite its page cache stays warm.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub(crate) async fn open_dedicated(&self) -> Result<DedicatedConnection, StoreError> {
        use sqlx::ConnectOptions;
        match &self.pool {
            Pool::Sqlite { pool, .. } => Ok(DedicatedConnection::Sqlite(
                pool.connect_options().connect().await?,
            )),
            Pool::Postgres(pool) => Ok(DedicatedConnection::Postgres(
                pool.connect_options().connect().await?,
            )),
        }
    }

    pub(crate) fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite { pool, .. } => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for the modules that own PostgreSQL tables.
    pub(crate) fn postgres(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Sqlite { .. } => None,
            Pool::Postgres(pool) => Some(pool),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_config(dir: &Path) -> DatabaseConfig {
        DatabaseConfig {
            url: DatabaseUrl::new(format!("sqlite://{}/nested/state.db", dir.display())),
            ..DatabaseConfig::default()
        }
    }

    #[tokio::test]
    async fn sqlite_file_and_folder_are_created_with_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_config(dir.path())).await.unwrap();
        assert!(dir.path().join("nested/state.db").is_file());
        let pool = store.sqlite().unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(pool)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "FULL");
        assert_eq!(foreign_keys, 1);
        assert_eq!(busy, 5000);
    }

    #[tokio::test]
    async fn readiness_requires_migrations_and_migrate_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_config(dir.path())).await.unwrap();
        let err = store.check_ready().await.unwrap_err();
        assert_eq!(err.reason_code(), "database_not_migrated");
        assert_eq!(store.migrate().await.unwrap(), store.known_migrations());
        assert!(
            store.migrate().await.unwrap().is_empty(),
            "second run applies nothing"
        );
        store.check_ready().await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_sqlite_file_makes_the_store_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_config(dir.path())).await.unwrap();
        store.migrate().await.unwrap();
        std::fs::remove_file(dir.path().join("nested/state.db")).unwrap();
        let err = store.check_ready().await.unwrap_err();
        assert_eq!(err.reason_code(), "database_file_missing");
    }

    #[tokio::test]
    async fn an_unsupported_scheme_is_refused() {
        let config = DatabaseConfig {
            url: DatabaseUrl::new("mysql://root:hunter2@localhost/x"),
            ..DatabaseConfig::default()
        };
        let err = Store::connect(&config).await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn a_refused_postgres_connection_hides_the_password() {
        let config = DatabaseConfig {
            // Port 1 on loopback: nothing listens there, the connection is refused at once.
            url: DatabaseUrl::new("postgres://tenantd:hunter2@127.0.0.1:1/tenantd"),
            acquire_timeout_seconds: 2,
            ..DatabaseConfig::default()
        };
        let err = Store::connect(&config).await.unwrap_err();
        assert_eq!(err.reason_code(), "database_connect_failed");
        let message = err.to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            message.contains("tenantd:[redacted]@127.0.0.1:1"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn postgres_sessions_carry_the_statement_timeout() {
        let Ok(url) = std::env::var("TENANTD_TEST_POSTGRES_URL") else {
            assert_ne!(
                std::env::var("TENANTD_REQUIRE_POSTGRES").as_deref(),
                Ok("1")
            );
            eprintln!("skipped: set TENANTD_TEST_POSTGRES_URL to run the PostgreSQL variant");
            return;
        };
        let config = DatabaseConfig {
            url: DatabaseUrl::new(url),
            statement_timeout_seconds: 7,
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&config).await.unwrap();
        let pool = store.postgres().unwrap();
        let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(timeout, "7s");
        assert_eq!(name, "tenantd");
        store.close().await;
    }

    #[test]
    fn sanitize_removes_the_password_from_driver_messages() {
        let url = DatabaseUrl::new("postgres://u:hunter2@db/x");
        let message = sanitize("failed for postgres://u:hunter2@db/x (hunter2)", &url);
        assert!(!message.contains("hunter2"), "{message}");
    }
}
