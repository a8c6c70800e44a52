//! The cost ladder: what to re-read, and when.
//!
//! Reading `smaps_rollup`/`smaps` walks the target's page tables under its mmap lock, so an always-on
//! agent must not re-read what did not change. Every tick each process's `statm` (O(1), no page
//! walk) is fed to a [`Ladder`] per tier; the ladder says which processes are due:
//!
//! - `new`: never read (or its pid was reused);
//! - `dirty`: the eBPF tracker saw a layout change (mmap, munmap, brk, shm*, exec…);
//! - `layout`: `statm`'s virtual size changed (polling mode's stand-in for `dirty`);
//! - `residency`: resident or shared pages moved by at least the tier's threshold since its last read;
//! - `shared_change`: an object it maps gained or lost a mapper (smaps tier);
//! - `stale`: its last read is older than `max_staleness` — the bound on how old any number can be.
//!
//! A per-tick time budget caps the work: what is left rolls to the next tick, oldest first, so
//! nothing is skipped forever.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::procfs::statm::Statm;

/// Why a process is re-read. Ordered by urgency (lowest first served first among equally old).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    New,
    Dirty,
    Layout,
    Residency,
    SharedChange,
    Stale,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::New,
        Reason::Dirty,
        Reason::Layout,
        Reason::Residency,
        Reason::SharedChange,
        Reason::Stale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Dirty => "dirty",
            Reason::Layout => "layout",
            Reason::Residency => "residency",
            Reason::SharedChange => "shared_change",
            Reason::Stale => "stale",
        }
    }
}

/// Thresholds of one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierPolicy {
    /// Resident/shared movement (bytes) since the last read that makes a process due.
    pub min_change_bytes: u64,
    /// A process not read for this long is due.
    pub max_staleness: Duration,
    /// Whether a change of `statm`'s virtual size makes a process due (smaps tier: the layout).
    pub layout_changes: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    /// `statm` at the last read (None: never read).
    read_statm: Option<Statm>,
    last_read: Option<Instant>,
    /// Latest `statm` seen.
    statm: Statm,
    /// Why and since when it is due, if it is.
    pending: Option<(Reason, Instant)>,
    /// Reads so far: the staleness deadline after the first one is spread (see [`stale_after`]).
    reads: u64,
}

/// When a process first read at time t is re-read for staleness: between 3/4 and all of
/// `max_staleness` after t, spread by pid, so processes first read together (at start) don't all
/// expire in the same tick. Later deadlines are the full `max_staleness`, which keeps the phases
/// apart without paying for the spread again. Never later than `max_staleness`.
pub fn stale_after(max_staleness: Duration, pid: u32) -> Duration {
    // Fibonacci hashing spreads consecutive pids; 1/4 of the bound is the spread.
    let h = pid.wrapping_mul(0x9E37_79B9) >> 16; // 0..65535
    let spread = max_staleness / 4;
    max_staleness - spread.mul_f64(f64::from(h) / 65_536.0)
}

/// Per-tier bookkeeping of which processes are due.
#[derive(Debug)]
pub struct Ladder {
    policy: TierPolicy,
    page_size: u64,
    entries: HashMap<u32, Entry>,
    /// How long a run takes before its numbers are emitted: a number that would pass its deadline
    /// within this margin is re-read now, so no emitted number is older than `max_staleness`.
    margin: Duration,
}

impl Ladder {
    pub fn new(policy: TierPolicy, page_size: u64) -> Ladder {
        Ladder {
            policy,
            page_size,
            entries: HashMap::new(),
            margin: Duration::ZERO,
        }
    }

    fn set_pending(e: &mut Entry, reason: Reason, now: Instant) {
        match &mut e.pending {
            // Keep the oldest "since" (carry-over order) and the most urgent reason.
            Some((r, _)) => *r = (*r).min(reason),
            None => e.pending = Some((reason, now)),
        }
    }

    /// Feeds this tick's `statm` of `pid`.
    pub fn observe(&mut self, pid: u32, statm: Statm, now: Instant) {
        let policy = self.policy;
        let page = self.page_size;
        let e = self.entries.entry(pid).or_insert_with(|| Entry {
            read_statm: None,
            last_read: None,
            statm,
            pending: None,
            reads: 0,
        });
        e.statm = statm;
        let Some(read) = e.read_statm else {
            Self::set_pending(e, Reason::New, now);
            return;
        };
        if policy.layout_changes && read.size != statm.size {
            Self::set_pending(e, Reason::Layout, now);
        }
        let moved = read.resident.abs_diff(statm.resident) + read.shared.abs_diff(statm.shared);
        if moved * page >= policy.min_change_bytes.max(1) {
            Self::set_pending(e, Reason::Residency, now);
        }
        let deadline = if e.reads <= 1 {
            stale_after(policy.max_staleness, pid)
        } else {
            policy.max_staleness
        };
        let margin = self.margin.min(deadline / 2);
        if e.last_read
            .is_some_and(|t| now.saturating_duration_since(t) + margin >= deadline)
        {
            Self::set_pending(e, Reason::Stale, now);
        }
    }

