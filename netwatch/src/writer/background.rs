//! The trace file written by a thread of its own, fed through the bounded [`Queue`], so that
//! neither a slow reader nor a FIFO nobody has opened yet ever holds up the drain of the
//! kernel's buffer or the end of `--duration`.
//!
//! At the end the trace loop gives the writer a short grace to catch up ([`Background::settle`]),
//! drops what it still has not taken (counted), then queues the summary and waits, again
//! boundedly, for the file to be finished ([`Background::finish`]). A writer stuck beyond that
//! (a reader that stopped reading) is left behind with a message that says what the trace
//! lacks: netwatch exits anyway.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::queue::{Batch, Next, Queue};
use super::{Finished, Storage, TraceWriter, WriteError};
use crate::core::record::RecordCounts;

/// How long the end of a trace waits for a writer that is behind, twice at most: once for the
/// records, once for the summary.
pub const GRACE: Duration = Duration::from_secs(2);

/// How often the writer thread looks at the clock for a due flush when no record arrives.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Why the trace could not be finished.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "the trace output did not take its last records within {0:?} (nobody reads it, or its \
         reader stopped reading): it ends without its summary"
    )]
    Stuck(Duration),
}

/// A finished trace, and what went wrong on the way that did not stop it (an old rotated
/// part that could not be deleted).
#[derive(Debug)]
pub struct Done {
    pub finished: Finished,
    pub warnings: Vec<String>,
}

pub struct Background {
    queue: Arc<Queue>,
    /// A write failure, reported by the writer thread, not yet given to the trace loop.
    failure: Arc<Mutex<Option<WriteError>>>,
    done: mpsc::Receiver<Result<Done, WriteError>>,
}

impl Background {
    /// Starts the writer thread: it makes the first file with `open` (a FIFO's open waits
    /// there for a reader), then writes what arrives.
    pub fn spawn<S, O>(
        storage: S,
        open: O,
        opts: super::Options,
        framing: Box<dyn super::Framing + Send>,
        capacity: usize,
    ) -> std::io::Result<Self>
    where
        S: Storage + Send + 'static,
        O: FnOnce() -> std::io::Result<S::File> + Send + 'static,
        S::File: Send,
    {
        let queue = Arc::new(Queue::new(capacity));
        let failure = Arc::new(Mutex::new(None));
        let (tx, done) = mpsc::channel();
        let (q, f) = (queue.clone(), failure.clone());
        let path = storage.path(0);
        std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || {
                crate::record_priority::raise();
                let writer = open()
                    .map_err(|error| WriteError::Create { path, error })
                    .and_then(|file| TraceWriter::new(storage, file, opts, framing));
                let result = match writer {
                    Ok(w) => write_until_last(w, &q, &f),
                    // Said through `failure`, like any write failure; no file to list.
                    Err(e) => {
                        f.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                        Ok(Done {
                            finished: Finished::default(),
                            warnings: Vec::new(),
                        })
                    }
                };
                let _ = tx.send(result);
            })?;
        Ok(Self {
            queue,
            failure,
            done,
        })
    }

    /// Hands a drain's records to the writer; never waits. False when they were dropped.
    pub fn send(&mut self, batch: Batch) -> bool {
        self.queue.push(batch)
    }

    /// A write failure since the last call (the file ends at its last whole record). A writer
    /// that could not even start (its file could not be made) says so here too.
    pub fn failure(&mut self) -> Option<WriteError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Records dropped so far, by type.
    pub fn dropped(&self) -> RecordCounts {
        self.queue.dropped()
    }

    /// A buffer for the next batch (one the writer is done with, where there is one).
    pub fn buffer(&self) -> Vec<u8> {
        self.queue.buffer()
    }

    /// Waits up to `grace` for the writer to take all but `bytes` of what it was given, for a
    /// producer that can wait (the census), so that it does not queue far ahead of the file.
    pub fn pace(&self, bytes: usize, grace: Duration) {
        self.queue.wait_at_most(bytes, grace);
    }

    /// Gives the writer up to `grace` to take every queued record, then drops (and counts)
    /// what it has not: after this, what was sent less [`Background::dropped`] is what the
    /// trace holds.
    pub fn settle(&self, grace: Duration) {
        if !self.queue.wait_taken(grace) {
            self.queue.discard();
        }
    }

    /// Queues `last` (the summary) and waits up to `grace` for the file to be finished.
    pub fn finish(self, last: Vec<u8>, grace: Duration) -> Result<Done, FinishError> {
        self.queue.finish(last);
        let deadline = Instant::now() + grace;
        let r = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match r {
            Ok(r) => Ok(r?),
            Err(_) => Err(FinishError::Stuck(grace)),
        }
    }
}

