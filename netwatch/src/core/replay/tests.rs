//! The reader against damaged and foreign files, and the replay against a trace written the
//! way `trace` writes one: the same serializers, an engine fed the same events.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};

use netwatch_common::state::*;

use super::*;
use crate::core::{
    clock::WallClock,
    event::Transition,
    json::{self, SummaryTotals},
    record::{
        self, AlertJson, CensusJson, FiltersJson, HeaderJson, Record, RecordCounts, SnapshotJson,
        SummaryJson, TransitionJson,
    },
    signals::Alert,
};
use crate::features::KernelFeatures;

pub const S: u64 = 1_000_000_000;
/// The sample trace's clock: mono 0 is 2026-12-01T18:00:00Z.
pub const EPOCH_NS: i128 = 1_796_148_000 * 1_000_000_000;
pub const START: u64 = 1_000 * S;

pub fn clock() -> WallClock {
    WallClock::with_offset(EPOCH_NS)
}

pub fn header(part: u32) -> HeaderJson {
    HeaderJson {
        ts: clock().rfc3339(START),
        mono_ns: START,
        format: record::FORMAT.into(),
        schema_version: record::SCHEMA_VERSION,
        netwatch_version: env!("CARGO_PKG_VERSION").into(),
        run_id: "testhost-1-1".into(),
        part,
        start: clock().rfc3339(START),
        start_mono_ns: START,
        kernel: "6.18.0-test".into(),
        hostname: "testhost".into(),
        interval_ns: S,
        sysctls: BTreeMap::from([
            ("net.ipv4.tcp_max_tw_buckets".to_owned(), "40".to_owned()),
            (
                "net.ipv4.ip_local_port_range".to_owned(),
                "40000 40099".to_owned(),
            ),
        ]),
        netns_sysctls: BTreeMap::new(),
        netns_names: BTreeMap::new(),
        filters: FiltersJson::default(),
        argv: vec!["netwatch".into(), "trace".into()],
        kernel_features: KernelFeatures::all("tp_btf"),
    }
}

fn tr(sock: u64, at: u64, old: u8, new: u8, dwell: Option<u64>, dport: u16) -> Transition {
    Transition {
        mono_ns: at,
        sock_id: sock,
        family: Family::Ipv4,
        saddr: "10.0.0.1".parse().unwrap(),
        sport: if old == CLOSE { 0 } else { 40000 + sock as u16 },
        daddr: "10.0.0.2".parse().unwrap(),
        dport,
        old,
        new,
        dwell_ns: dwell,
        netns: 7,
        ..Transition::example()
    }
}

/// The sample's alert: client ports to 10.0.0.2:80 ran out.
pub fn port_exhaustion() -> Alert {
    Alert::PortExhaustion {
        netns: 7,
        daddr: "10.0.0.2".into(),
        dport: 80,
        failures: 3,
        processes: vec!["curl[42]".into()],
        ports_in_use: 2,
        time_wait_to_destination: Some(2),
        knobs: BTreeMap::from([("net.ipv4.ip_local_port_range", "40000 40001".into())]),
    }
}

/// What the sample trace holds, to check reports against.
pub struct Sample {
    pub bytes: Vec<u8>,
    /// The engine's final view, as the tracer had it.
    pub last: Snapshot,
    pub transitions: u64,
}

/// A trace of 60 connections to :80 and 20 to :443 over 10 s (snapshots at 1..9 s and 12 s), each going through
/// SYN_SENT (1 ms), ESTABLISHED (i ms), FIN_WAIT1, FIN_WAIT2 and TIME_WAIT; with a census
/// (a listener, a TIME_WAIT socket 20 s old), a snapshot every second, a port exhaustion
/// alert at 5 s and a summary. Written as the tracer writes it.
pub fn sample() -> Sample {
    sample_with(80)
}

