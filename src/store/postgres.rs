//! PostgreSQL behind the [`Store`] seam: connection options, start-up (connect, create a missing
//! database, migrate, check the schema), set-based inserts.

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pg_partition::{self, Shape};
use super::{Batch, ChannelNotice, ChatEvent, ChatMessage, Expired, Record, Store, StoreError, WriteReport};
use crate::config::{DatabaseConfig, PartitionInterval};

#[path = "postgres_copy.rs"]
mod copy;
use copy::RecentIds;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// [`PgStore`]'s shape before it was read.
const SHAPE_UNKNOWN: u8 = u8::MAX;

/// The first migration: before it is recorded, the database may be the original logger's.
const FIRST_MIGRATION: i64 = 20261129000001;
/// Longest wait for a connection at start-up: a server that accepts TCP but never answers
/// (stopped, overloaded) counts as a timeout, and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a start-up migration may take before it is abandoned (rolled back) and retried.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Transaction-level advisory lock: two loggers starting at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x7463_6c5f_6d69_6772; // "tcl_migr"

/// Connection options from the config. No connection string is built from the parts, so a
/// password with `@`, `/`, `:` or `%` needs no escaping.
pub fn connect_options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let opts = match cfg {
        DatabaseConfig::Sqlite(path) => {
            anyhow::bail!("the database is the SQLite file {}, not a PostgreSQL server", path.display())
        }
        DatabaseConfig::Url(url) => PgConnectOptions::from_str(url.expose_secret()).map_err(|_| {
            anyhow::anyhow!("database.url / DATABASE_URL is not a valid postgres:// URL (value hidden because it may hold a password)")
        })?,
        DatabaseConfig::Fields { host, port, name, user, password } => {
            let o = PgConnectOptions::new_without_pgpass().host(host).port(*port).database(name).username(user);
            match password {
                Some(p) => o.password(p.expose_secret()),
                None => o,
            }
        }
    };
    Ok(opts.application_name("twitch-chat-logger"))
}

/// Where the database is, for log lines: never the password.
pub fn describe(cfg: &DatabaseConfig) -> String {
    match connect_options(cfg) {
        Ok(o) => target(&o),
        Err(_) => "database.url".to_string(),
    }
}

/// `user@host:port/name` (the name PostgreSQL uses when none is given: the user's).
fn target(o: &PgConnectOptions) -> String {
    format!("{}@{}:{}/{}", o.get_username(), o.get_host(), o.get_port(), db_name(o))
}

fn db_name(o: &PgConnectOptions) -> &str {
    o.get_database().unwrap_or(o.get_username())
}

pub use super::DbError;

/// Until migrations have succeeded the store refuses to write (the writer keeps the rows in
/// memory and the spool), so that reading can start before the database answers.
#[derive(Debug)]
struct Gate {
    open: AtomicBool,
    why: Mutex<String>,
}

/// The [`Store`] on a PostgreSQL pool. Clones share the pool and the gate: one `migrate`
/// opens writes for all of them.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    opts: PgConnectOptions,
    gate: Arc<Gate>,
    /// Which tables are partitioned ([`Shape::bits`]): read after migrating, and again when an
    /// insert's `ON CONFLICT` target no longer matches (`migrate --partition` swapped a table).
    shape: Arc<AtomicU8>,
    /// `[storage] partition`, for the partitions made ahead.
    partition: Arc<Mutex<PartitionInterval>>,
    fast: Fast,
}

/// How messages are written (see [`PgStore::with_direct_copy`], [`PgStore::with_staged_from`]).
#[derive(Clone)]
struct Fast {
    /// Batches of at least this many messages take the staged `COPY`, smaller ones `UNNEST`.
    staged_from: usize,
    /// Batches of at least this many new messages take the direct `COPY`.
    direct_from: usize,
    /// Recently committed ids, when live batches go by `COPY` straight into the table.
    recent: Option<Arc<Mutex<RecentIds>>>,
    /// Whether the table's column types take our binary encoding: checked at the first direct
    /// write, and cleared for good if the server refuses the encoding anyway.
    direct_ok: Arc<tokio::sync::OnceCell<AtomicBool>>,
    /// The last direct `COPY` hit a stored id (a replay, a restart, another logger): the safe
    /// path is used until a safe write meets no duplicate.
    tripped: Arc<AtomicBool>,
}

impl Default for Fast {
    fn default() -> Self {
        Fast {
            staged_from: STAGED_FROM,
            direct_from: DIRECT_FROM,
            recent: Some(Arc::new(Mutex::new(RecentIds::new(copy::RECENT_IDS)))),
            direct_ok: Arc::new(tokio::sync::OnceCell::new()),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Which statement a batch's messages go by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`.
    Unnest,
    /// Binary `COPY` into a session staging table, then `INSERT … SELECT … ON CONFLICT DO NOTHING`.
    Staged,
    /// Binary `COPY` straight into `chat_messages`: the whole batch fails if one id is stored.
    Direct,
}

impl PgStore {
    /// Wraps a pool of an already migrated database: writes are allowed at once.
    pub fn new(pool: PgPool) -> Self {
        let opts = (*pool.connect_options()).clone();
        let gate = Gate { open: AtomicBool::new(true), why: Mutex::new(String::new()) };
        PgStore {
            pool,
            opts,
            gate: Arc::new(gate),
            shape: Arc::new(AtomicU8::new(SHAPE_UNKNOWN)),
            partition: Arc::default(),
            fast: Fast::default(),
        }
    }

    /// With `on`, live batches whose ids the store has not committed recently go by binary
    /// `COPY` straight into `chat_messages` (no `ON CONFLICT`); a batch that trips the unique
    /// key is written again on the `ON CONFLICT` path, in a new transaction. Off: every batch
    /// takes the `ON CONFLICT` path.
    /// (The default: on from [`DIRECT_FROM`] new messages; this sets it for every batch size.)
    pub fn with_direct_copy(mut self, on: bool) -> Self {
        self.fast.recent = on.then(|| Arc::new(Mutex::new(RecentIds::new(copy::RECENT_IDS))));
        self.fast.direct_from = 0;
        self
    }

    /// On the `ON CONFLICT` path, batches of at least `n` messages go by binary `COPY` into a
    /// staging table and `INSERT … SELECT`, smaller ones by `UNNEST` (`usize::MAX`: always
    /// `UNNEST`; 0: always staged).
    pub fn with_staged_from(mut self, n: usize) -> Self {
        self.fast.staged_from = n;
        self
    }

    /// Makes a pool (connections are opened lazily and re-opened after failures). Writes wait
    /// for [`PgStore::migrate`] to succeed.
    pub fn connect_lazy(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        let opts = connect_options(cfg)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts.clone());
        let gate = Gate { open: AtomicBool::new(false), why: Mutex::new("not connected yet".to_string()) };
        Ok(PgStore {
            pool,
            opts,
            gate: Arc::new(gate),
            shape: Arc::new(AtomicU8::new(SHAPE_UNKNOWN)),
            partition: Arc::default(),
            fast: Fast::default(),
        })
    }

    /// The pool, for migrations and health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The connection options, for a second pool on the same database (the log API's).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.opts
    }

