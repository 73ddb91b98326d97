//! Chat lines (PRIVMSG) straight from the socket into rows.
//!
//! Why not through twitch-irc: it parses every tag into a map, then copies the whole message
//! twice on its way through its channels; under load that was most of the logger's CPU. The
//! transport's reader hands PRIVMSG lines here instead, and everything else (JOIN, PING,
//! NOTICE, RECONNECT …) still goes to twitch-irc, which keeps the connections.
//!
//! The rule: a line becomes a row only if twitch-irc's own parser would accept it and read the
//! same fields from it; anything else is refused (and counted by the reader). Two documented
//! cleanings apart: NUL (which PostgreSQL `text` cannot hold) is removed from every field, and
//! a `tmi-sent-ts` that cannot be true (before 2000, or more than a day ahead of the clock, or
//! outside PostgreSQL's range) is replaced by `received_at`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use std::borrow::Cow;

use crate::record::ChatMessage;

/// Tags we store or check, escaped as on the wire. Later duplicates win, as in twitch-irc.
#[derive(Default)]
struct Tags<'a> {
    id: Option<&'a str>,
    room_id: Option<&'a str>,
    user_id: Option<&'a str>,
    display_name: Option<&'a str>,
    badge_info: Option<&'a str>,
    badges: Option<&'a str>,
    color: Option<&'a str>,
    is_mod: bool,
    subscriber: bool,
    bits: Option<&'a str>,
    emotes: Option<&'a str>,
    first_msg: Option<&'a str>,
    reply_id: Option<&'a str>,
    reply_login: Option<&'a str>,
    reply_user_id: Option<&'a str>,
    reply_display_name: Option<&'a str>,
    reply_body: Option<&'a str>,
    sent_ts: Option<&'a str>,
    returning_chatter: Option<&'a str>,
    vip: Option<&'a str>,
    source_room_id: Option<&'a str>,
    source_id: Option<&'a str>,
}

/// What the reader should do with a line.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Chat {
    /// A chat message, as a row (moved straight into a record, so not boxed).
    Row(ChatMessage),
    /// A PRIVMSG we do not store; the reason is a fixed, short word for counting and logging.
    Refused(&'static str),
    /// Not a PRIVMSG (or not one we can tell): for twitch-irc.
    Other,
}

/// Whether `line` may be a PRIVMSG, cheaply (before any parsing).
pub fn is_privmsg(line: &str) -> bool {
    line.contains(" PRIVMSG ")
}

/// Parses a PRIVMSG line into a row; `None` if it is not one or is refused (see [`classify`]).
pub fn parse_privmsg(line: &str, received_at: DateTime<Utc>) -> Option<ChatMessage> {
    match classify(line, received_at) {
        Chat::Row(m) => Some(m),
        _ => None,
    }
}

/// Splits a line the way twitch-irc's `IRCMessage::parse` does: `(tags, prefix, command,
/// params)`, or `None` where that parser fails.
fn tokenize(line: &str) -> Option<(&str, Option<&str>, &str, &str)> {
    if line.as_bytes().contains(&b'\r') || line.as_bytes().contains(&b'\n') {
        return None;
    }
    let (tags, rest) = match line.strip_prefix('@') {
        Some(r) => {
            let (t, rest) = r.split_once(' ')?;
            if t.is_empty() {
                return None;
            }
            (t, rest)
        }
        None => ("", line),
    };
    let (prefix, rest) = match rest.strip_prefix(':') {
        Some(r) => {
            let (p, rest) = r.split_once(' ')?;
            if p.is_empty() {
                return None;
            }
            (Some(p), rest)
        }
        None => (None, rest),
    };
    let (command, params) = rest.split_once(' ').unwrap_or((rest, ""));
    let alpha = command.bytes().all(|b| b.is_ascii_alphabetic());
    let numeric = command.bytes().all(|b| b.is_ascii_digit());
    if command.is_empty() || !(alpha || numeric) {
        return None;
    }
    Some((tags, prefix, command, params))
}

