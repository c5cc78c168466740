//! SIGINT, SIGTERM and SIGHUP from the first instruction of `main` to the last.
//!
//! Start-up is slow (loading and verifying the programs, a census of 100k sockets, 10,000
//! `--addr`), and a signal's default action there kills netwatch with no word and leaves a
//! half-made trace file behind. So `main` blocks the three signals before anything else (every
//! thread inherits the mask) and one thread takes them with `sigwait`. What a signal does
//! depends on how far netwatch got ([`Phase`]):
//!
//! - starting: nothing was traced yet, so start-up is abandoned at once: a message says so,
//!   the trace file, if one was made, is removed, and netwatch dies of the signal as it would
//!   have (a shell sees the usual status);
//! - tracing: the signal is recorded and the trace loop ends the trace cleanly with its
//!   summary ([`take`]);
//! - any other command (`report`, `schema`): the signal's default action, as if nothing had
//!   been blocked.
//!
//! netwatch in the background of an interactive shell (`netwatch trace -o f &`) must never be
//! stopped by its terminal: SIGTTOU (a write with `tostop` set) is ignored, so messages and
//! plain summaries pass, and the dashboard, the only part that reads the terminal (SIGTTIN)
//! or changes its modes, is not used there ([`in_background`]). A dashboard sent to the
//! background later (Ctrl-Z, `bg`) is stopped by its terminal as full-screen programs are,
//! until `fg` ([`dashboard_owns_terminal`]), rather than fail on a read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Mutex;

/// How far netwatch got, for what a stop signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// `report`, `schema`: signals act as usual.
    Other = 0,
    /// `trace` before its first record: nothing to keep.
    Starting = 1,
    /// `trace` with its output open: a signal ends the trace with its summary.
    Tracing = 2,
    /// Start-up was abandoned for a signal; the process is going away.
    Abandoned = 3,
}

/// What the signal thread does with a stop signal in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The signal's default action (it ends the process).
    Default,
    /// Say why, remove what start-up made, and die of the signal.
    AbandonStart,
    /// Note it for the trace loop, which ends the trace with its summary.
    Record,
    /// A second signal while start-up is being abandoned: nothing more to do.
    Ignore,
}

