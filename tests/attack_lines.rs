//! Attacks from the network: lines a hostile or broken server (or proxy) sends.

mod common;

use common::*;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

async fn start(fake: &FakeTwitch, db: &TestDb) -> (tempfile::TempDir, Logger) {
    let (dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[http]\nlisten = \"off\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    let logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    (dir, logger)
}

/// 5,000 NOTICEs in one write, one of them with 1,000 tags: each is stored once, with its tags,
/// and the chat after them too.
#[tokio::test]
async fn a_flood_of_notices_and_a_notice_with_1000_tags_are_all_stored_and_chat_goes_on() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, mut logger) = start(&fake, &db).await;
    let tags: Vec<String> = (0..1000).map(|i| format!("x-tag-{i}=v{i}")).collect();
    let mut bytes = format!("@msg-id=big;{} :tmi.twitch.tv NOTICE #chan :one thousand tags\r\n", tags.join(";"));
    for i in 0..5000 {
        bytes.push_str(&format!("@msg-id=flood :tmi.twitch.tv NOTICE #chan :notice {i}\r\n"));
    }
    fake.raw_to_nick(ANON, bytes.as_bytes());
    fake.to_channel("chan", &privmsg("chan", "n-1", "Ivy", "after the flood"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 20 * SEC).await;
    db.wait_count("SELECT count(*) FROM channel_notices", 5001, 20 * SEC).await;
    let keys = db.count("SELECT count(*) FROM channel_notices, jsonb_object_keys(tags) WHERE msg_id = 'big'").await;
    eprintln!("notices: 5,001 sent, 5,001 stored; the big one with {keys} tags");
    assert_eq!(keys, 1001);
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}

/// A PRIVMSG for a channel the config does not name (a proxy that multiplexes connections, a
/// server bug, or lines still in flight after a PART) is not stored as if it were wanted.
#[tokio::test]
async fn chat_of_a_channel_the_config_does_not_name_is_not_stored() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, mut logger) = start(&fake, &db).await;
    for i in 0..50 {
        fake.to_nick(ANON, &privmsg("not_wanted", &format!("u-{i}"), "Eve", "spam"));
    }
    fake.to_channel("chan", &privmsg("chan", "u-ok", "Ivy", "wanted"));
    db.wait_count("SELECT count(*) FROM chat_messages WHERE channel = 'chan'", 1, 10 * SEC).await;
    tokio::time::sleep(SEC).await;
    let stray = db.count("SELECT count(*) FROM chat_messages WHERE channel = 'not_wanted'").await;
    eprintln!("50 PRIVMSGs for #not_wanted (never joined, not in the config): {stray} stored");
    assert_eq!(stray, 0, "{}", logger.log_text());
    let warned = logger.log_text().lines().filter(|l| l.contains("not set to read")).count();
    assert_eq!(warned, 1, "one warning for the 50, not one each");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}
