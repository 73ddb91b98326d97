//! The running logger: starts the writer and one client per account, and on a signal (or when
//! every account has failed) stops reading, writes out everything received, and returns.

use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::config::{BatchConfig, Config, LiveConfig, Origin, UserList};
use crate::http;
use crate::metrics::{AccountView, Observed};
use crate::record::{UserFilter, UserSet};
use crate::reload::{self, watch::Reloader, Plan};
use crate::store::writer::{self, Writer};
use crate::store::{Backend, DbError};
use crate::twitch::client::{AccountHandle, AuthContext, ClientEvent};
use crate::twitch::transport;

/// How the process should exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by SIGTERM/SIGINT after writing everything out.
    Stopped,
    /// Every account's login was rejected: nothing left to log.
    NoAccountLeft,
    /// Stopped, but this many rows received during the run were kept nowhere (the spool's
    /// disk was full, read-only or over `spool_max_bytes`, and the database did not take them).
    RowsLost(u64),
}

/// What runs: the config in effect, one client per account, the shared writer.
struct Runtime {
    cfg: Config,
    accounts: BTreeMap<String, AccountHandle>,
    views: Arc<RwLock<BTreeMap<String, AccountView>>>,
    writer: Writer,
    events: mpsc::UnboundedSender<ClientEvent>,
    /// The live config as the log API sees it.
    live_tx: tokio::sync::watch::Sender<crate::config::LiveConfig>,
    /// The user filter the writer applies (rebuilt on a reload, sent when it differs).
    filter: UserFilter,
    /// `[storage] retention` for the retention task (live on reload).
    retention: tokio::sync::watch::Sender<Option<Duration>>,
    /// The store, for `[storage] partition` on reload (PostgreSQL).
    store: Backend,
}

impl Runtime {
    fn start_account(&mut self, name: &str) {
        let account = &self.cfg.live.accounts[name];
        let handle = AccountHandle::start(
            name,
            account,
            &AuthContext::from_config(&self.cfg.startup.twitch),
            self.cfg.channels_for(name),
            self.writer.sender.clone(),
            self.events.clone(),
        );
        let view = AccountView { stats: handle.stats.clone(), login: handle.login.clone() };
        self.views.write().expect("accounts lock").insert(name.to_string(), view);
        self.accounts.insert(name.to_string(), handle);
    }

    /// Applies a new valid config: the reconciliation step of a reload. Only the live part is
    /// taken; the start-up part keeps what runs (the plan reports its changed keys).
    async fn apply(&mut self, new: Config) -> Plan {
        let p = reload::plan(&self.cfg, &new);
        self.cfg.live = new.live;
        self.cfg.env_overrides = new.env_overrides;
        self.live_tx.send_replace(self.cfg.live.clone());

        let leaving: Vec<AccountHandle> =
            p.stop.iter().chain(&p.restart).filter_map(|n| self.accounts.remove(n)).collect();
        for n in &p.stop {
            self.views.write().expect("accounts lock").remove(n);
        }
        futures_util::future::join_all(leaving.into_iter().map(AccountHandle::stop)).await;
        for name in p.restart.iter().chain(&p.start) {
            self.start_account(name);
        }
        for (name, rate) in &p.join_rate {
            if let Some(h) = self.accounts.get(name) {
                h.set_join_rate(*rate);
            }
        }
        for name in p.channels.keys() {
            if let Some(h) = self.accounts.get(name) {
                h.set_channels(self.cfg.channels_for(name));
            }
        }
        if let Some(b) = &p.batch {
            self.writer.update(b.clone());
        }
        // Also when only a group's channels changed: its ignore list follows its channels.
        let filter = user_filter(&self.cfg.live);
        if filter != self.filter {
            self.writer.set_filter(filter.clone());
            self.filter = filter;
        }
        if p.cluster.is_some() {
            tracing::info!("{}", self.cfg.live.shard_summary());
        }
        self.retention.send_if_modified(|r| std::mem::replace(r, self.cfg.live.storage.retention) != *r);
        if let Backend::Postgres(pg) = &self.store {
            pg.set_partition_interval(self.cfg.live.storage.partition);
            let pg = pg.clone();
            tokio::spawn(async move { pg.keep_partitions_ahead().await });
        }
        for key in &p.needs_restart {
            tracing::warn!(
                "`{key}` changed in the config file; it takes effect after a restart (the rest of the edit is applied)"
            );
        }
        p
    }
}

