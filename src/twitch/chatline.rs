//! Chat lines (PRIVMSG) straight from the socket into rows.
//!
//! Why not through twitch-irc: it parses every tag into a map, then copies the whole message
//! twice on its way through its channels; under load that was most of the logger's CPU. The
//! transport's reader hands PRIVMSG lines here instead, and everything else (JOIN, PING,
//! NOTICE, RECONNECT …) still goes to twitch-irc, which keeps the connections. A line this
//! parser does not accept (no `id` tag, no channel) goes to twitch-irc as before.

use chrono::{DateTime, Utc};

use crate::store::ChatMessage;

/// Tags we store, escaped as on the wire.
#[derive(Default)]
struct Tags<'a> {
    id: Option<&'a str>,
    room_id: Option<&'a str>,
    user_id: Option<&'a str>,
    display_name: Option<&'a str>,
    badges: Option<&'a str>,
    color: Option<&'a str>,
    is_mod: bool,
    subscriber: bool,
    bits: Option<&'a str>,
    emotes: Option<&'a str>,
    first_msg: Option<&'a str>,
    reply_id: Option<&'a str>,
    reply_login: Option<&'a str>,
    sent_ts: Option<&'a str>,
}

/// Whether `line` is a PRIVMSG, cheaply (before any parsing).
pub fn is_privmsg(line: &str) -> bool {
    line.contains(" PRIVMSG #")
}

/// Parses a PRIVMSG line into a row; `None` if it is not one or lacks the `id` dedupe key.
pub fn parse_privmsg(line: &str, received_at: DateTime<Utc>) -> Option<ChatMessage> {
    let (tags, rest) = match line.strip_prefix('@') {
        Some(r) => r.split_once(' ')?,
        None => ("", line),
    };
    let rest = rest.trim_start_matches(' ');
    let (prefix, rest) = match rest.strip_prefix(':') {
        Some(r) => r.split_once(' ')?,
        None => ("", rest),
    };
    let (command, params) = rest.split_once(' ')?;
    if command != "PRIVMSG" {
        return None;
    }
    let (target, raw_text) = match params.split_once(" :") {
        Some((t, x)) => (t, x),
        None => params.split_once(' ').unwrap_or((params, "")),
    };
    let channel = target.strip_prefix('#')?;
    if channel.is_empty() {
        return None;
    }
    let t = parse_tags(tags);
    let id = t.id.filter(|v| !v.is_empty())?;
    let nick = prefix.split('!').next().unwrap_or(prefix);

    let (text, is_action) = match raw_text.strip_prefix("\u{1}ACTION ").and_then(|x| x.strip_suffix('\u{1}')) {
        Some(x) => (x, true),
        None => (raw_text, false),
    };
    let badges = t.badges.map(unescape).unwrap_or_default();
    let pairs: Vec<(&str, &str)> = badges.split(',').filter_map(|b| b.split_once('/')).collect();
    let has = |names: &[&str]| pairs.iter().any(|(n, _)| names.contains(n));
    let sent_at =
        t.sent_ts.and_then(|v| v.parse::<i64>().ok()).and_then(DateTime::from_timestamp_millis).unwrap_or(received_at);
    let reply = t.reply_id.filter(|v| !v.is_empty()).zip(t.reply_login.filter(|v| !v.is_empty()));
    Some(ChatMessage {
        message_id: unescape(id),
        channel: channel.to_string(),
        room_id: opt(t.room_id),
        user_id: opt(t.user_id),
        username: nick.to_string(),
        display_name: opt(t.display_name),
        text: strip_nul(text.to_string()),
        badges: badges_json(&pairs),
        color: opt(t.color),
        is_mod: t.is_mod || has(&["moderator", "broadcaster"]),
        is_subscriber: t.subscriber || has(&["subscriber", "founder"]),
        bits: t.bits.and_then(|b| b.parse::<u64>().ok()).map_or(0, |b| i32::try_from(b).unwrap_or(i32::MAX)),
        is_action,
        emotes: opt(t.emotes),
        first_msg: t.first_msg.filter(|v| !v.is_empty()).map(|v| v == "1"),
        reply_parent_msg_id: reply.map(|(i, _)| unescape(i)),
        reply_parent_user_login: reply.map(|(_, l)| unescape(l)),
        sent_at,
        received_at,
    })
}

fn parse_tags(tags: &str) -> Tags<'_> {
    let mut t = Tags::default();
    for kv in tags.split(';') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "id" => t.id = Some(v),
            "room-id" => t.room_id = Some(v),
            "user-id" => t.user_id = Some(v),
            "display-name" => t.display_name = Some(v),
            "badges" => t.badges = Some(v),
            "color" => t.color = Some(v),
            "mod" => t.is_mod = v == "1",
            "subscriber" => t.subscriber = v == "1",
            "bits" => t.bits = Some(v),
            "emotes" => t.emotes = Some(v),
            "first-msg" => t.first_msg = Some(v),
            "reply-parent-msg-id" => t.reply_id = Some(v),
            "reply-parent-user-login" => t.reply_login = Some(v),
            "tmi-sent-ts" => t.sent_ts = Some(v),
            _ => {}
        }
    }
    t
}

fn opt(v: Option<&str>) -> Option<String> {
    v.filter(|v| !v.is_empty()).map(|v| strip_nul(unescape(v)))
}