/// Exactly two parameters, as twitch-irc reads them: `(channel parameter, text)`.
fn two_params(params: &str) -> Option<(&str, &str)> {
    let (first, rest) = params.split_once(' ')?;
    if first.is_empty() || first.starts_with(':') {
        return None;
    }
    match rest.strip_prefix(':') {
        Some(text) => Some((first, text)),
        None if !rest.is_empty() && !rest.contains(' ') => Some((first, rest)),
        None => None,
    }
}

/// Reads a line: a row if it is a PRIVMSG twitch-irc would accept, [`Chat::Refused`] if it is
/// a PRIVMSG it would not (or one we cannot store as it is), [`Chat::Other`] otherwise.
pub fn classify(line: &str, received_at: DateTime<Utc>) -> Chat {
    let Some((tags, prefix, command, params)) = tokenize(line) else {
        return if is_privmsg(line) { Chat::Refused("malformed") } else { Chat::Other };
    };
    if !command.eq_ignore_ascii_case("PRIVMSG") {
        return Chat::Other;
    }
    match parse(tags, prefix, params, received_at) {
        Ok(m) => Chat::Row(m),
        Err(reason) => Chat::Refused(reason),
    }
}

fn parse(
    tags: &str,
    prefix: Option<&str>,
    params: &str,
    received_at: DateTime<Utc>,
) -> Result<ChatMessage, &'static str> {
    let (target, raw_text) = two_params(params).ok_or("parameters")?;
    // twitch-irc: `#` and at least one more byte.
    let channel = strip_nul(target.strip_prefix('#').ok_or("channel")?.to_string());
    if channel.is_empty() {
        return Err("channel");
    }
    // twitch-irc takes the nick only from a `nick[!user]@host` prefix.
    let prefix = prefix.ok_or("sender")?;
    let (nick_user, _host) = prefix.split_once('@').ok_or("sender")?;
    let nick = strip_nul(nick_user.split('!').next().unwrap_or_default().to_string());
    if nick.is_empty() {
        return Err("sender");
    }
    let t = parse_tags(tags);

    let id = required(t.id).ok_or("id")?;
    let room_id = required(t.room_id).ok_or("room-id")?;
    let user_id = required(t.user_id).ok_or("user-id")?;
    let display_name = required(t.display_name).ok_or("display-name")?;
    let badge_info = unescape(t.badge_info.ok_or("badge-info")?);
    if !badges_ok(&badge_info) {
        return Err("badge-info");
    }
    let badge_info = if badge_info.contains('\0') { Cow::Owned(badge_info.replace('\0', "")) } else { badge_info };
    let info_pairs = badge_pairs(&badge_info).ok_or("badge-info")?;
    // Checked before NUL goes: an item that is only NUL is refused by twitch-irc too.
    let badges = unescape(t.badges.ok_or("badges")?);
    if !badges_ok(&badges) {
        return Err("badges");
    }
    let badges = if badges.contains('\0') { Cow::Owned(badges.replace('\0', "")) } else { badges };
    let pairs = badge_pairs(&badges).ok_or("badges")?;
    let color = unescape(t.color.ok_or("color")?);
    if !color.is_empty() && !is_color(&color) {
        return Err("color");
    }
    let emotes = unescape(t.emotes.ok_or("emotes")?);
    if !is_emotes(&emotes) {
        return Err("emotes");
    }
    let bits = match t.bits {
        None => 0,
        Some(b) => unescape(b).parse::<u64>().ok().and_then(|b| i32::try_from(b).ok()).ok_or("bits")?,
    };
    let ts = unescape(t.sent_ts.ok_or("tmi-sent-ts")?);
    let sent_at =
        Utc.timestamp_millis_opt(ts.parse::<i64>().map_err(|_| "tmi-sent-ts")?).single().ok_or("tmi-sent-ts")?;
    let sent_at = if believable(sent_at, received_at) { sent_at } else { received_at };
    // twitch-irc wants all five reply tags once the first is there.
    let reply = match t.reply_id {
        None => None,
        Some(reply_id) => {
            let login = required(t.reply_login).ok_or("reply-parent")?;
            required(t.reply_user_id).ok_or("reply-parent")?;
            required(t.reply_display_name).ok_or("reply-parent")?;
            t.reply_body.ok_or("reply-parent")?;
            let reply_id = owned(unescape(reply_id));
            (!reply_id.is_empty()).then_some((reply_id, owned(login)))
        }
    };

    let (text, is_action) = match raw_text.strip_prefix("\u{1}ACTION ").and_then(|x| x.strip_suffix('\u{1}')) {
        Some(x) => (x, true),
        None => (raw_text, false),
    };
    let has = |names: &[&str]| pairs.iter().any(|(n, _)| names.contains(n));
    let (reply_parent_msg_id, reply_parent_user_login) = reply.unzip();
    Ok(ChatMessage {
        message_id: nonempty(owned(id)).ok_or("id")?,
        channel,
        room_id: nonempty(owned(room_id)),
        user_id: nonempty(owned(user_id)),
        username: nick,
        display_name: nonempty(owned(display_name)),
        text: strip_nul(text.to_string()),
        badges: badges_json(&pairs),
        badge_info: (!info_pairs.is_empty()).then(|| badges_json(&info_pairs)),
        color: nonempty(color.into_owned()),
        is_mod: t.is_mod || has(&["moderator", "broadcaster"]),
        is_subscriber: t.subscriber || has(&["subscriber", "founder"]),
        bits,
        is_action,
        emotes: nonempty(owned(emotes)),
        first_msg: t.first_msg.filter(|v| !v.is_empty()).map(|v| v == "1"),
        reply_parent_msg_id,
        reply_parent_user_login,
        sent_at,
        received_at,
        returning_chatter: t.returning_chatter.filter(|v| !v.is_empty()).map(|v| v == "1"),
        // Twitch sends `vip=1` to VIPs only (some lines `vip=0`); the badge says it too.
        vip: Some(t.vip.is_some_and(|v| v == "1") || has(&["vip"])),
        source_room_id: t.source_room_id.and_then(|v| nonempty(owned(unescape(v)))),
        source_id: t.source_id.and_then(|v| nonempty(owned(unescape(v)))),
        raw: None,
    })
}

