//! Saved traces: the file `netwatch trace --output` leaves, and what `netwatch report` makes of
//! it. Root only for the tests that trace (see `netwatch_tests::require_root`); the CLI
//! checks before tracing need no root.
//!
//! 1. Round trip: an incident reproduced between namespaces (short connections closed by
//!    either side, then a port exhaustion that raises an alert), recorded plain and gzip at
//!    once; every record validates against `netwatch schema`, and `netwatch report --json`
//!    gives the counts, histograms and percentiles of the live summary record, for both files.
//!    The text report says so, and the HTML report renders its plots in headless Chromium.
//! 2. Every way of stopping leaves a readable trace: SIGINT, SIGTERM, SIGHUP and --duration
//!    end it with a summary naming the cause; SIGKILL leaves whole records that `report` reads.
//! 3. A full disk (a 128 KiB tmpfs): netwatch stops with an error naming the file and ENOSPC,
//!    and the file holds whole records only.
//! 4. Rotation: every file under --max-size, each with its own header, the first kept; all
//!    the parts replay into the summary's numbers.
//! 5. Output problems are refused before tracing starts.

use std::collections::BTreeSet;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netwatch_tests::browser::{dump_dom, require_chromium, run_chromium};
use netwatch_tests::tcp::{accept_timeout, connect_timeout, read_to_eof, IO_TIMEOUT};
use netwatch_tests::tempdir::TempDir;
use netwatch_tests::tracer::{netwatch_bin, read_records, SETTLE};
use netwatch_tests::{in_netns, require_root, Netns, TestNet, TraceOutput, Tracer};
use serde_json::Value;

const INTERVAL: &str = "200ms";

fn netns_args(net: &TestNet) -> Vec<String> {
    vec![
        "--interval".into(),
        INTERVAL.into(),
        "--netns".into(),
        net.client.inode().to_string(),
        "--netns".into(),
        net.server.inode().to_string(),
    ]
}

fn start(output: &Path, net: &TestNet, extra: &[&str]) -> Result<Tracer> {
    let mut args = netns_args(net);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(Tracer::start_to(&netwatch_bin()?, output, &args)
        .with_context(|| {
            format!(
                "netwatch trace --output {} {}",
                output.display(),
                args.join(" ")
            )
        })?
        .keep_file())
}

fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind(addr))?
        .with_context(|| format!("bind {addr} in {}", ns.name()))
}

/// A test's scene: its directory, two namespaces, and a listener on `port` in the server's.
fn scene(
    tag: &str,
    net_tag: &str,
    port: u16,
) -> Result<(TempDir, TestNet, SocketAddr, TcpListener)> {
    let dir = TempDir::new("trace", tag)?;
    let net = TestNet::new(net_tag)?;
    let addr = SocketAddr::new(net.server_v4().into(), port);
    let listener = listen_in(&net.server, addr)?;
    Ok((dir, net, addr, listener))
}

/// A connection from `ns`; the io::Error is connect()'s (EADDRNOTAVAIL is expected).
fn connect_from(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    match in_netns(ns, || connect_timeout(addr, IO_TIMEOUT)) {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("{e:#}"))),
    }
}

/// `n` short connections to `addr`; even ones closed by the client first (its side goes to
/// TIME_WAIT), odd ones by the server first.
fn churn(net: &TestNet, listener: &TcpListener, addr: SocketAddr, n: usize) -> Result<()> {
    for i in 0..n {
        let mut c = connect_from(&net.client, addr).with_context(|| format!("connect {i}"))?;
        let (mut s, _) = accept_timeout(listener, IO_TIMEOUT)?;
        if i % 2 == 0 {
            c.shutdown(Shutdown::Write)?;
            read_to_eof(&mut s, IO_TIMEOUT)?;
            drop(s);
            read_to_eof(&mut c, IO_TIMEOUT)?;
        } else {
            s.shutdown(Shutdown::Write)?;
            read_to_eof(&mut c, IO_TIMEOUT)?;
            drop(c);
            read_to_eof(&mut s, IO_TIMEOUT)?;
        }
    }
    Ok(())
}

