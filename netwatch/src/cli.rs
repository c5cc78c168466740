//! Command-line flags. Ranges and syntax are checked here by clap; everything that needs the
//! system (namespaces, output paths) is checked when [`crate::config`] turns these into a
//! validated configuration, before anything is attached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::core::filter::{Cidr, CidrError};

const EXAMPLES: &str = "\
EXAMPLES:
    sudo netwatch trace                         live dashboard of TCP states and dwell times
    sudo netwatch trace --events                one line per TCP transition
    sudo netwatch trace --plain --interval 10s  a text summary every 10 s (also when piped)
    sudo netwatch trace --port 443 --duration 30s
    sudo netwatch trace --addr 10.0.0.0/8 --output trace.jsonl
    sudo netwatch trace --netns blue --output - | jq .
    sudo netwatch trace --output /var/tmp/incident.jsonl.gz --max-size 100M
    netwatch report /var/tmp/incident.jsonl.gz  (no root needed)
";

const SERVE_EXAMPLES: &str = "\
EXAMPLES:
    sudo netwatch serve --listen 127.0.0.1:9977
    sudo netwatch serve --listen [::]:9977 --port 443
    curl -s 127.0.0.1:9977/metrics | grep netwatch_tcp_sockets
";

const REPORT_EXAMPLES: &str = "\
EXAMPLES:
    netwatch report trace.jsonl                     histograms, gauges, alerts and findings
    netwatch report trace.jsonl.gz --port 443       only connections with port 443
    netwatch report trace.jsonl --since +30s --until +90s
    netwatch report trace.jsonl --since 2026-12-01T18:35:00Z
    netwatch report trace.jsonl --json | jq .dwell
    netwatch report trace.jsonl --html incident.html
";

#[derive(Debug, Parser)]
#[command(name = "netwatch", version, about = "eBPF tracer of the TCP lifecycle: state transitions and how long sockets dwell in each state", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace TCP state transitions live (needs root, or CAP_BPF and CAP_PERFMON).
    #[command(after_help = EXAMPLES)]
    Trace(TraceArgs),
    /// Replay a saved trace (`trace --output`) into histograms, gauges over time, alerts and
    /// findings, as text, JSON or an HTML page. Needs neither root nor eBPF.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Run as an agent: trace with no terminal until SIGINT/SIGTERM and serve Prometheus
    /// metrics over HTTP (see docs/metrics.md). Needs what `trace` needs.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Print the JSON Schema of the trace records (`trace --output`).
    Schema,
    /// Print the completion script for SHELL (the .deb installs them; hidden from --help).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write netwatch's man pages into DIR (the .deb installs them; hidden from --help).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `--addr` as given, and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrArg {
    pub text: String,
    pub cidr: Cidr,
}

fn parse_cidr(s: &str) -> Result<CidrArg, CidrError> {
    Ok(CidrArg {
        text: s.to_owned(),
        cidr: s.parse()?,
    })
}

/// What `trace` and `serve` follow: the same filters for both.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only connections with this port on either side (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only connections with an address in this block on either side (repeatable, up to
    /// 64; matched in userspace, unlike --port and --netns, which the kernel filters).
    #[arg(long = "addr", value_name = "CIDR", value_parser = parse_cidr)]
    pub addrs: Vec<CidrArg>,

    /// Only sockets in this network namespace: a name from `ip netns list`, a path such as
    /// /proc/PID/ns/net, or an inode number (repeatable).
    #[arg(long = "netns", value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. 30, 30s, 500ms, 5m; at least 100ms); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_trace_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub filters: FilterArgs,

    /// Write the trace (JSON Lines, see `netwatch schema`) to FILE, or to stdout with `-`;
    /// gzip-compressed when FILE ends in `.gz`. No symlink on FILE's path is followed, in its
    /// directories or at FILE itself: give the path without links.
    #[arg(short, long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,

    /// Overwrite the --output file (and its rotated parts) if it exists.
    #[arg(long)]
    pub force: bool,

    /// Rotate the --output file before it grows past SIZE (e.g. 500K, 100M, 2G): the trace
    /// goes on in FILE.1, FILE.2, ... (FILE.1.gz, ... for gzip), each with its own header.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "output")]
    pub max_size: Option<u64>,

    /// With --max-size: keep at most N files; the first (the start of the incident) is kept,
    /// the oldest of the others deleted. Disk use stays under N x SIZE.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "max_size",
          value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub max_files: u32,

    /// Print one line per transition instead of the dashboard or summaries.
    #[arg(long, conflicts_with = "plain")]
    pub events: bool,

    /// Print a text summary every interval instead of the full-screen dashboard (the
    /// default when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,

    /// How often the dashboard, text summaries and JSON snapshot records are produced (at
    /// least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Print nothing on stdout (JSON to --output only).
    #[arg(short, long, conflicts_with_all = ["events", "plain"])]
    pub quiet: bool,

    /// Also print, for each program this kernel refused, the last lines of the verifier's
    /// log (the cause); the lost features themselves are always said, one line each.
    #[arg(short, long)]
    pub verbose: bool,

    /// Also serve Prometheus metrics (`/metrics`, `/healthz`) on ADDR:PORT while tracing,
    /// as `netwatch serve` does.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve `/metrics` (Prometheus text format, or OpenMetrics when the scraper asks for
    /// it) and `/healthz` on ADDR:PORT, e.g. 127.0.0.1:9977 or [::]:9977.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub filters: FilterArgs,

    /// How often the metrics are brought up to date (at least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Also print, for each program this kernel refused, the last lines of the verifier's
    /// log.
    #[arg(short, long)]
    pub verbose: bool,
}

