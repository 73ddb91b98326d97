//! Chat events (USERNOTICE, CLEARCHAT, CLEARMSG, ROOMSTATE) in `chat_events`: deduplicated,
//! merged (room state), viewed, indexed; through the socket, the writer and its spool. Real
//! PostgreSQL, the fake Twitch server, the real binary; the Twitch lines are real samples.
// Rows read back as tuples.
#![allow(clippy::type_complexity)]

mod common;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};
use twitch_chat_logger::record::{ChatEvent, Record};
use twitch_chat_logger::store::postgres::PgStore;
use twitch_chat_logger::store::{Batch, Store};
use twitch_chat_logger::twitch::convert::to_record;
use twitch_irc::message::{IRCMessage, ServerMessage};

async fn fresh_db() -> TestDb {
    let db = TestDb::new().await;
    PgStore::new(db.pool.clone()).migrate().await.unwrap();
    db
}

/// A line as the client turns it into a row, read at `at`.
fn event(line: &str, at: DateTime<Utc>) -> ChatEvent {
    let msg = ServerMessage::try_from(IRCMessage::parse(line).unwrap()).unwrap();
    match to_record(msg, at) {
        Some(Record::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

fn batch(events: Vec<ChatEvent>) -> Batch {
    Batch { events, ..Batch::default() }
}

#[tokio::test]
async fn the_same_usernotice_and_clearchat_written_by_two_accounts_are_stored_once_each() {
    let db = fresh_db().await;
    let store = PgStore::new(db.pool.clone());
    let t0 = Utc::now();
    let a = vec![event(&sample("USERNOTICE resub with message"), t0), event(&sample("CLEARCHAT timeout"), t0)];
    // The other account reads the same lines a little later.
    let later = t0 + chrono::Duration::milliseconds(7);
    let b = vec![event(&sample("USERNOTICE resub with message"), later), event(&sample("CLEARCHAT timeout"), later)];
    assert_eq!(store.write(&batch(a)).await.unwrap().events_inserted, 2);
    assert_eq!(store.write(&batch(b)).await.unwrap().events_inserted, 0);
    assert_eq!(db.count("SELECT count(*) FROM chat_events").await, 2);
    let (kind, months, streak, plan, params): (String, i32, i32, String, Value) = sqlx::query_as(
        "SELECT msg_id, cumulative_months, streak_months, sub_plan, params FROM chat_events WHERE kind = 'usernotice'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((kind.as_str(), months, streak, plan.as_str()), ("resub", 2, 2, "1000"));
    assert_eq!(params["msg-param-should-share-streak"], json!(1), "0/1 flags stay numbers");
    assert_eq!(params["msg-param-sub-plan-name"], json!("Channel Subscription (xqcow)"), "unescaped");
}

/// One row of `chat_events` as JSON, without its serial id and receive time, `sent_at` as
/// milliseconds.
async fn event_row(db: &TestDb, key: &str) -> Value {
    sqlx::query_scalar(
        "SELECT to_jsonb(e) - 'id' - 'received_at' - 'sent_at'
                || jsonb_build_object('sent_ms', (extract(epoch FROM sent_at) * 1000)::bigint)
         FROM chat_events e WHERE event_key = $1",
    )
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no event {key}"))
}

fn roomstate(modes: &str, at: DateTime<Utc>) -> ChatEvent {
    event(&format!("@{modes};room-id=40286300 :tmi.twitch.tv ROOMSTATE #randers"), at)
}

#[tokio::test]
async fn a_room_state_is_stored_only_when_it_changes_across_accounts_and_restarts() {
    let db = fresh_db().await;
    let t = |ms: i64| DateTime::from_timestamp_millis(1_780_000_000_000 + ms).unwrap();
    let full = "emote-only=0;followers-only=-1;r9k=0;slow=0;subs-only=0";
    let store = PgStore::new(db.pool.clone());
    // Account A joins, then account B: the same full state twice.
    store.write(&batch(vec![roomstate(full, t(0))])).await.unwrap();
    store.write(&batch(vec![roomstate(full, t(5))])).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'").await, 1);
    // Slow mode on: both accounts get the one-mode ROOMSTATE; one row, merged onto the state.
    let report = store.write(&batch(vec![roomstate("slow=10", t(10)), roomstate("slow=10", t(11))])).await.unwrap();
    assert_eq!(report.events_inserted, 1);
    let (params, state): (Value, Value) =
        sqlx::query_as("SELECT params, room_state FROM chat_events WHERE kind = 'roomstate' ORDER BY id DESC LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(params, json!({"slow": 10}), "the change as sent");
    assert_eq!(
        state,
        json!({"emote-only": false, "followers-only": -1, "r9k": false, "slow": 10, "subs-only": false}),
        "the room's whole state after it"
    );
    // A restart (a new store, nothing in memory): the full state after the JOIN is unchanged.
    let restarted = PgStore::new(db.pool.clone());
    let full_now = "emote-only=0;followers-only=-1;r9k=0;slow=10;subs-only=0";
    assert_eq!(restarted.write(&batch(vec![roomstate(full_now, t(20))])).await.unwrap().events_inserted, 0);
    // While we were away, followers-only was switched on: the JOIN's state is a change.
    let changed = "emote-only=0;followers-only=10;r9k=0;slow=10;subs-only=0";
    assert_eq!(restarted.write(&batch(vec![roomstate(changed, t(30))])).await.unwrap().events_inserted, 1);
    assert_eq!(db.count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'").await, 3);
    // Retried (a spool replay): the same rows again change nothing.
    restarted.write(&batch(vec![roomstate(changed, t(30))])).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'").await, 3);
    // Another room is another state.
    let other = event(&format!("@{full};room-id=1 :tmi.twitch.tv ROOMSTATE #other"), t(40));
    assert_eq!(restarted.write(&batch(vec![other])).await.unwrap().events_inserted, 1);
}

#[tokio::test]
async fn a_deleted_message_shows_in_the_view_and_its_stored_original_is_untouched() {
    let db = fresh_db().await;
    let store = PgStore::new(db.pool.clone());
    let mut original = chat_message(1, "this message was deleted");
    original.message_id = "3c92014f-340a-4dc3-a9c9-e5cf182f4a84".into();
    original.channel = "pajlada".into();
    original.username = "alazymeme".into();
    original.user_id = Some("77".into());
    store.write(&Batch { messages: vec![original.clone()], ..Batch::default() }).await.unwrap();
    let before: Value =
        sqlx::query_scalar("SELECT to_jsonb(m) FROM chat_messages m").fetch_one(&db.pool).await.unwrap();
    let t = Utc::now();
    store.write(&batch(vec![event(&sample("CLEARMSG"), t)])).await.unwrap();
    // And a deletion of a message we never stored (the logger joined later).
    let other =
        sample("CLEARMSG").replace("3c92014f-340a-4dc3-a9c9-e5cf182f4a84", "00000000-0000-4000-8000-00000000dead");
    store.write(&batch(vec![event(&other, t)])).await.unwrap();

    let after: Value = sqlx::query_scalar("SELECT to_jsonb(m) FROM chat_messages m").fetch_one(&db.pool).await.unwrap();
    assert_eq!(after, before, "the original row is intact");
    let rows: Vec<(String, String, Option<String>, String, bool, i64)> = sqlx::query_as(
        "SELECT message_id, username, user_id, text, stored, (extract(epoch FROM deleted_at) * 1000)::bigint
         FROM v_deleted_messages ORDER BY stored DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                original.message_id.clone(),
                "alazymeme".into(),
                Some("77".into()),
                "this message was deleted".into(),
                true,
                1594561955611
            ),
            (
                "00000000-0000-4000-8000-00000000dead".into(),
                "alazymeme".into(),
                None,
                "this message was deleted".into(),
                false,
                1594561955611
            ),
        ]
    );
}

/// Every sample USERNOTICE and CLEARCHAT/CLEARMSG, converted as the client does.
fn sample_events(at: DateTime<Utc>) -> Vec<ChatEvent> {
    samples()
        .into_iter()
        .filter(|(_, l)| [" USERNOTICE ", " CLEARCHAT ", " CLEARMSG "].iter().any(|c| l.contains(c)))
        .map(|(_, l)| event(&l, at))
        .collect()
}

#[tokio::test]
async fn the_moderation_and_subscription_views_show_the_sample_events() {
    let db = fresh_db().await;
    PgStore::new(db.pool.clone()).write(&batch(sample_events(Utc::now()))).await.unwrap();
    let moderation: Vec<(String, String, Option<String>, Option<String>, Option<i32>, Option<String>)> =
        sqlx::query_as(
            "SELECT channel, action, target_user_id, target_login, ban_duration, target_msg_id
             FROM v_moderation ORDER BY sent_at",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        moderation,
        vec![
            ("pajlada".into(), "timeout".into(), s("148973258"), s("fabzeef"), Some(1), None),
            ("pajlada".into(), "ban".into(), s("70948394"), s("weeb123"), None, None),
            ("randers".into(), "clear".into(), None, None, None, None),
            ("pajlada".into(), "delete".into(), None, s("alazymeme"), None, s("3c92014f-340a-4dc3-a9c9-e5cf182f4a84")),
        ]
    );
    let subs: Vec<(String, String, Option<i32>, Option<i32>, Option<String>, Option<String>, Option<i64>)> =
        sqlx::query_as(
            "SELECT sub_kind, login, cumulative_months, streak_months, sub_plan, recipient_login, mass_gift_count
             FROM v_subscriptions ORDER BY sub_kind, sent_at",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        subs,
        vec![
            ("anongiftpaidupgrade".into(), "samura1jack_ttv".into(), None, None, None, None, None),
            ("giftpaidupgrade".into(), "crazycrackanimal".into(), None, None, None, None, None),
            ("resub".into(), "gutrin".into(), Some(2), Some(2), s("1000"), None, None),
            ("sub".into(), "fallenseraphhh".into(), Some(1), None, s("Prime"), None, None),
            ("subgift".into(), "adamatreflectstudios".into(), Some(2), None, s("1000"), s("qatarking24xd"), None),
            ("submysterygift".into(), "adamatreflectstudios".into(), None, None, s("1000"), None, Some(20)),
        ]
    );
}

/// The plan PostgreSQL chooses for `sql`, as text.
async fn plan(db: &TestDb, sql: &str) -> String {
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"))).fetch_all(&db.pool).await.unwrap();
    lines.join("\n")
}

#[tokio::test]
async fn a_users_history_and_a_channels_moderation_last_week_are_index_scans() {
    let db = fresh_db().await;
    let store = PgStore::new(db.pool.clone());
    store.write(&batch(sample_events(Utc::now()))).await.unwrap();
    // A busy logger in small: 5 channels, 100 users, 100,000 messages and 40,000
    // events, so the planner chooses as it would on a big table.
    sqlx::raw_sql(
        "SELECT setseed(0.42);
         INSERT INTO chat_messages (message_id, channel, user_id, username, text, sent_at)
         SELECT gen_random_uuid()::text, 'chan' || floor(random() * 5), u::text, 'u' || u, 'hi',
                now() - i * interval '5 minutes'
         FROM generate_series(1, 100000) i, LATERAL (SELECT floor(random() * 100) + i * 0 AS u) x;
         INSERT INTO chat_events (event_key, kind, channel, user_id, target_user_id, sent_at)
         SELECT gen_random_uuid()::text, (ARRAY['usernotice', 'clearchat', 'clearmsg', 'roomstate'])[1 + i % 4],
                'chan' || floor(random() * 5), u::text, u::text, now() - i * interval '15 minutes'
         FROM generate_series(1, 40000) i, LATERAL (SELECT floor(random() * 100) + i * 0 AS u) x;
         ANALYZE chat_messages; ANALYZE chat_events;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let queries = [
        ("messages of a user, all channels", "SELECT * FROM chat_messages WHERE user_id = '42' ORDER BY sent_at DESC LIMIT 20", "idx_chat_messages_user_time"),
        ("messages of a user, one channel", "SELECT * FROM chat_messages WHERE channel = 'chan2' AND user_id = '42' ORDER BY sent_at DESC LIMIT 20", "idx_chat_messages_channel_user_time"),
        ("events of a user, all channels", "SELECT * FROM chat_events WHERE user_id = '42' ORDER BY sent_at DESC LIMIT 20", "idx_chat_events_user_time"),
        ("events of a user, one channel", "SELECT * FROM chat_events WHERE channel = 'chan2' AND user_id = '42' ORDER BY sent_at DESC LIMIT 20", "idx_chat_events_channel_user_time"),
        ("moderation in a channel last week", "SELECT * FROM v_moderation WHERE channel = 'chan2' AND sent_at > now() - interval '7 days' ORDER BY sent_at DESC", "idx_chat_events_moderation"),
    ];
    for (what, sql, index) in queries {
        let p = plan(&db, sql).await;
        // On a partitioned table the planner may read a partition of a few rows whole; every
        // partition that holds the data must be read through an index.
        let big_seq_scan = p.lines().filter(|l| l.contains("Seq Scan")).any(|l| {
            let rows = l.split("rows=").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok());
            rows.is_none_or(|n| n > 10)
        });
        assert!(!big_seq_scan, "{what}: {p}");
        if what.starts_with("moderation") {
            // Every row of the week is wanted: a bitmap scan of the partial index is as good.
            assert!(
                p.contains(&format!("Index Scan on {index}"))
                    || p.contains(&format!("Index Scan using {index}"))
                    || p.contains("Index Scan on chat_events_")
                    || p.contains("Index Scan using chat_events_"),
                "{what}: {p}"
            );
        } else {
            // A partitioned table (new databases) merges each partition's copy of the index,
            // already in order: a Merge Append of index scans, never a Sort node.
            let scans: Vec<&str> = p.lines().map(|l| l.trim_start().trim_start_matches("->").trim_start()).collect();
            let sorted = scans.iter().any(|l| l.starts_with("Sort  (") || l.starts_with("Incremental Sort"));
            assert!(!sorted, "{what}: newest first straight from the index: {p}");
            let by_index = p.contains(&format!("Index Scan using {index}"))
                || (p.contains("Merge Append")
                    && scans
                        .iter()
                        .filter(|l| l.contains(" Scan ") && !l.starts_with("Seq Scan"))
                        .all(|l| l.starts_with("Index Scan using")));
            assert!(by_index, "{what}: {p}");
        }
    }
}

const SEC: std::time::Duration = std::time::Duration::from_secs(1);
const ANON: &str = "justinfan12345";
const CHANNELS: [&str; 6] = ["pajlada", "xqcow", "randers", "retoon", "forsen", "seventoes"];

/// Two accounts (one anonymous, one logged in) in every sample channel, with `storage`.
fn two_accounts(fake: &FakeTwitch, spool: &std::path::Path, storage: &str) -> String {
    let ch: Vec<String> = CHANNELS.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nspool_dir = \"{}\"\nflush_interval = \"50ms\"\n[storage]\n{storage}\n[accounts.main]\n[accounts.backup]\nusername = \"backupbot\"\noauth_token = \"b\"\n[groups.g]\naccounts = [\"main\", \"backup\"]\nchannels = [{}]\n",
        fake.url(),
        spool.display(),
        ch.join(", ")
    )
}

async fn both_joined(fake: &FakeTwitch) {
    fake.wait_for("both accounts joined every channel", 15 * SEC, |f| {
        CHANNELS.iter().all(|c| f.joined_by(ANON).contains(*c) && f.joined_by("backupbot").contains(*c))
    })
    .await;
}

/// The channel a sample line is for (`#name` after the command).
fn channel_of(line: &str) -> String {
    let (_, rest) = line.split_once(" #").expect("a channel");
    rest.split(' ').next().unwrap().to_string()
}

async fn message_row(db: &TestDb, id: &str) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('returning_chatter', returning_chatter, 'vip', vip,
                'source_room_id', source_room_id, 'source_id', source_id, 'channel', channel, 'raw', raw)
         FROM chat_messages WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_sample_kind_sent_to_two_accounts_is_stored_once_with_every_column_and_its_exact_line() {
    let (db, fake, spool) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_dir, path) = config_dir(&two_accounts(&fake, spool.path(), "raw_lines = true"));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    both_joined(&fake).await;
    // The full state after each JOIN, seen by both accounts: once per room.
    db.wait_count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'", 6, 15 * SEC).await;

    let all = samples();
    let skip = ["JOIN", "RECONNECT", "NOTICE pre-login auth failure", "ROOMSTATE"];
    let mut sent = 0;
    for (kind, line) in all.iter().filter(|(k, _)| !skip.iter().any(|s| k.starts_with(s))) {
        assert_eq!(fake.to_channel(&channel_of(line), line), 2, "{kind}: both accounts get it");
        sent += 1;
    }
    // Room modes one after the other, as Twitch sends them: the full state, then one change.
    assert_eq!(fake.to_channel("randers", &sample("ROOMSTATE")), 2);
    db.wait_count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'", 7, 10 * SEC).await;
    assert_eq!(
        fake.to_channel("randers", &sample("ROOMSTATE partial (constructed: what Twitch sends when one mode changes)")),
        2
    );
    db.wait_count("SELECT count(*) FROM chat_events WHERE kind = 'roomstate'", 8, 10 * SEC).await;
    fake.to_nick(
        ANON,
        &sample("NOTICE pre-login auth failure").replace("Improperly formatted auth", "a server-wide notice"),
    );

    // 13 USERNOTICEs (one of a msg-id twitch-irc does not know), 3 CLEARCHATs, 1 CLEARMSG.
    db.wait_count("SELECT count(*) FROM chat_events WHERE kind <> 'roomstate'", 17, 15 * SEC).await;
    db.wait_count("SELECT count(*) FROM chat_messages", 7, 10 * SEC).await;
    // A NOTICE is about the account that got it (e.g. "you are banned"): one per account.
    db.wait_count("SELECT count(*) FROM channel_notices", 3, 10 * SEC).await;
    assert_eq!(sent, 7 + 13 + 3 + 1 + 1, "every kind was sent");
    tokio::time::sleep(SEC / 2).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_events").await, 25, "nothing stored twice");

    let raw = |kind: &str| Value::String(sample(kind));
    let t = Utc::now();
    let key = |kind: &str| event(&sample(kind), t).event_key;
    let sub_plan_name = json!("Channel Subscription (xqcow)");

    // USERNOTICE sub
    assert_eq!(
        event_row(&db, "2a9bea11-a80a-49a0-a498-1642d457f775").await,
        json!({
            "event_key": "2a9bea11-a80a-49a0-a498-1642d457f775", "kind": "usernotice", "msg_id": "sub",
            "channel": "xqcow", "room_id": "71092938", "user_id": "224005980", "login": "fallenseraphhh",
            "display_name": "fallenseraphhh", "badges": {"subscriber": 0, "premium": 1},
            "badge_info": {"subscriber": 0}, "color": null, "emotes": null, "text": null,
            "system_msg": "fallenseraphhh subscribed with Twitch Prime.",
            "params": {"msg-param-cumulative-months": 1, "msg-param-months": 0, "msg-param-should-share-streak": 0,
                       "msg-param-sub-plan-name": sub_plan_name, "msg-param-sub-plan": "Prime"},
            "cumulative_months": 1, "streak_months": null, "sub_plan": "Prime", "recipient_id": null,
            "recipient_login": null, "viewer_count": null, "ban_duration": null, "target_user_id": null,
            "target_login": null, "target_msg_id": null, "room_state": null, "sent_ms": 1582685713242_i64,
            "raw": raw("USERNOTICE sub"),
        })
    );
    // USERNOTICE resub with message
    assert_eq!(
        event_row(&db, "e0975c76-054c-4954-8cb0-91b8867ec1ca").await,
        json!({
            "event_key": "e0975c76-054c-4954-8cb0-91b8867ec1ca", "kind": "usernotice", "msg_id": "resub",
            "channel": "xqcow", "room_id": "71092938", "user_id": "21156217", "login": "gutrin",
            "display_name": "Gutrin", "badges": {"subscriber": 0, "battlerite_1": 1},
            "badge_info": {"subscriber": 2}, "color": "#0000FF", "emotes": "1035663:0-3", "text": "xqcL",
            "system_msg": "Gutrin subscribed at Tier 1. They've subscribed for 2 months, currently on a 2 month streak!",
            "params": {"msg-param-cumulative-months": 2, "msg-param-months": 0, "msg-param-should-share-streak": 1,
                       "msg-param-streak-months": 2, "msg-param-sub-plan-name": sub_plan_name,
                       "msg-param-sub-plan": 1000},
            "cumulative_months": 2, "streak_months": 2, "sub_plan": "1000", "recipient_id": null,
            "recipient_login": null, "viewer_count": null, "ban_duration": null, "target_user_id": null,
            "target_login": null, "target_msg_id": null, "room_state": null, "sent_ms": 1581713640019_i64,
            "raw": raw("USERNOTICE resub with message"),
        })
    );
    // USERNOTICE raid
    assert_eq!(
        event_row(&db, "bb99dda7-3736-4583-9114-52aa11b23d17").await,
        json!({
            "event_key": "bb99dda7-3736-4583-9114-52aa11b23d17", "kind": "usernotice", "msg_id": "raid",
            "channel": "xqcow", "room_id": "71092938", "user_id": "155874595", "login": "iamelisabete",
            "display_name": "iamelisabete", "badges": {"glhf-pledge": 1}, "badge_info": null,
            "color": "#FF69B4", "emotes": null, "text": null,
            "system_msg": "430 raiders from iamelisabete have joined!",
            "params": {"msg-param-displayName": "iamelisabete", "msg-param-login": "iamelisabete",
                       "msg-param-profileImageURL": "https://static-cdn.jtvnw.net/jtv_user_pictures/cae3ca63-510d-4715-b4ce-059dcf938978-profile_image-70x70.png",
                       "msg-param-viewerCount": 430},
            "cumulative_months": null, "streak_months": null, "sub_plan": null, "recipient_id": null,
            "recipient_login": null, "viewer_count": 430, "ban_duration": null, "target_user_id": null,
            "target_login": null, "target_msg_id": null, "room_state": null, "sent_ms": 1594517796120_i64,
            "raw": raw("USERNOTICE raid"),
        })
    );
    // USERNOTICE subgift
    assert_eq!(
        event_row(&db, "e21409b1-d25d-4a1a-b5cf-ef27d8b7030e").await,
        json!({
            "event_key": "e21409b1-d25d-4a1a-b5cf-ef27d8b7030e", "kind": "usernotice", "msg_id": "subgift",
            "channel": "xqcow", "room_id": "71092938", "user_id": "211711554", "login": "adamatreflectstudios",
            "display_name": "AdamAtReflectStudios", "badges": {"sub-gifter": 50}, "badge_info": null,
            "color": null, "emotes": null, "text": null,
            "system_msg": "AdamAtReflectStudios gifted a Tier 1 sub to qatarking24xd!",
            "params": {"msg-param-gift-months": 1, "msg-param-months": 2,
                       "msg-param-origin-id": "da 39 a3 ee 5e 6b 4b 0d 32 55 bf ef 95 60 18 90 af d8 07 09",
                       "msg-param-recipient-display-name": "qatarking24xd", "msg-param-recipient-id": 236653628,
                       "msg-param-recipient-user-name": "qatarking24xd", "msg-param-sender-count": 0,
                       "msg-param-sub-plan-name": sub_plan_name, "msg-param-sub-plan": 1000},
            "cumulative_months": 2, "streak_months": null, "sub_plan": "1000", "recipient_id": "236653628",
            "recipient_login": "qatarking24xd", "viewer_count": null, "ban_duration": null,
            "target_user_id": null, "target_login": null, "target_msg_id": null, "room_state": null,
            "sent_ms": 1594583782376_i64, "raw": raw("USERNOTICE subgift"),
        })
    );
    // USERNOTICE submysterygift
    assert_eq!(
        event_row(&db, "049e6371-7023-4fca-8605-7dec60e72e12").await,
        json!({
            "event_key": "049e6371-7023-4fca-8605-7dec60e72e12", "kind": "usernotice", "msg_id": "submysterygift",
            "channel": "xqcow", "room_id": "71092938", "user_id": "211711554", "login": "adamatreflectstudios",
            "display_name": "AdamAtReflectStudios", "badges": {"sub-gifter": 50}, "badge_info": null,
            "color": null, "emotes": null, "text": null,
            "system_msg": "AdamAtReflectStudios is gifting 20 Tier 1 Subs to xQcOW's community! They've gifted a total of 100 in the channel!",
            "params": {"msg-param-mass-gift-count": 20,
                       "msg-param-origin-id": "1f be bb 4a 81 9a 65 d1 4b 77 f5 23 16 4a d3 13 09 e7 be 55",
                       "msg-param-sender-count": 100, "msg-param-sub-plan": 1000},
            "cumulative_months": null, "streak_months": null, "sub_plan": "1000", "recipient_id": null,
            "recipient_login": null, "viewer_count": null, "ban_duration": null, "target_user_id": null,
            "target_login": null, "target_msg_id": null, "room_state": null, "sent_ms": 1594583777669_i64,
            "raw": raw("USERNOTICE submysterygift"),
        })
    );
    // USERNOTICE announcement
    assert_eq!(
        event_row(&db, "9045a344-75b9-44fa-af49-c413bcb39559").await,
        json!({
            "event_key": "9045a344-75b9-44fa-af49-c413bcb39559", "kind": "usernotice", "msg_id": "announcement",
            "channel": "pajlada", "room_id": "11148817", "user_id": "40286300", "login": "randers",
            "display_name": "randers", "badges": {"moderator": 1, "subscriber": 72},
            "badge_info": {"subscriber": 88}, "color": "#19E6E6", "emotes": "185989:11-15/25:17-21/1902:23-27",
            "text": "hello pajs pajaH Kappa Keepo", "system_msg": null,
            "params": {"msg-param-color": "PRIMARY"},
            "cumulative_months": null, "streak_months": null, "sub_plan": null, "recipient_id": null,
            "recipient_login": null, "viewer_count": null, "ban_duration": null, "target_user_id": null,
            "target_login": null, "target_msg_id": null, "room_state": null, "sent_ms": 1780872797175_i64,
            "raw": raw("USERNOTICE announcement"),
        })
    );
    // A msg-id twitch-irc does not know: stored like any other.
    let milestone = event_row(&db, "5f0c2a1e-8d3b-4c7a-9e21-0b6f4d3c2a19").await;
    assert_eq!(milestone["msg_id"], "viewermilestone");
    assert_eq!(
        milestone["params"],
        json!({"msg-param-category": "watch-streak", "msg-param-copoReward": 450,
               "msg-param-id": "7c3e1d2b-5a4f-4e6d-8b9a-1c2d3e4f5a6b", "msg-param-value": 3})
    );
    assert_eq!((milestone["text"].clone(), milestone["login"].clone()), (json!("third time"), json!("streaky")));
    for (id, msg_id) in [
        ("7006f242-a45c-4e07-83b3-11f9c6d1ee28", "giftpaidupgrade"),
        ("144ee636-0c1d-404e-8b29-35449a045a7e", "anongiftpaidupgrade"),
        ("37feed0f-b9c7-4c3a-b475-21c6c6d21c3d", "ritual"),
        ("d2b32a02-3071-4c52-b2ce-bc3716acdc44", "bitsbadgetier"),
        ("7f1336e4-f84a-4510-809d-e57bf50af0cc", "rewardgift"),
        ("0a7c5e3d-2b1f-4e8a-9c6d-5f4e3d2c1b0a", "unraid"),
    ] {
        assert_eq!(event_row(&db, id).await["msg_id"], msg_id);
    }
    assert_eq!(
        event_row(&db, "d2b32a02-3071-4c52-b2ce-bc3716acdc44").await["params"],
        json!({"msg-param-threshold": 1000})
    );

    let no_sender = |mut v: Value| {
        for k in [
            "msg_id",
            "display_name",
            "badges",
            "badge_info",
            "color",
            "emotes",
            "system_msg",
            "cumulative_months",
            "streak_months",
            "sub_plan",
            "recipient_id",
            "recipient_login",
            "viewer_count",
            "room_state",
        ] {
            v[k] = Value::Null;
        }
        v
    };
    // CLEARCHAT timeout, ban, clear
    let k = key("CLEARCHAT timeout");
    assert_eq!(
        event_row(&db, &k).await,
        no_sender(json!({
            "event_key": k, "kind": "clearchat", "channel": "pajlada", "room_id": "11148817",
            "user_id": "148973258", "login": "fabzeef", "text": null, "params": {"ban-duration": 1},
            "ban_duration": 1, "target_user_id": "148973258", "target_login": "fabzeef", "target_msg_id": null,
            "sent_ms": 1594553828245_i64, "raw": raw("CLEARCHAT timeout"),
        }))
    );
    let k = key("CLEARCHAT ban");
    assert_eq!(
        event_row(&db, &k).await,
        no_sender(json!({
            "event_key": k, "kind": "clearchat", "channel": "pajlada", "room_id": "11148817",
            "user_id": "70948394", "login": "weeb123", "text": null, "params": {}, "ban_duration": null,
            "target_user_id": "70948394", "target_login": "weeb123", "target_msg_id": null,
            "sent_ms": 1594561360331_i64, "raw": raw("CLEARCHAT ban"),
        }))
    );
    let k = key("CLEARCHAT clear chat");
    assert_eq!(
        event_row(&db, &k).await,
        no_sender(json!({
            "event_key": k, "kind": "clearchat", "channel": "randers", "room_id": "40286300",
            "user_id": null, "login": null, "text": null, "params": {}, "ban_duration": null,
            "target_user_id": null, "target_login": null, "target_msg_id": null,
            "sent_ms": 1594561392337_i64, "raw": raw("CLEARCHAT clear chat"),
        }))
    );
    // CLEARMSG
    let k = key("CLEARMSG");
    assert_eq!(
        event_row(&db, &k).await,
        no_sender(json!({
            "event_key": k, "kind": "clearmsg", "channel": "pajlada", "room_id": null,
            "user_id": null, "login": "alazymeme", "text": "this message was deleted", "params": {},
            "ban_duration": null, "target_user_id": null, "target_login": "alazymeme",
            "target_msg_id": "3c92014f-340a-4dc3-a9c9-e5cf182f4a84",
            "sent_ms": 1594561955611_i64, "raw": raw("CLEARMSG"),
        }))
    );
    // ROOMSTATE: the sample's full state (it adds `rituals` to what the JOIN said), then slow mode.
    let rooms: Vec<(Value, Value, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT params, room_state, room_id, raw FROM chat_events WHERE kind = 'roomstate' AND channel = 'randers' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let join_state = json!({"emote-only": false, "followers-only": -1, "r9k": false, "slow": 0, "subs-only": false});
    let sample_state =
        json!({"emote-only": false, "followers-only": -1, "r9k": false, "rituals": 0, "slow": 0, "subs-only": false});
    let slow_state =
        json!({"emote-only": false, "followers-only": -1, "r9k": false, "rituals": 0, "slow": 10, "subs-only": false});
    assert_eq!(
        rooms,
        vec![
            (join_state.clone(), join_state, Some("1".into()), Some("@emote-only=0;followers-only=-1;r9k=0;room-id=1;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #randers".into())),
            (sample_state.clone(), sample_state, Some("40286300".into()), Some(sample("ROOMSTATE"))),
            (json!({"slow": 10}), slow_state, Some("40286300".into()), Some(sample("ROOMSTATE partial (constructed: what Twitch sends when one mode changes)"))),
        ]
    );
    // NOTICEs keep their line too.
    let notices: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT channel, raw FROM channel_notices ORDER BY channel").fetch_all(&db.pool).await.unwrap();
    assert_eq!(
        notices,
        vec![
            ("*".into(), Some(":tmi.twitch.tv NOTICE * :a server-wide notice".into())),
            ("forsen".into(), Some(sample("NOTICE msg_banned"))),
            ("forsen".into(), Some(sample("NOTICE msg_banned"))),
        ]
    );
    // PRIVMSG: the new columns and the line.
    for (kind, id, returning, vip) in [
        ("PRIVMSG plain", "e9d998c3-36f1-430f-89ec-6b887c28af36", Value::Null, false),
        (
            "PRIVMSG reply-parent tags + first-msg/returning-chatter",
            "5b4f63a9-776f-4fce-bf3c-d9707f52e32d",
            json!(false),
            false,
        ),
    ] {
        let row = message_row(&db, id).await;
        assert_eq!(row["returning_chatter"], returning, "{kind}");
        assert_eq!(row["vip"], json!(vip), "{kind}");
        assert_eq!((row["source_room_id"].clone(), row["source_id"].clone()), (Value::Null, Value::Null), "{kind}");
        assert_eq!(row["raw"], raw(kind), "{kind}");
    }
    // Shared chat: one row per channel it appeared in, each with the room it came from.
    let shared: Vec<(String, String, Option<String>, Option<String>, Option<bool>, Option<bool>)> = sqlx::query_as(
        "SELECT channel, message_id, source_room_id, source_id, vip, returning_chatter FROM chat_messages
         WHERE source_id IS NOT NULL ORDER BY channel",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let src = Some("4e13fd2a-8f1c-4de3-9b2e-e7a5bd0bb8b6".to_string());
    assert_eq!(
        shared,
        vec![
            (
                "pajlada".into(),
                "01cd601f-bc3f-49d5-ab4b-136fa9d6ec22".into(),
                Some("71092938".into()),
                src.clone(),
                Some(false),
                Some(true)
            ),
            (
                "xqcow".into(),
                "4e13fd2a-8f1c-4de3-9b2e-e7a5bd0bb8b6".into(),
                Some("71092938".into()),
                src,
                Some(true),
                Some(true)
            ),
        ]
    );
}

fn one_account(fake: &FakeTwitch, spool: &std::path::Path, channels: &[&str]) -> String {
    let ch: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nspool_dir = \"{}\"\nflush_interval = \"50ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [{}]\n",
        fake.url(),
        spool.display(),
        ch.join(", ")
    )
}

#[tokio::test]
async fn events_read_while_the_database_is_down_are_spooled_and_all_stored_when_it_is_back() {
    let (cluster, fake) = (cluster::Cluster::start_new(), FakeTwitch::start().await);
    let (_dir, path) = config_dir(&one_account(&fake, &cluster.spool_dir(), &["xqcow", "pajlada", "randers"]));
    let _logger = Logger::spawn(file_mode(&path, &cluster.url()));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).len() == 3).await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&cluster.url()).await.unwrap();
    wait_count_in(&pool, "SELECT count(*) FROM chat_events", 3, 15 * SEC).await;
    pool.close().await;

    cluster.stop();
    let lines = [
        ("xqcow", sample("USERNOTICE sub")),
        ("pajlada", sample("PRIVMSG plain")),
        ("xqcow", sample("USERNOTICE resub with message")),
        ("pajlada", sample("CLEARCHAT timeout")),
        ("pajlada", sample("CLEARMSG")),
        ("randers", sample("CLEARCHAT clear chat")),
        ("randers", sample("ROOMSTATE partial (constructed: what Twitch sends when one mode changes)")),
    ];
    for (ch, line) in &lines {
        assert_eq!(fake.to_channel(ch, line), 1);
    }
    // After SPILL_AFTER of failing writes, memory goes to disk.
    for _ in 0..200 {
        if spool_rows_all(&cluster.spool_dir()) == lines.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(spool_rows_all(&cluster.spool_dir()), lines.len(), "every row is on disk while the database is down");

    cluster.start();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&cluster.url()).await.unwrap();
    wait_count_in(&pool, "SELECT count(*) FROM chat_events", 3 + 6, 30 * SEC).await;
    wait_count_in(&pool, "SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    let kinds: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT kind, msg_id FROM chat_events WHERE id > 3 ORDER BY id").fetch_all(&pool).await.unwrap();
    let s = |k: &str, m: Option<&str>| (k.to_string(), m.map(String::from));
    assert_eq!(
        kinds,
        vec![
            s("usernotice", Some("sub")),
            s("usernotice", Some("resub")),
            s("clearchat", None),
            s("clearmsg", None),
            s("clearchat", None),
            s("roomstate", None),
        ],
        "nothing lost, in the order read"
    );
    let with_raw = "SELECT (SELECT count(*) FROM chat_events WHERE raw IS NOT NULL) + (SELECT count(*) FROM chat_messages WHERE raw IS NOT NULL)";
    assert_eq!(count_in(&pool, with_raw).await, 0, "raw_lines is off by default: no line kept");
    for _ in 0..100 {
        if spool_rows_all(&cluster.spool_dir()) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(spool_rows_all(&cluster.spool_dir()), 0, "the spool is written out");
}

#[tokio::test]
async fn hostile_event_lines_cost_only_themselves() {
    let (db, fake, spool) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_dir, path) = config_dir(&one_account(&fake, spool.path(), &["chan"]));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    db.wait_count("SELECT count(*) FROM chat_events", 1, 15 * SEC).await;

    let base = "badge-info=;badges=;color=;display-name=Evil;emotes=;flags=;login=evil;mod=0;room-id=1;subscriber=0;tmi-sent-ts=1594545155039;user-id=666;user-type=";
    let notice = |id: &str, extra: &str| format!("@{base};id={id};{extra} :tmi.twitch.tv USERNOTICE #chan :text");
    // Non-ASCII everywhere, in names and values.
    fake.to_channel(
        "chan",
        &notice(
            "00000000-0000-4000-8000-0000000000a1",
            "msg-id=ünïcødé;msg-param-ñame=テスト\\s✓;system-msg=💥\\sboom",
        ),
    );
    // A 40 KB value.
    let huge = "x".repeat(40_000);
    fake.to_channel(
        "chan",
        &notice(
            "00000000-0000-4000-8000-0000000000a2",
            &format!("msg-id=announcement;msg-param-color={huge};system-msg="),
        ),
    );
    // Numbers that are not quite numbers, or too big for a column.
    fake.to_channel("chan", &notice(
        "00000000-0000-4000-8000-0000000000a3",
        "msg-id=weird;msg-param-cumulative-months=1e3;msg-param-streak-months=99999999999999999999;msg-param-viewerCount=-0;msg-param-months=007;msg-param-sub-plan=3000000000;msg-param-recipient-id=;msg-param-flag=true;system-msg=x",
    ));
    // An id no index can hold: dead-lettered, the rest goes on.
    fake.to_channel("chan", &notice(&"i".repeat(3000), "msg-id=sub-but-evil;system-msg=x"));
    // A time far in the future, and a CLEARCHAT twitch-irc cannot read (counted, not stored).
    fake.to_channel(
        "chan",
        "@room-id=1;target-user-id=7;tmi-sent-ts=9999999999999 :tmi.twitch.tv CLEARCHAT #chan :victim",
    );
    fake.to_channel(
        "chan",
        "@ban-duration=soon;room-id=1;target-user-id=8;tmi-sent-ts=1594553828245 :tmi.twitch.tv CLEARCHAT #chan :other",
    );
    fake.to_channel("chan", &privmsg("chan", "after-hostile", "Bo", "still here"));

    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    db.wait_count("SELECT count(*) FROM chat_events", 1 + 4, 10 * SEC).await;
    db.wait_count("SELECT count(*) FROM dead_letters WHERE kind = 'chat_event'", 1, 10 * SEC).await;

    let a1 = event_row(&db, "00000000-0000-4000-8000-0000000000a1").await;
    assert_eq!((a1["msg_id"].clone(), a1["system_msg"].clone()), (json!("ünïcødé"), json!("💥 boom")));
    assert_eq!(a1["params"], json!({"msg-param-ñame": "テスト ✓"}));
    let a2 = event_row(&db, "00000000-0000-4000-8000-0000000000a2").await;
    assert_eq!(a2["params"]["msg-param-color"].as_str().map(str::len), Some(40_000));
    let a3 = event_row(&db, "00000000-0000-4000-8000-0000000000a3").await;
    assert_eq!(
        a3["params"],
        json!({"msg-param-cumulative-months": "1e3", "msg-param-streak-months": "99999999999999999999",
               "msg-param-viewerCount": "-0", "msg-param-months": "007", "msg-param-sub-plan": 3000000000_i64,
               "msg-param-recipient-id": "", "msg-param-flag": true}),
        "only canonical integers become numbers; nothing is lost"
    );
    for col in ["cumulative_months", "streak_months", "viewer_count", "recipient_id"] {
        assert_eq!(a3[col], Value::Null, "{col}: no column value from a malformed number");
    }
    assert_eq!(a3["sub_plan"], json!("3000000000"), "the plan column keeps the text");
    let (future, received): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT sent_at, received_at FROM chat_events WHERE kind = 'clearchat'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(future, received, "an impossible time is replaced by the receive time");
    let dead: String = sqlx::query_scalar("SELECT error FROM dead_letters WHERE kind = 'chat_event'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(dead.contains("event key"), "{dead}");
}
