//! The one list of alert kinds: for each, its name in the trace, how severe it is, its colour,
//! a title, the change to make (advice), its evidence fields and what they mean, which of them
//! count events (and so add up over a trace), which name its subject, and its documentation.
//!
//! Every output reads this list: the dashboard's alerts pane, `--plain` and `--events` lines,
//! the report's findings, text, HTML and JSON, and `docs/alerts.md` (generated from
//! [`markdown`], checked by a test). A kind missing here does not compile
//! ([`crate::core::signals::Alert::kind`] matches every variant); a kind missing from the docs
//! fails a test.

use serde::Serialize;
use serde_json::Value;

/// How urgently a finding or an alert wants a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Connections are failing now.
    Critical,
    /// A limit is being hit or approached; connections are slow or at risk.
    Warning,
    /// Worth knowing, harmless on its own.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    /// `CRIT`, `WARN`, `INFO`: four columns, for tables that keep their width for the rest.
    pub fn tag(self) -> &'static str {
        match self {
            Severity::Critical => "CRIT",
            Severity::Warning => "WARN",
            Severity::Info => "INFO",
        }
    }
}

/// Everything the outputs say about one kind of alert.
#[derive(Debug, PartialEq, Eq)]
pub struct AlertKind {
    /// snake_case, as `"kind"` in the trace's alert records (never renamed: traces and
    /// metrics depend on it).
    pub name: &'static str,
    pub severity: Severity,
    /// `#rrggbb`, for the HTML report's timeline.
    pub colour: &'static str,
    /// A few words for a heading.
    pub title: &'static str,
    /// What to change (the setting, or the application), in one or two sentences.
    pub advice: &'static str,
    /// Every evidence field of the alert record (besides `kind`), with what it holds.
    pub evidence: &'static [(&'static str, &'static str)],
    /// The evidence fields that count events of the alert's own interval (so they add up over
    /// a trace), each with what it counts; the first is the headline, by which the worst
    /// interval is chosen. Empty for kinds that report once or name no count.
    pub counted: &'static [(&'static str, &'static str)],
    /// The evidence fields that name what the alert is about (a listener, a destination);
    /// alerts of one kind and subject are one entry in the dashboard's history. Empty, or
    /// all empty in a record: the namespace is the subject.
    pub subject: &'static [&'static str],
    /// When it is raised and what it means, for the docs.
    pub doc: &'static str,
}

pub const PAWS_REJECT: AlertKind = AlertKind {
    name: "paws_reject",
    severity: Severity::Info,
    colour: "#636363",
    title: "PAWS reject",
    advice: "Harmless alone (an old duplicate segment). Repeated from one address across \
             ports it means clients behind one NAT: see nat_suspected. Do not turn off \
             net.ipv4.tcp_timestamps to silence it.",
    evidence: &[
        ("netns", "namespace inode"),
        (
            "reason",
            "the kernel's drop reason (TCP_RFC7323_PAWS, TW_PAWS, ...), or `more`",
        ),
        ("saddr", "sender address"),
        ("sport", "sender port"),
        ("daddr", "receiver address"),
        ("dport", "receiver port"),
        ("flags", "TCP flags of the rejected segment"),
        ("tsval", "its TSval"),
        ("tsecr", "its TSecr"),
        ("ts_recent", "the last TSval the socket had accepted"),
        ("ts_delta", "tsval - ts_recent"),
        (
            "suppressed",
            "rejects beyond the 20 listed per interval (in a `more` record)",
        ),
    ],
    counted: &[],
    subject: &["daddr", "dport"],
    doc: "Raised at once for each segment the kernel drops because its TCP timestamp is \
          older than the last one seen on that 4-tuple (at most 20 per interval, then one \
          record counts the rest).",
};