/// The whole policy, apart from the threads and the system calls.
pub fn action(phase: Phase) -> Action {
    match phase {
        Phase::Other => Action::Default,
        Phase::Starting => Action::AbandonStart,
        Phase::Tracing => Action::Record,
        Phase::Abandoned => Action::Ignore,
    }
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Starting from the first instruction: until the command is known it may be a trace.
static PHASE: AtomicU8 = AtomicU8::new(Phase::Starting as u8);
/// The first stop signal received while tracing, 0 before one.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// The trace file made during start-up, removed if start-up is abandoned. The lock is held
/// while the file is being created, so a signal can never leave one behind unregistered.
static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn phase() -> Phase {
    match PHASE.load(Ordering::SeqCst) {
        1 => Phase::Starting,
        2 => Phase::Tracing,
        3 => Phase::Abandoned,
        _ => Phase::Other,
    }
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the stop signals and starts the thread that takes them; first thing in `main`,
/// before any other thread exists. Also ignores SIGTTOU (see the module).
pub fn install() {
    let set = stop_set();
    // SAFETY: a valid set; the old mask is not wanted. SIG_IGN needs no handler.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
    }
    let spawned = std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: a valid set of blocked signals and a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                on_signal(sig);
            }
        });
    if spawned.is_err() {
        // No thread to take them: let them act as they always did rather than be lost.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

fn on_signal(sig: libc::c_int) {
    match action(phase()) {
        Action::Default => die_of(sig),
        Action::Record => {
            let _ = RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
        }
        Action::Ignore => {}
        Action::AbandonStart => {
            let won = PHASE.compare_exchange(
                Phase::Starting as u8,
                Phase::Abandoned as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            if won.is_err() {
                // Tracing began meanwhile: the trace loop takes it from here.
                return on_signal(sig);
            }
            let made = MADE.lock().unwrap_or_else(|e| e.into_inner()).take();
            let removed = made.filter(|p| std::fs::remove_file(p).is_ok());
            eprintln!("{}", abandoned_message(sig, removed.as_deref()));
            die_of(sig);
        }
    }
}

/// What is said when a signal ends netwatch before it traced anything.
pub fn abandoned_message(sig: libc::c_int, removed: Option<&Path>) -> String {
    let file = match removed {
        Some(p) => format!("; {} was removed", p.display()),
        None => "; no trace file was written".to_owned(),
    };
    format!(
        "netwatch: stopped by {} while starting, before tracing began: nothing was traced{file}",
        signal_name(sig)
    )
}

pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Ends the process by `sig`'s default action, from the signal thread.
fn die_of(sig: libc::c_int) -> ! {
    // SAFETY: restores the default action and unblocks `sig` in this thread only, then sends
    // it to this thread, which the default action ends with the whole process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

/// The command is not `trace`: signals act as usual from now on.
pub fn not_tracing() {
    PHASE.store(Phase::Other as u8, Ordering::SeqCst);
}

/// Creates the trace file with `create`, registered for removal should a signal abandon
/// start-up before [`tracing`].
pub fn create_output<T, E>(path: &Path, create: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let existed = std::fs::symlink_metadata(path).is_ok();
    let out = create()?;
    if !existed {
        *made = Some(path.to_owned());
    }
    Ok(out)
}

/// Start-up failed: removes the trace file it made, if any (a failed start must not leave a
/// file that makes the next run refuse without `--force`). True when one was removed.
pub fn discard_output() -> bool {
    let made = MADE.lock().unwrap_or_else(|e| e.into_inner()).take();
    made.is_some_and(|p| std::fs::remove_file(p).is_ok())
}

/// The trace has begun: signals from now on end it with its summary (see [`take`]), and the
/// trace file is kept whatever happens.
pub fn tracing() {
    // Waits for a signal that is abandoning start-up right now to finish (it exits).
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if PHASE
        .compare_exchange(
            Phase::Starting as u8,
            Phase::Tracing as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_ok()
    {
        *made = None;
    }
}

/// The stop signal received while tracing, if any (it stays received).
pub fn received() -> Option<libc::c_int> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The dashboard takes the terminal (started in the foreground): SIGTTOU acts as usual again,
/// so that if it is sent to the background it stops until `fg` instead of drawing over the
/// shell.
pub fn dashboard_owns_terminal() {
    // SAFETY: restores a standard signal's default disposition.
    unsafe { libc::signal(libc::SIGTTOU, libc::SIG_DFL) };
}

/// True when `fd` is a terminal whose foreground is another process group: netwatch was
/// started in the background (`&`), where reading the terminal or changing its modes would
/// stop it.
pub fn in_background(fd: libc::c_int) -> bool {
    // SAFETY: plain queries on a descriptor number; failures return -1 or 0.
    unsafe {
        if libc::isatty(fd) != 1 {
            return false;
        }
        let fg = libc::tcgetpgrp(fd);
        fg > 0 && fg != libc::getpgrp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_while_starting_abandons_the_start_and_while_tracing_ends_the_trace() {
        assert_eq!(action(Phase::Other), Action::Default);
        assert_eq!(action(Phase::Starting), Action::AbandonStart);
        assert_eq!(action(Phase::Tracing), Action::Record);
        assert_eq!(action(Phase::Abandoned), Action::Ignore);
    }

    #[test]
    fn the_message_says_nothing_was_traced_and_what_happened_to_the_file() {
        let m = abandoned_message(libc::SIGINT, None);
        assert!(m.contains("SIGINT"), "{m}");
        assert!(
            m.contains("nothing was traced; no trace file was written"),
            "{m}"
        );
        let m = abandoned_message(libc::SIGTERM, Some(Path::new("/tmp/t.jsonl")));
        assert!(
            m.contains("SIGTERM") && m.contains("/tmp/t.jsonl was removed"),
            "{m}"
        );
    }

    #[test]
    fn a_file_made_by_a_failed_start_is_removed_but_not_one_that_existed() {
        let dir = crate::testing::TempDir::new("created-output");
        let new = dir.path().join("new.jsonl");
        create_output(&new, || std::fs::File::create(&new)).unwrap();
        assert!(discard_output());
        assert!(!new.exists());
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, b"kept").unwrap();
        create_output(&old, || std::fs::File::create(&old)).unwrap();
        assert!(!discard_output());
        assert!(old.exists());
    }

    #[test]
    fn a_pipe_is_never_in_the_background() {
        let mut fds = [0; 2];
        // SAFETY: a valid out array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(!in_background(fds[1]));
        // SAFETY: closing the descriptors just made.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
