//! Where decoded events go: human lines on stdout and/or a JSON Lines trace.
//!
//! Each drain of the ring buffer is formatted into one buffer per destination, so the
//! per-event cost is formatting alone and nothing is formatted for a destination that is not
//! in use. stdout gets each drain with a single write; a trace file goes through
//! [`crate::writer`], which writes whole records once a second, rotates and compresses, and
//! survives a full disk. The trace starts with its header (at once) and the census, and
//! [`Sinks::finish`] ends it with the summary.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Result;

use crate::config::{open_fifo_waiting, open_output, Opened, OutputTarget};
use crate::core::{
    clock::{mono_now_ns, WallClock},
    event::{Event, Transition},
    json::{self, alert_kind},
    record::{
        AlertJson, CensusJson, HeaderJson, PartEndJson, Record, RecordCounts, SnapshotJson,
        SummaryJson, TimewaitResetJson,
    },
    signals::Alert,
    snapshot::Snapshot,
    text,
};
use crate::stop_signals;
use crate::writer::background::{self, Background, Done, FinishError};
use crate::writer::queue::{self, Batch};
use crate::writer::{self, Files, Finished, Framing, WriteError};

/// Opens the first trace file in the writer thread.
type OpenFn = Box<dyn FnOnce() -> io::Result<std::fs::File> + Send>;

enum JsonDest {
    /// Records for the trace file (or stdout), handed to its writer thread at every flush.
    File {
        writer: Background,
        path: PathBuf,
        batch: Vec<u8>,
        /// `records` as of the last hand-over: the next batch holds the difference.
        handed: RecordCounts,
        /// A write failed (reported): the file ends at its last whole record.
        failed: bool,
        /// `--output -`: a closed pipe ends the trace normally, and there is no file to list.
        stdout: bool,
    },
}

impl JsonDest {
    /// Starts the trace's writer thread over `storage` (whose first file `open` makes);
    /// `path` is `-` for stdout.
    fn spawn<S, O>(
        storage: S,
        open: O,
        opts: writer::Options,
        framing: TraceFraming,
        path: PathBuf,
    ) -> Result<Self>
    where
        S: writer::Storage + Send + 'static,
        O: FnOnce() -> io::Result<S::File> + Send + 'static,
        S::File: Send,
    {
        let writer = Background::spawn(storage, open, opts, Box::new(framing), queue::CAPACITY)
            .map_err(|e| anyhow::Error::new(e).context("starting the trace writer thread"))?;
        Ok(JsonDest::File {
            writer,
            stdout: path.as_os_str() == "-",
            path,
            batch: Vec::with_capacity(1 << 16),
            handed: RecordCounts::default(),
            failed: false,
        })
    }
}

pub struct Sinks {
    clock: WallClock,
    lines: Option<Vec<u8>>,
    /// Summaries for stdout; shares the flush path with `lines`.
    text: Option<Vec<u8>>,
    header_printed: bool,
    json: Option<JsonDest>,
    /// Bytes of records handed to the trace's writer (before any gzip): how big a plain
    /// file has grown.
    pub output_bytes: u64,
    pub transitions: u64,
    /// Records of each type written to the trace.
    pub records: RecordCounts,
    /// Alert records by kind.
    pub alert_kinds: BTreeMap<String, u64>,
    ts_cache: json::TsCache,
}

/// Why writing stopped.
#[derive(Debug)]
pub enum SinkError {
    /// stdout's reader went away (`netwatch trace | head`): a normal way to stop.
    ClosedPipe,
    Io(anyhow::Error),
}

fn is_closed_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Headers for the later parts of a rotated trace, and the records that close a part.
struct TraceFraming {
    header: HeaderJson,
    clock: WallClock,
}

