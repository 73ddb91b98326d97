//! [`LogReader`] on the SQLite file: its own small pool of read-only connections (WAL mode lets
//! them read beside the one writer, never blocking it), so a slow or hostile reader can neither
//! hold the writer's connection nor write.
//!
//! SQLite has no statement timeout. Before each request the connection gets a progress handler
//! (SQLite calls it every [`PROGRESS_OPS`] virtual-machine steps) that interrupts the statement
//! once [`STATEMENT_TIMEOUT`] has passed: SQLITE_INTERRUPT, answered 503, and the connection is
//! free again at once. A request still running a second later (a step that never reaches the
//! handler) is abandoned by [`tokio::time::timeout`]. Every query is an index range scan bounded
//! by its limit, as on PostgreSQL (`EXPLAIN QUERY PLAN` is tested), so the bound is a backstop,
//! not the plan.
//!
//! Timestamps are fixed-width ISO text in UTC (`sqlite::timestamp`): a month is the first 7
//! characters, a day the first 10, and a prefix sorts before every longer text it starts, so
//! `sent_at < '2024-06'` is "before June".

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, Sqlite};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use super::read::{who_column, LineKind, LogLine, LogReader, Order, ReadError, Who};
use super::sqlite::timestamp;

/// Connections the API may hold at once (the writer's connection is separate).
pub const READ_POOL_SIZE: u32 = 4;
/// Longest a read query may run before it is abandoned.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Virtual-machine steps between two looks at the clock (microseconds of work).
const PROGRESS_OPS: i32 = 1000;
/// Longest a request waits for a free reading connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a read waits on a lock (only a checkpoint truncating the WAL takes one readers see).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The SQLite [`LogReader`]. Clones share the pool.
#[derive(Clone)]
pub struct SqliteReader {
    pool: SqlitePool,
}

impl SqliteReader {
    /// A lazy read-only pool on the file at `path`: connections open on first use, and never
    /// create the file (the writer does, at migration).
    pub fn connect_lazy(path: &Path) -> Self {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        SqliteReader { pool }
    }

    /// The pool (tests look at its connections).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One integer from `sql`, under the same bound as every read (tests show the bound on a
    /// statement no route would send).
    #[doc(hidden)]
    pub async fn bounded_scalar(&self, sql: &str) -> Result<i64, ReadError> {
        let sql = sql.to_string();
        self.run(|mut conn| async move {
            let r = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await;
            (conn, r)
        })
        .await
    }

    /// Runs `f` on a connection of the pool within [`STATEMENT_TIMEOUT`]; past it the
    /// connection is dropped, not reused.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, ReadError>
    where
        F: FnOnce(PoolConnection<Sqlite>) -> Fut,
        Fut: Future<Output = (PoolConnection<Sqlite>, Result<T, sqlx::Error>)>,
    {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let deadline = std::time::Instant::now() + STATEMENT_TIMEOUT;
        conn.lock_handle()
            .await
            .map_err(classify)?
            .set_progress_handler(PROGRESS_OPS, move || std::time::Instant::now() < deadline);
        match tokio::time::timeout(STATEMENT_TIMEOUT + Duration::from_secs(1), f(conn)).await {
            Ok((_conn, r)) => r.map_err(classify),
            Err(elapsed) => Err(ReadError::Timeout(Box::new(elapsed))),
        }
    }
}

/// A chat message as a log line.
const MESSAGE_COLUMNS: &str =
    "1 AS kind, message_id AS line_id, channel, room_id, user_id, username, display_name, text, \
     '' AS system_text, badges, badge_info, color, is_mod, is_subscriber, bits, \
     is_action, emotes, first_msg, reply_parent_msg_id, reply_parent_user_login, sent_at, raw, \
     NULL AS msg_id, NULL AS params, NULL AS ban_duration, NULL AS target_user_id, id";

