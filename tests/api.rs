//! The justlog-compatible log API, end to end: the real binary logs lines from the fake Twitch
//! server into a real database, and every route is read back over HTTP. Expected bodies are
//! written out by hand. Each scenario is written once and `for_both_stores!` runs it on
//! PostgreSQL and on a SQLite file; tests of one store's reader (plans, pool) name it.

mod common;

use chrono::{Datelike, Utc};
use common::backends::TestStore;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const ANON: &str = "justinfan12345";

/// One response: status, headers (lowercase names), body bytes as text.
struct Reply {
    code: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A plain HTTP/1.1 request with `target` sent as given (bytes: it may be anything).
async fn request_bytes(addr: &str, method: &str, target: &[u8], extra: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(target);
    req.extend_from_slice(format!(" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes());
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(60 * SEC, s.read_to_end(&mut out)).await.expect("an answer within 60 s").unwrap();
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { code, headers, body: body.to_string() }
}

async fn req(addr: &str, path: &str) -> Reply {
    request_bytes(addr, "GET", path.as_bytes(), "").await
}

/// A real-looking tagged PRIVMSG sent at `ts` (Unix seconds).
#[allow(clippy::too_many_arguments)]
fn chat(channel: &str, room: &str, label: &str, login: &str, display: &str, uid: &str, text: &str, ts: i64) -> String {
    format!(
        "@badge-info=;badges=subscriber/12;color=#1E90FF;display-name={display};emotes=;first-msg=0;flags=;id={id};mod=0;room-id={room};subscriber=1;tmi-sent-ts={ms};turbo=0;user-id={uid};user-type= :{login}!{login}@{login}.tmi.twitch.tv PRIVMSG #{channel} :{text}",
        id = msg_uuid(label),
        ms = ts * 1000,
    )
}

/// 2024-05-31 23:59:59 UTC: the last second of May.
const MAY_LAST: i64 = 1_717_199_999;
/// 2024-06-01 00:00:00 UTC.
const JUNE_FIRST: i64 = 1_717_200_000;

/// A logger on `chan` (room 12345) and `other` (room 999) that has stored:
/// - chan: ivy (777) at MAY_LAST "last of may" and JUNE_FIRST "first of june"; bob (888) at
///   2024-06-01 12:00 "hi ivy"; ivy renamed ivy_new (777) at 2024-06-02 08:00 "new name"; bob's
///   `/me waves` at 2024-06-02 09:00; carl (999) now "right now".
/// - other: ivy at 2024-06-01 10:00 "elsewhere".
struct Logged {
    db: TestStore,
    fake: FakeTwitch,
    logger: Logger,
    addr: String,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    fake_url: String,
}

fn config(fake: &str, extra: &str) -> String {
    format!(
        "[twitch]\nserver = \"{fake}\"\n[batch]\nflush_interval = \"100ms\"\n{extra}[accounts.default]\n[groups.default]\naccounts = [\"default\"]\nchannels = [\"chan\", \"other\"]\n"
    )
}

async fn logged(db: TestStore, extra: &str) -> Logged {
    let fake = FakeTwitch::start().await;
    let (dir, path) = config_dir(&config(&fake.url(), extra));
    let logger = Logger::spawn(file_mode(&path, &db.url()));
    let addr = http_addr(&logger).await;
    fake.wait_for("joined", 15 * SEC, |f| {
        let j = f.joined_by(ANON);
        j.contains("chan") && j.contains("other")
    })
    .await;
    let now = Utc::now().timestamp();
    for l in [
        chat("chan", "12345", "may-last", "ivy", "Ivy", "777", "last of may", MAY_LAST),
        chat("chan", "12345", "june-first", "ivy", "Ivy", "777", "first of june", JUNE_FIRST),
        chat("chan", "12345", "bob-hi", "bob", "Bob", "888", "hi ivy", JUNE_FIRST + 12 * 3600),
        chat("chan", "12345", "renamed", "ivy_new", "Ivy_New", "777", "new name", JUNE_FIRST + 32 * 3600),
        chat("chan", "12345", "bob-waves", "bob", "Bob", "888", "\u{1}ACTION waves\u{1}", JUNE_FIRST + 33 * 3600),
        chat("chan", "12345", "carl-now", "carl", "Carl", "999", "right now", now),
        chat("other", "999", "elsewhere", "ivy", "Ivy", "777", "elsewhere", JUNE_FIRST + 10 * 3600),
    ] {
        let channel = if l.contains("PRIVMSG #other") { "other" } else { "chan" };
        fake.to_channel(channel, &l);
    }
    db.wait_count("SELECT count(*) FROM chat_messages", 7, 15 * SEC).await;
    let fake_url = fake.url();
    Logged { db, fake, logger, addr, path, _dir: dir, fake_url }
}

async fn a_users_month_is_served_as_text_json_and_raw_with_the_month_boundary_in_utc(store: TestStore) {
    let l = logged(store, "").await;
    let june = req(&l.addr, "/channel/chan/user/ivy/2024/6").await;
    assert_eq!((june.code, june.body.as_str()), (200, "[2024-6-1 00:00:00] #chan ivy: first of june\n"));
    assert_eq!(june.header("content-type"), "text/plain; charset=utf-8");
    let may = req(&l.addr, "/channel/chan/user/ivy/2024/5").await;
    assert_eq!((may.code, may.body.as_str()), (200, "[2024-5-31 23:59:59] #chan ivy: last of may\n"));
    // Zero-padded months and capitals are the same log.
    let padded = req(&l.addr, "/channel/CHAN/user/Ivy/2024/06").await;
    assert_eq!(padded.body, june.body);

    let json = req(&l.addr, "/channel/chan/user/ivy/2024/6?json").await;
    assert_eq!(json.header("content-type"), "application/json");
    let id = msg_uuid("june-first");
    let raw = format!("@badge-info=;badges=subscriber/12;color=#1E90FF;display-name=Ivy;emotes=;first-msg=0;id={id};mod=0;room-id=12345;subscriber=1;tmi-sent-ts=1717200000000;user-id=777 :ivy!ivy@ivy.tmi.twitch.tv PRIVMSG #chan :first of june");
    let expected = serde_json::json!({"messages": [{
        "text": "first of june", "systemText": "", "username": "ivy", "displayName": "Ivy", "channel": "chan",
        "timestamp": "2024-06-01T00:00:00.000Z", "id": id, "type": 1, "raw": raw,
        "tags": {"badge-info": "", "badges": "subscriber/12", "color": "#1E90FF", "display-name": "Ivy", "emotes": "",
                 "first-msg": "0", "id": id, "mod": "0", "room-id": "12345", "subscriber": "1",
                 "tmi-sent-ts": "1717200000000", "user-id": "777"},
    }]});
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json.body).unwrap(), expected);
    // `type=json` and a JSON Content-Type ask for the same.
    assert_eq!(req(&l.addr, "/channel/chan/user/ivy/2024/6?type=json").await.body, json.body);
    let ct =
        request_bytes(&l.addr, "GET", b"/channel/chan/user/ivy/2024/6", "Content-Type: application/json\r\n").await;
    assert_eq!(ct.body, json.body);

    let raw_reply = req(&l.addr, "/channel/chan/user/ivy/2024/6?raw").await;
    assert_eq!(raw_reply.body, format!("{raw}\n"));
    assert_eq!(req(&l.addr, "/channel/chan/user/ivy/2024/6?type=raw").await.body, raw_reply.body);
}

async fn a_channels_day_lists_every_user_oldest_first_or_reversed_and_actions_keep_their_text(store: TestStore) {
    let l = logged(store, "").await;
    let day = req(&l.addr, "/channel/chan/2024/6/1").await;
    assert_eq!(day.code, 200);
    assert_eq!(day.body, "[2024-6-1 00:00:00] #chan ivy: first of june\n[2024-6-1 12:00:00] #chan bob: hi ivy\n");
    let rev = req(&l.addr, "/channel/chan/2024/6/1?reverse").await;
    assert_eq!(rev.body, "[2024-6-1 12:00:00] #chan bob: hi ivy\n[2024-6-1 00:00:00] #chan ivy: first of june\n");
    // `reverse=false` is still the flag: present means on.
    assert_eq!(req(&l.addr, "/channel/chan/2024/6/1?reverse=false").await.body, rev.body);
    let by_id = req(&l.addr, "/channelid/12345/2024/6/2").await;
    assert_eq!(by_id.body, "[2024-6-2 08:00:00] #chan ivy_new: new name\n[2024-6-2 09:00:00] #chan bob: waves\n");
    let raw = req(&l.addr, "/channel/chan/2024/6/2?raw&reverse").await;
    let first = raw.body.lines().next().unwrap();
    assert!(first.ends_with(" :bob!bob@bob.tmi.twitch.tv PRIVMSG #chan :\u{1}ACTION waves\u{1}"), "{first}");
    // The last second of May is not on June 1st, and another channel's lines are not here.
    assert!(!day.body.contains("last of may") && !day.body.contains("elsewhere"));
}

async fn userid_routes_return_both_logins_of_a_renamed_user(store: TestStore) {
    let l = logged(store, "").await;
    let by_id = req(&l.addr, "/channel/chan/userid/777/2024/6").await;
    assert_eq!(
        by_id.body,
        "[2024-6-1 00:00:00] #chan ivy: first of june\n[2024-6-2 08:00:00] #chan ivy_new: new name\n"
    );
    let mixed = req(&l.addr, "/channelid/12345/userid/777/2024/6").await;
    assert_eq!(mixed.body, by_id.body);
    let by_login = req(&l.addr, "/channelid/12345/user/ivy/2024/6").await;
    assert_eq!(by_login.body, "[2024-6-1 00:00:00] #chan ivy: first of june\n");
    let list = req(&l.addr, "/list?channelid=12345&userid=777").await;
    assert_eq!(list.body, r#"{"availableLogs":[{"month":"6","year":"2024"},{"month":"5","year":"2024"}]}"#);
}

async fn channels_and_lists_are_newest_first_with_unpadded_strings(store: TestStore) {
    let l = logged(store, "").await;
    let ch = req(&l.addr, "/channels").await;
    assert_eq!(ch.body, r#"{"channels":[{"name":"chan","userID":"12345"},{"name":"other","userID":"999"}]}"#);
    let months = req(&l.addr, "/list?channel=chan&user=ivy").await;
    assert_eq!(months.body, r#"{"availableLogs":[{"month":"6","year":"2024"},{"month":"5","year":"2024"}]}"#);
    let now = Utc::now();
    let days = req(&l.addr, "/list?channel=chan").await;
    let expected = format!(
        r#"{{"availableLogs":[{{"day":"{}","month":"{}","year":"{}"}},{{"day":"2","month":"6","year":"2024"}},{{"day":"1","month":"6","year":"2024"}},{{"day":"31","month":"5","year":"2024"}}]}}"#,
        now.day(),
        now.month(),
        now.year()
    );
    assert_eq!(days.body, expected);
    assert_eq!(req(&l.addr, "/list?channel=chan&user=nobody").await.code, 404);
    assert_eq!(req(&l.addr, "/list").await.code, 400);
    assert_eq!(req(&l.addr, "/list?channel=chan&user=a&userid=1").await.code, 400);
}

async fn routes_without_a_date_redirect_to_the_latest_month_or_today_keeping_the_query(store: TestStore) {
    let l = logged(store, "").await;
    let r = req(&l.addr, "/channel/chan/user/ivy?json").await;
    assert_eq!((r.code, r.header("location")), (302, "/channel/chan/user/ivy/2024/6?json"));
    let r = req(&l.addr, "/channelid/12345/userid/777").await;
    assert_eq!((r.code, r.header("location")), (302, "/channelid/12345/userid/777/2024/6"));
    let today = Utc::now();
    let r = req(&l.addr, "/channel/chan").await;
    let expected = format!("/channel/chan/{}/{}/{}", today.year(), today.month(), today.day());
    assert_eq!((r.code, r.header("location")), (302, expected.as_str()));
    assert_eq!(req(&l.addr, "/channel/chan/user/nobody").await.code, 404);
}

async fn from_and_to_select_a_range_in_unix_seconds_up_to_31_days(store: TestStore) {
    let l = logged(store, "").await;
    let r = req(&l.addr, &format!("/channel/chan/user/ivy?from={MAY_LAST}&to={JUNE_FIRST}")).await;
    assert_eq!(r.body, "[2024-5-31 23:59:59] #chan ivy: last of may\n[2024-6-1 00:00:00] #chan ivy: first of june\n");
    let r = req(&l.addr, &format!("/channel/chan?from={MAY_LAST}&to={}", JUNE_FIRST + 12 * 3600)).await;
    assert_eq!(r.body.lines().count(), 3, "{}", r.body);
    let too_long = req(&l.addr, &format!("/channel/chan?from=0&to={JUNE_FIRST}")).await;
    assert_eq!((too_long.code, too_long.body.as_str()), (400, "from/to may span at most 31 days\n"));
    assert_eq!(req(&l.addr, "/channel/chan?from=5").await.code, 400);
    assert_eq!(req(&l.addr, "/channel/chan?from=5&to=4").await.code, 400);
    assert_eq!(req(&l.addr, "/channel/chan?from=x&to=4").await.code, 400);
}

async fn random_serves_one_line_of_the_user_or_the_channel(store: TestStore) {
    let l = logged(store, "").await;
    for _ in 0..5 {
        let r = req(&l.addr, "/channel/chan/user/bob/random").await;
        assert_eq!(r.code, 200);
        assert!(
            ["[2024-6-1 12:00:00] #chan bob: hi ivy\n", "[2024-6-2 09:00:00] #chan bob: waves\n"]
                .contains(&r.body.as_str()),
            "{}",
            r.body
        );
        assert_eq!(r.header("cache-control"), "no-store");
        let r = req(&l.addr, "/channelid/999/random?json").await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["messages"][0]["text"], "elsewhere");
    }
    assert_eq!(req(&l.addr, "/channel/chan/user/nobody/random").await.code, 404);
    // The other channel's one message: random serves chat messages only.
}

async fn cors_nosniff_and_caching_past_months_but_not_the_current_one(store: TestStore) {
    let l = logged(store, "").await;
    let past = req(&l.addr, "/channel/chan/user/ivy/2024/5").await;
    assert_eq!(past.header("access-control-allow-origin"), "*");
    assert_eq!(past.header("x-content-type-options"), "nosniff");
    assert_eq!(past.header("cache-control"), "public, max-age=604800");
    let now = Utc::now();
    let current = req(&l.addr, &format!("/channel/chan/user/carl/{}/{}", now.year(), now.month())).await;
    assert_eq!(current.code, 200, "{}", current.body);
    assert!(current.body.starts_with(&format!("[{}-{}-", now.year(), now.month())), "{}", current.body);
    assert!(current.body.ends_with("] #chan carl: right now\n"), "{}", current.body);
    assert_eq!(current.header("cache-control"), "no-cache");
    let today = req(&l.addr, &format!("/channel/chan/{}/{}/{}", now.year(), now.month(), now.day())).await;
    assert_eq!(today.header("cache-control"), "no-cache");
    let opts = request_bytes(
        &l.addr,
        "OPTIONS",
        b"/channel/chan/user/ivy/2024/5",
        "Origin: https://example.org\r\nAccess-Control-Request-Method: GET\r\n",
    )
    .await;
    assert_eq!(opts.code, 204);
    assert_eq!(opts.header("access-control-allow-origin"), "*");
    assert_eq!(opts.header("access-control-allow-methods"), "GET, OPTIONS");
    let post = request_bytes(&l.addr, "POST", b"/channels", "Content-Length: 0\r\n").await;
    assert_eq!(post.code, 405);
    // Errors carry CORS too, so a web client can read the reason.
    let missing = req(&l.addr, "/channel/chan/user/nobody/2024/6").await;
    assert_eq!((missing.code, missing.header("access-control-allow-origin")), (404, "*"));
}

async fn unknown_channels_users_and_empty_periods_are_404_with_a_reason(store: TestStore) {
    let l = logged(store, "").await;
    let cases = [
        ("/channel/nochan/2024/6/1", "no logs for this channel in this period\n"),
        ("/channel/chan/2023/6/1", "no logs for this channel in this period\n"),
        ("/channel/chan/user/nobody/2024/6", "no logs for this user in this period\n"),
        ("/channelid/5555/2024/6/1", "no logged channel has this id\n"),
        ("/nosuch", "no such route\n"),
        ("/channel/chan/user/ivy/2024/6/1", "no such route\n"),
    ];
    for (path, body) in cases {
        let r = req(&l.addr, path).await;
        assert_eq!((r.code, r.body.as_str()), (404, body), "{path}");
        assert_eq!(r.header("content-type"), "text/plain; charset=utf-8", "{path}");
    }
}

async fn hostile_paths_and_parameters_get_400_or_404_never_500_and_the_logger_keeps_logging(store: TestStore) {
    let l = logged(store, "").await;
    let long = "a".repeat(10_000);
    let hostile: Vec<Vec<u8>> = vec![
        b"/channel/../../etc/passwd".to_vec(),
        b"/channel/%2e%2e%2f%2e%2e%2fetc/2024/6/1".to_vec(),
        b"/channel/chan'%20OR%201=1--/2024/6/1".to_vec(),
        b"/channel/chan/user/ivy'%3B%20DROP%20TABLE%20chat_messages%3B--/2024/6".to_vec(),
        b"/channel/chan/userid/1%20OR%201=1/2024/6".to_vec(),
        b"/channelid/-1/2024/6/1".to_vec(),
        b"/channel/chan/2024/13/1".to_vec(),
        b"/channel/chan/2024/2/30".to_vec(),
        b"/channel/chan/99999/1/1".to_vec(),
        b"/channel/chan/2024/6/1?type=xml".to_vec(),
        b"/channel/chan/2024/6/1?from=99999999999999999999&to=1".to_vec(),
        b"/channel/%ff%fe/2024/6/1".to_vec(),
        b"/channel/ch%00an/2024/6/1".to_vec(),
        b"/channel/ch%zzan/2024/6/1".to_vec(),
        b"/list?channel=chan&user=%ff".to_vec(),
        b"/list?channel=chan'--".to_vec(),
        b"/channel/\xff\xfe/2024/6/1".to_vec(),
        format!("/channel/{long}/2024/6/1").into_bytes(),
        format!("/channel/chan/2024/6/1?{long}").into_bytes(),
        b"/channel/chan/user/ivy/2024/6/1/2/3/4/5".to_vec(),
        b"//////////".to_vec(),
    ];
    for target in &hostile {
        let r = request_bytes(&l.addr, "GET", target, "").await;
        let shown = String::from_utf8_lossy(target).chars().take(80).collect::<String>();
        assert!(r.code == 400 || r.code == 404, "{shown}: {} {}", r.code, r.body);
    }
    // Still logging, and the table is whole.
    l.fake.to_channel("chan", &chat("chan", "12345", "after", "dan", "Dan", "4", "after the attack", JUNE_FIRST));
    l.db.wait_count("SELECT count(*) FROM chat_messages", 8, 15 * SEC).await;
    assert_eq!(req(&l.addr, "/channel/chan/user/dan/2024/6").await.code, 200);
}

async fn the_page_is_served_from_the_binary_and_api_false_turns_every_route_off(store: TestStore) {
    let l = logged(store, "").await;
    let page = req(&l.addr, "/").await;
    assert_eq!(page.code, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page.body.contains("fetch(\"/channels\")"), "{}", page.body);
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "the page loads nothing from elsewhere");
    drop(l);

    let off = logged(TestStore::sqlite().await, "[http]\napi = false\n").await;
    for path in ["/", "/channels", "/channel/chan/2024/6/1", "/list?channel=chan"] {
        assert_eq!(req(&off.addr, path).await.code, 404, "{path}");
    }
    assert_eq!(req(&off.addr, "/healthz").await.code, 200);
    let _ = (&off.logger, &off.path, &off.fake_url);
}

/// Every API statement, EXPLAINed on 200,000 messages and 40,000 events in 20 channels: index
/// scans on (channel, user, time) or (channel, time) of both tables, never a sequential scan.
#[tokio::test]
async fn every_api_query_is_an_index_scan_on_a_large_table() {
    use twitch_chat_logger::store::pg_read::sql;
    use twitch_chat_logger::store::read::Order;
    let db = TestDb::new().await;
    twitch_chat_logger::store::postgres::MIGRATOR.run(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, text, sent_at)
         SELECT gen_random_uuid()::text, 'c' || (i % 20), (i % 20)::text, (i % 5000)::text, 'u' || (i % 5000),
                'hello ' || i, timestamptz '2024-01-01' + i * interval '1 minute'
         FROM generate_series(1, 200000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE chat_messages").execute(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO chat_events (event_key, kind, msg_id, channel, room_id, user_id, login, system_msg, sent_at)
         SELECT gen_random_uuid()::text, (ARRAY['usernotice', 'clearchat', 'roomstate'])[1 + i % 3], 'sub', 'c' || (i % 20),
                (i % 20)::text, (i % 5000)::text, 'u' || (i % 5000), 'x subscribed', timestamptz '2024-01-01' + i * interval '5 minutes'
         FROM generate_series(1, 40000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE chat_events").execute(&db.pool).await.unwrap();
    let range = "'c7', timestamptz '2024-02-01', timestamptz '2024-03-01'";
    let user_range = "timestamptz '2024-02-01', timestamptz '2024-03-01', 50001";
    let by_login = ["channel_username_time", "channel_login_time"];
    let by_id = ["chat_messages_channel_user_time", "chat_events_channel_user_time"];
    let by_time = ["chat_messages_channel_time", "chat_events_channel_time"];
    let cases: Vec<(String, String, &[&str])> = vec![
        (sql::user_months("username", "login"), "'c7', 'u7', 1200".into(), &by_login),
        (sql::user_months("user_id", "user_id"), "'c7', '7', 1200".into(), &by_id),
        (sql::channel_days(), "'c7', 3660".into(), &by_time),
        (sql::user_lines("username", "login", Order::OldestFirst), format!("'c7', 'u7', {user_range}"), &by_login),
        (sql::user_lines("user_id", "user_id", Order::NewestFirst), format!("'c7', '7', {user_range}"), &by_id),
        (sql::channel_lines(Order::OldestFirst), format!("{range}, 50001"), &by_time),
        (sql::channel_lines(Order::NewestFirst), format!("{range}, 50001"), &by_time),
        (sql::random_line(None), "'c7'".into(), &by_time[..1]),
        (sql::random_line(Some("username")), "'c7', 'u7'".into(), &by_login[..1]),
    ];
    let mut conn = db.pool.acquire().await.unwrap();
    for (i, (stmt, args, index)) in cases.iter().enumerate() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE q{i} AS {stmt}"))).execute(&mut *conn).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE q{i}({args})")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "statement {i} scans a table:\n{plan}");
        for index in index.iter() {
            // A new database is partitioned: each partition's copy of the index has its own name.
            let on_partitions = match *index {
                "channel_username_time" => "chat_messages_default_channel_username_sent_at_idx",
                "channel_login_time" => "chat_events_default_channel_login_sent_at_idx",
                "chat_messages_channel_user_time" => "chat_messages_default_channel_user_id_sent_at_idx",
                "chat_events_channel_user_time" => "chat_events_default_channel_user_id_sent_at_idx",
                "chat_messages_channel_time" => "chat_messages_default_channel_sent_at_idx",
                "chat_events_channel_time" => "chat_events_default_channel_sent_at_idx",
                other => other,
            };
            assert!(
                plan.contains(index) || plan.contains(on_partitions),
                "statement {i} does not use the index {index}:\n{plan}"
            );
        }
    }
}

/// Lines stored before a user opted out are never served once the config names them: a reload
/// takes effect at once, by login or by user id, on every route (user logs 403, channel logs
/// and random without their lines).
async fn a_user_who_opts_out_by_reload_is_refused_with_403_and_left_out_of_channel_logs(store: TestStore) {
    let l = logged(store, "").await;
    assert_eq!(req(&l.addr, "/channel/chan/user/bob/2024/6").await.code, 200);
    std::fs::write(&l.path, config(&l.fake_url, "[filters]\nopt_out_users = [\"Bob\", \"777\"]\n")).unwrap();
    l.logger.wait_log("config reloaded", 10 * SEC).await;
    for path in [
        "/channel/chan/user/bob/2024/6",
        "/channel/chan/user/BOB/2024/6?json",
        "/channel/chan/user/bob",
        "/channel/chan/user/bob/random",
        "/list?channel=chan&user=bob",
        "/channel/chan/userid/777/2024/6",
        "/channelid/12345/userid/777/2024/5?raw",
        "/list?channel=chan&userid=777",
    ] {
        let r = req(&l.addr, path).await;
        assert_eq!((r.code, r.body.as_str()), (403, "this user has opted out of being logged\n"), "{path}");
        assert_eq!(r.header("cache-control"), "no-store", "{path}");
    }
    // By login, the old name of user 777 is refused too: the lines carry the id.
    assert_eq!(req(&l.addr, "/channel/chan/user/ivy/2024/6").await.code, 403);
    // The channel's day keeps everyone else; a day of only opted-out lines is not there.
    let day = req(&l.addr, "/channel/chan/2024/6/2").await;
    assert_eq!(day.code, 404, "{}", day.body);
    for _ in 0..5 {
        let r = req(&l.addr, "/channel/other/random").await;
        assert_eq!(r.code, 404, "other's only line is user 777's: {}", r.body);
    }
    let carl = req(&l.addr, "/channel/chan/random").await;
    assert!(carl.body.contains("carl: right now"), "{}", carl.body);
}

/// Minimal WebDriver client: JSON over HTTP/1.1 to chromedriver on 127.0.0.1.
mod webdriver {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub async fn call(port: u16, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let read = async {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    let done = match len {
                        Some(len) => rest.len() >= len,
                        None => n == 0 || rest.ends_with("0\r\n\r\n"),
                    };
                    if done || n == 0 {
                        return (head.to_string(), rest.to_string());
                    }
                } else if n == 0 {
                    panic!("chromedriver closed without an answer");
                }
            }
        };
        let (head, rest) = tokio::time::timeout(Duration::from_secs(60), read).await.expect("chromedriver answers");
        let rest = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&rest) } else { rest };
        serde_json::from_str(&rest).unwrap_or_else(|e| panic!("chromedriver said {head} {rest}: {e}"))
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(rest.get(..n).unwrap_or(rest));
            s = rest.get(n + 2..).unwrap_or("");
        }
        out
    }

    pub fn base64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let clean: Vec<u8> = s.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').collect();
        let mut out = Vec::with_capacity(clean.len() * 3 / 4);
        for chunk in clean.chunks(4) {
            let v: Vec<u32> = chunk.iter().map(|c| u32::from(val(*c))).collect();
            let n = v.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len() - 1]);
        }
        out
    }
}

