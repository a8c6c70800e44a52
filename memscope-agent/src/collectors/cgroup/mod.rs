//! `cgroup`: one record per memory cgroup — what the kernel charges it (usage, peak, limits, the
//! main `memory.stat` fields, `memory.events`, memory PSI) beside the fair share of its processes
//! (PSS, USS and swap PSS summed over the processes in it and below it, from the `processes`
//! observation at emission time).
//!
//! Both hierarchies: cgroup v2 (`memory.current`, `memory.max`, …) and the v1 memory controller
//! (`memory.usage_in_bytes`, `memory.limit_in_bytes`, …), detected under the configured root (see
//! [`detect`]). The walk of the hierarchy is bounded (depth and count), follows no symlinks, and
//! treats every name and file as hostile: file reads are bounded, non-regular files are refused,
//! names may hold any byte. A garbage or missing file gives a warning naming its path; the rest of
//! the cgroup is still reported. A cgroup removed during the walk is skipped quietly.
//!
//! The records are bounded: the root, then every cgroup with a limit or at least `min_usage`, the
//! largest first, up to `max_records`; the rest are folded into one `other` row. Reference:
//! `docs/containers.md`.

pub mod container;
pub mod oom;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation};
use crate::{
    collectors::processes::ProcessesObservation,
    config::{ByteSize, Interval, Positive},
    procfs::{
        FileClass, ParseError, ProcError, ProcFs,
        cgroup::{FlatKeyed, Psi, parse_flat_keyed, parse_limit, parse_psi, parse_u64_file},
        escape::Name,
    },
    records::Record,
};
use container::{Container, classify};

/// The `cgroup` collector.
pub struct Cgroup;

impl CollectorDef for Cgroup {
    const NAME: &'static str = "cgroup";
    type Config = CgroupConfig;
    fn build(config: &CgroupConfig, _: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(CgroupCollector::new(config))
    }
}

/// What the collector reads (the cgroup filesystem) and `/proc/PID/cgroup`, counted apart in the
/// `agent` record.
pub const CGROUP_FILES: FileClass = FileClass::new("cgroup");

/// `[collectors.cgroup]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    pub enabled: bool,
    pub interval: Option<Interval>,
    /// Where the cgroup filesystem is mounted (`/host/sys/fs/cgroup` in a container that mounts the
    /// host's elsewhere). v1 (`<root>/memory`) and v2 (`<root>`, or `<root>/unified`) are detected.
    pub root: PathBuf,
    /// Deepest level walked below the root (the root is 0).
    pub max_depth: Positive,
    /// Cgroups read per run at most; the walk stops there and says so in a warning.
    pub max_cgroups: Positive,
    /// Records sent per emission besides the root and the `other` row.
    pub max_records: Positive,
    /// A cgroup without a limit gets a row of its own only from this usage up.
    pub min_usage: ByteSize,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            enabled: true,
            interval: None,
            root: PathBuf::from("/sys/fs/cgroup"),
            max_depth: Positive(16),
            max_cgroups: Positive(10_000),
            max_records: Positive(100),
            min_usage: ByteSize(16 << 20),
        }
    }
}

section!(CgroupConfig, |c: &CgroupConfig| {
    if c.root.as_os_str().is_empty() {
        return Err(("root", "must not be empty".to_string()));
    }
    use crate::config::bounds::{CGROUP_DEPTH, MAX_CGROUPS, THRESHOLD, TOP, number};
    number("max_depth", c.max_depth.0, CGROUP_DEPTH)?;
    number("max_cgroups", c.max_cgroups.0, MAX_CGROUPS)?;
    number("max_records", c.max_records.0, TOP)?;
    number("min_usage", c.min_usage.0, THRESHOLD)
});

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Hierarchy {
    V1,
    V2,
}

/// Finds the memory controller under `root`: v1 when `root/memory/memory.usage_in_bytes` exists
/// (or `root` is itself the v1 memory mount), v2 when `root/cgroup.controllers` (or
/// `root/unified/cgroup.controllers`, the hybrid layout) lists `memory`. Returns the hierarchy and
/// the directory of its root cgroup.
pub fn detect(procfs: &ProcFs, root: &Path) -> Result<(Hierarchy, PathBuf), String> {
    for dir in [root.to_path_buf(), root.join("memory")] {
        if dir.join("memory.usage_in_bytes").is_file() {
            return Ok((Hierarchy::V1, dir));
        }
    }
    let mut buf = Vec::new();
    for dir in [root.to_path_buf(), root.join("unified")] {
        let path = dir.join("cgroup.controllers");
        if procfs
            .read_untrusted(&path, CGROUP_FILES, &mut buf, MAX_FILE_BYTES)
            .is_ok()
            && buf.split(u8::is_ascii_whitespace).any(|c| c == b"memory")
        {
            return Ok((Hierarchy::V2, dir));
        }
    }
    Err(format!(
        "{}: no memory cgroup controller (neither v1 memory/memory.usage_in_bytes nor a v2 \
         cgroup.controllers listing memory); set [collectors.cgroup] root or disable the collector",
        root.display()
    ))
}

/// No cgroup file the agent reads is near this size (`memory.stat` is about 1.5 KiB).
const MAX_FILE_BYTES: u64 = 64 << 10;
/// Warnings kept per run; the rest are counted.
const MAX_WARNINGS: usize = 20;

/// The main `memory.stat` fields, in bytes (hierarchical: the cgroup and everything below it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StatFields {
    pub anon_bytes: Option<u64>,
    /// Page cache, tmpfs and shared memory included.
    pub file_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
    /// All kernel memory (v2 `kernel`; v1 `memory.kmem.usage_in_bytes`).
    pub kernel_bytes: Option<u64>,
    pub slab_bytes: Option<u64>,
    /// Network buffers (v2 `sock`; v1 `memory.kmem.tcp.usage_in_bytes`).
    pub sock_bytes: Option<u64>,
    pub file_mapped_bytes: Option<u64>,
    pub file_dirty_bytes: Option<u64>,
    /// v2 `memory.swap.current`; v1 `total_swap` (with swap accounting).
    pub swap_bytes: Option<u64>,
}

