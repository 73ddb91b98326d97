//! Command line: parse, load the config, set up logging, hand over to `app`.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::prelude::*;

use twitch_chat_logger::app::{self, Outcome};
use twitch_chat_logger::config::{self, env::process_env, render::render, LogConfig, LogFormat};
use twitch_chat_logger::http;
use twitch_chat_logger::store::postgres::{describe, PgStore};

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
    Migrate,
    /// Validate the config and environment, print the effective config (secrets redacted).
    Check,
    /// Exit 0 if the running logger's /healthz answers (for Docker's HEALTHCHECK).
    Healthcheck,
}

fn init_logging(cfg: &LogConfig) {
    // RUST_LOG wins over [log] level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    // twitch-irc logs every outgoing line at TRACE, PASS included: never let those through.
    let no_secret_lines = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("twitch_irc") && *m.level() == tracing::Level::TRACE)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match cfg.format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    tracing_subscriber::registry().with(layer.with_filter(no_secret_lines).with_filter(filter)).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Check => {
            print!("{}", render(&cfg));
            println!("\n# OK: the configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Healthcheck => match cfg.http.listen {
            None => {
                eprintln!("http.listen is \"off\": nothing to check");
                ExitCode::FAILURE
            }
            Some(addr) => match http::probe(addr).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            },
        },
        Command::Migrate => {
            init_logging(&cfg.log);
            let result = async {
                let store = PgStore::connect_lazy(&cfg.database)?;
                app::migrate_with_retry(&store, &describe(&cfg.database)).await
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
        Command::Run => {
            init_logging(&cfg.log);
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
