//! The census at the start of a trace: every TCP socket that already exists, in every state,
//! so that a trace begun in the middle of an incident shows the 40 000 sockets in TIME_WAIT
//! and the listener whose queue is full, not only what changes afterwards. It asks the kernel
//! through sock_diag netlink, as `ss -tan` does, because that needs no eBPF and works in any
//! namespace; the kernel records and the census meet on the socket cookie.
//!
//! The cookie in a census entry is the one `bpf_get_socket_cookie` returns for the same
//! socket, and so the `sock_id` of our kernel records: inet_diag fills `id.idiag_cookie` in
//! `inet_diag_msg_common_fill` (full, timewait and request sockets alike) with
//! `sock_diag_save_cookie`, which stores `sock_gen_cookie(sk)` as low and high 32-bit words;
//! `bpf_get_socket_cookie` and `getsockopt(SO_COOKIE)` return `sock_gen_cookie(sk)` too. A
//! timewait socket inherits the cookie of the socket it replaces; a request socket has its
//! own, and the child made from it gets a new one.
//!
//! Entries that are not full sockets are told by `inode == 0`: timewait sockets (timer 3),
//! which report their substate, so an orphan in FIN_WAIT2 appears as FIN_WAIT2; and request
//! sockets in SYN_RECV (timer 1). IPv6 sockets carrying IPv4 traffic keep family AF_INET6 and
//! v4-mapped addresses, as `ss` shows them.

mod kept;
mod netlink;
pub(crate) mod netns;
mod owners;

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use netwatch_common::state;

use crate::core::requests::{self, ListenerQueue, Queues, Waiting};

pub use kept::{Kept, KeptCensus};
pub use netlink::DiagError;
pub use owners::{socket_owners, Owner};

/// One TCP socket as the kernel's sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CensusSocket {
    /// Kernel TCP state number (`netwatch_common::state`); request sockets say SYN_RECV.
    pub state: u8,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The socket's inode, which `/proc/PID/fd` links name; 0 for timewait and request sockets,
    /// which no process holds.
    pub inode: u64,
    /// Owner's uid as seen from this process's user namespace; 0 for timewait and request
    /// sockets.
    pub uid: u32,
    /// Socket cookie: equal to `bpf_get_socket_cookie` and so to the kernel records' `sock_id`.
    pub cookie: u64,
    /// Which timer is pending (`idiag_timer`): 0 none, 1 retransmit (or SYN-ACK for request
    /// sockets), 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
    /// Milliseconds until that timer fires: for timewait sockets, the time left to live.
    pub expires_ms: u32,
    /// Retransmissions so far (`idiag_retrans`): for request sockets, SYN-ACKs resent.
    pub retrans: u8,
    /// `idiag_rqueue`: for a listener, children waiting in its accept queue (else bytes
    /// not yet read).
    pub rqueue: u32,
    /// `idiag_wqueue`: for a listener, its backlog (listen()'s argument capped by
    /// somaxconn); else bytes not yet acknowledged.
    pub wqueue: u32,
    /// Inode of the network namespace the socket lives in.
    pub netns: u32,
}

/// Every TCP socket, IPv4 and IPv6, in all states, of the network namespace at `netns` (a
/// file such as `/run/netns/NAME` or `/proc/PID/ns/net`), or of this thread's namespace when
/// None. Another namespace is entered by a short-lived thread; the caller's thread stays put.
///
/// The dump walks live hash tables, not a snapshot: a socket that changes state meanwhile may
/// be missed or met in its new state. A socket met twice (it became a timewait socket between
/// two chunks of the dump) is kept once, in its later state.
#[cfg(test)]
pub fn dump_tcp(netns: Option<&Path>) -> Result<Vec<CensusSocket>> {
    dump_states(netns, netlink::ALL_STATES)
}

/// The listeners of `netns` (as [`dump_tcp`]), each once.
pub fn dump_listeners(netns: Option<&Path>) -> Result<Vec<CensusSocket>> {
    dump_states(netns, 1 << state::LISTEN)
}

