//! Live reload in one running process: edits to config.toml join and part channels, start and
//! stop accounts, and reconnect changed credentials, without touching anything else.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

fn cfg(fake: &FakeTwitch, extra: &str, channels: &[&str]) -> String {
    let ch: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\n{extra}\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [{}]\n",
        fake.url(),
        ch.join(", ")
    )
}

async fn start(fake: &FakeTwitch, db: &TestDb, dir: &Path, path: &Path) -> Logger {
    let mut cmd = logger_cmd(dir);
    cmd.arg("--config").arg(path).env("DATABASE_URL", &db.url);
    let logger = Logger::spawn(cmd);
    fake.wait_for("initial join", 10 * SEC, |f| f.joined_by(ANON).contains("one")).await;
    logger
}

/// Saves by writing a new file and renaming it over the old one (vim, sed -i, most editors).
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn adding_a_channel_by_in_place_write_joins_it_within_a_second() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, "", &["one"]));
    let logger = start(&fake, &db, dir.path(), &path).await;
    let conns_before = fake.conns().len();

    let saved = Instant::now();
    std::fs::write(&path, cfg(&fake, "", &["one", "two"])).unwrap();
    fake.wait_for("JOIN #two", 3 * SEC, |f| f.joined_by(ANON).contains("two")).await;
    let took = saved.elapsed();
    eprintln!("save to JOIN on the wire: {took:?}");
    assert!(took < SEC, "save to JOIN took {took:?}");
    assert_eq!(fake.conns().len(), conns_before, "nobody reconnected");

    fake.to_channel("two", &privmsg("two", "w-1", "Hal", "new channel"));
    fake.to_channel("one", &privmsg("one", "w-2", "Hal", "old channel"));
    db.wait_count("SELECT count(*) FROM chat_messages", 2, 5 * SEC).await;
    logger.wait_log("config reloaded: joined [two]", 2 * SEC).await;
}

