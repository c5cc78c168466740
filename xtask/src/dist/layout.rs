//! Where the package puts each file: one table that both the builder ([`super::deb`]) and the
//! install test ([`super::check`]) read, so what is built and what is checked cannot differ.

/// The package's name, also its binary's and its unit's.
pub const PACKAGE: &str = "netwatch";

/// The binary: in /usr/bin, not /usr/sbin, because `netwatch report` needs no root and is for
/// every user.
pub const BIN: &str = "usr/bin/netwatch";

/// The unit, where Debian 12's packages put theirs.
pub const UNIT: &str = "lib/systemd/system/netwatch.service";

/// The unit file in the source tree.
pub const UNIT_SOURCE: &str = "packaging/netwatch.service";

/// Files copied as they are from the source tree: (source, installed path, mode).
pub const COPIED: &[(&str, &str, u32)] = &[
    (UNIT_SOURCE, UNIT, 0o644),
    ("packaging/debian/default", "etc/default/netwatch", 0o644),
    (
        "packaging/debian/copyright",
        "usr/share/doc/netwatch/copyright",
        0o644,
    ),
    (
        "packaging/grafana/netwatch.json",
        "usr/share/netwatch/grafana/netwatch.json",
        0o644,
    ),
    (
        "packaging/prometheus/netwatch-rules.yml",
        "usr/share/netwatch/prometheus/netwatch-rules.yml",
        0o644,
    ),
    (
        "packaging/kubernetes/daemonset.yaml",
        "usr/share/netwatch/kubernetes/daemonset.yaml",
        0o644,
    ),
];

/// Completion scripts: (shell as `netwatch completions` names it, installed path), in the
/// directories each shell's Debian package reads without configuration.
pub const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/netwatch"),
    ("zsh", "usr/share/zsh/vendor-completions/_netwatch"),
    ("fish", "usr/share/fish/vendor_completions.d/netwatch.fish"),
];

/// Man pages (`netwatch.1.gz`, `netwatch-trace.1.gz`, ...).
pub const MAN_DIR: &str = "usr/share/man/man1";

/// Pages that must be there whatever subcommands are added later (the unit documents them).
pub const MAN_PAGES: &[&str] = &[
    "netwatch.1.gz",
    "netwatch-serve.1.gz",
    "netwatch-trace.1.gz",
];

/// Maintainer scripts and control files from packaging/debian, with their modes.
pub const CONTROL_FILES: &[(&str, u32)] = &[
    ("postinst", 0o755),
    ("prerm", 0o755),
    ("postrm", 0o755),
    ("conffiles", 0o644),
];

/// The control file template (`@VERSION@`, `@ARCH@`, `@DEPENDS@`, `@INSTALLED_SIZE@`).
pub const CONTROL_TEMPLATE: &str = "packaging/debian/control";
