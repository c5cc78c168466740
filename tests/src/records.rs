//! Typed, validated view of netwatch's JSON Lines records, and the selections tests need.
//!
//! Parsing is strict on purpose: a `"type":"transition"` record with a missing or mistyped
//! field is a contract break and fails the test with the offending record. Records of other
//! types are skipped (the format will grow).
//!
//! Records are grouped by `sock_id`, never by port: at CLOSE -> SYN_SENT the local port still
//! reads 0 (the kernel picks it after the state change), and a listener and its accepted
//! children share a local port. Find a socket's id from a record whose ports are known (e.g.
//! its ESTABLISHED one), then take all records with that id.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// One `"type":"transition"` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub ts: String,
    pub mono_ns: u64,
    pub sock_id: u64,
    pub family: String,
    /// Local address as printed by netwatch (std's `Display` format is expected).
    pub saddr: String,
    pub sport: u16,
    /// Remote address.
    pub daddr: String,
    pub dport: u16,
    pub old: String,
    pub new: String,
    /// Time spent in `old`; None when unknown (a socket's first transition).
    pub dwell_ns: Option<u64>,
    pub netns: u64,
    /// The record as read, for messages.
    pub raw: Value,
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| anyhow!("missing field {name:?}"))
}

fn str_field(v: &Value, name: &str) -> Result<String> {
    field(v, name)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("field {name:?} is not a string"))
}

fn u64_field(v: &Value, name: &str) -> Result<u64> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| anyhow!("field {name:?} is not a non-negative integer"))
}

fn port_field(v: &Value, name: &str) -> Result<u16> {
    let n = u64_field(v, name)?;
    u16::try_from(n).map_err(|_| anyhow!("field {name:?} = {n} is not a port"))
}

/// Loose RFC 3339 UTC check: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn check_ts(ts: &str) -> Result<()> {
    let b = ts.as_bytes();
    let shape_ok = b.len() >= 20
        && b.iter().take(4).all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && ts.ends_with('Z');
    if !shape_ok {
        bail!("ts {ts:?} is not an RFC 3339 UTC time ending in Z");
    }
    Ok(())
}

impl Transition {
    /// Parses and validates one record known to be of type "transition".
    pub fn from_value(v: &Value) -> Result<Transition> {
        let parse = || -> Result<Transition> {
            let ts = str_field(v, "ts")?;
            check_ts(&ts)?;
            let family = str_field(v, "family")?;
            let saddr = str_field(v, "saddr")?;
            let daddr = str_field(v, "daddr")?;
            for (name, a) in [("saddr", &saddr), ("daddr", &daddr)] {
                let ip: IpAddr = a
                    .parse()
                    .with_context(|| format!("{name} {a:?} is not an IP address"))?;
                let fam_ok = match family.as_str() {
                    "ipv4" => ip.is_ipv4(),
                    "ipv6" => ip.is_ipv6(),
                    other => bail!("unknown family {other:?}"),
                };
                if !fam_ok {
                    bail!("{name} {a:?} does not match family {family:?}");
                }
            }
            let dwell_ns = match field(v, "dwell_ns")? {
                Value::Null => None,
                d => Some(
                    d.as_u64()
                        .ok_or_else(|| anyhow!("dwell_ns {d} is neither null nor a u64"))?,
                ),
            };
            Ok(Transition {
                ts,
                mono_ns: u64_field(v, "mono_ns")?,
                sock_id: u64_field(v, "sock_id")?,
                family,
                saddr,
                sport: port_field(v, "sport")?,
                daddr,
                dport: port_field(v, "dport")?,
                old: str_field(v, "old")?,
                new: str_field(v, "new")?,
                dwell_ns,
                netns: u64_field(v, "netns")?,
                raw: v.clone(),
            })
        };
        parse().with_context(|| format!("bad transition record: {v}"))
    }

    /// `(old, new)`.
    pub fn states(&self) -> (&str, &str) {
        (&self.old, &self.new)
    }

    /// The local endpoint, if the address parses.
    pub fn local(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.saddr.parse().ok()?, self.sport))
    }

    /// The remote endpoint, if the address parses.
    pub fn remote(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.daddr.parse().ok()?, self.dport))
    }

    /// True when this record's local and remote endpoints are exactly `local` and `remote`.
    pub fn is_between(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.local() == Some(local) && self.remote() == Some(remote)
    }
}

/// All transition records, validated, in file order; other record types are skipped.
pub fn transitions(records: &[Value]) -> Result<Vec<Transition>> {
    records
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("transition"))
        .map(Transition::from_value)
        .collect()
}

/// The records of one socket, in file order.
/// One socket's records in kernel time order: records are written as they arrive, and a
/// request socket's SYN_RECV record arrives at accept(), after its child's own may have.
pub fn of_sock(ts: &[Transition], sock_id: u64) -> Vec<&Transition> {
    let mut mine: Vec<&Transition> = ts.iter().filter(|t| t.sock_id == sock_id).collect();
    mine.sort_by_key(|t| t.mono_ns);
    mine
}

/// Distinct sock_ids of the records matching `pred`, in order of first appearance.
pub fn sock_ids_where(ts: &[Transition], pred: impl Fn(&Transition) -> bool) -> Vec<u64> {
    let mut ids = Vec::new();
    for t in ts.iter().filter(|t| pred(t)) {
        if !ids.contains(&t.sock_id) {
            ids.push(t.sock_id);
        }
    }
    ids
}

/// Distinct sock_ids of the sockets seen with local port `port` (a listener and its accepted
/// children share it: prefer [`sock_id_between`] for a connection).
pub fn sock_ids_with_local_port(ts: &[Transition], port: u16) -> Vec<u64> {
    sock_ids_where(ts, |t| t.sport == port)
}

/// The sock_id of the connection whose local side is `local` and remote side `remote`
/// (one socket per 4-tuple at a time; Err if the records show none, or several).
pub fn sock_id_between(ts: &[Transition], local: SocketAddr, remote: SocketAddr) -> Result<u64> {
    match sock_ids_where(ts, |t| t.is_between(local, remote)).as_slice() {
        [id] => Ok(*id),
        [] => bail!("no record with local {local} and remote {remote}"),
        many => bail!("several sockets with local {local} and remote {remote}: {many:?}"),
    }
}

/// `(old, new)` pairs of a socket's records, owned, for comparison with [`crate::expected`].
pub fn state_pairs(records: &[&Transition]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|t| (t.old.clone(), t.new.clone()))
        .collect()
}

/// One line per record, for failure messages.
pub fn dump(ts: &[Transition]) -> String {
    dump_refs(&ts.iter().collect::<Vec<_>>())
}

/// Like [`dump`] for a selection.
pub fn dump_refs(ts: &[&Transition]) -> String {
    let mut s = String::new();
    for t in ts {
        s.push_str(&format!(
            "  sock {} netns {} {} {}:{} -> {}:{} {}->{} dwell {:?} mono {}\n",
            t.sock_id,
            t.netns,
            t.family,
            t.saddr,
            t.sport,
            t.daddr,
            t.dport,
            t.old,
            t.new,
            t.dwell_ns,
            t.mono_ns
        ));
    }
    if s.is_empty() {
        s.push_str("  (no records)\n");
    }
    s
}
