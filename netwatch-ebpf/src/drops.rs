//! `kfree_skb`: packets the kernel dropped with a reason. Fires for every dropped packet,
//! so the reason is compared with the few that matter before anything is read.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::BtfTracePointContext,
};
use netwatch_common::{kind, DropRecord, RecordHeader};

use crate::{emit, filters, offsets, read, timewait, twins::Twin};

/// `rx_sk` reads the tracepoint's fourth argument (6.8+); the variant for kernels without
/// it passes a null pointer, so the verifier never sees that context read there.
#[inline(always)]
pub fn try_kfree_skb(ctx: &BtfTracePointContext, twin: Twin, rx_sk: impl Fn() -> *const u8) {
    let reason = ctx.arg::<u32>(2);
    let f = filters();
    if reason == f.tw_segment_reason {
        if !twin.takes(ctx.arg::<*const u8>(0) as u64) {
            return;
        }
        let rx_sk = rx_sk();
        if !rx_sk.is_null() {
            timewait::segment_handled(rx_sk);
            timewait_reset(ctx.arg(0), rx_sk);
        }
        return;
    }
    let mut wanted = false;
    for r in f.drop_reasons {
        wanted |= r == reason;
    }
    if wanted && twin.takes(ctx.arg::<*const u8>(0) as u64) {
        report(ctx.arg(0), rx_sk(), reason);
    }
}

/// If `skb`, just handled by the timewait socket `tw`, is a RST, reports it: the kernel
/// kills a TIME_WAIT socket on an in-window RST (unless `tcp_rfc1337`), and the record is
/// how userspace tells that early end from a reused port. Cheap for everything else: one
/// byte of the TCP header is read before anything is built.
#[inline(never)]
pub fn timewait_reset(skb: *const u8, tw: *const u8) {
    let Some(seg) = read::segment(skb, offsets()) else {
        return;
    };
    if read::at::<u8>(seg.tcp, 13) & TCP_RST == 0 {
        return;
    }
    send(kind::TIMEWAIT_RESET, skb, tw, 0);
}

const TCP_RST: u8 = 0x04;

#[inline(never)]
fn report(skb: *const u8, rx_sk: *const u8, reason: u32) {
    send(kind::DROP, skb, rx_sk, reason);
}

#[inline(always)]
fn send(record_kind: u16, skb: *const u8, rx_sk: *const u8, reason: u32) {
    let off = offsets();
    let mut rec = DropRecord {
        header: RecordHeader {
            kind: record_kind,
            size: DropRecord::SIZE as u16,
            _pad: 0,
            mono_ns: unsafe { bpf_ktime_get_ns() },
        },
        reason,
        ..DropRecord::default()
    };
    let Some(seg) = read::segment(skb, off) else {
        return;
    };
    rec.family = seg.family;
    rec.saddr = seg.saddr;
    rec.daddr = seg.daddr;
    let (sport, dport) = tcp_header(&mut rec, seg.tcp);
    rec.netns = if !rx_sk.is_null() {
        read::netns(rx_sk, off)
    } else {
        read::packet_netns(skb, off)
    };
    if !emit::wanted(rec.netns, dport, sport) {
        return;
    }
    if !rx_sk.is_null() && read::family(rx_sk, off) != 0 {
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
fn tcp_header(rec: &mut DropRecord, tcp: *const u8) -> (u16, u16) {
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
