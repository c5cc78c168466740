//! Blocking std::net helpers whose every wait is bounded.
//!
//! A test whose peer never shows up must fail within seconds, not hang the whole suite (and
//! CI's time budget), so nothing here blocks without a deadline.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for a single network wait inside the test namespaces (veth, no loss: real
/// waits are in microseconds).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `accept()` with a deadline: polls a non-blocking listener. The listener is left blocking
/// again and the accepted stream is blocking with read/write timeouts of `timeout`.
pub fn accept_timeout(
    listener: &TcpListener,
    timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match listener.accept() {
            Ok(pair) => break Ok(pair),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection accepted within {timeout:?}"),
                    ));
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    listener.set_nonblocking(false)?;
    let (stream, peer) = result?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok((stream, peer))
}

/// `connect()` with a deadline; the stream gets read/write timeouts of `timeout`.
pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Reads until the peer's FIN (EOF), each read bounded by the stream's read timeout and the
/// whole by `timeout`; returns what was read.
pub fn read_to_eof(stream: &mut TcpStream, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no EOF within {timeout:?} ({} bytes read)", data.len()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(data),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
