//! The attach plan: which program variant to load on which hook of this kernel, and which
//! features are lost and why, decided by pure functions of what the kernel offers (its BTF:
//! tracepoint prototypes, functions, helpers, drop reasons). The loader executes the plan
//! and reports which variants the verifier took; [`features`] turns that into what the
//! trace can see. No kernel-version logic lives anywhere else.
//!
//! Kernels differ where it hurts (measured on Debian's kernels, see the project's notes):
//! - `bpf_get_socket_cookie` is callable from tracing programs only since 5.12: before,
//!   sockets are keyed by address (`set_state_ptr`).
//! - The slab tracepoints carry the cache only since 6.0; before, fexit/fentry on the
//!   allocator functions take their place where the kernel allows them. Their object
//!   argument is a `void *` that verifiers before 6.16 refuse to read through the typed
//!   context, so every variant copies it out instead (same program on 6.1 and 6.18).
//! - `kfree_skb` has a drop reason since 5.17 and names the receiving socket (`rx_sk`)
//!   since 6.8; without `rx_sk`, fexit on `tcp_timewait_state_process` sees the FIN that
//!   turns an orphan's FIN_WAIT2 into TIME_WAIT.

use std::collections::BTreeMap;

use netwatch_common::{
    destructor,
    names::{hook as tp, program},
};

use crate::{
    btf::{ArgKind, Btf},
    features::{Feature, FeatureStatus, KernelFeatures},
};

/// What the kernel offers, gathered once from its BTF (and /proc/kallsyms for conntrack).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// Arguments of the tracepoints netwatch may use, where the kernel has them.
    pub tracepoints: BTreeMap<&'static str, Vec<ArgKind>>,
    /// Arguments of the kernel functions the fentry/fexit variants attach to.
    pub functions: BTreeMap<&'static str, Vec<ArgKind>>,
    /// Tracing programs may call `bpf_get_socket_cookie` (5.12+: BTF has
    /// `bpf_get_socket_ptr_cookie`).
    pub cookie_helper: bool,
    /// The BPF ring buffer exists (5.8+), which every record goes through.
    pub ringbuf: bool,
    /// ... and PAWS rejects in TIME_WAIT (`TCP_RFC7323_TW_PAWS`, 6.16+).
    pub tw_paws_reason: bool,
    /// ... and `NOT_SPECIFIED`, with which timewait sockets' segments are freed.
    pub not_specified_reason: bool,
    /// Why conntrack entries cannot be followed through their slab cache, if they cannot
    /// (no `__nf_conntrack_alloc` in kallsyms, `nf_conn` fields missing from BTF).
    pub conntrack_blocked: Option<String>,
    /// Why timewait and request sockets cannot be read, if their BTF fields are missing.
    pub sockets_blocked: Option<String>,
    /// Why a socket's cgroup cannot be read, if its BTF fields are missing.
    pub cgroup_blocked: Option<String>,
}

const HOOKS: [&str; 5] = [
    tp::SET_STATE,
    tp::SLAB_ALLOC,
    tp::SLAB_FREE,
    tp::DROPS,
    tp::SYNACK_RETRANSMIT,
];

impl KernelFacts {
    /// Reads the facts the plan needs from the kernel's BTF; the rest comes from the loader.
    pub fn from_btf(btf: &Btf) -> Self {
        let mut functions = BTreeMap::new();
        for f in [
            tp::FN_SLAB_FREE,
            tp::FN_TW_SEGMENT,
            tp::FN_TW_DESTRUCTOR,
            tp::FN_REQ_DESTRUCTOR,
            tp::FN_REQ6_DESTRUCTOR,
        ] {
            if let Some(args) = btf.function_args(f) {
                functions.insert(f, args);
            }
        }
        // A helper's implementation is a kernel function named after it (BPF_CALL_x).
        let helper = |name: &str| {
            btf.function_args(name).is_some() || btf.has_typedef(&format!("btf_{name}"))
        };
        let reason = |name: &str| {
            btf.enum_value("skb_drop_reason", &format!("SKB_DROP_REASON_{name}"))
                .is_some()
        };
        Self {
            tracepoints: HOOKS
                .into_iter()
                .filter_map(|h| Some((h, btf.tracepoint_args(h)?)))
                .collect(),
            functions,
            cookie_helper: helper("bpf_get_socket_ptr_cookie"),
            ringbuf: helper("bpf_ringbuf_output"),
            tw_paws_reason: reason("TCP_RFC7323_TW_PAWS"),
            not_specified_reason: reason("NOT_SPECIFIED"),
            conntrack_blocked: None,
            sockets_blocked: None,
            cgroup_blocked: None,
        }
    }