    /// `user@host:port/name`, for log lines (no password).
    pub fn target(&self) -> String {
        target(&self.opts)
    }

    /// `Ok` once migrations have succeeded; else why not yet (for `/readyz`).
    pub fn schema_ready(&self) -> Result<(), String> {
        if self.gate.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self.gate.why.lock().expect("gate lock").clone())
        }
    }

    /// Records why the schema is not ready yet (shown by `/readyz`).
    pub fn set_not_ready(&self, why: &str) {
        *self.gate.why.lock().expect("gate lock") = why.to_string();
    }

    fn gate(&self) -> Result<(), StoreError> {
        self.schema_ready().map_err(|why| StoreError::Unavailable(WriteFailure::SchemaNotReady(why).into()))
    }

    /// Connects (creating the database if it is missing and the role may), applies pending
    /// migrations, and checks that the tables have the shape the logger writes; then opens the
    /// store for writing. All in one transaction: on failure the database is left as it was.
    ///
    /// A database made by the original logger's `init.sql` is upgraded in place: its view
    /// (which our first migration cannot replace) is dropped first and recreated by the last.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.connect_creating().await?;
        self.set_not_ready("applying migrations");
        // A migration blocked for good (a hung server mid-way) is given up and tried again; a
        // lock another session holds gives up sooner (lock_timeout in `migrate_on`).
        let result = match tokio::time::timeout(MIGRATION_TIMEOUT, migrate_on(&mut conn, &self.opts)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Transient(format!(
                "timeout: the migration did not finish within {MIGRATION_TIMEOUT:?} at {}",
                self.target()
            ))),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        result?;
        self.detect_shape().await.map_err(|e| self.explain(&e))?;
        // Without them rows still go in (to the default partition): a failure only warns, and
        // a server that stops answering here does not keep writes closed.
        if tokio::time::timeout(Duration::from_secs(30), self.keep_partitions_ahead()).await.is_err() {
            tracing::warn!("partitions: making the next partitions took over 30 s; rows go to the default partition meanwhile, trying again within the hour");
        }
        self.gate.open.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads which tables are partitioned, for the inserts' `ON CONFLICT` target.
    pub async fn detect_shape(&self) -> Result<Shape, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let shape = pg_partition::shape(&mut conn).await?;
        self.shape.store(shape.bits(), Ordering::Release);
        Ok(shape)
    }

    /// Which tables were partitioned when last read; `None` before the first read.
    pub fn shape(&self) -> Option<Shape> {
        Some(self.shape.load(Ordering::Acquire)).filter(|b| *b != SHAPE_UNKNOWN).map(Shape::from_bits)
    }

    /// Sets `[storage] partition` (start-up and reload): partitions made from now on use it.
    pub fn set_partition_interval(&self, interval: PartitionInterval) {
        *self.partition.lock().expect("partition lock") = interval;
    }

    /// `migrate --partition`: partitions every time-series table that is not yet, keeping its
    /// rows, while loggers may write to it (see [`pg_partition::partition_table`]).
    pub async fn partition_existing(
        &self,
        chunk_rows: i64,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> anyhow::Result<()> {
        let interval = *self.partition.lock().expect("partition lock");
        let mut conn = connect(&self.opts).await.map_err(|e| self.explain(&e))?;
        sqlx::query("SET client_min_messages = warning").execute(&mut conn).await?;
        for (table, _) in pg_partition::TABLES {
            let done = pg_partition::partition_table(&mut conn, table, interval, chunk_rows, progress)
                .await
                .map_err(|e| anyhow::anyhow!("partitioning {table} failed: {} — nothing is lost: the table is as it was; run the command again to resume", self.explain(&e)))?;
            if done.converted {
                progress(format!(
                    "{table}: done: {} rows, {} partitions, inserts paused {} ms",
                    done.rows,
                    done.partitions,
                    done.pause.as_millis()
                ));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        self.detect_shape().await?;
        self.keep_partitions_ahead().await;
        Ok(())
    }

    /// [`PgStore::keep_partitions_ahead`] once the schema is ready, then every `every`.
    pub async fn keep_partitions_ahead_every(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if self.schema_ready().is_ok() {
                self.keep_partitions_ahead().await;
            }
        }
    }

    /// Makes the current and next partitions where missing; logs what it made, and a failure
    /// (rows outside every partition go to the default one meanwhile, nothing fails).
    pub async fn keep_partitions_ahead(&self) -> Vec<String> {
        let interval = *self.partition.lock().expect("partition lock");
        match pg_partition::ensure_ahead(&self.pool, interval, chrono::Utc::now()).await {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(
                    "partitions: making the next {} partitions failed ({e}); rows go to the default partition meanwhile, trying again later",
                    interval.as_str()
                );
                Vec::new()
            }
        }
    }

    /// Connects and logs in once, without retrying or creating anything (`check --connect`).
    /// Returns the server's version and how many of our migrations it has.
    pub async fn probe_login(&self) -> Result<(String, usize), DbError> {
        let mut conn = connect(&self.opts).await.map_err(|e| self.explain(&e))?;
        let version: String =
            sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await.map_err(|e| self.explain(&e))?;
        let applied: i64 = if sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.explain(&e))?
        {
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| self.explain(&e))?
        } else {
            0
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        Ok((version, applied as usize))
    }

    /// One connection for the migration; a missing database is created when the role may.
    async fn connect_creating(&self) -> Result<PgConnection, DbError> {
        match connect(&self.opts).await {
            Ok(c) => Ok(c),
            Err(e) if sql_state(&e).as_deref() == Some("3D000") => {
                self.create_database().await?;
                connect(&self.opts).await.map_err(|e| self.explain(&e))
            }
            Err(e) => Err(self.explain(&e)),
        }
    }

    async fn create_database(&self) -> Result<(), DbError> {
        let (name, user) = (db_name(&self.opts), self.opts.get_username());
        let missing = |why: &str| {
            DbError::Fatal(format!(
                "database \"{name}\" does not exist — create it with createdb -h {} -p {} -U {user} {name}, or let the logger create it (ALTER ROLE {user} CREATEDB){why}",
                self.opts.get_host(),
                self.opts.get_port()
            ))
        };
        // Any database will do to run CREATE DATABASE from; these two exist in every cluster.
        let mut conn = match connect(&self.opts.clone().database("postgres")).await {
            Ok(c) => c,
            Err(_) => connect(&self.opts.clone().database("template1"))
                .await
                .map_err(|e| missing(&format!(" (cannot check whether role {user} may: {})", self.explain(&e))))?,
        };
        let may: bool = sqlx::query_scalar("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.explain(&e))?;
        if !may {
            return Err(missing(""));
        }
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            Ok(_) => tracing::info!("database \"{name}\" did not exist; created it (role {user} may create databases)"),
            // Another logger created it meanwhile.
            Err(e) if sql_state(&e).as_deref() == Some("42P04") => {}
            Err(e) => return Err(missing(&format!(" (creating it failed: {})", self.explain(&e)))),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        Ok(())
    }

    /// Says what a connection-time error means and whether waiting can fix it.
    fn explain(&self, e: &sqlx::Error) -> DbError {
        explain_error(e, &self.opts)
    }
}

