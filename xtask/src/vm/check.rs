//! Reads a trace a guest sent back and says which capabilities it shows: pure, so every rule
//! is unit-tested on sample lines without booting anything.

use std::fmt;

use serde_json::Value;

/// The guest's scenario ports (tests/src/bin/netwatch-vm-guest/ uses the same numbers)
/// that the checker needs: the orphans' client sockets are the only ones whose timewait
/// socket dies in FIN_WAIT2 (7101) or turns TIME_WAIT on the peer's FIN (7102).
pub const ORPHAN_DIES_PORT: u64 = 7101;
pub const ORPHAN_TO_TIME_WAIT_PORT: u64 = 7102;
/// The client whose SYNs a full conntrack table refuses (on output, the host's own
/// connect).
pub const TABLE_FULL_CLIENT: &str = "127.0.0.1:7212";

/// Something the scenarios make the kernel do that netwatch should report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Full-socket transitions carrying the dwell of the state left.
    Transitions,
    /// Sockets entering TIME_WAIT, timewait sockets dying (`TIME_WAIT -> CLOSE`, dwell), and
    /// an orphan's FIN_WAIT2 timewait socket dying (`FIN_WAIT2 -> CLOSE`, timewait, dwell).
    TimeWait,
    /// The orphan's timewait socket turned TIME_WAIT by the peer's FIN.
    OrphanFin,
    /// Server-side SYN_RECV from the request socket (`accept_wait_ns` present).
    SynRecv,
    /// A request socket whose SYN-ACK was resent.
    SynackRetransmits,
    /// A packet drop with a reason the kernel has: a final ACK refused by a full accept
    /// queue (TCP_LISTEN_OVERFLOW, 6.16+), a PAWS reject, or a netfilter drop
    /// (NETFILTER_DROP, 6.1+) named among the senders of a `conntrack_full` alert.
    Drops,
    /// Conntrack entries' lifetimes (creation to expiry) in a snapshot's `conntrack`.
    ConntrackLifetimes,
    /// The TIME_WAIT a reconnect from the same port took over is counted as an early end
    /// by `syn_reuse` in the summary's `timewait_early_ends`.
    EarlyEnds,
    /// No `timewait_overflow` alert: these scenarios never overflow, so one is false.
    NoFalseOverflow,
    /// Transitions carrying the socket's cgroup id (read from `sk_cgrp_data`).
    Containers,
}

use Capability::*;

impl Capability {
    pub const ALL: &'static [Capability] = &[
        Transitions,
        TimeWait,
        OrphanFin,
        SynRecv,
        SynackRetransmits,
        Drops,
        ConntrackLifetimes,
        EarlyEnds,
        NoFalseOverflow,
        Containers,
    ];

    /// Column heading.
    pub fn name(self) -> &'static str {
        match self {
            Transitions => "transitions",
            TimeWait => "time_wait",
            OrphanFin => "orphan_fin",
            SynRecv => "syn_recv",
            SynackRetransmits => "synack_rtx",
            Drops => "drops",
            ConntrackLifetimes => "ct_lifetimes",
            EarlyEnds => "tw_early_end",
            NoFalseOverflow => "no_false_tw_overflow",
            Containers => "cgroup",
        }
    }

    /// The capability behind a feature of the trace header's `kernel_features`; None for
    /// those the scenarios do not exercise (PAWS evidence, nested events).
    fn of_feature(feature: &str) -> Option<Capability> {
        Some(match feature {
            "transitions" => Transitions,
            "time_wait" => TimeWait,
            "orphan_fin" => OrphanFin,
            "syn_recv" => SynRecv,
            "synack_retransmits" => SynackRetransmits,
            "drop_reasons" => Drops,
            "conntrack_lifetimes" => ConntrackLifetimes,
            "containers" => Containers,
            _ => return None,
        })
    }
}

