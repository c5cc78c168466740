//! Samples the kernel's own counters and settings of each traced namespace once per
//! interval, for the incident signals: what the tracepoints cannot see (a SYN the kernel
//! consumed on a full accept queue, a timewait socket never made) shows in these counters.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::core::conntrack::ConntrackEnv;
use crate::core::signals::Environment;
use crate::procfs::{self, conntrack, Netstat};

/// Tables up to this many entries are read whole for idle times and states...
const CONNTRACK_TABLE_READ_LIMIT: u64 = 20_000;
/// ...at most this often. Reading /proc/net/nf_conntrack also makes the kernel free the
/// expired entries it walks (the GC would free them up to ~30 s later): harmless to the
/// lifetimes, which are taken to each entry's expiry, but a cost, so not more than this.
const CONNTRACK_TABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// TcpExt counters whose increase the signals use.
const COUNTERS: &[&str] = &[
    "TCPTimeWaitOverflow",
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "PAWSActive",
    "PAWSEstab",
    "PAWSTimewait",
    "TSEcrRejected",
    "PAWSOldAck",
    "TWKilled",
    "TWRecycled",
    "TCPSynRetrans",
];

pub struct EnvSource {
    /// (namespace inode, file to enter it by; None for ours).
    spaces: Vec<(u32, Option<PathBuf>)>,
    last: HashMap<u32, Netstat>,
    last_ct: HashMap<u32, conntrack::ConntrackStat>,
    /// The last table summary per namespace and when it was read.
    last_table: HashMap<u32, (std::time::Instant, conntrack::TableSummary)>,
}

impl EnvSource {
    pub fn new(spaces: Vec<(u32, Option<PathBuf>)>) -> Self {
        let mut s = Self {
            spaces,
            last: HashMap::new(),
            last_ct: HashMap::new(),
            last_table: HashMap::new(),
        };
        // The baseline, so the first interval reports what happened in it, not since boot.
        for (ns, path) in &s.spaces {
            if let Ok(n) = procfs::read_netstat(path.as_deref()) {
                s.last.insert(*ns, n);
            }
            if let Ok(c) = conntrack::read_stat(path.as_deref()) {
                s.last_ct.insert(*ns, c);
            }
        }
        s
    }

    /// Watches exactly `own` (entered as ours) and `others` from now on: a namespace new to
    /// the list gets its baseline now, one gone from it is forgotten.
    pub fn refresh(&mut self, own: u32, others: Vec<(u32, Option<PathBuf>)>) {
        let mut spaces = vec![(own, None)];
        spaces.extend(others.into_iter().filter(|(ns, _)| *ns != own));
        for (ns, path) in &spaces {
            if !self.last.contains_key(ns) {
                if let Ok(n) = procfs::read_netstat(path.as_deref()) {
                    self.last.insert(*ns, n);
                }
                if let Ok(c) = conntrack::read_stat(path.as_deref()) {
                    self.last_ct.insert(*ns, c);
                }
            }
        }
        self.last
            .retain(|ns, _| spaces.iter().any(|(s, _)| s == ns));
        self.last_ct
            .retain(|ns, _| spaces.iter().any(|(s, _)| s == ns));
        self.last_table
            .retain(|ns, _| spaces.iter().any(|(s, _)| s == ns));
        self.spaces = spaces;
    }

    /// Whether a sampled namespace's conntrack table holds entries now (its count only:
    /// cheap enough for the start of a trace, before the first interval's sample).
    pub fn conntrack_in_use(&self) -> bool {
        self.spaces.iter().any(|(_, path)| {
            procfs::read_sysctls(path.as_deref())
                .nf_conntrack_count
                .is_some_and(|c| c > 0)
        })
    }

    /// The namespaces sampled, each with its file to enter it by (None for ours).
    pub fn spaces(&self) -> &[(u32, Option<PathBuf>)] {
        &self.spaces
    }

