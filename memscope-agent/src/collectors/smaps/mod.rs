//! `smaps`: which *object* holds the memory. Each process's `/proc/PID/smaps` is folded into objects,
//! and objects are folded across processes into shared objects:
//!
//! | object kind | what | keyed by |
//! |---|---|---|
//! | `file` | a regular file mapping | `(dev, inode)` |
//! | `tmpfs` | a file on a tmpfs mount (`/dev/shm/…`) | `(dev, inode)` |
//! | `memfd` | `memfd_create` memory | `(dev, inode)` |
//! | `sysv` | a SysV shm segment (`/SYSV…`) | shmid (the mapping's inode) |
//! | `shared_anon` | `MAP_SHARED|MAP_ANONYMOUS` (`/dev/zero (deleted)`, `[anon_shmem:…]`) | `(dev, inode)` |
//! | `anon`, `heap`, `stack` | private anonymous memory | the kind (one object each) |
//! | `pseudo` | `[vdso]`, `[vvar]`, `anon_inode:…`, … | the label |
//!
//! The name is for display only: two files with one path (one deleted and recreated) are two objects.
//! Each object carries PSS/RSS/swap/swap PSS, clean/dirty private/shared bytes, how many processes map
//! it and its top consumers. In the records, objects below `min_object_pss` are folded into one
//! `other` row per kind so the stream stays bounded on big hosts; the observation keeps them all so
//! the ledger's sums are exact.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tracing::debug;

use serde::Deserialize;

use super::{BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation};
use crate::{
    config::{ByteSize, Interval, Positive},
    ladder::{Ladder, TierPolicy, TierStats},
    proc_events::{Scope, Subscription},
    procfs::{
        Dev, FileClass, ProcError, ProcFs, counters::MemCounters, mountinfo::SharedNamespaces,
        page_size, stat::parse_stat,
    },
};

mod classify;
mod fold;
pub(crate) mod intern;
mod object;
mod records;
pub mod sharing;

pub use classify::{classify, tmpfs_devices};
pub use fold::{Folded, fold_process, fold_process_rollup, fold_shared};
pub use object::{
    Consumer, HeldObject, ObjectKey, ObjectKind, ObjectMemory, ObjectNames, ProcessObject,
    ProcessObjects, Share, SharedObject,
};
pub(crate) use records::{ObjectBody, OtherBody};
pub use records::{ObjectsObservation, Sharing};
use sharing::{Change, Other};

/// The `smaps` collector.
pub struct Smaps;

impl CollectorDef for Smaps {
    const NAME: &'static str = "smaps";
    type Config = SmapsConfig;
    fn build(config: &SmapsConfig, ctx: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(
            SmapsCollector::new(config, ctx.events.subscribe())
                .mount_namespaces(ctx.mount_namespaces.clone()),
        )
    }
}

/// `[collectors.smaps]`: shared objects from `/proc/PID/smaps`, re-read on the cost ladder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmapsConfig {
    pub enabled: bool,
    pub interval: Option<Interval>,
    /// Objects whose PSS is below this are folded into one `other` row per kind (0: none folded).
    pub min_object_pss: ByteSize,
    /// Consumers (processes) listed per object, largest PSS first.
    pub top_consumers: Positive,
    /// Re-read a process's `smaps` when its resident + shared memory moved by this much. (A mapper
    /// joining or leaving an object it maps is not a reason: its share is derived by arithmetic.)
    pub min_change: ByteSize,
    pub max_staleness: Interval,
    pub budget: Interval,
}

impl Default for SmapsConfig {
    fn default() -> Self {
        SmapsConfig {
            enabled: true,
            interval: None,
            min_object_pss: ByteSize(1 << 20),
            top_consumers: Positive(5),
            min_change: ByteSize(1 << 20),
            max_staleness: Interval(Duration::from_secs(300)),
            budget: Interval(Duration::from_secs(2)),
        }
    }
}