/// Runs until a signal. `cfg` is the validated configuration, read from `cfg.origin`.
pub async fn run(cfg: Config) -> anyhow::Result<Outcome> {
    for o in cfg.env_overrides.iter().filter(|o| o.file_also_set) {
        tracing::info!(
            "{} overrides `{}` from the config file; edits to that key have no effect while the variable is set",
            o.var,
            o.key
        );
    }
    let mut shutdown = Box::pin(shutdown_signal());

    // Reading starts before the database answers: the writer holds rows (memory, then the
    // spool) until the migration below has succeeded; until then the store refuses writes.
    let store = Backend::connect_lazy(&cfg.startup.database)?;
    if let Backend::Postgres(pg) = &store {
        pg.set_partition_interval(cfg.live.storage.partition);
        tokio::spawn(pg.clone().keep_partitions_ahead_every(PARTITIONS_EVERY));
    }
    if let Backend::Sqlite(s) = &store {
        let path = shell_quoted(&s.absolute_path().display().to_string());
        tracing::info!(
            "storing chat in the SQLite file {path}; look at it with: sqlite3 {path} \"SELECT * FROM v_last_messages LIMIT 20\""
        );
    }
    // Its own task, and a future that resolves only on failure: success must not win the main
    // `select!` below, which would cancel (and so forget) a reload being debounced.
    let migration = tokio::spawn({
        let store = store.clone();
        async move { migrate_with_retry(&store).await }
    });
    let mut migration_failed = Box::pin(async move {
        match migration.await {
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(e)) => e,
            Err(e) => anyhow::Error::new(e).context("the migration task failed"),
        }
    });

    let mut reloader = match &cfg.origin {
        Origin::File(path) => Some(Reloader::new(path, &cfg.startup.reload, None)?),
        Origin::EnvOnly => {
            // SIGHUP's default action would end the process.
            tokio::spawn(async {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: no config file to reload (env-only mode)");
                }
            });
            None
        }
    };

    let spool_dir = &cfg.startup.spool_dir;
    // In force before the first row, a previous run's spool included.
    let filter = user_filter(&cfg.live);
    let writer = writer::spawn_filtered(store.as_store(), spool_dir, cfg.live.batch.clone(), filter.clone())
        .with_context(|| format!("cannot open the spool directory {} (batch.spool_dir)", spool_dir.display()))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let views = Arc::new(RwLock::new(BTreeMap::new()));
    let (live_tx, live_rx) = tokio::sync::watch::channel(cfg.live.clone());
    if let Some(addr) = cfg.startup.http.listen {
        let observed = Observed {
            writer: writer.observer(),
            accounts: views.clone(),
            reloads: reloader.as_ref().map_or_else(Default::default, |r| r.stats.clone()),
        };
        // The API reads on a pool of its own: a slow reader never holds a writer's connection.
        let api = cfg.startup.http.api.then(|| http::api::Api::new(store.log_reader(), live_rx));
        let bound = http::serve(addr, observed, store.clone(), api).await?;
        tracing::info!("health and metrics on http://{bound} (/healthz, /readyz, /metrics)");
    }
    // Ours for the run: installed before the first account starts, its records closed in `stop`.
    let connections = transport::TransportContext::new(cfg.startup.twitch.server.clone(), Some(writer.sender.clone()));
    connections.keep_raw_lines(cfg.startup.storage.raw_lines);
    transport::install(connections.clone());
    let (retention, retention_rx) = tokio::sync::watch::channel(cfg.live.storage.retention);
    tokio::spawn(expire_old_rows(store.clone(), retention_rx, writer.stats.clone()));
    let mut rt =
        Runtime { cfg, accounts: BTreeMap::new(), views, writer, events: events_tx, live_tx, filter, retention, store };
    for name in rt.cfg.live.accounts.keys().cloned().collect::<Vec<_>>() {
        rt.start_account(&name);
    }
    tracing::info!(
        accounts = rt.accounts.len(),
        channels = rt.cfg.live.all_channels().len(),
        server = %rt.cfg.startup.twitch.server,
        "logging chat"
    );
    if rt.cfg.live.cluster.is_sharded() {
        tracing::info!("{}", rt.cfg.live.shard_summary());
    }

    // A database problem that waiting will not fix ends the run (after writing out what was read).
    let mut fatal = None;
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Outcome::Stopped,
            e = &mut migration_failed => {
                fatal = Some(e);
                break Outcome::Stopped;
            }
            new = async { reloader.as_mut().unwrap().next().await }, if reloader.is_some() => {
                let p = rt.apply(new).await;
                if let Some(r) = &reloader {
                    r.stats.success.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if !p.is_empty() {
                    tracing::info!("config reloaded: {}", p.summary());
                }
            }
            Some(ev) = events.recv() => match ev {
                ClientEvent::LoginRejected { account } => {
                    // Give the task a moment to finish, then see who is left.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let left = rt.accounts.values().filter(|a| a.is_running() && a.name != account).count();
                    if left == 0 {
                        tracing::error!("no account is left running (every login was rejected); exiting");
                        break Outcome::NoAccountLeft;
                    }
                }
            },
        }
    };
    tracing::info!("stopping: no more reading; writing out everything received");
    if fatal.is_some() {
        // The database will not take rows this run: spool what was read at once, no waiting.
        rt.writer.update(BatchConfig { shutdown_timeout: Duration::ZERO, ..rt.cfg.live.batch.clone() });
    }
    let lost = stop(rt.accounts, rt.writer, &connections).await;
    match fatal {
        Some(e) => Err(e),
        None => Ok(if lost > 0 && outcome == Outcome::Stopped { Outcome::RowsLost(lost) } else { outcome }),
    }
}

