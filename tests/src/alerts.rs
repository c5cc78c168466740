//! netwatch's `"type":"alert"` records (incident signals) and the kernel counters that are
//! their ground truth (`/proc/net/netstat` of a namespace).
//!
//! An alert is `{"type":"alert","ts":..,"mono_ns":..,"message":"..","kind":K, ..evidence}`;
//! the evidence fields depend on the kind. Tests read them as JSON values: [`Alert`] checks
//! the common fields strictly and gives typed access to the rest with messages that carry
//! the record.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::netns::Netns;

/// One alert record, its common fields validated.
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: String,
    pub mono_ns: u64,
    pub message: String,
    pub raw: Value,
}

impl Alert {
    pub fn from_value(v: &Value) -> Result<Alert> {
        let parse = || -> Result<Alert> {
            let ts = v
                .get("ts")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("missing string ts"))?;
            if !ts.ends_with('Z') {
                bail!("ts {ts:?} is not UTC");
            }
            let kind = v
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("missing string kind"))?
                .to_owned();
            let mono_ns = v
                .get("mono_ns")
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("missing integer mono_ns"))?;
            let message = v
                .get("message")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("missing string message"))?
                .to_owned();
            if message.is_empty() {
                bail!("empty message");
            }
            Ok(Alert {
                kind,
                mono_ns,
                message,
                raw: v.clone(),
            })
        };
        parse().with_context(|| format!("bad alert record: {v}"))
    }

    /// A field, or Err naming the record.
    pub fn field(&self, name: &str) -> Result<&Value> {
        self.raw
            .get(name)
            .ok_or_else(|| anyhow!("{} alert has no field {name:?}: {}", self.kind, self.raw))
    }

    pub fn u64(&self, name: &str) -> Result<u64> {
        self.field(name)?.as_u64().ok_or_else(|| {
            anyhow!(
                "{} alert field {name:?} is not a non-negative integer: {}",
                self.kind,
                self.raw
            )
        })
    }

    pub fn i64(&self, name: &str) -> Result<i64> {
        self.field(name)?.as_i64().ok_or_else(|| {
            anyhow!(
                "{} alert field {name:?} is not an integer: {}",
                self.kind,
                self.raw
            )
        })
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        self.field(name)?.as_str().ok_or_else(|| {
            anyhow!(
                "{} alert field {name:?} is not a string: {}",
                self.kind,
                self.raw
            )
        })
    }

    /// A list field as values.
    pub fn list(&self, name: &str) -> Result<&Vec<Value>> {
        self.field(name)?.as_array().ok_or_else(|| {
            anyhow!(
                "{} alert field {name:?} is not a list: {}",
                self.kind,
                self.raw
            )
        })
    }

    /// A list of integers (ports).
    pub fn u64_list(&self, name: &str) -> Result<Vec<u64>> {
        self.list(name)?
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| anyhow!("{name} holds a non-integer: {}", self.raw))
            })
            .collect()
    }

    /// A list of strings.
    pub fn str_list(&self, name: &str) -> Result<Vec<String>> {
        self.list(name)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("{name} holds a non-string: {}", self.raw))
            })
            .collect()
    }

    /// `netns`: the namespace the alert is about.
    pub fn netns(&self) -> Result<u64> {
        self.u64("netns")
    }

    /// The value of knob `name` in `knobs`, None when netwatch did not report it.
    pub fn knob(&self, name: &str) -> Result<Option<String>> {
        let knobs = self.field("knobs")?.as_object().ok_or_else(|| {
            anyhow!(
                "{} alert field knobs is not an object: {}",
                self.kind,
                self.raw
            )
        })?;
        match knobs.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("knob {name} is not a string ({other}): {}", self.raw),
        }
    }
}

/// Every alert record, validated, in file order.
pub fn alerts(records: &[Value]) -> Result<Vec<Alert>> {
    records
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("alert"))
        .map(Alert::from_value)
        .collect()
}

/// The alerts of one kind (records that fail validation are skipped: for polling).
pub fn of_kind(records: &[Value], kind: &str) -> Vec<Alert> {
    records
        .iter()
        .filter(|r| {
            r.get("type").and_then(Value::as_str) == Some("alert")
                && r.get("kind").and_then(Value::as_str) == Some(kind)
        })
        .filter_map(|r| Alert::from_value(r).ok())
        .collect()
}

/// Every alert record, one per line, for failure messages.
pub fn dump(records: &[Value]) -> String {
    let mut s = String::new();
    for r in records
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("alert"))
    {
        s.push_str("  ");
        s.push_str(&r.to_string());
        s.push('\n');
    }
    if s.is_empty() {
        s.push_str("  (no alerts)\n");
    }
    s
}

/// Counter `name` of group `group` (`TcpExt`, `IpExt`, ...) in `ns`'s `/proc/net/netstat`.
pub fn netstat_counter(ns: &Netns, group: &str, name: &str) -> Result<u64> {
    let text = ns.exec(&["cat", "/proc/net/netstat"])?;
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let [names, values] = lines.as_slice() else {
        bail!("no {group} header and value lines in /proc/net/netstat:\n{text}");
    };
    let at = names
        .split_whitespace()
        .position(|w| w == name)
        .with_context(|| format!("no {group} {name} in /proc/net/netstat"))?;
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no value for {group} {name} in /proc/net/netstat"))
}

/// Several `TcpExt` counters of `ns` at once, in the order asked.
pub fn tcpext(ns: &Netns, names: &[&str]) -> Result<Vec<u64>> {
    names
        .iter()
        .map(|n| netstat_counter(ns, "TcpExt", n))
        .collect()
}
