//! twitch-chat-logger: logs Twitch chat into PostgreSQL, driven by one declarative config file.
//!
//! The message path: [`twitch`] (one IRC client per account) → a bounded queue →
//! [`store::writer`] (one shared batch writer) → [`store::Store`] (PostgreSQL).
//! The reload path: [`reload`] watches the file, diffs it against what runs, applies the plan.

pub mod app;
pub mod config;
pub mod http;
pub mod metrics;
pub mod record;
pub mod reload;
pub mod store;
pub mod twitch;
