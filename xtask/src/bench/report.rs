//! The tables: printed after every run and, with `--write`, saved as BENCHMARKS.md. Nothing in
//! the generated part is typed by hand; a section between the notes markers is kept across
//! runs for what people write about the figures.

use std::fmt::Write as _;

use super::{measure::Machine, Load, Million, MillionNetwatch, Mode, Run};

const NOTES_BEGIN: &str = "<!-- notes:begin (kept by `cargo xtask bench --write`) -->";
const NOTES_END: &str = "<!-- notes:end -->";

pub struct Report {
    pub machine: Machine,
    pub revision: String,
    pub rounds: u32,
    pub rate: u32,
    pub seconds: f64,
    pub warmup_s: f64,
    /// `--quick`: fewer, shorter runs; said at the top so nobody takes it for the real one.
    pub quick: bool,
    pub clients: u32,
    pub servers: u32,
    pub modes: Vec<Mode>,
    pub runs: Vec<Run>,
    pub sweep: Vec<Run>,
    pub million: Option<Million>,
    pub notes: Vec<String>,
    pub json_cmd: String,
    pub dash_cmd: String,
    pub plain_cmd: String,
    pub serve_cmd: String,
    pub summary_cmd: String,
    pub warmup: Load,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

pub fn records_per_s(r: &Run) -> Option<f64> {
    r.records.map(|n| n as f64 / r.load.seconds.max(1e-9))
}

/// What one mode's runs add up to.
pub struct Summary {
    pub mode: Mode,
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub cpu: Option<f64>,
    pub aux_cpu: Option<f64>,
    pub rss_mb: Option<f64>,
    pub records_s: Option<f64>,
    pub rec_per_conn: Option<f64>,
    pub records: u64,
    pub lost: Option<u64>,
    pub attach: Option<f64>,
    pub first_event: Option<f64>,
    pub maps_mb: Option<f64>,
    pub maps: usize,
    pub tui: Option<bool>,
    pub unclean: usize,
}

fn summarize(mode: Mode, runs: &[&Run]) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.load.conn_per_s).collect();
    let some = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
        runs.iter().filter_map(|r| f(r)).collect()
    };
    let lost: Vec<u64> = runs.iter().filter_map(|r| r.lost).collect();
    Some(Summary {
        mode,
        n: runs.len(),
        median: median(rates.clone()).unwrap_or(0.0),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        cpu: median(some(&|r| r.cpu_pct)),
        aux_cpu: median(some(&|r| r.aux_cpu_pct)),
        rss_mb: some(&|r| r.rss_kb.map(|k| k as f64 / 1024.0))
            .into_iter()
            .reduce(f64::max),
        records_s: median(some(&records_per_s)),
        rec_per_conn: median(some(&|r| {
            r.records
                .map(|n| n as f64 / (r.load.connections.max(1)) as f64)
        })),
        records: runs.iter().filter_map(|r| r.records).sum(),
        lost: (!lost.is_empty()).then(|| lost.iter().sum()),
        attach: median(some(&|r| r.attach_s)),
        first_event: median(some(&|r| r.first_event_s)),
        maps_mb: some(&|r| r.bpf.as_ref().map(|b| b.maps_memlock as f64 / 1048576.0))
            .into_iter()
            .reduce(f64::max),
        maps: runs
            .iter()
            .filter_map(|r| r.bpf.as_ref().map(|b| b.maps))
            .max()
            .unwrap_or(0),
        tui: runs.iter().find_map(|r| r.tui),
        unclean: runs.iter().filter(|r| !r.stopped_cleanly).count(),
    })
}

/// A progress line for one run.
pub fn one_line(r: &Run) -> String {
    let mut s = format!(
        "{:<18} {:>3} clients {:>9.0} conn/s",
        r.mode.name(),
        r.clients,
        r.load.conn_per_s
    );
    if r.load.errors > 0 {
        let _ = write!(s, " ({} errors {})", r.load.errors, r.load.errors_by_kind);
    }
    if r.load.listen_overflows > 0 {
        let _ = write!(s, " ({} listen overflows)", r.load.listen_overflows);
    }
    if let Some(c) = r.cpu_pct {
        let _ = write!(s, ", cpu {c:.1} %");
    }
    if let Some(c) = r.aux_cpu_pct {
        let _ = write!(s, " (+ script {c:.1} %)");
    }
    if let Some(k) = r.rss_kb {
        let _ = write!(s, ", rss {:.1} MB", k as f64 / 1024.0);
    }
    if let (Some(n), Some(l)) = (r.records, r.lost) {
        let _ = write!(s, ", {n} records, {l} lost");
    }
    if let Some(a) = r.attach_s {
        let _ = write!(s, ", attach {a:.2} s");
    }
    if let Some(f) = r.first_event_s {
        let _ = write!(s, ", first record {f:.2} s");
    }
    if let Some(b) = &r.bpf {
        let ns = b.run_time_ns();
        if ns > 0 {
            let per = ns as f64 / (r.records.unwrap_or(0) + r.lost.unwrap_or(0)).max(1) as f64;
            let _ = write!(s, ", kernel {per:.0} ns/record");
        }
    }
    if let Some(t) = r.tui {
        let _ = write!(s, ", tui {}", if t { "yes" } else { "no" });
    }
    if !r.stopped_cleanly {
        s.push_str(", KILLED");
    }
    s
}

