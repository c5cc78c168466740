//! Names of maps, programs and globals in the kernel object, spelled once so the loader and
//! the eBPF crate cannot drift apart (a test in `netwatch` checks they all resolve).

pub mod map {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCK_STATE: &str = "SOCK_STATE";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FILTER_NETNS: &str = "FILTER_NETNS";
    pub const FILTER_PORTS: &str = "FILTER_PORTS";
}

pub mod program {
    /// tp_btf on `inet_sock_set_state`.
    pub const SET_STATE: &str = "set_state";
}

/// The kernel hook each program attaches to, for preflight checks against BTF.
pub mod hook {
    pub const SET_STATE: &str = "inet_sock_set_state";
}

pub mod global {
    pub const FILTERS: &str = "FILTERS";
    pub const OFFSETS: &str = "OFFSETS";
}

/// Bounds of the kernel maps, shared so userspace can report fill levels against them.
pub mod limits {
    /// Sockets whose state-entry time is tracked at once (LRU beyond this).
    pub const SOCK_STATE_ENTRIES: u32 = 1 << 18;
    /// Ring buffer size: at ~80 B a record, ~100k records of headroom between 20 ms drains.
    pub const EVENTS_BYTES: u32 = 8 << 20;
    pub const FILTER_ENTRIES: u32 = 64;
}
