//! The settings that decide whether a TCP incident is a limit being hit: how many timewait
//! sockets may exist, how long orphans linger, how deep accept queues are, how full conntrack
//! may get. Findings compare the counters against these, and reports print them, so that a
//! reader of a saved trace knows the limits the machine ran with.

use std::path::Path;

use super::netns;

/// `/proc/sys/net` answers for the network namespace of the task that opens the file, so a
/// thread that entered another namespace reads that namespace's settings here.
const PROC_SYS: &str = "/proc/sys";

/// A setting's text as the kernel writes it, and back for reports.
trait Value: Sized {
    fn parse(text: &str) -> Option<Self>;
    fn render(&self) -> String;
}

impl Value for u32 {
    fn parse(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }

    fn render(&self) -> String {
        self.to_string()
    }
}

/// `ip_local_port_range` is two numbers separated by a tab.
impl Value for (u16, u16) {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let range = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        parts.next().is_none().then_some(range)
    }

    fn render(&self) -> String {
        format!("{} {}", self.0, self.1)
    }
}

/// Reads the setting `name` (dotted, as `sysctl` spells it) under `root`; None when the file
/// is absent (an older or newer kernel, conntrack not loaded) or does not hold a `T`.
fn read_value<T: Value>(root: &Path, name: &str) -> Option<T> {
    let text = std::fs::read_to_string(root.join(name.replace('.', "/"))).ok()?;
    T::parse(&text)
}

/// One list of fields and sysctl names, so the struct, its reading and its report cannot drift
/// apart.
macro_rules! sysctls {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty = $name:literal,)*) => {
        /// Network settings of one namespace; each is None when absent or unreadable.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Sysctls {
            $($(#[doc = $doc])* pub $field: Option<$ty>,)*
        }

        impl Sysctls {
            fn read_from(root: &Path) -> Self {
                Self { $($field: read_value(root, $name),)* }
            }

            /// `(sysctl name, value)` in a fixed order, for reports; absent settings are left
            /// out rather than printed empty.
            pub fn as_pairs(&self) -> Vec<(&'static str, String)> {
                let mut pairs = Vec::new();
                $(if let Some(value) = &self.$field {
                    pairs.push(($name, Value::render(value)));
                })*
                pairs
            }
        }
    };
}

sysctls! {
    /// Past this many timewait sockets new ones are destroyed at once (TCPTimeWaitOverflow),
    /// so the TIME_WAIT count flattens at this number.
    tcp_max_tw_buckets: u32 = "net.ipv4.tcp_max_tw_buckets",
    /// Ephemeral ports for connect(): its width bounds the connections to one destination
    /// while the closed ones sit in TIME_WAIT.
    ip_local_port_range: (u16, u16) = "net.ipv4.ip_local_port_range",
    /// Caps every listen() backlog: the accept queue beyond which SYNs are dropped
    /// (ListenOverflows).
    somaxconn: u32 = "net.core.somaxconn",
    /// With SYN cookies off, SYNs from unknown peers are dropped once the SYN_RECV queue
    /// passes three quarters of this.
    tcp_max_syn_backlog: u32 = "net.ipv4.tcp_max_syn_backlog",
    /// Timestamps are what PAWS checks and what TIME_WAIT reuse relies on; off, neither works.
    tcp_timestamps: u32 = "net.ipv4.tcp_timestamps",
    /// Whether connect() may take over a port still in TIME_WAIT (1 all, 2 loopback only).
    tcp_tw_reuse: u32 = "net.ipv4.tcp_tw_reuse",
    /// Removed in 4.12 because it broke clients behind NAT; present only on older kernels,
    /// where 1 explains PAWS rejections of NATed clients.
    tcp_tw_recycle: u32 = "net.ipv4.tcp_tw_recycle",
    /// Lifetime of an orphaned FIN_WAIT2 socket, seconds (not the TIME_WAIT length, which
    /// is fixed at 60 s).
    tcp_fin_timeout: u32 = "net.ipv4.tcp_fin_timeout",
    /// Whether a full SYN queue answers with cookies (1 when full, 2 always) or drops.
    tcp_syncookies: u32 = "net.ipv4.tcp_syncookies",
    /// SYN-ACK retransmissions before a SYN_RECV request is given up: how long it hangs.
    tcp_synack_retries: u32 = "net.ipv4.tcp_synack_retries",
    /// SYN retransmissions before connect() fails with ETIMEDOUT.
    tcp_syn_retries: u32 = "net.ipv4.tcp_syn_retries",
    /// At this many entries conntrack drops new flows ("nf_conntrack: table full").
    nf_conntrack_max: u32 = "net.netfilter.nf_conntrack_max",
    /// Entries now, to set against `nf_conntrack_max`.
    nf_conntrack_count: u32 = "net.netfilter.nf_conntrack_count",
    /// Hash buckets: far fewer than `nf_conntrack_max` means long chains and slow lookups.
    nf_conntrack_buckets: u32 = "net.netfilter.nf_conntrack_buckets",
    /// How long an idle established flow holds its entry, seconds (5 days by default).
    nf_conntrack_tcp_timeout_established: u32 =
        "net.netfilter.nf_conntrack_tcp_timeout_established",
    /// How long a closed flow holds its entry, seconds: TIME_WAIT churn fills the table.
    nf_conntrack_tcp_timeout_time_wait: u32 = "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
}

