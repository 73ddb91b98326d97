//! `twitch-chat-logger copy`: every row of a SQLite file into PostgreSQL, checked by content on
//! both sides; run twice (every row once); killed half-way and run again (resumes, every row
//! once). The real binary, a real file, a real PostgreSQL.

mod common;

use common::backends::normalise;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use twitch_chat_logger::store::sqlite::SqliteStore;
use twitch_chat_logger::store::{Batch, ChannelNotice, Record, Store};

const SEC: Duration = Duration::from_secs(1);

/// A file holding `messages` varied messages, 40 notices and 3 dead letters.
async fn fill(path: &Path, messages: usize) -> SqliteStore {
    let store = SqliteStore::open_lazy(path);
    store.migrate().await.unwrap();
    let mut batch = Batch::default();
    for i in 0..messages {
        let mut m = chat_message(i, &format!("message {i} — ünïcödé ✓ 'quoted' \"double\""));
        m.is_mod = i % 3 == 0;
        m.is_subscriber = i % 5 == 0;
        m.first_msg = [None, Some(true), Some(false)][i % 3];
        m.badges = if i % 2 == 0 { r#"{"subscriber":"12","premium":"1"}"#.into() } else { "{}".into() };
        m.badge_info = (i % 4 == 0).then(|| r#"{"subscriber":14}"#.to_string());
        m.bits = (i % 7) as i32;
        m.emotes = (i % 6 == 0).then(|| "25:0-4".to_string());
        m.sent_at = chrono::Utc::now() - chrono::Duration::milliseconds(i as i64 * 1234);
        batch.messages.push(m);
        if batch.messages.len() == 1000 {
            store.write(&batch).await.unwrap();
            batch.clear();
        }
    }
    for i in 0..40 {
        batch.notices.push(ChannelNotice {
            channel: "chan".into(),
            msg_id: Some("msg_banned".into()),
            message: format!("notice {i}"),
            received_at: chrono::Utc::now(),
            tags: r#"{"msg-id":"msg_banned"}"#.into(),
            notice_at: None,
            key: uuid_of(i),
            raw: None,
        });
    }
    let t0 = chrono::Utc::now();
    for kind in ["USERNOTICE resub with message", "USERNOTICE raid", "CLEARCHAT timeout", "CLEARMSG", "ROOMSTATE"] {
        use twitch_irc::message::{IRCMessage, ServerMessage};
        let msg = ServerMessage::try_from(IRCMessage::parse(&sample(kind)).unwrap()).unwrap();
        let Some(Record::Event(e)) = twitch_chat_logger::twitch::convert::to_record(msg, t0) else { panic!("{kind}") };
        batch.events.push(e);
    }
    store.write(&batch).await.unwrap();
    for i in 0..3 {
        store
            .dead_letter(&Record::Message(chat_message(900_000 + i, "refused")), "no_poison (SQLite code 1811)")
            .await
            .unwrap();
    }
    store
}

fn uuid_of(i: usize) -> String {
    format!("11111111-0000-4000-8000-{i:012}")
}

fn copy_cmd(dir: &Path, file: &Path, to: &str, chunk: usize) -> std::process::Command {
    let mut c = logger_cmd(dir);
    c.args(["copy", "--from", &format!("sqlite://{}", file.display()), "--to", to, "--chunk-rows", &chunk.to_string()]);
    c.args(["--progress-secs", "0"]);
    c
}

async fn sqlite_rows(store: &SqliteStore, table: &str) -> Vec<Value> {
    store.rows_as_json(table, 0, i64::MAX).await.unwrap().into_iter().map(|(_, v)| normalise(v)).collect()
}

async fn pg_rows(db: &TestDb, table: &str) -> Vec<Value> {
    let rows = twitch_chat_logger::store::copy::pg_rows_as_json(&db.pool, table).await.unwrap();
    rows.into_iter().map(normalise).collect()
}

/// Every table's rows are the same on both sides, in the same order.
async fn assert_same(store: &SqliteStore, db: &TestDb) {
    let tables = store.tables().await.unwrap();
    assert_eq!(tables, ["chat_messages", "channel_notices", "dead_letters", "chat_events"], "every table is compared");
    for table in tables.iter().map(String::as_str) {
        let (a, b) = (sqlite_rows(store, table).await, pg_rows(db, table).await);
        assert_eq!(a.len(), b.len(), "{table}: row counts");
        assert!(!a.is_empty(), "{table} has rows to copy");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{table}");
        }
    }
}

#[tokio::test]
async fn a_copy_moves_every_row_unchanged_and_a_second_run_copies_nothing_again() {
    let (db, dir) = (TestDb::new().await, tempfile::tempdir().unwrap());
    let file = dir.path().join("chat.db");
    let store = fill(&file, 2500).await;

    let out = copy_cmd(dir.path(), &file, &db.url, 500).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_same(&store, &db).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 2500);
    assert!(err.contains("copy: chat_messages: 2500 rows copied, 0 already there"), "{err}");
    assert!(err.contains("copy: chat_messages: 500 / 2500 rows (20%)"), "progress lines: {err}");
    let password = url::Url::parse(&db.url).unwrap().password().unwrap().to_string();
    assert!(!err.contains(&format!(":{password}@")), "the password is never printed: {err}");

    let again = copy_cmd(dir.path(), &file, &db.url, 500).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("copy: done: 0 rows copied"), "{err}");
    assert_same(&store, &db).await;

    // New rows in the file since: only they are copied.
    let mut m = chat_message(5000, "later");
    m.sent_at = chrono::Utc::now();
    store.write(&Batch { messages: vec![m], ..Batch::default() }).await.unwrap();
    let third = copy_cmd(dir.path(), &file, &db.url, 500).output().unwrap();
    assert!(String::from_utf8_lossy(&third.stderr).contains("copy: chat_messages: 1 rows copied"));
    assert_same(&store, &db).await;
}

