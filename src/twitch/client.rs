//! One running Twitch account: a twitch-irc client, the task that drains its unbounded
//! incoming channel into our writer queue at once, and a supervisor that starts a new client
//! when that one dies.

use async_trait::async_trait;
use chrono::Utc;
use futures_util::FutureExt;
use std::collections::{BTreeSet, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twitch_irc::login::{CredentialsPair, LoginCredentials, StaticLoginCredentials};
use twitch_irc::message::{AsRawIRC, ServerMessage};
use twitch_irc::{ClientConfig, TwitchIRCClient};

use super::auth::{AuthEndpoint, AuthError, AuthSettings, AuthStats, Timing, TokenManager};
use super::convert;
use super::transport::{self, report_bad_line, BadLine, LoginLease, LoginState, PacedTransport};
use crate::config::{AccountConfig, Credentials, Rate, TwitchConfig};
use crate::record::Record;
use crate::record::RecordTx;

type Client = TwitchIRCClient<PacedTransport, AccountCreds>;

/// Where the accounts' token managers talk to and keep their state (`[twitch] auth_url` and
/// `token_dir`); a start-up setting shared by every account.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub endpoint: AuthEndpoint,
    pub token_dir: PathBuf,
    /// [`Timing::default`] outside tests.
    pub timing: Timing,
}

impl AuthContext {
    /// From `[twitch]`, with production timing.
    pub fn from_config(t: &TwitchConfig) -> Self {
        AuthContext { endpoint: t.auth_url.clone(), token_dir: t.token_dir.clone(), timing: Timing::default() }
    }
}

/// What an account logs in with: anonymous, or a token kept valid (and, with refresh
/// credentials, renewed) by a [`TokenManager`].
#[derive(Debug, Clone)]
pub enum AccountCreds {
    Anonymous(StaticLoginCredentials),
    Token(TokenManager),
}

#[async_trait]
impl LoginCredentials for AccountCreds {
    type Error = AuthError;

    async fn get_credentials(&self) -> Result<CredentialsPair, AuthError> {
        match self {
            AccountCreds::Anonymous(s) => match s.get_credentials().await {
                Ok(pair) => Ok(pair),
                Err(never) => match never {},
            },
            AccountCreds::Token(m) => m.get_credentials().await,
        }
    }
}

/// What a client tells the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Twitch refused the account's credentials; the client has stopped for good.
    LoginRejected { account: String },
}

/// Counters of one account, for metrics and readiness.
#[derive(Debug, Default)]
pub struct AccountStats {
    /// Notices received.
    pub notices: AtomicU64,
    /// Chat events (USERNOTICE, CLEARCHAT, CLEARMSG, ROOMSTATE) handed to the writer.
    pub events: AtomicU64,
    /// Channels the config wants.
    pub channels_wanted: AtomicU64,
    /// Of those, channels Twitch confirmed joined (refreshed every few seconds).
    pub channels_joined: AtomicU64,
    /// Stopped on purpose (login rejected): not counted against readiness.
    pub stopped: AtomicBool,
    /// Times its twitch-irc client died and was started again.
    pub restarts: AtomicU64,
    /// Its token's counters; `None` for an anonymous account.
    pub auth: Option<Arc<AuthStats>>,
    /// Channels reported as unjoinable, so each is reported once (until it is joined).
    reported: std::sync::Mutex<HashSet<String>>,
    /// Channels whose JOIN was logged, so a rejoin after a reconnect is not logged again.
    announced: std::sync::Mutex<HashSet<String>>,
}

impl AccountStats {
    /// True the first time `channel` is joined (until it is parted).
    fn announce_join(&self, channel: &str) -> bool {
        self.announced.lock().expect("announced lock").insert(channel.to_string())
    }

    /// True if `channel`'s JOIN had been logged.
    fn announce_part(&self, channel: &str) -> bool {
        self.announced.lock().expect("announced lock").remove(channel)
    }

