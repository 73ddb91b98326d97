//! The justlog-compatible log API and the web page (`GET /`), read-only, on the health
//! listener. Routes speak only to the [`LogReader`] seam; the live config says which channels
//! are listed and which users have opted out (a reload takes effect on the next request).
//!
//! Paths are parsed by hand against a closed grammar: anything else is 400 or 404, and no
//! piece of a path reaches SQL except as a bound parameter.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::AppState;
use crate::config::LiveConfig;
use crate::store::read::{LineKind, LogLine, LogReader, Order, ReadError, Who};

/// Most lines one response holds; a longer month or day is cut there (header `X-Truncated`)
/// and the rest is reached with `from`/`to`.
pub const MAX_LINES: usize = 50_000;
/// Longest `from`/`to` range.
pub const MAX_RANGE: Duration = Duration::from_secs(31 * 24 * 3600);
/// Most entries in a `/list` answer: 100 years of months, 10 years of days.
pub const MAX_MONTHS: usize = 1200;
pub const MAX_DAYS: usize = 3660;
/// How long a browser or proxy may keep a log of a period that has ended. Short enough that a
/// user who opts out disappears from caches within a week.
pub const PAST_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Longest a request may take before it is answered 503 (waiting for a connection, the
/// query, reading its rows).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest path or query string accepted.
const MAX_URI_CHARS: usize = 512;
/// How often a request for an unknown channel id may refresh the room-id cache.
const ROOM_ID_REFRESH: Duration = Duration::from_secs(10);

/// The web page, embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// What the API needs from the running logger.
pub struct Api {
    reader: Arc<dyn LogReader>,
    live: watch::Receiver<LiveConfig>,
    room_ids: Mutex<(HashMap<String, String>, Option<Instant>)>,
}

impl Api {
    /// `live` follows the live config: its channels are the ones listed.
    pub fn new(reader: Arc<dyn LogReader>, live: watch::Receiver<LiveConfig>) -> Self {
        Api { reader, live, room_ids: Mutex::new((HashMap::new(), None)) }
    }

    // Every configured channel, not only this shard's: the shards share one database.
    fn channels(&self) -> Vec<String> {
        self.live.borrow().configured_channels().into_iter().collect()
    }

    /// Room ids of the configured channels, refreshed at most every [`ROOM_ID_REFRESH`] (and on
    /// first use): a stream of unknown ids costs one query per interval, not one per request.
    async fn room_ids(&self, force: bool) -> Result<HashMap<String, String>, ReadError> {
        {
            let cache = self.room_ids.lock().expect("room id cache");
            let fresh = cache.1.is_some_and(|t| t.elapsed() < ROOM_ID_REFRESH);
            if fresh || (!force && cache.1.is_some()) {
                return Ok(cache.0.clone());
            }
        }
        let ids = self.reader.room_ids(&self.channels()).await?;
        let mut cache = self.room_ids.lock().expect("room id cache");
        cache.0.extend(ids);
        cache.1 = Some(Instant::now());
        Ok(cache.0.clone())
    }

    /// Whether the user a route names asked not to be logged (`filters.opt_out_users`, read
    /// live: a reload that adds a user takes effect on the next request).
    fn opted_out(&self, who: &Who) -> bool {
        let live = self.live.borrow();
        match who {
            Who::Login(l) => live.is_opted_out(l, None),
            Who::Id(id) => live.is_opted_out("", Some(id)),
        }
    }

    /// Whether a line's sender is opted out, by login or user id (a renamed user's old login).
    fn line_opted_out(&self, l: &LogLine) -> bool {
        self.live.borrow().is_opted_out(&l.username, l.user_id.as_deref())
    }
}

/// An answer that is not a log: a status and a short plain-text reason.
#[derive(Debug)]
struct Reject(StatusCode, String);

impl Reject {
    fn bad(why: impl Into<String>) -> Self {
        Reject(StatusCode::BAD_REQUEST, why.into())
    }
    fn not_found(why: impl Into<String>) -> Self {
        Reject(StatusCode::NOT_FOUND, why.into())
    }
}

/// At most one log line per this long about failing reads: a client retrying in a loop must
/// not flood the log.
const READ_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl From<ReadError> for Reject {
    fn from(e: ReadError) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LAST: Mutex<Option<Instant>> = Mutex::new(None);
        static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
        let due = {
            let mut last = LAST.lock().expect("read error log lock");
            let due = last.is_none_or(|t| t.elapsed() >= READ_ERROR_LOG_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let source = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
            let more = SUPPRESSED.swap(0, Ordering::Relaxed);
            tracing::warn!(suppressed = more, "log API: {e}: {source} (answered 503)");
        } else {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        }
        Reject(StatusCode::SERVICE_UNAVAILABLE, "the log database is not answering; try again shortly".into())
    }
}

/// Every API path: the router's fallback.
pub(super) async fn handle(State(s): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let Some(api) = s.api else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = if method == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        r
    } else if method != Method::GET && method != Method::HEAD {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "the log API is read-only: use GET\n").into_response();
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
        r
    } else {
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, route(&api, &uri, &headers)).await;
        match answer.unwrap_or_else(|_| {
            Err(Reject(StatusCode::SERVICE_UNAVAILABLE, "the log query took too long; try a shorter range".into()))
        }) {
            Ok(r) => r,
            Err(Reject(code, why)) => {
                let mut r = (code, format!("{why}\n")).into_response();
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// A path piece, percent-decoded; not UTF-8 is a bad request.
fn decode_segment(s: &str) -> Result<String, Reject> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Reject::bad("bad %-escape in the path"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Reject::bad("the path is not UTF-8"))
}

/// A Twitch login, matched case-insensitively: 1 to 25 of `a-z 0-9 _`.
fn login(s: &str, what: &str) -> Result<String, Reject> {
    let l = s.to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.chars().count() <= 25
        && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(l).ok_or_else(|| Reject::bad(format!("{what} is not a Twitch login (1 to 25 of a-z, 0-9, _)")))
}

/// A Twitch user id: 1 to 20 digits.
fn user_id(s: &str, what: &str) -> Result<String, Reject> {
    let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.to_string()).ok_or_else(|| Reject::bad(format!("{what} is not a Twitch user id (digits)")))
}

