//! Several logger processes over one config, each with its shard: who joins what, replicas,
//! a killed instance, and shard changes applied by a live reload. Real binaries, a real
//! PostgreSQL, the fake Twitch server on 127.0.0.1.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use twitch_chat_logger::config::cluster::owners;

const SEC: Duration = Duration::from_secs(1);

fn channels() -> Vec<String> {
    (0..30).map(|i| format!("chan_{i:02}")).collect()
}

/// The one config every instance reads.
fn config(fake: &FakeTwitch, cluster: &str) -> String {
    let list: Vec<String> = channels().iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\njoin_rate = \"200/10s\"\n[groups.all]\naccounts = [\"default\"]\nchannels = [{}]\n{cluster}",
        fake.url(),
        list.join(", ")
    )
}

/// What shard `index` of `count` should log with `replicas`, by the logger's own rule.
fn expected(index: u32, count: u32, replicas: u32) -> BTreeSet<String> {
    channels().into_iter().filter(|c| owners(c, count, replicas).contains(&index)).collect()
}

/// Instance `i` of 3: `SHARD=i/3`, a login of its own (`shard{i}`) so the fake server can
/// tell the three apart, and a working directory of its own (spool, tokens), as each pod has
/// its own volume; the rest is the shared file.
fn instance(path: &Path, db: &TestDb, i: u32) -> (Logger, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let mut cmd = file_mode(path, &db.url);
    cmd.current_dir(work.path());
    cmd.env("SHARD", format!("{i}/3")).env("TWITCH_USERNAME", format!("shard{i}")).env("TWITCH_OAUTH_TOKEN", "tok");
    (Logger::spawn(cmd), work)
}

/// Waits until every instance sits in exactly its expected channels, then checks how many
/// readers each channel has.
async fn wait_assigned(fake: &FakeTwitch, replicas: u32, alive: &[u32]) {
    for &i in alive {
        let want = expected(i, 3, replicas);
        let nick = format!("shard{i}");
        fake.wait_for(&format!("{nick} in its {} channels", want.len()), 15 * SEC, |f| f.joined_by(&nick) == want)
            .await;
    }
    for c in channels() {
        let readers = fake.readers(&c);
        let want: Vec<String> =
            owners(&c, 3, replicas).into_iter().filter(|i| alive.contains(i)).map(|i| format!("shard{i}")).collect();
        let mut want = want;
        want.sort();
        assert_eq!(readers, want, "{c}: readers");
    }
}

async fn stored_once(db: &TestDb, n: i64) {
    db.wait_count("SELECT count(*) FROM chat_messages", n, 20 * SEC).await;
    assert_eq!(db.count("SELECT count(DISTINCT message_id) FROM chat_messages").await, n);
}

