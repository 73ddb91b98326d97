//! No line from the network stops or crashes anything: lines that crashed twitch-irc, bytes
//! that are not UTF-8, endless lines and lines twitch-irc cannot tokenise cost only
//! themselves; the connection stays up, the lines around them are stored, each kind is counted.
//! And at the default log level the log says what happened once, without the library's chatter.
//! The real binary, a real PostgreSQL, the fake Twitch server on 127.0.0.1.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

fn cfg(fake: &FakeTwitch, channels: &[&str]) -> String {
    let ch: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"50ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [{}]\n",
        fake.url(),
        ch.join(", ")
    )
}

/// The logger at the default log level (`info`), logging `channels` anonymously.
async fn start(fake: &FakeTwitch, db: &TestDb, dir: &Path, path: &Path, channels: &[&str]) -> Logger {
    let mut cmd = logger_cmd(dir);
    cmd.arg("--config").arg(path).env("DATABASE_URL", &db.url).env("RUST_LOG", "info");
    let logger = Logger::spawn(cmd);
    let want = channels.len();
    fake.wait_for("initial joins", 15 * SEC, |f| f.joined_by(ANON).len() == want).await;
    logger
}

async fn metrics(logger: &Logger) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    logger.wait_log("health and metrics on http://", 15 * SEC).await;
    let log = logger.log_text();
    let addr =
        log.split("health and metrics on http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn open_conns(fake: &FakeTwitch) -> Vec<usize> {
    fake.conns().into_iter().filter(|c| c.open).map(|c| c.id).collect()
}

