//! What a trace can see on the kernel it ran on: one catalogue of capabilities, in the
//! user's words, decided by the attach plan (`crate::plan`) and read by every output (the
//! start-up lines, the JSON header and summary, `report`, the alerts that depend on them).
//!
//! A feature's absence must never look like an incident: the alert rules ask `has` before
//! reading silence as evidence (no timewait record after a close is an overflow only when
//! the timewait hooks work).

use serde::{Deserialize, Serialize};

/// One thing netwatch follows in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Full-socket state transitions with the dwell of the state left.
    Transitions,
    /// TIME_WAIT (and an orphan's FIN_WAIT2 as a timewait socket): entry, early kills, dwell.
    TimeWait,
    /// The moment an orphan's FIN_WAIT2 timewait socket turns TIME_WAIT (the peer's FIN).
    OrphanFin,
    /// Server-side SYN_RECV: the request socket's life and the accept-queue wait.
    SynRecv,
    /// SYN-ACK retransmits of handshakes whose final ACK does not come.
    SynackRetransmits,
    /// Packets dropped with a reason: PAWS rejects, listen-queue overflow, netfilter.
    DropReasons,
    /// The timewait socket's last timestamp beside a PAWS reject (NAT evidence).
    PawsEvidence,
    /// Conntrack entries' lifetimes (fill and drops come from procfs regardless).
    ConntrackLifetimes,
    /// Events nested on one CPU, which the kernel skips for a running program.
    NestedEvents,
    /// Each socket's cgroup, which names its container (or systemd unit).
    Containers,
}

impl Feature {
    pub const ALL: [Feature; 10] = [
        Feature::Transitions,
        Feature::TimeWait,
        Feature::OrphanFin,
        Feature::SynRecv,
        Feature::SynackRetransmits,
        Feature::DropReasons,
        Feature::PawsEvidence,
        Feature::ConntrackLifetimes,
        Feature::NestedEvents,
        Feature::Containers,
    ];

    /// What the user loses without it, in their words.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::Transitions => "TCP state transitions and their dwell",
            Feature::TimeWait => "TIME_WAIT and orphaned FIN_WAIT2 dwell",
            Feature::OrphanFin => "the moment an orphaned FIN_WAIT2 turns TIME_WAIT",
            Feature::SynRecv => "SYN_RECV dwell (request sockets) and accept-queue wait",
            Feature::SynackRetransmits => "SYN-ACK retransmits",
            Feature::DropReasons => "drop reasons (PAWS rejects, listen overflow, netfilter)",
            Feature::PawsEvidence => "the timewait socket's timestamp in PAWS evidence",
            Feature::ConntrackLifetimes => "conntrack entry lifetimes",
            Feature::NestedEvents => "events nested on one CPU",
            Feature::Containers => "the socket's container (cgroup) in records and metrics",
        }
    }
}

/// Whether one feature works in this trace, and how (or why not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStatus {
    pub feature: Feature,
    pub available: bool,
    /// How the kernel is watched for it ("raw tracepoint kmem_cache_alloc"), or, when not
    /// available, why (in the user's words: "kfree_skb has no drop reason before 5.17").
    pub detail: String,
}

/// The features of one trace. Traces written before this existed carry none, and are
/// read as having everything (which is what they claimed at the time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KernelFeatures(pub Vec<FeatureStatus>);

impl KernelFeatures {
    /// Everything available, as on the kernels netwatch was first built for.
    #[cfg(test)]
    pub fn all(detail: &str) -> Self {
        Self(
            Feature::ALL
                .iter()
                .map(|&feature| FeatureStatus {
                    feature,
                    available: true,
                    detail: detail.to_owned(),
                })
                .collect(),
        )
    }

    /// Whether `feature` works; true when the trace does not say (older traces).
    pub fn has(&self, feature: Feature) -> bool {
        self.0
            .iter()
            .find(|s| s.feature == feature)
            .is_none_or(|s| s.available)
    }

    /// The features this trace lacks.
    pub fn lost(&self) -> impl Iterator<Item = &FeatureStatus> {
        self.0.iter().filter(|s| !s.available)
    }

    /// One line per lost feature, as said once at start-up and in reports:
    /// "TIME_WAIT and orphaned FIN_WAIT2 dwell unavailable: <why>".
    pub fn lost_lines(&self) -> Vec<String> {
        self.lost()
            .map(|s| format!("{} unavailable: {}", s.feature.describe(), s.detail))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_trace_without_features_has_them_all() {
        let none = KernelFeatures::default();
        assert!(Feature::ALL.iter().all(|&f| none.has(f)));
        assert!(none.lost_lines().is_empty());
    }

    #[test]
    fn lost_features_are_said_in_one_line_each() {
        let mut f = KernelFeatures::all("tp_btf");
        f.0[1].available = false;
        f.0[1].detail = "kmem_cache_alloc carries no cache on this kernel".into();
        assert!(!f.has(Feature::TimeWait));
        assert!(f.has(Feature::SynRecv));
        assert_eq!(
            f.lost_lines(),
            vec![
                "TIME_WAIT and orphaned FIN_WAIT2 dwell unavailable: kmem_cache_alloc \
                 carries no cache on this kernel"
            ]
        );
        let json = serde_json::to_string(&f).unwrap();
        let back: KernelFeatures = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert!(json.contains(r#""feature":"time_wait""#), "{json}");
    }
}
