//! The decoded event type every sink and aggregator consumes.

use std::net::IpAddr;
use std::sync::Arc;

use netwatch_common::state;

/// One decoded record from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    Drop(Drop),
    SynackRetransmit(SynackRetransmit),
    ConntrackEnd(ConntrackEnd),
    TimewaitReset(TimewaitReset),
}

/// A RST reached a timewait socket: with `tcp_rfc1337` off the kernel kills the socket on
/// it, so it explains a TIME_WAIT that ended early (see [`super::early_ends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimewaitReset {
    pub mono_ns: u64,
    /// The timewait socket's side: its local address is where the RST was sent to.
    pub tuple: super::early_ends::Tuple,
}

/// A conntrack entry that was freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackEnd {
    /// When its slab object was freed.
    pub freed_ns: u64,
    /// When it was allocated, if netwatch saw that.
    pub born_ns: Option<u64>,
    /// How long before the free its timeout had already passed, in jiffies (the garbage
    /// collector frees expired entries lazily); 0 when it was freed before expiring.
    pub expired_jiffies_ago: u64,
    /// It had been inserted into the table (IPS_CONFIRMED); unconfirmed entries die young,
    /// e.g. when the table is full.
    pub confirmed: bool,
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub l4proto: u8,
    /// `enum tcp_conntrack`, for TCP entries.
    pub tcp_state: Option<u8>,
}

impl ConntrackEnd {
    /// Creation to expiry (or to the free, if it was killed before expiring), given the
    /// kernel's tick rate.
    pub fn lifetime_ns(&self, hz: u64) -> Option<u64> {
        let born = self.born_ns?;
        let late = self.expired_jiffies_ago.saturating_mul(1_000_000_000) / hz.max(1);
        Some(self.freed_ns.saturating_sub(late).saturating_sub(born))
    }

    /// The kernel's name for a conntrack TCP state (`enum tcp_conntrack`).
    pub fn tcp_state_name(&self) -> &'static str {
        match self.tcp_state {
            None => "-",
            Some(s) => match s {
                0 => "NONE",
                1 => "SYN_SENT",
                2 => "SYN_RECV",
                3 => "ESTABLISHED",
                4 => "FIN_WAIT",
                5 => "CLOSE_WAIT",
                6 => "LAST_ACK",
                7 => "TIME_WAIT",
                8 => "CLOSE",
                9 => "SYN_SENT2",
                _ => "UNKNOWN",
            },
        }
    }
}

/// Why the kernel dropped a packet, for the reasons netwatch asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A segment hit a TIME_WAIT socket with a TSval older than the last one it saw.
    TwPaws,
    /// PAWS on an established connection (or a SYN on older kernels).
    Paws,
    PawsAck,
    /// TSecr that does not echo anything we sent.
    Tsecr,
    /// The final ACK of a handshake found the accept queue full.
    ListenOverflow,
    NetfilterDrop,
}

impl DropReason {
    /// The kernel's name, without the `SKB_DROP_REASON_` prefix.
    pub const ALL: [(DropReason, &'static str); 6] = [
        (DropReason::TwPaws, "TCP_RFC7323_TW_PAWS"),
        (DropReason::Paws, "TCP_RFC7323_PAWS"),
        (DropReason::PawsAck, "TCP_RFC7323_PAWS_ACK"),
        (DropReason::Tsecr, "TCP_RFC7323_TSECR"),
        (DropReason::ListenOverflow, "TCP_LISTEN_OVERFLOW"),
        (DropReason::NetfilterDrop, "NETFILTER_DROP"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("UNKNOWN")
    }

    pub fn is_paws(self) -> bool {
        matches!(
            self,
            DropReason::TwPaws | DropReason::Paws | DropReason::PawsAck | DropReason::Tsecr
        )
    }
}

/// A dropped TCP segment, from the packet itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub mono_ns: u64,
    pub reason: DropReason,
    pub netns: u32,
    pub family: Family,
    /// The sender (for inbound drops, the remote client).
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    pub tsval: Option<u32>,
    pub tsecr: Option<u32>,
    /// For a segment that met a timewait socket: the last TSval that socket accepted.
    pub ts_recent: Option<u32>,
}

impl Drop {
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & 0x02 != 0 && self.tcp_flags & 0x10 == 0
    }

    /// TSval minus the timewait socket's ts_recent, as PAWS compares them (32-bit wrap).
    pub fn ts_delta(&self) -> Option<i64> {
        Some(self.tsval?.wrapping_sub(self.ts_recent?) as i32 as i64)
    }

    /// `SYN`, `ACK`, `SYN|ACK`, `FIN|ACK`, ... for people.
    pub fn flags_text(&self) -> String {
        let names = [
            (0x02, "SYN"),
            (0x01, "FIN"),
            (0x04, "RST"),
            (0x08, "PSH"),
            (0x10, "ACK"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.tcp_flags & b != 0)
            .map(|(_, n)| *n)
            .collect();
        set.join("|")
    }
}

/// A listener resent a SYN-ACK: the client's final ACK has not arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynackRetransmit {
    pub mono_ns: u64,
    pub netns: u32,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Retransmissions before this one.
    pub retransmits: u8,
    /// Since the SYN arrived, when known.
    pub age_ns: Option<u64>,
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
    /// The socket's cgroup id (the inode of its cgroup v2 directory), 0 when unknown:
    /// timewait and request sockets carry none, and old traces lack it.
    pub cgroup: u64,
    /// What the cgroup names: a container's short id or a systemd unit (see
    /// `crate::cgroup`); set by the tracer, read back from traces by `report`.
    pub container: Option<Arc<str>>,
}

/// A process that owns a socket: learned where the kernel runs in its context (connect,
/// listen, accept) or from /proc for sockets that existed at start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    /// Shared: a socket's owner is copied onto each of its records.
    pub comm: Arc<str>,
    /// The container (or systemd unit) it runs in, where its sockets' cgroup names one
    /// (see `crate::cgroup`).
    pub container: Option<Arc<str>>,
}

/// `python3[6345]`, as `ss -p` and the kernel log name a process, then its container
/// where known: `python3[6345] (0123456789ab)`.
impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)?;
        match &self.container {
            Some(c) => write!(f, " ({c})"),
            None => Ok(()),
        }
    }
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
            container: None,
        })
    }
}

impl Transition {
    /// A plain IPv4 transition for tests, to be overridden field by field: the fields no
    /// test cares about are said once, here.
    #[cfg(test)]
    pub fn example() -> Self {
        Self {
            mono_ns: 0,
            sock_id: 1,
            family: Family::Ipv4,
            saddr: IpAddr::from([10, 0, 0, 1]),
            sport: 40000,
            daddr: IpAddr::from([10, 0, 0, 2]),
            dport: 80,
            old: state::CLOSE,
            new: state::CLOSE,
            dwell_ns: None,
            netns: 1,
            timewait: false,
            synack_retransmits: None,
            accept_wait_ns: None,
            owner: None,
            cgroup: 0,
            container: None,
        }
    }

    pub fn old_name(&self) -> &'static str {
        state::name(self.old)
    }
    pub fn new_name(&self) -> &'static str {
        state::name(self.new)
    }
}
