//! PostgreSQL behind the [`Store`] seam: connection options, migrations, set-based inserts.

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;

use super::{Batch, ChannelNotice, ChatMessage, Record, Store, StoreError, WriteReport};
use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options from the config. No connection string is built from the parts, so a
/// password with `@`, `/`, `:` or `%` needs no escaping.
pub fn connect_options(cfg: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let opts = match cfg {
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
    match cfg {
        DatabaseConfig::Url(_) => "database.url".to_string(),
        DatabaseConfig::Fields { host, port, name, user, .. } => format!("{user}@{host}:{port}/{name}"),
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Wraps a pool.
    pub fn new(pool: PgPool) -> Self {
        PgStore { pool }
    }

    /// Makes a pool (connections are opened lazily and re-opened after failures).
    pub fn connect_lazy(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(connect_options(cfg)?);
        Ok(PgStore { pool })
    }

    /// The pool, for migrations and health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. A database made by the original's `init.sql` is upgraded in
    /// place: the first migration only adds what is missing.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }
}

/// SQLSTATE classes about the server's state, not the rows: retrying can succeed (connection,
/// resources, operator action or statement timeout, serialization/deadlock, lock not
/// available, transaction state, system/internal errors, a schema a person must fix, login).
const SERVER_STATE_CLASSES: [&str; 11] = ["08", "53", "57", "58", "40", "55", "25", "XX", "42", "3D", "28"];

/// How long the probe after a failed write may take before the database counts as unavailable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed write, classified by what the error is, before any probe.
enum Failure {
    /// The error's kind or SQLSTATE class decides it.
    Decided(StoreError),
    /// A class not known either way (e.g. 54000, an index row over the btree limit): a probe
    /// of the connection decides. The error's text.
    Undecided(String),
}

fn classify(e: sqlx::Error) -> Failure {
    let sqlx::Error::Database(db) = &e else { return Failure::Decided(StoreError::Unavailable(e.to_string())) };
    let code = db.code().unwrap_or_default().to_string();
    let text = format!("{} (SQLSTATE {code})", db.message());
    if code.starts_with("22") || code.starts_with("23") {
        // Data exception, integrity violation: about the rows themselves.
        Failure::Decided(StoreError::Rejected(text))
    } else if SERVER_STATE_CLASSES.iter().any(|c| code.starts_with(c)) {
        Failure::Decided(StoreError::Unavailable(text))
    } else {
        Failure::Undecided(text)
    }
}

/// After an undecided failure: if the database answers `SELECT 1` on the same connection right
/// after, the server is fine and the batch is at fault.
async fn probe(conn: &mut PgConnection, text: String) -> StoreError {
    // The failed transaction was dropped: sqlx rolls it back before the probe runs.
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn)).await {
        Ok(Ok(_)) => StoreError::Rejected(text),
        _ => StoreError::Unavailable(text),
    }
}

const INSERT_MESSAGES: &str = "
INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, display_name, text,
    badges, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg,
    reply_parent_msg_id, reply_parent_user_login, sent_at, received_at)
SELECT m, c, r, u, un, dn, t, b::jsonb, col, im, isub, bi, ia, em, fm, rp, rpu, sa, ra
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::bool[], $11::bool[], $12::int4[], $13::bool[], $14::text[],
    $15::bool[], $16::text[], $17::text[], $18::timestamptz[], $19::timestamptz[])
    AS x(m, c, r, u, un, dn, t, b, col, im, isub, bi, ia, em, fm, rp, rpu, sa, ra)
ON CONFLICT (message_id) DO NOTHING";

const INSERT_NOTICES: &str = "
INSERT INTO channel_notices (channel, msg_id, message, received_at)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])";

/// Batches at least this large are written on two connections at once: PostgreSQL spends
/// most of the time per row on its side, so a second backend nearly doubles throughput.
const PARALLEL_MIN: usize = 1000;

impl PgStore {
    /// One transaction: messages (deduplicated on `message_id`) and notices.
    async fn write_part(&self, ms: &[ChatMessage], ns: &[ChannelNotice]) -> Result<WriteReport, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match Self::write_tx(&mut conn, ms, ns).await {
            Ok(report) => Ok(report),
            Err(Failure::Decided(e)) => Err(e),
            Err(Failure::Undecided(text)) => Err(probe(&mut conn, text).await),
        }
    }

    /// The inserts, in one transaction on `conn` (kept for the probe if they fail).
    async fn write_tx(
        conn: &mut PgConnection,
        ms: &[ChatMessage],
        ns: &[ChannelNotice],
    ) -> Result<WriteReport, Failure> {
        let mut tx = conn.begin().await.map_err(classify)?;
        let mut report = WriteReport::default();
        if !ms.is_empty() {
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
            let done = sqlx::query(INSERT_MESSAGES)
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
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            report.notices_inserted = done.rows_affected();
        }
        tx.commit().await.map_err(classify)?;
        Ok(report)
    }
}

impl PgStore {
    /// One batch in one transaction, never split over two connections (the benchmark's
    /// database-only limit uses this to control the connection count itself).
    pub async fn write_one(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        self.write_part(&batch.messages, &batch.notices).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
        if batch.messages.len() < PARALLEL_MIN {
            return self.write_part(&batch.messages, &batch.notices).await;
        }
        // Two transactions. If one fails the writer retries the whole batch: the half that
        // committed is skipped by ON CONFLICT, so nothing is stored twice.
        let (a, b) = batch.messages.split_at(batch.messages.len() / 2);
        match tokio::join!(self.write_part(a, &batch.notices), self.write_part(b, &[])) {
            (Ok(x), Ok(y)) => Ok(WriteReport {
                messages_inserted: x.messages_inserted + y.messages_inserted,
                duplicates: x.duplicates + y.duplicates,
                notices_inserted: x.notices_inserted + y.notices_inserted,
            }),
            (Err(e @ StoreError::Unavailable(_)), _) | (_, Err(e @ StoreError::Unavailable(_))) => Err(e),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), StoreError> {
        let (kind, received_at) = match record {
            Record::Message(m) => ("chat_message", m.received_at),
            Record::Notice(n) => ("channel_notice", n.received_at),
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
                Failure::Undecided(text) => StoreError::Unavailable(text),
            })?;
        Ok(())
    }
}
