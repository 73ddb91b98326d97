//! Our twitch-irc [`Transport`]: connects to the configured server (twitch-irc's own TCP
//! transport has Twitch's host built in) and paces JOINs on the wire.
//!
//! Pacing sits here, below twitch-irc, because twitch-irc sends JOINs in a burst both when we
//! ask and when it rejoins after a reconnect. `Transport::new()` takes no arguments, so what
//! connections share (server, record queue, per-login state, bad-line counters) is one
//! [`TransportContext`] in the one process-wide slot ([`install`], [`installed`]); a connection
//! learns its login from the `NICK` line it sends before any JOIN.

use async_trait::async_trait;
use either::Either;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, FramedRead};
use twitch_irc::message::{AsRawIRC, IRCMessage, IRCParseError};
use twitch_irc::transport::Transport;

use super::chatline::{self, Chat};
use super::convert::RAW_TAG;
use crate::config::Rate;
use crate::config::ServerAddr;
use crate::record::Record;
use crate::record::RecordTx;
use chrono::Utc;

/// The one process-wide value: the context new connections use. Starts as a context for
/// Twitch's own server with no record queue (chat lines then go to twitch-irc, like any line).
static INSTALLED: LazyLock<RwLock<Arc<TransportContext>>> =
    LazyLock::new(|| RwLock::new(TransportContext::new(ServerAddr::twitch(), None)));

/// Makes `ctx` the context of every connection opened from now on (open ones keep theirs).
/// `app::run` installs one per run, before its first account starts; tests install their own.
pub fn install(ctx: Arc<TransportContext>) {
    *INSTALLED.write().expect("transport context lock") = ctx;
}

/// The context new connections use (see [`install`]).
pub fn installed() -> Arc<TransportContext> {
    INSTALLED.read().expect("transport context lock").clone()
}

/// What all connections of a run share, since twitch-irc gives a new connection nothing.
///
/// Owned by `app::run`: it creates one when the writer exists, [`install`]s it before the
/// first account starts, and calls [`close_records`](Self::close_records) at shutdown once
/// every client has stopped. It stays installed until the next [`install`] (a context is never
/// changed in place but for that), so `/metrics` keeps its counters to the end.
pub struct TransportContext {
    /// Where new connections go; restart-only, so fixed for the context's life.
    server: ServerAddr,
    /// The writer's queue for chat lines the readers parse; `None` after shutdown, so the
    /// writer can see its last sender go.
    records: RwLock<Option<RecordTx>>,
    /// Per login, the state its connections share and how many running accounts use it.
    logins: Mutex<HashMap<String, LoginEntry>>,
    pass_unsafe_lines: AtomicBool,
    /// `[storage] raw_lines`: rows carry the exact line as received.
    raw_lines: AtomicBool,
    bad_lines: [AtomicU64; BadLine::ALL.len()],
    bad_line_reports: [RateLimit; BadLine::ALL.len()],
    connect_failures: RateLimit,
    /// Zero point of the [`RateLimit`]s' clocks.
    epoch: Instant,
}

struct LoginEntry {
    accounts: usize,
    state: Arc<LoginState>,
}

impl fmt::Debug for TransportContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportContext").field("server", &self.server).finish_non_exhaustive()
    }
}

impl TransportContext {
    /// A context whose connections go to `server` and hand chat rows to `records` (`None`:
    /// chat lines go to twitch-irc like any other line).
    pub fn new(server: ServerAddr, records: Option<RecordTx>) -> Arc<Self> {
        Arc::new(TransportContext {
            server,
            records: RwLock::new(records),
            logins: Mutex::new(HashMap::new()),
            pass_unsafe_lines: AtomicBool::new(false),
            raw_lines: AtomicBool::new(false),
            bad_lines: [const { AtomicU64::new(0) }; BadLine::ALL.len()],
            bad_line_reports: [const { RateLimit::new() }; BadLine::ALL.len()],
            connect_failures: RateLimit::new(),
            epoch: Instant::now(),
        })
    }

    /// Drops the record sender (shutdown, after every client stopped): connections opened
    /// later hand chat lines to twitch-irc, and the writer sees its last sender go.
    pub fn close_records(&self) {
        *self.records.write().expect("records lock") = None;
    }

    /// Registers one more account using `login` and sets the login's JOIN allowance to `rate`.
    /// All connections of one login share its state, since Twitch counts JOINs per account;
    /// the entry is removed when the last lease of the login is dropped.
    pub fn lease(self: &Arc<Self>, login: &str, rate: Rate) -> LoginLease {
        let mut logins = self.logins.lock().expect("logins lock");
        let entry = logins
            .entry(login.to_string())
            .or_insert_with(|| LoginEntry { accounts: 0, state: Arc::new(LoginState::new(rate)) });
        entry.accounts += 1;
        entry.state.pacer.set_rate(rate);
        LoginLease { ctx: self.clone(), login: login.to_string(), state: entry.state.clone() }
    }

    /// Logins some running account uses, sorted.
    pub fn logins(&self) -> Vec<String> {
        let mut v: Vec<String> = self.logins.lock().expect("logins lock").keys().cloned().collect();
        v.sort();
        v
    }

    /// The state of `login`, or a fresh one (default rate, counted nowhere) for a connection no
    /// account leased, e.g. a bare twitch-irc client in a test.
    fn login_state(&self, login: &str) -> Arc<LoginState> {
        let logins = self.logins.lock().expect("logins lock");
        logins.get(login).map_or_else(|| Arc::new(LoginState::new(Rate::TWITCH_DEFAULT_JOINS)), |e| e.state.clone())
    }

