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
    /// `returning-chatter` tag. None in records spooled before this field existed.
    #[serde(default)]
    pub returning_chatter: Option<bool>,
    /// `vip` tag, or a `vip` badge. None in records spooled before this field existed.
    #[serde(default)]
    pub vip: Option<bool>,
    /// Shared chat: `source-room-id`, the room the message was sent in (none outside shared chat).
    #[serde(default)]
    pub source_room_id: Option<String>,
    /// Shared chat: `source-id`, the id of the message in the room it was sent in; each channel's
    /// copy has its own `id` (its row), all share this one.
    #[serde(default)]
    pub source_id: Option<String>,
    /// The exact line as received, when `[storage] raw_lines` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
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
    /// The exact line as received, when `[storage] raw_lines` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// A chat event other than a message: a USERNOTICE (sub, raid, announcement …), a CLEARCHAT
/// (timeout, ban, chat clear), a CLEARMSG (one message deleted) or a ROOMSTATE (room modes).
/// Rows of `chat_events`; the README's "What is stored" maps each field to its Twitch source.
/// `Default` is for building rows in tests field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Dedupe key: Twitch's `id` tag when the line has one (USERNOTICE), else a UUID v5 of the
    /// room, the kind, the target and `tmi-sent-ts`, fixed when the line is read, so the same
    /// event seen by two accounts (or retried, or replayed from the spool) is stored once.
    pub event_key: String,
    /// The IRC command, lower case: `usernotice`, `clearchat`, `clearmsg` or `roomstate`.
    /// (`event_kind` in the spool's JSON, where `kind` names the record variant.)
    #[serde(rename = "event_kind")]
    pub kind: String,
    /// USERNOTICE's `msg-id` (`sub`, `raid`, … or any future one); none for other kinds.
    pub msg_id: Option<String>,
    /// Channel login, without `#`.
    pub channel: String,
    /// Channel's user id (tag `room-id`); none when empty (CLEARMSG often sends it empty).
    pub room_id: Option<String>,
    /// The user the event is about: the sender of a USERNOTICE, the target of a CLEARCHAT.
    pub user_id: Option<String>,
    /// That user's login (USERNOTICE `login`, CLEARCHAT/CLEARMSG target login).
    pub login: Option<String>,
    /// USERNOTICE `display-name`.
    pub display_name: Option<String>,
    /// USERNOTICE badges as a JSON object text, badge → version.
    pub badges: Option<String>,
    /// USERNOTICE `badge-info` as a JSON object text (`{"subscriber":14}`).
    pub badge_info: Option<String>,
    /// USERNOTICE name colour.
    pub color: Option<String>,
    /// USERNOTICE raw `emotes` tag.
    pub emotes: Option<String>,
    /// The user's own text (resub message, announcement) or the deleted message's (CLEARMSG).
    pub text: Option<String>,
    /// USERNOTICE `system-msg`, unescaped.
    pub system_msg: Option<String>,
    /// JSON object text: every `msg-param-*` tag of a USERNOTICE, named as Twitch sends it;
    /// the mode tags of a ROOMSTATE as sent (the store merges them onto the room's last state
    /// into the `room_state` column); the tags of CLEARCHAT/CLEARMSG that have no column. Integers are JSON numbers (0/1 flags too),
    /// `true`/`false` booleans, everything else strings.
    pub params: String,
    /// `msg-param-cumulative-months` (sub, resub) or `msg-param-months` (subgift).
    pub cumulative_months: Option<i32>,
    /// `msg-param-streak-months`.
    pub streak_months: Option<i32>,
    /// `msg-param-sub-plan`: `Prime`, `1000`, `2000`, `3000`.
    pub sub_plan: Option<String>,
    /// `msg-param-recipient-id` (gifts).
    pub recipient_id: Option<String>,
    /// `msg-param-recipient-user-name` (gifts).
    pub recipient_login: Option<String>,
    /// `msg-param-viewerCount` (raid).
    pub viewer_count: Option<i32>,
    /// CLEARCHAT `ban-duration` in seconds (a timeout; none for a ban or a clear).
    pub ban_duration: Option<i32>,
    /// CLEARCHAT `target-user-id`.
    pub target_user_id: Option<String>,
    /// CLEARCHAT's trailing login, CLEARMSG's `login`.
    pub target_login: Option<String>,
    /// CLEARMSG `target-msg-id`: the deleted message's id.
    pub target_msg_id: Option<String>,
    /// Twitch's `tmi-sent-ts`, or the receive time when the line has none (ROOMSTATE).
    pub sent_at: DateTime<Utc>,
    /// When this process read the line.
    pub received_at: DateTime<Utc>,
    /// The exact line as received, when `[storage] raw_lines` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
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
    /// Any other chat event (USERNOTICE, CLEARCHAT, CLEARMSG, ROOMSTATE).
    Event(ChatEvent),
}

