//! Runs netwatch as root, because loading BPF programs needs CAP_BPF + CAP_PERFMON and the
//! user-facing job should not fail on a forgotten sudo.

use std::{ffi::OsString, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{
    build, say, setup,
    util::{command, exit_code, is_root, which},
};

pub fn run(release: bool, args: &[OsString]) -> Result<ExitCode> {
    setup::ensure(true)?;
    let bin = build::build_netwatch(release)?;
    let mut cmd = if is_root() {
        command(&bin)
    } else if let Some(sudo) = which("sudo") {
        say!("not root: running netwatch through {}", sudo.display());
        let mut cmd = command(sudo);
        cmd.arg("--").arg(&bin);
        cmd
    } else {
        // netwatch itself says which capabilities are missing.
        say!("not root and no sudo: running netwatch directly");
        command(&bin)
    };
    cmd.args(args);
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", bin.display()))?;
    Ok(exit_code(status))
}
