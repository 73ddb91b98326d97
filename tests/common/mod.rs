//! Shared test harness: a fresh database per test on the PostgreSQL that `scripts/test.sh`
//! started (or `DATABASE_URL`), the fake Twitch server, and the real logger binary.
#![allow(dead_code)]

pub mod backends;
pub mod cluster;
pub mod fake_twitch;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use fake_twitch::{msg_uuid, privmsg, FakeTwitch};

/// A database of the test's own, dropped (with the roles and other databases registered on
/// it) when the test ends, pass or fail. `KEEP_TEST_DBS=1` keeps them for a post-mortem.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub opts: PgConnectOptions,
    cleanup: Mutex<Vec<String>>,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with ./scripts/test.sh, which starts a throwaway PostgreSQL")
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> TestDb {
        let admin = PgConnectOptions::from_str(&admin_url()).unwrap();
        let mut conn = admin.connect().await.expect("connect to DATABASE_URL");
        let name = format!("tcl_{}_{}", std::process::id(), rand_suffix());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let opts = admin.clone().database(&name);
        let mut url = url::Url::parse(&admin_url()).unwrap();
        url.set_path(&name);
        let pool = PgPoolOptions::new().max_connections(3).connect_with(opts.clone()).await.unwrap();
        TestDb { name, url: url.to_string(), pool, opts, cleanup: Mutex::new(Vec::new()) }
    }

    /// Drops database `name` too when this one is dropped (one the test made the logger create).
    pub fn also_drop_database(&self, name: &str) {
        self.cleanup.lock().unwrap().push(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
    }

    /// Creates a login role unique to this test, dropped with the database; returns its name.
    /// `attrs` are extra role attributes, e.g. `CREATEDB`.
    pub async fn role(&self, suffix: &str, password: &str, attrs: &str) -> String {
        let role = format!("r_{}_{suffix}", self.name);
        let sql = format!("CREATE ROLE {role} LOGIN PASSWORD '{}' {attrs}", password.replace('\'', "''"));
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool).await.unwrap();
        self.cleanup.lock().unwrap().push(format!("DROP ROLE IF EXISTS {role}"));
        role
    }

    /// The original's POSTGRES_* variables for this database.
    pub fn postgres_env(&self) -> Vec<(String, String)> {
        let u = url::Url::parse(&self.url).unwrap();
        vec![
            ("POSTGRES_HOST".into(), u.host_str().unwrap().to_string()),
            ("POSTGRES_PORT".into(), u.port().unwrap_or(5432).to_string()),
            ("POSTGRES_DB".into(), self.name.clone()),
            ("POSTGRES_USER".into(), u.username().to_string()),
            ("POSTGRES_PASSWORD".into(), u.password().unwrap_or("").to_string()),
        ]
    }

    /// Applies the logger's migrations older than `version` only: a database as an older
    /// release of ours left it. Returns how many were applied.
    pub async fn migrate_before(&self, version: i64) -> usize {
        let old = sqlx::migrate::Migrator::with_migrations(
            twitch_chat_logger::store::postgres::MIGRATOR.iter().filter(|m| m.version < version).cloned().collect(),
        );
        old.run(&self.pool).await.unwrap();
        old.iter().count()
    }

    /// [`count_in`] this database.
    pub async fn count(&self, sql: &str) -> i64 {
        count_in(&self.pool, sql).await
    }

    /// [`wait_count_in`] this database.
    pub async fn wait_count(&self, sql: &str, n: i64, timeout: Duration) {
        wait_count_in(&self.pool, sql, n, timeout).await
    }
}

