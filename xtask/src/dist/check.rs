//! The package's install test (issue 13's "Done when"): `dpkg -i` the .deb on this machine,
//! `systemd-analyze verify` the installed unit, then run the installed binary as the unit
//! would (its user, exactly its capabilities, read from the installed unit file) through
//! `setpriv`, these machines not running systemd as PID 1. With that set it must trace with
//! every kernel feature a root run has, entering another network namespace; and where the
//! binary has `serve`, answer `/healthz` and expose every metric of [`super::metrics`] on
//! `/metrics`. The package is purged at the end, also on failure, so runs are repeatable.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use super::{
    layout::{BIN, COMPLETIONS, COPIED, MAN_DIR, MAN_PAGES, PACKAGE, UNIT},
    metrics::{exposed, unlisted_labels, METRICS},
    unit::Unit,
};
use crate::{
    say,
    util::{command, describe, is_root, run_checked},
};

/// netwatch prints this on stderr once its programs are attached.
const ATTACHED: &str = "netwatch: attached";
/// Bound on `serve` answering after it starts (loading and attaching the programs).
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs `deb`, checks it, and purges it. Needs root; under CI=true that is a failure,
/// elsewhere a skip said on stderr.
pub fn check_package(deb: &Path) -> Result<()> {
    if !is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("the package test installs a .deb and needs root; under CI that is a failure");
        }
        say!("skipping the package test (needs root: it runs dpkg -i)");
        return Ok(());
    }
    let installed = Installed::install(deb)?;
    let result = check_installed();
    installed.purge()?;
    result?;
    say!(
        "ok       package {} installs, verifies and runs as its unit",
        deb.display()
    );
    Ok(())
}

fn check_installed() -> Result<()> {
    let root = Path::new("/");
    for path in [BIN, UNIT]
        .into_iter()
        .chain(COPIED.iter().map(|(_, p, _)| *p))
        .chain(COMPLETIONS.iter().map(|(_, p)| *p))
    {
        ensure!(
            root.join(path).is_file(),
            "the package did not install /{path}"
        );
    }
    for page in MAN_PAGES {
        let path = root.join(MAN_DIR).join(page);
        ensure!(
            path.is_file(),
            "the package did not install {}",
            path.display()
        );
    }
    let user = command("getent").args(["passwd", PACKAGE]).output()?;
    ensure!(
        user.status.success(),
        "postinst did not create the system user {PACKAGE}"
    );
    let unit_path = root.join(UNIT);
    let mut verify = command("systemd-analyze");
    verify.arg("verify").arg(&unit_path);
    say!("running  {}", describe(&verify));
    run_checked(
        &mut verify,
        "systemd-analyze verify found problems in the installed unit (see above)",
    )?;
    let text = std::fs::read_to_string(&unit_path)
        .with_context(|| format!("cannot read {}", unit_path.display()))?;
    let unit = Unit::parse(&text).with_context(|| format!("in {}", unit_path.display()))?;
    ensure!(
        unit.exec_start.first().map(String::as_str) == Some(&format!("/{BIN}")[..]),
        "the unit starts {:?}, not the packaged /{BIN}",
        unit.exec_start
    );
    traces_as_root_does(&unit)?;
    if has_serve()? {
        serves_metrics(&unit)
    } else {
        say!(
            "note     /{BIN} has no `serve` yet: its /metrics and /healthz are checked once it has"
        );
        Ok(())
    }
}

/// The installed package, purged when this is dropped unpurged (a failed check).
struct Installed {
    purged: bool,
}

impl Installed {
    fn install(deb: &Path) -> Result<Self> {
        // A package left by an interrupted run is replaced, not an error.
        let mut me = Self { purged: false };
        me.purge_quietly();
        me.purged = false;
        let mut cmd = command("dpkg");
        cmd.arg("-i").arg(deb).stdout(std::io::stderr());
        say!("running  {}", describe(&cmd));
        run_checked(&mut cmd, "dpkg could not install the package")?;
        Ok(me)
    }

