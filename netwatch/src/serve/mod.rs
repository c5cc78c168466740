//! The Prometheus exporter of `netwatch serve` and `trace --metrics`: one more consumer of
//! the trace's engine, not a second one. Each interval the tracer hands it the aggregator,
//! the sampled environment and the kernel counters; it builds a [`exposition::View`],
//! encodes it once, and the HTTP side ([`http`]) serves those bytes until the next
//! interval. Metric names live in [`catalogue`]; label cardinality is bounded in
//! [`places`] (see docs/metrics.md).

pub mod catalogue;
pub mod exposition;
pub mod http;
pub mod places;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netwatch_common::state;

use crate::cgroup::Resolver;
use crate::core::aggregate::Aggregator;
use crate::core::conntrack::ConntrackTracker;
use crate::core::early_ends::Cause;
use crate::core::event::Event;
use crate::core::signals::{Alert, Environment};
use crate::features::KernelFeatures;
use exposition::{ConntrackSeries, Encoded, Hist, View};
use places::NetnsNames;

/// What the HTTP side reads: the last encoded exposition and when it was made.
pub struct Shared {
    encoded: Mutex<(Encoded, Option<Instant>)>,
    /// The trace's interval: `/healthz` fails when no interval has been published for
    /// three of them (the trace loop is stuck).
    interval: Duration,
}

impl Shared {
    pub fn new(interval: Duration) -> Self {
        Self {
            encoded: Mutex::new((Encoded::default(), None)),
            interval,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Encoded, Option<Instant>)> {
        // A panic elsewhere while holding it left whole bytes behind: still servable.
        self.encoded.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, e: Encoded) {
        *self.lock() = (e, Some(Instant::now()));
    }

    pub fn encoded(&self) -> Encoded {
        self.lock().0.clone()
    }

    /// Ok while intervals are being published.
    pub fn health(&self) -> Result<(), String> {
        let limit = self.interval * 3 + Duration::from_secs(2);
        match self.lock().1 {
            None => Err("starting: no interval published yet".into()),
            Some(t) if t.elapsed() > limit => Err(format!(
                "stale: the last interval was published {:.1} s ago",
                t.elapsed().as_secs_f64()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Binds the `--listen` / `--metrics` address now, before the slow start, so that a port
/// in use fails at once and says so.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} for /metrics: choose another address or port")
    })?;
    l.set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    Ok(l)
}

/// What one interval gives the exporter.
pub struct Interval<'a> {
    pub agg: &'a Aggregator,
    pub now_ns: u64,
    /// Request sockets (SYN_RECV) now, per namespace inode.
    pub syn_recv: &'a [(u32, u64)],
    pub env: &'a HashMap<u32, Environment>,
    pub conntrack: &'a ConntrackTracker,
    pub records: u64,
    pub lost: u64,
    pub skipped_runs: u64,
    pub bpf_run: Vec<(String, Duration)>,
    /// The tracer's cgroup resolver, shared with the records' `container`.
    pub cgroups: &'a mut Resolver,
}

/// The exporter's own state between intervals.
pub struct Exporter {
    shared: Arc<Shared>,
    netns: NetnsNames,
    alerts: BTreeMap<String, u64>,
    kernel: String,
    features: String,
    /// Keeps the kernel's run-time statistics on for netwatch's run (BPF_ENABLE_STATS);
    /// they stop when it is closed, whatever the global sysctl says.
    _stats: Option<OwnedFd>,
}

impl Exporter {
    pub fn new(shared: Arc<Shared>, kernel: String, features: &KernelFeatures) -> Self {
        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                eprintln!(
                    "netwatch: warning: the kernel refused run-time statistics ({e}); \
                     netwatch_bpf_run_seconds_total stays 0"
                );
                None
            }
        };
        Self {
            shared,
            netns: NetnsNames::system(),
            alerts: BTreeMap::new(),
            kernel,
            features: feature_list(features),
            _stats: stats,
        }
    }

    /// Records are counted by the engine (early ends included); nothing per record here.
    pub fn observe(&mut self, _ev: &Event) {}

    pub fn alert(&mut self, a: &Alert) {
        *self
            .alerts
            .entry(crate::core::json::alert_kind(a))
            .or_default() += 1;
    }

    /// Builds, encodes and publishes this interval's metrics.
    pub fn publish(&mut self, i: Interval<'_>) {
        let view = self.view(i);
        self.shared.publish(exposition::encode(view));
    }

