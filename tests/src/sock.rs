//! Socket operations std::net does not offer, done with libc: bind before connect (a chosen
//! source port), listen with a chosen backlog, the TCP timestamp a socket sends, and the
//! kernel's TCP millisecond clock. Every wait is bounded, as in [`crate::tcp`].

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `TCP_TIMESTAMP` (linux/tcp.h): getsockopt returns the TSval the socket sends now (its
/// clock plus its per-connection offset); bit 0 tells microsecond timestamps.
pub const TCP_TIMESTAMP: libc::c_int = 24;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A new TCP socket of `addr`'s family, close-on-exec.
fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the descriptor is owned right away.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value lives across the call; the length matches.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a sockaddr of length len.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}

/// `connect()` to `remote` from exactly `local` (address and port, bound first with
/// SO_REUSEADDR), within `timeout`. The stream is blocking with read/write timeouts of
/// `timeout`. Errors keep the kernel's errno (`raw_os_error`), e.g. EADDRINUSE, ETIMEDOUT.
pub fn connect_bound(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = tcp_socket(remote)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, local)?;
    set_nonblocking(&fd, true)?;
    let (ss, len) = sockaddr(remote);
    // SAFETY: ss holds a sockaddr of length len.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect {local} -> {remote}: not connected within {timeout:?}"),
                ));
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: pfd is a valid pollfd array of length 1.
            match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut so_error: libc::c_int = 0;
        let mut optlen = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: so_error and optlen are valid for writing.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut so_error as *mut _ as *mut libc::c_void,
                &mut optlen,
            )
        })?;
        if so_error != 0 {
            return Err(io::Error::from_raw_os_error(so_error));
        }
    }
    set_nonblocking(&fd, false)?;
    // SAFETY: fd is a connected TCP socket handed over to the stream.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A listener on `addr` (SO_REUSEADDR) with exactly `backlog` as listen()'s argument
/// (std's `TcpListener::bind` always asks for 128).
pub fn listen_backlog(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let fd = tcp_socket(addr)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, addr)?;
    // SAFETY: listen on a valid, bound descriptor.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    // SAFETY: fd is a listening TCP socket handed over to the listener.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
}

/// Closes `stream` with a RST instead of a FIN (SO_LINGER on, timeout 0): the peer's
/// socket, or its request socket still in SYN_RECV, is dropped at once.
pub fn abort(stream: TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger lives across the call; the length matches.
    cvt(unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    drop(stream);
    Ok(())
}

/// The TSval `stream` puts in the segments it sends now (`getsockopt(TCP_TIMESTAMP)`):
/// the TCP clock in ms (bit 0 cleared, as the kernel returns it) plus the connection's
/// timestamp offset.
pub fn tcp_timestamp(stream: &TcpStream) -> io::Result<u32> {
    let mut val: u32 = 0;
    let mut len = mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: val and len are valid for writing.
    cvt(unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_TIMESTAMP,
            &mut val as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(val)
}

/// The kernel's TCP millisecond clock (`tcp_clock_ms()`: CLOCK_MONOTONIC in ms, truncated to
/// 32 bits): the TSval of a sender with `net.ipv4.tcp_timestamps=2` (no offset).
pub fn tcp_clock_ms() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    (ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000) as u32
}

/// The calling thread's command name as the kernel reports it to tracers
/// (`/proc/thread-self/comm`, i.e. `bpf_get_current_comm()`), without the newline.
pub fn thread_comm() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/thread-self/comm")?
        .trim_end_matches('\n')
        .to_owned())
}