fn number(s: &str, max_digits: usize, what: &str) -> Result<u32, Reject> {
    let ok = !s.is_empty() && s.len() <= max_digits && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| Reject::bad(format!("{what} must be a number of at most {max_digits} digits")))
}

/// The query string's parameters that the API reads.
#[derive(Default)]
struct Query {
    json: bool,
    raw: bool,
    reverse: bool,
    from: Option<i64>,
    to: Option<i64>,
    params: HashMap<String, String>,
}

fn query(uri: &Uri, headers: &HeaderMap) -> Result<Query, Reject> {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            // Flags: present means on, whatever the value.
            "json" => q.json = true,
            "raw" => q.raw = true,
            "reverse" => q.reverse = true,
            "type" => match v.as_ref() {
                "json" => q.json = true,
                "raw" => q.raw = true,
                "text" | "" => {}
                _ => return Err(Reject::bad("type must be json, raw or text")),
            },
            "from" | "to" => {
                let t = v.parse::<i64>().ok().filter(|t| (0..=253_402_300_799).contains(t));
                let t = t.ok_or_else(|| Reject::bad(format!("{k} must be Unix seconds")))?;
                if k == "from" {
                    q.from = Some(t);
                } else {
                    q.to = Some(t);
                }
            }
            _ => {
                q.params.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/json") {
        q.json = true;
    }
    Ok(q)
}

/// A channel in a path: by login, or by room id (among the configured channels).
async fn channel(api: &Api, kind: &str, value: &str) -> Result<String, Reject> {
    if kind == "channel" {
        return login(value, "the channel");
    }
    let id = user_id(value, "the channel id")?;
    for force in [false, true] {
        let ids = api.room_ids(force).await?;
        if let Some((name, _)) = ids.iter().find(|(_, v)| **v == id) {
            return Ok(name.clone());
        }
    }
    Err(Reject::not_found("no logged channel has this id"))
}

