//! Time partitions of `chat_messages` and `chat_events` on PostgreSQL (issue #15): which
//! tables are partitioned (the insert's `ON CONFLICT` target depends on it), partitions made
//! ahead of time, retention by dropping whole partitions, and `migrate --partition` for a
//! database whose tables still hold rows unpartitioned.
//!
//! Partitions are named `{table}_pYYYYMMDD` after the first instant they hold (UTC), plus
//! `{table}_default` for everything outside them (a bogus `tmi-sent-ts` from 1970 or 2099, the
//! original's rows with a NULL `sent_at`). Ranges never overlap: a range partly covered by an
//! existing partition (after the interval was changed) is filled around it.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};
use std::time::Instant;

use crate::config::PartitionInterval;

/// The partitioned tables, each with its dedupe column.
pub const TABLES: [(&str, &str); 2] = [("chat_messages", "message_id"), ("chat_events", "event_key")];

/// Intervals made ahead of the current one: a believable `tmi-sent-ts` is at most a day ahead
/// of the clock, and a logger stopped for a while still finds its partitions on restart.
pub const AHEAD: u32 = 3;

/// How long maintenance waits for a lock on a table before giving up until the next pass:
/// while it waits, inserts queue behind it.
const LOCK_TIMEOUT: &str = "3s";

/// Rows deleted per transaction from a default partition or from `channel_notices`.
const DELETE_CHUNK: i64 = 5_000;

/// Which tables are partitioned: the insert's `ON CONFLICT` target follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub messages: bool,
    pub events: bool,
}

impl Shape {
    /// As bits, for an atomic.
    pub fn bits(self) -> u8 {
        u8::from(self.messages) | (u8::from(self.events) << 1)
    }

    pub fn from_bits(b: u8) -> Self {
        Shape { messages: b & 1 != 0, events: b & 2 != 0 }
    }
}

/// Reads which tables are partitioned now.
pub async fn shape(conn: &mut PgConnection) -> Result<Shape, sqlx::Error> {
    let (m, e): (bool, bool) = sqlx::query_as(
        "SELECT COALESCE((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('chat_messages')), false),
                COALESCE((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('chat_events')), false)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Shape { messages: m, events: e })
}

