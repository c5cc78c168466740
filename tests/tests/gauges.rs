//! The live gauges (sockets in each state now) agree with `ss -tan` at the same moment,
//! for sockets that existed before netwatch started (the census) and sockets made after.
//! Root only; each test makes its own namespaces.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, IO_TIMEOUT};
use netwatch_tests::tracer::SETTLE;
use netwatch_tests::{in_netns, require_root, Netns, TestNet, Tracer};
use serde_json::Value;

const PORT: u16 = 8181;

/// `ss -tan` state counts inside a namespace, in netwatch's state names.
fn ss_counts(ns: &Netns) -> Result<std::collections::BTreeMap<String, u64>> {
    let out = ns.exec(&["ss", "-tanH"])?;
    let mut counts = std::collections::BTreeMap::new();
    for line in out.lines() {
        let Some(state) = line.split_whitespace().next() else {
            continue;
        };
        let name = match state {
            "ESTAB" => "ESTABLISHED",
            "SYN-SENT" => "SYN_SENT",
            "SYN-RECV" => "SYN_RECV",
            "FIN-WAIT-1" => "FIN_WAIT1",
            "FIN-WAIT-2" => "FIN_WAIT2",
            "TIME-WAIT" => "TIME_WAIT",
            "CLOSE-WAIT" => "CLOSE_WAIT",
            "LAST-ACK" => "LAST_ACK",
            "LISTEN" => "LISTEN",
            "CLOSING" => "CLOSING",
            other => other,
        };
        *counts.entry(name.to_owned()).or_default() += 1;
    }
    Ok(counts)
}

/// Opens `n` connections from the client namespace to the listener and returns both ends;
/// `close_client` of them are then closed by the client only (leaving CLOSE_WAIT on the
/// server and FIN_WAIT2 on the client), and `time_wait` fully closed client-first.
fn make_sockets(
    net: &TestNet,
    listener: &TcpListener,
    n: usize,
    close_client: usize,
    time_wait: usize,
) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let server: SocketAddr = (net.server_v4(), PORT).into();
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..n {
        let c = in_netns(&net.client, || connect_timeout(server, IO_TIMEOUT))??;
        let (a, _) = accept_timeout(listener, IO_TIMEOUT)?;
        clients.push(c);
        accepted.push(a);
    }
    for _ in 0..time_wait {
        // No data in flight: closing with unread data would send a RST instead.
        let c = clients.pop().context("no client left")?;
        let a = accepted.pop().context("no server socket left")?;
        drop(c);
        thread::sleep(Duration::from_millis(20));
        drop(a);
    }
    for _ in 0..close_client {
        // Client closes, server keeps its end open: CLOSE_WAIT there.
        drop(clients.pop().context("no client left")?);
    }
    Ok((clients, accepted))
}

fn last_snapshot(records: &[Value]) -> Option<&Value> {
    records.iter().rev().find(|r| r["type"] == "snapshot")
}

