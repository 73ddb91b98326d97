//! The original Go program's environment variables, applied over the file.
//!
//! | variable | key |
//! |---|---|
//! | `TWITCH_USERNAME`, `TWITCH_OAUTH_TOKEN` | `accounts.default.username`, `.oauth_token` |
//! | `TWITCH_CHANNELS` | `groups.default.channels` |
//! | `POSTGRES_HOST`, `_PORT`, `_DB`, `_USER`, `_PASSWORD` | `database.host`, `.port`, `.name`, `.user`, `.password` |
//! | `DATABASE_URL` | `database.url` |
//! | `TWITCH_IRC_SERVER` | `twitch.server` |
//! | `TWITCH_AUTH_URL` | `twitch.auth_url` |
//!
//! An empty variable counts as unset, because `docker compose` turns `${VAR}` of an unset
//! variable into an empty string.

use secrecy::SecretString;
use toml::Spanned;

use super::file::{FileConfig, GroupFile};
use super::{EnvOverride, Location, Problem, DEFAULT_NAME};

/// Reads a variable, treating empty as unset.
pub fn get(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The process environment, as [`super::load`] wants it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

/// Applies the variables over `file`. In env-only mode (`has_file == false`) the original's
/// variables are required, as they were in the original.
pub fn apply(
    mut file: FileConfig,
    has_file: bool,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> (FileConfig, Vec<EnvOverride>) {
    let mut overrides = Vec::new();
    let mut note = |var: &'static str, key: String, file_also_set: bool| {
        overrides.push(EnvOverride { var, key, file_also_set });
    };

    if !has_file {
        let db_url = get(env, "DATABASE_URL").is_some();
        let mut required = vec!["TWITCH_USERNAME", "TWITCH_OAUTH_TOKEN", "TWITCH_CHANNELS"];
        if !db_url {
            required.extend(["POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"]);
        }
        for var in required {
            if get(env, var).is_none() {
                problems.push(Problem {
                    key: String::new(),
                    location: Location::Env(var),
                    message: format!(
                        "is not set; with no config file the logger runs from the environment alone and needs it (or create {})",
                        super::DEFAULT_CONFIG_PATH
                    ),
                });
            }
        }
    }

    if let Some(v) = get(env, "HTTP_LISTEN") {
        note("HTTP_LISTEN", "http.listen".into(), file.http.listen.is_some());
        file.http.listen = Some(spanned(v.trim().to_string()));
    }
    if let Some(v) = get(env, "TWITCH_IRC_SERVER") {
        note("TWITCH_IRC_SERVER", "twitch.server".into(), file.twitch.server.is_some());
        file.twitch.server = Some(spanned(v));
    }
    if let Some(v) = get(env, "TWITCH_AUTH_URL") {
        note("TWITCH_AUTH_URL", "twitch.auth_url".into(), file.twitch.auth_url.is_some());
        file.twitch.auth_url = Some(spanned(v.trim().to_string()));
    }

    let db = &mut file.database;
    if let Some(v) = get(env, "DATABASE_URL") {
        note("DATABASE_URL", "database.url".into(), db.url.is_some());
        db.url = Some(SecretString::from(v));
    }
    for (var, key) in [("POSTGRES_HOST", "host"), ("POSTGRES_DB", "name"), ("POSTGRES_USER", "user")] {
        if let Some(v) = get(env, var) {
            let slot = match key {
                "host" => &mut db.host,
                "name" => &mut db.name,
                _ => &mut db.user,
            };
            note(var, format!("database.{key}"), slot.is_some());
            *slot = Some(spanned(v.trim().to_string()));
        }
    }
    if let Some(v) = get(env, "POSTGRES_PORT") {
        note("POSTGRES_PORT", "database.port".into(), db.port.is_some());
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => db.port = Some(super::file::Int(spanned(i64::from(p)))),
            _ => problems.push(Problem {
                key: String::new(),
                location: Location::Env("POSTGRES_PORT"),
                message: format!("`{v}` is not a port number; use a whole number from 1 to 65535, e.g. 5432"),
            }),
        }
    }
    if let Some(v) = env("POSTGRES_PASSWORD").filter(|v| !v.is_empty()) {
        // Not trimmed: a password may legitimately end in a space.
        note("POSTGRES_PASSWORD", "database.password".into(), db.password.is_some() || db.password_file.is_some());
        db.password = Some(SecretString::from(v));
        db.password_file = None;
    }

    let user = get(env, "TWITCH_USERNAME");
    let token = env("TWITCH_OAUTH_TOKEN").filter(|v| !v.trim().is_empty());
    let channels = get(env, "TWITCH_CHANNELS");
    if user.is_some() || token.is_some() || channels.is_some() {
        let account = file.accounts.entry(DEFAULT_NAME.into()).or_default();
        if let Some(u) = user {
            note("TWITCH_USERNAME", "accounts.default.username".into(), account.username.is_some());
            account.username = Some(spanned(u.trim().to_string()));
        }
        if let Some(t) = token {
            note(
                "TWITCH_OAUTH_TOKEN",
                "accounts.default.oauth_token".into(),
                account.oauth_token.is_some() || account.token_file.is_some(),
            );
            account.oauth_token = Some(SecretString::from(t.trim().to_string()));
            account.token_file = None;
        }
    }
    if let Some(list) = channels {
        let group = file.groups.entry(DEFAULT_NAME.into()).or_insert_with(|| GroupFile {
            accounts: vec![spanned(DEFAULT_NAME.to_string())],
            channels: Vec::new(),
            ignore_users: Vec::new(),
        });
        note("TWITCH_CHANNELS", "groups.default.channels".into(), !group.channels.is_empty());
        group.channels = list.split(',').filter(|c| !c.trim().is_empty()).map(|c| spanned(c.to_string())).collect();
        if group.channels.is_empty() {
            problems.push(Problem {
                key: String::new(),
                location: Location::Env("TWITCH_CHANNELS"),
                message: "names no channel; write a comma-separated list, e.g. channel_one,channel_two".into(),
            });
        }
    }
    (file, overrides)
}
