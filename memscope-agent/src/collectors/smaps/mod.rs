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
    ladder::{Ladder, Reason, TierPolicy, TierStats},
    proc_events::{Scope, Subscription},
    procfs::{Dev, FileClass, ProcError, ProcFs, page_size, stat::parse_stat},
};

mod classify;
mod fold;
mod object;
mod records;
pub mod sharing;

pub use classify::{classify, tmpfs_devices};
pub use fold::{fold_process, fold_shared};
pub use object::{
    Consumer, ObjectKey, ObjectKind, ObjectMemory, ProcessObject, ProcessObjects, SharedObject,
};
pub(crate) use records::{ObjectBody, OtherBody};
pub use records::{ObjectsObservation, Sharing};

/// The `smaps` collector.
pub struct Smaps;

impl CollectorDef for Smaps {
    const NAME: &'static str = "smaps";
    type Config = SmapsConfig;
    fn build(config: &SmapsConfig, ctx: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(
            SmapsCollector::new(config, ctx.events.subscribe())
                .max_mount_namespaces(ctx.max_mount_namespaces),
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
    /// Re-read a process's `smaps` when its resident + shared memory moved by this much, or when a
    /// file object it maps gained or lost a mapper and that moves each share by this much.
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
    min_change: u64,
    budget: Duration,
    ladder: Ladder,
    stats: TierStats,
    events: Subscription,
    cache: HashMap<u32, ProcessObjects>,
    /// Mount namespaces read for the tmpfs devices besides the agent's own.
    max_namespaces: usize,
    /// Processes whose last smaps read was denied.
    denied: HashSet<u32>,
    buf: Vec<u8>,
}

impl SmapsCollector {
    /// `events`: this collector's subscription to the tracker's stream.
    pub fn new(config: &SmapsConfig, events: Subscription) -> Self {
        SmapsCollector {
            min_object_pss: config.min_object_pss.0,
            own_rows: HashSet::new(),
            top_consumers: config.top_consumers.0 as usize,
            min_change: config.min_change.0,
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
            max_namespaces: crate::config::AgentConfig::default().max_mount_namespaces as usize,
            denied: HashSet::new(),
            buf: Vec::with_capacity(1 << 20),
        }
    }

    /// Reads at most `n` mount namespaces besides the agent's own (`[agent] max_mount_namespaces`).
    pub fn max_mount_namespaces(mut self, n: u32) -> Self {
        self.max_namespaces = n as usize;
        self
    }

    /// Reads one process's smaps into its objects.
    fn read_process(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        tmpfs_devs: &HashSet<Dev>,
    ) -> Result<ProcessObjects, ProcError> {
        let stat = procfs.read_parsed(
            &procfs.pid_path(pid, "stat"),
            FileClass::OTHER,
            &mut self.buf,
            parse_stat,
        )?;
        let path = procfs.pid_path(pid, "smaps");
        procfs.read_into(&path, FileClass::SMAPS, &mut self.buf)?;
        let objects = fold_process(&self.buf, tmpfs_devs)
            .map_err(|source| ProcError::Parse { path, source })?;
        Ok(ProcessObjects {
            pid,
            start_ticks: stat.starttime_ticks,
            name: stat.comm,
            objects,
            read_at: Instant::now(),
            smaps_bytes: self.buf.len() as u64,
            reads: 1,
        })
    }

    /// How many times `pid`'s smaps was read (since it was first seen); `None` if not tracked.
    pub fn reads_of(&self, pid: u32) -> Option<u64> {
        self.cache.get(&pid).map(|p| p.reads)
    }

    /// Whether a change of `object`'s mapper set moves the other mappers' numbers enough to re-read
    /// them: always for shared memory objects (memfd, tmpfs, SysV, shared anonymous), for a file when
    /// each mapper's share moves by at least `min_change` (PSS / (m·(m+1)) for m mappers).
    fn mapper_change_matters(&self, object: &SharedObject) -> bool {
        match object.key.kind() {
            ObjectKind::Memfd | ObjectKind::Tmpfs | ObjectKind::Sysv | ObjectKind::SharedAnon => {
                true
            }
            ObjectKind::File => {
                let m = u64::from(object.mappers.max(1));
                object.memory.pss_bytes / (m * (m + 1)) >= self.min_change.max(1)
            }
            _ => false,
        }
    }
}

/// Keys of objects that processes share (private kinds never change anyone else's numbers).
fn shareable(key: &ObjectKey) -> bool {
    matches!(key, ObjectKey::Inode { .. } | ObjectKey::Sysv { .. })
}

impl Collector for SmapsCollector {
    fn name(&self) -> &'static str {
        Smaps::NAME
    }

    fn uses_statm_pass(&self) -> bool {
        true
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let start = Instant::now();
        let (tmpfs_devs, skipped) = tmpfs_devices(ctx.procfs, self.max_namespaces, &mut self.buf)?;
        let pass = ctx.statm_pass(&mut self.buf)?;
        let mut obs = ObjectsObservation {
            min_object_pss: self.min_object_pss,
            top_consumers: self.top_consumers,
            errors: skipped,
            ..ObjectsObservation::default()
        };

        // Tier 1: the tracker's events, then statm of every process.
        let tier1 = self.ladder.run_tier1(&pass, &self.events.take(), start);
        // Objects whose mapper set changed: those of exited processes (and of pids now someone
        // else's), and below those gained or lost by re-read processes.
        let mut changed: HashSet<ObjectKey> = HashSet::new();
        let forgotten: HashSet<u32> = tier1.forgotten.iter().copied().collect();
        self.cache.retain(|pid, p| {
            let keep = tier1.live.contains(pid) && !forgotten.contains(pid);
            if !keep {
                changed.extend(p.objects.iter().map(|o| o.key.clone()).filter(shareable));
            }
            keep
        });

        // Tier 3: smaps where the ladder says so, within the budget.
        let mut carried = 0;
        let mut reread: HashSet<u32> = HashSet::new();
        for (pid, reason) in self.ladder.due() {
            if !ctx.unbounded && start.elapsed() >= self.budget {
                carried += 1;
                continue;
            }
            match self.read_process(ctx.procfs, pid, &tmpfs_devs) {
                Ok(mut p) => {
                    if let Some(old) = self.cache.get(&pid)
                        && old.start_ticks == p.start_ticks
                    {
                        p.reads += old.reads;
                    }
                    obs.processes_read += 1;
                    self.denied.remove(&pid);
                    self.stats.count(reason);
                    self.ladder.done(pid, Instant::now());
                    reread.insert(pid);
                    // Against the previous read (of this process, or of the one that had its pid).
                    let old: HashSet<&ObjectKey> = self
                        .cache
                        .get(&pid)
                        .map(|old| old.objects.iter().map(|o| &o.key).collect())
                        .unwrap_or_default();
                    let new: HashSet<&ObjectKey> = p.objects.iter().map(|o| &o.key).collect();
                    changed.extend(
                        old.symmetric_difference(&new)
                            .filter(|k| shareable(k))
                            .map(|k| (*k).clone()),
                    );
                    self.cache.insert(pid, p);
                }
                Err(e) => {
                    self.ladder.done(pid, Instant::now());
                    if let Some(old) = self.cache.remove(&pid) {
                        changed.extend(old.objects.into_iter().map(|o| o.key).filter(shareable));
                    }
                    if e.is_gone() {
                        obs.vanished += 1;
                        self.denied.remove(&pid);
                        self.ladder.forget(pid);
                    } else if e.is_denied() {
                        obs.inaccessible += 1;
                        self.denied.insert(pid);
                    } else {
                        debug!(pid, error = %e, "smaps read failed");
                        obs.errors.push(e.to_string());
                    }
                }
            }
        }
        obs.processes_reused = self.cache.len().saturating_sub(reread.len()) as u32;
        self.denied
            .retain(|pid| tier1.live.contains(pid) && !forgotten.contains(pid));
        obs.unreadable = self.denied.len() as u32;

        let mut procs: Vec<&ProcessObjects> = self.cache.values().collect();
        procs.sort_by_key(|p| p.pid);
        obs.objects = fold_shared(procs);
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

        // The other mappers of objects that gained or lost a mapper are due next run.
        let now = Instant::now();
        let mut marks = Vec::new();
        for o in obs.objects.iter().filter(|o| changed.contains(&o.key)) {
            if self.mapper_change_matters(o) {
                marks.extend(
                    o.consumers
                        .iter()
                        .map(|c| c.pid)
                        .filter(|p| !reread.contains(p)),
                );
            }
        }
        for pid in marks {
            self.ladder.mark(pid, Reason::SharedChange, now);
        }

        self.ladder.set_run_length(start.elapsed());
        self.stats.finish_run(&self.ladder, carried, now);
        obs.tier = self.stats.clone();
        Ok(Some(Box::new(obs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::Observation;

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
}
