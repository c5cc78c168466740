//! Reading a trace back and replaying it through the same engine `trace` ran: the census
//! seeds an [`Aggregator`], the transitions are applied in file order (the order the live
//! engine applied them), and at every recorded snapshot the engine's view is taken again, so
//! the report's histograms and gauges are the tracer's own numbers, recomputed. Where nothing
//! was filtered out, every replayed snapshot is compared with the recorded one.
//!
//! Pure: it reads from any `BufRead` (the caller opens files and undoes gzip).

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::net::IpAddr;
use std::sync::Arc;

use netwatch_common::state;
use serde_json::Value;
use thiserror::Error;

use super::{
    aggregate::{Aggregator, Existing},
    event::{Family, Owner, Transition},
    filter::AddrFilter,
    json::reported_states,
    record::{
        AlertEvidence, AlertJson, ByState, HeaderJson, PercentilesJson, Record, SnapshotJson,
        SummaryJson, TransitionJson, FORMAT, KNOWN_TYPES, SCHEMA_VERSION,
    },
    snapshot::{Percentiles, Snapshot},
};

/// A record as read back, owning its strings.
pub type RecordIn = Record<'static>;

/// Longest line kept: a longer one is skipped as damaged (read past, never held whole).
const MAX_LINE: usize = 16 << 20;
/// Damaged lines listed one by one; beyond, only counted.
const LISTED_WARNINGS: usize = 5;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error(
        "{name} is empty: not a netwatch trace (a trace starts with a \"type\":\"header\" record)"
    )]
    Empty { name: String },
    #[error(
        "{name} is not a netwatch trace: {why} (a trace is JSON Lines that start with a \
         \"type\":\"header\" record; `netwatch schema` prints the format)"
    )]
    NotATrace { name: String, why: String },
    #[error(
        "{name} is a netwatch trace of schema version {found}; this netwatch ({ours}) reads \
         version {SCHEMA_VERSION}: read it with a netwatch that writes version {found}"
    )]
    Version {
        name: String,
        found: u64,
        ours: &'static str,
    },
    #[error("reading {name}: {source}")]
    Io { name: String, source: io::Error },
    /// A header after the first: traces joined into one stream (`cat a.jsonl b.jsonl`).
    /// Their counts are never added together: two runs have two clocks, two censuses and two
    /// summaries, and a trace appended to itself would count everything twice.
    #[error("{}", second_header_message(name, *line, first, second))]
    SecondHeader {
        name: String,
        /// Line of the second header.
        line: u64,
        first: TraceId,
        /// None when the second header itself is damaged.
        second: Option<TraceId>,
    },
}

/// Which trace file a header starts: its run and part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId {
    pub run_id: String,
    pub part: u32,
}

impl TraceId {
    fn of(h: &HeaderJson) -> Self {
        Self {
            run_id: h.run_id.clone(),
            part: h.part,
        }
    }
}

fn second_header_message(
    name: &str,
    line: u64,
    first: &TraceId,
    second: &Option<TraceId>,
) -> String {
    let what = match second {
        None => "a damaged second trace header".to_owned(),
        Some(second) => joined(first, second),
    };
    format!(
        "{name}:{line}: {what}; reading on would add the traces' counts together: split the \
         file at line {line} (`head -n {} {name} > first.jsonl; tail -n +{line} {name} > \
         second.jsonl`, after zcat for a gzip file) and report each file on its own",
        line - 1
    )
}

/// What two headers in one file say was joined.
fn joined(first: &TraceId, second: &TraceId) -> String {
    if first.run_id != second.run_id {
        format!(
            "a second trace header: two traces (runs {} and {}) joined into one file",
            first.run_id, second.run_id
        )
    } else if first.part == second.part {
        format!(
            "a second trace header: the same trace (run {}, part {}) twice",
            first.run_id, first.part
        )
    } else {
        format!(
            "a second trace header: parts {} and {} of one trace (run {}) joined into one file",
            first.part, second.part, first.run_id
        )
    }
}