fn who(kind: &str, value: &str) -> Result<Who, Reject> {
    if kind == "user" {
        login(value, "the user").map(Who::Login)
    } else {
        user_id(value, "the user id").map(Who::Id)
    }
}

/// `[from, to)`.
type Span = (DateTime<Utc>, DateTime<Utc>);

/// `[from, to)` from the query, when both are given.
fn range(q: &Query) -> Result<Option<Span>, Reject> {
    match (q.from, q.to) {
        (None, None) => Ok(None),
        (Some(f), Some(t)) => {
            if t <= f {
                return Err(Reject::bad("to must be after from"));
            }
            if (t - f) as u64 > MAX_RANGE.as_secs() {
                return Err(Reject::bad(format!("from/to may span at most {} days", MAX_RANGE.as_secs() / 86400)));
            }
            let at = |s| Utc.timestamp_opt(s, 0).single().ok_or_else(|| Reject::bad("from/to out of range"));
            // `to` is inclusive in justlog's API: the whole second.
            Ok(Some((at(f)?, at(t + 1)?)))
        }
        _ => Err(Reject::bad("give both from and to")),
    }
}

fn month_range(y: &str, m: &str) -> Result<Span, Reject> {
    let (y, m) = (number(y, 4, "the year")? as i32, number(m, 2, "the month")?);
    let start = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(|| Reject::bad("no such month"))?;
    let end = if m == 12 { NaiveDate::from_ymd_opt(y + 1, 1, 1) } else { NaiveDate::from_ymd_opt(y, m + 1, 1) };
    let end = end.ok_or_else(|| Reject::bad("no such month"))?;
    Ok((midnight(start), midnight(end)))
}

fn day_range(y: &str, m: &str, d: &str) -> Result<Span, Reject> {
    let (y, m, d) = (number(y, 4, "the year")? as i32, number(m, 2, "the month")?, number(d, 2, "the day")?);
    let start = NaiveDate::from_ymd_opt(y, m, d).ok_or_else(|| Reject::bad("no such day"))?;
    let end = start.succ_opt().ok_or_else(|| Reject::bad("no such day"))?;
    Ok((midnight(start), midnight(end)))
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN))
}

async fn route(api: &Api, uri: &Uri, headers: &HeaderMap) -> Result<Response, Reject> {
    let path = uri.path();
    if path.chars().count() > MAX_URI_CHARS || uri.query().is_some_and(|q| q.chars().count() > MAX_URI_CHARS) {
        return Err(Reject::bad("the request is too long"));
    }
    let raw_segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    if raw_segments.len() > 7 {
        return Err(Reject::not_found("no such route"));
    }
    let segs = raw_segments.iter().map(|s| decode_segment(s)).collect::<Result<Vec<_>, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query(uri, headers)?;
    match s.as_slice() {
        [""] => Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
            .into_response()),
        ["channels"] => channels(api).await,
        ["list"] => list(api, &q).await,
        [ck @ ("channel" | "channelid"), c, rest @ ..] => {
            let name = channel(api, ck, c).await?;
            match rest {
                [] => match range(&q)? {
                    Some((from, to)) => channel_log(api, &name, from, to, &q).await,
                    None => {
                        let today = Utc::now().date_naive();
                        let to = format!("/{ck}/{c}/{}/{}/{}", today.year(), today.month(), today.day());
                        Ok(redirect(&to, uri))
                    }
                },
                ["random"] => random(api, &name, None, &q).await,
                [uk @ ("user" | "userid"), u, rest @ ..] => {
                    let w = who(uk, u)?;
                    if api.opted_out(&w) {
                        return Err(Reject(StatusCode::FORBIDDEN, "this user has opted out of being logged".into()));
                    }
                    match rest {
                        [] => match range(&q)? {
                            Some((from, to)) => user_log(api, &name, &w, from, to, &q).await,
                            None => {
                                let months = api.reader.user_months(&name, &w, 1).await?;
                                let (y, m) =
                                    months.first().ok_or_else(|| Reject::not_found("no logs for this user"))?;
                                Ok(redirect(&format!("/{ck}/{c}/{uk}/{u}/{y}/{m}"), uri))
                            }
                        },
                        ["random"] => random(api, &name, Some(&w), &q).await,
                        [y, m] => {
                            let (from, to) = range(&q)?.map_or_else(|| month_range(y, m), Ok)?;
                            user_log(api, &name, &w, from, to, &q).await
                        }
                        _ => Err(Reject::not_found("no such route")),
                    }
                }
                [y, m, d] => {
                    let (from, to) = range(&q)?.map_or_else(|| day_range(y, m, d), Ok)?;
                    channel_log(api, &name, from, to, &q).await
                }
                _ => Err(Reject::not_found("no such route")),
            }
        }
        _ => Err(Reject::not_found("no such route")),
    }
}

