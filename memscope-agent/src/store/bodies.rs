//! The bodies of the `snapshot` and `agent` records, and what feeds them: the tracker's state,
//! each collector's run history, the ladder's report and the agent's own cost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procfs::FileClass;

/// The tracker's state as reported in the `snapshot` record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TrackerInfo {
    /// `ebpf` or `polling`.
    pub mode: String,
    /// Why polling, when polling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds spent loading and attaching the eBPF programs at start (also when they failed
    /// and the agent fell back to polling); absent when eBPF was not tried (`tracker = "polling"`,
    /// `--once`). Part of `uptime_ms`, which counts from process start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
}

/// A collector's run history, reported in the `agent` and `snapshot` records.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct CollectorStatus {
    pub runs: u64,
    pub failures: u64,
    pub last_ok: bool,
    pub last_duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Runs that missed their deadline (they finished in the background).
    pub late_runs: u64,
    /// Runs skipped because the previous run was still going.
    pub skipped_runs: u64,
}

/// The agent's own cost, measured by the caller at emission time.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct SelfCost {
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    pub rss_bytes: u64,
    pub max_rss_bytes: u64,
}

impl SelfCost {
    /// Measures the calling process (the agent): CPU from `getrusage`, RSS from `self/statm` of
    /// `own_proc` (the agent's own `/proc`, whatever `proc_root` the collectors read).
    pub fn measure(own_proc: &crate::procfs::ProcFs) -> SelfCost {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a rusage struct.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0;
        let us = |tv: libc::timeval| (tv.tv_sec as u64) * 1_000_000 + tv.tv_usec as u64;
        let mut buf = Vec::new();
        let rss_pages = own_proc
            .read_parsed(
                &own_proc.path("self/statm"),
                FileClass::STATM,
                &mut buf,
                crate::procfs::statm::parse_statm,
            )
            .map_or(0, |s| s.resident);
        SelfCost {
            cpu_user_us: if ok { us(ru.ru_utime) } else { 0 },
            cpu_system_us: if ok { us(ru.ru_stime) } else { 0 },
            rss_bytes: rss_pages * crate::procfs::page_size(),
            max_rss_bytes: if ok { ru.ru_maxrss as u64 * 1024 } else { 0 },
        }
    }
}

/// Where the time of the last tick went, in microseconds (the `agent` record's `phases_us`): the
/// /proc reads, then the store's work on the emission.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct Phases {
    /// The tick's `statm` pass (one `statm` read per process), shared by the ladder collectors.
    pub statm_pass: u64,
    /// The `processes` collector's last run after the statm pass: its `smaps_rollup` re-reads,
    /// and `status`/`cmdline` of new processes; without the time it waited for the `smaps` run
    /// of the same tick (the rollups that run derives), which is the `smaps` phase's.
    pub processes: u64,
    /// The `smaps` collector's last run: its `smaps` re-reads and the object table.
    pub smaps: u64,
    /// Building this emission's records from the observations: every record serialized, the SysV
    /// join, the fair shares and the ledgers.
    pub serialize: u64,
    /// Change detection against what was sent, and writing the lines into the output buffer.
    pub diff: u64,
    /// Writing the previous emission to the sink.
    pub write_previous: u64,
}

/// What the agent's cost ladder and tracker did, for the `agent` record.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct LadderReport {
    /// Per tier (`rollup`, `smaps`): re-reads by reason, carry-over, age of the oldest number.
    pub tiers: BTreeMap<&'static str, crate::ladder::TierStats>,
    /// Dirty marks the tracker delivered since start.
    pub dirty_marks_received: u64,
    /// Marks the kernel side could not store (map full).
    pub dirty_marks_dropped: u64,
    /// Lifecycle events received / lost (ring buffer full).
    pub events_received: u64,
    pub events_lost: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct SnapshotBody<'a> {
    pub(super) mode: &'static str,
    pub(super) keyframe: bool,
    pub(super) interval_ms: u64,
    pub(super) tracker: &'a TrackerInfo,
    /// Collectors that ran for this emission, with their outcome.
    pub(super) collectors: BTreeMap<&'static str, RunSummary<'a>>,
    /// Entities known per kind (all of them, not only those sent).
    pub(super) entities: BTreeMap<&'static str, u64>,
    /// Records in this emission per kind, this record and the agent record excluded.
    pub(super) records: BTreeMap<&'static str, u64>,
    /// Processes the eBPF tracker saw exit since the last emission whose figures were never sent
    /// (they lived between two reads): counted here, with no `exit` record each. Absent when 0.
    #[serde(skip_serializing_if = "crate::records::is_zero")]
    pub(super) unseen_exits: u64,
    pub(super) warnings: &'a [String],
}

#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct RunSummary<'a> {
    pub(super) ok: bool,
    pub(super) duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<&'a str>,
    /// Missed its deadline in this emission: its last observation stands.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) late: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct AgentBody<'a> {
    pub(super) pid: u32,
    pub(super) version: &'static str,
    pub(super) uptime_ms: u64,
    #[serde(flatten)]
    pub(super) cost: &'a SelfCost,
    pub(super) proc_bytes_read: u64,
    pub(super) proc_bytes_read_by_file: BTreeMap<&'static str, u64>,
    pub(super) proc_reads_by_file: BTreeMap<&'static str, u64>,
    pub(super) collectors: &'a BTreeMap<&'static str, CollectorStatus>,
    pub(super) tracker: &'a TrackerInfo,
    #[serde(flatten)]
    pub(super) ladder: &'a LadderReport,
    /// Where the last tick's time went, in µs.
    pub(super) phases_us: &'a Phases,
    pub(super) emissions: u64,
    pub(super) lines_emitted: u64,
    pub(super) lines_dropped: u64,
    /// Reads abandoned past their deadline, the readers still blocked, and the penalty box; left
    /// out until a read was abandoned.
    #[serde(skip_serializing_if = "crate::procfs::guard::StuckReads::is_none")]
    pub(super) stuck_reads: &'a crate::procfs::guard::StuckReads,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct RemovedBody<'a> {
    pub(super) entity: &'a str,
    pub(super) key: &'a str,
}
