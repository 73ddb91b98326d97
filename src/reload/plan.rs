//! The reload diff: what must change to get from the running config to the new one.
//! Pure (no I/O), so every case is unit-tested; `app` applies the plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{BatchConfig, ClusterConfig, Config, LiveConfig, Rate, UserList};

/// Most names listed per kind in a reload's summary line.
const LIST_MAX: usize = 20;

/// What a reload does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New accounts to start.
    pub start: Vec<String>,
    /// Accounts to stop (after their messages are handed to the writer).
    pub stop: Vec<String>,
    /// Accounts whose username or token changed: reconnect with the new credentials.
    pub restart: Vec<String>,
    /// Running accounts whose channel set changed: account → (join, part).
    pub channels: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    /// Running accounts whose JOIN pacing changed.
    pub join_rate: BTreeMap<String, Rate>,
    /// New live batch settings (`max_rows`, `flush_interval`).
    pub batch: Option<BatchConfig>,
    /// The new `[cluster]` settings; the JOINs and PARTs they cause are in `channels`.
    pub cluster: Option<ClusterConfig>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
    /// User filter lists that changed, in key order. Counts only: the summary never names
    /// a user (an opted-out user's login does not belong in the logs).
    pub filters: Vec<FilterChange>,
}

/// One changed `ignore_users` / `opt_out_users` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChange {
    /// The list's key, e.g. `filters.opt_out_users` or `groups.esports.ignore_users`.
    pub key: String,
    /// Entries (logins and ids) now listed that were not.
    pub added: usize,
    /// Entries no longer listed.
    pub removed: usize,
    /// A group's list whose channels changed: how many it covers now.
    pub channels: Option<usize>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// The one summary line a reload logs.
    pub fn summary(&self) -> String {
        // At most LIST_MAX names each, so an edit of thousands of channels stays one readable
        // line (Docker splits log lines at 16 KiB).
        let list = |v: &mut dyn Iterator<Item = &String>| {
            let all: Vec<&String> = v.collect();
            let shown: Vec<&str> = all.iter().take(LIST_MAX).map(|s| s.as_str()).collect();
            match all.len().saturating_sub(LIST_MAX) {
                0 => shown.join(", "),
                more => format!("{}, … and {more} more", shown.join(", ")),
            }
        };
        let joins: BTreeSet<&String> = self.channels.values().flat_map(|(j, _)| j).collect();
        let parts: BTreeSet<&String> = self.channels.values().flat_map(|(_, p)| p).collect();
        let mut parts_out = vec![];
        if !joins.is_empty() {
            parts_out.push(format!("joined [{}]", list(&mut joins.into_iter())));
        }
        if !parts.is_empty() {
            parts_out.push(format!("parted [{}]", list(&mut parts.into_iter())));
        }
        for (label, v) in [("accounts started", &self.start), ("stopped", &self.stop), ("reconnected", &self.restart)] {
            if !v.is_empty() {
                parts_out.push(format!("{label} [{}]", v.join(", ")));
            }
        }
        if !self.join_rate.is_empty() {
            parts_out.push(format!("join_rate changed [{}]", list(&mut self.join_rate.keys())));
        }
        if self.batch.is_some() {
            parts_out.push("batch settings applied".into());
        }
        if !self.filters.is_empty() {
            let changes: Vec<String> = self
                .filters
                .iter()
                .map(|c| match c.channels {
                    Some(n) => format!("{} +{}/-{} (now in {n} channels)", c.key, c.added, c.removed),
                    None => format!("{} +{}/-{}", c.key, c.added, c.removed),
                })
                .collect();
            parts_out.push(format!("user filters applied [{}]", list(&mut changes.iter())));
        }
        if let Some(c) = &self.cluster {
            parts_out.push(format!("now shard {} with {} replica(s)", c.shard, c.replicas));
        }
        if parts_out.is_empty() {
            parts_out.push("nothing to apply live".into());
        }
        parts_out.join("; ")
    }
}

