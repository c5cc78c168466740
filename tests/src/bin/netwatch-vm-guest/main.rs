//! The guest side of `cargo xtask vm-test`: /init of a throw-away VM booted on one Debian
//! kernel. It mounts what netwatch needs, loads the sock_diag and netfilter modules and a
//! ruleset (netfilter.rs), starts `netwatch trace`, drives real TCP scenarios over loopback while it traces, stops it, and
//! sends the trace, netwatch's stderr and exit status and its own log to the host over the
//! second serial port, then powers the VM off.
//!
//! Being PID 1 it must never panic or return early: every step's failure is logged and the
//! results are sent whatever happened, so the host always learns why.
//!
//! Channel format (parsed by xtask/src/vm/qemu.rs): `NWVM <name> <length>\n<bytes>\n` per
//! file, `NWVM-END\n` at the end, on a raw-mode /dev/ttyS1.

use std::{
    ffi::CString,
    fs,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

mod netfilter;
mod overhead;

use netwatch_tests::{
    sock::{connect_bound, listen_backlog},
    tcp::{accept_timeout, connect_timeout, read_to_eof},
};

/// Scenario ports; xtask/src/vm/check.rs knows the orphans' two by the same numbers.
const WARM_UP: u16 = 7100;
const ORPHAN_DIES: u16 = 7101;
const ORPHAN_TO_TIME_WAIT: u16 = 7102;
const TIME_WAIT_KILLED: u16 = 7103;
const TIME_WAIT_KILLED_CLIENT: u16 = 7203;
const REFUSED: u16 = 7104;
const SYNACK_RETRANSMIT: u16 = 7105;
const BACKLOG: u16 = 7106;
/// Short, so the orphan's timewait socket dies within the run (netwatch: FIN_WAIT2 ->
/// CLOSE with a ~2 s dwell).
const FIN_TIMEOUT_S: u64 = 2;
const IO: Duration = Duration::from_secs(5);
/// netwatch's load and attach is 2.6-9 s under TCG (the verifier); 90 s means it is stuck.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(90);
const TRACE: &str = "/trace.jsonl";
const STDERR: &str = "/netwatch.stderr";
const BUSYBOX: &str = "/bin/busybox";

fn main() {
    let mut log = Log(Vec::new());
    let exit = match run(&mut log) {
        Ok(code) => code,
        Err(e) => {
            log.say(format!("error: {e:#}"));
            None
        }
    };
    if let Err(e) = send(&log, exit) {
        log.say(format!("error: sending the results failed: {e:#}"));
    }
    // SAFETY: sync and reboot take no pointers; PID 1 powering off is the intended end.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; the kernel's panic=-1 then ends the VM.
}

/// The guest's own log: on the console for a human, and sent to the host.
pub(crate) struct Log(Vec<String>);

impl Log {
    fn say(&mut self, line: String) {
        println!("netwatch-vm-guest: {line}");
        self.0.push(line);
    }
}

/// Returns netwatch's exit code (None when it was killed or never ran).
fn run(log: &mut Log) -> Result<Option<i32>> {
    mount_all(log)?;
    let setup = Instant::now();
    load_modules(log);
    busybox(&["ip", "link", "set", "lo", "up"]).context("bringing lo up")?;
    sysctl("net/ipv4/tcp_fin_timeout", &FIN_TIMEOUT_S.to_string())?;
    // Before netwatch starts: it looks conntrack's allocator up when it starts.
    if let Err(e) = netfilter::setup() {
        log.say(format!("warning: netfilter setup: {e:#}"));
    }
    log.say(format!(
        "modules and ruleset loaded in {:.2} s",
        setup.elapsed().as_secs_f64()
    ));
    log.say(conntrack_visibility());
    let _table_in_use = netfilter::table_in_use()
        .map_err(|e| log.say(format!("warning: conntrack connection held: {e:#}")))
        .ok();
    if let Err(e) = warm_up() {
        log.say(format!("warning: warm-up connection: {e:#}"));
    }
    let before = netstat()?;
    let started = Instant::now();
    let mut netwatch = Command::new("/bin/netwatch")
        .args(["trace", "--events", "--interval", "1s", "--duration", "150"])
        .args(["--output", TRACE])
        .env("PATH", "/bin")
        .stdin(Stdio::null())
        .stdout(fs::File::create("/netwatch.stdout")?)
        .stderr(fs::File::create(STDERR)?)
        .spawn()
        .context("starting /bin/netwatch")?;
    if !wait_attached(&mut netwatch)? {
        let status = netwatch.wait()?;
        log.say(format!(
            "netwatch exited before tracing, after {:.1} s ({status})",
            started.elapsed().as_secs_f64()
        ));
        return Ok(status.code());
    }
    log.say(format!(
        "attached in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let t0 = Instant::now();
    for (name, result) in scenarios() {
        match result {
            Ok(what) => log.say(format!("ok {name}: {what}")),
            Err(e) => log.say(format!("warning: scenario {name}: {e:#}")),
        }
    }
    log.say(format!(
        "scenarios took {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    // One more interval for its alerts (the orphan's death is already past).
    thread::sleep(Duration::from_millis(1200));
    let code = stop(&mut netwatch, log)?;
    match overhead::measure(log) {
        Ok(line) => log.say(line),
        Err(e) => log.say(format!("warning: overhead: {e:#}")),
    }
    let after = netstat()?;
    let delta = |k: &str| {
        let get = |m: &[(String, i64)]| m.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
        get(&after) - get(&before)
    };
    log.say(format!(
        "netstat deltas: ListenOverflows {} TCPTimeWaitOverflow {} TWKilled {} TWRecycled {} \
         TCPSynRetrans {}",
        delta("ListenOverflows"),
        delta("TCPTimeWaitOverflow"),
        delta("TWKilled"),
        delta("TWRecycled"),
        delta("TCPSynRetrans")
    ));
    Ok(code)
}

fn mount_all(log: &mut Log) -> Result<()> {
    for (fs_type, target, required) in [
        ("proc", "/proc", true),
        ("sysfs", "/sys", true),
        ("devtmpfs", "/dev", true),
        ("bpf", "/sys/fs/bpf", false),
        ("tracefs", "/sys/kernel/tracing", false),
    ] {
        if let Err(e) = mount(fs_type, target) {
            if required {
                return Err(e);
            }
            log.say(format!("warning: {e:#}"));
        }
    }
    Ok(())
}

fn mount(fs_type: &str, target: &str) -> Result<()> {
    let _ = fs::create_dir_all(target);
    let (src, ty, dst) = (
        CString::new(fs_type)?,
        CString::new(fs_type)?,
        CString::new(target)?,
    );
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "mount -t {fs_type} {target}: {}",
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// insmod in the order the host wrote (dependencies first); a failure is logged, and netwatch
/// then says what it lacks.
fn load_modules(log: &mut Log) {
    let order = fs::read_to_string("/modules/order").unwrap_or_default();
    for m in order.lines().filter(|l| !l.is_empty()) {
        if let Err(e) = busybox(&["insmod", m]) {
            log.say(format!("warning: insmod {m}: {e:#}"));
        }
    }
}

fn busybox(args: &[&str]) -> Result<()> {
    let out = Command::new(BUSYBOX).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(format!("/proc/sys/{path}"), value).with_context(|| format!("sysctl {path}={value}"))
}

/// Whether netwatch will find conntrack's allocator: kptr_restrict 2 would hide addresses
/// even from root, and netwatch would then say conntrack lifetimes are unavailable.
fn conntrack_visibility() -> String {
    let restrict = fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default();
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let shown = netfilter::kallsyms_has(&kallsyms, "__nf_conntrack_alloc");
    format!(
        "kptr_restrict {}; __nf_conntrack_alloc {} in /proc/kallsyms",
        restrict.trim(),
        if shown { "has an address" } else { "NOT shown" }
    )
}

/// One loopback connection before anything runs. The first connections flip the kernel's
/// once-only static keys (the hash secrets behind inet_ehashfn); patching that code while
/// the other vCPU runs it was seen to oops 6.12 under multi-threaded TCG, so it is done
/// here, with one vCPU busy and netwatch not yet started.
fn warm_up() -> Result<()> {
    let listener = listen_backlog(local(WARM_UP), 1)?;
    let (client, server) = connection(&listener, WARM_UP)?;
    drop(client);
    drop(server);
    Ok(())
}

/// TcpExt counters by name.
fn netstat() -> Result<Vec<(String, i64)>> {
    Ok(parse_netstat(&fs::read_to_string("/proc/net/netstat")?))
}

/// /proc/net/netstat: pairs of lines, names then values, each led by `TcpExt:` or `IpExt:`.
fn parse_netstat(text: &str) -> Vec<(String, i64)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            for (n, v) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                out.push((n.to_owned(), v.parse().unwrap_or(0)));
            }
        }
    }
    out
}

/// True once netwatch says on stderr that it is attached, or its trace has a first snapshot
/// (either will do, so a reworded message costs at most a second); false when netwatch
/// exits first.
fn wait_attached(netwatch: &mut Child) -> Result<bool> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while Instant::now() < deadline {
        if netwatch.try_wait()?.is_some() {
            return Ok(false);
        }
        let said = fs::read_to_string(STDERR).is_ok_and(|e| e.contains("netwatch: attached"));
        if said || fs::read_to_string(TRACE).is_ok_and(|t| t.contains(r#""type":"snapshot""#)) {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = netwatch.kill();
    bail!("netwatch did not attach within {ATTACH_TIMEOUT:?}")
}

/// SIGINT (a clean stop: last snapshot and summary), SIGKILL if it does not end in 30 s.
pub(crate) fn stop(netwatch: &mut Child, log: &mut Log) -> Result<Option<i32>> {
    let pid = i32::try_from(netwatch.id())?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = netwatch.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            log.say("warning: netwatch ignored SIGINT for 30 s; killed".into());
            let _ = netwatch.kill();
            let _ = netwatch.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

type Scenario = fn() -> Result<String>;

/// Runs the scenarios side by side (each is mostly waiting), returning each one's outcome.
fn scenarios() -> Vec<(&'static str, Result<String>)> {
    let all: [(&'static str, Scenario); 7] = [
        ("orphan FIN_WAIT2 dies", orphan_dies),
        ("orphan FIN_WAIT2 turns TIME_WAIT", orphan_to_time_wait),
        ("TIME_WAIT killed by a SYN", time_wait_killed),
        ("refused connect", refused),
        ("SYN-ACK retransmit", synack_retransmit),
        ("full backlog", full_backlog),
        (
            "conntrack lifetimes, then netfilter drops",
            netfilter::scenarios,
        ),
    ];
    let handles: Vec<_> = all
        .iter()
        .map(|&(name, f)| (name, thread::spawn(f)))
        .collect();
    handles
        .into_iter()
        .map(|(name, h)| {
            (
                name,
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the scenario panicked"))),
            )
        })
        .collect()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A connection on `port`, both ends: (client, server side).
fn connection(listener: &TcpListener, port: u16) -> Result<(TcpStream, TcpStream)> {
    let client = connect_timeout(local(port), IO)?;
    let (server, _) = accept_timeout(listener, IO)?;
    Ok((client, server))
}

/// The client closes first and the server never answers with its FIN: the orphan lives
/// tcp_fin_timeout as a timewait socket in FIN_WAIT2, then dies.
///
/// Three of them: when the ACK of the orphan's FIN is processed from the socket's backlog
/// while close() still owns it, the kernel keeps the full socket in FIN_WAIT2 and kills it
/// at the timeout without any timewait socket (seen once on 7.3 under CI's timing), which
/// netwatch reports as such; the check wants one that took the timewait path.
fn orphan_dies() -> Result<String> {
    const ORPHANS: usize = 3;
    let listener = listen_backlog(local(ORPHAN_DIES), 8)?;
    let mut servers = Vec::new();
    for _ in 0..ORPHANS {
        let (client, server) = connection(&listener, ORPHAN_DIES)?;
        drop(client);
        servers.push(server);
    }
    thread::sleep(Duration::from_secs(FIN_TIMEOUT_S) + Duration::from_millis(1200));
    drop(servers);
    Ok(format!(
        "{ORPHANS} orphans left to their {FIN_TIMEOUT_S} s fin timeout"
    ))
}

/// The client closes first, the server closes 300 ms later: its FIN turns the orphan's
/// timewait socket from FIN_WAIT2 into TIME_WAIT.
fn orphan_to_time_wait() -> Result<String> {
    let listener = listen_backlog(local(ORPHAN_TO_TIME_WAIT), 8)?;
    let (client, mut server) = connection(&listener, ORPHAN_TO_TIME_WAIT)?;
    drop(client);
    read_to_eof(&mut server, IO)?;
    thread::sleep(Duration::from_millis(300));
    drop(server);
    Ok("server closed 300 ms after the orphan".into())
}

/// The server closes first (its socket goes TIME_WAIT); the client reconnects from the same
/// port 500 ms later, and the SYN on the same 4-tuple kills the TIME_WAIT socket early.
fn time_wait_killed() -> Result<String> {
    let listener = listen_backlog(local(TIME_WAIT_KILLED), 8)?;
    let from = local(TIME_WAIT_KILLED_CLIENT);
    let mut client = connect_bound(from, local(TIME_WAIT_KILLED), IO)?;
    let (server, _) = accept_timeout(&listener, IO)?;
    drop(server);
    read_to_eof(&mut client, IO)?;
    drop(client);
    thread::sleep(Duration::from_millis(500));
    let again = connect_bound(from, local(TIME_WAIT_KILLED), IO)
        .context("reconnecting from the same port onto the TIME_WAIT socket")?;
    let (server, _) = accept_timeout(&listener, IO)?;
    drop(again);
    drop(server);
    Ok("reconnected onto the server's TIME_WAIT".into())
}

fn refused() -> Result<String> {
    match connect_timeout(local(REFUSED), IO) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok("refused".into()),
        Err(e) => bail!("expected ECONNREFUSED, got {e}"),
        Ok(_) => bail!("connected to port {REFUSED}, which has no listener"),
    }
}

/// TCP_DEFER_ACCEPT makes the server ignore the bare final ACK: the request socket stays.
/// The kernel resends the SYN-ACK only at the end of the deferring period (1 s here: one
/// SYN-ACK timeout; a longer period resends later, 5 s at +7 s), and the client's ACK of
/// that resend completes the handshake; its data follows at 2 s.
fn synack_retransmit() -> Result<String> {
    let listener = listen_backlog(local(SYNACK_RETRANSMIT), 8)?;
    defer_accept(&listener, 1)?;
    let mut client = connect_timeout(local(SYNACK_RETRANSMIT), IO)?;
    thread::sleep(Duration::from_secs(2));
    client.write_all(b"x")?;
    let (mut server, _) = accept_timeout(&listener, IO)?;
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte)?;
    Ok("deferred handshake completed, data after 2 s".into())
}

/// Backlog 1, never accepting, with deferred accept so several request sockets wait at once;
/// when all their clients send, the accept queue (2 children) overflows and the later final
/// segments are dropped (TCP_LISTEN_OVERFLOW on kernels that name it).
fn full_backlog() -> Result<String> {
    const CLIENTS: usize = 5;
    let listener = listen_backlog(local(BACKLOG), 1)?;
    defer_accept(&listener, 5)?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        // A SYN refused by a full queue is retried by the kernel; connect() may time out.
        if let Ok(c) = connect_timeout(local(BACKLOG), Duration::from_millis(300)) {
            clients.push(c);
        }
    }
    for c in &mut clients {
        let _ = c.write_all(b"y");
    }
    thread::sleep(Duration::from_millis(1500));
    let n = clients.len();
    drop(clients);
    drop(listener);
    Ok(format!(
        "{n} of {CLIENTS} clients connected to a backlog of 1"
    ))
}

fn defer_accept(listener: &TcpListener, secs: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt with a valid descriptor and a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// Sends the results on the raw second serial port.
fn send(log: &Log, exit: Option<i32>) -> Result<()> {
    let mut tty = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ttyS1")
        .context("opening /dev/ttyS1")?;
    raw_mode(&tty)?;
    let read = |p: &str| fs::read(p).unwrap_or_default();
    let stdout = read("/netwatch.stdout");
    // --events prints every transition; the tail is enough to read by eye.
    let stdout_tail = &stdout[stdout.len().saturating_sub(32 * 1024)..];
    let mut guest_log = log.0.join("\n");
    guest_log.push('\n');
    let exit_text = exit.map(|c| c.to_string()).unwrap_or_default();
    for (name, data) in [
        ("guest.log", guest_log.as_bytes()),
        ("netwatch.exit", exit_text.as_bytes()),
        ("netwatch.stderr", &read(STDERR)[..]),
        ("netwatch.stdout", stdout_tail),
        ("trace.jsonl", &read(TRACE)[..]),
    ] {
        if name == "netwatch.exit" && exit.is_none() {
            continue;
        }
        writeln!(tty, "NWVM {name} {}", data.len())?;
        tty.write_all(data)?;
        tty.write_all(b"\n")?;
    }
    tty.write_all(b"NWVM-END\n")?;
    tty.flush()?;
    // SAFETY: tcdrain on an open tty: returns once every byte has left.
    unsafe { libc::tcdrain(tty.as_raw_fd()) };
    Ok(())
}

/// No newline translation or echo: the frames' lengths must hold byte for byte.
fn raw_mode(tty: &fs::File) -> Result<()> {
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(tty.as_raw_fd(), &mut t) != 0 {
            bail!("tcgetattr ttyS1: {}", io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        libc::cfsetspeed(&mut t, libc::B115200);
        if libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            bail!("tcsetattr ttyS1: {}", io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counters_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows TWKilled\nTcpExt: 0 11 2\n\
                    IpExt: InNoRoutes\nIpExt: 7\n";
        assert_eq!(
            parse_netstat(text),
            [
                ("SyncookiesSent".to_owned(), 0),
                ("ListenOverflows".to_owned(), 11),
                ("TWKilled".to_owned(), 2),
                ("InNoRoutes".to_owned(), 7)
            ]
        );
    }
}
