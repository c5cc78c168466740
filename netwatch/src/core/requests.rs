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

/// One listener's accept queue, as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerQueue {
    pub netns: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// Its socket cookie (= `sock_id`), to find the process that listens.
    pub cookie: u64,
    /// Children waiting for accept() (`idiag_rqueue`).
    pub queued: u32,
    /// The queue's limit (`idiag_wqueue`): listen()'s backlog, capped by somaxconn.
    pub backlog: u32,
}

/// Which limit a listener's accept queue has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The application asked for less than net.core.somaxconn allows: raise it there.
    AppBacklog,
    /// net.core.somaxconn capped (or equals) what the application asked for.
    Somaxconn,
}

impl ListenerQueue {
    /// The kernel refuses more once the queue holds more than its backlog
    /// (`sk_acceptq_is_full` is `>`): a backlog of 1 holds 2 children.
    pub fn full(&self) -> bool {
        self.queued > self.backlog
    }

    /// Which limit sized the queue: the kernel stores min(listen() backlog, somaxconn), so
    /// a backlog below somaxconn is the application's own.
    pub fn limit(&self, somaxconn: Option<u64>) -> Option<Limit> {
        let max = somaxconn?;
        Some(if u64::from(self.backlog) < max {
            Limit::AppBacklog
        } else {
            Limit::Somaxconn
        })
    }

    /// `10.0.0.2:8080 accept queue 3/2 (full), the application's listen() backlog of 2
    /// (net.core.somaxconn 4096 would allow more)`, for alerts.
    pub fn describe(&self, somaxconn: Option<u64>, process: Option<&str>) -> String {
        let addr = std::net::SocketAddr::new(self.addr, self.port);
        let by = process.map(|p| format!(" ({p})")).unwrap_or_default();
        let fill = if self.full() { " (full)" } else { "" };
        let limit = match (self.limit(somaxconn), somaxconn) {
            (Some(Limit::AppBacklog), Some(max)) => format!(
                "the application's listen() backlog of {} is the limit (net.core.somaxconn \
                 {max} would allow more: raise the backlog in the application)",
                self.backlog
            ),
            (Some(Limit::Somaxconn), Some(max)) => format!(
                "net.core.somaxconn = {max} caps the backlog (raise it, and the \
                 application's listen() backlog with it)"
            ),
            _ => format!("backlog {}", self.backlog),
        };
        format!(
            "{addr}{by} accept queue {}/{}{fill}: {limit}",
            self.queued, self.backlog
        )
    }
}

/// What one sock_diag dump of SYN_RECV and LISTEN sockets says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queues {
    pub requests: Vec<Waiting>,
    /// Children waiting in the listeners' accept queues, all listeners together.
    pub accept_queued: u64,
    pub listeners: Vec<ListenerQueue>,
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

    fn listener(queued: u32, backlog: u32) -> ListenerQueue {
        ListenerQueue {
            netns: 1,
            addr: "10.0.0.2".parse().unwrap(),
            port: 8080,
            cookie: 7,
            queued,
            backlog,
        }
    }

    #[test]
    fn the_limit_is_the_applications_backlog_unless_somaxconn_capped_it() {
        let l = listener(3, 2);
        assert!(l.full() && !listener(2, 2).full());
        assert_eq!(l.limit(Some(4096)), Some(Limit::AppBacklog));
        assert_eq!(listener(0, 4096).limit(Some(4096)), Some(Limit::Somaxconn));
        assert_eq!(l.limit(None), None);
        assert_eq!(
            l.describe(Some(4096), Some("python3[42]")),
            "10.0.0.2:8080 (python3[42]) accept queue 3/2 (full): the application's listen() \
             backlog of 2 is the limit (net.core.somaxconn 4096 would allow more: raise the \
             backlog in the application)"
        );
        assert!(listener(1, 128).describe(Some(128), None).ends_with(
            "accept queue 1/128: net.core.somaxconn = 128 caps the backlog (raise \
                        it, and the application's listen() backlog with it)"
        ));
        assert_eq!(
            listener(1, 5).describe(None, None),
            "10.0.0.2:8080 accept queue 1/5: backlog 5"
        );
    }
}
