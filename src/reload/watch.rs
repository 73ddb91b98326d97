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

/// How often watch mode checks that the watched directory is still the one at the path.
const DIR_CHECK: Duration = Duration::from_secs(1);

/// Yields new configs as the file changes.
pub struct Reloader {
    path: PathBuf,
    /// The directory watched (the file's parent).
    dir: PathBuf,
    events: mpsc::Receiver<()>,
    /// For a new watcher when the directory is replaced.
    events_tx: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    /// Device and inode of the watched directory; `None` while it is missing.
    dir_id: Option<(u64, u64)>,
    dir_check: Option<Interval>,
    poll: Option<Interval>,
    hup: tokio::signal::unix::Signal,
    debounce: Duration,
    /// When to re-read after the last file event. Kept here, not in `next`, so that an event
    /// seen by a `next` that was then cancelled (another branch of the caller's `select!`
    /// won) is still acted on by the following call.
    deadline: Option<Instant>,
    last_text: Option<String>,
    pub stats: Arc<ReloadStats>,
}

fn watch_dir(dir: &Path, tx: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // Full channel: a re-read is already scheduled.
            let _ = tx.try_send(());
        }
    })?;
    w.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(w)
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl Reloader {
    /// Starts watching `path` as `cfg` says. `current_text` is what the running config was read from.
    pub fn new(path: &Path, cfg: &ReloadConfig, current_text: Option<String>) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::channel(16);
        let mut mode = cfg.mode;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir_id = dir_identity(&dir);
        let watcher = match mode {
            ReloadMode::Watch => match watch_dir(&dir, tx.clone()) {
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
            },
            ReloadMode::Poll | ReloadMode::Off => None,
        };
        let interval = |period| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        Ok(Reloader {
            path: path.to_path_buf(),
            dir,
            events,
            events_tx: tx,
            dir_check: watcher.is_some().then(|| interval(DIR_CHECK)),
            watcher,
            dir_id,
            poll: (mode == ReloadMode::Poll).then(|| interval(cfg.poll_interval)),
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
            debounce: cfg.debounce,
            deadline: None,
            last_text: current_text,
            stats: Arc::new(ReloadStats::default()),
        })
    }

    /// Waits for the next valid change. Invalid edits are logged (as `check` prints them),
    /// counted, and skipped: the caller keeps running what it has. Cancel-safe: dropping the
    /// future loses no edit.
    pub async fn next(&mut self) -> Config {
        loop {
            let deadline = self.deadline;
            let forced = tokio::select! {
                Some(()) = self.events.recv() => {
                    self.follow_dir();
                    self.deadline = Some(Instant::now() + self.debounce);
                    continue;
                }
                _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                    self.deadline = None;
                    false
                }
                _ = async { self.dir_check.as_mut().unwrap().tick().await }, if self.dir_check.is_some() => {
                    if self.follow_dir() {
                        self.deadline = Some(Instant::now() + self.debounce);
                    }
                    continue;
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

    /// Notices that the watched directory was renamed away, deleted or replaced (a watch
    /// follows the old inode, which no longer is the config's directory) and watches the one
    /// now at the path. True when a new directory is being watched: its file must be re-read.
    fn follow_dir(&mut self) -> bool {
        if self.watcher.is_none() && self.dir_check.is_none() {
            return false;
        }
        let now = dir_identity(&self.dir);
        if now == self.dir_id {
            return false;
        }
        self.dir_id = now;
        if now.is_none() {
            tracing::warn!(
                "the config directory {} is gone (renamed or deleted); keeping the running configuration, and following the directory when it is back",
                self.dir.display()
            );
            self.watcher = None;
            return false;
        }
        match watch_dir(&self.dir, self.events_tx.clone()) {
            Ok(w) => {
                self.watcher = Some(w);
                tracing::warn!(
                    "the config directory {} was replaced (renamed or deleted, then created again); watching the new one and re-reading {}",
                    self.dir.display(),
                    self.path.display()
                );
                true
            }
            Err(e) => {
                // Try again at the next check.
                self.dir_id = None;
                tracing::warn!("cannot watch the new config directory {} ({e}); retrying", self.dir.display());
                false
            }
        }
    }

    fn try_load(&mut self, forced: bool) -> Option<Config> {
        let text = match config::read_config_file(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap or deleted: keep running; the next event re-reads.
                if forced || self.last_text.is_some() {
                    tracing::warn!("{}: {e}; keeping the running configuration", self.path.display());
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
        // `load_text` catches a panic inside (a bug) and reports it without its message: a bad
        // edit can never end the running logger.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    fn text(channels: &str) -> String {
        format!("[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [{channels}]\n")
    }

    fn watching(debounce_ms: u64) -> ReloadConfig {
        ReloadConfig {
            mode: ReloadMode::Watch,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(debounce_ms),
        }
    }

    fn channels(cfg: &Config) -> Vec<String> {
        cfg.live.all_channels().into_iter().collect()
    }

    #[tokio::test]
    async fn an_edit_seen_by_a_cancelled_wait_is_still_delivered_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text("\"one\"")).unwrap();
        let mut r = Reloader::new(&path, &watching(400), Some(text("\"one\""))).unwrap();
        std::fs::write(&path, text("\"one\", \"two\"")).unwrap();
        // The events arrive within milliseconds; the caller's select! then picks another
        // branch while the debounce still runs, dropping this wait.
        assert!(timeout(Duration::from_millis(150), r.next()).await.is_err());
        let cfg = timeout(Duration::from_secs(3), r.next()).await.expect("the edit was forgotten");
        assert_eq!(channels(&cfg), ["one", "two"]);
    }

    #[tokio::test]
    async fn a_config_directory_renamed_away_and_created_again_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text("\"one\"")).unwrap();
        let mut r = Reloader::new(&path, &watching(50), Some(text("\"one\""))).unwrap();

        std::fs::rename(&dir, root.path().join("config.old")).unwrap();
        // Longer than the debounce: the re-read after the rename finds no file.
        assert!(timeout(Duration::from_millis(400), r.next()).await.is_err());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&path, text("\"one\", \"new_dir\"")).unwrap();
        let started = Instant::now();
        let cfg = timeout(Duration::from_secs(4), r.next()).await.expect("the new directory was not followed");
        eprintln!("new directory followed after {:?}", started.elapsed());
        assert_eq!(channels(&cfg), ["new_dir", "one"]);

        // Later edits in the new directory arrive as file events (well under the 1 s check).
        std::fs::write(&path, text("\"edited\"")).unwrap();
        let started = Instant::now();
        let cfg = timeout(Duration::from_secs(3), r.next()).await.expect("edit in the new directory");
        assert_eq!(channels(&cfg), ["edited"]);
        assert!(started.elapsed() < Duration::from_millis(900), "took {:?}", started.elapsed());
        // Edits to the renamed-away directory no longer count.
        std::fs::write(root.path().join("config.old/config.toml"), text("\"stale\"")).unwrap();
        assert!(timeout(Duration::from_millis(500), r.next()).await.is_err());
    }
}
