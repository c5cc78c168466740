//! The report as one self-contained HTML page: inline CSS and inline SVG drawn here, no
//! script, no font, no request to anywhere, so it opens the same attached to a ticket, in a
//! mail client or offline years later.
//!
//! Plots: sockets per state over time (from the snapshots), a dwell histogram per state, and
//! the alerts on a timeline (a row per kind, each marker titled with its message).

use std::fmt::Write as _;

use super::text::{bound, offset};
use super::{GaugeJson, Report, TraceInfo};
use crate::core::{
    alert_catalogue as catalogue,
    coverage::{self, Coverage},
    text::duration,
};

/// Points per series drawn at most; longer series keep each stretch's highest value.
const MAX_POINTS: usize = 1500;
/// Alerts listed in the table at most (all are on the timeline).
const ALERT_ROWS: usize = 200;

/// A colour per state, fixed so that pages compare at a glance.
pub fn state_colour(st: &str) -> &'static str {
    match st {
        "ESTABLISHED" => "#1f77b4",
        "SYN_SENT" => "#ff7f0e",
        "SYN_RECV" => "#2ca02c",
        "FIN_WAIT1" => "#9467bd",
        "FIN_WAIT2" => "#8c564b",
        "TIME_WAIT" => "#e377c2",
        "CLOSE_WAIT" => "#bcbd22",
        "LAST_ACK" => "#17becf",
        "LISTEN" => "#393b79",
        "CLOSING" => "#843c39",
        _ => "#555555",
    }
}

/// The alerts folded by kind and subject, as the dashboard's pane shows them, with the
/// change to make.
fn alerts_by_subject(o: &mut String, r: &Report) {
    let entries = r.alerts_by_subject.by_severity();
    if entries.is_empty() {
        return;
    }
    o.push_str(
        "<table id=\"alerts-by-subject\"><tr><th>severity</th><th>alert</th><th>subject</th>\
         <th>count</th><th>first</th><th>last</th><th>in all</th><th>what to change</th></tr>",
    );
    for e in entries {
        let _ = write!(
            o,
            "<tr data-kind=\"{}\"><td class=\"{}\">{}</td><td><span class=\"swatch\" \
             style=\"background:{}\"></span>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"advice\">{}</td></tr>",
            esc(&e.kind),
            e.severity.as_str(),
            e.severity.as_str(),
            catalogue::colour(&e.kind),
            esc(e.title()),
            esc(&e.subject),
            e.count,
            esc(&offset(e.first_ns)),
            esc(&offset(e.last_ns)),
            esc(&e.total_text().unwrap_or_default()),
            esc(e.advice())
        );
    }
    o.push_str("</table>\n");
}

/// The dashboard's breakdowns (`b`) of every state with sockets at the end of the window.
fn breakdowns_table(o: &mut String, r: &Report) {
    if r.breakdowns.is_empty() {
        return;
    }
    o.push_str(
        "<h2>Breakdowns at the end (top 5 per state)</h2>\n<table id=\"breakdowns\">\
         <tr><th>state</th><th>by</th><th>key</th><th>sockets</th></tr>",
    );
    for (st, b) in &r.breakdowns {
        for (by, key, n) in b.rows() {
            let _ = write!(
                o,
                "<tr><td>{st}</td><td>{by}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
                esc(&key)
            );
        }
    }
    o.push_str("</table>\n");
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A round step for about `n` ticks over `0..max`.
fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let step = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

fn count_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Plot frame: maps data to pixels inside margins.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn x(&self, frac: f64) -> f64 {
        self.left + frac.clamp(0.0, 1.0) * (self.w - self.left - self.right)
    }
    fn y(&self, frac: f64) -> f64 {
        self.h - self.bottom - frac.clamp(0.0, 1.0) * (self.h - self.top - self.bottom)
    }
}

