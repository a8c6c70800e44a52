//! The **shared-memory ledgers**, derived at emission time from several collectors.
//!
//! `shmem_ledger` puts meminfo `Shmem` (resident shmem/tmpfs pages) next to what explains it:
//!
//! - `tmpfs_bytes`: allocated bytes of every reachable tmpfs superblock (statvfs), in every mount
//!   namespace the agent could read (containers' own `/dev/shm` included), split into
//!   `tmpfs_mapped_bytes` (PSS of tmpfs file objects in smaps without the copy-on-write anonymous
//!   pages of private mappings: the file's own pages some process maps, each counted once) and
//!   `tmpfs_unmapped_bytes` (the rest: files no process maps);
//! - `devtmpfs_bytes`: allocated bytes of the devtmpfs superblock (`/dev`; shmem too, so its pages
//!   count in `Shmem`; device nodes hold none, regular files written under `/dev` do);
//! - `sysv_bytes`: resident bytes of SysV segments that are not hugetlb (`/proc/sysvipc/shm` rss;
//!   PSS of their smaps objects on kernels without that column);
//! - `memfd_bytes`: per memfd `(dev, inode)` that is not hugetlb, the larger of its fd-held
//!   allocation (fstat) and its mapped PSS (without copy-on-write pages);
//! - `shared_anon_bytes`: PSS of shared anonymous mappings;
//! - `unreadable_shmem_bytes`: `RssShmem` (from `status`) of processes whose `smaps_rollup` is
//!   unreadable: shmem they map that the ledger cannot see otherwise. An upper bound: it is not
//!   proportional, and may hold pages counted above too;
//!
//! and `unexplained_bytes = shmem_bytes - explained_bytes` (signed). A tmpfs file that is also mapped
//! is counted once, in `tmpfs_bytes`. Allocated tmpfs/memfd bytes include pages swapped out, which
//! `Shmem` does not: with swap in use the remainder can be negative.
//!
//! Hugetlb pages are never `Shmem`: `hugetlb_ledger` sets them against meminfo's pool instead
//! (`pool_bytes` = `Hugetlb`, `used_bytes` = pool minus `HugePages_Free`), explained by hugetlb SysV
//! segments (resident from their mappings), hugetlb memfds, hugetlbfs files and `MAP_HUGETLB`
//! anonymous memory.
//!
//! Both say whether they are `complete`, and if not, why (`incomplete`): a collector that did not
//! contribute (`sources`), processes whose smaps could not be read, tmpfs mounts that could not be
//! measured, descriptors the fd scan could not read.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    collectors::{
        cgroup::CgroupObservation,
        meminfo::MeminfoObservation,
        processes::{Numbers, ProcessesObservation},
        smaps::{ObjectKey, ObjectKind, ObjectsObservation, SharedObject},
        sysv::SysvObservation,
        tmpfs::TmpfsObservation,
    },
    procfs::Dev,
};

/// The latest observations the ledgers are computed from; `None` where a collector is off or has
/// not run yet.
#[derive(Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub meminfo: Option<&'a MeminfoObservation>,
    pub processes: Option<&'a ProcessesObservation>,
    pub objects: Option<&'a ObjectsObservation>,
    pub sysv: Option<&'a SysvObservation>,
    pub tmpfs: Option<&'a TmpfsObservation>,
    pub cgroups: Option<&'a CgroupObservation>,
}

/// The `shmem_ledger` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Ledger {
    pub shmem_bytes: u64,
    pub tmpfs_bytes: u64,
    pub tmpfs_mapped_bytes: u64,
    pub tmpfs_unmapped_bytes: u64,
    pub devtmpfs_bytes: u64,
    pub sysv_bytes: u64,
    pub memfd_bytes: u64,
    pub shared_anon_bytes: u64,
    pub unreadable_shmem_bytes: u64,
    /// The part of the remainder that memory cgroups holding only unreadable processes are
    /// charged for beyond what those processes map (see [`unreadable_held`]).
    pub unreadable_held_bytes: u64,
    pub explained_bytes: u64,
    pub unexplained_bytes: i64,
    /// Everything was seen: every source present, every process and mount readable.
    pub complete: bool,
    /// Why not, one line per reason (empty when complete).
    pub incomplete: Vec<String>,
    pub sources: BTreeMap<&'static str, bool>,
}

