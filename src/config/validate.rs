//! Semantic checks: turns the file (with environment overrides applied) into a [`Config`],
//! collecting every problem rather than stopping at the first.

use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use toml::Spanned;
use validator::Validate;

use super::duration::{parse_duration, parse_rate, Rate};
use super::file::{line_col, FileConfig};
use super::*;
use crate::twitch::login::{normalize_login, ServerAddr};

/// Numeric limits checked with `validator`. Only non-secret values go here: validator copies a
/// field's value into its error.
#[derive(Validate)]
struct Limits {
    #[validate(range(min = 1, max = 50_000, message = "must be between 1 and 50000"))]
    max_rows: i64,
    #[validate(range(min = 1, max = 10_000_000, message = "must be between 1 and 10000000"))]
    queue_capacity: i64,
    #[validate(range(min = 1, max = 65_535, message = "must be a port number from 1 to 65535"))]
    port: i64,
    #[validate(range(min = 1_048_576, message = "must be at least 1048576 (1 MiB)"))]
    spool_max_bytes: i64,
}

struct Ctx<'a> {
    text: Option<&'a str>,
    overrides: &'a [EnvOverride],
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn location(&self, key: &str, span: Option<std::ops::Range<usize>>) -> Location {
        if let Some(o) = self.overrides.iter().find(|o| o.key == key) {
            return Location::Env(o.var);
        }
        match (self.text, span) {
            (Some(text), Some(span)) if span.end > 0 => {
                let (line, _) = line_col(text, span.start);
                Location::File { line: Some(line), column: None }
            }
            (Some(_), _) => Location::File { line: None, column: None },
            (None, _) => Location::None,
        }
    }

    fn problem(&mut self, key: &str, span: Option<std::ops::Range<usize>>, message: impl std::fmt::Display) {
        let location = self.location(key, span);
        self.problems.push(Problem { key: key.to_string(), location, message: message.to_string() });
    }

    fn duration(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!(
                        "`{}` is out of range; use a value from {} to {}",
                        v.get_ref(),
                        duration::format_duration(min),
                        duration::format_duration(max)
                    ),
                );
                default
            }
            Err(e) => {
                self.problem(key, Some(v.span()), e);
                default
            }
        }
    }

    fn read_secret_file(&mut self, key: &str, path: &Spanned<std::path::PathBuf>) -> Option<SecretString> {
        // A token or password file holds one line; a device or pipe named by mistake must not
        // block the reload or fill memory.
        match super::read_regular_file(path.get_ref(), SECRET_FILE_LIMIT) {
            Ok(s) if !s.trim().is_empty() => Some(SecretString::from(s.trim().to_string())),
            Ok(_) => {
                self.problem(
                    key,
                    Some(path.span()),
                    format!("`{}` is empty; put the secret in it", path.get_ref().display()),
                );
                None
            }
            Err(e) => {
                self.problem(key, Some(path.span()), format!("cannot read `{}`: {e}", path.get_ref().display()));
                None
            }
        }
    }
}

/// The most a token or password file may hold.
const SECRET_FILE_LIMIT: u64 = 64 * 1024;

/// Why a token is unusable. No variant holds any of the token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is empty after the `oauth:` prefix; paste the whole token")]
    Empty,
    #[error("contains spaces or control characters (value hidden); paste the token alone")]
    Whitespace,
}

/// Strips an optional `oauth:` prefix (twitch-irc adds exactly one) and checks the token's
/// shape without ever quoting it.
pub fn normalize_token(raw: &str) -> Result<SecretString, TokenError> {
    let t = raw.trim();
    // Char-aware: a token is user input, and a multi-byte character may sit at byte 6.
    let t = match t.split_at_checked(6) {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("oauth:") => rest,
        _ => t,
    };
    if t.is_empty() {
        return Err(TokenError::Empty);
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TokenError::Whitespace);
    }
    Ok(SecretString::from(t.to_string()))
}