/// 302 to `to`, keeping the query string.
fn redirect(to: &str, uri: &Uri) -> Response {
    let location = match uri.query() {
        Some(q) => format!("{to}?{q}"),
        None => to.to_string(),
    };
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(v: &serde_json::Value, cache: &'static str) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

async fn channels(api: &Api) -> Result<Response, Reject> {
    // A channel added by a reload has no id cached yet: look again (at most every 10 s).
    let cached = api.room_ids(false).await?;
    let missing = api.channels().iter().any(|c| !cached.contains_key(c));
    let ids = if missing { api.room_ids(true).await? } else { cached };
    let list: Vec<_> = api
        .channels()
        .into_iter()
        .map(|name| serde_json::json!({"userID": ids.get(&name).cloned().unwrap_or_default(), "name": name}))
        .collect();
    Ok(json_response(&serde_json::json!({ "channels": list }), "no-cache"))
}

async fn list(api: &Api, q: &Query) -> Result<Response, Reject> {
    let p = |k: &str| q.params.get(k).map(String::as_str);
    let name = match (p("channel"), p("channelid")) {
        (Some(c), None) => channel(api, "channel", c).await?,
        (None, Some(c)) => channel(api, "channelid", c).await?,
        _ => return Err(Reject::bad("give channel or channelid")),
    };
    let w = match (p("user"), p("userid")) {
        (Some(u), None) => Some(who("user", u)?),
        (None, Some(u)) => Some(who("userid", u)?),
        (None, None) => None,
        _ => return Err(Reject::bad("give user or userid, not both")),
    };
    let logs: Vec<serde_json::Value> = match &w {
        Some(w) => {
            if api.opted_out(w) {
                return Err(Reject(StatusCode::FORBIDDEN, "this user has opted out of being logged".into()));
            }
            let months = api.reader.user_months(&name, w, MAX_MONTHS).await?;
            months.iter().map(|(y, m)| serde_json::json!({"year": y.to_string(), "month": m.to_string()})).collect()
        }
        None => {
            let days = api.reader.channel_days(&name, MAX_DAYS).await?;
            days.iter()
                .map(|d| {
                    serde_json::json!({"year": d.year().to_string(), "month": d.month().to_string(), "day": d.day().to_string()})
                })
                .collect()
        }
    };
    if logs.is_empty() {
        return Err(Reject::not_found(if w.is_some() { "no logs for this user" } else { "no logs for this channel" }));
    }
    Ok(json_response(&serde_json::json!({ "availableLogs": logs }), "no-cache"))
}

fn order(q: &Query) -> Order {
    if q.reverse {
        Order::NewestFirst
    } else {
        Order::OldestFirst
    }
}

async fn user_log(
    api: &Api,
    channel: &str,
    w: &Who,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    q: &Query,
) -> Result<Response, Reject> {
    let lines = api.reader.user_lines(channel, w, from, to, order(q), MAX_LINES + 1).await?;
    if lines.iter().any(|l| api.line_opted_out(l)) {
        return Err(Reject(StatusCode::FORBIDDEN, "this user has opted out of being logged".into()));
    }
    if lines.is_empty() {
        return Err(Reject::not_found("no logs for this user in this period"));
    }
    Ok(render(lines, q, cache_for(to)).await)
}

async fn channel_log(
    api: &Api,
    channel: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    q: &Query,
) -> Result<Response, Reject> {
    let mut lines = api.reader.channel_lines(channel, from, to, order(q), MAX_LINES + 1).await?;
    lines.retain(|l| !api.line_opted_out(l));
    if lines.is_empty() {
        return Err(Reject::not_found("no logs for this channel in this period"));
    }
    Ok(render(lines, q, cache_for(to)).await)
}

async fn random(api: &Api, channel: &str, w: Option<&Who>, q: &Query) -> Result<Response, Reject> {
    // A few tries, so that an opted-out user's line is skipped rather than served.
    for _ in 0..5 {
        let Some(l) = api.reader.random_line(channel, w).await? else {
            return Err(Reject::not_found("no logs"));
        };
        if !api.line_opted_out(&l) {
            return Ok(log_response(vec![l], q, "no-store"));
        }
    }
    Err(Reject::not_found("no logs"))
}

/// Logs of a period that ended before today (UTC) do not change: cacheable. Today's and this
/// month's do.
fn cache_for(to: DateTime<Utc>) -> &'static str {
    if to <= midnight(Utc::now().date_naive()) {
        const PAST: &str = "public, max-age=604800";
        PAST
    } else {
        "no-cache"
    }
}

/// Formats on a blocking thread: 50,000 lines take a while, and the async workers also run
/// the writer and the Twitch clients.
async fn render(lines: Vec<LogLine>, q: &Query, cache: &'static str) -> Response {
    let flags = Query { json: q.json, raw: q.raw, ..Query::default() };
    match tokio::task::spawn_blocking(move || log_response(lines, &flags, cache)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "formatting the log failed\n").into_response(),
    }
}

