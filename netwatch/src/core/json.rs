//! Writing the JSON Lines trace: the records of [`super::record`] built from the engine's
//! events and views (and, for the replay, the few conversions back), and put on a line. Transitions, the per-record cost of a trace at
//! hundreds of thousands a second, have a hand-written serializer ([`write_transition`])
//! held byte-equal to the serde form of [`TransitionJson`] by a test.

use std::borrow::Cow;
use std::collections::BTreeMap;

use netwatch_common::state;

use crate::features::KernelFeatures;

use super::{
    clock::WallClock,
    early_ends::Tuple,
    event::{TimewaitReset, Transition},
    record::{
        AlertEvidence, AlertJson, BucketJson, ConntrackJson, PercentilesJson, Record, RecordCounts,
        SnapshotJson, SummaryJson, TimewaitResetJson, TransitionJson,
    },
    signals::Alert,
    snapshot::{Bucket, ConntrackStats, Percentiles, Snapshot},
};

impl TimewaitResetJson {
    pub fn new(r: &TimewaitReset, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(r.mono_ns),
            mono_ns: r.mono_ns,
            netns: r.tuple.netns,
            saddr: r.tuple.laddr,
            sport: r.tuple.lport,
            daddr: r.tuple.raddr,
            dport: r.tuple.rport,
        }
    }

    pub fn to_event(&self) -> TimewaitReset {
        TimewaitReset {
            mono_ns: self.mono_ns,
            tuple: Tuple {
                netns: self.netns,
                laddr: self.saddr,
                lport: self.sport,
                raddr: self.daddr,
                rport: self.dport,
            },
        }
    }
}

impl From<Bucket> for BucketJson {
    fn from(b: Bucket) -> Self {
        Self {
            upper_ns: b.upper_ns,
            count: b.count,
        }
    }
}

/// What the summary needs besides the engine's view.
#[derive(Debug, Clone, Copy)]
pub struct SummaryTotals {
    pub stopped_by: &'static str,
    pub start_mono_ns: u64,
    pub records: RecordCounts,
    pub lost_records: u64,
    pub undecodable: u64,
}

impl SummaryJson {
    /// From the engine's view at the end (its `lost` is ignored for `totals`').
    pub fn new(
        s: &Snapshot,
        clock: WallClock,
        totals: SummaryTotals,
        alerts: BTreeMap<String, u64>,
        kernel_features: KernelFeatures,
    ) -> Self {
        let mut out = Self {
            ts: clock.rfc3339(s.mono_ns),
            mono_ns: s.mono_ns,
            stopped_by: totals.stopped_by.into(),
            duration_ns: s.mono_ns.saturating_sub(totals.start_mono_ns),
            records: totals.records,
            transitions: s.transitions,
            states: BTreeMap::new(),
            dwell: BTreeMap::new(),
            histogram: BTreeMap::new(),
            age: BTreeMap::new(),
            alerts,
            lost: totals.lost_records + totals.undecodable,
            lost_records: totals.lost_records,
            undecodable: totals.undecodable,
            output_dropped: 0,
            skipped_runs: 0,
            kernel_features,
            timewait_early_ends: Some(s.timewait_early_ends),
        };
        for st in reported_states() {
            let name = Cow::Borrowed(state::name(st));
            let stats = s.state(st);
            out.states.insert(name.clone(), stats.now);
            if stats.dwell.count > 0 {
                out.dwell.insert(name.clone(), stats.dwell.into());
                out.histogram.insert(
                    name.clone(),
                    stats.buckets.iter().map(|&b| b.into()).collect(),
                );
            }
            if stats.age.count > 0 {
                out.age.insert(name, stats.age.into());
            }
        }
        out
    }
}

/// An alert's `kind`, as its record spells it.
pub fn alert_kind(alert: &Alert) -> String {
    alert.kind().name.to_owned()
}

impl<'a> AlertJson<'a> {
    pub fn new(alert: &'a Alert, mono_ns: u64, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(mono_ns),
            mono_ns,
            message: alert.message(),
            netns_name: None,
            evidence: AlertEvidence::Raised(alert),
        }
    }
}