/// Diffs `old` (what runs) against `new` (what the file now says): the live part becomes the
/// plan; changed start-up keys are only reported.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = diff_live(&old.live, &new.live);
    p.needs_restart = old.startup.changed_keys(&new.startup);
    p
}

fn diff_live(old: &LiveConfig, new: &LiveConfig) -> Plan {
    let mut p = Plan::default();
    for (name, acc) in &new.accounts {
        match old.accounts.get(name) {
            None => p.start.push(name.clone()),
            Some(prev) if prev.credentials != acc.credentials => p.restart.push(name.clone()),
            Some(prev) => {
                if prev.join_rate != acc.join_rate {
                    p.join_rate.insert(name.clone(), acc.join_rate);
                }
                let (was, now) = (old.channels_for(name), new.channels_for(name));
                if was != now {
                    let join: BTreeSet<String> = now.difference(&was).cloned().collect();
                    let part: BTreeSet<String> = was.difference(&now).cloned().collect();
                    p.channels.insert(name.clone(), (join, part));
                }
            }
        }
    }
    p.stop = old.accounts.keys().filter(|n| !new.accounts.contains_key(*n)).cloned().collect();
    if new.batch != old.batch {
        p.batch = Some(new.batch.clone());
    }
    p.filters = diff_filters(old, new);
    if new.cluster != old.cluster {
        p.cluster = Some(new.cluster);
    }
    p
}

