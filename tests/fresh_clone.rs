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
    // `check --connect` before the first start: says so, creates nothing.
    let out = logger_cmd(clone.path()).args(["check", "--connect"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist yet (the logger creates it at start-up)"));
    assert!(!clone.path().join("data").exists(), "check created nothing");

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

    // `check --connect` finds the same file, migrated.
    let out = logger_cmd(clone.path()).args(["check", "--connect"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("url = \"sqlite://data/chat.db\"  # the embedded SQLite file"), "{said}");
    assert!(said.contains(&format!("# OK: SQLite file {} (SQLite 3.", abs.display())), "{said}");
    assert!(said.contains("schema up to date"), "{said}");
}

#[test]
fn docker_compose_keeps_postgresql_through_its_environment() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    // The logger's environment as compose sets it with an empty .env: `${VAR:-default}` → default.
    let env: std::collections::HashMap<String, String> = doc["services"]["logger"]["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().map(str::to_string).or_else(|| v.as_i64().map(|n| n.to_string())).unwrap_or_default();
            let v = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(inner) => inner.split_once(":-").map(|(_, d)| d.to_string()).unwrap_or_default(),
                None => v,
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect();
    let cfg = twitch_chat_logger::config::load(Some(&root.join("config/config.toml")), &|k: &str| env.get(k).cloned())
        .unwrap();
    match cfg.startup.database {
        twitch_chat_logger::config::DatabaseConfig::Fields { host, name, .. } => {
            assert_eq!((host.as_str(), name.as_str()), ("db", "twitch"))
        }
        other => panic!("compose must log into its PostgreSQL, not {other:?}"),
    }
    // And without those variables the same file means the SQLite file.
    let cfg = twitch_chat_logger::config::load(Some(&root.join("config/config.toml")), &|_: &str| None).unwrap();
    assert_eq!(cfg.startup.database, twitch_chat_logger::config::DatabaseConfig::Sqlite("data/chat.db".into()));
}
