//! `netwatch trace`: attach, drain the ring buffer on a timer, feed the dwell engine and the
//! sinks, and show the live view, until Ctrl-C, SIGTERM, SIGHUP, `--duration`, `q` in the
//! dashboard, or a closed stdout. However it stops, the trace gets its last records, a last
//! snapshot and the summary (see [`crate::writer`] for what survives a full disk or a kill).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::census;
use crate::config::{TraceConfig, View};
use crate::core::conntrack::{ConntrackEnv, ConntrackTracker};
use crate::environment::{kernel_hz, EnvSource};
use crate::trace_size::{self, SizeWatch};

/// Kernel tick rate assumed when /proc/timer_list cannot tell (Debian's default).
const DEFAULT_HZ: u64 = 250;
use netwatch_common::state;

use crate::core::{
    aggregate::{Aggregator, Existing},
    clock::{mono_now_ns, WallClock},
    decode::Decoder,
    event::{Event, Owner, Transition},
    json::SummaryTotals,
    plain,
    record::{CensusJson, FiltersJson, HeaderJson, SummaryJson, FORMAT, SCHEMA_VERSION},
    requests::Queues,
    signals::{Alert, Environment, Signals},
};
use crate::features::KernelFeatures;
use crate::loader::{Probes, VerifierLog};
use crate::preflight;
use crate::procfs;
use crate::serve;
use crate::sink::{SinkError, Sinks, TraceFiles};
use crate::stop_signals;
use crate::ui;
use crate::writer::queue;

/// Census records handed to the trace file's writer at a time (~0.7 MB of JSON: the batch
/// buffers grow to it, and the writer's keeps that size).
const CENSUS_BATCH: usize = 2048;

/// Census JSON the writer may have queued before the next batch is formatted: one batch
/// and change, so formatting and writing overlap.
const CENSUS_QUEUED: usize = 1 << 20;

/// The longest the census waits for the file in all: past it (a FIFO nobody reads, a
/// stalled disk), it queues as the records do, and the queue's bound drops what does not
/// fit, counted. Meanwhile the kernel's records wait in the ring and its reader's queue.
const CENSUS_PACING: Duration = Duration::from_secs(3);

/// How often the records the ring buffer's reader copied out are processed. The kernel
/// side never wakes us, so this bounds the latency of the live view; the ring itself is
/// emptied more often, on a thread of its own (see [`crate::ring_reader`]).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct Outcome {
    pub transitions: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// Records the trace file's writer could not keep up with (a slow reader), dropped.
    pub output_dropped: u64,
    /// The trace file was not finished (a write failed, or its reader stopped reading).
    pub incomplete: bool,
}

struct Tracer {
    probes: Probes,
    cfg: TraceConfig,
    sinks: Sinks,
    agg: Aggregator,
    clock: WallClock,
    dashboard: Option<(ui::Tui, ui::Dashboard)>,
    decoder: Decoder,
    signals: Signals,
    env: EnvSource,
    conntrack: ConntrackTracker,
    /// Whether the user was told, once, that conntrack is not in use.
    conntrack_told: bool,
    /// When the request sockets may be listed again (see `snapshot`).
    syn_recv_next: std::time::Instant,
    /// When to look for namespaces again (without `--netns`).
    next_discovery: std::time::Instant,
    /// Namespaces' names from /run/netns, for alerts.
    netns_names: crate::serve::places::NetnsNames,
    /// Alerts of this interval, for the live views.
    alerts: Vec<Alert>,
    undecodable: u64,
    /// When the engine's view began (the census), for the summary's duration.
    start_mono: u64,
    /// `uname -r`, for the closing word on what this kernel let the trace see.
    kernel: String,
    /// Says once when a plain trace file grows large; under the dashboard (which owns the
    /// terminal) the hint waits for the exit.
    size: SizeWatch,
    size_hint_at_exit: Option<String>,
    /// `serve` / `--metrics`: the Prometheus exporter.
    exporter: Option<serve::Exporter>,
    /// Request sockets per namespace at the last count (see `pending_requests`).
    syn_recv: Vec<(u32, u64)>,
    /// The names of the cgroups the records carry.
    cgroups: crate::cgroup::Resolver,
}

/// How often namespaces are looked for without `--netns`, and how many are watched: each
/// costs a setns and a few procfs reads per interval.
const DISCOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const MAX_WATCHED: usize = 64;

/// Gives the snapshot's namespaces their names, for the views.
fn name_namespaces(
    names: &mut crate::serve::places::NetnsNames,
    snap: &mut crate::core::snapshot::Snapshot,
) {
    snap.netns_names = snap
        .per_netns
        .keys()
        .filter_map(|&ns| Some((ns, names.name(ns)?)))
        .collect();
}

/// Our own namespace's inode, and every other network namespace with a file to enter it by.
fn discovered_namespaces() -> (u32, Vec<(u32, Option<std::path::PathBuf>)>) {
    let own = crate::config::resolve_netns("/proc/self/ns/net").unwrap_or(0);
    let found = crate::netns_spec::discover(&crate::netns_spec::System, own, MAX_WATCHED);
    (own, found.into_iter().map(|n| (n.inode, n.path)).collect())
}

