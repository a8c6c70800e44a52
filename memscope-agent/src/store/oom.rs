//! An OOM kill seen by the eBPF tracker: the victim's `exit` goes out at once (see
//! [`Store::exit_now`]), and with it the `cgroup` records of the victim's cgroup and its ancestors,
//! re-read after the kill, so the moved `events.oom_kill` arrives in the same write as the exit.

use std::{collections::HashMap, time::SystemTime};

use super::state::Store;
use crate::{
    collectors::{
        cgroup::{
            CgroupObservation, CgroupStats,
            oom::{Refresh, select},
        },
        processes::ProcessesObservation,
    },
    procfs::escape::Name,
    records::{Header, Record, rfc3339, write_line},
};

impl Store {
    /// The header of lines sent at once, between emissions: the seq of the latest emission.
    pub(super) fn at_once_header<'a>(&'a self, ts: &'a str) -> Header<'a> {
        Header {
            ts,
            host: &self.config.host,
            seq: self.seq.saturating_sub(1),
        }
    }

    /// The cgroups to re-read for an OOM kill of `pid`: its cgroup (as the latest processes
    /// observation names it, else the last record sent for it) and that cgroup's ancestors. `None`
    /// without a cgroup observation, or when the process's cgroup is unknown.
    pub fn oom_refresh(&self, pid: u32) -> Option<Refresh> {
        let observations = || self.latest.iter().filter_map(|(_, o)| o.as_deref());
        let cgroups = observations().find_map(|o| o.downcast_ref::<CgroupObservation>())?;
        let from_processes = observations()
            .find_map(|o| o.downcast_ref::<ProcessesObservation>())
            .and_then(|p| p.processes.iter().find(|p| p.pid == pid))
            .and_then(|p| p.cgroup.clone());
        let cgroup = from_processes.or_else(|| {
            let body = self.sent.get(&("process", pid.to_string()))?;
            body_field(body, "cgroup").map(|c| Name::from(c.as_str()))
        })?;
        cgroups.refresh_for(&cgroup)
    }

    /// Puts the re-read cgroups into the latest cgroup observation and returns the lines of those
    /// whose record changed, sent at once like the exit (`"at_once": true`, the seq of the latest
    /// emission). Before the first emission nothing is written: the first emission carries them.
    pub fn oom_cgroup_lines(&mut self, fresh: Vec<CgroupStats>, now: SystemTime) -> Vec<u8> {
        if fresh.is_empty() {
            return Vec::new();
        }
        let Some(cgroups) = self
            .latest
            .iter_mut()
            .find_map(|(_, o)| o.as_deref_mut()?.downcast_mut::<CgroupObservation>())
        else {
            return Vec::new();
        };
        let keys = cgroups.apply_refresh(fresh);
        if self.seq == 0 {
            return Vec::new();
        }
        let observations = || self.latest.iter().filter_map(|(_, o)| o.as_deref());
        let processes = observations().find_map(|o| o.downcast_ref::<ProcessesObservation>());
        let mut records: Vec<Record> = Vec::new();
        if let Some(c) = observations().find_map(|o| o.downcast_ref::<CgroupObservation>()) {
            c.records_with(processes, &mut records);
        }
        let changed: Vec<Record> = select(records, &keys)
            .into_iter()
            .filter(|r| self.sent.get(&("cgroup", r.key.clone())) != Some(&r.body))
            .collect();
        let ts = rfc3339(now);
        let header = self.at_once_header(&ts);
        let mut out = Vec::new();
        for r in &changed {
            write_line(
                "cgroup",
                &format!("{},\"at_once\":true", r.body),
                &header,
                &mut out,
            );
        }
        self.lines_emitted += changed.len() as u64;
        for r in changed {
            self.sent.insert(("cgroup", r.key), r.body);
        }
        out
    }
}

