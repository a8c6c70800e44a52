//! From state to lines: change detection against what was sent, keyframes, `exit` and `removed`
//! records for entities gone, and `exit` records at once between emissions.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime},
};

use super::{
    bodies::{AgentBody, RemovedBody, RunSummary, SelfCost, SnapshotBody},
    delta::{self, Moved, Rule},
    state::Store,
};
use crate::{
    collectors::processes::ProcessesObservation,
    config::EmitMode,
    procfs::ReadCounters,
    records::{Header, Record, SCHEMA, rfc3339, write_line},
};

impl Store {
    /// An `exit` record at once, between emissions, for a process the tracker saw exit: with the
    /// numbers last sent for it, `"at_once": true`, and the seq of the latest emission. A process
    /// whose numbers were never sent (it lived between two emissions) gets no record: the next
    /// `snapshot` counts it in `unseen_exits` (under fork churn a line each would be most of the
    /// stream, and tell the reader nothing it can join). Before the first emission nothing is
    /// written: the exit goes into the first emission, after its `snapshot`. The process is
    /// dropped from the state so the next emission neither re-sends it nor reports its exit twice.
    ///
    /// [`ExitCause::OomKill`] (the tracker's `oom:mark_victim` event, which comes before the
    /// process is gone) adds `"reason":"oom_kill"`; the tracker's exit event that follows for the
    /// same pid then writes nothing.
    pub fn exit_now(&mut self, pid: u32, cause: ExitCause, now: SystemTime) -> Vec<u8> {
        let oom = cause == ExitCause::OomKill;
        if oom {
            if !self.oom_killed.insert(pid) {
                return Vec::new(); // a second mark_victim for the same victim
            }
        } else if self.oom_killed.remove(&pid) {
            return Vec::new(); // its exit went out with the OOM event
        }
        let key = ("process", pid.to_string());
        // Dropped from the observations held at the next emission, all exits at once (one pass
        // over the processes per emission, not one per exit: under fork churn hundreds of exits
        // a second). An OOM victim at once: its cgroup's lines that go with it must not count it.
        self.exited.insert(pid);
        if oom {
            let gone = std::collections::HashSet::from([pid]);
            for o in self.latest.iter_mut().filter_map(|(_, o)| o.as_mut()) {
                o.forget_processes(&gone);
            }
        }
        let sent = self.sent.remove(&key);
        if sent.is_none() && !oom {
            self.unseen_exits += 1;
            return Vec::new();
        }
        if self.seq == 0 {
            // Nothing is sent before the first emission, so only an OOM victim gets here.
            self.early_oom_kills.push(pid);
            return Vec::new();
        }
        let mut body = exit_body(sent, pid);
        if oom {
            body.push_str(OOM_REASON);
        }
        let ts = rfc3339(now);
        let header = self.at_once_header(&ts);
        let mut out = Vec::new();
        write_line("exit", &body, &header, &mut out);
        self.lines_emitted += 1;
        out
    }

