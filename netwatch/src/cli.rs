//! Command-line flags. Ranges and syntax are checked here by clap; everything that needs the
//! system (namespaces, output paths) is checked when [`crate::config`] turns these into a
//! validated configuration, before anything is attached.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::core::filter::Cidr;

const EXAMPLES: &str = "\
EXAMPLES:
    sudo netwatch trace                         live dashboard of TCP states and dwell times
    sudo netwatch trace --events                one line per TCP transition
    sudo netwatch trace --plain --interval 10s  a text summary every 10 s (also when piped)
    sudo netwatch trace --port 443 --duration 30s
    sudo netwatch trace --addr 10.0.0.0/8 --output trace.jsonl
    sudo netwatch trace --netns blue --output - | jq .
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
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. 30, 30s, 500ms, 5m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Only connections with this port on either side (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only connections with an address in this block on either side (repeatable).
    #[arg(long = "addr", value_name = "CIDR")]
    pub addrs: Vec<Cidr>,

    /// Only sockets in this network namespace: a name from `ip netns list`, a path such as
    /// /proc/PID/ns/net, or an inode number (repeatable).
    #[arg(long = "netns", value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,

    /// Write JSON Lines records to FILE, or to stdout with `-`.
    #[arg(short, long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,

    /// Overwrite the --output file if it exists.
    #[arg(long)]
    pub force: bool,

    /// Print one line per transition instead of the dashboard or summaries.
    #[arg(long, conflicts_with = "plain")]
    pub events: bool,

    /// Print a text summary every interval instead of the full-screen dashboard (the
    /// default when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,

    /// How often the dashboard, text summaries and JSON snapshot records are produced.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print nothing on stdout (JSON to --output only).
    #[arg(short, long, conflicts_with_all = ["events", "plain"])]
    pub quiet: bool,
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
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
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
        let Command::Trace(t) = ok.command;
        assert_eq!(t.ports, vec![80, 443]);
    }
}
