//! The HTTP listener: `/healthz` (the process answers), `/readyz` (schema migrated, database
//! reachable, and every account connected or deliberately stopped), `/metrics` (Prometheus text format).

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
}

/// Binds `addr` and serves until the process ends. Binding errors are returned (a port in
/// use is a start-up error, not a silent absence of health checks).
pub async fn serve(addr: SocketAddr, observed: Observed, store: Backend) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} ({e}); set [http] listen / HTTP_LISTEN to a free address, or \"off\"")
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { observed, store });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the HTTP listener stopped: {e}");
        }
    });
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
