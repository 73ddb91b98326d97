//! The one batch writer every client feeds.
//!
//! Two tasks share a backlog. **Intake** takes rows from the clients' queue at once, so reading
//! IRC never waits on the database: rows go to memory (up to `queue_capacity`), beyond that to
//! the on-disk [`Spool`]. **Flush** writes batches: when `max_rows` rows wait or the oldest has
//! waited `flush_interval`. Order is kept end to end: memory holds the oldest rows, the spool the
//! newer ones, and once anything is spooled every new row is spooled behind it until the spool
//! is written out.
//!
//! A batch is never dropped: a connection-level failure is retried with backoff, and after
//! [`SPILL_AFTER`] of failing the batch and the memory backlog move to the spool, so an outage
//! costs disk, not memory, and a crash during one loses only rows not yet handed to the OS.
//! A row the database refuses (row-level error) is found by splitting the batch and goes to
//! the dead-letter place; the rest is stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::spool::Spool;
use super::{Batch, Record, Store, StoreError};
use crate::config::BatchConfig;

/// How long a batch may keep failing before it and the memory backlog go to disk.
pub const SPILL_AFTER: Duration = Duration::from_secs(2);
/// Largest batch taken when rows have piled up beyond `max_rows`.
pub const BULK_ROWS: usize = 5000;
/// Capacity of the hand-off channel from clients to intake (intake empties it continuously).
const HANDOFF: usize = 8192;
/// Longest a single database write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Rows written to the spool.
    pub spooled: AtomicU64,
    /// Rows written to the database from the spool.
    pub replayed: AtomicU64,
    /// Rows dropped because the spool was full (or the disk failed).
    pub dropped: AtomicU64,
    /// Rows the database refused, kept in the dead-letter place.
    pub dead_lettered: AtomicU64,
    /// Sum of batch commit times, in microseconds.
    pub flush_micros: AtomicU64,
    /// Commit-time histogram: counts per bucket of [`FLUSH_BUCKETS`] (last: above all).
    pub flush_buckets: [AtomicU64; FLUSH_BUCKETS.len() + 1],
    /// Unix time (ms) of the last commit that stored a new message.
    pub last_stored_ms: AtomicU64,
}

/// Upper bounds (seconds) of the commit-time histogram buckets.
pub const FLUSH_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

impl WriterStats {
    pub(crate) fn observe_flush(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = FLUSH_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(FLUSH_BUCKETS.len());
        self.flush_buckets[i].fetch_add(1, Relaxed);
        self.flush_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// Read-only access to a running writer, for health and metrics.
#[derive(Clone)]
pub struct WriterObserver {
    shared: Arc<Shared>,
    /// Counters.
    pub stats: Arc<WriterStats>,
}

impl WriterObserver {
    /// Rows waiting in memory and on disk.
    pub fn backlog(&self) -> Backlog {
        let st = self.shared.lock();
        Backlog { queue_rows: st.mem.len(), spool_rows: st.spool.rows(), spool_bytes: st.spool.bytes() }
    }
}

/// A point-in-time view of the backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows waiting in memory.
    pub queue_rows: usize,
    /// Rows waiting on disk.
    pub spool_rows: u64,
    /// Bytes on disk.
    pub spool_bytes: u64,
}

/// The sending side that clients hold.
pub type RecordSender = mpsc::Sender<Record>;

struct State {
    mem: VecDeque<Record>,
    spool: Spool,
    /// Once set, new rows go to the spool until it is written out (keeps arrival order).
    spooling: bool,
    /// Intake has ended: no more rows will come.
    closed: bool,
    /// Shutdown deadline: past it, what is not written goes to the spool.
    deadline: Option<Instant>,
    /// The last write failed (cleared by the next success): intake spools instead of waiting.
    db_failing: bool,
    capacity: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    room: Notify,
    stats: Arc<WriterStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("writer state lock")
    }

