//! Toolchain and test prerequisites.
//!
//! rustup here has no rust-src and cannot download one, so the eBPF crate is built by Debian's
//! rustc 1.96, which ships a prebuilt `core` for bpfel-unknown-none; bpf-linker must be built
//! against the same LLVM (22) and netwatch/build.rs reaches that rustc through the rustup
//! toolchain `bpf-debian`. Each check is cheap so every task can run them all.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    say,
    util::{cargo, cargo_home, command, describe, is_root, run_checked, which},
};

/// What builds the eBPF crate: Debian's rustc with BPF `core`, and the LLVM bpf-linker needs.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// What the namespace tests drive: ip/veth, iptables/nft NAT, conntrack, sysctl.
/// chromium renders the HTML report in its test; gzip checks compressed traces; tmux runs
/// the dashboard in a real terminal for the alerts-pane test; prometheus is the real server
/// that scrapes `netwatch serve` in tests/tests/prometheus.rs (its own process per test: the
/// package's service is not used).
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "procps",
    "chromium",
    "gzip",
    "tmux",
    "prometheus",
];
/// What `cargo xtask vm-test` needs: QEMU to boot Debian's kernels, busybox-static for the
/// guest's shell and mounts, nftables for the guest's `nft` (copied in with its libraries),
/// dpkg-deb/cpio/kmod to unpack packages and read module dependencies, and the three
/// decompressors because each kernel compresses modules differently (.ko.xz on 5.10/6.1,
/// .ko.zst later).
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "nftables",
    "cpio",
    "kmod",
    "zstd",
    "lz4",
    "xz-utils",
];

/// What `cargo xtask dist` and its package test need: dpkg-shlibdeps (dpkg-dev) and strip
/// (binutils) to build the .deb; adduser for its postinst; systemd-analyze (systemd: it
/// verifies offline, without systemd as PID 1) and man-db (the unit's Documentation= pages)
/// to verify the unit; promtool (prometheus) to check the alerting rules.
const DIST_PACKAGES: &[&str] = &[
    "dpkg-dev",
    "binutils",
    "adduser",
    "systemd",
    "man-db",
    "prometheus",
];

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUSTC_VERSION: &str = "1.96";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's default llvm-config is LLVM 14; without this bpf-linker fails "-lLLVM".
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The name netwatch/build.rs passes to aya-build (`Toolchain::Custom`).
const RUSTUP_TOOLCHAIN: &str = "bpf-debian";
const RUSTUP_TOOLCHAIN_DIR: &str = "/usr";

/// Checks every prerequisite and, with `install`, installs what is missing. Without `install`
/// it fails naming what is missing, for callers that must not touch the machine.
pub fn ensure(install: bool) -> Result<()> {
    apt_packages(install)?;
    debian_rustc()?;
    bpf_linker(install)?;
    rustup_toolchain(install)?;
    Ok(())
}

