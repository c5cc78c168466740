//! Property test: `report`'s reading of a trace against random damage. Traces written the way
//! `trace` writes them are cut, bit-flipped, given invalid UTF-8, out-of-range numbers,
//! lines over 16 MiB and second headers, plain and gzip, by a seeded generator (a failure
//! names its seed, and the same seed makes the same file). For every case:
//!
//! - nothing panics: the reader; and, for one case in [`REPORT_ONE_IN`], the report built
//!   from a file (its replay, findings, text, HTML and JSON renderings);
//! - every line after the header is either a record or counted as damaged (`damaged()`), up
//!   to a second header, which is an error naming its line;
//! - the report's `damaged_lines` (what makes `report` exit 3) is that count, so anything
//!   skipped makes the exit code non-zero;
//! - memory stays bounded: a line of any length costs at most the 16 MiB limit.
//!
//! A seeded generator rather than proptest: the properties are checked over whole files
//! whose damage is itself the input, shrinking would have little to work on, and a seed in
//! the failure message reproduces a case exactly with no new dependency.

use std::io::{BufReader, Read, Write};

use super::tests::{header, sample_with};
use super::*;
use crate::config::ReportConfig;
use crate::core::{json, record::Record};

/// SplitMix64: small, seedable, good enough to pick damage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// Lines over the limit are costly to build and read: one case in this many has one.
const HUGE_ONE_IN: u64 = 60;
/// Cases per run: about 10 s in a debug build on a busy machine.
const CASES: u64 = 400;
/// Cases that also go through the whole report, from a file.
const REPORT_ONE_IN: u64 = 10;

/// One random damage to the lines of a trace (each with its newline).
fn damage(rng: &mut Rng, lines: &mut Vec<Vec<u8>>) {
    // Mostly after the header; now and then the header itself.
    let at = if rng.one_in(25) {
        0
    } else {
        1 + rng.below(lines.len() - 1)
    };
    let line = &mut lines[at];
    match rng.below(7) {
        // Cut short, newline kept: a partial record.
        0 => {
            let keep = rng.below(line.len());
            line.truncate(keep);
            line.push(b'\n');
        }
        // One bit flipped anywhere (a newline made or lost included).
        1 => {
            let i = rng.below(line.len());
            line[i] ^= 1 << rng.below(8);
        }
        // Invalid UTF-8 inside the record.
        2 => {
            let i = rng.below(line.len().saturating_sub(1));
            line.splice(i..i, [0xff, 0xfe, 0xc3]);
        }
        // A number out of any range: past u64, negative, or past f64.
        3 => {
            let text = String::from_utf8_lossy(line).into_owned();
            if let Some(start) = text.find(|c: char| c.is_ascii_digit()) {
                let end = text[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(text.len(), |e| start + e);
                let wild = [
                    "99999999999999999999999",
                    "-1",
                    "1e400",
                    "18446744073709551616",
                ][rng.below(4)];
                *line = format!("{}{wild}{}", &text[..start], &text[end..]).into_bytes();
            }
        }
        // A second header: the same trace's, or another run's.
        4 => {
            let mut h = header(0);
            if rng.one_in(2) {
                h.run_id = "otherhost-9-9".into();
            }
            let mut out = Vec::new();
            json::write_line(&mut out, &Record::header(&h));
            lines.insert(at.max(1), out);
        }
        // Garbage, or nothing but blanks.
        5 => {
            *line = if rng.one_in(3) {
                b"   \t\n".to_vec()
            } else {
                b"{\"type\":\"transition\",\"sock_id\":\n".to_vec()
            };
        }
        // A line over the limit, now and then; else a duplicate of a neighbour.
        _ => {
            if rng.one_in(HUGE_ONE_IN) {
                let mut huge = b"{\"type\":\"alert\",\"message\":\"".to_vec();
                huge.resize(MAX_LINE + 1 + rng.below(4096), b'x');
                huge.push(b'\n');
                *line = huge;
            } else {
                let copy = line.clone();
                lines.insert(at, copy);
            }
        }
    }
}

/// A damaged trace: its bytes, and whether it went through gzip (and was damaged there).
struct Case {
    bytes: Vec<u8>,
    gzip: bool,
}

/// The undamaged trace's lines, made once (an engine in a debug build is slow to start).
fn sample_lines() -> &'static [Vec<u8>] {
    static LINES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        sample_with(12)
            .bytes
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    })
}

fn case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let mut lines = sample_lines().to_vec();
    for _ in 0..1 + rng.below(5) {
        damage(&mut rng, &mut lines);
    }
    let mut bytes = lines.concat();
    // The file cut anywhere: a truncated last line.
    if rng.one_in(4) {
        bytes.truncate(rng.below(bytes.len()) + 1);
    }
    let gzip = rng.one_in(5);
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        bytes = gz.finish().unwrap();
        match rng.below(3) {
            0 => bytes.truncate(10 + rng.below(bytes.len() - 10)),
            1 => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
    }
    Case { bytes, gzip }
}

/// What reading a file gave: records, damaged lines, and the error that ended it.
struct Reading {
    records: u64,
    damaged: u64,
    error: Option<ReadError>,
}

