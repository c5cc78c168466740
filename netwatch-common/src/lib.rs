//! The records and names shared by netwatch's kernel programs and its userspace.
//!
//! Everything that crosses the ring buffer is defined once, here, as fixed-width `#[repr(C)]`
//! structs with explicit padding: no `bool`, `Option` or Rust enums, so the layout is the same
//! for `bpfel-unknown-none` and the host and the decoder can check sizes instead of trusting
//! them. Every record starts with a [`RecordHeader`] so userspace can dispatch on `kind`.
#![no_std]

pub mod names;
pub mod offsets;
pub mod state;

/// Record kinds, the first field of every ring-buffer record.
pub mod kind {
    /// A socket changed state: a full socket (`inet_sock_set_state`), or a timewait socket
    /// that died (flag [`super::flag::TIMEWAIT`]).
    pub const TRANSITION: u16 = 1;
    /// A request socket (server-side SYN_RECV) was freed: see [`super::RequestEnd`].
    pub const REQUEST_END: u16 = 2;
    /// A listener resent a SYN-ACK (`tcp_retransmit_synack`), same layout as REQUEST_END
    /// with `child_ns` 0.
    pub const SYNACK_RETRANSMIT: u16 = 3;
    /// A packet was dropped for one of the reasons in `Settings::drop_reasons`.
    pub const DROP: u16 = 4;
    /// A conntrack entry was freed: see [`super::ConntrackEnd`].
    pub const CONNTRACK_END: u16 = 5;
    /// A RST reached a timewait socket, laid out as a [`super::DropRecord`] (the packet's
    /// addresses, TCP header and namespace). Not a drop: evidence for why a TIME_WAIT ended
    /// early, since with `tcp_rfc1337` off the kernel kills the timewait socket on it.
    pub const TIMEWAIT_RESET: u16 = 6;
}

/// Bits of `Transition::flags`.
pub mod flag {
    /// The record is about an `inet_timewait_sock`, the object that replaces a closing
    /// socket in TIME_WAIT (and in orphaned FIN_WAIT2).
    pub const TIMEWAIT: u8 = 1;
    /// The socket moved into a timewait socket whose substate was FIN_WAIT2 and later
    /// became TIME_WAIT; the kernel gives no moment for that change, so dwell is unknown.
    pub const SUBSTATE_CHANGED: u8 = 2;
}

/// `dwell_ns` value meaning "netwatch did not see the socket enter the state".
pub const DWELL_UNKNOWN: u64 = u64::MAX;

/// Address families as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Common head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// Size of the whole record in bytes, so a decoder can skip kinds it does not know.
    pub size: u16,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub mono_ns: u64,
}

/// One TCP state change of a full socket, with the time spent in the state it left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transition {
    pub header: RecordHeader,
    /// The socket cookie: unique for the boot, and copied by the kernel into the timewait
    /// socket that replaces a closing socket, so later records can be joined to this one.
    pub sock_id: u64,
    /// Nanoseconds in `old`, or [`DWELL_UNKNOWN`] when the socket entered it before
    /// netwatch was watching (or its entry was evicted from the bounded map).
    pub dwell_ns: u64,
    /// The socket's cgroup v2 id (the inode of its cgroup directory), read from the socket
    /// (`sk_cgrp_data`), or the current task's in process context where the socket cannot
    /// tell; 0 when unknown (timewait sockets carry none). Userspace names the container.
    pub cgroup: u64,
    /// Local address; IPv4 uses the first 4 bytes. Network byte order.
    pub saddr: [u8; 16],
    /// Remote address, as `saddr`.
    pub daddr: [u8; 16],
    /// Inode of the socket's network namespace (what `ls -L /proc/PID/ns/net -i` shows).
    pub netns: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// [`AF_INET`] or [`AF_INET6`] (both fit a byte: the record stays 104 bytes with the
    /// cgroup id in it).
    pub family: u8,
    /// Kernel TCP state numbers, see [`state`].
    pub old: u8,
    pub new: u8,
    /// Bits of [`flag`].
    pub flags: u8,
    /// The process that caused the transition, where that is knowable: connect() and
    /// listen() (`CLOSE -> ...`, run in the caller's context); 0 elsewhere, since most
    /// transitions run in softirq context on behalf of whoever was on the CPU.
    pub pid: u32,
    /// That process's command name, NUL-padded.
    pub comm: [u8; 16],
}

