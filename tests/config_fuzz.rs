//! Property test of config loading: random edits of the shipped config and the examples, with
//! secret marker values planted in every secret slot (inline, multi-line, in token and password
//! files), must never panic and never show a piece of a marker in an error or in `check`'s
//! report, unless the edit itself turned the marker into a key or into the value of a key that
//! is not secret (a valid file that says so).
//!
//! CI runs a bounded number of cases; `CONFIG_FUZZ_CASES=200000 cargo test --release --test
//! config_fuzz` runs a long one.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use std::path::Path;
use std::sync::OnceLock;
use toml::de::{DeTable, DeValue};
use twitch_chat_logger::config::{self, file::value_may_be_quoted, render::render};

/// Marker values: random-looking, so that any 5-character piece of one in the output can only
/// have come from the marker.
const MARKERS: [&str; 14] = [
    "Qz7xKp2mWv9d",
    "Hr4tLq8nBc3y",
    "Fj6sDw1aXe5u",
    "Nk9gTb7rZm2o",
    "Pv3cYh8jUq6i",
    "Gm5wRz4kEs1l",
    "Tx2bNf7vHa9p",
    "Lc8uJd3qOy4e",
    "Wy1hMk6tSg8r",
    "Ea4oVn9xCi7z",
    "Bs6pXq2wKd8f",
    "Ou3nZc9vIr5j",
    "Yd7mAe1tQk4w",
    "Ri2xFh8bGo6s",
];
const WINDOW: usize = 5;

/// Files holding secrets (token_file / password_file targets), created once.
fn secret_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        for (name, marker) in [
            ("pg_password", MARKERS[0]),
            ("mybot", MARKERS[1]),
            ("mybot2", MARKERS[2]),
            ("twitch_token", MARKERS[3]),
            ("client_secret", MARKERS[12]),
            ("refresh_token", MARKERS[13]),
        ] {
            std::fs::write(d.path().join(name), format!("oauth:{marker}\n")).unwrap();
        }
        d
    })
    .path()
}

/// The texts the edits start from: the shipped config and examples, secrets planted.
fn bases() -> &'static [String] {
    static BASES: OnceLock<Vec<String>> = OnceLock::new();
    BASES.get_or_init(|| {
        let secrets = format!("{}/", secret_dir().display());
        let shipped = include_str!("../config/config.toml")
            .replace("# password = \"...\"", &format!("password = \"{}\"", MARKERS[4]))
            .replace(
                "[accounts.default]\n",
                &format!("[accounts.default]\nusername = \"mybot\"\noauth_token = \"oauth:{}\"\n", MARKERS[5]),
            );
        let multi = include_str!("../examples/multi-account.toml")
            .replace("/run/secrets/", &secrets)
            .replace("[database]\n", &format!("[database]\nurl = \"postgres://u:{}@db/twitch\"\n", MARKERS[6]));
        let docker = include_str!("../examples/docker-secrets.toml").replace("/run/secrets/", &secrets);
        let multi_line = format!(
            "[database]\nhost = \"db\"\npassword = \"\"\"{a}\n{b}\"\"\"\n[accounts.bot]\nusername = \"bot\"\noauth_token = '''oauth:{c}\n'''\n[accounts]\nalt = {{ username = \"alt\", oauth_token = \"{d}\" }}\n[groups.g]\naccounts = [\"bot\", \"alt\"]\nchannels = [\"one\", \"#Two\"]\n[accounts.renew]\nusername = \"renewbot\"\nclient_id = \"abc123\"\nclient_secret = \"{e}\"\nrefresh_token = \"{f}\"\n[accounts.renewfiles]\nusername = \"filebot\"\nclient_id = \"abc123\"\nclient_secret_file = \"{secrets}client_secret\"\nrefresh_token_file = \"{secrets}refresh_token\"\n",
            e = MARKERS[10],
            f = MARKERS[11],
            a = MARKERS[7],
            b = MARKERS[8],
            c = MARKERS[9],
            d = MARKERS[5],
        );
        for t in [&shipped, &multi, &docker, &multi_line] {
            assert!(config::load_text(Some((Path::new("base.toml"), t)), &|_| None).is_ok(), "base must be valid:\n{t}");
        }
        vec![shipped, multi, docker, multi_line]
    })
}

