//! Why a TIME_WAIT socket ended before its 60 seconds were up.
//!
//! Under churn most server-side TIME_WAITs end in well under a second, and an engineer who
//! sees a 0.5 s median for a state the kernel holds for 60 s concludes the tool is broken.
//! The kernel ends a TIME_WAIT early for a few reasons, each visible in the records around
//! the timewait socket's death, on the same 4-tuple and within a few milliseconds of it:
//!
//! - **`syn_reuse`**: a SYN from the same client port (with a higher sequence number or
//!   timestamp) reached the server's timewait socket, which the kernel then killed to let
//!   the new connection in (RFC 6191). The new connection's request socket starts then.
//! - **`tw_reuse`**: a client's `connect()` took the local port of its own timewait socket
//!   (`net.ipv4.tcp_tw_reuse`). The new socket enters SYN_SENT in the same system call.
//! - **`rst`**: an in-window RST killed it ("TIME_WAIT assassination"; `tcp_rfc1337=1`
//!   stops it). The kernel side reports RSTs that reach timewait sockets.
//! - **`other`**: none of the above was seen within the hold time (a deleted namespace, a
//!   flushed table, or evidence netwatch did not see).
//!
//! The deaths and their evidence come in either order (a reused port's SYN_SENT comes
//! before the death, a request socket's record after), so both sides wait for each other a
//! bounded time, measured on the records' own clock: a replayed trace classifies exactly as
//! the live run did.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use netwatch_common::state;
use serde::{Deserialize, Serialize};

use super::event::Transition;

/// The kernel's TIME_WAIT length (`TCP_TIMEWAIT_LEN`); not a sysctl on any kernel
/// netwatch supports.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// A TIME_WAIT dwell shorter than this ended early. The timer never fires early and each
/// segment the socket answers only pushes it later, so a second of slack is plenty.
pub const EARLY_BELOW_NS: u64 = TIMEWAIT_LEN_NS - 1_000_000_000;

/// How far apart a death and its evidence may be. They happen in one softirq or one
/// system call; the slack covers the SYN-ACK round trip to a reused port's request socket.
const MATCH_WINDOW_NS: u64 = 100_000_000;

/// How long an unexplained death waits for a request socket's record, which arrives only
/// when the application accepts the connection.
const HOLD_NS: u64 = 2_000_000_000;

/// At most this many deaths wait at once (about 8 MB); beyond it the oldest is counted as
/// `other`, so memory stays bounded at any churn rate.
const MAX_PENDING: usize = 131_072;

/// Why a TIME_WAIT ended early: the names of the trace format and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    SynReuse,
    TwReuse,
    Rst,
    Other,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::SynReuse, Cause::TwReuse, Cause::Rst, Cause::Other];

    pub fn name(self) -> &'static str {
        match self {
            Cause::SynReuse => "syn_reuse",
            Cause::TwReuse => "tw_reuse",
            Cause::Rst => "rst",
            Cause::Other => "other",
        }
    }

    /// What it means and what to do, for findings.
    pub fn explanation(self) -> &'static str {
        match self {
            Cause::SynReuse => {
                "a new SYN from the same client port took over the server's TIME_WAIT \
                 (normal under churn: the kernel lets a reconnect in, RFC 6191)"
            }
            Cause::TwReuse => {
                "a new outgoing connect() reused the port of its own TIME_WAIT \
                 (net.ipv4.tcp_tw_reuse)"
            }
            Cause::Rst => {
                "an RST killed it (TIME_WAIT assassination; net.ipv4.tcp_rfc1337=1 \
                 ignores such RSTs)"
            }
            Cause::Other => {
                "no reuse or RST was seen (a namespace deleted, a table flushed, or \
                 evidence netwatch could not see)"
            }
        }
    }
}

/// Early ends by cause, since the trace began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyEnds {
    #[serde(default)]
    pub syn_reuse: u64,
    #[serde(default)]
    pub tw_reuse: u64,
    #[serde(default)]
    pub rst: u64,
    #[serde(default)]
    pub other: u64,
    /// Early ends still waiting for their evidence (counted under a cause once it comes, or
    /// under `other` after two seconds).
    #[serde(default)]
    pub pending: u64,
}

impl EarlyEnds {
    pub fn get(&self, c: Cause) -> u64 {
        match c {
            Cause::SynReuse => self.syn_reuse,
            Cause::TwReuse => self.tw_reuse,
            Cause::Rst => self.rst,
            Cause::Other => self.other,
        }
    }

    fn bump(&mut self, c: Cause) {
        match c {
            Cause::SynReuse => self.syn_reuse += 1,
            Cause::TwReuse => self.tw_reuse += 1,
            Cause::Rst => self.rst += 1,
            Cause::Other => self.other += 1,
        }
    }

    /// Early ends classified so far.
    pub fn total(&self) -> u64 {
        Cause::ALL.iter().map(|&c| self.get(c)).sum()
    }
}

/// A connection's 4-tuple from the timewait socket's side, with its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

impl Tuple {
    pub fn of(t: &Transition) -> Self {
        Self {
            netns: t.netns,
            laddr: t.saddr,
            lport: t.sport,
            raddr: t.daddr,
            rport: t.dport,
        }
    }
}

/// Evidence seen before the death it explains.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: u64,
    cause: Cause,
}

