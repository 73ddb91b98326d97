//! The config file end to end: several accounts in one process, and `check`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn two_accounts_get_their_own_connections_and_a_shared_channel_is_stored_once() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&format!(
        r##"
[twitch]
server = "{}"
[batch]
flush_interval = "100ms"
[accounts.alpha]
username = "AlphaBot"
oauth_token = "oauth:tokA"
[accounts.beta]
username = "betabot"
oauth_token = "tokB"
[groups.g1]
accounts = ["alpha"]
channels = ["a1", "#Shared"]
[groups.g2]
accounts = ["beta"]
channels = ["b1", "shared"]
"##,
        fake.url()
    ));
    let _logger = Logger::spawn(file_mode(&path, &db.url));
    fake.wait_for("both accounts joined", 10 * SEC, |f| {
        f.joined_by("alphabot").len() == 2 && f.joined_by("betabot").len() == 2
    })
    .await;

    assert_eq!(fake.joined_by("alphabot"), set(&["a1", "shared"]));
    assert_eq!(fake.joined_by("betabot"), set(&["b1", "shared"]));
    let conns = fake.conns();
    let pass_of = |nick: &str| conns.iter().find(|c| c.nick.as_deref() == Some(nick)).and_then(|c| c.pass.clone());
    assert_eq!(pass_of("alphabot").as_deref(), Some("oauth:tokA"));
    assert_eq!(pass_of("betabot").as_deref(), Some("oauth:tokB"));
    assert_eq!(conns.len(), 2, "one connection per account");
    assert_eq!(fake.join_lines("alphabot").len(), 2, "no JOIN beyond its groups' channels");

    assert_eq!(fake.to_channel("shared", &privmsg("shared", "sh-1", "Gus", "seen by both")), 2);
    fake.to_channel("a1", &privmsg("a1", "a-1", "Gus", "only alpha"));
    fake.to_channel("b1", &privmsg("b1", "b-1", "Gus", "only beta"));
    db.wait_count("SELECT count(*) FROM chat_messages", 3, 10 * SEC).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM chat_messages WHERE message_id = '{}'", fake_twitch::msg_uuid("sh-1")))
            .await,
        1
    );
}

fn check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = logger_cmd(dir);
    cmd.arg("check").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_accepts_the_shipped_config_and_shows_overrides_redacted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = check(
        root,
        &[],
        &[("TWITCH_OAUTH_TOKEN", "oauth:sekrit42"), ("TWITCH_USERNAME", "mybot"), ("TWITCH_CHANNELS", "x,y")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config/config.toml"), "found config/config.toml by default: {out}");
    assert!(out.contains("oauth_token = \"[redacted]\"  # from TWITCH_OAUTH_TOKEN"), "{out}");
    assert!(out.contains("channels = [\"x\", \"y\"]  # from TWITCH_CHANNELS (overrides the file)"), "{out}");
    assert!(!out.contains("sekrit42") && !err.contains("sekrit42"));
}

#[test]
fn check_lists_every_problem_and_exits_nonzero_without_touching_the_network() {
    let (dir, path) = config_dir("[batch]\nmax_row = 5\n");
    let (code, _, err) = check(dir.path(), &["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("line 2") && err.contains("did you mean `max_rows`"), "{err}");

    let (dir, path) = config_dir(
        "[database]\nurl = \"mysql://u:dbpw@h/x\"\n[groups.g]\naccounts = [\"nobody\"]\nchannels = [\"a b\"]\n",
    );
    let (code, _, err) = check(dir.path(), &["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("3 problems"), "{err}");
    assert!(!err.contains("dbpw"), "{err}");
}

/// The variables of a dotenv file (`KEY=value` lines; comments and blank lines skipped).
fn dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every file in examples/ passes `check` where it is meant to run: the TOML examples with the
/// secret files they name (Docker/Kubernetes put them in /run/secrets) created in a temp dir,
/// the dotenv file as the environment of env-only mode (no config file). A new example that
/// fits neither fails here.
#[test]
fn every_example_passes_check_where_it_is_meant_to_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            // Its manifests are checked, its config included, by tests/kubernetes.rs.
            assert_eq!(name, "kubernetes", "examples/{name}/ has no test");
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let work = tempfile::tempdir().unwrap();
        let (code, out, err) = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                let secrets = work.path().join("secrets");
                std::fs::create_dir(&secrets).unwrap();
                let mut named = 0;
                for file in text.split("/run/secrets/").skip(1) {
                    let file: String = file.chars().take_while(|c| !matches!(c, '"' | '\'')).collect();
                    std::fs::write(secrets.join(&file), "oauth:standin_secret\n").unwrap();
                    named += 1;
                }
                let local = text.replace("/run/secrets/", &format!("{}/", secrets.display()));
                let config = work.path().join(&name);
                std::fs::write(&config, local).unwrap();
                let (code, out, err) = check(work.path(), &["--config", config.to_str().unwrap()], &[]);
                assert!(named == 0 || out.contains("[redacted]"), "{name}: {out}");
                (code, out, err)
            }
            Some("env") => {
                let vars = dotenv(&text);
                let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "TWITCH_USERNAME",
                        "TWITCH_OAUTH_TOKEN",
                        "TWITCH_CHANNELS",
                        "POSTGRES_HOST",
                        "POSTGRES_PORT",
                        "POSTGRES_DB",
                        "POSTGRES_USER",
                        "POSTGRES_PASSWORD"
                    ],
                    "{name}: the original's eight variables"
                );
                let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let (code, out, err) = check(work.path(), &[], &env);
                assert!(out.contains("environment only"), "{name}: {out}");
                (code, out, err)
            }
            _ => panic!("{name}: an example this test does not know how to check"),
        };
        assert_eq!(code, 0, "{name}:\n{out}\n{err}");
        checked.push(name);
    }
    checked.sort();
    assert_eq!(checked, ["docker-secrets.toml", "env-only.env", "multi-account.toml"]);
}

