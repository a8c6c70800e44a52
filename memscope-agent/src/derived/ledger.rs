//! The **shared-memory ledger** (`shmem_ledger` record). It puts meminfo `Shmem` (resident shmem/tmpfs pages) next to what explains it:
//!
//! - `tmpfs_bytes`: allocated bytes of every reachable tmpfs superblock (statvfs), split into
//!   `tmpfs_mapped_bytes` (PSS of tmpfs file objects in smaps: resident pages some process maps,
//!   each counted once) and `tmpfs_unmapped_bytes` (the rest: files no process maps);
//! - `sysv_bytes`: resident bytes of SysV segments (`/proc/sysvipc/shm` rss; PSS of their smaps
//!   objects on kernels without that column);
//! - `memfd_bytes`: per memfd inode, the larger of its fd-held allocation (fstat) and its mapped PSS;
//! - `shared_anon_bytes`: PSS of shared anonymous mappings;
//!
//! and `unexplained_bytes = shmem_bytes - explained_bytes` (signed). A tmpfs file that is also mapped
//! is counted once, in `tmpfs_bytes`. Allocated tmpfs/memfd bytes include pages swapped out, which
//! `Shmem` does not: with swap in use the remainder can be negative. `sources` says which
//! collectors contributed; a missing one leaves its part at zero.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::collectors::{
    Observation,
    smaps::{ObjectKey, ObjectKind, ObjectsObservation},
    sysv::SysvObservation,
    tmpfs::TmpfsObservation,
};

/// What the tmpfs collector contributes to the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmpfsInputs {
    /// Allocated bytes over reachable tmpfs superblocks.
    pub allocated_bytes: u64,
    /// Memfds held by file descriptors: (inode, allocated bytes).
    pub memfds: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Ledger {
    pub shmem_bytes: u64,
    pub tmpfs_bytes: u64,
    pub tmpfs_mapped_bytes: u64,
    pub tmpfs_unmapped_bytes: u64,
    pub sysv_bytes: u64,
    pub memfd_bytes: u64,
    pub shared_anon_bytes: u64,
    pub explained_bytes: u64,
    pub unexplained_bytes: i64,
    pub sources: BTreeMap<&'static str, bool>,
}

/// Computes the ledger. `None` without meminfo (nothing to reconcile against).
pub fn ledger(
    shmem: Option<u64>,
    tmpfs: Option<&TmpfsInputs>,
    sysv: Option<&SysvObservation>,
    objects: Option<&ObjectsObservation>,
) -> Option<Ledger> {
    let shmem_bytes = shmem?;
    let pss_of = |kind: ObjectKind| -> u64 {
        objects.map_or(0, |o| o.of_kind(kind).map(|x| x.memory.pss_bytes).sum())
    };
    let tmpfs_mapped_bytes = pss_of(ObjectKind::Tmpfs);
    let tmpfs_bytes = tmpfs.map_or(0, |t| t.allocated_bytes);
    let sysv_bytes = match sysv.and_then(SysvObservation::resident_bytes) {
        Some(rss) => rss,
        None => pss_of(ObjectKind::Sysv),
    };
    // Memfds: union by inode of the fd-held allocation and the mapped PSS.
    let mut memfds: HashMap<u64, u64> = HashMap::new();
    if let Some(o) = objects {
        for m in o.of_kind(ObjectKind::Memfd) {
            if let ObjectKey::Inode { inode, .. } = m.key {
                let e = memfds.entry(inode).or_default();
                *e = (*e).max(m.memory.pss_bytes);
            }
        }
    }
    if let Some(t) = tmpfs {
        for &(inode, allocated) in &t.memfds {
            let e = memfds.entry(inode).or_default();
            *e = (*e).max(allocated);
        }
    }
    let memfd_bytes = memfds.values().sum();
    let shared_anon_bytes = pss_of(ObjectKind::SharedAnon);
    let explained_bytes = tmpfs_bytes + sysv_bytes + memfd_bytes + shared_anon_bytes;
    Some(Ledger {
        shmem_bytes,
        tmpfs_bytes,
        tmpfs_mapped_bytes,
        tmpfs_unmapped_bytes: tmpfs_bytes.saturating_sub(tmpfs_mapped_bytes),
        sysv_bytes,
        memfd_bytes,
        shared_anon_bytes,
        explained_bytes,
        unexplained_bytes: shmem_bytes as i64 - explained_bytes as i64,
        sources: [
            ("tmpfs", tmpfs.is_some()),
            ("sysv", sysv.is_some()),
            ("smaps", objects.is_some()),
        ]
        .into_iter()
        .collect(),
    })
}