/// The port exhaustion story: a two-port range in the client namespace, both ports left in
/// TIME_WAIT towards `addr`, then connect() fails with EADDRNOTAVAIL `failures` times.
fn exhaust_ports(net: &TestNet, addr: SocketAddr, failures: usize) -> Result<()> {
    net.client
        .sysctl("net.ipv4.ip_local_port_range", "40000 40001")?;
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "0")?;
    let listener = listen_in(&net.server, addr)?;
    for i in 0..2 {
        let c = connect_from(&net.client, addr).with_context(|| format!("exhaustion conn {i}"))?;
        let (mut s, _) = accept_timeout(&listener, IO_TIMEOUT)?;
        drop(c);
        read_to_eof(&mut s, IO_TIMEOUT)?;
    }
    for i in 0..failures {
        let r = connect_from(&net.client, addr);
        ensure!(
            r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EADDRNOTAVAIL)),
            "connect {i} with both ports in TIME_WAIT: expected EADDRNOTAVAIL, got {r:?}"
        );
    }
    Ok(())
}

/// The JSON Schema `netwatch schema` prints.
fn schema_validator() -> Result<jsonschema::Validator> {
    let out = Command::new(netwatch_bin()?).arg("schema").output()?;
    ensure!(out.status.success(), "netwatch schema: {}", out.status);
    let schema: Value = serde_json::from_slice(&out.stdout).context("the schema is JSON")?;
    jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("invalid schema: {e}"))
}

/// Every record valid; a header first, then `last_type` last.
fn check_trace(v: &jsonschema::Validator, records: &[Value], last_type: &str) -> Result<()> {
    ensure!(!records.is_empty(), "empty trace");
    for (i, r) in records.iter().enumerate() {
        let errors: Vec<String> = v
            .iter_errors(r)
            .take(3)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        ensure!(
            errors.is_empty(),
            "record {i} fails the schema: {errors:?}\n{r}"
        );
    }
    ensure!(
        records[0]["type"] == "header",
        "first record: {}",
        records[0]
    );
    let last = records.last().expect("not empty");
    ensure!(
        last["type"] == last_type,
        "last record should be a {last_type}: {last}"
    );
    Ok(())
}

fn summary(records: &[Value]) -> Result<&Value> {
    records
        .last()
        .filter(|r| r["type"] == "summary")
        .context("no summary at the end")
}

