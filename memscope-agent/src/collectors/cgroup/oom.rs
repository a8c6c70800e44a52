//! The cgroup side of an OOM kill seen by the eBPF tracker (`oom:mark_victim`): which process the
//! victim task belongs to, and a fresh read of its cgroup and the cgroup's ancestors, so the `exit`
//! record sent at once and the `cgroup` records showing the moved `events.oom_kill` go out
//! together.
//!
//! The kernel counts the kill (`memory.events` `oom_kill`, v1 `memory.oom_control`) before it
//! sends the SIGKILL and before the tracepoint fires, so a read after the event sees it. In v2 the
//! counter is hierarchical (every ancestor's moves too); in v1 only the victim's cgroup's.

use std::path::PathBuf;

use super::{CgroupObservation, CgroupStats, Hierarchy, Reader, ancestors, join};
use crate::{
    procfs::{FileClass, ProcFs, escape::Name, status::parse_status},
    records::Record,
};

/// The process (thread group) of the victim task `tid` that `oom:mark_victim` names: the `Tgid`
/// of `/proc/<tid>/status` while the task still exists, else `tid` itself (the tracepoint's task is
/// the group leader except when the killer picked a thread of a group whose leader had already
/// exited; that thread is gone by now only if the kill has completed).
pub fn victim_process(procfs: &ProcFs, tid: u32) -> u32 {
    let mut buf = Vec::new();
    procfs
        .read_parsed(
            &procfs.pid_path(tid, "status"),
            FileClass::STATUS,
            &mut buf,
            parse_status,
        )
        .map_or(tid, |s| s.tgid)
}

/// What to re-read after an OOM kill: the victim's cgroup and its ancestors, under the hierarchy
/// the last run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    hierarchy: Hierarchy,
    base: PathBuf,
    /// The victim's cgroup first, then its ancestors, each one the last run walked.
    paths: Vec<Name>,
}

impl CgroupObservation {
    /// The re-read an OOM kill in `cgroup` calls for: that cgroup and its ancestors, those of them
    /// the last run walked. `None` when the observation has no hierarchy or walked none of them.
    pub fn refresh_for(&self, cgroup: &Name) -> Option<Refresh> {
        self.refresh_for_all(std::iter::once(cgroup))
    }

    /// One re-read for several cgroups (each with its ancestors, each cgroup once, deepest first).
    pub fn refresh_for_all<'a>(
        &self,
        cgroups: impl IntoIterator<Item = &'a Name>,
    ) -> Option<Refresh> {
        let (hierarchy, base) = (self.hierarchy?, self.base.clone()?);
        let mut paths: Vec<Name> = Vec::new();
        for cgroup in cgroups {
            for p in ancestors(cgroup.as_bytes()) {
                if let Some(c) = self.cgroups.iter().find(|c| c.path.as_bytes() == p)
                    && !paths.contains(&c.path)
                {
                    paths.push(c.path.clone());
                }
            }
        }
        (!paths.is_empty()).then_some(Refresh {
            hierarchy,
            base,
            paths,
        })
    }

    /// Puts re-read cgroups in place of their entries (a cgroup that vanished keeps its last
    /// entry). Returns the keys of the records they render to.
    pub fn apply_refresh(&mut self, fresh: Vec<CgroupStats>) -> Vec<String> {
        let mut keys = Vec::new();
        for stats in fresh {
            if let Some(i) = self.cgroups.iter().position(|c| c.path == stats.path) {
                keys.push(stats.path.lossy().into_owned());
                self.cgroups[i] = stats;
            }
        }
        keys
    }
}

impl Refresh {
    /// Reads the cgroups again (blocking; a few small files per cgroup). Warnings are dropped: the
    /// next regular run reports them.
    pub fn read(&self, procfs: &ProcFs) -> Vec<CgroupStats> {
        let mut buf = Vec::with_capacity(4096);
        let mut scratch = CgroupObservation::default();
        let mut reader = Reader {
            procfs,
            buf: &mut buf,
            obs: &mut scratch,
        };
        self.paths
            .iter()
            .filter_map(|p| {
                let dir = join(&self.base, p.as_bytes());
                reader.read_cgroup(self.hierarchy, &dir, p.as_bytes())
            })
            .collect()
    }
}

/// The records of `keys` among `records` (an emission's worth of `cgroup` records).
pub fn select(records: Vec<Record>, keys: &[String]) -> Vec<Record> {
    records
        .into_iter()
        .filter(|r| r.kind == "cgroup" && keys.contains(&r.key))
        .collect()
}

