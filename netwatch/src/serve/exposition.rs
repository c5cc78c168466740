//! The metrics of one interval as plain data ([`View`]), and their encoding in the
//! Prometheus text format and in OpenMetrics by `prometheus-client`. Pure: the view is built
//! by [`super::Exporter`] from the engine and encoded once per interval; scrapes get the
//! bytes encoded last, so a flood of requests costs no encoding.

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::catalogue::{self, Kind, Metric, BUCKETS_S};

/// A histogram in the exposition's buckets: `counts[i]` values fell in bucket `i`
/// (`counts[BUCKETS_S.len()]` above the last bound).
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub counts: [u64; BUCKETS_S.len() + 1],
    pub count: u64,
    pub sum_s: f64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS_S.len() + 1],
            count: 0,
            sum_s: 0.0,
        }
    }
}

impl Hist {
    /// From (nanoseconds, how many) pairs.
    pub fn from_ns(values: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let bounds = catalogue::bucket_bounds_ns();
        let mut h = Hist::default();
        for (ns, n) in values {
            let i = bounds.partition_point(|&b| b < ns);
            h.counts[i] += n;
            h.count += n;
            h.sum_s += ns as f64 * 1e-9 * n as f64;
        }
        h
    }

    /// (upper bound, count in that bucket) as the encoder wants them, `+Inf` last.
    fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS_S
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

/// Labels that place a socket count: its network namespace and what the node knows of the
/// container its sockets belong to (empty where none).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub netns: String,
    pub container: String,
    pub pod: String,
    pub namespace: String,
}

impl Place {
    fn labels<'a>(&'a self, state: &'a str) -> [(&'static str, &'a str); 5] {
        [
            ("state", state),
            ("netns", &self.netns),
            ("container", &self.container),
            ("pod", &self.pod),
            ("namespace", &self.namespace),
        ]
    }
}

/// One namespace's conntrack table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConntrackSeries {
    pub netns: String,
    pub entries: Option<u64>,
    pub max: Option<u64>,
    pub lifetime: Option<Hist>,
}

/// Everything `/metrics` shows, as of one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub dwell: Vec<(&'static str, Hist)>,
    pub age: Vec<(&'static str, Hist)>,
    pub sockets: Vec<(Place, &'static str, u64)>,
    pub transitions: Vec<(&'static str, &'static str, u64)>,
    pub alerts: Vec<(String, u64)>,
    pub early_ends: Vec<(&'static str, u64)>,
    pub conntrack: Vec<ConntrackSeries>,
    pub records: u64,
    pub lost: u64,
    pub skipped_runs: u64,
    pub bpf_run_s: Vec<(String, f64)>,
    pub version: String,
    pub kernel: String,
    /// Features available on this kernel, comma-separated.
    pub features: String,
}

/// The encoded exposition, in both formats.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub text: Bytes,
    pub openmetrics: Bytes,
    /// Distinct series (sample lines), for the docs' cardinality bound and the tests.
    pub series: usize,
}

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus asks for it first when it
/// can read it); anything else gets the Prometheus text format.
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

#[derive(Debug)]
struct ViewCollector(Arc<View>);

fn describe<'a>(
    enc: &'a mut DescriptorEncoder,
    m: &'a Metric,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    let t = match m.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
        Kind::Info => MetricType::Info,
    };
    enc.encode_descriptor(m.stem(), m.help, None, t)
}

type NoExemplar = std::collections::HashMap<
    usize,
    prometheus_client::metrics::exemplar::Exemplar<Vec<(String, String)>, f64>,
>;

