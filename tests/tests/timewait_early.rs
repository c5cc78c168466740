//! TIME_WAITs that end before their 60 seconds, and why: each of the kernel's reasons is
//! reproduced once with real connections between two namespaces, and the trace must count
//! exactly that one under its cause, in the summary and in `netwatch report`.
//!
//! - `syn_reuse`: the server closed first (its TIME_WAIT), the client reconnects at once from
//!   the same port: the SYN's higher sequence number lets the kernel take over the TIME_WAIT.
//! - `tw_reuse`: the client closed first (its TIME_WAIT), and connects again with the port
//!   range narrowed to that one port: `connect()` picks it and reuses its own TIME_WAIT
//!   (`tcp_tw_reuse`, timestamps on).
//! - `rst`: the server's TIME_WAIT after a large transfer, timestamps off, the client
//!   reconnects at once: its new ISN lies below what the TIME_WAIT expects, the TIME_WAIT
//!   answers the SYN with an ACK, the client answers that with an in-window RST, and the
//!   RST kills the TIME_WAIT (the RFC 1337 "assassination"). The client's SYN, resent a
//!   second later, then connects.
//!
//! Root only; run with `sudo cargo xtask test`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use netwatch_tests::sock::connect_bound;
use netwatch_tests::tcp::{accept_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tracer::{report_then_remove, SETTLE};
use netwatch_tests::{in_netns, require_root, spawn_in_netns, TestNet, Tracer};
use serde_json::Value;

const SYN_REUSE_PORT: u16 = 8081;
const TW_REUSE_PORT: u16 = 8082;
const RST_PORT: u16 = 8083;
const CLIENT_PORT: u16 = 45_000;
/// Bytes of the transfer before the RST scenario's reconnect: the new ISN grows by one per
/// 64 ns, so it stays below the TIME_WAIT's expected sequence for about 3 s.
const BIG: usize = 48 << 20;

/// Who closes first, and so keeps the TIME_WAIT.
#[derive(Clone, Copy, PartialEq)]
enum Closer {
    Client,
    Server,
}

/// Connects from `client_port`, bound to it, or (None) from a port connect() picks.
fn connect(net: &TestNet, client_port: Option<u16>, server_addr: SocketAddr) -> Result<TcpStream> {
    match client_port {
        Some(p) => {
            let local = SocketAddr::new(IpAddr::V4(net.client_v4()), p);
            connect_bound(local, server_addr, IO_TIMEOUT)
                .with_context(|| format!("connect {local} -> {server_addr}"))
        }
        None => TcpStream::connect_timeout(&server_addr, IO_TIMEOUT)
            .with_context(|| format!("connect -> {server_addr} from a port connect() picks")),
    }
}

/// One connection from `client_port` (see [`connect`]) to `port`, `bytes` sent by the
/// client, closed by `closer` first (the other side waits for its FIN). The server side runs
/// on a thread in the server namespace; the listener stays open for the reconnect.
fn converse(
    net: &TestNet,
    listener: &TcpListener,
    port: u16,
    client_port: Option<u16>,
    bytes: usize,
    closer: Closer,
) -> Result<()> {
    let server_addr = SocketAddr::new(IpAddr::V4(net.server_v4()), port);
    let listener = listener.try_clone()?;
    let server = spawn_in_netns(&net.server, move || -> Result<()> {
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT).context("accept")?;
        let mut got = vec![0u8; bytes];
        s.read_exact(&mut got).context("server read")?;
        if closer == Closer::Client {
            let rest = read_to_eof(&mut s, IO_TIMEOUT).context("server read to EOF")?;
            ensure!(rest.is_empty(), "unexpected {} bytes", rest.len());
        }
        drop(s);
        Ok(())
    })?;
    let client = in_netns(&net.client, || -> Result<()> {
        let mut c = connect(net, client_port, server_addr)?;
        c.write_all(&vec![b'x'; bytes])?;
        if closer == Closer::Server {
            let rest = read_to_eof(&mut c, IO_TIMEOUT).context("client read to EOF")?;
            ensure!(rest.is_empty(), "unexpected {} bytes", rest.len());
        }
        drop(c);
        Ok(())
    });
    server.join()??;
    client?
}

/// Connects again from the same client port (the reuse under test), bound to it or (None)
/// left to connect() to pick, and lets the server accept and close it, so nothing is left
/// behind.
fn reconnect(
    net: &TestNet,
    listener: &TcpListener,
    port: u16,
    client_port: Option<u16>,
) -> Result<()> {
    let server_addr = SocketAddr::new(IpAddr::V4(net.server_v4()), port);
    let listener = listener.try_clone()?;
    let server = spawn_in_netns(&net.server, move || -> Result<()> {
        let (s, _) = accept_timeout(&listener, IO_TIMEOUT).context("accept the reconnect")?;
        drop(s);
        Ok(())
    })?;
    let client = in_netns(&net.client, || connect(net, client_port, server_addr));
    server.join()??;
    drop(client?);
    Ok(())
}

