//! Tests of the harness itself, without netwatch: namespaces, veth links, running code inside
//! a namespace, and real TCP between two namespaces. If these fail, the netwatch tests'
//! failures mean nothing.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use netwatch_tests::netns::current_thread_netns;
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::{in_netns, require_root, spawn_in_netns, Netns, TestNet};

#[test]
fn netns_guard_creates_enters_and_deletes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let root = current_thread_netns()?;
    let ns = Netns::new("guard")?;
    let path = ns.path();
    ensure!(path.exists(), "{} missing", path.display());
    ensure!(
        ns.name()
            .starts_with(&format!("nwt-{}-guard-", std::process::id())),
        "unexpected name {}",
        ns.name()
    );
    ensure!(ns.inode() != root, "namespace inode equals the root's");

    // The thread in_netns runs on is in the namespace; the caller's thread is not.
    let inside = in_netns(&ns, current_thread_netns)??;
    ensure!(
        inside == ns.inode(),
        "in_netns thread is in {inside}, expected {}",
        ns.inode()
    );
    ensure!(current_thread_netns()? == root, "caller's thread moved");

    // lo is up, and exec runs inside (only lo exists there).
    let links = ns.exec(&["ip", "-o", "link", "show"])?;
    ensure!(
        links.lines().count() == 1 && links.contains("lo:") && links.contains("UP"),
        "links in {}: {links}",
        ns.name()
    );
    let err = ns.exec(&["false"]).expect_err("`false` must fail");
    ensure!(format!("{err:#}").contains("false"), "error: {err:#}");

    drop(ns);
    ensure!(!path.exists(), "{} left behind", path.display());
    Ok(())
}

#[test]
fn netns_is_deleted_when_a_test_panics() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new("panic").expect("create namespace");
        seen = Some(ns.path());
        panic!("deliberate failure with {} alive", ns.name());
    }));
    ensure!(result.is_err(), "closure should have panicked");
    let path = seen.context("namespace was not created")?;
    ensure!(!path.exists(), "{} left behind after panic", path.display());
    Ok(())
}

#[test]
fn sysctl_is_per_namespace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let key = "net.ipv4.tcp_fin_timeout";
    let before = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")?;
    let ns = Netns::new("sysctl")?;
    ns.sysctl(key, "7")?;
    ensure!(ns.sysctl_get(key)? == "7", "sysctl_get after set");
    let via_exec = ns.exec(&["cat", "/proc/sys/net/ipv4/tcp_fin_timeout"])?;
    ensure!(via_exec.trim() == "7", "ip netns exec sees {via_exec:?}");
    let after = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")?;
    ensure!(
        before == after,
        "root namespace value changed: {before:?} -> {after:?}"
    );
    Ok(())
}

/// One echo round trip from the client namespace to the server namespace; checks that each
/// side sees the other's veth address (the traffic really crossed the veth).
fn echo(net: &TestNet, client_ip: IpAddr, server_ip: IpAddr) -> Result<()> {
    let server_addr = SocketAddr::new(server_ip, 7007);
    let listener = in_netns(&net.server, || TcpListener::bind(server_addr))?
        .with_context(|| format!("bind {server_addr}"))?;
    let server = spawn_in_netns(&net.server, move || -> Result<SocketAddr> {
        let (mut s, peer) = accept_timeout(&listener, IO_TIMEOUT)?;
        let data = read_to_eof(&mut s, IO_TIMEOUT)?;
        s.write_all(&data)?;
        Ok(peer)
    })?;
    let (local, reply) = in_netns(&net.client, || -> Result<(SocketAddr, Vec<u8>)> {
        ensure!(
            current_thread_netns()? == net.client.inode(),
            "not in client ns"
        );
        let mut c = connect_timeout(server_addr, IO_TIMEOUT)?;
        c.write_all(b"ping over veth")?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        c.read_to_end(&mut reply)?;
        Ok((c.local_addr()?, reply))
    })??;
    let peer = server.join()??;
    ensure!(reply == b"ping over veth", "echo returned {reply:?}");
    ensure!(
        local.ip() == client_ip,
        "client bound {local}, expected {client_ip}"
    );
    ensure!(peer == local, "server saw {peer}, client is {local}");
    Ok(())
}

