//! Network namespaces as test hosts.
//!
//! Every test makes its own namespaces so that it sees only its own TCP sockets: the machine
//! carries background connections, and several tests run in parallel. A [`Netns`] is a guard:
//! dropping it (also while unwinding from a failed assertion) kills whatever still runs in the
//! namespace and deletes it, so a failing test leaves nothing behind.
//!
//! Network namespaces are per thread, so code runs "inside" a namespace on a dedicated thread
//! that has called `setns(2)` ([`in_netns`], [`spawn_in_netns`]). A socket belongs to the
//! namespace of the thread that created it, for its whole life, so sockets made there can be
//! used from any thread afterwards.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::thread;

use anyhow::{bail, Context, Result};

/// Where `ip netns` keeps its named namespaces (bind mounts of `/proc/<pid>/ns/net`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Prefix of every namespace this harness creates: `nwt-<pid>-<tag>-<counter>`.
const PREFIX: &str = "nwt-";

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);
static LINK_COUNTER: AtomicU32 = AtomicU32::new(0);
static SUBNET_COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

/// Runs a command, returning its stdout, or an error that carries the command line, the exit
/// status and stderr (the useful part when `ip` refuses something).
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Deletes namespaces left by earlier test processes that died without unwinding (SIGKILL,
/// abort): their names carry the pid, and a pid with no `/proc` entry is gone. Done once per
/// process, best effort.
fn cleanup_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A named network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    inode: u64,
}

impl Netns {
    /// Creates `nwt-<pid>-<tag>-<counter>` with `ip netns add` and brings up its `lo`.
    pub fn new(tag: &str) -> Result<Netns> {
        STALE_CLEANUP.call_once(cleanup_stale);
        let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{tag}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on the guard owns the namespace: any failure below deletes it.
        let mut ns = Netns { name, inode: 0 };
        let path = ns.path();
        ns.inode = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .ino();
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// The namespace's inode number: `st_ino` of the `/run/netns` bind mount is the nsfs
    /// inode, which equals the kernel's `net->ns.inum`, i.e. what netwatch reports as `netns`.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs a command inside the namespace (`ip netns exec`); returns its stdout, or an error
    /// with its stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let Some((prog, args)) = argv.split_first() else {
            bail!("Netns::exec needs a command");
        };
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args))
    }

    /// Sets a sysctl inside the namespace, e.g. `sysctl("net.ipv4.tcp_fin_timeout", "3")`.
    ///
    /// Writes `/proc/sys/...` from a thread switched into the namespace: the `net.*` tree under
    /// `/proc/sys` is that of the opening thread's namespace, and this needs no `sysctl` binary.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        let value = value.to_owned();
        in_netns(self, move || -> Result<()> {
            std::fs::write(&path, value.as_bytes())
                .with_context(|| format!("write {value:?} to {}", path.display()))?;
            Ok(())
        })?
        .with_context(|| format!("sysctl {key} in {}", self.name))
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        in_netns(self, move || -> Result<String> {
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?
                .trim()
                .to_owned())
        })?
        .with_context(|| format!("sysctl {key} in {}", self.name))
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside (a helper started with `ip netns exec`) would otherwise keep
        // the namespace alive after its name is gone. `ip netns pids` matches by the main
        // thread's namespace, so our own process (whose threads may have switched) is never
        // listed, but skip it anyway.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            let me = std::process::id() as i32;
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if pid != me && pid > 1 {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Deleting the name drops the namespace once nothing else holds it; its veth ends are
        // destroyed with it (and their peers in the other namespace with them).
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            // Never panic in drop: this may run while unwinding from a failed assertion.
            eprintln!("warning: cannot delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Two namespaces linked by a veth pair (returned by [`veth_pair`]).
#[derive(Debug, Clone)]
pub struct Veth {
    /// Interface name inside namespace `a`.
    pub if_a: String,
    /// Interface name inside namespace `b`.
    pub if_b: String,
    pub v4_a: Ipv4Addr,
    pub v4_b: Ipv4Addr,
    pub v6_a: Ipv6Addr,
    pub v6_b: Ipv6Addr,
}

/// Links namespaces `a` and `b` with a veth pair: `v4_a`/24 and `v6_a`/64 on a's end,
/// `v4_b`/24 and `v6_b`/64 on b's end, both up.
///
/// The pair is created directly inside `a` (`ip -n a link add ... peer ... netns b`), so its
/// interface names never touch the root namespace and cannot clash with other tests. IPv6
/// addresses are added with `nodad`: without it they stay "tentative" for a second or two
/// and bind/connect fail with EADDRNOTAVAIL.
pub fn veth_pair(
    a: &Netns,
    b: &Netns,
    v4_a: Ipv4Addr,
    v4_b: Ipv4Addr,
    v6_a: Ipv6Addr,
    v6_b: Ipv6Addr,
) -> Result<Veth> {
    let n = LINK_COUNTER.fetch_add(1, Ordering::Relaxed);
    // IFNAMSIZ is 16 including the NUL: keep names short.
    let if_a = format!("nwv{n}a");
    let if_b = format!("nwv{n}b");
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        &if_a,
        "type",
        "veth",
        "peer",
        "name",
        &if_b,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, v4, v6) in [(a, &if_a, v4_a, v6_a), (b, &if_b, v4_b, v6_b)] {
        ip(&[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            ifname,
        ])?;
        ip(&[
            "-n",
            ns.name(),
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ])?;
        ip(&["-n", ns.name(), "link", "set", ifname, "up"])?;
    }
    Ok(Veth {
        if_a,
        if_b,
        v4_a,
        v4_b,
        v6_a,
        v6_b,
    })
}

/// Picks the `X` of `10.231.X.0/24` and `fd00:231:X::/64` for a new link: distinct for every
/// link of this process (up to 250 of them), offset by the pid so that two test processes
/// running at once do not even use the same numbers (their namespaces are separate anyway).
fn next_subnet() -> u8 {
    let n = SUBNET_COUNTER.fetch_add(1, Ordering::Relaxed) + std::process::id();
    (n % 250) as u8 + 1
}

/// The usual test network: a "client" and a "server" namespace joined by one veth pair.
///
/// Addresses: client `10.231.X.1` / `fd00:231:X::1`, server `10.231.X.2` / `fd00:231:X::2`.
/// Field order matters for drop: the namespaces go last, taking the veth with them.
#[derive(Debug)]
pub struct TestNet {
    pub veth: Veth,
    pub client: Netns,
    pub server: Netns,
}

impl TestNet {
    /// Creates `nwt-<pid>-<tag>c-N` and `nwt-<pid>-<tag>s-N` and links them.
    pub fn new(tag: &str) -> Result<TestNet> {
        let client = Netns::new(&format!("{tag}c"))?;
        let server = Netns::new(&format!("{tag}s"))?;
        let x = next_subnet();
        let veth = veth_pair(
            &client,
            &server,
            Ipv4Addr::new(10, 231, x, 1),
            Ipv4Addr::new(10, 231, x, 2),
            Ipv6Addr::new(0xfd00, 0x231, x.into(), 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0x231, x.into(), 0, 0, 0, 0, 2),
        )
        .with_context(|| format!("veth between {} and {}", client.name(), server.name()))?;
        Ok(TestNet {
            veth,
            client,
            server,
        })
    }

    pub fn client_v4(&self) -> Ipv4Addr {
        self.veth.v4_a
    }
    pub fn server_v4(&self) -> Ipv4Addr {
        self.veth.v4_b
    }
    pub fn client_v6(&self) -> Ipv6Addr {
        self.veth.v6_a
    }
    pub fn server_v6(&self) -> Ipv6Addr {
        self.veth.v6_b
    }
}

/// Opens `/run/netns/<name>` (in the caller's thread, any namespace) for a later setns.
fn open_ns(ns: &Netns) -> Result<File> {
    File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))
}