/// One partition: its range (`None` bounds for the default partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Partition {
    fn is_default(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// The partitions of `table`, oldest first, the default one last.
pub async fn partitions(conn: &mut PgConnection, table: &str) -> Result<Vec<Partition>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name,
                (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz AS lo,
                (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz AS hi
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1)
         ORDER BY lo NULLS LAST",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(|r| Partition { name: r.get("name"), from: r.get("lo"), to: r.get("hi") }).collect())
}

/// The interval holding `at`: `[start, end)` in UTC.
pub fn interval_of(interval: PartitionInterval, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = at.date_naive();
    let (start, end) = match interval {
        PartitionInterval::Day => (day, day + Duration::days(1)),
        PartitionInterval::Month => {
            let first = NaiveDate::from_ymd_opt(day.year(), day.month(), 1).expect("first of a month");
            let next = if day.month() == 12 {
                NaiveDate::from_ymd_opt(day.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(day.year(), day.month() + 1, 1)
            }
            .expect("first of a month");
            (first, next)
        }
    };
    let utc = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
    (utc(start), utc(end))
}

/// The name of `table`'s partition starting at `from`.
pub fn partition_name(table: &str, from: DateTime<Utc>) -> String {
    format!("{table}_p{}", from.format("%Y%m%d"))
}

/// A timestamp as an SQL literal (ours, from chrono: no quoting issue).
fn lit(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S+00"))
}

/// The pieces of `[from, to)` no existing partition covers.
fn uncovered(existing: &[Partition], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut ranges: Vec<_> = existing.iter().filter_map(|p| Some((p.from?, p.to?))).collect();
    ranges.sort();
    let mut out = Vec::new();
    let mut cursor = from;
    while cursor < to {
        if let Some(&(_, hi)) = ranges.iter().find(|(lo, hi)| *lo <= cursor && cursor < *hi) {
            cursor = hi;
            continue;
        }
        let next = ranges.iter().map(|(lo, _)| *lo).filter(|lo| *lo > cursor).min().unwrap_or(to).min(to);
        out.push((cursor, next));
        cursor = next;
    }
    out
}

/// Makes sure the interval holding `now` and the [`AHEAD`] next ones have partitions, on every
/// partitioned table. Returns the partitions made. Rows of a new range already in the default
/// partition are moved into it (in the same transaction).
pub async fn ensure_ahead(
    pool: &PgPool,
    interval: PartitionInterval,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut made = Vec::new();
    for (table, _) in TABLES {
        if !is_partitioned(&mut conn, table).await? {
            continue;
        }
        let (mut from, _) = interval_of(interval, now);
        for _ in 0..=AHEAD {
            let (_, to) = interval_of(interval, from);
            let existing = partitions(&mut conn, table).await?;
            for (lo, hi) in uncovered(&existing, from, to) {
                let name = partition_name(table, lo);
                create_partition(&mut conn, table, &existing, &name, lo, hi).await?;
                made.push(name);
            }
            from = to;
        }
    }
    Ok(made)
}

async fn is_partitioned(conn: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, bool>("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)")
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(false))
}

/// `[lo, hi)` of `table` as its own table, filled from the default partition, then attached:
/// ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on the parent, so inserts go on meanwhile.
async fn create_partition(
    conn: &mut PgConnection,
    table: &str,
    existing: &[Partition],
    name: &str,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))).execute(&mut *tx).await?;
    let mut sql = format!(
        "CREATE TABLE \"{name}\" (LIKE \"{table}\" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);"
    );
    if let Some(d) = existing.iter().find(|p| p.is_default()) {
        sql.push_str(&format!(
            "WITH moved AS (DELETE FROM \"{}\" WHERE sent_at >= {} AND sent_at < {} RETURNING *) INSERT INTO \"{name}\" SELECT * FROM moved;",
            d.name,
            lit(lo),
            lit(hi)
        ));
    }
    sql.push_str(&format!(
        "ALTER TABLE \"{table}\" ATTACH PARTITION \"{name}\" FOR VALUES FROM ({}) TO ({});",
        lit(lo),
        lit(hi)
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!("partitions: made {name} for {table} [{lo}, {hi})");
    Ok(())
}

/// A partition retention dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub table: &'static str,
    pub partition: String,
    pub rows: u64,
}

/// What one retention pass did on PostgreSQL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Whole partitions dropped (every row older than the cutoff).
    pub dropped: Vec<Dropped>,
    /// Rows deleted per table from default partitions, `channel_notices` and `dead_letters`.
    pub deleted: Vec<(&'static str, u64)>,
    /// Tables not partitioned, which retention leaves alone (see `migrate --partition`).
    pub unpartitioned: Vec<&'static str>,
    /// Delete transactions it took.
    pub transactions: u32,
}

/// Retention: drops every partition whose whole range is older than `cutoff`, deletes older
/// rows from the default partitions (a row without `sent_at` is never older), from
/// `channel_notices` and from `dead_letters`, in chunks. An unpartitioned table is left alone and reported: a `DELETE`
/// of months of rows would bloat it for hours.
pub async fn expire_before(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Retained, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut out = Retained::default();
    for (table, _) in TABLES {
        if !is_partitioned(&mut conn, table).await? {
            out.unpartitioned.push(table);
            continue;
        }
        for p in partitions(&mut conn, table).await? {
            match p.to {
                Some(to) if to <= cutoff => {
                    let mut tx = conn.begin().await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")))
                        .execute(&mut *tx)
                        .await?;
                    let rows: i64 =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{}\"", p.name)))
                            .fetch_one(&mut *tx)
                            .await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE \"{}\"", p.name))).execute(&mut *tx).await?;
                    tx.commit().await?;
                    out.dropped.push(Dropped { table, partition: p.name, rows: rows as u64 });
                }
                _ if p.is_default() => {
                    let n = delete_chunks(&mut conn, &p.name, "sent_at", cutoff, &mut out.transactions).await?;
                    if n > 0 {
                        out.deleted.push((table, n));
                    }
                }
                _ => {}
            }
        }
    }
    // As on SQLite: notices by their time, dead letters by when they failed.
    for (table, column) in [("channel_notices", "notice_at"), ("dead_letters", "failed_at")] {
        let n = delete_chunks(&mut conn, table, column, cutoff, &mut out.transactions).await?;
        if n > 0 {
            out.deleted.push((table, n));
        }
    }
    Ok(out)
}

