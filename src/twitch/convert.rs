//! Twitch messages → rows. Pure functions, so every column's mapping is unit-tested.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use twitch_irc::message::{
    AsRawIRC, Badge, ClearChatAction, ClearChatMessage, ClearMsgMessage, FollowersOnlyMode, IRCMessage, NoticeMessage,
    RoomStateMessage, ServerMessage, UserNoticeMessage,
};

use super::chatline;

use crate::record::{ChannelNotice, ChatEvent, Record};
use uuid::Uuid;

/// The tag the transport adds (when `[storage] raw_lines` is on) to carry the exact line as
/// received through twitch-irc, whose `as_raw_irc()` reorders tags. Taken out again here before
/// anything reads the tags; a line that arrives with it already set has it overwritten.
pub const RAW_TAG: &str = "x-tcl-raw-line";

/// The row for a message we store, or `None` for protocol chatter (PING, JOIN, USERSTATE …).
/// PRIVMSGs normally never get here (the transport parses them, see [`super::chatline`]); one
/// that does is parsed from its raw line by the same parser.
pub fn to_record(mut msg: ServerMessage, received_at: DateTime<Utc>) -> Option<Record> {
    let raw = take_raw(&mut msg);
    match msg {
        ServerMessage::Notice(n) => {
            let mut row = notice(n, received_at);
            row.raw = raw;
            Some(Record::Notice(row))
        }
        ServerMessage::UserNotice(u) => Some(Record::Event(ChatEvent { raw, ..usernotice(u, received_at) })),
        ServerMessage::ClearChat(c) => Some(Record::Event(ChatEvent { raw, ..clearchat(c, received_at) })),
        ServerMessage::ClearMsg(c) => Some(Record::Event(ChatEvent { raw, ..clearmsg(c, received_at) })),
        ServerMessage::RoomState(r) => roomstate(r, received_at).map(|e| Record::Event(ChatEvent { raw, ..e })),
        other if other.source().command == "PRIVMSG" => {
            let mut m = chatline::parse_privmsg(&other.source().as_raw_irc(), received_at)?;
            m.raw = raw;
            Some(Record::Message(m))
        }
        _ => None,
    }
}

/// Removes the transport's raw-line tag from the message, returning the line.
fn take_raw(msg: &mut ServerMessage) -> Option<String> {
    let source: &mut IRCMessage = match msg {
        ServerMessage::Notice(m) => &mut m.source,
        ServerMessage::UserNotice(m) => &mut m.source,
        ServerMessage::ClearChat(m) => &mut m.source,
        ServerMessage::ClearMsg(m) => &mut m.source,
        ServerMessage::RoomState(m) => &mut m.source,
        ServerMessage::Privmsg(m) => &mut m.source,
        _ => return None,
    };
    source.tags.0.remove(RAW_TAG).map(chatline::strip_nul)
}

/// Namespace of event keys made here (for events without a Twitch `id`). Fixed forever, like
/// [`NOTICE_KEY_NAMESPACE`].
const EVENT_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x8e2f_41c7_3b90_4d6a_a51e_7c08_d93f_2b64);

/// A key for an event without a Twitch `id`: the same for every account that sees it (its
/// parts are what Twitch sent), different for two events. NUL never occurs in the parts.
fn event_key(parts: &[&str]) -> String {
    Uuid::new_v5(&EVENT_KEY_NAMESPACE, parts.join("\0").as_bytes()).hyphenated().to_string()
}

