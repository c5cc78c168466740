//! Samples the kernel's own counters and settings of each traced namespace once per
//! interval, for the incident signals: what the tracepoints cannot see (a SYN the kernel
//! consumed on a full accept queue, a timewait socket never made) shows in these counters.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::core::signals::Environment;
use crate::procfs::{self, Netstat};

/// TcpExt counters whose increase the signals use.
const COUNTERS: &[&str] = &[
    "TCPTimeWaitOverflow",
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "PAWSActive",
    "PAWSEstab",
    "PAWSTimewait",
    "TSEcrRejected",
    "PAWSOldAck",
    "TWKilled",
    "TWRecycled",
    "TCPSynRetrans",
];

pub struct EnvSource {
    /// (namespace inode, file to enter it by; None for ours).
    spaces: Vec<(u32, Option<PathBuf>)>,
    last: HashMap<u32, Netstat>,
}

impl EnvSource {
    pub fn new(spaces: Vec<(u32, Option<PathBuf>)>) -> Self {
        let mut s = Self {
            spaces,
            last: HashMap::new(),
        };
        // The baseline, so the first interval reports what happened in it, not since boot.
        for (ns, path) in &s.spaces {
            if let Ok(n) = procfs::read_netstat(path.as_deref()) {
                s.last.insert(*ns, n);
            }
        }
        s
    }

    pub fn sample(&mut self) -> HashMap<u32, Environment> {
        let mut out = HashMap::new();
        for (ns, path) in &self.spaces {
            let mut env = Environment {
                sysctls: procfs::read_sysctls(path.as_deref())
                    .as_pairs()
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            if let Ok(now) = procfs::read_netstat(path.as_deref()) {
                if let Some(before) = self.last.get(ns) {
                    for &name in COUNTERS {
                        if let Some(d) = now.delta(before, "TcpExt", name) {
                            env.deltas.insert(name, d);
                        }
                    }
                }
                self.last.insert(*ns, now);
            }
            out.insert(*ns, env);
        }
        out
    }
}
