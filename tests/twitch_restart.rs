//! A Twitch client that dies is started again: here twitch-irc is crashed for real, with a
//! line its parser panics on, let through on purpose (the logger's reader would repair it).
//! Library level, against the fake Twitch server on 127.0.0.1; no database.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;
use twitch_chat_logger::config::ServerAddr;
use twitch_chat_logger::config::{AccountConfig, Credentials, Rate};
use twitch_chat_logger::store::Record;
use twitch_chat_logger::twitch::client::AccountHandle;
use twitch_chat_logger::twitch::client::AuthContext;
use twitch_chat_logger::twitch::transport::{self, TransportContext};

const ANON: &str = "justinfan12345";
const SEC: Duration = Duration::from_secs(1);
/// twitch-irc 6.1.3 slices `color` by byte: this panics inside its connection task.
const CRASHING_USERSTATE: &str = "@badge-info=;badges=;color=#aééa;display-name=A;emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #chan";

async fn next_message(rx: &mut mpsc::Receiver<Record>) -> String {
    loop {
        match tokio::time::timeout(10 * SEC, rx.recv()).await.expect("a row").expect("open") {
            Record::Message(m) => return m.message_id,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_client_killed_inside_twitch_irc_is_started_again_rejoins_and_is_counted() {
    let fake = FakeTwitch::start().await;
    let (tx, mut rows) = mpsc::channel(1000);
    let connections = TransportContext::new(ServerAddr::parse(&fake.url()).unwrap(), Some(tx.clone()));
    connections.pass_unsafe_lines_for_tests(true);
    transport::install(connections);
    let (events, _events) = mpsc::unbounded_channel();
    let account = AccountConfig { credentials: Credentials::Anonymous, join_rate: Rate::TWITCH_DEFAULT_JOINS };
    let handle = AccountHandle::start("anon", &account, &no_auth(), BTreeSet::from(["chan".to_string()]), tx, events);
    fake.wait_for("joined #chan", 10 * SEC, |f| f.joined_by(ANON).contains("chan")).await;
    fake.to_channel("chan", &privmsg("chan", "before-1", "Al", "before"));
    assert_eq!(next_message(&mut rows).await, msg_uuid("before-1"));

    fake.to_nick(ANON, CRASHING_USERSTATE);
    fake.wait_for("the crashed connection closed", 5 * SEC, |f| f.conns().iter().all(|c| !c.open)).await;
    fake.wait_for("a new connection joined #chan", 15 * SEC, |f| {
        f.conns().iter().any(|c| c.id > 0 && c.open && c.joined.contains("chan"))
    })
    .await;
    assert_eq!(handle.stats.restarts.load(Relaxed), 1, "counted once");
    assert!(handle.is_running());

    fake.to_channel("chan", &privmsg("chan", "after-1", "Al", "after the restart"));
    assert_eq!(next_message(&mut rows).await, msg_uuid("after-1"));

    // Dying again soon after: the wait doubles (1 s, then 2 s).
    let conns = fake.conns().len();
    let crashed = std::time::Instant::now();
    fake.to_nick(ANON, CRASHING_USERSTATE);
    fake.wait_for("a third connection joined #chan", 15 * SEC, |f| {
        f.conns().iter().any(|c| c.id >= conns && c.open && c.joined.contains("chan"))
    })
    .await;
    let took = crashed.elapsed();
    assert!(took >= 2 * SEC, "second restart after {took:?}, expected the doubled wait");
    assert_eq!(handle.stats.restarts.load(Relaxed), 2);
    tokio::time::timeout(5 * SEC, handle.stop()).await.expect("stops");
}

/// An auth endpoint nobody listens on (port 1 of loopback): validation fails fast and is
/// retried with backoff, and no test reaches Twitch.
fn no_auth() -> AuthContext {
    AuthContext {
        endpoint: twitch_chat_logger::twitch::auth::AuthEndpoint::parse("http://127.0.0.1:1").unwrap(),
        token_dir: "data/tokens".into(),
        timing: Default::default(),
    }
}
