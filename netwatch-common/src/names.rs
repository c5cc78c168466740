//! Names of maps, programs and globals in the kernel object, spelled once so the loader and
//! the eBPF crate cannot drift apart (a test in `netwatch` checks they all resolve).

pub mod map {
    pub const EVENTS: &str = "EVENTS";
    /// Socket address -> entry time and id, for kernels without the cookie helper; sized
    /// to one entry elsewhere.
    pub const SOCK_PTR: &str = "SOCK_PTR";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FILTER_NETNS: &str = "FILTER_NETNS";
    pub const FILTER_PORTS: &str = "FILTER_PORTS";
    pub const CACHES: &str = "CACHES";
    pub const TW_STATE: &str = "TW_STATE";
    pub const CHILD_BORN: &str = "CHILD_BORN";
    pub const CT_BORN: &str = "CT_BORN";
    pub const CLAIMS: &str = "CLAIMS";
}

pub mod program {
    /// tp_btf on `inet_sock_set_state`, sockets keyed by cookie (5.12+).
    pub const SET_STATE: &str = "set_state";
    /// The same keyed by socket address, for kernels whose tracing programs cannot call
    /// `bpf_get_socket_cookie` (5.10, 5.11).
    pub const SET_STATE_PTR: &str = "set_state_ptr";
    /// tp_btf on `kmem_cache_alloc`: births of conntrack entries (6.0+; fexit, without the
    /// allocation's caller, cannot tell them apart).
    pub const SLAB_ALLOC: &str = "slab_alloc";
    /// tp_btf on `kmem_cache_free`: deaths of timewait and request sockets.
    pub const SLAB_FREE: &str = "slab_free";
    /// fentry on `kmem_cache_free`, for kernels whose slab tracepoints carry no cache
    /// (before 6.0).
    pub const SLAB_FREE_FENTRY: &str = "slab_free_fentry";
    /// tp_btf on `kfree_skb` with `rx_sk` (6.8+): drops with a reason (PAWS, listen
    /// overflow, netfilter) and segments handled by timewait sockets.
    pub const DROPS: &str = "drops";
    /// tp_btf on `kfree_skb` with a reason but no `rx_sk` (5.17 to 6.7).
    pub const DROPS_NO_RX_SK: &str = "drops_no_rx_sk";
    /// fexit on `tcp_timewait_state_process`: the peer's FIN reaching an orphan's FIN_WAIT2
    /// timewait socket, where `kfree_skb` does not name the socket.
    pub const TW_SEGMENT_FEXIT: &str = "tw_segment_fexit";
    /// tp_btf on `tcp_retransmit_synack`.
    pub const SYNACK_RETRANSMIT: &str = "synack_retransmit";
    /// fentry on `tcp_twsk_destructor`: deaths of TCP timewait sockets (both families), one
    /// run per death where the slab hook runs ~22 times a connection for other caches.
    /// Kernels that refuse fentry (lockdown, no direct-call trampolines) use the slab hook.
    pub const TW_DESTRUCTOR: &str = "tw_destructor";
    /// fentry on `tcp_v4_reqsk_destructor`: deaths of IPv4 request sockets.
    pub const REQ_DESTRUCTOR: &str = "req_destructor";
    /// fentry on `tcp_v6_reqsk_destructor`: deaths of IPv6 request sockets.
    pub const REQ6_DESTRUCTOR: &str = "req6_destructor";
    /// The second program of a hook, which handles the events the kernel kept from the
    /// first because they arrived nested in it on one CPU: (first, second).
    pub const NESTED: [(&str, &str); 10] = [
        (SET_STATE, "set_state_nested"),
        (SET_STATE_PTR, "set_state_ptr_nested"),
        (SLAB_ALLOC, "slab_alloc_nested"),
        (SLAB_FREE, "slab_free_nested"),
        (SLAB_FREE_FENTRY, "slab_free_fentry_nested"),
        (DROPS, "drops_nested"),
        (DROPS_NO_RX_SK, "drops_no_rx_sk_nested"),
        (TW_DESTRUCTOR, "tw_destructor_nested"),
        (REQ_DESTRUCTOR, "req_destructor_nested"),
        (REQ6_DESTRUCTOR, "req6_destructor_nested"),
    ];
}

/// The kernel hook each program attaches to, for preflight checks against BTF.
pub mod hook {
    pub const SET_STATE: &str = "inet_sock_set_state";
    pub const SLAB_ALLOC: &str = "kmem_cache_alloc";
    pub const SLAB_FREE: &str = "kmem_cache_free";
    pub const DROPS: &str = "kfree_skb";
    pub const SYNACK_RETRANSMIT: &str = "tcp_retransmit_synack";
    /// Kernel functions for fentry/fexit variants (tried where tracepoints fall short).
    pub const FN_SLAB_FREE: &str = "kmem_cache_free";
    pub const FN_TW_SEGMENT: &str = "tcp_timewait_state_process";
    /// The destructors the slab frees of timewait and request sockets call just before
    /// (`inet_twsk_free`, `__reqsk_free`), through the protocol's ops: real functions on
    /// every kernel, present in the BTF of Debian's 5.10 to 7.3.
    pub const FN_TW_DESTRUCTOR: &str = "tcp_twsk_destructor";
    pub const FN_REQ_DESTRUCTOR: &str = "tcp_v4_reqsk_destructor";
    pub const FN_REQ6_DESTRUCTOR: &str = "tcp_v6_reqsk_destructor";
}

pub mod global {
    pub const FILTERS: &str = "FILTERS";
    pub const OFFSETS: &str = "OFFSETS";
}

/// Bounds of the kernel maps, shared so userspace can report fill levels against them.
pub mod limits {
    /// Sockets whose id and state-entry time are tracked at once by address, on kernels
    /// without the cookie helper (LRU beyond this); kernels with it keep no entry per socket.
    pub const SOCK_PTR_ENTRIES: u32 = 1 << 18;
    /// Ring buffer size: ~80k records of ~104 B, about 160 ms of the highest churn measured
    /// here (~500k records/s). Userspace empties it every 5 ms on a thread that does nothing
    /// else and runs at a raised priority (netwatch's ring_reader and record_priority), so
    /// a machine saturated at nice 0 does not keep it waiting. Measured with the bench's
    /// JSON mode at 4 to 32 clients on a 2-core machine: 8 MiB lost nothing; 4 MiB lost
    /// 2,500 records at 16 clients; 16 MiB (before the priority) lost nothing but cost 16
    /// MB more of VmHWM, which counts the ring's pages twice (they are mapped twice).
    pub const EVENTS_BYTES: u32 = 8 << 20;
    pub const FILTER_ENTRIES: u32 = 64;
    /// Timewait sockets tracked at once; the default `tcp_max_tw_buckets` is 262144 on
    /// large machines.
    pub const TW_ENTRIES: u32 = 1 << 18;
    /// Children tracked at once from their birth until both accept() and their leaving
    /// ESTABLISHED were seen. Beyond this the LRU lets roughly the least recently used go:
    /// mostly long-lived connections, whose request socket's record has long told userspace
    /// their birth. A child let go before accept() makes its own SYN_RECV -> ESTABLISHED
    /// record, and its request socket's record says the handshake completed, untimed.
    pub const REQ_ENTRIES: u32 = 1 << 16;
    /// Conntrack entries whose allocation time is kept (the default nf_conntrack_max is
    /// 262144 on this class of machine; beyond, lifetimes of the oldest are unknown).
    pub const CT_ENTRIES: u32 = 1 << 18;
}