impl Record {
    /// When this process read the line.
    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            Record::Message(m) => m.received_at,
            Record::Notice(n) => n.received_at,
            Record::Event(e) => e.received_at,
        }
    }
}

/// Longest Twitch channel login.
pub const MAX_LOGIN_CHARS: usize = 25;
/// Longest event key: far below the btree index entry limit, far above a UUID's 36.
pub const MAX_KEY_CHARS: usize = 100;

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
            // Indexed (a user's history): an entry over the btree limit would fail its batch once.
            if let Some(u) = m.user_id.as_deref().filter(|u| u.chars().count() > MAX_KEY_CHARS) {
                return Some(format!("user id {} is over {MAX_KEY_CHARS} characters", preview(u)));
            }
            None
        }
        Record::Notice(n) => (n.channel != "*" && !channel_ok(&n.channel))
            .then(|| format!("notice channel {} is not a Twitch login or `*`", preview(&n.channel))),
        Record::Event(e) => {
            if !channel_ok(&e.channel) {
                return Some(format!("event channel {} is not a Twitch login", preview(&e.channel)));
            }
            // The key is a unique index entry: Twitch's ids are UUIDs, ours too.
            if e.event_key.is_empty() || e.event_key.chars().count() > MAX_KEY_CHARS {
                return Some(format!(
                    "event key {} is empty or over {MAX_KEY_CHARS} characters",
                    preview(&e.event_key)
                ));
            }
            if !matches!(e.kind.as_str(), "usernotice" | "clearchat" | "clearmsg" | "roomstate") {
                return Some(format!("event kind {} is not one the logger makes", preview(&e.kind)));
            }
            // Indexed: an entry over the btree limit would fail the whole batch once.
            for (what, v) in [("user id", &e.user_id), ("target message id", &e.target_msg_id)] {
                if let Some(v) = v.as_deref().filter(|v| v.chars().count() > MAX_KEY_CHARS) {
                    return Some(format!("{what} {} is over {MAX_KEY_CHARS} characters", preview(v)));
                }
            }
            None
        }
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

/// Users named by login or by numeric user id: `record`'s own copy of the config's lists
/// (`record` imports nothing of ours; `app` builds it from the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSet {
    /// Lowercase logins.
    pub logins: std::collections::HashSet<String>,
    /// Twitch user ids.
    pub ids: std::collections::HashSet<String>,
}

impl UserSet {
    /// Neither a login nor an id.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty() && self.ids.is_empty()
    }

    /// Whether `user` is listed, by login (in any case: the list is lowercase, and a line
    /// need not be) or by id.
    pub fn has(&self, user: &UserRef<'_>) -> bool {
        let login_listed = |l: &str| {
            if l.bytes().any(|b| b.is_ascii_uppercase()) {
                self.logins.contains(&l.to_ascii_lowercase())
            } else {
                self.logins.contains(l)
            }
        };
        user.login.is_some_and(login_listed) || user.id.is_some_and(|i| self.ids.contains(i))
    }
}

/// A user as a row names them (either part may be missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRef<'a> {
    /// Login, lowercase as Twitch sends it.
    pub login: Option<&'a str>,
    /// Numeric user id.
    pub id: Option<&'a str>,
}

/// What the user filter looks at in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Involved<'a> {
    /// The channel the row belongs to (per-group ignore lists are per channel).
    pub channel: &'a str,
    /// Who sent it (a chatter; none for a server notice).
    pub sender: Option<UserRef<'a>>,
    /// Another user the row is about: an event's target (banned, timed out, gifted to, the
    /// author of a deleted message). Never a reason to drop a row for `ignore_users`, only
    /// for `opt_out_users`.
    pub target: Option<UserRef<'a>>,
}

impl Record {
    /// The channel, sender and target of this row, for [`UserFilter`].
    pub fn involved(&self) -> Involved<'_> {
        match self {
            Record::Message(m) => Involved {
                channel: &m.channel,
                sender: Some(UserRef { login: Some(&m.username), id: m.user_id.as_deref() }),
                // A reply to an opted-out user is another user's message: kept (see README).
                target: None,
            },
            // A notice is Twitch's, about the channel: it names no chatter.
            Record::Notice(n) => Involved { channel: &n.channel, sender: None, target: None },
            // The target is who the event is about: the timed-out or banned user, the deleted
            // message's author, else a gift's recipient.
            Record::Event(e) => {
                let (t_login, t_id) = if e.target_login.is_some() || e.target_user_id.is_some() {
                    (e.target_login.as_deref(), e.target_user_id.as_deref())
                } else {
                    (e.recipient_login.as_deref(), e.recipient_id.as_deref())
                };
                Involved {
                    channel: &e.channel,
                    sender: (e.login.is_some() || e.user_id.is_some())
                        .then_some(UserRef { login: e.login.as_deref(), id: e.user_id.as_deref() }),
                    target: (t_login.is_some() || t_id.is_some()).then_some(UserRef { login: t_login, id: t_id }),
                }
            }
        }
    }
}

