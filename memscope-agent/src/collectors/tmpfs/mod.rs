//! `tmpfs`: every tmpfs superblock — its `size=` limit, what it has allocated, its largest files and
//! directories, and the memory no path reaches (deleted-but-open files) — plus the memfds held only by
//! file descriptors.
//!
//! Mounts come from the mount table (`PID/mountinfo`) of one member of every mount namespace under
//! the [`ProcFs`] root (at most `[agent] max_mount_namespaces` besides the agent's own; see
//! [`crate::procfs::mountinfo::namespaces`]), so a container's own `/dev/shm` is seen too. Mounts of
//! one superblock (same `major:minor`), bind mounts and the same superblock in several namespaces,
//! are one entry, walked once through a mount whose root is `/` (the agent's own namespace first),
//! else the first reachable one. A mount stacked under another on the same mount point (or under a
//! hidden parent) cannot be reached by path: a superblock hidden in every namespace is reported
//! `hidden` and neither walked nor measured. Mount points of the agent's own namespace are looked
//! up under `host_root`, those of another namespace under `/proc/PID/root` of its member; either way
//! the mount point is resolved inside that root, following no symlink ([`resolve`]), and its device
//! is checked against the superblock's before anything is read, so a wrong `host_root`, an
//! undetected overmount or a hostile container gives an error on that mount rather than another
//! filesystem's numbers. devtmpfs (`/dev`) is measured the same way: its pages count in `Shmem`.
//!
//! Records, one entity per line:
//!
//! - `{"kind":"tmpfs", "dev":"0:27", "fstype":"tmpfs"|"devtmpfs", "mount_points":[…],
//!   "namespaces":[{"mnt_ns","pid","mount_points"}], "walk_ns":{"mnt_ns","pid"}, "fs_options":"rw,size=1024k",
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
    collections::HashSet,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{
    BuildCtx, CollectCtx, CollectError, Collector, CollectorDef, Observation,
    cgroup::container::Container, processes::CgroupOf,
};
use crate::{
    config::{Interval, Positive, parse_byte_size},
    procfs::{
        Dev, ProcFs,
        escape::Name,
        meminfo::field,
        mountinfo::{
            MountNamespaces, SharedNamespaces, Superblock, option_value, select_superblocks,
        },
        page_size,
    },
};

pub mod fds;
mod records;
pub mod resolve;
mod statvfs;
pub mod walk;

pub use fds::OpenShmemFile;
pub use records::{FdScanSummary, NamespacesUnread, NsMountPoints, TmpfsMount, TmpfsObservation};
use statvfs::statvfs;
pub use walk::{TopEntry, Truncation};

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

/// `host_root` + an absolute host path.
pub fn host_path(host_root: &Path, path: &Name) -> PathBuf {
    let rel = path.as_bytes();
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    host_root.join(std::ffi::OsStr::from_bytes(rel))
}

/// The `tmpfs` collector.
pub struct Tmpfs;

impl CollectorDef for Tmpfs {
    const NAME: &'static str = "tmpfs";
    type Config = TmpfsConfig;
    fn build(config: &TmpfsConfig, ctx: &BuildCtx<'_>) -> Box<dyn Collector> {
        Box::new(TmpfsCollector::new(config).mount_namespaces(ctx.mount_namespaces.clone()))
    }
}

/// `[collectors.tmpfs]`: every tmpfs superblock (limit, allocated, largest files and directories)
/// and the tmpfs files and memfds held open only by file descriptors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TmpfsConfig {
    pub enabled: bool,
    /// Default one minute: walks and fd scans are the costliest reads after smaps.
    pub interval: Option<Interval>,
    /// Where the host's `/` is visible to the agent (`"/host"` in a container); mount points from
    /// mountinfo are looked up under it.
    pub host_root: PathBuf,
    /// Largest files kept per mount (also bounds the deleted-but-open files listed per mount).
    pub top_files: Positive,
    /// Largest directories (by the total of their subtree) kept per mount.
    pub top_dirs: Positive,
    /// A walk stops (reported `truncated`) after this many entries…
    pub max_entries: Positive,
    /// …or after this long.
    pub max_walk_time: Interval,
    /// Scan `/proc/PID/fd` for deleted-but-open tmpfs files and memfds.
    pub scan_fds: bool,
    /// Holder pids listed per open file (all are counted).
    pub max_holders: Positive,
}

impl Default for TmpfsConfig {
    fn default() -> Self {
        TmpfsConfig {
            enabled: true,
            interval: Some(Interval(Duration::from_secs(60))),
            host_root: PathBuf::from("/"),
            top_files: Positive(20),
            top_dirs: Positive(20),
            max_entries: Positive(200_000),
            max_walk_time: Interval(Duration::from_secs(2)),
            scan_fds: true,
            max_holders: Positive(16),
        }
    }
}

