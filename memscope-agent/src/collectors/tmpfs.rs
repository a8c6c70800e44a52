//! `tmpfs`: every tmpfs superblock — its `size=` limit, what it has allocated, its largest files and
//! directories, and the memory no path reaches (deleted-but-open files) — plus the memfds held only by
//! file descriptors.
//!
//! Mounts come from `self/mountinfo` under the [`ProcFs`] root. Bind mounts of one superblock (same
//! `major:minor`) are one entry, walked once through the mount whose root is `/` (else the first
//! reachable one). A mount stacked under another on the same mount point (or under a hidden parent)
//! cannot be reached by path: it is reported `hidden` and neither walked nor measured. Mount points
//! are host paths, looked up under `host_root`; before anything is read through a path, its device
//! is checked against the superblock's, so a wrong `host_root` or an undetected overmount gives an
//! error on that mount rather than another filesystem's numbers.
//!
//! Records, one entity per line:
//!
//! - `{"kind":"tmpfs", "dev":"0:27", "mount_points":[…], "fs_options":"rw,size=1024k",
//!   "size_option":"1024k"|"50%"|null, "size_option_bytes", "limit_bytes", "allocated_bytes",
//!   "inodes_used", "inodes_limit", "walk_root", "walked_bytes", "walked_size_bytes",
//!   "unreachable_bytes", "files", "dirs", "hidden", "truncated", "truncated_reason", "walk_errors",
//!   "top_files":[{"path","allocated_bytes","size_bytes"}], "top_dirs":[…], "deleted_open_files",
//!   "deleted_open_bytes", "deleted_open":[{"dev","inode","name","allocated_bytes","size_bytes",
//!   "holders","holder_count"}], "error"}` keyed by dev. `limit_bytes` and `allocated_bytes` come from
//!   `statvfs` (null for an unlimited mount, a hidden one, or on error); `walked_bytes` sums the
//!   allocation (`st_blocks * 512`) of every file reachable by path, hard links once;
//!   `unreachable_bytes = allocated_bytes - walked_bytes` when the walk covered the whole filesystem
//!   (from its root, not truncated, nothing unreadable): memory of deleted-but-open files or otherwise not reachable.
//! - `{"kind":"memfd", "dev", "inode", "name":"/memfd:NAME", "allocated_bytes", "size_bytes",
//!   "holders":[pids], "holder_count"}` per memfd held by a descriptor, keyed by `dev/inode`.
//!
//! A tmpfs file that processes map is counted both in their PSS and in the mount's allocation: the
//! ledger shows mapped vs unmapped, never the sum.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fmt,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use serde::{Serialize, Serializer};

use super::{CollectCtx, CollectError, Collector, Observation, ToRecords};
use crate::{
    config::{TmpfsConfig, parse_byte_size},
    procfs::{
        FileClass, ProcFs,
        escape::Name,
        meminfo::{field, parse_meminfo},
        mountinfo::{MountInfo, option_value, parse_mountinfo},
        page_size,
    },
    records::Record,
};

pub mod fds;
pub mod walk;

pub use fds::OpenShmemFile;
pub use walk::{TopEntry, Truncation};

