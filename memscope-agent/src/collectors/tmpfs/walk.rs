//! A bounded walk of one filesystem tree: how many bytes its files hold, and its largest files and
//! directories.
//!
//! The walk never follows symlinks and never leaves the filesystem of its root; a file with several
//! hard links is counted once (by inode). Memory stays bounded whatever the tree: only the top N files
//! and directories are kept (min-heaps), and directory totals are computed with a stack of the
//! directories open on the current depth-first path, never the whole tree. A budget (entries and
//! time) stops the walk early; the result then says `truncated` and why.
//!
//! Nothing here depends on tmpfs: tests walk temporary directories on any filesystem.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;
use walkdir::WalkDir;

use crate::procfs::escape::Name;

/// What bounds a walk.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub top_files: usize,
    pub top_dirs: usize,
    /// Entries (files, directories, symlinks…; the root included) before the walk stops.
    pub max_entries: u64,
    pub max_duration: Duration,
}

/// Why a walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    MaxEntries,
    MaxWalkTime,
}

/// One of the largest files or directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TopEntry {
    pub path: Name,
    /// Bytes the filesystem allocated (`st_blocks * 512`; for a directory, over its subtree).
    pub allocated_bytes: u64,
    /// Apparent size (`st_size`; for a directory, over the files of its subtree).
    pub size_bytes: u64,
}

/// The outcome of a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkResult {
    /// Allocated bytes of every distinct non-directory inode reached.
    pub allocated_bytes: u64,
    /// Apparent size of the same inodes.
    pub size_bytes: u64,
    /// Distinct non-directory inodes (regular files, symlinks, sockets…).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Entries seen (the budget counts these).
    pub entries: u64,
    /// Largest first.
    pub top_files: Vec<TopEntry>,
    /// Largest first, by the total of the subtree; the root itself is not listed (its total is
    /// `allocated_bytes`).
    pub top_dirs: Vec<TopEntry>,
    pub truncated: Option<Truncation>,
    /// Entries that could not be read (permission denied, I/O errors). Entries removed while the
    /// walk ran are skipped quietly.
    pub errors: u64,
    /// The first such error, with its path.
    pub first_error: Option<String>,
}

/// Keeps the `n` largest items seen, by (bytes, then path for a stable order).
struct TopN {
    n: usize,
    heap: BinaryHeap<Reverse<(u64, Name, u64)>>,
}

impl TopN {
    fn new(n: usize) -> TopN {
        TopN {
            n,
            heap: BinaryHeap::with_capacity(n.saturating_add(1).min(4096)),
        }
    }

    /// Whether an item of `bytes` would make it in (so its path is only built when needed).
    fn wants(&self, bytes: u64) -> bool {
        if self.n == 0 {
            return false;
        }
        self.heap.len() < self.n || self.heap.peek().is_some_and(|Reverse(m)| bytes > m.0)
    }