/// Earliest `tmi-sent-ts` believed: 2000-01-01 (Twitch chat is younger).
const EARLIEST_SENT_MS: i64 = 946_684_800_000;

/// Whether a sender timestamp can be true: not before 2000, not more than a day ahead.
pub fn believable(sent_at: DateTime<Utc>, received_at: DateTime<Utc>) -> bool {
    sent_at.timestamp_millis() >= EARLIEST_SENT_MS && sent_at <= received_at + Duration::days(1)
}

/// A tag twitch-irc requires non-empty (after unescaping), unescaped.
fn required(v: Option<&str>) -> Option<Cow<'_, str>> {
    v.map(unescape).filter(|v| !v.is_empty())
}

/// A value to store: owned, without NUL.
fn owned(v: Cow<'_, str>) -> String {
    strip_nul(v.into_owned())
}

/// Whether twitch-irc reads `badges` (every `,` item has a `/`), without collecting them.
fn badges_ok(badges: &str) -> bool {
    badges.is_empty() || badges.split(',').all(|b| b.contains('/'))
}

fn nonempty(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

/// `name/version,…` as twitch-irc reads badges: every item must have a `/`.
fn badge_pairs(badges: &str) -> Option<Vec<(&str, &str)>> {
    if badges.is_empty() {
        return Some(Vec::new());
    }
    badges.split(',').map(|b| b.split_once('/')).collect()
}

/// `#RRGGBB`, the only colour twitch-irc reads.
pub fn is_color(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 7 && b[0] == b'#' && b[1..].iter().all(u8::is_ascii_hexdigit)
}

/// The `emotes` tag, `id:from-to,from-to/id:from-to`, with ranges twitch-irc can compute
/// without overflow (`from <= to < usize::MAX`). Empty is valid.
pub fn is_emotes(v: &str) -> bool {
    v.is_empty()
        || v.split('/').all(|e| {
            e.split_once(':').is_some_and(|(_, ranges)| {
                ranges.split(',').all(|r| {
                    r.split_once('-').is_some_and(|(a, b)| match (a.parse::<usize>(), b.parse::<usize>()) {
                        (Ok(a), Ok(b)) => a <= b && b < usize::MAX,
                        _ => false,
                    })
                })
            })
        })
}

fn parse_tags(tags: &str) -> Tags<'_> {
    let mut t = Tags::default();
    if tags.is_empty() {
        return t;
    }
    for kv in tags.split(';') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "id" => t.id = Some(v),
            "room-id" => t.room_id = Some(v),
            "user-id" => t.user_id = Some(v),
            "display-name" => t.display_name = Some(v),
            "badge-info" => t.badge_info = Some(v),
            "badges" => t.badges = Some(v),
            "color" => t.color = Some(v),
            "mod" => t.is_mod = v == "1",
            "subscriber" => t.subscriber = v == "1",
            "bits" => t.bits = Some(v),
            "emotes" => t.emotes = Some(v),
            "first-msg" => t.first_msg = Some(v),
            "reply-parent-msg-id" => t.reply_id = Some(v),
            "reply-parent-user-login" => t.reply_login = Some(v),
            "reply-parent-user-id" => t.reply_user_id = Some(v),
            "reply-parent-display-name" => t.reply_display_name = Some(v),
            "reply-parent-msg-body" => t.reply_body = Some(v),
            "tmi-sent-ts" => t.sent_ts = Some(v),
            "returning-chatter" => t.returning_chatter = Some(v),
            "vip" => t.vip = Some(v),
            "source-room-id" => t.source_room_id = Some(v),
            "source-id" => t.source_id = Some(v),
            _ => {}
        }
    }
    t
}

