//! The records and names shared by netwatch's kernel programs and its userspace.
//!
//! Everything that crosses the ring buffer is defined once, here, as fixed-width `#[repr(C)]`
//! structs with explicit padding: no `bool`, `Option` or Rust enums, so the layout is the same
//! for `bpfel-unknown-none` and the host and the decoder can check sizes instead of trusting
//! them. Every record starts with a [`RecordHeader`] so userspace can dispatch on `kind`.
#![no_std]

pub mod names;
pub mod offsets;
pub mod state;

/// Record kinds, the first field of every ring-buffer record.
pub mod kind {
    /// A full socket changed state (`inet_sock_set_state`).
    pub const TRANSITION: u16 = 1;
}

/// `dwell_ns` value meaning "netwatch did not see the socket enter the state".
pub const DWELL_UNKNOWN: u64 = u64::MAX;

/// Address families as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Common head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// Size of the whole record in bytes, so a decoder can skip kinds it does not know.
    pub size: u16,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub mono_ns: u64,
}

/// One TCP state change of a full socket, with the time spent in the state it left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transition {
    pub header: RecordHeader,
    /// The socket cookie: unique for the boot, and copied by the kernel into the timewait
    /// socket that replaces a closing socket, so later records can be joined to this one.
    pub sock_id: u64,
    /// Nanoseconds in `old`, or [`DWELL_UNKNOWN`] when the socket entered it before
    /// netwatch was watching (or its entry was evicted from the bounded map).
    pub dwell_ns: u64,
    /// Local address; IPv4 uses the first 4 bytes. Network byte order.
    pub saddr: [u8; 16],
    /// Remote address, as `saddr`.
    pub daddr: [u8; 16],
    /// Inode of the socket's network namespace (what `ls -L /proc/PID/ns/net -i` shows).
    pub netns: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Kernel TCP state numbers, see [`state`].
    pub old: u8,
    pub new: u8,
    pub _pad: u32,
}

impl Transition {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// Slots of the per-CPU `COUNTERS` array: what the kernel side could not do, never silent.
pub mod counter {
    /// A record was dropped because the ring buffer was full.
    pub const LOST_RECORDS: u32 = 0;
    /// A per-socket entry timestamp could not be stored (map update failed).
    pub const STATE_MAP_FULL: u32 = 1;
    /// A kernel read failed, so a record was sent with zeroed fields.
    pub const READ_ERRORS: u32 = 2;
    pub const COUNT: u32 = 4;
}

/// Load-time settings, written into the program's read-only globals by the loader.
/// Filter flags are `u8` 0/1 because globals must be plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only sockets whose netns is in `FILTER_NETNS`.
    pub by_netns: u8,
    /// Only sockets with either port in `FILTER_PORTS`.
    pub by_port: u8,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Filters {}
    unsafe impl aya::Pod for super::offsets::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_fixed() {
        assert_eq!(core::mem::size_of::<RecordHeader>(), 16);
        assert_eq!(Transition::SIZE, 80);
        assert_eq!(Transition::SIZE % 8, 0);
    }
}