/// Kernel ns per loadgen connection of all netwatch's programs, and of those without the
/// nested twins (None without program names); None without run-time statistics.
pub fn kernel_ns_per_conn(r: &Run) -> Option<(f64, Option<f64>)> {
    let b = r.bpf.as_ref().filter(|b| b.run_time_ns() > 0)?;
    let conns = r.load.connections.max(1) as f64;
    Some((
        b.run_time_ns() as f64 / conns,
        b.run_time_ns_without_twins().map(|ns| ns as f64 / conns),
    ))
}

pub fn verdict(met: bool, detail: String) -> String {
    if met {
        format!("met ({detail})")
    } else {
        format!("**missed** ({detail})")
    }
}

impl Report {
    pub fn summaries(&self) -> Vec<Summary> {
        self.modes
            .iter()
            .filter_map(|&m| {
                let runs: Vec<&Run> = self.runs.iter().filter(|r| r.mode == m).collect();
                summarize(m, &runs)
            })
            .collect()
    }

    /// The generated body (also what is printed).
    pub fn markdown(&self, with_header: bool) -> String {
        let mut o = String::new();
        let m = &self.machine;
        if with_header {
            o.push_str("# netwatch benchmarks\n\n");
            let _ = writeln!(
                o,
                "Generated by `cargo xtask bench --write` on {}: the tables and figures below are \
                 its output; run it again (as root) rather than editing them. Only the notes \
                 section at the end is written by people.\n",
                m.date
            );
        }
        if self.quick {
            let _ = writeln!(
                o,
                "**Quick run** (`--quick`): few short rounds, for comparing changes; not the \
                 benchmark.\n"
            );
        }
        let _ = writeln!(o, "## Machine\n");
        let _ = writeln!(
            o,
            "- {} CPUs ({}), {} memory, kernel {}, {}",
            m.cpus, m.cpu_model, m.memory, m.kernel, m.date
        );
        let _ = writeln!(
            o,
            "- `net.ipv4.tcp_max_tw_buckets` = {} (left as the system has it: at this churn the \
             TIME_WAIT table stays full and further server sockets close without one; the \
             warm-up alone overflowed it {} times), `ip_local_port_range` = {}\n",
            m.tw_buckets, self.warmup.tw_overflow, m.port_range
        );
        let _ = writeln!(o, "## Method\n");
        let _ = writeln!(o, "- netwatch: {}, release profile.", self.revision);
        let _ = writeln!(
            o,
            "- Load: `loadgen --clients {c} --servers {s}` (this repository): {c} client threads \
             connect from 127.0.0.2-254 (IP_BIND_ADDRESS_NO_PORT), send 16 bytes and wait for \
             the server's FIN; {s} server threads accept on 127.0.1.1-{s}, read and close first \
             (TIME_WAIT on the server side). One connection in flight per client, {r}; \
             loopback only.",
            c = self.clients,
            s = self.servers,
            r = if self.rate > 0 {
                format!("paced to {} conn/s in all (`--rate`) in part 1", self.rate)
            } else {
                "as fast as the box allows".to_string()
            }
        );
        let _ = writeln!(
            o,
            "- {} interleaved rounds of {} s per mode, in the order {}, after a {} s warm-up \
             (so every run sees the TIME_WAIT table full, as it stays).",
            self.rounds,
            self.seconds,
            self.modes
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", "),
            self.warmup_s
        );
        let _ = writeln!(
            o,
            "- Modes: `none`; `netwatch-json`: `{}` (JSON Lines to a file in /tmp, deleted \
             after the run); `netwatch-dashboard`: `{}` under a pseudo-terminal (`script`, \
             TERM=xterm, 24x80) whose output xtask reads as a terminal would; \
             `netwatch-plain`: `{}` (text summaries to a file); `netwatch-serve`: `{}` \
             (Prometheus metrics, not scraped during the run); `tcpstates`, `tcplife`: \
             Debian's libbpf-tools, output to a file.",
            self.json_cmd, self.dash_cmd, self.plain_cmd, self.serve_cmd
        );
        let _ = writeln!(
            o,
            "- Each tracer is started and waited for (netwatch: its `netwatch: attached` line; \
             peers: their BPF link in /proc/PID/fd, plus 1 s), then loadgen runs, then the \
             tracer is stopped (SIGINT; the dashboard: `q`). CPU = utime+stime from \
             /proc/PID/stat over the load window, % of one core; peak RSS = VmHWM before it \
             exits; records and lost from netwatch's exit line (peers: output lines, `lost N \
             events`); attach = start to the attached line; first record = start to the first \
             byte in the JSON file (load starts as soon as netwatch is attached). Ratio = \
             median conn/s over the `none` median.\n"
        );