/// The writer thread's loop: records as they come, flushed on the writer's schedule, until
/// the last record.
fn write_until_last<S: Storage>(
    mut w: TraceWriter<S>,
    queue: &Queue,
    failure: &Mutex<Option<WriteError>>,
) -> Result<Done, WriteError> {
    let report = |e: WriteError| {
        failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    };
    loop {
        match queue.take(IDLE_WAKE) {
            Next::Records(b) => {
                w.push_with(|buf| buf.extend_from_slice(&b.bytes));
                queue.give_back(b.bytes);
            }
            Next::Last(last) => {
                let finished = w.finish(&last)?;
                let warnings = std::mem::take(&mut w.warnings);
                return Ok(Done { finished, warnings });
            }
            Next::Idle => {}
        }
        if w.due(Instant::now()) {
            if let Err(e) = w.flush() {
                report(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::path::PathBuf;
    use std::sync::mpsc::{Receiver, Sender};

    use super::*;
    use crate::writer::queue::total;
    use crate::writer::{Framing, Options, PartFile};

    /// A file whose every write waits for a word on its gate (a reader that reads nothing
    /// until told), and keeps what it was given.
    struct Gated {
        gate: Option<Receiver<()>>,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(gate) = &self.gate {
                // A dropped sender opens the gate for good.
                if gate.recv().is_err() {
                    self.gate = None;
                }
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl PartFile for Gated {
        fn truncate(&mut self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn unlinked(&self) -> bool {
            false
        }
    }

    struct OneFile;

    impl Storage for OneFile {
        type File = Gated;
        fn create(&mut self, _: u32) -> io::Result<Gated> {
            Err(io::Error::other("no rotation here"))
        }
        fn remove(&mut self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn path(&self, _: u32) -> PathBuf {
            PathBuf::from("/gated/trace.jsonl")
        }
    }

    struct Lines;

    impl Framing for Lines {
        fn header(&mut self, _: u32) -> Vec<u8> {
            b"header\n".to_vec()
        }
        fn part_end(&mut self, _: u32, _: &str) -> Vec<u8> {
            b"part_end\n".to_vec()
        }
    }

    fn opts() -> Options {
        Options {
            gzip: false,
            rotation: None,
            flush_every: Duration::ZERO,
        }
    }

    /// What a gated file was given.
    type Kept = Arc<Mutex<Vec<u8>>>;

    /// A writer over a file, gated or not; the gate's key when gated.
    fn spawn(gated: bool) -> (Background, Kept, Option<Sender<()>>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let file = Gated {
            gate: gated.then_some(rx),
            kept: kept.clone(),
        };
        let bg =
            Background::spawn(OneFile, move || Ok(file), opts(), Box::new(Lines), 1 << 10).unwrap();
        (bg, kept, gated.then_some(tx))
    }

    fn batch(text: &str) -> Batch {
        Batch {
            bytes: text.as_bytes().to_vec(),
            records: RecordCounts {
                transition: text.lines().count() as u64,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_writer_that_keeps_up_writes_everything_then_the_last_record() {
        let (mut bg, kept, _) = spawn(false);
        assert!(bg.send(batch("a\nb\n")));
        assert!(bg.send(batch("c\n")));
        bg.settle(GRACE);
        assert_eq!(total(&bg.dropped()), 0);
        let done = bg.finish(b"summary\n".to_vec(), GRACE).unwrap();
        assert_eq!(done.finished.files, [PathBuf::from("/gated/trace.jsonl")]);
        assert_eq!(&*kept.lock().unwrap(), b"header\na\nb\nc\nsummary\n");
    }

    #[test]
    fn a_stuck_writer_costs_bounded_time_and_every_record_it_lacks_is_counted() {
        let (mut bg, kept, gate) = spawn(true);
        let started = Instant::now();
        // 300 bytes a batch into 1 KiB: the writer, stuck on the header, takes one at most.
        let sent = 20;
        let kept_in_queue = (0..sent)
            .filter(|_| bg.send(batch(&"x\n".repeat(150))))
            .count() as u64;
        assert!(kept_in_queue < sent, "the queue is bounded");
        bg.settle(Duration::from_millis(50));
        // Every batch but the one the writer may hold is dropped and counted.
        let dropped = bg.dropped().transition;
        assert!(dropped >= (sent - 1) * 150, "{dropped}");
        let r = bg.finish(b"summary\n".to_vec(), Duration::from_millis(50));
        assert!(matches!(r, Err(FinishError::Stuck(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Nothing got past the gate; opening it lets the thread end.
        assert!(kept.lock().unwrap().is_empty());
        drop(gate);
    }

    #[test]
    fn a_first_file_that_cannot_be_made_is_a_failure_said_once() {
        let bg = Background::spawn(
            OneFile,
            || Err(io::Error::from_raw_os_error(libc::EACCES)),
            opts(),
            Box::new(Lines),
            1 << 10,
        );
        let mut bg = bg.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let failure = loop {
            if let Some(f) = bg.failure() {
                break f;
            }
            assert!(Instant::now() < deadline, "the failure was never said");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            failure.to_string().contains("/gated/trace.jsonl"),
            "{failure}"
        );
        assert!(bg.failure().is_none());
        let done = bg.finish(b"summary\n".to_vec(), GRACE).unwrap();
        assert!(done.finished.files.is_empty());
    }
}
