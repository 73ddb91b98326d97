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
//! costs disk, not memory. Time is bounded too: a row is committed or on disk within
//! `durable_within` of being read; a write still waiting when its oldest row reaches
//! [`spill_age`] has its rows copied to the spool (a late commit is deduplicated at replay).
//! With batches written side by side, a failure makes them retry oldest first, and a spill
//! takes the newer ones in flight to disk with it and abandons their writes: a commit of
//! theirs would land ahead of the older rows now waiting on disk.
//! Rows that can never be valid, and rows the database refuses (found by splitting the batch),
//! go to the dead-letter place; the rest is stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::spool::{is_disk_full, Spool};
use super::{invalid_reason, Batch, Record, Store, StoreError};
use crate::config::BatchConfig;
use crate::record::{Filtered, RecordTx, UserFilter};

/// How long a batch may keep failing before it and the memory backlog go to disk.
pub const SPILL_AFTER: Duration = Duration::from_secs(2);
/// Largest batch taken when rows have piled up beyond `max_rows`.
pub const BULK_ROWS: usize = 5000;
/// Capacity of the hand-off channel from clients to intake (intake empties it continuously).
const HANDOFF: usize = 8192;
/// Longest a single database write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of `durable_within` that goes to the disk write of a spill (the spill starts this much
/// before the bound).
const SPILL_MARGIN: Duration = Duration::from_millis(500);

/// How long a row may wait in memory before the spill that keeps `durable_within` starts:
/// `durable_within` minus a quarter of it, at most [`SPILL_MARGIN`].
pub fn spill_age(durable_within: Duration) -> Duration {
    durable_within - (durable_within / 4).min(SPILL_MARGIN)
}

/// Counters the writer keeps (read by tests, logs and metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Messages newly stored.
    pub messages_stored: AtomicU64,
    /// Messages skipped as already stored.
    pub duplicates: AtomicU64,
    /// Notices newly stored (one already stored under its key is not counted).
    pub notices_stored: AtomicU64,
    /// Events newly stored (one already stored, or a ROOMSTATE changing nothing, is not counted).
    pub events_stored: AtomicU64,
    /// Rows deleted by `[storage] retention` (counted by the retention task, shown with these).
    pub expired: AtomicU64,
    /// Whole PostgreSQL partitions dropped by `[storage] retention` (retention task).
    pub partitions_dropped: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Failed write attempts (each later retried).
    pub failed_attempts: AtomicU64,
    /// Rows written to the spool.
    pub spooled: AtomicU64,
    /// Rows written to the database from the spool.
    pub replayed: AtomicU64,
    /// Rows lost: past `spool_max_bytes`, or neither the spool nor the memory queue could take
    /// them (disk full or failing), or left in memory at exit. Never a row stored later.
    pub dropped: AtomicU64,
    /// Rows the database refused (or that can never be valid), kept in the dead-letter place.
    pub dead_lettered: AtomicU64,
    /// Of those, rows kept in the spool directory's dead-letter file (the table refused them too).
    pub dead_letter_files: AtomicU64,
    /// Spool segments that could not be replayed (empty, unreadable, missing), set aside.
    pub spool_corrupt_segments: AtomicU64,
    /// Writes not committed within `durable_within`: their rows were copied to the spool.
    pub slow_write_spills: AtomicU64,
    /// Sum of batch commit times, in microseconds.
    pub flush_micros: AtomicU64,
    /// Commit-time histogram: counts per bucket of [`FLUSH_BUCKETS`] (last: above all).
    pub flush_buckets: [AtomicU64; FLUSH_BUCKETS.len() + 1],
    /// Unix time (ms) of the last commit that stored a new message.
    pub last_stored_ms: AtomicU64,
    /// Rows not stored because their sender is in `ignore_users`.
    pub filtered_ignored: AtomicU64,
    /// Rows not stored because they are from or about a user in `opt_out_users`.
    pub filtered_opted_out: AtomicU64,
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
    pub spool_bytes: u64,
}

/// What [`Writer::finish`] achieved: the truth for the last log line and the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Rows committed during this run (messages new or already stored, and notices).
    pub stored: u64,
    /// Rows left in the spool for the next start.
    pub spooled: u64,
    /// Rows received but kept nowhere during this run (see [`WriterStats::dropped`]).
    pub lost: u64,
}

/// A row in memory and when it was read, on the writer's clock (paused in tests).
struct Stamped {
    at: Instant,
    rec: Record,
}

impl std::borrow::Borrow<Record> for Stamped {
    fn borrow(&self) -> &Record {
        &self.rec
    }
}

/// When a row was read, on the writer's clock: its `received_at` is wall time, which a
/// paused test clock does not follow, so only the (small) wall age is carried over.
fn stamp(rec: Record) -> Stamped {
    let received = rec.received_at();
    let age = chrono::Utc::now().signed_duration_since(received).to_std().unwrap_or_default();
    let now = Instant::now();
    Stamped { at: now.checked_sub(age.min(Duration::from_secs(3600))).unwrap_or(now), rec }
}

struct State {
    mem: VecDeque<Stamped>,
    spool: Spool,
    /// Once set, new rows go to the spool until it is written out (keeps arrival order).
    spooling: bool,
    /// Intake has ended: no more rows will come.
    closed: bool,
    /// The last write failed (cleared by the next success): intake spools instead of waiting.
    db_failing: bool,
    /// The spool's disk refused a write (cleared by the next one that works): logged once.
    disk_trouble: bool,
    capacity: usize,
    durable_within: Duration,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    room: Notify,
    /// Shutdown deadline: past it, what is not written goes to the spool.
    deadline: watch::Sender<Option<Instant>>,
    stats: Arc<WriterStats>,
    /// Which rows are never stored; replaced whole by a reload.
    filter: std::sync::RwLock<Arc<UserFilter>>,
    /// Memory batches being written, oldest first: a spill takes the newer ones with it, so
    /// the spool keeps arrival order whichever write fails first.
    flying: Mutex<Vec<Flying>>,
    /// A batch in flight finished (written or spilled): a newer one waiting to retry looks again.
    landed: Notify,
    /// Batches retrying after a connection-level failure (see [`Retrying`]).
    retrying: std::sync::atomic::AtomicUsize,
}

/// Counts a batch as retrying from its first failure until it succeeds or ends.
struct Retrying<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Retrying<'a> {
    fn start(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, Relaxed);
        Retrying(n)
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A memory batch in flight, as the spill sees it.
struct Flying {
    seq: u64,
    jobs: Vec<Job>,
    /// Set when an older batch's spill put these rows on disk behind its own: the write is
    /// abandoned then, as a commit would put these rows ahead of the older ones.
    spilled: watch::Sender<bool>,
}

