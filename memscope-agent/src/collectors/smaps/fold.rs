//! Folding: one process's mappings into its objects, and processes' objects into shared objects.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    classify::classify,
    object::{
        Consumer, HeldObject, ObjectKey, ObjectKind, ObjectMemory, ObjectNames, ProcessObject,
        ProcessObjects, Share, SharedObject,
    },
};
use crate::procfs::{
    Dev,
    counters::MemCounters,
    smaps::{Mapping, parse_smaps},
};

/// Folds one process's smaps text into its objects.
pub fn fold_process(
    text: &[u8],
    tmpfs_devs: &HashSet<Dev>,
) -> Result<Vec<ProcessObject>, crate::procfs::ParseError> {
    fold_process_rollup(text, tmpfs_devs).map(|(objects, _)| objects)
}

/// The process's `smaps_rollup` from its mappings, where the sum is exact: every counter is the
/// sum over mappings (the PSS counters to the kernel's kB rounding per mapping), and the PSS split
/// by page kind, which smaps prints only in the rollup, is derived per mapping. The kernel counts
/// a page's PSS as anon (anonymous page), shmem (swap-backed: tmpfs, memfd, SysV, shared
/// anonymous) or file (the rest); a mapping whose pages are all anonymous (`Anonymous = Rss`) or
/// none (`Anonymous = 0`) goes to one of them, and so does a mixed one whose every page is its own
/// (`Pss = Rss`: its anonymous pages' PSS is `Anonymous`), or one whose dirty pages are exactly its
/// anonymous ones (`Anonymous = Private_Dirty + Shared_Dirty`: their PSS is `Pss_Dirty`). Any other
/// mixed mapping has no exact split: `None`.
struct RollupSum {
    sum: MemCounters,
    split: Option<(u64, u64, u64)>,
}

impl RollupSum {
    fn add(&mut self, m: &Mapping, kind: ObjectKind) {
        let c = &m.counters;
        self.sum.add(c);
        let Some((anon, file, shmem)) = &mut self.split else {
            return;
        };
        let shmem_backed = matches!(
            kind,
            ObjectKind::Tmpfs | ObjectKind::Memfd | ObjectKind::Sysv | ObjectKind::SharedAnon
        );
        let own = if shmem_backed { shmem } else { file };
        if c.rss == 0 || c.anonymous == 0 {
            *own += c.pss;
        } else if c.anonymous >= c.rss {
            *anon += c.pss;
        } else if c.pss == c.rss {
            *anon += c.anonymous;
            *own += c.pss - c.anonymous;
        } else if let Some(pss_dirty) = c.pss_dirty
            && c.anonymous == c.private_dirty.saturating_add(c.shared_dirty)
        {
            // A file's private mapping: its pages are the file's (clean: a write copies the
            // page) or anonymous copies (dirty). As many dirty bytes as anonymous ones: the
            // anonymous pages' PSS is `Pss_Dirty`.
            *anon += pss_dirty;
            *own += c.pss.saturating_sub(pss_dirty);
        } else {
            self.split = None;
        }
    }

    fn finish(mut self) -> Option<MemCounters> {
        let (anon, file, shmem) = self.split?;
        self.sum.pss_anon = Some(anon);
        self.sum.pss_file = Some(file);
        self.sum.pss_shmem = Some(shmem);
        Some(self.sum)
    }
}

