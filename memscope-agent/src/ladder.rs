//! The cost ladder: what to re-read, and when.
//!
//! Reading `smaps_rollup`/`smaps` walks the target's page tables under its mmap lock, so an always-on
//! agent must not re-read what did not change. Every tick each process's `statm` (O(1), no page
//! walk) is fed to a [`Ladder`] per tier; the ladder says which processes are due:
//!
//! - `new`: never read (or its pid was reused);
//! - `dirty`: the eBPF tracker marked it: a mapping change or exec (both tiers), or anonymous
//!   growth/shrinkage past `min_change` (the rollup tier only; see [`crate::proc_events::Scope`]).
//!   A process marked over and over is re-read at most once per [`DIRTY_HOLD_PER_GIB`] per GiB
//!   resident (a read stalls it about 3.8 ms per GiB), never past `max_staleness`;
//! - `overflow`: the tracker lost marks or events (dirty map or ring buffer full), so every process
//!   is suspect; served oldest number first, under the budget;
//! - `layout`: `statm`'s virtual size outside private writable and stack mappings changed
//!   (polling mode's stand-in for `dirty`: anonymous churn does not move it);
//! - `residency`: resident or shared pages moved by at least the tier's threshold since its last read;
//! - `stale`: its last read is older than `max_staleness` — the bound on how old any number can be.
//!
//! A per-tick time budget caps the work: what is left rolls to the next tick, oldest first, so
//! nothing is skipped forever.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    proc_events::{ProcEvent, Scope},
    procfs::{
        FileClass, OpenFiles, ProcError, ProcFs, Reopened,
        statm::{Statm, parse_statm},
    },
};

/// Why a process is re-read. Ordered by urgency (lowest first served first among equally old).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    New,
    Dirty,
    Overflow,
    Layout,
    Residency,
    Stale,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::New,
        Reason::Dirty,
        Reason::Overflow,
        Reason::Layout,
        Reason::Residency,
        Reason::Stale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Dirty => "dirty",
            Reason::Overflow => "overflow",
            Reason::Layout => "layout",
            Reason::Residency => "residency",
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
    /// The tracker marks this tier acts on.
    pub scope: Scope,
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
    /// A `dirty` mark held back until then (see [`Ladder::mark_held`]); any other reason clears it.
    held_until: Option<Instant>,
}

/// How long a process marked `dirty` over and over waits after a read before the next one, per GiB
/// it has resident: reading its `smaps` holds its mmap lock about 3.8 ms per resident GiB
/// (docs/design.md), so this keeps the stall under 0.2 % of its time. A 100 MiB process is not held
/// (0.2 s, less than a tick); a 2 GiB one is re-read at most every 4 s; never past `max_staleness`.
pub const DIRTY_HOLD_PER_GIB: Duration = Duration::from_secs(2);

/// A hold shorter than this is no hold: the process is re-read at the next tick, however soon
/// after its last read it was marked (a 100 MiB process, 0.2 s, is not held).
pub const DIRTY_HOLD_FLOOR: Duration = Duration::from_millis(250);

/// [`DIRTY_HOLD_PER_GIB`] for `resident` bytes; zero under [`DIRTY_HOLD_FLOOR`].
pub fn dirty_hold(resident: u64) -> Duration {
    let hold = DIRTY_HOLD_PER_GIB.mul_f64(resident as f64 / f64::from(1u32 << 30));
    if hold < DIRTY_HOLD_FLOOR {
        Duration::ZERO
    } else {
        hold
    }
}

/// When a process first read at time t is re-read for staleness: somewhere in `(0, max_staleness]`
/// after t, spread uniformly by pid, so processes first read together (at start) are re-read at a
/// steady rate — `interval / max_staleness` of them per tick — rather than in a burst. Later
/// deadlines are the full `max_staleness`, which keeps the phases apart without paying for the
/// spread again. Never later than `max_staleness`.
///
/// The whole range, not a part of it: a spread over the last quarter (as before) bunched every
/// process read at start into a quarter of each `max_staleness` forever after (an idle process is
/// only ever re-read for staleness, one full `max_staleness` after its last read), so one tick in
/// four re-read four times the steady rate and the others none.
pub fn stale_after(max_staleness: Duration, pid: u32) -> Duration {
    // Fibonacci hashing spreads consecutive pids.
    let h = pid.wrapping_mul(0x9E37_79B9) >> 16; // 0..65535
    max_staleness.mul_f64(f64::from(h + 1) / 65_536.0)
}

