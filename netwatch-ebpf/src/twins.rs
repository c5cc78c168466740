//! A busy hook's two programs, and which of them handles an event.
//!
//! The kernel skips a tracing program that is entered again on a CPU where it already runs
//! (an interrupt's socket work arriving while the program runs for a process), and counts a
//! recursion miss: under churn that lost a few transitions in a thousand. Each busy hook
//! therefore has a second program, attached right after the first, which handles exactly
//! the events the first did not take.
//!
//! Which events those are cannot be told by a flag the first program raises while it runs
//! (how it was done before): the kernel's guard covers a little more than the program's own
//! code, from before its first instruction to after its last, and an interrupt landing in
//! that margin made both programs pass over the whole softirq batch that followed: 40
//! timewait hand-overs in a row in the 1,000-connection burst test, with no miss counted
//! anywhere. So the first program claims every event it takes by a key (the socket, object
//! or packet it is about), and the nested one handles every event it finds unclaimed,
//! releasing the claims it finds. An event is handled once whichever way the two interleave.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use netwatch_common::counter;

use crate::bump;

/// Hooks that have twins, as indexes into `CLAIMS`.
pub const SET_STATE: u32 = 0;
pub const SLAB_ALLOC: u32 = 1;
pub const SLAB_FREE: u32 = 2;
pub const DROPS: u32 = 3;
pub const TW_DESTRUCTOR: u32 = 4;
/// Both families' request destructors: their claims' keys (the sockets) never collide.
pub const REQ_DESTRUCTOR: u32 = 5;
const HOOKS: u32 = 6;

/// Outstanding claims per hook: one while the first program's run is followed by its twin's
/// for the same event, one more per interrupt nested between them, and any whose twin run
/// was itself skipped (stale: nothing will release them).
const SLOTS: usize = 8;

/// A claim this old has lost its twin run: the twin follows its first program within the
/// same tracepoint call, delayed at most by the interrupts nested between them (166 µs
/// seen). Stale claims are taken over before any live one is; replacing slots in turn
/// alone, a live claim was once replaced in CI after stale ones had filled every slot, and
/// its event was handled twice.
const STALE_NS: u64 = 10_000_000;

/// Per CPU and hook: keys of the events the first program took whose nested run has not yet
/// come (0: free), when each was claimed, then the next slot to replace when all are taken
/// by live claims.
#[repr(C)]
pub struct Claims {
    keys: [u64; SLOTS],
    at: [u64; SLOTS],
    next: u64,
}

#[map(name = "CLAIMS")]
static CLAIMS: PerCpuArray<Claims> = PerCpuArray::with_max_entries(HOOKS, 0);

/// Which of its hook's two programs is running.
#[derive(Clone, Copy)]
pub enum Twin {
    First(u32),
    Nested(u32),
}

impl Twin {
    /// Whether this program handles the event known by `key` (never 0): the first program
    /// takes every event and claims it; the nested one takes those nobody claimed.
    #[inline(always)]
    pub fn takes(self, key: u64) -> bool {
        match self {
            Twin::First(hook) => {
                claim(hook, key);
                true
            }
            Twin::Nested(hook) => {
                if release(hook, key) {
                    return false;
                }
                bump(counter::COVERED_BY_TWIN);
                true
            }
        }
    }
}

#[inline(always)]
fn claim(hook: u32, key: u64) {
    let Some(c) = CLAIMS.get_ptr_mut(hook) else {
        return;
    };
    // SAFETY: per-CPU value; programs on this CPU run one at a time or nested, and each
    // slot is written by one store.
    let c = unsafe { &mut *c };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut pick = SLOTS;
    for i in 0..SLOTS {
        if c.keys[i] == 0 {
            pick = i;
            break;
        }
    }
    if pick == SLOTS {
        for i in 0..SLOTS {
            if now.wrapping_sub(c.at[i]) > STALE_NS {
                pick = i;
                break;
            }
        }
    }
    if pick == SLOTS {
        pick = (c.next % SLOTS as u64) as usize;
        c.next = c.next.wrapping_add(1);
    }
    if pick < SLOTS {
        c.keys[pick] = key;
        c.at[pick] = now;
    }
}

#[inline(always)]
fn release(hook: u32, key: u64) -> bool {
    let Some(c) = CLAIMS.get_ptr_mut(hook) else {
        return false;
    };
    // SAFETY: as in `claim`.
    let c = unsafe { &mut *c };
    for slot in c.keys.iter_mut() {
        if *slot == key {
            *slot = 0;
            return true;
        }
    }
    false
}
