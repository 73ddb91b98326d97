//! Where rows go: the records the clients produce, the [`Store`] seam, the shared batch
//! [`writer`], and the PostgreSQL implementation ([`postgres`]).
//!
//! SQL lives only in `postgres`; the writer knows batches, not tables, so that an SQLite store
//! or time-partitioned tables can come in behind the same trait.

pub mod postgres;
pub mod spool;
pub mod writer;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One chat line (PRIVMSG), ready to store. Columns of `chat_messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Twitch's message id (tag `id`); the dedupe key.
    pub message_id: String,
    /// Channel login, without `#`.
    pub channel: String,
    /// Channel's user id (tag `room-id`).
    pub room_id: Option<String>,
    /// Sender's user id.
    pub user_id: Option<String>,
    /// Sender's login.
    pub username: String,
    /// Sender's display name.
    pub display_name: Option<String>,
    /// Message text (without the `/me` wrapper).
    pub text: String,
    /// Badges as a JSON object text, badge → version.
    pub badges: String,
    /// `badge-info` as a JSON object text, badge → value: the real subscription tenure in
    /// months (`{"subscriber":14}`), which the `subscriber` badge's version is not. None if empty.
    #[serde(default)]
    pub badge_info: Option<String>,
    /// Name colour, `#RRGGBB`, or none.
    pub color: Option<String>,
    /// Moderator or broadcaster.
    pub is_mod: bool,
    /// Subscriber or founder.
    pub is_subscriber: bool,
    /// Bits cheered (0 if none).
    pub bits: i32,
    /// `/me` action.
    pub is_action: bool,
    /// Raw `emotes` tag, or none.
    pub emotes: Option<String>,
    /// `first-msg` tag: the sender's first message in this channel.
    pub first_msg: Option<bool>,
    /// Reply parent's message id.
    pub reply_parent_msg_id: Option<String>,
    /// Reply parent's login.
    pub reply_parent_user_login: Option<String>,
    /// Twitch's `tmi-sent-ts`.
    pub sent_at: DateTime<Utc>,
    /// When this process read the line.
    pub received_at: DateTime<Utc>,
}

/// A NOTICE from Twitch about a channel. Rows of `channel_notices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelNotice {
    /// Channel login, or `*` for a server-wide notice.
    pub channel: String,
    /// Twitch's `msg-id` tag.
    pub msg_id: Option<String>,
    /// The notice text.
    pub message: String,
    /// When this process read the line.
    pub received_at: DateTime<Utc>,
    /// The notice's IRC tags as JSON object text (tag → value), as the original stored them.
    /// Empty in records spooled before this field existed (stored as `{}`).
    #[serde(default)]
    pub tags: String,
    /// The notice's time: Twitch's `tmi-sent-ts` when it carries one, else `received_at`.
    #[serde(default)]
    pub notice_at: Option<DateTime<Utc>>,
    /// Dedupe key, fixed when the line is read (UUID v5 of content and receive time), so a
    /// retried batch or a spool replay stores the notice once. Empty in records spooled before
    /// this field existed (stored without a key, as before).
    #[serde(default)]
    pub key: String,
}

/// What the clients hand to the writer.
// Messages are the common case: boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A chat message.
    Message(ChatMessage),
    /// A notice.
    Notice(ChannelNotice),
}

/// A set of records written together.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub messages: Vec<ChatMessage>,
    pub notices: Vec<ChannelNotice>,
}

impl Batch {
    /// Messages and notices together.
    pub fn len(&self) -> usize {
        self.messages.len() + self.notices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, r: Record) {
        match r {
            Record::Message(m) => self.messages.push(m),
            Record::Notice(n) => self.notices.push(n),
        }
    }

    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Self {
        let mut b = Batch::default();
        for r in records {
            b.push(r);
        }
        b
    }

    /// Back into records (messages, then notices).
    pub fn into_records(self) -> impl Iterator<Item = Record> {
        self.messages.into_iter().map(Record::Message).chain(self.notices.into_iter().map(Record::Notice))
    }

    /// Splits in two halves (for finding a bad row); a single row comes back as `Err`.
    pub fn split(mut self) -> Result<(Batch, Batch), Batch> {
        if self.len() < 2 {
            return Err(self);
        }
        let second = if self.messages.len() >= 2 {
            let half = self.messages.len().div_ceil(2);
            Batch { messages: self.messages.split_off(half), notices: std::mem::take(&mut self.notices) }
        } else if self.messages.len() == 1 {
            Batch { messages: vec![], notices: std::mem::take(&mut self.notices) }
        } else {
            let half = self.notices.len() / 2;
            Batch { messages: vec![], notices: self.notices.split_off(half) }
        };
        Ok((self, second))
    }

    /// Empties it, keeping capacity.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.notices.clear();
    }
}

/// Longest Twitch channel login.
pub const MAX_LOGIN_CHARS: usize = 25;

/// Why a row can never be stored, found before it is sent: PostgreSQL would refuse it (an
/// index entry over its size limit) or it is not something Twitch sends. `None`: plausible.
///
/// Channel logins are 1 to 25 characters of `[a-z0-9_]` (`*` is allowed on a notice: a
/// server-wide one); message ids are hyphenated UUIDs, as Twitch sends them.
pub fn invalid_reason(record: &Record) -> Option<String> {
    let channel_ok = |c: &str| {
        !c.is_empty()
            && c.chars().count() <= MAX_LOGIN_CHARS
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
    };
    match record {
        Record::Message(m) => {
            if !channel_ok(&m.channel) {
                return Some(format!(
                    "channel {} is not a Twitch login (1 to {MAX_LOGIN_CHARS} characters of a-z, 0-9, _)",
                    preview(&m.channel)
                ));
            }
            let uuid_ok = m.message_id.len() == 36 && uuid::Uuid::try_parse(&m.message_id).is_ok();
            if !uuid_ok {
                return Some(format!("message id {} is not a UUID", preview(&m.message_id)));
            }
            None
        }
        Record::Notice(n) => (n.channel != "*" && !channel_ok(&n.channel))
            .then(|| format!("notice channel {} is not a Twitch login or `*`", preview(&n.channel))),
    }
}

/// A value from the network for a message: at most 40 characters, quoted, then its length.
fn preview(s: &str) -> String {
    let n = s.chars().count();
    if n <= 40 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(40).collect();
        format!("{head:?}… ({n} characters)")
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
}
