//! `netwatch serve` scraped by a real Prometheus server (Debian's package), every second,
//! while real TCP traffic runs between two test namespaces; every assertion goes through
//! Prometheus's HTTP query API, against ground truth the test controls:
//!
//! 1. the sockets gauge of each namespace equals what `ss` lists there, state by state;
//! 2. the FIN_WAIT2 dwell median (`histogram_quantile`) of orphans whose peer never closes,
//!    with `tcp_fin_timeout` = 3 s in the namespace, is 3 s within 10 %;
//! 3. an alert counter moves for a reproduced incident (TIME_WAIT overflow: two buckets,
//!    ten closes, as in incidents.rs);
//! 4. a socket made by a process inside a cgroup named like a docker scope carries that
//!    container's short id as its `container` label.
//!
//! And without Prometheus: the exporter survives scrapers that vanish mid-response and a
//! flood of connections, and `/metrics` stays bounded (size and series) with as many
//! TIME_WAIT sockets as the test makes in a bounded time (aiming at 100k).
//!
//! Under `CI=true` a missing prometheus binary (or root) fails the tests. Every process,
//! namespace and cgroup is removed on the way out, failures included (guards).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netwatch_tests::cgroup::Scope;
use netwatch_tests::prom::{free_port, http_get, require_prometheus, Prometheus, Sample};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::{in_netns, require_root, spawn_in_netns, Netns, TestNet, Tracer};

/// How long a scraped value may take to show in a query (scrape every 1 s, netwatch's
/// interval 1 s, plus start-up).
const VISIBLE: Duration = Duration::from_secs(20);

fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind(addr))?.with_context(|| format!("bind {addr}"))
}

fn connect_from(ns: &Netns, addr: SocketAddr) -> Result<TcpStream> {
    in_netns(ns, || connect_timeout(addr, IO_TIMEOUT))?
        .with_context(|| format!("connect to {addr} from {}", ns.name()))
}

/// `netwatch serve` on a free loopback port, tracing `spaces`.
fn serve(spaces: &[&Netns]) -> Result<(Tracer, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = addr.to_string();
    let names: Vec<String> = spaces.iter().map(|n| n.name().to_owned()).collect();
    let mut args = vec!["--listen", &listen];
    for n in &names {
        args.extend(["--netns", n]);
    }
    Ok((Tracer::serve(&args)?, addr))
}

/// Sockets per state in `ns`, as `ss` lists them, under the kernel's state names.
fn ss_counts(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let out = ns.exec(&["ss", "-tanH"])?;
    let mut counts = BTreeMap::new();
    for line in out.lines() {
        let Some(st) = line.split_whitespace().next() else {
            continue;
        };
        let name = match st {
            "ESTAB" => "ESTABLISHED".to_owned(),
            "FIN-WAIT-1" => "FIN_WAIT1".to_owned(),
            "FIN-WAIT-2" => "FIN_WAIT2".to_owned(),
            other => other.replace('-', "_"),
        };
        *counts.entry(name).or_default() += 1;
    }
    Ok(counts)
}

/// `netwatch_tcp_sockets` of `ns` by state, non-zero ones only.
fn gauge_counts(samples: &[Sample]) -> BTreeMap<String, u64> {
    samples
        .iter()
        .filter(|s| s.value > 0.0)
        .map(|s| (s.label("state").to_owned(), s.value as u64))
        .collect()
}