/// The `hugetlb_ledger` record: hugetlb pages in use against what explains them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct HugetlbLedger {
    /// meminfo `Hugetlb`: the pools of every huge page size.
    pub pool_bytes: u64,
    /// meminfo `HugePages_Free` (default huge page size only).
    pub free_bytes: u64,
    /// `pool_bytes - free_bytes`: pages handed out.
    pub used_bytes: u64,
    pub sysv_bytes: u64,
    pub memfd_bytes: u64,
    /// hugetlbfs files and shared anonymous hugetlb mappings.
    pub file_bytes: u64,
    /// Private `MAP_HUGETLB` memory.
    pub anon_bytes: u64,
    pub explained_bytes: u64,
    pub unexplained_bytes: i64,
    pub complete: bool,
    pub incomplete: Vec<String>,
}

/// Why a ledger is partial: shared by both ledgers. Unmeasured tmpfs mounts matter to the `Shmem`
/// ledger only (`tmpfs_mounts`).
fn incomplete_reasons(i: &Inputs<'_>, tmpfs_mounts: bool) -> Vec<String> {
    let mut why = Vec::new();
    for (present, name, what) in [
        (i.objects.is_some(), "smaps", "mapped objects"),
        (i.sysv.is_some(), "sysv", "SysV segments"),
        (
            i.tmpfs.is_some(),
            "tmpfs",
            "tmpfs allocations and fd-held memfds",
        ),
    ] {
        if !present {
            why.push(format!(
                "{name}: no observation (collector off or failed): {what} not counted"
            ));
        }
    }
    if let Some(o) = i.objects {
        if o.unreadable > 0 {
            why.push(format!(
                "smaps: {} process(es) unreadable (permission denied): their mappings are not seen",
                o.unreadable
            ));
        }
        if !o.errors.is_empty() {
            why.push(format!(
                "smaps: {} process(es) failed to read",
                o.errors.len()
            ));
        }
    }
    if let Some(p) = i.processes {
        let inaccessible = p
            .processes
            .iter()
            .filter(|p| p.numbers == Numbers::Inaccessible)
            .count();
        if inaccessible > 0 {
            why.push(format!(
                "processes: {inaccessible} process(es) with neither smaps_rollup nor status readable"
            ));
        }
    }
    if let Some(t) = i.tmpfs {
        if tmpfs_mounts {
            for m in t.unmeasured() {
                let cause = m.error.as_deref().unwrap_or("hidden under another mount");
                why.push(format!("tmpfs {}: not measured ({cause})", m.dev));
            }
        }
        if tmpfs_mounts && t.namespaces_unread.denied > 0 {
            why.push(format!(
                "tmpfs: {} process(es) whose mount namespace is unreadable (permission denied): \
                 tmpfs mounts only there are not seen",
                t.namespaces_unread.denied
            ));
        }
        if tmpfs_mounts && t.namespaces_unread.skipped > 0 {
            why.push(format!(
                "tmpfs: {} mount namespace(s) beyond max_mount_namespaces not read",
                t.namespaces_unread.skipped
            ));
        }
        if let Some(scan) = t.fd_scan
            && scan.denied > 0
        {
            why.push(format!(
                "tmpfs fd scan: {} process(es) with unreadable descriptors: memfds they hold are not seen",
                scan.denied
            ));
        }
    }
    why
}

/// Per memfd `(dev, inode)`: the larger of its mapped size and its fd-held allocation, and whether it
/// is hugetlb. Two memfds with one inode on different devices (shm and hugetlbfs number their
/// inodes independently) stay two.
fn memfds(i: &Inputs<'_>) -> HashMap<(Dev, u64), (u64, bool)> {
    let mut memfds: HashMap<(Dev, u64), (u64, bool)> = HashMap::new();
    if let Some(o) = i.objects {
        for m in o.of_kind(ObjectKind::Memfd) {
            if let ObjectKey::Inode { dev, inode, .. } = m.key {
                let bytes = if m.hugetlb {
                    m.hugetlb_bytes
                } else {
                    m.memory.own_pss_bytes()
                };
                let e = memfds.entry((dev, inode)).or_default();
                *e = (e.0.max(bytes), e.1 || m.hugetlb);
            }
        }
    }
    if let Some(t) = i.tmpfs {
        for f in &t.memfds {
            let e = memfds.entry((f.dev, f.inode)).or_default();
            *e = (e.0.max(f.allocated_bytes), e.1 || f.hugetlb);
        }
    }
    memfds
}

