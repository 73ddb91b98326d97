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

use super::read::{who_column, LineKind, LogLine, LogReader, Order, ReadError, Who};

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

/// A chat message as a log line.
const MESSAGE_COLUMNS: &str =
    "1 AS kind, message_id AS line_id, channel, room_id, user_id, username, display_name, text, \
     '' AS system_text, badges::text AS badges, badge_info::text AS badge_info, color, is_mod, is_subscriber, bits, \
     is_action, emotes, first_msg, reply_parent_msg_id, reply_parent_user_login, sent_at, raw, \
     NULL::text AS msg_id, NULL::text AS params, NULL::integer AS ban_duration, NULL::text AS target_user_id, id";

/// A USERNOTICE (4) or CLEARCHAT (2) as a log line; a CLEARCHAT's system text is justlog's.
const EVENT_COLUMNS: &str = "CASE WHEN kind = 'clearchat' THEN 2 ELSE 4 END AS kind, \
     CASE WHEN kind = 'clearchat' THEN '' ELSE event_key END AS line_id, channel, room_id, user_id, \
     COALESCE(login, '') AS username, display_name, COALESCE(text, '') AS text, \
     CASE WHEN kind <> 'clearchat' THEN COALESCE(system_msg, '') \
          WHEN target_login IS NULL THEN 'chat has been cleared' \
          WHEN ban_duration IS NULL THEN target_login || ' has been banned' \
          ELSE target_login || ' has been timed out for ' || ban_duration || ' seconds' END AS system_text, \
     badges::text AS badges, badge_info::text AS badge_info, color, false AS is_mod, false AS is_subscriber, \
     0 AS bits, false AS is_action, emotes, NULL::boolean AS first_msg, NULL::text AS reply_parent_msg_id, \
     NULL::text AS reply_parent_user_login, sent_at, raw, msg_id, params::text AS params, ban_duration, \
     target_user_id, id";

/// The statements, public so that a test can EXPLAIN each one on a large table. Each reads
/// chat_messages and chat_events by index range and merges the two.
#[doc(hidden)]
pub mod sql {
    use super::{EVENT_COLUMNS, MESSAGE_COLUMNS};
    use crate::store::read::{sql_dir as dir, Order, EVENT_KINDS};

    /// A skip scan over one table: its newest row, then the newest row before that row's
    /// period, … (one index probe per period found).
    fn skip_scan(table: &str, unit: &str, filter: &str) -> String {
        format!(
            "WITH RECURSIVE p(t) AS (
                (SELECT date_trunc('{unit}', sent_at AT TIME ZONE 'UTC') FROM {table}
                  WHERE {filter} ORDER BY sent_at DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT date_trunc('{unit}', sent_at AT TIME ZONE 'UTC') FROM {table}
                         WHERE {filter} AND sent_at < (p.t AT TIME ZONE 'UTC')
                         ORDER BY sent_at DESC LIMIT 1)
                FROM p WHERE p.t IS NOT NULL
            )
            SELECT t FROM p WHERE t IS NOT NULL"
        )
    }

    /// The months in which a user has lines in a channel, newest first ($1 channel, $2 user, $3 limit).
    pub fn user_months(msg_col: &str, event_col: &str) -> String {
        format!(
            "SELECT t FROM ({}) m UNION SELECT t FROM ({}) e ORDER BY t DESC LIMIT $3",
            skip_scan("chat_messages", "month", &format!("channel = $1 AND {msg_col} = $2")),
            skip_scan("chat_events", "month", &format!("channel = $1 AND {event_col} = $2 AND {EVENT_KINDS}")),
        )
    }

    /// The days on which a channel has lines, newest first ($1 channel, $2 limit).
    pub fn channel_days() -> String {
        format!(
            "SELECT t FROM ({}) m UNION SELECT t FROM ({}) e ORDER BY t DESC LIMIT $2",
            skip_scan("chat_messages", "day", "channel = $1"),
            skip_scan("chat_events", "day", &format!("channel = $1 AND {EVENT_KINDS}")),
        )
    }

    /// A user's lines in a channel in [$3, $4), at most $5.
    pub fn user_lines(msg_col: &str, event_col: &str, order: Order) -> String {
        let d = dir(order);
        format!(
            "(SELECT {MESSAGE_COLUMNS} FROM chat_messages
               WHERE channel = $1 AND {msg_col} = $2 AND sent_at >= $3 AND sent_at < $4
               ORDER BY sent_at {d}, id {d} LIMIT $5)
             UNION ALL
             (SELECT {EVENT_COLUMNS} FROM chat_events
               WHERE channel = $1 AND {event_col} = $2 AND {EVENT_KINDS} AND sent_at >= $3 AND sent_at < $4
               ORDER BY sent_at {d}, id {d} LIMIT $5)
             ORDER BY sent_at {d}, kind {d}, id {d} LIMIT $5"
        )
    }

    /// A channel's lines in [$2, $3), at most $4.
    pub fn channel_lines(order: Order) -> String {
        let d = dir(order);
        format!(
            "(SELECT {MESSAGE_COLUMNS} FROM chat_messages
               WHERE channel = $1 AND sent_at >= $2 AND sent_at < $3
               ORDER BY sent_at {d}, id {d} LIMIT $4)
             UNION ALL
             (SELECT {EVENT_COLUMNS} FROM chat_events
               WHERE channel = $1 AND {EVENT_KINDS} AND sent_at >= $2 AND sent_at < $3
               ORDER BY sent_at {d}, id {d} LIMIT $4)
             ORDER BY sent_at {d}, kind {d}, id {d} LIMIT $4"
        )
    }

    /// A random instant between the first and the last message, then the first message from
    /// there: three index probes, whatever the history's size (lines after long gaps come up
    /// more often). Chat messages only, as justlog's random.
    pub fn random_line(col: Option<&str>) -> String {
        let filter = col.map(|c| format!("AND {c} = $2")).unwrap_or_default();
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages
             WHERE channel = $1 {filter} AND sent_at >= (
                SELECT lo + (hi - lo) * random() FROM (SELECT
                    (SELECT sent_at FROM chat_messages WHERE channel = $1 {filter} ORDER BY sent_at ASC LIMIT 1) AS lo,
                    (SELECT sent_at FROM chat_messages WHERE channel = $1 {filter} ORDER BY sent_at DESC LIMIT 1) AS hi) b)
             ORDER BY sent_at ASC LIMIT 1"
        )
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
    let kind = match r.try_get::<i32, _>("kind")? {
        2 => LineKind::ClearChat,
        4 => LineKind::UserNotice,
        _ => LineKind::Chat,
    };
    Ok(LogLine {
        kind,
        id: r.try_get("line_id")?,
        channel: r.try_get("channel")?,
        room_id: r.try_get("room_id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        display_name: r.try_get("display_name")?,
        text: r.try_get("text")?,
        system_text: r.try_get("system_text")?,
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
        raw: r.try_get("raw")?,
        msg_id: r.try_get("msg_id")?,
        params: r.try_get("params")?,
        ban_duration: r.try_get("ban_duration")?,
        target_user_id: r.try_get("target_user_id")?,
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
        let (msg_col, event_col, value) = who_column(who);
        let sql = sql::user_months(msg_col, event_col);
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
        let (msg_col, event_col, value) = who_column(who);
        let sql = sql::user_lines(msg_col, event_col, order);
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
        let (col, value) = match who {
            Some(w) => {
                let (col, _, v) = who_column(w);
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
