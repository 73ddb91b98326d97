//! The original logger's database, upgraded in place, and the same surface on every database:
//! fresh, the original's, and ours from before the surface migration. Real PostgreSQL.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use twitch_chat_logger::store::postgres::PgStore;
use twitch_chat_logger::store::{Batch, ChannelNotice, Store};

/// The original's columns, in its order.
const ORIGINAL_MESSAGE_COLUMNS: [&str; 14] = [
    "id",
    "message_id",
    "channel",
    "user_id",
    "username",
    "display_name",
    "text",
    "badges",
    "color",
    "is_mod",
    "is_subscriber",
    "bits",
    "sent_at",
    "received_at",
];
const ORIGINAL_NOTICE_COLUMNS: [&str; 7] = ["id", "channel", "msg_id", "message", "tags", "notice_at", "received_at"];

/// Rows as the original wrote them: NULLs where it allowed them, tags and notice times.
const ORIGINAL_ROWS: &str = r#"
INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at, received_at) VALUES
  ('0b9a1a52-0000-4000-8000-000000000001', 'chan', '1', 'olduser', 'OldUser', 'from the Go logger', '{"subscriber":"12"}', '#FF0000', false, true, 0, '2026-01-02 03:04:05.678+00', '2026-01-02 03:04:05.9+00'),
  ('0b9a1a52-0000-4000-8000-000000000002', 'chan', '2', 'other', NULL, 'cheer100 ünïcödé ✓', '{}', NULL, true, false, 100, '2026-01-02 03:04:06+00', '2026-01-02 03:04:06.1+00'),
  (NULL, 'other', NULL, NULL, NULL, 'a row with every nullable column NULL', NULL, NULL, NULL, NULL, NULL, NULL, '2026-01-02 03:04:07+00');
INSERT INTO channel_notices (channel, msg_id, message, tags, notice_at, received_at) VALUES
  ('chan', 'msg_banned', 'You are permanently banned from talking in chan.', '{"msg-id":"msg_banned"}', '2026-01-02 03:00:00+00', '2026-01-02 03:00:00.2+00'),
  ('*', NULL, 'Login authentication failed', '{}', NULL, '2026-01-02 03:00:01+00');
"#;

async fn rows(db: &TestDb, table: &str) -> Vec<Value> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT to_jsonb(t) FROM {table} t ORDER BY id")))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// A database made by the original's init.sql, holding rows.
async fn original_db() -> TestDb {
    let db = TestDb::new().await;
    sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&db.pool).await.unwrap();
    sqlx::raw_sql(ORIGINAL_ROWS).execute(&db.pool).await.unwrap();
    db
}

