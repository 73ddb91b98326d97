//! What only the SQLite file has: readers that must never fail the writer, paths that are not
//! a usable file, and retention by chunked deletes. The real binary and a real file.

mod common;

use common::*;
use sqlx::sqlite::SqlitePoolOptions;
use std::path::Path;
use std::time::Duration;
use twitch_chat_logger::store::sqlite::{connect_options, timestamp, SqliteStore};

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

fn config(fake: &FakeTwitch, dir: &Path, extra: &str) -> String {
    format!(
        "[twitch]\nserver = \"{}\"\n[database]\nurl = \"sqlite://{}\"\n[batch]\nspool_dir = \"{}\"\nmax_rows = 20\nflush_interval = \"100ms\"\n{extra}\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        dir.join("chat.db").display(),
        dir.join("spool").display()
    )
}

async fn pool(dir: &Path) -> sqlx::SqlitePool {
    SqlitePoolOptions::new().max_connections(2).connect_with(connect_options(&dir.join("chat.db"))).await.unwrap()
}

async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

async fn wait_count(pool: &sqlx::SqlitePool, sql: &str, n: i64, timeout: Duration) {
    let end = std::time::Instant::now() + timeout;
    loop {
        let got = count(pool, sql).await;
        if got == n {
            return;
        }
        assert!(std::time::Instant::now() < end, "timed out: {sql} = {got}, wanted {n}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of a series in the logger's /metrics.
async fn metric(logger: &Logger, series: &str) -> f64 {
    let (_, body) = get(&http_addr(logger).await, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

#[tokio::test]
async fn a_reader_holding_a_long_read_transaction_never_makes_a_write_fail() {
    let (fake, dir) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    let (_cfg, path) = config_dir(&config(&fake, dir.path(), ""));
    let logger = Logger::spawn(file_mode_without_url(&path));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    logger.wait_log("database ready", 10 * SEC).await;

    // A dashboard or the sqlite3 shell: a read transaction kept open for the whole test.
    use sqlx::ConnectOptions;
    let mut reader = connect_options(&dir.path().join("chat.db")).connect().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut reader).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages").fetch_one(&mut reader).await.unwrap();
    for i in 0..400 {
        fake.to_channel("chan", &privmsg("chan", &format!("r-{i:05}"), "Rae", "while someone reads"));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let p = pool(dir.path()).await;
    wait_count(&p, "SELECT count(*) FROM chat_messages", 400, 10 * SEC).await;
    // The reader still sees its snapshot; the writer never waited on it.
    let during: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages").fetch_one(&mut reader).await.unwrap();
    assert_eq!((before, during), (0, 0), "the reader's snapshot");
    assert_eq!(metric(&logger, "twitch_logger_write_failures_total").await, 0.0, "{}", logger.log_text());
    assert_eq!(spool_rows(&dir.path().join("spool")), 0);
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
}

/// `file_mode` without `DATABASE_URL`: the config file names the store.
fn file_mode_without_url(path: &Path) -> std::process::Command {
    let mut c = logger_cmd(path.parent().unwrap());
    c.arg("--config").arg(path);
    c
}

#[tokio::test]
async fn a_path_that_is_a_directory_or_not_a_sqlite_file_stops_start_up_saying_what_to_do() {
    let fake = FakeTwitch::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");

    std::fs::create_dir(&db).unwrap();
    let (_c, path) = config_dir(&config(&fake, dir.path(), ""));
    let mut logger = Logger::spawn(file_mode_without_url(&path));
    assert_eq!(logger.wait_exit(15 * SEC).await, 1);
    let log = logger.log_text();
    assert!(log.contains(&format!("{} is a directory, not a SQLite file", db.display())), "{log}");
    assert!(log.contains("point it at a file"), "{log}");
    std::fs::remove_dir(&db).unwrap();

    std::fs::write(&db, "these are somebody's notes, not a database\n").unwrap();
    let mut logger = Logger::spawn(file_mode_without_url(&path));
    assert_eq!(logger.wait_exit(15 * SEC).await, 1);
    let log = logger.log_text();
    assert!(log.contains("is not a SQLite database") && log.contains("move that file away"), "{log}");
    assert_eq!(std::fs::read_to_string(&db).unwrap(), "these are somebody's notes, not a database\n", "left as it was");

    // `check --connect` says the same without starting.
    let out = logger_cmd(dir.path()).arg("--config").arg(&path).args(["check", "--connect"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a SQLite database"));
}

#[tokio::test]
async fn a_directory_the_logger_cannot_write_stops_start_up_naming_it() {
    let fake = FakeTwitch::start().await;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let Some(_ro) = ReadOnly::new(&locked) else {
        eprintln!("skipped: cannot make a directory read-only here");
        return;
    };
    let text = config(&fake, &locked, "")
        .replace(&locked.join("spool").display().to_string(), &dir.path().join("spool").display().to_string());
    let (_c, path) = config_dir(&text);
    let mut logger = Logger::spawn(file_mode_without_url(&path));
    assert_eq!(logger.wait_exit(15 * SEC).await, 1);
    let log = logger.log_text();
    assert!(log.contains(&format!("the directory {} and the file must be writable", locked.display())), "{log}");
}

/// Makes a directory unwritable, even for root (immutable flag), until dropped.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> Option<ReadOnly> {
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let ok = if root {
            std::process::Command::new("chattr").arg("+i").arg(dir).status().is_ok_and(|s| s.success())
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).is_ok()
        };
        let guard = ReadOnly(dir.to_path_buf());
        (ok && std::fs::write(dir.join("probe"), b"").is_err()).then_some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

/// 12,000 messages from 40 days ago, 5 from now, one old notice and one old dead letter.
async fn fill_old_and_new(dir: &Path) {
    let store = SqliteStore::open_lazy(&dir.join("chat.db"));
    store.migrate().await.unwrap();
    let p = pool(dir).await;
    let old = timestamp(&(chrono::Utc::now() - chrono::Duration::days(40)));
    let new = timestamp(&chrono::Utc::now());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12005)
         INSERT INTO chat_messages (message_id, channel, username, text, badges, sent_at, received_at)
         SELECT printf('00000000-0000-4000-8000-%012d', i), 'chan', 'u', 'old', '{{}}',
                CASE WHEN i <= 12000 THEN '{old}' ELSE '{new}' END, '{new}' FROM n;
         INSERT INTO channel_notices (channel, message, notice_at, received_at) VALUES ('chan', 'old notice', '{old}', '{old}');
         INSERT INTO dead_letters (kind, payload, error, received_at, failed_at) VALUES ('chat_message', '{{}}', 'x', '{old}', '{old}');"
    )))
    .execute(&p)
    .await
    .unwrap();
}

#[tokio::test]
async fn retention_set_by_a_reload_deletes_older_rows_in_chunks_logs_and_counts_them() {
    let (fake, dir) = (FakeTwitch::start().await, tempfile::tempdir().unwrap());
    fill_old_and_new(dir.path()).await;
    let (_cfg, path) = config_dir(&config(&fake, dir.path(), ""));
    let logger = Logger::spawn(file_mode_without_url(&path));
    fake.wait_for("joined", 15 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    logger.wait_log("database ready", 10 * SEC).await;
    let p = pool(dir.path()).await;
    tokio::time::sleep(SEC).await;
    assert_eq!(count(&p, "SELECT count(*) FROM chat_messages").await, 12_005, "kept forever by default");

    // Live: an edit of the file, no restart.
    std::fs::write(&path, config(&fake, dir.path(), "[storage]\nretention = \"30d\"")).unwrap();
    logger.wait_log("retention: deleted 12002 rows older than 30d", 15 * SEC).await;
    assert_eq!(count(&p, "SELECT count(*) FROM chat_messages").await, 5);
    assert_eq!(count(&p, "SELECT count(*) FROM channel_notices").await, 0);
    assert_eq!(count(&p, "SELECT count(*) FROM dead_letters").await, 0);
    let line = logger.log_text().lines().find(|l| l.contains("retention: deleted")).unwrap().to_string();
    assert!(line.contains("chat_messages 12000, channel_notices 1, dead_letters 1"), "{line}");
    assert_eq!(metric(&logger, "twitch_logger_expired_rows_total").await, 12_002.0);

    // New rows keep arriving and are kept.
    fake.to_channel("chan", &privmsg("chan", "keep-1", "Ann", "new"));
    wait_count(&p, "SELECT count(*) FROM chat_messages", 6, 10 * SEC).await;
}

#[tokio::test]
async fn expiring_deletes_at_most_one_chunk_per_transaction() {
    let dir = tempfile::tempdir().unwrap();
    fill_old_and_new(dir.path()).await;
    let store = SqliteStore::open_lazy(&dir.path().join("chat.db"));
    store.migrate().await.unwrap();
    use twitch_chat_logger::store::Store;
    let e = store.expire_before(chrono::Utc::now() - chrono::Duration::days(30)).await.unwrap();
    assert_eq!(e.tables, vec![("chat_messages", 12_000), ("channel_notices", 1), ("dead_letters", 1)]);
    // 5,000 + 5,000 + 2,000 messages, then one each for notices, events (none) and dead letters.
    assert_eq!(e.transactions, 6);
    assert_eq!(count(&pool(dir.path()).await, "SELECT count(*) FROM chat_messages").await, 5);
}