/// Every TCP socket of `netns` (as [`dump_tcp`]) but its listeners, handed to `each` as the
/// kernel lists them rather than gathered first: gathered, a million TIME_WAIT sockets were
/// 84 MB held beside the engine's table that they go into. A socket met twice is handed
/// twice, its later sighting last.
pub fn each_tcp_but_listeners(netns: Option<&Path>, each: impl FnMut(CensusSocket)) -> Result<()> {
    let (dumper, place) = match netns {
        None => (
            netns::own_inode().and_then(netlink::Dumper::open_here),
            String::new(),
        ),
        Some(path) => (
            netns::run_in(path, netlink::Dumper::open_here),
            format!(" of network namespace {}", path.display()),
        ),
    };
    dumper
        .and_then(|mut d| {
            d.each(netlink::ALL_STATES & !(1 << state::LISTEN), each)
                .map_err(with_hint)
        })
        .with_context(|| format!("cannot list the TCP sockets{place}"))
}

/// Request sockets and listeners of `netns` (or this process's own namespace): one walk of
/// the kernel's tables for both queues (see [`queues`]).
pub fn dump_queues(netns: Option<&Path>) -> Result<Vec<CensusSocket>> {
    dump_states(
        netns,
        1 << state::SYN_RECV | 1 << state::NEW_SYN_RECV | 1 << state::LISTEN,
    )
}

/// The waiting request sockets (with their ages from the SYN-ACK timer) and the children
/// queued on listeners, from a dump of both.
pub fn queues<'a>(socks: impl IntoIterator<Item = &'a CensusSocket>) -> Queues {
    let mut q = Queues::default();
    for s in socks {
        match s.state {
            state::SYN_RECV => q.requests.push(Waiting {
                age_ns: requests::age_ms(s.retrans, s.expires_ms).saturating_mul(1_000_000),
                port: s.sport,
                remote: s.daddr,
            }),
            state::LISTEN => {
                q.accept_queued += u64::from(s.rqueue);
                q.listeners.push(ListenerQueue {
                    netns: s.netns,
                    addr: s.saddr,
                    port: s.sport,
                    cookie: s.cookie,
                    queued: s.rqueue,
                    backlog: s.wqueue,
                });
            }
            _ => {}
        }
    }
    q
}

fn dump_states(netns: Option<&Path>, states: u32) -> Result<Vec<CensusSocket>> {
    let (sockets, place) = match netns {
        None => (
            netns::own_inode().and_then(|ns| dump_in_own(ns, states)),
            String::new(),
        ),
        Some(path) => (
            netns::run_in(path, |ns| dump_in_own(ns, states)),
            format!(" of network namespace {}", path.display()),
        ),
    };
    sockets.with_context(|| format!("cannot list the TCP sockets{place}"))
}

fn dump_in_own(netns: u32, states: u32) -> Result<Vec<CensusSocket>> {
    netlink::dump_here(netns, states).map_err(with_hint)
}

/// Adds what to do to an error the kernel answered a dump with, where there is something.
fn with_hint(e: anyhow::Error) -> anyhow::Error {
    let errno = e.downcast_ref::<DiagError>().and_then(DiagError::errno);
    match errno.and_then(hint) {
        Some(hint) => e.context(hint),
        None => e,
    }
}

/// What to do about an errno the kernel answered a dump with.
fn hint(errno: i32) -> Option<&'static str> {
    match errno {
        libc::EPERM | libc::EACCES => Some(
            "the kernel denied the socket dump: run netwatch as root, or with CAP_NET_ADMIN in \
             that namespace",
        ),
        libc::ENOENT | libc::EOPNOTSUPP => Some(
            "this kernel has no TCP sock_diag handler: it needs CONFIG_INET_TCP_DIAG \
             (`modprobe tcp_diag`)",
        ),
        _ => None,
    }
}

