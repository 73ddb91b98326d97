//! Twitch messages → rows. Pure functions, so every column's mapping is unit-tested.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use twitch_irc::message::{AsRawIRC, NoticeMessage, ServerMessage};

use super::chatline;

use crate::record::{ChannelNotice, Record};
use uuid::Uuid;

/// The row for a message we store, or `None` for protocol chatter (PING, JOIN, ROOMSTATE …).
/// PRIVMSGs normally never get here (the transport parses them, see [`super::chatline`]); one
/// that does is parsed from its raw line by the same parser.
pub fn to_record(msg: ServerMessage, received_at: DateTime<Utc>) -> Option<Record> {
    match msg {
        ServerMessage::Notice(n) => Some(Record::Notice(notice(n, received_at))),
        other if other.source().command == "PRIVMSG" => {
            chatline::parse_privmsg(&other.source().as_raw_irc(), received_at).map(Record::Message)
        }
        _ => None,
    }
}

/// Maps a NOTICE to a `channel_notices` row (`*` for server-wide notices), with its tags, its
/// time and its dedupe key.
pub fn notice(n: NoticeMessage, received_at: DateTime<Utc>) -> ChannelNotice {
    // NUL cannot be stored in text or jsonb; a BTreeMap keeps the JSON (and so the key) stable.
    let tags: BTreeMap<String, String> =
        n.source.tags.0.iter().map(|(k, v)| (chatline::strip_nul(k.clone()), chatline::strip_nul(v.clone()))).collect();
    // Before year 10000: inside what PostgreSQL and chrono both hold.
    let notice_at = tags
        .get("tmi-sent-ts")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|ms| (1..253_402_300_800_000).contains(ms))
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(received_at);
    let mut row = ChannelNotice {
        channel: n.channel_login.unwrap_or_else(|| "*".to_string()),
        msg_id: n.message_id.map(chatline::strip_nul),
        message: chatline::strip_nul(n.message_text),
        received_at,
        tags: serde_json::to_string(&tags).expect("string map serialises"),
        notice_at: Some(notice_at),
        key: String::new(),
    };
    row.key = notice_key(&row);
    row
}

/// Namespace of notice keys. Fixed forever: a key must not change between versions, or a spool
/// written by one version and replayed by the next would store its notices twice.
const NOTICE_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_0f3e_8a47_4c2b_9e6a_1f2d_3c4b_5a69);

/// The notice's dedupe key: a UUID v5 of everything stored about it and when it was read. Two
/// identical notices read at the same instant (to the nanosecond) are one.
pub fn notice_key(n: &ChannelNotice) -> String {
    // NUL never occurs in the fields (stripped above), so it separates them unambiguously.
    let content = format!(
        "{}\0{}\0{}\0{}\0{}",
        n.channel,
        n.msg_id.as_deref().unwrap_or(""),
        n.message,
        n.tags,
        n.received_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    );
    Uuid::new_v5(&NOTICE_KEY_NAMESPACE, content.as_bytes()).hyphenated().to_string()
}

/// NOTICE texts Twitch sends when it refuses a login (then it closes the connection).
pub fn is_login_rejection(n: &NoticeMessage) -> bool {
    n.channel_login.is_none()
        && (n.message_text.contains("Login authentication failed")
            || n.message_text.contains("Improperly formatted auth")
            || n.message_text.contains("Login unsuccessful"))
}

/// NOTICE `msg-id`s that mean a JOIN did not take.
pub fn is_join_failure(n: &NoticeMessage) -> bool {
    matches!(
        n.message_id.as_deref(),
        Some("msg_channel_suspended" | "msg_channel_blocked" | "tos_ban" | "msg_room_not_found" | "msg_suspended")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use twitch_irc::message::IRCMessage;

    fn parse(line: &str) -> ServerMessage {
        ServerMessage::try_from(IRCMessage::parse(line).unwrap()).unwrap()
    }

    #[test]
    fn a_privmsg_that_reaches_twitch_irc_is_still_stored() {
        let line = "@badge-info=;badges=;color=;display-name=A;emotes=;id=x1;mod=0;room-id=1;subscriber=0;tmi-sent-ts=1594545155039;user-id=2 :a!a@a.tmi.twitch.tv PRIVMSG #c :he\0llo";
        let Some(Record::Message(m)) = to_record(parse(line), Utc::now()) else { panic!("dropped") };
        assert_eq!((m.message_id.as_str(), m.text.as_str()), ("x1", "hello"));
    }

    #[test]
    fn notices_become_rows_with_star_for_server_wide_ones() {
        let Some(Record::Notice(n)) =
            to_record(parse(":tmi.twitch.tv NOTICE * :Login authentication failed"), Utc::now())
        else {
            panic!()
        };
        assert_eq!((n.channel.as_str(), n.msg_id), ("*", None));
    }

    #[test]
    fn a_notice_keeps_its_tags_and_time_and_the_same_line_read_at_the_same_instant_has_the_same_key() {
        let at = DateTime::from_timestamp_millis(1_780_000_000_123).unwrap();
        let line = "@msg-id=msg_banned;x-nul=a\0b :tmi.twitch.tv NOTICE #forsen :You are permanently banned from talking in forsen.";
        let Some(Record::Notice(n)) = to_record(parse(line), at) else { panic!("dropped") };
        assert_eq!(n.tags, r#"{"msg-id":"msg_banned","x-nul":"ab"}"#);
        assert_eq!(n.notice_at, Some(at), "no tmi-sent-ts: the receive time");
        let Some(Record::Notice(again)) = to_record(parse(line), at) else { panic!() };
        assert_eq!(again.key, n.key, "a retry or replay carries the same key");
        assert_eq!(uuid::Uuid::parse_str(&n.key).unwrap().get_version_num(), 5);
        let Some(Record::Notice(later)) = to_record(parse(line), at + chrono::Duration::nanoseconds(1)) else {
            panic!()
        };
        assert_ne!(later.key, n.key, "the same text read again later is another notice");
        // The key survives the spool (JSON) unchanged.
        let back: Record = serde_json::from_str(&serde_json::to_string(&Record::Notice(n.clone())).unwrap()).unwrap();
        assert_eq!(back, Record::Notice(n));
    }

    #[test]
    fn a_notice_with_tmi_sent_ts_uses_it_and_an_impossible_one_falls_back_to_the_receive_time() {
        let at = Utc::now();
        let n = |ts: &str| {
            let Some(Record::Notice(n)) =
                to_record(parse(&format!("@msg-id=x;tmi-sent-ts={ts} :tmi.twitch.tv NOTICE #c :t")), at)
            else {
                panic!()
            };
            n.notice_at.unwrap()
        };
        assert_eq!(n("1594545155039"), DateTime::from_timestamp_millis(1594545155039).unwrap());
        for bad in ["-5", "0", "99999999999999999", "soon"] {
            assert_eq!(n(bad), at, "{bad}");
        }
    }

    #[test]
    fn login_rejection_and_join_failures_are_recognised() {
        let ServerMessage::Notice(n) = parse(":tmi.twitch.tv NOTICE * :Login authentication failed") else { panic!() };
        assert!(is_login_rejection(&n));
        let ServerMessage::Notice(n) =
            parse("@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #gone :This channel has been suspended.")
        else {
            panic!()
        };
        assert!(is_join_failure(&n) && !is_login_rejection(&n));
        let ServerMessage::Notice(n) = parse(
            "@msg-id=msg_banned :tmi.twitch.tv NOTICE #forsen :You are permanently banned from talking in forsen.",
        ) else {
            panic!()
        };
        assert!(!is_join_failure(&n), "a chat ban still lets us read");
    }
}
