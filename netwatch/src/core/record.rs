//! The records of the JSON Lines trace format: one type per record, deriving both
//! `Serialize` and `Deserialize`, so the writer (`json`) and the reader (`replay`) use the
//! same definition and cannot drift apart. The schema (`netwatch schema`) and
//! docs/trace-format.md are held to these types by the tests in `record/drift.rs`.
//!
//! These are deliberately separate from the kernel records: the kernel layout can change
//! without changing what users and tests parse. Strings the writer has at hand (state names,
//! a process's command) are `Cow`s: borrowed when written, so writing allocates nothing for
//! them, owned when read back.
//!
//! One line is one object, told apart by `"type"`:
//!
//! - `header` ([`HeaderJson`]) opens every file of a trace and says, in `kernel_features`,
//!   what the kernel let this trace see;
//! - `census` ([`CensusJson`]) lists the sockets that existed at start (first file only);
//! - `transition` ([`TransitionJson`]): one TCP state change; `snapshot` ([`SnapshotJson`]):
//!   every `--interval`, the engine's view; `alert` ([`AlertJson`]): a named incident signal;
//!   `timewait_reset` ([`TimewaitResetJson`]): a RST that reached a timewait socket;
//! - `part_end` ([`PartEndJson`]) closes a file that the trace continues after
//!   (`--max-size`), and `summary` ([`SummaryJson`]) closes the trace.
//!
//! Compatibility within [`SCHEMA_VERSION`]: a field added within the version is optional
//! when read (`Option` or `#[serde(default)]`), since older traces lack it; a record type
//! this version does not know reads as [`Record::Other`]; fields it does not know are ignored.
//! The whole format, with examples, is in docs/trace-format.md.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::features::KernelFeatures;

use super::{early_ends::EarlyEnds, signals::Alert};

/// The value of a header's `format`: tells a netwatch trace from other JSON Lines.
pub const FORMAT: &str = "netwatch-trace";
/// Version of the record layout. Adding a record type or an optional field keeps it; renaming,
/// removing or changing the meaning of anything bumps it, and `report` refuses other versions.
/// (`kernel_features` was added within version 1: a trace without it is read as having every
/// feature, which is what it claimed when it was written.)
pub const SCHEMA_VERSION: u32 = 1;
/// The JSON Schema (draft 2020-12) of every record of this version.
pub const SCHEMA: &str = include_str!("../../schema/trace.schema.json");
/// The `"type"` of every record of this version, as [`Record`] spells them.
pub const KNOWN_TYPES: &[&str] = &[
    "header",
    "census",
    "transition",
    "snapshot",
    "alert",
    "timewait_reset",
    "part_end",
    "summary",
];

/// Counts or percentiles keyed by kernel state name. The writer's keys are the `'static`
/// names of `netwatch_common::state` (borrowed), the reader's whatever the file says.
pub type ByState<T> = BTreeMap<Cow<'static, str>, T>;

/// One line of a trace. The big records are boxed (and header and summary, written once,
/// borrowed by the writer) to keep the enum small for the many transitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Header(Box<Cow<'a, HeaderJson>>),
    Census(CensusJson<'a>),
    /// The reference definition of the transition record; traces are written by
    /// `json::write_transition`, which a test holds byte-equal to it.
    Transition(TransitionJson<'a>),
    Snapshot(Box<SnapshotJson>),
    Alert(AlertJson<'a>),
    TimewaitReset(TimewaitResetJson),
    PartEnd(PartEndJson),
    Summary(Box<Cow<'a, SummaryJson>>),
    /// A record of a type this version does not know, when reading: the format may grow
    /// within a schema version. Never written.
    #[serde(other, skip_serializing)]
    Other,
}

impl<'a> Record<'a> {
    /// The header, borrowed: it is kept for the next part's header.
    pub fn header(h: &'a HeaderJson) -> Self {
        Self::Header(Box::new(Cow::Borrowed(h)))
    }

    /// The summary, borrowed: the tracer still reports from it after writing it.
    pub fn summary(s: &'a SummaryJson) -> Self {
        Self::Summary(Box::new(Cow::Borrowed(s)))
    }
}

/// `"type":"header"`: the first record of every file of a trace. Everything a reader needs to
/// interpret the rest without the machine: what wrote it, where, when, with which limits and
/// which filters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeaderJson {
    /// When this file was begun, and its CLOCK_MONOTONIC stamp.
    pub ts: String,
    pub mono_ns: u64,
    /// Always [`FORMAT`].
    pub format: String,
    pub schema_version: u32,
    pub netwatch_version: String,
    /// Same in every file of one trace: how `report` knows the files belong together.
    pub run_id: String,
    /// 0 for the file named by `--output`, then 1, 2, ... (see docs/trace-format.md).
    pub part: u32,
    /// When tracing began (UTC) and its CLOCK_MONOTONIC stamp: `ts` of any record is
    /// `start + (mono_ns - start_mono_ns)`.
    pub start: String,
    pub start_mono_ns: u64,
    /// `uname -r` and `uname -n` (read as empty where missing).
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub hostname: String,
    /// `--interval`: the spacing of snapshot records.
    pub interval_ns: u64,
    /// TCP and conntrack settings (dotted sysctl name -> value as the kernel prints it) of
    /// the namespace netwatch ran in; absent settings are left out.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The same for each traced namespace (`--netns`), keyed by its inode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub netns_sysctls: BTreeMap<String, BTreeMap<String, String>>,
    /// Names of the namespaces that had one (`/run/netns`) when tracing began, keyed by
    /// inode: a report names `scn-srv`, not 4026532247. Added within schema version 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub netns_names: BTreeMap<String, String>,
    #[serde(default)]
    pub filters: FiltersJson,
    /// The command line.
    #[serde(default)]
    pub argv: Vec<String>,
    /// What this trace can see on this kernel: every feature of the catalogue
    /// ([`crate::features`]), available or not, with how or why not. Without it in the
    /// header, a reader would take an empty TIME_WAIT histogram for calm. Empty in traces
    /// from before it was recorded, which [`KernelFeatures::has`] reads as everything.
    #[serde(default)]
    pub kernel_features: KernelFeatures,
}

/// The filters a trace was recorded with: only matching connections are in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FiltersJson {
    pub ports: Vec<u16>,
    pub addrs: Vec<String>,
    pub netns: Vec<u32>,
}

/// `"type":"census"`: a socket that existed when tracing began (sock_diag), one record each,
/// right after the first header. Its `age_ns` is known only for TIME_WAIT (from its timer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CensusJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: Cow<'a, str>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: Cow<'a, str>,
    pub age_ns: Option<u64>,
    pub netns: u32,
    /// The process holding it at the census, where /proc told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<Cow<'a, str>>,
}