/// The web page in a real headless Chromium (Debian's `chromium` and `chromium-driver`): pick
/// a channel and a user, see that user's lines; pick a day, newest first; a chatter's HTML is
/// shown as text. Saves a screenshot to target/test-artifacts/api-page.png.
#[tokio::test]
async fn the_web_page_shows_a_users_lines_and_a_day_newest_first_in_a_real_browser() {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not found: install Debian's browser with `apt-get install -y chromium chromium-driver` (scripts/test.sh does this itself when run as root)");
    let l = logged(TestStore::sqlite().await, "").await;
    l.fake.to_channel(
        "chan",
        &chat(
            "chan",
            "12345",
            "eve-html",
            "eve",
            "Eve",
            "55",
            "<b>bold</b><img src=x onerror=alert(1)>",
            JUNE_FIRST + 13 * 3600,
        ),
    );
    l.db.wait_count("SELECT count(*) FROM chat_messages", 8, 15 * SEC).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    use std::os::unix::process::CommandExt;
    // Its own process group, so that the browser it starts goes with it whatever happens.
    let chromedriver = std::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let _group = KillGroup(chromedriver);
    let end = std::time::Instant::now() + 20 * SEC;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(std::time::Instant::now() < end, "chromedriver did not listen within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,700"]
    }}}});
    let session = webdriver::call(port, "POST", "/session", Some(caps)).await;
    let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_string();
    let s = |p: &str| format!("/session/{id}{p}");
    let script = |js: &str| serde_json::json!({"script": js, "args": []});
    let wait_js = |js: &'static str| {
        let s = s("/execute/sync");
        async move {
            let end = std::time::Instant::now() + 15 * SEC;
            loop {
                let v = webdriver::call(port, "POST", &s, Some(serde_json::json!({"script": js, "args": []}))).await;
                if v["value"].as_bool() == Some(true) {
                    return;
                }
                assert!(std::time::Instant::now() < end, "timed out waiting in the browser for: {js}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let lines_js = "return Array.from(document.querySelectorAll('#log .line')).map(e => e.textContent)";

    webdriver::call(port, "POST", &s("/url"), Some(serde_json::json!({"url": format!("http://{}/", l.addr)}))).await;
    wait_js("return document.querySelectorAll('#channel option').length === 2").await;
    // Pick a channel and type a user, as a person would.
    let find = |css: &str| serde_json::json!({"using": "css selector", "value": css});
    let el =
        |v: serde_json::Value| v["value"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
    let option = el(webdriver::call(port, "POST", &s("/element"), Some(find("#channel option[value=chan]"))).await);
    webdriver::call(port, "POST", &s(&format!("/element/{option}/click")), Some(serde_json::json!({}))).await;
    let user = el(webdriver::call(port, "POST", &s("/element"), Some(find("#user"))).await);
    webdriver::call(port, "POST", &s(&format!("/element/{user}/value")), Some(serde_json::json!({"text": "Ivy"})))
        .await;
    let show = el(webdriver::call(port, "POST", &s("/element"), Some(find("#show"))).await);
    webdriver::call(port, "POST", &s(&format!("/element/{show}/click")), Some(serde_json::json!({}))).await;
    wait_js("return document.querySelectorAll('#log .line').length > 0").await;
    let shown = webdriver::call(port, "POST", &s("/execute/sync"), Some(script(lines_js))).await;
    assert_eq!(shown["value"], serde_json::json!(["[2024-06-01 00:00:00] Ivy: first of june"]));
    let links = webdriver::call(
        port,
        "POST",
        &s("/execute/sync"),
        Some(script("return Array.from(document.querySelectorAll('#links a')).map(a => a.getAttribute('href'))")),
    )
    .await;
    assert_eq!(
        links["value"],
        serde_json::json!([
            "/channel/chan/user/Ivy/2024/6?json",
            "/channel/chan/user/Ivy/2024/6?raw",
            "/channel/chan/user/Ivy/2024/6"
        ])
    );

    // A day, newest first: everyone's lines, the chatter's HTML as plain text.
    webdriver::call(port, "POST", &s("/execute/sync"), Some(script("document.getElementById('user').value = ''; document.getElementById('day').value = '2024-06-01'; document.getElementById('reverse').checked = true; document.getElementById('show').click(); return true"))).await;
    wait_js("return document.querySelectorAll('#log .line').length === 3").await;
    let shown = webdriver::call(port, "POST", &s("/execute/sync"), Some(script(lines_js))).await;
    assert_eq!(
        shown["value"],
        serde_json::json!([
            "[2024-06-01 13:00:00] Eve: <b>bold</b><img src=x onerror=alert(1)>",
            "[2024-06-01 12:00:00] Bob: hi ivy",
            "[2024-06-01 00:00:00] Ivy: first of june",
        ])
    );
    let injected = webdriver::call(
        port,
        "POST",
        &s("/execute/sync"),
        Some(script("return document.querySelectorAll('#log img, #log b').length")),
    )
    .await;
    assert_eq!(injected["value"], 0, "a chatter's HTML became elements");

    let shot = webdriver::call(port, "GET", &s("/screenshot"), None).await;
    let png = webdriver::base64(shot["value"].as_str().expect("a screenshot"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("api-page.png");
    std::fs::write(&file, &png).unwrap();
    let written = std::fs::read(&file).unwrap();
    assert!(written.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(written.len() > 10_000, "a {}-byte screenshot is blank", written.len());
    eprintln!("screenshot: {} ({} bytes)", file.display(), written.len());

    webdriver::call(port, "DELETE", &s(""), None).await;
}

/// Ends the process group of the child it holds (chromedriver and its browser) when dropped,
/// pass or fail.
struct KillGroup(std::process::Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-KILL").arg("--").arg(format!("-{}", self.0.id())).status();
        let _ = self.0.wait();
    }
}

/// The API's connections are its own: at most 4, read-only, each statement cut at 5 s.
#[tokio::test]
async fn the_readers_pool_is_small_read_only_and_times_statements_out() {
    use twitch_chat_logger::store::pg_read::PgReader;
    let db = TestDb::new().await;
    twitch_chat_logger::store::postgres::MIGRATOR.run(&db.pool).await.unwrap();
    let reader = PgReader::connect_lazy(&db.opts);
    assert_eq!(reader.pool().options().get_max_connections(), 4);
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(reader.pool()).await.unwrap();
    assert_eq!(timeout, "5s");
    let write = sqlx::query("INSERT INTO dead_letters (kind, payload, error) VALUES ('x', 'y', 'z')")
        .execute(reader.pool())
        .await;
    let err = write.expect_err("a write through the reader's pool");
    assert!(err.to_string().contains("read-only"), "{err}");
    let started = std::time::Instant::now();
    let slow = sqlx::query("SELECT pg_sleep(30)").execute(reader.pool()).await;
    assert!(slow.is_err() && started.elapsed() < 10 * SEC, "a 30 s statement ran {:?}", started.elapsed());
}

/// The SQLite reader's statements on 200,000 messages and 40,000 events in 20 channels after
/// ANALYZE: `EXPLAIN QUERY PLAN` shows every read of chat_messages and chat_events as an index
/// SEARCH, never a SCAN of the table or of a whole index.
#[tokio::test]
async fn every_sqlite_api_query_is_an_index_search_on_a_large_file() {
    use twitch_chat_logger::store::read::Order;
    use twitch_chat_logger::store::sqlite_read::sql;
    let store = TestStore::sqlite().await;
    store
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
             INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, text, sent_at)
             SELECT 'm' || i, 'c' || (i % 20), (i % 20), (i % 5000), 'u' || (i % 5000), 'hello ' || i,
                    strftime('%Y-%m-%dT%H:%M:%f000Z', '2024-01-01', '+' || i || ' minutes') FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
             INSERT INTO chat_events (event_key, kind, msg_id, channel, room_id, user_id, login, system_msg, sent_at)
             SELECT 'e' || i, CASE i % 3 WHEN 0 THEN 'usernotice' WHEN 1 THEN 'clearchat' ELSE 'roomstate' END, 'sub',
                    'c' || (i % 20), (i % 20), (i % 5000), 'u' || (i % 5000), 'x subscribed',
                    strftime('%Y-%m-%dT%H:%M:%f000Z', '2024-01-01', '+' || (i * 5) || ' minutes') FROM n;
             ANALYZE;",
        )
        .await;
    let TestStore::Sqlite { pool, .. } = &store else { unreachable!() };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (sql::user_months("username", "login"), vec!["c7", "u7", "1200"]),
        (sql::user_months("user_id", "user_id"), vec!["c7", "7", "1200"]),
        (sql::channel_days(), vec!["c7", "3660"]),
        (sql::user_lines("username", "login", Order::OldestFirst), vec!["c7", "u7", "2024-02", "2024-03", "50001"]),
        (sql::user_lines("user_id", "user_id", Order::NewestFirst), vec!["c7", "7", "2024-02", "2024-03", "50001"]),
        (sql::channel_lines(Order::OldestFirst), vec!["c7", "2024-02", "2024-03", "50001"]),
        (sql::channel_lines(Order::NewestFirst), vec!["c7", "2024-02", "2024-03", "50001"]),
        (sql::edge(None, Order::OldestFirst), vec!["c7"]),
        (sql::edge(Some("username"), Order::NewestFirst), vec!["c7", "u7"]),
        (sql::from(Some("user_id")), vec!["c7", "7", "2024-02"]),
        (sql::ROOM_ID.to_string(), vec!["c7"]),
    ];
    for (i, (stmt, args)) in cases.iter().enumerate() {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {stmt}")));
        for a in args {
            q = q.bind(*a);
        }
        let plan: Vec<String> =
            q.fetch_all(pool).await.unwrap().iter().map(|r| sqlx::Row::get::<String, _>(r, "detail")).collect();
        let plan = plan.join("\n");
        let reads: Vec<&str> =
            plan.lines().filter(|l| l.contains("chat_messages") || l.contains("chat_events")).collect();
        assert!(!reads.is_empty(), "statement {i} reads no table:\n{plan}");
        for l in reads {
            assert!(l.starts_with("SEARCH ") && l.contains("USING"), "statement {i} scans:\n{plan}\n{stmt}");
        }
    }
}

/// The SQLite reader's connections are its own: at most 4, read-only, and a statement that
/// runs past 5 s is interrupted (503), after which the pool still answers.
#[tokio::test]
async fn the_sqlite_readers_pool_is_small_read_only_and_interrupts_long_statements() {
    use twitch_chat_logger::store::read::ReadError;
    use twitch_chat_logger::store::sqlite_read::SqliteReader;
    let store = TestStore::sqlite().await;
    let TestStore::Sqlite { path, .. } = &store else { unreachable!() };
    let reader = SqliteReader::connect_lazy(path);
    assert_eq!(reader.pool().options().get_max_connections(), 4);
    let write = sqlx::query("INSERT INTO dead_letters (kind, payload, error) VALUES ('x', 'y', 'z')")
        .execute(reader.pool())
        .await;
    let err = write.expect_err("a write through the reader's pool");
    assert!(err.to_string().contains("readonly"), "{err}");
    let started = std::time::Instant::now();
    let slow = reader
        .bounded_scalar("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
        .await;
    let took = started.elapsed();
    assert!(matches!(slow, Err(ReadError::Timeout(_))), "{slow:?}");
    assert!(took >= 5 * SEC && took < 6 * SEC, "interrupted after {took:?}");
    assert_eq!(reader.bounded_scalar("SELECT count(*) FROM chat_messages").await.unwrap(), 0);
}

/// Six clients reading a 200,000-line day over and over (more than the reader's 4
/// connections) while chat arrives: every line is stored within the writer's bound, and every
/// reader gets its log or a 503, never a hang.
#[tokio::test]
async fn readers_hammering_a_large_day_never_delay_the_writer() {
    let l = logged(TestStore::postgres().await, "").await;
    l.db.execute(
        "INSERT INTO chat_messages (message_id, channel, room_id, user_id, username, text, badges, sent_at)
         SELECT gen_random_uuid()::text, 'chan', '12345', (i % 500)::text, 'u' || (i % 500), 'filler ' || i, '{}',
                timestamptz '2024-07-01' + i * interval '400 ms'
         FROM generate_series(1, 200000) i;
         ANALYZE chat_messages",
    )
    .await;
    for format in [""] {
        let t = std::time::Instant::now();
        let one = req(&l.addr, &format!("/channel/chan/2024/7/1{format}")).await;
        eprintln!("one read of 50,000 lines{format}: {:?}, {} bytes, code {}", t.elapsed(), one.body.len(), one.code);
    }
    let stop = std::time::Instant::now() + 6 * SEC;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let addr = l.addr.clone();
            tokio::spawn(async move {
                let mut codes = vec![];
                while std::time::Instant::now() < stop {
                    let asked = std::time::Instant::now();
                    let r = req(&addr, "/channel/chan/2024/7/1").await;
                    // The request timeout, plus formatting what was read in time.
                    assert!(asked.elapsed() < 40 * SEC, "a read took {:?}", asked.elapsed());
                    if r.code == 200 {
                        assert_eq!(r.body.lines().count(), 50_000);
                        assert!(!r.header("x-truncated").is_empty());
                    }
                    codes.push(r.code);
                }
                codes
            })
        })
        .collect();
    tokio::time::sleep(SEC).await;
    let now = Utc::now().timestamp();
    for i in 0..20 {
        l.fake.to_channel("chan", &chat("chan", "12345", &format!("live-{i}"), "zed", "Zed", "3", "live", now));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let sent = std::time::Instant::now();
    l.db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zed'", 20, 10 * SEC).await;
    let lag = sent.elapsed();
    let mut codes = vec![];
    for r in readers {
        codes.extend(r.await.unwrap());
    }
    eprintln!(
        "{} reads ({} ok), last line stored {lag:?} after it was sent",
        codes.len(),
        codes.iter().filter(|c| **c == 200).count()
    );
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&200));
    // The API runs on threads of its own: the writer keeps its 100 ms flush rhythm (measured:
    // 85 ms; 2 to 7 s, and once nothing in 10 s, when the API shared the logger's threads).
    assert!(lag < 5 * SEC, "the writer fell behind while readers ran: {lag:?}");
}

