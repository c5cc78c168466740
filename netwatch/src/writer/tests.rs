//! The writer against an in-memory disk that fills up on cue, and against real files for
//! naming.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;

use super::*;

/// A disk of files by part number with an optional number of free bytes; writes past that
/// are short and then fail with ENOSPC, as the kernel does.
#[derive(Debug, Default)]
pub struct Disk {
    pub files: BTreeMap<u32, Vec<u8>>,
    pub free: Option<u64>,
    pub syncs: u32,
    /// Parts whose name was deleted while open.
    pub unlinked: Vec<u32>,
}

pub type SharedDisk = Rc<RefCell<Disk>>;

pub struct MemFile {
    part: u32,
    disk: SharedDisk,
}

impl Write for MemFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut d = self.disk.borrow_mut();
        let n = match d.free {
            Some(0) if !buf.is_empty() => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(free) => buf.len().min(free as usize),
            None => buf.len(),
        };
        if let Some(free) = d.free.as_mut() {
            *free -= n as u64;
        }
        d.files
            .entry(self.part)
            .or_default()
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PartFile for MemFile {
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        let file = d.files.entry(self.part).or_default();
        let cut = file.len().saturating_sub(len as usize) as u64;
        file.truncate(len as usize);
        if let Some(free) = d.free.as_mut() {
            *free += cut;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.disk.borrow_mut().syncs += 1;
        Ok(())
    }

    fn unlinked(&self) -> bool {
        self.disk.borrow().unlinked.contains(&self.part)
    }
}

pub struct MemStorage {
    pub disk: SharedDisk,
}

impl Storage for MemStorage {
    type File = MemFile;

    fn create(&mut self, part: u32) -> io::Result<MemFile> {
        self.disk.borrow_mut().files.insert(part, Vec::new());
        Ok(MemFile {
            part,
            disk: self.disk.clone(),
        })
    }

