//! From state to lines: change detection against what was sent, keyframes, `exit` and `removed`
//! records for entities gone, and `exit` records at once between emissions.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use super::{
    bodies::{AgentBody, RemovedBody, RunSummary, SelfCost, SnapshotBody},
    state::Store,
};
use crate::{
    config::EmitMode,
    procfs::ReadCounters,
    records::{Header, Record, rfc3339, write_line},
};

impl Store {
    /// An `exit` record at once, between emissions, for a process the tracker saw exit: with the
    /// numbers last sent for it, `"at_once": true`, and the seq of the latest emission. A process
    /// whose numbers were never sent (it lived between two emissions) gets `"known": false`.
    /// Before the first emission nothing is written: the exit goes into the first emission, after
    /// its `snapshot`. The process is dropped from the state so the next emission neither re-sends
    /// it nor reports its exit twice.
    pub fn exit_now(&mut self, pid: u32, now: SystemTime) -> Vec<u8> {
        let key = ("process", pid.to_string());
        let gone = std::collections::HashSet::from([pid]);
        for (_, o) in &mut self.latest {
            if let Some(o) = o {
                o.forget_processes(&gone);
            }
        }
        self.exited.insert(pid);
        if self.seq == 0 {
            self.early_exits.push(pid);
            return Vec::new();
        }
        let body = exit_body(self.sent.remove(&key), pid);
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

    /// Builds one emission. `cost` and `reads` describe the agent itself.
    pub fn emit(&mut self, now: SystemTime, cost: &SelfCost, reads: &ReadCounters) -> Vec<u8> {
        let ladder = self.ladder_report();
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
        let early_exits = std::mem::take(&mut self.early_exits);
        let gone_records: Vec<Record> = early_exits
            .iter()
            .map(|pid| Record {
                kind: "exit",
                key: pid.to_string(),
                body: format!("\"pid\":{pid},\"known\":false"),
            })
            .chain(gone.iter().map(|(kind, key, body)| {
                if *kind == "process" {
                    Record {
                        kind: "exit",
                        key: key.clone(),
                        body: body.clone(),
                    }
                } else {
                    Record::new("removed", key.clone(), &RemovedBody { entity: kind, key })
                }
            }))
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
                                late: self.late.contains(n),
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
        let by_class = reads.by_class();
        let agent = AgentBody {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            cost,
            proc_bytes_read: reads.total_bytes(),
            proc_bytes_read_by_file: by_class.iter().map(|(c, n)| (*c, n.bytes)).collect(),
            proc_reads_by_file: by_class.iter().map(|(c, n)| (*c, n.reads)).collect(),
            collectors: &self.status,
            tracker: &self.tracker,
            ladder: &ladder,
            emissions: self.seq + 1,
            lines_emitted: self.lines_emitted,
            lines_dropped: self.lines_dropped,
        };
        Record::new("agent", "", &agent).write_line(&header, &mut out);
        self.seq += 1;
        self.ran.clear();
        self.late.clear();
        out
    }
}

/// The body of an `exit` record sent at once: the last body sent for the process, or the
/// `known: false` form when its numbers were never sent.
fn exit_body(sent: Option<String>, pid: u32) -> String {
    match sent {
        Some(b) => format!("{b},\"at_once\":true"),
        None => format!("\"pid\":{pid},\"known\":false,\"at_once\":true"),
    }
}
