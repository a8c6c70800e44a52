//! An OOM kill seen by the eBPF tracker: the victim's `exit` goes out at once (see
//! [`Store::exit_now`]), and with it the `cgroup` records of the victim's cgroup and its ancestors,
//! re-read after the kill, so the moved `events.oom_kill` arrives in the same write as the exit.

use std::time::SystemTime;

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
            let v: serde_json::Value = serde_json::from_str(&format!("{{{body}}}")).ok()?;
            Some(Name::from(v["cgroup"].as_str()?))
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
        let ts = rfc3339(now);
        let header = Header {
            ts: &ts,
            host: &self.config.host,
            seq: self.seq.saturating_sub(1),
        };
        let mut out = Vec::new();
        for r in select(records, &keys) {
            let key = ("cgroup", r.key);
            if self.sent.get(&key) == Some(&r.body) {
                continue;
            }
            write_line(
                "cgroup",
                &format!("{},\"at_once\":true", r.body),
                &header,
                &mut out,
            );
            self.lines_emitted += 1;
            self.sent.insert(key, r.body);
        }
        out
    }
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
        store::{ExitCause, SelfCost, StoreConfig, TrackerInfo},
    };

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
        let mut s = Store::new(
            StoreConfig {
                host: "h".into(),
                emit: EmitMode::Changes,
                keyframe_every: 100,
                interval: Duration::from_secs(10),
            },
            TrackerInfo {
                mode: "ebpf".into(),
                reason: None,
            },
            &["processes", "cgroup"],
        );
        let mut victim = ProcessRecord::test(7, Numbers::Exact, Default::default());
        victim.cgroup = Some(Name::from("/a/b"));
        let processes: Box<dyn Observation> = Box::new(ProcessesObservation {
            processes: vec![victim],
            ..ProcessesObservation::default()
        });
        s.apply("processes", Duration::ZERO, Ok(Some(processes)));
        s.apply(
            "cgroup",
            Duration::ZERO,
            Ok(Some(Box::new(observe(dir.path())))),
        );
        let emit = |s: &mut Store| {
            lines(&s.emit(
                SystemTime::UNIX_EPOCH,
                &SelfCost::default(),
                &ReadCounters::default(),
            ))
        };
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
}
