use std::net::{IpAddr, Ipv4Addr};

use netwatch_common::state;

use super::*;
use crate::core::event::{Family, Transition};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn tr(at: u64, old: u8, new: u8, dwell: Option<u64>) -> Transition {
    Transition {
        mono_ns: at,
        sock_id: 1,
        family: Family::Ipv4,
        saddr: ip(1),
        sport: 80,
        daddr: ip(2),
        dport: 40_000,
        old,
        new,
        dwell_ns: dwell,
        netns: 7,
        ..Transition::example()
    }
}

fn death(at: u64, dwell: u64) -> Transition {
    Transition {
        timewait: true,
        ..tr(at, state::TIME_WAIT, state::CLOSE, Some(dwell))
    }
}

fn request_end(at: u64, dwell: u64) -> Transition {
    Transition {
        synack_retransmits: Some(0),
        ..tr(at, state::SYN_RECV, state::ESTABLISHED, Some(dwell))
    }
}

fn tuple() -> Tuple {
    Tuple::of(&tr(0, 0, 0, None))
}

#[test]
fn a_full_sixty_seconds_is_not_early_and_unknown_dwell_is_not_judged() {
    let mut c = Classifier::default();
    c.transition(&death(61 * S, 60 * S + 3 * MS));
    c.transition(&Transition {
        dwell_ns: None,
        ..death(62 * S, 0)
    });
    c.finish();
    assert_eq!(c.counts(), EarlyEnds::default());
}

#[test]
fn a_request_socket_born_at_the_death_is_syn_reuse_even_when_accepted_later() {
    let mut c = Classifier::default();
    c.transition(&death(10 * S, 500 * MS));
    assert_eq!(c.counts().pending, 1);
    // Accepted 1.5 s later; its SYN arrived 1 ms after the death.
    c.transition(&request_end(11 * S + 500 * MS, 1_499 * MS));
    assert_eq!(
        c.counts(),
        EarlyEnds {
            syn_reuse: 1,
            ..Default::default()
        }
    );
}

#[test]
fn a_connect_just_before_the_death_is_tw_reuse() {
    let mut c = Classifier::default();
    c.transition(&tr(10 * S, state::CLOSE, state::SYN_SENT, None));
    c.transition(&death(10 * S + 20_000, 2 * S));
    c.finish();
    assert_eq!(c.counts().tw_reuse, 1);
    assert_eq!(c.counts().total(), 1);
}

#[test]
fn an_unbound_connect_shows_its_reused_port_when_it_leaves_syn_sent() {
    let mut c = Classifier::default();
    // connect() entered SYN_SENT with port 0, then took the TIME_WAIT's port.
    c.transition(&Transition {
        sport: 0,
        ..tr(10 * S, state::CLOSE, state::SYN_SENT, None)
    });
    assert!(c.seen.is_empty(), "port 0 is no evidence: {:?}", c.seen);
    c.transition(&death(10 * S + 30_000, 2 * S));
    assert_eq!(c.counts().pending, 1);
    // Established 1 ms later: its SYN_SENT began at the death.
    c.transition(&tr(
        10 * S + MS,
        state::SYN_SENT,
        state::ESTABLISHED,
        Some(MS - 10_000),
    ));
    assert_eq!(c.counts().tw_reuse, 1);
    assert_eq!(c.counts().pending, 0);
}

#[test]
fn a_reset_just_after_the_death_is_rst() {
    let mut c = Classifier::default();
    c.transition(&death(10 * S, 3 * S));
    c.reset(tuple(), 10 * S + 5_000);
    assert_eq!(c.counts().rst, 1);
    assert_eq!(c.counts().pending, 0);
}

#[test]
fn evidence_too_far_from_the_death_explains_nothing() {
    let mut c = Classifier::default();
    c.transition(&tr(10 * S, state::CLOSE, state::SYN_SENT, None));
    c.transition(&death(10 * S + 300 * MS, S));
    c.reset(tuple(), 10 * S + 600 * MS);
    // Unrelated records move the clock past the hold time.
    c.transition(&tr(13 * S, state::ESTABLISHED, state::FIN_WAIT1, None));
    assert_eq!(
        c.counts(),
        EarlyEnds {
            other: 1,
            ..Default::default()
        }
    );
}

#[test]
fn evidence_on_another_tuple_or_namespace_explains_nothing() {
    let mut c = Classifier::default();
    c.transition(&death(10 * S, S));
    let mut other_ns = tuple();
    other_ns.netns = 8;
    c.reset(other_ns, 10 * S);
    let mut other_port = tuple();
    other_port.rport = 40_001;
    c.reset(other_port, 10 * S);
    c.finish();
    assert_eq!(c.counts().other, 1);
    assert_eq!(c.counts().rst, 0);
}

#[test]
fn pending_deaths_are_bounded() {
    let mut c = Classifier::default();
    for i in 0..(MAX_PENDING as u64 + 10) {
        let mut d = death(10 * S, S);
        d.dport = (i % 60_000) as u16;
        d.daddr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i / 60_000) as u32));
        c.transition(&d);
    }
    let n = c.counts();
    assert_eq!(n.pending, MAX_PENDING as u64);
    assert_eq!(n.other, 10);
}

#[test]
fn causes_have_stable_names() {
    let names: Vec<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["syn_reuse", "tw_reuse", "rst", "other"]);
    for c in Cause::ALL {
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::Value::from(c.name())
        );
    }
}
