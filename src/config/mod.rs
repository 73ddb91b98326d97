//! Configuration: the TOML schema ([`file`]), the original's environment variables ([`env`]),
//! validation into the typed [`Config`] ([`validate`]) and the `check` report ([`render`]).
//!
//! Precedence is environment over file over built-in defaults. With no file at all the logger
//! runs from the original Go program's eight variables alone ("env-only mode").

pub mod cluster;
pub mod duration;
pub mod env;
pub mod file;
pub mod login;
pub mod render;
pub mod validate;

use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cluster::{ClusterConfig, Shard};
pub use duration::Rate;

pub use login::ServerAddr;

pub use crate::twitch::auth::{AuthEndpoint, RefreshCredentials, DEFAULT_AUTH_URL, DEFAULT_TOKEN_DIR};

/// Where rows wait on disk by default (`batch.spool_dir`), under the working directory.
pub const DEFAULT_SPOOL_DIR: &str = "data/spool";

/// The embedded SQLite file used when a config file sets no database (`sqlite://data/chat.db`),
/// under the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "data/chat.db";

/// The default file looked for under the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/config.toml";

/// The account that `TWITCH_USERNAME`/`TWITCH_OAUTH_TOKEN` set, and the group `TWITCH_CHANNELS` sets.
pub const DEFAULT_NAME: &str = "default";

/// A validated, effective configuration: file + environment + defaults. Split by what a reload
/// may do with it: [`StartupConfig`] is read once, [`LiveConfig`] is applied to the running
/// logger. The type says which is which, so the applier cannot change a start-up setting.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: Origin,
    pub startup: StartupConfig,
    pub live: LiveConfig,
    /// Keys that an environment variable set, for the start-up notice and `check`.
    pub env_overrides: Vec<EnvOverride>,
}

impl Config {
    /// The channels an account should be in: the union of the groups that name it.
    pub fn channels_for(&self, account: &str) -> BTreeSet<String> {
        self.live.channels_for(account)
    }
}

/// Settings used once at start-up; a reload that changes one only warns that a restart is needed.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupConfig {
    pub twitch: TwitchConfig,
    pub database: DatabaseConfig,
    pub reload: ReloadConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    /// `batch.spool_dir`: the running writer's files stay where they are.
    pub spool_dir: PathBuf,
    /// `[storage]`
    pub storage: StorageConfig,
}

impl StartupConfig {
    /// The config keys (as written in the file) whose value differs in `new`: the one list of
    /// what needs a restart.
    pub fn changed_keys(&self, new: &StartupConfig) -> Vec<&'static str> {
        [
            ("batch.spool_dir", self.spool_dir != new.spool_dir),
            ("database", self.database != new.database),
            ("twitch.server", self.twitch.server != new.twitch.server),
            ("twitch.auth_url", self.twitch.auth_url != new.twitch.auth_url),
            ("twitch.token_dir", self.twitch.token_dir != new.twitch.token_dir),
            ("reload", self.reload != new.reload),
            ("http", self.http != new.http),
            ("log", self.log != new.log),
            ("storage.raw_lines", self.storage.raw_lines != new.storage.raw_lines),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// Settings a reload applies to the running logger.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// `[accounts.NAME]`, by name.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// `[groups.NAME]`, by name.
    pub groups: BTreeMap<String, GroupConfig>,
    pub batch: BatchConfig,
    /// `[filters]`: users whose rows are not stored, in every channel.
    pub filters: FiltersConfig,
    /// `[cluster]`: which of the configured channels this instance logs.
    pub cluster: ClusterConfig,
    /// The live part of `[storage]` (`raw_lines` is a start-up setting: `StartupConfig`).
    pub storage: LiveStorage,
}

/// `[storage] retention` and `partition`: how long the store keeps rows, and in what slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStorage {
    /// `retention`: rows older than this are deleted (in bounded chunks, on a timer). `None`:
    /// kept forever (the default).
    pub retention: Option<Duration>,
    /// `partition`: the time range of one PostgreSQL partition. Live: a reload changes the
    /// partitions made from then on (existing ones keep their range).
    pub partition: PartitionInterval,
}

