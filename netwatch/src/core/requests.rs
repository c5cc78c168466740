//! Request sockets still waiting in SYN_RECV, as the kernel lists them (sock_diag), and
//! accepted children waiting in listeners' queues.
//!
//! A request socket makes no record until it ends, so exactly when handshakes are stuck
//! the records say nothing: the kernel's own list is read every interval instead. It gives
//! each request's SYN-ACK timer (how many were resent, and when the next one is due), from
//! which its age follows, and its 4-tuple, for the breakdowns. Children that completed
//! the handshake but wait in a listener's accept queue are ESTABLISHED sockets no record
//! has announced yet (their record comes at `accept()`): the listener's queue length says
//! how many.

use std::net::IpAddr;

/// The kernel's first SYN-ACK timeout (`TCP_TIMEOUT_INIT`) and its cap (`TCP_RTO_MAX`):
/// each resend doubles the wait.
const FIRST_TIMEOUT_MS: u64 = 1_000;
const MAX_TIMEOUT_MS: u64 = 120_000;

fn timeout_ms(n: u8) -> u64 {
    FIRST_TIMEOUT_MS
        .checked_shl(u32::from(n))
        .unwrap_or(MAX_TIMEOUT_MS)
        .min(MAX_TIMEOUT_MS)
}

/// How long a request socket has waited since its SYN: the timeouts of the SYN-ACKs already
/// resent, plus the part of the current one that has passed. An estimate where a BPF
/// program or TCP_DEFER_ACCEPT changed the timer, exact to the millisecond otherwise.
pub fn age_ms(retransmits: u8, expires_ms: u32) -> u64 {
    let done: u64 = (0..retransmits).map(timeout_ms).sum();
    done + timeout_ms(retransmits).saturating_sub(u64::from(expires_ms))
}

/// One request socket waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub age_ns: u64,
    /// The listener's port.
    pub port: u16,
    /// The client.
    pub remote: IpAddr,
}

/// What one sock_diag dump of SYN_RECV and LISTEN sockets says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queues {
    pub requests: Vec<Waiting>,
    /// Children waiting in the listeners' accept queues, all listeners together.
    pub accept_queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_follows_the_synack_timer() {
        // No SYN-ACK resent yet, 700 ms left of the first second.
        assert_eq!(age_ms(0, 700), 300);
        // Two resent (1 s + 2 s), 1 s left of the third wait (4 s): 3 s + 3 s.
        assert_eq!(age_ms(2, 1_000), 6_000);
        // Timeouts stop doubling at 120 s; absurd inputs neither panic nor wrap.
        assert_eq!(
            age_ms(8, 0),
            1_000 * (1 + 2 + 4 + 8 + 16 + 32 + 64) + 2 * 120_000
        );
        assert!(age_ms(255, u32::MAX) > 0);
        assert_eq!(age_ms(0, u32::MAX), 0);
    }
}