    /// The sampled namespaces, in the order they were given.
    pub fn namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.spaces.iter().map(|(ns, _)| *ns)
    }

    pub fn sample(&mut self) -> HashMap<u32, Environment> {
        let mut out = HashMap::new();
        for (ns, path) in &self.spaces {
            let sysctls = procfs::read_sysctls(path.as_deref());
            let mut env = Environment {
                sysctls: sysctls.as_pairs().into_iter().collect(),
                ..Default::default()
            };
            if let Some(count) = sysctls.nf_conntrack_count {
                let stat = conntrack::read_stat(path.as_deref()).ok();
                let delta = |name: &str| -> u64 {
                    match (&stat, self.last_ct.get(ns)) {
                        (Some(now), Some(before)) => now
                            .get(name)
                            .copied()
                            .unwrap_or(0)
                            .saturating_sub(before.get(name).copied().unwrap_or(0)),
                        _ => 0,
                    }
                };
                let timeout_est = sysctls.nf_conntrack_tcp_timeout_established.map(u64::from);
                let stale = self
                    .last_table
                    .get(ns)
                    .is_none_or(|(at, _)| at.elapsed() >= CONNTRACK_TABLE_EVERY);
                if stale && u64::from(count) <= CONNTRACK_TABLE_READ_LIMIT {
                    if let Some(t) = conntrack::read_table(
                        path.as_deref(),
                        timeout_est.unwrap_or(432_000),
                        CONNTRACK_TABLE_READ_LIMIT,
                    ) {
                        self.last_table.insert(*ns, (std::time::Instant::now(), t));
                    }
                }
                let table = self.last_table.get(ns).map(|(_, t)| t.clone());
                env.conntrack = Some(ConntrackEnv {
                    count: Some(count.into()),
                    max: sysctls.nf_conntrack_max.map(u64::from),
                    inserted: delta("insert"),
                    table_full_drops: delta("drop"),
                    early_drops: delta("early_drop"),
                    insert_failed: delta("insert_failed"),
                    established_idle_over_1h: table.as_ref().map(|t| t.established_idle_over_1h),
                    time_wait_entries: table.as_ref().map(|t| t.time_wait),
                    timeout_established_s: timeout_est,
                    timeout_time_wait_s: sysctls.nf_conntrack_tcp_timeout_time_wait.map(u64::from),
                });
                if let Some(stat) = stat {
                    self.last_ct.insert(*ns, stat);
                }
            }
            if let Ok(now) = procfs::read_netstat(path.as_deref()) {
                if let Some(before) = self.last.get(ns) {
                    for &name in COUNTERS {
                        if let Some(d) = now.delta(before, "TcpExt", name) {
                            env.deltas.insert(name, d);
                        }
                    }
                }
                self.last.insert(*ns, now);
            }
            out.insert(*ns, env);
        }
        out
    }
}

/// The kernel's tick rate (CONFIG_HZ), which conntrack timeouts count in: two readings of
/// the jiffies clock in /proc/timer_list 50 ms apart, rounded to the rates kernels are built
/// with. None if timer_list is unreadable.
pub fn kernel_hz() -> Option<u64> {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/timer_list").ok()?;
        let jiffies = text
            .lines()
            .find_map(|l| l.strip_prefix("jiffies: "))?
            .trim()
            .parse()
            .ok()?;
        Some((jiffies, crate::core::clock::mono_now_ns()))
    }
    let (j0, t0) = sample()?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (j1, t1) = sample()?;
    let measured = (j1.saturating_sub(j0)) as f64 * 1e9 / (t1.saturating_sub(t0)).max(1) as f64;
    [100u64, 250, 300, 1000].into_iter().min_by(|a, b| {
        (*a as f64 - measured)
            .abs()
            .total_cmp(&(*b as f64 - measured).abs())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_hz_is_a_real_rate_when_readable() {
        if let Some(hz) = super::kernel_hz() {
            assert!([100, 250, 300, 1000].contains(&hz));
        }
    }
}
