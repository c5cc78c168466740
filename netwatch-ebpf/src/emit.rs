//! Filtering and sending of records: the only place that touches the ring buffer.

use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use netwatch_common::{counter, kind, offsets::KernelOffsets, RecordHeader, Transition};

use crate::{bump, filters, read, EVENTS, FILTER_NETNS, FILTER_PORTS};

/// What a transition record says beyond the socket's addresses, which
/// [`transition`] reads itself.
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
    /// (tgid, comm) when the caller runs in the owner's context.
    pub task: Option<(u32, [u8; 16])>,
    /// The socket's cgroup id (0: unknown).
    pub cgroup: u64,
}

/// Sends the transition of `sock` (a `sock`, timewait or request socket: all start with
/// `sock_common`, where the addresses are).
#[inline(always)]
pub fn transition(sock: *const u8, off: &KernelOffsets, c: Change) {
    let (pid, comm) = c.task.unwrap_or((0, [0; 16]));
    let mut rec = Transition {
        header: RecordHeader {
            kind: kind::TRANSITION,
            size: Transition::SIZE as u16,
            _pad: 0,
            mono_ns: c.now,
        },
        sock_id: c.sock_id,
        dwell_ns: c.dwell_ns,
        cgroup: c.cgroup,
        saddr: [0; 16],
        daddr: [0; 16],
        netns: c.netns,
        sport: c.sport,
        dport: c.dport,
        // AF_INET and AF_INET6 fit a byte; the caller sends no other family.
        family: c.family as u8,
        old: c.old,
        new: c.new,
        flags: c.flags,
        pid,
        comm,
    };
    if !read::addresses(sock, off, c.family, &mut rec.saddr, &mut rec.daddr) {
        bump(counter::READ_ERRORS);
    }
    send(&rec);
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

/// Sends a transition of a timewait socket, whose ports sit in `sock_common` (host-order
/// `skc_num`), after the load-time filters.
#[inline(always)]
pub fn timewait_transition(
    tw: *const u8,
    off: &KernelOffsets,
    now: u64,
    sock_id: u64,
    dwell_ns: u64,
    (old, new, flags): (u8, u8, u8),
) {
    let netns = read::netns(tw, off);
    let (sport, dport) = read::mini_ports(tw, off);
    if !wanted(netns, sport, dport) {
        return;
    }
    transition(
        tw,
        off,
        Change {
            now,
            sock_id,
            dwell_ns,
            netns,
            sport,
            dport,
            family: read::family(tw, off),
            old,
            new,
            flags,
            task: None,
            // A timewait socket has no cgroup; userspace keeps its full socket's.
            cgroup: 0,
        },
    );
}