impl TransitionJson<'_> {
    /// The engine's event, as the tracer had it (state names back to numbers).
    pub fn to_transition(&self) -> Transition {
        Transition {
            mono_ns: self.mono_ns,
            sock_id: self.sock_id,
            family: if self.family == "ipv6" {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            old: state::from_name(&self.old).unwrap_or(0),
            new: state::from_name(&self.new).unwrap_or(0),
            dwell_ns: self.dwell_ns,
            netns: self.netns,
            timewait: self.timewait,
            synack_retransmits: self.synack_retransmits,
            accept_wait_ns: self.accept_wait_ns,
            owner: match (self.pid, &self.comm) {
                (Some(pid), Some(comm)) => Some(Owner {
                    pid,
                    comm: Arc::from(&**comm),
                    container: self.container.as_deref().map(Arc::from),
                }),
                _ => None,
            },
            cgroup: self.cgroup.unwrap_or(0),
            container: self.container.as_deref().map(Arc::from),
        }
    }
}

/// An alert as read back: its kind and evidence fields, whatever the kind.
#[derive(Debug, Clone)]
pub struct RecordedAlert {
    pub ts: String,
    pub mono_ns: u64,
    pub kind: String,
    pub message: String,
    /// The kind's evidence fields, and `netns_name` where the record has one (the catalogue
    /// reads it as evidence).
    pub evidence: BTreeMap<String, Value>,
}

impl RecordedAlert {
    /// None for an alert that was not read from a file (never the case in a replay).
    fn of(a: AlertJson<'_>) -> Option<Self> {
        // Every field named: one added to the record must be placed here too.
        let AlertJson {
            ts,
            mono_ns,
            message,
            netns_name,
            evidence,
        } = a;
        let AlertEvidence::Recorded { kind, mut fields } = evidence else {
            return None;
        };
        if let Some(name) = netns_name {
            fields.insert("netns_name".to_owned(), Value::String(name));
        }
        Some(Self {
            ts,
            mono_ns,
            kind,
            message,
            evidence: fields,
        })
    }
}

/// Reads one trace file: checks its header, then yields its records. Damage after the header
/// (a truncated last line, a gzip stream cut short, a garbled line) is skipped with a warning.
pub struct TraceReader<R> {
    name: String,
    input: R,
    line: Vec<u8>,
    line_no: u64,
    pub header: HeaderJson,
    pub warnings: Vec<String>,
    /// Lines skipped, all kinds (see [`TraceReader::damaged`]).
    damaged: u64,
    /// Lines skipped in the middle of the file, which are listed up to [`LISTED_WARNINGS`].
    listed: usize,
    done: bool,
}

/// How [`read_line`] found the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    /// A newline ended it (it is in the buffer).
    Newline,
    /// The input ended first: the buffer holds what there was, perhaps nothing.
    Eof,
    /// It was longer than the limit: the buffer holds its first `limit` bytes and the rest of
    /// it was read past, so the next line can be read.
    TooLong,
}

/// Reads up to and including the next newline, keeping at most `limit` bytes of it: memory
/// stays bounded whatever the file holds.
fn read_line<R: BufRead>(input: &mut R, out: &mut Vec<u8>, limit: usize) -> io::Result<LineEnd> {
    out.clear();
    let mut too_long = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if too_long {
                LineEnd::TooLong
            } else {
                LineEnd::Eof
            });
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let take = newline.map_or(buf.len(), |i| i + 1);
        let room = limit.saturating_sub(out.len());
        if take > room {
            too_long = true;
        }
        out.extend_from_slice(&buf[..take.min(room)]);
        input.consume(take);
        if newline.is_some() {
            return Ok(if too_long {
                LineEnd::TooLong
            } else {
                LineEnd::Newline
            });
        }
    }
}

/// A read error that means "the compressed stream stops here", not "the disk failed".
fn is_cut_short(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
    )
}

