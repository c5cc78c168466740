//! Container attribution: the kernel records each socket's cgroup id (the inode of its cgroup
//! v2 directory); this finds that directory under /sys/fs/cgroup and reads from its path what
//! the node knows: the container id as docker, containerd, CRI-O and podman name their
//! scopes, the Kubernetes pod (its UID in the path; its name and namespace from kubelet's
//! /var/log/pods where that exists), or else the systemd unit. No container runtime or
//! Kubernetes API is asked: the paths are the node's own record.
//!
//! [`parse`] and [`parse_pod_log_dir`] are pure; [`Resolver`] is the thin part that reads
//! the file system (its roots injectable, so it is tested on a temporary tree).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::core::fasthash::IdMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which runtime named the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A kubepods path made by the cgroupfs driver: the id is there, not the runtime.
    Kubernetes,
}

/// What a cgroup path says about who owns the sockets in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Container {
        runtime: Runtime,
        /// The full id (64 hex digits).
        id: String,
        /// The Kubernetes pod UID, when the path is under kubepods.
        pod_uid: Option<String>,
    },
    /// A systemd unit (`nginx.service`) outside any container.
    Unit(String),
}

/// Characters of a container id shown, as `docker ps` shortens them.
const SHORT_ID: usize = 12;

impl Owner {
    /// The short name shown everywhere: the container id's first 12 digits, or the unit.
    pub fn name(&self) -> &str {
        match self {
            Owner::Container { id, .. } => &id[..id.len().min(SHORT_ID)],
            Owner::Unit(u) => u,
        }
    }

    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Owner::Container { pod_uid, .. } => pod_uid.as_deref(),
            Owner::Unit(_) => None,
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The id in one path component, with the runtime its name shows.
fn container_in(component: &str) -> Option<(Runtime, &str)> {
    if is_container_id(component) {
        return Some((Runtime::Kubernetes, component));
    }
    let stem = component.strip_suffix(".scope")?;
    [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, rt)| {
        let id = stem.strip_prefix(prefix)?;
        is_container_id(id).then_some((rt, id))
    })
}

/// The pod UID in a kubepods component: `kubepods-burstable-pod<uid with _>.slice`
/// (systemd driver) or `pod<uid>` (cgroupfs driver).
fn pod_in(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_owned(),
    };
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// Who owns a cgroup, from its path (relative to the cgroup v2 mount, e.g.
/// `/system.slice/docker-<id>.scope`): the innermost container scope, else the innermost
/// systemd service; `None` for anything else (the root, a user's session scope).
pub fn parse(path: &str) -> Option<Owner> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kube = components.iter().any(|c| c.starts_with("kubepods"));
    let pod_uid = kube
        .then(|| components.iter().find_map(|c| pod_in(c)))
        .flatten();
    if let Some((runtime, id)) = components.iter().rev().find_map(|c| container_in(c)) {
        // A bare 64-hex directory means a container only under docker's or kubepods' tree.
        let bare_ok = kube || components.contains(&"docker");
        let runtime = match runtime {
            Runtime::Kubernetes if components.contains(&"docker") && !kube => Runtime::Docker,
            rt => rt,
        };
        if runtime != Runtime::Kubernetes || bare_ok {
            return Some(Owner::Container {
                runtime,
                id: id.to_owned(),
                pod_uid,
            });
        }
    }
    components
        .iter()
        .rev()
        .find(|c| c.ends_with(".service"))
        .map(|u| Owner::Unit((*u).to_owned()))
}