/// `"type":"transition"`: one TCP state change.
///
/// - `ts`: RFC 3339 UTC with nanoseconds; `mono_ns`: the kernel's CLOCK_MONOTONIC stamp.
/// - `sock_id`: the socket cookie, stable for the socket's whole life.
/// - `family`: `"ipv4"` or `"ipv6"`; `saddr`/`sport` the local end, `daddr`/`dport` the
///   remote. The local port reads 0 at `CLOSE -> SYN_SENT`: the kernel picks it just after.
/// - `old`, `new`: kernel state names (`"SYN_SENT"`, `"FIN_WAIT2"`, `"TIME_WAIT"`, ...).
/// - `dwell_ns`: nanoseconds spent in `old`, `null` when netwatch did not see it begin.
/// - `netns`: inode of the socket's network namespace.
/// - `pid`, `comm`: the owning process where known: the caller of connect()/listen(), the
///   accept()er of a server socket (carried on to that socket's later records), or the
///   process holding a socket that existed at start.
/// - `timewait`: `true` when about a timewait socket, the object that replaces a socket in
///   TIME_WAIT (and an orphan in FIN_WAIT2): its death is `"old":"TIME_WAIT","new":"CLOSE"`.
/// - Server-side SYN_RECV is the request socket's life, reported when the kernel frees it
///   (at accept()): `"old":"SYN_RECV","new":"ESTABLISHED"` stamped when the final ACK made
///   the child (or `"new":"CLOSE"` if none came), with `synack_retransmits` and
///   `accept_wait_ns` (child created -> accept()). Records are written as they arrive, so
///   sort by `mono_ns` for one socket's story.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransitionJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: Cow<'a, str>,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old: Cow<'a, str>,
    pub new: Cow<'a, str>,
    pub dwell_ns: Option<u64>,
    pub netns: u32,
    /// The socket's cgroup id (inode of its cgroup v2 directory), when the kernel told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<u64>,
    /// The container's short id, or the systemd unit, that cgroup names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Cow<'a, str>>,
    /// Only on the end of a server-side SYN_RECV (request socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synack_retransmits: Option<u8>,
    /// Only on the end of a server-side SYN_RECV: time the child then waited for accept().
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_wait_ns: Option<u64>,
    /// The owning process, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<Cow<'a, str>>,
    /// Present (true) when the record is about a timewait socket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timewait: bool,
}

/// `"type":"snapshot"`: every `--interval`, the engine's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotJson {
    pub ts: String,
    pub mono_ns: u64,
    pub interval_ns: u64,
    /// Sockets in each state now (every reported state, zeros included).
    pub states: ByState<u64>,
    /// Entries into each state during the interval (`interval_ns` long).
    pub entered: ByState<u64>,
    /// Per state with completed dwells since the start, in ns.
    pub dwell: ByState<PercentilesJson>,
    /// The same over the sockets still in the state.
    pub age: ByState<PercentilesJson>,
    /// Records so far.
    pub transitions: u64,
    /// Records the kernel could not send, plus undecodable ones.
    pub lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackJson>,
    /// TIME_WAITs ended before their 60 s since the start, by cause (added within schema
    /// version 1: absent in traces written before netwatch classified early ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timewait_early_ends: Option<EarlyEnds>,
    /// Of `states.ESTABLISHED`, children waiting in listeners' accept queues (added within
    /// schema version 1: absent means 0).
    #[serde(default)]
    pub accept_queued: u64,
}

