//! Issue 14's targets, judged from one bench run: the ratio to no tracer (tighter for the
//! live views, which print nothing per transition, than for `--output`), the peers' ratios
//! in the same run, userspace CPU, losses, exact counts, peak RSS, and the kernel's time per
//! connection. Every figure comes from the run; a target with nothing to judge it by says
//! "not measured" rather than passing.

use std::fmt::Write as _;

use super::{
    report::{kernel_ns_per_conn, median, verdict, Report, Summary},
    Mode,
};

/// Live views (dashboard, `--plain`, `serve`): conn/s ratio to no tracer.
const LIVE_RATIO: f64 = 0.90;
/// `--output FILE` with every transition.
const OUTPUT_RATIO: f64 = 0.85;
/// Userspace CPU, % of one core.
const LIVE_CPU_PCT: f64 = 5.0;
const OUTPUT_CPU_PCT: f64 = 15.0;
/// Peak RSS (VmHWM) with the TIME_WAIT table full, and with a million TIME_WAIT sockets.
const RSS_MB: f64 = 64.0;
const MILLION_RSS_MB: f64 = 150.0;
/// All programs together, per connection.
const KERNEL_NS_PER_CONN: f64 = 2500.0;
/// loadgen's connections make 9 records each (the burst test's count, at saturation).
const RECORDS_PER_CONN: f64 = 9.0;
const FIRST_EVENT_S: f64 = 1.0;

fn ratio(s: &Summary, none: Option<f64>) -> Option<f64> {
    none.filter(|n| *n > 0.0).map(|n| s.median / n)
}