/// Why rows were lost, for the one log line per 10,000.
#[derive(Clone, Copy)]
enum Loss {
    SpoolLimit,
    NowhereToKeep,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("writer state lock")
    }

    /// The user filter in force.
    fn filter(&self) -> Arc<UserFilter> {
        self.filter.read().expect("writer filter lock").clone()
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Intake: rows to memory while there is room and nothing is spooled, else to the spool.
    /// With memory full but the database writing fine (it is just behind), intake waits for
    /// room, up to [`SPILL_AFTER`] and never past the oldest row's [`spill_age`]: the pause
    /// travels back to the sockets, which is cheaper than a trip through the disk. A failing
    /// database, a longer wait, or shutdown sends the rest to the spool.
    async fn accept(&self, rows: &mut Vec<Stamped>) {
        let Some(oldest) = rows.first().map(|r| r.at) else { return };
        let give_up = (Instant::now() + SPILL_AFTER).min(oldest + spill_age(self.lock().durable_within));
        loop {
            let room_freed = self.room.notified();
            {
                let mut st = self.lock();
                if !st.spooling {
                    let room = st.capacity.saturating_sub(st.mem.len()).min(rows.len());
                    st.mem.extend(rows.drain(..room));
                }
                let wait = !rows.is_empty()
                    && !st.spooling
                    && !st.db_failing
                    && !st.closed
                    && self.deadline().is_none()
                    && Instant::now() < give_up;
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

    /// Appends `rows` to the spool. What the disk refuses stays in memory while there is
    /// room, and only the rest is lost (counted).
    fn spool_rest(&self, rows: &mut Vec<Stamped>) {
        let mut st = self.lock();
        if !rows.is_empty() {
            if !st.spooling {
                tracing::warn!(
                    queue_capacity = st.capacity,
                    "the memory queue is full (the database is slow or down): spooling to disk"
                );
                st.spooling = true;
            }
            let a = st.spool.append(rows);
            self.stats.spooled.fetch_add(a.written as u64, Relaxed);
            let limit_dropped = a.over_limit;
            let mut unkept = 0;
            if let Some(e) = a.error {
                let unwritten: Vec<Stamped> = rows.drain(a.written..rows.len() - limit_dropped).collect();
                let room = st.capacity.saturating_sub(st.mem.len());
                unkept = unwritten.len().saturating_sub(room);
                if !st.disk_trouble {
                    st.disk_trouble = true;
                    let dir = st.spool.dir().display().to_string();
                    if is_disk_full(&e) {
                        tracing::error!(
                            queue_capacity = st.capacity,
                            "disk full at {dir}: rows wait in memory (up to batch.queue_capacity) until the disk has room or the database takes them"
                        );
                    } else {
                        tracing::error!(
                            queue_capacity = st.capacity,
                            "cannot write the spool at {dir} ({e}): rows wait in memory (up to batch.queue_capacity); check the directory's permissions and disk"
                        );
                    }
                }
                st.mem.extend(unwritten.into_iter().take(room));
            } else if st.disk_trouble && a.written > 0 {
                st.disk_trouble = false;
                tracing::info!(dir = %st.spool.dir().display(), "the spool is writable again");
            }
            if st.spool.is_empty() {
                // Nothing is on disk, so memory holds everything in order.
                st.spooling = false;
            }
            rows.clear();
            drop(st);
            self.note_dropped(limit_dropped, Loss::SpoolLimit);
            self.note_dropped(unkept, Loss::NowhereToKeep);
        } else {
            drop(st);
        }
        self.wake.notify_one();
    }

    /// Whether a memory batch older than `seq` is still being written.
    fn older_in_flight(&self, seq: u64) -> bool {
        self.flying.lock().expect("writer flying lock").iter().any(|f| f.seq < seq)
    }

    /// The flusher took rows out of memory.
    fn freed(&self) {
        self.room.notify_waiters();
    }

    fn note_dropped(&self, n: usize, why: Loss) {
        if n > 0 {
            let before = self.stats.dropped.fetch_add(n as u64, Relaxed);
            // Loud, but one line per 10,000 rows rather than one per chunk.
            if before / 10_000 != (before + n as u64) / 10_000 || before == 0 {
                match why {
                    Loss::SpoolLimit => tracing::error!(
                        dropped_total = before + n as u64,
                        "the spool is full (batch.spool_max_bytes): dropping rows"
                    ),
                    Loss::NowhereToKeep => tracing::error!(
                        dropped_total = before + n as u64,
                        "neither the spool nor the memory queue can take more rows: dropping rows"
                    ),
                }
            }
        }
    }

    /// Writes `jobs` (oldest) and the memory backlog in front of everything spooled, synced.
    /// Memory is emptied; `jobs` are left to the caller (a write of them may still be running).
    /// All or nothing: on a disk error everything stays in memory and `false` comes back.
    /// `jobs` are those of in-flight batch `seq` (`u64::MAX`: none): the batches in flight
    /// behind it go to disk with it, in order, and are marked spilled.
    fn spill(&self, seq: u64, jobs: &VecDeque<Job>) -> bool {
        let flying = self.flying.lock().expect("writer flying lock");
        let behind: Vec<&Flying> = flying.iter().filter(|f| f.seq > seq && !*f.spilled.borrow()).collect();
        let mut st = self.lock();
        let mut rows: Vec<Record> = jobs.iter().flat_map(Job::records).collect();
        rows.extend(behind.iter().flat_map(|f| f.jobs.iter().flat_map(Job::records)));
        rows.extend(st.mem.iter().map(|s| s.rec.clone()));
        if rows.is_empty() {
            return true;
        }
        match st.spool.prepend(&rows) {
            Ok(_) => {
                for f in behind {
                    f.spilled.send_replace(true);
                }
                st.mem.clear();
                st.spooling = true;
                st.disk_trouble = false;
                drop(st);
                self.freed();
                self.stats.spooled.fetch_add(rows.len() as u64, Relaxed);
                true
            }
            Err(e) => {
                if !st.disk_trouble {
                    st.disk_trouble = true;
                    let dir = st.spool.dir().display().to_string();
                    let what = if is_disk_full(&e) {
                        format!("disk full at {dir}")
                    } else {
                        format!("cannot write the spool at {dir} ({e})")
                    };
                    tracing::error!("{what}: keeping {} rows in memory and retrying", rows.len());
                }
                false
            }
        }
    }
}

/// The handle of the shared writer: its intake and flush tasks run until [`Writer::finish`].
pub struct Writer {
    /// Clone this for each client.
    pub sender: RecordTx,
    /// Live batch settings.
    pub settings: watch::Sender<BatchConfig>,
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
            st.durable_within = cfg.durable_within;
            st.spool.set_max_bytes(cfg.spool_max_bytes);
        }
        self.settings.send_replace(cfg);
        self.shared.wake.notify_one();
    }

    /// Applies new user filters: from the next batch on, rows they match are dropped before
    /// any write, wherever they wait (memory or spool).
    pub fn set_filter(&self, filter: UserFilter) {
        *self.shared.filter.write().expect("writer filter lock") = Arc::new(filter);
    }

    /// Shutdown: takes what the clients already handed over and writes it to the database;
    /// when `shutdown_timeout` expires, a write still waiting is abandoned and what is not
    /// committed goes to the spool (a late commit is deduplicated at replay). Returns what
    /// was kept and what was lost.
    pub async fn finish(self) -> Finished {
        let Writer { sender, settings, shared, intake, flush, stats } = self;
        let timeout = settings.borrow().shutdown_timeout;
        shared.deadline.send_replace(Some(Instant::now() + timeout));
        shared.freed();
        shared.wake.notify_one();
        drop(sender);
        let _ = intake.await;
        let _ = flush.await;
        // The flush task may have given up with rows in memory (a disk error then): one last try.
        if !shared.lock().mem.is_empty() {
            shared.spill(u64::MAX, &VecDeque::new());
        }
        let mut st = shared.lock();
        // What neither the database nor the disk took is lost; say so.
        let left = st.mem.len();
        st.mem.clear();
        stats.dropped.fetch_add(left as u64, Relaxed);
        let stored = stats.messages_stored.load(Relaxed)
            + stats.duplicates.load(Relaxed)
            + stats.notices_stored.load(Relaxed)
            + stats.events_stored.load(Relaxed);
        Finished { stored, spooled: st.spool.rows(), lost: stats.dropped.load(Relaxed) }
    }
}

/// Starts the writer; opens the spool in `spool_dir` (a spool left by a previous run is
/// replayed first). The directory is fixed for the writer's life; `cfg` can change live.
pub fn spawn(store: Arc<dyn Store>, spool_dir: &std::path::Path, cfg: BatchConfig) -> std::io::Result<Writer> {
    spawn_filtered(store, spool_dir, cfg, UserFilter::default())
}

/// [`spawn`] with user filters in force from the first row, those replayed from a previous
/// run's spool included.
pub fn spawn_filtered(
    store: Arc<dyn Store>,
    spool_dir: &std::path::Path,
    cfg: BatchConfig,
    filter: UserFilter,
) -> std::io::Result<Writer> {
    let spool = Spool::open(spool_dir, cfg.spool_max_bytes)?;
    let leftover = spool.rows();
    if leftover > 0 {
        tracing::info!(rows = leftover, bytes = spool.bytes(), dir = %spool_dir.display(), "replaying rows spooled by a previous run");
    }
    let stats = Arc::new(WriterStats::default());
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            mem: VecDeque::new(),
            spooling: !spool.is_empty(),
            spool,
            closed: false,
            db_failing: false,
            disk_trouble: false,
            capacity: cfg.queue_capacity,
            durable_within: cfg.durable_within,
        }),
        wake: Notify::new(),
        room: Notify::new(),
        deadline: watch::channel(None).0,
        stats: stats.clone(),
        filter: std::sync::RwLock::new(Arc::new(filter)),
        flying: Mutex::new(Vec::new()),
        landed: Notify::new(),
        retrying: Default::default(),
    });
    let (tx, rx) = crate::record::channel(HANDOFF);
    let (settings, settings_rx) = watch::channel(cfg);
    let intake = tokio::spawn(intake(rx, shared.clone()));
    let flush = tokio::spawn(flush_loop(store, shared.clone(), settings_rx));
    Ok(Writer { sender: tx, settings, stats, shared, intake, flush })
}

async fn intake(mut rx: mpsc::Receiver<Record>, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(1024);
    let mut rows = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        rows.extend(buf.drain(..).map(stamp));
        shared.accept(&mut rows).await;
    }
    shared.lock().closed = true;
    shared.wake.notify_one();
}

/// Where a batch came from: memory (its only copy) or a spool segment (still on disk).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// From memory; the oldest row's stamp.
    Memory(Instant),
    Spool(u64),
}

/// Work for the database: a batch to write, or one row to keep in the dead letters.
#[derive(Clone)]
enum Job {
    /// Shared with the spill's view of batches in flight.
    Write(Arc<Batch>),
    DeadLetter(Box<Record>, String),
}

impl Job {
    fn records(&self) -> Vec<Record> {
        match self {
            Job::Write(b) => Batch::clone(b).into_records().collect(),
            Job::DeadLetter(r, _) => vec![(**r).clone()],
        }
    }

    fn len(&self) -> usize {
        match self {
            Job::Write(b) => b.len(),
            Job::DeadLetter(..) => 1,
        }
    }
}

/// The one place every row passes on its way to the database, from memory or the spool:
/// rows the user filter matches are dropped (counted, never logged one by one); rows that can
/// never be valid go straight to the dead letters; the rest is one write.
fn jobs_for(batch: Batch, filter: &UserFilter, stats: &WriterStats) -> VecDeque<Job> {
    let mut good = Batch::default();
    let mut jobs = VecDeque::new();
    for r in batch.into_records() {
        if !passes(filter, &r, stats) {
            continue;
        }
        match invalid_reason(&r) {
            None => good.push(r),
            Some(why) => jobs.push_back(Job::DeadLetter(Box::new(r), why)),
        }
    }
    if !good.is_empty() {
        jobs.push_front(Job::Write(Arc::new(good)));
    }
    jobs
}

