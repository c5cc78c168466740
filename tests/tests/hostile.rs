//! A tracer run the way a hostile (or just unlucky) operator runs it. Root only.
//!
//! 1. stdout and stderr both closed (`netwatch trace -o f --plain 2>&1 | head` once head has
//!    gone): tracing goes on into the file until --duration, which ends with its summary.
//! 2. A file size limit (`ulimit -f`) is a full disk, not a kill by SIGXFSZ: netwatch stops
//!    with an error naming EFBIG, the plain file ends at a whole record, the gzip file passes
//!    `gzip -t`.
//! 3. A FIFO nobody reads holds up neither the start nor the end: netwatch traces, and at the
//!    end says the trace lacks its summary (exit code 3).
//! 4. A slow reader of the output stretches no `--duration`: what it could not take is
//!    dropped, counted in the summary and on stderr, and the exit code is 3.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netwatch_tests::require_root;
use netwatch_tests::tracer::{netwatch_bin, read_records, wait_bounded};

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> Result<Stdio> {
    let mut fds = [0; 2];
    // SAFETY: a valid out array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Ok(Stdio::from(write))
}

/// The test's own file (or directory tree) in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    /// `nwt-hostile-PID-TAG` in the temp directory, whatever an earlier run left there gone.
    fn named(tag: &str) -> Self {
        let f =
            Self(std::env::temp_dir().join(format!("nwt-hostile-{}-{tag}", std::process::id())));
        drop(Self(f.0.clone()));
        f
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if std::fs::remove_file(&self.0).is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn closed_stdout_and_stderr_do_not_end_a_trace_to_a_file() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let file = TempFile::named("pipes.jsonl");
    let mut child = Command::new(netwatch_bin()?)
        .args([
            "trace",
            "--plain",
            "--interval",
            "200ms",
            "--duration",
            "2s",
        ])
        .arg("--output")
        .arg(&file.0)
        .stdin(Stdio::null())
        .stdout(closed_pipe()?)
        .stderr(closed_pipe()?)
        .spawn()
        .context("starting netwatch")?;
    let status = wait_bounded(&mut child, Duration::from_secs(60))?;
    ensure!(status.success(), "netwatch exited with {status}");
    let records = read_records(&file.0)?;
    let last = records.last().context("an empty trace")?;
    ensure!(
        last["type"] == "summary" && last["stopped_by"] == "duration",
        "the trace should end with a summary stopped by --duration: {last}"
    );
    Ok(())
}

