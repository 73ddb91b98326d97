//! The TOML file as written: every key optional, unknown keys rejected, positions kept so that
//! errors can name the line. Turning this into a [`super::Config`] is `validate`'s job.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use validator::{Validate, ValidateRange};

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
    pub storage: StorageFile,
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountFile>,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupFile>,
    #[serde(default)]
    pub filters: FiltersFile,
    #[serde(default)]
    pub cluster: ClusterFile,
}

/// `[filters]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersFile {
    #[serde(default)]
    pub ignore_users: Vec<Spanned<String>>,
    #[serde(default)]
    pub opt_out_users: Vec<Spanned<String>>,
}

/// `[cluster]`: sharding over one config (see `super::cluster`).
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `"INDEX/COUNT"`, 1-based.
    pub shard: Option<Spanned<String>>,
    /// The count alone; the index then comes from the pod name in `HOSTNAME`.
    #[validate(range(min = 1, max = 1000, message = "must be between 1 and 1000"))]
    pub shards: Option<Int>,
    #[validate(range(min = 1, max = 1000, message = "must be between 1 and 1000 (and at most the shard count)"))]
    pub replicas: Option<Int>,
}

/// `[twitch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwitchFile {
    pub server: Option<Spanned<String>>,
    pub auth_url: Option<Spanned<String>>,
    pub token_dir: Option<Spanned<PathBuf>>,
}

/// `[database]`. Rules go on non-secret fields only: validator copies a value into its error.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    pub url: Option<SecretString>,
    pub host: Option<Spanned<String>>,
    #[validate(range(min = 1, max = 65_535, message = "must be a port number from 1 to 65535"))]
    pub port: Option<Int>,
    pub name: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<SecretString>,
    pub password_file: Option<Spanned<PathBuf>>,
}

/// `[batch]`
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    #[validate(range(min = 1, max = 50_000, message = "must be between 1 and 50000"))]
    pub max_rows: Option<Int>,
    pub flush_interval: Option<Spanned<String>>,
    #[validate(range(min = 1, max = 10_000_000, message = "must be between 1 and 10000000"))]
    pub queue_capacity: Option<Int>,
    pub spool_dir: Option<Spanned<PathBuf>>,
    #[validate(range(min = 1_048_576, message = "must be at least 1048576 (1 MiB)"))]
    pub spool_max_bytes: Option<Int>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub durable_within: Option<Spanned<String>>,
}

/// An integer with its place in the file. A type of our own so that `validator` range rules
/// can sit on the file structs (its traits cannot be implemented for `toml::Spanned`).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Int(pub Spanned<i64>);

impl std::ops::Deref for Int {
    type Target = Spanned<i64>;

    fn deref(&self) -> &Spanned<i64> {
        &self.0
    }
}

impl ValidateRange<i64> for Int {
    fn greater_than(&self, max: i64) -> Option<bool> {
        Some(*self.0.get_ref() > max)
    }

    fn less_than(&self, min: i64) -> Option<bool> {
        Some(*self.0.get_ref() < min)
    }
}

/// What validator copies into an error's `value` parameter: the span comes along, so that
/// [`span_of_invalid`] can place the problem without a table of fields.
impl Serialize for Int {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (*self.0.get_ref(), self.0.span().start, self.0.span().end).serialize(s)
    }
}

/// Where the value behind a validator error on an [`Int`] field is written.
pub fn span_of_invalid(e: &validator::ValidationError) -> Option<std::ops::Range<usize>> {
    let place = e.params.get("value")?.as_array()?;
    let at = |i: usize| place.get(i).and_then(serde_json::Value::as_u64).map(|n| n as usize);
    Some(at(1)?..at(2)?)
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
    pub api: Option<Spanned<bool>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

/// `[storage]`: what is kept of each line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    pub raw_lines: Option<Spanned<bool>>,
    pub retention: Option<Spanned<String>>,
    pub partition: Option<Spanned<String>>,
}

