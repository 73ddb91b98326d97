//! Loading as `run`, `check` and a reload do it: file + environment → Config or every problem.

use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn load_text(text: &str, env: &[(&str, &str)]) -> (Result<Config, ConfigError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (load(Some(&path), &env_of(env)), dir)
}

fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match load_text(text, env).0 {
        Ok(_) => panic!("expected problems for:\n{text}"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

const FULL: &str = r##"
[twitch]
server = "irc://127.0.0.1:6667"

[database]
host = "db"
port = 5433
name = "chat"
user = "logger"
password = "hunter2"

[batch]
max_rows = 500
flush_interval = "250ms"
queue_capacity = 5000

[accounts.default]
username = "MyBot"
oauth_token = "oauth:abcdef123"

[accounts.backup]
username = "mybot2"
oauth_token = "zzz999"
join_rate = "100/10s"

[accounts.reader]

[groups.default]
accounts = ["default"]
channels = ["channel_one", "#Channel_Two"]

[groups.esports]
accounts = ["default", "backup"]
channels = ["esl_csgo", "#BLAST", "channel_one"]
"##;

#[test]
fn a_full_file_loads_with_channels_normalised_and_unioned_per_account() {
    let (cfg, _d) = load_text(FULL, &[]);
    let cfg = cfg.unwrap();
    assert_eq!(
        cfg.live.batch,
        BatchConfig {
            max_rows: 500,
            flush_interval: Duration::from_millis(250),
            queue_capacity: 5000,
            ..BatchConfig::default()
        }
    );
    let def: Vec<_> = cfg.channels_for("default").into_iter().collect();
    assert_eq!(def, ["blast", "channel_one", "channel_two", "esl_csgo"]);
    let backup: Vec<_> = cfg.channels_for("backup").into_iter().collect();
    assert_eq!(backup, ["blast", "channel_one", "esl_csgo"]);
    assert!(cfg.channels_for("reader").is_empty());
    match &cfg.live.accounts["default"].credentials {
        Credentials::Login { username, token: Some(token), refresh: None } => {
            assert_eq!(username, "mybot");
            assert_eq!(token.expose_secret(), "abcdef123", "the oauth: prefix is stripped; twitch-irc adds one");
        }
        _ => panic!("expected a login"),
    }
    assert_eq!(cfg.live.accounts["backup"].join_rate, Rate { count: 100, per: Duration::from_secs(10) });
    assert!(matches!(cfg.live.accounts["reader"].credentials, Credentials::Anonymous));
}

#[test]
fn environment_overrides_the_file_and_says_which_keys() {
    let env = [
        ("TWITCH_CHANNELS", "#One, two ,one"),
        ("TWITCH_USERNAME", "envbot"),
        ("POSTGRES_HOST", "envhost"),
        ("POSTGRES_PASSWORD", "p@ss/w:rd%"),
        ("TWITCH_IRC_SERVER", "irc://10.0.0.1:7000"),
    ];
    let (cfg, _d) = load_text(FULL, &env);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.groups["default"].channels.iter().collect::<Vec<_>>(), ["one", "two"]);
    assert_eq!(cfg.live.groups["esports"].channels.len(), 3, "other groups are untouched");
    assert_eq!(cfg.live.accounts["default"].credentials.display_login(), "envbot");
    match &cfg.startup.database {
        DatabaseConfig::Fields { host, port, password, .. } => {
            assert_eq!((host.as_str(), *port), ("envhost", 5433));
            assert_eq!(password.as_ref().unwrap().expose_secret(), "p@ss/w:rd%");
        }
        _ => panic!(),
    }
    assert_eq!(cfg.startup.twitch.server.port, 7000);
    let o = cfg.env_overrides.iter().find(|o| o.var == "TWITCH_CHANNELS").unwrap();
    assert_eq!(o.key, "groups.default.channels");
    assert!(o.file_also_set);
}

#[test]
fn environment_creates_the_default_account_and_group_when_the_file_lacks_them() {
    let (cfg, _d) = load_text("[batch]\nmax_rows = 10\n", &[("TWITCH_CHANNELS", "a,b")]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.groups["default"].accounts, ["default"]);
    assert!(matches!(cfg.live.accounts["default"].credentials, Credentials::Anonymous));
    assert_eq!(cfg.channels_for("default").len(), 2);
    assert!(!cfg.env_overrides[0].file_also_set);
}

#[test]
fn env_only_mode_requires_the_originals_variables() {
    let err = load(None, &env_of(&[("TWITCH_USERNAME", "bot")])).unwrap_err();
    let text = err.to_string();
    for var in ["TWITCH_OAUTH_TOKEN", "TWITCH_CHANNELS", "POSTGRES_HOST", "POSTGRES_PASSWORD"] {
        assert!(text.contains(var), "{text}");
    }
    assert!(!text.contains("TWITCH_USERNAME:"), "a set variable is not reported: {text}");
    let ok = load(
        None,
        &env_of(&[
            ("TWITCH_USERNAME", "bot"),
            ("TWITCH_OAUTH_TOKEN", "t"),
            ("TWITCH_CHANNELS", "a"),
            ("DATABASE_URL", "postgres://x@h/db"),
        ]),
    );
    assert!(ok.is_ok(), "DATABASE_URL stands in for POSTGRES_*");
}

#[test]
fn every_semantic_problem_is_reported_at_once_with_key_and_line() {
    let text = r#"
[batch]
max_rows = 0
flush_interval = "soon"

[accounts.a]
username = "bot"

[accounts.b]
oauth_token = "tok"

[accounts.c]
username = "bad name!"
oauth_token = "tok"

[groups.g]
accounts = ["a", "x"]
channels = ["ok", "not-ok"]

[groups.empty]
accounts = []
"#;
    let p = problems(text, &[]);
    let all = p.join("\n");
    assert!(p.len() >= 7, "{all}");
    assert!(all.contains("line 3") && all.contains("batch.max_rows") && all.contains("between 1 and 50000"), "{all}");
    assert!(all.contains("batch.flush_interval") && all.contains("soon"), "{all}");
    assert!(all.contains("accounts.a.username") && all.contains("no oauth_token"), "{all}");
    assert!(all.contains("accounts.b.oauth_token") && all.contains("no username"), "{all}");
    assert!(all.contains("accounts.c.username") && all.contains("bad name!"), "{all}");
    assert!(all.contains("account `x`, which does not exist"), "{all}");
    assert!(all.contains("line 17") && all.contains("not-ok"), "{all}");
    assert!(all.contains("groups.empty.accounts") && all.contains("is empty"), "{all}");
    assert!(!all.contains("tok\""), "{all}");
}

#[test]
fn a_typo_in_an_account_reference_gets_a_suggestion() {
    let p = problems("[accounts.backup]\n[groups.g]\naccounts = [\"bakup\"]\n", &[]);
    assert!(p[0].contains("did you mean `backup`?"), "{p:?}");
}

#[test]
fn a_missing_token_file_is_reported_and_a_present_one_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("tok");
    std::fs::write(&token, "oauth:fromfile\n").unwrap();
    let text = format!(
        "[accounts.a]\nusername = \"bot\"\ntoken_file = \"{}\"\n[accounts.b]\nusername = \"bot2\"\ntoken_file = \"{}/missing\"\n",
        token.display(),
        dir.path().display()
    );
    let p = problems(&text, &[]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("accounts.b.token_file") && p[0].contains("cannot read"), "{p:?}");
    let ok = text.split("[accounts.b]").next().unwrap().to_string();
    let (cfg, _d) = load_text(&ok, &[]);
    match &cfg.unwrap().live.accounts["a"].credentials {
        Credentials::Login { token: Some(token), .. } => assert_eq!(token.expose_secret(), "fromfile"),
        _ => panic!(),
    }
}

