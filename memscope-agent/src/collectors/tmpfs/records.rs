//! The `tmpfs` collector's observation and its `tmpfs` and `memfd` records.

use serde::Serialize;

use super::{OpenShmemFile, TopEntry, Truncation};
use crate::{
    collectors::{Observation, cgroup::container::Container},
    procfs::{Dev, escape::Name, mountinfo::NsRef},
    records::Record,
};

/// A mount namespace that mounts a superblock, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NsMountPoints {
    #[serde(flatten)]
    pub ns: NsRef,
    /// The container its member's cgroup path shows (null when none, or for the agent's own).
    pub container: Option<Container>,
    pub mount_points: Vec<Name>,
}

/// The `tmpfs` record body: one superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TmpfsMount {
    pub dev: Dev,
    /// `tmpfs` or `devtmpfs`.
    pub fstype: String,
    /// Mount points in the first namespace that mounts it (the agent's own when it does).
    pub mount_points: Vec<Name>,
    /// Every mount namespace that mounts it (the agent's own first, with `pid` null).
    pub namespaces: Vec<NsMountPoints>,
    /// The namespace the superblock was measured and walked in (paths in `top_files` are its mount
    /// points); null when not reached.
    pub walk_ns: Option<NsRef>,
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
    /// objects by (dev, inode). Empty when `scan_fds` is off.
    pub memfds: Vec<OpenShmemFile>,
    /// `None` when `scan_fds` is off.
    pub fd_scan: Option<FdScanSummary>,
    /// Problems worth a line in the `snapshot` record (each names its path).
    pub warnings: Vec<String>,
    /// Processes whose mount namespace was not readable, and namespaces beyond the bound: tmpfs
    /// mounts only there are not seen.
    pub namespaces_unread: NamespacesUnread,
}

/// What the namespace discovery could not read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespacesUnread {
    pub denied: u32,
    pub skipped: u32,
}

impl TmpfsObservation {
    /// The entry of a superblock.
    pub fn mount(&self, dev: Dev) -> Option<&TmpfsMount> {
        self.mounts.iter().find(|m| m.dev == dev)
    }

    /// Allocated bytes summed over the superblocks of `fstype` (`tmpfs`, `devtmpfs`) that could be
    /// measured (hidden ones and those with an error have no `allocated_bytes` and are left out):
    /// the ledger's tmpfs and devtmpfs totals.
    pub fn measured_allocated_bytes(&self, fstype: &str) -> u64 {
        self.mounts
            .iter()
            .filter(|m| m.fstype == fstype)
            .filter_map(|m| m.allocated_bytes)
            .sum()
    }

    /// Superblocks that could not be measured (hidden, or an error): their allocation is missing
    /// from [`Self::measured_allocated_bytes`].
    pub fn unmeasured(&self) -> impl Iterator<Item = &TmpfsMount> {
        self.mounts.iter().filter(|m| m.allocated_bytes.is_none())
    }
}

impl Observation for TmpfsObservation {
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
