//! The object model: what holds memory ([`ObjectKind`], [`ObjectKey`]), how much
//! ([`ObjectMemory`]), as one process maps it ([`ProcessObject`]) and folded across processes
//! ([`SharedObject`]).

use serde::Serialize;

use super::intern::Interner;
use crate::procfs::{Dev, counters::MemCounters, escape::Name};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    File,
    Tmpfs,
    Memfd,
    Sysv,
    SharedAnon,
    Anon,
    Heap,
    Stack,
    Pseudo,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::File => "file",
            ObjectKind::Tmpfs => "tmpfs",
            ObjectKind::Memfd => "memfd",
            ObjectKind::Sysv => "sysv",
            ObjectKind::SharedAnon => "shared_anon",
            ObjectKind::Anon => "anon",
            ObjectKind::Heap => "heap",
            ObjectKind::Stack => "stack",
            ObjectKind::Pseudo => "pseudo",
        }
    }
}

/// Identity of an object across processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// File-backed (file, tmpfs, memfd, shared anonymous): the inode on its device.
    Inode {
        kind: ObjectKind,
        dev: Dev,
        inode: u64,
    },
    /// A SysV segment by shmid.
    Sysv { shmid: u64 },
    /// Private anonymous memory of one kind (anon, heap, stack).
    Kind(ObjectKind),
    /// A pseudo mapping by label.
    Pseudo(String),
}

impl ObjectKey {
    pub fn kind(&self) -> ObjectKind {
        match self {
            ObjectKey::Inode { kind, .. } | ObjectKey::Kind(kind) => *kind,
            ObjectKey::Sysv { .. } => ObjectKind::Sysv,
            ObjectKey::Pseudo(_) => ObjectKind::Pseudo,
        }
    }

    /// The record key, stable across emissions: `memfd:0:1:1234`, `sysv:5`, `heap`, `pseudo:[vdso]`.
    pub fn id(&self) -> String {
        match self {
            ObjectKey::Inode { kind, dev, inode } => format!("{}:{dev}:{inode}", kind.as_str()),
            ObjectKey::Sysv { shmid } => format!("sysv:{shmid}"),
            ObjectKey::Kind(k) => k.as_str().to_string(),
            ObjectKey::Pseudo(label) => format!("pseudo:{label}"),
        }
    }
}

/// Memory of an object, in bytes (a subset of [`MemCounters`] that is additive across processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ObjectMemory {
    pub pss_bytes: u64,
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    pub swap_pss_bytes: u64,
    pub private_clean_bytes: u64,
    pub private_dirty_bytes: u64,
    pub shared_clean_bytes: u64,
    pub shared_dirty_bytes: u64,
    /// smaps `Anonymous`: copy-on-write pages of `MAP_PRIVATE` mappings of a file (part of PSS, but
    /// anonymous memory, not the file's pages).
    pub anonymous_bytes: u64,
    /// smaps `Shared_Hugetlb` / `Private_Hugetlb`: hugetlb pages mapped (never part of RSS or PSS),
    /// summed over mappers like `rss_bytes`.
    pub shared_hugetlb_bytes: u64,
    pub private_hugetlb_bytes: u64,
}

impl ObjectMemory {
    pub(super) fn from_counters(c: &MemCounters) -> ObjectMemory {
        ObjectMemory {
            pss_bytes: c.pss,
            rss_bytes: c.rss,
            swap_bytes: c.swap,
            swap_pss_bytes: c.swap_pss,
            private_clean_bytes: c.private_clean,
            private_dirty_bytes: c.private_dirty,
            shared_clean_bytes: c.shared_clean,
            shared_dirty_bytes: c.shared_dirty,
            anonymous_bytes: c.anonymous,
            shared_hugetlb_bytes: c.shared_hugetlb,
            private_hugetlb_bytes: c.private_hugetlb,
        }
    }

    /// Adds `o` field by field, saturating: figures from a hostile tree must not wrap.
    pub fn add(&mut self, o: &ObjectMemory) {
        self.combine(o, u64::saturating_add);
    }

