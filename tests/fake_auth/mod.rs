//! A fake Twitch OAuth server on 127.0.0.1: `POST /oauth2/token` (refresh_token grant, rotating
//! refresh tokens) and `GET /oauth2/validate`, answering as Twitch documents. It records every
//! request with when and what it answered, and can be switched down (503) or hung.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "fakeclientid0123456789";
pub const CLIENT_SECRET: &str = "clientsecret_s3cr3t_value_9876";

/// How the server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every request gets 503.
    Down,
    /// Requests are accepted and never answered.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub path: &'static str,
    pub status: u16,
}

struct Access {
    login: String,
    expires_at: Instant,
    scopes: Vec<String>,
}

struct St {
    mode: Mode,
    /// Overrides `mode` for the token endpoint.
    token_mode: Option<Mode>,
    access: HashMap<String, Access>,
    /// Valid refresh token → login.
    refresh: HashMap<String, String>,
    /// `expires_in` of the tokens issued next (front first, the last one repeats).
    next_expires_in: Vec<u64>,
    issued: u64,
    hits: Vec<Hit>,
    /// Every secret value this server ever knew, for the leak checks.
    secrets: Vec<String>,
}

#[derive(Clone)]
pub struct FakeAuth {
    pub port: u16,
    st: Arc<Mutex<St>>,
}

impl FakeAuth {
    pub async fn start() -> Self {
        let st = Arc::new(Mutex::new(St {
            mode: Mode::Up,
            token_mode: None,
            access: HashMap::new(),
            refresh: HashMap::new(),
            next_expires_in: vec![14_400],
            issued: 0,
            hits: Vec::new(),
            secrets: vec![CLIENT_SECRET.to_string()],
        }));
        let app = Router::new()
            .route("/oauth2/token", post(token))
            .route("/oauth2/validate", get(validate))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeAuth { port, st }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/oauth2", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.st.lock().unwrap();
        s.mode = mode;
        s.token_mode = None;
    }

    /// Mode of the token endpoint alone.
    pub fn set_token_mode(&self, mode: Mode) {
        self.st.lock().unwrap().token_mode = Some(mode);
    }

    /// `expires_in` for the next issued tokens; the last value repeats.
    pub fn set_next_expires_in(&self, secs: &[u64]) {
        self.st.lock().unwrap().next_expires_in = secs.to_vec();
    }

    /// Registers an access token valid for `secs` seconds.
    pub fn add_access(&self, token: &str, login: &str, secs: u64) {
        self.add_access_with_scopes(token, login, secs, &["chat:read", "chat:edit"]);
    }

    pub fn add_access_with_scopes(&self, token: &str, login: &str, secs: u64, scopes: &[&str]) {
        let mut s = self.st.lock().unwrap();
        s.secrets.push(token.to_string());
        s.access.insert(
            token.to_string(),
            Access {
                login: login.to_string(),
                expires_at: Instant::now() + Duration::from_secs(secs),
                scopes: scopes.iter().map(|x| x.to_string()).collect(),
            },
        );
    }

    pub fn add_refresh(&self, token: &str, login: &str) {
        let mut s = self.st.lock().unwrap();
        s.secrets.push(token.to_string());
        s.refresh.insert(token.to_string(), login.to_string());
    }

    /// Makes a refresh token unknown (400 on use).
    pub fn revoke_refresh(&self, token: &str) {
        self.st.lock().unwrap().refresh.remove(token);
    }

    /// Revokes an access token (validate then answers 401).
    pub fn revoke(&self, token: &str) {
        self.st.lock().unwrap().access.remove(token);
    }

    pub fn is_valid_access(&self, token: &str) -> bool {
        self.st.lock().unwrap().access.get(token).is_some_and(|a| a.expires_at > Instant::now())
    }

