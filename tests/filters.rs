//! The config's user filters end to end: a running logger, the fake Twitch server, a real
//! PostgreSQL. Ignored and opted-out users, by login and by id, before and after a live reload.

mod common;

use common::*;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

/// A PRIVMSG from `login` with user id `uid`.
fn from(channel: &str, label: &str, login: &str, uid: &str) -> String {
    privmsg(channel, label, login, "hello").replace("user-id=777", &format!("user-id={uid}"))
}

fn cfg(fake: &FakeTwitch, filters: &str) -> String {
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\n\
         [groups.g]\naccounts = [\"default\"]\nchannels = [\"one\"]\nignore_users = [\"G_Bot\"]\n\
         [groups.h]\naccounts = [\"default\"]\nchannels = [\"two\"]\n{filters}",
        fake.url()
    )
}

async fn stored(db: &TestDb) -> Vec<String> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT channel, username FROM chat_messages ORDER BY channel, username, id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(c, u)| format!("{c}/{u}")).collect()
}

fn metric(text: &str, series: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn ignored_and_opted_out_users_are_not_stored_before_and_after_a_live_reload_by_login_and_by_id() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let before = "[filters]\nignore_users = [\"nightbot\", \"9001\"]\nopt_out_users = [\"Shy\"]\n";
    let (dir, path) = config_dir(&cfg(&fake, before));
    let logger = Logger::spawn(file_mode(&path, &db.url));
    let _ = dir;
    fake.wait_for("both joined", 10 * SEC, |f| f.joined_by(ANON).len() == 2).await;
    let addr = http_addr(&logger).await;

    for (ch, label, login, uid) in [
        ("one", "a-1", "nightbot", "1"),      // ignored by login
        ("one", "a-2", "renamedbot", "9001"), // ignored by id, whatever its login
        ("two", "a-3", "shy", "3"),           // opted out
        ("one", "a-4", "g_bot", "4"),         // ignored in group g's channel…
        ("two", "a-5", "g_bot", "4"),         // …but not in group h's
        ("one", "a-6", "later", "4242"),      // opts out after the reload
        ("one", "a-7", "hal", "7"),           // ignored after the reload
        ("two", "a-8", "zed", "8"),           // marker: everything before it went through the writer
    ] {
        assert_eq!(fake.to_channel(ch, &from(ch, label, login, uid)), 1);
    }
    db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zed'", 1, 10 * SEC).await;
    assert_eq!(stored(&db).await, ["one/hal", "one/later", "two/g_bot", "two/zed"]);

    // The edit: nightbot is no longer ignored, hal is; user 4242 opts out by id.
    let after = "[filters]\nignore_users = [\"9001\", \"hal\"]\nopt_out_users = [\"shy\", \"4242\"]\n";
    std::fs::write(&path, cfg(&fake, after)).unwrap();
    logger.wait_log("user filters applied [filters.ignore_users +1/-1, filters.opt_out_users +1/-0]", 5 * SEC).await;
    for (ch, label, login, uid) in [
        ("one", "b-1", "nightbot", "1"),
        ("one", "b-2", "renamedbot", "9001"),
        ("two", "b-3", "shy", "3"),
        ("one", "b-4", "g_bot", "4"),
        ("one", "b-6", "later_renamed", "4242"),
        ("one", "b-7", "hal", "7"),
        ("two", "b-8", "zed", "8"),
    ] {
        assert_eq!(fake.to_channel(ch, &from(ch, label, login, uid)), 1);
    }
    db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zed'", 2, 10 * SEC).await;
    assert_eq!(stored(&db).await, ["one/hal", "one/later", "one/nightbot", "two/g_bot", "two/zed", "two/zed"]);

    let (code, m) = get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    // Before: nightbot, renamedbot, g_bot@one ignored; shy opted out. After: renamedbot,
    // g_bot@one, hal ignored; shy, later_renamed opted out.
    assert_eq!(metric(&m, "twitch_logger_filtered_rows_total{reason=\"ignored\"}"), 6);
    assert_eq!(metric(&m, "twitch_logger_filtered_rows_total{reason=\"opted_out\"}"), 3);
    assert!(!logger.log_text().contains("later_renamed") && !logger.log_text().contains("4242"), "no user in the log");
}

#[tokio::test]
async fn a_channel_moved_into_a_group_with_an_ignore_list_gets_that_list_on_reload_and_loses_it_when_moved_back() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&cfg(&fake, ""));
    let logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("both joined", 10 * SEC, |f| f.joined_by(ANON).len() == 2).await;
    let moved = cfg(&fake, "").replace("channels = [\"one\"]", "channels = [\"one\", \"two\"]");
    std::fs::write(&path, &moved).unwrap();
    // Only a channel list changed, no filter list: the filter still follows the group.
    logger.wait_log("user filters applied [groups.g.ignore_users +0/-0 (now in 2 channels)]", 5 * SEC).await;
    fake.to_channel("two", &from("two", "c-1", "g_bot", "4"));
    fake.to_channel("two", &from("two", "c-2", "zed", "8"));
    db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zed'", 1, 10 * SEC).await;
    assert_eq!(stored(&db).await, ["two/zed"]);
    std::fs::write(&path, cfg(&fake, "")).unwrap();
    logger.wait_log("user filters applied [groups.g.ignore_users +0/-0 (now in 1 channels)]", 5 * SEC).await;
    fake.to_channel("two", &from("two", "c-3", "g_bot", "4"));
    fake.to_channel("two", &from("two", "c-4", "zed", "8"));
    db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zed'", 2, 10 * SEC).await;
    assert_eq!(stored(&db).await, ["two/g_bot", "two/zed", "two/zed"]);
}