        let sums = self.summaries();
        let none = sums.iter().find(|s| s.mode == Mode::None).map(|s| s.median);
        let _ = writeln!(o, "## Results\n");
        o.push_str(
            "| mode | runs | conn/s median | min-max | ratio to none | tracer CPU % of a core \
             | peak RSS MB | records/s | records per conn | records / lost | attach s | first \
             record s |\n",
        );
        o.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for s in &sums {
            let ratio = none.filter(|n| *n > 0.0).map(|n| s.median / n);
            let cpu = match (s.cpu, s.aux_cpu) {
                (Some(c), Some(a)) => format!("{c:.1} (+{a:.1} terminal)"),
                (c, _) => opt(c, 1),
            };
            let rec = match s.lost {
                Some(l) => format!("{} / {}", s.records, l),
                None => "–".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {:.0}-{:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.mode.name(),
                s.n,
                s.median,
                s.min,
                s.max,
                opt(ratio, 2),
                cpu,
                opt(s.rss_mb, 1),
                opt(s.records_s, 0),
                opt(s.rec_per_conn, 2),
                rec,
                opt(s.attach, 2),
                opt(s.first_event, 2)
            );
        }
        o.push('\n');

        // Targets, for the netwatch modes.
        let nw: Vec<&Summary> = sums.iter().filter(|s| s.mode.is_netwatch()).collect();
        if !nw.is_empty() {
            super::targets::section(&mut o, self, &sums);
            if let Some(d) = nw.iter().find(|s| s.mode == Mode::NetwatchDashboard) {
                let _ = writeln!(
                    o,
                    "Dashboard mode: {}.\n",
                    match d.tui {
                        Some(true) => "netwatch drew a full-screen TUI on the pseudo-terminal",
                        Some(false) =>
                            "netwatch drew no full-screen TUI on the pseudo-terminal (no \
                             alternate screen): this measured its tty default, printing lines",
                        None => "not observed",
                    }
                );
            }
            if let Some(mb) = nw.iter().filter_map(|s| s.maps_mb).reduce(f64::max) {
                let maps = nw.iter().map(|s| s.maps).max().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "Kernel memory of netwatch's {maps} BPF maps (sum of their `memlock`): \
                     {mb:.1} MB.\n"
                );
            }
        }

        self.sweep_section(&mut o);
        self.million_section(&mut o);