/// [`sample`] with `n` connections (three quarters to :80), one every 1/8 s.
pub fn sample_with(n: u64) -> Sample {
    let clock = clock();
    let mut out = Vec::new();
    let mut agg = Aggregator::new();
    let h = header(0);
    json::write_line(&mut out, &Record::header(&h));
    let census = [
        (1_000_000u64, LISTEN, 80u16, "0.0.0.0", 0u16, None),
        (1_000_001, TIME_WAIT, 40999, "10.0.0.2", 80, Some(20 * S)),
    ];
    let mut existing = Vec::new();
    for (sock_id, st, sport, daddr, dport, age_ns) in census {
        json::write_line(
            &mut out,
            &Record::Census(CensusJson {
                ts: clock.rfc3339(START),
                mono_ns: START,
                sock_id,
                family: "ipv4".into(),
                saddr: "10.0.0.1".parse().unwrap(),
                sport,
                daddr: daddr.parse().unwrap(),
                dport,
                state: state::name(st).into(),
                age_ns,
                netns: 7,
                pid: None,
                comm: None,
            }),
        );
        existing.push(Existing {
            sock_id,
            state: st,
            sport,
            daddr: daddr.parse().unwrap(),
            dport,
            age_ns,
            owner: None,
            netns: 7,
            cgroup: 0,
        });
    }
    agg.seed(START, existing);

    let mut events: Vec<Transition> = Vec::new();
    for i in 0..n {
        let port = if i < n * 3 / 4 { 80 } else { 443 };
        let t0 = START + i * S / 8;
        let est = i * 1_000_000;
        events.push(tr(i, t0, CLOSE, SYN_SENT, None, port));
        events.push(tr(
            i,
            t0 + 1_000_000,
            SYN_SENT,
            ESTABLISHED,
            Some(1_000_000),
            port,
        ));
        let fin = t0 + 1_000_000 + est;
        events.push(tr(i, fin, ESTABLISHED, FIN_WAIT1, Some(est), port));
        events.push(tr(
            i,
            fin + 100_000,
            FIN_WAIT1,
            FIN_WAIT2,
            Some(100_000),
            port,
        ));
        let mut tw = tr(i, fin + 200_000, FIN_WAIT2, TIME_WAIT, Some(100_000), port);
        tw.timewait = true;
        events.push(tw);
    }
    // Arrival order is not time order (request sockets arrive late): sorted by time but a
    // few swapped, as a ring buffer drained per CPU delivers them.
    events.sort_by_key(|t| t.mono_ns);
    events.swap(10, 11);
    let mut transitions = 0;
    let mut next_snap = START + S;
    let mut records = RecordCounts {
        census: 2,
        ..Default::default()
    };
    let mut alerts = BTreeMap::new();
    let mut alerted = false;
    for t in &events {
        while t.mono_ns > next_snap {
            let snap = agg.snapshot(next_snap, 0);
            json::write_line(
                &mut out,
                &Record::Snapshot(Box::new(SnapshotJson::new(&snap, clock))),
            );
            records.snapshot += 1;
            next_snap += S;
        }
        if !alerted && t.mono_ns > START + 5 * S {
            let a = port_exhaustion();
            json::write_line(
                &mut out,
                &Record::Alert(AlertJson::new(&a, t.mono_ns, clock)),
            );
            records.alert += 1;
            alerts.insert(json::alert_kind(&a), 1);
            alerted = true;
        }
        agg.apply(t);
        transitions += 1;
        records.transition += 1;
        json::write_line(&mut out, &Record::Transition(TransitionJson::new(t, clock)));
    }
    let end = START + (n / 8 + 2) * S;
    let snap = agg.snapshot(end, 0);
    json::write_line(
        &mut out,
        &Record::Snapshot(Box::new(SnapshotJson::new(&snap, clock))),
    );
    records.snapshot += 1;
    let last = agg.peek(end + 1_000, 0);
    let summary = SummaryJson::new(
        &last,
        clock,
        SummaryTotals {
            stopped_by: "sigint",
            start_mono_ns: START,
            records,
            lost_records: 0,
            undecodable: 0,
        },
        alerts,
        h.kernel_features.clone(),
    );
    json::write_line(&mut out, &Record::summary(&summary));
    Sample {
        bytes: out,
        last,
        transitions,
    }
}

