//! The three ways messages reach PostgreSQL (UNNEST, binary COPY through a staging table,
//! binary COPY straight into the table after the in-memory dedupe) store the same rows, and a
//! direct COPY that meets an id already stored loses and doubles nothing. Real PostgreSQL.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use twitch_chat_logger::store::postgres::PgStore;
use twitch_chat_logger::store::{Batch, ChatMessage, StoreError};

fn batch(ms: Vec<ChatMessage>) -> Batch {
    Batch { messages: ms, ..Batch::default() }
}

/// Rows whose `sent_at` follows from `i`: copies of one message carry one `tmi-sent-ts`, and a
/// partitioned table's unique key is `(message_id, sent_at)`.
fn plain(range: std::ops::Range<usize>) -> Vec<ChatMessage> {
    range.map(|i| at_fixed_time(i, &format!("m{i}"))).collect()
}

/// One time for the whole test binary, recent enough to land in a partition made ahead.
static START: std::sync::LazyLock<chrono::DateTime<Utc>> = std::sync::LazyLock::new(Utc::now);

fn at_fixed_time(i: usize, text: &str) -> ChatMessage {
    let mut m = chat_message(i, text);
    m.sent_at = *START - chrono::Duration::seconds(i as i64);
    m
}

/// Every column set, NULL where it may be, odd text: what each path must store alike.
fn full(i: usize) -> ChatMessage {
    let t = Utc.timestamp_opt(1_700_000_000 + i as i64, 123_456_000).unwrap();
    ChatMessage {
        message_id: format!("00000000-0000-4000-8000-{i:012}"),
        channel: "chan".into(),
        room_id: i.is_multiple_of(2).then(|| "123".into()),
        user_id: Some(format!("{}", 1000 + i)),
        username: "nia".into(),
        display_name: Some("Nïa 😀".into()),
        text: format!("héllo\t\"wörld\" \\ {i} 'quoted' ☃"),
        badges: r#"{"subscriber":12,"premium":1}"#.into(),
        badge_info: i.is_multiple_of(3).then(|| r#"{"subscriber":"14"}"#.into()),
        color: None,
        is_mod: i % 2 == 1,
        is_subscriber: true,
        bits: -7 + i as i32 * 1000,
        is_action: i.is_multiple_of(5),
        emotes: Some("25:0-4".into()),
        first_msg: if i.is_multiple_of(3) { None } else { Some(i % 3 == 1) },
        reply_parent_msg_id: None,
        reply_parent_user_login: Some("bob".into()),
        sent_at: t,
        received_at: t + chrono::Duration::microseconds(789),
        returning_chatter: Some(false),
        vip: None,
        source_room_id: Some("999".into()),
        source_id: None,
        raw: Some(format!("@id=x :nia PRIVMSG #chan :{i}")),
    }
}

const CONTENT: &str = "SELECT md5(string_agg(row(message_id, channel, room_id, user_id, username, display_name,
    text, badges, color, is_mod, is_subscriber, bits, is_action, emotes, first_msg, reply_parent_msg_id,
    reply_parent_user_login, sent_at, received_at, badge_info, returning_chatter, vip, source_room_id,
    source_id, raw)::text, '|' ORDER BY message_id)) FROM chat_messages";

async fn fresh() -> (TestDb, PgStore) {
    let db = TestDb::new().await;
    let store = PgStore::new(db.pool.clone());
    store.migrate().await.unwrap();
    (db, store)
}

async fn content(db: &TestDb) -> String {
    sqlx::query_scalar(CONTENT).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn unnest_staged_copy_and_direct_copy_store_the_same_content() {
    let rows: Vec<ChatMessage> = (0..40).map(full).collect();
    let mut sums = Vec::new();
    for (name, direct, staged_from) in
        [("unnest", false, usize::MAX), ("staged copy", false, 0), ("direct copy", true, usize::MAX)]
    {
        let (db, store) = fresh().await;
        let store = store.with_direct_copy(direct).with_staged_from(staged_from);
        let r = store.write_one(&batch(rows.clone())).await.unwrap();
        assert_eq!((r.messages_inserted, r.duplicates), (40, 0), "{name}");
        sums.push((name, content(&db).await));
    }
    assert_eq!(sums[0].1, sums[1].1, "{sums:?}");
    assert_eq!(sums[0].1, sums[2].1, "{sums:?}");
}

#[tokio::test]
async fn a_direct_copy_that_meets_an_id_another_logger_stored_is_written_once_on_the_safe_path() {
    let (db, first) = fresh().await;
    first.write_one(&batch(plain(0..100))).await.unwrap();
    // Another logger (or this one after a restart): its recent-id set knows nothing.
    let second = PgStore::new(db.pool.clone()).with_direct_copy(true);
    let r = second.write_one(&batch(plain(50..150))).await.unwrap();
    assert_eq!((r.messages_inserted, r.duplicates), (50, 50));
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 150);
    assert_eq!(db.count("SELECT count(DISTINCT message_id) FROM chat_messages").await, 150);
    // The next live batch, all new, goes in as well (back on the fast path after a clean write).
    for k in 0..3 {
        let r = second.write_one(&batch(plain(150 + k * 10..160 + k * 10))).await.unwrap();
        assert_eq!((r.messages_inserted, r.duplicates), (10, 0));
    }
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 180);
}

