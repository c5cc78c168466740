//! The JSON Lines trace format: one object per line, told apart by `"type"`.
//!
//! These are the serde types of the format, deliberately separate from the kernel records:
//! the kernel layout can change without changing what users and tests parse.
//!
//! `"type":"transition"`: one TCP state change.
//! - `ts`: RFC 3339 UTC with nanoseconds; `mono_ns`: the kernel's CLOCK_MONOTONIC stamp.
//! - `sock_id`: the socket cookie, stable for the socket's whole life.
//! - `family`: `"ipv4"` or `"ipv6"`; `saddr`/`sport` the local end, `daddr`/`dport` the remote.
//!   The local port reads 0 at `CLOSE -> SYN_SENT`: the kernel picks it just after.
//! - `old`, `new`: kernel state names (`"SYN_SENT"`, `"FIN_WAIT2"`, `"TIME_WAIT"`, ...).
//! - `dwell_ns`: nanoseconds spent in `old`, `null` when netwatch did not see it begin.
//! - `netns`: inode of the socket's network namespace.
//! - `pid`, `comm`: the owning process where known: the caller of connect()/listen(), the
//!   accept()er of a server socket (carried on to that socket's later records), or the
//!   process holding a socket that existed at start.
//! - `timewait`: `true` when about a timewait socket, the object that replaces a socket in
//!   TIME_WAIT (and an orphan in FIN_WAIT2): its death is `"old":"TIME_WAIT","new":"CLOSE"`.
//! - Server-side SYN_RECV is the request socket's life, reported when the kernel frees it
//!   (at accept()): `"old":"SYN_RECV","new":"ESTABLISHED"` stamped when the final ACK made the
//!   child (or `"new":"CLOSE"` if none came), with `synack_retransmits` and `accept_wait_ns`
//!   (child created -> accept()). Records are written as they arrive, so sort by `mono_ns`
//!   for one socket's story.

//!
//! `"type":"snapshot"`: every `--interval`, the engine's view.
//! - `states`: sockets in each state now (every state, zeros included).
//! - `entered`: entries into each state during the interval (`interval_ns` long).
//! - `dwell`: per state with completed dwells since the start: `count`, `p50`, `p90`,
//!   `p99`, `max` in ns. `age`: the same over the sockets still in the state.
//! - `transitions`: records so far; `lost`: records the kernel could not send.

use std::collections::BTreeMap;

use serde::Serialize;

use netwatch_common::state;