fn read_all(name: &str, bytes: &[u8]) -> Result<(Vec<RecordIn>, Vec<String>), ReadError> {
    let mut r = TraceReader::new(name, BufReader::new(bytes))?;
    let mut recs = Vec::new();
    while let Some(rec) = r.next_record()? {
        recs.push(rec);
    }
    Ok((recs, r.finish_warnings()))
}

fn replay(bytes: &[u8], filter: ReplayFilter) -> Replay {
    let (recs, warnings) = read_all("t", bytes).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut r = Replay::new(filter);
    for rec in recs {
        r.apply(rec);
    }
    r.end();
    r
}

#[test]
fn replay_reproduces_every_snapshot_and_the_summary() {
    let s = sample();
    let r = replay(&s.bytes, ReplayFilter::default());
    assert_eq!(r.transitions, s.transitions);
    assert_eq!(r.census, 2);
    assert!(r.snapshots_checked >= 10);
    assert_eq!(r.snapshots_differing, 0, "{:?}", r.differences);
    assert_eq!(r.check_summary(), Some(vec![]));
    let summary = r.summary.as_ref().unwrap();
    assert_eq!(summary.stopped_by, "sigint");
    assert_eq!(summary.alerts["port_exhaustion"], 1);
    let (dwells, alive) = r.view(summary.mono_ns);
    assert_eq!(
        dwells.state(ESTABLISHED).dwell,
        s.last.state(ESTABLISHED).dwell
    );
    assert_eq!(dwells.state(ESTABLISHED).dwell.count, 80);
    // 80 new TIME_WAIT sockets and the census one.
    assert_eq!(alive.state(TIME_WAIT).now, 81);
    assert_eq!(alive.state(LISTEN).now, 1);
    assert_eq!(r.alerts.len(), 1);
    assert_eq!(r.gauges.len(), r.snapshots_checked as usize);
    assert_eq!(r.gauges.last().unwrap().states[TIME_WAIT as usize], 81);
}

/// A trace as the first netwatch of schema version 1 could have written it: every record
/// reduced to the fields the schema requires (the others came within the version, or are
/// optional). It replays as the full one does, nothing skipped as damaged.
#[test]
fn a_trace_with_only_the_required_fields_replays_the_same() {
    let s = sample();
    let schema: serde_json::Value = serde_json::from_str(record::SCHEMA).unwrap();
    let mut bare = Vec::new();
    for line in s.bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let kind = v["type"].as_str().unwrap().to_owned();
        let required = schema["$defs"][&kind]["required"].as_array().unwrap();
        v.as_object_mut()
            .unwrap()
            .retain(|k, _| required.contains(&k.as_str().into()));
        serde_json::to_writer(&mut bare, &v).unwrap();
        bare.push(b'\n');
    }
    assert!(bare.len() < s.bytes.len(), "something was taken out");
    assert_eq!(damaged(&bare), 0);
    let r = replay(&bare, ReplayFilter::default());
    assert_eq!(r.transitions, s.transitions);
    assert_eq!(r.census, 2);
    assert_eq!(r.snapshots_differing, 0, "{:?}", r.differences);
    assert_eq!(r.check_summary(), Some(vec![]));
    assert_eq!(r.alerts.len(), 1);
}

/// An alert's namespace name is read back with its evidence, where the catalogue looks for
/// it ("netns scn-srv" rather than an inode).
#[test]
fn an_alerts_namespace_name_is_read_back_as_evidence() {
    let a = port_exhaustion();
    let mut json = AlertJson::new(&a, START, clock());
    json.netns_name = Some("scn-srv".into());
    let mut line = Vec::new();
    json::write_line(&mut line, &Record::Alert(json));
    let bytes = [header_line("testhost-1-1", 0), line].concat();
    let r = replay(&bytes, ReplayFilter::default());
    let evidence = &r.alerts[0].evidence;
    assert_eq!(r.alerts[0].kind, "port_exhaustion");
    assert_eq!(evidence["netns_name"], "scn-srv");
    assert_eq!(evidence["dport"], 80);
    assert!(!evidence.contains_key("kind") && !evidence.contains_key("message"));
}