    /// Subtracts `o` field by field, saturating (the inverse of [`ObjectMemory::add`] while no sum
    /// saturated).
    pub fn sub(&mut self, o: &ObjectMemory) {
        self.combine(o, u64::saturating_sub);
    }

    /// Sets every field to `f(self's, o's)`.
    fn combine(&mut self, o: &ObjectMemory, f: fn(u64, u64) -> u64) {
        let s = |a: &mut u64, b: u64| *a = f(*a, b);
        s(&mut self.pss_bytes, o.pss_bytes);
        s(&mut self.rss_bytes, o.rss_bytes);
        s(&mut self.swap_bytes, o.swap_bytes);
        s(&mut self.swap_pss_bytes, o.swap_pss_bytes);
        s(&mut self.private_clean_bytes, o.private_clean_bytes);
        s(&mut self.private_dirty_bytes, o.private_dirty_bytes);
        s(&mut self.shared_clean_bytes, o.shared_clean_bytes);
        s(&mut self.shared_dirty_bytes, o.shared_dirty_bytes);
        s(&mut self.anonymous_bytes, o.anonymous_bytes);
        s(&mut self.shared_hugetlb_bytes, o.shared_hugetlb_bytes);
        s(&mut self.private_hugetlb_bytes, o.private_hugetlb_bytes);
    }

    /// Whether a field is at its largest: a sum that may have saturated.
    pub fn saturated(&self) -> bool {
        [
            self.pss_bytes,
            self.rss_bytes,
            self.swap_bytes,
            self.swap_pss_bytes,
            self.private_clean_bytes,
            self.private_dirty_bytes,
            self.shared_clean_bytes,
            self.shared_dirty_bytes,
            self.anonymous_bytes,
            self.shared_hugetlb_bytes,
            self.private_hugetlb_bytes,
        ]
        .contains(&u64::MAX)
    }

    /// PSS of the object's own (file or shmem) pages: PSS without the copy-on-write anonymous
    /// pages of private mappings. Exact unless those anonymous pages are themselves shared after a
    /// fork (then it is low by their shared part).
    pub fn own_pss_bytes(&self) -> u64 {
        self.pss_bytes.saturating_sub(self.anonymous_bytes)
    }

    /// Hugetlb pages mapped, `Shared_Hugetlb + Private_Hugetlb`.
    pub fn hugetlb_bytes(&self) -> u64 {
        self.shared_hugetlb_bytes
            .saturating_add(self.private_hugetlb_bytes)
    }
}

/// One object as one process maps it, as folded from its `smaps` text.
#[derive(Debug, Clone)]
pub struct ProcessObject {
    pub key: ObjectKey,
    pub label: Name,
    pub deleted: bool,
    /// A hugetlb object (some mapping of it is hugetlb: `ht` in `VmFlags`).
    pub hugetlb: bool,
    pub memory: ObjectMemory,
    /// Mappings of the object in this process.
    pub mappings: u32,
}

/// [`ObjectMemory`] as kept per process and object, in 48 bytes instead of 88. `smaps` counts in
/// whole kB, so every figure but PSS (which the sharing arithmetic sets to the byte) is a whole
/// number of KiB: kept as a `u32` of KiB, up to 4 TiB. A figure that does not fit (larger, or not
/// whole KiB, as from a hostile tree) keeps the whole struct: nothing is rounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldMemory {
    Packed {
        pss_bytes: u64,
        /// RSS, swap, swap PSS, private clean/dirty, shared clean/dirty, anonymous, shared and
        /// private hugetlb, in KiB.
        kib: [u32; 10],
    },
    Wide(Box<ObjectMemory>),
}

impl HeldMemory {
    pub fn new(m: ObjectMemory) -> HeldMemory {
        let bytes = [
            m.rss_bytes,
            m.swap_bytes,
            m.swap_pss_bytes,
            m.private_clean_bytes,
            m.private_dirty_bytes,
            m.shared_clean_bytes,
            m.shared_dirty_bytes,
            m.anonymous_bytes,
            m.shared_hugetlb_bytes,
            m.private_hugetlb_bytes,
        ];
        let mut kib = [0u32; 10];
        for (k, b) in kib.iter_mut().zip(bytes) {
            match u32::try_from(b / 1024) {
                Ok(v) if b % 1024 == 0 => *k = v,
                _ => return HeldMemory::Wide(Box::new(m)),
            }
        }
        HeldMemory::Packed {
            pss_bytes: m.pss_bytes,
            kib,
        }
    }

