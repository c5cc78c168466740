//! The whole dashboard drawn into an in-memory terminal at the sizes engineers have: the
//! text is what they would read, so that is what is asserted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use netwatch_common::state;
use ratatui::{backend::TestBackend, buffer::Buffer, style::Color, Terminal};

use super::dashboard::{digit_for, STATES};
use super::{render, Action, Dashboard};
use crate::core::event::Owner;
use crate::core::signals::tests::one_of_each;
use crate::core::snapshot::{Bucket, Peak, Percentiles, Snapshot, Talker};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// A server piling up TIME_WAIT towards one backend, with a CLOSE_WAIT leak on port 8080.
fn incident(lost: u64) -> Snapshot {
    let mut snap = Snapshot::empty();
    snap.mono_ns = 3_600 * S;
    snap.interval_ns = S;
    snap.transitions = 1_234_567;
    snap.lost = lost;

    let est = &mut snap.states[state::ESTABLISHED as usize];
    est.now = 412;
    est.entered = 950;
    est.dwell = Percentiles {
        count: 90_000,
        p50: 12 * MS,
        p90: 80 * MS,
        p99: 950 * MS,
        max: 30 * S,
    };

    let tw = &mut snap.states[state::TIME_WAIT as usize];
    tw.now = 28_000;
    tw.peak = Peak {
        max: 31_000,
        at: 3_000 * S,
    };
    tw.entered = 466;
    tw.dwell = Percentiles {
        count: 51_000,
        p50: 60_500 * MS,
        p90: 61_200 * MS,
        p99: 61_900 * MS,
        max: 62_300 * MS,
    };
    tw.age = Percentiles {
        count: 28_000,
        p50: 30 * S,
        p90: 54 * S,
        p99: 59_500 * MS,
        max: 60_100 * MS,
    };
    tw.buckets = vec![
        Bucket {
            upper_ns: 1 << 33,
            count: 120,
        },
        Bucket {
            upper_ns: 1 << 34,
            count: 300,
        },
        Bucket {
            upper_ns: 1 << 35,
            count: 1_580,
        },
        Bucket {
            upper_ns: 1 << 36,
            count: 49_000,
        },
    ];
    // A FIN_WAIT2 pile-up that is over: 0 now, its peak kept.
    snap.states[state::FIN_WAIT2 as usize].peak = Peak {
        max: 200,
        at: 1_800 * S,
    };
    snap.states[state::CLOSE_WAIT as usize].peak = Peak {
        max: 400,
        at: 3_590 * S,
    };
    snap.top_processes[state::CLOSE_WAIT as usize] = vec![Talker {
        key: Owner {
            pid: 6345,
            comm: "python3".into(),
            container: None,
        },
        count: 310,
    }];
    snap.top_remotes[state::TIME_WAIT as usize] = vec![
        Talker {
            key: IpAddr::V4(Ipv4Addr::new(10, 20, 0, 7)),
            count: 20_000,
        },
        Talker {
            key: IpAddr::V4(Ipv4Addr::new(10, 20, 0, 8)),
            count: 6_500,
        },
        Talker {
            key: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53)),
            count: 1_500,
        },
    ];
    snap.top_service_ports[state::TIME_WAIT as usize] = vec![Talker {
        key: 443,
        count: 27_000,
    }];
    // Each client socket has a port of its own.
    snap.top_local_ports[state::TIME_WAIT as usize] = (0..5)
        .map(|i| Talker {
            key: 40_000 + i,
            count: 1,
        })
        .collect();

    let cw = &mut snap.states[state::CLOSE_WAIT as usize];
    cw.now = 310;
    cw.entered = 2;
    cw.age = Percentiles {
        count: 310,
        p50: 1_800 * S,
        p90: 3_300 * S,
        p99: 3_550 * S,
        max: 3_590 * S,
    };
    let leak = vec![Talker {
        key: 8080,
        count: 305,
    }];
    snap.top_service_ports[state::CLOSE_WAIT as usize] = leak.clone();
    snap.top_local_ports[state::CLOSE_WAIT as usize] = leak;

    snap.states[state::LISTEN as usize].now = 6;
    snap
}