section!(TmpfsConfig, |c: &TmpfsConfig| {
    if c.host_root.as_os_str().is_empty() {
        return Err((
            "host_root",
            "must not be empty (use \"/\" for the agent's own root)".to_string(),
        ));
    }
    use crate::config::bounds::{BUDGET, MAX_ENTRIES, TOP, duration, number};
    number("top_files", c.top_files.0, TOP)?;
    number("top_dirs", c.top_dirs.0, TOP)?;
    number("max_entries", c.max_entries.0, MAX_ENTRIES)?;
    duration("max_walk_time", c.max_walk_time, BUDGET)?;
    number("max_holders", c.max_holders.0, TOP)
});

/// The collector. Holds its config; keeps nothing between runs but a read buffer and the mount
/// namespaces it shares with the smaps collector.
pub struct TmpfsCollector {
    config: TmpfsConfig,
    namespaces: SharedNamespaces,
    buf: Vec<u8>,
}

impl TmpfsCollector {
    /// A collector with the `[collectors.tmpfs]` settings and the default namespace bound.
    pub fn new(config: &TmpfsConfig) -> Self {
        TmpfsCollector {
            config: config.clone(),
            namespaces: SharedNamespaces::new(
                crate::config::AgentConfig::default().max_mount_namespaces,
            ),
            buf: Vec::new(),
        }
    }

    /// Reads at most `n` mount namespaces besides the agent's own (`[agent] max_mount_namespaces`).
    pub fn max_mount_namespaces(self, n: u32) -> Self {
        self.mount_namespaces(SharedNamespaces::new(n))
    }

    /// Reads the mount namespaces through `shared` (the agent's one cache, with its bound).
    pub fn mount_namespaces(mut self, shared: SharedNamespaces) -> Self {
        self.namespaces = shared;
        self
    }

    fn limits(&self) -> walk::WalkLimits {
        walk::WalkLimits {
            top_files: self.config.top_files.0 as usize,
            top_dirs: self.config.top_dirs.0 as usize,
            max_entries: u64::from(self.config.max_entries.0),
            max_duration: self.config.max_walk_time.get(),
        }
    }

