//! Semantic checks: turns the file (with environment overrides applied) into a [`Config`],
//! collecting every problem rather than stopping at the first.
//!
//! One function per table. Each reports what is wrong and puts a default in place of a wrong
//! value, so that the tables after it are still checked in the same run.

use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;
use validator::{Validate, ValidationErrors};

use super::duration::{format_duration, parse_duration, parse_rate, Rate};
use super::file::{
    self, line_col, AccountFile, BatchFile, ClusterFile, DatabaseFile, FileConfig, FiltersFile, GroupFile, HttpFile,
    Int, LogFile, ReloadFile, StorageFile, TwitchFile,
};
use super::login::{normalize_login, parse_user_entry, UserEntry};
use super::*;

/// Validates `file` into a [`Config`]; problems go to `problems` (and then the config is `None`).
pub fn validate(
    file: FileConfig,
    text: Option<&str>,
    origin: Origin,
    overrides: Vec<EnvOverride>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut cx = Ctx { text, overrides: &overrides, problems };
    let twitch = twitch(&mut cx, &file.twitch);
    let batch = batch(&mut cx, &file.batch);
    let reload = reload(&mut cx, &file.reload);
    let http = http(&mut cx, &file.http);
    let log = log(&mut cx, &file.log);
    let storage = StorageConfig { raw_lines: file.storage.raw_lines.as_ref().is_some_and(|r| *r.get_ref()) };
    let database = database(&mut cx, &file.database, matches!(origin, Origin::File(_)));
    let live_storage = live_storage(&mut cx, &file.storage);
    let accounts: BTreeMap<_, _> =
        file.accounts.iter().map(|(name, a)| (name.clone(), account(&mut cx, name, a))).collect();
    let groups = file.groups.iter().map(|(name, g)| (name.clone(), group(&mut cx, name, g, &accounts))).collect();
    let filters = filters(&mut cx, &file.filters);
    let cluster = cluster(&mut cx, &file.cluster);
    if !cx.problems.is_empty() {
        return None;
    }
    let spool_dir =
        file.batch.spool_dir.as_ref().map_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR), |p| p.get_ref().clone());
    Some(Config {
        origin,
        startup: StartupConfig { twitch, database: database?, reload, http, log, spool_dir, storage },
        live: LiveConfig { accounts, groups, batch, filters, cluster, storage: live_storage },
        env_overrides: overrides,
    })
}

