//! `netwatch trace`: attach, drain the ring buffer on a timer, feed the dwell engine and the
//! sinks, and show the live view, until Ctrl-C, SIGTERM, `--duration`, `q` in the
//! dashboard, or a closed stdout.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::census;
use crate::config::{TraceConfig, View};
use crate::environment::EnvSource;
use netwatch_common::state;

use crate::core::{
    aggregate::{Aggregator, Existing},
    clock::{mono_now_ns, WallClock},
    decode::Decoder,
    event::{Event, Owner, Transition},
    plain,
    signals::{Alert, Environment, Signals},
};
use crate::loader::Probes;
use crate::preflight;
use crate::sink::{SinkError, Sinks};
use crate::ui;

/// How often the ring buffer is drained. The kernel side never wakes us, so this bounds the
/// latency of the live view; 8 MiB holds ~100k records, far more than 20 ms of any churn
/// this has been measured at.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct Outcome {
    pub transitions: u64,
    pub lost: u64,
    pub undecodable: u64,
}

struct Tracer {
    probes: Probes,
    cfg: TraceConfig,
    sinks: Sinks,
    agg: Aggregator,
    clock: WallClock,
    dashboard: Option<(ui::Tui, ui::Dashboard)>,
    /// Socket -> the process that owns it, learned where the kernel ran in its context, so
    /// that later transitions (run in softirq context) are attributed too.
    owners: HashMap<u64, Owner>,
    decoder: Decoder,
    signals: Signals,
    env: EnvSource,
    /// Alerts of this interval, for the live views.
    alerts: Vec<Alert>,
    undecodable: u64,
}

enum Stop {
    Done,
    ClosedPipe,
}

impl Tracer {
    fn wanted(&self, ev: &Event) -> bool {
        match ev {
            Event::Transition(t) => {
                self.cfg.addrs.matches(t) && !self.probes.own_sockets.contains(&t.sock_id)
            }
            Event::Drop(d) => self.cfg.addrs.matches_addrs(d.saddr, d.daddr),
            Event::SynackRetransmit(r) => self.cfg.addrs.matches_addrs(r.laddr, r.raddr),
        }
    }

    fn drain(&mut self) -> Result<(), SinkError> {
        let mut now = Vec::new();
        loop {
            let decoded = {
                let Some(item) = self.probes.events.next() else {
                    break;
                };
                self.decoder.decode(&item)
            };
            let Ok(mut ev) = decoded else {
                self.undecodable += 1;
                continue;
            };
            if !self.wanted(&ev) {
                continue;
            }
            if let Event::Transition(t) = &mut ev {
                attribute(&mut self.owners, t);
                self.agg.apply(t);
            }
            self.signals.observe(&ev, &mut now);
            self.sinks.push(&ev);
        }
        self.publish(now);
        self.sinks.flush()
    }

    fn publish(&mut self, alerts: Vec<Alert>) {
        let at = mono_now_ns();
        for a in alerts {
            self.sinks.alert(&a, at);
            self.alerts.push(a);
        }
    }

    /// Counter deltas and settings of the traced namespaces.
    fn environment(&mut self) -> HashMap<u32, Environment> {
        self.env.sample()
    }

    fn lost(&self) -> u64 {
        self.probes.counters().map(|c| c.lost_records).unwrap_or(0) + self.undecodable
    }