/// `[accounts.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFile {
    pub username: Option<Spanned<String>>,
    pub oauth_token: Option<SecretString>,
    pub token_file: Option<Spanned<PathBuf>>,
    pub join_rate: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<Spanned<PathBuf>>,
    pub refresh_token: Option<SecretString>,
    pub refresh_token_file: Option<Spanned<PathBuf>>,
}

/// `[groups.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    #[serde(default)]
    pub accounts: Vec<Spanned<String>>,
    #[serde(default)]
    pub channels: Vec<Spanned<String>>,
    #[serde(default)]
    pub ignore_users: Vec<Spanned<String>>,
}

/// What a key's value must be. `Secret` strings are never quoted in any message.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Secret,
    Int,
    Bool,
    StrList,
    /// A table with these keys.
    Table(&'static [(&'static str, Ty)]),
    /// A table of named tables (`[accounts.NAME]`), each with these keys.
    Named(&'static [(&'static str, Ty)]),
}

const TWITCH: &[(&str, Ty)] = &[("server", Ty::Str), ("auth_url", Ty::Str), ("token_dir", Ty::Str)];
const DATABASE: &[(&str, Ty)] = &[
    ("url", Ty::Secret),
    ("host", Ty::Str),
    ("port", Ty::Int),
    ("name", Ty::Str),
    ("user", Ty::Str),
    ("password", Ty::Secret),
    ("password_file", Ty::Str),
];
const BATCH: &[(&str, Ty)] = &[
    ("max_rows", Ty::Int),
    ("flush_interval", Ty::Str),
    ("queue_capacity", Ty::Int),
    ("spool_dir", Ty::Str),
    ("spool_max_bytes", Ty::Int),
    ("shutdown_timeout", Ty::Str),
    ("durable_within", Ty::Str),
];
const RELOAD: &[(&str, Ty)] = &[("mode", Ty::Str), ("poll_interval", Ty::Str), ("debounce", Ty::Str)];
const HTTP: &[(&str, Ty)] = &[("listen", Ty::Str), ("api", Ty::Bool)];
const LOG: &[(&str, Ty)] = &[("level", Ty::Str), ("format", Ty::Str)];
const STORAGE: &[(&str, Ty)] = &[("raw_lines", Ty::Bool), ("retention", Ty::Str), ("partition", Ty::Str)];
const ACCOUNT: &[(&str, Ty)] = &[
    ("username", Ty::Str),
    ("oauth_token", Ty::Secret),
    ("token_file", Ty::Str),
    ("join_rate", Ty::Str),
    ("client_id", Ty::Str),
    ("client_secret", Ty::Secret),
    ("client_secret_file", Ty::Str),
    ("refresh_token", Ty::Secret),
    ("refresh_token_file", Ty::Str),
];
const GROUP: &[(&str, Ty)] = &[("accounts", Ty::StrList), ("channels", Ty::StrList), ("ignore_users", Ty::StrList)];
const FILTERS: &[(&str, Ty)] = &[("ignore_users", Ty::StrList), ("opt_out_users", Ty::StrList)];
const CLUSTER: &[(&str, Ty)] = &[("shard", Ty::Str), ("shards", Ty::Int), ("replicas", Ty::Int)];
/// The whole file: the one schema that the checks below and the "did you mean" hints use.
const ROOT: &[(&str, Ty)] = &[
    ("twitch", Ty::Table(TWITCH)),
    ("database", Ty::Table(DATABASE)),
    ("batch", Ty::Table(BATCH)),
    ("reload", Ty::Table(RELOAD)),
    ("http", Ty::Table(HTTP)),
    ("log", Ty::Table(LOG)),
    ("storage", Ty::Table(STORAGE)),
    ("accounts", Ty::Named(ACCOUNT)),
    ("groups", Ty::Named(GROUP)),
    ("filters", Ty::Table(FILTERS)),
    ("cluster", Ty::Table(CLUSTER)),
];

/// Keys whose values may be quoted in a message: every known key that is not a secret.
/// An allow-list, so that a misspelt `oauth_tokn` or a future `client_secret` stays hidden.
pub fn value_may_be_quoted(key: &str) -> bool {
    fn walk(schema: &[(&str, Ty)], key: &str) -> bool {
        schema.iter().any(|(k, ty)| match ty {
            Ty::Table(inner) | Ty::Named(inner) => walk(inner, key),
            Ty::Secret => false,
            _ => *k == key,
        })
    }
    walk(ROOT, key)
}