/// Connections to a loopback listener, made and closed until `done` says stop: a few KB of
/// transitions each.
fn churn_until(mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done()? {
        ensure!(
            Instant::now() < deadline,
            "still running after 60 s of churn"
        );
        for _ in 0..20 {
            let client = TcpStream::connect(addr)?;
            let (server, _) = listener.accept()?;
            drop(client);
            drop(server);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_file_size_limit_stops_the_trace_like_a_full_disk() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for name in ["fsize.jsonl", "fsize.jsonl.gz"] {
        let file = TempFile::named(name);
        const LIMIT: u64 = 64 << 10;
        let limit = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        let mut cmd = Command::new(netwatch_bin()?);
        cmd.args(["trace", "--quiet", "--interval", "200ms", "--output"])
            .arg(&file.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe and changes only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting netwatch")?;
        let stderr = child.stderr.take().context("stderr")?;
        let reader = std::thread::spawn(move || std::io::read_to_string(stderr));
        churn_until(|| Ok(child.try_wait()?.is_some()))?;
        let status = wait_bounded(&mut child, Duration::from_secs(10))?;
        let stderr = reader.join().expect("stderr reader").unwrap_or_default();
        ensure!(
            status.signal().is_none(),
            "{name}: killed by signal {:?}: {stderr}",
            status.signal()
        );
        ensure!(status.code() == Some(1), "{name}: {status}: {stderr}");
        ensure!(
            stderr.contains("EFBIG"),
            "{name}: the error should say EFBIG: {stderr}"
        );
        let len = std::fs::metadata(&file.0)?.len();
        ensure!(len > 0 && len <= LIMIT, "{name}: {len} bytes");
        if name.ends_with(".gz") {
            let ok = Command::new("gzip").arg("-t").arg(&file.0).status()?;
            ensure!(ok.success(), "{name}: gzip -t fails");
        } else {
            let bytes = std::fs::read(&file.0)?;
            ensure!(bytes.ends_with(b"\n"), "{name}: the file ends mid-record");
        }
        let records = read_records(&file.0)?;
        ensure!(records[0]["type"] == "header", "{name}: no header");
    }
    Ok(())
}

/// A FIFO of the test's own, removed on drop.
fn make_fifo(name: &str) -> Result<TempFile> {
    let fifo = TempFile::named(name);
    let path = fifo.0.clone();
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context("mkfifo");
    }
    Ok(fifo)
}

/// Reads `child`'s stderr in a thread: all of it, and when netwatch said it was tracing.
fn stderr_with_attach_time(
    child: &mut std::process::Child,
) -> Result<std::thread::JoinHandle<(String, Option<Instant>)>> {
    use std::io::BufRead;
    let stderr = child.stderr.take().context("stderr")?;
    Ok(std::thread::spawn(move || {
        let mut text = String::new();
        let mut attached = None;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if attached.is_none() && line.contains("attached to") {
                attached = Some(Instant::now());
            }
            text.push_str(&line);
            text.push('\n');
        }
        (text, attached)
    }))
}

/// `netwatch trace --quiet --duration DURATION --output PATH`, stderr piped.
fn trace_into(path: &std::path::Path, duration: &str) -> Result<std::process::Child> {
    Command::new(netwatch_bin()?)
        // --force: only for netwatch before FIFOs were taken as they are.
        .args([
            "trace",
            "--quiet",
            "--force",
            "--duration",
            duration,
            "--output",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting netwatch")
}

#[test]
fn a_fifo_nobody_reads_neither_blocks_the_start_nor_the_end() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let fifo = make_fifo("unread.fifo")?;
    let mut child = trace_into(&fifo.0, "1s")?;
    let reader = stderr_with_attach_time(&mut child)?;
    let status = wait_bounded(&mut child, Duration::from_secs(30))?;
    let ended = Instant::now();
    let (stderr, attached) = reader.join().expect("stderr reader");
    let took = ended - attached.context("netwatch never said it was tracing")?;
    ensure!(
        stderr.contains("attached") && stderr.contains("nobody reads the FIFO"),
        "tracing should start and say nobody reads: {stderr}"
    );
    ensure!(
        stderr.contains("without its summary"),
        "the end should say the trace lacks its summary: {stderr}"
    );
    ensure!(status.code() == Some(3), "{status}: {stderr}");
    // 1 s of tracing, two bounded graces of 2 s, and slack for a loaded machine.
    ensure!(
        took < Duration::from_secs(8),
        "took {took:?} after attaching: {stderr}"
    );
    Ok(())
}

#[test]
fn a_slow_reader_neither_stretches_the_duration_nor_loses_records_silently() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let fifo = make_fifo("slow.fifo")?;
    // The reader is there first (so netwatch opens at once), then reads 4 KiB per 50 ms:
    // 80 KB/s, far below what the churn produces.
    let read_end = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo.0)?;
    let child = trace_into(&fifo.0, "3s")?;
    let slow = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = read_end;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut seen_writer = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match f.read(&mut buf) {
                Ok(0) if seen_writer => break,
                Ok(0) => {}
                Ok(n) => {
                    seen_writer = true;
                    all.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => seen_writer = true,
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(all)
    });
    slow_reader_case(child, slow)
}

/// Traces 3 s under churn into an output read slowly by `slow`: netwatch must end on time,
/// say what the trace lacks, exit with 3, and its summary (if it got through) must count what
/// was written.
fn slow_reader_case(
    mut child: std::process::Child,
    slow: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
) -> Result<()> {
    let reader = stderr_with_attach_time(&mut child)?;
    churn_until(|| Ok(child.try_wait()?.is_some()))?;
    let status = wait_bounded(&mut child, Duration::from_secs(60))?;
    let ended = Instant::now();
    let (stderr, attached) = reader.join().expect("stderr reader");
    let took = ended - attached.context("netwatch never said it was tracing")?;
    // 3 s of tracing, two bounded graces of 2 s, and slack: not the minute the reader needs.
    ensure!(
        took < Duration::from_secs(10),
        "took {took:?} after attaching: {stderr}"
    );
    ensure!(status.code() == Some(3), "{status}: {stderr}");
    ensure!(
        stderr.contains("were dropped, not written") || stderr.contains("without its summary"),
        "what the trace lacks should be said: {stderr}"
    );
    let bytes = slow.join().expect("slow reader")?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        lines.first().is_some_and(|h| h["type"] == "header"),
        "no header"
    );
    if let Some(summary) = lines.last().filter(|l| l["type"] == "summary") {
        let written = lines.iter().filter(|l| l["type"] == "transition").count() as u64;
        ensure!(
            summary["records"]["transition"] == written,
            "the summary's records count what was written ({written}): {summary}"
        );
        ensure!(summary["output_dropped"].as_u64() > Some(0), "{summary}");
    }
    Ok(())
}