/// `netwatch report ARGS`: (exit status success, stdout, stderr).
fn report(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(netwatch_bin()?)
        .arg("report")
        .args(args)
        .output()
        .context("run netwatch report")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn report_json(path: &Path) -> Result<Value> {
    let (ok, stdout, stderr) = report(&["--json", path.to_str().context("utf-8 path")?])?;
    ensure!(
        ok,
        "netwatch report --json {} failed: {stderr}",
        path.display()
    );
    serde_json::from_str(&stdout).with_context(|| format!("report JSON: {stdout}"))
}

/// The report's numbers are the summary's.
fn check_same_numbers(rep: &Value, sum: &Value, what: &str) -> Result<()> {
    for key in ["transitions", "states", "dwell", "histogram", "age", "lost"] {
        ensure!(
            rep[key] == sum[key],
            "{what}: report {key} = {}\nsummary {key} = {}",
            rep[key],
            sum[key]
        );
    }
    ensure!(
        rep["alert_counts"] == sum["alerts"],
        "{what}: report alerts {} vs summary {}",
        rep["alert_counts"],
        sum["alerts"]
    );
    ensure!(
        rep["check"]["summary"] == "match" && rep["check"]["snapshots_differing"] == 0,
        "{what}: replay check {}",
        rep["check"]
    );
    ensure!(
        rep["complete"] == true,
        "{what}: not complete: {}",
        rep["warnings"]
    );
    Ok(())
}

#[test]
fn recorded_incident_replays_into_the_same_numbers() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (dir, net, addr, listener) = scene("roundtrip", "trf", 8200)?;
    let plain = dir.join("incident.jsonl");
    let gz = dir.join("incident.jsonl.gz");
    let t_plain = start(&plain, &net, &[])?;
    let t_gz = start(&gz, &net, &[])?;

    churn(&net, &listener, addr, 24)?;
    exhaust_ports(&net, SocketAddr::new(net.server_v4().into(), 8201), 3)?;
    // The alert comes at the end of an interval; let both tracers see it.
    let seen = t_plain.wait_for(Duration::from_secs(6), |r| {
        r.iter().any(|r| r["kind"] == "port_exhaustion")
    });
    thread::sleep(SETTLE + Duration::from_millis(400));
    let out_plain = t_plain.stop()?;
    let out_gz = t_gz.stop()?;
    out_plain.check_no_loss()?;
    out_gz.check_no_loss()?;
    ensure!(seen, "no port_exhaustion alert in the trace");

    let v = schema_validator()?;
    for (path, out) in [(&plain, &out_plain), (&gz, &out_gz)] {
        check_trace(&v, &out.records, "summary").with_context(|| path.display().to_string())?;
        let sum = summary(&out.records)?;
        ensure!(sum["stopped_by"] == "sigint", "{sum}");
        let n = out
            .records
            .iter()
            .filter(|r| r["type"] == "transition")
            .count() as u64;
        ensure!(
            sum["transitions"] == n && sum["records"]["transition"] == n,
            "summary counts {} transitions, the file holds {n}",
            sum["transitions"]
        );
        ensure!(n >= 24 * 6, "only {n} transitions for 24 connections");
        ensure!(
            sum["alerts"]["port_exhaustion"].as_u64() >= Some(1),
            "summary alerts: {}",
            sum["alerts"]
        );
        let rep = report_json(path)?;
        check_same_numbers(&rep, sum, &path.display().to_string())?;
        ensure!(
            rep["findings"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["id"] == "alert:port_exhaustion")),
            "findings: {}",
            rep["findings"]
        );
    }
    ensure!(
        std::fs::read(&gz)?.starts_with(&[0x1f, 0x8b]),
        "the .gz trace is not gzip"
    );
    let gzip_t = Command::new("gzip").arg("-t").arg(&gz).status()?;
    ensure!(gzip_t.success(), "gzip -t {}: {gzip_t}", gz.display());

    // The text report says the replay reproduced the tracer's numbers.
    let (ok, text, stderr) = report(&[plain.to_str().unwrap()])?;
    ensure!(ok, "report: {stderr}");
    for want in [
        "replay check: all ",
        "snapshots and the summary reproduced exactly",
        "port_exhaustion",
        "DWELL (completed, per state)",
        "TIME_WAIT",
    ] {
        ensure!(text.contains(want), "text report lacks {want:?}:\n{text}");
    }
    // A port filter replays only those connections.
    let (ok, filtered, stderr) = report(&["--json", "--port", "8201", plain.to_str().unwrap()])?;
    ensure!(ok, "report --port: {stderr}");
    let filtered: Value = serde_json::from_str(&filtered)?;
    let all = summary(&out_plain.records)?["transitions"]
        .as_u64()
        .unwrap_or(0);
    let only = filtered["transitions"].as_u64().unwrap_or(0);
    ensure!(
        only > 0 && only < all,
        "--port 8201: {only} of {all} transitions"
    );

    let html = dir.join("incident.html");
    let (ok, _, stderr) = report(&["--html", html.to_str().unwrap(), plain.to_str().unwrap()])?;
    ensure!(ok, "report --html: {stderr}");
    check_html_renders(&html, &dir)?;
    Ok(())
}

