//! A directory of a test's own under the system's temporary directory, removed on drop
//! (test failure included) unless `NETWATCH_TEST_KEEP` is set, to look at what a test left.

use std::path::PathBuf;

use anyhow::{Context, Result};

pub struct TempDir(PathBuf);

impl TempDir {
    /// `nwt-<group>-<pid>-<tag>`, emptied first.
    pub fn new(group: &str, tag: &str) -> Result<Self> {
        let d = std::env::temp_dir().join(format!("nwt-{group}-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        Ok(Self(d))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NETWATCH_TEST_KEEP").is_some_and(|v| !v.is_empty()) {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