/// Where an edit happens: anywhere, or near a secret (a secret key or a marker).
#[derive(Debug, Clone)]
enum Pos {
    Anywhere(u32),
    NearSecret(u8, i8),
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(Pos, char),
    InsertStr(Pos, &'static str),
    Delete(Pos),
    Duplicate(Pos),
    DeleteLine(u32),
    DuplicateLine(u32),
    SwapLines(u32, u32),
}

const CHARS: &[char] = &[
    '"', '\'', '\n', '=', '[', ']', '#', '\\', 'é', '日', '🎉', ' ', '{', '}', ',', '.', '\t', '\r', '\0', 'x',
    '\u{202e}', '\u{feff}',
];
const STRS: &[&str] = &[
    "\"\"\"",
    "'''",
    "\\u",
    "\\U0001",
    "oauth:",
    "[accounts.x]\n",
    "password = ",
    "oauth_token = \"",
    "client_secret = \"",
    "refresh_token = \"",
    "\n[http]\n",
    "username = \"",
    "éé",
    "\n\n",
    "= \"",
    "#",
    "\n[filters]\n",
    "ignore_users = [\"",
    "opt_out_users = [\"",
];

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![any::<u32>().prop_map(Pos::Anywhere), (any::<u8>(), -24i8..24).prop_map(|(i, d)| Pos::NearSecret(i, d))]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (pos(), prop::sample::select(CHARS)).prop_map(|(p, c)| Edit::Insert(p, c)),
        (pos(), prop::sample::select(STRS)).prop_map(|(p, s)| Edit::InsertStr(p, s)),
        pos().prop_map(Edit::Delete),
        pos().prop_map(Edit::Duplicate),
        any::<u32>().prop_map(Edit::DeleteLine),
        any::<u32>().prop_map(Edit::DuplicateLine),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// A char boundary of `text` for `pos`.
fn resolve(text: &str, pos: &Pos) -> usize {
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let char_at = |i: usize| bounds[i.min(bounds.len() - 1)];
    match pos {
        Pos::Anywhere(n) => char_at(*n as usize % bounds.len()),
        Pos::NearSecret(i, d) => {
            let anchors: Vec<usize> =
                ["oauth_token", "password", "url", "token_file", "client_secret", "refresh_token"]
                    .iter()
                    .chain(MARKERS.iter())
                    .flat_map(|needle| text.match_indices(needle).map(|(at, _)| at))
                    .collect();
            if anchors.is_empty() {
                return char_at(0);
            }
            let anchor = anchors[*i as usize % anchors.len()];
            let idx = bounds.iter().position(|b| *b >= anchor).unwrap_or(0) as i64 + i64::from(*d);
            char_at(idx.clamp(0, bounds.len() as i64 - 1) as usize)
        }
    }
}

// Every index comes from `resolve`, which returns char boundaries.
#[allow(clippy::string_slice)]
fn apply(text: &str, edit: &Edit) -> String {
    let mut t = text.to_string();
    match edit {
        Edit::Insert(p, c) => t.insert(resolve(&t, p), *c),
        Edit::InsertStr(p, s) => t.insert_str(resolve(&t, p), s),
        Edit::Delete(p) | Edit::Duplicate(p) => {
            let at = resolve(&t, p);
            if let Some(c) = t[at..].chars().next() {
                if matches!(edit, Edit::Delete(_)) {
                    t.remove(at);
                } else {
                    t.insert(at, c);
                }
            }
        }
        Edit::DeleteLine(n) | Edit::DuplicateLine(n) | Edit::SwapLines(n, _) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let a = *n as usize % lines.len();
            match edit {
                Edit::DeleteLine(_) => {
                    lines.remove(a);
                }
                Edit::DuplicateLine(_) => lines.insert(a, lines[a]),
                Edit::SwapLines(_, m) => {
                    let b = *m as usize % lines.len();
                    lines.swap(a, b);
                }
                _ => unreachable!(),
            }
            t = lines.join("\n");
        }
    }
    t
}

