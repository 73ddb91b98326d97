//! Attacks on the database side: a dead-letter insert that itself fails.

mod common;

use common::*;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

/// A row PostgreSQL refuses goes to `dead_letters`; if that insert fails too with an error
/// counted as "the database's state" (here: an admin dropped the table as unused; a missing
/// INSERT grant does the same), the writer retries that one dead letter forever, and no row
/// after it is stored. Measured: 1 refused row, then 20 good rows sent: 0 stored after 15 s.
#[tokio::test]
async fn a_dead_letter_insert_that_fails_does_not_stop_later_rows_from_being_stored() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let spool = tempfile::tempdir().unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[http]\nlisten = \"off\"\n[batch]\nspool_dir = \"{}\"\nmax_rows = 100\nflush_interval = \"200ms\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        spool.path().display()
    ));
    let mut logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    db.wait_count("SELECT count(*) FROM pg_tables WHERE tablename = 'dead_letters'", 1, 5 * SEC).await;
    sqlx::raw_sql(
        "ALTER TABLE chat_messages ADD CONSTRAINT no_poison CHECK (text <> 'poison'); DROP TABLE dead_letters",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    fake.to_channel("chan", &privmsg("chan", "dl-poison", "Eve", "poison"));
    tokio::time::sleep(SEC).await;
    for i in 0..20 {
        fake.to_channel("chan", &privmsg("chan", &format!("dl-{i}"), "Ivy", "fine"));
    }
    let end = std::time::Instant::now() + 15 * SEC;
    let mut stored = 0;
    while std::time::Instant::now() < end {
        stored = db.count("SELECT count(*) FROM chat_messages").await;
        if stored == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retries = logger.log_text().lines().filter(|l| l.contains("will retry")).count();
    eprintln!(
        "dead_letters gone: 1 refused row, 20 good rows sent, {stored} stored after 15 s; {retries} retry warnings"
    );
    assert_eq!(stored, 20, "rows after the refused one were not stored");
    let kept = std::fs::read_to_string(spool.path().join("dead_letters.jsonl")).unwrap_or_default();
    assert_eq!(kept.lines().count(), 1, "the refused row is kept beside the spool: {kept}");
    assert!(kept.contains("no_poison") && kept.contains("dead_letters"), "{kept}");
    logger.signal("TERM");
    let code = logger.wait_exit(30 * SEC).await;
    eprintln!("exit {code}; last line: {}", logger.log_text().lines().last().unwrap_or(""));
}
