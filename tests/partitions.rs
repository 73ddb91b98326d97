//! Time partitions on PostgreSQL (issue #15): new databases partitioned, partitions made ahead,
//! a default partition for any time, dedupe across accounts, retention dropping whole
//! partitions (live on reload), and `migrate --partition` of a database holding rows. Real
//! PostgreSQL, the fake Twitch server on loopback, the real binary.

mod common;

use chrono::{DateTime, Duration as Days, Utc};
use common::*;
use std::time::{Duration, Instant};
use twitch_chat_logger::config::PartitionInterval;
use twitch_chat_logger::store::postgres::PgStore;
use twitch_chat_logger::store::{pg_partition, Batch, ChatMessage, Store};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

async fn fresh() -> (TestDb, PgStore) {
    let db = TestDb::new().await;
    let store = PgStore::new(db.pool.clone());
    store.migrate().await.unwrap();
    (db, store)
}

fn message(id: &str, sent_at: DateTime<Utc>) -> ChatMessage {
    ChatMessage {
        message_id: id.into(),
        channel: "chan".into(),
        username: "u".into(),
        text: format!("text of {id}"),
        badges: "{}".into(),
        sent_at,
        received_at: Utc::now(),
        ..Default::default()
    }
}

fn batch(ms: Vec<ChatMessage>) -> Batch {
    Batch { messages: ms, ..Batch::default() }
}

async fn names(db: &TestDb, table: &str) -> Vec<String> {
    let mut conn = db.pool.acquire().await.unwrap();
    pg_partition::partitions(&mut conn, table).await.unwrap().into_iter().map(|p| p.name).collect()
}

fn day(offset: i64) -> String {
    (Utc::now() + Days::days(offset)).format("%Y%m%d").to_string()
}

