//! The object model: what holds memory ([`ObjectKind`], [`ObjectKey`]), how much
//! ([`ObjectMemory`]), as one process maps it ([`ProcessObject`]) and folded across processes
//! ([`SharedObject`]).

use std::time::Instant;

use serde::Serialize;

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
        }
    }

    pub fn add(&mut self, o: &ObjectMemory) {
        self.pss_bytes += o.pss_bytes;
        self.rss_bytes += o.rss_bytes;
        self.swap_bytes += o.swap_bytes;
        self.swap_pss_bytes += o.swap_pss_bytes;
        self.private_clean_bytes += o.private_clean_bytes;
        self.private_dirty_bytes += o.private_dirty_bytes;
        self.shared_clean_bytes += o.shared_clean_bytes;
        self.shared_dirty_bytes += o.shared_dirty_bytes;
    }
}

/// One object as one process maps it.
#[derive(Debug, Clone)]
pub struct ProcessObject {
    pub key: ObjectKey,
    pub label: Name,
    pub deleted: bool,
    pub memory: ObjectMemory,
    /// Mappings of the object in this process.
    pub mappings: u32,
    /// Virtual size of those mappings.
    pub mapped_bytes: u64,
}

/// One process's view, kept between runs.
#[derive(Debug, Clone)]
pub struct ProcessObjects {
    pub pid: u32,
    pub start_ticks: u64,
    pub name: Name,
    pub objects: Vec<ProcessObject>,
    /// When this process's smaps was last read.
    pub read_at: Instant,
    /// Bytes of that read.
    pub smaps_bytes: u64,
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
}

/// An object folded across processes.
#[derive(Debug, Clone)]
pub struct SharedObject {
    pub key: ObjectKey,
    pub label: Name,
    pub deleted: bool,
    pub memory: ObjectMemory,
    /// Processes mapping it.
    pub mappers: u32,
    pub mappings: u32,
    /// Every mapper with its share, largest PSS first (records show the top few).
    pub consumers: Vec<Consumer>,
}
