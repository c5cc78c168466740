//! From a kernel's Debian packages to what the guest needs: `vmlinuz` and the modules netwatch
//! loads (decompressed on the host, where every decompressor is at hand, with their
//! dependencies first). The result is kept in the cache next to the packages, so a warm run
//! does no unpacking at all.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{command, describe};

/// The modules the guest loads (dependencies are added from each module's `depends`).
/// Debian builds all of them as modules, and the guest has no modprobe to load them on
/// demand:
/// - `inet_diag`, `tcp_diag`: sock_diag, behind netwatch's census;
/// - `nf_conntrack`: loaded before netwatch starts, which looks its allocator up in
///   /proc/kallsyms to recognise conntrack entries;
/// - `nf_tables`, `nft_ct`: what the guest's ruleset needs (chains, payload matches and
///   verdicts are in `nf_tables` itself; `ct state` and `notrack` in
///   `nft_ct`), pulling in `nfnetlink`, `nf_defrag_ipv4`/`ipv6` and `libcrc32c` as
///   dependencies where the kernel has them.
pub const MODULES: &[&str] = &[
    "inet_diag",
    "tcp_diag",
    "nf_conntrack",
    "nf_tables",
    "nft_ct",
];

/// What the guest of one kernel is made from.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    /// Decompressed `.ko` files, dependencies first.
    pub modules: Vec<PathBuf>,
}

/// The kernel in `debs`, unpacked into `out` unless an earlier run did for the same
/// [`MODULES`] (the `order` file is written last, so its presence means the unpacking
/// finished; `wanted` says for which modules, so adding one to the list unpacks again).
pub fn kernel_files(debs: &[PathBuf], out: &Path) -> Result<KernelFiles> {
    let order = out.join("modules.order");
    let wanted = out.join("modules.wanted");
    let vmlinuz = out.join("vmlinuz");
    let same_modules = fs::read_to_string(&wanted).is_ok_and(|w| w == wanted_list());
    if let (Ok(list), true) = (
        fs::read_to_string(&order),
        vmlinuz.is_file() && same_modules,
    ) {
        let modules = list.lines().map(|l| out.join(l)).collect::<Vec<_>>();
        if modules.iter().all(|m| m.is_file()) {
            return Ok(KernelFiles { vmlinuz, modules });
        }
    }
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("could not clear {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
    let tree = tempdir(out)?;
    let modules = unpack(debs, &tree.0, out)?;
    fs::write(&wanted, wanted_list())
        .with_context(|| format!("could not write {}", wanted.display()))?;
    let names: String = modules
        .iter()
        .map(|m| format!("{}\n", m.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    fs::write(&order, names).with_context(|| format!("could not write {}", order.display()))?;
    Ok(KernelFiles { vmlinuz, modules })
}

/// What `modules.wanted` holds: the [`MODULES`] an unpacked kernel was made for.
fn wanted_list() -> String {
    MODULES.iter().map(|m| format!("{m}\n")).collect()
}

/// A directory removed when dropped, also on error.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `NAME.unpack-PID` next to `near`; leftovers of killed runs are removed first.
fn tempdir(near: &Path) -> Result<TempDir> {
    let name = near.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.unpack-");
    if let Some(parent) = near.parent() {
        for e in fs::read_dir(parent).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            // Another run unpacking at the same time (its process alive) keeps its own.
            let dead = file
                .strip_prefix(&prefix)
                .is_some_and(|pid| !Path::new("/proc").join(pid).exists());
            if dead {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let p = near.with_file_name(format!("{prefix}{}", std::process::id()));
    fs::create_dir_all(&p).with_context(|| format!("could not create {}", p.display()))?;
    Ok(TempDir(p))
}

fn unpack(debs: &[PathBuf], tree: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    for deb in debs {
        let mut cmd = command("dpkg-deb");
        cmd.arg("-x").arg(deb).arg(tree);
        let status = cmd
            .status()
            .with_context(|| format!("could not run {}", describe(&cmd)))?;
        if !status.success() {
            bail!(
                "{} failed ({status}); delete {} to download it again",
                describe(&cmd),
                deb.display()
            );
        }
    }
    let image = find_vmlinuz(tree)?;
    fs::copy(&image, out.join("vmlinuz"))
        .with_context(|| format!("could not copy {}", image.display()))?;
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| {
            fs::read_dir(tree.join(d))
                .ok()?
                .filter_map(|e| e.ok())
                .next()
        })
        .map(|e| e.path())
        .next()
        .context("the kernel packages hold no lib/modules/VERSION directory")?;
    let mut index = HashMap::new();
    index_modules(&moddir, &mut index)?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let mut loaded = Vec::new();
    for name in MODULES {
        add_module(name, &index, &builtin, out, &mut loaded)?;
    }
    Ok(loaded)
}

/// `boot/vmlinuz-VERSION` in linux-image packages; `usr/lib/modules/VERSION/vmlinuz` in the
/// linux-binary packages of 7.x.
fn find_vmlinuz(tree: &Path) -> Result<PathBuf> {
    let in_dir = |dir: PathBuf, pick: &dyn Fn(&str) -> bool| {
        fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().is_some_and(|n| pick(&n.to_string_lossy())))
        })
    };
    if let Some(p) = in_dir(tree.join("boot"), &|n| n.starts_with("vmlinuz-")) {
        return Ok(p);
    }
    for modules in ["usr/lib/modules", "lib/modules"] {
        for version in fs::read_dir(tree.join(modules))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(p) = in_dir(version.path(), &|n| n == "vmlinuz") {
                return Ok(p);
            }
        }
    }
    bail!("no boot/vmlinuz-* or lib/modules/*/vmlinuz in the kernel packages")
}

