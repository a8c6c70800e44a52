//! The snapshot store: the one owner of the current state. Collectors' observations are applied to
//! it; on each emission it turns the state into JSON lines.
//!
//! An emission is: a `snapshot` record (mode, tracker, per-collector status, counts, warnings), the
//! entity records (`meminfo`, `process`, …), `exit` records for processes gone since the previous
//! emission (carrying their last known numbers) and `removed` records for other entities gone,
//! then an `agent` record with the agent's own cost. In `changes` mode only entities whose record
//! changed are sent, except on keyframes (the first emission and every `keyframe_every`-th), which
//! send everything.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    collectors::{CollectError, Observation},
    config::EmitMode,
    procfs::{FileClass, ReadCounters},
    records::{Header, Record, rfc3339, write_line},
};

/// How the store emits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub host: String,
    pub emit: EmitMode,
    pub keyframe_every: u32,
    pub interval: Duration,
}

/// The tracker's state as reported in the `snapshot` record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TrackerInfo {
    /// `ebpf` or `polling`.
    pub mode: String,
    /// Why polling, when polling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// Measures the calling process (the agent): CPU from `getrusage`, RSS from `/proc/self/statm`.
    pub fn measure() -> SelfCost {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a rusage struct.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0;
        let us = |tv: libc::timeval| (tv.tv_sec as u64) * 1_000_000 + tv.tv_usec as u64;
        let rss_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        SelfCost {
            cpu_user_us: if ok { us(ru.ru_utime) } else { 0 },
            cpu_system_us: if ok { us(ru.ru_stime) } else { 0 },
            rss_bytes: rss_pages * crate::procfs::page_size(),
            max_rss_bytes: if ok { ru.ru_maxrss as u64 * 1024 } else { 0 },
        }
    }
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
    mode: &'static str,
    keyframe: bool,
    interval_ms: u64,
    tracker: &'a TrackerInfo,
    /// Collectors that ran for this emission, with their outcome.
    collectors: BTreeMap<&'static str, RunSummary<'a>>,
    /// Entities known per kind (all of them, not only those sent).
    entities: BTreeMap<&'static str, u64>,
    /// Records in this emission per kind, this record and the agent record excluded.
    records: BTreeMap<&'static str, u64>,
    warnings: &'a [String],
}

#[derive(Serialize, schemars::JsonSchema)]
struct RunSummary<'a> {
    ok: bool,
    duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct AgentBody<'a> {
    pid: u32,
    version: &'static str,
    uptime_ms: u64,
    #[serde(flatten)]
    cost: &'a SelfCost,
    proc_bytes_read: u64,
    proc_bytes_read_by_file: BTreeMap<&'static str, u64>,
    proc_reads_by_file: BTreeMap<&'static str, u64>,
    collectors: &'a BTreeMap<&'static str, CollectorStatus>,
    tracker: &'a TrackerInfo,
    #[serde(flatten)]
    ladder: &'a LadderReport,
    emissions: u64,
    lines_emitted: u64,
    lines_dropped: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct RemovedBody<'a> {
    entity: &'a str,
    key: &'a str,
}