#[test]
fn gauges_agree_with_ss_for_census_and_new_sockets() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("gauges")?;
    let listener = in_netns(&net.server, || TcpListener::bind(("0.0.0.0", PORT)))??;
    // Before netwatch starts: found by the census.
    let (_c1, _a1) = make_sockets(&net, &listener, 6, 2, 2)?;
    let tracer = Tracer::start(&[
        "--netns",
        net.client.name(),
        "--netns",
        net.server.name(),
        "--interval",
        "200ms",
        "--quiet",
    ])?;
    // After: followed by the tracepoints.
    let (_c2, _a2) = make_sockets(&net, &listener, 5, 1, 3)?;
    thread::sleep(SETTLE);
    let mut expected = ss_counts(&net.client)?;
    for (state, n) in ss_counts(&net.server)? {
        *expected.entry(state).or_default() += n;
    }
    // Let one more snapshot be taken with nothing changing, then stop.
    thread::sleep(Duration::from_millis(500));
    let out = tracer.stop()?;
    let snap = last_snapshot(&out.records).context("no snapshot record")?;
    let states = &snap["states"];
    for (state, want) in &expected {
        let got = states[state.as_str()].as_u64().unwrap_or(0);
        ensure!(
            got == *want,
            "{state}: netwatch says {got}, ss says {want}\nss: {expected:?}\nsnapshot: {snap}"
        );
    }
    // And no state netwatch counts that ss does not show.
    for (state, v) in states.as_object().context("states is not an object")? {
        let got = v.as_u64().unwrap_or(0);
        let want = expected.get(state).copied().unwrap_or(0);
        ensure!(got == want, "{state}: netwatch {got}, ss {want}: {snap}");
    }
    ensure!(expected.get("TIME_WAIT") == Some(&5), "setup: {expected:?}");
    ensure!(
        expected.get("CLOSE_WAIT") == Some(&3),
        "setup: {expected:?}"
    );
    // CLOSE_WAIT sockets made after the start have known ages; census ones do not.
    let ages = &snap["age"]["CLOSE_WAIT"];
    ensure!(ages["count"].as_u64() == Some(1), "CLOSE_WAIT ages: {ages}");
    ensure!(
        ages["max"].as_u64().unwrap_or(0) >= 500_000_000,
        "ages: {ages}"
    );
    // TIME_WAIT ages are known for all five: the census reads the timewait timer.
    ensure!(
        snap["age"]["TIME_WAIT"]["count"].as_u64() == Some(5),
        "TIME_WAIT ages: {}",
        snap["age"]["TIME_WAIT"]
    );
    out.check_no_loss()?;
    Ok(())
}

/// Request sockets make no record until they end, so their gauge comes from the kernel's
/// own list each interval: with the final ACKs held back, netwatch's SYN_RECV count must
/// equal what `ss` shows, and drop back when the handshakes complete.
#[test]
fn syn_recv_gauge_counts_waiting_request_sockets() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const SYN_PORT: u16 = 8182;
    let net = TestNet::new("gsyn")?;
    let listener = in_netns(&net.server, || TcpListener::bind(("0.0.0.0", SYN_PORT)))??;
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "8182",
        "--tcp-flags",
        "SYN,ACK,FIN,RST",
        "ACK",
        "-j",
        "DROP",
    ];
    let mut add = vec!["iptables", "-I"];
    add.extend(rule);
    net.server.exec(&add)?;
    let tracer = Tracer::start(&[
        "--netns",
        net.client.name(),
        "--netns",
        net.server.name(),
        "--interval",
        "200ms",
        "--quiet",
    ])?;
    let server: SocketAddr = (net.server_v4(), SYN_PORT).into();
    // connect() returns on the SYN-ACK; the final ACK never reaches the server.
    let mut clients: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        clients.push(in_netns(&net.client, || {
            connect_timeout(server, IO_TIMEOUT)
        })??);
    }
    let waiting = ss_counts(&net.server)?
        .get("SYN_RECV")
        .copied()
        .unwrap_or(0);
    ensure!(
        waiting == 3,
        "setup: ss shows {waiting} SYN_RECV, expected 3"
    );
    let seen = tracer.wait_for(Duration::from_secs(5), |records| {
        last_snapshot(records).is_some_and(|s| s["states"]["SYN_RECV"] == 3)
    });
    let mut del = vec!["iptables", "-D"];
    del.extend(rule);
    net.server.exec(&del)?;
    ensure!(
        seen,
        "no snapshot with SYN_RECV 3: {:?}",
        tracer
            .records_so_far()
            .iter()
            .rev()
            .find(|r| r["type"] == "snapshot")
            .map(|s| s["states"].clone())
    );
    // Once the resent SYN-ACKs are acked, the children wait in the accept queue.
    let settled = tracer.wait_for(Duration::from_secs(6), |records| {
        last_snapshot(records).is_some_and(|s| s["states"]["SYN_RECV"] == 0)
    });
    drop(listener);
    let out = tracer.stop()?;
    ensure!(
        settled,
        "SYN_RECV did not return to 0 after the handshakes completed"
    );
    out.check_no_loss()?;
    Ok(())
}