    /// Marks `pid` due for `reason` (tracker marks, shared-object changes). Unknown pids are kept
    /// until their `statm` is observed.
    pub fn mark(&mut self, pid: u32, reason: Reason, now: Instant) {
        if let Some(e) = self.entries.get_mut(&pid) {
            Self::set_pending(e, reason, now);
        }
    }

    /// The due processes, oldest first (then by urgency, then pid).
    pub fn due(&self) -> Vec<(u32, Reason)> {
        let mut v: Vec<(Instant, Reason, u32)> = self
            .entries
            .iter()
            .filter_map(|(pid, e)| e.pending.map(|(r, since)| (since, r, *pid)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, r, pid)| (pid, r)).collect()
    }

    /// Records that `pid` was read now.
    pub fn done(&mut self, pid: u32, now: Instant) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.read_statm = Some(e.statm);
            e.last_read = Some(now);
            e.pending = None;
            e.reads += 1;
        }
    }

    /// Tier 1 of a run: feeds every process's `statm` from this tick's pass, forgets processes
    /// that are gone, then applies the tracker's marks for `tier`. Returns the live pids and how
    /// many vanished. An unreadable `statm` (hidepid) keeps the process: the next tier says why.
    pub fn observe_all(
        &mut self,
        pass: &StatmPass,
        dirty: &DirtyHub,
        tier: Tier,
        now: Instant,
    ) -> (HashSet<u32>, u32) {
        let mut live = HashSet::with_capacity(pass.processes.len());
        let mut vanished = 0;
        for &(pid, read) in &pass.processes {
            match read {
                StatmRead::Read(statm) => {
                    live.insert(pid);
                    self.observe(pid, statm, now);
                }
                StatmRead::Gone => vanished += 1,
                StatmRead::Unreadable => {
                    live.insert(pid);
                    self.observe(pid, Statm::default(), now);
                }
            }
        }
        self.retain(&live);
        for pid in dirty.take(tier) {
            self.mark(pid, Reason::Dirty, now);
        }
        (live, vanished)
    }

    /// Records how long a run took (from its statm pass to its emission). The next run re-reads a
    /// number for staleness when it would pass its deadline within twice that.
    pub fn set_run_length(&mut self, d: Duration) {
        self.margin = d * 2;
    }

    /// Forgets `pid` (gone, or its pid was reused: it will be `new` again).
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Keeps only `live` pids.
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.entries.retain(|pid, _| live.contains(pid));
    }

    /// Age of the oldest read among tracked processes (how stale the oldest number is).
    pub fn oldest_read_age(&self, now: Instant) -> Option<Duration> {
        self.entries
            .values()
            .filter_map(|e| e.last_read)
            .map(|t| now.saturating_duration_since(t))
            .max()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Dirty marks from the tracker, handed to each tier that consumes them. A mark is delivered to
/// every consumer exactly once.
#[derive(Debug, Default)]
pub struct DirtyHub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    /// Marks not yet taken, per consumer.
    pending: [HashSet<u32>; 2],
    received: u64,
}

/// A consumer of dirty marks.
#[derive(Debug, Clone, Copy)]
pub enum Tier {
    Rollup = 0,
    Smaps = 1,
}

impl DirtyHub {
    /// Adds marks (tgids) for every consumer.
    pub fn publish(&self, tgids: impl IntoIterator<Item = u32>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for t in tgids {
            g.received += 1;
            for set in &mut g.pending {
                set.insert(t);
            }
        }
    }

    /// Takes the marks not yet taken by `tier`.
    pub fn take(&self, tier: Tier) -> HashSet<u32> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut g.pending[tier as usize])
    }

    /// Marks received since start.
    pub fn received(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received
    }
}

/// Re-reads per tier and reason, and what was left for the next tick; reported in the `agent` record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TierStats {
    /// Reads by reason since start.
    pub rereads: std::collections::BTreeMap<&'static str, u64>,
    /// Processes due but left for the next tick by the time budget, in the last run.
    pub carried_over: u64,
    /// Age in ms of the oldest number this tier holds, at its last run.
    pub oldest_read_age_ms: u64,
    /// Processes tracked.
    pub tracked: u64,
}

impl TierStats {
    pub fn count(&mut self, reason: Reason) {
        *self.rereads.entry(reason.name()).or_default() += 1;
    }

