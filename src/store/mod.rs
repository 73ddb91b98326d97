//! Where rows go: the [`Store`] seam, the shared batch [`writer`] and its on-disk [`spool`],
//! and its two implementations, [`postgres`] and the embedded [`sqlite`] file ([`Backend`]
//! picks one from the config). [`copy`] moves a file's rows to PostgreSQL. The rows themselves
//! are [`crate::record`]'s.
//!
//! SQL lives only in the backends (and `copy`, which speaks both); the writer knows batches,
//! not tables, and never learns which backend it talks to.

pub mod copy;
pub mod pg_partition;
pub mod pg_read;
pub mod postgres;
pub mod purge;
pub mod read;
pub mod spool;
pub mod sqlite;
pub mod sqlite_read;
pub mod writer;

use async_trait::async_trait;
use std::sync::Arc;

use crate::config::DatabaseConfig;

pub use crate::record::{invalid_reason, ChannelNotice, ChatEvent, ChatMessage, Record};

/// A set of records written together.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub messages: Vec<ChatMessage>,
    pub notices: Vec<ChannelNotice>,
    /// Chat events, in the order read (ROOMSTATE changes depend on it).
    pub events: Vec<ChatEvent>,
}

impl Batch {
    /// Messages, notices and events together.
    pub fn len(&self) -> usize {
        self.messages.len() + self.notices.len() + self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, r: Record) {
        match r {
            Record::Message(m) => self.messages.push(m),
            Record::Notice(n) => self.notices.push(n),
            Record::Event(e) => self.events.push(e),
        }
    }

    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Self {
        let mut b = Batch::default();
        for r in records {
            b.push(r);
        }
        b
    }

    /// Back into records (messages, then notices, then events).
    pub fn into_records(self) -> impl Iterator<Item = Record> {
        self.messages
            .into_iter()
            .map(Record::Message)
            .chain(self.notices.into_iter().map(Record::Notice))
            .chain(self.events.into_iter().map(Record::Event))
    }

    /// Splits in two halves (for finding a bad row); a single row comes back as `Err`.
    pub fn split(mut self) -> Result<(Batch, Batch), Batch> {
        if self.len() < 2 {
            return Err(self);
        }
        let second = if self.messages.len() >= 2 {
            let half = self.messages.len().div_ceil(2);
            Batch {
                messages: self.messages.split_off(half),
                notices: std::mem::take(&mut self.notices),
                events: std::mem::take(&mut self.events),
            }
        } else if self.messages.len() == 1 {
            Batch {
                notices: std::mem::take(&mut self.notices),
                events: std::mem::take(&mut self.events),
                ..Batch::default()
            }
        } else if self.notices.len() >= 2 {
            let half = self.notices.len() / 2;
            Batch {
                notices: self.notices.split_off(half),
                events: std::mem::take(&mut self.events),
                ..Batch::default()
            }
        } else if self.notices.len() == 1 {
            Batch { events: std::mem::take(&mut self.events), ..Batch::default() }
        } else {
            // Events keep their order: the first half is written first.
            let half = self.events.len() / 2;
            Batch { events: self.events.split_off(half), ..Batch::default() }
        };
        Ok((self, second))
    }

    /// Empties it, keeping capacity.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.notices.clear();
        self.events.clear();
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// Messages newly stored.
    pub messages_inserted: u64,
    /// Messages already stored (same `message_id`), skipped.
    pub duplicates: u64,
    /// Notices newly stored (one already stored under its key is skipped, not counted).
    pub notices_inserted: u64,
    /// Events newly stored (one already stored under its key, or a ROOMSTATE that changes
    /// nothing, is skipped, not counted).
    pub events_inserted: u64,
}

/// Why a write failed: the variant says what the writer does about it, the source says what
/// happened (a store's own typed error, e.g. the database driver's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: retry the batch later.
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// The database refused some row's content: retrying the same batch will fail again.
    #[error("database rejected a row")]
    Rejected(#[source] Cause),
}

/// Boxed because the seam does not know which store (or the writer's own timer) failed.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// What happened, without the variant's words: the text a dead letter keeps.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            StoreError::Unavailable(c) | StoreError::Rejected(c) => c.as_ref(),
        }
    }

    /// The variant's words and the cause on one line, for log lines: the cause's own sources
    /// are left out because drivers repeat them in their text (sqlx's I/O errors do).
    pub fn one_line(&self) -> String {
        format!("{self}: {}", self.cause())
    }
}

/// The storage seam: the writer hands it whole batches. Writes must be idempotent per
/// message (a retried batch stores each message once).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes one batch atomically.
    async fn write(&self, batch: &Batch) -> Result<WriteReport, StoreError>;

    /// Keeps a row the database refused, with the reason, where a person can look at it.
    async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), StoreError>;

    /// How many batches the writer may have written at once (each in its own transaction,
    /// committing in any order). 1 keeps one write at a time.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Deletes rows older than `cutoff` (`[storage] retention`), in bounded chunks so that
    /// writes go on in between; returns what was deleted. Stores that cannot expire rows keep
    /// everything (the config refuses the key for them).
    async fn expire_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<Expired, StoreError> {
        let _ = cutoff;
        Ok(Expired::default())
    }
}

