//! One running Twitch account: a twitch-irc client, and the task that drains its unbounded
//! incoming channel into our writer queue at once.

use chrono::Utc;
use secrecy::ExposeSecret;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::ServerMessage;
use twitch_irc::{ClientConfig, TwitchIRCClient};

use super::convert;
use super::transport::{pacer_for, JoinPacer, PacedTransport};
use crate::config::{AccountConfig, Credentials, Rate};
use crate::store::writer::RecordSender;
use crate::store::Record;

type Client = TwitchIRCClient<PacedTransport, StaticLoginCredentials>;

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
    /// Channels the config wants.
    pub channels_wanted: AtomicU64,
    /// Of those, channels Twitch confirmed joined (refreshed every few seconds).
    pub channels_joined: AtomicU64,
    /// Stopped on purpose (login rejected): not counted against readiness.
    pub stopped: AtomicBool,
    /// Channels reported as unjoinable, so each is reported once (until it is joined).
    reported: std::sync::Mutex<HashSet<String>>,
}

impl AccountStats {
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
    /// The login's pacer (also counts its connections).
    pub pacer: Arc<JoinPacer>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// How often the joined-channel count is refreshed from twitch-irc.
const JOINED_REFRESH: Duration = Duration::from_secs(2);

impl AccountHandle {
    /// Connects and joins `channels` (JOINs are paced by the transport).
    pub fn start(
        name: &str,
        config: &AccountConfig,
        channels: BTreeSet<String>,
        sender: RecordSender,
        events: mpsc::UnboundedSender<ClientEvent>,
    ) -> Self {
        let creds = match &config.credentials {
            Credentials::Anonymous => StaticLoginCredentials::anonymous(),
            Credentials::Login { username, token } => {
                StaticLoginCredentials::new(username.clone(), Some(token.expose_secret().to_string()))
            }
        };
        let pacer = pacer_for(&creds.credentials.login, config.join_rate);
        let mut client_config = ClientConfig::new_simple(creds);
        client_config.tracing_identifier = Some(name.to_string().into());
        let (incoming, client) = Client::new(client_config);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Command::SetChannels(channels));
        let stats = Arc::new(AccountStats::default());
        let ctx = Drain {
            pacer: pacer.clone(),
            name: name.to_string(),
            login: config.credentials.display_login().to_string(),
            sender,
            events,
            stats: stats.clone(),
        };
        let task = tokio::spawn(ctx.run(client, incoming, rx));
        AccountHandle { name: name.to_string(), stats, pacer, commands: tx, task }
    }

    /// Joins what is new, parts what is gone; keeps the connection.
    pub fn set_channels(&self, channels: BTreeSet<String>) {
        let _ = self.commands.send(Command::SetChannels(channels));
    }

    /// Changes JOIN pacing without reconnecting.
    pub fn set_join_rate(&self, rate: Rate) {
        self.pacer.set_rate(rate);
    }

    /// Whether the client still runs (false after a rejected login).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Disconnects, hands every message already received to the writer, then returns.
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop);
        let _ = self.task.await;
    }
}

struct Drain {
    pacer: Arc<JoinPacer>,
    name: String,
    login: String,
    sender: RecordSender,
    events: mpsc::UnboundedSender<ClientEvent>,
    stats: Arc<AccountStats>,
}