/// Why the user filter dropped a row: the `reason` label of `filtered_rows_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// Sent by a user in `ignore_users` (global, or of a group logging the channel).
    Ignored,
    /// Sent by, or about, a user in `opt_out_users`.
    OptedOut,
}

/// The config's user filters as plain data: which rows are never stored. Built by `app` from
/// the config, and replaced whole on a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// `filters.ignore_users`: senders ignored in every channel.
    pub ignore: UserSet,
    /// Each group's `ignore_users`, by the group's channels (a channel in several groups gets
    /// the union). Shared: a group of 5,000 channels holds its list once.
    pub ignore_in: std::collections::HashMap<String, std::sync::Arc<UserSet>>,
    /// `filters.opt_out_users`: neither their rows nor rows about them are stored.
    pub opt_out: UserSet,
}

impl UserFilter {
    /// Filters nothing (the common case: one cheap test per row).
    pub fn is_empty(&self) -> bool {
        self.ignore.is_empty() && self.opt_out.is_empty() && self.ignore_in.values().all(|s| s.is_empty())
    }

    /// `None` to store the row, else why not. An opt-out wins over an ignore.
    pub fn verdict(&self, record: &Record) -> Option<Filtered> {
        if self.is_empty() {
            return None;
        }
        self.verdict_on(record.involved())
    }

    /// [`Self::verdict`] on what a row names.
    pub fn verdict_on(&self, involved: Involved<'_>) -> Option<Filtered> {
        let Involved { channel, sender, target } = involved;
        if sender.iter().chain(&target).any(|u| self.opt_out.has(u)) {
            return Some(Filtered::OptedOut);
        }
        let sender = sender?;
        let ignored = self.ignore.has(&sender) || self.ignore_in.get(channel).is_some_and(|s| s.has(&sender));
        ignored.then_some(Filtered::Ignored)
    }