/// Where problems go, and what places them: the file's text and the keys the environment set.
struct Ctx<'a> {
    text: Option<&'a str>,
    overrides: &'a [EnvOverride],
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn location(&self, key: &str, span: Option<Range<usize>>) -> Location {
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

    fn problem(&mut self, key: &str, span: Option<Range<usize>>, message: impl std::fmt::Display) {
        let location = self.location(key, span);
        self.problems.push(Problem { key: key.to_string(), location, message: message.to_string() });
    }

    /// Parses the value of `key` with `parse`, or reports the error at the value's place and
    /// gives `default`. Unset, the value is `default`.
    fn parse_or<T, E: Display>(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> T {
        let Some(v) = value else { return default };
        parse(v.get_ref()).unwrap_or_else(|e| {
            self.problem(key, Some(v.span()), e.to_string());
            default
        })
    }

    fn duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<String>>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        self.parse_or(key, value.as_ref(), default, |text| match parse_duration(text).map_err(|e| e.to_string())? {
            d if d >= min && d <= max => Ok(d),
            _ => Err(format!(
                "`{text}` is out of range; use a value from {} to {}",
                format_duration(min),
                format_duration(max)
            )),
        })
    }

    /// Carries `validator`'s errors on `[table]` to problems at each value's key and place, in
    /// file order. A field's name is its key.
    fn report_invalid(&mut self, table: &str, checked: Result<(), ValidationErrors>) {
        let Err(errors) = checked else { return };
        let mut found: Vec<(Option<Range<usize>>, String, String)> = errors
            .field_errors()
            .into_iter()
            .flat_map(|(field, errs)| {
                errs.iter().map(move |e| {
                    let message = e.message.as_deref().unwrap_or("is out of range").to_string();
                    (file::span_of_invalid(e), format!("{table}.{field}"), message)
                })
            })
            .collect();
        found.sort_by_key(|(span, key, _)| (span.as_ref().map(|s| s.start), key.clone()));
        for (span, key, message) in found {
            self.problem(&key, span, message);
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

fn twitch(cx: &mut Ctx<'_>, t: &TwitchFile) -> TwitchConfig {
    let default = TwitchConfig::default();
    TwitchConfig {
        server: cx.parse_or("twitch.server", t.server.as_ref(), default.server, ServerAddr::parse),
        auth_url: cx.parse_or("twitch.auth_url", t.auth_url.as_ref(), default.auth_url, AuthEndpoint::parse),
        token_dir: t.token_dir.as_ref().map_or(default.token_dir, |d| d.get_ref().clone()),
    }
}

fn batch(cx: &mut Ctx<'_>, b: &BatchFile) -> BatchConfig {
    cx.report_invalid("batch", b.validate());
    let default = BatchConfig::default();
    let int = |v: &Option<Int>, default: usize| v.as_ref().map_or(default as i64, |v| *v.get_ref());
    let (max_rows, queue_capacity) =
        (int(&b.max_rows, default.max_rows), int(&b.queue_capacity, default.queue_capacity));
    if queue_capacity < max_rows {
        cx.problem(
            "batch.queue_capacity",
            b.queue_capacity.as_ref().map(|v| v.span()),
            format!(
                "({queue_capacity}) is smaller than batch.max_rows ({max_rows}); the queue must hold at least one batch"
            ),
        );
    }
    let ms = Duration::from_millis;
    let flush_interval =
        cx.duration("batch.flush_interval", &b.flush_interval, default.flush_interval, ms(10), ms(600_000));
    // Unset, the bound follows a long flush_interval instead of contradicting it.
    let durable_default = default.durable_within.max(flush_interval + ms(3500));
    let batch = BatchConfig {
        max_rows: max_rows.clamp(1, 50_000) as usize,
        flush_interval,
        queue_capacity: queue_capacity.clamp(1, 10_000_000) as usize,
        spool_max_bytes: b
            .spool_max_bytes
            .as_ref()
            .map_or(default.spool_max_bytes as i64, |v| *v.get_ref())
            .max(1_048_576) as u64,
        shutdown_timeout: cx.duration(
            "batch.shutdown_timeout",
            &b.shutdown_timeout,
            default.shutdown_timeout,
            Duration::ZERO,
            ms(3_600_000),
        ),
        durable_within: cx.duration("batch.durable_within", &b.durable_within, durable_default, ms(100), ms(3_600_000)),
    };
    if batch.durable_within <= batch.flush_interval {
        cx.problem(
            "batch.durable_within",
            b.durable_within.as_ref().map(|v| v.span()),
            format!(
                "({}) must be longer than batch.flush_interval ({}): rows wait up to flush_interval in memory before their first write",
                format_duration(batch.durable_within),
                format_duration(batch.flush_interval)
            ),
        );
    }
    batch
}

fn cluster(cx: &mut Ctx<'_>, c: &ClusterFile) -> ClusterConfig {
    cx.report_invalid("cluster", c.validate());
    if let (Some(_), Some(n)) = (&c.shard, &c.shards) {
        cx.problem(
            "cluster.shards",
            Some(n.span()),
            "is set together with shard; keep one: shard = \"INDEX/COUNT\" names this instance's shard, shards = COUNT takes it from the StatefulSet pod name",
        );
    }
    let default = ClusterConfig::default();
    let shard = cx.parse_or("cluster.shard", c.shard.as_ref(), default.shard, Shard::parse);
    let replicas = c.replicas.as_ref().map_or(1, |r| *r.get_ref());
    if (1..=1000).contains(&replicas) && replicas > i64::from(shard.count) {
        cx.problem(
            "cluster.replicas",
            c.replicas.as_ref().map(|r| r.span()),
            format!(
                "({replicas}) is more than the shard count ({}); each channel can be logged by at most every shard",
                shard.count
            ),
        );
    }
    ClusterConfig { shard, replicas: replicas.clamp(1, i64::from(shard.count)) as u32 }
}

fn reload(cx: &mut Ctx<'_>, r: &ReloadFile) -> ReloadConfig {
    let default = ReloadConfig::default();
    let ms = Duration::from_millis;
    ReloadConfig {
        mode: cx.parse_or("reload.mode", r.mode.as_ref(), default.mode, str::parse),
        poll_interval: cx.duration(
            "reload.poll_interval",
            &r.poll_interval,
            default.poll_interval,
            ms(100),
            ms(3_600_000),
        ),
        debounce: cx.duration("reload.debounce", &r.debounce, default.debounce, Duration::ZERO, ms(10_000)),
    }
}

fn http(cx: &mut Ctx<'_>, h: &HttpFile) -> HttpConfig {
    let listen = cx.parse_or("http.listen", h.listen.as_ref(), HttpConfig::default().listen, |listen| match listen {
        "off" => Ok(None),
        _ => listen.parse().map(Some).map_err(|_| {
            format!(
                "`{listen}` is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\", or \"off\""
            )
        }),
    });
    HttpConfig { listen, api: h.api.as_ref().is_none_or(|a| *a.get_ref()) }
}

fn log(cx: &mut Ctx<'_>, l: &LogFile) -> LogConfig {
    let default = LogConfig::default();
    LogConfig {
        level: cx.parse_or("log.level", l.level.as_ref(), default.level, |level| {
            if let Some(word) = bare_word_not_a_level(level) {
                return Err(format!("`{word}` is not a level (off, error, warn, info, debug, trace); alone, a word is read as a module name and every other log line is hidden; write e.g. \"warn\" or \"info,{word}=debug\""));
            }
            match tracing_subscriber::EnvFilter::try_new(level) {
                Ok(_) => Ok(level.to_string()),
                Err(e) => Err(format!(
                    "`{level}` is not a log filter ({e}); use e.g. \"info\" or \"info,twitch_chat_logger=debug\""
                )),
            }
        }),
        format: cx.parse_or("log.format", l.format.as_ref(), default.format, str::parse),
    }
}

/// A directive that is one bare word but no level: the filter would read it as a module name
/// and hide every other line (`warning` did).
fn bare_word_not_a_level(filter: &str) -> Option<&str> {
    let levels = ["off", "error", "warn", "info", "debug", "trace"];
    filter.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', ':', '_', '['])
            && !levels.contains(&d.to_ascii_lowercase().as_str())
            && d.parse::<u8>().is_err()
    })
}

fn database(cx: &mut Ctx<'_>, d: &DatabaseFile, has_file: bool) -> Option<DatabaseConfig> {
    cx.report_invalid("database", d.validate());
    let nothing_set = d.url.is_none()
        && d.host.is_none()
        && d.port.is_none()
        && d.name.is_none()
        && d.user.is_none()
        && d.password.is_none()
        && d.password_file.is_none();
    // Env-only mode always names a PostgreSQL server (its variables are required).
    if nothing_set && has_file {
        return Some(DatabaseConfig::Sqlite(PathBuf::from(DEFAULT_SQLITE_PATH)));
    }
    if let Some(url) = &d.url {
        let u = url.expose_secret();
        if let Some(path) = sqlite_path(u) {
            return match path {
                Ok(p) => Some(DatabaseConfig::Sqlite(p)),
                Err(why) => {
                    cx.problem("database.url", None, why);
                    None
                }
            };
        }
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            cx.problem(
                "database.url",
                None,
                "must start with postgres:// or postgresql:// (a server), or sqlite:// (a file, e.g. sqlite://data/chat.db) (value hidden because it may hold a password)",
            );
            return None;
        }
        // An `@` past the host: an unescaped `/`, `?` or `#` in the password cut it short, and
        // its tail would be read (and logged) as the port and the database name.
        let after_host = u.split_once("://").and_then(|(_, rest)| rest.split_once(['/', '?', '#'])).map(|(_, t)| t);
        if after_host.is_some_and(|tail| tail.contains('@')) {
            cx.problem(
                "database.url",
                None,
                "has an `@` after the host: write a `/`, `?` or `#` in the password as %2F, %3F, %23 (value hidden because it may hold a password)",
            );
            return None;
        }
        // Parsed as `run` parses it, so `check` cannot pass a URL that `run` refuses.
        if <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(u).is_err() {
            cx.problem(
                "database.url",
                None,
                "cannot be read as a PostgreSQL URL; check that the port is a number, the host has no spaces, and a `%` in the password is written `%25` (value hidden because it may hold a password)",
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

/// The file of a `sqlite://PATH` or `sqlite:PATH` URL (`None`: not a SQLite URL). PATH is
/// taken as written, relative to the working directory unless it starts with `/`
/// (`sqlite:///var/lib/chat.db`). Options (`?mode=…`) and in-memory databases are refused:
/// the logger sets its own, and rows in memory would be lost at exit.
pub fn sqlite_path(url: &str) -> Option<Result<PathBuf, String>> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let example =
        "write e.g. sqlite://data/chat.db (relative to the working directory) or sqlite:///var/lib/twitch/chat.db";
    Some(if rest.trim().is_empty() {
        Err(format!("`{url}` names no file; {example}"))
    } else if rest.contains(['?', '#']) {
        Err(format!("`{url}` has options after `?` or `#`; the logger sets its own (WAL, busy timeout): {example}"))
    } else if rest == ":memory:" || rest.starts_with("file:") {
        Err(format!("`{url}` is not a file the rows would survive in; {example}"))
    } else if rest.ends_with('/') {
        Err(format!("`{url}` names a directory; add a file name, {example}"))
    } else {
        Ok(PathBuf::from(rest))
    })
}

/// `[storage]`'s live part. Retention works on both stores: SQLite deletes in chunks, PostgreSQL drops
/// whole time partitions (see `store::pg_partition`).
fn live_storage(cx: &mut Ctx<'_>, s: &StorageFile) -> LiveStorage {
    let partition = match s
        .partition
        .as_ref()
        .map(|v| (v, v.get_ref().split_whitespace().collect::<Vec<_>>().join(" ")))
    {
        None => PartitionInterval::default(),
        Some((_, t)) if t == "1 day" || t == "day" => PartitionInterval::Day,
        Some((_, t)) if t == "1 month" || t == "month" => PartitionInterval::Month,
        Some((v, _)) => {
            cx.problem(
                "storage.partition",
                Some(v.span()),
                format!("`{}` is not a partition interval; write \"1 day\" (the default) or \"1 month\"", v.get_ref()),
            );
            PartitionInterval::default()
        }
    };
    let Some(v) = &s.retention else { return LiveStorage { partition, ..LiveStorage::default() } };
    let text = v.get_ref().trim();
    if text == "forever" {
        return LiveStorage { partition, ..LiveStorage::default() };
    }
    let parsed = match text.strip_suffix('d') {
        Some(days) => days.trim().parse::<f64>().ok().filter(|d| d.is_finite() && *d >= 0.0).map(|d| d * 86_400.0),
        None => parse_duration(text).ok().map(|d| d.as_secs_f64()),
    };
    let retention = match parsed {
        Some(secs) if (3600.0..=36_500.0 * 86_400.0).contains(&secs) => Duration::from_secs_f64(secs),
        _ => {
            cx.problem(
                "storage.retention",
                Some(v.span()),
                format!("`{text}` is not a retention; write a number of days or hours from 1h to 36500d, e.g. \"90d\" or \"36h\", or \"forever\" (the default)"),
            );
            return LiveStorage { partition, ..LiveStorage::default() };
        }
    };
    LiveStorage { retention: Some(retention), partition }
}

fn account(cx: &mut Ctx<'_>, name: &str, a: &AccountFile) -> AccountConfig {
    let key = |k: &str| format!("accounts.{name}.{k}");
    if let Err(e) = check_table_name(name) {
        cx.problem(&format!("accounts.{name}"), None, e);
    }
    let token = token(cx, &key, a);
    let username = a.username.as_ref().and_then(|u| match normalize_login(u.get_ref()) {
        Ok(u) => Some(u),
        Err(e) => {
            cx.problem(&key("username"), Some(u.span()), format!("{e} (a bot username is a Twitch login)"));
            None
        }
    });
    let refresh = refresh(cx, &key, a);
    let credentials = credentials(cx, &key, a, username, token, refresh);
    let join_rate = cx.parse_or(&key("join_rate"), a.join_rate.as_ref(), Rate::TWITCH_DEFAULT_JOINS, parse_rate);
    AccountConfig { credentials, join_rate }
}

/// The token from `oauth_token` or `token_file`, in shape; `None` when unset or wrong.
fn token(cx: &mut Ctx<'_>, key: &dyn Fn(&str) -> String, a: &AccountFile) -> Option<SecretString> {
    let raw = match (&a.oauth_token, &a.token_file) {
        (Some(_), Some(f)) => {
            cx.problem(&key("token_file"), Some(f.span()), "is set together with oauth_token; keep one of the two");
            None
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(f)) => cx.read_secret_file(&key("token_file"), f),
        (None, None) => None,
    };
    match normalize_token(raw?.expose_secret()) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.problem(&key("oauth_token"), None, e.to_string());
            None
        }
    }
}

/// The refresh credentials' keys, in the order they are reported.
const REFRESH_KEYS: [&str; 5] =
    ["client_id", "client_secret", "client_secret_file", "refresh_token", "refresh_token_file"];

fn refresh_given(a: &AccountFile) -> bool {
    a.client_id.is_some()
        || a.client_secret.is_some()
        || a.client_secret_file.is_some()
        || a.refresh_token.is_some()
        || a.refresh_token_file.is_some()
}

/// A secret given inline or in a file: `Ok(None)` when neither is set, `Err` when reported.
fn secret_value(
    cx: &mut Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    names: (&str, &str),
    inline: &Option<SecretString>,
    file: &Option<Spanned<std::path::PathBuf>>,
) -> Result<Option<SecretString>, ()> {
    let (inline_key, file_key) = names;
    let raw = match (inline, file) {
        (Some(_), Some(f)) => {
            cx.problem(
                &key(file_key),
                Some(f.span()),
                format!("is set together with {inline_key}; keep one of the two"),
            );
            return Err(());
        }
        (Some(v), None) => v.clone(),
        (None, Some(f)) => cx.read_secret_file(&key(file_key), f).ok_or(())?,
        (None, None) => return Ok(None),
    };
    let v = raw.expose_secret().trim();
    let problem = if v.is_empty() {
        Some("is empty; paste the whole value")
    } else if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains spaces or control characters (value hidden); paste the value alone")
    } else {
        None
    };
    match problem {
        Some(p) => {
            match (inline, file) {
                (Some(_), _) => cx.problem(&key(inline_key), None, p),
                (_, f) => cx.problem(&key(file_key), f.as_ref().map(|f| f.span()), p),
            }
            Err(())
        }
        None => Ok(Some(SecretString::from(v.to_string()))),
    }
}

/// `client_id`, `client_secret[_file]` and `refresh_token[_file]`: all three or none. `None`
/// when unset or wrong (then reported).
fn refresh(cx: &mut Ctx<'_>, key: &dyn Fn(&str) -> String, a: &AccountFile) -> Option<RefreshCredentials> {
    if !refresh_given(a) {
        return None;
    }
    let client_id = match &a.client_id {
        Some(id) => {
            let v = id.get_ref().trim();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                cx.problem(
                    &key("client_id"),
                    Some(id.span()),
                    format!("`{v}` is not a client id; copy the Client ID of your app at https://dev.twitch.tv/console/apps (letters and digits)"),
                );
                None
            } else {
                Some(v.to_string())
            }
        }
        None => None,
    };
    let secret =
        secret_value(cx, key, ("client_secret", "client_secret_file"), &a.client_secret, &a.client_secret_file);
    let token = secret_value(cx, key, ("refresh_token", "refresh_token_file"), &a.refresh_token, &a.refresh_token_file);
    let needs = "an account renewing its own token needs client_id, client_secret (or client_secret_file) and \
                 refresh_token (or refresh_token_file); add it, or remove the others to use a fixed oauth_token";
    if a.client_id.is_none() {
        cx.problem(&key("client_id"), None, format!("is missing: {needs}"));
    }
    if matches!(secret, Ok(None)) {
        cx.problem(&key("client_secret"), None, format!("is missing: {needs}"));
    }
    if matches!(token, Ok(None)) {
        cx.problem(&key("refresh_token"), None, format!("is missing: {needs}"));
    }
    Some(RefreshCredentials { client_id: client_id?, client_secret: secret.ok()??, refresh_token: token.ok()?? })
}

