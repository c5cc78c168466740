//! `inet_sock_set_state`: full-socket transitions, and the hand-over of a closing socket to
//! the timewait socket that replaces it.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    programs::BtfTracePointContext,
};
use netwatch_common::{
    counter, offsets::KernelOffsets, state, ChildEntry, KnownCaches, PointerEntry, TimewaitEntry,
    AF_INET, AF_INET6, DWELL_UNKNOWN,
};

use crate::{bump, emit, offsets, read, twins::Twin, CACHES, CHILD_BORN, SOCK_PTR, TW_STATE};

const IPPROTO_TCP: u16 = 6;

/// A socket's id, and where this kernel side keeps an entry per socket (by address, on 5.10),
/// that entry, found once per transition and then rewritten in place.
pub struct Found {
    /// The id its records carry.
    pub id: u64,
    /// When it entered its current state, if this kernel side keeps that (see [`ByCookie`]).
    pub since: Option<u64>,
    /// The entry's entry-time field, when there is an entry.
    slot: Option<*mut u64>,
}

/// How sockets are keyed: the two `set_state` programs differ only in this, so each kernel
/// loads the one it can verify and the rest of the kernel side is the same.
pub trait SocketIds {
    fn find(sk: *const u8, off: &KernelOffsets) -> Found;
    fn remember(found: &Found, sk: *const u8, now: u64);
    fn forget(found: &Found, sk: *const u8);
}

/// By socket cookie (`bpf_get_socket_cookie`, callable from tracing programs since 5.12):
/// the same id sock_diag reports and timewait sockets inherit. Such a socket has no entry
/// here: a record's id is enough for userspace to time each state from the kernel
/// timestamps of the records that enter and leave it (its mirror holds every socket it saw
/// enter a state), which is the value an entry would have given. The entry's lookup,
/// insert and delete were ~120 ns of the ~530 ns of a `set_state` run, measured here.
pub struct ByCookie;

impl SocketIds for ByCookie {
    #[inline(always)]
    fn find(sk: *const u8, off: &KernelOffsets) -> Found {
        // A socket keeps the cookie it was first given: read it with a plain load, and ask
        // the helper (a call, ~30 ns with this machine's return thunks) only to assign the
        // first one, at the socket's first transition.
        let id = match read::Typed::new(sk).get::<u64>(off.skc_cookie) {
            // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper
            // accepts.
            0 => unsafe { bpf_get_socket_cookie(sk as *mut c_void) },
            cookie => cookie,
        };
        Found {
            id,
            since: None,
            slot: None,
        }
    }

    #[inline(always)]
    fn remember(_found: &Found, _sk: *const u8, _now: u64) {}

    #[inline(always)]
    fn forget(_found: &Found, _sk: *const u8) {}
}

/// By socket address, for kernels whose tracing programs cannot ask for a cookie (5.10):
/// the id is fixed when the socket is first seen (see `PointerEntry`).
pub struct ByPointer;

impl SocketIds for ByPointer {
    #[inline(always)]
    fn find(sk: *const u8, off: &KernelOffsets) -> Found {
        match SOCK_PTR.get_ptr_mut(sk as u64) {
            Some(e) => {
                // SAFETY: a map value pointer, valid for this program run.
                let e = unsafe { &mut *e };
                Found {
                    id: e.sock_id,
                    since: Some(e.since_ns),
                    slot: Some(&mut e.since_ns),
                }
            }
            None => {
                let cookie: u64 = read::Typed::new(sk).get(off.skc_cookie);
                Found {
                    id: if cookie != 0 { cookie } else { sk as u64 },
                    since: None,
                    slot: None,
                }
            }
        }
    }

    #[inline(always)]
    fn remember(found: &Found, sk: *const u8, now: u64) {
        match found.slot {
            // SAFETY: as in `find`.
            Some(p) => unsafe { *p = now },
            None => {
                let entry = PointerEntry {
                    since_ns: now,
                    sock_id: found.id,
                };
                if SOCK_PTR.insert(sk as u64, entry, 0).is_err() {
                    bump(counter::STATE_MAP_FULL);
                }
            }
        }
    }