/// A tag value as typed JSON: an integer (no sign but `-`, no leading zero, fits i64) is a
/// number, `true`/`false` a boolean, anything else a string. 0/1 flags such as
/// `msg-param-should-share-streak` stay numbers: by value they cannot be told from counts
/// (`msg-param-months=1`).
pub fn typed(v: &str) -> Value {
    match v {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && v != "-0";
    match v.parse::<i64>() {
        Ok(n) if canonical => Value::from(n),
        _ => Value::String(v.to_string()),
    }
}

/// A tag, non-empty, without NUL.
fn tag(source: &IRCMessage, name: &str) -> Option<String> {
    source.tags.0.get(name).filter(|v| !v.is_empty()).map(|v| chatline::strip_nul(v.clone()))
}

/// A tag that is a canonical integer fitting `i32` (else none: the value stays in `params`).
fn int_tag(source: &IRCMessage, name: &str) -> Option<i32> {
    match typed(source.tags.0.get(name)?) {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    }
}

/// Tags whose name passes `keep`, as a typed JSON object text, without NUL.
fn params_json(source: &IRCMessage, keep: impl Fn(&str) -> bool) -> String {
    let map: Map<String, Value> = source
        .tags
        .0
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (chatline::strip_nul(k.clone()), typed(&chatline::strip_nul(v.clone()))))
        .collect();
    Value::Object(map).to_string()
}

fn badges_json(badges: &[Badge]) -> Option<String> {
    let pairs: Vec<(&str, &str)> = badges.iter().map(|b| (b.name.as_str(), b.version.as_str())).collect();
    (!pairs.is_empty()).then(|| chatline::strip_nul(chatline::badges_json(&pairs)))
}

/// `tmi-sent-ts` when it can be true (see [`chatline::believable`]), else the receive time.
fn sent_time(server: DateTime<Utc>, source: &IRCMessage, received_at: DateTime<Utc>) -> DateTime<Utc> {
    if source.tags.0.contains_key("tmi-sent-ts") && chatline::believable(server, received_at) {
        server
    } else {
        received_at
    }
}

