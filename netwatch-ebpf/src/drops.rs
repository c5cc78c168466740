//! `kfree_skb`: packets the kernel dropped with a reason. Fires for every dropped packet,
//! so the reason is compared with the few that matter before anything is read.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::BtfTracePointContext,
};
use netwatch_common::{kind, offsets::KernelOffsets, DropRecord, RecordHeader, AF_INET, AF_INET6};

use crate::{emit, filters, offsets, read};

const IPPROTO_TCP: u8 = 6;

#[inline(always)]
pub fn try_kfree_skb(ctx: &BtfTracePointContext) {
    let reason = ctx.arg::<u32>(2);
    let f = filters();
    let mut wanted = false;
    for r in f.drop_reasons {
        wanted |= r == reason;
    }
    if !wanted {
        return;
    }
    let skb: *const u8 = ctx.arg(0);
    let rx_sk: *const u8 = ctx.arg(3);
    let off = offsets();
    let mut rec = DropRecord {
        header: RecordHeader {
            kind: kind::DROP,
            size: DropRecord::SIZE as u16,
            _pad: 0,
            mono_ns: unsafe { bpf_ktime_get_ns() },
        },
        reason,
        ..DropRecord::default()
    };
    let head: u64 = read::at(skb, off.skb_head);
    let nh: u16 = read::at(skb, off.skb_network_header);
    let th: u16 = read::at(skb, off.skb_transport_header);
    if head == 0 {
        return;
    }
    let ip = (head + nh as u64) as *const u8;
    let version = read::at::<u8>(ip, 0) >> 4;
    let (sport, dport) = if version == 4 {
        if read::at::<u8>(ip, 9) != IPPROTO_TCP {
            return;
        }
        rec.family = AF_INET;
        rec.saddr[..4].copy_from_slice(&read::at::<[u8; 4]>(ip, 12));
        rec.daddr[..4].copy_from_slice(&read::at::<[u8; 4]>(ip, 16));
        tcp_header(&mut rec, head, th)
    } else if version == 6 {
        // Only a TCP header straight after the fixed header; extension headers are rare
        // on the segments that matter here and are left out.
        if read::at::<u8>(ip, 6) != IPPROTO_TCP {
            return;
        }
        rec.family = AF_INET6;
        rec.saddr = read::at(ip, 8);
        rec.daddr = read::at(ip, 24);
        tcp_header(&mut rec, head, th)
    } else {
        return;
    };
    rec.netns = if !rx_sk.is_null() {
        read::netns(rx_sk, &off)
    } else {
        device_netns(skb, &off)
    };
    if !emit::wanted(rec.netns, dport, sport) {
        return;
    }
    if !rx_sk.is_null() && read::family(rx_sk, &off) != 0 {
        let state: u8 = read::at(rx_sk, off.skc_state);
        // A timewait socket (its skc_state is TIME_WAIT): its last accepted TSval.
        if state == netwatch_common::state::TIME_WAIT {
            rec.ts_recent = read::at(rx_sk, off.tw_ts_recent);
            rec.has_ts_recent = 1;
        }
    }
    emit::send(&rec);
}

/// Copies the TCP header with its options; returns (source port, destination port).
#[inline(always)]
fn tcp_header(rec: &mut DropRecord, head: u64, th: u16) -> (u16, u16) {
    let tcp = (head + th as u64) as *const u8;
    // SAFETY: probe_read tolerates any address; a failed read leaves zeros.
    if let Ok(bytes) = unsafe { bpf_probe_read_kernel(tcp as *const [u8; 60]) } {
        rec.tcp = bytes;
    }
    let doff = (rec.tcp[12] >> 4) as u16 * 4;
    rec.tcp_len = if (20..=60).contains(&doff) { doff } else { 20 };
    (
        u16::from_be_bytes([rec.tcp[0], rec.tcp[1]]),
        u16::from_be_bytes([rec.tcp[2], rec.tcp[3]]),
    )
}

#[inline(always)]
fn device_netns(skb: *const u8, off: &KernelOffsets) -> u32 {
    let dev: u64 = read::at(skb, off.skb_dev);
    if dev == 0 {
        return 0;
    }
    let net: u64 = read::at(dev as *const u8, off.dev_nd_net);
    if net == 0 {
        return 0;
    }
    read::at(net as *const u8, off.net_ns_inum)
}