/// SysV bytes `(shmem, hugetlb)`: per segment of the sysv collector (joined with its smaps object),
/// else per smaps SysV object.
fn sysv_bytes(i: &Inputs<'_>) -> (u64, u64) {
    let object = |shmid: u64| {
        i.objects.and_then(|o| {
            o.of_kind(ObjectKind::Sysv)
                .find(|x| x.key == ObjectKey::Sysv { shmid })
        })
    };
    let (mut shmem, mut hugetlb) = (0, 0);
    match i.sysv {
        Some(s) => {
            for seg in &s.segments {
                let obj = object(seg.shm.shmid);
                if seg.hugetlb(obj) {
                    hugetlb += seg.resident_bytes(obj).unwrap_or(0);
                } else {
                    // Kernels without the rss column: the PSS of its mappings.
                    shmem += seg
                        .shm
                        .rss
                        .or(obj.map(|o| o.memory.own_pss_bytes()))
                        .unwrap_or(0);
                }
            }
        }
        None => {
            for o in i.objects.iter().flat_map(|o| o.of_kind(ObjectKind::Sysv)) {
                if o.hugetlb {
                    hugetlb += o.hugetlb_bytes;
                } else {
                    shmem += o.memory.own_pss_bytes();
                }
            }
        }
    }
    (shmem, hugetlb)
}

/// Shmem that memory cgroups holding only unreadable processes are charged for beyond what those
/// processes map: for each cgroup with at least one process (kernel threads aside) and none whose
/// `smaps_rollup` could be read (a process with nothing resident, such as a zombie, does not
/// count), its own `shmem` (its `memory.stat` less its children's) less the
/// `RssShmem` of its processes (counted in `unreadable_shmem_bytes`). The kernel charges a shmem
/// page to the cgroup of the process that first touched it, so this is shmem those processes
/// created and keep without mapping it: memfds or deleted files behind descriptors the agent
/// cannot read, tmpfs files in a mount namespace it cannot enter. It is an upper bound: pages such
/// a process created but others hold (a memfd it handed over, counted above) are charged there
/// too, so the ledger attributes only the remainder, up to this bound. 0 without a cgroup
/// observation, or when its walk was truncated (a cgroup's own share is then unknown).
fn unreadable_held(i: &Inputs<'_>) -> u64 {
    let (Some(cgroups), Some(processes)) = (i.cgroups, i.processes) else {
        return 0;
    };
    if cgroups.truncated {
        return 0;
    }
    // Per cgroup path with a process: (any of them readable, RssShmem of the unreadable ones).
    let mut members: HashMap<&[u8], (bool, u64)> = HashMap::new();
    // A process with nothing resident (a zombie, or one exiting: v1 moves an exiting task to the
    // root cgroup) holds nothing and says nothing about its cgroup's readability.
    for p in processes
        .processes
        .iter()
        .filter(|p| !p.kernel_thread && p.memory.rss_bytes > 0)
    {
        let Some(path) = &p.cgroup else { continue };
        let e = members.entry(path.as_bytes()).or_default();
        if p.numbers == Numbers::Exact {
            e.0 = true;
        } else {
            e.1 += p.memory.pss_shmem_bytes;
        }
    }
    let mut children_shmem: HashMap<&[u8], u64> = HashMap::new();
    for c in &cgroups.cgroups {
        let parent = crate::collectors::cgroup::ancestors(c.path.as_bytes()).nth(1);
        if let (Some(p), Some(shmem)) = (parent, c.stat.shmem_bytes) {
            *children_shmem.entry(p).or_default() += shmem;
        }
    }
    cgroups
        .cgroups
        .iter()
        .filter_map(|c| {
            let &(readable, mapped) = members.get(c.path.as_bytes())?;
            if readable {
                return None;
            }
            let own = c
                .stat
                .shmem_bytes?
                .saturating_sub(children_shmem.get(c.path.as_bytes()).copied().unwrap_or(0));
            Some(own.saturating_sub(mapped))
        })
        .sum()
}