/// What ended the trace, as the summary's `stopped_by` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Interrupt,
    Terminate,
    Hangup,
    Duration,
    Quit,
    ClosedPipe,
    Error,
}

impl Stop {
    fn by_signal(sig: libc::c_int) -> Stop {
        match sig {
            libc::SIGTERM => Stop::Terminate,
            libc::SIGHUP => Stop::Hangup,
            _ => Stop::Interrupt,
        }
    }

    /// What an error that broke the trace loop means: the stop signal that came with it (a
    /// closed terminal fails a draw before its SIGHUP is seen), or a hang-up when the
    /// dashboard's terminal is gone; None for a real failure.
    fn after_error(e: &SinkError, signal: Option<libc::c_int>) -> Option<Stop> {
        match (signal, e) {
            (Some(sig), _) => Some(Stop::by_signal(sig)),
            (None, SinkError::Io(e)) if ui::terminal_gone(e) => Some(Stop::Hangup),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stop::Interrupt => "sigint",
            Stop::Terminate => "sigterm",
            Stop::Hangup => "sighup",
            Stop::Duration => "duration",
            Stop::Quit => "quit",
            Stop::ClosedPipe => "closed_pipe",
            Stop::Error => "error",
        }
    }
}

impl Tracer {
    fn wanted(&self, ev: &Event) -> bool {
        match ev {
            Event::Transition(t) => {
                self.cfg.addrs.matches(t) && !self.probes.own_sockets.contains(&t.sock_id)
            }
            Event::Drop(d) => self.cfg.addrs.matches_addrs(d.saddr, d.daddr),
            Event::SynackRetransmit(r) => self.cfg.addrs.matches_addrs(r.laddr, r.raddr),
            Event::ConntrackEnd(c) => self.cfg.addrs.matches_addrs(c.saddr, c.daddr),
            Event::TimewaitReset(r) => self.cfg.addrs.matches_addrs(r.tuple.laddr, r.tuple.raddr),
        }
    }

    fn drain(&mut self) -> Result<(), SinkError> {
        let mut now = Vec::new();
        let shown = self.sinks.shows_records();
        loop {
            let decoded = {
                let Some(item) = self.probes.events.next() else {
                    break;
                };
                self.decoder.decode(item)
            };
            let Ok(mut ev) = decoded else {
                self.undecodable += 1;
                continue;
            };
            if !self.wanted(&ev) {
                continue;
            }
            match &mut ev {
                Event::Transition(t) => {
                    // Before anything reads it: the sinks write the record as completed.
                    let whole = shown || Signals::reads_owner(t);
                    let found = self.agg.complete(t, whole);
                    if whole {
                        name_container(&mut self.cgroups, t);
                    }
                    self.agg.apply_found(t, found);
                }
                Event::ConntrackEnd(c) => self.conntrack.apply(c),
                Event::TimewaitReset(r) => self.agg.timewait_reset(r),
                Event::Drop(_) | Event::SynackRetransmit(_) => {}
            }
            self.signals.observe(&ev, &mut now);
            if let Some(x) = self.exporter.as_mut() {
                x.observe(&ev);
            }
            self.sinks.push(&ev);
        }
        self.publish(now);
        self.sinks.flush()
    }

    fn publish(&mut self, alerts: Vec<Alert>) {
        let at = mono_now_ns();
        for a in alerts {
            if let Some(x) = self.exporter.as_mut() {
                x.alert(&a);
            }
            let name = self.netns_names.name(a.netns());
            self.sinks.alert(&a, at, name.as_deref());
            self.alerts.push(a);
        }
    }

    /// Request sockets waiting in SYN_RECV and children in accept queues, in the traced
    /// namespaces, with the request sockets of each namespace (None if a dump failed).
    fn queues(&self) -> Option<(Queues, Vec<(u32, u64)>)> {
        let mut all = Vec::new();
        let mut by_ns = Vec::new();
        for (inode, path) in self.env.spaces().to_vec() {
            let socks = census::dump_queues(path.as_deref()).ok()?;
            let wanted: Vec<census::CensusSocket> = socks
                .into_iter()
                .filter(|s| census_wanted(&self.cfg, s))
                .collect();
            let requests = wanted
                .iter()
                .filter(|s| s.state == netwatch_common::state::SYN_RECV)
                .count();
            by_ns.push((inode, requests as u64));
            all.extend(wanted);
        }
        Some((census::queues(&all), by_ns))
    }

    /// Counter deltas and settings of the traced namespaces.
    fn environment(&mut self) -> HashMap<u32, Environment> {
        self.env.sample()
    }

    /// Conntrack is in use: its entries' births are followed from now on.
    fn follow_conntrack(&mut self) {
        if let Err(e) = self.probes.conntrack_in_use() {
            // Not under the dashboard: stderr shares its terminal.
            if self.cfg.view != View::Dashboard {
                eprintln!("netwatch: {e:#}");
            }
        }
    }