#[test]
fn prometheus_reads_netwatch_metrics() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(bin) = require_prometheus() else {
        return Ok(());
    };
    let net = TestNet::new("prom")?;
    net.client.sysctl("net.ipv4.tcp_fin_timeout", "3")?;
    let (netwatch, metrics) = serve(&[&net.client, &net.server])?;
    let prom = Prometheus::start(&bin, metrics)?;
    let (_, up) = prom.wait_for("up", VISIBLE, |r| r.iter().any(|s| s.value == 1.0))?;
    ensure!(
        up,
        "Prometheus never scraped netwatch; stderr:\n{}",
        netwatch.stderr_text()
    );

    // 1. Held connections and a listener: the gauges agree with ss in both namespaces.
    let addr = SocketAddr::new(net.server_v4().into(), 8101);
    let listener = listen_in(&net.server, addr)?;
    let mut held = Vec::new();
    for _ in 0..5 {
        let c = connect_from(&net.client, addr)?;
        held.push((c, accept_timeout(&listener, IO_TIMEOUT)?.0));
    }
    for ns in [&net.server, &net.client] {
        let truth = ss_counts(ns)?;
        let q = format!("netwatch_tcp_sockets{{netns=\"{}\"}}", ns.name());
        let (got, same) = prom.wait_for(&q, VISIBLE, |r| gauge_counts(r) == truth)?;
        ensure!(
            same,
            "{}: netwatch_tcp_sockets {:?}, ss {truth:?}",
            ns.name(),
            gauge_counts(&got)
        );
        eprintln!("sockets gauge of {} = ss: {truth:?}", ns.name());
    }

    // 2. Orphaned FIN_WAIT2 whose peer never closes: tcp_fin_timeout (3 s) each.
    let mut peers = Vec::new();
    for _ in 0..10 {
        let c = connect_from(&net.client, addr)?;
        peers.push(accept_timeout(&listener, IO_TIMEOUT)?.0);
        drop(c);
    }
    let q = "histogram_quantile(0.5, netwatch_tcp_state_dwell_seconds_bucket{state=\"FIN_WAIT2\"})";
    let count = "netwatch_tcp_state_dwell_seconds_count{state=\"FIN_WAIT2\"}";
    let (_, ended) = prom.wait_for(count, VISIBLE, |r| r.iter().any(|s| s.value >= 10.0))?;
    ensure!(ended, "fewer than 10 FIN_WAIT2 dwells after {VISIBLE:?}");
    let median = prom
        .query(q)?
        .first()
        .map(|s| s.value)
        .context("no median")?;
    eprintln!("FIN_WAIT2 dwell median by histogram_quantile: {median:.3} s (tcp_fin_timeout 3 s)");
    ensure!(
        (median - 3.0).abs() <= 0.3,
        "FIN_WAIT2 median {median} s is not 3 s within 10 %"
    );
    drop(peers);

    // 3. TIME_WAIT overflow: two buckets, ten closes by the client.
    net.client.sysctl("net.ipv4.tcp_max_tw_buckets", "2")?;
    for i in 0..10 {
        let c = connect_from(&net.client, addr)?;
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT)?;
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT).with_context(|| format!("conn {i}"))?;
        drop(s);
        thread::sleep(Duration::from_millis(10));
    }
    let q = "netwatch_alerts_total{kind=\"timewait_overflow\"}";
    let (got, moved) = prom.wait_for(q, VISIBLE, |r| r.iter().any(|s| s.value >= 1.0))?;
    ensure!(moved, "{q} did not move: {got:?}");
    eprintln!("{q} = {}", got[0].value);

    // 4. A socket made inside a cgroup named like a docker scope.
    let id = "4e7c0ffee0ddba11".repeat(4);
    let mut scope = Scope::new(&format!("docker-{id}.scope"))?;
    scope.spawn(&format!(
        "exec ip netns exec {} bash -c 'exec 3<>/dev/tcp/{}/{}; sleep 60'",
        net.client.name(),
        addr.ip(),
        addr.port()
    ))?;
    let (_accepted, _) = accept_timeout(&listener, IO_TIMEOUT)?;
    let q = format!(
        "netwatch_tcp_sockets{{container=\"{}\",state=\"ESTABLISHED\"}}",
        &id[..12]
    );
    let (got, seen) = prom.wait_for(&q, VISIBLE, |r| r.iter().any(|s| s.value == 1.0))?;
    ensure!(
        seen,
        "no ESTABLISHED socket labelled container={} (cgroup {}): {got:?}",
        &id[..12],
        scope.id()?
    );
    ensure!(got[0].label("netns") == net.client.name(), "{got:?}");
    eprintln!("container label: {:?}", got[0].labels);

    drop(scope);
    drop(held);
    drop(prom);
    let (status, stderr) = netwatch.exit_with(Some(libc::SIGTERM), Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "netwatch serve exited {status}; stderr:\n{stderr}"
    );
    Ok(())
}

/// A request for /metrics whose reader reads a few bytes and resets the connection.
fn vanish_mid_response(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut some = [0u8; 64];
    let _ = s.read(&mut some)?;
    // SO_LINGER 0: close() sends a RST instead of a FIN.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option struct.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok(())
}

/// Series and bytes of `/metrics` now.
fn exposition(addr: SocketAddr) -> Result<(usize, usize)> {
    let (status, body) = http_get(addr, "/metrics", "text/plain")?;
    ensure!(status == 200, "/metrics answered {status}");
    let text = String::from_utf8(body)?;
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok((series, text.len()))
}

