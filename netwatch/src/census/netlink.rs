//! The inet_diag dialect of NETLINK_SOCK_DIAG, written by hand because it is small: one dump
//! request per address family, and a parser for the multi-part reply. The parser is pure (bytes
//! in, sockets out) so that it is tested without root on replies built by hand, and it copies
//! every field out of the buffer after a length check: a short, odd or hostile reply is an
//! error, never an out-of-bounds or unaligned read.
//!
//! Layouts are the uapi ones of `linux/netlink.h` and `linux/inet_diag.h`, stable since 2.6:
//! `nlmsghdr` (16 bytes), `inet_diag_req_v2` (56), `inet_diag_msg` (72), all in host byte order
//! except ports and addresses, which are in network order.

use crate::core::fasthash::IdMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use netwatch_common::state;

use super::CensusSocket;

/// `NETLINK_SOCK_DIAG` from `linux/netlink.h`.
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`: the message type of both request and reply.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;

pub(super) const NLMSG_HDRLEN: usize = 16;
const REQ_V2_LEN: usize = 56;
pub(super) const DIAG_MSG_LEN: usize = 72;
/// One request: a netlink header and an `inet_diag_req_v2`.
pub(super) const REQUEST_LEN: usize = NLMSG_HDRLEN + REQ_V2_LEN;

/// Every state bit from ESTABLISHED (1) to BOUND_INACTIVE (13). The kernel adds NEW_SYN_RECV
/// itself when SYN_RECV is asked for, but asking for it outright costs nothing and keeps
/// request sockets in the census on kernels that do not.
pub(super) const ALL_STATES: u32 = ((1u32 << state::COUNT) - 1) & !1;

/// How long to wait for each part of a reply before giving up: the kernel answers a dump of
/// a million sockets in well under a second, so this only ends a wait that would never end.
const RECV_TIMEOUT_S: libc::time_t = 10;

/// What is wrong with a reply, or what the kernel said was wrong with the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagError {
    #[error("netlink reply truncated: {have} bytes left where a 16-byte message header belongs")]
    TruncatedHeader { have: usize },
    #[error("netlink message claims {claimed} bytes but {have} are left in the datagram")]
    BadLength { claimed: usize, have: usize },
    #[error("inet_diag_msg truncated: {have} bytes, it needs {DIAG_MSG_LEN}")]
    TruncatedDiagMsg { have: usize },
    #[error("NLMSG_ERROR message truncated: {have} bytes of payload, it needs 4")]
    TruncatedError { have: usize },
    #[error("inet_diag_msg with address family {family}, neither AF_INET nor AF_INET6")]
    UnknownFamily { family: u8 },
    #[error("the kernel refused the socket dump: {}", errno_text(*errno))]
    Refused { errno: i32 },
    #[error("the kernel aborted the socket dump part way: {}", errno_text(*errno))]
    Aborted { errno: i32 },
}

impl DiagError {
    /// The errno the kernel reported, for hints that depend on it.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { errno } | Self::Aborted { errno } => Some(*errno),
            _ => None,
        }
    }
}

fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// Whether the reply to one request has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

/// The bytes of a dump request for every TCP socket of `family` in the socket's namespace
/// whose state is in the `states` bit mask.
pub(super) fn dump_request(family: u8, seq: u32, states: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id.
    b[16] = family;
    b[17] = libc::IPPROTO_TCP as u8;
    // idiag_ext 0 asks for no attributes: the fixed message holds all the census needs.
    b[20..24].copy_from_slice(&states.to_ne_bytes());
    // The socket id stays zero: a dump ignores it, and zero ports mean "any port".
    b
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u16_be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn addr(family: u8, b: &[u8]) -> Result<IpAddr, DiagError> {
    match i32::from(family) {
        libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => Err(DiagError::UnknownFamily { family }),
    }
}

/// One socket from the payload of a SOCK_DIAG_BY_FAMILY message (attributes after the fixed
/// part are ignored). `netns` is the inode of the namespace the dump ran in.
pub(super) fn parse_diag_msg(p: &[u8], netns: u32) -> Result<CensusSocket, DiagError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(DiagError::TruncatedDiagMsg { have: p.len() });
    }
    let family = p[0];
    // Request sockets live in the hash as NEW_SYN_RECV; report them as the SYN_RECV they are,
    // as `ss` does (current kernels already say SYN_RECV here).
    let state = match p[1] {
        state::NEW_SYN_RECV => state::SYN_RECV,
        s => s,
    };
    let cookie_lo = u64::from(u32_ne(p, 44));
    let cookie_hi = u64::from(u32_ne(p, 48));
    Ok(CensusSocket {
        state,
        family: u16::from(family),
        saddr: addr(family, &p[8..24])?,
        sport: u16_be(p, 4),
        daddr: addr(family, &p[24..40])?,
        dport: u16_be(p, 6),
        inode: u64::from(u32_ne(p, 68)),
        uid: u32_ne(p, 64),
        cookie: cookie_lo | cookie_hi << 32,
        timer: p[2],
        expires_ms: u32_ne(p, 52),
        retrans: p[3],
        rqueue: u32_ne(p, 56),
        wqueue: u32_ne(p, 60),
        netns,
    })
}

/// Parses one datagram of the reply to request `seq`, appending its sockets to `out`.
///
/// Messages with another sequence number are skipped (they answer no request of ours), as are
/// NOOPs and types this parser does not know; NLMSG_ERROR and an NLMSG_DONE carrying an error
/// end the dump with that error.
pub(super) fn parse_datagram(
    buf: &[u8],
    seq: u32,
    netns: u32,
    out: &mut Vec<CensusSocket>,
) -> Result<Progress, DiagError> {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(DiagError::TruncatedHeader { have: rest.len() });
        }
        let len = u32_ne(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DiagError::BadLength {
                claimed: len,
                have: rest.len(),
            });
        }
        let kind = u16_ne(rest, 4);
        let msg_seq = u32_ne(rest, 8);
        let payload = &rest[NLMSG_HDRLEN..len];
        // Messages are padded to 4 bytes; the last one of a datagram may omit its padding.
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        if msg_seq != seq {
            continue;
        }
        match kind {
            SOCK_DIAG_BY_FAMILY => out.push(parse_diag_msg(payload, netns)?),
            NLMSG_DONE => {
                // The payload is the dump's final status; older kernels may leave it out.
                if payload.len() >= 4 {
                    let status =
                        i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    if status < 0 {
                        return Err(DiagError::Aborted {
                            errno: status.saturating_neg(),
                        });
                    }
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DiagError::TruncatedError {
                        have: payload.len(),
                    });
                }
                let status = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                // Zero is an acknowledgement, which a dump does not ask for; skip it if sent.
                if status != 0 {
                    return Err(DiagError::Refused {
                        errno: status.saturating_neg(),
                    });
                }
            }
            NLMSG_NOOP => {}
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// A netlink socket speaking NETLINK_SOCK_DIAG in the namespace of the thread that opened it.
pub(super) struct DiagSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl DiagSocket {
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before it is used as a descriptor.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_S,
            tv_usec: 0,
        };
        // SAFETY: the option value points at a live timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            // The kernel fills dump datagrams up to 32 KiB less overhead; `recv` grows this if
            // one is ever bigger.
            buf: vec![0; 32 * 1024],
        })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data for which all zeroes is valid (the kernel, pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `msg` and `kernel` are live for the call, with the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const kernel).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == msg.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short send of a netlink request",
                    ))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One whole datagram. Its size is peeked first, so that none is ever cut short.
    fn recv(&mut self) -> io::Result<&[u8]> {
        let fd = self.fd.as_raw_fd();
        let recv = |buf: &mut [u8], flags| loop {
            // SAFETY: `buf` is live and writable for its length for the call.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // With MSG_TRUNC the result is the datagram's real size, whatever the buffer's.
        let size = recv(&mut [], libc::MSG_PEEK | libc::MSG_TRUNC)?;
        if size > self.buf.len() {
            self.buf.resize(size, 0);
        }
        let n = recv(&mut self.buf, 0)?;
        Ok(&self.buf[..n])
    }

    /// Every TCP socket of `family` in this socket's namespace in `states`, handed to `each`
    /// one datagram's worth at a time.
    fn dump_family(
        &mut self,
        family: u8,
        seq: u32,
        netns: u32,
        states: u32,
        each: &mut impl FnMut(CensusSocket),
    ) -> Result<()> {
        self.send(&dump_request(family, seq, states))
            .context("cannot send the sock_diag dump request to the kernel")?;
        let mut batch = Vec::new();
        loop {
            let datagram = self.recv().map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    anyhow::anyhow!("the kernel sent no sock_diag reply within {RECV_TIMEOUT_S} s")
                } else {
                    anyhow::Error::new(e).context("cannot read the sock_diag reply")
                }
            })?;
            let progress = parse_datagram(datagram, seq, netns, &mut batch)?;
            batch.drain(..).for_each(&mut *each);
            if progress == Progress::Done {
                return Ok(());
            }
        }
    }
}

/// A sock_diag socket of one network namespace, with that namespace's inode: opened by a
/// thread in the namespace, it keeps answering for it from any thread.
pub(crate) struct Dumper {
    sock: DiagSocket,
    netns: u32,
}

impl Dumper {
    /// Opens one in the calling thread's network namespace, whose inode is `netns`.
    pub(super) fn open_here(netns: u32) -> Result<Self> {
        let sock = DiagSocket::open().context(
            "cannot open a NETLINK_SOCK_DIAG socket; the kernel needs CONFIG_INET_DIAG and \
             CONFIG_INET_TCP_DIAG (module tcp_diag: `modprobe tcp_diag`)",
        )?;
        Ok(Self { sock, netns })
    }

    /// Every TCP socket in `states`, IPv4 then IPv6, handed to `each` as the kernel lists
    /// them. A socket met twice (see [`dedup_by_cookie`]) is handed twice, the later
    /// sighting last.
    pub(super) fn each(&mut self, states: u32, mut each: impl FnMut(CensusSocket)) -> Result<()> {
        for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
            self.sock
                .dump_family(family, seq, self.netns, states, &mut each)?;
        }
        Ok(())
    }
}

/// Every TCP socket, IPv4 then IPv6, in the calling thread's network namespace, whose inode
/// is `netns`, each once.
pub(super) fn dump_here(netns: u32, states: u32) -> Result<Vec<CensusSocket>> {
    let mut out = Vec::new();
    Dumper::open_here(netns)?.each(states, |s| out.push(s))?;
    Ok(dedup_by_cookie(out))
}

/// A dump is not a snapshot: it walks the hash in chunks, so a socket that turns into its
/// timewait successor between two chunks is met twice under one cookie (the kernel copies the
/// cookie into the timewait socket). Keeps the later sighting, in the place of the first.
/// In place: a second vector of a full TIME_WAIT table's sockets was 11 MB of netwatch's
/// peak RSS, which the start-up census sets.
pub(super) fn dedup_by_cookie(mut sockets: Vec<CensusSocket>) -> Vec<CensusSocket> {
    let mut at: IdMap<u64, usize> = IdMap::default();
    at.reserve(sockets.len());
    // [0, kept) holds the sockets kept so far, [kept, i) the sightings dropped.
    let mut kept = 0;
    for i in 0..sockets.len() {
        let cookie = sockets[i].cookie;
        match at.get(&cookie) {
            Some(&first) if cookie != 0 => sockets.swap(first, i),
            _ => {
                at.insert(cookie, kept);
                sockets.swap(kept, i);
                kept += 1;
            }
        }
    }
    sockets.truncate(kept);
    // Grown by doubling while parsed: 131074 sockets took room for 262144.
    sockets.shrink_to_fit();
    sockets
}
