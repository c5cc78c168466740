//! Incident signals: each test reproduces one failure story between namespaces and asserts
//! netwatch's `"type":"alert"` record and its evidence against the kernel's own ground truth
//! (its `/proc/net/netstat` counters, `ss`, the errno the application got). Root only (see
//! `netwatch_tests::require_root`); run with `sudo cargo xtask test`.
//!
//! Every test makes its own namespaces, filters netwatch to them and uses
//! `--interval 200ms`, so the per-interval alerts come quickly and the tests can run in
//! parallel. Counter-based evidence is compared as sums over all alerts of a kind: an
//! incident may straddle an interval boundary.
//!
//! 1. NAT + PAWS: two clients behind a masquerading router reuse one 4-tuple; the server's
//!    TIME_WAIT socket rejects the second client's SYN (TW_PAWS). Made deterministic by
//!    controlling the timestamps and the NAT's port reuse, not by retrying.
//! 2. SYN-ACK retransmits: the client's final ACK is dropped for 2.5 s.
//! 3. Listen overflow: a backlog-1 listener that never accepts; final ACKs that find the
//!    accept queue full are dropped (TCP_LISTEN_OVERFLOW), later SYNs too.
//! 4. TIME_WAIT overflow: `tcp_max_tw_buckets=2`, ten active closes.
//! 5. Port exhaustion: a two-port `ip_local_port_range` filled with TIME_WAITs, then
//!    connect() fails with EADDRNOTAVAIL and netwatch names the thread that called it.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::alerts::{self, netstat_counter, of_kind, Alert};
use netwatch_tests::expected;
use netwatch_tests::records::{dump, dump_refs, of_sock, sock_id_between, sock_ids_where};
use netwatch_tests::router::RoutedNet;
use netwatch_tests::sock::{
    abort, connect_bound, listen_backlog, tcp_clock_ms, tcp_timestamp, thread_comm,
};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tempdir::TempDir;
use netwatch_tests::tracer::{report_then_remove, SETTLE};
use netwatch_tests::{
    in_netns, require_root, transitions, Netns, TestNet, TraceOutput, Tracer, Transition,
};
use serde_json::Value;

/// netwatch's reporting interval in these tests.
const INTERVAL: &str = "200ms";
const INTERVAL_DUR: Duration = Duration::from_millis(200);
/// Bound on waiting for the expected alerts to show up in the output file.
const ALERT_WAIT: Duration = Duration::from_secs(6);

/// A tracer filtered to `spaces`, reporting every [`INTERVAL`].
fn start_tracer(spaces: &[&Netns]) -> Result<Tracer> {
    let mut args = vec!["--interval".to_owned(), INTERVAL.to_owned()];
    for ns in spaces {
        args.push("--netns".to_owned());
        args.push(ns.inode().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Tracer::start(&args).with_context(|| format!("netwatch trace {}", args.join(" ")))
}

fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind(addr))?
        .with_context(|| format!("bind {addr} in {}", ns.name()))
}

fn connect_from(ns: &Netns, addr: SocketAddr) -> Result<TcpStream> {
    in_netns(ns, || connect_timeout(addr, IO_TIMEOUT))?
        .with_context(|| format!("connect to {addr} from {}", ns.name()))
}

/// What a stopped tracer wrote, parsed.
struct Finished {
    out: TraceOutput,
    alerts: Vec<Alert>,
    ts: Vec<Transition>,
}

impl Finished {
    /// Every alert and every transition, for failure messages.
    fn dump(&self) -> String {
        format!(
            "alerts:\n{}transitions:\n{}",
            alerts::dump(&self.out.records),
            dump(&self.ts)
        )
    }

    /// Prints the alerts of `kinds` (the measurements, for `--nocapture`).
    fn show(&self, kinds: &[&str]) {
        for a in self
            .alerts
            .iter()
            .filter(|a| kinds.contains(&a.kind.as_str()))
        {
            eprintln!("  {}", a.raw);
        }
    }

    /// The alerts of `kind` about namespace `netns`, in file order.
    fn of(&self, kind: &str, netns: u64) -> Vec<&Alert> {
        self.alerts
            .iter()
            .filter(|a| a.kind == kind && a.netns().ok() == Some(netns))
            .collect()
    }
}

/// Lets the kernel and two reporting intervals pass (so that interval alerts covering the
/// last events are out), stops the tracer, checks that nothing was lost and that every alert
/// is about one of the traced namespaces.
fn finish(tracer: Tracer, spaces: &[&Netns]) -> Result<Finished> {
    thread::sleep(SETTLE + 2 * INTERVAL_DUR);
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let alerts = alerts::alerts(&out.records)?;
    let ts = transitions(&out.records)?;
    let f = Finished { out, alerts, ts };
    let traced: BTreeSet<u64> = spaces.iter().map(|ns| ns.inode()).collect();
    for a in &f.alerts {
        // The "more rejects than listed" summary of PAWS rejects is about no namespace.
        if a.kind == "paws_reject" && a.str("reason")? == "more" {
            continue;
        }
        let ns = a.netns()?;
        ensure!(
            traced.contains(&ns),
            "alert about namespace {ns}, outside the traced {traced:?}: {}\n{}",
            a.raw,
            f.dump()
        );
    }
    Ok(f)
}

/// Err unless `alert` reports knob `name` with the value the namespace has (whitespace
/// normalised: `ip_local_port_range` reads "40000\t40001").
fn check_knob(alert: &Alert, ns: &Netns, name: &str) -> Result<()> {
    let want = ns.sysctl_get(name)?;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    match alert.knob(name)? {
        Some(got) => ensure!(
            norm(&got) == norm(&want),
            "{} alert reports {name} = {got:?}, {} has {want:?}: {}",
            alert.kind,
            ns.name(),
            alert.raw
        ),
        None => bail!(
            "{} alert does not report knob {name} ({} has {want:?}): {}",
            alert.kind,
            ns.name(),
            alert.raw
        ),
    }
    Ok(())
}