impl Framing for TraceFraming {
    fn header(&mut self, part: u32) -> Vec<u8> {
        if part > 0 {
            let now = mono_now_ns();
            self.header.part = part;
            self.header.mono_ns = now;
            self.header.ts = self.clock.rfc3339(now);
        }
        let mut out = Vec::new();
        json::write_line(&mut out, &Record::header(&self.header));
        out
    }

    fn part_end(&mut self, part: u32, next: &str) -> Vec<u8> {
        let now = mono_now_ns();
        let mut out = Vec::new();
        json::write_line(
            &mut out,
            &Record::PartEnd(PartEndJson {
                ts: self.clock.rfc3339(now),
                mono_ns: now,
                part,
                next: next.to_owned(),
            }),
        );
        out
    }
}

impl Sinks {
    /// Opens the trace (its header is written at once) and the stdout views.
    pub fn new(
        clock: WallClock,
        lines: bool,
        text: bool,
        output: Option<OutputTarget>,
        header: HeaderJson,
    ) -> Result<Self> {
        let json = match output {
            None => None,
            Some(OutputTarget::Stdout) => {
                let opts = writer::Options {
                    gzip: false,
                    rotation: None,
                    // A pipe's reader (`| jq`) sees each drain as it comes.
                    flush_every: std::time::Duration::ZERO,
                };
                let framing = TraceFraming { header, clock };
                let open = writer::stdout::open;
                Some(JsonDest::spawn(
                    writer::stdout::Stdout,
                    open,
                    opts,
                    framing,
                    "-".into(),
                )?)
            }
            Some(OutputTarget::File {
                path,
                gzip,
                rotation,
                force,
            }) => {
                let opts = writer::Options {
                    gzip,
                    rotation,
                    flush_every: writer::FLUSH_EVERY,
                };
                let opened = stop_signals::create_output(&path, || open_output(&path, force))?;
                let framing = TraceFraming { header, clock };
                let open = match opened {
                    Opened::File(file) => Box::new(move || Ok(file)) as OpenFn,
                    Opened::FifoWithoutReader => {
                        eprintln!(
                            "netwatch: nobody reads the FIFO {} yet; tracing goes on, and its \
                             records wait in memory (up to {} MiB, then they are dropped and \
                             counted) until a reader opens it",
                            path.display(),
                            queue::CAPACITY >> 20
                        );
                        let fifo = path.clone();
                        Box::new(move || open_fifo_waiting(&fifo)) as OpenFn
                    }
                };
                let files = Files::new(path.clone(), force);
                Some(JsonDest::spawn(files, open, opts, framing, path)?)
            }
        };
        Ok(Self {
            clock,
            lines: lines.then(|| Vec::with_capacity(1 << 16)),
            text: text.then(Vec::new),
            header_printed: false,
            json,
            transitions: 0,
            records: RecordCounts::default(),
            alert_kinds: BTreeMap::new(),
            ts_cache: json::TsCache::default(),
            output_bytes: 0,
        })
    }

    fn record(&mut self, record: &Record<'_>) {
        match self.json.as_mut() {
            None => {}
            Some(JsonDest::File { batch, .. }) => json::write_line(batch, record),
        }
    }

    /// A socket that existed at start.
    pub fn census(&mut self, c: CensusJson<'_>) {
        if self.json.is_some() {
            self.records.census += 1;
            self.record(&Record::Census(c));
        }
    }

    /// Whether any output shows records one by one (the trace file, the event lines), and
    /// so needs each completed with its process and container.
    pub fn shows_records(&self) -> bool {
        self.json.is_some() || self.lines.is_some()
    }

    pub fn push(&mut self, event: &Event) {
        match event {
            Event::Transition(t) => self.transition(t),
            Event::TimewaitReset(r) if self.json.is_some() => {
                self.records.timewait_reset += 1;
                let clock = self.clock;
                self.record(&Record::TimewaitReset(TimewaitResetJson::new(r, clock)));
            }
            _ => {}
        }
    }

