//! Accuracy of netwatch's timing fields against ground truth the tests control: kernel
//! timers set through sysctls, packets dropped for a known time, an application that holds a
//! socket for a known time, and a burst of connections counted exactly. Root only (see
//! `netwatch_tests::require_root`); run with `sudo cargo xtask test`.
//!
//! Every test makes its own "client" and "server" namespaces and filters netwatch to them, so
//! the tests can run in parallel and the machine's other TCP traffic never shows up. Times are
//! compared in CLOCK_MONOTONIC, the clock of netwatch's `mono_ns` (`bpf_ktime_get_ns`), so the
//! test's own clock readings bracket the kernel's events.
//!
//! Timer slack: the kernel's timer wheel rounds a timeout up to its level's granularity, so a
//! timer fires a little after its nominal time, never before it. With HZ=250 (these
//! machines) that is up to 256 ms for 2-16 s timeouts and up to 2.05 s for 16-131 s ones.
//! Seen here: a 3 s `tcp_fin_timeout` -> 3.12-3.23 s, TIME_WAIT 60 s -> 60.5-62.0 s, the
//! SYN-ACK retransmits (+1 s, +2 s) -> child at +3.02-3.05 s.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::expected;
use netwatch_tests::records::{dump, dump_refs, of_sock, sock_id_between};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tracer::SETTLE;
use netwatch_tests::{
    in_netns, require_root, spawn_in_netns, transitions, Netns, TestNet, Tracer, Transition,
};
use serde_json::Value;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// CLOCK_MONOTONIC now, in ns: the clock of netwatch's `mono_ns`.
fn mono_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * SEC + ts.tv_nsec as u64
}

fn secs(ns: u64) -> f64 {
    ns as f64 / SEC as f64
}

/// Seconds, signed, between two mono_ns values (`b - a`), for messages.
fn delta(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / SEC as f64
}

/// A tracer filtered to the test's two namespaces.
fn start_tracer(net: &TestNet) -> Result<Tracer> {
    let client = net.client.inode().to_string();
    let server = net.server.inode().to_string();
    Tracer::start(&["--netns", &client, "--netns", &server])
        .with_context(|| format!("netwatch trace --netns {client} --netns {server}"))
}

/// A listener on `addr` in `ns`.
fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind(addr))?
        .with_context(|| format!("bind {addr} in {}", ns.name()))
}

/// A connection from `ns` to `addr`.
fn connect_from(ns: &Netns, addr: SocketAddr) -> Result<TcpStream> {
    in_netns(ns, || connect_timeout(addr, IO_TIMEOUT))?
        .with_context(|| format!("connect to {addr} from {}", ns.name()))
}

fn is_timewait(t: &Transition) -> bool {
    t.raw.get("timewait").and_then(Value::as_bool) == Some(true)
}

fn opt_u64(t: &Transition, name: &str) -> Option<u64> {
    t.raw.get(name).and_then(Value::as_u64)
}

/// The one record of `recs` going `old -> new`.
fn the<'a>(recs: &[&'a Transition], old: &str, new: &str) -> Result<&'a Transition> {
    let hits: Vec<&Transition> = recs
        .iter()
        .copied()
        .filter(|t| t.states() == (old, new))
        .collect();
    match hits.as_slice() {
        [t] => Ok(t),
        [] => bail!("no {old} -> {new} record in:\n{}", dump_refs(recs)),
        _ => bail!("several {old} -> {new} records in:\n{}", dump_refs(recs)),
    }
}

fn dwell(t: &Transition) -> Result<u64> {
    t.dwell_ns
        .with_context(|| format!("{} -> {} has dwell_ns null: {}", t.old, t.new, t.raw))
}

/// Err unless `got_ns` is in `[lo_ns, hi_ns]`.
fn check_range(
    what: &str,
    got_ns: u64,
    lo_ns: u64,
    hi_ns: u64,
    recs: &[&Transition],
) -> Result<()> {
    ensure!(
        (lo_ns..=hi_ns).contains(&got_ns),
        "{what}: {:.4} s, expected [{:.4} s, {:.4} s]; records:\n{}",
        secs(got_ns),
        secs(lo_ns),
        secs(hi_ns),
        dump_refs(recs)
    );
    Ok(())
}

/// Err unless `a` and `b` differ by at most `tol_ns`.
fn check_close(what: &str, a: u64, b: u64, tol_ns: u64, recs: &[&Transition]) -> Result<()> {
    ensure!(
        a.abs_diff(b) <= tol_ns,
        "{what}: {:.6} s vs {:.6} s differ by {:.6} s (> {:.6} s); records:\n{}",
        secs(a),
        secs(b),
        secs(a.abs_diff(b)),
        secs(tol_ns),
        dump_refs(recs)
    );
    Ok(())
}