/// Sum of integer field `field` over `alerts`.
fn sum(alerts: &[&Alert], field: &str) -> Result<u64> {
    alerts.iter().map(|a| a.u64(field)).sum()
}

/// Polls (bounded) until the alerts of `kind` about `netns` satisfy `pred`; the caller
/// checks the final output either way.
fn wait_alerts(
    tracer: &Tracer,
    kind: &str,
    netns: u64,
    mut pred: impl FnMut(&[Alert]) -> bool,
) -> bool {
    tracer.wait_for(ALERT_WAIT, |records: &[Value]| {
        let mine: Vec<Alert> = of_kind(records, kind)
            .into_iter()
            .filter(|a| a.netns().ok() == Some(netns))
            .collect();
        pred(&mine)
    })
}

/// Sum of `field` over plain alerts (for polling predicates).
fn sum_owned(alerts: &[Alert], field: &str) -> u64 {
    alerts.iter().filter_map(|a| a.u64(field).ok()).sum()
}

/// True when `x` lies in the wrapping u32 interval `[lo, hi]` (TCP timestamps wrap).
fn ts_within(x: u32, lo: u32, hi: u32) -> bool {
    x.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

// ------------------------------------------------------------------------------------------
// 1. NAT + PAWS
// ------------------------------------------------------------------------------------------

/// Client A's source ports are tried from here (below the ephemeral range, so no other
/// connection of the test, NATed or not, can hold one of them).
const NAT_FIRST_SPORT: u16 = 20000;
/// Bound on client A's attempts at a usable timestamp offset (each succeeds with p ~ 0.48:
/// all 24 fail with p ~ 2e-7).
const NAT_MAX_ATTEMPTS: u16 = 24;
/// Client A's TSval must lead the raw TCP clock by at least this (ms, as s32): 1e8 (the
/// "foreign clock" evidence netwatch looks for, |TSval - ts_recent| >= 1e8) plus 10 s for
/// the time between A's last segment and B's SYNs.
const NAT_MIN_LEAD: i32 = 100_000_000 + 10_000;
/// ... and by at most this, so that `ts_recent - B's TSval` cannot wrap past 2^31.
const NAT_MAX_LEAD: i32 = i32::MAX - 10_000;
/// Bound on client B's connect(): its SYN is rejected, it retries (see below).
const NAT_B_CONNECT: Duration = Duration::from_secs(3);

/// Two clients behind a masquerading router reuse one 4-tuple at the server, which holds the
/// TIME_WAIT of the first: the second client's SYN carries an older timestamp and the
/// server's TIME_WAIT socket drops it (TCP_RFC7323_TW_PAWS). netwatch reports the reject
/// (router's address, the port, SYN, TSval/ts_recent) and names the router's address as NAT.
///
/// Determinism. PAWS drops the SYN iff (s32)(B's TSval - ts_recent) < 0, ts_recent being A's
/// last TSval. This kernel adds a random per-4-tuple offset to TSval unless
/// `tcp_timestamps=2`, which sends the raw ms clock (CLOCK_MONOTONIC in ms). So B runs at
/// `tcp_timestamps=2` (checked first: its `TCP_TIMESTAMP` equals the clock), and A at 1 with
/// its offset read back through `getsockopt(TCP_TIMESTAMP)`; an A connection whose TSval does
/// not lead the clock by [`NAT_MIN_LEAD`]..[`NAT_MAX_LEAD`] is closed by A (no server
/// TIME_WAIT) and A retries from the next port (new 4-tuple, new offset). The chosen one is
/// closed by the server first, so the server keeps the TIME_WAIT of
/// `router:P -> server:port`; B then connects from the same port P.
///
/// The NAT must let B have port P: masquerade keeps a source port only if no conntrack entry
/// holds the translated tuple, and A's entry stays in conntrack's TIME_WAIT for
/// `nf_conntrack_tcp_timeout_time_wait` = 120 s by default, longer than the server's 60 s
/// TIME_WAIT (measured: with the default, B was mapped to another port and connected at once,
/// no reject). So the router here forgets closed flows after 1 s, as NATs with short
/// timeouts or port-reusing CGNATs do, and the test waits until `conntrack -L` no longer
/// lists A's flow.
///
/// Then B's SYN is dropped by PAWS and answered by the TIME_WAIT socket's ACK; B (in
/// SYN_SENT) answers that with a RST, which kills the TIME_WAIT socket (RFC 1337
/// "assassination", `tcp_rfc1337=0`), and resends its SYN at once (the kernel rearms the SYN
/// timer to its minimum after such a RST): measured, B's connect() succeeded after ~15 ms,
/// on the same 4-tuple.
#[test]
fn nat_paws_reject_names_the_router() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8001;
    let net = RoutedNet::new("nat", 2, true)?;
    let (a, b) = (&net.clients[0], &net.clients[1]);
    let a_mode = a.sysctl_get("net.ipv4.tcp_timestamps")?;
    ensure!(
        a_mode == "1",
        "client A has tcp_timestamps={a_mode}, expected the default 1"
    );
    b.sysctl("net.ipv4.tcp_timestamps", "2")?;
    net.router
        .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")?;
    let outside = net.router_outside_v4();
    let server_addr = SocketAddr::new(net.server_v4().into(), PORT);
    let listener = listen_in(&net.server, server_addr)?;
    let paws_before = netstat_counter(&net.server, "TcpExt", "PAWSTimewait")?;
    let spaces = net.all();
    let tracer = start_tracer(&spaces)?;

    // Control: with tcp_timestamps=2, B's TSval is the raw TCP clock. (B closes first: the
    // TIME_WAIT is B's, on an ephemeral port, and the server keeps none.)
    {
        let c = connect_from(b, server_addr)?;
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT).context("accept B's control")?;
        let lo = tcp_clock_ms();
        let ts = tcp_timestamp(&c)?;
        let hi = tcp_clock_ms();
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT).context("server read B's control to EOF")?;
        ensure!(
            ts_within(ts, lo & !1, hi),
            "client B (tcp_timestamps=2) sends TSval {ts}, the TCP clock read {lo}..{hi} ms: \
             the raw-clock assumption does not hold on this kernel"
        );
        eprintln!("control: B TSval {ts}, clock {lo}..{hi} ms");
    }

    // Client A: find a 4-tuple whose timestamp offset makes B's later SYN look old.
    let mut tried = Vec::new();
    let mut chosen = None;
    for i in 0..NAT_MAX_ATTEMPTS {
        let sport = NAT_FIRST_SPORT + i;
        let local = SocketAddr::new(net.client_v4(0).into(), sport);
        let c = in_netns(a, move || connect_bound(local, server_addr, IO_TIMEOUT))?
            .with_context(|| format!("connect {local} -> {server_addr} from client A"))?;
        let (mut s, peer) = accept_timeout(&listener, IO_TIMEOUT).context("accept A")?;
        ensure!(
            peer == SocketAddr::new(outside.into(), sport),
            "the server sees A's {local} as {peer}, expected {outside}:{sport} \
             (masquerade keeps a free source port)"
        );
        let clock = tcp_clock_ms();
        let tsval = tcp_timestamp(&c)?;
        let lead = tsval.wrapping_sub(clock) as i32;
        tried.push((sport, lead));
        if (NAT_MIN_LEAD..=NAT_MAX_LEAD).contains(&lead) {
            chosen = Some((sport, c, s));
            break;
        }
        // Unusable offset: A closes first, so the server keeps no TIME_WAIT for it.
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT).context("server read A to EOF")?;
    }
    eprintln!("client A (sport, TSval - clock ms): {tried:?}");
    let distinct: BTreeSet<i32> = tried.iter().map(|(_, l)| *l / 1000).collect();
    ensure!(
        tried.len() == 1 || distinct.len() > 1,
        "A's timestamp offset did not change with its source port: {tried:?}"
    );
    let Some((sport, mut a_conn, server_conn)) = chosen else {
        bail!(
            "no usable timestamp offset for client A in {NAT_MAX_ATTEMPTS} 4-tuples \
             (sport, TSval - clock): {tried:?}"
        );
    };

    // The server closes first: its socket for router:sport ends in TIME_WAIT, with A's last
    // TSval as ts_recent.
    drop(server_conn);
    read_to_eof(&mut a_conn, IO_TIMEOUT).context("client A read to EOF")?;
    let a_last = tcp_timestamp(&a_conn)?;
    drop(a_conn);
    thread::sleep(Duration::from_millis(100));
    let tw = net
        .server
        .exec(&["ss", "-tanH", "state", "time-wait"])
        .context("ss in the server")?;
    let nat_tuple = format!("{outside}:{sport}");
    ensure!(
        tw.lines()
            .any(|l| l.split_whitespace().any(|w| w == nat_tuple)),
        "the server holds no TIME_WAIT towards {nat_tuple}:\n{tw}"
    );

    // The router forgets A's flow (its conntrack TIME_WAIT lasts 1 s here), so the port is
    // free for masquerade to keep when B comes.
    let a_local = SocketAddr::new(net.client_v4(0).into(), sport);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = net.router.exec(&[
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--orig-src",
            &a_local.ip().to_string(),
            "--sport",
            &sport.to_string(),
        ])?;
        if flows.trim().is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the router still tracks A's flow {a_local}:\n{flows}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // Client B: the same source port, so the same 4-tuple behind the NAT.
    let b_local = SocketAddr::new(net.client_v4(1).into(), sport);
    let b_lo = tcp_clock_ms();
    let t0 = Instant::now();
    let b_result = in_netns(b, move || {
        connect_bound(b_local, server_addr, NAT_B_CONNECT)
    })?;
    eprintln!(
        "client B {b_local}: connect {:?} after {:?}",
        b_result.as_ref().map(|s| s.local_addr().ok()),
        t0.elapsed()
    );
    // If B got through (its RST answering the TIME_WAIT socket's ACK killed that socket, and
    // its SYN was resent within milliseconds), it did so on the very 4-tuple A had.
    if let Ok(b_conn) = &b_result {
        let (_, peer) = accept_timeout(&listener, IO_TIMEOUT).context("accept B")?;
        ensure!(
            peer == SocketAddr::new(outside.into(), sport),
            "the server sees B's {} as {peer}, expected {outside}:{sport}",
            b_conn.local_addr()?
        );
    }
    let server_ns = net.server.inode();
    let outside_s = outside.to_string();
    wait_alerts(&tracer, "nat_suspected", server_ns, |nat| {
        nat.iter()
            .any(|a| a.str("addr").ok() == Some(outside_s.as_str()))
    });
    let f = finish(tracer, &spaces)?;
    let paws_after = netstat_counter(&net.server, "TcpExt", "PAWSTimewait")?;
    drop(b_result);

    let ctx = || {
        format!(
            "A's last TSval {a_last}, B started at clock {b_lo}, PAWSTimewait +{}\n{}",
            paws_after - paws_before,
            f.dump()
        )
    };
    let mut rejects: Vec<&Alert> = f
        .of("paws_reject", server_ns)
        .into_iter()
        .filter(|a| a.str("reason").ok() == Some("TCP_RFC7323_TW_PAWS"))
        .collect();
    rejects.sort_by_key(|a| a.mono_ns);
    ensure!(
        !rejects.is_empty(),
        "no paws_reject (TCP_RFC7323_TW_PAWS) alert in the server's namespace; {}",
        ctx()
    );
    ensure!(
        rejects.len() as u64 == paws_after - paws_before,
        "{} TW_PAWS alerts, the server counted {} PAWSTimewait rejects; {}",
        rejects.len(),
        paws_after - paws_before,
        ctx()
    );
    for r in &rejects {
        ensure!(
            r.str("saddr")? == outside_s
                && r.u64("sport")? == u64::from(sport)
                && r.str("daddr")? == net.server_v4().to_string()
                && r.u64("dport")? == u64::from(PORT)
                && r.str("flags")? == "SYN"
                && r.u64("suppressed")? == 0,
            "paws_reject should be a SYN from {outside}:{sport} to {server_addr}: {}; {}",
            r.raw,
            ctx()
        );
        let (tsval, ts_recent) = (r.u64("tsval")? as u32, r.u64("ts_recent")? as u32);
        ensure!(
            r.i64("ts_delta")? == i64::from(tsval.wrapping_sub(ts_recent) as i32),
            "ts_delta is not tsval - ts_recent (s32): {}",
            r.raw
        );
        ensure!(
            r.i64("ts_delta")? <= -100_000_000,
            "B's TSval should trail ts_recent by >= 1e8 (A led the clock by that much): {}; {}",
            r.raw,
            ctx()
        );
    }
    let first = rejects[0];
    let (tsval, ts_recent) = (first.u64("tsval")? as u32, first.u64("ts_recent")? as u32);
    ensure!(
        ts_within(tsval, b_lo.wrapping_sub(1), b_lo.wrapping_add(200)),
        "first reject's TSval {tsval} is not B's clock at its first SYN (~{b_lo}); {}",
        ctx()
    );
    ensure!(
        ts_within(ts_recent, a_last & !1, a_last.wrapping_add(200)),
        "first reject's ts_recent {ts_recent} is not A's last TSval (~{a_last}); {}",
        ctx()
    );
    ensure!(
        first.message.contains(&nat_tuple),
        "message does not name {nat_tuple}: {}",
        first.message
    );

    let nat: Vec<&Alert> = f
        .of("nat_suspected", server_ns)
        .into_iter()
        .filter(|a| a.str("addr").ok() == Some(outside_s.as_str()))
        .collect();
    let [nat] = nat.as_slice() else {
        bail!(
            "expected one nat_suspected alert for {outside}, got {}; {}",
            nat.len(),
            ctx()
        );
    };
    let deltas: Vec<i64> = rejects
        .iter()
        .map(|r| r.i64("ts_delta").map(i64::abs))
        .collect::<Result<_>>()?;
    let rejections = nat.u64("rejections")?;
    let max_delta = nat.i64("max_ts_delta")?;
    ensure!(
        (1..=rejects.len() as u64).contains(&rejections)
            && nat.u64_list("ports")? == vec![u64::from(sport)]
            && max_delta >= 100_000_000
            && deltas.contains(&max_delta),
        "nat_suspected should count B's rejects ({} of them, |ts_delta| {deltas:?}) from port \
         {sport}: {}; {}",
        rejects.len(),
        nat.raw,
        ctx()
    );
    ensure!(
        nat.message.contains(&outside_s),
        "message does not name {outside}: {}",
        nat.message
    );
    check_knob(nat, &net.server, "net.ipv4.tcp_timestamps")?;
    check_knob(nat, &net.server, "net.ipv4.tcp_tw_reuse")?;
    // A single client is no NAT: nothing names A's or B's own address.
    for other in [net.client_v4(0), net.client_v4(1)] {
        ensure!(
            !f.alerts
                .iter()
                .any(|a| a.kind == "nat_suspected"
                    && a.str("addr").ok() == Some(&*other.to_string())),
            "nat_suspected names client address {other}; {}",
            ctx()
        );
    }
    f.show(&["paws_reject", "nat_suspected"]);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. SYN-ACK retransmits
