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