#[test]
fn tcp_echo_between_namespaces_v4_and_v6() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = TestNet::new("echo")?;
    ensure!(
        net.client.inode() != net.server.inode(),
        "same namespace twice"
    );
    echo(&net, net.client_v4().into(), net.server_v4().into()).context("IPv4 echo")?;
    echo(&net, net.client_v6().into(), net.server_v6().into()).context("IPv6 echo")?;

    // The addresses live only inside the test namespaces, never in the root one.
    let root_addrs = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()?;
    let root_addrs = String::from_utf8_lossy(&root_addrs.stdout);
    ensure!(
        !root_addrs.contains(&net.client_v4().to_string()),
        "test address in the root namespace"
    );
    let server_addrs = net.server.exec(&["ip", "-o", "addr", "show"])?;
    ensure!(
        server_addrs.contains(&format!("{}/24", net.server_v4()))
            && server_addrs.contains(&format!("{}/64", net.server_v6())),
        "server addresses: {server_addrs}"
    );

    let (client, server) = (net.client.path(), net.server.path());
    drop(net);
    ensure!(
        !Path::new(&client).exists() && !Path::new(&server).exists(),
        "namespaces left behind"
    );
    Ok(())
}

#[test]
fn in_netns_propagates_panics() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("prop").expect("create namespace");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = in_netns(&ns, || panic!("inner assertion"));
    }));
    let msg = r.expect_err("panic must propagate");
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"inner assertion"));
}

/// Writes an executable shell script standing in for netwatch.
fn fake_netwatch(name: &str, script: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("nwt-fake-{}-{name}", std::process::id()));
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The Tracer lifecycle against a fake: waits for the marker, SIGINT stops it, the records
/// and the lost count are read back. Needs no root.
#[test]
fn tracer_lifecycle_with_fake_binary() -> Result<()> {
    let record = r#"{"type":"transition","ts":"2026-12-01T18:35:01.123456789Z","mono_ns":123,"sock_id":42,"family":"ipv4","saddr":"10.0.0.1","sport":40000,"daddr":"10.0.0.2","dport":8080,"old":"SYN_SENT","new":"ESTABLISHED","dwell_ns":null,"netns":4026532000}"#;
    let script = format!(
        "#!/bin/sh\n\
         [ \"$1 $2\" = \"trace --output\" ] || exit 3\n\
         out=\"$3\"\n\
         trap 'echo \"{{\\\"type\\\":\\\"future\\\"}}\" >> \"$out\"; echo \"netwatch: 1 transitions; lost 0 records\" >&2; exit 0' INT\n\
         echo '{record}' > \"$out\"\n\
         echo 'netwatch: attached (fake)' >&2\n\
         i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n\
         exit 4\n"
    );
    let bin = fake_netwatch("ok", &script)?;
    let tracer = netwatch_tests::Tracer::start_with(&bin, &["--port", "1"])?;
    ensure!(
        tracer.wait_for(std::time::Duration::from_secs(5), |r| r.len() == 1),
        "record not visible while running"
    );
    let out = tracer.stop()?;
    std::fs::remove_file(&bin)?;
    ensure!(out.records.len() == 2, "records: {:?}", out.records);
    ensure!(out.lost() == Some(0), "lost from {:?}", out.stderr);
    out.check_no_loss()?;
    let ts = netwatch_tests::transitions(&out.records)?;
    ensure!(ts.len() == 1, "the non-transition record must be skipped");
    ensure!(ts[0].sock_id == 42 && ts[0].dwell_ns.is_none() && ts[0].sport == 40000);
    Ok(())
}

/// A tracer that dies before attaching is an error that carries its stderr.
#[test]
fn tracer_reports_early_exit_with_stderr() -> Result<()> {
    let bin = fake_netwatch(
        "dies",
        "#!/bin/sh\necho 'netwatch: error: BPF_PROG_LOAD: EPERM' >&2\nexit 1\n",
    )?;
    let err = netwatch_tests::Tracer::start_with(&bin, &[]).expect_err("must fail");
    std::fs::remove_file(&bin)?;
    let msg = format!("{err:#}");
    ensure!(msg.contains("BPF_PROG_LOAD: EPERM"), "message: {msg}");
    Ok(())
}
