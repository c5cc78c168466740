//! A pseudo-terminal of the test's own: netwatch's stdin and stdout on its slave side, as on
//! an engineer's terminal, and the test on its master side, reading what netwatch shows and
//! closing the terminal (a hang-up) when it wants.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Pty {
    /// None once closed: the slave side is hung up then.
    master: Option<OwnedFd>,
    slave: OwnedFd,
}

fn check(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    Ok(r)
}

impl Pty {
    /// A new terminal of `rows` x `cols`, no process's controlling terminal.
    pub fn open(rows: u16, cols: u16) -> Result<Pty> {
        // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at
        // most the buffer's length.
        unsafe {
            let m = check(
                libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC),
                "posix_openpt",
            )?;
            let master = OwnedFd::from_raw_fd(m);
            check(libc::grantpt(m), "grantpt")?;
            check(libc::unlockpt(m), "unlockpt")?;
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
                anyhow::bail!("ptsname_r failed");
            }
            let s = check(
                libc::open(
                    name.as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                ),
                "opening the pty's slave",
            )?;
            let slave = OwnedFd::from_raw_fd(s);
            let size = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            check(libc::ioctl(s, libc::TIOCSWINSZ, &size), "TIOCSWINSZ")?;
            let flags = check(libc::fcntl(m, libc::F_GETFL), "F_GETFL")?;
            check(
                libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK),
                "F_SETFL",
            )?;
            Ok(Pty {
                master: Some(master),
                slave,
            })
        }
    }

    /// The terminal's slave side, for a child's stdin, stdout or stderr.
    pub fn stdio(&self) -> Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone().context("dup the pty")?))
    }

    /// What the terminal shows for `dur`, read as it comes (so the writer never blocks on
    /// a full terminal); stops early when `done` says so of what was read.
    pub fn read_for(&self, dur: Duration, mut done: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(master) = self.master.as_ref() else {
            return out;
        };
        let deadline = Instant::now() + dur;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !done(&out) {
            // SAFETY: a buffer of the length passed, a descriptor held open.
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                out.extend_from_slice(&buf[..n as usize]);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        out
    }

    /// Closes the terminal, as a closed window or a dropped ssh session does: the slave side
    /// is hung up (reads end, writes fail with EIO).
    pub fn hang_up(&mut self) {
        self.master = None;
    }
}
