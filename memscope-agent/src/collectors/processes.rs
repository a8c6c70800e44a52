//! `processes`: one record per process with its memory (RSS, PSS, USS, swap, swap PSS, the
//! anon/file/shmem split of PSS) and its place in the process tree (subtree totals).
//!
//! Sources per process: `statm` every run (cheap: no page walk), then — only where the cost ladder
//! (`ladder.rs`) says so — `stat` (identity: start time, ppid, state, threads), `status` (name, uid,
//! and the fallback numbers) and `smaps_rollup` (the exact numbers); `cmdline` and `cgroup` (the
//! memory cgroup, and the container, pod and systemd unit its path shows) once per process and
//! again after an exec (seen as a new name).
//! Between re-reads a process's record keeps the numbers of its last read (at most `max_staleness`
//! old).
//! Numbers are `exact` (from `smaps_rollup`), `approximate` (`smaps_rollup` unreadable, values from
//! `status`: PSS is then RSS, an upper bound) or `inaccessible` (nothing readable; zeros).
//! A process that vanishes mid-scan is skipped quietly.

use std::{
    borrow::Borrow,
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation, UserNames};
use crate::{
    collectors::cgroup::container::{Container, classify},
    collectors::exchange::DerivedRollup,
    config::{ByteSize, Interval},
    ladder::{Ladder, Reason, TierPolicy, TierStats},
    proc_events::{Scope, Subscription},
    procfs::{
        FileClass, ProcError, ProcFs,
        cgroup::parse_proc_cgroup,
        cmdline::{join_cmdline, parse_cmdline},
        counters::MemCounters,
        escape::Name,
        page_size,
        redact::{name_only, redact},
        smaps_rollup::parse_smaps_rollup,
        stat::{Stat, parse_stat},
        status::{Status, parse_status},
    },
    records::Record,
};

/// The `processes` collector.
pub struct Processes;

impl CollectorDef for Processes {
    const NAME: &'static str = "processes";
    type Config = ProcessesConfig;
    fn build(config: &ProcessesConfig, ctx: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(ProcessesCollector::new(config, ctx.events.subscribe()))
    }
}

/// `[collectors.processes]`: per-process rollups, re-read on the cost ladder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    pub enabled: bool,
    pub interval: Option<Interval>,
    /// Re-read a process's `smaps_rollup` when its resident + shared memory moved by this much.
    pub min_change: ByteSize,
    /// Re-read a process whose last read is this old: the bound on how stale any number is.
    pub max_staleness: Interval,
    /// Time a run may spend re-reading; the rest rolls to the next run, oldest first.
    pub budget: Interval,
    /// How much of each command line is sent.
    pub cmdline: CmdlineMode,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        ProcessesConfig {
            enabled: true,
            interval: None,
            min_change: ByteSize(crate::tracker::DEFAULT_ANON_MIN_CHANGE),
            max_staleness: Interval(Duration::from_secs(300)),
            budget: Interval(Duration::from_secs(2)),
            cmdline: CmdlineMode::Redacted,
        }
    }
}

section!(ProcessesConfig, |c: &ProcessesConfig| {
    use crate::config::bounds::{BUDGET, MAX_STALENESS, THRESHOLD, duration, number};
    number("min_change", c.min_change.0, THRESHOLD)?;
    duration("max_staleness", c.max_staleness, MAX_STALENESS)?;
    duration("budget", c.budget, BUDGET)
});

/// `[collectors.processes] cmdline`: command lines carry passwords and tokens, and the records go
/// to a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CmdlineMode {
    /// As the process has it.
    Full,
    /// Secrets replaced with `***` ([`crate::procfs::redact`]).
    #[default]
    Redacted,
    /// The program's name only.
    NameOnly,
}

/// How trustworthy a process's numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Numbers {
    Exact,
    Approximate,
    Inaccessible,
}

/// Memory of one process (or a subtree), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Memory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub uss_bytes: u64,
    pub swap_bytes: u64,
    pub swap_pss_bytes: u64,
    pub pss_anon_bytes: u64,
    pub pss_file_bytes: u64,
    pub pss_shmem_bytes: u64,
    /// Hugetlb pages mapped (`Shared_Hugetlb + Private_Hugetlb`, or `HugetlbPages` of `status`):
    /// not part of RSS or PSS.
    pub hugetlb_bytes: u64,
}

impl Memory {
    fn from_rollup(c: &MemCounters) -> Memory {
        Memory {
            rss_bytes: c.rss,
            pss_bytes: c.pss,
            uss_bytes: c.uss(),
            swap_bytes: c.swap,
            swap_pss_bytes: c.swap_pss,
            // Kernels before 5.x lack the split; anon is then the best single guess for private memory.
            pss_anon_bytes: c.pss_anon.unwrap_or(0),
            pss_file_bytes: c.pss_file.unwrap_or(0),
            pss_shmem_bytes: c.pss_shmem.unwrap_or(0),
            hugetlb_bytes: c.hugetlb(),
        }
    }

    /// From `status` when `smaps_rollup` cannot be read: RSS and its split are exact, PSS is taken as
    /// RSS (an upper bound), USS as RssAnon, swap PSS as swap.
    fn from_status(s: &Status) -> Memory {
        let rss = s.vm_rss.unwrap_or(0);
        let swap = s.vm_swap.unwrap_or(0);
        Memory {
            rss_bytes: rss,
            pss_bytes: rss,
            uss_bytes: s.rss_anon.unwrap_or(0),
            swap_bytes: swap,
            swap_pss_bytes: swap,
            pss_anon_bytes: s.rss_anon.unwrap_or(0),
            pss_file_bytes: s.rss_file.unwrap_or(0),
            pss_shmem_bytes: s.rss_shmem.unwrap_or(0),
            hugetlb_bytes: s.hugetlb_pages.unwrap_or(0),
        }
    }
}