/// Deletes rows of `table` with `column < cutoff`, [`DELETE_CHUNK`] per transaction.
async fn delete_chunks(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    cutoff: DateTime<Utc>,
    transactions: &mut u32,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM \"{table}\" WHERE ctid IN (SELECT ctid FROM \"{table}\" WHERE \"{column}\" < $1 LIMIT {DELETE_CHUNK})"
    );
    let mut total = 0;
    loop {
        let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(cutoff).execute(&mut *conn).await?.rows_affected();
        *transactions += 1;
        total += n;
        if n < DELETE_CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// What `migrate --partition` did to one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub table: &'static str,
    /// Rows in the partitioned table at the swap.
    pub rows: u64,
    /// Partitions it was given (the default one included).
    pub partitions: usize,
    /// How long inserts into the table were blocked (the final catch-up and the swap).
    pub pause: std::time::Duration,
    /// `false`: it was partitioned already, nothing done.
    pub converted: bool,
}

/// Advisory lock: one `migrate --partition` at a time.
const PARTITION_LOCK: i64 = 0x7463_6c5f_7061_7274; // "tcl_part"

/// `migrate --partition` for one table: an unpartitioned `table` (rows included) becomes one
/// partitioned by range on `sent_at`, while loggers keep writing to it.
///
/// 1. A partitioned copy `{table}_part` is made (same columns, same order), with a partition
///    per interval that has rows, the [`AHEAD`] next ones and a default one.
/// 2. Rows are copied in `id` order, `chunk_rows` per transaction, only up to a fence: a brief
///    SHARE lock on the table waits out the inserts in flight, so every id below the fence is
///    committed (ids come from a sequence, but commit out of order). Interrupted, a run resumes
///    after the highest id copied.
/// 3. The indexes are built (unique keys gain `sent_at`), then copying goes on to newer fences
///    while the tail shrinks.
/// 4. Under an ACCESS EXCLUSIVE lock (the pause): the last rows, the id sequence handed over,
///    the old table dropped, names swapped, grants and dependent views made again.
pub async fn partition_table(
    conn: &mut PgConnection,
    table: &'static str,
    interval: PartitionInterval,
    chunk_rows: i64,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Converted, sqlx::Error> {
    let part = format!("{table}_part");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(PARTITION_LOCK).execute(&mut *conn).await?;
    let result = convert(conn, table, &part, interval, chunk_rows, progress).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(PARTITION_LOCK).execute(&mut *conn).await;
    result
}

async fn convert(
    conn: &mut PgConnection,
    table: &'static str,
    part: &str,
    interval: PartitionInterval,
    chunk_rows: i64,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Converted, sqlx::Error> {
    let done =
        |rows, partitions| Converted { table, rows, partitions, pause: std::time::Duration::ZERO, converted: false };
    if to_regclass(conn, table).await?.is_none() {
        return Ok(done(0, 0));
    }
    if is_partitioned(conn, table).await? {
        let n = partitions(conn, table).await?.len();
        progress(format!("{table}: already partitioned ({n} partitions); nothing to do"));
        return Ok(done(0, n));
    }
    let resumed = to_regclass(conn, part).await?.is_some();
    if !resumed {
        create_shadow(conn, table, part, interval).await?;
    }
    let mut copied: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COALESCE(max(id), 0) FROM \"{part}\"")))
            .fetch_one(&mut *conn)
            .await?;
    if resumed {
        progress(format!("{table}: resuming an interrupted run after id {copied}"));
    }
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COALESCE(max(id), 0) FROM \"{table}\"")))
        .fetch_one(&mut *conn)
        .await?;
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut indexed = has_indexes(conn, part).await?;
    loop {
        let fence = fence(conn, table).await?;
        let before = copied;
        while copied < fence {
            copied = copy_chunk(conn, table, part, copied, fence, chunk_rows).await?;
            if last_line.elapsed() >= std::time::Duration::from_secs(3) {
                progress(format!(
                    "{table}: copied up to id {copied} of {total} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
                last_line = Instant::now();
            }
        }
        if !indexed {
            progress(format!("{table}: building indexes"));
            build_indexes(conn, table, part).await?;
            indexed = true;
            continue;
        }
        // A small tail left: copy it under the lock.
        if copied - before < chunk_rows.max(10_000) {
            break;
        }
    }
    // A long query on the table keeps the lock from us: wait out a few tries, copying meanwhile.
    let mut tries = 0;
    let pause = loop {
        match swap(conn, table, part, copied, chunk_rows).await {
            Err(e) if lock_busy(&e) && tries < LOCK_TRIES => {
                tries += 1;
                progress(format!("{table}: the table is busy (a long query holds it); trying again"));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let upto = fence(conn, table).await?;
                while copied < upto {
                    copied = copy_chunk(conn, table, part, copied, upto, chunk_rows).await?;
                }
            }
            r => break r?,
        }
    };
    let rows = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{table}\"")))
        .fetch_one(&mut *conn)
        .await? as u64;
    let n = partitions(conn, table).await?.len();
    progress(format!("{table}: partitioned: {rows} rows in {n} partitions; inserts paused {} ms", pause.as_millis()));
    Ok(Converted { table, rows, partitions: n, pause, converted: true })
}

