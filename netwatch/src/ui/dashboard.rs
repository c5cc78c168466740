//! What the on-call engineer is looking at, and how keys change it. Kept apart from the
//! renderer so the view is plain data that tests can set up and step through.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use netwatch_common::state;

use crate::core::alert_history::AlertHistory;

/// The states worth a panel, in the order a connection lives through them (then the
/// listener), which is also the order of the number keys `1`..`9`, `0`. CLOSE,
/// NEW_SYN_RECV and BOUND_INACTIVE are left out: sockets do not sit in them in numbers that
/// tell an incident.
pub const STATES: [u8; 10] = [
    state::ESTABLISHED,
    state::SYN_SENT,
    state::SYN_RECV,
    state::FIN_WAIT1,
    state::FIN_WAIT2,
    state::TIME_WAIT,
    state::CLOSE_WAIT,
    state::LAST_ACK,
    state::CLOSING,
    state::LISTEN,
];

/// Which key the top-talkers panel groups the selected state's sockets by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakdown {
    /// Which service they belong to (the listener's port, whichever side the socket is
    /// on): finds the leaking server, or the backend clients pile up towards.
    ServicePort,
    /// This end's own port, as `ss` shows it (random for clients).
    LocalPort,
    /// Which peer they are with: finds the backend or the NAT everything goes through.
    RemoteAddr,
    /// Which process holds them (`ss -p`'s answer): finds the leaking program itself.
    Process,
    /// Which network namespace they live in: finds the container among many.
    Namespace,
}

impl Breakdown {
    pub fn label(self) -> &'static str {
        match self {
            Breakdown::ServicePort => "service port",
            Breakdown::LocalPort => "local port",
            Breakdown::RemoteAddr => "remote address",
            Breakdown::Process => "process",
            Breakdown::Namespace => "namespace",
        }
    }

    /// What `b` switches to, also named in the talkers panel so the key explains itself.
    pub fn toggled(self) -> Self {
        match self {
            Breakdown::ServicePort => Breakdown::LocalPort,
            Breakdown::LocalPort => Breakdown::Namespace,
            Breakdown::RemoteAddr => Breakdown::Process,
            Breakdown::Process => Breakdown::ServicePort,
            Breakdown::Namespace => Breakdown::RemoteAddr,
        }
    }
}

/// What the event loop should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dashboard {
    /// Index into [`STATES`], so cycling can never land on a state without a panel.
    selected: usize,
    breakdown: Breakdown,
    /// Every alert of the trace so far, by kind and subject: the banner shows the latest,
    /// the alerts pane all of them. The caller records into it; nothing here forgets.
    pub alerts: AlertHistory,
    /// Whether the alerts pane stands in for the state panels (`a`).
    alerts_pane: bool,
    /// The row selected in the alerts pane (its detail is shown), into
    /// [`AlertHistory::by_severity`]; clamped when drawn.
    alert_row: usize,
}

impl Default for Dashboard {
    /// TIME_WAIT by remote address: the pile-up that most often brings someone to this tool
    /// (outbound connections to one backend exhausting ephemeral ports).
    fn default() -> Self {
        Self {
            selected: STATES
                .iter()
                .position(|&s| s == state::TIME_WAIT)
                .unwrap_or(0),
            breakdown: Breakdown::RemoteAddr,
            alerts: AlertHistory::default(),
            alerts_pane: false,
            alert_row: 0,
        }
    }
}

impl Dashboard {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kernel state number the detail panels show.
    pub fn selected_state(&self) -> u8 {
        STATES[self.selected]
    }

    pub fn breakdown(&self) -> Breakdown {
        self.breakdown
    }

    pub fn alerts_pane(&self) -> bool {
        self.alerts_pane
    }

    /// The selected row of the alerts pane, within the rows there are.
    pub fn alert_row(&self) -> usize {
        self.alert_row.min(self.alerts.len().saturating_sub(1))
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Action {
        // Terminals that report releases too (Windows, the kitty protocol) would otherwise
        // move the selection twice per press; a held key's repeats still move it.
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Right | KeyCode::Tab => self.step(1),
            KeyCode::Left | KeyCode::BackTab => self.step(STATES.len() - 1),
            KeyCode::Char('b') => self.breakdown = self.breakdown.toggled(),
            KeyCode::Char('a') => self.alerts_pane = !self.alerts_pane,
            KeyCode::Up | KeyCode::Char('k') if self.alerts_pane => {
                self.alert_row = self.alert_row().saturating_sub(1);
            }
            KeyCode::Down | KeyCode::Char('j') if self.alerts_pane => {
                self.alert_row = (self.alert_row() + 1).min(self.alerts.len().saturating_sub(1));
            }
            KeyCode::Char(c @ '0'..='9') => {
                // `0` is the tenth, as on the keyboard row.
                let digit = c as usize - '0' as usize;
                self.selected = (digit + STATES.len() - 1) % STATES.len();
            }
            _ => {}
        }
        Action::None
    }

