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

/// A socket pointer as a tracepoint passed it, whose BTF type (`struct sock`) the verifier
/// knows: its fields, and those of the structs its pointers lead to, are read with plain
/// loads, which the kernel itself guards (a load that faults reads 0). Each
/// `bpf_probe_read_kernel` is a helper call, ~45 ns apiece on this machine (its return
/// thunks included), and they were most of what `set_state` spent per run.
///
/// The verifier accepts such a load only at an offset it knows, and only within a field of
/// the BTF type: the offsets come from `OFFSETS`, a read-only global that the loader
/// freezes, so the verifier reads them as constants; fields beyond `struct sock`
/// (`inet_sock`'s) and pointers found in kernel memory rather than handed over are read
/// with [`at`] instead. Loads are volatile so that the compiler neither merges two fields
/// into one load nor splits one, either of which the verifier would refuse.
#[derive(Clone, Copy)]
pub struct Typed(*const u8);

impl Typed {
    /// `p` must be a BTF-typed pointer the program got from its context or from another
    /// [`Typed`] (not an integer turned into a pointer).
    #[inline(always)]
    pub fn new(p: *const u8) -> Self {
        Typed(p)
    }

    #[inline(always)]
    pub fn ptr(self) -> *const u8 {
        self.0
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.0.is_null()
    }

    /// The scalar field at `off` (zero when BTF had no such field).
    #[inline(always)]
    pub fn get<T: Default + Copy>(self, off: u32) -> T {
        if off == KernelOffsets::MISSING {
            return T::default();
        }
        // SAFETY: a BTF-typed pointer at a verifier-checked offset; the kernel turns a
        // faulting load into a zero.
        unsafe { core::ptr::read_volatile(self.0.wrapping_add(off as usize) as *const T) }
    }

    /// The pointer field at `off`, itself typed (null when BTF had no such field).
    #[inline(always)]
    pub fn follow(self, off: u32) -> Typed {
        if off == KernelOffsets::MISSING {
            return Typed(core::ptr::null());
        }
        // SAFETY: as in `get`.
        Typed(unsafe {
            core::ptr::read_volatile(self.0.wrapping_add(off as usize) as *const *const u8)
        })
    }

    /// The struct embedded at `off` (the same object, further in).
    #[inline(always)]
    pub fn inner(self, off: u32) -> Typed {
        Typed(self.0.wrapping_add(off as usize))
    }

    #[inline(always)]
    pub fn family(self, off: &KernelOffsets) -> u16 {
        self.get(off.skc_family)
    }

    /// The socket's protocol (the tracepoint also fires for SCTP and MPTCP sockets).
    #[inline(always)]
    pub fn protocol(self, off: &KernelOffsets) -> u16 {
        if off.sk_protocol == KernelOffsets::MISSING {
            // Without the offset, trust the tracepoint: the kernel calls it for TCP sockets.
            return 6;
        }
        self.get(off.sk_protocol)
    }

    /// As [`netns`].
    #[inline(always)]
    pub fn netns(self, off: &KernelOffsets) -> u32 {
        let net = self.follow(off.skc_net);
        if net.is_null() {
            return 0;
        }
        net.get(off.net_ns_inum)
    }

    /// (local, remote) ports in host byte order. The local port is `skc_num` where set;
    /// where the kernel has already released it (a change to CLOSE), `inet_sport`, which
    /// holds it still but lies beyond `struct sock` and so takes a helper call.
    #[inline(always)]
    pub fn ports(self, off: &KernelOffsets) -> (u16, u16) {
        let dport = u16::from_be(self.get(off.skc_dport));
        let num: u16 = self.get(off.skc_num);
        if num != 0 {
            return (num, dport);
        }
        (u16::from_be(at(self.0, off.inet_sport)), dport)
    }

    /// (local, remote) addresses, network order, IPv4 in the first 4 bytes; an IPv6 address
    /// is read as four u32s (`in6_addr` is only 4-aligned).
    #[inline(always)]
    pub fn addresses(self, off: &KernelOffsets, family: u16) -> ([u8; 16], [u8; 16]) {
        let mut saddr = [0u32; 4];
        let mut daddr = [0u32; 4];
        if family == AF_INET6 {
            for i in 0..4 {
                saddr[i] = self.get(off.skc_v6_rcv_saddr.wrapping_add(4 * i as u32));
                daddr[i] = self.get(off.skc_v6_daddr.wrapping_add(4 * i as u32));
            }
        } else {
            saddr[0] = self.get(off.skc_rcv_saddr);
            daddr[0] = self.get(off.skc_daddr);
        }
        // SAFETY: [u32; 4] and [u8; 16] have the same size, and any bytes are valid u8s.
        unsafe {
            (
                core::mem::transmute::<[u32; 4], [u8; 16]>(saddr),
                core::mem::transmute::<[u32; 4], [u8; 16]>(daddr),
            )
        }
    }