/// A database migrated by the logger as it was before the surface migration, holding rows.
async fn older_ours_db() -> TestDb {
    let db = TestDb::new().await;
    assert_eq!(db.migrate_before(20261130000000).await, 2);
    sqlx::raw_sql(
        "INSERT INTO chat_messages (message_id, channel, username, text, sent_at) VALUES ('ours-1', 'chan', 'u', 'ours', now());
         INSERT INTO channel_notices (channel, msg_id, message, received_at) VALUES ('chan', 'msg_x', 'ours', '2026-03-04 05:06:07+00');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db
}

async fn fresh_db() -> TestDb {
    let db = TestDb::new().await;
    migrate(&db).await;
    db
}

async fn migrate(db: &TestDb) {
    PgStore::new(db.pool.clone()).migrate().await.unwrap();
}

/// `twitch-chat-logger migrate` in env-only mode, as a user of the original would run it.
fn migrate_cmd(db: &TestDb, dir: &std::path::Path) -> Command {
    let mut c = logger_cmd(dir);
    // The default level; see the report on `twitch_chat_logger=debug` hiding our lines.
    c.env("RUST_LOG", "info");
    c.envs(db.postgres_env());
    c.env("TWITCH_USERNAME", "loggerbot").env("TWITCH_OAUTH_TOKEN", "tok").env("TWITCH_CHANNELS", "chan");
    c.arg("migrate");
    c
}

/// Runs to exit within 20 s (a retry loop fails the test instead of hanging it).
async fn run_to_exit(c: Command) -> (i32, String) {
    let mut logger = Logger::spawn(c);
    let code = logger.wait_exit(std::time::Duration::from_secs(20)).await;
    (code, logger.log_text())
}

fn project(row: &Value, keys: &[&str]) -> Value {
    Value::Object(keys.iter().map(|k| (k.to_string(), row[k].clone())).collect())
}

#[tokio::test]
async fn a_database_made_by_the_original_upgrades_in_place_with_every_row_kept() {
    let db = original_db().await;
    let (messages, notices) = (rows(&db, "chat_messages").await, rows(&db, "channel_notices").await);
    assert_eq!((messages.len(), notices.len()), (3, 2));

    let dir = tempfile::tempdir().unwrap();
    let (code, log) = run_to_exit(migrate_cmd(&db, dir.path())).await;
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("cannot drop columns"), "{log}");
    assert!(log.contains("upgrading a database made by the original logger"), "{log}");

    let (after_m, after_n) = (rows(&db, "chat_messages").await, rows(&db, "channel_notices").await);
    assert_eq!((after_m.len(), after_n.len()), (messages.len(), notices.len()));
    for (before, after) in messages.iter().zip(&after_m) {
        assert_eq!(project(after, &ORIGINAL_MESSAGE_COLUMNS), *before);
    }
    for (before, after) in notices.iter().zip(&after_n) {
        assert_eq!(project(after, &ORIGINAL_NOTICE_COLUMNS), *before);
        assert_eq!(after["notice_key"], Value::Null, "old rows have no key");
    }
    // The view shows every row (no LIMIT), the NULL sent_at last.
    let view: Vec<Value> =
        sqlx::query_scalar("SELECT to_jsonb(v) FROM v_last_messages v").fetch_all(&db.pool).await.unwrap();
    assert_eq!(view.len(), 3);
    assert_eq!(view[2]["sent_at"], Value::Null);

    // A second start changes nothing and says nothing about the view.
    let (code, log) = run_to_exit(migrate_cmd(&db, dir.path())).await;
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("upgrading a database made by the original"), "{log}");
    assert_eq!(rows(&db, "chat_messages").await, after_m);
}

#[tokio::test]
async fn rows_written_by_an_older_version_of_ours_are_kept_and_notices_get_their_time() {
    let db = older_ours_db().await;
    let before = rows(&db, "chat_messages").await;
    migrate(&db).await;
    let after = rows(&db, "chat_messages").await;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        // Every value kept; columns added later (badge_info) are NULL on old rows.
        for (key, value) in b.as_object().unwrap() {
            assert_eq!(&a[key], value, "{key}");
        }
        assert_eq!(a["badge_info"], Value::Null);
    }
    let (notice_at, tags): (chrono::DateTime<chrono::Utc>, Value) =
        sqlx::query_as("SELECT notice_at, tags FROM channel_notices").fetch_one(&db.pool).await.unwrap();
    assert_eq!(notice_at.to_rfc3339(), "2026-03-04T05:06:07+00:00");
    assert_eq!(tags, serde_json::json!({}));
}

