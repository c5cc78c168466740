//! Ring-buffer bytes to [`Event`]s: every record is size-checked and copied, never
//! transmuted in place, so a short or unknown record is counted, not misread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netwatch_common::{
    flag, kind, state, ConntrackEnd as RawConntrackEnd, DropRecord, RecordHeader, RequestEnd,
    Transition as RawTransition, AF_INET6, DWELL_UNKNOWN,
};
use thiserror::Error;

use super::early_ends::Tuple;
use super::event::{
    ConntrackEnd, Drop, DropReason, Event, Family, Owner, SynackRetransmit, TimewaitReset,
    Transition,
};

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

/// Processes whose names the decoder keeps, so that a process's records share one name.
const NAMED: usize = 4;

/// Maps this kernel's `enum skb_drop_reason` numbers to the reasons netwatch knows.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    reasons: Vec<(u32, DropReason)>,
    /// The last processes records named, as the kernel spelled them: a name made afresh
    /// for each record (an allocation and a UTF-8 check, then a free) was ~4 % of a live
    /// view's CPU, and churn comes from few processes.
    named: [Option<(u32, [u8; 16], Owner)>; NAMED],
    next_named: usize,
}

impl Decoder {
    pub fn new(reasons: Vec<(u32, DropReason)>) -> Self {
        Self {
            reasons,
            ..Self::default()
        }
    }

