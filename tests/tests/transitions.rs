//! Foundation tests of `netwatch trace`: the exact TCP state transitions of real connections
//! between two namespaces, their addresses, ports, namespace and timing fields, and the
//! filters. Root only (see `netwatch_tests::require_root`); run with `sudo cargo xtask test`.
//!
//! Every test makes its own "client" and "server" namespaces, linked by a veth pair, and
//! filters netwatch to them, so the machine's other TCP traffic never shows up. The `--netns`
//! forms (name, path, inode) are spread over the tests so that each form is exercised.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::expected::{self, Seq};
use netwatch_tests::records::{dump, dump_refs, of_sock, sock_id_between, sock_ids_where};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tracer::SETTLE;
use netwatch_tests::{
    in_netns, require_root, spawn_in_netns, transitions, Netns, TestNet, TraceOutput, Tracer,
    Transition,
};
use serde_json::Value;

/// Bound on waiting for the expected records to show up in the output file.
const RECORD_WAIT: Duration = Duration::from_secs(5);
const SERVER_PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// (client address, server address) on the test link.
    fn ips(self, net: &TestNet) -> (IpAddr, IpAddr) {
        match self {
            Family::V4 => (net.client_v4().into(), net.server_v4().into()),
            Family::V6 => (net.client_v6().into(), net.server_v6().into()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Closer {
    Client,
    Server,
}

/// How a namespace is named on netwatch's command line.
#[derive(Clone, Copy, Debug)]
enum NsArg {
    Name,
    Path,
    Inode,
}

fn ns_arg(ns: &Netns, form: NsArg) -> String {
    match form {
        NsArg::Name => ns.name().to_owned(),
        NsArg::Path => ns.path().display().to_string(),
        NsArg::Inode => ns.inode().to_string(),
    }
}

/// `--netns <client> --netns <server>` plus `extra`.
fn netns_args(net: &TestNet, client: NsArg, server: NsArg, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--netns".to_owned(),
        ns_arg(&net.client, client),
        "--netns".to_owned(),
        ns_arg(&net.server, server),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn start_tracer(args: &[String]) -> Result<Tracer> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Tracer::start(&args).with_context(|| format!("netwatch trace {}", args.join(" ")))
}

/// The endpoints of one finished connection, as the sockets themselves reported them.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client_local: SocketAddr,
    client_peer: SocketAddr,
    server_local: SocketAddr,
    server_peer: SocketAddr,
    closer: Closer,
    family: Family,
}

/// One complete connection from the client namespace to `server_ip:port` in the server
/// namespace: listen, connect, one byte client -> server, close in the order `closer` says,
/// close the listener. Every wait is bounded.
///
/// The ordering is made deterministic so that the transition sequences are exact: the side
/// that closes second waits for EOF (the first side's FIN) before closing.
fn converse(net: &TestNet, family: Family, port: u16, closer: Closer) -> Result<Conn> {
    let (_, server_ip) = family.ips(net);
    let server_addr = SocketAddr::new(server_ip, port);
    let listener = in_netns(&net.server, || TcpListener::bind(server_addr))?
        .with_context(|| format!("bind {server_addr} in {}", net.server.name()))?;
    let server = spawn_in_netns(&net.server, move || -> Result<(SocketAddr, SocketAddr)> {
        let (mut s, peer) = accept_timeout(&listener, IO_TIMEOUT).context("accept")?;
        let local = s.local_addr()?;
        match closer {
            Closer::Client => {
                let data = read_to_eof(&mut s, IO_TIMEOUT).context("server read to EOF")?;
                ensure!(data == b"x", "server read {data:?}");
            }
            Closer::Server => {
                // Read everything the client sent: closing with unread data sends a RST.
                let mut b = [0u8; 1];
                s.read_exact(&mut b).context("server read")?;
                ensure!(&b == b"x", "server read {b:?}");
            }
        }
        drop(s);
        drop(listener);
        Ok((local, peer))
    })?;
    let client = in_netns(&net.client, || -> Result<(SocketAddr, SocketAddr)> {
        let mut c = connect_timeout(server_addr, IO_TIMEOUT)
            .with_context(|| format!("connect to {server_addr}"))?;
        let addrs = (c.local_addr()?, c.peer_addr()?);
        c.write_all(b"x")?;
        if closer == Closer::Server {
            let data = read_to_eof(&mut c, IO_TIMEOUT).context("client read to EOF")?;
            ensure!(data.is_empty(), "client read {data:?}");
        }
        drop(c);
        Ok(addrs)
    });
    // Join the server even if the client failed, so its error is not lost.
    let server = server.join();
    let (client_local, client_peer) = client??;
    let (server_local, server_peer) = server??;
    ensure!(
        client_peer == server_local && server_peer == client_local,
        "endpoints disagree: client {client_local}->{client_peer}, server {server_local}<-{server_peer}"
    );
    Ok(Conn {
        client_local,
        client_peer,
        server_local,
        server_peer,
        closer,
        family,
    })
}

/// Checks one socket's records: the exact `(old, new)` sequence, the namespace and family on
/// every record, `dwell_ns` null first (but on SYN_RECV, seen from the SYN) and an integer after, time not running backwards, and
/// (when given) the endpoints on the record entering ESTABLISHED.
fn check_socket(
    all: &[Transition],
    what: &str,
    sock_id: u64,
    expected: &[(String, String)],
    netns: u64,
    family: Family,
    established: Option<(SocketAddr, SocketAddr)>,
) -> Result<()> {
    let recs = of_sock(all, sock_id);
    let ctx = || format!("{what} (sock_id {sock_id}):\n{}", dump_refs(&recs));
    let got: Vec<(String, String)> = recs
        .iter()
        .map(|t| (t.old.clone(), t.new.clone()))
        .collect();
    ensure!(
        got == expected,
        "{what}: expected {expected:?}\n got {got:?}\n{}",
        ctx()
    );
    for (i, t) in recs.iter().enumerate() {
        ensure!(
            t.netns == netns,
            "{what}: record {i} has netns {}, expected {netns}; {}",
            t.netns,
            ctx()
        );
        ensure!(
            t.family == family.name(),
            "{what}: record {i} has family {:?}; {}",
            t.family,
            ctx()
        );
        ensure!(
            t.ts.ends_with('Z'),
            "{what}: record {i} ts {:?} is not UTC",
            t.ts
        );
        match (i, t.dwell_ns) {
            (0, None) => {}
            // A request socket's SYN_RECV is seen from the SYN on.
            (0, Some(_)) if t.old == "SYN_RECV" => {}
            (0, Some(d)) => bail!(
                "{what}: first record has dwell_ns {d}, expected null; {}",
                ctx()
            ),
            (_, None) => bail!("{what}: record {i} has dwell_ns null; {}", ctx()),
            (_, Some(_)) => {}
        }
        if i > 0 {
            ensure!(
                t.mono_ns >= recs[i - 1].mono_ns,
                "{what}: mono_ns goes backwards at record {i}; {}",
                ctx()
            );
        }
    }
    if let Some((local, remote)) = established {
        let est = recs
            .iter()
            .find(|t| t.new == "ESTABLISHED")
            .with_context(|| format!("{what}: no ESTABLISHED record"))?;
        ensure!(
            est.is_between(local, remote),
            "{what}: ESTABLISHED record is {}:{} -> {}:{}, the socket is {local} -> {remote}",
            est.saddr,
            est.sport,
            est.daddr,
            est.dport
        );
    }
    Ok(())
}

/// The sock_ids of a connection's three sockets: (client, accepted child, listener).
fn conn_socks(all: &[Transition], net: &TestNet, conn: &Conn) -> Result<(u64, u64, u64)> {
    let client = sock_id_between(all, conn.client_local, conn.client_peer).context("client")?;
    let child = sock_id_between(all, conn.server_local, conn.server_peer).context("server")?;
    let port = conn.server_local.port();
    let server_ns = net.server.inode();
    let listener = match sock_ids_where(all, |t| {
        t.new == "LISTEN" && t.sport == port && t.netns == server_ns
    })
    .as_slice()
    {
        [id] => *id,
        other => bail!("expected one listener on port {port}, found {other:?}"),
    };
    Ok((client, child, listener))
}

fn concat(parts: &[Seq]) -> Vec<(String, String)> {
    expected::seq(parts)
}

/// Checks all three sockets of `conn` (client, accepted child, listener).
fn check_conn(all: &[Transition], net: &TestNet, conn: &Conn) -> Result<()> {
    let (client, child, listener) = conn_socks(all, net, conn)?;
    let (client_seq, server_seq) = match conn.closer {
        Closer::Client => (
            expected::client_active_close_client(),
            expected::client_active_close_server(),
        ),
        Closer::Server => (
            expected::server_active_close_client(),
            expected::server_active_close_server(),
        ),
    };
    check_socket(
        all,
        "client socket",
        client,
        &client_seq,
        net.client.inode(),
        conn.family,
        Some((conn.client_local, conn.client_peer)),
    )?;
    check_socket(
        all,
        "accepted socket",
        child,
        &server_seq,
        net.server.inode(),
        conn.family,
        Some((conn.server_local, conn.server_peer)),
    )?;
    check_socket(
        all,
        "listener",
        listener,
        &concat(&[expected::LISTENER]),
        net.server.inode(),
        conn.family,
        None,
    )?;
    Ok(())
}

/// Polls the running tracer's output until `check` passes (bounded), lets the kernel settle,
/// stops the tracer, and checks that nothing was lost. The caller checks the final records.
fn settle_and_stop(
    tracer: Tracer,
    check: impl Fn(&[Transition]) -> Result<()>,
) -> Result<(TraceOutput, Vec<Transition>)> {
    tracer.wait_for(RECORD_WAIT, |records: &[Value]| {
        transitions(records).is_ok_and(|ts| check(&ts).is_ok())
    });
    thread::sleep(SETTLE);
    let out = tracer.stop()?;
    out.check_no_loss()?;
    let ts = transitions(&out.records)?;
    Ok((out, ts))
}

/// Scenario 1, 2 and 4: one connection, exact sequences on its three sockets, and no other
/// socket in the records.
fn one_connection(
    tag: &str,
    family: Family,
    closer: Closer,
    client_arg: NsArg,
    server_arg: NsArg,
) -> Result<()> {
    let net = TestNet::new(tag)?;
    let tracer = start_tracer(&netns_args(&net, client_arg, server_arg, &[]))?;
    let conn = converse(&net, family, SERVER_PORT, closer)?;
    let (_, ts) = settle_and_stop(tracer, |ts| check_conn(ts, &net, &conn))?;
    check_conn(&ts, &net, &conn).with_context(|| format!("all records:\n{}", dump(&ts)))?;
    let (client, child, listener) = conn_socks(&ts, &net, &conn)?;
    let others = sock_ids_where(&ts, |t| ![client, child, listener].contains(&t.sock_id));
    ensure!(
        others.is_empty(),
        "records of unexpected sockets {others:?}:\n{}",
        dump(&ts)
    );
    Ok(())
}

#[test]
fn client_active_close_ipv4() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    one_connection(
        "cac4",
        Family::V4,
        Closer::Client,
        NsArg::Inode,
        NsArg::Inode,
    )
}

#[test]
fn server_active_close_ipv4() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    one_connection("sac4", Family::V4, Closer::Server, NsArg::Name, NsArg::Path)
}