/// Writes the targets table for the netwatch modes and the machine-wide targets under it.
pub fn section(o: &mut String, rep: &Report, sums: &[Summary]) {
    let none = sums.iter().find(|s| s.mode == Mode::None).map(|s| s.median);
    let nw: Vec<&Summary> = sums.iter().filter(|s| s.mode.is_netwatch()).collect();
    let peers: Vec<(&str, f64)> = sums
        .iter()
        .filter(|s| matches!(s.mode, Mode::Tcpstates | Mode::Tcplife))
        .filter_map(|s| Some((s.mode.name(), ratio(s, none)?)))
        .collect();

    let _ = writeln!(o, "## Targets (issue 14)\n");
    let _ = write!(o, "| target |");
    for s in &nw {
        let _ = write!(o, " {} |", s.mode.name());
    }
    o.push_str("\n| --- |");
    for _ in &nw {
        o.push_str(" --- |");
    }
    o.push('\n');
    let row = |o: &mut String, name: &str, f: &dyn Fn(&Summary) -> String| {
        let _ = write!(o, "| {name} |");
        for s in &nw {
            let _ = write!(o, " {} |", f(s));
        }
        o.push('\n');
    };
    row(
        o,
        "conn/s ratio to none >= 0.90 (live views), >= 0.85 (`--output`)",
        &|s| {
            let want = if s.mode.is_live() {
                LIVE_RATIO
            } else {
                OUTPUT_RATIO
            };
            match ratio(s, none) {
                Some(r) if r >= want => verdict(true, format!("{r:.2}")),
                Some(r) => verdict(false, format!("{r:.2}, {:.2} short", want - r)),
                None => "not measured (no `none` runs)".into(),
            }
        },
    );
    row(o, "ratio above tcplife's and tcpstates'", &|s| {
        let Some(r) = ratio(s, none) else {
            return "not measured".into();
        };
        if peers.is_empty() {
            return "not measured (no peer runs)".into();
        }
        let detail = peers
            .iter()
            .map(|(name, p)| format!("{name} {p:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        verdict(
            peers.iter().all(|(_, p)| r > *p),
            format!("{r:.2} vs {detail}"),
        )
    });
    row(
        o,
        "userspace <= 5 % of a core (live views), <= 15 % (`--output`)",
        &|s| {
            let want = if s.mode.is_live() {
                LIVE_CPU_PCT
            } else {
                OUTPUT_CPU_PCT
            };
            match s.cpu {
                Some(c) if c <= want => verdict(true, format!("{c:.1} %")),
                Some(c) => verdict(false, format!("{c:.1} %, {:.1} points over", c - want)),
                None => "not measured".into(),
            }
        },
    );
    row(o, "no lost records", &|s| match s.lost {
        Some(0) => verdict(true, format!("0 of {}", s.records)),
        Some(l) => verdict(
            false,
            format!(
                "{l} lost, {:.1} % of {}",
                l as f64 * 100.0 / (s.records + l).max(1) as f64,
                s.records + l
            ),
        ),
        None => "not measured".into(),
    });
    row(
        o,
        "9.00 records per connection (counts exact)",
        &|s| match s.rec_per_conn {
            Some(r) => verdict((r - RECORDS_PER_CONN).abs() < 0.005, format!("{r:.2}")),
            None => "not measured".into(),
        },
    );
    row(
        o,
        "peak RSS (VmHWM) <= 64 MB, TIME_WAIT table full",
        &|s| match s.rss_mb {
            Some(r) if r <= RSS_MB => verdict(true, format!("{r:.1} MB")),
            Some(r) => verdict(false, format!("{r:.1} MB, {:.1} MB over", r - RSS_MB)),
            None => "not measured".into(),
        },
    );
    row(o, "first event within 1 s of start", &|s| {
        let (v, what) = match (s.first_event, s.attach) {
            (Some(f), _) => (f, "first record"),
            (None, Some(a)) => (a, "attached"),
            _ => return "not measured".into(),
        };
        verdict(v <= FIRST_EVENT_S, format!("{v:.2} s, {what}"))
    });
    o.push('\n');

    let _ = writeln!(o, "| machine-wide target | result |\n| --- | --- |");
    let _ = writeln!(
        o,
        "| kernel side, all programs together <= 2.5 µs per connection (with the nested twins; \
         without them in brackets) | {} |",
        kernel_verdict(rep)
    );
    let _ = writeln!(
        o,
        "| peak RSS (VmHWM) <= 150 MB with a million TIME_WAIT sockets | {} |",
        million_verdict(rep)
    );
    o.push('\n');
}

/// From the sweep's run at part 1's client count (the benchmark's saturating churn), else
/// the median over the sweep.
fn kernel_verdict(rep: &Report) -> String {
    let at_clients: Vec<_> = rep
        .sweep
        .iter()
        .filter(|r| r.clients == rep.clients)
        .filter_map(kernel_ns_per_conn)
        .collect();
    let (figures, whence) = if at_clients.is_empty() {
        (
            rep.sweep.iter().filter_map(kernel_ns_per_conn).collect(),
            "median over the sweep".to_string(),
        )
    } else {
        (at_clients, format!("sweep at {} clients", rep.clients))
    };
    let Some(all) = median(figures.iter().map(|f| f.0).collect()) else {
        return "not measured (no sweep with run-time statistics)".into();
    };
    let first = median(figures.iter().filter_map(|f| f.1).collect());
    let detail = format!(
        "{:.2} µs{}, {whence}",
        all / 1000.0,
        first
            .map(|f| format!(" ({:.2} µs)", f / 1000.0))
            .unwrap_or_default()
    );
    verdict(all <= KERNEL_NS_PER_CONN, detail)
}

fn million_verdict(rep: &Report) -> String {
    let Some(m) = &rep.million else {
        return "not measured (no million-socket part)".into();
    };
    let hwm = [Some(&m.running), m.fresh.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|n| n.hwm_kb)
        .max();
    match hwm.map(|k| k as f64 / 1024.0) {
        Some(mb) if mb <= MILLION_RSS_MB => verdict(true, format!("{mb:.1} MB")),
        Some(mb) => verdict(
            false,
            format!("{mb:.1} MB, {:.1} MB over", mb - MILLION_RSS_MB),
        ),
        None => "not measured".into(),
    }
}
