//! Collectors: one per source, behind the [`Collector`] trait, built from the config by
//! [`build_collectors`].
//!
//! Adding a collector: write a module with a type implementing [`Collector`] and an observation type
//! implementing [`ToRecords`]; add its config section to [`crate::config::CollectorsConfig`] (and to
//! `config/memscope.toml`); add a variant to [`Observation`] and an entry to [`REGISTRY`]; test it
//! against a fixture tree (`ProcFs::new(fixture_root)`).

use std::{sync::Arc, time::Duration};

use crate::{
    config::Config,
    ladder::{StatmPass, TierStats},
    proc_events::ProcEvents,
    procfs::{ProcError, ProcFs},
    records::Record,
};

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
    /// This tick's `statm` pass, read once by the scheduler when a ladder collector is due.
    pub statm: Option<Arc<StatmPass>>,
    /// No time budget (`--once`: everything is read).
    pub unbounded: bool,
}

impl<'a> CollectCtx<'a> {
    /// A context for tests and one-shot use: tick 0, no pass read yet, no budget.
    pub fn once(procfs: &'a ProcFs) -> Self {
        CollectCtx {
            procfs,
            tick: 0,
            statm: None,
            unbounded: true,
        }
    }

    /// Tier 1 of the cost ladder for this run: the scheduler's pass of this tick, or (a context
    /// without one: `--once`, tests) a pass read now.
    pub fn statm_pass(&self, buf: &mut Vec<u8>) -> Result<Arc<StatmPass>, ProcError> {
        match &self.statm {
            Some(pass) => Ok(Arc::clone(pass)),
            None => StatmPass::read_once(self.procfs, buf).map(Arc::new),
        }
    }
}

/// A source of observations. `collect` runs on a blocking thread, never on an async worker.
///
/// `Ok(None)` means "nothing to report this time, already handled and logged". An `Err` is reported
/// in the `agent` record and never stops the other collectors.
pub trait Collector: Send {
    fn name(&self) -> &'static str;
    /// Whether it reads the tick's `statm` pass (a ladder collector): the scheduler reads the pass
    /// only in ticks where such a collector is due.
    fn uses_statm_pass(&self) -> bool {
        false
    }
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
}

/// Turns an observation into records, and says what is worth a warning in the `snapshot` record.
pub trait ToRecords {
    fn records(&self, out: &mut Vec<Record>);
    fn warnings(&self, _out: &mut Vec<String>) {}
    /// A ladder collector's tier statistics (tier name, stats), for the `agent` record.
    fn tier(&self) -> Option<(&'static str, &TierStats)> {
        None
    }
}

impl Observation {
    pub fn as_records(&self) -> &dyn ToRecords {
        match self {
            Observation::Meminfo(o) => o,
            Observation::Processes(o) => o,
            Observation::Objects(o) => o,
            Observation::Sysv(o) => o,
            Observation::Tmpfs(o) => o,
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

/// What building a collector may use: the proc filesystem, and the tracker's event stream (a
/// ladder collector subscribes here, once, so it receives every event exactly once).
pub struct BuildCtx<'a> {
    pub procfs: &'a ProcFs,
    pub events: &'a ProcEvents,
}

/// One known collector: its name, and how to build it if the config enables it.
pub struct CollectorSpec {
    pub name: &'static str,
    pub build: fn(&Config, &BuildCtx<'_>) -> Option<Registered>,
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
        build: |config, ctx| {
            let c = &config.collectors.processes;
            c.enabled.then(|| Registered {
                collector: Box::new(processes::ProcessesCollector::new(
                    c,
                    ctx.events.subscribe(),
                )),
                interval: config.collector_interval(c.interval),
            })
        },
    },
    CollectorSpec {
        name: "smaps",
        build: |config, ctx| {
            let c = &config.collectors.smaps;
            c.enabled.then(|| Registered {
                collector: Box::new(smaps::SmapsCollector::new(c, ctx.events.subscribe())),
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
];

/// Builds the enabled collectors.
pub fn build_collectors(config: &Config, ctx: &BuildCtx<'_>) -> Vec<Registered> {
    REGISTRY
        .iter()
        .filter_map(|spec| (spec.build)(config, ctx))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_match_collector_names() {
        let config = Config::default();
        let procfs = ProcFs::new("/nonexistent");
        let events = ProcEvents::default();
        let built = build_collectors(
            &config,
            &BuildCtx {
                procfs: &procfs,
                events: &events,
            },
        );
        let names: Vec<_> = built.iter().map(|r| r.collector.name()).collect();
        let spec_names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        assert_eq!(names, spec_names);
    }

    #[test]
    fn disabled_collectors_are_not_built() {
        let mut config = Config::default();
        config.collectors.processes.enabled = false;
        config.collectors.tmpfs.enabled = false;
        let built = build_collectors(
            &config,
            &BuildCtx {
                procfs: &ProcFs::new("/nonexistent"),
                events: &ProcEvents::default(),
            },
        );
        let names: Vec<_> = built.iter().map(|r| r.collector.name()).collect();
        assert_eq!(names, vec!["meminfo", "smaps", "sysv"]);
    }
}