#[test]
fn client_active_close_ipv6() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    one_connection("cac6", Family::V6, Closer::Client, NsArg::Path, NsArg::Name)
}

/// Scenario 3: connect() to a port with no listener: the server's kernel answers the SYN
/// with a RST, connect() fails with ECONNREFUSED, and the client socket goes
/// CLOSE -> SYN_SENT -> CLOSE. No socket exists on the server side at all.
#[test]
fn connection_refused_ipv4() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("ref4")?;
    let tracer = start_tracer(&netns_args(&net, NsArg::Name, NsArg::Inode, &[]))?;
    let target = SocketAddr::new(net.server_v4().into(), OTHER_PORT);
    let err = in_netns(&net.client, || connect_timeout(target, IO_TIMEOUT))?
        .err()
        .with_context(|| format!("connect to {target} succeeded; nothing listens there"))?;
    ensure!(
        err.raw_os_error() == Some(libc::ECONNREFUSED),
        "connect to {target}: expected ECONNREFUSED, got {err}"
    );

    let client_ns = net.client.inode();
    let find = |ts: &[Transition]| -> Result<u64> {
        match sock_ids_where(ts, |t| t.netns == client_ns && t.remote() == Some(target)).as_slice()
        {
            [id] => Ok(*id),
            other => bail!("expected one socket towards {target}, found {other:?}"),
        }
    };
    let check = |ts: &[Transition]| -> Result<()> {
        let id = find(ts)?;
        check_socket(
            ts,
            "refused client socket",
            id,
            &concat(&[expected::REFUSED]),
            client_ns,
            Family::V4,
            None,
        )
    };
    let (_, ts) = settle_and_stop(tracer, check)?;
    check(&ts).with_context(|| format!("all records:\n{}", dump(&ts)))?;
    ensure!(
        ts.len() == expected::REFUSED.len(),
        "records beyond the refused socket's:\n{}",
        dump(&ts)
    );
    Ok(())
}

