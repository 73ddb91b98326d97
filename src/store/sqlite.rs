//! The embedded SQLite file behind the [`Store`] seam: what runs when no database server is
//! configured. WAL mode (readers such as the `sqlite3` shell never block the writer), one
//! writing connection, multi-row inserts in one `BEGIN IMMEDIATE` transaction per batch, and
//! SQLite's result codes sorted into the writer's two classes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Batch, ChannelNotice, ChatEvent, ChatMessage, DbError, Expired, Record, Store, StoreError, WriteReport};

/// The migrations in `migrations_sqlite/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// How long a write waits for another program's write lock (a `BEGIN IMMEDIATE` in the
/// `sqlite3` shell) before it fails as unavailable and the writer retries or spools. Short
/// next to `batch.durable_within` (5 s by default), so a lock costs retries, not rows.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows per statement: 28 columns (events) × 400 rows stays under SQLite's 32,766 variables.
const ROWS_PER_STATEMENT: usize = 400;
/// Rows deleted per retention transaction: the writer waits at most one chunk.
pub const EXPIRE_CHUNK: i64 = 5000;
/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Timestamps as stored: ISO 8601 in UTC, microseconds (PostgreSQL's precision), fixed width,
/// so that text order is time order and SQLite's date functions read them.
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Until migrations have succeeded the store refuses to write (the writer keeps the rows).
#[derive(Debug)]
struct Gate {
    open: AtomicBool,
    why: Mutex<String>,
}

/// The [`Store`] on one SQLite file. Clones share the connections and the gate.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// One connection: SQLite has one writer at a time anyway, and a second one of ours
    /// would only wait for the first.
    write: SqlitePool,
    /// For `check --connect`, `/readyz` and `copy`: reads in WAL mode never wait for the writer.
    read: SqlitePool,
    gate: Arc<Gate>,
}

/// The connection settings every connection of ours uses.
pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Durable at commit, as PostgreSQL's default: a committed batch survives a power cut.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
}