async fn to_regclass(conn: &mut PgConnection, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name).fetch_one(&mut *conn).await
}

/// Every id at or below the returned one is committed (or rolled back): the SHARE lock waits
/// for the transactions inserting into `table`, and blocks new ones only while it reads.
async fn fence(conn: &mut PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    let mut tries = 0;
    loop {
        match fence_once(conn, table).await {
            Err(e) if lock_busy(&e) && tries < LOCK_TRIES => tries += 1,
            r => return r,
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Lock attempts before giving up (each waits at most [`LOCK_TIMEOUT`], inserts queued behind).
const LOCK_TRIES: u32 = 20;

/// 55P03: the lock was not had within `lock_timeout` (a long query on the table).
fn lock_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

async fn fence_once(conn: &mut PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))).execute(&mut *tx).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLE \"{table}\" IN SHARE MODE"))).execute(&mut *tx).await?;
    let max: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COALESCE(max(id), 0) FROM \"{table}\"")))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(max)
}

/// Copies the next `chunk` rows after id `after` up to `upto`; returns the new high-water id.
async fn copy_chunk(
    conn: &mut PgConnection,
    table: &str,
    part: &str,
    after: i64,
    upto: i64,
    chunk: i64,
) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "WITH c AS (INSERT INTO \"{part}\" SELECT * FROM \"{table}\" WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3 RETURNING id)
         SELECT max(id) FROM c"
    );
    let max: Option<i64> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(after).bind(upto).bind(chunk).fetch_one(&mut *conn).await?;
    // Nothing left below the fence (ids skipped by rolled-back inserts): it is reached.
    Ok(max.unwrap_or(upto))
}