/// `[storage] partition`: how much time one PostgreSQL partition of `chat_messages` and
/// `chat_events` holds. Retention drops whole partitions, so it is also retention's step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PartitionInterval {
    /// `"1 day"` (the default): at 10 million messages a day a partition and its indexes stay a
    /// few GB, the current day's indexes stay in memory, and `retention = "90d"` keeps at most
    /// one day more than asked.
    #[default]
    Day,
    /// `"1 month"`: 12 partitions a year, for small loggers (under ~100,000 messages a day).
    Month,
}

impl PartitionInterval {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionInterval::Day => "1 day",
            PartitionInterval::Month => "1 month",
        }
    }
}

impl LiveStorage {
    /// The retention as the config writes it: `"90d"`, `"36h"`, or `"forever"`.
    pub fn retention_text(&self) -> String {
        match self.retention {
            None => "forever".into(),
            Some(d) if d.as_secs().is_multiple_of(86_400) && d.subsec_nanos() == 0 => {
                format!("{}d", d.as_secs() / 86_400)
            }
            Some(d) if d.as_secs().is_multiple_of(3_600) && d.subsec_nanos() == 0 => {
                format!("{}h", d.as_secs() / 3_600)
            }
            Some(d) => duration::format_duration(d),
        }
    }
}

impl LiveConfig {
    /// The channels an account should be in: the union of the groups that name it, less the
    /// channels other shards log.
    pub fn channels_for(&self, account: &str) -> BTreeSet<String> {
        self.groups
            .values()
            .filter(|g| g.accounts.iter().any(|a| a == account))
            .flat_map(|g| g.channels.iter().filter(|c| self.cluster.owns(c)).cloned())
            .collect()
    }

    /// Every channel some account of this shard logs.
    pub fn all_channels(&self) -> BTreeSet<String> {
        self.groups.values().flat_map(|g| g.channels.iter().filter(|c| self.cluster.owns(c)).cloned()).collect()
    }

    /// Every channel of the config, whichever shard logs it.
    pub fn configured_channels(&self) -> BTreeSet<String> {
        self.groups.values().flat_map(|g| g.channels.iter().cloned()).collect()
    }

    /// The one line saying what this shard logs, for start-up, reloads and `check`.
    pub fn shard_summary(&self) -> String {
        let c = &self.cluster;
        format!(
            "shard {}, replicas {}: this instance logs {} of the {} configured channels",
            c.shard,
            c.replicas,
            self.all_channels().len(),
            self.configured_channels().len()
        )
    }

    /// Whether this user asked not to be logged (`filters.opt_out_users`), by login (any case)
    /// or user id; for the HTTP API, which refuses to serve their rows.
    pub fn is_opted_out(&self, login: &str, user_id: Option<&str>) -> bool {
        self.filters.opt_out_users.contains(Some(&login.trim().to_ascii_lowercase()), user_id)
    }
}

/// `[filters]`: lists that apply to every channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FiltersConfig {
    /// `ignore_users`: users whose messages and events are not stored (other bots).
    pub ignore_users: UserList,
    /// `opt_out_users`: users who asked not to be logged; nothing of theirs, nor any event
    /// naming them, is stored.
    pub opt_out_users: UserList,
}

/// Users named in the config, split by how they are named. An entry of digits only is a user
/// id (which also covers a login made of digits: its rows carry that id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserList {
    /// Normalised logins (lowercase, no `#`).
    pub logins: BTreeSet<String>,
    /// Twitch user ids.
    pub ids: BTreeSet<String>,
}

impl UserList {
    /// Neither a login nor an id.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty() && self.ids.is_empty()
    }

    /// Whether the user with this (normalised) login or this id is listed.
    pub fn contains(&self, login: Option<&str>, user_id: Option<&str>) -> bool {
        login.is_some_and(|l| self.logins.contains(l)) || user_id.is_some_and(|i| self.ids.contains(i))
    }

    /// Entries as written back by `check`: logins, then ids.
    pub fn entries(&self) -> impl Iterator<Item = &String> {
        self.logins.iter().chain(&self.ids)
    }
}

/// Where the configuration was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML file (plus environment overrides).
    File(PathBuf),
    /// No file: the original's environment variables only.
    EnvOnly,
}

/// `[twitch]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwitchConfig {
    /// IRC server to connect to.
    pub server: ServerAddr,
    /// `auth_url`: base of the OAuth token and validate endpoints.
    pub auth_url: AuthEndpoint,
    /// `token_dir`: where renewed tokens are kept, one `<account>.json` each.
    pub token_dir: PathBuf,
}

