//! The dwell-time engine: folds transitions into per-state histograms of completed dwells,
//! a mirror of the sockets alive now (for gauges, ages and top talkers), and turns that into
//! [`Snapshot`]s. Pure and synchronous: `trace` and `report` feed it the same way.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::net::IpAddr;
use std::num::NonZeroU64;

use hdrhistogram::Histogram;
use netwatch_common::state;

use super::early_ends::{Classifier, EarlyEnds};
use super::event::{Owner, TimewaitReset, Transition};
use super::fasthash::{IdHasher, IdMap};
use super::requests::{ListenerQueue, Queues};
use super::sharded::ShardedMap;
use super::signals::Lingering;
use super::snapshot::{Bucket, Handshakes, Peak, Percentiles, Snapshot, StateStats, Talker};

/// Longest dwell a histogram records exactly (ten days); longer ones are clamped, so a
/// five-day conntrack-style ESTABLISHED still lands in the top bucket.
const MAX_TRACKABLE_NS: u64 = 10 * 24 * 3600 * 1_000_000_000;

/// Bar-chart bounds: decades below a second, then the marks that matter for TCP timers
/// (tcp_fin_timeout's 60 s, TIME_WAIT's 60 s plus timer slack, SYN-ACK backoff 1-3-7 s).
const BUCKET_BOUNDS_NS: &[u64] = &[
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    2_000_000_000,
    4_000_000_000,
    8_000_000_000,
    16_000_000_000,
    32_000_000_000,
    59_000_000_000,
    61_000_000_000,
    66_000_000_000,
    120_000_000_000,
    600_000_000_000,
    3_600_000_000_000,
    MAX_TRACKABLE_NS,
];

const TOP_N: usize = 5;

/// What the engine remembers of a socket that is alive.
#[derive(Debug, Clone, Copy)]
struct Live {
    state: u8,
    /// When it entered `state`; `None` if netwatch did not see it (census, or started before).
    /// Non-zero, so the option costs no tag: the mirror holds one of these per socket (131k
    /// at a full TIME_WAIT table), and 8 bytes of each are 2 MB of the trace's peak RSS.
    since: Option<NonZeroU64>,
    /// `since` is a record's kernel timestamp, not the census's estimate: only then does
    /// it time the state (see [`Aggregator::complete`]).
    timed: bool,
    /// The port that names the service: the local port of accepted sockets, the remote
    /// port of connecting ones.
    service_port: u16,
    /// This end's own port (random for a client): `ss`'s local port.
    local_port: u16,
    remote: IpAddr,
    /// Index into [`Processes`]; [`NO_PROCESS`] while no process is known.
    process: u32,
    /// Index into [`Groups`]: its network namespace and cgroup, for the per-namespace and
    /// per-container gauges.
    group: u32,
}

/// Counts per state of small dense keys (ports, process indexes), in tables made only for
/// the states that have sockets.
struct DenseCounts {
    keys: usize,
    tables: Vec<Vec<u32>>,
}

impl DenseCounts {
    fn per_state(keys: usize) -> Self {
        Self {
            keys,
            tables: vec![Vec::new(); state::COUNT],
        }
    }

    fn add(&mut self, state: usize, key: usize) {
        let keys = self.keys;
        let Some(t) = self.tables.get_mut(state) else {
            return;
        };
        if t.is_empty() {
            t.resize(keys, 0);
        }
        if let Some(n) = t.get_mut(key) {
            *n += 1;
        }
    }

    fn top<K: Ord + Copy>(&self, state: usize, key: impl Fn(usize) -> K) -> Vec<Talker<K>> {
        let Some(t) = self.tables.get(state) else {
            return Vec::new();
        };
        top_of(
            t.iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(k, &n)| Talker {
                    key: key(k),
                    count: u64::from(n),
                })
                .collect(),
        )
    }
}

/// A socket's entry in the mirror as one lookup found it (see [`Aggregator::complete`]).
#[derive(Debug, Clone, Copy)]
pub struct Found(Option<Live>);

/// What `Live::process` holds for a socket whose owner is unknown.
const NO_PROCESS: u32 = u32::MAX;

/// Values each stored once and named by their index: every live socket names its process
/// and its (namespace, cgroup) in four bytes each, so the mirror stays `Copy` and small (at
/// a million TIME_WAIT sockets its size sets netwatch's peak memory; held inline, the pair
/// alone was 12 of an entry's 56 bytes). Grows with the distinct processes and containers of
/// the trace, far fewer than sockets.
struct Interned<T, S = std::collections::hash_map::RandomState> {
    list: Vec<T>,
    index: HashMap<T, u32, S>,
}

impl<T, S: Default> Default for Interned<T, S> {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<T: Hash + Eq + Clone, S: BuildHasher> Interned<T, S> {
    fn id(&mut self, v: &T) -> u32 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(v.clone());
        self.index.insert(v.clone(), i);
        i
    }

    fn get(&self, id: u32) -> Option<&T> {
        self.list.get(id as usize)
    }
}

/// Processes, with SipHash: command names are the traced machine's users' to choose.
type Processes = Interned<Owner>;

/// (namespace, cgroup) pairs: kernel ids, so the cheap hasher.
type Groups = Interned<Group, BuildHasherDefault<IdHasher>>;

/// A socket's network namespace inode and cgroup id (0: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Group {
    netns: u32,
    cgroup: u64,
}

/// A socket that existed when tracing began, from the census.
#[derive(Debug, Clone)]
pub struct Existing {
    pub sock_id: u64,
    pub state: u8,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// How long it has been in `state`, when the kernel tells (TIME_WAIT's timer does).
    pub age_ns: Option<u64>,
    /// The process holding it, as /proc said at the census.
    pub owner: Option<Owner>,
    /// Its network namespace's inode, and its cgroup id where known (else 0).
    pub netns: u32,
    pub cgroup: u64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3).expect("static histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    // One pass over the counts for the three (each pass reads all 40k of them, and a
    // snapshot does this for every state's dwell and age).
    let mut q = h.value_at_quantiles([0.50, 0.90, 0.99]);
    Percentiles {
        count: h.len(),
        p50: q.next().unwrap_or(0),
        p90: q.next().unwrap_or(0),
        p99: q.next().unwrap_or(0),
        max: h.max(),
    }
}

fn buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    let mut counts = [0u64; BUCKET_BOUNDS_NS.len()];
    // Each recorded value lands in exactly one bar (hdrhistogram's own range queries
    // overlap at bucket edges).
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let i = BUCKET_BOUNDS_NS
            .iter()
            .position(|&upper| value <= upper)
            .unwrap_or(BUCKET_BOUNDS_NS.len() - 1);
        counts[i] += v.count_at_value();
    }
    BUCKET_BOUNDS_NS
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(&upper_ns, count)| Bucket { upper_ns, count })
        .collect()
}