/// Err unless the socket's `(old, new)` sequence is exactly `want`.
fn check_seq(what: &str, recs: &[&Transition], want: &[(&str, &str)]) -> Result<()> {
    let got: Vec<(&str, &str)> = recs.iter().map(|t| t.states()).collect();
    ensure!(
        got == want,
        "{what}: expected {want:?}\n got {got:?}\n{}",
        dump_refs(recs)
    );
    Ok(())
}

/// Scenario 1: an orphaned FIN_WAIT2 whose peer never closes lives `tcp_fin_timeout`.
///
/// With `net.ipv4.tcp_fin_timeout=3` in the client namespace, the client closes first and the
/// server keeps its socket open (CLOSE_WAIT, no FIN ever). When the server's ACK of the FIN
/// arrives the orphan enters FIN_WAIT2 and the kernel replaces it by a timewait socket with
/// substate FIN_WAIT2 and a 3 s timer (no record at that hand-over); when that dies netwatch
/// reports `FIN_WAIT2 -> CLOSE`, `timewait: true`, dwell = time since entering FIN_WAIT2.
#[test]
fn orphaned_fin_wait2_lives_fin_timeout() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const FIN_TIMEOUT_S: u64 = 3;
    let net = TestNet::new("fw2")?;
    net.client
        .sysctl("net.ipv4.tcp_fin_timeout", &FIN_TIMEOUT_S.to_string())?;
    ensure!(net.client.sysctl_get("net.ipv4.tcp_fin_timeout")? == FIN_TIMEOUT_S.to_string());
    let server_addr = SocketAddr::new(net.server_v4().into(), 8001);
    let tracer = start_tracer(&net)?;
    let listener = listen_in(&net.server, server_addr)?;

    let client = connect_from(&net.client, server_addr)?;
    let (server_sock, _) = accept_timeout(&listener, IO_TIMEOUT).context("accept")?;
    let client_local = client.local_addr()?;
    let t_close = mono_now();
    drop(client);

    let ended = |ts: &[Transition]| -> bool {
        sock_id_between(ts, client_local, server_addr).is_ok_and(|id| {
            of_sock(ts, id)
                .iter()
                .any(|t| t.states() == ("FIN_WAIT2", "CLOSE"))
        })
    };
    let seen = tracer.wait_for(Duration::from_secs(8), |r: &[Value]| {
        transitions(r).is_ok_and(|ts| ended(&ts))
    });
    let t_seen = mono_now();
    thread::sleep(SETTLE);
    let out = tracer.stop()?;
    // The server held its socket open until now: the client's FIN_WAIT2 never saw a FIN.
    drop(server_sock);
    drop(listener);
    out.check_no_loss()?;
    let ts = transitions(&out.records)?;
    ensure!(
        seen,
        "no FIN_WAIT2 -> CLOSE within 8 s of close() (tcp_fin_timeout {FIN_TIMEOUT_S} s); \
         records:\n{}",
        dump(&ts)
    );

    let id = sock_id_between(&ts, client_local, server_addr)?;
    let recs = of_sock(&ts, id);
    check_seq(
        "orphaned client socket",
        &recs,
        &[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
        ],
    )?;
    let fw2 = the(&recs, "FIN_WAIT1", "FIN_WAIT2")?;
    let end = the(&recs, "FIN_WAIT2", "CLOSE")?;
    let d = dwell(end)?;
    // Both paths are legal: the timewait socket (usual) or a full FIN_WAIT2 socket kept by
    // its keepalive timer (when the ACK raced with the socket's owner).
    let path = if is_timewait(end) {
        "timewait socket"
    } else {
        "full socket"
    };
    eprintln!(
        "orphaned FIN_WAIT2 ({path}): dwell {:.4} s (tcp_fin_timeout {FIN_TIMEOUT_S} s), \
         close() -> FIN_WAIT2 {:.4} s, seen {:.4} s after close()",
        secs(d),
        delta(t_close, fw2.mono_ns),
        delta(t_close, t_seen)
    );
    // 3 s within 10 %. The timer wheel only ever fires late: up to 256 ms at HZ=250 (3.12-3.23 s
    // seen), so [3.0 s, 3.26 s] is what the kernel can do, inside the 10 % window.
    check_range(
        "FIN_WAIT2 dwell",
        d,
        FIN_TIMEOUT_S * SEC * 9 / 10,
        FIN_TIMEOUT_S * SEC * 11 / 10,
        &recs,
    )?;
    // The dwell is measured from entering FIN_WAIT2 and ends at the record's own time.
    check_close(
        "FIN_WAIT2 dwell vs its records' mono_ns",
        d,
        end.mono_ns - fw2.mono_ns,
        MS,
        &recs,
    )?;
    ensure!(
        fw2.mono_ns >= t_close && fw2.mono_ns - t_close < SEC,
        "FIN_WAIT2 entered {:.4} s after close(); records:\n{}",
        delta(t_close, fw2.mono_ns),
        dump_refs(&recs)
    );
    Ok(())
}

