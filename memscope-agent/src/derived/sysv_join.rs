//! The SysV join: a segment of `/proc/sysvipc/shm` and the `/SYSV…` smaps object that maps it are
//! one `sysv` record (the object's sharing under `mapped`), not a `sysv` and an `object` record.

use std::collections::HashSet;

use crate::{
    collectors::{
        smaps::{ObjectKey, ObjectKind, ObjectsObservation, SharedObject},
        sysv::SysvObservation,
    },
    records::Record,
};

/// The segments of one emission, and the smaps objects to join with them.
pub struct SysvJoin<'a> {
    /// Shmids of the segments the sysv collector saw.
    joined: HashSet<u64>,
    objects: Option<&'a ObjectsObservation>,
}

impl<'a> SysvJoin<'a> {
    pub fn new(sysv: Option<&SysvObservation>, objects: Option<&'a ObjectsObservation>) -> Self {
        SysvJoin {
            joined: sysv
                .map(|s| s.segments.iter().map(|seg| seg.shm.shmid).collect())
                .unwrap_or_default(),
            objects,
        }
    }

    /// Whether `object` is rendered inside its segment's `sysv` record (so not as an `object`).
    pub fn is_joined(&self, object: &SharedObject) -> bool {
        matches!(object.key, ObjectKey::Sysv { shmid } if self.joined.contains(&shmid))
    }

    /// One `sysv` record per segment, with its smaps object joined in when there is one.
    pub fn segment_records(&self, sysv: &SysvObservation, out: &mut Vec<Record>) {
        let top = self.objects.map_or(0, |o| o.top_consumers);
        for seg in &sysv.segments {
            let object = self.objects.and_then(|o| {
                o.of_kind(ObjectKind::Sysv).find(|x| {
                    x.key
                        == ObjectKey::Sysv {
                            shmid: seg.shm.shmid,
                        }
                })
            });
            out.push(seg.record(object, top));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collectors::{smaps::ObjectMemory, sysv::Segment},
        procfs::{escape::Name, sysvipc::ShmSegment},
    };

    fn sysv_object(shmid: u64, pss: u64) -> std::sync::Arc<SharedObject> {
        std::sync::Arc::new(SharedObject {
            key: ObjectKey::Sysv { shmid },
            label: Name::from("SYSV00000001"),
            deleted: true,
            hugetlb: false,
            hugetlb_bytes: 0,
            memory: ObjectMemory {
                pss_bytes: pss,
                ..ObjectMemory::default()
            },
            mappers: 1,
            derived_mappers: 0,
            mappings: 1,
            consumers: Vec::new(),
            shares: Vec::new(),
            changed_in: 0,
        })
    }

    #[test]
    fn a_segment_and_its_object_are_one_record() {
        let sysv = SysvObservation {
            segments: vec![Segment {
                shm: ShmSegment {
                    shmid: 4,
                    size: 8192,
                    ..ShmSegment::default()
                },
                owner: None,
            }],
        };
        let objects = ObjectsObservation {
            objects: vec![sysv_object(4, 4096), sysv_object(9, 512)],
            ..ObjectsObservation::default()
        };
        let join = SysvJoin::new(Some(&sysv), Some(&objects));
        assert!(join.is_joined(&objects.objects[0]));
        assert!(
            !join.is_joined(&objects.objects[1]),
            "an object without a segment stays an object"
        );
        let mut out = Vec::new();
        join.segment_records(&sysv, &mut out);
        assert_eq!(out.len(), 1);
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", out[0].body)).expect("json");
        assert_eq!(v["shmid"], 4);
        assert_eq!(v["mapped"]["pss_bytes"], 4096);

        let alone = SysvJoin::new(Some(&sysv), None);
        let mut out = Vec::new();
        alone.segment_records(&sysv, &mut out);
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", out[0].body)).expect("json");
        assert!(v["mapped"].is_null(), "no smaps collector: nothing joined");
    }
}