    /// Whether the row is stored.
    pub fn keeps(&self, record: &Record) -> bool {
        self.verdict(record).is_none()
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    fn msg(channel: &str, login: &str, id: Option<&str>) -> Record {
        Record::Message(ChatMessage {
            channel: channel.into(),
            username: login.into(),
            user_id: id.map(str::to_string),
            ..Default::default()
        })
    }

    fn set(logins: &[&str], ids: &[&str]) -> UserSet {
        UserSet {
            logins: logins.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_filter_keeps_every_row() {
        let f = UserFilter::default();
        assert!(f.is_empty());
        assert!(f.keeps(&msg("c", "anyone", Some("1"))));
    }

    #[test]
    fn a_globally_ignored_sender_is_dropped_in_every_channel_by_login_or_by_id() {
        let f = UserFilter { ignore: set(&["nightbot"], &["100"]), ..Default::default() };
        assert_eq!(f.verdict(&msg("a", "nightbot", Some("19264788"))), Some(Filtered::Ignored));
        assert_eq!(f.verdict(&msg("b", "renamed_bot", Some("100"))), Some(Filtered::Ignored), "by id");
        assert!(f.keeps(&msg("a", "viewer", Some("5"))));
        assert!(f.keeps(&msg("a", "viewer", None)));
        assert!(f.keeps(&msg("a", "100", Some("5"))), "an id entry is not a login");
        assert_eq!(f.verdict(&msg("a", "NightBot", None)), Some(Filtered::Ignored), "a login in capitals");
    }

    #[test]
    fn a_group_ignore_drops_the_sender_only_in_that_groups_channels() {
        let mut ignore_in = std::collections::HashMap::new();
        ignore_in.insert("esl_csgo".to_string(), std::sync::Arc::new(set(&["esl_bot"], &[])));
        let f = UserFilter { ignore_in, ..Default::default() };
        assert_eq!(f.verdict(&msg("esl_csgo", "esl_bot", None)), Some(Filtered::Ignored));
        assert!(f.keeps(&msg("other", "esl_bot", None)));
    }

    #[test]
    fn an_opted_out_user_is_dropped_everywhere_and_counted_as_opted_out_even_if_also_ignored() {
        let f = UserFilter { ignore: set(&["shy"], &[]), opt_out: set(&["shy"], &["42"]), ..Default::default() };
        assert_eq!(f.verdict(&msg("a", "shy", None)), Some(Filtered::OptedOut));
        assert_eq!(f.verdict(&msg("a", "new_name", Some("42"))), Some(Filtered::OptedOut));
        assert!(f.keeps(&msg("a", "loud", Some("43"))));
    }

    #[test]
    fn notices_name_no_user_and_are_kept() {
        let f = UserFilter { ignore: set(&["x"], &[]), opt_out: set(&["y"], &[]), ..Default::default() };
        let n = Record::Notice(ChannelNotice {
            channel: "x".into(),
            msg_id: None,
            message: "y".into(),
            received_at: Default::default(),
            tags: String::new(),
            notice_at: None,
            key: String::new(),
            raw: None,
        });
        assert!(f.keeps(&n));
    }

    #[test]
    fn a_row_about_an_opted_out_target_is_dropped_but_one_about_an_ignored_target_is_kept() {
        // The events engineer's rows reach the filter through `involved`; this checks the rule.
        let f = UserFilter { ignore: set(&["bot"], &[]), opt_out: set(&[], &["42"]), ..Default::default() };
        let about = |target: UserRef<'static>| Involved { channel: "c", sender: None, target: Some(target) };
        assert_eq!(f.verdict_on(about(UserRef { login: Some("x"), id: Some("42") })), Some(Filtered::OptedOut));
        assert_eq!(f.verdict_on(about(UserRef { login: Some("bot"), id: None })), None);
        let by_bot = Involved { channel: "c", sender: Some(UserRef { login: Some("bot"), id: None }), target: None };
        assert_eq!(f.verdict_on(by_bot), Some(Filtered::Ignored));
    }

    #[test]
    fn events_name_their_sender_and_their_target_or_gift_recipient() {
        let f = UserFilter { opt_out: set(&["private"], &["42"]), ..Default::default() };
        let ev = |login: Option<&str>, target: Option<&str>, recipient_id: Option<&str>| {
            Record::Event(ChatEvent {
                channel: "c".into(),
                login: login.map(Into::into),
                target_login: target.map(Into::into),
                recipient_id: recipient_id.map(Into::into),
                ..Default::default()
            })
        };
        assert_eq!(f.verdict(&ev(Some("private"), None, None)), Some(Filtered::OptedOut), "their own sub");
        assert_eq!(f.verdict(&ev(None, Some("private"), None)), Some(Filtered::OptedOut), "their timeout");
        assert_eq!(f.verdict(&ev(Some("gifter"), None, Some("42"))), Some(Filtered::OptedOut), "a gift to them");
        assert!(f.keeps(&ev(Some("gifter"), None, Some("7"))));
        assert!(f.keeps(&ev(None, None, None)), "a clear chat names nobody");
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_spool_format_and_old_spooled_messages_still_read() {
        let e = Record::Event(ChatEvent {
            event_key: "k".into(),
            kind: "usernotice".into(),
            msg_id: Some("sub".into()),
            channel: "c".into(),
            params: r#"{"msg-param-months":1}"#.into(),
            raw: Some("@x=1 :tmi.twitch.tv USERNOTICE #c".into()),
            ..ChatEvent::default()
        });
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.starts_with(r#"{"kind":"event""#), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), e);
        // A message as the previous version spooled it: none of the new fields.
        let old = r#"{"kind":"message","message_id":"m","channel":"c","room_id":null,"user_id":null,"username":"u","display_name":null,"text":"t","badges":"{}","color":null,"is_mod":false,"is_subscriber":false,"bits":0,"is_action":false,"emotes":null,"first_msg":null,"reply_parent_msg_id":null,"reply_parent_user_login":null,"sent_at":"2026-01-01T00:00:00Z","received_at":"2026-01-01T00:00:00Z"}"#;
        let Record::Message(m) = serde_json::from_str(old).unwrap() else { panic!("a message") };
        assert_eq!((m.vip, m.returning_chatter, m.source_id, m.raw), (None, None, None, None));
    }

    #[test]
    fn an_event_that_no_index_can_hold_or_of_an_unknown_kind_is_invalid() {
        let ok =
            ChatEvent { event_key: "k".into(), kind: "clearchat".into(), channel: "c".into(), ..ChatEvent::default() };
        assert_eq!(invalid_reason(&Record::Event(ok.clone())), None);
        let long = ChatEvent { event_key: "k".repeat(101), ..ok.clone() };
        assert!(invalid_reason(&Record::Event(long)).unwrap().contains("event key"));
        let kind = ChatEvent { kind: "whisper".into(), ..ok.clone() };
        assert!(invalid_reason(&Record::Event(kind)).is_some());
        let user = ChatEvent { user_id: Some("1".repeat(101)), ..ok.clone() };
        assert!(invalid_reason(&Record::Event(user)).unwrap().contains("user id"));
        let channel = ChatEvent { channel: "#c".into(), ..ok };
        assert!(invalid_reason(&Record::Event(channel)).is_some());
    }
}