/// The module name of a file: `tcp_diag.ko.zst` -> `tcp_diag` (the kernel treats - and _
/// alike in module names).
pub fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, index)?;
        } else if let Some(n) = p
            .file_name()
            .and_then(|n| module_name(&n.to_string_lossy()))
        {
            index.insert(n, p);
        }
    }
    Ok(())
}

/// Whether `modules.builtin` (paths such as `kernel/net/ipv4/inet_diag.ko`) lists `name`.
pub fn is_builtin(builtin: &str, name: &str) -> bool {
    builtin
        .lines()
        .any(|l| l.rsplit('/').next().and_then(module_name).as_deref() == Some(name))
}

/// Decompresses `name` and, before it, what it depends on, appending to `loaded`.
fn add_module(
    name: &str,
    index: &HashMap<String, PathBuf>,
    builtin: &str,
    out: &Path,
    loaded: &mut Vec<PathBuf>,
) -> Result<()> {
    let target = out.join(format!("{name}.ko"));
    if loaded.contains(&target) {
        return Ok(());
    }
    let Some(src) = index.get(name) else {
        if is_builtin(builtin, name) {
            return Ok(());
        }
        bail!("module {name} is neither in the kernel packages nor built in");
    };
    decompress(src, &target)?;
    let out_deps = command("modinfo")
        .args(["-F", "depends"])
        .arg(&target)
        .output()
        .with_context(|| format!("could not run modinfo on {}", target.display()))?;
    let deps = String::from_utf8_lossy(&out_deps.stdout).trim().to_owned();
    for dep in deps.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        add_module(&dep.replace('-', "_"), index, builtin, out, loaded)?;
    }
    loaded.push(target);
    Ok(())
}

fn decompress(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        fs::copy(src, dst).with_context(|| format!("could not copy {name}"))?;
        return Ok(());
    } else if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        bail!("{name}: unknown module compression");
    };
    let out = command(tool)
        .arg("-dc")
        .arg(src)
        .output()
        .with_context(|| format!("could not run {tool} (install it: `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(dst, out.stdout).with_context(|| format!("could not write {}", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_from_files() {
        assert_eq!(module_name("tcp_diag.ko.zst").as_deref(), Some("tcp_diag"));
        assert_eq!(module_name("inet_diag.ko.xz").as_deref(), Some("inet_diag"));
        assert_eq!(
            module_name("nf-conntrack.ko").as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name("modules.builtin"), None);
    }

    #[test]
    fn builtin_modules_are_found_by_name() {
        let b = "kernel/net/ipv4/tcp_cubic.ko\nkernel/net/ipv4/inet_diag.ko\n";
        assert!(is_builtin(b, "inet_diag"));
        assert!(!is_builtin(b, "tcp_diag"));
    }
}
