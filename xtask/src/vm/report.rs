//! One row per kernel, and the Markdown table made of them (printed, and written to
//! target/vm-test/results.md for the README's supported-kernels table).

use std::{fmt::Write as _, time::Duration};

use super::{
    check::{self, Capability, Cell},
    qemu::{self, Accel, Booted},
};

/// What one kernel did.
#[derive(Debug, Clone)]
pub struct Row {
    pub kernel: String,
    pub package: String,
    pub elapsed: Option<Duration>,
    pub exit: Option<i32>,
    pub cells: Vec<(Capability, Cell)>,
    /// Why it failed, what the header says is lost, what the guest noticed.
    pub notes: Vec<String>,
    /// Something beyond the cells failed (no boot, timeout, exit code, false claims).
    pub broken: bool,
}

impl Row {
    /// A kernel that could not even be booted.
    pub fn error(kernel: &str, package: &str, why: &str) -> Self {
        Row {
            kernel: kernel.to_owned(),
            package: package.to_owned(),
            elapsed: None,
            exit: None,
            cells: Vec::new(),
            notes: vec![why.to_owned()],
            broken: true,
        }
    }

    pub fn from_boot(kernel: &str, package: &str, b: &Booted, expected: &[Capability]) -> Self {
        let text = |name| {
            b.frame(name)
                .map(|d| String::from_utf8_lossy(d).into_owned())
        };
        let exit = text("netwatch.exit").and_then(|s| s.trim().parse().ok());
        let mut notes = Vec::new();
        let mut broken = false;
        if b.timed_out {
            broken = true;
            notes.push(format!("timed out after {:.0} s", b.elapsed.as_secs_f64()));
        }
        if !b.complete {
            broken = true;
            notes.push(format!(
                "the guest did not finish; console ends with: {}",
                qemu::console_summary(&b.console, 8)
            ));
        }
        let guest_log = text("guest.log").unwrap_or_default();
        for line in guest_log.lines() {
            if line.starts_with("error")
                || line.starts_with("warning")
                || line.starts_with("overhead")
            {
                notes.push(format!("guest: {line}"));
            }
        }
        if let Some(note) = guest_log
            .lines()
            .find(|l| l.starts_with("overhead:"))
            .and_then(check::slab_hooks_ran)
        {
            broken = true;
            notes.push(note);
        }
        let stderr = text("netwatch.stderr").unwrap_or_default();
        let rejected = rejected_programs(&stderr);
        if !rejected.is_empty() {
            notes.push(format!("verifier rejected: {}", rejected.join(", ")));
        }
        match exit {
            Some(0) => {}
            Some(code) => {
                broken = true;
                notes.push(format!("netwatch exited {code}: {}", stderr_cause(&stderr)));
            }
            None if b.complete => {
                broken = true;
                notes.push("netwatch's exit status was not sent".into());
            }
            None => {}
        }
        let trace = text("trace.jsonl").unwrap_or_default();
        let o = check::observe(&trace);
        if exit == Some(0) && !o.complete {
            broken = true;
            notes.push("the trace has no summary record".into());
        }
        let claims = check::claims_not_kept(&o);
        if !claims.is_empty() {
            broken = true;
            notes.push(format!(
                "header claims but trace lacks: {}",
                claims.join("; ")
            ));
        }
        if !o.netfilter_drops_from.is_empty() {
            notes.push(format!(
                "netfilter drops from {}",
                o.netfilter_drops_from.join(", ")
            ));
        }
        // A full table's refusal of the host's own connect must name its sender (drops on
        // the way out have no device; netwatch takes their namespace from the socket).
        if let Some(note) = check::unnamed_table_full_drops(&o) {
            broken = true;
            notes.push(note);
        }
        notes.extend(
            check::lost_features(&o)
                .into_iter()
                .map(|l| format!("lost per header: {l}")),
        );
        let cells: Vec<_> = Capability::ALL
            .iter()
            .map(|&c| (c, check::cell(c, expected, &o)))
            .collect();
        if !o.has(Capability::NoFalseOverflow) {
            // The kernel's own counter, as evidence that the alert is false.
            if let Some(line) = guest_log.lines().find(|l| l.starts_with("netstat deltas")) {
                notes.push(format!(
                    "{} timewait_overflow alert(s); guest {line}",
                    o.timewait_overflow_alerts
                ));
            }
        }
        Row {
            kernel: kernel.to_owned(),
            package: package.to_owned(),
            elapsed: Some(b.elapsed),
            exit,
            cells,
            notes,
            broken,
        }
    }

    pub fn passed(&self) -> bool {
        !self.broken && self.cells.iter().all(|(_, c)| !c.fails())
    }

    /// The progress line after each kernel.
    pub fn one_line(&self) -> String {
        let failing: Vec<&str> = self
            .cells
            .iter()
            .filter(|(_, c)| c.fails())
            .map(|(cap, _)| cap.name())
            .collect();
        format!(
            "{:<8} {} in {} (netwatch exit {}{})",
            self.kernel,
            if self.passed() { "PASS" } else { "FAIL" },
            self.time(),
            self.exit_text(),
            if failing.is_empty() {
                String::new()
            } else {
                format!("; failing: {}", failing.join(", "))
            }
        )
    }