/// A login needs a username and a token or refresh credentials; none of them is anonymous;
/// anything else is a mistake.
fn credentials(
    cx: &mut Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    a: &AccountFile,
    username: Option<String>,
    token: Option<SecretString>,
    refresh: Option<RefreshCredentials>,
) -> Credentials {
    let token_given = a.oauth_token.is_some() || a.token_file.is_some();
    let refresh_given = refresh_given(a);
    match (&a.username, token_given || refresh_given) {
        (Some(_), true) => match username {
            // A wrong token or refresh part is already reported.
            Some(username) if token_given == token.is_some() && refresh_given == refresh.is_some() => {
                Credentials::Login { username, token, refresh }
            }
            _ => Credentials::Anonymous,
        },
        (None, false) => Credentials::Anonymous,
        (Some(u), false) => {
            cx.problem(&key("username"), Some(u.span()), "is set but the account has no oauth_token or token_file (nor client_id, client_secret and refresh_token); add one, or remove username to log in anonymously");
            Credentials::Anonymous
        }
        (None, true) => {
            let first = if token_given {
                "oauth_token"
            } else {
                REFRESH_KEYS
                    .into_iter()
                    .find(|k| match *k {
                        "client_id" => a.client_id.is_some(),
                        "client_secret" => a.client_secret.is_some(),
                        "client_secret_file" => a.client_secret_file.is_some(),
                        "refresh_token" => a.refresh_token.is_some(),
                        _ => a.refresh_token_file.is_some(),
                    })
                    .unwrap_or("refresh_token")
            };
            cx.problem(&key(first), None, "is set but the account has no username; add the bot's login as username");
            Credentials::Anonymous
        }
    }
}