    fn lost(&self) -> u64 {
        self.probes.counters().map(|c| c.lost_records).unwrap_or(0) + self.undecodable
    }

    /// Without `--netns`: the namespaces to watch besides our own, found again now and
    /// then (containers come and go).
    fn discover_namespaces(&mut self) {
        if !self.cfg.netns.is_empty() || std::time::Instant::now() < self.next_discovery {
            return;
        }
        self.next_discovery = std::time::Instant::now() + DISCOVERY_EVERY;
        let (own, others) = discovered_namespaces();
        self.env.refresh(own, others);
    }

    fn snapshot(&mut self) -> Result<(), SinkError> {
        self.discover_namespaces();
        let env = self.environment();
        if env
            .values()
            .any(|e| e.conntrack.as_ref().is_some_and(ConntrackEnv::in_use))
        {
            self.follow_conntrack();
        }
        // Events up to the moment the counters were read belong to this interval too, so
        // a drop and the counter it bumped land in the same alert.
        self.drain()?;
        // Listed before the interval's alerts, which name the listeners behind an overflow;
        // an overflow gets a fresh listing whatever the ration, or it names a stale queue.
        let overflowed = env.values().any(Environment::listen_overflowed);
        if overflowed || std::time::Instant::now() >= self.syn_recv_next {
            let started = std::time::Instant::now();
            if let Some((q, by_ns)) = self.queues() {
                self.agg.set_queues(mono_now_ns(), &q);
                self.syn_recv = by_ns;
            }
            // The kernel walks its whole socket table for the dump (30 ms at a full 131k
            // TIME_WAIT table here, then 13 % of netwatch's CPU at 2 % of the time): keep it
            // under 1 % of the time, however big that gets. A small table is still listed
            // every interval; a full one every ~3 s, and at once on a listen overflow.
            self.syn_recv_next = std::time::Instant::now() + started.elapsed() * 100;
        }
        let mut ended = self.signals.end_interval(&env, &self.agg);
        ended.extend(self.signals.lingering(&self.agg, mono_now_ns()));
        self.publish(ended);
        let lost = self.lost();
        let mut snap = self.agg.snapshot(mono_now_ns(), lost);
        name_namespaces(&mut self.netns_names, &mut snap);
        // The table the entries came from; else, of the traced namespaces, the busiest
        // (alerts are per namespace anyway).
        let ct_env = self
            .conntrack
            .netns()
            .and_then(|ns| env.get(&ns)?.conntrack.as_ref())
            .or_else(|| {
                self.env
                    .namespaces()
                    .filter_map(|ns| env.get(&ns)?.conntrack.as_ref())
                    .reduce(|a, b| if b.count > a.count { b } else { a })
            });
        snap.conntrack = self.conntrack.snapshot(ct_env);
        if !self.conntrack_told {
            self.conntrack_told = true;
            // Not under the dashboard: stderr shares its terminal.
            if snap.conntrack.is_none() && self.cfg.view != View::Dashboard {
                eprintln!(
                    "netwatch: conntrack is not in use in the traced namespaces; its views \
                     appear once it is"
                );
            }
        }
        self.sinks.snapshot(&snap);
        if let Some(hint) = self.size.check(self.sinks.output_bytes) {
            match self.cfg.view {
                View::Dashboard => self.size_hint_at_exit = Some(hint),
                _ => eprintln!("netwatch: {hint}"),
            }
        }
        if let Some(x) = self.exporter.as_mut() {
            x.publish(serve::Interval {
                agg: &self.agg,
                now_ns: snap.mono_ns,
                syn_recv: &self.syn_recv,
                env: &env,
                conntrack: &self.conntrack,
                records: snap.transitions,
                lost: snap.lost,
                skipped_runs: self.probes.recursion_misses(),
                bpf_run: self.probes.run_times(),
                cgroups: &mut self.cgroups,
            });
        }
        let alerts = std::mem::take(&mut self.alerts);
        match self.cfg.view {
            View::Plain => self.sinks.print(&plain::summary(&snap, self.clock)),
            View::Dashboard => {
                if let Some((tui, dash)) = self.dashboard.as_mut() {
                    for a in &alerts {
                        let name = self.netns_names.name(a.netns());
                        dash.alerts.record_alert(a, snap.mono_ns, name.as_deref());
                    }
                    tui.draw(dash, &snap).map_err(SinkError::Io)?;
                }
            }
            View::Events | View::None => {}
        }
        self.sinks.flush()
    }

    /// Handles pending keys; true when the user asked to quit.
    fn keys(&mut self) -> Result<bool, SinkError> {
        if self.dashboard.is_none() {
            return Ok(false);
        }
        let lost = self.lost();
        let Some((tui, dash)) = self.dashboard.as_mut() else {
            return Ok(false);
        };
        let mut redraw = false;
        while let Some(key) = tui.poll_key(Duration::ZERO).map_err(SinkError::Io)? {
            match dash.handle_key(key) {
                ui::Action::Quit => return Ok(true),
                ui::Action::None => redraw = true,
            }
        }
        if redraw {
            // Show the new selection at once rather than at the next interval.
            let mut snap = self.agg.peek(mono_now_ns(), lost);
            name_namespaces(&mut self.netns_names, &mut snap);
            tui.draw(dash, &snap).map_err(SinkError::Io)?;
        }
        Ok(false)
    }

