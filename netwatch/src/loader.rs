//! Loads the embedded kernel object, configures it for this kernel and these filters, and
//! attaches its programs.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Ebpf, EbpfLoader,
};
use netwatch_common::{
    counter,
    names::{global, hook, map, program},
    Filters, DROP_REASON_SLOTS,
};

use crate::{
    btf::Btf, config::TraceConfig, core::event::DropReason, features::KernelFeatures, offsets,
    preflight,
};

/// The kernel object built by build.rs from netwatch-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-probes"));

/// Attached programs and the maps userspace reads; dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub events: RingBuf<MapData>,
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
    /// Loads and verifies every program, runs `before_attach`, then attaches them.
    pub fn attach(cfg: &TraceConfig, btf: &Btf, before_attach: impl FnOnce()) -> Result<Self> {
        if !preflight::has_tracepoint(btf, hook::SET_STATE) {
            return Err(anyhow!(
                "this kernel has no `{}` tracepoint, which netwatch is built on (Linux 4.16+)",
                hook::SET_STATE
            ));
        }
        let (offsets, missing) = offsets::resolve(btf);
        let mut warnings = Vec::new();
        if !missing.is_empty() {
            warnings.push(format!(
                "this kernel's BTF lacks {}: those record fields will read 0",
                missing.join(", ")
            ));
        }
        let reasons = drop_reasons(btf);
        let mut drop_reasons = [u32::MAX; DROP_REASON_SLOTS];
        for (slot, (n, _)) in drop_reasons.iter_mut().zip(&reasons) {
            *slot = *n;
        }
        let ct_fields_missing = missing.iter().any(|m| m.starts_with("nf_conn"));
        let (ct_alloc_lo, ct_alloc_hi) = match kallsyms_range("__nf_conntrack_alloc") {
            Some(range) if !ct_fields_missing => range,
            _ => {
                warnings.push(
                    "conntrack entry lifetimes are not followed (no __nf_conntrack_alloc in \
                     /proc/kallsyms, or nf_conn not in BTF); table fill still shows"
                        .to_owned(),
                );
                (0, 0)
            }
        };
        let tw_segment_reason = btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_NOT_SPECIFIED")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(u32::MAX);
        if tw_segment_reason == u32::MAX {
            warnings.push(
                "no SKB_DROP_REASON_NOT_SPECIFIED in BTF: an orphan's FIN_WAIT2 that turns \
                 TIME_WAIT is reported only when its timewait socket dies"
                    .to_owned(),
            );
        }
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
        let mut ebpf = EbpfLoader::new()
            .override_global(global::FILTERS, &filters, true)
            .override_global(global::OFFSETS, &offsets, true)
            .load(OBJECT)
            .map_err(|e| {
                let hint = permission_hint(&e);
                anyhow::Error::new(e)
                    .context(format!("loading netwatch's eBPF object failed{hint}"))
            })?;

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

        let aya_btf = aya::Btf::from_sys_fs().context("aya cannot read the kernel's BTF")?;
        // (program, hook, what is lost without it; None: netwatch cannot work without it).
        let mut plan: Vec<(&str, &str, Option<&str>)> =
            vec![(program::SET_STATE, hook::SET_STATE, None)];
        // Timewait and request sockets only show through the slab hooks: without them
        // TIME_WAIT, orphaned FIN_WAIT2 and server SYN_RECV dwell are unknown, the rest works.
        let slab_hooks = [hook::SLAB_ALLOC, hook::SLAB_FREE];
        let slab_fields_missing = missing.iter().any(|m| {
            [
                "skc_cookie",
                "skc_prot",
                "twsk",
                "rsk",
                "tw_substate",
                "request_sock",
            ]
            .iter()
            .any(|f| m.contains(f))
        });
        const SLAB_LOSS: &str =
            "TIME_WAIT, orphaned FIN_WAIT2 and server-side SYN_RECV dwell times";
        if let Some(h) = slab_hooks
            .iter()
            .find(|h| !preflight::has_tracepoint(btf, h))
        {
            warnings.push(format!(
                "this kernel has no `{h}` tracepoint: no {SLAB_LOSS}"
            ));
        } else if slab_fields_missing {
            warnings.push(format!(
                "this kernel's BTF lacks fields of timewait/request sockets: no {SLAB_LOSS}"
            ));
        } else {
            plan.push((program::SLAB_ALLOC, hook::SLAB_ALLOC, Some(SLAB_LOSS)));
            plan.push((program::SLAB_FREE, hook::SLAB_FREE, Some(SLAB_LOSS)));
        }
        // Incident signals; each degrades alone on a kernel without its hook.
        for (name, hook, what) in [
            (
                program::DROPS,
                hook::DROPS,
                "PAWS rejects, listen-queue and netfilter drops",
            ),
            (
                program::SYNACK_RETRANSMIT,
                hook::SYNACK_RETRANSMIT,
                "live SYN-ACK retransmit alerts",
            ),
        ] {
            if preflight::has_tracepoint(btf, hook) {
                plan.push((name, hook, Some(what)));
            } else {
                warnings.push(format!("this kernel has no `{hook}` tracepoint: no {what}"));
            }
        }
        // Each hook's second program goes right after its first (attach order is call
        // order): it covers the events nested in the first on one CPU.
        const NESTED_LOSS: &str = "events nested on one CPU (counted as skipped runs)";
        let plan: Vec<(&str, &str, Option<&str>)> = plan
            .into_iter()
            .flat_map(|step @ (name, hook, _)| {
                let second = program::NESTED
                    .iter()
                    .find(|(first, _)| *first == name)
                    .map(|&(_, second)| (second, hook, Some(NESTED_LOSS)));
                std::iter::once(step).chain(second)
            })
            .collect();
        // Verify everything first, then let the caller do its slow start-up work (the
        // census), then attach: records start flowing only once the drain loop is near.
        let mut loaded = Vec::new();
        for (name, hook, loss) in plan {
            match (load_tp(&mut ebpf, &aya_btf, name, hook), loss) {
                (Ok(()), _) => loaded.push((name, hook, loss)),
                (Err(e), None) => return Err(e),
                (Err(e), Some(what)) => warnings.push(format!("{e:#}: no {what}")),
            }
        }
        before_attach();
        for (name, hook, loss) in loaded {
            match (attach_loaded(&mut ebpf, name, hook), loss) {
                (Ok(()), _) => {}
                (Err(e), None) => return Err(e),
                (Err(e), Some(what)) => warnings.push(format!("{e:#}: no {what}")),
            }
        }
        if reasons.iter().filter(|(_, r)| r.is_paws()).count() == 0 {
            warnings.push(
                "this kernel names no PAWS drop reasons (before 6.16?): PAWS rejects show \
                 only as PAWSEstab/PAWSTimewait counters"
                    .to_owned(),
            );
        }
        let own_sockets = teach_caches().unwrap_or_else(|e| {
            warnings.push(format!(
                "could not open the loopback listeners that locate the timewait and request \
                 socket caches ({e:#}); they are learned from the first listener seen instead"
            ));
            Vec::new()
        });

        let events = RingBuf::try_from(
            ebpf.take_map(map::EVENTS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::EVENTS))?,
        )?;
        Ok(Self {
            ebpf,
            events,
            warnings,
            reasons,
            own_sockets,
            features: KernelFeatures::all("tp_btf"),
            verifier_logs: Vec::new(),
        })
    }

    /// Runs the kernel skipped because the program was already running on that CPU (an
    /// interrupt nested in it): events never seen. The kernel counts them per program in
    /// its fdinfo. A first program's misses are the nested twin's work, so only programs
    /// without a twin, and the twins themselves, count.
    pub fn recursion_misses(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.ebpf
            .programs()
            .filter(|(name, _)| !program::NESTED.iter().any(|(first, _)| first == name))
            .filter_map(|(_, p)| {
                let fd = p.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
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
        })
    }
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

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut BtfTracePoint> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object lacks program {name}"))?
        .try_into()?)
}

