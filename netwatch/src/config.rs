//! The validated configuration of a trace: everything resolved and checked before a single
//! program is loaded, so bad input fails fast and nothing is half-attached.

use std::fs::File;
use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{ReportArgs, TimeSpec, TraceArgs};
use crate::core::filter::AddrFilter;
use crate::netns_spec;
use crate::stop_signals;
use crate::writer::{self, Rotation};

pub enum OutputTarget {
    Stdout,
    File {
        /// Checked now, created only once the programs are attached ([`open_output`]), so
        /// that a failed start leaves no file behind.
        path: PathBuf,
        /// The name ends in `.gz`.
        gzip: bool,
        rotation: Option<Rotation>,
        /// Later parts may overwrite existing files.
        force: bool,
    },
}

/// What stdout shows while tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Dashboard,
    Plain,
    Events,
    /// Nothing: stdout carries JSON, or the user asked for quiet.
    None,
}

pub struct TraceConfig {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub ports: Vec<u16>,
    pub netns: Vec<u32>,
    /// Paths of the namespaces in `netns`, where one was found, for the census.
    pub netns_paths: Vec<PathBuf>,
    pub addrs: AddrFilter,
    /// `--addr` as given, for the trace header.
    pub addr_specs: Vec<String>,
    pub output: Option<OutputTarget>,
    pub view: View,
    /// `--verbose`: the verifier's own words for refused programs, on stderr at start.
    pub verbose: bool,
    /// `serve --listen` / `trace --metrics`: where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

/// A network namespace named like `ip netns`, given as a path, or as its inode number, checked
/// to be one that exists (see [`crate::netns_spec`]); its inode.
pub fn resolve_netns(spec: &str) -> Result<u32> {
    Ok(netns_spec::resolve(spec, &netns_spec::System)?.inode)
}

/// Checks, without creating anything, that the trace file can be created: an existing file
/// (without `--force`), a symlink, a directory or a missing directory are reported before the
/// slow start-up, and a start that fails later (no capability, no BTF) leaves no file behind.
pub fn check_output(path: &Path, force: bool) -> Result<()> {
    let refuse = |hint: &str| bail!("cannot create trace file {}: {hint}", path.display());
    if let Err(e) = writer::no_follow::open_dir_of(path, writer::no_follow::Resolver::Openat2) {
        if let Some(link) = writer::no_follow::LinkInPath::of(&e) {
            return refuse(&link.to_string());
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => refuse("it is a symlink, which is not followed"),
        Ok(m) if m.is_dir() => refuse("it is a directory"),
        // Nothing in a FIFO is overwritten: its reader gets the trace.
        Ok(m) if m.file_type().is_fifo() => Ok(()),
        Ok(_) if !force => refuse("it exists; pass --force to overwrite it"),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                refuse("its directory does not exist")
            }
        }
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot create trace file {}", path.display())))
        }
    }
}

/// The first trace file, as [`open_output`] leaves it.
#[derive(Debug)]
pub enum Opened {
    File(File),
    /// A FIFO that nobody has opened for reading: opening it for writing would wait for a
    /// reader, so the writer thread does that ([`open_fifo_waiting`]) while tracing goes on.
    FifoWithoutReader,
}

/// Opens a FIFO for writing, waiting for its reader: for the writer thread only.
pub fn open_fifo_waiting(path: &Path) -> std::io::Result<File> {
    writer::no_follow::open_file(path, 0, writer::no_follow::Resolver::Openat2)
}

/// Opens a FIFO without waiting for a reader (the kernel says ENXIO when there is none);
/// None when it is not a FIFO. Writes to it block again once opened: the writer thread
/// takes that wait, not the trace.
fn open_fifo_now(path: &Path) -> Option<std::io::Result<Opened>> {
    use std::os::fd::AsRawFd;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_fifo() {
        return None;
    }
    let opened =
        writer::no_follow::open_file(path, libc::O_NONBLOCK, writer::no_follow::Resolver::Openat2);
    Some(match opened {
        Ok(f) => {
            // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns.
            let ok = unsafe {
                let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                flags >= 0
                    && libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
            };
            if ok {
                Ok(Opened::File(f))
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Opened::FifoWithoutReader),
        Err(e) => Err(e),
    })
}

/// Creates the trace file once tracing can start (see [`check_output`]); a FIFO is opened
/// without waiting for its reader. Never follows a symlink at the final component (a link planted in
/// a shared directory must not redirect a root-owned write), and never truncates an existing
/// trace unless asked.
pub fn open_output(path: &Path, force: bool) -> Result<Opened> {
    let opened = match open_fifo_now(path) {
        Some(r) => r,
        None => writer::open_part(path, force).map(Opened::File),
    };
    opened.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AlreadyExists => "it exists; pass --force to overwrite it",
            std::io::ErrorKind::NotFound => "its directory does not exist",
            std::io::ErrorKind::PermissionDenied => "permission denied",
            _ if e.raw_os_error() == Some(libc::ELOOP) => "it is a symlink, which is not followed",
            _ if writer::no_follow::LinkInPath::of(&e).is_some() => "a symlink on its path",
            _ => "check the path",
        };
        anyhow::Error::new(e).context(format!(
            "cannot create trace file {}: {hint}",
            path.display()
        ))
    })
}