impl From<Percentiles> for PercentilesJson {
    fn from(p: Percentiles) -> Self {
        Self {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

impl From<PercentilesJson> for Percentiles {
    fn from(p: PercentilesJson) -> Self {
        Self {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

impl From<&ConntrackStats> for ConntrackJson {
    fn from(c: &ConntrackStats) -> Self {
        Self {
            count: c.count,
            max: c.max,
            inserted: c.inserted,
            freed: c.freed,
            table_full_drops: c.table_full_drops,
            early_drops: c.early_drops,
            lifetime: c
                .lifetimes
                .iter()
                .map(|(k, p)| (Cow::Borrowed(*k), (*p).into()))
                .collect(),
            established_idle_over_1h: c.established_idle_over_1h,
            timeout_established_s: c.timeout_established_s,
            time_wait_entries: c.time_wait_entries,
            timeout_time_wait_s: c.timeout_time_wait_s,
        }
    }
}

/// The states a snapshot names: every real one (CLOSE is the absence of a socket).
pub fn reported_states() -> impl Iterator<Item = u8> {
    (1..state::COUNT as u8).filter(|&s| {
        !matches!(
            s,
            state::CLOSE | state::NEW_SYN_RECV | state::BOUND_INACTIVE
        )
    })
}

impl SnapshotJson {
    pub fn new(s: &Snapshot, clock: WallClock) -> Self {
        let mut out = Self {
            ts: clock.rfc3339(s.mono_ns),
            mono_ns: s.mono_ns,
            interval_ns: s.interval_ns,
            states: BTreeMap::new(),
            entered: BTreeMap::new(),
            dwell: BTreeMap::new(),
            age: BTreeMap::new(),
            transitions: s.transitions,
            lost: s.lost,
            conntrack: s.conntrack.as_ref().map(ConntrackJson::from),
            timewait_early_ends: Some(s.timewait_early_ends),
            accept_queued: s.accept_queued,
        };
        for st in reported_states() {
            let name = Cow::Borrowed(state::name(st));
            let stats = s.state(st);
            out.states.insert(name.clone(), stats.now);
            out.entered.insert(name.clone(), stats.entered);
            if stats.dwell.count > 0 {
                out.dwell.insert(name.clone(), stats.dwell.into());
            }
            if stats.age.count > 0 {
                out.age.insert(name, stats.age.into());
            }
        }
        out
    }
}

impl<'a> TransitionJson<'a> {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn new(t: &'a Transition, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(t.mono_ns),
            mono_ns: t.mono_ns,
            sock_id: t.sock_id,
            family: t.family.as_str().into(),
            saddr: t.saddr,
            sport: t.sport,
            daddr: t.daddr,
            dport: t.dport,
            old: t.old_name().into(),
            new: t.new_name().into(),
            dwell_ns: t.dwell_ns,
            netns: t.netns,
            cgroup: (t.cgroup != 0).then_some(t.cgroup),
            container: t.container.as_deref().map(Cow::Borrowed),
            synack_retransmits: t.synack_retransmits,
            accept_wait_ns: t.accept_wait_ns,
            pid: t.owner.as_ref().map(|o| o.pid),
            comm: t.owner.as_ref().map(|o| Cow::Borrowed(&*o.comm)),
            timewait: t.timewait,
        }
    }
}

/// Caches the date-and-time part of RFC 3339 stamps for the second being written, so a
/// burst of records in one second formats its date once.
#[derive(Debug, Default)]
pub struct TsCache {
    second: Option<i128>,
    prefix: Vec<u8>,
}

impl TsCache {
    /// Appends the stamp as `WallClock::rfc3339` writes it (fraction without trailing
    /// zeros, none when zero).
    pub fn write(&mut self, out: &mut Vec<u8>, clock: WallClock, mono_ns: u64) {
        let unix_ns = clock.unix_ns(mono_ns);
        let second = unix_ns.div_euclid(1_000_000_000);
        let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
        if self.second != Some(second) {
            let whole = clock.rfc3339_at_unix_ns(second * 1_000_000_000);
            self.prefix.clear();
            self.prefix
                .extend_from_slice(whole.trim_end_matches('Z').as_bytes());
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        if nanos != 0 {
            let digits = format_nanos(nanos);
            let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.push(b'.');
            out.extend_from_slice(&digits[..len]);
        }
        out.push(b'Z');
    }
}

fn format_nanos(mut n: u32) -> [u8; 9] {
    let mut d = [b'0'; 9];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    d
}

fn push_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    use std::io::Write as _;
    out.push(b'"');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{ip}");
    out.push(b'"');
}

/// Appends one transition record and its newline: the same bytes `write_line` produces for
/// `Record::Transition` (a test holds them equal), without building strings for the
/// timestamp and addresses. This is the per-record cost of a JSON trace, hence by hand.
pub fn write_transition(out: &mut Vec<u8>, t: &Transition, clock: WallClock, ts: &mut TsCache) {
    out.extend_from_slice(br#"{"type":"transition","ts":""#);
    ts.write(out, clock, t.mono_ns);
    out.extend_from_slice(br#"","mono_ns":"#);
    push_num(out, t.mono_ns);
    out.extend_from_slice(br#","sock_id":"#);
    push_num(out, t.sock_id);
    out.extend_from_slice(br#","family":""#);
    out.extend_from_slice(t.family.as_str().as_bytes());
    out.extend_from_slice(br#"","saddr":"#);
    push_ip(out, t.saddr);
    out.extend_from_slice(br#","sport":"#);
    push_num(out, t.sport);
    out.extend_from_slice(br#","daddr":"#);
    push_ip(out, t.daddr);
    out.extend_from_slice(br#","dport":"#);
    push_num(out, t.dport);
    out.extend_from_slice(br#","old":""#);
    out.extend_from_slice(t.old_name().as_bytes());
    out.extend_from_slice(br#"","new":""#);
    out.extend_from_slice(t.new_name().as_bytes());
    out.extend_from_slice(br#"","dwell_ns":"#);
    match t.dwell_ns {
        Some(d) => push_num(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","netns":"#);
    push_num(out, t.netns);
    if t.cgroup != 0 {
        out.extend_from_slice(br#","cgroup":"#);
        push_num(out, t.cgroup);
    }
    if let Some(c) = &t.container {
        out.extend_from_slice(br#","container":"#);
        // Unit names come from the file system: escape them properly.
        serde_json::to_writer(&mut *out, &**c).expect("serializing a string");
    }
    if let Some(n) = t.synack_retransmits {
        out.extend_from_slice(br#","synack_retransmits":"#);
        push_num(out, n);
    }
    if let Some(n) = t.accept_wait_ns {
        out.extend_from_slice(br#","accept_wait_ns":"#);
        push_num(out, n);
    }
    if let Some(o) = &t.owner {
        out.extend_from_slice(br#","pid":"#);
        push_num(out, o.pid);
        out.extend_from_slice(br#","comm":"#);
        // Command names are the process's to choose: escape them properly.
        serde_json::to_writer(&mut *out, &*o.comm).expect("serializing a string");
    }
    if t.timewait {
        out.extend_from_slice(br#","timewait":true"#);
    }
    out.extend_from_slice(b"}\n");
}

/// Appends one record and its newline to `out`.
pub fn write_line(out: &mut Vec<u8>, record: &Record<'_>) {
    // Serializing these plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, record).expect("serializing a trace record");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_transition_writer_matches_serde_byte_for_byte() {
        use crate::core::event::{Family, Owner};
        let clock = WallClock::with_offset(1_796_150_101_000_000_000);
        let base = {
            let Ok(Event::Transition(t)) = decode(&bytes_of(&raw_v4())) else {
                panic!()
            };
            t
        };
        let mut v6 = base.clone();
        v6.family = Family::Ipv6;
        v6.saddr = "fd00:231:5::1".parse().unwrap();
        v6.daddr = "::ffff:10.0.0.2".parse().unwrap();
        v6.dwell_ns = None;
        v6.timewait = true;
        let mut req = base.clone();
        req.synack_retransmits = Some(2);
        req.accept_wait_ns = Some(980_000_000);
        req.container = Some("we\"ird.service".into());
        req.cgroup = 0;
        req.owner = Some(Owner {
            pid: 42,
            comm: "we\"ird\\cmd\u{1}".into(),
            container: None,
        });
        let mut cache = TsCache::default();
        for (i, t) in [base, v6, req].iter().enumerate() {
            for mono in [0u64, 1, 1_000, 999_999_999, 1_000_000_000, 123_456_789_012] {
                let mut t = t.clone();
                t.mono_ns = mono + i as u64;
                let mut fast = Vec::new();
                write_transition(&mut fast, &t, clock, &mut cache);
                let mut slow = Vec::new();
                write_line(
                    &mut slow,
                    &Record::Transition(TransitionJson::new(&t, clock)),
                );
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    String::from_utf8(slow).unwrap()
                );
            }
        }
    }

    use super::*;
    use crate::core::decode::{
        decode,
        tests::{bytes_of, raw_v4},
    };
    use crate::core::event::Event;

    #[test]
    fn transition_json_has_the_documented_fields() {
        let Ok(Event::Transition(t)) = decode(&bytes_of(&raw_v4())) else {
            panic!()
        };
        let mut out = Vec::new();
        write_line(
            &mut out,
            &Record::Transition(TransitionJson::new(&t, WallClock::with_offset(0))),
        );
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000001Z");
        assert_eq!(v["mono_ns"], 1000);
        assert_eq!(v["sock_id"], 7);
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["saddr"], "10.0.0.1");
        assert_eq!(v["sport"], 40000);
        assert_eq!(v["daddr"], "10.0.0.2");
        assert_eq!(v["dport"], 80);
        assert_eq!(v["old"], "SYN_SENT");
        assert_eq!(v["new"], "ESTABLISHED");
        assert_eq!(v["dwell_ns"], 42);
        assert_eq!(v["netns"], 4026531840u64);
    }
}
