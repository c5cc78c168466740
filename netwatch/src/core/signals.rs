//! Incident signals: turns drops, SYN-ACK retransmits, odd transitions and counter deltas
//! into named alerts with their evidence and the knobs that matter. Each alert is one of the
//! failure stories on-call engineers meet (TIME_WAIT pile-ups, NATed clients rejected by
//! PAWS, SYN backlog trouble, port exhaustion).
//!
//! Per-event evidence is only counted here; alerts come out once per interval (PAWS rejects
//! at once, capped), so a storm cannot turn into a storm of output.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use netwatch_common::state;
use serde::Serialize;

use super::conntrack::ConntrackEnv;
use super::event::{Drop, DropReason, Event, Transition};

/// Fill level of the conntrack table that is worth an alert before it overflows.
const CONNTRACK_FULL_RATIO: f64 = 0.9;

/// PAWS rejects reported one by one per interval; beyond this they are only counted.
const PAWS_PER_INTERVAL: u32 = 20;
/// |TSval - ts_recent| above this cannot be one client's clock moving on (at 1 kHz it would
/// take 28 hours): a different host behind the same address.
const FOREIGN_CLOCK_DELTA: i64 = 100_000_000;

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
        dropped_final_acks: u64,
        listen_overflows: u64,
        listen_drops: u64,
        req_queue_full_drops: u64,
        knobs: BTreeMap<&'static str, String>,
    },
    /// Connections closed without a TIME_WAIT socket: `tcp_max_tw_buckets` was reached.
    TimewaitOverflow {
        netns: u32,
        closed_without_timewait: u64,
        tcp_timewait_overflow: u64,
        time_wait_now: u64,
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
    /// connect() failed for want of a free local port (EADDRNOTAVAIL).
    PortExhaustion {
        netns: u32,
        daddr: String,
        dport: u16,
        failures: u64,
        processes: Vec<String>,
        /// Local sockets tied up towards this destination now, TIME_WAIT included.
        ports_in_use: u64,
        time_wait_to_destination: u64,
        knobs: BTreeMap<&'static str, String>,
    },
}

impl Alert {
    /// One line for people: what happened, with the endpoint and the knob to look at.
    pub fn message(&self) -> String {
        match self {
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
                dropped_final_acks,
                listen_overflows,
                listen_drops,
                ..
            } => format!(
                "listen queue overflow{}: {dropped_final_acks} final ACKs dropped, \
                 ListenOverflows +{listen_overflows}, ListenDrops +{listen_drops} - the \
                 application accepts too slowly or its backlog is small (net.core.somaxconn, \
                 listen() backlog, net.ipv4.tcp_max_syn_backlog)",
                if ports.is_empty() {
                    String::new()
                } else {
                    format!(" on port {ports:?}")
                }
            ),
            Alert::TimewaitOverflow {
                closed_without_timewait,
                tcp_timewait_overflow,
                time_wait_now,
                knobs,
                ..
            } => format!(
                "TIME_WAIT bucket overflow: {closed_without_timewait} connections closed \
                 without TIME_WAIT (TCPTimeWaitOverflow +{tcp_timewait_overflow}); {time_wait_now} \
                 in TIME_WAIT of net.ipv4.tcp_max_tw_buckets = {}",
                knobs
                    .get("net.ipv4.tcp_max_tw_buckets")
                    .map(String::as_str)
                    .unwrap_or("?")
            ),
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
                 failures (EADDRNOTAVAIL){}; {ports_in_use} local ports in use to it \
                 ({time_wait_to_destination} in TIME_WAIT) of net.ipv4.ip_local_port_range {}",
                if processes.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", processes.join(", "))
                },
                knobs
                    .get("net.ipv4.ip_local_port_range")
                    .map(String::as_str)
                    .unwrap_or("?")
            ),
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
#[derive(Debug, Default)]
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
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// What the engine needs to know of the live sockets when it reports.
pub trait SocketView {
    /// Sockets towards `daddr:dport` now, and how many of them are in TIME_WAIT.
    fn towards(&self, daddr: IpAddr, dport: u16) -> (u64, u64);
    fn count(&self, state: u8) -> u64;
}

impl Signals {
    pub fn new() -> Self {
        Self::default()
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
            Event::ConntrackEnd(_) => {}
        }
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
                .filter(|(_, e)| e.delta("ListenOverflows") + e.delta("ListenDrops") > 0)
                .map(|(ns, _)| *ns),
        );
        for netns in overflow_ns {
            let (acks, ports) = self.overflow_acks.remove(&netns).unwrap_or_default();
            let e = env_of(netns);
            out.push(Alert::ListenOverflow {
                netns,
                ports: ports.into_iter().collect(),
                dropped_final_acks: acks,
                listen_overflows: e.delta("ListenOverflows"),
                listen_drops: e.delta("ListenDrops"),
                req_queue_full_drops: e.delta("TCPReqQFullDrop"),
                knobs: e.knobs(&["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]),
            });
        }
        let mut tw_ns: BTreeSet<u32> = self.no_timewait.keys().copied().collect();
        tw_ns.extend(
            env.iter()
                .filter(|(_, e)| e.delta("TCPTimeWaitOverflow") > 0)
                .map(|(ns, _)| *ns),
        );
        for netns in tw_ns {
            let e = env_of(netns);
            out.push(Alert::TimewaitOverflow {
                netns,
                closed_without_timewait: self.no_timewait.remove(&netns).unwrap_or(0),
                tcp_timewait_overflow: e.delta("TCPTimeWaitOverflow"),
                time_wait_now: sockets.count(state::TIME_WAIT),
                knobs: e.knobs(&["net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_tw_reuse"]),
            });
        }
        for ((netns, daddr, dport), e) in std::mem::take(&mut self.exhaustion) {
            let (in_use, tw) = sockets.towards(daddr, dport);
            out.push(Alert::PortExhaustion {
                netns,
                daddr: daddr.to_string(),
                dport,
                failures: e.failures,
                processes: e.processes.into_iter().collect(),
                ports_in_use: in_use,
                time_wait_to_destination: tw,
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
mod tests {
    use super::*;
    use crate::core::event::{Family, Owner};

    struct View {
        tw: u64,
    }
    impl SocketView for View {
        fn towards(&self, _: IpAddr, _: u16) -> (u64, u64) {
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
            }),
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
    fn paws_rejects_across_ports_name_the_nat_address_once() {
        let mut s = Signals::new();
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
    fn small_deltas_from_one_port_are_not_nat() {
        let mut s = Signals::new();
        let mut now = Vec::new();
        s.observe(&syn_drop(40000, -5), &mut now);
        let alerts = s.end_interval(&env(), &View { tw: 0 });
        assert!(!alerts
            .iter()
            .any(|a| matches!(a, Alert::NatSuspected { .. })));
    }

    #[test]
    fn paws_listing_is_capped_per_interval() {
        let mut s = Signals::new();
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
        let mut s = Signals::new();
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
        let mut s = Signals::new();
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
                closed_without_timewait: 5,
                tcp_timewait_overflow: 3,
                time_wait_now: 4,
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
}
