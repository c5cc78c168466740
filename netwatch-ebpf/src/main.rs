//! netwatch's kernel side: one thin program per hook, each a wrapper over a `try_` function.
//!
//! The per-event path does the least it can: a few kernel reads, one map update, filters
//! checked before anything is sent, and one fixed-size record copied into a ring buffer that
//! never wakes userspace (it drains on a timer). What cannot be sent is counted.
#![no_std]
#![no_main]

mod conntrack;
mod drops;
mod emit;
mod read;
mod slab;
mod timewait;
mod transition;
mod twins;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, fentry, fexit, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
    EbpfContext,
};
use netwatch_common::{
    counter, names::limits, offsets::KernelOffsets, ChildEntry, Filters, KnownCaches, PointerEntry,
    TimewaitEntry,
};
use transition::{ByCookie, ByPointer};
use twins::Twin;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

/// Socket address -> entry time and id, for `set_state_ptr` (kernels without the cookie
/// helper), where the address is all a record could be keyed by; LRU so that sockets
/// netwatch never sees close cannot fill it. The loader shrinks it to one entry where
/// `set_state` runs instead (keyed by cookie, it keeps no per-socket entry).
#[map(name = "SOCK_PTR")]
static SOCK_PTR: LruHashMap<u64, PointerEntry> =
    LruHashMap::with_max_entries(limits::SOCK_PTR_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "FILTER_NETNS")]
static FILTER_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[map(name = "FILTER_PORTS")]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// Slab caches of timewait and request sockets, learned from listening sockets.
#[map(name = "CACHES")]
static CACHES: Array<KnownCaches> = Array::with_max_entries(1, 0);

/// Timewait socket address -> its state, since when, and the id of the socket it replaced.
#[map(name = "TW_STATE")]
static TW_STATE: LruHashMap<u64, TimewaitEntry> =
    LruHashMap::with_max_entries(limits::TW_ENTRIES, 0);

/// Child socket pointer -> its birth and id, until accept() and its leaving ESTABLISHED
/// have both been seen (see `transition::child_leaves`).
#[map(name = "CHILD_BORN")]
static CHILD_BORN: LruHashMap<u64, ChildEntry> =
    LruHashMap::with_max_entries(limits::REQ_ENTRIES, 0);

/// Conntrack entry pointer -> when it was allocated.
#[map(name = "CT_BORN")]
static CT_BORN: LruHashMap<u64, u64> = LruHashMap::with_max_entries(limits::CT_ENTRIES, 0);

#[no_mangle]
static FILTERS: Filters = Filters {
    by_netns: 0,
    by_port: 0,
    _pad: [0; 6],
    drop_reasons: [u32::MAX; netwatch_common::DROP_REASON_SLOTS],
    ct_alloc_lo: 0,
    ct_alloc_hi: 0,
    tw_segment_reason: u32::MAX,
    _pad2: 0,
};

#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets::placeholder();

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 }
    }
}

/// The loader's settings, read in place: only the pointer is read volatile (so the compiler
/// cannot fold in the placeholder values), not the whole struct, which would put 160 bytes
/// on the stack of every program (the 512-byte limit is shared by a program's calls, and 6.1
/// refused `drops` for it).
#[inline(always)]
fn offsets() -> &'static KernelOffsets {
    let p: *const KernelOffsets = &OFFSETS;
    // SAFETY: a read-only global set by the loader, alive for the program's life.
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[inline(always)]
fn filters() -> &'static Filters {
    let p: *const Filters = &FILTERS;
    // SAFETY: as `offsets`.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Argument `n` of a tracing program, copied out of the context rather than loaded from it:
/// verifiers before 6.16 refuse to load a `void *` argument through the typed context
/// (`arg1 type UNKNOWN is not a struct`), but let the program copy the slot.
#[inline(always)]
fn arg_copy(ctx: &impl EbpfContext, n: usize) -> u64 {
    // SAFETY: the context of a tracing program is an array of u64 arguments, and
    // probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).wrapping_add(n)) }.unwrap_or(0)
}