    fn tp(&self, name: &str) -> Option<&[ArgKind]> {
        self.tracepoints.get(name).map(Vec::as_slice)
    }
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    TpBtf(&'static str),
    FEntry(&'static str),
    FExit(&'static str),
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attach::TpBtf(t) => write!(f, "tp_btf/{t}"),
            Attach::FEntry(t) => write!(f, "fentry/{t}"),
            Attach::FExit(t) => write!(f, "fexit/{t}"),
        }
    }
}

/// One way of watching one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub program: &'static str,
    pub attach: Attach,
}

impl Variant {
    /// Its twin for events nested on one CPU, if it has one.
    pub fn nested(&self) -> Option<&'static str> {
        program::NESTED
            .iter()
            .find(|(first, _)| *first == self.program)
            .map(|&(_, second)| second)
    }
}

/// What a hook is for; the plan's steps and [`features`] speak of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    SetState,
    SlabAlloc,
    SlabFree,
    Drops,
    TwSegment,
    SynackRetransmit,
    /// Timewait sockets' deaths through their destructor (fentry), where allowed.
    TwDestructor,
    /// IPv4 and IPv6 request sockets' deaths through theirs.
    ReqDestructor,
    Req6Destructor,
}

/// The destructor hooks: which deaths each reports (a bit of
/// `netwatch_common::destructor`), its program, its function and that function's first
/// argument.
const DESTRUCTORS: [(Hook, u64, &str, &str, &str); 3] = [
    (
        Hook::TwDestructor,
        destructor::TIMEWAIT,
        program::TW_DESTRUCTOR,
        tp::FN_TW_DESTRUCTOR,
        "sock",
    ),
    (
        Hook::ReqDestructor,
        destructor::REQUEST_V4,
        program::REQ_DESTRUCTOR,
        tp::FN_REQ_DESTRUCTOR,
        "request_sock",
    ),
    (
        Hook::Req6Destructor,
        destructor::REQUEST_V6,
        program::REQ6_DESTRUCTOR,
        tp::FN_REQ6_DESTRUCTOR,
        "request_sock",
    ),
];

/// The deaths `hook` reports, if it is a destructor hook.
pub fn destructor_bit(hook: Hook) -> u64 {
    DESTRUCTORS.iter().find(|d| d.0 == hook).map_or(0, |d| d.1)
}

/// Whether the slab free hook waits for conntrack (attached with the allocation hook),
/// given the deaths the attached destructor hooks report: it runs ~22 times a connection
/// for other caches, so it runs only for what nothing else reports.
pub fn slab_free_waits(covered: u64) -> bool {
    covered & destructor::ALL == destructor::ALL
}

/// One hook with the variants to try on it, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub hook: Hook,
    /// netwatch cannot trace without it.
    pub required: bool,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPlan {
    /// In attach order; the last is `set_state` or `set_state_ptr`.
    pub steps: Vec<Step>,
    /// Features lost before anything is loaded, with why in the user's words.
    pub unavailable: Vec<(Feature, String)>,
}

fn is_struct(arg: Option<&ArgKind>, name: &str) -> bool {
    matches!(arg, Some(ArgKind::StructPtr(s)) if s == name)
}

/// `kmem_cache_alloc(call_site, ptr, s, ...)` / `kmem_cache_free(call_site, ptr, s)`: the
/// cache is the third argument since 6.0 (before, the tracepoints carry sizes instead).
fn slab_tp_has_cache(args: Option<&[ArgKind]>) -> bool {
    args.is_some_and(|a| a.len() >= 3 && is_struct(a.get(2), "kmem_cache"))
}

