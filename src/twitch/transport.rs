//! Our twitch-irc [`Transport`]: connects to the configured server (twitch-irc's own TCP
//! transport has Twitch's host built in) and paces JOINs on the wire.
//!
//! Pacing sits here, below twitch-irc, because twitch-irc sends JOINs in a burst both when we
//! ask and when it rejoins after a reconnect. `Transport::new()` takes no arguments, so the
//! server address and the per-account pacers live in process-wide registries; a connection
//! learns its account from the `NICK` line it sends before any JOIN.

use async_trait::async_trait;
use either::Either;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::{FramedRead, LinesCodec};
use twitch_irc::message::{AsRawIRC, IRCMessage, IRCParseError};
use twitch_irc::transport::Transport;

use super::chatline;
use super::login::ServerAddr;
use crate::config::Rate;
use crate::store::writer::RecordSender;
use crate::store::Record;
use chrono::Utc;

static SERVER: RwLock<Option<ServerAddr>> = RwLock::new(None);
static RECORDS: RwLock<Option<RecordSender>> = RwLock::new(None);

/// Where chat lines parsed by the readers go (the writer's queue); `None` at shutdown, so the
/// writer can see its last sender go.
pub fn set_record_sink(sink: Option<RecordSender>) {
    *RECORDS.write().expect("sink lock") = sink;
}
static PACERS: Mutex<Option<HashMap<String, Arc<JoinPacer>>>> = Mutex::new(None);

/// Sets where new connections go (existing ones are not moved).
pub fn set_server(addr: ServerAddr) {
    *SERVER.write().expect("server lock") = Some(addr);
}

fn server() -> ServerAddr {
    SERVER.read().expect("server lock").clone().unwrap_or_else(ServerAddr::twitch)
}

/// The pacer for `login`, created with `rate` or updated to it. All connections of one login
/// share it, since Twitch counts JOINs per account.
pub fn pacer_for(login: &str, rate: Rate) -> Arc<JoinPacer> {
    let mut map = PACERS.lock().expect("pacers lock");
    let map = map.get_or_insert_with(HashMap::new);
    let p = map.entry(login.to_string()).or_insert_with(|| Arc::new(JoinPacer::new(rate)));
    p.set_rate(rate);
    p.clone()
}

fn lookup_pacer(login: &str) -> Arc<JoinPacer> {
    pacer_for_existing(login).unwrap_or_else(|| Arc::new(JoinPacer::new(Rate::TWITCH_DEFAULT_JOINS)))
}

fn pacer_for_existing(login: &str) -> Option<Arc<JoinPacer>> {
    PACERS.lock().expect("pacers lock").as_ref()?.get(login).cloned()
}

/// A sliding-window limiter: at most `rate.count` JOINs in any `rate.per`. It also counts the
/// login's connections and waiting JOINs, for metrics and readiness.
#[derive(Debug)]
pub struct JoinPacer {
    state: Mutex<(Rate, VecDeque<Instant>)>,
    /// Connections open now.
    pub open: AtomicI64,
    /// Connections ever opened (reconnects = this − 1).
    pub opened: AtomicU64,
    /// JOINs waiting for a slot.
    pub pending: AtomicI64,
    /// Chat messages read on this login's connections.
    pub messages: AtomicU64,
    /// Lines read from the login's sockets that its client has not taken yet (twitch-irc's
    /// channels in between are unbounded; this bounds them).
    pub in_flight: AtomicI64,
    room: tokio::sync::Notify,
}

/// Most lines a login may have between its sockets and its client: past this, reading pauses
/// until the client catches up, so twitch-irc's unbounded channels stay small.
pub const IN_FLIGHT_LIMIT: i64 = 4096;

impl JoinPacer {
    /// A pacer allowing `rate`.
    pub fn new(rate: Rate) -> Self {
        JoinPacer {
            state: Mutex::new((rate, VecDeque::new())),
            open: AtomicI64::new(0),
            opened: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            messages: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            room: tokio::sync::Notify::new(),
        }
    }

