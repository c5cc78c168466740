//! `netwatch report TRACE`: the postmortem view of a saved trace, without root or eBPF.
//!
//! The trace is replayed through the tracer's own engine ([`crate::core::replay`]), so the
//! histograms and percentiles are the ones the tracer computed, and (where nothing is filtered
//! out) every snapshot and the summary are checked against the replay. The result is one
//! [`Report`], rendered as text ([`text`]), JSON (its serde form) or an HTML page with plots
//! ([`html`]).

pub mod findings;
pub mod html;
pub mod printable;
pub mod text;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use netwatch_common::state;
use serde::Serialize;
use serde_json::Value;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::cli::TimeSpec;
use crate::config::ReportConfig;
use crate::core::{
    alert_history::AlertHistory,
    early_ends::EarlyEnds,
    json::reported_states,
    record::{BucketJson, ByState, HeaderJson, PercentilesJson, Record, SummaryJson},
    replay::{ReadError, Replay, ReplayFilter, TraceReader},
    snapshot::{Peak, Percentiles, Snapshot, Talker},
};
use crate::features::KernelFeatures;
use crate::writer;

pub use findings::Finding;

/// The trace as recorded: who wrote it, where, with which limits.
#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub files: Vec<String>,
    pub run_id: String,
    pub hostname: String,
    pub kernel: String,
    pub netwatch_version: String,
    pub schema_version: u64,
    pub start: String,
    pub interval_ns: u64,
    /// Filters the trace was recorded with.
    pub recorded_ports: Vec<u16>,
    pub recorded_addrs: Vec<String>,
    pub recorded_netns: Vec<u32>,
    pub sysctls: BTreeMap<String, String>,
    pub netns_sysctls: BTreeMap<String, BTreeMap<String, String>>,
    pub argv: Vec<String>,
    /// What the trace could see on its kernel (the header's list, or the summary's where a
    /// first part is missing): every feature, available or not, with how or why not. Empty
    /// for traces from before netwatch recorded it, which are read as having everything.
    pub kernel_features: KernelFeatures,
}

impl TraceInfo {
    /// The settings as the report shows them, in sections: the traced namespaces' own
    /// first where `--netns` chose them (their values are the ones the incident ran with),
    /// then the namespace netwatch ran in; without `--netns`, that one first and, of the
    /// others, only what differs from it.
    pub fn settings_sections(&self) -> Vec<(String, Vec<(String, String)>)> {
        let all = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = Vec::new();
        if !self.recorded_netns.is_empty() {
            for (ns, m) in &self.netns_sysctls {
                out.push((format!("netns {ns}"), all(m)));
            }
            out.push(("where netwatch ran".to_owned(), all(&self.sysctls)));
            return out;
        }
        out.push(("this namespace".to_owned(), all(&self.sysctls)));
        for (ns, m) in &self.netns_sysctls {
            let differ: Vec<(String, String)> = m
                .iter()
                .filter(|(k, v)| self.sysctls.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !differ.is_empty() {
                out.push((format!("netns {ns}, where it differs"), differ));
            }
        }
        out
    }
}

/// One network namespace's highest socket counts over the window, with its settings.
#[derive(Debug, Clone, Default)]
pub struct NetnsPeaks {
    /// Its name where it had one, with the inode: `scn-srv (4026532247)`.
    pub label: String,
    pub peaks: BTreeMap<&'static str, u64>,
    /// Its own settings, where the trace recorded them.
    pub sysctls: Option<BTreeMap<String, String>>,
}

/// What the report covers.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from: String,
    pub to: String,
    /// From the start of the trace.
    pub from_offset_ns: u64,
    pub to_offset_ns: u64,
    pub ports: Vec<u16>,
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GaugeJson {
    pub ts: String,
    pub offset_ns: u64,
    /// Sockets per state (the states that were ever non-zero in the report).
    pub states: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_max: Option<u64>,
}

/// A state's [`Peak`] over the report's gauges, `offset_ns` from the start of the trace.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PeakJson {
    pub max: u64,
    pub offset_ns: u64,
}

/// One row of a breakdown: a key (a port, an address) and the sockets it has in the state.
#[derive(Debug, Clone, Serialize)]
pub struct TalkerJson {
    pub key: String,
    pub sockets: u64,
}