    /// True the first time `channel` is reported.
    fn report(&self, channel: &str) -> bool {
        self.reported.lock().expect("reported lock").insert(channel.to_string())
    }

    fn joined(&self, channel: &str) {
        self.reported.lock().expect("reported lock").remove(channel);
    }
}

enum Command {
    SetChannels(BTreeSet<String>),
    Stop,
}

/// Handle to a running account.
pub struct AccountHandle {
    /// Account name from the config.
    pub name: String,
    /// Counters.
    pub stats: Arc<AccountStats>,
    /// State shared by every account of its login: JOIN pacer, connection and message counts.
    pub login: Arc<LoginState>,
    /// Keeps the login's entry in the transport context while this account runs.
    lease: LoginLease,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// How often the joined-channel count is refreshed from twitch-irc.
const JOINED_REFRESH: Duration = Duration::from_secs(2);

impl AccountHandle {
    /// Connects and joins `channels` (JOINs are paced by the transport), with the installed
    /// [`TransportContext`](transport::TransportContext). If its twitch-irc
    /// client dies (a panic in the library, its event loop ending), it is started again with
    /// backoff, logged and counted in `restarts`.
    ///
    /// A logged-in account's token is validated at start-up and hourly and, with refresh
    /// credentials, renewed ahead of expiry (see [`TokenManager`]), talking to `auth`.
    pub fn start(
        name: &str,
        config: &AccountConfig,
        auth: &AuthContext,
        channels: BTreeSet<String>,
        sender: RecordTx,
        events: mpsc::UnboundedSender<ClientEvent>,
    ) -> Self {
        install_panic_counter();
        let (creds, login_name, setup_error) = match &config.credentials {
            Credentials::Anonymous => {
                let c = StaticLoginCredentials::anonymous();
                let login = c.credentials.login.clone();
                (AccountCreds::Anonymous(c), login, None)
            }
            Credentials::Login { username, token, refresh } => {
                let settings = AuthSettings {
                    account: name.to_string(),
                    username: username.clone(),
                    token: token.clone(),
                    refresh: refresh.clone(),
                    endpoint: auth.endpoint.clone(),
                    state_dir: auth.token_dir.clone(),
                    timing: auth.timing.clone(),
                };
                match TokenManager::new(settings) {
                    Ok(m) => (AccountCreds::Token(m), username.clone(), None),
                    // The config never lets this happen (a login has a token or refresh
                    // credentials); still stop the account rather than log in anonymously.
                    Err(e) => (AccountCreds::Anonymous(StaticLoginCredentials::anonymous()), username.clone(), Some(e)),
                }
            }
        };
        let lease = transport::installed().lease(&login_name, config.join_rate);
        let login = lease.state().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Command::SetChannels(channels));
        let manager = match &creds {
            AccountCreds::Token(m) => Some(m.clone()),
            AccountCreds::Anonymous(_) => None,
        };
        let stats = Arc::new(AccountStats { auth: manager.as_ref().map(TokenManager::stats), ..Default::default() });
        let (fatal_tx, fatal_rx) = watch::channel(false);
        let ctx = Drain {
            login_state: login.clone(),
            name: name.to_string(),
            login: config.credentials.display_login().to_string(),
            sender,
            events,
            stats: stats.clone(),
            manager,
            auth_fatal: fatal_rx,
            renew: AtomicBool::new(false),
            renewed: AtomicBool::new(false),
        };
        let task = match setup_error {
            None => tokio::spawn(supervise(ctx, creds, rx, fatal_tx)),
            Some(e) => tokio::spawn(async move {
                tracing::error!(account = %ctx.name, "{e}");
                ctx.stop_rejected();
            }),
        };
        AccountHandle { name: name.to_string(), stats, login, lease, commands: tx, task }
    }

    /// Joins what is new, parts what is gone; keeps the connection.
    pub fn set_channels(&self, channels: BTreeSet<String>) {
        let _ = self.commands.send(Command::SetChannels(channels));
    }

    /// Changes JOIN pacing without reconnecting.
    pub fn set_join_rate(&self, rate: Rate) {
        self.login.pacer.set_rate(rate);
    }

