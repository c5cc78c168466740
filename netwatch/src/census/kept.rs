//! The census as a JSON trace keeps it until the trace's header is written: the header
//! needs to know which programs attached, and the census runs before they do. At a full
//! TIME_WAIT table that is 131k sockets, so each is kept in what its record needs (64
//! bytes, not the 120 of a sock_diag entry and its owner), and sockets met twice are
//! merged in place: the list and a map to merge them were 13 MB of a JSON trace's peak
//! RSS, which the start sets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::CensusSocket;
use crate::core::event::Owner;

/// One socket of the census, as its record needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub cookie: u64,
    saddr: [u8; 16],
    daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// How long it has been in its state, in ms, where the kernel tells; [`NO_AGE`] where not.
    age_ms: u32,
    pub netns: u32,
    /// Index into [`KeptCensus::owners`]; [`NO_OWNER`] where /proc named none.
    owner: u32,
    pub state: u8,
    v6: bool,
}

const NO_AGE: u32 = u32::MAX;
const NO_OWNER: u32 = u32::MAX;

fn pack(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, false)
        }
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

fn unpack(b: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

impl Kept {
    pub fn saddr(&self) -> IpAddr {
        unpack(&self.saddr, self.v6)
    }

    pub fn daddr(&self) -> IpAddr {
        unpack(&self.daddr, self.v6)
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    pub fn age_ns(&self) -> Option<u64> {
        (self.age_ms != NO_AGE).then(|| u64::from(self.age_ms) * 1_000_000)
    }
}

/// The census's sockets, in the order the kernel listed them, and their owners, each once.
#[derive(Default)]
pub struct KeptCensus {
    sockets: Vec<Kept>,
    owners: Vec<Owner>,
    owner_of_pid: HashMap<u32, u32>,
}

impl KeptCensus {
    /// Keeps `s`, whose age in its state is `age_ns` where known. Sockets of one family
    /// have both addresses in it (IPv4 over IPv6 sockets say so with mapped addresses).
    pub fn push(&mut self, s: &CensusSocket, age_ns: Option<u64>, owner: Option<&Owner>) {
        let (saddr, v6) = pack(s.saddr);
        let (daddr, _) = pack(s.daddr);
        let owner = match owner {
            None => NO_OWNER,
            Some(o) => *self.owner_of_pid.entry(o.pid).or_insert_with(|| {
                self.owners.push(o.clone());
                (self.owners.len() - 1) as u32
            }),
        };
        self.sockets.push(Kept {
            cookie: s.cookie,
            saddr,
            daddr,
            sport: s.sport,
            dport: s.dport,
            age_ms: age_ns.map_or(NO_AGE, |a| {
                u32::try_from(a / 1_000_000).unwrap_or(NO_AGE - 1)
            }),
            netns: s.netns,
            owner,
            state: s.state,
            v6,
        });
    }

    /// Merges sockets met twice under one cookie (a socket that became a timewait socket
    /// between two chunks of the dump), keeping the later sighting, without a second
    /// list or a map: sorted by cookie, each run of equal cookies keeps its last.
    /// Cookie 0 (none) is never merged.
    pub fn merge_twice_met(&mut self) {
        self.sockets.sort_by_key(|k| k.cookie);
        self.sockets.dedup_by(|later, kept| {
            if later.cookie == kept.cookie && later.cookie != 0 {
                *kept = *later;
                true
            } else {
                false
            }
        });
        self.sockets.shrink_to_fit();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Kept, Option<&Owner>)> + '_ {
        self.sockets
            .iter()
            .map(|k| (k, self.owners.get(k.owner as usize)))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(cookie: u64, state: u8, saddr: &str, daddr: &str) -> CensusSocket {
        CensusSocket {
            state,
            family: if saddr.contains(':') { 10 } else { 2 },
            saddr: saddr.parse().unwrap(),
            sport: 80,
            daddr: daddr.parse().unwrap(),
            dport: 40_000,
            inode: 0,
            uid: 0,
            cookie,
            timer: 0,
            expires_ms: 0,
            retrans: 0,
            rqueue: 0,
            wqueue: 0,
            netns: 7,
        }
    }

    #[test]
    fn a_socket_is_kept_in_64_bytes() {
        assert!(std::mem::size_of::<Kept>() <= 64);
    }

    #[test]
    fn kept_sockets_read_back_as_they_were_found() {
        let mut k = KeptCensus::default();
        let nginx = Owner {
            pid: 10,
            comm: "nginx".into(),
            container: None,
        };
        k.push(&sock(1, 1, "10.0.0.1", "10.0.0.2"), None, Some(&nginx));
        k.push(
            &sock(2, 6, "fd00::1", "::ffff:10.0.0.9"),
            Some(20_000_000_000),
            None,
        );
        k.push(&sock(3, 1, "10.0.0.1", "10.0.0.3"), None, Some(&nginx));
        let all: Vec<_> = k.iter().collect();
        assert_eq!(all.len(), 3);
        let (a, o) = all[0];
        assert_eq!(
            (a.saddr().to_string(), a.daddr().to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
        assert_eq!(
            (a.is_v6(), a.age_ns(), a.netns, a.state),
            (false, None, 7, 1)
        );
        assert_eq!(o.map(|o| o.pid), Some(10));
        let (b, o) = all[1];
        assert_eq!(b.daddr().to_string(), "::ffff:10.0.0.9");
        assert_eq!(
            (b.is_v6(), b.age_ns(), o),
            (true, Some(20_000_000_000), None)
        );
        assert_eq!(k.owners.len(), 1, "an owner is kept once");
    }

    #[test]
    fn a_socket_met_twice_keeps_its_later_sighting() {
        let mut k = KeptCensus::default();
        k.push(&sock(5, 4, "10.0.0.1", "10.0.0.2"), None, None);
        k.push(&sock(3, 1, "10.0.0.1", "10.0.0.3"), None, None);
        k.push(&sock(0, 1, "10.0.0.1", "10.0.0.4"), None, None);
        k.push(&sock(0, 1, "10.0.0.1", "10.0.0.5"), None, None);
        k.push(&sock(5, 6, "10.0.0.1", "10.0.0.2"), Some(1_000_000), None);
        k.merge_twice_met();
        let states: Vec<(u64, u8)> = k.iter().map(|(s, _)| (s.cookie, s.state)).collect();
        assert_eq!(states, [(0, 1), (0, 1), (3, 1), (5, 6)]);
        assert_eq!(k.len(), 4);
    }
}
