//! What a person sees of an alert, checked where they see it: the live dashboard in a real
//! 80x24 terminal (tmux), `--plain` on a pipe, and the report of the saved trace as text and
//! as HTML rendered by headless Chromium. Root only (see `netwatch_tests::require_root`).
//!
//! The incident is a port exhaustion between two namespaces, controlled to the unit: a
//! two-port `ip_local_port_range`, both ports left in TIME_WAIT by two connections, then
//! three connect() calls that fail with EADDRNOTAVAIL. Ground truth: 3 failures, by the
//! calling thread (comm and pid), towards the server's address and port; 2 TIME_WAIT sockets
//! towards it. Every view must show the alert, its count, its evidence and the advice.
//!
//! Run with `--nocapture` to see the screens (the closing note quotes them).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::browser::{dump_dom, require_chromium};
use netwatch_tests::sock::thread_comm;
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tempdir::TempDir;
use netwatch_tests::tmux::{require_tmux, Tmux};
use netwatch_tests::tracer::{netwatch_bin, read_records, ATTACH_TIMEOUT, STOP_TIMEOUT};
use netwatch_tests::{in_netns, require_root, TestNet, Tracer};
use serde_json::Value;

const PORT: u16 = 8012;
const FAILURES: u64 = 3;
/// Bound on an alert reaching a view (intervals are 200 ms).
const SHOW_WAIT: Duration = Duration::from_secs(8);

/// Two connections that leave both ports of the range in TIME_WAIT, then [`FAILURES`]
/// connect() calls that fail with EADDRNOTAVAIL; returns the caller as netwatch names it.
fn exhaust_ports(net: &TestNet, server: SocketAddr) -> Result<String> {
    let listener = in_netns(&net.server, || std::net::TcpListener::bind(server))??;
    for i in 0..2 {
        let c = in_netns(&net.client, || connect_timeout(server, IO_TIMEOUT))?
            .with_context(|| format!("connection {i}"))?;
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT)?;
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT)?;
    }
    let mut comm = String::new();
    for i in 0..FAILURES {
        let (c, r) = in_netns(&net.client, || {
            (thread_comm(), connect_timeout(server, IO_TIMEOUT))
        })?;
        comm = c?;
        ensure!(
            r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EADDRNOTAVAIL)),
            "connect {i} with both ports in TIME_WAIT: expected EADDRNOTAVAIL, got {r:?}"
        );
    }
    Ok(format!("{comm}[{}]", std::process::id()))
}

fn netns_args(net: &TestNet) -> Vec<String> {
    [&net.client, &net.server]
        .iter()
        .flat_map(|ns| ["--netns".to_owned(), ns.inode().to_string()])
        .collect()
}

/// Waits (bounded) for the tracer's file to begin: it is made once the programs are attached.
fn wait_attached(path: &Path, dash: &Tmux) -> Result<()> {
    let (ok, screen) = dash.wait_for(ATTACH_TIMEOUT, |s| {
        s.contains("TCP states") && std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
    });
    ensure!(
        ok,
        "the dashboard did not start (or attach) within {ATTACH_TIMEOUT:?}:\n{screen}"
    );
    Ok(())
}

