//! Attacks by signal: what an operator's tools send at awkward moments.

mod common;

use common::*;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);

/// Threads of a running process (the tokio runtime has started once there are several).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// `systemctl reload` right after `systemctl start` (Type=exec: the unit is "started" at exec)
/// sends SIGHUP while the logger is still loading its config. Until the reloader listened,
/// SIGHUP's default action killed it (exit 129, measured: a HUP 50 ms after exec in a debug
/// build), and systemd's Restart=on-failure then left a 5 s gap in the log.
#[tokio::test]
async fn a_sighup_while_the_logger_starts_does_not_kill_it() {
    let fake = FakeTwitch::start().await;
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[http]\nlisten = \"off\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    // Nobody listens there: the database stays unreachable, which start-up must not wait for.
    let mut logger = Logger::spawn(file_mode(&path, "postgres://u@127.0.0.1:1/db"));
    let pid = logger.pid();
    let end = Instant::now() + 5 * SEC;
    while threads(pid) < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_micros(200));
    }
    let sent_from = Instant::now();
    let mut sent = 0;
    while sent_from.elapsed() < Duration::from_millis(400) && logger.is_running() {
        logger.signal("HUP");
        sent += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let alive = logger.is_running();
    let code = if alive { None } else { Some(logger.wait_exit(SEC).await) };
    eprintln!("SIGHUPs during start-up: {sent} sent; alive: {alive}; exit: {code:?}");
    assert!(alive, "killed by a SIGHUP during start-up (exit {code:?}); log:\n{}", logger.log_text());
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by("justinfan12345").contains("chan")).await;
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0, "{}", logger.log_text());
}
