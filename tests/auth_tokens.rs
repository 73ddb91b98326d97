//! Token refresh and validation (`twitch::auth`) against a fake Twitch OAuth server on
//! 127.0.0.1. Every test captures everything logged at TRACE and every error's Display/Debug,
//! and checks that no access token, refresh token or client secret appears in it.

mod fake_auth;
// The shared fake IRC server, included as is (tests/common/mod.rs also wants a database).
#[path = "common/fake_twitch.rs"]
#[allow(dead_code)]
mod fake_twitch;

use fake_auth::{FakeAuth, Mode, CLIENT_ID, CLIENT_SECRET};
use secrecy::SecretString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twitch_chat_logger::twitch::auth::{
    AuthEndpoint, AuthError, AuthSettings, LastValidation, RefreshCredentials, Timing, TokenManager,
};
use twitch_irc::login::LoginCredentials;

const USER: &str = "chatbot";

/// Everything logged at TRACE on this thread (tests run on a current-thread runtime, so every
/// task's events land here), plus extra text (error renderings) to check for secrets.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    extra: Mutex<String>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn start() -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = BufWriter(buf.clone());
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        // As in main.rs: twitch-irc's TRACE lines echo the IRC wire, PASS included.
        let as_the_binary = tracing_subscriber::filter::filter_fn(|m| {
            !(m.target().starts_with("twitch_irc") && *m.level() == tracing::Level::TRACE)
        });
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || w.clone());
        let sub = tracing_subscriber::registry()
            .with(layer.with_filter(as_the_binary).with_filter(tracing_subscriber::filter::LevelFilter::TRACE));
        Capture { buf, extra: Mutex::new(String::new()), _guard: tracing::subscriber::set_default(sub) }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Records an error's Display, alternate Display and Debug for the leak check.
    fn err(&self, e: &AuthError) {
        let mut x = self.extra.lock().unwrap();
        x.push_str(&format!("{e}\n{e:#}\n{e:?}\n{e:#?}\n"));
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            x.push_str(&format!("{s}\n{s:?}\n"));
            src = s.source();
        }
    }

    fn note(&self, s: &str) {
        self.extra.lock().unwrap().push_str(s);
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// No secret in anything logged or recorded.
    fn assert_no_secret(&self, secrets: &[String]) {
        let all = format!("{}\n{}", self.text(), self.extra.lock().unwrap());
        assert!(!all.is_empty());
        for s in secrets {
            assert!(!all.contains(s.as_str()), "secret `{s}` leaked into the output:\n{all}");
        }
    }
}

fn timing() -> Timing {
    Timing {
        validate_every: Duration::from_secs(3600),
        retry_first: Duration::from_millis(200),
        retry_max: Duration::from_millis(800),
        refresh_ahead: Duration::from_secs(300),
        request_timeout: Duration::from_millis(500),
    }
}

fn settings(fake: &FakeAuth, dir: &Path, token: Option<&str>, refresh: Option<&str>) -> AuthSettings {
    AuthSettings {
        account: "main".into(),
        username: USER.into(),
        token: token.map(|t| SecretString::from(t.to_string())),
        refresh: refresh.map(|r| RefreshCredentials {
            client_id: CLIENT_ID.into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_string()),
            refresh_token: SecretString::from(r.to_string()),
        }),
        endpoint: AuthEndpoint::parse(&fake.url()).unwrap(),
        state_dir: dir.to_path_buf(),
        timing: timing(),
    }
}

async fn token_of(m: &TokenManager) -> String {
    m.get_credentials().await.unwrap().token.unwrap()
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("main.json")
}

