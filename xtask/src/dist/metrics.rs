//! The metric names that issue 13 fixes for `netwatch serve`, which the Grafana dashboard and
//! the Prometheus rules rely on: the one list that both are checked against (and, once
//! `serve` exists, what the installed package is checked to expose). Labels are listed so
//! that the dashboard's and the rules' `by (...)` and matchers are checked too.

/// What a name is, which tells the series a histogram adds (`_bucket`, `_sum`, `_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
pub struct Metric {
    /// The exposed name (counters with their `_total`).
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Container attribution, on every per-namespace metric.
const NETNS: &[&str] = &["netns", "container", "pod", "namespace"];
const STATE_NETNS: &[&str] = &["state", "netns", "container", "pod", "namespace"];

/// The issue fixes no name for build info; this is the Prometheus convention for it. Its
/// labels are not checked: it is one series per host whatever they are.
const BUILD_INFO: &str = "netwatch_build_info";

pub const METRICS: &[Metric] = &[
    Metric {
        name: "netwatch_tcp_state_dwell_seconds",
        kind: Kind::Histogram,
        labels: &["state"],
    },
    Metric {
        name: "netwatch_tcp_sockets",
        kind: Kind::Gauge,
        labels: STATE_NETNS,
    },
    Metric {
        name: "netwatch_tcp_state_age_seconds",
        kind: Kind::Histogram,
        labels: &["state"],
    },
    Metric {
        name: "netwatch_tcp_transitions_total",
        kind: Kind::Counter,
        labels: &["from", "to"],
    },
    Metric {
        name: "netwatch_alerts_total",
        kind: Kind::Counter,
        labels: &["kind"],
    },
    Metric {
        name: "netwatch_tcp_timewait_early_ends_total",
        kind: Kind::Counter,
        labels: &["cause"],
    },
    Metric {
        name: "netwatch_conntrack_entries",
        kind: Kind::Gauge,
        labels: NETNS,
    },
    Metric {
        name: "netwatch_conntrack_max",
        kind: Kind::Gauge,
        labels: NETNS,
    },
    Metric {
        name: "netwatch_conntrack_entry_lifetime_seconds",
        kind: Kind::Histogram,
        labels: NETNS,
    },
    Metric {
        name: "netwatch_records_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "netwatch_records_lost_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "netwatch_kernel_skipped_runs_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "netwatch_bpf_run_seconds_total",
        kind: Kind::Counter,
        labels: &["program"],
    },
    Metric {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        labels: &["version", "kernel", "features"],
    },
];

/// The values of `netwatch_alerts_total`'s `kind` that issue 13 names (the rules alert on
/// each; netwatch may add more).
#[cfg(test)]
pub const ALERT_KINDS: &[&str] = &[
    "paws_reject",
    "nat_suspected",
    "synack_retransmits",
    "listen_overflow",
    "timewait_overflow",
    "port_exhaustion",
    "conntrack_full",
];

/// Labels every series has once scraped, whatever the exporter says.
pub const TARGET_LABELS: &[&str] = &["instance", "job", "le"];

/// The metric a series name belongs to: the name itself, or a histogram's `_bucket`, `_sum`
/// or `_count` series.
pub fn metric_of(series: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| {
        series == m.name
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(m.name)))
    })
}

/// Whether a scrape of `/metrics` (Prometheus text or OpenMetrics) declares `metric`: its
/// `# TYPE` line names it (OpenMetrics names a counter without `_total`) or a sample of it is
/// there. A labelled family with no series yet still has its `# TYPE` line.
pub fn exposed(scrape: &str, metric: &Metric) -> bool {
    let family = match metric.kind {
        Kind::Counter => metric.name.strip_suffix("_total").unwrap_or(metric.name),
        _ => metric.name,
    };
    scrape.lines().any(|line| {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            return name == metric.name || name == family;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        metric_of(name).is_some_and(|m| m.name == metric.name)
    })
}

/// Labels on the scrape's samples of our metrics that the list does not have, as
/// `metric{label}`: a label outside the list is a new one to agree on, or one of those the
/// issue forbids for their cardinality (pid, ephemeral port, remote address).
pub fn unlisted_labels(scrape: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some(metric) = metric_of(name).filter(|m| m.name != BUILD_INFO) else {
            continue;
        };
        for label in label_names(rest) {
            let known = metric.labels.contains(&label) || TARGET_LABELS.contains(&label);
            let entry = format!("{}{{{label}}}", metric.name);
            if !known && !found.contains(&entry) {
                found.push(entry);
            }
        }
    }
    found
}

/// The names in `a="x",b="y\"}"} 1`: quoted values may hold commas, braces and escapes.
fn label_names(labels: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = labels;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim_start_matches([',', ' ']).trim();
        if name.starts_with('}') || name.is_empty() {
            break;
        }
        names.push(name);
        let value = rest[eq + 1..].trim_start().strip_prefix('"').unwrap_or("");
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        });
        let Some(end) = end else {
            break;
        };
        rest = &value[end + 1..];
    }
    names
}

/// Every `netwatch_*` name in a PromQL expression (or any text).
#[cfg(test)]
pub fn names_in(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("netwatch_") {
        // Not the tail of a longer identifier (`my_netwatch_x`).
        let before = rest[..start].chars().next_back();
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_series_belong_to_their_histogram_and_only_there() {
        let dwell = metric_of("netwatch_tcp_state_dwell_seconds_bucket").unwrap();
        assert_eq!(dwell.name, "netwatch_tcp_state_dwell_seconds");
        assert!(metric_of("netwatch_records_total_bucket").is_none());
        assert!(metric_of("netwatch_tcp_socket").is_none());
    }

    #[test]
    fn labels_outside_the_list_are_named_once() {
        let scrape = "# TYPE netwatch_tcp_sockets gauge\n\
                      netwatch_tcp_sockets{state=\"LISTEN\",netns=\"1\",pid=\"7\"} 1\n\
                      netwatch_tcp_sockets{state=\"A,b=\\\"}\",pid=\"8\"} 1\n\
                      netwatch_tcp_state_dwell_seconds_bucket{state=\"X\",le=\"1\"} 0\n\
                      other_metric{anything=\"1\"} 1\n";
        assert_eq!(unlisted_labels(scrape), ["netwatch_tcp_sockets{pid}"]);
        assert_eq!(label_names("a=\"1\", b=\"x}\"} 3"), ["a", "b"]);
    }

    #[test]
    fn names_are_found_in_promql() {
        let expr = "histogram_quantile(0.5, sum by (le) (rate(netwatch_tcp_state_dwell_seconds_\
                    bucket{state=\"TIME_WAIT\"}[5m]))) / my_netwatch_x + netwatch_records_total";
        assert_eq!(
            names_in(expr),
            [
                "netwatch_tcp_state_dwell_seconds_bucket",
                "netwatch_records_total"
            ]
        );
    }

    #[test]
    fn a_scrape_declares_families_in_either_format() {
        let lost = metric_of("netwatch_records_lost_total").unwrap();
        assert!(exposed("# TYPE netwatch_records_lost counter\n", lost));
        assert!(exposed(
            "# TYPE netwatch_records_lost_total counter\n",
            lost
        ));
        assert!(exposed("netwatch_records_lost_total 0\n", lost));
        assert!(!exposed("# TYPE netwatch_records counter\n", lost));
        let dwell = metric_of("netwatch_tcp_state_dwell_seconds").unwrap();
        assert!(exposed(
            "netwatch_tcp_state_dwell_seconds_bucket{state=\"FIN_WAIT2\",le=\"1\"} 3\n",
            dwell
        ));
    }
}
