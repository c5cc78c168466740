//! `netwatch trace`: attach, drain the ring buffer on a timer, and hand records to the sinks
//! until Ctrl-C, SIGTERM, `--duration`, or a closed stdout.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::TraceConfig;
use crate::core::{clock::WallClock, decode::decode, event::Event};
use crate::loader::Probes;
use crate::preflight;
use crate::sink::{SinkError, Sinks};

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
    undecodable: u64,
}

impl Tracer {
    fn drain(&mut self) -> Result<(), SinkError> {
        while let Some(item) = self.probes.events.next() {
            match decode(&item) {
                Ok(Event::Transition(t))
                    if !self.cfg.addrs.matches(&t)
                        || self.probes.own_sockets.contains(&t.sock_id) => {}
                Ok(ev) => self.sinks.push(&ev),
                Err(_) => self.undecodable += 1,
            }
        }
        self.sinks.flush()
    }
}

pub fn run(mut cfg: TraceConfig) -> Result<Outcome> {
    preflight::check_privileges()?;
    let btf = preflight::kernel_btf()?;
    let probes = Probes::attach(&cfg, &btf)?;
    for w in &probes.warnings {
        eprintln!("netwatch: warning: {w}");
    }
    let clock = WallClock::now();
    let sinks = Sinks::new(clock, cfg.lines, cfg.output.take());
    let duration = cfg.duration;
    let mut tracer = Tracer {
        probes,
        cfg,
        sinks,
        undecodable: 0,
    };
    eprintln!(
        "netwatch: attached to {}; tracing{} (Ctrl-C to stop)",
        netwatch_common::names::hook::SET_STATE,
        duration.map(|d| format!(" for {d:?}")).unwrap_or_default()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stopped: Result<(), SinkError> = rt.block_on(async {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = tick.tick() => tracer.drain()?,
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = &mut deadline => break,
            }
        }
        // What the kernel sent before we were told to stop.
        tracer.drain()
    });
    match stopped {
        Ok(()) | Err(SinkError::ClosedPipe) => {}
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