#[tokio::test]
async fn a_fresh_database_is_partitioned_by_day_with_the_next_days_made_ahead_and_a_default() {
    let (db, store) = fresh().await;
    for (table, key) in [("chat_messages", "message_id"), ("chat_events", "event_key")] {
        let kind: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = $1::regclass")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(kind, "p", "{table}");
        let want: Vec<String> =
            (0..=3).map(|d| format!("{table}_p{}", day(d))).chain([format!("{table}_default")]).collect();
        assert_eq!(names(&db, table).await, want);
        let def: String = sqlx::query_scalar("SELECT pg_get_indexdef($1::regclass)")
            .bind(format!("{table}_{key}_key"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(def.ends_with(&format!("({key}, sent_at)")), "{def}");
    }
    assert_eq!(store.shape(), Some(pg_partition::Shape { messages: true, events: true }));
    // A second pass makes nothing; a month interval fills around the days that exist.
    assert!(store.keep_partitions_ahead().await.is_empty());
    store.set_partition_interval(PartitionInterval::Month);
    let made = store.keep_partitions_ahead().await;
    assert!(!made.is_empty(), "months after the days made ahead");
    let all = names(&db, "chat_messages").await;
    assert!(all.len() >= 5 + 3, "{all:?}");
}

#[tokio::test]
async fn bogus_timestamps_from_1970_and_2099_go_to_the_default_partition_once_each() {
    let (db, store) = fresh().await;
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let rows = vec![
        message("m-1970", at("1970-01-01T00:00:01Z")),
        message("m-2099", at("2099-12-31T23:59:59Z")),
        message("m-now", Utc::now()),
    ];
    assert_eq!(store.write(&batch(rows.clone())).await.unwrap().messages_inserted, 3);
    // The same rows again (another account, a retry, a spool replay): nothing new.
    let again = store.write(&batch(rows)).await.unwrap();
    assert_eq!((again.messages_inserted, again.duplicates), (0, 3));
    let placed: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, tableoid::regclass::text FROM chat_messages ORDER BY message_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        placed,
        [
            ("m-1970".to_string(), "chat_messages_default".to_string()),
            ("m-2099".to_string(), "chat_messages_default".to_string()),
            ("m-now".to_string(), format!("chat_messages_p{}", day(0))),
        ]
    );
}

#[tokio::test]
async fn a_partition_made_for_a_range_moves_the_rows_the_default_partition_held_for_it() {
    let (db, store) = fresh().await;
    // Rows for a day six days ahead (no partition yet): the default partition takes them.
    let later = Utc::now() + Days::days(6);
    store.write(&batch(vec![message("early-1", later), message("early-2", later)])).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM chat_messages_default").await, 2);
    // Its partition is made (here by hand, as the timer does when that day comes near).
    let (from, to) = pg_partition::interval_of(PartitionInterval::Day, later);
    let mut conn = db.pool.acquire().await.unwrap();
    let existing = pg_partition::partitions(&mut conn, "chat_messages").await.unwrap();
    drop(conn);
    assert!(existing.iter().all(|p| p.to.is_none_or(|t| t <= from)));
    let made = pg_partition::ensure_ahead(&db.pool, PartitionInterval::Day, later).await.unwrap();
    assert!(made.contains(&format!("chat_messages_p{}", from.format("%Y%m%d"))), "{made:?} {to}");
    assert_eq!(db.count("SELECT count(*) FROM chat_messages_default").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 2);
    // Still stored once.
    let again = store.write(&batch(vec![message("early-1", later)])).await.unwrap();
    assert_eq!(again.messages_inserted, 0);
}

/// Partitions for 2026-01-01 and 2026-01-02 holding 3 and 2 rows, and one old row in the
/// default partition, as a logger running since then would have.
async fn with_old_partitions(db: &TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE chat_messages_p20260101 PARTITION OF chat_messages FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-01-02 00:00:00+00');
         CREATE TABLE chat_messages_p20260102 PARTITION OF chat_messages FOR VALUES FROM ('2026-01-02 00:00:00+00') TO ('2026-01-03 00:00:00+00');
         INSERT INTO chat_messages (message_id, channel, username, text, sent_at)
         SELECT 'old-' || i, 'chan', 'u', 'old', '2026-01-01 12:00:00+00' FROM generate_series(1, 3) i;
         INSERT INTO chat_messages (message_id, channel, username, text, sent_at)
         SELECT 'older-' || i, 'chan', 'u', 'old', '2026-01-02 12:00:00+00' FROM generate_series(1, 2) i;
         INSERT INTO chat_messages (message_id, channel, username, text, sent_at) VALUES ('bogus', 'chan', 'u', 'old', '1970-01-01 00:00:00+00');
         INSERT INTO channel_notices (channel, message, notice_at, received_at) VALUES ('chan', 'old notice', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_wholly_older_than_the_cutoff() {
    let (db, store) = fresh().await;
    with_old_partitions(&db).await;
    store.write(&batch(vec![message("new-1", Utc::now())])).await.unwrap();
    // The cutoff falls inside 2026-01-02: only 2026-01-01 is wholly older.
    let cutoff = DateTime::parse_from_rfc3339("2026-01-02T18:00:00Z").unwrap().with_timezone(&Utc);
    let e = store.expire_before(cutoff).await.unwrap();
    assert_eq!(e.partitions, vec!["chat_messages_p20260101 (3 rows)".to_string()]);
    assert_eq!(e.tables, vec![("chat_messages", 4), ("channel_notices", 1)], "3 dropped + the 1970 row");
    let left = names(&db, "chat_messages").await;
    assert!(
        !left.contains(&"chat_messages_p20260101".to_string()) && left.contains(&"chat_messages_p20260102".to_string())
    );
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 3, "2 of 2026-01-02 and the new one");
    // Nothing more to do the second time.
    let e = store.expire_before(cutoff).await.unwrap();
    assert_eq!((e.total(), e.partitions.len()), (0, 0));
}

#[tokio::test]
async fn retention_on_an_unpartitioned_database_deletes_nothing_and_says_how_to_partition() {
    let db = TestDb::new().await;
    sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&db.pool).await.unwrap();
    sqlx::raw_sql("INSERT INTO chat_messages (message_id, channel, username, text, sent_at) VALUES ('o', 'chan', 'u', 't', '2020-01-01')")
        .execute(&db.pool)
        .await
        .unwrap();
    let store = PgStore::new(db.pool.clone());
    store.migrate().await.unwrap();
    assert_eq!(store.shape(), Some(pg_partition::Shape { messages: false, events: true }), "events was empty");
    let e = store.expire_before(Utc::now()).await.unwrap();
    assert_eq!(e.total(), 0);
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 1);
}

fn config(fake: &FakeTwitch, spool: &std::path::Path, accounts: &str, storage: &str) -> String {
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nspool_dir = \"{}\"\nflush_interval = \"100ms\"\n[reload]\nmode = \"poll\"\npoll_interval = \"200ms\"\n{storage}\n{accounts}\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        spool.display()
    )
}

const TWO_ACCOUNTS: &str = "[accounts.default]\n[accounts.bot]\nusername = \"loggerbot\"\noauth_token = \"oauth:abc\"\n[groups.bots]\naccounts = [\"bot\"]\nchannels = [\"chan\"]";