/// Computes the `shmem_ledger`. `None` without meminfo's `Shmem` (nothing to reconcile against).
pub fn ledger(i: &Inputs<'_>) -> Option<Ledger> {
    let shmem_bytes = i.meminfo?.get("Shmem")?;
    let own_pss_of = |kind: ObjectKind| -> u64 {
        i.objects.map_or(0, |o| {
            o.of_kind(kind)
                .filter(|x| !x.hugetlb)
                .map(|x| x.memory.own_pss_bytes())
                .sum()
        })
    };
    let tmpfs_mapped_bytes = own_pss_of(ObjectKind::Tmpfs);
    let tmpfs_bytes = i.tmpfs.map_or(0, |t| t.measured_allocated_bytes("tmpfs"));
    let devtmpfs_bytes = i
        .tmpfs
        .map_or(0, |t| t.measured_allocated_bytes("devtmpfs"));
    let (sysv_bytes, _) = sysv_bytes(i);
    let memfd_bytes = memfds(i)
        .values()
        .filter(|(_, hugetlb)| !hugetlb)
        .map(|(bytes, _)| bytes)
        .sum();
    let shared_anon_bytes = own_pss_of(ObjectKind::SharedAnon);
    let unreadable_shmem_bytes = i.processes.map_or(0, |p| {
        p.processes
            .iter()
            .filter(|p| p.numbers == Numbers::Approximate)
            .map(|p| p.memory.pss_shmem_bytes)
            .sum()
    });
    let seen = tmpfs_bytes
        + devtmpfs_bytes
        + sysv_bytes
        + memfd_bytes
        + shared_anon_bytes
        + unreadable_shmem_bytes;
    let unreadable_held_bytes = shmem_bytes.saturating_sub(seen).min(unreadable_held(i));
    let explained_bytes = seen + unreadable_held_bytes;
    let incomplete = incomplete_reasons(i, true);
    Some(Ledger {
        shmem_bytes,
        tmpfs_bytes,
        tmpfs_mapped_bytes,
        tmpfs_unmapped_bytes: tmpfs_bytes.saturating_sub(tmpfs_mapped_bytes),
        devtmpfs_bytes,
        sysv_bytes,
        memfd_bytes,
        shared_anon_bytes,
        unreadable_shmem_bytes,
        unreadable_held_bytes,
        explained_bytes,
        unexplained_bytes: signed_diff(shmem_bytes, explained_bytes),
        complete: incomplete.is_empty(),
        incomplete,
        sources: [
            ("tmpfs", i.tmpfs.is_some()),
            ("sysv", i.sysv.is_some()),
            ("smaps", i.objects.is_some()),
            ("processes", i.processes.is_some()),
        ]
        .into_iter()
        .collect(),
    })
}

/// Computes the `hugetlb_ledger`. `None` without meminfo, or on a host with no hugetlb pool and no
/// hugetlb mapping (nothing to say).
pub fn hugetlb_ledger(i: &Inputs<'_>) -> Option<HugetlbLedger> {
    let meminfo = i.meminfo?;
    // `Hugetlb` (4.16+) covers every page size; older kernels: the default size's pool.
    let pool_bytes = meminfo
        .get("Hugetlb")
        .or_else(|| meminfo.get("HugePages_Total"))?;
    let free_bytes = meminfo.get("HugePages_Free").unwrap_or(0);
    let (_, sysv) = sysv_bytes(i);
    let memfd_bytes = memfds(i)
        .values()
        .filter(|(_, hugetlb)| *hugetlb)
        .map(|(bytes, _)| bytes)
        .sum();
    let hugetlb_of = |f: &dyn Fn(&SharedObject) -> bool| -> u64 {
        i.objects.map_or(0, |o| {
            o.objects
                .iter()
                .filter(|x| x.hugetlb && f(x))
                .map(|x| x.hugetlb_bytes)
                .sum()
        })
    };
    let file_bytes = hugetlb_of(&|x| {
        matches!(
            x.key.kind(),
            ObjectKind::File | ObjectKind::SharedAnon | ObjectKind::Tmpfs
        )
    });
    let anon_bytes = hugetlb_of(&|x| {
        matches!(
            x.key.kind(),
            ObjectKind::Anon | ObjectKind::Heap | ObjectKind::Stack | ObjectKind::Pseudo
        )
    });
    if pool_bytes == 0 && sysv + memfd_bytes + file_bytes + anon_bytes == 0 {
        return None;
    }
    let used_bytes = pool_bytes.saturating_sub(free_bytes);
    let explained_bytes = sysv + memfd_bytes + file_bytes + anon_bytes;
    let incomplete = incomplete_reasons(i, false);
    Some(HugetlbLedger {
        pool_bytes,
        free_bytes,
        used_bytes,
        sysv_bytes: sysv,
        memfd_bytes,
        file_bytes,
        anon_bytes,
        explained_bytes,
        unexplained_bytes: signed_diff(used_bytes, explained_bytes),
        complete: incomplete.is_empty(),
        incomplete,
    })
}

