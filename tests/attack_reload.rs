//! Attacks on live reload: careless edits of the config file while the logger runs.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

fn cfg(fake: &FakeTwitch, channels: &[String]) -> String {
    let ch: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[http]\nlisten = \"off\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\njoin_rate = \"1000/1s\"\n[groups.default]\naccounts = [\"default\"]\nchannels = [{}]\n",
        fake.url(),
        ch.join(", ")
    )
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn start(fake: &FakeTwitch, db: &TestDb, path: &Path) -> Logger {
    let logger = Logger::spawn(file_mode(path, &db.url));
    fake.wait_for("initial join", 10 * SEC, |f| f.joined_by(ANON).contains("one")).await;
    logger
}

/// `rm config.toml && mkdir config.toml` (a bad bind mount, a tool that unpacks a directory
/// in its place), then the file back with one more channel: the logger keeps running on the
/// old config meanwhile, and follows the file once it is back.
#[tokio::test]
async fn a_config_file_replaced_by_a_directory_and_back_keeps_the_logger_running_and_is_followed_again() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&cfg(&fake, &names(&["one"])));
    let mut logger = start(&fake, &db, &path).await;

    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    tokio::time::sleep(SEC).await;
    assert!(logger.is_running(), "{}", logger.log_text());
    fake.to_channel("one", &privmsg("one", "d-1", "Hal", "still logging"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;

    std::fs::remove_dir(&path).unwrap();
    let saved = Instant::now();
    std::fs::write(&path, cfg(&fake, &names(&["one", "two"]))).unwrap();
    let joined = joined_within(&fake, "two", 5 * SEC).await;
    eprintln!("file → directory → file: new channel joined: {joined} after {:?}", saved.elapsed());
    assert!(joined, "the restored file was not followed within 5 s; log:\n{}", logger.log_text());
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}

/// An edit to 5,000 real channels. twitch-irc puts 90 channels on a connection and opens one
/// connection per 2 s, so they join at about 45 per second whatever `join_rate` says. The
/// unconfirmed-JOIN timer used to count from when *our* pacer was empty, which twitch-irc had
/// not fed yet: after 15 s, 720 of 5,001 joined, 720 JOIN lines sent, and 4,408 warnings "#ch_…
/// is still not joined 10s after its JOIN" for valid channels whose JOIN had not been sent at
/// all. It now counts from when each channel's JOIN was written.
#[tokio::test]
async fn an_edit_to_5000_real_channels_gives_no_false_unconfirmed_join_warnings_and_keeps_storing() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&cfg(&fake, &names(&["one"])));
    let mut logger = start(&fake, &db, &path).await;

    let mut many = names(&["one"]);
    many.extend((0..5000).map(|i| format!("ch_{i:05}")));
    std::fs::write(&path, cfg(&fake, &many)).unwrap();
    tokio::time::sleep(15 * SEC).await;
    let joined = fake.joined_by(ANON).len();
    // The fake server confirms every JOIN it receives: every such warning is false.
    let false_warnings = logger.log_text().lines().filter(|l| l.contains("is still not joined")).count();
    let joins_on_wire = fake.join_lines(ANON).len();
    let longest = logger.log_text().lines().map(str::len).max().unwrap_or(0);
    fake.to_channel("one", &privmsg("one", "s-1", "Hal", "during the storm"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;
    eprintln!(
        "5,000 channels after 15 s: {joined} joined, {joins_on_wire} JOIN lines sent, {false_warnings} 'still not joined' warnings; longest log line {longest} bytes"
    );
    assert!(logger.is_running());
    assert_eq!(false_warnings, 0, "warnings for channels Twitch would confirm");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}

/// Kubernetes mounts a ConfigMap as `config.toml -> ..data/config.toml` with `..data` a
/// symlink to a timestamped directory; an update swaps `..data` atomically (rename of a new
/// symlink over it). `config.toml` itself never changes, so a watcher that looks only at that
/// name misses every update.
#[tokio::test]
async fn a_configmap_style_symlink_swap_is_followed() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/config.toml"), cfg(&fake, &names(&["one"]))).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", d.join("config.toml")).unwrap();
    let path = d.join("config.toml");
    let mut logger = start(&fake, &db, &path).await;

    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/config.toml"), cfg(&fake, &names(&["one", "two"]))).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    let saved = Instant::now();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let joined = joined_within(&fake, "two", 5 * SEC).await;
    eprintln!("ConfigMap-style swap: new channel joined: {joined} after {:?}", saved.elapsed());
    assert!(joined, "the swapped config was not followed within 5 s; log:\n{}", logger.log_text());
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}

/// Whether the anonymous login has joined `channel` within `timeout` (polled every 20 ms).
async fn joined_within(fake: &FakeTwitch, channel: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while !fake.joined_by(ANON).contains(channel) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.joined_by(ANON).contains(channel)
}
