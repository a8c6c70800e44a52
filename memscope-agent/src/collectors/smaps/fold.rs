//! Folding: one process's mappings into its objects, and processes' objects into shared objects.

use std::collections::{HashMap, HashSet};

use super::{
    classify::classify,
    object::{Consumer, ObjectKey, ObjectMemory, ProcessObject, ProcessObjects, SharedObject},
};
use crate::procfs::{Dev, smaps::parse_smaps};

/// Folds one process's smaps text into its objects.
pub fn fold_process(
    text: &[u8],
    tmpfs_devs: &HashSet<Dev>,
) -> Result<Vec<ProcessObject>, crate::procfs::ParseError> {
    let mut index: HashMap<ObjectKey, usize> = HashMap::new();
    let mut objects: Vec<ProcessObject> = Vec::new();
    parse_smaps(text, |m| {
        let (key, label, deleted) = classify(&m, tmpfs_devs);
        let mem = ObjectMemory::from_counters(&m.counters);
        let hugetlb = m.is_hugetlb();
        match index.get(&key) {
            Some(&i) => {
                let o = &mut objects[i];
                o.hugetlb |= hugetlb;
                o.memory.add(&mem);
                o.mappings += 1;
                o.mapped_bytes = o.mapped_bytes.saturating_add(m.size());
            }
            None => {
                index.insert(key.clone(), objects.len());
                objects.push(ProcessObject {
                    key,
                    label,
                    deleted,
                    hugetlb,
                    memory: mem,
                    mappings: 1,
                    mapped_bytes: m.size(),
                    derived: false,
                });
            }
        }
    })?;
    Ok(objects)
}