fn press(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// The dashboard as the engineer gets it: by keys, the only way the view changes.
fn showing(s: u8) -> Dashboard {
    let mut dash = Dashboard::new();
    let i = STATES.iter().position(|&x| x == s).unwrap();
    dash.handle_key(press(KeyCode::Char(digit_for(i))));
    assert_eq!(dash.selected_state(), s);
    dash
}

fn draw(w: u16, h: u16, dash: &Dashboard, snap: &Snapshot) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| render(f, dash, snap)).unwrap();
    terminal.backend().buffer().clone()
}

fn text(buf: &Buffer) -> String {
    let area = buf.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn screen(w: u16, h: u16, dash: &Dashboard, snap: &Snapshot) -> String {
    text(&draw(w, h, dash, snap))
}

#[test]
fn ssh_window_shows_every_state_the_pile_up_and_the_key_help() {
    let out = screen(80, 24, &Dashboard::new(), &incident(0));
    for s in STATES {
        assert!(
            out.contains(state::name(s)),
            "{} missing:\n{out}",
            state::name(s)
        );
    }
    assert!(out.contains("28000"), "{out}");
    assert!(out.contains("466.0"), "entries/s of TIME_WAIT:\n{out}");
    assert!(out.contains("TIME_WAIT dwell (completed)"), "{out}");
    assert!(
        out.contains("60.5s") && out.contains("61.9s"),
        "p50/p99:\n{out}"
    );
    assert!(out.contains("TIME_WAIT ages (still open)"), "{out}");
    assert!(out.contains("TIME_WAIT by remote address"), "{out}");
    assert!(out.contains("10.20.0.7") && out.contains("20000"), "{out}");
    assert!(out.contains("71%"), "share of the top remote:\n{out}");
    assert!(out.contains("transitions 1234567"), "{out}");
    assert!(out.contains("lost 0"), "{out}");
    assert!(!out.contains("LOST"), "{out}");
    for help in ["q quit", "Tab state", "b breakdown"] {
        assert!(out.contains(help), "{help} missing:\n{out}");
    }
    // Four buckets fit, so each shows with its bound.
    assert!(out.contains("<=68.7s"), "{out}");
}

#[test]
fn lost_records_are_loud() {
    let buf = draw(80, 24, &Dashboard::new(), &incident(5));
    let out = text(&buf);
    assert!(out.contains("LOST 5 records"), "{out}");
    let (y, line) = out
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("LOST"))
        .unwrap();
    let x = line.find("LOST").unwrap() as u16;
    assert_eq!(buf[(x, y as u16)].bg, Color::Red);
}

#[test]
fn selected_state_is_highlighted_and_drives_the_detail_panels() {
    let mut dash = showing(state::CLOSE_WAIT);
    dash.handle_key(press(KeyCode::Char('b')));
    let out = screen(80, 24, &dash, &incident(0));
    // Who holds the leak: the process, as `ss -p` would name it.
    assert!(out.contains("CLOSE_WAIT by process"), "{out}");
    assert!(out.contains("python3[6345]      310  100%"), "{out}");
    // Its peak and when, in the panel of the selected state.
    assert!(out.contains("peak 400 reached 10.0s ago"), "{out}");
    dash.handle_key(press(KeyCode::Char('b')));
    let out = screen(80, 24, &dash, &incident(0));
    assert!(out.contains(">7 CLOSE_WAIT"), "{out}");
    assert!(out.contains("CLOSE_WAIT ages (still open)"), "{out}");
    // An hour-old CLOSE_WAIT: the leak this panel is for.
    assert!(out.contains("3590.0s"), "{out}");
    assert!(out.contains("no completed dwells yet"), "{out}");
    assert!(out.contains("CLOSE_WAIT by service port"), "{out}");
    assert!(out.contains("8080"), "{out}");
}