    /// `[storage] raw_lines`: whether rows carry the exact line as received (set once at
    /// start-up, before the first connection).
    pub fn keep_raw_lines(&self, yes: bool) {
        self.raw_lines.store(yes, Relaxed);
    }

    /// Tests only: hand lines to twitch-irc without [`sanitize`], to crash it on purpose and
    /// see the client started again. Never called by the logger.
    #[doc(hidden)]
    pub fn pass_unsafe_lines_for_tests(&self, yes: bool) {
        self.pass_unsafe_lines.store(yes, Relaxed);
    }

    /// Lines dropped or repaired by this context's connections, by kind (for `/metrics`).
    pub fn bad_line_counts(&self) -> [(&'static str, u64); BadLine::ALL.len()] {
        BadLine::ALL.map(|k| (k.label(), self.bad_lines[k as usize].load(Relaxed)))
    }

    /// Counts a bad line and logs it unless one of its kind was logged in the last
    /// [`REPORT_EVERY`]. `detail` says which part was wrong; `line` is shown escaped and cut.
    pub(crate) fn report_bad_line(&self, kind: BadLine, detail: &str, line: &str) {
        let total = self.bad_lines[kind as usize].fetch_add(1, Relaxed) + 1;
        if let Some(held) = self.bad_line_reports[kind as usize].allow(self.epoch, REPORT_EVERY) {
            let prefix: String = line.chars().take(LOGGED_PREFIX).collect();
            let cut = if prefix.len() < line.len() { "…" } else { "" };
            let problem = if detail.is_empty() { String::new() } else { format!(" (problem: {detail})") };
            let held = if held > 0 { format!(", {held} since the last report") } else { String::new() };
            tracing::warn!(
                reason = kind.label(),
                "{}{problem}; {total} so far{held}, reported at most every {}s: {prefix:?}{cut}",
                kind.what(),
                REPORT_EVERY.as_secs()
            );
        }
    }
}

/// One running account's hold on its login's [`LoginState`]: the login's entry in its
/// [`TransportContext`] lives while any lease of it does (anonymous accounts share
/// `justinfan12345`), so a login no account uses any more leaves no state behind.
#[derive(Debug)]
pub struct LoginLease {
    ctx: Arc<TransportContext>,
    login: String,
    state: Arc<LoginState>,
}

impl LoginLease {
    /// The login's shared state.
    pub fn state(&self) -> &Arc<LoginState> {
        &self.state
    }
}

impl Drop for LoginLease {
    fn drop(&mut self) {
        let mut logins = self.ctx.logins.lock().expect("logins lock");
        if let Some(entry) = logins.get_mut(&self.login) {
            entry.accounts -= 1;
            if entry.accounts == 0 {
                logins.remove(&self.login);
            }
        }
    }
}

/// A sliding-window limiter: at most `rate.count` JOINs in any `rate.per`.
#[derive(Debug)]
pub struct JoinPacer {
    state: Mutex<(Rate, VecDeque<Instant>)>,
}

/// What the connections of one login share: its JOIN pacer, and the counters that metrics,
/// readiness and the readers' back-pressure read.
#[derive(Debug)]
pub struct LoginState {
    /// Holds JOINs back to the login's `join_rate`.
    pub pacer: JoinPacer,
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
    /// When each channel's last JOIN went out on one of the login's connections (a PART
    /// removes it): a JOIN Twitch never confirmed is late counting from there, not from when
    /// the config asked for it (twitch-irc feeds JOINs as it opens connections, 90 a time).
    joins_sent: Mutex<HashMap<String, Instant>>,
}

/// Most lines a login may have between its sockets and its client: past this, reading pauses
/// until the client catches up, so twitch-irc's unbounded channels stay small.
pub const IN_FLIGHT_LIMIT: i64 = 4096;

impl LoginState {
    /// Nothing open or counted yet, JOINs paced to `rate`.
    pub fn new(rate: Rate) -> Self {
        LoginState {
            pacer: JoinPacer::new(rate),
            open: AtomicI64::new(0),
            opened: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            messages: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            room: tokio::sync::Notify::new(),
            joins_sent: Mutex::new(HashMap::new()),
        }
    }

    /// When `channel`'s last JOIN was written, unless it was parted since (or never sent).
    pub fn join_sent(&self, channel: &str) -> Option<Instant> {
        self.joins_sent.lock().expect("joins_sent lock").get(channel).copied()
    }

