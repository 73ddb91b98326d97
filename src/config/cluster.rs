//! `[cluster]`: which share of the configured channels this instance logs, when several
//! loggers run over one config.
//!
//! Assignment is rendezvous (highest-random-weight) hashing: every shard gives every channel a
//! weight that depends only on the channel's login and the shard's index, and a channel belongs
//! to the `replicas` shards with the highest weights. Adding shard n+1 takes from each old shard
//! only the channels where the new shard now wins, about 1/(n+1) of them, and moves nothing else.
//! The hash is written out here (FNV-1a, then splitmix64's finaliser), so that every build on
//! every platform assigns the same way: loggers of two versions must agree.

use std::fmt;

/// Most shards accepted: assignment costs one hash per channel and shard.
pub const MAX_SHARDS: u32 = 1000;

/// This instance's place: shard `index` of `count`, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1..=count.
    pub index: u32,
    /// Number of shards, ≥ 1.
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Parses `"i/n"` (1 ≤ i ≤ n ≤ [`MAX_SHARDS`]); the error says how to write it.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let how = "write it as \"INDEX/COUNT\", e.g. \"2/4\" for the second of four shards (1-based)";
        let (i, n) = s.trim().split_once('/').ok_or_else(|| format!("`{s}` is not a shard; {how}"))?;
        let num = |v: &str| v.trim().parse::<u32>().map_err(|_| format!("`{s}` is not a shard; {how}"));
        let (index, count) = (num(i)?, num(n)?);
        check_count(count).map_err(|e| format!("`{s}`: {e}"))?;
        if index == 0 || index > count {
            return Err(format!("`{s}`: the index must be from 1 to {count} (it is 1-based); {how}"));
        }
        Ok(Shard { index, count })
    }
}

/// A shard count the logger accepts.
pub fn check_count(count: u32) -> Result<(), String> {
    if count == 0 || count > MAX_SHARDS {
        return Err(format!("the shard count must be from 1 to {MAX_SHARDS}"));
    }
    Ok(())
}

/// The shard a StatefulSet pod is: the pod name's ordinal (the digits after its last `-`,
/// 0-based) plus one. `logger-1` with 4 shards is shard 2/4.
pub fn shard_from_pod_name(name: &str, count: u32) -> Result<Shard, String> {
    let ordinal = name
        .rsplit_once('-')
        .map(|(_, tail)| tail)
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(|| {
            format!(
                "`{name}` does not end in -ORDINAL like a StatefulSet pod (logger-0, logger-1, …), so cluster.shards cannot tell which shard this is; run it as a StatefulSet pod, or set SHARD=INDEX/COUNT or [cluster] shard = \"INDEX/COUNT\""
            )
        })?;
    if ordinal >= count {
        return Err(format!(
            "`{name}` is pod ordinal {ordinal}, but cluster.shards = {count} allows ordinals 0 to {}; make the StatefulSet's replicas equal cluster.shards",
            count - 1
        ));
    }
    Ok(Shard { index: ordinal + 1, count })
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This instance's shard; 1/1 when not sharded.
    pub shard: Shard,
    /// How many shards log each channel (1..=count).
    pub replicas: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { shard: Shard { index: 1, count: 1 }, replicas: 1 }
    }
}

impl ClusterConfig {
    /// Whether this instance logs `channel` (a normalised login).
    pub fn owns(&self, channel: &str) -> bool {
        if self.replicas >= self.shard.count {
            return true;
        }
        // Owned when fewer than `replicas` shards rank above this one (the order of `owners`),
        // counted without sorting: a reload asks this for every channel and account.
        let key = channel_key(channel);
        let (me, mine) = (self.shard.index, weight(key, self.shard.index));
        let above = (1..=self.shard.count)
            .filter(|&i| {
                i != me && {
                    let w = weight(key, i);
                    w > mine || (w == mine && i < me)
                }
            })
            .count();
        above < self.replicas as usize
    }

    /// Whether there is more than one shard.
    pub fn is_sharded(&self) -> bool {
        self.shard.count > 1
    }
}

/// The shards (1-based indexes) that log `channel` among `count`, best first: the `replicas`
/// highest weights, ties (never seen with 64-bit weights) broken by the lower index.
pub fn owners(channel: &str, count: u32, replicas: u32) -> Vec<u32> {
    let key = channel_key(channel);
    let mut ranked: Vec<(u64, u32)> = (1..=count).map(|i| (weight(key, i), i)).collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().take(replicas as usize).map(|(_, i)| i).collect()
}

/// 64-bit FNV-1a: fixed constants, byte by byte, the same everywhere.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// splitmix64's finaliser: FNV-1a alone mixes its last bytes poorly, which would make the
/// weights of similar logins (`chan_1`, `chan_2`) correlate.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A channel's half of every weight, computed once per channel.
fn channel_key(channel: &str) -> u64 {
    mix(fnv1a(channel.as_bytes()))
}

