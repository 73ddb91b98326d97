//! Twitch user access tokens that stay valid for months: refresh ahead of expiry, hourly
//! validation, and the renewed tokens persisted per account (issue #16).
//!
//! [`TokenManager`] is one account's token source. It implements twitch-irc's
//! [`LoginCredentials`], so a client hands it to `ClientConfig::new_simple` instead of
//! `StaticLoginCredentials`. Its [`TokenManager::run`] task validates at start-up and every
//! hour and refreshes ahead of expiry; it returns only when the account must stop (token revoked
//! without refresh credentials, refresh token rejected, token of another login). After Twitch
//! rejects a login, the client calls [`TokenManager::force_refresh`] and retries once.
//!
//! Network failures are never fatal: they are retried with a doubling delay shared by every
//! caller (5 s up to 5 min), while the current token keeps being handed out as long as it has
//! not expired. No secret is ever formatted: tokens live in [`SecretString`]s, and text from the
//! auth server is only quoted after redaction.

use async_trait::async_trait;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use twitch_irc::login::{CredentialsPair, LoginCredentials};

/// Twitch's OAuth base URL, the default of `[twitch] auth_url`.
pub const DEFAULT_AUTH_URL: &str = "https://id.twitch.tv/oauth2";
/// Default directory of the per-account token state files, relative to the working directory.
pub const DEFAULT_TOKEN_DIR: &str = "data/tokens";

/// Largest answer body read from the auth server (Twitch's are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// Largest state file read; anything bigger is corrupt.
const MAX_STATE_FILE: u64 = 64 * 1024;
/// Longest token accepted from the auth server (Twitch's are 30 and 50 characters).
const MAX_TOKEN_LEN: usize = 512;

/// Base URL of the OAuth endpoints (`{base}/token`, `{base}/validate`): `https://` or, for tests
/// and local proxies, `http://`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthEndpoint {
    tls: bool,
    host: String,
    port: u16,
    /// Path prefix without a trailing `/` (`/oauth2`), possibly empty.
    path: String,
}

impl AuthEndpoint {
    /// Twitch's own endpoint, [`DEFAULT_AUTH_URL`].
    pub fn twitch() -> Self {
        Self::parse(DEFAULT_AUTH_URL).expect("the default auth URL parses")
    }

    /// Parses `https://host[:port][/path]` or `http://…`; the error says how to write it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let hint = "write it as https://id.twitch.tv/oauth2 (or http://127.0.0.1:PORT/oauth2 for a local proxy)";
        // Whatever precedes `@` may be a password: never quote it.
        let shown = match raw.rsplit_once('@') {
            Some((_, after)) => format!("…@{after}"),
            None => raw.to_string(),
        };
        let text = shown.as_str();
        let uri: Uri = raw.trim().parse().map_err(|_| format!("`{text}` is not a URL; {hint}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{text}` has no https:// or http:// scheme; {hint}")),
        };
        let authority = uri.authority().ok_or_else(|| format!("`{text}` has no host; {hint}"))?;
        // A user:password@ part would end up in logs; the endpoints need none.
        if authority.as_str().contains('@') {
            return Err(format!("`{text}` carries credentials before `@`; remove them; {hint}"));
        }
        if uri.query().is_some() {
            return Err(format!("`{text}` has a query (`?…`); {hint}"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("`{text}` has no host; {hint}"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(AuthEndpoint { tls, host, port, path })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

impl fmt::Display for AuthEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path)
    }
}

impl fmt::Debug for AuthEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthEndpoint({self})")
    }
}

/// What the logger needs to renew an account's token itself (an app's `client_id` and
/// `client_secret`, and a refresh token from the authorization-code flow).
#[derive(Clone)]
pub struct RefreshCredentials {
    /// The app's client id (public).
    pub client_id: String,
    pub client_secret: SecretString,
    /// The refresh token from the config. A saved, newer one is preferred (Twitch rotates them).
    pub refresh_token: SecretString,
}

impl fmt::Debug for RefreshCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .finish()
    }
}

/// Delays of the token lifecycle; [`Default`] is production, tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Between two successful validations (Twitch asks for hourly).
    pub validate_every: Duration,
    /// First wait after a network failure; doubles up to `retry_max`. Also the shortest gap
    /// between two refreshes, so a server handing out 1-second tokens causes no tight loop.
    pub retry_first: Duration,
    /// Longest wait between two tries.
    pub retry_max: Duration,
    /// Refresh this long before expiry at most (a quarter of the lifetime for short tokens).
    pub refresh_ahead: Duration,
    /// Whole-request timeout (connect, TLS, answer), so a hung server counts as down.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            validate_every: Duration::from_secs(3600),
            retry_first: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            refresh_ahead: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// One logged-in account's token settings, as the config will provide them.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Account name from the config (`[accounts.NAME]`), used in messages and the file name.
    pub account: String,
    /// The login the token must belong to (normalised lowercase).
    pub username: String,
    /// A fixed access token (`oauth_token`/`token_file`, without `oauth:`). Optional when
    /// `refresh` is set: then the first token is obtained by refreshing.
    pub token: Option<SecretString>,
    /// Refresh credentials; without them the token is only validated.
    pub refresh: Option<RefreshCredentials>,
    /// `[twitch] auth_url`.
    pub endpoint: AuthEndpoint,
    /// Where `<account>.json` is kept (default [`DEFAULT_TOKEN_DIR`]).
    pub state_dir: PathBuf,
    /// Delays; [`Timing::default`] outside tests.
    pub timing: Timing,
}

/// The last validation's outcome, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LastValidation {
    /// Not validated yet.
    None = 0,
    /// Twitch confirmed the token.
    Valid = 1,
    /// Twitch answered 401: revoked or expired.
    Invalid = 2,
    /// The token belongs to another login.
    WrongLogin = 3,
    /// The endpoint could not be reached or answered with an error; retried.
    Unreachable = 4,
}