    #[inline(always)]
    fn forget(_found: &Found, sk: *const u8) {
        let _ = SOCK_PTR.remove(sk as u64);
    }
}

/// The id the records of a just-accepted child carry, from the request-socket hooks, which
/// do not know which `set_state` program keys sockets on this kernel.
#[inline(always)]
pub fn child_id(child: *const u8, off: &KernelOffsets) -> u64 {
    match unsafe { SOCK_PTR.get(child as u64) } {
        Some(e) => e.sock_id,
        None => read::cookie(child, off),
    }
}

#[inline(always)]
pub fn try_set_state<K: SocketIds>(ctx: &BtfTracePointContext, twin: Twin) {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    // The socket alone tells events apart: its own transitions are serialised by its lock,
    // so no interrupt runs one of them between the two programs' runs for another.
    if !twin.takes(sk as u64) {
        return;
    }
    let off = offsets();
    let s = read::Typed::new(sk);
    if s.protocol(off) != IPPROTO_TCP {
        return;
    }
    let family = s.family(off);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };

    // Where sockets have entries (by address), keep them right for every socket, filtered
    // or not: the filters look at ports, and a socket's local port is still 0 when it
    // enters SYN_SENT.
    let found = K::find(sk, off);
    let id = found.id;
    let since = found.since;
    let mut dwell_ns = match since {
        Some(t) => now.wrapping_sub(t),
        None => DWELL_UNKNOWN,
    };
    if old == state::ESTABLISHED || (old == state::SYN_RECV && new == state::CLOSE) {
        if let (Some(born), None) = (child_leaves(sk, id), since) {
            dwell_ns = now.wrapping_sub(born);
        }
    }
    let mut shown_new = new;
    if new == state::CLOSE {
        K::forget(&found, sk);
        if old == state::FIN_WAIT2 || old == state::CLOSING {
            match handed_to_timewait(s, off) {
                Some((tw, state::TIME_WAIT)) => {
                    remember_timewait(tw, now, state::TIME_WAIT, id);
                    shown_new = state::TIME_WAIT;
                }
                Some((tw, _)) => {
                    // An orphan waiting out tcp_fin_timeout: still FIN_WAIT2, now as a
                    // timewait socket, until the peer's FIN (see timewait.rs) or its end.
                    remember_timewait(tw, since.unwrap_or(0), state::FIN_WAIT2, id);
                    return;
                }
                // No timewait socket: tcp_max_tw_buckets was reached (or allocation
                // failed); the plain FIN_WAIT2 -> CLOSE says so.
                None => {}
            }
        }
    } else {
        if old == state::LISTEN && new == state::SYN_RECV {
            // A child cloned from its listener as the final ACK arrived. Its SYN_RECV life
            // is the request socket's, reported when that is freed; remember the birth.
            let entry = ChildEntry {
                born_ns: now,
                sock_id: found.id,
                accepted: 0,
                _pad: [0; 7],
            };
            let _ = CHILD_BORN.insert(sk as u64, entry, 0);
            K::remember(&found, sk, now);
            return;
        }
        K::remember(&found, sk, now);
        if new == state::LISTEN {
            learn_caches(sk, family, off);
        }
        if old == state::SYN_RECV
            && new == state::ESTABLISHED
            && unsafe { CHILD_BORN.get(sk as u64) }.is_some_and(|e| e.sock_id == id)
        {
            // The child's µs-long SYN_RECV: the request socket's record covers it, whether
            // accept() frees that before this change or after.
            return;
        }
    }

    let netns = s.netns(off);
    let (sport, dport) = s.ports(off);
    if !emit::wanted(netns, sport, dport) {
        return;
    }
    // connect() and listen() run in the caller's context.
    let in_owner = old == state::CLOSE;
    let task = if in_owner {
        read::current_task()
    } else {
        (0, [0; 16])
    };
    let cgroup = if cgroup_may_be_news(old, since) {
        // The socket's cgroup; where it cannot tell, the caller's in that context.
        match s.cgroup(off) {
            0 if in_owner => unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() },
            c => c,
        }
    } else {
        0
    };
    emit::transition(emit::Change {
        now,
        sock_id: id,
        dwell_ns,
        netns,
        sport,
        dport,
        family,
        old,
        new: shown_new,
        flags: 0,
        task,
        cgroup,
        addresses: s.addresses(off, family),
    });
}