/// What the trace shows, capability by capability.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub transitions: bool,
    pub into_time_wait: bool,
    pub time_wait_death: bool,
    pub orphan_death: bool,
    pub orphan_fin: bool,
    pub syn_recv: bool,
    pub synack_retransmits: bool,
    pub drops: bool,
    /// Senders of netfilter drops, as `conntrack_full` alerts list them.
    pub netfilter_drops_from: Vec<String>,
    /// Packets `conntrack_full` alerts say the full table refused.
    pub table_full_drops: u64,
    pub conntrack_lifetimes: bool,
    /// TIME_WAITs the summary counts as ended by a reconnect's SYN.
    pub syn_reuse_ends: u64,
    pub timewait_overflow_alerts: u64,
    pub cgroup: bool,
    /// `kernel_features` of the header: (feature, available, detail); empty when absent.
    pub claimed: Vec<(String, bool, String)>,
    /// Whether the trace ended with its summary (netwatch stopped cleanly).
    pub complete: bool,
    pub lines: usize,
    pub bad_lines: usize,
}

impl Observed {
    pub fn has(&self, cap: Capability) -> bool {
        match cap {
            Transitions => self.transitions,
            TimeWait => self.into_time_wait && self.time_wait_death && self.orphan_death,
            OrphanFin => self.orphan_fin,
            SynRecv => self.syn_recv,
            SynackRetransmits => self.synack_retransmits,
            Drops => self.drops,
            ConntrackLifetimes => self.conntrack_lifetimes,
            EarlyEnds => self.syn_reuse_ends >= 1,
            NoFalseOverflow => self.timewait_overflow_alerts == 0,
            Containers => self.cgroup,
        }
    }
}

