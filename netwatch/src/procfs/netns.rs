//! Reading procfs as another network namespace sees it. `/proc/thread-self/net/*` and
//! `/proc/sys/net/*` answer for the namespace of the thread that opens them, so a short-lived
//! thread enters the namespace, reads, and ends; the caller's thread never moves.
//!
//! `census::netns::run_in` does the same for sock_diag but is private to the census; this is
//! the few lines procfs needs, without the namespace inode.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{anyhow, Result};

/// Runs `f` in the calling thread when `netns` is None, else in a thread that has entered the
/// network namespace at `netns` (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub(super) fn run_in<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let Some(path) = netns else {
        return Ok(f());
    };
    let ns = File::open(path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "no such namespace (`ip netns list` shows the named ones)",
            io::ErrorKind::PermissionDenied => "reading another namespace needs root",
            _ => "cannot open it",
        };
        anyhow!(e).context(format!("network namespace {}: {hint}", path.display()))
    })?;
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                let hint = match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        "entering a network namespace needs CAP_SYS_ADMIN: run netwatch as root"
                    }
                    Some(libc::EINVAL) => "this file is not a network namespace",
                    _ => "setns failed",
                };
                return Err(anyhow!(e).context(format!(
                    "cannot enter network namespace {}: {hint}",
                    path.display()
                )));
            }
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