// ------------------------------------------------------------------------------------------

/// An iptables rule dropping `port`'s incoming pure ACKs (and ACK+PSH segments, which these
/// tests never send), as arguments after `-I`/`-D`.
fn ack_drop_rule(port: u16) -> Vec<String> {
    [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "--tcp-flags",
        "SYN,ACK,FIN,RST",
        "ACK",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn iptables(ns: &Netns, op: &str, rule: &[String]) -> Result<()> {
    let mut argv = vec!["iptables", op];
    argv.extend(rule.iter().map(String::as_str));
    ns.exec(&argv)
        .with_context(|| format!("iptables {op} in {}", ns.name()))?;
    Ok(())
}

/// The client's final ACK is dropped for 2.5 s: the server's request socket resends its
/// SYN-ACK at +1 s and +3 s (the client re-ACKs the second, which passes). netwatch reports
/// `synack_retransmits` for the listener with the client, adding up to the kernel's
/// TCPSynRetrans, the last one being retransmit #2 (`max_retransmits` counts from 0, the
/// request socket's `num_retrans` before the resend).
#[test]
fn synack_retransmits_when_the_final_ack_is_lost() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8002;
    const DROP_FOR: Duration = Duration::from_millis(2500);
    let net = TestNet::new("sar")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), PORT);
    let listener = listen_in(&net.server, server_addr)?;
    let rule = ack_drop_rule(PORT);
    let before = netstat_counter(&net.server, "TcpExt", "TCPSynRetrans")?;
    let spaces = [&net.client, &net.server];
    let tracer = start_tracer(&spaces)?;
    iptables(&net.server, "-I", &rule)?;
    let t0 = Instant::now();
    let client = connect_from(&net.client, server_addr)?;
    let client_local = client.local_addr()?;
    thread::sleep(DROP_FOR.saturating_sub(t0.elapsed()));
    iptables(&net.server, "-D", &rule)?;
    let t_deleted = t0.elapsed();
    // The SYN-ACK resent at +3 s completes the handshake (at +7 s if `iptables -D` itself
    // took past +3 s, as seen under load).
    let (server_sock, peer) = accept_timeout(&listener, Duration::from_secs(6))
        .context("accept: a resent SYN-ACK should complete the handshake")?;
    let t_accepted = t0.elapsed();
    ensure!(
        peer == client_local,
        "accepted {peer}, client is {client_local}"
    );
    let after = netstat_counter(&net.server, "TcpExt", "TCPSynRetrans")?;
    let truth = after - before;
    eprintln!("rule deleted at {t_deleted:?}, accepted at {t_accepted:?}, TCPSynRetrans +{truth}");
    ensure!(
        truth >= 2,
        "the kernel resent {truth} SYN-ACKs (TCPSynRetrans), expected 2 (at +1 s and +3 s)"
    );

    let server_ns = net.server.inode();
    let listener_name = server_addr.to_string();
    let mine = |alerts: &[Alert]| -> Vec<Alert> {
        alerts
            .iter()
            .filter(|a| a.str("listener").ok() == Some(listener_name.as_str()))
            .cloned()
            .collect()
    };
    wait_alerts(&tracer, "synack_retransmits", server_ns, |a| {
        sum_owned(&mine(a), "count") >= truth
    });
    drop(client);
    drop(server_sock);
    let f = finish(tracer, &spaces)?;
    let all = f.of("synack_retransmits", server_ns);
    let for_listener: Vec<&Alert> = all
        .iter()
        .copied()
        .filter(|a| a.str("listener").ok() == Some(listener_name.as_str()))
        .collect();
    ensure!(
        for_listener.len() == all.len() && !all.is_empty(),
        "expected synack_retransmits alerts for listener {listener_name} only; {}",
        f.dump()
    );
    let count = sum(&for_listener, "count")?;
    let max = for_listener
        .iter()
        .map(|a| a.u64("max_retransmits"))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    ensure!(
        count == truth && max == truth - 1 && max >= 1,
        "synack_retransmits for {listener_name}: count {count} (kernel: {truth}), \
         max_retransmits {max} (expected {}); {}",
        truth - 1,
        f.dump()
    );
    for a in &for_listener {
        ensure!(
            a.str_list("clients")? == vec![client_local.to_string()],
            "clients should be [{client_local}]: {}",
            a.raw
        );
        ensure!(
            a.message.contains(&listener_name),
            "message does not name {listener_name}: {}",
            a.message
        );
        check_knob(a, &net.server, "net.ipv4.tcp_synack_retries")?;
        check_knob(a, &net.server, "net.ipv4.tcp_syncookies")?;
    }
    f.show(&["synack_retransmits"]);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 3. Listen overflow
