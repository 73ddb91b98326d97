//! A fake Twitch IRC server on 127.0.0.1 speaking the real protocol: CAP, PASS, NICK, JOIN,
//! PART, PING, tagged PRIVMSG/NOTICE/RECONNECT lines. It records what each connection sent.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What one client connection did.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: usize,
    pub pass: Option<String>,
    pub nick: Option<String>,
    pub joined: BTreeSet<String>,
    pub open: bool,
    /// Every line received, with when.
    pub lines: Vec<(Instant, String)>,
    tx: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    Send(String),
    /// Bytes as they are, in one write (not even a line end added).
    SendRaw(Vec<u8>),
    Close,
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    bad_tokens: HashSet<String>,
    bad_nicks: HashSet<String>,
    suspended: HashSet<String>,
    ghosts: HashSet<String>,
}

/// The server. Dropping it stops accepting.
#[derive(Clone)]
pub struct FakeTwitch {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeTwitch {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (tx, rx) = mpsc::unbounded_channel();
                let id = {
                    let mut s = st.lock().unwrap();
                    let id = s.conns.len();
                    s.conns.push(Conn {
                        id,
                        pass: None,
                        nick: None,
                        joined: BTreeSet::new(),
                        open: true,
                        lines: vec![],
                        tx,
                    });
                    id
                };
                tokio::spawn(serve(id, sock, rx, st.clone()));
            }
        });
        FakeTwitch { port, state }
    }

    /// `irc://127.0.0.1:PORT`, for TWITCH_IRC_SERVER.
    pub fn url(&self) -> String {
        format!("irc://127.0.0.1:{}", self.port)
    }

    /// Logins with this token (as sent after `oauth:`) are refused like Twitch refuses them.
    pub fn reject_token(&self, token: &str) {
        self.state.lock().unwrap().bad_tokens.insert(token.to_string());
    }

    /// Every login of `nick` is refused, whatever its token.
    pub fn reject_nick(&self, nick: &str) {
        self.state.lock().unwrap().bad_nicks.insert(nick.to_string());
    }

    /// JOINs to this channel get Twitch's "suspended" NOTICE.
    pub fn suspend(&self, channel: &str) {
        self.state.lock().unwrap().suspended.insert(channel.to_string());
    }

    /// JOINs to this channel get no answer at all, as for a channel that does not exist.
    pub fn ghost(&self, channel: &str) {
        self.state.lock().unwrap().ghosts.insert(channel.to_string());
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.state.lock().unwrap().conns.clone()
    }

    /// Sends `line` to every open connection joined to `channel`, as Twitch would.
    pub fn to_channel(&self, channel: &str, line: &str) -> usize {
        let s = self.state.lock().unwrap();
        let mut n = 0;
        for c in s.conns.iter().filter(|c| c.open && c.joined.contains(channel)) {
            let _ = c.tx.send(Cmd::Send(line.to_string()));
            n += 1;
        }
        n
    }

    /// Sends `line` to every open connection of `nick`.
    pub fn to_nick(&self, nick: &str, line: &str) {
        let s = self.state.lock().unwrap();
        for c in s.conns.iter().filter(|c| c.open && c.nick.as_deref() == Some(nick)) {
            let _ = c.tx.send(Cmd::Send(line.to_string()));
        }
    }

    /// Writes `bytes` unchanged, in one write, to every open connection of `nick`: for lines
    /// that are not valid UTF-8, and for several lines arriving in one read.
    pub fn raw_to_nick(&self, nick: &str, bytes: &[u8]) {
        let s = self.state.lock().unwrap();
        for c in s.conns.iter().filter(|c| c.open && c.nick.as_deref() == Some(nick)) {
            let _ = c.tx.send(Cmd::SendRaw(bytes.to_vec()));
        }
    }

    /// Closes every open connection of `nick` (a dropped connection).
    pub fn drop_nick(&self, nick: &str) {
        let s = self.state.lock().unwrap();
        for c in s.conns.iter().filter(|c| c.open && c.nick.as_deref() == Some(nick)) {
            let _ = c.tx.send(Cmd::Close);
        }
    }

    /// Channels joined right now by open connections of `nick`.
    pub fn joined_by(&self, nick: &str) -> BTreeSet<String> {
        self.conns().into_iter().filter(|c| c.open && c.nick.as_deref() == Some(nick)).flat_map(|c| c.joined).collect()
    }

    /// The nicks of the open connections joined to `channel` right now, one entry per
    /// connection (a nick twice means two of its connections sit in the channel).
    pub fn readers(&self, channel: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .conns()
            .into_iter()
            .filter(|c| c.open && c.joined.contains(channel))
            .map(|c| c.nick.unwrap_or_default())
            .collect();
        v.sort();
        v
    }

    /// Every `JOIN` line received from `nick`'s connections, with when.
    pub fn join_lines(&self, nick: &str) -> Vec<(Instant, String)> {
        let mut v: Vec<_> = self
            .conns()
            .into_iter()
            .filter(|c| c.nick.as_deref() == Some(nick))
            .flat_map(|c| c.lines)
            .filter(|(_, l)| l.starts_with("JOIN "))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
    pub async fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&FakeTwitch) -> bool) {
        let end = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > end {
                panic!("timed out waiting for: {what}; connections: {:#?}", self.summary());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn summary(&self) -> Vec<(usize, Option<String>, bool, BTreeSet<String>)> {
        self.conns().into_iter().map(|c| (c.id, c.nick, c.open, c.joined)).collect()
    }
}

async fn serve(id: usize, sock: TcpStream, mut rx: mpsc::UnboundedReceiver<Cmd>, st: Arc<Mutex<State>>) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(l)) => { if w.write_all(format!("{l}\r\n").as_bytes()).await.is_err() { break } }
                Some(Cmd::SendRaw(b)) => { if w.write_all(&b).await.is_err() { break } }
                Some(Cmd::Close) | None => break,
            },
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let replies = handle(id, &line, &st);
                let mut close = false;
                for r in replies {
                    if r == "\u{0}CLOSE" { close = true; break }
                    if w.write_all(format!("{r}\r\n").as_bytes()).await.is_err() { close = true; break }
                }
                if close { break }
            }
        }
    }
    let _ = w.shutdown().await;
    let mut s = st.lock().unwrap();
    s.conns[id].open = false;
    s.conns[id].joined.clear();
}

