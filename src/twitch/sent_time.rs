//! `sent_at` when a line's `tmi-sent-ts` cannot be used (missing, or impossible: see
//! [`super::chatline::believable`]); the parsers then give the receive time.
//!
//! On a partitioned table the dedupe key is `(message_id, sent_at)` (`(event_key, sent_at)`
//! for events), so every copy of one line must get the same `sent_at`. With a usable
//! `tmi-sent-ts` they do. Without, each account would read its own receive time, a few
//! milliseconds apart, and the line would be stored once per account. So the row gets the
//! receive time of the first copy this process read: the accounts reading one channel see the
//! same line within seconds, far inside what is remembered here. A spooled or retried row
//! keeps the time it was given. Two logger processes (`replicas = 2`) each choose their own:
//! such a line may then be stored once per process, never more.

use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

use crate::record::Record;

/// Keys remembered (the oldest forgotten first): minutes of such lines at any real rate.
const REMEMBERED: usize = 65_536;

#[derive(Default)]
struct Recent {
    times: HashMap<String, DateTime<Utc>>,
    order: VecDeque<String>,
}

static FIRST_SEEN: LazyLock<Mutex<Recent>> = LazyLock::new(Mutex::default);

/// The `sent_at` for `key` read at `received_at` without a usable `tmi-sent-ts`: the receive
/// time of the first copy this process read.
pub fn first_seen(key: &str, received_at: DateTime<Utc>) -> DateTime<Utc> {
    let mut r = FIRST_SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = r.times.get(key) {
        return *t;
    }
    if r.order.len() >= REMEMBERED {
        if let Some(old) = r.order.pop_front() {
            r.times.remove(&old);
        }
    }
    r.times.insert(key.to_string(), received_at);
    r.order.push_back(key.to_string());
    received_at
}

/// Gives a row read without a usable `tmi-sent-ts` (the parsers set `sent_at` to the exact
/// `received_at` then) the time of the first copy. ROOMSTATE carries no time at all and is
/// deduplicated on its content instead, so it is left alone.
pub fn settle(record: &mut Record) {
    match record {
        Record::Message(m) if m.sent_at == m.received_at => m.sent_at = first_seen(&m.message_id, m.received_at),
        Record::Event(e) if e.kind != "roomstate" && e.sent_at == e.received_at => {
            e.sent_at = first_seen(&format!("event:{}", e.event_key), e.received_at)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ChatMessage;

    #[test]
    fn every_copy_of_a_line_without_a_usable_time_gets_the_first_copys_receive_time() {
        let t0 = Utc::now();
        let copy = |at: DateTime<Utc>| {
            Record::Message(ChatMessage {
                message_id: "sent-time-test-1".into(),
                sent_at: at,
                received_at: at,
                ..Default::default()
            })
        };
        let (mut a, mut b) = (copy(t0), copy(t0 + chrono::Duration::milliseconds(9)));
        settle(&mut a);
        settle(&mut b);
        let time = |r: &Record| match r {
            Record::Message(m) => m.sent_at,
            _ => unreachable!(),
        };
        assert_eq!((time(&a), time(&b)), (t0, t0));
        // A row with Twitch's time is left as it is.
        let mut c = Record::Message(ChatMessage {
            message_id: "sent-time-test-1".into(),
            sent_at: t0 - chrono::Duration::seconds(1),
            received_at: t0 + chrono::Duration::seconds(5),
            ..Default::default()
        });
        settle(&mut c);
        assert_eq!(time(&c), t0 - chrono::Duration::seconds(1));
    }

    #[test]
    fn memory_is_bounded() {
        let t = Utc::now();
        for i in 0..REMEMBERED + 10 {
            first_seen(&format!("bounded-{i}"), t);
        }
        assert!(FIRST_SEEN.lock().unwrap().times.len() <= REMEMBERED);
    }
}