/// The partitioned twin of `table`, its partitions made (no index yet: they are built after the
/// bulk of the copy, which is faster).
async fn create_shadow(
    conn: &mut PgConnection,
    table: &str,
    part: &str,
    interval: PartitionInterval,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{part}\" (LIKE \"{table}\" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (sent_at);
         CREATE TABLE \"{table}_default\" PARTITION OF \"{part}\" DEFAULT;"
    )))
    .execute(&mut *tx)
    .await?;
    // One partition per interval holding rows (month by month: a cheap index-free estimate
    // would miss some), then the current and next ones.
    let unit = match interval {
        PartitionInterval::Day => "day",
        PartitionInterval::Month => "month",
    };
    let starts: Vec<DateTime<Utc>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT date_trunc('{unit}', sent_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM \"{table}\"
         WHERE sent_at >= '2000-01-01' AND sent_at < now() + interval '1 year'"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    let mut wanted: Vec<DateTime<Utc>> = starts.into_iter().map(|s| interval_of(interval, s).0).collect();
    let (mut next, _) = interval_of(interval, now);
    for _ in 0..=AHEAD {
        wanted.push(next);
        next = interval_of(interval, next).1;
    }
    wanted.sort();
    wanted.dedup();
    let mut sql = String::new();
    for from in &wanted {
        let to = interval_of(interval, *from).1;
        sql.push_str(&format!(
            "CREATE TABLE \"{}\" PARTITION OF \"{part}\" FOR VALUES FROM ({}) TO ({});",
            partition_name(table, *from),
            lit(*from),
            lit(to)
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    tx.commit().await
}

async fn has_indexes(conn: &mut PgConnection, part: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1))")
        .bind(part)
        .fetch_one(&mut *conn)
        .await
}

/// `table`'s indexes on `part`, under temporary names (`{name}_part`): a unique one gains
/// `sent_at` (a partitioned table's unique keys must hold the partition key); a primary key
/// becomes `(id, sent_at)`, or a unique index when `sent_at` may be NULL (the original's).
async fn build_indexes(conn: &mut PgConnection, table: &str, part: &str) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT ic.relname::text AS name, i.indisprimary AS pk, i.indisunique AS uniq,
                pg_get_indexdef(i.indexrelid) AS def,
                EXISTS (SELECT 1 FROM unnest(i.indkey) k JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k
                        WHERE a.attname = 'sent_at') AS has_time
         FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let not_null: bool = sqlx::query_scalar(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'sent_at'",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await?;
    for r in rows {
        let name: String = r.get("name");
        let def: String = r.get("def");
        let tmp = format!("{name}_part");
        // `CREATE [UNIQUE] INDEX name ON public.table USING btree (cols) [WHERE …]`
        let Some((_, rest)) = def.split_once(" USING ") else { continue };
        let sql = if r.get::<bool, _>("pk") {
            if not_null {
                format!("ALTER TABLE \"{part}\" ADD CONSTRAINT \"{tmp}\" PRIMARY KEY (id, sent_at)")
            } else {
                format!("CREATE UNIQUE INDEX \"{tmp}\" ON \"{part}\" (id, sent_at)")
            }
        } else if r.get::<bool, _>("uniq") && !r.get::<bool, _>("has_time") {
            // `btree (message_id)` → `btree (message_id, sent_at)`
            let Some(close) = rest.find(')') else { continue };
            let (cols, tail) = rest.split_at(close);
            format!("CREATE UNIQUE INDEX \"{tmp}\" ON \"{part}\" USING {cols}, sent_at{tail}")
        } else {
            let unique = if r.get::<bool, _>("uniq") { "UNIQUE " } else { "" };
            format!("CREATE {unique}INDEX \"{tmp}\" ON \"{part}\" USING {rest}")
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE \"{part}\""))).execute(&mut *conn).await?;
    Ok(())
}