fn log_response(mut lines: Vec<LogLine>, q: &Query, cache: &'static str) -> Response {
    let truncated = lines.len() > MAX_LINES;
    lines.truncate(MAX_LINES);
    let mut r = if q.json {
        #[derive(serde::Serialize)]
        struct Messages<'a> {
            messages: Vec<JsonMessage<'a>>,
        }
        let body = Messages { messages: lines.iter().map(json_line).collect() };
        let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        r
    } else {
        let mut out = String::with_capacity(lines.len() * 80);
        for l in &lines {
            if q.raw {
                out.push_str(&raw_line(l));
            } else {
                out.push_str(&text_line(l));
            }
            out.push('\n');
        }
        let mut r = Response::new(Body::from(out));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        r
    };
    if truncated {
        r.headers_mut().insert("x-truncated", HeaderValue::from_static("50000 lines; use from/to for the rest"));
    }
    r
}

/// `[2024-5-17 14:03:09] #channel login: text`, justlog's text form (no zero padding in the date).
pub fn text_line(l: &LogLine) -> String {
    let t = l.sent_at;
    let mut s = format!("[{}-{}-{} {}] #{} ", t.year(), t.month(), t.day(), t.format("%H:%M:%S"), l.channel);
    match l.kind {
        LineKind::Chat => {
            let _ = write!(s, "{}: {}", l.username, l.text);
        }
        LineKind::ClearChat | LineKind::UserNotice => s.push_str(&l.system_text),
    }
    s
}

