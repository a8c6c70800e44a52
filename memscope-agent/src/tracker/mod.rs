//! Which processes changed their memory layout: eBPF dirty tracking, or polling when that fails.
//!
//! [`start`] tries to load memscope's tracepoint programs (see the `memscope-ebpf` crate). On any
//! failure (not root, EPERM, tracefs missing or unreadable, the object not built into this binary…)
//! it logs exactly one `warn` line naming the cause and returns a [`PollingSource`]: the collectors
//! then detect layout changes by `statm` and staleness alone.
//!
//! With eBPF, [`DirtySource::drain`] returns the processes marked since the last drain, and
//! [`Tracker::events`] carries [`LifecycleEvent`]s (process fork, exec, exit, OOM kill).
//! FORK events are processes only: the fork program (`tp_btf`) drops new threads in the kernel.
//! A process created by fork is also drained once with the [`reason::FORK`] bit.
//!
//! The kernel side classifies each mark (see the `memscope-ebpf` crate and docs/design.md, "What
//! the eBPF tracker marks"): [`reason::MAPPING`] and [`reason::EXEC`] may change the objects a
//! process maps (the `smaps` tier), [`reason::ANON`] only its anonymous totals (the
//! `smaps_rollup` tier), and only once they moved by `anon_min_change` (net).
//!
//! A MAPPING mark is set while the mapping is being stored, inside the mmap call, so a drain can
//! return a process whose mmap/munmap is still in flight; a reader that looks at its smaps within
//! microseconds may still see the old layout. The staleness bound covers that window.
//!
//! [`start`] blocks for the load and attach (tens of milliseconds): call it before the runtime
//! starts or from `spawn_blocking`.

use std::fmt;

use memscope_common::{LifecycleEvent, reason};

pub mod btf;
#[cfg(not(memscope_no_ebpf))]
mod ebpf;
mod error;
pub mod tracefs;

pub use error::TrackerError;

/// Capacity of the lifecycle event channel. When the consumer falls this far behind, the reader
/// thread waits, the kernel's ring buffer fills and further events are counted as lost.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// How the agent learns about layout changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerState {
    /// The tracepoint programs are attached.
    Ebpf,
    /// No eBPF; `reason` says why.
    Polling { reason: String },
}

impl fmt::Display for TrackerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ebpf => "ebpf",
            Self::Polling { .. } => "polling",
        })
    }
}

/// Cumulative counters of a [`DirtySource`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Dirty marks handed out by [`DirtySource::drain`] (one per process per drain).
    pub marks_received: u64,
    /// Marks the kernel could not store because the dirty map was full.
    pub marks_dropped: u64,
    /// Lifecycle events read from the ring buffer.
    pub events_received: u64,
    /// Events the kernel could not put into the full ring buffer, plus events read after the
    /// channel's receiver was dropped.
    pub events_lost: u64,
}

/// One process whose layout changed since the previous drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyMark {
    pub tgid: u32,
    /// OR of [`memscope_common::reason`] bits; see [`reason_names`].
    pub reasons: u32,
    /// Number of kernel map updates folded into this mark (a new reason bit each), at least 1.
    pub count: u32,
}

/// A source of dirty marks.
pub trait DirtySource: Send {
    fn state(&self) -> &TrackerState;
    /// Takes every mark set since the previous call. Marks set while it runs are not lost: they
    /// are returned now or by the next call. Does blocking syscalls: call it off the async workers.
    fn drain(&mut self) -> Vec<DirtyMark>;
    fn stats(&self) -> TrackerStats;
}

/// The fallback: never any marks.
#[derive(Debug)]
pub struct PollingSource {
    state: TrackerState,
}

impl PollingSource {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            state: TrackerState::Polling {
                reason: reason.into(),
            },
        }
    }
}

impl DirtySource for PollingSource {
    fn state(&self) -> &TrackerState {
        &self.state
    }

    fn drain(&mut self) -> Vec<DirtyMark> {
        Vec::new()
    }

    fn stats(&self) -> TrackerStats {
        TrackerStats::default()
    }
}

/// The tracker: a dirty source and, with eBPF, the lifecycle event stream.
pub struct Tracker {
    /// Declared (so dropped) before `source`: dropping the eBPF source joins its event thread,
    /// which may be blocked sending into a full channel until this receiver is gone.
    pub events: Option<tokio::sync::mpsc::Receiver<LifecycleEvent>>,
    pub source: Box<dyn DirtySource>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("state", self.source.state())
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// How to start the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// The agent's own tgid: its marks are dropped in the kernel.
    pub agent_tgid: u32,
    /// Whether tracefs may be mounted when it is not (the config's `agent.mount_tracefs`).
    pub mount_tracefs: bool,
    /// Capacity of the dirty map; `None`: [`memscope_common::DIRTY_MAP_ENTRIES`]. The privileged
    /// tests shrink it to make the kernel side drop marks.
    pub dirty_map_entries: Option<u32>,
    /// A net growth or shrinkage (bytes) of a process's anonymous mappings past this marks it
    /// [`reason::ANON`] (the config's `collectors.processes.min_change`, the rollup tier's own
    /// threshold); whole pages (rounded down).
    pub anon_min_change: u64,
}

