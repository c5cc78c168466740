//! The plan against the prototypes of the kernels netwatch is tested on (Debian's 5.10,
//! 6.1, 6.12, 6.16, 6.18 and 7.3, read from each kernel's BTF; see the project's notes).

use super::*;

fn s(name: &str) -> ArgKind {
    ArgKind::StructPtr(name.to_owned())
}
use ArgKind::{OtherPtr as P, Scalar as N};

#[derive(Clone, Copy, PartialEq)]
enum K {
    V5_10,
    V6_1,
    V6_12,
    V6_16,
    V7_3,
}

fn facts(k: K) -> KernelFacts {
    let mut f = KernelFacts::default();
    f.tracepoints.insert(tp::SET_STATE, vec![s("sock"), N, N]);
    f.tracepoints
        .insert(tp::SYNACK_RETRANSMIT, vec![s("sock"), s("request_sock")]);
    if k == K::V5_10 {
        f.tracepoints.insert(tp::SLAB_ALLOC, vec![N, P, N, N, N]);
        f.tracepoints.insert(tp::SLAB_FREE, vec![N, P]);
        f.tracepoints.insert(tp::DROPS, vec![s("sk_buff"), P]);
    } else {
        f.tracepoints
            .insert(tp::SLAB_ALLOC, vec![N, P, s("kmem_cache"), N, N]);
        f.tracepoints
            .insert(tp::SLAB_FREE, vec![N, P, s("kmem_cache")]);
        f.tracepoints.insert(
            tp::DROPS,
            match k {
                K::V6_1 => vec![s("sk_buff"), P, N],
                _ => vec![s("sk_buff"), P, N, s("sock")],
            },
        );
    }
    f.functions
        .insert(tp::FN_SLAB_FREE, vec![s("kmem_cache"), P]);
    f.functions.insert(
        tp::FN_TW_SEGMENT,
        vec![s("inet_timewait_sock"), s("sk_buff"), s("tcphdr")],
    );
    // In the BTF of all six (read from each kernel image).
    f.functions.insert(tp::FN_TW_DESTRUCTOR, vec![s("sock")]);
    f.functions
        .insert(tp::FN_REQ_DESTRUCTOR, vec![s("request_sock")]);
    f.functions
        .insert(tp::FN_REQ6_DESTRUCTOR, vec![s("request_sock")]);
    f.cookie_helper = k != K::V5_10;
    f.ringbuf = true;
    f.not_specified_reason = k != K::V5_10;
    f.tw_paws_reason = matches!(k, K::V6_16 | K::V7_3);
    f
}

fn programs(p: &AttachPlan, hook: Hook) -> Vec<&'static str> {
    p.steps
        .iter()
        .find(|s| s.hook == hook)
        .map(|s| s.variants.iter().map(|v| v.program).collect())
        .unwrap_or_default()
}

/// The kernel refuses fentry, as the development machines do (EPERM before verifying).
fn refuse_fentry(p: &AttachPlan, out: &mut [StepOutcome]) {
    for o in out.iter_mut() {
        let step = p.steps.iter().find(|s| s.hook == o.hook).unwrap();
        let Some(v) = step
            .variants
            .iter()
            .find(|v| !matches!(v.attach, Attach::FEntry(_) | Attach::FExit(_)))
        else {
            o.loaded = None;
            o.refused = vec![(step.variants[0].program, "Operation not permitted".into())];
            continue;
        };
        o.loaded = Some((*v, true));
    }
}

fn detail(f: &KernelFeatures, feature: Feature) -> &str {
    &f.0.iter().find(|s| s.feature == feature).unwrap().detail
}

/// The kernel accepts every variant's first choice.
fn all_first(p: &AttachPlan) -> Vec<StepOutcome> {
    p.steps
        .iter()
        .map(|s| StepOutcome {
            hook: s.hook,
            loaded: Some((s.variants[0], true)),
            refused: vec![],
        })
        .collect()
}

fn lost(f: &KernelFeatures) -> Vec<Feature> {
    f.lost().map(|s| s.feature).collect()
}

#[test]
fn newest_kernels_get_every_feature_from_tracepoints() {
    for k in [K::V6_16, K::V7_3] {
        let p = plan(&facts(k)).unwrap();
        assert_eq!(programs(&p, Hook::SetState), [program::SET_STATE]);
        assert!(!p.keys_by_pointer());
        // For conntrack's births only, which fexit cannot recognise.
        assert_eq!(programs(&p, Hook::SlabAlloc), [program::SLAB_ALLOC]);
        assert_eq!(
            programs(&p, Hook::Drops),
            [program::DROPS, program::DROPS_NO_RX_SK]
        );
        assert!(programs(&p, Hook::TwSegment).is_empty());
        assert!(p.unavailable.is_empty(), "{:?}", p.unavailable);
        assert_eq!(
            p.steps.last().unwrap().hook,
            Hook::SetState,
            "attached last"
        );
        let f = features(&p, &all_first(&p));
        assert_eq!(lost(&f), []);
        assert_eq!(f.0.len(), Feature::ALL.len());
    }
}

