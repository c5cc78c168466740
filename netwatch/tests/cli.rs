//! The netwatch binary as a hostile user drives it: closed pipes, absurd flags, damaged and
//! hostile trace files. None of these need root or eBPF (the root-only tests that trace are
//! in the `netwatch-tests` crate).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn netwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netwatch"))
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE, as `| head`
/// leaves stdout and stderr once head has exited.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: a valid out array of two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("netwatch-cli-{}-{tag}", std::process::id()));
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

/// A trace header whose start is `start` (RFC 3339), with `hostname` and `kernel`.
fn header(start: &str, hostname: &str, kernel: &str) -> String {
    serde_json::json!({
        "type": "header", "ts": start, "mono_ns": 1_000_000_000u64,
        "format": "netwatch-trace", "schema_version": 1, "netwatch_version": "0.1.0",
        "run_id": "test-1", "part": 0, "start": start, "start_mono_ns": 1_000_000_000u64,
        "kernel": kernel, "hostname": hostname, "interval_ns": 1_000_000_000u64,
    })
    .to_string()
}

fn plain_header() -> String {
    header("2026-01-01T00:00:00Z", "host", "6.18.0")
}

fn write_trace(dir: &TempDir, lines: &[String]) -> PathBuf {
    let path = dir.join("t.jsonl");
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    path
}

fn report(path: &Path, stderr: Stdio) -> Output {
    netwatch()
        .arg("report")
        .arg(path)
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .unwrap()
}

/// A header-only trace makes `report` warn (no summary); with stderr closed the warning is
/// dropped and the report still comes out.
#[test]
fn report_survives_a_closed_stderr() {
    let dir = TempDir::new("stderr");
    let path = write_trace(&dir, &[plain_header()]);
    let out = report(&path, closed_pipe());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!out.stdout.is_empty(), "no report on stdout");
    // The warning is there when stderr is open.
    let out = report(&path, Stdio::piped());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without its summary"));
}

/// An alert record at `mono_ns` whose message is `message`.
fn alert(mono_ns: u64, message: &str) -> String {
    serde_json::json!({
        "type": "alert", "ts": "2026-01-01T00:00:01Z", "mono_ns": mono_ns,
        "kind": "paws_reject", "message": message, "netns": 1,
    })
    .to_string()
}