/// [`fold_process`], and the process's `smaps_rollup` derived from the same text where that is
/// exact (see [`RollupSum`]; `None` otherwise, or for a process without mappings).
pub fn fold_process_rollup(
    text: &[u8],
    tmpfs_devs: &HashSet<Dev>,
) -> Result<(Vec<ProcessObject>, Option<MemCounters>), crate::procfs::ParseError> {
    let mut index: HashMap<ObjectKey, usize> = HashMap::new();
    let mut objects: Vec<ProcessObject> = Vec::new();
    let mut rollup = RollupSum {
        sum: MemCounters::default(),
        split: Some((0, 0, 0)),
    };
    let n = parse_smaps(text, |m| {
        let (key, label, deleted) = classify(&m, tmpfs_devs);
        rollup.add(&m, key.kind());
        let mem = ObjectMemory::from_counters(&m.counters);
        let hugetlb = m.is_hugetlb();
        match index.get(&key) {
            Some(&i) => {
                let o = &mut objects[i];
                o.hugetlb |= hugetlb;
                o.memory.add(&mem);
                o.mappings += 1;
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
                });
            }
        }
    })?;
    Ok((objects, if n == 0 { None } else { rollup.finish() }))
}

/// Folds the kept processes' objects (their keys and labels in `names`) into shared objects,
/// largest first (PSS plus hugetlb), each with its `top_consumers` largest consumers (largest
/// first) and every mapper's share (by pid). An object's label is the one its lowest-pid mapper
/// shows. (The collector keeps a [`Folded`] between runs instead, and updates it.)
pub fn fold_shared<'a>(
    procs: impl IntoIterator<Item = &'a ProcessObjects>,
    names: &ObjectNames,
    top_consumers: usize,
) -> Vec<Arc<SharedObject>> {
    let procs: HashMap<u32, &ProcessObjects> = procs.into_iter().map(|p| (p.pid, p)).collect();
    let mut folded = Folded::default();
    for p in procs.values() {
        folded.join(p, names);
    }
    folded.finish(1, top_consumers, names, |pid| procs.get(&pid).copied())
}

/// The shared objects, kept between the collector's runs and updated by what changed: the
/// processes re-read, gone, or whose figures were derived move their contributions out of and
/// into the objects they map ([`Folded::leave`], [`Folded::join`], [`Folded::replace`]); the
/// objects touched get their top consumers and label again ([`Folded::finish`]); the others are
/// handed over as they are (shared, not copied). So a run costs what changed, not every process's
/// every object.
#[derive(Debug, Default)]
pub struct Folded {
    /// By key id ([`ObjectNames::keys`]).
    objects: HashMap<u32, Arc<SharedObject>>,
    /// The objects changed since the last [`Folded::finish`], by key id.
    touched: HashMap<u32, Touched>,
    /// Processes that left since [`Folded::take_left`] last said yes.
    left: usize,
}

/// An object changed since the last [`Folded::finish`].
#[derive(Debug, Default)]
struct Touched {
    /// One of its sums saturated (figures from a hostile tree): it is summed again from every
    /// mapper, not by difference.
    saturated: bool,
    /// The object as it was (`None`: new): when it comes out the same (a process re-read with
    /// the same figures), it stays that one, unchanged.
    before: Option<Arc<SharedObject>>,
}

impl Folded {
    /// The kept object `key`, to change.
    fn edit(&mut self, key: u32) -> Option<&mut SharedObject> {
        let entry = self.objects.get_mut(&key)?;
        self.touched.entry(key).or_insert_with(|| Touched {
            saturated: false,
            before: Some(Arc::clone(entry)),
        });
        Some(Arc::make_mut(entry))
    }

    /// `p`'s objects join the objects they are of (a process read).
    pub fn join(&mut self, p: &ProcessObjects, names: &ObjectNames) {
        for o in &p.objects {
            let Some(key) = names.key(o) else { continue };
            if let std::collections::hash_map::Entry::Vacant(slot) = self.objects.entry(o.key) {
                let (label, deleted) = names.labels.get(o.label).cloned().unwrap_or_default();
                slot.insert(Arc::new(SharedObject {
                    key: key.clone(),
                    label,
                    deleted,
                    hugetlb: false,
                    hugetlb_bytes: 0,
                    memory: ObjectMemory::default(),
                    mappers: 0,
                    derived_mappers: 0,
                    mappings: 0,
                    consumers: Vec::new(),
                    shares: Vec::new(),
                    changed_in: 0,
                }));
                self.touched.entry(o.key).or_default();
            }
            self.add(p.pid, o);
        }
    }