    fn snapshot(&mut self) -> Result<(), SinkError> {
        let env = self.environment();
        let ended = self.signals.end_interval(&env, &self.agg);
        self.publish(ended);
        let lost = self.lost();
        let snap = self.agg.snapshot(mono_now_ns(), lost);
        self.sinks.snapshot(&snap);
        let alerts = std::mem::take(&mut self.alerts);
        match self.cfg.view {
            View::Plain => self.sinks.print(&plain::summary(&snap, self.clock)),
            View::Dashboard => {
                if let Some((tui, dash)) = self.dashboard.as_mut() {
                    if !alerts.is_empty() {
                        dash.alerts = alerts.iter().map(Alert::message).collect();
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
            let snap = self.agg.peek(mono_now_ns(), lost);
            tui.draw(dash, &snap).map_err(SinkError::Io)?;
        }
        Ok(false)
    }

    async fn run(&mut self, duration: Option<Duration>) -> Result<Stop, SinkError> {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut every = tokio::time::interval(self.cfg.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let r = loop {
            let step = tokio::select! {
                _ = tick.tick() => self.drain().and_then(|_| self.keys()),
                _ = every.tick() => self.snapshot().map(|_| false),
                _ = int.recv() => Ok(true),
                _ = term.recv() => Ok(true),
                _ = &mut deadline => Ok(true),
            };
            match step {
                Ok(false) => {}
                Ok(true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // What the kernel sent before we were told to stop, and a last snapshot.
        match r.and_then(|_| self.drain()).and_then(|_| self.snapshot()) {
            Ok(()) => Ok(Stop::Done),
            Err(SinkError::ClosedPipe) => Ok(Stop::ClosedPipe),
            Err(e) => Err(e),
        }
    }
}

fn attribute(owners: &mut HashMap<u64, Owner>, t: &mut Transition) {
    match &t.owner {
        Some(o) => {
            owners.insert(t.sock_id, o.clone());
        }
        None => t.owner = owners.get(&t.sock_id).cloned(),
    }
    if t.new == state::CLOSE {
        owners.remove(&t.sock_id);
    }
}

/// Seeds the engine with the sockets that exist now, in the traced namespaces (or this
/// one), so gauges are right from the first second.
fn take_census(
    cfg: &TraceConfig,
    agg: &mut Aggregator,
    owners: &mut HashMap<u64, Owner>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let spaces: Vec<Option<&std::path::Path>> = if cfg.netns.is_empty() {
        vec![None]
    } else {
        cfg.netns_paths.iter().map(|p| Some(p.as_path())).collect()
    };
    if !cfg.netns.is_empty() && cfg.netns_paths.len() < cfg.netns.len() {
        warnings.push(
            "some --netns inodes have no file to enter; their existing sockets are not counted"
                .to_owned(),
        );
    }
    let now = mono_now_ns();
    // Processes are seen from this namespace's /proc, which lists all of them.
    let by_inode: HashMap<u64, census::Owner> = census::socket_owners();
    for ns in spaces {
        match census::dump_tcp(ns) {
            Ok(socks) => {
                let socks: Vec<_> = socks
                    .into_iter()
                    .filter(|s| census_wanted(cfg, s))
                    .collect();
                for s in socks.iter().filter(|s| s.inode != 0) {
                    if let Some(o) = by_inode.get(&s.inode) {
                        owners.insert(
                            s.cookie,
                            Owner {
                                pid: o.pid,
                                comm: o.comm.as_str().into(),
                            },
                        );
                    }
                }
                agg.seed(now, socks.iter().map(existing));
            }
            Err(e) => warnings.push(format!(
                "census of existing sockets failed ({e:#}); counts start from zero"
            )),
        }
    }
    warnings
}

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN, so the timer's remaining time tells a census socket's
/// age; for other states the kernel keeps no entry time.
const TIMEWAIT_LEN_MS: u64 = 60_000;
const TIMER_TIMEWAIT: u8 = 3;

fn existing(s: &census::CensusSocket) -> Existing {
    let age_ns = (s.state == state::TIME_WAIT && s.timer == TIMER_TIMEWAIT)
        .then(|| TIMEWAIT_LEN_MS.saturating_sub(s.expires_ms as u64) * 1_000_000);
    Existing {
        sock_id: s.cookie,
        state: s.state,
        sport: s.sport,
        daddr: s.daddr,
        dport: s.dport,
        age_ns,
    }
}

/// The namespaces whose counters are sampled: the filtered ones that can be entered, or
/// ours.
fn traced_spaces(cfg: &TraceConfig) -> Vec<(u32, Option<std::path::PathBuf>)> {
    if cfg.netns.is_empty() {
        let own = crate::config::resolve_netns("/proc/self/ns/net").unwrap_or(0);
        return vec![(own, None)];
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
    preflight::check_privileges()?;
    let btf = preflight::kernel_btf()?;
    let probes = Probes::attach(&cfg, &btf)?;
    let mut agg = Aggregator::new();
    let mut owners = HashMap::new();
    let mut warnings = probes.warnings.clone();
    warnings.extend(take_census(&cfg, &mut agg, &mut owners));
    for w in &warnings {
        eprintln!("netwatch: warning: {w}");
    }
    let clock = WallClock::now();
    let sinks = Sinks::new(
        clock,
        cfg.view == View::Events,
        cfg.view == View::Plain,
        cfg.output.take(),
    );
    let duration = cfg.duration;
    eprintln!(
        "netwatch: attached to {}; tracing{} (Ctrl-C to stop)",
        netwatch_common::names::hook::SET_STATE,
        duration.map(|d| format!(" for {d:?}")).unwrap_or_default()
    );
    let dashboard = if cfg.view == View::Dashboard {
        ui::install_panic_hook();
        Some((ui::Tui::enter()?, ui::Dashboard::new()))
    } else {
        None
    };
    let probes_reasons = probes.reasons.clone();
    let env_spaces = traced_spaces(&cfg);
    let mut tracer = Tracer {
        probes,
        cfg,
        sinks,
        agg,
        clock,
        dashboard,
        owners,
        decoder: Decoder::new(probes_reasons),
        signals: Signals::new(),
        env: EnvSource::new(env_spaces),
        alerts: Vec::new(),
        undecodable: 0,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stopped = rt.block_on(tracer.run(duration));
    // Leave the alternate screen before anything is printed on the way out.
    tracer.dashboard = None;
    match stopped {
        Ok(Stop::Done) | Ok(Stop::ClosedPipe) => {}
        Err(SinkError::ClosedPipe) => {}
        Err(SinkError::Io(e)) => return Err(e),
    }
    tracer.sinks.finish()?;
    let counters = tracer.probes.counters()?;
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
    })
}