/// The store. Synchronous and deterministic: the async task around it only feeds it.
pub struct Store {
    config: StoreConfig,
    tracker: TrackerInfo,
    seq: u64,
    started: std::time::Instant,
    /// Latest observation per collector, in registration order.
    latest: Vec<(&'static str, Option<Observation>)>,
    status: BTreeMap<&'static str, CollectorStatus>,
    /// Collectors that ran since the last emission.
    ran: Vec<&'static str>,
    /// Body last sent per (kind, key).
    sent: HashMap<(&'static str, String), String>,
    lines_emitted: u64,
    lines_dropped: u64,
    /// Processes reported by `exit_now` since the last processes observation.
    exited: std::collections::HashSet<u32>,
}

impl Store {
    /// `collectors` are the names of the enabled collectors, in emission order.
    pub fn new(config: StoreConfig, tracker: TrackerInfo, collectors: &[&'static str]) -> Store {
        Store {
            config,
            tracker,
            seq: 0,
            started: std::time::Instant::now(),
            latest: collectors.iter().map(|n| (*n, None)).collect(),
            status: collectors
                .iter()
                .map(|n| (*n, CollectorStatus::default()))
                .collect(),
            ran: Vec::new(),
            sent: HashMap::new(),
            lines_emitted: 0,
            lines_dropped: 0,
            exited: std::collections::HashSet::new(),
        }
    }

    /// An `exit` record at once, between emissions, for a process the tracker saw exit: with the
    /// numbers last sent for it (or, never sent, last observed), `"at_once": true`, and the seq of
    /// the latest emission. A process never observed (it lived between two runs) gets
    /// `"known": false`. The process is dropped from the state so the next emission neither
    /// re-sends it nor reports its exit twice.
    pub fn exit_now(&mut self, pid: u32, now: SystemTime) -> Vec<u8> {
        let key = ("process", pid.to_string());
        let observed = self.latest.iter_mut().find_map(|(_, o)| match o {
            Some(Observation::Processes(p)) => Some(p),
            _ => None,
        });
        let mut last = None;
        if let Some(p) = observed
            && let Some(i) = p.processes.iter().position(|r| r.pid == pid)
        {
            let r = p.processes.remove(i);
            last = Some(Record::new("process", key.1.clone(), &r).body);
        }
        let body = match self.sent.remove(&key).or(last) {
            Some(b) => format!("{b},\"at_once\":true"),
            None => format!("\"pid\":{pid},\"known\":false,\"at_once\":true"),
        };
        self.exited.insert(pid);
        let ts = rfc3339(now);
        let header = Header {
            ts: &ts,
            host: &self.config.host,
            seq: self.seq.saturating_sub(1),
        };
        let mut out = Vec::new();
        write_line("exit", &body, &header, &mut out);
        self.lines_emitted += 1;
        out
    }

    pub fn set_tracker(&mut self, tracker: TrackerInfo) {
        self.tracker = tracker;
    }

    /// Applies one collector run. A failed run keeps the collector's previous observation (so its
    /// entities are not reported as removed) and is reported in the `snapshot` and `agent` records.
    pub fn apply(
        &mut self,
        collector: &'static str,
        duration: Duration,
        result: Result<Option<Observation>, CollectError>,
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
                    if let Observation::Processes(p) = &mut obs {
                        p.processes.retain(|r| !self.exited.contains(&r.pid));
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

    /// The latest observation of a collector.
    pub fn latest(&self, collector: &str) -> Option<&Observation> {
        self.latest
            .iter()
            .find(|(n, _)| *n == collector)
            .and_then(|(_, o)| o.as_ref())
    }

    /// Lines that could not be written by the sink (reported in the next `agent` record).
    pub fn count_dropped(&mut self, lines: u64) {
        self.lines_dropped += lines;
        self.lines_emitted = self.lines_emitted.saturating_sub(lines);
    }

    /// Builds one emission. `cost` and `reads` describe the agent itself.
    pub fn emit(
        &mut self,
        now: SystemTime,
        cost: &SelfCost,
        reads: &ReadCounters,
        ladder: &LadderReport,
    ) -> Vec<u8> {
        let keyframe = self.config.emit == EmitMode::Full
            || self
                .seq
                .is_multiple_of(u64::from(self.config.keyframe_every.max(1)));
        let mut records = Vec::new();
        let mut warnings = Vec::new();
        crate::derived::records(&self.latest, &mut records, &mut warnings);
        for name in &self.ran {
            if let Some(s) = self.status.get(name)
                && let Some(e) = &s.last_error
            {
                warnings.push(format!("{name}: {e}"));
            }
        }

        let mut entities: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut out_records: Vec<(&'static str, &str)> = Vec::new();
        let mut next_sent = HashMap::with_capacity(records.len());
        for r in &records {
            *entities.entry(r.kind).or_default() += 1;
            let key = (r.kind, r.key.clone());
            let changed = self.sent.get(&key) != Some(&r.body);
            if keyframe || changed {
                out_records.push((r.kind, r.body.as_str()));
            }
            next_sent.insert(key, r.body.clone());
        }
        // Entities gone since the last emission.
        let mut gone: Vec<(&'static str, String, String)> = self
            .sent
            .drain()
            .filter(|(k, _)| !next_sent.contains_key(k))
            .map(|((kind, key), body)| (kind, key, body))
            .collect();
        gone.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let gone_records: Vec<Record> = gone
            .iter()
            .map(|(kind, key, body)| {
                if *kind == "process" {
                    Record {
                        kind: "exit",
                        key: key.clone(),
                        body: body.clone(),
                    }
                } else {
                    Record::new("removed", key.clone(), &RemovedBody { entity: kind, key })
                }
            })
            .collect();
        self.sent = next_sent;

        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (kind, _) in &out_records {
            *counts.entry(kind).or_default() += 1;
        }
        for r in &gone_records {
            *counts.entry(r.kind).or_default() += 1;
        }

        let ts = rfc3339(now);
        let header = Header {
            ts: &ts,
            host: &self.config.host,
            seq: self.seq,
        };
        let mut out = Vec::with_capacity(records.len() * 512 + 2048);
        let snapshot = SnapshotBody {
            mode: self.config.emit.as_str(),
            keyframe,
            interval_ms: self.config.interval.as_millis() as u64,
            tracker: &self.tracker,
            collectors: self
                .ran
                .iter()
                .filter_map(|n| {
                    self.status.get(n).map(|s| {
                        (
                            *n,
                            RunSummary {
                                ok: s.last_ok,
                                duration_us: s.last_duration_us,
                                error: s.last_error.as_deref(),
                            },
                        )
                    })
                })
                .collect(),
            entities,
            records: counts,
            warnings: &warnings,
        };
        Record::new("snapshot", "", &snapshot).write_line(&header, &mut out);
        for (kind, body) in &out_records {
            write_line(kind, body, &header, &mut out);
        }
        for r in &gone_records {
            r.write_line(&header, &mut out);
        }
        let lines_so_far = out_records.len() as u64 + gone_records.len() as u64 + 2;
        self.lines_emitted += lines_so_far;
        let agent = AgentBody {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            cost,
            proc_bytes_read: reads.total_bytes(),
            proc_bytes_read_by_file: FileClass::ALL
                .iter()
                .map(|c| (c.name(), reads.bytes(*c)))
                .collect(),
            proc_reads_by_file: FileClass::ALL
                .iter()
                .map(|c| (c.name(), reads.reads(*c)))
                .collect(),
            collectors: &self.status,
            tracker: &self.tracker,
            ladder,
            emissions: self.seq + 1,
            lines_emitted: self.lines_emitted,
            lines_dropped: self.lines_dropped,
        };
        Record::new("agent", "", &agent).write_line(&header, &mut out);
        self.seq += 1;
        self.ran.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collectors::processes::{Memory, Numbers, ProcessRecord, ProcessesObservation, Subtree},
        procfs::escape::Name,
    };

    fn store(emit: EmitMode, keyframe_every: u32) -> Store {
        Store::new(
            StoreConfig {
                host: "h".into(),
                emit,
                keyframe_every,
                interval: Duration::from_secs(10),
            },
            TrackerInfo {
                mode: "polling".into(),
                reason: Some("test".into()),
            },
            &["processes"],
        )
    }

    fn procs(list: &[(u32, u64)]) -> Result<Option<Observation>, CollectError> {
        Ok(Some(Observation::Processes(ProcessesObservation {
            processes: list
                .iter()
                .map(|&(pid, pss)| ProcessRecord {
                    pid,
                    ppid: 0,
                    name: Name::from("p"),
                    cmdline: Name::default(),
                    uid: Some(0),
                    user: Some("root".into()),
                    state: "S".into(),
                    threads: 1,
                    start_ticks: 1,
                    kernel_thread: false,
                    cgroup: None,
                    container: None,
                    unit: None,
                    numbers: Numbers::Exact,
                    memory: Memory {
                        pss_bytes: pss,
                        ..Memory::default()
                    },
                    subtree: Subtree::default(),
                })
                .collect(),
            ..ProcessesObservation::default()
        })))
    }

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("valid JSON line"))
            .collect()
    }

    fn kinds(v: &[serde_json::Value]) -> Vec<String> {
        v.iter()
            .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    fn emit(s: &mut Store) -> Vec<serde_json::Value> {
        lines(&s.emit(
            SystemTime::UNIX_EPOCH,
            &SelfCost::default(),
            &ReadCounters::default(),
            &LadderReport::default(),
        ))
    }

    #[test]
    fn full_mode_sends_everything_each_time_and_exits_for_the_gone() {
        let mut s = store(EmitMode::Full, 10);
        s.apply(
            "processes",
            Duration::from_millis(1),
            procs(&[(1, 10), (2, 20)]),
        );
        let a = emit(&mut s);
        assert_eq!(kinds(&a), ["snapshot", "process", "process", "agent"]);
        assert!(
            a.iter()
                .all(|r| r["seq"] == 0 && r["schema"] == "memscope.v1" && r["host"] == "h")
        );
        s.apply("processes", Duration::from_millis(1), procs(&[(1, 10)]));
        let b = emit(&mut s);
        assert_eq!(kinds(&b), ["snapshot", "process", "exit", "agent"]);
        assert_eq!(b[2]["pid"], 2);
        assert_eq!(b[2]["pss_bytes"], 20, "exit carries the last known numbers");
        assert!(b.iter().all(|r| r["seq"] == 1));
    }

    #[test]
    fn changes_mode_sends_only_changes_with_keyframes() {
        let mut s = store(EmitMode::Changes, 3);
        s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 20)]));
        let e0 = emit(&mut s);
        assert_eq!(kinds(&e0), ["snapshot", "process", "process", "agent"]);
        assert_eq!(e0[0]["keyframe"], true);
        s.apply("processes", Duration::ZERO, procs(&[(1, 10), (2, 21)]));
        let e1 = emit(&mut s);
        assert_eq!(kinds(&e1), ["snapshot", "process", "agent"]);
        assert_eq!(e1[1]["pid"], 2);
        assert_eq!(e1[0]["keyframe"], false);
        assert_eq!(e1[0]["entities"]["process"], 2);
        assert_eq!(e1[0]["records"]["process"], 1);
        s.apply("processes", Duration::ZERO, procs(&[(2, 21), (3, 30)]));
        let e2 = emit(&mut s);
        assert_eq!(kinds(&e2), ["snapshot", "process", "exit", "agent"]);
        assert_eq!(e2[1]["pid"], 3);
        assert_eq!(e2[2]["pid"], 1);
        // seq 3 is a keyframe: everything again.
        s.apply("processes", Duration::ZERO, procs(&[(2, 21), (3, 30)]));
        let e3 = emit(&mut s);
        assert_eq!(kinds(&e3), ["snapshot", "process", "process", "agent"]);
        assert_eq!(e3[0]["keyframe"], true);
    }

    #[test]
    fn a_failing_collector_is_reported_and_keeps_its_last_state() {
        let mut s = store(EmitMode::Changes, 100);
        s.apply("processes", Duration::ZERO, procs(&[(1, 10)]));
        emit(&mut s);
        s.apply(
            "processes",
            Duration::from_micros(7),
            Err(CollectError::Other("/proc: boom".into())),
        );
        let e = emit(&mut s);
        assert_eq!(kinds(&e), ["snapshot", "agent"], "no false exit");
        assert_eq!(e[0]["collectors"]["processes"]["ok"], false);
        assert_eq!(e[0]["collectors"]["processes"]["error"], "/proc: boom");
        assert_eq!(e[0]["warnings"][0], "processes: /proc: boom");
        assert_eq!(e[1]["collectors"]["processes"]["failures"], 1);
        assert_eq!(e[1]["collectors"]["processes"]["runs"], 2);
        assert_eq!(e[1]["collectors"]["processes"]["last_duration_us"], 7);
    }

    #[test]
    fn agent_record_reports_own_cost_and_reads() {
        let mut s = store(EmitMode::Full, 1);
        let out = s.emit(
            SystemTime::UNIX_EPOCH,
            &SelfCost {
                cpu_user_us: 5,
                cpu_system_us: 6,
                rss_bytes: 7,
                max_rss_bytes: 8,
            },
            &ReadCounters::default(),
            &LadderReport::default(),
        );
        let v = lines(&out);
        let agent = &v[v.len() - 1];
        assert_eq!(agent["kind"], "agent");
        assert_eq!(agent["cpu_user_us"], 5);
        assert_eq!(agent["rss_bytes"], 7);
        assert_eq!(agent["proc_bytes_read"], 0);
        assert_eq!(agent["proc_bytes_read_by_file"]["smaps_rollup"], 0);
        assert_eq!(agent["lines_emitted"], 2);
        assert_eq!(v[0]["ts"], "1970-01-01T00:00:00.000Z");
    }
}