    fn view(&mut self, i: Interval<'_>) -> View {
        let states_seen = |h: &Hist| h.count > 0;
        let dwell = (1..state::COUNT as u8)
            .map(|s| (state::name(s), Hist::from_ns(i.agg.dwell_recorded(s))))
            .filter(|(_, h)| states_seen(h))
            .collect();
        let mut ages: Vec<Vec<(u64, u64)>> = vec![Vec::new(); state::COUNT];
        for (s, age) in i.agg.ages(i.now_ns) {
            if let Some(v) = ages.get_mut(s as usize) {
                v.push((age, 1));
            }
        }
        let age = ages
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(s, v)| (state::name(s as u8), Hist::from_ns(v)))
            .collect();
        let mut groups: Vec<((u32, u64), [u64; state::COUNT])> =
            i.agg.groups().into_iter().collect();
        for &(ns, n) in i.syn_recv {
            let mut c = [0; state::COUNT];
            c[state::SYN_RECV as usize] = n;
            groups.push(((ns, 0), c));
        }
        let placed: Vec<_> = groups
            .into_iter()
            .map(|((ns, cg), c)| (self.netns.place(ns, cg, i.cgroups), c))
            .collect();
        let mut conntrack: Vec<ConntrackSeries> = i
            .env
            .iter()
            .filter_map(|(ns, e)| {
                let ct = e.conntrack.as_ref()?;
                Some((*ns, ct.count, ct.max))
            })
            .map(|(ns, entries, max)| ConntrackSeries {
                netns: self.netns.label(ns),
                entries,
                max,
                lifetime: None,
            })
            .collect();
        if let Some(ns) = i.conntrack.netns() {
            let label = self.netns.label(ns);
            let h = Hist::from_ns(i.conntrack.lifetimes_recorded());
            match conntrack.iter_mut().find(|c| c.netns == label) {
                Some(c) => c.lifetime = Some(h),
                None => conntrack.push(ConntrackSeries {
                    netns: label,
                    lifetime: Some(h),
                    ..Default::default()
                }),
            }
        }
        conntrack.sort_by(|a, b| a.netns.cmp(&b.netns));
        conntrack.truncate(places::MAX_PLACES);
        View {
            dwell,
            age,
            sockets: places::sockets_rows(placed),
            transitions: i
                .agg
                .transition_pairs()
                .map(|(o, n, c)| (state::name(o), state::name(n), c))
                .collect(),
            alerts: self.alerts.iter().map(|(k, n)| (k.clone(), *n)).collect(),
            // One classification, the engine's (see core::early_ends): the same causes the
            // trace's summary and the report count.
            early_ends: {
                let e = i.agg.early_ends();
                Cause::ALL.iter().map(|&c| (c.name(), e.get(c))).collect()
            },
            conntrack,
            records: i.records,
            lost: i.lost,
            skipped_runs: i.skipped_runs,
            bpf_run_s: i
                .bpf_run
                .into_iter()
                .map(|(p, d)| (p, d.as_secs_f64()))
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: self.kernel.clone(),
            features: self.features.clone(),
        }
    }
}

/// The features available on this kernel, by their snake_case names, comma-separated.
fn feature_list(f: &KernelFeatures) -> String {
    crate::features::Feature::ALL
        .iter()
        .filter(|x| f.has(**x))
        .filter_map(|x| serde_json::to_value(x).ok()?.as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{Family, Transition};

    fn closing_tw(dwell_s: f64) -> Transition {
        Transition {
            mono_ns: 1,
            sock_id: 1,
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 1,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 2,
            old: state::TIME_WAIT,
            new: state::CLOSE,
            dwell_ns: Some((dwell_s * 1e9) as u64),
            netns: 1,
            timewait: true,
            synack_retransmits: None,
            accept_wait_ns: None,
            owner: None,
            cgroup: 0,
            container: None,
        }
    }

    #[test]
    fn features_are_listed_by_name() {
        let all = KernelFeatures::all("tp_btf");
        let list = feature_list(&all);
        assert!(list.starts_with("transitions,time_wait,"), "{list}");
    }

    #[test]
    fn a_busy_interval_stays_within_the_series_bound() {
        // 500 sockets in 200 namespaces, in every state, and every dwell and age.
        let mut agg = Aggregator::new();
        for i in 0..500u64 {
            for s in places::GAUGE_STATES {
                let mut t = closing_tw(1.0);
                t.sock_id = i * 100 + s as u64;
                t.old = s;
                t.new = s;
                t.netns = (i % 200) as u32;
                agg.apply(&t);
                t.new = state::CLOSE;
                agg.apply(&t);
                t.new = s;
                agg.apply(&t);
            }
        }
        let shared = Arc::new(Shared::new(Duration::from_secs(1)));
        let mut x = Exporter {
            shared: shared.clone(),
            netns: NetnsNames::system(),
            alerts: BTreeMap::new(),
            kernel: "6.18".into(),
            features: String::new(),
            _stats: None,
        };
        x.publish(Interval {
            agg: &agg,
            now_ns: 10_000_000_000,
            syn_recv: &[(1, 3)],
            env: &HashMap::new(),
            conntrack: &ConntrackTracker::new(250),
            records: 0,
            lost: 0,
            skipped_runs: 0,
            bpf_run: Vec::new(),
            cgroups: &mut Resolver::new("/nonexistent", "/nonexistent"),
        });
        let e = shared.encoded();
        assert!(e.series <= 2000, "{} series", e.series);
        assert!(e.text.len() < 512 << 10, "{} bytes", e.text.len());
    }
}
