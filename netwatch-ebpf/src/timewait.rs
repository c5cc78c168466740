//! The moment an orphan's FIN_WAIT2 timewait socket becomes TIME_WAIT.
//!
//! A socket closed by its application before the peer's FIN becomes a timewait socket in
//! substate FIN_WAIT2 as soon as its own FIN is acked (the usual path of a client's active
//! close). When the peer's FIN arrives the kernel flips the substate to TIME_WAIT with no
//! tracepoint of its own; the segment is then freed through `kfree_skb` with the timewait
//! socket as `rx_sk` (reason NOT_SPECIFIED on 6.18), which is where this looks; kernels
//! whose `kfree_skb` has no `rx_sk` call this from fexit on `tcp_timewait_state_process`.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netwatch_common::{counter, flag, state, TimewaitEntry, DWELL_UNKNOWN};

use crate::{bump, emit, offsets, read, TW_STATE};

/// `tw` received a segment: if it was the FIN an orphan's FIN_WAIT2 waited for, report
/// FIN_WAIT2 -> TIME_WAIT.
// Its own BPF function: inlined into the drop handler, both records would share one stack.
#[inline(never)]
pub fn segment_handled(tw: *const u8) {
    let off = offsets();
    if read::at::<u8>(tw, off.skc_state) != state::TIME_WAIT
        || read::at::<u8>(tw, off.tw_substate) != state::TIME_WAIT
    {
        return;
    }
    let Some(entry) = (unsafe { TW_STATE.get(tw as u64) }).copied() else {
        return;
    };
    if entry.state != state::FIN_WAIT2 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let updated = TimewaitEntry {
        since_ns: now,
        state: state::TIME_WAIT,
        ..entry
    };
    if TW_STATE.insert(tw as u64, updated, 0).is_err() {
        bump(counter::STATE_MAP_FULL);
    }
    let dwell_ns = if entry.since_ns != 0 {
        now.wrapping_sub(entry.since_ns)
    } else {
        DWELL_UNKNOWN
    };
    emit::timewait_transition(
        &read::Copied::read(tw),
        off,
        now,
        entry.sock_id,
        dwell_ns,
        (state::FIN_WAIT2, state::TIME_WAIT, flag::TIMEWAIT),
    );
}