/// `memory.events` (v2; hierarchical) or what v1 has of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Events {
    /// Times the cgroup hit its limit and the OOM killer was invoked (v2 only).
    pub oom: Option<u64>,
    /// Processes the OOM killer killed in it (v1: `memory.oom_control` `oom_kill`).
    pub oom_kill: Option<u64>,
    /// Times usage was about to pass `memory.max` (v1: `memory.failcnt`).
    pub max: Option<u64>,
    /// Times usage passed `memory.high` and was throttled (v2 only).
    pub high: Option<u64>,
}

/// One cgroup as the kernel sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupStats {
    /// `/` for the root, else `/a/b` relative to it: the path `/proc/PID/cgroup` shows.
    pub path: Name,
    pub usage_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    /// `memory.max` / `memory.limit_in_bytes`; `None`: no limit.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.high`.
    pub high_bytes: Option<u64>,
    /// v1 `memory.soft_limit_in_bytes`.
    pub soft_limit_bytes: Option<u64>,
    /// v2 `memory.swap.max`; v1 `memory.memsw.limit_in_bytes` (memory + swap).
    pub swap_limit_bytes: Option<u64>,
    pub stat: StatFields,
    pub events: Events,
    pub pressure: Option<Psi>,
}

impl CgroupStats {
    /// A cgroup at `path` with nothing read yet.
    pub fn empty(path: Name) -> CgroupStats {
        CgroupStats {
            path,
            usage_bytes: None,
            peak_bytes: None,
            limit_bytes: None,
            high_bytes: None,
            soft_limit_bytes: None,
            swap_limit_bytes: None,
            stat: StatFields::default(),
            events: Events::default(),
            pressure: None,
        }
    }

    fn has_limit(&self) -> bool {
        self.limit_bytes.is_some() || self.high_bytes.is_some()
    }
}

#[derive(Debug, Clone, Default)]
pub struct CgroupObservation {
    pub hierarchy: Option<Hierarchy>,
    /// The directory of the root cgroup (where the run found the hierarchy).
    pub base: Option<PathBuf>,
    /// Every cgroup walked, in walk order (breadth first, names sorted), the root first.
    pub cgroups: Vec<CgroupStats>,
    /// Per cgroup: whether it has a row of its own (see [`select_rows`]); the others are folded
    /// into the `other` row.
    pub own_row: Vec<bool>,
    /// The walk stopped at `max_cgroups`.
    pub truncated: bool,
    /// Problems with their paths (at most [`MAX_WARNINGS`]), and how many more there were.
    pub warnings: Vec<String>,
    pub more_warnings: usize,
}

/// Cgroups get a row of their own from `min_usage` up (or with a limit), and keep it until they
/// fall below half of it, so a cgroup hovering around the floor does not flap between its own row
/// and `other` (which in `emit = "changes"` would send a `removed` record each time).
pub struct CgroupCollector {
    config: CgroupConfig,
    /// Paths with a row of their own in the last run.
    own_rows: HashSet<Name>,
    buf: Vec<u8>,
}

impl CgroupCollector {
    pub fn new(config: &CgroupConfig) -> Self {
        CgroupCollector {
            config: config.clone(),
            own_rows: HashSet::new(),
            buf: Vec::with_capacity(4096),
        }
    }
}

impl Collector for CgroupCollector {
    fn name(&self) -> &'static str {
        Cgroup::NAME
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let (hierarchy, base) =
            detect(ctx.procfs, &self.config.root).map_err(CollectError::Other)?;
        let mut obs = CgroupObservation {
            hierarchy: Some(hierarchy),
            base: Some(base.clone()),
            ..CgroupObservation::default()
        };
        let mut reader = Reader {
            procfs: ctx.procfs,
            buf: &mut self.buf,
            obs: &mut obs,
        };
        // Breadth first; the queue never holds more than the cgroups still allowed, so a directory
        // with a million children costs no more memory than `max_cgroups` names.
        let max = self.config.max_cgroups.0 as usize;
        let mut queue: VecDeque<(Vec<u8>, u32)> = VecDeque::from([(b"/".to_vec(), 0)]);
        let mut walked = Vec::new();
        while let Some((rel, depth)) = queue.pop_front() {
            let dir = join(&base, &rel);
            let Some(stats) = reader.read_cgroup(hierarchy, &dir, &rel) else {
                continue;
            };
            walked.push(stats);
            if depth >= self.config.max_depth.0 {
                continue;
            }
            let room = max.saturating_sub(walked.len() + queue.len());
            let (names, more) = reader.subdirs(&dir, room);
            reader.obs.truncated |= more;
            for name in names {
                let mut child = rel.clone();
                if child != b"/" {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                queue.push_back((child, depth + 1));
            }
        }
        if obs.truncated {
            obs.warnings.push(format!(
                "{}: walk stopped after max_cgroups = {} cgroups",
                base.display(),
                self.config.max_cgroups.0
            ));
        }
        obs.own_row = select_rows(
            &walked,
            self.config.min_usage.0,
            self.config.max_records.0 as usize,
            &self.own_rows,
        );
        self.own_rows = walked
            .iter()
            .zip(&obs.own_row)
            .filter(|(_, own)| **own)
            .map(|(c, _)| c.path.clone())
            .collect();
        obs.cgroups = walked;
        Ok(Some(Box::new(obs)))
    }
}