/// The plan for a kernel with these facts. Errors only when netwatch cannot run at all.
pub fn plan(facts: &KernelFacts) -> Result<AttachPlan, String> {
    let mut steps = Vec::new();
    let mut unavailable = Vec::new();
    let Some(set_state) = facts.tp(tp::SET_STATE) else {
        return Err(format!(
            "this kernel has no `{}` tracepoint, which netwatch is built on (Linux 4.16+)",
            tp::SET_STATE
        ));
    };
    if !facts.ringbuf {
        return Err(
            "this kernel has no BPF ring buffer (Linux 5.8+); netwatch supports Linux 5.10 and \
             newer"
                .to_owned(),
        );
    }
    if !is_struct(set_state.first(), "sock") {
        return Err(format!(
            "this kernel's `{}` tracepoint does not take a socket first; netwatch does not \
             know this kernel",
            tp::SET_STATE
        ));
    }
    let by_ptr = Variant {
        program: program::SET_STATE_PTR,
        attach: Attach::TpBtf(tp::SET_STATE),
    };
    steps.push(Step {
        hook: Hook::SetState,
        required: true,
        // One keying per trace: the pointer-keyed map is sized down where cookies work.
        variants: vec![if facts.cookie_helper {
            Variant {
                program: program::SET_STATE,
                attach: Attach::TpBtf(tp::SET_STATE),
            }
        } else {
            by_ptr
        }],
    });

    // Timewait and request sockets' deaths, conntrack's births and deaths, through their
    // slab caches.
    let free_fn = facts
        .functions
        .get(tp::FN_SLAB_FREE)
        .filter(|a| a.len() == 2 && is_struct(a.first(), "kmem_cache"))
        .map(|_| tp::FN_SLAB_FREE);
    let mut alloc = Vec::new();
    let mut free = Vec::new();
    if slab_tp_has_cache(facts.tp(tp::SLAB_ALLOC)) {
        alloc.push(Variant {
            program: program::SLAB_ALLOC,
            attach: Attach::TpBtf(tp::SLAB_ALLOC),
        });
    }
    if slab_tp_has_cache(facts.tp(tp::SLAB_FREE)) {
        free.push(Variant {
            program: program::SLAB_FREE,
            attach: Attach::TpBtf(tp::SLAB_FREE),
        });
    }
    // The allocation hook is for conntrack's births only (timewait and request sockets are
    // known without it, see slab.rs), which fexit cannot tell from other allocations.
    if let Some(f) = free_fn {
        free.push(Variant {
            program: program::SLAB_FREE_FENTRY,
            attach: Attach::FEntry(f),
        });
    }
    if let Some(why) = &facts.cgroup_blocked {
        unavailable.push((Feature::Containers, why.clone()));
    }
    // Tried before the slab hook, which then runs only for the deaths they do not report.
    let destructors: Vec<Step> = DESTRUCTORS
        .iter()
        .filter(|(_, _, _, f, arg)| {
            facts
                .functions
                .get(f)
                .is_some_and(|a| a.len() == 1 && is_struct(a.first(), arg))
        })
        .map(|&(hook, _, program, f, _)| Step {
            hook,
            required: false,
            variants: vec![Variant {
                program,
                attach: Attach::FEntry(f),
            }],
        })
        .collect();
    if let Some(why) = &facts.sockets_blocked {
        for f in [
            Feature::TimeWait,
            Feature::SynRecv,
            Feature::ConntrackLifetimes,
        ] {
            unavailable.push((f, why.clone()));
        }
    } else if free.is_empty() && destructors.is_empty() {
        let why = "this kernel's kmem_cache_free tracepoint carries no slab cache (6.0+) \
                   and its BTF has no kmem_cache_free function for fentry";
        for f in [
            Feature::TimeWait,
            Feature::SynRecv,
            Feature::ConntrackLifetimes,
        ] {
            unavailable.push((f, why.to_owned()));
        }
    } else {
        steps.extend(destructors);
        if let Some(why) = &facts.conntrack_blocked {
            unavailable.push((Feature::ConntrackLifetimes, why.clone()));
        } else if free.is_empty() {
            unavailable.push((
                Feature::ConntrackLifetimes,
                "this kernel's kmem_cache_free tracepoint carries no slab cache (6.0+) and its \
                 BTF has no kmem_cache_free function for fentry"
                    .to_owned(),
            ));
        } else if alloc.is_empty() {
            unavailable.push((
                Feature::ConntrackLifetimes,
                "this kernel's kmem_cache_alloc tracepoint carries no slab cache (6.0+), and \
                 fexit on the allocator would not see which function allocated (conntrack's \
                 entries are recognised by that)"
                    .to_owned(),
            ));
        } else {
            steps.push(Step {
                hook: Hook::SlabAlloc,
                required: false,
                variants: alloc,
            });
        }
        if !free.is_empty() {
            steps.push(Step {
                hook: Hook::SlabFree,
                required: false,
                variants: free,
            });
        }
    }

    // Drops with a reason, and the segments timewait sockets handle.
    let drops = facts.tp(tp::DROPS).unwrap_or_default();
    let has_reason = drops.len() >= 3 && drops[2] == ArgKind::Scalar;
    let has_rx_sk = has_reason && is_struct(drops.get(3), "sock");
    let no_rx_sk = Variant {
        program: program::DROPS_NO_RX_SK,
        attach: Attach::TpBtf(tp::DROPS),
    };
    if has_rx_sk {
        steps.push(Step {
            hook: Hook::Drops,
            required: false,
            variants: vec![
                Variant {
                    program: program::DROPS,
                    attach: Attach::TpBtf(tp::DROPS),
                },
                no_rx_sk,
            ],
        });
    } else if has_reason {
        steps.push(Step {
            hook: Hook::Drops,
            required: false,
            variants: vec![no_rx_sk],
        });
    } else {
        unavailable.push((
            Feature::DropReasons,
            "kfree_skb carries no drop reason on this kernel (5.17+); PAWS rejects and \
             listen overflows show in the netstat counters only"
                .to_owned(),
        ));
    }
    if !has_rx_sk || !facts.not_specified_reason {
        let tw_fn = facts
            .functions
            .get(tp::FN_TW_SEGMENT)
            .is_some_and(|a| is_struct(a.first(), "inet_timewait_sock"));
        if tw_fn {
            steps.push(Step {
                hook: Hook::TwSegment,
                required: false,
                variants: vec![Variant {
                    program: program::TW_SEGMENT_FEXIT,
                    attach: Attach::FExit(tp::FN_TW_SEGMENT),
                }],
            });
        } else {
            unavailable.push((
                Feature::OrphanFin,
                "kfree_skb does not name the receiving socket here (6.8+) and BTF has no \
                 tcp_timewait_state_process"
                    .to_owned(),
            ));
        }
    }
    if !has_rx_sk {
        unavailable.push((
            Feature::PawsEvidence,
            "kfree_skb does not name the timewait socket that rejected a segment on this \
             kernel (6.8+)"
                .to_owned(),
        ));
    } else if !facts.tw_paws_reason {
        unavailable.push((
            Feature::PawsEvidence,
            "this kernel drops PAWS rejects in TIME_WAIT without a drop reason (6.16+); they \
             count in PAWSEstab"
                .to_owned(),
        ));
    }
    if facts.tp(tp::SYNACK_RETRANSMIT).is_some() {
        steps.push(Step {
            hook: Hook::SynackRetransmit,
            required: false,
            variants: vec![Variant {
                program: program::SYNACK_RETRANSMIT,
                attach: Attach::TpBtf(tp::SYNACK_RETRANSMIT),
            }],
        });
    } else {
        unavailable.push((
            Feature::SynackRetransmits,
            format!("this kernel has no `{}` tracepoint", tp::SYNACK_RETRANSMIT),
        ));
    }
    // set_state attaches last: a socket closing into TIME_WAIT is matched with the timewait
    // socket the slab hook saw allocated just before, so that hook must already run when the
    // first close is seen (a trace started under churn otherwise shows false overflows).
    steps.rotate_left(1);
    Ok(AttachPlan { steps, unavailable })
}