/// Reads a file as the report does, without replaying it (the cases that go through the
/// whole report replay theirs).
fn read(bytes: &[u8], gzip: bool) -> Result<Reading, ReadError> {
    let input: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(bytes)))
    } else {
        Box::new(bytes)
    };
    let mut r = TraceReader::new("t.jsonl", input)?;
    let mut records = 0;
    let error = loop {
        match r.next_record() {
            Ok(Some(_)) => records += 1,
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(
        r.line.capacity() <= MAX_LINE + (1 << 17),
        "a line held past the limit"
    );
    Ok(Reading {
        records,
        damaged: r.damaged(),
        error,
    })
}

/// Lines after the header that are neither empty nor blanks, up to (not including) 1-based
/// line `upto`.
fn countable_lines(bytes: &[u8], upto: Option<u64>) -> u64 {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .skip(1)
        .take_while(|(i, _)| upto.is_none_or(|u| (*i as u64) + 1 < u))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64
}

/// The report that `netwatch report` builds from the file, and its renderings.
fn report_of(bytes: &[u8], seed: u64) -> Result<crate::report::Report, anyhow::Error> {
    let path = std::env::temp_dir().join(format!(
        "netwatch-damage-{}-{seed}.jsonl",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    let cfg = ReportConfig::of(vec![path.clone()]);
    let built = crate::report::build(&cfg);
    let _ = std::fs::remove_file(&path);
    let report = built?;
    let _ = crate::report::text::render(&report);
    let _ = crate::report::html::render(&report);
    serde_json::to_vec(&report).unwrap();
    Ok(report)
}

/// Checks one case; the whole report (slow in a debug build) for one case in
/// [`REPORT_ONE_IN`].
/// Checks one case; what it came to: "refused", "second header", "damaged" or "whole".
fn check(seed: u64) -> &'static str {
    let c = case(seed);
    let full = seed.is_multiple_of(REPORT_ONE_IN);
    let report_of = |bytes: &[u8], seed| full.then(|| report_of(bytes, seed));
    let read = match read(&c.bytes, c.gzip) {
        Ok(r) => r,
        // A header damaged beyond reading: refused as a whole, which report says (exit 1).
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ReadError::NotATrace { .. }
                        | ReadError::Empty { .. }
                        | ReadError::Version { .. }
                ),
                "seed {seed}: {e}"
            );
            if let Some(r) = report_of(&c.bytes, seed) {
                assert!(r.is_err(), "seed {seed}");
            }
            return "refused";
        }
    };
    let report = report_of(&c.bytes, seed);
    match &read.error {
        Some(ReadError::SecondHeader { line, .. }) => {
            if let Some(r) = &report {
                assert!(r.is_err(), "seed {seed}: reported past a second header");
            }
            if !c.gzip {
                let text = c
                    .bytes
                    .split_inclusive(|&b| b == b'\n')
                    .nth(*line as usize - 1);
                let v: Value = serde_json::from_slice(text.unwrap()).unwrap();
                assert_eq!(v["type"], "header", "seed {seed}: line {line}");
                assert_eq!(
                    read.records + read.damaged,
                    countable_lines(&c.bytes, Some(*line)),
                    "seed {seed}: a line before the second header neither read nor counted"
                );
            }
            "second header"
        }
        Some(e) => panic!("seed {seed}: {e}"),
        None => {
            if let Some(r) = report {
                let r = r.unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
                assert_eq!(r.damaged_lines, read.damaged, "seed {seed}");
            }
            if !c.gzip {
                assert_eq!(
                    read.records + read.damaged,
                    countable_lines(&c.bytes, None),
                    "seed {seed}: a line neither read nor counted as damaged"
                );
            }
            if read.damaged > 0 {
                "damaged"
            } else {
                "whole"
            }
        }
    }
}

#[test]
fn random_damage_never_panics_and_every_skipped_line_is_counted() {
    let base = std::env::var("NETWATCH_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e77_0011);
    let cases = if std::env::var_os("NETWATCH_DAMAGE_SEED").is_some() {
        1
    } else {
        CASES
    };
    let mut seen = std::collections::BTreeMap::new();
    for seed in base..base + cases {
        let r = std::panic::catch_unwind(|| check(seed));
        if let Ok(outcome) = r {
            *seen.entry(outcome).or_insert(0) += 1;
        }
        if let Err(p) = r {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("seed {seed} (rerun with NETWATCH_DAMAGE_SEED={seed}): {why}");
        }
    }
    eprintln!("outcomes of {cases} damaged traces: {seen:?}");
    // The generator reaches every outcome, or the properties were checked on too little.
    if cases == CASES {
        for outcome in ["refused", "second header", "damaged", "whole"] {
            assert!(seen.get(outcome).is_some_and(|&n| n >= 5), "{seen:?}");
        }
    }
}

/// Endless bytes of one kind, never held whole: a line as long as anyone likes.
struct Endless {
    left: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        buf[..n].fill(b'z');
        self.left -= n as u64;
        Ok(n)
    }
}

/// A 48 MiB line (three times the limit) costs the reader its 16 MiB limit, no more; the
/// record after it is read.
#[test]
fn a_line_of_any_length_costs_at_most_the_limit() {
    let lines = sample_lines();
    let (head, tail) = (&lines[0], &lines[lines.len() - 1]);
    let input = BufReader::new(
        head.as_slice()
            .chain(Endless { left: 48 << 20 })
            .chain(&b"\n"[..])
            .chain(tail.as_slice()),
    );
    let mut r = TraceReader::new("t", input).unwrap();
    let rec = r.next_record().unwrap();
    assert!(matches!(rec, Some(RecordIn::Summary(_))), "{rec:?}");
    assert_eq!(r.damaged(), 1);
    assert!(
        r.line.capacity() <= MAX_LINE + (1 << 17),
        "{}",
        r.line.capacity()
    );
}