    /// One alert, with its namespace's name where it has one.
    pub fn alert(&mut self, alert: &Alert, mono_ns: u64, netns_name: Option<&str>) {
        if self.json.is_some() {
            self.records.alert += 1;
            *self.alert_kinds.entry(alert_kind(alert)).or_default() += 1;
            let clock = self.clock;
            let mut json = AlertJson::new(alert, mono_ns, clock);
            json.netns_name = netns_name.map(str::to_owned);
            self.record(&Record::Alert(json));
        }
        for buf in [self.lines.as_mut(), self.text.as_mut()]
            .into_iter()
            .flatten()
        {
            buf.extend_from_slice(alert.text_in(netns_name).as_bytes());
        }
    }

    fn transition(&mut self, t: &Transition) {
        self.transitions += 1;
        if let Some(buf) = self.lines.as_mut() {
            if !self.header_printed {
                buf.extend_from_slice(text::HEADER.as_bytes());
                buf.push(b'\n');
                self.header_printed = true;
            }
            buf.extend_from_slice(text::transition_line(t, self.clock).as_bytes());
            buf.push(b'\n');
        }
        if self.json.is_some() {
            self.records.transition += 1;
            let clock = self.clock;
            let ts = &mut self.ts_cache;
            match self.json.as_mut() {
                None => {}
                Some(JsonDest::File { batch, .. }) => json::write_transition(batch, t, clock, ts),
            }
        }
    }

    pub fn snapshot(&mut self, snap: &Snapshot) {
        if self.json.is_some() {
            self.records.snapshot += 1;
            let clock = self.clock;
            self.record(&Record::Snapshot(Box::new(SnapshotJson::new(snap, clock))));
        }
    }

    /// Text for stdout outside the per-transition lines (plain summaries).
    pub fn print(&mut self, text: &str) {
        if let Some(buf) = self.text.as_mut() {
            buf.extend_from_slice(text.as_bytes());
        }
    }

    fn flush_stdout(&mut self) -> Result<(), SinkError> {
        for buf in [self.lines.as_mut(), self.text.as_mut()]
            .into_iter()
            .flatten()
        {
            if !buf.is_empty() {
                let mut out = io::stdout().lock();
                let r = out.write_all(buf).and_then(|_| out.flush());
                buf.clear();
                r.map_err(|e| {
                    if is_closed_pipe(&e) {
                        SinkError::ClosedPipe
                    } else {
                        SinkError::Io(anyhow::Error::new(e).context("writing to stdout"))
                    }
                })?;
            }
        }
        Ok(())
    }

    fn writes_file(&self) -> bool {
        matches!(self.json, Some(JsonDest::File { stdout: false, .. }))
    }

    /// stdout's reader went away while the trace goes to a file: the file is what matters,
    /// so the views on stdout stop and tracing goes on.
    fn stdout_closed(&mut self) {
        if self.lines.take().is_some() | self.text.take().is_some() {
            eprintln!("netwatch: stdout was closed; tracing goes on into the trace file");
        }
    }

    /// Lets the trace file's writer catch up to `bytes` queued, for up to `grace`: for the
    /// census, which can wait (see [`crate::writer::background::Background::pace`]).
    pub fn pace(&self, bytes: usize, grace: std::time::Duration) {
        if let Some(JsonDest::File { writer, .. }) = &self.json {
            writer.pace(bytes, grace);
        }
    }