pub const NAT_SUSPECTED: AlertKind = AlertKind {
    name: "nat_suspected",
    severity: Severity::Warning,
    colour: "#756bb1",
    title: "NAT suspected",
    advice: "Clients behind one address collide with TIME_WAIT sockets: have the NAT keep \
             each client's ports apart, let clients reuse connections, or (on this server) \
             enable net.ipv4.tcp_tw_reuse for outgoing connections. Keep \
             net.ipv4.tcp_timestamps on; tcp_tw_recycle is gone for this reason.",
    evidence: &[
        ("netns", "namespace inode"),
        ("addr", "the address several hosts seem to share"),
        ("rejections", "PAWS rejects of its SYNs so far"),
        ("ports", "its source ports rejected"),
        (
            "max_ts_delta",
            "largest |TSval - ts_recent| seen: a foreign clock",
        ),
        (
            "knobs",
            "net.ipv4.tcp_timestamps, tcp_tw_reuse, tcp_tw_recycle",
        ),
    ],
    counted: &[],
    subject: &["addr"],
    doc: "Raised once per address when SYNs from it are rejected by PAWS from two or more \
          source ports, or with a timestamp too far off to be one client's clock: several \
          hosts behind one address (NAT) meeting TIME_WAIT sockets of each other's old \
          connections.",
};

pub const SYNACK_RETRANSMITS: AlertKind = AlertKind {
    name: "synack_retransmits",
    severity: Severity::Warning,
    colour: "#31a354",
    title: "SYN-ACK retransmits",
    advice: "Clients' final ACKs are lost or late: look for drops between them and the \
             server (a firewall, conntrack, a full accept queue). \
             net.ipv4.tcp_synack_retries bounds how long a half-open handshake waits.",
    evidence: &[
        ("netns", "namespace inode"),
        ("listener", "the listening address:port"),
        ("count", "SYN-ACKs resent during the interval"),
        ("clients", "some of the clients concerned (at most 5)"),
        (
            "max_retransmits",
            "the highest retransmit number (0 = first resend)",
        ),
        ("knobs", "net.ipv4.tcp_synack_retries, tcp_syncookies"),
    ],
    counted: &[("count", "SYN-ACKs resent")],
    subject: &["listener"],
    doc: "Raised at the end of an interval in which a listener resent SYN-ACKs: handshakes \
          sit in SYN_RECV for a second or more each.",
};

pub const LISTEN_OVERFLOW: AlertKind = AlertKind {
    name: "listen_overflow",
    severity: Severity::Critical,
    colour: "#e6550d",
    title: "Listen queue overflow",
    advice: "The application accepts too slowly or its listen() backlog is small: accept \
             faster (more workers), or raise the backlog it passes to listen(). \
             net.core.somaxconn only caps that backlog: raise it too only where the evidence \
             names it as the limit. (net.ipv4.tcp_max_syn_backlog sizes the SYN queue, not \
             this one.) SYN cookies sent at a full SYN queue drop nothing, but say the same: \
             a SYN flood, or a backlog too small for the load (the SYN queue is as long as the \
             backlog); with net.ipv4.tcp_syncookies=0 those SYNs would have been dropped.",
    evidence: &[
        ("netns", "namespace inode"),
        ("ports", "listener ports whose final ACKs were dropped"),
        (
            "listeners",
            "the listeners: address, process, accept queue/backlog and the limit that sized it",
        ),
        (
            "dropped_final_acks",
            "final ACKs dropped at a full accept queue",
        ),
        ("listen_overflows", "ListenOverflows increase"),
        ("listen_drops", "ListenDrops increase"),
        ("req_queue_full_drops", "TCPReqQFullDrop increase"),
        ("req_queue_full_cookies", "TCPReqQFullDoCookies increase"),
        (
            "knobs",
            "net.core.somaxconn, net.ipv4.tcp_max_syn_backlog, net.ipv4.tcp_syncookies",
        ),
    ],
    counted: &[
        (
            "listen_overflows",
            "accept-queue overflows (ListenOverflows)",
        ),
        (
            "listen_drops",
            "SYNs and ACKs dropped by listeners (ListenDrops)",
        ),
        (
            "dropped_final_acks",
            "final ACKs dropped at a full accept queue",
        ),
        (
            "req_queue_full_drops",
            "SYNs dropped at a full SYN queue (TCPReqQFullDrop)",
        ),
        (
            "req_queue_full_cookies",
            "SYNs answered with SYN cookies at a full SYN queue (TCPReqQFullDoCookies)",
        ),
    ],
    // The namespace, whose counters these are: by the ports of dropped final ACKs, which
    // some intervals have and others not, one listener's overflows folded into two rows.
    subject: &[],
    doc: "Raised at the end of an interval in which a listener's accept queue or SYN queue \
          was full: SYNs or final ACKs were dropped, clients retry or time out; or SYNs were \
          answered with SYN cookies because the SYN queue was full.",
};