#[tokio::test]
async fn two_accounts_store_a_line_once_on_partitions_even_when_its_time_is_impossible() {
    let (db, fake, spool) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_dir, path) = config_dir(&config(&fake, spool.path(), TWO_ACCOUNTS, ""));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("both joined", 15 * SEC, |f| {
        f.joined_by(ANON).contains("chan") && f.joined_by("loggerbot").contains("chan")
    })
    .await;
    let good = privmsg("chan", "two-good", "Bob", "fine");
    // 2099 and 1970: beyond what can be true, so the receive time of the first copy is used.
    let line = |id: &str, ts: &str| {
        let l = privmsg("chan", id, "Bob", "bad clock");
        let old = l.split("tmi-sent-ts=").nth(1).unwrap().split(';').next().unwrap().to_string();
        l.replace(&format!("tmi-sent-ts={old}"), &format!("tmi-sent-ts={ts}"))
    };
    let (future, past) = (line("two-2099", "4102444800000"), line("two-1970", "1000"));
    for l in [&good, &future, &past] {
        assert_eq!(fake.to_channel("chan", l), 2, "both connections get it");
    }
    db.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
    // A copy much later (a reconnect replays nothing, but a slow account might): still once.
    tokio::time::sleep(SEC).await;
    for l in [&good, &future, &past] {
        fake.to_channel("chan", l);
    }
    fake.to_channel("chan", &privmsg("chan", "two-last", "Bob", "last"));
    db.wait_count("SELECT count(*) FROM chat_messages", 4, 10 * SEC).await;
    tokio::time::sleep(SEC / 2).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 4);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM chat_messages WHERE message_id IN ('{}', '{}') AND sent_at > now() - interval '1 minute' AND tableoid::regclass::text <> 'chat_messages_default'",
            msg_uuid("two-2099"),
            msg_uuid("two-1970")
        ))
        .await,
        2,
        "stored at the receive time, in today's partition"
    );
}

#[tokio::test]
async fn retention_set_by_a_reload_drops_the_old_partitions_logs_them_and_counts_them() {
    let (db, fake, spool) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    PgStore::new(db.pool.clone()).migrate().await.unwrap();
    with_old_partitions(&db).await;
    let (_dir, path) = config_dir(&config(&fake, spool.path(), "[accounts.default]", ""));
    let logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    tokio::time::sleep(SEC).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 6, "kept forever by default");

    std::fs::write(&path, config(&fake, spool.path(), "[accounts.default]", "[storage]\nretention = \"30d\"")).unwrap();
    logger.wait_log("dropped partitions", 15 * SEC).await;
    let line = logger.log_text().lines().find(|l| l.contains("dropped partitions")).unwrap().to_string();
    assert!(
        line.contains("chat_messages_p20260101 (3 rows)") && line.contains("chat_messages_p20260102 (2 rows)"),
        "{line}"
    );
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0);
    assert_eq!(names(&db, "chat_messages").await.len(), 5, "today, 3 ahead, default");
    let addr = http_addr(&logger).await;
    let (_, m) = get(&addr, "/metrics").await;
    assert!(m.contains("twitch_logger_dropped_partitions_total 2"), "{m}");
    assert!(m.contains("twitch_logger_expired_rows_total 7"), "5 in partitions, the 1970 row, a notice: {m}");
    fake.to_channel("chan", &privmsg("chan", "after", "Ann", "kept"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
}

// ---- migrate --partition ----

/// Every row as text, in id order: equal before and after means every row and value kept.
async fn checksum(db: &TestDb, table: &str) -> (i64, String) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY id), '')) FROM {table} t"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// The original's columns of every row, in id order (the upgrade adds columns of ours).
async fn original_sum(db: &TestDb) -> (i64, String) {
    let cols = "id, message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at, received_at";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), md5(COALESCE(string_agg(ROW({cols})::text, E'\\n' ORDER BY id), '')) FROM chat_messages"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// The original's database with `n` rows over the last `days` days, some with a NULL sent_at
