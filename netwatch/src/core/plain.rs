//! The plain-text summary printed every interval when stdout is not a terminal (or with
//! `--plain`): gauges on one line, then one line per state that has dwell data.

use std::fmt::Write as _;

use netwatch_common::state;

use crate::features::KernelFeatures;

use super::early_ends::Cause;
use super::{
    clock::WallClock,
    coverage,
    json::reported_states,
    snapshot::{Percentiles, Snapshot},
    text::duration,
};

/// Namespaces listed one by one in a summary, the busiest.
const PLAIN_NAMESPACES: usize = 8;

/// States whose dwell and age an on-call engineer asks about first, in that order.
const FOCUS: &[u8] = &[
    state::TIME_WAIT,
    state::FIN_WAIT2,
    state::SYN_RECV,
    state::CLOSE_WAIT,
    state::SYN_SENT,
    state::FIN_WAIT1,
    state::LAST_ACK,
    state::CLOSING,
    state::ESTABLISHED,
];

fn pct(p: &Percentiles) -> String {
    format!(
        "n={} p50={} p90={} p99={} max={}",
        p.count,
        duration(Some(p.p50)),
        duration(Some(p.p90)),
        duration(Some(p.p99)),
        duration(Some(p.max))
    )
}

pub fn summary(s: &Snapshot, clock: WallClock) -> String {
    let dt = clock.to_datetime(s.mono_ns);
    let mut out = format!("[{:02}:{:02}:{:02}]", dt.hour(), dt.minute(), dt.second());
    for st in reported_states() {
        let now = s.state(st).now;
        let rate = s.rate(st);
        if now == 0 && rate == 0.0 {
            continue;
        }
        let _ = write!(out, " {} {}", state::name(st), now);
        if rate >= 0.5 {
            let _ = write!(out, " (+{rate:.0}/s)");
        }
    }
    let _ = write!(out, " | transitions {} lost {}", s.transitions, s.lost);
    if s.lost > 0 {
        out.push_str(" (RECORDS LOST)");
    }
    out.push('\n');
    // Every state's peak, those back to 0 included: the pile-up that is over is still
    // the story.
    let peaks: Vec<String> = reported_states()
        .filter(|&st| s.state(st).peak.max > 0)
        .map(|st| {
            let p = s.state(st).peak;
            let at = clock.to_datetime(p.at);
            format!(
                "{} {} at {:02}:{:02}:{:02}",
                state::name(st),
                p.max,
                at.hour(),
                at.minute(),
                at.second()
            )
        })
        .collect();
    if !peaks.is_empty() {
        let _ = writeln!(out, "  peak  {}", peaks.join(", "));
    }
    // Several namespaces: each one's own gauges, busiest first (their sum is above).
    if s.per_netns.len() > 1 {
        let mut spaces: Vec<(&u32, &[u64; state::COUNT])> = s.per_netns.iter().collect();
        spaces.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
        for (ns, counts) in spaces.into_iter().take(PLAIN_NAMESPACES) {
            let states: Vec<String> = reported_states()
                .filter(|&st| counts[st as usize] > 0)
                .map(|st| format!("{} {}", state::name(st), counts[st as usize]))
                .collect();
            let _ = writeln!(
                out,
                "  netns {:<10} {}",
                s.netns_label(*ns),
                states.join(" ")
            );
        }
    }
    let early = &s.timewait_early_ends;
    if early.total() + early.pending > 0 {
        let causes: Vec<String> = Cause::ALL
            .iter()
            .filter(|&&c| early.get(c) > 0)
            .map(|&c| format!("{} {}", c.name(), early.get(c)))
            .collect();
        let _ = write!(out, "  TIME_WAIT ended early: {}", causes.join(", "));
        if early.pending > 0 {
            let _ = write!(out, " ({} awaiting evidence)", early.pending);
        }
        out.push('\n');
    }
    for &st in FOCUS {
        let stats = s.state(st);
        if stats.dwell.count > 0 {
            let _ = writeln!(out, "  dwell {:<11} {}", state::name(st), pct(&stats.dwell));
        }
        if stats.age.count > 0 && st != state::ESTABLISHED {
            let _ = writeln!(
                out,
                "  age   {:<11} {} (still in state)",
                state::name(st),
                pct(&stats.age)
            );
        }
        // Who holds them: the process, and its container (or unit) where known.
        let holders: Vec<String> = s.top_processes[st as usize]
            .iter()
            .take(PLAIN_HOLDERS)
            .map(|t| format!("{} {}", t.key, t.count))
            .collect();
        if !holders.is_empty() {
            let _ = writeln!(
                out,
                "  held  {:<11} {}",
                state::name(st),
                holders.join(", ")
            );
        }
    }
    out
}