    /// `p`'s objects (as last joined) leave the objects they are of (a process gone, or about to
    /// be re-read).
    pub fn leave(&mut self, p: &ProcessObjects) {
        self.left += 1;
        for o in &p.objects {
            self.leave_one(p.pid, o);
        }
    }

    /// Whether the processes that left since it last said yes are `enough`; then it counts from
    /// zero again.
    pub fn take_left(&mut self, enough: impl FnOnce(usize) -> bool) -> bool {
        let yes = enough(self.left);
        if yes {
            self.left = 0;
        }
        yes
    }

    /// `pid`'s figures of one object changed from `before` to `after` (derived by arithmetic).
    pub fn replace(&mut self, pid: u32, before: &HeldObject, after: &HeldObject) {
        if before.key != after.key {
            self.leave_one(pid, before);
            self.add(pid, after);
            return;
        }
        let Some(s) = self.edit(after.key) else {
            return;
        };
        if s.shares.binary_search_by_key(&pid, |x| x.pid).is_err() {
            return;
        }
        // The share is updated where it is (a thousand mappers' shares derived after one exit
        // move nothing in the list).
        let saturated = unabsorb(s, before) | absorb(s, pid, after);
        if saturated {
            self.touched.entry(after.key).or_default().saturated = true;
        }
    }

    /// Adds one mapper's figures (`pid`'s object `o`).
    fn add(&mut self, pid: u32, o: &HeldObject) {
        let Some(s) = self.edit(o.key) else { return };
        if absorb(s, pid, o) {
            self.touched.entry(o.key).or_default().saturated = true;
        }
    }

    fn leave_one(&mut self, pid: u32, o: &HeldObject) {
        let Some(s) = self.edit(o.key) else { return };
        let Ok(at) = s.shares.binary_search_by_key(&pid, |x| x.pid) else {
            return;
        };
        s.shares.remove(at);
        if unabsorb(s, o) {
            self.touched.entry(o.key).or_default().saturated = true;
        }
    }

    /// Completes the objects touched since the last call (their top consumers, label, hugetlb
    /// pages; an object left by its last mapper goes) with `procs` (the kept processes, by pid:
    /// each as joined); those that came out different are marked changed in `run`. Returns every
    /// object, largest first (PSS plus hugetlb), then by key.
    pub fn finish<'a>(
        &mut self,
        run: u64,
        top_consumers: usize,
        names: &ObjectNames,
        procs: impl Fn(u32) -> Option<&'a ProcessObjects>,
    ) -> Vec<Arc<SharedObject>> {
        for (key, touched) in std::mem::take(&mut self.touched) {
            let Some(entry) = self.objects.get_mut(&key) else {
                continue;
            };
            if entry.shares.is_empty() {
                self.objects.remove(&key);
                continue;
            }
            complete(
                Arc::make_mut(entry),
                key,
                touched.saturated,
                top_consumers,
                names,
                &procs,
            );
            match touched.before {
                Some(before) if *before == **entry => *entry = before,
                _ => Arc::make_mut(entry).changed_in = run,
            }
        }
        let mut all: Vec<Arc<SharedObject>> = self.objects.values().cloned().collect();
        all.sort_by(|a, b| b.weight().cmp(&a.weight()).then_with(|| a.key.cmp(&b.key)));
        all
    }
}

/// Adds one mapper's figures of `s` (`pid`'s object `o`), its share in pid order. Returns whether
/// a sum saturated.
fn absorb(s: &mut SharedObject, pid: u32, o: &HeldObject) -> bool {
    let memory = o.memory();
    s.hugetlb |= o.hugetlb;
    s.memory.add(&memory);
    s.mappers = s.mappers.saturating_add(1);
    s.derived_mappers = s.derived_mappers.saturating_add(u32::from(o.derived));
    s.mappings = s.mappings.saturating_add(o.mappings);
    let share = Share {
        pid,
        derived: o.derived,
        pss_bytes: memory.pss_bytes,
        rss_bytes: memory.rss_bytes,
    };
    match s.shares.binary_search_by_key(&pid, |x| x.pid) {
        Ok(at) => s.shares[at] = share,
        Err(at) => s.shares.insert(at, share),
    }
    s.memory.saturated() || s.mappings == u32::MAX
}

