//! `cargo xtask bench`: netwatch's overhead and throughput next to no tracer and the peers
//! (libbpf-tools `tcpstates` and `tcplife`), under maximal loopback connection churn from
//! `loadgen`, in interleaved rounds so drift of the machine hits every mode alike.
//!
//! Part 1 runs every mode once per round and reports the connection rate (median, min-max,
//! ratio to no tracer), the tracer's CPU over the load window and its peak RSS, records
//! against lost, and the time to attach and to the first record. Part 2 (the sweep) raises
//! the load generator's clients with netwatch writing JSON until records are lost, with the
//! kernel's run-time statistics on (a `BPF_ENABLE_STATS` descriptor the bench holds), for the
//! records per second netwatch sustains and the kernel time per record and per connection.
//! Everything it changes on the machine (a sysctl, a tracefs mount) is put back, and every
//! child process is stopped on any exit path. `--quick` (or `NETWATCH_BENCH_QUICK=1`) is a
//! shorter run for comparing one change with another, not for BENCHMARKS.md.

mod measure;
mod procs;
mod report;
mod targets;

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    build, say, setup,
    util::{cargo, command, is_root, run_checked, which, workspace_root},
};
use measure::{BpfHoldings, RunTimeStats, SysctlGuard, TracefsGuard};
use procs::{guarded, Proc, TempDir};

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Interleaved rounds; each runs every mode once [default: 5; 2 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: Option<u32>,
    /// Seconds of load per run [default: 6; 3 with --quick]
    #[arg(long)]
    seconds: Option<f64>,
    /// A short run for measuring one change against another: 2 rounds of 3 s after a 3 s
    /// warm-up, the sweep at `--clients` only, no million-socket part. Also
    /// NETWATCH_BENCH_QUICK=1. Not for `--write`.
    #[arg(long, conflicts_with = "write")]
    quick: bool,
    /// Load generator client threads
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Cap part 1's load at this many connections/s (0: as fast as the box allows), e.g. to
    /// compare tracers at an equal offered load rather than at saturation
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Load generator server threads (one listener each)
    #[arg(long, default_value_t = 2)]
    servers: u32,
    /// Only these modes, comma-separated: none, netwatch-json, netwatch-dashboard,
    /// netwatch-plain, netwatch-serve, tcpstates, tcplife
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Also write the results to BENCHMARKS.md at the workspace root
    #[arg(long)]
    write: bool,
    /// Skip part 2 (records/s without loss, kernel cost per record)
    #[arg(long)]
    no_sweep: bool,
    /// Client counts part 2 steps through (it stops at the first run that loses records)
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    sweep_clients: Vec<u32>,
    /// Skip part 3 (a million TIME_WAIT sockets: raises net.ipv4.tcp_max_tw_buckets for it,
    /// restored afterwards)
    #[arg(long)]
    no_million: bool,
    /// Benchmark netwatch as committed at this git revision (built from `git archive` in
    /// target/bench-src/) instead of the working tree
    #[arg(long, value_name = "REV", conflicts_with = "netwatch_bin")]
    rev: Option<String>,
    /// Benchmark this netwatch binary instead of building one
    #[arg(long, value_name = "PATH")]
    netwatch_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    NetwatchJson,
    NetwatchDashboard,
    /// `trace --plain`: text summaries every interval, no per-record output.
    NetwatchPlain,
    /// `serve`: Prometheus metrics, no terminal, no file.
    NetwatchServe,
    Tcpstates,
    Tcplife,
}

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::None,
        Mode::NetwatchJson,
        Mode::NetwatchDashboard,
        Mode::NetwatchPlain,
        Mode::NetwatchServe,
        Mode::Tcpstates,
        Mode::Tcplife,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::NetwatchJson => "netwatch-json",
            Mode::NetwatchDashboard => "netwatch-dashboard",
            Mode::NetwatchPlain => "netwatch-plain",
            Mode::NetwatchServe => "netwatch-serve",
            Mode::Tcpstates => "tcpstates",
            Mode::Tcplife => "tcplife",
        }
    }

    pub fn is_netwatch(self) -> bool {
        matches!(
            self,
            Mode::NetwatchJson
                | Mode::NetwatchDashboard
                | Mode::NetwatchPlain
                | Mode::NetwatchServe
        )
    }

    /// A live view: summaries, a dashboard or metrics, nothing per transition (issue 14
    /// holds these to a tighter ratio than `--output`).
    pub fn is_live(self) -> bool {
        self.is_netwatch() && self != Mode::NetwatchJson
    }

    fn is_peer(self) -> bool {
        matches!(self, Mode::Tcpstates | Mode::Tcplife)
    }
}

/// The Debian package with libbpf-tools' tcpstates and tcplife.
const PEER_PACKAGE: &str = "libbpf-tools";
const PEER_DIR: &str = "/usr/sbin";
/// How long a tracer may take to attach before the run counts as failed.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Peers print nothing when attached (their stdout is a file): after their BPF link shows in
/// /proc, give them this long to open their buffers.
const PEER_SETTLE: Duration = Duration::from_millis(1000);
/// Pause between runs so one tracer's teardown does not overlap the next run.
const SETTLE: Duration = Duration::from_millis(700);
const WARMUP_SECONDS: f64 = 10.0;
const QUICK_WARMUP_SECONDS: f64 = 3.0;
/// The byte sequence a full-screen TUI sends first (switch to the alternate screen).
const ALT_SCREEN: &[u8] = b"\x1b[?1049h";

