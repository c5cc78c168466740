//! Root check with CI semantics.
//!
//! A developer running `cargo test` without root should get a quick, explicit skip rather
//! than a wall of EPERM failures. Under CI the opposite holds: a test that cannot load eBPF
//! has not tested anything, so it must fail, never pass silently as a skip.
//!
//! Only the lack of root is a skip. Everything after this check (netwatch missing, programs
//! failing to load, namespaces failing to be created) is a test failure.

/// True when the environment says we run under CI: `CI` set, non-empty, and not "false".
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => {
            let v = v.trim();
            !v.is_empty() && !v.eq_ignore_ascii_case("false")
        }
        Err(_) => false,
    }
}

/// Returns true when the test may proceed (euid 0).
///
/// When not root: panics under CI (see [`under_ci`]) with the reason, otherwise prints a skip
/// notice and returns false so that the test can `return` early.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if under_ci() {
        panic!(
            "netwatch integration tests need root (euid is {euid}) to load eBPF and create \
             network namespaces; under CI (CI={:?}) this is a failure, not a skip",
            std::env::var("CI").unwrap_or_default()
        );
    }
    eprintln!("skipping: needs root (run `sudo cargo xtask test`)");
    false
}
