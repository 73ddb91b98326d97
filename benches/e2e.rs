//! End-to-end benchmark: a fake Twitch server on loopback floods realistic tagged PRIVMSGs at
//! the real logger binary, which writes to a real PostgreSQL; in the same run, the database-only
//! limit and a 100-row `INSERT … VALUES` baseline writer store the same rows. Prints figures.
//!
//! Run: `./scripts/bench.sh` (starts a throwaway PostgreSQL), options after `--`:
//!   --messages N (1000000)  --accounts A (4)  --channels C (20)
//!   --mode flood|quiet|steady|paths|both|all (both = flood + quiet; all = every mode)
//!   --quiet-seconds S (30)  --quiet-channels Q (1000)  --quiet-rate R (1000 msg/s)
//!   --store sqlite: the flood into the embedded SQLite file instead (no PostgreSQL needed:
//!   `cargo bench --bench e2e -- --store sqlite --messages 200000`), against the SQLite-only
//!   limit (the same rows through the store's insert in 5000-row transactions, same file
//!   settings and indexes), with the logger's CPU per message and the file size per million.
//!   --table partitioned|unpartitioned|both (both): the flood into time-partitioned tables (a
//!   fresh database) and into unpartitioned ones (as a database from before #15), with the size
//!   on disk per million messages of each. --rounds N: N floods per layout, alternating which
//!   goes first, then the medians and partitioned / unpartitioned.
//!   --queries: instead, fills a partitioned database with --query-rows rows (10,000,000) by
//!   `generate_series` over 30 days and prints `EXPLAIN ANALYZE` (plan and time) of "the last
//!   hour of one channel" and "one user's last 100 messages".
//!   --steady-rate R (2000 msg/s) --steady-seconds S (20)  --setup-sql FILE (run on every
//!   fresh database after the migrations, e.g. to partition `chat_messages`)

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use twitch_chat_logger::config::PartitionInterval;
use twitch_chat_logger::store::pg_partition;
use twitch_chat_logger::store::postgres::{PgStore, MIGRATOR};
use twitch_chat_logger::store::{Batch, ChatMessage};

