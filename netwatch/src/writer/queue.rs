//! The bounded queue between the drain of the kernel's ring buffer and the thread that writes
//! the trace.
//!
//! A write can block for as long as the output's reader likes (a FIFO read by a slow
//! consumer, nobody reading it yet, a stalled network file system). Were the drain to wait
//! for it, the kernel's ring buffer would overflow and `--duration` would stretch without
//! bound. So the drain never waits: each drain's records go in as one [`Batch`], and a batch
//! that would take the queue past its capacity is dropped, its records counted by type, so
//! that the summary, stderr and the exit code say what the trace lacks. The summary itself
//! never waits behind records ([`Queue::finish`]).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::core::record::RecordCounts;

/// Bytes of records the queue holds at most: tens of seconds of heavy churn (a record is
/// ~300 bytes, 100k records a second is 30 MB/s), and little enough memory to spend on a
/// server in trouble.
pub const CAPACITY: usize = 64 << 20;

/// Whole records, as one drain produced them, and how many of each type.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub records: RecordCounts,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What the writer thread takes next.
#[derive(Debug)]
pub enum Next {
    Records(Batch),
    /// The last record (the summary): write it after everything before it and finish.
    Last(Vec<u8>),
    /// Nothing arrived in the time given.
    Idle,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    bytes: usize,
    last: Option<Vec<u8>>,
    dropped: RecordCounts,
    /// Buffers of batches the writer has written, for the next batches.
    spare: Vec<Vec<u8>>,
}

/// Written batches' buffers kept for reuse, at most: a fresh buffer for every batch, grown
/// by doubling past glibc's mapping threshold (see `crate::heap`), cost page faults and
/// zeroing for every byte of JSON (JSON mode's CPU 14.0 -> 17.5 % of a core).
const SPARE_BUFFERS: usize = 3;

/// What a new batch buffer starts with.
const BUFFER_START: usize = 1 << 16;

pub struct Queue {
    state: Mutex<State>,
    changed: Condvar,
    capacity: usize,
}

/// `to += n`, by type.
pub fn add_to(to: &mut RecordCounts, n: &RecordCounts) {
    to.census += n.census;
    to.transition += n.transition;
    to.alert += n.alert;
    to.snapshot += n.snapshot;
    to.timewait_reset += n.timewait_reset;
}

/// All records of `n`, whatever their type.
pub fn total(n: &RecordCounts) -> u64 {
    n.census + n.transition + n.alert + n.snapshot + n.timewait_reset
}

