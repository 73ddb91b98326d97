//! The rows the Twitch clients produce and the store keeps: a leaf both sides import, so the IRC
//! side knows nothing of the writer and the writer nothing of IRC. Also the channel that
//! carries them from one to the other.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The sending half of the row channel: what each client holds. Sending waits while the
/// receiver's buffer is full, so a slow writer slows reading instead of growing memory.
pub type RecordTx = tokio::sync::mpsc::Sender<Record>;
/// The receiving half: the writer's intake.
pub type RecordRx = tokio::sync::mpsc::Receiver<Record>;

/// A row channel holding at most `capacity` records in flight.
pub fn channel(capacity: usize) -> (RecordTx, RecordRx) {
    tokio::sync::mpsc::channel(capacity)
}

/// One chat line (PRIVMSG), ready to store. Columns of `chat_messages`. `Default` (empty
/// strings, the Unix epoch) is for building rows in tests field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
