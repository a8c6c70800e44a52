//! Collectors: one per source, behind the [`Collector`] trait, built from the config by
//! [`build_collectors`].
//!
//! A collector is one module plus one line in the [`collectors!`] list below. The module declares,
//! in one place ([`CollectorDef`]): its name, its `[collectors.<name>]` config section, its
//! constructor, and (through its [`Observation`] type) how what it saw renders into records. The
//! list generates [`REGISTRY`] and the typed [`CollectorsConfig`]; nothing else in the agent names
//! a collector. Derived records that need one collector's observation downcast it
//! ([`Observation::downcast_ref`]).

use std::{any::Any, fmt::Debug, sync::Arc, time::Duration};

use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    config::{Config, Interval},
    ladder::{StatmPass, TierStats},
    proc_events::ProcEvents,
    procfs::{ProcError, ProcFs},
    records::Record,
};

/// Implements [`Section`] for a config struct with `enabled` and `interval` fields, with an
/// optional check of its own (`section!(T, |c: &T| …)`). Defined before the collector modules so
/// they can use it.
macro_rules! section {
    ($ty:ty) => {
        section!($ty, |_: &$ty| Ok(()));
    };
    ($ty:ty, $validate:expr) => {
        impl $crate::collectors::Section for $ty {
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn interval(&self) -> Option<$crate::config::Interval> {
                self.interval
            }
            fn validate(&self) -> Result<(), (&'static str, String)> {
                ($validate)(self)
            }
        }
    };
}

pub mod cgroup;
pub mod exchange;
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
    /// Whether it hands rollups derived from its `smaps` reads to the tick's other collectors
    /// ([`exchange`]): the scheduler then tells them to wait for its plan.
    fn gives_rollups(&self) -> bool {
        false
    }
    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("{0}")]
    Other(String),
}

/// What one collector run saw: the collector's complete current view. It renders into records,
/// says what is worth a warning in the `snapshot` record, and carries a ladder tier's statistics.
pub trait Observation: Any + Send + Sync + Debug {
    fn records(&self, out: &mut Vec<Record>);
    /// Which of its collector's runs this is (one more each run), for [`Self::records_since`];
    /// `None`: the observation does not track what changed.
    fn generation(&self) -> Option<u64> {
        None
    }
    /// Its records, except those equal to the records of run `since` of the same collector (the
    /// observation the store built its last emission from): only their (kind, key) go to
    /// `unchanged`. So an emission serializes and compares what changed, not every entity. The
    /// default sends every record.
    fn records_since(
        &self,
        since: u64,
        out: &mut Vec<Record>,
        unchanged: &mut Vec<(&'static str, String)>,
    ) {
        let _ = (since, unchanged);
        self.records(out);
    }
    fn warnings(&self, _out: &mut Vec<String>) {}
    /// A ladder collector's tier statistics (tier name, stats), for the `agent` record.
    fn tier(&self) -> Option<(&'static str, &TierStats)> {
        None
    }
    /// Drops the records of processes whose exit was already reported (an observation with
    /// per-process records: a run may have read a process just before it died). Returns whether
    /// this observation holds per-process records.
    fn forget_processes(&mut self, _exited: &std::collections::HashSet<u32>) -> bool {
        false
    }
}

impl dyn Observation {
    /// This observation as its concrete type.
    pub fn downcast_ref<T: Observation>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }

    /// This observation as its concrete type, to update in place.
    pub fn downcast_mut<T: Observation>(&mut self) -> Option<&mut T> {
        (self as &mut dyn Any).downcast_mut()
    }
}

/// Gives back a per-process map's room after a spike: a map keeps its largest capacity, so an
/// agent that once saw 6000 processes would hold their room (and touched pages) for good at 3000.
/// Called after the map was pruned; shrinks only when under a quarter full.
pub fn shrink_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if map.capacity() > 256 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len().saturating_mul(2));
    }
}

