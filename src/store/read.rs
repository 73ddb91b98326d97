//! Reading logs back: the [`LogReader`] seam that the HTTP API speaks to, so that a second
//! store can serve the same routes. Every call is bounded by the caller's row limit and by the
//! store's own statement timeout; a store reads on connections of its own, never the writer's.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;

/// A user, as the routes name one: by login (`/user/NAME`) or by Twitch user id (`/userid/ID`).
/// An id finds every login the user had (a rename keeps the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A lowercase login.
    Login(String),
    /// A numeric user id.
    Id(String),
}

/// What a line is, numbered as go-twitch-irc numbers message types (justlog's `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A chat message.
    Chat = 1,
    /// A timeout, ban or chat clear.
    ClearChat = 2,
    /// A sub, resub, raid, announcement …
    UserNotice = 4,
}

/// One line of a log, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub kind: LineKind,
    /// Twitch's message id (empty when the line has none, e.g. a CLEARCHAT).
    pub id: String,
    /// Channel login.
    pub channel: String,
    pub room_id: Option<String>,
    pub user_id: Option<String>,
    /// The sender's login (a CLEARCHAT's target; empty for a clear of the whole chat).
    pub username: String,
    pub display_name: Option<String>,
    /// The chat text (empty for a CLEARCHAT; the attached message of a resub).
    pub text: String,
    /// Twitch's `system-msg` of a USERNOTICE, or the sentence describing a CLEARCHAT.
    pub system_text: String,
    pub color: Option<String>,
    /// Raw `emotes` tag.
    pub emotes: Option<String>,
    /// Badges as JSON object text (badge → version).
    pub badges: Option<String>,
    pub badge_info: Option<String>,
    pub is_mod: bool,
    pub is_subscriber: bool,
    pub bits: i32,
    pub is_action: bool,
    pub first_msg: Option<bool>,
    pub reply_parent_msg_id: Option<String>,
    pub reply_parent_user_login: Option<String>,
    pub sent_at: DateTime<Utc>,
    /// The IRC line exactly as received, where the store kept it (`[storage] raw_lines`).
    pub raw: Option<String>,
    /// An event's `msg-id` (`resub`, `raid` …).
    pub msg_id: Option<String>,
    /// An event's `msg-param-*` tags as JSON object text.
    pub params: Option<String>,
    /// A timeout's length in seconds (none for a ban or a clear).
    pub ban_duration: Option<i32>,
    /// A CLEARCHAT's target user id.
    pub target_user_id: Option<String>,
}

/// Which end of a range a limited read keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

/// `ASC` or `DESC` for `order`, in the readers' statements.
pub(super) fn sql_dir(order: Order) -> &'static str {
    match order {
        Order::OldestFirst => "ASC",
        Order::NewestFirst => "DESC",
    }
}

/// The event kinds a log shows, as justlog does (the same SQL on both stores).
pub(super) const EVENT_KINDS: &str = "kind IN ('usernotice', 'clearchat')";

/// The columns a [`Who`] is matched on (messages, events), the same names on both stores:
/// fixed names, never input.
pub(super) fn who_column(who: &Who) -> (&'static str, &'static str, &str) {
    match who {
        Who::Login(l) => ("username", "login", l.as_str()),
        Who::Id(id) => ("user_id", "user_id", id.as_str()),
    }
}

/// Why a read failed; the HTTP layer answers 503 for either.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The statement ran past the reader's statement timeout, or no connection came in time.
    #[error("the log query took too long")]
    Timeout(#[source] super::Cause),
    /// The database could not be reached or refused the query.
    #[error("the log database is unavailable")]
    Unavailable(#[source] super::Cause),
}

/// Reads logs for the HTTP API. Times are UTC; ranges are `[from, to)`; every list comes back
/// in the order named and holds at most `limit` items.
#[async_trait]
pub trait LogReader: Send + Sync + 'static {
    /// The room (channel user) id of each of `channels` that has one stored.
    async fn room_ids(&self, channels: &[String]) -> Result<HashMap<String, String>, ReadError>;

    /// The months (year, month) in which `who` wrote in `channel`, newest first.
    async fn user_months(&self, channel: &str, who: &Who, limit: usize) -> Result<Vec<(i32, u32)>, ReadError>;

    /// The days on which `channel` has lines, newest first.
    async fn channel_days(&self, channel: &str, limit: usize) -> Result<Vec<NaiveDate>, ReadError>;

    /// `who`'s lines in `channel` in `[from, to)`.
    async fn user_lines(
        &self,
        channel: &str,
        who: &Who,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<LogLine>, ReadError>;

    /// Every line of `channel` in `[from, to)`.
    async fn channel_lines(
        &self,
        channel: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<LogLine>, ReadError>;

    /// One line of `channel` (of `who` there, if given) picked at random; `None` if there is none.
    async fn random_line(&self, channel: &str, who: Option<&Who>) -> Result<Option<LogLine>, ReadError>;
}
