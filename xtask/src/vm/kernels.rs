//! The kernels of the matrix and what netwatch must show on each: the two tables to edit when
//! a kernel is added or the kernel side gains a capability.

use super::check::Capability::{self, *};

/// One Debian kernel to boot. Package names are matched at run time against the archive's
/// index (newest match wins), so a superseded ABI number does not break the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// What `--kernel` takes and the table shows.
    pub name: &'static str,
    /// The Debian suite that carries it.
    pub suite: &'static str,
    /// Anchored regular expression (apt's syntax) for the package with `vmlinuz`.
    pub image: &'static str,
    /// For kernels whose modules live in a separate package: the prefix of the image
    /// package's name and the prefix that replaces it to name the modules package.
    pub modules_package: Option<(&'static str, &'static str)>,
}

/// Oldest first. 5.10 is bullseye's (LTS until 2026), 6.1 bookworm's, 6.12 trixie's, the
/// rest the backports that running fleets pick up.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        image: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        modules_package: None,
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        image: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        modules_package: None,
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        image: r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-unsigned$",
        modules_package: None,
    },
    Kernel {
        name: "6.16",
        suite: "trixie-backports",
        image: r"^linux-image-6\.16\.[0-9]+\+deb13-cloud-amd64$",
        modules_package: None,
    },
    Kernel {
        name: "6.18",
        suite: "trixie-backports",
        image: r"^linux-image-6\.18\.[0-9]+\+deb13-cloud-amd64$",
        modules_package: None,
    },
    Kernel {
        name: "7.3",
        suite: "trixie-backports",
        image: r"^linux-binary-7\.3\.[0-9]+\+deb13-cloud-amd64$",
        modules_package: Some(("linux-binary-", "linux-modules-")),
    },
];

/// What each kernel must show: everything the scenarios exercise, except on 5.10. Drops
/// come from two scenarios: the full backlog (a final ACK dropped with TCP_LISTEN_OVERFLOW,
/// 6.16+) and netfilter (NETFILTER_DROP, 6.1+: a full conntrack table and an nft drop rule).
/// 5.10's `kfree_skb` carries no drop reason at all, and there netwatch watches the slab
/// allocator by fexit, which cannot tell conntrack's entries apart, so no lifetimes either
/// (its header says both). On 5.10 and 6.1 the orphan's FIN is seen by fexit (stock kernels
/// allow it), and on every one timewait and request sockets' deaths by fentry on their
/// destructors (the guest's overhead phase checks that the slab hooks then stay idle).
pub const EXPECTATIONS: &[(&str, &[Capability])] = &[
    ("5.10", BEFORE_DROP_REASONS),
    ("6.1", Capability::ALL),
    ("6.12", Capability::ALL),
    ("6.16", Capability::ALL),
    ("6.18", Capability::ALL),
    ("7.3", Capability::ALL),
];

const BEFORE_DROP_REASONS: &[Capability] = &[
    Transitions,
    TimeWait,
    OrphanFin,
    SynRecv,
    SynackRetransmits,
    EarlyEnds,
    NoFalseOverflow,
    Containers,
];

/// The capabilities `kernel` must show; everything for a kernel missing from the table, so
/// a new kernel is held to the full set until someone says otherwise.
pub fn expected(kernel: &str) -> &'static [Capability] {
    EXPECTATIONS
        .iter()
        .find(|(k, _)| *k == kernel)
        .map_or(Capability::ALL, |(_, caps)| caps)
}

/// The kernels `--kernel` selects (all without it), or an error naming the valid ones.
pub fn select(name: Option<&str>) -> anyhow::Result<Vec<Kernel>> {
    match name {
        None => Ok(KERNELS.to_vec()),
        Some(n) => KERNELS
            .iter()
            .find(|k| k.name == n)
            .map(|k| vec![*k])
            .ok_or_else(|| {
                let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                anyhow::anyhow!(
                    "no kernel {n:?} in the matrix; choose one of {}",
                    names.join(", ")
                )
            }),
    }
}

/// The suites the private apt state must know.
pub fn suites(kernels: &[Kernel]) -> Vec<&'static str> {
    let mut s: Vec<&str> = kernels.iter().map(|k| k.suite).collect();
    s.sort_unstable();
    s.dedup();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_expectations_and_names_are_unique() {
        for k in KERNELS {
            assert!(EXPECTATIONS.iter().any(|(n, _)| *n == k.name), "{}", k.name);
            assert_eq!(KERNELS.iter().filter(|o| o.name == k.name).count(), 1);
        }
        for (n, _) in EXPECTATIONS {
            assert!(
                KERNELS.iter().any(|k| k.name == *n),
                "expectations for unknown {n}"
            );
        }
    }

    #[test]
    fn kernels_from_6_1_must_show_everything() {
        for k in ["6.1", "6.12", "6.16", "6.18", "7.3"] {
            assert_eq!(expected(k), Capability::ALL);
        }
        assert!(expected("5.10").contains(&TimeWait));
        assert!(!expected("5.10").contains(&Drops));
        assert!(!expected("5.10").contains(&ConntrackLifetimes));
        assert_eq!(expected("9.9"), Capability::ALL);
    }

    #[test]
    fn selection_names_the_choices_when_wrong() {
        assert_eq!(select(Some("6.1")).unwrap()[0].suite, "bookworm");
        assert_eq!(select(None).unwrap().len(), KERNELS.len());
        let e = select(Some("4.19")).unwrap_err().to_string();
        assert!(e.contains("5.10, 6.1"), "{e}");
        assert_eq!(
            suites(KERNELS),
            ["bookworm", "bullseye", "trixie", "trixie-backports"]
        );
    }
}