    /// Whether the client still runs (false after a rejected login).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Disconnects, hands every message already received to the writer, then returns. The
    /// login's state is dropped from the transport context if no other account uses it.
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop);
        let _ = self.task.await;
        drop(self.lease);
    }
}

/// First wait before starting a dead client again; doubles up to [`RESTART_MAX`].
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// Longest wait before starting a dead client again.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A client that ran this long before dying starts again after [`RESTART_MIN`].
const RESTART_STABLE: Duration = Duration::from_secs(120);

/// Panics whose location is in twitch-irc's source, process-wide. A panic there kills one of
/// its tasks without telling the client (a dead connection stays in its pool), so every client
/// running when it happened is started again.
static LIBRARY_PANICS: AtomicU64 = AtomicU64::new(0);

fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("twitch-irc") || l.file().contains("twitch_irc")) {
                LIBRARY_PANICS.fetch_add(1, Relaxed);
            }
            previous(info);
        }));
    });
}

fn new_client(creds: &AccountCreds, name: &str) -> (mpsc::UnboundedReceiver<ServerMessage>, Client) {
    let mut client_config = ClientConfig::new_simple(creds.clone());
    client_config.tracing_identifier = Some(name.to_string().into());
    Client::new(client_config)
}

/// Aborts a task when dropped, so the token maintenance ends with its account.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the account's client, and starts a new one whenever it dies, until told to stop. A
/// logged-in account's token maintenance runs alongside; its fatal error is sent on `fatal`.
async fn supervise(
    ctx: Drain,
    creds: AccountCreds,
    mut commands: mpsc::UnboundedReceiver<Command>,
    fatal: watch::Sender<bool>,
) {
    let _maintenance = ctx.manager.clone().map(|m| {
        let fatal = fatal.clone();
        AbortOnDrop(tokio::spawn(async move {
            // Already logged by the manager; the drain loop stops the account.
            let _ = m.run().await;
            fatal.send_replace(true);
        }))
    });
    // What the config wants, replayed to a restarted client.
    let mut channels = BTreeSet::new();
    let mut backoff = RESTART_MIN;
    loop {
        let started = Instant::now();
        let (incoming, client) = new_client(&creds, &ctx.name);
        let run = AssertUnwindSafe(ctx.run(client, incoming, &mut commands, &mut channels)).catch_unwind().await;
        let why = match run {
            Ok(End::Finished) => return,
            Ok(End::Renew) => {
                let Some(m) = &ctx.manager else { return };
                // A new client logs in only once the token is renewed (network failures are
                // waited out inside); a stop meanwhile is obeyed.
                let renewal = m.force_refresh();
                tokio::pin!(renewal);
                loop {
                    tokio::select! {
                        r = &mut renewal => match r {
                            Ok(()) => break,
                            // Logged by the manager.
                            Err(_) => {
                                ctx.stop_rejected();
                                return;
                            }
                        },
                        cmd = commands.recv() => match cmd {
                            Some(Command::SetChannels(ch)) => {
                                ctx.stats.channels_wanted.store(ch.len() as u64, Relaxed);
                                channels = ch;
                            }
                            Some(Command::Stop) | None => return,
                        },
                    }
                }
                tracing::info!(account = %ctx.name, "token of account `{}` renewed; logging in again", ctx.name);
                continue;
            }
            Ok(End::Died(why)) => why.to_string(),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned());
                format!("its task panicked: {}", text.unwrap_or_default())
            }
        };
        if started.elapsed() >= RESTART_STABLE {
            backoff = RESTART_MIN;
        }
        let n = ctx.stats.restarts.fetch_add(1, Relaxed) + 1;
        tracing::error!(
            account = %ctx.name,
            restarts = n,
            "the Twitch client of account `{}` died ({why}); starting it again in {}s and rejoining its channels",
            ctx.name,
            backoff.as_secs_f32()
        );
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                cmd = commands.recv() => match cmd {
                    Some(Command::SetChannels(ch)) => {
                        ctx.stats.channels_wanted.store(ch.len() as u64, Relaxed);
                        channels = ch;
                    }
                    Some(Command::Stop) | None => return,
                },
            }
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