fn listen(net: &TestNet, port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::new(IpAddr::V4(net.server_v4()), port);
    in_netns(&net.server, || TcpListener::bind(addr))?.with_context(|| format!("bind {addr}"))
}

fn early_ends(summary: &Value) -> Result<(u64, u64, u64, u64)> {
    let e = &summary["timewait_early_ends"];
    let n = |k: &str| {
        e[k].as_u64()
            .with_context(|| format!("summary has no timewait_early_ends.{k}: {summary}"))
    };
    Ok((n("syn_reuse")?, n("tw_reuse")?, n("rst")?, n("other")?))
}

#[test]
fn each_early_end_of_time_wait_is_counted_under_its_cause() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("twearly")?;
    let syn_l = listen(&net, SYN_REUSE_PORT)?;
    let tw_l = listen(&net, TW_REUSE_PORT)?;
    let rst_l = listen(&net, RST_PORT)?;
    let tracer = Tracer::start(&[
        "--netns",
        net.client.name(),
        "--netns",
        net.server.name(),
        "--interval",
        "1",
    ])?
    .keep_file();

    converse(
        &net,
        &syn_l,
        SYN_REUSE_PORT,
        Some(CLIENT_PORT),
        1,
        Closer::Server,
    )?;
    reconnect(&net, &syn_l, SYN_REUSE_PORT, Some(CLIENT_PORT))?;

    // connect() picks its ports from one, so the reconnect can only reuse the TIME_WAIT the
    // first connection left (autobound: a port taken by bind() is never reused so), which
    // tcp_tw_reuse allows once a whole second (as the kernel counts) has passed since its
    // last timestamp.
    let range = format!("{} {}", CLIENT_PORT + 1, CLIENT_PORT + 1);
    net.client.sysctl("net.ipv4.ip_local_port_range", &range)?;
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    converse(&net, &tw_l, TW_REUSE_PORT, None, 1, Closer::Client)?;
    thread::sleep(Duration::from_millis(2_100));
    reconnect(&net, &tw_l, TW_REUSE_PORT, None)?;

    net.client.sysctl("net.ipv4.tcp_timestamps", "0")?;
    converse(
        &net,
        &rst_l,
        RST_PORT,
        Some(CLIENT_PORT + 2),
        BIG,
        Closer::Server,
    )?;
    reconnect(&net, &rst_l, RST_PORT, Some(CLIENT_PORT + 2))?;

    // Every reconnect's TIME_WAIT and its evidence are in; the ones just made by closing
    // the reconnects live on (60 s) and are not early ends.
    thread::sleep(SETTLE + Duration::from_secs(1));
    let path = tracer.output_path().to_owned();
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let summary = out
        .records
        .iter()
        .rev()
        .find(|r| r["type"] == "summary")
        .context("no summary record")?;
    let got = early_ends(summary)?;
    let resets = out
        .records
        .iter()
        .filter(|r| r["type"] == "timewait_reset")
        .count();
    eprintln!("early ends (syn_reuse, tw_reuse, rst, other) = {got:?}; {resets} timewait_reset");
    if got != (1, 1, 1, 0) {
        // What the kernel side reported for the three scenarios' ports, for the postmortem
        // of a failure that a rerun may not repeat.
        let ports = [SYN_REUSE_PORT, TW_REUSE_PORT, RST_PORT];
        let ours = |r: &&Value| {
            ["sport", "dport"].iter().any(|k| {
                r[*k]
                    .as_u64()
                    .is_some_and(|p| ports.iter().any(|&q| u64::from(q) == p))
            }) || r["type"] == "timewait_reset"
        };
        let evidence: Vec<String> = out
            .records
            .iter()
            .filter(ours)
            .map(|r| r.to_string())
            .collect();
        let _ = std::fs::remove_file(&path);
        anyhow::bail!(
            "expected one early end of each cause, got (syn_reuse, tw_reuse, rst, other) = \
             {got:?}; timewait_reset records: {resets}\nsummary: {summary}\nrecords of the \
             scenarios' ports:\n{}\nstderr:\n{}",
            evidence.join("\n"),
            out.stderr
        );
    }

    // The report replays the same classification and explains it.
    let text = report_then_remove(&path, &[])?;
    for needle in [
        "3 of ",
        "TIME_WAITs ended before their 60 s",
        "1 syn_reuse",
        "1 tw_reuse",
        "1 rst",
        "tcp_rfc1337",
    ] {
        ensure!(text.contains(needle), "report lacks {needle:?}:\n{text}");
    }
    Ok(())
}