impl Default for TwitchConfig {
    fn default() -> Self {
        TwitchConfig {
            server: ServerAddr::twitch(),
            auth_url: AuthEndpoint::twitch(),
            token_dir: PathBuf::from(DEFAULT_TOKEN_DIR),
        }
    }
}

/// `[database]`: a URL, or the fields the original's `POSTGRES_*` variables set.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// `database.url` / `DATABASE_URL`.
    Url(SecretString),
    /// `host`, `port`, `name`, `user`, `password`.
    Fields { host: String, port: u16, name: String, user: String, password: Option<SecretString> },
    /// The embedded SQLite file: `database.url = "sqlite://PATH"` (or `sqlite:PATH`), or no
    /// database set anywhere while a config file is used. A relative path is from the working
    /// directory.
    Sqlite(PathBuf),
}

impl PartialEq for DatabaseConfig {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Url(a), Self::Url(b)) => a.expose_secret() == b.expose_secret(),
            (
                Self::Fields { host, port, name, user, password },
                Self::Fields { host: h2, port: p2, name: n2, user: u2, password: pw2 },
            ) => {
                (host, port, name, user) == (h2, p2, n2, u2)
                    && password.as_ref().map(|p| p.expose_secret()) == pw2.as_ref().map(|p| p.expose_secret())
            }
            (Self::Sqlite(a), Self::Sqlite(b)) => a == b,
            _ => false,
        }
    }
}

/// `[batch]`: how the shared writer batches rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when this many rows wait.
    pub max_rows: usize,
    /// Flush when the oldest waiting row is this old.
    pub flush_interval: Duration,
    /// Rows held in memory before rows go to the spool.
    pub queue_capacity: usize,
    /// Disk the spool may use; past it rows are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// On SIGTERM, how long to keep writing to the database before spooling the rest.
    pub shutdown_timeout: Duration,
    /// Bound on the time from reading a row to having it committed or on disk in the spool,
    /// whatever the database does: a write still waiting past it counts as failed.
    pub durable_within: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 100,
            flush_interval: Duration::from_millis(1500),
            queue_capacity: 100_000,
            spool_max_bytes: 1 << 30,
            shutdown_timeout: Duration::from_secs(10),
            durable_within: Duration::from_secs(5),
        }
    }
}

/// `[reload]`: how edits to the file are noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// watch (inotify & co), poll, or off.
    pub mode: ReloadMode,
    /// How often poll mode reads the file.
    pub poll_interval: Duration,
    /// Quiet time after the last file event before the file is read.
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            mode: ReloadMode::Watch,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(100),
        }
    }
}

/// `[http]`: the health and metrics listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address to listen on; `None` when set to `"off"`.
    pub listen: Option<std::net::SocketAddr>,
    /// `api`: serve the read-only log API and web page on the same listener (default on).
    pub api: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))), api: true }
    }
}

/// `[storage]`: what is kept of each line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// `raw_lines`: keep the exact line as received next to each stored row (a `raw` column).
    /// Start-up only: every row of one run has its line or none has.
    pub raw_lines: bool,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins.
    pub level: String,
    /// Plain text or JSON lines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How the file is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadMode {
    /// OS file events on the file's directory.
    Watch,
    /// Re-read on a timer (Docker Desktop mounts, network filesystems).
    Poll,
    /// Only SIGHUP reloads.
    Off,
}

/// A config value that is one of a few names: the names are written once, here, and both
/// parsing (`FromStr`) and `check`'s output (`Display`) use them.
trait Named: Copy + PartialEq + 'static {
    /// What a value is called in an error, e.g. "mode".
    const WHAT: &'static str;
    /// Every value with its name in the file, in the order an error lists them.
    const NAMES: &'static [(Self, &'static str)];

    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(v, _)| *v == self).map_or("", |(_, n)| n)
    }

    fn parse(s: &str) -> Result<Self, UnknownName> {
        Self::NAMES.iter().find(|(_, n)| *n == s).map(|(v, _)| *v).ok_or_else(|| UnknownName {
            value: s.to_string(),
            what: Self::WHAT,
            names: Self::NAMES.iter().map(|(_, n)| *n).collect(),
        })
    }
}

/// A name that is none of the accepted ones; its message lists those.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}; use {}", one_of(names))]
pub struct UnknownName {
    /// The name as written.
    pub value: String,
    what: &'static str,
    names: Vec<&'static str>,
}

/// `"a", "b" or "c"`
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