/// Takes one mapper's figures (`o`) out of the sums of `s` (not its share). Returns whether a sum
/// had saturated: then it is no longer the sum, and a difference from it is wrong.
fn unabsorb(s: &mut SharedObject, o: &HeldObject) -> bool {
    let saturated = s.memory.saturated() || s.mappings == u32::MAX;
    s.memory.sub(&o.memory());
    s.mappers = s.mappers.saturating_sub(1);
    s.derived_mappers = s.derived_mappers.saturating_sub(u32::from(o.derived));
    s.mappings = s.mappings.saturating_sub(o.mappings);
    saturated
}

/// `pid`'s object `key`, as kept.
fn held<'a>(
    procs: &impl Fn(u32) -> Option<&'a ProcessObjects>,
    pid: u32,
    key: u32,
) -> Option<(&'a ProcessObjects, &'a HeldObject)> {
    let p = procs(pid)?;
    Some((p, p.objects.iter().find(|o| o.key == key)?))
}

/// The parts of a shared object that are not sums: its top consumers, its label (its lowest-pid
/// mapper's), its hugetlb pages. Sums that `saturated` (figures from a hostile tree), and hugetlb
/// objects (a largest, not a sum), are summed again from every mapper.
fn complete<'a>(
    s: &mut SharedObject,
    key: u32,
    saturated: bool,
    top_consumers: usize,
    names: &ObjectNames,
    procs: &impl Fn(u32) -> Option<&'a ProcessObjects>,
) {
    let hugetlb = s.hugetlb || s.memory.hugetlb_bytes() > 0;
    let mut max_shared_hugetlb = 0;
    if saturated || hugetlb {
        let shares = std::mem::take(&mut s.shares);
        s.memory = ObjectMemory::default();
        (s.hugetlb, s.mappers, s.derived_mappers, s.mappings) = (false, 0, 0, 0);
        for x in &shares {
            if let Some((_, o)) = held(procs, x.pid, key) {
                absorb(s, x.pid, o);
                max_shared_hugetlb = max_shared_hugetlb.max(o.memory().shared_hugetlb_bytes);
            }
        }
    }
    s.hugetlb_bytes = s
        .memory
        .private_hugetlb_bytes
        .saturating_add(max_shared_hugetlb);
    if let Some(first) = s.shares.first()
        && let Some((_, o)) = held(procs, first.pid, key)
        && let Some((label, deleted)) = names.labels.get(o.label)
        && (label, *deleted) != (&s.label, s.deleted)
    {
        (s.label, s.deleted) = (label.clone(), *deleted);
    }
    // Consumers rank by PSS plus hugetlb pages (which PSS leaves out), largest first, then by pid.
    let weight = |x: &Share| -> u64 {
        let hugetlb = if hugetlb {
            held(procs, x.pid, key).map_or(0, |(_, o)| o.memory().hugetlb_bytes())
        } else {
            0
        };
        x.pss_bytes.saturating_add(hugetlb)
    };
    let mut top: Vec<(std::cmp::Reverse<u64>, u32, usize)> = Vec::with_capacity(top_consumers + 1);
    for (i, x) in s.shares.iter().enumerate() {
        let rank = (std::cmp::Reverse(weight(x)), x.pid, i);
        let at = top.partition_point(|t| *t < rank);
        if at < top_consumers {
            top.insert(at, rank);
            top.truncate(top_consumers);
        }
    }
    s.consumers = top
        .into_iter()
        .filter_map(|(_, pid, i)| {
            let (p, o) = held(procs, pid, key)?;
            let x = s.shares.get(i)?;
            Some(Consumer {
                pid,
                name: p.name.clone(),
                pss_bytes: x.pss_bytes,
                rss_bytes: x.rss_bytes,
                hugetlb_bytes: o.memory().hugetlb_bytes(),
                derived: x.derived,
            })
        })
        .collect();
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// `pid`'s objects from its smaps `text`, kept with their names in `names`.
    pub(crate) fn proc_objects(
        names: &mut ObjectNames,
        pid: u32,
        name: &str,
        text: &str,
    ) -> ProcessObjects {
        ProcessObjects {
            pid,
            start_ticks: 1,
            name: Name::from(name),
            objects: names.hold(fold_process(text.as_bytes(), &devs()).expect("parses")),
            read_ticks: 0,
            read_run: 0,
            reads: 1,
        }
    }

    #[test]
    fn the_rollup_derived_from_smaps_is_the_kernels() {
        // Pids 43 and 44 slept while captured: smaps and smaps_rollup agree.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/proc");
        for pid in [43, 44] {
            let text = std::fs::read(dir.join(format!("{pid}/smaps"))).expect("smaps");
            let want = crate::procfs::smaps_rollup::parse_smaps_rollup(
                &std::fs::read(dir.join(format!("{pid}/smaps_rollup"))).expect("rollup"),
            )
            .expect("parses")
            .expect("has mm");
            let mappings = text
                .split(|&b| b == b'\n')
                .filter(|l| l.contains(&b'-') && l.first().is_some_and(u8::is_ascii_hexdigit))
                .count() as u64;
            let (_, got) = fold_process_rollup(&text, &devs()).expect("parses");
            let got = got.expect("an exact split");
            // Page counts are exact; PSS figures are rounded down to a kB per mapping.
            let slack = mappings * 1024;
            let pss_close = |a: Option<u64>, b: Option<u64>| {
                let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
                b >= a && b - a <= slack
            };
            assert_eq!(
                (got.rss, got.uss(), got.anonymous, got.swap, got.hugetlb()),
                (
                    want.rss,
                    want.uss(),
                    want.anonymous,
                    want.swap,
                    want.hugetlb()
                ),
                "pid {pid}"
            );
            assert!(
                pss_close(Some(got.pss), Some(want.pss)),
                "pid {pid}: {} vs {}",
                got.pss,
                want.pss
            );
            for (name, a, b) in [
                ("anon", got.pss_anon, want.pss_anon),
                ("file", got.pss_file, want.pss_file),
                ("shmem", got.pss_shmem, want.pss_shmem),
            ] {
                assert!(pss_close(a, b), "pid {pid} pss_{name}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn a_shared_copy_on_write_mapping_has_no_exact_split() {
        let text = "\
7f0000000000-7f0000004000 rw-p 00000000 fe:01 77 /usr/lib/x.so
Rss:                  16 kB
Pss:                  10 kB
Pss_Dirty:             8 kB
Shared_Clean:          8 kB
Private_Dirty:         8 kB
Anonymous:            12 kB
";
        let (objects, rollup) = fold_process_rollup(text.as_bytes(), &devs()).expect("parses");
        assert_eq!(objects.len(), 1);
        assert_eq!(rollup, None, "which pages are the 10 kB of PSS is unknown");
        // Every anonymous page dirty, every file page clean: the anonymous PSS is Pss_Dirty.
        let dirty = text.replace("Anonymous:            12 kB", "Anonymous:             8 kB");
        let (_, rollup) = fold_process_rollup(dirty.as_bytes(), &devs()).expect("parses");
        let r = rollup.expect("split by dirtiness");
        assert_eq!((r.pss_anon, r.pss_file), (Some(8 << 10), Some(2 << 10)));
        let own = text.replace("Pss:                  10 kB", "Pss:                  16 kB");
        let (_, rollup) = fold_process_rollup(own.as_bytes(), &devs()).expect("parses");
        let r = rollup.expect("every page its own");
        assert_eq!(
            (r.pss_anon, r.pss_file, r.pss_shmem),
            (Some(12 << 10), Some(4 << 10), Some(0))
        );
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
        let mut names = ObjectNames::default();
        let a = proc_objects(&mut names, 10, "a", SMAPS);
        let b = proc_objects(&mut names, 11, "b", SMAPS);
        let shared = fold_shared([&a, &b], &names, 1);
        let memfd = shared
            .iter()
            .find(|o| o.key.id() == "memfd:0:1:77")
            .expect("memfd");
        assert_eq!(memfd.mappers, 2);
        assert_eq!(memfd.memory.pss_bytes, 2048 * 1024);
        assert_eq!(memfd.consumers.len(), 1, "the top one only");
        assert_eq!(
            (memfd.consumers[0].pid, memfd.consumers[0].pss_bytes),
            (10, 1024 * 1024),
            "equal shares rank by pid"
        );
        assert_eq!(memfd.consumers[0].name, Name::from("a"));
        assert_eq!(
            memfd.shares,
            [10, 11].map(|pid| Share {
                pid,
                derived: false,
                pss_bytes: 1024 * 1024,
                rss_bytes: 2048 * 1024
            }),
            "every mapper's share"
        );
        let app = shared
            .iter()
            .find(|o| o.key.id() == "file:254:1:1234")
            .expect("app");
        assert_eq!(app.label, Name::from("/usr/bin/app"));
        assert_eq!(app.mappings, 4, "two mappings in each of two processes");
        assert_eq!(names.keys.len(), 9, "each key held once");
        // Sorted by PSS, largest first.
        assert!(
            shared
                .windows(2)
                .all(|w| w[0].memory.pss_bytes >= w[1].memory.pss_bytes)
        );
    }

    #[test]
    fn the_top_consumers_are_the_largest_then_the_lowest_pids_whatever_the_order() {
        let mut names = ObjectNames::default();
        let smaps = |kb: u64| {
            format!(
                "7f0000000000-7f0000400000 rw-s 00000000 00:01 77 /memfd:buf (deleted)\n\
                 Rss: 4096 kB\nPss: {kb} kB\nShared_Dirty: 4096 kB\n"
            )
        };
        // pid → PSS in kB: 10 and 14 tie for the largest, 12 and 13 for the third.
        let procs: Vec<ProcessObjects> = [(14, 900), (13, 100), (12, 100), (11, 50), (10, 900)]
            .iter()
            .map(|&(pid, kb)| proc_objects(&mut names, pid, "w", &smaps(kb)))
            .collect();
        let shared = fold_shared(procs.iter(), &names, 3);
        let memfd = &shared[0];
        let top: Vec<(u32, u64)> = memfd
            .consumers
            .iter()
            .map(|c| (c.pid, c.pss_bytes >> 10))
            .collect();
        assert_eq!(top, [(10, 900), (14, 900), (12, 100)]);
        assert_eq!(memfd.mappers, 5);
        let pids: Vec<u32> = memfd.shares.iter().map(|s| s.pid).collect();
        assert_eq!(pids, [10, 11, 12, 13, 14], "every mapper, by pid");
        assert_eq!(
            memfd.shares.iter().map(|s| s.pss_bytes).sum::<u64>(),
            memfd.memory.pss_bytes
        );
    }

    /// Everything of a shared object but the run that changed it.
    fn seen(o: &SharedObject) -> impl PartialEq + std::fmt::Debug + '_ {
        (
            (&o.key, &o.label, o.deleted, o.hugetlb, o.hugetlb_bytes),
            (o.memory, o.mappers, o.derived_mappers, o.mappings),
            (&o.consumers, &o.shares),
        )
    }

    #[test]
    fn kept_objects_updated_by_the_changes_are_a_fresh_fold() {
        let mut names = ObjectNames::default();
        let smaps = |kb: u64, extra: &str| {
            format!(
                "7f0000000000-7f0000400000 rw-s 00000000 00:01 77 /memfd:buf (deleted)\n\
                 Rss: 4096 kB\nPss: {kb} kB\nShared_Dirty: 4096 kB\n{extra}"
            )
        };
        let own = "7f0000500000-7f0000600000 rw-s 00000000 00:01 78 /memfd:own (deleted)\n\
                   Rss: 1024 kB\nPss: 1024 kB\nPrivate_Dirty: 1024 kB\n";
        let mut procs: HashMap<u32, ProcessObjects> = HashMap::new();
        for (pid, kb, extra) in [(10, 900, ""), (11, 100, own), (12, 300, "")] {
            procs.insert(pid, proc_objects(&mut names, pid, "w", &smaps(kb, extra)));
        }
        procs.insert(13, proc_objects(&mut names, 13, "app", SMAPS));
        let mut folded = Folded::default();
        for p in procs.values() {
            folded.join(p, &names);
        }
        let check = |folded: &mut Folded,
                     procs: &HashMap<u32, ProcessObjects>,
                     names: &ObjectNames,
                     run: u64| {
            let kept = folded.finish(run, 2, names, |pid| procs.get(&pid));
            let want = fold_shared(procs.values(), names, 2);
            assert_eq!(
                kept.iter().map(|o| seen(o)).collect::<Vec<_>>(),
                want.iter().map(|o| seen(o)).collect::<Vec<_>>(),
                "run {run}"
            );
            kept
        };
        let first = check(&mut folded, &procs, &names, 1);
        assert!(first.iter().all(|o| o.changed_in == 1));

        // 11 (the only mapper of memfd:own) is gone, 12 re-read with more, 10's share derived.
        let gone = procs.remove(&11).expect("11");
        folded.leave(&gone);
        let old = procs.remove(&12).expect("12");
        folded.leave(&old);
        let new = proc_objects(&mut names, 12, "w2", &smaps(2000, ""));
        folded.join(&new, &names);
        procs.insert(12, new);
        let p10 = procs.get_mut(&10).expect("10");
        let before = p10.objects[0].clone();
        let mut m = before.memory();
        m.pss_bytes = 1234;
        p10.objects[0].set_memory(m);
        p10.objects[0].derived = true;
        folded.replace(10, &before, &p10.objects[0]);
        let second = check(&mut folded, &procs, &names, 2);
        assert!(
            second.iter().all(|o| o.key.id() != "memfd:0:1:78"),
            "left by its last mapper"
        );
        let app = |v: &[Arc<SharedObject>]| {
            v.iter()
                .find(|o| o.key.id() == "file:254:1:1234")
                .cloned()
                .expect("app")
        };
        assert_eq!(app(&second).changed_in, 1, "no mapper of it changed");
        assert!(
            Arc::ptr_eq(&app(&first), &app(&second)),
            "handed over, not copied"
        );
        let memfd = second
            .iter()
            .find(|o| o.key.id() == "memfd:0:1:77")
            .expect("memfd");
        assert_eq!((memfd.changed_in, memfd.derived_mappers), (2, 1));

        // 13 re-read with the same figures: nothing it maps changed.
        let old = procs.remove(&13).expect("13");
        folded.leave(&old);
        let again = proc_objects(&mut names, 13, "app", SMAPS);
        folded.join(&again, &names);
        procs.insert(13, again);
        let third = check(&mut folded, &procs, &names, 3);
        assert!(third.iter().all(|o| o.changed_in < 3), "the same objects");
        assert!(Arc::ptr_eq(&app(&first), &app(&third)));
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
        let mut names = ObjectNames::default();
        let a = proc_objects(&mut names, 1, "a", &smaps(4096, 1024));
        let b = proc_objects(&mut names, 2, "b", &smaps(4096, 1024));
        let c = proc_objects(&mut names, 3, "c", &smaps(4096, 0));
        let shared = fold_shared([&a, &b, &c], &names, 5);
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
