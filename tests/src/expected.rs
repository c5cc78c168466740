//! The exact `(old, new)` sequences netwatch reports for the test scenarios, kept in one
//! place.
//!
//! On this kernel entering TIME_WAIT replaces the socket with a timewait socket (the
//! tracepoint itself shows `FIN_WAIT2 -> CLOSE`); netwatch reports `FIN_WAIT2 -> TIME_WAIT`
//! when it finds that timewait socket, and `TIME_WAIT -> CLOSE` when it dies ~60 s later,
//! which these short tests do not wait for (the dwell tests do).

/// A sequence of `(old, new)` state names as netwatch prints them.
pub type Seq = &'static [(&'static str, &'static str)];

/// connect(): the socket is hashed, SYN sent, SYN-ACK received.
pub const ACTIVE_OPEN: Seq = &[("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED")];

/// The accepted connection: its SYN_RECV is the request socket's life (SYN to final ACK),
/// reported under the child's sock_id; the child's own microsecond-long
/// `LISTEN -> SYN_RECV -> ESTABLISHED` as it is cloned from the listener is folded into it.
pub const PASSIVE_OPEN: Seq = &[("SYN_RECV", "ESTABLISHED")];

/// The side that closes first, its FIN acked before the peer's FIN arrives.
pub const ACTIVE_CLOSE: Seq = &[
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "TIME_WAIT"),
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
