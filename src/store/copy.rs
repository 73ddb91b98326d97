//! `twitch-chat-logger copy`: every table of a SQLite file into PostgreSQL, for a user who
//! outgrows the file.
//!
//! Each table is read in `id` order in chunks; each chunk is inserted and its checkpoint
//! (`_copy_checkpoints`: source file id, table, last id) saved in one PostgreSQL transaction.
//! So an interrupted run resumes after the last committed chunk, and a second run copies
//! nothing again. Rows with a dedupe key are also skipped by `ON CONFLICT DO NOTHING`, so even
//! a lost checkpoint stores each message and notice once.

use secrecy::SecretString;
use sqlx::Row;
use std::path::Path;
use std::time::{Duration, Instant};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use crate::config::DatabaseConfig;

/// How a copy runs.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Rows per transaction.
    pub chunk_rows: i64,
    /// How often a progress line is printed on a long run.
    pub progress_every: Duration,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { chunk_rows: 5000, progress_every: Duration::from_secs(3) }
    }
}

/// What a copy did, per table: `(table, rows newly copied, rows skipped as already there)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopySummary {
    pub tables: Vec<(String, u64, u64)>,
}

/// Why a copy stopped. The text never holds the target's password.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Setup(String),
    #[error("copying {table} into {target} failed after id {after}: {source} — run the same command again to resume from there")]
    Chunk {
        table: String,
        target: String,
        after: i64,
        #[source]
        source: sqlx::Error,
    },
}

/// Copies every table of the SQLite file at `from` into the PostgreSQL database at `to`
/// (migrated first). `progress` gets the lines to show.
pub async fn copy(
    from: &Path,
    to: SecretString,
    opts: &CopyOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<CopySummary, CopyError> {
    let src = SqliteStore::open_existing(from).await.map_err(|e| CopyError::Setup(format!("--from: {e}")))?;
    let shown_src = src.absolute_path().display().to_string();
    let read_err = |e: sqlx::Error| CopyError::Setup(format!("--from {shown_src}: cannot read it: {e}"));
    let source_id = src.store_id().await.map_err(read_err)?;
    let tables = src.tables().await.map_err(read_err)?;

    let dst = PgStore::connect_lazy(&DatabaseConfig::Url(to)).map_err(|e| CopyError::Setup(format!("--to: {e}")))?;
    let target = dst.target();
    progress(format!("copy: from {shown_src} to {target}; migrating the target first"));
    dst.migrate().await.map_err(|e| CopyError::Setup(format!("--to {target}: {e}")))?;
    let pool = dst.pool();
    let setup = |e: sqlx::Error| CopyError::Setup(format!("--to {target}: {e}"));
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS _copy_checkpoints (source TEXT NOT NULL, tbl TEXT NOT NULL, last_id BIGINT NOT NULL,
         copied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (source, tbl))",
    )
    .execute(pool)
    .await
    .map_err(setup)?;

    let mut summary = CopySummary::default();
    let mut last_progress = Instant::now();
    for table in &tables {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(setup)?;
        if !exists {
            return Err(CopyError::Setup(format!(
                "--to {target}: has no table {table}, which the SQLite file has — run this version's logger (or `migrate`) against it once, or copy with the version that wrote the file"
            )));
        }
        let mut after: i64 = sqlx::query_scalar("SELECT last_id FROM _copy_checkpoints WHERE source = $1 AND tbl = $2")
            .bind(&source_id)
            .bind(table)
            .fetch_optional(pool)
            .await
            .map_err(setup)?
            .unwrap_or(0);
        let (todo, max_id) = src.count_after(table, after).await.map_err(read_err)?;
        if after > 0 {
            progress(format!("copy: {table}: resuming after id {after} ({todo} rows left)"));
        }
        let (mut copied, mut skipped, mut done) = (0u64, 0u64, 0i64);
        while after < max_id {
            let rows = src.rows_as_json(table, after, opts.chunk_rows).await.map_err(read_err)?;
            let Some(&(last, _)) = rows.last() else { break };
            let chunk_err = |source| CopyError::Chunk { table: table.clone(), target: target.clone(), after, source };
            let columns: Vec<String> = match &rows[0].1 {
                serde_json::Value::Object(o) => o.keys().map(|k| format!("\"{}\"", k.replace('"', "\"\""))).collect(),
                _ => vec![],
            };
            let cols = columns.join(", ");
            let values = serde_json::Value::Array(rows.iter().map(|(_, v)| v.clone()).collect());
            let mut tx = pool.begin().await.map_err(chunk_err)?;
            let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO \"{table}\" ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::\"{table}\", $1::jsonb) ON CONFLICT DO NOTHING"
            )))
            .bind(values)
            .execute(&mut *tx)
            .await
            .map_err(chunk_err)?
            .rows_affected();
            sqlx::query(
                "INSERT INTO _copy_checkpoints (source, tbl, last_id) VALUES ($1, $2, $3)
                 ON CONFLICT (source, tbl) DO UPDATE SET last_id = EXCLUDED.last_id, copied_at = now()",
            )
            .bind(&source_id)
            .bind(table)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(chunk_err)?;
            tx.commit().await.map_err(chunk_err)?;
            copied += inserted;
            skipped += rows.len() as u64 - inserted;
            done += rows.len() as i64;
            after = last;
            if last_progress.elapsed() >= opts.progress_every {
                last_progress = Instant::now();
                progress(format!(
                    "copy: {table}: {done} / {todo} rows ({}%)",
                    if todo > 0 { done * 100 / todo } else { 100 }
                ));
            }
        }
        progress(format!("copy: {table}: {copied} rows copied, {skipped} already there"));
        summary.tables.push((table.clone(), copied, skipped));
    }
    // Sequences are not touched: PostgreSQL numbers the copied rows itself.
    let _ = pool.close().await;
    Ok(summary)
}

/// Every row of a PostgreSQL table as JSON without `id`, in `id` order: the other side of
/// [`SqliteStore::rows_as_json`], for checking a copy.
pub async fn pg_rows_as_json(pool: &sqlx::PgPool, table: &str) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT to_jsonb(t) - 'id' AS row FROM \"{table}\" t ORDER BY id")))
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(|r| r.try_get::<serde_json::Value, _>("row")).collect()
}