/// badge JSON object text → Twitch's `name/version,…`.
fn badge_tag(json: Option<&str>) -> String {
    let Some(map) = json.and_then(|j| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).ok())
    else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}/{s}"),
            other => format!("{k}/{other}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The line's IRC tags, rebuilt from the stored columns (Twitch's names and formats).
pub fn tags(l: &LogLine) -> BTreeMap<String, String> {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let mut t = BTreeMap::new();
    t.insert("room-id".into(), l.room_id.clone().unwrap_or_default());
    t.insert("tmi-sent-ts".into(), l.sent_at.timestamp_millis().to_string());
    if l.kind == LineKind::ClearChat {
        if let Some(d) = l.ban_duration {
            t.insert("ban-duration".into(), d.to_string());
        }
        if let Some(u) = &l.target_user_id {
            t.insert("target-user-id".into(), u.clone());
        }
        return t;
    }
    t.insert("badge-info".into(), badge_tag(l.badge_info.as_deref()));
    t.insert("badges".into(), badge_tag(l.badges.as_deref()));
    t.insert("color".into(), l.color.clone().unwrap_or_default());
    t.insert("display-name".into(), l.display_name.clone().unwrap_or_else(|| l.username.clone()));
    t.insert("emotes".into(), l.emotes.clone().unwrap_or_default());
    if !l.id.is_empty() {
        t.insert("id".into(), l.id.clone());
    }
    if let Some(u) = &l.user_id {
        t.insert("user-id".into(), u.clone());
    }
    if l.kind == LineKind::UserNotice {
        t.insert("login".into(), l.username.clone());
        if let Some(m) = &l.msg_id {
            t.insert("msg-id".into(), m.clone());
        }
        t.insert("system-msg".into(), l.system_text.clone());
        let params = l
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(p).ok());
        for (k, v) in params.into_iter().flatten() {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            t.insert(k, v);
        }
        return t;
    }
    if let Some(f) = l.first_msg {
        t.insert("first-msg".into(), flag(f));
    }
    t.insert("mod".into(), flag(l.is_mod));
    t.insert("subscriber".into(), flag(l.is_subscriber));
    if l.bits > 0 {
        t.insert("bits".into(), l.bits.to_string());
    }
    if let Some(p) = &l.reply_parent_msg_id {
        t.insert("reply-parent-msg-id".into(), p.clone());
    }
    if let Some(p) = &l.reply_parent_user_login {
        t.insert("reply-parent-user-login".into(), p.clone());
    }
    t
}

/// IRCv3 tag value escaping.
fn escape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The IRC line: as received where stored, else rebuilt from the stored columns.
pub fn raw_line(l: &LogLine) -> String {
    raw_line_with(l, &tags(l))
}

fn raw_line_with(l: &LogLine, tags: &BTreeMap<String, String>) -> String {
    if let Some(r) = &l.raw {
        return r.clone();
    }
    let mut t = String::with_capacity(256);
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            t.push(';');
        }
        t.push_str(k);
        t.push('=');
        t.push_str(&escape_tag(v));
    }
    let tags = t;
    // Control characters cannot be in a line Twitch sent; never let one break the line apart.
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    match l.kind {
        LineKind::Chat => {
            let text = if l.is_action { format!("\u{1}ACTION {}\u{1}", l.text) } else { l.text.clone() };
            let u = &l.username;
            format!("@{tags} :{u}!{u}@{u}.tmi.twitch.tv PRIVMSG #{} :{}", l.channel, clean(&text))
        }
        LineKind::ClearChat if l.username.is_empty() => format!("@{tags} :tmi.twitch.tv CLEARCHAT #{}", l.channel),
        LineKind::ClearChat => format!("@{tags} :tmi.twitch.tv CLEARCHAT #{} :{}", l.channel, l.username),
        LineKind::UserNotice if l.text.is_empty() => format!("@{tags} :tmi.twitch.tv USERNOTICE #{}", l.channel),
        LineKind::UserNotice => format!("@{tags} :tmi.twitch.tv USERNOTICE #{} :{}", l.channel, clean(&l.text)),
    }
}

/// One message of the JSON form (justlog's field names).
#[derive(serde::Serialize)]
pub struct JsonMessage<'a> {
    text: &'a str,
    #[serde(rename = "systemText")]
    system_text: &'a str,
    username: &'a str,
    #[serde(rename = "displayName")]
    display_name: &'a str,
    channel: &'a str,
    timestamp: String,
    id: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    raw: String,
    tags: BTreeMap<String, String>,
}

