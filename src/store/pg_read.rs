//! [`LogReader`] on PostgreSQL: its own small pool of read-only connections with a statement
//! timeout, so a slow or hostile reader can neither hold the writer's connections nor run long.
//!
//! Every query is an index range scan: (channel, username, sent_at), (channel, user_id,
//! sent_at) or (channel, sent_at). Lists of months and days are skip scans (one index probe
//! per month or day found), never a scan of a user's or channel's whole history.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

use super::read::{LineKind, LogLine, LogReader, Order, ReadError, Who};

/// Connections the API may hold at once (the writer's pool is separate).
pub const READ_POOL_SIZE: u32 = 4;
/// Longest a read query may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a request waits for a free reading connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL [`LogReader`]. Clones share the pool.
#[derive(Clone)]
pub struct PgReader {
    pool: PgPool,
}

impl PgReader {
    /// A lazy pool on `opts` (the writer's connection options): connections open on first use.
    pub fn connect_lazy(opts: &PgConnectOptions) -> Self {
        let timeout_ms = STATEMENT_TIMEOUT.as_millis().to_string();
        let opts = opts.clone().application_name("twitch-chat-logger-api").options([
            ("statement_timeout", timeout_ms.as_str()),
            ("default_transaction_read_only", "on"),
            ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        PgReader { pool }
    }

    /// The pool (tests look at its sessions' settings).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const COLUMNS: &str = "message_id, channel, room_id, user_id, username, display_name, text, badges::text AS badges, \
     badge_info::text AS badge_info, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg, \
     reply_parent_msg_id, reply_parent_user_login, sent_at";

/// The column a [`Who`] is matched on: one of two fixed names, never input.
fn who_column(who: &Who) -> (&'static str, &str) {
    match who {
        Who::Login(l) => ("username", l.as_str()),
        Who::Id(id) => ("user_id", id.as_str()),
    }
}

/// The statements, public so that a test can EXPLAIN each one on a large table.
#[doc(hidden)]
pub mod sql {
    use super::{order_sql, Order, COLUMNS};

    /// A skip scan: the newest row, then the newest row before that row's month, …
    pub fn user_months(col: &str) -> String {
        format!(
            "WITH RECURSIVE m(t) AS (
                (SELECT date_trunc('month', sent_at AT TIME ZONE 'UTC') FROM chat_messages
                  WHERE channel = $1 AND {col} = $2 ORDER BY sent_at DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT date_trunc('month', c.sent_at AT TIME ZONE 'UTC') FROM chat_messages c
                         WHERE c.channel = $1 AND c.{col} = $2 AND c.sent_at < (m.t AT TIME ZONE 'UTC')
                         ORDER BY c.sent_at DESC LIMIT 1)
                FROM m WHERE m.t IS NOT NULL
            )
            SELECT t FROM m WHERE t IS NOT NULL LIMIT $3"
        )
    }

    /// The same skip scan by day over (channel, sent_at).
    pub fn channel_days() -> String {
        "WITH RECURSIVE d(t) AS (
            (SELECT date_trunc('day', sent_at AT TIME ZONE 'UTC') FROM chat_messages
              WHERE channel = $1 ORDER BY sent_at DESC LIMIT 1)
            UNION ALL
            SELECT (SELECT date_trunc('day', c.sent_at AT TIME ZONE 'UTC') FROM chat_messages c
                     WHERE c.channel = $1 AND c.sent_at < (d.t AT TIME ZONE 'UTC')
                     ORDER BY c.sent_at DESC LIMIT 1)
            FROM d WHERE d.t IS NOT NULL
        )
        SELECT t FROM d WHERE t IS NOT NULL LIMIT $2"
            .to_string()
    }

    pub fn user_lines(col: &str, order: Order) -> String {
        format!(
            "SELECT {COLUMNS} FROM chat_messages
             WHERE channel = $1 AND {col} = $2 AND sent_at >= $3 AND sent_at < $4 {} LIMIT $5",
            order_sql(order)
        )
    }

    pub fn channel_lines(order: Order) -> String {
        format!(
            "SELECT {COLUMNS} FROM chat_messages
             WHERE channel = $1 AND sent_at >= $2 AND sent_at < $3 {} LIMIT $4",
            order_sql(order)
        )
    }

    /// A random instant between the first and the last line, then the first line from there:
    /// three index probes, whatever the history's size (lines after long gaps come up more).
    pub fn random_line(col: Option<&str>) -> String {
        let filter = col.map(|c| format!("AND {c} = $2")).unwrap_or_default();
        format!(
            "SELECT {COLUMNS} FROM chat_messages
             WHERE channel = $1 {filter} AND sent_at >= (
                SELECT lo + (hi - lo) * random() FROM (SELECT
                    (SELECT sent_at FROM chat_messages WHERE channel = $1 {filter} ORDER BY sent_at ASC LIMIT 1) AS lo,
                    (SELECT sent_at FROM chat_messages WHERE channel = $1 {filter} ORDER BY sent_at DESC LIMIT 1) AS hi) b)
             ORDER BY sent_at ASC LIMIT 1"
        )
    }
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::OldestFirst => "ORDER BY sent_at ASC, id ASC",
        Order::NewestFirst => "ORDER BY sent_at DESC, id DESC",
    }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn classify(e: sqlx::Error) -> ReadError {
    let timeout = match &e {
        sqlx::Error::PoolTimedOut => true,
        // 57014: query_canceled (statement_timeout).
        sqlx::Error::Database(d) => d.code().as_deref() == Some("57014"),
        _ => false,
    };
    if timeout {
        ReadError::Timeout(Box::new(e))
    } else {
        ReadError::Unavailable(Box::new(e))
    }
}

fn line(r: &PgRow) -> Result<LogLine, sqlx::Error> {
    Ok(LogLine {
        kind: LineKind::Chat,
        id: r.try_get("message_id")?,
        channel: r.try_get("channel")?,
        room_id: r.try_get("room_id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        display_name: r.try_get("display_name")?,
        text: r.try_get("text")?,
        system_text: String::new(),
        color: r.try_get("color")?,
        emotes: r.try_get("emotes")?,
        badges: r.try_get("badges")?,
        badge_info: r.try_get("badge_info")?,
        is_mod: r.try_get("is_mod")?,
        is_subscriber: r.try_get("is_subscriber")?,
        bits: r.try_get("bits")?,
        is_action: r.try_get("is_action")?,
        first_msg: r.try_get("first_msg")?,
        reply_parent_msg_id: r.try_get("reply_parent_msg_id")?,
        reply_parent_user_login: r.try_get("reply_parent_user_login")?,
        sent_at: r.try_get("sent_at")?,
        raw: None,
        tags: None,
    })
}

fn lines(rows: Vec<PgRow>) -> Result<Vec<LogLine>, ReadError> {
    rows.iter().map(line).collect::<Result<_, _>>().map_err(classify)
}

#[async_trait]
impl LogReader for PgReader {
    async fn room_ids(&self, channels: &[String]) -> Result<HashMap<String, String>, ReadError> {
        // One backward index probe per channel: its newest row that carries a room id.
        let rows = sqlx::query(
            "SELECT c.name, r.room_id FROM unnest($1::text[]) AS c(name)
             CROSS JOIN LATERAL (
                 SELECT room_id FROM chat_messages m
                 WHERE m.channel = c.name AND m.room_id IS NOT NULL
                 ORDER BY m.sent_at DESC LIMIT 1
             ) r",
        )
        .bind(channels)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn user_months(&self, channel: &str, who: &Who, limit: usize) -> Result<Vec<(i32, u32)>, ReadError> {
        let (col, value) = who_column(who);
        let sql = sql::user_months(col);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel)
            .bind(value)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|r| {
                let t: NaiveDateTime = r.try_get(0)?;
                Ok((chrono::Datelike::year(&t), chrono::Datelike::month(&t)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn channel_days(&self, channel: &str, limit: usize) -> Result<Vec<NaiveDate>, ReadError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql::channel_days()))
            .bind(channel)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|r| Ok(r.try_get::<NaiveDateTime, _>(0)?.date()))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn user_lines(
        &self,
        channel: &str,
        who: &Who,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<LogLine>, ReadError> {
        let (col, value) = who_column(who);
        let sql = sql::user_lines(col, order);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel)
            .bind(value)
            .bind(from)
            .bind(to)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        lines(rows)
    }

    async fn channel_lines(
        &self,
        channel: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<LogLine>, ReadError> {
        let sql = sql::channel_lines(order);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(channel)
            .bind(from)
            .bind(to)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        lines(rows)
    }

    async fn random_line(&self, channel: &str, who: Option<&Who>) -> Result<Option<LogLine>, ReadError> {
        // A random instant between the first and the last line, then the first line from there:
        // three index probes, whatever the history's size (lines after long gaps come up more).
        let (col, value) = match who {
            Some(w) => {
                let (col, v) = who_column(w);
                (Some(col), Some(v))
            }
            None => (None, None),
        };
        let sql = sql::random_line(col);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(channel);
        if let Some(v) = value {
            q = q.bind(v);
        }
        let row = q.fetch_optional(&self.pool).await.map_err(classify)?;
        row.as_ref().map(line).transpose().map_err(classify)
    }
}