impl LastValidation {
    /// Lowercase label for `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::WrongLogin => "wrong_login",
            Self::Unreachable => "unreachable",
        }
    }
}

/// Counters of one account's token, for `/metrics` (read with `Relaxed`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Expiry in Unix milliseconds; 0 when unknown (see [`AuthStats::seconds_until_expiry`]).
    pub expires_at_ms: AtomicI64,
    /// Successful refreshes.
    pub refreshes: AtomicU64,
    /// Failed refreshes (rejected, unreachable or malformed answer).
    pub refresh_failures: AtomicU64,
    /// Validations done, whatever the outcome.
    pub validations: AtomicU64,
    last_validation: AtomicU8,
}

impl AuthStats {
    /// Seconds until the current token expires (negative once expired); `None` when unknown.
    pub fn seconds_until_expiry(&self) -> Option<i64> {
        match self.expires_at_ms.load(Relaxed) {
            0 => None,
            at => Some((at - now_ms()).div_euclid(1000)),
        }
    }

    /// [`LastValidation::None`] until Twitch's first answer.
    pub fn last_validation(&self) -> LastValidation {
        match self.last_validation.load(Relaxed) {
            1 => LastValidation::Valid,
            2 => LastValidation::Invalid,
            3 => LastValidation::WrongLogin,
            4 => LastValidation::Unreachable,
            _ => LastValidation::None,
        }
    }

    fn set_validation(&self, v: LastValidation) {
        self.validations.fetch_add(1, Relaxed);
        self.last_validation.store(v as u8, Relaxed);
    }
}

/// What Twitch's validate endpoint said about a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// Login the token belongs to.
    pub login: String,
    /// Seconds until expiry; `None` for tokens that do not expire.
    pub expires_in: Option<u64>,
    /// Granted scopes (IRC needs `chat:read`).
    pub scopes: Vec<String>,
}

/// A transport-level failure talking to the auth endpoint. Never fatal; never holds a body.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// HTTP protocol error (connection reset, malformed answer).
    #[error("HTTP error: {0}")]
    Http(#[source] hyper::Error),
    /// Reading the answer failed or it exceeded the size limit.
    #[error("cannot read the answer (or it is larger than {MAX_BODY} bytes)")]
    Body,
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer that is neither success nor a rejection (5xx, 429, …).
    #[error("HTTP {0}")]
    Status(u16),
    /// A success answer without the expected fields (details never quote the body).
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

/// Token errors. [`AuthError::is_fatal`] tells whether the account must stop.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The config gives neither a token nor refresh credentials.
    #[error(
        "account `{account}` (user {username}) has no token: set oauth_token or token_file, or client_id, \
         client_secret and refresh_token so the logger obtains one"
    )]
    NoToken { account: String, username: String },
    /// Validation said 401 and the token cannot be renewed.
    #[error(
        "Twitch says the token of account `{account}` (user {username}) is invalid: it expired or was revoked \
         (password change, disconnected app). {hint} This account is stopped; the other accounts keep running."
    )]
    Revoked { account: String, username: String, hint: &'static str },
    /// Twitch rejected the login and there is nothing to renew the token with.
    #[error(
        "account `{account}` (user {username}) has no refresh credentials, so its rejected token cannot be renewed. \
         {hint} This account is stopped; the other accounts keep running."
    )]
    CannotRenew { account: String, username: String, hint: &'static str },
    /// The token belongs to another Twitch user.
    #[error(
        "the token of account `{account}` belongs to Twitch user `{actual}`, but the account's username is \
         `{configured}`. Set username = \"{actual}\", or use a token of `{configured}`. This account is stopped."
    )]
    WrongLogin { account: String, configured: String, actual: String },
    /// The refresh endpoint refused our refresh token or client credentials (400/401/403).
    #[error(
        "Twitch refused to renew the token of account `{account}` (user {username}): HTTP {status}{message}. \
         Check client_id and client_secret, and create a new refresh token for {username} with that client id \
         (see the README, \"Tokens that renew themselves\"); then reload. This account is stopped; the other \
         accounts keep running."
    )]
    RefreshRejected { account: String, username: String, status: u16, message: String },
    /// Network failure, timeout, 5xx or a malformed answer: retried with backoff.
    #[error(
        "cannot {action} the token of account `{account}` at {endpoint}: {source}. Retrying with backoff; \
         chat logging goes on with the current token"
    )]
    Unreachable {
        account: String,
        action: &'static str,
        endpoint: String,
        #[source]
        source: Arc<HttpError>,
    },
}

impl AuthError {
    /// True when the account must stop (as after a rejected login); false for retried failures.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, AuthError::Unreachable { .. })
    }
}

const NO_REFRESH_HINT: &str =
    "Put a new token for this user in oauth_token/token_file and reload, or configure client_id, \
     client_secret and refresh_token so the logger renews it itself.";

/// One account's token source; cheap to clone (shared state). See the module doc.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    account: String,
    username: String,
    refresh: Option<RefreshCredentials>,
    timing: Timing,
    http: Http,
    tokens: Mutex<Tokens>,
    /// Serialises refreshes so concurrent connections trigger one.
    refresh_lock: tokio::sync::Mutex<()>,
    backoff: Mutex<Backoff>,
    fatal: watch::Sender<Option<AuthError>>,
    changed: Notify,
    store: Option<StateStore>,
    stats: Arc<AuthStats>,
    scope_warned: AtomicBool,
}

struct Tokens {
    access: Option<SecretString>,
    /// The refresh token in use (None without refresh credentials).
    refresh: Option<SecretString>,
    /// The configured refresh token, when a saved one is in use: tried once if Twitch rejects
    /// the saved one.
    fallback: Option<SecretString>,
    obtained_ms: i64,
    expires_ms: Option<i64>,
    last_refresh: Option<Instant>,
    /// Bumped on every new access token.
    generation: u64,
}

struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    not_before: Option<Instant>,
    failing: bool,
}

impl Backoff {
    fn failed(&mut self) -> Duration {
        let wait = self.delay;
        self.not_before = Some(Instant::now() + wait);
        self.delay = (self.delay * 2).min(self.max);
        self.failing = true;
        wait
    }

    /// Resets; returns whether it was failing.
    fn succeeded(&mut self) -> bool {
        self.delay = self.first;
        self.not_before = None;
        std::mem::replace(&mut self.failing, false)
    }

    fn waiting(&self) -> Option<Instant> {
        self.not_before.filter(|t| *t > Instant::now())
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("account", &self.inner.account)
            .field("username", &self.inner.username)
            .field("endpoint", &self.inner.http.endpoint)
            .field("refresh", &self.inner.refresh)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Loads the saved state (refresh credentials only) and prepares the HTTP client. Does no
    /// network I/O; errors only when there is no token at all.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthError> {
        let AuthSettings { account, username, token, refresh, endpoint, state_dir, timing } = settings;
        if token.is_none() && refresh.is_none() {
            return Err(AuthError::NoToken { account, username });
        }
        let mut tokens = Tokens {
            access: token,
            refresh: None,
            fallback: None,
            obtained_ms: now_ms(),
            expires_ms: None,
            last_refresh: None,
            generation: 0,
        };
        let store = refresh.as_ref().map(|r| StateStore::new(&state_dir, &account, r));
        if let (Some(r), Some(store)) = (&refresh, &store) {
            tokens.refresh = Some(r.refresh_token.clone());
            // Without saved state, the configured access token (if any) goes with the
            // configured refresh token.
            if let Some(saved) = store.load(&account, &username) {
                tokens.access = Some(saved.access_token);
                tokens.refresh = Some(saved.refresh_token);
                tokens.fallback = Some(r.refresh_token.clone());
                tokens.obtained_ms = saved.obtained_at_ms;
                tokens.expires_ms = saved.expires_at_ms;
            }
        }
        let stats = Arc::new(AuthStats::default());
        stats.expires_at_ms.store(tokens.expires_ms.unwrap_or(0), Relaxed);
        let (fatal, _) = watch::channel(None);
        Ok(TokenManager {
            inner: Arc::new(Inner {
                http: Http::new(endpoint, timing.request_timeout),
                backoff: Mutex::new(Backoff {
                    first: timing.retry_first,
                    max: timing.retry_max,
                    delay: timing.retry_first,
                    not_before: None,
                    failing: false,
                }),
                account,
                username,
                refresh,
                timing,
                tokens: Mutex::new(tokens),
                refresh_lock: tokio::sync::Mutex::new(()),
                fatal,
                changed: Notify::new(),
                store,
                stats,
                scope_warned: AtomicBool::new(false),
            }),
        })
    }

    /// The login every token is checked against (the account's `username`).
    pub fn username(&self) -> &str {
        &self.inner.username
    }

    /// Whether the token can be renewed (refresh credentials configured).
    pub fn can_refresh(&self) -> bool {
        self.inner.refresh.is_some()
    }

    /// The counters for `/metrics`.
    pub fn stats(&self) -> Arc<AuthStats> {
        self.inner.stats.clone()
    }

    /// The fatal error that stopped this account, if any.
    pub fn fatal_error(&self) -> Option<AuthError> {
        self.inner.fatal.borrow().clone()
    }

