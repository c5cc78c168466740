//! The one eBPF build recipe is netwatch/build.rs (aya-build): this only makes sure its
//! toolchain exists first, so a missing bpf-linker is reported here and not deep in a build
//! script's output.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{
    say, setup,
    util::{cargo, run_checked, workspace_root},
};

/// Builds netwatch (which builds and embeds the eBPF object) and returns the binary's path.
pub fn build_ebpf(release: bool) -> Result<PathBuf> {
    setup::ensure(true)?;
    build_netwatch(release)
}

/// Assumes `setup::ensure` has run.
pub fn build_netwatch(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "netwatch"]);
    if release {
        cmd.arg("--release");
    }
    // `cargo build` prints progress on stderr; keep stdout for netwatch's output in `run`.
    cmd.stdout(std::io::stderr());
    run_checked(
        &mut cmd,
        "building netwatch failed; see the compiler output above (eBPF errors come from \
         netwatch-ebpf via netwatch/build.rs)",
    )?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("netwatch");
    if !bin.is_file() {
        bail!("cargo built netwatch but {} does not exist", bin.display());
    }
    say!("built    {}", bin.display());
    Ok(bin)
}

/// Honours CARGO_TARGET_DIR so the printed path is the one cargo wrote.
pub fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    if dir.is_absolute() {
        dir
    } else {
        workspace_root().join(dir)
    }
}