/// [`StartOptions::anon_min_change`] when the caller has no config: the default
/// `collectors.processes.min_change`.
pub const DEFAULT_ANON_MIN_CHANGE: u64 = 64 << 10;

impl StartOptions {
    /// The defaults for an agent whose tgid is `agent_tgid`: tracefs may be mounted, full map.
    pub fn new(agent_tgid: u32) -> StartOptions {
        StartOptions {
            agent_tgid,
            mount_tracefs: true,
            dirty_map_entries: None,
            anon_min_change: DEFAULT_ANON_MIN_CHANGE,
        }
    }
}

/// Starts eBPF tracking, marks of `opts.agent_tgid` (the agent itself) being dropped in the
/// kernel. Falls back to polling with one `warn` line naming the cause. Needs no tokio runtime;
/// blocks for the load and attach. The load+attach time is logged at debug level.
pub fn start(opts: &StartOptions) -> Tracker {
    match start_ebpf(opts) {
        Ok(tracker) => tracker,
        Err(err) => {
            let reason = polling_reason(&err);
            tracing::warn!("eBPF tracker unavailable, running in polling mode: {reason}");
            Tracker {
                source: Box::new(PollingSource::new(reason)),
                events: None,
            }
        }
    }
}

#[cfg(not(memscope_no_ebpf))]
fn start_ebpf(opts: &StartOptions) -> Result<Tracker, TrackerError> {
    let (source, events) = ebpf::EbpfSource::start(opts)?;
    Ok(Tracker {
        source: Box::new(source),
        events: Some(events),
    })
}

#[cfg(memscope_no_ebpf)]
fn start_ebpf(_opts: &StartOptions) -> Result<Tracker, TrackerError> {
    Err(TrackerError::NotBuilt)
}

/// The error and its causes on one line, with a hint when missing privileges are the likely cause.
fn polling_reason(err: &TrackerError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && !matches!(err, TrackerError::NotBuilt) {
        text.push_str(&format!(
            " (not root: euid {euid}; eBPF needs root or CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH)"
        ));
    }
    text
}

/// Names of the [`reason`] bits set in `bits`, in bit order; unknown bits are left out.
pub fn reason_names(bits: u32) -> Vec<&'static str> {
    reason::NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_in_bit_order() {
        assert_eq!(
            reason_names(reason::EXEC | reason::ANON | reason::MAPPING),
            ["mapping", "anon", "exec"]
        );
        assert!(reason_names(0).is_empty());
        assert_eq!(reason_names(1 << 31), Vec::<&str>::new());
    }

    #[test]
    fn every_reason_bit_is_named_once() {
        let all = reason::NAMES.iter().fold(0, |acc, (bit, _)| {
            assert_eq!(acc & bit, 0, "bit {bit:#x} named twice");
            acc | bit
        });
        assert_eq!(reason_names(all).len(), reason::NAMES.len());
    }

    #[test]
    fn polling_source_is_empty_and_says_why() {
        let mut source = PollingSource::new("tracefs not found");
        assert_eq!(source.drain(), []);
        assert_eq!(source.stats(), TrackerStats::default());
        assert_eq!(source.state().to_string(), "polling");
        assert_eq!(
            source.state(),
            &TrackerState::Polling {
                reason: "tracefs not found".to_owned()
            }
        );
        assert_eq!(TrackerState::Ebpf.to_string(), "ebpf");
    }

    #[test]
    fn polling_reason_includes_causes() {
        let err = TrackerError::Format {
            path: "/sys/kernel/tracing/events/x/format".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let reason = polling_reason(&err);
        assert!(
            reason.contains("/sys/kernel/tracing/events/x/format"),
            "{reason}"
        );
        assert!(reason.contains("ermission denied"), "{reason}");
    }

    #[cfg(memscope_no_ebpf)]
    #[test]
    fn without_the_object_start_falls_back_to_polling() {
        let tracker = start(&StartOptions::new(std::process::id()));
        assert!(tracker.events.is_none());
        assert!(
            matches!(tracker.source.state(), TrackerState::Polling { reason } if reason.contains("built without"))
        );
    }
}
