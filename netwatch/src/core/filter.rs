//! Address filters (CIDR, either side of the connection), applied in userspace as records
//! arrive (the kernel still sends every record of the traced ports and namespaces); ports
//! and network namespaces are filtered in the kernel before a record is sent.

use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

use super::event::Transition;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or CIDR (examples: 10.0.0.0/8, 192.0.2.7, fd00::/16)")]
    Syntax(String),
    #[error("prefix length /{len} is too long for `{addr}` (at most /{max})")]
    PrefixTooLong { addr: String, len: u8, max: u8 },
    #[error(
        "{given} --addr blocks given, at most {MAX_CIDRS}: every record is checked against \
         each, so cover them with fewer, wider blocks (10.0.0.0/8 for all of 10.x.x.x)"
    )]
    TooMany { given: usize },
}

/// Most `--addr` blocks: each record is compared with every block in turn, in userspace, at
/// up to hundreds of thousands of records a second.
pub const MAX_CIDRS: usize = 64;

/// An address block; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| CidrError::Syntax(s.to_owned()))?,
            None => max,
        };
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                addr: a.to_owned(),
                len: prefix,
                max,
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack IPv6 socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (net, width) = bits(self.addr);
        let (host, _) = bits(ip);
        let shift = width - self.prefix;
        if shift as u32 >= 128 {
            return true;
        }
        (net >> shift) == (host >> shift)
    }
}

/// What passes the userspace part of the filter.
#[derive(Debug, Clone, Default)]
pub struct AddrFilter {
    cidrs: Vec<Cidr>,
}

impl AddrFilter {
    pub fn new(cidrs: Vec<Cidr>) -> Result<Self, CidrError> {
        if cidrs.len() > MAX_CIDRS {
            return Err(CidrError::TooMany { given: cidrs.len() });
        }
        Ok(Self { cidrs })
    }

    pub fn matches(&self, t: &Transition) -> bool {
        self.matches_addrs(t.saddr, t.daddr)
    }

    pub fn matches_addrs(&self, a: IpAddr, b: IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(a) || c.contains(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches() {
        assert!(c("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.1.2.3".parse().unwrap()));
        assert!(c("192.0.2.7").contains("192.0.2.7".parse().unwrap()));
        assert!(!c("192.0.2.7").contains("192.0.2.8".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(c("::/0").contains("fd00::1".parse().unwrap()));
        assert!(c("fd00::/16").contains("fd00:231::1".parse().unwrap()));
        assert!(!c("fd00::/16").contains("10.0.0.1".parse().unwrap()));
        assert!(c("10.0.0.0/8").contains("::ffff:10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_input_with_a_clear_error() {
        assert_eq!(
            "nope".parse::<Cidr>(),
            Err(CidrError::Syntax("nope".into()))
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }

    #[test]
    fn the_list_of_blocks_is_bounded() {
        let blocks = |n| vec![c("10.0.0.0/8"); n];
        assert!(AddrFilter::new(blocks(MAX_CIDRS)).is_ok());
        let e = AddrFilter::new(blocks(MAX_CIDRS + 1)).unwrap_err();
        assert_eq!(
            e,
            CidrError::TooMany {
                given: MAX_CIDRS + 1
            }
        );
        assert!(e.to_string().contains("at most 64"), "{e}");
    }
}