/// Column names and types of a relation, in order.
async fn columns(db: &TestDb, rel: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(rel)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The plan of `sql` with sequential scans discouraged: which index serves the filter.
async fn plan(db: &TestDb, sql: &str) -> String {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.unwrap();
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"))).fetch_all(&mut *tx).await.unwrap();
    lines.join("\n")
}

/// Queries written against the original's schema: every column of both tables and the view,
/// a filter served by each of its indexes, and its INSERTs.
async fn run_the_originals_queries(db: &TestDb, label: &str) {
    let m = ORIGINAL_MESSAGE_COLUMNS.join(", ");
    let n = ORIGINAL_NOTICE_COLUMNS.join(", ");
    for sql in [
        r#"INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at) VALUES ('orig-q-1', 'qchan', '9', 'q', 'Q', 'written like the original', '{"vip":"1"}', '#00FF00', false, false, 0, now())"#.to_string(),
        r#"INSERT INTO channel_notices (channel, msg_id, message, tags, notice_at) VALUES ('qchan', 'msg_q', 'a notice', '{"msg-id":"msg_q"}', now())"#.to_string(),
        format!("SELECT {m} FROM chat_messages WHERE channel = 'qchan' AND sent_at > now() - interval '1 day' ORDER BY sent_at"),
        format!("SELECT {m} FROM v_last_messages LIMIT 50"),
        format!("SELECT {n} FROM channel_notices WHERE channel = 'qchan' ORDER BY notice_at DESC NULLS LAST, id DESC LIMIT 20"),
        "SELECT tags->>'msg-id' FROM channel_notices WHERE tags ? 'msg-id'".to_string(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}\n{sql}"));
    }
    let newest: Value =
        sqlx::query_scalar("SELECT to_jsonb(v) FROM v_last_messages v LIMIT 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(newest["message_id"], "orig-q-1", "{label}: the view is newest first");

    // The view: the original's columns first, in its order, and its definition without LIMIT.
    let view: Vec<String> = columns(db, "v_last_messages").await.into_iter().map(|c| c.0).collect();
    assert_eq!(view[..14], ORIGINAL_MESSAGE_COLUMNS.map(String::from), "{label}: {view:?}");
    let def: String =
        sqlx::query_scalar("SELECT pg_get_viewdef('v_last_messages'::regclass)").fetch_one(&db.pool).await.unwrap();
    assert!(def.contains("ORDER BY chat_messages.sent_at DESC NULLS LAST, chat_messages.id DESC"), "{label}: {def}");
    assert!(!def.to_uppercase().contains("LIMIT"), "{label}: {def}");

    let p =
        plan(db, "SELECT * FROM chat_messages WHERE channel = 'qchan' AND sent_at > now() - interval '1 day'").await;
    // Partitioned (fresh): each partition's copy of that index, named after its columns.
    assert!(
        p.contains("idx_chat_messages_channel_time") || (p.contains("_channel_sent_at_idx") && !p.contains("Seq Scan")),
        "{label}: {p}"
    );
    let p = plan(
        db,
        "SELECT * FROM channel_notices WHERE channel = 'qchan' ORDER BY notice_at DESC NULLS LAST, id DESC LIMIT 20",
    )
    .await;
    assert!(p.contains("idx_channel_notices_channel_time"), "{label}: {p}");
}

#[tokio::test]
async fn queries_written_for_the_original_run_unchanged_on_upgraded_fresh_and_older_databases() {
    let original = original_db().await;
    migrate(&original).await;
    let (fresh, older) = (fresh_db().await, older_ours_db().await);
    migrate(&older).await;
    for (db, label) in [(&original, "upgraded original"), (&fresh, "fresh"), (&older, "older of ours")] {
        run_the_originals_queries(db, label).await;
    }
    // One surface: the same columns and types, in the same order, on all three.
    for rel in ["chat_messages", "channel_notices", "v_last_messages"] {
        let want = columns(&fresh, rel).await;
        let fresh_names: Vec<&str> = want.iter().map(|c| c.0.as_str()).collect();
        let originals: &[&str] =
            if rel == "channel_notices" { &ORIGINAL_NOTICE_COLUMNS } else { &ORIGINAL_MESSAGE_COLUMNS };
        assert_eq!(fresh_names[..originals.len()], *originals, "{rel}: the original's columns first, in its order");
        for (db, label) in [(&original, "upgraded original"), (&older, "older of ours")] {
            let mut got = columns(db, rel).await;
            let mut want = want.clone();
            if rel == "channel_notices" && label == "older of ours" {
                // A table of ours holding rows gains tags/notice_at at the end.
                got.sort();
                want.sort();
            }
            assert_eq!(got, want, "{rel} on the {label} database");
        }
    }
}

fn notice(i: usize) -> ChannelNotice {
    let received_at = chrono::DateTime::from_timestamp_millis(1_780_000_000_000 + i as i64).unwrap();
    let mut n = ChannelNotice {
        channel: "chan".into(),
        msg_id: Some("msg_x".into()),
        message: format!("notice {i}"),
        received_at,
        tags: format!("{{\"msg-id\":\"msg_x\",\"n\":\"{i}\"}}"),
        notice_at: Some(received_at),
        key: String::new(),
        raw: None,
    };
    n.key = twitch_chat_logger::twitch::convert::notice_key(&n);
    n
}

#[tokio::test]
async fn a_notice_batch_whose_write_failed_commits_nothing_and_retried_is_stored_once() {
    let db = fresh_db().await;
    let store = PgStore::new(db.pool.clone());
    // Over 1,000 new rows: the direct COPY is tried first, then the ON CONFLICT path; one
    // transaction either way, notices included.
    let mut batch = Batch::default();
    for i in 0..1200 {
        batch.messages.push(chat_message(i, if i == 1100 { "poison" } else { "fine" }));
    }
    batch.notices = (0..30).map(notice).collect();
    sqlx::raw_sql("ALTER TABLE chat_messages ADD CONSTRAINT no_poison CHECK (text <> 'poison')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(store.write(&batch).await.is_err(), "one bad row fails the batch");
    assert_eq!(db.count("SELECT count(*) FROM channel_notices").await, 0, "nothing of it committed");
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0, "nothing of it committed");

    // Retried whole (the writer does so after any failure), and again as a spool replay would.
    sqlx::raw_sql("ALTER TABLE chat_messages DROP CONSTRAINT no_poison").execute(&db.pool).await.unwrap();
    let report = store.write(&batch).await.unwrap();
    assert_eq!((report.notices_inserted, report.messages_inserted), (30, 1200));
    let report = store.write(&batch).await.unwrap();
    assert_eq!((report.notices_inserted, report.messages_inserted, report.duplicates), (0, 0, 1200));
    assert_eq!(db.count("SELECT count(*) FROM channel_notices").await, 30);
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 1200);
    assert_eq!(db.count("SELECT count(DISTINCT notice_key) FROM channel_notices").await, 30);

    // What is stored: the tags as jsonb, the notice's time, the key.
    let (tags, key): (Value, String) =
        sqlx::query_as("SELECT tags, notice_key::text FROM channel_notices WHERE message = 'notice 7'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tags, serde_json::json!({"msg-id": "msg_x", "n": "7"}));
    assert_eq!(key, notice(7).key);
}

#[tokio::test]
async fn a_notice_spooled_by_an_older_version_is_still_stored() {
    let db = fresh_db().await;
    let store = PgStore::new(db.pool.clone());
    // A spool line as the previous version wrote it: no tags, notice_at or key.
    let line =
        r#"{"kind":"notice","channel":"chan","msg_id":"msg_old","message":"old","received_at":"2026-01-01T00:00:00Z"}"#;
    let twitch_chat_logger::store::Record::Notice(n) = serde_json::from_str(line).unwrap() else { panic!("a notice") };
    store.write(&Batch { notices: vec![n], ..Batch::default() }).await.unwrap();
    let (tags, at): (Value, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT tags, notice_at FROM channel_notices").fetch_one(&db.pool).await.unwrap();
    assert_eq!((tags, at.to_rfc3339()), (serde_json::json!({}), "2026-01-01T00:00:00+00:00".to_string()));
}

#[tokio::test]
async fn a_notice_from_twitch_is_stored_with_its_tags_its_time_and_a_key() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let mut c = logger_cmd(dir.path());
    c.env("RUST_LOG", "info").envs(db.postgres_env()).env("TWITCH_IRC_SERVER", fake.url());
    c.env("TWITCH_USERNAME", "loggerbot").env("TWITCH_OAUTH_TOKEN", "tok").env("TWITCH_CHANNELS", "chan");
    c.env("HTTP_LISTEN", "off");
    let mut logger = Logger::spawn(c);
    let sec = std::time::Duration::from_secs(1);
    fake.wait_for("joined", 10 * sec, |f| f.joined_by("loggerbot").contains("chan")).await;
    fake.to_channel(
        "chan",
        "@msg-id=msg_banned :tmi.twitch.tv NOTICE #chan :You are permanently banned from talking in chan.",
    );
    db.wait_count("SELECT count(*) FROM channel_notices", 1, 10 * sec).await;
    let (tags, same_time, has_key): (Value, bool, bool) = sqlx::query_as(
        "SELECT tags, notice_at = received_at, notice_key IS NOT NULL FROM channel_notices WHERE channel = 'chan'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tags, serde_json::json!({"msg-id": "msg_banned"}));
    assert!(same_time && has_key, "notice_at is the receive time (no tmi-sent-ts); the key is set");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(10 * sec).await, 0);
}
