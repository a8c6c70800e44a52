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