/// How one client run ended.
enum End {
    /// Stopped on purpose: asked to, login rejected, or the writer gone.
    Finished,
    /// The login was rejected for the first time and the token can be renewed: renew it, then
    /// start a new client.
    Renew,
    /// Died on its own; the supervisor starts a new one.
    Died(&'static str),
}

struct Drain {
    login_state: Arc<LoginState>,
    name: String,
    login: String,
    sender: RecordTx,
    events: mpsc::UnboundedSender<ClientEvent>,
    stats: Arc<AccountStats>,
    /// The token source of a logged-in account.
    manager: Option<TokenManager>,
    /// Becomes true when the token maintenance hit a fatal error (already logged).
    auth_fatal: watch::Receiver<bool>,
    /// The current client ends to renew the token (see [`End::Renew`]).
    renew: AtomicBool,
    /// A rejected login was already answered with a renewal, and no login succeeded since:
    /// the next rejection stops the account.
    renewed: AtomicBool,
}

/// How long a dead client's last messages are waited for before it is replaced.
const DRAIN_DEAD: Duration = Duration::from_secs(5);

impl Drain {
    /// Stops the account for good, as a rejected login does: not counted against readiness,
    /// and the supervisor is told (it exits when no account is left).
    fn stop_rejected(&self) {
        self.stats.stopped.store(true, Relaxed);
        let _ = self.events.send(ClientEvent::LoginRejected { account: self.name.clone() });
    }

    async fn run(
        &self,
        client: Client,
        mut incoming: mpsc::UnboundedReceiver<ServerMessage>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        channels: &mut BTreeSet<String>,
    ) -> End {
        let panics_at_start = LIBRARY_PANICS.load(Relaxed);
        client.connect().await;
        let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
        if !channels.is_empty() {
            // A restart: the new client wants what the old one had.
            if let Err(e) = client.set_wanted_channels(channels.iter().cloned().collect()) {
                tracing::error!(account = %self.name, "invalid channel list: {e}");
            }
            wanted_tx.send_replace(channels.clone());
        }
        let tracker = tokio::spawn(track_joined(
            client.clone(),
            wanted_rx,
            self.stats.clone(),
            self.login_state.clone(),
            self.name.clone(),
        ));
        // The only other clone lives in `tracker`, which is aborted before ours is dropped.
        let mut client = Some((client, tracker));
        let mut died: Option<&'static str> = None;
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        let mut taken_since_check = 0u64;
        let mut stop_asked = false;
        let mut fatal = self.auth_fatal.clone();
        loop {
            let msg = tokio::select! {
                biased;
                stop = async { fatal.wait_for(|f| *f).await.is_ok() }, if client.is_some() => {
                    if stop {
                        self.stop_rejected();
                        close(&mut client);
                    }
                    continue;
                }
                _ = idle_check.tick() => {
                    if taken_since_check == 0 && incoming.is_empty() {
                        self.login_state.reset_in_flight();
                    }
                    taken_since_check = 0;
                    if died.is_none() {
                        if LIBRARY_PANICS.load(Relaxed) != panics_at_start {
                            died = Some("a twitch-irc task panicked");
                        } else if client.as_ref().is_some_and(|(_, t)| t.is_finished()) {
                            died = Some("twitch-irc stopped answering");
                        }
                        if died.is_some() {
                            // Hand over what it already read, then give up on it.
                            close(&mut client);
                            let _ = tokio::time::timeout(DRAIN_DEAD, self.hand_over_rest(&mut incoming)).await;
                            return End::Died(died.unwrap_or_default());
                        }
                    }
                    continue;
                }
                cmd = commands.recv(), if client.is_some() => {
                    match cmd {
                        Some(Command::SetChannels(ch)) => {
                            if let Some((c, _)) = &client {
                                self.stats.channels_wanted.store(ch.len() as u64, Relaxed);
                                if let Err(e) = c.set_wanted_channels(ch.iter().cloned().collect()) {
                                    tracing::error!(account = %self.name, "invalid channel list: {e}");
                                }
                                wanted_tx.send_replace(ch.clone());
                                *channels = ch;
                            }
                        }
                        // Dropping the client closes its connections; `incoming` then yields
                        // what was already read and ends.
                        Some(Command::Stop) | None => {
                            stop_asked = true;
                            close(&mut client);
                        }
                    }
                    continue;
                }
                m = incoming.recv() => match m {
                    Some(m) => m,
                    // Ended without being closed by us: twitch-irc's event loop is gone.
                    None if client.is_some() => {
                        close(&mut client);
                        return End::Died("twitch-irc's event loop ended");
                    }
                    None => break,
                },
            };
            taken_since_check += 1;
            if !self.take(msg, &mut client, channels).await {
                break;
            }
        }
        close(&mut client);
        tracing::debug!(account = %self.name, "client stopped; its messages are handed to the writer");
        if self.renew.swap(false, Relaxed) && !stop_asked {
            return End::Renew;
        }
        End::Finished
    }