use super::{
    clock::WallClock,
    event::Transition,
    signals::Alert,
    snapshot::{ConntrackStats, Percentiles, Snapshot},
};

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Transition(TransitionJson<'a>),
    Snapshot(SnapshotJson),
    Alert(AlertJson<'a>),
}

/// `"type":"alert"`: a named incident signal. `kind` is one of `paws_reject`,
/// `nat_suspected`, `synack_retransmits`, `listen_overflow`, `timewait_overflow`,
/// `port_exhaustion`; its evidence fields follow (see `core::signals::Alert`), with
/// `message` saying what it means and `knobs` the sysctls that matter.
#[derive(Debug, Serialize)]
pub struct AlertJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub message: String,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

impl<'a> AlertJson<'a> {
    pub fn new(alert: &'a Alert, mono_ns: u64, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(mono_ns),
            mono_ns,
            message: alert.message(),
            alert,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PercentilesJson {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl From<Percentiles> for PercentilesJson {
    fn from(p: Percentiles) -> Self {
        Self {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SnapshotJson {
    pub ts: String,
    pub mono_ns: u64,
    pub interval_ns: u64,
    pub states: BTreeMap<&'static str, u64>,
    pub entered: BTreeMap<&'static str, u64>,
    pub dwell: BTreeMap<&'static str, PercentilesJson>,
    pub age: BTreeMap<&'static str, PercentilesJson>,
    pub transitions: u64,
    pub lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackJson>,
}

/// `conntrack` in a snapshot: see [`ConntrackStats`].
#[derive(Debug, Serialize)]
pub struct ConntrackJson {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub inserted: u64,
    pub freed: u64,
    pub table_full_drops: u64,
    pub early_drops: u64,
    pub lifetime: BTreeMap<&'static str, PercentilesJson>,
    pub established_idle_over_1h: Option<u64>,
    pub timeout_established_s: Option<u64>,
    pub time_wait_entries: Option<u64>,
    pub timeout_time_wait_s: Option<u64>,
}

impl From<&ConntrackStats> for ConntrackJson {
    fn from(c: &ConntrackStats) -> Self {
        Self {
            count: c.count,
            max: c.max,
            inserted: c.inserted,
            freed: c.freed,
            table_full_drops: c.table_full_drops,
            early_drops: c.early_drops,
            lifetime: c.lifetimes.iter().map(|(k, p)| (*k, (*p).into())).collect(),
            established_idle_over_1h: c.established_idle_over_1h,
            timeout_established_s: c.timeout_established_s,
            time_wait_entries: c.time_wait_entries,
            timeout_time_wait_s: c.timeout_time_wait_s,
        }
    }
}

/// The states a snapshot names: every real one (CLOSE is the absence of a socket).
pub fn reported_states() -> impl Iterator<Item = u8> {
    (1..state::COUNT as u8).filter(|&s| {
        !matches!(
            s,
            state::CLOSE | state::NEW_SYN_RECV | state::BOUND_INACTIVE
        )
    })
}

impl SnapshotJson {
    pub fn new(s: &Snapshot, clock: WallClock) -> Self {
        let mut out = Self {
            ts: clock.rfc3339(s.mono_ns),
            mono_ns: s.mono_ns,
            interval_ns: s.interval_ns,
            states: BTreeMap::new(),
            entered: BTreeMap::new(),
            dwell: BTreeMap::new(),
            age: BTreeMap::new(),
            transitions: s.transitions,
            lost: s.lost,
            conntrack: s.conntrack.as_ref().map(ConntrackJson::from),
        };
        for st in reported_states() {
            let name = state::name(st);
            let stats = s.state(st);
            out.states.insert(name, stats.now);
            out.entered.insert(name, stats.entered);
            if stats.dwell.count > 0 {
                out.dwell.insert(name, stats.dwell.into());
            }
            if stats.age.count > 0 {
                out.age.insert(name, stats.age.into());
            }
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct TransitionJson<'a> {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: &'a str,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub old: &'a str,
    pub new: &'a str,
    pub dwell_ns: Option<u64>,
    pub netns: u32,
    /// Only on the end of a server-side SYN_RECV (request socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synack_retransmits: Option<u8>,
    /// Only on the end of a server-side SYN_RECV: time the child then waited for accept().
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_wait_ns: Option<u64>,
    /// The owning process, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
    /// Present (true) when the record is about a timewait socket.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timewait: bool,
}

impl<'a> TransitionJson<'a> {
    pub fn new(t: &'a Transition, clock: WallClock) -> Self {
        Self {
            ts: clock.rfc3339(t.mono_ns),
            mono_ns: t.mono_ns,
            sock_id: t.sock_id,
            family: t.family.as_str(),
            saddr: t.saddr.to_string(),
            sport: t.sport,
            daddr: t.daddr.to_string(),
            dport: t.dport,
            old: t.old_name(),
            new: t.new_name(),
            dwell_ns: t.dwell_ns,
            netns: t.netns,
            synack_retransmits: t.synack_retransmits,
            accept_wait_ns: t.accept_wait_ns,
            pid: t.owner.as_ref().map(|o| o.pid),
            comm: t.owner.as_ref().map(|o| &*o.comm),
            timewait: t.timewait,
        }
    }
}

/// Appends one record and its newline to `out`.
pub fn write_line(out: &mut Vec<u8>, record: &Record<'_>) {
    // Serializing these plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, record).expect("serializing a trace record");
    out.push(b'\n');
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
    fn transition_json_has_the_documented_fields() {
        let Ok(Event::Transition(t)) = decode(&bytes_of(&raw_v4())) else {
            panic!()
        };
        let mut out = Vec::new();
        write_line(
            &mut out,
            &Record::Transition(TransitionJson::new(&t, WallClock::with_offset(0))),
        );
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000001Z");
        assert_eq!(v["mono_ns"], 1000);
        assert_eq!(v["sock_id"], 7);
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["saddr"], "10.0.0.1");
        assert_eq!(v["sport"], 40000);
        assert_eq!(v["daddr"], "10.0.0.2");
        assert_eq!(v["dport"], 80);
        assert_eq!(v["old"], "SYN_SENT");
        assert_eq!(v["new"], "ESTABLISHED");
        assert_eq!(v["dwell_ns"], 42);
        assert_eq!(v["netns"], 4026531840u64);
    }
}
