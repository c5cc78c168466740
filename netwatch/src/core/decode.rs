//! Ring-buffer bytes to [`Event`]s: every record is size-checked and copied, never
//! transmuted in place, so a short or unknown record is counted, not misread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netwatch_common::{
    flag, kind, state, RecordHeader, RequestEnd, Transition as RawTransition, AF_INET6,
    DWELL_UNKNOWN,
};
use thiserror::Error;

use super::event::{Event, Family, Owner, Transition};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte header or body")]
    Short { len: usize, need: usize },
    #[error("record kind {0} is unknown to this netwatch")]
    UnknownKind(u16),
}

/// Copies a `#[repr(C)]` record out of possibly unaligned bytes.
fn read_record<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a plain-data record from netwatch-common for which
    // every bit pattern is valid; read_unaligned copies without alignment requirements.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: RecordHeader = read_record(bytes)?;
    match header.kind {
        kind::TRANSITION => {
            let raw: RawTransition = read_record(bytes)?;
            Ok(Event::Transition(transition(&raw)))
        }
        kind::REQUEST_END => {
            let raw: RequestEnd = read_record(bytes)?;
            Ok(Event::Transition(request_end(&raw)))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn addr(family: Family, raw: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

fn family(raw: u16) -> Family {
    if raw == AF_INET6 {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// A request socket's end, told as the transition it stands for: SYN_RECV -> ESTABLISHED
/// at the moment the child was created, or SYN_RECV -> CLOSE when no child came of it.
fn request_end(raw: &RequestEnd) -> Transition {
    let family = family(raw.family);
    let freed = raw.header.mono_ns;
    let (at, new) = if raw.child_ns != 0 {
        (raw.child_ns, state::ESTABLISHED)
    } else {
        (freed, state::CLOSE)
    };
    Transition {
        mono_ns: at,
        sock_id: raw.sock_id,
        family,
        saddr: addr(family, &raw.saddr),
        sport: raw.sport,
        daddr: addr(family, &raw.daddr),
        dport: raw.dport,
        old: state::SYN_RECV,
        new,
        dwell_ns: (raw.syn_ns != 0 && raw.syn_ns <= at).then(|| at - raw.syn_ns),
        netns: raw.netns,
        timewait: false,
        synack_retransmits: Some(raw.synack_retransmits),
        accept_wait_ns: (raw.child_ns != 0).then(|| freed.saturating_sub(raw.child_ns)),
        owner: Owner::from_raw(raw.pid, &raw.comm),
    }
}

fn transition(raw: &RawTransition) -> Transition {
    let family = family(raw.family);
    Transition {
        mono_ns: raw.header.mono_ns,
        sock_id: raw.sock_id,
        family,
        saddr: addr(family, &raw.saddr),
        sport: raw.sport,
        daddr: addr(family, &raw.daddr),
        dport: raw.dport,
        old: raw.old,
        new: raw.new,
        dwell_ns: (raw.dwell_ns != DWELL_UNKNOWN).then_some(raw.dwell_ns),
        netns: raw.netns,
        timewait: raw.flags & flag::TIMEWAIT != 0,
        synack_retransmits: None,
        accept_wait_ns: None,
        owner: Owner::from_raw(raw.pid, &raw.comm),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netwatch_common::AF_INET;

    pub fn raw_v4() -> RawTransition {
        RawTransition {
            header: RecordHeader {
                kind: kind::TRANSITION,
                size: RawTransition::SIZE as u16,
                _pad: 0,
                mono_ns: 1_000,
            },
            sock_id: 7,
            dwell_ns: 42,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            netns: 4026531840,
            sport: 40000,
            dport: 80,
            family: AF_INET,
            old: state::SYN_SENT,
            new: state::ESTABLISHED,
            flags: 0,
            _pad: [0; 3],
            pid: 4242,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            _pad2: 0,
        }
    }

    pub fn bytes_of(raw: &RawTransition) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data struct.
        unsafe {
            std::slice::from_raw_parts(
                (raw as *const RawTransition).cast::<u8>(),
                RawTransition::SIZE,
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_ipv4_transition() {
        let Event::Transition(t) = decode(&bytes_of(&raw_v4())).unwrap();
        assert_eq!(t.saddr.to_string(), "10.0.0.1");
        assert_eq!(t.daddr.to_string(), "10.0.0.2");
        assert_eq!((t.sport, t.dport), (40000, 80));
        assert_eq!((t.old_name(), t.new_name()), ("SYN_SENT", "ESTABLISHED"));
        assert_eq!(t.dwell_ns, Some(42));
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(
            t.owner,
            Some(Owner {
                pid: 4242,
                comm: "curl".into()
            })
        );
    }

    #[test]
    fn decodes_ipv6_and_unknown_dwell() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        raw.dwell_ns = DWELL_UNKNOWN;
        let Event::Transition(t) = decode(&bytes_of(&raw)).unwrap();
        assert_eq!(t.saddr.to_string(), "fd00::1");
        assert_eq!(t.daddr.to_string(), "::ffff:10.0.0.2");
        assert_eq!(t.dwell_ns, None);
    }

    #[test]
    fn request_end_becomes_syn_recv_transition() {
        let raw = RequestEnd {
            header: RecordHeader {
                kind: kind::REQUEST_END,
                size: RequestEnd::SIZE as u16,
                _pad: 0,
                mono_ns: 5_000_000_000,
            },
            sock_id: 9,
            syn_ns: 1_000_000_000,
            child_ns: 4_020_000_000,
            family: netwatch_common::AF_INET,
            sport: 80,
            dport: 40000,
            synack_retransmits: 2,
            ..Default::default()
        };
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw as *const RequestEnd).cast::<u8>(), RequestEnd::SIZE)
        };
        let Event::Transition(t) = decode(bytes).unwrap();
        assert_eq!((t.old_name(), t.new_name()), ("SYN_RECV", "ESTABLISHED"));
        assert_eq!(t.mono_ns, 4_020_000_000);
        assert_eq!(t.dwell_ns, Some(3_020_000_000));
        assert_eq!(t.accept_wait_ns, Some(980_000_000));
        assert_eq!(t.synack_retransmits, Some(2));

        let dropped = RequestEnd {
            child_ns: 0,
            sock_id: 0,
            ..raw
        };
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&dropped as *const RequestEnd).cast::<u8>(),
                RequestEnd::SIZE,
            )
        };
        let Event::Transition(t) = decode(bytes).unwrap();
        assert_eq!(t.new_name(), "CLOSE");
        assert_eq!(t.dwell_ns, Some(4_000_000_000));
        assert_eq!(t.accept_wait_ns, None);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let bytes = bytes_of(&raw_v4());
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode(&bytes[..40]),
            Err(DecodeError::Short { .. })
        ));
        let mut raw = raw_v4();
        raw.header.kind = 999;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::UnknownKind(999)));
    }
}
