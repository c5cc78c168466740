//! Resolves the kernel struct offsets the programs read, from this kernel's BTF.

use netwatch_common::offsets::KernelOffsets;

use crate::btf::Btf;

/// Filled in after the struct, from paths through an array member.
const MISSING_UNTIL_BELOW: u32 = KernelOffsets::MISSING;

/// Offsets for the running kernel, and the fields BTF did not have (reported to the user:
/// records then carry zeros there rather than wrong values).
pub fn resolve(btf: &Btf) -> (KernelOffsets, Vec<String>) {
    let mut missing = Vec::new();
    let mut get = |strukt: &str, path: &str| match btf.member_offset(strukt, path) {
        Ok(off) => off,
        Err(_) => {
            missing.push(format!("{strukt}.{path}"));
            KernelOffsets::MISSING
        }
    };
    let offsets = KernelOffsets {
        skc_daddr: get("sock_common", "skc_daddr"),
        skc_rcv_saddr: get("sock_common", "skc_rcv_saddr"),
        skc_dport: get("sock_common", "skc_dport"),
        skc_family: get("sock_common", "skc_family"),
        skc_net: get("sock_common", "skc_net"),
        skc_v6_daddr: get("sock_common", "skc_v6_daddr"),
        skc_v6_rcv_saddr: get("sock_common", "skc_v6_rcv_saddr"),
        inet_sport: get("inet_sock", "inet_sport"),
        net_ns_inum: get("net", "ns.inum"),
        sk_protocol: get("sock", "sk_protocol"),
        skc_num: get("sock_common", "skc_num"),
        skc_cookie: get("sock_common", "skc_cookie"),
        skc_prot: get("sock_common", "skc_prot"),
        proto_twsk_prot: get("proto", "twsk_prot"),
        twsk_slab: get("timewait_sock_ops", "twsk_slab"),
        proto_rsk_prot: get("proto", "rsk_prot"),
        rsk_slab: get("request_sock_ops", "slab"),
        tw_substate: get("inet_timewait_sock", "tw_substate"),
        req_sk: get("request_sock", "sk"),
        req_num_retrans: get("request_sock", "num_retrans"),
        skb_head: get("sk_buff", "head"),
        skb_network_header: get("sk_buff", "network_header"),
        skb_transport_header: get("sk_buff", "transport_header"),
        skb_dev: get("sk_buff", "dev"),
        dev_nd_net: get("net_device", "nd_net"),
        skb_sk: get("sk_buff", "sk"),
        tw_ts_recent: get("tcp_timewait_sock", "tw_ts_recent"),
        skc_state: get("sock_common", "skc_state"),
        ct_timeout: get("nf_conn", "timeout"),
        ct_status: get("nf_conn", "status"),
        ct_net: get("nf_conn", "ct_net"),
        ct_tcp_state: get("nf_conn", "proto.tcp.state"),
        ct_src_addr: MISSING_UNTIL_BELOW,
        ct_src_port: MISSING_UNTIL_BELOW,
        ct_l3num: MISSING_UNTIL_BELOW,
        ct_dst_addr: MISSING_UNTIL_BELOW,
        ct_dst_port: MISSING_UNTIL_BELOW,
        ct_protonum: MISSING_UNTIL_BELOW,
        sk_cgroup: MISSING_UNTIL_BELOW,
        cgroup_kn: get("cgroup", "kn"),
        kn_id: get("kernfs_node", "id"),
        skc_hash: get("sock_common", "skc_hash"),
        skc_nulls_node: get("sock_common", "skc_nulls_node"),
        net_death_row: get("net", "ipv4.tcp_death_row"),
        death_row_deref: 0,
        death_row_hashinfo: get("inet_timewait_death_row", "hashinfo"),
        hashinfo_ehash: get("inet_hashinfo", "ehash"),
        hashinfo_ehash_mask: get("inet_hashinfo", "ehash_mask"),
        req_snt_synack: get("tcp_request_sock", "snt_synack"),
        sk_cgroup_is_ptr: 0,
    };
    // The original-direction tuple: `tuplehash` is an array, element 0 at its start.
    let mut offsets = offsets;
    let base = get("nf_conn", "tuplehash");
    let mut in_tuple = |path: &str| match (base, btf.member_offset("nf_conntrack_tuple_hash", path))
    {
        (b, Ok(o)) if b != KernelOffsets::MISSING => b + o,
        _ => {
            missing.push(format!("nf_conntrack_tuple_hash.{path}"));
            KernelOffsets::MISSING
        }
    };
    offsets.ct_src_addr = in_tuple("tuple.src.u3");
    offsets.ct_src_port = in_tuple("tuple.src.u.all");
    offsets.ct_l3num = in_tuple("tuple.src.l3num");
    offsets.ct_dst_addr = in_tuple("tuple.dst.u3");
    offsets.ct_dst_port = in_tuple("tuple.dst.u.all");
    offsets.ct_protonum = in_tuple("tuple.dst.protonum");
    // 5.15 made `sk_cgrp_data` a plain cgroup pointer; before, a union whose `val` is one
    // when its low bit is clear. Either is read as one u64.
    let cgroup = ["sk_cgrp_data.cgroup", "sk_cgrp_data.val"]
        .iter()
        .enumerate()
        .find_map(|(i, path)| Some((i, btf.member_offset("sock", path).ok()?)));
    (offsets.sk_cgroup, offsets.sk_cgroup_is_ptr) = match cgroup {
        Some((i, at)) => (at, u32::from(i == 0)),
        None => {
            missing.push("sock.sk_cgrp_data".to_owned());
            (KernelOffsets::MISSING, 0)
        }
    };
    // 6.1 made `tcp_death_row` a pointer (per-netns established tables): a path through
    // it resolves only where it is still embedded.
    offsets.death_row_deref = u32::from(
        btf.member_offset("net", "ipv4.tcp_death_row.hashinfo")
            .is_err(),
    );
    (offsets, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_resolves_every_field() {
        let Ok(btf) = Btf::from_file(crate::btf::VMLINUX) else {
            return;
        };
        let (off, missing) = resolve(&btf);
        assert!(missing.is_empty(), "missing: {missing:?}");
        // The stable head of sock_common, which has not moved in a decade.
        assert_eq!(
            (
                off.skc_daddr,
                off.skc_rcv_saddr,
                off.skc_dport,
                off.skc_family
            ),
            (0, 4, 12, 16)
        );
    }
}
