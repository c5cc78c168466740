//! A cgroup v2 directory named like a container runtime's scope, for attribution tests:
//! created under a test slice of the cgroup v2 mount (found in /proc/self/mountinfo: hybrid
//! hosts mount it at /sys/fs/cgroup/unified), a process started inside it, and on drop
//! (failures included) the process killed and the directories removed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Where cgroup v2 is mounted.
pub fn v2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2")
                .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system mounted (see /proc/self/mountinfo)")
}

/// `<mount>/netwatch-test-<pid>.slice/<scope>` and the process started in it.
pub struct Scope {
    slice: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Scope {
    /// Creates the scope directory (e.g. `docker-<64 hex>.scope`).
    pub fn new(scope: &str) -> Result<Scope> {
        let slice = v2_mount()?.join(format!("netwatch-test-{}.slice", std::process::id()));
        let dir = slice.join(scope);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Scope {
            slice,
            dir,
            child: None,
        })
    }

    /// Runs `sh -c SCRIPT` inside the scope: the shell moves itself in before it runs the
    /// script, so everything the script does (and execs) belongs to the scope.
    pub fn spawn(&mut self, script: &str) -> Result<()> {
        let procs = self.dir.join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > '{}' && {script}", procs.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting sh in the scope")?;
        self.child = Some(child);
        Ok(())
    }

    /// The cgroup id netwatch reports: the inode of the directory.
    pub fn id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(&self.dir)?.ino())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A cgroup can be removed once its last process is gone (reaped): bounded retries.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && self.dir.exists() {
            if Instant::now() >= deadline {
                eprintln!("warning: could not remove {}", self.dir.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.slice);
    }
}