/// A line in the JSON form: tags built once, for `tags` and for `raw`.
pub fn json_line(l: &LogLine) -> JsonMessage<'_> {
    let mut tags = tags(l);
    let raw = raw_line_with(l, &tags);
    // The common web frontend reads these on every message.
    for k in ["color", "emotes"] {
        tags.entry(k.to_string()).or_default();
    }
    JsonMessage {
        text: &l.text,
        system_text: &l.system_text,
        username: &l.username,
        display_name: l.display_name.as_deref().unwrap_or(&l.username),
        channel: &l.channel,
        timestamp: l.sent_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        id: &l.id,
        kind: l.kind as u8,
        raw,
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LogLine {
        LogLine {
            kind: LineKind::Chat,
            id: "a1b2".into(),
            channel: "chan".into(),
            room_id: Some("12345".into()),
            user_id: Some("777".into()),
            username: "ivy".into(),
            display_name: Some("Ivy".into()),
            text: "hello; world".into(),
            system_text: String::new(),
            color: Some("#1E90FF".into()),
            emotes: None,
            badges: Some(r#"{"subscriber":12,"premium":"1"}"#.into()),
            badge_info: None,
            is_mod: false,
            is_subscriber: true,
            bits: 0,
            is_action: false,
            first_msg: Some(false),
            reply_parent_msg_id: None,
            reply_parent_user_login: None,
            sent_at: Utc.with_ymd_and_hms(2024, 5, 7, 4, 3, 9).unwrap(),
            raw: None,
            msg_id: None,
            params: None,
            ban_duration: None,
            target_user_id: None,
        }
    }

    #[test]
    fn a_chat_line_in_text_form_has_an_unpadded_date_and_a_padded_time() {
        assert_eq!(text_line(&sample()), "[2024-5-7 04:03:09] #chan ivy: hello; world");
    }

    #[test]
    fn a_rebuilt_raw_line_escapes_tag_values_and_keeps_the_text() {
        let mut l = sample();
        l.display_name = Some("I vy;".into());
        let raw = raw_line(&l);
        assert!(raw.contains("display-name=I\\svy\\:;"), "{raw}");
        assert!(raw.ends_with(" :ivy!ivy@ivy.tmi.twitch.tv PRIVMSG #chan :hello; world"), "{raw}");
        assert!(raw.contains("badges=premium/1,subscriber/12;"), "{raw}");
    }

    #[test]
    fn an_answer_past_the_line_limit_is_cut_there_and_says_so() {
        let q = Query::default();
        let r = log_response(vec![sample(); MAX_LINES + 1], &q, "no-cache");
        assert!(r.headers().get("x-truncated").is_some());
        let r = log_response(vec![sample(); MAX_LINES], &q, "no-cache");
        assert!(r.headers().get("x-truncated").is_none());
        let text = log_response(vec![sample(); MAX_LINES + 1], &q, "no-cache").into_body();
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(text, usize::MAX)).unwrap().unwrap();
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), MAX_LINES);
    }

    proptest! {
        /// Whatever the path, the parser answers with a status: it never panics, and what it
        /// accepts as a login is always in the grammar.
        #[test]
        fn any_path_segment_is_decoded_or_refused_without_panicking(s in "\\PC{0,40}") {
            if let Ok(d) = decode_segment(&s) {
                if let Ok(l) = login(&d, "x") {
                    prop_assert!(l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
                }
            }
        }

        #[test]
        fn a_rebuilt_raw_line_is_one_line_whatever_the_text(text in "(?s).{0,60}", name in "(?s).{0,20}") {
            let mut l = sample();
            l.text = text;
            l.display_name = Some(name);
            let raw = raw_line(&l);
            prop_assert!(!raw.contains('\n') && !raw.contains('\r'));
        }
    }
}