    /// Writes out what the last drain produced to stdout, and the trace file when its flush
    /// interval has passed.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        match self.flush_stdout() {
            Err(SinkError::ClosedPipe) if self.writes_file() => self.stdout_closed(),
            r => r?,
        }
        self.hand_over()
    }

    /// Gives the trace file's writer thread what was produced since the last time: never
    /// waits (a full queue drops the batch, counted), and reports a write that failed.
    fn hand_over(&mut self) -> Result<(), SinkError> {
        let records = self.records;
        let Some(JsonDest::File {
            writer,
            batch,
            handed,
            failed,
            stdout,
            ..
        }) = self.json.as_mut()
        else {
            return Ok(());
        };
        let bytes = std::mem::replace(batch, writer.buffer());
        self.output_bytes += bytes.len() as u64;
        writer.send(Batch {
            bytes,
            records: queue::minus(&records, handed),
        });
        *handed = records;
        match writer.failure() {
            Some(WriteError::Write { error, .. }) if *stdout && is_closed_pipe(&error) => {
                *failed = true;
                Err(SinkError::ClosedPipe)
            }
            Some(e) => {
                *failed = true;
                Err(SinkError::Io(e.into()))
            }
            None => Ok(()),
        }
    }

    /// Records the trace file's writer could not keep up with and dropped, by type.
    pub fn dropped(&self) -> RecordCounts {
        match &self.json {
            Some(JsonDest::File { writer, .. }) => writer.dropped(),
            _ => RecordCounts::default(),
        }
    }

    /// Hands over the last records and gives a writer that is behind a short grace
    /// ([`background::GRACE`]) to take them; what it has not taken by then is dropped.
    /// Afterwards [`Sinks::written`] is what the trace holds before its summary.
    pub fn settle(&mut self) -> Result<(), SinkError> {
        match self.flush_stdout() {
            Err(SinkError::ClosedPipe) if self.writes_file() => self.stdout_closed(),
            r => r?,
        }
        let r = self.hand_over();
        if let Some(JsonDest::File { writer, .. }) = &self.json {
            writer.settle(background::GRACE);
        }
        r
    }

    /// Records of each type in the trace: those made, less those its writer dropped.
    pub fn written(&self) -> RecordCounts {
        queue::minus(&self.records, &self.dropped())
    }

    /// Ends the trace with `summary`, and makes it durable. Nothing is written after a write
    /// failed (already reported): that file ends at its last whole record.
    pub fn finish(&mut self, summary: &SummaryJson) -> Result<Option<TraceFiles>> {
        match self.flush_stdout() {
            Ok(()) | Err(SinkError::ClosedPipe) => {}
            Err(SinkError::Io(e)) => return Err(e),
        };
        match self.json.as_mut() {
            None => Ok(None),
            Some(JsonDest::File { .. }) => {
                let Some(JsonDest::File {
                    writer,
                    path,
                    failed,
                    stdout,
                    ..
                }) = self.json.take()
                else {
                    unreachable!("matched above");
                };
                let mut line = Vec::new();
                json::write_line(&mut line, &Record::summary(summary));
                match writer.finish(line, background::GRACE) {
                    // A closed pipe was a normal end; there is no file to tell of.
                    Ok(_) if stdout => Ok(None),
                    Err(FinishError::Write(WriteError::Write { error, .. }))
                        if stdout && is_closed_pipe(&error) =>
                    {
                        Ok(None)
                    }
                    Ok(Done { finished, warnings }) => Ok(Some(TraceFiles {
                        complete: !failed
                            && !finished.files.is_empty()
                            && finished.unlinked.is_none(),
                        finished,
                        warnings,
                    })),
                    Err(FinishError::Write(e)) => Err(e.into()),
                    Err(e @ FinishError::Stuck(_)) => Ok(Some(TraceFiles {
                        finished: Finished {
                            files: if stdout { Vec::new() } else { vec![path] },
                            ..Finished::default()
                        },
                        complete: false,
                        warnings: vec![e.to_string()],
                    })),
                }
            }
        }
    }
}

/// The trace files at exit.
#[derive(Debug)]
pub struct TraceFiles {
    pub finished: Finished,
    /// Ends with the summary (false when writing failed earlier).
    pub complete: bool,
    pub warnings: Vec<String>,
}

impl TraceFiles {
    pub fn first(&self) -> Option<&PathBuf> {
        self.finished.files.first()
    }
}