#[tokio::test]
async fn rename_over_and_removal_part_the_channel_and_stop_storing_it() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, "", &["one", "two"]));
    let logger = start(&fake, &db, dir.path(), &path).await;
    fake.wait_for("both joined", 10 * SEC, |f| f.joined_by(ANON).len() == 2).await;

    rename_over(&path, &cfg(&fake, "", &["one", "three"]));
    fake.wait_for("PART two, JOIN three", 3 * SEC, |f| {
        let j = f.joined_by(ANON);
        j.contains("three") && !j.contains("two")
    })
    .await;
    assert!(fake.conns()[0].lines.iter().any(|(_, l)| l == "PART #two"));
    assert_eq!(fake.to_channel("two", &privmsg("two", "x-1", "Ivy", "after part")), 0);
    fake.to_channel("three", &privmsg("three", "x-2", "Ivy", "new"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages WHERE channel = 'two'").await, 0);
    logger.wait_log("parted [two]", 2 * SEC).await;
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_noticed() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // ConfigMap layout: config.toml -> ..data/config.toml, ..data -> ..v1
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/config.toml"), cfg(&fake, "", &["one"])).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", d.join("config.toml")).unwrap();
    let _logger = start(&fake, &db, d, &d.join("config.toml")).await;

    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/config.toml"), cfg(&fake, "", &["one", "swapped"])).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    fake.wait_for("JOIN #swapped", 3 * SEC, |f| f.joined_by(ANON).contains("swapped")).await;
    fake.to_channel("swapped", &privmsg("swapped", "k-1", "Jo", "hi"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;
}

#[tokio::test]
async fn accounts_are_added_removed_and_reconnected_with_a_new_token() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let base = |bot_token: &str, with_extra: bool| {
        let mut t = cfg(&fake, "", &["one"]);
        t.push_str(&format!("[accounts.bot]\nusername = \"bot\"\noauth_token = \"{bot_token}\"\n[groups.botgroup]\naccounts = [\"bot\"]\nchannels = [\"botchan\"]\n"));
        if with_extra {
            t.push_str("[accounts.extra]\nusername = \"extra\"\noauth_token = \"ex\"\n[groups.extragroup]\naccounts = [\"extra\"]\nchannels = [\"exchan\"]\n");
        }
        t
    };
    let (dir, path) = config_dir(&base("tok1", false));
    let logger = start(&fake, &db, dir.path(), &path).await;
    fake.wait_for("bot joined", 10 * SEC, |f| f.joined_by("bot").contains("botchan")).await;
    let anon_conns = |f: &FakeTwitch| f.conns().iter().filter(|c| c.nick.as_deref() == Some(ANON)).count();
    assert_eq!(anon_conns(&fake), 1);

    // Add an account.
    rename_over(&path, &base("tok1", true));
    fake.wait_for("extra joined", 5 * SEC, |f| f.joined_by("extra").contains("exchan")).await;
    // Change a token: that account reconnects with the new PASS, no one else does.
    rename_over(&path, &base("tok2", true));
    fake.wait_for("bot reconnected with tok2", 5 * SEC, |f| {
        f.conns().iter().any(|c| {
            c.open
                && c.nick.as_deref() == Some("bot")
                && c.pass.as_deref() == Some("oauth:tok2")
                && c.joined.contains("botchan")
        })
    })
    .await;
    assert!(fake
        .conns()
        .iter()
        .filter(|c| c.nick.as_deref() == Some("bot") && c.open)
        .all(|c| c.pass.as_deref() == Some("oauth:tok2")));
    // Remove the extra account: its connection closes.
    rename_over(&path, &base("tok2", false));
    fake.wait_for("extra disconnected", 5 * SEC, |f| {
        !f.conns().iter().any(|c| c.open && c.nick.as_deref() == Some("extra"))
    })
    .await;
    assert_eq!(anon_conns(&fake), 1, "the untouched account kept its connection");
    assert_eq!(fake.conns().iter().filter(|c| c.nick.as_deref() == Some("extra")).count(), 1);

    fake.to_channel("botchan", &privmsg("botchan", "b-1", "Kim", "after reconnect"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;
    let log = logger.log_text();
    assert!(
        log.contains("accounts started [extra]")
            && log.contains("reconnected [bot]")
            && log.contains("stopped [extra]"),
        "{log}"
    );
    assert!(!log.contains("tok1") && !log.contains("tok2"));
}

#[tokio::test]
async fn an_invalid_edit_changes_nothing_and_a_later_fix_applies() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, "", &["one"]));
    let mut logger = start(&fake, &db, dir.path(), &path).await;

    let broken = cfg(&fake, "", &["one", "two"]).replace("[batch]\n", "[batch]\nmax_row = 5\n");
    std::fs::write(&path, &broken).unwrap();
    logger.wait_log("config reload rejected", 3 * SEC).await;
    assert!(logger.log_text().contains("did you mean `max_rows`"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(logger.is_running());
    assert!(!fake.joined_by(ANON).contains("two"), "nothing of the broken edit applied");
    fake.to_channel("one", &privmsg("one", "i-1", "Lee", "still logged"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 5 * SEC).await;

    // A semantic error is rejected the same way.
    std::fs::write(&path, cfg(&fake, "", &["one", "bad-name"])).unwrap();
    logger.wait_log("bad-name", 3 * SEC).await;

    std::fs::write(&path, cfg(&fake, "", &["one", "two"])).unwrap();
    fake.wait_for("JOIN #two after the fix", 3 * SEC, |f| f.joined_by(ANON).contains("two")).await;
}

#[tokio::test]
async fn batch_settings_apply_to_the_running_writer() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let slow = cfg(&fake, "", &["one"])
        .replace("flush_interval = \"100ms\"", "flush_interval = \"10m\"\ndurable_within = \"20m\"");
    let (dir, path) = config_dir(&slow);
    let _logger = start(&fake, &db, dir.path(), &path).await;
    fake.to_channel("one", &privmsg("one", "f-1", "Max", "waiting"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.count("SELECT count(*) FROM chat_messages").await, 0, "held by the 10m interval");
    std::fs::write(&path, cfg(&fake, "", &["one"])).unwrap();
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 3 * SEC).await;
}

#[tokio::test]
async fn poll_mode_notices_edits() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let extra = "[reload]\nmode = \"poll\"\npoll_interval = \"200ms\"\n";
    let (dir, path) = config_dir(&cfg(&fake, extra, &["one"]));
    let _logger = start(&fake, &db, dir.path(), &path).await;
    std::fs::write(&path, cfg(&fake, extra, &["one", "polled"])).unwrap();
    fake.wait_for("JOIN #polled", 3 * SEC, |f| f.joined_by(ANON).contains("polled")).await;
}

#[tokio::test]
async fn sighup_reloads_when_file_events_are_off() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let extra = "[reload]\nmode = \"off\"\n";
    let (dir, path) = config_dir(&cfg(&fake, extra, &["one"]));
    let mut logger = start(&fake, &db, dir.path(), &path).await;
    std::fs::write(&path, cfg(&fake, extra, &["one", "hupped"])).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!fake.joined_by(ANON).contains("hupped"), "mode off: no file events");
    logger.signal("HUP");
    fake.wait_for("JOIN #hupped", 3 * SEC, |f| f.joined_by(ANON).contains("hupped")).await;
    assert!(logger.is_running());
}