/// A device number (`st_dev`, mountinfo `major:minor`); serialized as `"major:minor"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    /// Splits a raw `st_dev`.
    pub fn from_st_dev(dev: u64) -> Dev {
        Dev {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl Serialize for Dev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A tmpfs `size=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOption {
    /// A size in bytes (`size=1g`, `size=65536k`, `size=4096`).
    Bytes(u64),
    /// A percentage of RAM (`size=50%`).
    Percent(u64),
}

impl SizeOption {
    /// Parses the value of `size=` (units k/m/g/t, binary, any case; or `N%`).
    pub fn parse(value: &str) -> Result<SizeOption, String> {
        match value.strip_suffix('%') {
            Some(pct) => pct
                .parse()
                .map(SizeOption::Percent)
                .map_err(|_| format!("invalid tmpfs size {value:?}")),
            None => parse_byte_size(value).map(SizeOption::Bytes),
        }
    }

    /// The limit in bytes, rounded up to whole pages as the kernel does; a percentage needs
    /// `MemTotal` (in bytes).
    pub fn bytes(self, mem_total: Option<u64>, page: u64) -> Option<u64> {
        let raw = match self {
            SizeOption::Bytes(b) => b,
            SizeOption::Percent(p) => {
                u64::try_from(u128::from(mem_total?) * u128::from(p) / 100).ok()?
            }
        };
        raw.checked_next_multiple_of(page.max(1))
    }
}

/// One tmpfs superblock and its mounts, as mountinfo shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub dev: Dev,
    /// Every mount point of the superblock, in mountinfo order.
    pub mount_points: Vec<Name>,
    /// The per-superblock options (`rw,size=1024k,mode=755`).
    pub super_options: String,
    /// The mount to walk and measure through: root `/` if any reachable mount has it, else the first
    /// reachable one. `None` when every mount is hidden.
    pub via: Option<MountInfo>,
}

impl Superblock {
    /// Every mount of the superblock is stacked under another: no path reaches it.
    pub fn hidden(&self) -> bool {
        self.via.is_none()
    }
}

/// Mounts that cannot be reached by path: stacked under another mount on the same mount point, or
/// below a mount that is (unless they are themselves the mount stacked on top).
fn hidden_mounts(mounts: &[MountInfo]) -> HashSet<u32> {
    let by_id: HashMap<u32, &MountInfo> = mounts.iter().map(|m| (m.mount_id, m)).collect();
    let covered = |m: &MountInfo| {
        mounts.iter().any(|n| {
            n.mount_id != m.mount_id && n.parent_id == m.mount_id && n.mount_point == m.mount_point
        })
    };
    // Whether the path of `m`'s mount point leads to `m`: walk up the parents. A mount stacked on
    // its parent (same mount point) shares the parent's location; any other mount needs its parent
    // to be the visible one at its mount point. Bounded by the mount count against broken cycles.
    let reachable = |start: &MountInfo| {
        if covered(start) {
            return false;
        }
        let mut m = start;
        for _ in 0..mounts.len() {
            let Some(p) = by_id.get(&m.parent_id).filter(|p| p.mount_id != m.mount_id) else {
                return true;
            };
            if p.mount_point != m.mount_point && covered(p) {
                return false;
            }
            m = p;
        }
        true
    };
    mounts
        .iter()
        .filter(|m| !reachable(m))
        .map(|m| m.mount_id)
        .collect()
}

/// Groups the tmpfs mounts of a mountinfo by superblock, in order of first appearance.
pub fn select_superblocks(mounts: &[MountInfo]) -> Vec<Superblock> {
    let hidden = hidden_mounts(mounts);
    let mut out: Vec<Superblock> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "tmpfs") {
        let dev = Dev {
            major: m.major,
            minor: m.minor,
        };
        let i = match out.iter().position(|s| s.dev == dev) {
            Some(i) => i,
            None => {
                out.push(Superblock {
                    dev,
                    mount_points: Vec::new(),
                    super_options: m.super_options.clone(),
                    via: None,
                });
                out.len() - 1
            }
        };
        let sb = &mut out[i];
        if !sb.mount_points.contains(&m.mount_point) {
            sb.mount_points.push(m.mount_point.clone());
        }
        let reachable = !hidden.contains(&m.mount_id);
        let better = match &sb.via {
            None => true,
            Some(v) => v.root.as_bytes() != b"/" && m.root.as_bytes() == b"/",
        };
        if reachable && better {
            sb.via = Some(m.clone());
        }
    }
    out
}

/// `host_root` + an absolute host path.
pub fn host_path(host_root: &Path, path: &Name) -> PathBuf {
    let rel = path.as_bytes();
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    host_root.join(std::ffi::OsStr::from_bytes(rel))
}

/// What `statvfs` says of a tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FsStat {
    /// `None` for an unlimited tmpfs (`size=0`): the kernel then reports no block counts.
    limit_bytes: Option<u64>,
    allocated_bytes: Option<u64>,
    inodes_used: Option<u64>,
    inodes_limit: Option<u64>,
}

fn statvfs(path: &Path) -> Result<FsStat, String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path holds a NUL byte", path.display()))?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{}: statvfs: {e}", path.display()));
    }
    let frsize = st.f_frsize;
    let blocks = st.f_blocks;
    let files = st.f_files;
    let (limit_bytes, allocated_bytes) = if blocks > 0 {
        (
            Some(blocks.saturating_mul(frsize)),
            Some(blocks.saturating_sub(st.f_bfree).saturating_mul(frsize)),
        )
    } else {
        (None, None)
    };
    let (inodes_used, inodes_limit) = if files > 0 {
        (Some(files.saturating_sub(st.f_ffree)), Some(files))
    } else {
        (None, None)
    };
    Ok(FsStat {
        limit_bytes,
        allocated_bytes,
        inodes_used,
        inodes_limit,
    })
}

/// The `tmpfs` record body: one superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TmpfsMount {
    pub dev: Dev,
    pub mount_points: Vec<Name>,
    pub fs_options: String,
    /// The `size=` value as written (`"50%"`, `"1g"`), if any.
    pub size_option: Option<String>,
    /// `size_option` in bytes, rounded up to pages (a percentage is of `MemTotal`).
    pub size_option_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Bytes allocated on the superblock (statvfs used blocks), files reachable or not.
    pub allocated_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
    pub inodes_limit: Option<u64>,
    /// The directory of the filesystem the walk started from (`/` unless only a bind mount of a
    /// subdirectory is reachable); null when not walked.
    pub walk_root: Option<Name>,
    /// Allocation of the files reachable by path (hard links once).
    pub walked_bytes: Option<u64>,
    /// Apparent size of the same files.
    pub walked_size_bytes: Option<u64>,
    /// `allocated_bytes - walked_bytes`, when the walk covered the whole filesystem (from its root,
    /// not truncated, no entry unreadable).
    pub unreachable_bytes: Option<u64>,
    pub files: u64,
    pub dirs: u64,
    /// Every mount of the superblock is stacked under another: not reachable by path.
    pub hidden: bool,
    pub truncated: bool,
    pub truncated_reason: Option<Truncation>,
    /// Entries the walk could not read (permission denied, I/O errors; vanished ones are skipped).
    pub walk_errors: u64,
    pub top_files: Vec<TopEntry>,
    pub top_dirs: Vec<TopEntry>,
    /// Deleted files on this superblock held open by descriptors (null when fds are not scanned).
    pub deleted_open_files: Option<u64>,
    pub deleted_open_bytes: Option<u64>,
    /// The largest of them (at most `top_files`).
    pub deleted_open: Vec<OpenShmemFile>,
    /// Why the mount could not be measured or walked.
    pub error: Option<String>,
}

/// The descriptor scan's own numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdScanSummary {
    pub pids_scanned: u32,
    /// Processes whose descriptors were not readable (permission denied).
    pub denied: u32,
}

/// The collector's complete view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TmpfsObservation {
    /// One per tmpfs superblock, in mountinfo order.
    pub mounts: Vec<TmpfsMount>,
    /// Memfds held by descriptors (sorted by dev, inode); the ledger joins them with smaps memfd
    /// objects by inode. Empty when `scan_fds` is off.
    pub memfds: Vec<OpenShmemFile>,
    /// `None` when `scan_fds` is off.
    pub fd_scan: Option<FdScanSummary>,
    /// Problems worth a line in the `snapshot` record (each names its path).
    pub warnings: Vec<String>,
}

impl TmpfsObservation {
    /// The entry of a superblock.
    pub fn mount(&self, dev: Dev) -> Option<&TmpfsMount> {
        self.mounts.iter().find(|m| m.dev == dev)
    }

    /// Allocated bytes summed over the superblocks that could be measured (hidden ones and those
    /// with an error have no `allocated_bytes` and are left out): the ledger's tmpfs total.
    pub fn measured_allocated_bytes(&self) -> u64 {
        self.mounts.iter().filter_map(|m| m.allocated_bytes).sum()
    }

    /// `(inode, allocated_bytes)` of every fd-held memfd, for a join with smaps memfd objects.
    pub fn memfd_allocations(&self) -> Vec<(u64, u64)> {
        self.memfds
            .iter()
            .map(|f| (f.inode, f.allocated_bytes))
            .collect()
    }
}

impl ToRecords for TmpfsObservation {
    fn records(&self, out: &mut Vec<Record>) {
        for m in &self.mounts {
            out.push(Record::new("tmpfs", m.dev.to_string(), m));
        }
        for f in &self.memfds {
            out.push(Record::new("memfd", format!("{}/{}", f.dev, f.inode), f));
        }
    }

    fn warnings(&self, out: &mut Vec<String>) {
        out.extend(self.warnings.iter().map(|w| format!("tmpfs: {w}")));
    }
}

/// The collector. Holds its config; keeps nothing between runs but a read buffer.
pub struct TmpfsCollector {
    config: TmpfsConfig,
    buf: Vec<u8>,
}

impl TmpfsCollector {
    /// A collector with the `[collectors.tmpfs]` settings.
    pub fn new(config: &TmpfsConfig) -> Self {
        TmpfsCollector {
            config: config.clone(),
            buf: Vec::new(),
        }
    }

    fn limits(&self) -> walk::WalkLimits {
        walk::WalkLimits {
            top_files: self.config.top_files.0 as usize,
            top_dirs: self.config.top_dirs.0 as usize,
            max_entries: u64::from(self.config.max_entries.0),
            max_duration: self.config.max_walk_time.get(),
        }
    }

    /// Measures and walks one superblock.
    fn measure(&self, sb: &Superblock, mem_total: Option<u64>) -> TmpfsMount {
        let size_value = option_value(&sb.super_options, "size").filter(|v| !v.is_empty());
        let size_option_bytes = size_value
            .and_then(|v| SizeOption::parse(v).ok())
            .and_then(|s| s.bytes(mem_total, page_size()));
        let mut m = TmpfsMount {
            dev: sb.dev,
            mount_points: sb.mount_points.clone(),
            fs_options: sb.super_options.clone(),
            size_option: size_value.map(str::to_string),
            size_option_bytes,
            limit_bytes: None,
            allocated_bytes: None,
            inodes_used: None,
            inodes_limit: None,
            walk_root: None,
            walked_bytes: None,
            walked_size_bytes: None,
            unreachable_bytes: None,
            files: 0,
            dirs: 0,
            hidden: sb.hidden(),
            truncated: false,
            truncated_reason: None,
            walk_errors: 0,
            top_files: Vec::new(),
            top_dirs: Vec::new(),
            deleted_open_files: None,
            deleted_open_bytes: None,
            deleted_open: Vec::new(),
            error: None,
        };
        let Some(via) = &sb.via else {
            return m;
        };
        let path = host_path(&self.config.host_root, &via.mount_point);
        // The path must lead to this superblock, not to whatever is mounted over it or to the
        // agent's own filesystem when host_root is wrong.
        match std::fs::metadata(&path) {
            Ok(meta) if Dev::from_st_dev(meta.dev()) == sb.dev => {}
            Ok(meta) => {
                m.error = Some(format!(
                    "{}: on device {}, not {} (mounted over, or wrong host_root)",
                    path.display(),
                    Dev::from_st_dev(meta.dev()),
                    sb.dev
                ));
                return m;
            }
            Err(e) => {
                m.error = Some(format!("{}: {e}", path.display()));
                return m;
            }
        }
        match statvfs(&path) {
            Ok(st) => {
                m.limit_bytes = st.limit_bytes;
                m.allocated_bytes = st.allocated_bytes;
                m.inodes_used = st.inodes_used;
                m.inodes_limit = st.inodes_limit;
            }
            Err(e) => {
                m.error = Some(e);
                return m;
            }
        }
        let r = walk::walk(&path, &via.mount_point, &self.limits());
        // Only a complete walk from the filesystem's root says what no path reaches.
        let whole = r.truncated.is_none() && r.errors == 0 && via.root.as_bytes() == b"/";
        m.walk_root = Some(via.root.clone());
        m.walked_bytes = Some(r.allocated_bytes);
        m.walked_size_bytes = Some(r.size_bytes);
        m.unreachable_bytes = m
            .allocated_bytes
            .filter(|_| whole)
            .map(|a| a.saturating_sub(r.allocated_bytes));
        m.files = r.files;
        m.dirs = r.dirs;
        m.truncated = r.truncated.is_some();
        m.truncated_reason = r.truncated;
        m.walk_errors = r.errors;
        m.top_files = r.top_files;
        m.top_dirs = r.top_dirs;
        if let Some(e) = r.first_error {
            m.error = Some(format!("walk: {} error(s), first: {e}", r.errors));
        }
        m
    }

    /// `MemTotal` from meminfo, read only when a `size=N%` needs it.
    fn mem_total(&mut self, procfs: &ProcFs, warnings: &mut Vec<String>) -> Option<u64> {
        let path = procfs.path("meminfo");
        match procfs.read_parsed(&path, FileClass::Meminfo, &mut self.buf, parse_meminfo) {
            Ok(fields) => field(&fields, "MemTotal"),
            Err(e) => {
                warnings.push(format!("size=N% needs MemTotal: {e}"));
                None
            }
        }
    }
}

/// Files each superblock's deleted-but-open files to its entry, keeping the `top` largest.
fn attribute_deleted(mounts: &mut [TmpfsMount], deleted: Vec<OpenShmemFile>, top: usize) {
    for m in mounts.iter_mut() {
        m.deleted_open_files = Some(0);
        m.deleted_open_bytes = Some(0);
    }
    for f in deleted {
        let Some(m) = mounts.iter_mut().find(|m| m.dev == f.dev) else {
            continue;
        };
        m.deleted_open_files = Some(m.deleted_open_files.unwrap_or(0) + 1);
        m.deleted_open_bytes = Some(m.deleted_open_bytes.unwrap_or(0) + f.allocated_bytes);
        m.deleted_open.push(f);
    }
    for m in mounts {
        m.deleted_open.sort_by(|a, b| {
            b.allocated_bytes
                .cmp(&a.allocated_bytes)
                .then(a.inode.cmp(&b.inode))
        });
        m.deleted_open.truncate(top);
    }
}

impl Collector for TmpfsCollector {
    fn name(&self) -> &'static str {
        "tmpfs"
    }

    fn collect(&mut self, ctx: &CollectCtx<'_>) -> Result<Option<Observation>, CollectError> {
        let path = ctx.procfs.path("self/mountinfo");
        let mounts =
            ctx.procfs
                .read_parsed(&path, FileClass::Mountinfo, &mut self.buf, parse_mountinfo)?;
        let superblocks = select_superblocks(&mounts);
        let mut obs = TmpfsObservation::default();
        let needs_mem_total = superblocks
            .iter()
            .any(|s| option_value(&s.super_options, "size").is_some_and(|v| v.ends_with('%')));
        let mem_total = if needs_mem_total {
            self.mem_total(ctx.procfs, &mut obs.warnings)
        } else {
            None
        };
        for sb in &superblocks {
            let m = self.measure(sb, mem_total);
            if let Some(e) = &m.error {
                obs.warnings.push(format!("{}: {e}", sb.dev));
            }
            if let Some(r) = m.truncated_reason {
                obs.warnings.push(format!(
                    "{}: walk of {} truncated ({})",
                    sb.dev,
                    sb.via
                        .as_ref()
                        .map_or_else(Default::default, |v| v.mount_point.lossy()),
                    match r {
                        Truncation::MaxEntries => "max_entries",
                        Truncation::MaxWalkTime => "max_walk_time",
                    }
                ));
            }
            obs.mounts.push(m);
        }
        if self.config.scan_fds {
            let devs: HashSet<Dev> = superblocks.iter().map(|s| s.dev).collect();
            let scan = fds::scan_fds(ctx.procfs, &devs, self.config.max_holders.0 as usize);
            attribute_deleted(
                &mut obs.mounts,
                scan.deleted,
                self.config.top_files.0 as usize,
            );
            obs.memfds = scan.memfds;
            if scan.denied > 0 {
                obs.warnings.push(format!(
                    "fd scan: {} process(es) with descriptors not readable (permission denied)",
                    scan.denied
                ));
            }
            obs.warnings
                .extend(scan.errors.iter().map(|e| format!("fd scan: {e}")));
            obs.fd_scan = Some(FdScanSummary {
                pids_scanned: scan.pids_scanned,
                denied: scan.denied,
            });
        }
        Ok(Some(Observation::Tmpfs(obs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const MOUNTINFO: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda rw
20 1 0:30 / /run rw - tmpfs tmpfs rw,size=10%
21 1 0:31 /data /srv/data rw - tmpfs tmpfs rw,size=1g
22 1 0:31 / /mnt/all rw - tmpfs tmpfs rw,size=1g
23 1 0:31 /data /var/data rw - tmpfs tmpfs rw,size=1g
24 1 0:32 /sub /only-sub rw - tmpfs tmpfs rw,size=64m
30 1 0:40 / /stacked rw - tmpfs tmpfs rw,size=4096
31 30 0:41 / /stacked rw - tmpfs tmpfs rw,size=8192
32 30 0:42 / /stacked/inner rw - tmpfs tmpfs rw,size=12k
40 1 0:50 / /ramfs rw - ramfs ramfs rw
";

    fn sbs() -> Vec<Superblock> {
        select_superblocks(&parse_mountinfo(MOUNTINFO.as_bytes()).expect("parse"))
    }

    fn dev(major: u32, minor: u32) -> Dev {
        Dev { major, minor }
    }

    #[test]
    fn bind_mounts_are_one_superblock_walked_from_its_root() {
        let s = sbs();
        let devs: Vec<String> = s.iter().map(|s| s.dev.to_string()).collect();
        assert_eq!(devs, ["0:30", "0:31", "0:32", "0:40", "0:41", "0:42"]);
        let b = &s[1];
        assert_eq!(
            b.mount_points,
            vec![
                Name::from("/srv/data"),
                Name::from("/mnt/all"),
                Name::from("/var/data")
            ]
        );
        let via = b.via.as_ref().expect("reachable");
        assert_eq!(
            (via.mount_id, via.mount_point.lossy()),
            (22, "/mnt/all".into())
        );
        // Only a subdirectory bind: walked through it.
        let via = s[2].via.as_ref().expect("reachable");
        assert_eq!(via.root, Name::from("/sub"));
    }

    #[test]
    fn stacked_mounts_and_their_children_are_hidden() {
        let s = sbs();
        let find = |d: Dev| s.iter().find(|s| s.dev == d).expect("dev");
        assert!(find(dev(0, 40)).hidden(), "mount 30 is under mount 31");
        assert!(!find(dev(0, 41)).hidden());
        assert!(find(dev(0, 42)).hidden(), "its parent is hidden");
        assert!(!find(dev(0, 30)).hidden());
        assert!(
            s.iter().all(|s| s.dev != dev(0, 50)),
            "only tmpfs is reported"
        );
    }

    #[test]
    fn fixture_shm_mounted_twice_hides_the_lower_one() {
        let m = parse_mountinfo(&fixture("proc/self/mountinfo")).expect("parse");
        let s = select_superblocks(&m);
        let shm: Vec<_> = s
            .iter()
            .filter(|s| s.mount_points == vec![Name::from("/dev/shm")])
            .collect();
        assert_eq!(shm.len(), 2);
        assert_eq!((shm[0].dev, shm[0].hidden()), (dev(0, 23), true));
        assert_eq!((shm[1].dev, shm[1].hidden()), (dev(0, 27), false));
        assert_eq!(shm[1].via.as_ref().map(|v| v.mount_id), Some(60));
        assert_eq!(s.len(), 4, "0:25, 0:28 and the two /dev/shm");
    }

    #[test]
    fn size_options_in_every_unit_and_as_percent_of_memtotal() {
        let p = 4096;
        let b = |v: &str, total| SizeOption::parse(v).expect("parse").bytes(total, p);
        assert_eq!(b("4096", None), Some(4096));
        assert_eq!(b("4000", None), Some(4096), "rounded up to a page");
        assert_eq!(b("65536k", None), Some(64 << 20));
        assert_eq!(b("64K", None), Some(64 << 10));
        assert_eq!(b("512m", None), Some(512 << 20));
        assert_eq!(b("1g", None), Some(1 << 30));
        assert_eq!(b("2G", None), Some(2 << 30));
        assert_eq!(b("50%", Some(8 << 30)), Some(4 << 30));
        assert_eq!(b("50%", None), None, "a percentage needs MemTotal");
        let fixture_total = 24_684_084 * 1024;
        assert_eq!(b("10%", Some(fixture_total)), Some(2_527_653_888));
        assert_eq!(SizeOption::parse("50%"), Ok(SizeOption::Percent(50)));
        assert!(SizeOption::parse("x%").is_err());
        assert!(SizeOption::parse("12q").is_err());
    }

    #[test]
    fn host_paths_are_under_host_root() {
        assert_eq!(
            host_path(Path::new("/"), &Name::from("/dev/shm")),
            PathBuf::from("/dev/shm")
        );
        assert_eq!(
            host_path(Path::new("/host"), &Name::from("/dev/shm")),
            PathBuf::from("/host/dev/shm")
        );
        assert_eq!(
            host_path(Path::new("/host"), &Name::new(&b"/caf\xe9"[..]))
                .as_os_str()
                .as_bytes(),
            b"/host/caf\xe9"
        );
    }

    fn collect(procfs: &ProcFs, config: &TmpfsConfig) -> TmpfsObservation {
        match TmpfsCollector::new(config).collect(&CollectCtx::once(procfs)) {
            Ok(Some(Observation::Tmpfs(o))) => o,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A fake `/proc` whose mountinfo puts a tmpfs on a directory that is not one: the device check
    /// refuses it, per mount, and the collector still reports every superblock.
    #[test]
    fn unreachable_mount_points_are_errors_per_mount() {
        let proc = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc.path().join("self")).expect("mkdir");
        std::fs::create_dir_all(host.path().join("real")).expect("mkdir");
        std::fs::write(
            proc.path().join("self/mountinfo"),
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
             2 1 0:91 / /real rw - tmpfs tmpfs rw,size=50%\n\
             3 1 0:92 / /missing rw - tmpfs tmpfs rw,size=1m\n",
        )
        .expect("write");
        std::fs::write(proc.path().join("meminfo"), "MemTotal: 1000 kB\n").expect("write");
        let config = TmpfsConfig {
            host_root: host.path().to_path_buf(),
            ..TmpfsConfig::default()
        };
        let obs = collect(&ProcFs::new(proc.path()), &config);
        assert_eq!(obs.mounts.len(), 2);
        let real = &obs.mounts[0];
        assert_eq!(real.size_option.as_deref(), Some("50%"));
        assert_eq!(
            real.size_option_bytes,
            Some(512_000u64.next_multiple_of(page_size()))
        );
        assert!(
            real.error
                .as_deref()
                .is_some_and(|e| e.contains("not 0:91")),
            "{:?}",
            real.error
        );
        assert_eq!(real.walked_bytes, None);
        let missing = &obs.mounts[1];
        assert!(
            missing
                .error
                .as_deref()
                .is_some_and(|e| e.contains("missing")),
            "{:?}",
            missing.error
        );
        assert_eq!(obs.warnings.len(), 2);
        assert_eq!(obs.fd_scan, Some(FdScanSummary::default()));
        assert_eq!(real.deleted_open_files, Some(0));

        let mut recs = Vec::new();
        obs.records(&mut recs);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].kind, recs[0].key.as_str()), ("tmpfs", "0:91"));
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", recs[0].body)).expect("json");
        assert_eq!(v["dev"], "0:91");
        assert_eq!(v["mount_points"][0], "/real");
        assert_eq!(v["hidden"], false);
        assert_eq!(v["limit_bytes"], serde_json::Value::Null);
        assert_eq!(v["truncated_reason"], serde_json::Value::Null);
    }

    /// The collector end to end on the agent's own machine, through a tempdir standing in for a
    /// tmpfs: the mountinfo names the tempdir's real device, so it is measured and walked.
    #[test]
    fn walks_a_mount_whose_device_matches() {
        let host = tempfile::tempdir().expect("tempdir");
        let dir = host.path().join("m");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("f"), vec![1u8; 16384]).expect("write");
        let d = Dev::from_st_dev(std::fs::metadata(&dir).expect("stat").dev());
        let proc = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc.path().join("self")).expect("mkdir");
        std::fs::write(
            proc.path().join("self/mountinfo"),
            format!(
                "2 1 {}:{} / /m rw - tmpfs tmpfs rw,size=1g\n",
                d.major, d.minor
            ),
        )
        .expect("write");
        let config = TmpfsConfig {
            host_root: host.path().to_path_buf(),
            scan_fds: false,
            ..TmpfsConfig::default()
        };
        let obs = collect(&ProcFs::new(proc.path()), &config);
        let m = obs.mount(d).expect("the mount");
        assert_eq!(m.error, None);
        assert!(m.limit_bytes.is_some());
        assert_eq!(
            Some(obs.measured_allocated_bytes()),
            m.allocated_bytes,
            "the one mount is measured"
        );
        assert_eq!(m.files, 1);
        assert_eq!(m.top_files[0].path, Name::from("/m/f"));
        assert_eq!(m.top_files[0].size_bytes, 16384);
        assert_eq!(m.walk_root, Some(Name::from("/")));
        assert!(m.unreachable_bytes.is_some());
        assert_eq!(m.deleted_open_files, None, "fd scan off");
        assert_eq!(obs.fd_scan, None);
    }

    #[test]
    fn deleted_files_go_to_their_superblock_largest_first() {
        let f = |d: Dev, inode, bytes| OpenShmemFile {
            dev: d,
            inode,
            name: Name::from("/dev/shm/x"),
            allocated_bytes: bytes,
            size_bytes: bytes,
            holders: vec![1],
            holder_count: 1,
        };
        let sb = Superblock {
            dev: dev(0, 27),
            mount_points: vec![],
            super_options: String::new(),
            via: None,
        };
        let c = TmpfsCollector::new(&TmpfsConfig::default());
        let mut mounts = vec![c.measure(&sb, None)];
        attribute_deleted(
            &mut mounts,
            vec![
                f(dev(0, 27), 5, 4096),
                f(dev(0, 27), 6, 8192),
                f(dev(0, 27), 7, 100),
                f(dev(0, 99), 8, 1 << 20),
            ],
            2,
        );
        let obs = TmpfsObservation {
            mounts: mounts.clone(),
            ..TmpfsObservation::default()
        };
        assert_eq!(
            obs.measured_allocated_bytes(),
            0,
            "a hidden mount is not measured"
        );
        let m = &mounts[0];
        assert!(m.hidden);
        assert_eq!(m.deleted_open_files, Some(3));
        assert_eq!(m.deleted_open_bytes, Some(4096 + 8192 + 100));
        let inodes: Vec<u64> = m.deleted_open.iter().map(|f| f.inode).collect();
        assert_eq!(inodes, [6, 5]);
    }
}