#[test]
fn keys_drive_what_is_drawn() {
    let mut dash = Dashboard::new();
    let snap = incident(0);
    assert_eq!(dash.handle_key(press(KeyCode::Right)), Action::None);
    assert!(screen(80, 24, &dash, &snap).contains("CLOSE_WAIT dwell"));
    dash.handle_key(press(KeyCode::Left));
    dash.handle_key(press(KeyCode::Char('b')));
    dash.handle_key(press(KeyCode::Char('b')));
    let out = screen(80, 24, &dash, &snap);
    assert!(out.contains("TIME_WAIT by service port"), "{out}");
    assert!(out.contains("SERVICE") && out.contains("443"), "{out}");
    // The clients' own ports are another view: one socket each.
    dash.handle_key(press(KeyCode::Char('b')));
    let out = screen(80, 24, &dash, &snap);
    assert!(out.contains("TIME_WAIT by local port"), "{out}");
    assert!(out.contains("40004"), "{out}");
    assert_eq!(dash.handle_key(press(KeyCode::Char('q'))), Action::Quit);
}

/// The incident's alerts as the engine raised them, recorded as the tracer does: a port
/// exhaustion three intervals running (the last one 2 s before the snapshot), a listen
/// overflow and a PAWS reject once.
fn with_alerts(mut dash: Dashboard, snap: &Snapshot) -> Dashboard {
    let now = snap.mono_ns;
    let all = one_of_each();
    let of = |kind: &str| all.iter().find(|a| a.kind().name == kind).unwrap();
    for ago in [62, 30, 2] {
        dash.alerts
            .record_alert(of("port_exhaustion"), now - ago * S, None);
    }
    dash.alerts
        .record_alert(of("listen_overflow"), now - 5 * S, None);
    dash.alerts
        .record_alert(of("paws_reject"), now - 40 * S, None);
    dash
}

#[test]
fn the_banner_keeps_the_latest_alerts_and_says_how_many_are_hidden() {
    let snap = incident(0);
    let dash = with_alerts(Dashboard::new(), &snap);
    let out = screen(80, 24, &dash, &snap);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("! CRIT Ephemeral ports exhausted 10.0.0.2:5774 x3, last 2.000s ago"),
        "{out}"
    );
    assert!(lines[1].contains("Listen queue overflow netns 9"), "{out}");
    assert!(lines[1].ends_with("(+1 more: a)"), "{out}");
    assert!(
        out.contains("alerts 3") && out.contains("a alerts"),
        "{out}"
    );
    // A refresh with no new alert keeps them.
    let later = Snapshot {
        mono_ns: snap.mono_ns + 10 * S,
        ..snap.clone()
    };
    assert!(screen(80, 24, &dash, &later).contains("x3, last 12.0s ago"));
}

#[test]
fn the_alerts_pane_shows_history_evidence_and_advice_at_80x24() {
    let snap = incident(0);
    let mut dash = with_alerts(Dashboard::new(), &snap);
    dash.handle_key(press(KeyCode::Char('a')));
    let out = screen(80, 24, &dash, &snap);
    assert!(out.contains("Alerts (3)"), "{out}");
    let row = out.lines().find(|l| l.contains("10.0.0.2:5774")).unwrap();
    assert!(row.contains("CRIT") && row.contains(" 3 "), "{row}");
    assert!(row.contains("62.0s") && row.contains("2.000s"), "{row}");
    assert!(
        out.contains("Ephemeral ports exhausted"),
        "titles are whole:\n{out}"
    );
    assert!(out.contains("in all: 15 connect() failures"), "{out}");
    assert!(
        out.contains("appA[42]"),
        "the evidence names the process:\n{out}"
    );
    assert!(out.contains("what to change:"), "{out}");
    assert!(out.contains("ip_local_port_range"), "{out}");
    assert!(out.contains("a back to states"), "{out}");
    // The arrows pick another alert; its advice replaces the first one's.
    dash.handle_key(press(KeyCode::Down));
    let out = screen(80, 24, &dash, &snap);
    assert!(out.contains("somaxconn"), "{out}");
    assert!(!out.contains("ip_local_port_range"), "{out}");
}

