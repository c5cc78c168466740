//! A tracer run the way a hostile (or just unlucky) operator runs it. Root only.
//!
//! 1. stdout and stderr both closed (`netwatch trace -o f --plain 2>&1 | head` once head has
//!    gone): tracing goes on into the file until --duration, which ends with its summary.
//! 2. A file size limit (`ulimit -f`) is a full disk, not a kill by SIGXFSZ: netwatch stops
//!    with an error naming EFBIG, the plain file ends at a whole record, the gzip file passes
//!    `gzip -t`.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netwatch_tests::require_root;
use netwatch_tests::tracer::{netwatch_bin, read_records, wait_bounded};

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> Result<Stdio> {
    let mut fds = [0; 2];
    // SAFETY: a valid out array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Ok(Stdio::from(write))
}

/// The test's own file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn closed_stdout_and_stderr_do_not_end_a_trace_to_a_file() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let file = TempFile(
        std::env::temp_dir().join(format!("nwt-hostile-{}-pipes.jsonl", std::process::id())),
    );
    let _ = std::fs::remove_file(&file.0);
    let mut child = Command::new(netwatch_bin()?)
        .args([
            "trace",
            "--plain",
            "--interval",
            "200ms",
            "--duration",
            "2s",
        ])
        .arg("--output")
        .arg(&file.0)
        .stdin(Stdio::null())
        .stdout(closed_pipe()?)
        .stderr(closed_pipe()?)
        .spawn()
        .context("starting netwatch")?;
    let status = wait_bounded(&mut child, Duration::from_secs(60))?;
    ensure!(status.success(), "netwatch exited with {status}");
    let records = read_records(&file.0)?;
    let last = records.last().context("an empty trace")?;
    ensure!(
        last["type"] == "summary" && last["stopped_by"] == "duration",
        "the trace should end with a summary stopped by --duration: {last}"
    );
    Ok(())
}

/// Connections to a loopback listener, made and closed until `done` says stop: a few KB of
/// transitions each.
fn churn_until(mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done()? {
        ensure!(
            Instant::now() < deadline,
            "still running after 60 s of churn"
        );
        for _ in 0..20 {
            let client = TcpStream::connect(addr)?;
            let (server, _) = listener.accept()?;
            drop(client);
            drop(server);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_file_size_limit_stops_the_trace_like_a_full_disk() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for name in ["fsize.jsonl", "fsize.jsonl.gz"] {
        let file = TempFile(
            std::env::temp_dir().join(format!("nwt-hostile-{}-{name}", std::process::id())),
        );
        let _ = std::fs::remove_file(&file.0);
        const LIMIT: u64 = 64 << 10;
        let limit = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        let mut cmd = Command::new(netwatch_bin()?);
        cmd.args(["trace", "--quiet", "--interval", "200ms", "--output"])
            .arg(&file.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe and changes only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting netwatch")?;
        let stderr = child.stderr.take().context("stderr")?;
        let reader = std::thread::spawn(move || std::io::read_to_string(stderr));
        churn_until(|| Ok(child.try_wait()?.is_some()))?;
        let status = wait_bounded(&mut child, Duration::from_secs(10))?;
        let stderr = reader.join().expect("stderr reader").unwrap_or_default();
        ensure!(
            status.signal().is_none(),
            "{name}: killed by signal {:?}: {stderr}",
            status.signal()
        );
        ensure!(status.code() == Some(1), "{name}: {status}: {stderr}");
        ensure!(
            stderr.contains("EFBIG"),
            "{name}: the error should say EFBIG: {stderr}"
        );
        let len = std::fs::metadata(&file.0)?.len();
        ensure!(len > 0 && len <= LIMIT, "{name}: {len} bytes");
        if name.ends_with(".gz") {
            let ok = Command::new("gzip").arg("-t").arg(&file.0).status()?;
            ensure!(ok.success(), "{name}: gzip -t fails");
        } else {
            let bytes = std::fs::read(&file.0)?;
            ensure!(bytes.ends_with(b"\n"), "{name}: the file ends mid-record");
        }
        let records = read_records(&file.0)?;
        ensure!(records[0]["type"] == "header", "{name}: no header");
    }
    Ok(())
}
