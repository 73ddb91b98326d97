//! The fast ways messages reach PostgreSQL: binary `COPY` (straight into `chat_messages`, or
//! into a staging table then `INSERT … SELECT … ON CONFLICT DO NOTHING`), and the bounded set
//! of recently stored message ids that lets a live batch skip `ON CONFLICT` altogether.

use std::collections::{HashSet, VecDeque};

use super::ChatMessage;

/// Straight into the table: fails as a whole (23505) if any id is already stored.
pub(super) const COPY_DIRECT: &str = "COPY chat_messages (message_id, channel, room_id, user_id, username, \
    display_name, text, badges, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg, \
    reply_parent_msg_id, reply_parent_user_login, sent_at, received_at, badge_info, returning_chatter, vip, \
    source_room_id, source_id, raw) FROM STDIN (FORMAT binary)";

/// The session's staging table, made once per connection (no NOTICE when it exists), emptied
/// at each commit. Its types are the encoder's, whatever the real table's (bigint `bits`,
/// `timestamp` columns): the `INSERT … SELECT` converts.
pub(super) const STAGE_CREATE: &str = "DO $$ BEGIN
IF to_regclass('pg_temp.tcl_stage_messages') IS NULL THEN
    CREATE TEMP TABLE tcl_stage_messages (message_id text, channel text, room_id text, user_id text,
        username text, display_name text, text text, badges jsonb, color text, is_mod bool,
        is_subscriber bool, bits int4, is_action bool, emotes text, first_msg bool,
        reply_parent_msg_id text, reply_parent_user_login text, sent_at timestamptz,
        received_at timestamptz, badge_info jsonb, returning_chatter bool, vip bool,
        source_room_id text, source_id text, raw text) ON COMMIT DELETE ROWS;
END IF;
END $$";

pub(super) const STAGE_COPY: &str = "COPY tcl_stage_messages FROM STDIN (FORMAT binary)";

/// No conflict target: whichever unique key the table has (`message_id`, or
/// `(message_id, sent_at)` on a partitioned table) decides what is a duplicate.
pub(super) const STAGE_INSERT: &str = "INSERT INTO chat_messages (message_id, channel, room_id, user_id, \
    username, display_name, text, badges, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg, \
    reply_parent_msg_id, reply_parent_user_login, sent_at, received_at, badge_info, returning_chatter, vip, \
    source_room_id, source_id, raw) SELECT * FROM tcl_stage_messages ON CONFLICT DO NOTHING";

/// The column types the binary encoding is written for (`format_type` spelling); a table that
/// differs (bigint `bits`, `timestamp` without time zone) never gets a direct `COPY`.
const DIRECT_TYPES: &[(&str, &str)] = &[
    ("is_mod", "boolean"),
    ("is_subscriber", "boolean"),
    ("is_action", "boolean"),
    ("first_msg", "boolean"),
    ("returning_chatter", "boolean"),
    ("vip", "boolean"),
    ("bits", "integer"),
    ("sent_at", "timestamp with time zone"),
    ("received_at", "timestamp with time zone"),
    ("badges", "jsonb"),
    ("badge_info", "jsonb"),
];

/// Whether `chat_messages`' columns have the types the binary encoding is for (text columns:
/// `text` or `character varying`, which share the binary form).
pub(super) async fn direct_types_ok(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
         WHERE attrelid = to_regclass('chat_messages') AND attnum > 0 AND NOT attisdropped",
    )
    .fetch_all(conn)
    .await?;
    let written = ["message_id", "channel", "room_id", "user_id", "username", "display_name", "text", "color"];
    let text_ok = ["emotes", "reply_parent_msg_id", "reply_parent_user_login", "source_room_id", "source_id", "raw"];
    let ok = |name: &str, want: &[&str]| cols.iter().any(|(n, t)| n == name && want.contains(&t.as_str()));
    Ok(DIRECT_TYPES.iter().all(|(n, t)| ok(n, &[t]))
        && written.iter().chain(text_ok.iter()).all(|n| ok(n, &["text", "character varying"])))
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const COLUMNS: i16 = 25;

/// `ms` in PostgreSQL's binary `COPY` format (header, one tuple each, trailer).
pub(super) fn encode(ms: &[&ChatMessage]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32 + ms.len() * 400);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for m in ms {
        buf.extend_from_slice(&COLUMNS.to_be_bytes());
        text(&mut buf, Some(&m.message_id));
        text(&mut buf, Some(&m.channel));
        text(&mut buf, m.room_id.as_deref());
        text(&mut buf, m.user_id.as_deref());
        text(&mut buf, Some(&m.username));
        text(&mut buf, m.display_name.as_deref());
        text(&mut buf, Some(&m.text));
        jsonb(&mut buf, Some(&m.badges));
        text(&mut buf, m.color.as_deref());
        boolean(&mut buf, Some(m.is_mod));
        boolean(&mut buf, Some(m.is_subscriber));
        field(&mut buf, &m.bits.to_be_bytes());
        boolean(&mut buf, Some(m.is_action));
        text(&mut buf, m.emotes.as_deref());
        boolean(&mut buf, m.first_msg);
        text(&mut buf, m.reply_parent_msg_id.as_deref());
        text(&mut buf, m.reply_parent_user_login.as_deref());
        timestamp(&mut buf, m.sent_at);
        timestamp(&mut buf, m.received_at);
        jsonb(&mut buf, m.badge_info.as_deref());
        boolean(&mut buf, m.returning_chatter);
        boolean(&mut buf, m.vip);
        text(&mut buf, m.source_room_id.as_deref());
        text(&mut buf, m.source_id.as_deref());
        text(&mut buf, m.raw.as_deref());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

fn null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i32).to_be_bytes());
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    // A field over 2 GiB cannot come from an IRC line; saturating makes the server refuse it.
    buf.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn text(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => field(buf, s.as_bytes()),
        None => null(buf),
    }
}