/// `base` + the cgroup's relative path (`/` is `base` itself).
fn join(base: &Path, rel: &[u8]) -> PathBuf {
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(std::ffi::OsStr::from_bytes(rel))
    }
}

struct Reader<'a> {
    procfs: &'a ProcFs,
    buf: &'a mut Vec<u8>,
    obs: &'a mut CgroupObservation,
}

/// Whether a file must be there (its absence is worth a warning).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

impl Reader<'_> {
    fn warn(&mut self, message: String) {
        if self.obs.warnings.len() < MAX_WARNINGS {
            self.obs.warnings.push(message);
        } else {
            self.obs.more_warnings += 1;
        }
    }

    /// Reads and parses `dir/file`. Missing optional files (a kernel without `memory.peak`, PSI
    /// off) give `None` quietly; everything else that fails gives `None` and a warning.
    fn read<T>(
        &mut self,
        dir: &Path,
        file: &str,
        need: Need,
        parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
    ) -> Option<T> {
        let path = dir.join(file);
        let result = self
            .procfs
            .read_untrusted(&path, CGROUP_FILES, self.buf, MAX_FILE_BYTES)
            .and_then(|()| {
                parse(self.buf).map_err(|source| ProcError::Parse {
                    path: path.clone(),
                    source,
                })
            });
        match result {
            Ok(v) => Some(v),
            Err(e) if e.is_gone() && need == Need::Optional => None,
            Err(e) if e.is_gone() => {
                self.warn(format!("{}: missing", path.display()));
                None
            }
            Err(e) => {
                self.warn(e.to_string());
                None
            }
        }
    }

    /// One cgroup's files; `None` if the cgroup is gone.
    fn read_cgroup(&mut self, h: Hierarchy, dir: &Path, rel: &[u8]) -> Option<CgroupStats> {
        if !dir.is_dir() {
            return None;
        }
        let warned = (self.obs.warnings.len(), self.obs.more_warnings);
        let root = rel == b"/";
        // The v2 root has no memory.current, memory.max or memory.events (and before 5.x no
        // memory.stat).
        let at_non_root = if root { Need::Optional } else { Need::Required };
        let opt = Need::Optional;
        let mut s = CgroupStats::empty(Name::new(rel));
        let stat;
        match h {
            Hierarchy::V2 => {
                s.usage_bytes = self.read(dir, "memory.current", at_non_root, parse_u64_file);
                s.peak_bytes = self.read(dir, "memory.peak", opt, parse_u64_file);
                s.limit_bytes = self
                    .read(dir, "memory.max", at_non_root, parse_limit)
                    .flatten();
                s.high_bytes = self
                    .read(dir, "memory.high", at_non_root, parse_limit)
                    .flatten();
                s.swap_limit_bytes = self
                    .read(dir, "memory.swap.max", opt, parse_limit)
                    .flatten();
                stat = self.read(dir, "memory.stat", at_non_root, parse_flat_keyed);
                if let Some(e) = self.read(dir, "memory.events", at_non_root, parse_flat_keyed) {
                    s.events = Events {
                        oom: e.get("oom"),
                        oom_kill: e.get("oom_kill"),
                        max: e.get("max"),
                        high: e.get("high"),
                    };
                }
                let st = stat.as_ref();
                s.stat = StatFields {
                    kernel_bytes: st.and_then(|m| m.get("kernel")),
                    slab_bytes: st.and_then(|m| m.get("slab")),
                    sock_bytes: st.and_then(|m| m.get("sock")),
                    swap_bytes: self.read(dir, "memory.swap.current", opt, parse_u64_file),
                    ..stat_common(st, "")
                };
            }
            Hierarchy::V1 => {
                s.usage_bytes =
                    self.read(dir, "memory.usage_in_bytes", Need::Required, parse_u64_file);
                s.peak_bytes = self.read(dir, "memory.max_usage_in_bytes", opt, parse_u64_file);
                s.limit_bytes = self
                    .read(dir, "memory.limit_in_bytes", Need::Required, parse_limit)
                    .flatten();
                s.soft_limit_bytes = self
                    .read(dir, "memory.soft_limit_in_bytes", opt, parse_limit)
                    .flatten();
                s.swap_limit_bytes = self
                    .read(dir, "memory.memsw.limit_in_bytes", opt, parse_limit)
                    .flatten();
                stat = self.read(dir, "memory.stat", Need::Required, parse_flat_keyed);
                let oom = self.read(dir, "memory.oom_control", opt, parse_flat_keyed);
                s.events = Events {
                    oom: None,
                    oom_kill: oom.and_then(|o| o.get("oom_kill")),
                    max: self.read(dir, "memory.failcnt", opt, parse_u64_file),
                    high: None,
                };
                // `total_*` are hierarchical, like v2's memory.stat and v1's usage_in_bytes.
                let st = stat.as_ref();
                s.stat = StatFields {
                    kernel_bytes: self.read(dir, "memory.kmem.usage_in_bytes", opt, parse_u64_file),
                    slab_bytes: None,
                    sock_bytes: self.read(
                        dir,
                        "memory.kmem.tcp.usage_in_bytes",
                        opt,
                        parse_u64_file,
                    ),
                    swap_bytes: st.and_then(|m| m.get("total_swap").or_else(|| m.get("swap"))),
                    ..stat_common(st, "total_")
                };
            }
        }
        s.pressure = self.read(dir, "memory.pressure", opt, parse_psi);
        // Removed while being read: its files went missing with it; no warnings for those.
        if !dir.is_dir() {
            self.obs.warnings.truncate(warned.0);
            self.obs.more_warnings = warned.1;
            return None;
        }
        Some(s)
    }

    /// The child cgroups of `dir`, at most `limit` of them (and whether there were more):
    /// directories only (symlinks and files are not followed), sorted by name so the walk order
    /// is stable.
    fn subdirs(&mut self, dir: &Path, limit: usize) -> (Vec<Vec<u8>>, bool) {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                let e = ProcError::from_io(dir.to_path_buf(), e);
                if !e.is_gone() {
                    self.warn(e.to_string());
                }
                return (Vec::new(), false);
            }
        };
        let mut dirs = rd
            .filter_map(Result::ok)
            // `file_type` comes from the directory entry (lstat semantics): a symlink is not a dir.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().as_bytes().to_vec());
        let mut names: Vec<Vec<u8>> = dirs.by_ref().take(limit).collect();
        let more = dirs.next().is_some();
        names.sort();
        (names, more)
    }
}

