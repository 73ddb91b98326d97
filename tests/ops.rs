//! Running it: health, readiness and metrics over HTTP, JSON logs, the Docker healthcheck
//! command, and the Docker files (checked without a Docker engine).

mod common;

use common::cluster::Cluster;
use common::*;
use std::path::Path;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

/// GETs `path` every 100 ms until `done` holds (5 s at most); returns the last answer.
async fn get_until(addr: &str, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = get(addr, path).await;
        if done(last.0, &last.1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.strip_prefix(name_and_labels).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no metric {name_and_labels} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics_report_what_runs() {
    let (cluster, fake) = (Cluster::start_new(), FakeTwitch::start().await);
    fake.reject_token("bad");
    let spool = tempfile::tempdir().unwrap();
    let (dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[batch]\nflush_interval = \"100ms\"\nspool_dir = \"{}\"\n[accounts.default]\n[accounts.broken]\nusername = \"brokenbot\"\noauth_token = \"bad\"\n[groups.g]\naccounts = [\"default\"]\nchannels = [\"chan\", \"other\"]\n[groups.b]\naccounts = [\"broken\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        spool.path().display()
    ));
    let logger = Logger::spawn(file_mode(&path, &cluster.url()));
    let addr = http_addr(&logger).await;
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by(ANON).len() == 2).await;
    logger.wait_log("rejected the login", 5 * SEC).await;

    for i in 0..3 {
        fake.to_channel("chan", &privmsg("chan", &format!("m-{i}"), "Quin", "hi"));
    }
    fake.to_channel("chan", &privmsg("chan", "m-0", "Quin", "duplicate"));
    // The rejected account is deliberately stopped: it does not make the logger unready.
    let ready = get_until(&addr, "/readyz", |code, _| code == 200).await;
    assert_eq!(ready.0, 200, "{}", ready.1);

    let (_, m) = get_until(&addr, "/metrics", |_, m| {
        m.contains("twitch_logger_messages_stored_total{kind=\"message\"} 3")
            && m.contains("twitch_logger_account_channels_joined{account=\"default\"} 2")
    })
    .await;
    assert_eq!(metric(&m, "twitch_logger_messages_received_total{kind=\"message\"}"), 4.0);
    assert_eq!(metric(&m, "twitch_logger_messages_stored_total{kind=\"message\"}"), 3.0);
    assert_eq!(metric(&m, "twitch_logger_duplicates_skipped_total"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_account_connections{account=\"default\"}"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_account_channels_wanted{account=\"default\"}"), 2.0);
    assert_eq!(metric(&m, "twitch_logger_account_channels_joined{account=\"default\"}"), 2.0);
    assert_eq!(metric(&m, "twitch_logger_account_stopped{account=\"broken\"}"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_account_up{account=\"broken\"}"), 1.0);
    assert_eq!(metric(&m, "twitch_logger_queue_rows"), 0.0);
    assert!(metric(&m, "twitch_logger_batch_flush_seconds_count") >= 1.0);
    assert!(metric(&m, "twitch_logger_last_stored_message_timestamp_seconds") > 1.7e9);
    assert!(!m.contains("channel=\"") && !m.contains("\"chan\""), "no per-channel labels");

    // A reload is counted; an invalid one too.
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("[batch]", "[batch]\nbogus = 1")).unwrap();
    logger.wait_log("config reload rejected", 3 * SEC).await;
    let m = get(&addr, "/metrics").await.1;
    assert_eq!(metric(&m, "twitch_logger_config_reloads_total{result=\"failure\"}"), 1.0);

    // Database down: not ready, still healthy; rows spool.
    cluster.stop();
    fake.to_channel("chan", &privmsg("chan", "m-9", "Quin", "while down"));
    let r = get_until(&addr, "/readyz", |code, _| code == 503).await;
    assert_eq!(r.0, 503);
    assert!(r.1.contains("database unreachable"), "{}", r.1);
    assert_eq!(get(&addr, "/healthz").await.0, 200);

    // The Docker HEALTHCHECK command against this listener.
    let hc = |listen: &str| {
        let mut c = logger_cmd(dir.path());
        c.arg("--config").arg(&path).arg("healthcheck").env("HTTP_LISTEN", listen);
        c.output().unwrap().status.code()
    };
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("bogus = 1\n", "")).unwrap();
    assert_eq!(hc(&addr), Some(0));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert_eq!(hc(&closed), Some(1));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let (db, fake) = (TestDb::new().await, FakeTwitch::start().await);
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\n[log]\nformat = \"json\"\n[accounts.default]\nusername = \"jbot\"\noauth_token = \"jsonsekrit\"\n[groups.g]\naccounts = [\"default\"]\nchannels = [\"chan\"]\n",
        fake.url()
    ));
    let mut cmd = file_mode(&path, &db.url);
    cmd.env("RUST_LOG", "debug");
    let mut logger = Logger::spawn(cmd);
    fake.wait_for("joined", 10 * SEC, |f| f.joined_by("jbot").contains("chan")).await;
    logger.signal("TERM");
    assert_eq!(logger.wait_exit(10 * SEC).await, 0);
    let log = logger.log_text();
    assert!(log.lines().count() > 5);
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
    assert!(!log.contains("jsonsekrit"));
}