    pub fn get(&self) -> ObjectMemory {
        match self {
            HeldMemory::Wide(m) => **m,
            HeldMemory::Packed { pss_bytes, kib } => {
                let b = |i: usize| u64::from(kib[i]) * 1024;
                ObjectMemory {
                    pss_bytes: *pss_bytes,
                    rss_bytes: b(0),
                    swap_bytes: b(1),
                    swap_pss_bytes: b(2),
                    private_clean_bytes: b(3),
                    private_dirty_bytes: b(4),
                    shared_clean_bytes: b(5),
                    shared_dirty_bytes: b(6),
                    anonymous_bytes: b(7),
                    shared_hugetlb_bytes: b(8),
                    private_hugetlb_bytes: b(9),
                }
            }
        }
    }
}

/// One object as one process maps it, as kept between reads: the key and the label are ids in the
/// collector's [`ObjectNames`] (a process holds a few dozen objects, most of them the same files as
/// the next process's), the figures packed ([`HeldMemory`]).
#[derive(Debug, Clone)]
pub struct HeldObject {
    /// The object's key in [`ObjectNames::keys`].
    pub key: u32,
    /// Its label and `deleted` as this process's `smaps` showed them, in [`ObjectNames::labels`].
    pub label: u32,
    pub hugetlb: bool,
    /// `memory` was updated by arithmetic after another mapper joined or left
    /// ([`super::sharing`]), not read; the next read of this process makes it exact again.
    pub derived: bool,
    /// Mappings of the object in this process.
    pub mappings: u32,
    memory: HeldMemory,
}

impl HeldObject {
    pub fn memory(&self) -> ObjectMemory {
        self.memory.get()
    }

    pub fn set_memory(&mut self, m: ObjectMemory) {
        self.memory = HeldMemory::new(m);
    }
}

/// The keys and labels of the objects the kept processes map, each held once
/// ([`HeldObject`] names them by id).
#[derive(Debug, Default)]
pub struct ObjectNames {
    pub(crate) keys: Interner<ObjectKey>,
    /// A label and whether the path was shown `(deleted)`.
    pub(crate) labels: Interner<(Name, bool)>,
}

impl ObjectNames {
    /// `objects` (one process's, folded) as kept: their keys and labels interned.
    pub fn hold(&mut self, objects: Vec<ProcessObject>) -> Vec<HeldObject> {
        let mut held: Vec<HeldObject> = objects
            .into_iter()
            .map(|o| HeldObject {
                key: self.keys.intern(o.key),
                label: self.labels.intern((o.label, o.deleted)),
                hugetlb: o.hugetlb,
                derived: false,
                mappings: o.mappings,
                memory: HeldMemory::new(o.memory),
            })
            .collect();
        // Kept until the process's next read: no spare capacity (the collect may reuse the
        // larger folded list's allocation).
        held.shrink_to_fit();
        held
    }

    /// The key of a held object.
    pub fn key(&self, o: &HeldObject) -> Option<&ObjectKey> {
        self.keys.get(o.key)
    }

    /// Frees the keys and labels no process in `procs` holds any more.
    pub fn sweep<'a>(&mut self, procs: impl IntoIterator<Item = &'a ProcessObjects> + Clone) {
        let held = |p: &'a ProcessObjects| p.objects.iter();
        self.keys
            .sweep(procs.clone().into_iter().flat_map(held).map(|o| o.key));
        self.labels
            .sweep(procs.into_iter().flat_map(held).map(|o| o.label));
    }
}

