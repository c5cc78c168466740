//! How often each of netwatch's programs runs per connection on this kernel, measured: a
//! churn of loopback connections in a network namespace of its own (its conntrack idle),
//! traced by a netwatch that watches only that namespace, with the kernel's run-time
//! statistics on (a `BPF_ENABLE_STATS` descriptor held here, in a throw-away VM).
//!
//! Stock kernels allow fentry, so timewait and request sockets' deaths come from their
//! destructors, and the slab hooks (which run for every slab object of the kernel) stay
//! detached while conntrack is idle: this shows it, run by run. The times are TCG's, not a
//! real CPU's: compare programs with each other, not with the host's benchmark.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::loaded_programs,
    sys::{enable_stats, Stats},
};

use crate::{stop, Log};
use netwatch_tests::{
    sock::listen_backlog,
    tcp::{accept_timeout, connect_timeout, read_to_eof},
};

/// Connections in the churn: enough for per-connection figures to two decimals, few enough
/// for TCG (~1 ms each).
const CONNECTIONS: u32 = 300;
const PORT: u16 = 7300;
const IO: Duration = Duration::from_secs(5);
const STDERR: &str = "/overhead.stderr";

/// One program's runs and run time so far.
type Runs = BTreeMap<String, (u64, Duration)>;

/// The line for the guest's log: `overhead: ...`.
pub fn measure(log: &mut Log) -> Result<String> {
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let (to_churn, go) = mpsc::channel::<()>();
    let (ns_tx, ns_rx) = mpsc::channel::<Result<String>>();
    let churn = thread::spawn(move || -> Result<Duration> {
        // SAFETY: unshare on this thread only; it then lives in the new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = anyhow!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            let _ = ns_tx.send(Err(anyhow!("{e:#}")));
            return Err(e);
        }
        // SAFETY: plain syscalls.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        // A child spawned from this thread is in its namespace.
        let up = Command::new("/bin/busybox")
            .args(["ip", "link", "set", "lo", "up"])
            .status();
        if !up.is_ok_and(|s| s.success()) {
            let _ = ns_tx.send(Err(anyhow!("could not bring lo up in the new namespace")));
            bail!("lo down");
        }
        let _ = ns_tx.send(Ok(format!("/proc/{pid}/task/{tid}/ns/net")));
        go.recv_timeout(Duration::from_secs(120))
            .context("never told to start")?;
        let started = Instant::now();
        churn()?;
        Ok(started.elapsed())
    });
    let ns = ns_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the churn thread did not start")??;
    let _ = fs::remove_file(STDERR);
    let mut netwatch = Command::new("/bin/netwatch")
        .args(["trace", "--plain", "--interval", "1s", "--duration", "120"])
        .args(["--netns", &ns])
        .env("PATH", "/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(STDERR)?)
        .spawn()
        .context("starting /bin/netwatch")?;
    let result = (|| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !fs::read_to_string(STDERR).is_ok_and(|e| e.contains("netwatch: attached")) {
            if netwatch.try_wait()?.is_some() || Instant::now() > deadline {
                bail!(
                    "netwatch did not attach: {}",
                    fs::read_to_string(STDERR).unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        let pid = netwatch.id();
        let before = runs(pid)?;
        to_churn.send(()).context("the churn thread is gone")?;
        let took = churn
            .join()
            .map_err(|_| anyhow!("the churn thread panicked"))??;
        let after = runs(pid)?;
        Ok(line(&before, &after, took))
    })();
    stop(&mut netwatch, log)?;
    result
}

/// The server closes first (its side ends in TIME_WAIT), as in the host's benchmark.
fn churn() -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let listener = listen_backlog(addr, 128)?;
    for _ in 0..CONNECTIONS {
        let mut client = connect_timeout(addr, IO)?;
        let (server, _) = accept_timeout(&listener, IO)?;
        drop(server);
        read_to_eof(&mut client, IO)?;
    }
    Ok(())
}

/// Runs and run time of the programs process `pid` holds.
fn runs(pid: u32) -> Result<Runs> {
    let mut ids = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(fd?.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    let mut out = Runs::new();
    for p in loaded_programs().flatten() {
        if ids.contains(&p.id()) {
            let name = p.name_as_str().unwrap_or("?").to_owned();
            let (n, t) = out.entry(name).or_default();
            *n += p.run_count();
            *t += p.run_time();
        }
    }
    if out.is_empty() {
        bail!("netwatch holds no programs");
    }
    Ok(out)
}

/// `overhead: 300 connections in 0.4 s, ...; runs per connection: set_state 10.00 (812
/// ns), ...; all programs 9100 ns per connection (TCG)`, every program listed, idle ones
/// with 0.
fn line(before: &Runs, after: &Runs, took: Duration) -> String {
    let n = f64::from(CONNECTIONS);
    let mut total = Duration::ZERO;
    let per: Vec<String> = after
        .iter()
        .map(|(name, (runs, time))| {
            let (r0, t0) = before.get(name).copied().unwrap_or_default();
            let dt = time.saturating_sub(t0);
            total += dt;
            let dr = runs.saturating_sub(r0);
            let ns = if dr == 0 {
                0
            } else {
                dt.as_nanos() / u128::from(dr)
            };
            format!("{name} {:.2} ({ns} ns)", dr as f64 / n)
        })
        .collect();
    format!(
        "overhead: {CONNECTIONS} connections in {:.1} s in a namespace whose conntrack is idle; \
         runs per connection (ns a run): {}; all programs {:.0} ns per connection (TCG)",
        took.as_secs_f64(),
        per.join(", "),
        total.as_nanos() as f64 / n
    )
}