#[test]
fn six_twelve_lacks_only_the_tw_paws_reason() {
    let p = plan(&facts(K::V6_12)).unwrap();
    assert_eq!(
        programs(&p, Hook::Drops),
        [program::DROPS, program::DROPS_NO_RX_SK]
    );
    assert_eq!(
        programs(&p, Hook::SlabFree),
        [program::SLAB_FREE, program::SLAB_FREE_FENTRY]
    );
    let f = features(&p, &all_first(&p));
    assert_eq!(lost(&f), [Feature::PawsEvidence]);
    assert!(f.lost_lines()[0].contains("6.16"), "{:?}", f.lost_lines());
}

#[test]
fn six_one_drops_without_rx_sk_and_catches_orphan_fins_by_fexit() {
    let p = plan(&facts(K::V6_1)).unwrap();
    assert_eq!(programs(&p, Hook::Drops), [program::DROPS_NO_RX_SK]);
    assert_eq!(programs(&p, Hook::TwSegment), [program::TW_SEGMENT_FEXIT]);
    let free = &p
        .steps
        .iter()
        .find(|s| s.hook == Hook::SlabFree)
        .unwrap()
        .variants;
    assert_eq!(free[1].attach, Attach::FEntry("kmem_cache_free"));
    let f = features(&p, &all_first(&p));
    assert_eq!(lost(&f), [Feature::PawsEvidence]);

    // Where the kernel refuses fentry/fexit (as the development machines do), the orphan's
    // FIN is lost, said with the verifier's cause, and nothing else.
    let mut out = all_first(&p);
    let seg = out.iter_mut().find(|o| o.hook == Hook::TwSegment).unwrap();
    seg.loaded = None;
    seg.refused = vec![(program::TW_SEGMENT_FEXIT, "Permission denied".into())];
    let f = features(&p, &out);
    assert_eq!(lost(&f), [Feature::OrphanFin, Feature::PawsEvidence]);
    assert!(f.lost_lines()[0].contains("tw_segment_fexit (Permission denied)"));
}

#[test]
fn five_ten_keys_by_address_and_watches_the_allocator_by_fentry() {
    let p = plan(&facts(K::V5_10)).unwrap();
    assert_eq!(programs(&p, Hook::SetState), [program::SET_STATE_PTR]);
    assert!(p.keys_by_pointer());
    // Timewait and request sockets need only their deaths; conntrack's births would need
    // the allocation's caller, which fexit does not see.
    assert!(programs(&p, Hook::SlabAlloc).is_empty());
    assert_eq!(programs(&p, Hook::SlabFree), [program::SLAB_FREE_FENTRY]);
    assert!(programs(&p, Hook::Drops).is_empty());
    assert_eq!(programs(&p, Hook::TwSegment), [program::TW_SEGMENT_FEXIT]);
    let f = features(&p, &all_first(&p));
    assert_eq!(
        lost(&f),
        [
            Feature::DropReasons,
            Feature::PawsEvidence,
            Feature::ConntrackLifetimes
        ]
    );
    assert!(f.has(Feature::TimeWait) && f.has(Feature::SynRecv) && f.has(Feature::OrphanFin));
    let transitions = &f.0[0];
    assert!(
        transitions.detail.contains("keyed by address"),
        "{transitions:?}"
    );
}

#[test]
fn stock_kernels_report_socket_deaths_by_their_destructors() {
    for k in [K::V5_10, K::V6_1, K::V6_12, K::V6_16, K::V7_3] {
        let p = plan(&facts(k)).unwrap();
        let at = |h: Hook| p.steps.iter().position(|s| s.hook == h);
        let free = at(Hook::SlabFree).unwrap();
        for h in [
            Hook::TwDestructor,
            Hook::ReqDestructor,
            Hook::Req6Destructor,
        ] {
            // The loader decides the slab hook's part from the destructors attached before.
            assert!(at(h).unwrap() < free, "{h:?} after the slab hook");
        }
        let out = all_first(&p);
        assert!(slab_free_waits(covered(&out)));
        let f = features(&p, &out);
        assert_eq!(detail(&f, Feature::TimeWait), "fentry/tcp_twsk_destructor");
        assert_eq!(
            detail(&f, Feature::SynRecv),
            "fentry/tcp_v4_reqsk_destructor + fentry/tcp_v6_reqsk_destructor"
        );
        if k != K::V5_10 {
            assert!(
                detail(&f, Feature::ConntrackLifetimes).contains("(both attached once"),
                "{f:?}"
            );
        }
    }
}