/// A start-up connection. A migration that waits on a lock is expected: sqlx's slow-statement
/// warning (which prints the whole migration text) is off here.
async fn connect(opts: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    let opts = opts.clone().log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))),
    }
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    }
}

/// The server's message with its detail and hint, when it gave them.
fn server_message(db: &dyn sqlx::error::DatabaseError) -> String {
    let mut m = db.message().to_string();
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        if let Some(d) = pg.detail() {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = pg.hint() {
            m.push_str(&format!(" (hint: {h})"));
        }
    }
    m
}

/// Maps an error from connecting or from a statement at start-up to what it means.
pub(crate) fn explain_error(e: &sqlx::Error, o: &PgConnectOptions) -> DbError {
    let (host, port, user, name) = (o.get_host(), o.get_port(), o.get_username(), db_name(o));
    let at = format!("{host}:{port}");
    match e {
        sqlx::Error::Io(io) => {
            let text = io.to_string();
            DbError::Transient(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => format!("connection refused by {at} (is PostgreSQL running?)"),
                std::io::ErrorKind::TimedOut => format!("timeout: no answer from {at} within {CONNECT_TIMEOUT:?}"),
                _ if text.contains("lookup") || text.contains("resolve") || text.contains("not known") => {
                    format!("DNS failure: cannot resolve host {host} ({text})")
                }
                _ => format!("network error talking to {at}: {text}"),
            })
        }
        sqlx::Error::PoolTimedOut => DbError::Transient(format!("timeout: no connection to {at}")),
        sqlx::Error::Tls(t) => DbError::Fatal(format!(
            "TLS with {at} failed: {t} — check sslmode in DATABASE_URL (e.g. ?sslmode=disable for a server without TLS)"
        )),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = server_message(db.as_ref());
            match code.as_str() {
                // cannot_connect_now: starting up, shutting down, in recovery.
                "57P03" | "57P01" | "57P02" | "53300" => DbError::Transient(format!("{msg} ({code})")),
                "55P03" => DbError::Transient(format!(
                    "{msg} (55P03): another session holds a lock the migration needs (see pg_locks)"
                )),
                c if c.starts_with("08") => DbError::Transient(format!("{msg} ({code})")),
                "28P01" => DbError::Fatal(format!(
                    "wrong password for role \"{user}\" at {at}, or no such role (28P01) — set POSTGRES_USER / POSTGRES_PASSWORD (or [database] password / password_file, or the password in DATABASE_URL)"
                )),
                "28000" if msg.contains("does not exist") => DbError::Fatal(format!(
                    "role \"{user}\" does not exist at {at} (28000) — create it (createuser -h {host} -p {port} -U postgres --pwprompt {user}) or set POSTGRES_USER to an existing role"
                )),
                "28000" => DbError::Fatal(format!(
                    "{at} refused the connection: {msg} (28000) — allow this host, user and database in the server's pg_hba.conf"
                )),
                "3D000" => DbError::Fatal(format!(
                    "database \"{name}\" does not exist — create it with createdb -h {host} -p {port} -U {user} {name}, or let the logger create it (ALTER ROLE {user} CREATEDB)"
                )),
                "42501" if msg.contains("must be owner") => DbError::Fatal(format!(
                    "{msg} (42501) — upgrading needs the tables' owner: ALTER TABLE chat_messages OWNER TO {user}; ALTER TABLE channel_notices OWNER TO {user}; ALTER VIEW v_last_messages OWNER TO {user} (or run `twitch-chat-logger migrate` once as their owner)"
                )),
                "42501" => DbError::Fatal(format!(
                    "{msg} (42501) — role {user} lacks a privilege: it needs CONNECT on database {name}, USAGE and CREATE on schema public, and ownership of the logger's tables (see the README)"
                )),
                _ => DbError::Fatal(format!("{msg} ({code})")),
            }
        }
        other => DbError::Fatal(format!("cannot use the database at {at}: {other}")),
    }
}

/// Maps a migration failure: lost connections are retried, everything else is not.
fn explain_migrate(e: sqlx::migrate::MigrateError, o: &PgConnectOptions) -> DbError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(e) => explain_error(&e, o),
        M::ExecuteMigration(e, version) => match explain_error(&e, o) {
            t @ DbError::Transient(_) => t,
            DbError::Fatal(why) => {
                let name = MIGRATOR.iter().find(|m| m.version == version).map(|m| m.description.to_string()).unwrap_or_default();
                DbError::Fatal(format!(
                    "migration {version} ({name}) failed: {why} — nothing was changed (the migration runs in one transaction); fix what it names, then start again"
                ))
            }
        },
        M::VersionMissing(v) => DbError::Fatal(format!(
            "the database has migration {v} in _sqlx_migrations, which this version does not know — a newer twitch-chat-logger migrated it (run that version or a newer one), or another application shares this database (give the logger a database of its own)"
        )),
        M::VersionMismatch(v) => DbError::Fatal(format!(
            "migration {v} was applied from a different text than this version's (checksum differs in _sqlx_migrations) — run the version that applied it, or restore the original migration"
        )),
        M::Dirty(v) => DbError::Fatal(format!(
            "migration {v} is marked as failed in _sqlx_migrations — check the schema, then delete that row and start again"
        )),
        other => DbError::Fatal(format!("migrating failed: {other}")),
    }
}