/// The x axis of time plots: offsets from the start of the trace.
fn time_axis(o: &mut String, f: &Frame, from: u64, to: u64) {
    let span = to.saturating_sub(from).max(1) as f64;
    let step = nice_step(span / 1e9, 8.0) * 1e9;
    let first = (from as f64 / step).ceil() * step;
    // Counted, not summed: far from zero (stamps of a hostile trace) `t + step` rounds back
    // to `t` and a summing loop never ends.
    let ticks = ((to as f64 + 0.5 - first) / step).floor().clamp(-1.0, 64.0) as i64;
    for i in 0..=ticks {
        let t = first + i as f64 * step;
        let x = f.x((t - from as f64) / span);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"##,
            f.top,
            f.h - f.bottom,
            f.h - f.bottom + 16.0,
            esc(&offset(t as u64))
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888"/>"##,
        f.left,
        f.h - f.bottom,
        f.w - f.right,
        f.h - f.bottom
    );
}

/// Keeps at most `max` points, each the highest of its stretch.
fn downsample(points: &[(u64, u64)], max: usize) -> Vec<(u64, u64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| *c.iter().max_by_key(|p| p.1).expect("chunks are not empty"))
        .collect()
}

fn states_plot(o: &mut String, r: &Report) {
    let f = Frame {
        w: 960.0,
        h: 320.0,
        left: 64.0,
        right: 16.0,
        top: 16.0,
        bottom: 36.0,
    };
    let (from, to) = (
        r.window.from_offset_ns,
        r.window.to_offset_ns.max(r.window.from_offset_ns + 1),
    );
    let gauges: &[GaugeJson] = &r.gauges;
    let states: Vec<&str> = gauges
        .first()
        .map(|g| g.states.keys().copied().collect())
        .unwrap_or_default();
    let ymax = gauges
        .iter()
        .flat_map(|g| g.states.values().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = nice_step(ymax, 5.0).max(1.0);
    let top = (ymax / step).ceil() * step;
    let _ = write!(
        o,
        r##"<svg id="plot-states" class="plot" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="sockets per state over time">"##,
        f.w, f.h, f.w, f.h
    );
    let mut v = 0.0;
    while v <= top + 0.5 {
        let y = f.y(v / top);
        let _ = write!(
            o,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            f.left,
            f.w - f.right,
            f.left - 6.0,
            y + 4.0,
            count_label(v)
        );
        v += step;
    }
    time_axis(o, &f, from, to);
    if gauges.is_empty() {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="empty">no snapshots in the window</text>"##,
            f.w / 2.0,
            f.h / 2.0
        );
    }
    let span = (to - from) as f64;
    for st in &states {
        let pts: Vec<(u64, u64)> = gauges
            .iter()
            .map(|g| (g.offset_ns, g.states.get(st).copied().unwrap_or(0)))
            .collect();
        let pts = downsample(&pts, MAX_POINTS);
        let colour = state_colour(st);
        let coords: Vec<String> = pts
            .iter()
            .map(|&(t, n)| {
                format!(
                    "{:.1},{:.1}",
                    f.x((t.saturating_sub(from)) as f64 / span),
                    f.y(n as f64 / top)
                )
            })
            .collect();
        let _ = write!(
            o,
            r##"<g class="series" data-state="{st}"><title>{st}</title><polyline fill="none" stroke="{colour}" stroke-width="2.5" stroke-linejoin="round" points="{}"/>"##,
            coords.join(" ")
        );
        if pts.len() <= 60 {
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(o, r##"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"##);
            }
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>\n<div class=\"legend\">");
    for st in &states {
        let peak = r.peaks.get(st).map_or_else(
            || "no peak".to_owned(),
            |p| format!("peak {} at {}", p.max, offset(p.offset_ns)),
        );
        let _ = write!(
            o,
            r##"<span><i style="background:{}"></i>{st} ({peak})</span>"##,
            state_colour(st)
        );
    }
    o.push_str("</div>\n");
}

/// The count at the end and the peak of every state that held a socket, as in the text.
fn sockets_table(o: &mut String, r: &Report) {
    let rows = r.socket_rows();
    if rows.is_empty() {
        return;
    }
    o.push_str(
        "<table id=\"sockets\"><tr><th>state</th><th>at the end</th><th>peak</th><th>at</th></tr>",
    );
    for (st, n, p) in rows {
        let (max, at) = p.map_or_else(
            || ("-".to_owned(), "no snapshot".to_owned()),
            |p| (p.max.to_string(), offset(p.offset_ns)),
        );
        let _ = write!(
            o,
            "<tr><td>{st}</td><td class=\"n\">{n}</td><td class=\"n\">{max}</td><td class=\"n\">{}</td></tr>",
            esc(&at)
        );
    }
    o.push_str("</table>\n");
}

fn dwell_plots(o: &mut String, r: &Report) {
    // One x axis for all: the bars any state has.
    let mut bounds: Vec<u64> = r
        .histogram
        .values()
        .flat_map(|b| b.iter().map(|b| b.upper_ns))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    o.push_str("<div class=\"grid\">");
    for (st, bars) in &r.histogram {
        let Some(p) = r.dwell.get(st) else { continue };
        let f = Frame {
            w: 300.0,
            h: 190.0,
            left: 44.0,
            right: 8.0,
            top: 10.0,
            bottom: 52.0,
        };
        let ymax = bars.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
        let colour = state_colour(st);
        let _ = write!(
            o,
            r##"<figure><figcaption><b>{st}</b> n={} p50 {} p90 {} p99 {} max {}</figcaption><svg id="plot-dwell-{st}" class="plot plot-dwell" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="dwell histogram of {st}">"##,
            p.count,
            duration(Some(p.p50)),
            duration(Some(p.p90)),
            duration(Some(p.p99)),
            duration(Some(p.max)),
            f.w,
            f.h,
            f.w,
            f.h
        );
        let step = nice_step(ymax, 4.0).max(1.0);
        let top = (ymax / step).ceil() * step;
        let mut v = 0.0;
        while v <= top + 0.5 {
            let y = f.y(v / top);
            let _ = write!(
                o,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                f.left,
                f.w - f.right,
                f.left - 4.0,
                y + 4.0,
                count_label(v)
            );
            v += step;
        }
        let slot = (f.w - f.left - f.right) / bounds.len().max(1) as f64;
        for (i, b) in bounds.iter().enumerate() {
            let x = f.left + slot * i as f64;
            let count = bars
                .iter()
                .find(|x| x.upper_ns == *b)
                .map_or(0, |x| x.count);
            if count > 0 {
                let y = f.y(count as f64 / top);
                let _ = write!(
                    o,
                    r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{} {}: {count}</title></rect>"##,
                    x + 1.0,
                    (slot - 2.0).max(1.0),
                    (f.h - f.bottom - y).max(1.0),
                    st,
                    esc(&bound(*b))
                );
            }
            let lx = x + slot / 2.0;
            let ly = f.h - f.bottom + 8.0;
            let _ = write!(
                o,
                r##"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(45 {lx:.1} {ly:.1})" class="tick">{}</text>"##,
                esc(&bound(*b))
            );
        }
        o.push_str("</svg></figure>");
    }
    if r.histogram.is_empty() {
        o.push_str("<p class=\"empty\">No completed dwells in the window.</p>");
    }
    o.push_str("</div>\n");
}

fn alerts_plot(o: &mut String, r: &Report) {
    let kinds: Vec<&String> = r.alert_counts.keys().collect();
    let row = 28.0;
    let f = Frame {
        w: 960.0,
        h: 44.0 + row * kinds.len().max(1) as f64,
        left: 170.0,
        right: 16.0,
        top: 8.0,
        bottom: 36.0,
    };
    let (from, to) = (
        r.window.from_offset_ns,
        r.window.to_offset_ns.max(r.window.from_offset_ns + 1),
    );
    let _ = write!(
        o,
        r##"<svg id="plot-alerts" class="plot" viewBox="0 0 {} {}" width="{}" height="{}" role="img" aria-label="alerts over time">"##,
        f.w, f.h, f.w, f.h
    );
    time_axis(o, &f, from, to);
    if kinds.is_empty() {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="empty">no alerts in the window</text>"##,
            (f.left + f.w) / 2.0,
            f.top + row / 2.0 + 4.0
        );
    }
    let span = (to - from) as f64;
    for (i, kind) in kinds.iter().enumerate() {
        let y = f.top + row * i as f64 + row / 2.0;
        let colour = catalogue::colour(kind);
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="label">{} ({})</text><line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#f0f0f0"/><g class="alerts" data-kind="{}">"##,
            f.left - 8.0,
            y + 4.0,
            esc(kind),
            r.alert_counts[*kind],
            f.left,
            f.w - f.right,
            esc(kind)
        );
        for a in r.alerts.iter().filter(|a| &&a.kind == kind) {
            let x = f.x(a.offset_ns.saturating_sub(from) as f64 / span);
            let _ = write!(
                o,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="6" fill="{colour}"><title>{} {}</title></circle>"##,
                esc(&a.ts),
                esc(&a.message)
            );
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>\n");
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1000px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:2px 0}table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
th{font-weight:600;border-bottom:1px solid #ccc}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plot{display:block;max-width:100%;height:auto}.tick{font-size:10px;fill:#666}.label{font-size:12px;fill:#333}.empty{fill:#999;font-size:14px}
.legend span{display:inline-block;margin:4px 14px 0 0}.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
.grid{display:flex;flex-wrap:wrap;gap:8px 16px}figure{margin:0}figcaption{font-size:12px;color:#333}
.critical{color:#b00020;font-weight:600}.warning{color:#a05a00;font-weight:600}.info{color:#555}
ul.findings{padding-left:18px}ul.findings li{margin:4px 0}.detail{color:#444}.warn{color:#a05a00}
.advice{color:#1a4d1a}.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
";

/// Which features the trace had, above the findings: on a kernel that hid some, an empty
/// plot there means "not seen", and the reader must know before looking.
fn features(o: &mut String, t: &TraceInfo) {
    let f = &t.kernel_features;
    let class = match Coverage::of(f) {
        Coverage::Partial => "warn",
        Coverage::Complete | Coverage::NotRecorded => "meta",
    };
    let _ = write!(
        o,
        "<p class=\"{class}\" id=\"features\">{}",
        esc(&coverage::headline(&t.kernel, f))
    );
    let items = coverage::lost_items(f);
    if !items.is_empty() {
        o.push_str("</p>\n<ul class=\"features warn\">");
        for i in &items {
            let _ = write!(o, "<li>{}</li>", esc(i));
        }
        o.push_str("</ul>\n");
    } else {
        o.push_str("</p>\n");
    }
}

pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(64 << 10);
    let t = &r.trace;
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>netwatch report: {} {}</title><style>{STYLE}</style></head><body>\n",
        esc(&t.hostname),
        esc(&r.window.from)
    );
    let _ =
        write!(
        o,
        "<h1>netwatch report: {}</h1>\n<p class=\"meta\">{} .. {} ({}){}; kernel {}; written by \
         netwatch {} (trace schema {})</p>\n<p class=\"meta\">{} transitions, {} sockets at \
         start, {} records lost; files: {}</p>\n",
        esc(&t.hostname),
        esc(&r.window.from),
        esc(&r.window.to),
        esc(&duration(Some(r.window.to_offset_ns - r.window.from_offset_ns))),
        esc(&r
            .stopped_by
            .as_ref()
            .map(|s| format!(", stopped by {s}"))
            .unwrap_or_else(|| ", no summary".into())),
        esc(&t.kernel),
        esc(&t.netwatch_version),
        t.schema_version,
        r.transitions,
        r.census,
        r.lost,
        esc(&t.files.join(", "))
    );
    let mut filters = Vec::new();
    let join = |v: Vec<String>| v.join(", ");
    let list = |name: &str, items: Vec<String>| {
        (!items.is_empty()).then(|| format!("{name} {}", items.join(" ")))
    };
    let recorded: Vec<String> = [
        list(
            "--port",
            t.recorded_ports.iter().map(u16::to_string).collect(),
        ),
        list("--addr", t.recorded_addrs.clone()),
        list(
            "--netns",
            t.recorded_netns.iter().map(u32::to_string).collect(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !recorded.is_empty() {
        filters.push(format!("recorded with {}", join(recorded)));
    }
    let ours: Vec<String> = [
        list(
            "--port",
            r.window.ports.iter().map(u16::to_string).collect(),
        ),
        list("--addr", r.window.addrs.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !ours.is_empty() {
        filters.push(format!("this report: {}", join(ours)));
    }
    if !filters.is_empty() {
        let _ = writeln!(o, "<p class=\"meta\">{}</p>", esc(&filters.join("; ")));
    }
    features(&mut o, t);
    for w in &r.warnings {
        let _ = writeln!(o, "<p class=\"warn\">warning: {}</p>", esc(w));
    }

    o.push_str("<h2>Findings</h2>\n<ul class=\"findings\">");
    if r.findings.is_empty() {
        o.push_str("<li>None: no alert, no limit approached.</li>");
    }
    for f in &r.findings {
        let _ = write!(
            o,
            "<li><span class=\"{}\">[{}]</span> {}<br><span class=\"detail\">{}</span>",
            f.severity.as_str(),
            f.severity.as_str(),
            esc(&f.title),
            esc(&f.detail)
        );
        if !f.advice.is_empty() {
            let _ = write!(
                o,
                "<br><span class=\"advice\">what to change: {}</span>",
                esc(&f.advice)
            );
        }
        o.push_str("</li>");
    }
    o.push_str("</ul>\n");

    o.push_str("<h2>Sockets by state over time</h2>\n");
    states_plot(&mut o, r);
    sockets_table(&mut o, r);
    o.push_str("<h2>Dwell histograms (completed dwells per state)</h2>\n");
    dwell_plots(&mut o, r);
    o.push_str("<h2>Alerts</h2>\n");
    alerts_plot(&mut o, r);
    alerts_by_subject(&mut o, r);

    if !r.alerts.is_empty() {
        o.push_str("<table><tr><th>time</th><th>kind</th><th>message</th></tr>");
        for a in r.alerts.iter().take(ALERT_ROWS) {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&offset(a.offset_ns)),
                esc(&a.kind),
                esc(&a.message)
            );
        }
        o.push_str("</table>\n");
        if r.alerts.len() > ALERT_ROWS {
            let _ = writeln!(
                o,
                "<p class=\"meta\">... and {} more (all are on the timeline).</p>",
                r.alerts.len() - ALERT_ROWS
            );
        }
    }

    o.push_str("<h2>Dwell percentiles</h2>\n<table><tr><th>state</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
    for (st, p) in &r.dwell {
        let _ = write!(
            o,
            "<tr><td>{st}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            p.count,
            duration(Some(p.p50)),
            duration(Some(p.p90)),
            duration(Some(p.p99)),
            duration(Some(p.max))
        );
    }
    o.push_str("</table>\n");
    if !r.age.is_empty() {
        o.push_str("<h2>Sockets still in a state at the end: ages</h2>\n<table><tr><th>state</th><th>now</th><th>p50</th><th>p99</th><th>oldest</th></tr>");
        for (st, p) in &r.age {
            let _ = write!(
                o,
                "<tr><td>{st}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                r.states.get(st).copied().unwrap_or(p.count),
                duration(Some(p.p50)),
                duration(Some(p.p99)),
                duration(Some(p.max))
            );
        }
        o.push_str("</table>\n");
    }
    breakdowns_table(&mut o, r);
    o.push_str("<h2>Settings</h2>\n");
    for (title, pairs) in t.settings_sections() {
        let _ = write!(o, "<h3>{}</h3>\n<table>", esc(&title));
        for (k, v) in pairs {
            let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
        }
        o.push_str("</table>\n");
    }
    let _ = writeln!(
        o,
        "<p class=\"meta\">Replay check: {} of {} snapshots differ; summary {}. Command: {}</p>",
        r.check.snapshots_differing,
        r.check.snapshots_checked,
        r.check.summary,
        esc(&t.argv.join(" "))
    );
    o.push_str("</body></html>\n");
    o
}
