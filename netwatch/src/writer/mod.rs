//! The trace file writer: what makes a trace survive the incident it records.
//!
//! - Whole records only. Records are collected in memory as complete lines and written in
//!   blocks of whole lines, once per [`FLUSH_EVERY`] (or sooner when a block fills up), and at
//!   exit; so a reader sees only complete records up to the last flush, whatever happens to the
//!   process.
//! - A failed write (a full disk: ENOSPC, a short write) truncates the file back to the end of
//!   the last block that was written whole, and nothing more is written to it: the file stays
//!   valid up to its last whole record, and the error names the file and the cause.
//! - gzip (a name ending in `.gz`): every block is one complete gzip member (RFC 1952 allows
//!   any number, and `zcat`, `gzip -d` and `report` read them in sequence), so the file is a
//!   valid gzip file after every flush, not only once the stream is finished at exit.
//! - Rotation (`--max-size`): a file is closed with a `part_end` record before a block would
//!   take it past the size, and the trace goes on in the next part, which starts with its own
//!   header: `trace.jsonl`, `trace.jsonl.1`, `trace.jsonl.2`, ... (`trace.jsonl.gz`,
//!   `trace.jsonl.1.gz`, ...). At most `--max-files` files exist at once: the first (the start
//!   of the incident and the census) is kept, and beyond that the oldest of the others is
//!   deleted.
//! - New files are created like the first: never through a symlink, never over an existing
//!   file without `--force`.
//!
//! The file system is behind [`Storage`], so all of this is tested with a disk that fills up
//! on cue.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::{write::GzEncoder, Compression};
use thiserror::Error;

/// How often buffered records are written out: the most a crash of the tracer itself
/// (SIGKILL, a power cut of the process) can lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Largest block written at once; more pending records are written at once, in blocks.
const BLOCK_MAX: usize = 1 << 20;
/// Largest gzip member: a full disk loses at most one (deflate's window is 32 KiB, so
/// members this size compress nearly as well as one stream).
const GZIP_BLOCK_MAX: usize = 64 << 10;
/// Room every file keeps for its closing record (`part_end` or the summary).
pub const CLOSING_RESERVE: u64 = 16 << 10;
/// Smallest `--max-size`: a header, some records and the closing record must fit.
pub const MIN_PART_SIZE: u64 = 64 << 10;
/// gzip level: fast. JSON Lines of TCP records still shrink about tenfold, and the tracer's
/// CPU during an incident is better spent draining the kernel's buffer.
const GZIP_LEVEL: u32 = 1;

/// A file of the trace, as the writer needs it.
pub trait PartFile: Write {
    /// Cuts the file back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&mut self) -> io::Result<()>;
    /// True when the file's name is gone (deleted while it was written: no link left), so
    /// what was written to it is lost once it is closed.
    fn unlinked(&self) -> bool;
}

impl PartFile for File {
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }

    fn sync(&mut self) -> io::Result<()> {
        match self.sync_data() {
            // A FIFO, a pipe, /dev/null: nothing there to make durable.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r,
        }
    }

    fn unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.metadata().is_ok_and(|m| m.nlink() == 0)
    }
}

/// Where the files of a trace live.
pub trait Storage {
    type File: PartFile;
    /// Creates file number `part` (1, 2, ...; part 0 is opened before tracing starts).
    fn create(&mut self, part: u32) -> io::Result<Self::File>;
    fn remove(&mut self, part: u32) -> io::Result<()>;
    fn path(&self, part: u32) -> PathBuf;
}

/// Opens a trace file for writing: never through a symlink, at the file or anywhere in its
/// directory part (a link planted in a shared directory must not redirect a root-owned write;
/// see [`no_follow`]), and never over an existing file unless `force`.
pub fn open_part(path: &Path, force: bool) -> io::Result<File> {
    let flags = if force {
        libc::O_CREAT | libc::O_TRUNC
    } else {
        libc::O_CREAT | libc::O_EXCL
    };
    no_follow::open_file(path, flags, no_follow::Resolver::Openat2)
}

/// True for names that get gzip output.
pub fn is_gzip_name(path: &Path) -> bool {
    path.as_os_str().as_bytes().ends_with(b".gz")
}