fn report(args: &[&str]) -> Result<String> {
    let out = Command::new(netwatch_bin()?)
        .arg("report")
        .args(args)
        .output()
        .context("run netwatch report")?;
    ensure!(
        out.status.success(),
        "netwatch report {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn contains_all(text: &str, wants: &[String], what: &str) -> Result<()> {
    for want in wants {
        ensure!(
            text.contains(want.as_str()),
            "{what} lacks {want:?}:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn an_alert_shows_with_its_count_evidence_and_advice_in_every_view() -> Result<()> {
    if !require_root() || !require_tmux()? {
        return Ok(());
    }
    let dir = TempDir::new("alerts", "views")?;
    let net = TestNet::new("apv")?;
    net.client
        .sysctl("net.ipv4.ip_local_port_range", "40000 40001")?;
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "0")?;
    let server = SocketAddr::new(net.server_v4().into(), PORT);
    let ns = netns_args(&net);

    // The dashboard in a real 80x24 terminal, saving its trace; `--plain` on a pipe beside it.
    let trace = dir.join("dash.jsonl");
    let command = format!(
        "{} trace --interval 200ms {} --output {}",
        netwatch_bin()?.display(),
        ns.join(" "),
        trace.display()
    );
    let dash = Tmux::start("dash", 80, 24, &command)?;
    wait_attached(&trace, &dash)?;
    let mut plain_args = vec!["--plain", "--interval", "200ms"];
    plain_args.extend(ns.iter().map(String::as_str));
    let plain = Tracer::start(&plain_args)?.keep_file();
    let plain_file = plain.output_path().to_owned();

    let process = exhaust_ports(&net, server)?;
    let total = format!("{FAILURES} connect() failures (EADDRNOTAVAIL)");

    // The banner names the alert; it stays through later refreshes.
    let (ok, banner) = dash.wait_for(SHOW_WAIT, |s| s.contains("Ephemeral ports exhausted"));
    eprintln!("dashboard at 80x24 during the incident:\n{banner}");
    ensure!(
        ok,
        "no alert on the dashboard within {SHOW_WAIT:?}:\n{banner}"
    );
    ensure!(
        banner.contains(&format!("! CRIT Ephemeral ports exhausted {server}")),
        "the banner should name the destination {server}:\n{banner}"
    );

    // The pane: the alert, its count, its evidence (the total, the process), the advice.
    dash.send_key("a")?;
    let (ok, pane) = dash.wait_for(SHOW_WAIT, |s| {
        s.contains("Alerts (") && s.contains(&format!("in all: {total}"))
    });
    eprintln!("alerts pane (a) at 80x24:\n{pane}");
    ensure!(
        ok,
        "the alerts pane never showed the {FAILURES} failures:\n{pane}"
    );
    let row = pane
        .lines()
        .find(|l| l.contains("Ephemeral ports exhausted") && l.contains(&server.to_string()))
        .with_context(|| format!("no row for the alert towards {server}:\n{pane}"))?;
    let shown_count: u64 = row
        .split_whitespace()
        .skip_while(|w| *w != server.to_string())
        .nth(1)
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no COUNT in {row:?}"))?;
    // The advice wraps over lines: read it as one text.
    let flat = pane
        .lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
        .collect::<Vec<_>>()
        .join(" ");
    contains_all(
        &flat,
        &[
            "what to change: The client has no free local port".to_owned(),
            "net.ipv4.ip_local_port_range".to_owned(),
            process.clone(),
        ],
        "the alerts pane",
    )?;

    // Back to the states: TIME_WAIT by service port (the server's, 2 sockets), then by local
    // port (the client's own two ports, one socket each).
    dash.send_key("a")?;
    for key in ["b", "b"] {
        dash.send_key(key)?;
    }
    let service_row = format!("{PORT}  ");
    let (ok, screen) = dash.wait_for(SHOW_WAIT, |s| {
        s.contains("TIME_WAIT by service port")
            && s.lines()
                .any(|l| l.contains(&service_row) && l.contains("100%"))
    });
    ensure!(
        ok,
        "no TIME_WAIT by service port {PORT} (2 sockets):\n{screen}"
    );
    dash.send_key("b")?;
    let (ok, screen) = dash.wait_for(SHOW_WAIT, |s| {
        s.contains("TIME_WAIT by local port")
            && ["40000", "40001"]
                .iter()
                .all(|p| s.lines().any(|l| l.contains(p) && l.contains("50%")))
    });
    eprintln!("TIME_WAIT by local port at 80x24:\n{screen}");
    ensure!(ok, "no TIME_WAIT by local port 40000 and 40001:\n{screen}");

    dash.send_key("q")?;
    ensure!(
        dash.wait_exit(STOP_TIMEOUT),
        "netwatch did not quit on q:\n{}",
        dash.screen()?
    );
    let out = plain.stop()?;
    // At exit netwatch says how big the saved trace is (a few KiB here).
    let size = std::fs::metadata(&plain_file)?.len();
    let _ = std::fs::remove_file(&plain_file);
    ensure!(
        (1024..1 << 20).contains(&size),
        "a trace of {size} bytes: not a few KiB"
    );
    let said = format!("({:.1} KiB), ending with its summary", size as f64 / 1024.0);
    ensure!(
        out.stderr.contains(&said),
        "the exit message does not give the size {said:?}:\n{}",
        out.stderr
    );

    // The count on screen is the trace's count of alerts; their failures add up to the truth.
    let records = read_records(&trace)?;
    let alerts: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "alert" && r["kind"] == "port_exhaustion")
        .collect();
    ensure!(
        alerts.len() as u64 == shown_count,
        "the pane counts {shown_count} alerts, the trace has {}",
        alerts.len()
    );
    let failures: u64 = alerts.iter().filter_map(|a| a["failures"].as_u64()).sum();
    ensure!(
        failures == FAILURES,
        "the trace's alerts count {failures} failures"
    );
    ensure!(
        records.last().is_some_and(|r| r["type"] == "summary"),
        "the dashboard's trace ends without its summary"
    );

    // --plain: the alert line with severity and kind, then what to change.
    eprintln!("--plain:\n{}", out.stdout);
    contains_all(
        &out.stdout,
        &[
            // The client's namespace by its name, as `ip netns` knows it.
            format!(
                "ALERT critical port_exhaustion in netns {}: ephemeral ports exhausted towards \
                 {server}",
                net.client.name()
            ),
            "\n  what to change: The client has no free local port".to_owned(),
        ],
        "--plain",
    )?;

    // The report of the saved trace: the finding with the totals and the advice, the alert
    // folded as the pane folds it, the breakdowns the dashboard had.
    let text = report(&[trace.to_str().context("utf-8 path")?])?;
    eprintln!("report:\n{text}");
    let plural = if shown_count == 1 { "" } else { "s" };
    contains_all(
        &text,
        &[
            format!("[critical] Ephemeral ports exhausted: {total} in {shown_count} alert{plural}"),
            "      what to change: The client has no free local port".to_owned(),
            format!(
                "  CRIT Ephemeral ports exhausted  {:<22} {shown_count:>6}",
                server.to_string()
            ),
            // Service port: the server's, whichever side; local port: the client's own,
            // both ports of its two-port range.
            format!(
                "  TIME_WAIT\n    by service port    {PORT} 2\n    by local port      \
                 40000 1, 40001 1\n    by remote address  {} 2",
                server.ip()
            ),
        ],
        "the text report",
    )?;

    // The HTML page as Chromium builds it.
    let html = dir.join("report.html");
    report(&[
        "--html",
        html.to_str().context("utf-8 path")?,
        trace.to_str().context("utf-8 path")?,
    ])?;
    let Some(bin) = require_chromium()? else {
        return Ok(());
    };
    let dom = dump_dom(&bin, &dir.join("chromium-profile"), &html)?;
    let Some(start) = dom.find("<table id=\"alerts-by-subject\">") else {
        bail!("the rendered page has no alerts-by-subject table");
    };
    let table = &dom[start..start + dom[start..].find("</table>").unwrap_or(0)];
    contains_all(
        table,
        &[
            "data-kind=\"port_exhaustion\"".to_owned(),
            format!("<td>{server}</td><td class=\"n\">{shown_count}</td>"),
            format!("<td>{total}</td>"),
            "<td class=\"advice\">The client has no free local port".to_owned(),
        ],
        "the HTML alerts table",
    )?;
    contains_all(
        &dom,
        &[
            "what to change: The client has no free local port".to_owned(),
            format!("<tr><td>TIME_WAIT</td><td>service port</td><td>{PORT}</td><td class=\"n\">2</td></tr>"),
            "<tr><td>TIME_WAIT</td><td>local port</td><td>40001</td><td class=\"n\">1</td></tr>"
                .to_owned(),
            format!(
                "<tr><td>TIME_WAIT</td><td>remote address</td><td>{}</td><td class=\"n\">2</td></tr>",
                server.ip()
            ),
        ],
        "the rendered HTML report",
    )?;
    Ok(())
}

/// CLOSE_WAIT held for long is an alert while it happens, not only a finding afterwards: a
/// server that accepts and never closes, clients that close. Ground truth: [`LEAKED`]
/// sockets in CLOSE_WAIT in the server's namespace, held by this process (the thread that
/// called accept(), with this pid), kept past the 10 s netwatch calls a leak.
#[test]
fn a_close_wait_leak_is_alerted_live_naming_the_holder() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    const LEAKED: u64 = 5;
    let net = TestNet::new("cwleak")?;
    let server = SocketAddr::new(net.server_v4().into(), PORT + 1);
    let mut args = vec!["--interval".to_owned(), "1s".to_owned()];
    args.extend(netns_args(&net));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::start(&args)?;
    let listener = in_netns(&net.server, || std::net::TcpListener::bind(server))??;
    let mut held = Vec::new();
    let mut holder = String::new();
    for i in 0..LEAKED {
        let c = in_netns(&net.client, || connect_timeout(server, IO_TIMEOUT))?
            .with_context(|| format!("connection {i}"))?;
        let (comm, accepted) = in_netns(&net.server, || {
            (thread_comm(), accept_timeout(&listener, IO_TIMEOUT))
        })?;
        holder = format!("{}[{}]", comm?, std::process::id());
        held.push(accepted?.0);
        drop(c);
    }
    let server_ns = net.server.inode();
    let leak = |r: &[Value]| {
        r.iter()
            .find(|v| {
                v.get("kind").and_then(Value::as_str) == Some("close_wait_leak")
                    && v.get("netns").and_then(Value::as_u64) == Some(server_ns)
            })
            .cloned()
    };
    // 10 s of CLOSE_WAIT, then the interval that notices it.
    tracer.wait_for(Duration::from_secs(20), |r| leak(r).is_some());
    let out = tracer.stop()?;
    drop(held);
    let Some(alert) = leak(&out.records) else {
        bail!("no close_wait_leak alert about the server's namespace in 20 s");
    };
    eprintln!("{alert}");
    ensure!(
        alert.get("sockets").and_then(Value::as_u64) == Some(LEAKED),
        "the alert should count the {LEAKED} sockets: {alert}"
    );
    ensure!(
        alert["processes"] == serde_json::json!([holder]),
        "the alert should name {holder} as the holder: {alert}"
    );
    let message = alert["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&format!("{LEAKED} sockets in CLOSE_WAIT")) && message.contains(&holder),
        "the message should say how many and who: {message}"
    );
    Ok(())
}
