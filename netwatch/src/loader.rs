//! Loads the embedded kernel object, configures it for this kernel and these filters, and
//! attaches its programs.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, ProgramError},
    Ebpf, EbpfLoader,
};
use netwatch_common::{
    counter,
    names::{global, map, program},
    Filters, KnownCaches, DROP_REASON_SLOTS,
};

use crate::{
    btf::Btf,
    config::TraceConfig,
    core::event::DropReason,
    features::KernelFeatures,
    offsets,
    plan::{self, Attach, Hook, KernelFacts, StepOutcome, Variant},
    ring_reader::RingReader,
};

/// The kernel object built by build.rs from netwatch-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-probes"));

/// Attached programs and the maps userspace reads; dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// The slab hooks (and whether their twins loaded) loaded and verified but not yet
    /// attached: the allocation hook serves conntrack's births only, and the free hook,
    /// where destructor hooks report every socket death, conntrack's deaths only. Each runs
    /// for every slab object of the kernel, so they are attached once conntrack is in use
    /// ([`Probes::conntrack_in_use`]).
    conntrack_hooks: Vec<(Variant, bool)>,
    /// The ring buffer's records, copied out by a thread of their own.
    pub events: RingReader,
    /// Things worth telling the user about how this kernel limited the trace.
    pub warnings: Vec<String>,
    /// This kernel's drop-reason numbers for the reasons netwatch reports.
    pub reasons: Vec<(u32, DropReason)>,
    /// Cookies of the sockets netwatch itself opened to teach the kernel side the slab
    /// caches; their records are not the user's traffic.
    pub own_sockets: Vec<u64>,
    /// What this trace can see on this kernel (decided by the attach plan).
    pub features: KernelFeatures,
    /// The verifier's own words for each program variant this kernel refused: shown under
    /// `--verbose`, never by default (the one-line feature losses say what matters).
    pub verifier_logs: Vec<VerifierLog>,
}

/// Why the kernel refused one program variant: the last lines of the verifier's log, which
/// name the cause (its first lines describe the program's arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierLog {
    pub program: String,
    pub attach_point: String,
    pub tail: Vec<String>,
}

/// Loss and error counts the kernel side kept, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    pub lost_records: u64,
    pub state_map_full: u64,
    pub read_errors: u64,
    /// See `counter::COVERED_BY_TWIN`.
    pub covered_by_twin: u64,
}

fn permission_hint(e: &aya::EbpfError) -> &'static str {
    let text = format!("{e:?}");
    if text.contains("EPERM") || text.contains("PermissionDenied") || text.contains("os error 1)") {
        "; the kernel refused: run as root or grant CAP_BPF and CAP_PERFMON"
    } else {
        ""
    }
}