/// `conntrack` in a snapshot: see [`super::snapshot::ConntrackStats`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConntrackJson {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub inserted: u64,
    pub freed: u64,
    #[serde(default)]
    pub table_full_drops: u64,
    pub early_drops: u64,
    /// Entry lifetimes by conntrack TCP state.
    pub lifetime: ByState<PercentilesJson>,
    pub established_idle_over_1h: Option<u64>,
    pub timeout_established_s: Option<u64>,
    pub time_wait_entries: Option<u64>,
    pub timeout_time_wait_s: Option<u64>,
}

/// count/p50/p90/p99/max of a set of durations, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PercentilesJson {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// One bar of a dwell histogram: dwells of at most `upper_ns` (and above the previous bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketJson {
    pub upper_ns: u64,
    pub count: u64,
}

/// `"type":"alert"`: a named incident signal. `kind` is one of
/// [`ALL_KINDS`](crate::core::alert_catalogue::ALL_KINDS); its evidence fields follow (listed
/// per kind in the catalogue and docs/alerts.md), with `message` saying what it means and
/// `knobs` the sysctls that matter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub message: String,
    /// The name of the alert's namespace (`/run/netns`), where it has one: people know
    /// `scn-srv`, not 4026532247. Added within schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    /// `kind` and the kind's evidence fields.
    #[serde(flatten)]
    pub evidence: AlertEvidence<'a>,
}

/// An alert's `kind` and evidence: written from the engine's [`Alert`] (whose serde form is
/// the evidence the catalogue lists), read back as plain fields, since a trace may hold kinds
/// and fields this version does not know.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AlertEvidence<'a> {
    #[serde(skip_deserializing)]
    Raised(&'a Alert),
    Recorded {
        kind: String,
        #[serde(flatten)]
        fields: BTreeMap<String, Value>,
    },
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

/// `"type":"part_end"`: the last record of a file after which the trace goes on in `next`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartEndJson {
    pub ts: String,
    pub mono_ns: u64,
    pub part: u32,
    /// File name (no directory) of the next part.
    pub next: String,
}

/// How many records of each type the whole trace holds (all parts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    pub census: u64,
    pub transition: u64,
    pub alert: u64,
    pub snapshot: u64,
    /// Added within schema version 1: absent means 0.
    #[serde(default)]
    pub timewait_reset: u64,
}

/// `"type":"summary"`: the last record of a complete trace, written however tracing stopped
/// (Ctrl-C, SIGTERM, SIGHUP, `--duration`, `q`, a closed pipe, an error of the live view).
/// Totals since the start, the engine's final view, and why it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryJson {
    pub ts: String,
    pub mono_ns: u64,
    /// `sigint`, `sigterm`, `sighup`, `duration`, `quit`, `closed_pipe` or `error`.
    pub stopped_by: Cow<'static, str>,
    /// From the header's `start_mono_ns` to this record.
    pub duration_ns: u64,
    pub records: RecordCounts,
    /// Transitions seen (all written to the trace).
    pub transitions: u64,
    /// Sockets in each state at the end (every reported state, zeros included).
    pub states: ByState<u64>,
    /// Completed dwells since the start per state: as in a snapshot.
    pub dwell: ByState<PercentilesJson>,
    /// The same dwells as histogram bars (empty bars left out), for plots.
    #[serde(default)]
    pub histogram: ByState<Vec<BucketJson>>,
    /// Ages of the sockets still in each state at the end.
    pub age: ByState<PercentilesJson>,
    /// Alert records by `kind`.
    #[serde(default)]
    pub alerts: BTreeMap<String, u64>,
    /// `lost_records + undecodable`, as `lost` in snapshots.
    pub lost: u64,
    /// Records the kernel could not send (ring buffer full).
    #[serde(default)]
    pub lost_records: u64,
    /// Records that arrived but could not be decoded.
    #[serde(default)]
    pub undecodable: u64,
    /// Records the trace's output could not take in time (a slow or absent reader of a FIFO,
    /// a stalled disk), dropped instead of holding up the tracer; `records` counts only those
    /// written. Added within schema version 1: absent means 0.
    #[serde(default)]
    pub output_dropped: u64,
    /// Runs of netwatch's programs the kernel skipped because one was already running on that
    /// CPU, nested deeper than the twin programs catch: each may have been a transition (or
    /// another record) that is missing. Added within schema version 1: absent means 0.
    #[serde(default)]
    pub skipped_runs: u64,
    /// As in the header: the last record alone (`tail -n1`) says what the trace could see.
    #[serde(default)]
    pub kernel_features: KernelFeatures,
    /// TIME_WAITs ended before their 60 s, by cause, over the whole trace (added within
    /// schema version 1: absent in traces written before netwatch classified early ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timewait_early_ends: Option<EarlyEnds>,
}

#[cfg(test)]
mod drift;