    /// Closes a run: what the budget carried over, how many are tracked, the oldest number's age.
    pub fn finish_run(&mut self, ladder: &Ladder, carried_over: u64, now: Instant) {
        self.carried_over = carried_over;
        self.tracked = ladder.len() as u64;
        self.oldest_read_age_ms = ladder
            .oldest_read_age(now)
            .map_or(0, |d| d.as_millis() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statm(size: u64, resident: u64) -> Statm {
        Statm {
            size,
            resident,
            shared: 0,
            text: 0,
            data: 0,
        }
    }

    fn ladder() -> Ladder {
        Ladder::new(
            TierPolicy {
                min_change_bytes: 16 * 4096,
                max_staleness: Duration::from_secs(60),
                layout_changes: true,
            },
            4096,
        )
    }

    #[test]
    fn new_processes_are_due_then_quiet() {
        let mut l = ladder();
        let t0 = Instant::now();
        l.observe(1, statm(100, 10), t0);
        assert_eq!(l.due(), vec![(1, Reason::New)]);
        l.done(1, t0);
        l.observe(1, statm(100, 10), t0 + Duration::from_secs(10));
        assert!(l.due().is_empty(), "an idle process is not re-read");
    }

    #[test]
    fn residency_and_layout_thresholds() {
        let mut l = ladder();
        let t0 = Instant::now();
        l.observe(1, statm(100, 10), t0);
        l.done(1, t0);
        l.observe(1, statm(100, 25), t0);
        assert!(l.due().is_empty(), "15 pages < 16-page threshold");
        l.observe(1, statm(100, 26), t0);
        assert_eq!(l.due(), vec![(1, Reason::Residency)]);
        l.done(1, t0);
        l.observe(1, statm(101, 26), t0);
        assert_eq!(l.due(), vec![(1, Reason::Layout)]);
    }

    #[test]
    fn staleness_bounds_the_age() {
        let mut l = ladder();
        let t0 = Instant::now();
        let pid = 7;
        let after = stale_after(Duration::from_secs(60), pid);
        l.observe(pid, statm(1, 1), t0);
        l.done(pid, t0);
        l.observe(pid, statm(1, 1), t0 + after - Duration::from_millis(1));
        assert!(l.due().is_empty());
        l.observe(pid, statm(1, 1), t0 + after);
        assert_eq!(l.due(), vec![(pid, Reason::Stale)]);
        assert_eq!(l.oldest_read_age(t0 + after), Some(after));
    }

    #[test]
    fn a_number_that_would_expire_during_the_run_is_read_now() {
        let mut l = ladder();
        let pid = 7;
        let t0 = Instant::now();
        let after = stale_after(Duration::from_secs(60), pid);
        l.observe(pid, statm(1, 1), t0);
        l.done(pid, t0);
        l.set_run_length(Duration::from_millis(500));
        l.observe(pid, statm(1, 1), t0 + after - Duration::from_millis(1001));
        assert!(l.due().is_empty());
        l.observe(pid, statm(1, 1), t0 + after - Duration::from_millis(1000));
        assert_eq!(l.due(), vec![(pid, Reason::Stale)]);
    }

    #[test]
    fn only_the_first_deadline_is_spread() {
        let mut l = ladder();
        let max = Duration::from_secs(60);
        let pid = 7;
        let t0 = Instant::now();
        l.observe(pid, statm(1, 1), t0);
        l.done(pid, t0);
        let t1 = t0 + stale_after(max, pid);
        l.observe(pid, statm(1, 1), t1);
        assert_eq!(l.due(), vec![(pid, Reason::Stale)]);
        l.done(pid, t1);
        l.observe(pid, statm(1, 1), t1 + max - Duration::from_millis(1));
        assert!(
            l.due().is_empty(),
            "second deadline is the full max_staleness"
        );
        l.observe(pid, statm(1, 1), t1 + max);
        assert_eq!(l.due(), vec![(pid, Reason::Stale)]);
    }

    #[test]
    fn stale_deadlines_are_spread_but_bounded() {
        let max = Duration::from_secs(60);
        let deadlines: Vec<Duration> = (1..=1000).map(|pid| stale_after(max, pid)).collect();
        assert!(deadlines.iter().all(|d| *d <= max && *d >= max * 3 / 4));
        let distinct: HashSet<u128> = deadlines.iter().map(|d| d.as_millis() / 1000).collect();
        assert!(
            distinct.len() >= 10,
            "spread over at least 10 seconds: {distinct:?}"
        );
    }

    #[test]
    fn carry_over_is_oldest_first_and_keeps_the_oldest_since() {
        let mut l = ladder();
        let t0 = Instant::now();
        for pid in [1, 2, 3] {
            l.observe(pid, statm(1, 1), t0);
            l.done(pid, t0);
        }
        l.mark(3, Reason::Dirty, t0 + Duration::from_secs(1));
        l.mark(1, Reason::Dirty, t0 + Duration::from_secs(2));
        l.mark(2, Reason::Dirty, t0 + Duration::from_secs(3));
        // Marked again later: keeps its original place in line.
        l.mark(3, Reason::SharedChange, t0 + Duration::from_secs(4));
        assert_eq!(
            l.due(),
            vec![(3, Reason::Dirty), (1, Reason::Dirty), (2, Reason::Dirty)]
        );
    }

    #[test]
    fn statm_pass_is_read_once_per_tick_and_root() {
        let shared = Shared::default();
        let root = std::path::Path::new("/proc");
        let mut reads = 0;
        let mut read = |pid| {
            reads += 1;
            Ok::<_, ()>(StatmPass {
                processes: vec![(pid, StatmRead::Gone)],
            })
        };
        let a = shared.statm_pass(1, root, || read(1)).expect("read");
        let b = shared.statm_pass(1, root, || read(2)).expect("reused");
        assert_eq!(a, b, "the second tier of tick 1 reuses the pass");
        let c = shared.statm_pass(2, root, || read(3)).expect("read");
        assert_eq!(c.processes[0].0, 3, "a new tick reads again");
        let d = shared
            .statm_pass(2, std::path::Path::new("/other"), || read(4))
            .expect("read");
        assert_eq!(d.processes[0].0, 4, "another root reads again");
        assert_eq!(reads, 3);
    }

    #[test]
    fn hub_delivers_each_mark_to_each_tier_once() {
        let hub = DirtyHub::default();
        hub.publish([1, 2]);
        assert_eq!(hub.take(Tier::Rollup), [1, 2].into_iter().collect());
        assert!(hub.take(Tier::Rollup).is_empty());
        hub.publish([3]);
        assert_eq!(hub.take(Tier::Smaps), [1, 2, 3].into_iter().collect());
        assert_eq!(hub.received(), 3);
    }
}

/// What tier 1 saw of one process this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatmRead {
    Read(Statm),
    /// The process vanished (ENOENT/ESRCH).
    Gone,
    /// `statm` unreadable for another reason (hidepid…): the process is live, its numbers unknown.
    Unreadable,
}

/// One tick's tier-1 pass: every process id and its `statm`, in pid order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatmPass {
    pub processes: Vec<(u32, StatmRead)>,
}

