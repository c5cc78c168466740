//! Debian's kernel packages through apt, with a private apt state (sources, lists, cache) so
//! the machine's own apt configuration is read but never changed. The archive is the one this
//! machine already uses: its URI comes from the system's sources, never from this code.

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};

use crate::{
    say,
    util::{command, is_root, stdout_of},
};

/// The system's deb822 sources and the one-line list, where the archive URI is read from.
const SYSTEM_SOURCE_PARTS: &str = "/etc/apt/sources.list.d";
const SYSTEM_SOURCE_LIST: &str = "/etc/apt/sources.list";
/// Package indices change a few times a day; within this age they are reused, which keeps a
/// warm CI run off the network (an index download is ~40 MB).
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// One `deb` entry of an apt sources file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Parses deb822 (`.sources`) text: stanzas separated by blank lines, `#` comments. Only
/// enabled `deb` stanzas are returned, one per URI.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if line.starts_with([' ', '\t']) {
                // A continuation line (multi-line Signed-By keys, long lists).
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        let words = |k: &str| -> Vec<String> {
            get(k)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let enabled = get("enabled").is_none_or(|e| e.eq_ignore_ascii_case("yes"));
        if !enabled || !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in words("uris") {
            out.push(Source {
                uri,
                suites: words("suites"),
                components: words("components"),
                signed_by: get("signed-by").map(str::to_owned),
            });
        }
    }
    out
}

/// Parses one-line `sources.list` text: `deb [opts] URI suite component...`.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ").map(str::trim_start) else {
            continue;
        };
        let (opts, rest) = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').unwrap_or(("", r)),
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let signed_by = opts
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_owned);
        out.push(Source {
            uri: uri.to_owned(),
            suites: vec![suite.to_owned()],
            components: words.map(str::to_owned).collect(),
            signed_by,
        });
    }
    out
}

/// The Debian archive proper among the system's sources: an entry with `main` and a plain
/// release suite (no `-security`/`-updates`, whose archives do not carry every suite).
pub fn archive(sources: &[Source]) -> Option<&Source> {
    sources.iter().find(|s| {
        s.components.iter().any(|c| c == "main") && s.suites.iter().any(|x| !x.contains('-'))
    })
}

/// The private one-line sources file for `suites` of `archive`'s URI.
pub fn private_sources(archive: &Source, suites: &[&str]) -> String {
    let opts = archive
        .signed_by
        .as_deref()
        // An inline key block cannot go into a one-line entry; apt's keyring then applies.
        .filter(|k| k.starts_with('/'))
        .map(|k| format!("[signed-by={k}] "))
        .unwrap_or_default();
    suites
        .iter()
        .map(|s| format!("deb {opts}{} {s} main\n", archive.uri))
        .collect()
}

/// Orders names with embedded numbers numerically ("6.1.0-50" after "6.1.0-9"), which is
/// how Debian's kernel ABI numbers and versions in package names grow.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let ord = da.len().cmp(&db.len()).then(da.cmp(db));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

/// The newest package name in `apt-cache search` output.
pub fn newest_name(search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .max_by(|a, b| natural_cmp(a, b))
        .map(str::to_owned)
}