section!(SmapsConfig, |c: &SmapsConfig| {
    use crate::config::bounds::{BUDGET, MAX_STALENESS, THRESHOLD, TOP, duration, number};
    number("min_change", c.min_change.0, THRESHOLD)?;
    number("min_object_pss", c.min_object_pss.0, THRESHOLD)?;
    duration("max_staleness", c.max_staleness, MAX_STALENESS)?;
    duration("budget", c.budget, BUDGET)?;
    number("top_consumers", c.top_consumers.0, TOP)
});

/// Objects get a row of their own from `min_object_pss` up, and keep it until they fall below half
/// of it: an object whose PSS hovers around the floor does not flap between its own row and the
/// `other` row (which in `emit = "changes"` would send a `removed` record each time).
pub struct SmapsCollector {
    min_object_pss: u64,
    /// Objects with a row of their own in the last run.
    own_rows: HashSet<ObjectKey>,
    top_consumers: usize,
    budget: Duration,
    ladder: Ladder,
    stats: TierStats,
    events: Subscription,
    cache: HashMap<u32, ProcessObjects>,
    /// The shared objects of the processes in `cache`: every change to `cache` moves the
    /// process's contributions out of or into it.
    folded: Folded,
    /// The keys and labels of the objects in `cache`, each once.
    names: ObjectNames,
    /// Mount namespaces read for the tmpfs devices (shared with the tmpfs collector).
    namespaces: SharedNamespaces,
    /// Processes whose last smaps read was denied.
    denied: HashSet<u32>,
    /// Runs so far (the current one while it goes).
    runs: u64,
    buf: Vec<u8>,
}

impl SmapsCollector {
    /// `events`: this collector's subscription to the tracker's stream.
    pub fn new(config: &SmapsConfig, events: Subscription) -> Self {
        SmapsCollector {
            min_object_pss: config.min_object_pss.0,
            own_rows: HashSet::new(),
            top_consumers: config.top_consumers.0 as usize,
            budget: config.budget.get(),
            ladder: Ladder::new(
                TierPolicy {
                    min_change_bytes: config.min_change.0,
                    max_staleness: config.max_staleness.get(),
                    layout_changes: true,
                    scope: Scope::LAYOUT,
                },
                page_size(),
            ),
            stats: TierStats::default(),
            events,
            cache: HashMap::new(),
            folded: Folded::default(),
            names: ObjectNames::default(),
            namespaces: SharedNamespaces::new(
                crate::config::AgentConfig::default().max_mount_namespaces,
            ),
            denied: HashSet::new(),
            runs: 0,
            buf: Vec::with_capacity(SMAPS_BUF_BYTES),
        }
    }

    /// Reads at most `n` mount namespaces besides the agent's own (`[agent] max_mount_namespaces`).
    pub fn max_mount_namespaces(self, n: u32) -> Self {
        self.mount_namespaces(SharedNamespaces::new(n))
    }

    /// Reads the mount namespaces through `shared` (the agent's one cache, with its bound).
    pub fn mount_namespaces(mut self, shared: SharedNamespaces) -> Self {
        self.namespaces = shared;
        self
    }

    /// Reads one process's smaps into its objects, and its rollup where that derives exactly.
    fn read_process(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        tmpfs_devs: &HashSet<Dev>,
    ) -> Result<(ProcessObjects, Option<MemCounters>), ProcError> {
        let stat = procfs.read_parsed(
            &procfs.pid_path(pid, "stat"),
            FileClass::OTHER,
            &mut self.buf,
            parse_stat,
        )?;
        let path = procfs.pid_path(pid, "smaps");
        procfs.read_into(&path, FileClass::SMAPS, &mut self.buf)?;
        let (objects, rollup) = fold_process_rollup(&self.buf, tmpfs_devs)
            .map_err(|source| ProcError::Parse { path, source })?;
        let p = ProcessObjects {
            pid,
            start_ticks: stat.starttime_ticks,
            name: stat.comm,
            objects: self.names.hold(objects),
            read_ticks: boot_ticks(),
            read_run: self.runs,
            reads: 1,
        };
        Ok((p, rollup))
    }

    /// Keeps `p` (just read) in place of what was kept for its pid: its objects' contributions
    /// move into the shared objects, the old ones' out.
    fn keep(&mut self, p: ProcessObjects) {
        if let Some(old) = self.cache.remove(&p.pid) {
            self.folded.leave(&old);
        }
        self.folded.join(&p, &self.names);
        self.cache.insert(p.pid, p);
    }

