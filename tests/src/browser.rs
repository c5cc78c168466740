//! Headless Chromium, to check HTML reports as a person would see them: the DOM after the
//! browser parsed the page, and screenshots. Bounded (90 s per run); a missing browser fails
//! under CI and is a noted skip elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::privilege::under_ci;

/// Bound on one Chromium run.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Debian's Chromium, if installed.
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Chromium, or None (with a note) when it is missing outside CI; under CI a missing browser
/// is an error, since the page would go unchecked.
pub fn require_chromium() -> Result<Option<PathBuf>> {
    if let Some(bin) = chromium() {
        return Ok(Some(bin));
    }
    if under_ci() {
        bail!(
            "chromium is not installed (/usr/bin/chromium): the HTML report cannot be \
             checked; `cargo xtask setup` should install Debian's `chromium`"
        );
    }
    eprintln!("skipping the HTML rendering check: no /usr/bin/chromium (apt-get install chromium)");
    Ok(None)
}

/// Runs headless Chromium with `args` on `page`, bounded; its stdout.
pub fn run_chromium(bin: &Path, profile: &Path, args: &[String], page: &Path) -> Result<Vec<u8>> {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start chromium")?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("chromium did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "chromium {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The page's DOM as Chromium built it (`--dump-dom`).
pub fn dump_dom(bin: &Path, profile: &Path, page: &Path) -> Result<String> {
    let dom = run_chromium(bin, profile, &["--dump-dom".into()], page)?;
    Ok(String::from_utf8_lossy(&dom).into_owned())
}
