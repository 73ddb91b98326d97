//! `purge-user`: deletes one user's stored rows in small transactions, so it is safe while the
//! logger writes, and an interrupted purge has committed what it did. On PostgreSQL each chunk
//! locks at most [`PURGE_CHUNK`] rows for a moment, never the table (inserts go on). On SQLite
//! (one writer at a time) each chunk's rows are found first by a read, which never blocks the
//! logger in WAL mode, then deleted by rowid in one short `BEGIN IMMEDIATE` transaction; the
//! logger's writer waits out that lock (its busy timeout) or retries.

use sqlx::postgres::PgPool;
use sqlx::AssertSqlSafe;

use crate::config::login::UserEntry;

/// Rows deleted per transaction.
pub const PURGE_CHUNK: i64 = 5000;

/// A table holding users' rows, and the (login, user id) column pairs that name a user in it:
/// a row matching any pair is the user's.
#[derive(Debug, Clone, Copy)]
pub struct UserTable {
    pub table: &'static str,
    pub channel: &'static str,
    pub users: &'static [(&'static str, &'static str)],
}

/// Every table `purge-user` clears, in order. A table that does not exist yet (an older
/// schema) is skipped.
pub const USER_TABLES: &[UserTable] = &[
    UserTable { table: "chat_messages", channel: "channel", users: &[("username", "user_id")] },
    // Its sender, target and gift recipient all name the user.
    UserTable {
        table: "chat_events",
        channel: "channel",
        users: &[("login", "user_id"), ("target_login", "target_user_id"), ("recipient_login", "recipient_id")],
    },
];

/// What a purge did (or, in a dry run, would do) to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub table: &'static str,
    /// Rows deleted (dry run: rows that match).
    pub rows: u64,
    /// Transactions it took (dry run: 0).
    pub chunks: u64,
    /// The table does not exist in this database.
    pub missing: bool,
}

/// Why a purge stopped. What was deleted before it is deleted (each chunk commits).
#[derive(Debug, thiserror::Error)]
#[error("purging {table} failed after deleting {deleted} rows; run the command again to finish")]
pub struct PurgeError {
    pub table: &'static str,
    pub deleted: u64,
    #[source]
    pub source: sqlx::Error,
}

/// The WHERE clause for `who` in `t`: `$1` is the login or id, `$2` the channel (or NULL).
fn condition(t: &UserTable, who: &UserEntry) -> String {
    let cols: Vec<String> = t
        .users
        .iter()
        .map(|(login, id)| match who {
            UserEntry::Login(_) => format!("{login} = $1"),
            UserEntry::Id(_) => format!("{id} = $1"),
        })
        .collect();
    format!("({}) AND ($2::text IS NULL OR {} = $2)", cols.join(" OR "), t.channel)
}

/// Deletes (or with `dry_run` counts) the rows of `who` in `tables`, optionally in one
/// channel only: by login, the rows stored under that login; by id, the user's rows under
/// every login they had. `progress` sees each committed chunk (table, rows so far).
pub async fn purge_user(
    pool: &PgPool,
    tables: &[UserTable],
    who: &UserEntry,
    channel: Option<&str>,
    dry_run: bool,
    chunk: i64,
    mut progress: impl FnMut(&'static str, u64),
) -> Result<Vec<Purged>, PurgeError> {
    let key = match who {
        UserEntry::Login(l) => l.as_str(),
        UserEntry::Id(i) => i.as_str(),
    };
    let mut out = Vec::new();
    for t in tables {
        let fail = |deleted| move |source| PurgeError { table: t.table, deleted, source };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(t.table)
            .fetch_one(pool)
            .await
            .map_err(fail(0))?;
        if !exists {
            out.push(Purged { table: t.table, rows: 0, chunks: 0, missing: true });
            continue;
        }
        let cond = condition(t, who);
        if dry_run {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {} WHERE {cond}", t.table)))
                .bind(key)
                .bind(channel)
                .fetch_one(pool)
                .await
                .map_err(fail(0))?;
            out.push(Purged { table: t.table, rows: n as u64, chunks: 0, missing: false });
            continue;
        }
        // Each statement is its own transaction. By ctid: any table, whatever its key.
        let sql =
            format!("DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {cond} LIMIT $3))", t = t.table);
        let (mut rows, mut chunks) = (0u64, 0u64);
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(key)
                .bind(channel)
                .bind(chunk)
                .execute(pool)
                .await
                .map_err(fail(rows))?
                .rows_affected();
            if done > 0 {
                rows += done;
                chunks += 1;
                progress(t.table, rows);
            }
            // A short chunk was the last one: no need for another scan to find nothing.
            if done < chunk.max(1) as u64 {
                break;
            }
        }
        out.push(Purged { table: t.table, rows, chunks, missing: false });
    }
    Ok(out)
}