    fn time(&self) -> String {
        self.elapsed
            .map_or_else(|| "-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    }

    fn exit_text(&self) -> String {
        self.exit.map_or_else(|| "-".into(), |c| c.to_string())
    }
}

/// The line of netwatch's stderr that says why it stopped: the first `error` line, else
/// the last line (a verifier log can be hundreds of lines above it).
pub fn stderr_cause(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with("error") || l.contains("error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("(no stderr)");
    let mut s: String = line.chars().take(300).collect();
    if s.len() < line.len() {
        s.push_str("...");
    }
    s
}

/// The programs netwatch says the verifier rejected, as `name (hook)`, once each (the
/// verifier's log that follows each warning is left to the kept stderr file).
pub fn rejected_programs(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.split("the verifier rejected ").nth(1) else {
            continue;
        };
        let name = rest.split(':').next().unwrap_or(rest).trim().to_owned();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

pub fn markdown(rows: &[Row], accel: Accel, prep: Duration, total: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "netwatch on Debian kernels (`cargo xtask vm-test`; QEMU {}, 2 vCPUs, 1.5 GiB): \
         downloads and unpacking {:.1} s, whole run {:.1} s.\n",
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        },
        prep.as_secs_f64(),
        total.as_secs_f64()
    );
    s.push_str("| kernel | package | boot+run | netwatch exit |");
    for c in Capability::ALL {
        let _ = write!(s, " {} |", c.name());
    }
    s.push_str(" verdict |\n|---|---|---|---|");
    for _ in Capability::ALL {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for r in rows {
        let _ = write!(
            s,
            "| {} | `{}` | {} | {} |",
            r.kernel,
            r.package,
            r.time(),
            r.exit_text()
        );
        for c in Capability::ALL {
            let cell = r.cells.iter().find(|(k, _)| k == c).map(|(_, v)| *v);
            let _ = write!(
                s,
                " {} |",
                cell.map_or_else(|| "?".into(), |v| v.to_string())
            );
        }
        let _ = writeln!(s, " {} |", if r.passed() { "pass" } else { "**FAIL**" });
    }
    s.push_str(
        "\nok: expected and seen; MISSING: expected, not seen; UNEXPECTED: a false \
         `timewait_overflow` alert; seen: shown though not expected (the expectations in \
         xtask/src/vm/kernels.rs can be raised); -: not expected, not seen.\n",
    );
    let noted: Vec<&Row> = rows.iter().filter(|r| !r.notes.is_empty()).collect();
    if !noted.is_empty() {
        s.push_str("\nNotes:\n");
        for r in noted {
            for n in &r.notes {
                let _ = writeln!(s, "- {}: {}", r.kernel, n.replace('\n', " "));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kernel: &str, cells: &[(Capability, Cell)], broken: bool) -> Row {
        Row {
            kernel: kernel.into(),
            package: format!("linux-image-{kernel}"),
            elapsed: Some(Duration::from_millis(12_340)),
            exit: Some(0),
            cells: cells.to_vec(),
            notes: if broken {
                vec!["netwatch exited 1: bad".into()]
            } else {
                vec![]
            },
            broken,
        }
    }

    #[test]
    fn verdicts_follow_cells_and_breakage() {
        assert!(row("6.18", &[(Capability::TimeWait, Cell::Ok)], false).passed());
        assert!(row("6.18", &[(Capability::TimeWait, Cell::Bonus)], false).passed());
        assert!(!row("6.1", &[(Capability::TimeWait, Cell::Missing)], false).passed());
        assert!(!row("5.10", &[], true).passed());
        assert!(!Row::error("7.3", "p", "no download").passed());
    }

    #[test]
    fn the_table_has_a_column_per_capability_and_the_notes() {
        let all_ok: Vec<_> = Capability::ALL.iter().map(|&c| (c, Cell::Ok)).collect();
        let md = markdown(
            &[row("6.18", &all_ok, false), row("5.10", &[], true)],
            Accel::Tcg,
            Duration::from_secs(3),
            Duration::from_secs(100),
        );
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 4);
        let cols = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cols(l) == cols(lines[0])), "{md}");
        assert!(lines[2].contains("| 12.3 s | 0 | ok |") && lines[2].ends_with("pass |"));
        assert!(lines[3].contains("| ? |") && lines[3].ends_with("**FAIL** |"));
        assert!(md.contains("- 5.10: netwatch exited 1: bad"));
        assert!(md.contains("TCG"));
    }

    #[test]
    fn rejected_programs_are_named_once_with_their_hook() {
        let err = "netwatch: warning: conntrack entry lifetimes are not followed\n\
            netwatch: warning: the verifier rejected slab_alloc (tp_btf/kmem_cache_alloc): the \
            BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: x\n\
            0: (79) r1 = *(u64 *)(r1 +0)\n\
            netwatch: warning: the verifier rejected drops (tp_btf/kfree_skb): the syscall\n\
            netwatch: warning: the verifier rejected drops (tp_btf/kfree_skb): again\n";
        assert_eq!(
            rejected_programs(err),
            [
                "slab_alloc (tp_btf/kmem_cache_alloc)",
                "drops (tp_btf/kfree_skb)"
            ]
        );
        assert!(rejected_programs("").is_empty());
    }

    #[test]
    fn the_cause_is_the_error_line_not_the_verifier_log() {
        let err = "warning: set_state rejected\n0: (79) r1 = *(u64 *)(r1 +0)\n...\n\
                   Error: attaching inet_sock_set_state: unknown func bpf_get_socket_cookie#46\n\
                   \n";
        assert_eq!(
            stderr_cause(err),
            "Error: attaching inet_sock_set_state: unknown func bpf_get_socket_cookie#46"
        );
        assert_eq!(stderr_cause("a\nlast\n"), "last");
        assert_eq!(stderr_cause(""), "(no stderr)");
    }
}