/// IRCv3 tag value escapes: `\:` `;`, `\s` space, `\\` `\`, `\r`, `\n`; others drop the `\`.
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// PostgreSQL `text` cannot hold NUL; a stray one must not sink the batch.
pub(crate) fn strip_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

/// Badges as a JSON object, badge → version: a number where the version is one (as the
/// original stored `{"subscriber":12}`), else the string, so nothing is lost.
pub fn badges_json(badges: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(2 + badges.len() * 24);
    out.push('{');
    for (i, (name, version)) in badges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, name);
        out.push(':');
        let numeric = !version.is_empty()
            && version.len() < 18
            && version.bytes().all(|c| c.is_ascii_digit())
            && (*version == "0" || !version.starts_with('0'));
        if numeric {
            out.push_str(version);
        } else {
            push_json_str(&mut out, version);
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

#[cfg(test)]
mod tests {
    use super::*;
    use twitch_irc::message::{IRCMessage, PrivmsgMessage};

    /// What twitch-irc makes of the same line, mapped the way the original did.
    fn via_twitch_irc(line: &str) -> PrivmsgMessage {
        PrivmsgMessage::try_from(IRCMessage::parse(line).unwrap()).unwrap()
    }

    fn samples() -> Vec<String> {
        let text = include_str!("../../tests/fixtures/twitch-irc-samples.txt");
        text.lines().filter(|l| l.contains(" PRIVMSG #")).map(String::from).collect()
    }

    #[test]
    fn every_sample_privmsg_parses_like_twitch_irc_parses_it() {
        let lines = samples();
        assert!(lines.len() >= 5);
        for line in lines {
            let ours = parse_privmsg(&line, Utc::now()).expect("parsed");
            let theirs = via_twitch_irc(&line);
            assert_eq!(ours.message_id, theirs.message_id);
            assert_eq!(ours.channel, theirs.channel_login);
            assert_eq!(ours.room_id.as_deref(), Some(theirs.channel_id.as_str()));
            assert_eq!(ours.user_id.as_deref(), Some(theirs.sender.id.as_str()));
            assert_eq!(ours.username, theirs.sender.login);
            assert_eq!(ours.display_name.as_deref(), Some(theirs.sender.name.as_str()));
            assert_eq!(ours.text, theirs.message_text);
            assert_eq!(ours.is_action, theirs.is_action);
            assert_eq!(ours.bits, theirs.bits.unwrap_or(0) as i32);
            assert_eq!(ours.sent_at, theirs.server_timestamp);
            assert_eq!(ours.reply_parent_msg_id, theirs.reply_parent.as_ref().map(|p| p.message_id.clone()));
            let badges: Vec<(&str, &str)> =
                theirs.badges.iter().map(|b| (b.name.as_str(), b.version.as_str())).collect();
            assert_eq!(ours.badges, badges_json(&badges));
            let hex = theirs.name_color.map(|c| format!("#{:02X}{:02X}{:02X}", c.r, c.g, c.b));
            assert_eq!(ours.color, hex);
        }
    }

    #[test]
    fn actions_escapes_and_nul_are_handled() {
        let line = "@badge-info=;badges=broadcaster/1,predictions/blue\\s1;color=;display-name=A\\sB;emotes=;id=x\\:1;mod=0;room-id=9;subscriber=0;tmi-sent-ts=1594545155039;user-id=5 :ann!ann@ann.tmi.twitch.tv PRIVMSG #chan :\u{1}ACTION he\0llo\u{1}";
        let m = parse_privmsg(line, Utc::now()).unwrap();
        assert_eq!((m.message_id.as_str(), m.text.as_str(), m.is_action), ("x;1", "hello", true));
        assert_eq!(m.display_name.as_deref(), Some("A B"));
        assert!(m.is_mod, "the broadcaster counts as a moderator");
        let v: serde_json::Value = serde_json::from_str(&m.badges).unwrap();
        assert_eq!(v, serde_json::json!({"broadcaster": 1, "predictions": "blue 1"}));
        assert_eq!(m.color, None);
    }

    #[test]
    fn lines_twitch_irc_would_refuse_are_still_rows_but_no_id_means_no_row() {
        // No badge-info, no room-id: twitch-irc refuses; we keep what is there.
        let m = parse_privmsg("@id=a1;tmi-sent-ts=1 :bob!bob@bob.tmi.twitch.tv PRIVMSG #c :hi", Utc::now()).unwrap();
        assert_eq!((m.username.as_str(), m.channel.as_str(), m.room_id), ("bob", "c", None));
        assert_eq!(m.badges, "{}");
        assert!(parse_privmsg(":bob!bob@bob.tmi.twitch.tv PRIVMSG #c :no tags", Utc::now()).is_none());
        assert!(parse_privmsg("@id=1 :tmi.twitch.tv NOTICE #c :not a privmsg", Utc::now()).is_none());
    }

    #[test]
    fn founders_and_subscriber_zero_count_as_subscribers() {
        let m = parse_privmsg("@badges=founder/0;id=f;subscriber=0 :a!a@a PRIVMSG #c :x", Utc::now()).unwrap();
        assert!(m.is_subscriber);
        let m = parse_privmsg("@badges=subscriber/0;id=g :a!a@a PRIVMSG #c :x", Utc::now()).unwrap();
        assert!(m.is_subscriber);
        assert_eq!(m.badges, r#"{"subscriber":0}"#);
    }
}