fn group(cx: &mut Ctx<'_>, name: &str, g: &GroupFile, accounts: &BTreeMap<String, AccountConfig>) -> GroupConfig {
    let key = |k: &str| format!("groups.{name}.{k}");
    if let Err(e) = check_table_name(name) {
        cx.problem(&format!("groups.{name}"), None, e);
    }
    if g.accounts.is_empty() {
        let example = accounts.keys().next().map_or(DEFAULT_NAME, String::as_str);
        cx.problem(
            &key("accounts"),
            None,
            format!("is empty; name at least one account, e.g. accounts = [\"{example}\"]"),
        );
    }
    let mut names = Vec::new();
    for a in &g.accounts {
        if !accounts.contains_key(a.get_ref()) {
            let hint = unknown_account_hint(accounts, a.get_ref());
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
            Err(e) => {
                cx.problem(&key("channels"), Some(c.span()), format!("{e} (a channel is its streamer's Twitch login)"))
            }
        }
    }
    let ignore_users = user_list(cx, &key("ignore_users"), &g.ignore_users);
    GroupConfig { accounts: names, channels, ignore_users }
}

fn filters(cx: &mut Ctx<'_>, f: &FiltersFile) -> FiltersConfig {
    FiltersConfig {
        ignore_users: user_list(cx, "filters.ignore_users", &f.ignore_users),
        opt_out_users: user_list(cx, "filters.opt_out_users", &f.opt_out_users),
    }
}