#[tokio::test]
async fn duplicates_of_live_traffic_are_dropped_before_the_database_and_counted() {
    let (db, store) = fresh().await;
    let store = store.with_direct_copy(true);
    // Two accounts on one channel: each message twice, in one batch and across batches.
    let mut ms = plain(0..50);
    ms.extend(plain(0..50));
    let r = store.write_one(&batch(ms)).await.unwrap();
    assert_eq!((r.messages_inserted, r.duplicates), (50, 50));
    let r = store.write_one(&batch(plain(25..75))).await.unwrap();
    assert_eq!((r.messages_inserted, r.duplicates), (25, 25));
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 75);
}

#[tokio::test]
async fn a_retried_batch_that_had_committed_is_stored_once_on_every_path() {
    for (direct, staged_from) in [(true, usize::MAX), (false, 0), (false, usize::MAX)] {
        let (db, store) = fresh().await;
        let store = store.with_direct_copy(direct).with_staged_from(staged_from);
        store.write_one(&batch(plain(0..20))).await.unwrap();
        // A store that lost the commit's answer (its memory knows nothing): the same batch again.
        let again = PgStore::new(db.pool.clone()).with_direct_copy(direct).with_staged_from(staged_from);
        let r = again.write_one(&batch(plain(0..20))).await.unwrap();
        assert_eq!((r.messages_inserted, r.duplicates), (0, 20), "direct {direct} staged_from {staged_from}");
        assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 20);
    }
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_the_batch_on_every_path_and_later_batches_still_go_in() {
    for (direct, staged_from) in [(true, usize::MAX), (false, 0), (false, usize::MAX)] {
        let (db, store) = fresh().await;
        let store = store.with_direct_copy(direct).with_staged_from(staged_from);
        sqlx::raw_sql("ALTER TABLE chat_messages ADD CONSTRAINT no_poison CHECK (text <> 'poison')")
            .execute(&db.pool)
            .await
            .unwrap();
        let mut ms = plain(0..10);
        ms.push(chat_message(10, "poison"));
        let e = store.write_one(&batch(ms)).await.unwrap_err();
        assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
        assert!(e.one_line().contains("23514"), "{}", e.one_line());
        assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0, "nothing of the refused batch");
        let r = store.write_one(&batch(plain(0..10))).await.unwrap();
        assert_eq!(r.messages_inserted, 10);
    }
}

#[tokio::test]
async fn a_table_whose_types_do_not_take_the_binary_copy_still_gets_every_row() {
    let (db, store) = fresh().await;
    let store = store.with_direct_copy(true).with_staged_from(0);
    // The types are right at the first write (direct COPY is checked and used) …
    store.write_one(&batch(vec![full(100)])).await.unwrap();
    // … then a careless edit (or another tool) changes one while the logger runs.
    sqlx::raw_sql(
        "DROP VIEW IF EXISTS v_last_messages CASCADE;
         ALTER TABLE chat_messages ALTER COLUMN bits TYPE bigint",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for k in 0..3 {
        let r = store.write_one(&batch((k * 10..k * 10 + 10).map(full).collect())).await.unwrap();
        assert_eq!(r.messages_inserted, 10);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM chat_messages WHERE message_id <> '00000000-0000-4000-8000-000000000100'").await,
        30
    );
    let want = (0..30).map(|i| -7 + i * 1000).sum::<i64>();
    assert_eq!(db.count("SELECT sum(bits)::bigint FROM chat_messages WHERE bits < 99000").await, want);
    // A store started on such a table checks the types first and never tries the COPY.
    let later = PgStore::new(db.pool.clone()).with_direct_copy(true);
    let r = later.write_one(&batch((30..40).map(full).collect())).await.unwrap();
    assert_eq!(r.messages_inserted, 10);
}

#[tokio::test]
async fn by_default_small_batches_go_by_unnest_and_large_live_ones_by_direct_copy() {
    let (db, store) = fresh().await;
    // Which statement inserted: the top-level query's first word, per statement.
    sqlx::raw_sql(
        "CREATE TABLE how (verb text);
         CREATE FUNCTION note_how() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO how VALUES (upper(split_part(btrim(current_query(), E' \n'), ' ', 1))); RETURN NULL; END $$;
         CREATE TRIGGER note_how AFTER INSERT ON chat_messages FOR EACH STATEMENT EXECUTE FUNCTION note_how();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let verbs = || async { sqlx::query_scalar::<_, String>("SELECT verb FROM how").fetch_all(&db.pool).await.unwrap() };
    store.write_one(&batch(plain(0..999))).await.unwrap();
    assert_eq!(verbs().await, ["INSERT"], "999 rows: UNNEST");
    let r = store.write_one(&batch(plain(999..2999))).await.unwrap();
    assert_eq!(r.messages_inserted, 2000);
    assert_eq!(verbs().await, ["INSERT", "COPY"], "1,000 new rows or more: COPY straight in");
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 2999);
}

