//! Which process holds a socket, found the way `ss -p` finds it: every `/proc/PID/fd/N` of a
//! socket is a symlink to `socket:[INODE]`. Kernel events cannot tell this (most transitions
//! run in softirq context, where the current task is whoever was interrupted), and a socket
//! that sits in CLOSE_WAIT for hours is exactly the one whose owner the on-call engineer wants.
//!
//! Socket inodes come from one sockfs for the whole machine, so the map is valid for sockets
//! of every network namespace; it covers the processes visible in this `/proc`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A process that holds a socket open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm`; empty when the process ended before it could be read.
    pub comm: String,
}

/// Socket inode -> a process holding it, from one scan of `/proc/*/fd`.
///
/// Processes that end during the scan, or whose descriptors this process may not read, are
/// skipped: the map is best effort and never an error. A socket shared by several processes
/// (inherited over fork, passed over a unix socket) maps to the one met first, which is the
/// lowest pid, usually the parent that created it. The work is one `readdir` per process and
/// one `readlink` per descriptor; `comm` is read only for processes holding sockets.
pub fn socket_owners() -> HashMap<u64, Owner> {
    scan(Path::new("/proc"))
}

/// [`socket_owners`] over a `/proc`-like tree, so the walk is tested on a fake one.
pub(super) fn scan(proc_root: &Path) -> HashMap<u64, Owner> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let mut dir = entry.path();
        dir.push("fd");
        let Ok(fds) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str()) else {
                continue;
            };
            if let Entry::Vacant(slot) = owners.entry(inode) {
                let comm = comm.get_or_insert_with(|| read_comm(&entry.path()));
                slot.insert(Owner {
                    pid,
                    comm: comm.clone(),
                });
            }
        }
    }
    owners
}

/// The inode in a descriptor's link text `socket:[INODE]`; None for anything else.
pub(super) fn socket_inode(link: &OsStr) -> Option<u64> {
    let digits = link
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn read_comm(proc_dir: &Path) -> String {
    std::fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn reads_only_socket_links() {
        assert_eq!(socket_inode(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(OsStr::new("socket:[]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[12a]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[+1]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[1")), None);
        assert_eq!(socket_inode(OsStr::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(OsStr::new("anon_inode:[eventpoll]")), None);
        assert_eq!(socket_inode(OsStr::new("/dev/null")), None);
        assert_eq!(
            socket_inode(OsStr::new("socket:[99999999999999999999]")),
            None
        );
    }

    /// Removes the fake tree even when an assertion fails.
    struct TempTree(PathBuf);

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn scans_a_fake_proc() {
        let root = std::env::temp_dir().join(format!("nwcensus-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let tree = TempTree(root.clone());
        let proc_with = |pid: &str, comm: Option<&str>, links: &[(&str, &str)]| {
            let fd = root.join(pid).join("fd");
            std::fs::create_dir_all(&fd).unwrap();
            if let Some(comm) = comm {
                std::fs::write(root.join(pid).join("comm"), format!("{comm}\n")).unwrap();
            }
            for (n, target) in links {
                symlink(target, fd.join(n)).unwrap();
            }
        };
        proc_with(
            "7",
            Some("nginx"),
            &[("0", "/dev/null"), ("3", "socket:[100]")],
        );
        // A worker sharing its parent's listener, plus a socket of its own.
        proc_with(
            "8",
            Some("nginx"),
            &[("3", "socket:[100]"), ("4", "socket:[101]")],
        );
        // Ended before its comm was read.
        proc_with("9", None, &[("5", "socket:[102]")]);
        proc_with("self", Some("x"), &[("6", "socket:[103]")]);
        std::fs::create_dir_all(root.join("10")).unwrap(); // no fd directory: skipped
        std::fs::write(root.join("uptime"), "1 1\n").unwrap();

        let owners = scan(&root);
        let owner = |pid: u32, comm: &str| Owner {
            pid,
            comm: comm.into(),
        };
        assert_eq!(owners.len(), 3, "{owners:?}");
        assert_eq!(owners[&101], owner(8, "nginx"));
        assert_eq!(owners[&102], owner(9, ""));
        // Order of readdir on a plain directory is not pid order: either nginx may win.
        assert!([7, 8].contains(&owners[&100].pid));
        assert!(!owners.contains_key(&103));
        drop(tree);
        assert!(!root.exists());
    }

    #[test]
    fn a_missing_proc_gives_an_empty_map() {
        assert!(scan(Path::new("/nonexistent/netwatch-proc")).is_empty());
    }
}
