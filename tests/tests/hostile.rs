//! A tracer run the way a hostile (or just unlucky) operator runs it. Root only.
//!
//! 1. stdout and stderr both closed (`netwatch trace -o f --plain 2>&1 | head` once head has
//!    gone): tracing goes on into the file until --duration, which ends with its summary.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use netwatch_tests::require_root;
use netwatch_tests::tracer::{netwatch_bin, read_records};

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

/// Waits for `child`, killing it after `timeout`.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("netwatch did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
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
