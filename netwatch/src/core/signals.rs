//! Incident signals: turns drops, SYN-ACK retransmits, odd transitions and counter deltas
//! into named alerts with their evidence and the knobs that matter. Each alert is one of the
//! failure stories on-call engineers meet (TIME_WAIT pile-ups, NATed clients rejected by
//! PAWS, SYN backlog trouble, port exhaustion).
//!
//! Per-event evidence is only counted here; alerts come out once per interval (PAWS rejects
//! at once, capped), so a storm cannot turn into a storm of output.
//!
//! The engine is told which features the trace has ([`Signals::new`]): a rule that reads
//! the absence of records as evidence (a close followed by no timewait socket) may do so only
//! where the hook that would have sent them works; elsewhere silence is not an incident.
//! Every other rule fires on records or counters that are there, which a missing feature can
//! only make rarer, never invent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use netwatch_common::state;
use serde::Serialize;

use super::alert_catalogue::{self as catalogue, AlertKind};
use super::conntrack::ConntrackEnv;
use super::event::{Drop, DropReason, Event, Transition};
use super::requests::ListenerQueue;
use crate::features::{Feature, KernelFeatures};

/// Fill level of the conntrack table that is worth an alert before it overflows.
const CONNTRACK_FULL_RATIO: f64 = 0.9;

/// PAWS rejects reported one by one per interval; beyond this they are only counted.
const PAWS_PER_INTERVAL: u32 = 20;
/// |TSval - ts_recent| above this cannot be one client's clock moving on (at 1 kHz it would
/// take 28 hours): a different host behind the same address.
const FOREIGN_CLOCK_DELTA: i64 = 100_000_000;
/// The TcpExt counter of SYNs answered with a cookie because the SYN queue was full
/// (`SyncookiesSent` also counts `tcp_syncookies=2`, which sends them always).
const SYN_QUEUE_COOKIES: &str = "TCPReqQFullDoCookies";

/// What the environment says for one namespace this interval: counter deltas from
/// /proc/net/netstat and the current sysctls, filled in by the caller.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// TcpExt counter name -> increase during the interval.
    pub deltas: HashMap<&'static str, u64>,
    /// Dotted sysctl name -> value.
    pub sysctls: BTreeMap<&'static str, String>,
    /// The conntrack table, when the namespace has one in use.
    pub conntrack: Option<ConntrackEnv>,
}

impl Environment {
    /// A listener refused SYNs or final ACKs in this interval (its queue was full).
    /// A listener's accept queue or SYN queue was full: SYNs or final ACKs dropped, or SYNs
    /// answered with cookies because the SYN queue was full (nothing dropped, but the same
    /// incident: a flood, or a backlog too small for the load).
    pub fn listen_overflowed(&self) -> bool {
        self.delta("ListenOverflows") + self.delta("ListenDrops") + self.delta(SYN_QUEUE_COOKIES)
            > 0
    }

    fn delta(&self, name: &str) -> u64 {
        self.deltas.get(name).copied().unwrap_or(0)
    }

