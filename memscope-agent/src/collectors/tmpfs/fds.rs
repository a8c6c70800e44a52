//! Shared-memory files held only by file descriptors: deleted-but-open tmpfs files and memfds, found
//! by scanning `/proc/PID/fd/*` and `/proc/PID/exe` (readlink, then stat through the link). The
//! `exe` link matters for programs run from a memfd (`fexecve`, sealed-binary launchers): the whole
//! file stays resident in `Shmem` while only the pages the process touched show in its mappings.
//!
//! A link target `/memfd:NAME (deleted)` is a memfd. Any other target ending in ` (deleted)` whose
//! inode lives on a tmpfs superblock and has no links left is a deleted tmpfs file: its memory is
//! allocated on the mount but no path reaches it. Objects are deduplicated by `(dev, inode)`.
//! A process or descriptor that vanishes mid-scan is skipped quietly; permission errors are counted.

use std::{
    collections::{HashMap, HashSet},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
};

use serde::Serialize;

use crate::procfs::{Dev, ProcError, ProcFs, escape::Name};

const DELETED: &[u8] = b" (deleted)";
const MEMFD: &[u8] = b"/memfd:";

/// A file reachable only through open descriptors: a memfd or a deleted tmpfs file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct OpenShmemFile {
    pub dev: Dev,
    pub inode: u64,
    /// The link target without ` (deleted)`: `/memfd:NAME` or the file's former path (in the
    /// holder's mount namespace). Display only: identity is `(dev, inode)`.
    pub name: Name,
    /// `st_blocks * 512`.
    pub allocated_bytes: u64,
    /// Apparent size (`st_size`).
    pub size_bytes: u64,
    /// On hugetlbfs (an `MFD_HUGETLB` memfd): hugetlb pages, not `Shmem`.
    pub hugetlb: bool,
    /// Holding pids, ascending, at most `max_holders` of them.
    pub holders: Vec<u32>,
    /// All holding pids.
    pub holder_count: u32,
}

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdScan {
    /// By inode, ascending.
    pub memfds: Vec<OpenShmemFile>,
    /// Deleted files on the given tmpfs superblocks, by (dev, inode).
    pub deleted: Vec<OpenShmemFile>,
    /// Processes whose fd directory was listed.
    pub pids_scanned: u32,
    /// Processes whose fd table or links could not be read (permission denied), each counted once.
    pub denied: u32,
    /// Other errors, each with its path.
    pub errors: Vec<String>,
}

/// What a descriptor's link target says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    Memfd,
    Deleted,
}

fn candidate(target: &[u8]) -> Option<(Candidate, &[u8])> {
    let name = target.strip_suffix(DELETED)?;
    if name.starts_with(MEMFD) {
        Some((Candidate::Memfd, name))
    } else {
        Some((Candidate::Deleted, name))
    }
}

/// What to do after an error on one descriptor of a process.
enum Next {
    /// Go on with the next descriptor.
    Skip,
    /// Leave this process.
    Stop,
}

impl FdScan {
    /// A vanished descriptor is skipped quietly; a denied one means the whole process is off
    /// limits (counted once); anything else is recorded with its path.
    fn on_error(&mut self, path: std::path::PathBuf, e: std::io::Error) -> Next {
        match ProcError::from_io(path, e) {
            e if e.is_gone() => Next::Skip,
            e if e.is_denied() => {
                self.denied += 1;
                Next::Stop
            }
            e => {
                self.errors.push(e.to_string());
                Next::Skip
            }
        }
    }
}

/// Files found so far: (what it is, the file, the last pid counted as a holder) by (dev, inode).
type Found = HashMap<(Dev, u64), (Candidate, OpenShmemFile, Option<u32>)>;

impl FdScan {
    /// One magic link of `pid` (a descriptor or its `exe`): a memfd or a deleted tmpfs file is
    /// added to `found`, with `pid` as a holder.
    fn consider(
        &mut self,
        found: &mut Found,
        tmpfs_devs: &HashSet<Dev>,
        max_holders: usize,
        pid: u32,
        path: std::path::PathBuf,
    ) -> Next {
        let target = match std::fs::read_link(&path) {
            Ok(t) => t,
            Err(e) => return self.on_error(path, e),
        };
        let Some((kind, name)) = candidate(target.as_os_str().as_bytes()) else {
            return Next::Skip;
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return self.on_error(path, e),
        };
        let dev = Dev::from_st_dev(meta.dev());
        if kind == Candidate::Deleted && !(meta.nlink() == 0 && tmpfs_devs.contains(&dev)) {
            return Next::Skip;
        }
        let key = (dev, meta.ino());
        let hugetlb = match found.get(&key) {
            Some((_, f, _)) => f.hugetlb,
            None if kind == Candidate::Memfd => match super::statvfs::is_hugetlbfs(&path) {
                Ok(h) => h,
                Err(e) => return self.on_error(path, e),
            },
            None => false,
        };
        let (_, f, last) = found.entry(key).or_insert_with(|| {
            let file = OpenShmemFile {
                dev,
                inode: meta.ino(),
                name: Name::new(name),
                allocated_bytes: meta.blocks().saturating_mul(512),
                size_bytes: meta.size(),
                hugetlb,
                holders: Vec::new(),
                holder_count: 0,
            };
            (kind, file, None)
        });
        // Pids come in ascending order: a process holding the file twice is counted once.
        if *last != Some(pid) {
            *last = Some(pid);
            f.holder_count += 1;
            if f.holders.len() < max_holders {
                f.holders.push(pid);
            }
        }
        Next::Skip
    }
}

