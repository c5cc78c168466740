//! Integration-test harness for netwatch: real eBPF, real TCP, between network namespaces.
//!
//! These tests need root (loading eBPF programs, creating namespaces and veth links). They
//! run through `sudo cargo xtask test`, which builds `netwatch` and points `NETWATCH_BIN` at
//! it. Each test builds its own little network: two namespaces ("client" and "server")
//! joined by a veth pair, with addresses that exist only inside them, so the machine's own
//! traffic (there is always some) never reaches the assertions, and no packet leaves the
//! test namespaces.
//!
//! The pieces:
//! - [`privilege`]: skip (locally) or fail (under CI) when not root.
//! - [`netns`]: namespace guards, veth links, running code inside a namespace.
//! - [`tcp`]: small blocking-socket helpers with bounded waits.
//! - [`tracer`]: runs `netwatch trace`, waits until it is attached, stops it, reads its output.
//! - [`records`]: typed, validated view of the JSON Lines records and selection helpers.
//! - [`router`]: clients behind a (masquerading) router namespace in front of a server.
//! - [`sock`]: bind-before-connect, listen backlogs, TCP timestamps, thread comm (libc).
//! - [`pty`]: a pseudo-terminal, for the dashboard as an engineer's terminal shows it.
//! - [`alerts`]: netwatch's alert records and their ground truth in /proc/net/netstat.
//! - [`tmux`]: a program in a real terminal of a given size: keys in, screen text out.
//! - [`tempdir`]: a directory of the test's own, removed on drop.
//! - [`browser`]: headless Chromium for the HTML report: its DOM, its screenshots.
//! - [`prom`]: a real Prometheus server per test, and a minimal HTTP GET.
//! - [`cgroup`]: a cgroup v2 scope named like a container's, with a process in it.
//! - [`expected`]: the kernel's `inet_sock_set_state` sequences the tests expect, in one place.

pub mod alerts;
pub mod browser;
pub mod cgroup;
pub mod expected;
pub mod netns;
pub mod privilege;
pub mod prom;
pub mod pty;
pub mod records;
pub mod router;
pub mod sock;
pub mod tcp;
pub mod tempdir;
pub mod tmux;
pub mod tracer;

pub use netns::{in_netns, spawn_in_netns, veth_pair, Netns, NetnsThread, TestNet, Veth};
pub use privilege::require_root;
pub use records::{transitions, Transition};
pub use tracer::{TraceOutput, Tracer};