/// The virtual size of what can be a shared object: `statm`'s size without its `data` (private
/// writable and stack mappings, `data_vm + stack_vm`), the quantity the eBPF tracker's release
/// check watches too (`total_vm - data_vm - stack_vm`). Anonymous churn (malloc, a JIT's or a
/// runtime's heap) moves size and data alike and leaves it; mapping or unmapping a file, memfd,
/// shm or SysV segment, or any shared or read-only mapping, moves it. Not seen: a private writable
/// mapping of a file (counted as data), and a same-size swap — the tracker's limits as well
/// (docs/design.md, "What the eBPF tracker marks"); residency or staleness catches them.
fn mapped_size(s: Statm) -> u64 {
    s.size.saturating_sub(s.data)
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
    /// The tracker marks every layout change (eBPF): `statm`'s virtual size is not a layout signal.
    layout_tracked: bool,
    /// The latest time seen (runs, observations): held marks whose time has come are due.
    clock: Option<Instant>,
}

impl Ladder {
    pub fn new(policy: TierPolicy, page_size: u64) -> Ladder {
        Ladder {
            policy,
            page_size,
            entries: HashMap::new(),
            margin: Duration::ZERO,
            layout_tracked: false,
            clock: None,
        }
    }

    /// Whether the tracker's marks cover every layout change (eBPF attached): then a change of
    /// `statm`'s virtual size no longer makes a process due for `layout` (anonymous churn moves it
    /// without changing any object).
    pub fn set_layout_tracked(&mut self, tracked: bool) {
        self.layout_tracked = tracked;
    }

    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    fn set_pending(e: &mut Entry, reason: Reason, now: Instant) {
        e.held_until = None;
        match &mut e.pending {
            // Keep the oldest "since" (carry-over order) and the most urgent reason.
            Some((r, since)) => {
                *r = (*r).min(reason);
                *since = (*since).min(now);
            }
            None => e.pending = Some((reason, now)),
        }
    }