/// `a - b` as a signed number, saturating.
fn signed_diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{
        collectors::{
            processes::{Memory, ProcessRecord, listed},
            smaps::{ObjectMemory, ObjectNames, ProcessObjects, fold_process, fold_shared},
            sysv::Segment,
            tmpfs::{FdScanSummary, NamespacesUnread, OpenShmemFile, TmpfsMount},
        },
        procfs::{escape::Name, meminfo::MeminfoField, sysvipc::ShmSegment},
    };

    fn object(key: ObjectKey, pss: u64) -> std::sync::Arc<SharedObject> {
        std::sync::Arc::new(SharedObject {
            key,
            label: Name::from("x"),
            deleted: false,
            hugetlb: false,
            hugetlb_bytes: 0,
            memory: ObjectMemory {
                pss_bytes: pss,
                rss_bytes: pss,
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

    const SHM: Dev = Dev { major: 0, minor: 1 };
    const HUGETLBFS: Dev = Dev {
        major: 0,
        minor: 0x11,
    };

    fn inode(kind: ObjectKind, inode: u64) -> ObjectKey {
        ObjectKey::Inode {
            kind,
            dev: SHM,
            inode,
        }
    }

    fn meminfo(fields: &[(&str, u64)]) -> MeminfoObservation {
        MeminfoObservation {
            fields: fields
                .iter()
                .map(|(name, bytes)| MeminfoField {
                    name: (*name).to_string(),
                    bytes: *bytes,
                })
                .collect(),
            warnings: Vec::new(),
        }
    }

    fn segment(shmid: u64, size: u64, rss: u64) -> Segment {
        Segment {
            shm: ShmSegment {
                shmid,
                size,
                rss: Some(rss),
                ..ShmSegment::default()
            },
            owner: None,
        }
    }

    fn fd_memfd(dev: Dev, inode: u64, allocated: u64, hugetlb: bool) -> OpenShmemFile {
        OpenShmemFile {
            dev,
            inode,
            name: Name::from("/memfd:x"),
            allocated_bytes: allocated,
            size_bytes: allocated,
            hugetlb,
            holders: vec![1],
            holder_count: 1,
        }
    }

    fn tmpfs(allocated: u64, memfds: Vec<OpenShmemFile>) -> TmpfsObservation {
        TmpfsObservation {
            mounts: vec![TmpfsMount {
                dev: Dev {
                    major: 0,
                    minor: 27,
                },
                fstype: "tmpfs".into(),
                allocated_bytes: Some(allocated),
                ..TmpfsMount::default()
            }],
            memfds,
            fd_scan: Some(FdScanSummary::default()),
            ..TmpfsObservation::default()
        }
    }

    fn process(pid: u32, numbers: Numbers, shmem: u64) -> ProcessRecord {
        let memory = Memory {
            // Something resident, as a live process has.
            rss_bytes: shmem.max(4096),
            pss_shmem_bytes: shmem,
            ..Memory::default()
        };
        ProcessRecord::test(pid, numbers, memory)
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
            segments: vec![segment(4, 1000, 1000)],
        };
        // memfd 20 is held by an fd with 400 allocated (more than its 200 mapped); 22 only by fd.
        let tmpfs = tmpfs(
            1000,
            vec![fd_memfd(SHM, 20, 400, false), fd_memfd(SHM, 22, 30, false)],
        );
        let processes = ProcessesObservation {
            processes: listed(vec![process(1, Numbers::Exact, 999)]),
            ..ProcessesObservation::default()
        };
        let meminfo = meminfo(&[("Shmem", 3000)]);
        let l = ledger(&Inputs {
            meminfo: Some(&meminfo),
            processes: Some(&processes),
            objects: Some(&objects),
            sysv: Some(&sysv),
            tmpfs: Some(&tmpfs),
            cgroups: None,
        })
        .expect("ledger");
        assert_eq!(l.tmpfs_bytes, 1000);
        assert_eq!(l.tmpfs_mapped_bytes, 300);
        assert_eq!(l.tmpfs_unmapped_bytes, 700);
        assert_eq!(l.sysv_bytes, 1000, "segment rss, not the smaps PSS as well");
        assert_eq!(l.memfd_bytes, 400 + 50 + 30);
        assert_eq!(l.shared_anon_bytes, 70);
        assert_eq!(l.unreadable_shmem_bytes, 0, "an exact process adds nothing");
        assert_eq!(l.explained_bytes, 1000 + 1000 + 480 + 70);
        assert_eq!(l.unexplained_bytes, 3000 - 2550);
        assert!(l.complete, "{:?}", l.incomplete);
        assert!(l.incomplete.is_empty());
    }

    #[test]
    fn ledger_needs_meminfo_and_reports_missing_sources() {
        assert!(ledger(&Inputs::default()).is_none());
        let meminfo = meminfo(&[("Shmem", 100)]);
        let l = ledger(&Inputs {
            meminfo: Some(&meminfo),
            ..Inputs::default()
        })
        .expect("ledger");
        assert_eq!(l.unexplained_bytes, 100);
        assert!(!l.sources["tmpfs"]);
        assert!(!l.complete);
        assert_eq!(l.incomplete.len(), 3, "{:?}", l.incomplete);
        assert!(
            l.incomplete
                .iter()
                .any(|r| r.starts_with("tmpfs: no observation"))
        );
    }

    /// smaps of a process with a backslash-named tmpfs file, a memfd, a private (copy-on-write)
    /// mapping of a tmpfs file, and hugetlb: a SysV segment, a memfd with the same inode as the
    /// shmem memfd but on hugetlbfs, and private `MAP_HUGETLB` memory.
    fn accuracy_objects() -> ObjectsObservation {
        let tmpfs_devs: HashSet<Dev> = [Dev {
            major: 0,
            minor: 0x1b,
        }]
        .into_iter()
        .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/cases/smaps_accuracy");
        let text = std::fs::read(&path).expect("fixture smaps_accuracy");
        let mut names = ObjectNames::default();
        let objects = names.hold(fold_process(&text, &tmpfs_devs).expect("parse"));
        let p = ProcessObjects {
            pid: 7,
            start_ticks: 1,
            name: Name::from("acc"),
            objects,
            read_ticks: 0,
            read_run: 0,
            reads: 1,
        };
        ObjectsObservation {
            objects: fold_shared([&p], &names, 5),
            ..ObjectsObservation::default()
        }
    }

    #[test]
    fn hugetlb_stays_out_of_shmem_and_has_its_own_ledger() {
        let objects = accuracy_objects();
        // The kernel's rss column of a 4 MiB SHM_HUGETLB segment: 2 GiB.
        let sysv = SysvObservation {
            segments: vec![segment(4, 4 << 20, 2 << 30)],
        };
        // The hugetlb memfd is also fd-held (fstat: 4 MiB on hugetlbfs); the shmem memfd with the
        // same inode number is mapped only.
        let tmpfs = tmpfs(1 << 20, vec![fd_memfd(HUGETLBFS, 900, 4 << 20, true)]);
        let meminfo = meminfo(&[
            ("Shmem", 3 << 20),
            ("HugePages_Free", 8 << 20),
            ("Hugetlb", 20 << 20),
        ]);
        let inputs = Inputs {
            meminfo: Some(&meminfo),
            processes: Some(&ProcessesObservation::default()),
            objects: Some(&objects),
            sysv: Some(&sysv),
            tmpfs: Some(&tmpfs),
            cgroups: None,
        };
        let l = ledger(&inputs).expect("ledger");
        assert_eq!(l.sysv_bytes, 0, "a hugetlb segment is not Shmem");
        assert_eq!(l.memfd_bytes, 1 << 20, "only the shmem memfd (00:01 900)");
        // The shared tmpfs file's PSS (512k) and the private mapping's file pages (1024k PSS less
        // 512k copy-on-write), not 1.5 MiB.
        assert_eq!(l.tmpfs_mapped_bytes, (512 << 10) + (512 << 10));
        assert_eq!(l.explained_bytes, (1 << 20) + (1 << 20));
        assert!(l.complete, "{:?}", l.incomplete);

        let h = hugetlb_ledger(&inputs).expect("hugetlb ledger");
        assert!(h.complete, "{:?}", h.incomplete);
        assert_eq!(
            (h.pool_bytes, h.free_bytes, h.used_bytes),
            (20 << 20, 8 << 20, 12 << 20)
        );
        assert_eq!(
            h.sysv_bytes,
            4 << 20,
            "from the mappings, not the 2 GiB rss column"
        );
        assert_eq!(h.memfd_bytes, 4 << 20);
        assert_eq!(h.anon_bytes, 2 << 20);
        assert_eq!(h.file_bytes, 2 << 20, "the hugetlbfs file");
        assert_eq!(h.explained_bytes, 12 << 20);
        assert_eq!(h.unexplained_bytes, 0);

        // The objects: hugetlb marked, sized by their hugetlb pages, not folded away as empty.
        let sysv_obj = objects
            .of_kind(ObjectKind::Sysv)
            .next()
            .expect("SysV object");
        assert!(sysv_obj.hugetlb);
        assert_eq!(sysv_obj.hugetlb_bytes, 4 << 20);
        assert_eq!(sysv_obj.memory.pss_bytes, 0);
        assert_eq!(
            sysv.segments[0].resident_bytes(Some(sysv_obj)),
            Some(4 << 20)
        );
        // Labels keep the backslash names byte for byte.
        let labels: Vec<&Name> = objects.objects.iter().map(|o| &o.label).collect();
        assert!(
            labels.contains(&&Name::new(&br"/dev/shm/lit\101oct.bin"[..])),
            "{labels:?}"
        );
        assert!(
            labels.contains(&&Name::new(&br"memfd:acc-priv\101x"[..])),
            "{labels:?}"
        );
        // Unmapped, the 2 GiB column still gives it away, but its size is unknown.
        assert!(sysv.segments[0].hugetlb(None));
        assert_eq!(sysv.segments[0].resident_bytes(None), None);
    }

    #[test]
    fn memfds_with_one_inode_on_two_devices_stay_two() {
        let objects = ObjectsObservation {
            objects: vec![object(inode(ObjectKind::Memfd, 900), 100)],
            ..ObjectsObservation::default()
        };
        // Inode 900 again, fd-held, on another (non-hugetlb) device, and on the first one.
        let other = Dev { major: 0, minor: 2 };
        let tmpfs = tmpfs(
            0,
            vec![
                fd_memfd(SHM, 900, 60, false),
                fd_memfd(other, 900, 40, false),
            ],
        );
        let meminfo = meminfo(&[("Shmem", 1000)]);
        let l = ledger(&Inputs {
            meminfo: Some(&meminfo),
            objects: Some(&objects),
            tmpfs: Some(&tmpfs),
            ..Inputs::default()
        })
        .expect("ledger");
        assert_eq!(
            l.memfd_bytes,
            100 + 40,
            "max(100, 60) on 0:1, and 40 on 0:2"
        );
    }

    #[test]
    fn partial_ledger_says_why_and_attributes_unreadable_processes() {
        let objects = ObjectsObservation {
            unreadable: 2,
            ..ObjectsObservation::default()
        };
        let processes = ProcessesObservation {
            processes: listed(vec![
                process(1, Numbers::Approximate, 6 << 20),
                process(2, Numbers::Approximate, 1 << 20),
                process(3, Numbers::Exact, 5 << 20),
                process(4, Numbers::Inaccessible, 0),
            ]),
            ..ProcessesObservation::default()
        };
        let mut t = tmpfs(2 << 20, Vec::new());
        t.mounts.push(TmpfsMount {
            dev: Dev {
                major: 0,
                minor: 91,
            },
            error: Some("/x: device is 8:1, not 0:91".into()),
            ..TmpfsMount::default()
        });
        t.fd_scan = Some(FdScanSummary {
            pids_scanned: 10,
            denied: 3,
        });
        let meminfo = meminfo(&[("Shmem", 10 << 20)]);
        let l = ledger(&Inputs {
            meminfo: Some(&meminfo),
            processes: Some(&processes),
            objects: Some(&objects),
            sysv: Some(&SysvObservation::default()),
            tmpfs: Some(&t),
            cgroups: None,
        })
        .expect("ledger");
        assert_eq!(
            l.unreadable_shmem_bytes,
            7 << 20,
            "RssShmem of the two approximate ones"
        );
        assert_eq!(l.explained_bytes, (2 << 20) + (7 << 20));
        assert_eq!(l.unexplained_bytes, 1 << 20);
        assert!(!l.complete);
        let why = l.incomplete.join("\n");
        assert!(why.contains("smaps: 2 process(es) unreadable"), "{why}");
        assert!(
            why.contains("processes: 1 process(es) with neither"),
            "{why}"
        );
        assert!(
            why.contains("tmpfs 0:91: not measured (/x: device is 8:1, not 0:91)"),
            "{why}"
        );
        assert!(why.contains("fd scan: 3 process(es)"), "{why}");
        assert_eq!(l.incomplete.len(), 4);
    }

    #[test]
    fn no_hugetlb_ledger_without_a_pool_or_hugetlb_mappings() {
        let meminfo = meminfo(&[("Shmem", 100), ("Hugetlb", 0), ("HugePages_Free", 0)]);
        assert!(
            hugetlb_ledger(&Inputs {
                meminfo: Some(&meminfo),
                ..Inputs::default()
            })
            .is_none()
        );
    }

    /// devtmpfs is its own field (explained, not tmpfs); mount namespaces the agent could not read
    /// make the ledger incomplete and say so.
    #[test]
    fn devtmpfs_is_its_own_field_and_unread_namespaces_are_reasons() {
        let mut t = tmpfs(1000, Vec::new());
        t.mounts.push(TmpfsMount {
            dev: Dev { major: 0, minor: 6 },
            fstype: "devtmpfs".into(),
            allocated_bytes: Some(8192),
            ..TmpfsMount::default()
        });
        let meminfo = meminfo(&[("Shmem", 10_000)]);
        let (objects, sysv) = (ObjectsObservation::default(), SysvObservation::default());
        let ledger_with = |t: &TmpfsObservation| {
            ledger(&Inputs {
                meminfo: Some(&meminfo),
                objects: Some(&objects),
                sysv: Some(&sysv),
                tmpfs: Some(t),
                ..Inputs::default()
            })
            .expect("ledger")
        };
        let l = ledger_with(&t);
        assert_eq!((l.tmpfs_bytes, l.devtmpfs_bytes), (1000, 8192));
        assert_eq!(l.explained_bytes, 1000 + 8192);
        assert!(l.complete, "{:?}", l.incomplete);
        t.namespaces_unread = NamespacesUnread {
            denied: 3,
            skipped: 2,
        };
        let l = ledger_with(&t);
        assert!(!l.complete);
        assert!(
            l.incomplete
                .iter()
                .any(|w| w.contains("3 process(es) whose mount namespace is unreadable")),
            "{:?}",
            l.incomplete
        );
        assert!(
            l.incomplete
                .iter()
                .any(|w| w.contains("2 mount namespace(s) beyond")),
            "{:?}",
            l.incomplete
        );
    }

    /// The remainder this VM shows at rest: pid 1 (unreadable, alone in the root memory cgroup with
    /// the kernel threads) holds shmem it does not map. The root's own charge less pid 1's
    /// RssShmem bounds what the ledger attributes to it; a cgroup with a readable process, or
    /// without a cgroup observation, attributes nothing.
    #[test]
    fn shmem_held_unmapped_by_unreadable_processes_is_bounded_by_their_cgroups_charge() {
        use crate::collectors::cgroup::{CgroupStats, StatFields};
        let cgroup = |path: &str, shmem: u64| CgroupStats {
            stat: StatFields {
                shmem_bytes: Some(shmem),
                ..StatFields::default()
            },
            ..CgroupStats::empty(Name::from(path))
        };
        // Hierarchical shmem: the root 9000 (its own: 9000 - 1000 = 8000), /app 1000, /app/x 500.
        let cgroups = CgroupObservation {
            cgroups: vec![
                cgroup("/", 9000),
                cgroup("/app", 1000),
                cgroup("/app/x", 500),
            ],
            ..CgroupObservation::default()
        };
        let in_cgroup = |mut p: ProcessRecord, path: &str| {
            p.cgroup = Some(Name::from(path));
            p
        };
        let mut kthread = in_cgroup(process(2, Numbers::Exact, 0), "/");
        kthread.kernel_thread = true;
        // A zombie (nothing resident; v1 shows an exiting task in the root cgroup), readable.
        let mut zombie = in_cgroup(process(3, Numbers::Exact, 0), "/");
        zombie.memory.rss_bytes = 0;
        let processes = ProcessesObservation {
            processes: listed(vec![
                // pid 1: unreadable, 6000 of RssShmem; a kernel thread or a zombie beside it does
                // not count.
                in_cgroup(process(1, Numbers::Approximate, 6000), "/"),
                kthread,
                zombie,
                // /app/x has a readable process: nothing is attributed there.
                in_cgroup(process(30, Numbers::Exact, 100), "/app/x"),
                in_cgroup(process(31, Numbers::Approximate, 100), "/app/x"),
            ]),
            ..ProcessesObservation::default()
        };
        let run = |shmem: u64, cgroups: Option<&CgroupObservation>| {
            let meminfo = meminfo(&[("Shmem", shmem)]);
            ledger(&Inputs {
                meminfo: Some(&meminfo),
                processes: Some(&processes),
                tmpfs: Some(&tmpfs(0, Vec::new())),
                cgroups,
                ..Inputs::default()
            })
            .expect("ledger")
        };
        // Seen: pid 1's and pid 31's RssShmem (6100). A remainder of 1000 is within the root's
        // bound (8000 - 6000 = 2000): all attributed.
        let l = run(7100, Some(&cgroups));
        assert_eq!(l.unreadable_shmem_bytes, 6100);
        assert_eq!(l.unreadable_held_bytes, 1000);
        assert_eq!(l.unexplained_bytes, 0);
        // A remainder of 3000: only the bound, 2000; the rest stays unexplained.
        let l = run(9100, Some(&cgroups));
        assert_eq!(l.unreadable_held_bytes, 2000);
        assert_eq!(l.unexplained_bytes, 1000);
        assert_eq!(l.explained_bytes, 6100 + 2000);
        // Nothing left to explain: nothing attributed.
        assert_eq!(run(6000, Some(&cgroups)).unreadable_held_bytes, 0);
        // Without the cgroup observation, or with a truncated walk: nothing.
        assert_eq!(run(7100, None).unreadable_held_bytes, 0);
        let truncated = CgroupObservation {
            truncated: true,
            ..cgroups.clone()
        };
        assert_eq!(run(7100, Some(&truncated)).unreadable_held_bytes, 0);
    }
}
