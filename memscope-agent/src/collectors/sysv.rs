//! `sysv`: every SysV shared memory segment from `/proc/sysvipc/shm`.
//!
//! One `sysv` record per segment: key, shmid, owner, perms (octal), size, resident, swapped,
//! attaches, marked-for-destroy. When the `smaps` collector also runs, the segment's smaps object
//! (the `/SYSV…` mappings, matched by shmid) is joined into the same record as `mapped` (PSS, RSS,
//! mappers, top consumers) and no separate `object` record is sent: one object, not two.

use serde::Serialize;

use super::{
    BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation, Toggle, UserNames,
    smaps::{SharedObject, Sharing},
};
use crate::{
    procfs::{
        FileClass, page_size,
        sysvipc::{ShmSegment, parse_sysvipc_shm},
    },
    records::Record,
};

/// The `sysv` collector.
pub struct Sysv;

impl CollectorDef for Sysv {
    const NAME: &'static str = "sysv";
    type Config = Toggle;
    fn build(_: &Toggle, _: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(SysvCollector::default())
    }
}

#[derive(Default)]
pub struct SysvCollector {
    buf: Vec<u8>,
    users: UserNames,
}

#[derive(Debug, Clone, Default)]
pub struct SysvObservation {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub shm: ShmSegment,
    pub owner: Option<String>,
}

impl Segment {
    /// A `SHM_HUGETLB` segment: its mappings are hugetlb, or the kernel's `rss` is more than a
    /// shmem segment of its size can hold (this kernel counts a hugetlb segment's base pages once
    /// more per base page of a huge page: 2 GiB for a 4 MiB segment). `/proc/sysvipc/shm` itself
    /// does not say, so an unmapped hugetlb segment that was never touched is not recognised.
    pub fn hugetlb(&self, object: Option<&SharedObject>) -> bool {
        object.is_some_and(|o| o.hugetlb)
            || self
                .shm
                .rss
                .is_some_and(|rss| rss > self.shm.size.next_multiple_of(page_size()))
    }

    /// Resident bytes: the kernel's `rss` column for a shmem segment; for a hugetlb segment the
    /// resident hugetlb pages of its mappings (`None` when unmapped: the column is wrong for it).
    pub fn resident_bytes(&self, object: Option<&SharedObject>) -> Option<u64> {
        if self.hugetlb(object) {
            object.map(|o| o.hugetlb_bytes)
        } else {
            self.shm.rss
        }
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct SegmentBody<'a> {
    shmid: u64,
    /// The key as the kernel prints it (signed), and in the hex form `ipcs` uses.
    key: i32,
    key_hex: String,
    uid: u32,
    owner: Option<&'a str>,
    gid: u32,
    perms: String,
    size_bytes: u64,
    /// `SHM_HUGETLB`: its pages are hugetlb, and `resident_bytes` comes from its mappings.
    hugetlb: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapped_bytes: Option<u64>,
    attaches: u64,
    marked_for_destroy: bool,
    locked: bool,
    creator_pid: u32,
    last_pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    mapped: Option<Sharing<'a>>,
}

impl Segment {
    /// The `sysv` record, with the smaps object of the segment joined in when given.
    pub fn record(&self, object: Option<&SharedObject>, top_consumers: usize) -> Record {
        let s = &self.shm;
        let mapped = object.map(|o| o.sharing(top_consumers));
        Record::new(
            "sysv",
            s.shmid.to_string(),
            &SegmentBody {
                shmid: s.shmid,
                key: s.key,
                key_hex: format!("0x{:08x}", s.key as u32),
                uid: s.uid,
                owner: self.owner.as_deref(),
                gid: s.gid,
                perms: format!("{:o}", s.perms & 0o777),
                size_bytes: s.size,
                hugetlb: self.hugetlb(object),
                resident_bytes: self.resident_bytes(object),
                swapped_bytes: s.swap,
                attaches: s.nattch,
                marked_for_destroy: s.marked_for_destroy(),
                locked: s.locked(),
                creator_pid: s.cpid,
                last_pid: s.lpid,
                mapped,
            },
        )
    }
}

impl Observation for SysvObservation {
    fn records(&self, out: &mut Vec<Record>) {
        out.extend(self.segments.iter().map(|s| s.record(None, 0)));
    }
}

impl Collector for SysvCollector {
    fn name(&self) -> &'static str {
        Sysv::NAME
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let path = ctx.procfs.path("sysvipc/shm");
        let segments =
            ctx.procfs
                .read_parsed(&path, FileClass::SYSVIPC, &mut self.buf, parse_sysvipc_shm)?;
        let segments = segments
            .into_iter()
            .map(|shm| {
                let owner = self.users.get(shm.uid);
                Segment { shm, owner }
            })
            .collect();
        Ok(Some(Box::new(SysvObservation { segments })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcFs;

    #[test]
    fn segments_from_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sysvipc")).expect("mkdir");
        std::fs::write(
            dir.path().join("sysvipc/shm"),
            "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   5678          3  1600               1048576   100   101      2     0     0     0     0          0          0 1700000000               1048576                     0\n",
        )
        .expect("write");
        let procfs = ProcFs::new(dir.path());
        let obs = crate::collectors::observed::<SysvObservation>(
            SysvCollector::default().collect(&CollectCtx::once(&procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"));
        assert_eq!(obs.segments[0].resident_bytes(None), Some(1 << 20));
        assert!(!obs.segments[0].hugetlb(None));
        let mut recs = Vec::new();
        obs.records(&mut recs);
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", recs[0].body)).expect("json");
        assert_eq!(v["shmid"], 3);
        assert_eq!(v["key_hex"], "0x0000162e");
        assert_eq!(v["perms"], "600");
        assert_eq!(v["marked_for_destroy"], true);
        assert_eq!(v["attaches"], 2);
        assert_eq!(v["owner"], "root");
        assert!(v.get("mapped").is_none());
    }
}