/// Where cgroup v2 is mounted, from the text of /proc/self/mountinfo (the mount point is
/// the fifth field; the file system type follows the ` - ` separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        (fs.split_whitespace().next()? == "cgroup2")
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The cgroup v2 path in the text of /proc/PID/cgroup (its `0::/path` line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A pod as kubelet names its log directory: `<namespace>_<pod name>_<pod uid>` (neither
/// names may hold `_`, being DNS labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

pub fn parse_pod_log_dir(dir: &str) -> Option<PodName> {
    let mut parts = dir.splitn(3, '_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || name.is_empty() || uid.len() != 36 {
        return None;
    }
    Some(PodName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
    })
}

/// A cgroup as resolved: its path and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: String,
    pub owner: Option<Owner>,
    /// Where the owner is a Kubernetes pod that kubelet lists.
    pub pod: Option<PodName>,
    /// The owner's [`Owner::name`], shared by every record that shows it.
    pub container: Option<Arc<str>>,
}

/// The most directories one scan visits, and how deep: bounds the cost on a node with a
/// pathological cgroup tree.
const MAX_DIRS: usize = 100_000;
const MAX_DEPTH: usize = 32;

/// A cgroup id not found is looked for again after this long, not on every record.
const RESCAN_AFTER: Duration = Duration::from_secs(5);

/// cgroup id -> path, from a walk of the cgroup v2 tree, kept and renewed when an unknown id
/// appears (at most every [`RESCAN_AFTER`]).
pub struct Resolver {
    root: PathBuf,
    pods_dir: PathBuf,
    paths: IdMap<u64, String>,
    pods: HashMap<String, PodName>,
    last_scan: Option<Instant>,
    /// Asked for every record the trace shows (`container`): keyed by the kernel's
    /// cgroup ids with the cheap hasher, SipHash was 6 % of a live view's CPU.
    resolved: IdMap<u64, Option<Resolved>>,
}