    /// Feeds this tick's `statm` of `pid`.
    pub fn observe(&mut self, pid: u32, statm: Statm, now: Instant) {
        self.tick(now);
        let policy = self.policy;
        let page = self.page_size;
        let e = self.entries.entry(pid).or_insert_with(|| Entry {
            read_statm: None,
            last_read: None,
            statm,
            pending: None,
            reads: 0,
            held_until: None,
        });
        e.statm = statm;
        let Some(read) = e.read_statm else {
            Self::set_pending(e, Reason::New, now);
            return;
        };
        if policy.layout_changes && !self.layout_tracked && mapped_size(read) != mapped_size(statm)
        {
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

    /// Marks `pid` due for `reason` (tracker marks, overflow). Unknown pids are kept
    /// until their `statm` is observed.
    pub fn mark(&mut self, pid: u32, reason: Reason, now: Instant) {
        if let Some(e) = self.entries.get_mut(&pid) {
            Self::set_pending(e, reason, now);
        }
    }

    /// Marks `pid` `dirty` for a tracker mark, held back while its last read is more recent than
    /// [`dirty_hold`] of its resident size (at most `max_staleness`). A mark of a process already
    /// due for something else is not held; a held one is released by any other reason.
    pub fn mark_held(&mut self, pid: u32, now: Instant) {
        self.tick(now);
        let page = self.page_size;
        let max = self.policy.max_staleness;
        let Some(e) = self.entries.get_mut(&pid) else {
            return;
        };
        let hold = dirty_hold(e.statm.resident.saturating_mul(page)).min(max);
        let until = e.last_read.map(|t| t + hold).filter(|t| *t > now);
        let (was_pending, held) = (e.pending.is_some(), e.held_until);
        Self::set_pending(e, Reason::Dirty, now);
        e.held_until = if was_pending { held } else { until };
    }

    /// The due processes, oldest first (then by urgency, then pid). A held mark is due once its
    /// time has come (see [`Ladder::mark_held`]).
    pub fn due(&self) -> Vec<(u32, Reason)> {
        let clock = self.clock;
        let mut v: Vec<(Instant, Reason, u32)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.held_until
                    .is_none_or(|until| clock.is_some_and(|c| c >= until))
            })
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
            e.held_until = None;
            e.reads += 1;
        }
    }

    /// Tier 1 of a run: applies the tracker's events (in order), then feeds every process's `statm`
    /// from this tick's pass and forgets processes that are gone. An unreadable `statm` (hidepid)
    /// keeps the process: the next tier says why.
    ///
    /// - `Exit`: forgotten now; the pid is left out of this run even if `/proc` still lists it (a
    ///   zombie not yet reaped); if it is listed next run, it is someone `new`.
    /// - `Fork` and a reused pid (`StatmRead::Reused`): forgotten, then `new`.
    /// - `Exec` and a `Mark` whose scope this tier cares about: `dirty` (a `Mark` held back for a
    ///   large process read recently, see [`Ladder::mark_held`]).
    /// - `Overflow`: every process is due (`overflow`), oldest number first.
    pub fn run_tier1(&mut self, pass: &StatmPass, events: &[ProcEvent], now: Instant) -> Tier1 {
        let mut out = Tier1::default();
        let mut exited: HashSet<u32> = HashSet::new();
        self.tick(now);
        // (pid, may be held): an exec is read at once, a mark may wait (see `mark_held`).
        let mut dirty: Vec<(u32, bool)> = Vec::new();
        let mut overflow = false;
        for ev in events {
            match *ev {
                ProcEvent::Exit { pid } => {
                    self.forget(pid);
                    dirty.retain(|(p, _)| *p != pid);
                    exited.insert(pid);
                    out.forgotten.push(pid);
                }
                ProcEvent::Fork { pid } => {
                    self.forget(pid);
                    dirty.retain(|(p, _)| *p != pid);
                    exited.remove(&pid);
                    out.forgotten.push(pid);
                }
                ProcEvent::Exec { pid } => dirty.push((pid, false)),
                ProcEvent::Mark { pid, scope } if scope.intersects(self.policy.scope) => {
                    dirty.push((pid, true));
                }
                ProcEvent::Mark { .. } => {}
                ProcEvent::Overflow => overflow = true,
            }
        }
        out.live.reserve(pass.processes.len());
        for &(pid, read) in &pass.processes {
            if exited.contains(&pid) {
                continue;
            }
            match read {
                StatmRead::Read(statm) => {
                    out.live.insert(pid);
                    self.observe(pid, statm, now);
                }
                StatmRead::Reused(statm) => {
                    self.forget(pid);
                    out.forgotten.push(pid);
                    out.live.insert(pid);
                    self.observe(pid, statm, now);
                }
                StatmRead::Gone => out.vanished += 1,
                StatmRead::Unreadable => {
                    out.live.insert(pid);
                    self.observe(pid, Statm::default(), now);
                }
            }
        }
        // Every live pid has its entry now: as many entries as live pids means none is gone.
        if self.entries.len() != out.live.len() {
            self.retain(&out.live);
        }
        // Held marks first: an exec of the same pid then releases the hold.
        dirty.sort_by_key(|(_, held)| !held);
        for (pid, held) in dirty {
            if held {
                self.mark_held(pid, now);
            } else {
                self.mark(pid, Reason::Dirty, now);
            }
        }
        if overflow {
            self.mark_all(Reason::Overflow, now);
        }
        out
    }

    /// Marks every tracked process due for `reason`, each since its last read, so the budget
    /// serves the oldest numbers first.
    pub fn mark_all(&mut self, reason: Reason, now: Instant) {
        for e in self.entries.values_mut() {
            let since = e.last_read.unwrap_or(now).min(now);
            Self::set_pending(e, reason, since);
        }
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
        crate::collectors::shrink_sparse(&mut self.entries);
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

/// What tier 1 of a run found.
#[derive(Debug, Default)]
pub struct Tier1 {
    /// Processes alive in this run.
    pub live: HashSet<u32>,
    /// Processes that vanished during the pass.
    pub vanished: u32,
    /// Pids whose earlier process is gone (exit, fork, reuse): a collector drops what it kept for
    /// them, so a new process under an old pid is never reported with the old one's numbers.
    pub forgotten: Vec<u32>,
}

/// Re-reads per tier and reason, and what was left for the next tick; reported in the `agent` record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TierStats {
    /// Reads by reason since start.
    pub rereads: BTreeMap<&'static str, u64>,
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

/// What tier 1 saw of one process this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatmRead {
    Read(Statm),
    /// The descriptor kept open for this pid says its process is gone (ESRCH), yet the pid is in
    /// `/proc` again: another process has it. Read afresh.
    Reused(Statm),
    /// The process vanished (ENOENT/ESRCH).
    Gone,
    /// `statm` unreadable for another reason (hidepid…): the process is live, its numbers unknown.
    Unreadable,
}

