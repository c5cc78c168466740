//! Man pages and shell completions, generated from the clap definition in [`crate::cli`], so
//! that what a package installs always says what the flags really are. `cargo xtask dist`
//! asks the very binary it packages for them (the hidden `completions` and `man` commands).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The name users type, which completions are registered for.
const BIN: &str = "netwatch";

/// Prints the completion script for `shell` on stdout.
pub fn print_completions(shell: Shell) -> ExitCode {
    // Rendered in memory first: clap_complete panics when its writer fails, and a closed
    // pipe (`netwatch completions bash | head`) is not an error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    let _ = std::io::stdout().write_all(&script);
    ExitCode::SUCCESS
}

/// Writes `netwatch.1` and one `netwatch-COMMAND.1` per visible subcommand into `dir`.
pub fn write_man_pages(dir: &Path) -> ExitCode {
    match man_pages(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    // `help` is no command of its own in a man page.
    let mut top = Cli::command().disable_help_subcommand(true);
    // Fills in what derive leaves to parse time (version, subcommand display names).
    top.build();
    let source = format!("{BIN} {}", top.get_version().unwrap_or_default());
    write_page(dir, BIN, top.clone(), &source)?;
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        // build() named each subcommand `netwatch-COMMAND` for display, as man pages are.
        let name = format!("{BIN}-{}", sub.get_name());
        write_page(dir, &name, sub.clone(), &source)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command, source: &str) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    // clap_mangen would fill the EXAMPLES text into paragraphs; they keep their columns here.
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.after_help(None::<&str>))
        .source(source)
        .render(&mut page)
        .with_context(|| format!("cannot render the man page {name}(1)"))?;
    if let Some(text) = examples {
        page.extend_from_slice(examples_section(&text).as_bytes());
    }
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
}

/// An EXAMPLES section in no-fill mode, from the `EXAMPLES:` text of `--help`.
fn examples_section(text: &str) -> String {
    let mut roff = String::from(".SH EXAMPLES\n.nf\n");
    for line in text.lines().filter(|l| l.trim() != "EXAMPLES:") {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        // A line starting with `.` or `'` would be read as a request.
        if line.starts_with(['.', '\'']) {
            roff.push_str("\\&");
        }
        roff.push_str(&line);
        roff.push('\n');
    }
    roff.push_str(".fi\n");
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_man_page_naming_its_flags() {
        let dir = std::env::temp_dir().join(format!("netwatch-man-{}", std::process::id()));
        man_pages(&dir).unwrap();
        let trace = std::fs::read_to_string(dir.join("netwatch-trace.1")).unwrap();
        assert!(trace.contains("netwatch\\-trace"), "{trace}");
        assert!(trace.contains("\\-\\-duration"), "{trace}");
        assert!(dir.join("netwatch.1").is_file());
        assert!(dir.join("netwatch-report.1").is_file());
        // Packaging helpers are not user commands.
        assert!(!dir.join("netwatch-man.1").exists());
        assert!(!dir.join("netwatch-help.1").exists());
        assert!(trace.contains(".SH EXAMPLES\n.nf\n"), "{trace}");
        assert!(trace.contains("netwatch trace \\-\\-events"), "{trace}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_offer_the_subcommands() {
        let mut script = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), BIN, &mut script);
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("trace") && script.contains("report"));
        assert!(script.contains("--duration"));
    }
}