    /// Keeps the token valid: validates now and every `validate_every`, refreshes ahead of
    /// expiry, retries failures with backoff. Returns only with a fatal error; the client then
    /// stops the account (as after a rejected login). Cancel-safe: drop it to stop.
    pub async fn run(&self) -> AuthError {
        let inner = &self.inner;
        let mut fatal_rx = inner.fatal.subscribe();
        let mut next_validate = Instant::now();
        loop {
            if let Some(e) = fatal_rx.borrow_and_update().clone() {
                return e;
            }
            let now = Instant::now();
            let backoff_until = inner.backoff.lock().expect("backoff lock").waiting();
            let refresh_in = self.refresh_due_in();
            let refresh_at = refresh_in.map(|d| now + d);
            if backoff_until.is_none() {
                if refresh_in == Some(Duration::ZERO) {
                    let generation = self.generation();
                    let _ = self.refresh_once(generation, "it expires soon").await;
                    continue;
                }
                if next_validate <= now {
                    match self.validate().await {
                        Ok(_) => next_validate = Instant::now() + inner.timing.validate_every,
                        Err(e) if e.is_fatal() => {}
                        Err(_) => next_validate = inner.backoff.lock().expect("backoff lock").waiting().unwrap_or(now),
                    }
                    continue;
                }
            }
            // Re-check at least every minute (wall-clock expiry moves under a suspended host),
            // but nothing before a running backoff ends.
            let due = [Some(next_validate), refresh_at].into_iter().flatten().min().unwrap_or(now);
            let wake = due.min(now + Duration::from_secs(60)).max(backoff_until.unwrap_or(now));
            tracing::trace!(account = %inner.account, wake_in = ?wake.saturating_duration_since(now), refresh_in = ?refresh_at.map(|t| t.saturating_duration_since(now)), "token maintenance sleeps");
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = inner.changed.notified() => {}
                _ = fatal_rx.changed() => {}
            }
        }
    }

    /// Validates the current token once at `{base}/validate` and acts on the outcome: a 401
    /// with refresh credentials refreshes and validates the new token; a 401 without them or a
    /// token of another login is fatal (and ends [`TokenManager::run`]).
    pub async fn validate(&self) -> Result<Validation, AuthError> {
        let inner = &self.inner;
        for attempt in 0..2 {
            let (access, generation) = match self.current() {
                (Some(a), g) => (a, g),
                (None, g) => {
                    self.refresh_once(g, "there is no access token yet").await?;
                    continue;
                }
            };
            let Ok(mut auth) = http::HeaderValue::from_str(&format!("OAuth {}", access.expose_secret())) else {
                inner.stats.set_validation(LastValidation::Unreachable);
                let e = HttpError::Malformed("the access token has characters an HTTP header cannot carry".into());
                return Err(self.transient("validate", e));
            };
            auth.set_sensitive(true);
            let mut req = Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = inner.http.uri("/validate");
            req.headers_mut().insert(http::header::AUTHORIZATION, auth);
            let answer = inner.http.send(req).await;
            match answer {
                Ok((StatusCode::OK, body)) => {
                    let v = match parse_validation(&body) {
                        Ok(v) => v,
                        Err(e) => {
                            inner.stats.set_validation(LastValidation::Unreachable);
                            return Err(self.transient("validate", e));
                        }
                    };
                    if !v.login.eq_ignore_ascii_case(&inner.username) {
                        inner.stats.set_validation(LastValidation::WrongLogin);
                        return Err(self.set_fatal(AuthError::WrongLogin {
                            account: inner.account.clone(),
                            configured: inner.username.clone(),
                            actual: v.login,
                        }));
                    }
                    inner.stats.set_validation(LastValidation::Valid);
                    self.recovered();
                    {
                        let mut t = inner.tokens.lock().expect("tokens lock");
                        if t.generation == generation {
                            t.expires_ms = v.expires_in.map(|s| now_ms().saturating_add(secs_to_ms(s)));
                            inner.stats.expires_at_ms.store(t.expires_ms.unwrap_or(0), Relaxed);
                        }
                    }
                    if !v.scopes.iter().any(|s| s == "chat:read") && !inner.scope_warned.swap(true, Relaxed) {
                        tracing::warn!(account = %inner.account,
                            "the token of account `{}` lacks the chat:read scope (it has: {}); Twitch may refuse its IRC login. \
                             Create a token with chat:read.", inner.account, v.scopes.join(" "));
                    }
                    if let (None, Some(left)) = (&inner.refresh, v.expires_in.filter(|s| *s < 86_400)) {
                        tracing::warn!(account = %inner.account,
                            "the token of account `{}` expires in {}h{:02}m and cannot be renewed (no client_id, client_secret \
                             and refresh_token): put a new token in oauth_token/token_file before then, or configure them.",
                            inner.account, left / 3600, left % 3600 / 60);
                    }
                    tracing::debug!(account = %inner.account, login = %v.login, expires_in = ?v.expires_in, "token validated");
                    return Ok(v);
                }
                Ok((StatusCode::UNAUTHORIZED, _)) => {
                    inner.stats.set_validation(LastValidation::Invalid);
                    self.recovered();
                    if inner.refresh.is_some() && attempt == 0 {
                        // Not handed out again: get_credentials now waits for the renewal.
                        {
                            let mut t = inner.tokens.lock().expect("tokens lock");
                            if t.generation == generation {
                                t.expires_ms = Some(now_ms());
                                inner.stats.expires_at_ms.store(now_ms(), Relaxed);
                            }
                        }
                        tracing::warn!(account = %inner.account,
                            "Twitch says the token of account `{}` is invalid (revoked or expired); renewing it", inner.account);
                        self.refresh_once(generation, "Twitch says it is invalid").await?;
                        continue;
                    }
                    let hint = if inner.refresh.is_some() {
                        "Even a freshly renewed token is refused: create a new refresh token for this user (see the README) and reload."
                    } else {
                        NO_REFRESH_HINT
                    };
                    return Err(self.set_fatal(AuthError::Revoked {
                        account: inner.account.clone(),
                        username: inner.username.clone(),
                        hint,
                    }));
                }
                Ok((status, _)) => {
                    inner.stats.set_validation(LastValidation::Unreachable);
                    return Err(self.transient("validate", HttpError::Status(status.as_u16())));
                }
                Err(e) => {
                    inner.stats.set_validation(LastValidation::Unreachable);
                    return Err(self.transient("validate", e));
                }
            }
        }
        // Only if a renewal "succeeded" without leaving a token, which install() rules out.
        Err(self.transient("validate", HttpError::Malformed("no access token after renewing it".into())))
    }

    /// Renews the token after Twitch rejected a login with it, waiting out network failures;
    /// the client then retries the login once. Several connections rejected together cause one
    /// refresh. Without refresh credentials this is the fatal [`AuthError::CannotRenew`].
    pub async fn force_refresh(&self) -> Result<(), AuthError> {
        let inner = &self.inner;
        if inner.refresh.is_none() {
            return Err(self.set_fatal(AuthError::CannotRenew {
                account: inner.account.clone(),
                username: inner.username.clone(),
                hint: NO_REFRESH_HINT,
            }));
        }
        let generation = self.generation();
        loop {
            match self.refresh_once(generation, "Twitch rejected a login with it").await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(e),
                Err(_) => self.wait_backoff().await,
            }
        }
    }

    fn current(&self) -> (Option<SecretString>, u64) {
        let t = self.inner.tokens.lock().expect("tokens lock");
        (t.access.clone(), t.generation)
    }

    fn generation(&self) -> u64 {
        self.inner.tokens.lock().expect("tokens lock").generation
    }

    /// How long until the next refresh is due (zero: now); refresh credentials and a known
    /// expiry only. Computed in whole wall-clock milliseconds, so "due" cannot recede by
    /// sub-millisecond rounding and spin the caller.
    fn refresh_due_in(&self) -> Option<Duration> {
        self.inner.refresh.as_ref()?;
        let t = self.inner.tokens.lock().expect("tokens lock");
        if t.access.is_none() {
            return Some(Duration::ZERO);
        }
        let expires = t.expires_ms?;
        let lifetime = (expires - t.obtained_ms).max(0);
        let ahead = (self.inner.timing.refresh_ahead.as_millis() as i64).min(lifetime / 4);
        let mut due = Duration::from_millis((expires - ahead - now_ms()).max(0) as u64);
        if let Some(last) = t.last_refresh {
            due = due.max((last + self.inner.timing.retry_first).saturating_duration_since(Instant::now()));
        }
        Some(due)
    }

    /// Whether the current token may still be used (present and not known to be expired).
    fn usable(&self) -> Option<SecretString> {
        let t = self.inner.tokens.lock().expect("tokens lock");
        match t.expires_ms {
            Some(e) if e <= now_ms() => None,
            _ => t.access.clone(),
        }
    }

    async fn wait_backoff(&self) {
        let until = self.inner.backoff.lock().expect("backoff lock").waiting();
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    /// One refresh, unless the token changed since `seen` (someone else refreshed). Waits out a
    /// running backoff first.
    async fn refresh_once(&self, seen: u64, why: &str) -> Result<(), AuthError> {
        let inner = &self.inner;
        let creds = inner.refresh.as_ref().expect("refresh_once needs refresh credentials");
        let _guard = inner.refresh_lock.lock().await;
        if let Some(e) = self.fatal_error() {
            return Err(e);
        }
        if self.generation() != seen {
            return Ok(());
        }
        self.wait_backoff().await;
        let refresh = inner.tokens.lock().expect("tokens lock").refresh.clone().expect("refresh token");
        tracing::info!(account = %inner.account, "renewing the access token of account `{}`: {why}", inner.account);
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &creds.client_id)
            .append_pair("client_secret", creds.client_secret.expose_secret())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh.expose_secret())
            .finish();
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = inner.http.uri("/token");
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-www-form-urlencoded"));
        let answer = inner.http.send(req).await;
        let fail = |stats: &AuthStats| stats.refresh_failures.fetch_add(1, Relaxed);
        match answer {
            Ok((StatusCode::OK, body)) => match parse_token_answer(&body) {
                Ok(a) => {
                    self.recovered();
                    self.install(a, refresh);
                    Ok(())
                }
                Err(e) => {
                    fail(&inner.stats);
                    Err(self.transient("renew", e))
                }
            },
            Ok((status @ (StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), body)) => {
                fail(&inner.stats);
                self.recovered();
                let fallback = inner.tokens.lock().expect("tokens lock").fallback.take();
                if let Some(configured) = fallback.filter(|c| c.expose_secret() != refresh.expose_secret()) {
                    tracing::warn!(account = %inner.account,
                        "Twitch refused the saved refresh token of account `{}`; trying the configured one", inner.account);
                    inner.tokens.lock().expect("tokens lock").refresh = Some(configured);
                    drop(_guard);
                    return Box::pin(self.refresh_once(seen, why)).await;
                }
                let secrets = [refresh.expose_secret(), creds.client_secret.expose_secret()];
                let message = server_message(&body, &secrets);
                Err(self.set_fatal(AuthError::RefreshRejected {
                    account: inner.account.clone(),
                    username: inner.username.clone(),
                    status: status.as_u16(),
                    message: if message.is_empty() { String::new() } else { format!(" \"{message}\"") },
                }))
            }
            Ok((status, _)) => {
                fail(&inner.stats);
                Err(self.transient("renew", HttpError::Status(status.as_u16())))
            }
            Err(e) => {
                fail(&inner.stats);
                Err(self.transient("renew", e))
            }
        }
    }

    /// Takes a new token pair into use, persists it and wakes `run`.
    fn install(&self, a: TokenAnswer, old_refresh: SecretString) {
        let inner = &self.inner;
        let now = now_ms();
        let (refresh, expires_ms, obtained_ms) = {
            let mut t = inner.tokens.lock().expect("tokens lock");
            t.access = Some(a.access_token);
            // Twitch always sends one; keep the old one if a proxy does not.
            t.refresh = Some(a.refresh_token.unwrap_or(old_refresh));
            t.obtained_ms = now;
            t.expires_ms = a.expires_in.map(|s| now.saturating_add(secs_to_ms(s)));
            t.last_refresh = Some(Instant::now());
            t.generation += 1;
            (t.refresh.clone(), t.expires_ms, t.obtained_ms)
        };
        inner.stats.refreshes.fetch_add(1, Relaxed);
        inner.stats.expires_at_ms.store(expires_ms.unwrap_or(0), Relaxed);
        tracing::info!(account = %inner.account, expires_in = ?a.expires_in,
            "renewed the access token of account `{}`", inner.account);
        if let (Some(store), Some(refresh)) = (&inner.store, refresh) {
            let access = inner.tokens.lock().expect("tokens lock").access.clone().expect("just set");
            store.save(&inner.account, &inner.username, &access, &refresh, obtained_ms, expires_ms);
        }
        inner.changed.notify_waiters();
    }

    fn transient(&self, action: &'static str, e: HttpError) -> AuthError {
        let inner = &self.inner;
        let wait = inner.backoff.lock().expect("backoff lock").failed();
        let err = AuthError::Unreachable {
            account: inner.account.clone(),
            action,
            endpoint: inner.http.endpoint.to_string(),
            source: Arc::new(e),
        };
        tracing::warn!(account = %inner.account, "{err}; next try in {}s", wait.as_secs_f32());
        err
    }

    fn recovered(&self) {
        if self.inner.backoff.lock().expect("backoff lock").succeeded() {
            tracing::info!(account = %self.inner.account, "the auth endpoint answers again");
        }
    }

    fn set_fatal(&self, e: AuthError) -> AuthError {
        let first = self.inner.fatal.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(e.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::error!(account = %self.inner.account, "{e}");
        }
        e
    }
}

