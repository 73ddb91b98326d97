//! Env-only mode: the original Go logger's variables, tables and behaviour, without its ways
//! of losing data. Real PostgreSQL, fake Twitch on loopback, the real binary.

mod common;

use common::*;
use sqlx::Row;
use std::process::Command;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

fn env_only(db: &TestDb, fake: &FakeTwitch, dir: &std::path::Path, channels: &str, token: &str) -> Command {
    let mut c = logger_cmd(dir);
    c.envs(db.postgres_env());
    c.env("TWITCH_USERNAME", "loggerbot");
    c.env("TWITCH_OAUTH_TOKEN", token);
    c.env("TWITCH_CHANNELS", channels);
    c.env("TWITCH_IRC_SERVER", fake.url());
    c
}

#[tokio::test]
async fn real_twitch_lines_fill_every_column_like_the_original() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let _logger = Logger::spawn(env_only(&db, &fake, dir.path(), " #PajLada, retoon,pajlada ", "oauth:abc123"));
    fake.wait_for("joined both channels", 10 * SEC, |f| f.joined_by("loggerbot").len() == 2).await;

    for kind in [
        "PRIVMSG plain",
        "PRIVMSG bits/cheer",
        "PRIVMSG emotes + moderator/subscriber badges",
        "PRIVMSG non-ASCII display-name",
    ] {
        assert_eq!(fake.to_channel("pajlada", &sample(kind)), 1);
    }
    fake.to_channel("retoon", &sample("PRIVMSG reply-parent tags + first-msg/returning-chatter"));
    fake.to_channel("pajlada", "@badge-info=;badges=broadcaster/1;color=;display-name=pajlada;emotes=;id=00000000-0000-4000-8000-000000000e01;mod=0;room-id=11148817;subscriber=0;tmi-sent-ts=1594545155039;user-id=11148817;user-type= :pajlada!pajlada@pajlada.tmi.twitch.tv PRIVMSG #pajlada :\u{1}ACTION waves\u{1}");
    db.wait_count("SELECT count(*) FROM chat_messages", 6, 10 * SEC).await;

    let row = sqlx::query("SELECT channel, user_id, username, display_name, text, badges::text, color, is_mod, is_subscriber, bits, sent_at, room_id, is_action FROM chat_messages WHERE message_id = 'e9d998c3-36f1-430f-89ec-6b887c28af36'")
        .fetch_one(&db.pool).await.unwrap();
    assert_eq!(row.get::<String, _>("channel"), "pajlada");
    assert_eq!(row.get::<String, _>("user_id"), "29803735");
    assert_eq!(row.get::<String, _>("username"), "jun1orrrr");
    assert_eq!(row.get::<String, _>("display_name"), "JuN1oRRRR");
    assert_eq!(row.get::<String, _>("text"), "dank cam");
    assert_eq!(row.get::<String, _>("badges"), "{}");
    assert_eq!(row.get::<String, _>("color"), "#0000FF");
    assert!(!row.get::<bool, _>("is_mod") && !row.get::<bool, _>("is_subscriber"));
    assert_eq!(row.get::<i32, _>("bits"), 0);
    assert_eq!(row.get::<chrono::DateTime<chrono::Utc>, _>("sent_at").timestamp_millis(), 1594545155039);
    assert_eq!(row.get::<String, _>("room_id"), "11148817");
    assert!(!row.get::<bool, _>("is_action"));

    let cheer = sqlx::query(
        "SELECT bits, badges::text FROM chat_messages WHERE message_id = 'd7f03a35-f339-41ca-b4d4-7c0721438570'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(cheer.get::<i32, _>("bits"), 1);
    assert_eq!(cheer.get::<String, _>("badges"), r#"{"bits": 100}"#);

    let m = sqlx::query("SELECT is_mod, is_subscriber, badges->>'subscriber' AS sub, badge_info::text AS info, emotes FROM chat_messages WHERE message_id = 'f9c5774b-faa7-4378-b1af-c4e08b532dc2'").fetch_one(&db.pool).await.unwrap();
    assert!(m.get::<bool, _>("is_mod") && m.get::<bool, _>("is_subscriber"));
    assert_eq!(m.get::<String, _>("sub"), "12", "the badge's version");
    assert_eq!(m.get::<String, _>("info"), r#"{"subscriber": 22}"#, "the real tenure, from badge-info");
    let no_info: Option<String> = sqlx::query_scalar(
        "SELECT badge_info::text FROM chat_messages WHERE message_id = 'd7f03a35-f339-41ca-b4d4-7c0721438570'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(no_info, None, "an empty badge-info is NULL");
    assert!(m.get::<String, _>("emotes").starts_with("1902:6-10"));

    let uni = sqlx::query(
        "SELECT display_name, username FROM chat_messages WHERE message_id = 'bdfa278e-11c4-484f-9491-0a61b16fab60'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(uni.get::<String, _>("display_name"), "테스트계정420");
    assert_eq!(uni.get::<String, _>("username"), "testaccount_420");

    let reply = sqlx::query("SELECT channel, reply_parent_msg_id, reply_parent_user_login, first_msg, color FROM chat_messages WHERE message_id = '5b4f63a9-776f-4fce-bf3c-d9707f52e32d'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(reply.get::<String, _>("channel"), "retoon");
    assert_eq!(reply.get::<String, _>("reply_parent_msg_id"), "6b13e51b-7ecb-43b5-ba5b-2bb5288df696");
    assert_eq!(reply.get::<String, _>("reply_parent_user_login"), "retoon");
    assert_eq!(reply.get::<Option<bool>, _>("first_msg"), Some(false));
    assert_eq!(reply.get::<Option<String>, _>("color"), None, "an empty color tag is NULL");

    let me = sqlx::query(
        "SELECT text, is_action, is_mod FROM chat_messages WHERE message_id = '00000000-0000-4000-8000-000000000e01'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(me.get::<String, _>("text"), "waves");
    assert!(me.get::<bool, _>("is_action"));
    assert!(me.get::<bool, _>("is_mod"), "the broadcaster counts as a moderator");

    // The original's view still answers.
    assert_eq!(db.count("SELECT count(*) FROM v_last_messages").await, 6);
}

#[tokio::test]
async fn received_at_is_when_the_line_was_read_not_when_it_was_flushed() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let _logger = Logger::spawn(env_only(&db, &fake, dir.path(), "chan", "tok"));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
    let sent = chrono::Utc::now();
    let t0 = Instant::now();
    fake.to_channel("chan", &privmsg("chan", "r-1", "Alice", "hello"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    let stored_after = t0.elapsed();
    let received: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT received_at FROM chat_messages").fetch_one(&db.pool).await.unwrap();
    let lag = (received - sent).num_milliseconds();
    // The default flush interval (1.5 s) delays the row; received_at must not.
    assert!(stored_after >= Duration::from_millis(1200), "flushed too early: {stored_after:?}");
    assert!((-50..500).contains(&lag), "received_at is {lag} ms after the send");
}

#[tokio::test]
async fn a_message_seen_twice_is_stored_once_and_notices_are_stored() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let _logger = Logger::spawn(env_only(&db, &fake, dir.path(), "forsen", "tok"));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("loggerbot").contains("forsen")).await;
    let line = privmsg("forsen", "dup-1", "Bob", "same message");
    fake.to_channel("forsen", &line);
    fake.to_channel("forsen", &line);
    fake.to_channel("forsen", &sample("NOTICE msg_banned"));
    db.wait_count("SELECT count(*) FROM channel_notices", 1, 10 * SEC).await;
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    // The same id again, in a later batch.
    tokio::time::sleep(2 * SEC).await;
    fake.to_channel("forsen", &line);
    fake.to_channel("forsen", &privmsg("forsen", "dup-2", "Bob", "new"));
    db.wait_count("SELECT count(*) FROM chat_messages", 2, 10 * SEC).await;
    let n = sqlx::query("SELECT channel, msg_id, message FROM channel_notices").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n.get::<String, _>("channel"), "forsen");
    assert_eq!(n.get::<String, _>("msg_id"), "msg_banned");
    assert_eq!(n.get::<String, _>("message"), "You are permanently banned from talking in forsen.");
}

#[tokio::test]
async fn batches_flush_by_size_and_sigterm_writes_what_waits_then_exits_zero() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    // A long flush interval: without the size trigger and the shutdown flush nothing would be stored.
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nmax_rows = 5\nflush_interval = \"10m\"\ndurable_within = \"20m\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    let mut logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("justinfan12345").contains("chan")).await;
    // Four rows: the room state the JOIN brought and three messages, below max_rows, so they
    // wait for the (10 minute) timer.
    for i in 0..3 {
        fake.to_channel("chan", &privmsg("chan", &format!("s-{i}"), "Carol", &format!("msg {i}")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0, "flushed before max_rows or the interval");
    // The fifth row reaches max_rows: one transaction with all five.
    fake.to_channel("chan", &privmsg("chan", "s-3", "Carol", "msg 3"));
    db.wait_count("SELECT count(*) FROM chat_messages", 4, 5 * SEC).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_events").await, 1);
    assert_eq!(
        db.count("SELECT count(DISTINCT x) FROM (SELECT xmin::text AS x FROM chat_messages UNION ALL SELECT xmin::text FROM chat_events) t").await,
        1,
        "one transaction per batch"
    );
    // Two more wait; SIGTERM writes them.
    for i in 4..6 {
        fake.to_channel("chan", &privmsg("chan", &format!("s-{i}"), "Carol", &format!("msg {i}")));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 4);
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(10 * SEC).await, 0);
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 6);
}

#[tokio::test]
async fn a_quiet_channel_is_flushed_by_time() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nmax_rows = 1000\nflush_interval = \"200ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("justinfan12345").contains("chan")).await;
    let t0 = Instant::now();
    for i in 0..3 {
        fake.to_channel("chan", &privmsg("chan", &format!("t-{i}"), "Dan", "hi"));
    }
    db.wait_count("SELECT count(*) FROM chat_messages", 3, 5 * SEC).await;
    assert!(t0.elapsed() < Duration::from_millis(1500), "3 rows took {:?} with a 200ms interval", t0.elapsed());
    assert_eq!(db.count("SELECT count(DISTINCT xmin::text) FROM chat_messages").await, 1);
}

#[tokio::test]
async fn reconnects_after_reconnect_command_and_dropped_connection() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let _logger = Logger::spawn(env_only(&db, &fake, dir.path(), "chan", "tok"));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
    fake.to_channel("chan", &privmsg("chan", "c-1", "Eve", "before"));

    fake.to_nick("loggerbot", &sample("RECONNECT"));
    fake.wait_for("second connection joined", 15 * SEC, |f| {
        f.conns().iter().filter(|c| c.nick.as_deref() == Some("loggerbot")).count() >= 2
            && f.joined_by("loggerbot").contains("chan")
    })
    .await;
    fake.to_channel("chan", &privmsg("chan", "c-2", "Eve", "after reconnect"));

    fake.drop_nick("loggerbot");
    fake.wait_for("third connection joined", 15 * SEC, |f| {
        f.conns().iter().filter(|c| c.nick.as_deref() == Some("loggerbot")).count() >= 3
            && f.joined_by("loggerbot").contains("chan")
    })
    .await;
    fake.to_channel("chan", &privmsg("chan", "c-3", "Eve", "after drop"));
    db.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
}

#[tokio::test]
async fn a_rejected_login_stops_with_one_clear_error_and_a_nonzero_exit() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    fake.reject_token("badtoken");
    let mut logger = Logger::spawn(env_only(&db, &fake, dir.path(), "chan", "oauth:badtoken"));
    let code = logger.wait_exit(15 * SEC).await;
    assert_ne!(code, 0);
    let log = logger.log_text();
    let errors: Vec<_> = log.lines().filter(|l| l.contains("rejected the login")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("default") && errors[0].contains("loggerbot"), "{}", errors[0]);
    assert!(fake.conns().len() <= 2, "kept reconnecting: {} connections", fake.conns().len());
    assert!(!log.contains("badtoken"));
}

