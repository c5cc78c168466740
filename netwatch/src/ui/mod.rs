//! The live dashboard: view state and keys, layout, drawing, and the terminal itself, kept
//! apart so everything but the terminal is tested without one (and without root).

mod dashboard;
mod layout;
mod render;
mod terminal;
#[cfg(test)]
mod tests;

pub use dashboard::{Action, Dashboard, STATES};
pub use render::render;
#[cfg(test)]
pub use terminal::TerminalGone;
pub use terminal::{install_panic_hook, no_dashboard_because, terminal_gone, Tui};