    pub fn expiry_of(&self, token: &str) -> Option<Instant> {
        self.st.lock().unwrap().access.get(token).map(|a| a.expires_at)
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.st.lock().unwrap().hits.iter().filter(|h| h.path == path).cloned().collect()
    }

    pub fn secrets(&self) -> Vec<String> {
        self.st.lock().unwrap().secrets.clone()
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn gate(st: &Arc<Mutex<St>>, path: &'static str) -> Option<Response> {
    let mode = {
        let s = st.lock().unwrap();
        if path == "token" {
            s.token_mode.unwrap_or(s.mode)
        } else {
            s.mode
        }
    };
    match mode {
        Mode::Up => None,
        Mode::Down => {
            st.lock().unwrap().hits.push(Hit { at: Instant::now(), path, status: 503 });
            Some(json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":503,"message":"Service Unavailable"}"#.into()))
        }
        Mode::Hang => {
            st.lock().unwrap().hits.push(Hit { at: Instant::now(), path, status: 0 });
            std::future::pending::<()>().await;
            None
        }
    }
}

async fn token(State(st): State<Arc<Mutex<St>>>, body: Bytes) -> Response {
    if let Some(r) = gate(&st, "token").await {
        return r;
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut s = st.lock().unwrap();
    let (status, answer) = if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        (StatusCode::BAD_REQUEST, r#"{"status":400,"message":"missing grant_type"}"#.to_string())
    } else if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        (StatusCode::FORBIDDEN, r#"{"status":403,"message":"invalid client secret"}"#.to_string())
    } else {
        let rt = form.get("refresh_token").cloned().unwrap_or_default();
        match s.refresh.remove(&rt) {
            None => {
                // A careless server quoting the token back: it must still not reach any log.
                let msg = format!(r#"{{"status":400,"message":"Invalid refresh token {rt}"}}"#);
                (StatusCode::BAD_REQUEST, msg)
            }
            Some(login) => {
                s.issued += 1;
                let n = s.issued;
                let expires_in =
                    if s.next_expires_in.len() > 1 { s.next_expires_in.remove(0) } else { s.next_expires_in[0] };
                let access = format!("acc{n}x{:016x}", rand());
                let refresh = format!("ref{n}y{:032x}", (rand() as u128) << 64 | rand() as u128);
                s.secrets.push(access.clone());
                s.secrets.push(refresh.clone());
                s.access.insert(
                    access.clone(),
                    Access {
                        login: login.clone(),
                        expires_at: Instant::now() + Duration::from_secs(expires_in),
                        scopes: vec!["chat:read".into(), "chat:edit".into()],
                    },
                );
                s.refresh.insert(refresh.clone(), login);
                let body = format!(
                    r#"{{"access_token":"{access}","expires_in":{expires_in},"refresh_token":"{refresh}","scope":["chat:read","chat:edit"],"token_type":"bearer"}}"#
                );
                (StatusCode::OK, body)
            }
        }
    };
    s.hits.push(Hit { at: Instant::now(), path: "token", status: status.as_u16() });
    json(status, answer)
}

async fn validate(State(st): State<Arc<Mutex<St>>>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&st, "validate").await {
        return r;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("OAuth "))
        .unwrap_or("")
        .to_string();
    let mut s = st.lock().unwrap();
    let now = Instant::now();
    let (status, body) = match s.access.get(&token).filter(|a| a.expires_at > now) {
        Some(a) => {
            let body = serde_json::json!({
                "client_id": CLIENT_ID,
                "login": a.login,
                "scopes": a.scopes,
                "user_id": "141981764",
                "expires_in": (a.expires_at - now).as_secs(),
            })
            .to_string();
            (StatusCode::OK, body)
        }
        None => (StatusCode::UNAUTHORIZED, r#"{"status":401,"message":"invalid access token"}"#.to_string()),
    };
    s.hits.push(Hit { at: Instant::now(), path: "validate", status: status.as_u16() });
    json(status, body)
}

fn rand() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}