/// Rows a retention pass deleted, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    /// `(table, rows deleted)`, tables with none left out.
    pub tables: Vec<(&'static str, u64)>,
    /// Delete transactions it took (each holds the write lock for one chunk only).
    pub transactions: u32,
    /// Whole partitions dropped (PostgreSQL), as `table.partition (N rows)`; their rows are
    /// counted in `tables` too.
    pub partitions: Vec<String>,
}

impl Expired {
    /// Rows deleted over all tables.
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Why the database cannot be used at start-up, as one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// Waiting may fix it: connection refused, timeout, DNS failure, the server starting up,
    /// a file another program keeps locked.
    #[error("{0}")]
    Transient(String),
    /// Waiting will not fix it (wrong password, missing role, a migration's SQL error, a schema
    /// that differs from what the logger writes, a path that is a directory or not a SQLite
    /// file). The text names the problem and the fix; the database's message is part of it,
    /// so there is no separate source.
    #[error("{0}")]
    Fatal(String),
}

/// The store the config names, with what start-up, `/readyz` and `check` need of it; the
/// writer gets it only as a `dyn Store`.
#[derive(Clone)]
// One per process, cloned a few times at start-up: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

impl Backend {
    /// The store for `cfg`, not yet connected: writes wait for [`Backend::migrate`].
    pub fn connect_lazy(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        Ok(match cfg {
            DatabaseConfig::Sqlite(path) => Backend::Sqlite(sqlite::SqliteStore::open_lazy(path)),
            _ => Backend::Postgres(postgres::PgStore::connect_lazy(cfg)?),
        })
    }

    /// Applies migrations and opens the store for writing.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Backend::Postgres(s) => s.migrate().await,
            Backend::Sqlite(s) => s.migrate().await,
        }
    }

    /// The log API's reader, on a pool of its own so a slow reader never holds the writer's
    /// connection.
    pub fn log_reader(&self) -> std::sync::Arc<dyn read::LogReader> {
        match self {
            Backend::Postgres(s) => std::sync::Arc::new(pg_read::PgReader::connect_lazy(s.connect_options())),
            Backend::Sqlite(s) => std::sync::Arc::new(sqlite_read::SqliteReader::connect_lazy(s.path())),
        }
    }

    /// Where the rows go, for log lines (never a password).
    pub fn target(&self) -> String {
        match self {
            Backend::Postgres(s) => s.target(),
            Backend::Sqlite(s) => format!("sqlite://{}", s.path().display()),
        }
    }

    /// `Ok` once migrations have succeeded; else why not yet (for `/readyz`).
    pub fn schema_ready(&self) -> Result<(), String> {
        match self {
            Backend::Postgres(s) => s.schema_ready(),
            Backend::Sqlite(s) => s.schema_ready(),
        }
    }

    /// Records why the schema is not ready yet (shown by `/readyz`).
    pub fn set_not_ready(&self, why: &str) {
        match self {
            Backend::Postgres(s) => s.set_not_ready(why),
            Backend::Sqlite(s) => s.set_not_ready(why),
        }
    }

    /// Whether the database answers a trivial query within `timeout` (for `/readyz`).
    pub async fn ping(&self, timeout: std::time::Duration) -> bool {
        let answered = match self {
            Backend::Postgres(s) => {
                tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(s.pool())).await.map(|r| r.is_ok())
            }
            Backend::Sqlite(s) => tokio::time::timeout(timeout, s.ping()).await,
        };
        answered == Ok(true)
    }

    /// The writer's view of it.
    pub fn as_store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Postgres(s) => Arc::new(s.clone()),
            Backend::Sqlite(s) => Arc::new(s.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> Record {
        Record::Event(ChatEvent { event_key: format!("e{i}"), kind: "roomstate".into(), ..ChatEvent::default() })
    }

    fn note(i: usize) -> Record {
        Record::Notice(ChannelNotice {
            channel: "c".into(),
            msg_id: None,
            message: format!("n{i}"),
            received_at: chrono::Utc::now(),
            tags: String::new(),
            notice_at: None,
            key: String::new(),
            raw: None,
        })
    }

    /// Splitting down to single rows (how the writer finds a bad row) keeps every row once, and
    /// events in the order read (a ROOMSTATE depends on the one before).
    #[test]
    fn splitting_a_batch_with_events_keeps_every_row_and_the_events_order() {
        let mut records: Vec<Record> = (0..5).map(ev).collect();
        records.insert(2, note(0));
        records.push(note(1));
        let mut pending = vec![Batch::from_records(records)];
        let mut singles = Vec::new();
        while let Some(b) = pending.pop() {
            match b.split() {
                Ok((first, second)) => {
                    assert!(!first.is_empty() && !second.is_empty());
                    // Depth first, first half first: the order the writer retries them.
                    pending.push(second);
                    pending.push(first);
                }
                Err(one) => singles.extend(one.into_records()),
            }
        }
        let keys: Vec<String> = singles
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e.event_key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["e0", "e1", "e2", "e3", "e4"]);
        assert_eq!(singles.len(), 7);
        let mut b = Batch::from_records((0..3).map(ev));
        assert_eq!(b.len(), 3);
        b.clear();
        assert!(b.is_empty());
    }
}
