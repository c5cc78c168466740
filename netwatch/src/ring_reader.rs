//! The kernel's ring buffer, emptied on a thread of its own.
//!
//! The trace loop drains every 20 ms, but whatever it does in between delays the next
//! drain: a netlink dump of a full socket table, a snapshot over 131k live sockets, a slow
//! terminal or disk. Under load those pauses were measured at up to 0.6 s (15.9 MB of
//! records waiting in one drain, at 16 clients with the machine's load average at 12), so
//! the ring had to hold all of that, and VmHWM counts a ring's pages twice (they are mapped
//! twice). This thread only copies records out, so the ring has to cover its few
//! milliseconds between reads; a slow trace loop's backlog waits in ordinary memory,
//! counted once and only while it exists. Past [`MAX_QUEUED`] the thread stops copying:
//! the ring fills and the kernel counts what it cannot send, as it would without it.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

/// How often the thread empties the ring: at the highest record rate measured here
/// (~500k records/s of 104 bytes) that is ~0.3 MB, a small part of
/// `netwatch_common::names::limits::EVENTS_BYTES`.
const READ_EVERY: Duration = Duration::from_millis(5);
/// Records copied but not yet taken by the trace loop, at most (bytes, with framing).
const MAX_QUEUED: usize = 64 << 20;
/// A chunk is sent on when it reaches this size, so the trace loop can start on a long
/// read before it ends.
const CHUNK_BYTES: usize = 1 << 20;
/// How long [`RingReader::sync`] waits for the thread at most.
const SYNC_LIMIT: Duration = Duration::from_secs(1);
/// Each record in a chunk is preceded by its length, as a little-endian u32.
const LEN_BYTES: usize = 4;
/// Emptied chunks the thread keeps for reuse, at most: fresh ones cost their pages' faults
/// and zeroing on every read (~4 % of a live view's CPU under load); more than a couple
/// would keep a past backlog's memory.
const SPARE_CHUNKS: usize = 2;

