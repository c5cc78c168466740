//! Netfilter in the guest: a ruleset that sends the conntrack scenarios' loopback TCP (and
//! only theirs) through conntrack and drops one port, conntrack timeouts short enough for
//! entries to expire within the run, and the two scenarios that use them.
//!
//! What the host looks for (xtask/src/vm/check.rs): conntrack entry lifetimes in the
//! snapshots, and netfilter drops (`kfree_skb` with NETFILTER_DROP) among the senders of a
//! `conntrack_full` alert, the one record that names them.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netwatch_tests::{
    sock::{connect_bound, listen_backlog},
    tcp::read_to_eof,
};

use crate::{connection, local, sysctl, IO};

/// The ports conntrack follows; everything else is `notrack`, so the other scenarios run
/// as they would without netfilter, and the full table of [`drops`] cannot touch them.
const TRACKED_FIRST: u16 = 7110;
const TRACKED_LAST: u16 = 7119;
/// Short connections whose entries expire and are freed within the run.
const LIFETIMES: u16 = 7110;
/// The connection that keeps one entry in the table while it is full.
const HELD: u16 = 7111;
/// A connection opened before netwatch starts and held to the end.
const IN_USE: u16 = 7113;
/// A listener whose client's SYN finds the table full: conntrack itself drops it.
const TABLE_FULL: u16 = 7112;
const TABLE_FULL_CLIENT: u16 = 7212;
/// No listener: the ruleset drops what is sent to it. Untracked (conntrack would refuse its
/// SYN at the full table first) and dropped on input, where the packet has a device: on
/// output it has none yet, and netwatch then cannot tell the drop's namespace (see
/// xtask/src/vm/check.rs).
const RULE_DROP: u16 = 7120;
const RULE_DROP_CLIENT: u16 = 7213;
const NFT: &str = "/bin/nft";
const RULESET: &str = "/tmp/netwatch-vm.nft";
/// Seconds an entry stays once its connection closed (defaults: 60-120 s).
const CLOSED_TIMEOUT_S: u64 = 1;
/// The conntrack TCP states a closed connection's entry passes through.
const CLOSED_STATES: &[&str] = &["fin_wait", "close_wait", "last_ack", "time_wait", "close"];
/// How many short connections [`lifetimes`] makes.
const SHORT_CONNECTIONS: usize = 3;
/// The SYNs sent into a full table or the drop rule: the first, and the retransmit 1 s
/// later, so the drops span two of netwatch's 1 s intervals.
const DROPPED_CONNECT: Duration = Duration::from_millis(1500);

