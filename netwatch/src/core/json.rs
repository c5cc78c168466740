//! The JSON Lines trace format: one object per line, told apart by `"type"`.
//!
//! These are the serde types of the format, deliberately separate from the kernel records:
//! the kernel layout can change without changing what users and tests parse.
//!
//! `"type":"transition"`: one TCP state change.
//! - `ts`: RFC 3339 UTC with nanoseconds; `mono_ns`: the kernel's CLOCK_MONOTONIC stamp.
//! - `sock_id`: the socket cookie, stable for the socket's whole life.
//! - `family`: `"ipv4"` or `"ipv6"`; `saddr`/`sport` the local end, `daddr`/`dport` the remote.
//!   The local port reads 0 at `CLOSE -> SYN_SENT`: the kernel picks it just after.
//! - `old`, `new`: kernel state names (`"SYN_SENT"`, `"FIN_WAIT2"`, `"TIME_WAIT"`, ...).
//! - `dwell_ns`: nanoseconds spent in `old`, `null` when netwatch did not see it begin.
//! - `netns`: inode of the socket's network namespace.
//! - `pid`, `comm`: the owning process where known: the caller of connect()/listen(), the
//!   accept()er of a server socket (carried on to that socket's later records), or the
//!   process holding a socket that existed at start.
//! - `timewait`: `true` when about a timewait socket, the object that replaces a socket in
//!   TIME_WAIT (and an orphan in FIN_WAIT2): its death is `"old":"TIME_WAIT","new":"CLOSE"`.
//! - Server-side SYN_RECV is the request socket's life, reported when the kernel frees it
//!   (at accept()): `"old":"SYN_RECV","new":"ESTABLISHED"` stamped when the final ACK made the
//!   child (or `"new":"CLOSE"` if none came), with `synack_retransmits` and `accept_wait_ns`
//!   (child created -> accept()). Records are written as they arrive, so sort by `mono_ns`
//!   for one socket's story.

//!
//! `"type":"snapshot"`: every `--interval`, the engine's view.
//! - `states`: sockets in each state now (every state, zeros included).
//! - `entered`: entries into each state during the interval (`interval_ns` long).
//! - `dwell`: per state with completed dwells since the start: `count`, `p50`, `p90`,
//!   `p99`, `max` in ns. `age`: the same over the sockets still in the state.
//! - `transitions`: records so far; `lost`: records the kernel could not send.
//!
//! `"type":"header"` ([`HeaderJson`]) opens every file of a trace and says, in
//! `kernel_features`, what the kernel let this trace see, `"type":"census"`
//! ([`CensusJson`]) lists the sockets that existed at start (first file only),
//! `"type":"part_end"` ([`PartEndJson`]) closes a file that the trace continues after
//! (`--max-size`), and `"type":"summary"` ([`SummaryJson`]) closes the trace. The whole format,
//! with examples, is in docs/trace-format.md; `netwatch schema` prints its JSON Schema
//! ([`SCHEMA`]), against which the tests validate real traces.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use netwatch_common::state;

use crate::features::KernelFeatures;

use super::{
    clock::WallClock,
    early_ends::{EarlyEnds, Tuple},
    event::{TimewaitReset, Transition},
    signals::Alert,
    snapshot::{Bucket, ConntrackStats, Percentiles, Snapshot},
};