pub struct RingReader {
    chunks: Receiver<Vec<u8>>,
    /// Emptied chunks, back to the thread for reuse.
    spent: Sender<Vec<u8>>,
    /// The chunk being handed out, and where its next record starts.
    chunk: Vec<u8>,
    pos: usize,
    queued: Arc<AtomicUsize>,
    /// Reads of the ring the thread has completed.
    reads: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RingReader {
    pub fn spawn(ring: RingBuf<MapData>) -> io::Result<Self> {
        let (tx, chunks) = mpsc::channel();
        let (spent, spare) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, r, s) = (Arc::clone(&queued), Arc::clone(&reads), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("netwatch-ring".into())
            .spawn(move || copy_out(ring, &tx, &spare, &q, &r, &s))?;
        Ok(Self {
            chunks,
            spent,
            chunk: Vec::new(),
            pos: 0,
            queued,
            reads,
            stop,
            thread: Some(thread),
        })
    }

    /// The next record copied so far, without waiting.
    pub fn next(&mut self) -> Option<&[u8]> {
        while self.pos >= self.chunk.len() {
            let mut done = std::mem::take(&mut self.chunk);
            self.queued.fetch_sub(done.len(), Ordering::Relaxed);
            if done.capacity() > 0 {
                done.clear();
                // Gone only when the thread is: then nobody reuses it.
                let _ = self.spent.send(done);
            }
            self.pos = 0;
            self.chunk = self.chunks.try_recv().ok()?;
        }
        let at = self.pos;
        let len = u32::from_le_bytes(self.chunk.get(at..at + LEN_BYTES)?.try_into().ok()?);
        let start = at + LEN_BYTES;
        self.pos = start + len as usize;
        self.chunk.get(start..self.pos)
    }

    /// Returns once the thread has read the ring through at least once since the call (or
    /// after [`SYNC_LIMIT`]), so [`Self::next`] hands out everything sent before it. The
    /// thread keeps reading afterwards: stopped at the end of a trace, it would leave the
    /// ring to fill with records nobody asked for (timewait sockets keep dying after the
    /// load stops) while the last summary is written, and count them as lost.
    pub fn sync(&self) {
        let Some(t) = &self.thread else { return };
        // The read in progress may have started before the call: wait for the next one.
        let target = self.reads.load(Ordering::Acquire) + 2;
        let deadline = std::time::Instant::now() + SYNC_LIMIT;
        while self.reads.load(Ordering::Acquire) < target
            && !t.is_finished()
            && std::time::Instant::now() < deadline
        {
            t.thread().unpark();
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the thread after one last read of the ring; what it read is still handed out
    /// by [`Self::next`].
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // A panic in the thread has already been reported by the panic hook.
            let _ = t.join();
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Room for a full chunk: it is sent once it reaches [`CHUNK_BYTES`], so it holds at most
/// one record more.
const FULL_CHUNK: usize = CHUNK_BYTES + CHUNK_BYTES / 4;

fn copy_out(
    mut ring: RingBuf<MapData>,
    tx: &mpsc::Sender<Vec<u8>>,
    spare: &Receiver<Vec<u8>>,
    queued: &AtomicUsize,
    reads: &AtomicU64,
    stop: &AtomicBool,
) {
    crate::record_priority::raise();
    // Each chunk starts at the size the last read filled, so a read does not grow it by
    // doubling (reallocations and their copies were ~2 % of a live view's CPU).
    let mut expect = 0;
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(SPARE_CHUNKS);
    // A spare if there is one (it keeps the capacity it grew to), else a new chunk.
    let fresh = |pool: &mut Vec<Vec<u8>>, capacity: usize| {
        for c in spare.try_iter() {
            if pool.len() < SPARE_CHUNKS {
                pool.push(c);
            }
        }
        pool.pop().unwrap_or_else(|| Vec::with_capacity(capacity))
    };
    loop {
        // Read once more after being told to stop: records sent before then count.
        let last = stop.load(Ordering::Relaxed);
        let mut chunk = fresh(&mut pool, expect);
        let mut full = false;
        let send = |chunk: Vec<u8>| {
            queued.fetch_add(chunk.len(), Ordering::Relaxed);
            tx.send(chunk).is_ok()
        };
        while last || queued.load(Ordering::Relaxed) < MAX_QUEUED {
            let Some(item) = ring.next() else { break };
            chunk.extend_from_slice(&(item.len() as u32).to_le_bytes());
            chunk.extend_from_slice(&item);
            drop(item);
            if chunk.len() >= CHUNK_BYTES {
                // A full chunk: the read goes on in another of full size, as the next read
                // will start.
                full = true;
                let next = fresh(&mut pool, FULL_CHUNK);
                if !send(std::mem::replace(&mut chunk, next)) {
                    return;
                }
            }
        }
        expect = if full { FULL_CHUNK } else { chunk.len() };
        if chunk.is_empty() {
            if chunk.capacity() > 0 && pool.len() < SPARE_CHUNKS {
                pool.push(chunk);
            }
        } else if !send(chunk) {
            return;
        }
        reads.fetch_add(1, Ordering::Release);
        if last {
            return;
        }
        thread::park_timeout(READ_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader fed by hand, as the thread would feed it.
    fn fed(chunks: Vec<Vec<u8>>) -> RingReader {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        for c in chunks {
            queued.fetch_add(c.len(), Ordering::Relaxed);
            tx.send(c).unwrap();
        }
        RingReader {
            chunks: rx,
            spent: mpsc::channel().0,
            chunk: Vec::new(),
            pos: 0,
            queued,
            reads: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    #[test]
    fn emptied_chunks_go_back_for_reuse() {
        let mut r = fed(Vec::new());
        let (spent, back) = mpsc::channel();
        r.spent = spent;
        let (tx, rx) = mpsc::channel();
        r.chunks = rx;
        let chunk = framed(&[b"ab"]);
        r.queued.fetch_add(chunk.len(), Ordering::Relaxed);
        tx.send(chunk).unwrap();
        assert_eq!(r.next(), Some(&b"ab"[..]));
        assert_eq!(r.next(), None);
        let reused = back.try_recv().expect("the emptied chunk comes back");
        assert!(reused.is_empty() && reused.capacity() > 0);
        assert_eq!(r.queued.load(Ordering::Relaxed), 0);
    }

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut c = Vec::new();
        for r in records {
            c.extend_from_slice(&(r.len() as u32).to_le_bytes());
            c.extend_from_slice(r);
        }
        c
    }

    #[test]
    fn hands_out_records_across_chunks_and_counts_them_off() {
        let mut r = fed(vec![
            framed(&[b"abc", b"de"]),
            Vec::new(),
            framed(&[b"", b"fghij"]),
        ]);
        let mut got = Vec::new();
        while let Some(rec) = r.next() {
            got.push(rec.to_vec());
        }
        assert_eq!(
            got,
            vec![b"abc".to_vec(), b"de".to_vec(), vec![], b"fghij".to_vec()]
        );
        assert_eq!(r.queued.load(Ordering::Relaxed), 0);
        assert!(r.next().is_none());
    }
}
