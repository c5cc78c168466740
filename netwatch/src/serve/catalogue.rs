//! Every metric `/metrics` exposes: its name, type and help, in one list. Dashboards, alert
//! rules and `docs/metrics.md` rely on these names, so they are fixed here and nowhere else;
//! packaging checks its Grafana JSON and rules against [`METRIC_NAMES`].

/// How a metric is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One metric: the name a scraper sees, its type and its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Metric {
    /// The name given to the encoder, which adds `_total` to counters and `_info` to info
    /// metrics itself.
    pub fn stem(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            Kind::Info => self.name.strip_suffix("_info").unwrap_or(self.name),
            Kind::Gauge | Kind::Histogram => self.name,
        }
    }
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

pub const TCP_STATE_DWELL: Metric = m(
    "netwatch_tcp_state_dwell_seconds",
    Kind::Histogram,
    "Completed dwell of TCP sockets per state they left, since netwatch started.",
);
pub const TCP_SOCKETS: Metric = m(
    "netwatch_tcp_sockets",
    Kind::Gauge,
    "TCP sockets in each state now, per network namespace and container (request sockets \
     in SYN_RECV included).",
);
pub const TCP_STATE_AGE: Metric = m(
    "netwatch_tcp_state_age_seconds",
    Kind::Histogram,
    "Ages of the sockets still in each state, as of the last interval (a snapshot: use \
     histogram_quantile without rate).",
);
pub const TCP_TRANSITIONS: Metric = m(
    "netwatch_tcp_transitions_total",
    Kind::Counter,
    "TCP state transitions by the state left and the state entered.",
);
pub const ALERTS: Metric = m(
    "netwatch_alerts_total",
    Kind::Counter,
    "Incident signals netwatch raised, by kind.",
);
pub const TIMEWAIT_EARLY_ENDS: Metric = m(
    "netwatch_tcp_timewait_early_ends_total",
    Kind::Counter,
    "TIME_WAIT sockets that ended well before the TIME_WAIT length, by cause.",
);
pub const CONNTRACK_ENTRIES: Metric = m(
    "netwatch_conntrack_entries",
    Kind::Gauge,
    "Conntrack entries in the namespace's table now (nf_conntrack_count).",
);
pub const CONNTRACK_MAX: Metric = m(
    "netwatch_conntrack_max",
    Kind::Gauge,
    "The conntrack table's size limit (nf_conntrack_max).",
);
pub const CONNTRACK_LIFETIME: Metric = m(
    "netwatch_conntrack_entry_lifetime_seconds",
    Kind::Histogram,
    "Conntrack entry lifetimes, creation to expiry.",
);
pub const RECORDS: Metric = m(
    "netwatch_records_total",
    Kind::Counter,
    "TCP transition records netwatch received from the kernel.",
);
pub const RECORDS_LOST: Metric = m(
    "netwatch_records_lost_total",
    Kind::Counter,
    "Records lost: the kernel's ring buffer was full, or a record could not be decoded.",
);
pub const KERNEL_SKIPPED_RUNS: Metric = m(
    "netwatch_kernel_skipped_runs_total",
    Kind::Counter,
    "Program runs the kernel skipped because the program was already running on that CPU.",
);
pub const BPF_RUN: Metric = m(
    "netwatch_bpf_run_seconds_total",
    Kind::Counter,
    "CPU time netwatch's kernel programs ran, by program (kernel run-time statistics, \
     enabled for netwatch's run only).",
);
pub const BUILD_INFO: Metric = m(
    "netwatch_build_info",
    Kind::Info,
    "netwatch's version, the kernel, and the features netwatch has on this kernel.",
);

/// Every metric, in the order they are exposed.
#[allow(dead_code)] // read by the tests that hold the encoder and the docs to it
pub const METRICS: [Metric; 14] = [
    TCP_STATE_DWELL,
    TCP_SOCKETS,
    TCP_STATE_AGE,
    TCP_TRANSITIONS,
    ALERTS,
    TIMEWAIT_EARLY_ENDS,
    CONNTRACK_ENTRIES,
    CONNTRACK_MAX,
    CONNTRACK_LIFETIME,
    RECORDS,
    RECORDS_LOST,
    KERNEL_SKIPPED_RUNS,
    BPF_RUN,
    BUILD_INFO,
];

/// The names a scraper sees (histograms add `_bucket`, `_sum` and `_count` to theirs).
#[allow(dead_code)] // as METRICS
pub const METRIC_NAMES: [&str; 14] = {
    let mut names = [""; 14];
    let mut i = 0;
    while i < METRICS.len() {
        names[i] = METRICS[i].name;
        i += 1;
    }
    names
};

/// Upper bounds, in seconds, of the histograms' buckets: 1-2-5 per decade from 1 ms to
/// 600 s, plus bounds just above the timers people ask about, so that `histogram_quantile`
/// (which interpolates linearly inside a bucket) reads them within 10 %: `tcp_fin_timeout`
/// set to 3 s or 30 s, its default 60 s and TIME_WAIT's 60 s (both end a little late on the
/// timer wheel, in (60, 66]), and 90 s / 120 s for the SYN-ACK and conntrack timeouts.
pub const BUCKETS_S: [f64; 26] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 3.3, 5.0, 10.0, 20.0,
    30.0, 33.0, 50.0, 60.0, 66.0, 90.0, 120.0, 200.0, 500.0, 600.0,
];

/// [`BUCKETS_S`] in nanoseconds, for binning the engine's values.
pub fn bucket_bounds_ns() -> [u64; BUCKETS_S.len()] {
    BUCKETS_S.map(|s| (s * 1e9).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("netwatch_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Info => assert!(m.name.ends_with("_info"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
        assert_eq!(METRIC_NAMES[0], "netwatch_tcp_state_dwell_seconds");
        assert_eq!(TCP_TRANSITIONS.stem(), "netwatch_tcp_transitions");
        assert_eq!(BUILD_INFO.stem(), "netwatch_build");
    }

    #[test]
    fn the_docs_list_every_metric() {
        let docs = include_str!("../../../docs/metrics.md");
        for name in METRIC_NAMES {
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "docs/metrics.md does not list {name}"
            );
        }
    }

    #[test]
    fn buckets_rise_and_resolve_the_tcp_timers() {
        assert!(BUCKETS_S.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (BUCKETS_S[0], BUCKETS_S[BUCKETS_S.len() - 1]),
            (0.001, 600.0)
        );
        // A dwell a little above each timer falls in a bucket at most 10 % wide.
        for timer in [3.0, 30.0, 60.0] {
            let i = BUCKETS_S.iter().position(|&b| b == timer).unwrap();
            assert!(BUCKETS_S[i + 1] <= timer * 1.1 + 1e-9, "{timer}");
        }
        assert_eq!(bucket_bounds_ns()[0], 1_000_000);
    }
}