/// One tick's tier-1 pass: every process id and its `statm`, in pid order. The scheduler reads it
/// once per tick (when a ladder collector is due) and hands it to every collector in
/// [`crate::collectors::CollectCtx`]: both tiers see the same pids at the same moment, and the
/// pass, the ladder's fixed cost per tick, is paid once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatmPass {
    pub processes: Vec<(u32, StatmRead)>,
    /// This tick's hand-over of rollups derived from `smaps` reads, from the smaps tier to the
    /// rollup tier (one page walk for both).
    pub exchange: crate::collectors::exchange::SmapsExchange,
}

impl StatmPass {
    /// Reads the pass through `files`, the `statm` descriptors kept open between passes (which
    /// notice a reused pid; see [`OpenFiles::read`]).
    pub fn read(
        procfs: &ProcFs,
        files: &mut OpenFiles,
        buf: &mut Vec<u8>,
    ) -> Result<StatmPass, ProcError> {
        let pids = procfs.pids()?;
        files.retain_sorted(&pids);
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            let read = match files.read(procfs, pid, buf) {
                Ok(reopened) => match (parse_statm(buf), reopened) {
                    (Ok(statm), Reopened::No) => StatmRead::Read(statm),
                    (Ok(statm), Reopened::OtherProcess) => StatmRead::Reused(statm),
                    (Err(_), _) => StatmRead::Unreadable,
                },
                Err(e) if e.is_gone() => StatmRead::Gone,
                // statm is world-readable; if it is not (hidepid), the rollup tier says why.
                Err(_) => StatmRead::Unreadable,
            };
            processes.push((pid, read));
        }
        Ok(StatmPass {
            processes,
            ..StatmPass::default()
        })
    }

    /// A one-off pass with no kept descriptors (tests, `--once`).
    pub fn read_once(procfs: &ProcFs, buf: &mut Vec<u8>) -> Result<StatmPass, ProcError> {
        Self::read(procfs, &mut Self::files(0), buf)
    }

    /// The descriptor set a scheduler keeps between passes, holding at most `cap` descriptors.
    pub fn files(cap: usize) -> OpenFiles {
        OpenFiles::new("statm", FileClass::STATM, cap)
    }
}

