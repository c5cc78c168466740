//! Reads of kernel socket fields at offsets the loader resolved from BTF.
//!
//! Every read goes through `bpf_probe_read_kernel`, so a wrong offset yields a wrong value,
//! never a verifier rejection or a fault; an offset BTF did not have reads as zero.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated,
};
use netwatch_common::{offsets::KernelOffsets, AF_INET6};

#[inline(always)]
pub fn at<T: Default>(base: *const u8, off: u32) -> T {
    if off == KernelOffsets::MISSING {
        return T::default();
    }
    // SAFETY: probe_read tolerates any address; `base` is a kernel object pointer.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
        .unwrap_or_default()
}

/// Bytes of a socket copied by [`Head::read`]: all of `sock_common` up to the IPv6
/// addresses on the kernels netwatch runs on (`skc_v6_rcv_saddr` ends at 88 on x86_64 6.x).
const HEAD_BYTES: usize = 96;

/// The start of a socket (`sock_common`) copied with one `bpf_probe_read_kernel`, so a
/// transition's family, remote port, namespace pointer and addresses cost one helper call
/// instead of six; each helper call is a function call with its own fault handling, the
/// bulk of what `set_state` spent per run. A field the loader found outside these bytes (a
/// kernel with another layout) is read on its own, as before.
pub struct Head {
    sk: *const u8,
    bytes: [u64; HEAD_BYTES / 8],
}

impl Head {
    #[inline(always)]
    pub fn read(sk: *const u8) -> Head {
        let mut bytes = core::mem::MaybeUninit::<[u64; HEAD_BYTES / 8]>::uninit();
        // SAFETY: probe_read tolerates any address and fills all HEAD_BYTES: with the
        // socket's bytes, or with zeros when the read fails (which the family check of every
        // caller then refuses). Read in place: a returned copy would double the stack.
        let bytes = unsafe {
            generated::bpf_probe_read_kernel(
                bytes.as_mut_ptr().cast(),
                HEAD_BYTES as u32,
                sk.cast(),
            );
            bytes.assume_init()
        };
        Head { sk, bytes }
    }

    /// The field at `off`, from the copy when it lies within it (naturally aligned, as
    /// every kernel field is), else read from the socket.
    #[inline(always)]
    pub fn get<T: Default + Copy>(&self, off: u32) -> T {
        let o = off as usize;
        if off != KernelOffsets::MISSING
            && o + core::mem::size_of::<T>() <= HEAD_BYTES
            && o.is_multiple_of(core::mem::align_of::<T>())
        {
            // SAFETY: in bounds (checked above) and aligned for T within an 8-aligned
            // buffer; T is plain data.
            unsafe { *((self.bytes.as_ptr() as *const u8).add(o) as *const T) }
        } else {
            at(self.sk, off)
        }
    }

    #[inline(always)]
    pub fn family(&self, off: &KernelOffsets) -> u16 {
        self.get(off.skc_family)
    }

    /// As [`netns`].
    #[inline(always)]
    pub fn netns(&self, off: &KernelOffsets) -> u32 {
        let net: u64 = self.get(off.skc_net);
        if net == 0 {
            return 0;
        }
        at(net as *const u8, off.net_ns_inum)
    }

    /// As [`ports`]: the local port still needs its own read (`inet_sport` lies beyond
    /// `sock_common`).
    #[inline(always)]
    pub fn ports(&self, off: &KernelOffsets) -> (u16, u16) {
        let sport: u16 = at(self.sk, off.inet_sport);
        let dport: u16 = self.get(off.skc_dport);
        (u16::from_be(sport), u16::from_be(dport))
    }

    /// As [`addresses`], from the copy.
    #[inline(always)]
    pub fn addresses(&self, off: &KernelOffsets, family: u16) -> ([u8; 16], [u8; 16]) {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET6 {
            saddr = self.get(off.skc_v6_rcv_saddr);
            daddr = self.get(off.skc_v6_daddr);
        } else {
            saddr[..4].copy_from_slice(&self.get::<[u8; 4]>(off.skc_rcv_saddr));
            daddr[..4].copy_from_slice(&self.get::<[u8; 4]>(off.skc_daddr));
        }
        (saddr, daddr)
    }
}

#[inline(always)]
pub fn protocol(sk: *const u8, off: &KernelOffsets) -> u16 {
    if off.sk_protocol == KernelOffsets::MISSING {
        // Without the offset, trust the tracepoint: the kernel calls it for TCP sockets.
        return 6;
    }
    at(sk, off.sk_protocol)
}

#[inline(always)]
pub fn family(sk: *const u8, off: &KernelOffsets) -> u16 {
    at(sk, off.skc_family)
}

/// Inode of the socket's network namespace (0 when unreadable).
#[inline(always)]
pub fn netns(sk: *const u8, off: &KernelOffsets) -> u32 {
    let net: u64 = at(sk, off.skc_net);
    if net == 0 {
        return 0;
    }
    at(net as *const u8, off.net_ns_inum)
}

/// (local, remote) ports in host byte order. The local port comes from `inet_sport`, which
/// holds it at the transitions where `skc_num` already reads 0.
#[inline(always)]
pub fn ports(sk: *const u8, off: &KernelOffsets) -> (u16, u16) {
    let sport: u16 = at(sk, off.inet_sport);
    let dport: u16 = at(sk, off.skc_dport);
    (u16::from_be(sport), u16::from_be(dport))
}

