//! Tests need the built netwatch binary: the root-only tests in `netwatch-tests` run it against
//! real sockets in namespaces, and find it through NETWATCH_BIN.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{
    build, say, setup,
    util::{cargo, describe, exit_code, is_root, run_checked, workspace_root},
};

/// Runs the workspace's tests, then the package test and the VM matrix when `vm` and either
/// root (a developer's full run) or CI=true (where a missing QEMU or a failed boot must fail,
/// never skip).
pub fn test(args: &[OsString], vm: bool) -> Result<ExitCode> {
    setup::ensure(true)?;
    let bin = build::build_netwatch(false)?;
    let mut cmd = cargo();
    // netwatch-ebpf only builds for bpfel-unknown-none; its own build is covered by netwatch's.
    // Every test binary runs even after one fails, so one run shows every failure.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "netwatch-ebpf",
        "--no-fail-fast",
    ]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    cmd.env("NETWATCH_BIN", &bin);
    say!("running  NETWATCH_BIN={} {}", bin.display(), describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", describe(&cmd)))?;
    if !status.success() {
        say!("tests failed ({status})");
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !vm || !(is_root() || ci) {
        if vm {
            say!(
                "skipping the package test and the VM matrix (not root); run `cargo xtask dist \
                 --check` and `cargo xtask vm-test` for them"
            );
        }
        return Ok(exit_code(status));
    }
    // Before the matrix, which reuses its release build. A failure is said and counted, and
    // the matrix still runs: its table is wanted either way.
    let package_ok = crate::dist::dist()
        .and_then(|deb| crate::dist::check::check_package(&deb))
        .inspect_err(|e| say!("package test failed: {e:#}"))
        .is_ok();
    // The matrix runs even after a failed test: its table is wanted either way.
    let vm_code = crate::vm::vm_test(&crate::vm::Opts::default())
        .inspect_err(|e| say!("vm-test failed: {e:#}"))
        .unwrap_or(ExitCode::FAILURE);
    Ok(if !status.success() {
        exit_code(status)
    } else if !package_ok {
        ExitCode::FAILURE
    } else {
        vm_code
    })
}

pub fn ci(args: &[OsString], vm: bool) -> Result<ExitCode> {
    say!("running  cargo fmt --all -- --check");
    run_checked(
        cargo().args(["fmt", "--all", "--", "--check"]),
        "formatting differs; run `cargo fmt --all`",
    )?;
    // Clippy needs the eBPF object too (netwatch/build.rs embeds it).
    setup::ensure(true)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "netwatch-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    say!("running  {}", describe(&clippy));
    run_checked(&mut clippy, "clippy found problems; fix the warnings above")?;
    // The kernel crate, linted for the host: panic=abort avoids the duplicate panic_impl
    // of a std build, and its own target dir keeps these flags from invalidating the rest.
    let mut ebpf = cargo();
    ebpf.args([
        "clippy",
        "--package",
        "netwatch-ebpf",
        "--",
        "-D",
        "warnings",
    ])
    .env("RUSTC_BOOTSTRAP", "1")
    .env("RUSTFLAGS", "-C panic=abort")
    .env(
        "CARGO_TARGET_DIR",
        workspace_root().join("target").join("clippy-ebpf"),
    );
    say!("running  {}", describe(&ebpf));
    run_checked(
        &mut ebpf,
        "clippy found problems in netwatch-ebpf; fix the warnings above",
    )?;
    test(args, vm)
}