/// Totals over a process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Subtree {
    /// Processes in the subtree, the process itself included.
    pub processes: u32,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub uss_bytes: u64,
    pub swap_bytes: u64,
}

/// The `process` record body.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    pub name: Name,
    pub cmdline: Name,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub state: String,
    pub threads: u32,
    /// Start time in clock ticks after boot: with the pid, identifies the process across pid reuse.
    pub start_ticks: u64,
    pub kernel_thread: bool,
    /// The memory cgroup's path, as `/proc/PID/cgroup` shows it (the v1 `memory` line or v2 `0::`).
    pub cgroup: Option<Name>,
    /// The container, pod and QoS the cgroup path shows.
    pub container: Option<Container>,
    /// The innermost systemd `.service` or `.scope` of the cgroup path.
    pub unit: Option<Name>,
    pub numbers: Numbers,
    #[serde(flatten)]
    pub memory: Memory,
    pub subtree: Subtree,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessesObservation {
    /// The records, shared with the collector: a process not re-read and with the same subtree
    /// is the same record as in the last run, not a copy.
    pub processes: Vec<Arc<ProcessRecord>>,
    /// Processes whose numbers are approximate / inaccessible this run.
    pub approximate: u32,
    pub inaccessible: u32,
    /// Processes that vanished while being read.
    pub vanished: u32,
    /// Processes whose rollup was derived from this tick's `smaps` read instead of reading
    /// `smaps_rollup` (one page walk for both tiers).
    pub rollups_derived: u32,
    /// Per-process errors other than gone/denied (each carries its path).
    pub errors: Vec<String>,
    /// The `rollup` tier's statistics after this run.
    pub tier: TierStats,
    /// Time this run spent waiting for the `smaps` run of the same tick (its plan, the rollups it
    /// derives): part of the run's duration, but the `smaps` run's work, not this one's.
    pub waited: Duration,
    /// This run's number (the collector's first run is 1).
    pub generation: u64,
    /// Processes whose record is the same as in the previous run's observation (not re-read, same
    /// subtree), in pid order.
    pub unchanged: Vec<u32>,
    /// The run since which the processes listed and their cgroups are the same (what objects'
    /// top cgroups are summed by); `u64::MAX`: changed after the run (an exit reported at once).
    pub cgroups_changed_in: u64,
}

impl Observation for ProcessesObservation {
    fn records(&self, out: &mut Vec<Record>) {
        for p in &self.processes {
            out.push(Record::new("process", p.pid.to_string(), &**p));
        }
    }

    /// `None` for an observation not made by a run (generation 0: a test's, a fixture's).
    fn generation(&self) -> Option<u64> {
        (self.generation > 0).then_some(self.generation)
    }

    /// Leaves out the records of processes that are the same as in run `since`: every one when
    /// `since` is this run (the same observation emitted again), those in `unchanged` when it is
    /// the run before, none otherwise.
    fn records_since(
        &self,
        since: u64,
        out: &mut Vec<Record>,
        unchanged: &mut Vec<(&'static str, String)>,
    ) {
        for p in &self.processes {
            let same = since == self.generation
                || (since + 1 == self.generation && self.unchanged.binary_search(&p.pid).is_ok());
            if same {
                unchanged.push(("process", p.pid.to_string()));
            } else {
                out.push(Record::new("process", p.pid.to_string(), &**p));
            }
        }
    }

    fn warnings(&self, out: &mut Vec<String>) {
        if self.inaccessible > 0 {
            out.push(format!(
                "processes: {} process(es) inaccessible (permission denied)",
                self.inaccessible
            ));
        }
        if self.approximate > 0 {
            out.push(format!(
                "processes: {} process(es) approximate (smaps_rollup unreadable, numbers from status)",
                self.approximate
            ));
        }
        out.extend(self.errors.iter().map(|e| format!("processes: {e}")));
    }

    fn tier(&self) -> Option<(&'static str, &TierStats)> {
        Some(("rollup", &self.tier))
    }

    fn forget_processes(&mut self, exited: &std::collections::HashSet<u32>) -> bool {
        let before = self.processes.len();
        self.processes.retain(|r| !exited.contains(&r.pid));
        if self.processes.len() != before {
            self.cgroups_changed_in = u64::MAX;
        }
        true
    }
}

/// What is kept per process between runs.
struct Known {
    /// The record of its last read (of `smaps_rollup`/`status`), with its subtree as last listed
    /// (the observations share it). Its cmdline and cgroup are read again only after an exec (a
    /// new name) or for a new process.
    record: Arc<ProcessRecord>,
    /// The run that last re-read it.
    read_in: u64,
    /// The last run whose observation listed it, with its subtree then.
    listed: Option<(u64, Subtree)>,
}

pub struct ProcessesCollector {
    known: HashMap<u32, Known>,
    users: UserNames,
    ladder: Ladder,
    budget: Duration,
    cmdline: CmdlineMode,
    stats: TierStats,
    events: Subscription,
    buf: Vec<u8>,
    /// Runs so far (the current one while it goes).
    generation: u64,
    /// See [`ProcessesObservation::cgroups_changed_in`].
    cgroups_changed_in: u64,
    /// A re-read this run found another cgroup than before.
    cgroup_moved: bool,
    /// Processes listed by the last run.
    listed_count: usize,
}

/// The `cmdline` field: `/proc/PID/cmdline` joined with spaces, as much of it as `mode` allows.
fn render_cmdline(mode: CmdlineMode, raw: &[u8]) -> Name {
    let args = parse_cmdline(raw);
    match mode {
        CmdlineMode::Full => join_cmdline(&args),
        CmdlineMode::Redacted => join_cmdline(&redact(&args)),
        CmdlineMode::NameOnly => name_only(&args),
    }
}

impl ProcessesCollector {
    /// `events`: this collector's subscription to the tracker's stream.
    pub fn new(config: &ProcessesConfig, events: Subscription) -> Self {
        ProcessesCollector {
            known: HashMap::new(),
            users: UserNames::default(),
            ladder: Ladder::new(
                TierPolicy {
                    min_change_bytes: config.min_change.0,
                    max_staleness: config.max_staleness.get(),
                    layout_changes: false,
                    scope: Scope::ALL,
                },
                page_size(),
            ),
            budget: config.budget.get(),
            cmdline: config.cmdline,
            stats: TierStats::default(),
            events,
            buf: Vec::with_capacity(8192),
            generation: 0,
            cgroups_changed_in: 0,
            cgroup_moved: false,
            listed_count: 0,
        }
    }