/// State shared by the scheduler (which feeds tracker marks), the collectors (which consume them and
/// report their tier statistics) and the store (which reports them in the `agent` record).
#[derive(Debug, Default)]
pub struct Shared {
    pub dirty: DirtyHub,
    tiers: Mutex<std::collections::BTreeMap<&'static str, TierStats>>,
    tracker: Mutex<TrackerCounters>,
    /// `statm` descriptors kept open between passes (see [`crate::procfs::OpenFiles`]).
    pub statm_files: Mutex<Option<crate::procfs::OpenFiles>>,
    /// The last tier-1 pass, by tick and `/proc` root.
    statm: Mutex<Option<(u64, std::path::PathBuf, std::sync::Arc<StatmPass>)>>,
}

/// The tracker's own counters, as last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    pub marks_dropped: u64,
    pub events_received: u64,
    pub events_lost: u64,
}

impl Shared {
    /// The tier-1 pass of `tick` over `root`: the first tier to ask in a tick runs `read`, the
    /// others get its result. Both tiers need the same pid list and `statm`s at the same moment,
    /// and this pass is the ladder's fixed cost per tick, so it is paid once, not once per tier.
    /// The lock is held while `read` runs, so a tier asking meanwhile waits for the result.
    pub fn statm_pass<E>(
        &self,
        tick: u64,
        root: &std::path::Path,
        read: impl FnOnce() -> Result<StatmPass, E>,
    ) -> Result<std::sync::Arc<StatmPass>, E> {
        let mut g = self.statm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, r, pass)) = &*g
            && *t == tick
            && r == root
        {
            return Ok(std::sync::Arc::clone(pass));
        }
        let pass = std::sync::Arc::new(read()?);
        *g = Some((tick, root.to_path_buf(), std::sync::Arc::clone(&pass)));
        Ok(pass)
    }

    /// Replaces the statistics of `tier`.
    pub fn set_tier_stats(&self, tier: &'static str, stats: TierStats) {
        self.tiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tier, stats);
    }

    pub fn tier_stats(&self) -> std::collections::BTreeMap<&'static str, TierStats> {
        self.tiers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_tracker_counters(&self, c: TrackerCounters) {
        *self.tracker.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    pub fn tracker_counters(&self) -> TrackerCounters {
        *self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}