/// The tmpfs collector's part of the ledger, if `obs` is its observation.
pub fn tmpfs_inputs(obs: &dyn Observation) -> Option<TmpfsInputs> {
    let t = obs.downcast_ref::<TmpfsObservation>()?;
    Some(TmpfsInputs {
        allocated_bytes: t.measured_allocated_bytes(),
        memfds: t.memfd_allocations(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collectors::smaps::{ObjectMemory, SharedObject},
        procfs::{escape::Name, sysvipc::ShmSegment},
    };

    fn object(key: ObjectKey, pss: u64) -> SharedObject {
        SharedObject {
            key,
            label: Name::from("x"),
            deleted: false,
            memory: ObjectMemory {
                pss_bytes: pss,
                rss_bytes: pss,
                ..ObjectMemory::default()
            },
            mappers: 1,
            mappings: 1,
            consumers: Vec::new(),
        }
    }

    fn inode(kind: ObjectKind, inode: u64) -> ObjectKey {
        ObjectKey::Inode {
            kind,
            dev: crate::procfs::Dev { major: 0, minor: 1 },
            inode,
        }
    }

    #[test]
    fn ledger_explains_shmem_without_double_counting() {
        let objects = ObjectsObservation {
            objects: vec![
                object(inode(ObjectKind::Tmpfs, 10), 300),
                object(inode(ObjectKind::Memfd, 20), 200),
                object(inode(ObjectKind::Memfd, 21), 50),
                object(inode(ObjectKind::SharedAnon, 30), 70),
                object(ObjectKey::Sysv { shmid: 4 }, 999),
                object(ObjectKey::Kind(ObjectKind::Heap), 5000),
            ],
            ..ObjectsObservation::default()
        };
        let sysv = SysvObservation {
            segments: vec![crate::collectors::sysv::Segment {
                shm: ShmSegment {
                    shmid: 4,
                    size: 1000,
                    rss: Some(1000),
                    ..ShmSegment::default()
                },
                owner: None,
            }],
        };
        let tmpfs = TmpfsInputs {
            allocated_bytes: 1000,
            // memfd 20 is held by an fd with 400 allocated (more than its 200 mapped); 22 only by fd.
            memfds: vec![(20, 400), (22, 30)],
        };
        let l = ledger(Some(3000), Some(&tmpfs), Some(&sysv), Some(&objects)).expect("ledger");
        assert_eq!(l.tmpfs_bytes, 1000);
        assert_eq!(l.tmpfs_mapped_bytes, 300);
        assert_eq!(l.tmpfs_unmapped_bytes, 700);
        assert_eq!(l.sysv_bytes, 1000, "segment rss, not the smaps PSS as well");
        assert_eq!(l.memfd_bytes, 400 + 50 + 30);
        assert_eq!(l.shared_anon_bytes, 70);
        assert_eq!(l.explained_bytes, 1000 + 1000 + 480 + 70);
        assert_eq!(l.unexplained_bytes, 3000 - 2550);
    }

    #[test]
    fn ledger_needs_meminfo_and_reports_missing_sources() {
        assert!(ledger(None, None, None, None).is_none());
        let l = ledger(Some(100), None, None, None).expect("ledger");
        assert_eq!(l.unexplained_bytes, 100);
        assert!(!l.sources["tmpfs"]);
    }
}