    /// Traces until told to stop; says why, and the error that stopped it, if any. Stop
    /// signals stay taken after the loop, so a second Ctrl-C while the trace is being
    /// finished does not cut it short.
    async fn run(&mut self, duration: Option<Duration>) -> (Stop, Result<(), SinkError>) {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut every = tokio::time::interval(self.cfg.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let (stop, r) = loop {
            let step = tokio::select! {
                // SIGINT, SIGTERM and SIGHUP (a dropped ssh session) are taken by
                // `stop_signals` from the start; the one received ends the trace here.
                _ = tick.tick() => match stop_signals::received() {
                    Some(sig) => Ok(Some(Stop::by_signal(sig))),
                    None => self
                        .drain()
                        .and_then(|_| self.keys())
                        .map(|quit| quit.then_some(Stop::Quit)),
                },
                _ = every.tick() => self.snapshot().map(|_| None),
                _ = &mut deadline => Ok(Some(Stop::Duration)),
            };
            match step {
                Ok(None) => {}
                Ok(Some(stop)) => break (stop, Ok(())),
                Err(SinkError::ClosedPipe) => break (Stop::ClosedPipe, Ok(())),
                Err(e) => match Stop::after_error(&e, stop_signals::received()) {
                    Some(stop) => {
                        self.dashboard = None;
                        break (stop, Ok(()));
                    }
                    None => break (Stop::Error, Err(e)),
                },
            }
        };
        if r.is_err() {
            return (stop, r);
        }
        // What the kernel sent before we were told to stop, a last snapshot, and (in text)
        // what this kernel let the trace see, so the last summary is read for what it is.
        self.probes.events.sync();
        match self
            .drain()
            .and_then(|_| self.snapshot())
            .and_then(|_| self.closing_words())
        {
            Ok(()) | Err(SinkError::ClosedPipe) => (stop, Ok(())),
            Err(e) => match Stop::after_error(&e, None) {
                Some(_) => (stop, Ok(())),
                None => (Stop::Error, Err(e)),
            },
        }
    }

    /// Under `--plain`, after the last summary: which features this trace had.
    fn closing_words(&mut self) -> Result<(), SinkError> {
        if self.cfg.view == View::Plain {
            self.sinks
                .print(&plain::coverage(&self.kernel, &self.probes.features));
        }
        self.sinks.flush()
    }

    /// The summary record: the engine's final view and the run's totals.
    fn summary(&self, stop: Stop) -> SummaryJson {
        let lost_records = self.probes.counters().map(|c| c.lost_records).unwrap_or(0);
        let snap = self
            .agg
            .peek(mono_now_ns(), lost_records + self.undecodable);
        let totals = SummaryTotals {
            stopped_by: stop.as_str(),
            start_mono_ns: self.start_mono,
            records: self.sinks.written(),
            lost_records,
            undecodable: self.undecodable,
        };
        let mut summary = SummaryJson::new(
            &snap,
            self.clock,
            totals,
            self.sinks.alert_kinds.clone(),
            self.probes.features.clone(),
        );
        summary.output_dropped = queue::total(&self.sinks.dropped());
        summary.skipped_runs = self.probes.recursion_misses();
        summary
    }
}

/// Names the container of `t`'s cgroup, on the record and on its owner.
fn name_container(cgroups: &mut crate::cgroup::Resolver, t: &mut Transition) {
    t.container = cgroups.container(t.cgroup);
    if let Some(o) = &mut t.owner {
        if o.container.is_none() {
            o.container = t.container.clone();
        }
    }
}

/// What the census found, for the trace: each socket with its owner, seeded at `mono_ns`.
#[derive(Default)]
struct Census {
    warnings: Vec<String>,
    mono_ns: u64,
    sockets: census::KeptCensus,
}

/// Seeds the engine with the sockets that exist now, in the traced namespaces (or this
/// one), so gauges are right from the first second.
fn take_census(
    cfg: &TraceConfig,
    keep_sockets: bool,
    spaces: &[(u32, Option<std::path::PathBuf>)],
    agg: &mut Aggregator,
    cgroups: &mut crate::cgroup::Resolver,
) -> Census {
    let mut warnings = Vec::new();
    let mut found = census::KeptCensus::default();
    let spaces: Vec<Option<&std::path::Path>> = spaces.iter().map(|(_, p)| p.as_deref()).collect();
    if !cfg.netns.is_empty() && cfg.netns_paths.len() < cfg.netns.len() {
        warnings.push(
            "some --netns inodes have no file to enter; their existing sockets are not counted"
                .to_owned(),
        );
    }
    let now = mono_now_ns();
    // Processes are seen from this namespace's /proc, which lists all of them.
    let by_inode: HashMap<u64, census::Owner> = census::socket_owners();
    // Socket -> the cgroup of its process and the process. The engine keeps both for the
    // socket's later records, which may not carry them.
    let mut owner = |s: &census::CensusSocket| -> Option<(u64, Owner)> {
        let o = by_inode.get(&s.inode).filter(|_| s.inode != 0)?;
        let (cgroup, container) = cgroups.of_process(o.pid);
        Some((
            cgroup,
            Owner {
                pid: o.pid,
                comm: o.comm.as_str().into(),
                container,
            },
        ))
    };
    for ns in spaces {
        // Listeners first (they decide the other sockets' service ports), then the rest as
        // the kernel lists them, straight into the engine: a million TIME_WAIT sockets are
        // never held twice.
        let mut counted = 0u64;
        let seeded = census::dump_listeners(ns).and_then(|listeners| {
            let mut seed = |s: census::CensusSocket| {
                if !census_wanted(cfg, &s) {
                    return;
                }
                counted += 1;
                let (cgroup, o) = owner(&s).unzip();
                let e = existing(&s, o.clone(), cgroup.unwrap_or(0));
                if keep_sockets {
                    found.push(&s, e.age_ns, o.as_ref());
                }
                agg.seed_one(now, e);
            };
            listeners.into_iter().for_each(&mut seed);
            census::each_tcp_but_listeners(ns, seed)
        });
        if let Err(e) = seeded {
            warnings.push(census_failed(&format!("{e:#}"), counted));
        }
    }
    // A socket the dump met twice is written once, as last seen.
    found.merge_twice_met();
    Census {
        warnings,
        mono_ns: now,
        sockets: found,
    }
}

/// What a census that failed part of the way means for the counts: the sockets it listed
/// before failing are counted (a dump fails after its listeners as well as before them).
fn census_failed(error: &str, counted: u64) -> String {
    if counted == 0 {
        format!("census of existing sockets failed ({error}); counts start from zero")
    } else {
        format!(
            "census of existing sockets stopped after {counted} sockets ({error}); the ones \
             it did not list are counted from their first state change"
        )
    }
}

fn census_json<'a>(
    s: &census::Kept,
    owner: Option<&'a Owner>,
    mono_ns: u64,
    clock: WallClock,
) -> CensusJson<'a> {
    CensusJson {
        ts: clock.rfc3339(mono_ns),
        mono_ns,
        sock_id: s.cookie,
        family: if s.is_v6() { "ipv6" } else { "ipv4" }.into(),
        saddr: s.saddr(),
        sport: s.sport,
        daddr: s.daddr(),
        dport: s.dport,
        state: state::name(s.state).into(),
        age_ns: s.age_ns(),
        netns: s.netns,
        pid: owner.map(|o| o.pid),
        comm: owner.map(|o| (&*o.comm).into()),
    }
}