/// End-to-end benchmark of the logger (see the module doc).
#[derive(clap::Parser)]
struct Args {
    /// Set by `cargo bench`; without it (`cargo test --all-targets`) the benchmark does nothing.
    #[arg(long, hide = true)]
    bench: bool,
    /// Messages in the flood.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Logged-in accounts reading the flood.
    #[arg(long, default_value_t = 4)]
    accounts: usize,
    /// Channels the flood is spread over.
    #[arg(long, default_value_t = 20)]
    channels: usize,
    /// flood, quiet or both.
    #[arg(long, default_value = "both", value_parser = ["flood", "quiet", "steady", "paths", "both", "all"])]
    mode: String,
    /// Messages per second in the steady (latency) run, over `--channels` channels.
    #[arg(long, default_value_t = 2000)]
    steady_rate: usize,
    /// Length of the steady run.
    #[arg(long, default_value_t = 20)]
    steady_seconds: u64,
    /// SQL run on every fresh database after the migrations (e.g. partitioning the table), so
    /// that one run measures that layout.
    #[arg(long)]
    setup_sql: Option<std::path::PathBuf>,
    /// Length of the quiet run.
    #[arg(long, default_value_t = 30)]
    quiet_seconds: u64,
    /// Channels joined in the quiet run.
    #[arg(long, default_value_t = 1000)]
    quiet_channels: usize,
    /// Messages per second in the quiet run.
    #[arg(long, default_value_t = 1000)]
    quiet_rate: usize,
    /// Where the logger writes: postgres, or sqlite (the flood only).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "sqlite"])]
    store: String,
    /// The logger binary to measure (default: the one this build made), e.g. an older build
    /// to compare against.
    #[arg(long)]
    logger: Option<std::path::PathBuf>,
    /// The flood into partitioned tables, unpartitioned ones, or both.
    #[arg(long, default_value = "both", value_parser = ["partitioned", "unpartitioned", "both"])]
    table: String,
    /// Only the query timings at --query-rows rows (see the module doc).
    #[arg(long)]
    queries: bool,
    /// Rows for --queries.
    #[arg(long, default_value_t = 10_000_000)]
    query_rows: i64,
    /// Floods per table layout, alternating partitioned and unpartitioned; with more than one,
    /// a summary of the medians follows (the machine's load drifts: one pair is not enough to
    /// compare the layouts).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

fn args() -> Option<Args> {
    use clap::Parser;
    let a = Args::parse();
    if !a.bench {
        println!("e2e benchmark: run it with ./scripts/bench.sh (or cargo bench --bench e2e)");
        return None;
    }
    Some(a)
}

/// A line as Twitch sends it; `ts` is when it leaves the server (ms), `i` makes it unique.
/// A 13-digit `tmi-sent-ts` the flood overwrites in place with the time each chunk is sent.
const TS_PLACEHOLDER: i64 = 1_000_000_000_000;

fn line(channel: &str, i: usize, ts: i64) -> String {
    let user = format!("viewer{}", i % 5000);
    format!(
        "@badge-info=subscriber/14;badges=subscriber/12,premium/1;client-nonce=9b4f3c2a1d;color=#1E90FF;display-name=Viewer{u};emotes=25:0-4;first-msg=0;flags=;id={i:08x}-5f1c-4a2e-9d1e-3c7b2a1f0e9d;mod=0;returning-chatter=0;room-id=123456;subscriber=1;tmi-sent-ts={ts};turbo=0;user-id={uid};user-type= :{user}!{user}@{user}.tmi.twitch.tv PRIVMSG #{channel} :Kappa that play was something else, gg {i}\r\n",
        u = i % 5000,
        uid = 100000 + i % 5000,
    )
}

/// The fake server: handshake, JOIN confirmations, and a per-connection writer the flood uses.
#[derive(Clone, Default)]
struct Server {
    /// channel → writer of the connection that joined it
    joined: Arc<Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>>,
}

impl Server {
    async fn start(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                sock.set_nodelay(true).ok();
                let (r, mut w) = sock.into_split();
                let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
                tokio::spawn(async move {
                    while let Some(buf) = rx.recv().await {
                        if w.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                });
                let joined = me.joined.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(r).lines();
                    let mut nick = String::new();
                    while let Ok(Some(l)) = lines.next_line().await {
                        let (cmd, rest) = l.split_once(' ').unwrap_or((&l, ""));
                        let reply = match cmd {
                            "NICK" => {
                                nick = rest.to_string();
                                format!(":tmi.twitch.tv 001 {nick} :Welcome, GLHF!\r\n:tmi.twitch.tv 376 {nick} :>\r\n")
                            }
                            "JOIN" => {
                                let ch = rest.trim_start_matches('#').to_string();
                                joined.lock().unwrap().insert(ch.clone(), tx.clone());
                                format!(":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{ch}\r\n")
                            }
                            "PING" => ":tmi.twitch.tv PONG tmi.twitch.tv\r\n".to_string(),
                            _ => continue,
                        };
                        if tx.send(reply.into_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    fn joined(&self) -> usize {
        self.joined.lock().unwrap().len()
    }

    fn writer(&self, channel: &str) -> mpsc::Sender<Vec<u8>> {
        self.joined.lock().unwrap()[channel].clone()
    }
}

async fn fresh_db(admin: &str, name: &str) -> (PgPool, String) {
    let opts = PgConnectOptions::from_str(admin).unwrap();
    let mut conn = opts.connect().await.unwrap();
    for sql in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    }
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(name);
    let pool = PgPoolOptions::new().max_connections(4).connect(url.as_str()).await.unwrap();
    if !PARTITIONED.load(Ordering::Relaxed) {
        // As a database from before partitions: the partitioning migration leaves a table that
        // holds a row alone (this one, sent in 2000, not counted).
        let old = sqlx::migrate::Migrator::with_migrations(
            MIGRATOR.iter().filter(|m| m.version < 20261130000600).cloned().collect(),
        );
        old.run(&pool).await.unwrap();
        sqlx::query("INSERT INTO chat_messages (message_id, channel, username, text, sent_at) VALUES ($1, 'x', 'x', 'x', '2000-01-01')").bind(SENTINEL)
            .execute(&pool)
            .await
            .unwrap();
    }
    // The partitions made ahead, as the logger's start-up does.
    PgStore::new(pool.clone()).migrate().await.unwrap();
    if let Some(sql) = SETUP_SQL.get() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await.expect("--setup-sql");
    }
    // Every measurement starts after a checkpoint: the WAL of the one before would otherwise be
    // flushed during it (needs a superuser, as the throwaway server's is; else skipped).
    let _ = sqlx::query("CHECKPOINT").execute(&pool).await;
    (pool, url.to_string())
}

/// Whether the databases made from here on are partitioned (`--table`).
static PARTITIONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The row that keeps an unpartitioned database unpartitioned.
const SENTINEL: &str = "bench-unpartitioned";

/// Bytes of a table with its indexes (over all partitions).
async fn table_bytes(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
         WHERE c.oid = $1::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the ")", field 1 is state: utime and stime are fields 12 and 13 here.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

fn rss_now(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM chat_messages WHERE message_id <> '{SENTINEL}'"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// p50 and p99 of commit time − sent time, in ms (needs track_commit_timestamp = on).
async fn latency(pool: &PgPool) -> Option<(f64, f64)> {
    sqlx::query_as::<_, (Option<f64>, Option<f64>)>(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l)
         FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - sent_at) * 1000 AS l FROM chat_messages) x",
    )
    .fetch_one(pool)
    .await
    .ok()
    .and_then(|(a, b)| Some((a?, b?)))
}

struct Logger {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// Where its `/metrics` answers.
    metrics: std::net::SocketAddr,
}

impl Logger {
    /// Messages it has stored so far, from its own `/metrics`: polling `count(*)` on the table
    /// instead would cost the database a scan of a growing table every poll, time the
    /// database-only figures do not pay.
    async fn stored(&self) -> Option<u64> {
        self.metric("twitch_logger_messages_stored_total{kind=\"message\"}").await
    }