    /// Measures and walks one superblock, reaching it in the namespace of `sb.via`.
    fn measure(
        &self,
        sb: &Superblock,
        nss: &MountNamespaces,
        procfs: &ProcFs,
        containers: &[Option<Container>],
        mem_total: Option<u64>,
    ) -> TmpfsMount {
        let ns_ref = |i: usize| nss.namespaces.get(i).map(|n| n.ns).unwrap_or_default();
        let size_value = option_value(&sb.super_options, "size").filter(|v| !v.is_empty());
        let size_option_bytes = size_value
            .and_then(|v| SizeOption::parse(v).ok())
            .and_then(|s| s.bytes(mem_total, page_size()));
        let mut m = TmpfsMount {
            dev: sb.dev,
            fstype: sb.fstype.clone(),
            mount_points: sb.mount_points.clone(),
            namespaces: sb
                .namespaces
                .iter()
                .map(|n| NsMountPoints {
                    ns: ns_ref(n.ns),
                    container: containers.get(n.ns).cloned().flatten(),
                    mount_points: n.mount_points.clone(),
                })
                .collect(),
            walk_ns: None,
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
        let ns = ns_ref(via.ns);
        // The agent's own namespace through host_root; another through its member's root.
        let root = match ns.pid {
            None => self.config.host_root.clone(),
            Some(pid) => procfs.pid_path(pid, "root"),
        };
        let path = host_path(&root, &via.mount.mount_point);
        let dir = match resolve::open_mount_point(&root, &via.mount.mount_point, &path) {
            Ok(d) => d,
            Err(e) => {
                m.error = Some(e);
                return m;
            }
        };
        // The path must lead to this superblock, not to whatever is mounted over it or to the
        // agent's own filesystem when host_root is wrong.
        match rustix::fs::fstat(&dir.fd) {
            Ok(st) if Dev::from_st_dev(st.st_dev) == sb.dev => {}
            Ok(st) => {
                m.error = Some(format!(
                    "{}: on device {}, not {} (mounted over, or wrong host_root)",
                    path.display(),
                    Dev::from_st_dev(st.st_dev),
                    sb.dev
                ));
                return m;
            }
            Err(e) => {
                m.error = Some(format!("{}: {}", path.display(), std::io::Error::from(e)));
                return m;
            }
        }
        match statvfs(&dir.fd, &path) {
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
        m.walk_ns = Some(ns);
        let via = &via.mount;
        let r = walk::walk(&dir.walk_path(), &via.mount_point, &self.limits());
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
        match procfs.meminfo(&mut self.buf) {
            Ok((fields, skipped)) => {
                warnings.extend(skipped);
                field(&fields, "MemTotal")
            }
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
        m.deleted_open_bytes = Some(
            m.deleted_open_bytes
                .unwrap_or(0)
                .saturating_add(f.allocated_bytes),
        );
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
        Tmpfs::NAME
    }

    fn collect(
        &mut self,
        ctx: &CollectCtx<'_>,
    ) -> Result<Option<Box<dyn Observation>>, CollectError> {
        let nss = self.namespaces.discover(ctx.procfs, &mut self.buf)?;
        let superblocks = select_superblocks(nss.tables());
        // The container of each namespace, from its member's cgroup path.
        let mut cgroup_errors = Vec::new();
        let containers: Vec<Option<Container>> = nss
            .namespaces
            .iter()
            .map(|n| {
                n.ns.pid
                    .and_then(|pid| CgroupOf::read(ctx.procfs, pid, &mut cgroup_errors).container)
            })
            .collect();
        let mut obs = TmpfsObservation {
            warnings: nss.warnings(),
            namespaces_unread: NamespacesUnread {
                denied: nss.denied,
                skipped: nss.skipped,
            },
            ..TmpfsObservation::default()
        };
        obs.warnings.extend(cgroup_errors);
        let needs_mem_total = superblocks
            .iter()
            .any(|s| option_value(&s.super_options, "size").is_some_and(|v| v.ends_with('%')));
        let mem_total = if needs_mem_total {
            self.mem_total(ctx.procfs, &mut obs.warnings)
        } else {
            None
        };
        for sb in &superblocks {
            let m = self.measure(sb, &nss, ctx.procfs, &containers, mem_total);
            if let Some(e) = &m.error {
                obs.warnings.push(format!("{}: {e}", sb.dev));
            }
            if let Some(r) = m.truncated_reason {
                obs.warnings.push(format!(
                    "{}: walk of {} truncated ({})",
                    sb.dev,
                    sb.via
                        .as_ref()
                        .map_or_else(Default::default, |v| v.mount.mount_point.lossy()),
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
        Ok(Some(Box::new(obs)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::{collectors::Observation, procfs::mountinfo::NsRef};

    fn dev(major: u32, minor: u32) -> Dev {
        Dev { major, minor }
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
        crate::collectors::observed::<TmpfsObservation>(
            TmpfsCollector::new(config).collect(&CollectCtx::once(procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"))
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

    /// One malformed mountinfo line costs that line: the other mounts are still measured, and the
    /// skipped line is a warning naming it.
    #[test]
    fn a_malformed_mountinfo_line_is_skipped_with_a_warning() {
        let proc = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc.path().join("self")).expect("mkdir");
        std::fs::write(
            proc.path().join("self/mountinfo"),
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
             garbage line\n\
             3 1 0:92 / /missing rw - tmpfs tmpfs rw,size=1m\n",
        )
        .expect("write");
        let config = TmpfsConfig {
            host_root: host.path().to_path_buf(),
            ..TmpfsConfig::default()
        };
        let obs = collect(&ProcFs::new(proc.path()), &config);
        assert_eq!(obs.mounts.len(), 1, "the good tmpfs line is used");
        assert!(
            obs.warnings
                .iter()
                .any(|w| w.contains("mountinfo: line 2") && w.contains("skipped")),
            "{:?}",
            obs.warnings
        );
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
            Some(obs.measured_allocated_bytes("tmpfs")),
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

    /// A second mount namespace (pid 42's, with 43 in it too) that mounts a filesystem the agent's
    /// own does not: it is reached through `42/root` (here a link to a directory standing in for the
    /// container's root), measured, walked and listed with its namespace; the smaps classification
    /// sees its device as tmpfs. A superblock hidden in that namespace is reported hidden; a hostile
    /// namespace link is a warning.
    #[test]
    fn a_tmpfs_only_in_another_namespace_is_reached_through_its_root() {
        use std::os::unix::fs::symlink;
        let croot = tempfile::tempdir().expect("tempdir");
        let shm = croot.path().join("dev/shm");
        std::fs::create_dir_all(&shm).expect("mkdir");
        std::fs::write(shm.join("f"), vec![1u8; 8192]).expect("write");
        let d = Dev::from_st_dev(std::fs::metadata(&shm).expect("stat").dev());
        let proc = tempfile::tempdir().expect("tempdir");
        let add = |who: &str, ns: &str, mountinfo: &str| {
            let dir = proc.path().join(who);
            std::fs::create_dir_all(dir.join("ns")).expect("mkdir");
            symlink(ns, dir.join("ns/mnt")).expect("symlink");
            std::fs::write(dir.join("mountinfo"), mountinfo).expect("write");
        };
        add("self", "mnt:[1]", "1 0 8:1 / / rw - ext4 /dev/sda rw\n");
        let container = format!(
            "100 99 0:80 / / rw - overlay overlay rw\n\
             101 100 {}:{} / /dev/shm rw - tmpfs shm rw,size=64k\n\
             102 100 0:95 / /stacked rw - tmpfs tmpfs rw,size=4k\n\
             103 102 0:96 / /stacked rw - tmpfs tmpfs rw,size=4k\n",
            d.major, d.minor
        );
        add("42", "mnt:[2]", &container);
        add("43", "mnt:[2]", "garbage that is never read\n");
        add("44", "mnt:[", "");
        symlink(croot.path(), proc.path().join("42/root")).expect("symlink");
        let id = "3f1c2a9b8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b";
        std::fs::write(
            proc.path().join("42/cgroup"),
            format!("0::/system.slice/docker-{id}.scope\n"),
        )
        .expect("write");
        let procfs = ProcFs::new(proc.path());
        let config = TmpfsConfig {
            scan_fds: false,
            ..TmpfsConfig::default()
        };
        let obs = collect(&procfs, &config);
        let m = obs.mount(d).unwrap_or_else(|| panic!("no {d}: {obs:?}"));
        assert_eq!(m.error, None);
        assert_eq!(m.fstype, "tmpfs");
        assert_eq!(m.mount_points, vec![Name::from("/dev/shm")]);
        let ns = NsRef {
            inode: Some(2),
            pid: Some(42),
        };
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(m.namespaces[0].ns, ns);
        assert_eq!(m.namespaces[0].mount_points, vec![Name::from("/dev/shm")]);
        let c = m.namespaces[0]
            .container
            .as_ref()
            .expect("a docker container");
        assert_eq!((c.runtime, c.id.as_deref()), (Some("docker"), Some(id)));
        assert_eq!(m.walk_ns, Some(ns));
        assert_eq!(m.files, 1);
        assert_eq!(m.top_files[0].path, Name::from("/dev/shm/f"));
        assert!(obs.mount(dev(0, 95)).expect("stacked").hidden);
        assert!(!obs.mount(dev(0, 96)).expect("on top").hidden);
        assert!(
            obs.warnings.iter().any(|w| w.contains("44/ns/mnt")),
            "{:?}",
            obs.warnings
        );
        let mut recs = Vec::new();
        obs.records(&mut recs);
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", recs[0].body)).expect("json");
        assert_eq!(v["namespaces"][0]["mnt_ns"], 2);
        assert_eq!(v["namespaces"][0]["pid"], 42);
        assert_eq!(v["walk_ns"]["pid"], 42);
        assert_eq!(v["namespaces"][0]["container"]["id"], id);

        let mut buf = Vec::new();
        let (devs, _) =
            crate::collectors::smaps::tmpfs_devices(&procfs, &SharedNamespaces::new(4), &mut buf)
                .expect("devs");
        assert!(devs.contains(&d) && devs.contains(&dev(0, 95)));
        let (own_only, _) =
            crate::collectors::smaps::tmpfs_devices(&procfs, &SharedNamespaces::new(0), &mut buf)
                .expect("devs");
        assert!(
            own_only.is_empty(),
            "the agent's own namespace has no tmpfs"
        );
        // With the bound at 0, the tmpfs collector does not see it either.
        let own_only = crate::collectors::observed::<TmpfsObservation>(
            TmpfsCollector::new(&config)
                .max_mount_namespaces(0)
                .collect(&CollectCtx::once(&procfs)),
        )
        .unwrap_or_else(|e| panic!("unexpected: {e}"));
        assert!(own_only.mounts.is_empty());
    }

    #[test]
    fn deleted_files_go_to_their_superblock_largest_first() {
        let f = |d: Dev, inode, bytes| OpenShmemFile {
            dev: d,
            inode,
            name: Name::from("/dev/shm/x"),
            allocated_bytes: bytes,
            size_bytes: bytes,
            hugetlb: false,
            holders: vec![1],
            holder_count: 1,
        };
        let sb = Superblock {
            dev: dev(0, 27),
            fstype: "tmpfs".into(),
            mount_points: vec![],
            super_options: String::new(),
            namespaces: vec![],
            via: None,
        };
        let c = TmpfsCollector::new(&TmpfsConfig::default());
        let procfs = ProcFs::new("/nonexistent");
        let mut mounts = vec![c.measure(&sb, &MountNamespaces::default(), &procfs, &[], None)];
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
            obs.measured_allocated_bytes("tmpfs"),
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
