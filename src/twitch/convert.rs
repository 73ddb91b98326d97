//! Twitch messages → rows. Pure functions, so every column's mapping is unit-tested.

use chrono::{DateTime, Utc};
use twitch_irc::message::{Badge, IRCMessage, IRCPrefix, NoticeMessage, PrivmsgMessage, ServerMessage};

use crate::store::{ChannelNotice, ChatMessage, Record};

/// The row for a message we store, or `None` for protocol chatter (PING, JOIN, ROOMSTATE …).
pub fn to_record(msg: ServerMessage, received_at: DateTime<Utc>) -> Option<Record> {
    match msg {
        ServerMessage::Privmsg(m) => Some(Record::Message(chat_message(m, received_at))),
        ServerMessage::Notice(n) => Some(Record::Notice(notice(n, received_at))),
        // twitch-irc hands over a PRIVMSG it could not parse (say, Twitch dropped a tag it
        // requires) as a generic message: keep it rather than lose it.
        other if other.source().command == "PRIVMSG" => raw_privmsg(other.source(), received_at).map(Record::Message),
        _ => None,
    }
}

/// Best-effort mapping straight from the tags, for PRIVMSGs twitch-irc would not parse.
/// Needs at least an `id` tag (the dedupe key) and a channel.
pub fn raw_privmsg(src: &IRCMessage, received_at: DateTime<Utc>) -> Option<ChatMessage> {
    let tag = |k: &str| src.tags.0.get(k).filter(|v| !v.is_empty()).cloned();
    let message_id = tag("id")?;
    let channel = src.params.first()?.trim_start_matches('#').to_string();
    let raw_text = src.params.get(1).cloned().unwrap_or_default();
    let (text, is_action) = match raw_text.strip_prefix("\u{1}ACTION ").and_then(|t| t.strip_suffix('\u{1}')) {
        Some(t) => (t.to_string(), true),
        None => (raw_text, false),
    };
    let badges: Vec<Badge> = tag("badges")
        .unwrap_or_default()
        .split(',')
        .filter_map(|b| b.split_once('/'))
        .map(|(n, v)| Badge { name: n.to_string(), version: v.to_string() })
        .collect();
    let has = |names: &[&str]| badges.iter().any(|b| names.contains(&b.name.as_str()));
    let username = match &src.prefix {
        Some(IRCPrefix::Full { nick, .. }) => nick.clone(),
        Some(IRCPrefix::HostOnly { host }) => host.clone(),
        None => String::new(),
    };
    Some(ChatMessage {
        message_id,
        channel,
        room_id: tag("room-id"),
        user_id: tag("user-id"),
        display_name: tag("display-name").map(clean),
        username,
        text: clean(text),
        badges: badges_json(&badges),
        color: tag("color"),
        is_mod: has(&["moderator", "broadcaster"]) || tag("mod").as_deref() == Some("1"),
        is_subscriber: has(&["subscriber", "founder"]) || tag("subscriber").as_deref() == Some("1"),
        bits: tag("bits").and_then(|b| b.parse::<i64>().ok()).map_or(0, |b| b.clamp(0, i32::MAX as i64) as i32),
        is_action,
        emotes: tag("emotes"),
        first_msg: tag("first-msg").map(|v| v == "1"),
        reply_parent_msg_id: tag("reply-parent-msg-id"),
        reply_parent_user_login: tag("reply-parent-user-login"),
        sent_at: tag("tmi-sent-ts")
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(received_at),
        received_at,
    })
}

/// PostgreSQL `text` cannot hold NUL; a stray one must not sink the batch.
fn clean(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

/// Badges as a JSON object, badge → version: a number where the version is one (as the
/// original stored `{"subscriber":12}`), else the string, so nothing is lost. Written straight
/// into a string: this runs once per message.
pub fn badges_json(badges: &[Badge]) -> String {
    let mut out = String::with_capacity(2 + badges.len() * 24);
    out.push('{');
    for (i, b) in badges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, &b.name);
        out.push(':');
        let numeric = !b.version.is_empty()
            && b.version.len() < 18
            && b.version.bytes().all(|c| c.is_ascii_digit())
            && (b.version == "0" || !b.version.starts_with('0'));
        if numeric {
            out.push_str(&b.version);
        } else {
            push_json_str(&mut out, &b.version);
        }
    }
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// Maps a PRIVMSG to a `chat_messages` row. Takes the message apart (moves, no copies).
pub fn chat_message(mut m: PrivmsgMessage, received_at: DateTime<Utc>) -> ChatMessage {
    let mut tags = std::mem::take(&mut m.source.tags.0);
    let mut tag = |name: &str| tags.remove(name).filter(|v| !v.is_empty());
    let has_badge = |names: &[&str]| m.badges.iter().any(|b| names.contains(&b.name.as_str()));
    let is_mod = has_badge(&["moderator", "broadcaster"]) || tag("mod").as_deref() == Some("1");
    let is_subscriber = has_badge(&["subscriber", "founder"]) || tag("subscriber").as_deref() == Some("1");
    let first_msg = tag("first-msg").map(|v| v == "1");
    let color = tag("color");
    let emotes = tag("emotes");
    let badges = badges_json(&m.badges);
    let (reply_parent_msg_id, reply_parent_user_login) = match m.reply_parent {
        Some(p) => (Some(p.message_id), Some(p.reply_parent_user.login)),
        None => (None, None),
    };
    ChatMessage {
        message_id: m.message_id,
        room_id: Some(m.channel_id).filter(|r| !r.is_empty()),
        channel: m.channel_login,
        user_id: Some(m.sender.id).filter(|u| !u.is_empty()),
        username: m.sender.login,
        display_name: Some(clean(m.sender.name)).filter(|d| !d.is_empty()),
        text: clean(m.message_text),
        badges,
        color,
        is_mod,
        is_subscriber,
        bits: m.bits.map_or(0, |b| i32::try_from(b).unwrap_or(i32::MAX)),
        is_action: m.is_action,
        emotes,
        first_msg,
        reply_parent_msg_id,
        reply_parent_user_login,
        sent_at: m.server_timestamp,
        received_at,
    }
}