    /// Hands what a dead client's channel still holds to the writer.
    async fn hand_over_rest(&self, incoming: &mut mpsc::UnboundedReceiver<ServerMessage>) {
        let mut none = None;
        while let Some(m) = incoming.recv().await {
            if !self.take(m, &mut none, &BTreeSet::new()).await {
                return;
            }
        }
    }

    /// Handles one message from twitch-irc. False when the writer has gone. Joins and join
    /// failures are logged only for `wanted` channels, so a server cannot flood the log (or
    /// grow our sets) with made-up ones (lines of channels the connection did not join never get
    /// here: see the transport).
    async fn take(
        &self,
        msg: ServerMessage,
        client: &mut Option<(Client, JoinHandle<()>)>,
        wanted: &BTreeSet<String>,
    ) -> bool {
        let received_at = Utc::now();
        if !matches!(msg, ServerMessage::Whisper(_)) {
            self.login_state.drained(1);
        }
        match &msg {
            ServerMessage::Notice(n)
                if convert::is_login_rejection(n)
                    && self.manager.as_ref().is_some_and(TokenManager::can_refresh)
                    && !self.renewed.swap(true, Relaxed) =>
            {
                tracing::warn!(
                    account = %self.name,
                    "Twitch rejected the login of account `{}` (user {}): \"{}\". Renewing its token and logging in again once.",
                    self.name,
                    self.login,
                    n.message_text
                );
                self.renew.store(true, Relaxed);
                close(client);
            }
            ServerMessage::GlobalUserState(_) => {
                // Logged in: a later rejection may be answered with a renewal again.
                self.renewed.store(false, Relaxed);
            }
            ServerMessage::Notice(n) if convert::is_login_rejection(n) => {
                let check = if self.manager.as_ref().is_some_and(TokenManager::can_refresh) {
                    "It was rejected again with a freshly renewed token: check that the refresh token was made for this \
                     user with the chat:read scope (see the README, \"Tokens that renew themselves\") and reload"
                } else {
                    "Check its oauth_token (an IRC token for this user, with chat:read scope) or remove username and \
                     token to log in anonymously"
                };
                tracing::error!(
                    account = %self.name,
                    "Twitch rejected the login of account `{}` (user {}): \"{}\". {check}. This account is \
                     stopped; other accounts keep running.",
                    self.name,
                    self.login,
                    n.message_text
                );
                self.stop_rejected();
                close(client);
            }
            ServerMessage::Notice(n) if convert::is_join_failure(n) => {
                let channel = n.channel_login.clone().unwrap_or_default();
                if wanted.contains(&channel) && self.stats.report(&channel) {
                    tracing::warn!(account = %self.name, channel = %channel,
                        "cannot join #{channel}: {} ({}). Not retried until the next reconnect; remove it from the config if it stays so.",
                        n.message_text, n.message_id.as_deref().unwrap_or(""));
                }
            }
            ServerMessage::Join(j) if client.is_some() => {
                self.stats.joined(&j.channel_login);
                if wanted.contains(&j.channel_login) && self.stats.announce_join(&j.channel_login) {
                    tracing::info!(account = %self.name, channel = %j.channel_login, "joined #{}", j.channel_login);
                }
            }
            ServerMessage::Part(p) => {
                if self.stats.announce_part(&p.channel_login) {
                    tracing::info!(account = %self.name, channel = %p.channel_login, "left #{}", p.channel_login);
                }
            }
            ServerMessage::Reconnect(_) => {
                tracing::info!(account = %self.name, "server asked to reconnect; reconnecting and rejoining");
            }
            other => {
                if let Some(command) = unparsed(other) {
                    report_bad_line(BadLine::Unparsed, command, &other.source().as_raw_irc());
                }
            }
        }
        if let Some(mut rec) = convert::to_record(msg, received_at) {
            super::sent_time::settle(&mut rec);
            match &rec {
                Record::Message(_) => self.login_state.messages.fetch_add(1, Relaxed),
                Record::Notice(_) => self.stats.notices.fetch_add(1, Relaxed),
                Record::Event(_) => self.stats.events.fetch_add(1, Relaxed),
            };
            if self.sender.send(rec).await.is_err() {
                tracing::error!(account = %self.name, "the writer has stopped; this client stops too");
                return false;
            }
        }
        true
    }
}

/// The command of a message twitch-irc has a parser for but handed on as generic: its parser
/// refused the line (and the library's own ERROR line about it is filtered out, see main).
fn unparsed(msg: &ServerMessage) -> Option<&'static str> {
    const PARSED: [&str; 14] = [
        "CLEARCHAT",
        "CLEARMSG",
        "GLOBALUSERSTATE",
        "JOIN",
        "NOTICE",
        "PART",
        "PING",
        "PONG",
        "PRIVMSG",
        "RECONNECT",
        "ROOMSTATE",
        "USERNOTICE",
        "USERSTATE",
        "WHISPER",
    ];
    if !matches!(msg, ServerMessage::Generic(_)) {
        return None;
    }
    PARSED.iter().find(|c| **c == msg.source().command).copied()
}