impl TraceConfig {
    pub fn from_args(args: TraceArgs) -> Result<Self> {
        let mut netns = Vec::new();
        let mut netns_paths = Vec::new();
        for spec in &args.filters.netns {
            let ns = netns_spec::resolve(spec, &netns_spec::System)?;
            netns.push(ns.inode);
            netns_paths.extend(ns.path);
        }
        if netns.len() > netwatch_common::names::limits::FILTER_ENTRIES as usize
            || args.filters.ports.len() > netwatch_common::names::limits::FILTER_ENTRIES as usize
        {
            bail!(
                "at most {} --port and {} --netns filters",
                netwatch_common::names::limits::FILTER_ENTRIES,
                netwatch_common::names::limits::FILTER_ENTRIES
            );
        }
        let rotation = args.max_size.map(|max_size| Rotation {
            max_size,
            max_files: args.max_files,
        });
        let output = match args.output.as_deref() {
            None => None,
            Some(p) if p == Path::new("-") => {
                if rotation.is_some() {
                    bail!("--max-size rotates a file: give --output FILE, not -");
                }
                Some(OutputTarget::Stdout)
            }
            Some(p) => {
                if rotation.is_some() && !args.force {
                    refuse_old_parts(p)?;
                }
                check_output(p, args.force)?;
                if rotation.is_some() && args.force {
                    remove_old_parts(p)?;
                }
                Some(OutputTarget::File {
                    path: p.to_owned(),
                    gzip: writer::is_gzip_name(p),
                    rotation,
                    force: args.force,
                })
            }
        };
        let json_on_stdout = matches!(output, Some(OutputTarget::Stdout));
        let view = if args.quiet || (json_on_stdout && !args.events && !args.plain) {
            View::None
        } else if args.events {
            View::Events
        } else if args.plain || !std::io::stdout().is_terminal() {
            View::Plain
        } else if stop_signals::in_background(libc::STDOUT_FILENO)
            || stop_signals::in_background(libc::STDIN_FILENO)
        {
            background_view(output.is_some())
        } else if let Some(why) =
            crate::ui::no_dashboard_because(std::env::var_os("TERM").as_deref())
        {
            eprintln!(
                "netwatch: {why}: no full-screen dashboard; plain summaries instead (--plain)"
            );
            View::Plain
        } else {
            View::Dashboard
        };
        if json_on_stdout && view != View::None {
            bail!("--output - puts JSON on stdout; drop --events/--plain or write JSON to a file");
        }
        Ok(Self {
            duration: args.duration,
            interval: args.interval,
            ports: args.filters.ports,
            netns,
            netns_paths,
            addrs: AddrFilter::new(args.filters.addrs.iter().map(|a| a.cidr).collect())?,
            addr_specs: args.filters.addrs.into_iter().map(|a| a.text).collect(),
            output,
            view,
            verbose: args.verbose,
            metrics: args.metrics,
        })
    }
}

/// The view of a trace started in the background of an interactive shell: the dashboard
/// would read keys and switch the terminal's modes, which stops a background job; so the
/// file alone when there is one, else the plain summaries (writes pass: SIGTTOU is ignored).
fn background_view(has_output: bool) -> View {
    let view = if has_output { View::None } else { View::Plain };
    eprintln!(
        "netwatch: started in the background: no dashboard{}",
        if has_output {
            "; the trace goes to its file only"
        } else {
            "; plain summaries instead"
        }
    );
    view
}

/// Rotated parts left next to the trace file by an earlier trace would be overwritten (or
/// block the rotation mid-incident): refuse them now...
fn refuse_old_parts(path: &Path) -> Result<()> {
    match writer::existing_parts(path).first() {
        None => Ok(()),
        Some((_, old)) => bail!(
            "cannot create trace file {}: {} exists, a part of an earlier trace that rotation \
             would overwrite; remove it or pass --force",
            path.display(),
            old.display()
        ),
    }
}

