//! One behaviour suite, run against both stores: each scenario is written once and
//! `for_both_stores!` makes a PostgreSQL and a SQLite test of it. The real binary, the fake
//! Twitch server on loopback, a real database (PostgreSQL from `scripts/test.sh`, or a file).

mod common;

use common::backends::TestStore;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

/// A config logging `#chan` (plus `extra` channels) with `batch` settings; the store comes
/// from `DATABASE_URL`.
fn config(fake: &FakeTwitch, spool: &std::path::Path, batch: &str, accounts: &str, channels: &str) -> String {
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nspool_dir = \"{}\"\n{batch}\n{accounts}\n[groups.default]\naccounts = [\"default\"]\nchannels = [{channels}]\n",
        fake.url(),
        spool.display()
    )
}

const ONE_ANON: &str = "[accounts.default]";

/// The `key=value` of the logger's final summary line.
fn summary(logger: &Logger, key: &str) -> u64 {
    let log = logger.log_text();
    let line = log.lines().rev().find(|l| l.contains("stopped; everything received")).unwrap_or("");
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn send(fake: &FakeTwitch, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        assert_eq!(fake.to_channel("chan", &privmsg("chan", &format!("{prefix}-{i:05}"), "Nia", &format!("m{i}"))), 1);
    }
}

/// The row of `message_id` in `rows`, without `received_at` (the time this run read it).
fn message(rows: &[Value], id: &str) -> Value {
    let mut row = rows.iter().find(|r| r["message_id"] == id).unwrap_or_else(|| panic!("no row {id}")).clone();
    let received = row.as_object_mut().unwrap().remove("received_at").unwrap();
    assert!(received.is_string(), "received_at is set");
    row
}

async fn real_lines_fill_every_column_the_same_way(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_dir, path) =
        config_dir(&config(&fake, spool.path(), "flush_interval = \"100ms\"", ONE_ANON, "\"pajlada\", \"retoon\""));
    let _logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).len() == 2).await;
    for kind in ["PRIVMSG plain", "PRIVMSG bits/cheer", "PRIVMSG emotes + moderator/subscriber badges"] {
        assert_eq!(fake.to_channel("pajlada", &sample(kind)), 1);
    }
    fake.to_channel("retoon", &sample("PRIVMSG reply-parent tags + first-msg/returning-chatter"));
    store.wait_count("SELECT count(*) FROM chat_messages", 4, 10 * SEC).await;
    let rows = store.rows("chat_messages").await;

    assert_eq!(
        message(&rows, "f9c5774b-faa7-4378-b1af-c4e08b532dc2"),
        json!({
            "message_id": "f9c5774b-faa7-4378-b1af-c4e08b532dc2", "channel": "pajlada", "user_id": "40286300",
            "username": "randers", "display_name": "randers",
            "text": "Kappa Keepo Kappa Kappa test Keepo Keepo 123 :) :) :P",
            "badges": {"moderator": 1, "subscriber": 12}, "color": "#19E6E6", "is_mod": true,
            "is_subscriber": true, "bits": 0, "sent_at": "2020-07-12T12:14:25.407000Z", "room_id": "11148817",
            "is_action": false, "emotes": "1902:6-10,29-33,35-39/499:45-46,48-49/490:51-52/25:0-4,12-16,18-22",
            "first_msg": null, "reply_parent_msg_id": null, "reply_parent_user_login": null,
            "badge_info": {"subscriber": 22}, "returning_chatter": null, "vip": false, "source_room_id": null,
            "source_id": null, "raw": null
        }),
        "{}",
        store.name()
    );
    assert_eq!(
        message(&rows, "5b4f63a9-776f-4fce-bf3c-d9707f52e32d"),
        json!({
            "message_id": "5b4f63a9-776f-4fce-bf3c-d9707f52e32d", "channel": "retoon", "user_id": "133651738",
            "username": "leftswing", "display_name": "LeftSwing", "text": "@Retoon yes", "badges": {},
            "color": null, "is_mod": false, "is_subscriber": false, "bits": 0,
            "sent_at": "2023-01-17T03:26:23.585000Z", "room_id": "37940952", "is_action": false, "emotes": null,
            "first_msg": false, "reply_parent_msg_id": "6b13e51b-7ecb-43b5-ba5b-2bb5288df696",
            "reply_parent_user_login": "retoon", "badge_info": null, "returning_chatter": false, "vip": false,
            "source_room_id": null, "source_id": null, "raw": null
        }),
        "{}",
        store.name()
    );
    let cheer = message(&rows, "d7f03a35-f339-41ca-b4d4-7c0721438570");
    assert_eq!((&cheer["bits"], &cheer["badges"]), (&json!(1), &json!({"bits": 100})));
    // The view answers on both, newest first.
    assert_eq!(store.count("SELECT count(*) FROM v_last_messages").await, 4);
}