/// Validates `file` into a [`Config`]; problems go to `problems` (and then the config is `None`).
pub fn validate(
    file: FileConfig,
    text: Option<&str>,
    origin: Origin,
    overrides: Vec<EnvOverride>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut cx = Ctx { text, overrides: &overrides, problems };

    let server = match &file.twitch.server {
        None => ServerAddr::twitch(),
        Some(s) => ServerAddr::parse(s.get_ref()).unwrap_or_else(|e| {
            cx.problem("twitch.server", Some(s.span()), e);
            ServerAddr::twitch()
        }),
    };

    let limits = Limits {
        max_rows: file.batch.max_rows.as_ref().map_or(100, |v| *v.get_ref()),
        queue_capacity: file.batch.queue_capacity.as_ref().map_or(100_000, |v| *v.get_ref()),
        port: file.database.port.as_ref().map_or(5432, |v| *v.get_ref()),
        spool_max_bytes: file.batch.spool_max_bytes.as_ref().map_or(1 << 30, |v| *v.get_ref()),
    };
    if let Err(errors) = limits.validate() {
        for (field, errs) in errors.field_errors() {
            let (key, span) = match field.as_ref() {
                "max_rows" => ("batch.max_rows", file.batch.max_rows.as_ref().map(|v| v.span())),
                "queue_capacity" => ("batch.queue_capacity", file.batch.queue_capacity.as_ref().map(|v| v.span())),
                "spool_max_bytes" => ("batch.spool_max_bytes", file.batch.spool_max_bytes.as_ref().map(|v| v.span())),
                _ => ("database.port", file.database.port.as_ref().map(|v| v.span())),
            };
            for e in errs {
                let msg = e.message.as_deref().unwrap_or("is out of range").to_string();
                cx.problem(key, span.clone(), msg);
            }
        }
    }
    if limits.queue_capacity < limits.max_rows {
        cx.problem(
            "batch.queue_capacity",
            file.batch.queue_capacity.as_ref().map(|v| v.span()),
            format!(
                "({}) is smaller than batch.max_rows ({}); the queue must hold at least one batch",
                limits.queue_capacity, limits.max_rows
            ),
        );
    }
    let flush_interval = cx.duration(
        "batch.flush_interval",
        &file.batch.flush_interval,
        BatchConfig::default().flush_interval,
        Duration::from_millis(10),
        Duration::from_secs(600),
    );
    // Unset, the bound follows a long flush_interval instead of contradicting it.
    let durable_default = BatchConfig::default().durable_within.max(flush_interval + Duration::from_millis(3500));
    let batch = BatchConfig {
        max_rows: limits.max_rows.clamp(1, 50_000) as usize,
        flush_interval,
        queue_capacity: limits.queue_capacity.clamp(1, 10_000_000) as usize,
        spool_dir: file
            .batch
            .spool_dir
            .as_ref()
            .map_or_else(|| BatchConfig::default().spool_dir, |p| p.get_ref().clone()),
        spool_max_bytes: limits.spool_max_bytes.max(1_048_576) as u64,
        shutdown_timeout: cx.duration(
            "batch.shutdown_timeout",
            &file.batch.shutdown_timeout,
            BatchConfig::default().shutdown_timeout,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        durable_within: cx.duration(
            "batch.durable_within",
            &file.batch.durable_within,
            durable_default,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        ),
    };
    if batch.durable_within <= batch.flush_interval {
        cx.problem(
            "batch.durable_within",
            file.batch.durable_within.as_ref().map(|v| v.span()),
            format!(
                "({}) must be longer than batch.flush_interval ({}): rows wait up to flush_interval in memory before their first write",
                super::duration::format_duration(batch.durable_within),
                super::duration::format_duration(batch.flush_interval)
            ),
        );
    }

    let reload_default = ReloadConfig::default();
    let mode = match file.reload.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("watch") => ReloadMode::Watch,
        Some("poll") => ReloadMode::Poll,
        Some("off") => ReloadMode::Off,
        Some(other) => {
            let span = file.reload.mode.as_ref().map(|m| m.span());
            cx.problem("reload.mode", span, format!("`{other}` is not a mode; use \"watch\", \"poll\" or \"off\""));
            ReloadMode::Watch
        }
    };
    let reload = ReloadConfig {
        mode,
        poll_interval: cx.duration(
            "reload.poll_interval",
            &file.reload.poll_interval,
            reload_default.poll_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        ),
        debounce: cx.duration(
            "reload.debounce",
            &file.reload.debounce,
            reload_default.debounce,
            Duration::ZERO,
            Duration::from_secs(10),
        ),
    };

    let http = match file.http.listen.as_ref() {
        None => HttpConfig::default(),
        Some(l) if l.get_ref() == "off" => HttpConfig { listen: None },
        Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => HttpConfig { listen: Some(a) },
            Err(_) => {
                cx.problem(
                    "http.listen",
                    Some(l.span()),
                    format!(
                    "`{}` is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\", or \"off\"",
                    l.get_ref()
                ),
                );
                HttpConfig::default()
            }
        },
    };
    let mut log = LogConfig::default();
    if let Some(level) = &file.log.level {
        match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            Ok(_) => log.level = level.get_ref().clone(),
            Err(e) => cx.problem(
                "log.level",
                Some(level.span()),
                format!(
                    "`{}` is not a log filter ({e}); use e.g. \"info\" or \"info,twitch_chat_logger=debug\"",
                    level.get_ref()
                ),
            ),
        }
    }
    match file.log.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("text") => {}
        Some("json") => log.format = LogFormat::Json,
        Some(other) => {
            let span = file.log.format.as_ref().map(|f| f.span());
            cx.problem("log.format", span, format!("`{other}` is not a format; use \"text\" or \"json\""));
        }
    }

    let database = database(&mut cx, &file);

    let mut accounts = BTreeMap::new();
    for (name, a) in &file.accounts {
        let key = |k: &str| format!("accounts.{name}.{k}");
        if let Err(e) = check_table_name(name) {
            cx.problem(&format!("accounts.{name}"), None, e);
        }
        let token = match (&a.oauth_token, &a.token_file) {
            (Some(_), Some(f)) => {
                cx.problem(&key("token_file"), Some(f.span()), "is set together with oauth_token; keep one of the two");
                None
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(f)) => cx.read_secret_file(&key("token_file"), f),
            (None, None) => None,
        };
        let token = match token.map(|t| normalize_token(t.expose_secret())) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                cx.problem(&key("oauth_token"), None, e);
                None
            }
            None => None,
        };
        let username = a.username.as_ref().and_then(|u| match normalize_login(u.get_ref()) {
            Ok(u) => Some(u),
            Err(e) => {
                cx.problem(&key("username"), Some(u.span()), format!("{e} (a bot username is a Twitch login)"));
                None
            }
        });
        let token_given = a.oauth_token.is_some() || a.token_file.is_some();
        let credentials = match (&a.username, token_given) {
            (Some(_), true) => match (username, token) {
                (Some(username), Some(token)) => Credentials::Login { username, token },
                _ => Credentials::Anonymous, // already reported
            },
            (None, false) => Credentials::Anonymous,
            (Some(u), false) => {
                cx.problem(&key("username"), Some(u.span()), "is set but the account has no oauth_token or token_file; add one, or remove username to log in anonymously");
                Credentials::Anonymous
            }
            (None, true) => {
                cx.problem(
                    &key("oauth_token"),
                    None,
                    "is set but the account has no username; add the bot's login as username",
                );
                Credentials::Anonymous
            }
        };
        let join_rate = match &a.join_rate {
            None => Rate::TWITCH_DEFAULT_JOINS,
            Some(r) => parse_rate(r.get_ref()).unwrap_or_else(|e| {
                cx.problem(&key("join_rate"), Some(r.span()), e);
                Rate::TWITCH_DEFAULT_JOINS
            }),
        };
        accounts.insert(name.clone(), AccountConfig { credentials, join_rate });
    }

    let mut groups = BTreeMap::new();
    for (name, g) in &file.groups {
        let key = |k: &str| format!("groups.{name}.{k}");
        if let Err(e) = check_table_name(name) {
            cx.problem(&format!("groups.{name}"), None, e);
        }
        if g.accounts.is_empty() {
            cx.problem(
                &key("accounts"),
                None,
                format!(
                    "is empty; name at least one account, e.g. accounts = [\"{}\"]",
                    accounts.keys().next().map_or(DEFAULT_NAME, String::as_str)
                ),
            );
        }
        let mut names = Vec::new();
        for a in &g.accounts {
            if !accounts.contains_key(a.get_ref()) {
                let known: Vec<&str> = accounts.keys().map(String::as_str).collect();
                let hint = known
                    .iter()
                    .min_by_key(|k| strsim::damerau_levenshtein(k, a.get_ref()))
                    .filter(|k| strsim::damerau_levenshtein(k, a.get_ref()) <= 2)
                    .map(|k| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| {
                        format!("define [accounts.{}] or use one of: {}", a.get_ref(), known.join(", "))
                    });
                cx.problem(
                    &key("accounts"),
                    Some(a.span()),
                    format!("names account `{}`, which does not exist; {hint}", a.get_ref()),
                );
            } else if !names.contains(a.get_ref()) {
                names.push(a.get_ref().clone());
            }
        }
        let mut channels = BTreeSet::new();
        for c in &g.channels {
            match normalize_login(c.get_ref()) {
                Ok(c) => {
                    channels.insert(c);
                }
                Err(e) => cx.problem(
                    &key("channels"),
                    Some(c.span()),
                    format!("{e} (a channel is its streamer's Twitch login)"),
                ),
            }
        }
        groups.insert(name.clone(), GroupConfig { accounts: names, channels });
    }

    if !cx.problems.is_empty() {
        return None;
    }
    Some(Config {
        http,
        log,
        origin,
        twitch: TwitchConfig { server },
        database: database?,
        batch,
        reload,
        accounts,
        groups,
        env_overrides: overrides,
    })
}

