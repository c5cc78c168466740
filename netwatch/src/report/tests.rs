//! Reports of the sample trace (see `core::replay::tests::sample`): the numbers the tracer
//! had, through files plain, gzip and rotated.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::core::filter::AddrFilter;
use crate::core::replay::tests::{sample, sample_with, Sample};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("netwatch-report-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg(traces: Vec<PathBuf>) -> ReportConfig {
    ReportConfig::of(traces)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The summary record of the sample, as JSON.
fn summary_of(s: &Sample) -> Value {
    let last = s.bytes[..s.bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    serde_json::from_slice(&s.bytes[last + 1..]).unwrap()
}

#[test]
fn the_report_has_the_tracers_numbers_plain_and_gzip() {
    let s = sample();
    let dir = TempDir::new("numbers");
    let plain = dir.join("t.jsonl");
    std::fs::write(&plain, &s.bytes).unwrap();
    let gz = dir.join("t.jsonl.gz");
    std::fs::write(&gz, gzip(&s.bytes)).unwrap();
    let summary = summary_of(&s);
    for path in [plain, gz] {
        let r = build(&cfg(vec![path.clone()])).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.complete);
        assert_eq!(r.stopped_by.as_deref(), Some("sigint"));
        assert_eq!(r.transitions, s.transitions);
        assert_eq!(r.census, 2);
        assert_eq!(r.check.summary, "match", "{:?}", r.check.differences);
        assert_eq!(r.check.snapshots_differing, 0);
        let j = serde_json::to_value(&r).unwrap();
        for key in ["states", "dwell", "histogram", "age", "transitions", "lost"] {
            assert_eq!(j[key], summary[key], "{key} of {}", path.display());
        }
        let tw = &j["breakdowns"]["TIME_WAIT"];
        assert_eq!(tw["service_ports"][0]["key"], "80", "{tw}");
        assert_eq!(tw["service_ports"][0]["sockets"], 61, "{tw}");
        assert_eq!(tw["remotes"][0]["sockets"], 81, "{tw}");
        let folded = &j["alerts_by_subject"]["entries"][0];
        assert_eq!(folded["kind"], "port_exhaustion", "{folded}");
        assert_eq!(folded["subject"], "10.0.0.2:80", "{folded}");
        assert_eq!(
            (folded["count"].as_u64(), folded["total"].as_u64()),
            (Some(1), Some(3))
        );
        assert!(j["findings"][0]["advice"]
            .as_str()
            .unwrap()
            .contains("ip_local_port_range"));
        assert_eq!(j["alert_counts"], summary["alerts"]);
        assert_eq!(r.states["TIME_WAIT"], 81);
        assert_eq!(r.peaks["TIME_WAIT"].max, 81);
        assert_eq!(r.gauges.len(), 10);
        assert_eq!(r.alerts[0].kind, "port_exhaustion");
        assert_eq!(
            r.alerts[0].offset_ns,
            r.alerts[0].offset_ns.clamp(5_000_000_000, 5_200_000_000)
        );
        let ids: Vec<&str> = r.findings.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "alert:port_exhaustion",
                "timewait_buckets",
                "ephemeral_ports"
            ],
            "{:#?}",
            r.findings
        );
        assert_eq!(r.trace.files, vec![path.display().to_string()]);
    }
}

/// Each namespace's TIME_WAIT is weighed against its own limit, and the finding names the
/// namespace. Before, the sum over namespaces was set against the lowest limit anywhere: a
/// number no namespace had, against a limit it did not have.
#[test]
fn timewait_limits_are_weighed_per_namespace() {
    let s = sample();
    let dir = TempDir::new("limits");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, &s.bytes).unwrap();
    let mut r = build(&cfg(vec![p])).unwrap();
    let ns = |label: &str, tw: u64, buckets: &str| NetnsPeaks {
        label: label.to_owned(),
        peaks: [("TIME_WAIT", tw)].into(),
        sysctls: Some([("net.ipv4.tcp_max_tw_buckets".to_owned(), buckets.to_owned())].into()),
    };
    r.netns_peaks = vec![
        ns("scn-cli (4026532178)", 5, "5"),
        ns("scn-srv (4026532247)", 100, "10000"),
    ];
    let titles: Vec<String> = findings::findings(&r)
        .into_iter()
        .filter(|f| f.id == "timewait_buckets")
        .map(|f| f.title)
        .collect();
    assert_eq!(
        titles,
        ["TIME_WAIT peaked at 5 in scn-cli (4026532178) of net.ipv4.tcp_max_tw_buckets = 5"]
    );
}