    fn push(&mut self, bytes: u64, path: Name, size: u64) {
        self.heap.push(Reverse((bytes, path, size)));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    fn into_sorted(self) -> Vec<TopEntry> {
        let mut v: Vec<_> = self.heap.into_iter().map(|Reverse(t)| t).collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        v.into_iter()
            .map(|(allocated_bytes, path, size_bytes)| TopEntry {
                path,
                allocated_bytes,
                size_bytes,
            })
            .collect()
    }
}

/// A directory on the current depth-first path, accumulating its subtree.
struct OpenDir {
    depth: usize,
    path: Name,
    allocated: u64,
    size: u64,
}

/// `label` + the part of `path` below `root`: how paths are reported (the mount point's host path,
/// not the path the agent reached it by).
fn display_path(label: &Name, root: &Path, path: &Path) -> Name {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .as_os_str()
        .as_bytes();
    let mut out = label.0.clone();
    if !rel.is_empty() {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rel);
    }
    Name(out)
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Walks `root`, reporting paths as `label` followed by the path below `root`.
pub fn walk(root: &Path, label: &Name, limits: &WalkLimits) -> WalkResult {
    let start = Instant::now();
    let mut r = WalkResult::default();
    let mut top_files = TopN::new(limits.top_files);
    let mut top_dirs = TopN::new(limits.top_dirs);
    let mut stack: Vec<OpenDir> = Vec::new();
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut root_dev = None;

    // Closes the directories at `depth` or deeper, adding each one's total to its parent.
    let close = |stack: &mut Vec<OpenDir>, top_dirs: &mut TopN, depth: usize| {
        while stack.last().is_some_and(|d| d.depth >= depth) {
            let Some(d) = stack.pop() else { break };
            if let Some(parent) = stack.last_mut() {
                parent.allocated = parent.allocated.saturating_add(d.allocated);
                parent.size = parent.size.saturating_add(d.size);
            }
            if d.depth > 0 && top_dirs.wants(d.allocated) {
                top_dirs.push(d.allocated, d.path, d.size);
            }
        }
    };

    let walker = WalkDir::new(root)
        .follow_links(false)
        .same_file_system(true);
    for entry in walker {
        if r.entries >= limits.max_entries {
            r.truncated = Some(Truncation::MaxEntries);
            break;
        }
        if r.entries % 64 == 0 && start.elapsed() >= limits.max_duration {
            r.truncated = Some(Truncation::MaxWalkTime);
            break;
        }
        r.entries += 1;
        let entry = match entry {
            Ok(e) => e,
            // Removed between listing and stat: nothing left to count, not a problem.
            Err(e) if e.depth() > 0 && e.io_error().is_some_and(is_not_found) => continue,
            Err(e) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(e.to_string());
                }
                continue;
            }
        };
        // `symlink_metadata`: walkdir does not follow links here, except the root, which may be
        // a link (`/proc/self/fd/N` of an opened mount point) that walkdir descends through.
        // An error is `None` when the entry vanished meanwhile: nothing left to count.
        let meta = if entry.depth() == 0 {
            std::fs::metadata(entry.path())
                .map_err(|e| (!is_not_found(&e)).then(|| format!("{}: {e}", root.display())))
        } else {
            entry
                .metadata()
                .map_err(|e| (!e.io_error().is_some_and(is_not_found)).then(|| e.to_string()))
        };
        let meta = match meta {
            Ok(m) => m,
            Err(None) => continue,
            Err(Some(e)) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(e);
                }
                continue;
            }
        };
        let dev = *root_dev.get_or_insert(meta.dev());
        if meta.dev() != dev {
            // The root of another filesystem mounted below: walkdir does not descend into it, and
            // it is not ours to count.
            continue;
        }
        let depth = entry.depth();
        close(&mut stack, &mut top_dirs, depth);
        if meta.is_dir() {
            r.dirs += 1;
            stack.push(OpenDir {
                depth,
                path: display_path(label, root, entry.path()),
                allocated: 0,
                size: 0,
            });
            continue;
        }
        if meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let allocated = meta.blocks().saturating_mul(512);
        let size = meta.size();
        r.files += 1;
        r.allocated_bytes = r.allocated_bytes.saturating_add(allocated);
        r.size_bytes = r.size_bytes.saturating_add(size);
        if let Some(d) = stack.last_mut() {
            d.allocated = d.allocated.saturating_add(allocated);
            d.size = d.size.saturating_add(size);
        }
        if top_files.wants(allocated) {
            top_files.push(allocated, display_path(label, root, entry.path()), size);
        }
    }
    close(&mut stack, &mut top_dirs, 0);
    r.top_files = top_files.into_sorted();
    r.top_dirs = top_dirs.into_sorted();
    r
}

#[cfg(test)]
mod tests {
    use std::{
        fs::{self, File},
        io::Write,
    };

    use super::*;

    fn limits() -> WalkLimits {
        WalkLimits {
            top_files: 10,
            top_dirs: 10,
            max_entries: 1_000_000,
            max_duration: Duration::from_secs(60),
        }
    }

    fn dense(path: &Path, bytes: usize) {
        let mut f = File::create(path).expect("create");
        f.write_all(&vec![0x5a; bytes]).expect("write");
        f.sync_all().expect("sync");
    }

    fn allocated(path: &Path) -> u64 {
        fs::symlink_metadata(path).expect("stat").blocks() * 512
    }