/// Reads one counter of `/proc/net/netstat` or `/proc/net/snmp` (e.g. `TcpExt`
/// `TCPSynRetrans`, `Tcp` `OutRsts`) in `ns`: both files have a header line and a value line
/// per group.
fn netstat_counter(ns: &Netns, group: &str, name: &str) -> Result<u64> {
    let file = if group.ends_with("Ext") {
        "/proc/net/netstat"
    } else {
        "/proc/net/snmp"
    };
    let text = ns.exec(&["cat", file])?;
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let [names, values] = lines.as_slice() else {
        bail!("no {group} header and value lines in {file}:\n{text}");
    };
    let at = names
        .split_whitespace()
        .position(|w| w == name)
        .with_context(|| format!("no {group} {name} in {file}"))?;
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no value for {group} {name} in {file}"))
}

/// `(packets, bytes)` counted by the one DROP rule on tcp port `port` in `ns`'s INPUT chain.
fn iptables_drop_counters(ns: &Netns, port: u16) -> Result<(u64, u64)> {
    let text = ns.exec(&["iptables", "-L", "INPUT", "-v", "-n", "-x"])?;
    let dpt = format!("dpt:{port}");
    let rules: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("DROP") && l.contains(&dpt))
        .collect();
    let [rule] = rules.as_slice() else {
        bail!("expected one DROP rule for {dpt} in:\n{text}");
    };
    let mut w = rule.split_whitespace();
    let pkts = w.next().and_then(|v| v.parse().ok());
    let bytes = w.next().and_then(|v| v.parse().ok());
    match (pkts, bytes) {
        (Some(p), Some(b)) => Ok((p, b)),
        _ => bail!("cannot read counters of {rule:?}"),
    }
}

