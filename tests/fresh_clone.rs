//! A fresh clone with no database server: the shipped config alone stores chat in
//! `data/chat.db` under the working directory, and start-up says how to look at it.

mod common;

use common::*;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn the_shipped_config_with_no_database_variables_logs_into_data_chat_db() {
    let fake = FakeTwitch::start().await;
    let clone = tempfile::tempdir().unwrap();
    copy_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), &clone.path().join("config"));
    assert!(!clone.path().join("data").exists());

    // logger_cmd starts from an empty environment: no DATABASE_URL, no POSTGRES_*.
    let mut cmd = logger_cmd(clone.path());
    cmd.env("TWITCH_IRC_SERVER", fake.url());
    let mut logger = Logger::spawn(cmd);
    fake.wait_for("joined the example channels", 15 * SEC, |f| f.joined_by("justinfan12345").contains("twitchdev"))
        .await;
    for i in 0..3 {
        fake.to_channel("twitchdev", &privmsg("twitchdev", &format!("fresh-{i}"), "Newbie", "hello from a laptop"));
    }

    let db = clone.path().join("data/chat.db");
    let abs = std::fs::canonicalize(clone.path()).unwrap().join("data/chat.db");
    logger.wait_log("database ready", 10 * SEC).await;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(twitch_chat_logger::store::sqlite::connect_options(&db))
        .await
        .unwrap();
    let end = std::time::Instant::now() + 10 * SEC;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages WHERE channel = 'twitchdev'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 3 {
            break;
        }
        assert!(std::time::Instant::now() < end, "{n} rows; log:\n{}", logger.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = format!(
        "storing chat in the SQLite file {p}; look at it with: sqlite3 {p} \"SELECT * FROM v_last_messages LIMIT 20\"",
        p = abs.display()
    );
    assert!(logger.log_text().contains(&line), "start-up line missing:\n{}", logger.log_text());
    let text: String = sqlx::query_scalar("SELECT text FROM v_last_messages LIMIT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(text, "hello from a laptop");
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(15 * SEC).await, 0);
}