/// The fields both hierarchies name alike (v1 with a `total_` prefix for the hierarchical value).
fn stat_common(stat: Option<&FlatKeyed>, prefix: &str) -> StatFields {
    let get = |v2: &str, v1: &str| {
        let key = if prefix.is_empty() {
            v2.to_string()
        } else {
            format!("{prefix}{v1}")
        };
        stat.and_then(|m| m.get(&key))
    };
    StatFields {
        anon_bytes: get("anon", "rss"),
        file_bytes: get("file", "cache"),
        shmem_bytes: get("shmem", "shmem"),
        file_mapped_bytes: get("file_mapped", "mapped_file"),
        file_dirty_bytes: get("file_dirty", "dirty"),
        ..StatFields::default()
    }
}

/// PSS, USS and swap PSS summed over the processes of a cgroup and its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FairShare {
    pub processes: u32,
    pub pss_bytes: u64,
    pub uss_bytes: u64,
    pub swap_pss_bytes: u64,
}

impl FairShare {
    // Saturating: figures from a hostile tree must not wrap.
    fn add(&mut self, m: &crate::collectors::processes::Memory) {
        self.merge(&FairShare {
            processes: 1,
            pss_bytes: m.pss_bytes,
            uss_bytes: m.uss_bytes,
            swap_pss_bytes: m.swap_pss_bytes,
        });
    }

    fn merge(&mut self, o: &FairShare) {
        self.processes = self.processes.saturating_add(o.processes);
        self.pss_bytes = self.pss_bytes.saturating_add(o.pss_bytes);
        self.uss_bytes = self.uss_bytes.saturating_add(o.uss_bytes);
        self.swap_pss_bytes = self.swap_pss_bytes.saturating_add(o.swap_pss_bytes);
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct CgroupBody<'a> {
    path: &'a Name,
    hierarchy: Option<Hierarchy>,
    usage_bytes: Option<u64>,
    peak_bytes: Option<u64>,
    limit_bytes: Option<u64>,
    high_bytes: Option<u64>,
    soft_limit_bytes: Option<u64>,
    swap_limit_bytes: Option<u64>,
    stat: &'a StatFields,
    events: &'a Events,
    pressure: Option<&'a Psi>,
    /// `None` without the processes collector.
    fair: Option<FairShare>,
    container: Option<Container>,
    unit: Option<Name>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct OtherBody {
    path: &'static str,
    /// Cgroups folded into this row.
    cgroups: u64,
    /// Usage of the folded cgroups that have no folded ancestor (their subtrees do not overlap).
    usage_bytes: u64,
    fair: Option<FairShare>,
}

impl CgroupObservation {
    /// The records, with the fair shares of `processes` when that collector runs.
    pub fn records_with(&self, processes: Option<&ProcessesObservation>, out: &mut Vec<Record>) {
        let index: HashMap<&[u8], usize> = self
            .cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| (c.path.as_bytes(), i))
            .collect();
        let kept: Vec<bool> = (0..self.cgroups.len())
            .map(|i| self.own_row.get(i).copied().unwrap_or(true))
            .collect();
        let mut fair = vec![FairShare::default(); self.cgroups.len()];
        let mut other_fair = FairShare::default();
        // Summed per cgroup first (thousands of processes, a few cgroups), then up the tree.
        let mut by_path: HashMap<&[u8], FairShare> = HashMap::new();
        for p in processes.iter().flat_map(|o| &o.processes) {
            if let Some(path) = &p.cgroup {
                by_path.entry(path.as_bytes()).or_default().add(&p.memory);
            }
        }
        for (path, share) in &by_path {
            let mut in_other = false;
            for prefix in ancestors(path) {
                if let Some(&i) = index.get(prefix) {
                    fair[i].merge(share);
                    in_other |= !kept[i];
                }
            }
            if in_other {
                other_fair.merge(share);
            }
        }
        for (i, c) in self.cgroups.iter().enumerate().filter(|(i, _)| kept[*i]) {
            let class = classify(c.path.as_bytes());
            out.push(Record::new(
                "cgroup",
                c.path.lossy().into_owned(),
                &CgroupBody {
                    path: &c.path,
                    hierarchy: self.hierarchy,
                    usage_bytes: c.usage_bytes,
                    peak_bytes: c.peak_bytes,
                    limit_bytes: c.limit_bytes,
                    high_bytes: c.high_bytes,
                    soft_limit_bytes: c.soft_limit_bytes,
                    swap_limit_bytes: c.swap_limit_bytes,
                    stat: &c.stat,
                    events: &c.events,
                    pressure: c.pressure.as_ref(),
                    fair: processes.map(|_| fair[i]),
                    container: class.container,
                    unit: class.unit,
                },
            ));
        }
        let folded: Vec<usize> = (0..self.cgroups.len()).filter(|&i| !kept[i]).collect();
        if !folded.is_empty() {
            let top_level = folded.iter().filter(|&&i| {
                let path = self.cgroups[i].path.as_bytes();
                !ancestors(path)
                    .skip(1)
                    .any(|a| index.get(a).is_some_and(|&j| !kept[j]))
            });
            out.push(Record::new(
                "cgroup",
                "other",
                &OtherBody {
                    path: "other",
                    cgroups: folded.len() as u64,
                    usage_bytes: top_level.filter_map(|&i| self.cgroups[i].usage_bytes).sum(),
                    fair: processes.map(|_| other_fair),
                },
            ));
        }
    }
}

/// Which cgroups get a row of their own: the root; then, largest usage first, up to `max_records`
/// of those with a limit, with at least `min_usage`, or with a row last run (`previous`) and still
/// at least half of `min_usage`.
pub fn select_rows(
    cgroups: &[CgroupStats],
    min_usage: u64,
    max_records: usize,
    previous: &HashSet<Name>,
) -> Vec<bool> {
    let mut own = vec![false; cgroups.len()];
    let mut candidates: Vec<usize> = Vec::new();
    for (i, c) in cgroups.iter().enumerate() {
        let usage = c.usage_bytes.unwrap_or(0);
        if c.path.as_bytes() == b"/" {
            own[i] = true;
        } else if c.has_limit()
            || usage >= min_usage
            || (previous.contains(&c.path) && usage >= min_usage / 2)
        {
            candidates.push(i);
        }
    }
    let usage = |i: usize| cgroups[i].usage_bytes.unwrap_or(0);
    candidates.sort_by(|&a, &b| {
        usage(b)
            .cmp(&usage(a))
            .then_with(|| cgroups[a].path.cmp(&cgroups[b].path))
    });
    for &i in candidates.iter().take(max_records) {
        own[i] = true;
    }
    own
}

/// Each process's memory cgroup, by pid, from the `processes` observation of the same emission:
/// for the `top_cgroups` of `object` records.
pub struct PidCgroups<'a>(HashMap<u32, &'a Name>);