/// Scenario 2: SYN_RECV lasts from the SYN to the final ACK that creates the child, with the
/// SYN-ACK retransmits counted, and the accept-queue wait reported apart.
///
/// The server namespace drops every incoming segment to the port with ACK set and SYN, FIN,
/// RST clear for 2.5 s from the client's connect(). The client sends nothing of its own: its
/// connect() returns at the SYN-ACK, and all it sends then are ACKs, the final one of the
/// handshake (dropped) and one answering each retransmitted SYN-ACK (+1 s: dropped; +3 s:
/// passes, the rule is gone). No data is written while the rule is there: a data segment
/// would complete the handshake too, or be retransmitted on the client's own RTO timer. The
/// rule's counters prove what was dropped: exactly two 52-byte segments (IP 20 + TCP 20 +
/// timestamps 12), i.e. pure ACKs.
///
/// The server accepts at +4 s, a second after the child appeared, so the record splits the
/// request socket's 4 s life into SYN_RECV ~3 s and accept wait ~1 s.
#[test]
fn syn_recv_with_final_ack_dropped() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8002;
    const DROP_FOR: Duration = Duration::from_millis(2500);
    const ACCEPT_AT: Duration = Duration::from_millis(4000);
    let net = TestNet::new("srd")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), PORT);
    let port = PORT.to_string();
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "--tcp-flags",
        "SYN,ACK,FIN,RST",
        "ACK",
        "-j",
        "DROP",
    ];
    let retrans_before = netstat_counter(&net.server, "TcpExt", "TCPSynRetrans")?;
    let tracer = start_tracer(&net)?;
    let listener = listen_in(&net.server, server_addr)?;
    net.server
        .exec(&[&["iptables", "-I"][..], &rule[..]].concat())
        .context("add the ACK-dropping rule")?;

    let t0 = Instant::now();
    let m0 = mono_now();
    let client = connect_from(&net.client, server_addr)?;
    let m_connected = mono_now();
    let client_local = client.local_addr()?;
    thread::sleep(DROP_FOR.saturating_sub(t0.elapsed()));
    let (dropped_pkts, dropped_bytes) = iptables_drop_counters(&net.server, PORT)?;
    net.server
        .exec(&[&["iptables", "-D"][..], &rule[..]].concat())
        .context("delete the ACK-dropping rule")?;
    let m_rule_gone = mono_now();
    thread::sleep(ACCEPT_AT.saturating_sub(t0.elapsed()));
    let m_accept = mono_now();
    let (server_sock, peer) = accept_timeout(&listener, Duration::from_millis(100))
        .context("accept: the child should be queued since ~3 s")?;
    let m_accepted = mono_now();
    ensure!(
        peer == client_local,
        "accepted {peer}, client is {client_local}"
    );
    let server_local = server_sock.local_addr()?;
    let retrans = netstat_counter(&net.server, "TcpExt", "TCPSynRetrans")? - retrans_before;

    let recorded = |ts: &[Transition]| -> bool {
        sock_id_between(ts, server_local, client_local)
            .is_ok_and(|id| of_sock(ts, id).iter().any(|t| t.old == "SYN_RECV"))
    };
    tracer.wait_for(Duration::from_secs(5), |r: &[Value]| {
        transitions(r).is_ok_and(|ts| recorded(&ts))
    });
    thread::sleep(SETTLE);
    let out = tracer.stop()?;
    drop(client);
    drop(server_sock);
    drop(listener);
    out.check_no_loss()?;
    let ts = transitions(&out.records)?;

    // What the test did to the packets, checked before judging netwatch.
    eprintln!(
        "SYN_RECV: rule dropped {dropped_pkts} packets / {dropped_bytes} bytes, \
         TCPSynRetrans +{retrans}, connect() took {:.4} s, rule removed at +{:.4} s, \
         accept() at +{:.4} s",
        delta(m0, m_connected),
        delta(m0, m_rule_gone),
        delta(m0, m_accept)
    );
    ensure!(
        dropped_pkts == 2 && dropped_bytes == 2 * 52,
        "the rule dropped {dropped_pkts} packets / {dropped_bytes} bytes, expected the final \
         ACK and the ACK answering the first SYN-ACK retransmit (2 x 52 bytes)"
    );
    ensure!(
        retrans == 2,
        "server's TCPSynRetrans grew by {retrans}, expected 2 (+1 s, +3 s)"
    );

    let child = sock_id_between(&ts, server_local, client_local).with_context(|| dump(&ts))?;
    let srecs = of_sock(&ts, child);
    let syn_recv = *srecs
        .first()
        .with_context(|| format!("no records of the child:\n{}", dump(&ts)))?;
    ensure!(
        syn_recv.states() == ("SYN_RECV", "ESTABLISHED"),
        "the child's first record is not SYN_RECV -> ESTABLISHED:\n{}",
        dump_refs(&srecs)
    );
    let d = dwell(syn_recv)?;
    let rtx = opt_u64(syn_recv, "synack_retransmits");
    let wait = opt_u64(syn_recv, "accept_wait_ns");
    let crecs = of_sock(&ts, sock_id_between(&ts, client_local, server_addr)?);
    let syn_sent = the(&crecs, "CLOSE", "SYN_SENT")?;
    let syn_at = syn_recv.mono_ns.saturating_sub(d);
    eprintln!(
        "SYN_RECV record: dwell {:.4} s, synack_retransmits {rtx:?}, accept_wait {:?} s, \
         SYN at +{:.4} s, child at +{:.4} s (client's SYN_SENT at +{:.4} s)",
        secs(d),
        wait.map(secs),
        delta(m0, syn_at),
        delta(m0, syn_recv.mono_ns),
        delta(m0, syn_sent.mono_ns)
    );
    let mut all = srecs.clone();
    all.extend(crecs.iter().copied());
    ensure!(
        rtx == Some(2),
        "synack_retransmits {rtx:?}, expected 2; records:\n{}",
        dump_refs(&all)
    );
    // SYN -> child: 3 s (SYN-ACK retransmits at +1 s and +3 s) within 10 %.
    check_range("SYN_RECV dwell", d, 2700 * MS, 3300 * MS, &all)?;
    // The dwell starts at the SYN: a few microseconds after the client's CLOSE -> SYN_SENT.
    check_close(
        "SYN arrival (child mono_ns - dwell) vs client's SYN_SENT",
        syn_at,
        syn_sent.mono_ns,
        10 * MS,
        &all,
    )?;
    // The child appears when the ACK gets through, after the rule is gone.
    ensure!(
        syn_recv.mono_ns > m_rule_gone && syn_recv.mono_ns < m_accept,
        "child created at +{:.4} s, expected between the rule's removal (+{:.4} s) and \
         accept() (+{:.4} s); records:\n{}",
        delta(m0, syn_recv.mono_ns),
        delta(m0, m_rule_gone),
        delta(m0, m_accept),
        dump_refs(&all)
    );
    // The accept-queue wait: child creation -> accept(), bracketed by the test's clock.
    let wait =
        wait.with_context(|| format!("SYN_RECV record has no accept_wait_ns: {}", syn_recv.raw))?;
    let accepted_at = syn_recv.mono_ns + wait;
    ensure!(
        accepted_at >= m_accept && accepted_at <= m_accepted + 5 * MS,
        "child + accept_wait_ns = +{:.4} s, but accept() ran in [+{:.4} s, +{:.4} s]; \
         records:\n{}",
        delta(m0, accepted_at),
        delta(m0, m_accept),
        delta(m0, m_accepted),
        dump_refs(&all)
    );
    Ok(())
}