/// The value of a header's `format`: tells a netwatch trace from other JSON Lines.
pub const FORMAT: &str = "netwatch-trace";
/// Version of the record layout. Adding a record type or an optional field keeps it; renaming,
/// removing or changing the meaning of anything bumps it, and `report` refuses other versions.
/// (`kernel_features` was added within version 1: a trace without it is read as having every
/// feature, which is what it claimed when it was written.)
pub const SCHEMA_VERSION: u32 = 1;
/// The JSON Schema (draft 2020-12) of every record of this version.
pub const SCHEMA: &str = include_str!("../../schema/trace.schema.json");

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Header(&'a HeaderJson),
    Census(CensusJson<'a>),
    /// The reference definition of the transition record; traces are written by
    /// `write_transition`, which a test holds byte-equal to it.
    #[cfg_attr(not(test), allow(dead_code))]
    Transition(TransitionJson<'a>),
    Snapshot(SnapshotJson),
    Alert(AlertJson<'a>),
    TimewaitReset(TimewaitResetJson),
    PartEnd(PartEndJson),
    Summary(&'a SummaryJson),
}

/// `"type":"timewait_reset"`: a RST reached a timewait socket (the socket's own addresses:
/// `saddr` is local). The kernel kills a TIME_WAIT socket on an in-window RST, so these are
/// the evidence for `timewait_early_ends.rst`. Added within schema version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimewaitResetJson {
    pub ts: String,
    pub mono_ns: u64,
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

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

/// `"type":"header"`: the first record of every file of a trace. Everything a reader needs to
/// interpret the rest without the machine: what wrote it, where, when, with which limits and
/// which filters.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderJson {
    /// When this file was begun, and its CLOCK_MONOTONIC stamp.
    pub ts: String,
    pub mono_ns: u64,
    /// Always [`FORMAT`].
    pub format: &'static str,
    pub schema_version: u32,
    pub netwatch_version: &'static str,
    /// Same in every file of one trace: how `report` knows the files belong together.
    pub run_id: String,
    /// 0 for the file named by `--output`, then 1, 2, ... (see docs/trace-format.md).
    pub part: u32,
    /// When tracing began (UTC) and its CLOCK_MONOTONIC stamp: `ts` of any record is
    /// `start + (mono_ns - start_mono_ns)`.
    pub start: String,
    pub start_mono_ns: u64,
    /// `uname -r` and `uname -n`.
    pub kernel: String,
    pub hostname: String,
    /// `--interval`: the spacing of snapshot records.
    pub interval_ns: u64,
    /// TCP and conntrack settings (dotted sysctl name -> value as the kernel prints it) of
    /// the namespace netwatch ran in; absent settings are left out.
    pub sysctls: BTreeMap<String, String>,
    /// The same for each traced namespace (`--netns`), keyed by its inode.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub netns_sysctls: BTreeMap<String, BTreeMap<String, String>>,
    /// Names of the namespaces that had one (`/run/netns`) when tracing began, keyed by
    /// inode: a report names `scn-srv`, not 4026532247. Added within schema version 1.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub netns_names: BTreeMap<String, String>,
    pub filters: FiltersJson,
    /// The command line.
    pub argv: Vec<String>,
    /// What this trace can see on this kernel: every feature of the catalogue
    /// ([`crate::features`]), available or not, with how or why not. Without it in the
    /// header, a reader would take an empty TIME_WAIT histogram for calm.
    pub kernel_features: KernelFeatures,
}

/// The filters a trace was recorded with: only matching connections are in it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FiltersJson {
    pub ports: Vec<u16>,
    pub addrs: Vec<String>,
    pub netns: Vec<u32>,
}

/// `"type":"census"`: a socket that existed when tracing began (sock_diag), one record each,
/// right after the first header. Its `age_ns` is known only for TIME_WAIT (from its timer).
#[derive(Debug, Serialize)]
pub struct CensusJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: &'a str,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub state: &'a str,
    pub age_ns: Option<u64>,
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
}

/// `"type":"part_end"`: the last record of a file after which the trace goes on in `next`.
#[derive(Debug, Serialize)]
pub struct PartEndJson {
    pub ts: String,
    pub mono_ns: u64,
    pub part: u32,
    /// File name (no directory) of the next part.
    pub next: String,
}

/// One bar of a dwell histogram: dwells of at most `upper_ns` (and above the previous bar).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BucketJson {
    pub upper_ns: u64,
    pub count: u64,
}

impl From<Bucket> for BucketJson {
    fn from(b: Bucket) -> Self {
        Self {
            upper_ns: b.upper_ns,
            count: b.count,
        }
    }
}

/// How many records of each type the whole trace holds (all parts).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RecordCounts {
    pub census: u64,
    pub transition: u64,
    pub alert: u64,
    pub snapshot: u64,
    /// Added within schema version 1: absent means 0.
    pub timewait_reset: u64,
}