    fn knobs(&self, names: &[&'static str]) -> BTreeMap<&'static str, String> {
        names
            .iter()
            .filter_map(|n| self.sysctls.get(n).map(|v| (*n, v.clone())))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    /// A segment dropped by PAWS (timestamp older than the last one seen on that 4-tuple).
    PawsReject {
        netns: u32,
        reason: &'static str,
        saddr: String,
        sport: u16,
        daddr: String,
        dport: u16,
        flags: String,
        tsval: Option<u32>,
        tsecr: Option<u32>,
        ts_recent: Option<u32>,
        ts_delta: Option<i64>,
        /// Rejects beyond the per-interval cap, counted but not listed.
        suppressed: u32,
    },
    /// Several hosts seem to share one source address (NAT) and collide with TIME_WAIT.
    NatSuspected {
        netns: u32,
        addr: String,
        rejections: u64,
        ports: Vec<u16>,
        max_ts_delta: i64,
        knobs: BTreeMap<&'static str, String>,
    },
    /// A listener resent SYN-ACKs: clients' final ACKs are not arriving.
    SynackRetransmits {
        netns: u32,
        listener: String,
        count: u64,
        clients: Vec<String>,
        max_retransmits: u8,
        knobs: BTreeMap<&'static str, String>,
    },
    /// Handshakes or SYNs dropped because a listener's queues were full.
    ListenOverflow {
        netns: u32,
        ports: Vec<u16>,
        /// The listeners behind it, each with its process, accept queue, backlog and the
        /// limit that sized it (those on `ports`, else those found full).
        listeners: Vec<String>,
        dropped_final_acks: u64,
        listen_overflows: u64,
        listen_drops: u64,
        req_queue_full_drops: u64,
        /// SYNs answered with SYN cookies because the SYN queue was full (absent in traces
        /// written before it was recorded: the report's totals skip it there).
        req_queue_full_cookies: u64,
        knobs: BTreeMap<&'static str, String>,
    },
    /// Connections closed without a TIME_WAIT socket: `tcp_max_tw_buckets` was reached.
    /// Raised only when the namespace's TCPTimeWaitOverflow moved (see
    /// [`timewait_evidence`]).
    TimewaitOverflow {
        netns: u32,
        /// Closes seen without a timewait socket; `None` (null) where the kernel does not
        /// show timewait sockets, so no close can be told to have had one.
        closed_without_timewait: Option<u64>,
        tcp_timewait_overflow: u64,
        /// TIME_WAIT sockets now; `None` where they are not followed.
        time_wait_now: Option<u64>,
        knobs: BTreeMap<&'static str, String>,
    },
    /// The conntrack table is full (or nearly): new connections' packets are dropped.
    ConntrackFull {
        netns: u32,
        count: Option<u64>,
        max: Option<u64>,
        table_full_drops: u64,
        early_drops: u64,
        /// Senders of packets netfilter dropped in that namespace during the interval.
        dropped_from: Vec<String>,
        knobs: BTreeMap<&'static str, String>,
    },
    /// Sockets sit in CLOSE_WAIT: the peer closed long ago and the application has not.
    CloseWaitLeak {
        netns: u32,
        sockets: u64,
        oldest_ns: u64,
        processes: Vec<String>,
    },
    /// connect() failed for want of a free local port (EADDRNOTAVAIL).
    PortExhaustion {
        netns: u32,
        daddr: String,
        dport: u16,
        failures: u64,
        processes: Vec<String>,
        /// Local sockets tied up towards this destination now, TIME_WAIT included (where
        /// followed).
        ports_in_use: u64,
        /// Of those, in TIME_WAIT; `None` (null) where the kernel does not show timewait
        /// sockets.
        time_wait_to_destination: Option<u64>,
        knobs: BTreeMap<&'static str, String>,
    },
}

impl Alert {
    /// This alert's entry in the catalogue: its name, severity, advice and the rest.
    pub fn kind(&self) -> &'static AlertKind {
        match self {
            Alert::PawsReject { .. } => &catalogue::PAWS_REJECT,
            Alert::NatSuspected { .. } => &catalogue::NAT_SUSPECTED,
            Alert::SynackRetransmits { .. } => &catalogue::SYNACK_RETRANSMITS,
            Alert::ListenOverflow { .. } => &catalogue::LISTEN_OVERFLOW,
            Alert::TimewaitOverflow { .. } => &catalogue::TIMEWAIT_OVERFLOW,
            Alert::ConntrackFull { .. } => &catalogue::CONNTRACK_FULL,
            Alert::PortExhaustion { .. } => &catalogue::PORT_EXHAUSTION,
            Alert::CloseWaitLeak { .. } => &catalogue::CLOSE_WAIT_LEAK,
        }
    }

    /// The namespace the alert is about (every kind has one).
    pub fn netns(&self) -> u32 {
        self.evidence()
            .get("netns")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    /// The alert's fields as its trace record has them (`Value::Null` for none): what the
    /// catalogue's subject and counted fields are read from, live as in a report.
    pub fn evidence(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// What `--plain` and `--events` print: `ALERT critical port_exhaustion: message`, then
    /// (but for harmless kinds, which come in numbers) the catalogue's advice on its own line.
    #[cfg(test)]
    pub fn text(&self) -> String {
        self.text_in(None)
    }

    /// [`Alert::text`], naming the alert's namespace where it has a name (`ip netns`'s, or
    /// a container's): `ALERT warning listen_overflow in netns scn-srv: ...`.
    pub fn text_in(&self, netns_name: Option<&str>) -> String {
        let kind = self.kind();
        let place = netns_name
            .map(|n| format!(" in netns {n}"))
            .unwrap_or_default();
        let mut out = format!(
            "ALERT {} {}{place}: {}\n",
            kind.severity.as_str(),
            kind.name,
            self.message()
        );
        if kind.severity != catalogue::Severity::Info {
            out.push_str(&format!("  what to change: {}\n", kind.advice));
        }
        out
    }

    /// One line for people: what happened, with the endpoint and the knob to look at.
    pub fn message(&self) -> String {
        let text = match self {
            Alert::PawsReject {
                reason,
                saddr,
                sport,
                daddr,
                dport,
                flags,
                ts_delta,
                ..
            } => format!(
                "PAWS reject ({reason}): {flags} from {saddr}:{sport} to {daddr}:{dport} \
                 carried an older TCP timestamp{}",
                ts_delta
                    .map(|d| format!(" (TSval - ts_recent = {d})"))
                    .unwrap_or_default()
            ),
            Alert::NatSuspected {
                addr,
                rejections,
                ports,
                ..
            } => format!(
                "NAT suspected at {addr}: {rejections} SYNs rejected by PAWS from {} source \
                 ports; clients behind one address collide with TIME_WAIT sockets (see \
                 net.ipv4.tcp_timestamps, tcp_tw_reuse)",
                ports.len()
            ),
            Alert::SynackRetransmits {
                listener,
                count,
                max_retransmits,
                ..
            } => format!(
                "SYN_RECV trouble on {listener}: {count} SYN-ACK retransmits (up to #{}) - \
                 final ACKs are lost or late (net.ipv4.tcp_synack_retries)",
                *max_retransmits as u32 + 1
            ),
            Alert::ListenOverflow {
                ports,
                listeners,
                dropped_final_acks,
                listen_overflows,
                listen_drops,
                req_queue_full_cookies,
                ..
            } => {
                let place = if !listeners.is_empty() {
                    format!(" on {}", listeners.join("; "))
                } else if !ports.is_empty() {
                    format!(" on port {ports:?}")
                } else {
                    String::new()
                };
                // Without dropped final ACKs the overflows were SYNs refused at a full
                // queue: say that, not "0 final ACKs dropped".
                let what = if *dropped_final_acks > 0 {
                    format!("{dropped_final_acks} final ACKs dropped, ")
                } else if listen_overflows + listen_drops > 0 {
                    "SYNs refused at the full queue, ".to_owned()
                } else {
                    String::new()
                };
                // Cookies drop nothing: the SYN queue was full and connections still came.
                let cookies = if *req_queue_full_cookies > 0 {
                    format!(
                        "SYN queue full, {req_queue_full_cookies} SYNs answered with SYN cookies \
                         (TCPReqQFullDoCookies), "
                    )
                } else {
                    String::new()
                };
                format!(
                    "listen queue overflow{place}: {what}{cookies}ListenOverflows \
                     +{listen_overflows}, ListenDrops +{listen_drops} - the application \
                     accepts too slowly or its queue is too small"
                )
            }
            Alert::TimewaitOverflow {
                closed_without_timewait,
                tcp_timewait_overflow,
                time_wait_now,
                knobs,
                ..
            } => {
                let buckets = knobs
                    .get("net.ipv4.tcp_max_tw_buckets")
                    .map(String::as_str)
                    .unwrap_or("?");
                match (closed_without_timewait, time_wait_now) {
                    (Some(closed), Some(now)) => format!(
                        "TIME_WAIT bucket overflow: {closed} connections closed without \
                         TIME_WAIT (TCPTimeWaitOverflow +{tcp_timewait_overflow}); {now} in \
                         TIME_WAIT of net.ipv4.tcp_max_tw_buckets = {buckets}"
                    ),
                    _ => format!(
                        "TIME_WAIT bucket overflow: TCPTimeWaitOverflow +{tcp_timewait_overflow} \
                         (which connections closed without TIME_WAIT is not visible on this \
                         kernel); net.ipv4.tcp_max_tw_buckets = {buckets}"
                    ),
                }
            }
            Alert::ConntrackFull {
                count,
                max,
                table_full_drops,
                early_drops,
                ..
            } => format!(
                "conntrack table full: {} of nf_conntrack_max {} entries; {table_full_drops} \
                 packets dropped (\"nf_conntrack: table full, dropping packet\"), {early_drops} \
                 entries evicted early - raise net.netfilter.nf_conntrack_max or shorten \
                 nf_conntrack_tcp_timeout_established",
                count.map_or("?".to_owned(), |c| c.to_string()),
                max.map_or("?".to_owned(), |m| m.to_string()),
            ),
            Alert::CloseWaitLeak {
                sockets,
                oldest_ns,
                processes,
                ..
            } => format!(
                "{sockets} sockets in CLOSE_WAIT for 10 s or more, the oldest for {}{}: the \
                 peer closed and the application has not",
                crate::core::text::duration(Some(*oldest_ns)),
                if processes.is_empty() {
                    String::new()
                } else {
                    format!(", held by {}", processes.join(", "))
                },
            ),
            Alert::PortExhaustion {
                daddr,
                dport,
                failures,
                processes,
                ports_in_use,
                time_wait_to_destination,
                knobs,
                ..
            } => format!(
                "ephemeral ports exhausted towards {daddr}:{dport}: {failures} connect() \
                 failures (EADDRNOTAVAIL){}; {ports_in_use} local ports in use to it ({}) of \
                 net.ipv4.ip_local_port_range {}",
                if processes.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", processes.join(", "))
                },
                match time_wait_to_destination {
                    Some(tw) => format!("{tw} in TIME_WAIT"),
                    None => "TIME_WAIT not visible on this kernel".to_owned(),
                },
                knobs
                    .get("net.ipv4.ip_local_port_range")
                    .map(String::as_str)
                    .unwrap_or("?")
            ),
        };
        match self.counter_scope() {
            Some(scope) => format!("{text} ({scope})"),
            None => text,
        }
    }

    /// Which evidence of this alert is a namespace-wide counter: it counts every port of
    /// the namespace, so `--port` (which filters the kernel's records) cannot narrow it.
    fn counter_scope(&self) -> Option<&'static str> {
        match self {
            Alert::ListenOverflow { .. } => Some(
                "ListenOverflows and ListenDrops count every port of the namespace; --port \
                 narrows only the dropped final ACKs",
            ),
            Alert::TimewaitOverflow { .. } => {
                Some("TCPTimeWaitOverflow counts every port of the namespace")
            }
            Alert::ConntrackFull { .. } => {
                Some("the conntrack table is the namespace's, shared by every port")
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct NatEvidence {
    rejections: u64,
    ports: BTreeSet<u16>,
    max_delta: i64,
}

#[derive(Debug, Default)]
struct SynackEvidence {
    count: u64,
    clients: BTreeSet<String>,
    max_retransmits: u8,
}

#[derive(Debug, Default)]
struct ExhaustionEvidence {
    failures: u64,
    processes: BTreeSet<String>,
}

/// Evidence gathered during the current interval.
#[derive(Debug)]
pub struct Signals {
    paws_listed: u32,
    paws_suppressed: u32,
    nat: HashMap<(u32, IpAddr), NatEvidence>,
    nat_reported: HashSet<(u32, IpAddr)>,
    synack: BTreeMap<(u32, String), SynackEvidence>,
    overflow_acks: BTreeMap<u32, (u64, BTreeSet<u16>)>,
    no_timewait: BTreeMap<u32, u64>,
    exhaustion: BTreeMap<(u32, IpAddr, u16), ExhaustionEvidence>,
    netfilter_drops: BTreeMap<u32, BTreeSet<String>>,
    /// Namespaces whose conntrack table was near full at the last interval: a table that
    /// stays full is reported when it fills and whenever it drops, not every interval.
    conntrack_near_full: HashSet<u32>,
    /// Whether the kernel shows timewait sockets in this trace: decides what silence means.
    timewait_seen: bool,
}

impl Default for Signals {
    fn default() -> Self {
        Self::new(&KernelFeatures::default())
    }
}

/// Whether one namespace's interval supports a `timewait_overflow` alert, and with how many
/// closes seen without a timewait socket (None: not observable here). Only the kernel's own
/// TCPTimeWaitOverflow is evidence: a close seen without its timewait socket can also be a
/// hand-over the tracer missed (a trace started mid-close, a run the kernel skipped), or,
/// where the timewait hooks do not work, every close. Those closes are shown beside the
/// counter, never instead of it.
pub fn timewait_evidence(
    timewait_seen: bool,
    closed_without_timewait: u64,
    tcp_timewait_overflow: u64,
) -> Option<Option<u64>> {
    (tcp_timewait_overflow > 0).then_some(timewait_seen.then_some(closed_without_timewait))
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// What the engine needs to know of the live sockets when it reports.
/// The listeners a listen overflow is about: those on the ports whose final ACKs were
/// dropped; else those whose queue was full at the last listing; else (the queue drained
/// between listings) the fullest one.
pub fn overflowing_listeners(
    all: &[(ListenerQueue, Option<String>)],
    ports: &BTreeSet<u16>,
) -> Vec<(ListenerQueue, Option<String>)> {
    let on_ports: Vec<_> = all
        .iter()
        .filter(|(l, _)| ports.contains(&l.port))
        .cloned()
        .collect();
    if !on_ports.is_empty() {
        return on_ports;
    }
    let full: Vec<_> = all.iter().filter(|(l, _)| l.full()).cloned().collect();
    if !full.is_empty() {
        return full;
    }
    all.iter()
        .filter(|(l, _)| l.queued > 0)
        .max_by_key(|(l, _)| u64::from(l.queued) * 1000 / u64::from(l.backlog.max(1)))
        .cloned()
        .into_iter()
        .collect()
}

/// How long a socket sits in CLOSE_WAIT before that is called a leak: far longer than any
/// application takes to close() after reading EOF, shorter than an engineer's patience.
pub const CLOSE_WAIT_LEAK_NS: u64 = 10_000_000_000;

/// Sockets of one namespace that have sat in one state for long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lingering {
    pub netns: u32,
    pub sockets: u64,
    pub oldest_ns: u64,
    /// `comm[pid]` of the holders, most sockets first.
    pub processes: Vec<String>,
}

pub trait SocketView {
    /// Sockets towards `daddr:dport` now, and how many of them are in TIME_WAIT.
    fn towards(&self, netns: u32, daddr: IpAddr, dport: u16) -> (u64, u64);
    fn count(&self, state: u8) -> u64;
    /// Per namespace, the sockets in `state` for `min_age_ns` or more at `now_ns`.
    fn lingering(&self, _state: u8, _min_age_ns: u64, _now_ns: u64) -> Vec<Lingering> {
        Vec::new()
    }
    /// Listeners of `netns` and their accept queues as last listed, with the process.
    fn listeners(&self, _netns: u32) -> Vec<(ListenerQueue, Option<String>)> {
        Vec::new()
    }
}

impl Signals {
    /// An engine for a trace with these features (a trace that does not say has them all).
    pub fn new(features: &KernelFeatures) -> Self {
        Self {
            paws_listed: 0,
            paws_suppressed: 0,
            nat: HashMap::new(),
            nat_reported: HashSet::new(),
            synack: BTreeMap::new(),
            overflow_acks: BTreeMap::new(),
            no_timewait: BTreeMap::new(),
            exhaustion: BTreeMap::new(),
            netfilter_drops: BTreeMap::new(),
            conntrack_near_full: HashSet::new(),
            timewait_seen: features.has(Feature::TimeWait),
        }
    }

    /// Looks at one event; returns alerts that must be shown at once (PAWS rejects).
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Alert>) {
        match ev {
            Event::Drop(d) if d.reason.is_paws() => self.paws(d, out),
            Event::Drop(d) if d.reason == DropReason::ListenOverflow => {
                let e = self.overflow_acks.entry(d.netns).or_default();
                e.0 += 1;
                e.1.insert(d.dport);
            }
            Event::Drop(d) if d.reason == DropReason::NetfilterDrop => {
                let e = self.netfilter_drops.entry(d.netns).or_default();
                if e.len() < 5 {
                    e.insert(endpoint(d.saddr, d.sport));
                }
            }
            Event::Drop(_) => {}
            Event::SynackRetransmit(r) => {
                let e = self
                    .synack
                    .entry((r.netns, endpoint(r.laddr, r.lport)))
                    .or_default();
                e.count += 1;
                e.max_retransmits = e.max_retransmits.max(r.retransmits);
                if e.clients.len() < 5 {
                    e.clients.insert(endpoint(r.raddr, r.rport));
                }
            }
            Event::Transition(t) => self.transition(t),
            Event::ConntrackEnd(_) | Event::TimewaitReset(_) => {}
        }
    }

    /// Whether [`Signals::observe`] reads `t`'s process: only a connect() that found no
    /// local port is named by it (the live views skip completing the others').
    pub fn reads_owner(t: &Transition) -> bool {
        t.old == state::SYN_SENT && t.new == state::CLOSE && !t.timewait && t.sport == 0
    }

    fn transition(&mut self, t: &Transition) {
        if t.new != state::CLOSE || t.timewait {
            return;
        }
        match t.old {
            // The closing socket found no timewait socket to hand over to.
            state::FIN_WAIT2 | state::CLOSING => *self.no_timewait.entry(t.netns).or_default() += 1,
            // connect() gave up before a local port was bound: EADDRNOTAVAIL.
            state::SYN_SENT if t.sport == 0 => {
                let e = self
                    .exhaustion
                    .entry((t.netns, t.daddr, t.dport))
                    .or_default();
                e.failures += 1;
                if let Some(o) = &t.owner {
                    if e.processes.len() < 5 {
                        e.processes.insert(format!("{}[{}]", o.comm, o.pid));
                    }
                }
            }
            _ => {}
        }
    }

    fn paws(&mut self, d: &Drop, out: &mut Vec<Alert>) {
        if d.is_syn() || d.reason == DropReason::TwPaws {
            let e = self.nat.entry((d.netns, d.saddr)).or_default();
            e.rejections += 1;
            e.ports.insert(d.sport);
            if let Some(delta) = d.ts_delta() {
                e.max_delta = e.max_delta.max(delta.abs());
            }
        }
        if self.paws_listed >= PAWS_PER_INTERVAL {
            self.paws_suppressed += 1;
            return;
        }
        self.paws_listed += 1;
        out.push(Alert::PawsReject {
            netns: d.netns,
            reason: d.reason.name(),
            saddr: d.saddr.to_string(),
            sport: d.sport,
            daddr: d.daddr.to_string(),
            dport: d.dport,
            flags: d.flags_text(),
            tsval: d.tsval,
            tsecr: d.tsecr,
            ts_recent: d.ts_recent,
            ts_delta: d.ts_delta(),
            suppressed: 0,
        });
    }

    /// Ends the interval: the alerts its evidence and counter deltas support.
    /// Alerts on what sockets are doing at the end of an interval rather than on what
    /// happened in it: CLOSE_WAIT held for long.
    pub fn lingering(&self, sockets: &dyn SocketView, now_ns: u64) -> Vec<Alert> {
        sockets
            .lingering(state::CLOSE_WAIT, CLOSE_WAIT_LEAK_NS, now_ns)
            .into_iter()
            .map(|l| Alert::CloseWaitLeak {
                netns: l.netns,
                sockets: l.sockets,
                oldest_ns: l.oldest_ns,
                processes: l.processes,
            })
            .collect()
    }

    pub fn end_interval(
        &mut self,
        env: &HashMap<u32, Environment>,
        sockets: &dyn SocketView,
    ) -> Vec<Alert> {
        let none = Environment::default();
        let env_of = |ns: u32| env.get(&ns).unwrap_or(&none);
        let mut out = Vec::new();
        if self.paws_suppressed > 0 {
            out.push(Alert::PawsReject {
                netns: 0,
                reason: "more",
                saddr: String::new(),
                sport: 0,
                daddr: String::new(),
                dport: 0,
                flags: String::new(),
                tsval: None,
                tsecr: None,
                ts_recent: None,
                ts_delta: None,
                suppressed: self.paws_suppressed,
            });
        }
        for (&(netns, addr), e) in &self.nat {
            let evidence = e.ports.len() >= 2 || e.max_delta >= FOREIGN_CLOCK_DELTA;
            if evidence && self.nat_reported.insert((netns, addr)) {
                out.push(Alert::NatSuspected {
                    netns,
                    addr: addr.to_string(),
                    rejections: e.rejections,
                    ports: e.ports.iter().copied().collect(),
                    max_ts_delta: e.max_delta,
                    knobs: env_of(netns).knobs(&[
                        "net.ipv4.tcp_timestamps",
                        "net.ipv4.tcp_tw_reuse",
                        "net.ipv4.tcp_tw_recycle",
                    ]),
                });
            }
        }
        for ((netns, listener), e) in std::mem::take(&mut self.synack) {
            out.push(Alert::SynackRetransmits {
                netns,
                listener,
                count: e.count,
                clients: e.clients.into_iter().collect(),
                max_retransmits: e.max_retransmits,
                knobs: env_of(netns)
                    .knobs(&["net.ipv4.tcp_synack_retries", "net.ipv4.tcp_syncookies"]),
            });
        }
        let mut overflow_ns: BTreeSet<u32> = self.overflow_acks.keys().copied().collect();
        overflow_ns.extend(
            env.iter()
                .filter(|(_, e)| e.listen_overflowed())
                .map(|(ns, _)| *ns),
        );
        for netns in overflow_ns {
            let (acks, ports) = self.overflow_acks.remove(&netns).unwrap_or_default();
            let e = env_of(netns);
            let somaxconn = e
                .knobs(&["net.core.somaxconn"])
                .values()
                .next()
                .and_then(|v| v.trim().parse().ok());
            let listeners = overflowing_listeners(&sockets.listeners(netns), &ports)
                .into_iter()
                .map(|(l, p)| l.describe(somaxconn, p.as_deref()))
                .collect();
            out.push(Alert::ListenOverflow {
                netns,
                ports: ports.into_iter().collect(),
                listeners,
                dropped_final_acks: acks,
                listen_overflows: e.delta("ListenOverflows"),
                listen_drops: e.delta("ListenDrops"),
                req_queue_full_drops: e.delta("TCPReqQFullDrop"),
                req_queue_full_cookies: e.delta(SYN_QUEUE_COOKIES),
                knobs: e.knobs(&[
                    "net.core.somaxconn",
                    "net.ipv4.tcp_max_syn_backlog",
                    "net.ipv4.tcp_syncookies",
                ]),
            });
        }
        let mut no_timewait = std::mem::take(&mut self.no_timewait);
        let mut tw_ns: BTreeSet<u32> = no_timewait.keys().copied().collect();
        tw_ns.extend(env.keys().copied());
        for netns in tw_ns {
            let e = env_of(netns);
            let counter = e.delta("TCPTimeWaitOverflow");
            let closed = no_timewait.remove(&netns).unwrap_or(0);
            let Some(closed) = timewait_evidence(self.timewait_seen, closed, counter) else {
                continue;
            };
            out.push(Alert::TimewaitOverflow {
                netns,
                closed_without_timewait: closed,
                tcp_timewait_overflow: counter,
                time_wait_now: self.timewait_seen.then(|| sockets.count(state::TIME_WAIT)),
                knobs: e.knobs(&["net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_tw_reuse"]),
            });
        }
        for ((netns, daddr, dport), e) in std::mem::take(&mut self.exhaustion) {
            let (in_use, tw) = sockets.towards(netns, daddr, dport);
            out.push(Alert::PortExhaustion {
                netns,
                daddr: daddr.to_string(),
                dport,
                failures: e.failures,
                processes: e.processes.into_iter().collect(),
                ports_in_use: in_use,
                time_wait_to_destination: self.timewait_seen.then_some(tw),
                knobs: env_of(netns)
                    .knobs(&["net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse"]),
            });
        }
        for (&netns, e) in env {
            let Some(ct) = &e.conntrack else { continue };
            let near_full = match (ct.count, ct.max) {
                (Some(c), Some(m)) if m > 0 => c as f64 >= CONNTRACK_FULL_RATIO * m as f64,
                _ => false,
            };
            let newly_full = near_full && self.conntrack_near_full.insert(netns);
            if !near_full {
                self.conntrack_near_full.remove(&netns);
            }
            if newly_full || ct.table_full_drops > 0 || ct.early_drops > 0 {
                out.push(Alert::ConntrackFull {
                    netns,
                    count: ct.count,
                    max: ct.max,
                    table_full_drops: ct.table_full_drops,
                    early_drops: ct.early_drops,
                    dropped_from: self
                        .netfilter_drops
                        .remove(&netns)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    knobs: e.knobs(&[
                        "net.netfilter.nf_conntrack_max",
                        "net.netfilter.nf_conntrack_buckets",
                        "net.netfilter.nf_conntrack_tcp_timeout_established",
                    ]),
                });
            }
        }
        self.netfilter_drops.clear();
        self.paws_listed = 0;
        self.paws_suppressed = 0;
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::event::{Family, Owner};

    /// An alert of every kind, as the engine raises them: what the catalogue and the views
    /// are tested against.
    #[test]
    fn close_wait_held_for_long_is_an_alert_naming_the_holder() {
        struct Held;
        impl SocketView for Held {
            fn towards(&self, _: u32, _: IpAddr, _: u16) -> (u64, u64) {
                (0, 0)
            }
            fn count(&self, _: u8) -> u64 {
                0
            }
            fn lingering(&self, st: u8, min_age_ns: u64, _: u64) -> Vec<Lingering> {
                assert_eq!((st, min_age_ns), (state::CLOSE_WAIT, CLOSE_WAIT_LEAK_NS));
                vec![Lingering {
                    netns: 9,
                    sockets: 200,
                    oldest_ns: 27_000_000_000,
                    processes: vec!["python3[8286]".into()],
                }]
            }
        }
        let alerts = Signals::default().lingering(&Held, 0);
        assert_eq!(alerts.len(), 1);
        let text = alerts[0].text();
        assert!(
            text.contains("200 sockets in CLOSE_WAIT for 10 s or more")
                && text.contains("held by python3[8286]"),
            "{text}"
        );
    }

    pub(crate) fn one_of_each() -> Vec<Alert> {
        let knobs = |pairs: &[(&'static str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        vec![
            Alert::PawsReject {
                netns: 9,
                reason: "TW_PAWS",
                saddr: "198.51.100.7".into(),
                sport: 40000,
                daddr: "10.0.0.2".into(),
                dport: 80,
                flags: "S".into(),
                tsval: Some(600_000_000),
                tsecr: Some(0),
                ts_recent: Some(1_000_000_000),
                ts_delta: Some(-400_000_000),
                suppressed: 0,
            },
            Alert::NatSuspected {
                netns: 9,
                addr: "198.51.100.7".into(),
                rejections: 3,
                ports: vec![40000, 40001],
                max_ts_delta: 400_000_000,
                knobs: knobs(&[("net.ipv4.tcp_timestamps", "1")]),
            },
            Alert::SynackRetransmits {
                netns: 9,
                listener: "10.0.0.2:80".into(),
                count: 4,
                clients: vec!["10.0.0.1:40000".into()],
                max_retransmits: 1,
                knobs: knobs(&[("net.ipv4.tcp_synack_retries", "5")]),
            },
            Alert::ListenOverflow {
                netns: 9,
                ports: vec![8080],
                listeners: vec!["10.0.0.2:8080 (python3[42]) accept queue 3/2 (full)".into()],
                dropped_final_acks: 2,
                listen_overflows: 27,
                listen_drops: 27,
                req_queue_full_drops: 0,
                req_queue_full_cookies: 0,
                knobs: knobs(&[("net.core.somaxconn", "4096")]),
            },
            Alert::TimewaitOverflow {
                netns: 9,
                closed_without_timewait: Some(5),
                tcp_timewait_overflow: 3,
                time_wait_now: Some(4),
                knobs: knobs(&[("net.ipv4.tcp_max_tw_buckets", "4")]),
            },
            Alert::ConntrackFull {
                netns: 9,
                count: Some(64),
                max: Some(64),
                table_full_drops: 7,
                early_drops: 0,
                dropped_from: vec!["10.0.0.1:40000".into()],
                knobs: knobs(&[("net.netfilter.nf_conntrack_max", "64")]),
            },
            Alert::PortExhaustion {
                netns: 9,
                daddr: "10.0.0.2".into(),
                dport: 5774,
                failures: 5,
                processes: vec!["appA[42]".into()],
                ports_in_use: 28000,
                time_wait_to_destination: Some(27990),
                knobs: knobs(&[("net.ipv4.ip_local_port_range", "32768\t61000")]),
            },
            Alert::CloseWaitLeak {
                netns: 9,
                sockets: 200,
                oldest_ns: 27_000_000_000,
                processes: vec!["python3[8286]".into()],
            },
        ]
    }

    struct View {
        tw: u64,
    }
    impl SocketView for View {
        fn towards(&self, _: u32, _: IpAddr, _: u16) -> (u64, u64) {
            (28000, 27990)
        }
        fn count(&self, _: u8) -> u64 {
            self.tw
        }
    }

    fn syn_drop(sport: u16, delta: i64) -> Event {
        Event::Drop(Drop {
            mono_ns: 1,
            reason: DropReason::TwPaws,
            netns: 9,
            family: Family::Ipv4,
            saddr: "198.51.100.7".parse().unwrap(),
            sport,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 80,
            tcp_flags: 0x02,
            tsval: Some((1_000_000_000i64 + delta) as u32),
            tsecr: Some(0),
            ts_recent: Some(1_000_000_000),
        })
    }

    fn closing(old: u8, sport: u16) -> Event {
        Event::Transition(Transition {
            mono_ns: 1,
            sock_id: 1,
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            sport,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 5774,
            old,
            new: state::CLOSE,
            dwell_ns: Some(1),
            netns: 9,
            timewait: false,
            synack_retransmits: None,
            accept_wait_ns: None,
            owner: Some(Owner {
                pid: 42,
                comm: "appA".into(),
                container: None,
            }),
            cgroup: 0,
            container: None,
        })
    }

    fn env() -> HashMap<u32, Environment> {
        let mut e = Environment::default();
        e.deltas.insert("TCPTimeWaitOverflow", 3);
        e.sysctls.insert("net.ipv4.tcp_max_tw_buckets", "4".into());
        e.sysctls.insert("net.ipv4.tcp_timestamps", "1".into());
        e.sysctls
            .insert("net.ipv4.ip_local_port_range", "32768\t61000".into());
        HashMap::from([(9, e)])
    }

    #[test]
    fn text_lines_name_severity_and_kind_and_give_advice_but_for_harmless_kinds() {
        for a in one_of_each() {
            let text = a.text();
            let kind = a.kind();
            assert!(
                text.starts_with(&format!(
                    "ALERT {} {}: {}",
                    kind.severity.as_str(),
                    kind.name,
                    a.message()
                )),
                "{text}"
            );
            let advised = text.contains(&format!("\n  what to change: {}\n", kind.advice));
            assert_eq!(advised, kind.name != "paws_reject", "{text}");
        }
    }

    #[test]
    fn paws_rejects_across_ports_name_the_nat_address_once() {
        let mut s = Signals::default();
        let mut now = Vec::new();
        s.observe(&syn_drop(40000, -400_000_000), &mut now);
        assert!(matches!(
            &now[0],
            Alert::PawsReject {
                ts_delta: Some(-400_000_000),
                ..
            }
        ));
        let alerts = s.end_interval(&env(), &View { tw: 0 });
        // One reject with a foreign clock already names the address.
        let nat: Vec<_> = alerts
            .iter()
            .filter(|a| matches!(a, Alert::NatSuspected { .. }))
            .collect();
        assert_eq!(nat.len(), 1);
        assert!(nat[0].message().contains("198.51.100.7"));
        s.observe(&syn_drop(40001, -5), &mut now);
        let again = s.end_interval(&env(), &View { tw: 0 });
        assert!(!again
            .iter()
            .any(|a| matches!(a, Alert::NatSuspected { .. })));
    }

    #[test]
    fn syn_cookies_at_a_full_syn_queue_are_a_listen_overflow_that_dropped_nothing() {
        let mut s = Signals::default();
        let mut e = Environment::default();
        e.deltas.insert(SYN_QUEUE_COOKIES, 40);
        e.sysctls.insert("net.ipv4.tcp_syncookies", "1".into());
        let alerts = s.end_interval(&HashMap::from([(9, e)]), &View { tw: 0 });
        let Some(
            a @ Alert::ListenOverflow {
                req_queue_full_cookies: 40,
                knobs,
                ..
            },
        ) = alerts.first()
        else {
            panic!("{alerts:?}");
        };
        assert_eq!(
            knobs.get("net.ipv4.tcp_syncookies").map(String::as_str),
            Some("1")
        );
        let m = a.message();
        assert!(
            m.contains("SYN queue full, 40 SYNs answered with SYN cookies"),
            "{m}"
        );
        assert!(
            !m.contains("refused") && !m.contains("ACKs dropped,"),
            "{m}"
        );
    }

    #[test]
    fn small_deltas_from_one_port_are_not_nat() {
        let mut s = Signals::default();
        let mut now = Vec::new();
        s.observe(&syn_drop(40000, -5), &mut now);
        let alerts = s.end_interval(&env(), &View { tw: 0 });
        assert!(!alerts
            .iter()
            .any(|a| matches!(a, Alert::NatSuspected { .. })));
    }

    #[test]
    fn paws_listing_is_capped_per_interval() {
        let mut s = Signals::default();
        let mut now = Vec::new();
        for p in 0..50 {
            s.observe(&syn_drop(1000 + p, -5), &mut now);
        }
        assert_eq!(now.len(), PAWS_PER_INTERVAL as usize);
        let alerts = s.end_interval(&env(), &View { tw: 0 });
        assert!(alerts
            .iter()
            .any(|a| matches!(a, Alert::PawsReject { suppressed: 30, .. })));
    }

    #[test]
    fn conntrack_full_names_fill_and_drops() {
        let mut s = Signals::default();
        let e = Environment {
            conntrack: Some(ConntrackEnv {
                count: Some(64),
                max: Some(64),
                table_full_drops: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let alerts = s.end_interval(&HashMap::from([(9, e)]), &View { tw: 0 });
        let a = alerts
            .iter()
            .find(|a| matches!(a, Alert::ConntrackFull { .. }))
            .unwrap();
        assert!(a.message().contains("64 of nf_conntrack_max 64"));
        assert!(a.message().contains("7 packets dropped"));
        // Still full without new drops: said already.
        let still = Environment {
            conntrack: Some(ConntrackEnv {
                count: Some(64),
                max: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(s
            .end_interval(&HashMap::from([(9, still)]), &View { tw: 0 })
            .is_empty());
        // A quiet table says nothing.
        let quiet = Environment {
            conntrack: Some(ConntrackEnv {
                count: Some(3),
                max: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(s
            .end_interval(&HashMap::from([(9, quiet)]), &View { tw: 0 })
            .is_empty());
    }

    #[test]
    fn timewait_overflow_and_port_exhaustion_are_aggregated() {
        let mut s = Signals::default();
        let mut now = Vec::new();
        for _ in 0..5 {
            s.observe(&closing(state::FIN_WAIT2, 40000), &mut now);
            s.observe(&closing(state::SYN_SENT, 0), &mut now);
        }
        assert!(now.is_empty());
        let alerts = s.end_interval(&env(), &View { tw: 4 });
        let tw = alerts
            .iter()
            .find(|a| matches!(a, Alert::TimewaitOverflow { .. }))
            .unwrap();
        assert!(matches!(
            tw,
            Alert::TimewaitOverflow {
                closed_without_timewait: Some(5),
                tcp_timewait_overflow: 3,
                time_wait_now: Some(4),
                ..
            }
        ));
        assert!(tw.message().contains("tcp_max_tw_buckets = 4"));
        let ex = alerts
            .iter()
            .find(|a| matches!(a, Alert::PortExhaustion { .. }))
            .unwrap();
        let Alert::PortExhaustion {
            failures,
            processes,
            ports_in_use,
            ..
        } = ex
        else {
            unreachable!()
        };
        assert_eq!((*failures, *ports_in_use), (5, 28000));
        assert_eq!(processes, &vec!["appA[42]".to_string()]);
        assert!(ex.message().contains("10.0.0.2:5774"));
        // Evidence does not leak into the next interval.
        assert!(s.end_interval(&HashMap::new(), &View { tw: 0 }).is_empty());
    }

    /// A kernel whose timewait sockets netwatch cannot see (6.1 and 6.12 as measured).
    fn timewait_hidden() -> KernelFeatures {
        let mut f = KernelFeatures::all("tp_btf");
        for s in f.0.iter_mut().filter(|s| s.feature == Feature::TimeWait) {
            s.available = false;
            s.detail = "kmem_cache_alloc's arguments are not readable by tp_btf here".into();
        }
        f
    }

    /// Five active closes in namespace 9, none with a timewait record.
    fn five_closes(s: &mut Signals) {
        let mut now = Vec::new();
        for _ in 0..5 {
            s.observe(&closing(state::FIN_WAIT2, 40000), &mut now);
        }
        assert!(now.is_empty());
    }

    fn with_overflow(delta: u64) -> HashMap<u32, Environment> {
        let mut e = env();
        e.get_mut(&9)
            .unwrap()
            .deltas
            .insert("TCPTimeWaitOverflow", delta);
        e
    }

    fn timewait_alerts(alerts: &[Alert]) -> Vec<&Alert> {
        alerts
            .iter()
            .filter(|a| matches!(a, Alert::TimewaitOverflow { .. }))
            .collect()
    }

    #[test]
    fn closes_without_timewait_are_no_evidence_where_timewait_is_not_seen() {
        let mut s = Signals::new(&timewait_hidden());
        five_closes(&mut s);
        let alerts = s.end_interval(&with_overflow(0), &View { tw: 0 });
        assert!(timewait_alerts(&alerts).is_empty(), "{alerts:?}");
        // The kernel's own counter is evidence on any kernel; the closes are still not.
        five_closes(&mut s);
        let alerts = s.end_interval(&with_overflow(3), &View { tw: 7 });
        let tw = timewait_alerts(&alerts);
        assert_eq!(tw.len(), 1, "{alerts:?}");
        assert!(matches!(
            tw[0],
            Alert::TimewaitOverflow {
                closed_without_timewait: None,
                tcp_timewait_overflow: 3,
                time_wait_now: None,
                ..
            }
        ));
        assert_eq!(
            tw[0].message(),
            "TIME_WAIT bucket overflow: TCPTimeWaitOverflow +3 (which connections closed \
             without TIME_WAIT is not visible on this kernel); net.ipv4.tcp_max_tw_buckets = 4 \
             (TCPTimeWaitOverflow counts every port of the namespace)"
        );
        let json = serde_json::to_value(tw[0]).unwrap();
        assert!(json["closed_without_timewait"].is_null(), "{json}");
    }

    #[test]
    fn closes_without_timewait_alone_are_no_evidence_even_where_timewait_is_seen() {
        // Under churn a trace that starts mid-close misses a few hand-overs: the kernel's
        // counter, +0 here, decides.
        let mut s = Signals::new(&KernelFeatures::all("tp_btf"));
        five_closes(&mut s);
        let alerts = s.end_interval(&with_overflow(0), &View { tw: 2 });
        assert!(timewait_alerts(&alerts).is_empty(), "{alerts:?}");
        five_closes(&mut s);
        let alerts = s.end_interval(&with_overflow(2), &View { tw: 2 });
        assert!(matches!(
            timewait_alerts(&alerts)[..],
            [Alert::TimewaitOverflow {
                closed_without_timewait: Some(5),
                tcp_timewait_overflow: 2,
                ..
            }]
        ));
    }

    /// Counter-based alerts say their counter covers every port: under `--port` they
    /// would otherwise read as that port's trouble.
    #[test]
    fn counter_based_alerts_say_their_counters_are_namespace_wide() {
        let listen = Alert::ListenOverflow {
            netns: 1,
            ports: vec![],
            listeners: vec![],
            dropped_final_acks: 0,
            listen_overflows: 5,
            listen_drops: 5,
            req_queue_full_drops: 0,
            req_queue_full_cookies: 0,
            knobs: BTreeMap::new(),
        };
        let conntrack = Alert::ConntrackFull {
            netns: 1,
            count: Some(10),
            max: Some(10),
            table_full_drops: 3,
            early_drops: 0,
            dropped_from: vec![],
            knobs: BTreeMap::new(),
        };
        for a in [&listen, &conntrack] {
            assert!(a.message().contains("every port"), "{}", a.message());
        }
        let synack = Alert::SynackRetransmits {
            netns: 1,
            listener: "10.0.0.1:80".into(),
            count: 2,
            clients: vec![],
            max_retransmits: 1,
            knobs: BTreeMap::new(),
        };
        assert!(!synack.message().contains("every port"));
    }

    #[test]
    fn the_timewait_rule_needs_evidence() {
        // (timewait seen, closes without one, TCPTimeWaitOverflow) -> alert with what.
        assert_eq!(timewait_evidence(false, 5, 0), None);
        assert_eq!(timewait_evidence(false, 5, 3), Some(None));
        assert_eq!(timewait_evidence(false, 0, 3), Some(None));
        assert_eq!(timewait_evidence(true, 5, 0), None);
        assert_eq!(timewait_evidence(true, 5, 1), Some(Some(5)));
        assert_eq!(timewait_evidence(true, 0, 3), Some(Some(0)));
        assert_eq!(timewait_evidence(true, 0, 0), None);
    }

    #[test]
    fn port_exhaustion_does_not_count_unseen_timewait_sockets() {
        let mut s = Signals::new(&timewait_hidden());
        let mut now = Vec::new();
        s.observe(&closing(state::SYN_SENT, 0), &mut now);
        let alerts = s.end_interval(&env(), &View { tw: 0 });
        let ex = alerts
            .iter()
            .find(|a| matches!(a, Alert::PortExhaustion { .. }))
            .unwrap();
        assert!(matches!(
            ex,
            Alert::PortExhaustion {
                time_wait_to_destination: None,
                ..
            }
        ));
        assert!(
            ex.message()
                .contains("(TIME_WAIT not visible on this kernel)"),
            "{}",
            ex.message()
        );
    }
}