/// One of an object's top cgroups: its mappers in that cgroup, and their share of the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CgroupShare<'a> {
    pub cgroup: &'a Name,
    pub processes: u32,
    pub pss_bytes: u64,
    pub rss_bytes: u64,
}

impl<'a> PidCgroups<'a> {
    pub fn new(processes: &'a ProcessesObservation) -> Self {
        PidCgroups(
            processes
                .processes
                .iter()
                .filter_map(|p| Some((p.pid, p.cgroup.as_ref()?)))
                .collect(),
        )
    }

    /// The `n` cgroups whose processes hold the largest PSS of an object mapped by `consumers`
    /// (`(pid, pss, rss)`), largest first; mappers of unknown cgroup are left out.
    pub fn top(
        &self,
        consumers: impl IntoIterator<Item = (u32, u64, u64)>,
        n: usize,
    ) -> Vec<CgroupShare<'a>> {
        let mut by: HashMap<&'a Name, CgroupShare<'a>> = HashMap::new();
        for (pid, pss, rss) in consumers {
            let Some(&cgroup) = self.0.get(&pid) else {
                continue;
            };
            let e = by.entry(cgroup).or_insert(CgroupShare {
                cgroup,
                processes: 0,
                pss_bytes: 0,
                rss_bytes: 0,
            });
            e.processes += 1;
            e.pss_bytes += pss;
            e.rss_bytes += rss;
        }
        let mut v: Vec<CgroupShare<'a>> = by.into_values().collect();
        v.sort_by(|a, b| {
            b.pss_bytes
                .cmp(&a.pss_bytes)
                .then_with(|| a.cgroup.cmp(b.cgroup))
        });
        v.truncate(n);
        v
    }
}

/// `/a/b/c`, `/a/b`, `/a`, `/`.
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let cur = next?;
        next = match cur.iter().rposition(|&b| b == b'/') {
            _ if cur == b"/" || cur.is_empty() => None,
            Some(0) => Some(&b"/"[..]),
            Some(i) => Some(&cur[..i]),
            None => None,
        };
        Some(cur)
    })
}

impl Observation for CgroupObservation {
    fn records(&self, out: &mut Vec<Record>) {
        self.records_with(None, out);
    }