/// ... or, with --force, delete them now.
fn remove_old_parts(path: &Path) -> Result<()> {
    let old = writer::existing_parts(path);
    if old.is_empty() {
        return Ok(());
    }
    for (_, p) in &old {
        writer::no_follow::remove_file(p, writer::no_follow::Resolver::Openat2)
            .with_context(|| format!("cannot remove {}, part of an earlier trace", p.display()))?;
    }
    eprintln!(
        "netwatch: removed {} rotated part(s) of an earlier trace ({}, ...)",
        old.len(),
        old[0].1.display()
    );
    Ok(())
}

/// What `netwatch report` does, validated before the trace is read.
pub struct ReportConfig {
    pub traces: Vec<PathBuf>,
    pub json: bool,
    pub html: Option<PathBuf>,
    pub force: bool,
    pub ports: Vec<u16>,
    pub addrs: AddrFilter,
    pub addr_specs: Vec<String>,
    pub since: Option<TimeSpec>,
    pub until: Option<TimeSpec>,
}

impl ReportConfig {
    /// A plain text report of `traces`, nothing filtered: for tests.
    #[cfg(test)]
    pub fn of(traces: Vec<PathBuf>) -> Self {
        Self {
            traces,
            json: false,
            html: None,
            force: false,
            ports: Vec::new(),
            addrs: AddrFilter::default(),
            addr_specs: Vec::new(),
            since: None,
            until: None,
        }
    }

    pub fn from_args(args: ReportArgs) -> Result<Self> {
        for t in &args.traces {
            if t.is_dir() {
                bail!("{} is a directory, not a trace file", t.display());
            }
        }
        if let Some(html) = &args.html {
            let dir = match html.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                bail!(
                    "cannot write the HTML report {}: its directory does not exist",
                    html.display()
                );
            }
            if !args.force && std::fs::symlink_metadata(html).is_ok() {
                bail!(
                    "cannot write the HTML report {}: it exists; pass --force to overwrite it",
                    html.display()
                );
            }
        }
        if let (Some(TimeSpec::Offset(a)), Some(TimeSpec::Offset(b))) = (args.since, args.until) {
            if b <= a {
                bail!("--until must be after --since");
            }
        }
        Ok(Self {
            traces: args.traces,
            json: args.json,
            html: args.html,
            force: args.force,
            ports: args.ports,
            addrs: AddrFilter::new(args.addrs.iter().map(|a| a.cidr).collect())?,
            addr_specs: args.addrs.into_iter().map(|a| a.text).collect(),
            since: args.since,
            until: args.until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn netns_by_inode_path_and_missing_name() {
        let own_inode = resolve_netns("/proc/self/ns/net").unwrap();
        assert_eq!(resolve_netns(&own_inode.to_string()).unwrap(), own_inode);
        assert!(resolve_netns("99999999999").is_err());
        let own = resolve_netns("/proc/self/ns/net").unwrap();
        assert!(own > 0);
        let err = resolve_netns("surely-not-a-namespace").unwrap_err();
        assert!(format!("{err:#}").contains("ip netns list"));
    }

    #[test]
    fn output_is_not_overwritten_without_force_and_links_are_not_followed() {
        let dir = std::env::temp_dir().join(format!("netwatch-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.jsonl");
        let _ = std::fs::remove_file(&p);
        check_output(&p, false).unwrap();
        assert!(!p.exists(), "checking creates nothing");
        open_output(&p, false).unwrap();
        let err = open_output(&p, false).unwrap_err();
        assert!(format!("{err:#}").contains("--force"));
        let err = check_output(&p, false).unwrap_err();
        assert!(format!("{err:#}").contains("--force"));
        check_output(&p, true).unwrap();
        open_output(&p, true).unwrap();

        let link = dir.join("link.jsonl");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let err = open_output(&link, true).unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");
        let err = check_output(&link, true).unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");

        let err = open_output(&dir.join("missing/t.jsonl"), false).unwrap_err();
        assert!(format!("{err:#}").contains("directory does not exist"));
        let err = check_output(&dir.join("missing/t.jsonl"), false).unwrap_err();
        assert!(format!("{err:#}").contains("directory does not exist"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_without_a_reader_is_opened_without_waiting_and_needs_no_force() {
        let dir = crate::testing::TempDir::new("fifo-output");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        check_output(&fifo, false).unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            open_output(&fifo, false).unwrap(),
            Opened::FifoWithoutReader
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
        // With a reader it is opened at once, for blocking writes.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let Opened::File(f) = open_output(&fifo, false).unwrap() else {
            panic!("a FIFO with a reader opens");
        };
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(reader);
    }
}
