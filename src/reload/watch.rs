//! Noticing edits to the config file.
//!
//! The file's *directory* is watched, not the file: editors save by renaming a new file over
//! the old one, Kubernetes swaps a `..data` symlink, and Docker pins a single-file mount's
//! inode, so a watch on the file itself goes deaf after the first save. Any event in the
//! directory schedules a re-read after `debounce` of quiet; the text is compared with the last
//! one read, so unrelated files in the directory cost one small read and nothing else.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, Interval};

use crate::config::{self, env::process_env, Config, ReloadConfig, ReloadMode};

/// Reload outcomes, for logs and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Valid edits applied.
    pub success: AtomicU64,
    /// Invalid edits rejected (the old config kept running).
    pub failure: AtomicU64,
}

/// Yields new configs as the file changes.
pub struct Reloader {
    path: PathBuf,
    events: mpsc::Receiver<()>,
    _watcher: Option<RecommendedWatcher>,
    poll: Option<Interval>,
    hup: tokio::signal::unix::Signal,
    debounce: Duration,
    last_text: Option<String>,
    /// Counters.
    pub stats: Arc<ReloadStats>,
}

impl Reloader {
    /// Starts watching `path` as `cfg` says. `current_text` is what the running config was read from.
    pub fn new(path: &Path, cfg: &ReloadConfig, current_text: Option<String>) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::channel(16);
        let mut mode = cfg.mode;
        let watcher = match mode {
            ReloadMode::Watch => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let watched = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    if res.is_ok() {
                        // Full channel: a re-read is already scheduled.
                        let _ = tx.try_send(());
                    }
                })
                .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
                match watched {
                    Ok(w) => Some(w),
                    Err(e) => {
                        // Out of inotify watches, or a filesystem without events: poll instead
                        // of giving up live reload.
                        tracing::warn!(
                            "cannot watch {} for changes ({e}); polling it every {:?} instead (set [reload] mode = \"poll\" to silence this)",
                            dir.display(),
                            cfg.poll_interval
                        );
                        mode = ReloadMode::Poll;
                        None
                    }
                }
            }
            ReloadMode::Poll | ReloadMode::Off => None,
        };
        let poll = (mode == ReloadMode::Poll).then(|| {
            let mut i = tokio::time::interval(cfg.poll_interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        Ok(Reloader {
            path: path.to_path_buf(),
            events,
            _watcher: watcher,
            poll,
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
            debounce: cfg.debounce,
            last_text: current_text,
            stats: Arc::new(ReloadStats::default()),
        })
    }

    /// Waits for the next valid change. Invalid edits are logged (as `check` prints them),
    /// counted, and skipped: the caller keeps running what it has.
    pub async fn next(&mut self) -> Config {
        let mut deadline: Option<Instant> = None;
        loop {
            let forced = tokio::select! {
                Some(()) = self.events.recv() => {
                    deadline = Some(Instant::now() + self.debounce);
                    continue;
                }
                _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                    deadline = None;
                    false
                }
                _ = async { self.poll.as_mut().unwrap().tick().await }, if self.poll.is_some() => false,
                _ = hangup(&mut self.hup) => {
                    tracing::info!("SIGHUP: re-reading {}", self.path.display());
                    true
                }
            };
            if let Some(cfg) = self.try_load(forced) {
                return cfg;
            }
        }
    }

    fn try_load(&mut self, forced: bool) -> Option<Config> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap or deleted: keep running; the next event re-reads.
                if forced || self.last_text.is_some() {
                    tracing::warn!("cannot read {} ({e}); keeping the running configuration", self.path.display());
                    self.stats.failure.fetch_add(1, Ordering::Relaxed);
                }
                self.last_text = None;
                return None;
            }
        };
        if !forced && self.last_text.as_deref() == Some(text.as_str()) {
            return None;
        }
        self.last_text = Some(text.clone());
        match config::load_text(Some((&self.path, &text)), &process_env) {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                self.stats.failure.fetch_add(1, Ordering::Relaxed);
                tracing::error!("config reload rejected, the running configuration stays in effect. {e}");
                None
            }
        }
    }
}

#[cfg(unix)]
async fn hangup(hup: &mut tokio::signal::unix::Signal) {
    hup.recv().await;
}