impl Resolver {
    /// Over the system's cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    /// hybrid host: /proc/self/mountinfo says) and kubelet's pod log directory.
    pub fn system() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = cgroup2_mount(&mountinfo).unwrap_or_else(|| "/sys/fs/cgroup".into());
        Self::new(root, "/var/log/pods")
    }

    pub fn new(root: impl Into<PathBuf>, pods_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            pods_dir: pods_dir.into(),
            paths: IdMap::default(),
            pods: HashMap::new(),
            last_scan: None,
            resolved: IdMap::default(),
        }
    }

    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.last_scan = Some(Instant::now());
        self.paths.clear();
        self.resolved.clear();
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(self.root.clone(), "/".into(), 0)];
        let mut visited = 0;
        while let Some((dir, rel, depth)) = stack.pop() {
            visited += 1;
            if visited > MAX_DIRS {
                break;
            }
            if let Ok(m) = std::fs::metadata(&dir) {
                self.paths.insert(m.ino(), rel.clone());
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child, depth + 1));
                }
            }
        }
        self.pods = std::fs::read_dir(&self.pods_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| parse_pod_log_dir(&e.file_name().to_string_lossy()))
            .map(|p| (p.uid.clone(), p))
            .collect();
    }

    /// The cgroup with this id; `None` for 0 (unknown) and for ids not (or no longer)
    /// in the tree.
    pub fn resolve(&mut self, id: u64) -> Option<&Resolved> {
        if id == 0 {
            return None;
        }
        let known = self.resolved.get(&id).is_some_and(Option::is_some);
        if !known && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_AFTER) {
            self.scan();
        }
        if !self.resolved.contains_key(&id) {
            let r = self.paths.get(&id).map(|path| {
                let owner = parse(path);
                let pod = owner
                    .as_ref()
                    .and_then(Owner::pod_uid)
                    .and_then(|uid| self.pods.get(uid).cloned());
                Resolved {
                    path: path.clone(),
                    container: owner.as_ref().map(|o| Arc::from(o.name())),
                    owner,
                    pod,
                }
            });
            self.resolved.insert(id, r);
        }
        self.resolved.get(&id)?.as_ref()
    }

    /// The cgroup id and container name of a process (for sockets that existed before
    /// the trace, whose records have not told their cgroup): from /proc/PID/cgroup and the
    /// inode of that directory.
    pub fn of_process(&mut self, pid: u32) -> (u64, Option<Arc<str>>) {
        use std::os::unix::fs::MetadataExt;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let Some(path) = v2_path(&text) else {
            return (0, None);
        };
        let dir = self.root.join(path.trim_start_matches('/'));
        match std::fs::metadata(dir) {
            Ok(m) => (m.ino(), self.container(m.ino())),
            Err(_) => (0, None),
        }
    }

    /// The container (or unit) name of a cgroup id, where it has one.
    pub fn container(&mut self, id: u64) -> Option<Arc<str>> {
        self.resolve(id)?.container.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "5f0d5a8c-3b1e-4c7a-9d2e-1a2b3c4d5e6f";

    fn container(runtime: Runtime, pod: Option<&str>) -> Option<Owner> {
        Some(Owner::Container {
            runtime,
            id: ID.into(),
            pod_uid: pod.map(str::to_owned),
        })
    }

    #[test]
    fn container_scopes_of_each_runtime() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope"),
                container(Runtime::Docker, None),
            ),
            (format!("/docker/{ID}"), container(Runtime::Docker, None)),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                container(Runtime::Podman, None),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/\
                     cri-containerd-{ID}.scope"
                ),
                container(Runtime::Containerd, Some(UID)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                container(Runtime::Crio, Some(UID)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                container(Runtime::Kubernetes, Some(UID)),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
        assert_eq!(
            parse(&format!("/docker/{ID}")).unwrap().name(),
            "0123456789ab"
        );
    }

    #[test]
    fn otherwise_the_innermost_service() {
        assert_eq!(
            parse("/system.slice/nginx.service"),
            Some(Owner::Unit("nginx.service".into()))
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            Some(Owner::Unit("foo.service".into()))
        );
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/user.slice/user-1000.slice/session-3.scope"), None);
        // Look-alikes are not containers.
        assert_eq!(parse("/system.slice/docker-abc.scope"), None);
        assert_eq!(parse(&format!("/some/{ID}")), None);
        assert_eq!(
            parse(&format!("/netwatch-test.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(unified), Some("/sys/fs/cgroup".into()));
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn the_v2_line_of_proc_cgroup() {
        let text = "1:name=systemd:/init.scope\n0::/system.slice/nginx.service\n";
        assert_eq!(v2_path(text), Some("/system.slice/nginx.service"));
        assert_eq!(v2_path("3:cpu:/x\n"), None);
    }

    #[test]
    fn kubelet_log_directories_name_pods() {
        assert_eq!(
            parse_pod_log_dir(&format!("kube-system_coredns-5d78c9869d-abcde_{UID}")),
            Some(PodName {
                namespace: "kube-system".into(),
                name: "coredns-5d78c9869d-abcde".into(),
                uid: UID.into(),
            })
        );
        assert_eq!(parse_pod_log_dir("junk"), None);
        assert_eq!(parse_pod_log_dir("a_b_c"), None);
    }

    #[test]
    fn resolves_ids_from_a_tree_and_rescans_for_new_ones() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("netwatch-cg-{}", std::process::id()));
        let pods = root.join("pods");
        let cg = root.join("cg");
        let scope = cg.join(format!(
            "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::create_dir_all(pods.join(format!("default_web-0_{UID}"))).unwrap();
        let id = std::fs::metadata(&scope).unwrap().ino();
        let mut r = Resolver::new(&cg, &pods);
        let got = r.resolve(id).cloned().unwrap();
        assert!(got.path.ends_with(".scope") && got.path.starts_with("/kubepods.slice/"));
        assert_eq!(got.owner.unwrap().name(), "0123456789ab");
        assert_eq!(got.pod.unwrap().name, "web-0");
        assert_eq!(r.container(id).as_deref(), Some("0123456789ab"));
        assert!(r.resolve(0).is_none());
        assert!(r.resolve(u64::MAX).is_none(), "unknown id");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
