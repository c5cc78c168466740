//! Working inside another network namespace without moving the caller. A network namespace
//! belongs to a thread, not to the process, so a short-lived thread enters it, does the work
//! and ends; the threads that run the tracer never change namespace. Sockets opened in there
//! stay in that namespace wherever they are used afterwards.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// The calling thread's own namespace (`thread-self`: another thread may have moved).
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// The inode number that names a namespace, as `ip netns identify`, `lsns` and the kernel's
/// `net->ns.inum` (what our kernel records carry) give it.
fn inode_of(meta: &std::fs::Metadata, what: &Path) -> Result<u32> {
    u32::try_from(meta.ino()).with_context(|| {
        format!(
            "{}: inode {} is no namespace inode",
            what.display(),
            meta.ino()
        )
    })
}

/// The inode of the calling thread's network namespace.
pub(super) fn own_inode() -> Result<u32> {
    let path = Path::new(OWN_NETNS);
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot stat {OWN_NETNS} to learn which network namespace this is (is /proc mounted?)"
        )
    })?;
    inode_of(&meta, path)
}

/// Runs `f` in a thread that has entered the network namespace at `path` (a file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), passing it that namespace's inode.
pub(crate) fn run_in<T: Send>(path: &Path, f: impl FnOnce(u32) -> Result<T> + Send) -> Result<T> {
    let ns = File::open(path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => "no such namespace (`ip netns list` shows the named ones)",
            io::ErrorKind::PermissionDenied => "reading another namespace needs root",
            _ => "cannot open it",
        };
        anyhow!(e).context(format!("network namespace {}: {hint}", path.display()))
    })?;
    let meta = ns
        .metadata()
        .with_context(|| format!("cannot stat network namespace file {}", path.display()))?;
    let inode = inode_of(&meta, path)?;
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
            f(inode)
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