/// Parses the file text: every syntax error, or else every unknown key and wrong type,
/// each with line, column and key. The file is `None` only when the TOML itself is broken.
///
/// Nothing of the text is quoted but key names: syntax errors carry the parser's fixed
/// descriptions (never a piece of the input), and type errors name the expected type only.
pub fn parse(text: &str) -> (Option<FileConfig>, Vec<Problem>) {
    let (mut root, errors) = toml::de::DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return (None, syntax_problems(text, &root, &errors));
    }
    let mut problems = Vec::new();
    check_table(text, root.get_mut(), ROOT, "", &mut problems);
    match FileConfig::deserialize(toml::de::Deserializer::from(root)) {
        Ok(f) => (Some(f), problems),
        Err(e) => {
            // The checks above mirror the schema, so this is not expected; still never quote
            // a value unless its key is allow-listed.
            let start = e.span().map_or(0, |s| s.start);
            let (root, _) = toml::de::DeTable::parse_recoverable(text);
            let key = key_before(&root, start + 1);
            let message = if value_may_be_quoted(key.rsplit('.').next().unwrap_or("")) {
                e.message().trim().to_string()
            } else {
                "has a value of the wrong type or out of range (value hidden: it may be a secret)".into()
            };
            problems.push(Problem { key, location: location(text, start), message });
            (None, problems)
        }
    }
}

fn location(text: &str, offset: usize) -> super::Location {
    let (line, col) = line_col(text, offset);
    super::Location::File { line: Some(line), column: Some(col) }
}

fn syntax_problems(text: &str, root: &Spanned<DeTable<'_>>, errors: &[toml::de::Error]) -> Vec<Problem> {
    let mut errs: Vec<(usize, &str)> =
        errors.iter().map(|e| (e.span().map_or(0, |s| s.start), e.message().trim())).collect();
    errs.sort_by_key(|(start, _)| *start);
    errs.dedup();
    errs.iter()
        .enumerate()
        .map(|(i, (start, message))| {
            // Only the first error has a trustworthy key: before it the text is valid TOML.
            // After it, a line may be the rest of a broken string (a secret's continuation),
            // so no later line is read as a key.
            let key = if i == 0 { key_before(root, *start) } else { String::new() };
            let mut message = format!("{message} (TOML syntax)");
            if i == 0 && (message.starts_with("invalid basic string") || message.starts_with("invalid literal string")) {
                message.push_str(
                    "; a quoted string must end on the line it starts on: close the quote, or use \"\"\"...\"\"\" for text over several lines",
                );
            }
            Problem { key, location: location(text, *start), message }
        })
        .collect()
}

