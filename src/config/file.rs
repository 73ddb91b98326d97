//! The TOML file as written: every key optional, unknown keys rejected, positions kept so that
//! errors can name the line. Turning this into a [`super::Config`] is `validate`'s job.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

use super::Problem;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub twitch: TwitchFile,
    #[serde(default)]
    pub database: DatabaseFile,
    #[serde(default)]
    pub batch: BatchFile,
    #[serde(default)]
    pub reload: ReloadFile,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountFile>,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupFile>,
}

/// `[twitch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwitchFile {
    pub server: Option<Spanned<String>>,
}

/// `[database]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    pub url: Option<SecretString>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<SecretString>,
    pub password_file: Option<Spanned<PathBuf>>,
}

/// `[batch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    pub max_rows: Option<Spanned<i64>>,
    pub flush_interval: Option<Spanned<String>>,
    pub queue_capacity: Option<Spanned<i64>>,
    pub spool_dir: Option<Spanned<PathBuf>>,
    pub spool_max_bytes: Option<Spanned<i64>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub durable_within: Option<Spanned<String>>,
}

/// `[reload]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    pub mode: Option<Spanned<String>>,
    pub poll_interval: Option<Spanned<String>>,
    pub debounce: Option<Spanned<String>>,
}

/// `[http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub listen: Option<Spanned<String>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

/// `[accounts.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFile {
    pub username: Option<Spanned<String>>,
    pub oauth_token: Option<SecretString>,
    pub token_file: Option<Spanned<PathBuf>>,
    pub join_rate: Option<Spanned<String>>,
}

/// `[groups.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    #[serde(default)]
    pub accounts: Vec<Spanned<String>>,
    #[serde(default)]
    pub channels: Vec<Spanned<String>>,
}

/// Keys whose values are secrets: an error on their line never quotes the value.
const SECRET_KEYS: &[&str] = &["oauth_token", "password", "url"];

/// Every key the file accepts, per table, for "did you mean" hints.
const KNOWN_KEYS: &[&str] = &[
    "twitch",
    "database",
    "batch",
    "reload",
    "accounts",
    "groups",
    "server",
    "url",
    "host",
    "port",
    "name",
    "user",
    "password",
    "password_file",
    "max_rows",
    "flush_interval",
    "queue_capacity",
    "spool_dir",
    "spool_max_bytes",
    "shutdown_timeout",
    "durable_within",
    "mode",
    "poll_interval",
    "debounce",
    "username",
    "oauth_token",
    "token_file",
    "join_rate",
    "channels",
    "http",
    "log",
    "listen",
    "level",
    "format",
];

/// Parses the file text. On failure returns one problem with line, column and key, never
/// quoting a secret.
pub fn parse(text: &str) -> Result<FileConfig, Problem> {
    toml::from_str(text).map_err(|e| problem_from_toml(text, &e))
}

fn problem_from_toml(text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span().unwrap_or(0..0);
    let (line, col) = line_col(text, span.start);
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let key = key_path_at(text, line);
    let leaf = key.rsplit('.').next().unwrap_or("");
    let mut message = err.message().trim().to_string();
    if SECRET_KEYS.contains(&leaf) || SECRET_KEYS.iter().any(|k| line_text.trim_start().starts_with(k)) {
        // The parser's message may quote the value; this key holds a secret.
        message = format!(
            "the value of `{leaf}` is not valid TOML or not a string (value hidden because it is a secret); \
             write it as a quoted string, e.g. {leaf} = \"...\""
        );
    } else if let Some(unknown) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        let unknown = unknown.to_string();
        message = format!("unknown key `{unknown}`");
        if let Some(best) = did_you_mean(&unknown) {
            message.push_str(&format!("; did you mean `{best}`?"));
        } else {
            message.push_str("; see the config reference in README.md for the keys of this table");
        }
    }
    Problem { key, location: super::Location::File { line: Some(line), column: Some(col) }, message }
}

/// The closest known key, if it is close enough to be a typo.
pub fn did_you_mean(unknown: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |p| offset - p - 1) + 1;
    (line, col)
}

/// Best-effort dotted key for a line: the last `[table]` header above it plus the key on it.
fn key_path_at(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let t = l.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if i + 1 == line {
            key = t.split('=').next().unwrap_or("").trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_suggests_the_near_miss() {
        let text = "[batch]\nmax_row = 5\n";
        let p = parse(text).unwrap_err();
        assert_eq!(p.key, "batch.max_row");
        assert!(p.message.contains("did you mean `max_rows`"), "{}", p.message);
        assert!(matches!(p.location, super::super::Location::File { line: Some(2), .. }));
    }

    #[test]
    fn type_error_names_key_and_line() {
        let p = parse("[batch]\nmax_rows = \"lots\"\n").unwrap_err();
        assert_eq!(p.key, "batch.max_rows");
        assert!(matches!(p.location, super::super::Location::File { line: Some(2), .. }));
    }

    #[test]
    fn syntax_error_on_a_token_line_never_quotes_the_token() {
        let text = "[accounts.a]\nusername = \"bot\"\noauth_token = \"oauth:sekrit123\n";
        let p = parse(text).unwrap_err();
        let shown = p.to_string();
        assert!(!shown.contains("sekrit123"), "{shown}");
        assert!(shown.contains("oauth_token"), "{shown}");
    }

    #[test]
    fn wrong_type_for_a_password_never_quotes_it() {
        let p = parse("[database]\npassword = [\"hunter2\"]\n").unwrap_err();
        assert!(!p.to_string().contains("hunter2"));
    }
}