fn histograms(
    enc: &mut DescriptorEncoder,
    m: &Metric,
    key: &'static str,
    hists: &[(impl AsRef<str>, Hist)],
) -> std::fmt::Result {
    // Described even with no series (no conntrack in use yet), as the other families are:
    // a scraper sees every metric netwatch has, and dashboards find their names.
    let mut e = describe(enc, m)?;
    for (label, h) in hists {
        let labels = [(key, label.as_ref())];
        e.encode_family(&labels)?
            .encode_histogram::<Vec<(String, String)>>(
                h.sum_s,
                h.count,
                &h.buckets(),
                None::<&NoExemplar>,
            )?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, m: &Metric, v: u64) -> std::fmt::Result {
    let c = prometheus_client::metrics::counter::ConstCounter::new(v);
    c.encode(describe(enc, m)?)
}

impl Collector for ViewCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let v = &*self.0;
        histograms(&mut enc, &catalogue::TCP_STATE_DWELL, "state", &v.dwell)?;
        {
            let mut e = describe(&mut enc, &catalogue::TCP_SOCKETS)?;
            for (place, state, n) in &v.sockets {
                let labels = place.labels(state);
                e.encode_family(&labels)?.encode_gauge(&(*n as i64))?;
            }
        }
        histograms(&mut enc, &catalogue::TCP_STATE_AGE, "state", &v.age)?;
        {
            let mut e = describe(&mut enc, &catalogue::TCP_TRANSITIONS)?;
            for (from, to, n) in &v.transitions {
                let labels = [("from", *from), ("to", *to)];
                e.encode_family(&labels)?
                    .encode_counter::<Vec<(String, String)>, _, f64>(n, None)?;
            }
        }
        for (m, key, rows) in [
            (&catalogue::ALERTS, "kind", &v.alerts),
            (
                &catalogue::TIMEWAIT_EARLY_ENDS,
                "cause",
                &v.early_ends
                    .iter()
                    .map(|(c, n)| (c.to_string(), *n))
                    .collect(),
            ),
        ] {
            let mut e = describe(&mut enc, m)?;
            for (label, n) in rows {
                let labels = [(key, label.as_str())];
                e.encode_family(&labels)?
                    .encode_counter::<Vec<(String, String)>, _, f64>(n, None)?;
            }
        }
        for (m, pick) in [
            (
                &catalogue::CONNTRACK_ENTRIES,
                (|c: &ConntrackSeries| c.entries) as fn(&ConntrackSeries) -> Option<u64>,
            ),
            (&catalogue::CONNTRACK_MAX, |c: &ConntrackSeries| c.max),
        ] {
            let mut e = describe(&mut enc, m)?;
            for c in &v.conntrack {
                if let Some(n) = pick(c) {
                    let labels = [("netns", c.netns.as_str())];
                    e.encode_family(&labels)?.encode_gauge(&(n as i64))?;
                }
            }
        }
        let lifetimes: Vec<(&str, Hist)> = v
            .conntrack
            .iter()
            .filter_map(|c| Some((c.netns.as_str(), c.lifetime.clone()?)))
            .collect();
        histograms(
            &mut enc,
            &catalogue::CONNTRACK_LIFETIME,
            "netns",
            &lifetimes,
        )?;
        counter(&mut enc, &catalogue::RECORDS, v.records)?;
        counter(&mut enc, &catalogue::RECORDS_LOST, v.lost)?;
        counter(&mut enc, &catalogue::KERNEL_SKIPPED_RUNS, v.skipped_runs)?;
        {
            let mut e = describe(&mut enc, &catalogue::BPF_RUN)?;
            for (program, s) in &v.bpf_run_s {
                let labels = [("program", program.as_str())];
                e.encode_family(&labels)?
                    .encode_counter::<Vec<(String, String)>, _, f64>(s, None)?;
            }
        }
        let build = [
            ("version", v.version.as_str()),
            ("kernel", v.kernel.as_str()),
            ("features", v.features.as_str()),
        ];
        describe(&mut enc, &catalogue::BUILD_INFO)?.encode_info(&build)
    }
}