    /// Reads one process. A vanished process is `Err(Gone)`. With `derived` (this tick's smaps
    /// read of the same process, see [`super::exchange`]), `smaps_rollup` is not read.
    fn read_process(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        derived: Option<DerivedRollup>,
        obs: &mut ProcessesObservation,
    ) -> Result<ProcessRecord, ProcError> {
        let stat: Stat = procfs.read_parsed(
            &procfs.pid_path(pid, "stat"),
            FileClass::OTHER,
            &mut self.buf,
            parse_stat,
        )?;
        let status = match procfs.read_parsed(
            &procfs.pid_path(pid, "status"),
            FileClass::STATUS,
            &mut self.buf,
            parse_status,
        ) {
            Ok(s) => Some(s),
            Err(e) if e.is_denied() => None,
            // A garbage status loses its own fields only: stat and smaps_rollup still say the rest.
            Err(e @ ProcError::Parse { .. }) => {
                obs.errors.push(e.to_string());
                None
            }
            Err(e) => return Err(e),
        };
        // No mm (kernel thread, zombie): zero memory, and smaps_rollup would fail with ESRCH.
        let no_mm = status.as_ref().is_some_and(|s| s.vm_size.is_none());
        let derived = derived.filter(|(start, _)| *start == stat.starttime_ticks);
        let (numbers, memory) = if no_mm {
            (Numbers::Exact, Memory::default())
        } else if let Some((_, c)) = derived {
            obs.rollups_derived += 1;
            (Numbers::Exact, Memory::from_rollup(&c))
        } else {
            match procfs.read_parsed(
                &procfs.pid_path(pid, "smaps_rollup"),
                FileClass::SMAPS_ROLLUP,
                &mut self.buf,
                parse_smaps_rollup,
            ) {
                Ok(Some(c)) => (Numbers::Exact, Memory::from_rollup(&c)),
                Ok(None) => (Numbers::Exact, Memory::default()),
                // Unreadable (denied) or unparsable (truncated, garbage): status has the rest.
                Err(e) if e.is_denied() || matches!(e, ProcError::Parse { .. }) => {
                    if !e.is_denied() {
                        obs.errors.push(e.to_string());
                    }
                    match &status {
                        Some(s) => (Numbers::Approximate, Memory::from_status(s)),
                        None => (Numbers::Inaccessible, Memory::default()),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let kernel_thread = no_mm && stat.state != 'Z';
        match numbers {
            Numbers::Approximate => obs.approximate += 1,
            Numbers::Inaccessible => obs.inaccessible += 1,
            Numbers::Exact => {}
        }

        let name = status
            .as_ref()
            .map_or_else(|| stat.comm.clone(), |s| s.name.clone());
        let (cmdline, cgroup) = match self.known.get(&pid).map(|k| &*k.record) {
            Some(k) if k.start_ticks == stat.starttime_ticks && k.name == name => (
                k.cmdline.clone(),
                CgroupOf {
                    path: k.cgroup.clone(),
                    container: k.container.clone(),
                    unit: k.unit.clone(),
                },
            ),
            _ => {
                let cmdline =
                    match procfs.read(&procfs.pid_path(pid, "cmdline"), FileClass::CMDLINE) {
                        Ok(bytes) => render_cmdline(self.cmdline, &bytes),
                        Err(e) if e.is_denied() => Name::default(),
                        Err(e) => return Err(e),
                    };
                (cmdline, CgroupOf::read(procfs, pid, &mut obs.errors))
            }
        };

        let uid = status.as_ref().map(|s| s.uid[0]);
        let user = uid.and_then(|u| self.users.get(u));
        Ok(ProcessRecord {
            pid,
            ppid: status.as_ref().map_or(stat.ppid, |s| s.ppid),
            name,
            cmdline,
            uid,
            user,
            state: stat.state.to_string(),
            threads: stat.num_threads,
            start_ticks: stat.starttime_ticks,
            kernel_thread,
            cgroup: cgroup.path,
            container: cgroup.container,
            unit: cgroup.unit,
            numbers,
            memory,
            subtree: Subtree::default(),
        })
    }
    /// Re-reads `pid` (due for `reason`, counted; `None`: refreshed from this tick's smaps read)
    /// into its record; a vanished one leaves `live`.
    fn reread(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        reason: Option<Reason>,
        derived: Option<DerivedRollup>,
        obs: &mut ProcessesObservation,
        live: &mut std::collections::HashSet<u32>,
    ) {
        match self.read_process(procfs, pid, derived, obs) {
            Ok(mut p) => {
                if let Some(reason) = reason {
                    self.stats.count(reason);
                }
                self.ladder.done(pid, Instant::now());
                let old = self.known.get(&pid);
                // Read again the same (an idle process re-read for staleness): the record kept
                // stands, and its record is not sent again.
                if let Some(k) = old {
                    p.subtree = k.record.subtree;
                    if *k.record == p {
                        return;
                    }
                }
                self.cgroup_moved |= old.is_some_and(|k| k.record.cgroup != p.cgroup);
                let listed = old.and_then(|k| k.listed);
                self.known.insert(
                    pid,
                    Known {
                        record: Arc::new(p),
                        read_in: self.generation,
                        listed,
                    },
                );
            }
            Err(e) if e.is_gone() => {
                obs.vanished += 1;
                live.remove(&pid);
                self.ladder.forget(pid);
                self.known.remove(&pid);
            }
            Err(e) if e.is_denied() => {
                obs.inaccessible += 1;
                self.ladder.done(pid, Instant::now());
            }
            Err(e) => {
                debug!(pid, error = %e, "process read failed");
                obs.errors.push(e.to_string());
                self.ladder.done(pid, Instant::now());
            }
        }
    }
}

/// A process's memory cgroup and what its path shows, read once per process (the tmpfs collector
/// reads it too, for the container of a mount namespace's member).
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupOf {
    pub(crate) path: Option<Name>,
    pub(crate) container: Option<Container>,
    pub(crate) unit: Option<Name>,
}

impl CgroupOf {
    /// Reads `/proc/PID/cgroup`. Unreadable (no cgroup support, denied, gone: the other reads say
    /// so) leaves it unknown; garbage is an error with the path.
    pub(crate) fn read(procfs: &ProcFs, pid: u32, errors: &mut Vec<String>) -> CgroupOf {
        let path = procfs.pid_path(pid, "cgroup");
        let parsed = procfs
            .read(&path, crate::collectors::cgroup::CGROUP_FILES)
            .and_then(|bytes| {
                parse_proc_cgroup(&bytes).map_err(|source| ProcError::Parse {
                    path: path.clone(),
                    source,
                })
            });
        match parsed {
            Ok(c) => match c.memory_path() {
                Some(p) => {
                    let class = classify(p);
                    CgroupOf {
                        path: Some(Name::new(p)),
                        container: class.container,
                        unit: class.unit,
                    }
                }
                None => CgroupOf::default(),
            },
            Err(e) if e.is_gone() || e.is_denied() => CgroupOf::default(),
            Err(e) => {
                errors.push(e.to_string());
                CgroupOf::default()
            }
        }
    }
}

impl Collector for ProcessesCollector {
    fn name(&self) -> &'static str {
        Processes::NAME
    }

    fn uses_statm_pass(&self) -> bool {
        true
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let start = Instant::now();
        self.generation += 1;
        let pass = ctx.statm_pass(&mut self.buf)?;
        let mut obs = ProcessesObservation {
            generation: self.generation,
            ..ProcessesObservation::default()
        };

        // Tier 1: the tracker's events, then statm of every process, every run.
        let tier1 = self.ladder.run_tier1(&pass, &self.events.take(), start);
        let mut live = tier1.live;
        obs.vanished += tier1.vanished;
        // A pid whose process exited, forked anew or was reused: its old record must not stand.
        for pid in &tier1.forgotten {
            self.known.remove(pid);
        }
        self.known.retain(|pid, _| live.contains(pid));
        super::shrink_sparse(&mut self.known);

        // Tier 2: smaps_rollup where the ladder says so, within the budget. Processes the smaps
        // tier reads this tick too come last: their rollup is derived from that read.
        let mut carried = 0;
        let exchange = &pass.exchange;
        let waiting = Instant::now();
        exchange.wait_for_plan();
        obs.waited += waiting.elapsed();
        let mut later = Vec::new();
        for (pid, reason) in self.ladder.due() {
            if exchange.planned(pid) {
                later.push((pid, reason));
                continue;
            }
            if !ctx.unbounded && start.elapsed() >= self.budget {
                carried += 1;
                continue;
            }
            self.reread(ctx.procfs, pid, Some(reason), None, &mut obs, &mut live);
        }
        let due: std::collections::HashSet<u32> = later.iter().map(|(pid, _)| *pid).collect();
        for (pid, reason) in later {
            let waiting = Instant::now();
            let derived = exchange.take(pid);
            obs.waited += waiting.elapsed();
            if derived.is_none() && !ctx.unbounded && start.elapsed() >= self.budget {
                carried += 1;
                continue;
            }
            self.reread(ctx.procfs, pid, Some(reason), derived, &mut obs, &mut live);
        }
        // Processes the smaps tier read this tick that this tier did not have due: the rollup
        // derived from that read refreshes their numbers too, at no page walk more. That keeps
        // the two tiers' staleness deadlines together, so a process that is only ever re-read for
        // staleness is walked once per `max_staleness` (by `smaps`), not a second time by
        // `smaps_rollup` at its own, drifted deadline. Not counted as a re-read of this tier.
        for pid in exchange.plan_pids() {
            if due.contains(&pid) || !live.contains(&pid) || !self.known.contains_key(&pid) {
                continue;
            }
            let waiting = Instant::now();
            let derived = exchange.take(pid);
            obs.waited += waiting.elapsed();
            if let Some(derived) = derived {
                self.reread(ctx.procfs, pid, None, Some(derived), &mut obs, &mut live);
            }
        }
        self.ladder.set_run_length(start.elapsed());
        self.stats.finish_run(&self.ladder, carried, Instant::now());
        obs.tier = self.stats.clone();

        // The listed processes, in /proc order, with their subtrees.
        let listed: Vec<u32> = pass
            .processes
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| live.contains(pid) && self.known.contains_key(pid))
            .collect();
        let trees = {
            let records: Vec<&ProcessRecord> = listed
                .iter()
                .filter_map(|pid| self.known.get(pid).map(|k| &*k.record))
                .collect();
            subtrees(&records)
        };
        // Each record goes to the observation as it is kept, shared; a subtree that moved is set
        // in the kept record first (a copy only if the last observation still holds it). What is
        // the same as in the last run's observation: listed in it, not re-read since, the same
        // subtree.
        let generation = self.generation;
        // The same processes as last run (each listed then, as many) in the same cgroups?
        let mut moved = std::mem::take(&mut self.cgroup_moved) || listed.len() != self.listed_count;
        // Sized up front: grown by doubling, the list of 3000 records would hold room for 4096.
        obs.processes = Vec::with_capacity(listed.len());
        for (pid, subtree) in listed.iter().zip(trees) {
            let Some(k) = self.known.get_mut(pid) else {
                continue;
            };
            moved |= k.listed.is_none_or(|(g, _)| g + 1 != generation);
            if k.record.subtree != subtree {
                Arc::make_mut(&mut k.record).subtree = subtree;
            }
            if k.read_in != generation && k.listed == Some((generation - 1, subtree)) {
                obs.unchanged.push(*pid);
            }
            k.listed = Some((generation, subtree));
            obs.processes.push(Arc::clone(&k.record));
        }
        obs.unchanged.sort_unstable();
        self.listed_count = obs.processes.len();
        if moved {
            self.cgroups_changed_in = generation;
        }
        obs.cgroups_changed_in = self.cgroups_changed_in;
        Ok(Some(Box::new(obs)))
    }
}

/// Fills `subtree` of every process: itself plus all descendants. No recursion: processes are
/// ordered parents-before-children by a breadth-first walk from the roots (processes whose parent is
/// not in the set), then folded children-into-parents in reverse order. A ppid cycle (impossible in
/// a real `/proc`, possible in a broken fixture) leaves its members as their own subtree.
pub fn compute_subtrees(procs: &mut [ProcessRecord]) {
    let trees = subtrees(procs);
    for (p, t) in procs.iter_mut().zip(trees) {
        p.subtree = t;
    }
}

/// The `subtree` of every process of `procs` (see [`compute_subtrees`]), in their order.
pub fn subtrees<P: Borrow<ProcessRecord>>(procs: &[P]) -> Vec<Subtree> {
    let index: HashMap<u32, usize> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.borrow().pid, i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); procs.len()];
    let mut roots = Vec::new();
    for (i, p) in procs.iter().map(Borrow::borrow).enumerate() {
        match index.get(&p.ppid) {
            Some(&parent) if parent != i => children[parent].push(i),
            _ => roots.push(i),
        }
    }
    let mut order = Vec::with_capacity(procs.len());
    let mut seen = vec![false; procs.len()];
    let mut head = 0;
    order.extend(roots.iter().copied());
    for &r in &roots {
        seen[r] = true;
    }
    while head < order.len() {
        let i = order[head];
        head += 1;
        for &c in &children[i] {
            if !seen[c] {
                seen[c] = true;
                order.push(c);
            }
        }
    }
    let mut trees: Vec<Subtree> = procs
        .iter()
        .map(|p| {
            let m = &p.borrow().memory;
            Subtree {
                processes: 1,
                rss_bytes: m.rss_bytes,
                pss_bytes: m.pss_bytes,
                uss_bytes: m.uss_bytes,
                swap_bytes: m.swap_bytes,
            }
        })
        .collect();
    for &i in order.iter().rev() {
        let ppid = procs[i].borrow().ppid;
        if let Some(&parent) = index.get(&ppid)
            && parent != i
            && seen[parent]
        {
            let s = trees[i];
            let t = &mut trees[parent];
            // Saturating: figures from a hostile tree must not wrap.
            t.processes = t.processes.saturating_add(s.processes);
            t.rss_bytes = t.rss_bytes.saturating_add(s.rss_bytes);
            t.pss_bytes = t.pss_bytes.saturating_add(s.pss_bytes);
            t.uss_bytes = t.uss_bytes.saturating_add(s.uss_bytes);
            t.swap_bytes = t.swap_bytes.saturating_add(s.swap_bytes);
        }
    }
    trees
}

/// Records as an observation lists them (tests).
#[cfg(test)]
pub(crate) fn listed(records: Vec<ProcessRecord>) -> Vec<Arc<ProcessRecord>> {
    records.into_iter().map(Arc::new).collect()
}

#[cfg(test)]
impl ProcessRecord {
    /// A record for tests: `pid` (parent 0) with `numbers` and `memory`, everything else neutral.
    pub(crate) fn test(pid: u32, numbers: Numbers, memory: Memory) -> ProcessRecord {
        ProcessRecord {
            pid,
            ppid: 0,
            name: Name::from("x"),
            cmdline: Name::default(),
            uid: Some(0),
            user: None,
            state: "S".into(),
            threads: 1,
            start_ticks: 0,
            kernel_thread: false,
            cgroup: None,
            container: None,
            unit: None,
            numbers,
            memory,
            subtree: Subtree::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, pss: u64) -> ProcessRecord {
        let memory = Memory {
            pss_bytes: pss,
            rss_bytes: pss * 2,
            ..Memory::default()
        };
        ProcessRecord {
            ppid,
            ..ProcessRecord::test(pid, Numbers::Exact, memory)
        }
    }

    #[test]
    fn subtrees_sum_descendants_without_recursion() {
        // 1 -> {2 -> {4, 5}, 3}; 9's parent 8 is not in the set (a root).
        let mut ps = vec![
            proc(5, 2, 50),
            proc(1, 0, 1),
            proc(2, 1, 2),
            proc(3, 1, 3),
            proc(4, 2, 4),
            proc(9, 8, 9),
        ];
        compute_subtrees(&mut ps);
        let by = |pid| {
            ps.iter()
                .find(|p| p.pid == pid)
                .map(|p| p.subtree)
                .expect("pid")
        };
        assert_eq!(by(1).pss_bytes, 1 + 2 + 3 + 4 + 50);
        assert_eq!(by(1).processes, 5);
        assert_eq!(by(1).rss_bytes, 2 * 60);
        assert_eq!(by(2).pss_bytes, 2 + 4 + 50);
        assert_eq!(by(5).pss_bytes, 50);
        assert_eq!(by(9).processes, 1);
    }

    #[test]
    fn deep_chains_do_not_overflow_the_stack() {
        let n = 200_000u32;
        let mut ps: Vec<_> = (1..=n).map(|pid| proc(pid, pid - 1, 1)).collect();
        compute_subtrees(&mut ps);
        assert_eq!(ps[0].subtree.pss_bytes, u64::from(n));
        assert_eq!(ps[0].subtree.processes, n);
    }

    #[test]
    fn subtree_sums_saturate_instead_of_wrapping() {
        let mut ps = vec![
            proc(1, 0, u64::MAX / 2),
            proc(2, 1, u64::MAX / 2),
            proc(3, 1, 4096),
        ];
        compute_subtrees(&mut ps);
        assert_eq!(ps[0].subtree.pss_bytes, u64::MAX);
        assert_eq!(ps[0].subtree.rss_bytes, u64::MAX);
    }

    #[test]
    fn ppid_cycles_terminate() {
        let mut ps = vec![proc(1, 2, 1), proc(2, 1, 1)];
        compute_subtrees(&mut ps);
        assert!(ps.iter().all(|p| p.subtree.processes == 1));
    }
}

#[cfg(test)]
mod tree_tests {
    //! The collector over a temporary /proc tree built from the fixtures: races and kernel threads.
    use std::path::Path;