/// The weight shard `index` gives the channel whose [`channel_key`] is `key`.
fn weight(key: u64, index: u32) -> u64 {
    mix(key ^ mix(u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("channel_{i}")).collect()
    }

    #[test]
    fn shards_are_written_index_slash_count_from_one() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard::parse(" 1 / 1 "), Ok(Shard { index: 1, count: 1 }));
        for bad in ["0/4", "5/4", "2", "a/b", "2/0", "-1/4", "2/4/1", "1/1001", ""] {
            let e = Shard::parse(bad).unwrap_err();
            assert!(e.contains("INDEX/COUNT") || e.contains("from 1 to"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_statefulset_pod_ordinal_is_its_shard_minus_one() {
        assert_eq!(shard_from_pod_name("logger-1", 4), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(shard_from_pod_name("twitch-chat-logger-0", 3), Ok(Shard { index: 1, count: 3 }));
        let e = shard_from_pod_name("logger-4", 4).unwrap_err();
        assert!(e.contains("ordinal 4") && e.contains("0 to 3"), "{e}");
        for bad in ["logger", "logger-", "logger-x1", "3f2a9c1b7d", "logger-1a", "logger-99999999999"] {
            let e = shard_from_pod_name(bad, 4).unwrap_err();
            assert!(e.contains("SHARD=INDEX/COUNT"), "{bad}: {e}");
        }
    }

    #[test]
    fn weights_are_pinned_so_a_hash_change_is_caught() {
        // Loggers of two builds must agree on who logs what: these values may never change.
        // FNV-1a's published test vector, and ours (values computed independently, in Python).
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"twitchdev"), 0x68e3_5f34_0573_f771);
        let got: Vec<(&str, [u32; 2])> = ["twitchdev", "twitch", "xqc", "shroud", "channel_0"]
            .into_iter()
            .map(|c| (c, owners(c, 5, 2).try_into().unwrap()))
            .collect();
        assert_eq!(got, PINNED, "{got:?}");
    }

    const PINNED: [(&str, [u32; 2]); 5] =
        [("twitchdev", [4, 1]), ("twitch", [5, 2]), ("xqc", [2, 4]), ("shroud", [3, 1]), ("channel_0", [5, 2])];

    #[test]
    fn not_sharded_owns_everything_and_replicas_equal_to_count_too() {
        assert!(ClusterConfig::default().owns("anything"));
        let all = ClusterConfig { shard: Shard { index: 2, count: 3 }, replicas: 3 };
        assert!(names(100).iter().all(|c| all.owns(c)));
    }

    #[test]
    fn going_from_n_to_n_plus_one_shards_moves_about_one_in_n_plus_one_channels() {
        let channels = names(10_000);
        for n in [1u32, 2, 3, 4, 7, 10] {
            let moved = channels.iter().filter(|c| owners(c, n, 1) != owners(c, n + 1, 1)).count();
            let expected = 10_000.0 / f64::from(n + 1);
            eprintln!("{n} → {} shards: {moved} of 10000 channels moved (ideal {expected:.0})", n + 1);
            assert!((moved as f64 - expected).abs() < expected * 0.1, "{n}: {moved} moved, ideal {expected}");
            // Every channel that moved went to the new shard: nothing moves between old shards.
            assert!(channels
                .iter()
                .filter(|c| owners(c, n, 1) != owners(c, n + 1, 1))
                .all(|c| owners(c, n + 1, 1) == [n + 1]));
        }
    }

    #[test]
    fn ten_thousand_channels_over_the_most_shards_are_assigned_in_well_under_a_second() {
        let channels = names(10_000);
        let started = std::time::Instant::now();
        let c = ClusterConfig { shard: Shard { index: 7, count: MAX_SHARDS }, replicas: 3 };
        let mine = channels.iter().filter(|ch| c.owns(ch)).count();
        let took = started.elapsed();
        eprintln!("10,000 channels × {MAX_SHARDS} shards: {took:?} ({mine} owned)");
        // A debug build on a shared CPU: generous.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        assert!(mine > 0 && mine < 100, "{mine}");
    }

    #[test]
    fn shards_get_even_shares() {
        let channels = names(10_000);
        for (n, r) in [(3u32, 1u32), (4, 2), (10, 3)] {
            let mut per = vec![0usize; n as usize];
            for c in &channels {
                for i in owners(c, n, r) {
                    per[i as usize - 1] += 1;
                }
            }
            let ideal = 10_000.0 * f64::from(r) / f64::from(n);
            eprintln!("{n} shards, {r} replicas: {per:?} (ideal {ideal:.0})");
            assert!(per.iter().all(|&k| (k as f64 - ideal).abs() < ideal * 0.1), "{per:?}");
        }
    }

    proptest! {
        #[test]
        fn every_channel_has_exactly_replicas_distinct_owners(
            channel in "[a-z0-9_]{1,25}",
            count in 1u32..40,
            r in 1u32..40,
        ) {
            let replicas = r.min(count);
            let o = owners(&channel, count, replicas);
            let mut distinct = o.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), replicas as usize);
            prop_assert!(o.iter().all(|i| (1..=count).contains(i)));
            let mut owning: Vec<u32> = (1..=count)
                .filter(|&index| ClusterConfig { shard: Shard { index, count }, replicas }.owns(&channel))
                .collect();
            owning.sort_unstable();
            prop_assert_eq!(owning, distinct, "each shard's own answer agrees with the ranking");
            // With more replicas, the owners so far stay owners (a replica adds a reader, moves none).
            if replicas < count {
                prop_assert_eq!(&owners(&channel, count, replicas + 1)[..replicas as usize], &o[..]);
            }
        }

        #[test]
        fn any_shard_text_parses_or_is_refused_with_how_to_write_it(s in "\\PC{0,12}") {
            match Shard::parse(&s) {
                Ok(sh) => prop_assert!(sh.index >= 1 && sh.index <= sh.count && sh.count <= MAX_SHARDS),
                Err(e) => prop_assert!(e.contains("INDEX/COUNT") || e.contains("from 1 to")),
            }
        }
    }
}