fn close(client: &mut Option<(Client, JoinHandle<()>)>) {
    if let Some((c, tracker)) = client.take() {
        tracker.abort();
        drop(c);
    }
}

/// A channel still not joined this long after its JOIN was written is reported (Twitch says
/// nothing when a channel does not exist).
pub const UNCONFIRMED_JOIN: Duration = Duration::from_secs(10);

/// Keeps `channels_joined` current from twitch-irc's own view (which drops a failed
/// connection's channels until they are rejoined), and reports, once, channels whose JOIN was
/// never confirmed.
async fn track_joined(
    client: Client,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    stats: Arc<AccountStats>,
    login: Arc<LoginState>,
    account: String,
) {
    loop {
        let channels: Vec<String> = wanted.borrow_and_update().iter().cloned().collect();
        let mut joined = 0;
        let now = Instant::now();
        for ch in &channels {
            if client.get_channel_status(ch.clone()).await.1 {
                joined += 1;
            } else if let Some(sent) = login.join_sent(ch) {
                // A JOIN not written yet (our pacer, or twitch-irc still opening connections
                // for it) is not late.
                if now.duration_since(sent) >= UNCONFIRMED_JOIN && stats.report(ch) {
                    tracing::warn!(account = %account, channel = %ch,
                        "#{ch} is still not joined {}s after its JOIN: Twitch did not confirm it (no such channel, or a ban). \
                         Not retried until the next reconnect; check the name in the config.", UNCONFIRMED_JOIN.as_secs());
                }
            }
        }
        stats.channels_joined.store(joined, Relaxed);
        let _ = tokio::time::timeout(JOINED_REFRESH, wanted.changed()).await;
    }
}
