//! A listener that bounds what clients of the HTTP port can hold: at most [`MAX_CONNECTIONS`]
//! at once (the rest wait in the kernel's listen backlog, costing us no file descriptor), and a
//! connection is closed when the client has not moved a byte for [`IDLE`] while it is its turn
//! (nothing sent yet, or our last answer written), or after [`ANSWER`] without progress once it
//! has sent something (a request being answered, or a request trickled in a byte at a time).
//! Without it, idle connections to a port the compose file publishes took every descriptor
//! the process had, and config edits, spool segments and reconnects then failed with "Too
//! many open files". A response body must not pause for longer than [`IDLE`]; none of ours
//! is streamed.

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

/// Longest wait for our own answer: well past the log API's own timeout, whose 503 must get out.
pub const ANSWER: Duration = Duration::from_secs(120);
const _: () = assert!(ANSWER.as_secs() >= 2 * super::api::REQUEST_TIMEOUT.as_secs());

/// [`TcpListener`] with a connection cap and an idle timeout, for `axum::serve`.
pub struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    answer: Duration,
}

impl Capped {
    /// `max` connections at once; `idle` and `answer` as [`IDLE`] and [`ANSWER`].
    pub fn new(inner: TcpListener, max: usize, idle: Duration, answer: Duration) -> Self {
        Capped { inner, slots: Arc::new(Semaphore::new(max)), idle, answer }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        // Not before a slot is free: the connection waits in the backlog meanwhile.
        let permit = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let timer = Box::pin(tokio::time::sleep(self.idle));
        (Guarded { io, _slot: permit, timer, idle: self.idle, answer: self.answer }, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its slot until dropped, and fails with `TimedOut` once the
/// timer runs out with the socket waiting.
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Restarted at each byte moved: `idle` after a write (the client's turn), `answer` after
    /// a read (ours: hyper keeps a read pending while the handler runs).
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    answer: Duration,
}

impl Guarded {
    fn moved(&mut self, read: bool) {
        let at = Instant::now() + if read { self.answer } else { self.idle };
        self.timer.as_mut().reset(at);
    }

    /// Polled only while the socket waits: true once the timer has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
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
                    self.moved(true);
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
                    self.moved(false);
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

    /// `/healthz` behind the listener; our answers may take four times `idle`.
    async fn server(max: usize, idle: Duration) -> SocketAddr {
        server_with(Router::new().route("/healthz", get(|| async { "ok\n" })), max, idle).await
    }

    async fn server_with(app: Router, max: usize, idle: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(Capped::new(l, max, idle, idle * 4), app).await });
        addr
    }

    async fn get_healthz(addr: SocketAddr) -> String {
        get_path(addr, "/healthz").await
    }

    /// The whole reply to one request (empty if the connection was closed without one).
    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// How long until the server closed `s` without answering.
    async fn closed_unanswered_after(s: &mut TcpStream) -> Duration {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        started.elapsed()
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
        let took = closed_unanswered_after(&mut idle).await;
        assert!(took >= Duration::from_millis(150), "closed after {took:?}");
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

    #[tokio::test]
    async fn a_handler_slower_than_the_idle_time_still_gets_its_answer_out() {
        let app = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "done\n"
            }),
        );
        let addr = server_with(app, 4, Duration::from_millis(300)).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), get_path(addr, "/slow")).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "slow handler's answer lost: {reply:?}");
    }

    #[tokio::test]
    async fn the_apis_own_timeout_answer_reaches_the_client_even_when_it_takes_the_idle_time() {
        // api.rs: REQUEST_TIMEOUT (30 s), as long as IDLE; ANSWER is at least twice it (checked
        // when compiling). Scaled down here.
        let idle = Duration::from_millis(300);
        let app = Router::new().route(
            "/query",
            get(move || async move {
                match tokio::time::timeout(idle, std::future::pending::<()>()).await {
                    Ok(()) => "never\n".to_string(),
                    Err(_) => "the log query took too long; try a shorter range\n".to_string(),
                }
            }),
        );
        let addr = server_with(app, 4, idle).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), get_path(addr, "/query")).await.unwrap();
        assert!(reply.contains("took too long"), "the timeout answer was cut off: {reply:?}");
    }

    #[tokio::test]
    async fn a_streamed_body_with_pauses_shorter_than_the_idle_time_is_delivered_whole() {
        let app = Router::new().route(
            "/stream",
            get(|| async {
                let s = futures_util::stream::unfold(0u32, |i| async move {
                    if i >= 4 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some((Ok::<_, std::io::Error>(format!("part{i}\n")), i + 1))
                });
                axum::body::Body::from_stream(s)
            }),
        );
        let addr = server_with(app, 4, Duration::from_millis(300)).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), get_path(addr, "/stream")).await.unwrap();
        assert!(reply.contains("part3"), "stream cut: {reply:?}");
    }

    #[tokio::test]
    async fn a_request_left_half_sent_is_closed_after_the_answer_time() {
        let addr = server(1, Duration::from_millis(200)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let took = closed_unanswered_after(&mut s).await;
        assert!(took >= Duration::from_millis(700), "closed after {took:?}: before the answer time (800 ms)");
        let reply = tokio::time::timeout(Duration::from_secs(5), get_healthz(addr)).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn keep_alive_and_pipelined_requests_within_the_idle_time_are_all_answered() {
        let addr = server(1, Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    }

    #[tokio::test]
    async fn after_a_flood_of_silent_connections_leaves_healthz_is_answered_again() {
        let addr = server(4, Duration::from_millis(300)).await;
        let flood: Vec<TcpStream> = futures_util::future::join_all((0..50).map(|_| TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(flood);
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(5), get_healthz(addr)).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_slow_reader_of_a_big_response_gets_all_of_it() {
        let big = "x".repeat(8 << 20);
        let app = Router::new().route(
            "/big",
            get(move || {
                let b = big.clone();
                async move { b }
            }),
        );
        let addr = server_with(app, 4, Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(total > 8 << 20, "got {total} bytes");
    }
}
