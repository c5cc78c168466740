//! `inet_sock_set_state`: full-socket transitions, and the hand-over of a closing socket to
//! the timewait socket that replaces it.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    programs::BtfTracePointContext,
};
use netwatch_common::{
    counter, offsets::KernelOffsets, state, KnownCaches, TimewaitEntry, AF_INET, AF_INET6,
    DWELL_UNKNOWN,
};

use crate::{bump, emit, offsets, read, CACHES, CHILD_BORN, RECENT_TW, SOCK_STATE, TW_STATE};

const IPPROTO_TCP: u16 = 6;

#[inline(always)]
pub fn try_set_state(ctx: &BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let off = offsets();
    if read::protocol(sk, &off) != IPPROTO_TCP {
        return;
    }
    let family = read::family(sk, &off);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };

    // Keep the entry map right for every socket, filtered or not: the filters look at ports,
    // and a socket's local port is still 0 when it enters SYN_SENT.
    // One lookup: the entry is rewritten in place below rather than updated through the map.
    let slot = SOCK_STATE.get_ptr_mut(cookie);
    // SAFETY: a map value pointer, valid for this program run.
    let since = slot.map(|p| unsafe { *p });
    let dwell_ns = match since {
        Some(t) => now.wrapping_sub(t),
        None => DWELL_UNKNOWN,
    };
    let mut shown_new = new;
    if new == state::CLOSE {
        let _ = SOCK_STATE.remove(cookie);
        if old == state::FIN_WAIT2 || old == state::CLOSING {
            match handed_to_timewait(cookie, &off) {
                Some(state::TIME_WAIT) => {
                    remember_timewait(cookie, now, state::TIME_WAIT);
                    shown_new = state::TIME_WAIT;
                }
                Some(_) => {
                    // An orphan waiting out tcp_fin_timeout: still FIN_WAIT2, now as a
                    // timewait socket, until the peer's FIN (see timewait.rs) or its end.
                    remember_timewait(cookie, since.unwrap_or(0), state::FIN_WAIT2);
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
            let _ = CHILD_BORN.insert(sk as u64, now, 0);
            let _ = SOCK_STATE.insert(cookie, now, 0);
            return;
        }
        match slot {
            // SAFETY: as above.
            Some(p) => unsafe { *p = now },
            None => {
                if SOCK_STATE.insert(cookie, now, 0).is_err() {
                    bump(counter::STATE_MAP_FULL);
                }
            }
        }
        if new == state::LISTEN {
            learn_caches(sk, family, &off);
        }
        if old == state::SYN_RECV
            && new == state::ESTABLISHED
            && unsafe { CHILD_BORN.get(sk as u64) }.is_some()
        {
            // The child's µs-long SYN_RECV: the request socket's record covers it.
            return;
        }
    }

    let netns = read::netns(sk, &off);
    let (sport, dport) = read::ports(sk, &off);
    if !emit::wanted(netns, sport, dport) {
        return;
    }
    // connect() and listen() run in the caller's context.
    let task = (old == state::CLOSE).then(read::current_task);
    emit::transition(
        sk,
        &off,
        emit::Change {
            now,
            sock_id: cookie,
            dwell_ns,
            netns,
            sport,
            dport,
            family,
            old,
            new: shown_new,
            flags: 0,
            task,
        },
    );
}

/// The substate of the timewait socket allocated for `cookie` on this CPU just before, if
/// any (see `RecentTimewaits`).
#[inline(always)]
fn handed_to_timewait(cookie: u64, off: &KernelOffsets) -> Option<u8> {
    let recent = RECENT_TW.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, only touched by programs on this CPU.
    let recent = unsafe { &mut *recent };
    for i in 0..recent.ptrs.len() {
        let tw = recent.ptrs[i];
        if tw != 0 && read::cookie(tw as *const u8, off) == cookie {
            recent.ptrs[i] = 0;
            return Some(read::at::<u8>(tw as *const u8, off.tw_substate));
        }
    }
    None
}

#[inline(always)]
fn remember_timewait(cookie: u64, since_ns: u64, state: u8) {
    let entry = TimewaitEntry {
        since_ns,
        state,
        _pad: [0; 7],
    };
    if TW_STATE.insert(cookie, entry, 0).is_err() {
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
