//! The one batch writer every client feeds.
//!
//! Rows wait in a bounded queue; the writer flushes when `max_rows` wait or when the oldest has
//! waited `flush_interval`. A failed flush is retried with backoff, never dropped: while it
//! retries, the queue fills and the clients wait (memory stays bounded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::{Batch, Record, Store, StoreError};
use crate::config::BatchConfig;

/// Counters the writer keeps (read by tests, logs and metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Messages newly stored.
    pub messages_stored: AtomicU64,
    /// Messages skipped as already stored.
    pub duplicates: AtomicU64,
    /// Notices stored.
    pub notices_stored: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Failed write attempts (each later retried).
    pub failed_attempts: AtomicU64,
}

/// The sending side that clients hold.
pub type RecordSender = mpsc::Sender<Record>;

/// A running writer.
pub struct Writer {
    /// Clone this for each client. The writer ends once every clone is dropped and the queue
    /// is written out.
    pub sender: RecordSender,
    /// Live batch settings (`max_rows`, `flush_interval`).
    pub settings: watch::Sender<BatchConfig>,
    /// Counters.
    pub stats: Arc<WriterStats>,
    /// Finishes after the last row is written.
    pub task: JoinHandle<()>,
}

/// Starts the writer. `queue_capacity` is fixed for its lifetime.
pub fn spawn(store: Arc<dyn Store>, cfg: BatchConfig) -> Writer {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let (settings, settings_rx) = watch::channel(cfg);
    let stats = Arc::new(WriterStats::default());
    let task = tokio::spawn(run(store, rx, settings_rx, stats.clone()));
    Writer {
        sender: tx,
        settings,
        stats,
        task,
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Record>,
    mut settings: watch::Receiver<BatchConfig>,
    stats: Arc<WriterStats>,
) {
    let mut batch = Batch::default();
    let mut buf = Vec::new();
    let mut closed = false;
    while !closed {
        // Wait for the first row; the flush clock starts when it arrives.
        match rx.recv().await {
            Some(r) => batch.push(r),
            None => break,
        }
        let started = Instant::now();
        loop {
            // Re-read each round so a reload's new settings apply to the batch being filled.
            let (max_rows, interval) = {
                let s = settings.borrow_and_update();
                (s.max_rows, s.flush_interval)
            };
            if batch.len() >= max_rows {
                break;
            }
            tokio::select! {
                n = rx.recv_many(&mut buf, max_rows - batch.len()) => {
                    if n == 0 {
                        closed = true;
                        break;
                    }
                    for r in buf.drain(..) {
                        batch.push(r);
                    }
                }
                _ = sleep_until(started + interval) => break,
                Ok(()) = settings.changed() => {}
            }
        }
        flush(&*store, &batch, &stats).await;
        batch.clear();
    }
    tracing::debug!("writer finished: every queued row is written");
}

/// Writes `batch`, retrying until it succeeds.
async fn flush(store: &dyn Store, batch: &Batch, stats: &WriterStats) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match store.write(batch).await {
            Ok(report) => {
                stats
                    .messages_stored
                    .fetch_add(report.messages_inserted, Ordering::Relaxed);
                stats
                    .duplicates
                    .fetch_add(report.duplicates, Ordering::Relaxed);
                stats
                    .notices_stored
                    .fetch_add(report.notices_inserted, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!(
                        rows = batch.len(),
                        attempts = failures + 1,
                        "database is back; batch written"
                    );
                }
                return;
            }
            Err(e) => {
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                // Log the first failure and then every tenth, so an outage is loud but not spammy.
                if failures == 1 || failures.is_multiple_of(10) {
                    let kind = match e {
                        StoreError::Unavailable(_) => "unavailable",
                        StoreError::Rejected(_) => "rejected",
                    };
                    tracing::warn!(
                        rows = batch.len(),
                        attempt = failures,
                        kind,
                        "writing a batch failed, retrying in {:?}: {e}",
                        backoff
                    );
                }
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