impl Store {
    /// Processes sent at the last emission that the latest processes observation no longer holds:
    /// the exits the coming emission will report, by pid, with the cgroup their last record names.
    fn gone_processes(&self) -> Vec<(u32, Option<Name>)> {
        let Some(processes) = self
            .latest
            .iter()
            .filter_map(|(_, o)| o.as_deref())
            .find_map(|o| o.downcast_ref::<ProcessesObservation>())
        else {
            return Vec::new();
        };
        let live: std::collections::HashSet<u32> =
            processes.processes.iter().map(|p| p.pid).collect();
        self.sent
            .iter()
            .filter(|((kind, _), _)| *kind == "process")
            .filter_map(|((_, key), body)| {
                let pid: u32 = key.parse().ok()?;
                (!live.contains(&pid)).then(|| {
                    (
                        pid,
                        body_field(body, "cgroup").map(|c| Name::from(c.as_str())),
                    )
                })
            })
            .collect()
    }

    /// Before an emission: the cgroups of the processes it will report gone, to re-read after the
    /// runs that found them gone (so a kill that ended one is in the counters the emission
    /// compares, whenever in the tick the `cgroup` run read them). `None` when nothing is gone.
    pub fn exit_refresh(&self) -> Option<Refresh> {
        let gone = self.gone_processes();
        let cgroups: Vec<&Name> = gone.iter().filter_map(|(_, c)| c.as_ref()).collect();
        if cgroups.is_empty() {
            return None;
        }
        self.latest
            .iter()
            .filter_map(|(_, o)| o.as_deref())
            .find_map(|o| o.downcast_ref::<CgroupObservation>())?
            .refresh_for_all(cgroups)
    }

    /// Puts re-read cgroups into the latest cgroup observation (no lines: the emission sends them).
    pub fn apply_cgroups(&mut self, fresh: Vec<CgroupStats>) {
        if let Some(c) = self
            .latest
            .iter_mut()
            .find_map(|(_, o)| o.as_deref_mut()?.downcast_mut::<CgroupObservation>())
        {
            c.apply_refresh(fresh);
        }
    }

    /// Which of the processes gone at this emission (`gone`: (pid, last body)) were OOM-killed, as
    /// far as the `oom_kill` counters say (`now`, by cgroup; `self.oom_kills` holds the last
    /// emission's). A cgroup whose counter moved since the last emission, or moved at the last one
    /// with no exit there to claim it (the kill came between that tick's processes read and its
    /// cgroup read), marks every process of it gone now: the counter says how many were killed,
    /// not which (the figures last sent are too old to tell the victim by size). Kills no exit
    /// claims carry over to the next emission once, then lapse. Returns the pids to mark.
    pub(super) fn infer_oom_kills(
        &mut self,
        gone: &[(u32, &str)],
        now: &HashMap<String, u64>,
    ) -> std::collections::HashSet<u32> {
        let mut kills: HashMap<&str, u64> = HashMap::new();
        for (cgroup, n) in now {
            let Some(before) = self.oom_kills.get(cgroup) else {
                continue;
            };
            let carried = self.pending_oom_kills.get(cgroup).copied().unwrap_or(0);
            kills.insert(cgroup, n.saturating_sub(*before) + carried);
        }
        // Only this interval's kills may carry over, and only while unclaimed.
        let mut pending: HashMap<String, u64> = now
            .iter()
            .filter_map(|(c, n)| Some((c.clone(), n.checked_sub(*self.oom_kills.get(c)?)?)))
            .filter(|(_, moved)| *moved > 0)
            .collect();
        let mut killed = std::collections::HashSet::new();
        for (pid, body) in gone {
            let Some(cgroup) = body_field(body, "cgroup") else {
                continue;
            };
            if kills.get(cgroup.as_str()).is_some_and(|&k| k > 0) {
                killed.insert(*pid);
                pending.remove(&cgroup);
            }
        }
        self.pending_oom_kills = pending;
        killed
    }
}

