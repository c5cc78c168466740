//! Messages on stderr that can never end netwatch.
//!
//! std's `eprintln!` panics when stderr is gone (`netwatch trace -o f 2>&1 | head` closes it
//! after ten lines; a dropped ssh session closes the terminal), and Rust ignores SIGPIPE, so
//! the panic is all that happens: the trace being written to a file loses its summary. A
//! message is worth less than the trace, so a message that cannot be written is dropped.
//!
//! `main.rs` declares this module first, with `#[macro_use]`, so the [`eprintln!`] below
//! shadows std's in every module of the binary: a message added anywhere later is safe
//! without anyone having to remember this.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` and a newline to `out` in one write; true when it was written. An error
/// (EPIPE from a closed pipe, EIO from a hung-up terminal, anything else) is dropped: there
/// is nowhere left to report it.
pub fn line_to(out: &mut impl Write, args: fmt::Arguments<'_>) -> bool {
    let mut text = fmt::format(args);
    text.push('\n');
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

/// One message line on stderr; see [`line_to`].
pub fn stderr(args: fmt::Arguments<'_>) {
    line_to(&mut io::stderr().lock(), args);
}

/// `eprintln!` that drops a message stderr cannot take instead of panicking.
macro_rules! eprintln {
    () => {
        $crate::console::stderr(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::console::stderr(::std::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away: every write fails as a closed pipe does.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EPIPE))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_drops_the_message() {
        assert!(!line_to(&mut ClosedPipe, format_args!("lost {}", 3)));
    }

    #[test]
    fn a_message_is_one_line() {
        let mut out = Vec::new();
        assert!(line_to(&mut out, format_args!("lost {}", 3)));
        assert_eq!(out, b"lost 3\n");
    }
}