#[test]
fn text_report_shows_the_sections() {
    let s = sample();
    let dir = TempDir::new("text");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, &s.bytes).unwrap();
    let r = build(&cfg(vec![p])).unwrap();
    let t = text::render(&r);
    for want in [
        "host testhost, kernel 6.18.0-test",
        "2026-12-01T18:16:40Z .. 2026-12-01T18:16:52.000001Z",
        "stopped by sigint",
        "400 transitions, 2 sockets at start, 0 records lost",
        "replay check: all 10 snapshots and the summary reproduced exactly",
        "[critical] Ephemeral ports exhausted: 3 connect() failures (EADDRNOTAVAIL) in 1 alert",
        "      the alert: ephemeral ports exhausted towards 10.0.0.2:80: 3 connect()",
        "      what to change: The client has no free local port towards this destination",
        // The alerts folded as the dashboard's pane folds them.
        "  CRIT Ephemeral ports exhausted  10.0.0.2:80                 1     +5.0s     +5.0s  \
         3 connect() failures (EADDRNOTAVAIL)",
        // The dashboard's breakdowns, kept for later.
        "BREAKDOWNS AT THE END",
        "  TIME_WAIT\n    by service port    80 61, 443 20\n    by local port      40000 1,",
        "    by remote address  10.0.0.2 81",
        // Every state's peak and when, those back to 0 at the end included.
        "  SYN_SENT            0        1  +1.0s",
        "  TIME_WAIT          81       81  +12.0s",
        "[warning] TIME_WAIT peaked at 81 of net.ipv4.tcp_max_tw_buckets = 40",
        "ESTABLISHED        80",
        "GAUGES OVER TIME (10 snapshots, every 1.000s)",
        "  one by one:\n  +5.0s      port_exhaustion      ephemeral ports exhausted",
        "net.ipv4.ip_local_port_range = 40000 40099",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
}

