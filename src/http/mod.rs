//! The HTTP listener: `/healthz` (the process answers), `/readyz` (schema migrated, database
//! reachable, and every account connected or deliberately stopped), `/metrics` (Prometheus text format),
//! and, with `[http] api = true`, the read-only log API and its web page ([`api`]).

pub mod api;
mod limit;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics::Observed;
use crate::store::Backend;

#[derive(Clone)]
struct AppState {
    observed: Observed,
    store: Backend,
    api: Option<std::sync::Arc<api::Api>>,
}

/// Binds `addr` and serves until the process ends. Binding errors are returned (a port in
/// use is a start-up error, not a silent absence of health checks). Every other path goes to
/// the log API when `api` is given, else answers 404.
pub async fn serve(
    addr: SocketAddr,
    observed: Observed,
    store: Backend,
    api: Option<api::Api>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} ({e}); set [http] listen / HTTP_LISTEN to a free address, or \"off\"")
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(api::handle)
        .with_state(AppState { observed, store, api: api.map(std::sync::Arc::new) });
    // A runtime of its own: decoding and formatting large logs keeps these threads busy, never
    // the ones that read Twitch and run the writer.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("http")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("http".into()).spawn(move || {
        rt.block_on(async move {
            let served = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    axum::serve(limit::Capped::new(l, limit::MAX_CONNECTIONS, limit::IDLE, limit::ANSWER), app).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!("the HTTP listener stopped: {e}");
            }
        })
    })?;
    Ok(bound)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if let Err(why) = s.store.schema_ready() {
        problems.push(format!("database not ready: {why}"));
    } else {
        if !s.store.ping(Duration::from_secs(2)).await {
            problems.push("database unreachable".to_string());
        }
    }
    for account in s.observed.accounts_not_ready() {
        problems.push(format!("account {account} not connected"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.observed.render())
}

/// `twitch-chat-logger healthcheck`: GET /healthz on the configured listener, for Docker's
/// HEALTHCHECK (the runtime image has no curl).
pub async fn probe(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let mut stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(target)).await??;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut reply)).await??;
    if reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!("unhealthy: {}", reply.lines().next().unwrap_or("no answer"))
    }
}
