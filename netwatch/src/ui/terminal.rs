//! Owning the real terminal: the only part of the UI that touches stdout. Whatever way the
//! program leaves (return, `?`, panic), the engineer's shell must come back usable, because
//! a wrecked terminal over ssh on a server already in trouble costs more than the tool gave.

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use crossterm::{
    cursor::{Hide, Show},
    event::{self, Event, KeyEvent},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};

use super::dashboard::Dashboard;
use crate::core::snapshot::Snapshot;

/// Set while the terminal is in raw mode on the alternate screen, so restoring twice (the
/// panic hook, then `Drop` while unwinding) or without having entered writes nothing: no
/// stray escape codes on a piped stdout.
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        // Best effort: there is nowhere left to report a failure to.
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// Why the terminal named by `$TERM` (`term`) cannot take the full-screen dashboard, or None
/// when it can. A dumb terminal (Emacs' shell buffer, some serial consoles and CI logs) or
/// none named at all would show its escape codes as text; `--plain` reads well on any.
pub fn no_dashboard_because(term: Option<&std::ffi::OsStr>) -> Option<String> {
    match term.map(|t| t.to_string_lossy()) {
        None => Some("TERM is not set".to_owned()),
        Some(t) if t.trim().is_empty() => Some("TERM is empty".to_owned()),
        Some(t) if t == "dumb" => Some("TERM=dumb".to_owned()),
        Some(_) => None,
    }
}

/// The dashboard's terminal is gone: closed (a terminal window shut, an ssh session dropped)
/// or hung up. The kernel's SIGHUP may come after the first failed write, or never reach
/// netwatch (it goes to the session's leader): either way this is a hang-up, a normal end of
/// the trace (`sighup`), not a failure of it.
#[derive(Debug, thiserror::Error)]
#[error("the terminal was closed ({0})")]
pub struct TerminalGone(pub io::Error);

/// Whether a failed read or write on the terminal means it is gone: EIO is what a hung-up
/// terminal answers, ENXIO a terminal whose device went away.
fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::ENXIO))
}

/// The error for a failed terminal operation `what`: [`TerminalGone`] where it is one.
fn terminal_error(e: io::Error, what: &'static str) -> anyhow::Error {
    if is_gone(&e) {
        anyhow::Error::new(TerminalGone(e))
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// Whether poll(2)'s `revents` for the terminal say it is gone: a hung-up terminal polls as
/// POLLHUP (with POLLERR), a closed descriptor as POLLNVAL.
fn hung_up(revents: libc::c_short) -> bool {
    revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// stdin and stdout where they are terminals, as the dashboard starts: once hung up, a
/// terminal no longer says it is one.
fn terminal_fds() -> Vec<libc::c_int> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        // SAFETY: isatty only queries a descriptor number.
        .filter(|&fd| unsafe { libc::isatty(fd) } == 1)
        .collect()
}

/// Whether the terminal on `ttys` has been hung up. Asked before every read: crossterm's
/// reader loops forever on a hung-up terminal (its reads return 0 or EIO, which it takes
/// for "no key yet"), so netwatch would spin instead of ending the trace.
fn terminal_hung_up(ttys: &[libc::c_int]) -> bool {
    let mut fds: Vec<libc::pollfd> = ttys
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        })
        .collect();
    // SAFETY: an array of pollfd of the length passed; a zero timeout never blocks.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    n > 0 && fds.iter().any(|p| hung_up(p.revents))
}

/// True when `e` says the dashboard's terminal is gone.
pub fn terminal_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<TerminalGone>())
}

/// The dashboard's hold on the terminal; dropping it gives the terminal back.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// The terminal's descriptors, watched for a hang-up.
    ttys: Vec<libc::c_int>,
}

impl Tui {
    pub fn enter() -> anyhow::Result<Tui> {
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        let setup = || -> io::Result<Terminal<CrosstermBackend<Stdout>>> {
            execute!(io::stdout(), EnterAlternateScreen, Hide)?;
            let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            terminal.clear()?;
            Ok(terminal)
        };
        match setup() {
            Ok(terminal) => Ok(Tui {
                terminal,
                ttys: terminal_fds(),
            }),
            Err(e) => {
                restore();
                Err(e).context("cannot switch the terminal to the dashboard screen")
            }
        }
    }

    /// Picks up a resized window by itself, so the caller only needs to draw again.
    pub fn draw(&mut self, dash: &Dashboard, snap: &Snapshot) -> anyhow::Result<()> {
        self.terminal
            .draw(|frame| super::render(frame, dash, snap))
            .map_err(|e| terminal_error(e, "cannot draw the dashboard"))?;
        Ok(())
    }

    /// Waits at most `timeout` so the caller's loop keeps refreshing the snapshot. Returns
    /// `None` on timeout and for non-key events (a resize shows on the next `draw`).
    pub fn poll_key(&mut self, timeout: Duration) -> anyhow::Result<Option<KeyEvent>> {
        let read = |e| terminal_error(e, "cannot read the terminal");
        if terminal_hung_up(&self.ttys) {
            return Err(read(io::Error::from_raw_os_error(libc::EIO)));
        }
        if !event::poll(timeout).map_err(read)? {
            return Ok(None);
        }
        match event::read().map_err(read)? {
            Event::Key(key) => Ok(Some(key)),
            _ => Ok(None),
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// Without this a panic message is printed into the alternate screen in raw mode, where it
/// is wiped on exit or smeared across the screen; the terminal is restored first, then the
/// previous hook (the default one prints the message and backtrace) runs.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumb_empty_or_unnamed_terminals_get_no_dashboard() {
        use std::ffi::OsStr;
        assert_eq!(
            no_dashboard_because(None).as_deref(),
            Some("TERM is not set")
        );
        assert_eq!(
            no_dashboard_because(Some(OsStr::new(""))).as_deref(),
            Some("TERM is empty")
        );
        assert_eq!(
            no_dashboard_because(Some(OsStr::new("dumb"))).as_deref(),
            Some("TERM=dumb")
        );
        for t in ["xterm-256color", "screen", "linux", "vt100"] {
            assert_eq!(no_dashboard_because(Some(OsStr::new(t))), None, "{t}");
        }
    }

    #[test]
    fn a_hung_up_terminal_is_gone_other_failures_are_errors() {
        let eio = terminal_error(io::Error::from_raw_os_error(libc::EIO), "draw");
        assert!(terminal_gone(&eio.context("snapshot")));
        let enxio = terminal_error(io::Error::from_raw_os_error(libc::ENXIO), "draw");
        assert!(terminal_gone(&enxio));
        let other = terminal_error(io::Error::from_raw_os_error(libc::EINVAL), "draw");
        assert!(!terminal_gone(&other));
        assert!(format!("{other:#}").starts_with("draw: "));
    }

    #[test]
    fn a_terminal_polling_as_hung_up_is_gone() {
        assert!(hung_up(libc::POLLHUP));
        assert!(hung_up(libc::POLLIN | libc::POLLERR | libc::POLLHUP));
        assert!(hung_up(libc::POLLNVAL));
        assert!(!hung_up(libc::POLLIN | libc::POLLOUT));
        assert!(!hung_up(0));
    }

    #[test]
    fn restoring_without_entering_is_a_no_op() {
        // Must not touch stdout (the test harness captures it) nor flip the flag on.
        restore();
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }
}