impl AttachPlan {
    /// Whether sockets are keyed by address (no cookie helper on this kernel).
    pub fn keys_by_pointer(&self) -> bool {
        self.steps.iter().any(|s| {
            s.variants
                .iter()
                .any(|v| v.program == program::SET_STATE_PTR)
        })
    }
}

/// What happened to one step when the loader tried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub hook: Hook,
    /// The variant now attached, if any, and whether its nested twin is too.
    pub loaded: Option<(Variant, bool)>,
    /// The variants refused before it: (program, the verifier's last line).
    pub refused: Vec<(&'static str, String)>,
}

/// The deaths the destructor hooks attached so far report (bits of
/// `netwatch_common::destructor`).
pub fn covered(outcomes: &[StepOutcome]) -> u64 {
    outcomes
        .iter()
        .filter(|o| o.loaded.is_some())
        .fold(0, |bits, o| bits | destructor_bit(o.hook))
}

/// What the trace can see, from the plan and what the kernel accepted of it.
pub fn features(plan: &AttachPlan, outcomes: &[StepOutcome]) -> KernelFeatures {
    let loaded = |h: Hook| outcomes.iter().find(|o| o.hook == h).and_then(|o| o.loaded);
    let why_not = |h: Hook| -> String {
        match outcomes.iter().find(|o| o.hook == h) {
            Some(o) if !o.refused.is_empty() => {
                let (prog, cause) = &o.refused[o.refused.len() - 1];
                format!("the kernel refused {prog} ({cause})")
            }
            _ => "not attempted on this kernel".to_owned(),
        }
    };
    let via = |vs: &[Variant]| -> String {
        vs.iter()
            .map(|v| v.attach.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut out: Vec<FeatureStatus> = Vec::new();
    let mut put = |feature: Feature, got: Result<String, String>| {
        if out.iter().any(|s| s.feature == feature) {
            return;
        }
        let (available, detail) = match got {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        out.push(FeatureStatus {
            feature,
            available,
            detail,
        });
    };
    // Losses the plan knew of come first, with its reasons.
    for (f, why) in &plan.unavailable {
        put(*f, Err(why.clone()));
    }
    let set_state = loaded(Hook::SetState);
    put(
        Feature::Transitions,
        match set_state {
            Some((v, _)) if v.program == program::SET_STATE_PTR => Ok(format!(
                "{}, sockets keyed by address (no socket cookies for tracing programs here)",
                v.attach
            )),
            Some((v, _)) => Ok(v.attach.to_string()),
            None => Err(why_not(Hook::SetState)),
        },
    );
    put(
        Feature::Containers,
        match set_state {
            Some(_) => Ok("the socket's cgroup (sk_cgrp_data), read at each state change".into()),
            None => Err(why_not(Hook::SetState)),
        },
    );
    let free = loaded(Hook::SlabFree).map(|(f, _)| f);
    // Each kind of death by its destructor where that loaded, else by the slab hook.
    let deaths = |hooks: &[Hook]| -> Result<String, String> {
        let mut by = Vec::new();
        for &h in hooks {
            match (loaded(h), free) {
                (Some((v, _)), _) => by.push(v),
                (None, Some(f)) => by.push(f),
                (None, None) => return Err(why_not(Hook::SlabFree)),
            }
        }
        by.dedup();
        Ok(via(&by))
    };
    put(Feature::TimeWait, deaths(&[Hook::TwDestructor]));
    put(
        Feature::SynRecv,
        deaths(&[Hook::ReqDestructor, Hook::Req6Destructor]),
    );
    put(
        Feature::ConntrackLifetimes,
        match (loaded(Hook::SlabAlloc), free) {
            (Some((a, _)), Some(f)) => Ok(format!(
                "{} ({} attached once conntrack is in use)",
                via(&[a, f]),
                if slab_free_waits(covered(outcomes)) {
                    "both"
                } else {
                    "the allocations"
                }
            )),
            (None, _) => Err(why_not(Hook::SlabAlloc)),
            (_, None) => Err(why_not(Hook::SlabFree)),
        },
    );
    let drops = loaded(Hook::Drops);
    put(
        Feature::DropReasons,
        drops
            .map(|(v, _)| v.attach.to_string())
            .ok_or_else(|| why_not(Hook::Drops)),
    );
    put(
        Feature::PawsEvidence,
        match drops {
            Some((v, _)) if v.program == program::DROPS => Ok(v.attach.to_string()),
            Some(_) => Err("kfree_skb is watched without its rx_sk argument here".to_owned()),
            None => Err(why_not(Hook::Drops)),
        },
    );
    put(
        Feature::OrphanFin,
        match (drops, loaded(Hook::TwSegment)) {
            (_, Some((v, _))) => Ok(v.attach.to_string()),
            (Some((v, _)), None) if v.program == program::DROPS => Ok(v.attach.to_string()),
            _ => Err(why_not(Hook::TwSegment)),
        },
    );
    put(
        Feature::SynackRetransmits,
        loaded(Hook::SynackRetransmit)
            .map(|(v, _)| v.attach.to_string())
            .ok_or_else(|| why_not(Hook::SynackRetransmit)),
    );
    let twins_missing: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.loaded)
        .filter(|(v, twin)| v.nested().is_some() && !twin)
        .map(|(v, _)| v.program)
        .collect();
    put(
        Feature::NestedEvents,
        if twins_missing.is_empty() {
            Ok("a second program per busy hook".to_owned())
        } else {
            Err(format!(
                "the kernel refused the nested twin of {}; such events count as skipped runs",
                twins_missing.join(", ")
            ))
        },
    );
    out.sort_by_key(|s| Feature::ALL.iter().position(|f| *f == s.feature));
    KernelFeatures(out)
}

#[cfg(test)]
mod tests;