#[test]
fn secrets_never_appear_in_errors_or_the_check_report() {
    let text =
        "[database]\npassword = \"hunter2\"\n[accounts.a]\nusername = \"bot\"\noauth_token = \"oauth:sekrit 123\"\n";
    let all = problems(text, &[]).join("\n");
    assert!(all.contains("oauth_token") && !all.contains("sekrit"), "{all}");

    let (cfg, _d) = load_text(FULL, &[("DATABASE_URL", "postgres://u:dbsekrit@h/db")]);
    let cfg = cfg.unwrap();
    let report = render::render(&cfg);
    for secret in ["hunter2", "abcdef123", "zzz999", "dbsekrit"] {
        assert!(!report.contains(secret), "{secret} in:\n{report}");
        assert!(!format!("{cfg:?}").contains(secret), "{secret} in Debug output");
    }
    assert!(report.contains("[redacted]") && report.contains("from DATABASE_URL"), "{report}");
}

#[test]
fn an_explicit_config_path_that_does_not_exist_is_an_error() {
    let e = locate(Some(Path::new("/nonexistent/x.toml")), &env_of(&[])).unwrap_err();
    assert!(e.to_string().contains("--config"));
    let e = locate(None, &env_of(&[("CONFIG_FILE", "/nonexistent/y.toml")])).unwrap_err();
    assert!(e.to_string().contains("CONFIG_FILE"));
}

#[test]
fn a_token_with_a_multi_byte_character_at_byte_6_loads_without_panicking() {
    // "oauth" then a two-byte character: byte 6 is inside it.
    let text = "[accounts.a]\nusername = \"bot\"\noauth_token = \"oauthéSECRET42\"\n";
    let (cfg, _d) = load_text(text, &[]);
    match &cfg.unwrap().live.accounts["a"].credentials {
        Credentials::Login { token: Some(token), .. } => assert_eq!(token.expose_secret(), "oauthéSECRET42"),
        _ => panic!("expected a login"),
    }
    let all = problems(&text.replace("SECRET42", "SECRET42 x"), &[]).join("\n");
    assert!(all.contains("accounts.a.oauth_token") && !all.contains("SECRET"), "{all}");
    let (cfg, _d) = load_text(text, &[("TWITCH_OAUTH_TOKEN", "oAuTh:éSECRET42"), ("TWITCH_USERNAME", "envbot")]);
    match &cfg.unwrap().live.accounts["default"].credentials {
        Credentials::Login { token: Some(token), .. } => {
            assert_eq!(token.expose_secret(), "éSECRET42", "prefix in any case")
        }
        _ => panic!("expected a login"),
    }
}

#[test]
fn a_panic_inside_a_load_becomes_a_problem_that_hides_the_message() {
    const CHILD: &str = "TCL_PANIC_GUARD_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // In the child: the panic below must come back as an error, its message unprinted.
        let e = guarded::<()>(Some(Path::new("x.toml")), || panic!("token oauth:SECRET77 leaked")).unwrap_err();
        assert!(e.to_string().contains("internal error") && !e.to_string().contains("SECRET77"), "{e}");
        // A second one: the hook stays in place.
        assert!(guarded::<()>(None, || panic!("SECRET77 again")).is_err());
        return;
    }
    // The panic hook is process-wide and writes to stderr: watch it from a child process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "config::tests::a_panic_inside_a_load_becomes_a_problem_that_hides_the_message",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran the test: {stdout}");
    assert!(stderr.contains("internal error while reading the configuration at src/config/tests.rs"), "{stderr}");
    assert!(!stderr.contains("SECRET77") && !stdout.contains("SECRET77"), "{stdout}\n{stderr}");
}

