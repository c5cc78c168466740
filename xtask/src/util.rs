//! Process helpers shared by the tasks.

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root, from where this crate was compiled, so tasks work from any directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where `cargo install` puts bpf-linker.
pub fn cargo_home() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    PathBuf::from(home).join(".cargo")
}

/// PATH for every child: bpf-linker lives in $CARGO_HOME/bin, which sudo and CI often drop.
pub fn child_path() -> OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
}

/// A command with the PATH above; use this for every child process.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    cmd
}

/// The cargo that runs us (rustup's choice for this workspace), so builds use the same one.
pub fn cargo() -> Command {
    let mut cmd = command(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root());
    cmd
}

/// Searches `child_path()` for an executable.
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&child_path())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`, failing with `what` (which should say what the user can do) when it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what}: {} exited with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd`; its stdout, or an error saying `what` failed, with the command's own message.
pub fn stdout_bytes(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}: {}",
            out.status,
            describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// [`stdout_bytes`] as text.
pub fn stdout_of(cmd: &mut Command, what: &str) -> Result<String> {
    stdout_bytes(cmd, what).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// The command line, for messages the user may want to re-run by hand.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The shell convention (128 + signal) so callers of `cargo xtask` see what the child did.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// Effective uid from /proc, which avoids a libc dependency for one number.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Progress lines go to stderr: `cargo xtask run` keeps stdout for netwatch's JSON Lines.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("xtask: {}", format_args!($($arg)*)) };
}
