//! The `smaps` collector's observation and its `object` records: one row per object with a row of
//! its own, one `other` row per kind for the rest.

use std::{collections::HashSet, sync::Arc};

use serde::Serialize;

use super::object::{Consumer, ObjectKey, ObjectKind, ObjectMemory, SharedObject};
use crate::{
    collectors::{
        Observation,
        cgroup::{CgroupShare, PidCgroups},
    },
    ladder::TierStats,
    procfs::{Dev, escape::Name},
    records::Record,
};

/// The `object` record body.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ObjectBody<'a> {
    id: String,
    object_kind: ObjectKind,
    label: &'a Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<Dev>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shmid: Option<u64>,
    deleted: bool,
    #[serde(flatten)]
    sharing: Sharing<'a>,
}

/// How an object is shared: its memory, its mappers and the top consumers (in `object` records,
/// and as `mapped` in `sysv` records).
#[derive(Serialize, schemars::JsonSchema)]
pub struct Sharing<'a> {
    /// A hugetlb object; its pages are in `hugetlb_bytes`, not in PSS/RSS.
    pub hugetlb: bool,
    /// Resident hugetlb pages, counted once (see [`SharedObject::hugetlb_bytes`]).
    pub hugetlb_bytes: u64,
    #[serde(flatten)]
    pub memory: &'a ObjectMemory,
    pub mappers: u32,
    /// Mappers whose figures of the object are derived by arithmetic after another mapper joined
    /// or left, not read (absent: none); each is flagged in `top`.
    #[serde(skip_serializing_if = "crate::records::is_zero")]
    pub derived_mappers: u32,
    pub mappings: u32,
    pub top: &'a [Consumer],
    /// The cgroups of the mappers, largest PSS first (object records, when processes know their
    /// cgroups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_cgroups: Option<Vec<CgroupShare<'a>>>,
}

impl SharedObject {
    /// The object's sharing with its `top_consumers` largest consumers.
    pub fn sharing(&self, top_consumers: usize) -> Sharing<'_> {
        Sharing {
            hugetlb: self.hugetlb,
            hugetlb_bytes: self.hugetlb_bytes,
            memory: &self.memory,
            mappers: self.mappers,
            derived_mappers: self.derived_mappers,
            mappings: self.mappings,
            top: &self.consumers[..self.consumers.len().min(top_consumers)],
            top_cgroups: None,
        }
    }
}

/// The `other` row of one kind: objects below the PSS floor, folded.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct OtherBody {
    id: String,
    object_kind: ObjectKind,
    label: String,
    /// Objects folded into this row.
    objects: u64,
    #[serde(flatten)]
    memory: ObjectMemory,
}

#[derive(Debug, Clone, Default)]
pub struct ObjectsObservation {
    /// Every object, largest PSS first (shared with the collector: an object no mapper of which
    /// changed is the same as in the last run, not a copy).
    pub objects: Vec<Arc<SharedObject>>,
    /// This run's number (the collector's first run is 1; 0: not made by a run).
    pub generation: u64,
    /// Objects below this PSS are folded into `other` rows in the records.
    pub min_object_pss: u64,
    /// The objects given a row of their own, when the collector chose them with hysteresis (see
    /// [`super::SmapsCollector`]); `None`: every object at or above `min_object_pss`.
    pub own_rows: Option<HashSet<ObjectKey>>,
    /// Consumers listed per object in the records.
    pub top_consumers: usize,
    /// Processes whose smaps was read this run, and those reused from an earlier read.
    pub processes_read: u32,
    pub processes_reused: u32,
    /// Per-process figures of objects derived by arithmetic this run (another mapper joined or
    /// left; see [`super::sharing`]), instead of re-reading those processes.
    pub derived_shares: u32,
    pub vanished: u32,
    /// Processes whose smaps was denied this run.
    pub inaccessible: u32,
    /// Processes whose smaps is unreadable as of this run (denied at their last read): their
    /// objects are missing.
    pub unreadable: u32,
    pub errors: Vec<String>,
    /// The `smaps` tier's statistics after this run.
    pub tier: TierStats,
}

impl ObjectsObservation {
    /// Objects of one kind.
    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = &SharedObject> {
        self.objects
            .iter()
            .map(|o| &**o)
            .filter(move |o| o.key.kind() == kind)
    }

    /// The record body of one object, with its top cgroups when `cgroups` is given.
    pub fn object_record(&self, o: &SharedObject, cgroups: Option<&PidCgroups<'_>>) -> Record {
        let (dev, inode, shmid) = match &o.key {
            ObjectKey::Inode { dev, inode, .. } => (Some(*dev), Some(*inode), None),
            ObjectKey::Sysv { shmid } => (None, None, Some(*shmid)),
            _ => (None, None, None),
        };
        let id = o.key.id();
        Record::new(
            "object",
            id.clone(),
            &ObjectBody {
                id,
                object_kind: o.key.kind(),
                label: &o.label,
                dev,
                inode,
                shmid,
                deleted: o.deleted,
                sharing: Sharing {
                    top_cgroups: cgroups.map(|c| {
                        c.top(
                            o.shares.iter().map(|x| (x.pid, x.pss_bytes, x.rss_bytes)),
                            self.top_consumers,
                        )
                    }),
                    ..o.sharing(self.top_consumers)
                },
            },
        )
    }