#[test]
fn durable_within_must_be_in_range_and_longer_than_flush_interval() {
    let (cfg, _d) = load_text("[batch]\nflush_interval = \"1s\"\ndurable_within = \"30s\"\n", &[]);
    assert_eq!(cfg.unwrap().live.batch.durable_within, Duration::from_secs(30));
    let p = problems("[batch]\nflush_interval = \"2s\"\ndurable_within = \"1500ms\"\n", &[]).join("\n");
    assert!(p.contains("line 3") && p.contains("batch.durable_within") && p.contains("flush_interval (2s)"), "{p}");
    let (cfg, _d) = load_text("[batch]\nflush_interval = \"10m\"\n", &[]);
    assert_eq!(
        cfg.unwrap().live.batch.durable_within,
        Duration::from_millis(603_500),
        "unset, it follows flush_interval"
    );
    let p = problems("[batch]\ndurable_within = \"50ms\"\n", &[]).join("\n");
    assert!(p.contains("out of range") && p.contains("100ms"), "{p}");
    let p = problems("[batch]\ndurable_within = 5\n", &[]).join("\n");
    assert!(p.contains("batch.durable_within") && p.contains("must be a quoted string"), "{p}");
}

#[test]
fn a_problem_is_always_one_line_whatever_the_value_holds() {
    let p = problems("[groups.g]\naccounts = []\nchannels = [\"a\\nline 9: fake\", \"b\\u202ec\"]\n", &[]);
    for line in &p {
        assert!(!line.contains('\n') && !line.contains('\u{202e}'), "{line:?}");
    }
    assert!(p.iter().any(|l| l.contains("a\\nline 9: fake")), "{p:?}");
}

#[test]
fn every_unknown_key_and_every_other_problem_are_reported_in_one_run() {
    let text = r#"
[batch]
max_row = 5
flush_interval = "soon"

[accounts.a]
usernme = "bot"

[groups.g]
acounts = ["a"]
accounts = ["a"]
channels = ["ok", "not-ok"]
"#;
    let p = problems(text, &[]);
    let all = p.join("\n");
    assert_eq!(p.len(), 5, "{all}");
    assert!(p[0].starts_with("line 3") && p[0].contains("did you mean `max_rows`"), "{all}");
    assert!(p[1].starts_with("line 4") && p[1].contains("soon"), "{all}");
    assert!(p[2].starts_with("line 7") && p[2].contains("did you mean `username`"), "{all}");
    assert!(p[3].starts_with("line 10") && p[3].contains("did you mean `accounts`"), "{all}");
    assert!(p[4].starts_with("line 12") && p[4].contains("not-ok"), "{all}");
}

#[test]
fn a_token_file_that_is_a_device_a_pipe_or_huge_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 100_000]).unwrap();
    let binary = dir.path().join("binary");
    std::fs::write(&binary, [0xff, 0xfe, b'S', b'E', b'C']).unwrap();
    for (file, expect) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (dir.path(), "not a regular file"),
        (big.as_path(), "larger than 65536 bytes"),
        (binary.as_path(), "not UTF-8"),
    ] {
        let text = format!("[accounts.a]\nusername = \"bot\"\ntoken_file = \"{}\"\n", file.display());
        let p = problems(&text, &[]).join("\n");
        assert!(p.contains("accounts.a.token_file") && p.contains(expect), "{file:?}: {p}");
    }
    let e = load(Some(Path::new("/dev/zero")), &env_of(&[])).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_is_reported_once_not_again_as_what_follows_from_its_absence() {
    let text = "[accounts.a]\nusername = 5\noauth_token = \"tok\"\n[accounts.b]\noauth_token = \"tok\"\n[accounts]\nc = 7\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"x y\"]\n";
    let p = problems(text, &[]);
    let all = p.join("\n");
    assert!(all.contains("accounts.a.username") && all.contains("must be a quoted string"), "{all}");
    assert!(!all.contains("accounts.a.oauth_token"), "no 'token without username' for a: {all}");
    assert!(
        all.contains("accounts.b.oauth_token") && all.contains("no username"),
        "other accounts still checked: {all}"
    );
    assert!(all.contains("accounts.c") && all.contains("must be a table"), "{all}");
    assert!(all.contains("x y"), "other tables still checked: {all}");
}

#[test]
fn an_unusable_token_is_a_typed_error_that_holds_none_of_its_text() {
    use super::validate::{normalize_token, TokenError};
    use secrecy::ExposeSecret;
    assert_eq!(normalize_token(" oauth: ").unwrap_err(), TokenError::Empty);
    let e = normalize_token("oauth:SECRET77 tail").unwrap_err();
    assert_eq!(e, TokenError::Whitespace);
    assert!(!format!("{e} {e:?}").contains("SECRET77"), "{e:?}");
    assert_eq!(normalize_token("OAuth:abc\n").unwrap().expose_secret(), "abc");
}