/// A hook's program and its nested twin (see twins.rs): the same work, one attribute, so
/// the two cannot drift apart.
macro_rules! twins {
    ($(#[$attach:meta])* $first:ident, $second:ident, $hook:expr, $ctx:ty, $work:expr) => {
        $(#[$attach])*
        pub fn $first(ctx: $ctx) -> i32 {
            ($work)(&ctx, Twin::First($hook));
            0
        }

        $(#[$attach])*
        pub fn $second(ctx: $ctx) -> i32 {
            ($work)(&ctx, Twin::Nested($hook));
            0
        }
    };
}

twins!(
    #[btf_tracepoint(function = "inet_sock_set_state")]
    set_state,
    set_state_nested,
    twins::SET_STATE,
    BtfTracePointContext,
    transition::try_set_state::<ByCookie>
);

twins!(
    #[btf_tracepoint(function = "inet_sock_set_state")]
    set_state_ptr,
    set_state_ptr_nested,
    twins::SET_STATE,
    BtfTracePointContext,
    transition::try_set_state::<ByPointer>
);

twins!(
    /// `kmem_cache_alloc(call_site, ptr, s, gfp_flags, node)` (6.0+).
    #[btf_tracepoint(function = "kmem_cache_alloc")]
    slab_alloc,
    slab_alloc_nested,
    twins::SLAB_ALLOC,
    BtfTracePointContext,
    |ctx: &BtfTracePointContext, twin| {
        slab::alloc(twin, ctx.arg(0), ctx.arg(2), || arg_copy(ctx, 1))
    }
);

twins!(
    /// `kmem_cache_free(call_site, ptr, s)` (6.0+).
    #[btf_tracepoint(function = "kmem_cache_free")]
    slab_free,
    slab_free_nested,
    twins::SLAB_FREE,
    BtfTracePointContext,
    |ctx: &BtfTracePointContext, twin| slab::free(twin, ctx.arg(2), || arg_copy(ctx, 1))
);

twins!(
    /// Entry of `kmem_cache_free(s, x)`.
    #[fentry(function = "kmem_cache_free")]
    slab_free_fentry,
    slab_free_fentry_nested,
    twins::SLAB_FREE,
    FEntryContext,
    |ctx: &FEntryContext, twin| slab::free(twin, ctx.arg(0), || arg_copy(ctx, 1))
);

twins!(
    /// `kfree_skb(skb, location, reason, rx_sk)` (6.8+).
    #[btf_tracepoint(function = "kfree_skb")]
    drops,
    drops_nested,
    twins::DROPS,
    BtfTracePointContext,
    |ctx: &BtfTracePointContext, twin| drops::try_kfree_skb(ctx, twin, || ctx.arg(3))
);

twins!(
    /// `kfree_skb(skb, location, reason)` (5.17 to 6.7): never reads a fourth argument.
    #[btf_tracepoint(function = "kfree_skb")]
    drops_no_rx_sk,
    drops_no_rx_sk_nested,
    twins::DROPS,
    BtfTracePointContext,
    |ctx: &BtfTracePointContext, twin| {
        drops::try_kfree_skb(ctx, twin, core::ptr::null)
    }
);

twins!(
    /// Entry of `tcp_twsk_destructor(sk)`, called by `inet_twsk_free` just before the slab
    /// free (kernels that allow fentry).
    #[fentry(function = "tcp_twsk_destructor")]
    tw_destructor,
    tw_destructor_nested,
    twins::TW_DESTRUCTOR,
    FEntryContext,
    |ctx: &FEntryContext, twin| slab::timewait_destroyed(twin, arg_copy(ctx, 0))
);

twins!(
    /// Entry of `tcp_v4_reqsk_destructor(req)`, called by `__reqsk_free` just before the
    /// slab free.
    #[fentry(function = "tcp_v4_reqsk_destructor")]
    req_destructor,
    req_destructor_nested,
    twins::REQ_DESTRUCTOR,
    FEntryContext,
    |ctx: &FEntryContext, twin| slab::request_destroyed(twin, arg_copy(ctx, 0))
);

twins!(
    /// Entry of `tcp_v6_reqsk_destructor(req)`.
    #[fentry(function = "tcp_v6_reqsk_destructor")]
    req6_destructor,
    req6_destructor_nested,
    twins::REQ_DESTRUCTOR,
    FEntryContext,
    |ctx: &FEntryContext, twin| slab::request_destroyed(twin, arg_copy(ctx, 0))
);

/// After a timewait socket handled a segment: an orphan's FIN_WAIT2 may have turned
/// TIME_WAIT (kernels whose `kfree_skb` does not name the socket).
#[fexit(function = "tcp_timewait_state_process")]
pub fn tw_segment_fexit(ctx: FExitContext) -> i32 {
    timewait::segment_handled(ctx.arg(0));
    drops::timewait_reset(ctx.arg(1), ctx.arg(0));
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn synack_retransmit(ctx: BtfTracePointContext) -> i32 {
    slab::try_synack_retransmit(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
