//! The exact `(old, new)` sequences the kernel's `inet_sock_set_state` produces for the test
//! scenarios, one record per call, kept in one place.
//!
//! On this kernel entering TIME_WAIT replaces the socket with a timewait socket and the
//! tracepoint shows `FIN_WAIT2 -> CLOSE`; nothing fires when the timewait socket dies. When
//! netwatch learns to follow timewait sockets, [`ACTIVE_CLOSE`] becomes
//! `... FIN_WAIT2 -> TIME_WAIT, TIME_WAIT -> CLOSE` and every test follows from here.

/// A sequence of `(old, new)` state names as netwatch prints them.
pub type Seq = &'static [(&'static str, &'static str)];

/// connect(): the socket is hashed, SYN sent, SYN-ACK received.
pub const ACTIVE_OPEN: Seq = &[("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED")];

/// The accepted child: cloned from the listener (so its first transition starts from
/// LISTEN) when the final ACK arrives, then established within microseconds. The request
/// socket before it (TCP_NEW_SYN_RECV) does not go through `inet_sock_set_state`.
pub const PASSIVE_OPEN: Seq = &[("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")];

/// The side that closes first, its FIN acked before the peer's FIN arrives.
pub const ACTIVE_CLOSE: Seq = &[
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];

/// The side that receives the FIN first and closes after it.
pub const PASSIVE_CLOSE: Seq = &[
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// A listening socket from listen() to close().
pub const LISTENER: Seq = &[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")];

/// connect() answered by a RST (no listener): ECONNREFUSED.
pub const REFUSED: Seq = &[("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")];

/// Concatenates sequences, owned, in the form [`crate::records::state_pairs`] returns.
pub fn seq(parts: &[Seq]) -> Vec<(String, String)> {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The connecting socket of a connection it closes first.
pub fn client_active_close_client() -> Vec<(String, String)> {
    seq(&[ACTIVE_OPEN, ACTIVE_CLOSE])
}

/// The accepted socket of a connection its client closes first.
pub fn client_active_close_server() -> Vec<(String, String)> {
    seq(&[PASSIVE_OPEN, PASSIVE_CLOSE])
}

/// The connecting socket of a connection its server closes first.
pub fn server_active_close_client() -> Vec<(String, String)> {
    seq(&[ACTIVE_OPEN, PASSIVE_CLOSE])
}

/// The accepted socket of a connection it closes first.
pub fn server_active_close_server() -> Vec<(String, String)> {
    seq(&[PASSIVE_OPEN, ACTIVE_CLOSE])
}
