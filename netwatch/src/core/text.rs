//! One human line per transition, for `trace` on a terminal.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{clock::WallClock, event::Transition};

/// `1.5s`, `12.3ms`, `850us`, `-` when unknown: short enough to scan in a live stream.
pub fn duration(ns: Option<u64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) if ns >= 10_000_000_000 => format!("{:.1}s", ns as f64 / 1e9),
        Some(ns) if ns >= 1_000_000_000 => format!("{:.3}s", ns as f64 / 1e9),
        Some(ns) if ns >= 1_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        Some(ns) if ns >= 1_000 => format!("{}us", ns / 1_000),
        Some(ns) => format!("{ns}ns"),
    }
}

fn endpoint(out: &mut String, addr: IpAddr, port: u16) {
    let _ = match addr {
        IpAddr::V4(a) => write!(out, "{a}:{port}"),
        IpAddr::V6(a) => write!(out, "[{a}]:{port}"),
    };
}

pub const HEADER: &str = "TIME             LOCAL                  REMOTE                 OLD          NEW          DWELL(old) PROCESS";

/// `18:35:01.123456 10.0.0.1:40000 -> 10.0.0.2:80  SYN_SENT -> ESTABLISHED 1.2ms curl[4242]`
/// (the process last, `-` when none is known: most records come from softirq context and
/// take their owner from the socket's earlier ones)
pub fn transition_line(t: &Transition, clock: WallClock) -> String {
    let dt = clock.to_datetime(t.mono_ns);
    let mut local = String::new();
    endpoint(&mut local, t.saddr, t.sport);
    let mut remote = String::new();
    endpoint(&mut remote, t.daddr, t.dport);
    format!(
        "{:02}:{:02}:{:02}.{:06}  {:<22} {:<22} {:<12} {:<12} {:<10} {}",
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond(),
        local,
        remote,
        t.old_name(),
        t.new_name(),
        duration(t.dwell_ns),
        t.owner
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
    )
}

/// What a trace lacks when its output did not keep up, in the words of both the tracer (at
/// exit) and `report`.
pub fn output_dropped(n: u64) -> String {
    format!(
        "{n} record(s) were dropped, not written: the trace's output did not keep up (a slow or \
         absent reader, a stalled disk); the trace lacks them (COUNTS UNDERSTATED)"
    )
}

/// What the kernel's skipped program runs may have cost, in the words both the tracer (at
/// exit) and `report` use. The kernel runs one tracing program at a time per CPU; the twin
/// programs take one level of nesting (and say how many events they took over), and an
/// event nested deeper is skipped by both and only counted, so which event it was is
/// unknown: it may have been a transition of a traced socket, or an event netwatch would
/// have filtered out anyway.
pub fn skipped_runs(n: u64) -> String {
    format!(
        "the kernel skipped {n} run(s) of netwatch's programs nested on one CPU; up to {n} \
         transition(s) or other records may be missing (counts may be understated)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decode::{
        decode,
        tests::{bytes_of, raw_v4},
    };
    use crate::core::event::Event;

    #[test]
    fn durations_are_short_and_unit_suffixed() {
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(512)), "512ns");
        assert_eq!(duration(Some(850_000)), "850us");
        assert_eq!(duration(Some(12_345_678)), "12.3ms");
        assert_eq!(duration(Some(3_110_000_000)), "3.110s");
        assert_eq!(duration(Some(61_900_000_000)), "61.9s");
    }

    #[test]
    fn line_shows_endpoints_states_and_dwell() {
        let Ok(Event::Transition(t)) = decode(&bytes_of(&raw_v4())) else {
            panic!()
        };
        let line = transition_line(&t, WallClock::with_offset(3_600_000_000_000));
        assert_eq!(
            line,
            "01:00:00.000001  10.0.0.1:40000         10.0.0.2:80            SYN_SENT     ESTABLISHED  42ns       curl[4242]"
        );
    }
}