#[tokio::test]
async fn an_environment_variable_overriding_the_file_wins_and_says_so_at_start_up() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"fromfile\"]\n",
        fake.url()
    ));
    let logger = Logger::spawn({
        let mut cmd = file_mode(&path, &db.url);
        cmd.env("TWITCH_CHANNELS", "#FromEnv");
        cmd
    });
    fake.wait_for("env channel joined", 10 * SEC, |f| f.joined_by("justinfan12345").contains("fromenv")).await;
    assert!(!fake.joined_by("justinfan12345").contains("fromfile"));
    logger.wait_log("TWITCH_CHANNELS overrides `groups.default.channels` from the config file", SEC).await;
}

/// A stand-in for the logger's /healthz: answers every connection with 200.
fn healthz_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

fn healthcheck(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = logger_cmd(dir);
    cmd.env_remove("HTTP_LISTEN").arg("healthcheck").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn healthcheck_needs_only_the_listen_address_and_works_from_any_directory() {
    let up = healthz_server().to_string();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // A directory with no config and none of the original's variables.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(healthcheck(empty.path(), &[], &[("HTTP_LISTEN", &up)]).0, 0);
    assert_eq!(healthcheck(empty.path(), &["--listen", &up], &[("HTTP_LISTEN", &down)]).0, 0, "--listen wins");
    let (code, err) = healthcheck(empty.path(), &[], &[("HTTP_LISTEN", &down)]);
    assert_eq!(code, 1);
    assert!(err.contains(&down), "{err}");
    let (code, err) = healthcheck(empty.path(), &[], &[("HTTP_LISTEN", "off")]);
    assert_eq!((code, err.contains("off")), (1, true), "{err}");

    // The default config file, broken everywhere but [http] listen.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let broken = format!(
        "[batch]\nmax_row = 5\n[accounts.a]\noauth_token = \"x\ny\"\n[http]\nlisten = \"{up}\"\n[groups.g]\naccounts = [\"nobody\"]\n"
    );
    std::fs::write(dir.path().join("config/config.toml"), &broken).unwrap();
    let (code, err) = healthcheck(dir.path(), &[], &[]);
    assert_eq!(code, 0, "{err}");
    // Named with --config from elsewhere, too.
    let file = dir.path().join("config/config.toml");
    assert_eq!(healthcheck(empty.path(), &["--config", file.to_str().unwrap()], &[]).0, 0);
    let (code, _, err) = check(dir.path(), &[], &[]);
    assert_eq!(code, 2, "check still reports the broken file: {err}");
}

#[test]
fn check_never_shows_a_secret_nor_panics_whatever_surrounds_it() {
    let cases = [
        // A multi-byte character at byte 6 of the token: valid, and used to panic.
        ("[accounts.a]\nusername = \"bot\"\noauth_token = \"oauthéSECRET_A\"\n", 0),
        // The same, with a problem elsewhere: exit 2, no panic.
        ("[accounts.a]\nusername = \"bot\"\noauth_token = \"oauthéSECRET_A\"\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"a b\"]\n", 2),
        // A basic string broken over two lines: its second line was printed as a key.
        ("[accounts.bot]\nusername = \"bot\"\noauth_token = \"oauth:abc123\ndefSECRET456\"\n", 2),
        // A multi-line password with a bad escape on line 2.
        ("[database]\npassword = \"\"\"abc\nde\\qSECRET_B\"\"\"\n", 2),
        ("[database]\npassword = '''abc\nde\\qSECRET_C'''\nbogus = 1\n", 2),
        ("[database]\nurl = \"mysql://u:SECRET_D@h/x\"\n", 2),
    ];
    for (text, want) in cases {
        let (dir, path) = config_dir(text);
        let (code, out, err) = check(dir.path(), &["--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, want, "{text:?}\n{out}\n{err}");
        let all = format!("{out}{err}");
        assert!(!all.contains("SECRET") && !all.contains("abc123") && !all.contains("panicked"), "{text:?}\n{all}");
    }
}

#[test]
fn start_up_with_a_hostile_token_exits_2_without_a_panic_or_the_secret() {
    for text in [
        "[accounts.a]\nusername = \"bot\"\noauth_token = \"oauthéSECRET_A\"\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"a b\"]\n",
        "[accounts.bot]\nusername = \"bot\"\noauth_token = \"oauth:abc123\ndefSECRET456\"\n",
    ] {
        let (dir, path) = config_dir(text);
        let out = logger_cmd(dir.path()).arg("--config").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("SECRET") && !err.contains("abc123") && !err.contains("panicked"), "{err}");
    }
}