/// Maps a NOTICE to a `channel_notices` row (`*` for server-wide notices).
pub fn notice(n: NoticeMessage, received_at: DateTime<Utc>) -> ChannelNotice {
    ChannelNotice {
        channel: n.channel_login.unwrap_or_else(|| "*".to_string()),
        msg_id: n.message_id,
        message: clean(n.message_text),
        received_at,
    }
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

    fn privmsg(line: &str) -> ChatMessage {
        match to_record(parse(line), Utc::now()) {
            Some(Record::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn nul_in_text_is_stripped_so_postgres_accepts_the_row() {
        let m = privmsg("@badge-info=;badges=;color=;display-name=A;emotes=;id=x1;mod=0;room-id=1;subscriber=0;tmi-sent-ts=1594545155039;user-id=2 :a!a@a.tmi.twitch.tv PRIVMSG #c :he\0llo");
        assert_eq!(m.text, "hello");
    }

    #[test]
    fn non_numeric_badge_versions_are_kept_as_strings() {
        let m = privmsg("@badge-info=;badges=predictions/blue-1,subscriber/0;color=;display-name=A;emotes=;id=x2;mod=0;room-id=1;subscriber=1;tmi-sent-ts=1594545155039;user-id=2 :a!a@a.tmi.twitch.tv PRIVMSG #c :hi");
        let v: serde_json::Value = serde_json::from_str(&m.badges).unwrap();
        assert_eq!(v, serde_json::json!({"predictions": "blue-1", "subscriber": 0}));
        assert!(m.is_subscriber, "subscriber/0 counts as a subscriber");
    }

    #[test]
    fn badges_json_matches_serde_json_for_odd_names_and_versions() {
        let b = |n: &str, v: &str| Badge { name: n.into(), version: v.into() };
        let got = badges_json(&[b("subscriber", "12"), b("pre\"d", "blue-1"), b("x", "007"), b("y", "0")]);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v, serde_json::json!({"subscriber": 12, "pre\"d": "blue-1", "x": "007", "y": 0}));
        assert_eq!(badges_json(&[]), "{}");
    }

    #[test]
    fn broadcaster_counts_as_mod_and_founder_as_subscriber() {
        let m = privmsg("@badge-info=;badges=broadcaster/1,founder/0;color=;display-name=A;emotes=;id=x3;mod=0;room-id=1;subscriber=0;tmi-sent-ts=1594545155039;user-id=2 :a!a@a.tmi.twitch.tv PRIVMSG #c :hi");
        assert!(m.is_mod && m.is_subscriber);
    }

    #[test]
    fn a_privmsg_twitch_irc_cannot_parse_is_still_stored() {
        // No badge-info tag: twitch-irc refuses it, we keep it.
        let line = "@badges=moderator/1;color=#FF0000;display-name=Ann;emotes=;id=raw-1;mod=1;room-id=9;subscriber=0;tmi-sent-ts=1594545155039;user-id=5 :ann!ann@ann.tmi.twitch.tv PRIVMSG #chan :\u{1}ACTION hi\u{1}";
        let raw = IRCMessage::parse(line).unwrap();
        assert!(ServerMessage::try_from(raw.clone()).is_err(), "twitch-irc now parses it; pick another broken line");
        let m = raw_privmsg(&raw, Utc::now()).expect("kept");
        assert_eq!(
            (m.message_id.as_str(), m.channel.as_str(), m.username.as_str(), m.text.as_str()),
            ("raw-1", "chan", "ann", "hi")
        );
        assert!(m.is_action && m.is_mod);
        assert_eq!(m.sent_at.timestamp_millis(), 1594545155039);
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
