//! Collectors: one per source, behind the [`Collector`] trait, built from the config by
//! [`build_collectors`].
//!
//! Adding a collector: write a module with a type implementing [`Collector`] and an observation type
//! implementing [`ToRecords`]; add its config section to [`crate::config::CollectorsConfig`] (and to
//! `config/memscope.toml`); add a variant to [`Observation`] and an entry to [`REGISTRY`]; test it
//! against a fixture tree (`ProcFs::new(fixture_root)`).

use std::time::Duration;

use crate::{
    config::Config,
    procfs::{ProcError, ProcFs},
    records::Record,
};

pub mod cgroup;
pub mod meminfo;
pub mod processes;
pub mod smaps;
pub mod sysv;
pub mod tmpfs;

/// What a collector gets on each run.
pub struct CollectCtx<'a> {
    pub procfs: &'a ProcFs,
    /// Emission counter of the run (0 for the first).
    pub tick: u64,
    /// Tracker marks and tier statistics.
    pub shared: &'a crate::ladder::Shared,
    /// No time budget (`--once`: everything is read).
    pub unbounded: bool,
}

impl<'a> CollectCtx<'a> {
    /// A context for tests and one-shot use: tick 0, no tracker, no budget.
    pub fn once(procfs: &'a ProcFs, shared: &'a crate::ladder::Shared) -> Self {
        CollectCtx {
            procfs,
            tick: 0,
            shared,
            unbounded: true,
        }
    }
}

/// Tier 1 of the cost ladder for this run: the pid list and every process's `statm`. Within one
/// agent tick the first collector to ask reads it and the others reuse it (see
/// [`crate::ladder::Shared::statm_pass`]); an unbounded run (`--once`, tests) always reads afresh.
pub fn statm_pass(
    ctx: &CollectCtx<'_>,
    buf: &mut Vec<u8>,
) -> Result<std::sync::Arc<crate::ladder::StatmPass>, ProcError> {
    let read = |buf: &mut Vec<u8>| -> Result<crate::ladder::StatmPass, ProcError> {
        use crate::{
            ladder::StatmRead,
            procfs::{FileClass, OpenFiles, statm::parse_statm},
        };
        let pids = ctx.procfs.pids()?;
        let mut files = ctx
            .shared
            .statm_files
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let files =
            files.get_or_insert_with(|| OpenFiles::new("statm", FileClass::Statm, statm_fd_cap()));
        files.retain_sorted(&pids);
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            let read = match files.read(ctx.procfs, pid, buf) {
                Ok(()) => match parse_statm(buf) {
                    Ok(statm) => StatmRead::Read(statm),
                    Err(_) => StatmRead::Unreadable,
                },
                Err(e) if e.is_gone() => StatmRead::Gone,
                // statm is world-readable; if it is not (hidepid), the rollup tier says why.
                Err(_) => StatmRead::Unreadable,
            };
            processes.push((pid, read));
        }
        Ok(crate::ladder::StatmPass { processes })
    };
    if ctx.unbounded {
        return read(buf).map(std::sync::Arc::new);
    }
    ctx.shared
        .statm_pass(ctx.tick, ctx.procfs.root(), || read(buf))
}

/// How many `statm` descriptors to keep open: the soft RLIMIT_NOFILE less a reserve for everything
/// else the agent opens (the agent raises the soft limit to the hard one at start).
fn statm_fd_cap() -> usize {
    // SAFETY: getrlimit writes into the struct we own.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(512)
}