    fn purge(mut self) -> Result<()> {
        let mut cmd = command("dpkg");
        cmd.args(["--purge", PACKAGE]).stdout(std::io::stderr());
        say!("running  {}", describe(&cmd));
        self.purged = true;
        run_checked(&mut cmd, "dpkg could not purge the package")?;
        ensure!(
            !Path::new("/").join(BIN).exists(),
            "/{BIN} is still there after dpkg --purge"
        );
        let user = command("getent").args(["passwd", PACKAGE]).output()?;
        ensure!(
            !user.status.success(),
            "postrm purge left the system user {PACKAGE}"
        );
        Ok(())
    }

    fn purge_quietly(&mut self) {
        if !self.purged {
            let _ = command("dpkg")
                .args(["--purge", PACKAGE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.purged = true;
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.purge_quietly();
    }
}

/// `setpriv` running `args` as the unit's user with exactly the unit's capabilities.
fn as_unit(unit: &Unit, args: &[String]) -> Result<Command> {
    let mut cmd = command("setpriv");
    cmd.arg(format!("--reuid={}", unit.user))
        .arg(format!("--regid={}", unit.group))
        .arg("--init-groups")
        .arg(format!("--inh-caps={}", Unit::setpriv_caps(&unit.ambient)?))
        .arg(format!(
            "--ambient-caps={}",
            Unit::setpriv_caps(&unit.ambient)?
        ))
        .arg(format!(
            "--bounding-set={}",
            Unit::setpriv_caps(&unit.bounding)?
        ));
    if unit.no_new_privileges {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--").args(args);
    Ok(cmd)
}

/// Under the unit's capabilities netwatch attaches with every kernel feature a root run has,
/// and enters a network namespace of its own (sock_diag census, setns).
fn traces_as_root_does(unit: &Unit) -> Result<()> {
    let netns = TestNetns::create()?;
    let trace: Vec<String> = [
        &format!("/{BIN}"),
        "trace",
        "--quiet",
        "--duration",
        "2",
        "--netns",
        &netns.name,
        "--output",
        "-",
    ]
    .map(str::to_string)
    .to_vec();
    let root_run = run_trace(command(&trace[0]).args(&trace[1..]), "as root")?;
    let unit_run = run_trace(&mut as_unit(unit, &trace)?, "as the unit")?;
    let lacking: Vec<&str> = available(&root_run.features)
        .into_iter()
        .filter(|f| !available(&unit_run.features).contains(f))
        .collect();
    ensure!(
        lacking.is_empty() && !root_run.features.is_null(),
        "with the unit's capabilities ({}) netwatch lacks kernel features that root has: {}; \
         its stderr:\n{}",
        unit.ambient.join(" "),
        lacking.join(", "),
        unit_run.stderr
    );
    say!("ok       `netwatch trace` under the unit's capabilities: same kernel features as root");
    Ok(())
}

/// The names of the features a summary's `kernel_features` says are available.
fn available(features: &Value) -> Vec<&str> {
    features
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["available"] == true)
        .filter_map(|f| f["feature"].as_str())
        .collect()
}

struct TraceRun {
    /// The summary's `kernel_features`.
    features: Value,
    stderr: String,
}

fn run_trace(cmd: &mut Command, who: &str) -> Result<TraceRun> {
    say!("running  {} ({who})", describe(cmd));
    let out = cmd
        .output()
        .with_context(|| format!("could not start {}", describe(cmd)))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success() && stderr.contains(ATTACHED),
        "netwatch trace {who} exited with {} without attaching:\n{stderr}",
        out.status
    );
    ensure!(
        !stderr.contains("warning: census"),
        "netwatch trace {who} could not count the sockets of the test namespace:\n{stderr}"
    );
    let summary = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["type"] == "summary")
        .with_context(|| format!("netwatch trace {who} wrote no summary record:\n{stderr}"))?;
    Ok(TraceRun {
        features: summary["kernel_features"].clone(),
        stderr,
    })
}

/// A network namespace with loopback up, removed on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn create() -> Result<Self> {
        let name = format!("netwatch-pkg-{}", std::process::id());
        run_checked(
            command("ip").args(["netns", "add", &name]),
            "could not create a network namespace (iproute2)",
        )?;
        let me = Self { name };
        run_checked(
            command("ip").args(["-n", &me.name, "link", "set", "lo", "up"]),
            "could not bring loopback up in the test namespace",
        )?;
        Ok(me)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = command("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether the installed binary has the `serve` subcommand.
fn has_serve() -> Result<bool> {
    let out = command(format!("/{BIN}"))
        .args(["serve", "--help"])
        .output()
        .with_context(|| format!("could not run /{BIN}"))?;
    Ok(out.status.success())
}

/// The unit's own command line, under its capabilities, answers `/healthz` and exposes every
/// metric on `/metrics`.
fn serves_metrics(unit: &Unit) -> Result<()> {
    let listen = unit
        .exec_start
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].clone())
        .context("the unit's ExecStart has no --listen ADDR:PORT")?;
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("the unit listens on {listen:?}, which is no ADDR:PORT"))?;
    let mut cmd = as_unit(unit, &unit.exec_start)?;
    // A file, not a pipe: a pipe nobody reads until the end could fill and stall the server.
    let log_path = std::env::temp_dir().join(format!("netwatch-pkg-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    cmd.stdout(Stdio::null()).stderr(log);
    say!("running  {}", describe(&cmd));
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", describe(&cmd)))?;
    let mut server = Server {
        child: Some(child),
        log: log_path,
    };
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let health = loop {
        match get(addr, "/healthz") {
            // 503 until its first interval is published: ready, not just listening.
            Ok(reply) if reply.status == 503 && Instant::now() <= deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            Ok(reply) => break reply,
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "netwatch serve, started as its unit, did not answer on {addr} within {} s: \
                     {e:#}\nits stderr:\n{}",
                    SERVE_TIMEOUT.as_secs(),
                    server.stop()
                )
            }
            Err(_) => {
                if let Some(status) = server.exited() {
                    bail!(
                        "netwatch serve, started as its unit, exited ({status}):\n{}",
                        server.stop()
                    );
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
    };
    ensure!(
        health.status == 200,
        "/healthz answered {}: {}",
        health.status,
        health.body
    );
    let metrics = get(addr, "/metrics")?;
    ensure!(
        metrics.status == 200,
        "/metrics answered {}",
        metrics.status
    );
    let missing: Vec<&str> = METRICS
        .iter()
        .filter(|m| !exposed(&metrics.body, m))
        .map(|m| m.name)
        .collect();
    let unlisted = unlisted_labels(&metrics.body);
    let stderr = server.stop();
    ensure!(
        missing.is_empty(),
        "/metrics lacks metrics that the dashboard and rules use: {}\nits stderr:\n{stderr}",
        missing.join(", ")
    );
    ensure!(
        unlisted.is_empty(),
        "/metrics has labels that xtask/src/dist/metrics.rs does not list: {} (never pid, port \
         or remote address: their cardinality is unbounded; add new bounded ones to the list)",
        unlisted.join(", ")
    );
    say!("ok       `netwatch serve` under the unit's capabilities answers /healthz and /metrics");
    Ok(())
}

/// A started server, stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Option<Child>,
    /// Its stderr.
    log: PathBuf,
}

impl Server {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops it and returns what it said on stderr.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = command("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        stderr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.0 GET: enough for a check, and no HTTP client to compile.
fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("cannot send GET {path} to {addr}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("cannot read the reply to GET {path} from {addr}"))?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} from {addr}: no HTTP status in {head:?}"))?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn get_reads_status_and_body_from_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The whole request before answering: closing on unread bytes sends a RST,
            // which can reach the client before the answer does.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nnot yet\n",
            )
            .unwrap();
            request
        });
        let reply = get(addr, "/healthz").unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "not yet\n");
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /healthz HTTP/1.0\r\n"));
        // The listener is gone with its thread: an error naming the address, not a panic.
        let e = get(addr, "/metrics").unwrap_err();
        assert!(format!("{e:#}").contains(&addr.to_string()), "{e:#}");
    }
}