async fn a_message_two_accounts_see_is_stored_once(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    // An anonymous account and a logged-in one: two connections, each sees every line.
    let accounts = "[accounts.default]\n[accounts.bot]\nusername = \"loggerbot\"\noauth_token = \"oauth:abc\"\n[groups.bots]\naccounts = [\"bot\"]\nchannels = [\"chan\"]";
    let (_dir, path) = config_dir(&config(&fake, spool.path(), "flush_interval = \"100ms\"", accounts, "\"chan\""));
    let _logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("both joined", 15 * SEC, |f| {
        f.joined_by(ANON).contains("chan") && f.joined_by("loggerbot").contains("chan")
    })
    .await;
    let line = privmsg("chan", "dup-1", "Bob", "same message");
    assert_eq!(fake.to_channel("chan", &line), 2, "both connections get it");
    fake.to_channel("chan", &privmsg("chan", "dup-2", "Bob", "another"));
    store.wait_count("SELECT count(*) FROM chat_messages", 2, 10 * SEC).await;
    // Again in a later batch: still once.
    tokio::time::sleep(SEC).await;
    fake.to_channel("chan", &line);
    fake.to_channel("chan", &privmsg("chan", "dup-3", "Bob", "third"));
    store.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
    let id = msg_uuid("dup-1");
    assert_eq!(store.count(&format!("SELECT count(*) FROM chat_messages WHERE message_id = '{id}'")).await, 1);
}

async fn notices_are_stored_once_with_their_tags(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let accounts = "[accounts.default]\n[accounts.bot]\nusername = \"loggerbot\"\noauth_token = \"oauth:abc\"\n[groups.bots]\naccounts = [\"bot\"]\nchannels = [\"forsen\"]";
    let (_dir, path) = config_dir(&config(&fake, spool.path(), "flush_interval = \"100ms\"", accounts, "\"chan\""));
    let _logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by("loggerbot").contains("forsen")).await;
    fake.to_channel("forsen", &sample("NOTICE msg_banned"));
    store.wait_count("SELECT count(*) FROM channel_notices", 1, 10 * SEC).await;
    let rows = store.rows("channel_notices").await;
    let n = rows[0].as_object().unwrap();
    assert_eq!(n["channel"], "forsen");
    assert_eq!(n["msg_id"], "msg_banned");
    assert_eq!(n["message"], "You are permanently banned from talking in forsen.");
    assert_eq!(n["tags"], json!({"msg-id": "msg_banned"}));
    assert_eq!(n["notice_at"], n["received_at"], "no tmi-sent-ts: the notice's time is when it was read");
    assert!(n["notice_key"].as_str().is_some_and(|k| k.len() == 36), "{n:?}");
    let mut keys: Vec<&String> = n.keys().collect();
    keys.sort();
    assert_eq!(keys, ["channel", "message", "msg_id", "notice_at", "notice_key", "raw", "received_at", "tags"]);
}

async fn sigterm_with_rows_pending_writes_them_and_exits_zero(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    // Neither trigger fires before SIGTERM: all 1500 rows wait in memory.
    let batch = "max_rows = 4000\nflush_interval = \"10m\"\ndurable_within = \"20m\"\nqueue_capacity = 4000";
    let (_dir, path) = config_dir(&config(&fake, spool.path(), batch, ONE_ANON, "\"chan\""));
    let mut logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    logger.wait_log("database ready", 10 * SEC).await;
    send(&fake, "t", 0..1500);
    tokio::time::sleep(SEC).await;
    assert_eq!(store.count("SELECT count(*) FROM chat_messages").await, 0, "nothing flushed before SIGTERM");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0, "{}", logger.log_text());
    assert_eq!(store.count("SELECT count(*) FROM chat_messages").await, 1500);
    assert_eq!(spool_rows(spool.path()), 0);
}