pub struct Aggregator {
    dwell: Vec<Histogram<u64>>,
    live: ShardedMap<Live>,
    /// Sockets in each state now, kept in step with `live`.
    counts: [u64; state::COUNT],
    entered: [u64; state::COUNT],
    /// Local ports of listeners alive now: a socket with such a local port was accepted.
    listening: IdMap<u16, u32>,
    transitions: u64,
    last_snapshot_ns: Option<u64>,
    /// Server-side SYN_RECV now, as the kernel lists its request sockets: they make no
    /// record until they end, so the caller lists them (sock_diag) each interval.
    requests: Option<Requests>,
    /// Accepted children in listeners' queues: ESTABLISHED, but announced only at accept().
    accept_queued: u64,
    /// Children followed by their own records while still in their listener's queue: seen
    /// leaving ESTABLISHED (the client closed, say) before the request socket's record that
    /// accept() brings. The queue's length counts them too, so they are not ESTABLISHED.
    unaccepted: IdMap<u64, ()>,
    /// Server-side handshakes that ended, by outcome, since the start.
    handshakes: Handshakes,
    /// Listeners' accept queues, as last listed.
    listeners: Vec<ListenerQueue>,
    /// Per state, the highest count of any snapshot so far (what the gauges showed).
    peaks: [Peak; state::COUNT],
    processes: Processes,
    groups: Groups,
    /// Why TIME_WAITs ended early.
    early_ends: Classifier,
    /// Transitions by (state left, state entered), since the start.
    pairs: [[u64; state::COUNT]; state::COUNT],
}

/// The request sockets waiting now, as last listed (see [`Aggregator::set_queues`]).
#[derive(Debug, Clone, Default)]
struct Requests {
    /// When the list was read: between reads (the dump is rationed) the ages grow.
    listed_ns: u64,
    now: u64,
    age: Percentiles,
    by_port: Vec<Talker<u16>>,
    by_remote: Vec<Talker<IpAddr>>,
}

impl Requests {
    fn age_at(&self, now_ns: u64) -> Percentiles {
        let later = now_ns.saturating_sub(self.listed_ns);
        let a = self.age;
        if a.count == 0 {
            return a;
        }
        Percentiles {
            count: a.count,
            p50: a.p50.saturating_add(later),
            p90: a.p90.saturating_add(later),
            p99: a.p99.saturating_add(later),
            max: a.max.saturating_add(later),
        }
    }
}