#[test]
fn an_account_with_refresh_credentials_needs_no_oauth_token_and_reads_its_secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let refresh = dir.path().join("refresh");
    std::fs::write(&secret, "CSECRET_file_1\n").unwrap();
    std::fs::write(&refresh, "RTOKEN_file_1\n").unwrap();
    let text = format!(
        "[twitch]\nauth_url = \"http://127.0.0.1:9/oauth2\"\ntoken_dir = \"/var/tok\"\n[accounts.bot]\nusername = \"MyBot\"\nclient_id = \"abc123\"\nclient_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n[accounts.inline]\nusername = \"other\"\noauth_token = \"oauth:OTOKEN_1\"\nclient_id = \"abc123\"\nclient_secret = \"CSECRET_inline\"\nrefresh_token = \"RTOKEN_inline\"\n",
        secret.display(),
        refresh.display()
    );
    let (cfg, _d) = load_text(&text, &[]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.startup.twitch.auth_url.to_string(), "http://127.0.0.1:9/oauth2");
    assert_eq!(cfg.startup.twitch.token_dir, PathBuf::from("/var/tok"));
    match &cfg.live.accounts["bot"].credentials {
        Credentials::Login { username, token: None, refresh: Some(r) } => {
            assert_eq!(username, "mybot");
            assert_eq!(r.client_id, "abc123");
            assert_eq!(r.client_secret.expose_secret(), "CSECRET_file_1");
            assert_eq!(r.refresh_token.expose_secret(), "RTOKEN_file_1");
        }
        other => panic!("expected a login with refresh credentials only: {other:?}"),
    }
    match &cfg.live.accounts["inline"].credentials {
        Credentials::Login { token: Some(t), refresh: Some(r), .. } => {
            assert_eq!(t.expose_secret(), "OTOKEN_1");
            assert_eq!(r.refresh_token.expose_secret(), "RTOKEN_inline");
        }
        other => panic!("expected a token and refresh credentials: {other:?}"),
    }
    let report = render::render(&cfg);
    for secret in ["CSECRET", "RTOKEN", "OTOKEN"] {
        assert!(!report.contains(secret), "{secret} in:\n{report}");
        assert!(!format!("{cfg:?}").contains(secret), "{secret} in Debug output");
    }
    assert!(report.contains("client_id = \"abc123\"\nclient_secret = \"[redacted]\"\nrefresh_token = \"[redacted]\""));
    assert!(report.contains("auth_url = \"http://127.0.0.1:9/oauth2\"\ntoken_dir = \"/var/tok\""), "{report}");
}

#[test]
fn incomplete_or_doubled_refresh_credentials_are_reported_by_key_without_their_values() {
    let text = "[accounts.a]\nusername = \"bot\"\nclient_id = \"abc\"\nclient_secret = \"CSECRET 1\"\n\
                [accounts.b]\nusername = \"bot\"\nclient_id = \"abc\"\nclient_secret = \"CSECRET2\"\nrefresh_token = \"RTOKEN1\"\nrefresh_token_file = \"/x\"\n\
                [accounts.c]\nclient_id = \"abc\"\nclient_secret = \"CSECRET3\"\nrefresh_token = \"RTOKEN3\"\n\
                [accounts.d]\nusername = \"bot\"\nclient_id = \"a b\"\nclient_secret = \"CSECRET4\"\nrefresh_token = \"RTOKEN4\"\n";
    let p = problems(text, &[]);
    let all = p.join("\n");
    assert!(!all.contains("SECRET") && !all.contains("RTOKEN"), "{all}");
    let has = |k: &str, m: &str| p.iter().any(|l| l.contains(&format!("key `{k}`")) && l.contains(m));
    assert!(has("accounts.a.client_secret", "contains spaces"), "{all}");
    assert!(has("accounts.a.refresh_token", "is missing"), "{all}");
    assert!(has("accounts.b.refresh_token_file", "is set together with refresh_token"), "{all}");
    assert!(has("accounts.c.client_id", "has no username"), "{all}");
    assert!(has("accounts.d.client_id", "is not a client id"), "{all}");
    assert_eq!(p.len(), 5, "{all}");
}

#[test]
fn a_bad_auth_url_is_reported_at_its_line_and_never_quotes_a_password() {
    let p = problems("[accounts.a]\n[twitch]\nauth_url = \"https://user:PWSECRET@id.example/oauth2\"\n", &[]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("line 3: key `twitch.auth_url`:") && !p[0].contains("PWSECRET"), "{p:?}");
    let p = problems("[twitch]\nauth_url = \"ftp://x\"\n", &[]);
    assert!(p[0].contains("twitch.auth_url") && p[0].contains("https://id.twitch.tv/oauth2"), "{p:?}");
}

#[test]
fn auth_url_and_token_dir_need_a_restart_and_a_changed_secret_changes_only_that_account() {
    let base = "[twitch]\nauth_url = \"http://127.0.0.1:9\"\n[accounts.a]\nusername = \"bot\"\nclient_id = \"abc\"\nclient_secret = \"S1\"\nrefresh_token = \"R1\"\n[accounts.b]\nusername = \"bot2\"\noauth_token = \"T1\"\n";
    let (old, _d) = load_text(base, &[]);
    let old = old.unwrap();
    let (new, _d) = load_text(
        &base
            .replace("127.0.0.1:9", "127.0.0.1:10")
            .replace("S1", "S2")
            .replace("[accounts.a]", "[twitch.x]\n[accounts.a]"),
        &[],
    );
    assert!(new.is_err(), "an unknown key under [twitch] is refused");
    let (new, _d) =
        load_text(&base.replace("127.0.0.1:9\"", "127.0.0.1:10\"\ntoken_dir = \"t\"").replace("S1", "S2"), &[]);
    let new = new.unwrap();
    assert_eq!(old.startup.changed_keys(&new.startup), ["twitch.auth_url", "twitch.token_dir"]);
    assert_ne!(old.live.accounts["a"], new.live.accounts["a"], "a new client secret is a credentials change");
    assert_eq!(old.live.accounts["b"], new.live.accounts["b"]);
    let (same, _d) = load_text(base, &[]);
    assert_eq!(old.live.accounts["a"], same.unwrap().live.accounts["a"]);
    let (new, _d) = load_text(&base.replace("R1", "R2"), &[]);
    assert_ne!(old.live.accounts["a"], new.unwrap().live.accounts["a"], "a new refresh token too");
}

