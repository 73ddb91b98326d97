//! Command line: parse, set up logging, load the config, hand over to `app`.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::prelude::*;

use twitch_chat_logger::app::{self, Outcome};
use twitch_chat_logger::config::{self, env::process_env, render::render};
use twitch_chat_logger::store::postgres::{describe, PgStore};

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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // twitch-irc logs every outgoing line at TRACE, PASS included: never let those through.
    let no_secret_lines = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("twitch_irc") && *m.level() == tracing::Level::TRACE)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(no_secret_lines)
                .with_filter(filter),
        )
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let path = match config::locate(cli.config.as_deref(), &process_env) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config::load(path.as_deref(), &process_env) {
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
        Command::Migrate => {
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
        Command::Run => match app::run(cfg).await {
            Ok(Outcome::Stopped) => ExitCode::SUCCESS,
            Ok(Outcome::NoAccountLeft) => ExitCode::from(3),
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