/// `uname -r` and `uname -n`.
fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; uname fills it or fails.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&u.release), text(&u.nodename))
}

/// The trace's header: what wrote it, where, when, with which limits and filters, and what
/// this kernel lets it see.
fn header(
    cfg: &TraceConfig,
    clock: WallClock,
    start_mono: u64,
    features: &KernelFeatures,
) -> HeaderJson {
    let (kernel, hostname) = uname();
    let pairs = |p: Option<&std::path::Path>| {
        procfs::read_sysctls(p)
            .as_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    };
    let netns_sysctls = traced_spaces(cfg)
        .into_iter()
        .filter_map(|(ino, path)| Some((ino.to_string(), pairs(Some(path?.as_path())))))
        .collect();
    let start = clock.rfc3339(start_mono);
    HeaderJson {
        ts: start.clone(),
        mono_ns: start_mono,
        format: FORMAT.into(),
        schema_version: SCHEMA_VERSION,
        netwatch_version: env!("CARGO_PKG_VERSION").into(),
        run_id: format!(
            "{}-{}-{}",
            hostname,
            clock.to_datetime(start_mono).unix_timestamp_nanos(),
            std::process::id()
        ),
        part: 0,
        start,
        start_mono_ns: start_mono,
        kernel,
        hostname,
        interval_ns: cfg.interval.as_nanos() as u64,
        sysctls: pairs(None),
        netns_sysctls,
        netns_names: crate::serve::places::NetnsNames::system()
            .all()
            .into_iter()
            .map(|(ino, name)| (ino.to_string(), name))
            .collect(),
        filters: FiltersJson {
            ports: cfg.ports.clone(),
            addrs: cfg.addr_specs.clone(),
            netns: cfg.netns.clone(),
        },
        argv: std::env::args().collect(),
        kernel_features: features.clone(),
    }
}