fn saved_refresh_token(dir: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state_file(dir)).unwrap()).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_token_that_expires_in_3s_is_refreshed_before_it_expires_and_then_handed_out() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("initialaccesstoken3s", USER, 3);
    fake.add_refresh("initialrefreshtoken0", USER);
    fake.set_next_expires_in(&[3600]);
    let expires = fake.expiry_of("initialaccesstoken3s").unwrap();
    let m = TokenManager::new(settings(&fake, dir.path(), Some("initialaccesstoken3s"), Some("initialrefreshtoken0")))
        .unwrap();
    assert_eq!(token_of(&m).await, "initialaccesstoken3s", "the configured token is used while unexpired");
    let runner = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    wait_for("a refresh", Duration::from_secs(5), || {
        m.stats().refreshes.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let refreshed = fake.hits("token")[0].at;
    assert!(refreshed < expires, "refreshed after the token expired");
    let ahead = expires - refreshed;
    eprintln!("refreshed {} ms before expiry", ahead.as_millis());
    assert!(ahead >= Duration::from_millis(300), "refreshed only {ahead:?} before expiry");
    let new = token_of(&m).await;
    assert_ne!(new, "initialaccesstoken3s");
    assert!(fake.is_valid_access(&new), "get_credentials hands out the new token");
    assert!(m.stats().seconds_until_expiry().unwrap() > 3500);
    assert_eq!(m.stats().last_validation(), LastValidation::Valid);
    // The maintenance task slept through the wait instead of polling (it once spun at 1 ms).
    let wakeups = cap.count("token maintenance sleeps");
    assert!(wakeups <= 5, "{wakeups} wake-ups in 2 s");
    runner.abort();
    cap.note(&format!("{m:?}"));
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn the_rotated_refresh_token_is_persisted_0600_atomically_and_a_restart_uses_it() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("data/tokens");
    fake.add_refresh("configuredrefresh000", USER);
    let m = TokenManager::new(settings(&fake, &state_dir, None, Some("configuredrefresh000"))).unwrap();
    let first = token_of(&m).await;
    assert!(fake.is_valid_access(&first), "with no token, the first one is obtained by refreshing");
    let file = state_file(&state_dir);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let rotated = saved_refresh_token(&state_dir);
    assert_ne!(rotated, "configuredrefresh000", "the rotated refresh token is saved");

    // Atomic replacement: a hard link to the old file keeps the old content (an in-place write
    // would change it), and no temp file is left.
    let link = dir.path().join("old-state-link");
    std::fs::hard_link(&file, &link).unwrap();
    m.force_refresh().await.unwrap();
    let second = token_of(&m).await;
    assert_ne!(second, first);
    assert!(std::fs::read_to_string(&link).unwrap().contains(&rotated), "the old file is untouched");
    assert_ne!(std::fs::metadata(&link).unwrap().ino(), std::fs::metadata(&file).unwrap().ino());
    let rotated_again = saved_refresh_token(&state_dir);
    assert_ne!(rotated_again, rotated);
    let names: Vec<_> = std::fs::read_dir(&state_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("main.json")], "no temp file is left");
    drop(m);

    // "Restart": the configured refresh token is stale now (Twitch rotated it); the saved one is used.
    let token_calls = fake.hits("token").len();
    let restarted = TokenManager::new(settings(&fake, &state_dir, None, Some("configuredrefresh000"))).unwrap();
    assert_eq!(token_of(&restarted).await, second, "the saved access token is preferred");
    assert_eq!(restarted.validate().await.unwrap().login, USER);
    restarted.force_refresh().await.unwrap();
    assert_eq!(fake.hits("token").len(), token_calls + 1);
    assert_eq!(fake.hits("token").last().unwrap().status, 200, "the saved refresh token works after a restart");
    assert!(cap.text().contains("using the saved token state"));
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_revoked_token_with_refresh_credentials_is_renewed_and_still_valid() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("revokedaccesstoken01", USER, 3600);
    fake.add_refresh("goodrefreshtoken0001", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("revokedaccesstoken01"), Some("goodrefreshtoken0001")))
        .unwrap();
    fake.revoke("revokedaccesstoken01");
    let v = m.validate().await.unwrap();
    assert_eq!(v.login, USER);
    let new = token_of(&m).await;
    assert_ne!(new, "revokedaccesstoken01");
    assert!(fake.is_valid_access(&new));
    let statuses: Vec<u16> = fake.hits("validate").iter().map(|h| h.status).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(m.stats().refreshes.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(m.stats().last_validation(), LastValidation::Valid);
    assert!(m.fatal_error().is_none());
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_revoked_token_without_refresh_credentials_is_one_clear_error_that_stops_the_account() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("fixedaccesstoken0001", USER, 3600);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("fixedaccesstoken0001"), None)).unwrap();
    assert_eq!(m.validate().await.unwrap().expires_in.map(|s| s > 3500), Some(true));
    assert!(cap.text().contains("expires in 0h59m and cannot be renewed"), "{}", cap.text());
    fake.revoke("fixedaccesstoken0001");
    let e = tokio::time::timeout(Duration::from_secs(5), m.run()).await.expect("run ends at once on a revoked token");
    cap.err(&e);
    assert!(e.is_fatal());
    let text = e.to_string();
    assert!(text.contains("`main`") && text.contains(USER) && text.contains("oauth_token"), "{text}");
    assert!(text.contains("refresh_token") && text.contains("stopped"), "{text}");
    assert!(matches!(e, AuthError::Revoked { .. }));
    assert_eq!(m.stats().last_validation(), LastValidation::Invalid);
    // A rejected login too: no way to renew, the same kind of clear error.
    let e2 = m.force_refresh().await.unwrap_err();
    cap.err(&e2);
    assert!(e2.is_fatal());
    assert_eq!(cap.count(" ERROR "), 1, "one error logged:\n{}", cap.text());
    assert!(cap.text().contains("is invalid"));
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_rejected_refresh_is_one_clear_error_naming_the_account_with_no_tight_retry_loop() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Twitch no longer knows this refresh token; the fake quotes it back in its message.
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("revokedrefreshtoken1234567890"))).unwrap();
    let runner = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    // twitch-irc calls get_credentials again at once after each failure: it must not spin.
    let started = Instant::now();
    let mut calls = Vec::new();
    while started.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        let r = m.get_credentials().await;
        calls.push(t.elapsed());
        let e = r.unwrap_err();
        cap.err(&e);
        assert!(matches!(e, AuthError::RefreshRejected { .. }), "{e}");
    }
    let e = tokio::time::timeout(Duration::from_secs(1), runner).await.unwrap().unwrap();
    cap.err(&e);
    let text = e.to_string();
    assert!(text.contains("`main`") && text.contains(USER) && text.contains("HTTP 400"), "{text}");
    assert!(text.contains("Invalid refresh token") && text.contains("client_secret"), "{text}");
    let token_calls = fake.hits("token").len();
    eprintln!("token requests in 2 s: {token_calls}; get_credentials returned after {calls:?}");
    assert_eq!(token_calls, 1, "one refresh attempt, no retries");
    assert!(calls.len() <= 4, "get_credentials returned {} times in 2 s", calls.len());
    for c in &calls[1..] {
        assert!(*c >= Duration::from_millis(790), "a fatal error is returned only after retry_max ({c:?})");
    }
    assert_eq!(cap.count(" ERROR "), 1, "one error logged:\n{}", cap.text());
    assert_eq!(m.stats().refresh_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
    let mut secrets = fake.secrets();
    secrets.push("revokedrefreshtoken1234567890".into());
    cap.assert_no_secret(&secrets);
}

