//! One running Twitch account: a twitch-irc client, and the task that drains its unbounded
//! incoming channel into our bounded writer queue.

use chrono::Utc;
use secrecy::ExposeSecret;
use std::collections::{BTreeSet, HashSet};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::ServerMessage;
use twitch_irc::{ClientConfig, TwitchIRCClient};

use super::convert;
use super::transport::{pacer_for, PacedTransport};
use crate::config::{AccountConfig, Credentials};
use crate::store::writer::RecordSender;

type Client = TwitchIRCClient<PacedTransport, StaticLoginCredentials>;

/// What a client tells the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Twitch refused the account's credentials; the client has stopped for good.
    LoginRejected { account: String },
}

enum Command {
    SetChannels(BTreeSet<String>),
    Stop,
}

/// Handle to a running account.
pub struct AccountHandle {
    /// Account name from the config.
    pub name: String,
    /// The config it runs with.
    pub config: AccountConfig,
    /// The login on the wire (`justinfan…` when anonymous): the JOIN pacer's key.
    login: String,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

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
        let login = creds.credentials.login.clone();
        pacer_for(&login, config.join_rate);
        let mut client_config = ClientConfig::new_simple(creds);
        client_config.tracing_identifier = Some(name.to_string().into());
        let (incoming, client) = Client::new(client_config);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Command::SetChannels(channels));
        let task = tokio::spawn(drain(
            name.to_string(),
            config.credentials.display_login().to_string(),
            client,
            incoming,
            rx,
            sender,
            events,
        ));
        AccountHandle { name: name.to_string(), config: config.clone(), login, commands: tx, task }
    }

    /// Joins what is new, parts what is gone; keeps the connection.
    pub fn set_channels(&self, channels: BTreeSet<String>) {
        let _ = self.commands.send(Command::SetChannels(channels));
    }

    /// Changes JOIN pacing without reconnecting.
    pub fn set_join_rate(&self, rate: crate::config::Rate) {
        pacer_for(&self.login, rate);
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

async fn drain(
    name: String,
    login: String,
    client: Client,
    mut incoming: mpsc::UnboundedReceiver<ServerMessage>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    sender: RecordSender,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let mut client = Some(client);
    if let Some(c) = &client {
        c.connect().await;
    }
    // Channels already reported as unjoinable, so each is reported once.
    let mut reported: HashSet<String> = HashSet::new();
    loop {
        let msg = tokio::select! {
            biased;
            cmd = commands.recv(), if client.is_some() => {
                match cmd {
                    Some(Command::SetChannels(ch)) => {
                        if let Some(c) = &client {
                            if let Err(e) = c.set_wanted_channels(ch.into_iter().collect()) {
                                tracing::error!(account = %name, "invalid channel list: {e}");
                            }
                        }
                    }
                    Some(Command::Stop) | None => {
                        // Dropping the client closes its connections; `incoming` then yields
                        // what was already read and ends.
                        client = None;
                    }
                }
                continue;
            }
            m = incoming.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let received_at = Utc::now();
        match &msg {
            ServerMessage::Notice(n) if convert::is_login_rejection(n) => {
                tracing::error!(
                    account = %name,
                    "Twitch rejected the login of account `{name}` (user {login}): \"{}\". Check its oauth_token (an IRC token for this user, \
                     with chat:read scope) or remove username and token to log in anonymously. This account is stopped; other accounts keep running.",
                    n.message_text
                );
                let _ = events.send(ClientEvent::LoginRejected { account: name.clone() });
                client = None;
            }
            ServerMessage::Notice(n) if convert::is_join_failure(n) => {
                let channel = n.channel_login.clone().unwrap_or_default();
                if reported.insert(channel.clone()) {
                    tracing::warn!(account = %name, channel = %channel, "cannot join #{channel}: {} ({}). Not retried until the next reconnect; remove it from the config if it stays so.",
                        n.message_text, n.message_id.as_deref().unwrap_or(""));
                }
            }
            ServerMessage::Join(j) if client.is_some() => {
                reported.remove(&j.channel_login);
                tracing::debug!(account = %name, channel = %j.channel_login, "joined");
            }
            ServerMessage::Reconnect(_) => {
                tracing::info!(account = %name, "server asked to reconnect; reconnecting and rejoining");
            }
            _ => {}
        }
        if let Some(rec) = convert::to_record(msg, received_at) {
            if sender.send(rec).await.is_err() {
                tracing::error!(account = %name, "the writer has stopped; this client stops too");
                break;
            }
        }
    }
    tracing::debug!(account = %name, "client stopped; its messages are handed to the writer");
}
