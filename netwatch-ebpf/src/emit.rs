//! Filtering and sending of records: the only place that touches the ring buffer.

use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use netwatch_common::counter;

use crate::{bump, filters, EVENTS, FILTER_NETNS, FILTER_PORTS};

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