/// A source of observations. `collect` runs on a blocking thread, never on an async worker.
///
/// `Ok(None)` means "nothing to report this time, already handled and logged". An `Err` is reported
/// in the `agent` record and never stops the other collectors.
pub trait Collector: Send {
    fn name(&self) -> &'static str;
    fn collect(&mut self, ctx: &CollectCtx<'_>) -> Result<Option<Observation>, CollectError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("{0}")]
    Other(String),
}

/// Everything a collector can report. Each observation is the collector's complete current view.
#[derive(Debug, Clone)]
pub enum Observation {
    Meminfo(meminfo::MeminfoObservation),
    Processes(processes::ProcessesObservation),
    Objects(smaps::ObjectsObservation),
    Sysv(sysv::SysvObservation),
    Tmpfs(tmpfs::TmpfsObservation),
    Cgroup(cgroup::CgroupObservation),
}

/// Turns an observation into records, and says what is worth a warning in the `snapshot` record.
pub trait ToRecords {
    fn records(&self, out: &mut Vec<Record>);
    fn warnings(&self, _out: &mut Vec<String>) {}
}

impl Observation {
    pub fn as_records(&self) -> &dyn ToRecords {
        match self {
            Observation::Meminfo(o) => o,
            Observation::Processes(o) => o,
            Observation::Objects(o) => o,
            Observation::Sysv(o) => o,
            Observation::Tmpfs(o) => o,
            Observation::Cgroup(o) => o,
        }
    }
}

/// User names by uid, looked up once per uid (from the agent's own passwd database).
#[derive(Debug, Default)]
pub struct UserNames(std::collections::HashMap<u32, Option<String>>);

impl UserNames {
    pub fn get(&mut self, uid: u32) -> Option<String> {
        self.0
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
            })
            .clone()
    }
}

/// A collector with its schedule.
pub struct Registered {
    pub collector: Box<dyn Collector>,
    pub interval: Duration,
}

/// One known collector: its name, and how to build it if the config enables it.
pub struct CollectorSpec {
    pub name: &'static str,
    pub build: fn(&Config, &ProcFs) -> Option<Registered>,
}

/// Every collector memscope knows, in emission order.
pub const REGISTRY: &[CollectorSpec] = &[
    CollectorSpec {
        name: "meminfo",
        build: |config, _| {
            let c = &config.collectors.meminfo;
            c.enabled.then(|| Registered {
                collector: Box::new(meminfo::MeminfoCollector::default()),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "processes",
        build: |config, _| {
            let c = &config.collectors.processes;
            c.enabled.then(|| Registered {
                collector: Box::new(processes::ProcessesCollector::new(c)),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "smaps",
        build: |config, _| {
            let c = &config.collectors.smaps;
            c.enabled.then(|| Registered {
                collector: Box::new(smaps::SmapsCollector::new(c)),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "sysv",
        build: |config, _| {
            let c = &config.collectors.sysv;
            c.enabled.then(|| Registered {
                collector: Box::new(sysv::SysvCollector::default()),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "tmpfs",
        build: |config, _| {
            let c = &config.collectors.tmpfs;
            c.enabled.then(|| Registered {
                collector: Box::new(tmpfs::TmpfsCollector::new(c)),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "cgroup",
        build: |config, _| {
            let c = &config.collectors.cgroup;
            c.enabled.then(|| Registered {
                collector: Box::new(cgroup::CgroupCollector::new(c)),
                interval: config.collector_interval(c.interval),
            })
        },
    },
];

/// Builds the enabled collectors.
pub fn build_collectors(config: &Config, procfs: &ProcFs) -> Vec<Registered> {
    REGISTRY
        .iter()
        .filter_map(|spec| (spec.build)(config, procfs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_match_collector_names() {
        let config = Config::default();
        let procfs = ProcFs::new("/nonexistent");
        let built = build_collectors(&config, &procfs);
        let names: Vec<_> = built.iter().map(|r| r.collector.name()).collect();
        let spec_names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        assert_eq!(names, spec_names);
    }

    #[test]
    fn disabled_collectors_are_not_built() {
        let mut config = Config::default();
        config.collectors.processes.enabled = false;
        config.collectors.tmpfs.enabled = false;
        let built = build_collectors(&config, &ProcFs::new("/nonexistent"));
        let names: Vec<_> = built.iter().map(|r| r.collector.name()).collect();
        assert_eq!(names, vec!["meminfo", "smaps", "sysv", "cgroup"]);
    }
}