/// A string field of a record body (`"key":"value"` fragments), if it has one.
fn body_field(body: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&format!("{{{body}}}")).ok()?;
    Some(v[key].as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        collectors::{
            Observation,
            cgroup::oom::fixture::{observe, tree},
            processes::{Numbers, ProcessRecord},
        },
        config::EmitMode,
        procfs::{ProcFs, ReadCounters},
        store::{ExitCause, SelfCost},
    };

    /// Applies a processes run holding pid 7 in `/a/b`, and a cgroup run over the tree at `root`.
    fn with_victim(s: &mut Store, root: &std::path::Path) {
        let mut victim = ProcessRecord::test(7, Numbers::Exact, Default::default());
        victim.cgroup = Some(Name::from("/a/b"));
        let processes: Box<dyn Observation> = Box::new(ProcessesObservation {
            processes: vec![std::sync::Arc::new(victim)],
            ..ProcessesObservation::default()
        });
        s.apply("processes", Duration::ZERO, Ok(Some(processes)));
        s.apply("cgroup", Duration::ZERO, Ok(Some(Box::new(observe(root)))));
    }

    fn emit(s: &mut Store) -> Vec<serde_json::Value> {
        lines(&s.emit(
            SystemTime::UNIX_EPOCH,
            &SelfCost::default(),
            &ReadCounters::default(),
        ))
    }

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("valid JSON line"))
            .collect()
    }

    /// The store task's steps for an OOM event: the exit and the victim's cgroups, with the moved
    /// counter, in one write; the next emission does not send those cgroups again.
    #[test]
    fn an_oom_kill_sends_the_exit_and_the_moved_counter_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path(), 0);
        let mut s =
            crate::store::tests::store_with(EmitMode::Changes, 100, true, &["processes", "cgroup"]);
        with_victim(&mut s, dir.path());
        emit(&mut s);

        tree(dir.path(), 1); // the kill
        let refresh = s.oom_refresh(7).expect("the victim's cgroup is known");
        let fresh = refresh.read(&ProcFs::new("/nonexistent"));
        let mut out = s.exit_now(7, ExitCause::OomKill, SystemTime::UNIX_EPOCH);
        out.extend(s.oom_cgroup_lines(fresh, SystemTime::UNIX_EPOCH));
        let out = lines(&out);
        let kinds: Vec<&str> = out.iter().filter_map(|l| l["kind"].as_str()).collect();
        // The victim's cgroup and its ancestors: their fair shares lost the victim, and the
        // counter moved where the kernel keeps one (a v2 root has no memory.events).
        assert_eq!(kinds, ["exit", "cgroup", "cgroup", "cgroup"], "{out:?}");
        assert_eq!(out[0]["reason"], "oom_kill");
        assert_eq!(out[0]["cgroup"], "/a/b");
        let paths: Vec<&str> = out[1..].iter().filter_map(|l| l["path"].as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a/b"]);
        for cg in &out[1..] {
            assert_eq!(cg["at_once"], true);
            assert_eq!(cg["seq"], out[0]["seq"], "one emission's seq");
            assert_eq!(cg["fair"]["processes"], 0, "{cg}");
        }
        assert_eq!(out[2]["events"]["oom_kill"], 1);
        assert_eq!(out[3]["events"]["oom_kill"], 1);

        // The next emission (changes mode) has nothing new to say about them.
        let next = emit(&mut s);
        assert!(
            !next.iter().any(|l| l["kind"] == "cgroup"),
            "already sent: {next:?}"
        );
    }

    fn polling_store() -> Store {
        crate::store::tests::store_with(EmitMode::Full, 1, false, &["processes", "cgroup"])
    }

    fn counts(list: &[(&str, u64)]) -> HashMap<String, u64> {
        list.iter().map(|(c, n)| ((*c).to_string(), *n)).collect()
    }

    #[test]
    fn a_kill_marks_the_gone_processes_of_its_cgroup_only() {
        let mut s = polling_store();
        s.oom_kills = counts(&[("/a", 2), ("/b", 0)]);
        let one = r#""pid":7,"cgroup":"/a","rss_bytes":10"#;
        let two = r#""pid":8,"cgroup":"/a","rss_bytes":5"#;
        let elsewhere = r#""pid":9,"cgroup":"/b","rss_bytes":999"#;
        let no_cgroup = r#""pid":10,"rss_bytes":999"#;
        let gone = [
            (7, one),
            (8, two),
            (9, elsewhere),
            (10, no_cgroup),
            (11, "garbage{"),
        ];
        let killed = s.infer_oom_kills(&gone, &counts(&[("/a", 3), ("/b", 0)]));
        assert_eq!(
            killed,
            [7, 8].into(),
            "a kill in /a: its exits, which one is unknown"
        );
        assert!(s.pending_oom_kills.is_empty(), "claimed");
        // Without an earlier count nothing is known, so nothing is inferred.
        s.oom_kills = HashMap::new();
        assert!(s.infer_oom_kills(&gone, &counts(&[("/a", 9)])).is_empty());
    }

    #[test]
    fn a_kill_counted_before_its_exit_was_seen_is_claimed_at_the_next_emission() {
        let mut s = polling_store();
        let victim = r#""pid":7,"cgroup":"/a","rss_bytes":10"#;
        // Emission 1: the cgroup run read the kill, the processes run still saw the victim.
        s.oom_kills = counts(&[("/a", 0)]);
        assert!(s.infer_oom_kills(&[], &counts(&[("/a", 1)])).is_empty());
        assert_eq!(s.pending_oom_kills, counts(&[("/a", 1)]));
        s.oom_kills = counts(&[("/a", 1)]);
        // Emission 2: the exit is found; the counter did not move again.
        assert_eq!(
            s.infer_oom_kills(&[(7, victim)], &counts(&[("/a", 1)])),
            [7].into()
        );
        assert!(s.pending_oom_kills.is_empty());
        // A kill nobody claims lapses after one more emission.
        s.oom_kills = counts(&[("/a", 1)]);
        s.infer_oom_kills(&[], &counts(&[("/a", 2)]));
        s.oom_kills = counts(&[("/a", 2)]);
        s.infer_oom_kills(&[], &counts(&[("/a", 2)]));
        assert!(s.pending_oom_kills.is_empty(), "lapsed");
        assert!(
            s.infer_oom_kills(&[(7, victim)], &counts(&[("/a", 2)]))
                .is_empty()
        );
    }

    /// Before an emission the store re-reads the cgroups of the processes that emission reports
    /// gone: a kill the tick's cgroup run missed (it read before the kill) is in the counters the
    /// emission compares, so the exit is marked in the same emission.
    #[test]
    fn the_cgroups_of_gone_processes_are_reread_before_the_emission() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path(), 0);
        let mut s = polling_store();
        with_victim(&mut s, dir.path());
        assert!(s.exit_refresh().is_none(), "nothing gone yet");
        emit(&mut s);
        // The next tick: the cgroup run reads before the kill, the processes run after it.
        s.apply(
            "cgroup",
            Duration::ZERO,
            Ok(Some(Box::new(observe(dir.path())))),
        );
        tree(dir.path(), 1);
        let empty: Box<dyn Observation> = Box::new(ProcessesObservation::default());
        s.apply("processes", Duration::ZERO, Ok(Some(empty)));
        let refresh = s.exit_refresh().expect("the victim's cgroup is re-read");
        s.apply_cgroups(refresh.read(&ProcFs::new("/nonexistent")));
        let e = emit(&mut s);
        let exit = e.iter().find(|l| l["kind"] == "exit").expect("exit");
        assert_eq!(exit["reason"], "oom_kill", "{exit}");
        assert_eq!(exit["reason_inferred"], true);
        let cg = e
            .iter()
            .find(|l| l["kind"] == "cgroup" && l["path"] == "/a/b")
            .expect("cgroup");
        assert_eq!(
            cg["events"]["oom_kill"], 1,
            "the same emission shows the kill"
        );
    }
}
