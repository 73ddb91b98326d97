//! Token renewal in the real binary: the fake IRC server, the fake Twitch auth server and a
//! real PostgreSQL. Every test runs the logger at RUST_LOG=trace and checks that its whole
//! output holds no access token, refresh token or client secret.

mod common;
mod fake_auth;

use common::cluster::Cluster;
use common::*;
use fake_auth::{FakeAuth, CLIENT_ID, CLIENT_SECRET};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const BOT: &str = "chatbot";

/// The logger at TRACE, talking to the auth server its file names in `[twitch] auth_url`.
fn logger(path: &Path, db: &str) -> Logger {
    let mut cmd = file_mode(path, db);
    cmd.env("RUST_LOG", "trace").env_remove("TWITCH_AUTH_URL");
    Logger::spawn(cmd)
}

fn assert_no_secret(logger: &Logger, auth: &FakeAuth) {
    let text = logger.log_text();
    assert!(!text.is_empty());
    for secret in auth.secrets().iter().chain([&CLIENT_SECRET.to_string()]) {
        assert!(
            !text.contains(secret.as_str()),
            "a secret ({}…) is in the log",
            secret.chars().take(4).collect::<String>()
        );
    }
}

/// The tokens sent in PASS by `nick`'s connections, oldest first.
fn passes(fake: &FakeTwitch, nick: &str) -> Vec<String> {
    fake.conns()
        .into_iter()
        .filter(|c| c.nick.as_deref() == Some(nick))
        .filter_map(|c| c.pass.and_then(|p| p.strip_prefix("oauth:").map(str::to_string)))
        .collect()
}

fn saved(dir: &Path, account: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{account}.json"))).unwrap()).unwrap()
}

async fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_used_on_the_next_login_persisted_and_used_after_a_restart() {
    let (cluster, fake, auth) = (Cluster::start_new(), FakeTwitch::start().await, FakeAuth::start().await);
    const FIRST: &str = "accfirst0token0expiring0soon";
    const CONFIGURED_REFRESH: &str = "refconfigured0refresh0token0abc";
    auth.add_access(FIRST, BOT, 3);
    auth.add_refresh(CONFIGURED_REFRESH, BOT);
    auth.set_next_expires_in(&[3600]);
    let first_expiry = auth.expiry_of(FIRST).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::write(secrets.path().join("refresh"), CONFIGURED_REFRESH).unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\nauth_url = \"{}\"\ntoken_dir = \"{}\"\n[batch]\nspool_dir = \"{}\"\n\
         [accounts.bot]\nusername = \"{BOT}\"\noauth_token = \"{FIRST}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = \"{}\"\nrefresh_token_file = \"{}\"\n[groups.g]\naccounts = [\"bot\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        auth.url(),
        tokens.path().display(),
        spool.path().display(),
        secrets.path().join("secret").display(),
        secrets.path().join("refresh").display(),
    ));
    let mut run = logger(&path, &cluster.url());
    fake.wait_for("logged in with the configured token", 10 * SEC, |f| f.joined_by(BOT).contains("chan")).await;
    assert_eq!(passes(&fake, BOT), [FIRST]);

    // Renewed ahead of expiry, without any reconnect needing it.
    wait_until("a renewal", 10 * SEC, || auth.hits("token").iter().any(|h| h.status == 200)).await;
    let renewed_at = auth.hits("token")[0].at;
    assert!(renewed_at < first_expiry, "renewed {:?} after expiry", renewed_at - first_expiry);
    let state = tokens.path().join("bot.json");
    wait_until("the renewed token saved", 5 * SEC, || state.exists()).await;
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
    let on_disk = saved(tokens.path(), "bot");
    let (access, refresh) =
        (on_disk["access_token"].as_str().unwrap().to_string(), on_disk["refresh_token"].as_str().unwrap().to_string());
    assert!(auth.is_valid_access(&access) && access != FIRST);
    assert_ne!(refresh, CONFIGURED_REFRESH, "Twitch rotated the refresh token; the new one is kept");

    // The next connection logs in with the new token.
    fake.drop_nick(BOT);
    fake.wait_for("a new login", 10 * SEC, |f| passes(f, BOT).len() == 2 && f.joined_by(BOT).contains("chan")).await;
    assert_eq!(passes(&fake, BOT)[1], access);

    let addr = http_addr(&run).await;
    let (_, m) = get(&addr, "/metrics").await;
    let line = |needle: &str| m.lines().any(|l| l == needle);
    assert!(line("twitch_logger_account_token_refreshes_total{account=\"bot\"} 1"), "{m}");
    assert!(line("twitch_logger_account_token_refresh_failures_total{account=\"bot\"} 0"), "{m}");
    assert!(m.contains("twitch_logger_account_token_expires_in_seconds{account=\"bot\"} 3"), "about an hour: {m}");
    assert_no_secret(&run, &auth);
    run.signal("TERM");
    assert_eq!(run.wait_exit(15 * SEC).await, 0);

    // A restart starts from the saved tokens: the configured refresh token is no longer valid
    // (Twitch rotated it), and the saved access token is revoked, so only the saved refresh
    // token can get the account logged in.
    assert!(!auth.secrets().is_empty());
    auth.revoke(&access);
    let run = logger(&path, &cluster.url());
    wait_until("a renewal with the saved refresh token", 10 * SEC, || {
        auth.hits("token").iter().filter(|h| h.status == 200).count() == 2
    })
    .await;
    assert!(auth.hits("token").iter().all(|h| h.status == 200), "the configured refresh token was not tried");
    run.wait_log("is invalid (revoked or expired); renewing it", 5 * SEC).await;
    wait_until("the newest token saved", 5 * SEC, || saved(tokens.path(), "bot")["access_token"] != access.as_str())
        .await;
    let newest = saved(tokens.path(), "bot")["access_token"].as_str().unwrap().to_string();
    fake.wait_for("logged in after the restart", 10 * SEC, |f| f.joined_by(BOT).contains("chan")).await;
    fake.drop_nick(BOT);
    fake.wait_for("logged in with the newest token", 10 * SEC, |f| passes(f, BOT).last() == Some(&newest)).await;
    assert_no_secret(&run, &auth);
}

