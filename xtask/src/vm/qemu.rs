//! Boots one guest under QEMU, bounded in time, and reads back what it sent on its second
//! serial port (the first is the kernel console, kept for diagnosis).
//!
//! The channel format, written by the guest driver (tests/src/bin/netwatch-vm-guest/) on a
//! raw-mode ttyS1: frames `NWVM <name> <length>\n<bytes>\n`, then `NWVM-END\n` once it has
//! sent everything. Lengths rather than an encoding: the trace is sent as it is.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{command, describe, which};

pub const QEMU: &str = "qemu-system-x86_64";

/// How the CPU is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: only with vmx/svm, which a stock kernel needs.
    Kvm,
    /// Emulation. The machines here expose a /dev/kvm (kvm-pvm) that cannot run a stock
    /// kernel (6.18 dies in its decompressor, 6.1 after ~160 s on cmpxchg16b), so /dev/kvm
    /// alone is not enough.
    Tcg,
}

/// KVM when the CPU flags show vmx or svm and /dev/kvm exists, else TCG.
pub fn accel_for(cpuinfo: &str, dev_kvm: bool) -> Accel {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && dev_kvm {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

pub fn accel() -> Accel {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    accel_for(&cpuinfo, Path::new("/dev/kvm").exists())
}

/// One boot's inputs.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// Where console.log, channel.bin and qemu.log go.
    pub dir: &'a Path,
    pub timeout: Duration,
    pub accel: Accel,
}

/// What a boot produced.
pub struct Booted {
    pub elapsed: Duration,
    pub timed_out: bool,
    /// The guest's frames in order.
    pub frames: Vec<(String, Vec<u8>)>,
    /// Whether the guest reached its end marker.
    pub complete: bool,
    pub console: PathBuf,
}

impl Booted {
    pub fn frame(&self, name: &str) -> Option<&[u8]> {
        self.frames
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }
}

/// Kills QEMU when dropped, so an error or a panic in the host leaves no guest running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn boot(b: &Boot<'_>) -> Result<Booted> {
    which(QEMU).with_context(|| {
        format!("{QEMU} not found: install qemu-system-x86 (`cargo xtask setup` as root)")
    })?;
    let console = b.dir.join("console.log");
    let channel = b.dir.join("channel.bin");
    for f in [&console, &channel] {
        let _ = fs::remove_file(f);
    }
    let log = fs::File::create(b.dir.join("qemu.log")).context("could not create qemu.log")?;
    let mut cmd = command(QEMU);
    match b.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    cmd.args([
        "-smp",
        "2",
        "-m",
        "1536",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
    ])
    .args(["-monitor", "none"])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-serial")
    .arg(format!("file:{}", channel.display()))
    .arg("-kernel")
    .arg(b.vmlinuz)
    .arg("-initrd")
    .arg(b.initrd)
    // panic=-1: a dying init reboots at once, and -no-reboot turns that into QEMU's exit.
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", describe(&cmd)))?;
    let mut guard = Guard(child);
    let mut timed_out = false;
    loop {
        if let Some(status) = guard.0.try_wait()? {
            if !status.success() {
                let log = fs::read_to_string(b.dir.join("qemu.log")).unwrap_or_default();
                bail!("{QEMU} exited with {status}: {}", log.trim());
            }
            break;
        }
        if start.elapsed() > b.timeout {
            timed_out = true;
            let _ = guard.0.kill();
            let _ = guard.0.wait();
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let raw = fs::read(&channel).unwrap_or_default();
    let (frames, complete) = parse_frames(&raw);
    Ok(Booted {
        elapsed,
        timed_out,
        frames,
        complete,
        console,
    })
}

/// Splits the channel into frames; stops at the first malformed one (a guest that died
/// mid-frame), returning what came before.
pub fn parse_frames(mut raw: &[u8]) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut frames = Vec::new();
    // Anything before the first frame (line noise at boot) is skipped.
    if let Some(at) = find(raw, b"NWVM") {
        raw = &raw[at..];
    }
    loop {
        if raw.starts_with(b"NWVM-END\n") {
            return (frames, true);
        }
        let Some(rest) = raw.strip_prefix(b"NWVM ") else {
            return (frames, false);
        };
        let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
            return (frames, false);
        };
        let head = String::from_utf8_lossy(&rest[..nl]).into_owned();
        let Some((name, len)) = head.rsplit_once(' ') else {
            return (frames, false);
        };
        let Ok(len) = len.parse::<usize>() else {
            return (frames, false);
        };
        let body = &rest[nl + 1..];
        if body.len() < len + 1 || body[len] != b'\n' {
            return (frames, false);
        }
        frames.push((name.to_owned(), body[..len].to_vec()));
        raw = &body[len + 1..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the console says about how the guest ended: a kernel crash's headline lines (the
/// oops, where, the panic) when there was one, else its last `n` lines.
pub fn console_summary(path: &Path, n: usize) -> String {
    summarize_console(
        &String::from_utf8_lossy(&fs::read(path).unwrap_or_default()),
        n,
    )
}

pub fn summarize_console(text: &str, n: usize) -> String {
    let text = text.replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    let crash: Vec<&str> = lines
        .iter()
        .filter(|l| CRASH_MARKS.iter().any(|m| l.contains(m)))
        .map(|l| l.trim())
        .collect();
    if crash.is_empty() {
        lines[lines.len().saturating_sub(n)..].join(" | ")
    } else {
        crash.join(" | ")
    }
}

/// The lines of a kernel crash report that say what happened and where.
const CRASH_MARKS: &[&str] = &["Oops:", "BUG:", "RIP: 0010:", "Kernel panic"];

/// Whether the guest's kernel crashed (then the run says nothing about netwatch on it).
pub fn kernel_crashed(console: &Path) -> bool {
    let text = String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned();
    text.contains("Kernel panic") || text.contains("Oops:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_summarised_by_its_headlines() {
        let console = "Booting\r\n[ 8.85] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
            [ 8.86] CPU: 0 UID: 0 PID: 145 Comm: init\n[ 8.87] RIP: 0010:inet_ehashfn+0x33/0x120\n\
            [ 8.88] R10: 0000\n[ 8.89] Kernel panic - not syncing: Fatal exception\n";
        assert_eq!(
            summarize_console(console, 2),
            "[ 8.85] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI | [ 8.87] RIP: \
             0010:inet_ehashfn+0x33/0x120 | [ 8.89] Kernel panic - not syncing: Fatal exception"
        );
        assert_eq!(summarize_console("a\nb\nc\n", 2), "b | c");
    }

    #[test]
    fn kvm_only_with_hardware_virtualisation() {
        let pvm = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";
        let vmx = "processor\t: 0\nflags\t\t: fpu vmx sse2\n";
        assert_eq!(accel_for(pvm, true), Accel::Tcg);
        assert_eq!(accel_for(vmx, true), Accel::Kvm);
        assert_eq!(accel_for(vmx, false), Accel::Tcg);
        assert_eq!(accel_for("flags : svm", true), Accel::Kvm);
    }

    #[test]
    fn frames_round_trip_with_binary_bodies() {
        let raw = b"\r\nnoise NWVM trace 5\nab\ncd\nNWVM exit code 1\n3\nNWVM-END\n";
        let (f, done) = parse_frames(raw);
        assert!(done);
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].0.as_str(), f[0].1.as_slice()),
            ("trace", &b"ab\ncd"[..])
        );
        assert_eq!(
            (f[1].0.as_str(), f[1].1.as_slice()),
            ("exit code", &b"3"[..])
        );
    }

    #[test]
    fn a_guest_cut_short_keeps_its_whole_frames() {
        let (f, done) = parse_frames(b"NWVM log 2\nok\nNWVM trace 100\n{\"type\"");
        assert!(!done);
        assert_eq!(f.len(), 1);
        assert_eq!(parse_frames(b"").0.len(), 0);
        assert!(!parse_frames(b"NWVM x 1\nab").1);
    }
}