/// The pause: the last rows, then `part` takes `table`'s place. Returns how long inserts
/// waited (from asking for the lock to commit).
async fn swap(
    conn: &mut PgConnection,
    table: &str,
    part: &str,
    copied: i64,
    chunk_rows: i64,
) -> Result<std::time::Duration, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))).execute(&mut *tx).await?;
    let locked = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLE \"{table}\" IN ACCESS EXCLUSIVE MODE")))
        .execute(&mut *tx)
        .await?;
    let mut high = copied;
    loop {
        let next = copy_chunk(&mut tx, table, part, high, i64::MAX, chunk_rows).await?;
        if next == i64::MAX || next == high {
            break;
        }
        high = next;
    }
    // Views on the table (and views on those), in creation order, to make again.
    let views: Vec<(String, String)> = sqlx::query_as(
        "WITH RECURSIVE dep(oid) AS (
             SELECT DISTINCT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.refobjid = to_regclass($1) AND r.ev_class <> to_regclass($1)
             UNION
             SELECT r.ev_class FROM dep JOIN pg_depend d ON d.refobjid = dep.oid
             JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> dep.oid)
         SELECT DISTINCT c.oid::regclass::text, pg_get_viewdef(c.oid) FROM dep JOIN pg_class c ON c.oid = dep.oid
         WHERE c.relkind = 'v'",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let views = creation_order(&mut tx, views).await?;
    let grants: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %I TO %s', a.privilege_type, $2::text,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END)
         FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner",
    )
    .bind(table)
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let index_names: Vec<String> = sqlx::query_scalar(
        "SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let mut sql = String::new();
    for (name, _) in views.iter().rev() {
        sql.push_str(&format!("DROP VIEW {name};"));
    }
    if let Some(seq) = sqlx::query_scalar::<_, Option<String>>("SELECT pg_get_serial_sequence($1, 'id')")
        .bind(table)
        .fetch_one(&mut *tx)
        .await?
    {
        sql.push_str(&format!("ALTER SEQUENCE {seq} OWNED BY \"{part}\".id;"));
    }
    sql.push_str(&format!("DROP TABLE \"{table}\";ALTER TABLE \"{part}\" RENAME TO \"{table}\";"));
    for name in &index_names {
        sql.push_str(&format!(
            "DO $$ BEGIN IF to_regclass('\"{name}_part\"') IS NOT NULL THEN ALTER INDEX \"{name}_part\" RENAME TO \"{name}\"; END IF; END $$;"
        ));
    }
    for g in &grants {
        sql.push_str(g);
        sql.push(';');
    }
    for (name, def) in &views {
        sql.push_str(&format!("CREATE VIEW {name} AS {def}"));
        if !def.trim_end().ends_with(';') {
            sql.push(';');
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(locked.elapsed())
}

/// `views` ordered so that each comes after the views it reads.
async fn creation_order(
    conn: &mut PgConnection,
    views: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut edges: Vec<(String, String)> = Vec::new();
    for (name, _) in &views {
        let uses: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT d.refobjid::regclass::text FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
             WHERE r.ev_class = to_regclass($1) AND d.refobjid <> r.ev_class",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        for u in uses {
            edges.push((name.clone(), u));
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut left = views;
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            let name = &left[i].0;
            let ready =
                edges.iter().filter(|(v, _)| v == name).all(|(_, u)| !left.iter().any(|(l, _)| l == u) || u == name);
            if ready {
                out.push(left.remove(i));
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            out.append(&mut left);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_day_or_a_month_starts_at_midnight_utc_and_december_rolls_into_january() {
        let (a, b) = interval_of(PartitionInterval::Day, at("2026-11-30T23:59:59Z"));
        assert_eq!((a, b), (at("2026-11-30T00:00:00Z"), at("2026-12-01T00:00:00Z")));
        let (a, b) = interval_of(PartitionInterval::Month, at("2026-12-31T12:00:00Z"));
        assert_eq!((a, b), (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z")));
        assert_eq!(partition_name("chat_messages", a), "chat_messages_p20261201");
    }

    #[test]
    fn a_range_partly_covered_after_the_interval_changed_is_filled_around_what_exists() {
        let p = |f: &str, t: &str| Partition { name: String::new(), from: Some(at(f)), to: Some(at(t)) };
        // Daily partitions for the 1st and 2nd exist; a month is asked for.
        let existing =
            [p("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"), p("2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z")];
        let gaps = uncovered(&existing, at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        assert_eq!(gaps, vec![(at("2026-12-03T00:00:00Z"), at("2027-01-01T00:00:00Z"))]);
        // A month exists; days inside it are covered.
        let existing = [p("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")];
        assert!(uncovered(&existing, at("2026-12-05T00:00:00Z"), at("2026-12-06T00:00:00Z")).is_empty());
        // A hole in the middle.
        let existing =
            [p("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"), p("2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z")];
        let gaps = uncovered(&existing, at("2026-12-01T00:00:00Z"), at("2026-12-05T00:00:00Z"));
        assert_eq!(
            gaps,
            vec![
                (at("2026-12-02T00:00:00Z"), at("2026-12-03T00:00:00Z")),
                (at("2026-12-04T00:00:00Z"), at("2026-12-05T00:00:00Z"))
            ]
        );
    }

    #[test]
    fn shape_bits_round_trip() {
        for s in [
            Shape::default(),
            Shape { messages: true, events: false },
            Shape { messages: false, events: true },
            Shape { messages: true, events: true },
        ] {
            assert_eq!(Shape::from_bits(s.bits()), s);
        }
    }
}
