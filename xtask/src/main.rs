//! Developer tasks for netwatch.
//!
//! Building netwatch needs a toolchain that rustup cannot fetch here (Debian's rustc with a
//! prebuilt `core` for BPF, plus bpf-linker built against LLVM 22), so every task first makes
//! sure it exists: that way `cargo xtask run` and `cargo xtask test` are the only commands a
//! fresh machine needs.

mod bench;
mod build;
mod dist;
mod run;
mod setup;
mod test;
mod util;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "netwatch developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing netwatch needs (Debian 12; idempotent, fast when done)
    Setup {
        /// Only check; fail listing what is missing instead of installing it
        #[arg(long)]
        check: bool,
    },
    /// Build netwatch with its eBPF object embedded (after setup)
    BuildEbpf {
        /// Build the release profile
        #[arg(long)]
        release: bool,
    },
    /// Set up, build (release unless --debug) and run netwatch, as root (through sudo if needed)
    Run {
        /// Use the debug profile instead of release
        #[arg(long)]
        debug: bool,
        /// Use the release profile (the default)
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Arguments for netwatch, e.g. `-- trace --duration 5`
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "NETWATCH_ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up, build and run every test (the namespace tests need root), then, as root or
    /// under CI=true, the package test (`dist --check`) and the VM kernel matrix
    Test {
        /// Skip the package test and the VM kernel matrix (both build the release binary)
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test binaries, e.g. `-- --nocapture`
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<OsString>,
    },
    /// Build the release binary and a Debian package that runs netwatch as a service
    /// (target/dist/netwatch_VERSION_ARCH.deb)
    Dist {
        /// Then install it on this machine, check it and run it as its unit would, and purge
        /// it (root; what `cargo xtask test` does)
        #[arg(long)]
        check: bool,
    },
    /// Boot Debian's kernels under QEMU and check what netwatch sees on each (see xtask/src/vm)
    VmTest(vm::Opts),
    /// Benchmark netwatch's overhead next to no tracer and the peers (root; see BENCHMARKS.md)
    Bench(bench::Opts),
    /// What CI checks: rustfmt, clippy with -D warnings, then `test`
    Ci {
        /// Extra arguments for the test binaries
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match task(Cli::parse().task) {
        Ok(code) => code,
        Err(e) => {
            // One readable chain; RUST_BACKTRACE (often set in CI) would bury the advice.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn task(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup { check } => setup::ensure(!check).map(|()| ExitCode::SUCCESS),
        Task::BuildEbpf { release } => build::build_ebpf(release).map(|_| ExitCode::SUCCESS),
        Task::Run { debug, args, .. } => run::run(!debug, &args),
        Task::Test { args, no_vm } => test::test(&args, !no_vm),
        Task::Dist { check } => {
            let deb = dist::dist()?;
            if check {
                dist::check::check_package(&deb)?;
            }
            println!("{}", deb.display());
            Ok(ExitCode::SUCCESS)
        }
        Task::VmTest(opts) => vm::vm_test(&opts),
        Task::Ci { args } => test::ci(&args, true),
        Task::Bench(opts) => bench::bench(opts),
    }
}