/// The name of file `part` of the trace whose first file is `base`: the number goes before a
/// `.gz` suffix, so every part of a gzip trace still ends in `.gz`.
pub fn part_path(base: &Path, part: u32) -> PathBuf {
    if part == 0 {
        return base.to_owned();
    }
    let bytes = base.as_os_str().as_bytes();
    let mut name = Vec::with_capacity(bytes.len() + 8);
    match bytes.strip_suffix(b".gz") {
        Some(stem) => {
            name.extend_from_slice(stem);
            name.extend_from_slice(format!(".{part}.gz").as_bytes());
        }
        None => {
            name.extend_from_slice(bytes);
            name.extend_from_slice(format!(".{part}").as_bytes());
        }
    }
    PathBuf::from(OsStr::from_bytes(&name))
}

/// The later parts (1, 2, ...) of a trace based at `base` that exist now, by part number.
pub fn existing_parts(base: &Path) -> Vec<(u32, PathBuf)> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut parts: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = dir.join(e.file_name());
            let n = part_number(base, &path)?;
            (n > 0).then_some((n, path))
        })
        .collect();
    parts.sort();
    parts
}

/// Which part of the trace based at `base` the file at `path` would be.
fn part_number(base: &Path, path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let base_name = base.file_name()?.to_str()?;
    let (stem, suffix) = match base_name.strip_suffix(".gz") {
        Some(stem) => (stem, ".gz"),
        None => (base_name, ""),
    };
    let digits = name
        .strip_prefix(stem)?
        .strip_prefix('.')?
        .strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (part_path(base, n).file_name() == path.file_name()).then_some(n)
}

/// The trace's files on disk, next to the first one.
pub struct Files {
    base: PathBuf,
    force: bool,
}

impl Files {
    pub fn new(base: PathBuf, force: bool) -> Self {
        Self { base, force }
    }
}

impl Storage for Files {
    type File = File;

    fn create(&mut self, part: u32) -> io::Result<File> {
        open_part(&part_path(&self.base, part), self.force)
    }

    fn remove(&mut self, part: u32) -> io::Result<()> {
        no_follow::remove_file(&part_path(&self.base, part), no_follow::Resolver::Openat2)
    }

    fn path(&self, part: u32) -> PathBuf {
        part_path(&self.base, part)
    }
}

/// Rotation limits: each file stays under `max_size` bytes, at most `max_files` exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub gzip: bool,
    pub rotation: Option<Rotation>,
    pub flush_every: Duration,
}

/// Makes a write past the file size limit (`ulimit -f`, RLIMIT_FSIZE) fail with EFBIG instead
/// of raising SIGXFSZ, whose default action kills netwatch mid-write: no message, a partial
/// last line, a gzip member cut short. EFBIG then takes the full-disk path: the file is cut
/// back to its last whole record and the error names the file and the cause. Called first in
/// `main`, so the HTML report's write is covered too.
pub fn ignore_file_size_signal() {
    // SAFETY: sets a standard signal's disposition to SIG_IGN; no handler is involved.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// The records the writer itself must produce: a header for every new file, and the
/// `part_end` that closes a file the trace goes on after.
pub trait Framing {
    fn header(&mut self, part: u32) -> Vec<u8>;
    fn part_end(&mut self, part: u32, next: &str) -> Vec<u8>;
}

#[derive(Debug, Error)]
pub enum WriteError {
    /// A write failed; the file was cut back to its last whole record (or could not be).
    #[error("{}", write_message(path, error, *kept, truncate_error.as_ref()))]
    Write {
        path: PathBuf,
        error: io::Error,
        /// Bytes of whole records the file keeps.
        kept: u64,
        truncate_error: Option<io::Error>,
    },
    #[error("cannot create {}, the next part of the trace: {error}{}", path.display(), create_hint(error))]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot sync the trace {} to disk: {error}", path.display())]
    Sync { path: PathBuf, error: io::Error },
}

fn write_message(path: &Path, e: &io::Error, kept: u64, truncate: Option<&io::Error>) -> String {
    let cause = match e.raw_os_error() {
        Some(libc::ENOSPC) => " (ENOSPC: the file system is full)",
        Some(libc::EDQUOT) => " (EDQUOT: disk quota exceeded)",
        Some(libc::EFBIG) => {
            " (EFBIG: past the file size limit, `ulimit -f`, or the largest file of this file \
             system; --max-size keeps every file under a size)"
        }
        Some(libc::EIO) => " (EIO: the device reported an I/O error)",
        _ if e.kind() == io::ErrorKind::WriteZero => " (a short write)",
        _ => "",
    };
    let kept = match truncate {
        None => format!(
            "; the file keeps the trace up to its last whole record ({kept} bytes) and nothing \
             more is written to it"
        ),
        Some(t) => format!(
            "; cutting it back to its last whole record ({kept} bytes) failed too ({t}): its \
             last line may be incomplete"
        ),
    };
    format!(
        "writing the trace to {} failed: {e}{cause}{kept}",
        path.display()
    )
}

fn create_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AlreadyExists => " (it exists; pass --force to overwrite it)",
        _ if e.raw_os_error() == Some(libc::ELOOP) => " (it is a symlink, which is not followed)",
        _ if no_follow::LinkInPath::of(e).is_some() => " (its directory changed since the start)",
        _ => "",
    }
}