        let mut notes: Vec<String> = self.notes.clone();
        for s in &sums {
            if s.unclean > 0 {
                notes.push(format!(
                    "{}: {} run(s) did not exit within 20 s of being stopped and were killed",
                    s.mode.name(),
                    s.unclean
                ));
            }
        }
        let errs: u64 = self.runs.iter().map(|r| r.load.errors).sum();
        if errs > 0 {
            notes.push(format!(
                "loadgen saw {errs} failed connections in all (by kind per run in the xtask log)"
            ));
        }
        if !notes.is_empty() {
            let _ = writeln!(o, "## Run notes (generated)\n");
            for n in notes {
                let _ = writeln!(o, "- {}", n.replace('\n', " "));
            }
            o.push('\n');
        }
        o
    }

    fn sweep_section(&self, o: &mut String) {
        if self.sweep.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "## Records per second without loss, kernel cost per record\n"
        );
        let _ = writeln!(
            o,
            "`netwatch-json` with more loadgen clients per run ({} s each) until a run loses \
             records, with the kernel's run-time statistics on while the bench holds a \
             `BPF_ENABLE_STATS` descriptor (they add the kernel's own accounting to every \
             program run, so part 1 runs without them). Kernel ns per record and per \
             connection = the sum of netwatch's programs' `run_time_ns` (from \
             /proc/PID/fdinfo) over records emitted + lost, and over loadgen's connections \
             (hooks also run for the machine's other work, which this charges to the \
             connections); without twins = leaving out the `*_nested` programs; BPF CPU = \
             that time as % of one core over the load window.\n",
            self.seconds
        );
        o.push_str(
            "| clients | conn/s | records/s | lost | tracer CPU % | kernel ns / record | \
             kernel ns / conn | without nested twins | BPF CPU % of a core | programs: runs \
             per conn, ns/run |\n",
        );
        o.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for r in &self.sweep {
            let emitted = r.records.unwrap_or(0) + r.lost.unwrap_or(0);
            let conns = r.load.connections.max(1) as f64;
            let (per_conn, per_conn_first) = kernel_ns_per_conn(r).unzip();
            let (per, bpf_pct, progs) = match &r.bpf {
                Some(b) if b.run_time_ns() > 0 => (
                    Some(b.run_time_ns() as f64 / emitted.max(1) as f64),
                    Some(b.run_time_ns() as f64 / 1e9 / r.load.seconds * 100.0),
                    b.progs
                        .iter()
                        .filter(|p| p.run_cnt > 0)
                        .map(|p| {
                            format!(
                                "{} {:.2}/conn {:.0} ns{}",
                                p.name
                                    .clone()
                                    .unwrap_or_else(|| format!("#{} (type {})", p.id, p.prog_type)),
                                p.run_cnt as f64 / conns,
                                p.run_time_ns as f64 / p.run_cnt.max(1) as f64,
                                if p.recursion_misses > 0 {
                                    format!(" ({} recursion misses)", p.recursion_misses)
                                } else {
                                    String::new()
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                _ => (None, None, "–".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.clients,
                r.load.conn_per_s,
                opt(records_per_s(r), 0),
                r.lost.map(|l| l.to_string()).unwrap_or_else(|| "–".into()),
                opt(r.cpu_pct, 1),
                opt(per, 0),
                opt(per_conn, 0),
                opt(per_conn_first.flatten(), 0),
                opt(bpf_pct, 1),
                progs
            );
        }
        let best = self
            .sweep
            .iter()
            .filter(|r| r.lost == Some(0))
            .filter_map(records_per_s)
            .reduce(f64::max);
        let first_loss = self.sweep.iter().find(|r| r.lost.unwrap_or(0) > 0);
        let _ = writeln!(
            o,
            "\nHighest rate without loss: {}. {}\n",
            best.map(|b| format!("{b:.0} records/s"))
                .unwrap_or_else(|| "none (every run lost records)".into()),
            match first_loss {
                Some(r) => format!(
                    "First loss at {} clients: {} records lost at {} records/s.",
                    r.clients,
                    r.lost.unwrap_or(0),
                    opt(records_per_s(r), 0)
                ),
                None => "No run lost records: the box saturated first (the connection rate, \
                         not netwatch, is the limit)."
                    .into(),
            }
        );
    }

    fn million_section(&self, o: &mut String) {
        let Some(m) = &self.million else {
            return;
        };
        let mb = |kb: Option<u64>| opt(kb.map(|k| k as f64 / 1024.0), 1);
        let _ = writeln!(
            o,
            "## A million TIME_WAIT sockets
"
        );
        let _ = writeln!(
            o,
            "`net.ipv4.tcp_max_tw_buckets` raised from {} to {} for this part (restored \
             afterwards), then loadgen ran until /proc/net/sockstat showed {} TIME_WAIT sockets \
             ({:.0} s at {:.0} conn/s), with `{}` running (text summaries to a file). Then a \
             fresh netwatch started with them present.
",
            m.tw_buckets_before,
            super::MILLION_TW_BUCKETS,
            m.tw_sockets,
            m.fill_s,
            m.conn_per_s,
            format_args!("netwatch {}", self.summary_cmd),
        );
        o.push_str(
            "| netwatch | RSS MB | peak RSS MB | BPF maps memlock MB | TIME_WAIT in its summary \
             | CPU % | records / lost | entries not tracked | attach s | first summary s |
",
        );
        o.push_str(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
",
        );
        let row = |o: &mut String, name: &str, n: &MillionNetwatch| {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {:.1} | {} | {} | {} | {} | {:.2} | {} |",
                mb(n.rss_kb),
                mb(n.hwm_kb),
                n.maps_memlock as f64 / 1048576.0,
                n.tracked_tw
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "–".into()),
                opt(n.cpu_pct, 1),
                match (n.records, n.lost) {
                    (Some(r), Some(l)) => format!("{r} / {l}"),
                    _ => "–".into(),
                },
                n.untracked
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "–".into()),
                n.attach_s,
                opt(n.first_summary_s, 2)
            );
        };
        row(o, "running while they piled up", &m.running);
        if let Some(f) = &m.fresh {
            row(o, "started with them present", f);
        }
        o.push('\n');
    }

    /// BENCHMARKS.md: header, generated body, and the notes section of `old` kept.
    pub fn markdown_file(&self, old: &str) -> String {
        let kept = old
            .find(NOTES_BEGIN)
            .and_then(|b| {
                let rest = &old[b + NOTES_BEGIN.len()..];
                rest.find(NOTES_END).map(|e| rest[..e].trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                "(Nothing yet: what the figures mean, where netwatch misses a target, by how \
                 much and why.)"
                    .into()
            });
        format!(
            "{}## Notes\n\n{NOTES_BEGIN}\n{kept}\n{NOTES_END}\n",
            self.markdown(true)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