/// Colours the plots draw with (report/html.rs): a state's line and bars, an alert marker.
const TIME_WAIT_RGB: [u8; 3] = [0xe3, 0x77, 0xc2];
const ESTABLISHED_RGB: [u8; 3] = [0x1f, 0x77, 0xb4];
const PORT_EXHAUSTION_RGB: [u8; 3] = [0xd6, 0x27, 0x28];

/// Pixels within a small distance of `rgb`.
fn count_colour(rgba: &[u8], channels: usize, rgb: [u8; 3]) -> usize {
    rgba.chunks(channels)
        .filter(|p| {
            p.iter()
                .zip(rgb)
                .all(|(&a, b)| (a as i32 - b as i32).abs() <= 6)
        })
        .count()
}

/// Opens the page in headless Chromium: the DOM has the plots with their marks, and the
/// screenshot shows them drawn in their colours.
fn check_html_renders(html: &Path, dir: &TempDir) -> Result<()> {
    let Some(bin) = require_chromium()? else {
        return Ok(());
    };
    let profile = dir.join("chromium-profile");
    let dom = dump_dom(&bin, &profile, html)?;
    ensure!(
        dom.contains("id=\"plot-states\"") && dom.contains("id=\"plot-alerts\""),
        "the rendered DOM lacks the plots"
    );
    let polylines = dom.matches("<polyline").count();
    let bars = dom.matches("<rect").count();
    let markers = dom.matches("<circle").count();
    ensure!(
        polylines >= 2 && bars >= 5 && markers >= 1,
        "plots drawn with {polylines} lines, {bars} bars, {markers} markers"
    );
    ensure!(
        dom.contains("id=\"plot-dwell-TIME_WAIT\"")
            || dom.contains("id=\"plot-dwell-ESTABLISHED\""),
        "no dwell histogram in the DOM"
    );

    let png_path = dir.join("report.png");
    run_chromium(
        &bin,
        &profile,
        &[
            "--window-size=1100,2600".into(),
            format!("--screenshot={}", png_path.display()),
        ],
        html,
    )?;
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path)?));
    let mut reader = decoder.read_info().context("the screenshot is a PNG")?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let white = count_colour(pixels, channels, [255, 255, 255]);
    let total = (info.width * info.height) as usize;
    ensure!(
        white < total * 98 / 100,
        "the screenshot is blank ({white} of {total} pixels white)"
    );
    // More than a legend swatch (12x12) of each: a line, bars, a marker (r=6) were drawn.
    let tw = count_colour(pixels, channels, TIME_WAIT_RGB);
    let est = count_colour(pixels, channels, ESTABLISHED_RGB);
    let alert = count_colour(pixels, channels, PORT_EXHAUSTION_RGB);
    ensure!(
        tw > 400 && est > 400 && alert > 40,
        "plot colours in the screenshot {}: TIME_WAIT {tw} px, ESTABLISHED {est} px, \
         port_exhaustion markers {alert} px",
        png_path.display()
    );
    Ok(())
}

