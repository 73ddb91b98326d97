//! One harness over both stores, for tests written once and run against each: a PostgreSQL
//! database of the test's own ([`super::TestDb`]) or a SQLite file in a temp directory.

use serde_json::Value;
use sqlx::sqlite::SqlitePool;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use twitch_chat_logger::store::sqlite::{connect_options, SqliteStore};

use super::TestDb;

/// Which store a test runs against.
pub enum TestStore {
    Postgres(Box<TestDb>),
    Sqlite { _dir: tempfile::TempDir, path: PathBuf, pool: SqlitePool, store: SqliteStore },
}

/// `macro_rules!` that writes `mod postgres` and `mod sqlite`, each with one `#[tokio::test]`
/// per listed scenario, calling `scenario(TestStore)`.
#[macro_export]
macro_rules! for_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario($crate::common::backends::TestStore::postgres().await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario($crate::common::backends::TestStore::sqlite().await).await
                }
            )*
        }
    };
}

impl TestStore {
    pub async fn postgres() -> TestStore {
        TestStore::Postgres(Box::new(TestDb::new().await))
    }

    /// A migrated SQLite file (as the logger leaves it) in a temp directory.
    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open_lazy(&path);
        store.migrate().await.unwrap();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(connect_options(&path))
            .await
            .unwrap();
        TestStore::Sqlite { _dir: dir, path, pool, store }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Postgres(_) => "postgres",
            TestStore::Sqlite { .. } => "sqlite",
        }
    }

    /// What `DATABASE_URL` / `database.url` says for the logger.
    pub fn url(&self) -> String {
        match self {
            TestStore::Postgres(db) => db.url.clone(),
            TestStore::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
        }
    }

    /// The store itself (migrated), for scenarios that write batches directly.
    pub async fn store(&self) -> std::sync::Arc<dyn twitch_chat_logger::store::Store> {
        match self {
            TestStore::Postgres(db) => {
                let s = twitch_chat_logger::store::postgres::PgStore::new(db.pool.clone());
                s.migrate().await.unwrap();
                std::sync::Arc::new(s)
            }
            TestStore::Sqlite { store, .. } => std::sync::Arc::new(store.clone()),
        }
    }

    /// A count (SQL both dialects read alike).
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestStore::Postgres(db) => db.count(sql).await,
            TestStore::Sqlite { pool, .. } => {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
            }
        }
    }

    /// Waits until a count reaches `n`; panics if it goes past `n`, or after `timeout`.
    pub async fn wait_count(&self, sql: &str, n: i64, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let got = self.count(sql).await;
            if got >= n {
                assert_eq!(got, n, "{}: {sql}: more rows than expected", self.name());
                return;
            }
            assert!(Instant::now() < end, "{}: timed out: {sql} = {got}, wanted {n}", self.name());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs one statement both dialects read alike (e.g. `ALTER TABLE … RENAME TO …`).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            TestStore::Postgres(db) => sqlx::raw_sql(sql).execute(&db.pool).await.map(drop),
            TestStore::Sqlite { pool, .. } => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
        .unwrap();
    }

    /// Every row of `table` without `id`, in `id` order, as JSON objects in one shape for both
    /// stores: timestamps as RFC 3339 in UTC with microseconds, JSON columns as JSON.
    pub async fn rows(&self, table: &str) -> Vec<Value> {
        let rows = match self {
            TestStore::Postgres(db) => twitch_chat_logger::store::copy::pg_rows_as_json(&db.pool, table).await.unwrap(),
            TestStore::Sqlite { store, .. } => {
                store.rows_as_json(table, 0, i64::MAX).await.unwrap().into_iter().map(|(_, v)| v).collect()
            }
        };
        rows.into_iter().map(normalise).collect()
    }

    /// A rule the data can break, as a stricter schema would: a message saying "poison" is refused.
    pub async fn refuse_poison(&self) {
        match self {
            TestStore::Postgres(db) => {
                sqlx::raw_sql("ALTER TABLE chat_messages ADD CONSTRAINT no_poison CHECK (text <> 'poison')")
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
            TestStore::Sqlite { pool, .. } => {
                sqlx::raw_sql(
                    "CREATE TRIGGER no_poison BEFORE INSERT ON chat_messages WHEN NEW.text = 'poison'
                     BEGIN SELECT RAISE(ABORT, 'no_poison'); END",
                )
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// Holds a lock that stops every write to `chat_messages` for `hold` (PostgreSQL: an
    /// ACCESS EXCLUSIVE table lock; SQLite: another connection's `BEGIN IMMEDIATE`, as the
    /// `sqlite3` shell would take it). Returns once the lock is held; the task ends when released.
    pub async fn lock_writes_for(&self, hold: Duration) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = match self {
            TestStore::Postgres(db) => {
                let pool = db.pool.clone();
                tokio::spawn(async move {
                    let mut t = pool.begin().await.unwrap();
                    sqlx::query("LOCK TABLE chat_messages IN ACCESS EXCLUSIVE MODE").execute(&mut *t).await.unwrap();
                    let _ = tx.send(());
                    tokio::time::sleep(hold).await;
                    t.rollback().await.unwrap();
                })
            }
            TestStore::Sqlite { path, .. } => {
                let path = path.clone();
                tokio::spawn(async move {
                    use sqlx::{ConnectOptions, Connection};
                    let mut c = connect_options(&path).connect().await.unwrap();
                    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut c).await.unwrap();
                    let _ = tx.send(());
                    tokio::time::sleep(hold).await;
                    sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
                    c.close().await.unwrap();
                })
            }
        };
        rx.await.unwrap();
        handle
    }
}

/// Timestamps in one form (PostgreSQL writes `+00:00`, the file `Z`).
pub fn normalise(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Value::String(t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            Err(_) => Value::String(s),
        },
        other => other,
    }
}