/// Whether `filter` lets the row through; a row it drops is counted by reason.
fn passes(filter: &UserFilter, r: &Record, stats: &WriterStats) -> bool {
    match filter.verdict(r) {
        None => true,
        Some(Filtered::Ignored) => {
            stats.filtered_ignored.fetch_add(1, Relaxed);
            false
        }
        Some(Filtered::OptedOut) => {
            stats.filtered_opted_out.fetch_add(1, Relaxed);
            false
        }
    }
}

/// Drops what a filter applied since `jobs` were made matches: a batch retried through an
/// outage is written under the filter in force when the database is back.
fn drop_filtered(jobs: &mut VecDeque<Job>, filter: &UserFilter, stats: &WriterStats) {
    if filter.is_empty() {
        return;
    }
    for job in jobs.iter_mut() {
        if let Job::Write(b) = job {
            let rows = Arc::unwrap_or_clone(std::mem::take(b)).into_records();
            *b = Arc::new(Batch::from_records(rows.filter(|r| passes(filter, r, stats))));
        }
    }
    jobs.retain(|j| match j {
        Job::Write(b) => !b.is_empty(),
        Job::DeadLetter(r, _) => passes(filter, r, stats),
    });
}

/// A memory batch's write running beside others: whether it holds notices or events (those
/// are written one batch at a time, in order), and how it ended.
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = (bool, Flushed)> + Send>>;

async fn flush_loop(store: Arc<dyn Store>, shared: Arc<Shared>, mut settings: watch::Receiver<BatchConfig>) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let max_in_flight = store.max_in_flight().max(1);
    let mut replay: Option<(u64, VecDeque<Record>)> = None;
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // A batch with notices or events is in flight: the next such batch waits for it (a
    // ROOMSTATE is merged onto the last one stored, so their order matters).
    let mut ordered_busy = false;
    let mut gave_up = false;
    let mut seq = 0u64;
    let done = |(ordered, outcome): (bool, Flushed), ordered_busy: &mut bool, gave_up: &mut bool| {
        if ordered {
            *ordered_busy = false;
        }
        if matches!(outcome, Flushed::GaveUp) {
            *gave_up = true;
        }
    };
    loop {
        // Spool replays go one at a time, behind every write in flight (they are newer rows,
        // or rows a spill put back in front).
        // A failing database gets one batch at a time too: the rest waits in memory and on disk.
        // So does a batch still retrying after a failure (another batch's success clears
        // `db_failing`): a batch started beside it could commit ahead of it.
        let serial = replay.is_some() || shared.retrying.load(Relaxed) > 0 || {
            let st = shared.lock();
            st.spooling || st.db_failing
        };
        let room = !gave_up && in_flight.len() < max_in_flight && (in_flight.is_empty() || !serial);
        let next = tokio::select! {
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                done(r, &mut ordered_busy, &mut gave_up);
                continue;
            }
            next = next_batch(&shared, &mut settings, &mut replay), if room => next,
            else => break,
        };
        let Some((batch, source)) = next else {
            if in_flight.is_empty() {
                break;
            }
            // Writes still running may spill: look again once they are done.
            while let Some(r) = in_flight.next().await {
                done(r, &mut ordered_busy, &mut gave_up);
            }
            continue;
        };
        let ordered = !batch.notices.is_empty() || !batch.events.is_empty();
        if let Source::Memory(_) = source {
            seq += 1;
            let mut jobs = jobs_for(batch, &shared.filter(), &shared.stats);
            let (spilled, taken) = watch::channel(false);
            let me = Flying { seq, jobs: jobs.iter().cloned().collect(), spilled };
            // In `flying` before it waits its turn: out of memory now, so an older batch's
            // spill must take it (and its write then finds its rows on disk).
            shared.flying.lock().expect("writer flying lock").push(me);
            while ordered && ordered_busy {
                let Some(r) = in_flight.next().await else { break };
                done(r, &mut ordered_busy, &mut gave_up);
            }
            // A full batch starts at once, beside the one still committing.
            ordered_busy |= ordered;
            let (store, shared) = (store.clone(), shared.clone());
            let seq = seq;
            in_flight.push(Box::pin(async move {
                let mut refused = Refused::default();
                let outcome = write_out(&*store, &shared, &mut jobs, source, &mut refused, Some((seq, taken))).await;
                shared.flying.lock().expect("writer flying lock").retain(|f| f.seq != seq);
                shared.landed.notify_waiters();
                refused.log();
                (ordered, outcome)
            }));
            continue;
        }
        while !in_flight.is_empty() {
            let Some(r) = in_flight.next().await else { break };
            done(r, &mut ordered_busy, &mut gave_up);
        }
        let mut jobs = jobs_for(batch, &shared.filter(), &shared.stats);
        let mut refused = Refused::default();
        let outcome = write_out(&*store, &shared, &mut jobs, source, &mut refused, None).await;
        refused.log();
        match outcome {
            Flushed::Written => {
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
            Flushed::Spilled => {}
            Flushed::GaveUp => gave_up = true,
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
    let mut deadline_rx = shared.deadline.subscribe();
    loop {
        let (max_rows, interval) = {
            let s = settings.borrow_and_update();
            // A write gets at least a quarter of `durable_within` before its rows are spilled.
            (s.max_rows, s.flush_interval.min(s.durable_within / 2))
        };
        let deadline = *deadline_rx.borrow_and_update();
        // A flush starts when `max_rows` rows wait; if more have piled up meanwhile (the
        // database is the bottleneck), they go in the same batch: fewer, larger transactions.
        let bulk = max_rows.max(BULK_ROWS);
        let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
        if let Some((seq, rows)) = replay.as_mut() {
            if !rows.is_empty() && !past_deadline {
                let n = rows.len().min(bulk);
                return Some((Batch::from_records(rows.drain(..n)), Source::Spool(*seq)));
            }
        }
        let wait_until = {
            let mut st = shared.lock();
            if st.closed && past_deadline {
                // Out of time: what is still in memory goes to disk for the next start.
                if !st.mem.is_empty() {
                    drop(st);
                    shared.spill(u64::MAX, &VecDeque::new());
                }
                return None;
            }
            if let Some(front) = st.mem.front() {
                let age = front.at.elapsed();
                if st.mem.len() >= max_rows || st.closed || age >= interval {
                    let n = st.mem.len().min(bulk);
                    let oldest = front.at;
                    let batch = Batch::from_records(st.mem.drain(..n).map(|s| s.rec));
                    drop(st);
                    shared.freed();
                    return Some((batch, Source::Memory(oldest)));
                }
                Some(Instant::now() + (interval - age))
            } else if st.spooling && !past_deadline {
                let head = st.spool.read_head();
                shared.stats.spool_corrupt_segments.store(st.spool.set_aside(), Relaxed);
                match head {
                    Some((seq, rows)) => {
                        *replay = Some((seq, rows.into()));
                        continue;
                    }
                    None => {
                        st.spooling = false;
                        tracing::info!("spool written out; back to memory");
                        continue;
                    }
                }
            } else if st.closed {
                return None;
            } else {
                None
            }
        };
        // A deadline already past wakes nothing: intake's end (or a new row) will.
        let deadline = deadline.filter(|d| *d > Instant::now());
        let wait_until = match (wait_until, deadline) {
            (Some(w), Some(d)) => Some(w.min(d)),
            (w, d) => w.or(d),
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = settings.changed() => {}
            _ = deadline_rx.changed() => {}
            _ = async { sleep_until(wait_until.unwrap()).await }, if wait_until.is_some() => {}
        }
    }
}

enum Flushed {
    Written,
    /// The rows are in the spool (a write of them may have committed too).
    Spilled,
    GaveUp,
}

/// Why the writer stopped waiting for a write: the cause of the [`StoreError::Unavailable`] it
/// then acts on, as if the store had failed.
#[derive(Debug, thiserror::Error)]
enum GaveUp {
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("batch.shutdown_timeout expired with the write still waiting; abandoned")]
    ShutdownTimeout,
}

/// Rows refused during one batch, for one log line.
#[derive(Default)]
struct Refused {
    rows: u64,
    first_reason: Option<String>,
}

impl Refused {
    fn log(self) {
        if self.rows > 0 {
            tracing::warn!(
                rows = self.rows,
                first_reason = %self.first_reason.unwrap_or_default(),
                "rows that cannot be stored were kept in the dead_letters table"
            );
        }
    }
}