/// The settings of the network namespace at `netns` (`/run/netns/NAME`, `/proc/PID/ns/net`),
/// or of the calling thread's when None. It never fails, because a report is better with some
/// settings than with none; a namespace that cannot be entered gives all None, and
/// [`super::read_netstat`] of the same namespace says why.
pub fn read_sysctls(netns: Option<&Path>) -> Sysctls {
    netns::run_in(netns, || Sysctls::read_from(Path::new(PROC_SYS))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn values_parse_as_the_kernel_writes_them() {
        assert_eq!(<u32 as Value>::parse("7\n"), Some(7));
        assert_eq!(<u32 as Value>::parse("-1\n"), None);
        assert_eq!(<u32 as Value>::parse(""), None);
        assert_eq!(<u32 as Value>::parse("abc"), None);
        assert_eq!(
            <(u16, u16) as Value>::parse("32768\t60999\n"),
            Some((32768, 60999))
        );
        assert_eq!(<(u16, u16) as Value>::parse("32768\n"), None);
        assert_eq!(<(u16, u16) as Value>::parse("1 2 3"), None);
        assert_eq!(<(u16, u16) as Value>::parse("1 70000"), None);
        assert_eq!((1024u16, 65000u16).render(), "1024 65000");
    }

    /// A directory tree standing in for /proc/sys, removed even when the test fails.
    struct FakeProcSys(PathBuf);

    impl FakeProcSys {
        fn new(files: &[(&str, &str)]) -> Self {
            let root = std::env::temp_dir().join(format!(
                "netwatch-procfs-sysctl-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            let fake = Self(root);
            for (name, text) in files {
                let path = fake.0.join(name.replace('.', "/"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            fake
        }
    }

    impl Drop for FakeProcSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn absent_or_unreadable_settings_are_none_and_left_out_of_reports() {
        let fake = FakeProcSys::new(&[
            ("net.ipv4.tcp_fin_timeout", "7\n"),
            ("net.ipv4.ip_local_port_range", "1024\t65000\n"),
            ("net.core.somaxconn", "garbage\n"),
            ("net.netfilter.nf_conntrack_max", "262144\n"),
            ("net.ipv4.tcp_max_tw_buckets", "262144\n"),
        ]);
        let s = Sysctls::read_from(&fake.0);
        assert_eq!(s.tcp_fin_timeout, Some(7));
        assert_eq!(s.ip_local_port_range, Some((1024, 65000)));
        assert_eq!(s.somaxconn, None);
        assert_eq!(s.tcp_tw_recycle, None);
        assert_eq!(s.nf_conntrack_count, None);
        assert_eq!(
            s.as_pairs(),
            [
                ("net.ipv4.tcp_max_tw_buckets", "262144".to_string()),
                ("net.ipv4.ip_local_port_range", "1024 65000".to_string()),
                ("net.ipv4.tcp_fin_timeout", "7".to_string()),
                ("net.netfilter.nf_conntrack_max", "262144".to_string()),
            ]
        );
        assert_eq!(Sysctls::default().as_pairs(), []);
    }
}