impl ServeArgs {
    /// `serve` is a trace with no terminal, no file and no end but a signal.
    pub fn into_trace(self) -> TraceArgs {
        TraceArgs {
            duration: None,
            filters: self.filters,
            output: None,
            force: false,
            max_size: None,
            max_files: 10,
            events: false,
            plain: false,
            interval: self.interval,
            quiet: true,
            verbose: self.verbose,
            metrics: Some(self.listen),
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The trace: the file `trace --output` wrote (plain or .gz). Its later parts (FILE.1, ...)
    /// of the same run are read after it; or name the parts to read.
    #[arg(value_name = "TRACE", required = true)]
    pub traces: Vec<PathBuf>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Write the report as one self-contained HTML page with plots to FILE (instead of the
    /// text; with --json, as well as the JSON).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Overwrite the --html file if it exists.
    #[arg(long)]
    pub force: bool,

    /// Only connections with this port on either side (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only connections with an address in this block on either side (repeatable).
    #[arg(long = "addr", value_name = "CIDR", value_parser = parse_cidr)]
    pub addrs: Vec<CidrArg>,

    /// Start of the time window: RFC 3339 (2026-12-01T18:35:00Z) or an offset from the start
    /// of the trace (+30s, +5m).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeSpec>,

    /// End of the time window, as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<TimeSpec>,
}

/// A moment given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// After the start of the trace.
    Offset(Duration),
    At(OffsetDateTime),
}

/// `+30s` (from the start of the trace) or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<TimeSpec, String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('+') {
        return parse_duration(rest).map(TimeSpec::Offset);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(TimeSpec::At)
        .map_err(|_| {
            format!(
                "`{s}` is neither an RFC 3339 time (2026-12-01T18:35:00Z) nor an offset from the \
             start of the trace (+30s)"
            )
        })
}

/// `500K`, `100M`, `2G`, `1048576` (bytes; K, M, G are powers of 1024; a trailing `B` or `iB`
/// is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 500K, 100M, 2G)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown unit in `{s}` (use K, M or G)")),
    };
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    let min = crate::writer::MIN_PART_SIZE;
    if size < min {
        return Err(format!(
            "--max-size must be at least {}K (a file holds a header, records and its closing \
             record)",
            min >> 10
        ));
    }
    Ok(size)
}

/// Accepts `30`, `30s`, `1.5s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 30, 30s, 500ms, 5m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!(
            "duration `{s}` must be positive and under 30 years"
        ));
    }
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err(format!("duration `{s}` rounds to 0 ns"));
    }
    Ok(d)
}

/// The shortest `--interval` and `--duration`. Every interval samples counters, sysctls and
/// (at most 2% of the time) the kernel's request sockets, and a trace shorter than a few
/// 20 ms drains of the ring buffer shows nothing: below this a value is a typo, not a wish.
pub const MIN_TRACE_DURATION: Duration = Duration::from_millis(100);

/// A duration of at least [`MIN_TRACE_DURATION`], for `flag`.
fn at_least_min(s: &str, flag: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_TRACE_DURATION {
        return Err(format!(
            "{flag} must be at least {}ms (`{s}` is {d:?})",
            MIN_TRACE_DURATION.as_millis()
        ));
    }
    Ok(d)
}