fn apt_packages(install: bool) -> Result<()> {
    // A package two lists need (nftables) is checked and installed once.
    let mut wanted: Vec<&str> = Vec::new();
    for &pkg in TOOLCHAIN_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .chain(VM_PACKAGES)
        .chain(DIST_PACKAGES)
    {
        if !wanted.contains(&pkg) {
            wanted.push(pkg);
        }
    }
    let installed = installed_packages(&wanted)?;
    let mut missing = Vec::new();
    for pkg in &wanted {
        if installed.iter().any(|p| p == pkg) {
            say!("ok       deb {pkg}");
        } else {
            say!("missing  deb {pkg}");
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !install {
        bail!("Debian packages missing: {list}; run `cargo xtask setup` (as root)");
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {list}; installing them needs root: run \
             `sudo cargo xtask setup` (or `sudo apt-get install {list}`)"
        );
    }
    say!("running  apt-get update");
    run_checked(
        apt_get().arg("update"),
        "apt-get update failed; check that Debian's apt mirrors are reachable",
    )?;
    say!("running  apt-get install {list}");
    run_checked(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        &format!("installing {list} failed; see apt-get's output above"),
    )?;
    let installed = installed_packages(&missing)?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !installed.iter().any(|i| i == p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    say!("done     deb {list}");
    Ok(())
}

/// One dpkg-query for all packages: a call per package would cost most of the fast path.
fn installed_packages(pkgs: &[&str]) -> Result<Vec<String>> {
    let out = command("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(pkgs)
        .stderr(Stdio::null())
        .output()
        .context(
            "could not run dpkg-query: this set-up is for Debian 12; elsewhere install rustc 1.96 \
             with BPF core, LLVM 22 and bpf-linker 0.13.0 by hand",
        )?;
    // Exit status 1 only means some package is unknown; the found ones are still listed.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(pkg, _)| pkg.to_string())
        .collect())
}

fn apt_get() -> Command {
    let mut cmd = command("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        // Keep stdout for netwatch when setup runs inside `cargo xtask run`.
        .stdout(std::io::stderr());
    cmd
}

fn debian_rustc() -> Result<()> {
    let out = command(DEBIAN_RUSTC)
        .arg("--version")
        .output()
        .with_context(|| {
            format!("{DEBIAN_RUSTC} is missing: install rustc-web (`sudo cargo xtask setup`)")
        })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = format!("rustc {DEBIAN_RUSTC_VERSION}.");
    if !version.starts_with(&want) {
        bail!(
            "{DEBIAN_RUSTC} reports {version:?}, not rustc {DEBIAN_RUSTC_VERSION}: the eBPF build \
             needs Debian's rustc-web 1.96 (its BPF `core` and LLVM 22 match bpf-linker); \
             reinstall rustc-web"
        );
    }
    say!("ok       {DEBIAN_RUSTC}: {version}");
    if !Path::new(BPF_CORE_DIR).is_dir() {
        bail!(
            "{BPF_CORE_DIR} is missing, so rustc cannot build for BPF: install \
             libstd-rust-web-dev-bpf (`sudo cargo xtask setup`)"
        );
    }
    say!("ok       {BPF_CORE_DIR}");
    Ok(())
}

fn bpf_linker(install: bool) -> Result<()> {
    let found = which("bpf-linker");
    let problem = match &found {
        None => "not found".to_string(),
        Some(path) => match linker_version(path) {
            Err(e) => format!("{}: {e:#}", path.display()),
            Ok(v) if v != BPF_LINKER_VERSION => {
                format!("{} is {v}, want {BPF_LINKER_VERSION}", path.display())
            }
            Ok(_) if !linked_against_llvm22(path) => {
                format!("{} is not built against LLVM 22", path.display())
            }
            Ok(v) => {
                say!("ok       bpf-linker {v} (LLVM 22): {}", path.display());
                return Ok(());
            }
        },
    };
    say!("missing  bpf-linker {BPF_LINKER_VERSION} with LLVM 22 ({problem})");
    let mut cmd = cargo();
    cmd.args([
        "install",
        "--locked",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    // Without --force cargo keeps an installed 0.13.0 built with other features.
    if found.is_some() {
        cmd.arg("--force");
    }
    cmd.env("LLVM_PREFIX", LLVM_PREFIX)
        .current_dir(cargo_home())
        .stdout(std::io::stderr());
    if !install {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} (LLVM 22) is missing ({problem}); run `cargo xtask \
             setup`, or `LLVM_PREFIX={LLVM_PREFIX} {}`",
            describe(&cmd)
        );
    }
    fs::create_dir_all(cargo_home())
        .with_context(|| format!("could not create {}", cargo_home().display()))?;
    say!(
        "running  LLVM_PREFIX={LLVM_PREFIX} {} (about a minute)",
        describe(&cmd)
    );
    run_checked(
        &mut cmd,
        "building bpf-linker failed; it needs llvm-22-dev and crates.io",
    )?;
    let path = cargo_home().join("bin/bpf-linker");
    let v = linker_version(&path)?;
    say!("done     bpf-linker {v}: {}", path.display());
    Ok(())
}

fn linker_version(path: &Path) -> Result<String> {
    let out = command(path)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "bpf-linker 0.13.0"
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected `{} --version` output: {text:?}", path.display()))
}

/// `--version` does not name LLVM, so look at the shared libLLVM it loads, or failing that at
/// the features cargo recorded when installing it.
fn linked_against_llvm22(path: &Path) -> bool {
    if let Ok(out) = command("ldd").arg(path).output() {
        let libs = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = libs.lines().find(|l| l.contains("libLLVM")) {
            return line.contains("libLLVM.so.22") || line.contains("libLLVM-22");
        }
    }
    installed_with_llvm22_feature(path)
}

fn installed_with_llvm22_feature(path: &Path) -> bool {
    let ours: PathBuf = cargo_home().join("bin/bpf-linker");
    if path != ours {
        return false;
    }
    let Ok(crates) = fs::read_to_string(cargo_home().join(".crates2.json")) else {
        return false;
    };
    // {"installs":{"bpf-linker 0.13.0 (registry+...)":{..."features":["llvm-22"],...}}}
    let key = format!("\"bpf-linker {BPF_LINKER_VERSION} ");
    crates.find(&key).is_some_and(|start| {
        let entry = &crates[start..];
        let end = entry.find('}').unwrap_or(entry.len());
        entry[..end].contains("\"llvm-22\"")
    })
}

fn rustup_toolchain(install: bool) -> Result<()> {
    let rustup = which("rustup").context(
        "rustup not found: netwatch/build.rs builds the eBPF crate through `rustup run \
         bpf-debian`; install rustup (https://rustup.rs) and rerun `cargo xtask setup`",
    )?;
    let out = command(&rustup)
        .args(["toolchain", "list", "-v"])
        .output()
        .with_context(|| format!("could not run {} toolchain list", rustup.display()))?;
    let list = String::from_utf8_lossy(&out.stdout);
    // "bpf-debian /usr" (older rustup prints the name only)
    let linked = list.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(RUSTUP_TOOLCHAIN)).then(|| words.last().map(str::to_string))
    });
    match linked {
        Some(dir) if dir.as_deref().is_none_or(|d| d == RUSTUP_TOOLCHAIN_DIR) => {
            say!("ok       rustup toolchain {RUSTUP_TOOLCHAIN} -> {RUSTUP_TOOLCHAIN_DIR}");
            Ok(())
        }
        Some(dir) => bail!(
            "rustup toolchain {RUSTUP_TOOLCHAIN} points at {}, not {RUSTUP_TOOLCHAIN_DIR}: run \
             `rustup toolchain uninstall {RUSTUP_TOOLCHAIN}` and `cargo xtask setup`",
            dir.unwrap_or_default()
        ),
        None => {
            say!("missing  rustup toolchain {RUSTUP_TOOLCHAIN}");
            let mut cmd = command(&rustup);
            cmd.args(["toolchain", "link", RUSTUP_TOOLCHAIN, RUSTUP_TOOLCHAIN_DIR]);
            if !install {
                bail!(
                    "rustup toolchain {RUSTUP_TOOLCHAIN} is missing; run `cargo xtask setup` or \
                     `rustup toolchain link {RUSTUP_TOOLCHAIN} {RUSTUP_TOOLCHAIN_DIR}`"
                );
            }
            run_checked(&mut cmd, "rustup toolchain link failed")?;
            say!("done     rustup toolchain {RUSTUP_TOOLCHAIN} -> {RUSTUP_TOOLCHAIN_DIR}");
            Ok(())
        }
    }
}