    /// Intake: rows to memory while there is room and nothing is spooled, else to the spool.
    /// With memory full but the database writing fine (it is just behind), intake waits up to
    /// [`SPILL_AFTER`] for room: the pause travels back to the sockets, which is cheaper than a
    /// trip through the disk. A failing database, or a longer wait, sends the rest to the spool.
    async fn accept(&self, rows: &mut Vec<Record>) {
        let give_up = Instant::now() + SPILL_AFTER;
        loop {
            let room_freed = self.room.notified();
            {
                let mut st = self.lock();
                if !st.spooling {
                    let room = st.capacity.saturating_sub(st.mem.len()).min(rows.len());
                    let rest = rows.split_off(room);
                    st.mem.extend(rows.drain(..));
                    *rows = rest;
                }
                let wait = !rows.is_empty() && !st.spooling && !st.db_failing && !st.closed && Instant::now() < give_up;
                if !wait {
                    drop(st);
                    self.spool_rest(rows);
                    return;
                }
            }
            self.wake.notify_one();
            let _ = tokio::time::timeout_at(give_up, room_freed).await;
        }
    }

    fn spool_rest(&self, rows: &mut Vec<Record>) {
        let mut st = self.lock();
        if !rows.is_empty() {
            if !st.spooling {
                tracing::warn!(
                    queue_capacity = st.capacity,
                    "the memory queue is full (the database is slow or down): spooling to disk"
                );
                st.spooling = true;
            }
            let n = rows.len();
            match st.spool.append(rows) {
                Ok(dropped) => {
                    self.stats.spooled.fetch_add((n - dropped) as u64, Relaxed);
                    self.note_dropped(dropped);
                }
                Err(e) => {
                    tracing::error!("cannot write the spool ({e}): {n} rows are lost");
                    self.note_dropped(n);
                }
            }
            rows.clear();
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The flusher took rows out of memory.
    fn freed(&self) {
        self.room.notify_waiters();
    }

    fn note_dropped(&self, n: usize) {
        if n > 0 {
            let before = self.stats.dropped.fetch_add(n as u64, Relaxed);
            // Loud, but one line per 10,000 rows rather than one per chunk.
            if before / 10_000 != (before + n as u64) / 10_000 || before == 0 {
                tracing::error!(
                    dropped_total = before + n as u64,
                    "the spool is full (batch.spool_max_bytes): dropping rows"
                );
            }
        }
    }

    /// Moves `pending` (oldest) and the memory backlog in front of everything spooled.
    fn spill(&self, pending: &mut VecDeque<Batch>) -> bool {
        let mut st = self.lock();
        let mut rows: Vec<Record> = pending.iter().flat_map(|b| b.clone().into_records()).collect();
        rows.extend(st.mem.iter().cloned());
        match st.spool.prepend(&rows) {
            Ok(dropped) => {
                st.mem.clear();
                st.spooling = true;
                pending.clear();
                drop(st);
                self.freed();
                self.stats.spooled.fetch_add((rows.len() - dropped) as u64, Relaxed);
                self.note_dropped(dropped);
                true
            }
            Err(e) => {
                tracing::error!("cannot write the spool ({e}); keeping {} rows in memory", rows.len());
                false
            }
        }
    }
}

/// A running writer.
pub struct Writer {
    /// Clone this for each client.
    pub sender: RecordSender,
    /// Live batch settings.
    pub settings: watch::Sender<BatchConfig>,
    /// Counters.
    pub stats: Arc<WriterStats>,
    shared: Arc<Shared>,
    intake: JoinHandle<()>,
    flush: JoinHandle<()>,
}

impl Writer {
    /// A read-only view for health and metrics.
    pub fn observer(&self) -> WriterObserver {
        WriterObserver { shared: self.shared.clone(), stats: self.stats.clone() }
    }

    /// Applies new live settings.
    pub fn update(&self, cfg: BatchConfig) {
        {
            let mut st = self.shared.lock();
            st.capacity = cfg.queue_capacity;
            st.spool.set_max_bytes(cfg.spool_max_bytes);
        }
        self.settings.send_replace(cfg);
        self.shared.wake.notify_one();
    }

    /// Shutdown: takes what the clients already handed over, writes it to the database, or
    /// after `shutdown_timeout` to the spool, then returns.
    pub async fn finish(self) {
        let Writer { sender, settings, shared, intake, flush, .. } = self;
        let timeout = settings.borrow().shutdown_timeout;
        shared.lock().deadline = Some(Instant::now() + timeout);
        drop(sender);
        let _ = intake.await;
        let _ = flush.await;
    }
}

/// Starts the writer; opens the spool (a spool left by a previous run is replayed first).
pub fn spawn(store: Arc<dyn Store>, cfg: BatchConfig) -> std::io::Result<Writer> {
    let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
    let leftover = spool.rows();
    if leftover > 0 {
        tracing::info!(rows = leftover, bytes = spool.bytes(), dir = %cfg.spool_dir.display(), "replaying rows spooled by a previous run");
    }
    let stats = Arc::new(WriterStats::default());
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            mem: VecDeque::new(),
            spooling: !spool.is_empty(),
            spool,
            closed: false,
            deadline: None,
            db_failing: false,
            capacity: cfg.queue_capacity,
        }),
        wake: Notify::new(),
        room: Notify::new(),
        stats: stats.clone(),
    });
    let (tx, rx) = mpsc::channel(HANDOFF);
    let (settings, settings_rx) = watch::channel(cfg);
    let intake = tokio::spawn(intake(rx, shared.clone()));
    let flush = tokio::spawn(flush_loop(store, shared.clone(), settings_rx));
    Ok(Writer { sender: tx, settings, stats, shared, intake, flush })
}