pub const TIMEWAIT_OVERFLOW: AlertKind = AlertKind {
    name: "timewait_overflow",
    severity: Severity::Warning,
    colour: "#fd8d3c",
    title: "TIME_WAIT bucket overflow",
    advice: "Raise net.ipv4.tcp_max_tw_buckets (a timewait socket costs a few hundred \
             bytes), or make fewer short connections (keep-alive, pooling); where the server \
             closes first, letting clients close moves TIME_WAIT to them.",
    evidence: &[
        ("netns", "namespace inode"),
        (
            "closed_without_timewait",
            "closes seen without a timewait socket (null where not visible)",
        ),
        ("tcp_timewait_overflow", "TCPTimeWaitOverflow increase"),
        (
            "time_wait_now",
            "TIME_WAIT sockets now (null where not followed)",
        ),
        ("knobs", "net.ipv4.tcp_max_tw_buckets, tcp_tw_reuse"),
    ],
    counted: &[
        (
            "tcp_timewait_overflow",
            "closes with no TIME_WAIT (TCPTimeWaitOverflow)",
        ),
        (
            "closed_without_timewait",
            "closes seen without a timewait socket",
        ),
    ],
    subject: &[],
    doc: "Raised at the end of an interval in which the kernel's TCPTimeWaitOverflow counter \
          moved: connections closed without TIME_WAIT, so old duplicates can reach new \
          connections on the same ports.",
};

pub const CLOSE_WAIT_LEAK: AlertKind = AlertKind {
    name: "close_wait_leak",
    severity: Severity::Warning,
    colour: "#fdae6b",
    title: "CLOSE_WAIT piling up",
    advice: "The peer closed and the application has not called close(): a code path that \
             forgets to close (a leak), or workers stuck before they get to it. Look at the \
             process named: its sockets stay until it closes them or exits.",
    evidence: &[
        ("netns", "namespace inode"),
        (
            "sockets",
            "sockets in CLOSE_WAIT for 10 s or more at the end of the interval",
        ),
        ("oldest_ns", "how long the oldest has been in CLOSE_WAIT"),
        (
            "processes",
            "the processes holding them, `comm[pid]`, most sockets first (at most 5)",
        ),
    ],
    // A count of sockets now, not of events: adding it up over intervals means nothing.
    counted: &[],
    subject: &["processes"],
    doc: "Raised at the end of every interval in which sockets have sat in CLOSE_WAIT for 10 s \
          or more, per namespace: the peer closed long ago and the application has not.",
};

pub const PORT_EXHAUSTION: AlertKind = AlertKind {
    name: "port_exhaustion",
    severity: Severity::Critical,
    colour: "#d62728",
    title: "Ephemeral ports exhausted",
    advice: "The client has no free local port towards this destination: reuse connections \
             (keep-alive, a pool), widen net.ipv4.ip_local_port_range, set \
             net.ipv4.tcp_tw_reuse = 1, or spread over more destination addresses or ports.",
    evidence: &[
        ("netns", "namespace inode"),
        ("daddr", "destination address"),
        ("dport", "destination port"),
        (
            "failures",
            "connect() failures with EADDRNOTAVAIL during the interval",
        ),
        (
            "processes",
            "the processes that failed, `comm[pid]` (at most 5)",
        ),
        ("ports_in_use", "local sockets towards the destination now"),
        (
            "time_wait_to_destination",
            "of those, in TIME_WAIT (null where not visible)",
        ),
        ("knobs", "net.ipv4.ip_local_port_range, tcp_tw_reuse"),
    ],
    counted: &[("failures", "connect() failures (EADDRNOTAVAIL)")],
    subject: &["daddr", "dport"],
    doc: "Raised at the end of an interval in which connect() failed for want of a free \
          local port (EADDRNOTAVAIL), per destination.",
};