impl<R: BufRead> TraceReader<R> {
    /// Reads and checks the header. `name` is for messages.
    pub fn new(name: &str, mut input: R) -> Result<Self, ReadError> {
        let name = name.to_owned();
        let mut line = Vec::new();
        let not_trace = |why: String| ReadError::NotATrace {
            name: name.clone(),
            why,
        };
        match read_line(&mut input, &mut line, 1 << 20) {
            Ok(_) if line.is_empty() => return Err(ReadError::Empty { name }),
            Ok(LineEnd::TooLong) => return Err(not_trace("its first line is not JSON".into())),
            Ok(_) => {}
            Err(e) if is_cut_short(&e) => {
                return Err(not_trace(format!("it cannot be decompressed ({e})")))
            }
            Err(source) => return Err(ReadError::Io { name, source }),
        }
        let value: Value = serde_json::from_slice(&line)
            .map_err(|_| not_trace("its first line is not JSON".into()))?;
        let kind = value.get("type").and_then(Value::as_str);
        if kind != Some("header") {
            let why = match kind {
                Some(k) => format!(
                    "its first record is a \"{k}\" record, not a header (written by a netwatch \
                     from before traces had headers, or cut from the middle of one)"
                ),
                None => "its first line is not a record with a \"type\"".into(),
            };
            return Err(not_trace(why));
        }
        if value.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(not_trace(format!(
                "its header's \"format\" is not \"{FORMAT}\""
            )));
        }
        let found = value
            .get("schema_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| not_trace("its header has no \"schema_version\"".into()))?;
        if found != u64::from(SCHEMA_VERSION) {
            return Err(ReadError::Version {
                name,
                found,
                ours: env!("CARGO_PKG_VERSION"),
            });
        }
        let header: HeaderJson = serde_json::from_value(value)
            .map_err(|e| not_trace(format!("its header is incomplete ({e})")))?;
        // Every time in the report is placed from this one: a damaged start is a damaged
        // header, refused here rather than half-way through the report.
        if time::OffsetDateTime::parse(
            &header.start,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            return Err(not_trace(format!(
                "its header's start {:?} is not an RFC 3339 time (the header is damaged)",
                header.start
            )));
        }
        Ok(Self {
            name,
            input,
            line,
            line_no: 1,
            header,
            warnings: Vec::new(),
            damaged: 0,
            listed: 0,
            done: false,
        })
    }

    /// Lines skipped as damaged (garbled, too long, a truncated last line, a compressed
    /// stream that stops): each is a record the report lacks.
    pub fn damaged(&self) -> u64 {
        self.damaged
    }

    fn warn_damaged(&mut self, what: String) {
        self.damaged += 1;
        self.listed += 1;
        if self.listed <= LISTED_WARNINGS {
            self.warnings
                .push(format!("{}:{}: {what}", self.name, self.line_no));
        }
    }

    /// A second header on the current line ends the reading: see [`ReadError::SecondHeader`].
    fn second_header(&mut self, second: Option<TraceId>) -> ReadError {
        self.done = true;
        ReadError::SecondHeader {
            name: self.name.clone(),
            line: self.line_no,
            first: TraceId::of(&self.header),
            second,
        }
    }

    /// The next record; None at the end (or where the file is cut short).
    pub fn next_record(&mut self) -> Result<Option<RecordIn>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.line_no += 1;
            let ended = match read_line(&mut self.input, &mut self.line, MAX_LINE) {
                Ok(LineEnd::Newline) => true,
                Ok(LineEnd::Eof) => false,
                Ok(LineEnd::TooLong) => {
                    self.warn_damaged(format!(
                        "a line longer than {} MiB: skipped",
                        MAX_LINE >> 20
                    ));
                    continue;
                }
                Err(e) if is_cut_short(&e) => {
                    self.done = true;
                    self.damaged += 1;
                    self.warnings.push(format!(
                        "{}: the file is cut short after line {} ({e}): the tracer was killed \
                         or its disk filled; read up to the last whole record",
                        self.name,
                        self.line_no - 1
                    ));
                    return Ok(None);
                }
                Err(source) => {
                    return Err(ReadError::Io {
                        name: self.name.clone(),
                        source,
                    })
                }
            };
            if self.line.is_empty() {
                self.done = true;
                return Ok(None);
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<RecordIn>(&self.line) {
                Ok(RecordIn::Header(h)) => {
                    return Err(self.second_header(Some(TraceId::of(&h))));
                }
                Ok(r) => return Ok(Some(r)),
                Err(_) if !ended => {
                    self.done = true;
                    self.damaged += 1;
                    self.warnings.push(format!(
                        "{}:{}: the last line is truncated ({} bytes, no newline): skipped; \
                         the tracer was killed or its disk filled",
                        self.name,
                        self.line_no,
                        self.line.len()
                    ));
                    return Ok(None);
                }
                Err(e) => match serde_json::from_slice::<Value>(&self.line) {
                    Ok(v) if v.get("type").and_then(Value::as_str) == Some("header") => {
                        return Err(self.second_header(None));
                    }
                    // A record type this version does not know: the format may grow.
                    Ok(v)
                        if v.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !KNOWN_TYPES.contains(&t)) =>
                    {
                        return Ok(Some(RecordIn::Other))
                    }
                    Ok(_) => self
                        .warn_damaged(format!("a record this netwatch cannot read ({e}): skipped")),
                    Err(_) => self.warn_damaged("not JSON: skipped".to_owned()),
                },
            }
        }
    }

    /// Warnings, with the count of damaged lines not listed.
    pub fn finish_warnings(&mut self) -> Vec<String> {
        if self.listed > LISTED_WARNINGS {
            self.warnings.push(format!(
                "{}: {} more damaged lines skipped",
                self.name,
                self.listed - LISTED_WARNINGS
            ));
        }
        std::mem::take(&mut self.warnings)
    }
}