impl Probes {
    /// Loads and verifies the programs the attach plan chooses for this kernel, runs
    /// `before_attach`, then attaches them.
    /// Takes the kernel's parsed BTF to drop it once read: it was ~20 MB held for the
    /// whole trace, and with aya's own copy and the census it set the peak RSS.
    pub fn attach(
        cfg: &TraceConfig,
        kernel_btf: Btf,
        before_attach: impl FnOnce(),
    ) -> Result<Self> {
        let btf = &kernel_btf;
        let (offsets, missing) = offsets::resolve(btf);
        let mut warnings = Vec::new();
        if !missing.is_empty() {
            warnings.push(format!(
                "this kernel's BTF lacks {}: those record fields will read 0",
                missing.join(", ")
            ));
        }
        let mut facts = KernelFacts::from_btf(btf);
        let lacks = |fields: &[&str]| -> Vec<&str> {
            missing
                .iter()
                .filter(|m| fields.iter().any(|f| m.contains(f)))
                .map(String::as_str)
                .collect()
        };
        let socket_fields = lacks(&[
            "skc_cookie",
            "skc_prot",
            "twsk",
            "rsk",
            "tw_substate",
            "request_sock",
        ]);
        if !socket_fields.is_empty() {
            facts.sockets_blocked = Some(format!(
                "this kernel's BTF lacks {} of timewait/request sockets",
                socket_fields.join(", ")
            ));
        }
        let cgroup_fields = lacks(&["sk_cgrp_data", "cgroup.kn", "kernfs_node.id"]);
        if !cgroup_fields.is_empty() {
            facts.cgroup_blocked = Some(format!(
                "this kernel's BTF lacks {}; sockets are attributed by the calling process                  where it is known",
                cgroup_fields.join(", ")
            ));
        }
        let ct_range = kallsyms_range("__nf_conntrack_alloc");
        facts.conntrack_blocked = if !lacks(&["nf_conn"]).is_empty() {
            Some("this kernel's BTF lacks fields of nf_conn".to_owned())
        } else if ct_range.is_none() {
            Some(
                "no __nf_conntrack_alloc in /proc/kallsyms (conntrack not loaded, or \
                 addresses hidden); table fill still shows"
                    .to_owned(),
            )
        } else {
            None
        };
        let plan = plan::plan(&facts).map_err(|e| anyhow!(e))?;

        let reasons = drop_reasons(btf);
        let mut drop_reasons = [u32::MAX; DROP_REASON_SLOTS];
        for (slot, (n, _)) in drop_reasons.iter_mut().zip(&reasons) {
            *slot = *n;
        }
        let (ct_alloc_lo, ct_alloc_hi) = ct_range.unwrap_or((0, 0));
        let tw_segment_reason = btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_NOT_SPECIFIED")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(u32::MAX);
        let filters = Filters {
            tw_segment_reason,
            _pad2: 0,
            by_netns: u8::from(!cfg.netns.is_empty()),
            by_port: u8::from(!cfg.ports.is_empty()),
            _pad: [0; 6],
            drop_reasons,
            ct_alloc_lo,
            ct_alloc_hi,
        };
        // One parsed copy of the kernel's BTF at a time: ours is done with, EbpfLoader::new
        // parses aya's own (~15 MB) and keeps it until the loader goes, and the program
        // loads below parse another. Overlapping, they set netwatch's peak RSS.
        drop(kernel_btf);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(global::FILTERS, &filters, true)
            .override_global(global::OFFSETS, &offsets, true);
        if !plan.keys_by_pointer() {
            loader.map_max_entries(map::SOCK_PTR, 1);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            let hint = permission_hint(&e);
            anyhow::Error::new(e).context(format!("loading netwatch's eBPF object failed{hint}"))
        })?;
        drop(loader);