    /// The client took `n` lines.
    pub fn drained(&self, n: i64) {
        if self.in_flight.fetch_sub(n, Relaxed) >= IN_FLIGHT_LIMIT {
            self.room.notify_waiters();
        }
    }

    /// The client saw its pipeline idle: whatever the count says, nothing is in flight. (Lines
    /// lost with a dropped connection would otherwise leave the count too high for good.)
    pub fn reset_in_flight(&self) {
        if self.in_flight.swap(0, Relaxed) != 0 {
            self.room.notify_waiters();
        }
    }

    async fn wait_for_room(&self) {
        while self.in_flight.load(Relaxed) >= IN_FLIGHT_LIMIT {
            let notified = self.room.notified();
            if self.in_flight.load(Relaxed) < IN_FLIGHT_LIMIT {
                break;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }

    /// Changes the allowance (reload of `join_rate`).
    pub fn set_rate(&self, rate: Rate) {
        self.state.lock().expect("pacer lock").0 = rate;
    }

    /// Waits for a slot and takes it. Cancel-safe: a slot is taken only when this returns.
    pub async fn acquire(&self) {
        loop {
            let wait_until = {
                let mut guard = self.state.lock().expect("pacer lock");
                let (rate, sent) = &mut *guard;
                let now = Instant::now();
                while sent.front().is_some_and(|t| now.duration_since(*t) >= rate.per) {
                    sent.pop_front();
                }
                if sent.len() < rate.count as usize {
                    sent.push_back(now);
                    return;
                }
                sent[sent.len() - rate.count as usize] + rate.per
            };
            sleep_until(wait_until).await;
        }
    }
}

type Incoming = Box<
    dyn futures_util::stream::FusedStream<Item = Result<IRCMessage, Either<std::io::Error, IRCParseError>>>
        + Unpin
        + Send
        + Sync,
>;
type Outgoing = Box<dyn futures_util::Sink<IRCMessage, Error = std::io::Error> + Unpin + Send + Sync>;

trait Socket: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Socket for T {}

/// A connection to the configured IRC server.
pub struct PacedTransport {
    incoming: Incoming,
    outgoing: Outgoing,
}

impl fmt::Debug for PacedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacedTransport")
    }
}

/// Longest line accepted from the server; Twitch lines are far shorter (tags + 500 chars).
const MAX_LINE: usize = 64 * 1024;

async fn connect(addr: &ServerAddr) -> std::io::Result<Pin<Box<dyn Socket>>> {
    let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
    tcp.set_nodelay(true)?;
    if !addr.tls {
        return Ok(Box::pin(tcp));
    }
    use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
    let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(addr.host.clone()).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    Ok(Box::pin(tls))
}

#[async_trait]
impl Transport for PacedTransport {
    type ConnectError = std::io::Error;
    type IncomingError = std::io::Error;
    type OutgoingError = std::io::Error;
    type Incoming = Incoming;
    type Outgoing = Outgoing;

    async fn new() -> Result<Self, std::io::Error> {
        let socket = connect(&server()).await?;
        let (read, write) = tokio::io::split(socket);
        // The login is known once NICK goes out; the reader needs its in-flight counter.
        let link: Arc<OnceLock<Arc<JoinPacer>>> = Arc::default();
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(read_loop(read, lines_tx, link.clone()));
        let incoming = futures_util::stream::poll_fn(move |cx| lines_rx.poll_recv(cx)).fuse();
        let (tx, rx) = futures_channel::mpsc::unbounded::<IRCMessage>();
        tokio::spawn(write_loop(rx, write, link));
        let outgoing =
            tx.sink_map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection writer ended"));
        Ok(PacedTransport { incoming: Box::new(incoming), outgoing: Box::new(outgoing) })
    }

    fn split(self) -> (Self::Incoming, Self::Outgoing) {
        (self.incoming, self.outgoing)
    }
}

type Line = Result<IRCMessage, Either<std::io::Error, IRCParseError>>;