#[test]
fn every_way_of_stopping_leaves_a_readable_trace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (dir, net, addr, listener) = scene("stops", "trs", 8210)?;
    let mut tracers = Vec::new();
    for (name, extra) in [
        ("sigint", &[][..]),
        ("sigterm", &[][..]),
        ("sighup", &[][..]),
        ("duration", &["--duration", "6s"][..]),
        ("sigkill", &[][..]),
    ] {
        let path = dir.join(&format!("{name}.jsonl"));
        tracers.push((name, path.clone(), start(&path, &net, extra)?));
    }
    churn(&net, &listener, addr, 10)?;
    // Past a flush interval (1 s), so that even the killed one has written records.
    thread::sleep(Duration::from_millis(1600));
    let v = schema_validator()?;
    for (name, path, tracer) in tracers {
        let out: TraceOutput = match name {
            "sigint" => tracer.stop()?,
            "sigterm" => tracer.stop_with(libc::SIGTERM)?,
            "sighup" => tracer.stop_with(libc::SIGHUP)?,
            "duration" => tracer.wait(Duration::from_secs(20))?,
            _ => {
                let (status, stderr) =
                    tracer.exit_with(Some(libc::SIGKILL), Duration::from_secs(10))?;
                ensure!(!status.success(), "SIGKILL: {status}; {stderr}");
                let keep = path;
                let text = std::fs::read_to_string(&keep)?;
                let whole = match text.rfind('\n') {
                    Some(i) => &text[..=i],
                    None => "",
                };
                let records: Vec<Value> = whole
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()
                    .context("the killed trace has a damaged line before its last")?;
                ensure!(
                    records.iter().filter(|r| r["type"] == "transition").count() >= 10,
                    "the killed trace lost its flushed records: {} records",
                    records.len()
                );
                check_trace(
                    &v,
                    &records,
                    records
                        .last()
                        .map_or("", |r| r["type"].as_str().unwrap_or("")),
                )?;
                let (ok, text, stderr) = report(&[keep.to_str().unwrap()])?;
                ensure!(ok, "report of the killed trace failed: {stderr}");
                ensure!(
                    stderr.contains("without its summary") && text.contains("no summary"),
                    "report should say the summary is missing: {stderr}\n{text}"
                );
                continue;
            }
        };
        out.check_no_loss()?;
        check_trace(&v, &out.records, "summary").with_context(|| name.to_owned())?;
        let sum = summary(&out.records)?;
        ensure!(
            sum["stopped_by"] == name,
            "{name}: stopped_by {}",
            sum["stopped_by"]
        );
        // Whatever stopped it, a last snapshot comes before the summary.
        let n = out.records.len();
        ensure!(
            out.records[n - 2]["type"] == "snapshot",
            "{name}: the record before the summary is {}",
            out.records[n - 2]
        );
        ensure!(
            out.stderr.contains("ending with its summary"),
            "{name}: stderr does not say where the trace is: {}",
            out.stderr
        );
        let rep = report_json(&path)?;
        check_same_numbers(&rep, sum, name)?;
    }
    Ok(())
}

/// A small tmpfs of the test's own, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Result<Self> {
        std::fs::create_dir_all(&at)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()?;
        ensure!(st.success(), "mount tmpfs at {}: {st}", at.display());
        Ok(Self(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_the_file_keeps_whole_records() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let dir = TempDir::new("trace", "enospc")?;
    let disk = Tmpfs::mount(dir.join("tiny"), "128k")?;
    let net = TestNet::new("trd")?;
    let addr = SocketAddr::new(net.server_v4().into(), 8220);
    let listener = listen_in(&net.server, addr)?;
    let plain = disk.0.join("t.jsonl");
    let tracer = start(&plain, &net, &[])?;
    // About 2 KB of records per connection: 128 KiB fills within a hundred or so; netwatch
    // stops by itself at the write that fails.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tracer.stderr_text().contains("error:") && Instant::now() < deadline {
        churn(&net, &listener, addr, 20)?;
    }
    let (status, stderr) = tracer.exit_with(None, Duration::from_secs(15))?;
    ensure!(
        !status.success(),
        "netwatch should fail on a full disk: {status}\n{stderr}"
    );
    ensure!(
        stderr.contains(&plain.display().to_string())
            && stderr.contains("ENOSPC")
            && stderr.contains("last whole record"),
        "the error should name the file and ENOSPC: {stderr}"
    );
    let copy = plain;
    let bytes = std::fs::read(&copy)?;
    ensure!(bytes.len() > 64 << 10, "only {} bytes kept", bytes.len());
    ensure!(bytes.ends_with(b"\n"), "the file ends mid-record");
    let records = read_records(&copy)?;
    check_trace(
        &schema_validator()?,
        &records,
        records
            .last()
            .map_or("", |r| r["type"].as_str().unwrap_or("")),
    )?;
    let (ok, _, stderr) = report(&[copy.to_str().unwrap()])?;
    ensure!(
        ok && stderr.contains("without its summary"),
        "report: {stderr}"
    );
    Ok(())
}