#[tokio::test]
async fn lines_that_crashed_twitch_irc_leave_the_account_connected_and_logging_even_after_reconnect() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, &["chan"]));
    let logger = start(&fake, &db, dir.path(), &path, &["chan"]).await;
    let conns = open_conns(&fake);

    let bad_color = "color=#aééa";
    fake.to_nick(ANON, &format!("@badge-info=;badges=;{bad_color};display-name=A;emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #chan"));
    fake.to_nick(ANON, &format!("@badge-info=;badges=;{bad_color};display-name=A;emote-sets=0;user-id=1;user-type= :tmi.twitch.tv GLOBALUSERSTATE"));
    fake.to_channel("chan", &format!("@badge-info=;badges=;{bad_color};display-name=A;emotes=;id=u-1;login=a;mod=0;msg-id=sub;msg-param-cumulative-months=1;msg-param-should-share-streak=0;msg-param-sub-plan=1000;msg-param-sub-plan-name=x;room-id=1;subscriber=1;system-msg=x;tmi-sent-ts=1594545155039;user-id=2;user-type= :tmi.twitch.tv USERNOTICE #chan"));
    fake.to_channel("chan", &format!("@badge-info=;badges=;{bad_color};display-name=A;emotes=;room-id=1;tmi-sent-ts=1594545155039;user-id=2 :a!a@a.tmi.twitch.tv PRIVMSG #chan :no id"));
    fake.to_channel("chan", "@followers-only=999999999999999999;room-id=1 :tmi.twitch.tv ROOMSTATE #chan");
    // Safe, but not what twitch-irc can read (tags missing): handed on as generic, counted.
    fake.to_channel("chan", "@msg-id=sub;room-id=1 :tmi.twitch.tv USERNOTICE #chan");
    // A channel nobody asked for (a server bug, a proxy): counted, not stored.
    fake.to_nick(ANON, &privmsg("elsewhere", "stray-1", "Eve", "not wanted"));
    fake.to_channel("chan", &privmsg("chan", "after-crashers", "Bo", "still here"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;
    assert_eq!(open_conns(&fake), conns, "the connection was never dropped");

    let mut m = metrics(&logger).await;
    for _ in 0..50 {
        if metric(&m, "twitch_logger_bad_lines_total{reason=\"unparsed\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = metrics(&logger).await;
    }
    assert_eq!(metric(&m, "twitch_logger_bad_lines_total{reason=\"unparsed\"}"), 1.0, "{m}");
    assert!(metric(&m, "twitch_logger_bad_lines_total{reason=\"unsafe_tag\"}") >= 4.0, "{m}");
    assert_eq!(metric(&m, "twitch_logger_bad_lines_total{reason=\"chat_refused\"}"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_account_up{account=\"default\"}"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_account_client_restarts_total{account=\"default\"}"), 0.0);
    assert_eq!(metric(&m, "twitch_logger_bad_lines_total{reason=\"unwanted_channel\"}"), 1.0, "{m}");

    fake.to_nick(ANON, ":tmi.twitch.tv RECONNECT");
    fake.wait_for("reconnected and rejoined", 15 * SEC, |f| {
        f.conns().iter().any(|c| c.open && !conns.contains(&c.id) && c.joined.contains("chan"))
    })
    .await;
    fake.to_channel("chan", &privmsg("chan", "after-reconnect", "Bo", "and after RECONNECT"));
    db.wait_count("SELECT count(*) FROM chat_messages", 2, 10 * SEC).await;
    assert!(!logger.log_text().contains("panicked"), "{}", logger.log_text());
}

#[tokio::test]
async fn a_bad_byte_an_endless_line_and_an_untokenisable_line_cost_only_themselves() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, &["chan"]));
    let logger = start(&fake, &db, dir.path(), &path, &["chan"]).await;
    let conns = open_conns(&fake);

    // All in one write, so in one read: today's reader lost the lines after a bad one.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(format!("{}\r\n", privmsg("chan", "ok-1", "Cy", "first")).as_bytes());
    bytes.extend_from_slice(privmsg("chan", "latin1-1", "Cy", "caf").as_bytes());
    bytes.extend_from_slice(b"\xe9 au lait\r\n");
    bytes.extend_from_slice(format!(":tmi.twitch.tv NOTICE #chan :{}\r\n", "x".repeat(70 * 1024)).as_bytes());
    bytes.extend_from_slice(b"@msg-id=x :tmi.twitch.tv NOTICE  #c00 :x\r\n");
    bytes.extend_from_slice(format!("{}\r\n", privmsg("chan", "ok-2", "Cy", "last")).as_bytes());
    fake.raw_to_nick(ANON, &bytes);

    db.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
    let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT text FROM chat_messages WHERE message_id = '{}'",
        msg_uuid("latin1-1")
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(text, "caf\u{FFFD} au lait", "the bad byte is replaced, the message kept");
    assert_eq!(open_conns(&fake), conns, "no reconnect, so no 30 s of rejoining");

    let m = metrics(&logger).await;
    for reason in ["invalid_utf8", "too_long", "malformed"] {
        assert_eq!(metric(&m, &format!("twitch_logger_bad_lines_total{{reason=\"{reason}\"}}")), 1.0, "{reason}");
    }
    let log = logger.log_text();
    assert!(log.contains("reason=\"too_long\"") || log.contains("reason=too_long"), "{log}");
    assert!(log.contains("NOTICE  #c00"), "the log shows the line's start: {log}");
    assert!(!log.lines().any(|l| l.len() > 2000), "no 70 KiB log line");
}

#[tokio::test]
async fn nul_and_impossible_timestamps_are_cleaned_not_dead_lettered() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, &["chan"]));
    let _logger = start(&fake, &db, dir.path(), &path, &["chan"]).await;
    // A NUL inside the id and inside a badge name: removed, the row kept.
    let id = msg_uuid("nulid");
    let (head, tail) = id.split_at(8);
    let line = privmsg("chan", "nulid", "Di", "hi")
        .replacen(&format!("id={id}"), &format!("id={head}\0{tail}"), 1)
        .replacen("badges=subscriber/12", "badges=sub\0scriber/12", 1);
    fake.to_channel("chan", &line);
    let old = privmsg("chan", "ancient-1", "Di", "from before time");
    let ts = old.split("tmi-sent-ts=").nth(1).unwrap().split(';').next().unwrap().to_string();
    fake.to_channel("chan", &old.replace(&format!("tmi-sent-ts={ts}"), "tmi-sent-ts=-300000000000000"));
    db.wait_count("SELECT count(*) FROM chat_messages", 2, 10 * SEC).await;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM chat_messages WHERE message_id = '{}' AND badges ? 'subscriber'",
            msg_uuid("nulid")
        ))
        .await,
        1
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM chat_messages WHERE message_id = '{}' AND sent_at = received_at",
            msg_uuid("ancient-1")
        ))
        .await,
        1,
        "an impossible tmi-sent-ts falls back to received_at"
    );
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test]
async fn at_the_default_level_each_join_and_part_is_said_once_and_library_chatter_is_gone() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (dir, path) = config_dir(&cfg(&fake, &["one", "two"]));
    let logger = start(&fake, &db, dir.path(), &path, &["one", "two"]).await;
    logger.wait_log("joined #two", 5 * SEC).await;

    // A dropped connection: twitch-irc reconnects and rejoins both.
    let first = open_conns(&fake);
    fake.drop_nick(ANON);
    fake.wait_for("rejoined", 15 * SEC, |f| {
        f.conns().iter().filter(|c| c.open && !first.contains(&c.id)).any(|c| c.joined.len() == 2)
    })
    .await;
    // Chat lines without an id: twitch-irc logged one ERROR each.
    for _ in 0..3 {
        fake.to_channel("one", &privmsg("one", "", "Ed", "no id"));
    }
    fake.to_channel("one", &privmsg("one", "id-1", "Ed", "with id"));
    db.wait_count("SELECT count(*) FROM chat_messages", 1, 10 * SEC).await;

    std::fs::write(&path, cfg(&fake, &["one"])).unwrap();
    logger.wait_log("left #two", 5 * SEC).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = logger.log_text();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("joined #one"), 1, "{log}");
    assert_eq!(count("joined #two"), 1, "{log}");
    assert_eq!(count("left #two"), 1, "{log}");
    assert_eq!(count("twitch_irc"), 0, "no line from twitch-irc at the default level:\n{log}");
    assert_eq!(count("Making a new pool connection"), 0);
    assert_eq!(count("a chat line from Twitch was dropped"), 1, "three refused lines, one rate-limited report:\n{log}");
    assert_eq!(count("the server closed the connection"), 1, "one line for the disconnect:\n{log}");
}