/// A garbled line and a 17 MiB line in the middle: both skipped with their line numbers,
/// the record after them still read, and the exit code says the trace was damaged.
#[test]
fn report_skips_damaged_lines_counts_them_and_exits_3() {
    let dir = TempDir::new("damaged");
    let huge = "x".repeat(17 << 20);
    let path = write_trace(
        &dir,
        &[
            plain_header(),
            "{\"type\":\"transition\",garbled".to_owned(),
            huge,
            alert(2_000_000_000, "after the damage"),
        ],
    );
    let out = netwatch()
        .args(["report", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("t.jsonl:2: not JSON"), "{stderr}");
    assert!(
        stderr.contains("t.jsonl:3: a line longer than 16 MiB"),
        "{stderr}"
    );
    assert!(!stderr.contains("cut short"), "{stderr}");
    assert!(stderr.contains("2 line(s) skipped"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damaged_lines"], 2);
    assert_eq!(report["alerts"][0]["message"], "after the damage");
}

/// Durations that round to nothing are refused before anything runs, naming the minimum.
#[test]
fn tiny_durations_are_refused_with_the_minimum() {
    for flag in ["--interval", "--duration"] {
        let out = netwatch()
            .args(["trace", flag, "0.0000000001"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(flag) && stderr.contains("0 ns"), "{stderr}");
        let out = netwatch().args(["trace", flag, "5ms"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 100ms"), "{stderr}");
    }
}

/// A header whose start is the last second of year 9999: every later time is out of range.
#[test]
fn report_of_a_trace_from_year_9999_does_not_panic() {
    let dir = TempDir::new("y9999");
    let path = write_trace(
        &dir,
        &[
            header("9999-12-31T23:59:59Z", "host", "6.18.0"),
            alert(5_000_000_000, "late"),
        ],
    );
    for args in [&["report"][..], &["report", "--json"]] {
        let out = netwatch().args(args).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("(time out of range)"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Runs `cmd` with a file size limit of `bytes` (`ulimit -f`).
fn with_file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A write past `ulimit -f` is an error that names the cause, not a kill by SIGXFSZ.
#[test]
fn a_file_size_limit_is_an_error_not_a_signal() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("fsize");
    let path = write_trace(&dir, &[plain_header()]);
    let html = dir.join("r.html");
    let out = with_file_size_limit(
        netwatch().arg("report").arg(&path).arg("--html").arg(&html),
        1024,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("r.html") && stderr.contains("too large"),
        "{stderr}"
    );
}

/// `--netns` that names no network namespace is refused before anything is loaded.
#[test]
fn netns_that_is_not_a_network_namespace_is_refused() {
    for (spec, says) in [
        ("", "--netns needs a network namespace"),
        ("/etc/passwd", "not a namespace file"),
        ("/proc/self/ns/mnt", "a mount namespace"),
        ("12345", "no network namespace with this inode"),
        ("surely-not-a-namespace", "ip netns list"),
    ] {
        let out = netwatch()
            .args(["trace", "--duration", "1", "--netns", spec])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--netns {spec:?}: {stderr}");
        assert!(stderr.contains(says), "--netns {spec:?}: {stderr}");
    }
}

/// Escape sequences in a trace's strings are shown, never sent to the terminal.
#[test]
fn report_shows_a_hostile_traces_strings_escaped() {
    let dir = TempDir::new("hostile");
    let part_end = serde_json::json!({
        "type": "part_end", "ts": "2026-01-01T00:00:02Z", "mono_ns": 3_000_000_000u64,
        "part": 0, "next": "t.jsonl.1\u{1b}]0;owned\u{7}",
    })
    .to_string();
    let path = write_trace(
        &dir,
        &[
            header(
                "2026-01-01T00:00:00Z",
                "host\u{1b}]0;owned\u{7}",
                "6.18\u{1b}[2J\nFINDING: all is well",
            ),
            alert(2_000_000_000, "alert \u{1b}[31mred\u{9b}0m"),
            part_end,
        ],
    );
    for html in [false, true] {
        let mut cmd = netwatch();
        cmd.arg("report").arg(&path);
        let page = dir.join("r.html");
        if html {
            cmd.arg("--html").arg(&page);
        }
        let out = cmd.output().unwrap();
        let shown = [
            out.stdout.clone(),
            out.stderr.clone(),
            std::fs::read(&page).unwrap_or_default(),
        ]
        .concat();
        let text = String::from_utf8_lossy(&shown);
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\u{9b}']),
            "raw control characters: {text}"
        );
        assert!(!text.contains("\nFINDING: all is well"), "{text}");
        assert!(text.contains("host\\u{1b}]0;owned\\u{7}"), "{text}");
        if !html {
            assert!(text.contains("t.jsonl.1\\u{1b}"), "part_end.next: {text}");
        }
    }
}

/// `report --html` under a directory symlink: refused with the link named, nothing written
/// where it points (the same no-follow open as `trace --output`).
#[test]
fn report_html_is_not_written_through_a_directory_symlink() {
    let dir = TempDir::new("htmllink");
    let path = write_trace(&dir, &[plain_header()]);
    std::fs::create_dir(dir.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("link")).unwrap();
    let out = netwatch()
        .arg("report")
        .arg(&path)
        .arg("--html")
        .arg(dir.join("link/r.html"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("link is a symlink"), "{stderr}");
    assert!(!dir.join("elsewhere/r.html").exists());
}

/// `--addr` is matched in userspace against every record: the list is bounded, and the
/// error says by how much and what to do, for `trace` (before anything loads) and `report`.
#[test]
fn too_many_addr_blocks_are_refused() {
    let dir = TempDir::new("addrs");
    let path = write_trace(&dir, &[plain_header()]);
    let many: Vec<String> = (0..65)
        .flat_map(|i| ["--addr".to_owned(), format!("10.0.{i}.0/24")])
        .collect();
    for mut cmd in [
        {
            let mut c = netwatch();
            c.args(["trace", "--duration", "1s"]);
            c
        },
        {
            let mut c = netwatch();
            c.arg("report").arg(&path);
            c
        },
    ] {
        let out = cmd.args(&many).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("65 --addr blocks given, at most 64"),
            "{stderr}"
        );
    }
}

/// The binary's exit codes on damage the library's property test also feeds it: invalid
/// UTF-8, a number out of range and a truncated last line are skipped and counted (exit 3);
/// a second header is an error naming its line (exit 1); the undamaged lines alone exit 0.
#[test]
fn report_exit_codes_say_what_was_skipped() {
    let dir = TempDir::new("exits");
    let good = alert(2_000_000_000, "kept");
    let mut bad_utf8 = alert(2_100_000_000, "x").into_bytes();
    bad_utf8.splice(20..20, [0xff, 0xfe]);
    let out_of_range = alert(2_200_000_000, "y").replace("2200000000", "99999999999999999999999");
    let mut bytes = [plain_header(), good.clone()].join("\n").into_bytes();
    bytes.push(b'\n');
    bytes.extend_from_slice(&bad_utf8);
    bytes.push(b'\n');
    bytes.extend_from_slice(out_of_range.as_bytes());
    bytes.extend_from_slice(b"\n{\"type\":\"alert\",\"ts\":\"2026");
    let damaged = dir.join("damaged.jsonl");
    std::fs::write(&damaged, &bytes).unwrap();
    let whole = write_trace(&dir, &[plain_header(), good.clone()]);
    let second = dir.join("second.jsonl");
    std::fs::write(
        &second,
        [plain_header(), good, plain_header()].join("\n") + "\n",
    )
    .unwrap();
    for (path, code, says) in [
        (&damaged, 3, "3 line(s) skipped"),
        (&second, 1, "second.jsonl:3: a second trace header"),
        (&whole, 0, ""),
    ] {
        let out = report(path, Stdio::piped());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {stderr}",
            path.display()
        );
        assert!(stderr.contains(says), "{stderr}");
    }
}