    /// How many times `pid`'s smaps was read (since it was first seen); `None` if not tracked.
    pub fn reads_of(&self, pid: u32) -> Option<u64> {
        self.cache.get(&pid).map(|p| p.reads)
    }
}

/// The read buffer kept between runs (a larger one, grown by a larger smaps, is shrunk back).
const SMAPS_BUF_BYTES: usize = 1 << 20;

/// Keys of objects that processes share (private kinds never change anyone else's numbers).
fn shareable(key: Option<&ObjectKey>) -> bool {
    matches!(key, Some(ObjectKey::Inode { .. } | ObjectKey::Sysv { .. }))
}

/// Now, in clock ticks since boot (`CLOCK_BOOTTIME`, the clock of `stat`'s start time).
fn boot_ticks() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ns =
        u128::from(t.tv_sec.unsigned_abs()) * 1_000_000_000 + u128::from(t.tv_nsec.unsigned_abs());
    let hz = u128::from(rustix::param::clock_ticks_per_second());
    u64::try_from(ns * hz / 1_000_000_000).unwrap_or(u64::MAX)
}

/// One object's mapper-set change, waiting to be applied to the other mappers' figures.
#[derive(Debug)]
struct Pending {
    /// The object's key id ([`ObjectNames::keys`]).
    key: u32,
    change: Change,
    /// The mover (left out of the others) and its figures of the object.
    pid: u32,
    memory: ObjectMemory,
    /// Which others' figures predate the change.
    before: Before,
}

/// Which other mappers' figures predate a change (and are updated by it).
#[derive(Debug, Clone, Copy)]
enum Before {
    /// Every other not read in this run (an exit: the others read this run already show it).
    Now,
    /// Those read in this collector run or an earlier one (the mover's previous read: what it
    /// mapped or unmapped since happened after that run, as far as the others can tell).
    Run(u64),
    /// Those read at or before this moment, in clock ticks since boot (a process's start).
    Ticks(u64),
}

impl Before {
    fn includes(self, p: &ProcessObjects) -> bool {
        match self {
            Before::Now => true,
            Before::Run(run) => p.read_run <= run,
            Before::Ticks(t) => p.read_ticks <= t,
        }
    }
}

impl Pending {
    /// Every shared object of `p` joined or left.
    fn all<'a>(
        p: &'a ProcessObjects,
        names: &'a ObjectNames,
        change: Change,
        before: Before,
    ) -> impl Iterator<Item = Pending> + 'a {
        p.objects
            .iter()
            .filter(|o| shareable(names.key(o)))
            .map(move |o| Pending {
                key: o.key,
                change,
                pid: p.pid,
                memory: o.memory(),
                before,
            })
    }

    /// The shared objects `new` (a re-read) gained or lost against `old` (the same process's last
    /// read): changes made after `old` was read.
    fn diff(old: &ProcessObjects, new: &ProcessObjects, names: &ObjectNames) -> Vec<Pending> {
        let keys = |p: &ProcessObjects| -> HashSet<u32> {
            p.objects
                .iter()
                .filter(|o| shareable(names.key(o)))
                .map(|o| o.key)
                .collect()
        };
        let (was, is) = (keys(old), keys(new));
        let mut out = Vec::new();
        for (p, change, other) in [(old, Change::Leave, &is), (new, Change::Join, &was)] {
            out.extend(
                Pending::all(p, names, change, Before::Run(old.read_run))
                    .filter(|c| !other.contains(&c.key)),
            );
        }
        out
    }
}