    fn top<'a>(v: &'a [TopEntry], path: &str) -> Option<&'a TopEntry> {
        v.iter().find(|e| e.path == Name::from(path))
    }

    #[test]
    fn sparse_and_dense_files_count_allocated_and_apparent_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        dense(&dir.path().join("dense"), 64 << 10);
        let sparse = File::create(dir.path().join("sparse")).expect("create");
        sparse.set_len(8 << 20).expect("set_len");
        drop(sparse);
        let r = walk(dir.path(), &Name::from("/m"), &limits());
        assert_eq!((r.files, r.dirs), (2, 1));
        let d = top(&r.top_files, "/m/dense").expect("dense listed");
        assert_eq!(d.size_bytes, 64 << 10);
        assert_eq!(d.allocated_bytes, allocated(&dir.path().join("dense")));
        assert!(d.allocated_bytes >= 64 << 10);
        let s = top(&r.top_files, "/m/sparse").expect("sparse listed");
        assert_eq!(s.size_bytes, 8 << 20);
        assert_eq!(s.allocated_bytes, allocated(&dir.path().join("sparse")));
        assert!(s.allocated_bytes < 64 << 10, "a hole allocates nothing");
        assert_eq!(r.allocated_bytes, d.allocated_bytes + s.allocated_bytes);
        assert_eq!(r.size_bytes, (64 << 10) + (8 << 20));
        assert_eq!(
            r.top_files[0].path,
            Name::from("/m/dense"),
            "ordered by allocation"
        );
        assert_eq!(r.truncated, None);
    }

    #[test]
    fn hard_links_are_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        dense(&a, 32 << 10);
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::hard_link(&a, dir.path().join("sub/b")).expect("link");
        fs::hard_link(&a, dir.path().join("c")).expect("link");
        let r = walk(dir.path(), &Name::from("/m"), &limits());
        assert_eq!(r.files, 1);
        assert_eq!(r.allocated_bytes, allocated(&a));
        assert_eq!(r.size_bytes, 32 << 10);
        assert_eq!(r.top_files.len(), 1);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().expect("tempdir");
        let big = outside.path().join("big");
        dense(&big, 1 << 20);
        let dir = tempfile::tempdir().expect("tempdir");
        dense(&dir.path().join("small"), 4096);
        std::os::unix::fs::symlink(&big, dir.path().join("to-big")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("to-outside-dir"))
            .expect("symlink");
        // A loop: loop/back -> loop.
        fs::create_dir(dir.path().join("loop")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("loop"), dir.path().join("loop/back"))
            .expect("symlink");
        std::os::unix::fs::symlink("self", dir.path().join("self")).expect("symlink");
        let r = walk(dir.path(), &Name::from("/m"), &limits());
        assert_eq!(r.truncated, None);
        // small + 4 symlinks (each its own inode, counted with its own tiny allocation).
        assert_eq!(r.files, 5);
        assert_eq!(r.dirs, 2);
        assert!(
            r.allocated_bytes < 1 << 20,
            "the big file behind the symlink must not count: {}",
            r.allocated_bytes
        );
        let link = top(&r.top_files, "/m/to-big").expect("the link itself is listed");
        assert!(link.allocated_bytes < 1 << 20);
    }

    #[test]
    fn top_n_is_bounded_and_ordered() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 1..=12usize {
            dense(&dir.path().join(format!("f{i:02}")), i * 8192);
        }
        let l = WalkLimits {
            top_files: 3,
            ..limits()
        };
        let r = walk(dir.path(), &Name::from("/m/"), &l);
        assert_eq!(r.files, 12);
        let names: Vec<_> = r.top_files.iter().map(|e| e.path.lossy()).collect();
        assert_eq!(names, ["/m/f12", "/m/f11", "/m/f10"]);
        assert!(
            r.top_files
                .windows(2)
                .all(|w| w[0].allocated_bytes > w[1].allocated_bytes)
        );
        assert_eq!(r.top_files[0].size_bytes, 12 * 8192);
    }

    #[test]
    fn directory_totals_cover_their_subtree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        fs::create_dir_all(p.join("a/b/c")).expect("mkdir");
        fs::create_dir_all(p.join("z")).expect("mkdir");
        dense(&p.join("a/one"), 16384);
        dense(&p.join("a/b/two"), 32768);
        dense(&p.join("a/b/c/three"), 65536);
        dense(&p.join("z/four"), 8192);
        dense(&p.join("top"), 4096);
        let r = walk(p, &Name::from("/m"), &limits());
        let a = |rel: &str| allocated(&p.join(rel));
        let c = top(&r.top_dirs, "/m/a/b/c").expect("c");
        assert_eq!(c.allocated_bytes, a("a/b/c/three"));
        let b = top(&r.top_dirs, "/m/a/b").expect("b");
        assert_eq!(b.allocated_bytes, a("a/b/two") + a("a/b/c/three"));
        assert_eq!(b.size_bytes, 32768 + 65536);
        let ad = top(&r.top_dirs, "/m/a").expect("a");
        assert_eq!(ad.allocated_bytes, b.allocated_bytes + a("a/one"));
        let z = top(&r.top_dirs, "/m/z").expect("z");
        assert_eq!(z.allocated_bytes, a("z/four"));
        assert_eq!(r.top_dirs.len(), 4, "the root is not listed");
        assert_eq!(r.top_dirs[0].path, Name::from("/m/a"));
        assert_eq!(
            r.allocated_bytes,
            ad.allocated_bytes + z.allocated_bytes + a("top")
        );
        assert_eq!(r.dirs, 5);
        let bounded = walk(
            p,
            &Name::from("/m"),
            &WalkLimits {
                top_dirs: 1,
                ..limits()
            },
        );
        assert_eq!(bounded.top_dirs, vec![ad.clone()]);
    }

    #[test]
    fn budget_truncates_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..10 {
            dense(&dir.path().join(format!("f{i}")), 4096);
        }
        let r = walk(
            dir.path(),
            &Name::from("/m"),
            &WalkLimits {
                max_entries: 3,
                ..limits()
            },
        );
        assert_eq!(r.truncated, Some(Truncation::MaxEntries));
        assert_eq!(r.entries, 3);
        assert_eq!(r.files, 2, "the root and two files");
        let r = walk(
            dir.path(),
            &Name::from("/m"),
            &WalkLimits {
                max_duration: Duration::ZERO,
                ..limits()
            },
        );
        assert_eq!(r.truncated, Some(Truncation::MaxWalkTime));
        assert_eq!(
            serde_json::to_string(&Truncation::MaxEntries).expect("json"),
            "\"max_entries\""
        );
    }

    /// Needs an unprivileged user (root reads anything): prints why it checks nothing as root.
    #[test]
    fn unreadable_directories_are_counted_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let locked = dir.path().join("locked");
        fs::create_dir(&locked).expect("mkdir");
        dense(&locked.join("inside"), 4096);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
        let r = walk(dir.path(), &Name::from("/m"), &limits());
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod back");
        if rustix::process::geteuid().is_root() {
            eprintln!(
                "running as root: permission errors cannot be provoked, only the walk is checked"
            );
            assert_eq!(r.errors, 0);
            return;
        }
        assert_eq!(r.errors, 1);
        assert!(r.first_error.is_some_and(|e| e.contains("locked")));
        assert_eq!(r.files, 0);
    }

    #[test]
    fn missing_root_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = walk(&dir.path().join("nope"), &Name::from("/m"), &limits());
        assert_eq!((r.files, r.dirs, r.errors), (0, 0, 1));
        assert!(r.first_error.is_some_and(|e| e.contains("nope")));
    }

    /// The root may be a link (an opened mount point's `/proc/self/fd/N`): it is walked through,
    /// while a link below it is still not followed.
    #[test]
    fn a_root_link_is_walked_through_links_below_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).expect("mkdir");
        dense(&tree.join("f"), 8192);
        std::os::unix::fs::symlink(dir.path(), tree.join("up")).expect("symlink");
        std::os::unix::fs::symlink(&tree, dir.path().join("root-link")).expect("symlink");
        let r = walk(&dir.path().join("root-link"), &Name::from("/m"), &limits());
        assert_eq!((r.dirs, r.errors), (1, 0));
        assert_eq!(r.files, 2, "f and the link itself");
        assert!(top(&r.top_files, "/m/f").is_some(), "{:?}", r.top_files);
        assert_eq!(
            r.allocated_bytes,
            allocated(&tree.join("f")) + allocated(&tree.join("up"))
        );
    }
}