#[test]
fn the_alerts_pane_scrolls_to_the_selected_row_and_says_when_empty() {
    let snap = incident(0);
    let mut dash = Dashboard::new();
    dash.handle_key(press(KeyCode::Char('a')));
    assert!(screen(80, 24, &dash, &snap).contains("no alerts so far"));
    let mut m = serde_json::Map::new();
    for port in 1..=30u16 {
        m.insert("daddr".into(), "10.0.0.2".into());
        m.insert("dport".into(), port.into());
        m.insert("failures".into(), 1.into());
        dash.alerts.record(
            "port_exhaustion",
            &|f| m.get(f).cloned(),
            &format!("towards port {port}"),
            port as u64,
        );
    }
    for _ in 0..29 {
        dash.handle_key(press(KeyCode::Down));
    }
    let out = screen(80, 24, &dash, &snap);
    assert!(out.contains(">CRIT"), "{out}");
    assert!(
        out.contains("towards port 1"),
        "the oldest is last, and selected:\n{out}"
    );
    for (w, h) in [(20, 5), (40, 12), (200, 50)] {
        screen(w, h, &dash, &snap);
    }
}

#[test]
fn big_window_shows_gauges_and_more_rows() {
    let out = screen(120, 40, &Dashboard::new(), &incident(5));
    assert!(out.contains("28000") && out.contains("61.9s"), "{out}");
    assert!(out.contains("LOST 5 records"), "{out}");
    assert!(out.contains("2001:db8::53"), "{out}");
    let tw_row = out.lines().find(|l| l.contains("TIME_WAIT  ")).unwrap();
    assert!(tw_row.contains('█'), "gauge missing: {tw_row}");
}

#[test]
fn tiny_and_empty_never_panic() {
    let dash = Dashboard::new();
    for (w, h) in [
        (0, 0),
        (1, 1),
        (10, 3),
        (20, 5),
        (40, 12),
        (79, 23),
        (200, 60),
    ] {
        for snap in [Snapshot::default(), Snapshot::empty(), incident(5)] {
            screen(w, h, &dash, &snap);
        }
    }
    let out = screen(40, 8, &dash, &incident(3));
    assert!(
        out.contains("LOST 3"),
        "the footer survives a tiny window:\n{out}"
    );
    let out = screen(80, 24, &dash, &Snapshot::empty());
    assert!(out.contains("no sockets in TIME_WAIT"), "{out}");
    assert!(out.contains("none open"), "{out}");
}

#[test]
fn breakdown_hint_is_dropped_rather_than_drawn_over_a_long_title() {
    let mut dash = showing(state::ESTABLISHED);
    let out = screen(80, 24, &dash, &incident(0));
    assert!(out.contains("ESTABLISHED by remote address ──"), "{out}");
    assert!(!out.contains("b: process"), "{out}");
    dash.handle_key(press(KeyCode::Char('6')));
    assert!(screen(120, 24, &dash, &incident(0)).contains("b: process"));
    dash.handle_key(press(KeyCode::Char('b')));
    assert!(screen(120, 24, &dash, &incident(0)).contains("b: service port"));
}

#[test]
fn snapshot_80x24() {
    insta::assert_snapshot!(screen(80, 24, &Dashboard::new(), &incident(5)));
}

#[test]
fn snapshot_120x40() {
    let snap = incident(0);
    let dash = with_alerts(Dashboard::new(), &snap);
    insta::assert_snapshot!(screen(120, 40, &dash, &snap));
}

/// The incident's alerts pane, opened as the engineer opens it, at a terminal size.
fn alerts_pane(w: u16, h: u16) -> String {
    let snap = incident(0);
    let mut dash = with_alerts(Dashboard::new(), &snap);
    dash.handle_key(press(KeyCode::Char('a')));
    screen(w, h, &dash, &snap)
}

#[test]
fn snapshot_alerts_pane_80x24() {
    insta::assert_snapshot!(alerts_pane(80, 24));
}

#[test]
fn snapshot_alerts_pane_200x50() {
    insta::assert_snapshot!(alerts_pane(200, 50));
}

#[test]
fn snapshot_banner_80x24() {
    let snap = incident(0);
    let dash = with_alerts(Dashboard::new(), &snap);
    insta::assert_snapshot!(screen(80, 24, &dash, &snap));
}
