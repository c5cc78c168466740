//! Start-up under a hostile operator. Root only (they load real eBPF), loopback only.
//!
//! 1. SIGINT or SIGTERM at any moment of start-up: netwatch either says it stopped before
//!    tracing began and leaves no file, or ends the trace with its summary; never a silent
//!    death with a 0-byte or header-only file.
//! 2. A start that fails (no capabilities) leaves no file that would make the next run refuse.
//! 3. `netwatch trace -o f &` in an interactive shell with `stty tostop` is never stopped by
//!    the terminal: it finishes its --duration.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::require_root;
use netwatch_tests::tracer::{netwatch_bin, read_records, wait_bounded};

/// The test's own directory in the temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("nwt-startup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (boundedly) until process `pid` runs a second thread: netwatch has reached `main`,
/// whose first act starts the thread that takes stop signals.
fn running_main(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0);
        if threads >= 2 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_signal_during_start_up_ends_it_with_a_word_and_no_file_or_a_whole_trace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let dir = TempDir::new("signal")?;
    let bin = netwatch_bin()?;
    let mut early = 0;
    for (i, (sig, after_ms)) in [
        (libc::SIGINT, 0),
        (libc::SIGTERM, 30),
        (libc::SIGINT, 100),
        (libc::SIGTERM, 250),
        (libc::SIGINT, 500),
        (libc::SIGINT, 900),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.0.join(format!("t{i}.jsonl"));
        let mut child = Command::new(&bin)
            .args(["trace", "--quiet", "--duration", "30s", "--output"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting netwatch")?;
        // A signal before `main` runs acts as it always did: wait for netwatch's own start
        // (its signal thread), then into its start-up.
        running_main(child.id(), Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(after_ms));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let stderr = child.stderr.take().context("stderr")?;
        let reader = std::thread::spawn(move || std::io::read_to_string(stderr));
        let status = wait_bounded(&mut child, Duration::from_secs(20))?;
        let stderr = reader.join().expect("stderr reader").unwrap_or_default();
        let case = format!("signal {sig} after {after_ms} ms: {status}; stderr: {stderr}");
        if status.signal() == Some(sig) {
            early += 1;
            ensure!(
                stderr.contains("before tracing began: nothing was traced"),
                "{case}: no word of why"
            );
            ensure!(!file.exists(), "{case}: a file was left behind");
        } else {
            ensure!(status.code() == Some(0), "{case}");
            let records = read_records(&file).with_context(|| case.clone())?;
            let last = records.last().context("an empty trace")?;
            ensure!(
                last["type"] == "summary",
                "{case}: the trace does not end with its summary: {last}"
            );
        }
    }
    ensure!(
        early > 0,
        "no signal arrived during start-up; the test proves nothing"
    );
    Ok(())
}

#[test]
fn a_start_without_capabilities_leaves_no_file() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let dir = TempDir::new("nocaps")?;
    // Writable by the unprivileged user the start runs as.
    Command::new("chmod").arg("1777").arg(&dir.0).status()?;
    let file = dir.0.join("t.jsonl");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(netwatch_bin()?)
        .args(["trace", "--quiet", "--duration", "1s", "--output"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .context("running setpriv")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{}: {stderr}", out.status);
    ensure!(
        stderr.contains("CAP_"),
        "the error should name a capability: {stderr}"
    );
    ensure!(
        !file.exists(),
        "a failed start left {} behind: {stderr}",
        file.display()
    );
    Ok(())
}

/// Runs `script` in `dir`: an interactive job-control shell on a new terminal, with `tostop`.
fn in_background_of_a_terminal(dir: &Path, netwatch: &str) -> Result<(ExitStatus, String)> {
    let log = dir.join("rc");
    let shell = format!(
        "stty tostop; {netwatch} & wait $!; echo rc=$? > {}",
        log.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("sh -mc '{shell}'"))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running script (bsdutils)")?;
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let rc = std::fs::read_to_string(&log).unwrap_or_default();
    Ok((status?, rc))
}

#[test]
fn a_trace_in_the_background_of_a_terminal_finishes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    if Command::new("script").arg("--version").output().is_err() {
        bail!("`script` (bsdutils) is needed for this test");
    }
    let dir = TempDir::new("background")?;
    let file = dir.0.join("t.jsonl");
    let netwatch = format!(
        "{} trace --duration 2s --interval 200ms --output {}",
        netwatch_bin()?.display(),
        file.display()
    );
    let (status, rc) = in_background_of_a_terminal(&dir.0, &netwatch)?;
    ensure!(status.success(), "script: {status}");
    ensure!(rc.trim() == "rc=0", "netwatch in the background: {rc:?}");
    let records = read_records(&file)?;
    let last = records.last().context("an empty trace")?;
    ensure!(
        last["type"] == "summary" && last["stopped_by"] == "duration",
        "{last}"
    );
    // What the trace may lack is in its last line.
    ensure!(
        last["skipped_runs"].is_u64() && last["output_dropped"] == 0,
        "{last}"
    );
    Ok(())
}

/// A dumb terminal (`TERM=dumb`, or no TERM at all) on stdout: no full-screen dashboard,
/// whose escape codes it would show as text; netwatch says so once and prints plain
/// summaries.
#[test]
fn a_dumb_terminal_gets_plain_summaries_not_the_dashboard() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for term in [Some("dumb"), None] {
        let pty = netwatch_tests::pty::Pty::open(40, 120)?;
        let mut cmd = Command::new(netwatch_bin()?);
        cmd.args(["trace", "--duration", "2s", "--interval", "500ms"])
            .stdin(pty.stdio()?)
            .stdout(pty.stdio()?)
            .stderr(Stdio::piped());
        match term {
            Some(t) => cmd.env("TERM", t),
            None => cmd.env_remove("TERM"),
        };
        let mut child = cmd.spawn().context("starting netwatch")?;
        let shown = pty.read_for(Duration::from_secs(30), |_| {
            child.try_wait().ok().flatten().is_some()
        });
        let status = wait_bounded(&mut child, Duration::from_secs(10))?;
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
        let shown = String::from_utf8_lossy(&shown);
        ensure!(status.success(), "TERM {term:?}: {status}: {stderr}");
        ensure!(
            !shown.contains("\x1b[?1049h"),
            "TERM {term:?}: the full-screen dashboard was drawn: {shown:?}"
        );
        let why = term.map_or("TERM is not set".to_owned(), |t| format!("TERM={t}"));
        ensure!(
            stderr.matches("no full-screen dashboard").count() == 1
                && stderr.contains(&format!("{why}: no full-screen dashboard")),
            "TERM {term:?}: should be said once: {stderr}"
        );
        ensure!(
            shown.contains("transitions") && shown.contains("Kernel:"),
            "TERM {term:?}: no plain summary shown: {shown:?}"
        );
    }
    Ok(())
}