        let mut netns: HashMap<_, u32, u8> = HashMap::try_from(
            ebpf.map_mut(map::FILTER_NETNS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::FILTER_NETNS))?,
        )?;
        for ns in &cfg.netns {
            netns.insert(ns, 1, 0).context("filling the netns filter")?;
        }
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(
            ebpf.map_mut(map::FILTER_PORTS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::FILTER_PORTS))?,
        )?;
        for p in &cfg.ports {
            ports.insert(p, 1, 0).context("filling the port filter")?;
        }

        // Verify everything first, then let the caller do its slow start-up work (the
        // census), then attach: records start flowing only once the drain loop is near.
        let aya_btf = aya::Btf::from_sys_fs().context("aya cannot read the kernel's BTF")?;
        let mut outcomes = Vec::new();
        let mut verifier_logs = Vec::new();
        for step in &plan.steps {
            let mut outcome = StepOutcome {
                hook: step.hook,
                loaded: None,
                refused: Vec::new(),
            };
            for v in &step.variants {
                match load(&mut ebpf, &aya_btf, v.program, v.attach) {
                    Ok(()) => {
                        // The twin goes right after its first (attach order is call order).
                        let twin = v.nested().is_some_and(|twin| {
                            load(&mut ebpf, &aya_btf, twin, v.attach)
                                .map_err(|e| verifier_logs.push(refusal(twin, v.attach, &e)))
                                .is_ok()
                        });
                        outcome.loaded = Some((*v, twin));
                        break;
                    }
                    Err(e) => {
                        let log = refusal(v.program, v.attach, &e);
                        outcome.refused.push((v.program, log.cause()));
                        verifier_logs.push(log);
                    }
                }
            }
            if step.required && outcome.loaded.is_none() {
                let (program, cause) = outcome.refused.last().cloned().unwrap_or_default();
                return Err(anyhow!(
                    "netwatch cannot follow TCP state changes on this kernel ({}): the kernel \
                     refused {program}: {cause}. netwatch supports Linux 5.10 and newer with \
                     BTF; `--verbose` shows the verifier's log",
                    kernel_release()
                ));
            }
            outcomes.push(outcome);
        }
        drop(aya_btf);
        before_attach();
        let mut deferred = Vec::new();
        let conntrack_births = outcomes
            .iter()
            .any(|o| o.hook == Hook::SlabAlloc && o.loaded.is_some());
        // Told before anything attaches, so no death is reported by both kinds of hook; told
        // again below if an attach fails.
        let loaded_cover = plan::covered(&outcomes);
        tell_destructors(&mut ebpf, loaded_cover)
            .context("could not tell the slab hook which deaths the destructor hooks report")?;
        // The plan puts the destructor hooks before the slab free hook.
        let mut covered = 0;
        for outcome in &mut outcomes {
            let Some((v, twin)) = outcome.loaded else {
                continue;
            };
            if outcome.hook == Hook::SlabAlloc {
                // Runs ~32 times a connection for other caches; waits for conntrack.
                deferred.push((v, twin));
                continue;
            }
            if outcome.hook == Hook::SlabFree && plan::slab_free_waits(covered) {
                // Every socket death has its destructor hook: conntrack's are left.
                if conntrack_births {
                    deferred.push((v, twin));
                }
                continue;
            }
            let first = attach_loaded(&mut ebpf, v.program, v.attach);
            if let Err(e) = first {
                if plan
                    .steps
                    .iter()
                    .any(|s| s.hook == outcome.hook && s.required)
                {
                    return Err(e);
                }
                outcome.refused.push((v.program, format!("{e:#}")));
                outcome.loaded = None;
                continue;
            }
            if let (true, Some(second)) = (twin, v.nested()) {
                if attach_loaded(&mut ebpf, second, v.attach).is_err() {
                    outcome.loaded = Some((v, false));
                }
            }
            covered |= plan::destructor_bit(outcome.hook);
        }
        if covered != loaded_cover {
            tell_destructors(&mut ebpf, covered)
                .context("could not tell the slab hook which deaths the destructor hooks report")?;
        }
        let features = plan::features(&plan, &outcomes);
        let own_sockets = teach_caches().unwrap_or_else(|e| {
            warnings.push(format!(
                "could not open the loopback listeners that locate the timewait and request \
                 socket caches ({e:#}); they are learned from the first listener seen instead"
            ));
            Vec::new()
        });

        let events = RingReader::spawn(RingBuf::try_from(
            ebpf.take_map(map::EVENTS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::EVENTS))?,
        )?)
        .context("could not start the thread that reads the ring buffer")?;
        Ok(Self {
            ebpf,
            conntrack_hooks: deferred,
            events,
            warnings,
            reasons,
            own_sockets,
            features,
            verifier_logs,
        })
    }

    /// Conntrack is in use in a namespace netwatch watches: attaches the allocation hook
    /// (once), so entries allocated from now on have a known lifetime. Those allocated
    /// before end with an unknown one, as entries older than the trace do. Err (once) if
    /// the kernel refused the attach, for the user to be told.
    pub fn conntrack_in_use(&mut self) -> Result<()> {
        for (v, twin) in std::mem::take(&mut self.conntrack_hooks) {
            attach_loaded(&mut self.ebpf, v.program, v.attach)
                .context("conntrack lifetimes are not followed")?;
            if let (true, Some(second)) = (twin, v.nested()) {
                // Without its twin, an event nested in another counts as a skipped run.
                let _ = attach_loaded(&mut self.ebpf, second, v.attach);
            }
        }
        Ok(())
    }

    /// Events the kernel kept from netwatch's programs and nobody saw. The kernel skips a
    /// program entered again on a CPU where it runs (an interrupt nested in it) and counts
    /// the miss per program in its fdinfo. A first program's misses are its nested twin's
    /// work, and the twin counts each one it handled (`COVERED_BY_TWIN`); a twin's own
    /// misses are events its first program took. So: every program's misses but the
    /// twins', less what the twins covered.
    pub fn recursion_misses(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let missed: u64 = self
            .ebpf
            .programs()
            .filter(|(name, _)| !program::NESTED.iter().any(|(_, twin)| twin == name))
            .filter_map(|(_, p)| {
                let fd = p.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let covered = self
            .counters()
            .map(|c| c.covered_by_twin)
            .unwrap_or_default();
        missed.saturating_sub(covered)
    }

    /// CPU time each program has run, as the kernel's run-time statistics count it (only
    /// while they are enabled: see `serve::Exporter`).
    pub fn run_times(&self) -> Vec<(String, std::time::Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_owned(), p.info().ok()?.run_time())))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(map::COUNTERS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::COUNTERS))?,
        )?;
        let sum = |slot: u32| -> Result<u64> { Ok(m.get(&slot, 0)?.iter().sum()) };
        Ok(KernelCounters {
            lost_records: sum(counter::LOST_RECORDS)?,
            state_map_full: sum(counter::STATE_MAP_FULL)?,
            read_errors: sum(counter::READ_ERRORS)?,
            covered_by_twin: sum(counter::COVERED_BY_TWIN)?,
        })
    }
}