pub const CONNTRACK_FULL: AlertKind = AlertKind {
    name: "conntrack_full",
    severity: Severity::Critical,
    colour: "#7b0d1e",
    title: "Conntrack table full",
    advice: "Raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets), shorten \
             net.netfilter.nf_conntrack_tcp_timeout_established and the TIME_WAIT timeout, \
             or exempt busy flows from tracking (notrack).",
    evidence: &[
        ("netns", "namespace inode"),
        ("count", "entries in the namespace's table"),
        ("max", "net.netfilter.nf_conntrack_max"),
        (
            "table_full_drops",
            "packets dropped at a full table during the interval",
        ),
        ("early_drops", "entries evicted early during the interval"),
        (
            "dropped_from",
            "senders of packets netfilter dropped (at most 5)",
        ),
        (
            "knobs",
            "nf_conntrack_max, nf_conntrack_buckets, nf_conntrack_tcp_timeout_established",
        ),
    ],
    counted: &[
        (
            "table_full_drops",
            "packets dropped at a full conntrack table",
        ),
        ("early_drops", "conntrack entries evicted early"),
    ],
    subject: &[],
    doc: "Raised when a namespace's conntrack table reaches 90 % of nf_conntrack_max, and \
          at the end of every interval in which it dropped packets or evicted entries \
          (\"nf_conntrack: table full, dropping packet\").",
};

/// Every kind, most urgent first.
pub const CATALOGUE: [&AlertKind; 8] = [
    &PORT_EXHAUSTION,
    &LISTEN_OVERFLOW,
    &CONNTRACK_FULL,
    &TIMEWAIT_OVERFLOW,
    &CLOSE_WAIT_LEAK,
    &SYNACK_RETRANSMITS,
    &NAT_SUSPECTED,
    &PAWS_REJECT,
];

/// The kinds' names as they appear in the trace (`"kind"`), in [`CATALOGUE`]'s order.
pub const ALL_KINDS: [&str; CATALOGUE.len()] = {
    let mut out = [""; CATALOGUE.len()];
    let mut i = 0;
    while i < CATALOGUE.len() {
        out[i] = CATALOGUE[i].name;
        i += 1;
    }
    out
};

/// The catalogue's entry for a kind named in a trace; None for a kind this netwatch does not
/// know (a trace from a newer one).
pub fn lookup(name: &str) -> Option<&'static AlertKind> {
    let i = ALL_KINDS.iter().position(|k| *k == name)?;
    Some(CATALOGUE[i])
}

/// The severity of a kind by name; an unknown kind is a warning (it was worth an alert).
pub fn severity(name: &str) -> Severity {
    lookup(name).map_or(Severity::Warning, |k| k.severity)
}

/// The HTML colour of a kind by name; black for an unknown kind.
pub fn colour(name: &str) -> &'static str {
    lookup(name).map_or("#000000", |k| k.colour)
}

/// The counted evidence of a kind by name (see [`AlertKind::counted`]).
pub fn counted(name: &str) -> &'static [(&'static str, &'static str)] {
    lookup(name).map_or(&[], |k| k.counted)
}