/// A USERNOTICE (4) or CLEARCHAT (2) as a log line; a CLEARCHAT's system text is justlog's.
const EVENT_COLUMNS: &str = "CASE WHEN kind = 'clearchat' THEN 2 ELSE 4 END AS kind, \
     CASE WHEN kind = 'clearchat' THEN '' ELSE event_key END AS line_id, channel, room_id, user_id, \
     COALESCE(login, '') AS username, display_name, COALESCE(text, '') AS text, \
     CASE WHEN kind <> 'clearchat' THEN COALESCE(system_msg, '') \
          WHEN target_login IS NULL THEN 'chat has been cleared' \
          WHEN ban_duration IS NULL THEN target_login || ' has been banned' \
          ELSE target_login || ' has been timed out for ' || ban_duration || ' seconds' END AS system_text, \
     badges, badge_info, color, 0 AS is_mod, 0 AS is_subscriber, \
     0 AS bits, 0 AS is_action, emotes, NULL AS first_msg, NULL AS reply_parent_msg_id, \
     NULL AS reply_parent_user_login, sent_at, raw, msg_id, params, ban_duration, \
     target_user_id, id";

/// The statements, public so that a test can `EXPLAIN QUERY PLAN` each one. SQLite allows
/// ORDER BY and LIMIT only on a whole compound select, so each table's bounded range is a
/// subquery.
#[doc(hidden)]
pub mod sql {
    use super::{EVENT_COLUMNS, MESSAGE_COLUMNS};
    use crate::store::read::{sql_dir as dir, Order, EVENT_KINDS};

    /// A skip scan over one table: its newest row's period (the first `width` characters of
    /// sent_at), then the newest row before that period, … (one index probe per period found).
    fn skip_scan(table: &str, name: &str, width: u8, filter: &str) -> String {
        format!(
            "{name}(t) AS (
                SELECT (SELECT substr(sent_at, 1, {width}) FROM {table}
                         WHERE {filter} ORDER BY sent_at DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT substr(sent_at, 1, {width}) FROM {table}
                         WHERE {filter} AND sent_at < {name}.t ORDER BY sent_at DESC LIMIT 1)
                FROM {name} WHERE {name}.t IS NOT NULL
            )"
        )
    }

    fn periods(width: u8, msg_filter: &str, event_filter: &str, limit: &str) -> String {
        format!(
            "WITH RECURSIVE {}, {}
             SELECT t FROM m WHERE t IS NOT NULL UNION SELECT t FROM e WHERE t IS NOT NULL
             ORDER BY t DESC LIMIT {limit}",
            skip_scan("chat_messages", "m", width, msg_filter),
            skip_scan("chat_events", "e", width, event_filter),
        )
    }

    /// The months ('YYYY-MM') in which a user has lines in a channel, newest first
    /// (?1 channel, ?2 user, ?3 limit).
    pub fn user_months(msg_col: &str, event_col: &str) -> String {
        periods(
            7,
            &format!("channel = ?1 AND {msg_col} = ?2"),
            &format!("channel = ?1 AND {event_col} = ?2 AND {EVENT_KINDS}"),
            "?3",
        )
    }

    /// The days ('YYYY-MM-DD') on which a channel has lines, newest first (?1 channel, ?2 limit).
    pub fn channel_days() -> String {
        periods(10, "channel = ?1", &format!("channel = ?1 AND {EVENT_KINDS}"), "?2")
    }

    /// A user's lines in a channel in [?3, ?4), at most ?5.
    pub fn user_lines(msg_col: &str, event_col: &str, order: Order) -> String {
        let d = dir(order);
        format!(
            "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM chat_messages
               WHERE channel = ?1 AND {msg_col} = ?2 AND sent_at >= ?3 AND sent_at < ?4
               ORDER BY sent_at {d}, id {d} LIMIT ?5)
             UNION ALL
             SELECT * FROM (SELECT {EVENT_COLUMNS} FROM chat_events
               WHERE channel = ?1 AND {event_col} = ?2 AND {EVENT_KINDS} AND sent_at >= ?3 AND sent_at < ?4
               ORDER BY sent_at {d}, id {d} LIMIT ?5)
             ORDER BY sent_at {d}, kind {d}, id {d} LIMIT ?5"
        )
    }

    /// A channel's lines in [?2, ?3), at most ?4.
    pub fn channel_lines(order: Order) -> String {
        let d = dir(order);
        format!(
            "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM chat_messages
               WHERE channel = ?1 AND sent_at >= ?2 AND sent_at < ?3
               ORDER BY sent_at {d}, id {d} LIMIT ?4)
             UNION ALL
             SELECT * FROM (SELECT {EVENT_COLUMNS} FROM chat_events
               WHERE channel = ?1 AND {EVENT_KINDS} AND sent_at >= ?2 AND sent_at < ?3
               ORDER BY sent_at {d}, id {d} LIMIT ?4)
             ORDER BY sent_at {d}, kind {d}, id {d} LIMIT ?4"
        )
    }

    /// The first (ASC) or last (DESC) message of a channel, or of a user there (?2).
    pub fn edge(col: Option<&str>, order: Order) -> String {
        let filter = col.map(|c| format!("AND {c} = ?2")).unwrap_or_default();
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE channel = ?1 {filter} ORDER BY sent_at {d} LIMIT 1",
            d = dir(order)
        )
    }

    /// The first message at or after ?3 (a text timestamp), of a channel or a user there (?2).
    pub fn from(col: Option<&str>) -> String {
        let filter = col.map(|c| format!("AND {c} = ?2")).unwrap_or_default();
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE channel = ?1 {filter} AND sent_at >= ?3
             ORDER BY sent_at ASC LIMIT 1"
        )
    }

    /// A channel's newest room id (?1).
    pub const ROOM_ID: &str = "SELECT room_id FROM chat_messages WHERE channel = ?1 AND room_id IS NOT NULL \
                               ORDER BY sent_at DESC LIMIT 1";
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn classify(e: sqlx::Error) -> ReadError {
    let timeout = match &e {
        sqlx::Error::PoolTimedOut => true,
        // SQLITE_BUSY (5), SQLITE_LOCKED (6) with their extended codes, and SQLITE_INTERRUPT
        // (9, the progress handler's deadline).
        sqlx::Error::Database(d) => {
            d.code().and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6 | 9))
        }
        _ => false,
    };
    if timeout {
        ReadError::Timeout(Box::new(e))
    } else {
        ReadError::Unavailable(Box::new(e))
    }
}