/// IRCv3 tag value escapes: `\:` `;`, `\s` space, `\\` `\`, `\r`, `\n`; others drop the `\`.
/// Borrows when there is nothing to unescape (nearly always).
fn unescape(v: &str) -> Cow<'_, str> {
    if !v.contains('\\') {
        return Cow::Borrowed(v);
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
    Cow::Owned(out)
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

    fn twitch_irc_refuses(line: &str) -> bool {
        IRCMessage::parse(line).map_or(true, |m| PrivmsgMessage::try_from(m).is_err())
    }

    fn samples() -> Vec<String> {
        let text = include_str!("../../tests/fixtures/twitch-irc-samples.txt");
        text.lines().filter(|l| l.contains(" PRIVMSG #")).map(String::from).collect()
    }

    /// A complete, real-shaped chat line with `tags` (`key=value;…`) replacing or adding tags
    /// and `rest` after the tags.
    fn line(tags: &str, rest: &str) -> String {
        let mut all: Vec<(String, String)> = "badge-info=;badges=subscriber/12;color=#1E90FF;display-name=Alice;emotes=;id=7c1b3d2e-0000-4000-8000-000000000001;mod=0;room-id=12345;subscriber=1;tmi-sent-ts=1594545155039;user-id=777"
            .split(';')
            .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
            .collect();
        for kv in tags.split(';').filter(|t| !t.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            all.retain(|(key, _)| key != k);
            if v != "<absent>" {
                all.push((k.to_string(), v.to_string()));
            }
        }
        let tags: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("@{} {rest}", tags.join(";"))
    }

    const REST: &str = ":alice!alice@alice.tmi.twitch.tv PRIVMSG #chan1 :hello";

    fn refused(line: &str) -> &'static str {
        match classify(line, Utc::now()) {
            Chat::Refused(why) => why,
            other => panic!("not refused: {other:?} for {line:?}"),
        }
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
    fn a_privmsg_missing_a_tag_twitch_irc_requires_is_refused_not_stored_half() {
        for tag in
            ["id", "room-id", "user-id", "display-name", "badge-info", "badges", "color", "emotes", "tmi-sent-ts"]
        {
            let l = line(&format!("{tag}=<absent>"), REST);
            assert!(twitch_irc_refuses(&l), "{tag}");
            assert_eq!(refused(&l), tag);
        }
        for tag in ["id", "room-id", "user-id", "display-name", "tmi-sent-ts"] {
            assert_eq!(refused(&line(&format!("{tag}="), REST)), tag, "empty {tag}");
        }
        let reply = "reply-parent-msg-id=abc;reply-parent-user-login=bob";
        assert!(twitch_irc_refuses(&line(reply, REST)));
        assert_eq!(refused(&line(reply, REST)), "reply-parent");
        assert!(parse_privmsg(":bob!bob@bob.tmi.twitch.tv PRIVMSG #c :no tags", Utc::now()).is_none());
        assert!(matches!(classify("@id=1 :tmi.twitch.tv NOTICE #c :a PRIVMSG #x :y", Utc::now()), Chat::Other));
    }

    #[test]
    fn the_sender_is_the_nick_of_a_nick_at_host_prefix_and_nothing_else() {
        let m = parse_privmsg(&line("", ":alice@alice.tmi.twitch.tv PRIVMSG #chan1 :hi"), Utc::now()).unwrap();
        assert_eq!(m.username, "alice");
        assert_eq!(via_twitch_irc(&line("", ":alice@alice.tmi.twitch.tv PRIVMSG #chan1 :hi")).sender.login, "alice");
        for rest in [
            ":tmi.twitch.tv PRIVMSG #chan1 :hi",
            ": PRIVMSG #chan1 :hi",
            ":!x@y PRIVMSG #chan1 :hi",
            "PRIVMSG #chan1 :hi",
        ] {
            let l = line("", rest);
            assert!(matches!(classify(&l, Utc::now()), Chat::Refused(_)), "{rest}");
        }
        assert!(twitch_irc_refuses(&line("", ":tmi.twitch.tv PRIVMSG #chan1 :hi")));
    }

    #[test]
    fn a_channel_parameter_with_extra_words_or_spaces_is_refused() {
        for rest in [
            ":a!a@a PRIVMSG #chan1 extra :hi",
            ":a!a@a PRIVMSG #chan1  :hi",
            ":a!a@a PRIVMSG #chan1 ",
            ":a!a@a PRIVMSG # :hi",
            ":a!a@a PRIVMSG chan1 :hi",
            ":a!a@a  PRIVMSG #chan1 :hi",
        ] {
            assert_eq!(classify(&line("", rest), Utc::now()).refused_or_other(), "refused", "{rest}");
        }
        // One word without `:` is the text, as twitch-irc reads it.
        let m = parse_privmsg(&line("", ":a!a@a PRIVMSG #chan1 hi"), Utc::now()).unwrap();
        assert_eq!((m.channel.as_str(), m.text.as_str()), ("chan1", "hi"));
    }

    #[test]
    fn a_carriage_return_or_newline_inside_a_line_refuses_it() {
        assert_eq!(refused(&line("", ":a!a@a PRIVMSG #chan1 :one\rtwo")), "malformed");
        assert_eq!(refused(&line("", ":a!a@a PRIVMSG #chan1 :one\ntwo")), "malformed");
        assert!(twitch_irc_refuses(&line("", ":a!a@a PRIVMSG #chan1 :one\rtwo")));
    }

    #[test]
    fn a_sent_timestamp_that_cannot_be_true_falls_back_to_received_at() {
        let now = Utc::now();
        for ts in ["-5", "-300000000000000", "0", "946684799999", "8000000000000000"] {
            let m = parse_privmsg(&line(&format!("tmi-sent-ts={ts}"), REST), now);
            assert_eq!(m.map(|m| m.sent_at), Some(now), "{ts}");
        }
        let tomorrow = (now + Duration::hours(25)).timestamp_millis();
        assert_eq!(parse_privmsg(&line(&format!("tmi-sent-ts={tomorrow}"), REST), now).unwrap().sent_at, now);
        let fine = parse_privmsg(&line("tmi-sent-ts=1594545155039", REST), now).unwrap();
        assert_eq!(fine.sent_at.timestamp_millis(), 1594545155039);
        // Not a number at all: twitch-irc refuses, so do we.
        assert_eq!(refused(&line("tmi-sent-ts=soon", REST)), "tmi-sent-ts");
    }

    #[test]
    fn bits_that_are_negative_empty_or_beyond_the_column_refuse_the_line() {
        for bits in ["-5", "", "99999999999", "2147483648", "x"] {
            assert_eq!(refused(&line(&format!("bits={bits}"), REST)), "bits", "{bits}");
        }
        assert!(twitch_irc_refuses(&line("bits=-5", REST)));
        let m = parse_privmsg(&line("bits=2147483647", REST), Utc::now()).unwrap();
        assert_eq!(m.bits, i32::MAX);
        assert_eq!(parse_privmsg(&line("bits=100", REST), Utc::now()).unwrap().bits, 100);
    }

    #[test]
    fn nul_in_the_id_a_badge_or_the_channel_is_removed_not_stored() {
        let l = line("id=ab\\0cd;badges=sub\0scriber/1", ":a\0b!a@a PRIVMSG #ch\0an :x\0y").replace("\\0", "\0");
        let m = parse_privmsg(&l, Utc::now()).unwrap();
        assert_eq!((m.message_id.as_str(), m.channel.as_str(), m.username.as_str()), ("abcd", "chan", "ab"));
        assert_eq!((m.badges.as_str(), m.text.as_str()), (r#"{"subscriber":1}"#, "xy"));
        assert_eq!(refused(&line("id=\0", REST)), "id");
    }

    #[test]
    fn a_malformed_colour_badge_or_emote_list_refuses_the_line() {
        for tags in [
            "color=#aééa",
            "color=red",
            "color=#12345G",
            "badges=broadcaster",
            "emotes=25:5-2",
            "emotes=25",
            "emotes=1:0-18446744073709551615",
        ] {
            assert!(matches!(classify(&line(tags, REST), Utc::now()), Chat::Refused(_)), "{tags}");
        }
        let m = parse_privmsg(&line("color=#1e90ff;emotes=25:0-4,6-10/1902:12-16", REST), Utc::now()).unwrap();
        assert_eq!((m.color.as_deref(), m.emotes.as_deref()), (Some("#1e90ff"), Some("25:0-4,6-10/1902:12-16")));
    }

    #[test]
    fn founders_and_subscriber_zero_count_as_subscribers() {
        let m = parse_privmsg(&line("badges=founder/0;subscriber=0", REST), Utc::now()).unwrap();
        assert!(m.is_subscriber);
        let m = parse_privmsg(&line("badges=subscriber/0;subscriber=0", REST), Utc::now()).unwrap();
        assert!(m.is_subscriber);
        assert_eq!(m.badges, r#"{"subscriber":0}"#);
    }

    #[test]
    #[ignore = "timing: cargo test --release --lib parse_cost -- --ignored --nocapture"]
    fn parse_cost_of_a_typical_chat_line() {
        let line = "@badge-info=subscriber/14;badges=subscriber/12,premium/1;client-nonce=9b4f3c2a1d;color=#1E90FF;display-name=Viewer1;emotes=25:0-4;first-msg=0;flags=;id=bench-000000001-5f1c-4a2e-9d1e-3c7b2a1f0e9d;mod=0;returning-chatter=0;room-id=123456;subscriber=1;tmi-sent-ts=1594545155039;turbo=0;user-id=42;user-type= :viewer1!viewer1@viewer1.tmi.twitch.tv PRIVMSG #chan :Kappa that play was something else, gg 1";
        let now = Utc::now();
        let n = 500_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            assert!(matches!(classify(std::hint::black_box(line), now), Chat::Row(_)));
        }
        eprintln!("classify: {:.0} ns per chat line", t.elapsed().as_nanos() as f64 / n as f64);
    }

    impl Chat {
        fn refused_or_other(&self) -> &'static str {
            match self {
                Chat::Row(_) => "row",
                Chat::Refused(_) => "refused",
                Chat::Other => "other",
            }
        }
    }
}

/// Our parser against twitch-irc's on random mutations of real lines. For every line: ours
/// never panics; twitch-irc never panics on what our reader hands it (the sanitised line); and
/// when ours makes a row, twitch-irc accepts the line and reads the same fields (NUL removed,
/// unbelievable timestamps replaced by `received_at`, as documented above).
///
/// CI runs a bounded number of cases; a long run:
/// `PROPTEST_CASES=200000 cargo test --release --lib chatline_fuzz`.
#[cfg(test)]
mod chatline_fuzz {
    use super::*;
    use crate::twitch::transport::sanitize;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use twitch_irc::message::{IRCMessage, PrivmsgMessage, ServerMessage};

    fn seeds() -> Vec<String> {
        let text = include_str!("../../tests/fixtures/twitch-irc-samples.txt");
        let mut v: Vec<String> =
            text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(String::from).collect();
        v.push("@badge-info=;badges=;color=#aééa;display-name=A;emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #chan".into());
        v.push("@emote-only=0;followers-only=999999999999999999;r9k=0;room-id=1;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #chan".into());
        v.push("@msg-id=x :tmi.twitch.tv NOTICE  #c00 :x".into());
        v
    }

    /// Characters and values that broke parsers before: multi-byte, escapes, separators.
    const CHARS: &[char] =
        &['é', '테', '🎉', '\0', '\r', '\n', ' ', ';', '=', '\\', ':', '#', '@', '!', '/', ',', '-', '\u{1}', 's'];
    const VALUES: &[&str] = &[
        "",
        "#aééa",
        "#AbCdEf",
        "-5",
        "0",
        "99999999999",
        "2147483648",
        "-300000000000000",
        "18446744073709551615",
        "1:5-2",
        "1:0-18446744073709551615",
        "25:0-4",
        "\\",
        "\\s",
        "a\\:b",
        "x\0y",
        "ééé",
        "1/",
        "/",
        "a,b",
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        FlipByte(usize, u8),
        InsertChar(usize, char),
        DuplicateTag(usize, usize),
        SetTagValue(usize, usize),
        Delete(usize, usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
            (any::<usize>(), prop::sample::select(CHARS)).prop_map(|(i, c)| Mutation::InsertChar(i, c)),
            (any::<usize>(), any::<usize>()).prop_map(|(i, v)| Mutation::DuplicateTag(i, v)),
            (any::<usize>(), any::<usize>()).prop_map(|(i, v)| Mutation::SetTagValue(i, v)),
            (any::<usize>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        ]
    }

    fn boundary(s: &str, i: usize) -> usize {
        let b: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        b[i % b.len()]
    }

    /// Tag `i` (mod the count) of `line`: the byte range of its value and the `key=value` text.
    fn tag(line: &str, i: usize) -> Option<(std::ops::Range<usize>, String)> {
        let tags = line.strip_prefix('@')?.split(' ').next()?;
        let mut at = 1;
        let all: Vec<(usize, &str)> = tags
            .split(';')
            .map(|t| {
                let here = at;
                at += t.len() + 1;
                (here, t)
            })
            .collect();
        let (start, t) = all[i % all.len()];
        let eq = t.find('=').map_or(t.len(), |e| e + 1);
        Some((start + eq..start + t.len(), t.to_string()))
    }

    // Test-only: every index comes from `boundary` or `char_indices`, so it is a char boundary.
    #[allow(clippy::string_slice)]
    fn apply(line: &str, m: &Mutation) -> String {
        match *m {
            Mutation::FlipByte(i, b) => {
                let mut bytes = line.as_bytes().to_vec();
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    bytes[i] = b;
                }
                // The reader repairs invalid UTF-8 the same way.
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Mutation::InsertChar(i, c) => {
                let mut s = line.to_string();
                s.insert(boundary(line, i), c);
                s
            }
            Mutation::DuplicateTag(i, v) => match tag(line, i) {
                Some((_, t)) => {
                    let key = t.split('=').next().unwrap_or_default();
                    line.replacen(' ', &format!(";{key}={} ", VALUES[v % VALUES.len()]), 1)
                }
                None => line.to_string(),
            },
            Mutation::SetTagValue(i, v) => match tag(line, i) {
                Some((range, _)) => {
                    format!("{}{}{}", &line[..range.start], VALUES[v % VALUES.len()], &line[range.end..])
                }
                None => line.to_string(),
            },
            Mutation::Delete(i, n) => {
                let a = boundary(line, i);
                let b = line[a..].char_indices().nth(n).map_or(line.len(), |(j, _)| a + j);
                format!("{}{}", &line[..a], &line[b..])
            }
        }
    }

    fn strip(s: &str) -> String {
        s.replace('\0', "")
    }

    /// The property, for one line. True if ours made a row of it.
    fn check(line: &str) -> Result<bool, TestCaseError> {
        let received_at = Utc::now();
        let ours = classify(line, received_at);
        if let Ok(mut m) = IRCMessage::parse(line) {
            sanitize(&mut m);
            let _ = ServerMessage::try_from(m);
        }
        let Chat::Row(ours) = ours else { return Ok(false) };
        let raw =
            IRCMessage::parse(line).map_err(|e| TestCaseError::fail(format!("twitch-irc cannot tokenise it: {e}")))?;
        prop_assert!(!sanitize(&mut raw.clone()), "we stored a line with an unsafe tag");
        let theirs =
            PrivmsgMessage::try_from(raw).map_err(|e| TestCaseError::fail(format!("twitch-irc refuses: {e}")))?;
        prop_assert_eq!(&ours.message_id, &strip(&theirs.message_id));
        prop_assert_eq!(&ours.channel, &strip(&theirs.channel_login));
        prop_assert_eq!(ours.room_id.clone().unwrap_or_default(), strip(&theirs.channel_id));
        prop_assert_eq!(ours.user_id.clone().unwrap_or_default(), strip(&theirs.sender.id));
        prop_assert_eq!(&ours.username, &strip(&theirs.sender.login));
        prop_assert_eq!(ours.display_name.clone().unwrap_or_default(), strip(&theirs.sender.name));
        prop_assert_eq!(&ours.text, &strip(&theirs.message_text));
        prop_assert_eq!(ours.is_action, theirs.is_action);
        prop_assert_eq!(Some(ours.bits as u64), Some(theirs.bits.unwrap_or(0)));
        let sent = if believable(theirs.server_timestamp, received_at) { theirs.server_timestamp } else { received_at };
        prop_assert_eq!(ours.sent_at, sent);
        let hex = theirs.name_color.map(|c| format!("#{:02X}{:02X}{:02X}", c.r, c.g, c.b));
        prop_assert_eq!(ours.color.as_ref().map(|c| c.to_ascii_uppercase()), hex);
        let names: Vec<(String, String)> = theirs.badges.iter().map(|b| (strip(&b.name), strip(&b.version))).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        prop_assert_eq!(&ours.badges, &badges_json(&pairs));
        prop_assert_eq!(ours.emotes.is_some(), !theirs.emotes.is_empty());
        let reply = theirs.reply_parent.as_ref().map(|p| strip(&p.message_id)).filter(|i| !i.is_empty());
        prop_assert_eq!(&ours.reply_parent_msg_id, &reply);
        if reply.is_some() {
            let login = theirs.reply_parent.as_ref().map(|p| strip(&p.reply_parent_user.login));
            prop_assert_eq!(&ours.reply_parent_user_login, &login);
        }
        Ok(true)
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
    }

    #[test]
    fn random_mutations_of_real_lines_parse_like_twitch_irc_or_are_refused_and_never_panic() {
        let seeds = seeds();
        let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..5));
        // Lines that became rows, so the property is not vacuously true.
        let rows = std::cell::Cell::new(0u32);
        let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
        TestRunner::new(config)
            .run(&strategy, |(seed, mutations)| {
                let line = mutations.iter().fold(seeds[seed].clone(), |l, m| apply(&l, m));
                let row = check(&line).map_err(|e| TestCaseError::fail(format!("{e}\nline: {line:?}")))?;
                rows.set(rows.get() + row as u32);
                Ok(())
            })
            .unwrap();
        assert!(rows.get() >= cases() / 20, "only {} of {} mutated lines became rows", rows.get(), cases());
    }

    #[test]
    fn a_multibyte_character_at_every_offset_of_every_sample_is_safe() {
        for seed in seeds() {
            for c in ['é', '🎉'] {
                for i in seed.char_indices().map(|(i, _)| i) {
                    let mut l = seed.clone();
                    l.insert(i, c);
                    check(&l).unwrap_or_else(|e| panic!("{e}\nline: {l:?}"));
                }
            }
        }
    }
}