#[test]
fn the_log_api_is_on_unless_http_api_is_false_and_a_quoted_value_is_refused_by_line() {
    let base = "[database]\nurl = \"postgres://h/db\"\n";
    let (on, _d) = load_text(base, &[]);
    assert!(on.unwrap().startup.http.api);
    let (off, _d) = load_text(&format!("{base}[http]\napi = false\n"), &[]);
    assert!(!off.unwrap().startup.http.api);
    let p = problems(&format!("{base}[http]\napi = \"no\"\n"), &[]);
    assert_eq!(p, vec!["line 4, column 7: key `http.api`: must be true or false (no quotes), not a string"]);
}

const FILTERS: &str = r##"
[accounts.a]

[groups.g]
accounts = ["a"]
channels = ["one"]
ignore_users = ["StreamElements", "#nightbot", "100135110"]

[groups.h]
accounts = ["a"]
channels = ["two"]

[filters]
ignore_users = [" Moobot ", "moobot", "1564983"]
opt_out_users = ["Private_Person", "44322889"]
"##;

#[test]
fn filter_lists_load_normalised_global_and_per_group_and_check_prints_them() {
    let (cfg, _d) = load_text(FILTERS, &[("DATABASE_URL", "postgres://h/db")]);
    let cfg = cfg.unwrap();
    let f = &cfg.live.filters;
    assert_eq!(f.ignore_users.logins.iter().collect::<Vec<_>>(), ["moobot"], "trimmed, lowercased, merged");
    assert_eq!(f.ignore_users.ids.iter().collect::<Vec<_>>(), ["1564983"]);
    assert_eq!(f.opt_out_users.logins.iter().collect::<Vec<_>>(), ["private_person"]);
    assert_eq!(f.opt_out_users.ids.iter().collect::<Vec<_>>(), ["44322889"]);
    let g = &cfg.live.groups["g"].ignore_users;
    assert_eq!(g.logins.iter().collect::<Vec<_>>(), ["nightbot", "streamelements"]);
    assert_eq!(g.ids.iter().collect::<Vec<_>>(), ["100135110"]);
    assert!(cfg.live.groups["h"].ignore_users.is_empty());
    let out = render::render(&cfg);
    assert!(out.contains("ignore_users = [\"nightbot\", \"streamelements\", \"100135110\"]\n"), "{out}");
    assert!(
        out.ends_with("\n[filters]\nignore_users = [\"moobot\", \"1564983\"]\nopt_out_users = [\"private_person\", \"44322889\"]\n"),
        "{out}"
    );
    // `check`'s output is a config that loads to the same lists.
    let (again, _d) = load_text(&out.replace("url = \"[redacted]\"", "url = \"postgres://h/db\""), &[]);
    assert_eq!(again.unwrap().live.filters, *f);
}

#[test]
fn opted_out_users_are_found_by_login_in_any_case_or_by_id_and_nobody_else_is() {
    let (cfg, _d) = load_text(FILTERS, &[("DATABASE_URL", "postgres://h/db")]);
    let live = cfg.unwrap().live;
    assert!(live.is_opted_out("Private_Person", None));
    assert!(live.is_opted_out(" private_person ", Some("1")));
    assert!(live.is_opted_out("renamed_since", Some("44322889")), "by id, whatever the login is now");
    assert!(!live.is_opted_out("moobot", Some("1564983")), "ignored is not opted out");
    assert!(!live.is_opted_out("someone", None));
    assert!(!live.is_opted_out("", Some("")));
}

#[test]
fn bad_filter_entries_are_reported_with_key_and_line_and_the_rest_is_still_checked() {
    let text = "[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"one\"]\nignore_users = [\"ok\", \"bad-bot\"]\n[filters]\nignore_users = [\"x y\", 12]\nopt_out_users = [\"\", \"123456789012345678901\", \"fine\"]\n";
    let p = problems(text, &[("DATABASE_URL", "postgres://h/db")]);
    let expected = [
        "line 5: key `groups.g.ignore_users`: `bad-bot` contains `-`; Twitch logins use only letters, digits and `_` (an entry is a Twitch login, e.g. \"nightbot\", or a numeric user id, e.g. \"19264788\")",
        "line 7, column 24: key `filters.ignore_users`: lists quoted strings, not a whole number",
        "line 7: key `filters.ignore_users`: `x y` contains ` `; Twitch logins use only letters, digits and `_` (an entry is a Twitch login, e.g. \"nightbot\", or a numeric user id, e.g. \"19264788\")",
        "line 8: key `filters.opt_out_users`: `` is empty (an entry is a Twitch login, e.g. \"nightbot\", or a numeric user id, e.g. \"19264788\")",
        "line 8: key `filters.opt_out_users`: `123456789012345678901` is too long for a user id (20 digits at most); write the login or the id Twitch shows",
    ];
    assert_eq!(p, expected);
}