/// What a finished trace left on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// The files that exist now, first to last.
    pub files: Vec<PathBuf>,
    /// Bytes written to the last file.
    pub last_size: u64,
    /// Files deleted by rotation.
    pub deleted: u32,
    /// The last file, had someone deleted it while it was written (its records are gone
    /// with it): said instead of "saved".
    pub unlinked: Option<PathBuf>,
}

pub struct TraceWriter<S: Storage> {
    storage: S,
    /// None once writing failed or the trace was finished.
    file: Option<S::File>,
    part: u32,
    /// Bytes of whole blocks in the current file: where a failed write cuts back to.
    committed: u64,
    /// Blocks of records (not the header) in the current file.
    blocks_in_part: u64,
    pending: Vec<u8>,
    opts: Options,
    framing: Box<dyn Framing + Send>,
    last_flush: Instant,
    /// A failure not yet reported by [`TraceWriter::flush`].
    error: Option<WriteError>,
    /// Parts deleted by rotation, and problems deleting them.
    deleted: u32,
    pub warnings: Vec<String>,
}

impl<S: Storage> TraceWriter<S> {
    /// Starts the trace in `first` (part 0, opened before tracing began) and writes its
    /// header at once, so even a tracer killed a moment later leaves a file that says what it
    /// is.
    pub fn new(
        storage: S,
        first: S::File,
        opts: Options,
        framing: Box<dyn Framing + Send>,
    ) -> Result<Self, WriteError> {
        let mut w = Self {
            storage,
            file: Some(first),
            part: 0,
            committed: 0,
            blocks_in_part: 0,
            pending: Vec::with_capacity(1 << 16),
            opts,
            framing,
            last_flush: Instant::now(),
            error: None,
            deleted: 0,
            warnings: Vec::new(),
        };
        w.write_header()?;
        Ok(w)
    }

    fn block_max(&self) -> usize {
        let max = if self.opts.gzip {
            GZIP_BLOCK_MAX
        } else {
            BLOCK_MAX
        };
        match self.opts.rotation {
            // Blocks small enough that a file fills to near its size.
            Some(r) => ((r.max_size / 8) as usize).clamp(4 << 10, max),
            None => max,
        }
    }

