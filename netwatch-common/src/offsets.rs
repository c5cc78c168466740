//! Kernel struct offsets the programs need, resolved from the running kernel's BTF at load
//! time and passed in as a read-only global. Rust eBPF objects carry no CO-RE relocations,
//! so this is what keeps the programs right on kernels whose struct layouts differ.

/// Byte offsets into kernel structs. A field of `u32::MAX` was not found in BTF; the
/// programs then leave the corresponding record field zeroed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_daddr`
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr`
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_dport`
    pub skc_dport: u32,
    /// `sock_common.skc_family`
    pub skc_family: u32,
    /// `sock_common.skc_net` (a `possible_net_t`, i.e. a `struct net *`)
    pub skc_net: u32,
    /// `sock_common.skc_v6_daddr`
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`
    pub skc_v6_rcv_saddr: u32,
    /// `inet_sock.inet_sport`: the local port even where `skc_num` reads 0.
    pub inet_sport: u32,
    /// `net.ns.inum`
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (a `u16` since 5.6)
    pub sk_protocol: u32,
    /// `sock_common.skc_num`: local port of timewait and request sockets, host order.
    pub skc_num: u32,
    /// `sock_common.skc_cookie`: read from timewait sockets (the kernel copies it there)
    /// and from a request socket's child.
    pub skc_cookie: u32,
    /// `sock_common.skc_prot`
    pub skc_prot: u32,
    /// `proto.twsk_prot`
    pub proto_twsk_prot: u32,
    /// `timewait_sock_ops.twsk_slab`
    pub twsk_slab: u32,
    /// `proto.rsk_prot`
    pub proto_rsk_prot: u32,
    /// `request_sock_ops.slab`
    pub rsk_slab: u32,
    /// `inet_timewait_sock.tw_substate`
    pub tw_substate: u32,
    /// `request_sock.sk`: the child, once the handshake completed.
    pub req_sk: u32,
    /// `request_sock.num_retrans`
    pub req_num_retrans: u32,
    /// `sk_buff.head`
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16 offset from head)
    pub skb_network_header: u32,
    /// `sk_buff.transport_header` (u16 offset from head)
    pub skb_transport_header: u32,
    /// `sk_buff.dev`
    pub skb_dev: u32,
    /// `net_device.nd_net`
    pub dev_nd_net: u32,
    /// `sk_buff.sk`: the sending socket of a packet on its way out, which has no device yet
    pub skb_sk: u32,
    /// `tcp_timewait_sock.tw_ts_recent`
    pub tw_ts_recent: u32,
    /// `sock_common.skc_state`
    pub skc_state: u32,
    /// `nf_conn.timeout`
    pub ct_timeout: u32,
    /// `nf_conn.status`
    pub ct_status: u32,
    /// `nf_conn.ct_net`
    pub ct_net: u32,
    /// `nf_conn.proto.tcp.state`
    pub ct_tcp_state: u32,
    /// Original-direction tuple fields in `nf_conn`: `tuplehash[0].tuple.src.u3`, ...
    pub ct_src_addr: u32,
    pub ct_src_port: u32,
    pub ct_l3num: u32,
    pub ct_dst_addr: u32,
    pub ct_dst_port: u32,
    pub ct_protonum: u32,
    /// Where a socket keeps its cgroup pointer: `sock.sk_cgrp_data.cgroup` (5.15+) or
    /// `sock.sk_cgrp_data.val` (before: a cgroup pointer when its low bit is 0).
    pub sk_cgroup: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: the cgroup id, the inode of the cgroup's directory.
    pub kn_id: u32,
    /// `sock_common.skc_hash`: the connection's hash, which picks its established-table
    /// bucket (a timewait socket keeps its full socket's).
    pub skc_hash: u32,
    /// `sock_common.skc_nulls_node`: the link in that bucket's chain.
    pub skc_nulls_node: u32,
    /// `net.ipv4.tcp_death_row`: embedded before 6.1, a pointer since
    /// (`death_row_deref` says which).
    pub net_death_row: u32,
    /// 1 when `net_death_row` holds a pointer to the `inet_timewait_death_row`.
    pub death_row_deref: u32,
    /// `inet_timewait_death_row.hashinfo`
    pub death_row_hashinfo: u32,
    /// `inet_hashinfo.ehash`: the established table's buckets (one chain head each).
    pub hashinfo_ehash: u32,
    /// `inet_hashinfo.ehash_mask`
    pub hashinfo_ehash_mask: u32,
    /// `tcp_request_sock.snt_synack`: when its first SYN-ACK went out (µs of the
    /// monotonic clock `bpf_ktime_get_ns` reads), i.e. the request socket's birth.
    pub req_snt_synack: u32,
    /// 1 when `sk_cgroup` is `sk_cgrp_data.cgroup`, a typed pointer the programs follow
    /// with plain loads (5.15+); 0 when it is the older integer `val`.
    pub sk_cgroup_is_ptr: u32,
}

impl KernelOffsets {
    pub const MISSING: u32 = u32::MAX;

    /// The layout of the 6.18 x86_64 kernel this project is developed on; only a placeholder
    /// in the object file, always overwritten by the loader.
    pub const fn placeholder() -> Self {
        Self {
            skc_daddr: 0,
            skc_rcv_saddr: 4,
            skc_dport: 12,
            skc_family: 16,
            skc_net: 48,
            skc_v6_daddr: 56,
            skc_v6_rcv_saddr: 72,
            inet_sport: Self::MISSING,
            net_ns_inum: Self::MISSING,
            sk_protocol: Self::MISSING,
            skc_num: 14,
            skc_cookie: Self::MISSING,
            skc_prot: Self::MISSING,
            proto_twsk_prot: Self::MISSING,
            twsk_slab: Self::MISSING,
            proto_rsk_prot: Self::MISSING,
            rsk_slab: Self::MISSING,
            tw_substate: Self::MISSING,
            req_sk: Self::MISSING,
            req_num_retrans: Self::MISSING,
            skb_head: Self::MISSING,
            skb_network_header: Self::MISSING,
            skb_transport_header: Self::MISSING,
            skb_dev: Self::MISSING,
            dev_nd_net: Self::MISSING,
            skb_sk: Self::MISSING,
            tw_ts_recent: Self::MISSING,
            skc_state: 18,
            ct_timeout: Self::MISSING,
            ct_status: Self::MISSING,
            ct_net: Self::MISSING,
            ct_tcp_state: Self::MISSING,
            ct_src_addr: Self::MISSING,
            ct_src_port: Self::MISSING,
            ct_l3num: Self::MISSING,
            ct_dst_addr: Self::MISSING,
            ct_dst_port: Self::MISSING,
            ct_protonum: Self::MISSING,
            sk_cgroup: Self::MISSING,
            cgroup_kn: Self::MISSING,
            kn_id: Self::MISSING,
            skc_hash: Self::MISSING,
            skc_nulls_node: Self::MISSING,
            net_death_row: Self::MISSING,
            death_row_deref: 0,
            death_row_hashinfo: Self::MISSING,
            hashinfo_ehash: Self::MISSING,
            hashinfo_ehash_mask: Self::MISSING,
            req_snt_synack: Self::MISSING,
            sk_cgroup_is_ptr: 0,
        }
    }
}