// ------------------------------------------------------------------------------------------

/// The peers of `ns`'s request sockets (`ss state syn-recv`).
fn syn_recv_peers(ns: &Netns) -> Result<Vec<SocketAddr>> {
    let text = ns.exec(&["ss", "-tanH", "state", "syn-recv"])?;
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|w| w.parse().ok())
                .with_context(|| format!("unexpected ss line {l:?}"))
        })
        .collect()
}

/// A backlog-1 listener that never accepts, eight clients.
///
/// What this kernel does, measured: the accept queue holds backlog + 1 = 2 children; a SYN
/// that arrives when it is full is dropped at once (ListenOverflows and ListenDrops +1, no
/// drop reason, no request socket), so eight quick connects in a row give two queued
/// children and six dropped SYNs, and no final ACK ever finds the queue full. A final ACK
/// is dropped with TCP_LISTEN_OVERFLOW only when its request socket was made while the queue
/// still had room: here client 0 is queued, the final ACKs of clients 1 and 2 are held back
/// (iptables) so both get request sockets (the request queue takes 2), and when the SYN-ACKs
/// are resent at +1 s one ACK fills the queue and the other is dropped. That client then
/// aborts (RST removes its request socket, so no more resends), and clients 3..7 connect
/// into the full queue: five dropped SYNs.
///
/// netwatch: `listen_overflow` for the server's namespace, `dropped_final_acks` adding up to
/// the ACK drops with the port listed, `listen_overflows`/`listen_drops` adding up to the
/// namespace's counters, and the knobs.
/// Marks an attempt whose kernel-side setup did not happen (which SYN-ACK resend gets
/// through is the kernel's timing): the scenario is rebuilt, netwatch is not judged on it.
const SETUP_MISSED: &str = "setup not reached";