/// `ignore_users` / `opt_out_users`: each entry a login or a user id, normalised; repeats
/// are merged; every bad entry is reported at its line.
fn user_list(cx: &mut Ctx<'_>, key: &str, entries: &[Spanned<String>]) -> UserList {
    let mut list = UserList::default();
    for e in entries {
        match parse_user_entry(e.get_ref()) {
            Ok(UserEntry::Login(l)) => {
                list.logins.insert(l);
            }
            Ok(UserEntry::Id(i)) => {
                list.ids.insert(i);
            }
            Err(message) => cx.problem(key, Some(e.span()), message),
        }
    }
    list
}

/// "did you mean" for a close name, else the list of accounts.
fn unknown_account_hint(accounts: &BTreeMap<String, AccountConfig>, name: &str) -> String {
    let known: Vec<&str> = accounts.keys().map(String::as_str).collect();
    known
        .iter()
        .min_by_key(|k| strsim::damerau_levenshtein(k, name))
        .filter(|k| strsim::damerau_levenshtein(k, name) <= 2)
        .map(|k| format!("did you mean `{k}`?"))
        .unwrap_or_else(|| format!("define [accounts.{name}] or use one of: {}", known.join(", ")))
}

fn check_table_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a usable name; use letters, digits, `_` and `-`"))
    }
}