/// The ruleset: `notrack` in front of conntrack (priority raw) for everything outside the
/// tracked ports, a `ct state` match, whose use is what registers conntrack's hooks in the
/// namespace at all (no `counter`: on 5.10 that is one more module, nft_counter), and the
/// drop rule on input.
pub fn ruleset() -> String {
    let tracked = format!("{TRACKED_FIRST}-{TRACKED_LAST}");
    format!(
        "table inet netwatch_vm {{\n\
         \tchain raw_out {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\ttcp dport != {tracked} tcp sport != {tracked} notrack\n\
         \t}}\n\
         \tchain out {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state new\n\
         \t}}\n\
         \tchain in {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\ttcp dport {RULE_DROP} drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Loads the ruleset and shortens the closed connections' conntrack timeouts. Needs the
/// netfilter modules loaded.
pub fn setup() -> Result<()> {
    fs::write(RULESET, ruleset()).with_context(|| format!("writing {RULESET}"))?;
    let out = Command::new(NFT)
        .args(["-f", RULESET])
        .output()
        .with_context(|| format!("running {NFT}"))?;
    if !out.status.success() {
        bail!(
            "nft -f {RULESET}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    for state in CLOSED_STATES {
        sysctl(
            &format!("net/netfilter/nf_conntrack_tcp_timeout_{state}"),
            &CLOSED_TIMEOUT_S.to_string(),
        )?;
    }
    Ok(())
}

/// One connection through conntrack, opened before netwatch starts and kept open to the
/// end, as a NAT gateway's table always holds some: netwatch follows conntrack's births
/// once it sees a table in use (that hook runs for every slab allocation of the kernel).
/// Open, it never ends a lifetime of its own.
pub fn table_in_use() -> Result<(TcpListener, TcpStream, TcpStream)> {
    let listener = listen_backlog(local(IN_USE), 1)?;
    let (client, server) = connection(&listener, IN_USE)?;
    Ok((listener, client, server))
}

/// Whether /proc/kallsyms shows `symbol` with an address, as netwatch needs for
/// `__nf_conntrack_alloc` (kptr_restrict 2, or a missing module, shows none).
pub fn kallsyms_has(kallsyms: &str, symbol: &str) -> bool {
    kallsyms.lines().any(|l| {
        let mut f = l.split_whitespace();
        let addr = f.next().and_then(|a| u64::from_str_radix(a, 16).ok());
        addr.is_some_and(|a| a != 0) && f.nth(1) == Some(symbol)
    })
}

/// The conntrack scenarios, one after the other: the full table of [`drops`] would refuse
/// the entries [`lifetimes`] makes.
pub fn scenarios() -> Result<String> {
    let lived = lifetimes().context("conntrack lifetimes")?;
    let dropped = drops().context("netfilter drops")?;
    // The entries of `lifetimes` expired while `drops` ran; a walk of the table frees them
    // now rather than when the garbage collector comes by.
    fs::read_to_string("/proc/net/nf_conntrack").context("reading /proc/net/nf_conntrack")?;
    Ok(format!("{lived}; {dropped}; expired entries freed"))
}

/// A few short connections, closed by both ends: their entries end in TIME_WAIT.
fn lifetimes() -> Result<String> {
    let listener = listen_backlog(local(LIFETIMES), 8)?;
    for _ in 0..SHORT_CONNECTIONS {
        let (client, mut server) = connection(&listener, LIFETIMES)?;
        drop(client);
        read_to_eof(&mut server, IO)?;
    }
    Ok(format!(
        "{SHORT_CONNECTIONS} connections closed (entries expire {CLOSED_TIMEOUT_S} s later)"
    ))
}

/// One connection held in the table, nf_conntrack_max set to 1, then two connects that
/// netfilter drops (each SYN and its retransmit): one because the table is full, one by the
/// rule. netwatch reports the first interval the table is full, and every one in which it
/// refused entries, as `conntrack_full`, with the senders of the netfilter drops.
fn drops() -> Result<String> {
    let max_path = "net/netfilter/nf_conntrack_max";
    let max =
        fs::read_to_string(format!("/proc/sys/{max_path}")).context("reading nf_conntrack_max")?;
    let held_listener = listen_backlog(local(HELD), 8)?;
    let held = connection(&held_listener, HELD)?;
    let _full_listener = listen_backlog(local(TABLE_FULL), 8)?;
    sysctl(max_path, "1")?;
    let attempt = |from: u16, to: u16| {
        thread::spawn(move || connect_bound(local(from), local(to), DROPPED_CONNECT))
    };
    let attempts = [
        ("full table", attempt(TABLE_FULL_CLIENT, TABLE_FULL)),
        ("drop rule", attempt(RULE_DROP_CLIENT, RULE_DROP)),
    ];
    let outcomes: Vec<_> = attempts
        .into_iter()
        .map(|(what, h)| (what, h.join().map_err(|_| anyhow::anyhow!("panicked"))))
        .collect();
    // Restored before anything can fail, whatever happened above.
    sysctl(max_path, max.trim())?;
    drop(held);
    for (what, outcome) in outcomes {
        if outcome?.is_ok() {
            bail!("the connect through the {what} was not dropped");
        }
    }
    Ok("SYNs dropped by a full table and by the drop rule".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_tracks_only_its_ports_and_drops_one() {
        let r = ruleset();
        assert!(r.contains("priority raw;"), "{r}");
        assert!(
            r.contains("tcp dport != 7110-7119 tcp sport != 7110-7119 notrack"),
            "{r}"
        );
        let input = r.find("hook input").unwrap();
        assert!(r.find("tcp dport 7120 drop") > Some(input), "{r}");
        assert!(!(TRACKED_FIRST..=TRACKED_LAST).contains(&RULE_DROP));
        assert!((TRACKED_FIRST..=TRACKED_LAST).contains(&TABLE_FULL));
        assert_eq!(r.matches('{').count(), r.matches('}').count());
    }

    #[test]
    fn kallsyms_needs_a_real_address() {
        let shown = "ffffffffc0a01230 t __nf_conntrack_alloc\t[nf_conntrack]\n";
        let hidden = "0000000000000000 t __nf_conntrack_alloc\t[nf_conntrack]\n";
        assert!(kallsyms_has(shown, "__nf_conntrack_alloc"));
        assert!(!kallsyms_has(hidden, "__nf_conntrack_alloc"));
        assert!(!kallsyms_has(shown, "nf_conntrack_alloc"));
    }
}