impl SqliteStore {
    /// The store for the file at `path`; nothing is opened or created until [`Self::migrate`].
    pub fn open_lazy(path: &Path) -> Self {
        let opts = connect_options(path);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(opts.clone());
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts.create_if_missing(false).read_only(true));
        let gate = Gate { open: AtomicBool::new(false), why: Mutex::new("not opened yet".to_string()) };
        SqliteStore { path: path.to_path_buf(), write, read, gate: Arc::new(gate) }
    }

    /// The file, as configured (relative to the working directory, or absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's absolute path, for the start-up line and `check`.
    pub fn absolute_path(&self) -> PathBuf {
        std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone())
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

    /// Whether a reading connection answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// Checks the path, creates the file and its directory if missing, applies pending
    /// migrations, and opens the store for writing.
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.check_path()?;
        self.set_not_ready("applying migrations");
        let mut conn = self.write.acquire().await.map_err(|e| self.explain(&e))?;
        // `run_direct`: `run(&mut *conn)` is not `Send` enough to be spawned (as in postgres.rs).
        MIGRATOR.run_direct(None, &mut *conn, false).await.map_err(|e| self.explain_migrate(e))?;
        let mode: String =
            sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await.map_err(|e| self.explain(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "{} is in journal mode {mode}, not WAL (its filesystem may not support it): readers can block the writer",
                self.absolute_path().display()
            );
        }
        drop(conn);
        self.gate.open.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens the file read-only once, without creating or migrating anything (`check
    /// --connect`). Returns SQLite's version and how many of our migrations the file has.
    pub async fn probe(&self) -> Result<(String, usize), DbError> {
        if !self.path.exists() {
            self.check_path()?;
            return Ok((sqlite_version().await, 0));
        }
        self.check_path()?;
        let version: String =
            sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&self.read).await.map_err(|e| self.explain(&e))?;
        let has_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.read)
        .await
        .map_err(|e| self.explain(&e))?;
        let applied: i64 = if has_table {
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.read)
                .await
                .map_err(|e| self.explain(&e))?
        } else {
            0
        };
        Ok((version, applied as usize))
    }

    /// What must hold before SQLite opens the path: its errors would not say which file or why.
    fn check_path(&self) -> Result<(), DbError> {
        let shown = self.absolute_path();
        let shown = shown.display();
        if self.path.is_dir() {
            return Err(DbError::Fatal(format!(
                "database.url: {shown} is a directory, not a SQLite file — point it at a file in it, e.g. sqlite://{}",
                self.path.join("chat.db").display()
            )));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return Err(DbError::Fatal(format!(
                    "database.url: cannot create the directory {} for the SQLite file {shown}: {e} — create it (writable by this user) or choose another path",
                    dir.display()
                )));
            }
        }
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            use std::io::Read;
            let mut head = [0u8; 16];
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            // An empty file is what SQLite makes a new database from.
            if n > 0 && head != *HEADER {
                return Err(DbError::Fatal(format!(
                    "database.url: {shown} is not a SQLite database (it does not start with SQLite's header) — move that file away, or point database.url at another path"
                )));
            }
        }
        Ok(())
    }

    /// Says what an error opening or migrating the file means, naming the file.
    fn explain(&self, e: &sqlx::Error) -> DbError {
        let shown = self.absolute_path();
        let shown = shown.display();
        let dir = self.absolute_path().parent().map(|d| d.display().to_string()).unwrap_or_default();
        match e {
            sqlx::Error::Database(db) => {
                let code: i64 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
                let msg = db.message();
                match code & 0xff {
                    5 | 6 => DbError::Transient(format!(
                        "{shown} is locked by another program ({msg}); waiting for it to finish its write"
                    )),
                    13 => DbError::Transient(format!("the disk holding {shown} is full ({msg}); free some space")),
                    14 | 8 | 3 | 23 => DbError::Fatal(format!(
                        "cannot write the SQLite file {shown} ({msg}, code {code}) — the directory {dir} and the file must be writable by this user (SQLite also creates {shown}-wal and -shm beside it)"
                    )),
                    26 | 11 => DbError::Fatal(format!(
                        "{shown} is not a usable SQLite database ({msg}) — move it away (the logger makes a new one), or restore it from a backup"
                    )),
                    _ => DbError::Fatal(format!("SQLite file {shown}: {msg} (code {code})")),
                }
            }
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => DbError::Fatal(format!(
                "cannot open the SQLite file {shown}: {io} — the directory {dir} must be writable by this user"
            )),
            sqlx::Error::PoolTimedOut => DbError::Transient(format!("timeout: no connection to {shown}")),
            other => DbError::Fatal(format!("cannot use the SQLite file {shown}: {other}")),
        }
    }

    fn explain_migrate(&self, e: sqlx::migrate::MigrateError) -> DbError {
        use sqlx::migrate::MigrateError as M;
        let shown = self.absolute_path();
        let shown = shown.display();
        match e {
            M::Execute(e) => self.explain(&e),
            M::ExecuteMigration(e, version) => match self.explain(&e) {
                t @ DbError::Transient(_) => t,
                DbError::Fatal(why) => DbError::Fatal(format!(
                    "migration {version} of {shown} failed: {why} — nothing was changed (each migration runs in one transaction); a file made by another program needs a path of its own"
                )),
            },
            M::VersionMissing(v) => DbError::Fatal(format!(
                "{shown} has migration {v}, which this version does not know — a newer twitch-chat-logger wrote it (run that version or a newer one)"
            )),
            M::VersionMismatch(v) => DbError::Fatal(format!(
                "migration {v} of {shown} was applied from a different text than this version's — run the version that made the file"
            )),
            M::Dirty(v) => DbError::Fatal(format!(
                "migration {v} is marked as failed in {shown} — check the file, then delete that row of _sqlx_migrations and start again"
            )),
            other => DbError::Fatal(format!("migrating {shown} failed: {other}")),
        }
    }

    fn gate(&self) -> Result<(), StoreError> {
        self.schema_ready().map_err(|why| StoreError::Unavailable(WriteFailure::SchemaNotReady(why).into()))
    }
}