#[test]
fn rotation_bounds_every_file_and_the_parts_replay() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (dir, net, addr, listener) = scene("rotation", "trr", 8230)?;
    const MAX: u64 = 64 << 10;
    let all = dir.join("all.jsonl");
    let few = dir.join("few.jsonl.gz");
    let t_all = start(&all, &net, &["--max-size", "64K", "--max-files", "1000"])?;
    let t_few = start(&few, &net, &["--max-size", "64K", "--max-files", "3"])?;
    // About 3 KB of records per connection (gzip: 300 bytes): 600 make many 64 KiB parts,
    // and gzip at least four.
    churn(&net, &listener, addr, 600)?;
    thread::sleep(SETTLE);
    let few_status = t_few.stop()?;
    let all_out = t_all.stop()?;
    all_out.check_no_loss()?;
    few_status.check_no_loss()?;

    let v = schema_validator()?;
    let parts = |base: &Path| -> Result<Vec<PathBuf>> {
        let name = base.file_name().unwrap().to_str().unwrap().to_owned();
        let (stem, suffix) = match name.strip_suffix(".gz") {
            Some(s) => (s.to_owned(), ".gz"),
            None => (name.clone(), ""),
        };
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(base.parent().unwrap())?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_owned();
                if n == name {
                    return Some((0, e.path()));
                }
                let k: u32 = n
                    .strip_prefix(&format!("{stem}."))?
                    .strip_suffix(suffix)?
                    .parse()
                    .ok()?;
                Some((k, e.path()))
            })
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    };
    for (base, keep_all) in [(&all, true), (&few, false)] {
        let files = parts(base)?;
        ensure!(
            files.len() >= 3,
            "{}: only {} files",
            base.display(),
            files.len()
        );
        if !keep_all {
            ensure!(files.len() == 3, "--max-files 3 left {} files", files.len());
        }
        let mut run_ids = BTreeSet::new();
        let mut numbers = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let size = f.metadata()?.len();
            ensure!(
                size <= MAX,
                "{}: {size} bytes, over --max-size",
                f.display()
            );
            let records = read_records(f)?;
            let last = if i + 1 == files.len() {
                "summary"
            } else {
                "part_end"
            };
            check_trace(&v, &records, last).with_context(|| f.display().to_string())?;
            run_ids.insert(records[0]["run_id"].as_str().unwrap_or("").to_owned());
            numbers.push(records[0]["part"].as_u64().unwrap_or(u64::MAX));
        }
        ensure!(run_ids.len() == 1, "parts of several runs: {run_ids:?}");
        ensure!(
            numbers[0] == 0,
            "the first file is not kept: parts {numbers:?}"
        );
        if keep_all {
            ensure!(
                numbers == (0..files.len() as u64).collect::<Vec<_>>(),
                "parts {numbers:?}"
            );
        }
    }
    // All parts: the replay is the tracer's summary exactly.
    let rep = report_json(&all)?;
    // The summary is the last record of the last part (what `stop` read is the first part).
    let last_part = read_records(parts(&all)?.last().context("no parts")?)?;
    let sum = summary(&last_part)?;
    check_same_numbers(&rep, sum, "all parts")?;
    ensure!(rep["trace"]["files"].as_array().map(Vec::len) == Some(parts(&all)?.len()));
    // Parts deleted: said so, and the whole run's numbers come from the summary.
    let rep = report_json(&few)?;
    ensure!(
        rep["complete"] == false && rep["numbers_from"] == "summary",
        "{}",
        rep["warnings"]
    );
    ensure!(
        rep["warnings"].to_string().contains("deleted by rotation"),
        "{}",
        rep["warnings"]
    );
    Ok(())
}