/// The observation of a run as its concrete type (tests, benches): an error names what came instead.
pub fn observed<T: Observation>(
    run: Result<Option<Box<dyn Observation>>, CollectError>,
) -> Result<T, String> {
    match run {
        Ok(Some(o)) => (o as Box<dyn Any>)
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| format!("not a {}", std::any::type_name::<T>())),
        Ok(None) => Err("no observation".to_string()),
        Err(e) => Err(e.to_string()),
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

/// A collector type: its name, its `[collectors.<name>]` section, and how to build it. One impl
/// per collector module, and one line in [`collectors!`].
pub trait CollectorDef {
    /// The collector's name: its `[collectors.<name>]` key, and its name in the records.
    const NAME: &'static str;
    /// Its config section (`deny_unknown_fields`, no `flatten`: errors keep file, line and key).
    type Config: Section + DeserializeOwned + Default + Clone + PartialEq + Debug;
    fn build(config: &Self::Config, ctx: &BuildCtx<'_>) -> Box<dyn Collector>;
}

/// What every collector section has, and its own checks beyond the types.
pub trait Section {
    fn enabled(&self) -> bool;
    /// Its own interval; `None`: the agent's.
    fn interval(&self) -> Option<Interval>;
    /// Values the types accept but the collector cannot use: (key within the section, why).
    fn validate(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}

/// The section of a collector with no settings of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Toggle {
    pub enabled: bool,
    /// How often the collector runs; absent means `[agent] interval`. Rounded up to whole agent ticks.
    pub interval: Option<Interval>,
}

impl Default for Toggle {
    fn default() -> Self {
        Toggle {
            enabled: true,
            interval: None,
        }
    }
}

section!(Toggle);

/// A collector with its schedule.
pub struct Registered {
    pub collector: Box<dyn Collector>,
    pub interval: Duration,
}

/// What building a collector may use: the proc filesystem, the tracker's event stream (a ladder
/// collector subscribes here, once, so it receives every event exactly once), and the mount
/// namespaces, read through one cache that smaps and tmpfs share (bounded by `[agent]
/// max_mount_namespaces`).
pub struct BuildCtx<'a> {
    pub procfs: &'a ProcFs,
    pub events: &'a ProcEvents,
    pub mount_namespaces: crate::procfs::mountinfo::SharedNamespaces,
}

/// One known collector: its name, and how to build it if the config enables it.
pub struct CollectorSpec {
    pub name: &'static str,
    pub build: fn(&Config, &BuildCtx<'_>) -> Option<Registered>,
}

/// Builds collector `D` from its section, if the section enables it.
fn build_one<D: CollectorDef>(
    section: &D::Config,
    config: &Config,
    ctx: &BuildCtx<'_>,
) -> Option<Registered> {
    section.enabled().then(|| Registered {
        collector: D::build(section, ctx),
        interval: config.collector_interval(section.interval()),
    })
}

/// The list of collectors, once: generates [`CollectorsConfig`] (one section per collector) and
/// [`REGISTRY`] (emission order).
macro_rules! collectors {
    ($($field:ident => $def:ty),* $(,)?) => {
        /// `[collectors]`: one section per collector, `[collectors.<name>]`.
        #[derive(Debug, Clone, PartialEq, Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct CollectorsConfig {
            $(pub $field: <$def as CollectorDef>::Config,)*
        }

        impl CollectorsConfig {
            /// The sections' own checks, keys named in full (`collectors.<name>.<key>`).
            pub fn validate(&self) -> Result<(), (String, String)> {
                $(self.$field
                    .interval()
                    .map_or(Ok(()), |i| {
                        $crate::config::bounds::duration(
                            "interval",
                            i,
                            $crate::config::bounds::INTERVAL,
                        )
                    })
                    .and_then(|()| self.$field.validate())
                    .map_err(|(key, why)| {
                        (format!("collectors.{}.{key}", stringify!($field)), why)
                    })?;)*
                Ok(())
            }
        }

        /// Every collector memscope knows, in emission order.
        pub const REGISTRY: &[CollectorSpec] = &[$(CollectorSpec {
            name: <$def as CollectorDef>::NAME,
            build: |config, ctx| build_one::<$def>(&config.collectors.$field, config, ctx),
        },)*];

        /// The config keys of the sections, in [`REGISTRY`] order (a test holds them to the names).
        #[cfg(test)]
        const SECTION_KEYS: &[&str] = &[$(stringify!($field),)*];
    };
}

collectors! {
    meminfo => meminfo::Meminfo,
    processes => processes::Processes,
    smaps => smaps::Smaps,
    sysv => sysv::Sysv,
    tmpfs => tmpfs::Tmpfs,
    cgroup => cgroup::Cgroup,
}

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
    fn a_map_pruned_after_a_spike_gives_its_room_back_and_a_full_one_keeps_it() {
        let mut m: std::collections::HashMap<u32, [u8; 64]> =
            (0..6000).map(|pid| (pid, [0; 64])).collect();
        let spike = m.capacity();
        m.retain(|pid, _| *pid < 3000);
        let half = m.capacity();
        shrink_sparse(&mut m);
        assert_eq!(m.capacity(), half, "half full: kept for the next spike");
        m.retain(|pid, _| *pid < 100);
        shrink_sparse(&mut m);
        assert!(m.capacity() < 1024, "{} of {spike} kept", m.capacity());
        assert_eq!(m.len(), 100);
        assert!((0..100).all(|pid| m.contains_key(&pid)));
    }

    #[test]
    fn section_keys_are_the_collector_names() {
        let names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        assert_eq!(names, SECTION_KEYS);
    }

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
                mount_namespaces: crate::procfs::mountinfo::SharedNamespaces::new(
                    config.agent.max_mount_namespaces,
                ),
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
                mount_namespaces: crate::procfs::mountinfo::SharedNamespaces::new(
                    config.agent.max_mount_namespaces,
                ),
            },
        );
        let names: Vec<_> = built.iter().map(|r| r.collector.name()).collect();
        assert_eq!(names, vec!["meminfo", "smaps", "sysv", "cgroup"]);
    }
}
