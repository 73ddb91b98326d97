//! Attacks on the health/metrics listener, which the compose file binds on 0.0.0.0.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";
/// The soft descriptor limit a systemd service gets unless its unit raises it is 1,024; a
/// smaller one here makes the same attack quick.
const NOFILE: u32 = 128;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Idle connections to the HTTP port (opened, never a byte sent) were accepted without limit,
/// one file descriptor each, until the process's descriptor limit; then a config edit was
/// refused with "Too many open files" (measured with 128 descriptors and 240 idle connections),
/// and anything else opened then, e.g. a spool segment, would have failed alike. The listener
/// now holds at most 64 (the rest wait in the kernel's backlog) and closes idle ones.
#[tokio::test]
async fn idle_connections_to_the_http_port_do_not_stop_config_edits_from_applying() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let http = free_port();
    let (dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={NOFILE}:{NOFILE}")).arg("--").arg(env!("CARGO_BIN_EXE_twitch-chat-logger"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(dir.path());
    cmd.env("RUST_LOG", "info").env("HTTP_LISTEN", format!("127.0.0.1:{http}"));
    cmd.arg("--config").arg(&path).env("DATABASE_URL", &db.url);
    let mut logger = Logger::spawn(cmd);
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    for i in 0..10 {
        fake.to_channel("chan", &privmsg("chan", &format!("h-{i}"), "Ivy", "before"));
    }
    db.wait_count("SELECT count(*) FROM chat_messages", 10, 10 * SEC).await;

    // The attacker: idle connections, as many as the kernel lets us open.
    let mut idle = Vec::new();
    for _ in 0..(2 * NOFILE) {
        // Past the logger's limit, connects wait in the listen backlog: stop there.
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(("127.0.0.1", http)))
            .await
        {
            Ok(Ok(s)) => idle.push(s),
            _ => break,
        }
    }
    tokio::time::sleep(SEC).await;
    std::fs::write(&path, format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\", \"two\"]\n",
        fake.url()
    ))
    .unwrap();
    let end = Instant::now() + 5 * SEC;
    while !fake.joined_by(ANON).contains("two") && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = fake.joined_by(ANON).contains("two");
    let emfile = logger.log_text().lines().filter(|l| l.contains("Too many open files")).count();
    eprintln!(
        "{} idle HTTP connections held: the edit's channel joined: {joined}; {emfile} 'Too many open files' log lines",
        idle.len()
    );
    assert!(logger.is_running());
    assert!(joined, "the edit was not applied within 5 s; log:\n{}", logger.log_text());
    assert_eq!(emfile, 0, "{}", logger.log_text());
    drop(idle);
    let (status, _) = tokio::time::timeout(10 * SEC, get(&format!("127.0.0.1:{http}"), "/healthz")).await.unwrap();
    assert_eq!(status, 200, "the port answers again once the idle connections are gone");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}
