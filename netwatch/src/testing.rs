//! Helpers for the unit tests that need the running kernel.

/// Whether a root-only test may run: true as root; otherwise it skips with the reason,
/// except under CI, where a skip would hide a broken runner.
pub fn root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true forbids skipping it");
    }
    eprintln!("skipping {test}: needs root ({why})");
    false
}
