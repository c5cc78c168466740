//! The report as text for a terminal.

use std::fmt::Write as _;

use super::Report;
use crate::core::{coverage, text::duration};

/// Gauge rows shown at most (evenly spaced, the peak rows kept).
const GAUGE_ROWS: usize = 24;
/// Alerts listed at most.
const ALERT_ROWS: usize = 30;
const BAR: usize = 40;

pub fn offset(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 3600.0 {
        format!(
            "+{}h{:02}m{:02}s",
            ns / 3_600_000_000_000,
            (ns / 60_000_000_000) % 60,
            (ns / 1_000_000_000) % 60
        )
    } else if s >= 60.0 {
        format!("+{}m{:04.1}s", ns / 60_000_000_000, s % 60.0)
    } else {
        format!("+{s:.1}s")
    }
}

/// The label of a histogram bar: its upper bound.
pub fn bound(ns: u64) -> String {
    match ns {
        n if n >= 86_400_000_000_000 => format!("<={}d", n / 86_400_000_000_000),
        n if n >= 3_600_000_000_000 => format!("<={}h", n / 3_600_000_000_000),
        n if n >= 60_000_000_000 && n % 60_000_000_000 == 0 => {
            format!("<={}m", n / 60_000_000_000)
        }
        n if n >= 1_000_000_000 => format!("<={}s", n / 1_000_000_000),
        n if n >= 1_000_000 => format!("<={}ms", n / 1_000_000),
        n => format!("<={}us", n / 1_000),
    }
}

/// Which rows of `n` to show: evenly spaced, always the first, the last and `keep`.
pub fn pick_rows(n: usize, max: usize, keep: &[usize]) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut rows: Vec<usize> = (0..max).map(|i| i * (n - 1) / (max - 1)).collect();
    rows.extend(keep.iter().copied().filter(|&k| k < n));
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Every state that held a socket at any snapshot: its count at the end, its peak and when.
/// A state back to 0 at the end keeps its row, since its peak is often the incident.
fn sockets(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nSOCKETS (at the end; the peak of the gauges and when)");
    let rows = r.socket_rows();
    if rows.is_empty() {
        let _ = writeln!(o, "  none");
        return;
    }
    let _ = writeln!(o, "  {:<12} {:>8} {:>8}  AT", "STATE", "END", "PEAK");
    for (st, n, p) in rows {
        let (max, at) = match p {
            Some(p) => (p.max.to_string(), offset(p.offset_ns)),
            None => ("-".to_owned(), "(no snapshot)".to_owned()),
        };
        let _ = writeln!(o, "  {st:<12} {n:>8} {max:>8}  {at}");
    }
}

/// The dashboard's breakdowns (its `b` key) for every state with sockets at the end.
fn breakdowns(o: &mut String, r: &Report) {
    if r.breakdowns.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nBREAKDOWNS AT THE END (top 5 per state; --until picks another moment)"
    );
    for (st, b) in &r.breakdowns {
        let _ = writeln!(o, "  {st}");
        let rows = b.rows();
        for by in ["service port", "local port", "remote address", "process"] {
            let list: Vec<String> = rows
                .iter()
                .filter(|(b, _, _)| *b == by)
                .map(|(_, k, n)| format!("{k} {n}"))
                .collect();
            if !list.is_empty() {
                let _ = writeln!(o, "    by {by:<15} {}", list.join(", "));
            }
        }
    }
}

