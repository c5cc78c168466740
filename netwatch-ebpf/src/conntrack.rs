//! Conntrack entries through their slab cache: the kernel has no conntrack tracepoints.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use netwatch_common::{counter, kind, ConntrackEnd, RecordHeader, AF_INET6};

use crate::{bump, emit, offsets, read, CACHES, CT_BORN};

/// Remembers the cache an allocation inside `__nf_conntrack_alloc` came from.
#[inline(always)]
pub fn learn_cache(cache: u64) {
    if let Some(c) = CACHES.get_ptr_mut(0) {
        // SAFETY: single-entry array; every writer stores the same pointer.
        unsafe { (*c).conntrack = cache };
    }
}

#[inline(always)]
pub fn born(ct: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    if CT_BORN.insert(ct, now, 0).is_err() {
        bump(counter::STATE_MAP_FULL);
    }
}

#[inline(always)]
pub fn died(ct: *const u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = ct as u64;
    let born_ns = unsafe { CT_BORN.get(key) }.copied().unwrap_or(0);
    let _ = CT_BORN.remove(key);
    let off = offsets();
    let net: u64 = read::at(ct, off.ct_net);
    let netns: u32 = if net != 0 {
        read::at(net as *const u8, off.net_ns_inum)
    } else {
        0
    };
    let sport = u16::from_be(read::at(ct, off.ct_src_port));
    let dport = u16::from_be(read::at(ct, off.ct_dst_port));
    if !emit::wanted(netns, sport, dport) {
        return;
    }
    let l3num: u16 = read::at(ct, off.ct_l3num);
    let mut rec = ConntrackEnd {
        header: RecordHeader {
            kind: kind::CONNTRACK_END,
            size: ConntrackEnd::SIZE as u16,
            _pad: 0,
            mono_ns: now,
        },
        born_ns,
        status: read::at(ct, off.ct_status),
        jiffies: unsafe { bpf_jiffies64() },
        saddr: [0; 16],
        daddr: [0; 16],
        timeout: read::at(ct, off.ct_timeout),
        netns,
        sport,
        dport,
        l3num,
        l4proto: read::at(ct, off.ct_protonum),
        tcp_state: read::at(ct, off.ct_tcp_state),
    };
    if l3num == AF_INET6 {
        rec.saddr = read::at(ct, off.ct_src_addr);
        rec.daddr = read::at(ct, off.ct_dst_addr);
    } else {
        rec.saddr[..4].copy_from_slice(&read::at::<[u8; 4]>(ct, off.ct_src_addr));
        rec.daddr[..4].copy_from_slice(&read::at::<[u8; 4]>(ct, off.ct_dst_addr));
    }
    emit::send(&rec);
}
