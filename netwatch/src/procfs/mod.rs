//! What procfs knows that the tracepoints do not: the kernel's own TCP counters (sockets it
//! dropped or refused without a state change to see) and the settings that set the limits.
//! Both are per network namespace, so both can be read for a namespace other than ours; the
//! parsing is kept apart from the reading so it is tested without root.

pub mod conntrack;
mod netns;
mod netstat;
mod sysctl;

pub use netstat::{read_netstat, Netstat};
pub use sysctl::read_sysctls;
#[cfg(test)]
use sysctl::Sysctls;

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    #[test]
    fn own_namespace_has_the_timewait_and_listen_counters() {
        let n = read_netstat(None).unwrap();
        for name in ["TW", "TWKilled", "ListenOverflows", "ListenDrops"] {
            assert!(n.get("TcpExt", name).is_some(), "TcpExt {name} missing");
        }
        for name in ["ActiveOpens", "AttemptFails", "CurrEstab", "OutRsts"] {
            assert!(n.get("Tcp", name).is_some(), "Tcp {name} missing");
        }
        let s = read_sysctls(None);
        assert!(s.tcp_fin_timeout.is_some());
        assert!(s.ip_local_port_range.is_some());
        assert!(s.somaxconn.is_some());
        assert_eq!(s.tcp_tw_recycle, None, "gone since Linux 4.12");
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let path = Path::new("/run/netns/netwatch-procfs-no-such-ns");
        let err = format!("{:#}", read_netstat(Some(path)).unwrap_err());
        assert!(
            err.contains("netwatch-procfs-no-such-ns") && err.contains("no such namespace"),
            "{err}"
        );
        assert_eq!(read_sysctls(Some(path)), Sysctls::default());
    }

    /// Tests that make a network namespace. They skip with a reason when not root, except
    /// under CI, where skipping would hide a broken runner.
    mod live {
        use super::*;

        fn root(test: &str) -> bool {
            crate::testing::root(test, "ip netns add, setns")
        }

        /// A namespace of our own, deleted on drop so that a failed assertion leaves nothing.
        struct Netns(String);

        impl Netns {
            fn create(tag: &str) -> Self {
                let name = format!("nwprocfs-{}-{tag}", std::process::id());
                // A namespace left by an earlier run that was killed.
                let _ = Command::new("ip").args(["netns", "delete", &name]).output();
                let ns = Self(name);
                ns.run(&["ip", "netns", "add", &ns.0]);
                ns.run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
                ns
            }

            fn path(&self) -> PathBuf {
                PathBuf::from(format!("/run/netns/{}", self.0))
            }

            /// Runs a command and returns whether it succeeded.
            fn try_exec(&self, args: &[&str]) -> bool {
                Command::new("ip")
                    .args(["netns", "exec", &self.0])
                    .args(args)
                    .output()
                    .expect("run ip netns exec")
                    .status
                    .success()
            }

            fn run(&self, args: &[&str]) {
                let out = Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &self.0])
                    .output();
            }
        }

        #[test]
        fn sysctls_are_read_in_the_namespace_asked_for() {
            if !root("sysctls_are_read_in_the_namespace_asked_for") {
                return;
            }
            let ns = Netns::create("sysctl");
            let ours = read_sysctls(None).tcp_fin_timeout;
            let value = if ours == Some(7) { 8 } else { 7 };
            let setting = format!("net.ipv4.tcp_fin_timeout={value}");
            assert!(ns.try_exec(&["sysctl", "-q", "-w", &setting]));

            let theirs = read_sysctls(Some(&ns.path()));
            assert_eq!(theirs.tcp_fin_timeout, Some(value));
            assert!(theirs
                .as_pairs()
                .contains(&("net.ipv4.tcp_fin_timeout", value.to_string())));
            assert!(theirs.somaxconn.is_some());
            let ours_after = read_sysctls(None).tcp_fin_timeout;
            assert!(ours_after.is_some());
            assert_ne!(ours_after, Some(value), "the namespace's setting leaked");
        }

        #[test]
        fn counters_are_read_in_the_namespace_asked_for() {
            if !root("counters_are_read_in_the_namespace_asked_for") {
                return;
            }
            let ns = Netns::create("counters");
            let theirs_before = read_netstat(Some(&ns.path())).unwrap();
            let ours_before = read_netstat(None).unwrap();
            // A new namespace counts from zero; ours has seen traffic since boot.
            assert_eq!(theirs_before.get("Tcp", "AttemptFails"), Some(0));

            // Refused connects in there, an accepted connection here: each side must see its
            // own only. Ours carries others' traffic too, so only "at least" holds for ours.
            for _ in 0..3 {
                let connected = ns.try_exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/1"]);
                assert!(!connected, "something listens on port 1 in a new namespace");
            }
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let _server = listener.accept().unwrap();

            let theirs = read_netstat(Some(&ns.path())).unwrap();
            let ours = read_netstat(None).unwrap();
            assert_eq!(theirs.delta(&theirs_before, "Tcp", "AttemptFails"), Some(3));
            let resets = theirs.delta(&theirs_before, "Tcp", "OutRsts").unwrap();
            assert!(resets >= 3, "{resets} resets sent for 3 refused connects");
            assert_eq!(theirs.delta(&theirs_before, "Tcp", "PassiveOpens"), Some(0));
            let accepted = ours.delta(&ours_before, "Tcp", "PassiveOpens").unwrap();
            assert!(accepted >= 1, "our accepted connection was not counted");
        }
    }
}