/// Tells the slab free hook which deaths the destructor hooks report, so it passes over
/// those caches. The kernel side writes the caches into the same entry as it learns them;
/// one it learned between this read and write is learned again from the next listener
/// (`teach_caches` opens some right after).
fn tell_destructors(ebpf: &mut Ebpf, covered: u64) -> Result<()> {
    let mut caches: Array<_, KnownCaches> = Array::try_from(
        ebpf.map_mut(map::CACHES)
            .ok_or_else(|| anyhow!("object lacks map {}", map::CACHES))?,
    )?;
    let mut known = caches.get(&0, 0)?;
    known.destructors = covered;
    caches.set(0, known, 0)?;
    Ok(())
}

/// The text range of a kernel function: its address up to the next symbol's. Addresses
/// read as 0 without privilege (kptr_restrict), which this treats as absent.
fn kallsyms_range(function: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let addrs = text.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let addr = u64::from_str_radix(f.next()?, 16).ok()?;
        let _kind = f.next()?;
        Some((addr, f.next()?))
    });
    let mut start = None;
    let mut all = Vec::new();
    for (addr, name) in addrs {
        if name == function {
            start = Some(addr);
        }
        all.push(addr);
    }
    let start = start.filter(|&a| a != 0)?;
    let end = all.into_iter().filter(|&a| a > start).min()?;
    Some((start, end))
}

/// The drop reasons netwatch reports, by this kernel's numbers (they differ by version).
fn drop_reasons(btf: &Btf) -> Vec<(u32, DropReason)> {
    DropReason::ALL
        .iter()
        .filter_map(|&(r, name)| {
            let v = btf.enum_value("skb_drop_reason", &format!("SKB_DROP_REASON_{name}"))?;
            Some((u32::try_from(v).ok()?, r))
        })
        .take(DROP_REASON_SLOTS)
        .collect()
}

/// `uname -r`, for messages.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Loads one program for its attach point.
fn load(ebpf: &mut Ebpf, btf: &aya::Btf, name: &str, at: Attach) -> Result<(), ProgramError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| ProgramError::UnexpectedProgramType)?;
    match at {
        Attach::TpBtf(hook) => <&mut BtfTracePoint>::try_from(prog)?.load(hook, btf),
        Attach::FEntry(f) => <&mut FEntry>::try_from(prog)?.load(f, btf),
        Attach::FExit(f) => <&mut FExit>::try_from(prog)?.load(f, btf),
    }
}

fn attach_loaded(ebpf: &mut Ebpf, name: &str, at: Attach) -> Result<()> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object lacks program {name}"))?;
    let attached = match at {
        Attach::TpBtf(_) => <&mut BtfTracePoint>::try_from(prog)?.attach().map(drop),
        Attach::FEntry(_) => <&mut FEntry>::try_from(prog)?.attach().map(drop),
        Attach::FExit(_) => <&mut FExit>::try_from(prog)?.attach().map(drop),
    };
    attached.with_context(|| format!("attaching {name} to {at}"))
}