/// What a report looks at.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub ports: Vec<u16>,
    pub addrs: AddrFilter,
    pub has_addrs: bool,
    /// The time window, CLOCK_MONOTONIC of the trace.
    pub since_mono: Option<u64>,
    pub until_mono: Option<u64>,
}

impl ReplayFilter {
    /// Whether connections are filtered (so recorded snapshots, of all, do not apply).
    pub fn filters_connections(&self) -> bool {
        !self.ports.is_empty() || self.has_addrs
    }

    pub fn has_window(&self) -> bool {
        self.since_mono.is_some() || self.until_mono.is_some()
    }

    pub fn connection(&self, saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(&sport) || self.ports.contains(&dport))
            && self.addrs.matches_addrs(saddr, daddr)
    }

    pub fn in_window(&self, mono_ns: u64) -> bool {
        self.since_mono.is_none_or(|s| mono_ns >= s) && self.until_mono.is_none_or(|u| mono_ns <= u)
    }

    /// An alert is kept when it is in the window and, if it names endpoints or ports, one
    /// of them passes the connection filter.
    pub fn alert(&self, a: &RecordedAlert) -> bool {
        if !self.in_window(a.mono_ns) {
            return false;
        }
        if !self.filters_connections() {
            return true;
        }
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        for (k, v) in &a.evidence {
            match (k.as_str(), v) {
                ("saddr" | "daddr" | "addr", Value::String(s)) => {
                    addrs.extend(s.parse::<IpAddr>().ok())
                }
                ("sport" | "dport", v) => ports.extend(v.as_u64().map(|p| p as u16)),
                ("ports", Value::Array(a)) => {
                    ports.extend(a.iter().filter_map(|p| p.as_u64().map(|p| p as u16)))
                }
                ("listener", Value::String(s)) => {
                    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
                        addrs.push(sa.ip());
                        ports.push(sa.port());
                    }
                }
                _ => {}
            }
        }
        let port_ok = self.ports.is_empty()
            || ports.is_empty()
            || ports.iter().any(|p| self.ports.contains(p));
        let addr_ok = !self.has_addrs
            || addrs.is_empty()
            || addrs.iter().any(|&a| self.addrs.matches_addrs(a, a));
        port_ok && addr_ok
    }
}

