//! Reading procfs as another network namespace sees it. `/proc/thread-self/net/*` and
//! `/proc/sys/net/*` answer for the namespace of the thread that opens them, so the census's
//! short-lived namespace thread does the reading; the caller's thread never moves.

use std::path::Path;

use anyhow::Result;

/// Runs `f` in the calling thread when `netns` is None, else in a thread that has entered the
/// network namespace at `netns` (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub(super) fn run_in<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match netns {
        None => Ok(f()),
        Some(path) => crate::census::netns::run_in(path, |_| Ok(f())),
    }
}
