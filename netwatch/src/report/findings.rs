//! Findings: what the numbers mean, set against the limits the machine ran with (the
//! header's sysctls). Each rule names the evidence and the knob to look at; the alerts the
//! tracer raised are findings too, one per kind.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{text::offset, AlertItem, Report};
use crate::core::alert_catalogue as catalogue;
pub use crate::core::alert_catalogue::Severity;
use crate::core::early_ends::Cause;
use crate::core::text::duration;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A short name, stable for machines: `records_lost`, `alert:port_exhaustion`, ...
    pub id: String,
    pub title: String,
    pub detail: String,
    /// What to change, where the catalogue says (alerts); other findings say it in `detail`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advice: String,
}

fn finding(severity: Severity, id: &str, title: String, detail: String) -> Finding {
    Finding {
        severity,
        id: id.to_owned(),
        title,
        detail,
        advice: String::new(),
    }
}

/// The lowest value of a setting over the traced namespaces (or of the host, when none was
/// recorded per namespace): the limit hit first.
fn setting(r: &Report, name: &str) -> Option<String> {
    let per_ns: Vec<&String> = r
        .trace
        .netns_sysctls
        .values()
        .filter_map(|m| m.get(name))
        .collect();
    if per_ns.is_empty() {
        return r.trace.sysctls.get(name).cloned();
    }
    per_ns
        .into_iter()
        .min_by_key(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .cloned()
}

fn number(r: &Report, name: &str) -> Option<u64> {
    setting(r, name)?.trim().parse().ok()
}

/// Where a limit applies and what it is weighed against: one namespace's own TIME_WAIT
/// peak and settings, or, for a trace that did not count sockets per namespace, all of
/// them against the lowest setting.
struct LimitScope<'a> {
    report: &'a Report,
    /// ` in scn-srv (4026532247)`, or nothing for the whole trace.
    place: String,
    timewait_peak: u64,
    /// The namespace's own settings (None: the trace's, as `setting` reads them).
    own: Option<&'a BTreeMap<String, String>>,
}

impl LimitScope<'_> {
    fn setting(&self, name: &str) -> Option<String> {
        match self.own {
            Some(m) => m.get(name).cloned(),
            None => setting(self.report, name),
        }
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.setting(name)?.trim().parse().ok()
    }
}

/// Each namespace with TIME_WAIT sockets, on its own settings (those of where netwatch ran
/// when the trace did not record its own), or the whole trace where it counted no
/// namespace apart.
fn limit_scopes(r: &Report) -> Vec<LimitScope<'_>> {
    if r.netns_peaks.is_empty() {
        return vec![LimitScope {
            report: r,
            place: String::new(),
            timewait_peak: peak(r, "TIME_WAIT"),
            own: None,
        }];
    }
    r.netns_peaks
        .iter()
        .filter_map(|n| {
            let tw = n.peaks.get("TIME_WAIT").copied().filter(|&tw| tw > 0)?;
            Some(LimitScope {
                report: r,
                place: if r.netns_peaks.len() > 1 {
                    format!(" in {}", n.label)
                } else {
                    String::new()
                },
                timewait_peak: tw,
                own: Some(n.sysctls.as_ref().unwrap_or(&r.trace.sysctls)),
            })
        })
        .collect()
}

/// TIME_WAIT against the limits it can hit: the table size, and the ephemeral ports.
fn timewait_limits(scope: &LimitScope) -> Vec<Finding> {
    let mut out = Vec::new();
    let (tw, place) = (scope.timewait_peak, &scope.place);
    if let Some(buckets) = scope.number("net.ipv4.tcp_max_tw_buckets") {
        if buckets > 0 && tw * 10 >= buckets * 9 {
            out.push(finding(
                Severity::Warning,
                "timewait_buckets",
                format!(
                    "TIME_WAIT peaked at {tw}{place} of net.ipv4.tcp_max_tw_buckets = \
                     {buckets}"
                ),
                "past the limit closing connections skip TIME_WAIT (TCPTimeWaitOverflow): old \
                 duplicates can then reach new connections on the same ports"
                    .to_owned(),
            ));
        }
    }
    if let Some(range) = scope.setting("net.ipv4.ip_local_port_range") {
        let mut it = range
            .split_whitespace()
            .filter_map(|n| n.parse::<u64>().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            let width = hi.saturating_sub(lo) + 1;
            if tw > 0 && tw * 2 >= width {
                out.push(finding(
                    Severity::Warning,
                    "ephemeral_ports",
                    format!(
                        "TIME_WAIT peaked at {tw}{place}, {}% of the {width} ephemeral ports \
                         ({lo}-{hi})",
                        tw * 100 / width
                    ),
                    "client connections to one destination run out of local ports while \
                     theirs sit in TIME_WAIT (EADDRNOTAVAIL): widen \
                     net.ipv4.ip_local_port_range, reuse connections, or enable \
                     net.ipv4.tcp_tw_reuse"
                        .to_owned(),
                ));
            }
        }
    }
    out
}