/// and a NULL message_id, plus a view of someone's on the table.
async fn original_with_rows(n: i64, days: i64) -> TestDb {
    let db = TestDb::new().await;
    sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at, received_at)
         SELECT CASE WHEN i % 1000 = 7 THEN NULL ELSE 'orig-' || i END, 'ch' || (i % 5), (i % 97)::text, 'user' || (i % 97), NULL,
                'message ' || i, '{}', NULL, i % 2 = 0, NULL, i % 3,
                CASE WHEN i % 1000 = 3 THEN NULL ELSE now() - (($2::float8 * i / $1) || ' days')::interval END, now()
         FROM generate_series(1, $1) i",
    )
    .bind(n)
    .bind(days as f64)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE VIEW my_counts AS SELECT channel, count(*) AS n FROM chat_messages GROUP BY channel;
                   CREATE VIEW my_top AS SELECT * FROM my_counts ORDER BY n DESC LIMIT 1;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db
}

fn migrate_partition(db: &TestDb, dir: &std::path::Path, chunk: i64) -> std::process::Command {
    let mut c = logger_cmd(dir);
    c.env("RUST_LOG", "info");
    c.envs(db.postgres_env());
    c.env("TWITCH_USERNAME", "loggerbot").env("TWITCH_OAUTH_TOKEN", "tok").env("TWITCH_CHANNELS", "chan");
    c.args(["migrate", "--partition", "--chunk-rows", &chunk.to_string()]);
    c
}