/// Problems with the output are errors before anything is loaded: no root needed to see them.
#[test]
fn output_problems_are_refused_before_tracing() -> Result<()> {
    let dir = TempDir::new("trace", "refused")?;
    let bin = netwatch_bin()?;
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = Command::new(&bin).arg("trace").args(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let existing = dir.join("existing.jsonl");
    std::fs::write(&existing, b"precious\n")?;
    let (ok, err) = run(&["--output", existing.to_str().unwrap(), "--duration", "1"])?;
    ensure!(!ok && err.contains("--force"), "{err}");
    ensure!(std::fs::read(&existing)? == b"precious\n", "overwritten");

    let (ok, err) = run(&[
        "--output",
        dir.join("no/such/dir/t.jsonl").to_str().unwrap(),
    ])?;
    ensure!(!ok && err.contains("directory does not exist"), "{err}");

    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&existing, &link)?;
    let (ok, err) = run(&["--output", link.to_str().unwrap(), "--force"])?;
    ensure!(!ok && err.contains("symlink"), "{err}");
    ensure!(
        std::fs::read(&existing)? == b"precious\n",
        "written through the link"
    );

    let base = dir.join("rot.jsonl");
    std::fs::write(dir.join("rot.jsonl.1"), b"old part\n")?;
    let (ok, err) = run(&["--output", base.to_str().unwrap(), "--max-size", "1M"])?;
    ensure!(
        !ok && err.contains("rot.jsonl.1") && err.contains("--force"),
        "{err}"
    );
    ensure!(!base.exists(), "created the trace file despite refusing");

    let (ok, err) = run(&["--output", "-", "--max-size", "1M"])?;
    ensure!(!ok && err.contains("--max-size"), "{err}");
    let (ok, err) = run(&["--output", base.to_str().unwrap(), "--max-size", "1K"])?;
    ensure!(!ok && err.contains("at least 64K"), "{err}");

    // And `report` on something that is not a trace says so.
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, [0u8, 159, 146, 150, 10, 1, 2])?;
    let (ok, _, err) = report(&[garbage.to_str().unwrap()])?;
    ensure!(!ok && err.contains("not a netwatch trace"), "{err}");
    Ok(())
}

/// Two real traces joined into one file (`cat a.jsonl b.jsonl`, or a trace appended to itself)
/// are never added together: `report` fails, naming the line of the second header and how to
/// split the file; each trace alone still reports.
#[test]
fn concatenated_traces_are_an_error_naming_the_second_header() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (dir, net, addr, listener) = scene("concat", "trc", 8215)?;
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let tracers = [start(&a, &net, &[])?, start(&b, &net, &[])?];
    churn(&net, &listener, addr, 6)?;
    thread::sleep(SETTLE);
    for t in tracers {
        t.stop()?.check_no_loss()?;
    }
    let (ta, tb) = (std::fs::read(&a)?, std::fs::read(&b)?);
    let lines_a = ta.iter().filter(|&&c| c == b'\n').count();
    for (name, joined, what) in [
        ("ab.jsonl", [&ta[..], &tb[..]].concat(), "two traces (runs"),
        ("aa.jsonl", [&ta[..], &ta[..]].concat(), "the same trace"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, joined)?;
        let out = Command::new(netwatch_bin()?)
            .args(["report", "--json"])
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "{name}: {}: {stderr}",
            out.status
        );
        ensure!(out.stdout.is_empty(), "{name}: a report came out anyway");
        let want = format!("{name}:{}: a second trace header: {what}", lines_a + 1);
        ensure!(
            stderr.contains(&want),
            "{name}: wanted {want:?} in {stderr}"
        );
        ensure!(
            stderr.contains(&format!("head -n {lines_a} ")),
            "{name}: no way to split it in {stderr}"
        );
    }
    for one in [&a, &b] {
        report_json(one)?;
    }
    Ok(())
}