#[async_trait]
impl LoginCredentials for TokenManager {
    type Error = AuthError;

    /// A token for the next login: refreshed first when due. Never fails fast (twitch-irc
    /// reconnects at once after a failure): network failures are waited out while no usable
    /// token exists, and after a fatal error it returns that error only after `retry_max`.
    async fn get_credentials(&self) -> Result<CredentialsPair, AuthError> {
        loop {
            if let Some(e) = self.fatal_error() {
                tokio::time::sleep(self.inner.timing.retry_max).await;
                return Err(e);
            }
            let due = self.refresh_due_in() == Some(Duration::ZERO);
            if due {
                let usable = self.usable();
                let backing_off = self.inner.backoff.lock().expect("backoff lock").waiting().is_some();
                if let (Some(token), true) = (&usable, backing_off) {
                    return Ok(self.pair(token));
                }
                match self.refresh_once(self.generation(), "it expires soon").await {
                    Ok(()) => {}
                    Err(e) if e.is_fatal() => {}
                    Err(_) => {
                        if let Some(token) = usable.filter(|_| self.usable().is_some()) {
                            return Ok(self.pair(&token));
                        }
                    }
                }
                continue;
            }
            // `new` guarantees a token or refresh credentials (then `due` above covers "none").
            return match self.current().0 {
                Some(token) => Ok(self.pair(&token)),
                None => Err(AuthError::NoToken {
                    account: self.inner.account.clone(),
                    username: self.inner.username.clone(),
                }),
            };
        }
    }
}

