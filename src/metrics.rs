//! What the process exposes about itself: the [`Observed`] state shared with the HTTP
//! listener, and its Prometheus rendering. Values are read at scrape time from the counters the
//! writer, clients and transport keep anyway, so the hot path pays nothing extra.
//! Labels are account names (bounded by the config), never channels or users.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use crate::reload::watch::ReloadStats;
use crate::store::writer::{WriterObserver, WriterStats, FLUSH_BUCKETS};
use crate::twitch::auth::{AuthStats, LastValidation};
use crate::twitch::client::AccountStats;
use crate::twitch::transport::LoginState;

/// One running account as the observers see it.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub stats: Arc<AccountStats>,
    /// Its login's connection, message and JOIN counters.
    pub login: Arc<LoginState>,
}

/// Everything health and metrics read. Cheap to clone.
#[derive(Clone)]
pub struct Observed {
    pub writer: WriterObserver,
    /// Running accounts by name (kept current across reloads).
    pub accounts: Arc<RwLock<BTreeMap<String, AccountView>>>,
    /// Zero when there is no config file to reload (env-only mode).
    pub reloads: Arc<ReloadStats>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

impl Observed {
    /// Accounts that are neither connected nor deliberately stopped.
    pub fn accounts_not_ready(&self) -> Vec<String> {
        let accounts = self.accounts.read().expect("accounts lock");
        accounts
            .iter()
            .filter(|(_, a)| !a.stats.stopped.load(Relaxed) && a.login.open.load(Relaxed) <= 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The `/metrics` body, in Prometheus' text format, every name prefixed `twitch_logger_`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("twitch_logger");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("metrics encode to a String");
        out
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// A counter with one label, one series per `(label value, count)`.
fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in series {
        ConstCounter::new(*v).encode(fam.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// The commit-time histogram. prometheus-client takes per-bucket counts and accumulates them
/// itself: handing it cumulative counts would count each flush once per bucket above it.
fn flush_histogram(enc: &mut DescriptorEncoder, s: &WriterStats) -> std::fmt::Result {
    let mut buckets: Vec<(f64, u64)> =
        FLUSH_BUCKETS.iter().enumerate().map(|(i, upper)| (*upper, s.flush_buckets[i].load(Relaxed))).collect();
    buckets.push((f64::INFINITY, s.flush_buckets[FLUSH_BUCKETS.len()].load(Relaxed)));
    let count = buckets.iter().map(|(_, n)| n).sum();
    let sum = s.flush_micros.load(Relaxed) as f64 / 1e6;
    enc.encode_descriptor("batch_flush_seconds", "Time to commit one batch", None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl prometheus_client::collector::Collector for Observed {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.writer.stats;
        let e = &mut enc;
        let accounts = self.accounts.read().expect("accounts lock").clone();
        // Accounts that share a login (anonymous ones) share its counters: count each login once.
        let mut logins: Vec<&Arc<LoginState>> = accounts.values().map(|a| &a.login).collect();
        logins.sort_by_key(|p| Arc::as_ptr(p));
        logins.dedup_by_key(|p| Arc::as_ptr(p));
        let received: u64 = logins.iter().map(|p| p.messages.load(Relaxed)).sum();
        let notices: u64 = accounts.values().map(|a| a.stats.notices.load(Relaxed)).sum();
        let events: u64 = accounts.values().map(|a| a.stats.events.load(Relaxed)).sum();

        // Per kind, summed over accounts (per-account detail below).
        counter_family(
            e,
            "messages_received",
            "Rows received from Twitch, by kind",
            "kind",
            &[("message", received), ("notice", notices), ("event", events)],
        )?;
        counter_family(
            e,
            "messages_stored",
            "Rows newly stored, by kind",
            "kind",
            &[
                ("message", s.messages_stored.load(Relaxed)),
                ("notice", s.notices_stored.load(Relaxed)),
                ("event", s.events_stored.load(Relaxed)),
            ],
        )?;
        counter_family(
            e,
            "filtered_rows",
            "Rows not stored because of the config's user filters, by reason (ignore_users, opt_out_users)",
            "reason",
            &[("ignored", s.filtered_ignored.load(Relaxed)), ("opted_out", s.filtered_opted_out.load(Relaxed))],
        )?;
        // The writer's plain counters: (name, help, value).
        let writer_counters = [
            ("duplicates_skipped", "Messages already stored (same message_id), skipped", &s.duplicates),
            ("batches_flushed", "Batches committed", &s.batches),
            ("expired_rows", "Rows deleted by [storage] retention (older than it)", &s.expired),
            ("dropped_partitions", "PostgreSQL partitions dropped by [storage] retention", &s.partitions_dropped),
            ("write_failures", "Failed write attempts (each retried)", &s.failed_attempts),
            ("spooled_rows", "Rows written to the on-disk spool", &s.spooled),
            ("replayed_rows", "Rows written to the database from the spool", &s.replayed),
            ("dead_lettered_rows", "Rows the database refused, kept in dead_letters", &s.dead_lettered),
            (
                "dropped_rows",
                "Rows lost: the spool was full (spool_max_bytes) or its disk refused them with the memory queue full",
                &s.dropped,
            ),
            (
                "spool_corrupt_segments",
                "Spool segments that could not be replayed (empty, unreadable, missing), moved to spool_dir/corrupt/",
                &s.spool_corrupt_segments,
            ),
            (
                "slow_write_spills",
                "Writes not committed within batch.durable_within, whose rows were copied to the spool",
                &s.slow_write_spills,
            ),
        ];
        for (name, help, value) in writer_counters {
            counter(e, name, help, value.load(Relaxed))?;
        }

        counter_family(
            e,
            "bad_lines",
            "Lines from Twitch dropped (too_long, malformed, chat_refused) or repaired (invalid_utf8, \
             unsafe_tag) before twitch-irc, or that twitch-irc could not read (unparsed), by reason",
            "reason",
            &crate::twitch::transport::bad_line_counts(),
        )?;
        flush_histogram(e, s)?;

        let backlog = self.writer.backlog();
        gauge(e, "queue_rows", "Rows waiting in memory", backlog.queue_rows as i64)?;
        gauge(e, "spool_rows", "Rows waiting in the on-disk spool", backlog.spool_rows as i64)?;
        gauge(e, "spool_bytes", "Bytes of the on-disk spool", backlog.spool_bytes as i64)?;
        gauge(
            e,
            "last_stored_message_timestamp_seconds",
            "Unix time of the last commit that stored a new message (0: none yet)",
            (s.last_stored_ms.load(Relaxed) / 1000) as i64,
        )?;

        let (ok, failed) = (self.reloads.success.load(Relaxed), self.reloads.failure.load(Relaxed));
        counter_family(
            e,
            "config_reloads",
            "Config reloads, by result",
            "result",
            &[("success", ok), ("failure", failed)],
        )?;

        type Get = fn(&AccountView) -> i64;
        let per_account: [(&str, &str, MetricType, Get); 9] = [
            ("account_messages_received", "Chat messages received", MetricType::Counter, |a| {
                a.login.messages.load(Relaxed) as i64
            }),
            ("account_connections", "Open IRC connections", MetricType::Gauge, |a| a.login.open.load(Relaxed)),
            ("account_reconnects", "Connections opened after the first", MetricType::Counter, |a| {
                (a.login.opened.load(Relaxed) as i64 - 1).max(0)
            }),
            ("account_channels_wanted", "Channels the config assigns", MetricType::Gauge, |a| {
                a.stats.channels_wanted.load(Relaxed) as i64
            }),
            ("account_channels_joined", "Channels Twitch confirmed joined", MetricType::Gauge, |a| {
                a.stats.channels_joined.load(Relaxed) as i64
            }),
            ("account_joins_pending", "JOINs waiting for the pacer", MetricType::Gauge, |a| {
                a.login.pending.load(Relaxed).max(0)
            }),
            ("account_stopped", "1 when the account was stopped (login rejected)", MetricType::Gauge, |a| {
                a.stats.stopped.load(Relaxed) as i64
            }),
            ("account_up", "1 when connected or deliberately stopped", MetricType::Gauge, |a| {
                (a.stats.stopped.load(Relaxed) || a.login.open.load(Relaxed) > 0) as i64
            }),
            (
                "account_client_restarts",
                "Times the account's Twitch client died and was started again",
                MetricType::Counter,
                |a| a.stats.restarts.load(Relaxed) as i64,
            ),
        ];
        for (name, help, kind, get) in per_account {
            let mut fam = e.encode_descriptor(name, help, None, kind)?;
            for (account, view) in &accounts {
                let labels = [("account", account.as_str())];
                match kind {
                    MetricType::Counter => ConstCounter::new(get(view) as u64).encode(fam.encode_family(&labels)?)?,
                    _ => ConstGauge::new(get(view)).encode(fam.encode_family(&labels)?)?,
                }
            }
        }

        // Logged-in accounts only: an anonymous one has no token.
        let tokens: Vec<(&String, &AuthStats)> =
            accounts.iter().filter_map(|(name, v)| Some((name, v.stats.auth.as_deref()?))).collect();
        let mut fam = e.encode_descriptor(
            "account_token_expires_in_seconds",
            "Seconds until the account's token expires (negative once expired); absent while unknown",
            None,
            MetricType::Gauge,
        )?;
        for (account, auth) in &tokens {
            if let Some(left) = auth.seconds_until_expiry() {
                ConstGauge::new(left).encode(fam.encode_family(&[("account", account.as_str())])?)?;
            }
        }
        type GetAuth = fn(&AuthStats) -> u64;
        let counters: [(&str, &str, GetAuth); 2] = [
            ("account_token_refreshes", "Token renewals that succeeded", |a| a.refreshes.load(Relaxed)),
            ("account_token_refresh_failures", "Token renewals that failed (rejected, unreachable, malformed)", |a| {
                a.refresh_failures.load(Relaxed)
            }),
        ];
        for (name, help, get) in counters {
            let mut fam = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (account, auth) in &tokens {
                ConstCounter::new(get(auth)).encode(fam.encode_family(&[("account", account.as_str())])?)?;
            }
        }
        let mut fam = e.encode_descriptor(
            "account_token_last_validation",
            "1 for the result of the token's last validation at Twitch (none until the first answer)",
            None,
            MetricType::Gauge,
        )?;
        for (account, auth) in &tokens {
            let last = auth.last_validation();
            for result in [
                LastValidation::None,
                LastValidation::Valid,
                LastValidation::Invalid,
                LastValidation::WrongLogin,
                LastValidation::Unreachable,
            ] {
                let labels = [("account", account.as_str()), ("result", result.as_str())];
                ConstGauge::new((result == last) as i64).encode(fam.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Flushes(WriterStats);

    impl std::fmt::Debug for Flushes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Flushes")
        }
    }

    impl prometheus_client::collector::Collector for Flushes {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            flush_histogram(&mut enc, &self.0)
        }
    }

    fn exposition(took: &[Duration]) -> String {
        let stats = WriterStats::default();
        for t in took {
            stats.observe_flush(*t);
        }
        let mut registry = Registry::with_prefix("twitch_logger");
        registry.register_collector(Box::new(Flushes(stats)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn series(text: &str, name: &str) -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn one_fast_flush_is_counted_once_in_every_bucket_and_the_count() {
        let text = exposition(&[Duration::from_micros(500)]);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_count"), 1);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"0.001\"}"), 1);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"5.0\"}"), 1);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"+Inf\"}"), 1);
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let took = [0.0005, 0.02, 0.02, 0.3, 9.0].map(Duration::from_secs_f64);
        let text = exposition(&took);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"0.001\"}"), 1);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"0.025\"}"), 3);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"1.0\"}"), 4);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_bucket{le=\"+Inf\"}"), 5);
        assert_eq!(series(&text, "twitch_logger_batch_flush_seconds_count"), 5);
    }
}
