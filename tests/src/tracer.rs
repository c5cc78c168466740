//! Runs the binary under test, `netwatch trace`, as a child process.
//!
//! Traffic generated before the eBPF programs are attached is simply not seen, so
//! [`Tracer::start`] returns only after netwatch printed `netwatch: attached` on stderr.
//! netwatch flushes its output on an interval, so the reliable way to get every record is to
//! stop it (SIGINT: it flushes and exits) and then read the file: [`Tracer::stop`].
//! [`Tracer::wait_for`] polls the file while it runs, to end a test as soon as the expected
//! records are there instead of sleeping a fixed time.
//!
//! Everything is bounded: attaching (30 s), stopping (15 s, then SIGKILL). A tracer that
//! fails to start, to attach, or to stop cleanly is a test failure carrying its stderr. A
//! `Tracer` dropped while running (a test failed) kills its child.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The stderr line netwatch prints once its programs are attached.
pub const ATTACHED_MARKER: &str = "netwatch: attached";
/// Bound on loading and attaching the eBPF programs.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a clean exit after SIGINT (flushing included).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time given to the kernel after the last close() before stopping the tracer, so that the
/// last transitions (driven by the peer's final ACK/FIN in softirq) have happened.
pub const SETTLE: Duration = Duration::from_millis(300);

static OUTPUT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The netwatch binary: `$NETWATCH_BIN` (set by `cargo xtask test`), else the workspace's
/// `target/debug/netwatch` (next to this test binary's target directory, or under the
/// workspace root). Err, saying how to build it, when there is none.
pub fn netwatch_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETWATCH_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "NETWATCH_BIN={} does not exist; run `cargo xtask test`",
                p.display()
            );
        }
        return Ok(p);
    }
    let mut candidates = Vec::new();
    // target/debug/deps/<test binary> -> target/debug/netwatch (honours CARGO_TARGET_DIR).
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent().and_then(Path::parent) {
            candidates.push(dir.join("netwatch"));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("netwatch"),
    );
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    bail!(
        "netwatch binary not found (NETWATCH_BIN unset; looked at {}); run `cargo xtask test` \
         (as root: `sudo cargo xtask test`), which builds it and sets NETWATCH_BIN",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Keep output files for inspection when `NETWATCH_TEST_KEEP` is set (non-empty).
fn keep_output() -> bool {
    std::env::var_os("NETWATCH_TEST_KEEP").is_some_and(|v| !v.is_empty())
}

enum StderrEvent {
    Attached,
    Eof,
}

/// Collects a pipe's lines into `buf`; reports the attach marker and EOF on `events`.
fn collect_lines<R: Read + Send + 'static>(
    pipe: R,
    buf: Arc<Mutex<String>>,
    events: Option<mpsc::Sender<StderrEvent>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if text.starts_with(ATTACHED_MARKER) {
                        if let Some(tx) = &events {
                            let _ = tx.send(StderrEvent::Attached);
                        }
                    }
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    b.push_str(&text);
                    if !text.ends_with('\n') {
                        b.push('\n');
                    }
                }
            }
        }
        if let Some(tx) = &events {
            let _ = tx.send(StderrEvent::Eof);
        }
    })
}