    fn remove(&mut self, part: u32) -> io::Result<()> {
        self.disk
            .borrow_mut()
            .files
            .remove(&part)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn path(&self, part: u32) -> PathBuf {
        part_path(Path::new("/mem/trace.jsonl"), part)
    }
}

struct TestFraming;

impl Framing for TestFraming {
    fn header(&mut self, part: u32) -> Vec<u8> {
        format!("{{\"type\":\"header\",\"part\":{part}}}\n").into_bytes()
    }
    fn part_end(&mut self, part: u32, next: &str) -> Vec<u8> {
        format!("{{\"type\":\"part_end\",\"part\":{part},\"next\":\"{next}\"}}\n").into_bytes()
    }
}

fn writer(disk: &SharedDisk, opts: Options) -> TraceWriter<MemStorage> {
    let mut storage = MemStorage { disk: disk.clone() };
    let first = storage.create(0).unwrap();
    TraceWriter::new(storage, first, opts, Box::new(TestFraming)).unwrap()
}

fn plain() -> Options {
    Options {
        gzip: false,
        rotation: None,
        flush_every: Duration::from_secs(3600),
    }
}

fn record(i: u64) -> String {
    format!(
        "{{\"type\":\"transition\",\"seq\":{i},\"pad\":\"{}\"}}\n",
        "x".repeat(200)
    )
}

fn push(w: &mut TraceWriter<MemStorage>, i: u64) {
    w.push_with(|buf| buf.extend_from_slice(record(i).as_bytes()));
}

fn text(bytes: &[u8], gzip: bool) -> String {
    if !gzip {
        return String::from_utf8(bytes.to_vec()).unwrap();
    }
    let mut out = String::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("a valid (multi-member) gzip file");
    out
}

/// Every line is a whole JSON object, and the text ends with a newline.
fn check_whole_records(text: &str) -> Vec<serde_json::Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "ends mid-record: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn seqs(records: &[serde_json::Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

#[test]
fn header_at_once_records_at_flush_summary_at_finish() {
    let disk = SharedDisk::default();
    let mut w = writer(&disk, plain());
    assert_eq!(
        text(&disk.borrow().files[&0], false),
        "{\"type\":\"header\",\"part\":0}\n"
    );
    for i in 0..10 {
        push(&mut w, i);
    }
    assert!(!w.due(Instant::now()), "flush interval not reached");
    assert_eq!(
        disk.borrow().files[&0].len(),
        TestFraming.header(0).len(),
        "records wait for the flush"
    );
    w.flush().unwrap();
    let fin = w.finish(b"{\"type\":\"summary\"}\n").unwrap();
    let recs = check_whole_records(&text(&disk.borrow().files[&0], false));
    assert_eq!(recs.len(), 12);
    assert_eq!(recs[0]["type"], "header");
    assert_eq!(seqs(&recs), (0..10).collect::<Vec<_>>());
    assert_eq!(recs[11]["type"], "summary");
    assert_eq!(fin.files, vec![PathBuf::from("/mem/trace.jsonl")]);
    assert!(disk.borrow().syncs >= 1, "finish syncs");
}

#[test]
fn flush_is_due_on_the_interval() {
    let disk = SharedDisk::default();
    let mut w = writer(
        &disk,
        Options {
            flush_every: Duration::from_millis(10),
            ..plain()
        },
    );
    assert!(!w.due(Instant::now()), "nothing pending");
    push(&mut w, 1);
    assert!(w.due(Instant::now() + Duration::from_millis(20)));
}

#[test]
fn a_full_disk_leaves_the_file_at_its_last_whole_record() {
    for gzip in [false, true] {
        let disk = SharedDisk::default();
        let mut w = writer(&disk, Options { gzip, ..plain() });
        // Blocks of whole records until the disk is full, the last one failing partway.
        let mut written_ok = Vec::new();
        let mut failure = None;
        for round in 0..50u64 {
            if round == 3 {
                disk.borrow_mut().free = Some(if gzip { 150 } else { 700 });
            }
            let batch: Vec<u64> = (round * 5..round * 5 + 5).collect();
            for &i in &batch {
                push(&mut w, i);
            }
            match w.flush() {
                Ok(()) => written_ok.extend(batch),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let err = failure.expect("the disk filled up");
        let msg = err.to_string();
        assert!(
            msg.contains("/mem/trace.jsonl")
                && msg.contains("ENOSPC")
                && msg.contains("last whole record"),
            "{msg}"
        );
        assert!(w.failed());
        let on_disk = disk.borrow().files[&0].clone();
        let WriteError::Write { kept, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            kept,
            on_disk.len() as u64,
            "cut back to what it says it kept"
        );
        let recs = check_whole_records(&text(&on_disk, gzip));
        assert_eq!(recs[0]["type"], "header");
        assert!(written_ok.len() >= 15);
        if gzip {
            assert_eq!(seqs(&recs), written_ok, "exactly the whole members");
        } else {
            // Every record that fitted whole: those of the whole blocks and the first ones of
            // the block that failed (700 bytes is room for 2 more and part of a third).
            let mut expected = written_ok.clone();
            let next = expected.last().unwrap() + 1;
            expected.extend([next, next + 1]);
            assert_eq!(seqs(&recs), expected, "every whole record that fitted");
        }
        // Nothing more is written, and finishing leaves the file as it is.
        push(&mut w, 999);
        w.flush().unwrap();
        disk.borrow_mut().free = None;
        w.finish(b"{\"type\":\"summary\"}\n").unwrap();
        assert_eq!(disk.borrow().files[&0], on_disk);
    }
}

#[test]
fn gzip_round_trip_is_valid_after_every_flush() {
    let disk = SharedDisk::default();
    let mut w = writer(
        &disk,
        Options {
            gzip: true,
            ..plain()
        },
    );
    for i in 0..1000 {
        push(&mut w, i);
        if i % 100 == 99 {
            w.flush().unwrap();
            // A reader at this moment (the tracer killed now) sees whole records.
            let recs = check_whole_records(&text(&disk.borrow().files[&0], true));
            assert_eq!(seqs(&recs).len() as u64, i + 1);
        }
    }
    w.finish(b"{\"type\":\"summary\"}\n").unwrap();
    let bytes = disk.borrow().files[&0].clone();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
    let raw: usize = (0..1000).map(|i| record(i).len()).sum();
    assert!(bytes.len() * 5 < raw, "compressed {} of {raw}", bytes.len());
    let recs = check_whole_records(&text(&bytes, true));
    assert_eq!(seqs(&recs), (0..1000).collect::<Vec<_>>());
    assert_eq!(recs.last().unwrap()["type"], "summary");
}

#[test]
fn rotation_keeps_every_file_under_its_size_and_self_describing() {
    for gzip in [false, true] {
        let disk = SharedDisk::default();
        let max_size = MIN_PART_SIZE;
        let mut w = writer(
            &disk,
            Options {
                gzip,
                rotation: Some(Rotation {
                    max_size,
                    max_files: 4,
                }),
                ..plain()
            },
        );
        let n = if gzip { 40_000 } else { 4_000 };
        for i in 0..n {
            push(&mut w, i);
            if i % 97 == 0 {
                w.flush().unwrap();
            }
        }
        let fin = w.finish(b"{\"type\":\"summary\"}\n").unwrap();
        let d = disk.borrow();
        let parts: Vec<u32> = d.files.keys().copied().collect();
        let last = *parts.last().unwrap();
        assert!(last >= 4, "gzip={gzip}: {parts:?}");
        // The first file and the newest three.
        assert_eq!(parts, vec![0, last - 2, last - 1, last], "gzip={gzip}");
        assert_eq!(fin.deleted, last - 3);
        assert_eq!(
            fin.files,
            parts
                .iter()
                .map(|&p| part_path(Path::new("/mem/trace.jsonl"), p))
                .collect::<Vec<_>>()
        );
        let mut all = Vec::new();
        for &p in &parts {
            let bytes = &d.files[&p];
            assert!(
                bytes.len() as u64 <= max_size,
                "part {p}: {} bytes",
                bytes.len()
            );
            let recs = check_whole_records(&text(bytes, gzip));
            assert_eq!(recs[0]["type"], "header");
            assert_eq!(recs[0]["part"], p);
            let end = recs.last().unwrap();
            if p == last {
                assert_eq!(end["type"], "summary");
            } else {
                assert_eq!(end["type"], "part_end");
                assert_eq!(end["part"], p);
                assert_eq!(end["next"], format!("trace.jsonl.{}", p + 1).as_str());
            }
            all.extend(seqs(&recs));
        }
        // In order, with the gap of the deleted parts only.
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*all.last().unwrap(), n - 1);
        let gaps = all.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(gaps, 1, "one gap, where parts were deleted");
    }
}

#[test]
fn dropping_the_writer_keeps_buffered_records() {
    let disk = SharedDisk::default();
    let mut w = writer(&disk, plain());
    for i in 0..3 {
        push(&mut w, i);
    }
    drop(w);
    let recs = check_whole_records(&text(&disk.borrow().files[&0], false));
    assert_eq!(seqs(&recs), vec![0, 1, 2]);
}

#[test]
fn blocks_end_on_record_boundaries() {
    assert_eq!(block_end(b"ab\ncd\nef\n", 100), 9);
    assert_eq!(block_end(b"ab\ncd\nef\n", 7), 6);
    assert_eq!(block_end(b"ab\ncd\nef\n", 5), 3);
    assert_eq!(
        block_end(b"abcdef\ngh\n", 3),
        7,
        "a long record is its own block"
    );
}

#[test]
fn part_names() {
    let p = |s: &str, n| part_path(Path::new(s), n).display().to_string();
    assert_eq!(p("/t/trace.jsonl", 0), "/t/trace.jsonl");
    assert_eq!(p("/t/trace.jsonl", 3), "/t/trace.jsonl.3");
    assert_eq!(p("/t/trace.jsonl.gz", 12), "/t/trace.jsonl.12.gz");
    assert_eq!(p("trace", 1), "trace.1");
    assert!(is_gzip_name(Path::new("a.jsonl.gz")));
    assert!(!is_gzip_name(Path::new("a.jsonl.gzip")));

    let base = Path::new("/t/trace.jsonl.gz");
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.7.gz")), Some(7));
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.07.gz")), None);
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.gz.7")), None);
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.x.gz")), None);
    let base = Path::new("/t/trace.jsonl");
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.2")), Some(2));
    assert_eq!(part_number(base, Path::new("/t/trace.jsonl.2.gz")), None);
}

#[test]
fn existing_parts_are_found_next_to_the_first() {
    let dir = std::env::temp_dir().join(format!("netwatch-parts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("t.jsonl");
    for name in [
        "t.jsonl",
        "t.jsonl.2",
        "t.jsonl.10",
        "t.jsonl.1",
        "t.jsonl.bak",
        "u.jsonl.1",
    ] {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    let found: Vec<u32> = existing_parts(&base).into_iter().map(|(n, _)| n).collect();
    assert_eq!(found, vec![1, 2, 10]);

    // Real files: a part is never created through a symlink or over a file without force.
    let mut files = Files::new(base.clone(), false);
    assert_eq!(
        files.create(2).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    std::os::unix::fs::symlink(dir.join("t.jsonl.bak"), dir.join("t.jsonl.3")).unwrap();
    let mut forced = Files::new(base, true);
    assert_eq!(
        forced.create(3).unwrap_err().raw_os_error(),
        Some(libc::ELOOP)
    );
    forced.create(2).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file deleted while it was written is said at the end, not listed as saved.
#[test]
fn a_file_deleted_mid_run_is_said_at_the_end() {
    let disk = SharedDisk::default();
    let mut w = writer(&disk, plain());
    w.push_with(|b| b.extend_from_slice(b"{}\n"));
    let kept = w.finish(b"{\"type\":\"summary\"}\n").unwrap();
    assert_eq!(kept.unlinked, None);
    let mut w = writer(&disk, plain());
    disk.borrow_mut().unlinked.push(0);
    let gone = w.finish(b"{\"type\":\"summary\"}\n").unwrap();
    assert_eq!(gone.unlinked, Some(PathBuf::from("/mem/trace.jsonl")));
    // A real file: its link count says so.
    let path = std::env::temp_dir().join(format!("netwatch-unlinked-{}", std::process::id()));
    let f = open_part(&path, true).unwrap();
    assert!(!f.unlinked());
    std::fs::remove_file(&path).unwrap();
    assert!(f.unlinked());
}