    /// Takes note of a JOIN or PART just written.
    fn wrote(&self, m: &IRCMessage) {
        let mut sent = self.joins_sent.lock().expect("joins_sent lock");
        let now = Instant::now();
        for ch in channels_of(m) {
            if m.command == "JOIN" {
                sent.insert(ch.to_string(), now);
            } else {
                sent.remove(ch);
            }
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
}

impl JoinPacer {
    /// A pacer allowing `rate`.
    pub fn new(rate: Rate) -> Self {
        JoinPacer { state: Mutex::new((rate, VecDeque::new())) }
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
        let ctx = installed();
        let addr = ctx.server.clone();
        // twitch-irc gives up after 20 s by dropping this future, and retries every 2 s; its
        // own lines about it are filtered out (see main), so the failure is told here, once.
        let mut attempt = ConnectAttempt { ctx: &ctx, done: false };
        let socket = match connect(&addr).await {
            Ok(s) => s,
            Err(e) => {
                attempt.failed(&e.to_string());
                return Err(e);
            }
        };
        attempt.done = true;
        let (read, write) = tokio::io::split(socket);
        // The login is known once NICK goes out; the reader needs its in-flight counter.
        let link: Arc<OnceLock<Link>> = Arc::default();
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel(256);
        let records = ctx.records.read().expect("records lock").clone();
        let joined: Arc<Joined> = Arc::default();
        tokio::spawn(read_loop(read, lines_tx, link.clone(), joined.clone(), records, ctx.clone()));
        let incoming = futures_util::stream::poll_fn(move |cx| lines_rx.poll_recv(cx)).fuse();
        let (tx, rx) = futures_channel::mpsc::unbounded::<IRCMessage>();
        tokio::spawn(write_loop(rx, write, link, joined, ctx.clone()));
        let outgoing =
            tx.sink_map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection writer ended"));
        Ok(PacedTransport { incoming: Box::new(incoming), outgoing: Box::new(outgoing) })
    }

    fn split(self) -> (Self::Incoming, Self::Outgoing) {
        (self.incoming, self.outgoing)
    }
}

type Line = Result<IRCMessage, Either<std::io::Error, IRCParseError>>;

/// Reports a connection attempt that failed or was abandoned (rate-limited).
struct ConnectAttempt<'a> {
    ctx: &'a TransportContext,
    done: bool,
}

impl ConnectAttempt<'_> {
    fn failed(&mut self, why: &str) {
        self.done = true;
        if let Some(held) = self.ctx.connect_failures.allow(self.ctx.epoch, REPORT_EVERY) {
            let held = if held > 0 { format!(" ({held} more failures since the last report)") } else { String::new() };
            tracing::warn!("cannot connect to {}: {why}; retrying{held}", self.ctx.server);
        }
    }
}

impl Drop for ConnectAttempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.failed("no connection within twitch-irc's 20 s timeout");
        }
    }
}

/// What a connection knows once its `NICK` went out.
struct Link {
    login: String,
    state: Arc<LoginState>,
}

/// The channels of a JOIN or PART line (`#a` or `#a,#b`), without their `#`.
fn channels_of(m: &IRCMessage) -> impl Iterator<Item = &str> {
    m.params.first().into_iter().flat_map(|list| list.split(',')).map(|c| c.strip_prefix('#').unwrap_or(c))
}

/// The channels a connection has asked to join (its JOIN handed to the writer, paced or not)
/// and not parted since: chat of any other channel is not stored.
#[derive(Default)]
struct Joined(Mutex<HashSet<String>>);

impl Joined {
    /// Takes note of an outgoing JOIN or PART.
    fn note(&self, m: &IRCMessage) {
        let mut set = self.0.lock().expect("joined lock");
        for ch in channels_of(m) {
            if m.command == "JOIN" {
                set.insert(ch.to_string());
            } else {
                set.remove(ch);
            }
        }
    }

    fn has(&self, channel: &str) -> bool {
        self.0.lock().expect("joined lock").contains(channel)
    }
}

/// Why a line from the server was dropped or repaired. Each is counted
/// ([`bad_line_counts`]) and reported at most every [`REPORT_EVERY`] per kind, with a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    /// Not UTF-8: repaired (each bad byte becomes U+FFFD).
    InvalidUtf8,
    /// Longer than [`MAX_LINE`]: dropped up to its newline.
    TooLong,
    /// Not an IRC line twitch-irc can tokenise (e.g. two spaces between parameters): dropped.
    Malformed,
    /// A PRIVMSG twitch-irc would refuse, or one we cannot store as it is: dropped.
    ChatRefused,
    /// A tag value that would crash twitch-irc's parser (e.g. `color=#aééa`): emptied.
    UnsafeTag,
    /// A line twitch-irc could tokenise but not read (handed on as a generic message).
    Unparsed,
    /// Chat, a notice or an event of a channel the connection has not joined (a server bug, a
    /// proxy that multiplexes connections, a line still arriving after a PART): dropped.
    UnwantedChannel,
}

impl BadLine {
    /// Every kind, in metric order.
    pub const ALL: [BadLine; 7] = [
        BadLine::InvalidUtf8,
        BadLine::TooLong,
        BadLine::Malformed,
        BadLine::ChatRefused,
        BadLine::UnsafeTag,
        BadLine::Unparsed,
        BadLine::UnwantedChannel,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BadLine::InvalidUtf8 => "invalid_utf8",
            BadLine::TooLong => "too_long",
            BadLine::Malformed => "malformed",
            BadLine::ChatRefused => "chat_refused",
            BadLine::UnsafeTag => "unsafe_tag",
            BadLine::Unparsed => "unparsed",
            BadLine::UnwantedChannel => "unwanted_channel",
        }
    }

    fn what(self) -> &'static str {
        match self {
            BadLine::InvalidUtf8 => "a line from Twitch was not UTF-8; its bad bytes were replaced with U+FFFD",
            BadLine::TooLong => "a line from Twitch was longer than 64 KiB; it was dropped",
            BadLine::Malformed => "a line from Twitch is not valid IRC; it was dropped",
            BadLine::ChatRefused => {
                "a chat line from Twitch was dropped: twitch-irc would refuse it or the table cannot hold it"
            }
            BadLine::UnsafeTag => "a line from Twitch had a tag value that crashes twitch-irc; the value was emptied",
            BadLine::Unparsed => "twitch-irc could not read a line from Twitch; it was ignored",
            BadLine::UnwantedChannel => {
                "a line of a channel this account is not set to read was dropped (a server bug, a proxy, or a line still arriving after a PART)"
            }
        }
    }
}

