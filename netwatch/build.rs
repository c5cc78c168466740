//! Builds the kernel programs (netwatch-ebpf) with the one recipe that works on these machines:
//! aya-build driving Debian's rustc through the `bpf-debian` rustup toolchain, so a plain
//! `cargo build` embeds a fresh object. `cargo xtask setup` installs what this needs.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "netwatch-ebpf")
        .ok_or_else(|| anyhow!("netwatch-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("netwatch-ebpf manifest has no parent dir"))?;
    println!("cargo:rerun-if-changed=../netwatch-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "netwatch-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("bpf-debian"),
    )
    .context(
        "building the eBPF programs failed; if the toolchain is missing, run `cargo xtask setup`",
    )
}