/// The config's `ignore_users` and `opt_out_users` as the writer's filter: each group's
/// ignore list applies to that group's channels (a channel in several groups: the union).
pub fn user_filter(live: &LiveConfig) -> UserFilter {
    let set =
        |l: &UserList| UserSet { logins: l.logins.iter().cloned().collect(), ids: l.ids.iter().cloned().collect() };
    let mut ignore_in: std::collections::HashMap<String, Arc<UserSet>> = Default::default();
    for g in live.groups.values().filter(|g| !g.ignore_users.is_empty()) {
        let list = Arc::new(set(&g.ignore_users));
        for c in &g.channels {
            match ignore_in.get_mut(c) {
                None => {
                    ignore_in.insert(c.clone(), list.clone());
                }
                // In two groups: this channel gets its own union.
                Some(s) => {
                    let s = Arc::make_mut(s);
                    s.logins.extend(list.logins.iter().cloned());
                    s.ids.extend(list.ids.iter().cloned());
                }
            }
        }
    }
    UserFilter { ignore: set(&live.filters.ignore_users), ignore_in, opt_out: set(&live.filters.opt_out_users) }
}

/// Stops every client (each hands over what it read), then lets the writer finish the queue.
/// Returns how many rows received during the run were lost, after logging the truth.
async fn stop(
    accounts: BTreeMap<String, AccountHandle>,
    writer: Writer,
    connections: &transport::TransportContext,
) -> u64 {
    futures_util::future::join_all(accounts.into_values().map(AccountHandle::stop)).await;
    let stats = writer.stats.clone();
    // The readers' copies went with their connections; this is the last one besides the writer's.
    connections.close_records();
    let done = writer.finish().await;
    use std::sync::atomic::Ordering::Relaxed;
    macro_rules! summary {
        ($level:ident, $msg:expr) => {
            tracing::$level!(
                messages = stats.messages_stored.load(Relaxed),
                duplicates = stats.duplicates.load(Relaxed),
                notices = stats.notices_stored.load(Relaxed),
                spooled = stats.spooled.load(Relaxed),
                replayed = stats.replayed.load(Relaxed),
                dead_lettered = stats.dead_lettered.load(Relaxed),
                left_in_spool = done.spooled,
                dropped = done.lost,
                "{}",
                $msg
            )
        };
    }
    if done.lost == 0 {
        summary!(info, "stopped; everything received is in the database or the spool");
    } else {
        summary!(
            error,
            format!(
                "stopped; {} rows received were lost (the spool could not take them and the database did not): see the errors above",
                done.lost
            )
        );
    }
    done.lost
}