/// Test trees (also used by the store's tests).
#[cfg(test)]
pub(crate) mod fixture {
    use std::{fs, path::Path};

    use crate::{
        collectors::{
            CollectCtx, Collector,
            cgroup::{CgroupCollector, CgroupConfig, CgroupObservation},
        },
        procfs::ProcFs,
    };

    /// A v2 tree under `root`: `/a` and `/a/b` (both with a 64 MiB limit), each with
    /// `oom_kill` = `kills` in `memory.events`.
    pub(crate) fn tree(root: &Path, kills: u64) {
        fs::write(root.join("cgroup.controllers"), "cpu memory\n").expect("write");
        for dir in ["a", "a/b"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).expect("mkdir");
            for (file, text) in [
                ("memory.current", "1048576\n".to_string()),
                ("memory.max", "67108864\n".to_string()),
                ("memory.high", "max\n".to_string()),
                ("memory.stat", "anon 4096\nfile 0\nshmem 0\n".to_string()),
                (
                    "memory.events",
                    format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n"),
                ),
            ] {
                fs::write(d.join(file), text).expect("write");
            }
        }
    }

    /// One run of the collector over `root`.
    pub(crate) fn observe(root: &Path) -> CgroupObservation {
        let procfs = ProcFs::new("/nonexistent");
        let config = CgroupConfig {
            root: root.to_path_buf(),
            ..CgroupConfig::default()
        };
        crate::collectors::observed::<CgroupObservation>(
            CgroupCollector::new(&config).collect(&CollectCtx::once(&procfs)),
        )
        .expect("observation")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{
        fixture::{observe, tree},
        *,
    };

    #[test]
    fn a_refresh_rereads_the_victims_cgroup_and_its_ancestors() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path(), 0);
        let procfs = ProcFs::new("/nonexistent");
        let mut obs = observe(dir.path());
        let kills = |o: &CgroupObservation, p: &str| {
            o.cgroups
                .iter()
                .find(|c| c.path.as_bytes() == p.as_bytes())
                .and_then(|c| c.events.oom_kill)
        };
        assert_eq!(kills(&obs, "/a/b"), Some(0));

        // The kill: both counters move (v2 counts it in every ancestor).
        tree(dir.path(), 1);
        let refresh = obs
            .refresh_for(&Name::from("/a/b"))
            .expect("a refresh for a walked cgroup");
        assert_eq!(
            refresh.paths,
            [Name::from("/a/b"), Name::from("/a"), Name::from("/")]
        );
        let fresh = refresh.read(&procfs);
        assert_eq!(fresh.len(), 3, "{fresh:?}");
        let keys = obs.apply_refresh(fresh);
        assert_eq!(keys, ["/a/b", "/a", "/"]);
        assert_eq!(kills(&obs, "/a/b"), Some(1));
        assert_eq!(kills(&obs, "/a"), Some(1));

        let mut records = Vec::new();
        obs.records_with(None, &mut records);
        let sent = select(records, &keys);
        assert!(
            sent.iter()
                .any(|r| r.key == "/a/b" && r.body.contains("\"oom_kill\":1")),
            "{sent:?}"
        );

        // A cgroup the run never walked: only its walked ancestors (here the root); an
        // observation without a hierarchy: nothing.
        assert_eq!(
            obs.refresh_for(&Name::from("/elsewhere/x"))
                .map(|r| r.paths),
            Some(vec![Name::from("/")])
        );
        assert!(
            CgroupObservation::default()
                .refresh_for(&Name::from("/a"))
                .is_none()
        );
    }

    /// The calling thread's id, from `/proc/thread-self` (`PID/task/TID`).
    fn gettid() -> u32 {
        let link = fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
        link.file_name()
            .and_then(|n| n.to_str()?.parse().ok())
            .unwrap_or_else(|| panic!("thread-self: {}", link.display()))
    }

    #[test]
    fn the_victim_task_maps_to_its_process() {
        // This test's own threads: a thread's status names the process.
        let me = std::process::id();
        let tid = std::thread::spawn(gettid).join().expect("thread");
        // The thread has exited: its id no longer resolves and is taken as it is.
        let procfs = ProcFs::new("/proc");
        assert_eq!(victim_process(&procfs, me), me);
        assert_eq!(victim_process(&procfs, tid), tid);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = tx.send(gettid());
            let _ = stop_rx.recv();
        });
        let live = rx.recv().expect("tid");
        assert_ne!(live, me);
        assert_eq!(victim_process(&procfs, live), me);
        drop(stop_tx);
        t.join().expect("join");
    }
}