impl Transition {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// The end of a request socket: the kernel's object for a connection in server-side
/// SYN_RECV. It is allocated at the SYN and freed only when the application accepts the
/// child (or the request is dropped or times out), so its life is the SYN_RECV dwell
/// (`syn_ns` -> `child_ns`) plus the accept-queue wait (`child_ns` -> `header.mono_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEnd {
    pub header: RecordHeader,
    /// Cookie of the child socket, 0 when no child was created.
    pub sock_id: u64,
    /// When the SYN arrived (request socket allocated); 0 if before netwatch started.
    pub syn_ns: u64,
    /// When the final ACK created the child socket; 0 if none (dropped, timed out) or
    /// unseen.
    pub child_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    /// Listener's port.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// SYN-ACKs sent again because the final ACK did not come.
    pub synack_retransmits: u8,
    pub _pad: [u8; 5],
    /// The process whose accept() freed the request socket (0 when no child was made).
    pub pid: u32,
    pub comm: [u8; 16],
    pub _pad2: u32,
}

impl RequestEnd {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// A dropped packet that matters to TCP's health: PAWS rejects, listen-queue overflows,
/// netfilter drops. The TCP header is copied raw (options included) and parsed in
/// userspace, so the kernel side does no option walking.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub header: RecordHeader,
    /// The kernel's `enum skb_drop_reason` value (numbers differ between kernels; userspace
    /// maps them back to names from BTF).
    pub reason: u32,
    pub netns: u32,
    /// Packet source and destination, network byte order (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    /// Bytes of `tcp` that hold the TCP header (0 when the packet was not TCP).
    pub tcp_len: u16,
    /// For a segment that met a timewait socket: its `tw_ts_recent`, the last TSval it
    /// accepted from the peer.
    pub ts_recent: u32,
    /// 1 when `ts_recent` is valid.
    pub has_ts_recent: u8,
    pub _pad: [u8; 3],
    pub tcp: [u8; 60],
    pub _pad2: u32,
}

impl DropRecord {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

impl Default for DropRecord {
    fn default() -> Self {
        Self {
            header: RecordHeader::default(),
            reason: 0,
            netns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            family: 0,
            tcp_len: 0,
            ts_recent: 0,
            has_ts_recent: 0,
            _pad: [0; 3],
            tcp: [0; 60],
            _pad2: 0,
        }
    }
}

/// A conntrack entry at its free. Entries are freed lazily (by the GC worker or the next
/// walk of their bucket), so the record carries the entry's own expiry (`timeout`, in
/// jiffies) and the jiffies clock at the free: userspace works out when it really ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackEnd {
    pub header: RecordHeader,
    /// When its slab object was allocated (0: before netwatch started).
    pub born_ns: u64,
    /// `nf_conn.status` bits (IPS_CONFIRMED = 1 << 3: it made it into the table).
    pub status: u64,
    /// `bpf_jiffies64()` at the free.
    pub jiffies: u64,
    /// Original direction, network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `nf_conn.timeout`: the (32-bit) jiffies at which it expires.
    pub timeout: u32,
    pub netns: u32,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// AF_INET / AF_INET6.
    pub l3num: u16,
    /// IPPROTO_TCP, IPPROTO_UDP, ...
    pub l4proto: u8,
    /// `enum tcp_conntrack` (3 ESTABLISHED, 7 TIME_WAIT, ...) for TCP entries.
    pub tcp_state: u8,
}

impl ConntrackEnd {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// Drop reasons the kernel side reports, resolved from BTF by name at load time; unused
/// slots hold `u32::MAX`.
pub const DROP_REASON_SLOTS: usize = 8;

/// The slab caches of timewait and request sockets, learned by the kernel side from
/// listening sockets (`sk_prot`), so the slab hooks can discard other caches with one
/// compare. Index 0 is IPv4 (`tcp_prot`), 1 is IPv6 (`tcpv6_prot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownCaches {
    pub timewait: [u64; 2],
    pub request: [u64; 2],
    /// The `nf_conntrack` cache, learned from the first allocation made from inside
    /// `__nf_conntrack_alloc` (see `Filters::ct_alloc_lo`).
    pub conntrack: u64,
    /// Which of these caches' deaths the destructor hooks report (bits of [`destructor`]),
    /// so the slab hook passes over them: written by userspace once those hooks are
    /// attached, which is only known after the programs are loaded.
    pub destructors: u64,
}