async fn refused_rows_are_dead_lettered_and_the_rest_stored(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_dir, path) =
        config_dir(&config(&fake, spool.path(), "max_rows = 100\nflush_interval = \"300ms\"", ONE_ANON, "\"chan\""));
    let mut logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    logger.wait_log("database ready", 10 * SEC).await;
    store.refuse_poison().await;
    for i in 0..20 {
        let text = if i == 5 || i == 13 { "poison" } else { "fine" };
        fake.to_channel("chan", &privmsg("chan", &format!("p-{i}"), "Oli", text));
    }
    store.wait_count("SELECT count(*) FROM dead_letters", 2, 10 * SEC).await;
    store.wait_count("SELECT count(*) FROM chat_messages", 18, 10 * SEC).await;
    let letters = store.rows("dead_letters").await;
    for l in &letters {
        assert_eq!(l["kind"], "chat_message");
        assert!(l["error"].as_str().unwrap().contains("no_poison"), "{l}");
        let payload: Value = serde_json::from_str(l["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["text"], "poison");
    }
    // The writer goes on.
    fake.to_channel("chan", &privmsg("chan", "p-after", "Oli", "later"));
    store.wait_count("SELECT count(*) FROM chat_messages", 19, 10 * SEC).await;
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
    assert_eq!(summary(&logger, "dead_lettered"), 2);
}

async fn rows_written_while_the_store_is_locked_are_spooled_and_all_arrive_after(store: TestStore) {
    let (fake, spool) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    // durable_within 1s: a write the lock holds longer counts as failed and its rows spool.
    let batch = "max_rows = 20\nflush_interval = \"100ms\"\ndurable_within = \"1s\"";
    let (_dir, path) = config_dir(&config(&fake, spool.path(), batch, ONE_ANON, "\"chan\""));
    let mut logger = Logger::spawn(file_mode(&path, &store.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    logger.wait_log("database ready", 10 * SEC).await;
    send(&fake, "a", 0..50);
    store.wait_count("SELECT count(*) FROM chat_messages", 50, 10 * SEC).await;

    // Longer than SQLite's busy timeout (2 s) and than durable_within.
    let lock = store.lock_writes_for(6 * SEC).await;
    for chunk in 0..10 {
        send(&fake, "b", chunk * 30..(chunk + 1) * 30);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(logger.is_running(), "a locked store must not end the process");
    assert!(spool_rows(spool.path()) > 0, "rows went to the spool during the lock");
    lock.await.unwrap();
    store.wait_count("SELECT count(*) FROM chat_messages", 350, 30 * SEC).await;
    let rows = store.rows("chat_messages").await;
    let mut ids: Vec<&str> = rows.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 350, "each row once");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
    eprintln!(
        "{}: sent 350, stored {}, spooled {}, replayed {}",
        store.name(),
        rows.len(),
        summary(&logger, "spooled"),
        summary(&logger, "replayed")
    );
    assert!(summary(&logger, "spooled") > 0);
}

/// A line as the client turns it into a row, read at `at`.
fn event(kind: &str, at: chrono::DateTime<chrono::Utc>) -> twitch_chat_logger::record::ChatEvent {
    use twitch_irc::message::{IRCMessage, ServerMessage};
    let msg = ServerMessage::try_from(IRCMessage::parse(&sample(kind)).unwrap()).unwrap();
    match twitch_chat_logger::twitch::convert::to_record(msg, at) {
        Some(twitch_chat_logger::record::Record::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

async fn events_are_stored_once_and_room_state_only_when_it_changes(store: TestStore) {
    use twitch_chat_logger::store::Batch;
    let s = store.store().await;
    let t0 = chrono::Utc::now();
    let kinds = ["USERNOTICE resub with message", "CLEARCHAT timeout", "CLEARMSG", "ROOMSTATE"];
    let batch = |at| Batch { events: kinds.iter().map(|k| event(k, at)).collect(), ..Batch::default() };
    assert_eq!(s.write(&batch(t0)).await.unwrap().events_inserted, 4, "{}", store.name());
    // Another account reads the same lines a little later: nothing new.
    assert_eq!(s.write(&batch(t0 + chrono::Duration::milliseconds(7))).await.unwrap().events_inserted, 0);
    // A partial ROOMSTATE that changes one mode is stored, merged onto the last state.
    let mut slow = event("ROOMSTATE", t0 + chrono::Duration::seconds(5));
    slow.params = r#"{"slow":10}"#.into();
    slow.event_key = "00000000-0000-4000-8000-00000000510e".into();
    let one = Batch { events: vec![slow], ..Batch::default() };
    assert_eq!(s.write(&one).await.unwrap().events_inserted, 1);
    store.wait_count("SELECT count(*) FROM chat_events", 5, 5 * SEC).await;
    let rows = store.rows("chat_events").await;
    let rooms: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "roomstate").map(|r| &r["params"]).collect();
    assert_eq!(rooms.len(), 2);
    assert_eq!(rooms[1]["slow"], json!(10), "{}: {rooms:?}", store.name());
    assert_eq!(rooms[1]["emote-only"], rooms[0]["emote-only"], "the rest of the state is kept");
    let resub = rows.iter().find(|r| r["msg_id"] == "resub").unwrap();
    assert_eq!((&resub["cumulative_months"], &resub["sub_plan"]), (&json!(2), &json!("1000")));
    assert_eq!(resub["params"]["msg-param-sub-plan-name"], json!("Channel Subscription (xqcow)"));
    // The views answer on both.
    assert_eq!(store.count("SELECT count(*) FROM v_subscriptions").await, 1);
    assert_eq!(store.count("SELECT count(*) FROM v_moderation").await, 2);
    assert_eq!(store.count("SELECT count(*) FROM v_deleted_messages").await, 1);
}

for_both_stores!(
    events_are_stored_once_and_room_state_only_when_it_changes,
    real_lines_fill_every_column_the_same_way,
    a_message_two_accounts_see_is_stored_once,
    notices_are_stored_once_with_their_tags,
    sigterm_with_rows_pending_writes_them_and_exits_zero,
    refused_rows_are_dead_lettered_and_the_rest_stored,
    rows_written_while_the_store_is_locked_are_spooled_and_all_arrive_after,
);
