//! A program in a real terminal: a tmux session of a given size on a private server
//! (`tmux -L`), keys sent as a person types them, the screen read back as text
//! (`capture-pane`). The server is killed on drop, test failure included. A missing tmux
//! fails under CI and is a noted skip elsewhere.

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::privilege::under_ci;

/// How often [`Tmux::wait_for`] reads the screen.
const POLL: Duration = Duration::from_millis(100);

/// Whether tmux can be run here; under CI its absence is an error.
pub fn require_tmux() -> Result<bool> {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return Ok(true);
    }
    if under_ci() {
        bail!("tmux is not installed: the dashboard cannot be checked in a terminal; `cargo xtask setup` installs Debian's `tmux`");
    }
    eprintln!("skipping the terminal check: no tmux (apt-get install tmux)");
    Ok(false)
}

/// One session on a private tmux server.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a detached `width`x`height` session.
    pub fn start(tag: &str, width: u16, height: u16, command: &str) -> Result<Tmux> {
        let t = Tmux {
            socket: format!("nwt-{}-{tag}", std::process::id()),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ])?;
        Ok(t)
    }

    fn tmux(&self, args: &[&str]) -> Result<Output> {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .with_context(|| format!("tmux {args:?}"))
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.tmux(args)?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The screen as text, one line per row.
    pub fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "main"])
    }

    /// Types `key` (tmux's key names: `a`, `Down`, `q`).
    pub fn send_key(&self, key: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "main", key]).map(|_| ())
    }

    /// Whether the session still runs (its program has not exited).
    pub fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", "main"])
            .is_ok_and(|o| o.status.success())
    }

    /// Reads the screen until `pred` holds or `timeout` passes; the last screen either way.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen().unwrap_or_default();
            if pred(&screen) {
                return (true, screen);
            }
            if Instant::now() >= deadline || !self.alive() {
                return (false, screen);
            }
            thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for the session's program to exit.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
        true
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