#[tokio::test]
async fn the_token_is_sent_with_exactly_one_oauth_prefix_and_never_logged() {
    for token in ["oauth:sekrittoken123", "sekrittoken123"] {
        let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
        let mut cmd = env_only(&db, &fake, dir.path(), "chan", token);
        cmd.env("RUST_LOG", "trace");
        let mut logger = Logger::spawn(cmd);
        fake.wait_for("joined", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
        fake.to_channel("chan", &privmsg("chan", "tok-1", "Zed", "hi"));
        db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
        logger.signal("TERM");
        assert_eq!(logger.wait_exit(10 * SEC).await, 0);
        assert_eq!(fake.conns()[0].pass.as_deref(), Some("oauth:sekrittoken123"));
        let log = logger.log_text();
        assert!(log.lines().count() > 20, "trace logging was on");
        assert!(!log.contains("sekrittoken123"), "token leaked into the log");
    }
}

#[tokio::test]
async fn joins_are_paced_per_account() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let channels: Vec<String> = (0..12).map(|i| format!("\"pace{i}\"")).collect();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[accounts.default]\njoin_rate = \"5/1s\"\n[groups.default]\naccounts = [\"default\"]\nchannels = [{}]\n",
        fake.url(),
        channels.join(",")
    ));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("all 12 joined", 15 * SEC, |f| f.joined_by("justinfan12345").len() == 12).await;
    let joins = fake.join_lines("justinfan12345");
    assert_eq!(joins.len(), 12);
    for (i, (t, _)) in joins.iter().enumerate() {
        let in_window = joins[i..].iter().filter(|(u, _)| u.duration_since(*t) < Duration::from_millis(950)).count();
        assert!(in_window <= 5, "{in_window} JOINs within one second starting at JOIN #{i}");
    }
    let span = joins.last().unwrap().0.duration_since(joins[0].0);
    assert!(span >= Duration::from_millis(1900), "12 JOINs at 5/s went out in {span:?}");
}