/// Sockets in each state now, of one network namespace and cgroup.
pub type GroupCounts = IdMap<(u32, u64), [u64; state::COUNT]>;

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self {
            dwell: (0..state::COUNT).map(|_| new_histogram()).collect(),
            live: ShardedMap::default(),
            counts: [0; state::COUNT],
            entered: [0; state::COUNT],
            listening: IdMap::default(),
            transitions: 0,
            last_snapshot_ns: None,
            requests: None,
            accept_queued: 0,
            unaccepted: IdMap::default(),
            handshakes: Handshakes::default(),
            listeners: Vec::new(),
            peaks: [Peak::default(); state::COUNT],
            processes: Processes::default(),
            groups: Groups::default(),
            early_ends: Classifier::default(),
            pairs: [[0; state::COUNT]; state::COUNT],
        }
    }

    /// A RST reached a timewait socket (evidence for an early end).
    pub fn timewait_reset(&mut self, r: &TimewaitReset) {
        self.early_ends.reset(r.tuple, r.mono_ns);
    }

    /// Early TIME_WAIT ends by cause so far.
    pub fn early_ends(&self) -> EarlyEnds {
        self.early_ends.counts()
    }

    /// The trace is over: early ends still waiting for evidence will get none.
    pub fn finish(&mut self) {
        self.early_ends.finish();
    }

    fn service_port(&self, state: u8, sport: u16, dport: u16, accepted: bool) -> u16 {
        if state == state::LISTEN || accepted || self.listening.contains_key(&sport) {
            sport
        } else {
            dport
        }
    }

    fn remove(&mut self, sock_id: u64) -> Option<Live> {
        self.unaccepted.remove(&sock_id);
        let old = self.live.remove(&sock_id)?;
        self.count_out(&old);
        Some(old)
    }

    fn insert(&mut self, sock_id: u64, live: Live) {
        self.remove(sock_id);
        self.count_in(&live);
        self.live.insert(sock_id, live);
    }

    fn count_in(&mut self, live: &Live) {
        self.counts[live.state as usize] += 1;
        if live.state == state::LISTEN {
            *self.listening.entry(live.service_port).or_default() += 1;
        }
    }

    fn count_out(&mut self, old: &Live) {
        self.counts[old.state as usize] -= 1;
        if old.state == state::LISTEN {
            if let Some(n) = self.listening.get_mut(&old.service_port) {
                *n -= 1;
                if *n == 0 {
                    self.listening.remove(&old.service_port);
                }
            }
        }
    }

    /// Sets how many sockets are in SYN_RECV now and their ages, and how many children
    /// wait in accept queues, as a recorded snapshot says (a replay: records cannot tell).
    pub fn set_recorded_queues(
        &mut self,
        at_ns: u64,
        syn_recv: u64,
        age: Percentiles,
        accept_queued: u64,
    ) {
        self.requests = Some(Requests {
            listed_ns: at_ns,
            now: syn_recv,
            age,
            by_port: Vec::new(),
            by_remote: Vec::new(),
        });
        self.accept_queued = accept_queued;
    }

    /// The kernel's list of waiting request sockets and accept queues, read at `now_ns`.
    pub fn set_queues(&mut self, now_ns: u64, q: &Queues) {
        let mut ages = new_histogram();
        let mut by_port: HashMap<u16, u64> = HashMap::new();
        let mut by_remote: HashMap<IpAddr, u64> = HashMap::new();
        for w in &q.requests {
            ages.saturating_record(w.age_ns.clamp(1, MAX_TRACKABLE_NS));
            *by_port.entry(w.port).or_default() += 1;
            *by_remote.entry(w.remote).or_default() += 1;
        }
        self.requests = Some(Requests {
            listed_ns: now_ns,
            now: q.requests.len() as u64,
            age: percentiles(&ages),
            by_port: top(by_port),
            by_remote: top(by_remote),
        });
        self.accept_queued = q.accept_queued;
        self.listeners = q.listeners.clone();
    }

    /// The listeners of `netns` as last listed, each with the process listening where
    /// known (`python3[42]`).
    pub fn listeners(&self, netns: u32) -> Vec<(ListenerQueue, Option<String>)> {
        self.listeners
            .iter()
            .filter(|l| l.netns == netns)
            .map(|l| {
                let process = self
                    .live
                    .get(&l.cookie)
                    .and_then(|live| self.processes.get(live.process))
                    .map(ToString::to_string);
                (*l, process)
            })
            .collect()
    }

    /// Seeds the live mirror with the sockets that existed at start (the census).
    /// Takes the sockets twice (listeners first, since they decide every other socket's
    /// service port) rather than collecting them: at a full TIME_WAIT table the census is
    /// netwatch's peak memory, and a copy of it was 10 MB of that.
    pub fn seed<I>(&mut self, now_ns: u64, sockets: I)
    where
        I: IntoIterator<Item = Existing>,
        I::IntoIter: Clone,
    {
        let sockets = sockets.into_iter();
        for s in sockets.clone().filter(|s| s.state == state::LISTEN) {
            self.seed_one(now_ns, s);
        }
        for s in sockets.filter(|s| s.state != state::LISTEN) {
            self.seed_one(now_ns, s);
        }
    }

    /// Seeds the live mirror with one socket of the census, read at `now_ns`. The listeners
    /// go first: they decide every other socket's service port. A socket seeded twice (met
    /// twice by the dump) keeps its later sighting. Sockets in SYN_RECV are request
    /// sockets, counted by `set_queues`: their end is reported under the child's cookie, so
    /// a mirror entry would never leave.
    pub fn seed_one(&mut self, now_ns: u64, s: Existing) {
        if s.state == state::SYN_RECV {
            return;
        }
        let live = Live {
            state: s.state,
            since: s
                .age_ns
                .and_then(|a| NonZeroU64::new(now_ns.saturating_sub(a))),
            timed: false,
            service_port: self.service_port(s.state, s.sport, s.dport, false),
            local_port: s.sport,
            remote: s.daddr,
            process: s
                .owner
                .as_ref()
                .map_or(NO_PROCESS, |o| self.processes.id(o)),
            group: self.groups.id(&Group {
                netns: s.netns,
                cgroup: s.cgroup,
            }),
        };
        self.insert(s.sock_id, live);
    }

    /// Completes `t` from the mirror's entry for its socket, before anything reads it (the
    /// sinks write the record as completed):
    ///
    /// - Its dwell, where the kernel left it to userspace: keyed by cookie, the kernel side
    ///   keeps no entry per socket (a hash-map update on every transition), and the mirror
    ///   holds what it would have held: when the socket entered the state it leaves, as the
    ///   record of that change stamped it. So the dwell is the same difference of the
    ///   kernel's own timestamps. Left unknown where the mirror did not see that change:
    ///   the socket predates the trace, or the record was lost, or filtered out (a filter
    ///   on a client's own port misses its SYN_SENT record, made before the port is
    ///   chosen); a request socket's end carries its own.
    /// - Its process and cgroup, where the record carries none: records made in softirq
    ///   context name no process, and timewait sockets carry no cgroup. The mirror has them
    ///   from the socket's earlier records or the census; a map of its own for them held
    ///   every live socket a second time (15 MB at a full TIME_WAIT table).
    ///
    /// `whole`: all of it; else only the dwell, for a caller that reads nothing else of the
    /// record (the live views: an owner copied onto every record, then dropped, was ~8 % of
    /// their CPU).
    ///
    /// Returns the entry it read, for [`Aggregator::apply_found`]: one lookup a record.
    pub fn complete(&self, t: &mut Transition, whole: bool) -> Found {
        let Some(c) = self.live.get(&t.sock_id) else {
            return Found(None);
        };
        let found = Found(Some(*c));
        if t.dwell_ns.is_none() && t.synack_retransmits.is_none() && c.timed && c.state == t.old {
            if let Some(since) = c.since {
                t.dwell_ns = t.mono_ns.checked_sub(since.get());
            }
        }
        if !whole {
            return found;
        }
        if t.cgroup == 0 {
            t.cgroup = self.group(c.group).cgroup;
        }
        if t.owner.is_none() {
            t.owner = self.processes.get(c.process).cloned();
        }
        found
    }

    pub fn apply(&mut self, t: &Transition) {
        let found = Found(self.live.get(&t.sock_id).copied());
        self.apply_found(t, found);
    }

    /// [`Aggregator::apply`] with the socket's entry as [`Aggregator::complete`] just read
    /// it (nothing changed the mirror in between).
    pub fn apply_found(&mut self, t: &Transition, found: Found) {
        self.transitions += 1;
        self.early_ends.transition(t);
        if let Some(n) = self
            .pairs
            .get_mut(t.old as usize)
            .and_then(|row| row.get_mut(t.new as usize))
        {
            *n += 1;
        }
        if let Some(d) = t.dwell_ns {
            if (t.old as usize) < state::COUNT && t.old != state::CLOSE {
                self.dwell[t.old as usize].saturating_record(d.min(MAX_TRACKABLE_NS));
            }
        }
        let cur = found.0;
        if t.synack_retransmits.is_some() {
            self.unaccepted.remove(&t.sock_id);
        } else if cur.is_none()
            && t.old == state::ESTABLISHED
            && t.new != state::CLOSE
            && self.listening.contains_key(&t.sport)
        {
            self.unaccepted.insert(t.sock_id, ());
        }
        // A request socket's record arrives at accept(), stamped with the child's creation;
        // the child may have moved on since. Only the newest news updates the mirror, but
        // the owner it names is news (accept() is the first the process touches it).
        if let Some(c) = cur.filter(|c| c.since.is_some_and(|s| s.get() > t.mono_ns)) {
            self.adopt_owner(t, c);
            return;
        }
        // A child whose birth the kernel's map had let go (more children alive than it
        // holds) made its own SYN_RECV -> ESTABLISHED record, which is otherwise held back:
        // its request socket's record adds the handshake and the acceptor, not a second
        // entry into ESTABLISHED.
        if let Some(c) = cur.filter(|c| {
            t.synack_retransmits.is_some()
                && t.new == state::ESTABLISHED
                && c.state == state::ESTABLISHED
        }) {
            self.entered[state::SYN_RECV as usize] += 1;
            self.handshakes.completed += 1;
            self.adopt_owner(t, c);
            return;
        }
        if (t.new as usize) < state::COUNT && t.new != state::CLOSE {
            self.entered[t.new as usize] += 1;
        }
        if t.synack_retransmits.is_some() {
            // A request socket's end: the record of a connection that entered SYN_RECV
            // (server side), the only one it makes.
            self.entered[state::SYN_RECV as usize] += 1;
            if t.new == state::CLOSE {
                self.handshakes.failed += 1;
            } else {
                self.handshakes.completed += 1;
            }
        }
        if t.new == state::CLOSE {
            if cur.is_some() {
                self.remove(t.sock_id);
            }
            return;
        }
        let accepted = t.synack_retransmits.is_some()
            || cur.is_some_and(|l| l.service_port == t.sport && t.sport != 0);
        // Records made in softirq context name no process: the socket keeps the one it had.
        // The tracer copies a socket's owner onto each of its records: the one the socket
        // already names is found by comparing, not by hashing it again (Processes::id and its
        // SipHash were ~3 % of a live view's CPU).
        let process = match (&t.owner, cur) {
            (Some(o), Some(c)) if self.processes.get(c.process) == Some(o) => c.process,
            (Some(o), _) => self.processes.id(o),
            (None, _) => cur.map_or(NO_PROCESS, |c| c.process),
        };
        // Timewait sockets carry no cgroup: the socket keeps the one its full socket had.
        let had = cur.map(|c| (c.group, self.group(c.group)));
        let group = Group {
            netns: t.netns,
            cgroup: match (t.cgroup, had) {
                (0, Some((_, g))) => g.cgroup,
                (cgroup, _) => cgroup,
            },
        };
        // Most records name the group the socket already has: compared, not hashed.
        let group = match had {
            Some((id, g)) if g == group => id,
            _ => self.groups.id(&group),
        };
        let live = Live {
            state: t.new,
            since: NonZeroU64::new(t.mono_ns),
            timed: true,
            service_port: self.service_port(t.new, t.sport, t.dport, accepted),
            // A transition may read port 0 (before bind, at close): the socket keeps the
            // port it had.
            local_port: match (t.sport, cur) {
                (0, Some(c)) => c.local_port,
                (p, _) => p,
            },
            remote: t.daddr,
            process,
            group,
        };
        if let Some(old) = &cur {
            self.count_out(old);
        }
        self.count_in(&live);
        // Rewritten in place where it is there: an insert probes for it again.
        if let Some(slot) = cur.and_then(|_| self.live.get_mut(&t.sock_id)) {
            *slot = live;
        } else {
            self.live.insert(t.sock_id, live);
        }
    }

    /// The (namespace, cgroup) a mirror entry names.
    fn group(&self, id: u32) -> Group {
        self.groups.get(id).copied().unwrap_or_default()
    }

    /// The owner a request socket's record names, for a socket the mirror knows without
    /// one: accept() is the first the process touches it.
    fn adopt_owner(&mut self, t: &Transition, c: Live) {
        if let (Some(o), NO_PROCESS) = (&t.owner, c.process) {
            let process = self.processes.id(o);
            self.insert(t.sock_id, Live { process, ..c });
        }
    }

    /// Sockets in `s` now.
    pub fn count(&self, s: u8) -> u64 {
        self.counts[s as usize]
    }

    /// Transitions so far from `old` to `new`, for each pair seen.
    pub fn transition_pairs(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
        self.pairs.iter().enumerate().flat_map(|(old, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(move |(new, n)| (old as u8, new as u8, *n))
        })
    }

    /// The completed dwells recorded in `s`: (nanoseconds, how many), smallest first.
    pub fn dwell_recorded(&self, s: u8) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.dwell
            .get(s as usize)
            .into_iter()
            .flat_map(|h| h.iter_recorded())
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }

    /// The age at `now_ns` of each live socket whose entry into its state was seen.
    pub fn ages(&self, now_ns: u64) -> impl Iterator<Item = (u8, u64)> + '_ {
        self.live
            .values()
            .filter_map(move |l| Some((l.state, now_ns.saturating_sub(l.since?.get()))))
    }

    /// Sockets in each state now by (network namespace, cgroup id). Request sockets
    /// (SYN_RECV) are not in the mirror: the caller counts them (see `set_syn_recv_now`).
    pub fn groups(&self) -> GroupCounts {
        let mut out = GroupCounts::default();
        for l in self.live.values() {
            let g = self.group(l.group);
            out.entry((g.netns, g.cgroup)).or_insert([0; state::COUNT])[l.state as usize] += 1;
        }
        out
    }

    /// Per namespace, the sockets in `st` for `min_age_ns` or more at `now_ns` (those whose
    /// entry netwatch saw, or the census aged), with the processes holding them.
    pub fn lingering(&self, st: u8, min_age_ns: u64, now_ns: u64) -> Vec<Lingering> {
        // netns -> (sockets, oldest, sockets per process)
        let mut by_ns: std::collections::BTreeMap<u32, (u64, u64, HashMap<u32, u64>)> =
            std::collections::BTreeMap::new();
        for l in self.live.values().filter(|l| l.state == st) {
            let Some(age) = l.since.map(|s| now_ns.saturating_sub(s.get())) else {
                continue;
            };
            if age < min_age_ns {
                continue;
            }
            let e = by_ns.entry(self.group(l.group).netns).or_default();
            e.0 += 1;
            e.1 = e.1.max(age);
            if l.process != NO_PROCESS {
                *e.2.entry(l.process).or_default() += 1;
            }
        }
        by_ns
            .into_iter()
            .map(|(netns, (sockets, oldest_ns, holders))| Lingering {
                netns,
                sockets,
                oldest_ns,
                processes: top(holders)
                    .into_iter()
                    .filter_map(|t| Some(self.processes.get(t.key)?.to_string()))
                    .collect(),
            })
            .collect()
    }

    /// Client sockets of namespace `netns` towards `daddr:dport` now that hold a local port
    /// for it, and how many of those are in TIME_WAIT. A connect() still choosing its port
    /// (the one failing with EADDRNOTAVAIL, say) holds none: counted, the range's 200 ports
    /// read as "201 in use".
    pub fn towards(&self, netns: u32, daddr: IpAddr, dport: u16) -> (u64, u64) {
        self.live
            .values()
            .filter(|l| {
                self.group(l.group).netns == netns
                    && l.remote == daddr
                    && l.service_port == dport
                    && l.local_port != 0
                    && l.state != state::LISTEN
            })
            .fold((0, 0), |(all, tw), l| {
                (all + 1, tw + u64::from(l.state == state::TIME_WAIT))
            })
    }

    /// The view at `now_ns`; starts a new interval for the entry counts.
    pub fn snapshot(&mut self, now_ns: u64, lost: u64) -> Snapshot {
        let snap = self.peek(now_ns, lost);
        for (peak, st) in self.peaks.iter_mut().zip(&snap.states) {
            *peak = st.peak;
        }
        self.last_snapshot_ns = Some(now_ns);
        self.entered = [0; state::COUNT];
        snap
    }

    /// The view at `now_ns` without ending the interval (for redraws between snapshots).
    pub fn peek(&self, now_ns: u64, lost: u64) -> Snapshot {
        let mut snap = Snapshot::empty();
        snap.mono_ns = now_ns;
        snap.interval_ns = self
            .last_snapshot_ns
            .map_or(0, |last| now_ns.saturating_sub(last));
        snap.transitions = self.transitions;
        snap.lost = lost;
        snap.timewait_early_ends = self.early_ends.counts();
        snap.accept_queued = self.accept_queued;
        snap.handshakes = self.handshakes;

        // Made only for the states that have sockets: each is 320 kB to zero.
        let mut ages: Vec<Option<Histogram<u64>>> = vec![None; state::COUNT];
        // Rebuilt from every live socket at each snapshot (131k at a full TIME_WAIT table):
        // ports, processes and groups are counted in dense tables, not hash maps (17 ms a
        // snapshot at a full table, most of a live view's interval work), the remotes with
        // the cheap hasher.
        let mut by_port = DenseCounts::per_state(1 << 16);
        let mut by_local = DenseCounts::per_state(1 << 16);
        let mut by_process = DenseCounts::per_state(self.processes.list.len());
        let mut by_group = vec![[0u64; state::COUNT]; self.groups.list.len()];
        let mut by_remote: Vec<IdMap<IpAddr, u64>> = vec![IdMap::default(); state::COUNT];
        for l in self.live.values() {
            let i = l.state as usize;
            if let Some(g) = by_group.get_mut(l.group as usize) {
                g[i] += 1;
            }
            if let (Some(since), Some(h)) = (l.since, ages.get_mut(i)) {
                h.get_or_insert_with(new_histogram).saturating_record(
                    now_ns
                        .saturating_sub(since.get())
                        .clamp(1, MAX_TRACKABLE_NS),
                );
            }
            by_port.add(i, l.service_port.into());
            // A connect() enters SYN_SENT before its port is chosen: 0 is no port.
            if l.local_port != 0 {
                by_local.add(i, l.local_port.into());
            }
            if l.state != state::LISTEN {
                *by_remote[i].entry(l.remote).or_default() += 1;
            }
            if l.process != NO_PROCESS {
                by_process.add(i, l.process as usize);
            }
        }
        for (g, counts) in self.groups.list.iter().zip(&by_group) {
            if counts.iter().any(|&n| n > 0) {
                let ns = snap.per_netns.entry(g.netns).or_insert([0; state::COUNT]);
                for (sum, n) in ns.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
        }
        for i in 0..state::COUNT {
            snap.top_netns[i] = top(snap
                .per_netns
                .iter()
                .filter(|(_, c)| c[i] > 0)
                .map(|(ns, c)| (*ns, c[i]))
                .collect::<HashMap<_, _>>());
            let requests = self
                .requests
                .as_ref()
                .filter(|_| i == state::SYN_RECV as usize);
            let now = match requests {
                Some(r) => r.now,
                None if i == state::ESTABLISHED as usize => {
                    let queued = self.accept_queued;
                    self.counts[i] + queued.saturating_sub(self.unaccepted.len() as u64)
                }
                None => self.counts[i],
            };
            snap.states[i] = StateStats {
                now,
                peak: self.peaks[i].with(now, now_ns),
                entered: self.entered[i],
                dwell: percentiles(&self.dwell[i]),
                age: requests.map_or_else(
                    || ages[i].as_ref().map(percentiles).unwrap_or_default(),
                    |r| r.age_at(now_ns),
                ),
                buckets: buckets(&self.dwell[i]),
            };
            snap.top_service_ports[i] = match requests {
                Some(r) => r.by_port.clone(),
                None => by_port.top(i, |k| k as u16),
            };
            snap.top_local_ports[i] = match requests {
                Some(r) => r.by_port.clone(),
                None => by_local.top(i, |k| k as u16),
            };
            snap.top_remotes[i] = match requests {
                Some(r) => r.by_remote.clone(),
                None => top(std::mem::take(&mut by_remote[i])),
            };
            snap.top_processes[i] = by_process
                .top(i, |k| k as u32)
                .into_iter()
                .filter_map(|t| {
                    let key = self.processes.get(t.key)?.clone();
                    Some(Talker {
                        key,
                        count: t.count,
                    })
                })
                .collect();
        }
        snap
    }
}