impl TokenManager {
    fn pair(&self, token: &SecretString) -> CredentialsPair {
        CredentialsPair { login: self.inner.username.clone(), token: Some(token.expose_secret().to_string()) }
    }
}

// ---- answers ----

struct TokenAnswer {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    expires_in: Option<u64>,
}

/// Parses `POST /token`'s answer; errors name the field, never a value.
fn parse_token_answer(body: &[u8]) -> Result<TokenAnswer, HttpError> {
    #[derive(Deserialize)]
    struct Raw {
        access_token: Option<SecretString>,
        refresh_token: Option<SecretString>,
        expires_in: Option<serde_json::Value>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| HttpError::Malformed(json_problem("the token answer", &e)))?;
    let access = raw.access_token.ok_or_else(|| HttpError::Malformed("the token answer has no access_token".into()))?;
    check_token_shape(&access, "access_token")?;
    if let Some(r) = &raw.refresh_token {
        check_token_shape(r, "refresh_token")?;
    }
    Ok(TokenAnswer { access_token: access, refresh_token: raw.refresh_token, expires_in: expires(raw.expires_in)? })
}

/// Parses `GET /validate`'s answer.
fn parse_validation(body: &[u8]) -> Result<Validation, HttpError> {
    #[derive(Deserialize)]
    struct Raw {
        login: Option<String>,
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        scopes: Option<Vec<String>>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| HttpError::Malformed(json_problem("the validate answer", &e)))?;
    let login = raw.login.ok_or_else(|| HttpError::Malformed("the validate answer has no login".into()))?;
    let login = crate::config::login::normalize_login(&login)
        .map_err(|_| HttpError::Malformed("the validate answer's login is not a Twitch login".into()))?;
    // Scopes end up in a log line: keep only scope-shaped ones.
    let scopes = raw
        .scopes
        .unwrap_or_default()
        .into_iter()
        .filter(|s| (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c)))
        .take(64)
        .collect();
    Ok(Validation { login, expires_in: expires(raw.expires_in)?, scopes })
}

/// `expires_in` seconds; absent or 0 (Twitch's "does not expire") is `None`.
fn expires(v: Option<serde_json::Value>) -> Result<Option<u64>, HttpError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(s) => Ok(Some(s)),
            None => Err(HttpError::Malformed("expires_in is not a whole number of seconds".into())),
        },
    }
}

/// A token goes into `PASS oauth:…` on the IRC wire: no spaces, controls or absurd lengths.
fn check_token_shape(t: &SecretString, field: &str) -> Result<(), HttpError> {
    let s = t.expose_secret();
    if s.is_empty() || s.chars().count() > MAX_TOKEN_LEN || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HttpError::Malformed(format!(
            "{field} is empty, too long or contains spaces or control characters"
        )));
    }
    Ok(())
}

/// Describes a JSON error by kind and position only: serde's own messages quote values.
fn json_problem(what: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "cannot be read",
        Category::Syntax => "is not valid JSON",
        Category::Data => "has a field of the wrong type",
        Category::Eof => "is cut short",
    };
    format!("{what} {kind} (line {}, column {})", e.line(), e.column())
}

/// The `message` of an error answer, safe to log: known secrets replaced, long words (which
/// could be a part of a token) dropped, controls removed, at most 120 characters.
fn server_message(body: &[u8], secrets: &[&str]) -> String {
    #[derive(Deserialize)]
    struct Raw {
        message: Option<String>,
    }
    let Some(mut m) = serde_json::from_slice::<Raw>(body).ok().and_then(|r| r.message) else {
        return String::new();
    };
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        m = m.replace(s, "[redacted]");
    }
    let words: Vec<&str> = m.split_whitespace().map(|w| if w.chars().count() > 24 { "[…]" } else { w }).collect();
    words.join(" ").chars().filter(|c| !c.is_control()).take(120).collect()
}

// ---- state file ----

/// The saved token pair of one account: `<dir>/<account>.json`, mode 0600, replaced atomically.
struct StateStore {
    dir: PathBuf,
    path: PathBuf,
    /// Fingerprint of the configured client id + refresh token the saved chain started from: a
    /// changed config (new refresh token) wins over the saved state.
    seed: String,
    write_failed: AtomicBool,
}

#[derive(Serialize)]
struct OnDisk<'a> {
    version: u32,
    account: &'a str,
    login: &'a str,
    seed: &'a str,
    access_token: &'a str,
    refresh_token: &'a str,
    obtained_at_ms: i64,
    expires_at_ms: Option<i64>,
}