/// How many `statm` descriptors to keep open: the soft RLIMIT_NOFILE less a reserve for everything
/// else the agent opens (the agent raises the soft limit to the hard one at start).
pub fn statm_fd_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(512)
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
                scope: Scope::LAYOUT,
            },
            4096,
        )
    }

    fn pass(list: &[(u32, StatmRead)]) -> StatmPass {
        StatmPass {
            processes: list.to_vec(),
            ..StatmPass::default()
        }
    }

    fn read(resident: u64) -> StatmRead {
        StatmRead::Read(statm(100, resident))
    }

    /// A ladder that has read pids 1..=n at t0.
    fn read_all(n: u32, t0: Instant) -> Ladder {
        let mut l = ladder();
        let all: Vec<(u32, StatmRead)> = (1..=n).map(|p| (p, read(10))).collect();
        l.run_tier1(&pass(&all), &[], t0);
        for pid in 1..=n {
            l.done(pid, t0);
        }
        l
    }

    #[test]
    fn an_exit_is_forgotten_at_once_and_a_listed_pid_later_is_new() {
        let t0 = Instant::now();
        let mut l = read_all(2, t0);
        let p = pass(&[(1, read(10)), (2, read(10))]);
        let t1 = l.run_tier1(&p, &[ProcEvent::Exit { pid: 2 }], t0);
        assert!(!t1.live.contains(&2), "an exited (zombie) pid is left out");
        assert_eq!(t1.forgotten, [2]);
        assert_eq!(l.len(), 1);
        assert!(l.due().is_empty());
        // Listed again next run, with no event: someone new has the pid.
        l.run_tier1(&p, &[], t0);
        assert_eq!(l.due(), vec![(2, Reason::New)]);
    }

    #[test]
    fn a_fork_or_a_reused_pid_is_new_in_every_tier() {
        let t0 = Instant::now();
        let mut l = read_all(3, t0);
        let t1 = l.run_tier1(
            &pass(&[
                (1, read(10)),
                (2, StatmRead::Reused(statm(100, 10))),
                (3, read(10)),
            ]),
            // Exit then fork of one pid between two runs: a new process under the old pid.
            &[ProcEvent::Exit { pid: 3 }, ProcEvent::Fork { pid: 3 }],
            t0,
        );
        assert_eq!(l.due(), vec![(2, Reason::New), (3, Reason::New)]);
        assert!(t1.live.contains(&3));
        assert_eq!(t1.forgotten, [3, 3, 2]);
    }

    #[test]
    fn marks_and_execs_make_dirty_within_the_tier_scope() {
        let t0 = Instant::now();
        let mut l = read_all(3, t0);
        let p = pass(&[(1, read(10)), (2, read(10)), (3, read(10))]);
        // A second later: a 40 KiB process is held for microseconds at most.
        let t1 = t0 + Duration::from_secs(1);
        l.run_tier1(
            &p,
            &[
                ProcEvent::Mark {
                    pid: 1,
                    scope: Scope::RESIDENCY,
                },
                ProcEvent::Mark {
                    pid: 2,
                    scope: Scope::ALL,
                },
                ProcEvent::Exec { pid: 3 },
                ProcEvent::Mark {
                    pid: 99,
                    scope: Scope::ALL,
                },
            ],
            t1,
        );
        assert_eq!(
            l.due(),
            vec![(2, Reason::Dirty), (3, Reason::Dirty)],
            "a residency-only mark is not this (layout) tier's business"
        );
    }

    /// A ladder with one process of `resident_pages` read at `t0`.
    fn one_read(resident_pages: u64, t0: Instant) -> Ladder {
        let mut l = ladder();
        l.run_tier1(&pass(&[(1, read(resident_pages))]), &[], t0);
        l.done(1, t0);
        l
    }

    fn mark_all(pid: u32) -> ProcEvent {
        ProcEvent::Mark {
            pid,
            scope: Scope::ALL,
        }
    }

    #[test]
    fn a_large_process_marked_again_waits_for_its_hold() {
        let t0 = Instant::now();
        let gib_pages = (1 << 30) / 4096;
        let mut l = one_read(gib_pages, t0);
        let hold = dirty_hold(1 << 30);
        assert_eq!(hold, DIRTY_HOLD_PER_GIB);
        let p = pass(&[(1, read(gib_pages))]);
        let ms = Duration::from_millis;
        l.run_tier1(&p, &[mark_all(1)], t0 + ms(500));
        assert!(l.due().is_empty(), "read 0.5 s ago, held for {hold:?}");
        l.run_tier1(&p, &[mark_all(1)], t0 + hold - ms(1));
        assert!(l.due().is_empty(), "marked again: still held");
        l.run_tier1(&p, &[], t0 + hold);
        assert_eq!(l.due(), vec![(1, Reason::Dirty)], "due once the hold ends");
        // Any other reason releases a held mark at once: here, an exec.
        let mut l = one_read(gib_pages, t0);
        l.run_tier1(&p, &[mark_all(1), ProcEvent::Exec { pid: 1 }], t0 + ms(1));
        assert_eq!(l.due(), vec![(1, Reason::Dirty)]);
        // A small process is not held at all: 1 MiB (2 ms) and 100 MiB (0.2 s) are under the
        // floor, so a mark right after the read makes it due at once.
        assert_eq!(dirty_hold(1 << 20), Duration::ZERO);
        assert_eq!(dirty_hold(100 << 20), Duration::ZERO);
        for pages in [256, 100 * 256] {
            let mut l = one_read(pages, t0);
            l.run_tier1(&pass(&[(1, read(pages))]), &[mark_all(1)], t0 + ms(1));
            assert_eq!(l.due(), vec![(1, Reason::Dirty)], "{pages} pages held");
        }
        // At the floor the hold applies: 128 MiB holds 250 ms.
        assert_eq!(dirty_hold(128 << 20), DIRTY_HOLD_FLOOR);
        let pages = 128 * 256;
        let mut l = one_read(pages, t0);
        l.run_tier1(&pass(&[(1, read(pages))]), &[mark_all(1)], t0 + ms(1));
        assert!(
            l.due().is_empty(),
            "128 MiB marked 1 ms after its read: held"
        );
    }

    #[test]
    fn the_hold_never_passes_max_staleness() {
        let t0 = Instant::now();
        // 100 GiB: the hold (200 s) is cut to max_staleness (60 s).
        let pages = 100 * (1 << 30) / 4096;
        let mut l = one_read(pages, t0);
        let p = pass(&[(1, read(pages))]);
        l.run_tier1(&p, &[mark_all(1)], t0 + Duration::from_secs(1));
        assert!(l.due().is_empty());
        let max = Duration::from_secs(60);
        l.run_tier1(&p, &[], t0 + max);
        assert!(!l.due().is_empty(), "due by max_staleness at the latest");
    }

    #[test]
    fn with_ebpf_a_virtual_size_change_is_not_a_layout_change() {
        let t0 = Instant::now();
        let mut l = one_read(10, t0);
        l.set_layout_tracked(true);
        l.observe(1, statm(101, 10), t0);
        assert!(
            l.due().is_empty(),
            "anonymous churn moved the virtual size only"
        );
        l.set_layout_tracked(false);
        l.observe(1, statm(102, 10), t0);
        assert_eq!(l.due(), vec![(1, Reason::Layout)], "polling: it is");
    }

    #[test]
    fn overflow_schedules_everyone_oldest_number_first() {
        let t0 = Instant::now();
        let mut l = read_all(3, t0);
        let s = Duration::from_secs;
        // Read at different times: 2 is the oldest number, then 3, then 1.
        l.done(1, t0 + s(3));
        l.done(3, t0 + s(2));
        l.done(2, t0 + s(1));
        let p = pass(&[(1, read(10)), (2, read(10)), (3, read(10))]);
        l.run_tier1(&p, &[], t0 + s(4));
        assert!(l.due().is_empty());
        l.run_tier1(&p, &[ProcEvent::Overflow], t0 + s(5));
        assert_eq!(
            l.due(),
            vec![
                (2, Reason::Overflow),
                (3, Reason::Overflow),
                (1, Reason::Overflow)
            ]
        );
        let mut stats = TierStats::default();
        stats.count(Reason::Overflow);
        assert_eq!(stats.rereads["overflow"], 1);
    }

    #[test]
    fn statm_pass_reads_through_kept_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_dir = dir.path().join("10");
        std::fs::create_dir(&pid_dir).expect("mkdir");
        std::fs::write(pid_dir.join("statm"), "1 2 3 4 0 5 0\n").expect("statm");
        let procfs = ProcFs::new(dir.path());
        let mut files = StatmPass::files(16);
        let mut buf = Vec::new();
        let a = StatmPass::read(&procfs, &mut files, &mut buf).expect("pass");
        assert!(matches!(a.processes[..], [(10, StatmRead::Read(_))]));
        let b = StatmPass::read(&procfs, &mut files, &mut buf).expect("pass");
        assert_eq!(a, b, "through the kept descriptor");
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
    fn polling_takes_anonymous_growth_for_residency_not_layout() {
        let t0 = Instant::now();
        let mut l = one_read(10, t0);
        let anon = |size: u64, data: u64| Statm {
            data,
            ..statm(size, 10)
        };
        l.observe(1, anon(100, 0), t0);
        l.done(1, t0);
        l.observe(1, anon(164, 64), t0);
        assert!(
            l.due().is_empty(),
            "a private anonymous region: size and data moved alike"
        );
        l.observe(1, anon(165, 64), t0);
        assert_eq!(
            l.due(),
            vec![(1, Reason::Layout)],
            "a shared or file mapping"
        );
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
    fn stale_deadlines_are_spread_evenly_and_bounded() {
        let max = Duration::from_secs(60);
        let deadlines: Vec<Duration> = (1..=3000).map(|pid| stale_after(max, pid)).collect();
        assert!(deadlines.iter().all(|d| *d <= max && !d.is_zero()));
        // Ten equal slices of max_staleness each hold about a tenth (300) of the deadlines: the
        // processes read at start are re-read at a steady rate, not in a burst.
        let mut slices = [0u32; 10];
        for d in &deadlines {
            let i = (d.as_secs_f64() / max.as_secs_f64() * 10.0) as usize;
            slices[i.min(9)] += 1;
        }
        assert!(
            slices.iter().all(|n| (240..=360).contains(n)),
            "not even: {slices:?}"
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
        l.mark(3, Reason::Overflow, t0 + Duration::from_secs(4));
        assert_eq!(
            l.due(),
            vec![(3, Reason::Dirty), (1, Reason::Dirty), (2, Reason::Dirty)]
        );
    }
}
