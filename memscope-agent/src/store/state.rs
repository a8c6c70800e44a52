//! The store's state: the latest observation of each collector, their run history, the tracker's
//! counters, and what was sent per entity (for change detection, see [`super::emit`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use super::bodies::{CollectorStatus, LadderReport, Phases, TrackerInfo};
use crate::{
    collectors::{CollectError, Observation},
    config::{EmitMode, MinChangeByKind},
    procfs::guard::StuckReads,
    tracker::TrackerStats,
};

/// How the store emits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub host: String,
    pub emit: EmitMode,
    /// In `changes` mode, every `keyframe_every`-th emission is a keyframe (the first one too).
    pub keyframe_every: u32,
    /// In `changes` mode, the hysteresis per record kind.
    pub min_change: MinChangeByKind,
    pub interval: Duration,
    /// Start of the `agent` record's `uptime_ms`: process start
    /// ([`crate::runtime::process_started`]).
    pub started: std::time::Instant,
}

/// The store. Synchronous and deterministic: the async task around it only feeds it.
pub struct Store {
    pub(super) config: StoreConfig,
    pub(super) tracker: TrackerInfo,
    pub(super) seq: u64,
    /// Latest observation per collector, in registration order.
    pub(super) latest: Vec<(&'static str, Option<Box<dyn Observation>>)>,
    pub(super) status: BTreeMap<&'static str, CollectorStatus>,
    /// Collectors that ran since the last emission.
    pub(super) ran: Vec<&'static str>,
    /// Body last sent per (kind, key): in `changes` mode, what a reader holds (the reference of
    /// the hysteresis).
    pub(super) sent: HashMap<(&'static str, String), String>,
    /// The `agent` body last sent whole or patched (`changes` mode: the next one is a delta).
    pub(super) sent_agent: Option<String>,
    pub(super) lines_emitted: u64,
    pub(super) lines_dropped: u64,
    /// Processes reported by `exit_now` since the last processes observation.
    pub(super) exited: HashSet<u32>,
    /// OOM kills of processes never sent, seen before the first emission: sent in it, after its
    /// `snapshot` (other such exits are only counted, in `unseen_exits`).
    pub(super) early_oom_kills: Vec<u32>,
    /// Exits since the last emission of processes whose figures were never sent.
    pub(super) unseen_exits: u64,
    /// Processes whose `exit` was sent (or queued in `early_oom_kills`) with `"reason": "oom_kill"` on
    /// the tracker's OOM event, awaiting the tracker's exit event for the same process, which then
    /// sends nothing.
    pub(super) oom_killed: HashSet<u32>,
    /// Each cgroup's `events.oom_kill` at the last emission (by cgroup path), for inferring the
    /// reason of an exit seen by polling.
    pub(super) oom_kills: HashMap<String, u64>,
    /// Kills counted at the last emission that no exit claimed then (see
    /// [`Store::infer_oom_kills`]), by cgroup path.
    pub(super) pending_oom_kills: HashMap<String, u64>,
    /// Collectors late for the coming emission.
    pub(super) late: Vec<&'static str>,
    /// The tracker's counters as last reported.
    pub(super) tracker_stats: TrackerStats,
    /// Where the time of the tick went (the store task fills in the statm pass and the write).
    pub(crate) phases: Phases,
    /// Records in the last emission: the next one's capacity.
    pub(super) records_hint: usize,
    /// Reads abandoned past their deadline, and the penalty box, as last reported.
    pub(super) stuck: StuckReads,
    /// Warnings of reads abandoned since the last emission.
    pub(super) stuck_warnings: Vec<String>,
    /// The run ([`Observation::generation`]) of each collector whose observation the last
    /// emission was built from.
    pub(super) emitted_from: HashMap<&'static str, u64>,
}

impl Store {
    /// The stuck reads and penalty box for the coming `agent` record, and the warnings of reads
    /// abandoned since the last emission (for its `snapshot` record).
    pub fn set_stuck_reads(&mut self, stuck: StuckReads, warnings: Vec<String>) {
        self.stuck = stuck;
        self.stuck_warnings.extend(warnings);
    }

    /// `collectors` are the names of the enabled collectors, in emission order.
    pub fn new(config: StoreConfig, tracker: TrackerInfo, collectors: &[&'static str]) -> Store {
        Store {
            config,
            tracker,
            seq: 0,
            latest: collectors.iter().map(|n| (*n, None)).collect(),
            status: collectors
                .iter()
                .map(|n| (*n, CollectorStatus::default()))
                .collect(),
            ran: Vec::new(),
            sent: HashMap::new(),
            sent_agent: None,
            lines_emitted: 0,
            lines_dropped: 0,
            exited: std::collections::HashSet::new(),
            early_oom_kills: Vec::new(),
            unseen_exits: 0,
            oom_killed: HashSet::new(),
            oom_kills: HashMap::new(),
            pending_oom_kills: HashMap::new(),
            late: Vec::new(),
            tracker_stats: TrackerStats::default(),
            phases: Phases::default(),
            records_hint: 0,
            stuck: StuckReads::default(),
            stuck_warnings: Vec::new(),
            emitted_from: HashMap::new(),
        }
    }

    /// The tracker's counters, as the scheduler last read them.
    pub fn set_tracker_stats(&mut self, stats: TrackerStats) {
        self.tracker_stats = stats;
    }

    /// `collector` missed its deadline for the coming emission; its last observation stands.
    pub fn late(&mut self, collector: &'static str) {
        self.status.entry(collector).or_default().late_runs += 1;
        if !self.late.contains(&collector) {
            self.late.push(collector);
        }
        if !self.ran.contains(&collector) {
            self.ran.push(collector);
        }
    }

    /// A due run of `collector` was skipped: the previous one is still going.
    pub fn skipped(&mut self, collector: &'static str) {
        self.status.entry(collector).or_default().skipped_runs += 1;
        self.late(collector);
    }

    /// Applies one collector run. A failed run keeps the collector's previous observation (so its
    /// entities are not reported as removed) and is reported in the `snapshot` and `agent` records.
    pub fn apply(
        &mut self,
        collector: &'static str,
        duration: Duration,
        result: Result<Option<Box<dyn Observation>>, CollectError>,
    ) {
        let status = self.status.entry(collector).or_default();
        status.runs += 1;
        status.last_duration_us = duration.as_micros() as u64;
        match result {
            Ok(obs) => {
                status.last_ok = true;
                status.last_error = None;
                if let Some(mut obs) = obs {
                    // A process whose exit was already reported may still be in a run that read
                    // it just before it died.
                    if obs.forget_processes(&self.exited) {
                        self.exited.clear();
                    }
                    match self.latest.iter_mut().find(|(n, _)| *n == collector) {
                        Some(slot) => slot.1 = Some(obs),
                        None => self.latest.push((collector, Some(obs))),
                    }
                }
            }
            Err(e) => {
                status.failures += 1;
                status.last_ok = false;
                status.last_error = Some(e.to_string());
            }
        }
        if !self.ran.contains(&collector) {
            self.ran.push(collector);
        }
    }

    /// Lines that could not be written by the sink (reported in the next `agent` record).
    pub fn count_dropped(&mut self, lines: u64) {
        self.lines_dropped += lines;
        self.lines_emitted = self.lines_emitted.saturating_sub(lines);
    }

    /// The ladder tiers (from the latest observations) and the tracker's counters.
    pub(super) fn ladder_report(&self) -> LadderReport {
        let t = &self.tracker_stats;
        LadderReport {
            tiers: self
                .latest
                .iter()
                .filter_map(|(_, o)| o.as_ref()?.tier())
                .map(|(name, stats)| (name, stats.clone()))
                .collect(),
            dirty_marks_received: t.marks_received,
            dirty_marks_dropped: t.marks_dropped,
            events_received: t.events_received,
            events_lost: t.events_lost,
        }
    }
}

/// Emissions per keyframe: `keyframe_interval` in whole emission intervals, rounded up (at least 1).
pub fn keyframe_every(keyframe_interval: Duration, interval: Duration) -> u32 {
    let n = keyframe_interval
        .as_nanos()
        .div_ceil(interval.as_nanos().max(1))
        .max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_interval_rounds_up_to_whole_emissions() {
        let s = Duration::from_secs;
        assert_eq!(keyframe_every(s(1800), s(10)), 180);
        assert_eq!(keyframe_every(s(25), s(10)), 3);
        assert_eq!(keyframe_every(s(1), s(10)), 1, "at least every emission");
        assert_eq!(
            keyframe_every(s(86_400), Duration::from_millis(100)),
            864_000
        );
    }
}