/// The sent time's part of a natural key: `tmi-sent-ts` as sent, or (without one) the receive
/// time to the nanosecond, so that events without a time are never merged.
fn time_part(source: &IRCMessage, received_at: DateTime<Utc>) -> String {
    source
        .tags
        .0
        .get("tmi-sent-ts")
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| received_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// A USERNOTICE (any `msg-id`, known or not) → a `chat_events` row keyed on its `id`.
pub fn usernotice(u: UserNoticeMessage, received_at: DateTime<Utc>) -> ChatEvent {
    let src = &u.source;
    let cumulative_months = int_tag(src, "msg-param-cumulative-months")
        .or_else(|| int_tag(src, "msg-param-months").filter(|_| u.event_id.contains("gift")));
    ChatEvent {
        event_key: chatline::strip_nul(u.message_id.clone()),
        kind: "usernotice".into(),
        msg_id: Some(chatline::strip_nul(u.event_id.clone())),
        channel: chatline::strip_nul(u.channel_login.clone()),
        room_id: Some(chatline::strip_nul(u.channel_id.clone())).filter(|r| !r.is_empty()),
        user_id: Some(chatline::strip_nul(u.sender.id.clone())),
        login: Some(chatline::strip_nul(u.sender.login.clone())),
        display_name: Some(chatline::strip_nul(u.sender.name.clone())),
        badges: badges_json(&u.badges),
        badge_info: badges_json(&u.badge_info),
        color: tag(src, "color"),
        emotes: tag(src, "emotes"),
        text: u.message_text.clone().map(chatline::strip_nul),
        system_msg: Some(chatline::strip_nul(u.system_message.clone())).filter(|s| !s.is_empty()),
        params: params_json(src, |k| k.starts_with("msg-param-")),
        cumulative_months,
        streak_months: int_tag(src, "msg-param-streak-months"),
        sub_plan: tag(src, "msg-param-sub-plan"),
        recipient_id: tag(src, "msg-param-recipient-id"),
        recipient_login: tag(src, "msg-param-recipient-user-name"),
        viewer_count: int_tag(src, "msg-param-viewerCount"),
        sent_at: sent_time(u.server_timestamp, src, received_at),
        received_at,
        ..ChatEvent::default()
    }
}

/// Tags of CLEARCHAT/CLEARMSG that have a column; the rest go to `params`.
const CLEAR_COLUMNS: [&str; 5] = ["room-id", "tmi-sent-ts", "target-user-id", "target-msg-id", "login"];

/// A CLEARCHAT: a timeout (with its duration), a ban, or a clear of the whole chat.
pub fn clearchat(c: ClearChatMessage, received_at: DateTime<Utc>) -> ChatEvent {
    let src = &c.source;
    let (target_id, target_login) = match &c.action {
        ClearChatAction::ChatCleared => (None, None),
        ClearChatAction::UserBanned { user_login, user_id }
        | ClearChatAction::UserTimedOut { user_login, user_id, .. } => {
            (Some(chatline::strip_nul(user_id.clone())), Some(chatline::strip_nul(user_login.clone())))
        }
    };
    let (channel, room) = (chatline::strip_nul(c.channel_login.clone()), chatline::strip_nul(c.channel_id.clone()));
    let event_key =
        event_key(&["clearchat", &channel, &room, target_id.as_deref().unwrap_or(""), &time_part(src, received_at)]);
    ChatEvent {
        event_key,
        kind: "clearchat".into(),
        channel,
        room_id: Some(room).filter(|r| !r.is_empty()),
        user_id: target_id.clone(),
        login: target_login.clone(),
        params: params_json(src, |k| !CLEAR_COLUMNS.contains(&k)),
        ban_duration: match c.action {
            ClearChatAction::UserTimedOut { .. } => int_tag(src, "ban-duration"),
            _ => None,
        },
        target_user_id: target_id,
        target_login,
        sent_at: sent_time(c.server_timestamp, src, received_at),
        received_at,
        ..ChatEvent::default()
    }
}

/// A CLEARMSG: one message deleted. The stored message itself is never touched.
pub fn clearmsg(c: ClearMsgMessage, received_at: DateTime<Utc>) -> ChatEvent {
    let src = &c.source;
    let channel = chatline::strip_nul(c.channel_login.clone());
    let room = tag(src, "room-id");
    let target_msg_id = chatline::strip_nul(c.message_id.clone());
    let event_key =
        event_key(&["clearmsg", &channel, room.as_deref().unwrap_or(""), &target_msg_id, &time_part(src, received_at)]);
    let login = Some(chatline::strip_nul(c.sender_login.clone())).filter(|l| !l.is_empty());
    ChatEvent {
        event_key,
        kind: "clearmsg".into(),
        channel,
        room_id: room,
        login: login.clone(),
        text: Some(chatline::strip_nul(c.message_text.clone())),
        params: params_json(src, |k| !CLEAR_COLUMNS.contains(&k)),
        target_login: login,
        target_msg_id: Some(target_msg_id).filter(|t| !t.is_empty()),
        sent_at: sent_time(c.server_timestamp, src, received_at),
        received_at,
        ..ChatEvent::default()
    }
}

/// A ROOMSTATE's modes as sent (the full state after a JOIN, one mode when it changes): the
/// five modes twitch-irc reads, typed (`followers-only` in minutes, -1 = off; `slow` in
/// seconds), plus any other tag but `room-id`. None if it carries no mode at all. The store
/// merges it onto the room's last state and keeps it only if that changes.
pub fn roomstate(r: RoomStateMessage, received_at: DateTime<Utc>) -> Option<ChatEvent> {
    let src = &r.source;
    const TYPED: [&str; 5] = ["emote-only", "followers-only", "r9k", "slow", "subs-only"];
    let mut modes = Map::new();
    if let Some(v) = r.emote_only {
        modes.insert("emote-only".into(), Value::Bool(v));
    }
    if let Some(v) = &r.followers_only {
        let minutes = match v {
            FollowersOnlyMode::Disabled => -1,
            FollowersOnlyMode::Enabled(d) => i64::try_from(d.as_secs() / 60).unwrap_or(i64::MAX),
        };
        modes.insert("followers-only".into(), Value::from(minutes));
    }
    if let Some(v) = r.r9k {
        modes.insert("r9k".into(), Value::Bool(v));
    }
    if let Some(v) = r.slow_mode {
        modes.insert("slow".into(), Value::from(v.as_secs()));
    }
    if let Some(v) = r.subscribers_only {
        modes.insert("subs-only".into(), Value::Bool(v));
    }
    for (k, v) in &src.tags.0 {
        if k != "room-id" && k != "tmi-sent-ts" && !TYPED.contains(&k.as_str()) {
            modes.insert(chatline::strip_nul(k.clone()), typed(&chatline::strip_nul(v.clone())));
        }
    }
    if modes.is_empty() {
        return None;
    }
    let params = Value::Object(modes).to_string();
    let (channel, room) = (chatline::strip_nul(r.channel_login.clone()), chatline::strip_nul(r.channel_id.clone()));
    let at = received_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    Some(ChatEvent {
        event_key: event_key(&["roomstate", &channel, &room, &params, &at]),
        kind: "roomstate".into(),
        channel,
        room_id: Some(room).filter(|r| !r.is_empty()),
        params,
        sent_at: received_at,
        received_at,
        ..ChatEvent::default()
    })
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
        raw: None,
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
    fn every_sample_event_line_becomes_one_row_of_its_kind_and_unknown_msg_ids_are_kept() {
        let text = include_str!("../../tests/fixtures/twitch-irc-samples.txt");
        let at = Utc::now();
        let mut kinds = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let command = ["USERNOTICE", "CLEARCHAT", "CLEARMSG", "ROOMSTATE"]
                .into_iter()
                .find(|c| line.contains(&format!(" {c} #")));
            let Some(command) = command else { continue };
            let Some(Record::Event(e)) = to_record(parse(line), at) else { panic!("dropped: {line}") };
            assert_eq!(e.kind, command.to_lowercase());
            assert_eq!(crate::record::invalid_reason(&Record::Event(e.clone())), None, "{line}");
            kinds.push(e.msg_id.unwrap_or(e.kind));
        }
        for k in [
            "sub",
            "resub",
            "raid",
            "subgift",
            "submysterygift",
            "announcement",
            "viewermilestone",
            "unraid",
            "clearchat",
            "clearmsg",
            "roomstate",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
        }
    }

    #[test]
    fn the_raw_line_tag_is_taken_out_before_anything_reads_the_tags() {
        let line = "@msg-id=msg_banned :tmi.twitch.tv NOTICE #forsen :banned";
        let mut irc = IRCMessage::parse(line).unwrap();
        irc.tags.0.insert(RAW_TAG.into(), line.into());
        let Some(Record::Notice(n)) = to_record(ServerMessage::try_from(irc).unwrap(), Utc::now()) else { panic!() };
        assert_eq!(n.raw.as_deref(), Some(line));
        assert_eq!(n.tags, r#"{"msg-id":"msg_banned"}"#, "not among the stored tags");
        let Some(Record::Notice(plain)) = to_record(parse(line), Utc::now()) else { panic!() };
        assert_eq!(plain.raw, None, "without raw_lines, no raw");
    }

    #[test]
    fn a_roomstate_without_any_mode_is_not_a_row() {
        assert_eq!(to_record(parse("@room-id=1 :tmi.twitch.tv ROOMSTATE #c"), Utc::now()), None);
    }

    proptest::proptest! {
        /// Typed values lose nothing: a number prints back as the exact text, a string is the
        /// text, and only `true`/`false` are booleans.
        #[test]
        fn typed_tag_values_round_trip(v in "(-?[0-9]{0,22}|true|false|[ -~]{0,12}|\\PC{0,6})") {
            match typed(&v) {
                Value::Number(n) => proptest::prop_assert_eq!(n.to_string(), v),
                Value::String(s) => proptest::prop_assert_eq!(s, v),
                Value::Bool(b) => proptest::prop_assert_eq!(if b { "true" } else { "false" }, v.as_str()),
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn integers_become_numbers_and_everything_else_stays_text() {
        assert_eq!(typed("430"), Value::from(430));
        assert_eq!(typed("-1"), Value::from(-1));
        assert_eq!(typed("0"), Value::from(0));
        for text in ["007", "-0", "1e3", "1.5", "99999999999999999999", "", " 1", "+1", "Prime", "TRUE"] {
            assert_eq!(typed(text), Value::String(text.into()), "{text}");
        }
        assert_eq!((typed("true"), typed("false")), (Value::Bool(true), Value::Bool(false)));
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