/// Shortest time between two log lines about the same kind of problem.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Lines dropped or repaired since start, by kind, in the installed context (for `/metrics`).
pub fn bad_line_counts() -> [(&'static str, u64); BadLine::ALL.len()] {
    installed().bad_line_counts()
}

/// [`TransportContext::report_bad_line`] in the installed context, for lines only the client
/// sees.
pub(crate) fn report_bad_line(kind: BadLine, detail: &str, line: &str) {
    installed().report_bad_line(kind, detail, line);
}

/// Characters of a bad line shown in the log.
const LOGGED_PREFIX: usize = 120;

/// Lets one event through per period and counts those held back.
struct RateLimit {
    /// Milliseconds since the context's `epoch` of the last event let through, plus one (0: never).
    last: AtomicU64,
    held: AtomicU64,
}

impl RateLimit {
    const fn new() -> Self {
        RateLimit { last: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(events held back since the last one let through)` if this one may be logged.
    fn allow(&self, epoch: Instant, every: std::time::Duration) -> Option<u64> {
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < every.as_millis() as u64 {
            self.held.fetch_add(1, Relaxed);
            return None;
        }
        if self.last.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            self.held.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.held.swap(0, Relaxed))
    }
}

/// Empties or removes tag values that twitch-irc 6.1.3 would panic on (it slices `color` by
/// byte, and overflows on `emotes` ranges and huge `followers-only` in debug builds) or
/// refuse. True if anything changed.
pub fn sanitize(m: &mut IRCMessage) -> bool {
    let mut changed = false;
    if let Some(c) = m.tags.0.get_mut("color") {
        if !c.is_empty() && !chatline::is_color(c) {
            c.clear();
            changed = true;
        }
    }
    if let Some(e) = m.tags.0.get_mut("emotes") {
        if !chatline::is_emotes(e) {
            e.clear();
            changed = true;
        }
    }
    if m.tags.0.get("followers-only").and_then(|f| f.parse::<i64>().ok()).is_some_and(|n| n.checked_mul(60).is_none()) {
        m.tags.0.remove("followers-only");
        changed = true;
    }
    changed
}

/// One frame of the byte stream.
#[derive(Debug, PartialEq)]
enum Frame {
    Line(String),
    /// The line, with each invalid byte replaced.
    BadUtf8(String),
    /// A line over [`MAX_LINE`], dropped; its start, for the log.
    TooLong(String),
}

/// Splits bytes at `\n` (dropping trailing `\r`s) without ever failing: unlike `LinesCodec`,
/// a bad byte or an endless line costs that line only, never the connection.
#[derive(Debug, Default)]
struct LineCodec {
    /// Where to resume looking for `\n`.
    scanned: usize,
    /// The start of a line being skipped for length, until its `\n`.
    skipping: Option<String>,
}

fn frame(bytes: &[u8]) -> Frame {
    let end = bytes.iter().rposition(|b| *b != b'\r').map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    match std::str::from_utf8(bytes) {
        Ok(s) => Frame::Line(s.to_string()),
        Err(_) => Frame::BadUtf8(String::from_utf8_lossy(bytes).into_owned()),
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        let found = buf[self.scanned..].iter().position(|b| *b == b'\n').map(|i| i + self.scanned);
        match found {
            Some(i) => {
                self.scanned = 0;
                let line = buf.split_to(i + 1);
                Ok(Some(match self.skipping.take() {
                    Some(start) => Frame::TooLong(start),
                    None if i > MAX_LINE => {
                        Frame::TooLong(String::from_utf8_lossy(&line[..LOGGED_PREFIX * 4]).into_owned())
                    }
                    None => frame(&line[..i]),
                }))
            }
            None if self.skipping.is_some() => {
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
            None if buf.len() > MAX_LINE => {
                let head = &buf[..buf.len().min(LOGGED_PREFIX * 4)];
                self.skipping = Some(String::from_utf8_lossy(head).into_owned());
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        if let Some(f) = self.decode(buf)? {
            return Ok(Some(f));
        }
        self.scanned = 0;
        if let Some(start) = self.skipping.take() {
            buf.clear();
            return Ok(Some(Frame::TooLong(start)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let rest = buf.split_to(buf.len());
        Ok(Some(frame(&rest)))
    }
}

/// Reads lines: chat lines become rows for `records` here, every other line is checked and
/// handed to twitch-irc. No line can end the connection or reach code that panics on it.
/// Pauses while the login has [`IN_FLIGHT_LIMIT`] lines its client has not taken yet, and
/// ends (releasing its `records` sender) as soon as twitch-irc drops the connection, even
/// while paused.
async fn read_loop<R: AsyncRead + Unpin>(
    read: R,
    tx: tokio::sync::mpsc::Sender<Line>,
    link: Arc<OnceLock<Link>>,
    joined: Arc<Joined>,
    records: Option<RecordTx>,
    ctx: Arc<TransportContext>,
) {
    let mut lines = FramedRead::new(read, LineCodec::default());
    loop {
        if let Some(l) = link.get() {
            tokio::select! {
                _ = l.state.wait_for_room() => {}
                _ = tx.closed() => return,
            }
        }
        let next = tokio::select! {
            l = lines.next() => l,
            _ = tx.closed() => return,
        };
        let login = || link.get().map_or("(not logged in yet)", |l| l.login.as_str());
        let line = match next {
            None => {
                tracing::info!(login = login(), "the server closed the connection; twitch-irc reconnects");
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(login = login(), "connection lost: {e}; twitch-irc reconnects");
                let _ = tx.send(Err(Either::Left(e))).await;
                return;
            }
            Some(Ok(Frame::TooLong(start))) => {
                ctx.report_bad_line(BadLine::TooLong, "", &start);
                continue;
            }
            Some(Ok(Frame::BadUtf8(l))) => {
                ctx.report_bad_line(BadLine::InvalidUtf8, "", &l);
                l
            }
            Some(Ok(Frame::Line(l))) => l,
        };
        // NUL is never valid IRC, and PostgreSQL text cannot hold it.
        let line = if line.contains('\0') { line.replace('\0', "") } else { line };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(sink) = records.as_ref().filter(|_| chatline::is_privmsg(&line)) {
            match store_chat(&line, sink, &link, &joined, &ctx).await {
                Some(true) => continue,
                Some(false) => return,
                None => {}
            }
        }
        let mut msg = match IRCMessage::parse(&line) {
            Ok(m) => m,
            Err(e) => {
                ctx.report_bad_line(BadLine::Malformed, &e.to_string(), &line);
                continue;
            }
        };
        if let (Some(sink), "PRIVMSG") = (&records, msg.command.as_str()) {
            // A PRIVMSG the cheap check missed (lower-case command): ours too, never twitch-irc's.
            match store_chat(&line, sink, &link, &joined, &ctx).await {
                Some(false) => return,
                _ => continue,
            }
        }
        // Notices and events of a channel this connection never joined (or has parted) are not
        // stored either; `NOTICE *` (about the account) has no channel and passes.
        let unwanted = STORED_COMMANDS.contains(&msg.command.as_str())
            && msg.params.first().and_then(|p| p.strip_prefix('#')).is_some_and(|ch| !joined.has(ch));
        if unwanted {
            ctx.report_bad_line(BadLine::UnwantedChannel, "", &line);
            continue;
        }
        if !ctx.pass_unsafe_lines.load(Relaxed) && sanitize(&mut msg) {
            ctx.report_bad_line(BadLine::UnsafeTag, "", &line);
        }
        // Lines that become rows carry their exact text through twitch-irc (which reorders tags).
        if ctx.raw_lines.load(Relaxed) && STORED_COMMANDS.contains(&msg.command.as_str()) {
            msg.tags.0.insert(RAW_TAG.to_string(), line.clone());
        }
        // twitch-irc forwards every line to the client except whispers it de-duplicates.
        if let Some(l) = link.get() {
            if msg.command != "WHISPER" {
                l.state.in_flight.fetch_add(1, Relaxed);
            }
        }
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

/// Commands whose lines become rows in `twitch::convert` (the raw line goes with them).
const STORED_COMMANDS: [&str; 5] = ["NOTICE", "USERNOTICE", "CLEARCHAT", "CLEARMSG", "ROOMSTATE"];

/// Turns a chat line into a row for `sink`, or counts it as refused: `Some(true)`. `None`:
/// not a chat line after all. `Some(false)`: the writer has gone.
async fn store_chat(
    line: &str,
    sink: &RecordTx,
    link: &OnceLock<Link>,
    joined: &Joined,
    ctx: &TransportContext,
) -> Option<bool> {
    match chatline::classify(line, Utc::now()) {
        Chat::Row(row) if !joined.has(&row.channel) => {
            ctx.report_bad_line(BadLine::UnwantedChannel, "", line);
            Some(true)
        }
        Chat::Row(mut row) => {
            if ctx.raw_lines.load(Relaxed) {
                row.raw = Some(line.to_string());
            }
            if let Some(l) = link.get() {
                l.state.messages.fetch_add(1, Relaxed);
            }
            let mut row = Record::Message(row);
            super::sent_time::settle(&mut row);
            // Bounded: when the writer's queue is full this waits, and so does the socket.
            Some(sink.send(row).await.is_ok())
        }
        Chat::Refused(why) => {
            ctx.report_bad_line(BadLine::ChatRefused, why, line);
            Some(true)
        }
        Chat::Other => None,
    }
}

/// Writes outgoing lines in order, except that JOINs wait for the account's pacer while
/// everything else (PONG, PART, PING) goes out at once, so keepalives never queue behind JOINs.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: futures_channel::mpsc::UnboundedReceiver<IRCMessage>,
    mut w: W,
    link: Arc<OnceLock<Link>>,
    joined: Arc<Joined>,
    ctx: Arc<TransportContext>,
) {
    let mut state: Option<Arc<LoginState>> = None;
    let mut pending: VecDeque<IRCMessage> = VecDeque::new();
    loop {
        let next_join = async {
            match (&state, pending.is_empty()) {
                (Some(p), false) => p.pacer.acquire().await,
                _ => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            m = rx.next() => match m {
                None => break,
                Some(m) => match m.command.as_str() {
                    "NICK" if state.is_none() => {
                        let login = m.params.first().map_or("", String::as_str);
                        let p = ctx.login_state(login);
                        p.open.fetch_add(1, Relaxed);
                        p.opened.fetch_add(1, Relaxed);
                        let _ = link.set(Link { login: login.to_string(), state: p.clone() });
                        // One line per connection (start, pool growth, reconnect); twitch-irc's
                        // own lines about it are filtered out.
                        tracing::info!(login, "connected to {}", ctx.server);
                        state = Some(p);
                        m
                    }
                    "JOIN" => {
                        joined.note(&m);
                        let p = state.get_or_insert_with(|| Arc::new(LoginState::new(Rate::TWITCH_DEFAULT_JOINS)));
                        p.pending.fetch_add(1, Relaxed);
                        pending.push_back(m);
                        continue;
                    }
                    "PART" => {
                        joined.note(&m);
                        // A PART overtakes a JOIN of the same channel still waiting: take the
                        // channel out of that JOIN (and drop a JOIN left with none).
                        let parted: HashSet<&str> = channels_of(&m).collect();
                        let before = pending.len();
                        pending.retain_mut(|j| {
                            let rest: Vec<String> =
                                channels_of(j).filter(|c| !parted.contains(c)).map(|c| format!("#{c}")).collect();
                            if rest.is_empty() {
                                return false;
                            }
                            j.params = vec![rest.join(",")];
                            true
                        });
                        if let Some(p) = &state {
                            p.pending.fetch_sub((before - pending.len()) as i64, Relaxed);
                        }
                        m
                    }
                    _ => m,
                },
            },
            _ = next_join => {
                if let Some(p) = &state {
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
        if let (Some(p), "JOIN" | "PART") = (&state, line.command.as_str()) {
            p.wrote(&line);
        }
    }
    if let Some(p) = &state {
        p.pending.fetch_sub(pending.len() as i64, Relaxed);
        p.open.fetch_sub(1, Relaxed);
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use twitch_irc::message::ServerMessage;

    fn count(ctx: &TransportContext, kind: BadLine) -> u64 {
        ctx.bad_lines[kind as usize].load(Relaxed)
    }

    fn privmsg(id: &str, text: &str) -> String {
        format!("@badge-info=;badges=;color=#1E90FF;display-name=Al;emotes=;id={id};mod=0;room-id=1;subscriber=0;tmi-sent-ts=1594545155039;user-id=2 :al!al@al.tmi.twitch.tv PRIVMSG #chan :{text}")
    }

    /// A reader on one end of a pipe, in a context of its own (so its bad-line counts are its
    /// own); returns the server's end, what reaches twitch-irc and the rows.
    fn reader(
        link: Arc<OnceLock<Link>>,
        ctx: &Arc<TransportContext>,
    ) -> (tokio::io::DuplexStream, tokio::sync::mpsc::Receiver<Line>, tokio::sync::mpsc::Receiver<Record>, JoinHandleUnit)
    {
        let (server, client) = tokio::io::duplex(1 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (rec_tx, rec_rx) = tokio::sync::mpsc::channel(1024);
        // The connection asked to join the channels the tests' lines are for.
        let joined: Arc<Joined> = Arc::default();
        joined.note(&IRCMessage::new_simple("JOIN".into(), vec!["#chan,#c00".into()]));
        let task = tokio::spawn(read_loop(client, tx, link, joined, Some(rec_tx), ctx.clone()));
        (server, rx, rec_rx, task)
    }

    fn context() -> Arc<TransportContext> {
        TransportContext::new(ServerAddr::parse("irc://127.0.0.1:9").unwrap(), None)
    }
    type JoinHandleUnit = tokio::task::JoinHandle<()>;

    #[tokio::test]
    async fn a_bad_byte_an_endless_line_or_an_untokenisable_line_costs_only_that_line() {
        let ctx = context();
        let (utf8, long, malformed) =
            (count(&ctx, BadLine::InvalidUtf8), count(&ctx, BadLine::TooLong), count(&ctx, BadLine::Malformed));
        let (mut server, mut lines, mut rows, _task) = reader(Arc::default(), &ctx);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b":tmi.twitch.tv PING :one\r\n");
        bytes.extend_from_slice(b"@msg-id=x :tmi.twitch.tv NOTICE #c00 :caf\xe9 au lait\r\n");
        bytes.extend_from_slice(format!("{}\r\n", "x".repeat(70 * 1024)).as_bytes());
        bytes.extend_from_slice(privmsg("m-1", "after the long line").as_bytes());
        bytes.extend_from_slice(b"\r\n@msg-id=x :tmi.twitch.tv NOTICE  #c00 :x\r\n");
        bytes.extend_from_slice(b":tmi.twitch.tv PING :two\r\n");
        server.write_all(&bytes).await.unwrap();

        let mut got = vec![];
        for _ in 0..3 {
            let l = tokio::time::timeout(Duration::from_secs(2), lines.recv()).await.unwrap().unwrap();
            got.push(l.expect("no error reaches twitch-irc"));
        }
        assert_eq!(got[0].params, ["one"]);
        assert_eq!(got[1].params, ["#c00", "caf\u{FFFD} au lait"], "invalid UTF-8 is repaired, not fatal");
        assert_eq!(got[2].params, ["two"], "the line with two spaces is dropped, the next one arrives");
        let Record::Message(m) = rows.recv().await.unwrap() else { panic!("not a message") };
        assert_eq!(m.text, "after the long line");
        assert!(count(&ctx, BadLine::InvalidUtf8) > utf8);
        assert!(count(&ctx, BadLine::TooLong) > long);
        assert!(count(&ctx, BadLine::Malformed) > malformed);
    }

    #[tokio::test]
    async fn chat_of_a_channel_the_connection_never_joined_or_has_parted_is_dropped_and_counted() {
        let ctx = context();
        let joined: Arc<Joined> = Arc::default();
        joined.note(&IRCMessage::new_simple("JOIN".into(), vec!["#chan,#two".into()]));
        joined.note(&IRCMessage::new_simple("PART".into(), vec!["#two".into()]));
        let (mut server, client) = tokio::io::duplex(1 << 16);
        let (tx, _lines) = tokio::sync::mpsc::channel(16);
        let (rec_tx, mut rows) = tokio::sync::mpsc::channel(16);
        let _task = tokio::spawn(read_loop(client, tx, Arc::default(), joined, Some(rec_tx), ctx.clone()));
        let parted = privmsg("p-1", "after the PART").replace("#chan", "#two");
        let never = privmsg("n-1", "never joined").replace("#chan", "#elsewhere");
        let bytes = format!("{parted}\r\n{never}\r\n{}\r\n", privmsg("ok-1", "kept"));
        server.write_all(bytes.as_bytes()).await.unwrap();
        let Record::Message(m) = rows.recv().await.unwrap() else { panic!("not a message") };
        assert_eq!((m.channel.as_str(), m.text.as_str()), ("chan", "kept"));
        assert_eq!(count(&ctx, BadLine::UnwantedChannel), 2);
    }

    #[tokio::test]
    async fn notices_and_events_of_a_channel_the_connection_never_joined_do_not_reach_twitch_irc() {
        let ctx = context();
        let joined: Arc<Joined> = Arc::default();
        joined.note(&IRCMessage::new_simple("JOIN".into(), vec!["#chan".into()]));
        let (mut server, client) = tokio::io::duplex(1 << 16);
        let (tx, mut lines) = tokio::sync::mpsc::channel(16);
        let _task = tokio::spawn(read_loop(client, tx, Arc::default(), joined, None, ctx.clone()));
        let bytes = [
            "@msg-id=x :tmi.twitch.tv NOTICE #elsewhere :not ours",
            "@room-id=1 :tmi.twitch.tv ROOMSTATE #elsewhere",
            "@room-id=1;tmi-sent-ts=1594545155039 :tmi.twitch.tv CLEARCHAT #elsewhere :someone",
            ":tmi.twitch.tv NOTICE * :Login authentication failed",
            "@msg-id=x :tmi.twitch.tv NOTICE #chan :ours",
        ]
        .map(|l| format!("{l}\r\n"))
        .concat();
        server.write_all(bytes.as_bytes()).await.unwrap();
        let first = lines.recv().await.unwrap().unwrap();
        assert_eq!(first.params, ["*", "Login authentication failed"], "a notice about the account passes");
        let second = lines.recv().await.unwrap().unwrap();
        assert_eq!(second.params, ["#chan", "ours"]);
        assert_eq!(count(&ctx, BadLine::UnwantedChannel), 3);
    }

    #[tokio::test]
    async fn a_tag_that_crashes_twitch_irc_is_emptied_before_it_gets_there() {
        let ctx = context();
        let hazard = "@badge-info=;badges=;color=#aééa;display-name=A;emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #chan";
        // The hazard is real: twitch-irc 6.1.3 panics on it.
        let raw = IRCMessage::parse(hazard).unwrap();
        assert!(std::panic::catch_unwind(|| ServerMessage::try_from(raw)).is_err());

        let before = count(&ctx, BadLine::UnsafeTag);
        let (mut server, mut lines, _rows, _task) = reader(Arc::default(), &ctx);
        let roomstate = "@followers-only=999999999999999999;room-id=1 :tmi.twitch.tv ROOMSTATE #chan";
        let usernotice = "@badge-info=;badges=;color=#F0F0F0;display-name=A;emotes=1:9-2;id=u1;login=a;mod=0;msg-id=resub;msg-param-cumulative-months=2;msg-param-streak-months=0;msg-param-should-share-streak=0;msg-param-sub-plan=1000;msg-param-sub-plan-name=x;room-id=1;subscriber=1;system-msg=x;tmi-sent-ts=1594545155039;user-id=2;user-type= :tmi.twitch.tv USERNOTICE #chan :hello there";
        server.write_all(format!("{hazard}\r\n{roomstate}\r\n{usernotice}\r\n").as_bytes()).await.unwrap();
        for _ in 0..3 {
            let m = lines.recv().await.unwrap().unwrap();
            ServerMessage::try_from(m).expect("twitch-irc reads the repaired line");
        }
        assert!(count(&ctx, BadLine::UnsafeTag) >= before + 3);
    }

    #[tokio::test]
    async fn chat_lines_twitch_irc_would_refuse_are_dropped_and_counted_not_handed_on() {
        let ctx = context();
        let before = count(&ctx, BadLine::ChatRefused);
        let (mut server, mut lines, mut rows, _task) = reader(Arc::default(), &ctx);
        let no_id = privmsg("", "no id");
        let notice = "@msg-id=x :tmi.twitch.tv NOTICE #chan :say PRIVMSG #chan :hi to test";
        let bytes = format!("{no_id}\r\n{}\r\n{notice}\r\n", privmsg("ok-1", "kept"));
        server.write_all(bytes.as_bytes()).await.unwrap();
        let Record::Message(m) = rows.recv().await.unwrap() else { panic!() };
        assert_eq!(m.message_id, "ok-1");
        let next = lines.recv().await.unwrap().unwrap();
        assert_eq!(next.command, "NOTICE", "the refused PRIVMSG never reaches twitch-irc; a NOTICE quoting one does");
        assert!(count(&ctx, BadLine::ChatRefused) > before);
    }

    #[tokio::test]
    async fn a_reader_paused_for_room_lets_go_of_the_writer_when_its_connection_is_dropped() {
        let link: Arc<OnceLock<Link>> = Arc::default();
        let state = Arc::new(LoginState::new(Rate::TWITCH_DEFAULT_JOINS));
        state.in_flight.store(IN_FLIGHT_LIMIT, Relaxed);
        let _ = link.set(Link { login: "bot".into(), state: state.clone() });
        let (server, lines, mut rows, task) = reader(link, &context());
        // The client is gone (shutdown): nobody will ever drain the 4,096 lines in flight.
        drop(lines);
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("the reader ends").unwrap();
        let all_senders_gone = tokio::time::timeout(Duration::from_secs(1), rows.recv()).await;
        assert!(matches!(all_senders_gone, Ok(None)), "the reader still holds a record sender");
        drop(server);
    }

    #[test]
    fn a_login_entry_stays_while_any_account_uses_it_and_goes_with_the_last() {
        let ctx = context();
        let slow = Rate { count: 1, per: Duration::from_secs(30) };
        let anon_a = ctx.lease("justinfan12345", Rate::TWITCH_DEFAULT_JOINS);
        let anon_b = ctx.lease("justinfan12345", slow);
        let bot = ctx.lease("bot", Rate::TWITCH_DEFAULT_JOINS);
        assert!(Arc::ptr_eq(anon_a.state(), anon_b.state()), "accounts of one login share its state");
        assert!(Arc::ptr_eq(&ctx.login_state("justinfan12345"), anon_a.state()), "connections find it by NICK");
        assert_eq!(ctx.logins(), ["bot", "justinfan12345"]);

        drop(anon_a);
        assert_eq!(ctx.logins(), ["bot", "justinfan12345"], "another anonymous account still uses it");
        drop(anon_b);
        assert_eq!(ctx.logins(), ["bot"], "the last anonymous account stopped");
        drop(bot);
        assert!(ctx.logins().is_empty());

        // A login used again later starts afresh, not from a leftover entry.
        let old = ctx.lease("justinfan12345", Rate::TWITCH_DEFAULT_JOINS);
        old.state().opened.fetch_add(3, Relaxed);
        drop(old);
        let again = ctx.lease("justinfan12345", Rate::TWITCH_DEFAULT_JOINS);
        assert_eq!(again.state().opened.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_counts_itself_in_the_state_of_the_login_it_sends_as_nick() {
        let ctx = context();
        let lease = ctx.lease("bot", Rate::TWITCH_DEFAULT_JOINS);
        let (tx, rx) = futures_channel::mpsc::unbounded::<IRCMessage>();
        let (wire, _server) = tokio::io::duplex(1 << 16);
        let link: Arc<OnceLock<Link>> = Arc::default();
        let task = tokio::spawn(write_loop(rx, wire, link.clone(), Arc::default(), ctx.clone()));
        tx.unbounded_send(IRCMessage::parse("NICK bot").unwrap()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), async {
            while lease.state().open.load(Relaxed) != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the connection is counted as open");
        assert_eq!(lease.state().opened.load(Relaxed), 1);
        assert!(Arc::ptr_eq(&link.get().unwrap().state, lease.state()));
        drop(tx);
        task.await.unwrap();
        assert_eq!(lease.state().open.load(Relaxed), 0, "a closed connection is no longer open");
    }

    #[tokio::test(start_paused = true)]
    async fn the_unconfirmed_join_clock_starts_when_a_join_is_written_not_while_it_waits_for_the_pacer() {
        let ctx = context();
        let lease = ctx.lease("bot", Rate { count: 1, per: Duration::from_secs(30) });
        let (tx, rx) = futures_channel::mpsc::unbounded::<IRCMessage>();
        let (wire, _server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(write_loop(rx, wire, Arc::default(), Arc::default(), ctx.clone()));
        for line in ["NICK bot", "JOIN #a", "JOIN #b,#c"] {
            tx.unbounded_send(IRCMessage::parse(line).unwrap()).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = lease.state();
        assert!(s.join_sent("a").is_some(), "the first JOIN went out at once");
        assert_eq!((s.join_sent("b"), s.join_sent("c")), (None, None), "still in the pacer: not late");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(s.join_sent("b").is_some() && s.join_sent("c").is_some(), "written with the next slot");
        tx.unbounded_send(IRCMessage::parse("PART #a").unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(s.join_sent("a"), None, "a parted channel is not waited for");
        drop(tx);
        task.await.unwrap();
    }

    /// Sends `lines` to a write loop with a pacer of one JOIN per 30 s; returns what reached
    /// the wire after `wait` and the connection's joined set.
    async fn written(lines: &[&str], wait: Duration) -> (String, Arc<Joined>) {
        let ctx = context();
        let _lease = ctx.lease("bot", Rate { count: 1, per: Duration::from_secs(30) });
        let (tx, rx) = futures_channel::mpsc::unbounded::<IRCMessage>();
        let (wire, mut server) = tokio::io::duplex(1 << 16);
        let joined: Arc<Joined> = Arc::default();
        let _task = tokio::spawn(write_loop(rx, wire, Arc::default(), joined.clone(), ctx.clone()));
        for line in lines {
            tx.unbounded_send(IRCMessage::parse(line).unwrap()).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(wait).await;
        drop(tx);
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server, &mut out).await.unwrap();
        (out, joined)
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_parted_while_its_join_waits_and_added_again_is_joined_and_its_chat_kept() {
        let (wire, joined) =
            written(&["NICK bot", "JOIN #x", "JOIN #a", "PART #a", "JOIN #a"], Duration::from_secs(70)).await;
        assert!(wire.ends_with("JOIN #a\r\n"), "{wire}");
        assert!(joined.has("a") && joined.has("x"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_of_one_channel_of_a_pending_comma_join_leaves_the_set_matching_the_wire() {
        let (wire, joined) = written(&["NICK bot", "JOIN #x", "JOIN #a,#b", "PART #a"], Duration::from_secs(70)).await;
        let joined_a_on_wire = wire.rfind("JOIN #a,#b").is_some_and(|j| wire.rfind("PART #a").is_some_and(|p| j > p));
        assert_eq!(joined.has("a"), joined_a_on_wire, "the server joins #a but its chat is dropped: {wire:?}");
    }

    #[test]
    fn an_endless_line_is_skipped_without_holding_it_in_memory() {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from("y".repeat(MAX_LINE + 1).as_bytes());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "the skipped bytes are not kept");
        buf.extend_from_slice(&b"yyy".repeat(10_000));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(
            b"end
next
",
        );
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Frame::TooLong(s)) if s.starts_with("yyy")));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Line("next".into())));
    }

    #[test]
    fn the_framing_splits_on_newlines_and_keeps_a_last_line_without_one() {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(&b"a\r\nb\nc\r\r\n\npartial"[..]);
        let mut out = vec![];
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out.push(codec.decode_eof(&mut buf).unwrap().unwrap());
        let line = |s: &str| Frame::Line(s.to_string());
        assert_eq!(out, [line("a"), line("b"), line("c"), line(""), line("partial")]);
    }
}
