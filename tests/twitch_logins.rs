//! The transport keeps one state per login (JOIN pacer and counters), shared by the accounts
//! that use it, and forgets it when the last of them stops. Library level, against the fake
//! Twitch server on 127.0.0.1; no database. Its own test binary, since it installs the one
//! process-wide transport context.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use twitch_chat_logger::config::ServerAddr;
use twitch_chat_logger::config::{AccountConfig, Credentials, Rate};
use twitch_chat_logger::twitch::client::AccountHandle;
use twitch_chat_logger::twitch::client::AuthContext;
use twitch_chat_logger::twitch::transport::{self, TransportContext};

const ANON: &str = "justinfan12345";
const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_login_is_forgotten_when_the_last_account_using_it_stops() {
    let fake = FakeTwitch::start().await;
    let (tx, _rows) = mpsc::channel(1000);
    let connections = TransportContext::new(ServerAddr::parse(&fake.url()).unwrap(), Some(tx.clone()));
    transport::install(connections.clone());
    let (events, _events) = mpsc::unbounded_channel();
    let anonymous = AccountConfig { credentials: Credentials::Anonymous, join_rate: Rate::TWITCH_DEFAULT_JOINS };
    let bot = AccountConfig {
        credentials: Credentials::Login {
            username: "bot".into(),
            token: Some("abcdefghijklmnop0123".to_string().into()),
            refresh: None,
        },
        join_rate: Rate::TWITCH_DEFAULT_JOINS,
    };
    let start = |name: &str, account: &AccountConfig, channel: &str| {
        AccountHandle::start(
            name,
            account,
            &no_auth(),
            BTreeSet::from([channel.to_string()]),
            tx.clone(),
            events.clone(),
        )
    };
    let anon_a = start("anon_a", &anonymous, "one");
    let anon_b = start("anon_b", &anonymous, "two");
    let with_login = start("bot", &bot, "three");
    fake.wait_for("every account joined", 10 * SEC, |f| {
        f.joined_by(ANON).is_superset(&BTreeSet::from(["one".into(), "two".into()]))
            && f.joined_by("bot").contains("three")
    })
    .await;
    assert_eq!(connections.logins(), ["bot", ANON]);
    assert!(Arc::ptr_eq(&anon_a.login, &anon_b.login), "anonymous accounts share one login state");
    assert!(anon_a.login.opened.load(Relaxed) >= 1, "their connections are counted there");

    anon_a.stop().await;
    assert_eq!(connections.logins(), ["bot", ANON], "anon_b still uses the anonymous login");
    anon_b.stop().await;
    assert_eq!(connections.logins(), ["bot"], "no account uses the anonymous login any more");
    with_login.stop().await;
    assert!(connections.logins().is_empty(), "nothing is left behind: {:?}", connections.logins());
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