#[test]
fn a_slow_reader_of_stdout_neither_stretches_the_duration_nor_loses_records_silently() -> Result<()>
{
    if !require_root() {
        return Ok(());
    }
    let mut child = Command::new(netwatch_bin()?)
        .args(["trace", "--duration", "3s", "--output", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting netwatch")?;
    let mut out = child.stdout.take().context("stdout")?;
    // 4 KiB per 50 ms, until netwatch closes its end.
    let slow = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf)? {
                0 => return Ok(all),
                n => all.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    slow_reader_case(child, slow)
}

/// The scenario: in a sticky, world-writable directory (as /tmp is) another user
/// (nobody, uid 65534) plants a symlink to a directory of theirs, and root names a trace file
/// under that link. netwatch refuses before tracing, naming the link and its target, and
/// writes nothing into the other user's directory.
#[test]
fn a_symlink_in_the_directory_part_of_the_output_is_not_followed() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !require_root() {
        return Ok(());
    }
    let tree = TempFile::named("sticky");
    let sticky = tree.0.join("tmp");
    let theirs = tree.0.join("theirs");
    std::fs::create_dir_all(&sticky)?;
    std::fs::create_dir_all(&theirs)?;
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534))?;
    let link = sticky.join("share");
    std::os::unix::fs::symlink(&theirs, &link)?;
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534))?;

    let mut child = Command::new(netwatch_bin()?)
        .args(["trace", "--quiet", "--duration", "1s", "--output"])
        .arg(link.join("trace.jsonl"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting netwatch")?;
    let reader = stderr_with_attach_time(&mut child)?;
    let status = wait_bounded(&mut child, Duration::from_secs(30))?;
    let (stderr, attached) = reader.join().expect("stderr reader");
    let written: Vec<_> = std::fs::read_dir(&theirs)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(
        written.is_empty(),
        "netwatch wrote {written:?} through the link: {stderr}"
    );
    ensure!(status.code() == Some(1), "{status}: {stderr}");
    ensure!(attached.is_none(), "refused only after attaching: {stderr}");
    ensure!(
        stderr.contains(&format!("{} is a symlink", link.display()))
            && stderr.contains(&theirs.display().to_string()),
        "the error should name the link and its target: {stderr}"
    );
    Ok(())
}

/// The trace file deleted while tracing (`rm` by a cleanup job): netwatch does not say
/// "trace saved" of a file that is gone; it says the file was deleted, and exits 3 (the
/// records are lost).
#[test]
fn a_trace_file_deleted_mid_run_is_not_called_saved() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let file = TempFile::named("deleted.jsonl");
    let mut child = trace_into(&file.0, "3s")?;
    let reader = stderr_with_attach_time(&mut child)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.0.exists() {
        ensure!(Instant::now() < deadline, "the trace file never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&file.0)?;
    let status = wait_bounded(&mut child, Duration::from_secs(30))?;
    let (stderr, _) = reader.join().expect("stderr reader");
    ensure!(!stderr.contains("trace saved"), "{stderr}");
    ensure!(
        stderr.contains(&format!("{} was deleted while tracing", file.0.display())),
        "{stderr}"
    );
    ensure!(status.code() == Some(3), "{status}: {stderr}");
    Ok(())
}

/// The dashboard's terminal closed under it (a terminal window shut, an ssh session
/// dropped): the trace ends as a hang-up, `stopped_by: "sighup"`, with its summary, not as
/// an error. Both ways a closed terminal reaches netwatch: as the session leader owning the
/// terminal it gets SIGHUP (and EIO); as a process that merely writes to it, EIO alone.
#[test]
fn closing_the_dashboards_terminal_is_a_hang_up() -> Result<()> {
    use std::os::unix::process::CommandExt;
    if !require_root() {
        return Ok(());
    }
    for owns_terminal in [false, true] {
        let file = TempFile::named(&format!("hangup-{owns_terminal}.jsonl"));
        let mut pty = netwatch_tests::pty::Pty::open(40, 120)?;
        let mut cmd = Command::new(netwatch_bin()?);
        cmd.args(["trace", "--interval", "200ms", "--output"])
            .arg(&file.0)
            .env("TERM", "xterm-256color")
            .stdin(pty.stdio()?)
            .stdout(pty.stdio()?)
            .stderr(Stdio::piped());
        if owns_terminal {
            // SAFETY: async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting netwatch")?;
        let reader = stderr_with_attach_time(&mut child)?;
        // The dashboard on screen, redrawn a few times; then the terminal goes.
        let shown = pty.read_for(Duration::from_secs(30), |out| {
            out.windows(8).any(|w| w == b"\x1b[?1049h")
        });
        ensure!(
            !shown.is_empty(),
            "owns {owns_terminal}: the dashboard never showed"
        );
        pty.read_for(Duration::from_millis(800), |_| false);
        pty.hang_up();
        let status = wait_bounded(&mut child, Duration::from_secs(30))
            .with_context(|| format!("owns {owns_terminal}"))?;
        let (stderr, _) = reader.join().expect("stderr reader");
        let records = read_records(&file.0)?;
        let last = records.last().context("an empty trace")?;
        ensure!(
            last["type"] == "summary" && last["stopped_by"] == "sighup",
            "owns {owns_terminal}: should end as a hang-up: {last}; {stderr}"
        );
        ensure!(status.success(), "owns {owns_terminal}: {status}: {stderr}");
    }
    Ok(())
}

/// `netwatch trace --events ... | head -n 3`: with a trace file, head's going away ends
/// nothing: the file still gets its last snapshot and its summary at --duration; without
/// one, the closed pipe ends the trace cleanly (exit 0, before --duration, no error).
#[test]
fn events_into_head_keep_the_files_last_snapshot_and_summary() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for with_file in [true, false] {
        let file = TempFile::named("events-head.jsonl");
        let mut cmd = Command::new(netwatch_bin()?);
        // Without a file only the closed pipe may end it: a --duration far beyond.
        let duration = if with_file { "4s" } else { "60s" };
        cmd.args(["trace", "--events", "--duration", duration]);
        if with_file {
            cmd.arg("--output").arg(&file.0);
        }
        let mut netwatch = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting netwatch")?;
        let head = Command::new("head")
            .arg("-n3")
            .stdin(Stdio::from(netwatch.stdout.take().context("stdout")?))
            .stdout(Stdio::null())
            .spawn()
            .context("starting head")?;
        let reader = stderr_with_attach_time(&mut netwatch)?;
        let mut head = head;
        // Churn until head has its lines and has gone, then on, so netwatch writes into a
        // closed pipe.
        churn_until(|| Ok(head.try_wait()?.is_some()))?;
        let head_gone = Instant::now();
        churn_until(|| {
            Ok(head_gone.elapsed() > Duration::from_millis(500) || netwatch.try_wait()?.is_some())
        })?;
        let status = wait_bounded(&mut netwatch, Duration::from_secs(30))?;
        let took = head_gone.elapsed();
        let (stderr, _) = reader.join().expect("stderr reader");
        ensure!(status.success(), "file {with_file}: {status}: {stderr}");
        ensure!(!stderr.contains("error"), "file {with_file}: {stderr}");
        if !with_file {
            ensure!(
                took < Duration::from_secs(10),
                "the closed pipe should end the trace at once, not at --duration: {took:?}"
            );
            continue;
        }
        ensure!(stderr.contains("stdout was closed"), "{stderr}");
        let records = read_records(&file.0)?;
        let n = records.len();
        ensure!(n >= 3, "{n} records");
        ensure!(
            records[n - 2]["type"] == "snapshot"
                && records[n - 1]["type"] == "summary"
                && records[n - 1]["stopped_by"] == "duration",
            "the file should end with a last snapshot and the summary: {} / {}",
            records[n - 2],
            records[n - 1]
        );
    }
    Ok(())
}

/// Outputs with nothing to sync: /dev/null and a FIFO whose reader takes everything. The
/// trace ends with exit 0 and no sync error (fsync answers EINVAL there), and the FIFO's
/// reader gets the whole trace, summary last.
#[test]
fn dev_null_and_a_read_fifo_end_without_a_sync_error() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let fifo = make_fifo("read.fifo")?;
    let copy = TempFile::named("read.jsonl");
    // The reader is there first, copying everything, as `cat fifo > copy` would.
    let mut cat = Command::new("cat")
        .arg(&fifo.0)
        .stdout(Stdio::from(std::fs::File::create(&copy.0)?))
        .spawn()
        .context("starting cat")?;
    for out in [PathBuf::from("/dev/null"), fifo.0.clone()] {
        let mut child = trace_into(&out, "1s")?;
        let reader = stderr_with_attach_time(&mut child)?;
        let status = wait_bounded(&mut child, Duration::from_secs(30))?;
        let (stderr, _) = reader.join().expect("stderr reader");
        ensure!(status.success(), "{}: {status}: {stderr}", out.display());
        ensure!(
            !stderr.contains("cannot sync"),
            "{}: {stderr}",
            out.display()
        );
    }
    wait_bounded(&mut cat, Duration::from_secs(10))?;
    let records = read_records(&copy.0)?;
    ensure!(
        records.first().is_some_and(|r| r["type"] == "header")
            && records.last().is_some_and(|r| r["type"] == "summary"),
        "the FIFO's reader should get the whole trace: {} records",
        records.len()
    );
    Ok(())
}