/// 2024-06-03 06:00:00 UTC.
const JUNE_THIRD_6H: i64 = 1_717_394_400;

/// Subs, timeouts and bans come through the real pipeline into the logs: USERNOTICE (type 4)
/// and CLEARCHAT (type 2) lines carry Twitch's system text, in the channel's day and in the
/// logs of the user they are about (by login and by id).
async fn subs_timeouts_and_bans_are_served_with_their_system_text_in_channel_and_user_logs(store: TestStore) {
    let l = logged(store, "").await;
    let resub = format!(
        "@badge-info=subscriber/2;badges=subscriber/0;color=#0000FF;display-name=Kim;emotes=;flags=;id={};login=kim;mod=0;msg-id=resub;msg-param-cumulative-months=2;msg-param-months=0;msg-param-should-share-streak=0;msg-param-sub-plan-name=Channel\\sSubscription;msg-param-sub-plan=1000;room-id=12345;subscriber=1;system-msg=Kim\\ssubscribed\\sat\\sTier\\s1.\\sThey've\\ssubscribed\\sfor\\s2\\smonths!;tmi-sent-ts={}000;user-id=555;user-type= :tmi.twitch.tv USERNOTICE #chan :still here",
        msg_uuid("kim-resub"),
        JUNE_THIRD_6H
    );
    let timeout = format!(
        "@ban-duration=600;room-id=12345;target-user-id=888;tmi-sent-ts={}000 :tmi.twitch.tv CLEARCHAT #chan :bob",
        JUNE_THIRD_6H + 1800
    );
    let ban = format!(
        "@room-id=12345;target-user-id=888;tmi-sent-ts={}000 :tmi.twitch.tv CLEARCHAT #chan :bob",
        JUNE_THIRD_6H + 3600
    );
    for line in [resub, timeout.clone(), ban] {
        l.fake.to_channel("chan", &line);
    }
    l.fake.to_channel("chan", &chat("chan", "12345", "kim-hello", "kim", "Kim", "555", "hello", JUNE_THIRD_6H + 7200));
    l.db.wait_count("SELECT count(*) FROM chat_events WHERE kind IN ('usernotice', 'clearchat')", 3, 15 * SEC).await;
    l.db.wait_count("SELECT count(*) FROM chat_messages", 8, 15 * SEC).await;

    let day = req(&l.addr, "/channel/chan/2024/6/3").await;
    assert_eq!(
        day.body,
        "[2024-6-3 06:00:00] #chan Kim subscribed at Tier 1. They've subscribed for 2 months!\n\
         [2024-6-3 06:30:00] #chan bob has been timed out for 600 seconds\n\
         [2024-6-3 07:00:00] #chan bob has been banned\n\
         [2024-6-3 08:00:00] #chan kim: hello\n"
    );
    let bob = req(&l.addr, "/channel/chan/user/bob/2024/6?reverse").await;
    assert_eq!(
        bob.body,
        "[2024-6-3 07:00:00] #chan bob has been banned\n\
         [2024-6-3 06:30:00] #chan bob has been timed out for 600 seconds\n\
         [2024-6-2 09:00:00] #chan bob: waves\n\
         [2024-6-1 12:00:00] #chan bob: hi ivy\n"
    );
    assert_eq!(req(&l.addr, "/channel/chan/userid/888/2024/6?reverse").await.body, bob.body);
    let kim = req(&l.addr, "/channelid/12345/userid/555/2024/6").await;
    assert_eq!(
        kim.body,
        "[2024-6-3 06:00:00] #chan Kim subscribed at Tier 1. They've subscribed for 2 months!\n[2024-6-3 08:00:00] #chan kim: hello\n"
    );
    let months = req(&l.addr, "/list?channel=chan&user=kim").await;
    assert_eq!(months.body, r#"{"availableLogs":[{"month":"6","year":"2024"}]}"#);

    let json = req(&l.addr, "/channel/chan/user/bob/2024/6?json&reverse").await;
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(
        v["messages"][1],
        serde_json::json!({
            "text": "", "systemText": "bob has been timed out for 600 seconds", "username": "bob", "displayName": "bob",
            "channel": "chan", "timestamp": "2024-06-03T06:30:00.000Z", "id": "", "type": 2, "raw": timeout,
            "tags": {"ban-duration": "600", "room-id": "12345", "target-user-id": "888", "tmi-sent-ts": "1717396200000",
                     "color": "", "emotes": ""},
        })
    );
    let kim_json: serde_json::Value =
        serde_json::from_str(&req(&l.addr, "/channel/chan/user/kim/2024/6?json").await.body).unwrap();
    let sub = &kim_json["messages"][0];
    assert_eq!(
        (sub["type"].as_u64(), sub["text"].as_str(), sub["id"].as_str()),
        (Some(4), Some("still here"), Some(msg_uuid("kim-resub").as_str()))
    );
    assert_eq!(sub["systemText"], "Kim subscribed at Tier 1. They've subscribed for 2 months!");
    assert_eq!(sub["tags"]["msg-id"], "resub");
    assert_eq!(sub["tags"]["msg-param-cumulative-months"], "2");
    assert_eq!(sub["tags"]["color"], "#0000FF");
    let raw = sub["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("@badge-info=subscriber/2;badges=subscriber/0;color=#0000FF;display-name=Kim;emotes=;"),
        "{raw}"
    );
    assert!(
        raw.contains(";system-msg=Kim\\ssubscribed\\sat\\sTier\\s1.\\sThey've\\ssubscribed\\sfor\\s2\\smonths!;"),
        "{raw}"
    );
    assert!(raw.ends_with(" :tmi.twitch.tv USERNOTICE #chan :still here"), "{raw}");
}

/// A database that fails every read: each request gets a 503 with a reason (never a 500), and
/// a client retrying in a loop costs one log line per 10 s, not one per request.
async fn a_failing_database_answers_503_and_logs_once_however_many_requests(store: TestStore) {
    let l = logged(store, "").await;
    l.db.execute("ALTER TABLE chat_events RENAME TO chat_events_away").await;
    for _ in 0..50 {
        let r = req(&l.addr, "/channel/chan/2024/6/1").await;
        assert_eq!((r.code, r.body.as_str()), (503, "the log database is not answering; try again shortly\n"));
    }
    let logged_lines = l.logger.log_text().lines().filter(|x| x.contains("log API:")).count();
    assert_eq!(logged_lines, 1, "{}", l.logger.log_text());
    l.db.execute("ALTER TABLE chat_events_away RENAME TO chat_events").await;
    assert_eq!(req(&l.addr, "/channel/chan/2024/6/1").await.code, 200);
}

/// With `[storage] raw_lines = true` the raw form is each line exactly as Twitch sent it
/// (tags the logger does not store, such as `flags` and `turbo`, included).
async fn with_raw_lines_on_the_raw_form_is_the_line_as_received(store: TestStore) {
    let l = logged(store, "[storage]\nraw_lines = true\n").await;
    let line = chat("chan", "12345", "exact", "zoe", "Zoe", "31", "exact; words", JUNE_FIRST + 5);
    let timeout = format!(
        "@ban-duration=5;room-id=12345;target-user-id=31;tmi-sent-ts={}000 :tmi.twitch.tv CLEARCHAT #chan :zoe",
        JUNE_FIRST + 6
    );
    l.fake.to_channel("chan", &line);
    l.fake.to_channel("chan", &timeout);
    l.db.wait_count("SELECT count(*) FROM chat_messages WHERE username = 'zoe'", 1, 15 * SEC).await;
    l.db.wait_count("SELECT count(*) FROM chat_events WHERE login = 'zoe'", 1, 15 * SEC).await;
    let raw = req(&l.addr, "/channel/chan/user/zoe/2024/6?raw").await;
    assert_eq!(raw.body, format!("{line}\n{timeout}\n"));
    assert!(raw.body.contains(";flags=;") && raw.body.contains(";turbo=0;"), "{}", raw.body);
    let json: serde_json::Value =
        serde_json::from_str(&req(&l.addr, "/channel/chan/user/zoe/2024/6?json").await.body).unwrap();
    assert_eq!(json["messages"][0]["raw"], line);
}

for_both_stores!(
    a_users_month_is_served_as_text_json_and_raw_with_the_month_boundary_in_utc,
    a_channels_day_lists_every_user_oldest_first_or_reversed_and_actions_keep_their_text,
    userid_routes_return_both_logins_of_a_renamed_user,
    channels_and_lists_are_newest_first_with_unpadded_strings,
    routes_without_a_date_redirect_to_the_latest_month_or_today_keeping_the_query,
    from_and_to_select_a_range_in_unix_seconds_up_to_31_days,
    random_serves_one_line_of_the_user_or_the_channel,
    cors_nosniff_and_caching_past_months_but_not_the_current_one,
    unknown_channels_users_and_empty_periods_are_404_with_a_reason,
    hostile_paths_and_parameters_get_400_or_404_never_500_and_the_logger_keeps_logging,
    the_page_is_served_from_the_binary_and_api_false_turns_every_route_off,
    a_user_who_opts_out_by_reload_is_refused_with_403_and_left_out_of_channel_logs,
    subs_timeouts_and_bans_are_served_with_their_system_text_in_channel_and_user_logs,
    a_failing_database_answers_503_and_logs_once_however_many_requests,
    with_raw_lines_on_the_raw_form_is_the_line_as_received,
);