/// One process's view, kept between runs.
#[derive(Debug, Clone)]
pub struct ProcessObjects {
    pub pid: u32,
    pub start_ticks: u64,
    pub name: Name,
    pub objects: Vec<HeldObject>,
    /// When this process's smaps was last read, in clock ticks since boot (the unit of
    /// `start_ticks`): a process started after it did not map anything this read saw.
    pub read_ticks: u64,
    /// The smaps collector's run that read it.
    pub read_run: u64,
    /// How many times this process's smaps has been read.
    pub reads: u64,
}

/// A process's share of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Consumer {
    pub pid: u32,
    pub name: Name,
    pub pss_bytes: u64,
    pub rss_bytes: u64,
    /// Hugetlb pages this process maps of the object (not in its PSS or RSS).
    pub hugetlb_bytes: u64,
    /// Its PSS of the object is derived: updated by arithmetic after another mapper joined or left
    /// since this process's `smaps` was read, not read itself (absent: read).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub derived: bool,
}

/// An object folded across processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedObject {
    pub key: ObjectKey,
    pub label: Name,
    pub deleted: bool,
    /// A hugetlb object (hugetlbfs file, `MFD_HUGETLB` memfd, `SHM_HUGETLB` segment, `MAP_HUGETLB`).
    pub hugetlb: bool,
    /// Resident hugetlb pages of the object, counted once: the `Private_Hugetlb` of every mapper
    /// (pages only that mapper maps) plus the largest `Shared_Hugetlb` of one mapper. A lower bound,
    /// exact when one mapper maps every shared page (smaps has no hugetlb PSS).
    pub hugetlb_bytes: u64,
    pub memory: ObjectMemory,
    /// Processes mapping it.
    pub mappers: u32,
    /// Mappers whose figures of it are derived (see [`Consumer::derived`]).
    pub derived_mappers: u32,
    pub mappings: u32,
    /// The largest mappers with their shares, largest first (as many as records show).
    pub consumers: Vec<Consumer>,
    /// Every mapper's share, by pid, for the object's top cgroups.
    pub shares: Vec<Share>,
    /// The smaps collector's run that last changed the object (0: not tracked): its record is the
    /// same as that run's while its mappers' cgroups are.
    pub changed_in: u64,
}

/// One mapper's share of an object: what an object's top cgroups are summed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub pid: u32,
    /// Its figures of the object are derived (see [`Consumer::derived`]).
    pub derived: bool,
    pub pss_bytes: u64,
    pub rss_bytes: u64,
}

impl SharedObject {
    /// The size objects are ranked and folded by: PSS, plus resident hugetlb pages (which PSS
    /// leaves out), so a hugetlb object is not folded away as empty.
    pub fn weight(&self) -> u64 {
        self.memory.pss_bytes.saturating_add(self.hugetlb_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_figures_are_packed_without_loss() {
        let kib = |n: u64| n * 1024;
        let m = ObjectMemory {
            pss_bytes: 1_234_567,
            rss_bytes: kib(3072),
            swap_bytes: kib(5),
            swap_pss_bytes: kib(2),
            private_clean_bytes: kib(7),
            private_dirty_bytes: kib(11),
            shared_clean_bytes: kib(13),
            shared_dirty_bytes: kib(17),
            anonymous_bytes: kib(19),
            shared_hugetlb_bytes: kib(2048),
            private_hugetlb_bytes: kib(4 << 30) - 1024,
        };
        let held = HeldMemory::new(m);
        assert!(matches!(held, HeldMemory::Packed { .. }));
        assert_eq!(held.get(), m, "PSS to the byte, the rest in KiB");
        // Not whole KiB, or 4 TiB and more: the whole struct, as it was.
        for odd in [
            ObjectMemory {
                rss_bytes: 1000,
                ..m
            },
            ObjectMemory {
                swap_bytes: 4 << 40,
                ..m
            },
            ObjectMemory {
                private_hugetlb_bytes: u64::MAX,
                ..m
            },
        ] {
            let held = HeldMemory::new(odd);
            assert!(matches!(held, HeldMemory::Wide(_)));
            assert_eq!(held.get(), odd);
        }
        assert!(
            std::mem::size_of::<HeldObject>() <= 72,
            "{} bytes per held object",
            std::mem::size_of::<HeldObject>()
        );
    }
}