/// Writes `jobs`, isolating rows the database refuses. Keeps retrying connection-level
/// failures; moves memory rows to the spool after [`SPILL_AFTER`] of failing, when the oldest
/// reaches [`spill_age`] of `durable_within` (even while a write still waits), or at the
/// shutdown deadline.
async fn write_out(
    store: &dyn Store,
    shared: &Shared,
    jobs: &mut VecDeque<Job>,
    source: Source,
    refused: &mut Refused,
    flying: Option<(u64, watch::Receiver<bool>)>,
) -> Flushed {
    let (seq, taken) = match flying {
        Some((seq, taken)) => (seq, Some(taken)),
        None => (u64::MAX, None),
    };
    // An older batch's spill may have put these rows on disk already.
    let spilled_by_older = || taken.as_ref().is_some_and(|t| *t.borrow());
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    // The jobs are also in the spool: whatever the database does next, they are kept.
    let mut spilled = false;
    let mut deadline_rx = shared.deadline.subscribe();
    let mut filter = shared.filter();
    let mut retrying: Option<Retrying> = None;
    loop {
        let now = shared.filter();
        if !Arc::ptr_eq(&now, &filter) {
            drop_filtered(jobs, &now, &shared.stats);
            filter = now;
        }
        if spilled_by_older() {
            // On disk behind the older rows: written from there, in order, not ahead of them.
            return Flushed::Spilled;
        }
        let Some(job) = jobs.front() else { break };
        let started = Instant::now();
        let result = {
            let write = async {
                match job {
                    Job::Write(batch) => store.write(batch).await.map(Some),
                    Job::DeadLetter(record, reason) => store.dead_letter(record, reason).await.map(|()| None),
                }
            };
            tokio::pin!(write);
            let give_up = started + WRITE_TIMEOUT;
            let mut spill_retry: Option<Instant> = None;
            loop {
                let deadline = *deadline_rx.borrow_and_update();
                let spill_at = match source {
                    Source::Memory(oldest) if !spilled && !spilled_by_older() => {
                        Some(spill_retry.unwrap_or(oldest + spill_age(shared.lock().durable_within)))
                    }
                    _ => None,
                };
                tokio::select! {
                    r = &mut write => break r,
                    _ = sleep_until(give_up) => {
                        break Err(StoreError::Unavailable(GaveUp::NoAnswer(WRITE_TIMEOUT).into()))
                    }
                    _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                        break Err(StoreError::Unavailable(GaveUp::ShutdownTimeout.into()))
                    }
                    _ = deadline_rx.changed() => {}
                    // On disk behind older rows now: committing would put them ahead (the
                    // dropped write rolls back; only a COMMIT already sent can still land).
                    _ = taken_by_older(taken.clone()), if taken.is_some() && !spilled_by_older() => {
                        return Flushed::Spilled;
                    }
                    _ = async { sleep_until(spill_at.unwrap()).await }, if spill_at.is_some() => {
                        if shared.spill(seq, jobs) {
                            spilled = true;
                            shared.stats.slow_write_spills.fetch_add(1, Relaxed);
                            tracing::warn!(
                                rows = jobs.iter().map(Job::len).sum::<usize>(),
                                "a write has not committed within batch.durable_within: its rows and the memory queue are copied to the spool (a late commit is deduplicated)"
                            );
                        } else {
                            spill_retry = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
        };
        // A dead letter the database will not take (its table gone, no grant, or the database
        // down) is kept in a file beside the spool instead: retrying it would hold up every row
        // behind it.
        spilled |= spilled_by_older();
        if let (Err(e), Some(Job::DeadLetter(..)), false) = (&result, jobs.front(), spilled) {
            let Some(Job::DeadLetter(record, reason)) = jobs.pop_front() else { unreachable!("checked above") };
            let why_not = e.one_line();
            let kept = shared.lock().spool.keep_dead_letter(&record, &reason, &why_not);
            match kept {
                Ok(()) => {
                    shared.stats.dead_lettered.fetch_add(1, Relaxed);
                    refused.rows += 1;
                    refused.first_reason.get_or_insert(reason);
                    if shared.stats.dead_letter_files.fetch_add(1, Relaxed) == 0 {
                        tracing::error!(
                            "the dead_letters table does not take rows ({why_not}); rows that cannot be stored are kept in {} instead",
                            super::spool::DEAD_LETTERS_FILE
                        );
                    }
                }
                Err(io) => {
                    tracing::error!("a row cannot be stored ({reason}) nor kept in dead_letters ({why_not}) or on disk ({io}); it is lost");
                    shared.note_dropped(1, Loss::NowhereToKeep);
                }
            }
            continue;
        }
        match result {
            Ok(report) => {
                let job = jobs.pop_front().expect("the job just written");
                let s = &shared.stats;
                match report {
                    Some(report) => {
                        s.messages_stored.fetch_add(report.messages_inserted, Relaxed);
                        s.duplicates.fetch_add(report.duplicates, Relaxed);
                        s.notices_stored.fetch_add(report.notices_inserted, Relaxed);
                        s.events_stored.fetch_add(report.events_inserted, Relaxed);
                        s.batches.fetch_add(1, Relaxed);
                        s.observe_flush(started.elapsed());
                        if report.messages_inserted > 0 {
                            s.last_stored_ms.store(chrono::Utc::now().timestamp_millis() as u64, Relaxed);
                        }
                    }
                    None => {
                        s.dead_lettered.fetch_add(1, Relaxed);
                        refused.rows += 1;
                        if let Job::DeadLetter(_, reason) = job {
                            refused.first_reason.get_or_insert(reason);
                        }
                    }
                }
                if matches!(source, Source::Spool(_)) {
                    s.replayed.fetch_add(job_len_written(&report), Relaxed);
                }
                shared.lock().db_failing = false;
                retrying = None;
                if failures > 0 {
                    tracing::info!(attempts = failures + 1, "the database is back; writing again");
                    failures = 0;
                    failing_since = None;
                    backoff = Duration::from_millis(100);
                }
                if spilled {
                    // The rest is in the spool; it is written from there.
                    return Flushed::Spilled;
                }
            }
            Err(e @ StoreError::Rejected(_)) => {
                if spilled {
                    return Flushed::Spilled;
                }
                // The dead letter keeps what the database said, not the variant's words.
                let reason = e.cause().to_string();
                match jobs.pop_front().expect("the job just tried") {
                    Job::Write(batch) => match Arc::unwrap_or_clone(batch).split() {
                        Ok((a, b)) => {
                            jobs.push_front(Job::Write(Arc::new(b)));
                            jobs.push_front(Job::Write(Arc::new(a)));
                        }
                        Err(one) => {
                            let record = one.into_records().next().expect("a one-row batch");
                            jobs.push_front(Job::DeadLetter(Box::new(record), reason));
                        }
                    },
                    Job::DeadLetter(_, why) => {
                        // Not even the dead letters take it: nowhere left to keep it.
                        tracing::error!(
                            "a row cannot be stored ({why}) nor kept in dead_letters ({reason}); it is lost"
                        );
                        shared.note_dropped(1, Loss::NowhereToKeep);
                    }
                }
            }
            Err(e @ StoreError::Unavailable(_)) => {
                if spilled {
                    return Flushed::Spilled;
                }
                shared.stats.failed_attempts.fetch_add(1, Relaxed);
                shared.lock().db_failing = true;
                retrying.get_or_insert_with(|| Retrying::start(&shared.retrying));
                shared.freed();
                failures += 1;
                let since = *failing_since.get_or_insert_with(Instant::now);
                if failures == 1 || failures.is_multiple_of(20) {
                    let rows: usize = jobs.iter().map(Job::len).sum();
                    tracing::warn!(
                        rows,
                        attempt = failures,
                        "writing to the database failed, will retry: {}",
                        e.one_line()
                    );
                }
                let deadline = shared.deadline();
                let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
                if let Source::Memory(_) = source {
                    if (out_of_time || since.elapsed() >= SPILL_AFTER) && shared.spill(seq, jobs) {
                        jobs.clear();
                        tracing::warn!("the database is unavailable: rows go to the spool until it is back");
                        return Flushed::Spilled;
                    }
                    if out_of_time {
                        let lost: usize = jobs.iter().map(Job::len).sum();
                        jobs.clear();
                        shared.note_dropped(lost, Loss::NowhereToKeep);
                        return Flushed::GaveUp;
                    }
                } else if out_of_time {
                    return Flushed::GaveUp;
                }
                // The next attempt's own timers cover `durable_within` and the deadline.
                let mut nap = Instant::now() + backoff;
                if let Some(d) = deadline {
                    nap = nap.min(d);
                }
                if let Source::Memory(oldest) = source {
                    // Wake for the spill when it is due; once past (a spill failed), the
                    // backoff paces the retries: never a busy loop.
                    let spill_at = oldest + spill_age(shared.lock().durable_within);
                    if spill_at > Instant::now() {
                        nap = nap.min(spill_at);
                    }
                }
                tokio::select! {
                    _ = sleep_until(nap) => {}
                    _ = deadline_rx.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Retries go oldest first: a newer batch committing while an older one still
                // fails would store its rows ahead of them. The older one ends by a write, a
                // spill (which takes these rows too) or the shutdown deadline.
                if taken.is_some() {
                    loop {
                        let landed = shared.landed.notified();
                        if spilled_by_older() || !shared.older_in_flight(seq) {
                            break;
                        }
                        tokio::select! {
                            _ = landed => {}
                            _ = taken_by_older(taken.clone()) => {}
                        }
                    }
                }
            }
        }
    }
    if spilled {
        Flushed::Spilled
    } else {
        Flushed::Written
    }
}

/// Resolves once an older batch's spill took these rows (never for a spool replay).
async fn taken_by_older(taken: Option<watch::Receiver<bool>>) {
    if let Some(mut t) = taken {
        if t.wait_for(|v| *v).await.is_ok() {
            return;
        }
    }
    // The sender lives until the batch is done; never mistake its end for a spill.
    std::future::pending::<()>().await
}

/// Rows a successful job wrote (a dead letter is one row).
fn job_len_written(report: &Option<super::WriteReport>) -> u64 {
    match report {
        Some(r) => r.messages_inserted + r.duplicates + r.notices_inserted + r.events_inserted,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    //! The writer against a fake in-memory store, on a paused clock: each runs in milliseconds.
    use super::*;
    use crate::store::{ChatMessage, WriteReport};
    use async_trait::async_trait;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// A store that remembers message ids (deduplicating like `ON CONFLICT`) and misbehaves
    /// on request.
    #[derive(Default)]
    struct Fake {
        stored: Mutex<Vec<String>>,
        dead: Mutex<Vec<(String, String)>>,
        /// Every id a write was attempted with.
        seen: Mutex<BTreeSet<String>>,
        fail_next: AtomicU64,
        reject: Mutex<Vec<String>>,
        hang: std::sync::atomic::AtomicBool,
        delay_ms: AtomicU64,
        /// The dead-letter table refuses everything (dropped, or no grant).
        no_dead_letters: std::sync::atomic::AtomicBool,
        /// `max_in_flight` (0: the trait's default).
        in_flight: usize,
        /// Writes running now, and the most at once.
        running: AtomicU64,
        peak: AtomicU64,
        /// Writes holding events or notices running now, and the most at once.
        ordered_running: AtomicU64,
        ordered_peak: AtomicU64,
        /// A batch holding this message id fails this many times more (connection refused).
        fail_batch_with: Mutex<Option<(String, u64)>>,
        /// Event keys in the order they were stored.
        events: Mutex<Vec<String>>,
        /// A batch holding one of these ids gets no answer until it is released (a database
        /// that stopped answering, or a pool waiting to connect).
        held: Mutex<BTreeSet<String>>,
        released: tokio::sync::Notify,
    }

    /// Counts a write as running until dropped.
    struct Running<'a>(&'a AtomicU64);

    impl<'a> Running<'a> {
        fn start(now: &'a AtomicU64, peak: &AtomicU64) -> Self {
            let n = now.fetch_add(1, Relaxed) + 1;
            peak.fetch_max(n, Relaxed);
            Running(now)
        }
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }

    #[async_trait]
    impl Store for Fake {
        async fn write(&self, batch: &Batch) -> Result<WriteReport, StoreError> {
            self.seen.lock().unwrap().extend(batch.messages.iter().map(|m| m.message_id.clone()));
            let _running = Running::start(&self.running, &self.peak);
            let _ordered = (!batch.events.is_empty() || !batch.notices.is_empty())
                .then(|| Running::start(&self.ordered_running, &self.ordered_peak));
            if self.hang.load(Relaxed) {
                std::future::pending::<()>().await;
            }
            loop {
                let released = self.released.notified();
                if !batch.messages.iter().any(|m| self.held.lock().unwrap().contains(&m.message_id)) {
                    break;
                }
                released.await;
            }
            let delay = self.delay_ms.load(Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.fail_next.load(Relaxed) > 0 {
                self.fail_next.fetch_sub(1, Relaxed);
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            if let Some((id, left)) = self.fail_batch_with.lock().unwrap().as_mut() {
                if *left > 0 && batch.messages.iter().any(|m| &m.message_id == id) {
                    *left -= 1;
                    return Err(StoreError::Unavailable("connection reset".into()));
                }
            }
            let reject = self.reject.lock().unwrap().clone();
            if batch.messages.iter().any(|m| reject.contains(&m.message_id)) {
                return Err(StoreError::Rejected("index row size exceeds btree maximum".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            let mut report = WriteReport::default();
            for m in &batch.messages {
                if stored.contains(&m.message_id) {
                    report.duplicates += 1;
                } else {
                    stored.push(m.message_id.clone());
                    report.messages_inserted += 1;
                }
            }
            let mut events = self.events.lock().unwrap();
            for e in &batch.events {
                if !events.contains(&e.event_key) {
                    events.push(e.event_key.clone());
                    report.events_inserted += 1;
                }
            }
            Ok(report)
        }

        fn max_in_flight(&self) -> usize {
            if self.in_flight == 0 {
                1
            } else {
                self.in_flight
            }
        }

        async fn dead_letter(&self, record: &Record, error: &str) -> Result<(), StoreError> {
            if self.no_dead_letters.load(Relaxed) {
                return Err(StoreError::Unavailable("relation \"dead_letters\" does not exist (42P01)".into()));
            }
            if self.fail_next.load(Relaxed) > 0 {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            let Record::Message(m) = record else { unreachable!() };
            self.dead.lock().unwrap().push((m.message_id.clone(), error.to_string()));
            Ok(())
        }
    }

    impl Fake {
        fn stored(&self) -> Vec<String> {
            self.stored.lock().unwrap().clone()
        }

        fn hold(&self, ids: &[String]) {
            self.held.lock().unwrap().extend(ids.iter().cloned());
        }

        fn release(&self, id: &String) {
            self.held.lock().unwrap().remove(id);
            self.released.notify_waiters();
        }
    }

    fn id(i: u128) -> String {
        uuid::Uuid::from_u128(i).hyphenated().to_string()
    }

    fn msg(i: u128) -> Record {
        let now = chrono::Utc::now();
        Record::Message(ChatMessage {
            message_id: id(i),
            channel: "chan".into(),
            username: "nia".into(),
            text: format!("m{i}"),
            badges: "{}".into(),
            sent_at: now,
            received_at: now,
            ..Default::default()
        })
    }

    fn cfg(_spool: &Path) -> BatchConfig {
        BatchConfig {
            max_rows: 100,
            flush_interval: Duration::from_millis(100),
            queue_capacity: 1000,
            spool_max_bytes: 1 << 30,
            shutdown_timeout: Duration::from_secs(2),
            durable_within: Duration::from_secs(5),
        }
    }

    async fn send(w: &Writer, ids: std::ops::Range<u128>) {
        for i in ids {
            w.sender.send(msg(i)).await.unwrap();
        }
    }

    /// Lets the paused clock run for `d`.
    async fn run_for(d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn ids(r: std::ops::Range<u128>) -> Vec<String> {
        r.map(id).collect()
    }

    /// Message `i` from `login` with user id `uid`.
    fn msg_from(i: u128, login: &str, uid: &str) -> Record {
        let Record::Message(mut m) = msg(i) else { unreachable!() };
        m.username = login.into();
        m.user_id = Some(uid.into());
        Record::Message(m)
    }

    fn users(logins: &[&str], ids: &[&str]) -> crate::record::UserSet {
        crate::record::UserSet {
            logins: logins.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Ignores `bot`; `shy` (id 42) opted out.
    fn bot_and_shy() -> UserFilter {
        UserFilter { ignore: users(&["bot"], &[]), opt_out: users(&[], &["42"]), ..Default::default() }
    }

    /// Rows 0..30: every third from `bot`, every third from `shy` under a new login, the rest
    /// from `nia`; returns the ids of nia's.
    async fn send_mixed(w: &Writer, from: u128) -> Vec<String> {
        let mut kept = Vec::new();
        for i in from..from + 30 {
            let r = match i % 3 {
                0 => msg_from(i, "bot", "7"),
                1 => msg_from(i, "shy_renamed", "42"),
                _ => {
                    kept.push(id(i));
                    msg_from(i, "nia", "9")
                }
            };
            w.sender.send(r).await.unwrap();
        }
        kept
    }

    #[tokio::test(start_paused = true)]
    async fn rows_of_ignored_and_opted_out_users_never_reach_the_store_and_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        w.set_filter(bot_and_shy());
        let kept = send_mixed(&w, 0).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored(), kept);
        assert_eq!(fake.seen.lock().unwrap().len(), 10, "filtered rows are not even sent to the store");
        assert_eq!((w.stats.filtered_ignored.load(Relaxed), w.stats.filtered_opted_out.load(Relaxed)), (10, 10));
        assert_eq!(w.finish().await, Finished { stored: 10, spooled: 0, lost: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_filter_applied_while_rows_wait_in_memory_drops_them_before_their_write_and_lifting_it_stores_later_rows()
    {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let kept = send_mixed(&w, 0).await;
        // Read, not yet written (flush_interval is 100 ms): the reload applies now.
        w.set_filter(bot_and_shy());
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored(), kept);
        w.set_filter(UserFilter::default());
        send(&w, 100..103).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored().len(), 13, "an emptied filter stores everyone again");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn rows_spooled_before_an_opt_out_are_dropped_when_replayed_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(u64::MAX), ..Default::default() });
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let kept = send_mixed(&w, 0).await;
        run_for(Duration::from_secs(6)).await;
        assert_eq!(w.observer().backlog().spool_rows, 30, "the outage put every row on disk");
        w.set_filter(bot_and_shy());
        fake.fail_next.store(0, Relaxed);
        run_for(Duration::from_secs(10)).await;
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, kept);
        assert_eq!(w.stats.replayed.load(Relaxed), 10);
        assert_eq!((w.stats.filtered_ignored.load(Relaxed), w.stats.filtered_opted_out.load(Relaxed)), (10, 10));
        assert_eq!(w.observer().backlog().spool_rows, 0, "the segment is removed once written");
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spool_left_by_a_previous_run_is_replayed_under_the_new_runs_filter_from_its_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let down = Arc::new(Fake { fail_next: AtomicU64::new(u64::MAX), ..Default::default() });
        let w = spawn(down.clone(), dir.path(), cfg(dir.path())).unwrap();
        let kept = send_mixed(&w, 0).await;
        assert_eq!(w.finish().await.spooled, 30);
        let fake = Arc::new(Fake::default());
        let w = spawn_filtered(fake.clone(), dir.path(), cfg(dir.path()), bot_and_shy()).unwrap();
        run_for(Duration::from_secs(1)).await;
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, kept);
        assert_eq!(fake.seen.lock().unwrap().len(), 10, "no filtered row was ever sent");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_fails_three_times_then_recovers_gets_every_row_once_without_a_spill() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(3), ..Default::default() });
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..10).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored(), ids(0..10));
        assert_eq!(w.stats.failed_attempts.load(Relaxed), 3);
        assert_eq!(w.stats.spooled.load(Relaxed), 0, "100+200+400 ms of retries stay under SPILL_AFTER");
        let done = w.finish().await;
        assert_eq!(done, Finished { stored: 10, spooled: 0, lost: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_the_table_refuses_is_kept_beside_the_spool_and_later_rows_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.reject.lock().unwrap() = vec![id(3)];
        fake.no_dead_letters.store(true, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..10).await;
        run_for(Duration::from_secs(1)).await;
        send(&w, 10..20).await;
        run_for(Duration::from_secs(1)).await;
        let mut want = ids(0..20);
        want.retain(|i| *i != id(3));
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, want, "rows after the refused one are stored");
        let kept = std::fs::read_to_string(dir.path().join(crate::store::spool::DEAD_LETTERS_FILE)).unwrap();
        assert_eq!(kept.lines().count(), 1);
        assert!(kept.contains(&id(3)) && kept.contains("btree") && kept.contains("42P01"), "{kept}");
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_the_row_the_store_rejects_is_dead_lettered_and_the_rest_stored() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.reject.lock().unwrap() = vec![id(37)];
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..100).await;
        run_for(Duration::from_secs(1)).await;
        let mut want = ids(0..100);
        want.retain(|i| *i != id(37));
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, want);
        let dead = fake.dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, id(37));
        assert!(dead[0].1.contains("btree"), "{dead:?}");
        assert_eq!(w.stats.dead_lettered.load(Relaxed), 1);
        send(&w, 100..101).await;
        run_for(Duration::from_millis(300)).await;
        assert!(fake.stored().contains(&id(100)), "the writer goes on after a refused row");
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_of_4000_characters_or_an_id_that_is_no_uuid_goes_to_dead_letters_without_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let Record::Message(mut long) = msg(1) else { unreachable!() };
        long.channel = "é".repeat(4000);
        let Record::Message(mut no_uuid) = msg(2) else { unreachable!() };
        no_uuid.message_id = "x".repeat(4000);
        w.sender.send(Record::Message(long)).await.unwrap();
        w.sender.send(Record::Message(no_uuid)).await.unwrap();
        send(&w, 3..5).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored(), ids(3..5));
        let dead = fake.dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(dead[0].1.contains("not a Twitch login") && dead[0].1.contains("4000 characters"), "{}", dead[0].1);
        assert!(dead[1].1.contains("not a UUID"), "{}", dead[1].1);
        assert!(!fake.seen.lock().unwrap().contains(&"x".repeat(4000)), "invalid rows are never sent");
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_hangs_forever_has_the_rows_on_disk_within_durable_within_and_shutdown_keeps_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.hang.store(true, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let t0 = Instant::now();
        send(&w, 0..10).await;
        let obs = w.observer();
        while obs.backlog().spool_rows < 10 {
            run_for(Duration::from_millis(10)).await;
            assert!(t0.elapsed() <= Duration::from_secs(5), "not on disk within durable_within");
        }
        let on_disk_after = t0.elapsed();
        assert!(on_disk_after >= spill_age(Duration::from_secs(5)), "spilled at {on_disk_after:?}");
        // New rows go straight behind them on disk.
        send(&w, 10..20).await;
        run_for(Duration::from_millis(10)).await;
        assert_eq!(obs.backlog().spool_rows, 20);
        let t1 = Instant::now();
        let done = w.finish().await;
        let took = t1.elapsed();
        assert!(took <= Duration::from_millis(2100), "shutdown took {took:?} with a 2 s timeout");
        assert_eq!(done, Finished { stored: 0, spooled: 20, lost: 0 });
        eprintln!("hung store: on disk after {on_disk_after:?}, shutdown in {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_deadline_abandons_a_write_still_waiting_and_spools_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.hang.store(true, Relaxed);
        let mut c = cfg(dir.path());
        c.durable_within = Duration::from_secs(60);
        let w = spawn(fake.clone(), dir.path(), c).unwrap();
        send(&w, 0..10).await;
        run_for(Duration::from_millis(500)).await;
        assert_eq!(fake.seen.lock().unwrap().len(), 10, "the write is in flight");
        let t1 = Instant::now();
        let done = w.finish().await;
        let took = t1.elapsed();
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_millis(2100), "took {took:?}");
        assert_eq!(done, Finished { stored: 0, spooled: 10, lost: 0 });

        // The next start writes them.
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        run_for(Duration::from_millis(500)).await;
        assert_eq!(fake.stored(), ids(0..10));
        assert_eq!(w.finish().await, Finished { stored: 10, spooled: 0, lost: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_slower_than_durable_within_is_copied_to_disk_and_its_late_commit_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.delay_ms.store(10_000, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let t0 = Instant::now();
        send(&w, 0..10).await;
        let obs = w.observer();
        while obs.backlog().spool_rows < 10 {
            run_for(Duration::from_millis(10)).await;
        }
        assert!(t0.elapsed() <= Duration::from_secs(5), "on disk after {:?}", t0.elapsed());
        assert!(fake.stored().is_empty(), "the write is still waiting");
        fake.delay_ms.store(0, Relaxed);
        run_for(Duration::from_secs(11)).await;
        assert_eq!(fake.stored(), ids(0..10), "stored once");
        assert_eq!(w.stats.slow_write_spills.load(Relaxed), 1);
        assert_eq!(w.stats.duplicates.load(Relaxed), 10, "the replay of the copy is deduplicated");
        assert_eq!(w.finish().await, Finished { stored: 20, spooled: 0, lost: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn rows_waiting_for_room_while_the_store_is_slow_are_on_disk_within_durable_within() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        fake.delay_ms.store(3_000, Relaxed);
        let mut c = cfg(dir.path());
        c.queue_capacity = 10;
        c.max_rows = 10;
        c.durable_within = Duration::from_secs(1);
        let w = spawn(fake.clone(), dir.path(), c).unwrap();
        let t0 = Instant::now();
        send(&w, 0..50).await;
        let obs = w.observer();
        while obs.backlog().spool_rows + (fake.stored().len() as u64) < 50 {
            run_for(Duration::from_millis(10)).await;
            assert!(t0.elapsed() <= Duration::from_secs(1), "{:?} after {:?}", obs.backlog(), t0.elapsed());
        }
        fake.delay_ms.store(0, Relaxed);
        run_for(Duration::from_secs(5)).await;
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, ids(0..50));
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_garbage_and_torn_spool_segments_are_set_aside_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let seg = |seq: u64| dir.path().join(format!("{seq:020}.jsonl"));
        std::fs::write(seg(10), b"").unwrap();
        std::fs::write(seg(11), b"\xff\xfe garbage\n{]\n").unwrap();
        std::fs::write(seg(12), b"{\"kind\":\"message\",\"message_id\":\"0").unwrap();
        let mut good = serde_json::to_vec(&msg(1)).unwrap();
        good.push(b'\n');
        std::fs::write(seg(13), &good).unwrap();
        std::fs::write(dir.path().join("1.jsonl"), b"not ours\n").unwrap();
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        run_for(Duration::from_millis(500)).await;
        assert_eq!(fake.stored(), ids(1..2));
        assert_eq!(w.stats.spool_corrupt_segments.load(Relaxed), 3);
        assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 3);
        assert!(dir.path().join("1.jsonl").exists(), "files not ours are left alone");
        send(&w, 2..4).await;
        run_for(Duration::from_millis(500)).await;
        assert_eq!(fake.stored(), ids(1..4), "new rows are stored after the bad segments");
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spool_that_cannot_be_written_keeps_rows_in_memory_up_to_the_queue_and_counts_only_real_losses() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(u64::MAX), ..Default::default() });
        let mut c = cfg(dir.path());
        c.queue_capacity = 20;
        let w = spawn(fake.clone(), dir.path(), c).unwrap();
        // Every segment name the writer would use is taken by a directory: no write can land.
        std::fs::create_dir(dir.path().join(format!("{:020}.jsonl", 1u64 << 40))).unwrap();
        std::fs::create_dir(dir.path().join(format!("{:020}.tmp", 1u64 << 40))).unwrap();
        send(&w, 0..20).await;
        run_for(Duration::from_secs(3)).await;
        send(&w, 20..50).await;
        run_for(Duration::from_secs(3)).await;
        assert_eq!(w.stats.dropped.load(Relaxed), 10, "20 in the failing batch, 20 in memory, 10 lost");
        assert_eq!(w.stats.spooled.load(Relaxed), 0);
        fake.fail_next.store(0, Relaxed);
        run_for(Duration::from_secs(6)).await;
        let stored = fake.stored();
        assert_eq!(stored.len(), 40);
        let done = w.finish().await;
        assert_eq!(done, Finished { stored: 40, spooled: 0, lost: 10 });
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_with_nowhere_to_keep_the_rows_reports_them_lost() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(u64::MAX), ..Default::default() });
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        std::fs::create_dir(dir.path().join(format!("{:020}.jsonl", 1u64 << 40))).unwrap();
        std::fs::create_dir(dir.path().join(format!("{:020}.tmp", 1u64 << 40))).unwrap();
        send(&w, 0..30).await;
        run_for(Duration::from_millis(500)).await;
        let done = w.finish().await;
        assert_eq!(done, Finished { stored: 0, spooled: 0, lost: 30 });
    }

    thread_local! {
        static SINK: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
    }

    /// Writes to the buffer of the current thread's test, if it captures.
    struct ThreadSink;

    impl std::io::Write for ThreadSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            SINK.with(|s| {
                if let Some(buf) = &*s.borrow() {
                    buf.lock().unwrap().extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Log output of the current thread (a paused-clock test runs its tasks on it). One global
    /// subscriber routes by thread: per-thread subscribers race with other tests over
    /// tracing's cached callsite interest and lose events.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    struct Uncapture;

    impl Drop for Uncapture {
        fn drop(&mut self) {
            SINK.with(|s| *s.borrow_mut() = None);
        }
    }

    impl Captured {
        fn install(&self) -> Uncapture {
            static GLOBAL: std::sync::Once = std::sync::Once::new();
            GLOBAL.call_once(|| {
                let sub = tracing_subscriber::fmt().with_writer(|| ThreadSink).with_ansi(false).finish();
                tracing::subscriber::set_global_default(sub).expect("no other global subscriber in unit tests");
            });
            SINK.with(|s| *s.borrow_mut() = Some(self.0.clone()));
            Uncapture
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_refused_rows_in_one_batch_make_one_warning_with_their_count() {
        let log = Captured::default();
        let _guard = log.install();
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.reject.lock().unwrap() = (0..10).map(|i| id(i * 10 + 3)).collect();
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..100).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored().len(), 90);
        assert_eq!(fake.dead.lock().unwrap().len(), 10);
        let text = log.text();
        assert_eq!(text.matches("kept in the dead_letters table").count(), 1, "{text}");
        assert!(text.contains("rows=10"), "{text}");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_segment_is_logged_once_not_once_per_loop() {
        let log = Captured::default();
        let _guard = log.install();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:020}.jsonl", 5)), b"garbage\n").unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(10), ..Default::default() });
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..5).await;
        run_for(Duration::from_secs(60)).await;
        assert_eq!(fake.stored(), ids(0..5));
        let text = log.text();
        assert_eq!(text.matches("cannot be replayed").count(), 1, "{text}");
        assert!(text.lines().count() < 20, "{text}");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_shutdown_deadline_with_a_sender_still_held_the_writer_waits_without_spinning_and_spools_late_rows(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..3).await;
        let late = w.sender.clone();
        let finishing = tokio::spawn(w.finish());
        run_for(Duration::from_secs(5)).await;
        assert!(!finishing.is_finished(), "a client still holds a sender");
        assert_eq!(fake.stored(), ids(0..3));
        fake.hang.store(true, Relaxed);
        for i in 3..6 {
            late.send(msg(i)).await.unwrap();
        }
        run_for(Duration::from_millis(100)).await;
        drop(late);
        let done = finishing.await.unwrap();
        assert_eq!(done, Finished { stored: 3, spooled: 3, lost: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_disk_is_logged_as_such_and_its_rows_wait_in_memory_instead_of_being_dropped() {
        let log = Captured::default();
        let _guard = log.install();
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { fail_next: AtomicU64::new(u64::MAX), ..Default::default() });
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        // The first spill's file is /dev/full, which answers every write with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("{:020}.tmp", 1u64 << 40))).unwrap();
        send(&w, 0..10).await;
        run_for(Duration::from_secs(5)).await;
        let text = log.text();
        assert!(text.contains(&format!("disk full at {}", dir.path().display())), "{text}");
        assert_eq!(w.stats.dropped.load(Relaxed), 0);
        fake.fail_next.store(0, Relaxed);
        run_for(Duration::from_secs(10)).await;
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, ids(0..10));
        assert_eq!(w.finish().await.lost, 0);
    }

    /// A CLEARCHAT-like event with key `e{i}`.
    fn event(i: u128) -> Record {
        Record::Event(crate::record::ChatEvent {
            event_key: format!("e{i}"),
            kind: "clearchat".into(),
            channel: "chan".into(),
            sent_at: chrono::Utc::now(),
            received_at: chrono::Utc::now(),
            ..Default::default()
        })
    }

    /// Batch 0..100 gets no answer (held) while batch 100..200 beside it fails `fails` times:
    /// a database that stops answering one connection and refuses the other.
    fn older_hung_newer_failing(fails: u64) -> Arc<Fake> {
        let fake = pipelined(0);
        fake.hold(&[id(0)]);
        *fake.fail_batch_with.lock().unwrap() = Some((id(100), fails));
        fake
    }

    /// Rows 0..100, then 100..200 once the first batch is in flight: two batches side by side.
    async fn two_batches(w: &Writer) {
        send(w, 0..100).await;
        run_for(Duration::from_millis(5)).await;
        send(w, 100..200).await;
    }

    fn pipelined(delay_ms: u64) -> Arc<Fake> {
        let fake = Fake { in_flight: 2, ..Default::default() };
        fake.delay_ms.store(delay_ms, Relaxed);
        Arc::new(fake)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_out_at_once_while_the_previous_one_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(40);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..100).await;
        run_for(Duration::from_millis(10)).await;
        send(&w, 100..200).await;
        // One at a time, the second batch would commit at 80 ms; side by side, by 50 ms.
        run_for(Duration::from_millis(41)).await;
        assert_eq!(fake.stored().len(), 200, "both full batches committed within one write time");
        assert_eq!(fake.peak.load(Relaxed), 2);
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_writes_at_once_than_the_store_allows() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(40);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        for k in 0..10 {
            send(&w, k * 100..(k + 1) * 100).await;
            run_for(Duration::from_millis(5)).await;
        }
        run_for(Duration::from_millis(500)).await;
        assert_eq!(fake.stored().len(), 1000);
        assert_eq!(fake.peak.load(Relaxed), 2, "two in flight, never three");
        let one = Arc::new(Fake::default());
        one.delay_ms.store(40, Relaxed);
        let dir2 = tempfile::tempdir().unwrap();
        let w1 = spawn(one.clone(), dir2.path(), cfg(dir2.path())).unwrap();
        send(&w1, 0..300).await;
        run_for(Duration::from_millis(500)).await;
        assert_eq!(one.stored().len(), 300);
        assert_eq!(one.peak.load(Relaxed), 1, "a store that does not say otherwise gets one write at a time");
        w.finish().await;
        w1.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_batch_failing_while_a_newer_one_commits_is_retried_and_every_row_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(20);
        *fake.fail_batch_with.lock().unwrap() = Some((id(0), 3));
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..100).await;
        run_for(Duration::from_millis(5)).await;
        send(&w, 100..300).await;
        run_for(Duration::from_millis(100)).await;
        // The newer batches went in while the first one was still failing.
        let stored = fake.stored();
        assert!(stored.starts_with(&ids(100..200)), "newer batch first: {:?}", &stored[..3]);
        assert!(!stored.contains(&id(0)));
        run_for(Duration::from_secs(2)).await;
        let mut stored = fake.stored();
        stored.sort();
        assert_eq!(stored, ids(0..300), "every row, once");
        assert_eq!(w.stats.messages_stored.load(Relaxed), 300);
        assert_eq!(w.stats.failed_attempts.load(Relaxed), 3);
        assert_eq!(w.stats.spooled.load(Relaxed), 0, "retried in memory, no spill");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_batches_that_both_fail_go_to_the_spool_in_arrival_order_and_are_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(10);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        fake.fail_next.store(1_000_000, Relaxed);
        send(&w, 0..100).await;
        run_for(Duration::from_millis(5)).await;
        send(&w, 100..250).await;
        // Spilled after SPILL_AFTER (at the next retry) or at `durable_within`'s spill age.
        run_for(Duration::from_secs(5)).await;
        assert!(w.stats.spooled.load(Relaxed) >= 250, "all on disk: {}", w.stats.spooled.load(Relaxed));
        assert!(fake.stored().is_empty());
        fake.fail_next.store(0, Relaxed);
        send(&w, 250..260).await;
        run_for(Duration::from_secs(10)).await;
        // Replayed one batch at a time from the spool: the spool kept arrival order although
        // the older batch spilled first (it took the newer one in flight with it).
        assert_eq!(fake.stored(), ids(0..260), "every row once, in arrival order");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_with_events_are_written_one_at_a_time_in_the_order_read_even_when_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(30);
        *fake.fail_batch_with.lock().unwrap() = Some((id(0), 2));
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        for k in 0..6u128 {
            // Each full batch: 99 messages and one event.
            send(&w, k * 100..k * 100 + 99).await;
            w.sender.send(event(k)).await.unwrap();
            run_for(Duration::from_millis(2)).await;
        }
        run_for(Duration::from_secs(3)).await;
        assert_eq!(fake.ordered_peak.load(Relaxed), 1, "never two event batches at once");
        assert_eq!(*fake.events.lock().unwrap(), (0..6).map(|k| format!("e{k}")).collect::<Vec<_>>());
        assert_eq!(fake.stored().len(), 6 * 99);
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_every_write_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(300);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send(&w, 0..100).await;
        run_for(Duration::from_millis(5)).await;
        send(&w, 100..230).await;
        run_for(Duration::from_millis(5)).await;
        let f = w.finish().await;
        assert_eq!(fake.stored().len(), 230);
        assert_eq!((f.stored, f.lost, f.spooled), (230, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_an_older_spill_took_to_disk_is_not_written_ahead_of_it_when_the_database_returns() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(0);
        fake.fail_next.store(1_000_000, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        two_batches(&w).await;
        // The older batch spills (taking the newer one with it); the database is back at once,
        // before the newer batch's next retry.
        while w.stats.spooled.load(Relaxed) == 0 {
            run_for(Duration::from_millis(1)).await;
        }
        fake.fail_next.store(0, Relaxed);
        run_for(Duration::from_secs(10)).await;
        assert_eq!(fake.stored(), ids(0..200), "arrival order, each row once");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_an_older_spill_took_to_disk_is_abandoned_even_when_its_write_would_commit_first() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(0);
        // The database stops answering: both batches in flight wait.
        fake.hold(&[id(0), id(100)]);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        two_batches(&w).await;
        run_for(Duration::from_millis(5)).await;
        assert_eq!(fake.running.load(Relaxed), 2, "both batches in flight");
        // The older batch's spill age: both go to disk, in order.
        while w.stats.spooled.load(Relaxed) < 200 {
            run_for(Duration::from_millis(10)).await;
        }
        // The database answers the newer write first, then the older one.
        fake.release(&id(100));
        run_for(Duration::from_millis(10)).await;
        fake.release(&id(0));
        run_for(Duration::from_secs(10)).await;
        assert_eq!(fake.stored(), ids(0..200), "arrival order, each row once");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_batch_that_failed_retries_only_after_the_older_one_in_flight_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let fake = older_hung_newer_failing(1);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        two_batches(&w).await;
        // Its backoff (100 ms) is long past; the older write still waits.
        run_for(Duration::from_millis(1000)).await;
        assert_eq!(w.stats.failed_attempts.load(Relaxed), 1);
        assert!(fake.stored().is_empty(), "the newer batch waits: {:?}", fake.stored().first());
        fake.release(&id(0));
        run_for(Duration::from_secs(1)).await;
        assert_eq!(fake.stored(), ids(0..200), "arrival order, each row once");
        assert_eq!(w.stats.spooled.load(Relaxed), 0, "retried in memory");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    // ---- attack tests ----

    /// Full batch `k`: 99 messages k*100.. and event `k`.
    async fn send_with_event(w: &Writer, k: u128) {
        send(w, k * 100..k * 100 + 99).await;
        w.sender.send(event(k)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_events_batch_waiting_behind_a_hung_events_batch_is_on_disk_within_durable_within() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(0);
        fake.hang.store(true, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let t0 = Instant::now();
        send_with_event(&w, 0).await;
        run_for(Duration::from_millis(5)).await;
        send_with_event(&w, 1).await;
        run_for(Duration::from_millis(5)).await;
        let obs = w.observer();
        while t0.elapsed() < Duration::from_secs(5) {
            run_for(Duration::from_millis(10)).await;
        }
        let b = obs.backlog();
        assert_eq!(b.spool_rows + b.queue_rows as u64, 200, "every row in memory or on disk: {b:?}");
        assert_eq!(b.spool_rows, 200, "every row on disk within durable_within (5 s): {b:?}");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_database_at_shutdown_keeps_two_events_batches_in_arrival_order_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(0);
        fake.hang.store(true, Relaxed);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send_with_event(&w, 0).await;
        run_for(Duration::from_millis(5)).await;
        send_with_event(&w, 1).await;
        run_for(Duration::from_secs(4)).await;
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 200));
        // The next start replays the spool.
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        run_for(Duration::from_secs(2)).await;
        let mut want = ids(0..99);
        want.extend(ids(100..199));
        assert_eq!(*fake.events.lock().unwrap(), vec!["e0".to_string(), "e1".to_string()], "events in the order read");
        assert_eq!(fake.stored(), want, "arrival order");
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_events_batch_waiting_behind_a_spilled_one_is_not_written_ahead_of_the_spooled_rows() {
        let dir = tempfile::tempdir().unwrap();
        let fake = pipelined(0);
        // The database stops answering; when it answers the first write again, that one fails.
        fake.hold(&[id(0)]);
        *fake.fail_batch_with.lock().unwrap() = Some((id(0), 1));
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        send_with_event(&w, 0).await;
        run_for(Duration::from_millis(5)).await;
        send_with_event(&w, 1).await;
        // The first batch's spill age passes: its rows go to disk.
        while w.stats.spooled.load(Relaxed) < 99 {
            run_for(Duration::from_millis(10)).await;
        }
        fake.release(&id(0));
        run_for(Duration::from_secs(10)).await;
        let mut want = ids(0..99);
        want.extend(ids(100..199));
        assert_eq!(*fake.events.lock().unwrap(), vec!["e0".to_string(), "e1".to_string()], "events in the order read");
        assert_eq!(fake.stored(), want, "arrival order, each row once");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_with_a_newer_batch_waiting_for_a_hung_older_one_keeps_its_deadline_and_both_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let fake = older_hung_newer_failing(1);
        let mut c = cfg(dir.path());
        c.durable_within = Duration::from_secs(60);
        let w = spawn(fake.clone(), dir.path(), c).unwrap();
        two_batches(&w).await;
        run_for(Duration::from_secs(1)).await;
        assert_eq!(w.stats.failed_attempts.load(Relaxed), 1);
        let t1 = Instant::now();
        let f = w.finish().await;
        assert!(t1.elapsed() <= Duration::from_millis(2100), "shutdown took {:?}", t1.elapsed());
        assert_eq!((f.stored, f.lost, f.spooled), (0, 0, 200));
        let fake = Arc::new(Fake::default());
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        run_for(Duration::from_secs(2)).await;
        assert_eq!(fake.stored(), ids(0..200));
        w.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_batch_waiting_for_a_hung_older_one_is_on_disk_within_durable_within() {
        let dir = tempfile::tempdir().unwrap();
        let fake = older_hung_newer_failing(1);
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        let t0 = Instant::now();
        two_batches(&w).await;
        run_for(Duration::from_millis(5)).await;
        send(&w, 200..250).await;
        while t0.elapsed() < Duration::from_secs(5) {
            run_for(Duration::from_millis(10)).await;
        }
        assert_eq!(w.observer().backlog().spool_rows, 250);
        fake.release(&id(0));
        run_for(Duration::from_secs(10)).await;
        assert_eq!(fake.stored(), ids(0..250), "arrival order, each row once");
        let f = w.finish().await;
        assert_eq!((f.lost, f.spooled), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_batch_waiting_while_the_older_ones_spill_hits_a_full_disk_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = older_hung_newer_failing(1);
        std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("{:020}.tmp", 1u64 << 40))).unwrap();
        let w = spawn(fake.clone(), dir.path(), cfg(dir.path())).unwrap();
        two_batches(&w).await;
        run_for(Duration::from_secs(8)).await;
        assert_eq!(w.stats.dropped.load(Relaxed), 0);
        fake.release(&id(0));
        run_for(Duration::from_secs(10)).await;
        let mut got = fake.stored();
        got.sort();
        assert_eq!(got, ids(0..200));
        assert_eq!(w.finish().await.lost, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_started_after_the_older_one_landed_does_not_commit_ahead_of_a_retrying_batch() {
        let dir = tempfile::tempdir().unwrap();
        let fake = older_hung_newer_failing(2);
        let mut c = cfg(dir.path());
        c.durable_within = Duration::from_secs(60);
        let w = spawn(fake.clone(), dir.path(), c).unwrap();
        two_batches(&w).await;
        run_for(Duration::from_millis(500)).await;
        send(&w, 200..300).await;
        run_for(Duration::from_millis(500)).await;
        fake.delay_ms.store(50, Relaxed);
        fake.release(&id(0));
        run_for(Duration::from_secs(5)).await;
        let got = fake.stored();
        assert_eq!(got.len(), 300);
        assert_eq!(
            got,
            ids(0..300),
            "arrival order; rows 100 and 200 stored at {:?} and {:?}",
            got.iter().position(|i| *i == id(100)),
            got.iter().position(|i| *i == id(200))
        );
        w.finish().await;
    }
}