async fn intake(mut rx: mpsc::Receiver<Record>, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        shared.accept(&mut buf).await;
    }
    shared.lock().closed = true;
    shared.wake.notify_one();
}

/// Where a batch came from: memory (its only copy) or a spool segment (still on disk).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Memory,
    Spool(u64),
}

async fn flush_loop(store: Arc<dyn Store>, shared: Arc<Shared>, mut settings: watch::Receiver<BatchConfig>) {
    let mut replay: Option<(u64, VecDeque<Record>)> = None;
    while let Some((batch, source)) = next_batch(&shared, &mut settings, &mut replay).await {
        let mut pending = VecDeque::from([batch]);
        match write_out(&*store, &shared, &mut pending, source).await {
            Outcome::Written => {
                if let (Source::Spool(seq), Some((_, rows))) = (source, &replay) {
                    if rows.is_empty() {
                        if let Err(e) = shared.lock().spool.remove(seq) {
                            tracing::error!(
                                "cannot delete a written spool segment ({e}); it will be replayed again (harmless)"
                            );
                        }
                        replay = None;
                    }
                }
            }
            Outcome::Spilled => {}
            Outcome::GaveUp => break,
        }
    }
    let st = shared.lock();
    if st.spool.rows() > 0 {
        tracing::warn!(rows = st.spool.rows(), "rows left in the spool; they are written at the next start");
    }
}

/// The next batch to write, in arrival order; `None` when closed and everything is written
/// (or, past the shutdown deadline, spooled).
async fn next_batch(
    shared: &Shared,
    settings: &mut watch::Receiver<BatchConfig>,
    replay: &mut Option<(u64, VecDeque<Record>)>,
) -> Option<(Batch, Source)> {
    loop {
        let (max_rows, interval) = {
            let s = settings.borrow_and_update();
            (s.max_rows, s.flush_interval)
        };
        // A flush starts when `max_rows` rows wait; if more have piled up meanwhile (the
        // database is the bottleneck), they go in the same batch: fewer, larger transactions.
        let bulk = max_rows.max(BULK_ROWS);
        if let Some((seq, rows)) = replay.as_mut() {
            if !rows.is_empty() {
                let n = rows.len().min(bulk);
                return Some((Batch::from_records(rows.drain(..n)), Source::Spool(*seq)));
            }
        }
        let wait_until = {
            let mut st = shared.lock();
            let past_deadline = st.deadline.is_some_and(|d| Instant::now() >= d);
            if st.closed && past_deadline {
                // Out of time: what is still in memory goes to disk for the next start.
                if !st.mem.is_empty() {
                    drop(st);
                    shared.spill(&mut VecDeque::new());
                }
                return None;
            }
            if let Some(front) = st.mem.front() {
                let age =
                    chrono::Utc::now().signed_duration_since(front_received_at(front)).to_std().unwrap_or_default();
                if st.mem.len() >= max_rows || st.closed || age >= interval {
                    let n = st.mem.len().min(bulk);
                    let batch = Batch::from_records(st.mem.drain(..n));
                    drop(st);
                    shared.freed();
                    return Some((batch, Source::Memory));
                }
                Some(Instant::now() + (interval - age))
            } else if st.spooling {
                match st.spool.read_head() {
                    Ok(Some((seq, rows))) => {
                        *replay = Some((seq, rows.into()));
                        continue;
                    }
                    Ok(None) => {
                        st.spooling = false;
                        tracing::info!("spool written out; back to memory");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("cannot read the spool ({e}); retrying in 1 s");
                        Some(Instant::now() + Duration::from_secs(1))
                    }
                }
            } else if st.closed {
                return None;
            } else {
                None
            }
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = settings.changed() => {}
            _ = async { tokio::time::sleep_until(wait_until.unwrap()).await }, if wait_until.is_some() => {}
        }
    }
}