fn handle(id: usize, line: &str, st: &Arc<Mutex<State>>) -> Vec<String> {
    let mut s = st.lock().unwrap();
    let bad = s.bad_tokens.clone();
    let bad_nicks = s.bad_nicks.clone();
    let suspended = s.suspended.clone();
    let ghosts = s.ghosts.clone();
    let c = &mut s.conns[id];
    c.lines.push((Instant::now(), line.to_string()));
    let nick = c.nick.clone().unwrap_or_default();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "CAP" => vec![":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands".into()],
        "PASS" => {
            c.pass = Some(rest.to_string());
            vec![]
        }
        "NICK" => {
            c.nick = Some(rest.to_string());
            let token = c.pass.as_deref().and_then(|p| p.strip_prefix("oauth:")).unwrap_or("");
            if bad.contains(token) || bad_nicks.contains(rest) {
                return vec![":tmi.twitch.tv NOTICE * :Login authentication failed".into(), "\u{0}CLOSE".into()];
            }
            let n = rest;
            vec![
                format!(":tmi.twitch.tv 001 {n} :Welcome, GLHF!"),
                format!(":tmi.twitch.tv 002 {n} :Your host is tmi.twitch.tv"),
                format!(":tmi.twitch.tv 003 {n} :This server is rather new"),
                format!(":tmi.twitch.tv 004 {n} :-"),
                format!(":tmi.twitch.tv 375 {n} :-"),
                format!(":tmi.twitch.tv 372 {n} :You are in a maze of twisty passages, all alike."),
                format!(":tmi.twitch.tv 376 {n} :>"),
                format!("@badge-info=;badges=;color=;display-name={n};emote-sets=0;user-id=1;user-type= :tmi.twitch.tv GLOBALUSERSTATE"),
            ]
        }
        "JOIN" => {
            let mut out = vec![];
            for ch in rest.split(',') {
                let ch = ch.trim_start_matches('#').to_string();
                if ghosts.contains(&ch) {
                    continue;
                }
                if suspended.contains(&ch) {
                    out.push(format!(
                        "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #{ch} :This channel has been suspended."
                    ));
                    continue;
                }
                c.joined.insert(ch.clone());
                out.push(format!(":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{ch}"));
                out.push(format!(":{nick}.tmi.twitch.tv 353 {nick} = #{ch} :{nick}"));
                out.push(format!(":{nick}.tmi.twitch.tv 366 {nick} #{ch} :End of /NAMES list"));
                out.push(format!(
                    "@emote-only=0;followers-only=-1;r9k=0;room-id=1;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #{ch}"
                ));
            }
            out
        }
        "PART" => {
            let ch = rest.trim_start_matches('#').to_string();
            c.joined.remove(&ch);
            vec![format!(":{nick}!{nick}@{nick}.tmi.twitch.tv PART #{ch}")]
        }
        "PING" => vec![format!(":tmi.twitch.tv PONG tmi.twitch.tv {}", rest)],
        _ => vec![],
    }
}

/// A real-looking tagged PRIVMSG.
/// The message id a test label stands for: Twitch ids are UUIDs (the writer dead-letters any
/// other), so a label such as `o-00042` becomes a UUID whose bytes spell it; a UUID is kept.
pub fn msg_uuid(label: &str) -> String {
    // An empty label stays empty: a line without an id.
    if label.is_empty() || label.len() == 36 && uuid::Uuid::try_parse(label).is_ok() {
        return label.to_string();
    }
    let mut bytes = [0u8; 16];
    if label.len() <= 16 {
        bytes[..label.len()].copy_from_slice(label.as_bytes());
        uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
    } else {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, label.as_bytes()).hyphenated().to_string()
    }
}

pub fn privmsg(channel: &str, id: &str, user: &str, text: &str) -> String {
    let id = msg_uuid(id);
    let ts = chrono::Utc::now().timestamp_millis();
    format!(
        "@badge-info=;badges=subscriber/12,premium/1;client-nonce=abc;color=#1E90FF;display-name={u};emotes=;first-msg=0;flags=;id={id};mod=0;returning-chatter=0;room-id=12345;subscriber=1;tmi-sent-ts={ts};turbo=0;user-id=777;user-type= :{l}!{l}@{l}.tmi.twitch.tv PRIVMSG #{channel} :{text}",
        u = user,
        l = user.to_lowercase(),
    )
}