    /// As [`cgroup`]: plain loads where the socket holds a `struct cgroup *` (5.15+);
    /// before, the field is an integer (a pointer or a classid/prioidx pair), whose target
    /// the verifier cannot type, so it is read with helper calls.
    #[inline(always)]
    pub fn cgroup(self, off: &KernelOffsets) -> u64 {
        if off.sk_cgroup_is_ptr == 0 {
            return cgroup(self.0, off);
        }
        let cgrp = self.follow(off.sk_cgroup);
        if cgrp.is_null() {
            return 0;
        }
        let kn = cgrp.follow(off.cgroup_kn);
        if kn.is_null() {
            return 0;
        }
        kn.get(off.kn_id)
    }
}

/// Bytes copied from the start of a socket-like object the verifier cannot type (a
/// timewait or request socket, found in kernel memory): one `bpf_probe_read_kernel` for
/// its whole `sock_common` (ports, family, state, namespace, addresses, cookie, chain link)
/// instead of one per field.
const COPY_BYTES: usize = 128;

pub struct Copied {
    obj: *const u8,
    bytes: [u64; COPY_BYTES / 8],
    /// Whether the copy succeeded (a failed one reads as zeros).
    pub ok: bool,
}

impl Copied {
    #[inline(always)]
    pub fn read(obj: *const u8) -> Copied {
        let mut bytes = core::mem::MaybeUninit::<[u64; COPY_BYTES / 8]>::uninit();
        // SAFETY: probe_read tolerates any address and fills all COPY_BYTES, with the
        // object's bytes or, when the read fails, with zeros. Read in place: a returned
        // copy would double the stack.
        let (bytes, ok) = unsafe {
            let rc = generated::bpf_probe_read_kernel(
                bytes.as_mut_ptr().cast(),
                COPY_BYTES as u32,
                obj.cast(),
            );
            (bytes.assume_init(), rc == 0)
        };
        Copied { obj, bytes, ok }
    }

    #[inline(always)]
    pub fn ptr(&self) -> *const u8 {
        self.obj
    }

    /// The field at `off`, from the copy when it lies within it (naturally aligned, as
    /// every kernel field is), else read from the object.
    #[inline(always)]
    pub fn get<T: Default + Copy>(&self, off: u32) -> T {
        let o = off as usize;
        if off != KernelOffsets::MISSING
            && o + core::mem::size_of::<T>() <= COPY_BYTES
            && o.is_multiple_of(core::mem::align_of::<T>())
        {
            // SAFETY: in bounds (checked above) and aligned for T within an 8-aligned
            // buffer; T is plain data.
            unsafe { *((self.bytes.as_ptr() as *const u8).add(o) as *const T) }
        } else {
            at(self.obj, off)
        }
    }

    #[inline(always)]
    pub fn family(&self, off: &KernelOffsets) -> u16 {
        self.get(off.skc_family)
    }

    #[inline(always)]
    pub fn state(&self, off: &KernelOffsets) -> u8 {
        self.get(off.skc_state)
    }

    #[inline(always)]
    pub fn cookie(&self, off: &KernelOffsets) -> u64 {
        self.get(off.skc_cookie)
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

    /// (local, remote) ports of a timewait or request socket, whose `sock_common` holds the
    /// local port in `skc_num` (host order).
    #[inline(always)]
    pub fn mini_ports(&self, off: &KernelOffsets) -> (u16, u16) {
        let sport: u16 = self.get(off.skc_num);
        let dport: u16 = self.get(off.skc_dport);
        (sport, u16::from_be(dport))
    }

    /// (local, remote) addresses, network order, IPv4 in the first 4 bytes.
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

/// The cookie stored in a socket-like object (`sock`, `inet_timewait_sock`), 0 if unset.
#[inline(always)]
pub fn cookie(obj: *const u8, off: &KernelOffsets) -> u64 {
    at(obj, off.skc_cookie)
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
