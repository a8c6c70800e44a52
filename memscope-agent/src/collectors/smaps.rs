//! `smaps`: which *object* holds the memory. Each process's `/proc/PID/smaps` is folded into objects,
//! and objects are folded across processes into shared objects:
//!
//! | object kind | what | keyed by |
//! |---|---|---|
//! | `file` | a regular file mapping | `(dev, inode)` |
//! | `tmpfs` | a file on a tmpfs mount (`/dev/shm/…`) | `(dev, inode)` |
//! | `memfd` | `memfd_create` memory | `(dev, inode)` |
//! | `sysv` | a SysV shm segment (`/SYSV…`) | shmid (the mapping's inode) |
//! | `shared_anon` | `MAP_SHARED|MAP_ANONYMOUS` (`/dev/zero (deleted)`, `[anon_shmem:…]`) | `(dev, inode)` |
//! | `anon`, `heap`, `stack` | private anonymous memory | the kind (one object each) |
//! | `pseudo` | `[vdso]`, `[vvar]`, `anon_inode:…`, … | the label |
//!
//! The name is for display only: two files with one path (one deleted and recreated) are two objects.
//! Each object carries PSS/RSS/swap/swap PSS, clean/dirty private/shared bytes, how many processes map
//! it and its top consumers. In the records, objects below `min_object_pss` are folded into one
//! `other` row per kind so the stream stays bounded on big hosts; the observation keeps them all so
//! the ledger's sums are exact.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::debug;

use super::{CollectCtx, CollectError, Collector, Observation, ToRecords};
use crate::{
    config::SmapsConfig,
    ladder::{Ladder, Reason, TierPolicy, TierStats},
    proc_events::{Scope, Subscription},
    procfs::{
        FileClass, ProcError, ProcFs,
        counters::MemCounters,
        escape::Name,
        mountinfo::parse_mountinfo,
        page_size,
        smaps::{Mapping, MappingPath, parse_smaps},
        stat::parse_stat,
    },
    records::Record,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
        major: u32,
        minor: u32,
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
            ObjectKey::Inode {
                kind,
                major,
                minor,
                inode,
            } => format!("{}:{major}:{minor}:{inode}", kind.as_str()),
            ObjectKey::Sysv { shmid } => format!("sysv:{shmid}"),
            ObjectKey::Kind(k) => k.as_str().to_string(),
            ObjectKey::Pseudo(label) => format!("pseudo:{label}"),
        }
    }
}

/// Memory of an object, in bytes (a subset of [`MemCounters`] that is additive across processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
    fn from_counters(c: &MemCounters) -> ObjectMemory {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The `object` record body.
#[derive(Serialize)]
struct ObjectBody<'a> {
    id: String,
    object_kind: ObjectKind,
    label: &'a Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
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
#[derive(Serialize)]
pub struct Sharing<'a> {
    #[serde(flatten)]
    pub memory: &'a ObjectMemory,
    pub mappers: u32,
    pub mappings: u32,
    pub top: &'a [Consumer],
}

impl SharedObject {
    /// The object's sharing with its `top_consumers` largest consumers.
    pub fn sharing(&self, top_consumers: usize) -> Sharing<'_> {
        Sharing {
            memory: &self.memory,
            mappers: self.mappers,
            mappings: self.mappings,
            top: &self.consumers[..self.consumers.len().min(top_consumers)],
        }
    }
}

/// The `other` row of one kind: objects below the PSS floor, folded.
#[derive(Serialize)]
struct OtherBody {
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
    /// Every object, largest PSS first.
    pub objects: Vec<SharedObject>,
    /// Objects below this PSS are folded into `other` rows in the records.
    pub min_object_pss: u64,
    /// The objects given a row of their own, when the collector chose them with hysteresis (see
    /// [`SmapsCollector`]); `None`: every object at or above `min_object_pss`.
    pub own_rows: Option<HashSet<ObjectKey>>,
    /// Consumers listed per object in the records.
    pub top_consumers: usize,
    /// Processes whose smaps was read this run, and those reused from an earlier read.
    pub processes_read: u32,
    pub processes_reused: u32,
    pub vanished: u32,
    pub inaccessible: u32,
    pub errors: Vec<String>,
    /// The `smaps` tier's statistics after this run.
    pub tier: TierStats,
}

impl ObjectsObservation {
    /// Objects of one kind.
    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = &SharedObject> {
        self.objects.iter().filter(move |o| o.key.kind() == kind)
    }