/// Scenario 5a: `--netns <server>` alone keeps the server's sockets and drops every record of
/// the client's namespace.
#[test]
fn netns_filter_excludes_other_namespace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("fns")?;
    let tracer = start_tracer(&["--netns".to_owned(), net.server.inode().to_string()])?;
    let conn = converse(&net, Family::V4, SERVER_PORT, Closer::Client)?;
    let server_ns = net.server.inode();
    // Positive control: the server's sockets are all there, with exact sequences.
    let check_server = |ts: &[Transition]| -> Result<()> {
        let child = sock_id_between(ts, conn.server_local, conn.server_peer)?;
        check_socket(
            ts,
            "accepted socket",
            child,
            &expected::client_active_close_server(),
            server_ns,
            Family::V4,
            Some((conn.server_local, conn.server_peer)),
        )?;
        let listener =
            match sock_ids_where(ts, |t| t.new == "LISTEN" && t.netns == server_ns).as_slice() {
                [id] => *id,
                other => bail!("expected one listener, found {other:?}"),
            };
        check_socket(
            ts,
            "listener",
            listener,
            &concat(&[expected::LISTENER]),
            server_ns,
            Family::V4,
            None,
        )
    };
    let (_, ts) = settle_and_stop(tracer, check_server)?;
    check_server(&ts).with_context(|| format!("all records:\n{}", dump(&ts)))?;
    let client_ns = net.client.inode();
    let leaked: Vec<&Transition> = ts.iter().filter(|t| t.netns != server_ns).collect();
    ensure!(
        leaked.is_empty(),
        "--netns {server_ns} let through records of other namespaces (client is {client_ns}):\n{}",
        dump_refs(&leaked)
    );
    Ok(())
}