/// Applies `pending` to the other mappers' figures in `cache` (see [`sharing`]): an other is
/// updated when it was not read this run (`reread`) and its read predates the change. Returns how
/// many figures were derived.
fn apply_changes(
    cache: &mut HashMap<u32, ProcessObjects>,
    folded: &mut Folded,
    pending: &[Pending],
    reread: &HashSet<u32>,
) -> u32 {
    if pending.is_empty() {
        return 0;
    }
    // Every mapper of a changed object, found once: (pid, the object's index in its objects).
    let keys: HashSet<u32> = pending.iter().map(|c| c.key).collect();
    let mut mappers: HashMap<u32, Vec<(u32, usize)>> = HashMap::new();
    for p in cache.values() {
        for (i, o) in p.objects.iter().enumerate() {
            if keys.contains(&o.key) {
                mappers.entry(o.key).or_default().push((p.pid, i));
            }
        }
    }
    for list in mappers.values_mut() {
        list.sort_unstable();
    }
    // Per object, the earliest read among mappers not read this run: a change no such read
    // predates updates no one (at start-up every process is new: nothing to do, cheaply).
    let earliest: HashMap<u32, (u64, u64)> = mappers
        .iter()
        .filter_map(|(key, list)| {
            list.iter()
                .filter(|(pid, _)| !reread.contains(pid))
                .filter_map(|(pid, _)| cache.get(pid))
                .map(|p| (p.read_run, p.read_ticks))
                .reduce(|a, b| (a.0.min(b.0), a.1.min(b.1)))
                .map(|e| (*key, e))
        })
        .collect();
    let mut derived = 0;
    let mut others: Vec<Other> = Vec::new();
    for c in pending {
        let (Some(list), Some(&(run, ticks))) = (mappers.get(&c.key), earliest.get(&c.key)) else {
            continue;
        };
        let predates = match c.before {
            Before::Now => true,
            Before::Run(r) => run <= r,
            Before::Ticks(t) => ticks <= t,
        };
        if !predates {
            continue;
        }
        let list: Vec<(u32, usize)> = list.iter().copied().filter(|(p, _)| *p != c.pid).collect();
        others.clear();
        others.extend(list.iter().filter_map(|(pid, i)| {
            let p = cache.get(pid)?;
            Some(Other {
                memory: p.objects.get(*i)?.memory(),
                eligible: !reread.contains(pid) && c.before.includes(p),
            })
        }));
        if others.len() != list.len() || !others.iter().any(|o| o.eligible) {
            continue;
        }
        for ((pid, i), new) in list
            .iter()
            .zip(sharing::shift(c.change, &c.memory, &others))
        {
            let Some(new) = new else { continue };
            if let Some(o) = cache.get_mut(pid).and_then(|p| p.objects.get_mut(*i)) {
                let before = o.clone();
                o.set_memory(new);
                o.derived = true;
                folded.replace(*pid, &before, o);
                derived += 1;
            }
        }
    }
    derived
}