impl Drain {
    async fn run(
        self,
        client: Client,
        mut incoming: mpsc::UnboundedReceiver<ServerMessage>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        client.connect().await;
        let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
        let tracker = tokio::spawn(track_joined(
            client.clone(),
            wanted_rx,
            self.stats.clone(),
            self.pacer.clone(),
            self.name.clone(),
        ));
        // The only other clone lives in `tracker`, which is aborted before ours is dropped.
        let mut client = Some((client, tracker));
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        let mut taken_since_check = 0u64;
        loop {
            let msg = tokio::select! {
                biased;
                _ = idle_check.tick() => {
                    if taken_since_check == 0 && incoming.is_empty() {
                        self.pacer.reset_in_flight();
                    }
                    taken_since_check = 0;
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
                                wanted_tx.send_replace(ch);
                            }
                        }
                        // Dropping the client closes its connections; `incoming` then yields
                        // what was already read and ends.
                        Some(Command::Stop) | None => close(&mut client),
                    }
                    continue;
                }
                m = incoming.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            let received_at = Utc::now();
            taken_since_check += 1;
            if !matches!(msg, ServerMessage::Whisper(_)) {
                self.pacer.drained(1);
            }
            match &msg {
                ServerMessage::Notice(n) if convert::is_login_rejection(n) => {
                    tracing::error!(
                        account = %self.name,
                        "Twitch rejected the login of account `{}` (user {}): \"{}\". Check its oauth_token (an IRC token for this \
                         user, with chat:read scope) or remove username and token to log in anonymously. This account is \
                         stopped; other accounts keep running.",
                        self.name,
                        self.login,
                        n.message_text
                    );
                    self.stats.stopped.store(true, Relaxed);
                    let _ = self.events.send(ClientEvent::LoginRejected { account: self.name.clone() });
                    close(&mut client);
                }
                ServerMessage::Notice(n) if convert::is_join_failure(n) => {
                    let channel = n.channel_login.clone().unwrap_or_default();
                    if self.stats.report(&channel) {
                        tracing::warn!(account = %self.name, channel = %channel,
                            "cannot join #{channel}: {} ({}). Not retried until the next reconnect; remove it from the config if it stays so.",
                            n.message_text, n.message_id.as_deref().unwrap_or(""));
                    }
                }
                ServerMessage::Join(j) if client.is_some() => self.stats.joined(&j.channel_login),
                ServerMessage::Reconnect(_) => {
                    tracing::info!(account = %self.name, "server asked to reconnect; reconnecting and rejoining");
                }
                _ => {}
            }
            if let Some(rec) = convert::to_record(msg, received_at) {
                match &rec {
                    Record::Message(_) => self.pacer.messages.fetch_add(1, Relaxed),
                    Record::Notice(_) => self.stats.notices.fetch_add(1, Relaxed),
                };
                if self.sender.send(rec).await.is_err() {
                    tracing::error!(account = %self.name, "the writer has stopped; this client stops too");
                    break;
                }
            }
        }
        close(&mut client);
        tracing::debug!(account = %self.name, "client stopped; its messages are handed to the writer");
    }
}

fn close(client: &mut Option<(Client, JoinHandle<()>)>) {
    if let Some((c, tracker)) = client.take() {
        tracker.abort();
        drop(c);
    }
}

/// A channel still not joined this long after the last JOIN left the pacer is reported
/// (Twitch says nothing when a channel does not exist).
pub const UNCONFIRMED_JOIN: Duration = Duration::from_secs(10);

/// Keeps `channels_joined` current from twitch-irc's own view (which drops a failed
/// connection's channels until they are rejoined), and reports, once, channels whose JOIN was
/// never confirmed.
async fn track_joined(
    client: Client,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    stats: Arc<AccountStats>,
    pacer: Arc<JoinPacer>,
    account: String,
) {
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    loop {
        let channels: Vec<String> = wanted.borrow_and_update().iter().cloned().collect();
        let mut joined = 0;
        // JOINs still waiting for the pacer are not late yet.
        let joins_queued = pacer.pending.load(Relaxed) > 0;
        let now = Instant::now();
        for ch in &channels {
            if client.get_channel_status(ch.clone()).await.1 {
                joined += 1;
                missing_since.remove(ch);
            } else if !joins_queued {
                let since = *missing_since.entry(ch.clone()).or_insert(now);
                if now.duration_since(since) >= UNCONFIRMED_JOIN && stats.report(ch) {
                    tracing::warn!(account = %account, channel = %ch,
                        "#{ch} is still not joined {}s after its JOIN: Twitch did not confirm it (no such channel, or a ban). \
                         Not retried until the next reconnect; check the name in the config.", UNCONFIRMED_JOIN.as_secs());
                }
            }
        }
        missing_since.retain(|ch, _| channels.contains(ch));
        stats.channels_joined.store(joined, Relaxed);
        let _ = tokio::time::timeout(JOINED_REFRESH, wanted.changed()).await;
    }
}