    use super::*;
    use crate::collectors::CollectCtx;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/proc")
    }

    /// Copies fixture pid `from` to `root/to`, leaving out `skip` files.
    fn copy_pid(root: &Path, from: u32, to: u32, skip: &[&str]) {
        let dst = root.join(to.to_string());
        std::fs::create_dir_all(&dst).expect("mkdir");
        for f in [
            "stat",
            "statm",
            "status",
            "smaps_rollup",
            "smaps",
            "cmdline",
            "cgroup",
        ] {
            if !skip.contains(&f) {
                std::fs::copy(fixtures().join(from.to_string()).join(f), dst.join(f))
                    .expect("copy fixture");
            }
        }
    }

    fn collect(root: &Path) -> ProcessesObservation {
        collect_with(root, &ProcessesConfig::default())
    }

    fn collect_with(root: &Path, config: &ProcessesConfig) -> ProcessesObservation {
        let mut c = ProcessesCollector::new(config, Subscription::detached());
        collect_again(&mut c, &ProcFs::new(root))
    }

    /// One more run of `c`, as `--once` runs it.
    fn collect_again(c: &mut ProcessesCollector, procfs: &ProcFs) -> ProcessesObservation {
        crate::collectors::observed::<ProcessesObservation>(c.collect(&CollectCtx::once(procfs)))
            .unwrap_or_else(|e| panic!("unexpected: {e}"))
    }