/// `netwatch report [ARGS] PATH`, then the trace file removed: the report's stdout, or an
/// error with it when the report failed.
pub fn report_then_remove(path: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(netwatch_bin()?)
        .arg("report")
        .args(args)
        .arg(path)
        .output()
        .context("running netwatch report")?;
    let _ = std::fs::remove_file(path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "netwatch report failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// A running `netwatch trace --output <tmpfile> ...`.
#[derive(Debug)]
pub struct Tracer {
    child: Option<Child>,
    output: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    command: String,
    /// The test owns the output file (see [`Tracer::keep_file`]).
    keep: bool,
}

/// What a stopped tracer left: all records (every type), and its stderr.
#[derive(Debug)]
pub struct TraceOutput {
    pub records: Vec<Value>,
    pub stderr: String,
    pub stdout: String,
    pub status: ExitStatus,
}

impl TraceOutput {
    /// The lost-record count from netwatch's closing stderr line containing "lost" (the last
    /// such line): the number right after the word ("lost: 3", "lost=3") or right before it
    /// ("3 lost"). None if there is no such line or no number next to the word.
    pub fn lost(&self) -> Option<u64> {
        let line = self.stderr.lines().rev().find(|l| l.contains("lost"))?;
        let words: Vec<&str> = line
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .collect();
        let at = words
            .iter()
            .position(|w| w.to_ascii_lowercase().contains("lost"))?;
        let after = words.get(at + 1).and_then(|w| w.parse().ok());
        let before = at
            .checked_sub(1)
            .and_then(|i| words.get(i))
            .and_then(|w| w.parse().ok());
        after.or(before)
    }

    /// Err unless netwatch reported its lost-record count and it is 0: a test that lost
    /// records cannot judge exact sequences.
    pub fn check_no_loss(&self) -> Result<()> {
        match self.lost() {
            Some(0) => Ok(()),
            Some(n) => bail!("netwatch lost {n} records; stderr:\n{}", self.stderr),
            None => bail!(
                "netwatch printed no lost-record count (a stderr line containing \"lost\" \
                 and a number); stderr:\n{}",
                self.stderr
            ),
        }
    }
}

impl Tracer {
    /// Spawns `netwatch trace --output <tmpfile> <args>` and waits (bounded) for
    /// `netwatch: attached`. Err, with netwatch's stderr, if it cannot be started, exits
    /// early, or does not attach in time.
    pub fn start(args: &[&str]) -> Result<Tracer> {
        Tracer::start_with(&netwatch_bin()?, args)
    }

    /// Like [`Tracer::start`] with an explicit binary (the harness's own tests use a fake).
    pub fn start_with(bin: &Path, args: &[&str]) -> Result<Tracer> {
        let n = OUTPUT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let output =
            std::env::temp_dir().join(format!("netwatch-test-{}-{n}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&output);
        Tracer::start_to(bin, &output, args)
    }

    /// Like [`Tracer::start_with`] writing to `output` (e.g. a `.gz` name, or a directory the
    /// test controls). The file is removed when the tracer is dropped, as with the others.
    pub fn start_to(bin: &Path, output: &Path, args: &[&str]) -> Result<Tracer> {
        let mut cmd = Command::new(bin);
        cmd.arg("trace").arg("--output").arg(output).args(args);
        Tracer::launch(cmd, output.to_owned())
    }

    /// `netwatch serve ARGS` (the agent: no trace file), returned once attached. Stop it
    /// with [`Tracer::exit_with`]; dropping it kills it.
    pub fn serve(args: &[&str]) -> Result<Tracer> {
        let mut cmd = Command::new(netwatch_bin()?);
        cmd.arg("serve").args(args);
        let n = OUTPUT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let none = std::env::temp_dir().join(format!("netwatch-serve-{}-{n}", std::process::id()));
        Tracer::launch(cmd, none)
    }

    /// Starts `cmd` (whose records, if any, go to `output`) and waits for the attach.
    fn launch(mut cmd: Command, output: PathBuf) -> Result<Tracer> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The stop signals this harness sends must reach the child even when the test run
        // itself was started with them ignored (a background job of a shell without job
        // control ignores SIGINT, and a shell cannot trap a signal ignored on entry).
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {command}"))?;

        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            readers.push(collect_lines(pipe, stderr.clone(), Some(tx)));
        }
        if let Some(pipe) = child.stdout.take() {
            readers.push(collect_lines(pipe, stdout.clone(), None));
        }
        let mut tracer = Tracer {
            child: Some(child),
            output,
            stderr,
            stdout,
            readers,
            command,
            keep: false,
        };

        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(StderrEvent::Attached) => return Ok(tracer),
                Ok(StderrEvent::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed before the marker: it is exiting (or crashed).
                    let status = tracer.wait_bounded(Duration::from_secs(5));
                    bail!(
                        "{} closed stderr before printing {ATTACHED_MARKER:?} ({}); stderr:\n{}",
                        tracer.command,
                        status.map_or("still running, killed".to_owned(), |s| s.to_string()),
                        tracer.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = tracer.try_wait()? {
                // Let the reader drain what was printed before the exit.
                tracer.join_readers(Duration::from_secs(2));
                bail!(
                    "{} exited ({status}) before printing {ATTACHED_MARKER:?}; stderr:\n{}",
                    tracer.command,
                    tracer.stderr_text()
                );
            }
            if Instant::now() >= deadline {
                tracer.kill();
                bail!(
                    "{} did not print {ATTACHED_MARKER:?} within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                    tracer.command,
                    tracer.stderr_text()
                );
            }
        }
    }

    /// Leaves the output file in place when the tracer is gone: the test removes it (for
    /// tests of the file itself, which read it after netwatch exited).
    pub fn keep_file(mut self) -> Self {
        self.keep = true;
        self
    }

    /// The JSON Lines output file.
    pub fn output_path(&self) -> &Path {
        &self.output
    }

    /// netwatch's stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records written so far (complete lines only; unparsable lines skipped, since the last
    /// one may be half written). For polling; the authoritative read is [`Tracer::stop`].
    pub fn records_so_far(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.output) else {
            return Vec::new();
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls the output file (every 50 ms, at most `timeout`) until `pred` holds for the
    /// records so far. Returns whether it did; false is not an error by itself (the records
    /// may only be flushed at exit): stop the tracer and check what it wrote.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.records_so_far()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT, waits (at most [`STOP_TIMEOUT`]) for a clean exit, and returns what
    /// netwatch wrote. Err (with stderr) if it had to be killed, exited non-zero, or wrote a
    /// line that is not a JSON object.
    pub fn stop(self) -> Result<TraceOutput> {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
            // not yet reaped (so not reused).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        self.finish(STOP_TIMEOUT)
    }

    /// Waits (at most `timeout`) for netwatch to exit by itself (`--duration`), then as
    /// [`Tracer::stop`].
    pub fn wait(self, timeout: Duration) -> Result<TraceOutput> {
        self.finish(timeout)
    }

    /// Sends `signal` (SIGTERM, SIGHUP, ...), then as [`Tracer::stop`].
    pub fn stop_with(self, signal: i32) -> Result<TraceOutput> {
        if let Some(child) = &self.child {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
        self.finish(STOP_TIMEOUT)
    }

    /// Sends `signal` (None: none, netwatch stops by itself), waits at most `timeout`, and
    /// returns how it exited and its stderr, judging neither (for kills and failures).
    pub fn exit_with(
        mut self,
        signal: Option<i32>,
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        if let (Some(sig), Some(child)) = (signal, &self.child) {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
        let Some(status) = self.wait_bounded(timeout) else {
            self.kill();
            bail!(
                "{} did not exit within {timeout:?} (killed); stderr:\n{}",
                self.command,
                self.stderr_text()
            );
        };
        self.join_readers(Duration::from_secs(5));
        Ok((status, self.stderr_text()))
    }

    fn finish(mut self, timeout: Duration) -> Result<TraceOutput> {
        let Some(status) = self.wait_bounded(timeout) else {
            self.kill();
            bail!(
                "{} did not exit within {timeout:?} (killed); stderr:\n{}",
                self.command,
                self.stderr_text()
            );
        };
        self.join_readers(Duration::from_secs(5));
        let stderr = self.stderr_text();
        let stdout = self
            .stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !status.success() {
            bail!(
                "{} did not exit cleanly ({status}); stderr:\n{stderr}",
                self.command
            );
        }
        let records = read_records(&self.output)
            .with_context(|| format!("reading netwatch output; stderr:\n{stderr}"))?;
        Ok(TraceOutput {
            records,
            stderr,
            stdout,
            status,
        })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait().context("waitpid netwatch")?),
            None => bail!("netwatch already reaped"),
        }
    }

    /// Polls for exit until `timeout`; None if still running.
    fn wait_bounded(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_readers(Duration::from_secs(2));
    }

    /// Joins the pipe readers if they finish in time (they end at EOF, i.e. when netwatch and
    /// anything that inherited its pipes are gone); otherwise leaves them detached.
    fn join_readers(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for h in std::mem::take(&mut self.readers) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.keep {
            return;
        }
        if keep_output() || (thread::panicking() && self.output.exists()) {
            eprintln!("netwatch output kept at {}", self.output.display());
        } else {
            let _ = std::fs::remove_file(&self.output);
        }
    }
}

/// Parses a JSON Lines file strictly: every non-empty line must be a JSON object. A gzip
/// file (told by its magic) is decompressed, all of its members.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut input = BufReader::new(file);
    let gzip = input
        .fill_buf()
        .with_context(|| format!("read {}", path.display()))?
        .starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(input)))
    } else {
        Box::new(input)
    };
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON: {line}", path.display(), i + 1))?;
        if !v.is_object() {
            bail!("{}:{}: not a JSON object: {line}", path.display(), i + 1);
        }
        records.push(v);
    }
    Ok(records)
}

/// Waits for `child`, killing it after `timeout`: a netwatch that hangs fails its test
/// instead of hanging the run.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("netwatch did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn out(stderr: &str) -> TraceOutput {
        TraceOutput {
            records: Vec::new(),
            stderr: stderr.to_owned(),
            stdout: String::new(),
            status: ExitStatus::from_raw(0),
        }
    }

    #[test]
    fn lost_count_forms() {
        let cases = [
            (
                "netwatch: 12 transitions; lost 0 records (ring buffer full)\n",
                Some(0),
            ),
            ("netwatch: lost: 3\n", Some(3)),
            ("netwatch: lost=7 undecodable=0\n", Some(7)),
            ("netwatch: 1234 written, 5 lost\n", Some(5)),
            ("netwatch: attached\n", None),
            ("lost\n", None),
        ];
        for (stderr, want) in cases {
            assert_eq!(out(stderr).lost(), want, "{stderr:?}");
        }
    }
}