/// [`purge_user`] on a SQLite file: the same tables, semantics, output and chunk size. `pool`
/// writes to the file (one connection is enough: [`sqlite_pool`]).
pub async fn purge_user_sqlite(
    pool: &sqlx::SqlitePool,
    tables: &[UserTable],
    who: &UserEntry,
    channel: Option<&str>,
    dry_run: bool,
    chunk: i64,
    mut progress: impl FnMut(&'static str, u64),
) -> Result<Vec<Purged>, PurgeError> {
    let key = match who {
        UserEntry::Login(l) => l.as_str(),
        UserEntry::Id(i) => i.as_str(),
    };
    let mut out = Vec::new();
    for t in tables {
        let fail = |deleted| move |source| PurgeError { table: t.table, deleted, source };
        let exists: bool =
            sqlx::query_scalar("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(t.table)
                .fetch_one(pool)
                .await
                .map_err(fail(0))?;
        if !exists {
            out.push(Purged { table: t.table, rows: 0, chunks: 0, missing: true });
            continue;
        }
        // ?1 the login or id, ?2 the channel or NULL; a channel given goes first so that the
        // (channel, user, time) indexes serve it.
        let users = condition(t, who).replace("$2::text", "?2").replace('$', "?");
        let cond = match channel {
            Some(_) => format!("{} = ?2 AND {users}", t.channel),
            None => users,
        };
        if dry_run {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {} WHERE {cond}", t.table)))
                .bind(key)
                .bind(channel)
                .fetch_one(pool)
                .await
                .map_err(fail(0))?;
            out.push(Purged { table: t.table, rows: n as u64, chunks: 0, missing: false });
            continue;
        }
        // Rowids in order from where the last chunk ended: one pass over the matches in all.
        let find = format!(
            "SELECT json_group_array(rowid), max(rowid) FROM (SELECT rowid FROM {t} WHERE {cond} AND rowid > ?3 ORDER BY rowid LIMIT ?4)",
            t = t.table
        );
        // The condition again: a row is only ever deleted if it is still the user's.
        let delete =
            format!("DELETE FROM {t} WHERE rowid IN (SELECT value FROM json_each(?3)) AND {cond}", t = t.table);
        let (mut rows, mut chunks, mut after) = (0u64, 0u64, 0i64);
        loop {
            let (ids, last): (String, Option<i64>) = sqlx::query_as(AssertSqlSafe(find.clone()))
                .bind(key)
                .bind(channel)
                .bind(after)
                .bind(chunk.max(1))
                .fetch_one(pool)
                .await
                .map_err(fail(rows))?;
            let Some(last) = last else { break };
            after = last;
            let mut conn = pool.acquire().await.map_err(fail(rows))?;
            let done = async {
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                let r = sqlx::query(AssertSqlSafe(delete.clone()))
                    .bind(key)
                    .bind(channel)
                    .bind(&ids)
                    .execute(&mut *conn)
                    .await;
                match r {
                    Ok(r) => {
                        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                        Ok(r.rows_affected())
                    }
                    Err(e) => {
                        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                        Err(e)
                    }
                }
            }
            .await
            .map_err(fail(rows))?;
            if done > 0 {
                rows += done;
                chunks += 1;
                progress(t.table, rows);
            }
        }
        out.push(Purged { table: t.table, rows, chunks, missing: false });
    }
    Ok(out)
}

/// One writing connection on an existing SQLite file, for [`purge_user_sqlite`]: it waits up
/// to the store's busy timeout for the logger's write lock; it never creates the file.
pub async fn sqlite_pool(path: &std::path::Path) -> Result<sqlx::SqlitePool, super::DbError> {
    super::sqlite::SqliteStore::open_existing(path).await?;
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(super::sqlite::connect_options(path).create_if_missing(false)))
}