fn decode_error(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what} {value:?} is not a stored timestamp").into())
}

/// A stored timestamp (`2026-11-30T08:15:00.123456Z`).
fn parse_time(s: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| decode_error("sent_at", s))
}

fn line(r: &SqliteRow) -> Result<LogLine, sqlx::Error> {
    let kind = match r.try_get::<i64, _>("kind")? {
        2 => LineKind::ClearChat,
        4 => LineKind::UserNotice,
        _ => LineKind::Chat,
    };
    let int = |v: i64| i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX });
    let flag = |name: &str| -> Result<bool, sqlx::Error> { Ok(r.try_get::<Option<i64>, _>(name)?.unwrap_or(0) != 0) };
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
        is_mod: flag("is_mod")?,
        is_subscriber: flag("is_subscriber")?,
        bits: int(r.try_get::<Option<i64>, _>("bits")?.unwrap_or(0)),
        is_action: flag("is_action")?,
        first_msg: r.try_get::<Option<i64>, _>("first_msg")?.map(|v| v != 0),
        reply_parent_msg_id: r.try_get("reply_parent_msg_id")?,
        reply_parent_user_login: r.try_get("reply_parent_user_login")?,
        sent_at: parse_time(&r.try_get::<String, _>("sent_at")?)?,
        raw: r.try_get("raw")?,
        msg_id: r.try_get("msg_id")?,
        params: r.try_get("params")?,
        ban_duration: r.try_get::<Option<i64>, _>("ban_duration")?.map(int),
        target_user_id: r.try_get("target_user_id")?,
    })
}

fn lines(rows: Vec<SqliteRow>) -> Result<Vec<LogLine>, sqlx::Error> {
    rows.iter().map(line).collect()
}

#[async_trait]
impl LogReader for SqliteReader {
    async fn room_ids(&self, channels: &[String]) -> Result<HashMap<String, String>, ReadError> {
        let channels = channels.to_vec();
        // One backward index probe per channel: its newest row that carries a room id.
        self.run(|mut conn| async move {
            let mut out = HashMap::new();
            for c in channels {
                match sqlx::query_scalar::<_, String>(sql::ROOM_ID).bind(&c).fetch_optional(&mut *conn).await {
                    Ok(Some(id)) => {
                        out.insert(c, id);
                    }
                    Ok(None) => {}
                    Err(e) => return (conn, Err(e)),
                }
            }
            (conn, Ok(out))
        })
        .await
    }