#[test]
fn a_misplaced_or_misspelt_filter_key_is_named_with_its_home() {
    let p = problems("[filters]\nignore_user = [\"x\"]\n", &[("DATABASE_URL", "postgres://h/db")]);
    assert!(p[0].contains("did you mean `ignore_users`"), "{p:?}");
    let p = problems("opt_out_users = [\"x\"]\n", &[("DATABASE_URL", "postgres://h/db")]);
    assert!(p[0].contains("belongs under [filters]"), "{p:?}");
    let p = problems("[accounts.a]\nopt_out_users = [\"x\"]\n", &[("DATABASE_URL", "postgres://h/db")]);
    assert!(p[0].contains("key `accounts.a.opt_out_users`"), "{p:?}");
}
const SHARDED: &str = "[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"c0\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\", \"c8\", \"c9\"]\n";

#[test]
fn a_shard_in_the_file_logs_only_its_channels_and_every_channel_has_one_shard() {
    let mut seen = BTreeMap::new();
    for i in 1..=3 {
        let (cfg, _d) = load_text(&format!("{SHARDED}[cluster]\nshard = \"{i}/3\"\n"), &[]);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.live.cluster, ClusterConfig { shard: Shard { index: i, count: 3 }, replicas: 1 });
        assert_eq!(cfg.live.configured_channels().len(), 10);
        assert_eq!(cfg.channels_for("a"), cfg.live.all_channels());
        for c in cfg.channels_for("a") {
            *seen.entry(c).or_insert(0) += 1;
        }
        assert!(cfg.live.shard_summary().starts_with(&format!("shard {i}/3, replicas 1: this instance logs ")));
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let (cfg, _d) = load_text(&format!("{SHARDED}[cluster]\nshard = \"1/3\"\nreplicas = 3\n"), &[]);
    assert_eq!(cfg.unwrap().channels_for("a").len(), 10, "three replicas of three shards: every channel");
}

#[test]
fn shard_from_the_environment_wins_over_the_file_and_is_reported_as_such() {
    let (cfg, _d) = load_text(&format!("{SHARDED}[cluster]\nshard = \"1/3\"\nreplicas = 2\n"), &[("SHARD", "3/3")]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.cluster.shard, Shard { index: 3, count: 3 });
    assert_eq!(cfg.live.cluster.replicas, 2, "replicas still comes from the file");
    let o = cfg.env_overrides.iter().find(|o| o.var == "SHARD").unwrap();
    assert_eq!((o.key.as_str(), o.file_also_set), ("cluster.shard", true));
    let shown = render::render(&cfg);
    assert!(
        shown.contains("\n[cluster]\nshard = \"3/3\"  # from SHARD (overrides the file)\nreplicas = 2\n"),
        "{shown}"
    );
    assert!(shown.contains("# shard 3/3, replicas 2: this instance logs "), "{shown}");
    // SHARD replaces `shards` (the pod-name rule) too.
    let (cfg, _d) = load_text(&format!("{SHARDED}[cluster]\nshards = 4\n"), &[("SHARD", "2/3"), ("HOSTNAME", "x-0")]);
    assert_eq!(cfg.unwrap().live.cluster.shard, Shard { index: 2, count: 3 });
    assert_eq!(problems(SHARDED, &[("SHARD", "4/3")]), [
        "environment variable SHARD: `4/3`: the index must be from 1 to 3 (it is 1-based); write it as \"INDEX/COUNT\", e.g. \"2/4\" for the second of four shards (1-based)"
    ]);
}

#[test]
fn shards_alone_takes_the_shard_from_the_statefulset_pod_name() {
    let text = format!("{SHARDED}[cluster]\nshards = 4\n");
    let (cfg, _d) = load_text(&text, &[("HOSTNAME", "logger-1")]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.cluster.shard, Shard { index: 2, count: 4 });
    assert!(render::render(&cfg).contains("shard = \"2/4\"  # from HOSTNAME\n"));
    let p = problems(&text, &[("HOSTNAME", "logger-4")]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("environment variable HOSTNAME: `logger-4` is pod ordinal 4"), "{p:?}");
    let p = problems(&text, &[("HOSTNAME", "d5f1e0c2a9b3")]);
    assert!(p[0].contains("does not end in -ORDINAL") && p[0].contains("SHARD=INDEX/COUNT"), "{p:?}");
    let p = problems(&text, &[]);
    assert!(p[0].starts_with("environment variable HOSTNAME: is not set; cluster.shards = 4"), "{p:?}");
}

#[test]
fn wrong_cluster_settings_are_reported_at_their_key_and_line() {
    let p = problems(&format!("{SHARDED}[cluster]\nshard = \"0/4\"\n"), &[]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("line 6: key `cluster.shard`: `0/4`: the index must be from 1 to 4"), "{p:?}");
    let p = problems(&format!("{SHARDED}[cluster]\nshard = \"two of four\"\n"), &[]);
    assert!(p[0].starts_with("line 6: key `cluster.shard`: `two of four` is not a shard; write it as"), "{p:?}");
    let p = problems(&format!("{SHARDED}[cluster]\nshard = \"1/2\"\nreplicas = 3\n"), &[]);
    assert_eq!(p, ["line 7: key `cluster.replicas`: (3) is more than the shard count (2); each channel can be logged by at most every shard"]);
    let p = problems(&format!("{SHARDED}[cluster]\nreplicas = 0\nshards = 0\n"), &[("HOSTNAME", "l-0")]);
    assert_eq!(
        p,
        [
            "line 6: key `cluster.replicas`: must be between 1 and 1000 (and at most the shard count)",
            "line 7: key `cluster.shards`: must be between 1 and 1000"
        ]
    );
    let p = problems(&format!("{SHARDED}[cluster]\nshard = \"1/2\"\nshards = 2\n"), &[]);
    assert!(p[0].starts_with("line 7: key `cluster.shards`: is set together with shard; keep one"), "{p:?}");
    let p = problems(&format!("{SHARDED}shard = \"1/2\"\n"), &[]);
    assert!(p[0].contains("belongs under [cluster]"), "{p:?}");
    let p = problems(&format!("{SHARDED}[cluster]\nshard = 2\n"), &[]);
    assert!(p[0].contains("key `cluster.shard`: must be a quoted string"), "{p:?}");
}

