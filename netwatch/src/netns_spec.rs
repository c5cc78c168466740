//! `--netns NAME|PATH|INODE`, checked against what exists. A filter on a namespace that is not
//! one (an empty name, `/etc/passwd`, a mount namespace's file, an inode no namespace has)
//! traces nothing, silently, and exits 0: the user learns nothing was wrong but the answer.
//! So a path must be a network namespace file (on nsfs, and `NS_GET_NSTYPE` says
//! CLONE_NEWNET), and an inode must be a network namespace that exists now, as one of its
//! files shows (`/run/netns/*`, `/proc/*/ns/net`).
//!
//! The checks are pure functions over [`NsFile`]; the system is behind [`NsSystem`], so they
//! are tested without root or namespaces.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `f_type` of nsfs, the file system of namespace files (linux/magic.h).
pub const NSFS_MAGIC: i64 = 0x6e73_6673;

/// What the system says about a file given as a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsFile {
    /// `statfs(2)`'s `f_type` of the file system it is on.
    pub fs_type: i64,
    /// `NS_GET_NSTYPE` (a CLONE_NEW* flag); None when not asked (not on nsfs) or refused.
    pub ns_type: Option<i32>,
    pub inode: u64,
}

/// The system's namespaces, as far as `--netns` needs them.
pub trait NsSystem {
    /// Describes the file at `path` (without opening anything that is not on nsfs: a FIFO
    /// would block).
    fn inspect(&self, path: &Path) -> io::Result<NsFile>;
    /// Files that may name a network namespace: `/run/netns/*`, then `/proc/*/ns/net`.
    fn candidates(&self) -> Vec<PathBuf>;
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetnsError {
    #[error(
        "--netns needs a network namespace: a name from `ip netns list`, a path such as \
         /proc/PID/ns/net, or an inode number from `lsns -t net`"
    )]
    Empty,
    #[error(
        "network namespace `{spec}` not found at {} ({reason}); list them with `ip netns list`, \
         or give /proc/PID/ns/net or an inode number from `lsns -t net`", path.display()
    )]
    Missing {
        spec: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "--netns {}: not a namespace file (namespace files are on nsfs, e.g. /proc/PID/ns/net \
         or /run/netns/NAME)", path.display()
    )]
    NotNamespace { path: PathBuf },
    #[error(
        "--netns {}: a {kind} namespace, not a network namespace (use /proc/PID/ns/net)",
        path.display()
    )]
    OtherType { path: PathBuf, kind: &'static str },
    #[error("--netns {spec}: not an inode number (namespace inodes are 32-bit)")]
    InodeRange { spec: String },
    #[error(
        "--netns {inode}: no network namespace with this inode exists (none under /run/netns or \
         /proc/*/ns/net); `lsns -t net` lists them"
    )]
    NoSuchInode { inode: u32 },
}

/// A network namespace to trace: its inode (what the kernel's records carry) and a file to
/// enter it by, where one was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: Option<PathBuf>,
}

/// The name of a CLONE_NEW* namespace type.
fn type_name(ns_type: i32) -> &'static str {
    match ns_type {
        libc::CLONE_NEWNET => "network",
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "non-network",
    }
}

/// The inode of a network namespace file, or why `path` is not one.
pub fn check_file(path: &Path, file: &NsFile) -> Result<u32, NetnsError> {
    if file.fs_type != NSFS_MAGIC {
        return Err(NetnsError::NotNamespace {
            path: path.to_owned(),
        });
    }
    match file.ns_type {
        Some(libc::CLONE_NEWNET) => {}
        Some(other) => {
            return Err(NetnsError::OtherType {
                path: path.to_owned(),
                kind: type_name(other),
            })
        }
        None => {
            return Err(NetnsError::NotNamespace {
                path: path.to_owned(),
            })
        }
    }
    u32::try_from(file.inode).map_err(|_| NetnsError::NotNamespace {
        path: path.to_owned(),
    })
}