/// Everything start-up does to the schema, in one transaction on `conn`.
async fn migrate_on(conn: &mut PgConnection, o: &PgConnectOptions) -> Result<(), DbError> {
    let err = |e: sqlx::Error| explain_error(&e, o);
    // sqlx's "relation _sqlx_migrations already exists, skipping" and the like are noise.
    sqlx::query("SET client_min_messages = warning").execute(&mut *conn).await.map_err(err)?;
    // A table locked by another session (a long query, an open transaction) is waited for a
    // while, then the migration is retried from the start.
    sqlx::query("SET lock_timeout = '10s'").execute(&mut *conn).await.map_err(err)?;
    let mut tx = conn.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(err)?;
    // Nothing pending: the migrator is skipped, so a role that only writes (no CREATE on the
    // schema, see the README) can run the logger on a database its owner migrated.
    if !up_to_date(&mut tx).await.map_err(err)? {
        before_first_migration(&mut tx, o).await?;
        // `run_direct`: `run(&mut *tx)` is not `Send` enough to be spawned (sqlx's own workaround).
        MIGRATOR.run_direct(None, &mut *tx, false).await.map_err(|e| explain_migrate(e, o))?;
    }
    let problems = schema_problems(&mut tx).await.map_err(err)?;
    if !problems.is_empty() {
        return Err(DbError::Fatal(format!(
            "the database's tables differ from what the logger writes: {} — fix these, then start again (nothing was changed)",
            problems.join("; ")
        )));
    }
    tx.commit().await.map_err(err)
}

/// Whether `_sqlx_migrations` records exactly our migrations, each applied and unchanged.
async fn up_to_date(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(false);
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    let ours: Vec<_> = MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()).collect();
    Ok(applied.len() == ours.len()
        && applied.iter().zip(&ours).all(|((v, sum, ok), m)| *ok && *v == m.version && **sum == *m.checksum))
}

/// On a database our first migration has not run on (fresh, or the original's): removes what
/// would make it fail. The original's `v_last_messages` has every column; our first migration
/// replaces it with fewer, which PostgreSQL refuses ("cannot drop columns from view"). The view
/// holds no data, and the last migration recreates it with the original's definition.
async fn before_first_migration(conn: &mut PgConnection, o: &PgConnectOptions) -> Result<(), DbError> {
    let err = |e: sqlx::Error| explain_error(&e, o);
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    if has_table {
        let applied: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
            .bind(FIRST_MIGRATION)
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        if applied {
            return Ok(());
        }
    }
    let kind: Option<String> =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('v_last_messages')")
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
    match kind.as_deref() {
        None => Ok(()),
        Some("v") => {
            tracing::info!("upgrading a database made by the original logger: its view v_last_messages is recreated with the same definition");
            // In a savepoint: the failure is reported with its reason, not as an aborted transaction.
            let mut sp = conn.begin().await.map_err(err)?;
            match sqlx::query("DROP VIEW v_last_messages").execute(&mut *sp).await {
                Ok(_) => sp.commit().await.map_err(err),
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("2BP01") => Err(DbError::Fatal(format!(
                    "view v_last_messages must be replaced to upgrade this database, but other objects depend on it: {} — drop them, start the logger (or run `twitch-chat-logger migrate`), then recreate them",
                    server_message(db.as_ref())
                ))),
                Err(e) => Err(DbError::Fatal(format!("cannot replace view v_last_messages: {}", err(e)))),
            }
        }
        Some(k) => Err(DbError::Fatal(format!(
            "v_last_messages is a {} but the logger's schema needs a view there — rename it (ALTER TABLE v_last_messages RENAME TO v_last_messages_old), then start again",
            match k {
                "r" | "p" => "table",
                "m" => "materialized view",
                "S" => "sequence",
                "f" => "foreign table",
                _ => "relation other than a view",
            }
        ))),
    }
}

/// Accepted types per column (as `format_type` prints them; a prefix for `character varying`).
const TEXT: &[&str] = &["text", "character varying"];
const INT: &[&str] = &["integer", "bigint"];
const BOOL: &[&str] = &["boolean"];
const JSONB: &[&str] = &["jsonb"];
const TIME: &[&str] = &["timestamp with time zone", "timestamp without time zone"];
const UUID: &[&str] = &["uuid"];

/// The columns the logger writes, per table.
type Columns = &'static [(&'static str, &'static [&'static str])];
const WRITTEN: &[(&str, Columns)] = &[
    (
        "chat_messages",
        &[
            ("message_id", TEXT),
            ("channel", TEXT),
            ("room_id", TEXT),
            ("user_id", TEXT),
            ("username", TEXT),
            ("display_name", TEXT),
            ("text", TEXT),
            ("badges", JSONB),
            ("color", TEXT),
            ("is_mod", BOOL),
            ("is_subscriber", BOOL),
            ("bits", INT),
            ("is_action", BOOL),
            ("emotes", TEXT),
            ("first_msg", BOOL),
            ("reply_parent_msg_id", TEXT),
            ("reply_parent_user_login", TEXT),
            ("sent_at", TIME),
            ("received_at", TIME),
            ("badge_info", JSONB),
            ("returning_chatter", BOOL),
            ("vip", BOOL),
            ("source_room_id", TEXT),
            ("source_id", TEXT),
            ("raw", TEXT),
        ],
    ),
    (
        "chat_events",
        &[
            ("event_key", TEXT),
            ("kind", TEXT),
            ("msg_id", TEXT),
            ("channel", TEXT),
            ("room_id", TEXT),
            ("user_id", TEXT),
            ("login", TEXT),
            ("display_name", TEXT),
            ("badges", JSONB),
            ("badge_info", JSONB),
            ("color", TEXT),
            ("emotes", TEXT),
            ("text", TEXT),
            ("system_msg", TEXT),
            ("params", JSONB),
            ("cumulative_months", INT),
            ("streak_months", INT),
            ("sub_plan", TEXT),
            ("recipient_id", TEXT),
            ("recipient_login", TEXT),
            ("viewer_count", INT),
            ("ban_duration", INT),
            ("target_user_id", TEXT),
            ("target_login", TEXT),
            ("target_msg_id", TEXT),
            ("room_state", JSONB),
            ("sent_at", TIME),
            ("received_at", TIME),
            ("raw", TEXT),
        ],
    ),
    (
        "channel_notices",
        &[
            ("channel", TEXT),
            ("msg_id", TEXT),
            ("message", TEXT),
            ("received_at", TIME),
            ("tags", JSONB),
            ("notice_at", TIME),
            ("notice_key", UUID),
            ("raw", TEXT),
        ],
    ),
    ("dead_letters", &[("kind", TEXT), ("payload", TEXT), ("error", TEXT), ("received_at", TIME)]),
];