/// `a - b` by type: the records written of those sent, given those dropped.
pub fn minus(a: &RecordCounts, b: &RecordCounts) -> RecordCounts {
    RecordCounts {
        census: a.census.saturating_sub(b.census),
        transition: a.transition.saturating_sub(b.transition),
        alert: a.alert.saturating_sub(b.alert),
        snapshot: a.snapshot.saturating_sub(b.snapshot),
        timewait_reset: a.timewait_reset.saturating_sub(b.timewait_reset),
    }
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the trace's last records with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `batch` without ever waiting; false when it did not fit and was dropped (and
    /// counted). A batch larger than the whole capacity still goes into an empty queue, so
    /// one huge drain is not lost for its size alone.
    pub fn push(&self, batch: Batch) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut s = self.lock();
        if s.bytes > 0 && s.bytes + batch.bytes.len() > self.capacity {
            add_to(&mut s.dropped, &batch.records);
            return false;
        }
        s.bytes += batch.bytes.len();
        s.batches.push_back(batch);
        drop(s);
        self.changed.notify_all();
        true
    }

    /// A buffer for the next batch: a written one where there is one.
    pub fn buffer(&self) -> Vec<u8> {
        self.lock()
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_START))
    }

    /// The writer is done with a batch's buffer: kept for a later batch (a few at most).
    pub fn give_back(&self, mut bytes: Vec<u8>) {
        bytes.clear();
        let mut s = self.lock();
        if s.spare.len() < SPARE_BUFFERS && bytes.capacity() > 0 {
            s.spare.push(bytes);
        }
    }

    /// The writer's side: the next batch, else the last record once every batch is taken,
    /// else [`Next::Idle`] after `wait`.
    pub fn take(&self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            if let Some(b) = s.batches.pop_front() {
                s.bytes -= b.bytes.len();
                drop(s);
                self.changed.notify_all();
                return Next::Records(b);
            }
            if let Some(last) = s.last.take() {
                return Next::Last(last);
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Idle;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `grace` for the writer to take every queued batch; true when it did.
    pub fn wait_taken(&self, grace: Duration) -> bool {
        self.wait_at_most(0, grace)
    }

    /// Waits up to `grace` for the writer to take all but `bytes` of what is queued; true
    /// when it did.
    pub fn wait_at_most(&self, bytes: usize, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut s = self.lock();
        while s.bytes > bytes {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Drops what is still queued (the writer is too far behind to wait for), counted with
    /// the other dropped records.
    pub fn discard(&self) {
        let mut s = self.lock();
        let batches = std::mem::take(&mut s.batches);
        s.bytes = 0;
        for b in &batches {
            add_to(&mut s.dropped, &b.records);
        }
    }

    /// Queues the last record, which goes after every batch queued now, whatever the
    /// capacity.
    pub fn finish(&self, last: Vec<u8>) {
        self.lock().last = Some(last);
        self.changed.notify_all();
    }

    /// Records dropped so far, by type.
    pub fn dropped(&self) -> RecordCounts {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize, transitions: u64) -> Batch {
        Batch {
            bytes: vec![b'x'; len],
            records: RecordCounts {
                transition: transitions,
                snapshot: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_their_records() {
        let q = Queue::new(100);
        assert!(q.push(batch(60, 5)));
        assert!(q.push(batch(40, 4)));
        assert!(!q.push(batch(1, 3)), "past the capacity");
        let d = q.dropped();
        assert_eq!((d.transition, d.snapshot, total(&d)), (3, 1, 4));
        // Taking makes room again.
        assert!(matches!(q.take(Duration::ZERO), Next::Records(b) if b.bytes.len() == 60));
        assert!(q.push(batch(50, 2)));
        assert_eq!(total(&q.dropped()), 4);
    }

    #[test]
    fn pushing_never_waits_for_the_writer() {
        let q = Queue::new(10);
        let start = Instant::now();
        for _ in 0..10_000 {
            q.push(batch(5, 1));
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(q.dropped().transition, 10_000 - 2);
    }

    #[test]
    fn a_batch_bigger_than_the_queue_goes_into_an_empty_one() {
        let q = Queue::new(10);
        assert!(q.push(batch(1000, 1)));
        assert!(!q.push(batch(1, 1)));
    }

    #[test]
    fn the_last_record_comes_after_every_batch_and_discarded_ones_are_counted() {
        let q = Queue::new(1000);
        q.push(batch(10, 1));
        q.push(batch(10, 2));
        q.finish(b"summary".to_vec());
        assert!(matches!(q.take(Duration::ZERO), Next::Records(_)));
        q.discard();
        assert_eq!(q.dropped().transition, 2);
        assert!(matches!(q.take(Duration::ZERO), Next::Last(l) if l == b"summary"));
        assert!(matches!(q.take(Duration::ZERO), Next::Idle));
    }

    #[test]
    fn written_buffers_are_reused_a_few_at_a_time() {
        let q = Queue::new(1000);
        let mut big = Vec::with_capacity(1 << 20);
        big.extend_from_slice(b"records");
        q.give_back(big);
        for _ in 0..5 {
            q.give_back(Vec::with_capacity(10));
        }
        let reused = q.buffer();
        assert!(reused.is_empty());
        let kept: Vec<usize> = (0..SPARE_BUFFERS).map(|_| q.buffer().capacity()).collect();
        assert!(kept.iter().all(|&c| c > 0));
        // Past the spares, a fresh one.
        assert_eq!(q.buffer().capacity(), BUFFER_START);
        assert!(reused.capacity() >= 1 << 20 || kept.contains(&(1 << 20)));
    }

    #[test]
    fn waiting_for_the_writer_to_catch_up_to_some_bytes() {
        let q = Queue::new(1000);
        q.push(batch(10, 1));
        q.push(batch(10, 1));
        assert!(!q.wait_at_most(10, Duration::from_millis(20)));
        assert!(matches!(q.take(Duration::ZERO), Next::Records(_)));
        assert!(q.wait_at_most(10, Duration::ZERO));
        assert!(!q.wait_at_most(9, Duration::ZERO));
    }

    #[test]
    fn waiting_for_a_stuck_writer_is_bounded() {
        let q = Queue::new(1000);
        q.push(batch(10, 1));
        let start = Instant::now();
        assert!(!q.wait_taken(Duration::from_millis(50)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(q.take(Duration::ZERO), Next::Records(_)));
        assert!(q.wait_taken(Duration::ZERO));
    }

    #[test]
    fn the_writer_wakes_when_a_batch_arrives() {
        let q = std::sync::Arc::new(Queue::new(1000));
        let q2 = q.clone();
        let writer = std::thread::spawn(move || q2.take(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        q.push(batch(10, 1));
        assert!(matches!(writer.join().unwrap(), Next::Records(_)));
    }

    #[test]
    fn written_is_sent_less_dropped() {
        let sent = RecordCounts {
            census: 2,
            transition: 10,
            alert: 1,
            snapshot: 3,
            timewait_reset: 0,
        };
        let dropped = RecordCounts {
            transition: 4,
            snapshot: 1,
            ..Default::default()
        };
        let w = minus(&sent, &dropped);
        assert_eq!((w.census, w.transition, w.alert, w.snapshot), (2, 6, 1, 2));
    }
}