fn peak(r: &Report, st: &str) -> u64 {
    let gauge = r.peaks.get(st).map_or(0, |p| p.max);
    gauge.max(r.states.get(st).copied().unwrap_or(0))
}

/// `held by python3[6345] (200 sockets); ` for the processes holding a state's sockets at
/// the end, or nothing when none is known.
fn held_by(r: &Report, st: &str) -> String {
    let Some(rows) = r
        .breakdowns
        .get(st)
        .map(|b| &b.processes)
        .filter(|p| !p.is_empty())
    else {
        return String::new();
    };
    let list: Vec<String> = rows
        .iter()
        .map(|p| {
            format!(
                "{p} ({} socket{})",
                p.sockets,
                if p.sockets == 1 { "" } else { "s" }
            )
        })
        .collect();
    format!("held by {}; ", list.join(", "))
}

/// TIME_WAIT dwells far below 60 s, explained: otherwise an engineer reads a 0.5 s median
/// for a state the kernel holds 60 s as a broken tool.
fn early_timewait(r: &Report) -> Option<Finding> {
    let e = &r.timewait_early_ends;
    let n = e.total();
    if n == 0 {
        return None;
    }
    let ends = r.dwell.get("TIME_WAIT").map_or(0, |d| d.count);
    let mut causes: Vec<(u64, Cause)> = Cause::ALL
        .iter()
        .map(|&c| (e.get(c), c))
        .filter(|&(k, _)| k > 0)
        .collect();
    causes.sort_by_key(|c| std::cmp::Reverse(c.0));
    let detail: Vec<String> = causes
        .iter()
        .map(|(k, c)| format!("{k} {}: {}", c.name(), c.explanation()))
        .collect();
    Some(finding(
        Severity::Info,
        "timewait_early_ends",
        format!("{n} of {ends} TIME_WAITs ended before their 60 s"),
        detail.join("; "),
    ))
}

/// Most server-side handshakes ending without a connection: the clients see timeouts or
/// resets, and no other view says why.
fn failed_handshakes(r: &Report) -> Option<Finding> {
    let h = r.handshakes;
    let total = h.completed + h.failed;
    if h.failed < 10 || h.failed * 2 <= total {
        return None;
    }
    Some(finding(
        Severity::Warning,
        "handshakes_failed",
        format!(
            "{} of {total} handshakes ({}%) ended without a connection",
            h.failed,
            h.failed * 100 / total
        ),
        "request sockets died in SYN_RECV: final ACKs lost or never sent (clients gone, \
         a SYN flood, a firewall), or dropped because the accept queue was full (see \
         listen_overflow); knobs net.ipv4.tcp_synack_retries, net.core.somaxconn, \
         net.ipv4.tcp_max_syn_backlog, net.ipv4.tcp_syncookies"
            .to_owned(),
    ))
}

fn evidence_number(a: &AlertItem, field: &str) -> Option<u64> {
    a.evidence.get(field)?.as_u64()
}

/// The title and detail of an alert kind's finding: totals over every alert of the trace
/// (each alert counts its own interval), the worst interval, then the worst alert's own words
/// (its advice and evidence) for what to do.
fn alert_totals(kind: &str, n: u64, alerts: &[&AlertItem]) -> (String, String) {
    let fields = catalogue::counted(kind);
    let plural = if n == 1 { "" } else { "s" };
    let Some(&(head, head_what)) = fields.first() else {
        let last = alerts.last().map(|a| a.message.clone()).unwrap_or_default();
        return (format!("{n} {kind} alert{plural}"), last);
    };
    let total = |field: &str| -> u64 {
        alerts
            .iter()
            .filter_map(|a| evidence_number(a, field))
            .sum()
    };
    let worst = alerts.iter().max_by_key(|a| {
        (
            evidence_number(a, head).unwrap_or(0),
            std::cmp::Reverse(a.offset_ns),
        )
    });
    let mut title = format!("{} {head_what} in {n} alert{plural}", total(head));
    if let Some(w) = worst.filter(|_| n > 1) {
        let _ = std::fmt::Write::write_fmt(
            &mut title,
            format_args!(
                ", worst {} at {}",
                evidence_number(w, head).unwrap_or(0),
                offset(w.offset_ns)
            ),
        );
    }
    // Other counters only where they counted something: a 0 beside a big headline reads as
    // a contradiction when the kernel cannot measure that one.
    let others: Vec<String> = fields[1..]
        .iter()
        .map(|&(f, what)| (total(f), what))
        .filter(|(t, _)| *t > 0)
        .map(|(t, what)| format!("{t} {what}"))
        .collect();
    let mut detail = String::new();
    if !others.is_empty() {
        detail = format!("in all: {}; ", others.join(", "));
    }
    if let Some(w) = worst {
        let which = if n > 1 { "worst interval" } else { "the alert" };
        detail.push_str(&format!("{which}: {}", w.message));
    }
    (title, detail)
}