#[tokio::test]
async fn a_rejected_saved_refresh_token_falls_back_to_the_configured_one() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_refresh("configuredrefresh111", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh111"))).unwrap();
    token_of(&m).await;
    drop(m);
    // The saved chain died (e.g. the state was restored from an old backup) while the
    // configured refresh token is valid again (re-authorised with the same token).
    fake.revoke_refresh(&saved_refresh_token(dir.path()));
    fake.add_refresh("configuredrefresh111", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh111"))).unwrap();
    m.force_refresh().await.unwrap();
    let statuses: Vec<u16> = fake.hits("token").iter().map(|h| h.status).collect();
    assert_eq!(statuses, [200, 400, 200]);
    assert!(fake.is_valid_access(&token_of(&m).await));
    assert!(m.fatal_error().is_none());
    assert!(cap.text().contains("trying the configured one"), "{}", cap.text());
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn the_auth_server_down_then_back_is_retried_with_spaced_backoff_and_recovers() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("currentaccesstoken01", USER, 3600);
    fake.add_refresh("currentrefreshtoken1", USER);
    fake.set_mode(Mode::Down);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("currentaccesstoken01"), Some("currentrefreshtoken1")))
        .unwrap();
    let runner = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    tokio::time::sleep(Duration::from_millis(2600)).await;
    // Chat logging goes on: the current token is handed out at once during the outage.
    let t = Instant::now();
    assert_eq!(token_of(&m).await, "currentaccesstoken01");
    assert!(t.elapsed() < Duration::from_millis(300), "{:?}", t.elapsed());
    assert_eq!(m.stats().last_validation(), LastValidation::Unreachable);
    let down: Vec<Instant> = fake.hits("validate").iter().map(|h| h.at).collect();
    fake.set_mode(Mode::Up);
    let back = Instant::now();
    wait_for("a valid validation", Duration::from_secs(3), || m.stats().last_validation() == LastValidation::Valid)
        .await;
    let recovered_after = back.elapsed();
    let gaps: Vec<u128> = down.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    eprintln!(
        "tries while down: {}, gaps {gaps:?} ms; recovered {} ms after the server came back",
        down.len(),
        recovered_after.as_millis()
    );
    assert!((3..=6).contains(&down.len()), "{} tries in 2.6 s", down.len());
    let want = [200u128, 400, 800, 800, 800];
    for (g, w) in gaps.iter().zip(want) {
        // Never sooner than the backoff; later only by scheduling delay on a loaded machine.
        assert!(*g + 15 >= w && *g < w + 600, "gap {g} ms, want about {w} ms: {gaps:?}");
    }
    assert!(recovered_after <= Duration::from_millis(2000), "recovered after {recovered_after:?}");
    assert!(!runner.is_finished(), "network failures never stop the account");
    assert!(m.fatal_error().is_none());
    assert!(cap.text().contains("the auth endpoint answers again"));
    runner.abort();
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_hung_or_closed_auth_server_counts_as_down_not_as_an_invalid_token() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("hungaccesstoken00001", USER, 3600);
    fake.set_mode(Mode::Hang);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("hungaccesstoken00001"), None)).unwrap();
    let t = Instant::now();
    let e = m.validate().await.unwrap_err();
    cap.err(&e);
    assert!(
        t.elapsed() >= Duration::from_millis(490) && t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(!e.is_fatal() && e.to_string().contains("no answer within"), "{e}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port();
    drop(listener);
    let mut s = settings(&fake, dir.path(), Some("hungaccesstoken00001"), None);
    s.endpoint = AuthEndpoint::parse(&format!("http://127.0.0.1:{closed}/oauth2")).unwrap();
    let m = TokenManager::new(s).unwrap();
    let e = m.validate().await.unwrap_err();
    cap.err(&e);
    assert!(!e.is_fatal() && e.to_string().contains("cannot connect"), "{e}");
    assert_eq!(token_of(&m).await, "hungaccesstoken00001");
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_token_of_another_login_is_an_error_naming_both_logins() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("someoneelsestoken001", "otheruser", 3600);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("someoneelsestoken001"), None)).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), m.run()).await.unwrap();
    cap.err(&e);
    let text = e.to_string();
    assert!(matches!(e, AuthError::WrongLogin { .. }));
    assert!(text.contains("`otheruser`") && text.contains(&format!("`{USER}`")) && text.contains("`main`"), "{text}");
    assert_eq!(m.stats().last_validation(), LastValidation::WrongLogin);
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_corrupt_or_missing_state_file_falls_back_to_the_configured_refresh_token_with_a_warning() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_refresh("configuredrefresh222", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh222"))).unwrap();
    assert!(cap.text().contains("WARN") && cap.text().contains("no saved token state"), "{}", cap.text());
    let first = token_of(&m).await;
    drop(m);
    // Corrupt: a token-like value in a wrong-typed field must not be quoted by the warning.
    let saved = saved_refresh_token(dir.path());
    std::fs::write(state_file(dir.path()), format!(r#"{{"version":1,"refresh_token":{{"x":"{saved}"}}"#)).unwrap();
    fake.add_refresh("configuredrefresh222", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh222"))).unwrap();
    assert_eq!(cap.count("is corrupt"), 1, "{}", cap.text());
    let second = token_of(&m).await;
    assert_ne!(second, first, "a new token was obtained from the configured refresh token");
    assert_eq!(fake.hits("token").last().unwrap().status, 200);
    // And the state file is whole again.
    assert_ne!(saved_refresh_token(dir.path()), saved);
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn an_unwritable_state_dir_is_reported_once_and_tokens_are_kept_in_memory() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be: fails even for root (chmod does not).
    let blocker = dir.path().join("tokens");
    std::fs::write(&blocker, "").unwrap();
    fake.add_refresh("configuredrefresh333", USER);
    let m = TokenManager::new(settings(&fake, &blocker.join("sub"), None, Some("configuredrefresh333"))).unwrap();
    let first = token_of(&m).await;
    m.force_refresh().await.unwrap();
    let second = token_of(&m).await;
    m.force_refresh().await.unwrap();
    let third = token_of(&m).await;
    assert!(first != second && second != third && fake.is_valid_access(&third));
    assert_eq!(cap.count("cannot save the renewed token"), 1, "said once:\n{}", cap.text());
    assert!(cap.text().contains("in memory"));
    assert_eq!(m.stats().refreshes.load(std::sync::atomic::Ordering::Relaxed), 3);
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_rejected_login_forces_one_refresh_even_from_several_connections() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("rejectedatlogin00001", USER, 3600);
    fake.add_refresh("configuredrefresh444", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("rejectedatlogin00001"), Some("configuredrefresh444")))
        .unwrap();
    let (a, b, c) = tokio::join!(m.force_refresh(), m.force_refresh(), m.force_refresh());
    a.unwrap();
    b.unwrap();
    c.unwrap();
    assert_eq!(fake.hits("token").len(), 1, "three rejected connections, one refresh");
    assert_ne!(token_of(&m).await, "rejectedatlogin00001");
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output_of_settings_or_manager() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&fake, dir.path(), Some("debugaccesstoken0001"), Some("debugrefreshtoken001"));
    cap.note(&format!("{s:?}\n{:?}\n", s.refresh));
    let m = TokenManager::new(s).unwrap();
    cap.note(&format!("{m:?}\n{m:#?}\n"));
    let e = TokenManager::new(AuthSettings { token: None, refresh: None, ..settings(&fake, dir.path(), None, None) })
        .unwrap_err();
    cap.err(&e);
    assert!(e.to_string().contains("has no token"));
    cap.assert_no_secret(&["debugaccesstoken0001".into(), "debugrefreshtoken001".into(), CLIENT_SECRET.into()]);
}

#[tokio::test]
async fn a_changed_refresh_token_in_the_config_wins_over_the_saved_state() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_refresh("oldconfiguredrefresh", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("oldconfiguredrefresh"))).unwrap();
    let old = token_of(&m).await;
    drop(m);
    // The user re-authorised and put a new refresh token in the config.
    fake.add_refresh("newconfiguredrefresh", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("newconfiguredrefresh"))).unwrap();
    assert!(cap.text().contains("changed in the config"), "{}", cap.text());
    let new = token_of(&m).await;
    assert_ne!(new, old, "the saved token of the old chain is not used");
    assert_eq!(fake.hits("token").iter().map(|h| h.status).collect::<Vec<_>>(), [200, 200]);
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_state_file_readable_by_others_is_set_back_to_0600() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_refresh("configuredrefresh555", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh555"))).unwrap();
    let first = token_of(&m).await;
    drop(m);
    let file = state_file(dir.path());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let m = TokenManager::new(settings(&fake, dir.path(), None, Some("configuredrefresh555"))).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(cap.text().contains("had mode 644"), "{}", cap.text());
    assert_eq!(token_of(&m).await, first, "the state is still used");
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_token_without_chat_read_is_warned_about_once() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access_with_scopes("noscopeaccesstoken01", USER, 30 * 86_400, &["user:read:email", "bad scope\nFAKE LOG"]);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("noscopeaccesstoken01"), None)).unwrap();
    let v = m.validate().await.unwrap();
    assert_eq!(v.scopes, ["user:read:email"], "scope-shaped strings only");
    m.validate().await.unwrap();
    assert_eq!(cap.count("lacks the chat:read scope"), 1, "{}", cap.text());
    assert!(!cap.text().contains("FAKE LOG"));
    assert!(!cap.text().contains("cannot be renewed"), "30 days left: no expiry warning yet");
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn the_next_irc_connection_sends_the_renewed_token_as_pass() {
    use twitch_chat_logger::config::ServerAddr;
    use twitch_chat_logger::twitch::transport::{install, PacedTransport, TransportContext};
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let irc = fake_twitch::FakeTwitch::start().await;
    install(TransportContext::new(ServerAddr::parse(&irc.url()).unwrap(), None));
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("wireaccesstoken00003", USER, 3);
    fake.add_refresh("wirerefreshtoken0001", USER);
    fake.set_next_expires_in(&[3600]);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("wireaccesstoken00003"), Some("wirerefreshtoken0001")))
        .unwrap();
    let runner = tokio::spawn({
        let m = m.clone();
        async move { m.run().await }
    });
    let config = twitch_irc::ClientConfig::new_simple(m.clone());
    let (_incoming, client) = twitch_irc::TwitchIRCClient::<PacedTransport, TokenManager>::new(config);
    client.join("somechannel".into()).unwrap();
    let passes = |irc: &fake_twitch::FakeTwitch| irc.conns().iter().filter_map(|c| c.pass.clone()).collect::<Vec<_>>();
    irc.wait_for("the first login", Duration::from_secs(5), |irc| passes(irc).len() == 1).await;
    assert_eq!(passes(&irc), ["oauth:wireaccesstoken00003"]);
    wait_for("a refresh", Duration::from_secs(5), || {
        m.stats().refreshes.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    // Logged-in connections stay; the next one (a dropped connection here) logs in with the new token.
    irc.drop_nick(USER);
    irc.wait_for("a second login", Duration::from_secs(10), |irc| passes(irc).len() == 2).await;
    let new = token_of(&m).await;
    assert_eq!(passes(&irc)[1], format!("oauth:{new}"));
    assert!(fake.is_valid_access(&new));
    runner.abort();
    drop(client);
    cap.assert_no_secret(&fake.secrets());
}

#[tokio::test]
async fn a_revoked_token_is_not_handed_out_while_its_renewal_waits_for_the_server() {
    let cap = Capture::start();
    let fake = FakeAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    fake.add_access("revokedaccesstoken02", USER, 3600);
    fake.add_refresh("configuredrefresh666", USER);
    let m = TokenManager::new(settings(&fake, dir.path(), Some("revokedaccesstoken02"), Some("configuredrefresh666")))
        .unwrap();
    fake.revoke("revokedaccesstoken02");
    fake.set_token_mode(Mode::Down);
    let e = m.validate().await.unwrap_err();
    cap.err(&e);
    assert!(!e.is_fatal(), "{e}");
    let waiting = tokio::time::timeout(Duration::from_millis(300), m.get_credentials()).await;
    assert!(waiting.is_err(), "the revoked token was handed out for a login");
    fake.set_mode(Mode::Up);
    let t = tokio::time::timeout(Duration::from_secs(3), token_of(&m)).await.unwrap();
    assert_ne!(t, "revokedaccesstoken02");
    assert!(fake.is_valid_access(&t));
    cap.assert_no_secret(&fake.secrets());
}