/// Differences between the tables and what the logger's inserts need: a missing or retyped
/// column, a NOT NULL column without default that the logger does not fill, a missing unique
/// index for `ON CONFLICT`. Each would make every write fail.
async fn schema_problems(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS t, a.attname::text AS col, format_type(a.atttypid, a.atttypmod) AS typ,
                a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AS needs_value
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.oid IN (to_regclass('chat_messages'), to_regclass('channel_notices'), to_regclass('dead_letters'),
                         to_regclass('chat_events'))
           AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut problems = Vec::new();
    for (table, cols) in WRITTEN {
        let have: Vec<_> = rows.iter().filter(|r| r.get::<String, _>("t") == *table).collect();
        if have.is_empty() {
            problems.push(format!("table {table} is missing"));
            continue;
        }
        for (col, types) in cols.iter() {
            match have.iter().find(|r| r.get::<String, _>("col") == *col) {
                None => problems.push(format!("column {table}.{col} is missing (expected {})", types[0])),
                Some(r) => {
                    let typ: String = r.get("typ");
                    if !types.iter().any(|t| typ.starts_with(t)) {
                        problems.push(format!("column {table}.{col} is {typ}, expected {}", types[0]));
                    }
                }
            }
        }
        for r in &have {
            let col: String = r.get("col");
            if r.get::<bool, _>("needs_value") && !cols.iter().any(|(c, _)| *c == col) {
                problems.push(format!(
                    "column {table}.{col} is NOT NULL without a default, and the logger does not fill it (give it a default or drop NOT NULL)"
                ));
            }
        }
    }
    for (table, col) in
        [("chat_messages", "message_id"), ("channel_notices", "notice_key"), ("chat_events", "event_key")]
    {
        // A partitioned table's key is (col, sent_at): the partition key must be in it.
        let unique: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             JOIN pg_class c ON c.oid = i.indrelid
             LEFT JOIN pg_attribute a1 ON a1.attrelid = i.indrelid AND a1.attnum = i.indkey[1]
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
               AND i.indexprs IS NULL AND a.attname = $2
               AND CASE WHEN c.relkind = 'p' THEN i.indnatts = 2 AND a1.attname = 'sent_at' ELSE i.indnatts = 1 END)",
        )
        .bind(table)
        .bind(col)
        .fetch_one(&mut *conn)
        .await?;
        if !unique && !problems.iter().any(|p| p.starts_with(&format!("table {table} "))) {
            problems.push(format!(
                "{table} has no unique index on ({col}) alone (partitioned: on ({col}, sent_at)), which the logger's ON CONFLICT needs (CREATE UNIQUE INDEX ON {table} ({col}), or ({col}, sent_at) when partitioned)"
            ));
        }
    }
    Ok(problems)
}

/// SQLSTATE classes about the server's state, not the rows: retrying can succeed (connection,
/// resources, operator action or statement timeout, serialization/deadlock, lock not
/// available, transaction state, system/internal errors, a schema a person must fix, login).
const SERVER_STATE_CLASSES: [&str; 11] = ["08", "53", "57", "58", "40", "55", "25", "XX", "42", "3D", "28"];

/// How long the probe after a failed write may take before the database counts as unavailable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with a write: the source of the [`StoreError`] the writer gets.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// Migrations have not succeeded yet; the text is why, as `/readyz` shows it.
    #[error("database schema not ready yet: {0}")]
    SchemaNotReady(String),
    /// The server refused a statement: its message and SQLSTATE, which the dead letter keeps.
    #[error("{} (SQLSTATE {})", .0.message(), .0.code().unwrap_or_default())]
    Server(Box<dyn sqlx::error::DatabaseError>),
    /// Anything else from the driver: I/O, pool timeout, TLS, protocol. Not chained as a
    /// source: sqlx's text already ends with its own source's (`… : Connection refused`).
    #[error("{0}")]
    Driver(sqlx::Error),
}

impl WriteFailure {
    /// The SQLSTATE code, when the server refused a statement.
    pub fn sql_state(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            WriteFailure::Server(db) => db.code(),
            _ => None,
        }
    }
}

/// A failed write, classified by what the error is, before any probe.
enum Failure {
    /// The error's kind or SQLSTATE class decides it.
    Decided(StoreError),
    /// A class not known either way (e.g. 54000, an index row over the btree limit): a probe
    /// of the connection decides.
    Undecided(WriteFailure),
}

fn classify(e: sqlx::Error) -> Failure {
    let failure = match e {
        sqlx::Error::Database(db) => WriteFailure::Server(db),
        other => return Failure::Decided(StoreError::Unavailable(WriteFailure::Driver(other).into())),
    };
    let code = failure.sql_state().unwrap_or_default().into_owned();
    if code.starts_with("22") || code.starts_with("23") {
        // Data exception, integrity violation: about the rows themselves.
        Failure::Decided(StoreError::Rejected(failure.into()))
    } else if SERVER_STATE_CLASSES.iter().any(|c| code.starts_with(c)) {
        Failure::Decided(StoreError::Unavailable(failure.into()))
    } else {
        Failure::Undecided(failure)
    }
}

/// After an undecided failure: if the database answers `SELECT 1` on the same connection right
/// after, the server is fine and the batch is at fault.
async fn probe(conn: &mut PgConnection, failure: WriteFailure) -> StoreError {
    // The failed transaction was dropped: sqlx rolls it back before the probe runs.
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn)).await {
        Ok(Ok(_)) => StoreError::Rejected(failure.into()),
        _ => StoreError::Unavailable(failure.into()),
    }
}

const INSERT_MESSAGES: &str = "
INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, display_name, text,
    badges, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg,
    reply_parent_msg_id, reply_parent_user_login, sent_at, received_at, badge_info,
    returning_chatter, vip, source_room_id, source_id, raw)
SELECT m, c, r, u, un, dn, t, b::jsonb, col, im, isub, bi, ia, em, fm, rp, rpu, sa, ra, binf::jsonb,
    rc, v, sr, si, rw
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::bool[], $11::bool[], $12::int4[], $13::bool[], $14::text[],
    $15::bool[], $16::text[], $17::text[], $18::timestamptz[], $19::timestamptz[], $20::text[],
    $21::bool[], $22::bool[], $23::text[], $24::text[], $25::text[])
    AS x(m, c, r, u, un, dn, t, b, col, im, isub, bi, ia, em, fm, rp, rpu, sa, ra, binf, rc, v, sr, si, rw)
ON CONFLICT (message_id) DO NOTHING";

// Every event but ROOMSTATE, deduplicated on the key fixed when the line was read.
const INSERT_EVENTS: &str = "
INSERT INTO chat_events (event_key, kind, msg_id, channel, room_id, user_id, login, display_name,
    badges, badge_info, color, emotes, text, system_msg, params, cumulative_months, streak_months,
    sub_plan, recipient_id, recipient_login, viewer_count, ban_duration, target_user_id,
    target_login, target_msg_id, sent_at, received_at, raw)
SELECT k, kd, mi, c, r, u, l, dn, b::jsonb, bi::jsonb, col, em, t, sm, COALESCE(p, '{}')::jsonb, cm, sk,
    sp, ri, rl, vc, bd, tu, tl, tm, sa, ra, rw
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::int4[], $17::int4[], $18::text[], $19::text[], $20::text[], $21::int4[],
    $22::int4[], $23::text[], $24::text[], $25::text[], $26::timestamptz[], $27::timestamptz[],
    $28::text[])
    AS x(k, kd, mi, c, r, u, l, dn, b, bi, col, em, t, sm, p, cm, sk, sp, ri, rl, vc, bd, tu, tl, tm, sa, ra, rw)
