//! netwatch's kernel side: one thin program per hook, each a wrapper over a `try_` function.
//!
//! The per-event path does the least it can: a few kernel reads, one map update, filters
//! checked before anything is sent, and one fixed-size record copied into a ring buffer that
//! never wakes userspace (it drains on a timer). What cannot be sent is counted.
#![no_std]
#![no_main]

mod read;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use netwatch_common::{
    counter, kind, names::limits, offsets::KernelOffsets, state, Filters, RecordHeader, Transition,
    AF_INET, AF_INET6, DWELL_UNKNOWN,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

/// Socket cookie -> when it entered its current state. LRU so that sockets netwatch never
/// sees close (it started after they opened, or their CLOSE was lost) cannot fill it.
#[map(name = "SOCK_STATE")]
static SOCK_STATE: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(limits::SOCK_STATE_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "FILTER_NETNS")]
static FILTER_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[map(name = "FILTER_PORTS")]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[no_mangle]
static FILTERS: Filters = Filters {
    by_netns: 0,
    by_port: 0,
    _pad: [0; 6],
};

#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets::placeholder();

const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 }
    }
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a read-only global set by the loader; volatile so the compiler does not fold
    // the placeholder value in.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn filters() -> Filters {
    // SAFETY: as `offsets`.
    unsafe { core::ptr::read_volatile(&FILTERS) }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state(ctx: BtfTracePointContext) -> i32 {
    try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let off = offsets();
    if read::protocol(sk, &off) != IPPROTO_TCP {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };

    // Keep the entry map right for every socket, filtered or not: the filters look at ports,
    // and a socket's local port is still 0 when it enters SYN_SENT.
    let dwell_ns = match unsafe { SOCK_STATE.get(&cookie) } {
        Some(&since) => now.wrapping_sub(since),
        None => DWELL_UNKNOWN,
    };
    if new as u8 == state::CLOSE {
        let _ = SOCK_STATE.remove(&cookie);
    } else if SOCK_STATE.insert(&cookie, &now, 0).is_err() {
        bump(counter::STATE_MAP_FULL);
    }

    let f = filters();
    let netns = read::netns(sk, &off);
    if f.by_netns != 0 && unsafe { FILTER_NETNS.get(&netns) }.is_none() {
        return;
    }
    let (sport, dport) = read::ports(sk, &off);
    if f.by_port != 0
        && unsafe { FILTER_PORTS.get(&sport) }.is_none()
        && unsafe { FILTER_PORTS.get(&dport) }.is_none()
    {
        return;
    }
    let family = read::family(sk, &off);
    if family != AF_INET && family != AF_INET6 {
        return;
    }

    let mut rec = Transition {
        header: RecordHeader {
            kind: kind::TRANSITION,
            size: Transition::SIZE as u16,
            _pad: 0,
            mono_ns: now,
        },
        sock_id: cookie,
        dwell_ns,
        saddr: [0; 16],
        daddr: [0; 16],
        netns,
        sport,
        dport,
        family,
        old: old as u8,
        new: new as u8,
        _pad: 0,
    };
    if !read::addresses(sk, &off, family, &mut rec.saddr, &mut rec.daddr) {
        bump(counter::READ_ERRORS);
    }
    if EVENTS
        .output::<Transition>(&rec, BPF_RB_NO_WAKEUP as u64)
        .is_err()
    {
        bump(counter::LOST_RECORDS);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