#[tokio::test]
async fn a_revoked_token_without_refresh_credentials_stops_only_that_account_with_one_clear_error() {
    let (cluster, fake, auth) = (Cluster::start_new(), FakeTwitch::start().await, FakeAuth::start().await);
    // Known to IRC (the fake accepts any token) but not to the auth server: revoked.
    const REVOKED: &str = "accrevoked0token0000000000001";
    auth.add_access(REVOKED, "revokedbot", 3600);
    auth.revoke(REVOKED);
    let spool = tempfile::tempdir().unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\nauth_url = \"{}\"\n[batch]\nspool_dir = \"{}\"\n[accounts.reader]\n\
         [accounts.bot]\nusername = \"revokedbot\"\noauth_token = \"{REVOKED}\"\n\
         [groups.g]\naccounts = [\"reader\", \"bot\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        auth.url(),
        spool.path().display(),
    ));
    let mut run = logger(&path, &cluster.url());
    run.wait_log("is stopped", 10 * SEC).await;
    fake.wait_for("the revoked account disconnected", 10 * SEC, |f| {
        f.conns().iter().all(|c| !(c.open && c.nick.as_deref() == Some("revokedbot")))
    })
    .await;
    let addr = http_addr(&run).await;
    let (_, m) = get(&addr, "/metrics").await;
    assert!(m.contains("twitch_logger_account_stopped{account=\"bot\"} 1"), "{m}");
    assert!(m.contains("twitch_logger_account_token_last_validation{account=\"bot\",result=\"invalid\"} 1"), "{m}");
    assert!(m.contains("twitch_logger_account_connections{account=\"reader\"} 1"), "the other account goes on: {m}");
    assert!(run.is_running());
    tokio::time::sleep(2 * SEC).await;
    let text = run.log_text();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("account `bot` (user revokedbot) is invalid")
            && errors[0].contains("oauth_token/token_file")
            && errors[0].contains("the other accounts keep running"),
        "{}",
        errors[0]
    );
    assert_no_secret(&run, &auth);
}

