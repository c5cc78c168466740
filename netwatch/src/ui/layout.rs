//! Where each panel goes for a given terminal size. Pure arithmetic on rectangles, so the
//! way the dashboard degrades on a small ssh window is tested without drawing anything.

use ratatui::layout::Rect;

/// Rows the states table wants: borders, header, one row per state.
pub const STATES_HEIGHT: u16 = 2 + 1 + super::dashboard::STATES.len() as u16;
/// Below this a panel shows too little to be worth the rows it takes from others.
const MIN_PANEL: u16 = 4;
/// Two columns need room for the states table beside a readable IPv6 address.
const TWO_COLUMNS_MIN_WIDTH: u16 = 72;

/// Panel rectangles; `None` means the panel is hidden at this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub alerts: Option<Rect>,
    pub states: Option<Rect>,
    pub dwell: Option<Rect>,
    pub age: Option<Rect>,
    pub talkers: Option<Rect>,
    /// Status (and, when there is room, key help on its own line).
    pub footer: Rect,
}

/// Alert lines worth showing at a height: enough to be noticed, never the whole screen.
pub fn alert_rows(height: u16, alerts: usize) -> u16 {
    let cap = match height {
        h if h >= 30 => 4,
        h if h >= 16 => 2,
        _ => 1,
    };
    (alerts.min(cap as usize)) as u16
}

/// Two footer lines (status, then key help) once the panels can spare the row.
pub fn footer_rows(height: u16) -> u16 {
    if height >= 16 {
        2
    } else {
        1
    }
}

/// The screen's three bands: the alert banner (None without alerts), the body, the footer.
pub fn bands(area: Rect, alerts: usize) -> (Option<Rect>, Rect, Rect) {
    let footer_h = footer_rows(area.height).min(area.height);
    let alerts_h = alert_rows(area.height, alerts).min(area.height - footer_h);
    let body_h = area.height - footer_h - alerts_h;

    let alerts_rect = (alerts_h > 0).then_some(Rect {
        height: alerts_h,
        ..area
    });
    let body = Rect {
        y: area.y + alerts_h,
        height: body_h,
        ..area
    };
    let footer = Rect {
        y: area.y + alerts_h + body_h,
        height: footer_h,
        ..area
    };
    (alerts_rect, body, footer)
}

/// The alerts pane: the list of alerts on top (its rows, at most a third of the body once
/// the detail has room), the selected one's evidence and advice below.
pub fn alerts_pane(body: Rect, entries: usize) -> (Rect, Rect) {
    // Borders and header around the rows; the detail keeps at least 8 rows.
    let want = entries as u16 + 3;
    let list_h = want
        .min(body.height.saturating_sub(8))
        .max(body.height.min(4));
    cut_rows(body, list_h)
}

pub fn split(area: Rect, alerts: usize) -> Areas {
    let (alerts_rect, body, footer) = bands(area, alerts);

    let mut areas = Areas {
        alerts: alerts_rect,
        states: None,
        dwell: None,
        age: None,
        talkers: None,
        footer,
    };
    if body.height == 0 || body.width == 0 {
        return areas;
    }
    if body.width >= TWO_COLUMNS_MIN_WIDTH && body.height >= 12 {
        two_columns(body, &mut areas);
    } else {
        one_column(body, &mut areas);
    }
    areas
}

/// States and the ages of open sockets on the left (both short lists of numbers); the
/// histogram and the talkers, which want width, on the right.
fn two_columns(body: Rect, areas: &mut Areas) {
    // The states table (key, name, now, peak, rate) needs 40 columns with its borders.
    let left_w = (body.width * 2 / 5).clamp(40, 52);
    let (left, right) = cut_columns(body, left_w);

    let (states, age) = cut_rows(left, STATES_HEIGHT.min(left.height));
    areas.states = Some(states);
    areas.age = (age.height >= MIN_PANEL).then_some(age);

    let dwell_h = (right.height * 55 / 100).max(MIN_PANEL + 2);
    if right.height >= dwell_h + MIN_PANEL {
        let (dwell, talkers) = cut_rows(right, dwell_h);
        areas.dwell = Some(dwell);
        areas.talkers = Some(talkers);
    } else {
        areas.dwell = Some(right);
    }
}