/// Fills (local, remote) addresses; false if a read failed.
#[inline(always)]
pub fn addresses(
    sk: *const u8,
    off: &KernelOffsets,
    family: u16,
    saddr: &mut [u8; 16],
    daddr: &mut [u8; 16],
) -> bool {
    // SAFETY: as in `at`.
    unsafe {
        if family == AF_INET6 {
            match (
                bpf_probe_read_kernel(
                    sk.wrapping_add(off.skc_v6_rcv_saddr as usize) as *const [u8; 16]
                ),
                bpf_probe_read_kernel(sk.wrapping_add(off.skc_v6_daddr as usize) as *const [u8; 16]),
            ) {
                (Ok(s), Ok(d)) => {
                    *saddr = s;
                    *daddr = d;
                    true
                }
                _ => false,
            }
        } else {
            match (
                bpf_probe_read_kernel(sk.wrapping_add(off.skc_rcv_saddr as usize) as *const [u8; 4]),
                bpf_probe_read_kernel(sk.wrapping_add(off.skc_daddr as usize) as *const [u8; 4]),
            ) {
                (Ok(s), Ok(d)) => {
                    saddr[..4].copy_from_slice(&s);
                    daddr[..4].copy_from_slice(&d);
                    true
                }
                _ => false,
            }
        }
    }
}

/// The cookie stored in a socket-like object (`sock`, `inet_timewait_sock`), 0 if unset.
#[inline(always)]
pub fn cookie(obj: *const u8, off: &KernelOffsets) -> u64 {
    at(obj, off.skc_cookie)
}

/// (local, remote) ports of a timewait or request socket, whose `sock_common` holds the
/// local port in `skc_num` (host order).
#[inline(always)]
pub fn mini_ports(obj: *const u8, off: &KernelOffsets) -> (u16, u16) {
    let sport: u16 = at(obj, off.skc_num);
    let dport: u16 = at(obj, off.skc_dport);
    (sport, u16::from_be(dport))
}

/// The socket's cgroup id: `sk_cgrp_data`'s cgroup, then its kernfs node's id; 0 when
/// unreadable, or (before 5.15) when the field holds a classid/prioidx pair instead of a
/// pointer (low bit set).
#[inline(always)]
pub fn cgroup(sk: *const u8, off: &KernelOffsets) -> u64 {
    let cgrp: u64 = at(sk, off.sk_cgroup);
    if cgrp == 0 || cgrp & 1 != 0 {
        return 0;
    }
    let kn: u64 = at(cgrp as *const u8, off.cgroup_kn);
    if kn == 0 {
        return 0;
    }
    at(kn as *const u8, off.kn_id)
}

/// (tgid, comm) of the task on this CPU: only meaningful where the caller knows it runs in
/// process context on behalf of that task.
#[inline(always)]
pub fn current_task() -> (u32, [u8; 16]) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (tgid, bpf_get_current_comm().unwrap_or([0; 16]))
}

/// The IP addresses of a TCP segment and where its TCP header starts.
pub struct Segment {
    pub family: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub tcp: *const u8,
}

const IPPROTO_TCP: u8 = 6;

/// Parses the network header of `skb` as the receive path left it; None for anything but
/// TCP over IPv4 or IPv6 (extension headers are not walked).
#[inline(always)]
pub fn segment(skb: *const u8, off: &KernelOffsets) -> Option<Segment> {
    let head: u64 = at(skb, off.skb_head);
    if head == 0 {
        return None;
    }
    let nh: u16 = at(skb, off.skb_network_header);
    let th: u16 = at(skb, off.skb_transport_header);
    let ip = (head + nh as u64) as *const u8;
    let mut seg = Segment {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        tcp: (head + th as u64) as *const u8,
    };
    match at::<u8>(ip, 0) >> 4 {
        4 if at::<u8>(ip, 9) == IPPROTO_TCP => {
            seg.family = netwatch_common::AF_INET;
            seg.saddr[..4].copy_from_slice(&at::<[u8; 4]>(ip, 12));
            seg.daddr[..4].copy_from_slice(&at::<[u8; 4]>(ip, 16));
        }
        6 if at::<u8>(ip, 6) == IPPROTO_TCP => {
            seg.family = AF_INET6;
            seg.saddr = at(ip, 8);
            seg.daddr = at(ip, 24);
        }
        _ => return None,
    }
    Some(seg)
}

/// Inode of the network namespace a dropped packet belongs to: its device's, or, for a
/// packet on its way out that has no device yet (conntrack refusing a local connect at
/// LOCAL_OUT), its sending socket's.
#[inline(always)]
pub fn packet_netns(skb: *const u8, off: &KernelOffsets) -> u32 {
    let dev: u64 = at(skb, off.skb_dev);
    if dev != 0 {
        let net: u64 = at(dev as *const u8, off.dev_nd_net);
        if net != 0 {
            return at(net as *const u8, off.net_ns_inum);
        }
    }
    let sk: u64 = at(skb, off.skb_sk);
    if sk == 0 {
        return 0;
    }
    netns(sk as *const u8, off)
}