#[test]
fn an_unsharded_config_logs_everything_and_check_shows_no_cluster_table() {
    let (cfg, _d) = load_text(SHARDED, &[]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.cluster, ClusterConfig::default());
    assert_eq!(cfg.live.all_channels().len(), 10);
    assert!(!render::render(&cfg).contains("[cluster]"));
}

#[test]
fn env_only_mode_shards_by_shard_alone() {
    let env = env_of(&[
        ("TWITCH_USERNAME", "bot"),
        ("TWITCH_OAUTH_TOKEN", "tok"),
        ("TWITCH_CHANNELS", "c0,c1,c2,c3,c4,c5,c6,c7,c8,c9"),
        ("DATABASE_URL", "postgres://h/db"),
        ("SHARD", "2/2"),
    ]);
    let cfg = load(None, &env).unwrap();
    assert_eq!(cfg.live.cluster.shard, Shard { index: 2, count: 2 });
    let mine = cfg.channels_for("default");
    let other = cfg.live.configured_channels().len() - mine.len();
    assert!(!mine.is_empty() && other > 0, "both shards get some of ten channels: {mine:?}");
}

#[test]
fn a_config_file_with_no_database_anywhere_stores_in_data_chat_db() {
    let (cfg, _d) = load_text("[batch]\nmax_rows = 10\n", &[]);
    assert_eq!(cfg.unwrap().startup.database, DatabaseConfig::Sqlite(PathBuf::from("data/chat.db")));
    // Any one database key, in the file or from the original's variables, means PostgreSQL.
    for (text, env) in [
        ("[database]\nhost = \"db\"\n", vec![]),
        ("[database]\nport = 5433\n", vec![]),
        ("", vec![("POSTGRES_PASSWORD", "pw")]),
        ("", vec![("POSTGRES_HOST", "db")]),
        ("", vec![("DATABASE_URL", "postgres://u@h/db")]),
    ] {
        let (cfg, _d) = load_text(text, &env);
        let db = cfg.unwrap().startup.database;
        assert!(!matches!(db, DatabaseConfig::Sqlite(_)), "{text:?} {env:?} gave {db:?}");
    }
}

#[test]
fn env_only_mode_stays_postgresql() {
    let env = env_of(&[
        ("TWITCH_USERNAME", "bot"),
        ("TWITCH_OAUTH_TOKEN", "oauth:x"),
        ("TWITCH_CHANNELS", "a"),
        ("POSTGRES_HOST", "h"),
        ("POSTGRES_PORT", "5432"),
        ("POSTGRES_DB", "d"),
        ("POSTGRES_USER", "u"),
        ("POSTGRES_PASSWORD", "p"),
    ]);
    let cfg = load(None, &env).unwrap();
    assert!(matches!(cfg.startup.database, DatabaseConfig::Fields { .. }));
    // Without the variables it still asks for them rather than falling back to a file.
    let err = load(None, &env_of(&[("TWITCH_USERNAME", "bot")])).unwrap_err().to_string();
    assert!(err.contains("POSTGRES_HOST"), "{err}");
}

#[test]
fn sqlite_urls_name_a_file_relative_to_the_working_directory_or_absolute() {
    for (url, path) in [
        ("sqlite://data/chat.db", "data/chat.db"),
        ("sqlite:chat.db", "chat.db"),
        ("sqlite:///var/lib/twitch/chat.db", "/var/lib/twitch/chat.db"),
    ] {
        let (cfg, _d) = load_text(&format!("[database]\nurl = \"{url}\"\n"), &[]);
        assert_eq!(cfg.unwrap().startup.database, DatabaseConfig::Sqlite(PathBuf::from(path)), "{url}");
    }
    for (url, says) in [
        ("sqlite://", "names no file"),
        ("sqlite::memory:", "not a file the rows would survive in"),
        ("sqlite://data/chat.db?mode=ro", "options after `?`"),
        ("sqlite://data/", "names a directory"),
    ] {
        let p = problems(&format!("[database]\nurl = \"{url}\"\n"), &[]);
        assert!(p.len() == 1 && p[0].contains("database.url") && p[0].contains(says), "{url}: {p:?}");
        assert!(p[0].contains("sqlite://data/chat.db"), "says how to write it: {p:?}");
    }
    // DATABASE_URL may name a file too; `check` prints the path (no secret in it).
    let (cfg, _d) = load_text("", &[("DATABASE_URL", "sqlite:///tmp/x.db")]);
    let shown = render::render(&cfg.unwrap());
    assert!(shown.contains("url = \"sqlite:///tmp/x.db\"  # from DATABASE_URL"), "{shown}");
}