async fn sqlite_version() -> String {
    match SqliteConnection::connect("sqlite::memory:").await {
        Ok(mut c) => sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&mut c).await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// What went wrong with a write: the source of the [`StoreError`] the writer gets.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// Migrations have not succeeded yet; the text is why, as `/readyz` shows it.
    #[error("database schema not ready yet: {0}")]
    SchemaNotReady(String),
    /// SQLite refused a statement: its message and extended result code.
    #[error("{} (SQLite code {})", .0.message(), .0.code().unwrap_or_default())]
    Sqlite(Box<dyn sqlx::error::DatabaseError>),
    /// Anything else from the driver (I/O, a pool timeout). Not chained: its text has it.
    #[error("{0}")]
    Driver(sqlx::Error),
}

impl WriteFailure {
    /// SQLite's extended result code, when SQLite refused a statement.
    pub fn code(&self) -> Option<i64> {
        match self {
            WriteFailure::Sqlite(db) => db.code().and_then(|c| c.parse().ok()),
            _ => None,
        }
    }
}

/// Primary result codes about the rows themselves: retrying the same batch fails again, so
/// the writer splits it and dead-letters the bad row. CONSTRAINT (unique, check, NOT NULL,
/// a trigger's RAISE), TOOBIG (over SQLITE_MAX_LENGTH), MISMATCH, RANGE.
const ROW_CODES: [i64; 4] = [19, 18, 20, 25];

/// Sorts a failed write: row-level codes are `Rejected`; everything else (BUSY and LOCKED
/// from another program's lock, FULL, READONLY, IOERR, CANTOPEN, CORRUPT, NOMEM, an I/O error)
/// is about the file or the machine, so it is `Unavailable`: the writer retries and spools,
/// and never dead-letters good rows because of a full disk.
pub fn classify(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => {
            let failure = WriteFailure::Sqlite(db);
            match failure.code() {
                Some(code) if ROW_CODES.contains(&(code & 0xff)) => StoreError::Rejected(failure.into()),
                _ => StoreError::Unavailable(failure.into()),
            }
        }
        other => StoreError::Unavailable(WriteFailure::Driver(other).into()),
    }
}

const MESSAGE_COLUMNS: &str = "message_id, channel, room_id, user_id, username, display_name, text, badges, color, \
     is_mod, is_subscriber, bits, is_action, emotes, first_msg, reply_parent_msg_id, reply_parent_user_login, \
     sent_at, received_at, badge_info, returning_chatter, vip, source_room_id, source_id, raw";
const NOTICE_COLUMNS: &str = "channel, msg_id, message, received_at, tags, notice_at, notice_key, raw";
const EVENT_COLUMNS: &str = "event_key, kind, msg_id, channel, room_id, user_id, login, display_name, badges, \
     badge_info, color, emotes, text, system_msg, params, cumulative_months, streak_months, sub_plan, recipient_id, \
     recipient_login, viewer_count, ban_duration, target_user_id, target_login, target_msg_id, sent_at, received_at, raw";

// As PostgreSQL's: a ROOMSTATE is merged onto the room's last stored state and stored only if
// that changes it. No lock needed: this connection is the file's only writer.
const INSERT_ROOMSTATE: &str = "
INSERT INTO chat_events (event_key, kind, channel, room_id, params, sent_at, received_at, raw)
SELECT ?1, 'roomstate', ?2, ?3, next.state, ?5, ?6, ?7
FROM (SELECT json_patch(COALESCE(last.params, '{}'), COALESCE(?4, '{}')) AS state, last.params AS was
      FROM (SELECT (SELECT params FROM chat_events WHERE kind = 'roomstate' AND channel = ?2
                    ORDER BY id DESC LIMIT 1) AS params) last) next
WHERE next.was IS NULL OR json(next.state) <> json(next.was)
ON CONFLICT DO NOTHING";

/// `INSERT INTO table (columns) VALUES (?, …), … ON CONFLICT DO NOTHING` for `rows` rows.
fn insert_sql(table: &str, columns: &str, rows: usize) -> String {
    let n = columns.split(',').count();
    let one = format!("({})", vec!["?"; n].join(", "));
    format!("INSERT INTO {table} ({columns}) VALUES {} ON CONFLICT DO NOTHING", vec![one; rows].join(", "))
}