impl Collector for SmapsCollector {
    fn name(&self) -> &'static str {
        Smaps::NAME
    }

    fn uses_statm_pass(&self) -> bool {
        true
    }

    fn gives_rollups(&self) -> bool {
        true
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let start = Instant::now();
        self.runs += 1;
        let pass = ctx.statm_pass(&mut self.buf)?;
        // Whatever happens below (an error, a panic), the rollup tier does not wait in vain.
        let exchange = &pass.exchange;
        let _finish = exchange.finish_on_drop();
        // The namespaces of the pass's processes (one listing of /proc per tick).
        let pids: Vec<u32> = pass.processes.iter().map(|(pid, _)| *pid).collect();
        let (tmpfs_devs, skipped, every_mount) =
            classify::tmpfs_devices_seen(ctx.procfs, &self.namespaces, Some(&pids), &mut self.buf)?;
        let mut obs = ObjectsObservation {
            min_object_pss: self.min_object_pss,
            top_consumers: self.top_consumers,
            errors: skipped,
            ..ObjectsObservation::default()
        };

        // Tier 1: the tracker's events, then statm of every process.
        self.ladder.set_layout_tracked(self.events.layout_tracked());
        let tier1 = self.ladder.run_tier1(&pass, &self.events.take(), start);
        // Mapper-set changes seen this run, applied by arithmetic after the reads: the objects of
        // exited processes (and of pids now someone else's) lost a mapper, and below, objects a
        // re-read process gained or lost.
        let mut pending: Vec<Pending> = Vec::new();
        let forgotten: HashSet<u32> = tier1.forgotten.iter().copied().collect();
        let names = &self.names;
        let folded = &mut self.folded;
        self.cache.retain(|pid, p| {
            let keep = tier1.live.contains(pid) && !forgotten.contains(pid);
            if !keep {
                pending.extend(Pending::all(p, names, Change::Leave, Before::Now));
                folded.leave(p);
            }
            keep
        });
        super::shrink_sparse(&mut self.cache);

        // A process's start is news to the others only if one of them was read before it (a fork
        // child): the oldest read kept says whether any could be (at start-up none: no changes
        // are queued for thousands of new processes).
        let oldest_read = self.cache.values().map(|p| p.read_ticks).min();
        let news = |start_ticks: u64| oldest_read.is_some_and(|t| t <= start_ticks);

        // Tier 3: smaps where the ladder says so, within the budget.
        let mut carried = 0;
        let mut reread: HashSet<u32> = HashSet::new();
        // The rollups derived on the way go to the rollup tier of this tick (one page walk for
        // both); not when a mount namespace or table line went unread (a tmpfs mount could be
        // missing, and its pages pass for a file's).
        let due = self.ladder.due();
        exchange.plan(due.iter().map(|(pid, _)| *pid));
        let share_rollups = every_mount;
        for (pid, reason) in due {
            if !ctx.unbounded && start.elapsed() >= self.budget {
                carried += 1;
                continue;
            }
            let read = self.read_process(ctx.procfs, pid, &tmpfs_devs);
            exchange.leave(
                pid,
                match &read {
                    Ok((p, Some(rollup))) if share_rollups => Some((p.start_ticks, *rollup)),
                    _ => None,
                },
            );
            match read.map(|(p, _)| p) {
                Ok(mut p) => {
                    match self.cache.get(&pid) {
                        // The same process: what it mapped or unmapped since its last read, which
                        // the others read before that read do not show.
                        Some(old) if old.start_ticks == p.start_ticks => {
                            p.reads += old.reads;
                            pending.extend(Pending::diff(old, &p, &self.names));
                        }
                        // Another process had the pid: it left everything.
                        Some(old) => {
                            pending.extend(Pending::all(
                                old,
                                &self.names,
                                Change::Leave,
                                Before::Now,
                            ));
                            if news(p.start_ticks) {
                                pending.extend(Pending::all(
                                    &p,
                                    &self.names,
                                    Change::Join,
                                    Before::Ticks(p.start_ticks),
                                ));
                            }
                        }
                        // First read: what it maps is new only to the others read before it
                        // started (a fork child). Processes that were there when the others were
                        // read (a start-up carried over by the budget) are already in their figures.
                        None if news(p.start_ticks) => pending.extend(Pending::all(
                            &p,
                            &self.names,
                            Change::Join,
                            Before::Ticks(p.start_ticks),
                        )),
                        None => {}
                    }
                    obs.processes_read += 1;
                    self.denied.remove(&pid);
                    self.stats.count(reason);
                    self.ladder.done(pid, Instant::now());
                    reread.insert(pid);
                    self.keep(p);
                }
                Err(e) => {
                    self.ladder.done(pid, Instant::now());
                    let old = self.cache.remove(&pid);
                    if let Some(old) = &old {
                        self.folded.leave(old);
                    }
                    if e.is_gone() {
                        if let Some(old) = old {
                            pending.extend(Pending::all(
                                &old,
                                &self.names,
                                Change::Leave,
                                Before::Now,
                            ));
                        }
                        obs.vanished += 1;
                        self.denied.remove(&pid);
                        self.ladder.forget(pid);
                    } else if e.is_denied() {
                        // Still mapping what it mapped: its objects are missing from the records,
                        // but the others' shares are unchanged.
                        obs.inaccessible += 1;
                        self.denied.insert(pid);
                    } else {
                        debug!(pid, error = %e, "smaps read failed");
                        obs.errors.push(e.to_string());
                    }
                }
            }
        }
        obs.derived_shares = apply_changes(&mut self.cache, &mut self.folded, &pending, &reread);
        obs.processes_reused = self.cache.len().saturating_sub(reread.len()) as u32;
        self.denied
            .retain(|pid| tier1.live.contains(pid) && !forgotten.contains(pid));
        obs.unreadable = self.denied.len() as u32;

        let cache = &self.cache;
        obs.objects = self
            .folded
            .finish(self.runs, self.top_consumers, &self.names, |pid| {
                cache.get(&pid)
            });
        obs.generation = self.runs;
        // The keys and labels of the processes gone (or re-read) go, once those are an eighth of
        // the processes kept (a sweep looks at every kept object: not every run); the changes that
        // named them were applied above.
        let kept = self.cache.len();
        if self.folded.take_left(|left| left > 0 && left * 8 >= kept) {
            self.names.sweep(self.cache.values());
        }
        let floor = self.min_object_pss;
        self.own_rows = obs
            .objects
            .iter()
            .filter(|o| {
                o.weight() >= floor || (self.own_rows.contains(&o.key) && o.weight() >= floor / 2)
            })
            .map(|o| o.key.clone())
            .collect();
        obs.own_rows = Some(self.own_rows.clone());

        // One huge smaps (a process with many thousands of mappings) does not keep its buffer.
        self.buf.clear();
        self.buf.shrink_to(SMAPS_BUF_BYTES);

        let now = Instant::now();
        self.ladder.set_run_length(start.elapsed());
        self.stats.finish_run(&self.ladder, carried, now);
        obs.tier = self.stats.clone();
        Ok(Some(Box::new(obs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collectors::Observation, procfs::escape::Name};

    #[test]
    fn own_rows_have_hysteresis_around_the_floor() {
        let mut c = SmapsCollector::new(
            &SmapsConfig {
                min_object_pss: ByteSize(1000 * 1024),
                ..SmapsConfig::default()
            },
            Subscription::detached(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("self")).expect("mkdir");
        std::fs::write(dir.path().join("self/mountinfo"), "").expect("mountinfo");
        std::fs::create_dir(dir.path().join("10")).expect("mkdir");
        std::fs::write(
            dir.path().join("10/stat"),
            "10 (a) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n",
        )
        .expect("stat");
        let procfs = ProcFs::new(dir.path());
        let mut run = |memfd_kb: u64| -> bool {
            std::fs::write(
                dir.path().join("10/statm"),
                format!("{memfd_kb} 1 0 0 0 0 0\n"),
            )
            .expect("statm");
            std::fs::write(
                dir.path().join("10/smaps"),
                format!("7f0000000000-7f0000400000 rw-s 00000000 00:01 77 /memfd:buf (deleted)\nRss: {memfd_kb} kB\nPss: {memfd_kb} kB\n"),
            )
            .expect("smaps");
            let obs = crate::collectors::observed::<ObjectsObservation>(
                c.collect(&crate::collectors::CollectCtx::once(&procfs)),
            )
            .unwrap_or_else(|e| panic!("unexpected: {e}"));
            let mut recs = Vec::new();
            obs.records(&mut recs);
            recs.iter().any(|r| r.key == "memfd:0:1:77")
        };
        assert!(!run(900), "below the floor, never shown: folded");
        assert!(run(1000), "at the floor: its own row");
        assert!(run(600), "dipping below the floor keeps the row");
        assert!(!run(400), "below half the floor: folded again");
        assert!(!run(900), "and needs the full floor to come back");
    }

    /// One run of `c` over `procfs`, as `--once` runs it.
    fn collect_once(c: &mut SmapsCollector, procfs: &ProcFs) -> ObjectsObservation {
        crate::collectors::observed::<ObjectsObservation>(
            c.collect(&crate::collectors::CollectCtx::once(procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"))
    }

    /// A /proc tree where each of `pids` maps the same 3 MiB memfd, every page shared by all.
    fn memfd_sharers(root: &std::path::Path, pids: &[u32]) {
        std::fs::create_dir_all(root.join("self")).expect("mkdir");
        std::fs::write(root.join("self/mountinfo"), "").expect("mountinfo");
        let n = pids.len() as u64;
        for pid in pids {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(
                dir.join("stat"),
                format!("{pid} (w) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n"),
            )
            .expect("stat");
            std::fs::write(dir.join("statm"), "1000 768 768 0 0 0 0\n").expect("statm");
            std::fs::write(
                dir.join("smaps"),
                format!(
                    "7f0000000000-7f0000300000 rw-s 00000000 00:01 77 /memfd:ring (deleted)\n\
                     Rss: 3072 kB\nPss: {} kB\nShared_Dirty: 3072 kB\n",
                    3072 / n
                ),
            )
            .expect("smaps");
        }
    }

    #[test]
    fn an_exit_derives_the_others_shares_without_reading_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        memfd_sharers(dir.path(), &[10, 11, 12]);
        let procfs = ProcFs::new(dir.path());
        let mut c = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let mut run = || collect_once(&mut c, &procfs);
        let first = run();
        assert_eq!(first.processes_read, 3);
        assert_eq!(first.derived_shares, 0);

        std::fs::remove_dir_all(dir.path().join("12")).expect("exit");
        let obs = run();
        assert_eq!(obs.processes_read, 0, "no one is re-read");
        assert_eq!(obs.derived_shares, 2);
        let memfd = obs.of_kind(ObjectKind::Memfd).next().expect("memfd");
        assert_eq!(memfd.mappers, 2);
        assert_eq!(memfd.derived_mappers, 2);
        assert_eq!(
            memfd.memory.pss_bytes,
            3 << 20,
            "the total is the object's size"
        );
        for consumer in &memfd.consumers {
            assert_eq!(
                consumer.pss_bytes,
                1536 << 10,
                "half each, as smaps would say"
            );
            assert!(consumer.derived);
        }
        let mut recs = Vec::new();
        obs.records(&mut recs);
        let body = &recs
            .iter()
            .find(|r| r.key == "memfd:0:1:77")
            .expect("record")
            .body;
        assert!(body.contains("\"derived_mappers\":2"), "{body}");
        assert!(body.contains("\"derived\":true"), "{body}");
    }

    #[test]
    fn keys_and_labels_are_held_once_and_go_with_their_last_mapper() {
        let dir = tempfile::tempdir().expect("tempdir");
        memfd_sharers(dir.path(), &[10, 11, 12]);
        // 12 maps a memfd of its own besides the shared one.
        std::fs::write(
            dir.path().join("12/smaps"),
            "7f0000000000-7f0000300000 rw-s 00000000 00:01 77 /memfd:ring (deleted)\n\
             Rss: 3072 kB\nPss: 1024 kB\nShared_Dirty: 3072 kB\n\
             7f0000400000-7f0000500000 rw-s 00000000 00:01 78 /memfd:own (deleted)\n\
             Rss: 1024 kB\nPss: 1024 kB\nPrivate_Dirty: 1024 kB\n",
        )
        .expect("smaps");
        let procfs = ProcFs::new(dir.path());
        let mut c = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let obs = collect_once(&mut c, &procfs);
        assert_eq!(obs.objects.len(), 2);
        assert_eq!((c.names.keys.len(), c.names.labels.len()), (2, 2));
        let ring = &c.cache[&10].objects[0];
        assert!(
            [11, 12]
                .iter()
                .all(|p| c.cache[p].objects[0].key == ring.key),
            "one key id for the object every process maps"
        );

        std::fs::remove_dir_all(dir.path().join("12")).expect("exit");
        let obs = collect_once(&mut c, &procfs);
        assert_eq!(obs.objects.len(), 1);
        assert_eq!(
            (c.names.keys.len(), c.names.labels.len()),
            (1, 1),
            "the memfd only 12 mapped is forgotten with it"
        );
        let memfd = obs.of_kind(ObjectKind::Memfd).next().expect("memfd");
        assert_eq!(memfd.label, Name::from("memfd:ring"));
        assert!(memfd.deleted);
        assert_eq!(memfd.shares.len(), 2);
    }

    #[test]
    fn a_huge_smaps_does_not_keep_its_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        memfd_sharers(dir.path(), &[10]);
        // 40 000 one-page mappings: about 3 MiB of smaps.
        let mut text = String::new();
        for i in 0..40_000u64 {
            let a = 0x7f00_0000_0000 + i * 0x2000;
            text.push_str(&format!(
                "{a:x}-{:x} rw-p 00000000 00:00 0\nRss: 4 kB\nPss: 4 kB\nPrivate_Dirty: 4 kB\n",
                a + 0x1000
            ));
        }
        assert!(text.len() > 2 * SMAPS_BUF_BYTES);
        std::fs::write(dir.path().join("10/smaps"), &text).expect("smaps");
        let procfs = ProcFs::new(dir.path());
        let mut c = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let obs = collect_once(&mut c, &procfs);
        let anon = obs.of_kind(ObjectKind::Anon).next().expect("anon");
        assert_eq!(anon.mappings, 40_000, "the whole file was read");
        assert!(
            c.buf.capacity() <= SMAPS_BUF_BYTES,
            "{} bytes kept",
            c.buf.capacity()
        );
    }

    #[test]
    fn processes_carried_over_at_start_up_change_no_one() {
        // The budget left 11 for the next run; it was mapping the memfd all along (it started
        // before the others were read), so their figures already show it.
        let dir = tempfile::tempdir().expect("tempdir");
        memfd_sharers(dir.path(), &[10, 11]);
        let procfs = ProcFs::new(dir.path());
        let mut c = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let ctx = crate::collectors::CollectCtx::once(&procfs);
        let pass = ctx.statm_pass(&mut Vec::new()).expect("pass");
        let tier1 = c.ladder.run_tier1(&pass, &[], Instant::now());
        assert!(tier1.live.contains(&11));
        let (p, _) = c
            .read_process(&procfs, 10, &HashSet::new())
            .expect("read 10");
        c.ladder.done(10, Instant::now());
        c.keep(p);
        let obs = crate::collectors::observed::<ObjectsObservation>(c.collect(&ctx))
            .unwrap_or_else(|e| panic!("unexpected: {e}"));
        assert_eq!(obs.processes_read, 1, "11, as new");
        assert_eq!(obs.derived_shares, 0, "10's figures stand");
        let memfd = obs.of_kind(ObjectKind::Memfd).next().expect("memfd");
        assert_eq!(memfd.memory.pss_bytes, 3 << 20);
    }

    #[test]
    fn an_unmapping_and_a_fork_derive_the_others_shares() {
        let dir = tempfile::tempdir().expect("tempdir");
        memfd_sharers(dir.path(), &[10, 11, 12]);
        let procfs = ProcFs::new(dir.path());
        let mut c = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let mut run = || collect_once(&mut c, &procfs);
        run();
        // 12 unmaps the memfd (its layout changes): re-read, and 10 and 11 share it two ways.
        let twelve = dir.path().join("12");
        std::fs::write(twelve.join("statm"), "900 0 0 0 0 0 0\n").expect("statm");
        std::fs::write(twelve.join("smaps"), "").expect("smaps");
        let obs = run();
        assert_eq!(obs.processes_read, 1);
        let memfd = obs.of_kind(ObjectKind::Memfd).next().expect("memfd");
        assert_eq!(memfd.mappers, 2);
        assert!(
            memfd
                .consumers
                .iter()
                .all(|c| c.pss_bytes == 1536 << 10 && c.derived)
        );

        // A fork child of 10 (started after the others were read) maps it too: three ways again.
        memfd_sharers(dir.path(), &[13]);
        let stat = format!(
            "13 (w) S 10 13 13 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
            boot_ticks() + 1
        );
        std::fs::write(dir.path().join("13/stat"), stat).expect("stat");
        std::fs::write(
            dir.path().join("13/smaps"),
            "7f0000000000-7f0000300000 rw-s 00000000 00:01 77 /memfd:ring (deleted)\n\
             Rss: 3072 kB\nPss: 1024 kB\nShared_Dirty: 3072 kB\n",
        )
        .expect("smaps");
        let obs = run();
        assert_eq!(obs.processes_read, 1, "only the child is read");
        let memfd = obs.of_kind(ObjectKind::Memfd).next().expect("memfd");
        assert_eq!(memfd.mappers, 3);
        assert_eq!(memfd.memory.pss_bytes, 3 << 20);
        for c in &memfd.consumers {
            assert_eq!(c.pss_bytes, 1 << 20, "pid {}", c.pid);
            assert_eq!(c.derived, c.pid != 13, "pid {}", c.pid);
        }
    }
}