#[test]
fn a_port_filter_replays_only_its_connections() {
    let s = sample();
    let r = replay(
        &s.bytes,
        ReplayFilter {
            ports: vec![443],
            ..Default::default()
        },
    );
    assert_eq!(r.transitions, 20 * 5);
    assert_eq!(r.census, 0, "neither census socket has port 443");
    assert_eq!(r.snapshots_checked, 0, "filtered: nothing to compare with");
    assert_eq!(r.check_summary(), None);
    let (dwells, alive) = r.view(START + 13 * S);
    assert_eq!(dwells.state(ESTABLISHED).dwell.count, 20);
    assert_eq!(alive.state(TIME_WAIT).now, 20);
    assert_eq!(r.gauges.last().unwrap().states[TIME_WAIT as usize], 20);
    // The port exhaustion alert is about :80.
    assert!(r.alerts.is_empty());
}

#[test]
fn a_time_window_takes_the_dwells_that_ended_in_it() {
    let s = sample();
    let r = replay(
        &s.bytes,
        ReplayFilter {
            since_mono: Some(START + 2 * S),
            until_mono: Some(START + 4 * S),
            ..Default::default()
        },
    );
    // Connections i start at i/8 s: SYN_SENT ends 1 ms later, so 16 of them in [2 s, 4 s].
    let (dwells, alive) = r.view(START + 4 * S);
    assert_eq!(dwells.state(SYN_SENT).dwell.count, 16);
    // The gauges are the recorded ones, in the window.
    assert!(r
        .gauges
        .iter()
        .all(|g| (START + 2 * S..=START + 4 * S).contains(&g.mono_ns)));
    assert_eq!(r.gauges.len(), 3);
    assert!(alive.state(TIME_WAIT).now > 0);
    assert!(r.alerts.is_empty(), "the alert came at 5 s");
}

#[test]
fn empty_garbage_and_foreign_files_are_refused_clearly() {
    let err = |bytes: &[u8]| match read_all("f.jsonl", bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(bytes)),
    };
    assert!(err(b"").contains("f.jsonl is empty"));
    let e = err(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0");
    assert!(
        e.contains("not a netwatch trace") && e.contains("not JSON"),
        "{e}"
    );
    assert!(err(&[0xffu8; 3 << 20]).contains("not JSON"));
    let e = err(b"name,value\nfoo,1\n");
    assert!(e.contains("not JSON"), "{e}");
    let e = err(b"{\"type\":\"transition\",\"mono_ns\":1}\n");
    assert!(e.contains("a \"transition\" record, not a header"), "{e}");
    let e = err(b"[1,2,3]\n");
    assert!(e.contains("not a record with a \"type\""), "{e}");
    let e = err(b"{\"type\":\"header\",\"format\":\"other\",\"schema_version\":1}\n");
    assert!(e.contains("\"format\" is not \"netwatch-trace\""), "{e}");
    let e = err(b"{\"type\":\"header\",\"format\":\"netwatch-trace\",\"schema_version\":2}\n");
    assert!(
        e.contains("schema version 2") && e.contains("reads version 1"),
        "{e}"
    );
    let e = err(b"{\"type\":\"header\",\"format\":\"netwatch-trace\",\"schema_version\":1}\n");
    assert!(e.contains("header is incomplete"), "{e}");
}