    /// Waits until `/readyz` answers 200 (migrations done, database reachable): a flood sent
    /// before that piles up in memory and goes through the spool, which measures start-up, not
    /// writing.
    async fn wait_ready(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t0 = Instant::now();
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(self.metrics).await {
                let _ = s.write_all(b"GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n").await;
                let mut body = String::new();
                let _ = s.read_to_string(&mut body).await;
                if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                    return;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "the logger was not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One series of its `/metrics`.
    async fn metric(&self, series: &str) -> Option<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// `--setup-sql`'s text, when given.
static SETUP_SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `--logger`, when given.
static LOGGER_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn start_logger(port: u16, db_url: &str, accounts: &[(String, Vec<String>)], join_rate: &str) -> Logger {
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut toml = format!(
        "[twitch]\nserver = \"irc://127.0.0.1:{port}\"\n[http]\nlisten = \"{metrics}\"\napi = false\n[batch]\nspool_dir = \"{}\"\n",
        dir.path().join("spool").display()
    );
    // `BENCH_RAW_LINES=1`: measure `[storage] raw_lines` (the exact line kept per row).
    if std::env::var("BENCH_RAW_LINES").is_ok() {
        toml.push_str("[storage]\nraw_lines = true\n");
    }
    for (i, (name, channels)) in accounts.iter().enumerate() {
        let list: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
        toml.push_str(&format!(
            "[accounts.{name}]\nusername = \"{name}\"\noauth_token = \"tok{i}\"\njoin_rate = \"{join_rate}\"\n[groups.{name}]\naccounts = [\"{name}\"]\nchannels = [{}]\n",
            list.join(",")
        ));
    }
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let bin = LOGGER_BIN.get().cloned().unwrap_or_else(|| env!("CARGO_BIN_EXE_twitch-chat-logger").into());
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .env("DATABASE_URL", db_url)
        // Token validation goes nowhere (no one listens on port 1), never to Twitch.
        .env("TWITCH_AUTH_URL", "http://127.0.0.1:1")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn,twitch_chat_logger::twitch::auth=error".into()),
        )
        .current_dir(dir.path())
        .spawn()
        .expect("logger binary");
    Logger { child, _dir: dir, metrics }
}

fn rows(n: usize, channels: usize) -> Vec<ChatMessage> {
    let now = Utc::now();
    (0..n)
        .map(|i| ChatMessage {
            message_id: format!("{i:08x}-5f1c-4a2e-9d1e-3c7b2a1f0e9d"),
            channel: format!("chan{}", i % channels),
            room_id: Some("123456".into()),
            user_id: Some(format!("{}", 100000 + i % 5000)),
            username: format!("viewer{}", i % 5000),
            display_name: Some(format!("Viewer{}", i % 5000)),
            text: format!("Kappa that play was something else, gg {i}"),
            badges: r#"{"premium":1,"subscriber":12}"#.into(),
            badge_info: None,
            color: Some("#1E90FF".into()),
            is_mod: false,
            is_subscriber: true,
            bits: 0,
            is_action: false,
            emotes: Some("25:0-4".into()),
            first_msg: Some(false),
            reply_parent_msg_id: None,
            reply_parent_user_login: None,
            sent_at: now,
            received_at: now,
            ..Default::default()
        })
        .collect()
}

/// Rows per transaction for the database-only limit (the size the issue measured best).
const LIMIT_BATCH: usize = 5000;

/// How the database-only runs write.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// `UNNEST … ON CONFLICT DO NOTHING` (the safe path before this change).
    Unnest,
    /// Binary COPY into a staging table, `INSERT … SELECT … ON CONFLICT DO NOTHING`.
    Staged,
    /// The logger's live path: recent-id dedupe, then binary COPY straight into the table.
    Direct,
    /// Plain binary COPY straight into the table, no dedupe at all (`psql \copy`).
    Plain,
}

/// The database-only limit: the same rows, 5000-row set-based `UNNEST … ON CONFLICT DO NOTHING`
/// transactions, on `conns` connections at once, no logger.
async fn db_only(admin: &str, all: &[ChatMessage], conns: usize) -> f64 {
    db_way(admin, all, conns, LIMIT_BATCH, Way::Unnest).await
}

/// `all` written in `batch`-row transactions on `conns` connections, the `way` given.
async fn db_way(admin: &str, all: &[ChatMessage], conns: usize, batch_rows: usize, way: Way) -> f64 {
    let (pool, _) = fresh_db(admin, &format!("bench_limit_{conns}")).await;
    let store = PgStore::new(pool);
    let store = Arc::new(match way {
        Way::Unnest => store.with_direct_copy(false).with_staged_from(usize::MAX),
        Way::Staged => store.with_direct_copy(false).with_staged_from(0),
        Way::Direct | Way::Plain => store.with_direct_copy(true),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let all = Arc::new(all.to_vec());
    for _ in 0..conns {
        let (store, next, all) = (store.clone(), next.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch_rows, Ordering::Relaxed);
                if start >= all.len() {
                    break;
                }
                let rows = &all[start..(start + batch_rows).min(all.len())];
                if let Way::Plain = way {
                    store.copy_plain("chat_messages", rows).await.unwrap();
                    continue;
                }
                let batch = Batch { messages: rows.to_vec(), ..Batch::default() };
                store.write_one(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    all.len() as f64 / t0.elapsed().as_secs_f64()
}

/// The original's way: 100-row multi-row INSERT … VALUES … ON CONFLICT DO NOTHING, one connection.
async fn baseline(admin: &str, all: &[ChatMessage]) -> f64 {
    let (pool, _) = fresh_db(admin, "bench_baseline").await;
    let t0 = Instant::now();
    for chunk in all.chunks(100) {
        let mut qb = sqlx::QueryBuilder::new(
            "INSERT INTO chat_messages (message_id, channel, user_id, username, display_name, text, badges, color, is_mod, is_subscriber, bits, sent_at, received_at) ",
        );
        qb.push_values(chunk, |mut b, m| {
            b.push_bind(&m.message_id)
                .push_bind(&m.channel)
                .push_bind(&m.user_id)
                .push_bind(&m.username)
                .push_bind(&m.display_name)
                .push_bind(&m.text)
                .push_bind(serde_json::from_str::<serde_json::Value>(&m.badges).unwrap())
                .push_bind(&m.color)
                .push_bind(m.is_mod)
                .push_bind(m.is_subscriber)
                .push_bind(m.bits)
                .push_bind(m.sent_at)
                .push_bind(m.received_at);
        });
        // No conflict target: the same text on a partitioned table (key (message_id, sent_at)).
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&pool).await.unwrap();
    }
    all.len() as f64 / t0.elapsed().as_secs_f64()
}

struct Setup {
    server: Server,
    pool: PgPool,
    channels: Vec<String>,
    accounts: Vec<(String, Vec<String>)>,
    logger: Logger,
}

/// A fake server, a fresh database and the logger, with `n_channels` spread over `n_accounts`
/// (at a verified bot's JOIN rate, so that joining is not what is measured).
async fn setup(admin: &str, db: &str, prefix: &str, n_channels: usize, n_accounts: usize) -> Setup {
    let server = Server::default();
    let port = server.start().await;
    let (pool, url) = fresh_db(admin, db).await;
    let channels: Vec<String> = (0..n_channels).map(|i| format!("{prefix}{i}")).collect();
    let accounts: Vec<(String, Vec<String>)> = (0..n_accounts)
        .map(|k| (format!("bot{k}"), channels.iter().skip(k).step_by(n_accounts).cloned().collect()))
        .collect();
    let logger = start_logger(port, &url, &accounts, "1000/1s");
    logger.wait_ready().await;
    Setup { server, pool, channels, accounts, logger }
}

/// Medians over the rounds, per layout, and partitioned against unpartitioned.
fn summary(runs: &[(&str, f64, Option<f64>)]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    println!("== summary over {} floods (medians)", runs.len());
    let mut medians = Vec::new();
    for label in ["partitioned", "unpartitioned"] {
        let rates: Vec<f64> = runs.iter().filter(|r| r.0 == label).map(|r| r.1).collect();
        if rates.is_empty() {
            continue;
        }
        let ratios: Vec<f64> = runs.iter().filter(|r| r.0 == label).filter_map(|r| r.2.map(|c| r.1 / c)).collect();
        let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let m = median(rates);
        medians.push(m);
        if ratios.is_empty() {
            println!("{label:>14}: end to end {m:.0} msg/s (runs: {})", each.join(", "));
        } else {
            println!(
                "{label:>14}: end to end {m:.0} msg/s (runs: {}), end to end / its run's ceiling {:.2}",
                each.join(", "),
                median(ratios)
            );
        }
    }
    if let [p, u] = medians[..] {
        println!("partitioned / unpartitioned: {:.2} (target ≥ 0.90)", p / u);
    }
}

/// One flood; returns end-to-end msg/s and the physical ceiling of the same run (unless
/// `BENCH_SKIP_BASELINES`).
async fn flood(a: &Args, admin: &str) -> (f64, Option<f64>) {
    let n = a.messages;
    println!("== flood: {n} messages, {} accounts, {} channels", a.accounts, a.channels);
    let Setup { server, pool, accounts, logger, .. } =
        setup(admin, "bench_logger", "chan", a.channels, a.accounts).await;
    let pid = logger.child.id();
    while server.joined() < a.channels {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lines are formatted before the clock starts (Twitch formats them on its own
    // machines); each 256-line chunk gets its `tmi-sent-ts` written in place as it is sent.
    let mut plans = Vec::new();
    for (k, (_, chans)) in accounts.iter().enumerate() {
        let writers: Vec<(String, mpsc::Sender<Vec<u8>>)> =
            chans.iter().map(|c| (c.clone(), server.writer(c))).collect();
        let per = n / a.accounts + usize::from(k < n % a.accounts);
        let mut chunks: Vec<(usize, Vec<u8>, Vec<usize>)> = Vec::new();
        let mut j = 0;
        while j < per {
            let w = (j / 256) % writers.len();
            let mut buf = Vec::with_capacity(256 * 450);
            let mut ts_at = Vec::with_capacity(256);
            for _ in 0..256.min(per - j) {
                let l = line(&writers[w].0, k + j * a.accounts, TS_PLACEHOLDER);
                let at = l.find("tmi-sent-ts=").expect("the line has a tmi-sent-ts") + "tmi-sent-ts=".len();
                ts_at.push(buf.len() + at);
                buf.extend_from_slice(l.as_bytes());
                j += 1;
            }
            chunks.push((w, buf, ts_at));
        }
        plans.push((writers, chunks));
    }
    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    // One sender per channel group (connection), round-robin over its channels.
    let mut senders = Vec::new();
    for (writers, chunks) in plans {
        senders.push(tokio::spawn(async move {
            for (w, mut buf, ts_at) in chunks {
                let ts = Utc::now().timestamp_millis().to_string();
                for at in ts_at {
                    buf[at..at + ts.len()].copy_from_slice(ts.as_bytes());
                }
                writers[w].1.send(buf).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let sent_in = t0.elapsed();
    let mut peak_rss_seen = 0;
    loop {
        let c = logger.stored().await.unwrap_or(0);
        peak_rss_seen = peak_rss_seen.max(rss_now(pid));
        if c as usize >= n || t0.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let (cpu1, hwm) = proc_usage(pid);
    let mut detours = Vec::new();
    for name in ["spooled_rows", "write_failures", "duplicates_skipped", "batches_flushed"] {
        let v = logger.metric(&format!("twitch_logger_{name}_total")).await.unwrap_or(0);
        detours.push(format!("{name} {v}"));
    }
    let stored = count(&pool).await as usize;
    let rate = stored as f64 / took.as_secs_f64();
    let cpu_us = (cpu1 - cpu0) * 1e6 / stored.max(1) as f64;
    let lat = latency(&pool).await;
    let raw_bytes: Option<f64> = sqlx::query_scalar("SELECT avg(octet_length(raw))::float8 FROM chat_messages")
        .fetch_one(&pool)
        .await
        .unwrap_or(None);
    let row_bytes = table_bytes(&pool, "chat_messages").await;
    drop(logger);
    sqlx::query("VACUUM ANALYZE chat_messages").execute(&pool).await.unwrap();
    let per_million = table_bytes(&pool, "chat_messages").await as f64 / stored.max(1) as f64 * 1e6;
    println!("server sent {n} lines in {:.2} s", sent_in.as_secs_f64());
    println!(
        "on disk:           {:>10.0} MiB per million messages (table + indexes, {} bytes a row)",
        per_million / (1 << 20) as f64,
        (per_million / 1e6).round()
    );
    println!("end to end:        {rate:>10.0} msg/s  ({stored} stored in {:.2} s)", took.as_secs_f64());
    println!("messages lost:     {:>10}", n - stored.min(n));
    println!("logger CPU:        {cpu_us:>10.2} µs/msg ({:.1} s CPU)", cpu1 - cpu0);
    println!("writer:            {}", detours.join(", "));
    println!("logger peak RSS:   {:>10.1} MiB", hwm as f64 / 1024.0);
    println!(
        "table size:        {:>10.1} B/row (chat_messages with indexes), raw lines {:.1} B/row",
        row_bytes as f64 / stored.max(1) as f64,
        raw_bytes.unwrap_or(0.0)
    );
    if let Some((p50, p99)) = lat {
        println!("latency send→commit: p50 {p50:.0} ms, p99 {p99:.0} ms (under flood: includes queueing)");
    }
    if std::env::var("BENCH_SKIP_BASELINES").is_ok() {
        return (rate, None);
    }
    let all = rows(n, a.channels);
    let best = |x: f64, y: f64| x.max(y);
    let (c1, c2) =
        (db_way(admin, &all, 1, LIMIT_BATCH, Way::Plain).await, db_way(admin, &all, 2, LIMIT_BATCH, Way::Plain).await);
    let ceiling = best(c1, c2);
    println!("physical ceiling:  {ceiling:>10.0} rows/s (plain binary COPY into chat_messages, no dedupe, 5000-row transactions; {c1:.0} on 1 connection, {c2:.0} on 2)");
    let (s1, s2) = (
        db_way(admin, &all, 1, LIMIT_BATCH, Way::Staged).await,
        db_way(admin, &all, 2, LIMIT_BATCH, Way::Staged).await,
    );
    let limit1 = db_only(admin, &all, 1).await;
    let limit2 = db_only(admin, &all, 2).await;
    let safe = best(best(s1, s2), best(limit1, limit2));
    println!(
        "dedupe-safe limit: {safe:>10.0} rows/s (ON CONFLICT: staged COPY {s1:.0} on 1 connection, {s2:.0} on 2; UNNEST {limit1:.0} on 1, {limit2:.0} on 2)"
    );
    let base = baseline(admin, &all).await;
    println!("seed-style baseline:{base:>9.0} rows/s (100-row INSERT … VALUES, like the original)");
    println!("ratio end-to-end / physical ceiling:  {:.2} (target ≥ 0.7, aim ≥ 0.9)", rate / ceiling);
    println!("ratio end-to-end / dedupe-safe limit: {:.2}", rate / safe);
    println!("ratio end-to-end / baseline:          {:.2}", rate / base);
    (rate, Some(ceiling))
}

async fn quiet(a: &Args, admin: &str) {
    let (chs, rate, secs) = (a.quiet_channels, a.quiet_rate, a.quiet_seconds);
    println!("== quiet: {chs} channels over {} accounts, {rate} msg/s for {secs} s", a.accounts);
    paced(a, admin, chs, rate, secs, "quiet").await;
}

/// Latency at a steady rate: each line's `tmi-sent-ts` is when the server sends it, and the
/// row's commit time (`track_commit_timestamp`) minus it is its send-to-commit latency.
async fn steady(a: &Args, admin: &str) {
    let (chs, rate, secs) = (a.channels, a.steady_rate, a.steady_seconds);
    println!("== steady: {chs} channels over {} accounts, {rate} msg/s for {secs} s", a.accounts);
    paced(a, admin, chs, rate, secs, "steady").await;
}

/// Every batch size on every way of writing, database only, one connection: which is faster.
async fn paths(a: &Args, admin: &str) {
    let n = a.messages.min(200_000);
    println!("== write paths: {n} rows, one connection, rows/s by batch size");
    let all = rows(n, a.channels);
    println!("{:>8} {:>10} {:>10} {:>10} {:>10}", "batch", "UNNEST", "staged", "direct", "plain COPY");
    for size in [100, 1000, 5000] {
        let mut line = format!("{size:>8}");
        for way in [Way::Unnest, Way::Staged, Way::Direct, Way::Plain] {
            line.push_str(&format!(" {:>10.0}", db_way(admin, &all, 1, size, way).await));
        }
        println!("{line}");
    }
}

async fn paced(a: &Args, admin: &str, chs: usize, rate: usize, secs: u64, what: &str) {
    let db = format!("bench_{what}");
    let Setup { server, pool, channels, logger, .. } = setup(admin, &db, "q", chs, a.accounts).await;
    let pid = logger.child.id();
    let t_join = Instant::now();
    while server.joined() < chs {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t_join.elapsed() < Duration::from_secs(120), "only {} of {chs} joined", server.joined());
    }
    println!("joined {chs} channels in {:.1} s", t_join.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writers: Vec<(String, mpsc::Sender<Vec<u8>>)> =
        channels.iter().map(|c| (c.clone(), server.writer(c))).collect();
    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    let total = rate * secs as usize;
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let mut i = 0;
    let mut next = tokio::time::Instant::now();
    while i < total {
        next += tick;
        tokio::time::sleep_until(next).await;
        let ts = Utc::now().timestamp_millis();
        for _ in 0..per_tick {
            let (ch, w) = &writers[(i * 7919) % writers.len()];
            let _ = w.try_send(line(ch, i, ts).into_bytes());
            i += 1;
        }
    }
    let window = t0.elapsed();
    let (cpu1, _) = proc_usage(pid);
    let rss = rss_now(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = count(&pool).await as usize;
    let lat = latency(&pool).await;
    let (_, hwm) = proc_usage(pid);
    drop(logger);
    println!("stored {stored} of {total} (lost {})", total - stored.min(total));
    println!("logger CPU:  {:.2} % of one core", (cpu1 - cpu0) / window.as_secs_f64() * 100.0);
    println!("logger RSS:  {:.1} MiB now, {:.1} MiB peak", rss as f64 / 1024.0, hwm as f64 / 1024.0);
    if let Some((p50, p99)) = lat {
        if what == "steady" {
            println!(
                "latency send→commit at {rate} msg/s: p50 {p50:.0} ms, p99 {p99:.0} ms (target p50 ≤ 25, p99 ≤ 50)"
            );
        } else {
            println!(
                "latency send→commit: p50 {p50:.0} ms, p99 {p99:.0} ms (flush_interval 1500 ms; target p99 ≤ 1600 ms)"
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let Some(a) = args() else { return };
    if let Some(bin) = &a.logger {
        println!("logger binary: {}", bin.display());
        LOGGER_BIN.set(bin.clone()).expect("set once");
    }
    if a.store == "sqlite" {
        flood_sqlite(&a).await;
        return;
    }
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench.sh starts a throwaway PostgreSQL)");
    let _: Option<DateTime<Utc>> = None;
    if let Some(path) = &a.setup_sql {
        SETUP_SQL.set(std::fs::read_to_string(path).expect("--setup-sql file")).expect("set once");
    }
    if a.queries {
        queries(&a, &admin).await;
        return;
    }
    let all = a.mode == "all";
    if a.mode == "paths" || all {
        paths(&a, &admin).await;
    }
    if a.mode == "flood" || a.mode == "both" || all {
        let mut runs: Vec<(&str, f64, Option<f64>)> = Vec::new();
        for round in 0..a.rounds.max(1) {
            // Alternate which layout goes first, so that neither always meets a warmer machine.
            let mut order = [("partitioned", true), ("unpartitioned", false)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (label, partitioned) in order {
                if a.table == label || a.table == "both" {
                    PARTITIONED.store(partitioned, Ordering::Relaxed);
                    println!("-- tables: {label} (round {} of {})", round + 1, a.rounds.max(1));
                    let (rate, ceiling) = flood(&a, &admin).await;
                    runs.push((label, rate, ceiling));
                }
            }
        }
        PARTITIONED.store(true, Ordering::Relaxed);
        if a.rounds > 1 {
            summary(&runs);
        }
    }
    if a.mode == "steady" || all {
        steady(&a, &admin).await;
    }
    if a.mode == "quiet" || a.mode == "both" || all {
        quiet(&a, &admin).await;
    }
}

/// Bytes of the SQLite file and its WAL.
fn file_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal"].iter().map(|x| std::fs::metadata(format!("{}{x}", path.display())).map(|m| m.len()).unwrap_or(0)).sum()
}

/// The flood into the SQLite file, then the SQLite-only limit on a fresh file (see the module doc).
async fn flood_sqlite(a: &Args) {
    use twitch_chat_logger::store::sqlite::{connect_options, SqliteStore};
    let n = a.messages;
    println!("== flood into SQLite: {n} messages, {} accounts, {} channels", a.accounts, a.channels);
    // Under target/, not /tmp: a million rows make a file of some hundred MB.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("chat.db");
    let server = Server::default();
    let port = server.start().await;
    let channels: Vec<String> = (0..a.channels).map(|i| format!("chan{i}")).collect();
    let accounts: Vec<(String, Vec<String>)> = (0..a.accounts)
        .map(|k| (format!("bot{k}"), channels.iter().skip(k).step_by(a.accounts).cloned().collect()))
        .collect();
    let logger = start_logger(port, &format!("sqlite://{}", file.display()), &accounts, "1000/1s");
    let pid = logger.child.id();
    while server.joined() < a.channels || !file.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reader = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(&file).read_only(true))
        .await
        .unwrap();
    let stored_now = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(max(id), 0) FROM chat_messages")
            .fetch_one(&reader)
            .await
            .unwrap_or(0)
    };
    let (cpu0, _) = proc_usage(pid);
    let t0 = Instant::now();
    let mut senders = Vec::new();
    for (k, (_, chans)) in accounts.iter().enumerate() {
        let writers: Vec<(String, mpsc::Sender<Vec<u8>>)> =
            chans.iter().map(|c| (c.clone(), server.writer(c))).collect();
        let per = n / a.accounts + usize::from(k < n % a.accounts);
        let (offset, step) = (k, a.accounts);
        senders.push(tokio::spawn(async move {
            let mut j = 0;
            while j < per {
                let ts = Utc::now().timestamp_millis();
                let mut buf = Vec::with_capacity(256 * 600);
                let (ch, w) = &writers[(j / 256) % writers.len()];
                for _ in 0..256.min(per - j) {
                    buf.extend_from_slice(line(ch, offset + j * step, ts).as_bytes());
                    j += 1;
                }
                w.send(buf).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let sent_in = t0.elapsed();
    while (stored_now().await as usize) < n && t0.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    let (cpu1, hwm) = proc_usage(pid);
    drop(logger);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages").fetch_one(&reader).await.unwrap();
    reader.close().await;
    let stored = stored as usize;
    let rate = stored as f64 / took.as_secs_f64();
    let cpu_us = (cpu1 - cpu0) * 1e6 / stored.max(1) as f64;
    let per_million = file_bytes(&file) as f64 / stored.max(1) as f64 * 1e6 / (1 << 20) as f64;
    println!("server sent {n} lines in {:.2} s", sent_in.as_secs_f64());
    println!("end to end:        {rate:>10.0} msg/s  ({stored} stored in {:.2} s)", took.as_secs_f64());
    println!("messages lost:     {:>10}", n - stored.min(n));
    println!("logger CPU:        {cpu_us:>10.2} µs/msg ({:.1} s CPU)", cpu1 - cpu0);
    println!("logger peak RSS:   {:>10.1} MiB", hwm as f64 / 1024.0);
    println!("file size:         {per_million:>10.0} MiB per million messages (file + WAL after exit)");

    // The limit: a fresh file, the same rows, the store's own insert, 5000 rows a transaction.
    let limit_file = dir.path().join("limit.db");
    let store = SqliteStore::open_lazy(&limit_file);
    store.migrate().await.unwrap();
    let all = rows(n, a.channels);
    let t0 = Instant::now();
    for chunk in all.chunks(LIMIT_BATCH) {
        store.write_one(&Batch { messages: chunk.to_vec(), ..Batch::default() }).await.unwrap();
    }
    let limit = n as f64 / t0.elapsed().as_secs_f64();
    println!("SQLite-only limit: {limit:>10.0} rows/s (5000-row transactions, same settings and indexes)");
    println!("ratio end-to-end / SQLite-only limit: {:.2} (target ≥ 0.6)", rate / limit);
}

/// `--queries`: a partitioned database filled with `query_rows` rows over 30 days (500
/// channels, 50,000 users), then each query's plan and time by `EXPLAIN ANALYZE`.
async fn queries(a: &Args, admin: &str) {
    let n = a.query_rows;
    println!("== queries at {n} rows (partitioned by day, 30 days, 500 channels, 50,000 users)");
    let (pool, _) = fresh_db(admin, "bench_queries").await;
    let t0 = Instant::now();
    // Partitions for the 30 days first, as the logger would have made them day by day.
    let mut conn = pool.acquire().await.unwrap();
    for d in 0..31 {
        pg_partition::ensure_ahead(&pool, PartitionInterval::Day, Utc::now() - chrono::Duration::days(d))
            .await
            .unwrap();
    }
    let chunk = 1_000_000i64;
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        sqlx::query(
            "INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, display_name, text, badges, color,
                 is_subscriber, emotes, first_msg, sent_at, received_at)
             SELECT md5(i::text)::uuid::text, 'chan' || (i % 500), (100000 + i % 500)::text, (i % 50000)::text,
                    'viewer' || (i % 50000), 'Viewer' || (i % 50000), 'Kappa that play was something else, gg ' || i,
                    '{\"subscriber\": 12}', '#1E90FF', true, '25:0-4', false,
                    now() - (((i * 7919) % ($3::bigint)) * interval '1 second' * (2592000.0 / $3)),
                    now()
             FROM generate_series($1::bigint, $2::bigint) i",
        )
        .bind(done + 1)
        .bind(done + k)
        .bind(n)
        .execute(&mut *conn)
        .await
        .unwrap();
        done += k;
        println!("  filled {done} rows ({:.0} s)", t0.elapsed().as_secs_f64());
    }
    sqlx::query("VACUUM ANALYZE chat_messages").execute(&mut *conn).await.unwrap();
    let bytes = table_bytes(&pool, "chat_messages").await;
    println!(
        "filled in {:.0} s; on disk {:.0} MiB ({:.0} MiB per million messages, table + indexes)",
        t0.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / n as f64 * 1e6 / (1 << 20) as f64
    );
    for (what, sql) in [
        (
            "last hour of one channel",
            "SELECT * FROM chat_messages WHERE channel = 'chan42' AND sent_at > now() - interval '1 hour' ORDER BY sent_at",
        ),
        (
            "one user's last 100 messages",
            "SELECT * FROM chat_messages WHERE user_id = '4242' ORDER BY sent_at DESC LIMIT 100",
        ),
    ] {
        // Once to warm the cache as a running logger's database is, then measured.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut *conn).await.unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}")))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        println!("-- {what}: {sql}");
        for l in &plan {
            println!("   {l}");
        }
        let total: f64 = plan
            .iter()
            .filter_map(|l| {
                let t = l.trim();
                t.strip_prefix("Planning Time: ").or_else(|| t.strip_prefix("Execution Time: "))
            })
            .filter_map(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
            .sum();
        println!("{what}: {total:.1} ms planning + execution (target < 50 ms)");
    }
}