#[tokio::test]
async fn a_copy_killed_half_way_resumes_and_stores_every_row_once() {
    let (db, dir) = (TestDb::new().await, tempfile::tempdir().unwrap());
    let file = dir.path().join("chat.db");
    let store = fill(&file, 30_000).await;

    let mut first = Logger::spawn(copy_cmd(dir.path(), &file, &db.url, 100));
    let end = std::time::Instant::now() + 30 * SEC;
    loop {
        let n = count_in(&db.pool, "SELECT count(*) FROM chat_messages").await;
        if n >= 2000 {
            break;
        }
        assert!(std::time::Instant::now() < end, "copy too slow: {n}\n{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.signal("KILL");
    first.wait_exit(10 * SEC).await;
    let partial = db.count("SELECT count(*) FROM chat_messages").await;
    assert!(partial < 30_000, "killed before the end ({partial} copied)");

    let out = copy_cmd(dir.path(), &file, &db.url, 5000).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("copy: chat_messages: resuming after id"), "{err}");
    assert!(err.contains(&format!("copy: chat_messages: {} rows copied, 0 already there", 30_000 - partial)), "{err}");
    assert_same(&store, &db).await;
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 3, "dead letters once (the checkpoint)");
}

#[tokio::test]
async fn a_copy_from_something_that_is_not_the_loggers_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = copy_cmd(dir.path(), &dir.path().join("missing.db"), "postgres://u:secretpw@127.0.0.1:1/x", 10)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.db does not exist") && err.contains("sqlite://data/chat.db"), "{err}");
    let out = logger_cmd(dir.path())
        .args(["copy", "--from", "data/chat.db", "--to", "postgres://u:secretpw@h/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a SQLite URL") && !err.contains("secretpw"), "{err}");
    let out = logger_cmd(dir.path())
        .args(["copy", "--from", "sqlite://x.db", "--to", "mysql://u:secretpw@h/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--to: must start with postgres://") && !err.contains("secretpw"), "{err}");
}
