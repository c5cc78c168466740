//! The decoded event type every sink and aggregator consumes.

use std::net::IpAddr;
use std::sync::Arc;

use netwatch_common::state;

/// One decoded record from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// A TCP state change of one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old: u8,
    pub new: u8,
    /// Time spent in `old`; `None` when netwatch did not see the socket enter it.
    pub dwell_ns: Option<u64>,
    pub netns: u32,
    /// The record is about a timewait socket (TIME_WAIT, or an orphan's FIN_WAIT2).
    pub timewait: bool,
    /// Set on the end of a server-side SYN_RECV (a request socket): SYN-ACKs resent.
    pub synack_retransmits: Option<u8>,
    /// Set on the end of a server-side SYN_RECV: how long the child waited in the accept
    /// queue for the application's accept().
    pub accept_wait_ns: Option<u64>,
    /// The owning process, where known (see [`Owner`]).
    pub owner: Option<Owner>,
}

/// A process that owns a socket: learned where the kernel runs in its context (connect,
/// listen, accept) or from /proc for sockets that existed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Shared: a socket's owner is copied onto each of its records.
    pub comm: Arc<str>,
}

impl Owner {
    /// From a kernel record's NUL-padded command name; `None` when pid is 0.
    pub fn from_raw(pid: u32, comm: &[u8; 16]) -> Option<Self> {
        if pid == 0 {
            return None;
        }
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Some(Self {
            pid,
            comm: String::from_utf8_lossy(&comm[..end]).into(),
        })
    }
}

impl Transition {
    pub fn old_name(&self) -> &'static str {
        state::name(self.old)
    }
    pub fn new_name(&self) -> &'static str {
        state::name(self.new)
    }
}
