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
    Filters,
};

use crate::{btf::Btf, config::TraceConfig, offsets, preflight};

/// The kernel object built by build.rs from netwatch-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-probes"));

/// Attached programs and the maps userspace reads; dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    /// Things worth telling the user about how this kernel limited the trace.
    pub warnings: Vec<String>,
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
    pub fn attach(cfg: &TraceConfig, btf: &Btf) -> Result<Self> {
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
        let filters = Filters {
            by_netns: u8::from(!cfg.netns.is_empty()),
            by_port: u8::from(!cfg.ports.is_empty()),
            _pad: [0; 6],
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
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(program::SET_STATE)
            .ok_or_else(|| anyhow!("object lacks program {}", program::SET_STATE))?
            .try_into()?;
        prog.load(hook::SET_STATE, &aya_btf).with_context(|| {
            format!(
                "the verifier rejected {} (tp_btf/{})",
                program::SET_STATE,
                hook::SET_STATE
            )
        })?;
        prog.attach()
            .with_context(|| format!("attaching to tracepoint {}", hook::SET_STATE))?;

        let events = RingBuf::try_from(
            ebpf.take_map(map::EVENTS)
                .ok_or_else(|| anyhow!("object lacks map {}", map::EVENTS))?,
        )?;
        Ok(Self {
            ebpf,
            events,
            warnings,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the loader uses exists in the object, so a rename on one side fails here
    /// rather than at run time on a user's machine.
    #[test]
    fn object_has_every_named_map_and_program() {
        let obj = aya_obj::Object::parse(OBJECT).expect("embedded object parses");
        for m in [
            map::EVENTS,
            map::SOCK_STATE,
            map::COUNTERS,
            map::FILTER_NETNS,
            map::FILTER_PORTS,
        ] {
            assert!(obj.maps.contains_key(m), "map {m} missing");
        }
        assert!(obj.programs.contains_key(program::SET_STATE));
    }
}
