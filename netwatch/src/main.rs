//! netwatch: an eBPF tracer of the TCP lifecycle for on-call engineers.

// First, so that its `eprintln!` (never panics on a closed stderr) is the one every module
// below uses.
#[macro_use]
mod console;
mod btf;
mod census;
mod cgroup;
mod cli;
mod cli_docs;
mod config;
mod core;
mod environment;
mod features;
mod heap;
mod loader;
mod netns_spec;
mod offsets;
mod plan;
mod preflight;
mod procfs;
mod record_priority;
mod report;
mod ring_reader;
mod serve;
mod sink;
mod stop_signals;
#[cfg(test)]
mod testing;
mod trace;
mod trace_size;
mod ui;
mod writer;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // Before anything that takes time: a signal during start-up is never a silent death.
    stop_signals::install();
    writer::ignore_file_size_signal();
    heap::return_large_buffers();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Trace(args) => args,
        Command::Serve(args) => args.into_trace(),
        Command::Report(args) => {
            stop_signals::not_tracing();
            return match config::ReportConfig::from_args(args).and_then(report::run) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(damaged) => {
                    eprintln!(
                        "netwatch: the trace is damaged: {damaged} line(s) skipped (listed \
                         above); the report lacks their records"
                    );
                    ExitCode::from(report::EXIT_DAMAGED)
                }
                Err(e) => {
                    // It may quote the file (the type of its first record, say).
                    let e = format!("{e:#}");
                    eprintln!("netwatch: error: {}", report::printable::printable(&e));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Schema => {
            stop_signals::not_tracing();
            use std::io::Write;
            // A closed pipe (`netwatch schema | head`) is not an error.
            let _ = std::io::stdout().write_all(core::record::SCHEMA.as_bytes());
            return ExitCode::SUCCESS;
        }
        Command::Completions { shell } => {
            stop_signals::not_tracing();
            return cli_docs::print_completions(shell);
        }
        Command::Man { dir } => {
            stop_signals::not_tracing();
            return cli_docs::write_man_pages(&dir);
        }
    };
    let result = config::TraceConfig::from_args(args).and_then(trace::run);
    match result {
        Ok(outcome) => {
            eprintln!(
                "netwatch: {} transitions; lost {} records (ring buffer full), {} undecodable",
                outcome.transitions, outcome.lost, outcome.undecodable
            );
            if outcome.output_dropped > 0 {
                eprintln!(
                    "netwatch: {}; the summary's `records` counts only those written",
                    core::text::output_dropped(outcome.output_dropped)
                );
            }
            // Skipped kernel runs (said in the summary and on stderr by `trace::run`)
            // do not make it 3: 3 means records known to be missing, while a skipped run is
            // an event of unknown kind, nearly always one netwatch discards anyway (every
            // slab free on the CPU runs the kmem_cache_free program), and busy hosts see a
            // few routinely: counting them would make 3 routine and hide real losses.
            if outcome.lost > 0
                || outcome.undecodable > 0
                || outcome.output_dropped > 0
                || outcome.incomplete
            {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("netwatch: error: {e:#}");
            if stop_signals::discard_output() {
                eprintln!("netwatch: the trace file this start made was removed");
            }
            ExitCode::FAILURE
        }
    }
}