#[cfg(test)]
mod tests {
    //! Whole problem lists and `check` output, pinned: the split into per-table checks must
    //! report the same problems, at the same keys and lines, in the same words.

    use super::super::{load_text, render::render};
    use std::collections::HashMap;
    use std::path::Path;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<super::Config, super::super::ConfigError> {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_text(Some((Path::new("c.toml"), text)), &move |k| map.get(k).cloned())
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        load(text, env).unwrap_err().problems.iter().map(|p| p.to_string()).collect()
    }

    const EVERY_TABLE_WRONG: &str = r#"
[twitch]
server = "ftp://x"

[database]
port = 0
password = "p"
password_file = "/nonexistent"

[batch]
max_rows = 0
flush_interval = "soon"
queue_capacity = 0
spool_max_bytes = 5
shutdown_timeout = "2h"
durable_within = "1ms"

[reload]
mode = "sometimes"
poll_interval = "1ms"
debounce = "1m"

[http]
listen = "localhost"

[log]
level = "[[["
format = "xml"

[accounts.a]
username = "bad name!"
oauth_token = "oauth:"
join_rate = "fast"

[accounts."b c"]

[accounts.both]
username = "bot"
oauth_token = "tok"
token_file = "/nonexistent"

[accounts.nouser]
oauth_token = "tok"

[accounts.notoken]
username = "bot"

[groups.g]
accounts = ["a", "aa", "zzz", "a"]
channels = ["ok", "not-ok"]

[groups.e]
accounts = []
"#;