    fn warnings(&self, out: &mut Vec<String>) {
        out.extend(self.warnings.iter().map(|w| format!("cgroup: {w}")));
        if self.more_warnings > 0 {
            out.push(format!("cgroup: {} more warning(s)", self.more_warnings));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::processes::{Memory, Numbers, ProcessRecord, Subtree, listed};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cgroup")
    }

    fn config(root: &Path) -> CgroupConfig {
        CgroupConfig {
            root: root.to_path_buf(),
            ..CgroupConfig::default()
        }
    }

    fn collect(config: &CgroupConfig) -> Result<CgroupObservation, CollectError> {
        let procfs = ProcFs::new("/nonexistent");
        let run = CgroupCollector::new(config).collect(&CollectCtx::once(&procfs));
        if let Err(e) = run {
            return Err(e);
        }
        Ok(crate::collectors::observed::<CgroupObservation>(run)
            .unwrap_or_else(|e| panic!("unexpected: {e}")))
    }

    fn find<'a>(obs: &'a CgroupObservation, path: &str) -> &'a CgroupStats {
        obs.cgroups
            .iter()
            .find(|c| c.path.as_bytes() == path.as_bytes())
            .unwrap_or_else(|| panic!("no cgroup {path}"))
    }

    fn records(
        obs: &CgroupObservation,
        p: Option<&ProcessesObservation>,
    ) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        obs.records_with(p, &mut out);
        out.iter()
            .map(|r| serde_json::from_str(&format!("{{{}}}", r.body)).expect("json"))
            .collect()
    }

    const DOCKER: &str = "/system.slice/docker-3f1c9a0e5b2d4c6f8a7e9b1d0c2f4e6a8b0d2c4e6f8a0b2c4d6e8f0a1b3c5d7e9f.scope";

    #[test]
    fn v2_fixture_tree_with_events_and_pressure() {
        let obs = collect(&config(&fixtures().join("v2"))).expect("collects");
        assert_eq!(obs.hierarchy, Some(Hierarchy::V2));
        assert_eq!(
            obs.cgroups.len(),
            10,
            "the root, 8 cgroups and broken.slice"
        );
        // The root has no memory.current/max/events in v2: no warning for those.
        let root = find(&obs, "/");
        assert_eq!(root.usage_bytes, None);
        assert_eq!(root.stat.anon_bytes, Some(405_159_936));
        assert_eq!(
            root.pressure.and_then(|p| p.full).map(|f| f.total_us),
            Some(20117)
        );
        let d = find(&obs, DOCKER);
        assert_eq!(d.usage_bytes, Some(268_369_920));
        assert_eq!(d.peak_bytes, Some(268_435_456));
        assert_eq!(d.limit_bytes, Some(256 << 20));
        assert_eq!(d.high_bytes, None, "memory.high is max");
        assert_eq!(d.swap_limit_bytes, None);
        assert_eq!(
            d.stat,
            StatFields {
                anon_bytes: Some(230_686_720),
                file_bytes: Some(33_554_432),
                shmem_bytes: Some(1_048_576),
                kernel_bytes: Some(4_128_768),
                slab_bytes: Some(2_097_152),
                sock_bytes: Some(65_536),
                file_mapped_bytes: Some(16_777_216),
                file_dirty_bytes: Some(0),
                swap_bytes: Some(4_194_304),
            }
        );
        assert_eq!(
            d.events,
            Events {
                oom: Some(2),
                oom_kill: Some(1),
                max: Some(412),
                high: Some(0)
            }
        );
        let psi = d.pressure.expect("pressure");
        assert_eq!(
            psi.some.map(|s| (s.avg10, s.avg60, s.total_us)),
            Some((4.31, 1.27, 2_413_000))
        );
        assert_eq!(psi.full.map(|s| s.avg10), Some(2.02));
        let c = find(
            &obs,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b5e1a52_0c4f_4f8e_9d2a_7c3b1e0f9a84.slice/cri-containerd-9e0f5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918070f6e5d4c3b2a190.scope",
        );
        assert_eq!(c.high_bytes, Some(768 << 20));
        assert_eq!(c.events.high, Some(3));
    }

    #[test]
    fn garbage_and_missing_files_are_warnings_naming_the_path() {
        let obs = collect(&config(&fixtures().join("v2"))).expect("collects");
        let broken = find(&obs, "/broken.slice");
        assert_eq!(broken.usage_bytes, None);
        assert_eq!(broken.stat, StatFields::default());
        let mut w = Vec::new();
        obs.warnings(&mut w);
        let has = |needle: &str| w.iter().any(|x| x.contains(needle));
        assert!(
            has("broken.slice/memory.current: line 1: value: bad value \"not-a-number\""),
            "{w:?}"
        );
        assert!(
            has("broken.slice/memory.stat: line 2: file: bad value"),
            "{w:?}"
        );
        assert!(has("broken.slice/memory.events: missing"), "{w:?}");
        // Optional files (peak, pressure, swap) missing give no warning; the good cgroups none at all.
        assert!(
            !has("memory.peak") && !has("memory.pressure") && !has("swap"),
            "{w:?}"
        );
        assert!(w.iter().all(|x| x.contains("broken.slice")), "{w:?}");
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn v1_capture_from_this_machine() {
        let obs = collect(&config(&fixtures().join("v1"))).expect("collects");
        assert_eq!(obs.hierarchy, Some(Hierarchy::V1));
        assert!(obs.warnings.is_empty(), "{:?}", obs.warnings);
        let root = find(&obs, "/");
        assert_eq!(root.limit_bytes, None, "9223372036854771712 is no limit");
        let c = find(&obs, "/memscope-fixture");
        let read = |f: &str| {
            let t = std::fs::read(fixtures().join("v1/memory/memscope-fixture").join(f))
                .expect("fixture");
            parse_u64_file(&t).expect("number")
        };
        assert_eq!(c.usage_bytes, Some(read("memory.usage_in_bytes")));
        assert_eq!(c.peak_bytes, Some(read("memory.max_usage_in_bytes")));
        assert_eq!(c.limit_bytes, Some(64 << 20));
        assert_eq!(c.soft_limit_bytes, Some(32 << 20));
        assert_eq!(c.stat.anon_bytes, Some(8_392_704), "total_rss");
        assert_eq!(
            c.stat.kernel_bytes,
            Some(read("memory.kmem.usage_in_bytes"))
        );
        assert_eq!(c.events.oom_kill, Some(0));
        assert_eq!(c.events.max, Some(read("memory.failcnt")));
        assert_eq!(c.events.oom, None);
    }

    #[test]
    fn a_root_without_a_memory_controller_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io pids\n").expect("write");
        let e = collect(&config(dir.path())).expect_err("no memory controller");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        // The hybrid layout: v2 under <root>/unified.
        std::fs::create_dir(dir.path().join("unified")).expect("mkdir");
        std::fs::write(
            dir.path().join("unified/cgroup.controllers"),
            "memory pids\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("unified/memory.stat"), "anon 1\n").expect("write");
        let obs = collect(&config(dir.path())).expect("collects");
        assert_eq!(obs.hierarchy, Some(Hierarchy::V2));
        assert_eq!(find(&obs, "/").stat.anon_bytes, Some(1));
    }

    /// A v2 cgroup directory with the required files.
    fn cgroup_dir(dir: &Path, usage: u64) {
        std::fs::create_dir_all(dir).expect("mkdir");
        for (f, v) in [
            ("memory.current", usage.to_string()),
            ("memory.max", "max".to_string()),
            ("memory.high", "max".to_string()),
            ("memory.stat", format!("anon {usage}\n")),
            ("memory.events", "oom 0\n".to_string()),
        ] {
            std::fs::write(dir.join(f), v).expect("write");
        }
    }

    #[test]
    fn hostile_trees_symlinks_fifos_huge_files_names_depth_and_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("cgroup.controllers"), "memory\n").expect("write");
        std::fs::write(root.join("memory.stat"), "anon 1\n").expect("write");
        // A symlinked "cgroup" pointing elsewhere is not followed.
        let outside = tempfile::tempdir().expect("tempdir");
        cgroup_dir(outside.path(), 1 << 40);
        std::os::unix::fs::symlink(outside.path(), root.join("link.slice")).expect("symlink");
        // A cgroup whose memory.current is a symlink, one whose memory.stat is a FIFO (would block
        // a plain read), one whose memory.stat is huge.
        cgroup_dir(&root.join("a"), 10);
        std::fs::remove_file(root.join("a/memory.current")).expect("rm");
        std::os::unix::fs::symlink(
            outside.path().join("memory.current"),
            root.join("a/memory.current"),
        )
        .expect("symlink");
        cgroup_dir(&root.join("b"), 20);
        std::fs::remove_file(root.join("b/memory.stat")).expect("rm");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("b/memory.stat"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        cgroup_dir(&root.join("c"), 30);
        std::fs::write(root.join("c/memory.stat"), "anon 1\n".repeat(20_000)).expect("write");
        // A name that is not UTF-8, and a chain deeper than max_depth.
        cgroup_dir(&root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), 40);
        let mut deep = root.join("d");
        for _ in 0..5 {
            cgroup_dir(&deep, 1);
            deep = deep.join("d");
        }
        let mut cfg = config(root);
        cfg.max_depth = Positive(3);
        cfg.min_usage = ByteSize(0);
        let obs = collect(&cfg).expect("collects");
        let paths: Vec<String> = obs
            .cgroups
            .iter()
            .map(|c| c.path.lossy().into_owned())
            .collect();
        assert!(!paths.iter().any(|p| p.contains("link")), "{paths:?}");
        assert!(
            paths.contains(&"/d/d/d".to_string()) && !paths.contains(&"/d/d/d/d".to_string()),
            "{paths:?}"
        );
        assert_eq!(find(&obs, "/a").usage_bytes, None);
        assert_eq!(find(&obs, "/b").stat.anon_bytes, None);
        assert_eq!(find(&obs, "/c").stat.anon_bytes, None);
        let recs = records(&obs, None);
        let cafe = recs
            .iter()
            .find(|r| r["path"]["bytes"] == "L2NhZuk=")
            .expect("lossless name");
        assert_eq!(cafe["usage_bytes"], 40);
        let w = obs.warnings.join("\n");
        assert!(w.contains("a/memory.current"), "{w}");
        assert!(w.contains("b/memory.stat: not a regular file"), "{w}");
        assert!(w.contains("c/memory.stat: larger than 65536 bytes"), "{w}");
        // The count bound.
        cfg.max_cgroups = Positive(3);
        let obs = collect(&cfg).expect("collects");
        assert_eq!(obs.cgroups.len(), 3);
        assert!(obs.truncated);
        assert!(
            obs.warnings.iter().any(|w| w.contains("max_cgroups = 3")),
            "{:?}",
            obs.warnings
        );
    }

    fn process(pid: u32, cgroup: &str, pss: u64) -> ProcessRecord {
        ProcessRecord {
            pid,
            ppid: 1,
            name: Name::from("p"),
            cmdline: Name::default(),
            uid: Some(0),
            user: None,
            state: "S".into(),
            threads: 1,
            start_ticks: 1,
            kernel_thread: false,
            cgroup: Some(Name::from(cgroup)),
            container: None,
            unit: None,
            numbers: Numbers::Exact,
            memory: Memory {
                pss_bytes: pss,
                uss_bytes: pss / 2,
                swap_pss_bytes: 1,
                ..Memory::default()
            },
            subtree: Subtree::default(),
        }
    }

    #[test]
    fn fair_shares_sum_processes_below_each_cgroup_and_small_ones_fold_into_other() {
        let mut cfg = config(&fixtures().join("v2"));
        cfg.max_records = Positive(3);
        cfg.min_usage = ByteSize(100 << 20);
        let obs = collect(&cfg).expect("collects");
        let procs = ProcessesObservation {
            processes: listed(vec![
                process(10, DOCKER, 1000),
                process(11, DOCKER, 500),
                process(12, "/system.slice/sshd.service", 70),
                process(13, "/user.slice/user-1000.slice/session-1.scope", 9),
                process(14, "/not/walked", 3),
            ]),
            ..ProcessesObservation::default()
        };
        let recs = records(&obs, Some(&procs));
        let paths: Vec<&str> = recs
            .iter()
            .map(|r| r["path"].as_str().unwrap_or("?"))
            .collect();
        // Records in walk order: the root, then of those with a limit or >= 100 MiB the 3 largest:
        // system.slice (1.3 GiB), then three of 512 MiB by path (kubepods.slice and
        // kubepods-burstable.slice make it, the pod slice does not); docker (limited, 256 MiB)
        // misses the cut; sshd and user.slice are small and have no limit.
        assert_eq!(
            paths,
            vec![
                "/",
                "/kubepods.slice",
                "/system.slice",
                "/kubepods.slice/kubepods-burstable.slice",
                "other"
            ]
        );
        let by = |p: &str| {
            recs.iter()
                .find(|r| r["path"] == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        assert_eq!(by("/")["fair"]["processes"], 5);
        assert_eq!(by("/")["fair"]["pss_bytes"], 1000 + 500 + 70 + 9 + 3);
        assert_eq!(by("/system.slice")["fair"]["pss_bytes"], 1570);
        assert_eq!(by("/system.slice")["fair"]["uss_bytes"], 500 + 250 + 35);
        assert_eq!(by("/system.slice")["fair"]["swap_pss_bytes"], 3);
        assert_eq!(by("/kubepods.slice")["fair"]["processes"], 0);
        // Folded: the pod slice and its container, docker, sshd, user.slice and broken.slice.
        // Processes below any of them count once in `other`; its usage counts each folded subtree
        // once (the container is inside the folded pod slice; broken.slice has no usage).
        let other = by("other");
        assert_eq!(other["cgroups"], 6);
        assert_eq!(other["fair"]["processes"], 4);
        assert_eq!(other["fair"]["pss_bytes"], 1000 + 500 + 70 + 9);
        assert_eq!(
            other["usage_bytes"],
            536_870_912_u64 + 268_369_920 + 7_340_032 + 8_388_608
        );
        // Without the processes collector: no fair shares at all, rather than zeros.
        let recs = records(&obs, None);
        assert!(recs.iter().all(|r| r["fair"].is_null()));
        // Container fields come from the path.
        let all = {
            let mut cfg = cfg.clone();
            cfg.max_records = Positive(100);
            cfg.min_usage = ByteSize(0);
            records(&collect(&cfg).expect("collects"), None)
        };
        let d = all
            .iter()
            .find(|r| r["path"] == DOCKER)
            .expect("docker row");
        assert_eq!(d["container"]["runtime"], "docker");
        assert_eq!(d["unit"], DOCKER.rsplit('/').next().expect("name"));
        assert_eq!(d["pressure"]["some"]["total_us"], 2_413_000);
    }

    #[test]
    fn config_section_parses_and_names_bad_keys() {
        use crate::config::Config;
        let c = Config::parse(
            "[collectors.cgroup]\nroot = \"/host/sys/fs/cgroup\"\nmax_records = 5\nmin_usage = \"1MiB\"\n",
            "x",
        )
        .expect("parses");
        let g = &c.collectors.cgroup;
        assert_eq!(g.root, PathBuf::from("/host/sys/fs/cgroup"));
        assert_eq!(
            (g.max_records, g.min_usage),
            (Positive(5), ByteSize(1 << 20))
        );
        assert_eq!(g.max_depth, CgroupConfig::default().max_depth);
        let e = Config::parse("[collectors.cgroup]\nmax_recordz = 5\n", "x").expect_err("bad key");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("collectors.cgroup.max_recordz"))
        );
        let e = Config::parse("[collectors.cgroup]\n\nroot = \"\"\n", "x").expect_err("empty root");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("collectors.cgroup.root"))
        );
        let e = Config::parse("[collectors.cgroup]\nmax_depth = 0\n", "x").expect_err("zero depth");
        assert_eq!(e.key.as_deref(), Some("collectors.cgroup.max_depth"));
    }

    #[test]
    fn rows_have_hysteresis_around_the_usage_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.controllers"), "memory\n").expect("write");
        std::fs::write(dir.path().join("memory.stat"), "anon 1\n").expect("write");
        let mut cfg = config(dir.path());
        cfg.min_usage = ByteSize(1000);
        let procfs = ProcFs::new("/nonexistent");
        let mut c = CgroupCollector::new(&cfg);
        let mut run = |usage: u64| {
            cgroup_dir(&dir.path().join("s"), usage);
            let o = crate::collectors::observed::<CgroupObservation>(
                c.collect(&CollectCtx::once(&procfs)),
            )
            .unwrap_or_else(|e| panic!("unexpected: {e}"));
            let i = o
                .cgroups
                .iter()
                .position(|c| c.path.as_bytes() == b"/s")
                .expect("/s");
            o.own_row[i]
        };
        assert!(!run(900), "below the floor, never had a row: folded");
        assert!(run(1000), "at the floor: its own row");
        assert!(run(600), "above half the floor: keeps its row");
        assert!(!run(400), "below half the floor: folded again");
        assert!(!run(900), "and needs the full floor to come back");
    }

    #[test]
    fn an_objects_top_cgroups_group_its_mappers_by_cgroup() {
        let procs = ProcessesObservation {
            processes: listed(vec![
                process(1, "/a", 0),
                process(2, "/a", 0),
                process(3, "/b", 0),
                process(4, "/c", 0),
            ]),
            ..ProcessesObservation::default()
        };
        let mut no_cgroup = process(5, "/", 0);
        no_cgroup.cgroup = None;
        let procs = ProcessesObservation {
            processes: [procs.processes, listed(vec![no_cgroup])].concat(),
            ..procs
        };
        let map = PidCgroups::new(&procs);
        // pid 9 is not a known process, pid 5 has no cgroup: both left out.
        let top = map.top(
            [
                (1, 10, 20),
                (2, 15, 30),
                (3, 40, 40),
                (4, 1, 1),
                (5, 99, 99),
                (9, 99, 99),
            ],
            2,
        );
        let a = Name::from("/a");
        let b = Name::from("/b");
        assert_eq!(
            top,
            vec![
                CgroupShare {
                    cgroup: &b,
                    processes: 1,
                    pss_bytes: 40,
                    rss_bytes: 40
                },
                CgroupShare {
                    cgroup: &a,
                    processes: 2,
                    pss_bytes: 25,
                    rss_bytes: 50
                },
            ]
        );
    }

    #[test]
    fn ancestors_of_a_path() {
        let v: Vec<&[u8]> = ancestors(b"/a/b").collect();
        assert_eq!(v, vec![&b"/a/b"[..], b"/a", b"/"]);
        assert_eq!(ancestors(b"/").count(), 1);
    }
}
