//! `cargo xtask dist`: the release binary and a Debian package that runs netwatch as a service
//! (binary, systemd unit, man pages, shell completions, Grafana dashboard, Prometheus rules,
//! DaemonSet manifest). The package is built by `dpkg-deb`, Debian's own tool, so nothing
//! extra is compiled for it; [`check`] installs it on this machine and runs it as its unit
//! would, which is the test `cargo xtask test` runs.

pub mod check;
mod deb;
mod layout;
mod metrics;
mod unit;
#[cfg(test)]
mod validate;

use std::path::PathBuf;

use anyhow::Result;

use crate::{build, setup};

/// Builds the release binary and the .deb, returning the package's path.
pub fn dist() -> Result<PathBuf> {
    setup::ensure(true)?;
    let bin = build::build_netwatch(true)?;
    deb::build(&bin)
}