/// Applies migrations, waiting for the database only while waiting can help (connection
/// refused, timeout, DNS failure, the server starting up), logged in those words. Anything else
/// (wrong password, missing role, a migration's SQL error …) ends the wait with one line that
/// says what to do.
pub async fn migrate_with_retry(store: &Backend) -> anyhow::Result<()> {
    let what = store.target();
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match store.migrate().await {
            Ok(()) => {
                tracing::info!(database = %what, "database ready, schema up to date");
                return Ok(());
            }
            Err(e @ DbError::Fatal(_)) => {
                store.set_not_ready(&e.to_string());
                return Err(e.into());
            }
            Err(DbError::Transient(why)) => {
                store.set_not_ready(&format!("waiting for the database: {why}"));
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(database = %what, attempt, "database not ready yet ({why}); retrying in {delay:?}");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often the partitions ahead are checked (PostgreSQL).
const PARTITIONS_EVERY: Duration = Duration::from_secs(3600);

/// How often retention looks for rows past `[storage] retention`.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// The retention task: while a retention is set, deletes older rows at start and every
/// [`RETENTION_EVERY`] (at once when a reload changes it), logging and counting what went.
async fn expire_old_rows(
    store: Backend,
    mut retention: tokio::sync::watch::Receiver<Option<Duration>>,
    stats: Arc<writer::WriterStats>,
) {
    while store.schema_ready().is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expiring = store.as_store();
    loop {
        let keep = *retention.borrow_and_update();
        let text = crate::config::LiveStorage { retention: keep, ..Default::default() }.retention_text();
        let mut wait = RETENTION_EVERY;
        if let Some(keep) = keep {
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            match expiring.expire_before(cutoff).await {
                Ok(e) if e.total() > 0 || !e.partitions.is_empty() => {
                    stats.expired.fetch_add(e.total(), std::sync::atomic::Ordering::Relaxed);
                    stats.partitions_dropped.fetch_add(e.partitions.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let per: Vec<String> = e.tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
                    let dropped = if e.partitions.is_empty() {
                        String::new()
                    } else {
                        format!("; dropped partitions {}", e.partitions.join(", "))
                    };
                    tracing::info!(
                        "retention: deleted {} rows older than {text} (before {cutoff}): {}{dropped}",
                        e.total(),
                        per.join(", ")
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("retention: deleting old rows failed ({}); trying again in 30s", e.one_line());
                    wait = Duration::from_secs(30);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = retention.changed() => if changed.is_err() { return },
        }
    }
}

/// `s` as one shell word, for a command line a person can paste.
fn shell_quoted(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChatMessage, Filtered, Record};

    fn from(channel: &str, login: &str, id: &str) -> Record {
        Record::Message(ChatMessage {
            channel: channel.into(),
            username: login.into(),
            user_id: Some(id.into()),
            ..Default::default()
        })
    }

    #[test]
    fn a_group_ignore_list_covers_its_channels_only_and_global_lists_cover_all() {
        let text = "[accounts.a]\n[groups.g]\naccounts = [\"a\"]\nchannels = [\"one\", \"shared\"]\nignore_users = [\"g_bot\"]\n[groups.h]\naccounts = [\"a\"]\nchannels = [\"two\", \"shared\"]\nignore_users = [\"555\"]\n[filters]\nignore_users = [\"NightBot\"]\nopt_out_users = [\"42\"]\n";
        let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://h/db".to_string());
        let cfg = crate::config::load_text(Some((std::path::Path::new("c.toml"), text)), &env).unwrap();
        let f = user_filter(&cfg.live);
        assert_eq!(f.verdict(&from("one", "g_bot", "1")), Some(Filtered::Ignored));
        assert_eq!(f.verdict(&from("two", "g_bot", "1")), None, "group g does not log `two`");
        assert_eq!(f.verdict(&from("shared", "g_bot", "1")), Some(Filtered::Ignored));
        assert_eq!(f.verdict(&from("shared", "h_bot", "555")), Some(Filtered::Ignored), "both groups' lists");
        assert_eq!(f.verdict(&from("one", "h_bot", "555")), None);
        assert_eq!(f.verdict(&from("two", "nightbot", "1")), Some(Filtered::Ignored));
        assert_eq!(f.verdict(&from("one", "anyone", "42")), Some(Filtered::OptedOut));
        assert_eq!(f.verdict(&from("one", "anyone", "43")), None);
        // `shared` got its own union; `one` still holds g's list alone.
        assert!(f.ignore_in["one"].ids.is_empty() && f.ignore_in["shared"].ids.contains("555"));
    }
}
