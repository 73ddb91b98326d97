//! Twitch side: login names and server address ([`login`]), our connection type with JOIN
//! pacing ([`transport`]), one client per account ([`client`]) and message → row mapping
//! ([`convert`]).

pub mod client;
pub mod convert;
pub mod login;
pub mod transport;