    /// Builds one emission. `cost` and `reads` describe the agent itself.
    pub fn emit(&mut self, now: SystemTime, cost: &SelfCost, reads: &ReadCounters) -> Vec<u8> {
        if !self.exited.is_empty() {
            let mut kept = false;
            for o in self.latest.iter_mut().filter_map(|(_, o)| o.as_mut()) {
                kept |= o.forget_processes(&self.exited);
            }
            // Kept for the next processes run (which may have read one just before it died);
            // with no processes collector nothing will, and the set must not grow forever.
            if !kept {
                self.exited.clear();
            }
        }
        let ladder = self.ladder_report();
        let keyframe = self.config.emit == EmitMode::Full
            || self
                .seq
                .is_multiple_of(u64::from(self.config.keyframe_every.max(1)));
        let serialize = Instant::now();
        let mut records = Vec::with_capacity(self.records_hint);
        let mut warnings = Vec::new();
        // Between keyframes, entities the same as in the observation the last emission was built
        // from are neither serialized nor compared: nothing of theirs is sent (what the reader
        // holds was decided on that same body), so only their keys are carried over.
        let mut unchanged = Vec::new();
        let emitted_from = std::mem::take(&mut self.emitted_from);
        let since = |name: &str| {
            (!keyframe)
                .then(|| emitted_from.get(name).copied())
                .flatten()
        };
        crate::derived::records(
            &self.latest,
            &since,
            &mut records,
            &mut unchanged,
            &mut warnings,
        );
        // What the reader holds of the unchanged entities stays what it holds: moved over to the
        // next reference at once (one lookup each). One the reader does not hold (its `exit`
        // went out at once, say): every record goes whole, as new.
        let mut next_sent = HashMap::with_capacity(records.len() + unchanged.len());
        let mut missing = false;
        for key in unchanged.drain(..) {
            match self.sent.remove(&key) {
                Some(body) => {
                    next_sent.insert(key, body);
                }
                None => missing = true,
            }
        }
        if missing {
            self.sent.extend(next_sent.drain());
            records.clear();
            warnings.clear();
            crate::derived::records(
                &self.latest,
                &|_| None,
                &mut records,
                &mut unchanged,
                &mut warnings,
            );
        }
        self.emitted_from = self
            .latest
            .iter()
            .filter_map(|(n, o)| Some((*n, o.as_ref()?.generation()?)))
            .collect();
        self.records_hint = records.len();
        for name in &self.ran {
            if let Some(s) = self.status.get(name)
                && let Some(e) = &s.last_error
            {
                warnings.push(format!("{name}: {e}"));
            }
        }
        // A collector that reports the failed read already names the path.
        for w in std::mem::take(&mut self.stuck_warnings) {
            if !warnings.iter().any(|x| x.ends_with(w.as_str())) {
                warnings.push(w);
            }
        }
        self.phases.serialize = serialize.elapsed().as_micros() as u64;

        let diff = Instant::now();
        let oom_kills = oom_kill_counts(&records);
        let header_ts = rfc3339(now);
        let host = self.config.host.clone();
        let header = Header {
            ts: &header_ts,
            host: &host,
            seq: self.seq,
        };
        let mut entities: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        // Two passes, so that a keyframe's lines are held once: the first decides what each
        // record sends (the snapshot, which goes first, counts them), the second writes the
        // lines straight into the output behind the snapshot.
        let mut deltas = String::new();
        let mut decisions = Vec::with_capacity(records.len());
        let mut sent_lines = 0u64;
        // The output's capacity, counted as lines are decided: a line's bytes besides its body
        // are the envelope (schema, kind, ts, host, seq).
        let line_overhead = 64 + SCHEMA.len() + header_ts.len() + host.len();
        let mut out_len = 8192;
        for (kind, _) in next_sent.keys() {
            *entities.entry(*kind).or_default() += 1;
        }
        for r in &mut records {
            *entities.entry(r.kind).or_default() += 1;
            let key = (r.kind, std::mem::take(&mut r.key));
            let decision = match self.sent.remove(&key) {
                Some(sent) if !keyframe => {
                    let rule = Rule::of(r.kind, self.config.min_change.of(r.kind));
                    if delta::moved(&sent, &r.body, &rule) == Moved::Beyond {
                        let start = deltas.len();
                        let mut held = String::with_capacity(sent.len());
                        match delta::entity_delta(&sent, &r.body, &rule, &mut deltas, &mut held) {
                            Some(()) => Decision::Delta {
                                line: start..deltas.len(),
                                held,
                            },
                            None => {
                                deltas.truncate(start);
                                Decision::Whole
                            }
                        }
                    } else {
                        // Not sent: the reference stays what the reader has.
                        Decision::Keep(sent)
                    }
                }
                // A keyframe, or an entity the reader does not know yet: the whole record.
                _ => Decision::Whole,
            };
            match &decision {
                Decision::Whole => out_len += line_overhead + r.body.len(),
                Decision::Delta { line, .. } => out_len += line_overhead + line.len(),
                Decision::Keep(_) => {}
            }
            if !matches!(decision, Decision::Keep(_)) {
                *counts.entry(r.kind).or_default() += 1;
                sent_lines += 1;
            }
            decisions.push((key, decision));
        }
        // Entities gone since the last emission.
        // Every record and every unchanged key took its entry out of `sent`: what is left is gone.
        let mut gone: Vec<(&'static str, String, String)> = self
            .sent
            .drain()
            .map(|((kind, key), body)| (kind, key, body))
            .collect();
        gone.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let gone_processes: Vec<(u32, &str)> = gone
            .iter()
            .filter(|(kind, _, _)| *kind == "process")
            .filter_map(|(_, key, body)| Some((key.parse().ok()?, body.as_str())))
            .collect();
        let oom_killed = self.infer_oom_kills(&gone_processes, &oom_kills);
        let early_oom_kills = std::mem::take(&mut self.early_oom_kills);
        let gone_records: Vec<Record> = early_oom_kills
            .iter()
            .map(|pid| Record {
                kind: "exit",
                key: pid.to_string(),
                body: format!("\"pid\":{pid},\"known\":false{OOM_REASON}"),
            })
            .chain(gone.iter().map(|(kind, key, body)| {
                if *kind == "process" {
                    let mut body = body.clone();
                    if key.parse().is_ok_and(|pid: u32| oom_killed.contains(&pid)) {
                        body.push_str(OOM_REASON);
                        body.push_str(",\"reason_inferred\":true");
                    }
                    Record {
                        kind: "exit",
                        key: key.clone(),
                        body,
                    }
                } else {
                    Record::new("removed", key.clone(), &RemovedBody { entity: kind, key })
                }
            }))
            .collect();
        self.oom_kills = oom_kills;

        for r in &gone_records {
            *counts.entry(r.kind).or_default() += 1;
        }

        out_len += gone_records
            .iter()
            .map(|r| line_overhead + r.body.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(out_len);
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
            unseen_exits: std::mem::take(&mut self.unseen_exits),
            warnings: &warnings,
        };
        Record::new("snapshot", "", &snapshot).write_line(&header, &mut out);
        for (r, (key, decision)) in records.into_iter().zip(decisions) {
            let held = match decision {
                Decision::Whole => {
                    write_line(r.kind, &r.body, &header, &mut out);
                    r.body
                }
                Decision::Delta { line, held } => {
                    write_line(r.kind, &deltas[line], &header, &mut out);
                    held
                }
                Decision::Keep(sent) => sent,
            };
            next_sent.insert(key, held);
        }
        self.sent = next_sent;
        for r in &gone_records {
            r.write_line(&header, &mut out);
        }
        let lines_so_far = sent_lines + gone_records.len() as u64 + 2;
        self.phases.diff = diff.elapsed().as_micros() as u64;
        let ran = |name: &str| {
            if self.ran.contains(&name) {
                self.status.get(name).map_or(0, |s| s.last_duration_us)
            } else {
                0
            }
        };
        // The processes run waits for the same tick's smaps run (the rollups it derives): that
        // time is the smaps phase's, not counted twice.
        let waited = self
            .latest
            .iter()
            .find(|(n, _)| *n == "processes")
            .and_then(|(_, o)| o.as_deref()?.downcast_ref::<ProcessesObservation>())
            .map_or(0, |o| o.waited.as_micros() as u64);
        self.phases.processes = ran("processes").saturating_sub(waited);
        self.phases.smaps = ran("smaps");
        self.lines_emitted += lines_so_far;
        let by_class = reads.by_class();
        let agent = AgentBody {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: self.config.started.elapsed().as_millis() as u64,
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
            phases_us: &self.phases,
            stuck_reads: &self.stuck,
        };
        let agent = Record::new("agent", "", &agent);
        match self.sent_agent.take() {
            Some(sent) if !keyframe => {
                let mut d = String::with_capacity(512);
                match delta::delta_body_without(&sent, &agent.body, AGENT_KEYFRAME_ONLY, &mut d) {
                    Some(()) => write_line("agent", &d, &header, &mut out),
                    None => agent.write_line(&header, &mut out),
                }
            }
            _ => agent.write_line(&header, &mut out),
        }
        if self.config.emit == EmitMode::Changes {
            self.sent_agent = Some(agent.body);
        }
        self.seq += 1;
        self.ran.clear();
        self.late.clear();
        out
    }
}

/// What one record sends in an emission, decided before any line is written.
enum Decision {
    /// The whole record (a keyframe, or an entity the reader does not know yet).
    Whole,
    /// A delta, at `line` in the emission's delta text; `held` is what the reader holds after it.
    Delta {
        line: std::ops::Range<usize>,
        held: String,
    },
    /// Nothing: it did not move beyond its rule, and the reader keeps this body.
    Keep(String),
}

/// Why the tracker says a process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited (or was killed by anything but the OOM killer): the record has no `reason`.
    Exit,
    /// The OOM killer chose it (`oom:mark_victim`).
    OomKill,
}