impl SqliteStore {
    /// The inserts, in one `BEGIN IMMEDIATE` transaction.
    async fn write_tx(
        conn: &mut SqliteConnection,
        ms: &[ChatMessage],
        ns: &[ChannelNotice],
        es: &[ChatEvent],
    ) -> Result<WriteReport, sqlx::Error> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut report = WriteReport::default();
        for chunk in ms.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql("chat_messages", MESSAGE_COLUMNS, chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in chunk {
                q = q
                    .bind(m.message_id.as_str())
                    .bind(m.channel.as_str())
                    .bind(m.room_id.as_deref())
                    .bind(m.user_id.as_deref())
                    .bind(m.username.as_str())
                    .bind(m.display_name.as_deref())
                    .bind(m.text.as_str())
                    .bind(m.badges.as_str())
                    .bind(m.color.as_deref())
                    .bind(m.is_mod)
                    .bind(m.is_subscriber)
                    .bind(m.bits)
                    .bind(m.is_action)
                    .bind(m.emotes.as_deref())
                    .bind(m.first_msg)
                    .bind(m.reply_parent_msg_id.as_deref())
                    .bind(m.reply_parent_user_login.as_deref())
                    .bind(timestamp(&m.sent_at))
                    .bind(timestamp(&m.received_at))
                    .bind(m.badge_info.as_deref())
                    .bind(m.returning_chatter)
                    .bind(m.vip)
                    .bind(m.source_room_id.as_deref())
                    .bind(m.source_id.as_deref())
                    .bind(m.raw.as_deref());
            }
            let done = q.execute(&mut *tx).await?;
            report.messages_inserted += done.rows_affected();
            report.duplicates += chunk.len() as u64 - done.rows_affected();
        }
        for chunk in ns.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql("channel_notices", NOTICE_COLUMNS, chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for n in chunk {
                // As PostgreSQL's insert: records spooled by older versions have no tags and no key.
                let tags = if n.tags.is_empty() { "{}" } else { n.tags.as_str() };
                q = q
                    .bind(n.channel.as_str())
                    .bind(n.msg_id.as_deref())
                    .bind(n.message.as_str())
                    .bind(timestamp(&n.received_at))
                    .bind(tags)
                    .bind(timestamp(&n.notice_at.unwrap_or(n.received_at)))
                    .bind(Some(n.key.as_str()).filter(|k| !k.is_empty()))
                    .bind(n.raw.as_deref());
            }
            report.notices_inserted += q.execute(&mut *tx).await?.rows_affected();
        }
        report.events_inserted = Self::write_events(&mut tx, es).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// One batch in one transaction (the benchmark's SQLite-only limit calls it directly).
    pub async fn write_one(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        self.gate()?;
        let mut conn =
            self.write.acquire().await.map_err(|e| StoreError::Unavailable(WriteFailure::Driver(e).into()))?;
        Self::write_tx(&mut conn, &batch.messages, &batch.notices, &batch.events).await.map_err(classify)
    }

    /// Events in the open transaction: all but ROOMSTATE in multi-row statements, each
    /// ROOMSTATE on its own in the order read (each depends on the last).
    async fn write_events(conn: &mut SqliteConnection, es: &[ChatEvent]) -> Result<u64, sqlx::Error> {
        let (rooms, others): (Vec<&ChatEvent>, Vec<&ChatEvent>) = es.iter().partition(|e| e.kind == "roomstate");
        let mut inserted = 0;
        for chunk in others.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql("chat_events", EVENT_COLUMNS, chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                let params = if e.params.is_empty() { "{}" } else { e.params.as_str() };
                q = q
                    .bind(e.event_key.as_str())
                    .bind(e.kind.as_str())
                    .bind(e.msg_id.as_deref())
                    .bind(e.channel.as_str())
                    .bind(e.room_id.as_deref())
                    .bind(e.user_id.as_deref())
                    .bind(e.login.as_deref())
                    .bind(e.display_name.as_deref())
                    .bind(e.badges.as_deref())
                    .bind(e.badge_info.as_deref())
                    .bind(e.color.as_deref())
                    .bind(e.emotes.as_deref())
                    .bind(e.text.as_deref())
                    .bind(e.system_msg.as_deref())
                    .bind(params)
                    .bind(e.cumulative_months)
                    .bind(e.streak_months)
                    .bind(e.sub_plan.as_deref())
                    .bind(e.recipient_id.as_deref())
                    .bind(e.recipient_login.as_deref())
                    .bind(e.viewer_count)
                    .bind(e.ban_duration)
                    .bind(e.target_user_id.as_deref())
                    .bind(e.target_login.as_deref())
                    .bind(e.target_msg_id.as_deref())
                    .bind(timestamp(&e.sent_at))
                    .bind(timestamp(&e.received_at))
                    .bind(e.raw.as_deref());
            }
            inserted += q.execute(&mut *conn).await?.rows_affected();
        }
        for e in rooms {
            let done = sqlx::query(INSERT_ROOMSTATE)
                .bind(e.event_key.as_str())
                .bind(e.channel.as_str())
                .bind(e.room_id.as_deref())
                .bind(Some(e.params.as_str()).filter(|p| !p.is_empty()))
                .bind(timestamp(&e.sent_at))
                .bind(timestamp(&e.received_at))
                .bind(e.raw.as_deref())
                .execute(&mut *conn)
                .await?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }

    /// Deletes up to [`EXPIRE_CHUNK`] rows of `table` older than `cutoff` in one transaction;
    /// returns how many.
    async fn expire_chunk(&self, table: &str, column: &str, cutoff: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {column} < ? ORDER BY {column} LIMIT {EXPIRE_CHUNK})"
        );
        let mut conn =
            self.write.acquire().await.map_err(|e| StoreError::Unavailable(WriteFailure::Driver(e).into()))?;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cutoff).execute(&mut *conn).await.map_err(classify)?;
        Ok(done.rows_affected())
    }
}

/// The tables retention empties, with the time column it goes by.
const EXPIRING: [(&str, &str); 4] = [
    ("chat_messages", "sent_at"),
    ("channel_notices", "notice_at"),
    ("chat_events", "sent_at"),
    ("dead_letters", "failed_at"),
];

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        self.write_one(batch).await
    }

    async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), StoreError> {
        self.gate()?;
        let kind = match record {
            Record::Message(_) => "chat_message",
            Record::Notice(_) => "channel_notice",
            Record::Event(_) => "chat_event",
        };
        let received_at = record.received_at();
        let payload = serde_json::to_string(record).expect("records serialise");
        sqlx::query("INSERT INTO dead_letters (kind, payload, error, received_at, failed_at) VALUES (?, ?, ?, ?, ?)")
            .bind(kind)
            .bind(payload)
            .bind(error)
            .bind(timestamp(&received_at))
            .bind(timestamp(&Utc::now()))
            .execute(&self.write)
            .await
            .map_err(|e| match classify(e) {
                // A dead letter is plain text in an unindexed table: a refusal is the file's
                // state (e.g. over SQLITE_MAX_LENGTH is caught by the writer's file fallback).
                StoreError::Rejected(c) => StoreError::Unavailable(c),
                other => other,
            })?;
        Ok(())
    }

    async fn expire_before(&self, cutoff: DateTime<Utc>) -> Result<Expired, StoreError> {
        self.gate()?;
        let cutoff = timestamp(&cutoff);
        let mut expired = Expired::default();
        for (table, column) in EXPIRING {
            let mut deleted = 0;
            loop {
                let n = self.expire_chunk(table, column, &cutoff).await?;
                deleted += n;
                expired.transactions += 1;
                if n < EXPIRE_CHUNK as u64 {
                    break;
                }
                // Between chunks the writer gets the connection.
                tokio::task::yield_now().await;
            }
            if deleted > 0 {
                expired.tables.push((table, deleted));
            }
        }
        Ok(expired)
    }
}

/// Reading the file's rows for `copy` (and for tests comparing both backends).
impl SqliteStore {
    /// Opens an existing file for reading only (`copy --from`): nothing is created or migrated.
    pub async fn open_existing(path: &Path) -> Result<SqliteStore, DbError> {
        let store = SqliteStore::open_lazy(path);
        if !path.is_file() {
            return Err(DbError::Fatal(format!(
                "{} does not exist or is not a file — give the path of the logger's SQLite file, e.g. sqlite://data/chat.db",
                store.absolute_path().display()
            )));
        }
        store.check_path()?;
        Ok(store)
    }