/// What the dashboard's breakdown panel shows for one state (`b` cycles through them), at
/// the end of the window, from the same aggregator: top 5 each, biggest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BreakdownJson {
    /// By service port: the listener's port, whichever side the socket is on.
    pub service_ports: Vec<TalkerJson>,
    /// By this end's own port (random for clients).
    pub local_ports: Vec<TalkerJson>,
    /// By remote address.
    pub remotes: Vec<TalkerJson>,
    /// By owning process (sockets of no known process are left out).
    pub processes: Vec<ProcessJson>,
    /// By network namespace: its name where it had one, else its inode.
    pub namespaces: Vec<TalkerJson>,
}

impl BreakdownJson {
    fn of(snap: &Snapshot, st: u8) -> Self {
        fn rows<K: ToString>(list: Option<&Vec<Talker<K>>>) -> Vec<TalkerJson> {
            list.map(|l| {
                l.iter()
                    .map(|t| TalkerJson {
                        key: printable::owned(&t.key.to_string()),
                        sockets: t.count,
                    })
                    .collect()
            })
            .unwrap_or_default()
        }
        let i = st as usize;
        Self {
            service_ports: rows(snap.top_service_ports.get(i)),
            local_ports: rows(snap.top_local_ports.get(i)),
            remotes: rows(snap.top_remotes.get(i)),
            processes: snap
                .top_processes
                .get(i)
                .map(|l| {
                    l.iter()
                        .map(|t| ProcessJson {
                            pid: t.key.pid,
                            comm: printable::owned(&t.key.comm),
                            sockets: t.count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            namespaces: snap
                .top_netns
                .get(i)
                .map(|l| {
                    l.iter()
                        .map(|t| TalkerJson {
                            key: printable::owned(&snap.netns_label(t.key)),
                            sockets: t.count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.service_ports.is_empty()
            && self.local_ports.is_empty()
            && self.remotes.is_empty()
            && self.processes.is_empty()
    }

    /// Every row as (what it is by, key, sockets), in the order of the dashboard's `b`.
    pub fn rows(&self) -> Vec<(&'static str, String, u64)> {
        let ports = self.service_ports.iter().map(|t| ("service port", t));
        let local = self.local_ports.iter().map(|t| ("local port", t));
        let remotes = self.remotes.iter().map(|t| ("remote address", t));
        ports
            .chain(local)
            .chain(remotes)
            .map(|(by, t)| (by, t.key.clone(), t.sockets))
            .chain(
                self.processes
                    .iter()
                    .map(|p| ("process", p.to_string(), p.sockets)),
            )
            .chain(
                self.namespaces
                    .iter()
                    .map(|t| ("namespace", t.key.clone(), t.sockets)),
            )
            .collect()
    }
}

/// A process holding sockets in one state at the end of the window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessJson {
    pub pid: u32,
    pub comm: String,
    pub sockets: u64,
}

impl std::fmt::Display for ProcessJson {
    /// `python3[6345]`, as the live views name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertItem {
    pub ts: String,
    pub offset_ns: u64,
    pub kind: String,
    pub message: String,
    pub evidence: BTreeMap<String, Value>,
}

/// How well the replay matched what the tracer recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub snapshots_checked: u64,
    pub snapshots_differing: u64,
    /// `match`, `differs`, or `not_compared` (filtered, windowed, a part missing, or no
    /// summary).
    pub summary: &'static str,
    pub differences: Vec<String>,
}

/// Request sockets that ended with a connection, and without one.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HandshakesJson {
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub trace: TraceInfo,
    pub window: Window,
    /// The trace ends with its summary and no part is missing.
    pub complete: bool,
    pub stopped_by: Option<String>,
    /// Transitions replayed (those passing the filters, in the window).
    pub transitions: u64,
    /// `replay`, or `summary` where parts are missing and the tracer's summary of the whole
    /// run gives the histograms, percentiles and totals.
    pub numbers_from: &'static str,
    /// Sockets that existed at start (passing the filters).
    pub census: u64,
    /// Records the tracer lost: `lost_records` (its ring buffer was full) plus
    /// `undecodable`, as its summary says (the highest `lost` seen when there is none).
    pub lost: u64,
    pub lost_records: Option<u64>,
    pub undecodable: Option<u64>,
    /// Program runs the kernel skipped (nested on one CPU), as the summary says: up to this
    /// many records may be missing besides `lost`.
    pub skipped_runs: Option<u64>,
    /// Records the tracer made but its output could not take (a slow reader), as the summary
    /// says: they are not in the trace, so the replay undercounts by them.
    pub output_dropped: Option<u64>,
    /// Sockets in each state at the end of the window.
    pub states: BTreeMap<&'static str, u64>,
    /// Completed dwells per state (in the window), as in the trace's summary.
    pub dwell: BTreeMap<&'static str, PercentilesJson>,
    pub histogram: BTreeMap<&'static str, Vec<BucketJson>>,
    /// Ages of the sockets still in each state at the end of the window.
    pub age: BTreeMap<&'static str, PercentilesJson>,
    /// Per state with sockets at the end of the window, the dashboard's breakdowns then (by
    /// service port, local port, remote address, process).
    pub breakdowns: BTreeMap<&'static str, BreakdownJson>,
    pub gauges: Vec<GaugeJson>,
    pub peaks: BTreeMap<&'static str, PeakJson>,
    /// Per network namespace the trace saw sockets in: its peaks and its own settings, so
    /// a limit is weighed against the namespace it applies to.
    #[serde(skip)]
    pub netns_peaks: Vec<NetnsPeaks>,
    pub alert_counts: BTreeMap<String, u64>,
    pub alerts: Vec<AlertItem>,
    /// The alerts by kind and subject, as the dashboard's alerts pane folds them (times are
    /// offsets from the start of the trace).
    pub alerts_by_subject: AlertHistory,
    pub findings: Vec<Finding>,
    pub check: Check,
    pub warnings: Vec<String>,
    /// Lines of the files skipped as damaged (garbled, over 16 MiB, a truncated last line, a
    /// gzip stream that stops): records the numbers lack. Non-zero makes `report` exit with
    /// [`EXIT_DAMAGED`].
    pub damaged_lines: u64,
    /// TIME_WAITs that ended before their 60 s, by cause (in the window, or over the whole
    /// run where the numbers come from the summary).
    pub timewait_early_ends: EarlyEnds,
    /// Server-side handshakes that ended in the window, by outcome (replayed).
    pub handshakes: HandshakesJson,
}

impl Report {
    /// Every state that held a socket at the end or at any snapshot, with its count at the
    /// end and its peak (None when no snapshot counted it: a trace cut before its first).
    /// Text and HTML both list these rows: a state back to 0 at the end keeps its row, since
    /// its peak is often the incident itself.
    pub fn socket_rows(&self) -> Vec<(&'static str, u64, Option<PeakJson>)> {
        self.states
            .iter()
            .map(|(st, n)| (*st, *n, self.peaks.get(st).copied().filter(|p| p.max > 0)))
            .filter(|(_, n, p)| *n > 0 || p.is_some())
            .collect()
    }
}

/// `report`'s exit code when it skipped damaged lines: the report is made of everything
/// else, but scripts must not take it for the whole trace. (3, as `trace` exits when it lost
/// records: in both cases the numbers undercount.)
pub const EXIT_DAMAGED: u8 = 3;

/// What a report shows for a time of the trace that RFC 3339 cannot write (a damaged or
/// hostile header: its start in year 9999, stamps far from it).
pub const OUT_OF_RANGE: &str = "(time out of range)";

/// Mono stamps of the trace to wall-clock time, from its header.
#[derive(Debug, Clone, Copy)]
pub struct TraceClock {
    start_wall: OffsetDateTime,
    start_mono: u64,
}

impl TraceClock {
    pub fn from_header(h: &HeaderJson) -> Result<Self> {
        let start_wall = OffsetDateTime::parse(&h.start, &Rfc3339)
            .with_context(|| format!("the trace header's start {:?} is not RFC 3339", h.start))?;
        Ok(Self {
            start_wall,
            start_mono: h.start_mono_ns,
        })
    }

    pub fn offset(&self, mono: u64) -> u64 {
        mono.saturating_sub(self.start_mono)
    }

    /// The wall-clock time of a mono stamp, RFC 3339. The stamps come from the file, so the
    /// sum is checked: a time RFC 3339 cannot write (past year 9999, before year 0) is
    /// [`OUT_OF_RANGE`], never a panic.
    pub fn ts(&self, mono: u64) -> String {
        let unix_ns =
            self.start_wall.unix_timestamp_nanos() + i128::from(mono) - i128::from(self.start_mono);
        OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| OUT_OF_RANGE.to_owned())
    }

    /// A --since/--until as a mono stamp of the trace.
    pub fn mono_of(&self, t: TimeSpec) -> u64 {
        match t {
            TimeSpec::Offset(d) => self
                .start_mono
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            TimeSpec::At(at) => {
                let delta = (at - self.start_wall).whole_nanoseconds();
                (self.start_mono as i128 + delta).clamp(0, u64::MAX as i128) as u64
            }
        }
    }
}

/// Opens a trace file, undoing gzip (told by its magic bytes, whatever its name).
pub fn open_trace(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let gzip = input
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(input),
        ))
    } else {
        Box::new(input)
    })
}

/// The files to read: the ones named, or the one named followed by its later parts.
fn trace_files(named: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if named.len() > 1 {
        return Ok(named.to_vec());
    }
    let base = &named[0];
    let mut files = Vec::new();
    if base.exists() {
        files.push(base.clone());
    }
    files.extend(writer::existing_parts(base).into_iter().map(|(_, p)| p));
    if files.is_empty() {
        bail!("cannot open {}: no such file", base.display());
    }
    Ok(files)
}

/// Everything read from the files.
struct Loaded {
    first: HeaderJson,
    files: Vec<String>,
    replay: Replay,
    warnings: Vec<String>,
    /// Lines skipped as damaged, in all files.
    damaged: u64,
}

fn read_trace(cfg: &ReportConfig, files: &[PathBuf]) -> Result<Loaded> {
    if let (Some(a), Some(b)) = (cfg.since, cfg.until) {
        // Offsets were checked with the flags; times of day only compare on one clock.
        if let (TimeSpec::At(a), TimeSpec::At(b)) = (a, b) {
            if b <= a {
                bail!("--until must be after --since");
            }
        }
    }
    let mut first: Option<(HeaderJson, TraceClock)> = None;
    let mut replay: Option<Replay> = None;
    let mut warnings = Vec::new();
    let mut used = Vec::new();
    let mut last_part: Option<u32> = None;
    let mut continues_in: Option<String> = None;
    let mut damaged = 0;
    let explicit = cfg.traces.len() > 1;
    for path in files {
        let name = path.display().to_string();
        let input = open_trace(path)?;
        let mut reader = match TraceReader::new(&name, input) {
            Ok(r) => r,
            // A later part found next to the first that is not a trace: not ours to judge.
            Err(e @ (ReadError::NotATrace { .. } | ReadError::Empty { .. }))
                if first.is_some() && !explicit =>
            {
                warnings.push(format!("{e}; skipped"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let header = reader.header.clone();
        let (h0, _) = match &first {
            Some(f) => f,
            None => {
                let clock = TraceClock::from_header(&header)?;
                let filter = replay_filter(cfg, clock);
                replay = Some(Replay::new(filter));
                first.insert((header.clone(), clock))
            }
        };
        let replay = replay.as_mut().expect("set with the first header");
        if header.run_id != h0.run_id {
            warnings.push(format!(
                "{name} is from another trace (run {}, not {}); skipped",
                header.run_id, h0.run_id
            ));
            continue;
        }
        let expected = last_part.map_or(0, |p| p + 1);
        if header.part != expected {
            if last_part.is_some_and(|p| header.part <= p) {
                bail!(
                    "{name} is part {} of the trace, which was already read; name the parts \
                     in order",
                    header.part
                );
            }
            replay.gap();
            warnings.push(if expected == 0 {
                format!(
                    "{name} is part {} of the trace: the first part{} (with the census and \
                     the start) is not read, so gauges replayed from it lack the sockets that \
                     existed before",
                    header.part,
                    if header.part > 1 { "s" } else { "" }
                )
            } else {
                format!(
                    "parts {expected}..{} of the trace are missing (deleted by rotation, \
                     --max-files?): the replayed histograms lack their records",
                    header.part - 1
                )
            });
        }
        last_part = Some(header.part);
        used.push(name.clone());
        replay.apply(Record::Header(Box::new(Cow::Owned(header))));
        continues_in = None;
        while let Some(rec) = reader.next_record()? {
            continues_in = match &rec {
                Record::PartEnd(p) => Some(p.next.clone()),
                _ => None,
            };
            replay.apply(rec);
        }
        damaged += reader.damaged();
        warnings.extend(reader.finish_warnings());
    }
    if let Some(next) = continues_in {
        warnings.push(format!(
            "the trace goes on in {next} (its part_end record says so), which was not read"
        ));
    }
    let (Some((first, _)), Some(mut replay)) = (first, replay) else {
        bail!("no trace to read");
    };
    replay.end();
    Ok(Loaded {
        first,
        files: used,
        replay,
        warnings,
        damaged,
    })
}

fn replay_filter(cfg: &ReportConfig, clock: TraceClock) -> ReplayFilter {
    ReplayFilter {
        ports: cfg.ports.clone(),
        addrs: cfg.addrs.clone(),
        has_addrs: !cfg.addr_specs.is_empty(),
        since_mono: cfg.since.map(|t| clock.mono_of(t)),
        until_mono: cfg.until.map(|t| clock.mono_of(t)),
    }
}

/// The trace's features: the header's, else the summary's (both say the same; a header of a
/// trace from an older netwatch says nothing, and then neither does its summary).
fn recorded_features(header: &HeaderJson, summary: Option<&SummaryJson>) -> KernelFeatures {
    match summary {
        Some(s) if header.kernel_features.0.is_empty() => s.kernel_features.clone(),
        _ => header.kernel_features.clone(),
    }
}

fn pct(p: Percentiles) -> PercentilesJson {
    p.into()
}

/// Builds the report from the trace files.
pub fn build(cfg: &ReportConfig) -> Result<Report> {
    let files = trace_files(&cfg.traces)?;
    let Loaded {
        first,
        files,
        replay,
        mut warnings,
        damaged,
    } = read_trace(cfg, &files)?;
    let clock = TraceClock::from_header(&first)?;
    let summary = replay.summary.as_ref();
    let trace_end = summary.map_or(replay.last_mono, |s| s.mono_ns);
    let since = replay.filter.since_mono.unwrap_or(first.start_mono_ns);
    let end = replay
        .filter
        .until_mono
        .map_or(trace_end, |u| u.min(trace_end));
    if replay.filter.since_mono.is_some_and(|s| s > trace_end) {
        warnings.push(format!(
            "--since is after the end of the trace ({}): the report is empty",
            clock.ts(trace_end)
        ));
    }
    // A window that starts after the trace ends is empty, not negative.
    let end = end.max(since);
    let (dwells, mut alive) = replay.view(end);
    alive.netns_names = first
        .netns_names
        .iter()
        .filter_map(|(ino, name)| Some((ino.parse().ok()?, name.clone())))
        .collect();

    let mut ever = [false; state::COUNT];
    for g in &replay.gauges {
        for (i, &n) in g.states.iter().enumerate() {
            ever[i] |= n > 0;
        }
    }
    for st in reported_states() {
        ever[st as usize] |= alive.state(st).now > 0;
    }
    let shown: Vec<u8> = reported_states().filter(|&s| ever[s as usize]).collect();
    let breakdowns = reported_states()
        .map(|st| (state::name(st), BreakdownJson::of(&alive, st)))
        .filter(|(_, b)| !b.is_empty())
        .collect();

    let mut states = BTreeMap::new();
    let mut dwell = BTreeMap::new();
    let mut histogram = BTreeMap::new();
    let mut age = BTreeMap::new();
    for st in reported_states() {
        let name = state::name(st);
        states.insert(name, alive.state(st).now);
        let d = dwells.state(st);
        if d.dwell.count > 0 {
            dwell.insert(name, pct(d.dwell));
            histogram.insert(name, d.buckets.iter().map(|&b| b.into()).collect());
        }
        let a = alive.state(st);
        if a.age.count > 0 {
            age.insert(name, pct(a.age));
        }
    }
    let mut transitions = replay.transitions;
    // With parts missing, the replay lacks their records; the tracer's own summary has the
    // whole run, so its numbers stand in (when the report looks at the whole run).
    let from_summary = summary.filter(|_| {
        !replay.complete && !replay.filter.filters_connections() && !replay.filter.has_window()
    });
    if let Some(s) = from_summary {
        let pcts = |m: &ByState<PercentilesJson>| {
            reported_states()
                .map(state::name)
                .filter_map(|n| Some((n, *m.get(n)?)))
                .collect()
        };
        states = reported_states()
            .map(state::name)
            .map(|n| (n, s.states.get(n).copied().unwrap_or(0)))
            .collect();
        dwell = pcts(&s.dwell);
        age = pcts(&s.age);
        histogram = reported_states()
            .map(state::name)
            .filter_map(|n| {
                let bars = s.histogram.get(n)?;
                Some((n, bars.clone()))
            })
            .collect();
        transitions = s.transitions;
        warnings.push(
            "parts of the trace are missing: its histograms, percentiles and totals are those \
             of the tracer's summary (the whole run), not replayed"
                .to_owned(),
        );
    }

    let mut peaks: BTreeMap<&'static str, Peak> = BTreeMap::new();
    let mut by_netns: BTreeMap<u32, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let gauges: Vec<GaugeJson> = replay
        .gauges
        .iter()
        .map(|g| {
            for (ns, states) in &g.per_netns {
                let seen = by_netns.entry(*ns).or_default();
                for &st in &shown {
                    let top = seen.entry(state::name(st)).or_default();
                    *top = (*top).max(states[st as usize]);
                }
            }
            let offset_ns = clock.offset(g.mono_ns);
            let mut m = BTreeMap::new();
            for &st in &shown {
                let n = g.states[st as usize];
                m.insert(state::name(st), n);
                peaks
                    .entry(state::name(st))
                    .or_default()
                    .observe(n, offset_ns);
            }
            GaugeJson {
                ts: clock.ts(g.mono_ns),
                offset_ns,
                states: m,
                conntrack_count: g.conntrack.and_then(|c| c.0),
                conntrack_max: g.conntrack.and_then(|c| c.1),
            }
        })
        .collect();

    let mut alert_counts = BTreeMap::new();
    let alerts: Vec<AlertItem> = replay
        .alerts
        .iter()
        .map(|a| {
            let kind = printable::owned(&a.kind);
            *alert_counts.entry(kind.clone()).or_insert(0) += 1;
            AlertItem {
                ts: printable::owned(&a.ts),
                offset_ns: clock.offset(a.mono_ns),
                kind,
                message: printable::owned(&a.message),
                evidence: a
                    .evidence
                    .iter()
                    .map(|(k, v)| (printable::owned(k), printable::value(v)))
                    .collect(),
            }
        })
        .collect();

    let mut summary_check = replay.check_summary();
    if let (Some(diffs), Some(s)) = (summary_check.as_mut(), summary) {
        if s.alerts != alert_counts {
            diffs.push(format!(
                "alerts by kind {:?} in the summary, {:?} in the records",
                s.alerts, alert_counts
            ));
        }
    }
    let mut differences = replay.differences.clone();
    let summary_state = match &summary_check {
        None => "not_compared",
        Some(d) if d.is_empty() => "match",
        Some(d) => {
            differences.extend(d.iter().take(5).map(|d| format!("summary: {d}")));
            "differs"
        }
    };
    if summary.is_none() {
        warnings.push(
            "the trace ends without its summary record: the tracer was killed (SIGKILL, a \
             crash) or its disk filled; up to its last second of records may be missing"
                .to_owned(),
        );
    }
    let complete = summary.is_some() && replay.complete;
    let lost = replay.lost;

    let netns_peaks: Vec<NetnsPeaks> = by_netns
        .into_iter()
        .map(|(inode, peaks)| {
            let key = inode.to_string();
            NetnsPeaks {
                label: match first.netns_names.get(&key) {
                    Some(name) => printable::owned(&format!("{name} ({inode})")),
                    None => key.clone(),
                },
                peaks,
                sysctls: first.netns_sysctls.get(&key).map(printable::map),
            }
        })
        .collect();
    let trace = TraceInfo {
        files: files.iter().map(|f| printable::owned(f)).collect(),
        run_id: printable::owned(&first.run_id),
        hostname: printable::owned(&first.hostname),
        kernel: printable::owned(&first.kernel),
        netwatch_version: printable::owned(&first.netwatch_version),
        schema_version: first.schema_version.into(),
        start: printable::owned(&first.start),
        interval_ns: first.interval_ns,
        recorded_ports: first.filters.ports.clone(),
        recorded_addrs: first
            .filters
            .addrs
            .iter()
            .map(|a| printable::owned(a))
            .collect(),
        recorded_netns: first.filters.netns.clone(),
        sysctls: printable::map(&first.sysctls),
        // Keyed for people: `scn-srv (4026532247)` where the namespace had a name.
        netns_sysctls: first
            .netns_sysctls
            .iter()
            .map(|(ns, m)| {
                let label = match first.netns_names.get(ns) {
                    Some(name) => format!("{name} ({ns})"),
                    None => ns.clone(),
                };
                (printable::owned(&label), printable::map(m))
            })
            .collect(),
        argv: first.argv.iter().map(|a| printable::owned(a)).collect(),
        kernel_features: recorded_features(&first, summary),
    };
    let window = Window {
        from: clock.ts(since),
        to: clock.ts(end),
        from_offset_ns: clock.offset(since),
        to_offset_ns: clock.offset(end),
        ports: cfg.ports.clone(),
        addrs: cfg.addr_specs.clone(),
    };
    let mut report = Report {
        trace,
        window,
        complete,
        stopped_by: summary.map(|s| printable::owned(&s.stopped_by)),
        transitions,
        numbers_from: if from_summary.is_some() {
            "summary"
        } else {
            "replay"
        },
        census: replay.census,
        lost,
        lost_records: summary.map(|s| s.lost_records),
        undecodable: summary.map(|s| s.undecodable),
        skipped_runs: summary.map(|s| s.skipped_runs),
        output_dropped: summary.map(|s| s.output_dropped),
        states,
        dwell,
        histogram,
        age,
        breakdowns,
        gauges,
        netns_peaks,
        peaks: peaks
            .into_iter()
            .map(|(st, p)| {
                let json = PeakJson {
                    max: p.max,
                    offset_ns: p.at,
                };
                (st, json)
            })
            .collect(),
        alert_counts,
        alerts_by_subject: alert_history(&alerts),
        alerts,
        findings: Vec::new(),
        check: Check {
            snapshots_checked: replay.snapshots_checked,
            snapshots_differing: replay.snapshots_differing,
            summary: summary_state,
            differences: differences.iter().map(|d| printable::owned(d)).collect(),
        },
        // They quote the files: names, run ids, `part_end.next`.
        warnings: warnings.iter().map(|w| printable::owned(w)).collect(),
        damaged_lines: damaged,
        handshakes: HandshakesJson {
            completed: dwells.handshakes.completed,
            failed: dwells.handshakes.failed,
        },
        timewait_early_ends: match from_summary {
            Some(s) => s.timewait_early_ends.unwrap_or_default(),
            None => dwells.timewait_early_ends,
        },
    };
    report.findings = findings::findings(&report);
    Ok(report)
}

/// The trace's alerts folded as the dashboard folds them.
fn alert_history(alerts: &[AlertItem]) -> AlertHistory {
    let mut h = AlertHistory::default();
    for a in alerts {
        h.record(
            &a.kind,
            &|f| a.evidence.get(f).cloned(),
            &a.message,
            a.offset_ns,
        );
    }
    h
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn to_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report to stdout")),
    }
}

/// Writes the report; returns the count of damaged lines it skipped.
pub fn run(cfg: ReportConfig) -> Result<u64> {
    let report = build(&cfg)?;
    for w in &report.warnings {
        eprintln!("netwatch: warning: {w}");
    }
    if cfg.json {
        let mut out = serde_json::to_vec_pretty(&report).context("serializing the report")?;
        out.push(b'\n');
        to_stdout(&out)?;
    } else if cfg.html.is_none() {
        to_stdout(text::render(&report).as_bytes())?;
    }
    if let Some(path) = &cfg.html {
        let page = html::render(&report);
        let mut f = writer::open_part(path, cfg.force)
            .with_context(|| format!("cannot create the HTML report {}", path.display()))?;
        f.write_all(page.as_bytes())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
        eprintln!("netwatch: HTML report written to {}", path.display());
    }
    Ok(report.damaged_lines)
}

#[cfg(test)]
mod tests;
