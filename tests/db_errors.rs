//! Start-up errors: what waiting can fix is retried and logged in plain words; what it cannot
//! fix stops the logger at once with one line that says what to do. Real PostgreSQL (the
//! throwaway one, password auth; a trust-auth cluster where the role must be told apart), and
//! fake servers on 127.0.0.1 for a server starting up or hung.

mod common;

use common::cluster::Cluster;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(1);

/// The logger in env-only mode against `host:port/name` as `user`/`password`, at the default
/// log level. Twitch is a closed local port: nothing leaves 127.0.0.1.
fn cmd(host: &str, port: u16, name: &str, user: &str, password: &str, args: &[&str]) -> Command {
    let dir = std::env::temp_dir();
    let mut c = logger_cmd(&dir);
    c.env("RUST_LOG", "info");
    c.env("TWITCH_USERNAME", "loggerbot").env("TWITCH_OAUTH_TOKEN", "tok").env("TWITCH_CHANNELS", "chan");
    c.env("TWITCH_IRC_SERVER", "irc://127.0.0.1:9");
    c.env("POSTGRES_HOST", host).env("POSTGRES_PORT", port.to_string()).env("POSTGRES_DB", name);
    c.env("POSTGRES_USER", user).env("POSTGRES_PASSWORD", password);
    c.args(args);
    c
}

/// Like [`cmd`], for the test's database.
fn db_cmd(db: &TestDb, user: &str, password: &str, args: &[&str]) -> Command {
    let u = url::Url::parse(&db.url).unwrap();
    cmd(u.host_str().unwrap(), u.port().unwrap(), &db.name, user, password, args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs to exit (within 20 s, so a retry loop fails the test instead of hanging it).
async fn run(mut c: Command) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let mut logger = Logger::spawn({
        c.stdout(std::process::Stdio::null());
        c
    });
    let code = logger.wait_exit(20 * SEC).await;
    (Some(code), logger.log_text(), t0.elapsed())
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ERROR")).collect()
}

#[tokio::test]
async fn a_wrong_password_stops_the_logger_at_once_with_what_to_do() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let role = db.role("pw", "right-one", "").await;
    let mut c = db_cmd(&db, &role, "Wr0ng-S3cret", &[]);
    c.env("TWITCH_IRC_SERVER", fake.url());
    let (code, log, took) = run(c).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(took < 10 * SEC, "took {took:?}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains(&format!("wrong password for role \"{role}\"")), "{log}");
    assert!(errors[0].contains("(28P01)") && errors[0].contains("POSTGRES_PASSWORD"), "{log}");
    assert!(!log.contains("retrying") && !log.contains("Wr0ng-S3cret"), "{log}");
}

#[tokio::test]
async fn a_role_that_does_not_exist_stops_with_how_to_create_it() {
    // Password auth answers "password authentication failed" for a missing role too (it does
    // not tell), so this needs a trust-auth server, where PostgreSQL names the missing role.
    let cluster = Cluster::start_new();
    let (code, log, _) = run(cmd("127.0.0.1", cluster.port, "postgres", "nosuchrole", "x", &["migrate"])).await;
    assert_eq!(code, Some(1), "{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("role \"nosuchrole\" does not exist") && errors[0].contains("createuser"), "{log}");
}