/// The dotted path of the last key that starts before `offset`, keeping only names the schema
/// knows (and account/group names): a stray word is never shown as a key. Past the end of
/// that key's value, its table.
fn key_before(root: &Spanned<DeTable<'_>>, offset: usize) -> String {
    struct Best {
        start: usize,
        path: Vec<String>,
        /// Where the value ends, for a key that is not a table.
        value_end: Option<usize>,
    }
    fn walk(table: &DeTable<'_>, schema: Ty, offset: usize, path: &mut Vec<String>, best: &mut Best) {
        for (k, v) in table.iter() {
            let span = k.span();
            if span.start >= offset || span.is_empty() {
                continue;
            }
            let name: &str = k.get_ref();
            let child = match schema {
                Ty::Table(keys) => keys.iter().find(|(n, _)| *n == name).map(|(_, t)| *t),
                // An account or group name: shown as written (it names a table, never a value).
                Ty::Named(keys) if is_plain_name(name) => Some(Ty::Table(keys)),
                _ => None,
            };
            let Some(child) = child else { continue };
            path.push(name.to_string());
            if span.start >= best.start {
                let value_end = (!matches!(v.get_ref(), DeValue::Table(_))).then(|| v.span().end);
                *best = Best { start: span.start, path: path.clone(), value_end };
            }
            if let DeValue::Table(t) = v.get_ref() {
                walk(t, child, offset, path, best);
            }
            path.pop();
        }
    }
    let mut best = Best { start: 0, path: Vec::new(), value_end: None };
    walk(root.get_ref(), Ty::Table(ROOT), offset, &mut Vec::new(), &mut best);
    if best.value_end.is_some_and(|end| offset > end) {
        best.path.pop();
    }
    best.path.join(".")
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a decimal number",
        DeValue::Boolean(_) => "true/false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// Checks one table against its schema, reporting every unknown key and wrong type and
/// removing them, so that the rest still loads and is checked.
fn check_table<'i>(
    text: &str,
    table: &mut DeTable<'i>,
    schema: &'static [(&'static str, Ty)],
    prefix: &str,
    problems: &mut Vec<Problem>,
) {
    let mut drop = Vec::new();
    for (k, v) in table.iter_mut() {
        let name: &str = k.get_ref();
        let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        let at = k.span().start;
        let Some((_, ty)) = schema.iter().find(|(n, _)| *n == name) else {
            let mut message = format!("unknown key `{}`", shown_name(name));
            match (did_you_mean_in(name, schema), home_of(name)) {
                (Some(best), _) => message.push_str(&format!("; did you mean `{best}`?")),
                (None, Some(home)) => message.push_str(&format!("; it belongs under {home}")),
                (None, None) => message.push_str(&format!(
                    "; this table's keys are: {}",
                    schema.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )),
            }
            problems.push(Problem { key: shown_path(prefix, name), location: location(text, at), message });
            drop.push(k.clone());
            continue;
        };
        let value_at = v.span().start;
        let wrong = |expected: &str, got: &DeValue<'_>| Problem {
            key: path.clone(),
            location: location(text, value_at),
            message: format!("must be {expected}, not {}", type_name(got)),
        };
        match (ty, v.get_mut()) {
            (Ty::Str | Ty::Secret, DeValue::String(_)) | (Ty::Int, DeValue::Integer(_)) => {}
            (Ty::Bool, DeValue::Boolean(_)) => {}
            (Ty::Bool, got) => {
                problems.push(wrong("true or false (no quotes)", got));
                drop.push(k.clone());
            }
            (Ty::Str, got) => {
                problems.push(wrong("a quoted string", got));
                drop.push(k.clone());
            }
            (Ty::Secret, got) => {
                let mut p = wrong("a quoted string", got);
                p.message.push_str(" (value hidden because it is a secret)");
                problems.push(p);
                drop.push(k.clone());
            }
            (Ty::Int, got) => {
                problems.push(wrong("a whole number (no quotes)", got));
                drop.push(k.clone());
            }
            (Ty::StrList, DeValue::Array(items)) => {
                // Only the wrong items go; the rest of the list is still checked and used.
                let mut kept = toml::de::DeArray::new();
                for item in std::mem::replace(items, toml::de::DeArray::new()).iter() {
                    if matches!(item.get_ref(), DeValue::String(_)) {
                        kept.push(item.clone());
                    } else {
                        problems.push(Problem {
                            key: path.clone(),
                            location: location(text, item.span().start),
                            message: format!("lists quoted strings, not {}", type_name(item.get_ref())),
                        });
                    }
                }
                *items = kept;
            }
            (Ty::StrList, got) => {
                problems.push(wrong("a list of quoted strings, e.g. [\"a\", \"b\"]", got));
                drop.push(k.clone());
            }
            (Ty::Table(inner), DeValue::Table(t)) => check_table(text, t, inner, &path, problems),
            (Ty::Named(inner), DeValue::Table(named)) => {
                let mut bad = Vec::new();
                for (n, entry) in named.iter_mut() {
                    let entry_path = shown_path(&path, n.get_ref());
                    match entry.get_mut() {
                        DeValue::Table(t) => check_table(text, t, inner, &entry_path, problems),
                        got => {
                            problems.push(Problem {
                                key: entry_path.clone(),
                                location: location(text, n.span().start),
                                message: format!("must be a table ([{entry_path}]), not {}", type_name(got)),
                            });
                            bad.push(n.clone());
                        }
                    }
                }
                for n in bad {
                    named.remove(&n);
                }
            }
            (Ty::Table(_) | Ty::Named(_), got) => {
                problems.push(wrong(&format!("a table ([{path}])"), got));
                drop.push(k.clone());
            }
        }
    }
    for k in drop {
        table.remove(&k);
    }
}