/// A database of ours from before partitions: `chat_messages` keeps its one-column unique key
/// (the partitioning migration leaves a table that holds a row alone).
async fn fresh_unpartitioned() -> (TestDb, PgStore) {
    let db = TestDb::new().await;
    db.migrate_before(20261130000600).await;
    sqlx::query("INSERT INTO chat_messages (message_id, channel, username, text, sent_at) VALUES ('old', 'x', 'x', 'x', '2000-01-01')")
        .execute(&db.pool)
        .await
        .unwrap();
    let store = PgStore::new(db.pool.clone());
    store.migrate().await.unwrap();
    (db, store)
}

/// Rows 0..n, every third sent in 1970 and every third in 2099 (outside any partition made
/// ahead: the default partition takes them).
fn odd_times(range: std::ops::Range<usize>) -> Vec<ChatMessage> {
    range
        .map(|i| {
            let mut m = at_fixed_time(i, &format!("m{i}"));
            match i % 3 {
                0 => m.sent_at = Utc.timestamp_opt(1, 0).unwrap(),
                1 => m.sent_at = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap(),
                _ => {}
            }
            m
        })
        .collect()
}

#[tokio::test]
async fn every_path_stores_each_message_once_on_partitioned_and_unpartitioned_tables_even_with_bogus_times() {
    for partitioned in [true, false] {
        for (direct, staged_from) in [(true, usize::MAX), (false, 0), (false, usize::MAX)] {
            let (db, store) = if partitioned { fresh().await } else { fresh_unpartitioned().await };
            let is_partitioned: bool =
                sqlx::query_scalar("SELECT relkind = 'p' FROM pg_class WHERE oid = 'chat_messages'::regclass")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(is_partitioned, partitioned);
            let already = db.count("SELECT count(*) FROM chat_messages").await;
            let how = format!("partitioned {partitioned} direct {direct} staged_from {staged_from}");
            let store = store.with_direct_copy(direct).with_staged_from(staged_from);
            let r = store.write_one(&batch(odd_times(0..60))).await.unwrap();
            assert_eq!((r.messages_inserted, r.duplicates), (60, 0), "{how}");
            // A restarted logger (empty recent-id set) gets half of them again, plus new ones.
            let again = PgStore::new(db.pool.clone()).with_direct_copy(direct).with_staged_from(staged_from);
            let r = again.write_one(&batch(odd_times(30..90))).await.unwrap();
            assert_eq!((r.messages_inserted, r.duplicates), (30, 30), "{how}");
            assert_eq!(db.count("SELECT count(*) FROM chat_messages").await - already, 90, "{how}");
            assert_eq!(db.count("SELECT count(DISTINCT message_id) FROM chat_messages").await - already, 90, "{how}");
            assert_eq!(
                db.count("SELECT count(*) FROM chat_messages WHERE sent_at < '1971-01-01' OR sent_at >= '2099-01-01'")
                    .await,
                60,
                "{how}: the bogus times are kept as sent"
            );
        }
    }
}

/// Text a chatter controls, which PostgreSQL's text type refuses (a NUL) or that is unusually
/// large, on every path: refused rows are the rows' fault (`Rejected`: split, dead-lettered),
/// never a database outage (`Unavailable` would retry and spool them for ever).
#[tokio::test]
async fn hostile_text_is_refused_as_the_rows_fault_on_every_path_and_the_rest_go_in() {
    for (direct, staged_from) in [(true, usize::MAX), (false, 0), (false, usize::MAX)] {
        let how = format!("direct {direct} staged_from {staged_from}");
        let (db, store) = fresh().await;
        let store = store.with_direct_copy(direct).with_staged_from(staged_from);
        let mut ms = plain(0..20);
        ms.push(at_fixed_time(20, "before\0after"));
        let e = store.write_one(&batch(ms)).await.unwrap_err();
        assert!(matches!(e, StoreError::Rejected(_)), "{how}: {e:?}");
        assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0, "{how}");
        // Large but valid: 400 KB of multi-byte text in one message, stored whole.
        let big = "é😀".repeat(70_000);
        let mut ms = plain(0..20);
        ms.push(at_fixed_time(21, &big));
        let r = store.write_one(&batch(ms)).await.unwrap();
        assert_eq!(r.messages_inserted, 21, "{how}");
        let len: i32 = sqlx::query_scalar("SELECT char_length(text) FROM chat_messages WHERE text LIKE 'é😀%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(len, 140_000, "{how}");
    }
}
