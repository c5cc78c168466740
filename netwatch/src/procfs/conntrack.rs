//! The conntrack table of a namespace as procfs shows it: the per-CPU statistics behind
//! `conntrack -S` (/proc/net/stat/nf_conntrack) and, for a table small enough to read each
//! interval, the entries themselves (/proc/net/nf_conntrack) for idle times and states.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::netns::run_in;

/// Column -> sum over CPUs (the `entries` column is the table size, the same on each line).
pub type ConntrackStat = HashMap<String, u64>;

/// Parses /proc/net/stat/nf_conntrack: a header of column names, then one line of hex
/// numbers per CPU. Columns differ between kernels, so they are taken by name.
pub fn parse_stat(text: &str) -> Result<ConntrackStat> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty conntrack statistics")?
        .split_whitespace()
        .collect();
    let mut sums: ConntrackStat = HashMap::new();
    for (n, line) in lines.enumerate() {
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.is_empty() {
            continue;
        }
        anyhow::ensure!(
            values.len() == header.len(),
            "conntrack statistics line {} has {} values for {} columns",
            n + 2,
            values.len(),
            header.len()
        );
        for (name, v) in header.iter().zip(values) {
            let v = u64::from_str_radix(v, 16)
                .with_context(|| format!("conntrack statistic {name} = {v:?} is not hex"))?;
            let e = sums.entry((*name).to_owned()).or_default();
            if *name == "entries" {
                *e = v;
            } else {
                *e += v;
            }
        }
    }
    Ok(sums)
}

pub fn read_stat(netns: Option<&Path>) -> Result<ConntrackStat> {
    let text = run_in(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")
    })?
    .context("reading /proc/net/stat/nf_conntrack (is nf_conntrack loaded?)")?;
    parse_stat(&text)
}

/// What the entries of a table say now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSummary {
    pub entries: u64,
    /// TCP entries in ESTABLISHED whose timer says they have been idle for over an hour.
    pub established_idle_over_1h: u64,
    pub time_wait: u64,
}

/// Summarises /proc/net/nf_conntrack lines such as
/// `ipv4     2 tcp      6 431999 ESTABLISHED src=... [ASSURED] ...`: the fifth field is the
/// seconds left before the entry expires, so idle = `timeout_established` - left.
pub fn summarize_table(text: &str, timeout_established_s: u64) -> TableSummary {
    let mut s = TableSummary::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().take(6).collect();
        if f.len() < 5 {
            continue;
        }
        s.entries += 1;
        if f[2] != "tcp" || f.len() < 6 {
            continue;
        }
        let left: u64 = f[4].parse().unwrap_or(u64::MAX);
        match f[5] {
            "ESTABLISHED" if timeout_established_s.saturating_sub(left) > 3600 => {
                s.established_idle_over_1h += 1
            }
            "TIME_WAIT" => s.time_wait += 1,
            _ => {}
        }
    }
    s
}

/// Reads the entries unless the table is larger than `limit` (the kernel formats every
/// entry on read, which at a full 262k-entry table costs more than an interval should).
pub fn read_table(
    netns: Option<&Path>,
    timeout_established_s: u64,
    limit: u64,
) -> Option<TableSummary> {
    let text = run_in(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
    })
    .ok()?
    .ok()?;
    if text.lines().count() as u64 > limit {
        return None;
    }
    Some(summarize_table(&text, timeout_established_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_columns_are_summed_by_name() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                    00000005  00000000 00000000 00000000 00000000 00000000 00000001 00000000 0000000a 00000000 00000002 00000000\n\
                    00000005  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000010 00000000 00000001 00000003\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s["entries"], 5);
        assert_eq!(s["insert"], 26);
        assert_eq!(s["drop"], 3);
        assert_eq!(s["early_drop"], 3);
        assert!(parse_stat("").is_err());
        assert!(parse_stat("a b\n1\n").is_err());
        assert!(parse_stat("a\nzz\n").is_err());
    }

    #[test]
    fn table_idle_and_time_wait() {
        let text = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2\n\
                    ipv4     2 tcp      6 100 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=3 dport=2\n\
                    ipv4     2 tcp      6 110 TIME_WAIT src=10.0.0.1 dst=10.0.0.2 sport=4 dport=2\n\
                    ipv4     2 udp      17 20 src=10.0.0.1 dst=10.0.0.3 sport=5 dport=53\n";
        let s = summarize_table(text, 432000);
        assert_eq!(
            s,
            TableSummary {
                entries: 4,
                established_idle_over_1h: 1,
                time_wait: 1
            }
        );
    }
}
