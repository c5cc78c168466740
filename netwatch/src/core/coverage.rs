//! What a trace could see on its kernel, said for people: the one short block that
//! `trace --plain`, the report's text and its HTML page all show, so they never disagree.
//! Names and reasons come from the catalogue ([`crate::features`]); this only arranges them.
//!
//! A reader of a degraded trace must learn it before reading the numbers: an empty
//! TIME_WAIT histogram means "not seen on this kernel" there, not "no TIME_WAIT".

use crate::features::{FeatureStatus, KernelFeatures};

/// How much of the catalogue a trace has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The trace carries no feature list (written before netwatch recorded one): taken as
    /// having everything, which is what it claimed then.
    NotRecorded,
    Complete,
    /// Some features were unavailable on the kernel it ran on.
    Partial,
}

impl Coverage {
    pub fn of(features: &KernelFeatures) -> Self {
        if features.0.is_empty() {
            Coverage::NotRecorded
        } else if features.lost().next().is_none() {
            Coverage::Complete
        } else {
            Coverage::Partial
        }
    }
}

/// The first line: the kernel, and whether anything is missing ("Kernel: 6.1.0-57-cloud-amd64;
/// unavailable here:", followed by [`lost_items`]).
pub fn headline(kernel: &str, features: &KernelFeatures) -> String {
    let kernel = if kernel.is_empty() { "?" } else { kernel };
    match Coverage::of(features) {
        Coverage::NotRecorded => format!(
            "Kernel: {kernel}; features not recorded (a trace from an older netwatch): taken as \
             all available"
        ),
        Coverage::Complete => format!("Kernel: {kernel}; all features available"),
        Coverage::Partial => format!("Kernel: {kernel}; unavailable here:"),
    }
}

/// One item per feature the kernel hid: what is missing, then why, in the user's words.
pub fn lost_items(features: &KernelFeatures) -> Vec<String> {
    features.lost().map(item).collect()
}

fn item(s: &FeatureStatus) -> String {
    if s.detail.is_empty() {
        s.feature.describe().to_owned()
    } else {
        format!("{} ({})", s.feature.describe(), s.detail)
    }
}

/// The block as text lines: the headline, then each lost feature indented by `indent`.
pub fn lines(kernel: &str, features: &KernelFeatures, indent: &str) -> Vec<String> {
    std::iter::once(headline(kernel, features))
        .chain(
            lost_items(features)
                .into_iter()
                .map(|i| format!("{indent}{i}")),
        )
        .collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::features::Feature;

    /// The features of a 6.1 kernel as the notes measured it: no timewait or request
    /// socket hooks (the slab tracepoints' pointer argument is refused there).
    pub fn debian_6_1() -> KernelFeatures {
        let mut f = KernelFeatures::all("tp_btf");
        for s in &mut f.0 {
            if matches!(s.feature, Feature::TimeWait | Feature::SynRecv) {
                s.available = false;
                s.detail = "kmem_cache_alloc's arguments are not readable by tp_btf here".into();
            }
        }
        f
    }

    #[test]
    fn a_complete_trace_says_so_in_one_line() {
        let f = KernelFeatures::all("tp_btf");
        assert_eq!(
            lines("6.18.0-test", &f, "  "),
            ["Kernel: 6.18.0-test; all features available"]
        );
    }

    #[test]
    fn each_lost_feature_is_one_item_with_its_cause() {
        let f = debian_6_1();
        assert_eq!(Coverage::of(&f), Coverage::Partial);
        assert_eq!(
            lines("6.1.0-57-cloud-amd64", &f, "  "),
            [
                "Kernel: 6.1.0-57-cloud-amd64; unavailable here:",
                "  TIME_WAIT and orphaned FIN_WAIT2 dwell (kmem_cache_alloc's arguments are not \
                 readable by tp_btf here)",
                "  SYN_RECV dwell (request sockets) and accept-queue wait (kmem_cache_alloc's \
                 arguments are not readable by tp_btf here)",
            ]
        );
    }

    #[test]
    fn an_old_trace_is_not_claimed_complete_nor_degraded() {
        let f = KernelFeatures::default();
        assert_eq!(Coverage::of(&f), Coverage::NotRecorded);
        let l = lines("", &f, "  ");
        assert_eq!(l.len(), 1);
        assert!(
            l[0].starts_with("Kernel: ?; features not recorded"),
            "{l:?}"
        );
    }
}