/// A narrow window stacks the panels and drops them from the bottom, the detail panels in
/// the order an on-call engineer reaches for them: how long, who, then what is stuck.
fn one_column(body: Rect, areas: &mut Areas) {
    let (states, mut rest) = cut_rows(body, STATES_HEIGHT.min(body.height));
    areas.states = Some(states);

    let mut heights = [0u16; 3];
    let mut left = rest.height;
    for h in &mut heights {
        if left >= MIN_PANEL {
            *h = MIN_PANEL;
            left -= MIN_PANEL;
        }
    }
    // Spare rows go to the histogram and the talkers, the two that grow usefully.
    heights[0] += left - left / 2;
    if heights[1] > 0 {
        heights[1] += left / 2;
    } else {
        heights[0] += left / 2;
    }

    let mut take = |h: u16| {
        if h == 0 {
            return None;
        }
        let (top, bottom) = cut_rows(rest, h);
        rest = bottom;
        Some(top)
    };
    areas.dwell = take(heights[0]);
    areas.talkers = take(heights[1]);
    areas.age = take(heights[2]);
}

fn cut_rows(r: Rect, top: u16) -> (Rect, Rect) {
    let top = top.min(r.height);
    (
        Rect { height: top, ..r },
        Rect {
            y: r.y + top,
            height: r.height - top,
            ..r
        },
    )
}

fn cut_columns(r: Rect, left: u16) -> (Rect, Rect) {
    let left = left.min(r.width);
    (
        Rect { width: left, ..r },
        Rect {
            x: r.x + left,
            width: r.width - left,
            ..r
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: u16, h: u16) -> Rect {
        Rect::new(0, 0, w, h)
    }

    fn all(a: &Areas) -> Vec<Rect> {
        [a.alerts, a.states, a.dwell, a.age, a.talkers]
            .into_iter()
            .flatten()
            .chain([a.footer])
            .collect()
    }

    /// Every panel inside the screen and none overlapping, at every size a terminal can be.
    #[test]
    fn panels_stay_inside_and_apart_at_every_size() {
        for w in 0..=130 {
            for h in 0..=45 {
                for alerts in [0, 1, 9] {
                    let screen = rect(w, h);
                    let areas = split(screen, alerts);
                    let rects = all(&areas);
                    for (i, a) in rects.iter().enumerate() {
                        assert_eq!(a.intersection(screen), *a, "{w}x{h}: {a:?} outside");
                        for b in &rects[i + 1..] {
                            assert!(
                                !a.intersects(*b) || a.area() == 0 || b.area() == 0,
                                "{w}x{h}: {a:?} overlaps {b:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_80x24_ssh_window_gets_every_panel() {
        let a = split(rect(80, 24), 1);
        assert_eq!(a.alerts.unwrap().height, 1);
        assert_eq!(a.footer.height, 2);
        assert_eq!(a.states.unwrap().height, STATES_HEIGHT);
        assert!(a.dwell.unwrap().height >= 10, "{a:?}");
        assert!(a.age.unwrap().height >= 7, "{a:?}");
        assert!(a.talkers.unwrap().height >= 6, "{a:?}");
        // The two columns share the width exactly.
        assert_eq!(a.states.unwrap().width + a.dwell.unwrap().width, 80);
    }

    #[test]
    fn small_windows_hide_detail_panels_but_keep_states_and_footer() {
        let a = split(rect(60, 16), 0);
        assert!(a.states.is_some());
        assert!(a.age.is_none(), "{a:?}");
        assert_eq!(a.footer.height, 2);

        let a = split(rect(40, 8), 3);
        assert_eq!(a.footer.height, 1);
        assert_eq!(a.alerts.unwrap().height, 1);
        assert_eq!(a.states.unwrap().height, 6);
        assert!(a.dwell.is_none() && a.age.is_none() && a.talkers.is_none());
    }

    #[test]
    fn the_alerts_pane_leaves_room_for_the_detail() {
        let (list, detail) = alerts_pane(rect(80, 20), 3);
        assert_eq!((list.height, detail.height), (6, 14));
        let (list, detail) = alerts_pane(rect(80, 20), 40);
        assert_eq!((list.height, detail.height), (12, 8));
        let (list, detail) = alerts_pane(rect(80, 5), 40);
        assert_eq!((list.height, detail.height), (4, 1));
        let (list, detail) = alerts_pane(rect(80, 0), 1);
        assert_eq!((list.height, detail.height), (0, 0));
    }

    #[test]
    fn alerts_are_capped_by_height() {
        assert_eq!(alert_rows(24, 0), 0);
        assert_eq!(alert_rows(24, 9), 2);
        assert_eq!(alert_rows(40, 9), 4);
        assert_eq!(alert_rows(10, 9), 1);
    }
}
