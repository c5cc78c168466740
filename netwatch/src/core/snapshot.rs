//! A point-in-time view of the aggregator: what the live views render and what the JSON
//! `"type":"snapshot"` records carry. Plain data, so renderers are tested without a kernel.

use std::net::IpAddr;

use super::early_ends::EarlyEnds;
use super::event::Owner;

use netwatch_common::state;

/// count/p50/p90/p99/max of a set of durations, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// One bar of a dwell histogram: how many dwells were at most `upper_ns` (and above the
/// previous bar's bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub upper_ns: u64,
    pub count: u64,
}

/// The most sockets a gauge has shown, and when it first showed that many. An incident is
/// often over by the time someone looks (TIME_WAIT back to 0), so every view quotes the
/// peak beside the current count: the number at the end alone hides what happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    pub max: u64,
    /// The stamp of the first sample that reached `max` (the caller's clock: CLOCK_MONOTONIC
    /// live, the offset into the trace in a report).
    pub at: u64,
}

impl Peak {
    /// Takes one sample of the gauge; the earliest sample wins a tie, so the time says when
    /// the pile-up reached its height, not when it last stood there.
    pub fn observe(&mut self, n: u64, at: u64) {
        if n > self.max {
            *self = Peak { max: n, at };
        }
    }

    /// This peak, or `n` now if that is higher (a redraw between snapshots).
    pub fn with(self, n: u64, at: u64) -> Peak {
        let mut p = self;
        p.observe(n, at);
        p
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Sockets in this state now.
    pub now: u64,
    /// The highest `now` of any snapshot so far (gauges are sampled once per interval, so a
    /// peak between two samples is not seen, as in `ss` run in a loop).
    pub peak: Peak,
    /// Sockets that entered the state during the last interval.
    pub entered: u64,
    /// Completed dwells in this state since the trace began.
    pub dwell: Percentiles,
    /// Ages of the sockets still in the state (a leak shows as ages that keep growing).
    pub age: Percentiles,
    /// Completed dwells as power-of-two-ish buckets, smallest first, empty ones left out.
    pub buckets: Vec<Bucket>,
}

/// Sockets per key in one state, biggest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Talker<K> {
    pub key: K,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC of the snapshot.
    pub mono_ns: u64,
    /// Length of the interval `entered` counts cover.
    pub interval_ns: u64,
    /// Indexed by kernel state number ([`state::COUNT`] entries).
    pub states: Vec<StateStats>,
    /// Per state: service ports with the most sockets in it (the listener's port, whichever
    /// side the socket is on: the local port of accepted sockets, the remote port of
    /// connecting ones), top N.
    pub top_service_ports: Vec<Vec<Talker<u16>>>,
    /// Per state: this end's own ports with the most sockets in it (`ss`'s local port,
    /// random for clients), top N.
    pub top_local_ports: Vec<Vec<Talker<u16>>>,
    /// Per state: remote addresses with the most sockets in it, top N.
    pub top_remotes: Vec<Vec<Talker<IpAddr>>>,
    /// Per state: the processes holding the most sockets in it, top N (sockets of no known
    /// process are left out: a kernel-held TIME_WAIT socket belongs to nobody).
    pub top_processes: Vec<Vec<Talker<Owner>>>,
    /// Per state: the network namespaces with the most sockets in it, top N (inodes; see
    /// `netns_names`).
    pub top_netns: Vec<Vec<Talker<u32>>>,
    /// Sockets in each state now, per network namespace (request sockets and accept
    /// queues are counted for all namespaces together, in `states`).
    pub per_netns: std::collections::BTreeMap<u32, [u64; state::COUNT]>,
    /// Names of namespaces that have one (`/run/netns`), for the views: filled by the
    /// tracer, empty in a replay unless the trace's header had them.
    pub netns_names: std::collections::BTreeMap<u32, String>,
    pub transitions: u64,
    /// Records the kernel could not send (ring buffer full) plus undecodable ones.
    pub lost: u64,
    /// Connection tracking, when the traced namespaces use it.
    pub conntrack: Option<ConntrackStats>,
    /// TIME_WAITs that ended before their 60 s, by cause, since the start.
    pub timewait_early_ends: EarlyEnds,
    /// Of the ESTABLISHED sockets, children waiting in listeners' accept queues (counted
    /// from the listeners: no record announces them before accept()).
    pub accept_queued: u64,
    /// Server-side handshakes that ended since the start, by outcome.
    pub handshakes: Handshakes,
}

/// Request sockets that ended: with a connection (the child was accepted) or without
/// (the SYN-ACKs went unanswered, the queue was full, the client gave up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub completed: u64,
    pub failed: u64,
}

/// The conntrack table of the traced namespace: fill level, churn and entry lifetimes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// `nf_conntrack_count` of the namespace and the (global) `nf_conntrack_max`.
    pub count: Option<u64>,
    pub max: Option<u64>,
    /// Entries created and freed during the interval.
    pub inserted: u64,
    pub freed: u64,
    /// Packets dropped because the table was full during the interval.
    pub table_full_drops: u64,
    /// Entries evicted early to make room during the interval.
    pub early_drops: u64,
    /// Entry lifetimes (creation to expiry) by the conntrack TCP state they ended in, since
    /// the start; `"-"` for entries that were not TCP.
    pub lifetimes: Vec<(&'static str, Percentiles)>,
    /// ESTABLISHED entries idle for over an hour now, and the timeout that keeps them.
    pub established_idle_over_1h: Option<u64>,
    pub timeout_established_s: Option<u64>,
    /// Entries in TIME_WAIT now, and their timeout.
    pub time_wait_entries: Option<u64>,
    pub timeout_time_wait_s: Option<u64>,
}

impl Snapshot {
    /// `scn-srv` where the namespace has a name, else its inode.
    pub fn netns_label(&self, inode: u32) -> String {
        self.netns_names
            .get(&inode)
            .cloned()
            .unwrap_or_else(|| inode.to_string())
    }

    pub fn empty() -> Self {
        Self {
            states: vec![StateStats::default(); state::COUNT],
            top_service_ports: vec![Vec::new(); state::COUNT],
            top_local_ports: vec![Vec::new(); state::COUNT],
            top_remotes: vec![Vec::new(); state::COUNT],
            top_processes: vec![Vec::new(); state::COUNT],
            top_netns: vec![Vec::new(); state::COUNT],
            ..Default::default()
        }
    }

    pub fn state(&self, s: u8) -> &StateStats {
        &self.states[s as usize]
    }

    /// Per-second rate of entries into a state over the last interval.
    pub fn rate(&self, s: u8) -> f64 {
        if self.interval_ns == 0 {
            return 0.0;
        }
        self.state(s).entered as f64 * 1e9 / self.interval_ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Peak;

    #[test]
    fn a_peak_keeps_the_first_time_it_was_reached() {
        let mut p = Peak::default();
        for (n, at) in [(3, 1), (9, 2), (9, 3), (0, 4)] {
            p.observe(n, at);
        }
        assert_eq!(p, Peak { max: 9, at: 2 });
        assert_eq!(p.with(4, 5), p);
        assert_eq!(p.with(10, 5), Peak { max: 10, at: 5 });
    }
}