pub fn findings(r: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    if r.lost > 0 {
        out.push(finding(
            Severity::Critical,
            "records_lost",
            format!("{} records lost", r.lost),
            "the kernel's ring buffer was full (or records could not be decoded): counts and \
             histograms undercount; trace with filters (--port, --netns) to record less"
                .to_owned(),
        ));
    }
    if !r.complete {
        out.push(finding(
            Severity::Warning,
            "incomplete_trace",
            "the trace is incomplete".to_owned(),
            "it lacks its summary or a part: see the warnings; the numbers cover what is there"
                .to_owned(),
        ));
    }
    for (kind, n) in &r.alert_counts {
        let of_kind: Vec<&AlertItem> = r.alerts.iter().filter(|a| &a.kind == kind).collect();
        let (title, detail) = alert_totals(kind, *n, &of_kind);
        let known = catalogue::lookup(kind);
        out.push(Finding {
            title: known.map_or(title.clone(), |k| format!("{}: {title}", k.title)),
            advice: known.map_or_else(String::new, |k| k.advice.to_owned()),
            ..finding(
                catalogue::severity(kind),
                &format!("alert:{kind}"),
                String::new(),
                detail,
            )
        });
    }

    for scope in limit_scopes(r) {
        out.extend(timewait_limits(&scope));
    }
    // Where the tracer raised close_wait_leak, its finding (above) says it, with the worst
    // interval; this rule is for traces that have no such alert (recorded before it was).
    let alerted = r.alert_counts.contains_key(catalogue::CLOSE_WAIT_LEAK.name);
    if let Some(a) = r.age.get("CLOSE_WAIT").filter(|_| !alerted) {
        if a.max >= crate::core::signals::CLOSE_WAIT_LEAK_NS {
            out.push(finding(
                Severity::Warning,
                "close_wait_leak",
                format!(
                    "{} sockets in CLOSE_WAIT at the end, the oldest for {}",
                    r.states.get("CLOSE_WAIT").copied().unwrap_or(a.count),
                    duration(Some(a.max))
                ),
                format!(
                    "{}the peer closed and the application has not: a missing close() (a \
                     leak), or a worker stuck before it",
                    held_by(r, "CLOSE_WAIT")
                ),
            ));
        }
    }
    for (st, what, knob) in [
        (
            "SYN_RECV",
            "handshakes waited for SYN-ACK retransmits: final ACKs are lost or late",
            "net.ipv4.tcp_synack_retries",
        ),
        (
            "SYN_SENT",
            "connects waited for SYN retransmits: SYNs dropped or unanswered (a full \
             listener, a firewall, conntrack)",
            "net.ipv4.tcp_syn_retries",
        ),
    ] {
        if let Some(d) = r.dwell.get(st) {
            if d.p99 >= 1_000_000_000 {
                out.push(finding(
                    Severity::Warning,
                    &format!("slow_{}", st.to_ascii_lowercase()),
                    format!(
                        "{st} p99 {} (max {}) over {} dwells",
                        duration(Some(d.p99)),
                        duration(Some(d.max)),
                        d.count
                    ),
                    format!("{what} (see {knob})"),
                ));
            }
        }
    }
    if let (Some(d), Some(fin)) = (
        r.dwell.get("FIN_WAIT2"),
        number(r, "net.ipv4.tcp_fin_timeout"),
    ) {
        if fin > 0 && d.p90 * 10 >= fin * 9 * 1_000_000_000 {
            out.push(finding(
                Severity::Info,
                "fin_wait2_timeout",
                format!(
                    "FIN_WAIT2 p90 {} against net.ipv4.tcp_fin_timeout = {fin} s",
                    duration(Some(d.p90))
                ),
                "peers do not close their side: orphaned sockets wait out tcp_fin_timeout"
                    .to_owned(),
            ));
        }
    }
    if let Some(f) = early_timewait(r) {
        out.push(f);
    }
    if let Some(f) = failed_handshakes(r) {
        out.push(f);
    }
    let ct = r
        .gauges
        .iter()
        .filter_map(|g| Some((g.conntrack_count?, g.conntrack_max?)))
        .max_by_key(|&(c, _)| c);
    if let Some((count, max)) = ct {
        if max > 0 && count * 10 >= max * 9 {
            out.push(finding(
                Severity::Critical,
                "conntrack_full",
                format!("conntrack peaked at {count} of nf_conntrack_max = {max}"),
                "a full table drops new flows (\"nf_conntrack: table full, dropping packet\"): \
                 raise net.netfilter.nf_conntrack_max or shorten its TCP timeouts"
                    .to_owned(),
            ));
        }
    }
    out.sort_by_key(|f| f.severity);
    out
}
