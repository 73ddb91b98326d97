//! Chat events (USERNOTICE, CLEARCHAT, CLEARMSG, ROOMSTATE) in `chat_events`: deduplicated,
//! merged (room state), viewed, indexed. Real PostgreSQL; the Twitch lines are real samples.

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
        assert!(!p.contains("Seq Scan"), "{what}: {p}");
        if what.starts_with("moderation") {
            // Every row of the week is wanted: a bitmap scan of the partial index is as good.
            assert!(
                p.contains(&format!("Index Scan on {index}")) || p.contains(&format!("Index Scan using {index}")),
                "{what}: {p}"
            );
        } else {
            assert!(p.contains(&format!("Index Scan using {index}")), "{what}: {p}");
            assert!(!p.contains("Sort"), "{what}: newest first straight from the index: {p}");
        }
    }
}