#[test]
fn without_fentry_the_slab_hook_reports_every_death() {
    let p = plan(&facts(K::V6_12)).unwrap();
    let mut out = all_first(&p);
    refuse_fentry(&p, &mut out);
    assert_eq!(covered(&out), 0);
    assert!(!slab_free_waits(covered(&out)));
    let f = features(&p, &out);
    assert_eq!(detail(&f, Feature::TimeWait), "tp_btf/kmem_cache_free");
    assert_eq!(detail(&f, Feature::SynRecv), "tp_btf/kmem_cache_free");
    assert!(detail(&f, Feature::ConntrackLifetimes).contains("(the allocations attached"));
    assert_eq!(lost(&f), [Feature::PawsEvidence]);
}

#[test]
fn one_refused_destructor_leaves_its_deaths_to_the_slab_hook() {
    let p = plan(&facts(K::V6_16)).unwrap();
    let mut out = all_first(&p);
    let v6 = out
        .iter_mut()
        .find(|o| o.hook == Hook::Req6Destructor)
        .unwrap();
    v6.loaded = None;
    v6.refused = vec![(program::REQ6_DESTRUCTOR, "Invalid argument".into())];
    assert_eq!(covered(&out), destructor::TIMEWAIT | destructor::REQUEST_V4);
    assert!(!slab_free_waits(covered(&out)));
    let f = features(&p, &out);
    assert_eq!(
        detail(&f, Feature::SynRecv),
        "fentry/tcp_v4_reqsk_destructor + tp_btf/kmem_cache_free"
    );
    // Without the slab hook too, the loss names the slab hook's refusal.
    let free = out.iter_mut().find(|o| o.hook == Hook::SlabFree).unwrap();
    free.loaded = None;
    free.refused = vec![(program::SLAB_FREE, "invalid bpf_context access".into())];
    let f = features(&p, &out);
    assert!(f.has(Feature::TimeWait));
    assert!(!f.has(Feature::SynRecv));
    assert!(!f.has(Feature::ConntrackLifetimes));
}

#[test]
fn a_refused_slab_variant_falls_back_and_a_lost_one_says_why() {
    let p = plan(&facts(K::V6_1)).unwrap();
    let mut out = all_first(&p);
    refuse_fentry(&p, &mut out);
    for o in out
        .iter_mut()
        .filter(|o| matches!(o.hook, Hook::SlabAlloc | Hook::SlabFree))
    {
        let step = p.steps.iter().find(|s| s.hook == o.hook).unwrap();
        o.refused = vec![(
            step.variants[0].program,
            "invalid bpf_context access".into(),
        )];
        o.loaded = step.variants.get(1).map(|v| (*v, true));
    }
    let f = features(&p, &out);
    assert!(f.has(Feature::TimeWait));
    let tw = f.0.iter().find(|s| s.feature == Feature::TimeWait).unwrap();
    assert!(tw.detail.starts_with("fentry/kmem_cache_free"), "{tw:?}");
    assert!(!f.has(Feature::ConntrackLifetimes));

    for o in out.iter_mut().filter(|o| o.hook == Hook::SlabFree) {
        o.loaded = None;
    }
    let f = features(&p, &out);
    assert!(!f.has(Feature::TimeWait) && !f.has(Feature::SynRecv));
    assert!(
        f.lost_lines()[0].contains("the kernel refused slab_free (invalid bpf_context access)"),
        "{:?}",
        f.lost_lines()
    );
}

#[test]
fn missing_twins_and_missing_basics() {
    let p = plan(&facts(K::V6_16)).unwrap();
    let mut out = all_first(&p);
    out[0].loaded = Some((out[0].loaded.unwrap().0, false));
    let f = features(&p, &out);
    assert_eq!(lost(&f), [Feature::NestedEvents]);

    let mut none = facts(K::V6_16);
    none.tracepoints.remove(tp::SET_STATE);
    assert!(plan(&none).unwrap_err().contains("inet_sock_set_state"));

    let mut old = facts(K::V6_16);
    old.ringbuf = false;
    assert!(plan(&old).unwrap_err().contains("5.10"));

    let mut blocked = facts(K::V6_16);
    blocked.conntrack_blocked = Some("no __nf_conntrack_alloc in /proc/kallsyms".into());
    let p = plan(&blocked).unwrap();
    let f = features(&p, &all_first(&p));
    assert_eq!(lost(&f), [Feature::ConntrackLifetimes]);
    assert!(f.lost_lines()[0].contains("kallsyms"));
}

#[test]
fn this_kernels_btf_gives_facts_the_plan_can_use() {
    let Ok(btf) = Btf::from_file(crate::btf::VMLINUX) else {
        return; // no BTF on this build host; the namespace tests load the real thing
    };
    let f = KernelFacts::from_btf(&btf);
    assert!(f.tracepoints.contains_key(tp::SET_STATE), "{f:?}");
    assert!(f.ringbuf && f.cookie_helper, "{f:?}");
    assert!(plan(&f).is_ok());
}