/// jsonb's binary form: a version byte (1), then the JSON text (checked by the server).
fn jsonb(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.extend_from_slice(&i32::try_from(s.len() + 1).unwrap_or(i32::MAX).to_be_bytes());
            buf.push(1);
            buf.extend_from_slice(s.as_bytes());
        }
        None => null(buf),
    }
}

fn boolean(buf: &mut Vec<u8>, b: Option<bool>) {
    match b {
        Some(b) => field(buf, &[u8::from(b)]),
        None => null(buf),
    }
}

fn timestamp(buf: &mut Vec<u8>, t: chrono::DateTime<chrono::Utc>) {
    field(buf, &(t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
}

/// Recently committed message ids, oldest evicted first. Two accounts on one channel deliver
/// the same message within seconds, so a bounded window catches the duplicates of live
/// traffic; anything older is left to the database's unique key.
pub(super) struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    cap: usize,
}

/// Ids remembered: about 5 MiB; at 2,000 msg/s a window of a minute.
pub(super) const RECENT_IDS: usize = 1 << 17;

impl RecentIds {
    pub(super) fn new(cap: usize) -> Self {
        RecentIds { set: HashSet::with_capacity(cap.min(1 << 20)), order: VecDeque::new(), cap }
    }

    /// The id as a number, only for Twitch's own spelling (lower-case hyphenated UUID): two
    /// spellings of one UUID are two rows to the database, so they must stay two here.
    fn key(id: &str) -> Option<u128> {
        if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        uuid::Uuid::try_parse(id).ok().map(|u| u.as_u128())
    }

    /// Splits `ms` into the rows to write (first sight of each id, in order) and the count of
    /// rows already committed or repeated within `ms`.
    pub(super) fn fresh<'a>(&self, ms: &'a [ChatMessage]) -> (Vec<&'a ChatMessage>, u64) {
        let mut seen = HashSet::with_capacity(ms.len());
        let mut fresh = Vec::with_capacity(ms.len());
        for m in ms {
            match Self::key(&m.message_id) {
                Some(k) if self.set.contains(&k) || !seen.insert(k) => {}
                _ => fresh.push(m),
            }
        }
        let known = (ms.len() - fresh.len()) as u64;
        (fresh, known)
    }

    /// Remembers ids that are now committed.
    pub(super) fn committed<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for k in ids.into_iter().filter_map(Self::key) {
            if self.set.insert(k) {
                self.order.push_back(k);
                if self.order.len() > self.cap {
                    if let Some(old) = self.order.pop_front() {
                        self.set.remove(&old);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> ChatMessage {
        ChatMessage { message_id: id.into(), ..Default::default() }
    }

    const A: &str = "0a0b0c0d-0000-4000-8000-000000000001";
    const B: &str = "0a0b0c0d-0000-4000-8000-000000000002";

    #[test]
    fn a_committed_id_and_a_repeat_within_the_batch_are_not_written_again() {
        let mut r = RecentIds::new(10);
        r.committed([A]);
        let ms = [msg(A), msg(B), msg(B)];
        let (fresh, known) = r.fresh(&ms);
        assert_eq!(fresh.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), [B]);
        assert_eq!(known, 2);
    }

    #[test]
    fn an_upper_case_spelling_is_another_row_and_never_dropped() {
        let mut r = RecentIds::new(10);
        r.committed([A]);
        let upper = A.to_uppercase();
        let ms = [msg(&upper), msg(&upper), msg("not-a-uuid"), msg("not-a-uuid")];
        let (fresh, known) = r.fresh(&ms);
        assert_eq!((fresh.len(), known), (4, 0), "left to the database's unique key");
    }

    #[test]
    fn the_oldest_id_is_forgotten_past_capacity() {
        let mut r = RecentIds::new(2);
        let ids: Vec<String> = (0..3u128).map(|i| uuid::Uuid::from_u128(i).hyphenated().to_string()).collect();
        r.committed(ids.iter().map(String::as_str));
        let ms: Vec<ChatMessage> = ids.iter().map(|i| msg(i)).collect();
        let (fresh, known) = r.fresh(&ms);
        assert_eq!((fresh.len(), known), (1, 2));
        assert_eq!(fresh[0].message_id, ids[0]);
    }
}