#[test]
fn the_compose_file_parses_and_names_what_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).expect("docker-compose.yml is YAML")[0];
    let logger = &doc["services"]["logger"];
    let db = &doc["services"]["db"];
    assert!(!db["healthcheck"]["test"].is_badvalue(), "the database has a healthcheck");
    assert_eq!(logger["depends_on"]["db"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(logger["restart"].as_str(), Some("unless-stopped"));
    assert_eq!(logger["build"].as_str(), Some("."));
    assert!(root.join("Dockerfile").exists());
    let volumes: Vec<&str> = logger["volumes"].as_vec().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let config_mount = volumes.iter().find(|v| v.contains(":/app/config")).expect("config mount");
    assert_eq!(*config_mount, "./config:/app/config:ro", "the directory, read-only");
    assert!(root.join("config/config.toml").exists());
    let env = &logger["environment"];
    // Every variable the dotenv example offers (commented ones included) is read from .env, not
    // fixed in the compose file: `${VAR:-default}`.
    let dotenv = std::fs::read_to_string(root.join("examples/env-only.env")).unwrap();
    let offered: Vec<&str> = dotenv
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(offered.len() >= 9, "the eight variables and TWITCH_IRC_SERVER: {offered:?}");
    for var in offered {
        if var == "METRICS_PORT" {
            // Compose's own: it moves the published port, the logger never sees it.
            let ports = logger["ports"].as_vec().unwrap();
            assert!(ports.iter().any(|p| p.as_str().is_some_and(|p| p.contains("${METRICS_PORT"))), "{ports:?}");
            continue;
        }
        let value = env[var].as_str().unwrap_or_else(|| panic!("{var} is not passed to the logger"));
        assert!(value.starts_with(&format!("${{{var}")), "{var} is fixed to {value:?} instead of read from .env");
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let tag = readme.split("docker build -t ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    assert_eq!(logger["image"].as_str(), Some(tag), "compose names its image as the README's docker build does");
    assert!(readme.contains("METRICS_PORT"), "the README says how to move the published port");
    assert_eq!(env["HTTP_LISTEN"].as_str(), Some("0.0.0.0:8080"));
    let ports: Vec<&str> = logger["ports"].as_vec().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(ports.iter().any(|p| p.ends_with(":8080")), "{ports:?}");

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("healthcheck"));
    assert!(dockerfile.contains("USER "), "runs as a non-root user");
    assert!(readme.contains("cargo build --release --locked"), "the README documents the Dockerfile's build command");
    assert!(dockerfile.contains("cargo build --release --locked"));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target") && ignore.lines().any(|l| l.contains(".env")));
}

#[test]
fn the_systemd_unit_runs_a_real_subcommand_and_outlasts_the_shutdown_flush() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = "deploy/systemd/twitch-chat-logger.service";
    let unit = std::fs::read_to_string(root.join(rel)).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(rel), "the README points at the unit");
    let key = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k}= missing from the unit"))
            .to_string()
    };
    let exec = key("ExecStart");
    assert!(exec.contains("twitch-chat-logger run --config "), "{exec}");
    let stop: u64 = key("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    let default = twitch_chat_logger::config::BatchConfig::default().shutdown_timeout.as_secs();
    assert!(stop > default, "systemd would SIGKILL ({stop}s) before the shutdown flush ends ({default}s)");
    let no_restart = key("RestartPreventExitStatus");
    for code in ["2", "3"] {
        assert!(no_restart.split_whitespace().any(|c| c == code), "exit {code} must not restart-loop");
    }
    assert!(key("ExecReload").contains("-HUP"), "systemctl reload re-reads the config");
}

#[tokio::test]
async fn our_info_lines_survive_a_debug_directive_for_another_target() {
    // Two nested per-layer filters used to drop our INFO lines once a DEBUG directive existed.
    let db = TestDb::new().await;
    let (_dir, path) = config_dir("[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"chan\"]\n");
    let out =
        file_mode(&path, &db.url).env("RUST_LOG", "info,twitch_chat_logger=debug").arg("migrate").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("database ready, schema up to date"), "the INFO line is missing:\n{log}");
}

#[test]
fn in_docker_the_spool_and_the_renewed_tokens_land_on_the_writable_data_volume() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(compose.lines().any(|l| l.trim() == "- spool:/app/data"), "the data volume is mounted read-write");
    assert!(dockerfile.lines().any(|l| l.trim() == "WORKDIR /app") && dockerfile.contains("chown logger /app/data"));
    for default in [twitch_chat_logger::config::DEFAULT_SPOOL_DIR, twitch_chat_logger::config::DEFAULT_TOKEN_DIR] {
        assert!(Path::new(default).starts_with("data"), "{default} resolves inside /app/data");
    }
}

/// The image build compiles every directory a macro reads at compile time (a migration set
/// missing from the image broke `docker build` once: the SQLite migrations).
#[test]
fn the_dockerfile_copies_every_directory_the_build_reads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut read = std::collections::BTreeSet::new();
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("migrate!(\"./").skip(1) {
                    read.insert(part.split(['"', '/']).next().unwrap().to_string());
                }
            }
        }
    }
    assert!(read.len() >= 2, "both migration sets are found: {read:?}");
    for dir in &read {
        assert!(copied.contains(&dir.as_str()), "the Dockerfile does not COPY {dir}/ (the build reads it): {copied:?}");
    }
}
