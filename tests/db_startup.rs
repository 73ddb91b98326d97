//! Reading starts before the database answers: with PostgreSQL down at start-up the logger
//! joins Twitch and serves /healthz at once, holds what it reads, and stores it all once the
//! database comes and the migrations are done.

mod common;

use common::cluster::Cluster;
use common::*;
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

#[tokio::test]
async fn with_the_database_down_at_start_chat_is_read_at_once_and_stored_when_it_comes() {
    let cluster = Cluster::start_new();
    cluster.stop();
    let fake = FakeTwitch::start().await;
    let spool = tempfile::tempdir().unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nspool_dir = \"{}\"\nflush_interval = \"100ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        spool.path().display()
    ));
    let mut cmd = file_mode(&path, &cluster.url());
    cmd.env("RUST_LOG", "info");
    let t0 = Instant::now();
    let mut logger = Logger::spawn(cmd);

    // Twitch and HTTP come up while the database is still down.
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    let addr = http_addr(&logger).await;
    let up_after = t0.elapsed();
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    let (code, body) = get(&addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("database not ready: waiting for the database: connection refused"), "{body}");

    for i in 0..300 {
        fake.to_channel(
            "chan",
            &privmsg("chan", &format!("00000000-0000-4000-8000-{i:012}"), "Early", "before the db"),
        );
        if i % 100 == 99 {
            tokio::time::sleep(SEC).await;
        }
    }
    tokio::time::sleep(SEC).await;
    assert!(logger.is_running());

    cluster.start();
    let db_up = Instant::now();
    let pool = PgPoolOptions::new().max_connections(1).connect(&cluster.url()).await.unwrap();
    let end = Instant::now() + 30 * SEC;
    let stored = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages").fetch_one(&pool).await.unwrap_or(0);
        if n >= 300 || Instant::now() > end {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored, 300, "{}", logger.log_text());
    let stored_after = db_up.elapsed();
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM chat_messages").fetch_one(&pool).await.unwrap();
    assert_eq!(distinct, 300);
    let mut ready = get(&addr, "/readyz").await;
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = get(&addr, "/readyz").await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
    eprintln!("database down at start: Twitch and HTTP up after {up_after:?}; sent 300 before the database came, stored 300 within {stored_after:?} of it starting");
}
