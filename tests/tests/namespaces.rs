//! Without `--netns`, netwatch watches every network namespace's own counters, not only
//! its own namespace's: an incident inside a container's namespace must raise its alert
//! even when nobody named that namespace. Ground truth: the namespace's own
//! /proc/net/netstat. Root only; run with `sudo cargo xtask test`.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use netwatch_tests::alerts::{alerts, tcpext};
use netwatch_tests::sock::listen_backlog;
use netwatch_tests::tracer::SETTLE;
use netwatch_tests::{in_netns, require_root, TestNet, Tracer};

/// A backlog-1 listener that never accepts, in a namespace netwatch was not told about,
/// and eight quick connects to it: its ListenOverflows move, and the listen_overflow alert
/// names that namespace.
#[test]
fn an_untraced_namespaces_listen_overflow_is_alerted_without_netns() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: u16 = 8095;
    let net = TestNet::new("nsdisc")?;
    let server_addr = SocketAddr::new(IpAddr::V4(net.server_v4()), PORT);
    let listener = in_netns(&net.server, || listen_backlog(server_addr, 1))??;
    let tracer = Tracer::start(&["--interval", "0.5"])?.keep_file();
    let before = tcpext(&net.server, &["ListenOverflows"])?[0];
    let _clients: Vec<TcpStream> = in_netns(&net.client, || {
        (0..8)
            .filter_map(|_| {
                TcpStream::connect_timeout(&server_addr, Duration::from_millis(300)).ok()
            })
            .collect()
    })?;
    let truth = tcpext(&net.server, &["ListenOverflows"])?[0] - before;
    ensure!(
        truth > 0,
        "the kernel counted no ListenOverflows in the test namespace"
    );
    let server_ns = net.server.inode();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut reported = 0;
    let mut names = Vec::new();
    while Instant::now() < deadline {
        let mine: Vec<_> = alerts(&tracer.records_so_far())?
            .into_iter()
            .filter(|a| a.kind == "listen_overflow" && a.netns().ok() == Some(server_ns))
            .collect();
        reported = mine
            .iter()
            .map(|a| a.u64("listen_overflows").unwrap_or(0))
            .sum::<u64>();
        names = mine
            .iter()
            .map(|a| a.str("netns_name").unwrap_or_default().to_owned())
            .collect();
        if reported >= truth {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(SETTLE);
    let path = tracer.output_path().to_owned();
    let out = tracer.stop()?;
    // The listener lives to the end of the trace, where the report breaks sockets down.
    drop(listener);
    // The report breaks sockets down by namespace, by name: the server's listener.
    let text = netwatch_tests::tracer::report_then_remove(&path, &["--json"])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let listen_ns: Vec<String> = json["breakdowns"]["LISTEN"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        listen_ns.iter().any(|k| k == net.server.name()),
        "the report's LISTEN breakdown by namespace should name {}: {listen_ns:?}",
        net.server.name()
    );
    // People know the namespace by its name, not its inode.
    ensure!(
        !names.is_empty() && names.iter().all(|n| n == net.server.name()),
        "the alerts should name the namespace {}: {names:?}",
        net.server.name()
    );
    let header = out.records.first().cloned().unwrap_or_default();
    ensure!(
        header["netns_names"][server_ns.to_string()] == net.server.name(),
        "the header should name namespace {server_ns}: {}",
        header["netns_names"]
    );
    ensure!(
        reported == truth,
        "listen_overflow alerts for the untraced namespace {server_ns} add up to {reported} \
         ListenOverflows; its netstat says +{truth}; stderr:\n{}",
        out.stderr
    );
    Ok(())
}