/// Scenario 5b: `--port <other>` drops a whole connection on another port. A second
/// connection, on the filtered port, shows that the tracer was seeing traffic at all.
#[test]
fn port_filter_excludes_other_ports() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("fport")?;
    let port = OTHER_PORT.to_string();
    let tracer = start_tracer(&netns_args(
        &net,
        NsArg::Inode,
        NsArg::Inode,
        &["--port", &port],
    ))?;
    let excluded = converse(&net, Family::V4, SERVER_PORT, Closer::Client)?;
    let included = converse(&net, Family::V4, OTHER_PORT, Closer::Client)?;
    let (_, ts) = settle_and_stop(tracer, |ts| check_conn(ts, &net, &included))?;
    check_conn(&ts, &net, &included).with_context(|| format!("all records:\n{}", dump(&ts)))?;
    // Every record of the excluded connection has port 8080 on one side (the client's first
    // one too: its remote port is set before CLOSE -> SYN_SENT). Its client's local port may
    // be reused by the included connection (another 4-tuple), so it proves nothing here.
    let leaked: Vec<&Transition> = ts
        .iter()
        .filter(|t| {
            t.sport == excluded.server_local.port()
                || t.dport == excluded.server_local.port()
                || (t.sport != OTHER_PORT && t.dport != OTHER_PORT)
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "--port {OTHER_PORT} let through other ports' records:\n{}",
        dump_refs(&leaked)
    );
    Ok(())
}