/// Most series `/metrics` may have (docs/metrics.md), and most bytes.
const MAX_SERIES: usize = 2000;
const MAX_BYTES: usize = 512 << 10;

#[test]
fn the_exporter_survives_abuse_and_stays_bounded() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("flood")?;
    let (netwatch, metrics) = serve(&[&net.client, &net.server])?;
    let healthy = |within: Duration| -> bool {
        let deadline = Instant::now() + within;
        loop {
            if matches!(http_get(metrics, "/healthz", "*/*"), Ok((200, _))) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(200));
        }
    };
    ensure!(
        healthy(Duration::from_secs(10)),
        "/healthz never answered 200"
    );

    // Scrapers that vanish mid-response.
    for _ in 0..50 {
        vanish_mid_response(metrics)?;
    }
    ensure!(
        healthy(Duration::from_secs(2)),
        "unhealthy after vanishing scrapers"
    );

    // A flood: 300 idle connections and 8 threads of back-to-back scrapes; then more idle
    // connections than the exporter keeps (its cap), which must not kill it.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&metrics, IO_TIMEOUT).ok())
        .collect();
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                (0..50)
                    .filter(|_| matches!(http_get(metrics, "/metrics", "*/*"), Ok((200, _))))
                    .count()
            })
        })
        .collect();
    let served: usize = scrapers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    // Idle connections are dropped after the header timeout (3 s); beyond the cap new ones
    // are closed at once: service never stops for long.
    ensure!(
        healthy(Duration::from_secs(10)),
        "/healthz not back within 10 s of a flood; stderr:\n{}",
        netwatch.stderr_text()
    );
    drop(idle);
    eprintln!("flood: {served} of 400 scrapes served while 300 idle connections were open");
    ensure!(
        served >= 360,
        "only {served} of 400 scrapes served during the flood"
    );

    let over: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect_timeout(&metrics, IO_TIMEOUT).ok())
        .collect();
    ensure!(
        healthy(Duration::from_secs(10)),
        "/healthz not back within 10 s of {} idle connections",
        over.len()
    );
    drop(over);

    // Many sockets: client-closed connections to two ports leave TIME_WAIT in the client
    // namespace; bounded in count (100k) and time (60 s).
    const WANT: usize = 100_000;
    net.client.sysctl("net.ipv4.tcp_max_tw_buckets", "262144")?;
    net.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let ports = [8201u16, 8202];
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for port in ports {
        let addr = SocketAddr::new(net.server_v4().into(), port);
        let l = listen_in(&net.server, addr)?;
        l.set_nonblocking(true)?;
        let stop = stop.clone();
        servers.push(thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(70);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }
    // One connecting thread per destination port, each up to half the sockets (a port
    // gives ~64k local ports towards one destination; `connect` fails once they are used).
    let server_ip = net.server_v4();
    let mut makers = Vec::new();
    for port in ports {
        makers.push(spawn_in_netns(&net.client, move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let addr = SocketAddr::new(server_ip.into(), port);
            let mut made = 0;
            while made < WANT / ports.len() && Instant::now() < deadline {
                match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                    Ok(c) => {
                        drop(c);
                        made += 1;
                    }
                    Err(_) => break,
                }
            }
            made
        })?);
    }
    let made: Result<Vec<usize>> = makers.into_iter().map(|m| m.join()).collect();
    stop.store(true, Ordering::Relaxed);
    let made: usize = made?.into_iter().sum();
    thread::sleep(Duration::from_secs(3));
    let tw = net
        .client
        .exec(&["ss", "-tanH", "state", "time-wait"])?
        .lines()
        .count();
    let (series, bytes) = exposition(metrics)?;
    eprintln!(
        "{made} connections made, {tw} TIME_WAIT sockets in the client namespace: /metrics \
         {series} series, {bytes} bytes"
    );
    ensure!(made >= 10_000, "only {made} connections in 60 s");
    ensure!(
        series <= MAX_SERIES && bytes <= MAX_BYTES,
        "/metrics has {series} series, {bytes} bytes with {tw} TIME_WAIT sockets"
    );
    for s in servers {
        let _ = s.join();
    }
    let (status, stderr) = netwatch.exit_with(Some(libc::SIGTERM), Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "netwatch serve exited {status}; stderr:\n{stderr}"
    );
    Ok(())
}