#[derive(Deserialize)]
struct FromDisk {
    version: u32,
    login: String,
    seed: String,
    access_token: SecretString,
    refresh_token: SecretString,
    obtained_at_ms: i64,
    expires_at_ms: Option<i64>,
}

impl StateStore {
    fn new(dir: &Path, account: &str, creds: &RefreshCredentials) -> Self {
        let file: String =
            account.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(creds.client_id.as_bytes());
        ctx.update(b"\0");
        ctx.update(creds.refresh_token.expose_secret().as_bytes());
        let seed = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        StateStore {
            dir: dir.to_path_buf(),
            path: dir.join(format!("{file}.json")),
            seed,
            write_failed: AtomicBool::new(false),
        }
    }

    /// The saved state if it is usable; otherwise says why (warning) and returns `None`.
    fn load(&self, account: &str, username: &str) -> Option<FromDisk> {
        let path = self.path.display();
        let fallback = "using the configured refresh_token";
        let text = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(account = %account,
                    "no saved token state at `{path}` (normal on the first start; otherwise it was lost): {fallback}");
                return None;
            }
            Ok(m) if m.len() > MAX_STATE_FILE => {
                tracing::warn!(account = %account, "the token state `{path}` is corrupt ({} bytes): {fallback}", m.len());
                return None;
            }
            _ => match std::fs::read(&self.path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(account = %account, "cannot read the token state `{path}`: {e}; {fallback}");
                    return None;
                }
            },
        };
        self.tighten_mode(account);
        let saved: FromDisk = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(account = %account,
                    "the token state `{path}` is corrupt: {}; {fallback}", json_problem("it", &e));
                return None;
            }
        };
        if saved.version != 1 {
            tracing::warn!(account = %account, "the token state `{path}` has unknown version {}; {fallback}", saved.version);
            return None;
        }
        if saved.seed != self.seed {
            tracing::info!(account = %account,
                "client_id or refresh_token changed in the config since `{path}` was saved: {fallback}");
            return None;
        }
        if !saved.login.eq_ignore_ascii_case(username) {
            tracing::info!(account = %account,
                "`{path}` holds a token of user {} but the username is {username}: {fallback}", saved.login);
            return None;
        }
        if check_token_shape(&saved.access_token, "access_token").is_err()
            || check_token_shape(&saved.refresh_token, "refresh_token").is_err()
        {
            tracing::warn!(account = %account, "the token state `{path}` is corrupt (a malformed token): {fallback}");
            return None;
        }
        tracing::info!(account = %account, "using the saved token state `{path}`");
        Some(saved)
    }

    /// A state file others may read (restored from a backup, copied by hand) goes back to 0600.
    fn tighten_mode(&self, account: &str) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(&self.path) else { return };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let fixed = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
            tracing::warn!(account = %account, "the token state `{}` had mode {mode:o}, readable by other users: {}",
                self.path.display(), match fixed { Ok(()) => "set it to 600".to_string(),
                    Err(e) => format!("cannot set it to 600 ({e}); do it by hand") });
        }
    }

    /// Writes the state atomically; on failure says so once and goes on in memory.
    fn save(
        &self,
        account: &str,
        login: &str,
        access: &SecretString,
        refresh: &SecretString,
        obtained_at_ms: i64,
        expires_at_ms: Option<i64>,
    ) {
        let on_disk = OnDisk {
            version: 1,
            account,
            login,
            seed: &self.seed,
            access_token: access.expose_secret(),
            refresh_token: refresh.expose_secret(),
            obtained_at_ms,
            expires_at_ms,
        };
        let json = serde_json::to_vec_pretty(&on_disk).expect("plain struct serialises");
        match self.write_atomically(&json) {
            Ok(()) => {
                if self.write_failed.swap(false, Relaxed) {
                    tracing::info!(account = %account, "token state `{}` is written again", self.path.display());
                }
                tracing::debug!(account = %account, "saved the token state to `{}`", self.path.display());
            }
            Err(e) => {
                if !self.write_failed.swap(true, Relaxed) {
                    tracing::error!(account = %account,
                        "cannot save the renewed token of account `{account}` to `{}`: {e}. Going on with it in memory; \
                         after a restart the logger falls back to the configured refresh_token, which Twitch may have \
                         replaced by then. Make `{}` writable by this user (e.g. a volume, not a read-only mount).",
                        self.path.display(), self.dir.display());
                }
            }
        }
    }

    fn write_atomically(&self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let tmp = self.path.with_extension("json.tmp");
        // A leftover temp file could carry wider permissions; `mode` applies only on creation.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let result = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

// ---- HTTP ----

/// One-shot HTTP/1.1 requests (a connection per request: a few per hour).
struct Http {
    endpoint: AuthEndpoint,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

impl Http {
    fn new(endpoint: AuthEndpoint, timeout: Duration) -> Self {
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let tls = endpoint.tls.then(|| {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let config =
                ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Http { endpoint, timeout, tls }
    }

    fn uri(&self, tail: &str) -> Uri {
        // The path came out of a parsed URI, so it stays one.
        format!("{}{tail}", self.endpoint.path).parse().expect("a parsed path plus a fixed tail is a URI")
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), HttpError> {
        tokio::time::timeout(self.timeout, self.send_inner(req)).await.map_err(|_| HttpError::Timeout(self.timeout))?
    }

    async fn send_inner(&self, mut req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), HttpError> {
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port)).await.map_err(HttpError::Connect)?;
        let io: Box<dyn Socket> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|err| HttpError::Tls(std::io::Error::other(err)))?;
                Box::new(tls.connect(name, tcp).await.map_err(HttpError::Tls)?)
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(HttpError::Http)?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        req.headers_mut().insert(http::header::HOST, e.host_header().parse().expect("host is a valid header"));
        let resp = sender.send_request(req).await.map_err(HttpError::Http)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|_| HttpError::Body)?.to_bytes();
        drop(conn);
        Ok((status, body))
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn secs_to_ms(s: u64) -> i64 {
    // Ten years at most: a bigger `expires_in` is nonsense, and must not overflow.
    (s.min(10 * 365 * 86_400) * 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_parse_with_default_ports_and_paths() {
        let t = AuthEndpoint::twitch();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (true, "id.twitch.tv", 443, "/oauth2"));
        assert_eq!(t.to_string(), DEFAULT_AUTH_URL);
        let local = AuthEndpoint::parse("http://127.0.0.1:8081/oauth2/").unwrap();
        assert_eq!((local.tls, local.port, local.path.as_str()), (false, 8081, "/oauth2"));
        assert_eq!(local.to_string(), "http://127.0.0.1:8081/oauth2");
        assert_eq!(AuthEndpoint::parse("http://localhost").unwrap().path, "");
    }

    #[test]
    fn auth_urls_without_scheme_or_with_credentials_are_refused_without_quoting_the_password() {
        assert!(AuthEndpoint::parse("id.twitch.tv/oauth2").unwrap_err().contains("https://"));
        assert!(AuthEndpoint::parse("ftp://x/y").is_err());
        let e = AuthEndpoint::parse("https://user:hunter2@id.twitch.tv/oauth2").unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("credentials"), "{e}");
        let e = AuthEndpoint::parse("htps:/user:hunter2@bad host").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(AuthEndpoint::parse("https://id.twitch.tv/oauth2?x=1").is_err());
    }

    #[test]
    fn server_messages_are_quoted_without_secrets_or_token_like_words() {
        let body = br#"{"status":400,"message":"Invalid refresh token rt_secret_value_1234 and abcdefghijklmnopqrstuvwxyz0123"}"#;
        let m = server_message(body, &["rt_secret_value_1234"]);
        assert_eq!(m, "Invalid refresh token [redacted] and [\u{2026}]");
        assert_eq!(server_message(b"not json rt_secret", &["rt_secret"]), "");
        let long = format!(r#"{{"message":"{}"}}"#, "ab ".repeat(100));
        assert_eq!(server_message(long.as_bytes(), &[]).chars().count(), 120);
    }

    #[test]
    fn malformed_token_answers_are_described_without_quoting_values() {
        let e = parse_token_answer(br#"{"access_token":"tok with space","refresh_token":"r"}"#).err().unwrap();
        assert!(!e.to_string().contains("tok with space"), "{e}");
        let e = parse_token_answer(br#"{"access_token":"ok","expires_in":"SECRETVALUE"}"#).err().unwrap();
        assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
        let e = parse_token_answer(br#"{"access_token":5,"refresh_token":"SECRETVALUE"}"#).err().unwrap();
        assert!(e.to_string().contains("wrong type") && !e.to_string().contains("SECRETVALUE"), "{e}");
        let a = parse_token_answer(br#"{"access_token":"a1","refresh_token":"r1","expires_in":0}"#).ok().unwrap();
        assert_eq!(a.expires_in, None, "0 means a token that does not expire");
        let crlf = parse_token_answer(b"{\"access_token\":\"a\\r\\nJOIN #x\"}").err().unwrap();
        assert!(crlf.to_string().contains("control"), "{crlf}");
    }

    fn manager_with(lifetime_ms: i64, left_ms: i64, refreshed_ago: Option<Duration>) -> TokenManager {
        let m = TokenManager::new(AuthSettings {
            account: "a".into(),
            username: "bot".into(),
            token: None,
            refresh: Some(RefreshCredentials {
                client_id: "id".into(),
                client_secret: SecretString::from("s".to_string()),
                refresh_token: SecretString::from("r".to_string()),
            }),
            endpoint: AuthEndpoint::parse("http://127.0.0.1:9/oauth2").unwrap(),
            state_dir: std::env::temp_dir().join("tcl-auth-unit-never-written"),
            timing: Timing::default(),
        })
        .unwrap();
        {
            let mut t = m.inner.tokens.lock().unwrap();
            t.access = Some(SecretString::from("t".to_string()));
            let now = now_ms();
            t.expires_ms = Some(now + left_ms);
            t.obtained_ms = now + left_ms - lifetime_ms;
            t.last_refresh = refreshed_ago.map(|d| Instant::now() - d);
        }
        m
    }

    fn due_secs(m: &TokenManager) -> u64 {
        m.refresh_due_in().unwrap().as_millis().div_ceil(1000) as u64
    }

    #[tokio::test]
    async fn refresh_is_due_five_minutes_early_for_long_tokens_and_a_quarter_early_for_short_ones() {
        // A 4-hour token with 3 hours left: due 5 minutes before expiry.
        assert_eq!(due_secs(&manager_with(4 * 3_600_000, 3 * 3_600_000, None)), 3 * 3600 - 300);
        // A 60-second token with 60 s left: due after 45 s.
        assert_eq!(due_secs(&manager_with(60_000, 60_000, None)), 45);
        // Past due: now.
        assert_eq!(manager_with(60_000, 1_000, None).refresh_due_in(), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn tokens_that_expire_at_once_are_not_refreshed_more_often_than_retry_first() {
        // A server handing out 1-second tokens, refreshed 1 s ago: the next is due 4 s later.
        let m = manager_with(1_000, 0, Some(Duration::from_secs(1)));
        assert_eq!(due_secs(&m), 4);
        assert!(!std::env::temp_dir().join("tcl-auth-unit-never-written").exists());
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_resets_on_success() {
        let mut b = Backoff {
            first: Duration::from_secs(5),
            max: Duration::from_secs(300),
            delay: Duration::from_secs(5),
            not_before: None,
            failing: false,
        };
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert!(b.succeeded());
        assert_eq!(b.failed().as_secs(), 5);
    }
}