fn part(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.as_u64() != Some(0) => Some(n.to_string()),
        Value::Array(a) if !a.is_empty() => Some(
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// What an alert is about, from its evidence (the trace record's fields): `10.0.0.2:80`,
/// `ports 80,81`, else `netns 4026531840`. An address and a port read as an endpoint (IPv6
/// in brackets).
pub fn subject(kind: &str, evidence: &dyn Fn(&str) -> Option<Value>) -> String {
    let fields = lookup(kind).map_or(&[][..], |k| k.subject);
    let parts: Vec<(&str, String)> = fields
        .iter()
        .filter_map(|f| Some((*f, part(&evidence(f)?)?)))
        .collect();
    match parts.as_slice() {
        [] => match (
            evidence("netns_name"),
            evidence("netns").as_ref().and_then(Value::as_u64),
        ) {
            (Some(Value::String(name)), _) => format!("netns {name}"),
            (_, Some(ns)) => format!("netns {ns}"),
            _ => String::new(),
        },
        [(_, addr), (_, port)] if addr.contains(':') => format!("[{addr}]:{port}"),
        [(_, addr), (_, port)] => format!("{addr}:{port}"),
        [("ports", list)] => format!("port {list}"),
        _ => parts
            .iter()
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The headline count of one alert (its first counted field), from its evidence.
pub fn headline(kind: &str, evidence: &dyn Fn(&str) -> Option<Value>) -> Option<u64> {
    let (field, _) = counted(kind).first()?;
    evidence(field)?.as_u64()
}

/// `docs/alerts.md`: one section per kind, from the catalogue (written by its test).
#[cfg(test)]
fn markdown() -> String {
    let mut o = String::from(
        "# Alerts\n\n\
         <!-- Generated from netwatch/src/core/alert_catalogue.rs by \
         `NETWATCH_UPDATE_DOCS=1 cargo test -p netwatch --bin netwatch alert_catalogue`; \
         do not edit. -->\n\n\
         Each alert is a `\"type\":\"alert\"` record of the trace with `kind`, `message` and \
         the evidence fields below; the dashboard (`a`), `--plain`, `--events` and `netwatch \
         report` show the same titles, severities and advice.\n\n\
         | kind | severity | title |\n| --- | --- | --- |\n",
    );
    for k in CATALOGUE {
        let (name, severity, title) = (k.name, k.severity.as_str(), k.title);
        o.push_str(&format!("| [`{name}`](#{name}) | {severity} | {title} |\n"));
    }
    for k in CATALOGUE {
        o.push_str(&format!(
            "\n## {}\n\n{} ({}). {}\n\n**What to change:** {}\n\n| evidence | meaning |\n| --- | --- |\n",
            k.name,
            k.title,
            k.severity.as_str(),
            k.doc,
            k.advice
        ));
        for (field, what) in k.evidence {
            let counted = if k.counted.iter().any(|(c, _)| c == field) {
                " (counted: adds up over a trace)"
            } else {
                ""
            };
            o.push_str(&format!("| `{field}` | {what}{counted} |\n"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::core::signals::tests::one_of_each;

    #[test]
    fn every_alert_variant_has_a_complete_entry_under_its_trace_name() {
        let samples = one_of_each();
        let mut named = BTreeSet::new();
        for a in &samples {
            let v = serde_json::to_value(a).unwrap();
            let kind = a.kind();
            assert_eq!(v["kind"], kind.name, "{a:?}");
            assert!(named.insert(kind.name), "two variants share {}", kind.name);
            for (what, text) in [
                ("title", kind.title),
                ("advice", kind.advice),
                ("doc", kind.doc),
            ] {
                assert!(!text.trim().is_empty(), "{} lacks its {what}", kind.name);
            }
            assert!(
                kind.colour.len() == 7 && kind.colour.starts_with('#'),
                "{}",
                kind.name
            );
            // The evidence list is the record's fields, no more, no fewer.
            let fields: BTreeSet<&str> = v
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "kind")
                .collect();
            let listed: BTreeSet<&str> = kind.evidence.iter().map(|(f, _)| *f).collect();
            assert_eq!(fields, listed, "evidence of {}", kind.name);
            for (f, _) in kind.counted {
                assert!(listed.contains(f), "{} counts unknown {f}", kind.name);
            }
            for f in kind.subject {
                assert!(listed.contains(f), "{} names unknown {f}", kind.name);
            }
        }
        let catalogued: BTreeSet<&str> = ALL_KINDS.into_iter().collect();
        assert_eq!(
            named, catalogued,
            "a catalogue entry no alert uses, or the reverse"
        );
        let colours: BTreeSet<&str> = CATALOGUE.iter().map(|k| k.colour).collect();
        assert_eq!(colours.len(), CATALOGUE.len(), "two kinds share a colour");
    }

    #[test]
    fn lookups_fall_back_for_kinds_from_newer_traces() {
        assert_eq!(severity("listen_overflow"), Severity::Critical);
        assert_eq!(severity("paws_reject"), Severity::Info);
        assert_eq!(severity("from_the_future"), Severity::Warning);
        assert_eq!(colour("from_the_future"), "#000000");
        assert!(counted("nat_suspected").is_empty());
        assert_eq!(counted("port_exhaustion")[0].0, "failures");
    }

    #[test]
    fn subjects_name_endpoints_ports_or_the_namespace() {
        let ev = |pairs: Vec<(&'static str, Value)>| {
            move |f: &str| pairs.iter().find(|(k, _)| *k == f).map(|(_, v)| v.clone())
        };
        let e = ev(vec![("daddr", "10.0.0.2".into()), ("dport", 80.into())]);
        assert_eq!(subject("port_exhaustion", &e), "10.0.0.2:80");
        let e = ev(vec![("daddr", "2001:db8::1".into()), ("dport", 443.into())]);
        assert_eq!(subject("port_exhaustion", &e), "[2001:db8::1]:443");
        let e = ev(vec![("ports", vec![80, 81].into()), ("netns", 7.into())]);
        assert_eq!(subject("listen_overflow", &e), "netns 7");
        let e = ev(vec![
            ("ports", Vec::<u16>::new().into()),
            ("netns", 7.into()),
        ]);
        assert_eq!(subject("listen_overflow", &e), "netns 7");
        let e = ev(vec![("netns", 7.into())]);
        assert_eq!(subject("conntrack_full", &e), "netns 7");
        assert_eq!(subject("unknown", &ev(vec![])), "");
        let e = ev(vec![("failures", 12.into())]);
        assert_eq!(headline("port_exhaustion", &e), Some(12));
        assert_eq!(headline("nat_suspected", &e), None);
    }

    /// docs/alerts.md is the catalogue's own text; `NETWATCH_UPDATE_DOCS=1` rewrites it.
    #[test]
    fn docs_are_generated_from_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alerts.md");
        let want = markdown();
        if std::env::var_os("NETWATCH_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/alerts.md differs from the catalogue: run \
             NETWATCH_UPDATE_DOCS=1 cargo test -p netwatch --bin netwatch alert_catalogue"
        );
    }

    /// The format's own descriptions (owned with the trace format) list the kinds too: a
    /// kind added here must be added there.
    #[test]
    fn the_trace_format_and_schema_name_every_kind() {
        let format = include_str!("../../../docs/trace-format.md");
        let schema: Value =
            serde_json::from_str(include_str!("../../schema/trace.schema.json")).unwrap();
        let alert = schema["$defs"]["alert"]["description"].as_str().unwrap();
        for k in ALL_KINDS {
            assert!(
                format.contains(&format!("`{k}`")),
                "docs/trace-format.md lacks {k}"
            );
            assert!(
                alert.contains(k),
                "the schema's alert description lacks {k}"
            );
        }
    }

    #[test]
    fn the_readme_names_every_kind() {
        let readme = include_str!("../../../README.md");
        for k in ALL_KINDS {
            assert!(
                readme.contains(&format!("`{k}`")),
                "README does not name {k}"
            );
        }
        assert!(readme.contains("docs/alerts.md"));
    }
}