/// A key name for a message: bare names as written, anything else quoted and escaped (a key
/// may hold a newline or a terminal escape).
fn shown_name(name: &str) -> String {
    if is_plain_name(name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.chars().take(64).collect::<String>().escape_default())
    }
}

fn shown_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        shown_name(name)
    } else {
        format!("{prefix}.{}", shown_name(name))
    }
}

/// The table a key belongs in, for a key written in the wrong one (`max_rows` above `[batch]`).
fn home_of(name: &str) -> Option<String> {
    ROOT.iter().find_map(|(table, ty)| match ty {
        Ty::Table(keys) if keys.iter().any(|(k, _)| *k == name) => Some(format!("[{table}]")),
        Ty::Named(keys) if keys.iter().any(|(k, _)| *k == name) => Some(format!("[{table}.NAME]")),
        _ => None,
    })
}

fn did_you_mean_in(unknown: &str, schema: &[(&'static str, Ty)]) -> Option<&'static str> {
    schema
        .iter()
        .map(|(k, _)| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The closest key of any table, if it is close enough to be a typo.
pub fn did_you_mean(unknown: &str) -> Option<&'static str> {
    fn all(schema: &[(&'static str, Ty)], out: &mut Vec<(&'static str, Ty)>) {
        for (k, ty) in schema {
            out.push((k, *ty));
            if let Ty::Table(inner) | Ty::Named(inner) = ty {
                all(inner, out);
            }
        }
    }
    let mut keys = Vec::new();
    all(ROOT, &mut keys);
    did_you_mean_in(unknown, &keys)
}

/// 1-based line and column (in characters) of a byte offset; never panics on a bad offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let col = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        let (_, p) = parse(text);
        assert!(!p.is_empty(), "expected problems for {text:?}");
        p
    }

    fn shown(text: &str) -> String {
        problems(text).iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn unknown_key_names_line_and_suggests_the_near_miss() {
        let p = problems("[batch]\nmax_row = 5\n");
        assert_eq!(p[0].key, "batch.max_row");
        assert!(p[0].message.contains("did you mean `max_rows`"), "{}", p[0].message);
        assert!(matches!(p[0].location, super::super::Location::File { line: Some(2), .. }));
    }

    #[test]
    fn every_unknown_key_in_every_table_is_reported_and_the_rest_still_loads() {
        let text = "[batch]\nmax_row = 5\nflush_interval = \"2s\"\n[accounts.a]\nusernme = \"bot\"\n[colors]\nx = 1\n";
        let (file, p) = parse(text);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["accounts.a.usernme", "batch.max_row", "colors"], "{p:?}");
        assert!(p[0].message.contains("did you mean `username`"), "{}", p[0].message);
        let file = file.expect("the known keys still load");
        assert_eq!(file.batch.flush_interval.unwrap().into_inner(), "2s");
    }

    #[test]
    fn type_error_names_key_and_line() {
        let p = problems("[batch]\nmax_rows = \"lots\"\n");
        assert_eq!(p[0].key, "batch.max_rows");
        assert!(matches!(p[0].location, super::super::Location::File { line: Some(2), .. }));
        assert!(p[0].message.contains("whole number"), "{}", p[0].message);
    }

    #[test]
    fn syntax_error_on_a_token_line_never_quotes_the_token() {
        let s = shown("[accounts.a]\nusername = \"bot\"\noauth_token = \"oauth:sekrit123\n");
        assert!(!s.contains("sekrit123"), "{s}");
        assert!(s.contains("accounts.a.oauth_token"), "{s}");
    }

    #[test]
    fn a_token_broken_over_two_lines_is_never_printed_as_a_key() {
        let s = shown(
            "[accounts.bot]\nusername = \"bot\"\noauth_token = \"oauth:abc123\ndefSECRET456\"\n[groups.g]\naccounts = [\"bot\"]\n",
        );
        assert!(!s.contains("SECRET") && !s.contains("abc123"), "{s}");
        assert!(s.starts_with("line 3, column 28: key `accounts.bot.oauth_token`: invalid basic string"), "{s}");
        assert!(s.contains("\"\"\""), "says how to write a multi-line string: {s}");
    }

    #[test]
    fn a_multi_line_password_with_a_bad_escape_is_never_quoted() {
        for text in [
            "[database]\npassword = \"\"\"abc\nde\\qSECRET456\"\"\"\n",
            "[database]\npassword = '''abc\nde\\qSECRET456'''\nport = \"x\"\n[accounts.bot]\noauth_token = '''\nSECRET456 = 1\n",
            "[database]\npassword = SECRET456\n",
            "[database]\npassword \"SECRET456\"\n",
            "[database]\nhost = \"x\" password = \"SECRET456\"\n",
            "[database]\npassword = [\"SECRET456\"]\n",
            "[database]\noauth_tokn = \"SECRET456\"\n",
            "[accounts]\nbot = { username = \"bot\", oauth_token = \"SECRET456 }\n",
        ] {
            let s = shown(text);
            assert!(!s.contains("SECRET"), "{text:?}:\n{s}");
        }
    }

    #[test]
    fn wrong_type_for_a_password_never_quotes_it() {
        let p = problems("[database]\npassword = [\"hunter2\"]\n");
        assert!(!p[0].to_string().contains("hunter2"));
        assert_eq!(p[0].key, "database.password");
    }

    #[test]
    fn only_known_non_secret_keys_may_have_their_values_quoted() {
        assert!(value_may_be_quoted("channels") && value_may_be_quoted("username"));
        for k in ["oauth_token", "password", "url", "client_secret", "refresh_token", "oauth_tokn"] {
            assert!(!value_may_be_quoted(k), "{k}");
        }
    }

    #[test]
    fn positions_are_counted_in_characters_and_a_bad_offset_does_not_panic() {
        assert_eq!(line_col("é = 1\nxé", 10), (2, 3));
        assert_eq!(line_col("é = 1\nxé", 9), (2, 2), "inside a character: its start");
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn a_key_in_the_wrong_table_is_told_where_it_belongs() {
        let p = problems(
            "max_rows = 5
[accounts.a]
channels = [\"x\"]
",
        );
        assert!(p[0].message.contains("belongs under [groups.NAME]"), "{}", p[0].message);
        assert!(p[1].message.contains("belongs under [batch]"), "{}", p[1].message);
    }

    #[test]
    fn the_schema_and_the_file_structs_name_the_same_keys() {
        for (table, ty) in ROOT {
            let (keys, header) = match ty {
                Ty::Table(keys) => (*keys, format!("[{table}]")),
                Ty::Named(keys) => (*keys, format!("[{table}.n]")),
                _ => unreachable!("the root holds tables"),
            };
            // Every key of the schema loads into the structs...
            let mut text = format!("{header}\n");
            for (k, ty) in keys {
                let v = match ty {
                    Ty::Int => "1",
                    Ty::Bool => "true",
                    Ty::StrList => "[\"x\"]",
                    _ => "\"x\"",
                };
                text.push_str(&format!("{k} = {v}\n"));
            }
            let (file, p) = parse(&text);
            assert!(file.is_some() && p.is_empty(), "{text}: {p:?}");
            // ...and the structs accept no key the schema lacks (serde lists what it expects).
            let err = toml::from_str::<FileConfig>(&format!("{header}\nzz_not_a_key = 1\n")).unwrap_err();
            let expected: Vec<&str> = err.message().split('`').skip(3).step_by(2).collect();
            let mut schema: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            let mut from_serde = expected.clone();
            schema.sort();
            from_serde.sort();
            assert_eq!(from_serde, schema, "{table}: {}", err.message());
        }
    }
}