/// Gauges at one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugePoint {
    pub mono_ns: u64,
    /// Sockets in each state, by state number.
    pub states: [u64; state::COUNT],
    /// Entries into each state during the interval before.
    pub entered: [u64; state::COUNT],
    pub interval_ns: u64,
    pub lost: u64,
    /// conntrack `count`, `max` and `table_full_drops` when recorded.
    pub conntrack: Option<(Option<u64>, Option<u64>, u64)>,
    /// Sockets in each state per network namespace, as replayed: each namespace's limits
    /// are its own, so findings weigh its own numbers against them.
    pub per_netns: BTreeMap<u32, [u64; state::COUNT]>,
}

/// The replay of one trace (all its parts).
pub struct Replay {
    pub filter: ReplayFilter,
    full: Aggregator,
    window: Option<Aggregator>,
    census_batch: Vec<Existing>,
    census_key: Option<(u32, u64)>,
    pub census: u64,
    /// Transitions read, and those applied (passing the filters, in the window).
    pub transitions_read: u64,
    pub transitions: u64,
    pub gauges: Vec<GaugePoint>,
    pub alerts: Vec<RecordedAlert>,
    pub summary: Option<SummaryJson>,
    /// Snapshots recomputed, and those that came out different from the recorded ones
    /// (only compared when nothing was filtered out), with the first differences.
    pub snapshots_checked: u64,
    pub snapshots_differing: u64,
    pub differences: Vec<String>,
    /// Highest `lost` seen in a snapshot or the summary.
    pub lost: u64,
    /// CLOCK_MONOTONIC of the last record read.
    pub last_mono: u64,
    /// False when part of the trace is missing (a deleted part, a part not given), so the
    /// recomputed state cannot be compared with the recorded one.
    pub complete: bool,
}

fn state_map(m: &ByState<u64>) -> [u64; state::COUNT] {
    let mut out = [0; state::COUNT];
    for (k, v) in m {
        if let Some(s) = state::from_name(k) {
            out[s as usize] = *v;
        }
    }
    out
}

impl Replay {
    pub fn new(filter: ReplayFilter) -> Self {
        let window = filter.has_window().then(Aggregator::new);
        Self {
            filter,
            full: Aggregator::new(),
            window,
            census_batch: Vec::new(),
            census_key: None,
            census: 0,
            transitions_read: 0,
            transitions: 0,
            gauges: Vec::new(),
            alerts: Vec::new(),
            summary: None,
            snapshots_checked: 0,
            snapshots_differing: 0,
            differences: Vec::new(),
            lost: 0,
            last_mono: 0,
            complete: true,
        }
    }

    /// Marks a gap: records are missing before what comes next.
    pub fn gap(&mut self) {
        self.complete = false;
    }

    fn seed_batch(&mut self) {
        if let Some((_, mono)) = self.census_key.take() {
            let batch = std::mem::take(&mut self.census_batch);
            self.full.seed(mono, batch);
        }
    }