/// How the client of a TIME_WAIT scenario closes first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ActiveClose {
    /// `shutdown(SHUT_WR)`, keeping the socket until the peer's FIN: FIN_WAIT2 is a full
    /// socket, and the FIN replaces it by a timewait socket in TIME_WAIT (the tracepoint
    /// shows `FIN_WAIT2 -> CLOSE`).
    Shutdown,
    /// close(): the orphan, once its FIN is acked, is replaced by a timewait socket with
    /// substate FIN_WAIT2 (timer `tcp_fin_timeout`, 60 s here); the peer's FIN turns that
    /// substate into TIME_WAIT and re-arms the timer to 60 s. No tracepoint fires for it.
    Orphan,
}

/// Scenario 3: a TIME_WAIT socket lives TCP_TIMEWAIT_LEN (60 s) from the peer's FIN, plus
/// timer-wheel slack: `FIN_WAIT2 -> TIME_WAIT` when the server's FIN arrives, then
/// `TIME_WAIT -> CLOSE` with `timewait: true` and dwell in [60 s, 66 s].
///
/// The client closes first (as `how` says); the server reads EOF, waits 1 s, and closes, so
/// the client's FIN_WAIT2 lasts ~1 s and TIME_WAIT starts at the server's close().
fn time_wait_scenario(tag: &str, port: u16, how: ActiveClose) -> Result<()> {
    const SERVER_DELAY: Duration = Duration::from_secs(1);
    let net = TestNet::new(tag)?;
    let server_addr = SocketAddr::new(net.server_v4().into(), port);
    let tracer = start_tracer(&net)?;
    let listener = listen_in(&net.server, server_addr)?;

    let client = connect_from(&net.client, server_addr)?;
    let (mut server_sock, _) = accept_timeout(&listener, IO_TIMEOUT).context("accept")?;
    let client_local = client.local_addr()?;
    let m_close = mono_now();
    let kept = match how {
        ActiveClose::Shutdown => {
            client.shutdown(Shutdown::Write)?;
            Some(client)
        }
        ActiveClose::Orphan => {
            drop(client);
            None
        }
    };
    let data = read_to_eof(&mut server_sock, IO_TIMEOUT).context("server read to EOF")?;
    ensure!(data.is_empty(), "server read {data:?}");
    thread::sleep(SERVER_DELAY);
    let m_server_close = mono_now();
    drop(server_sock);
    drop(listener);
    if let Some(mut c) = kept {
        let data = read_to_eof(&mut c, IO_TIMEOUT).context("client read to EOF")?;
        ensure!(data.is_empty(), "client read {data:?}");
        // Already replaced by its timewait socket: closing it changes no state.
        drop(c);
    }

    let dead = |ts: &[Transition]| -> bool {
        sock_id_between(ts, client_local, server_addr)
            .is_ok_and(|id| of_sock(ts, id).iter().any(|t| t.old == "TIME_WAIT"))
    };
    let seen = tracer.wait_for(Duration::from_secs(80), |r: &[Value]| {
        transitions(r).is_ok_and(|ts| dead(&ts))
    });
    let m_seen = mono_now();
    thread::sleep(SETTLE);
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let ts = transitions(&out.records)?;
    ensure!(
        seen,
        "no TIME_WAIT -> CLOSE within 80 s of the server's FIN; records:\n{}",
        dump(&ts)
    );

    let id = sock_id_between(&ts, client_local, server_addr)?;
    let recs = of_sock(&ts, id);
    if let Some(end) = recs.iter().find(|t| t.old == "TIME_WAIT") {
        eprintln!(
            "TIME_WAIT ({how:?}): the timewait socket died {:.4} s after the server's close() \
             (TIME_WAIT -> CLOSE dwell {:?} s); record seen {:.4} s after it",
            delta(m_server_close, end.mono_ns),
            end.dwell_ns.map(secs),
            delta(m_server_close, m_seen)
        );
    }
    let mut want = expected::client_active_close_client();
    want.push(("TIME_WAIT".to_owned(), "CLOSE".to_owned()));
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    check_seq(&format!("client socket ({how:?})"), &recs, &want)?;
    let fw2 = the(&recs, "FIN_WAIT1", "FIN_WAIT2")?;
    let tw = the(&recs, "FIN_WAIT2", "TIME_WAIT")?;
    let end = the(&recs, "TIME_WAIT", "CLOSE")?;
    let (d_fw2, d_tw) = (dwell(tw)?, dwell(end)?);
    eprintln!(
        "TIME_WAIT ({how:?}): FIN_WAIT2 dwell {:.4} s (server waited {:.3} s), TIME_WAIT \
         dwell {:.4} s, entered TIME_WAIT {:.6} s after the server's close()",
        secs(d_fw2),
        SERVER_DELAY.as_secs_f64(),
        secs(d_tw),
        delta(m_server_close, tw.mono_ns),
    );
    ensure!(
        is_timewait(end),
        "TIME_WAIT -> CLOSE lacks \"timewait\":true: {}",
        end.raw
    );
    check_range("TIME_WAIT dwell", d_tw, 60 * SEC, 66 * SEC, &recs)?;
    check_close(
        "TIME_WAIT dwell vs its records' mono_ns",
        d_tw,
        end.mono_ns - tw.mono_ns,
        MS,
        &recs,
    )?;
    // TIME_WAIT starts at the server's FIN, which leaves with its close().
    ensure!(
        tw.mono_ns >= m_server_close && tw.mono_ns - m_server_close < 100 * MS,
        "FIN_WAIT2 -> TIME_WAIT at {:.4} s after the server's close(); records:\n{}",
        delta(m_server_close, tw.mono_ns),
        dump_refs(&recs)
    );
    // FIN_WAIT2 lasted from the ACK of the client's FIN to the server's FIN: the server's 1 s
    // (its ACK of the FIN may be delayed by up to ~200 ms: pingpong mode after a FIN).
    check_range("FIN_WAIT2 dwell", d_fw2, 750 * MS, 1100 * MS, &recs)?;
    check_close(
        "FIN_WAIT2 dwell vs its records' mono_ns",
        d_fw2,
        tw.mono_ns - fw2.mono_ns,
        MS,
        &recs,
    )?;
    ensure!(fw2.mono_ns >= m_close, "FIN_WAIT2 before close()");
    Ok(())
}

