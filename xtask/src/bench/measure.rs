//! What the benchmark reads from /proc: a process's CPU time and peak RSS, the BPF programs
//! and maps it holds (run time per program while a [`RunTimeStats`] descriptor is held),
//! sysctls (changed only through a guard that restores them), and the machine's description.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

use crate::{say, util::command};

/// utime + stime of the whole process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of /proc/PID/status, e.g. VmHWM (peak RSS).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn clock_ticks_per_sec() -> f64 {
    command("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One BPF program a process holds, from /proc/PID/fdinfo.
#[derive(Clone, Debug, Default)]
pub struct ProgStat {
    pub id: u64,
    /// From `bpftool prog show`, where bpftool exists (fdinfo has no names).
    pub name: Option<String>,
    pub prog_type: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

#[derive(Clone, Debug, Default)]
pub struct BpfHoldings {
    pub progs: Vec<ProgStat>,
    /// Sum of the maps' `memlock` (what the kernel charges for them), bytes.
    pub maps_memlock: u64,
    pub maps: usize,
}

impl BpfHoldings {
    pub fn run_time_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.run_time_ns).sum()
    }

    /// Run time of the programs that are not a hook's nested twin (`*_nested`, which only
    /// act while their first program runs on the CPU); None when a program has no name
    /// (no bpftool to name them).
    pub fn run_time_ns_without_twins(&self) -> Option<u64> {
        let mut sum = 0;
        for p in &self.progs {
            if !p.name.as_deref()?.ends_with("_nested") {
                sum += p.run_time_ns;
            }
        }
        Some(sum)
    }
}

/// The BPF programs and maps behind `pid`'s descriptors, each counted once.
pub fn bpf_holdings(pid: u32) -> BpfHoldings {
    let mut progs: BTreeMap<u64, ProgStat> = BTreeMap::new();
    let mut maps: BTreeMap<u64, u64> = BTreeMap::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BpfHoldings::default();
    };
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = match target.as_ref() {
            "anon_inode:bpf-prog" => "prog",
            "anon_inode:bpf-map" => "map",
            _ => continue,
        };
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |key: &str| -> Option<&str> {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let num = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if kind == "prog" {
            let id = num("prog_id");
            progs.entry(id).or_insert_with(|| ProgStat {
                id,
                name: prog_name(id),
                prog_type: field("prog_type").unwrap_or("?").to_string(),
                run_time_ns: num("run_time_ns"),
                run_cnt: num("run_cnt"),
                recursion_misses: num("recursion_misses"),
            });
        } else {
            maps.insert(num("map_id"), num("memlock"));
        }
    }
    BpfHoldings {
        progs: progs.into_values().collect(),
        maps: maps.len(),
        maps_memlock: maps.values().sum(),
    }
}

/// The kernel's per-program run-time accounting (`run_time_ns`, `run_cnt` in fdinfo), on
/// while this is alive. Taken with `bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)` rather than
/// by writing `kernel.bpf_stats_enabled`: the kernel counts holders of such descriptors, so
/// the accounting stops when the bench exits however it exits (even SIGKILL), and it leaves
/// a sysctl someone else set alone.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats> {
        /// `enum bpf_cmd` and `enum bpf_stats_type` in include/uapi/linux/bpf.h (5.8+).
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        /// `union bpf_attr`'s `enable_stats` member; the kernel zero-checks the rest of
        /// the size we pass.
        #[repr(C)]
        struct EnableStats {
            stats_type: u32,
        }
        let attr = EnableStats {
            stats_type: BPF_STATS_RUN_TIME,
        };
        // SAFETY: a valid attr pointer and its size; the result is a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const EnableStats,
                std::mem::size_of::<EnableStats>() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) failed (kernel 5.8+, root)");
        }
        say!(
            "bpf      run-time statistics on while the bench holds its BPF_ENABLE_STATS descriptor"
        );
        // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
        Ok(RunTimeStats {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// `N: tracing  name set_state  tag ...` from bpftool, if it is installed.
fn prog_name(id: u64) -> Option<String> {
    let bpftool = crate::util::which("bpftool")?;
    let out = command(bpftool)
        .args(["prog", "show", "id", &id.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "name")?;
    words.next().map(str::to_string)
}

/// Whether `pid` holds a BPF link or a perf event (how the peers attach their programs).
pub fn has_attachment(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|t| {
                let t = t.to_string_lossy();
                t == "anon_inode:bpf_link" || t == "anon_inode:[perf_event]"
            })
            .unwrap_or(false)
    })
}