impl Named for LogFormat {
    const WHAT: &'static str = "format";
    const NAMES: &'static [(Self, &'static str)] = &[(LogFormat::Text, "text"), (LogFormat::Json, "json")];
}

impl Named for ReloadMode {
    const WHAT: &'static str = "mode";
    const NAMES: &'static [(Self, &'static str)] =
        &[(ReloadMode::Watch, "watch"), (ReloadMode::Poll, "poll"), (ReloadMode::Off, "off")];
}

macro_rules! named_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $t {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::parse(s)
            }
        }
    )*};
}
named_str!(LogFormat, ReloadMode);

/// `[accounts.NAME]`
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Who logs in.
    pub credentials: Credentials,
    /// JOIN pacing for this account.
    pub join_rate: Rate,
}

impl PartialEq for AccountConfig {
    fn eq(&self, other: &Self) -> bool {
        self.credentials == other.credentials && self.join_rate == other.join_rate
    }
}

/// A bot login, or anonymous read-only access.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `justinfan` login: reads chat, needs no token.
    Anonymous,
    /// A real account: a fixed token (stored without its `oauth:` prefix), refresh
    /// credentials, or both (then the token is the first one used). Never neither.
    Login { username: String, token: Option<SecretString>, refresh: Option<RefreshCredentials> },
}

impl Credentials {
    /// The login name shown in logs (never the token).
    pub fn display_login(&self) -> &str {
        match self {
            Credentials::Anonymous => "anonymous",
            Credentials::Login { username, .. } => username,
        }
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Anonymous, Self::Anonymous) => true,
            (Self::Login { username: a, token: t, refresh: r }, Self::Login { username: b, token: u, refresh: s }) => {
                let same_token =
                    t.as_ref().map(ExposeSecret::expose_secret) == u.as_ref().map(ExposeSecret::expose_secret);
                let same_refresh = match (r, s) {
                    (None, None) => true,
                    (Some(r), Some(s)) => {
                        r.client_id == s.client_id
                            && r.client_secret.expose_secret() == s.client_secret.expose_secret()
                            && r.refresh_token.expose_secret() == s.refresh_token.expose_secret()
                    }
                    _ => false,
                };
                a == b && same_token && same_refresh
            }
            _ => false,
        }
    }
}

/// `[groups.NAME]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Accounts that log this group's channels.
    pub accounts: Vec<String>,
    /// Normalised channel logins.
    pub channels: BTreeSet<String>,
    /// `ignore_users`: users whose rows are not stored in this group's channels.
    pub ignore_users: UserList,
}

/// A key set by an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    /// The variable, e.g. `TWITCH_CHANNELS`.
    pub var: &'static str,
    /// The key it sets, e.g. `groups.default.channels`.
    pub key: String,
    /// Whether the file set that key too (its value there is then ignored).
    pub file_also_set: bool,
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In the config file, at a line if known.
    File { line: Option<usize>, column: Option<usize> },
    /// In an environment variable.
    Env(&'static str),
    /// Nowhere in particular (e.g. a missing file).
    None,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `groups.esports.accounts`.
    pub key: String,
    /// Where.
    pub location: Location,
    /// What is wrong and how to fix it. Never contains a secret.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File { line: Some(l), column: Some(c) } => write!(f, "line {l}, column {c}: ")?,
            Location::File { line: Some(l), column: None } => write!(f, "line {l}: ")?,
            Location::Env(var) => write!(f, "environment variable {var}: ")?,
            _ => {}
        }
        if !self.key.is_empty() && !matches!(self.location, Location::Env(_)) {
            write!(f, "key `{}`: ", printable(&self.key))?;
        }
        f.write_str(&printable(&self.message))
    }
}

/// A problem is one line: control characters and bidirectional overrides from a quoted name
/// or value are escaped, so that a value can neither fake another line nor reorder the text.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let odd = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if s.chars().any(odd) {
        s.chars().map(|c| if odd(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        s.into()
    }
}

/// Every problem found in one load, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `None` in env-only mode.
    pub path: Option<PathBuf>,
    /// All problems, in file order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        match &self.path {
            Some(p) => writeln!(f, "{} has {n} problem{}:", p.display(), if n == 1 { "" } else { "s" })?,
            None => writeln!(
                f,
                "the environment has {n} problem{} (env-only mode, no config file):",
                if n == 1 { "" } else { "s" }
            )?,
        }
        for p in &self.problems {
            match &self.path {
                Some(path) if matches!(p.location, Location::File { .. }) => writeln!(f, "  {}: {p}", path.display())?,
                _ => writeln!(f, "  {p}")?,
            }
        }
        Ok(())
    }
}