#[test]
fn html_is_one_self_contained_page_with_its_plots() {
    let s = sample();
    let dir = TempDir::new("html");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, &s.bytes).unwrap();
    let r = build(&cfg(vec![p])).unwrap();
    let page = html::render(&r);
    assert!(page.starts_with("<!DOCTYPE html>"));
    for external in [
        "http:", "https:", "src=", "<script", "<link", "@import", "url(",
    ] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
    assert!(page.contains(r#"<svg id="plot-states""#));
    assert!(page.contains(r#"<svg id="plot-alerts""#));
    assert!(page.contains(r#"data-state="TIME_WAIT""#));
    for st in ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"] {
        assert!(page.contains(&format!(r#"id="plot-dwell-{st}""#)), "{st}");
    }
    assert_eq!(page.matches("<polyline").count(), r.gauges[0].states.len());
    assert_eq!(
        page.matches(r##"fill="#d62728""##).count(),
        1,
        "one alert marker"
    );
    assert!(html::esc("<a&'\">") == "&lt;a&amp;&#39;&quot;&gt;");
    // The dashboard's alerts pane and breakdowns, kept for later.
    assert!(page.contains(r#"<table id="alerts-by-subject"><tr>"#));
    assert!(page.contains(r#"<tr data-kind="port_exhaustion"><td class="critical">critical</td>"#));
    assert!(page.contains(r#"<td class="advice">The client has no free local port"#));
    assert!(page.contains(r#"<span class="advice">what to change: The client"#));
    assert!(page.contains(
        r#"<tr><td>TIME_WAIT</td><td>service port</td><td>80</td><td class="n">61</td></tr>"#
    ));
    assert!(page.contains(
        r#"<tr><td>TIME_WAIT</td><td>remote address</td><td>10.0.0.2</td><td class="n">81</td></tr>"#
    ));
}

#[test]
fn filters_and_windows() {
    let s = sample();
    let dir = TempDir::new("filters");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, &s.bytes).unwrap();
    let mut c = cfg(vec![p.clone()]);
    c.ports = vec![443];
    let r = build(&c).unwrap();
    assert_eq!(r.transitions, 100);
    assert_eq!(r.dwell["ESTABLISHED"].count, 20);
    assert_eq!(r.check.summary, "not_compared");
    assert!(r.alerts.is_empty());

    let mut c = cfg(vec![p.clone()]);
    c.since = Some(TimeSpec::Offset(Duration::from_secs(2)));
    c.until = Some(TimeSpec::At(
        OffsetDateTime::parse("2026-12-01T18:16:44Z", &Rfc3339).unwrap(),
    ));
    let r = build(&c).unwrap();
    assert_eq!(r.window.from_offset_ns, 2_000_000_000);
    assert_eq!(r.window.to_offset_ns, 4_000_000_000);
    assert_eq!(r.dwell["SYN_SENT"].count, 16);
    assert_eq!(r.gauges.len(), 3);

    let mut c = cfg(vec![p]);
    c.addrs = AddrFilter::new(vec!["192.0.2.0/24".parse().unwrap()]).unwrap();
    c.addr_specs = vec!["192.0.2.0/24".into()];
    let r = build(&c).unwrap();
    assert_eq!(r.transitions, 0);
    assert!(r.dwell.is_empty());
}

#[test]
fn damaged_and_foreign_files() {
    let s = sample();
    let dir = TempDir::new("damaged");
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, &s.bytes[..s.bytes.len() - 30]).unwrap();
    let r = build(&cfg(vec![cut])).unwrap();
    assert!(!r.complete);
    assert!(r.stopped_by.is_none());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("last line is truncated")),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings.iter().any(|w| w.contains("without its summary")));
    assert_eq!(r.transitions, s.transitions, "only the summary was cut");
    assert_eq!(r.findings[0].id, "alert:port_exhaustion");
    assert!(r.findings.iter().any(|f| f.id == "incomplete_trace"));

    let err = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        format!("{:#}", build(&cfg(vec![p])).unwrap_err())
    };
    assert!(err("empty.jsonl", b"").contains("empty.jsonl is empty"));
    assert!(err("pcap", b"\xd4\xc3\xb2\xa1\x02\0\x04\0").contains("not a netwatch trace"));
    let v2 = String::from_utf8(s.bytes.clone()).unwrap().replacen(
        "\"schema_version\":1",
        "\"schema_version\":2",
        1,
    );
    assert!(err("v2.jsonl", v2.as_bytes()).contains("schema version 2"));
    assert!(err("v2.jsonl.gz", &gzip(v2.as_bytes())).contains("schema version 2"));
    let missing = format!(
        "{:#}",
        build(&cfg(vec![dir.join("nope.jsonl")])).unwrap_err()
    );
    assert!(missing.contains("nope.jsonl: no such file"), "{missing}");
}

/// Writes the sample through the real writer with rotation, as `trace --max-size` does.
fn write_rotated(base: &Path, s: &Sample, max_files: u32, gzip: bool) -> crate::writer::Finished {
    use crate::writer::{Files, Framing, Options, Rotation, TraceWriter};
    struct F(Vec<u8>);
    impl Framing for F {
        fn header(&mut self, part: u32) -> Vec<u8> {
            let mut h: Value = serde_json::from_slice(&self.0).unwrap();
            h["part"] = part.into();
            let mut out = serde_json::to_vec(&h).unwrap();
            out.push(b'\n');
            out
        }
        fn part_end(&mut self, part: u32, next: &str) -> Vec<u8> {
            format!(
                "{{\"type\":\"part_end\",\"ts\":\"2026-12-01T18:16:45Z\",\"mono_ns\":1,\"part\":{part},\"next\":\"{next}\"}}\n"
            )
            .into_bytes()
        }
    }
    let mut lines = s.bytes.split_inclusive(|&b| b == b'\n');
    let header = lines.next().unwrap().to_vec();
    let all: Vec<&[u8]> = lines.collect();
    let (summary, records) = all.split_last().unwrap();
    let first = crate::writer::open_part(base, false).unwrap();
    let mut w = TraceWriter::new(
        Files::new(base.to_owned(), false),
        first,
        Options {
            gzip,
            rotation: Some(Rotation {
                max_size: crate::writer::MIN_PART_SIZE,
                max_files,
            }),
            flush_every: Duration::from_secs(3600),
        },
        Box::new(F(header)),
    )
    .unwrap();
    for r in records {
        w.push_with(|b| b.extend_from_slice(r));
    }
    w.finish(summary).unwrap()
}

#[test]
fn rotated_parts_are_followed_and_gaps_reported() {
    let s = sample_with(800);
    assert!(s.bytes.len() > 2 * crate::writer::MIN_PART_SIZE as usize);
    for gz in [false, true] {
        let dir = TempDir::new(if gz { "parts-gz" } else { "parts" });
        let base = dir.join(if gz { "t.jsonl.gz" } else { "t.jsonl" });
        let fin = write_rotated(&base, &s, 100, gz);
        if !gz {
            assert!(fin.files.len() >= 3, "{:?}", fin.files);
        }
        let r = build(&cfg(vec![base.clone()])).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.trace.files.len(), fin.files.len());
        assert_eq!(r.transitions, s.transitions);
        assert_eq!(r.check.summary, "match", "{:?}", r.check.differences);
    }
    let dir = TempDir::new("parts-gap");
    let base = dir.join("t.jsonl");
    let fin = write_rotated(&base, &s, 2, false);
    assert_eq!(fin.files.len(), 2);
    assert!(fin.deleted >= 1);
    let r = build(&cfg(vec![base.clone()])).unwrap();
    assert!(!r.complete);
    // The whole run's numbers come from the summary.
    assert_eq!(r.numbers_from, "summary");
    assert_eq!(r.transitions, s.transitions);
    let summary = summary_of(&s);
    let j = serde_json::to_value(&r).unwrap();
    for key in ["states", "dwell", "histogram", "age"] {
        assert_eq!(j[key], summary[key], "{key}");
    }
    // A port filter needs the records, and says how few are left.
    let mut c = cfg(vec![base]);
    c.ports = vec![80];
    let r80 = build(&c).unwrap();
    assert_eq!(r80.numbers_from, "replay");
    assert!(r80.transitions < s.transitions);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("are missing (deleted by rotation")),
        "{:?}",
        r.warnings
    );
    assert_eq!(r.check.summary, "not_compared");
    // The gauges are still the recorded ones, census included.
    assert_eq!(
        r.gauges.last().unwrap().states["TIME_WAIT"],
        801,
        "{:?}",
        r.gauges.last()
    );
}

/// The sample as a trace of another kernel: the header's and the summary's `kernel` and
/// `kernel_features` replaced (None: removed, as a trace from before they were recorded).
fn sample_on(kernel: &str, features: Option<&crate::features::KernelFeatures>) -> Vec<u8> {
    let s = sample();
    let mut out = Vec::new();
    for line in s.bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut v: Value = serde_json::from_slice(line).unwrap();
        if v["type"] == "header" || v["type"] == "summary" {
            let o = v.as_object_mut().unwrap();
            match features {
                Some(f) => o.insert("kernel_features".into(), serde_json::to_value(f).unwrap()),
                None => o.remove("kernel_features"),
            };
            if v["type"] == "header" {
                v["kernel"] = kernel.into();
            }
        }
        serde_json::to_writer(&mut out, &v).unwrap();
        out.push(b'\n');
    }
    out
}

/// The sample with its header's start (and stamp) replaced by `start`.
fn sample_starting(start: &str) -> Vec<u8> {
    let s = sample();
    let end = s.bytes.iter().position(|&b| b == b'\n').unwrap();
    let mut header: Value = serde_json::from_slice(&s.bytes[..end]).unwrap();
    header["start"] = start.into();
    header["ts"] = start.into();
    let mut out = serde_json::to_vec(&header).unwrap();
    out.extend_from_slice(&s.bytes[end..]);
    out
}

#[test]
fn every_output_says_which_features_the_trace_had() {
    use crate::core::coverage::tests::debian_6_1;
    let dir = TempDir::new("features");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, sample_on("6.1.0-57-cloud-amd64", Some(&debian_6_1()))).unwrap();
    let r = build(&cfg(vec![p.clone()])).unwrap();
    assert_eq!(
        r.trace.kernel_features,
        debian_6_1(),
        "read back as written"
    );
    assert_eq!(r.check.summary, "match", "{:?}", r.check.differences);
    let text = text::render(&r);
    let block = "  Kernel: 6.1.0-57-cloud-amd64; unavailable here:\n      TIME_WAIT and orphaned \
                 FIN_WAIT2 dwell (kmem_cache_alloc's arguments are not readable by tp_btf here)\n      \
                 SYN_RECV dwell (request sockets) and accept-queue wait (kmem_cache_alloc's \
                 arguments are not readable by tp_btf here)\n";
    assert!(text.contains(block), "{text}");
    let j = serde_json::to_value(&r).unwrap();
    let lost: Vec<&str> = j["trace"]["kernel_features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["available"] == false)
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert_eq!(lost, ["time_wait", "syn_recv"]);
    let page = html::render(&r);
    assert!(
        page.contains(
            "<p class=\"warn\" id=\"features\">Kernel: 6.1.0-57-cloud-amd64; unavailable here:</p>"
        ),
        "{page}"
    );
    assert!(page.contains("<li>TIME_WAIT and orphaned FIN_WAIT2 dwell (kmem_cache_alloc&#39;s"));
    insta::assert_snapshot!(text.replace(&p.display().to_string(), "t.jsonl"));

    // Everything available, and a trace from before features were recorded.
    std::fs::write(&p, sample().bytes).unwrap();
    let all = text::render(&build(&cfg(vec![p.clone()])).unwrap());
    assert!(
        all.contains("\n  Kernel: 6.18.0-test; all features available\n"),
        "{all}"
    );
    std::fs::write(&p, sample_on("5.15.0-old", None)).unwrap();
    let r = build(&cfg(vec![p.clone()])).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.trace.kernel_features.0.is_empty());
    assert!(text::render(&r).contains(
        "\n  Kernel: 5.15.0-old; features not recorded (a trace from an older netwatch): \
         taken as all available\n"
    ));
    assert!(html::render(&r).contains("<p class=\"meta\" id=\"features\">Kernel: 5.15.0-old;"));
}

#[test]
fn times_out_of_range_are_said_not_panicked_on() {
    let dir = TempDir::new("year9999");
    for start in ["9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z"] {
        let path = dir.join("t.jsonl");
        std::fs::write(&path, sample_starting(start)).unwrap();
        let mut c = cfg(vec![path]);
        c.since = Some(TimeSpec::Offset(Duration::from_secs(u64::MAX / 2)));
        for since in [None, c.since] {
            c.since = since;
            let r = build(&c).unwrap();
            let shown = text::render(&r) + &html::render(&r) + &serde_json::to_string(&r).unwrap();
            if start.starts_with("9999") && since.is_none() {
                assert!(shown.contains(OUT_OF_RANGE), "{start}");
            }
        }
    }
}

/// The sample with its summary's `skipped_runs` set, or removed (a trace from before it was
/// recorded).
fn sample_skipping(runs: Option<u64>) -> Vec<u8> {
    sample_summary_with("skipped_runs", runs)
}

/// The sample with its summary's `field` set, or removed (a trace from before it was
/// recorded).
fn sample_summary_with(field: &str, value: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in sample()
        .bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let mut v: Value = serde_json::from_slice(line).unwrap();
        if v["type"] == "summary" {
            let o = v.as_object_mut().unwrap();
            match value {
                Some(n) => o.insert(field.into(), n.into()),
                None => o.remove(field),
            };
        }
        serde_json::to_writer(&mut out, &v).unwrap();
        out.push(b'\n');
    }
    out
}

#[test]
fn runs_the_kernel_skipped_are_said_with_what_they_may_have_cost() {
    let dir = TempDir::new("skipped");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, sample_skipping(Some(7))).unwrap();
    let r = build(&cfg(vec![p.clone()])).unwrap();
    assert_eq!(r.skipped_runs, Some(7));
    let out = text::render(&r);
    assert!(
        out.contains(
            "the kernel skipped 7 run(s) of netwatch's programs nested on one CPU; up to 7 \
             transition(s) or other records may be missing"
        ),
        "{out}"
    );
    assert_eq!(serde_json::to_value(&r).unwrap()["skipped_runs"], 7);
    // None skipped, and a trace from before they were recorded: nothing said.
    for runs in [Some(0), None] {
        std::fs::write(&p, sample_skipping(runs)).unwrap();
        let r = build(&cfg(vec![p.clone()])).unwrap();
        assert_eq!(r.skipped_runs, Some(0));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(!text::render(&r).contains("the kernel skipped"));
    }
}

#[test]
fn records_the_output_dropped_are_said() {
    let dir = TempDir::new("output-dropped");
    let p = dir.join("t.jsonl");
    std::fs::write(&p, sample_summary_with("output_dropped", Some(42))).unwrap();
    let r = build(&cfg(vec![p.clone()])).unwrap();
    assert_eq!(r.output_dropped, Some(42));
    let out = text::render(&r);
    assert!(
        out.contains("42 record(s) were dropped, not written"),
        "{out}"
    );
    std::fs::write(&p, sample_summary_with("output_dropped", None)).unwrap();
    let r = build(&cfg(vec![p.clone()])).unwrap();
    assert_eq!(r.output_dropped, Some(0));
    assert!(!text::render(&r).contains("were dropped"));
}