/// Folds per-process objects into shared objects, largest first (PSS plus hugetlb); consumers
/// likewise.
pub fn fold_shared<'a>(procs: impl IntoIterator<Item = &'a ProcessObjects>) -> Vec<SharedObject> {
    let mut index: HashMap<&'a ObjectKey, usize> = HashMap::new();
    let mut shared: Vec<SharedObject> = Vec::new();
    // Per shared object, the largest `Shared_Hugetlb` of one mapper.
    let mut max_shared_hugetlb: Vec<u64> = Vec::new();
    for p in procs {
        for o in &p.objects {
            let consumer = Consumer {
                pid: p.pid,
                name: p.name.clone(),
                pss_bytes: o.memory.pss_bytes,
                rss_bytes: o.memory.rss_bytes,
                hugetlb_bytes: o.memory.hugetlb_bytes(),
                derived: o.derived,
            };
            match index.get(&o.key) {
                Some(&i) => {
                    let s = &mut shared[i];
                    s.hugetlb |= o.hugetlb;
                    s.memory.add(&o.memory);
                    max_shared_hugetlb[i] =
                        max_shared_hugetlb[i].max(o.memory.shared_hugetlb_bytes);
                    s.mappers += 1;
                    s.derived_mappers += u32::from(o.derived);
                    s.mappings += o.mappings;
                    s.consumers.push(consumer);
                }
                None => {
                    index.insert(&o.key, shared.len());
                    max_shared_hugetlb.push(o.memory.shared_hugetlb_bytes);
                    shared.push(SharedObject {
                        key: o.key.clone(),
                        label: o.label.clone(),
                        deleted: o.deleted,
                        hugetlb: o.hugetlb,
                        hugetlb_bytes: 0,
                        memory: o.memory,
                        mappers: 1,
                        derived_mappers: u32::from(o.derived),
                        mappings: o.mappings,
                        consumers: vec![consumer],
                    });
                }
            }
        }
    }
    for (s, max_shared) in shared.iter_mut().zip(max_shared_hugetlb) {
        s.hugetlb_bytes = s.memory.private_hugetlb_bytes + max_shared;
        s.consumers
            .sort_by(|a, b| b.weight().cmp(&a.weight()).then(a.pid.cmp(&b.pid)));
    }
    shared.sort_by(|a, b| b.weight().cmp(&a.weight()).then_with(|| a.key.cmp(&b.key)));
    shared
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Instant;

    use super::*;
    use crate::procfs::escape::Name;

    pub(crate) const SMAPS: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 1234                       /usr/bin/app
Rss:                   4 kB
Pss:                   2 kB
Shared_Clean:          4 kB
55d0c0001000-55d0c0003000 r-xp 00001000 fe:01 1234                       /usr/bin/app
Rss:                   8 kB
Pss:                   4 kB
Shared_Clean:          8 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 100 kB
Pss:                 100 kB
Private_Dirty:       100 kB
7f0000000000-7f0000200000 rw-s 00000000 00:01 77                         /memfd:buf (deleted)
Rss:                2048 kB
Pss:                1024 kB
Shared_Dirty:       2048 kB
7f0000200000-7f0000300000 rw-s 00000000 00:1b 88                         /dev/shm/ring
Rss:                1024 kB
Pss:                 512 kB
Shared_Dirty:       1024 kB
7f0000300000-7f0000400000 rw-s 00000000 00:01 5                          /SYSV0000162e (deleted)
Rss:                1024 kB
Pss:                1024 kB
Private_Dirty:      1024 kB
7f0000400000-7f0000500000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
Rss:                 512 kB
Pss:                 512 kB
Private_Dirty:       512 kB
7f0000500000-7f0000501000 rw-p 00000000 00:00 0
Rss:                   4 kB
Pss:                   4 kB
Private_Dirty:         4 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Pss:                  16 kB
Private_Dirty:        16 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Pss:                   0 kB
Shared_Clean:          4 kB
";

    pub(crate) fn devs() -> HashSet<Dev> {
        [Dev {
            major: 0,
            minor: 0x1b,
        }]
        .into_iter()
        .collect()
    }

    pub(crate) fn proc_objects(pid: u32, name: &str, text: &str) -> ProcessObjects {
        ProcessObjects {
            pid,
            start_ticks: 1,
            name: Name::from(name),
            objects: fold_process(text.as_bytes(), &devs()).expect("parses"),
            read_at: Instant::now(),
            read_ticks: 0,
            read_run: 0,
            smaps_bytes: text.len() as u64,
            reads: 1,
        }
    }

    #[test]
    fn mappings_fold_into_objects_of_the_right_kind() {
        let objs = fold_process(SMAPS.as_bytes(), &devs()).expect("parses");
        let by_id: HashMap<String, &ProcessObject> = objs.iter().map(|o| (o.key.id(), o)).collect();
        let app = by_id["file:254:1:1234"];
        assert_eq!(app.mappings, 2, "two mappings of one file are one object");
        assert_eq!(app.memory.pss_bytes, 6 * 1024);
        assert_eq!(app.label, Name::from("/usr/bin/app"));
        assert_eq!(by_id["heap"].memory.private_dirty_bytes, 100 * 1024);
        assert_eq!(by_id["memfd:0:1:77"].label, Name::from("memfd:buf"));
        assert!(by_id["memfd:0:1:77"].deleted);
        assert_eq!(by_id["tmpfs:0:27:88"].memory.pss_bytes, 512 * 1024);
        assert_eq!(by_id["sysv:5"].label, Name::from("SYSV0000162e"));
        assert_eq!(by_id["shared_anon:0:1:99"].memory.rss_bytes, 512 * 1024);
        assert_eq!(by_id["anon"].memory.pss_bytes, 4 * 1024);
        assert_eq!(by_id["stack"].memory.pss_bytes, 16 * 1024);
        assert_eq!(by_id["pseudo:[vdso]"].memory.rss_bytes, 4 * 1024);
        assert_eq!(objs.len(), 9);
    }

    #[test]
    fn objects_fold_across_processes_with_consumers() {
        let a = proc_objects(10, "a", SMAPS);
        let b = proc_objects(11, "b", SMAPS);
        let shared = fold_shared([&a, &b]);
        let memfd = shared
            .iter()
            .find(|o| o.key.id() == "memfd:0:1:77")
            .expect("memfd");
        assert_eq!(memfd.mappers, 2);
        assert_eq!(memfd.memory.pss_bytes, 2048 * 1024);
        assert_eq!(memfd.consumers.len(), 2);
        assert_eq!(memfd.consumers[0].pss_bytes, 1024 * 1024);
        // Sorted by PSS, largest first.
        assert!(
            shared
                .windows(2)
                .all(|w| w[0].memory.pss_bytes >= w[1].memory.pss_bytes)
        );
    }

    #[test]
    fn hugetlb_objects_count_their_pages_once_and_rank_by_them() {
        // Three processes map one hugetlb memfd of 6 MiB: 4 MiB shared by all, and each of two
        // has 1 MiB only it maps (private to it).
        let smaps = |shared_kb: u64, private_kb: u64| {
            format!(
                "7f0000000000-7f0000600000 rw-s 00000000 00:11 900 /memfd:ht (deleted)\n\
                 Rss: 0 kB\nPss: 0 kB\nShared_Hugetlb: {shared_kb} kB\n\
                 Private_Hugetlb: {private_kb} kB\nVmFlags: rd wr sh mr mw me ms ht\n\
                 7f0000600000-7f0000700000 rw-p 00000000 00:00 0\nRss: 8 kB\nPss: 8 kB\n"
            )
        };
        let a = proc_objects(1, "a", &smaps(4096, 1024));
        let b = proc_objects(2, "b", &smaps(4096, 1024));
        let c = proc_objects(3, "c", &smaps(4096, 0));
        let shared = fold_shared([&a, &b, &c]);
        let ht = &shared[0];
        assert_eq!(
            ht.key.id(),
            "memfd:0:17:900",
            "ranked first by its hugetlb pages"
        );
        assert!(ht.hugetlb);
        assert_eq!(ht.memory.pss_bytes, 0);
        assert_eq!(
            ht.hugetlb_bytes,
            6 << 20,
            "4 MiB shared once, plus 1 MiB twice"
        );
        assert_eq!(
            ht.memory.shared_hugetlb_bytes,
            12 << 20,
            "summed over mappers"
        );
        assert_eq!(ht.consumers[0].hugetlb_bytes, 5 << 20);
        assert_eq!(ht.consumers[2].pid, 3);
        assert!(!shared[1].hugetlb);
    }

    #[test]
    fn same_path_different_inode_stays_two_objects() {
        let text = "\
7f0000000000-7f0000001000 rw-s 00000000 00:1b 500                        /dev/shm/same (deleted)
Rss:                   4 kB
Pss:                   4 kB
7f0000001000-7f0000002000 rw-s 00000000 00:1b 501                        /dev/shm/same
Rss:                   4 kB
Pss:                   4 kB
";
        let objs = fold_process(text.as_bytes(), &devs()).expect("parses");
        assert_eq!(objs.len(), 2);
        assert!(objs[0].deleted && !objs[1].deleted);
    }
}