/// Chat message rows in the spool segments under `dir` (0 if there is none). Other rows (the
/// ROOMSTATE every JOIN brings, notices) are left out, so tests can count what they sent.
pub fn spool_rows(dir: &Path) -> usize {
    spool_rows_of(dir, |l| l.starts_with(r#"{"kind":"message""#))
}

/// Rows of every kind in the spool segments under `dir`.
pub fn spool_rows_all(dir: &Path) -> usize {
    spool_rows_of(dir, |_| true)
}

fn spool_rows_of(dir: &Path, want: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().lines().filter(|l| want(l)).count())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs a count on `pool` (any server, e.g. a [`cluster::Cluster`] the test restarts). The
/// logger reads Twitch before its migrations are done, so a table may not exist yet right after
/// a join: that waits (up to 10 s) instead of failing.
pub async fn count_in(pool: &PgPool, sql: &str) -> i64 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await {
            Ok(n) => return n,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// Waits until a count on `pool` reaches `n`; panics if it goes past `n`, or after `timeout`.
pub async fn wait_count_in(pool: &PgPool, sql: &str, n: i64, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let got = count_in(pool, sql).await;
        if got >= n {
            assert_eq!(got, n, "{sql}: more rows than expected");
            return;
        }
        if Instant::now() > end {
            panic!("timed out: {sql} = {got}, wanted {n}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DBS").is_some() {
            return;
        }
        // Databases first (a role cannot be dropped while it owns one); FORCE ends the sessions
        // a logger or this pool still holds.
        let mut sqls = vec![format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)];
        let extra = std::mem::take(&mut *self.cleanup.lock().unwrap());
        sqls.extend(extra.iter().filter(|s| s.starts_with("DROP DATABASE")).cloned());
        sqls.extend(extra.into_iter().filter(|s| !s.starts_with("DROP DATABASE")));
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut sqls = sqls;
                let Ok(mut conn) = PgConnectOptions::from_str(&admin_url()).unwrap().connect().await else { return };
                // Roles a test made by hand, named after its database (unique per test run).
                let roles: Vec<String> =
                    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE strpos(rolname, $1) > 0")
                        .bind(&name)
                        .fetch_all(&mut conn)
                        .await
                        .unwrap_or_default();
                sqls.extend(roles.iter().map(|r| format!("DROP ROLE IF EXISTS \"{r}\"")));
                sqls.dedup();
                for sql in sqls {
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await {
                        eprintln!("test cleanup: {sql}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}_{}", nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// The logger binary, running.
pub struct Logger {
    child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Builds a command for the real binary with a clean environment (no stray TWITCH_* or
/// POSTGRES_* from the developer's shell).
pub fn logger_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twitch-chat-logger"));
    c.env_clear();
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            c.env(keep, v);
        }
    }
    c.env("RUST_LOG", "info,twitch_chat_logger=debug");
    // Many loggers run at once in tests: each takes a free port.
    c.env("HTTP_LISTEN", "127.0.0.1:0");
    // Logged-in accounts validate their token: never at Twitch from a test. Nobody listens on
    // port 1, so validation fails at once and is retried with backoff, as when Twitch is down.
    c.env("TWITCH_AUTH_URL", "http://127.0.0.1:1");
    c.current_dir(cwd);
    c
}

/// The logger reading `path` (working directory: the file's folder) and writing to `db_url`.
pub fn file_mode(path: &Path, db_url: &str) -> Command {
    let mut c = logger_cmd(path.parent().expect("config in a folder"));
    c.arg("--config").arg(path).env("DATABASE_URL", db_url);
    c
}

impl Logger {
    /// Starts `cmd` with stderr captured line by line.
    pub fn spawn(mut cmd: Command) -> Logger {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start logger binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var("TEST_ECHO_LOGGER").is_ok() {
                    eprintln!("[logger] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Logger { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            if Instant::now() > end {
                panic!("timed out waiting for log line {needle:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for exit; returns the exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr thread catch up.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > end {
                panic!("logger did not exit within {timeout:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp dir with `config.toml` holding `toml`.
pub fn config_dir(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

/// The real Twitch lines in tests/fixtures/twitch-irc-samples.txt, by their `# kind` heading.
pub fn samples() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/twitch-irc-samples.txt");
    let text = std::fs::read_to_string(&path).expect("twitch-irc-samples.txt");
    let mut out = vec![];
    let mut kind = String::new();
    for line in text.lines() {
        if let Some(k) = line.strip_prefix("# ") {
            kind = k.to_string();
        } else if !line.trim().is_empty() && !kind.is_empty() {
            out.push((kind.clone(), line.to_string()));
        }
    }
    out
}

pub fn sample(kind: &str) -> String {
    samples().into_iter().find(|(k, _)| k == kind).unwrap_or_else(|| panic!("no sample {kind}")).1
}

/// The listener's address, from its start-up line.
pub async fn http_addr(logger: &Logger) -> String {
    logger.wait_log("health and metrics on http://", Duration::from_secs(15)).await;
    let log = logger.log_text();
    let rest = log.split("health and metrics on http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split(' ').nth(1).expect("a status line").parse().unwrap();
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Chat message number `i` of `#chan` (a UUID id made from `i`), saying `text`.
pub fn chat_message(i: usize, text: &str) -> twitch_chat_logger::store::ChatMessage {
    let now = chrono::Utc::now();
    twitch_chat_logger::store::ChatMessage {
        message_id: format!("00000000-0000-4000-8000-{i:012}"),
        channel: "chan".into(),
        username: "u".into(),
        text: text.into(),
        badges: "{}".into(),
        sent_at: now,
        received_at: now,
        ..Default::default()
    }
}
