//! The few settings of the systemd unit that the package test reproduces with `setpriv`: read
//! from the unit file itself, so that the test runs netwatch exactly as the unit would and the
//! two cannot drift apart.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};

/// What systemd would do when starting the service, as far as privileges go.
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    pub user: String,
    pub group: String,
    /// Capability names as the unit spells them (`CAP_BPF`), in its order.
    pub ambient: Vec<String>,
    pub bounding: Vec<String>,
    pub no_new_privileges: bool,
    /// ExecStart's words, `Environment=` variables expanded as systemd does.
    pub exec_start: Vec<String>,
}

impl Unit {
    pub fn parse(text: &str) -> Result<Self> {
        let service = service_section(text)?;
        let one = |key: &str| -> Result<String> {
            match service.get(key).map(Vec::as_slice) {
                Some([value]) => Ok(value.clone()),
                Some(_) => bail!("the unit sets {key}= more than once"),
                None => bail!("the unit has no {key}= in [Service]"),
            }
        };
        let words = |key: &str| -> Vec<String> {
            service
                .get(key)
                .into_iter()
                .flatten()
                .flat_map(|v| v.split_whitespace().map(str::to_string))
                .collect()
        };
        let mut env = BTreeMap::new();
        for assignment in words("Environment") {
            let (name, value) = assignment
                .split_once('=')
                .with_context(|| format!("Environment={assignment} is no NAME=VALUE"))?;
            env.insert(name.to_string(), value.to_string());
        }
        let user = one("User")?;
        Ok(Self {
            group: one("Group").unwrap_or_else(|_| user.clone()),
            user,
            ambient: words("AmbientCapabilities"),
            bounding: words("CapabilityBoundingSet"),
            no_new_privileges: one("NoNewPrivileges").is_ok_and(|v| v == "yes" || v == "true"),
            exec_start: expand(&one("ExecStart")?, &env)?,
        })
    }

    /// The capabilities as `setpriv` takes them: `-all,+bpf,+perfmon`.
    pub fn setpriv_caps(names: &[String]) -> Result<String> {
        let mut list = String::from("-all");
        for name in names {
            let short = name
                .strip_prefix("CAP_")
                .with_context(|| format!("capability {name:?} does not start with CAP_"))?;
            list.push_str(",+");
            list.push_str(&short.to_ascii_lowercase());
        }
        Ok(list)
    }
}

/// The `[Service]` section's settings, each key with every value it was given.
fn service_section(text: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut section = "";
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if line.ends_with('\\') {
            bail!("the unit continues a line with `\\`, which this reader does not follow");
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            continue;
        }
        if section != "Service" {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("unit line {line:?} is no KEY=VALUE"))?;
        settings
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    if settings.is_empty() {
        bail!("the unit has no [Service] section");
    }
    Ok(settings)
}

/// systemd's rules for ExecStart: `${NAME}` is replaced inside a word, a word that is only
/// `$NAME` becomes the value's words (none when it is unset or empty).
fn expand(exec: &str, env: &BTreeMap<String, String>) -> Result<Vec<String>> {
    if exec.contains(['"', '\'']) {
        bail!("ExecStart uses quoting, which this reader does not follow: {exec}");
    }
    let mut words = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            let value = env.get(name).map(String::as_str).unwrap_or("");
            words.extend(value.split_whitespace().map(str::to_string));
            continue;
        }
        let mut out = String::new();
        let mut rest = word;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .with_context(|| format!("unclosed ${{ in ExecStart word {word:?}"))?;
            let name = &rest[start + 2..start + end];
            out.push_str(env.get(name).map(String::as_str).unwrap_or(""));
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        words.push(out);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dist::layout::UNIT_SOURCE, util::workspace_root};

    #[test]
    fn the_packaged_unit_reads_as_systemd_would_start_it() {
        let path = workspace_root().join(UNIT_SOURCE);
        let unit = Unit::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(unit.user, "netwatch");
        assert_eq!(unit.group, "netwatch");
        assert!(unit.no_new_privileges);
        // Ambient capabilities outside the bounding set would be dropped by the kernel, and
        // bounding ones not ambient are useless to a non-root user: the two must be equal.
        assert_eq!(unit.ambient, unit.bounding);
        for needed in ["CAP_BPF", "CAP_PERFMON"] {
            assert!(unit.ambient.iter().any(|c| c == needed), "{unit:?}");
        }
        assert_eq!(
            unit.exec_start,
            ["/usr/bin/netwatch", "serve", "--listen", "127.0.0.1:9977"]
        );
        assert_eq!(
            Unit::setpriv_caps(&unit.ambient).unwrap(),
            "-all,+bpf,+perfmon,+sys_admin,+syslog"
        );
    }

    #[test]
    fn exec_start_expands_as_systemd_does() {
        let env = BTreeMap::from([
            ("A".to_string(), "x:1".to_string()),
            ("B".to_string(), "--one  --two".to_string()),
        ]);
        assert_eq!(
            expand("/bin/p --at=${A}/y $B $UNSET end", &env).unwrap(),
            ["/bin/p", "--at=x:1/y", "--one", "--two", "end"]
        );
        assert!(expand("/bin/p ${A", &env).is_err());
        assert!(expand("/bin/p \"quoted arg\"", &env).is_err());
    }

    #[test]
    fn a_unit_without_what_the_test_needs_is_refused_with_the_setting() {
        let e = Unit::parse("[Service]\nExecStart=/bin/true\n").unwrap_err();
        assert!(format!("{e:#}").contains("User="), "{e:#}");
        let e = Unit::parse("[Unit]\nDescription=x\n").unwrap_err();
        assert!(format!("{e:#}").contains("[Service]"), "{e:#}");
    }
}