/// `--duration`: as [`parse_duration`], at least [`MIN_TRACE_DURATION`].
pub fn parse_trace_duration(s: &str) -> Result<Duration, String> {
    at_least_min(s, "--duration")
}

/// `--interval`: as [`parse_duration`], at least [`MIN_TRACE_DURATION`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    at_least_min(s, "--interval")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
        // Positive, but nothing once in nanoseconds.
        assert!(parse_duration("0.0000000001")
            .unwrap_err()
            .contains("rounds to 0"));
        assert!(parse_duration("99999999999999").is_err());
    }

    #[test]
    fn trace_durations_have_a_minimum() {
        for flag in ["--interval", "--duration"] {
            for tiny in ["0.0000000001", "1ms", "0.05"] {
                let err = Cli::try_parse_from(["netwatch", "trace", flag, tiny])
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(flag) && (err.contains("at least 100ms") || err.contains("0 ns")),
                    "{flag} {tiny}: {err}"
                );
            }
            let ok = Cli::try_parse_from(["netwatch", "trace", flag, "100ms"]).unwrap();
            let Command::Trace(t) = ok.command else {
                panic!("not trace")
            };
            assert!(t.interval >= MIN_TRACE_DURATION);
            assert!(t.duration.is_none_or(|d| d == MIN_TRACE_DURATION));
        }
    }

    #[test]
    fn bad_flags_are_rejected_by_clap() {
        assert!(Cli::try_parse_from(["netwatch", "trace", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["netwatch", "trace", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["netwatch", "trace", "--addr", "10.0.0.0/99"]).is_err());
        let ok = Cli::try_parse_from([
            "netwatch",
            "trace",
            "--port",
            "80",
            "--port",
            "443",
            "--addr",
            "10.0.0.0/8",
        ])
        .unwrap();
        let Command::Trace(t) = ok.command else {
            panic!("not trace")
        };
        assert_eq!(t.filters.ports, vec![80, 443]);
        assert_eq!(t.filters.addrs[0].text, "10.0.0.0/8");
        // Rotation needs a file to rotate.
        assert!(Cli::try_parse_from(["netwatch", "trace", "--max-size", "1M"]).is_err());
        assert!(Cli::try_parse_from(["netwatch", "trace", "-o", "t", "--max-files", "3"]).is_err());
        let ok = Cli::try_parse_from(["netwatch", "trace", "-o", "t", "--max-size", "1M"]).unwrap();
        let Command::Trace(t) = ok.command else {
            panic!("not trace")
        };
        assert_eq!((t.max_size, t.max_files), (Some(1 << 20), 10));
        assert!(
            Cli::try_parse_from(["netwatch", "report"]).is_err(),
            "needs a trace"
        );
    }

    #[test]
    fn serve_takes_the_trace_filters_and_needs_an_address() {
        assert!(Cli::try_parse_from(["netwatch", "serve"]).is_err());
        assert!(Cli::try_parse_from(["netwatch", "serve", "--listen", "nowhere"]).is_err());
        let ok = Cli::try_parse_from([
            "netwatch",
            "serve",
            "--listen",
            "127.0.0.1:9977",
            "--netns",
            "blue",
            "--port",
            "80",
        ])
        .unwrap();
        let Command::Serve(s) = ok.command else {
            panic!("not serve")
        };
        let t = s.into_trace();
        assert_eq!(t.metrics, Some("127.0.0.1:9977".parse().unwrap()));
        assert!(t.quiet && t.duration.is_none() && t.output.is_none());
        assert_eq!(
            (t.filters.netns, t.filters.ports),
            (vec!["blue".into()], vec![80])
        );
        let ok = Cli::try_parse_from(["netwatch", "trace", "--metrics", "[::1]:9977"]).unwrap();
        let Command::Trace(t) = ok.command else {
            panic!("not trace")
        };
        assert!(t.metrics.is_some());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1mb").unwrap(), 1 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("1K").unwrap_err().contains("at least 64K"));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            parse_time("+90s").unwrap(),
            TimeSpec::Offset(Duration::from_secs(90))
        );
        let TimeSpec::At(t) = parse_time("2026-12-01T18:35:00.5Z").unwrap() else {
            panic!()
        };
        assert_eq!(t.unix_timestamp(), 1_796_150_100);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("+5x").is_err());
    }
}