#[tokio::test]
async fn three_shards_split_the_channels_two_replicas_double_them_and_a_killed_one_loses_nothing() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&config(&fake, "[cluster]\nreplicas = 1\n"));
    let (loggers, _work): (Vec<Logger>, Vec<_>) = (1..=3).map(|i| instance(&path, &db, i)).unzip();

    // One reader per channel, each where the rule puts it; the shares add up to the 30.
    wait_assigned(&fake, 1, &[1, 2, 3]).await;
    let shares: Vec<usize> = (1..=3).map(|i| expected(i, 3, 1).len()).collect();
    eprintln!("replicas 1: channels per shard {shares:?}");
    assert_eq!(shares.iter().sum::<usize>(), 30);
    for (i, l) in loggers.iter().enumerate() {
        let line =
            format!("shard {}/3, replicas 1: this instance logs {} of the 30 configured channels", i + 1, shares[i]);
        l.wait_log(&line, 5 * SEC).await;
    }
    for c in channels() {
        fake.to_channel(&c, &privmsg(&c, &format!("{c}-a"), "Ann", "one reader"));
    }
    stored_once(&db, 30).await;

    // A live reload to two replicas: every instance joins its second share, nobody reconnects.
    let conns = fake.conns().len();
    let saved = Instant::now();
    std::fs::write(&path, config(&fake, "[cluster]\nreplicas = 2\n")).unwrap();
    wait_assigned(&fake, 2, &[1, 2, 3]).await;
    eprintln!("replicas 1 → 2 applied by reload in {:?}", saved.elapsed());
    assert_eq!(fake.conns().len(), conns, "a shard change reconnects nobody");
    for l in &loggers {
        l.wait_log("now shard", 5 * SEC).await;
    }
    for c in channels() {
        assert_eq!(fake.to_channel(&c, &privmsg(&c, &format!("{c}-b"), "Bob", "two readers")), 2);
    }
    stored_once(&db, 60).await;

    // kill -9 one instance while messages flow to every channel: the second reader of each of
    // its channels has every message, and the database stores each once.
    let mut loggers = loggers;
    let victim = loggers.remove(1);
    let sent = 30 * 20;
    for round in 0..20 {
        if round == 8 {
            victim.signal("KILL");
        }
        for c in channels() {
            fake.to_channel(&c, &privmsg(&c, &format!("{c}-k{round}"), "Kim", "through the kill"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    fake.wait_for("the killed instance's connections closed", 5 * SEC, |f| f.joined_by("shard2").is_empty()).await;
    stored_once(&db, 60 + sent).await;
    wait_assigned(&fake, 2, &[1, 3]).await;
    assert!(channels().iter().all(|c| !fake.readers(c).is_empty()), "every channel kept a reader");
    drop(victim);
}

#[tokio::test]
async fn a_reload_that_changes_the_shard_joins_and_parts_accordingly() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&config(&fake, "[cluster]\nshard = \"1/3\"\n"));
    let mut cmd = file_mode(&path, &db.url);
    cmd.env("TWITCH_USERNAME", "solo").env("TWITCH_OAUTH_TOKEN", "tok");
    let logger = Logger::spawn(cmd);
    let (one, two) = (expected(1, 3, 1), expected(2, 3, 1));
    fake.wait_for("shard 1/3's channels", 15 * SEC, |f| f.joined_by("solo") == one).await;
    let conns = fake.conns().len();

    std::fs::write(&path, config(&fake, "[cluster]\nshard = \"2/3\"\n")).unwrap();
    fake.wait_for("shard 2/3's channels", 5 * SEC, |f| f.joined_by("solo") == two).await;
    logger.wait_log("now shard 2/3 with 1 replica(s)", 5 * SEC).await;
    logger.wait_log(&format!("shard 2/3, replicas 1: this instance logs {} of the 30", two.len()), 5 * SEC).await;
    let parted: BTreeSet<String> = fake
        .conns()
        .into_iter()
        .filter(|c| c.nick.as_deref() == Some("solo"))
        .flat_map(|c| c.lines)
        .filter_map(|(_, l)| l.strip_prefix("PART #").map(str::to_string))
        .collect();
    assert_eq!(parted, one, "exactly shard 1's channels were parted");
    assert_eq!(fake.conns().len(), conns, "nobody reconnected");

    // A careless edit (a shard past the count) changes nothing.
    std::fs::write(&path, config(&fake, "[cluster]\nshard = \"4/3\"\n")).unwrap();
    logger.wait_log("config reload rejected", 5 * SEC).await;
    assert!(logger.log_text().contains("`4/3`: the index must be from 1 to 3"), "{}", logger.log_text());
    assert_eq!(fake.joined_by("solo"), two);

    // Going from 3 to 4 shards: this instance keeps most of its channels (it loses only
    // those shard 4 now wins) and gains none.
    std::fs::write(&path, config(&fake, "[cluster]\nshard = \"2/4\"\n")).unwrap();
    let four = expected(2, 4, 1);
    fake.wait_for("shard 2/4's channels", 5 * SEC, |f| f.joined_by("solo") == four).await;
    assert!(four.is_subset(&two), "{four:?} ⊄ {two:?}");
    for c in &four {
        fake.to_channel(c, &privmsg(c, &format!("{c}-4"), "Dee", "still here"));
    }
    stored_once(&db, four.len() as i64).await;
}

#[tokio::test]
async fn a_shard_that_owns_no_channel_is_ready_and_says_so() {
    // Fewer channels than shards: some instance has nothing to log, and must not fail its
    // readiness probe for that (a StatefulSet would never finish rolling out).
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let idle = (1..=3).find(|&i| !owners("twitchdev", 3, 1).contains(&i)).unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[accounts.default]\n[groups.g]\naccounts = [\"default\"]\nchannels = [\"twitchdev\"]\n[cluster]\nshard = \"{idle}/3\"\n",
        fake.url()
    ));
    let logger = Logger::spawn(file_mode(&path, &db.url));
    logger
        .wait_log(&format!("shard {idle}/3, replicas 1: this instance logs 0 of the 1 configured channels"), 10 * SEC)
        .await;
    let addr = http_addr(&logger).await;
    let end = Instant::now() + 10 * SEC;
    let mut last = get(&addr, "/readyz").await;
    while last.0 != 200 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = get(&addr, "/readyz").await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    assert!(fake.readers("twitchdev").is_empty());
}