#[test]
fn listen_overflow_with_backlog_one() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const ATTEMPTS: u16 = 3;
    for attempt in 0..ATTEMPTS {
        match listen_overflow_attempt(8003 + 100 * attempt) {
            Err(e) if format!("{e}").starts_with(SETUP_MISSED) && attempt + 1 < ATTEMPTS => {
                eprintln!("attempt {attempt}: {e:#}; building the scenario again");
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

fn listen_overflow_attempt(port: u16) -> Result<()> {
    const LATE_CLIENTS: u64 = 5;
    let net = TestNet::new("lov")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), port);
    let listener = in_netns(&net.server, || listen_backlog(server_addr, 1))?
        .with_context(|| format!("listen on {server_addr} with backlog 1"))?;
    // SYNs meeting the full accept queue also find the SYN queue (as long as the backlog)
    // full: with cookies on, the kernel counts them as cookies, then drops them.
    let names = [
        "ListenOverflows",
        "ListenDrops",
        "TCPReqQFullDrop",
        "TCPReqQFullDoCookies",
    ];
    let before = alerts::tcpext(&net.server, &names)?;
    let spaces = [&net.client, &net.server];
    let tracer = start_tracer(&spaces)?;

    let mut clients = vec![connect_from(&net.client, server_addr).context("client 0")?];
    let rule = ack_drop_rule(port);
    iptables(&net.server, "-I", &rule)?;
    let t0 = Instant::now();
    for i in 1..=2 {
        // The SYN-ACK arrives, so connect() succeeds; the final ACK is dropped.
        clients
            .push(connect_from(&net.client, server_addr).with_context(|| format!("client {i}"))?);
    }
    iptables(&net.server, "-D", &rule)?;
    let syn_recv = syn_recv_peers(&net.server)?;
    let held: Vec<SocketAddr> = clients[1..]
        .iter()
        .map(TcpStream::local_addr)
        .collect::<std::io::Result<_>>()?;
    ensure!(
        syn_recv.len() == 2 && held.iter().all(|c| syn_recv.contains(c)),
        "expected the request sockets of clients 1 and 2 {held:?}, found {syn_recv:?}"
    );
    // The SYN-ACKs are resent at +1 s: one ACK fills the queue, the other is dropped.
    // The SYN-ACKs are resent at +1 s (+3 s, +7 s, ...): one ACK fills the queue, the
    // other is dropped. (Under load `iptables -D` itself was seen taking 1.2 s, so which
    // resend gets through is not fixed: wait for the state, bounded by the +7 s resend.)
    let deadline = t0 + Duration::from_secs(8);
    let dropped = loop {
        let lo = netstat_counter(&net.server, "TcpExt", "ListenOverflows")?;
        let peers = syn_recv_peers(&net.server)?;
        if lo > before[0] && peers.len() == 1 {
            break peers[0];
        }
        ensure!(
            Instant::now() < deadline,
            "{SETUP_MISSED}: no final ACK dropped within 8 s (ListenOverflows +{}, request \
             sockets of {peers:?})",
            lo - before[0]
        );
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("final ACK overflow after {:?}", t0.elapsed());
    // The client whose ACK was dropped still has a request socket (marked acked): its
    // SYN-ACK would be resent again and each ACK dropped again. A RST from that client
    // removes it, so the count of dropped final ACKs stops here.
    let at = clients
        .iter()
        .position(|c| c.local_addr().ok() == Some(dropped))
        .with_context(|| format!("no client is {dropped}"))?;
    ensure!(
        at != 0,
        "client 0 was queued before the ACKs were held back"
    );
    abort(clients.remove(at))?;
    thread::sleep(Duration::from_millis(20));
    let left = syn_recv_peers(&net.server)?;
    ensure!(
        left.is_empty(),
        "request sockets left after the RST: {left:?}"
    );
    // Only final ACKs reached the listener so far (clients 1 and 2 never resend a SYN).
    let acks_dropped = netstat_counter(&net.server, "TcpExt", "ListenOverflows")? - before[0];
    for i in 3..3 + LATE_CLIENTS {
        let r = in_netns(&net.client, || {
            connect_timeout(server_addr, Duration::from_millis(300))
        })?;
        ensure!(
            r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
            "client {i} into the full accept queue: expected a timeout, got {r:?}"
        );
    }
    let mid = alerts::tcpext(&net.server, &names)?;
    let overflows = mid[0] - before[0];
    // One SYN each (the first resend would be at +1 s; more only if this thread stalled).
    ensure!(
        overflows >= acks_dropped + LATE_CLIENTS,
        "ListenOverflows +{overflows}, expected {acks_dropped} final ACKs + >= {LATE_CLIENTS} SYNs"
    );
    eprintln!(
        "ListenOverflows +{overflows}: {acks_dropped} final ACKs, {} SYNs",
        overflows - acks_dropped
    );
    let server_ns = net.server.inode();
    wait_alerts(&tracer, "listen_overflow", server_ns, |a| {
        sum_owned(a, "listen_overflows") >= overflows
            && sum_owned(a, "dropped_final_acks") >= acks_dropped
    });
    let f = finish(tracer, &spaces)?;
    let after = alerts::tcpext(&net.server, &names)?;
    drop(clients);
    drop(listener);

    let truth: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let lov = f.of("listen_overflow", server_ns);
    let got = (
        sum(&lov, "dropped_final_acks")?,
        sum(&lov, "listen_overflows")?,
        sum(&lov, "listen_drops")?,
        sum(&lov, "req_queue_full_drops")?,
        sum(&lov, "req_queue_full_cookies")?,
    );
    eprintln!("kernel counters moved by {truth:?} ({names:?})");
    ensure!(
        got == (acks_dropped, truth[0], truth[1], truth[2], truth[3]),
        "listen_overflow sums (dropped_final_acks, listen_overflows, listen_drops, \
         req_queue_full_drops, req_queue_full_cookies) = {got:?}, kernel: ({acks_dropped}, \
         {}, {}, {}, {}); {}",
        truth[0],
        truth[1],
        truth[2],
        truth[3],
        f.dump()
    );
    for a in &lov {
        let ports = a.u64_list("ports")?;
        let want: Vec<u64> = if a.u64("dropped_final_acks")? > 0 {
            vec![port.into()]
        } else {
            vec![]
        };
        ensure!(
            ports == want,
            "ports should be {want:?} (the port of the dropped final ACKs, none for SYN \
             drops): {}",
            a.raw
        );
        check_knob(a, &net.server, "net.core.somaxconn")?;
        check_knob(a, &net.server, "net.ipv4.tcp_max_syn_backlog")?;
    }
    // The alert names the listener, its full queue and the limit that sized it: the
    // application's backlog of 1, not somaxconn.
    let named = format!("{server_addr}");
    let listeners: Vec<String> = lov
        .iter()
        .map(|a| a.str_list("listeners"))
        .collect::<Result<Vec<_>>>()?
        .concat();
    ensure!(
        listeners.iter().all(|l| l.starts_with(&named)
            && l.contains("accept queue")
            && l.contains("the application's listen() backlog of 1 is the limit"))
            && listeners
                .iter()
                .any(|l| l.contains("accept queue 2/1 (full)")),
        "listen_overflow should name {named}, its full queue 2/1 and the backlog of 1: \
         {listeners:?}"
    );
    ensure!(
        lov.iter().all(|a| a.message.contains(&named)),
        "messages should name the listener: {:?}",
        lov.iter().map(|a| &a.message).collect::<Vec<_>>()
    );
    f.show(&["listen_overflow"]);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. TIME_WAIT overflow
// ------------------------------------------------------------------------------------------

/// `net.ipv4.tcp_max_tw_buckets=2` in the client namespace, ten connections the client
/// closes first: the first two get timewait sockets (FIN_WAIT2 -> TIME_WAIT), the other
/// eight find the buckets full (TCPTimeWaitOverflow +8) and go FIN_WAIT2 -> CLOSE with no
/// timewait socket. netwatch: `timewait_overflow` for the client's namespace adding up to
/// 8 closes without TIME_WAIT and the counter's 8, TIME_WAIT count 2, the knob.
#[test]
fn timewait_overflow_with_two_buckets() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8004;
    const CONNS: usize = 10;
    const BUCKETS: usize = 2;
    let net = TestNet::new("two")?;
    net.client.sysctl("net.ipv4.tcp_max_tw_buckets", "2")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), PORT);
    let listener = listen_in(&net.server, server_addr)?;
    let before = netstat_counter(&net.client, "TcpExt", "TCPTimeWaitOverflow")?;
    let spaces = [&net.client, &net.server];
    let tracer = start_tracer(&spaces)?;
    let mut locals = Vec::new();
    for i in 0..CONNS {
        let c = connect_from(&net.client, server_addr).with_context(|| format!("conn {i}"))?;
        let (mut s, peer) = accept_timeout(&listener, IO_TIMEOUT)?;
        ensure!(peer == c.local_addr()?, "accepted {peer}");
        locals.push(peer);
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT).with_context(|| format!("server read conn {i}"))?;
        drop(s);
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(SETTLE);
    let truth = netstat_counter(&net.client, "TcpExt", "TCPTimeWaitOverflow")? - before;
    let tw = net.client.exec(&["ss", "-tanH", "state", "time-wait"])?;
    ensure!(
        truth == (CONNS - BUCKETS) as u64 && tw.lines().count() == BUCKETS,
        "TCPTimeWaitOverflow +{truth} (expected {}), TIME_WAIT sockets:\n{tw}",
        CONNS - BUCKETS
    );
    let client_ns = net.client.inode();
    wait_alerts(&tracer, "timewait_overflow", client_ns, |a| {
        sum_owned(a, "closed_without_timewait") >= truth
            && sum_owned(a, "tcp_timewait_overflow") >= truth
    });
    let f = finish(tracer, &spaces)?;

    let tov = f.of("timewait_overflow", client_ns);
    let got = (
        sum(&tov, "closed_without_timewait")?,
        sum(&tov, "tcp_timewait_overflow")?,
    );
    ensure!(
        got == (truth, truth),
        "timewait_overflow sums (closed_without_timewait, tcp_timewait_overflow) = {got:?}, \
         kernel: {truth} overflows; {}",
        f.dump()
    );
    for a in &tov {
        ensure!(
            a.u64("time_wait_now")? == BUCKETS as u64,
            "time_wait_now should be {BUCKETS} (the buckets are full): {}",
            a.raw
        );
        ensure!(
            a.message.contains("tcp_max_tw_buckets = 2"),
            "message does not give the limit: {}",
            a.message
        );
        check_knob(a, &net.client, "net.ipv4.tcp_max_tw_buckets")?;
        check_knob(a, &net.client, "net.ipv4.tcp_tw_reuse")?;
    }
    ensure!(
        f.of("timewait_overflow", net.server.inode()).is_empty(),
        "timewait_overflow for the server, which closed second; {}",
        f.dump()
    );

    // The transition stream: two sockets into TIME_WAIT, eight closed without it.
    let with_tw = expected::client_active_close_client();
    let mut without_tw = with_tw.clone();
    *without_tw.last_mut().context("empty sequence")? = ("FIN_WAIT2".into(), "CLOSE".into());
    for (i, local) in locals.iter().enumerate() {
        let id = sock_id_between(&f.ts, *local, server_addr)
            .with_context(|| format!("conn {i}\n{}", f.dump()))?;
        let recs = of_sock(&f.ts, id);
        let got: Vec<(String, String)> = recs
            .iter()
            .map(|t| (t.old.clone(), t.new.clone()))
            .collect();
        let want = if i < BUCKETS { &with_tw } else { &without_tw };
        ensure!(
            &got == want,
            "conn {i} ({local}): expected {want:?}\n got {got:?}\n{}",
            dump_refs(&recs)
        );
        if i >= BUCKETS {
            let last = recs.last().context("no records")?;
            ensure!(
                last.raw.get("timewait").and_then(Value::as_bool) != Some(true),
                "conn {i}: FIN_WAIT2 -> CLOSE is marked as a timewait socket: {}",
                last.raw
            );
        }
    }
    f.show(&["timewait_overflow"]);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 5. Port exhaustion
// ------------------------------------------------------------------------------------------

/// `ip_local_port_range` "40000 40001" and `tcp_tw_reuse=0` in the client namespace: two
/// connections the client closes first leave TIME_WAIT on both ports (towards the one
/// server address and port), then three connect()s fail with EADDRNOTAVAIL before any SYN.
/// netwatch: `port_exhaustion` for the client's namespace and that destination, 3 failures,
/// the thread that called connect() as "comm[pid]" (the kernel's comm is the thread's, and
/// pid the process id), 2 local ports in use, both in TIME_WAIT, and the knobs. The failed
/// sockets' own records are CLOSE -> SYN_SENT -> CLOSE with local port 0.
#[test]
fn port_exhaustion_names_the_process() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8005;
    const FAILURES: u64 = 3;
    let net = TestNet::new("pex")?;
    net.client
        .sysctl("net.ipv4.ip_local_port_range", "40000 40001")?;
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "0")?;
    let server_addr = SocketAddr::new(net.server_v4().into(), PORT);
    let listener = listen_in(&net.server, server_addr)?;
    let spaces = [&net.client, &net.server];
    let tracer = start_tracer(&spaces)?;
    let mut ports = BTreeSet::new();
    for i in 0..2 {
        let c = connect_from(&net.client, server_addr).with_context(|| format!("conn {i}"))?;
        ports.insert(c.local_addr()?.port());
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT)?;
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT)?;
        drop(s);
    }
    ensure!(
        ports == BTreeSet::from([40000, 40001]),
        "local ports {ports:?}, expected both of the range"
    );
    let mut comms = BTreeSet::new();
    for i in 0..FAILURES {
        let (comm, r) = in_netns(&net.client, || {
            (thread_comm(), connect_timeout(server_addr, IO_TIMEOUT))
        })?;
        comms.insert(comm?);
        ensure!(
            r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EADDRNOTAVAIL)),
            "connect {i} with both ports in TIME_WAIT: expected EADDRNOTAVAIL, got {r:?}"
        );
    }
    let [comm] = comms.iter().collect::<Vec<_>>()[..] else {
        bail!("the connecting threads had several comms: {comms:?}");
    };
    let pid = std::process::id();
    let process = format!("{comm}[{pid}]");
    let client_ns = net.client.inode();
    wait_alerts(&tracer, "port_exhaustion", client_ns, |a| {
        sum_owned(a, "failures") >= FAILURES
    });
    let f = finish(tracer, &spaces)?;

    let pex = f.of("port_exhaustion", client_ns);
    let failures = sum(&pex, "failures")?;
    ensure!(
        failures == FAILURES,
        "port_exhaustion failures add up to {failures}, connect() failed {FAILURES} times; {}",
        f.dump()
    );
    let server_ip = net.server_v4().to_string();
    for a in &pex {
        ensure!(
            a.str("daddr")? == server_ip && a.u64("dport")? == u64::from(PORT),
            "port_exhaustion should be towards {server_addr}: {}",
            a.raw
        );
        ensure!(
            a.str_list("processes")? == vec![process.clone()],
            "processes should be [{process:?}] (the connecting thread's comm, the pid): {}",
            a.raw
        );
        ensure!(
            (a.u64("ports_in_use")?, a.u64("time_wait_to_destination")?) == (2, 2),
            "ports_in_use and time_wait_to_destination should be 2 and 2 (both ports of the \
             range in TIME_WAIT towards {server_addr}): {}",
            a.raw
        );
        ensure!(
            a.message.contains(&server_addr.to_string()) && a.message.contains(&process),
            "message should name {server_addr} and {process}: {}",
            a.message
        );
        check_knob(a, &net.client, "net.ipv4.ip_local_port_range")?;
        check_knob(a, &net.client, "net.ipv4.tcp_tw_reuse")?;
    }

    // The failed sockets: CLOSE -> SYN_SENT -> CLOSE, local port 0, owned by the caller.
    let failed = sock_ids_where(&f.ts, |t| {
        t.netns == client_ns
            && t.remote() == Some(server_addr)
            && t.states() == ("SYN_SENT", "CLOSE")
    });
    ensure!(
        failed.len() as u64 == FAILURES,
        "expected {FAILURES} sockets SYN_SENT -> CLOSE towards {server_addr}:\n{}",
        dump(&f.ts)
    );
    let want = expected::seq(&[expected::REFUSED]);
    for id in failed {
        let recs = of_sock(&f.ts, id);
        let got: Vec<(String, String)> = recs
            .iter()
            .map(|t| (t.old.clone(), t.new.clone()))
            .collect();
        ensure!(
            got == want && recs.iter().all(|t| t.sport == 0),
            "failed connect: expected {want:?} with local port 0:\n{}",
            dump_refs(&recs)
        );
        for t in &recs {
            ensure!(
                t.raw.get("comm").and_then(Value::as_str) == Some(comm.as_str())
                    && t.raw.get("pid").and_then(Value::as_u64) == Some(pid.into()),
                "failed connect's record should carry comm {comm:?} pid {pid}: {}",
                t.raw
            );
        }
    }
    f.show(&["port_exhaustion"]);

    // What a person reads afterwards: `netwatch report` of the same trace gives the
    // totals, the process, the peak of TIME_WAIT though it ended at 2, and the breakdowns.
    let dir = TempDir::new("incidents", "pex-report")?;
    let path = dir.join("trace.jsonl");
    let lines: String = f.out.records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, lines)?;
    let report = report_then_remove(&path, &[])?;
    eprintln!("{report}");
    for want in [
        format!("Ephemeral ports exhausted: {FAILURES} connect() failures (EADDRNOTAVAIL)"),
        process.clone(),
        "BREAKDOWNS AT THE END".to_owned(),
        format!("by service port    {PORT} 2"),
        "TIME_WAIT peaked at 2".to_owned(),
        "net.ipv4.ip_local_port_range = 40000 40001".to_owned(),
    ] {
        ensure!(report.contains(&want), "report lacks {want:?}:\n{report}");
    }
    Ok(())
}