/// What is said once at start about how this kernel limits the trace: one line per lost
/// feature, in the user's words; under `--verbose` also the verifier's last lines (its
/// cause) for each program the kernel refused, which are never shown otherwise: they are
/// for whoever fixes netwatch, the lost features are for whoever runs it.
fn kernel_notes(features: &KernelFeatures, logs: &[VerifierLog], verbose: bool) -> Vec<String> {
    let mut said = std::collections::HashSet::new();
    let mut out: Vec<String> = features
        .lost_lines()
        .into_iter()
        .filter(|l| said.insert(l.clone()))
        .map(|l| format!("netwatch: {l}"))
        .collect();
    if !verbose {
        return out;
    }
    for log in logs {
        out.push(format!(
            "netwatch: the verifier refused {} ({}){}",
            log.program,
            log.attach_point,
            if log.tail.is_empty() {
                ", without a log"
            } else {
                "; its last lines:"
            }
        ));
        out.extend(log.tail.iter().map(|l| format!("    {l}")));
    }
    out
}

/// Says on stderr where the trace is and whether it is complete.
fn report_files(files: &TraceFiles) {
    for w in &files.warnings {
        eprintln!("netwatch: warning: {w}");
    }
    let Some(first) = files.first() else {
        return;
    };
    if let Some(gone) = &files.finished.unlinked {
        eprintln!(
            "netwatch: the trace file {} was deleted while tracing: its records went with it, \
             nothing of them was saved",
            gone.display()
        );
        return;
    }
    let parts = files.finished.files.len();
    let more = if parts > 1 {
        format!(
            " and {} more part(s) up to {}{}",
            parts - 1,
            files.finished.files[parts - 1].display(),
            if files.finished.deleted > 0 {
                format!(
                    " ({} older part(s) deleted by rotation)",
                    files.finished.deleted
                )
            } else {
                String::new()
            }
        )
    } else {
        String::new()
    };
    let sizes: Vec<u64> = files
        .finished
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok().map(|m| m.len()))
        .collect();
    let more = format!("{more} ({})", trace_size::saved(&sizes));
    if files.complete {
        eprintln!(
            "netwatch: trace saved to {}{more}, ending with its summary; read it with \
             `netwatch report {}`",
            first.display(),
            first.display()
        );
    } else {
        eprintln!(
            "netwatch: trace {}{more} ends at its last whole record, without a summary",
            first.display()
        );
    }
}

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN, so the timer's remaining time tells a census socket's
/// age; for other states the kernel keeps no entry time.
pub(crate) const TIMEWAIT_LEN_MS: u64 = crate::core::early_ends::TIMEWAIT_LEN_NS / 1_000_000;
const TIMER_TIMEWAIT: u8 = 3;

fn existing(s: &census::CensusSocket, owner: Option<Owner>, cgroup: u64) -> Existing {
    let age_ns = (s.state == state::TIME_WAIT && s.timer == TIMER_TIMEWAIT)
        .then(|| TIMEWAIT_LEN_MS.saturating_sub(s.expires_ms as u64) * 1_000_000);
    Existing {
        sock_id: s.cookie,
        state: s.state,
        sport: s.sport,
        daddr: s.daddr,
        dport: s.dport,
        age_ns,
        owner,
        netns: s.netns,
        cgroup,
    }
}

/// The namespaces whose counters are sampled: the filtered ones that can be entered, or
/// ours.
/// The namespaces a trace covers: those of `--netns`, else ours and every other one found
/// (see [`discovered_namespaces`]), each with a file to enter it by (None for ours).
fn traced_spaces(cfg: &TraceConfig) -> Vec<(u32, Option<std::path::PathBuf>)> {
    if cfg.netns.is_empty() {
        let (own, others) = discovered_namespaces();
        let mut all = vec![(own, None)];
        all.extend(others);
        return all;
    }
    cfg.netns_paths
        .iter()
        .filter_map(|p| {
            Some((
                crate::config::resolve_netns(p.to_str()?).ok()?,
                Some(p.clone()),
            ))
        })
        .collect()
}

fn census_wanted(cfg: &TraceConfig, s: &census::CensusSocket) -> bool {
    (cfg.ports.is_empty() || cfg.ports.contains(&s.sport) || cfg.ports.contains(&s.dport))
        && cfg.addrs.matches_addrs(s.saddr, s.daddr)
}

