//! A listener that bounds what clients of the HTTP port can hold: at most [`MAX_CONNECTIONS`]
//! at once (the rest wait in the kernel's listen backlog, costing us no file descriptor), and a
//! connection with no byte read or written for [`IDLE`] is closed. Without it, idle
//! connections to a port the compose file publishes took every descriptor the process had, and
//! config edits, spool segments and reconnects then failed with "Too many open files".

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Far above what health checks, a Prometheus scraper and a few log readers need, far below
/// the 1,024 descriptors a service gets by default.
pub const MAX_CONNECTIONS: usize = 64;

/// Long enough for a slow client between requests on a kept-alive connection.
pub const IDLE: Duration = Duration::from_secs(30);

/// [`TcpListener`] with a connection cap and an idle timeout, for `axum::serve`.
pub struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl Capped {
    /// `max` connections at once, each closed after `idle` without progress.
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        Capped { inner, slots: Arc::new(Semaphore::new(max)), idle }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        // Not before a slot is free: the connection waits in the backlog meanwhile.
        let permit = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let idle = Box::pin(tokio::time::sleep(self.idle));
        (Guarded { io, _slot: permit, idle, after: self.idle }, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its slot until dropped, and fails with `TimedOut` once
/// neither side has moved a byte for the idle time.
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    after: Duration,
}

impl Guarded {
    fn moved(&mut self) {
        let at = Instant::now() + self.after;
        self.idle.as_mut().reset(at);
    }

    /// While the socket has nothing: `Ready(Err)` once idle too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle; closed")
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            // A reader that stopped reading holds the slot no longer than an idle one.
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(max: usize, idle: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        tokio::spawn(async move { axum::serve(Capped::new(l, max, idle), app).await });
        addr
    }

    async fn get_healthz(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_waits_until_a_slot_frees_and_is_then_answered() {
        let addr = server(2, Duration::from_secs(60)).await;
        let idle: Vec<TcpStream> =
            vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
        let third = tokio::spawn(get_healthz(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "a third connection was served while two held the slots");
        drop(idle);
        let reply = tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_time_and_frees_its_slot() {
        let addr = server(1, Duration::from_millis(200)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() >= Duration::from_millis(150), "closed after {:?}", started.elapsed());
        let reply = tokio::time::timeout(Duration::from_secs(5), get_healthz(addr)).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn a_request_sent_a_byte_at_a_time_within_the_idle_time_is_answered() {
        let addr = server(1, Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".chunks(8) {
            s.write_all(b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
