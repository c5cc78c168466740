//! Drawing the dashboard from a [`Snapshot`]: no I/O and no state of its own, so the same
//! frame can be drawn into a test buffer and compared as text.
//!
//! Only ASCII plus ratatui's box-drawing and full-block characters are used: they survive
//! ssh, tmux and old terminal fonts.

use std::fmt::Display;

use netwatch_common::state;
use ratatui::{
    layout::{Alignment, Constraint, Rect},
    style::{Color, Modifier, Style},
    symbols,
    text::{Line, Span},
    widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use super::dashboard::{digit_for, Breakdown, Dashboard, STATES};
use super::layout;
use crate::core::alert_catalogue::Severity;
use crate::core::alert_history::AlertHistory;
use crate::core::snapshot::{Bucket, Peak, Percentiles, Snapshot, StateStats, Talker};
use crate::core::text::duration;

const NO_PERCENTILES: Percentiles = Percentiles {
    count: 0,
    p50: 0,
    p90: 0,
    p99: 0,
    max: 0,
};

/// What a state missing from a malformed or empty snapshot looks like: the dashboard
/// must keep drawing whatever the aggregator hands it.
static NO_STATS: StateStats = StateStats {
    now: 0,
    peak: Peak { max: 0, at: 0 },
    entered: 0,
    dwell: NO_PERCENTILES,
    age: NO_PERCENTILES,
    buckets: Vec::new(),
};

/// Below this inner width the five percentiles go one per line instead of side by side.
const PERCENTILE_CELL: usize = 8;
const PERCENTILES_SIDE_BY_SIDE: u16 = 5 * PERCENTILE_CELL as u16;

fn title(text: String) -> Line<'static> {
    Line::from(Span::styled(
        format!(" {text} "),
        Style::new().add_modifier(Modifier::BOLD),
    ))
}

fn heading() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn stats(snap: &Snapshot, s: u8) -> &StateStats {
    snap.states.get(s as usize).unwrap_or(&NO_STATS)
}

/// `None` before the first full interval, when a rate of 0 would be a lie.
fn rate(snap: &Snapshot, s: u8) -> Option<f64> {
    (snap.interval_ns > 0 && (s as usize) < snap.states.len()).then(|| snap.rate(s))
}

fn format_rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r >= 1000.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn talkers<K>(per_state: &[Vec<Talker<K>>], s: u8) -> &[Talker<K>] {
    per_state.get(s as usize).map(Vec::as_slice).unwrap_or(&[])
}

/// A bar of full blocks, at least one when `value` is nonzero so a small count is not
/// mistaken for none.
fn bar(value: u64, max: u64, width: usize) -> String {
    if max == 0 || value == 0 || width == 0 {
        return String::new();
    }
    let n = ((value as u128 * width as u128) / max as u128).max(1) as usize;
    symbols::block::FULL.repeat(n.min(width))
}

fn right(text: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(text.into()).alignment(Alignment::Right))
}

pub fn render(frame: &mut Frame, dash: &Dashboard, snap: &Snapshot) {
    if dash.alerts_pane() {
        // The pane says everything the banner would, at length.
        let (_, body, footer) = layout::bands(frame.area(), 0);
        render_alerts_pane(frame, body, dash, snap.mono_ns);
        render_footer(frame, footer, snap, dash);
        return;
    }
    let areas = layout::split(frame.area(), dash.alerts.len());
    let s = dash.selected_state();
    if let Some(area) = areas.alerts {
        render_alerts(frame, area, &dash.alerts, snap.mono_ns);
    }
    if let Some(area) = areas.states {
        render_states(frame, area, dash, snap);
    }
    if let Some(area) = areas.dwell {
        render_dwell(frame, area, s, stats(snap, s));
    }
    if let Some(area) = areas.age {
        render_age(frame, area, s, snap);
    }
    if let Some(area) = areas.talkers {
        render_talkers(frame, area, dash.breakdown(), s, snap);
    }
    render_footer(frame, areas.footer, snap, dash);
}

fn severity_style(sev: Severity) -> Style {
    match sev {
        Severity::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warning => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        Severity::Info => Style::new(),
    }
}

/// How long before `now` a stamp of the same clock was: `now`, `12.0s`.
fn since(now: u64, at: u64) -> String {
    match now.saturating_sub(at) {
        0 => "now".to_owned(),
        d => duration(Some(d)),
    }
}

