//! Loopback TCP connection churn for `cargo xtask bench`.
//!
//! `--servers` threads each accept on their own listener (127.0.1.1, 127.0.1.2, ...), read the
//! client's few bytes and close first, so TIME_WAIT lands on the server side. `--clients`
//! threads connect, send, wait for the server's FIN and close, as fast as they can, each
//! connection from the next source address in 127.0.0.2-127.0.0.254 (bound with
//! IP_BIND_ADDRESS_NO_PORT so the kernel picks the port per 4-tuple): neither TIME_WAIT nor
//! the ephemeral port range caps the rate. At the end one JSON line goes to stdout with the
//! connection rate, the errors by kind, and the kernel counters that explain a low rate.
//!
//! Only loopback addresses are used, and the run stops by itself after `--duration`.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read as _, Write as _},
    mem,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, RawFd},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Maximal TCP connection churn on loopback (server active close); prints one JSON line"
)]
struct Args {
    /// How long to generate load, in seconds (fractions allowed).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// Client threads, each with one connection in flight at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=512))]
    clients: u32,
    /// Server threads, each accepting on its own address 127.0.1.N.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=250))]
    servers: u32,
    /// Listening port on every server address (0: let the kernel pick one per listener).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Cap the total rate at this many connections/s (paced per client); 0: as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Bytes each client sends before waiting for the server's close.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    payload: u32,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a duration in seconds between 0 and 3600"
        )),
    }
}

/// Give up on a connection step after this long: a dropped SYN would otherwise stall a client
/// for the 1 s + 2 s + ... retransmission schedule past the end of the run.
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Client source addresses 127.0.0.FIRST_SRC ..= 127.0.0.LAST_SRC.
const FIRST_SRC: u8 = 2;
const LAST_SRC: u8 = 254;
const BACKLOG: libc::c_int = 4096;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct ClientStats {
    connections: u64,
    errors: BTreeMap<&'static str, u64>,
}

fn run(args: &Args) -> io::Result<()> {
    let before = netstat();
    let mut servers = Vec::new();
    for i in 0..args.servers {
        let addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, 1 + i as u8), args.port);
        let listener = listen(addr).map_err(|e| io_context(e, &format!("listening on {addr}")))?;
        let local = match listener.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!("bound an IPv4 address"),
        };
        servers.push(local);
        let payload = args.payload as usize;
        thread::Builder::new()
            .name(format!("server{i}"))
            .spawn(move || serve(&listener, payload))?;
    }
    let servers = Arc::new(servers);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let servers = Arc::clone(&servers);
        let stop = Arc::clone(&stop);
        let (n, payload) = (args.clients, args.payload as usize);
        // Each client's share of --rate, as the gap between its connection starts.
        let pace =
            (args.rate > 0).then(|| Duration::from_secs_f64(f64::from(n) / f64::from(args.rate)));
        clients.push(
            thread::Builder::new()
                .name(format!("client{i}"))
                .spawn(move || client(i, n, &servers, payload, pace, deadline, &stop))?,
        );
    }
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let mut total = ClientStats::default();
    for c in clients {
        let s = c
            .join()
            .map_err(|_| io::Error::other("a client thread panicked"))?;
        total.connections += s.connections;
        for (k, v) in s.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = netstat();
    let delta = |k: &str| {
        after
            .get(k)
            .zip(before.get(k))
            .map(|(a, b)| a.saturating_sub(*b))
            .unwrap_or(0)
    };
    let errors: u64 = total.errors.values().sum();
    let kinds = total
        .errors
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"conn_per_s\":{:.1},\"connections\":{},\"errors\":{},\"errors_by_kind\":{{{}}},\
         \"seconds\":{:.3},\"clients\":{},\"servers\":{},\"rate_cap\":{},\"tcp_max_tw_buckets\":{},\
         \"tw_overflow\":{},\"listen_overflows\":{},\"listen_drops\":{}}}",
        total.connections as f64 / elapsed,
        total.connections,
        errors,
        kinds,
        elapsed,
        args.clients,
        args.servers,
        args.rate,
        sysctl("net/ipv4/tcp_max_tw_buckets")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "null".into()),
        delta("TCPTimeWaitOverflow"),
        delta("ListenOverflows"),
        delta("ListenDrops"),
    );
    Ok(())
}