    /// Applies one record.
    pub fn apply(&mut self, r: RecordIn) {
        if !matches!(r, RecordIn::Census(_)) {
            self.seed_batch();
        }
        match r {
            RecordIn::Census(c) => {
                // The live engine seeded each namespace's census in one call.
                let key = (c.netns, c.mono_ns);
                if self.census_key.is_some_and(|k| k != key) {
                    self.seed_batch();
                }
                self.census_key = Some(key);
                self.last_mono = self.last_mono.max(c.mono_ns);
                if !self.filter.connection(c.saddr, c.sport, c.daddr, c.dport) {
                    return;
                }
                self.census += 1;
                self.census_batch.push(Existing {
                    sock_id: c.sock_id,
                    state: state::from_name(&c.state).unwrap_or(0),
                    sport: c.sport,
                    daddr: c.daddr,
                    dport: c.dport,
                    age_ns: c.age_ns,
                    owner: c.pid.map(|pid| Owner {
                        pid,
                        comm: Arc::from(c.comm.as_deref().unwrap_or("")),
                        container: None,
                    }),
                    netns: c.netns,
                    cgroup: 0,
                });
            }
            RecordIn::Transition(t) => {
                self.transitions_read += 1;
                self.last_mono = self.last_mono.max(t.mono_ns);
                if !self.filter.connection(t.saddr, t.sport, t.daddr, t.dport) {
                    return;
                }
                let tr = t.to_transition();
                self.full.apply(&tr);
                match self.window.as_mut() {
                    Some(w) if self.filter.in_window(tr.mono_ns) => {
                        w.apply(&tr);
                        self.transitions += 1;
                    }
                    Some(_) => {}
                    None => self.transitions += 1,
                }
            }
            RecordIn::TimewaitReset(r) => {
                self.last_mono = self.last_mono.max(r.mono_ns);
                if !self.filter.connection(r.saddr, r.sport, r.daddr, r.dport) {
                    return;
                }
                let ev = r.to_event();
                self.full.timewait_reset(&ev);
                if let Some(w) = self.window.as_mut() {
                    w.timewait_reset(&ev);
                }
            }
            RecordIn::Snapshot(s) => self.snapshot(*s),
            RecordIn::Alert(a) => {
                self.last_mono = self.last_mono.max(a.mono_ns);
                if let Some(a) = RecordedAlert::of(a).filter(|a| self.filter.alert(a)) {
                    self.alerts.push(a);
                }
            }
            RecordIn::Summary(s) => {
                self.last_mono = self.last_mono.max(s.mono_ns);
                self.lost = self.lost.max(s.lost);
                self.summary = Some(s.into_owned());
            }
            RecordIn::Header(h) => self.last_mono = self.last_mono.max(h.mono_ns),
            RecordIn::PartEnd(_) | RecordIn::Other => {}
        }
    }

    /// Seeds a census that ended the input; early ends still waiting get no evidence now.
    pub fn end(&mut self) {
        self.seed_batch();
        self.full.finish();
        if let Some(w) = self.window.as_mut() {
            w.finish();
        }
    }

    fn snapshot(&mut self, s: SnapshotJson) {
        self.last_mono = self.last_mono.max(s.mono_ns);
        self.lost = self.lost.max(s.lost);
        // Request sockets and accept queues were listed by sock_diag live, not from
        // records: take what the snapshot recorded, as the census is taken from its records.
        if let Some(&n) = s.states.get(state::name(state::SYN_RECV)) {
            let age = s
                .age
                .get(state::name(state::SYN_RECV))
                .map_or_else(Percentiles::default, |&p| p.into());
            self.full
                .set_recorded_queues(s.mono_ns, n, age, s.accept_queued);
        }
        let replayed = self.full.snapshot(s.mono_ns, s.lost);
        if !self.filter.filters_connections() && self.complete {
            self.snapshots_checked += 1;
            let diffs = snapshot_differences(&s, &replayed);
            if !diffs.is_empty() {
                self.snapshots_differing += 1;
                if self.differences.len() < LISTED_WARNINGS {
                    self.differences
                        .push(format!("snapshot at {}: {}", s.ts, diffs.join("; ")));
                }
            }
        }
        if !self.filter.in_window(s.mono_ns) {
            return;
        }
        // Unfiltered, the recorded gauges are the truth (they count the census even where a
        // part is missing); filtered, only the replay knows.
        let (states, entered) = if self.filter.filters_connections() {
            (
                std::array::from_fn(|i| replayed.states[i].now),
                std::array::from_fn(|i| replayed.states[i].entered),
            )
        } else {
            (state_map(&s.states), state_map(&s.entered))
        };
        self.gauges.push(GaugePoint {
            mono_ns: s.mono_ns,
            states,
            entered,
            interval_ns: s.interval_ns,
            lost: s.lost,
            conntrack: s
                .conntrack
                .as_ref()
                .map(|c| (c.count, c.max, c.table_full_drops)),
            per_netns: replayed.per_netns.clone(),
        });
    }