#[tokio::test]
async fn a_suspended_channel_is_reported_once_and_the_others_still_log() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    fake.suspend("gone");
    let logger = Logger::spawn(env_only(&db, &fake, dir.path(), "gone,chan", "tok"));
    fake.wait_for("joined chan", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
    logger.wait_log("cannot join #gone", 5 * SEC).await;
    fake.to_channel("chan", &privmsg("chan", "s-1", "Fay", "still here"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    // Past the unconfirmed-JOIN check too: still one report.
    tokio::time::sleep(12 * SEC).await;
    assert!(!logger.log_text().contains("#gone is still not joined"));
    let joins_of_gone = fake.join_lines("loggerbot").iter().filter(|(_, l)| l == "JOIN #gone").count();
    assert_eq!(joins_of_gone, 1, "retried the suspended channel");
    assert_eq!(logger.log_text().matches("cannot join #gone").count(), 1);
}

#[tokio::test]
async fn a_channel_twitch_never_confirms_is_reported_once() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    fake.ghost("nosuchchannel");
    let logger = Logger::spawn(env_only(&db, &fake, dir.path(), "nosuchchannel,chan", "tok"));
    fake.wait_for("joined chan", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
    logger.wait_log("#nosuchchannel is still not joined", 20 * SEC).await;
    tokio::time::sleep(3 * SEC).await;
    assert_eq!(logger.log_text().matches("#nosuchchannel is still not joined").count(), 1);
    assert!(!logger.log_text().contains("#chan is still not joined"));
    let joins = fake.join_lines("loggerbot").iter().filter(|(_, l)| l == "JOIN #nosuchchannel").count();
    assert_eq!(joins, 1, "not retried in a loop");
}

#[tokio::test]
async fn a_missing_or_malformed_variable_stops_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = logger_cmd(dir.path());
    cmd.env("TWITCH_USERNAME", "bot").env("TWITCH_OAUTH_TOKEN", "sekrit999").env("TWITCH_CHANNELS", "a,b");
    cmd.env("POSTGRES_HOST", "127.0.0.1")
        .env("POSTGRES_PORT", "5432")
        .env("POSTGRES_DB", "x")
        .env("POSTGRES_USER", "u");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POSTGRES_PASSWORD"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("POSTGRES_")).count(), 1, "{err}");

    let mut cmd = logger_cmd(dir.path());
    cmd.env("TWITCH_USERNAME", "bot").env("TWITCH_OAUTH_TOKEN", "sekrit999").env("TWITCH_CHANNELS", "good, bad-name");
    cmd.env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/x").env("POSTGRES_PORT", "54x32");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("bad-name") && err.contains("POSTGRES_PORT") && err.contains("54x32"), "{err}");
    assert!(!err.contains("sekrit999"));
}

#[tokio::test]
async fn a_password_with_url_special_characters_works() {
    let db = TestDb::new().await;
    let password = "p@ss/w:rd%20#?";
    let role = format!("r{}", db.name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("GRANT ALL ON DATABASE {} TO {role}", db.name)))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("GRANT ALL ON SCHEMA public TO {role}"))).execute(&db.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = logger_cmd(dir.path());
    cmd.envs(db.postgres_env());
    cmd.env("POSTGRES_USER", &role).env("POSTGRES_PASSWORD", password);
    cmd.env("TWITCH_USERNAME", "bot").env("TWITCH_OAUTH_TOKEN", "t").env("TWITCH_CHANNELS", "a");
    cmd.arg("migrate");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(password));
    assert_eq!(db.count("SELECT count(*) FROM information_schema.tables WHERE table_name = 'chat_messages'").await, 1);
}