    /// The file's identity (made by its first migration): `copy` keeps checkpoints under it.
    pub async fn store_id(&self) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'store_id'").fetch_one(&self.read).await
    }

    /// The data tables, in creation order (`store_meta` and sqlx's bookkeeping left out).
    pub async fn tables(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
               AND name NOT IN ('_sqlx_migrations', 'store_meta') ORDER BY rowid",
        )
        .fetch_all(&self.read)
        .await
    }

    /// Rows of `table` after id `after` (`id` order, at most `limit`), each as a JSON object
    /// in PostgreSQL's shapes: booleans as true/false, JSON columns as JSON, the rest as stored.
    /// `id` comes separately, and is not in the object.
    pub async fn rows_as_json(
        &self,
        table: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, serde_json::Value)>, sqlx::Error> {
        let columns: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"
        )))
        .fetch_all(&self.read)
        .await?;
        let fields: Vec<String> = columns
            .iter()
            .filter(|(name, _)| name != "id")
            .map(|(name, ty)| {
                let value = match ty.to_ascii_uppercase().as_str() {
                    "BOOLEAN" => format!(
                        "CASE WHEN \"{name}\" IS NULL THEN NULL WHEN \"{name}\" THEN json('true') ELSE json('false') END"
                    ),
                    "JSONB" | "JSON" => format!("json(\"{name}\")"),
                    _ => format!("\"{name}\""),
                };
                format!("'{name}', {value}")
            })
            .collect();
        let sql = format!(
            "SELECT id, json_object({}) AS row FROM \"{table}\" WHERE id > ? ORDER BY id LIMIT ?",
            fields.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after).bind(limit).fetch_all(&self.read).await?;
        rows.into_iter()
            .map(|r| {
                let text: String = r.try_get("row")?;
                let value = serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(e.into()))?;
                Ok((r.try_get("id")?, value))
            })
            .collect()
    }

    /// Rows of `table` with an id above `after`, and the highest id (0 if none).
    pub async fn count_after(&self, table: &str, after: i64) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce(max(id), 0) FROM \"{table}\" WHERE id > ?"
        )))
        .bind(after)
        .fetch_one(&self.read)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(code: &str) -> sqlx::Error {
        #[derive(Debug)]
        struct E(String);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("e")
            }
        }
        impl std::error::Error for E {}
        impl sqlx::error::DatabaseError for E {
            fn message(&self) -> &str {
                "e"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.clone().into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        sqlx::Error::Database(Box::new(E(code.to_string())))
    }

    #[test]
    fn a_locked_full_or_unwritable_file_is_unavailable_and_a_bad_row_is_rejected() {
        // BUSY, BUSY_SNAPSHOT, LOCKED, FULL, READONLY, IOERR_WRITE, CANTOPEN, CORRUPT, NOMEM.
        for code in ["5", "517", "6", "13", "8", "778", "14", "11", "7"] {
            assert!(matches!(classify(db_error(code)), StoreError::Unavailable(_)), "code {code}");
        }
        // CONSTRAINT_UNIQUE, CONSTRAINT_CHECK, CONSTRAINT_NOTNULL, CONSTRAINT_TRIGGER, TOOBIG, MISMATCH.
        for code in ["2067", "275", "1299", "1811", "18", "20"] {
            assert!(matches!(classify(db_error(code)), StoreError::Rejected(_)), "code {code}");
        }
        let io = sqlx::Error::Io(std::io::Error::other("disk gone"));
        assert!(matches!(classify(io), StoreError::Unavailable(_)));
    }

    #[test]
    fn stored_timestamps_sort_as_text_in_time_order() {
        let a = DateTime::parse_from_rfc3339("2026-11-30T08:00:00.5Z").unwrap().with_timezone(&Utc);
        let b = DateTime::parse_from_rfc3339("2026-11-30T08:00:00.123456Z").unwrap().with_timezone(&Utc);
        let c = DateTime::parse_from_rfc3339("2026-11-30T08:00:01Z").unwrap().with_timezone(&Utc);
        assert_eq!(timestamp(&b), "2026-11-30T08:00:00.123456Z");
        assert!(timestamp(&b) < timestamp(&a) && timestamp(&a) < timestamp(&c));
    }
}