/// Picks the file: `--config`, else `CONFIG_FILE`, else `config/config.toml` if it exists,
/// else none (env-only mode). An explicitly named file that is missing is an error, not a
/// silent fall back to env-only mode.
pub fn locate(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    let named = match cli {
        Some(p) => Some((p.to_path_buf(), "--config")),
        None => env::get(env, "CONFIG_FILE").map(|p| (PathBuf::from(p), "CONFIG_FILE")),
    };
    match named {
        Some((p, _)) if p.exists() => Ok(Some(p)),
        Some((p, how)) => Err(ConfigError {
            path: Some(p),
            problems: vec![Problem {
                key: String::new(),
                location: Location::None,
                message: format!(
                    "the file named by {how} does not exist; fix the path, or drop {how} to run from the environment alone"
                ),
            }],
        }),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_PATH);
            Ok(default.exists().then_some(default))
        }
    }
}

/// The health listener's address for `healthcheck`, which must work from any directory and
/// whatever else the config says: `--listen`, else `HTTP_LISTEN`, else `[http] listen` of the
/// config file if it can be read (nothing else of the file is looked at), else the default.
/// `Ok(None)` means the listener is "off".
pub fn healthcheck_listen(
    flag: Option<&str>,
    cli_config: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<std::net::SocketAddr>, String> {
    let parse = |v: &str, from: &str| match v.trim() {
        "off" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{from}: `{v}` is not an address; write IP:PORT, e.g. 127.0.0.1:8080, or \"off\"")),
    };
    if let Some(v) = flag {
        return parse(v, "--listen");
    }
    if let Some(v) = env::get(env, "HTTP_LISTEN") {
        return parse(&v, "HTTP_LISTEN");
    }
    let path = cli_config
        .map(Path::to_path_buf)
        .or_else(|| env::get(env, "CONFIG_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let listen = std::fs::read_to_string(&path).ok().and_then(|text| {
        let (root, _) = toml::de::DeTable::parse_recoverable(&text);
        let from_tree = match root.get_ref().get("http").map(|v| v.get_ref()) {
            Some(toml::de::DeValue::Table(http)) => {
                http.get("listen").and_then(|v| v.get_ref().as_str()).map(str::to_string)
            }
            _ => None,
        };
        // The parser's recovery gives up after some errors: a syntax error elsewhere in the
        // file must not hide `[http] listen`, so look for the plain line too.
        from_tree.or_else(|| listen_line(&text))
    });
    match listen {
        Some(v) => parse(&v, &format!("{} [http] listen", path.display())),
        None => Ok(HttpConfig::default().listen),
    }
}

/// `listen = "..."` under a `[http]` header, read line by line.
fn listen_line(text: &str) -> Option<String> {
    let mut in_http = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix('[') {
            in_http = header.split(']').next().map(str::trim) == Some("http");
        } else if let Some((key, value)) = t.split_once('=').filter(|_| in_http) {
            if key.trim() == "listen" {
                let (quoted, _) = value.trim().strip_prefix('"')?.split_once('"')?;
                return Some(quoted.to_string());
            }
        }
    }
    None
}

/// The most a config file may hold: far beyond any real one, and a bound on what a file named
/// by mistake (a log, a device) can cost.
pub const CONFIG_FILE_LIMIT: u64 = 16 << 20;

/// Reads the config file as [`load`] and the reloader do; the error says what to do.
pub fn read_config_file(path: &Path) -> Result<String, String> {
    read_regular_file(path, CONFIG_FILE_LIMIT).map_err(|e| format!("cannot read the file: {e}"))
}

