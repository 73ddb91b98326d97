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

#[test]
fn the_example_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let secrets = tempfile::tempdir().unwrap();
    for name in ["pg_password", "mybot", "mybot2", "twitch_token"] {
        std::fs::write(secrets.path().join(name), "oauth:abc\n").unwrap();
    }
    for example in ["multi-account.toml", "docker-secrets.toml"] {
        let text = std::fs::read_to_string(root.join("examples").join(example)).unwrap();
        let (dir, path) = config_dir(&text.replace("/run/secrets", secrets.path().to_str().unwrap()));
        let (code, out, err) = check(dir.path(), &["--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{example}: {err}");
        assert!(out.contains("[redacted]"), "{out}");
    }
    // The env-only example: no file, the variables alone.
    let env_text = std::fs::read_to_string(root.join("examples/env-only.env")).unwrap();
    let env: Vec<(&str, &str)> =
        env_text.lines().filter(|l| !l.starts_with('#') && l.contains('=')).filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.len(), 8, "the original's eight variables");
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = check(empty.path(), &[], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("environment only"), "{out}");
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