impl super::signals::SocketView for Aggregator {
    fn towards(&self, netns: u32, daddr: IpAddr, dport: u16) -> (u64, u64) {
        Aggregator::towards(self, netns, daddr, dport)
    }
    fn count(&self, state: u8) -> u64 {
        Aggregator::count(self, state)
    }
    fn listeners(&self, netns: u32) -> Vec<(ListenerQueue, Option<String>)> {
        Aggregator::listeners(self, netns)
    }
    fn lingering(&self, st: u8, min_age_ns: u64, now_ns: u64) -> Vec<Lingering> {
        Aggregator::lingering(self, st, min_age_ns, now_ns)
    }
}

/// The `TOP_N` largest counts, largest first (ties by key). Selects before sorting: a
/// state's local ports number in the tens of thousands under client churn.
fn top<K: Ord + Copy, S>(counts: HashMap<K, u64, S>) -> Vec<Talker<K>> {
    top_of(
        counts
            .into_iter()
            .map(|(key, count)| Talker { key, count })
            .collect(),
    )
}

/// The [`TOP_N`] largest counts, largest first, ties by key.
fn top_of<K: Ord + Copy>(mut v: Vec<Talker<K>>) -> Vec<Talker<K>> {
    let order = |a: &Talker<K>, b: &Talker<K>| b.count.cmp(&a.count).then(a.key.cmp(&b.key));
    if v.len() > TOP_N {
        v.select_nth_unstable_by(TOP_N, order);
        v.truncate(TOP_N);
    }
    v.sort_by(order);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Family;
    use netwatch_common::state::*;

    const S: u64 = 1_000_000_000;

    fn t(sock: u64, at: u64, old: u8, new: u8, dwell: Option<u64>) -> Transition {
        Transition {
            mono_ns: at,
            sock_id: sock,
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 40000 + sock as u16,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 80,
            old,
            new,
            dwell_ns: dwell,
            netns: 1,
            ..Transition::example()
        }
    }

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
            container: None,
        }
    }

    /// CLOSE_WAIT held for long is listed per namespace with its holders; young sockets
    /// are not.
    #[test]
    fn sockets_lingering_in_a_state_are_listed_per_namespace_with_holders() {
        let mut a = Aggregator::new();
        let mut old = t(1, S, ESTABLISHED, CLOSE_WAIT, Some(S));
        old.owner = Some(owner(8286, "python3"));
        a.apply(&old);
        a.apply(&t(2, 12 * S, ESTABLISHED, CLOSE_WAIT, Some(S)));
        let mut elsewhere = t(3, 2 * S, ESTABLISHED, CLOSE_WAIT, Some(S));
        elsewhere.netns = 2;
        a.apply(&elsewhere);
        let got = a.lingering(CLOSE_WAIT, 10 * S, 15 * S);
        assert_eq!(
            got,
            [
                Lingering {
                    netns: 1,
                    sockets: 1,
                    oldest_ns: 14 * S,
                    processes: vec!["python3[8286]".into()],
                },
                Lingering {
                    netns: 2,
                    sockets: 1,
                    oldest_ns: 13 * S,
                    processes: Vec::new(),
                },
            ]
        );
    }

    /// Ports in use towards a destination are those sockets hold: not a connect() still
    /// choosing one, nor another namespace's.
    #[test]
    fn ports_in_use_towards_a_destination_are_held_ones_of_the_namespace() {
        let mut a = Aggregator::new();
        a.apply(&t(0, S, SYN_SENT, ESTABLISHED, Some(1)));
        a.apply(&t(1, S, FIN_WAIT2, TIME_WAIT, Some(1)));
        let mut choosing = t(2, S, CLOSE, SYN_SENT, None);
        choosing.sport = 0;
        a.apply(&choosing);
        let mut elsewhere = t(3, S, SYN_SENT, ESTABLISHED, Some(1));
        elsewhere.netns = 2;
        a.apply(&elsewhere);
        let daddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.towards(1, daddr, 80), (2, 1));
        assert_eq!(a.towards(2, daddr, 80), (1, 0));
    }

    #[test]
    fn clients_are_broken_down_by_service_port_and_by_their_own_local_port() {
        let mut a = Aggregator::new();
        // Three clients of port 80, one of them seen again with port 0 (a close).
        for i in 0..3 {
            a.apply(&t(i, S, SYN_SENT, ESTABLISHED, Some(1)));
        }
        let mut closing = t(2, 2 * S, ESTABLISHED, FIN_WAIT1, Some(S));
        closing.sport = 0;
        a.apply(&closing);
        let snap = a.snapshot(3 * S, 0);
        let est = ESTABLISHED as usize;
        assert_eq!(
            snap.top_service_ports[est],
            vec![Talker { key: 80, count: 2 }]
        );
        let local: Vec<u16> = snap.top_local_ports[est].iter().map(|t| t.key).collect();
        assert_eq!(local, [40000, 40001]);
        assert_eq!(
            snap.top_local_ports[FIN_WAIT1 as usize],
            vec![Talker {
                key: 40002,
                count: 1
            }],
            "a port read as 0 keeps the socket's own"
        );
        // A connect() whose port is not chosen yet is in no local port's row.
        let mut connecting = t(9, 3 * S, CLOSE, SYN_SENT, None);
        connecting.sport = 0;
        a.apply(&connecting);
        let snap = a.snapshot(4 * S, 0);
        assert!(snap.top_local_ports[SYN_SENT as usize].is_empty());
        assert_eq!(snap.top_service_ports[SYN_SENT as usize].len(), 1);
    }

    #[test]
    fn sockets_keep_their_process_and_are_broken_down_by_it() {
        let mut a = Aggregator::new();
        a.seed(
            0,
            [Existing {
                sock_id: 100,
                state: CLOSE_WAIT,
                sport: 8080,
                daddr: "10.0.0.9".parse().unwrap(),
                dport: 5000,
                age_ns: None,
                owner: Some(owner(6345, "python3")),
                netns: 1,
                cgroup: 0,
            }],
        );
        for i in 0..3 {
            let mut tr = t(i, S, SYN_SENT, ESTABLISHED, Some(1));
            tr.owner = Some(owner(7, "curl"));
            a.apply(&tr);
            // Later records come from softirq context and name no process.
            a.apply(&t(i, 2 * S, ESTABLISHED, CLOSE_WAIT, Some(S)));
        }
        a.apply(&t(9, 2 * S, ESTABLISHED, CLOSE_WAIT, Some(S)));
        let snap = a.snapshot(3 * S, 0);
        let top = &snap.top_processes[CLOSE_WAIT as usize];
        assert_eq!(
            top.len(),
            2,
            "the socket of no known process is not a row: {top:?}"
        );
        assert_eq!(
            (top[0].key.to_string(), top[0].count),
            ("curl[7]".to_owned(), 3)
        );
        assert_eq!(
            (top[1].key.to_string(), top[1].count),
            ("python3[6345]".to_owned(), 1)
        );
    }

    #[test]
    fn dwell_percentiles_per_state() {
        let mut a = Aggregator::new();
        for i in 0..100u64 {
            a.apply(&t(
                i,
                i * S,
                TIME_WAIT,
                CLOSE,
                Some(60 * S + i * 10_000_000),
            ));
        }
        let snap = a.snapshot(200 * S, 0);
        let tw = snap.state(TIME_WAIT).dwell;
        assert_eq!(tw.count, 100);
        // 60.00 .. 60.99 s: p50 ~60.5 s within hdrhistogram's 3 significant digits.
        assert!((60_400_000_000..60_600_000_000).contains(&tw.p50), "{tw:?}");
        assert!(
            tw.max >= 60_980_000_000 && tw.max <= 61_050_000_000,
            "{tw:?}"
        );
        assert_eq!(
            snap.state(TIME_WAIT)
                .buckets
                .iter()
                .map(|b| b.count)
                .sum::<u64>(),
            100
        );
        assert_eq!(snap.state(ESTABLISHED).dwell.count, 0);
    }

    #[test]
    fn gauges_follow_sockets_in_and_out() {
        let mut a = Aggregator::new();
        a.apply(&t(1, S, CLOSE, SYN_SENT, None));
        a.apply(&t(1, 2 * S, SYN_SENT, ESTABLISHED, Some(S)));
        a.apply(&t(2, 2 * S, CLOSE, SYN_SENT, None));
        assert_eq!((a.count(ESTABLISHED), a.count(SYN_SENT)), (1, 1));
        a.apply(&t(2, 3 * S, SYN_SENT, CLOSE, Some(S)));
        a.apply(&t(1, 4 * S, ESTABLISHED, CLOSE_WAIT, Some(2 * S)));
        let snap = a.snapshot(10 * S, 0);
        assert_eq!(snap.state(SYN_SENT).now, 0);
        assert_eq!(snap.state(ESTABLISHED).now, 0);
        assert_eq!(snap.state(CLOSE_WAIT).now, 1);
        // The CLOSE_WAIT socket has aged 6 s and is still there.
        let age = snap.state(CLOSE_WAIT).age;
        assert_eq!(age.count, 1);
        assert!((5_990_000_000..6_010_000_000).contains(&age.max), "{age:?}");
        assert_eq!(snap.state(CLOSE_WAIT).entered, 1);
        assert_eq!(snap.transitions, 5);
        // Entries reset per interval.
        assert_eq!(a.snapshot(11 * S, 0).state(CLOSE_WAIT).entered, 0);
    }

    #[test]
    fn peaks_outlive_the_sockets_and_keep_their_time() {
        let mut a = Aggregator::new();
        for i in 0..3 {
            a.apply(&t(i, S, ESTABLISHED, CLOSE_WAIT, Some(S)));
        }
        a.snapshot(2 * S, 0);
        for i in 0..3 {
            a.apply(&t(i, 3 * S, CLOSE_WAIT, LAST_ACK, Some(S)));
        }
        // A redraw shows the peak too, without making it one.
        assert_eq!(a.peek(4 * S, 0).state(LAST_ACK).peak.max, 3);
        let snap = a.snapshot(5 * S, 0);
        assert_eq!(snap.state(CLOSE_WAIT).now, 0);
        assert_eq!(snap.state(CLOSE_WAIT).peak, Peak { max: 3, at: 2 * S });
        assert_eq!(snap.state(LAST_ACK).peak, Peak { max: 3, at: 5 * S });
        a.set_recorded_queues(6 * S, 20, Percentiles::default(), 0);
        a.snapshot(6 * S, 0);
        a.set_recorded_queues(7 * S, 0, Percentiles::default(), 0);
        let snap = a.snapshot(7 * S, 0);
        assert_eq!(snap.state(SYN_RECV).peak, Peak { max: 20, at: 6 * S });
    }

    /// A child whose client closed while it waited in the accept queue is CLOSE_WAIT, and
    /// the queue's length counts it too: it is not also ESTABLISHED (as `ss` agrees).
    #[test]
    fn queued_children_followed_already_are_not_counted_twice() {
        let mut a = Aggregator::new();
        let mut listener = t(1, S, CLOSE, LISTEN, None);
        listener.sport = 80;
        a.apply(&listener);
        let mut child = t(7, 2 * S, ESTABLISHED, CLOSE_WAIT, Some(S));
        child.sport = 80;
        a.apply(&child);
        // Two children queued: this one, and one that made no record yet.
        a.set_recorded_queues(3 * S, 0, Percentiles::default(), 2);
        let snap = a.snapshot(3 * S, 0);
        assert_eq!(snap.state(ESTABLISHED).now, 1);
        assert_eq!(snap.state(CLOSE_WAIT).now, 1);
        // accept() takes it: its request socket's record comes, the queue holds one.
        let mut req = t(7, S, SYN_RECV, ESTABLISHED, Some(S));
        req.sport = 80;
        req.synack_retransmits = Some(0);
        a.apply(&req);
        a.set_recorded_queues(4 * S, 0, Percentiles::default(), 1);
        let snap = a.snapshot(4 * S, 0);
        assert_eq!(snap.state(ESTABLISHED).now, 1);
        assert_eq!(snap.state(CLOSE_WAIT).now, 1);
    }

    #[test]
    fn late_request_record_does_not_rewind_the_socket() {
        let mut a = Aggregator::new();
        // The child went on to CLOSE_WAIT before the application accepted it.
        a.apply(&t(7, 5 * S, ESTABLISHED, CLOSE_WAIT, Some(S)));
        let mut req = t(7, 4 * S, SYN_RECV, ESTABLISHED, Some(3 * S));
        req.synack_retransmits = Some(2);
        a.apply(&req);
        assert_eq!(a.count(CLOSE_WAIT), 1);
        assert_eq!(a.count(ESTABLISHED), 0);
        assert_eq!(a.snapshot(6 * S, 0).state(SYN_RECV).dwell.count, 1);
        // The accept()ing process it names owns the CLOSE_WAIT socket from then on.
        let mut accepted = req.clone();
        accepted.owner = Some(owner(42, "python3"));
        a.apply(&accepted);
        let snap = a.snapshot(7 * S, 0);
        assert_eq!(a.count(CLOSE_WAIT), 1);
        assert_eq!(snap.top_processes[CLOSE_WAIT as usize][0].count, 1);
    }

    /// Past the kernel's map of births, a child makes its own SYN_RECV -> ESTABLISHED
    /// record, and its request socket's record (at accept, untimed) follows: one socket
    /// ESTABLISHED, entered once, one handshake completed, the acceptor its owner.
    #[test]
    fn child_told_twice_is_counted_once() {
        let mut a = Aggregator::new();
        a.apply(&t(7, 2 * S, SYN_RECV, ESTABLISHED, None));
        let mut req = t(7, 3 * S, SYN_RECV, ESTABLISHED, None);
        req.synack_retransmits = Some(0);
        req.owner = Some(owner(42, "nginx"));
        a.apply(&req);
        let snap = a.snapshot(4 * S, 0);
        assert_eq!(a.count(ESTABLISHED), 1);
        assert_eq!(snap.state(ESTABLISHED).entered, 1);
        assert_eq!(snap.state(SYN_RECV).entered, 1);
        assert_eq!(snap.handshakes.completed, 1);
        assert_eq!(snap.handshakes.failed, 0);
        assert_eq!(snap.top_processes[ESTABLISHED as usize][0].count, 1);
        // Its ESTABLISHED is timed from its own record, not from accept().
        let mut close = t(7, 5 * S, ESTABLISHED, FIN_WAIT1, None);
        a.complete(&mut close, true);
        assert_eq!(close.dwell_ns, Some(3 * S));
    }

    #[test]
    fn dense_counts_rank_as_the_maps_did() {
        let mut d = DenseCounts::per_state(1 << 16);
        for (port, n) in [
            (443u16, 3),
            (80, 3),
            (22, 1),
            (8080, 2),
            (9, 1),
            (10, 1),
            (11, 1),
        ] {
            for _ in 0..n {
                d.add(TIME_WAIT as usize, port.into());
            }
        }
        let top: Vec<(u16, u64)> = d
            .top(TIME_WAIT as usize, |k| k as u16)
            .into_iter()
            .map(|t| (t.key, t.count))
            .collect();
        assert_eq!(top, [(80, 3), (443, 3), (8080, 2), (9, 1), (10, 1)]);
        assert!(d.top(ESTABLISHED as usize, |k| k as u16).is_empty());
        // A key past the table (a process index from after it was sized) is not counted.
        let mut small = DenseCounts::per_state(2);
        small.add(0, 5);
        assert!(small.top(0, |k| k).is_empty());
    }

    #[test]
    fn census_seed_counts_and_known_ages() {
        let mut a = Aggregator::new();
        let remote: IpAddr = "192.0.2.9".parse().unwrap();
        a.seed(
            100 * S,
            [
                Existing {
                    sock_id: 1,
                    state: LISTEN,
                    sport: 80,
                    daddr: "0.0.0.0".parse().unwrap(),
                    dport: 0,
                    age_ns: None,
                    owner: None,
                    netns: 1,
                    cgroup: 0,
                },
                Existing {
                    sock_id: 2,
                    state: ESTABLISHED,
                    sport: 80,
                    daddr: remote,
                    dport: 5555,
                    age_ns: None,
                    owner: None,
                    netns: 1,
                    cgroup: 0,
                },
                Existing {
                    sock_id: 3,
                    state: TIME_WAIT,
                    sport: 80,
                    daddr: remote,
                    dport: 5556,
                    age_ns: Some(20 * S),
                    owner: None,
                    netns: 1,
                    cgroup: 0,
                },
            ],
        );
        let snap = a.snapshot(100 * S, 0);
        assert_eq!(snap.state(LISTEN).now, 1);
        assert_eq!(snap.state(ESTABLISHED).now, 1);
        assert_eq!(snap.state(TIME_WAIT).now, 1);
        assert_eq!(
            snap.state(ESTABLISHED).age.count,
            0,
            "age unknown for census sockets"
        );
        assert_eq!(snap.state(TIME_WAIT).age.count, 1);
        // Accepted sockets are keyed by the listening port, remote by address.
        assert_eq!(snap.top_service_ports[TIME_WAIT as usize][0].key, 80);
        assert_eq!(snap.top_remotes[ESTABLISHED as usize][0].key, remote);
        // The census socket's end is counted out, and a dwell with unknown start is not
        // invented.
        a.apply(&t(3, 140 * S, TIME_WAIT, CLOSE, None));
        assert_eq!(a.count(TIME_WAIT), 0);
        assert_eq!(a.snapshot(141 * S, 0).state(TIME_WAIT).dwell.count, 0);
    }

    #[test]
    fn top_talkers_are_sorted_and_bounded() {
        let mut a = Aggregator::new();
        for i in 0..20u64 {
            let mut tr = t(i, S, FIN_WAIT2, TIME_WAIT, Some(1));
            tr.daddr = IpAddr::from([10, 0, 0, (i % 7) as u8]);
            a.apply(&tr);
        }
        let snap = a.snapshot(2 * S, 0);
        let top = &snap.top_remotes[TIME_WAIT as usize];
        assert_eq!(top.len(), TOP_N);
        assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
        assert_eq!(top[0].count, 3);
    }

    #[test]
    fn a_live_socket_costs_40_bytes_of_the_mirror() {
        // A million of them in 2^21 buckets (the table keeps 1/8 free), each with its key
        // and a tag byte: 103 MB of the 150 MB target at a million TIME_WAIT sockets.
        assert!(std::mem::size_of::<Live>() <= 40);
    }

    /// The kernel leaves dwell to userspace where it keys sockets by cookie: the record
    /// that entered the state times it, in the kernel's own clock.
    #[test]
    fn a_state_is_timed_from_the_record_that_entered_it() {
        let mut a = Aggregator::new();
        for (at, old, new) in [(S, CLOSE, SYN_SENT), (3 * S, SYN_SENT, ESTABLISHED)] {
            let mut x = t(1, at, old, new, None);
            a.complete(&mut x, true);
            a.apply(&x);
            if old == SYN_SENT {
                assert_eq!(x.dwell_ns, Some(2 * S));
            }
        }
        // What the kernel timed itself is kept.
        let mut x = t(1, 10 * S, ESTABLISHED, FIN_WAIT1, Some(123));
        a.complete(&mut x, true);
        assert_eq!(x.dwell_ns, Some(123));
    }

    /// Unknown stays unknown where the mirror cannot tell: a socket never seen, one
    /// whose entry into the state left was not seen (a missed flip, a census estimate),
    /// and a request socket's end, which carries its own.
    #[test]
    fn a_state_not_seen_entered_is_not_timed() {
        let mut a = Aggregator::new();
        let mut never = t(9, 5 * S, ESTABLISHED, CLOSE_WAIT, None);
        a.complete(&mut never, true);
        assert_eq!(never.dwell_ns, None);

        a.apply(&t(1, S, FIN_WAIT1, FIN_WAIT2, None));
        // The orphan's flip to TIME_WAIT was missed: its death says TIME_WAIT.
        let mut death = t(1, 61 * S, TIME_WAIT, CLOSE, None);
        a.complete(&mut death, true);
        assert_eq!(death.dwell_ns, None);

        a.seed(
            100 * S,
            [Existing {
                sock_id: 2,
                state: TIME_WAIT,
                sport: 80,
                daddr: "192.0.2.9".parse().unwrap(),
                dport: 5555,
                age_ns: Some(S),
                owner: None,
                netns: 1,
                cgroup: 0,
            }],
        );
        let mut seeded = t(2, 130 * S, TIME_WAIT, CLOSE, None);
        a.complete(&mut seeded, true);
        assert_eq!(seeded.dwell_ns, None);

        a.apply(&t(3, S, LISTEN, SYN_RECV, None));
        let mut request = t(3, 2 * S, SYN_RECV, ESTABLISHED, None);
        request.synack_retransmits = Some(0);
        a.complete(&mut request, true);
        assert_eq!(request.dwell_ns, None);
    }

    /// A record made in softirq context names no process, and a timewait socket's carries
    /// no cgroup: they are the socket's from its earlier records.
    #[test]
    fn records_carrying_no_process_or_cgroup_get_their_sockets() {
        let mut a = Aggregator::new();
        let mut connect = t(1, S, CLOSE, SYN_SENT, None);
        connect.owner = Some(owner(4242, "curl"));
        connect.cgroup = 77;
        a.apply(&connect);
        let mut later = t(1, 2 * S, SYN_SENT, ESTABLISHED, None);
        a.complete(&mut later, true);
        assert_eq!(later.owner, Some(owner(4242, "curl")));
        assert_eq!(later.cgroup, 77);
        // What a record carries is its own.
        let mut own = t(1, 3 * S, SYN_SENT, ESTABLISHED, None);
        own.cgroup = 78;
        a.complete(&mut own, true);
        assert_eq!(own.cgroup, 78);
        let mut stranger = t(2, 3 * S, ESTABLISHED, CLOSE_WAIT, None);
        a.complete(&mut stranger, true);
        assert_eq!((stranger.owner, stranger.cgroup), (None, 0));
        // Not whole: the dwell only.
        let mut lean = t(1, 4 * S, SYN_SENT, ESTABLISHED, None);
        a.complete(&mut lean, false);
        assert_eq!(
            (lean.dwell_ns, lean.owner, lean.cgroup),
            (Some(3 * S), None, 0)
        );
    }
}
