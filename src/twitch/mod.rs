//! Twitch side: token renewal ([`auth`]), our connection type with JOIN pacing and the one
//! context its connections share, which also parses chat lines itself ([`transport`],
//! [`chatline`]), one client per account for everything else ([`client`]), and the remaining
//! message → row mapping ([`convert`]).

pub mod auth;
pub mod chatline;
pub mod client;
pub mod convert;
pub mod sent_time;
pub mod transport;
