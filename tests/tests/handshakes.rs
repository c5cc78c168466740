//! Server-side handshakes seen as an engineer needs them when they go wrong: request
//! sockets stuck in SYN_RECV counted, aged and broken down from the kernel's own list while
//! they wait, their failures counted and explained when they die; and children waiting in
//! an accept queue counted as the ESTABLISHED sockets they are. Ground truth is `ss` in the
//! namespace and the clock of the test. Root only; run with `sudo cargo xtask test`.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netwatch_tests::sock::listen_backlog;
use netwatch_tests::tcp::{connect_timeout, IO_TIMEOUT};
use netwatch_tests::tracer::{report_then_remove, SETTLE};
use netwatch_tests::{in_netns, require_root, Netns, TestNet, Tracer};
use serde_json::Value;

const CLIENTS: usize = 20;

fn ss_count(ns: &Netns, state: &str) -> Result<usize> {
    Ok(ns.exec(&["ss", "-tanH", "state", state])?.lines().count())
}

/// Drops the final ACKs of handshakes to `port` in `ns` (pure ACKs only).
fn drop_final_acks(ns: &Netns, port: u16) -> Result<()> {
    let port = port.to_string();
    ns.exec(&[
        "iptables",
        "-I",
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
    ])?;
    Ok(())
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writing.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn snapshots(tracer: &Tracer) -> Vec<Value> {
    tracer
        .records_so_far()
        .into_iter()
        .filter(|r| r["type"] == "snapshot")
        .collect()
}

/// Twenty handshakes whose final ACKs never arrive: while they wait, the snapshots count
/// them (as `ss` does), age them (between the first and second SYN-ACK timeouts when read
/// at +1.5 s) and name their listener; when `tcp_synack_retries`=1 has them die, the
/// report says most handshakes failed.
#[test]
fn stuck_handshakes_are_counted_aged_and_reported_failed() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8091;
    let net = TestNet::new("synrecv")?;
    net.server.sysctl("net.ipv4.tcp_synack_retries", "1")?;
    let server_addr = SocketAddr::new(IpAddr::V4(net.server_v4()), PORT);
    let listener = in_netns(&net.server, || listen_backlog(server_addr, 128))??;
    drop_final_acks(&net.server, PORT)?;
    let tracer = Tracer::start(&["--netns", net.server.name(), "--interval", "0.5"])?.keep_file();

    let t0 = Instant::now();
    let start_mono = mono_ns();
    let clients: Vec<TcpStream> = in_netns(&net.client, || {
        (0..CLIENTS)
            .map(|_| connect_timeout(server_addr, IO_TIMEOUT))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    // Between the first SYN-ACK resend (+1 s) and the request sockets' end (+3 s).
    thread::sleep(Duration::from_millis(1_500).saturating_sub(t0.elapsed()));
    let truth = ss_count(&net.server, "syn-recv")?;
    ensure!(
        truth == CLIENTS,
        "ss shows {truth} request sockets, expected {CLIENTS}"
    );
    ensure!(
        tracer.wait_for(Duration::from_millis(1_300), |recs| {
            recs.iter().any(|r| {
                r["type"] == "snapshot"
                    && r["mono_ns"]
                        .as_u64()
                        .is_some_and(|m| m > start_mono + 1_100_000_000)
                    && r["states"]["SYN_RECV"].as_u64() == Some(CLIENTS as u64)
                    && r["age"]["SYN_RECV"]["count"].as_u64() == Some(CLIENTS as u64)
            })
        }),
        "no snapshot counted and aged {CLIENTS} request sockets: {:?}",
        snapshots(&tracer)
            .iter()
            .map(|s| (
                s["states"]["SYN_RECV"].clone(),
                s["age"]["SYN_RECV"].clone()
            ))
            .collect::<Vec<_>>()
    );
    // Every snapshot that listed them: the ages are the time since the connects, to the
    // accuracy of the SYN-ACK timer (jiffies) and of when the connects ran.
    let listed: Vec<Value> = snapshots(&tracer)
        .into_iter()
        .filter(|r| r["age"]["SYN_RECV"]["count"].as_u64() == Some(CLIENTS as u64))
        .collect();
    let mut resent_seen = false;
    for snap in &listed {
        let at = snap["mono_ns"]
            .as_u64()
            .context("snapshot without mono_ns")?;
        let truth = at.saturating_sub(start_mono);
        let p50 = snap["age"]["SYN_RECV"]["p50"].as_u64().unwrap_or(0);
        let max = snap["age"]["SYN_RECV"]["max"].as_u64().unwrap_or(0);
        eprintln!("snapshot at +{truth} ns: ages p50 {p50} max {max}");
        ensure!(
            p50.abs_diff(truth) < 150_000_000 && max.abs_diff(truth) < 150_000_000,
            "request socket ages p50 {p50} ns, max {max} ns; they were {truth} ns old"
        );
        resent_seen |= truth > 1_100_000_000;
    }
    ensure!(
        resent_seen,
        "no snapshot listed the request sockets after their first SYN-ACK resend"
    );
    // They die at +3 s (tcp_synack_retries=1: timeouts of 1 s and 2 s).
    let deadline = Instant::now() + Duration::from_secs(6);
    while ss_count(&net.server, "syn-recv")? > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        ss_count(&net.server, "syn-recv")? == 0,
        "request sockets did not die"
    );
    thread::sleep(SETTLE + Duration::from_secs(1));
    drop(clients);
    drop(listener);
    let path = tracer.output_path().to_owned();
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let entered: u64 = out
        .records
        .iter()
        .filter(|r| r["type"] == "snapshot")
        .filter_map(|r| r["entered"]["SYN_RECV"].as_u64())
        .sum();
    ensure!(
        entered == CLIENTS as u64,
        "snapshots count {entered} entries into SYN_RECV, expected {CLIENTS}"
    );

    let text = report_then_remove(&path, &[])?;
    let needle = format!("{CLIENTS} of {CLIENTS} handshakes (100%) ended without a connection");
    ensure!(text.contains(&needle), "report lacks {needle:?}:\n{text}");
    Ok(())
}

/// Three children complete their handshakes into a listener that never accepts: they are
/// ESTABLISHED (as `ss` shows) though no record has announced them yet.
#[test]
fn children_in_the_accept_queue_count_as_established() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8092;
    let net = TestNet::new("acceptq")?;
    let server_addr = SocketAddr::new(IpAddr::V4(net.server_v4()), PORT);
    let listener = in_netns(&net.server, || listen_backlog(server_addr, 16))??;
    let tracer = Tracer::start(&["--netns", net.server.name(), "--interval", "0.5"])?;
    let clients: Vec<TcpStream> = in_netns(&net.client, || {
        (0..3)
            .map(|_| connect_timeout(server_addr, IO_TIMEOUT))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    thread::sleep(SETTLE);
    let truth = ss_count(&net.server, "established")?;
    ensure!(
        truth == 3,
        "ss shows {truth} ESTABLISHED in the server namespace"
    );
    let seen = tracer.wait_for(Duration::from_secs(3), |recs| {
        recs.iter().any(|r| {
            r["type"] == "snapshot"
                && r["states"]["ESTABLISHED"].as_u64() == Some(3)
                && r["accept_queued"].as_u64() == Some(3)
        })
    });
    let last: Vec<(Value, Value)> = snapshots(&tracer)
        .iter()
        .map(|s| {
            (
                s["states"]["ESTABLISHED"].clone(),
                s["accept_queued"].clone(),
            )
        })
        .collect();
    drop(clients);
    drop(listener);
    let out = tracer.stop()?;
    out.check_no_loss()?;
    ensure!(
        seen,
        "no snapshot showed the 3 queued children as ESTABLISHED (ESTABLISHED, accept_queued): \
         {last:?}"
    );
    Ok(())
}