/// What the kernel said when it refused `program`.
fn refusal(program: &str, at: Attach, e: &ProgramError) -> VerifierLog {
    let (log, io) = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => (verifier_log.to_string(), io_error.to_string()),
        other => (String::new(), other.to_string()),
    };
    VerifierLog {
        program: program.to_owned(),
        attach_point: at.to_string(),
        tail: verifier_tail(&log, &io),
    }
}

/// The lines of a verifier log that name the cause: its last ones (the first describe the
/// program's arguments), without the statistics it ends with. An empty log (the kernel
/// refused before verifying, e.g. EPERM for fentry here) gives the system error.
pub fn verifier_tail(log: &str, io_error: &str) -> Vec<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .collect();
    let mut tail: Vec<String> = lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
    // The log's last line is the cause when there is a log; the system error otherwise.
    if !io_error.is_empty() {
        tail.insert(0, io_error.to_owned());
    }
    tail
}

impl VerifierLog {
    /// The one line that says why.
    pub fn cause(&self) -> String {
        self.tail
            .last()
            .cloned()
            .unwrap_or_else(|| "no reason given".to_owned())
    }
}

/// The socket cookie, the id our kernel records carry.
fn socket_cookie(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens and closes one listener per address family: its CLOSE -> LISTEN lets the kernel
/// side read the protocol's timewait and request slab caches, so TIME_WAIT and SYN_RECV are
/// followed from the first second even on a host where no listener opens during the trace.
fn teach_caches() -> Result<Vec<u64>> {
    let mut cookies = Vec::new();
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => cookies.push(socket_cookie(&l).context("SO_COOKIE")?),
            // A host without IPv6 loopback is fine: IPv6 caches are learned later.
            Err(_) if addr.starts_with('[') => {}
            Err(e) => return Err(e).with_context(|| format!("listening on {addr}")),
        }
    }
    Ok(cookies)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the loader uses exists in the object, so a rename on one side fails here
    /// rather than at run time on a user's machine.
    #[test]
    fn kallsyms_gives_a_function_range_or_nothing() {
        if let Some((lo, hi)) = kallsyms_range("tcp_v4_connect") {
            assert!(lo < hi && hi - lo < 1 << 20, "{lo:x}..{hi:x}");
        }
        assert_eq!(kallsyms_range("no_such_function_netwatch"), None);
    }

    #[test]
    fn the_verifier_cause_is_its_last_lines_not_its_first() {
        let log = "arg#0 type is not a struct\n0: R1=ctx()\n1: (85) call unknown#46\n\
                   unknown func bpf_get_socket_cookie#46\n\
                   processed 290 insns (limit 1000000) max_states_per_insn 0\n";
        let tail = verifier_tail(log, "Invalid argument (os error 22)");
        assert_eq!(
            tail.last().unwrap(),
            "unknown func bpf_get_socket_cookie#46"
        );
        assert!(!tail.iter().any(|l| l.contains("not a struct")));
        // fentry refused before verification: an empty log, the errno says it.
        assert_eq!(
            verifier_tail("", "Operation not permitted (os error 1)"),
            ["Operation not permitted (os error 1)"]
        );
    }

    #[test]
    fn object_has_every_named_map_and_program() {
        let obj = aya_obj::Object::parse(OBJECT).expect("embedded object parses");
        for m in [
            map::EVENTS,
            map::SOCK_PTR,
            map::COUNTERS,
            map::FILTER_NETNS,
            map::FILTER_PORTS,
            map::CACHES,
            map::TW_STATE,
            map::CHILD_BORN,
            map::CT_BORN,
            map::CLAIMS,
        ] {
            assert!(obj.maps.contains_key(m), "map {m} missing");
        }
        for p in [
            program::SET_STATE,
            program::SET_STATE_PTR,
            program::SLAB_ALLOC,
            program::SLAB_FREE,
            program::SLAB_FREE_FENTRY,
            program::DROPS,
            program::DROPS_NO_RX_SK,
            program::TW_SEGMENT_FEXIT,
            program::SYNACK_RETRANSMIT,
            program::TW_DESTRUCTOR,
            program::REQ_DESTRUCTOR,
            program::REQ6_DESTRUCTOR,
        ]
        .into_iter()
        .chain(program::NESTED.iter().map(|(_, second)| *second))
        {
            assert!(obj.programs.contains_key(p), "program {p} missing");
        }
    }
}