/// Encodes `view` in both formats.
pub fn encode(view: View) -> Encoded {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ViewCollector(Arc::new(view))));
    let mut text = String::new();
    let mut om = String::new();
    // Writing into a String cannot fail, and the collector only fails on a failed write.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    let _ = prometheus_client::encoding::text::encode(&mut om, &registry);
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Encoded {
        text: Bytes::from(text),
        openmetrics: Bytes::from(om),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample() -> View {
        View {
            dwell: vec![("FIN_WAIT2", Hist::from_ns([(3_110_000_000, 10)]))],
            age: vec![("CLOSE_WAIT", Hist::from_ns([(700 * S, 1)]))],
            sockets: vec![(
                Place {
                    netns: "blue".into(),
                    container: "0123456789ab".into(),
                    pod: String::new(),
                    namespace: String::new(),
                },
                "ESTABLISHED",
                4,
            )],
            transitions: vec![("FIN_WAIT2", "CLOSE", 10)],
            alerts: vec![("paws_reject".into(), 2)],
            early_ends: vec![("syn_reuse", 1)],
            conntrack: vec![ConntrackSeries {
                netns: "4026531840".into(),
                entries: Some(12),
                max: Some(262144),
                lifetime: Some(Hist::from_ns([(120 * S, 3)])),
            }],
            records: 50,
            lost: 0,
            skipped_runs: 1,
            bpf_run_s: vec![("set_state".into(), 0.25)],
            version: "0.1.0".into(),
            kernel: "6.18.15".into(),
            features: "transitions,time_wait".into(),
        }
    }

    #[test]
    fn values_land_in_the_bucket_whose_bound_is_at_or_above_them() {
        let h = Hist::from_ns([(1_000_000, 1), (3_110_000_000, 2), (1000 * S, 1)]);
        assert_eq!(h.counts[0], 1, "1 ms is in le=0.001");
        let i = BUCKETS_S.iter().position(|&b| b == 3.3).unwrap();
        assert_eq!(h.counts[i], 2);
        assert_eq!(h.counts[BUCKETS_S.len()], 1, "above 600 s: +Inf only");
        assert_eq!(h.count, 4);
        assert!((h.sum_s - 1006.221).abs() < 1e-6, "{}", h.sum_s);
    }

    #[test]
    fn both_formats_carry_every_metric_with_its_labels() {
        let e = encode(sample());
        let text = std::str::from_utf8(&e.text).unwrap();
        let om = std::str::from_utf8(&e.openmetrics).unwrap();
        for name in catalogue::METRIC_NAMES {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing:\n{text}"
            );
            assert!(om.contains(&format!("\n{name}")), "{name} missing:\n{om}");
        }
        assert!(om.ends_with("# EOF\n"));
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE netwatch_tcp_transitions_total counter"));
        assert!(text.contains(
            "netwatch_tcp_sockets{state=\"ESTABLISHED\",netns=\"blue\",container=\
             \"0123456789ab\",pod=\"\",namespace=\"\"} 4"
        ));
        assert!(text.contains(
            "netwatch_tcp_state_dwell_seconds_bucket{state=\"FIN_WAIT2\",le=\"3.3\"} 10"
        ));
        assert!(
            text.contains(
                "netwatch_tcp_state_dwell_seconds_bucket{state=\"FIN_WAIT2\",le=\"3\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("netwatch_bpf_run_seconds_total{program=\"set_state\"} 0.25"));
        assert!(text.contains("netwatch_build_info{version=\"0.1.0\",kernel=\"6.18.15\""));
        // 1 dwell + 1 age + 1 lifetime histogram of 27 buckets, sum and count each.
        assert_eq!(e.series, 3 * 29 + 1 + 1 + 1 + 1 + 2 + 3 + 1 + 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut v = sample();
        v.sockets[0].0.container = "a\"b\\c\nd".into();
        let e = encode(v);
        let text = std::str::from_utf8(&e.text).unwrap();
        assert!(text.contains(r#"container="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn openmetrics_is_chosen_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