/// `events.oom_kill` of every `cgroup` record, by cgroup path.
fn oom_kill_counts(records: &[Record]) -> HashMap<String, u64> {
    records
        .iter()
        .filter(|r| r.kind == "cgroup")
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&format!("{{{}}}", r.body)).ok()?;
            Some((r.key.clone(), v["events"]["oom_kill"].as_u64()?))
        })
        .collect()
}

/// Members of the `agent` record sent only in keyframes (in `changes` mode): cumulative counters
/// whose movement between keyframes the other records already show (each emission's `snapshot`
/// has every collector's outcome and duration; `proc_bytes_read` and `phases_us` are in every
/// `agent` delta).
/// `collectors` is sent between keyframes too when more than its run counts and durations moved
/// (a failure, a late or skipped run).
const AGENT_KEYFRAME_ONLY: &[delta::Skip<'static>] = &[
    ("collectors", Some(&["runs", "last_duration_us"])),
    ("proc_bytes_read_by_file", None),
    ("proc_reads_by_file", None),
    ("tiers", None),
];

/// Appended to the body of an `exit` record of an OOM-killed process.
const OOM_REASON: &str = ",\"reason\":\"oom_kill\"";

/// The body of an `exit` record sent at once: the last body sent for the process, or the
/// `known: false` form when its numbers were never sent.
fn exit_body(sent: Option<String>, pid: u32) -> String {
    match sent {
        Some(b) => format!("{b},\"at_once\":true"),
        None => format!("\"pid\":{pid},\"known\":false,\"at_once\":true"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counts_come_from_cgroup_records_only() {
        let records = [
            Record {
                kind: "cgroup",
                key: "/a".into(),
                body: r#""path":"/a","events":{"oom":1,"oom_kill":3}"#.into(),
            },
            Record {
                kind: "cgroup",
                key: "/b".into(),
                body: r#""path":"/b","events":{}"#.into(),
            },
            Record {
                kind: "process",
                key: "1".into(),
                body: r#""pid":1,"events":{"oom_kill":9}"#.into(),
            },
        ];
        let now = oom_kill_counts(&records);
        assert_eq!(now, HashMap::from([("/a".to_owned(), 3)]));
    }
}