/// Resolves `--netns SPEC`: a name (in /run/netns), a path, or an inode number.
pub fn resolve(spec: &str, sys: &impl NsSystem) -> Result<Netns, NetnsError> {
    if spec.is_empty() {
        return Err(NetnsError::Empty);
    }
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        let inode = spec.parse::<u32>().map_err(|_| NetnsError::InodeRange {
            spec: spec.to_owned(),
        })?;
        let path = sys
            .candidates()
            .into_iter()
            .find(|p| sys.inspect(p).is_ok_and(|f| check_file(p, &f) == Ok(inode)))
            .ok_or(NetnsError::NoSuchInode { inode })?;
        return Ok(Netns {
            inode,
            path: Some(path),
        });
    }
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    };
    let file = sys.inspect(&path).map_err(|e| NetnsError::Missing {
        spec: spec.to_owned(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let inode = check_file(&path, &file)?;
    Ok(Netns {
        inode,
        path: Some(path),
    })
}

/// Every network namespace the system shows, one file to enter each by (a name under
/// `/run/netns` first, else a process's `/proc/PID/ns/net`), `own` left out, at most `cap`:
/// without `--netns` netwatch watches their counters and conntrack tables too, since an
/// incident in a container's namespace shows nowhere else.
pub fn discover(sys: &impl NsSystem, own: u32, cap: usize) -> Vec<Netns> {
    let mut seen = std::collections::HashSet::from([own]);
    let mut out = Vec::new();
    for path in sys.candidates() {
        if out.len() >= cap {
            break;
        }
        let Ok(file) = sys.inspect(&path) else {
            continue;
        };
        if let Ok(inode) = check_file(&path, &file) {
            if seen.insert(inode) {
                out.push(Netns {
                    inode,
                    path: Some(path),
                });
            }
        }
    }
    out
}

/// The running system.
pub struct System;

impl NsSystem for System {
    fn inspect(&self, path: &Path) -> io::Result<NsFile> {
        let mut c_path = path.as_os_str().as_bytes().to_vec();
        c_path.push(0);
        // SAFETY: statfs is plain old data that statfs(2) fills or leaves alone on failure.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out pointer.
        if unsafe { libc::statfs(c_path.as_ptr().cast(), &mut fs) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let fs_type = fs.f_type as i64;
        let inode = std::fs::metadata(path)?.ino();
        let ns_type = if fs_type == NSFS_MAGIC {
            let f = File::open(path)?;
            // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
            let t = unsafe { libc::ioctl(f.as_raw_fd(), libc::NS_GET_NSTYPE) };
            (t >= 0).then_some(t)
        } else {
            None
        };
        Ok(NsFile {
            fs_type,
            ns_type,
            inode,
        })
    }

    fn candidates(&self) -> Vec<PathBuf> {
        let named = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let procs = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
            .map(|e| e.path().join("ns/net"));
        named.chain(procs).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A system of a few files.
    #[derive(Default)]
    struct Fake(HashMap<PathBuf, NsFile>);

    impl Fake {
        fn with(mut self, path: &str, fs_type: i64, ns_type: Option<i32>, inode: u64) -> Self {
            self.0.insert(
                path.into(),
                NsFile {
                    fs_type,
                    ns_type,
                    inode,
                },
            );
            self
        }
    }

    impl NsSystem for Fake {
        fn inspect(&self, path: &Path) -> io::Result<NsFile> {
            self.0
                .get(path)
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }

        fn candidates(&self) -> Vec<PathBuf> {
            // As the system lists them: names under /run/netns first.
            let mut c: Vec<PathBuf> = self.0.keys().cloned().collect();
            c.sort_by_key(|p| (!p.starts_with("/run/netns"), p.clone()));
            c
        }
    }

    const EXT4: i64 = 0xef53;

    #[test]
    fn discovery_finds_each_namespace_once_by_its_name_first_and_is_bounded() {
        let sys = system()
            .with(
                "/proc/77/ns/net",
                NSFS_MAGIC,
                Some(libc::CLONE_NEWNET),
                4026532300,
            )
            .with(
                "/proc/78/ns/net",
                NSFS_MAGIC,
                Some(libc::CLONE_NEWNET),
                4026532999,
            );
        let found = discover(&sys, 4026531840, 10);
        let got: Vec<(u32, String)> = found
            .iter()
            .map(|n| (n.inode, n.path.as_ref().unwrap().display().to_string()))
            .collect();
        assert!(
            got.contains(&(4026532300, "/run/netns/blue".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(4026532999, "/proc/78/ns/net".into())),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|(i, _)| *i == 4026531840),
            "own namespace: {got:?}"
        );
        assert_eq!(got.iter().filter(|(i, _)| *i == 4026532300).count(), 1);
        assert_eq!(discover(&sys, 4026531840, 1).len(), 1);
    }

    fn system() -> Fake {
        Fake::default()
            .with(
                "/run/netns/blue",
                NSFS_MAGIC,
                Some(libc::CLONE_NEWNET),
                4026532300,
            )
            .with(
                "/proc/1/ns/net",
                NSFS_MAGIC,
                Some(libc::CLONE_NEWNET),
                4026531840,
            )
            .with(
                "/proc/1/ns/mnt",
                NSFS_MAGIC,
                Some(libc::CLONE_NEWNS),
                4026531841,
            )
            .with("/etc/passwd", EXT4, None, 4026532300)
    }

    #[test]
    fn network_namespaces_by_name_path_and_inode() {
        let sys = system();
        let blue = Netns {
            inode: 4026532300,
            path: Some("/run/netns/blue".into()),
        };
        assert_eq!(resolve("blue", &sys), Ok(blue.clone()));
        assert_eq!(resolve("/run/netns/blue", &sys), Ok(blue.clone()));
        assert_eq!(resolve("4026532300", &sys), Ok(blue));
        assert_eq!(resolve("4026531840", &sys).unwrap().inode, 4026531840);
    }

    #[test]
    fn what_is_not_a_network_namespace_is_refused() {
        let sys = system();
        assert_eq!(resolve("", &sys), Err(NetnsError::Empty));
        let e = resolve("/etc/passwd", &sys).unwrap_err();
        assert!(matches!(e, NetnsError::NotNamespace { .. }), "{e}");
        let e = resolve("/proc/1/ns/mnt", &sys).unwrap_err();
        assert!(e.to_string().contains("a mount namespace"), "{e}");
        let e = resolve("red", &sys).unwrap_err();
        assert!(e.to_string().contains("ip netns list"), "{e}");
        // No file of a network namespace has it (the ext4 file's inode does not count).
        assert_eq!(
            resolve("12345", &sys),
            Err(NetnsError::NoSuchInode { inode: 12345 })
        );
        assert_eq!(
            resolve("4026531841", &sys),
            Err(NetnsError::NoSuchInode { inode: 4026531841 })
        );
        assert!(matches!(
            resolve("99999999999", &sys),
            Err(NetnsError::InodeRange { .. })
        ));
        // nsfs but the kernel would not say its type: not taken on trust.
        let odd = Fake::default().with("/x", NSFS_MAGIC, None, 7);
        assert!(matches!(
            resolve("/x", &odd),
            Err(NetnsError::NotNamespace { .. })
        ));
    }

    #[test]
    fn this_process_namespace_passes_on_the_real_system() {
        let own = resolve("/proc/self/ns/net", &System).unwrap();
        assert!(own.inode > 0);
        assert!(resolve("/proc/self/ns/mnt", &System)
            .unwrap_err()
            .to_string()
            .contains("mount namespace"));
        assert!(matches!(
            resolve("/proc/self/status", &System),
            Err(NetnsError::NotNamespace { .. })
        ));
        assert_eq!(
            resolve(&own.inode.to_string(), &System).unwrap().inode,
            own.inode
        );
    }
}