/// netwatch's flags, as `netwatch trace --help` lists them today.
struct NwFlags {
    force: bool,
    quiet: bool,
    /// A flag that turns the dashboard off, if there is one (`--plain`, `--no-dashboard`).
    no_dashboard: Option<&'static str>,
    /// A flag that turns it on, if it is not the tty default.
    dashboard: Option<&'static str>,
    /// `--plain` text summaries (what the million-socket part runs) and their `--interval`.
    plain: bool,
    interval: bool,
    /// Whether this netwatch has the `serve` command.
    serve: bool,
}

impl NwFlags {
    fn probe(netwatch: &Path) -> Result<NwFlags> {
        let out = command(netwatch)
            .args(["trace", "--help"])
            .output()
            .with_context(|| format!("running {} trace --help", netwatch.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        let has = |flag: &str| {
            help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
                .any(|w| w == flag)
        };
        Ok(NwFlags {
            force: has("--force"),
            quiet: has("--quiet"),
            no_dashboard: ["--plain", "--no-dashboard", "--no-tui"]
                .into_iter()
                .find(|f| has(f)),
            dashboard: ["--dashboard", "--tui"].into_iter().find(|f| has(f)),
            plain: has("--plain"),
            interval: has("--interval"),
            serve: command(netwatch)
                .args(["serve", "--help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        })
    }

    /// Text summaries at netwatch's default interval, as a person runs it.
    fn plain_args(&self) -> Vec<String> {
        vec!["trace".into(), "--plain".into()]
    }

    /// Metrics on a port the kernel picks (nothing scrapes them during the run).
    fn serve_args(&self) -> Vec<String> {
        vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()]
    }

    fn json_args(&self, out: &Path) -> Vec<String> {
        let mut args = vec!["trace".to_string(), "--output".into()];
        args.push(out.display().to_string());
        if self.force {
            args.push("--force".into());
        }
        // --quiet (nothing on stdout) already means no dashboard, and netwatch refuses it
        // together with --plain; stdout is /dev/null anyway, which is not a terminal.
        if self.quiet {
            args.push("--quiet".into());
        } else if let Some(f) = self.no_dashboard {
            args.push(f.into());
        }
        args
    }

    /// Text summaries on stdout (a file), no per-record output: what a person leaves running
    /// on a busy host. Without `--plain`, JSON to /dev/null.
    fn summary_args(&self, interval: &str) -> Vec<String> {
        let mut args = vec!["trace".to_string()];
        if self.plain {
            args.push("--plain".into());
            if self.interval {
                args.extend(["--interval".into(), interval.into()]);
            }
        } else {
            args = self.json_args(Path::new("/dev/null"));
        }
        args
    }

    fn dashboard_args(&self) -> Vec<String> {
        let mut args = vec!["trace".to_string()];
        if let Some(f) = self.dashboard {
            args.push(f.into());
        }
        args
    }
}

struct Env {
    netwatch: PathBuf,
    loadgen: PathBuf,
    script: Option<PathBuf>,
    flags: NwFlags,
    tmp: TempDir,
    clk_tck: f64,
    servers: u32,
}

/// What loadgen printed.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub conn_per_s: f64,
    pub connections: u64,
    pub errors: u64,
    pub errors_by_kind: String,
    pub seconds: f64,
    pub tw_overflow: u64,
    pub listen_overflows: u64,
}

/// One run of one mode.
#[derive(Clone, Debug)]
pub struct Run {
    pub mode: Mode,
    pub clients: u32,
    pub load: Load,
    /// Tracer CPU over the load window, % of one core.
    pub cpu_pct: Option<f64>,
    /// The terminal's side of the dashboard mode (`script` copying the pty), % of one core.
    pub aux_cpu_pct: Option<f64>,
    pub rss_kb: Option<u64>,
    pub records: Option<u64>,
    pub lost: Option<u64>,
    pub attach_s: Option<f64>,
    pub first_event_s: Option<f64>,
    /// Dashboard mode: whether the pty saw the alternate screen (a TUI), and bytes written.
    pub tui: Option<bool>,
    pub tty_bytes: Option<u64>,
    pub bpf: Option<BpfHoldings>,
    pub stopped_cleanly: bool,
}

pub fn bench(opts: Opts) -> Result<ExitCode> {
    if !is_root() {
        bail!(
            "the benchmark loads BPF programs, installs {PEER_PACKAGE} and sets sysctls: run it \
             as root (e.g. `sudo -E env PATH=$PATH cargo xtask bench`)"
        );
    }
    let quick = opts.quick
        || std::env::var_os("NETWATCH_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    if quick && opts.write {
        bail!("NETWATCH_BENCH_QUICK is set: a quick run is not written to BENCHMARKS.md");
    }
    let rounds = opts.rounds.unwrap_or(if quick { 2 } else { 5 });
    let seconds = opts.seconds.unwrap_or(if quick { 3.0 } else { 6.0 });
    let warmup_s = if quick {
        QUICK_WARMUP_SECONDS
    } else {
        WARMUP_SECONDS
    };
    let sweep_clients = if quick && opts.sweep_clients == [1, 2, 4, 8, 16] {
        vec![opts.clients]
    } else {
        opts.sweep_clients.clone()
    };
    if !(1.0..=600.0).contains(&seconds) {
        bail!("--seconds must be between 1 and 600");
    }
    if opts.clients == 0 || opts.servers == 0 || opts.servers > 250 {
        bail!("--clients must be at least 1 and --servers between 1 and 250");
    }
    let mut modes = Vec::new();
    if opts.modes.is_empty() {
        modes.extend(Mode::ALL);
    } else {
        for m in &opts.modes {
            match Mode::ALL.iter().find(|x| x.name() == m.as_str()) {
                Some(x) if !modes.contains(x) => modes.push(*x),
                Some(_) => {}
                None => bail!(
                    "unknown mode `{m}`; modes: {}",
                    Mode::ALL.map(Mode::name).join(", ")
                ),
            }
        }
    }
    let mut notes: Vec<String> = Vec::new();

    let (netwatch, revision) = match (&opts.netwatch_bin, &opts.rev) {
        (Some(bin), _) if bin.is_file() => {
            say!("using    {} (not rebuilt)", bin.display());
            (
                bin.clone(),
                format!("the binary {} (`--netwatch-bin`)", bin.display()),
            )
        }
        (Some(bin), _) => bail!("--netwatch-bin {}: no such file", bin.display()),
        (None, Some(rev)) => {
            setup::ensure(true)?;
            build_revision(rev)?
        }
        (None, None) => {
            setup::ensure(true)?;
            (build::build_netwatch(true)?, workspace_revision())
        }
    };
    let loadgen = build_loadgen()?;
    let flags = NwFlags::probe(&netwatch)?;

    // Peers: Debian's libbpf-tools, installed if missing; skipped (and said so) if that fails.
    let mut tracefs = None;
    if modes.iter().any(|m| m.is_peer()) {
        let ready = ensure_peer_package().and_then(|()| TracefsGuard::ensure());
        match ready {
            Ok(guard) => tracefs = Some(guard),
            Err(e) => {
                let msg = format!("peers skipped: {e:#}");
                say!("{msg}");
                notes.push(msg);
                modes.retain(|m| !m.is_peer());
            }
        }
    }
    let script = which("script");
    if modes.contains(&Mode::NetwatchPlain) && !flags.plain {
        let msg = "netwatch-plain skipped: this netwatch has no `trace --plain`";
        say!("{msg}");
        notes.push(msg.into());
        modes.retain(|m| *m != Mode::NetwatchPlain);
    }
    if modes.contains(&Mode::NetwatchServe) && !flags.serve {
        let msg = "netwatch-serve skipped: this netwatch has no `serve`";
        say!("{msg}");
        notes.push(msg.into());
        modes.retain(|m| *m != Mode::NetwatchServe);
    }
    if modes.contains(&Mode::NetwatchDashboard) && script.is_none() {
        let msg = "netwatch-dashboard skipped: no `script` (util-linux) to give it a terminal";
        say!("{msg}");
        notes.push(msg.into());
        modes.retain(|m| *m != Mode::NetwatchDashboard);
    }
    if modes.is_empty() {
        bail!("no mode left to run");
    }

    let machine = measure::Machine::probe();
    say!("netwatch {revision}");
    say!(
        "machine  {} CPUs ({}), {}, kernel {}; net.ipv4.tcp_max_tw_buckets = {} (left as it is), \
         ip_local_port_range = {}",
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.tw_buckets,
        machine.port_range
    );
    let env = Env {
        netwatch,
        loadgen,
        script,
        flags,
        tmp: TempDir::new("netwatch-bench")?,
        clk_tck: measure::clock_ticks_per_sec(),
        servers: opts.servers,
    };
    let json_cmd = format!(
        "netwatch {}",
        env.flags.json_args(Path::new("FILE")).join(" ")
    );
    let dash_cmd = format!("netwatch {}", env.flags.dashboard_args().join(" "));
    let summary_cmd = env.flags.summary_args("2s").join(" ");
    let plain_cmd = format!("netwatch {}", env.flags.plain_args().join(" "));
    let serve_cmd = format!("netwatch {}", env.flags.serve_args().join(" "));

    say!("warm-up  {warmup_s} s of load, so every run starts with the TIME_WAIT table as full as it stays");
    let warm = run_loadgen(&env, opts.clients, warmup_s, 0)?;
    say!(
        "warm-up  {:.0} conn/s, {} TIME_WAIT overflows",
        warm.conn_per_s,
        warm.tw_overflow
    );

    let mut runs: Vec<Run> = Vec::new();
    let mut failed: Vec<(Mode, String)> = Vec::new();
    for round in 1..=rounds {
        for &mode in &modes {
            if failed.iter().any(|(m, _)| *m == mode) {
                continue;
            }
            thread::sleep(SETTLE);
            match run_mode(&env, mode, opts.clients, seconds, opts.rate) {
                Ok(run) => {
                    say!("round {round}/{rounds}: {}", report::one_line(&run));
                    runs.push(run);
                }
                Err(e) => {
                    say!("round {round}: {} failed: {e:#}", mode.name());
                    failed.push((mode, format!("{e:#}")));
                }
            }
        }
    }

    let sweep = if opts.no_sweep {
        Vec::new()
    } else {
        run_sweep(&env, &sweep_clients, seconds, &mut notes)?
    };
    let million = if opts.no_million || quick {
        None
    } else {
        thread::sleep(SETTLE);
        match run_million(&env, opts.clients) {
            Ok(m) => Some(m),
            Err(e) => {
                say!("million-socket part failed: {e:#}");
                notes.push(format!("million-socket part failed: {e:#}"));
                None
            }
        }
    };
    drop(tracefs);

    for (mode, e) in &failed {
        notes.push(format!("{} failed and was dropped: {e}", mode.name()));
    }
    let rep = report::Report {
        machine,
        revision,
        rounds,
        rate: opts.rate,
        seconds,
        warmup_s,
        quick,
        clients: opts.clients,
        servers: opts.servers,
        modes,
        runs,
        sweep,
        million,
        notes,
        json_cmd,
        dash_cmd,
        plain_cmd,
        serve_cmd,
        summary_cmd,
        warmup: warm,
    };
    println!("{}", rep.markdown(false));
    if opts.write {
        let path = workspace_root().join("BENCHMARKS.md");
        let old = fs::read_to_string(&path).unwrap_or_default();
        fs::write(&path, rep.markdown_file(&old))
            .with_context(|| format!("writing {}", path.display()))?;
        say!("wrote    {}", path.display());
    }
    Ok(if failed.iter().any(|(m, _)| m.is_netwatch()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn git() -> std::process::Command {
    let mut cmd = command("git");
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds netwatch as committed at `rev`, away from the working tree (which others may be
/// editing): `git archive` into target/bench-src/tree, with its own target dir there so
/// later builds are incremental.
fn build_revision(rev: &str) -> Result<(PathBuf, String)> {
    let out = git()
        .args([
            "rev-parse",
            "--verify",
            "--short=12",
            &format!("{rev}^{{commit}}"),
        ])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!("--rev {rev}: not a commit of this repository");
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let base = workspace_root().join("target/bench-src");
    let tree = base.join("tree");
    let tar = base.join("tree.tar");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    run_checked(
        git()
            .args(["archive", "--format=tar", "-o"])
            .arg(&tar)
            .arg(&commit),
        &format!("git archive {commit} failed"),
    )?;
    // -m: files get the current time, not the commit's, or cargo would take the previous
    // revision's build in the same target dir for up to date.
    run_checked(
        command("tar").arg("-xmf").arg(&tar).arg("-C").arg(&tree),
        "unpacking the archive failed",
    )?;
    say!("building netwatch at {commit} in {}", tree.display());
    let mut cmd = command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--release", "--package", "netwatch"])
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .stdout(std::io::stderr());
    run_checked(&mut cmd, &format!("building netwatch at {commit} failed"))?;
    let bin = base.join("target/release/netwatch");
    if !bin.is_file() {
        bail!(
            "cargo built netwatch at {commit} but {} does not exist",
            bin.display()
        );
    }
    Ok((bin, format!("built from commit {commit} (`--rev {rev}`)")))
}

/// Which netwatch the workspace build is: the commit, and whether its sources differ from it.
fn workspace_revision() -> String {
    let run_git = |args: &[&str]| {
        git()
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = run_git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "built from this workspace (no git revision found)".into();
    };
    let dirty = run_git(&[
        "status",
        "--porcelain",
        "--",
        "netwatch",
        "netwatch-ebpf",
        "netwatch-common",
    ])
    .is_some_and(|s| !s.is_empty());
    format!(
        "built from commit {commit}{}",
        if dirty {
            " plus uncommitted changes in netwatch*/"
        } else {
            ""
        }
    )
}

fn build_loadgen() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--package", "loadgen"])
        .stdout(std::io::stderr());
    run_checked(&mut cmd, "building loadgen failed")?;
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = if dir.is_absolute() {
        dir
    } else {
        workspace_root().join(dir)
    };
    let bin = dir.join("release/loadgen");
    if !bin.is_file() {
        bail!("cargo built loadgen but {} does not exist", bin.display());
    }
    say!("built    {}", bin.display());
    Ok(bin)
}

/// Installs libbpf-tools through apt if tcpstates/tcplife are missing (idempotent).
fn ensure_peer_package() -> Result<()> {
    let present = |tool: &str| Path::new(PEER_DIR).join(tool).is_file();
    if present("tcpstates") && present("tcplife") {
        say!("ok       {PEER_PACKAGE}: {PEER_DIR}/tcpstates, {PEER_DIR}/tcplife");
        return Ok(());
    }
    say!("missing  {PEER_PACKAGE}: installing it with apt-get (the peers' tcpstates, tcplife)");
    apt_install(PEER_PACKAGE)?;
    if !(present("tcpstates") && present("tcplife")) {
        bail!("{PEER_PACKAGE} is installed but has no {PEER_DIR}/tcpstates and tcplife");
    }
    Ok(())
}

/// bpftool only names netwatch's programs in the sweep table: best effort.
fn ensure_bpftool() {
    if which("bpftool").is_some() {
        return;
    }
    say!("missing  bpftool (names the BPF programs in the cost table): trying apt-get");
    if let Err(e) = apt_install("bpftool") {
        say!("warning: {e:#}; programs are listed by id");
    }
}

/// apt-get install, with one apt-get update if the first try fails (stale lists).
fn apt_install(pkg: &str) -> Result<()> {
    let apt = || {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr());
        cmd
    };
    let install = || {
        run_checked(
            apt().args(["install", "-y", "--no-install-recommends", pkg]),
            &format!("apt-get install {pkg} failed"),
        )
    };
    if install().is_err() {
        run_checked(apt().arg("update"), "apt-get update failed")?;
        install()?;
    }
    Ok(())
}

fn run_loadgen(env: &Env, clients: u32, seconds: f64, rate: u32) -> Result<Load> {
    let mut cmd = guarded(&env.loadgen);
    cmd.args([
        "--duration",
        &format!("{seconds}"),
        "--clients",
        &clients.to_string(),
        "--servers",
        &env.servers.to_string(),
        "--rate",
        &rate.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut p = Proc::spawn(&mut cmd, "loadgen")?;
    let limit = Duration::from_secs_f64(seconds) + Duration::from_secs(20);
    let status = match p.wait_timeout(limit)? {
        Some(s) => s,
        None => bail!("loadgen did not finish within {limit:?}"),
    };
    let mut out = String::new();
    if let Some(mut stdout) = p.child_mut().stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("loadgen exited with {status}; output: {out}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("loadgen printed no JSON line: {out}"))?;
    let num = |k: &str| measure::json_num(line, k);
    Ok(Load {
        conn_per_s: num("conn_per_s").context("loadgen JSON without conn_per_s")?,
        connections: num("connections").unwrap_or(0.0) as u64,
        errors: num("errors").unwrap_or(0.0) as u64,
        errors_by_kind: measure::json_obj(line, "errors_by_kind")
            .unwrap_or("{}")
            .to_string(),
        seconds: num("seconds").unwrap_or(seconds),
        tw_overflow: num("tw_overflow").unwrap_or(0.0) as u64,
        listen_overflows: num("listen_overflows").unwrap_or(0.0) as u64,
    })
}

/// A tracer that is up: the process we signal, the pid we measure (they differ under
/// `script`), and what to read when it is done.
struct Tracer {
    proc: Proc,
    pid: u32,
    aux_pid: Option<u32>,
    stderr: PathBuf,
    stdout: Option<PathBuf>,
    attach_s: f64,
    first_event: Option<FirstEvent>,
    tty: Option<TtyWatch>,
    started: Instant,
}

/// Polls the output file for its first byte: the first record reaching the file.
struct FirstEvent {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Option<Instant>>,
}

impl FirstEvent {
    fn watch(path: PathBuf) -> FirstEvent {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false) {
                    return Some(Instant::now());
                }
                thread::sleep(Duration::from_millis(2));
            }
            None
        });
        FirstEvent { stop, handle }
    }

    fn finish(self) -> Option<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// Reads what the dashboard writes to its terminal, as a terminal would, noting whether it
/// switched to the alternate screen.
struct TtyWatch {
    tui: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
}

impl TtyWatch {
    fn start(mut out: std::process::ChildStdout) -> TtyWatch {
        let tui = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (t, b) = (Arc::clone(&tui), Arc::clone(&bytes));
        thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut carry: Vec<u8> = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                b.fetch_add(n as u64, Ordering::Relaxed);
                if !t.load(Ordering::Relaxed) {
                    carry.extend_from_slice(&buf[..n]);
                    if carry.windows(ALT_SCREEN.len()).any(|w| w == ALT_SCREEN) {
                        t.store(true, Ordering::Relaxed);
                    }
                    let keep = carry.len().saturating_sub(ALT_SCREEN.len());
                    carry.drain(..keep);
                }
            }
        });
        TtyWatch { tui, bytes }
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn start_tracer(env: &Env, mode: Mode) -> Result<Option<Tracer>> {
    let stderr = env.tmp.join(&format!("{}.stderr", mode.name()));
    let out = env.tmp.join(&format!("{}.out", mode.name()));
    let _ = fs::remove_file(&out);
    match mode {
        Mode::None => Ok(None),
        Mode::NetwatchJson | Mode::NetwatchPlain | Mode::NetwatchServe => {
            // JSON goes to the file `out` (watched for its first record); the text summaries
            // of --plain to `out` as stdout; serve writes nothing there.
            let (args, stdout) = match mode {
                Mode::NetwatchJson => (env.flags.json_args(&out), Stdio::null()),
                Mode::NetwatchPlain => (env.flags.plain_args(), fs::File::create(&out)?.into()),
                _ => (env.flags.serve_args(), Stdio::null()),
            };
            let mut cmd = guarded(&env.netwatch);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(fs::File::create(&stderr)?);
            let mut proc = Proc::spawn(&mut cmd, "netwatch")?;
            let started = proc.started;
            let first = (mode == Mode::NetwatchJson).then(|| FirstEvent::watch(out.clone()));
            let (_, at) =
                procs::wait_for_line(&stderr, "netwatch: attached", &mut proc, ATTACH_TIMEOUT)?;
            Ok(Some(Tracer {
                pid: proc.pid,
                proc,
                aux_pid: None,
                stderr,
                stdout: None,
                attach_s: (at - started).as_secs_f64(),
                first_event: first,
                tty: None,
                started,
            }))
        }
        Mode::NetwatchDashboard => {
            let script = env.script.as_ref().context("no script")?;
            let mut line = String::from("stty rows 24 cols 80 2>/dev/null; exec ");
            line.push_str(&sh_quote(&env.netwatch.display().to_string()));
            for a in env.flags.dashboard_args() {
                line.push(' ');
                line.push_str(&sh_quote(&a));
            }
            line.push_str(" 2>");
            line.push_str(&sh_quote(&stderr.display().to_string()));
            fs::write(&stderr, "")?;
            let mut cmd = guarded(script);
            cmd.args(["-qfc", &line, "/dev/null"])
                .env("TERM", "xterm")
                .env("SHELL", "/bin/sh")
                .env_remove("COLUMNS")
                .env_remove("LINES")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut proc = Proc::spawn(&mut cmd, "script (netwatch dashboard)")?;
            let started = proc.started;
            let tty = TtyWatch::start(proc.child_mut().stdout.take().context("script stdout")?);
            let (_, at) =
                procs::wait_for_line(&stderr, "netwatch: attached", &mut proc, ATTACH_TIMEOUT)?;
            let pid = procs::children(proc.pid)
                .into_iter()
                .find(|p| procs::comm(*p).as_deref() == Some("netwatch"))
                .context("netwatch attached but is not a child of script")?;
            Ok(Some(Tracer {
                aux_pid: Some(proc.pid),
                pid,
                proc,
                stderr,
                stdout: None,
                attach_s: (at - started).as_secs_f64(),
                first_event: None,
                tty: Some(tty),
                started,
            }))
        }
        Mode::Tcpstates | Mode::Tcplife => {
            let bin = Path::new(PEER_DIR).join(mode.name());
            let mut cmd = guarded(&bin);
            cmd.stdin(Stdio::null())
                .stdout(fs::File::create(&out)?)
                .stderr(fs::File::create(&stderr)?);
            let mut proc = Proc::spawn(&mut cmd, mode.name())?;
            let started = proc.started;
            let deadline = started + ATTACH_TIMEOUT;
            let attached = loop {
                if measure::has_attachment(proc.pid) {
                    break Instant::now();
                }
                if let Some(status) = proc.try_wait()? {
                    bail!(
                        "{} exited ({status}) before attaching: {}",
                        mode.name(),
                        procs::tail(&fs::read_to_string(&stderr).unwrap_or_default(), 2000)
                    );
                }
                if Instant::now() >= deadline {
                    bail!("{} did not attach within {ATTACH_TIMEOUT:?}", mode.name());
                }
                thread::sleep(Duration::from_millis(5));
            };
            thread::sleep(PEER_SETTLE);
            if let Some(status) = proc.try_wait()? {
                bail!(
                    "{} exited ({status}) right after attaching: {}",
                    mode.name(),
                    procs::tail(&fs::read_to_string(&stderr).unwrap_or_default(), 2000)
                );
            }
            Ok(Some(Tracer {
                pid: proc.pid,
                proc,
                aux_pid: None,
                stderr,
                stdout: Some(out),
                attach_s: (attached - started).as_secs_f64(),
                first_event: None,
                tty: None,
                started,
            }))
        }
    }
}

fn run_mode(env: &Env, mode: Mode, clients: u32, seconds: f64, rate: u32) -> Result<Run> {
    let mut tracer = start_tracer(env, mode)?;
    let cpu0 = tracer.as_ref().and_then(|t| measure::cpu_ticks(t.pid));
    let aux0 = tracer
        .as_ref()
        .and_then(|t| t.aux_pid.and_then(measure::cpu_ticks));
    let t0 = Instant::now();
    let load = run_loadgen(env, clients, seconds, rate)?;
    let window = t0.elapsed().as_secs_f64();
    let mut run = Run {
        mode,
        clients,
        load,
        cpu_pct: None,
        aux_cpu_pct: None,
        rss_kb: None,
        records: None,
        lost: None,
        attach_s: None,
        first_event_s: None,
        tui: None,
        tty_bytes: None,
        bpf: None,
        stopped_cleanly: true,
    };
    let Some(mut t) = tracer.take() else {
        return Ok(run);
    };
    let pct = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .map(|(a, b)| b.saturating_sub(a) as f64 / env.clk_tck / window * 100.0)
    };
    run.cpu_pct = pct(cpu0, measure::cpu_ticks(t.pid));
    run.aux_cpu_pct = t.aux_pid.and_then(|p| pct(aux0, measure::cpu_ticks(p)));
    run.rss_kb = measure::status_kb(t.pid, "VmHWM");
    run.attach_s = Some(t.attach_s);
    if mode.is_netwatch() {
        run.bpf = Some(measure::bpf_holdings(t.pid));
    }
    if let Some(first) = t.first_event.take() {
        run.first_event_s = first.finish().map(|i| (i - t.started).as_secs_f64());
    }
    run.stopped_cleanly = stop_tracer(&mut t, mode)?;
    let stderr = fs::read_to_string(&t.stderr).unwrap_or_default();
    if let Some(tty) = &t.tty {
        run.tui = Some(tty.tui.load(Ordering::Relaxed));
        run.tty_bytes = Some(tty.bytes.load(Ordering::Relaxed));
    }
    if mode.is_netwatch() {
        let (records, lost) = parse_netwatch_exit(&stderr).with_context(|| {
            format!(
                "netwatch printed no `N transitions; lost L records` line at exit; stderr:\n{}",
                procs::tail(&stderr, 2000)
            )
        })?;
        run.records = Some(records);
        run.lost = Some(lost);
    } else if let Some(out) = &t.stdout {
        // One header line, then one line per record.
        run.records = Some(count_lines(out)?.saturating_sub(1));
        run.lost = Some(parse_peer_lost(&stderr));
    }
    Ok(run)
}

/// Stops a tracer the way a person would; returns whether it exited by itself.
fn stop_tracer(t: &mut Tracer, mode: Mode) -> Result<bool> {
    if mode == Mode::NetwatchDashboard {
        let tui = t
            .tty
            .as_ref()
            .is_some_and(|w| w.tui.load(Ordering::Relaxed));
        let netwatch_alive = |pid: u32| procs::comm(pid).as_deref() == Some("netwatch");
        if tui {
            // In raw mode Ctrl-C is a key, not a signal: quit as a person would.
            if let Some(stdin) = t.proc.child_mut().stdin.as_mut() {
                let _ = stdin.write_all(b"q");
                let _ = stdin.flush();
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while netwatch_alive(t.pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if netwatch_alive(t.pid) {
            procs::signal_pid(t.pid, "INT");
        }
        let (_, clean) = t.proc.stop("TERM", Duration::from_secs(20))?;
        return Ok(clean);
    }
    let (_, clean) = t.proc.stop("INT", Duration::from_secs(20))?;
    Ok(clean)
}

/// `netwatch: N transitions; lost L records ...`
fn parse_netwatch_exit(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("netwatch: ") && l.contains(" transitions; lost "))?;
    let records = line
        .strip_prefix("netwatch: ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let lost = line
        .split("lost ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((records, lost))
}

/// libbpf-tools print `lost N events on CPU #C` per perf-buffer overrun.
fn parse_peer_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("lost ")?;
            let mut words = rest.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            (words.next()? == "events").then_some(n)
        })
        .sum()
}

fn count_lines(path: &Path) -> Result<u64> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Part 2: more clients until netwatch loses records, with BPF run-time stats on.
fn run_sweep(
    env: &Env,
    clients: &[u32],
    seconds: f64,
    notes: &mut Vec<String>,
) -> Result<Vec<Run>> {
    ensure_bpftool();
    let stats = match RunTimeStats::enable() {
        Ok(g) => Some(g),
        Err(e) => {
            notes.push(format!("kernel cost per record not measured: {e:#}"));
            None
        }
    };
    let mut runs = Vec::new();
    for &clients in clients {
        thread::sleep(SETTLE);
        let run = match run_mode(env, Mode::NetwatchJson, clients, seconds, 0) {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("sweep at {clients} clients failed: {e:#}"));
                break;
            }
        };
        say!("sweep: {}", report::one_line(&run));
        let lost = run.lost.unwrap_or(0) > 0;
        runs.push(run);
        if lost {
            break;
        }
    }
    drop(stats);
    Ok(runs)
}

/// TIME_WAIT sockets part 3 builds up, and the tcp_max_tw_buckets it needs for that.
const MILLION: u64 = 1_000_000;
const MILLION_TW_BUCKETS: u64 = 1_200_000;
/// Give up filling after this long (TIME_WAIT lasts 60 s, so the rate must stay above
/// ~17k conn/s to hold a million).
const MILLION_FILL_LIMIT: Duration = Duration::from_secs(100);

/// netwatch with a million TIME_WAIT sockets on the host.
#[derive(Clone, Debug, Default)]
pub struct MillionNetwatch {
    pub rss_kb: Option<u64>,
    pub hwm_kb: Option<u64>,
    pub maps_memlock: u64,
    /// The TIME_WAIT count in its latest text summary.
    pub tracked_tw: Option<u64>,
    pub attach_s: f64,
    /// Start to its first text summary.
    pub first_summary_s: Option<f64>,
    pub cpu_pct: Option<f64>,
    pub records: Option<u64>,
    pub lost: Option<u64>,
    /// Its exit warning: socket entries the kernel maps had no room for.
    pub untracked: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Million {
    pub tw_buckets_before: String,
    pub tw_sockets: u64,
    pub fill_s: f64,
    pub conn_per_s: f64,
    /// Running while they piled up.
    pub running: MillionNetwatch,
    /// Started with them present (its census).
    pub fresh: Option<MillionNetwatch>,
}

fn start_summary_netwatch(
    env: &Env,
    tag: &str,
    interval: &str,
) -> Result<(Proc, PathBuf, PathBuf)> {
    let out = env.tmp.join(&format!("{tag}.out"));
    let err = env.tmp.join(&format!("{tag}.stderr"));
    let mut cmd = guarded(&env.netwatch);
    cmd.args(env.flags.summary_args(interval))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let proc = Proc::spawn(&mut cmd, "netwatch")?;
    Ok((proc, out, err))
}

/// The TIME_WAIT count of the last `[hh:mm:ss] ... TIME_WAIT N ...` summary line.
fn summary_tw(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .filter(|l| l.starts_with('['))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "TIME_WAIT")?;
            w.next()?.parse().ok()
        })
}

fn parse_untracked(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("netwatch: warning: ")?;
        let (n, tail) = rest.split_once(' ')?;
        tail.starts_with("socket entries could not be tracked")
            .then(|| n.parse().ok())
            .flatten()
    })
}