/// Scenario 3, full-socket path: the client keeps its socket (shutdown) until the FIN.
#[test]
fn time_wait_lives_sixty_seconds_full_socket() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    time_wait_scenario("twf", 8003, ActiveClose::Shutdown)
}

/// Scenario 3, orphan path: the client's FIN_WAIT2 is already a timewait socket when the
/// server's FIN arrives.
#[test]
fn time_wait_lives_sixty_seconds_after_orphan_fin_wait2() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    time_wait_scenario("two", 8006, ActiveClose::Orphan)
}

/// Scenario 4: CLOSE_WAIT lasts as long as the application waits before close().
///
/// The client closes; the server reads EOF (the FIN put it in CLOSE_WAIT), sleeps 2 s, and
/// closes: `CLOSE_WAIT -> LAST_ACK` with dwell 2 s, at the time of the server's close().
#[test]
fn close_wait_lasts_until_close() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const HOLD: Duration = Duration::from_secs(2);
    let net = TestNet::new("cw")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), 8004);
    let tracer = start_tracer(&net)?;
    let listener = listen_in(&net.server, server_addr)?;

    let client = connect_from(&net.client, server_addr)?;
    let (mut server_sock, peer) = accept_timeout(&listener, IO_TIMEOUT).context("accept")?;
    let server_local = server_sock.local_addr()?;
    let m_client_close = mono_now();
    drop(client);
    let data = read_to_eof(&mut server_sock, IO_TIMEOUT).context("server read to EOF")?;
    ensure!(data.is_empty(), "server read {data:?}");
    let m_eof = mono_now();
    thread::sleep(HOLD);
    let m_close = mono_now();
    drop(server_sock);
    let m_closed = mono_now();
    drop(listener);

    let done = |ts: &[Transition]| -> bool {
        sock_id_between(ts, server_local, peer)
            .is_ok_and(|id| of_sock(ts, id).iter().any(|t| t.old == "LAST_ACK"))
    };
    tracer.wait_for(Duration::from_secs(5), |r: &[Value]| {
        transitions(r).is_ok_and(|ts| done(&ts))
    });
    thread::sleep(SETTLE);
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let ts = transitions(&out.records)?;

    let id = sock_id_between(&ts, server_local, peer).with_context(|| dump(&ts))?;
    let recs = of_sock(&ts, id);
    let want = expected::client_active_close_server();
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    check_seq("accepted socket", &recs, &want)?;
    let cw = the(&recs, "ESTABLISHED", "CLOSE_WAIT")?;
    let la = the(&recs, "CLOSE_WAIT", "LAST_ACK")?;
    let d = dwell(la)?;
    eprintln!(
        "CLOSE_WAIT: dwell {:.4} s (application held {:.4} s from EOF to close()), FIN \
         arrived {:.6} s after the client's close(), LAST_ACK {:.6} s after the server's",
        secs(d),
        delta(m_eof, m_close),
        delta(m_client_close, cw.mono_ns),
        delta(m_close, la.mono_ns)
    );
    check_range(
        "CLOSE_WAIT dwell",
        d,
        HOLD.as_nanos() as u64 * 9 / 10,
        HOLD.as_nanos() as u64 * 11 / 10,
        &recs,
    )?;
    // Exactly the application's wait: from the FIN (just before read() saw EOF) to close().
    ensure!(
        cw.mono_ns >= m_client_close && cw.mono_ns <= m_eof,
        "CLOSE_WAIT entered at {:+.6} s from the client's close(), EOF read at {:+.6} s",
        delta(m_client_close, cw.mono_ns),
        delta(m_client_close, m_eof)
    );
    ensure!(
        la.mono_ns >= m_close && la.mono_ns <= m_closed,
        "LAST_ACK entered at {:+.6} s from the server's close() call, which returned at \
         {:+.6} s",
        delta(m_close, la.mono_ns),
        delta(m_close, m_closed)
    );
    check_close(
        "CLOSE_WAIT dwell vs its records' mono_ns",
        d,
        la.mono_ns - cw.mono_ns,
        MS,
        &recs,
    )?;
    Ok(())
}