fn diff_filters(old: &LiveConfig, new: &LiveConfig) -> Vec<FilterChange> {
    let none = UserList::default();
    let no_channels = BTreeSet::new();
    // (key, old list, new list, the new list's channel count if its channels changed)
    let mut lists: Vec<(String, &UserList, &UserList, Option<usize>)> = vec![
        ("filters.ignore_users".into(), &old.filters.ignore_users, &new.filters.ignore_users, None),
        ("filters.opt_out_users".into(), &old.filters.opt_out_users, &new.filters.opt_out_users, None),
    ];
    let groups: BTreeSet<&String> = old.groups.keys().chain(new.groups.keys()).collect();
    for g in groups {
        let (was, was_in) = old.groups.get(g).map_or((&none, &no_channels), |g| (&g.ignore_users, &g.channels));
        let (now, now_in) = new.groups.get(g).map_or((&none, &no_channels), |g| (&g.ignore_users, &g.channels));
        // The same list over other channels changes what is filtered too.
        let moved = (!now.is_empty() && was_in != now_in).then_some(now_in.len());
        lists.push((format!("groups.{g}.ignore_users"), was, now, moved));
    }
    lists
        .into_iter()
        .filter(|(_, was, now, moved)| was != now || moved.is_some())
        .map(|(key, was, now, channels)| {
            let count =
                |a: &UserList, b: &UserList| a.logins.difference(&b.logins).count() + a.ids.difference(&b.ids).count();
            FilterChange { key, added: count(now, was), removed: count(was, now), channels }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;
    use crate::config::{AccountConfig, Credentials, GroupConfig, Origin, ReloadConfig, StartupConfig, TwitchConfig};
    use secrecy::SecretString;
    use std::time::Duration;

    fn account(token: Option<&str>) -> AccountConfig {
        AccountConfig {
            credentials: match token {
                None => Credentials::Anonymous,
                Some(t) => Credentials::Login {
                    username: "bot".into(),
                    token: Some(SecretString::from(t.to_string())),
                    refresh: None,
                },
            },
            join_rate: Rate::TWITCH_DEFAULT_JOINS,
        }
    }

    fn config(accounts: &[(&str, Option<&str>)], groups: &[(&str, &[&str], &[&str])]) -> Config {
        let startup = StartupConfig {
            twitch: TwitchConfig::default(),
            database: DatabaseConfig::Fields {
                host: "h".into(),
                port: 5432,
                name: "n".into(),
                user: "u".into(),
                password: None,
            },
            reload: ReloadConfig::default(),
            http: Default::default(),
            log: Default::default(),
            spool_dir: "data/spool".into(),
            storage: Default::default(),
        };
        let live = LiveConfig {
            batch: BatchConfig::default(),
            filters: Default::default(),
            cluster: Default::default(),
            storage: Default::default(),
            accounts: accounts.iter().map(|(n, t)| (n.to_string(), account(*t))).collect(),
            groups: groups
                .iter()
                .map(|(n, a, c)| {
                    (
                        n.to_string(),
                        GroupConfig {
                            accounts: a.iter().map(|s| s.to_string()).collect(),
                            channels: c.iter().map(|s| s.to_string()).collect(),
                            ignore_users: Default::default(),
                        },
                    )
                })
                .collect(),
        };
        Config { origin: Origin::EnvOnly, startup, live, env_overrides: vec![] }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_config_plans_nothing() {
        let c = config(&[("a", Some("t"))], &[("g", &["a"], &["x"])]);
        assert!(plan(&c, &c.clone()).is_empty());
    }

    #[test]
    fn adding_a_channel_joins_it_without_reconnecting_anyone() {
        let old = config(&[("a", Some("t")), ("b", None)], &[("g", &["a"], &["x"]), ("h", &["b"], &["y"])]);
        let new = config(&[("a", Some("t")), ("b", None)], &[("g", &["a"], &["x", "z"]), ("h", &["b"], &["y"])]);
        let p = plan(&old, &new);
        assert_eq!(p.channels.len(), 1);
        assert_eq!(p.channels["a"], (set(&["z"]), set(&[])));
        assert!(p.restart.is_empty() && p.start.is_empty() && p.stop.is_empty());
        assert_eq!(p.summary(), "joined [z]");
    }

    #[test]
    fn a_channel_another_group_still_needs_is_not_parted() {
        let old = config(&[("a", None)], &[("g", &["a"], &["x", "shared"]), ("h", &["a"], &["shared"])]);
        let new = config(&[("a", None)], &[("g", &["a"], &["x"]), ("h", &["a"], &["shared"])]);
        assert!(plan(&old, &new).is_empty());
        let gone = config(&[("a", None)], &[("g", &["a"], &["x"])]);
        assert_eq!(plan(&old, &gone).channels["a"], (set(&[]), set(&["shared"])));
    }

    #[test]
    fn accounts_added_removed_and_with_new_tokens() {
        let old = config(&[("a", Some("t1")), ("gone", None)], &[]);
        let new = config(&[("a", Some("t2")), ("fresh", None)], &[]);
        let p = plan(&old, &new);
        assert_eq!(p.start, ["fresh"]);
        assert_eq!(p.stop, ["gone"]);
        assert_eq!(p.restart, ["a"]);
        assert!(p.summary().contains("accounts started [fresh]") && p.summary().contains("reconnected [a]"));
    }

    #[test]
    fn batch_settings_apply_live_but_spool_dir_and_database_need_a_restart() {
        let old = config(&[], &[]);
        let mut new = old.clone();
        new.live.batch.max_rows = 7;
        new.live.batch.flush_interval = Duration::from_millis(300);
        new.live.batch.queue_capacity = 9;
        new.startup.spool_dir = "/elsewhere".into();
        new.startup.database = DatabaseConfig::Fields {
            host: "elsewhere".into(),
            port: 5432,
            name: "n".into(),
            user: "u".into(),
            password: None,
        };
        let p = plan(&old, &new);
        let b = p.batch.unwrap();
        assert_eq!((b.max_rows, b.flush_interval, b.queue_capacity), (7, Duration::from_millis(300), 9));
        // The running spool stays where it is: spool_dir is a start-up setting, not in `b`'s type.
        assert_eq!(p.needs_restart, ["batch.spool_dir", "database"]);
    }

    #[test]
    fn a_summary_of_thousands_of_channels_stays_one_short_line() {
        let many: Vec<String> = (0..5000).map(|i| format!("ch_{i:04}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let old = config(&[("a", None)], &[("g", &["a"], &["x"])]);
        let new = config(&[("a", None)], &[("g", &["a"], &many)]);
        let line = plan(&old, &new).summary();
        assert!(line.len() < 1000, "{} bytes", line.len());
        assert!(line.starts_with("joined [ch_0000, ch_0001") && line.contains("… and 4980 more]"), "{line}");
    }

    fn users(logins: &[&str], ids: &[&str]) -> UserList {
        UserList { logins: set(logins), ids: set(ids) }
    }

    #[test]
    fn filter_edits_are_applied_and_summarised_by_list_with_counts_but_no_user_names() {
        let old = config(&[("a", None)], &[("g", &["a"], &["x"]), ("gone", &["a"], &["y"])]);
        let mut new = old.clone();
        new.live.filters.opt_out_users = users(&["shy_person"], &["44322889"]);
        new.live.groups.get_mut("g").unwrap().ignore_users = users(&["esl_bot"], &[]);
        let mut old = old;
        old.live.groups.get_mut("gone").unwrap().ignore_users = users(&["old_bot"], &[]);
        new.live.groups.remove("gone");
        let p = plan(&old, &new);
        let keys: Vec<(&str, usize, usize)> = p.filters.iter().map(|c| (c.key.as_str(), c.added, c.removed)).collect();
        assert_eq!(
            keys,
            [("filters.opt_out_users", 2, 0), ("groups.g.ignore_users", 1, 0), ("groups.gone.ignore_users", 0, 1)]
        );
        let line = p.summary();
        assert!(line.contains("user filters applied [filters.opt_out_users +2/-0, groups.g.ignore_users +1/-0, groups.gone.ignore_users +0/-1]"), "{line}");
        for name in ["shy_person", "44322889", "esl_bot", "old_bot"] {
            assert!(!line.contains(name), "{line}");
        }
        assert!(plan(&new, &new.clone()).filters.is_empty());
        // The same list over other channels is a change too: the filter follows the group.
        let mut wider = new.clone();
        wider.live.groups.get_mut("g").unwrap().channels.insert("z".into());
        let line = plan(&new, &wider).summary();
        assert!(line.contains("user filters applied [groups.g.ignore_users +0/-0 (now in 2 channels)]"), "{line}");
    }

    #[test]
    fn a_new_shard_joins_the_channels_it_now_owns_and_parts_the_others() {
        use crate::config::{ClusterConfig, Shard};
        let many: Vec<String> = (0..60).map(|i| format!("ch_{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut old = config(&[("a", None), ("b", None)], &[("g", &["a"], &many), ("h", &["b"], &many[..10])]);
        old.live.cluster = ClusterConfig { shard: Shard { index: 1, count: 3 }, replicas: 1 };
        let mut new = old.clone();
        new.live.cluster = ClusterConfig { shard: Shard { index: 2, count: 3 }, replicas: 1 };
        let p = plan(&old, &new);
        let (join, part) = &p.channels["a"];
        assert_eq!(*join, new.live.channels_for("a"));
        assert_eq!(*part, old.live.channels_for("a"));
        assert!(!join.is_empty() && !part.is_empty() && join.is_disjoint(part));
        assert_eq!(p.channels["b"].0, new.live.channels_for("b"), "every account of the shard follows");
        assert!(p.restart.is_empty() && p.start.is_empty() && p.stop.is_empty(), "nobody reconnects");
        assert!(p.summary().ends_with("now shard 2/3 with 1 replica(s)"), "{}", p.summary());

        // A second replica only adds channels.
        let mut two = old.clone();
        two.live.cluster.replicas = 2;
        let p = plan(&old, &two);
        assert!(p.channels["a"].1.is_empty() && !p.channels["a"].0.is_empty());
        assert!(old.live.all_channels().is_subset(&two.live.all_channels()));
    }

    #[test]
    fn a_join_rate_change_needs_no_reconnect() {
        let old = config(&[("a", Some("t"))], &[]);
        let mut new = old.clone();
        new.live.accounts.get_mut("a").unwrap().join_rate = Rate { count: 50, per: Duration::from_secs(10) };
        let p = plan(&old, &new);
        assert!(p.restart.is_empty());
        assert_eq!(p.join_rate["a"].count, 50);
    }
}