/// Switches the current thread into the namespace behind `fd`. Only ever called on a thread
/// this module spawned for the purpose, which ends after the closure.
fn enter(fd: &File, name: &str) -> Result<()> {
    // SAFETY: fd is a valid open descriptor for the lifetime of the call.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread switched into `ns` and returns its result; blocks until done.
///
/// `f` may borrow from the caller (scoped thread). Err means the thread could not enter the
/// namespace; a panic in `f` (a failed assertion) is propagated as that same panic.
pub fn in_netns<T, F>(ns: &Netns, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = open_ns(ns)?;
    let name = ns.name();
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn_scoped(s, move || -> Result<T> {
                enter(&fd, name)?;
                drop(fd);
                Ok(f())
            })
            .context("spawn thread")?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A thread running inside a namespace (from [`spawn_in_netns`]).
#[derive(Debug)]
pub struct NetnsThread<T> {
    handle: thread::JoinHandle<Result<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the thread. Err if it could not enter the namespace; a panic in the closure
    /// is propagated as that same panic.
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Like [`in_netns`] but does not wait: for the side of a conversation (a server) that must
/// run while the caller does something else. Bound the closure's own waits (see
/// [`crate::tcp`]) so that `join` cannot hang.
pub fn spawn_in_netns<T, F>(ns: &Netns, f: F) -> Result<NetnsThread<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let fd = open_ns(ns)?;
    let name = ns.name().to_owned();
    let handle = thread::Builder::new()
        .name(format!("in-{name}"))
        .spawn(move || -> Result<T> {
            enter(&fd, &name)?;
            drop(fd);
            Ok(f())
        })
        .context("spawn thread")?;
    Ok(NetnsThread { handle })
}

/// The network namespace inode of the calling thread (`/proc/thread-self/ns/net`).
pub fn current_thread_netns() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat /proc/thread-self/ns/net")?
        .ino())
}
