//! `kmem_cache_free`: deaths of timewait and request sockets, which `inet_sock_set_state`
//! never reports, and of conntrack entries; `kmem_cache_alloc`: births of conntrack
//! entries. These hooks fire for every slab object in the kernel, so each starts with a
//! pointer compare against the learned caches and leaves at once for anything else.
//!
//! Where the kernel allows fentry, the sockets' destructors report their deaths instead
//! (`timewait_destroyed`, `request_destroyed`): one run per death, not ~22 runs a
//! connection, and the slab hook waits for conntrack as the allocation hook does.
//!
//! Timewait and request sockets need no allocation hook: a timewait socket is found in the
//! established table when its full socket closes (transition.rs), and a request socket
//! carries its birth (the first SYN-ACK's time). So the allocation hook, which runs ~32
//! times a connection for other caches, is attached only once conntrack is in use.
//!
//! The same functions serve every kernel: the programs in main.rs read the cache and the
//! object from the tracepoint (6.0+) or from fentry/fexit on the allocator (older kernels,
//! whose slab tracepoints carry no cache), and hand them over. The object is a `void *`,
//! which some verifiers refuse to read from a typed context, so it is fetched only after
//! the cache matched, through `obj` (see `arg_copy` in main.rs).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::BtfTracePointContext};
use netwatch_common::{
    counter, destructor, flag, kind, state, KnownCaches, RecordHeader, RequestEnd, DWELL_UNKNOWN,
};

use crate::{
    bump, conntrack, emit, filters, offsets, read, transition, twins::Twin, CACHES, TW_STATE,
};

enum Cache {
    Timewait,
    Request,
    Conntrack,
    Other,
}

#[inline(always)]
fn classify(cache: u64) -> Cache {
    let Some(c) = CACHES.get(0) else {
        return Cache::Other;
    };
    let c: &KnownCaches = c;
    // A cache whose deaths a destructor hook reports is passed over (read only on a match:
    // other caches, nearly every run, pay nothing for it).
    if cache == c.timewait[0] || cache == c.timewait[1] {
        if c.destructors & destructor::TIMEWAIT != 0 {
            return Cache::Other;
        }
        Cache::Timewait
    } else if cache == c.request[0] || cache == c.request[1] {
        let by = if cache == c.request[0] {
            destructor::REQUEST_V4
        } else {
            destructor::REQUEST_V6
        };
        if c.destructors & by != 0 {
            return Cache::Other;
        }
        Cache::Request
    } else if cache == c.conntrack && cache != 0 {
        Cache::Conntrack
    } else {
        Cache::Other
    }
}

/// An object of a cache netwatch follows, with its class, if this program handles it (see
/// twins.rs); the object is fetched only then.
#[inline(always)]
fn taken(twin: Twin, cache: u64, obj: impl FnOnce() -> u64) -> Option<(Cache, u64)> {
    let class = classify(cache);
    if let Cache::Other = class {
        return None;
    }
    let obj = obj();
    twin.takes(obj).then_some((class, obj))
}

/// An allocation from `cache` by code at `call_site` (0 where unknown); `obj` fetches the
/// new object.
#[inline(always)]
pub fn alloc(twin: Twin, call_site: u64, cache: u64, obj: impl FnOnce() -> u64) {
    let f = filters();
    if call_site >= f.ct_alloc_lo && call_site < f.ct_alloc_hi {
        conntrack::learn_cache(cache);
    }
    // Only conntrack's births are wanted here (see the module's doc).
    let conntrack = CACHES.get(0).map_or(0, |c: &KnownCaches| c.conntrack);
    if cache != conntrack || conntrack == 0 {
        return;
    }
    let obj = obj();
    if twin.takes(obj) {
        conntrack::born(obj);
    }
}

/// A free of an object of `cache`; `obj` fetches the object.
#[inline(always)]
pub fn free(twin: Twin, cache: u64, obj: impl FnOnce() -> u64) {
    let Some((class, obj)) = taken(twin, cache, obj) else {
        return;
    };
    let obj = obj as *const u8;
    match class {
        Cache::Timewait => timewait_died(obj),
        Cache::Request => request_died(obj),
        Cache::Conntrack => conntrack::died(obj),
        Cache::Other => {}
    }
}

/// Entry of `tcp_twsk_destructor(tw)`: the timewait socket is freed right after.
#[inline(always)]
pub fn timewait_destroyed(twin: Twin, tw: u64) {
    if tw != 0 && twin.takes(tw) {
        timewait_died(tw as *const u8);
    }
}

