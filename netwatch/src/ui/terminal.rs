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

/// The dashboard's hold on the terminal; dropping it gives the terminal back.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
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
            Ok(terminal) => Ok(Tui { terminal }),
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
            .context("cannot draw the dashboard")?;
        Ok(())
    }

    /// Waits at most `timeout` so the caller's loop keeps refreshing the snapshot. Returns
    /// `None` on timeout and for non-key events (a resize shows on the next `draw`).
    pub fn poll_key(&mut self, timeout: Duration) -> anyhow::Result<Option<KeyEvent>> {
        if !event::poll(timeout).context("cannot read the terminal")? {
            return Ok(None);
        }
        match event::read().context("cannot read the terminal")? {
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
    fn restoring_without_entering_is_a_no_op() {
        // Must not touch stdout (the test harness captures it) nor flip the flag on.
        restore();
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }
}