/// Bits of [`KnownCaches::destructors`].
pub mod destructor {
    /// `tcp_twsk_destructor` (timewait sockets of both families).
    pub const TIMEWAIT: u64 = 1;
    /// `tcp_v4_reqsk_destructor`.
    pub const REQUEST_V4: u64 = 2;
    /// `tcp_v6_reqsk_destructor`.
    pub const REQUEST_V6: u64 = 4;
    pub const ALL: u64 = TIMEWAIT | REQUEST_V4 | REQUEST_V6;
}

/// What a timewait socket is known by while it lives (keyed by its address in `TW_STATE`,
/// which needs no cookie, so the same map works on every kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimewaitEntry {
    /// When the socket entered `state` (0: unknown).
    pub since_ns: u64,
    /// The `sock_id` of the full socket it replaced, carried on into its records.
    pub sock_id: u64,
    /// TIME_WAIT, or FIN_WAIT2 for an orphan waiting out `tcp_fin_timeout`.
    pub state: u8,
    pub _pad: [u8; 7],
}

/// A server's child socket, from its listener cloning it until both its request socket's
/// end (accept) and its leaving ESTABLISHED have been seen, whichever comes last (keyed by
/// its address in `CHILD_BORN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildEntry {
    /// When the final ACK created it: the start of its ESTABLISHED.
    pub born_ns: u64,
    /// The id its records carry: a stale entry left at a reused address is not its.
    pub sock_id: u64,
    /// Non-zero once the request socket was freed (by the accept() that took the child, or
    /// as its listener closed) and its record has read `born_ns`.
    pub accepted: u8,
    pub _pad: [u8; 7],
}

/// A full socket known by its address, on kernels whose tracing programs cannot ask for a
/// socket cookie (before 5.12): when it entered its state, and the id its records carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointerEntry {
    pub since_ns: u64,
    /// The socket's cookie if it had one when first seen (sockets the start-up census
    /// listed: inet_diag gives every socket it dumps a cookie), else its address; kept for
    /// the socket's life so its records agree whatever asks for a cookie later.
    pub sock_id: u64,
}

/// Slots of the per-CPU `COUNTERS` array: what the kernel side could not do, never silent.
pub mod counter {
    /// A record was dropped because the ring buffer was full.
    pub const LOST_RECORDS: u32 = 0;
    /// A per-socket entry timestamp could not be stored (map update failed).
    pub const STATE_MAP_FULL: u32 = 1;
    /// A kernel read failed, so a record was sent with zeroed fields.
    pub const READ_ERRORS: u32 = 2;
    /// An event a hook's first program missed (the kernel skipped it, nested on one CPU)
    /// that its nested twin handled: subtracted from the first programs' recursion misses,
    /// what remains is what nobody saw.
    pub const COVERED_BY_TWIN: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Load-time settings, written into the program's read-only globals by the loader.
/// Filter flags are `u8` 0/1 because globals must be plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only sockets whose netns is in `FILTER_NETNS`.
    pub by_netns: u8,
    /// Only sockets with either port in `FILTER_PORTS`.
    pub by_port: u8,
    pub _pad: [u8; 6],
    /// `enum skb_drop_reason` values to report from `kfree_skb`.
    pub drop_reasons: [u32; DROP_REASON_SLOTS],
    /// Text range of `__nf_conntrack_alloc` from /proc/kallsyms; an allocation whose call
    /// site falls inside names the conntrack slab cache (0, 0: conntrack not followed).
    pub ct_alloc_lo: u64,
    pub ct_alloc_hi: u64,
    /// The drop reason with which the TCP receive path frees a segment a timewait socket
    /// handled (SKB_DROP_REASON_NOT_SPECIFIED on 6.18): the FIN that turns an orphan's
    /// FIN_WAIT2 timewait socket into TIME_WAIT is seen this way (u32::MAX: not followed).
    pub tw_segment_reason: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Filters {}
    unsafe impl aya::Pod for super::KnownCaches {}
    unsafe impl aya::Pod for super::offsets::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_fixed() {
        assert_eq!(core::mem::size_of::<RecordHeader>(), 16);
        assert_eq!(Transition::SIZE, 104);
        assert_eq!(Transition::SIZE % 8, 0);
        assert_eq!(RequestEnd::SIZE, 112);
        assert_eq!(DropRecord::SIZE % 8, 0);
        assert_eq!(ConntrackEnd::SIZE, 88);
    }
}