    #[test]
    fn a_file_wrong_in_every_table_gets_the_same_problems_in_the_same_words() {
        let expected = vec!["key `accounts.a.oauth_token`: is empty after the `oauth:` prefix; paste the whole token", "key `accounts.b c`: `b c` is not a usable name; use letters, digits, `_` and `-`", "key `accounts.nouser.oauth_token`: is set but the account has no username; add the bot's login as username", "key `groups.e.accounts`: is empty; name at least one account, e.g. accounts = [\"a\"]", "line 3: key `twitch.server`: `ftp://x` has no ircs:// or irc:// scheme; write it as ircs://irc.chat.twitch.tv:6697 (TLS) or irc://127.0.0.1:6667 (plain)", "line 6: key `database.port`: must be a port number from 1 to 65535", "line 8: key `database.password_file`: is set together with password; keep one of the two", "line 11: key `batch.max_rows`: must be between 1 and 50000", "line 12: key `batch.flush_interval`: `soon` does not start with a number; write e.g. \"1.5s\"", "line 13: key `batch.queue_capacity`: must be between 1 and 10000000", "line 14: key `batch.spool_max_bytes`: must be at least 1048576 (1 MiB)", "line 15: key `batch.shutdown_timeout`: `2h` is out of range; use a value from 0s to 60m", "line 16: key `batch.durable_within`: `1ms` is out of range; use a value from 100ms to 60m", "line 19: key `reload.mode`: `sometimes` is not a mode; use \"watch\", \"poll\" or \"off\"", "line 20: key `reload.poll_interval`: `1ms` is out of range; use a value from 100ms to 60m", "line 21: key `reload.debounce`: `1m` is out of range; use a value from 0s to 10s", "line 24: key `http.listen`: `localhost` is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\", or \"off\"", "line 27: key `log.level`: `[[[` is not a log filter (invalid filter directive); use e.g. \"info\" or \"info,twitch_chat_logger=debug\"", "line 28: key `log.format`: `xml` is not a format; use \"text\" or \"json\"", "line 31: key `accounts.a.username`: `bad name!` contains ` `; Twitch logins use only letters, digits and `_` (a bot username is a Twitch login)", "line 33: key `accounts.a.join_rate`: `fast` is not a rate; write it as \"20/10s\"", "line 40: key `accounts.both.token_file`: is set together with oauth_token; keep one of the two", "line 46: key `accounts.notoken.username`: is set but the account has no oauth_token or token_file (nor client_id, client_secret and refresh_token); add one, or remove username to log in anonymously", "line 49: key `groups.g.accounts`: names account `aa`, which does not exist; did you mean `a`?", "line 49: key `groups.g.accounts`: names account `zzz`, which does not exist; define [accounts.zzz] or use one of: a, b c, both, notoken, nouser", "line 50: key `groups.g.channels`: `not-ok` contains `-`; Twitch logins use only letters, digits and `_` (a channel is its streamer's Twitch login)"];
        assert_eq!(problems(EVERY_TABLE_WRONG, &[]), expected);
    }

    #[test]
    fn cross_key_and_range_checks_keep_their_words() {
        let expected = vec!["line 3: key `batch.queue_capacity`: (100) is smaller than batch.max_rows (500); the queue must hold at least one batch", "line 2: key `batch.max_rows`: must be between 1 and 50000", "line 3: key `batch.queue_capacity`: must be between 1 and 10000000", "line 4: key `batch.spool_max_bytes`: must be at least 1048576 (1 MiB)", "line 3: key `batch.durable_within`: (2s) must be longer than batch.flush_interval (2s): rows wait up to flush_interval in memory before their first write", "key `database.url`: must start with postgres:// or postgresql:// (a server), or sqlite:// (a file, e.g. sqlite://data/chat.db) (value hidden because it may hold a password)", "line 2: key `batch.flush_interval`: `5ms` is out of range; use a value from 10ms to 10m", "line 4: key `database.port`: must be a port number from 1 to 65535", "line 2: key `reload.debounce`: `-1s` does not start with a number; write e.g. \"1.5s\"", "line 4: key `accounts.x.join_rate`: `0/10s` allows nothing; both sides must be above 0"];
        let mut all = problems("[batch]\nmax_rows = 500\nqueue_capacity = 100\n", &[]);
        all.extend(problems("[batch]\nmax_rows = 50001\nqueue_capacity = 10000001\nspool_max_bytes = -1\n", &[]));
        all.extend(problems("[batch]\nflush_interval = \"2s\"\ndurable_within = \"2s\"\n", &[]));
        all.extend(problems(
            "[batch]\nflush_interval = \"5ms\"\n[database]\nport = 65536\nurl = \"mysql://u:SECRETPW@h/db\"\n",
            &[],
        ));
        all.extend(problems("[reload]\ndebounce = \"-1s\"\n[accounts.x]\njoin_rate = \"0/10s\"\n", &[]));
        assert_eq!(all, expected);
    }