#[tokio::test]
async fn migrate_partition_keeps_every_row_the_null_times_and_the_views_of_an_original_database() {
    let db = original_with_rows(20_000, 60).await;
    let before = original_sum(&db).await;
    let nulls = db.count("SELECT count(*) FROM chat_messages WHERE sent_at IS NULL").await;
    assert_eq!(nulls, 20);
    let dir = tempfile::tempdir().unwrap();
    let out = migrate_partition(&db, dir.path(), 3_000).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("chat_messages: partitioned: 20000 rows"), "{err}");
    assert!(err.contains("inserts paused"), "{err}");

    let kind: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'chat_messages'::regclass")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "p");
    assert_eq!(original_sum(&db).await, before, "every row, every value");
    assert_eq!(
        db.count("SELECT count(*) FROM chat_messages_default WHERE sent_at IS NULL").await,
        20,
        "NULL sent_at: default partition"
    );
    assert_eq!(db.count("SELECT count(*) FROM chat_messages WHERE message_id IS NULL").await, 20);
    // Their views survive, and the logger's.
    assert_eq!(db.count("SELECT sum(n)::bigint FROM my_counts").await, 20_000);
    assert_eq!(db.count("SELECT count(*) FROM my_top").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM (SELECT * FROM v_last_messages LIMIT 10) v").await, 10);
    // The original's queries and inserts, unchanged.
    sqlx::raw_sql(
        r#"INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at) VALUES ('orig-new', 'qchan', '9', 'q', 'Q', 'written like the original', '{"vip":"1"}', '#00FF00', false, false, 0, now());
           SELECT * FROM chat_messages WHERE channel = 'qchan' ORDER BY sent_at;"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let newest: String =
        sqlx::query_scalar("SELECT message_id FROM v_last_messages LIMIT 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(newest, "orig-new");
    // The logger writes to it at once (the store reads the new shape).
    let store = PgStore::new(db.pool.clone());
    assert_eq!(store.write(&batch(vec![message("after-swap", Utc::now())])).await.unwrap().messages_inserted, 1);
    // Run again: nothing to do.
    let out = migrate_partition(&db, dir.path(), 3_000).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("already partitioned"), "{err}");
}

#[tokio::test]
async fn migrate_partition_checksum_of_every_column_is_unchanged() {
    // Our own older database: every column, compared as a whole row.
    let (db, _) = fresh_unpartitioned().await;
    let before = checksum(&db, "chat_messages").await;
    let dir = tempfile::tempdir().unwrap();
    let out = migrate_partition(&db, dir.path(), 1_000).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(checksum(&db, "chat_messages").await, before);
    assert_eq!(before.0, 5_000);
}

/// A database of ours from before partitions, holding 5,000 rows (and a few events).
async fn fresh_unpartitioned() -> (TestDb, PgStore) {
    let db = TestDb::new().await;
    db.migrate_before(20261130000600).await;
    sqlx::raw_sql(
        "INSERT INTO chat_messages (message_id, channel, user_id, username, text, badges, sent_at, received_at, emotes, raw)
         SELECT 'ours-' || i, 'chan', '1', 'u', 'hello ' || i, '{\"subscriber\": 12}', now() - (i || ' minutes')::interval, now(), '25:0-4', 'raw ' || i
         FROM generate_series(1, 5000) i;
         INSERT INTO chat_events (event_key, kind, channel, sent_at) SELECT 'ev-' || i, 'clearchat', 'chan', now() FROM generate_series(1, 10) i;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let store = PgStore::new(db.pool.clone());
    (db, store)
}

#[tokio::test]
async fn migrate_partition_interrupted_half_way_resumes_and_keeps_every_row_once() {
    let db = original_with_rows(60_000, 10).await;
    // The upgrade's columns first (the command migrates, then partitions).
    PgStore::new(db.pool.clone()).migrate().await.unwrap();
    let before = original_sum(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = migrate_partition(&db, dir.path(), 500).spawn().unwrap();
    // Killed once some chunks are copied, before the swap.
    let started = Instant::now();
    loop {
        let copied: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN to_regclass('chat_messages_part') IS NULL THEN NULL ELSE (SELECT reltuples::bigint FROM pg_class WHERE oid = 'chat_messages'::regclass) END",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let in_part = if copied.is_some() { db.count("SELECT count(*) FROM chat_messages_part").await } else { 0 };
        if in_part >= 2_000 {
            break;
        }
        assert!(started.elapsed() < 60 * SEC, "never started copying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kind: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'chat_messages'::regclass")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "r", "not swapped yet");
    assert_eq!(original_sum(&db).await, before, "the table is as it was");
    let partial = db.count("SELECT count(*) FROM chat_messages_part").await;
    assert!(partial > 0 && partial < 60_000, "{partial}");

    let out = migrate_partition(&db, dir.path(), 5_000).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming an interrupted run after id"), "{err}");
    assert_eq!(original_sum(&db).await, before);
    assert_eq!(before.0, 60_000);
    assert_eq!(db.count("SELECT count(DISTINCT id) FROM chat_messages").await, 60_000, "each row once");
}

#[tokio::test]
async fn migrate_partition_while_a_writer_inserts_loses_nothing_and_pauses_it_briefly() {
    migrate_beside_a_writer(100_000).await;
}

/// The pause on a big table, for the README: `PAUSE_ROWS=5000000 ./scripts/test.sh --test
/// partitions -- --ignored --nocapture pause_on_a_big_table`.
#[tokio::test]
#[ignore]
async fn pause_on_a_big_table() {
    let rows = std::env::var("PAUSE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    migrate_beside_a_writer(rows).await;
}

/// `bulk` rows of realistic width (over the last 30 days), then `migrate --partition` while a
/// writer stores 50 rows every 10 ms, retrying a failed batch as the logger does.
async fn migrate_beside_a_writer(bulk: i64) {
    let (db, _) = fresh_unpartitioned().await;
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, display_name, text, badges, color, emotes, sent_at, received_at)
         SELECT md5(i::text)::uuid::text, 'chan' || (i % 500), '123456', (i % 50000)::text, 'viewer' || (i % 50000), 'Viewer' || (i % 50000),
                'Kappa that play was something else, gg ' || i, '{\"subscriber\": 12}', '#1E90FF', '25:0-4',
                now() - ((i % 2592000) || ' seconds')::interval, now()
         FROM generate_series(1, $1) i",
    )
    .bind(bulk)
    .execute(&db.pool)
    .await
    .unwrap();
    eprintln!("filled {bulk} rows in {:?}", t.elapsed());
    PgStore::new(db.pool.clone()).migrate().await.unwrap();
    let store = PgStore::new(db.pool.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let (mut written, mut worst, mut i) = (0u64, Duration::ZERO, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<ChatMessage> = (0..50).map(|k| message(&format!("live-{i}-{k}"), Utc::now())).collect();
                let t = Instant::now();
                // As the writer does: a failed batch is retried until stored.
                loop {
                    match store.write(&batch(rows.clone())).await {
                        Ok(r) => {
                            written += r.messages_inserted;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                worst = worst.max(t.elapsed());
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (written, worst, i * 50)
        }
    });
    tokio::time::sleep(SEC / 2).await;
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Off the runtime's thread: the writer task must go on meanwhile.
    let mut cmd = migrate_partition(&db, dir.path(), 20_000);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    eprintln!("migrate --partition took {:?}", t.elapsed());
    tokio::time::sleep(SEC / 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, worst, sent) = writer.await.unwrap();
    assert_eq!(written as usize, sent, "every live row stored once");
    assert_eq!(db.count("SELECT count(*) FROM chat_messages WHERE message_id LIKE 'live-%'").await as usize, sent);
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await as usize, 5_000 + bulk as usize + sent);
    eprintln!("live rows {sent}, longest write {worst:?}; {err}");
    assert!(worst < 5 * SEC, "a write waited {worst:?}");
}
