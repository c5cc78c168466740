//! Where decoded events go: human lines on stdout and/or a JSON Lines trace.
//!
//! Each drain of the ring buffer is formatted into one buffer per destination and written
//! with a single call, so the per-event cost is formatting alone and nothing is formatted
//! for a destination that is not in use.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::OutputTarget;
use crate::core::{
    clock::WallClock,
    event::{Event, Transition},
    json::{self, AlertJson, Record, SnapshotJson, TransitionJson},
    signals::Alert,
    snapshot::Snapshot,
    text,
};

enum JsonDest {
    Stdout,
    File { path: PathBuf, file: File },
}

pub struct Sinks {
    clock: WallClock,
    lines: Option<Vec<u8>>,
    /// Summaries for stdout; shares the flush path with `lines`.
    text: Option<Vec<u8>>,
    header_printed: bool,
    json: Option<(JsonDest, Vec<u8>)>,
    pub transitions: u64,
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

impl Sinks {
    pub fn new(clock: WallClock, lines: bool, text: bool, output: Option<OutputTarget>) -> Self {
        let json = output.map(|o| {
            let dest = match o {
                OutputTarget::Stdout => JsonDest::Stdout,
                OutputTarget::File { path, file } => JsonDest::File { path, file },
            };
            (dest, Vec::with_capacity(1 << 16))
        });
        Self {
            clock,
            lines: lines.then(|| Vec::with_capacity(1 << 16)),
            text: text.then(Vec::new),
            header_printed: false,
            json,
            transitions: 0,
        }
    }

    pub fn push(&mut self, event: &Event) {
        if let Event::Transition(t) = event {
            self.transition(t);
        }
    }

    pub fn alert(&mut self, alert: &Alert, mono_ns: u64) {
        if let Some((_, buf)) = self.json.as_mut() {
            json::write_line(
                buf,
                &Record::Alert(AlertJson::new(alert, mono_ns, self.clock)),
            );
        }
        for buf in [self.lines.as_mut(), self.text.as_mut()]
            .into_iter()
            .flatten()
        {
            buf.extend_from_slice(b"ALERT ");
            buf.extend_from_slice(alert.message().as_bytes());
            buf.push(b'\n');
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
        if let Some((_, buf)) = self.json.as_mut() {
            json::write_line(buf, &Record::Transition(TransitionJson::new(t, self.clock)));
        }
    }

    pub fn snapshot(&mut self, snap: &Snapshot) {
        if let Some((_, buf)) = self.json.as_mut() {
            json::write_line(buf, &Record::Snapshot(SnapshotJson::new(snap, self.clock)));
        }
    }

    /// Text for stdout outside the per-transition lines (plain summaries).
    pub fn print(&mut self, text: &str) {
        if let Some(buf) = self.text.as_mut() {
            buf.extend_from_slice(text.as_bytes());
        }
    }

    /// Writes out what the last drain produced.
    pub fn flush(&mut self) -> Result<(), SinkError> {
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
        if let Some((dest, buf)) = self.json.as_mut() {
            if !buf.is_empty() {
                let r = match dest {
                    JsonDest::Stdout => {
                        let mut out = io::stdout().lock();
                        out.write_all(buf).and_then(|_| out.flush())
                    }
                    JsonDest::File { file, .. } => file.write_all(buf),
                };
                buf.clear();
                r.map_err(|e| match dest {
                    JsonDest::Stdout if is_closed_pipe(&e) => SinkError::ClosedPipe,
                    JsonDest::Stdout => {
                        SinkError::Io(anyhow::Error::new(e).context("writing JSON to stdout"))
                    }
                    JsonDest::File { path, .. } => SinkError::Io(
                        anyhow::Error::new(e)
                            .context(format!("writing the trace to {}", path.display())),
                    ),
                })?;
            }
        }
        Ok(())
    }

    /// Makes the trace durable at exit.
    pub fn finish(&mut self) -> Result<()> {
        if let Some((JsonDest::File { path, file }, _)) = self.json.as_mut() {
            file.sync_data()
                .with_context(|| format!("syncing the trace {}", path.display()))?;
        }
        Ok(())
    }
}