    /// Records for every object except those `skip` selects (the SysV ones are joined elsewhere);
    /// with `cgroups`, each lists its top cgroups.
    pub fn records_except(
        &self,
        out: &mut Vec<Record>,
        skip: impl Fn(&SharedObject) -> bool,
        cgroups: Option<&PidCgroups<'_>>,
    ) {
        self.records_since_except(None, out, &mut Vec::new(), skip, &|| cgroups);
    }

    /// [`Self::records_except`], leaving out the objects with a row of their own that did not
    /// change since run `since` of the collector (their record would be the same as then, with
    /// the same `cgroups`, as the caller knows): only their (kind, key) go to `unchanged`. Objects
    /// of the same row then and now: an object's row moves only when its weight does.
    /// `cgroups` is asked only when a record is made.
    pub fn records_since_except<'c>(
        &self,
        since: Option<u64>,
        out: &mut Vec<Record>,
        unchanged: &mut Vec<(&'static str, String)>,
        skip: impl Fn(&SharedObject) -> bool,
        cgroups: &dyn Fn() -> Option<&'c PidCgroups<'c>>,
    ) {
        let mut others: Vec<(ObjectKind, u64, ObjectMemory)> = Vec::new();
        for o in self.objects.iter().map(|o| &**o).filter(|o| !skip(o)) {
            let own_row = match &self.own_rows {
                Some(rows) => rows.contains(&o.key),
                None => o.weight() >= self.min_object_pss,
            };
            if own_row || o.key.kind() == ObjectKind::Sysv {
                // A `since` beyond this run is not a run of this collector.
                let same = since.is_some_and(|since| {
                    since <= self.generation && o.changed_in > 0 && o.changed_in <= since
                });
                if same && o.key.kind() != ObjectKind::Sysv {
                    unchanged.push(("object", o.key.id()));
                } else {
                    out.push(self.object_record(o, cgroups()));
                }
            } else {
                let kind = o.key.kind();
                match others.iter_mut().find(|(k, _, _)| *k == kind) {
                    Some((_, n, m)) => {
                        *n += 1;
                        m.add(&o.memory);
                    }
                    None => others.push((kind, 1, o.memory)),
                }
            }
        }
        others.sort_by_key(|(k, _, _)| *k);
        for (kind, objects, memory) in others {
            let id = format!("other:{}", kind.as_str());
            out.push(Record::new(
                "object",
                id.clone(),
                &OtherBody {
                    id,
                    object_kind: kind,
                    label: format!("other {} objects", kind.as_str()),
                    objects,
                    memory,
                },
            ));
        }
    }
}

impl Observation for ObjectsObservation {
    fn records(&self, out: &mut Vec<Record>) {
        self.records_except(out, |_| false, None);
    }

    /// `None` for an observation not made by a run (a test's, a fixture's).
    fn generation(&self) -> Option<u64> {
        (self.generation > 0).then_some(self.generation)
    }

    fn warnings(&self, out: &mut Vec<String>) {
        if self.inaccessible > 0 {
            out.push(format!(
                "smaps: {} process(es) inaccessible (permission denied); their objects are missing",
                self.inaccessible
            ));
        }
        out.extend(self.errors.iter().map(|e| format!("smaps: {e}")));
    }

    fn tier(&self) -> Option<(&'static str, &TierStats)> {
        Some(("smaps", &self.tier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::smaps::{
        fold::{fold_shared, tests::SMAPS, tests::proc_objects},
        object::ObjectNames,
    };

    #[test]
    fn small_objects_fold_into_other_rows() {
        let mut names = ObjectNames::default();
        let a = proc_objects(&mut names, 10, "a", SMAPS);
        let obs = ObjectsObservation {
            objects: fold_shared([&a], &names, 1),
            min_object_pss: 600 * 1024,
            top_consumers: 1,
            ..ObjectsObservation::default()
        };
        let mut recs = Vec::new();
        obs.records(&mut recs);
        let ids: Vec<&str> = recs.iter().map(|r| r.key.as_str()).collect();
        // memfd 1024k, sysv (always), others below 600k are folded per kind.
        assert!(ids.contains(&"memfd:0:1:77"));
        assert!(ids.contains(&"sysv:5"));
        assert!(ids.contains(&"other:file"));
        assert!(ids.contains(&"other:heap"));
        assert!(!ids.contains(&"heap"));
        let total: u64 = recs
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_str(&format!("{{{}}}", r.body)).expect("json");
                v["pss_bytes"].as_u64().expect("pss")
            })
            .sum();
        let want: u64 = obs.objects.iter().map(|o| o.memory.pss_bytes).sum();
        assert_eq!(total, want, "folding keeps the sum");
    }
}