/// Scans every process's descriptors and executable under `procfs`. `tmpfs_devs` are the tmpfs
/// superblocks a deleted file must be on; `max_holders` bounds the pids listed per file.
pub fn scan_fds(procfs: &ProcFs, tmpfs_devs: &HashSet<Dev>, max_holders: usize) -> FdScan {
    let mut scan = FdScan::default();
    let pids = match procfs.pids() {
        Ok(p) => p,
        Err(e) => {
            scan.errors.push(e.to_string());
            return scan;
        }
    };
    let mut found = Found::new();
    for pid in pids {
        let dir = procfs.pid_path(pid, "fd");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                match ProcError::from_io(dir, e) {
                    e if e.is_gone() => {}
                    e if e.is_denied() => scan.denied += 1,
                    e => scan.errors.push(e.to_string()),
                }
                continue;
            }
        };
        scan.pids_scanned += 1;
        let links = rd
            // An error while listing means the process went away (or the table changed) mid-read.
            .map_while(Result::ok)
            .map(|entry| entry.path())
            // The executable: a program run from a memfd (`fexecve`) or a deleted tmpfs file
            // keeps that file alive through its mm, often with no descriptor left open.
            .chain(std::iter::once(procfs.pid_path(pid, "exe")));
        for path in links {
            if let Next::Stop = scan.consider(&mut found, tmpfs_devs, max_holders, pid, path) {
                break;
            }
        }
    }
    let mut all: Vec<_> = found.into_values().collect();
    all.sort_by_key(|(_, f, _)| (f.dev, f.inode));
    for (kind, f, _) in all {
        match kind {
            Candidate::Memfd => scan.memfds.push(f),
            Candidate::Deleted => scan.deleted.push(f),
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write, os::unix::fs::symlink};

    use super::*;

    /// A new memfd named `name`, as a file.
    fn memfd(name: &str) -> fs::File {
        rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::empty())
            .map(fs::File::from)
            .unwrap_or_else(|e| panic!("memfd_create: {e}"))
    }

    #[test]
    fn candidates_from_link_targets() {
        assert_eq!(
            candidate(b"/memfd:pool (deleted)"),
            Some((Candidate::Memfd, &b"/memfd:pool"[..]))
        );
        assert_eq!(
            candidate(b"/dev/shm/x (deleted) (deleted)"),
            Some((Candidate::Deleted, &b"/dev/shm/x (deleted)"[..]))
        );
        assert_eq!(candidate(b"/dev/shm/x"), None);
        assert_eq!(candidate(b"socket:[1234]"), None);
        assert_eq!(candidate(b"anon_inode:[eventfd]"), None);
    }

    /// A fake `/proc`: pid 10 holds a live file twice and a file whose *name* ends in ` (deleted)`
    /// but still has its link; pid 11 has a dangling fd link (vanished mid-scan); pid 12 has no fd
    /// directory (gone); pid 13 is the test process itself (a real memfd and a real deleted file).
    #[test]
    fn scans_a_fake_proc_tree() {
        let files = tempfile::tempdir().expect("tempdir");
        let live = files.path().join("live");
        fs::write(&live, vec![1u8; 8192]).expect("write");
        let tricky = files.path().join("tricky (deleted)");
        fs::write(&tricky, b"x").expect("write");
        let gone = files.path().join("gone (deleted)");

        // A real memfd and a real unlinked file, held by this process.
        let mut memfd = memfd("memscope-test");
        memfd.write_all(&vec![7u8; 12288]).expect("write memfd");
        let deleted_path = files.path().join("held");
        let mut deleted = fs::File::create(&deleted_path).expect("create");
        deleted.write_all(&vec![3u8; 4096]).expect("write");
        deleted.sync_all().expect("sync");
        fs::remove_file(&deleted_path).expect("unlink");

        let proc = tempfile::tempdir().expect("tempdir");
        let p = proc.path();
        fs::create_dir_all(p.join("10/fd")).expect("mkdir");
        symlink(&live, p.join("10/fd/3")).expect("symlink");
        symlink(&live, p.join("10/fd/4")).expect("symlink");
        symlink(&tricky, p.join("10/fd/5")).expect("symlink");
        fs::create_dir_all(p.join("11/fd")).expect("mkdir");
        symlink(&gone, p.join("11/fd/3")).expect("symlink");
        fs::create_dir_all(p.join("12")).expect("mkdir");
        // Only the kernel's magic links read as "… (deleted)" with no link left, so pid 13's fd
        // directory is this process's real one.
        fs::create_dir_all(p.join("13")).expect("mkdir");
        symlink(format!("/proc/{}/fd", std::process::id()), p.join("13/fd")).expect("symlink");

        let tmpfs_dev = Dev::from_st_dev(fs::metadata(files.path()).expect("stat").dev());
        let devs = HashSet::from([tmpfs_dev]);
        let scan = scan_fds(&ProcFs::new(p), &devs, 4);
        assert_eq!(scan.pids_scanned, 3, "10, 11 and 13 (12 has no fd dir)");
        assert_eq!(scan.denied, 0);
        assert!(scan.errors.is_empty(), "{:?}", scan.errors);

        let mfd_meta = memfd.metadata().expect("stat memfd");
        let m = scan
            .memfds
            .iter()
            .find(|m| m.inode == mfd_meta.ino())
            .expect("the memfd is found");
        assert_eq!(m.name, Name::from("/memfd:memscope-test"));
        assert_eq!(m.allocated_bytes, mfd_meta.blocks() * 512);
        assert_eq!(m.allocated_bytes, 12288);
        assert_eq!(m.size_bytes, 12288);
        assert_eq!((m.holders.as_slice(), m.holder_count), (&[13][..], 1));

        let del_meta = deleted.metadata().expect("stat");
        let d = scan
            .deleted
            .iter()
            .find(|d| d.inode == del_meta.ino())
            .expect("the deleted file is found");
        assert_eq!(d.name, Name::new(deleted_path.as_os_str().as_bytes()));
        assert_eq!(d.allocated_bytes, del_meta.blocks() * 512);
        assert_eq!(d.dev, tmpfs_dev);
        assert_eq!(d.holders, vec![13]);
        // The live file and the one merely named "(deleted)" are not reported.
        assert!(scan.deleted.iter().all(|d| d.holders == vec![13]));
        drop((memfd, deleted));
    }

    /// A program run from a memfd holds it through its `exe` link alone (the descriptor was
    /// close-on-exec): the scan finds it, with its whole allocation, and the child as its holder.
    #[test]
    fn a_program_run_from_a_memfd_holds_it_through_exe() {
        let program = fs::read("/bin/sleep").expect("read /bin/sleep");
        let mut exe = rustix::fs::memfd_create("memscope-exe", rustix::fs::MemfdFlags::CLOEXEC)
            .map(fs::File::from)
            .expect("memfd_create");
        exe.write_all(&program).expect("write the program");
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&exe));
        let mut child = std::process::Command::new(&path)
            .arg("30")
            .spawn()
            .expect("run the program from the memfd");
        let meta = exe.metadata().expect("stat");
        drop(exe);
        // A fake /proc holding only the child, under a pid of its own.
        let proc = tempfile::tempdir().expect("tempdir");
        symlink(format!("/proc/{}", child.id()), proc.path().join("40")).expect("symlink");
        let scan = scan_fds(&ProcFs::new(proc.path()), &HashSet::new(), 4);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(scan.denied, 0);
        assert!(scan.errors.is_empty(), "{:?}", scan.errors);
        let m = scan
            .memfds
            .iter()
            .find(|m| m.inode == meta.ino())
            .unwrap_or_else(|| panic!("the exe memfd is not found: {:?}", scan.memfds));
        assert_eq!(m.name, Name::from("/memfd:memscope-exe"));
        assert_eq!(m.allocated_bytes, meta.blocks() * 512);
        assert!(m.allocated_bytes >= program.len() as u64);
        assert_eq!(m.holders, vec![40]);
    }

    #[test]
    fn holders_are_deduplicated_and_bounded() {
        let memfd = memfd("memscope-holders");
        let proc = tempfile::tempdir().expect("tempdir");
        let _dup = memfd.try_clone().expect("dup");
        let real = format!("/proc/{}/fd", std::process::id());
        // Five "processes" sharing this process's fd table: each holds the memfd twice.
        for pid in 20..25 {
            let d = proc.path().join(pid.to_string());
            fs::create_dir(&d).expect("mkdir");
            symlink(&real, d.join("fd")).expect("symlink");
        }
        let scan = scan_fds(&ProcFs::new(proc.path()), &HashSet::new(), 2);
        let ino = memfd.metadata().expect("stat").ino();
        let m = scan.memfds.iter().find(|m| m.inode == ino).expect("found");
        assert_eq!(m.holders, vec![20, 21]);
        assert_eq!(m.holder_count, 5);
    }
}