/// The alerts as the dashboard's pane folds them: one row per kind and subject, with how
/// often, the total they counted, when first and last, and the change to make per kind.
fn alerts_by_subject(o: &mut String, r: &Report) {
    let entries = r.alerts_by_subject.by_severity();
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "  {:<4} {:<26} {:<22} {:>6} {:>9} {:>9}  IN ALL",
        "SEV", "ALERT", "SUBJECT", "COUNT", "FIRST", "LAST"
    );
    for e in &entries {
        let _ = writeln!(
            o,
            "  {:<4} {:<26} {:<22} {:>6} {:>9} {:>9}  {}",
            e.severity.tag(),
            e.title(),
            e.subject,
            e.count,
            offset(e.first_ns),
            offset(e.last_ns),
            e.total_text().unwrap_or_default()
        );
    }
    if r.alerts_by_subject.unlisted > 0 {
        let _ = writeln!(
            o,
            "  ... and {} alerts of further subjects",
            r.alerts_by_subject.unlisted
        );
    }
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.trace;
    let _ = writeln!(
        o,
        "netwatch report of {} ({} file{})",
        t.files.first().map(String::as_str).unwrap_or("?"),
        t.files.len(),
        if t.files.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        o,
        "  host {}, kernel {}, written by netwatch {} (schema {})",
        t.hostname, t.kernel, t.netwatch_version, t.schema_version
    );
    let _ = writeln!(
        o,
        "  {} .. {} ({}){}",
        r.window.from,
        r.window.to,
        duration(Some(r.window.to_offset_ns - r.window.from_offset_ns)),
        r.stopped_by
            .as_ref()
            .map(|s| format!(", stopped by {s}"))
            .unwrap_or_else(|| ", no summary".to_owned())
    );
    let mut rec = Vec::new();
    if !t.recorded_ports.is_empty() {
        rec.push(format!("ports {:?}", t.recorded_ports));
    }
    if !t.recorded_addrs.is_empty() {
        rec.push(format!("addrs {}", t.recorded_addrs.join(",")));
    }
    if !t.recorded_netns.is_empty() {
        rec.push(format!("netns {:?}", t.recorded_netns));
    }
    if !rec.is_empty() {
        let _ = writeln!(o, "  recorded with filters: {}", rec.join("; "));
    }
    let mut ours = Vec::new();
    if !r.window.ports.is_empty() {
        ours.push(format!("--port {:?}", r.window.ports));
    }
    if !r.window.addrs.is_empty() {
        ours.push(format!("--addr {}", r.window.addrs.join(",")));
    }
    if r.window.from_offset_ns > 0 || r.stopped_by.is_none() {
        ours.push(format!(
            "window {} .. {}",
            offset(r.window.from_offset_ns),
            offset(r.window.to_offset_ns)
        ));
    }
    if !ours.is_empty() {
        let _ = writeln!(o, "  this report: {}", ours.join("; "));
    }
    let _ = writeln!(
        o,
        "  {} transitions, {} sockets at start, {} records lost{}",
        r.transitions,
        r.census,
        r.lost,
        match (r.lost, r.lost_records, r.undecodable) {
            (0, _, _) => String::new(),
            (_, Some(full), Some(bad)) =>
                format!(" (ring buffer full {full}, undecodable {bad}: COUNTS UNDERSTATED)"),
            _ => " (COUNTS UNDERSTATED)".to_owned(),
        }
    );
    if let Some(n) = r.output_dropped.filter(|&n| n > 0) {
        let _ = writeln!(o, "  {}", crate::core::text::output_dropped(n));
    }
    if let Some(n) = r.skipped_runs.filter(|&n| n > 0) {
        let _ = writeln!(o, "  {}", crate::core::text::skipped_runs(n));
    }
    if r.numbers_from == "summary" {
        let _ = writeln!(
            o,
            "  parts are missing: histograms, percentiles and totals are the tracer's summary"
        );
    }
    for line in coverage::lines(&t.kernel, &t.kernel_features, "    ") {
        let _ = writeln!(o, "  {line}");
    }
    let c = &r.check;
    let _ = match c.summary {
        "match" if c.snapshots_differing == 0 => writeln!(
            o,
            "  replay check: all {} snapshots and the summary reproduced exactly",
            c.snapshots_checked
        ),
        _ if c.snapshots_checked == 0 && c.summary == "not_compared" => writeln!(
            o,
            "  replay check: not compared (filtered, windowed, or a part missing)"
        ),
        s => writeln!(
            o,
            "  replay check: {} of {} snapshots differ; summary {s}",
            c.snapshots_differing, c.snapshots_checked
        ),
    };
    for d in &c.differences {
        let _ = writeln!(o, "    {d}");
    }

    let _ = writeln!(o, "\nFINDINGS");
    if r.findings.is_empty() {
        let _ = writeln!(o, "  none: no alert, no limit approached");
    }
    for f in &r.findings {
        let _ = writeln!(o, "  [{}] {}", f.severity.as_str(), f.title);
        if !f.detail.is_empty() {
            let _ = writeln!(o, "      {}", f.detail);
        }
        if !f.advice.is_empty() {
            let _ = writeln!(o, "      what to change: {}", f.advice);
        }
    }

    sockets(&mut o, r);

    let _ = writeln!(o, "\nDWELL (completed, per state)");
    if r.dwell.is_empty() {
        let _ = writeln!(o, "  no completed dwells");
    } else {
        let _ = writeln!(
            o,
            "  {:<12} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "STATE", "COUNT", "P50", "P90", "P99", "MAX"
        );
        for (st, p) in &r.dwell {
            let _ = writeln!(
                o,
                "  {:<12} {:>8} {:>9} {:>9} {:>9} {:>9}",
                st,
                p.count,
                duration(Some(p.p50)),
                duration(Some(p.p90)),
                duration(Some(p.p99)),
                duration(Some(p.max))
            );
        }
        for (st, bars) in &r.histogram {
            let top = bars.iter().map(|b| b.count).max().unwrap_or(1).max(1);
            let _ = writeln!(o, "  {st}");
            for b in bars {
                let len = (b.count as f64 / top as f64 * BAR as f64).ceil() as usize;
                let _ = writeln!(
                    o,
                    "    {:>8} {:<width$} {}",
                    bound(b.upper_ns),
                    "#".repeat(len),
                    b.count,
                    width = BAR
                );
            }
        }
    }
    if !r.age.is_empty() {
        let _ = writeln!(o, "\nAGES OF SOCKETS STILL IN A STATE AT THE END");
        for (st, p) in &r.age {
            let _ = writeln!(
                o,
                "  {:<12} {:>8} p50 {} p99 {} oldest {}",
                st,
                p.count,
                duration(Some(p.p50)),
                duration(Some(p.p99)),
                duration(Some(p.max))
            );
        }
    }

    breakdowns(&mut o, r);

    let shown = r.gauges.len().min(GAUGE_ROWS);
    let _ = writeln!(
        o,
        "\nGAUGES OVER TIME ({} snapshots, every {}{})",
        r.gauges.len(),
        duration(Some(r.trace.interval_ns)),
        if shown < r.gauges.len() {
            format!("; {shown} rows shown, spread over the trace, peaks included")
        } else {
            String::new()
        }
    );
    if let Some(g0) = r.gauges.first() {
        let cols: Vec<&str> = g0.states.keys().copied().collect();
        let _ = write!(o, "  {:<11}", "TIME");
        for c in &cols {
            let _ = write!(o, " {:>11}", c);
        }
        let ct = r.gauges.iter().any(|g| g.conntrack_count.is_some());
        if ct {
            let _ = write!(o, " {:>11}", "CONNTRACK");
        }
        o.push('\n');
        let peaks: Vec<usize> = cols
            .iter()
            .filter_map(|c| {
                let p = r.peaks.get(c)?;
                r.gauges.iter().position(|g| g.offset_ns == p.offset_ns)
            })
            .collect();
        for i in pick_rows(r.gauges.len(), GAUGE_ROWS, &peaks) {
            let g = &r.gauges[i];
            let _ = write!(o, "  {:<11}", offset(g.offset_ns));
            for c in &cols {
                let _ = write!(o, " {:>11}", g.states.get(c).copied().unwrap_or(0));
            }
            if ct {
                let v = g.conntrack_count.map(|n| n.to_string()).unwrap_or_default();
                let _ = write!(o, " {v:>11}");
            }
            o.push('\n');
        }
    }

    let _ = writeln!(o, "\nALERTS ({})", r.alerts.len());
    alerts_by_subject(&mut o, r);
    if !r.alerts.is_empty() {
        let _ = writeln!(o, "  one by one:");
    }
    for a in r.alerts.iter().take(ALERT_ROWS) {
        let _ = writeln!(
            o,
            "  {:<10} {:<20} {}",
            offset(a.offset_ns),
            a.kind,
            a.message
        );
    }
    if r.alerts.len() > ALERT_ROWS {
        let _ = writeln!(
            o,
            "  ... {} more (--json lists all)",
            r.alerts.len() - ALERT_ROWS
        );
    }

    let _ = writeln!(o, "\nSETTINGS");
    for (title, pairs) in r.trace.settings_sections() {
        let _ = writeln!(o, "  {title}:");
        for (k, v) in pairs {
            let _ = writeln!(o, "    {k} = {v}");
        }
    }
    o
}