/// Reads a small regular file as UTF-8. Anything else (a directory, a pipe that would block, a
/// device such as /dev/zero that never ends, a file over `limit` bytes) is refused with a
/// reason and a fix, without reading it.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{e}; check that the file exists and this user may read it"))?;
    if !meta.is_file() {
        return Err("it is not a regular file (a directory, device or pipe); name the file itself".into());
    }
    if meta.len() > limit {
        return Err(format!("it is larger than {limit} bytes; is it the right file?"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{e}; check that this user may read it"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("it is larger than {limit} bytes; is it the right file?"));
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text; save it as UTF-8".to_string())
}

/// Reads, overrides and validates in one go: exactly what `run`, `check` and a reload do.
/// Never panics: a bug that panics inside becomes a [`ConfigError`] (see [`guarded`]).
pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => {
            let text = read_config_file(p).map_err(|e| ConfigError {
                path: Some(p.to_path_buf()),
                problems: vec![Problem { key: String::new(), location: Location::None, message: e }],
            })?;
            load_text(Some((p, &text)), env)
        }
        None => load_text(None, env),
    }
}

/// [`load`] for a file already read (the reloader compares the text before parsing it).
pub fn load_text(file: Option<(&Path, &str)>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    guarded(file.map(|(p, _)| p), || load_text_unguarded(file, env))
}

fn load_text_unguarded(
    file: Option<(&Path, &str)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let path = file.map(|(p, _)| p);
    let err = |problems| ConfigError { path: path.map(Path::to_path_buf), problems };
    let (parsed, mut problems) = match file {
        Some((_, text)) => match file::parse(text) {
            (Some(parsed), problems) => (parsed, problems),
            (None, problems) => return Err(err(problems)),
        },
        None => (file::FileConfig::default(), Vec::new()),
    };
    // A value dropped for its type would make its table look incomplete: the checks of that
    // table would only repeat the same problem in other words.
    let type_errors: Vec<String> = problems
        .iter()
        .filter(|p| p.message.starts_with("must be"))
        .map(|p| match p.key.rsplit_once('.') {
            Some((table, _)) if !p.message.starts_with("must be a table") => table.to_string(),
            _ => p.key.clone(),
        })
        .collect();
    let (parsed, overrides) = env::apply(parsed, path.is_some(), env, &mut problems);
    if path.is_none() && problems.iter().any(|p| p.message.starts_with("is not set")) {
        // Env-only mode with variables missing: name those, and nothing that follows from
        // their absence (one line per variable).
        return Err(err(problems));
    }
    let origin = match path {
        Some(p) => Origin::File(p.to_path_buf()),
        None => Origin::EnvOnly,
    };
    let mut semantic = Vec::new();
    let cfg = validate::validate(parsed, file.map(|(_, t)| t), origin, overrides, &mut semantic);
    semantic.retain(|p| !type_errors.iter().any(|t| p.key == *t || p.key.starts_with(&format!("{t}."))));
    problems.extend(semantic);
    match cfg {
        Some(cfg) if problems.is_empty() => Ok(cfg),
        _ => {
            // Environment first, then the file top to bottom.
            problems.sort_by_key(|p| match p.location {
                Location::Env(_) => (0, 0),
                Location::File { line, .. } => (1, line.unwrap_or(0)),
                Location::None => (2, 0),
            });
            Err(err(problems))
        }
    }
}

/// Runs a config load so that a panic inside (a bug) can neither end the process nor print a
/// secret: the panic's message is not shown (it may quote a token), and the load fails with
/// a problem saying so. `check`, start-up and every reload go through here.
pub fn guarded<T>(path: Option<&Path>, f: impl FnOnce() -> Result<T, ConfigError>) -> Result<T, ConfigError> {
    panic_guard::install();
    let _scope = panic_guard::Scope::enter();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(ConfigError {
            path: path.map(Path::to_path_buf),
            problems: vec![Problem {
                key: String::new(),
                location: Location::None,
                message: "internal error while reading the configuration (a bug: please report it with the \
                          file's layout, not its secrets); nothing of it was applied. The details are hidden \
                          because they may contain a secret"
                    .into(),
            }],
        }),
    }
}

mod panic_guard {
    use std::cell::Cell;
    use std::sync::Once;

    thread_local! {
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    /// Marks this thread as loading a config while alive.
    pub struct Scope;

    impl Scope {
        pub fn enter() -> Scope {
            DEPTH.with(|d| d.set(d.get() + 1));
            Scope
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }

    /// Wraps the process's panic hook once: inside a config load, print where the panic
    /// happened but not its message; elsewhere, defer to the previous hook.
    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if DEPTH.with(|d| d.get()) > 0 {
                    let at = info.location().map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
                    eprintln!(
                        "internal error while reading the configuration{at} (message hidden: it may contain a secret)"
                    );
                } else {
                    previous(info);
                }
            }));
        });
    }
}

#[cfg(test)]
mod tests;
