//! The labels that place socket counts: the network namespace's name (from /run/netns, as
//! `ip netns` names them; else its inode) and the container, pod and Kubernetes namespace of
//! the sockets' cgroup. The number of places is capped ([`MAX_PLACES`]): the busiest keep
//! their labels and the rest are summed under [`OTHER`], so a node with thousands of short
//! jobs cannot make thousands of series.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netwatch_common::state;

use super::exposition::Place;
use crate::cgroup::{Resolved, Resolver};

/// Most distinct places with their own series; each carries one series per state shown.
pub const MAX_PLACES: usize = 80;

/// The label value of the places beyond [`MAX_PLACES`].
pub const OTHER: &str = "_other";

/// The states the sockets gauge shows for every place (zeros included, so a pile-up that
/// clears reads 0 rather than vanishing): those the dashboard has a panel for.
pub const GAUGE_STATES: [u8; 10] = crate::ui::STATES;

/// The labels of a cgroup as resolved (empty where nothing is known).
pub fn place(netns: String, cgroup: Option<&Resolved>) -> Place {
    let owner = cgroup.and_then(|r| r.owner.as_ref());
    let pod = cgroup.and_then(|r| r.pod.as_ref());
    Place {
        netns,
        container: owner.map(|o| o.name().to_owned()).unwrap_or_default(),
        pod: match (pod, owner.and_then(|o| o.pod_uid())) {
            (Some(p), _) => p.name.clone(),
            (None, Some(uid)) => uid.to_owned(),
            (None, None) => String::new(),
        },
        namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
    }
}

/// Sums counts by place, keeps the [`MAX_PLACES`] busiest (ties by label, so the choice is
/// stable between scrapes), folds the others into one [`OTHER`] place, and lists one row per
/// place and state of [`GAUGE_STATES`].
pub fn sockets_rows(
    counts: impl IntoIterator<Item = (Place, [u64; state::COUNT])>,
) -> Vec<(Place, &'static str, u64)> {
    let mut by_place: BTreeMap<Place, [u64; state::COUNT]> = BTreeMap::new();
    for (p, c) in counts {
        let sum = by_place.entry(p).or_insert([0; state::COUNT]);
        for (s, n) in sum.iter_mut().zip(c) {
            *s += n;
        }
    }
    let mut places: Vec<(Place, [u64; state::COUNT])> = by_place.into_iter().collect();
    let total = |c: &[u64; state::COUNT]| c.iter().sum::<u64>();
    places.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0)));
    if places.len() > MAX_PLACES {
        let mut other = [0; state::COUNT];
        for (_, c) in places.drain(MAX_PLACES - 1..) {
            for (s, n) in other.iter_mut().zip(c) {
                *s += n;
            }
        }
        places.push((
            Place {
                netns: OTHER.into(),
                container: OTHER.into(),
                pod: String::new(),
                namespace: String::new(),
            },
            other,
        ));
    }
    places
        .into_iter()
        .flat_map(|(p, c)| {
            GAUGE_STATES
                .iter()
                .map(move |&s| (p.clone(), state::name(s), c[s as usize]))
        })
        .collect()
}

/// A namespace inode's name from /run/netns, renewed at most every few seconds when an
/// unknown inode appears.
pub struct NetnsNames {
    dir: PathBuf,
    names: HashMap<u32, String>,
    last_scan: Option<Instant>,
}

const RESCAN_AFTER: Duration = Duration::from_secs(5);

impl NetnsNames {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            names: HashMap::new(),
            last_scan: None,
        }
    }

    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.last_scan = Some(Instant::now());
        self.names = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            // stat follows the bind mount to the namespace: its inode is the namespace's.
            .filter_map(|e| {
                let ino = u32::try_from(std::fs::metadata(e.path()).ok()?.ino()).ok()?;
                Some((ino, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
    }

    /// The label for a namespace: its name, or its inode in decimal.
    pub fn label(&mut self, inode: u32) -> String {
        self.name(inode).unwrap_or_else(|| inode.to_string())
    }

    /// Every namespace that has a name, by inode (bounded: a header must stay small).
    pub fn all(&mut self) -> std::collections::BTreeMap<u32, String> {
        self.scan();
        self.names
            .iter()
            .take(256)
            .map(|(i, n)| (*i, n.clone()))
            .collect()
    }

    /// A namespace's name under /run/netns, if it has one.
    pub fn name(&mut self, inode: u32) -> Option<String> {
        if !self.names.contains_key(&inode)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_AFTER)
        {
            self.scan();
        }
        self.names.get(&inode).cloned()
    }
}

impl NetnsNames {
    pub fn system() -> Self {
        Self::new("/run/netns")
    }

    /// The place of sockets in namespace `netns` and cgroup `cgroup`.
    pub fn place(&mut self, netns: u32, cgroup: u64, cgroups: &mut Resolver) -> Place {
        let name = self.label(netns);
        place(name, cgroups.resolve(cgroup))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Owner;

    fn p(netns: &str, container: &str) -> Place {
        Place {
            netns: netns.into(),
            container: container.into(),
            ..Default::default()
        }
    }

    fn counts(established: u64) -> [u64; state::COUNT] {
        let mut c = [0; state::COUNT];
        c[state::ESTABLISHED as usize] = established;
        c
    }

    #[test]
    fn rows_sum_by_place_and_show_zeros() {
        let rows = sockets_rows([
            (p("blue", "a"), counts(2)),
            (p("blue", "a"), counts(3)),
            (p("red", ""), counts(0)),
        ]);
        assert_eq!(rows.len(), 2 * GAUGE_STATES.len());
        assert_eq!(rows[0], (p("blue", "a"), "ESTABLISHED", 5));
        assert!(rows.iter().any(|r| *r == (p("red", ""), "TIME_WAIT", 0)));
    }

    #[test]
    fn places_beyond_the_cap_are_folded_into_other() {
        let many = (0..MAX_PLACES as u64 * 3).map(|i| (p(&i.to_string(), ""), counts(i + 1)));
        let rows = sockets_rows(many);
        assert_eq!(rows.len(), MAX_PLACES * GAUGE_STATES.len());
        let kept: u64 = rows.iter().map(|r| r.2).sum();
        let n = MAX_PLACES as u64 * 3;
        assert_eq!(kept, n * (n + 1) / 2, "nothing is lost in the fold");
        assert!(rows.iter().any(|r| r.0.netns == OTHER));
        // The busiest place keeps its name.
        assert_eq!(rows[0].0.netns, (n - 1).to_string());
    }

    #[test]
    fn a_place_names_the_container_and_pod() {
        let r = Resolved {
            path: "/x".into(),
            owner: Some(Owner::Unit("nginx.service".into())),
            pod: None,
            container: None,
        };
        assert_eq!(place("blue".into(), Some(&r)), p("blue", "nginx.service"));
        assert_eq!(place("7".into(), None), p("7", ""));
    }

    #[test]
    fn unnamed_namespaces_are_labelled_by_inode() {
        let mut n = NetnsNames::new("/nonexistent/netns");
        assert_eq!(n.label(4026531840), "4026531840");
    }
}