/// `tw` from /proc/net/sockstat: TIME_WAIT sockets in this network namespace.
pub fn timewait_sockets() -> Option<u64> {
    let s = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "tw")?;
    words.next()?.parse().ok()
}

pub fn read_sysctl(name: &str) -> Option<String> {
    fs::read_to_string(sysctl_path(name))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// A sysctl set for the benchmark and put back as it was when this is dropped (or, through
/// a watchdog, when xtask dies).
pub struct SysctlGuard {
    name: String,
    old: String,
    _watchdog: Option<super::procs::Proc>,
}

impl SysctlGuard {
    pub fn set(name: &str, value: &str) -> Result<SysctlGuard> {
        let old = read_sysctl(name).with_context(|| format!("cannot read sysctl {name}"))?;
        let watchdog = super::procs::watchdog(&format!(
            "printf '%s\\n' '{}' > {}",
            old.replace('\'', ""),
            sysctl_path(name)
        ));
        fs::write(sysctl_path(name), value)
            .with_context(|| format!("cannot set sysctl {name}={value}"))?;
        say!("sysctl   {name}: {old} -> {value} (restored afterwards)");
        Ok(SysctlGuard {
            name: name.to_string(),
            old,
            _watchdog: watchdog,
        })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        match fs::write(sysctl_path(&self.name), &self.old) {
            Ok(()) => say!("sysctl   {} restored to {}", self.name, self.old),
            Err(e) => say!(
                "warning: could not restore sysctl {} to {}: {e}",
                self.name,
                self.old
            ),
        }
    }
}

/// Mounts tracefs (which the peers' classic tracepoints need) and unmounts it on drop if it
/// was not mounted before.
pub struct TracefsGuard {
    mounted_by_us: bool,
    _watchdog: Option<super::procs::Proc>,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl TracefsGuard {
    pub fn ensure() -> Result<TracefsGuard> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(TracefsGuard {
                mounted_by_us: false,
                _watchdog: None,
            });
        }
        crate::util::run_checked(
            command("mount").args(["-t", "tracefs", "nodev", TRACEFS]),
            "mounting tracefs (the peers' tracepoints need it) failed",
        )?;
        say!("mounted  tracefs on {TRACEFS} (unmounted afterwards)");
        Ok(TracefsGuard {
            mounted_by_us: true,
            _watchdog: super::procs::watchdog(&format!("umount {TRACEFS}")),
        })
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted_by_us {
            match command("umount").arg(TRACEFS).status() {
                Ok(s) if s.success() => say!("unmounted tracefs"),
                _ => say!("warning: could not unmount {TRACEFS}"),
            }
        }
    }
}

/// A number field of a flat JSON object line, without a JSON parser.
pub fn json_num(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The raw text of an object-valued field (`{...}`) of a flat JSON line.
pub fn json_obj<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":{{");
    let start = line.find(&pat)? + pat.len() - 1;
    let end = start + line[start..].find('}')? + 1;
    Some(&line[start..end])
}

/// What BENCHMARKS.md says about the machine.
pub struct Machine {
    pub cpus: String,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub tw_buckets: String,
    pub port_range: String,
}

fn output(cmd: &str, args: &[&str]) -> String {
    command(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: Option<u64> = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        Machine {
            cpus: output("nproc", &[]),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
                .unwrap_or_else(|| "?".into()),
            memory: mem_kb
                .map(|kb| format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
                .unwrap_or_else(|| "?".into()),
            kernel: output("uname", &["-r"]),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            tw_buckets: read_sysctl("net.ipv4.tcp_max_tw_buckets").unwrap_or_else(|| "?".into()),
            port_range: read_sysctl("net.ipv4.ip_local_port_range").unwrap_or_else(|| "?".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(name: Option<&str>, ns: u64) -> ProgStat {
        ProgStat {
            name: name.map(str::to_string),
            run_time_ns: ns,
            ..ProgStat::default()
        }
    }

    #[test]
    fn run_time_without_the_nested_twins() {
        let b = BpfHoldings {
            progs: vec![
                prog(Some("set_state"), 300),
                prog(Some("set_state_nested"), 30),
                prog(Some("slab_free"), 70),
            ],
            ..BpfHoldings::default()
        };
        assert_eq!(b.run_time_ns(), 400);
        assert_eq!(b.run_time_ns_without_twins(), Some(370));
        let unnamed = BpfHoldings {
            progs: vec![prog(None, 5)],
            ..BpfHoldings::default()
        };
        assert_eq!(unnamed.run_time_ns_without_twins(), None);
    }
}
