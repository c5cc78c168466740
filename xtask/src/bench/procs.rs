//! Child processes that are always stopped: every tracer and load generator the benchmark
//! starts is held by a [`Proc`], which on drop (error, panic unwinding, normal end) signals
//! it, waits a bounded time and then kills it. Children are also started under
//! `setpriv --pdeathsig TERM` where that exists, so even a SIGKILLed xtask leaves no tracer
//! attached, and they stay in our process group so a Ctrl-C reaches them too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{command, describe, which};

/// Wraps `program` so the kernel sends it SIGTERM when xtask dies (setpriv execs it, so the
/// pid is the program's own).
pub fn guarded(program: &Path) -> Command {
    match which("setpriv") {
        Some(setpriv) => {
            let mut cmd = command(setpriv);
            cmd.args(["--pdeathsig", "TERM", "--"]).arg(program);
            cmd
        }
        None => command(program),
    }
}

pub struct Proc {
    child: Option<Child>,
    pub pid: u32,
    pub name: String,
    pub started: Instant,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Proc> {
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: {}", describe(cmd)))?;
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
            name: name.to_string(),
            started,
        })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// `Some(status)` once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child_mut().try_wait()?)
    }

    /// Waits at most `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` (a name such as "INT") while it runs: an unreaped child keeps its pid.
    pub fn signal(&mut self, sig: &str) -> Result<()> {
        if self.try_wait()?.is_none() {
            signal_pid(self.pid, sig);
        }
        Ok(())
    }

    /// `sig`, up to `grace` to exit, then SIGKILL. Returns the exit status and whether it
    /// exited on its own after `sig`.
    pub fn stop(&mut self, sig: &str, grace: Duration) -> Result<(ExitStatus, bool)> {
        self.signal(sig)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok((status, true));
        }
        crate::say!(
            "{} did not stop within {grace:?} of SIG{sig}: killing it",
            self.name
        );
        let child = self.child_mut();
        let _ = child.kill();
        Ok((child.wait()?, false))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal_pid(self.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Signals a pid through kill(1): xtask has no libc. Callers make sure the pid is theirs.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = command("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The short command name of a running process.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Direct children of `pid` (all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Polls until `file` contains a line starting with `prefix`, returning that line and when it
/// was seen. Fails if `proc` exits first (quoting the file, which should be its stderr) or
/// after `timeout`.
pub fn wait_for_line(
    file: &Path,
    prefix: &str,
    watched: &mut Proc,
    timeout: Duration,
) -> Result<(String, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return Ok((line.to_string(), Instant::now()));
        }
        if let Some(status) = watched.try_wait()? {
            bail!(
                "{} exited ({status}) before printing `{prefix}`; its stderr:\n{}",
                watched.name,
                tail(&text, 2000)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} printed no `{prefix}` within {timeout:?}; its stderr so far:\n{}",
                watched.name,
                tail(&text, 2000)
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The last `max` bytes of `s`, on a char boundary.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `restore` (a shell command) if xtask dies without undoing a change itself (Ctrl-C,
/// SIGKILL): a shell in its own process group, so the terminal's SIGINT does not reach it,
/// that waits for our pid to go. Dropping the returned process (after undoing the change)
/// ends it without running `restore`.
pub fn watchdog(restore: &str) -> Option<Proc> {
    use std::os::unix::process::CommandExt as _;
    let script = format!(
        "trap '' INT HUP; while kill -0 {} 2>/dev/null; do sleep 0.2; done; {restore}",
        std::process::id()
    );
    let mut cmd = command("sh");
    cmd.args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    Proc::spawn(&mut cmd, "watchdog").ok()
}

/// A scratch directory removed on drop (or by a watchdog if xtask dies).
pub struct TempDir {
    path: PathBuf,
    _watchdog: Option<Proc>,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let watchdog = watchdog(&format!("rm -rf '{}'", dir.display()));
        Ok(TempDir {
            path: dir,
            _watchdog: watchdog,
        })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
