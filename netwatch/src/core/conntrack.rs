//! Conntrack: entry lifetimes by the TCP state they ended in, and the table's fill level
//! and churn per interval, for snapshots and the conntrack_full alert.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::event::ConntrackEnd;
use super::snapshot::{ConntrackStats, Percentiles};

/// The table as procfs shows it this interval (filled in by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackEnv {
    pub count: Option<u64>,
    pub max: Option<u64>,
    /// Increases during the interval of the `conntrack -S` counters (`insert` stays 0 on
    /// some kernels: the tracker derives insertions from the count and frees instead).
    pub inserted: u64,
    pub table_full_drops: u64,
    pub early_drops: u64,
    pub insert_failed: u64,
    pub established_idle_over_1h: Option<u64>,
    pub time_wait_entries: Option<u64>,
    pub timeout_established_s: Option<u64>,
    pub timeout_time_wait_s: Option<u64>,
}

impl ConntrackEnv {
    /// Whether the table holds or took entries: what makes netwatch show it, and attach
    /// the hook that follows its entries' births.
    pub fn in_use(&self) -> bool {
        self.count.unwrap_or(0) > 0 || self.inserted > 0
    }
}

pub struct ConntrackTracker {
    hz: u64,
    lifetimes: BTreeMap<&'static str, Histogram<u64>>,
    freed: u64,
    /// Entries freed without ever entering the table (e.g. dropped because it was full).
    unconfirmed: u64,
    /// Confirmed entries freed during the interval: with the change in the table's count
    /// they give the insertions.
    confirmed_freed: u64,
    last_count: Option<u64>,
    /// Namespace of the latest entry seen.
    netns: Option<u32>,
    seen: bool,
}

impl ConntrackTracker {
    pub fn new(hz: u64) -> Self {
        Self {
            hz,
            lifetimes: BTreeMap::new(),
            freed: 0,
            unconfirmed: 0,
            confirmed_freed: 0,
            last_count: None,
            netns: None,
            seen: false,
        }
    }

    /// Every lifetime recorded, whatever state the entry ended in: (nanoseconds, how many).
    pub fn lifetimes_recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.lifetimes
            .values()
            .flat_map(|h| h.iter_recorded())
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }

    /// The namespace whose table the entries came from.
    pub fn netns(&self) -> Option<u32> {
        self.netns
    }

    pub fn apply(&mut self, e: &ConntrackEnd) {
        self.seen = true;
        self.netns = Some(e.netns);
        self.freed += 1;
        if !e.confirmed {
            self.unconfirmed += 1;
            return;
        }
        self.confirmed_freed += 1;
        if let Some(life) = e.lifetime_ns(self.hz) {
            self.lifetimes
                .entry(e.tcp_state_name())
                .or_insert_with(|| {
                    Histogram::new_with_bounds(1, 30 * 24 * 3600 * 1_000_000_000, 3)
                        .expect("static bounds")
                })
                .saturating_record(life.max(1));
        }
    }

    /// The interval's view; None when conntrack is not in use (nothing to show).
    pub fn snapshot(&mut self, env: Option<&ConntrackEnv>) -> Option<ConntrackStats> {
        let e = env.cloned().unwrap_or_default();
        // Entries now = entries before + inserted - freed. Kept up while the table is idle
        // too, so the interval in which its first entry appears counts it.
        let derived = match (e.count, self.last_count) {
            (Some(now), Some(before)) => (now + self.confirmed_freed).saturating_sub(before),
            _ => 0,
        };
        self.last_count = e.count.or(self.last_count);
        let in_use = self.seen || e.in_use();
        if !in_use {
            return None;
        }
        let stats = ConntrackStats {
            count: e.count,
            max: e.max,
            inserted: e.inserted.max(derived),
            freed: self.freed,
            table_full_drops: e.table_full_drops,
            early_drops: e.early_drops,
            lifetimes: self
                .lifetimes
                .iter()
                .map(|(k, h)| {
                    (
                        *k,
                        Percentiles {
                            count: h.len(),
                            p50: h.value_at_quantile(0.5),
                            p90: h.value_at_quantile(0.9),
                            p99: h.value_at_quantile(0.99),
                            max: h.max(),
                        },
                    )
                })
                .collect(),
            established_idle_over_1h: e.established_idle_over_1h,
            timeout_established_s: e.timeout_established_s,
            time_wait_entries: e.time_wait_entries,
            timeout_time_wait_s: e.timeout_time_wait_s,
        };
        self.freed = 0;
        self.confirmed_freed = 0;
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(state: u8, born: u64, freed: u64, late_jiffies: u64, confirmed: bool) -> ConntrackEnd {
        ConntrackEnd {
            freed_ns: freed,
            born_ns: Some(born),
            expired_jiffies_ago: late_jiffies,
            confirmed,
            netns: 1,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 1,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 2,
            l4proto: 6,
            tcp_state: Some(state),
        }
    }

    #[test]
    fn lifetimes_end_at_expiry_not_at_the_lazy_free() {
        let mut t = ConntrackTracker::new(250);
        // Lived 120 s to its TIME_WAIT expiry, freed 10 s later by the GC.
        t.apply(&end(7, 0, 130_000_000_000, 2500, true));
        t.apply(&end(7, 0, 1, 0, false));
        let s = t.snapshot(None).unwrap();
        let (name, p) = s.lifetimes[0];
        assert_eq!(name, "TIME_WAIT");
        assert_eq!(p.count, 1);
        assert!((119_900_000_000..120_100_000_000).contains(&p.max), "{p:?}");
        assert_eq!(s.freed, 2);
        assert_eq!(t.snapshot(None).unwrap().freed, 0);
    }

    #[test]
    fn insertions_come_from_the_count_and_the_frees() {
        let mut t = ConntrackTracker::new(250);
        let env = |count| ConntrackEnv {
            count: Some(count),
            max: Some(100),
            ..Default::default()
        };
        assert_eq!(t.snapshot(Some(&env(10))).unwrap().inserted, 0);
        // 5 entries freed and the count went 10 -> 12: 7 were inserted.
        for _ in 0..5 {
            t.apply(&end(3, 0, 1, 0, true));
        }
        assert_eq!(t.snapshot(Some(&env(12))).unwrap().inserted, 7);
    }

    #[test]
    fn the_first_entry_after_an_idle_table_is_counted() {
        let mut t = ConntrackTracker::new(250);
        let env = |count| ConntrackEnv {
            count: Some(count),
            max: Some(100),
            ..Default::default()
        };
        assert_eq!(t.snapshot(Some(&env(0))), None);
        assert_eq!(t.snapshot(Some(&env(1))).unwrap().inserted, 1);
    }

    #[test]
    fn silent_when_conntrack_is_not_in_use() {
        let mut t = ConntrackTracker::new(250);
        assert_eq!(t.snapshot(None), None);
        let idle = ConntrackEnv {
            count: Some(0),
            max: Some(262144),
            ..Default::default()
        };
        assert_eq!(t.snapshot(Some(&idle)), None);
        let busy = ConntrackEnv {
            count: Some(10),
            ..idle
        };
        assert_eq!(t.snapshot(Some(&busy)).unwrap().count, Some(10));
    }
}
