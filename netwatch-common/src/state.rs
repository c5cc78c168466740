//! TCP state numbers as in the kernel's `include/net/tcp_states.h`, stable ABI since 2.6.

pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;
pub const NEW_SYN_RECV: u8 = 12;
pub const BOUND_INACTIVE: u8 = 13;

/// Highest state number plus one: the size of per-state tables.
pub const COUNT: usize = 14;

/// The kernel's name for a state (as `ss` and the tracepoint print it, without `TCP_`).
pub const fn name(state: u8) -> &'static str {
    match state {
        ESTABLISHED => "ESTABLISHED",
        SYN_SENT => "SYN_SENT",
        SYN_RECV => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        TIME_WAIT => "TIME_WAIT",
        CLOSE => "CLOSE",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        LISTEN => "LISTEN",
        CLOSING => "CLOSING",
        NEW_SYN_RECV => "NEW_SYN_RECV",
        BOUND_INACTIVE => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// The inverse of [`name`], for filters and for reading traces back.
pub fn from_name(name: &str) -> Option<u8> {
    (1..COUNT as u8).find(|&s| self::name(s) == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_round_trip() {
        for s in 1..super::COUNT as u8 {
            assert_eq!(super::from_name(super::name(s)), Some(s));
        }
        assert_eq!(super::name(0), "UNKNOWN");
        assert_eq!(super::from_name("UNKNOWN"), None);
    }
}