/// Matches TIME_WAIT deaths with the records that explain them. Fed every transition and
/// every RST that met a timewait socket, in trace order. Its maps are keyed by addresses
/// and ports remote peers choose, so they keep std's collision-resistant hasher.
#[derive(Debug, Default)]
pub struct Classifier {
    counts: EarlyEnds,
    /// Unexplained deaths by tuple, and their order for expiry (an entry whose time no
    /// longer matches the map was explained or replaced).
    pending: HashMap<Tuple, u64>,
    pending_order: VecDeque<(u64, Tuple)>,
    /// Evidence that came first, kept for [`MATCH_WINDOW_NS`].
    seen: HashMap<Tuple, Seen>,
    seen_order: VecDeque<(u64, Tuple)>,
    /// The newest record time: the classifier's clock.
    now: u64,
}

impl Classifier {
    pub fn counts(&self) -> EarlyEnds {
        EarlyEnds {
            pending: self.pending.len() as u64,
            ..self.counts
        }
    }

    /// Whether a TIME_WAIT death with this dwell ended early.
    pub fn is_early(t: &Transition) -> bool {
        t.timewait
            && t.old == state::TIME_WAIT
            && t.new == state::CLOSE
            && t.dwell_ns.is_some_and(|d| d < EARLY_BELOW_NS)
    }

    /// One transition of the trace.
    pub fn transition(&mut self, t: &Transition) {
        self.tick(t.mono_ns);
        if Self::is_early(t) {
            self.death(Tuple::of(t), t.mono_ns);
        } else if t.old == state::CLOSE && t.new == state::SYN_SENT {
            // A bound socket's connect(): the port is known already, and the death follows.
            // An unbound one's port is still 0 here (it shows below): no death has that
            // tuple, so keeping it would only cost a map entry per connection.
            if t.sport != 0 {
                self.evidence(Tuple::of(t), t.mono_ns, Cause::TwReuse, true);
            }
        } else if t.old == state::SYN_SENT {
            // An unbound socket enters SYN_SENT before connect() picks its port (the reused
            // one): its tuple shows when it leaves, with the start `dwell` before.
            let start = t.mono_ns.saturating_sub(t.dwell_ns.unwrap_or(0));
            self.evidence(Tuple::of(t), start, Cause::TwReuse, false);
        } else if t.old == state::SYN_RECV && t.synack_retransmits.is_some() {
            // A request socket's end: it began at the SYN, `dwell` before its record.
            let syn = t.mono_ns.saturating_sub(t.dwell_ns.unwrap_or(0));
            self.evidence(Tuple::of(t), syn, Cause::SynReuse, false);
        }
    }

    /// An RST reached the timewait socket of `tuple` at `at`.
    pub fn reset(&mut self, tuple: Tuple, at: u64) {
        self.tick(at);
        self.evidence(tuple, at, Cause::Rst, true);
    }

    /// The trace ended: what still waits has no evidence.
    pub fn finish(&mut self) {
        for (_, _) in self.pending.drain() {
            self.counts.bump(Cause::Other);
        }
        self.pending_order.clear();
    }

    fn death(&mut self, tuple: Tuple, at: u64) {
        if let Some(s) = self.seen.get(&tuple).copied() {
            if at.abs_diff(s.at) <= MATCH_WINDOW_NS {
                self.seen.remove(&tuple);
                self.counts.bump(s.cause);
                return;
            }
        }
        if self.pending.len() >= MAX_PENDING {
            self.expire_oldest();
        }
        if self.pending.insert(tuple, at).is_some() {
            // The same 4-tuple died twice unexplained: the first has waited its turn.
            self.counts.bump(Cause::Other);
        }
        self.pending_order.push_back((at, tuple));
    }

    /// `early`: the evidence can come before the death it explains (a bound connect(), a
    /// RST), so it waits for one; otherwise it always comes after.
    fn evidence(&mut self, tuple: Tuple, at: u64, cause: Cause, early: bool) {
        if let Some(&died) = self.pending.get(&tuple) {
            if at.abs_diff(died) <= MATCH_WINDOW_NS {
                self.pending.remove(&tuple);
                self.counts.bump(cause);
                return;
            }
        }
        if early {
            self.seen.insert(tuple, Seen { at, cause });
            self.seen_order.push_back((at, tuple));
        }
    }

    fn expire_oldest(&mut self) {
        while let Some((at, tuple)) = self.pending_order.pop_front() {
            if self.pending.get(&tuple) == Some(&at) {
                self.pending.remove(&tuple);
                self.counts.bump(Cause::Other);
                return;
            }
        }
    }

    /// Moves the clock; drops evidence and deaths that waited long enough.
    fn tick(&mut self, at: u64) {
        self.now = self.now.max(at);
        while let Some(&(t, tuple)) = self.seen_order.front() {
            if t.saturating_add(MATCH_WINDOW_NS) >= self.now {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&tuple).is_some_and(|s| s.at == t) {
                self.seen.remove(&tuple);
            }
        }
        while let Some(&(t, tuple)) = self.pending_order.front() {
            if t.saturating_add(HOLD_NS) >= self.now {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&tuple) == Some(&t) {
                self.pending.remove(&tuple);
                self.counts.bump(Cause::Other);
            }
        }
    }
}

#[cfg(test)]
mod tests;
