//! Stages the package's tree under target/dist and builds the .deb with `dpkg-deb`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};

use super::layout::{BIN, COMPLETIONS, CONTROL_FILES, CONTROL_TEMPLATE, COPIED, MAN_DIR, PACKAGE};
use crate::{
    build::target_dir,
    say,
    util::{command, describe, run_checked, stdout_bytes, stdout_of, workspace_root},
};

/// Builds the package from the release binary `bin`; returns the .deb's path.
pub fn build(bin: &Path) -> Result<PathBuf> {
    let version = binary_version(bin)?;
    let arch = stdout_of(
        command("dpkg").arg("--print-architecture"),
        "asking dpkg for the architecture",
    )?
    .trim()
    .to_string();
    let dist = target_dir().join("dist");
    let name = format!("{PACKAGE}_{version}_{arch}");
    let root = dist.join(&name);
    // A file of an earlier build must not ride along.
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;

    let staged_bin = root.join(BIN);
    install(bin, &staged_bin, 0o755)?;
    run_checked(
        command("strip").arg("--strip-unneeded").arg(&staged_bin),
        "stripping the binary failed (strip is in binutils)",
    )?;
    for (shell, path) in COMPLETIONS {
        let script = stdout_bytes(
            command(&staged_bin).args(["completions", shell]),
            &format!("generating the {shell} completions"),
        )?;
        write(&root.join(path), &script, 0o644)?;
    }
    man_pages(&staged_bin, &root.join(MAN_DIR), &dist)?;
    for (source, path, mode) in COPIED {
        install(&workspace_root().join(source), &root.join(path), *mode)?;
    }

    let control_dir = root.join("DEBIAN");
    fs::create_dir_all(&control_dir)
        .with_context(|| format!("cannot create {}", control_dir.display()))?;
    for (file, mode) in CONTROL_FILES {
        install(
            &workspace_root().join("packaging/debian").join(file),
            &control_dir.join(file),
            *mode,
        )?;
    }
    let md5sums = md5sums(&root)?;
    let control = control(&version, &arch, &shlib_depends(&staged_bin, &dist)?, &root)?;
    write(&control_dir.join("md5sums"), md5sums.as_bytes(), 0o644)?;
    write(&control_dir.join("control"), control.as_bytes(), 0o644)?;
    directory_modes(&root)?;

    let deb = dist.join(format!("{name}.deb"));
    let mut cmd = command("dpkg-deb");
    // Files owned by root whoever builds; xz as Debian's own packages are.
    cmd.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .stdout(std::io::stderr());
    say!("running  {}", describe(&cmd));
    run_checked(&mut cmd, "dpkg-deb could not build the package")?;
    say!("built    {}", deb.display());
    Ok(deb)
}

/// The version the binary reports (`netwatch 0.1.0`): what is packaged is what it says.
fn binary_version(bin: &Path) -> Result<String> {
    let text = stdout_of(command(bin).arg("--version"), "asking netwatch its version")?;
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [name, version] if name == PACKAGE && !version.is_empty() => Ok(version.to_string()),
        _ => bail!(
            "`{} --version` printed {text:?}, not `{PACKAGE} VERSION`",
            bin.display()
        ),
    }
}

/// The man pages the binary generates from its clap definition, gzipped as Debian wants.
fn man_pages(bin: &Path, man_dir: &Path, dist: &Path) -> Result<()> {
    let raw = dist.join("man");
    let _ = fs::remove_dir_all(&raw);
    run_checked(
        command(bin).arg("man").arg(&raw),
        "the binary could not write its man pages",
    )?;
    fs::create_dir_all(man_dir).with_context(|| format!("cannot create {}", man_dir.display()))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&raw)
        .with_context(|| format!("cannot list {}", raw.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", raw.display()))?;
    pages.sort();
    for page in pages {
        let Some(file) = page.file_name() else {
            continue;
        };
        // -n: no name or time stamp inside, so equal pages give equal packages.
        let gz = stdout_bytes(
            command("gzip").args(["-9n", "--stdout"]).arg(&page),
            "compressing a man page",
        )?;
        let name = format!("{}.gz", file.to_string_lossy());
        write(&man_dir.join(name), &gz, 0o644)?;
    }
    Ok(())
}

/// The shared libraries' packages, as `dpkg-shlibdeps` finds them (e.g. `libc6 (>= 2.34)`).
fn shlib_depends(bin: &Path, dist: &Path) -> Result<String> {
    // dpkg-shlibdeps runs in a source tree: it wants a debian/control naming the package.
    let tree = dist.join("shlibdeps");
    fs::create_dir_all(tree.join("debian"))
        .with_context(|| format!("cannot create {}", tree.display()))?;
    fs::write(
        tree.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )
    .with_context(|| format!("cannot write {}/debian/control", tree.display()))?;
    let mut cmd = command("dpkg-shlibdeps");
    cmd.arg("-O").arg(format!("-e{}", bin.display()));
    cmd.current_dir(&tree).stderr(Stdio::null());
    let out = stdout_of(&mut cmd, "dpkg-shlibdeps")?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("`{}` printed no shlibs:Depends: {out:?}", describe(&cmd)))?;
    Ok(deps.trim().to_string())
}

/// The control file from its template; Installed-Size is in KiB, as dpkg counts it.
fn control(version: &str, arch: &str, depends: &str, root: &Path) -> Result<String> {
    let path = workspace_root().join(CONTROL_TEMPLATE);
    let template =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes: u64 = files(root)?
        .iter()
        .map(|f| fs::metadata(root.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum();
    let text = template
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@DEPENDS@", depends)
        .replace("@INSTALLED_SIZE@", &bytes.div_ceil(1024).to_string());
    if let Some(left) = placeholder(&text) {
        bail!(
            "{} has a placeholder this build does not fill: @{left}@",
            path.display()
        );
    }
    Ok(text)
}

/// The first `@NAME@` in `text` (an e-mail address is none).
fn placeholder(text: &str) -> Option<&str> {
    text.match_indices('@').find_map(|(at, _)| {
        let rest = &text[at + 1..];
        let len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        (len > 0 && rest[len..].starts_with('@')).then(|| &rest[..len])
    })
}

/// `md5sums` for `dpkg --verify`: every installed file, relative to /.
fn md5sums(root: &Path) -> Result<String> {
    let mut cmd = command("md5sum");
    cmd.args(files(root)?).current_dir(root);
    stdout_of(&mut cmd, "md5sum")
}

/// The package's files (not DEBIAN/), relative to `root`, sorted.
fn files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            if path.is_dir() {
                if path != root.join("DEBIAN") {
                    walk(&path, root, out)?;
                }
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Directories 0755 whatever the builder's umask (dpkg-deb refuses a group-writable DEBIAN).
fn directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.is_dir() {
            directory_modes(&path)?;
        }
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_addresses_are_not() {
        assert_eq!(placeholder("Version: @VERSION@\n"), Some("VERSION"));
        assert_eq!(
            placeholder("Maintainer: a <root@localhost>\nVersion: 1\n"),
            None
        );
        assert_eq!(placeholder("M: <root@localhost>\nV: @ARCH@"), Some("ARCH"));
    }
}