/// Reads and parses lines, pausing while the login has [`IN_FLIGHT_LIMIT`] lines its client
/// has not taken yet.
async fn read_loop<R: AsyncRead + Unpin>(
    read: R,
    tx: tokio::sync::mpsc::Sender<Line>,
    link: Arc<OnceLock<Arc<JoinPacer>>>,
) {
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    let records = RECORDS.read().expect("sink lock").clone();
    loop {
        if let Some(p) = link.get() {
            p.wait_for_room().await;
        }
        let next = tokio::select! {
            l = lines.next() => l,
            _ = tx.closed() => return,
        };
        let item = match next {
            None => return,
            Some(Ok(l)) if l.trim().is_empty() => continue,
            Some(Ok(l)) if records.is_some() && chatline::is_privmsg(&l) => {
                match chatline::parse_privmsg(l.trim_end_matches('\r'), Utc::now()) {
                    Some(row) => {
                        if let Some(p) = link.get() {
                            p.messages.fetch_add(1, Relaxed);
                        }
                        let sink = records.as_ref().expect("checked above");
                        // Bounded: when the writer's queue is full this waits, and so does the socket.
                        if sink.send(Record::Message(row)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    None => IRCMessage::parse(l.trim_end_matches('\r')).map_err(Either::Right),
                }
            }
            Some(Ok(l)) => IRCMessage::parse(l.trim_end_matches('\r')).map_err(Either::Right),
            Some(Err(e)) => Err(Either::Left(std::io::Error::other(e))),
        };
        // twitch-irc forwards every line to the client except whispers it de-duplicates.
        if let (Ok(m), Some(p)) = (&item, link.get()) {
            if m.command != "WHISPER" {
                p.in_flight.fetch_add(1, Relaxed);
            }
        }
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Writes outgoing lines in order, except that JOINs wait for the account's pacer while
/// everything else (PONG, PART, PING) goes out at once, so keepalives never queue behind JOINs.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: futures_channel::mpsc::UnboundedReceiver<IRCMessage>,
    mut w: W,
    link: Arc<OnceLock<Arc<JoinPacer>>>,
) {
    let mut pacer: Option<Arc<JoinPacer>> = None;
    let mut pending: VecDeque<IRCMessage> = VecDeque::new();
    loop {
        let next_join = async {
            match (&pacer, pending.is_empty()) {
                (Some(p), false) => p.acquire().await,
                _ => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            m = rx.next() => match m {
                None => break,
                Some(m) => match m.command.as_str() {
                    "NICK" if pacer.is_none() => {
                        let p = lookup_pacer(m.params.first().map_or("", String::as_str));
                        p.open.fetch_add(1, Relaxed);
                        p.opened.fetch_add(1, Relaxed);
                        let _ = link.set(p.clone());
                        pacer = Some(p);
                        m
                    }
                    "JOIN" => {
                        let p = pacer.get_or_insert_with(|| Arc::new(JoinPacer::new(Rate::TWITCH_DEFAULT_JOINS)));
                        p.pending.fetch_add(1, Relaxed);
                        pending.push_back(m);
                        continue;
                    }
                    "PART" => {
                        // A PART overtakes a JOIN of the same channel still waiting: drop that JOIN.
                        let before = pending.len();
                        pending.retain(|j| j.params.first() != m.params.first());
                        if let Some(p) = &pacer {
                            p.pending.fetch_sub((before - pending.len()) as i64, Relaxed);
                        }
                        m
                    }
                    _ => m,
                },
            },
            _ = next_join => {
                if let Some(p) = &pacer {
                    p.pending.fetch_sub(1, Relaxed);
                }
                pending.pop_front().expect("a JOIN is pending")
            }
        };
        let mut raw = line.as_raw_irc();
        raw.push_str("\r\n");
        if w.write_all(raw.as_bytes()).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
    if let Some(p) = &pacer {
        p.pending.fetch_sub(pending.len() as i64, Relaxed);
        p.open.fetch_sub(1, Relaxed);
    }
    let _ = w.shutdown().await;
}