/// Processes named per state in a summary (the dashboard and the report show more).
const PLAIN_HOLDERS: usize = 3;

/// Printed after the last summary: which features this trace had, so that an empty
/// TIME_WAIT line on a kernel that hides it is not read as calm.
pub fn coverage(kernel: &str, features: &KernelFeatures) -> String {
    let mut out = String::new();
    for line in coverage::lines(kernel, features, "  ") {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Owner;
    use crate::core::snapshot::{Peak, Talker};

    #[test]
    fn the_closing_words_name_the_kernel_and_what_it_hid() {
        let text = coverage("6.1.0-57", &crate::core::coverage::tests::debian_6_1());
        assert!(
            text.starts_with(
                "Kernel: 6.1.0-57; unavailable here:\n  TIME_WAIT and orphaned FIN_WAIT2 dwell ("
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3);
        assert_eq!(
            coverage("6.18.0", &KernelFeatures::all("tp_btf")),
            "Kernel: 6.18.0; all features available\n"
        );
    }

    #[test]
    fn summary_names_states_rates_and_percentiles() {
        let mut s = Snapshot::empty();
        s.mono_ns = 10_000_000_000;
        s.interval_ns = 1_000_000_000;
        s.states[state::TIME_WAIT as usize].now = 28000;
        s.states[state::TIME_WAIT as usize].entered = 710;
        s.states[state::TIME_WAIT as usize].dwell = Percentiles {
            count: 5,
            p50: 60_500_000_000,
            p90: 61_000_000_000,
            p99: 62_000_000_000,
            max: 62_500_000_000,
        };
        s.states[state::CLOSE_WAIT as usize].now = 2;
        s.states[state::CLOSE_WAIT as usize].age = Percentiles {
            count: 2,
            p50: 3_000_000_000,
            p90: 40_000_000_000,
            p99: 40_000_000_000,
            max: 40_000_000_000,
        };
        s.transitions = 99;
        s.top_processes[state::CLOSE_WAIT as usize] = vec![Talker {
            key: Owner {
                pid: 6345,
                comm: "python3".into(),
                container: None,
            },
            count: 2,
        }];
        let text = summary(&s, WallClock::with_offset(0));
        assert_eq!(
            text,
            "[00:00:10] TIME_WAIT 28000 (+710/s) CLOSE_WAIT 2 | transitions 99 lost 0\n  \
             dwell TIME_WAIT   n=5 p50=60.5s p90=61.0s p99=62.0s max=62.5s\n  \
             age   CLOSE_WAIT  n=2 p50=3.000s p90=40.0s p99=40.0s max=40.0s (still in state)\n  \
             held  CLOSE_WAIT  python3[6345] 2\n"
        );
        s.lost = 3;
        assert!(summary(&s, WallClock::with_offset(0)).contains("lost 3 (RECORDS LOST)"));
        // A state back to 0 keeps its peak and when it was.
        s.states[state::FIN_WAIT2 as usize].peak = Peak {
            max: 200,
            at: 4_000_000_000,
        };
        s.states[state::TIME_WAIT as usize].peak = Peak {
            max: 28000,
            at: 10_000_000_000,
        };
        let text = summary(&s, WallClock::with_offset(0));
        assert!(
            text.contains("\n  peak  FIN_WAIT2 200 at 00:00:04, TIME_WAIT 28000 at 00:00:10\n"),
            "{text}"
        );
    }

    #[test]
    fn summary_names_who_holds_the_sockets_and_their_container() {
        use crate::core::event::Owner;
        use crate::core::snapshot::Talker;
        let mut s = Snapshot::empty();
        s.states[state::CLOSE_WAIT as usize].now = 7;
        s.top_processes[state::CLOSE_WAIT as usize] = vec![Talker {
            key: Owner {
                pid: 6345,
                comm: "python3".into(),
                container: Some("0123456789ab".into()),
            },
            count: 7,
        }];
        let text = summary(&s, WallClock::with_offset(0));
        assert!(
            text.contains("\n  held  CLOSE_WAIT  python3[6345] (0123456789ab) 7\n"),
            "{text}"
        );
    }
}