ON CONFLICT (event_key) DO NOTHING";

// A ROOMSTATE's modes as sent (`params`: all of them after a JOIN, one when it changes) are
// merged onto the room's last stored state into `room_state`, and the row is stored only if that
// changes the state: the full state Twitch sends after every JOIN, to every account, after every
// restart, is then stored once. [`LOCK_ROOM`] first makes two loggers on one database take turns
// per room (a separate statement: this one must see what the other committed meanwhile).
const LOCK_ROOM: &str = "SELECT pg_advisory_xact_lock(hashtextextended('tcl_roomstate:' || $1, 0))";
const INSERT_ROOMSTATE: &str = "
WITH last AS (
    SELECT room_state FROM chat_events
    WHERE kind = 'roomstate' AND channel = $2 ORDER BY id DESC LIMIT 1
),
next AS (SELECT COALESCE((SELECT room_state FROM last), '{}'::jsonb) || COALESCE($4, '{}')::jsonb AS state)
INSERT INTO chat_events (event_key, kind, channel, room_id, params, room_state, sent_at, received_at, raw)
SELECT $1, 'roomstate', $2, $3, COALESCE($4, '{}')::jsonb, next.state, $5, $6, $7 FROM next
WHERE next.state IS DISTINCT FROM (SELECT room_state FROM last)
ON CONFLICT (event_key) DO NOTHING";

// Deduplicated on the key fixed when the line was read; records spooled by older versions
// carry no key (NULL never conflicts) and an empty `tags` (stored as `{}`).
const INSERT_NOTICES: &str = "
INSERT INTO channel_notices (channel, msg_id, message, received_at, tags, notice_at, notice_key, raw)
SELECT c, m, t, r, COALESCE(tg, '{}')::jsonb, COALESCE(na, r), k::uuid, rw
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::timestamptz[], $7::text[],
    $8::text[])
    AS x(c, m, t, r, tg, na, k, rw)
ON CONFLICT (notice_key) DO NOTHING";

/// The inserts for partitioned tables: a partitioned table's unique key holds the partition
/// key, so the dedupe key is `(message_id, sent_at)` / `(event_key, sent_at)`. Two copies of
/// one line carry the same `tmi-sent-ts`, so they still collide.
struct PartitionedSql {
    messages: String,
    events: String,
    roomstate: String,
}

static PARTITIONED_SQL: std::sync::LazyLock<PartitionedSql> = std::sync::LazyLock::new(|| {
    let msg = |s: &str| s.replace("ON CONFLICT (message_id)", "ON CONFLICT (message_id, sent_at)");
    let ev = |s: &str| s.replace("ON CONFLICT (event_key)", "ON CONFLICT (event_key, sent_at)");
    PartitionedSql { messages: msg(INSERT_MESSAGES), events: ev(INSERT_EVENTS), roomstate: ev(INSERT_ROOMSTATE) }
});

/// 42P10: no unique index matches the `ON CONFLICT` target (the table's shape changed).
fn conflict_target_gone(e: &StoreError) -> bool {
    e.cause().downcast_ref::<WriteFailure>().and_then(|f| f.sql_state()).as_deref() == Some("42P10")
}

/// Batches of at least this many messages take the staged `COPY` on the `ON CONFLICT` path:
/// never by default, as it measured slower than `UNNEST` at every batch size (README).
const STAGED_FROM: usize = usize::MAX;

/// Live batches of at least this many new messages go by direct `COPY`: below it a `COPY`
/// measured far slower than `UNNEST` (a fixed cost per statement), from it about as fast.
pub const DIRECT_FROM: usize = 1000;

/// Batches the writer may have in flight: one commits while the next is sent.
const IN_FLIGHT: usize = 2;

impl PgStore {
    /// Messages (deduplicated on `message_id`), notices and events: one transaction, or two
    /// when a direct `COPY` meets a stored id (the first is rolled back whole).
    async fn write_part(
        &self,
        ms: &[ChatMessage],
        ns: &[ChannelNotice],
        es: &[ChatEvent],
    ) -> Result<WriteReport, StoreError> {
        self.gate()?;
        let mut conn =
            self.pool.acquire().await.map_err(|e| StoreError::Unavailable(WriteFailure::Driver(e).into()))?;
        let shape = match self.shape() {
            Some(s) => s,
            // A store made with `new` on a database migrated elsewhere: read once.
            None => pg_partition::shape(&mut conn)
                .await
                .map_err(|e| StoreError::Unavailable(WriteFailure::Driver(e).into()))?,
        };
        self.shape.store(shape.bits(), Ordering::Release);
        let f = &self.fast;
        let (fresh, known) = match &f.recent {
            Some(r) => r.lock().expect("recent ids lock").fresh(ms),
            None => (ms.iter().collect(), 0),
        };
        if fresh.is_empty() && ns.is_empty() && es.is_empty() {
            return Ok(WriteReport { duplicates: known, ..WriteReport::default() });
        }
        let mut done = None;
        if f.recent.is_some()
            && !fresh.is_empty()
            && fresh.len() >= f.direct_from
            && !f.tripped.load(Ordering::Relaxed)
            && self.direct_ok(&mut conn).await?
        {
            match Self::write_tx(&mut conn, Path::Direct, &fresh, ns, es, shape).await {
                Ok(report) => done = Some(report),
                // Whatever the server said (a stored id, a bad row, an encoding it refuses),
                // the safe path gives the answer; a broken connection is the writer's to retry.
                Err(Failure::Decided(e)) => match e.cause().downcast_ref::<WriteFailure>() {
                    Some(WriteFailure::Server(db)) => self.copy_refused(db.code().as_deref(), &e),
                    _ => return Err(e),
                },
                Err(Failure::Undecided(failure)) => {
                    let code = failure.sql_state().map(|c| c.into_owned());
                    self.copy_refused(code.as_deref(), &failure)
                }
            }
        }
        let mut report = match done {
            Some(report) => report,
            None => {
                let path = if fresh.len() >= f.staged_from { Path::Staged } else { Path::Unnest };
                match Self::write_tx(&mut conn, path, &fresh, ns, es, shape).await {
                    Ok(report) => {
                        if report.duplicates == 0 {
                            f.tripped.store(false, Ordering::Relaxed);
                        }
                        report
                    }
                    Err(Failure::Decided(e)) => {
                        if conflict_target_gone(&e) {
                            // The table was partitioned (or back) under us: the retry uses the
                            // new key.
                            let _ = self.detect_shape().await;
                        }
                        return Err(e);
                    }
                    Err(Failure::Undecided(failure)) => return Err(probe(&mut conn, failure).await),
                }
            }
        };
        report.duplicates += known;
        if let Some(r) = &f.recent {
            r.lock().expect("recent ids lock").committed(fresh.iter().map(|m| m.message_id.as_str()));
        }
        Ok(report)
    }