    async fn user_months(&self, channel: &str, who: &Who, limit: usize) -> Result<Vec<(i32, u32)>, ReadError> {
        let (msg_col, event_col, value) = who_column(who);
        let sql = sql::user_months(msg_col, event_col);
        let (channel, value) = (channel.to_string(), value.to_string());
        let months: Vec<String> = self
            .run(|mut conn| async move {
                let r = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(channel)
                    .bind(value)
                    .bind(limit_i64(limit))
                    .fetch_all(&mut *conn)
                    .await;
                (conn, r)
            })
            .await?;
        months
            .iter()
            .map(|m| {
                NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d")
                    .map(|d| (chrono::Datelike::year(&d), chrono::Datelike::month(&d)))
                    .map_err(|_| ReadError::Unavailable(Box::new(decode_error("month", m))))
            })
            .collect()
    }

    async fn channel_days(&self, channel: &str, limit: usize) -> Result<Vec<NaiveDate>, ReadError> {
        let channel = channel.to_string();
        let days: Vec<String> = self
            .run(|mut conn| async move {
                let r = sqlx::query_scalar(sqlx::AssertSqlSafe(sql::channel_days()))
                    .bind(channel)
                    .bind(limit_i64(limit))
                    .fetch_all(&mut *conn)
                    .await;
                (conn, r)
            })
            .await?;
        days.iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| ReadError::Unavailable(Box::new(decode_error("day", d))))
            })
            .collect()
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
        let (channel, value) = (channel.to_string(), value.to_string());
        self.run(|mut conn| async move {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(channel)
                .bind(value)
                .bind(timestamp(&from))
                .bind(timestamp(&to))
                .bind(limit_i64(limit))
                .fetch_all(&mut *conn)
                .await
                .and_then(lines);
            (conn, r)
        })
        .await
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
        let channel = channel.to_string();
        self.run(|mut conn| async move {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(channel)
                .bind(timestamp(&from))
                .bind(timestamp(&to))
                .bind(limit_i64(limit))
                .fetch_all(&mut *conn)
                .await
                .and_then(lines);
            (conn, r)
        })
        .await
    }

    async fn random_line(&self, channel: &str, who: Option<&Who>) -> Result<Option<LogLine>, ReadError> {
        // As on PostgreSQL: a random instant between the first and the last message, then the
        // first message from there (three index probes). Chat messages only, as justlog's.
        let (col, value) = match who {
            Some(w) => {
                let (col, _, v) = who_column(w);
                (Some(col), Some(v.to_string()))
            }
            None => (None, None),
        };
        let channel = channel.to_string();
        self.run(|mut conn| async move {
            let r = async {
                let edge = |order| {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql::edge(col, order))).bind(channel.clone());
                    if let Some(v) = &value {
                        q = q.bind(v.clone());
                    }
                    q
                };
                let Some(first) = edge(Order::OldestFirst).fetch_optional(&mut *conn).await? else {
                    return Ok(None);
                };
                let Some(last) = edge(Order::NewestFirst).fetch_optional(&mut *conn).await? else {
                    return Ok(None);
                };
                let (lo, hi) = (line(&first)?, line(&last)?);
                let fraction: i64 = sqlx::query_scalar("SELECT abs(random() % 1000000)").fetch_one(&mut *conn).await?;
                let span = (hi.sent_at - lo.sent_at).num_microseconds().unwrap_or(i64::MAX);
                let offset = i64::try_from(i128::from(span) * i128::from(fraction) / 1_000_000).unwrap_or(0);
                let at = lo.sent_at + chrono::Duration::microseconds(offset);
                let q = sqlx::query(sqlx::AssertSqlSafe(sql::from(col))).bind(channel.clone());
                let q = q.bind(value.clone()).bind(timestamp(&at));
                let picked = q.fetch_optional(&mut *conn).await?;
                Ok(Some(match picked {
                    Some(r) => line(&r)?,
                    None => hi,
                }))
            }
            .await;
            (conn, r)
        })
        .await
    }
}
