//! Command line: parse, load the config, set up logging, hand over to `app`.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::prelude::*;

use twitch_chat_logger::app::{self, Outcome};
use twitch_chat_logger::config::{self, env::process_env, render::render, LogConfig, LogFormat};
use twitch_chat_logger::http;
use twitch_chat_logger::store::copy::{copy, CopyOptions};
use twitch_chat_logger::store::postgres::{PgStore, MIGRATOR};
use twitch_chat_logger::store::{sqlite, Backend};

// Many small allocations from several threads (twitch-irc's parse, our rows): glibc's malloc
// spent over 40% of the logger's CPU under load; mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs Twitch chat into PostgreSQL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $CONFIG_FILE, else config/config.toml if it exists, else the
    /// environment alone).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Log chat (the default).
    Run,
    /// Apply database migrations and exit.
    Migrate {
        /// Also partition chat_messages and chat_events by time if they are not yet (a database
        /// made by the original logger or by an older version). Safe while loggers write to it:
        /// inserts pause for the final swap only. Interrupted, run it again to resume.
        #[arg(long)]
        partition: bool,
        /// Rows copied per transaction by --partition.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(i64).range(100..=1_000_000))]
        chunk_rows: i64,
    },
    /// Validate the config and environment, print the effective config (secrets redacted).
    Check {
        /// Also log in to the database once (no retry; nothing is created or migrated).
        #[arg(long)]
        connect: bool,
    },
    /// Delete one user's stored messages (and events), e.g. after they opted out: in
    /// 5,000-row transactions, safe while the logger runs. Prints the rows removed per table.
    PurgeUser {
        /// The user's login, or their numeric user id (which covers every login they had).
        #[arg(value_name = "LOGIN_OR_ID")]
        user: String,
        /// Only this channel's rows.
        #[arg(long, value_name = "NAME")]
        channel: Option<String>,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Exit 0 if the running logger's /healthz answers (for Docker's HEALTHCHECK). Reads only
    /// the address: --listen, else HTTP_LISTEN, else `[http] listen` of the config file if
    /// readable, else 127.0.0.1:8080; the rest of the config is not checked.
    Healthcheck {
        /// The health listener's address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Copy every row of the logger's SQLite file into PostgreSQL (migrated first), e.g. when
    /// moving from the file to a server. Run it again to resume an interrupted copy: rows
    /// already copied are not copied twice. Does not read the config file.
    Copy {
        /// The SQLite file: sqlite://PATH (e.g. sqlite://data/chat.db).
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/NAME. Default:
        /// $DATABASE_URL (which keeps the password off the command line).
        #[arg(long)]
        to: Option<String>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=50_000))]
        chunk_rows: i64,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 3, hide = true)]
        progress_secs: u64,
    },
}

