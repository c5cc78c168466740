//! Filtering and sending of records: the only place that touches the ring buffer.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, maps::ring_buf::RingBufEntry};
use netwatch_common::{counter, kind, offsets::KernelOffsets, RecordHeader, Transition};

use crate::{bump, filters, read, EVENTS, FILTER_NETNS, FILTER_PORTS};

/// What a transition record says.
pub struct Change {
    pub now: u64,
    pub sock_id: u64,
    pub dwell_ns: u64,
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub old: u8,
    pub new: u8,
    pub flags: u8,
    /// (tgid, comm) when the caller runs in the owner's context, else zeros. Not an
    /// `Option`: its payload would be uninitialised stack when None, which verifiers
    /// before 6.3 refuse to see read (and the record copies it either way).
    pub task: (u32, [u8; 16]),
    /// The socket's cgroup id (0: unknown).
    pub cgroup: u64,
    /// (local, remote) addresses, network order, IPv4 in the first 4 bytes.
    pub addresses: ([u8; 16], [u8; 16]),
}

/// Sends a transition, written straight into a reserved slot of the ring buffer (see
/// [`slot`]).
#[inline(always)]
pub fn transition(c: Change) {
    let Some(mut slot) = slot::<Transition>() else {
        return;
    };
    let (pid, comm) = c.task;
    let rec = slot.as_mut_ptr();
    // SAFETY: `rec` points to a reserved slot of `Transition::SIZE` bytes, 8-aligned, ours
    // until submitted; every field is written before that.
    unsafe {
        (*rec).header = RecordHeader {
            kind: kind::TRANSITION,
            size: Transition::SIZE as u16,
            _pad: 0,
            mono_ns: c.now,
        };
        (*rec).sock_id = c.sock_id;
        (*rec).dwell_ns = c.dwell_ns;
        (*rec).cgroup = c.cgroup;
        (*rec).saddr = c.addresses.0;
        (*rec).daddr = c.addresses.1;
        (*rec).netns = c.netns;
        (*rec).sport = c.sport;
        (*rec).dport = c.dport;
        // AF_INET and AF_INET6 fit a byte; the caller sends no other family.
        (*rec).family = c.family as u8;
        (*rec).old = c.old;
        (*rec).new = c.new;
        (*rec).flags = c.flags;
        (*rec).pid = pid;
        (*rec).comm = comm;
    }
    submit(slot);
}

/// A reserved slot of the ring buffer for one record, to be written in place and then
/// given to [`submit`]; None (counted lost) when the ring is full. Built on the stack and
/// copied (`bpf_ringbuf_output`), a record costs its size of a stack that the 512-byte
/// limit shares between a program's calls: 5.10 and 6.1 refused the slab hook for 32
/// bytes.
#[inline(always)]
pub fn slot<T: 'static>() -> Option<RingBufEntry<T>> {
    let slot = EVENTS.reserve::<T>(0);
    if slot.is_none() {
        bump(counter::LOST_RECORDS);
    }
    slot
}

/// Sends a slot from [`slot`], every field of which has been written, without waking
/// userspace.
#[inline(always)]
pub fn submit<T: 'static>(slot: RingBufEntry<T>) {
    slot.submit(BPF_RB_NO_WAKEUP as u64);
}

/// Whether a socket with these fields passes the load-time filters.
#[inline(always)]
pub fn wanted(netns: u32, sport: u16, dport: u16) -> bool {
    let f = filters();
    if f.by_netns != 0 && unsafe { FILTER_NETNS.get(netns) }.is_none() {
        return false;
    }
    if f.by_port != 0
        && unsafe { FILTER_PORTS.get(sport) }.is_none()
        && unsafe { FILTER_PORTS.get(dport) }.is_none()
    {
        return false;
    }
    true
}

/// Copies one record into the ring buffer without waking userspace; counts it if full.
#[inline(always)]
pub fn send<T: 'static>(rec: &T) {
    if EVENTS.output::<T>(rec, BPF_RB_NO_WAKEUP as u64).is_err() {
        bump(counter::LOST_RECORDS);
    }
}

/// Sends a transition of a timewait socket (copied: its ports sit in `sock_common`, the
/// local one as host-order `skc_num`), after the load-time filters.
#[inline(always)]
pub fn timewait_transition(
    tw: &read::Copied,
    off: &KernelOffsets,
    now: u64,
    sock_id: u64,
    dwell_ns: u64,
    (old, new, flags): (u8, u8, u8),
) {
    let netns = tw.netns(off);
    let (sport, dport) = tw.mini_ports(off);
    if !wanted(netns, sport, dport) {
        return;
    }
    if !tw.ok {
        bump(counter::READ_ERRORS);
    }
    let family = tw.family(off);
    transition(Change {
        now,
        sock_id,
        dwell_ns,
        netns,
        sport,
        dport,
        family,
        old,
        new,
        flags,
        task: (0, [0; 16]),
        // A timewait socket has no cgroup; userspace keeps its full socket's.
        cgroup: 0,
        addresses: tw.addresses(off, family),
    });
}