#[tokio::test]
async fn a_rejected_login_is_renewed_once_and_logged_in_again() {
    let (cluster, fake, auth) = (Cluster::start_new(), FakeTwitch::start().await, FakeAuth::start().await);
    // Valid at the auth server, refused by IRC (as when Twitch's chat lags its auth).
    const REFUSED: &str = "accrefused0by0irc00000000001";
    const REFRESH: &str = "refrejected0login0refresh0001";
    auth.add_access(REFUSED, BOT, 3600);
    auth.add_refresh(REFRESH, BOT);
    fake.reject_token(REFUSED);
    let tokens = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\nauth_url = \"{}\"\ntoken_dir = \"{}\"\n[batch]\nspool_dir = \"{}\"\n\
         [accounts.bot]\nusername = \"{BOT}\"\noauth_token = \"{REFUSED}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{REFRESH}\"\n[groups.g]\naccounts = [\"bot\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        auth.url(),
        tokens.path().display(),
        spool.path().display(),
    ));
    let run = logger(&path, &cluster.url());
    fake.wait_for("logged in with a renewed token", 15 * SEC, |f| f.joined_by(BOT).contains("chan")).await;
    let sent = passes(&fake, BOT);
    assert_eq!(sent[0], REFUSED);
    assert!(sent.last().is_some_and(|t| t != REFUSED && auth.is_valid_access(t)), "{} logins", sent.len());
    assert_eq!(auth.hits("token").len(), 1, "one renewal");
    run.wait_log("Renewing its token and logging in again once", SEC).await;
    assert!(!run.log_text().contains("ERROR"), "{}", run.log_text());
    assert_no_secret(&run, &auth);
}

#[tokio::test]
async fn a_login_rejected_again_after_renewal_or_a_refused_renewal_stops_only_that_account() {
    let (cluster, fake, auth) = (Cluster::start_new(), FakeTwitch::start().await, FakeAuth::start().await);
    // `again`: IRC refuses every token of its user, renewed or not. `norenew`: IRC refuses its
    // token and the auth server refuses its refresh token. `fine` logs on.
    const AGAIN: &str = "accagain0refused0000000000001";
    const NORENEW: &str = "accnorenew0refused00000000001";
    const FINE: &str = "accfine0token000000000000001";
    auth.add_access(AGAIN, "againbot", 3600);
    auth.add_access(NORENEW, "norenewbot", 3600);
    auth.add_access(FINE, "finebot", 3600);
    auth.add_refresh("refagain00000000000000000001", "againbot");
    auth.add_refresh("reffine000000000000000000001", "finebot");
    fake.reject_nick("againbot");
    fake.reject_token(NORENEW);
    let tokens = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let account = |name: &str, user: &str, token: &str, refresh: &str| {
        format!(
            "[accounts.{name}]\nusername = \"{user}\"\noauth_token = \"{token}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{refresh}\"\n"
        )
    };
    let (_dir, path) = config_dir(&format!(
        "[twitch]\nserver = \"{}\"\nauth_url = \"{}\"\ntoken_dir = \"{}\"\n[batch]\nspool_dir = \"{}\"\n{}{}{}\
         [groups.g]\naccounts = [\"again\", \"norenew\", \"fine\"]\nchannels = [\"chan\"]\n",
        fake.url(),
        auth.url(),
        tokens.path().display(),
        spool.path().display(),
        account("again", "againbot", AGAIN, "refagain00000000000000000001"),
        account("norenew", "norenewbot", NORENEW, "refnorenew0unknown0000000001"),
        account("fine", "finebot", FINE, "reffine000000000000000000001"),
    ));
    let run = logger(&path, &cluster.url());
    fake.wait_for("fine logged in", 10 * SEC, |f| f.joined_by("finebot").contains("chan")).await;
    let addr = http_addr(&run).await;
    let mut m = String::new();
    for _ in 0..100 {
        m = get(&addr, "/metrics").await.1;
        if m.contains("account_stopped{account=\"again\"} 1") && m.contains("account_stopped{account=\"norenew\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(m.contains("twitch_logger_account_stopped{account=\"again\"} 1"), "{m}");
    assert!(m.contains("twitch_logger_account_stopped{account=\"norenew\"} 1"), "{m}");
    assert!(m.contains("twitch_logger_account_stopped{account=\"fine\"} 0"), "{m}");
    assert!(m.contains("twitch_logger_account_token_refresh_failures_total{account=\"norenew\"} 1"), "{m}");
    // Two logins for `again` (the configured token, then the renewed one), one for `norenew`.
    assert_eq!(passes(&fake, "againbot").len(), 2);
    assert_eq!(passes(&fake, "norenewbot").len(), 1);
    tokio::time::sleep(3 * SEC).await;
    assert_eq!(auth.hits("token").len(), 2, "one renewal each for again and norenew, no retry loop");
    assert_eq!(passes(&fake, "againbot").len() + passes(&fake, "norenewbot").len(), 3, "no new login");
    assert!(fake.joined_by("finebot").contains("chan"));
    let text = run.log_text();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("`again`") && e.contains("rejected again with a freshly renewed token")));
    assert!(errors.iter().any(|e| e.contains("`norenew`") && e.contains("Twitch refused to renew the token")));
    assert_no_secret(&run, &auth);
}