/// `now`, `12.0s ago`.
fn ago(now: u64, at: u64) -> String {
    match since(now, at).as_str() {
        "now" => "now".to_owned(),
        d => format!("{d} ago"),
    }
}

/// Text from the kernel or a trace for one cell of the screen: control characters (the tab
/// in `ip_local_port_range`) would move the cursor, so they become spaces.
fn on_screen(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The latest alerts, one line each, kept from one refresh to the next; when there are more
/// than rows, the last row says how many are hidden and which key shows them all.
fn render_alerts(frame: &mut Frame, area: Rect, alerts: &AlertHistory, now: u64) {
    let rows = area.height as usize;
    let recent = alerts.by_recency();
    let lines: Vec<Line> = recent
        .iter()
        .take(rows)
        .enumerate()
        .map(|(i, e)| {
            let mut text = format!(
                " {} {} x{}, last {}",
                e.title(),
                on_screen(&e.subject),
                e.count,
                ago(now, e.last_ns)
            );
            // The footer names `a` for the details; this row says only what is hidden.
            if i + 1 == rows && recent.len() > rows {
                text.push_str(&format!(" (+{} more: a)", recent.len() - rows));
            }
            Line::from(vec![
                Span::styled(
                    format!("! {}", e.severity.tag()),
                    severity_style(e.severity),
                ),
                Span::styled(text, Style::new().add_modifier(Modifier::BOLD)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

/// Every alert of the trace by kind and subject (most urgent, then latest, first), and the
/// selected one's evidence and the change to make.
fn render_alerts_pane(frame: &mut Frame, area: Rect, dash: &Dashboard, now: u64) {
    let entries = dash.alerts.by_severity();
    let mut list_title = format!("Alerts ({})", entries.len());
    if dash.alerts.unlisted > 0 {
        list_title.push_str(&format!(", {} more not listed", dash.alerts.unlisted));
    }
    if dash.alerts.is_empty() {
        let block = Block::bordered().title(title(list_title));
        let text = Line::styled("no alerts so far (a: back)", dim());
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let (list_area, detail_area) = layout::alerts_pane(area, entries.len());
    let rows = entries.iter().map(|e| {
        Row::new(vec![
            Cell::from(e.severity.tag()).style(severity_style(e.severity)),
            Cell::from(e.title().to_owned()),
            Cell::from(on_screen(&e.subject)),
            right(e.count.to_string()),
            right(since(now, e.first_ns)),
            right(since(now, e.last_ns)),
        ])
    });
    let title_w = entries.iter().map(|e| e.title().len()).max().unwrap_or(0);
    let widths = [
        Constraint::Length(4),
        Constraint::Length(title_w.max(5) as u16),
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    let header = Row::new(vec![
        Cell::from("SEV"),
        Cell::from("ALERT"),
        Cell::from("SUBJECT"),
        right("COUNT"),
        right("FIRST AGO"),
        right("LAST AGO"),
    ])
    .style(heading());
    let hint = " ↑/↓ select  a: back ";
    let mut block = Block::bordered().title(title(list_title));
    if list_area.width as usize > 40 {
        block = block.title_top(Line::styled(hint, dim()).right_aligned());
    }
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">")
        .highlight_spacing(HighlightSpacing::Always);
    let selected = dash.alert_row();
    let mut table_state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, list_area, &mut table_state);

    let Some(e) = entries.get(selected) else {
        return;
    };
    let mut lines = vec![Line::from(vec![
        Span::styled(e.severity.as_str(), severity_style(e.severity)),
        Span::styled(
            format!(
                "  raised {} time{}, first {}, last {}",
                e.count,
                if e.count == 1 { "" } else { "s" },
                ago(now, e.first_ns),
                ago(now, e.last_ns)
            ),
            dim(),
        ),
    ])];
    if let Some(total) = e.total_text() {
        lines.push(Line::from(vec![
            Span::styled("in all: ", heading()),
            Span::raw(total),
        ]));
    }
    lines.push(Line::from(vec![
        Span::styled("latest: ", heading()),
        Span::raw(on_screen(&e.message)),
    ]));
    if !e.advice().is_empty() {
        lines.push(Line::from(vec![
            Span::styled("what to change: ", heading()),
            Span::raw(e.advice()),
        ]));
    }
    let block = Block::bordered().title(title(format!("{} {}", e.title(), on_screen(&e.subject))));
    let detail = Paragraph::new(lines).block(block).wrap(Wrap { trim: true });
    frame.render_widget(detail, detail_area);
}

fn render_states(frame: &mut Frame, area: Rect, dash: &Dashboard, snap: &Snapshot) {
    let selected = dash.selected_state();
    let max_now = STATES
        .iter()
        .map(|&s| stats(snap, s).now)
        .max()
        .unwrap_or(0);
    // Selection marker, key, name, now, peak, rate; what is left becomes a gauge.
    let fixed = 2 + 2 + 12 + 8 + 8 + 7;
    let gauge_w = (area.width.saturating_sub(2) as usize).saturating_sub(fixed + 1);
    let show_gauge = gauge_w >= 6;

    let rows = STATES.iter().enumerate().map(|(i, &s)| {
        let st = stats(snap, s);
        let mut cells = vec![
            Cell::from(digit_for(i).to_string()),
            Cell::from(state::name(s)),
            right(st.now.to_string()),
            right(st.peak.max.to_string()),
            right(format_rate(rate(snap, s))),
        ];
        if show_gauge {
            cells.push(Cell::from(bar(st.now, max_now, gauge_w)));
        }
        let row = Row::new(cells);
        if st.now == 0 && st.entered == 0 && st.peak.max == 0 && s != selected {
            row.style(dim())
        } else {
            row
        }
    });
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
    ];
    let mut header = vec![
        Cell::from("#"),
        Cell::from("STATE"),
        right("NOW"),
        right("PEAK"),
        right("NEW/s"),
    ];
    if show_gauge {
        widths.push(Constraint::Fill(1));
        header.push(Cell::from(""));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(heading()))
        .block(Block::bordered().title(title("TCP states".to_owned())))
        .row_highlight_style(
            Style::new()
                .add_modifier(Modifier::REVERSED)
                .add_modifier(Modifier::BOLD),
        )
        .highlight_symbol(">")
        .highlight_spacing(HighlightSpacing::Always);
    let index = STATES.iter().position(|&s| s == selected);
    let mut table_state = TableState::default().with_selected(index);
    frame.render_stateful_widget(table, area, &mut table_state);
}

/// count/p50/p90/p99/max side by side when they fit (one glance), else one per line.
fn percentile_lines(p: &Percentiles, count_label: &str, width: u16) -> Vec<Line<'static>> {
    let cells = [
        (count_label.to_owned(), p.count.to_string()),
        ("p50".to_owned(), duration(Some(p.p50))),
        ("p90".to_owned(), duration(Some(p.p90))),
        ("p99".to_owned(), duration(Some(p.p99))),
        ("max".to_owned(), duration(Some(p.max))),
    ];
    if width >= PERCENTILES_SIDE_BY_SIDE {
        let w = PERCENTILE_CELL;
        let labels: String = cells.iter().map(|(l, _)| format!("{l:>w$}")).collect();
        let values: String = cells.iter().map(|(_, v)| format!("{v:>w$}")).collect();
        vec![Line::styled(labels, heading()), Line::from(values)]
    } else {
        cells
            .into_iter()
            .map(|(l, v)| {
                Line::from(vec![
                    Span::styled(format!("{l:<6}"), heading()),
                    Span::raw(format!("{v:>9}")),
                ])
            })
            .collect()
    }
}

/// Fewer rows than buckets: neighbours are summed, which stays exact because each bucket
/// already covers everything above the previous bound.
fn fit_buckets(buckets: &[Bucket], rows: usize) -> Vec<Bucket> {
    if rows == 0 {
        return Vec::new();
    }
    let per_row = buckets.len().div_ceil(rows).max(1);
    buckets
        .chunks(per_row)
        .map(|group| Bucket {
            upper_ns: group.last().map_or(0, |b| b.upper_ns),
            count: group.iter().map(|b| b.count).sum(),
        })
        .collect()
}

fn histogram_lines(buckets: &[Bucket], width: u16, rows: usize) -> Vec<Line<'static>> {
    let buckets = fit_buckets(buckets, rows);
    let labels: Vec<String> = buckets
        .iter()
        .map(|b| format!("<={}", duration(Some(b.upper_ns))))
        .collect();
    let counts: Vec<String> = buckets.iter().map(|b| b.count.to_string()).collect();
    let label_w = labels.iter().map(String::len).max().unwrap_or(0);
    let count_w = counts.iter().map(String::len).max().unwrap_or(0);
    let bar_w = (width as usize).saturating_sub(label_w + count_w + 2);
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    buckets
        .iter()
        .zip(labels.iter().zip(&counts))
        .map(|(b, (label, count))| {
            let bar = bar(b.count, max, bar_w);
            Line::from(vec![
                Span::styled(format!("{label:>label_w$} "), dim()),
                Span::styled(format!("{bar:<bar_w$}"), Style::new().fg(Color::Cyan)),
                Span::raw(format!(" {count:>count_w$}")),
            ])
        })
        .collect()
}

fn render_dwell(frame: &mut Frame, area: Rect, s: u8, st: &StateStats) {
    let block = Block::bordered().title(title(format!("{} dwell (completed)", state::name(s))));
    let inner = block.inner(area);
    let lines = if st.dwell.count == 0 {
        vec![Line::styled("no completed dwells yet", dim())]
    } else {
        let mut lines = percentile_lines(&st.dwell, "count", inner.width);
        let rows = (inner.height as usize).saturating_sub(lines.len());
        lines.extend(histogram_lines(&st.buckets, inner.width, rows));
        lines
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The ages of sockets that have not left the state: unlike dwells, these show a leak while
/// it is happening (CLOSE_WAIT ages that only grow).
fn render_age(frame: &mut Frame, area: Rect, s: u8, snap: &Snapshot) {
    let st = stats(snap, s);
    let block = Block::bordered().title(title(format!("{} ages (still open)", state::name(s))));
    let inner = block.inner(area);
    let mut lines = vec![peak_line(st.peak, snap.mono_ns)];
    if st.age.count == 0 {
        lines.push(Line::styled("none open", dim()));
    } else {
        lines.extend(percentile_lines(&st.age, "open", inner.width));
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The selected state's peak and how long ago it was: the states table has the number, this
/// says when (a pile-up that is over is still worth knowing about).
fn peak_line(peak: Peak, now_ns: u64) -> Line<'static> {
    if peak.max == 0 {
        return Line::styled("peak 0", dim());
    }
    let ago = now_ns.saturating_sub(peak.at);
    // "reached": the peak may still hold; "6s ago" alone read as if it were over.
    let when = if ago == 0 {
        "reached now".to_owned()
    } else {
        format!("reached {} ago", duration(Some(ago)))
    };
    Line::from(vec![
        Span::styled("peak ", heading()),
        Span::raw(format!("{} ", peak.max)),
        Span::styled(when, dim()),
    ])
}

/// A breakdown's rows as text keys and counts, whatever it is keyed by.
fn keyed<K: Display>(list: &[Talker<K>]) -> Vec<(String, u64)> {
    list.iter().map(|t| (t.key.to_string(), t.count)).collect()
}

fn talker_rows(list: &[(String, u64)], now: u64, gauge_w: usize) -> Vec<Row<'static>> {
    let max = list.first().map_or(0, |(_, n)| *n);
    list.iter()
        .map(|(key, count)| {
            let share = count
                .saturating_mul(100)
                .checked_div(now)
                .map_or_else(|| "-".to_owned(), |pct| format!("{pct}%"));
            Row::new(vec![
                Cell::from(key.clone()),
                right(count.to_string()),
                right(share),
                Cell::from(bar(*count, max, gauge_w)).style(Style::new().fg(Color::Cyan)),
            ])
        })
        .collect()
}

fn render_talkers(frame: &mut Frame, area: Rect, breakdown: Breakdown, s: u8, snap: &Snapshot) {
    let other = breakdown.toggled();
    let name = format!("{} by {}", state::name(s), breakdown.label());
    let hint = format!(" b: {} ", other.label());
    // Title with its padding, hint, two corners: any less and the hint overwrites the title.
    let hint_fits = name.len() + 2 + hint.chars().count() + 2 <= area.width as usize;
    let mut block = Block::bordered().title(title(name));
    if hint_fits {
        block = block.title_top(Line::styled(hint, dim()).right_aligned());
    }
    let inner = block.inner(area);
    let now = stats(snap, s).now;

    let (list, key_header) = match breakdown {
        Breakdown::ServicePort => (keyed(talkers(&snap.top_service_ports, s)), "SERVICE"),
        Breakdown::LocalPort => (keyed(talkers(&snap.top_local_ports, s)), "PORT"),
        Breakdown::RemoteAddr => (keyed(talkers(&snap.top_remotes, s)), "REMOTE"),
        Breakdown::Process => (keyed(talkers(&snap.top_processes, s)), "PROCESS"),
        Breakdown::Namespace => (
            talkers(&snap.top_netns, s)
                .iter()
                .map(|t| (snap.netns_label(t.key), t.count))
                .collect(),
            "NETNS",
        ),
    };
    if list.is_empty() {
        let text = if now == 0 {
            format!("no sockets in {}", state::name(s))
        } else if breakdown == Breakdown::Process {
            // TIME_WAIT and orphans belong to the kernel, not to a process.
            "no owning process known".to_owned()
        } else {
            "no breakdown yet".to_owned()
        };
        frame.render_widget(Paragraph::new(Line::styled(text, dim())).block(block), area);
        return;
    }

    // IPv6 addresses can take 39 columns; the counts matter more than the tail of one.
    let count_w = 8;
    let share_w = 5;
    let key_w = list
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0)
        .max(key_header.len())
        .min((inner.width as usize).saturating_sub(count_w + share_w + 3));
    let gauge_w = (inner.width as usize).saturating_sub(key_w + count_w + share_w + 3);
    let rows = talker_rows(&list, now, gauge_w);
    let header = Row::new(vec![
        Cell::from(key_header),
        right("SOCKETS"),
        right("SHARE"),
        Cell::from(""),
    ])
    .style(heading());
    let widths = [
        Constraint::Length(key_w as u16),
        Constraint::Length(count_w as u16),
        Constraint::Length(share_w as u16),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths).header(header).block(block);
    frame.render_widget(table, area);
}

/// Lost records mean every number on screen is an undercount, so they are shouted in
/// reverse red rather than left for the engineer to notice.
fn status_spans(snap: &Snapshot, alerts: usize) -> Vec<Span<'static>> {
    let mut spans = vec![
        Span::styled(" transitions ", dim()),
        Span::styled(snap.transitions.to_string(), heading()),
        Span::raw("  "),
    ];
    if snap.lost == 0 {
        spans.push(Span::styled("lost ", dim()));
        spans.push(Span::raw("0"));
    } else {
        spans.push(Span::styled(
            format!(" LOST {} records: counts are low ", snap.lost),
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if alerts > 0 {
        spans.push(Span::styled("  alerts ", dim()));
        spans.push(Span::styled(alerts.to_string(), heading()));
    }
    spans
}

fn help_spans(pane: bool) -> Vec<Span<'static>> {
    let key = Style::new().add_modifier(Modifier::BOLD);
    let mut spans = vec![Span::raw(" ")];
    let keys: &[(&str, &str)] = if pane {
        &[("q", "quit"), ("↑/↓", "select"), ("a", "back to states")]
    } else {
        &[
            ("q", "quit"),
            ("←/→ Tab", "state"),
            ("1-9 0", "pick"),
            ("b", "breakdown"),
            ("a", "alerts"),
        ]
    };
    for (k, what) in keys {
        spans.push(Span::styled(*k, key));
        spans.push(Span::styled(format!(" {what}  "), dim()));
    }
    spans
}

fn render_footer(frame: &mut Frame, area: Rect, snap: &Snapshot, dash: &Dashboard) {
    let status = status_spans(snap, dash.alerts.len());
    let help = help_spans(dash.alerts_pane());
    let lines = if area.height >= 2 {
        vec![Line::from(status), Line::from(help)]
    } else {
        let mut spans = status;
        spans.push(Span::raw(" "));
        spans.extend(help);
        vec![Line::from(spans)]
    };
    frame.render_widget(Paragraph::new(lines), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_show_small_nonzero_counts() {
        assert_eq!(bar(1, 1_000_000, 10), "█");
        assert_eq!(bar(0, 10, 10), "");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
    }

    #[test]
    fn buckets_merge_to_fit_rows_and_keep_totals() {
        let buckets: Vec<Bucket> = (0..10)
            .map(|i| Bucket {
                upper_ns: 1 << i,
                count: i,
            })
            .collect();
        let fitted = fit_buckets(&buckets, 4);
        assert_eq!(fitted.len(), 4);
        assert_eq!(fitted.iter().map(|b| b.count).sum::<u64>(), 45);
        assert_eq!(fitted.last().unwrap().upper_ns, 1 << 9);
        assert_eq!(fit_buckets(&buckets, 20), buckets);
        assert!(fit_buckets(&buckets, 0).is_empty());
    }

    #[test]
    fn rates_say_unknown_before_the_first_interval() {
        assert_eq!(format_rate(None), "-");
        assert_eq!(format_rate(Some(2.24)), "2.2");
        assert_eq!(format_rate(Some(12345.6)), "12346");
    }
}