fn load_tp(ebpf: &mut Ebpf, btf: &aya::Btf, name: &str, hook: &str) -> Result<()> {
    program(ebpf, name)?
        .load(hook, btf)
        .with_context(|| format!("the verifier rejected {name} (tp_btf/{hook})"))
}

fn attach_loaded(ebpf: &mut Ebpf, name: &str, hook: &str) -> Result<()> {
    program(ebpf, name)?
        .attach()
        .with_context(|| format!("attaching {name} to tracepoint {hook}"))?;
    Ok(())
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
    fn object_has_every_named_map_and_program() {
        let obj = aya_obj::Object::parse(OBJECT).expect("embedded object parses");
        for m in [
            map::EVENTS,
            map::SOCK_STATE,
            map::COUNTERS,
            map::FILTER_NETNS,
            map::FILTER_PORTS,
            map::CACHES,
            map::RECENT_TW,
            map::TW_STATE,
            map::REQ_BORN,
            map::CHILD_BORN,
            map::CT_BORN,
            map::ACTIVE,
        ] {
            assert!(obj.maps.contains_key(m), "map {m} missing");
        }
        for p in [
            program::SET_STATE,
            program::SLAB_ALLOC,
            program::SLAB_FREE,
            program::DROPS,
            program::SYNACK_RETRANSMIT,
        ]
        .into_iter()
        .chain(program::NESTED.iter().map(|(_, second)| *second))
        {
            assert!(obj.programs.contains_key(p), "program {p} missing");
        }
    }
}