fn init_logging(cfg: &LogConfig) {
    // RUST_LOG wins over [log] level.
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    // twitch-irc's INFO/ERROR lines repeat what we log better (one line per join, part,
    // disconnect or bad line); they show only when the filter names twitch_irc.
    let chatter_wanted = from_env.as_deref().unwrap_or(&cfg.level).contains("twitch_irc");
    let library = tracing_subscriber::filter::filter_fn(move |m| {
        !m.target().starts_with("twitch_irc") || library_line_shown(m.level(), chatter_wanted)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match cfg.format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    // The level filter is global and only the library rule is per layer: two nested per-layer
    // filters lost our INFO lines whenever a DEBUG directive existed for another target.
    tracing_subscriber::registry().with(filter).with(layer.with_filter(library)).init();
}

/// Which of twitch-irc's lines pass: never TRACE (it logs every outgoing line there, PASS and
/// its token included); INFO and ERROR only on request; WARN and DEBUG as the filter says.
fn library_line_shown(level: &tracing::Level, chatter_wanted: bool) -> bool {
    match *level {
        tracing::Level::TRACE => false,
        tracing::Level::INFO | tracing::Level::ERROR => chatter_wanted,
        _ => true,
    }
}

/// `healthcheck`: needs the listen address only, so it works from any working directory and
/// whatever else is wrong with the config.
async fn healthcheck(listen: Option<&str>, config: Option<&std::path::Path>) -> ExitCode {
    match config::healthcheck_listen(listen, config, &process_env) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Ok(None) => {
            eprintln!("the health listener is \"off\": nothing to check");
            ExitCode::FAILURE
        }
        Ok(Some(addr)) => match http::probe(addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("http://{addr}/healthz: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn main() -> ExitCode {
    // SIGHUP's default action ends the process: until the reloader listens (a `systemctl
    // reload` right after start), a HUP is ignored instead. Tokio's handler stays once set, so
    // it is set on a one-thread runtime before the main runtime starts its threads: there is
    // no moment with threads running and the default action in place.
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() {
        rt.block_on(async {
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        });
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { listen }) = &cli.command {
        return healthcheck(listen.as_deref(), cli.config.as_deref()).await;
    }
    if let Some(Command::Copy { from, to, chunk_rows, progress_secs }) = &cli.command {
        return copy_command(from, to.as_deref(), *chunk_rows, *progress_secs).await;
    }
    let cfg = match config::locate(cli.config.as_deref(), &process_env)
        .and_then(|path| config::load(path.as_deref(), &process_env))
    {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { connect } => {
            print!("{}", render(&cfg));
            println!("\n# OK: the configuration is valid");
            if connect {
                return check_connect(&cfg.startup.database).await;
            }
            ExitCode::SUCCESS
        }
        Command::Healthcheck { .. } | Command::Copy { .. } => unreachable!("answered before the config is loaded"),
        Command::Migrate { partition, chunk_rows } => {
            init_logging(&cfg.startup.log);
            let result = async {
                let store = Backend::connect_lazy(&cfg.startup.database)?;
                if let Backend::Postgres(pg) = &store {
                    pg.set_partition_interval(cfg.live.storage.partition);
                }
                app::migrate_with_retry(&store).await?;
                match (&store, partition) {
                    (_, false) => Ok(()),
                    (Backend::Postgres(pg), true) => pg.partition_existing(chunk_rows, &mut |line| eprintln!("{line}")).await,
                    (Backend::Sqlite(_), true) => Err(anyhow::anyhow!(
                        "--partition: time partitions are PostgreSQL's; the SQLite file needs none (retention deletes in chunks there)"
                    )),
                }
            }
            .await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::PurgeUser { user, channel, dry_run } => purge_user(&cfg, &user, channel.as_deref(), dry_run).await,
        Command::Run => {
            init_logging(&cfg.startup.log);
            match app::run(cfg).await {
                Ok(Outcome::Stopped) => ExitCode::SUCCESS,
                Ok(Outcome::NoAccountLeft) => ExitCode::from(3),
                Ok(Outcome::RowsLost(_)) => ExitCode::from(4),
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `purge-user`: checks the arguments as the config checks its lists, then deletes in chunks.
async fn purge_user(cfg: &config::Config, user: &str, channel: Option<&str>, dry_run: bool) -> ExitCode {
    use twitch_chat_logger::config::login::{normalize_login, parse_user_entry, UserEntry};
    use twitch_chat_logger::store::purge::{self, PURGE_CHUNK, USER_TABLES};
    let who = match parse_user_entry(user) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("LOGIN_OR_ID: {e}");
            return ExitCode::from(2);
        }
    };
    let channel = match channel.map(normalize_login).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("--channel: {e} (a channel is its streamer's Twitch login)");
            return ExitCode::from(2);
        }
    };
    let store = match Backend::connect_lazy(&cfg.startup.database) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (shown, listed) = match &who {
        UserEntry::Login(l) => (format!("login {l}"), cfg.live.is_opted_out(l, None)),
        UserEntry::Id(i) => (format!("user id {i}"), cfg.live.filters.opt_out_users.ids.contains(i)),
    };
    let place = channel.as_ref().map_or("every channel".to_string(), |c| format!("#{c}"));
    let report = |table: &str, so_far: u64| eprintln!("{table}: {so_far} rows deleted so far");
    let result = match &store {
        Backend::Postgres(s) => {
            purge::purge_user(s.pool(), USER_TABLES, &who, channel.as_deref(), dry_run, PURGE_CHUNK, report).await
        }
        Backend::Sqlite(s) => {
            let pool = match purge::sqlite_pool(s.path()).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("database: {e}");
                    return ExitCode::FAILURE;
                }
            };
            purge::purge_user_sqlite(&pool, USER_TABLES, &who, channel.as_deref(), dry_run, PURGE_CHUNK, report).await
        }
    };
    match result {
        Ok(done) => {
            let verb = if dry_run { "would be deleted (dry run: nothing was deleted)" } else { "deleted" };
            println!("purge-user {shown} in {place} at {}:", store.target());
            for p in done {
                if p.missing {
                    println!("  {}: table does not exist, skipped", p.table);
                } else {
                    println!("  {}: {} rows {verb}", p.table, p.rows);
                }
            }
            if !listed {
                println!(
                    "note: {shown} is not in [filters] opt_out_users; new rows of theirs are still stored. Add it there to stop logging them."
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}: {}", e.source);
            ExitCode::FAILURE
        }
    }
}

/// `check --connect`: logs in to the database once and says whether the schema is current.
async fn check_connect(db: &config::DatabaseConfig) -> ExitCode {
    if let config::DatabaseConfig::Sqlite(path) = db {
        let store = sqlite::SqliteStore::open_lazy(path);
        let shown = store.absolute_path();
        return match store.probe().await {
            Ok((version, applied)) => {
                let total = sqlite::MIGRATOR.iter().count();
                let state = if !path.exists() {
                    "does not exist yet (the logger creates it at start-up)".to_string()
                } else if applied >= total {
                    "schema up to date".to_string()
                } else {
                    format!("{applied} of {total} migrations applied (the logger applies the rest at start-up)")
                };
                println!("# OK: SQLite file {} (SQLite {version}): {state}", shown.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("database: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let store = match PgStore::connect_lazy(db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("database: {e}");
            return ExitCode::FAILURE;
        }
    };
    match store.probe_login().await {
        Ok((version, applied)) => {
            let total = MIGRATOR.iter().count();
            let schema = if applied >= total {
                "schema up to date".to_string()
            } else {
                format!("{applied} of {total} migrations applied (the logger applies the rest at start-up)")
            };
            println!("# OK: logged in to {} (PostgreSQL {version}); {schema}", store.target());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("database {}: {e}", store.target());
            ExitCode::FAILURE
        }
    }
}

/// `copy`: every row of a SQLite file into PostgreSQL. Progress goes to stderr; the target's
/// password is never printed.
async fn copy_command(from: &str, to: Option<&str>, chunk_rows: i64, progress_secs: u64) -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").try_init();
    let path = match config::validate::sqlite_path(from) {
        Some(Ok(p)) => p,
        Some(Err(why)) => {
            eprintln!("--from: {why}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("--from: `{from}` is not a SQLite URL; write sqlite://PATH, e.g. sqlite://data/chat.db");
            return ExitCode::from(2);
        }
    };
    let to =
        match to.map(str::to_string).or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| !v.trim().is_empty())) {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => secrecy::SecretString::from(u),
            Some(_) => {
                eprintln!(
                    "--to: must start with postgres:// or postgresql:// (value hidden because it may hold a password)"
                );
                return ExitCode::from(2);
            }
            None => {
                eprintln!("--to: no target; give --to postgres://USER:PASSWORD@HOST:PORT/NAME or set DATABASE_URL");
                return ExitCode::from(2);
            }
        };
    let opts = CopyOptions { chunk_rows, progress_every: std::time::Duration::from_secs(progress_secs) };
    match copy(&path, to, &opts, &mut |line| eprintln!("{line}")).await {
        Ok(summary) => {
            let copied: u64 = summary.tables.iter().map(|(_, c, _)| c).sum();
            let skipped: u64 = summary.tables.iter().map(|(_, _, s)| s).sum();
            eprintln!("copy: done: {copied} rows copied, {skipped} were already there");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("copy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::library_line_shown;
    use tracing::Level;

    #[test]
    fn library_warnings_pass_its_chatter_only_on_request_and_its_trace_never() {
        assert!(library_line_shown(&Level::WARN, false));
        assert!(!library_line_shown(&Level::INFO, false) && !library_line_shown(&Level::ERROR, false));
        assert!(library_line_shown(&Level::INFO, true) && library_line_shown(&Level::ERROR, true));
        assert!(!library_line_shown(&Level::TRACE, true), "PASS lines are logged at TRACE");
    }
}