/// Accept, read the client's bytes, close first. Runs until the process exits.
fn serve(listener: &TcpListener, payload: usize) {
    let mut buf = vec![0u8; payload.max(64)];
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            // EMFILE or a reset in the queue: nothing to do but go on.
            continue;
        };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut got = 0;
        while got < payload {
            match s.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        drop(s); // the active close: FIN from the server, TIME_WAIT here
    }
}

fn client(
    index: u32,
    clients: u32,
    servers: &[SocketAddrV4],
    payload: usize,
    pace: Option<Duration>,
    deadline: Instant,
    stop: &AtomicBool,
) -> ClientStats {
    let mut next = Instant::now();
    let mut stats = ClientStats::default();
    let request = vec![b'x'; payload];
    let mut buf = [0u8; 64];
    let span = u32::from(LAST_SRC - FIRST_SRC) + 1;
    let mut k: u32 = index;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(gap) = pace {
            // Fixed schedule: a client that fell behind catches up without sleeping.
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            }
            next += gap;
        }
        // Interleave threads over sources and servers so no two threads share a 4-tuple space.
        let src = Ipv4Addr::new(127, 0, 0, FIRST_SRC + (k % span) as u8);
        let dst = servers[((k / span) as usize + index as usize) % servers.len()];
        k = k.wrapping_add(clients);
        match one_connection(src, dst, &request, &mut buf) {
            Ok(()) => stats.connections += 1,
            Err(kind) => *stats.errors.entry(kind).or_default() += 1,
        }
    }
    stats
}

/// One connection: connect from `src`, send, wait for the server's FIN, close.
fn one_connection(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    request: &[u8],
    buf: &mut [u8],
) -> Result<(), &'static str> {
    let mut s = connect_from(src, dst).map_err(|e| errno_name("connect", &e))?;
    s.write_all(request).map_err(|e| errno_name("write", &e))?;
    loop {
        match s.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno_name("read", &e)),
        }
    }
}

fn errno_name(step: &'static str, e: &io::Error) -> &'static str {
    match (step, e.raw_os_error()) {
        ("connect", Some(libc::EADDRNOTAVAIL)) => "connect_EADDRNOTAVAIL",
        ("connect", Some(libc::ECONNREFUSED)) => "connect_ECONNREFUSED",
        ("connect", Some(libc::ECONNRESET)) => "connect_ECONNRESET",
        ("connect", Some(libc::EAGAIN | libc::EINPROGRESS | libc::ETIMEDOUT)) => "connect_timeout",
        ("connect", Some(libc::EMFILE | libc::ENFILE)) => "connect_EMFILE",
        ("connect", _) => "connect_other",
        ("write", _) => "write",
        (_, Some(libc::EAGAIN)) => "read_timeout",
        (_, Some(libc::ECONNRESET)) => "read_ECONNRESET",
        _ => "read_other",
    }
}

fn io_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data for which all zeroes is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

/// An owned socket that closes on drop until it is turned into a std type.
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl Fd {
    fn tcp() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: value points to a live T of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.0,
                level,
                name,
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn bind(&self, addr: SocketAddrV4) -> io::Result<()> {
        let sa = sockaddr(addr);
        // SAFETY: sa is a valid sockaddr_in of the size passed.
        let rc = unsafe {
            libc::bind(
                self.0,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn into_raw(self) -> RawFd {
        let fd = self.0;
        mem::forget(self);
        fd
    }
}

fn listen(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = Fd::tcp()?;
    fd.setsockopt(libc::SOL_SOCKET, libc::SO_REUSEADDR, &1 as &libc::c_int)?;
    fd.bind(addr)?;
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::listen(fd.0, BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a listening TCP socket we own, handed over exactly once.
    Ok(unsafe { TcpListener::from_raw_fd(fd.into_raw()) })
}

fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = Fd::tcp()?;
    // The port is chosen at connect() per 4-tuple, not at bind() per source address.
    fd.setsockopt(
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &1 as &libc::c_int,
    )?;
    let tv = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: IO_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    // SO_SNDTIMEO also bounds a blocking connect() on Linux.
    fd.setsockopt(libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    fd.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    fd.bind(SocketAddrV4::new(src, 0))?;
    let sa = sockaddr(dst);
    loop {
        // SAFETY: sa is a valid sockaddr_in of the size passed.
        let rc = unsafe {
            libc::connect(
                fd.0,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: a connected TCP socket we own, handed over exactly once.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw()) })
}

fn sysctl(name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// TcpExt counters from /proc/net/netstat (this network namespace).
fn netstat() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = fs::read_to_string("/proc/net/netstat") else {
        return out;
    };
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}