    /// Whether direct `COPY` fits the table's column types (asked once).
    async fn direct_ok(&self, conn: &mut PgConnection) -> Result<bool, StoreError> {
        let ok = self
            .fast
            .direct_ok
            .get_or_try_init(|| async {
                let ok = copy::direct_types_ok(conn).await?;
                if !ok {
                    tracing::info!("chat_messages has column types other than the logger's own: writing with INSERT … ON CONFLICT only");
                }
                Ok::<_, sqlx::Error>(AtomicBool::new(ok))
            })
            .await
            .map_err(|e| StoreError::Unavailable(WriteFailure::Driver(e).into()))?;
        Ok(ok.load(Ordering::Relaxed))
    }

    /// A direct `COPY` failed (rolled back): the batch goes by the safe path, and so do the
    /// next ones until a safe write meets no duplicate. Refused as an encoding (a column type
    /// changed while running), it is never tried again.
    fn copy_refused(&self, code: Option<&str>, cause: &dyn std::fmt::Display) {
        self.fast.tripped.store(true, Ordering::Relaxed);
        if matches!(code, Some("22P03" | "42804" | "08P01")) {
            if let Some(ok) = self.fast.direct_ok.get() {
                if ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "chat_messages does not take binary COPY ({cause}): writing with INSERT … ON CONFLICT only (check its column types)"
                    );
                }
            }
        }
    }

    /// The inserts, in one transaction on `conn` (kept for the probe if they fail).
    async fn write_tx(
        conn: &mut PgConnection,
        path: Path,
        ms: &[&ChatMessage],
        ns: &[ChannelNotice],
        es: &[ChatEvent],
        shape: Shape,
    ) -> Result<WriteReport, Failure> {
        let mut tx = conn.begin().await.map_err(classify)?;
        let mut report = WriteReport::default();
        if !ms.is_empty() && path != Path::Unnest {
            let c: &mut PgConnection = &mut tx;
            if path == Path::Staged {
                sqlx::raw_sql(copy::STAGE_CREATE).execute(&mut *c).await.map_err(classify)?;
            }
            let statement = if path == Path::Staged { copy::STAGE_COPY } else { copy::COPY_DIRECT };
            let mut copy_in = c.copy_in_raw(statement).await.map_err(classify)?;
            copy_in.send(copy::encode(ms)).await.map_err(classify)?;
            let mut rows = copy_in.finish().await.map_err(classify)?;
            if path == Path::Staged {
                rows = sqlx::query(copy::STAGE_INSERT).execute(&mut *c).await.map_err(classify)?.rows_affected();
            }
            report.messages_inserted = rows;
            report.duplicates = ms.len() as u64 - rows;
        } else if !ms.is_empty() {
            // Columns as slices of references: no per-row string copies.
            macro_rules! col {
                ($f:ident) => {
                    ms.iter().map(|m| &m.$f).collect::<Vec<_>>()
                };
                (str $f:ident) => {
                    ms.iter().map(|m| m.$f.as_str()).collect::<Vec<_>>()
                };
                (opt $f:ident) => {
                    ms.iter().map(|m| m.$f.as_deref()).collect::<Vec<_>>()
                };
            }
            let done = sqlx::query(if shape.messages { &PARTITIONED_SQL.messages } else { INSERT_MESSAGES })
                .bind(col!(str message_id))
                .bind(col!(str channel))
                .bind(col!(opt room_id))
                .bind(col!(opt user_id))
                .bind(col!(str username))
                .bind(col!(opt display_name))
                .bind(col!(str text))
                .bind(col!(str badges))
                .bind(col!(opt color))
                .bind(col!(is_mod))
                .bind(col!(is_subscriber))
                .bind(col!(bits))
                .bind(col!(is_action))
                .bind(col!(opt emotes))
                .bind(col!(first_msg))
                .bind(col!(opt reply_parent_msg_id))
                .bind(col!(opt reply_parent_user_login))
                .bind(col!(sent_at))
                .bind(col!(received_at))
                .bind(col!(opt badge_info))
                .bind(col!(returning_chatter))
                .bind(col!(vip))
                .bind(col!(opt source_room_id))
                .bind(col!(opt source_id))
                .bind(col!(opt raw))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            report.messages_inserted = done.rows_affected();
            report.duplicates = ms.len() as u64 - done.rows_affected();
        }
        if !ns.is_empty() {
            let done = sqlx::query(INSERT_NOTICES)
                .bind(ns.iter().map(|n| n.channel.as_str()).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| n.msg_id.as_deref()).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| n.message.as_str()).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| n.received_at).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| Some(n.tags.as_str()).filter(|t| !t.is_empty())).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| n.notice_at).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| Some(n.key.as_str()).filter(|k| !k.is_empty())).collect::<Vec<_>>())
                .bind(ns.iter().map(|n| n.raw.as_deref()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            report.notices_inserted = done.rows_affected();
        }
        report.events_inserted = Self::write_events(&mut tx, es, shape).await?;
        tx.commit().await.map_err(classify)?;
        Ok(report)
    }
}

impl PgStore {
    /// [`Store::write`] without the trait: one batch, one transaction, one connection (the
    /// benchmark's database-only limits set the connection count themselves).
    pub async fn write_one(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        self.write_part(&batch.messages, &batch.notices, &batch.events).await
    }