fn front_received_at(r: &Record) -> chrono::DateTime<chrono::Utc> {
    match r {
        Record::Message(m) => m.received_at,
        Record::Notice(n) => n.received_at,
    }
}

enum Outcome {
    Written,
    Spilled,
    GaveUp,
}

/// Writes `pending`, isolating rows the database refuses. Keeps retrying connection-level
/// failures; moves memory rows to the spool after [`SPILL_AFTER`] of failing or at the
/// shutdown deadline.
async fn write_out(store: &dyn Store, shared: &Shared, pending: &mut VecDeque<Batch>, source: Source) -> Outcome {
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    while let Some(batch) = pending.pop_front() {
        let deadline = shared.lock().deadline;
        let limit = deadline.map_or(WRITE_TIMEOUT, |d| d.saturating_duration_since(Instant::now()).min(WRITE_TIMEOUT));
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, store.write(&batch)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {limit:?}"))),
        };
        match result {
            Ok(report) => {
                let s = &shared.stats;
                s.messages_stored.fetch_add(report.messages_inserted, Relaxed);
                s.duplicates.fetch_add(report.duplicates, Relaxed);
                s.notices_stored.fetch_add(report.notices_inserted, Relaxed);
                s.batches.fetch_add(1, Relaxed);
                s.observe_flush(started.elapsed());
                if report.messages_inserted > 0 {
                    s.last_stored_ms.store(chrono::Utc::now().timestamp_millis() as u64, Relaxed);
                }
                if matches!(source, Source::Spool(_)) {
                    s.replayed.fetch_add(batch.len() as u64, Relaxed);
                }
                shared.lock().db_failing = false;
                if failures > 0 {
                    tracing::info!(attempts = failures + 1, "the database is back; writing again");
                    failures = 0;
                    failing_since = None;
                    backoff = Duration::from_millis(100);
                }
            }
            Err(StoreError::Rejected(reason)) => match batch.split() {
                Ok((a, b)) => {
                    pending.push_front(b);
                    pending.push_front(a);
                }
                Err(batch) => {
                    let record = batch.into_records().next().expect("a one-row batch");
                    match store.dead_letter(&record, &reason).await {
                        Ok(()) => {
                            shared.stats.dead_lettered.fetch_add(1, Relaxed);
                            tracing::warn!(reason = %reason, "the database refused a row; it is kept in the dead_letters table");
                        }
                        Err(e) => {
                            // Try the row again later, like any failed write.
                            pending.push_front(Batch::from_records([record]));
                            if let Some(o) =
                                fail(shared, pending, source, &e, &mut failing_since, &mut failures, &mut backoff).await
                            {
                                return o;
                            }
                        }
                    }
                }
            },
            Err(e) => {
                pending.push_front(batch);
                if let Some(o) =
                    fail(shared, pending, source, &e, &mut failing_since, &mut failures, &mut backoff).await
                {
                    return o;
                }
            }
        }
    }
    Outcome::Written
}

/// After a connection-level failure: spill, give up (shutdown), or wait and let the caller retry.
async fn fail(
    shared: &Shared,
    pending: &mut VecDeque<Batch>,
    source: Source,
    e: &StoreError,
    failing_since: &mut Option<Instant>,
    failures: &mut u32,
    backoff: &mut Duration,
) -> Option<Outcome> {
    shared.stats.failed_attempts.fetch_add(1, Relaxed);
    shared.lock().db_failing = true;
    shared.freed();
    *failures += 1;
    let since = *failing_since.get_or_insert_with(Instant::now);
    if *failures == 1 || failures.is_multiple_of(20) {
        let rows: usize = pending.iter().map(Batch::len).sum();
        tracing::warn!(rows, attempt = *failures, "writing to the database failed, will retry: {e}");
    }
    let deadline = shared.lock().deadline;
    let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
    if source == Source::Memory && (out_of_time || since.elapsed() >= SPILL_AFTER) && shared.spill(pending) {
        tracing::warn!("the database is unavailable: rows go to the spool until it is back");
        return Some(Outcome::Spilled);
    }
    if out_of_time {
        return Some(Outcome::GaveUp);
    }
    let nap = deadline.map_or(*backoff, |d| d.saturating_duration_since(Instant::now()).min(*backoff));
    sleep(nap).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    None
}