/// Stops a summary-mode netwatch and fills in what its exit lines say.
fn finish_summary_netwatch(mut p: Proc, err: &Path, m: &mut MillionNetwatch) -> Result<()> {
    p.stop("INT", Duration::from_secs(30))?;
    let stderr = fs::read_to_string(err).unwrap_or_default();
    if let Some((records, lost)) = parse_netwatch_exit(&stderr) {
        m.records = Some(records);
        m.lost = Some(lost);
    }
    m.untracked = Some(parse_untracked(&stderr).unwrap_or(0));
    Ok(())
}

/// Part 3: a million TIME_WAIT sockets, tracked by a running netwatch, then found by a fresh
/// one at start.
fn run_million(env: &Env, clients: u32) -> Result<Million> {
    let before = measure::read_sysctl("net.ipv4.tcp_max_tw_buckets").unwrap_or_default();
    let _buckets = match before.parse::<u64>() {
        Ok(n) if n >= MILLION_TW_BUCKETS => None,
        _ => Some(SysctlGuard::set(
            "net.ipv4.tcp_max_tw_buckets",
            &MILLION_TW_BUCKETS.to_string(),
        )?),
    };
    let mut m = Million {
        tw_buckets_before: before,
        ..Million::default()
    };

    let (mut p, out, err) = start_summary_netwatch(env, "million-running", "2s")?;
    let (_, at) = procs::wait_for_line(&err, "netwatch: attached", &mut p, ATTACH_TIMEOUT)?;
    m.running.attach_s = (at - p.started).as_secs_f64();
    let cpu0 = measure::cpu_ticks(p.pid);
    let t0 = Instant::now();
    let mut conns = 0u64;
    let mut load_s = 0.0;
    loop {
        let tw = measure::timewait_sockets().unwrap_or(0);
        say!(
            "million  {tw} TIME_WAIT sockets after {:.0} s",
            t0.elapsed().as_secs_f64()
        );
        if tw >= MILLION {
            break;
        }
        if t0.elapsed() > MILLION_FILL_LIMIT {
            bail!("only {tw} TIME_WAIT sockets after {MILLION_FILL_LIMIT:?} of load");
        }
        let load = run_loadgen(env, clients, 5.0, 0)?;
        conns += load.connections;
        load_s += load.seconds;
    }
    m.fill_s = t0.elapsed().as_secs_f64();
    m.conn_per_s = conns as f64 / load_s.max(1e-9);
    // Let it print a summary of the full table.
    thread::sleep(Duration::from_millis(2500));
    let window = t0.elapsed().as_secs_f64();
    m.running.cpu_pct = cpu0
        .zip(measure::cpu_ticks(p.pid))
        .map(|(a, b)| b.saturating_sub(a) as f64 / env.clk_tck / window * 100.0);
    m.tw_sockets = measure::timewait_sockets().unwrap_or(0);
    m.running.rss_kb = measure::status_kb(p.pid, "VmRSS");
    m.running.hwm_kb = measure::status_kb(p.pid, "VmHWM");
    m.running.maps_memlock = measure::bpf_holdings(p.pid).maps_memlock;
    m.running.tracked_tw = summary_tw(&fs::read_to_string(&out).unwrap_or_default());
    finish_summary_netwatch(p, &err, &mut m.running)?;
    say!(
        "million  running netwatch: rss {:.1} MB, its summary shows {:?} in TIME_WAIT",
        m.running.rss_kb.unwrap_or(0) as f64 / 1024.0,
        m.running.tracked_tw
    );

    // A fresh start finds them all in its census.
    thread::sleep(SETTLE);
    let (mut p, out, err) = start_summary_netwatch(env, "million-fresh", "1s")?;
    let (_, at) = procs::wait_for_line(&err, "netwatch: attached", &mut p, ATTACH_TIMEOUT)?;
    let mut fresh = MillionNetwatch {
        attach_s: (at - p.started).as_secs_f64(),
        ..MillionNetwatch::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = fs::read_to_string(&out).unwrap_or_default();
        if text.lines().any(|l| l.starts_with('[')) {
            fresh.first_summary_s = Some(p.started.elapsed().as_secs_f64());
            fresh.tracked_tw = summary_tw(&text);
            break;
        }
        if p.try_wait()?.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(1500));
    fresh.rss_kb = measure::status_kb(p.pid, "VmRSS");
    fresh.hwm_kb = measure::status_kb(p.pid, "VmHWM");
    fresh.maps_memlock = measure::bpf_holdings(p.pid).maps_memlock;
    if let Some(tw) = summary_tw(&fs::read_to_string(&out).unwrap_or_default()) {
        fresh.tracked_tw = Some(tw);
    }
    finish_summary_netwatch(p, &err, &mut fresh)?;
    say!(
        "million  fresh netwatch: attached {:.2} s, first summary {:?} s, rss {:.1} MB, {:?} in \
         TIME_WAIT",
        fresh.attach_s,
        fresh.first_summary_s,
        fresh.rss_kb.unwrap_or(0) as f64 / 1024.0,
        fresh.tracked_tw
    );
    m.fresh = Some(fresh);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netwatch_exit_line() {
        let s = "netwatch: attached to x\nnetwatch: 123 transitions; lost 4 records (ring buffer \
                 full), 0 undecodable\n";
        assert_eq!(parse_netwatch_exit(s), Some((123, 4)));
        assert_eq!(parse_netwatch_exit("netwatch: error: x"), None);
    }

    #[test]
    fn parses_peer_lost_lines() {
        let s = "lost 10 events on CPU #0\nsomething else\nlost 5 events on CPU #1\n";
        assert_eq!(parse_peer_lost(s), 15);
    }

    #[test]
    fn summary_lines() {
        let out = "ALERT x\n[19:06:18] ESTABLISHED 5 TIME_WAIT 32052 CLOSE_WAIT 3 | t 1\n  \
                   age TIME_WAIT n=3\n[19:06:20] TIME_WAIT 125944 (+46864/s) LISTEN 4\n";
        assert_eq!(summary_tw(out), Some(125944));
        let err = "netwatch: warning: 12 socket entries could not be tracked, 0 kernel reads \
                   failed\n";
        assert_eq!(parse_untracked(err), Some(12));
    }

    #[test]
    fn json_fields() {
        let l = r#"{"conn_per_s":93002.4,"connections":279014,"errors_by_kind":{"a":1},"x":2}"#;
        assert_eq!(measure::json_num(l, "conn_per_s"), Some(93002.4));
        assert_eq!(measure::json_num(l, "x"), Some(2.0));
        assert_eq!(measure::json_obj(l, "errors_by_kind"), Some(r#"{"a":1}"#));
    }
}