/// A child socket leaves ESTABLISHED (or dies in SYN_RECV): its birth, which began that
/// state, if it is a child (None for any other socket).
///
/// The kernel times the state itself from the birth: a child leaving ESTABLISHED before
/// accept() (its client gave up, say) has made no record yet, and one leaving it while
/// accept() runs on another CPU may send its record before the request socket's. The
/// entry goes with whichever of the two comes last (see [`child_accepted`]): taken away at
/// accept(), a concurrent exit missed it and sent no dwell (1 in ~10,000 in the burst
/// test); taken away here, a later accept() found no birth. A race of the two, or a child
/// that dies before it is queued, can leave an entry behind, which the LRU reclaims; its
/// id keeps it from being read as another socket's at that address (where ids are
/// cookies; on 5.10 a cookie-less child's id is its address).
#[inline(always)]
fn child_leaves(sk: *const u8, id: u64) -> Option<u64> {
    let e = unsafe { CHILD_BORN.get(sk as u64) }.copied()?;
    if e.sock_id != id {
        return None;
    }
    if e.accepted != 0 {
        let _ = CHILD_BORN.remove(sk as u64);
    }
    Some(e.born_ns)
}

/// accept() frees the child's request socket: the child's birth for its record (0 when
/// unknown), the entry marked read, and taken away where the child has already left
/// ESTABLISHED (its `set_state` run is over once its new state shows).
#[inline(always)]
pub fn child_accepted(child: *const u8, off: &KernelOffsets) -> u64 {
    let Some(e) = CHILD_BORN.get_ptr_mut(child as u64) else {
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let born = unsafe {
        (*e).accepted = 1;
        (*e).born_ns
    };
    if !matches!(
        read::at::<u8>(child, off.skc_state),
        state::SYN_RECV | state::ESTABLISHED
    ) {
        let _ = CHILD_BORN.remove(child as u64);
    }
    born
}

/// Whether this transition's record must carry the socket's cgroup: a socket's cgroup is
/// fixed when it is created, and userspace keeps the id from a socket's earlier records for
/// those that carry none (as for timewait sockets). So it is read (three dependent kernel
/// reads) only on the records that can be a socket's first: leaving CLOSE, LISTEN,
/// SYN_SENT, SYN_RECV or ESTABLISHED (a server's child shows first when it leaves
/// ESTABLISHED, its earlier changes being covered by its request socket's record), or any
/// change of a socket netwatch has no entry for (opened before the trace, or evicted; keyed
/// by cookie, no socket has one, and there the reads are plain loads). The closing states
/// (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING) come only after an ESTABLISHED
/// whose record carried it.
#[inline(always)]
fn cgroup_may_be_news(old: u8, since: Option<u64>) -> bool {
    since.is_none()
        || matches!(
            old,
            state::CLOSE | state::LISTEN | state::SYN_SENT | state::SYN_RECV | state::ESTABLISHED
        )
}

/// How many sockets of `sk`'s established-table chain are looked at for its timewait
/// socket: the kernel puts it at the head, and another socket can get in front of it only
/// by hashing to the same bucket in the microseconds before `tcp_done`.
const CHAIN_LOOK: usize = 4;

/// The timewait socket that just replaced `sk` (the kernel hashes it into `sk`'s bucket of
/// the established table before it closes `sk`), and its substate; None when the kernel
/// made none (`tcp_max_tw_buckets` reached, or no memory).
///
/// This used to be learnt from the timewait socket's allocation, which took a hook on every
/// slab allocation of the kernel (~32 runs a connection, twice with the nested twin): the
/// chain costs a few reads once per close instead.
#[inline(always)]
fn handed_to_timewait(sk: read::Typed, off: &KernelOffsets) -> Option<(*const u8, u8)> {
    // The kernel copies the socket's cookie into its timewait socket; a socket that never
    // had one (no cookie helper on this kernel) is matched by its connection instead.
    let cookie: u64 = sk.get(off.skc_cookie);
    // The connection is read only where it is needed: a close is on the hot path.
    let ports = if cookie == 0 { sk.ports(off) } else { (0, 0) };
    let mut node = chain_head(sk, off);
    for _ in 0..CHAIN_LOOK {
        // A chain ends in a "nulls" marker: an odd value.
        if node == 0 || node & 1 != 0 {
            return None;
        }
        // One copy of the node's `sock_common` answers every question below.
        let tw = read::Copied::read(node.wrapping_sub(u64::from(off.skc_nulls_node)) as *const u8);
        if tw.state(off) == state::TIME_WAIT {
            let same = if cookie != 0 {
                tw.cookie(off) == cookie
            } else {
                tw.mini_ports(off) == ports
                    && tw.get::<u32>(off.skc_daddr) == sk.get::<u32>(off.skc_daddr)
                    && tw.netns(off) == sk.netns(off)
            };
            if same {
                return Some((tw.ptr(), tw.get::<u8>(off.tw_substate)));
            }
        }
        // `next` is the node's first field.
        node = tw.get::<u64>(off.skc_nulls_node);
    }
    None
}

/// The first node of the established-table chain `sk` hashes to (0 if unreadable):
/// `sock_net(sk)->ipv4.tcp_death_row(->)hashinfo->ehash[sk_hash & ehash_mask].chain.first`.
#[inline(always)]
fn chain_head(sk: read::Typed, off: &KernelOffsets) -> u64 {
    if off.skc_nulls_node == KernelOffsets::MISSING || off.net_death_row == KernelOffsets::MISSING {
        return 0;
    }
    let hash: u32 = sk.get(off.skc_hash);
    let net = sk.follow(off.skc_net);
    if net.is_null() {
        return 0;
    }
    let death_row = if off.death_row_deref != 0 {
        net.follow(off.net_death_row)
    } else {
        net.inner(off.net_death_row)
    };
    if death_row.is_null() {
        return 0;
    }
    let hashinfo = death_row.follow(off.death_row_hashinfo);
    if hashinfo.is_null() {
        return 0;
    }
    let mask: u32 = hashinfo.get(off.hashinfo_ehash_mask);
    // Read as an integer, not followed: the bucket's address is computed from the hash,
    // arithmetic the verifier refuses on a typed pointer.
    let ehash: u64 = read::at(hashinfo.ptr(), off.hashinfo_ehash);
    if ehash == 0 {
        return 0;
    }
    // `struct inet_ehash_bucket` is one `hlist_nulls_head`: a pointer.
    let bucket = ehash.wrapping_add(u64::from(hash & mask) * 8);
    read::at(bucket as *const u8, 0)
}

#[inline(always)]
fn remember_timewait(tw: *const u8, since_ns: u64, state: u8, sock_id: u64) {
    let entry = TimewaitEntry {
        since_ns,
        sock_id,
        state,
        _pad: [0; 7],
    };
    if TW_STATE.insert(tw as u64, entry, 0).is_err() {
        bump(counter::STATE_MAP_FULL);
    }
}

/// Records the slab caches of this protocol's timewait and request sockets, so the slab
/// hooks can recognise them by pointer.
#[inline(always)]
fn learn_caches(sk: *const u8, family: u16, off: &KernelOffsets) {
    let Some(caches) = CACHES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a single-entry array; concurrent learners write the same values.
    let caches: &mut KnownCaches = unsafe { &mut *caches };
    let i = usize::from(family == AF_INET6);
    if caches.timewait[i] != 0 && caches.request[i] != 0 {
        return;
    }
    let prot: u64 = read::at(sk, off.skc_prot);
    if prot == 0 {
        return;
    }
    let twsk_prot: u64 = read::at(prot as *const u8, off.proto_twsk_prot);
    if twsk_prot != 0 {
        caches.timewait[i] = read::at(twsk_prot as *const u8, off.twsk_slab);
    }
    let rsk_prot: u64 = read::at(prot as *const u8, off.proto_rsk_prot);
    if rsk_prot != 0 {
        caches.request[i] = read::at(rsk_prot as *const u8, off.rsk_slab);
    }
}