/// What the file itself says may be shown: if it is valid TOML, its key names and the values
/// of known non-secret keys. Nothing when it is not valid TOML.
fn may_show(text: &str) -> String {
    fn walk(table: &DeTable<'_>, out: &mut String) {
        for (k, v) in table.iter() {
            out.push_str(k.get_ref());
            out.push('\n');
            value(k.get_ref(), v.get_ref(), out);
        }
    }
    fn value(key: &str, v: &DeValue<'_>, out: &mut String) {
        match v {
            DeValue::String(s) if value_may_be_quoted(key) => {
                out.push_str(s);
                out.push('\n');
            }
            DeValue::Array(items) => items.iter().for_each(|i| value(key, i.get_ref(), out)),
            DeValue::Table(t) => walk(t, out),
            _ => {}
        }
    }
    let mut out = String::new();
    if let Ok(root) = DeTable::parse(text) {
        walk(root.get_ref(), &mut out);
    }
    out
}

fn check_one(text: &str) -> Result<(), TestCaseError> {
    let shown = match config::load_text(Some((Path::new("fuzz.toml"), text)), &|_| None) {
        Ok(cfg) => format!("{}\n{cfg:?}", render(&cfg)),
        Err(e) => e.to_string(),
    };
    prop_assert!(!shown.contains("internal error"), "loading panicked on:\n{text:?}\n{shown}");
    let allowed = may_show(text);
    for marker in MARKERS {
        let chars: Vec<char> = marker.chars().collect();
        for w in chars.windows(WINDOW) {
            let piece: String = w.iter().collect();
            prop_assert!(
                !shown.contains(&piece) || allowed.contains(&piece),
                "`{piece}` (part of a secret) shown for:\n{text:?}\n---\n{shown}"
            );
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("CONFIG_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

#[test]
fn random_edits_of_the_shipped_configs_never_panic_nor_show_a_secret() {
    let started = std::time::Instant::now();
    let mut runner =
        TestRunner::new(RunnerConfig { cases: cases(), failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (0..bases().len(), prop::collection::vec(edit(), 1..8));
    runner
        .run(&strategy, |(base, edits)| {
            let mut text = bases()[base].clone();
            for e in &edits {
                text = apply(&text, e);
            }
            check_one(&text)
        })
        .unwrap();
    eprintln!("{} cases in {:?}", cases(), started.elapsed());
}

#[test]
fn the_issue_cases_show_no_secret() {
    for text in [
        "[accounts.bot]\nusername = \"bot\"\noauth_token = \"oauth:abc123\ndefSECRET456\"\n".to_string(),
        format!("[database]\npassword = '''{}\nde\\q{}'''\n[batch]\nmax_rows = \"x\"\n", MARKERS[0], MARKERS[1]),
        format!("[database]\npassword = \"\"\"{}\nde\\q{}\"\"\"\n", MARKERS[0], MARKERS[1]),
        format!("[accounts.a]\nusername = \"bot\"\noauth_token = \"oauthé{}\"\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"bad name\"]\n", MARKERS[2]),
    ] {
        check_one(&text).unwrap();
        let shown = config::load_text(Some((Path::new("x.toml"), &text)), &|_| None).unwrap_err().to_string();
        assert!(!shown.contains("SECRET") && !shown.contains("abc123"), "{shown}");
    }
}

/// Edits of a secret-bearing variable's value: the secret part stays a marker.
fn env_value(marker: &'static str, shapes: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(shapes), prop::collection::vec((any::<u8>(), prop::sample::select(CHARS)), 0..4)).prop_map(
        move |(shape, inserts)| {
            let mut v = shape.replace("M", marker);
            for (at, c) in inserts {
                let bounds: Vec<usize> = v.char_indices().map(|(i, _)| i).chain([v.len()]).collect();
                v.insert(bounds[at as usize % bounds.len()], c);
            }
            v
        },
    )
}

#[test]
fn secrets_in_the_original_variables_never_show_whatever_surrounds_them() {
    let mut runner =
        TestRunner::new(RunnerConfig { cases: cases() / 3, failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (
        env_value(MARKERS[0], &["oauth:M", "M", "oauthéM", "oauth: M", "M\n", "oauth:", "OAUTH:M M"]),
        env_value(MARKERS[1], &["postgres://u:M@h/db", "mysql://u:M@h/db", "M", "postgres://M", ""]),
        env_value(MARKERS[2], &["M", " M ", "M\nM", ""]),
        prop::option::of("[a-z_#, ]{0,30}"),
        prop::option::of("[0-9a-z]{0,6}"),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(token, url, password, channels, port, with_file)| {
            let mut env = vec![
                ("TWITCH_USERNAME", "bot".to_string()),
                ("TWITCH_OAUTH_TOKEN", token),
                ("DATABASE_URL", url),
                ("POSTGRES_PASSWORD", password),
                ("POSTGRES_HOST", "db".to_string()),
                ("POSTGRES_DB", "twitch".to_string()),
                ("POSTGRES_USER", "postgres".to_string()),
            ];
            env.extend(channels.map(|c| ("TWITCH_CHANNELS", c)));
            env.extend(port.map(|p| ("POSTGRES_PORT", p)));
            let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let file = bases()[0].clone();
            let loaded = if with_file {
                config::load_text(Some((Path::new("fuzz.toml"), &file)), &get)
            } else {
                config::load_text(None, &get)
            };
            let shown = match loaded {
                Ok(cfg) => format!("{}\n{cfg:?}", render(&cfg)),
                Err(e) => e.to_string(),
            };
            prop_assert!(!shown.contains("internal error"), "{shown}");
            for marker in &MARKERS[..3] {
                let chars: Vec<char> = marker.chars().collect();
                for w in chars.windows(WINDOW) {
                    let piece: String = w.iter().collect();
                    prop_assert!(!shown.contains(&piece), "`{piece}` shown for {env:?}:\n{shown}");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A filter entry as a hostile or careless editor writes it.
fn user_entry() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9_]{1,30}",
        "[0-9]{1,25}",
        prop::collection::vec(prop::sample::select(CHARS), 0..6).prop_map(|c| c.into_iter().collect()),
        Just(String::new()),
    ];
    prop::collection::vec(piece, 1..4).prop_map(|p| p.concat())
}

#[test]
fn filter_entries_of_any_shape_load_normalised_or_are_reported_at_their_key_never_a_panic() {
    let mut runner =
        TestRunner::new(RunnerConfig { cases: 2000, failure_persistence: None, ..RunnerConfig::default() });
    let strategy = (prop::collection::vec(user_entry(), 1..5), prop::bool::ANY);
    runner
        .run(&strategy, |(entries, global)| {
            // Escaped as TOML basic strings, so the entry reaches validation as written.
            let list: Vec<String> = entries.iter().map(|e| toml::Value::String(e.clone()).to_string()).collect();
            let (key, text) = if global {
                ("filters.opt_out_users", format!("[filters]\nopt_out_users = [{}]\n", list.join(", ")))
            } else {
                (
                    "groups.g.ignore_users",
                    format!("[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nignore_users = [{}]\n", list.join(", ")),
                )
            };
            let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://h/db".to_string());
            match config::load_text(Some((Path::new("f.toml"), &text)), &env) {
                Ok(cfg) => {
                    let l = if global { &cfg.live.filters.opt_out_users } else { &cfg.live.groups["g"].ignore_users };
                    for e in l.logins.iter() {
                        prop_assert!(config::login::normalize_login(e).as_deref() == Ok(e.as_str()), "{e:?}");
                    }
                    for e in l.ids.iter() {
                        prop_assert!(!e.is_empty() && e.len() <= 20 && e.bytes().all(|b| b.is_ascii_digit()), "{e:?}");
                    }
                    prop_assert!(l.logins.len() + l.ids.len() <= entries.len());
                }
                Err(err) => {
                    prop_assert!(!err.to_string().contains("internal error"), "{text:?}: {err}");
                    for p in &err.problems {
                        prop_assert_eq!(&p.key, key, "{}", p);
                        let one_line = p.to_string();
                        prop_assert!(!one_line.contains('\n') && !one_line.contains('\r'), "{:?}", one_line);
                        let on_line = matches!(p.location, config::Location::File { line: Some(_), .. });
                        prop_assert!(on_line, "{}", p);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}