    fn step(&mut self, by: usize) {
        self.selected = (self.selected + by) % STATES.len();
    }
}

/// The key that selects `STATES[index]`, as shown next to it.
pub fn digit_for(index: usize) -> char {
    char::from_digit(((index + 1) % 10) as u32, 10).unwrap_or(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn starts_on_time_wait_by_remote_address() {
        let dash = Dashboard::new();
        assert_eq!(dash.selected_state(), state::TIME_WAIT);
        assert_eq!(dash.breakdown(), Breakdown::RemoteAddr);
        assert!(dash.alerts.is_empty());
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let mut dash = Dashboard::new();
        assert_eq!(dash.handle_key(press(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(dash.handle_key(press(KeyCode::Esc)), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(dash.handle_key(ctrl_c), Action::Quit);
        assert_eq!(dash.handle_key(press(KeyCode::Char('c'))), Action::None);
    }

    #[test]
    fn right_and_tab_cycle_forward_through_every_state_and_wrap() {
        let mut dash = Dashboard::new();
        let start = dash.selected_state();
        let mut seen = vec![start];
        for i in 0..STATES.len() {
            let code = if i % 2 == 0 {
                KeyCode::Right
            } else {
                KeyCode::Tab
            };
            assert_eq!(dash.handle_key(press(code)), Action::None);
            seen.push(dash.selected_state());
        }
        assert_eq!(seen[1], state::CLOSE_WAIT);
        assert_eq!(*seen.last().unwrap(), start);
        let mut distinct = seen[..STATES.len()].to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), STATES.len());
    }

    #[test]
    fn left_and_backtab_cycle_backward_and_wrap() {
        let mut dash = Dashboard::new();
        dash.handle_key(press(KeyCode::Left));
        assert_eq!(dash.selected_state(), state::FIN_WAIT2);
        dash.handle_key(press(KeyCode::Char('1')));
        dash.handle_key(press(KeyCode::BackTab));
        assert_eq!(dash.selected_state(), state::LISTEN);
    }

    #[test]
    fn number_keys_pick_states_with_zero_as_tenth() {
        let mut dash = Dashboard::new();
        dash.handle_key(press(KeyCode::Char('1')));
        assert_eq!(dash.selected_state(), state::ESTABLISHED);
        dash.handle_key(press(KeyCode::Char('7')));
        assert_eq!(dash.selected_state(), state::CLOSE_WAIT);
        dash.handle_key(press(KeyCode::Char('0')));
        assert_eq!(dash.selected_state(), state::LISTEN);
        assert_eq!(digit_for(0), '1');
        assert_eq!(digit_for(9), '0');
    }

    #[test]
    fn b_cycles_through_every_breakdown() {
        let mut dash = Dashboard::new();
        for want in [
            Breakdown::Process,
            Breakdown::ServicePort,
            Breakdown::LocalPort,
            Breakdown::Namespace,
            Breakdown::RemoteAddr,
        ] {
            dash.handle_key(press(KeyCode::Char('b')));
            assert_eq!(dash.breakdown(), want);
        }
    }

    #[test]
    fn a_toggles_the_alerts_pane_and_arrows_move_within_it() {
        let mut dash = Dashboard::new();
        let mut m = serde_json::Map::new();
        for port in [80u16, 81, 82] {
            m.insert("daddr".into(), "10.0.0.2".into());
            m.insert("dport".into(), port.into());
            dash.alerts
                .record("port_exhaustion", &|f| m.get(f).cloned(), "x", 1);
        }
        dash.handle_key(press(KeyCode::Down));
        assert_eq!(
            dash.alert_row(),
            0,
            "arrows move nothing while the pane is closed"
        );
        dash.handle_key(press(KeyCode::Char('a')));
        assert!(dash.alerts_pane());
        for _ in 0..5 {
            dash.handle_key(press(KeyCode::Down));
        }
        assert_eq!(dash.alert_row(), 2);
        dash.handle_key(press(KeyCode::Char('k')));
        assert_eq!(dash.alert_row(), 1);
        dash.handle_key(press(KeyCode::Char('a')));
        assert!(!dash.alerts_pane());
        assert_eq!(dash.selected_state(), state::TIME_WAIT);
    }

    #[test]
    fn releases_are_ignored() {
        let mut dash = Dashboard::new();
        let mut release = press(KeyCode::Right);
        release.kind = KeyEventKind::Release;
        assert_eq!(dash.handle_key(release), Action::None);
        assert_eq!(dash.selected_state(), state::TIME_WAIT);
        let mut q = press(KeyCode::Char('q'));
        q.kind = KeyEventKind::Release;
        assert_eq!(dash.handle_key(q), Action::None);
    }
}