/// Entry of `tcp_v4_reqsk_destructor(req)` / `tcp_v6_reqsk_destructor(req)`: the request
/// socket is freed right after.
#[inline(always)]
pub fn request_destroyed(twin: Twin, req: u64) {
    if req != 0 && twin.takes(req) {
        request_died(req as *const u8);
    }
}

#[inline(always)]
fn timewait_died(tw: *const u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let off = offsets();
    let copy = read::Copied::read(tw);
    let substate: u8 = copy.get(off.tw_substate);
    let entry = unsafe { TW_STATE.get(tw as u64) }.copied();
    let _ = TW_STATE.remove(tw as u64);

    let (sock_id, old, dwell_ns, flags) = match entry {
        Some(e) if e.state == state::FIN_WAIT2 && substate == state::TIME_WAIT => (
            e.sock_id,
            state::TIME_WAIT,
            DWELL_UNKNOWN,
            flag::TIMEWAIT | flag::SUBSTATE_CHANGED,
        ),
        Some(e) if e.since_ns != 0 => (
            e.sock_id,
            e.state,
            now.wrapping_sub(e.since_ns),
            flag::TIMEWAIT,
        ),
        Some(e) => (e.sock_id, e.state, DWELL_UNKNOWN, flag::TIMEWAIT),
        // Born before the trace: the census listed it by the cookie it carries.
        None => (copy.cookie(off), substate, DWELL_UNKNOWN, flag::TIMEWAIT),
    };
    emit::timewait_transition(
        &copy,
        off,
        now,
        sock_id,
        dwell_ns,
        (old, state::CLOSE, flags),
    );
}

/// `tcp_retransmit_synack(listener, req)`: the final ACK of a handshake did not come.
#[inline(always)]
pub fn try_synack_retransmit(ctx: &BtfTracePointContext) {
    let req: *const u8 = ctx.arg(1);
    request_record(&read::Copied::read(req), kind::SYNACK_RETRANSMIT, 0);
}

#[inline(always)]
fn request_died(req: *const u8) {
    let req = read::Copied::read(req);
    let child: u64 = req.get(offsets().req_sk);
    request_record(&req, kind::REQUEST_END, child);
}

/// When a request socket was born (0: unknown): its first SYN-ACK's time, which the kernel
/// keeps in µs of the monotonic clock (`tcp_clock_us`), taken microseconds after the SYN
/// made the socket.
#[inline(always)]
fn request_born(req: &read::Copied) -> u64 {
    let us: u64 = req.get(offsets().req_snt_synack);
    us.wrapping_mul(1_000)
}

#[inline(always)]
fn request_record(req: &read::Copied, record_kind: u16, child: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let off = offsets();
    let syn_ns = request_born(req);
    let (child_ns, sock_id) = if child != 0 {
        (
            transition::child_accepted(child as *const u8, off),
            transition::child_id(child as *const u8, off),
        )
    } else {
        (0, 0)
    };
    let family = req.family(off);
    let netns = req.netns(off);
    let (sport, dport) = req.mini_ports(off);
    if !emit::wanted(netns, sport, dport) {
        return;
    }
    if !req.ok {
        bump(counter::READ_ERRORS);
    }
    // A completed request is freed by the accept() that takes its child.
    let (pid, comm) = if child != 0 {
        read::current_task()
    } else {
        (0, [0; 16])
    };
    let retransmits: u8 = req.get(off.req_num_retrans);
    let Some(mut slot) = emit::slot::<RequestEnd>() else {
        return;
    };
    let rec = slot.as_mut_ptr();
    // SAFETY: a reserved slot of `RequestEnd::SIZE` bytes, 8-aligned, ours until submitted;
    // every field is written before that.
    unsafe {
        (*rec).header = RecordHeader {
            kind: record_kind,
            size: RequestEnd::SIZE as u16,
            _pad: 0,
            mono_ns: now,
        };
        (*rec).sock_id = sock_id;
        (*rec).syn_ns = syn_ns;
        (*rec).child_ns = child_ns;
        ((*rec).saddr, (*rec).daddr) = req.addresses(off, family);
        (*rec).netns = netns;
        (*rec).sport = sport;
        (*rec).dport = dport;
        (*rec).family = family;
        (*rec).synack_retransmits = retransmits;
        (*rec)._pad = [0; 5];
        (*rec).pid = pid;
        (*rec).comm = comm;
        (*rec)._pad2 = 0;
    }
    emit::submit(slot);
}