    /// The engine's view at `mono_ns`: dwells of the window (or of everything), and the
    /// sockets alive then with their ages.
    pub fn view(&self, mono_ns: u64) -> (Snapshot, Snapshot) {
        let alive = self.full.peek(mono_ns, self.lost);
        let dwells = match &self.window {
            Some(w) => w.peek(mono_ns, self.lost),
            None => alive.clone(),
        };
        (dwells, alive)
    }

    /// Compares the final view with the recorded summary: None when not comparable.
    pub fn check_summary(&self) -> Option<Vec<String>> {
        let s = self.summary.as_ref()?;
        if self.filter.filters_connections() || self.filter.has_window() || !self.complete {
            return None;
        }
        let view = self.full.peek(s.mono_ns, s.lost);
        let mut diffs = Vec::new();
        if view.transitions != s.transitions {
            diffs.push(format!(
                "transitions {} recorded, {} replayed",
                s.transitions, view.transitions
            ));
        }
        for st in reported_states() {
            let name = state::name(st);
            let stats = view.state(st);
            let rec = s.states.get(name).copied().unwrap_or(0);
            if rec != stats.now {
                diffs.push(format!("{name} now {rec} recorded, {} replayed", stats.now));
            }
            let rec = s.dwell.get(name).copied().unwrap_or_default();
            if rec != PercentilesJson::from(stats.dwell) {
                diffs.push(format!(
                    "{name} dwell {rec:?} recorded, {:?} replayed",
                    stats.dwell
                ));
            }
            let rec: Vec<(u64, u64)> = s
                .histogram
                .get(name)
                .map(|b| b.iter().map(|b| (b.upper_ns, b.count)).collect())
                .unwrap_or_default();
            let got: Vec<(u64, u64)> = stats
                .buckets
                .iter()
                .map(|b| (b.upper_ns, b.count))
                .collect();
            if rec != got {
                diffs.push(format!(
                    "{name} histogram {rec:?} recorded, {got:?} replayed"
                ));
            }
            let rec = s.age.get(name).copied().unwrap_or_default();
            if rec != PercentilesJson::from(stats.age) {
                diffs.push(format!(
                    "{name} age {rec:?} recorded, {:?} replayed",
                    stats.age
                ));
            }
        }
        if let Some(r) = s.timewait_early_ends {
            if r != view.timewait_early_ends {
                diffs.push(format!(
                    "timewait_early_ends {r:?} recorded, {:?} replayed",
                    view.timewait_early_ends
                ));
            }
        }
        Some(diffs)
    }
}

/// Where a recomputed snapshot differs from the recorded one.
fn snapshot_differences(rec: &SnapshotJson, got: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = rec.timewait_early_ends {
        if r != got.timewait_early_ends {
            out.push(format!(
                "timewait_early_ends {r:?} recorded, {:?} replayed",
                got.timewait_early_ends
            ));
        }
    }
    if rec.transitions != got.transitions {
        out.push(format!(
            "transitions {} recorded, {} replayed",
            rec.transitions, got.transitions
        ));
    }
    for st in reported_states() {
        let name = state::name(st);
        let stats = got.state(st);
        let pairs = [
            ("now", rec.states.get(name).copied().unwrap_or(0), stats.now),
            (
                "entered",
                rec.entered.get(name).copied().unwrap_or(0),
                stats.entered,
            ),
        ];
        for (what, r, g) in pairs {
            if r != g {
                out.push(format!("{name} {what} {r} recorded, {g} replayed"));
            }
        }
        for (what, map, p) in [
            ("dwell", &rec.dwell, stats.dwell),
            ("age", &rec.age, stats.age),
        ] {
            let r = map.get(name).copied().unwrap_or_default();
            if r != PercentilesJson::from(p) {
                out.push(format!("{name} {what} {r:?} recorded, {p:?} replayed"));
            }
        }
    }
    out
}

#[cfg(test)]
mod damage;
#[cfg(test)]
pub mod tests;