#[test]
fn a_truncated_last_line_is_reported_and_skipped() {
    let s = sample();
    let full = read_all("t", &s.bytes).unwrap().0.len();
    // Cut in the middle of the last record (the summary).
    let cut = &s.bytes[..s.bytes.len() - 40];
    let (recs, warnings) = read_all("t.jsonl", cut).unwrap();
    assert_eq!(recs.len(), full - 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("last line is truncated"),
        "{warnings:?}"
    );
    // Cut exactly at a record boundary: nothing to report.
    let end = s.bytes[..s.bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    let (recs, warnings) = read_all("t", &s.bytes[..=end]).unwrap();
    assert_eq!((recs.len(), warnings.len()), (full - 1, 0));
}

#[test]
fn damaged_and_unknown_lines_in_the_middle() {
    let s = sample();
    let mut lines: Vec<&[u8]> = s.bytes.split_inclusive(|&b| b == b'\n').collect();
    let n = lines.len();
    lines.insert(5, b"\0\0garbage\n");
    lines.insert(7, b"{\"type\":\"transition\",\"mono_ns\":\"oops\"}\n");
    lines.insert(9, b"{\"type\":\"from_the_future\",\"x\":1}\n");
    lines.insert(11, b"\n");
    let bytes = lines.concat();
    let (recs, warnings) = read_all("t.jsonl", &bytes).unwrap();
    // The header is not a record of next_record; the unknown type is, as Other.
    assert_eq!(recs.len(), n - 1 + 1, "{warnings:?}");
    assert_eq!(
        recs.iter().filter(|r| matches!(r, RecordIn::Other)).count(),
        1
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("t.jsonl:6: not JSON"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("t.jsonl:8: a record this netwatch cannot read"));
}

/// Lines skipped by a full read of `bytes`.
fn damaged(bytes: &[u8]) -> u64 {
    let mut r = TraceReader::new("t", BufReader::new(bytes)).unwrap();
    while r.next_record().unwrap().is_some() {}
    r.damaged()
}

#[test]
fn a_huge_line_in_the_middle_is_skipped_and_the_rest_is_read() {
    let s = sample();
    let mut lines: Vec<Vec<u8>> = s
        .bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let n = lines.len();
    let mut huge = vec![b'x'; MAX_LINE + 10];
    huge.push(b'\n');
    lines.insert(5, huge);
    // Exactly the limit, newline included, is still a line (and garbage: skipped too).
    let mut edge = vec![b'y'; MAX_LINE - 1];
    edge.push(b'\n');
    lines.insert(7, edge);
    let bytes = lines.concat();
    let (recs, warnings) = read_all("t.jsonl", &bytes).unwrap();
    assert_eq!(
        recs.len(),
        n - 1,
        "every record after it is read: {warnings:?}"
    );
    assert!(
        warnings[0].starts_with("t.jsonl:6: a line longer than 16 MiB: skipped"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("t.jsonl:8: not JSON"),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("cut short")),
        "{warnings:?}"
    );
    assert_eq!(damaged(&bytes), 2);
    // A huge last line without a newline: skipped, the end of the file.
    let mut tail = s.bytes.clone();
    tail.extend(std::iter::repeat_n(b'z', MAX_LINE + 1));
    let (recs, _) = read_all("t", &tail).unwrap();
    assert_eq!(recs.len(), n - 1);
    assert_eq!(damaged(&tail), 1);
}

#[test]
fn every_kind_of_damage_is_counted() {
    let s = sample();
    assert_eq!(damaged(&s.bytes), 0);
    assert_eq!(
        damaged(&s.bytes[..s.bytes.len() - 40]),
        1,
        "truncated last line"
    );
    let mut lines: Vec<&[u8]> = s.bytes.split_inclusive(|&b| b == b'\n').collect();
    for _ in 0..LISTED_WARNINGS + 3 {
        lines.insert(3, b"garbage\n");
    }
    let bytes = lines.concat();
    assert_eq!(damaged(&bytes), LISTED_WARNINGS as u64 + 3);
    let (_, warnings) = read_all("t", &bytes).unwrap();
    assert!(warnings
        .last()
        .unwrap()
        .contains("3 more damaged lines skipped"));
}

#[test]
fn a_gzip_stream_cut_short_reads_up_to_its_last_whole_record() {
    let s = sample();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&s.bytes).unwrap();
    let gz = gz.finish().unwrap();
    let read_gz = |bytes: &[u8]| {
        let mut r = TraceReader::new(
            "t.jsonl.gz",
            BufReader::new(flate2::read::MultiGzDecoder::new(bytes)),
        )?;
        let mut n = 0;
        while r.next_record()?.is_some() {
            n += 1;
        }
        Ok::<_, ReadError>((n, r.finish_warnings()))
    };
    let (all, w) = read_gz(&gz).unwrap();
    assert!(w.is_empty());
    let (some, w) = read_gz(&gz[..gz.len() * 2 / 3]).unwrap();
    assert!(some > 10 && some < all, "{some} of {all}");
    assert!(w.iter().any(|w| w.contains("cut short")), "{w:?}");
    let e = read_gz(&gz[..5]).unwrap_err().to_string();
    assert!(e.contains("not a netwatch trace"), "{e}");
}

#[test]
fn alert_filter_by_endpoint() {
    let f = ReplayFilter {
        ports: vec![443],
        ..Default::default()
    };
    let alert = |ev: serde_json::Value| RecordedAlert {
        ts: String::new(),
        mono_ns: 0,
        kind: "x".into(),
        message: String::new(),
        evidence: serde_json::from_value(ev).unwrap(),
    };
    assert!(!f.alert(&alert(serde_json::json!({"dport": 80}))));
    assert!(f.alert(&alert(serde_json::json!({"dport": 443}))));
    assert!(f.alert(&alert(serde_json::json!({"listener": "10.0.0.2:443"}))));
    assert!(f.alert(&alert(serde_json::json!({"ports": [80, 443]}))));
    assert!(
        f.alert(&alert(serde_json::json!({"netns": 1}))),
        "no endpoint: kept"
    );
    let f = ReplayFilter {
        addrs: crate::core::filter::AddrFilter::new(vec!["192.0.2.0/24".parse().unwrap()]).unwrap(),
        has_addrs: true,
        ..Default::default()
    };
    assert!(!f.alert(&alert(serde_json::json!({"daddr": "10.0.0.2"}))));
    assert!(f.alert(&alert(serde_json::json!({"addr": "192.0.2.9"}))));
}

/// The sample's header line with its run and part replaced.
fn header_line(run_id: &str, part: u32) -> Vec<u8> {
    let mut h = header(part);
    h.run_id = run_id.into();
    let mut out = Vec::new();
    json::write_line(&mut out, &Record::header(&h));
    out
}

#[test]
fn a_second_header_is_an_error_naming_its_line_never_added() {
    let s = sample();
    let lines = s.bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    let second_header = |bytes: &[u8]| match read_all("t.jsonl", bytes) {
        Err(ReadError::SecondHeader {
            line,
            first,
            second,
            ..
        }) => (line, first, second),
        other => panic!("read on past a second header: {other:?}"),
    };
    // `cat t t`: the same trace twice.
    let twice = [&s.bytes[..], &s.bytes[..]].concat();
    let (line, first, second) = second_header(&twice);
    assert_eq!(line, lines + 1);
    assert_eq!(Some(first), second);
    let msg = read_all("t.jsonl", &twice).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "t.jsonl:{}: a second trace header: the same trace",
            lines + 1
        )) && msg.contains(&format!("head -n {lines} t.jsonl"))
            && msg.contains(&format!("tail -n +{} t.jsonl", lines + 1)),
        "{msg}"
    );
    // Another run after three records of the first.
    let mut other: Vec<u8> = s
        .bytes
        .split_inclusive(|&b| b == b'\n')
        .take(4)
        .flatten()
        .copied()
        .collect();
    other.extend(header_line("otherhost-7-7", 0));
    let (line, _, second) = second_header(&other);
    assert_eq!(
        (line, second.unwrap().run_id.as_str()),
        (5, "otherhost-7-7")
    );
    let msg = read_all("t.jsonl", &other).unwrap_err().to_string();
    assert!(
        msg.contains("two traces (runs testhost-1-1 and otherhost-7-7)"),
        "{msg}"
    );
    // The next part of the same run appended: still two files' worth, said so.
    let mut parts = s.bytes.clone();
    parts.extend(header_line("testhost-1-1", 1));
    let msg = read_all("t.jsonl", &parts).unwrap_err().to_string();
    assert!(msg.contains("parts 0 and 1 of one trace"), "{msg}");
    // A damaged second header (a header missing its fields) is one too.
    let mut damaged_header = s.bytes.clone();
    damaged_header.extend(b"{\"type\":\"header\",\"part\":0}\n");
    let (line, _, second) = second_header(&damaged_header);
    assert_eq!((line, second), (lines + 1, None));
}
