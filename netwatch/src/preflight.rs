//! Checks made before loading anything, so that each missing prerequisite gets its own
//! message saying what to do, instead of an EPERM from the first map creation.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::btf::{Btf, VMLINUX};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability mask from a `/proc/PID/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Names of the capabilities tracing needs that `caps` lacks; empty when it may trace.
/// CAP_SYS_ADMIN alone also suffices (kernels before 5.8 know no CAP_BPF).
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status to check capabilities")?;
    let caps = effective_caps(&status).context("no CapEff line in /proc/self/status")?;
    let missing = missing_caps(caps);
    if !missing.is_empty() {
        bail!(
            "netwatch needs to load eBPF programs, which takes CAP_BPF and CAP_PERFMON; this \
             process lacks {}. Run it as root (`sudo netwatch trace`) or grant them: \
             `sudo setcap cap_bpf,cap_perfmon+ep $(command -v netwatch)`",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// Loads the kernel's BTF, which tp_btf programs and our offset resolution both need.
pub fn kernel_btf() -> Result<Btf> {
    if !Path::new(VMLINUX).exists() {
        bail!(
            "this kernel exposes no BTF at {VMLINUX}; netwatch needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"
        );
    }
    Btf::from_file(VMLINUX).context("cannot parse the kernel's BTF")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capabilities_and_names_what_is_missing() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(
            missing_caps(effective_caps(root).unwrap()),
            Vec::<&str>::new()
        );
        let none = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing_caps(effective_caps(none).unwrap()),
            vec!["CAP_BPF", "CAP_PERFMON"]
        );
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        assert_eq!(
            missing_caps(effective_caps(&bpf_only).unwrap()),
            vec!["CAP_PERFMON"]
        );
        assert_eq!(effective_caps("nothing"), None);
    }
}