/// `"type":"summary"`: the last record of a complete trace, written however tracing stopped
/// (Ctrl-C, SIGTERM, SIGHUP, `--duration`, `q`, a closed pipe, an error of the live view).
/// Totals since the start, the engine's final view, and why it stopped.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryJson {
    pub ts: String,
    pub mono_ns: u64,
    /// `sigint`, `sigterm`, `sighup`, `duration`, `quit`, `closed_pipe` or `error`.
    pub stopped_by: &'static str,
    /// From the header's `start_mono_ns` to this record.
    pub duration_ns: u64,
    pub records: RecordCounts,
    /// Transitions seen (all written to the trace).
    pub transitions: u64,
    /// Sockets in each state at the end (every reported state, zeros included).
    pub states: BTreeMap<&'static str, u64>,
    /// Completed dwells since the start per state: as in a snapshot.
    pub dwell: BTreeMap<&'static str, PercentilesJson>,
    /// The same dwells as histogram bars (empty bars left out), for plots.
    pub histogram: BTreeMap<&'static str, Vec<BucketJson>>,
    /// Ages of the sockets still in each state at the end.
    pub age: BTreeMap<&'static str, PercentilesJson>,
    /// Alert records by `kind`.
    pub alerts: BTreeMap<String, u64>,
    /// `lost_records + undecodable`, as `lost` in snapshots.
    pub lost: u64,
    /// Records the kernel could not send (ring buffer full).
    pub lost_records: u64,
    /// Records that arrived but could not be decoded.
    pub undecodable: u64,
    /// Records the trace's output could not take in time (a slow or absent reader of a FIFO,
    /// a stalled disk), dropped instead of holding up the tracer; `records` counts only those
    /// written. Added within schema version 1: absent means 0.
    pub output_dropped: u64,
    /// Runs of netwatch's programs the kernel skipped because one was already running on that
    /// CPU, nested deeper than the twin programs catch: each may have been a transition (or
    /// another record) that is missing. Added within schema version 1: absent means 0.
    pub skipped_runs: u64,
    /// As in the header: the last record alone (`tail -n1`) says what the trace could see.
    pub kernel_features: KernelFeatures,
    /// TIME_WAITs ended before their 60 s, by cause, over the whole trace (added within
    /// schema version 1: absent means none were classified).
    pub timewait_early_ends: EarlyEnds,
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
            stopped_by: totals.stopped_by,
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
            timewait_early_ends: s.timewait_early_ends,
        };
        for st in reported_states() {
            let name = state::name(st);
            let stats = s.state(st);
            out.states.insert(name, stats.now);
            if stats.dwell.count > 0 {
                out.dwell.insert(name, stats.dwell.into());
                out.histogram
                    .insert(name, stats.buckets.iter().map(|&b| b.into()).collect());
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

/// `"type":"alert"`: a named incident signal. `kind` is one of
/// [`ALL_KINDS`](crate::core::alert_catalogue::ALL_KINDS); its evidence fields follow (listed
/// per kind in the catalogue and docs/alerts.md), with `message` saying what it means and
/// `knobs` the sysctls that matter.
#[derive(Debug, Serialize)]
pub struct AlertJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub message: String,
    /// The name of the alert's namespace (`/run/netns`), where it has one: people know
    /// `scn-srv`, not 4026532247. Added within schema version 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

impl<'a> AlertJson<'a> {
    pub fn new(alert: &'a Alert, mono_ns: u64, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(mono_ns),
            mono_ns,
            message: alert.message(),
            netns_name: None,
            alert,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PercentilesJson {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
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

#[derive(Debug, Serialize)]
pub struct SnapshotJson {
    pub ts: String,
    pub mono_ns: u64,
    pub interval_ns: u64,
    pub states: BTreeMap<&'static str, u64>,
    pub entered: BTreeMap<&'static str, u64>,
    pub dwell: BTreeMap<&'static str, PercentilesJson>,
    pub age: BTreeMap<&'static str, PercentilesJson>,
    pub transitions: u64,
    pub lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackJson>,
    /// TIME_WAITs ended before their 60 s since the start, by cause (added within schema
    /// version 1).
    pub timewait_early_ends: EarlyEnds,
    /// Of `states.ESTABLISHED`, children waiting in listeners' accept queues (added within
    /// schema version 1).
    pub accept_queued: u64,
}

/// `conntrack` in a snapshot: see [`ConntrackStats`].
#[derive(Debug, Serialize)]
pub struct ConntrackJson {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub inserted: u64,
    pub freed: u64,
    pub table_full_drops: u64,
    pub early_drops: u64,
    pub lifetime: BTreeMap<&'static str, PercentilesJson>,
    pub established_idle_over_1h: Option<u64>,
    pub timeout_established_s: Option<u64>,
    pub time_wait_entries: Option<u64>,
    pub timeout_time_wait_s: Option<u64>,
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
            lifetime: c.lifetimes.iter().map(|(k, p)| (*k, (*p).into())).collect(),
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
            timewait_early_ends: s.timewait_early_ends,
            accept_queued: s.accept_queued,
        };
        for st in reported_states() {
            let name = state::name(st);
            let stats = s.state(st);
            out.states.insert(name, stats.now);
            out.entered.insert(name, stats.entered);
            if stats.dwell.count > 0 {
                out.dwell.insert(name, stats.dwell.into());
            }
            if stats.age.count > 0 {
                out.age.insert(name, stats.age.into());
            }
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct TransitionJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: &'a str,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub old: &'a str,
    pub new: &'a str,
    pub dwell_ns: Option<u64>,
    pub netns: u32,
    /// The socket's cgroup id (inode of its cgroup v2 directory), when the kernel told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<u64>,
    /// The container's short id, or the systemd unit, that cgroup names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'a str>,
    /// Only on the end of a server-side SYN_RECV (request socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synack_retransmits: Option<u8>,
    /// Only on the end of a server-side SYN_RECV: time the child then waited for accept().
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_wait_ns: Option<u64>,
    /// The owning process, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
    /// Present (true) when the record is about a timewait socket.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timewait: bool,
}

impl<'a> TransitionJson<'a> {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn new(t: &'a Transition, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(t.mono_ns),
            mono_ns: t.mono_ns,
            sock_id: t.sock_id,
            family: t.family.as_str(),
            saddr: t.saddr.to_string(),
            sport: t.sport,
            daddr: t.daddr.to_string(),
            dport: t.dport,
            old: t.old_name(),
            new: t.new_name(),
            dwell_ns: t.dwell_ns,
            netns: t.netns,
            cgroup: (t.cgroup != 0).then_some(t.cgroup),
            container: t.container.as_deref(),
            synack_retransmits: t.synack_retransmits,
            accept_wait_ns: t.accept_wait_ns,
            pid: t.owner.as_ref().map(|o| o.pid),
            comm: t.owner.as_ref().map(|o| &*o.comm),
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

    fn validator() -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, r: &serde_json::Value) -> Vec<String> {
        v.iter_errors(r)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn line_of(r: &Record<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_line(&mut out, r);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn every_record_type_validates_against_the_schema() {
        let v = validator();
        let sample = crate::core::replay::tests::sample();
        let mut seen = std::collections::BTreeSet::new();
        for line in sample
            .bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let r: serde_json::Value = serde_json::from_slice(line).unwrap();
            let errs = errors(&v, &r);
            assert!(errs.is_empty(), "{r}: {errs:?}");
            seen.insert(r["type"].as_str().unwrap().to_owned());
        }
        let clock = WallClock::with_offset(0);
        // The optional parts: a request socket's end with an owner, a part_end, conntrack.
        let Ok(Event::Transition(mut t)) = decode(&bytes_of(&raw_v4())) else {
            panic!()
        };
        t.synack_retransmits = Some(2);
        t.accept_wait_ns = Some(5);
        t.timewait = true;
        t.owner = Some(crate::core::event::Owner {
            pid: 42,
            comm: "nginx".into(),
            container: None,
        });
        t.saddr = "::ffff:10.0.0.1".parse().unwrap();
        let mut others = vec![
            line_of(&Record::Transition(TransitionJson::new(&t, clock))),
            line_of(&Record::PartEnd(PartEndJson {
                ts: clock.rfc3339(5),
                mono_ns: 5,
                part: 0,
                next: "t.jsonl.1".into(),
            })),
        ];
        let mut snap = Snapshot::empty();
        snap.conntrack = Some(ConntrackStats {
            count: Some(10),
            max: None,
            lifetimes: vec![("TIME_WAIT", Percentiles::default())],
            ..Default::default()
        });
        others.push(line_of(&Record::Snapshot(SnapshotJson::new(&snap, clock))));
        for r in &others {
            let errs = errors(&v, r);
            assert!(errs.is_empty(), "{r}: {errs:?}");
            seen.insert(r["type"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [
                "alert",
                "census",
                "header",
                "part_end",
                "snapshot",
                "summary",
                "transition"
            ]
        );
    }

    #[test]
    fn the_format_docs_name_every_feature() {
        let docs = include_str!("../../../docs/trace-format.md");
        for f in crate::features::Feature::ALL {
            let name = serde_json::to_value(f).unwrap();
            let name = format!("`{}`", name.as_str().unwrap());
            assert!(
                docs.contains(&name),
                "docs/trace-format.md does not list {name}"
            );
        }
    }

    #[test]
    fn the_schema_catches_drift() {
        let v = validator();
        let sample = crate::core::replay::tests::sample();
        let first: serde_json::Value =
            serde_json::from_slice(sample.bytes.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let mut extra = first.clone();
        extra["undocumented"] = 1.into();
        assert!(!errors(&v, &extra).is_empty(), "an undocumented field");
        let mut missing = first.clone();
        missing.as_object_mut().unwrap().remove("run_id");
        assert!(!errors(&v, &missing).is_empty(), "a missing field");
        let mut old = first.clone();
        old.as_object_mut().unwrap().remove("kernel_features");
        assert!(
            errors(&v, &old).is_empty(),
            "a trace from before kernel_features stays valid"
        );
        let mut bad = first.clone();
        bad["kernel_features"][0]["available"] = "yes".into();
        assert!(
            !errors(&v, &bad).is_empty(),
            "a feature that is not a yes/no"
        );
        let mut version = first;
        version["schema_version"] = 2.into();
        assert!(!errors(&v, &version).is_empty(), "another version");
        let bad_type = serde_json::json!({"type": "telemetry"});
        assert!(!errors(&v, &bad_type).is_empty(), "an unknown record type");
        let bad_ts = serde_json::json!({"type": "part_end", "ts": "yesterday", "mono_ns": 1,
            "part": 0, "next": "x"});
        assert!(
            !errors(&v, &bad_ts).is_empty(),
            "a time that is not RFC 3339 UTC"
        );
    }
}