    /// The record body of one object.
    pub fn object_record(&self, o: &SharedObject) -> Record {
        let (dev, inode, shmid) = match &o.key {
            ObjectKey::Inode {
                major,
                minor,
                inode,
                ..
            } => (Some(format!("{major}:{minor}")), Some(*inode), None),
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
                sharing: o.sharing(self.top_consumers),
            },
        )
    }

    /// Records for every object except those `skip` selects (the SysV ones are joined elsewhere).
    pub fn records_except(&self, out: &mut Vec<Record>, skip: impl Fn(&SharedObject) -> bool) {
        let mut others: Vec<(ObjectKind, u64, ObjectMemory)> = Vec::new();
        for o in self.objects.iter().filter(|o| !skip(o)) {
            let own_row = match &self.own_rows {
                Some(rows) => rows.contains(&o.key),
                None => o.memory.pss_bytes >= self.min_object_pss,
            };
            if own_row || o.key.kind() == ObjectKind::Sysv {
                out.push(self.object_record(o));
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

impl ToRecords for ObjectsObservation {
    fn records(&self, out: &mut Vec<Record>) {
        self.records_except(out, |_| false);
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

/// Decides the object of one mapping.
pub fn classify(m: &Mapping, tmpfs_devs: &HashSet<(u32, u32)>) -> (ObjectKey, Name, bool) {
    let inode_key = |kind| ObjectKey::Inode {
        kind,
        major: m.dev_major,
        minor: m.dev_minor,
        inode: m.inode,
    };
    match &m.path {
        MappingPath::Anonymous => {
            let kind = if m.perms.shared {
                ObjectKind::SharedAnon
            } else {
                ObjectKind::Anon
            };
            if m.perms.shared && m.inode != 0 {
                (inode_key(kind), Name::from("[shared anon]"), false)
            } else {
                (ObjectKey::Kind(kind), Name::from(kind.as_str()), false)
            }
        }
        MappingPath::Memfd { name, deleted } => {
            let mut label = b"memfd:".to_vec();
            label.extend_from_slice(name.as_bytes());
            (inode_key(ObjectKind::Memfd), Name(label), *deleted)
        }
        MappingPath::SysV { key } => (
            ObjectKey::Sysv { shmid: m.inode },
            Name(format!("SYSV{key:08x}").into_bytes()),
            true,
        ),
        MappingPath::Pseudo(p) => {
            if p == "[heap]" {
                (
                    ObjectKey::Kind(ObjectKind::Heap),
                    Name::from("[heap]"),
                    false,
                )
            } else if p == "[stack]" || p.starts_with("[stack:") {
                (
                    ObjectKey::Kind(ObjectKind::Stack),
                    Name::from("[stack]"),
                    false,
                )
            } else if p.starts_with("[anon_shmem:") {
                (
                    inode_key(ObjectKind::SharedAnon),
                    Name::from(p.as_str()),
                    false,
                )
            } else if p.starts_with("[anon:") {
                (ObjectKey::Kind(ObjectKind::Anon), Name::from("anon"), false)
            } else {
                (ObjectKey::Pseudo(p.clone()), Name::from(p.as_str()), false)
            }
        }
        MappingPath::File { path, deleted } => {
            let kind = if path.as_bytes() == b"/dev/zero" && *deleted && m.perms.shared {
                ObjectKind::SharedAnon
            } else if tmpfs_devs.contains(&(m.dev_major, m.dev_minor)) {
                ObjectKind::Tmpfs
            } else if m.inode == 0 || !path.as_bytes().starts_with(b"/") {
                // anon_inode:[…] and similar: no file identity worth keying by inode.
                return (
                    ObjectKey::Pseudo(path.lossy().into_owned()),
                    path.clone(),
                    *deleted,
                );
            } else {
                ObjectKind::File
            };
            let label = if kind == ObjectKind::SharedAnon {
                Name::from("[shared anon]")
            } else {
                path.clone()
            };
            (inode_key(kind), label, *deleted)
        }
    }
}

/// Folds one process's smaps text into its objects.
pub fn fold_process(
    text: &[u8],
    tmpfs_devs: &HashSet<(u32, u32)>,
) -> Result<Vec<ProcessObject>, crate::procfs::ParseError> {
    let mut index: HashMap<ObjectKey, usize> = HashMap::new();
    let mut objects: Vec<ProcessObject> = Vec::new();
    parse_smaps(text, |m| {
        let (key, label, deleted) = classify(&m, tmpfs_devs);
        let mem = ObjectMemory::from_counters(&m.counters);
        match index.get(&key) {
            Some(&i) => {
                let o = &mut objects[i];
                o.memory.add(&mem);
                o.mappings += 1;
                o.mapped_bytes += m.size();
            }
            None => {
                index.insert(key.clone(), objects.len());
                objects.push(ProcessObject {
                    key,
                    label,
                    deleted,
                    memory: mem,
                    mappings: 1,
                    mapped_bytes: m.size(),
                });
            }
        }
    })?;
    Ok(objects)
}

/// Folds per-process objects into shared objects, largest PSS first; consumers largest first.
pub fn fold_shared<'a>(procs: impl IntoIterator<Item = &'a ProcessObjects>) -> Vec<SharedObject> {
    let mut index: HashMap<&'a ObjectKey, usize> = HashMap::new();
    let mut shared: Vec<SharedObject> = Vec::new();
    for p in procs {
        for o in &p.objects {
            let consumer = Consumer {
                pid: p.pid,
                name: p.name.clone(),
                pss_bytes: o.memory.pss_bytes,
                rss_bytes: o.memory.rss_bytes,
            };
            match index.get(&o.key) {
                Some(&i) => {
                    let s = &mut shared[i];
                    s.memory.add(&o.memory);
                    s.mappers += 1;
                    s.mappings += o.mappings;
                    s.consumers.push(consumer);
                }
                None => {
                    index.insert(&o.key, shared.len());
                    shared.push(SharedObject {
                        key: o.key.clone(),
                        label: o.label.clone(),
                        deleted: o.deleted,
                        memory: o.memory,
                        mappers: 1,
                        mappings: o.mappings,
                        consumers: vec![consumer],
                    });
                }
            }
        }
    }
    for s in &mut shared {
        s.consumers
            .sort_by(|a, b| b.pss_bytes.cmp(&a.pss_bytes).then(a.pid.cmp(&b.pid)));
    }
    shared.sort_by(|a, b| {
        b.memory
            .pss_bytes
            .cmp(&a.memory.pss_bytes)
            .then_with(|| a.key.cmp(&b.key))
    });
    shared
}

/// Devices (major, minor) of tmpfs mounts, from `mountinfo`.
pub fn tmpfs_devices(procfs: &ProcFs, buf: &mut Vec<u8>) -> Result<HashSet<(u32, u32)>, ProcError> {
    let mounts = procfs.read_parsed(
        &procfs.path("self/mountinfo"),
        FileClass::Mountinfo,
        buf,
        parse_mountinfo,
    )?;
    Ok(mounts
        .iter()
        .filter(|m| m.fstype == "tmpfs")
        .map(|m| (m.major, m.minor))
        .collect())
}

/// Objects get a row of their own from `min_object_pss` up, and keep it until they fall below half
/// of it: an object whose PSS hovers around the floor does not flap between its own row and the
/// `other` row (which in `emit = "changes"` would send a `removed` record each time).
pub struct SmapsCollector {
    min_object_pss: u64,
    /// Objects with a row of their own in the last run.
    own_rows: HashSet<ObjectKey>,
    top_consumers: usize,
    min_change: u64,
    budget: Duration,
    ladder: Ladder,
    stats: TierStats,
    events: Subscription,
    cache: HashMap<u32, ProcessObjects>,
    buf: Vec<u8>,
}

impl SmapsCollector {
    /// `events`: this collector's subscription to the tracker's stream.
    pub fn new(config: &SmapsConfig, events: Subscription) -> Self {
        SmapsCollector {
            min_object_pss: config.min_object_pss.0,
            own_rows: HashSet::new(),
            top_consumers: config.top_consumers.0 as usize,
            min_change: config.min_change.0,
            budget: config.budget.get(),
            ladder: Ladder::new(
                TierPolicy {
                    min_change_bytes: config.min_change.0,
                    max_staleness: config.max_staleness.get(),
                    layout_changes: true,
                    scope: Scope::LAYOUT,
                },
                page_size(),
            ),
            stats: TierStats::default(),
            events,
            cache: HashMap::new(),
            buf: Vec::with_capacity(1 << 20),
        }
    }

    /// Reads one process's smaps into its objects.
    fn read_process(
        &mut self,
        procfs: &ProcFs,
        pid: u32,
        tmpfs_devs: &HashSet<(u32, u32)>,
    ) -> Result<ProcessObjects, ProcError> {
        let stat = procfs.read_parsed(
            &procfs.pid_path(pid, "stat"),
            FileClass::Other,
            &mut self.buf,
            parse_stat,
        )?;
        let path = procfs.pid_path(pid, "smaps");
        procfs.read_into(&path, FileClass::Smaps, &mut self.buf)?;
        let objects = fold_process(&self.buf, tmpfs_devs)
            .map_err(|source| ProcError::Parse { path, source })?;
        Ok(ProcessObjects {
            pid,
            start_ticks: stat.starttime_ticks,
            name: stat.comm,
            objects,
            read_at: Instant::now(),
            smaps_bytes: self.buf.len() as u64,
            reads: 1,
        })
    }

    /// How many times `pid`'s smaps was read (since it was first seen); `None` if not tracked.
    pub fn reads_of(&self, pid: u32) -> Option<u64> {
        self.cache.get(&pid).map(|p| p.reads)
    }

    /// Whether a change of `object`'s mapper set moves the other mappers' numbers enough to re-read
    /// them: always for shared memory objects (memfd, tmpfs, SysV, shared anonymous), for a file when
    /// each mapper's share moves by at least `min_change` (PSS / (m·(m+1)) for m mappers).
    fn mapper_change_matters(&self, object: &SharedObject) -> bool {
        match object.key.kind() {
            ObjectKind::Memfd | ObjectKind::Tmpfs | ObjectKind::Sysv | ObjectKind::SharedAnon => {
                true
            }
            ObjectKind::File => {
                let m = u64::from(object.mappers.max(1));
                object.memory.pss_bytes / (m * (m + 1)) >= self.min_change.max(1)
            }
            _ => false,
        }
    }
}

/// Keys of objects that processes share (private kinds never change anyone else's numbers).
fn shareable(key: &ObjectKey) -> bool {
    matches!(key, ObjectKey::Inode { .. } | ObjectKey::Sysv { .. })
}

impl Collector for SmapsCollector {
    fn name(&self) -> &'static str {
        "smaps"
    }

    fn uses_statm_pass(&self) -> bool {
        true
    }

    fn collect(&mut self, ctx: &CollectCtx<'_>) -> Result<Option<Observation>, CollectError> {
        let start = Instant::now();
        let tmpfs_devs = tmpfs_devices(ctx.procfs, &mut self.buf)?;
        let pass = ctx.statm_pass(&mut self.buf)?;
        let mut obs = ObjectsObservation {
            min_object_pss: self.min_object_pss,
            top_consumers: self.top_consumers,
            ..ObjectsObservation::default()
        };

        // Tier 1: the tracker's events, then statm of every process.
        let tier1 = self.ladder.run_tier1(&pass, &self.events.take(), start);
        // Objects whose mapper set changed: those of exited processes (and of pids now someone
        // else's), and below those gained or lost by re-read processes.
        let mut changed: HashSet<ObjectKey> = HashSet::new();
        let forgotten: HashSet<u32> = tier1.forgotten.iter().copied().collect();
        self.cache.retain(|pid, p| {
            let keep = tier1.live.contains(pid) && !forgotten.contains(pid);
            if !keep {
                changed.extend(p.objects.iter().map(|o| o.key.clone()).filter(shareable));
            }
            keep
        });

        // Tier 3: smaps where the ladder says so, within the budget.
        let mut carried = 0;
        let mut reread: HashSet<u32> = HashSet::new();
        for (pid, reason) in self.ladder.due() {
            if !ctx.unbounded && start.elapsed() >= self.budget {
                carried += 1;
                continue;
            }
            match self.read_process(ctx.procfs, pid, &tmpfs_devs) {
                Ok(mut p) => {
                    if let Some(old) = self.cache.get(&pid)
                        && old.start_ticks == p.start_ticks
                    {
                        p.reads += old.reads;
                    }
                    obs.processes_read += 1;
                    self.stats.count(reason);
                    self.ladder.done(pid, Instant::now());
                    reread.insert(pid);
                    // Against the previous read (of this process, or of the one that had its pid).
                    let old: HashSet<&ObjectKey> = self
                        .cache
                        .get(&pid)
                        .map(|old| old.objects.iter().map(|o| &o.key).collect())
                        .unwrap_or_default();
                    let new: HashSet<&ObjectKey> = p.objects.iter().map(|o| &o.key).collect();
                    changed.extend(
                        old.symmetric_difference(&new)
                            .filter(|k| shareable(k))
                            .map(|k| (*k).clone()),
                    );
                    self.cache.insert(pid, p);
                }
                Err(e) => {
                    self.ladder.done(pid, Instant::now());
                    if let Some(old) = self.cache.remove(&pid) {
                        changed.extend(old.objects.into_iter().map(|o| o.key).filter(shareable));
                    }
                    if e.is_gone() {
                        obs.vanished += 1;
                        self.ladder.forget(pid);
                    } else if e.is_denied() {
                        obs.inaccessible += 1;
                    } else {
                        debug!(pid, error = %e, "smaps read failed");
                        obs.errors.push(e.to_string());
                    }
                }
            }
        }
        obs.processes_reused = self.cache.len().saturating_sub(reread.len()) as u32;

        let mut procs: Vec<&ProcessObjects> = self.cache.values().collect();
        procs.sort_by_key(|p| p.pid);
        obs.objects = fold_shared(procs);
        let floor = self.min_object_pss;
        self.own_rows = obs
            .objects
            .iter()
            .filter(|o| {
                o.memory.pss_bytes >= floor
                    || (self.own_rows.contains(&o.key) && o.memory.pss_bytes >= floor / 2)
            })
            .map(|o| o.key.clone())
            .collect();
        obs.own_rows = Some(self.own_rows.clone());

        // The other mappers of objects that gained or lost a mapper are due next run.
        let now = Instant::now();
        let mut marks = Vec::new();
        for o in obs.objects.iter().filter(|o| changed.contains(&o.key)) {
            if self.mapper_change_matters(o) {
                marks.extend(
                    o.consumers
                        .iter()
                        .map(|c| c.pid)
                        .filter(|p| !reread.contains(p)),
                );
            }
        }
        for pid in marks {
            self.ladder.mark(pid, Reason::SharedChange, now);
        }

        self.ladder.set_run_length(start.elapsed());
        self.stats.finish_run(&self.ladder, carried, now);
        obs.tier = self.stats.clone();
        Ok(Some(Observation::Objects(obs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
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

    fn devs() -> HashSet<(u32, u32)> {
        [(0, 0x1b)].into_iter().collect()
    }

    fn proc_objects(pid: u32, name: &str, text: &str) -> ProcessObjects {
        ProcessObjects {
            pid,
            start_ticks: 1,
            name: Name::from(name),
            objects: fold_process(text.as_bytes(), &devs()).expect("parses"),
            read_at: Instant::now(),
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

    #[test]
    fn own_rows_have_hysteresis_around_the_floor() {
        let mut c = SmapsCollector::new(
            &SmapsConfig {
                min_object_pss: crate::config::ByteSize(1000 * 1024),
                ..SmapsConfig::default()
            },
            Subscription::detached(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("self")).expect("mkdir");
        std::fs::write(dir.path().join("self/mountinfo"), "").expect("mountinfo");
        std::fs::create_dir(dir.path().join("10")).expect("mkdir");
        std::fs::write(
            dir.path().join("10/stat"),
            "10 (a) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n",
        )
        .expect("stat");
        let procfs = ProcFs::new(dir.path());
        let mut run = |memfd_kb: u64| -> bool {
            std::fs::write(
                dir.path().join("10/statm"),
                format!("{memfd_kb} 1 0 0 0 0 0\n"),
            )
            .expect("statm");
            std::fs::write(
                dir.path().join("10/smaps"),
                format!("7f0000000000-7f0000400000 rw-s 00000000 00:01 77 /memfd:buf (deleted)\nRss: {memfd_kb} kB\nPss: {memfd_kb} kB\n"),
            )
            .expect("smaps");
            let obs = match c.collect(&crate::collectors::CollectCtx::once(&procfs)) {
                Ok(Some(Observation::Objects(o))) => o,
                other => panic!("unexpected {other:?}"),
            };
            let mut recs = Vec::new();
            obs.records(&mut recs);
            recs.iter().any(|r| r.key == "memfd:0:1:77")
        };
        assert!(!run(900), "below the floor, never shown: folded");
        assert!(run(1000), "at the floor: its own row");
        assert!(run(600), "dipping below the floor keeps the row");
        assert!(!run(400), "below half the floor: folded again");
        assert!(!run(900), "and needs the full floor to come back");
    }

    #[test]
    fn small_objects_fold_into_other_rows() {
        let a = proc_objects(10, "a", SMAPS);
        let obs = ObjectsObservation {
            objects: fold_shared([&a]),
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