#[test]
fn retention_is_days_or_hours_on_both_stores() {
    let (cfg, _d) = load_text("[storage]\nretention = \"90d\"\n", &[]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.storage.retention, Some(Duration::from_secs(90 * 86_400)));
    assert!(render::render(&cfg).contains("[storage]\nraw_lines = false\nretention = \"90d\""));
    let (cfg, _d) = load_text("[storage]\nretention = \"36h\"\n", &[]);
    assert_eq!(cfg.unwrap().live.storage.retention, Some(Duration::from_secs(36 * 3600)));
    let (cfg, _d) = load_text("[storage]\nretention = \"forever\"\n", &[]);
    assert_eq!(cfg.unwrap().live.storage.retention, None);
    let (cfg, _d) = load_text("", &[]);
    assert_eq!(cfg.unwrap().live.storage.retention, None, "kept forever by default");
    for bad in ["90", "10m", "-1d", "ninety days", "40000d"] {
        let p = problems(&format!("[storage]\nretention = \"{bad}\"\n"), &[]);
        assert!(
            p.len() == 1 && p[0].starts_with("line 2: key `storage.retention`") && p[0].contains("\"90d\""),
            "{bad}: {p:?}"
        );
    }
    // PostgreSQL drops whole partitions instead (issue #15).
    let (cfg, _d) = load_text("[storage]\nretention = \"90d\"\n", &[("DATABASE_URL", "postgres://u@h/db")]);
    assert_eq!(cfg.unwrap().live.storage.retention, Some(Duration::from_secs(90 * 86_400)));
}

#[test]
fn retention_edits_are_live_not_a_restart() {
    let (a, _d) = load_text("", &[]);
    let (b, _e) = load_text("[storage]\nretention = \"30d\"\n", &[]);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.startup.changed_keys(&b.startup).is_empty());
    assert_ne!(a.live, b.live);
}

proptest::proptest! {
    #[test]
    fn any_sqlite_url_is_read_without_panicking_and_a_plain_path_comes_back_as_written(
        path in "[a-zA-Z0-9_./ -]{1,40}[a-z0-9]",
        junk in "\\PC{0,40}",
    ) {
        let got = validate::sqlite_path(&format!("sqlite://{path}"));
        proptest::prop_assert_eq!(got, Some(Ok(PathBuf::from(&path))));
        let _ = validate::sqlite_path(&format!("sqlite:{junk}"));
        proptest::prop_assert!(validate::sqlite_path(&junk).is_none() || junk.starts_with("sqlite:"));
    }
}

#[test]
fn storage_raw_lines_is_off_unless_set_true_needs_a_restart_and_refuses_a_string() {
    let (cfg, _d) = load_text(FULL, &[]);
    assert!(!cfg.unwrap().startup.storage.raw_lines, "off by default");
    let on = format!("{FULL}\n[storage]\nraw_lines = true\n");
    let (cfg, _d) = load_text(&on, &[]);
    let new = cfg.unwrap();
    assert!(new.startup.storage.raw_lines);
    let (old, _d) = load_text(FULL, &[]);
    assert_eq!(old.unwrap().startup.changed_keys(&new.startup), ["storage.raw_lines"]);
    let p = problems(&format!("{FULL}\n[storage]\nraw_lines = \"yes\"\n"), &[]);
    assert!(p.iter().any(|p| p.contains("storage.raw_lines") && p.contains("true or false")), "{p:?}");
    let p = problems(&format!("{FULL}\n[storage]\nraw_line = true\n"), &[]);
    assert!(p.iter().any(|p| p.contains("did you mean `raw_lines`")), "{p:?}");
}

#[test]
fn the_partition_interval_is_a_day_by_default_or_a_month_and_anything_else_is_named_with_its_line() {
    let pg = [("DATABASE_URL", "postgres://u@h/db")];
    let (cfg, _d) = load_text("", &pg);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.live.storage.partition, PartitionInterval::Day);
    assert!(render::render(&cfg).contains("retention = \"forever\"\npartition = \"1 day\"\n"));
    for (text, want) in [
        ("1 month", PartitionInterval::Month),
        (" 1  day ", PartitionInterval::Day),
        ("month", PartitionInterval::Month),
    ] {
        let (cfg, _d) = load_text(&format!("[storage]\npartition = \"{text}\"\n"), &pg);
        assert_eq!(cfg.unwrap().live.storage.partition, want, "{text}");
    }
    for bad in ["1 week", "2 days", "daily", ""] {
        let p = problems(&format!("[storage]\npartition = \"{bad}\"\n"), &pg);
        assert!(
            p.len() == 1
                && p[0].starts_with("line 2")
                && p[0].contains("storage.partition")
                && p[0].contains("\"1 month\""),
            "{bad}: {p:?}"
        );
    }
    // Live: a reload applies it, no restart.
    let (a, _d) = load_text("", &pg);
    let (b, _e) = load_text("[storage]\npartition = \"1 month\"\n", &pg);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.startup.changed_keys(&b.startup).is_empty());
    assert_ne!(a.live, b.live);
}

proptest::proptest! {
    #[test]
    fn any_partition_text_loads_or_is_one_problem_never_a_panic(text in "\\PC{0,20}") {
        let pg = [("DATABASE_URL", "postgres://u@h/db")];
        let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
        let p = problems(&format!("[storage]\npartition = \"{escaped}\"\n"), &pg);
        let normal = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let valid = ["1 day", "day", "1 month", "month"].contains(&normal.as_str());
        proptest::prop_assert_eq!(p.is_empty(), valid, "{:?} {:?}", text, p);
    }
}