pub fn run(mut cfg: TraceConfig) -> Result<Outcome> {
    // Before the slow start: a port in use fails at once.
    let listener = cfg.metrics.map(serve::bind).transpose()?;
    preflight::check_privileges()?;
    let btf = preflight::kernel_btf()?;
    let mut agg = Aggregator::new();
    let mut cgroups = crate::cgroup::Resolver::system();
    let mut found = Census::default();
    let mut env = None;
    // The census runs after the programs are verified and before they attach, so that the
    // ring buffer does not fill while it walks a large socket table; the counters'
    // baseline is taken then too, so nothing that happens after the attach is lost in it.
    let mut probes = Probes::attach(&cfg, btf, || {
        // Without --netns, every namespace found: their sockets' census and their counters'
        // baseline before the attach, as our own's.
        let spaces = traced_spaces(&cfg);
        // The sockets themselves are kept only for the JSON records they become; the live
        // views need just the engine's seed (131k of them at a full TIME_WAIT table).
        let json = cfg.output.is_some() || cfg.view == View::Events;
        found = take_census(&cfg, json, &spaces, &mut agg, &mut cgroups);
        env = Some(EnvSource::new(spaces));
    })?;
    let env = env.context("the programs were never attached")?;
    let mut warnings = probes.warnings.clone();
    // A table in use now gets its births followed before netwatch says it is attached,
    // not from the first interval on.
    if env.conntrack_in_use() {
        if let Err(e) = probes.conntrack_in_use() {
            warnings.push(format!("{e:#}"));
        }
    }
    warnings.extend(std::mem::take(&mut found.warnings));
    for w in &warnings {
        eprintln!("netwatch: warning: {w}");
    }
    for line in kernel_notes(&probes.features, &probes.verifier_logs, cfg.verbose) {
        eprintln!("{line}");
    }
    let clock = WallClock::now();
    let start_mono = found.mono_ns;
    let header = header(&cfg, clock, start_mono, &probes.features);
    let kernel = header.kernel.clone();
    let size = SizeWatch::new(cfg.output.as_ref());
    let mut sinks = Sinks::new(
        clock,
        cfg.view == View::Events,
        cfg.view == View::Plain,
        cfg.output.take(),
        header,
    )?;
    // The trace exists once its header is out: a signal from now on ends it with its
    // summary, and a failure while writing the census (a full disk, a file size limit met
    // by a big socket table) keeps what was written instead of removing it as a failed
    // start would.
    stop_signals::tracing();
    let census_paced_until = Instant::now() + CENSUS_PACING;
    for (i, (s, owner)) in found.sockets.iter().enumerate() {
        sinks.census(census_json(s, owner, start_mono, clock));
        // Handed to the writer as it goes, and no faster than the file takes it: formatted
        // whole, or queued as fast as it is formatted, a full TIME_WAIT table's census was
        // ~40 MB of JSON in memory at once, the peak RSS of a trace to a file.
        if i % CENSUS_BATCH == CENSUS_BATCH - 1 {
            match sinks.flush() {
                // A closed stdout ends the trace at its first drain, as it would have here.
                Ok(()) | Err(SinkError::ClosedPipe) => {}
                Err(SinkError::Io(e)) => return Err(e.context("writing the census")),
            }
            let left = census_paced_until.saturating_duration_since(Instant::now());
            sinks.pace(CENSUS_QUEUED, left);
        }
    }
    drop(found);
    let duration = cfg.duration;
    eprintln!(
        "netwatch: attached to {}; tracing{} (Ctrl-C to stop)",
        netwatch_common::names::hook::SET_STATE,
        duration.map(|d| format!(" for {d:?}")).unwrap_or_default()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Said (and the exporter's own warnings) before the dashboard takes the terminal.
    let listener = match listener {
        Some(l) => {
            let _in_runtime = rt.enter();
            let addr = l.local_addr().context("the metrics socket's address")?;
            let l = tokio::net::TcpListener::from_std(l).context("serving metrics")?;
            eprintln!("netwatch: serving metrics on http://{addr}/metrics");
            Some(l)
        }
        None => None,
    };
    let shared = Arc::new(serve::Shared::new(cfg.interval));
    let exporter = listener
        .is_some()
        .then(|| serve::Exporter::new(shared.clone(), kernel.clone(), &probes.features));
    let dashboard = if cfg.view == View::Dashboard {
        ui::install_panic_hook();
        stop_signals::dashboard_owns_terminal();
        Some((ui::Tui::enter()?, ui::Dashboard::new()))
    } else {
        None
    };
    let probes_reasons = probes.reasons.clone();
    let probes_features = probes.features.clone();
    let mut tracer = Tracer {
        probes,
        cfg,
        sinks,
        agg,
        clock,
        dashboard,
        decoder: Decoder::new(probes_reasons),
        signals: Signals::new(&probes_features),
        env,
        conntrack: ConntrackTracker::new(kernel_hz().unwrap_or(DEFAULT_HZ)),
        conntrack_told: false,
        syn_recv_next: std::time::Instant::now(),
        next_discovery: std::time::Instant::now(),
        netns_names: crate::serve::places::NetnsNames::system(),
        alerts: Vec::new(),
        undecodable: 0,
        start_mono,
        kernel,
        size,
        size_hint_at_exit: None,
        exporter,
        syn_recv: Vec::new(),
        cgroups,
    };

    tracer.next_discovery = std::time::Instant::now() + DISCOVERY_EVERY;
    // The trace loop decodes and aggregates what the ring reader copied out.
    crate::record_priority::raise();
    let (stop, stopped) = rt.block_on(async {
        if let Some(l) = listener {
            tokio::spawn(serve::http::serve(l, shared));
        }
        tracer.run(duration).await
    });
    // Leave the alternate screen before anything is printed on the way out.
    tracer.dashboard = None;
    // The file's writer gets a short grace to catch up (what it has not taken then is
    // dropped and counted), so `--duration` ends on time however slow the output's reader.
    let settled = tracer.sinks.settle();
    let stopped = match (stopped, settled) {
        (Err(e), _) | (Ok(()), Err(e @ SinkError::Io(_))) => Err(e),
        _ => Ok(()),
    };
    // The summary goes in however tracing stopped; after a failed write nothing does.
    // Early TIME_WAIT ends still waiting for their evidence will get none now.
    tracer.agg.finish();
    let summary = tracer.summary(stop);
    let finished = tracer.sinks.finish(&summary);
    if let Ok(Some(files)) = &finished {
        report_files(files);
    }
    if let Some(hint) = tracer.size_hint_at_exit.take() {
        eprintln!("netwatch: {hint}");
    }
    if let Err(SinkError::Io(e)) = stopped {
        return Err(e);
    }
    let incomplete = finished?.is_some_and(|f| !f.complete);
    let counters = tracer.probes.counters()?;
    if summary.skipped_runs > 0 {
        eprintln!(
            "netwatch: warning: {}",
            crate::core::text::skipped_runs(summary.skipped_runs)
        );
    }
    if counters.state_map_full > 0 || counters.read_errors > 0 {
        eprintln!(
            "netwatch: warning: {} socket entries could not be tracked, {} kernel reads failed",
            counters.state_map_full, counters.read_errors
        );
    }
    Ok(Outcome {
        transitions: tracer.sinks.transitions,
        lost: counters.lost_records,
        undecodable: tracer.undecodable,
        output_dropped: summary.output_dropped,
        incomplete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coverage::tests::debian_6_1;

    #[test]
    fn a_census_failing_part_way_says_what_was_counted() {
        let none = census_failed("Connection reset by peer", 0);
        assert!(none.ends_with("counts start from zero"), "{none}");
        let some = census_failed("Connection reset by peer", 4096);
        assert!(some.contains("stopped after 4096 sockets (Connection reset by peer)"));
        assert!(!some.contains("from zero"), "{some}");
    }

    fn refused() -> Vec<VerifierLog> {
        vec![VerifierLog {
            program: "slab_alloc".into(),
            attach_point: "tp_btf/kmem_cache_alloc".into(),
            tail: vec![
                "func 'kmem_cache_alloc' arg1 type UNKNOWN is not a struct".into(),
                "invalid bpf_context access off=8 size=8".into(),
            ],
        }]
    }

    #[test]
    fn a_closed_terminal_is_a_hang_up_not_an_error() {
        let gone = || {
            SinkError::Io(anyhow::Error::new(std::io::Error::from_raw_os_error(
                libc::EIO,
            )))
        };
        // A plain EIO (the trace file's disk) is a failure...
        assert_eq!(Stop::after_error(&gone(), None), None);
        // ...the dashboard's terminal answering EIO is a hang-up...
        let tty = SinkError::Io(
            anyhow::Error::new(ui::TerminalGone(std::io::Error::from_raw_os_error(
                libc::EIO,
            )))
            .context("snapshot"),
        );
        assert_eq!(Stop::after_error(&tty, None), Some(Stop::Hangup));
        // ...and a signal that came with any error is what stopped the trace.
        assert_eq!(
            Stop::after_error(&gone(), Some(libc::SIGHUP)),
            Some(Stop::Hangup)
        );
        assert_eq!(
            Stop::after_error(&gone(), Some(libc::SIGTERM)),
            Some(Stop::Terminate)
        );
    }

    #[test]
    fn lost_features_are_said_once_and_verifier_logs_only_when_asked() {
        let quiet = kernel_notes(&debian_6_1(), &refused(), false);
        assert_eq!(quiet.len(), 2, "{quiet:?}");
        assert!(quiet[0].starts_with(
            "netwatch: TIME_WAIT and orphaned FIN_WAIT2 dwell unavailable: kmem_cache_alloc"
        ));
        assert!(!quiet.iter().any(|l| l.contains("bpf_context")));
        let verbose = kernel_notes(&debian_6_1(), &refused(), true);
        assert_eq!(&verbose[..2], &quiet[..]);
        assert_eq!(
            &verbose[2..],
            [
                "netwatch: the verifier refused slab_alloc (tp_btf/kmem_cache_alloc); its last \
                 lines:",
                "    func 'kmem_cache_alloc' arg1 type UNKNOWN is not a struct",
                "    invalid bpf_context access off=8 size=8",
            ]
        );
    }

    #[test]
    fn a_loss_listed_twice_is_said_once() {
        let mut f = debian_6_1();
        let twice = f.0.iter().find(|s| !s.available).unwrap().clone();
        f.0.push(twice);
        assert_eq!(kernel_notes(&f, &[], false).len(), 2);
    }

    #[test]
    fn a_kernel_with_everything_says_nothing() {
        let all = KernelFeatures::all("tp_btf");
        assert!(kernel_notes(&all, &[], false).is_empty());
        assert!(kernel_notes(&all, &[], true).is_empty());
    }
}