    /// Binary `COPY` of `ms` straight into `table` (a table shaped like `chat_messages`), no
    /// dedupe, one transaction: the physical ceiling the benchmark compares against.
    pub async fn copy_plain(&self, table: &str, ms: &[ChatMessage]) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let c: &mut PgConnection = &mut tx;
        let statement = copy::COPY_DIRECT.replacen("chat_messages", table, 1);
        let mut copy_in = c.copy_in_raw(&statement).await?;
        copy_in.send(copy::encode(&ms.iter().collect::<Vec<_>>())).await?;
        let rows = copy_in.finish().await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Events, in `tx`: all but ROOMSTATE in one statement, each ROOMSTATE (rare: one per
    /// JOIN or mode change) on its own, in the order read, since each depends on the last.
    async fn write_events(tx: &mut PgConnection, es: &[ChatEvent], shape: Shape) -> Result<u64, Failure> {
        let (rooms, others): (Vec<&ChatEvent>, Vec<&ChatEvent>) = es.iter().partition(|e| e.kind == "roomstate");
        let mut inserted = 0;
        if !others.is_empty() {
            macro_rules! col {
                ($f:ident) => {
                    others.iter().map(|e| e.$f).collect::<Vec<_>>()
                };
                (str $f:ident) => {
                    others.iter().map(|e| e.$f.as_str()).collect::<Vec<_>>()
                };
                (opt $f:ident) => {
                    others.iter().map(|e| e.$f.as_deref()).collect::<Vec<_>>()
                };
            }
            let done = sqlx::query(if shape.events { &PARTITIONED_SQL.events } else { INSERT_EVENTS })
                .bind(col!(str event_key))
                .bind(col!(str kind))
                .bind(col!(opt msg_id))
                .bind(col!(str channel))
                .bind(col!(opt room_id))
                .bind(col!(opt user_id))
                .bind(col!(opt login))
                .bind(col!(opt display_name))
                .bind(col!(opt badges))
                .bind(col!(opt badge_info))
                .bind(col!(opt color))
                .bind(col!(opt emotes))
                .bind(col!(opt text))
                .bind(col!(opt system_msg))
                .bind(others.iter().map(|e| Some(e.params.as_str()).filter(|p| !p.is_empty())).collect::<Vec<_>>())
                .bind(col!(cumulative_months))
                .bind(col!(streak_months))
                .bind(col!(opt sub_plan))
                .bind(col!(opt recipient_id))
                .bind(col!(opt recipient_login))
                .bind(col!(viewer_count))
                .bind(col!(ban_duration))
                .bind(col!(opt target_user_id))
                .bind(col!(opt target_login))
                .bind(col!(opt target_msg_id))
                .bind(col!(sent_at))
                .bind(col!(received_at))
                .bind(col!(opt raw))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            inserted += done.rows_affected();
        }
        for e in rooms {
            sqlx::query(LOCK_ROOM).bind(&e.channel).execute(&mut *tx).await.map_err(classify)?;
            let done = sqlx::query(if shape.events { &PARTITIONED_SQL.roomstate } else { INSERT_ROOMSTATE })
                .bind(&e.event_key)
                .bind(&e.channel)
                .bind(e.room_id.as_deref())
                .bind(Some(e.params.as_str()).filter(|p| !p.is_empty()))
                .bind(e.sent_at)
                .bind(e.received_at)
                .bind(e.raw.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        // One transaction: the second backend comes from the writer's pipelining (two batches
        // in flight); splitting each batch over two more connections measured 5–10 % slower
        // on 2 cores (README, Performance).
        self.write_part(&batch.messages, &batch.notices, &batch.events).await
    }

    /// Drops whole partitions older than `cutoff` (and deletes older rows of the default
    /// partitions and of `channel_notices` in chunks); see [`pg_partition::expire_before`].
    async fn expire_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<Expired, StoreError> {
        self.gate()?;
        let unavailable = |e: sqlx::Error| StoreError::Unavailable(WriteFailure::Driver(e).into());
        let r = pg_partition::expire_before(&self.pool, cutoff).await.map_err(unavailable)?;
        for p in &r.dropped {
            tracing::info!(
                "retention: dropped partition {} of {} ({} rows, all older than {cutoff})",
                p.partition,
                p.table,
                p.rows
            );
        }
        if !r.unpartitioned.is_empty() {
            tracing::warn!(
                "retention: {} not partitioned, so no rows were deleted from it (a DELETE of months of rows would bloat it for hours); partition it with `twitch-chat-logger migrate --partition`",
                r.unpartitioned.join(" and ")
            );
        }
        let mut tables: Vec<(&'static str, u64)> = Vec::new();
        for (t, n) in r.dropped.iter().map(|p| (p.table, p.rows)).chain(r.deleted.iter().copied()) {
            match tables.iter_mut().find(|(x, _)| *x == t) {
                Some((_, m)) => *m += n,
                None => tables.push((t, n)),
            }
        }
        tables.retain(|(_, n)| *n > 0);
        let partitions = r.dropped.iter().map(|p| format!("{} ({} rows)", p.partition, p.rows)).collect();
        Ok(Expired { tables, transactions: r.transactions, partitions })
    }

    async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), StoreError> {
        self.gate()?;
        let (kind, received_at) = match record {
            Record::Message(m) => ("chat_message", m.received_at),
            Record::Notice(n) => ("channel_notice", n.received_at),
            Record::Event(e) => ("chat_event", e.received_at),
        };
        // serde_json escapes control characters (NUL included), so the payload is valid text.
        let payload = serde_json::to_string(record).expect("records serialise");
        sqlx::query("INSERT INTO dead_letters (kind, payload, error, received_at) VALUES ($1, $2, $3, $4)")
            .bind(kind)
            .bind(payload)
            .bind(error.replace('\0', ""))
            .bind(received_at)
            .execute(&self.pool)
            .await
            .map_err(|e| match classify(e) {
                Failure::Decided(known) => known,
                // A dead letter is plain text in an unindexed column: an unknown refusal is rare
                // enough to count as the database's state, retried.
                Failure::Undecided(failure) => StoreError::Unavailable(failure.into()),
            })?;
        Ok(())
    }

    /// Two batches at once, on two of the pool's four connections (the rest: dead letters,
    /// partition upkeep, retention).
    fn max_in_flight(&self) -> usize {
        IN_FLIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass().host("db.example").port(5432).username("bot").database("twitch")
    }

    #[test]
    fn network_failures_are_transient_and_named_in_plain_words() {
        let io = |kind, text: &str| sqlx::Error::Io(std::io::Error::new(kind, text.to_string()));
        let cases = [
            (io(std::io::ErrorKind::ConnectionRefused, "refused"), "connection refused by db.example:5432"),
            (io(std::io::ErrorKind::TimedOut, "no answer"), "timeout: no answer from db.example:5432"),
            (
                io(std::io::ErrorKind::Other, "failed to lookup address information: Name or service not known"),
                "DNS failure: cannot resolve host db.example",
            ),
        ];
        for (e, want) in cases {
            match explain_error(&e, &opts()) {
                DbError::Transient(m) => assert!(m.starts_with(want), "{m}"),
                f => panic!("{f:?}"),
            }
        }
    }

    #[test]
    fn migration_bookkeeping_errors_are_fatal_and_say_what_to_do() {
        use sqlx::migrate::MigrateError as M;
        for (e, want) in [
            (M::VersionMissing(29990101000000), "a newer twitch-chat-logger migrated it"),
            (M::VersionMismatch(FIRST_MIGRATION), "checksum differs"),
            (M::Dirty(FIRST_MIGRATION), "marked as failed"),
        ] {
            match explain_migrate(e, &opts()) {
                DbError::Fatal(m) => assert!(m.contains(want), "{m}"),
                t => panic!("{t:?}"),
            }
        }
    }
}