    #[test]
    fn values_from_the_environment_are_reported_at_their_variable() {
        let env = [
            ("HTTP_LISTEN", "nowhere"),
            ("TWITCH_IRC_SERVER", "gopher://x"),
            ("TWITCH_CHANNELS", "ok,bad channel!"),
            ("TWITCH_USERNAME", "bot"),
            ("TWITCH_OAUTH_TOKEN", "tok en"),
        ];
        let expected = vec!["environment variable TWITCH_IRC_SERVER: `gopher://x` has no ircs:// or irc:// scheme; write it as ircs://irc.chat.twitch.tv:6697 (TLS) or irc://127.0.0.1:6667 (plain)", "environment variable HTTP_LISTEN: `nowhere` is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\", or \"off\"", "environment variable TWITCH_OAUTH_TOKEN: contains spaces or control characters (value hidden); paste the token alone", "environment variable TWITCH_CHANNELS: `bad channel!` contains ` `; Twitch logins use only letters, digits and `_` (a channel is its streamer's Twitch login)", "line 2: key `batch.max_rows`: must be between 1 and 50000"];
        assert_eq!(problems("[batch]\nmax_rows = 0\n", &env), expected);
    }

    #[test]
    fn check_renders_modes_and_formats_by_their_names() {
        let text = "[reload]\nmode = \"poll\"\n[log]\nformat = \"json\"\nlevel = \"debug\"\n[database]\nurl = \"postgres://u:SECRETPW@h/db\"\n[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"x\"]\n";
        let out = render(&load(text, &[]).unwrap());
        let expected = "# effective configuration: file c.toml + environment\n\n[twitch]\nserver = \"ircs://irc.chat.twitch.tv:6697\"\nauth_url = \"https://id.twitch.tv/oauth2\"\ntoken_dir = \"data/tokens\"\n\n[database]\nurl = \"[redacted]\"\n\n[batch]\nmax_rows = 100\nflush_interval = \"1500ms\"\nqueue_capacity = 100000\nspool_dir = \"data/spool\"\nspool_max_bytes = 1073741824\nshutdown_timeout = \"10s\"\ndurable_within = \"5s\"\n\n[reload]\nmode = \"poll\"\npoll_interval = \"1s\"\ndebounce = \"100ms\"\n\n[http]\nlisten = \"127.0.0.1:8080\"\napi = true\n\n[log]\nlevel = \"debug\"\nformat = \"json\"\n\n[storage]\nraw_lines = false\nretention = \"forever\"\npartition = \"1 day\"\n\n[accounts.a]\n# anonymous (read-only, no token)\njoin_rate = \"20/10s\"\n# joins 1 channel(s)\n\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"x\"]\n";
        assert_eq!(out, expected);
        let text = "[reload]\nmode = \"off\"\n[log]\nformat = \"text\"\n";
        let out = render(&load(text, &[("DATABASE_URL", "postgres://h/db")]).unwrap());
        assert!(out.contains("\n[reload]\nmode = \"off\"\n") && out.contains("\nformat = \"text\"\n"), "{out}");
        let out = render(&load("", &[("DATABASE_URL", "postgres://h/db")]).unwrap());
        assert!(out.contains("\n[reload]\nmode = \"watch\"\n") && out.contains("\nformat = \"text\"\n"), "{out}");
    }

    #[test]
    fn reload_modes_and_log_formats_are_read_and_printed_by_the_same_names() {
        use super::super::{LogFormat, ReloadMode};
        for m in [ReloadMode::Watch, ReloadMode::Poll, ReloadMode::Off] {
            assert_eq!(m.to_string().parse::<ReloadMode>(), Ok(m));
        }
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert_eq!(ReloadMode::Poll.to_string(), "poll");
        assert_eq!(LogFormat::Json.to_string(), "json");
        let e = "Watch".parse::<ReloadMode>().unwrap_err();
        assert_eq!(e.to_string(), "`Watch` is not a mode; use \"watch\", \"poll\" or \"off\"");
        assert_eq!(" json".parse::<LogFormat>().unwrap_err().value, " json");
    }

    #[test]
    fn range_errors_on_one_line_are_reported_in_the_order_written() {
        let text = "batch = { queue_capacity = 0, max_rows = 0, spool_max_bytes = 1 }\n";
        for _ in 0..20 {
            let expected = [
                "line 1: key `batch.queue_capacity`: must be between 1 and 10000000",
                "line 1: key `batch.max_rows`: must be between 1 and 50000",
                "line 1: key `batch.spool_max_bytes`: must be at least 1048576 (1 MiB)",
            ];
            assert_eq!(problems(text, &[]), expected);
        }
    }
}
