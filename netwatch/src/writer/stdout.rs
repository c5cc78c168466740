//! `--output -`: the trace on stdout, written by the same thread and queue as a file, so a
//! slow reader of the pipe (`netwatch trace -o - | slow`) holds up tracing no more than a slow
//! reader of a FIFO does.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::Storage;

/// stdout as the trace's only file: never rotated (`--max-size` needs a file).
pub struct Stdout;

impl Storage for Stdout {
    type File = File;

    fn create(&mut self, _part: u32) -> io::Result<File> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "stdout is never rotated",
        ))
    }

    fn remove(&mut self, _part: u32) -> io::Result<()> {
        Ok(())
    }

    fn path(&self, _part: u32) -> PathBuf {
        PathBuf::from("stdout")
    }
}

/// A descriptor of stdout of the writer's own, so that its writes bypass std's locked,
/// buffered stdout (nothing else writes there while JSON goes to stdout).
pub fn open() -> io::Result<File> {
    // SAFETY: duplicates descriptor 1; the copy is owned by the returned File alone.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just made and is owned here alone.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