#[tokio::test]
async fn a_database_made_by_the_original_is_upgraded_with_its_rows_kept() {
    let (db, fake, dir) = (TestDb::new().await, FakeTwitch::start().await, tempfile::tempdir().unwrap());
    sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&db.pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at, received_at)
         VALUES ('6f6c642d-3100-0000-0000-000000000000', 'chan', '1', 'olduser', 'OldUser', 'from the Go logger', '{\"subscriber\":12}', '#FF0000', false, true, 0, now() - interval '1 day', now() - interval '1 day'),
                ('old-2', 'chan', '2', 'other', 'Other', 'second', '{}', NULL, true, false, 50, now() - interval '1 day', now() - interval '1 day');
         INSERT INTO channel_notices (channel, msg_id, message) VALUES ('chan', 'msg_banned', 'old notice');",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let mut logger = Logger::spawn(env_only(&db, &fake, dir.path(), "chan", "tok"));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("loggerbot").contains("chan")).await;
    fake.to_channel("chan", &privmsg("chan", "old-1", "olduser", "same id as an old row"));
    fake.to_channel("chan", &privmsg("chan", "new-1", "newuser", "new row"));
    db.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(10 * SEC).await, 0);

    let old: (String, String, i32) =
        sqlx::query_as("SELECT text, badges->>'subscriber', bits FROM chat_messages WHERE message_id = '6f6c642d-3100-0000-0000-000000000000'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old, ("from the Go logger".into(), "12".into(), 0));
    assert_eq!(db.count("SELECT count(*) FROM channel_notices").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM v_last_messages").await, 3);
    // No duplicate index was added next to the original's unique constraint.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'chat_messages' AND indexdef LIKE '%(message_id)%'"
        )
        .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM pg_indexes WHERE tablename = 'chat_messages' AND indexdef LIKE '%(channel, sent_at)%'").await, 1);
}