#[tokio::test]
async fn a_missing_database_is_created_when_the_role_may_and_the_log_says_so() {
    let db = TestDb::new().await;
    let role = db.role("cdb", "pw", "CREATEDB").await;
    let name = format!("{}_made", db.name);
    db.also_drop_database(&name);
    let u = url::Url::parse(&db.url).unwrap();
    let (code, log, _) = run(cmd(u.host_str().unwrap(), u.port().unwrap(), &name, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(&format!("database \"{name}\" did not exist; created it")), "{log}");
    assert_eq!(db.count(&format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).await, 1);
}

#[tokio::test]
async fn a_missing_database_the_role_may_not_create_stops_with_the_createdb_command() {
    let db = TestDb::new().await;
    let role = db.role("nocdb", "pw", "").await;
    let u = url::Url::parse(&db.url).unwrap();
    let name = format!("{}_absent", db.name);
    let (code, log, _) = run(cmd(u.host_str().unwrap(), u.port().unwrap(), &name, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(1), "{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    let want = format!(
        "database \"{name}\" does not exist — create it with createdb -h 127.0.0.1 -p {} -U {role} {name}, or let the logger create it",
        u.port().unwrap()
    );
    assert!(errors[0].contains(&want), "{log}");
    assert_eq!(db.count(&format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).await, 0);
}

#[tokio::test]
async fn a_migration_meeting_an_unexpected_shape_stops_naming_it_and_changes_nothing() {
    let admin = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    let (user, password) = (admin.username().to_string(), admin.password().unwrap_or("").to_string());
    for (change, want) in [
        (
            "ALTER TABLE channel_notices ALTER COLUMN tags DROP DEFAULT, ALTER COLUMN tags TYPE text",
            "column channel_notices.tags is text, expected jsonb",
        ),
        (
            "DROP VIEW v_last_messages; ALTER TABLE chat_messages ALTER COLUMN bits TYPE text;
             CREATE VIEW v_last_messages AS SELECT * FROM chat_messages ORDER BY sent_at DESC NULLS LAST, id DESC",
            "column chat_messages.bits is text, expected integer",
        ),
        (
            "CREATE VIEW my_report AS SELECT channel, count(*) FROM v_last_messages GROUP BY channel",
            "view v_last_messages must be replaced to upgrade this database, but other objects depend on it",
        ),
        (
            "ALTER TABLE chat_messages ADD COLUMN shard int NOT NULL",
            "column chat_messages.shard is NOT NULL without a default",
        ),
    ] {
        let db = TestDb::new().await;
        sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&db.pool).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(change)).execute(&db.pool).await.unwrap();
        let (code, log, _) = run(db_cmd(&db, &user, &password, &["migrate"])).await;
        assert_eq!(code, Some(1), "{change}: {log}");
        let errors = error_lines(&log);
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains(want), "{change}: {log}");
        assert!(!log.contains("retrying"), "{log}");
        // One transaction: the original's view is still there, nothing was recorded or added.
        assert_eq!(db.count("SELECT count(*) FROM pg_views WHERE viewname = 'v_last_messages'").await, 1);
        assert_eq!(
            db.count("SELECT count(*) FROM pg_tables WHERE tablename IN ('_sqlx_migrations', 'dead_letters')").await,
            0
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_logged_as_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut logger = Logger::spawn(cmd("127.0.0.1", port, "twitch", "u", "p", &["migrate"]));
    logger.wait_log(&format!("connection refused by 127.0.0.1:{port}"), 5 * SEC).await;
    tokio::time::sleep(SEC).await;
    assert!(logger.is_running(), "still waiting for the database");
    let log = logger.log_text();
    assert!(log.contains("database not ready yet") && log.contains("retrying"), "{log}");
    assert!(!log.contains("pool timed out"), "{log}");
}

/// Reads one length-prefixed packet; returns its first four bytes (the request code).
async fn read_packet(sock: &mut tokio::net::TcpStream) -> Option<u32> {
    let len = sock.read_u32().await.ok()?;
    let mut body = vec![0; len.checked_sub(4)? as usize];
    sock.read_exact(&mut body).await.ok()?;
    Some(u32::from_be_bytes(body.get(..4)?.try_into().ok()?))
}

/// A fake PostgreSQL on 127.0.0.1: answers every login with `error` (SQLSTATE, message), or
/// with nothing at all when `error` is `None` (a hung server).
async fn fake_postgres(error: Option<(&'static str, &'static str)>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // SSLRequest → "N" (no TLS), then the startup packet.
                if read_packet(&mut sock).await == Some(80877103) {
                    sock.write_all(b"N").await.ok();
                    read_packet(&mut sock).await;
                }
                match error {
                    Some((code, message)) => {
                        let mut fields = Vec::new();
                        for (t, v) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
                            fields.push(t);
                            fields.extend_from_slice(v.as_bytes());
                            fields.push(0);
                        }
                        fields.push(0);
                        let mut msg = vec![b'E'];
                        msg.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                        msg.extend_from_slice(&fields);
                        sock.write_all(&msg).await.ok();
                    }
                    None => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_server_starting_up_is_retried_and_a_hung_one_counts_as_a_timeout() {
    let starting = fake_postgres(Some(("57P03", "the database system is starting up"))).await;
    let hung = fake_postgres(None).await;
    let mut a = Logger::spawn(cmd("127.0.0.1", starting, "twitch", "u", "p", &["migrate"]));
    let mut b = Logger::spawn(cmd("127.0.0.1", hung, "twitch", "u", "p", &["migrate"]));
    a.wait_log("database not ready yet (the database system is starting up (57P03))", 5 * SEC).await;
    b.wait_log(&format!("database not ready yet (timeout: no answer from 127.0.0.1:{hung} within 5s)"), 10 * SEC).await;
    tokio::time::sleep(SEC).await;
    assert!(a.is_running() && b.is_running(), "both keep waiting");
}

#[tokio::test]
async fn sqlx_notices_about_existing_tables_are_not_logged_at_the_default_level() {
    let db = TestDb::new().await;
    let admin = url::Url::parse(&db.url).unwrap();
    for _ in 0..2 {
        let mut c = db_cmd(&db, admin.username(), admin.password().unwrap_or(""), &["migrate"]);
        c.env_remove("RUST_LOG");
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("already exists"), "{}", stderr(&out));
    }
    assert_eq!(db.count("SELECT count(*) FROM _sqlx_migrations").await, migrations());
}

#[tokio::test]
async fn check_connect_logs_in_once_and_says_what_is_wrong() {
    let db = TestDb::new().await;
    let role = db.role("chk", "good", "").await;
    let out = db_cmd(&db, &role, "good", &["check", "--connect"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout.contains(&format!("# OK: logged in to {role}@127.0.0.1")), "{stdout}");
    assert!(stdout.contains(&format!("0 of {} migrations applied", migrations())), "{stdout}");

    let t0 = Instant::now();
    let out = db_cmd(&db, &role, "bad-pass", &["check", "--connect"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("wrong password for role"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("bad-pass"));
    assert!(t0.elapsed() < 5 * SEC, "no retry");

    // Without --connect, check stays offline.
    let out = db_cmd(&db, &role, "bad-pass", &["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn a_role_with_the_documented_privileges_migrates_and_an_upgrade_needs_the_tables_owned() {
    let db = TestDb::new().await;
    let role = db.role("min", "pw", "").await;
    for sql in [
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap();
    }
    let (code, log, _) = run(db_cmd(&db, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(0), "{log}");

    // The original's tables, owned by another role: the upgrade says which privilege is missing.
    let old = TestDb::new().await;
    let role = old.role("up", "pw", "").await;
    sqlx::raw_sql(include_str!("fixtures/original_init.sql")).execute(&old.pool).await.unwrap();
    for sql in [
        format!("GRANT CONNECT ON DATABASE {} TO {role}", old.name),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&old.pool).await.unwrap();
    }
    let (code, log, _) = run(db_cmd(&old, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("must be owner") && log.contains("(42501)"), "{log}");
    for rel in ["TABLE chat_messages", "TABLE channel_notices", "VIEW v_last_messages"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER {rel} OWNER TO {role}"))).execute(&old.pool).await.unwrap();
    }
    let (code, log, _) = run(db_cmd(&old, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn a_table_locked_by_another_session_is_waited_for_then_the_migration_completes() {
    let db = TestDb::new().await;
    db.migrate_before(20261130000000).await;
    // A hung session: an open transaction holding the table the next migration alters.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE channel_notices IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let admin = url::Url::parse(&db.url).unwrap();
    let mut logger = Logger::spawn(db_cmd(&db, admin.username(), admin.password().unwrap_or(""), &["migrate"]));
    logger.wait_log("another session holds a lock the migration needs", 20 * SEC).await;
    assert!(logger.is_running(), "waits instead of giving up");
    blocker.commit().await.unwrap();
    assert_eq!(logger.wait_exit(30 * SEC).await, 0, "{}", logger.log_text());
    assert_eq!(db.count("SELECT count(*) FROM _sqlx_migrations").await, migrations());
}

#[tokio::test]
async fn a_role_that_only_writes_runs_on_a_database_its_owner_migrated() {
    let db = TestDb::new().await;
    twitch_chat_logger::store::postgres::PgStore::new(db.pool.clone()).migrate().await.unwrap();
    let role = db.role("w", "pw", "").await;
    for sql in [
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
        format!("GRANT SELECT, INSERT ON chat_messages, channel_notices, dead_letters TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap();
    }
    let (code, log, _) = run(db_cmd(&db, &role, "pw", &["migrate"])).await;
    assert_eq!(code, Some(0), "{log}");

    // It writes messages and notices (dedupe included) with only those grants.
    let opts = db.opts.clone().username(&role).password("pw");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(opts).await.unwrap();
    let store = twitch_chat_logger::store::postgres::PgStore::new(pool.clone());
    let line = "@msg-id=msg_x :tmi.twitch.tv NOTICE #chan :hello";
    let msg =
        twitch_irc::message::ServerMessage::try_from(twitch_irc::message::IRCMessage::parse(line).unwrap()).unwrap();
    let Some(twitch_chat_logger::store::Record::Notice(n)) =
        twitch_chat_logger::twitch::convert::to_record(msg, chrono::Utc::now())
    else {
        panic!("a notice")
    };
    let batch = twitch_chat_logger::store::Batch { notices: vec![n], ..Default::default() };
    use twitch_chat_logger::store::Store;
    store.write(&batch).await.unwrap();
    store.write(&batch).await.unwrap();
    pool.close().await;
    assert_eq!(db.count("SELECT count(*) FROM channel_notices").await, 1);
}

/// How many migrations this version has.
fn migrations() -> i64 {
    twitch_chat_logger::store::postgres::MIGRATOR.iter().count() as i64
}