/// apt with its own sources, lists and cache under one directory.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Prepares the private state for `suites` of the system's archive.
    pub fn new(dir: &Path, suites: &[&str]) -> Result<Self> {
        let sources = system_sources()?;
        let archive = archive(&sources).with_context(|| {
            format!(
                "no Debian archive (a `deb` entry with component main and a release suite) in \
                 {SYSTEM_SOURCE_PARTS}/*.sources or {SYSTEM_SOURCE_LIST}: vm-test downloads the \
                 kernels from the archive this machine's apt uses; add one"
            )
        })?;
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("could not create {}", dir.join(sub).display()))?;
        }
        let list = private_sources(archive, suites);
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(&list) {
            fs::write(&path, &list)
                .with_context(|| format!("could not write {}", path.display()))?;
            // Other suites than the lists hold: force a refresh.
            let _ = fs::remove_file(dir.join("lists/updated"));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = command(program);
        for (k, v) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("sources.list.d")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{k}={}", v.display()));
        }
        // Only the amd64 package indices: no translations, no AppStream metadata. The binary
        // caches are named because Debian's container images turn them off (docker-clean),
        // which makes every apt-cache call re-read all four indices (~5 s each).
        cmd.args([
            "-o",
            "Dir::Cache::pkgcache=pkgcache.bin",
            "-o",
            "Dir::Cache::srcpkgcache=srcpkgcache.bin",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "APT::Architectures=amd64",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
        ]);
        if is_root() {
            // The unprivileged _apt user could not write into a root-owned cache directory.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    /// `apt-get update` unless the indices are fresh; stale ones are kept when the archive
    /// cannot be reached, so a machine with a warm cache still runs.
    pub fn update(&self) -> Result<()> {
        let stamp = self.dir.join("lists/updated");
        let age = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        let mut cmd = self.cmd("apt-get");
        cmd.args(["-q", "update"]);
        say!(
            "running  apt-get update (private state in {})",
            self.dir.display()
        );
        match stdout_of(&mut cmd, "apt-get update for the kernel suites") {
            Ok(_) => fs::write(&stamp, "")
                .with_context(|| format!("could not write {}", stamp.display())),
            Err(e) if age.is_some() => {
                say!("warning  {e:#}; using the indices of an earlier run");
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "check that the archive in {SYSTEM_SOURCE_PARTS} is reachable"
            ))),
        }
    }

    /// The newest package whose name matches the anchored regular expression.
    pub fn newest(&self, regex: &str) -> Result<String> {
        let mut cmd = self.cmd("apt-cache");
        cmd.args(["search", "--names-only", regex]);
        let out = stdout_of(&mut cmd, "searching the package index")?;
        newest_name(&out).with_context(|| {
            format!(
                "no package matches {regex} in the archive; it may have been renamed: adjust \
                 the kernel table in xtask/src/vm/kernels.rs"
            )
        })
    }

    /// The package's .deb in `dir`, downloaded unless an earlier run left it there.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        if let Some(deb) = find_deb(dir, package)? {
            return Ok(deb);
        }
        let mut cmd = self.cmd("apt-get");
        cmd.args(["-q", "download", package]).current_dir(dir);
        say!("running  apt-get download {package}");
        stdout_of(&mut cmd, &format!("downloading {package}"))?;
        find_deb(dir, package)?.with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            )
        })
    }
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    // apt names files PACKAGE_VERSION_ARCH.deb (with ':' escaped); the '_' ends the name.
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn system_sources() -> Result<Vec<Source>> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(SYSTEM_SOURCE_PARTS) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let text = || fs::read_to_string(&p).unwrap_or_default();
            match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => out.extend(parse_deb822(&text())),
                Some("list") => out.extend(parse_one_line(&text())),
                _ => {}
            }
        }
    }
    if let Ok(text) = fs::read_to_string(SYSTEM_SOURCE_LIST) {
        out.extend(parse_one_line(&text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The archive URIs are placeholders: the code never names one.
    const DEB822: &str = "Types: deb\n# a snapshot comment\nURIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
        Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb deb-src\nURIs: http://other.example/repo\nSuites: stable\nComponents: main\n\
        Enabled: no\n";

    #[test]
    fn deb822_stanzas_become_sources_and_the_archive_is_the_release_one() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[1].suites, ["bookworm-security"]);
        let a = archive(&s).unwrap();
        assert_eq!(a.uri, "http://mirror.example/debian");
        assert_eq!(
            a.signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        // Security first in the file: still the release archive is chosen.
        let reversed: Vec<Source> = s.iter().rev().cloned().collect();
        assert_eq!(
            archive(&reversed).unwrap().uri,
            "http://mirror.example/debian"
        );
    }

    #[test]
    fn one_line_sources_with_and_without_options() {
        let s = parse_one_line(
            "# comment\ndeb-src http://x.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://x.example/debian bookworm main contrib\n\
             deb http://y.example/debian-security bookworm-security main\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[1].signed_by, None);
        assert_eq!(archive(&s).unwrap().uri, "http://x.example/debian");
        assert!(archive(&s[1..]).is_none());
    }

    #[test]
    fn private_sources_name_only_the_asked_suites() {
        let a = &parse_deb822(DEB822)[0];
        assert_eq!(
            private_sources(a, &["bullseye", "trixie-backports"]),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.example/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.example/debian trixie-backports main\n"
        );
        let inline_key = Source {
            signed_by: Some("-----BEGIN PGP".into()),
            ..a.clone()
        };
        assert_eq!(
            private_sources(&inline_key, &["trixie"]),
            "deb http://mirror.example/debian trixie main\n"
        );
    }

    #[test]
    fn names_order_by_their_numbers() {
        assert_eq!(
            natural_cmp("6.1.0-9-cloud", "6.1.0-50-cloud"),
            Ordering::Less
        );
        assert_eq!(
            natural_cmp("6.12.117+deb13", "6.12.107+deb13"),
            Ordering::Greater
        );
        assert_eq!(natural_cmp("a007", "a7"), Ordering::Equal);
        assert_eq!(natural_cmp("7.3.4", "7.3.4"), Ordering::Equal);
        assert_eq!(natural_cmp("7.3", "7.3.4"), Ordering::Less);
        let search = "linux-image-6.1.0-47-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                      linux-image-6.1.0-50-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                      linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n";
        assert_eq!(
            newest_name(search).as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64-unsigned")
        );
        assert_eq!(newest_name(""), None);
    }
}