/// Scans JSON Lines; unknown record types and fields are ignored, as the format allows.
pub fn observe(trace: &str) -> Observed {
    let mut o = Observed::default();
    for line in trace.lines().filter(|l| !l.trim().is_empty()) {
        o.lines += 1;
        let Ok(rec) = serde_json::from_str::<Value>(line) else {
            o.bad_lines += 1;
            continue;
        };
        match rec["type"].as_str() {
            Some("header") => o.claimed = claimed_features(&rec),
            Some("transition") => transition(&rec, &mut o),
            Some("alert") => alert(&rec, &mut o),
            Some("snapshot") => snapshot(&rec, &mut o),
            Some("summary") => {
                o.complete = true;
                o.syn_reuse_ends = rec["timewait_early_ends"]["syn_reuse"]
                    .as_u64()
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    o
}

fn claimed_features(header: &Value) -> Vec<(String, bool, String)> {
    let Some(list) = header["kernel_features"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|f| {
            Some((
                f["feature"].as_str()?.to_owned(),
                f["available"].as_bool()?,
                f["detail"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn transition(t: &Value, o: &mut Observed) {
    let (old, new) = (
        t["old"].as_str().unwrap_or(""),
        t["new"].as_str().unwrap_or(""),
    );
    let dwell = t["dwell_ns"].is_u64();
    let timewait = t["timewait"].as_bool() == Some(true);
    o.transitions |= dwell && old != new;
    o.cgroup |= t["cgroup"].as_u64().is_some_and(|id| id != 0);
    o.into_time_wait |= new == "TIME_WAIT";
    o.time_wait_death |= old == "TIME_WAIT" && new == "CLOSE" && timewait && dwell;
    let dport = t["dport"].as_u64();
    o.orphan_death |= old == "FIN_WAIT2"
        && new == "CLOSE"
        && timewait
        && dwell
        && dport == Some(ORPHAN_DIES_PORT);
    o.orphan_fin |=
        old == "FIN_WAIT2" && new == "TIME_WAIT" && dport == Some(ORPHAN_TO_TIME_WAIT_PORT);
    // Only the end of a request socket carries these two fields.
    let request_end = old == "SYN_RECV" && t.get("accept_wait_ns").is_some();
    o.syn_recv |= request_end;
    o.synack_retransmits |= request_end && t["synack_retransmits"].as_u64().unwrap_or(0) >= 1;
}

fn alert(a: &Value, o: &mut Observed) {
    match a["kind"].as_str() {
        Some("timewait_overflow") => o.timewait_overflow_alerts += 1,
        Some("listen_overflow") => {
            o.drops |= a["dropped_final_acks"].as_u64().unwrap_or(0) >= 1;
        }
        Some("paws_reject") => o.drops = true,
        Some("conntrack_full") => {
            o.table_full_drops += a["table_full_drops"].as_u64().unwrap_or(0);
            for from in a["dropped_from"].as_array().into_iter().flatten() {
                let from = from.as_str().unwrap_or_default().to_owned();
                o.drops = true;
                if !o.netfilter_drops_from.contains(&from) {
                    o.netfilter_drops_from.push(from);
                }
            }
        }
        _ => {}
    }
}

/// A snapshot's `conntrack.lifetime`: percentiles by the conntrack TCP state entries ended
/// in, each with the `count` of entries behind it.
fn snapshot(s: &Value, o: &mut Observed) {
    let Some(by_state) = s["conntrack"]["lifetime"].as_object() else {
        return;
    };
    o.conntrack_lifetimes |= by_state
        .values()
        .any(|p| p["count"].as_u64().unwrap_or(0) >= 1);
}

/// When a full table refused packets on a kernel with drop reasons but no alert names the
/// scenario's client among the netfilter drops' senders. Those drops are on output, where
/// the packet has no device yet: netwatch once filed them under namespace 0, apart from the
/// table's, so an engineer whose client box filled its table was never told who sent.
pub fn unnamed_table_full_drops(o: &Observed) -> Option<String> {
    let reasons = o
        .claimed
        .iter()
        .any(|(f, available, _)| f == "drop_reasons" && *available);
    let named = o
        .netfilter_drops_from
        .iter()
        .any(|f| f == TABLE_FULL_CLIENT);
    (reasons && o.table_full_drops > 0 && !named).then(|| {
        format!(
            "the full conntrack table refused {} packet(s) of the host's own connect from \
             {TABLE_FULL_CLIENT}, but no conntrack_full alert names it among the netfilter \
             drops' senders",
            o.table_full_drops
        )
    })
}

/// One cell of the results table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Expected and seen.
    Ok,
    /// Expected, not seen: a failure.
    Missing,
    /// Seen against expectation (a false alert): a failure.
    Unexpected,
    /// Not expected on this kernel but seen: the expectation table can be raised.
    Bonus,
    /// Not expected, not seen.
    NotExpected,
}

impl Cell {
    pub fn fails(self) -> bool {
        matches!(self, Cell::Missing | Cell::Unexpected)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cell::Ok => "ok",
            Cell::Missing => "MISSING",
            Cell::Unexpected => "UNEXPECTED",
            Cell::Bonus => "seen",
            Cell::NotExpected => "-",
        })
    }
}

/// The verdict for one capability on a kernel that expects `expected`.
pub fn cell(cap: Capability, expected: &[Capability], o: &Observed) -> Cell {
    let want = expected.contains(&cap);
    match (cap, want, o.has(cap)) {
        // A false alert is wrong whatever the table says.
        (NoFalseOverflow, _, false) => Cell::Unexpected,
        (_, true, true) => Cell::Ok,
        (_, true, false) => Cell::Missing,
        (_, false, true) => Cell::Bonus,
        (_, false, false) => Cell::NotExpected,
    }
}

/// Features the header says work but the trace does not show, where the scenarios exercise
/// them ("claimed but lost"), with the header's detail: the loader's self-report is wrong.
/// Every feature with a capability is exercised on every kernel (drops by netfilter, whose
/// reason every kernel with drop reasons has).
pub fn claims_not_kept(o: &Observed) -> Vec<String> {
    o.claimed
        .iter()
        .filter(|(_, available, _)| *available)
        .filter_map(|(feature, _, detail)| {
            let cap = Capability::of_feature(feature)?;
            (!o.has(cap)).then(|| format!("{feature} ({detail})"))
        })
        .collect()
}

/// Features the header says are lost, with why: printed so the table explains itself.
pub fn lost_features(o: &Observed) -> Vec<String> {
    o.claimed
        .iter()
        .filter(|(_, available, _)| !*available)
        .map(|(feature, _, detail)| format!("{feature}: {detail}"))
        .collect()
}

/// The runs of netwatch's programs the kernel skipped and no twin covered, as the trace's
/// summary says (0 without a summary). netwatch says so itself; a check that then fails may
/// have lost its evidence to the kernel rather than to netwatch.
pub fn skipped_runs(trace: &str) -> u64 {
    trace
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["type"] == "summary")
        .and_then(|r| r["skipped_runs"].as_u64())
        .unwrap_or(0)
}

/// The slab hooks' runs per connection in the guest's overhead line (`overhead: ...`), where
/// any ran: with conntrack idle and fentry allowed (every stock kernel), the destructor hooks
/// report socket deaths and the slab hooks, which run for every slab object of the kernel,
/// must stay detached. None when they did not run or the line has no figures.
pub fn slab_hooks_ran(overhead: &str) -> Option<String> {
    let (_, per) = overhead.split_once("runs per connection (ns a run): ")?;
    let per = per.split(';').next()?;
    let ran: Vec<&str> = per
        .split(", ")
        .filter(|p| p.starts_with("slab_"))
        .filter(|p| {
            p.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n > 0.0)
        })
        .collect();
    (!ran.is_empty()).then(|| {
        format!(
            "slab hooks ran while conntrack was idle (the destructor hooks should report \
             socket deaths): {}",
            ran.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn skipped_runs_come_from_the_summary() {
        let trace = "{\"type\":\"header\"}\n{\"type\":\"summary\",\"skipped_runs\":62}\n";
        assert_eq!(super::skipped_runs(trace), 62);
        assert_eq!(super::skipped_runs("{\"type\":\"header\"}\n"), 0);
        assert_eq!(super::skipped_runs("not json"), 0);
    }

    #[test]
    fn slab_hooks_running_with_conntrack_idle_are_reported() {
        let idle = "overhead: 300 connections in 0.2 s in a namespace whose conntrack is \
                    idle; runs per connection (ns a run): drops 1.00 (3149 ns), \
                    req_destructor 1.00 (12265 ns), slab_alloc 0.00 (0 ns), slab_free 0.00 \
                    (0 ns), set_state 10.01 (5135 ns); all programs 74619 ns per connection \
                    (TCG)";
        assert_eq!(super::slab_hooks_ran(idle), None);
        let ran = idle.replace("slab_free 0.00 (0 ns)", "slab_free 21.40 (700 ns)");
        let note = super::slab_hooks_ran(&ran).unwrap();
        assert!(note.ends_with("slab_free 21.40 (700 ns)"), "{note}");
        assert_eq!(super::slab_hooks_ran("warning: overhead: no stats"), None);
    }

    use super::*;

    const HEADER: &str = r#"{"type":"header","format":"netwatch-trace","schema_version":1,"kernel":"6.18.15","kernel_features":[{"feature":"transitions","available":true,"detail":"tp_btf inet_sock_set_state"},{"feature":"time_wait","available":true,"detail":"tp_btf kmem_cache_free"},{"feature":"drop_reasons","available":false,"detail":"kfree_skb has no drop reason before 5.17"},{"feature":"nested_events","available":true,"detail":"twins"}]}"#;
    const CONNECT: &str = r#"{"type":"transition","sock_id":1,"old":"SYN_SENT","new":"ESTABLISHED","dwell_ns":55668,"dport":7101,"cgroup":1}"#;
    const FIRST: &str =
        r#"{"type":"transition","sock_id":1,"old":"CLOSE","new":"SYN_SENT","dwell_ns":null}"#;
    const INTO_TW: &str = r#"{"type":"transition","sock_id":2,"old":"FIN_WAIT2","new":"TIME_WAIT","dwell_ns":100,"sport":7103,"dport":40000,"timewait":true}"#;
    const TW_DEATH: &str = r#"{"type":"transition","sock_id":2,"old":"TIME_WAIT","new":"CLOSE","dwell_ns":500000000,"timewait":true}"#;
    const ORPHAN_DIES: &str = r#"{"type":"transition","sock_id":5,"old":"FIN_WAIT2","new":"CLOSE","dwell_ns":2021752656,"sport":41001,"dport":7101,"timewait":true}"#;
    const ORPHAN: &str = r#"{"type":"transition","sock_id":3,"old":"FIN_WAIT2","new":"TIME_WAIT","dwell_ns":400000000,"sport":41000,"dport":7102,"timewait":true}"#;
    const REQ: &str = r#"{"type":"transition","sock_id":4,"old":"SYN_RECV","new":"ESTABLISHED","dwell_ns":3000000000,"synack_retransmits":2,"accept_wait_ns":1000}"#;
    const OVERFLOW: &str =
        r#"{"type":"alert","kind":"timewait_overflow","closed_without_timewait":2}"#;
    const LISTEN: &str =
        r#"{"type":"alert","kind":"listen_overflow","dropped_final_acks":1,"listen_overflows":3}"#;
    const SUMMARY: &str = r#"{"type":"summary","stopped_by":"sigint","timewait_early_ends":{"syn_reuse":1,"tw_reuse":0,"rst":0,"other":0,"pending":0}}"#;
    const CT_FULL: &str = r#"{"type":"alert","kind":"conntrack_full","netns":4026531840,"count":1,"max":1,"table_full_drops":1,"early_drops":0,"dropped_from":["127.0.0.1:7212","127.0.0.1:7213"]}"#;
    const CT_SNAPSHOT: &str = r#"{"type":"snapshot","states":{},"conntrack":{"count":4,"max":1,"inserted":3,"freed":3,"lifetime":{"TIME_WAIT":{"count":3,"p50":1010000000,"p90":1010000000,"p99":1010000000,"max":1010000000}}}}"#;

    fn trace(lines: &[&str]) -> Observed {
        observe(&lines.join("\n"))
    }

    #[test]
    fn a_full_trace_shows_everything() {
        let o = trace(&[
            HEADER,
            FIRST,
            CONNECT,
            INTO_TW,
            TW_DEATH,
            ORPHAN_DIES,
            ORPHAN,
            REQ,
            LISTEN,
            CT_SNAPSHOT,
            SUMMARY,
        ]);
        for &cap in Capability::ALL {
            assert!(o.has(cap), "{cap:?}");
            assert_eq!(cell(cap, Capability::ALL, &o), Cell::Ok);
        }
        assert!(o.complete);
        assert_eq!((o.lines, o.bad_lines), (11, 0));
        assert!(claims_not_kept(&o).is_empty());
        assert_eq!(
            lost_features(&o),
            ["drop_reasons: kfree_skb has no drop reason before 5.17"]
        );
    }

    #[test]
    fn transitions_need_a_dwell_and_time_wait_needs_both_ends() {
        assert!(
            !trace(&[FIRST]).has(Transitions),
            "a null dwell is no dwell"
        );
        let o = trace(&[FIRST, INTO_TW]);
        assert!(trace(&[CONNECT]).has(Transitions));
        assert!(!o.has(TimeWait), "no death seen");
        let no_flag = TW_DEATH.replace(r#","timewait":true"#, "");
        assert!(!trace(&[INTO_TW, &no_flag, ORPHAN_DIES]).has(TimeWait));
        assert!(
            !trace(&[INTO_TW, TW_DEATH]).has(TimeWait),
            "no orphan death"
        );
        let full_socket = ORPHAN_DIES.replace(r#","timewait":true"#, "");
        assert!(!trace(&[INTO_TW, TW_DEATH, &full_socket]).has(TimeWait));
        assert!(trace(&[INTO_TW, TW_DEATH, ORPHAN_DIES]).has(TimeWait));
    }

    #[test]
    fn orphan_fin_is_only_the_orphan_scenarios_client() {
        assert!(!trace(&[INTO_TW]).has(OrphanFin));
        assert!(trace(&[ORPHAN]).has(OrphanFin));
    }

    #[test]
    fn request_sockets_and_their_retransmits() {
        let child_only =
            r#"{"type":"transition","old":"SYN_RECV","new":"ESTABLISHED","dwell_ns":5}"#;
        assert!(!trace(&[child_only]).has(SynRecv));
        let no_rtx = REQ.replace(r#""synack_retransmits":2"#, r#""synack_retransmits":0"#);
        let o = trace(&[&no_rtx]);
        assert!(o.has(SynRecv) && !o.has(SynackRetransmits));
        assert!(trace(&[REQ]).has(SynackRetransmits));
    }

    #[test]
    fn drops_need_a_dropped_packet_not_just_counters() {
        let counters_only =
            LISTEN.replace(r#""dropped_final_acks":1"#, r#""dropped_final_acks":0"#);
        assert!(!trace(&[&counters_only]).has(Drops));
        assert!(trace(&[LISTEN]).has(Drops));
    }

    #[test]
    fn netfilter_drops_are_the_senders_a_conntrack_full_alert_names() {
        let o = trace(&[CT_FULL, CT_FULL]);
        assert!(o.has(Drops));
        assert_eq!(o.netfilter_drops_from, ["127.0.0.1:7212", "127.0.0.1:7213"]);
        // A full table without a netfilter drop in the interval is no drop record.
        let none = CT_FULL.replace(r#"["127.0.0.1:7212","127.0.0.1:7213"]"#, "[]");
        let o = trace(&[&none]);
        assert!(!o.has(Drops) && o.netfilter_drops_from.is_empty());
    }

    #[test]
    fn table_full_drops_without_their_sender_are_noted() {
        let reasons = HEADER.replace(r#""available":false"#, r#""available":true"#);
        let o = trace(&[&reasons, CT_FULL, CT_FULL]);
        assert_eq!(o.table_full_drops, 2);
        assert_eq!(unnamed_table_full_drops(&o), None);
        let rule_only = CT_FULL.replace(r#""127.0.0.1:7212","#, "");
        let note = unnamed_table_full_drops(&trace(&[&reasons, &rule_only])).unwrap();
        assert!(note.contains("refused 1 packet(s)"), "{note}");
        let no_drops = rule_only.replace(r#""table_full_drops":1"#, r#""table_full_drops":0"#);
        assert_eq!(
            unnamed_table_full_drops(&trace(&[&reasons, &no_drops])),
            None
        );
        // Without drop reasons (5.10) no drop has a sender to name.
        assert_eq!(
            unnamed_table_full_drops(&trace(&[HEADER, &rule_only])),
            None
        );
    }

    #[test]
    fn conntrack_lifetimes_need_an_entry_counted() {
        assert!(trace(&[CT_SNAPSHOT]).has(ConntrackLifetimes));
        let empty = r#"{"type":"snapshot","conntrack":{"count":4,"freed":0,"lifetime":{}}}"#;
        let zero = CT_SNAPSHOT.replace(r#"{"count":3,"#, r#"{"count":0,"#);
        let without = r#"{"type":"snapshot","states":{}}"#;
        for s in [empty, &zero, without] {
            assert!(!trace(&[s]).has(ConntrackLifetimes), "{s}");
        }
    }

    #[test]
    fn a_timewait_overflow_alert_is_always_a_failure() {
        let o = trace(&[CONNECT, OVERFLOW]);
        assert_eq!(o.timewait_overflow_alerts, 1);
        assert_eq!(cell(NoFalseOverflow, &[], &o), Cell::Unexpected);
        assert_eq!(
            cell(NoFalseOverflow, &[NoFalseOverflow], &o),
            Cell::Unexpected
        );
        assert!(cell(NoFalseOverflow, &[NoFalseOverflow], &o).fails());
    }

    #[test]
    fn cells_for_expected_and_unexpected_capabilities() {
        let o = trace(&[CONNECT]);
        assert_eq!(cell(Transitions, &[Transitions], &o), Cell::Ok);
        assert_eq!(cell(TimeWait, &[TimeWait], &o), Cell::Missing);
        assert_eq!(cell(TimeWait, &[], &o), Cell::NotExpected);
        assert_eq!(cell(Transitions, &[], &o), Cell::Bonus);
        assert!(Cell::Missing.fails() && !Cell::Bonus.fails() && !Cell::NotExpected.fails());
    }

    #[test]
    fn a_claimed_feature_that_did_not_show_is_reported_with_its_detail() {
        let o = trace(&[HEADER, CONNECT]);
        assert_eq!(claims_not_kept(&o), ["time_wait (tp_btf kmem_cache_free)"]);
        // Claimed available: drops and conntrack lifetimes are held to it on every kernel.
        let all = HEADER
            .replace(r#""available":false"#, r#""available":true"#)
            .replace(
                r#"]}"#,
                r#",{"feature":"conntrack_lifetimes","available":true,"detail":"tp_btf"}]}"#,
            );
        let o = trace(&[&all, CONNECT, INTO_TW, TW_DEATH, ORPHAN_DIES]);
        assert_eq!(
            claims_not_kept(&o),
            [
                "drop_reasons (kfree_skb has no drop reason before 5.17)",
                "conntrack_lifetimes (tp_btf)"
            ]
        );
        let o = trace(&[
            &all,
            CONNECT,
            INTO_TW,
            TW_DEATH,
            ORPHAN_DIES,
            CT_FULL,
            CT_SNAPSHOT,
        ]);
        assert!(claims_not_kept(&o).is_empty());
    }

    #[test]
    fn bad_and_unknown_lines_are_counted_not_fatal() {
        let o = trace(&[r#"{"type":"future","x":1}"#, "{\"type\":\"transi", CONNECT]);
        assert_eq!((o.lines, o.bad_lines), (3, 1));
        assert!(o.has(Transitions) && !o.complete && o.claimed.is_empty());
    }
}