    /// Appends one record: `f` writes it, a whole line with its newline, to the buffer.
    pub fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.file.is_none() {
            return;
        }
        f(&mut self.pending);
        if self.pending.len() >= self.block_max() {
            if let Err(e) = self.flush_now() {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Whether the flush interval has passed with records waiting (or a failure waits to be
    /// reported).
    pub fn due(&self, now: Instant) -> bool {
        (!self.pending.is_empty() && now.duration_since(self.last_flush) >= self.opts.flush_every)
            || self.error.is_some()
    }

    /// Writes out the buffered records. Err (once) when writing has failed, now or since the
    /// last call; after that nothing more is written.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.flush_now()
    }

    /// True once a write failed: the file ends at its last whole record, with no summary.
    #[cfg(test)]
    pub fn failed(&self) -> bool {
        self.file.is_none()
    }

    fn flush_now(&mut self) -> Result<(), WriteError> {
        self.last_flush = Instant::now();
        if self.file.is_none() {
            self.pending.clear();
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let limit = self.block_max();
        let mut rest = &pending[..];
        let mut result = Ok(());
        while !rest.is_empty() {
            let cut = block_end(rest, limit);
            let (block, tail) = rest.split_at(cut);
            rest = tail;
            let encoded = self.encode(block);
            if let Err(e) = self.rotate_if_needed(encoded.len() as u64) {
                result = Err(e);
                break;
            }
            if let Err(e) = self.write_block(&encoded) {
                result = Err(e);
                break;
            }
            self.blocks_in_part += 1;
        }
        self.pending = pending;
        self.pending.clear();
        result
    }

    /// The bytes of a block as they go to the file: the records themselves, or one gzip
    /// member of them.
    fn encode<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        if !self.opts.gzip {
            return Cow::Borrowed(data);
        }
        let mut gz = GzEncoder::new(
            Vec::with_capacity(data.len() / 4 + 64),
            Compression::new(GZIP_LEVEL),
        );
        // Writing into a Vec cannot fail.
        gz.write_all(data).expect("compressing into memory");
        Cow::Owned(gz.finish().expect("compressing into memory"))
    }

    /// Writes one block whole; or, when the write fails partway, cuts the file back to its
    /// last whole record (plain text: the last newline that made it; gzip: the end of the
    /// last whole member) and stops writing.
    fn write_block(&mut self, block: &[u8]) -> Result<(), WriteError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut written = 0;
        let failure = loop {
            if written == block.len() {
                break file.flush().err();
            }
            match file.write(&block[written..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let Some(error) = failure else {
            self.committed += block.len() as u64;
            return Ok(());
        };
        if !self.opts.gzip {
            let whole = block[..written]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.committed += whole as u64;
        }
        let truncate_error = file.truncate(self.committed).err();
        self.file = None;
        Err(WriteError::Write {
            path: self.storage.path(self.part),
            error,
            kept: self.committed,
            truncate_error,
        })
    }

    fn write_header(&mut self) -> Result<(), WriteError> {
        let header = self.framing.header(self.part);
        let encoded = self.encode(&header);
        self.write_block(&encoded)
    }

    /// Closes the current file and goes on in the next when a block of `len` bytes would not
    /// fit (with room to spare for the closing record).
    fn rotate_if_needed(&mut self, len: u64) -> Result<(), WriteError> {
        let Some(rot) = self.opts.rotation else {
            return Ok(());
        };
        if self.blocks_in_part == 0 || self.committed + len + CLOSING_RESERVE <= rot.max_size {
            return Ok(());
        }
        let next_path = self.storage.path(self.part + 1);
        let next_name = next_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let end = self.framing.part_end(self.part, &next_name);
        let encoded = self.encode(&end);
        self.write_block(&encoded)?;
        self.sync()?;
        let file = match self.storage.create(self.part + 1) {
            Ok(f) => f,
            Err(error) => {
                self.file = None;
                return Err(WriteError::Create {
                    path: next_path,
                    error,
                });
            }
        };
        self.file = Some(file);
        self.part += 1;
        self.committed = 0;
        self.blocks_in_part = 0;
        self.write_header()?;
        // Keep the first file and the newest others.
        if let Some(old) = self.part.checked_sub(rot.max_files - 1).filter(|&p| p >= 1) {
            match self.storage.remove(old) {
                Ok(()) => self.deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.warnings.push(format!(
                    "cannot delete the old trace part {}: {e}",
                    self.storage.path(old).display()
                )),
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WriteError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.sync().map_err(|error| WriteError::Sync {
            path: self.storage.path(self.part),
            error,
        })
    }

    /// Writes what is buffered and then `last` (the summary), and syncs. After a failure the
    /// file is left as it is (valid up to its last whole record), and this is Ok: the failure
    /// was already reported by [`TraceWriter::flush`].
    pub fn finish(&mut self, last: &[u8]) -> Result<Finished, WriteError> {
        self.flush()?;
        if self.file.is_some() {
            let encoded = self.encode(last);
            self.write_block(&encoded)?;
            self.sync()?;
        }
        let unlinked = self
            .file
            .take()
            .is_some_and(|f| f.unlinked())
            .then(|| self.storage.path(self.part));
        let first_kept = match self.opts.rotation {
            Some(r) => self.part.saturating_sub(r.max_files - 2).max(1),
            None => 1,
        };
        let files = std::iter::once(0)
            .chain(first_kept..=self.part)
            .map(|p| self.storage.path(p))
            .collect();
        Ok(Finished {
            files,
            last_size: self.committed,
            deleted: self.deleted,
            unlinked,
        })
    }
}

impl<S: Storage> Drop for TraceWriter<S> {
    /// Unwinding from a panic still writes the whole records that were buffered.
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = self.flush_now();
            let _ = self.sync();
        }
    }
}

/// Where a block of at most `limit` bytes of `data` ends: after the last newline within the
/// limit, or after the first newline if a single record is longer than that.
fn block_end(data: &[u8], limit: usize) -> usize {
    if data.len() <= limit {
        return data.len();
    }
    match data[..limit].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => data
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| i + 1),
    }
}

pub mod background;
pub mod no_follow;
pub mod queue;
pub mod stdout;

#[cfg(test)]
pub mod tests;