/// How many sockets are in each state, indexed by state number (`netwatch_common::state`);
/// a state number the table has no room for is not counted.
#[cfg(test)]
pub fn counts_by_state(sockets: &[CensusSocket]) -> [u64; state::COUNT] {
    let mut counts = [0u64; state::COUNT];
    for s in sockets {
        if let Some(c) = counts.get_mut(usize::from(s.state)) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::netlink::{
        dedup_by_cookie, dump_request, parse_datagram, parse_diag_msg, Progress, ALL_STATES,
        DIAG_MSG_LEN, NLMSG_HDRLEN, REQUEST_LEN,
    };
    use super::*;

    const NS: u32 = 4026531840;

    /// A netlink message as the kernel lays it out, padded to 4 bytes.
    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::with_capacity(len.next_multiple_of(4));
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    /// The fixed part of an inet_diag_msg for `s`, plus `attrs` bytes of attributes.
    fn diag_msg(s: &CensusSocket, raw_state: u8, attrs: usize) -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = s.family as u8;
        p[1] = raw_state;
        p[2] = s.timer;
        p[3] = s.retrans;
        p[4..6].copy_from_slice(&s.sport.to_be_bytes());
        p[6..8].copy_from_slice(&s.dport.to_be_bytes());
        let put = |p: &mut [u8], at: usize, a: IpAddr| match a {
            IpAddr::V4(a) => p[at..at + 4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => p[at..at + 16].copy_from_slice(&a.octets()),
        };
        put(&mut p, 8, s.saddr);
        put(&mut p, 24, s.daddr);
        p[40..44].copy_from_slice(&3u32.to_ne_bytes()); // ifindex
        p[44..48].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
        p[48..52].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
        p[52..56].copy_from_slice(&s.expires_ms.to_ne_bytes());
        p[56..60].copy_from_slice(&s.rqueue.to_ne_bytes());
        p[60..64].copy_from_slice(&s.wqueue.to_ne_bytes());
        p[64..68].copy_from_slice(&s.uid.to_ne_bytes());
        p[68..72].copy_from_slice(&(s.inode as u32).to_ne_bytes());
        // An attribute header and value, which the parser must step over.
        p.extend((0..attrs).map(|i| i as u8));
        p
    }

    fn v4_established() -> CensusSocket {
        CensusSocket {
            state: state::ESTABLISHED,
            family: libc::AF_INET as u16,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport: 443,
            daddr: IpAddr::V4(Ipv4Addr::new(192, 168, 7, 200)),
            dport: 51234,
            inode: 987654,
            uid: 33,
            cookie: 0x0000_0012_8000_0001,
            timer: 2,
            expires_ms: 7_199_000,
            retrans: 2,
            rqueue: 7,
            wqueue: 9,
            netns: NS,
        }
    }

    fn v6_time_wait() -> CensusSocket {
        CensusSocket {
            state: state::TIME_WAIT,
            family: libc::AF_INET6 as u16,
            saddr: IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()),
            sport: 40000,
            daddr: IpAddr::V6("::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap()),
            dport: 8080,
            inode: 0,
            uid: 0,
            cookie: u64::MAX - 5,
            timer: 3,
            expires_ms: 59_870,
            retrans: 0,
            rqueue: 0,
            wqueue: 0,
            netns: NS,
        }
    }

    #[test]
    fn queues_are_the_waiting_requests_with_ages_and_the_listeners_backlogs() {
        let listener = CensusSocket {
            state: state::LISTEN,
            rqueue: 3,
            wqueue: 2,
            ..v4_established()
        };
        let request = CensusSocket {
            state: state::SYN_RECV,
            retrans: 1,
            expires_ms: 500,
            ..v4_established()
        };
        let q = queues([&listener, &request, &listener, &v6_time_wait()]);
        assert_eq!(q.accept_queued, 6);
        assert_eq!(q.listeners.len(), 2);
        assert_eq!((q.listeners[0].queued, q.listeners[0].backlog), (3, 2));
        assert_eq!(
            q.requests,
            [Waiting {
                age_ns: 2_500_000_000,
                port: 443,
                remote: request.daddr,
            }]
        );
    }

    #[test]
    fn request_asks_for_every_tcp_socket_of_the_family() {
        let r = dump_request(libc::AF_INET6 as u8, 77, ALL_STATES);
        assert_eq!(r.len(), REQUEST_LEN);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 77);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(r[18], 0, "no extensions");
        let states = u32::from_ne_bytes(r[20..24].try_into().unwrap());
        assert_eq!(states, ALL_STATES);
        for s in 1..=13 {
            assert_ne!(states & (1 << s), 0, "state {s}");
        }
        assert_eq!(states & 1, 0);
        assert_eq!(states >> 14, 0);
        assert!(r[24..].iter().all(|&b| b == 0), "no socket id filter");
    }

    #[test]
    fn parses_v4_and_v6_messages_in_one_multipart_datagram() {
        let (a, b) = (v4_established(), v6_time_wait());
        let mut dgram = nlmsg(20, 1, &diag_msg(&a, a.state, 0));
        // Attributes of odd length, so that the message needs padding.
        dgram.extend(nlmsg(20, 1, &diag_msg(&b, b.state, 13)));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 1, NS, &mut out), Ok(Progress::More));
        assert_eq!(out, vec![a.clone(), b.clone()]);

        // The next datagram of the same reply ends it.
        let done = nlmsg(3, 1, &0i32.to_ne_bytes());
        assert_eq!(parse_datagram(&done, 1, NS, &mut out), Ok(Progress::Done));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn request_sockets_read_as_syn_recv() {
        let mut s = v4_established();
        s.state = state::SYN_RECV;
        s.inode = 0;
        s.timer = 1;
        let got = parse_diag_msg(&diag_msg(&s, state::NEW_SYN_RECV, 0), NS).unwrap();
        assert_eq!(got, s);
        let got = parse_diag_msg(&diag_msg(&s, state::SYN_RECV, 0), NS).unwrap();
        assert_eq!(got, s);
    }

    #[test]
    fn the_last_message_may_lack_its_padding() {
        let a = v4_established();
        let mut dgram = nlmsg(20, 9, &diag_msg(&a, a.state, 5));
        dgram.truncate(NLMSG_HDRLEN + DIAG_MSG_LEN + 5);
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 9, NS, &mut out), Ok(Progress::More));
        assert_eq!(out, vec![a]);
    }

    #[test]
    fn kernel_errors_end_the_dump_with_their_errno() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&dump_request(2, 1, ALL_STATES)[..NLMSG_HDRLEN]);
        let err = parse_datagram(&nlmsg(2, 1, &payload), 1, NS, &mut Vec::new()).unwrap_err();
        assert_eq!(err, DiagError::Refused { errno: libc::EPERM });
        assert_eq!(err.errno(), Some(libc::EPERM));
        assert!(err.to_string().contains("refused"), "{err}");

        let err = parse_datagram(
            &nlmsg(3, 1, &(-libc::EINTR).to_ne_bytes()),
            1,
            NS,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(err, DiagError::Aborted { errno: libc::EINTR });

        // An acknowledgement is no error, and a DONE without status ends the dump.
        let mut dgram = nlmsg(2, 1, &0i32.to_ne_bytes());
        dgram.extend(nlmsg(3, 1, &[]));
        assert_eq!(
            parse_datagram(&dgram, 1, NS, &mut Vec::new()),
            Ok(Progress::Done)
        );

        let err = parse_datagram(&nlmsg(2, 1, &[0xff, 0xff]), 1, NS, &mut Vec::new()).unwrap_err();
        assert_eq!(err, DiagError::TruncatedError { have: 2 });
    }

    #[test]
    fn messages_for_other_requests_and_unknown_types_are_skipped() {
        let a = v4_established();
        let mut dgram = nlmsg(20, 5, &diag_msg(&a, a.state, 0));
        dgram.extend(nlmsg(2, 5, &(-libc::EPERM).to_ne_bytes()));
        dgram.extend(nlmsg(1, 1, &[])); // NOOP
        dgram.extend(nlmsg(0x99, 1, &[1, 2, 3]));
        dgram.extend(nlmsg(20, 1, &diag_msg(&a, a.state, 0)));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 1, NS, &mut out), Ok(Progress::More));
        assert_eq!(out, vec![a]);
    }

    #[test]
    fn truncated_replies_are_errors() {
        let a = v4_established();
        let whole = nlmsg(20, 1, &diag_msg(&a, a.state, 0));
        let parse = |b: &[u8]| parse_datagram(b, 1, NS, &mut Vec::new());

        // Cut inside the header.
        assert_eq!(
            parse(&whole[..10]),
            Err(DiagError::TruncatedHeader { have: 10 })
        );
        // Cut inside the payload: the header claims more than arrived.
        assert_eq!(
            parse(&whole[..40]),
            Err(DiagError::BadLength {
                claimed: NLMSG_HDRLEN + DIAG_MSG_LEN,
                have: 40
            })
        );
        // A header claiming less than itself would loop forever if believed.
        let mut tiny = whole.clone();
        tiny[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            parse(&tiny),
            Err(DiagError::BadLength {
                claimed: 8,
                have: whole.len()
            })
        );
        // A whole message whose payload is too short for an inet_diag_msg.
        let short = nlmsg(20, 1, &diag_msg(&a, a.state, 0)[..60]);
        assert_eq!(parse(&short), Err(DiagError::TruncatedDiagMsg { have: 60 }));
        // Trailing bytes after a good message.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(&[0; 3]);
        assert_eq!(
            parse(&trailing),
            Err(DiagError::TruncatedHeader { have: 3 })
        );
        // An address family the parser cannot read addresses of.
        let mut odd = diag_msg(&a, a.state, 0);
        odd[0] = 1;
        assert_eq!(
            parse(&nlmsg(20, 1, &odd)),
            Err(DiagError::UnknownFamily { family: 1 })
        );
        // Every proper prefix of a good datagram is an error, and yields no socket.
        for cut in 1..whole.len() {
            let mut out = Vec::new();
            let r = parse_datagram(&whole[..cut], 1, NS, &mut out);
            assert!(r.is_err() && out.is_empty(), "cut {cut}: {r:?}");
        }
    }

    #[test]
    fn a_socket_met_twice_is_kept_once_in_its_later_state() {
        let first = v4_established();
        let mut later = first.clone();
        later.state = state::TIME_WAIT;
        later.inode = 0;
        let other = v6_time_wait();
        let got = dedup_by_cookie(vec![first, other.clone(), later.clone()]);
        assert_eq!(got, vec![later, other]);
    }

    #[test]
    fn counts_index_by_state_number() {
        let mut sockets = vec![v4_established(), v4_established(), v6_time_wait()];
        let mut weird = v4_established();
        weird.state = 200;
        sockets.push(weird);
        let counts = counts_by_state(&sockets);
        assert_eq!(counts[usize::from(state::ESTABLISHED)], 2);
        assert_eq!(counts[usize::from(state::TIME_WAIT)], 1);
        assert_eq!(counts.iter().sum::<u64>(), 3);
    }

    /// Root-only tests against the running kernel. They skip with a reason when not root,
    /// except under CI, where skipping would hide a broken runner.
    mod live {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::{AsFd, AsRawFd};
        use std::os::unix::fs::MetadataExt;
        use std::path::PathBuf;
        use std::process::Command;
        use std::time::{Duration, Instant};

        use super::super::*;

        fn root(test: &str) -> bool {
            crate::testing::root(test, "sock_diag of other namespaces, setns")
        }

        /// The cookie the kernel gives a socket fd: what bpf_get_socket_cookie returns.
        fn so_cookie(fd: impl AsFd) -> u64 {
            let mut cookie = 0u64;
            let mut len = size_of::<u64>() as libc::socklen_t;
            // SAFETY: the option buffer is a live u64 and `len` says so.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_fd().as_raw_fd(),
                    libc::SOL_SOCKET,
                    57, // SO_COOKIE
                    (&raw mut cookie).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
            assert_ne!(cookie, 0);
            cookie
        }

        fn fd_inode(fd: impl AsFd) -> u64 {
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
                .unwrap()
                .ino()
        }

        fn thread_netns() -> u64 {
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
        }

        fn find(census: &[CensusSocket], cookie: u64) -> Option<&CensusSocket> {
            census.iter().find(|s| s.cookie == cookie)
        }

        #[test]
        fn census_sees_a_listener_and_both_ends_of_a_connection() {
            if !root("census_sees_a_listener_and_both_ends_of_a_connection") {
                return;
            }
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let cport = client.local_addr().unwrap().port();
            assert_eq!(peer.port(), cport);

            let census = dump_tcp(None).unwrap();
            let host_ns = u32::try_from(thread_netns()).unwrap();
            let lo = IpAddr::from([127, 0, 0, 1]);

            let l = find(&census, so_cookie(&listener)).expect("listener in the census");
            assert_eq!((l.state, l.saddr, l.sport), (state::LISTEN, lo, port));
            assert_eq!(l.family, libc::AF_INET as u16);
            let c = find(&census, so_cookie(&client)).expect("client in the census");
            assert_eq!(
                (c.state, c.saddr, c.sport, c.daddr, c.dport),
                (state::ESTABLISHED, lo, cport, lo, port)
            );
            let s = find(&census, so_cookie(&server)).expect("accepted socket in the census");
            assert_eq!(
                (s.state, s.saddr, s.sport, s.daddr, s.dport),
                (state::ESTABLISHED, lo, port, lo, cport)
            );
            for (entry, fd_ino) in [
                (l, fd_inode(&listener)),
                (c, fd_inode(&client)),
                (s, fd_inode(&server)),
            ] {
                assert_ne!(entry.inode, 0);
                assert_eq!(entry.inode, fd_ino, "{entry:?}");
                assert_eq!(entry.netns, host_ns);
                assert_eq!(entry.uid, 0);
            }
            let counts = counts_by_state(&census);
            assert!(counts[usize::from(state::LISTEN)] >= 1);
            assert!(counts[usize::from(state::ESTABLISHED)] >= 2);

            let owners = socket_owners();
            let me = owners
                .get(&l.inode)
                .expect("listener's inode in the owners map");
            assert_eq!(me.pid, std::process::id());
            let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
            assert_eq!(me.comm, comm.trim_end());
            assert_eq!(
                owners.get(&c.inode).map(|o| o.pid),
                Some(std::process::id())
            );
        }

        #[test]
        fn timewait_socket_keeps_the_cookie_and_reports_time_left() {
            if !root("timewait_socket_keeps_the_cookie_and_reports_time_left") {
                return;
            }
            // In a namespace of its own: the host's timewait table may be full (other work
            // here overflows tcp_max_tw_buckets), and then no timewait socket is made at all.
            let ns = Netns::create(format!("nwcensus-tw-{}", std::process::id()));
            let (cookie, cport, port) = netns::run_in(&ns.path(), |_| {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let port = listener.local_addr()?.port();
                let client = TcpStream::connect(("127.0.0.1", port))?;
                let (server, _) = listener.accept()?;
                let cport = client.local_addr()?.port();
                let cookie = so_cookie(&client);
                // The client closes first, so its end is the one that waits.
                drop(client);
                drop(server);
                Ok((cookie, cport, port))
            })
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let tw = loop {
                let census = dump_tcp(Some(&ns.path())).unwrap();
                if let Some(s) = find(&census, cookie).filter(|s| s.state == state::TIME_WAIT) {
                    break s.clone();
                }
                let seen = find(&census, cookie);
                assert!(
                    Instant::now() < deadline,
                    "no TIME_WAIT for {cookie:#x}: {seen:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(
                (tw.sport, tw.dport, tw.inode, tw.timer),
                (cport, port, 0, 3)
            );
            assert!((50_000..=60_000).contains(&tw.expires_ms), "{tw:?}");
        }

        /// The streamed census (listeners, then the rest as listed) is the gathered one:
        /// the same sockets, none from another namespace, and no listener in the stream.
        #[test]
        fn streamed_census_is_the_listeners_then_the_rest() {
            if !root("streamed_census_is_the_listeners_then_the_rest") {
                return;
            }
            let ns = Netns::create(format!("nwcensus-stream-{}", std::process::id()));
            let (listener, client, server) = netns::run_in(&ns.path(), |_| {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let client = TcpStream::connect(listener.local_addr()?)?;
                let (server, _) = listener.accept()?;
                Ok((listener, client, server))
            })
            .unwrap();
            let listeners = dump_listeners(Some(&ns.path())).unwrap();
            let mut rest = Vec::new();
            each_tcp_but_listeners(Some(&ns.path()), |s| rest.push(s)).unwrap();
            let cookies = |v: &[CensusSocket]| {
                let mut c: Vec<u64> = v.iter().map(|s| s.cookie).collect();
                c.sort_unstable();
                c
            };
            assert_eq!(cookies(&listeners), [so_cookie(&listener)]);
            let mut both = cookies(
                &[so_cookie(&client), so_cookie(&server)]
                    .map(|c| find(&rest, c).cloned().expect("connection in the stream")),
            );
            both.sort_unstable();
            assert_eq!(cookies(&rest), both);
            assert!(
                rest.iter().all(|s| s.state == state::ESTABLISHED),
                "{rest:?}"
            );
            let mut all = listeners.clone();
            all.extend(rest);
            assert_eq!(cookies(&all), cookies(&dump_tcp(Some(&ns.path())).unwrap()));
        }

        /// A named namespace, deleted on drop so that a failing test leaves none behind.
        struct Netns(String);

        impl Netns {
            fn create(name: String) -> Self {
                let ip = |args: &[&str]| {
                    let out = Command::new("ip").args(args).output().expect("run ip");
                    assert!(
                        out.status.success(),
                        "ip {args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                // A namespace left by an earlier run that was killed.
                let _ = Command::new("ip").args(["netns", "delete", &name]).output();
                ip(&["netns", "add", &name]);
                let ns = Self(name);
                ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
                ns
            }

            fn path(&self) -> PathBuf {
                PathBuf::from(format!("/run/netns/{}", self.0))
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &self.0])
                    .output();
            }
        }

        #[test]
        fn census_of_another_namespace_sees_only_its_sockets() {
            if !root("census_of_another_namespace_sees_only_its_sockets") {
                return;
            }
            let ns = Netns::create(format!("nwcensus-{}", std::process::id()));
            let before = thread_netns();
            let listener = netns::run_in(&ns.path(), |_| Ok(TcpListener::bind("127.0.0.1:0")?))
                .expect("listener inside the namespace");
            let port = listener.local_addr().unwrap().port();
            let cookie = so_cookie(&listener);

            let inside = dump_tcp(Some(&ns.path())).unwrap();
            assert_eq!(
                thread_netns(),
                before,
                "the calling thread changed namespace"
            );
            let ns_ino = std::fs::metadata(ns.path()).unwrap().ino();
            assert_ne!(ns_ino, before);
            let l = find(&inside, cookie).expect("listener in the namespace's census");
            assert_eq!((l.state, l.sport), (state::LISTEN, port));
            assert_eq!(l.inode, fd_inode(&listener));
            assert!(
                inside.iter().all(|s| u64::from(s.netns) == ns_ino),
                "{inside:?}"
            );
            // Only our listener lives in a namespace this test made.
            assert_eq!(inside.len(), 1, "{inside:?}");

            let host = dump_tcp(None).unwrap();
            assert!(
                find(&host, cookie).is_none(),
                "the host census sees the namespace's listener"
            );
            assert!(host.iter().all(|s| u64::from(s.netns) == before));
        }

        #[test]
        fn a_missing_namespace_is_a_clear_error() {
            // Needs no root: both fail before any permission check.
            let err = dump_tcp(Some(Path::new("/run/netns/netwatch-no-such-ns"))).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("no such namespace"), "{msg}");
            let err = dump_tcp(Some(Path::new("/proc/self/status"))).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("not a network namespace"), "{msg}");
        }
    }
}