/// The kernel's count of TIME_WAIT sockets in `ns` (`ss state time-wait`; timewait sockets
/// report their substate), read until two reads 200 ms apart agree (bounded by `timeout`).
fn time_wait_count(ns: &Netns, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let n = ns
            .exec(&["ss", "-Htan", "state", "time-wait"])?
            .lines()
            .count();
        if last == Some(n) || Instant::now() >= deadline {
            return Ok(n);
        }
        last = Some(n);
        thread::sleep(Duration::from_millis(200));
    }
}

/// Scenario 5: a burst of 1,000 connections, each closed by the client, counted exactly, with
/// nothing lost.
///
/// The client connects and closes at once, sequentially; the server accepts, reads EOF and
/// closes each. The client stays at most `WINDOW` connections ahead of the server's
/// accept(), below the listener's backlog (128), so no SYN or final ACK is ever dropped for
/// a full accept queue (which would add retransmits, not records, but slow the burst).
///
/// The client's sockets reach TIME_WAIT by both paths: the server's FIN arriving together
/// with its ACK of the client's FIN (full socket -> TIME_WAIT), or after a separate delayed
/// ACK (the orphan is already a timewait socket in FIN_WAIT2 when the FIN comes).
///
/// Seen here, under load (other tests running): a few timewait sockets (0-22 of 1,000) are
/// killed 10-250 us after entering TIME_WAIT. The server's delayed ACK and its FIN+ACK cross on the veth
/// (two CPUs), the stale ACK reaches the timewait socket, which answers with an ACK; the
/// server's child is gone by then, so the listener answers with a RST (server `Tcp OutRsts`
/// grows by exactly that number) and the RST kills the timewait socket (`tcp_rfc1337` = 0).
/// That is real: the test takes the kernel's own count of surviving TIME_WAIT sockets (`ss`)
/// as ground truth and requires netwatch to report exactly the killed ones as
/// `TIME_WAIT -> CLOSE`.
#[test]
fn burst_of_connections_counted_exactly() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const N: usize = 1000;
    const WINDOW: usize = 64;
    let net = TestNet::new("burst")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), 8005);
    let tracer = start_tracer(&net)?;
    let listener = listen_in(&net.server, server_addr)?;
    let rsts_before = netstat_counter(&net.server, "Tcp", "OutRsts")?;

    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<()>();
    let server = spawn_in_netns(&net.server, move || -> Result<()> {
        for i in 0..N {
            let (mut s, _) =
                accept_timeout(&listener, IO_TIMEOUT).with_context(|| format!("accept #{i}"))?;
            let _ = tx.send(());
            let data =
                read_to_eof(&mut s, IO_TIMEOUT).with_context(|| format!("read to EOF #{i}"))?;
            ensure!(data.is_empty(), "server read {data:?} on #{i}");
        }
        drop(listener);
        Ok(())
    })?;
    let client = in_netns(&net.client, move || -> Result<Vec<SocketAddr>> {
        let mut locals = Vec::with_capacity(N);
        for i in 0..N {
            if i >= WINDOW {
                rx.recv_timeout(IO_TIMEOUT)
                    .with_context(|| format!("server did not accept #{}", i - WINDOW))?;
            }
            let c = connect_timeout(server_addr, IO_TIMEOUT)
                .with_context(|| format!("connect #{i} to {server_addr}"))?;
            locals.push(c.local_addr()?);
        }
        Ok(locals)
    });
    let server = server.join();
    let locals = client??;
    server??;
    let burst_time = t0.elapsed();

    let (client_ns, server_ns) = (net.client.inode(), net.server.inode());
    let count = |ts: &[Transition], ns: u64, old: &str, new: &str| -> usize {
        ts.iter()
            .filter(|t| t.netns == ns && t.states() == (old, new))
            .count()
    };
    let complete = |ts: &[Transition]| -> bool {
        count(ts, client_ns, "FIN_WAIT2", "TIME_WAIT") >= N
            && count(ts, server_ns, "LAST_ACK", "CLOSE") >= N
    };
    tracer.wait_for(Duration::from_secs(15), |r: &[Value]| {
        transitions(r).is_ok_and(|ts| complete(&ts))
    });
    thread::sleep(SETTLE);
    // Ground truth from the kernel, well within the 60 s the timewait sockets live.
    let tw_alive = time_wait_count(&net.client, Duration::from_secs(3))?;
    let rsts = netstat_counter(&net.server, "Tcp", "OutRsts")? - rsts_before;
    let out = tracer.stop()?;
    let ts = transitions(&out.records)?;
    let killed = N.saturating_sub(tw_alive);
    eprintln!(
        "burst: {N} connections in {:.3} s, {} transition records; the kernel holds \
         {tw_alive} TIME_WAIT sockets ({killed} killed early), server sent {rsts} RSTs; \
         tracer: {:?}",
        burst_time.as_secs_f64(),
        ts.len(),
        out.stderr.lines().rev().find(|l| l.contains("lost"))
    );
    out.check_no_loss()?;
    let mut distinct = locals.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(distinct.len() == N, "client local addresses repeat");
    ensure!(
        tw_alive <= N,
        "the client namespace holds {tw_alive} TIME_WAIT sockets, more than the {N} made"
    );

    // Exact counts of records, and of distinct sockets having them.
    let checks = [
        ("client", client_ns, "CLOSE", "SYN_SENT", N),
        ("server", server_ns, "SYN_RECV", "ESTABLISHED", N),
        ("client", client_ns, "FIN_WAIT2", "TIME_WAIT", N),
        ("server", server_ns, "LAST_ACK", "CLOSE", N),
        // Only the ones the kernel killed early; the rest live 60 s, past the test.
        ("client", client_ns, "TIME_WAIT", "CLOSE", killed),
    ];
    let mut problems = Vec::new();
    for (side, ns, old, new, want) in checks {
        let mut ids: Vec<u64> = ts
            .iter()
            .filter(|t| t.netns == ns && t.states() == (old, new))
            .map(|t| t.sock_id)
            .collect();
        let records = ids.len();
        ids.sort_unstable();
        ids.dedup();
        eprintln!(
            "burst: {side} {old} -> {new}: {records} records, {} sockets (expected {want})",
            ids.len()
        );
        if records != want || ids.len() != want {
            problems.push(format!(
                "{side} {old} -> {new}: {records} records on {} sockets, expected {want}",
                ids.len()
            ));
        }
    }
    for t in ts.iter().filter(|t| t.old == "TIME_WAIT") {
        if !is_timewait(t) || t.dwell_ns.is_none_or(|d| d > SEC) {
            problems.push(format!(
                "an early TIME_WAIT death should be a timewait record with a dwell under 1 s: {}",
                t.raw
            ));
        }
    }

    // Every socket's exact sequence, and dwell_ns on every record but a socket's first (a
    // SYN_RECV record, first of an accepted socket, carries its dwell too).
    let client_seq = expected::client_active_close_client();
    let mut killed_seq = client_seq.clone();
    killed_seq.push(("TIME_WAIT".to_owned(), "CLOSE".to_owned()));
    let server_seq = expected::client_active_close_server();
    let listener_seq = expected::seq(&[expected::LISTENER]);
    let mut ids: Vec<u64> = ts.iter().map(|t| t.sock_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut clients, mut children, mut listeners) = (0, 0, 0);
    for id in ids {
        let recs = of_sock(&ts, id);
        let pairs: Vec<(String, String)> = recs
            .iter()
            .map(|t| (t.old.clone(), t.new.clone()))
            .collect();
        let ns = recs[0].netns;
        if ns == client_ns && (pairs == client_seq || pairs == killed_seq) {
            clients += 1;
        } else if ns == server_ns && pairs == server_seq {
            children += 1;
        } else if ns == server_ns && pairs == listener_seq {
            listeners += 1;
        } else if problems.len() < 20 {
            problems.push(format!(
                "socket {id} has an unexpected sequence:\n{}",
                dump_refs(&recs)
            ));
        }
        for (i, t) in recs.iter().enumerate() {
            let ok = if i == 0 {
                t.dwell_ns.is_none() || t.old == "SYN_RECV"
            } else {
                t.dwell_ns.is_some()
            };
            if !ok && problems.len() < 20 {
                problems.push(format!(
                    "socket {id} record {i} ({} -> {}) has dwell_ns {:?}",
                    t.old, t.new, t.dwell_ns
                ));
            }
        }
    }
    eprintln!("burst: {clients} client sockets, {children} accepted, {listeners} listener(s)");
    if clients != N || children != N || listeners != 1 {
        problems.push(format!(
            "complete sequences: {clients} client sockets, {children} accepted sockets, \
             {listeners} listeners; expected {N}, {N}, 1"
        ));
    }
    ensure!(problems.is_empty(), "burst:\n{}", problems.join("\n"));
    Ok(())
}