    fn owner(&mut self, pid: u32, comm: &[u8; 16]) -> Option<Owner> {
        if pid == 0 {
            return None;
        }
        let known = self.named.iter().flatten();
        if let Some((_, _, o)) = known.into_iter().find(|(p, c, _)| *p == pid && c == comm) {
            return Some(o.clone());
        }
        let o = Owner::from_raw(pid, comm)?;
        self.named[self.next_named] = Some((pid, *comm, o.clone()));
        self.next_named = (self.next_named + 1) % NAMED;
        Some(o)
    }

    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let header: RecordHeader = read_record(bytes)?;
        match header.kind {
            kind::TRANSITION => {
                let raw: RawTransition = read_record(bytes)?;
                let owner = self.owner(raw.pid, &raw.comm);
                Ok(Event::Transition(transition(&raw, owner)))
            }
            kind::REQUEST_END => {
                let raw: RequestEnd = read_record(bytes)?;
                let owner = self.owner(raw.pid, &raw.comm);
                Ok(Event::Transition(request_end(&raw, owner)))
            }
            kind::SYNACK_RETRANSMIT => {
                let raw: RequestEnd = read_record(bytes)?;
                Ok(Event::SynackRetransmit(synack_retransmit(&raw)))
            }
            kind::DROP => {
                let raw: DropRecord = read_record(bytes)?;
                let reason = self
                    .reasons
                    .iter()
                    .find(|(n, _)| *n == raw.reason)
                    .map(|(_, r)| *r)
                    .ok_or(DecodeError::UnknownKind(kind::DROP))?;
                Ok(Event::Drop(drop(&raw, reason)))
            }
            kind::TIMEWAIT_RESET => {
                let raw: DropRecord = read_record(bytes)?;
                Ok(Event::TimewaitReset(timewait_reset(&raw)))
            }
            kind::CONNTRACK_END => {
                let raw: RawConntrackEnd = read_record(bytes)?;
                Ok(Event::ConntrackEnd(conntrack_end(&raw)))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

const IPPROTO_TCP: u8 = 6;
const IPS_CONFIRMED: u64 = 1 << 3;

fn conntrack_end(raw: &RawConntrackEnd) -> ConntrackEnd {
    let family = family(raw.l3num);
    // Both clocks wrap at 32 bits in the entry; compare as the kernel does.
    let past = (raw.jiffies as u32).wrapping_sub(raw.timeout) as i32;
    ConntrackEnd {
        freed_ns: raw.header.mono_ns,
        born_ns: (raw.born_ns != 0).then_some(raw.born_ns),
        expired_jiffies_ago: past.max(0) as u64,
        confirmed: raw.status & IPS_CONFIRMED != 0,
        netns: raw.netns,
        saddr: addr(family, &raw.saddr),
        sport: raw.sport,
        daddr: addr(family, &raw.daddr),
        dport: raw.dport,
        l4proto: raw.l4proto,
        tcp_state: (raw.l4proto == IPPROTO_TCP).then_some(raw.tcp_state),
    }
}

/// (TSval, TSecr) from a TCP header's options, if it carries the timestamp option.
pub fn timestamps(tcp: &[u8]) -> Option<(u32, u32)> {
    let doff = ((*tcp.get(12)? >> 4) as usize * 4).min(tcp.len());
    let mut opts = tcp.get(20..doff)?;
    while let [kind, rest @ ..] = opts {
        match kind {
            0 => return None,
            1 => opts = rest,
            8 => {
                let [10, v @ ..] = rest else { return None };
                let v = v.get(..8)?;
                return Some((
                    u32::from_be_bytes(v[..4].try_into().ok()?),
                    u32::from_be_bytes(v[4..8].try_into().ok()?),
                ));
            }
            _ => {
                let len = *rest.first()? as usize;
                if len < 2 {
                    return None;
                }
                opts = opts.get(len..)?;
            }
        }
    }
    None
}

fn drop(raw: &DropRecord, reason: DropReason) -> Drop {
    let family = family(raw.family);
    let tcp = &raw.tcp[..(raw.tcp_len as usize).min(raw.tcp.len())];
    let ts = timestamps(tcp);
    Drop {
        mono_ns: raw.header.mono_ns,
        reason,
        netns: raw.netns,
        family,
        saddr: addr(family, &raw.saddr),
        sport: u16::from_be_bytes([raw.tcp[0], raw.tcp[1]]),
        daddr: addr(family, &raw.daddr),
        dport: u16::from_be_bytes([raw.tcp[2], raw.tcp[3]]),
        tcp_flags: raw.tcp[13],
        tsval: ts.map(|t| t.0),
        tsecr: ts.map(|t| t.1),
        ts_recent: (raw.has_ts_recent != 0).then_some(raw.ts_recent),
    }
}

/// The RST's packet turned round: its destination is the timewait socket's local side.
fn timewait_reset(raw: &DropRecord) -> TimewaitReset {
    let family = family(raw.family);
    TimewaitReset {
        mono_ns: raw.header.mono_ns,
        tuple: Tuple {
            netns: raw.netns,
            laddr: addr(family, &raw.daddr),
            lport: u16::from_be_bytes([raw.tcp[2], raw.tcp[3]]),
            raddr: addr(family, &raw.saddr),
            rport: u16::from_be_bytes([raw.tcp[0], raw.tcp[1]]),
        },
    }
}

fn synack_retransmit(raw: &RequestEnd) -> SynackRetransmit {
    let family = family(raw.family);
    SynackRetransmit {
        mono_ns: raw.header.mono_ns,
        netns: raw.netns,
        family,
        laddr: addr(family, &raw.saddr),
        lport: raw.sport,
        raddr: addr(family, &raw.daddr),
        rport: raw.dport,
        retransmits: raw.synack_retransmits,
        age_ns: (raw.syn_ns != 0).then(|| raw.header.mono_ns.saturating_sub(raw.syn_ns)),
    }
}

/// For tests and tools that only meet transitions.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    Decoder::default().decode(bytes)
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
///
/// A child is there whenever the record names one (`sock_id`), even when its birth is
/// unknown (`child_ns` 0: the kernel's map of births was full, and its LRU let this one
/// go). Then the handshake is told as completed when the request socket was freed, with no
/// dwell: read as failed, it counted a handshake that completed as failed and took a live
/// socket out of the gauges.
fn request_end(raw: &RequestEnd, owner: Option<Owner>) -> Transition {
    let family = family(raw.family);
    let freed = raw.header.mono_ns;
    let (at, new) = match (raw.child_ns, raw.sock_id) {
        (0, 0) => (freed, state::CLOSE),
        (0, _) => (freed, state::ESTABLISHED),
        (born, _) => (born, state::ESTABLISHED),
    };
    let timed = new == state::CLOSE || raw.child_ns != 0;
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
        dwell_ns: (timed && raw.syn_ns != 0 && raw.syn_ns <= at).then(|| at - raw.syn_ns),
        netns: raw.netns,
        timewait: false,
        synack_retransmits: Some(raw.synack_retransmits),
        accept_wait_ns: (raw.child_ns != 0).then(|| freed.saturating_sub(raw.child_ns)),
        owner,
        // A request socket has no cgroup; its child's records carry one.
        cgroup: 0,
        container: None,
    }
}

fn transition(raw: &RawTransition, owner: Option<Owner>) -> Transition {
    let family = family(u16::from(raw.family));
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
        owner,
        cgroup: raw.cgroup,
        container: None,
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
            cgroup: 9001,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            netns: 4026531840,
            sport: 40000,
            dport: 80,
            family: AF_INET as u8,
            old: state::SYN_SENT,
            new: state::ESTABLISHED,
            flags: 0,
            pid: 4242,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    /// The bytes of a plain-data kernel record, as the ring buffer hands them over.
    pub fn bytes_of<T: Copy>(raw: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data struct, for its whole size.
        unsafe {
            std::slice::from_raw_parts((raw as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn records_of_one_process_share_its_name() {
        let mut d = Decoder::default();
        let mut raw = raw_v4();
        raw.pid = 77;
        raw.comm[..4].copy_from_slice(b"curl");
        let name = |e: Result<Event, DecodeError>| match e {
            Ok(Event::Transition(t)) => t.owner.expect("an owner").comm,
            _ => panic!(),
        };
        let first = name(d.decode(&bytes_of(&raw)));
        let again = name(d.decode(&bytes_of(&raw)));
        assert_eq!(&*first, "curl");
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        // exec() renames the process: a new name, not the kept one.
        raw.comm[..4].copy_from_slice(b"wget");
        assert_eq!(&*name(d.decode(&bytes_of(&raw))), "wget");
    }

    #[test]
    fn decodes_ipv4_transition() {
        let Ok(Event::Transition(t)) = decode(&bytes_of(&raw_v4())) else {
            panic!()
        };
        assert_eq!(t.saddr.to_string(), "10.0.0.1");
        assert_eq!(t.daddr.to_string(), "10.0.0.2");
        assert_eq!((t.sport, t.dport), (40000, 80));
        assert_eq!((t.old_name(), t.new_name()), ("SYN_SENT", "ESTABLISHED"));
        assert_eq!(t.dwell_ns, Some(42));
        assert_eq!(t.family, Family::Ipv4);
        assert_eq!(t.cgroup, 9001);
        assert_eq!(
            t.owner,
            Some(Owner {
                pid: 4242,
                comm: "curl".into(),
                container: None,
            })
        );
    }

    #[test]
    fn decodes_ipv6_and_unknown_dwell() {
        let mut raw = raw_v4();
        raw.family = AF_INET6 as u8;
        raw.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        raw.dwell_ns = DWELL_UNKNOWN;
        let Ok(Event::Transition(t)) = decode(&bytes_of(&raw)) else {
            panic!()
        };
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
        let bytes = &bytes_of(&raw);
        let Ok(Event::Transition(t)) = decode(bytes) else {
            panic!()
        };
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
        let bytes = &bytes_of(&dropped);
        let Ok(Event::Transition(t)) = decode(bytes) else {
            panic!()
        };
        assert_eq!(t.new_name(), "CLOSE");
        assert_eq!(t.dwell_ns, Some(4_000_000_000));
        assert_eq!(t.accept_wait_ns, None);

        // A child whose birth the kernel no longer held: completed, when freed, untimed.
        let unborn = RequestEnd { child_ns: 0, ..raw };
        let bytes = &bytes_of(&unborn);
        let Ok(Event::Transition(t)) = decode(bytes) else {
            panic!()
        };
        assert_eq!((t.new_name(), t.sock_id), ("ESTABLISHED", 9));
        assert_eq!(t.mono_ns, 5_000_000_000);
        assert_eq!((t.dwell_ns, t.accept_wait_ns), (None, None));
    }

    #[test]
    fn timestamp_option_is_found_among_others() {
        // A Linux SYN: MSS, SACK_PERM, TS, NOP, WS.
        let mut tcp = vec![0u8; 40];
        tcp[12] = 10 << 4;
        tcp[20..40].copy_from_slice(&[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        assert_eq!(timestamps(&tcp), Some((12345, 0)));
        // An ACK: NOP NOP TS.
        let mut ack = vec![0u8; 32];
        ack[12] = 8 << 4;
        ack[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(timestamps(&ack), Some((1, 2)));
        // No options, a truncated option, and a zero-length option loop.
        let mut bare = vec![0u8; 20];
        bare[12] = 5 << 4;
        assert_eq!(timestamps(&bare), None);
        let mut bad = vec![0u8; 24];
        bad[12] = 6 << 4;
        bad[20..24].copy_from_slice(&[8, 10, 0, 0]);
        assert_eq!(timestamps(&bad), None);
        bad[20..24].copy_from_slice(&[5, 0, 0, 0]);
        assert_eq!(timestamps(&bad), None);
        assert_eq!(timestamps(&[]), None);
    }

    #[test]
    fn drop_record_decodes_with_this_kernels_reason_numbers() {
        let mut raw = DropRecord {
            header: RecordHeader {
                kind: kind::DROP,
                size: DropRecord::SIZE as u16,
                _pad: 0,
                mono_ns: 7,
            },
            reason: 38,
            netns: 5,
            family: netwatch_common::AF_INET,
            tcp_len: 40,
            ts_recent: 900_000_000,
            has_ts_recent: 1,
            ..Default::default()
        };
        raw.saddr[..4].copy_from_slice(&[198, 51, 100, 7]);
        raw.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        raw.tcp[..4].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        raw.tcp[12] = 10 << 4;
        raw.tcp[13] = 0x02;
        raw.tcp[20..30].copy_from_slice(&[8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0, 0]);
        let bytes = &bytes_of(&raw);
        let mut d = Decoder::new(vec![(38, DropReason::TwPaws)]);
        let Ok(Event::Drop(drop)) = d.decode(bytes) else {
            panic!("not a drop")
        };
        assert_eq!(drop.reason, DropReason::TwPaws);
        assert_eq!(
            (drop.saddr.to_string(), drop.sport),
            ("198.51.100.7".into(), 40000)
        );
        assert_eq!(drop.dport, 80);
        assert!(drop.is_syn());
        assert_eq!(drop.flags_text(), "SYN");
        assert_eq!(drop.tsval, Some(1000));
        assert_eq!(drop.ts_delta(), Some(1000 - 900_000_000));
        // A reason this kernel's table does not know is an error, not a misreading.
        assert!(Decoder::default().decode(bytes).is_err());

        // The same layout as a RST that met a timewait socket: the tuple is the socket's.
        raw.header.kind = kind::TIMEWAIT_RESET;
        raw.tcp[13] = 0x04;
        let bytes = &bytes_of(&raw);
        let Ok(Event::TimewaitReset(r)) = Decoder::default().decode(bytes) else {
            panic!("not a timewait reset")
        };
        assert_eq!(r.mono_ns, 7);
        assert_eq!(
            (r.tuple.laddr.to_string(), r.tuple.lport, r.tuple.rport),
            ("10.0.0.2".into(), 80, 40000)
        );
        assert_eq!(
            (r.tuple.raddr.to_string(), r.tuple.netns),
            ("198.51.100.7".into(), 5)
        );
    }

    #[test]
    fn conntrack_end_knows_when_the_entry_really_expired() {
        let raw = RawConntrackEnd {
            header: RecordHeader {
                kind: kind::CONNTRACK_END,
                size: RawConntrackEnd::SIZE as u16,
                _pad: 0,
                mono_ns: 100_000_000_000,
            },
            born_ns: 10_000_000_000,
            status: IPS_CONFIRMED,
            // Freed 2.5 s (625 jiffies at 250 Hz) after its timeout passed, across a wrap.
            jiffies: (1u64 << 32) + 600,
            timeout: (-25i32) as u32,
            l3num: netwatch_common::AF_INET,
            l4proto: IPPROTO_TCP,
            tcp_state: 7,
            ..Default::default()
        };
        let bytes = &bytes_of(&raw);
        let Ok(Event::ConntrackEnd(ct)) = decode(bytes) else {
            panic!()
        };
        assert_eq!(ct.expired_jiffies_ago, 625);
        assert!(ct.confirmed);
        assert_eq!(ct.tcp_state_name(), "TIME_WAIT");
        assert_eq!(ct.lifetime_ns(250), Some(87_500_000_000));
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