fn check_table_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a usable name; use letters, digits, `_` and `-`"))
    }
}

fn database(cx: &mut Ctx<'_>, file: &FileConfig) -> Option<DatabaseConfig> {
    let d = &file.database;
    if let Some(url) = &d.url {
        let u = url.expose_secret();
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            cx.problem(
                "database.url",
                None,
                "must start with postgres:// or postgresql:// (value hidden because it may hold a password)",
            );
            return None;
        }
        return Some(DatabaseConfig::Url(url.clone()));
    }
    let password = match (&d.password, &d.password_file) {
        (Some(_), Some(f)) => {
            cx.problem("database.password_file", Some(f.span()), "is set together with password; keep one of the two");
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(f)) => Some(cx.read_secret_file("database.password_file", f)?),
        (None, None) => None,
    };
    let text = |v: &Option<Spanned<String>>, default: &str| {
        v.as_ref().map_or(default.to_string(), |s| s.get_ref().trim().to_string())
    };
    Some(DatabaseConfig::Fields {
        host: text(&d.host, "localhost"),
        port: d.port.as_ref().map_or(5432, |p| (*p.get_ref()).clamp(1, 65535) as u16),
        name: text(&d.name, "twitch"),
        user: text(&d.user, "postgres"),
        password,
    })
}