    /// The one process of `obs`, kept although `file` was bad, which a warning names.
    fn kept_despite(obs: &ProcessesObservation, file: &str) -> ProcessRecord {
        assert_eq!(
            obs.processes.len(),
            1,
            "the process is kept: {:?}",
            obs.errors
        );
        assert!(
            obs.errors.iter().any(|e| e.contains(file)),
            "{file} not named in {:?}",
            obs.errors
        );
        (*obs.processes[0]).clone()
    }

    #[test]
    fn vanished_processes_are_skipped_quietly() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        // Gone between the directory listing and the reads: no files at all, or only some.
        std::fs::create_dir(dir.path().join("45")).expect("mkdir");
        copy_pid(dir.path(), 44, 46, &["status", "smaps_rollup"]);
        let obs = collect(dir.path());
        let pids: Vec<u32> = obs.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![44]);
        assert_eq!(obs.vanished, 2);
        assert!(
            obs.errors.is_empty(),
            "no warnings for vanished processes: {:?}",
            obs.errors
        );
        let mut w = Vec::new();
        obs.warnings(&mut w);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn kernel_threads_have_zero_memory_and_no_rollup_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The kernel answers smaps_rollup of a kernel thread with ESRCH: without the file, reading
        // it would look like a vanished process.
        copy_pid(dir.path(), 2, 2, &["smaps_rollup"]);
        let obs = collect(dir.path());
        assert_eq!(obs.processes.len(), 1);
        let k = &obs.processes[0];
        assert!(k.kernel_thread);
        assert_eq!(k.numbers, Numbers::Exact);
        assert_eq!(k.memory, Memory::default());
        assert_eq!(obs.vanished, 0);
    }

    #[test]
    fn a_truncated_rollup_falls_back_to_status_as_approximate() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        let rollup = dir.path().join("44/smaps_rollup");
        let text = std::fs::read(&rollup).expect("read");
        // Cut in the middle of a value line: `Pss:  12` without its unit.
        let cut = text
            .windows(4)
            .position(|w| w == b"Pss:")
            .map(|i| i + 12)
            .expect("a Pss line");
        std::fs::write(&rollup, &text[..cut]).expect("truncate");
        let obs = collect(dir.path());
        let p = kept_despite(&obs, "44/smaps_rollup");
        assert_eq!(p.numbers, Numbers::Approximate);
        assert!(p.memory.rss_bytes > 0);
        assert_eq!(obs.approximate, 1);
    }

    #[test]
    fn a_garbage_status_keeps_the_process_with_what_stat_and_rollup_say() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        std::fs::write(dir.path().join("44/status"), b"\xff garbage\n").expect("garbage");
        let p = kept_despite(&collect(dir.path()), "44/status");
        assert_eq!(p.numbers, Numbers::Exact, "smaps_rollup was fine");
        assert_eq!(p.name, Name::from("sleep"), "the name comes from stat");
        assert!(p.memory.pss_bytes > 0);
    }

    #[test]
    fn command_lines_are_redacted_by_default_and_full_or_name_only_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        std::fs::write(
            dir.path().join("44/cmdline"),
            b"/usr/bin/mysql\0-uroot\0-pS3cret\0shop\0",
        )
        .expect("cmdline");
        let run = |cmdline| {
            let config = ProcessesConfig {
                cmdline,
                ..ProcessesConfig::default()
            };
            collect_with(dir.path(), &config).processes[0]
                .cmdline
                .clone()
        };
        assert_eq!(
            collect(dir.path()).processes[0].cmdline,
            Name::from("/usr/bin/mysql -uroot -p*** shop")
        );
        assert_eq!(
            run(CmdlineMode::Full),
            Name::from("/usr/bin/mysql -uroot -pS3cret shop")
        );
        assert_eq!(run(CmdlineMode::NameOnly), Name::from("mysql"));
    }

    #[test]
    fn numbers_match_the_fixture_rollup() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 43, 43, &[]);
        copy_pid(dir.path(), 44, 44, &[]);
        let obs = collect(dir.path());
        let p = obs.processes.iter().find(|p| p.pid == 44).expect("pid 44");
        let text = std::fs::read(fixtures().join("44/smaps_rollup")).expect("fixture");
        let c = parse_smaps_rollup(&text).expect("parses").expect("has mm");
        assert_eq!(p.memory.pss_bytes, c.pss);
        assert_eq!(p.memory.uss_bytes, c.private_clean + c.private_dirty);
        assert_eq!(p.name, Name::from("sleep"));
        // 44's parent 43 is in the set: its subtree holds both.
        let parent = obs.processes.iter().find(|p| p.pid == 43).expect("pid 43");
        assert_eq!(parent.subtree.processes, 2);
        assert_eq!(
            parent.subtree.pss_bytes,
            parent.memory.pss_bytes + p.memory.pss_bytes
        );
    }

    #[test]
    fn cgroup_and_container_are_read_once_and_again_after_an_exec() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        let procfs = ProcFs::new(dir.path());
        let mut c = ProcessesCollector::new(&ProcessesConfig::default(), Subscription::detached());
        let mut run = || {
            collect_again(&mut c, &procfs)
                .processes
                .into_iter()
                .next()
                .expect("44")
        };
        let p = run();
        let cgroup = p.cgroup.as_ref().map(|n| n.lossy().into_owned());
        assert!(
            cgroup
                .as_deref()
                .is_some_and(|c| c.ends_with("/cri-containerd-9e0f5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918070f6e5d4c3b2a190.scope")),
            "{cgroup:?}"
        );
        let k = p.container.clone().expect("container");
        assert_eq!(k.runtime, Some("containerd"));
        assert_eq!(
            k.pod_uid.as_deref(),
            Some("6b5e1a52-0c4f-4f8e-9d2a-7c3b1e0f9a84")
        );
        assert_eq!(
            k.qos,
            Some(crate::collectors::cgroup::container::Qos::Burstable)
        );
        let json = Record::new("process", "44", &*run()).body;
        assert!(
            json.contains("\"container\":{\"runtime\":\"containerd\",\"id\":\"9e0f"),
            "{json}"
        );

        // Moved to another cgroup, and resident memory moved (so the process is re-read): the
        // cgroup is read once per process, so the record keeps the first one…
        let pid = dir.path().join("44");
        std::fs::write(pid.join("cgroup"), "0::/system.slice/cron.service\n").expect("write");
        std::fs::write(pid.join("statm"), "730 4410 414 5 0 89 0\n").expect("write");
        let status = std::fs::read_to_string(pid.join("status")).expect("status");
        std::fs::write(pid.join("status"), status.replace("PPid:\t43", "PPid:\t1")).expect("write");
        let again = run();
        assert_eq!(again.ppid, 1, "re-read (the new PPid shows)");
        assert_eq!(again.cgroup, p.cgroup);
        // …until an exec (a new name): then cmdline and cgroup are read again.
        let status = std::fs::read_to_string(pid.join("status")).expect("status");
        std::fs::write(
            pid.join("status"),
            status.replace("Name:\tsleep", "Name:\tcron"),
        )
        .expect("write");
        std::fs::write(pid.join("statm"), "730 441 414 5 0 89 0\n").expect("write");
        let p = run();
        assert_eq!(p.cgroup, Some(Name::from("/system.slice/cron.service")));
        assert_eq!(p.unit, Some(Name::from("cron.service")));
        assert_eq!(p.container, None);
    }

    #[test]
    fn a_process_the_smaps_tier_read_this_tick_is_not_walked_again() {
        use crate::collectors::smaps::{SmapsCollector, SmapsConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 43, 43, &[]);
        copy_pid(dir.path(), 44, 44, &[]);
        std::fs::create_dir_all(dir.path().join("self")).expect("mkdir");
        std::fs::write(dir.path().join("self/mountinfo"), "").expect("mountinfo");
        let procfs = ProcFs::new(dir.path());
        // One tick's pass, shared by both collectors as the scheduler shares it.
        let pass = crate::ladder::StatmPass::read_once(&procfs, &mut Vec::new()).expect("pass");
        let ctx = CollectCtx {
            statm: Some(std::sync::Arc::new(pass)),
            ..CollectCtx::once(&procfs)
        };
        let mut smaps = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let mut processes =
            ProcessesCollector::new(&ProcessesConfig::default(), Subscription::detached());
        smaps.collect(&ctx).expect("smaps");
        let rollup_reads = |p: &ProcFs| {
            p.counters()
                .by_class()
                .iter()
                .find(|(c, _)| *c == FileClass::SMAPS_ROLLUP.name())
                .map_or(0, |(_, n)| n.bytes)
        };
        let obs = crate::collectors::observed::<ProcessesObservation>(processes.collect(&ctx))
            .unwrap_or_else(|e| panic!("unexpected: {e}"));
        assert_eq!(obs.rollups_derived, 2);
        assert_eq!(rollup_reads(&procfs), 0, "no smaps_rollup read");
        for p in &obs.processes {
            let text =
                std::fs::read(fixtures().join(format!("{}/smaps_rollup", p.pid))).expect("fixture");
            let want =
                Memory::from_rollup(&parse_smaps_rollup(&text).expect("parses").expect("mm"));
            assert_eq!(p.numbers, Numbers::Exact);
            assert_eq!(
                (p.memory.rss_bytes, p.memory.uss_bytes, p.memory.swap_bytes),
                (want.rss_bytes, want.uss_bytes, want.swap_bytes),
                "pid {}",
                p.pid
            );
            // PSS: the kernel's kB rounding per mapping.
            assert!(
                want.pss_bytes - p.memory.pss_bytes < 64 << 10,
                "pid {}",
                p.pid
            );
            let split =
                p.memory.pss_anon_bytes + p.memory.pss_file_bytes + p.memory.pss_shmem_bytes;
            assert_eq!(
                split, p.memory.pss_bytes,
                "pid {}: the split adds up",
                p.pid
            );
        }

        // A tick where the smaps tier does not run: smaps_rollup is read as before.
        let mut alone =
            ProcessesCollector::new(&ProcessesConfig::default(), Subscription::detached());
        let obs = crate::collectors::observed::<ProcessesObservation>(
            alone.collect(&CollectCtx::once(&procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"));
        assert_eq!(obs.rollups_derived, 0);
        assert!(rollup_reads(&procfs) > 0);
    }

    #[test]
    fn a_smaps_read_the_rollup_tier_did_not_ask_for_refreshes_its_numbers_too() {
        use crate::collectors::smaps::{SmapsCollector, SmapsConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 44, 44, &[]);
        std::fs::create_dir_all(dir.path().join("self")).expect("mkdir");
        std::fs::write(dir.path().join("self/mountinfo"), "").expect("mountinfo");
        let procfs = ProcFs::new(dir.path());
        let mut smaps = SmapsCollector::new(&SmapsConfig::default(), Subscription::detached());
        let mut processes =
            ProcessesCollector::new(&ProcessesConfig::default(), Subscription::detached());
        // One tick as the scheduler runs it: one pass, the smaps run first (sequential here).
        let mut tick = |smaps: &mut SmapsCollector| {
            let pass = crate::ladder::StatmPass::read_once(&procfs, &mut Vec::new()).expect("pass");
            let ctx = CollectCtx {
                statm: Some(std::sync::Arc::new(pass)),
                unbounded: false,
                ..CollectCtx::once(&procfs)
            };
            smaps.collect(&ctx).expect("smaps");
            crate::collectors::observed::<ProcessesObservation>(processes.collect(&ctx))
                .unwrap_or_else(|e| panic!("unexpected: {e}"))
        };
        let first = tick(&mut smaps);
        assert_eq!(first.rollups_derived, 1);
        let pss = first.processes[0].memory.pss_bytes;
        // The layout changes (statm's size) and so does the smaps text, but not the resident
        // size: only the smaps tier has the process due.
        let pid = dir.path().join("44");
        std::fs::write(pid.join("statm"), "731 441 414 5 0 89 0\n").expect("statm");
        let text = std::fs::read_to_string(pid.join("smaps")).expect("smaps");
        let anon = "7f0000000000-7f0000100000 rw-p 00000000 00:00 0 \nRss: 400 kB\nPss: 400 kB\n\
                    Private_Dirty: 400 kB\nAnonymous: 400 kB\n";
        std::fs::write(pid.join("smaps"), format!("{text}{anon}")).expect("smaps");
        let second = tick(&mut smaps);
        assert_eq!(second.rollups_derived, 1, "refreshed from the smaps read");
        assert_eq!(
            second.processes[0].memory.pss_bytes,
            pss + (400 << 10),
            "the new mapping shows"
        );
        assert!(
            second.tier.rereads.values().sum::<u64>() == first.tier.rereads.values().sum::<u64>(),
            "not counted as a rollup re-read: {:?}",
            second.tier.rereads
        );
        let rollup_reads = procfs
            .counters()
            .by_class()
            .iter()
            .find(|(c, _)| *c == FileClass::SMAPS_ROLLUP.name())
            .map_or(0, |(_, n)| n.reads);
        assert_eq!(rollup_reads, 0, "no smaps_rollup read");
    }

    #[test]
    fn a_run_says_which_records_are_the_same_as_in_the_run_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_pid(dir.path(), 43, 43, &[]);
        copy_pid(dir.path(), 44, 44, &[]);
        let procfs = ProcFs::new(dir.path());
        let mut c = ProcessesCollector::new(&ProcessesConfig::default(), Subscription::detached());
        let mut run = || collect_again(&mut c, &procfs);
        let first = run();
        assert_eq!((first.generation, first.unchanged.len()), (1, 0));
        let second = run();
        assert_eq!(second.generation, 2);
        assert_eq!(second.unchanged, [43, 44], "nothing moved");
        let mut recs = Vec::new();
        let mut same = Vec::new();
        second.records_since(1, &mut recs, &mut same);
        assert!(recs.is_empty());
        assert_eq!(
            same,
            [("process", "43".to_string()), ("process", "44".to_string())]
        );
        // 44's resident memory moves past min_change: it is re-read, and its parent's subtree
        // moves with it (its rollup fixture is the same, so only the re-read says so for 44).
        std::fs::write(dir.path().join("44/statm"), "730 4410 414 5 0 89 0\n").expect("statm");
        let rollup = dir.path().join("44/smaps_rollup");
        let text = std::fs::read_to_string(&rollup).expect("rollup");
        let rss = text
            .lines()
            .find(|l| l.starts_with("Rss:"))
            .expect("an Rss line")
            .to_string();
        std::fs::write(&rollup, text.replace(&rss, "Rss:             9999 kB")).expect("rollup");
        let third = run();
        assert!(third.unchanged.is_empty(), "{:?}", third.unchanged);
        let mut recs = Vec::new();
        let mut same = Vec::new();
        third.records_since(2, &mut recs, &mut same);
        assert_eq!(recs.len(), 2);
        // Emitted from an older run than the one before: every record is built.
        let fourth = run();
        assert_eq!(fourth.unchanged, [43, 44]);
        let mut recs = Vec::new();
        fourth.records_since(2, &mut recs, &mut Vec::new());
        assert_eq!(recs.len(), 2);
    }
}
