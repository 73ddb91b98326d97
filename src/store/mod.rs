//! Where rows go: the [`Store`] seam, the shared batch [`writer`] and its on-disk [`spool`],
//! and the PostgreSQL implementation ([`postgres`]). The rows themselves are [`crate::record`]'s.
//!
//! SQL lives only in `postgres`; the writer knows batches, not tables, so that an SQLite store
//! or time-partitioned tables can come in behind the same trait.

pub mod postgres;
pub mod purge;
pub mod spool;
pub mod writer;

use async_trait::async_trait;

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
}
