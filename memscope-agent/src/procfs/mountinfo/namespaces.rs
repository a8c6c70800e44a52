//! Mount namespaces: the distinct ones among the processes under the proc root, one member of each,
//! and the mount table that member sees.
//!
//! A process's namespace is the inode in the target of its `PID/ns/mnt` link (`mnt:[4026531841]`).
//! The agent's own namespace comes first, read through `self`; the others follow in the order of
//! their lowest pid. Reading another process's link needs ptrace-read access to it (root, or
//! CAP_SYS_PTRACE): without it the process is counted as `denied` and its namespace stays unseen.
//! At most `max_others` namespaces besides the agent's own are read; the rest are counted.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::MountInfo;
use crate::procfs::{ParseError, ProcError, ProcFs};

/// Errors kept per discovery (the rest are only counted), so a hostile host cannot grow the list.
const MAX_ERRORS: usize = 8;

/// A mount namespace, and whom it was seen through.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    schemars::JsonSchema,
)]
pub struct NsRef {
    /// The namespace's inode; `None` when the agent's own link could not be read.
    #[serde(rename = "mnt_ns")]
    pub inode: Option<u64>,
    /// The member whose `mountinfo` was read; `None` for the agent's own namespace (`self`).
    pub pid: Option<u32>,
}

impl NsRef {
    /// The agent's own namespace.
    pub fn is_own(&self) -> bool {
        self.pid.is_none()
    }
}

/// One namespace and the mount table its member sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountNs {
    pub ns: NsRef,
    pub mounts: Vec<MountInfo>,
}

/// Every mount namespace found, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountNamespaces {
    /// The agent's own first.
    pub namespaces: Vec<MountNs>,
    /// Processes whose namespace link or mount table was not readable (permission denied).
    pub denied: u32,
    /// Namespaces beyond the bound, not read.
    pub skipped: u32,
    /// Other problems (at most [`MAX_ERRORS`], each naming its path), and how many there were.
    pub errors: Vec<String>,
    pub error_count: u32,
    /// Malformed mount table lines that were skipped, each naming its file and line.
    pub skipped_lines: Vec<String>,
}

impl MountNamespaces {
    fn error(&mut self, e: &ProcError) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.to_string());
        }
    }

    /// The mount tables, in namespace order.
    pub fn tables(&self) -> impl Iterator<Item = &[MountInfo]> {
        self.namespaces.iter().map(|n| n.mounts.as_slice())
    }

    /// One line per kind of problem, for the snapshot warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.denied > 0 {
            out.push(format!(
                "mount namespaces: {} process(es) not readable (permission denied): tmpfs mounts \
                 only in their namespaces are not seen",
                self.denied
            ));
        }
        if self.skipped > 0 {
            out.push(format!(
                "mount namespaces: {} beyond max_mount_namespaces not read",
                self.skipped
            ));
        }
        out.extend(self.skipped_lines.iter().cloned());
        out.extend(self.errors.iter().map(|e| format!("mount namespaces: {e}")));
        if self.error_count as usize > self.errors.len() {
            out.push(format!(
                "mount namespaces: {} more error(s)",
                self.error_count as usize - self.errors.len()
            ));
        }
        out
    }
}

/// The inode of a `ns/mnt` link target, `mnt:[INODE]`; `None` for anything else.
pub fn parse_ns_link(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"mnt:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl ProcFs {
    /// The mount namespace inode of `who` (`"self"` or a pid), from its `ns/mnt` link.
    pub fn mount_ns(&self, who: &str) -> Result<u64, ProcError> {
        let path = self.path(who).join("ns/mnt");
        let target = std::fs::read_link(&path).map_err(|e| ProcError::from_io(path.clone(), e))?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
        parse_ns_link(bytes).ok_or_else(|| ProcError::Parse {
            path,
            source: ParseError::new(
                0,
                format!(
                    "not a mount namespace link: {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            ),
        })
    }

    /// `PID/mountinfo`, parsed, and a warning per malformed (skipped) line.
    pub fn pid_mountinfo(
        &self,
        pid: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(Vec<MountInfo>, Vec<String>), ProcError> {
        let path = self.pid_path(pid, "mountinfo");
        self.read_lenient(
            &path,
            crate::procfs::FileClass::MOUNTINFO,
            buf,
            super::parse_mountinfo,
        )
    }
}

/// Finds the mount namespaces: the agent's own (its `self/mountinfo` must be readable: that error is
/// returned) and at most `max_others` more. Everything else that goes wrong is counted or listed.
/// Reads everything (a cache of its own, used once); the agent's collectors share a
/// [`SharedNamespaces`] instead.
pub fn discover(
    procfs: &ProcFs,
    max_others: usize,
    buf: &mut Vec<u8>,
) -> Result<MountNamespaces, ProcError> {
    NsCache::new(max_others).discover(procfs, buf, Instant::now())
}

/// How long a mount table of another namespace, or a process's namespace, is trusted at most
/// before it is read again.
pub const REFRESH: Duration = Duration::from_secs(60);
/// The shortest time a mount table is trusted (a namespace seen for the first time is read again
/// after this, then after twice its age at the last read, up to [`REFRESH`]).
const MIN_TRUST: Duration = Duration::from_secs(1);

/// What discovery remembers between runs, so a run reads only what may have changed:
///
/// - a process's namespace (its `ns/mnt` link, about 25 µs under load) is read when the process
///   is new and again at its second sighting (a process that calls `unshare` or `setns` right
///   after its fork, as `unshare -m` and container runtimes do, is caught there), then trusted
///   for at most [`REFRESH`] (a later `setns`, a reused pid): each link is read again within
///   [`REFRESH`] of its last read, the first time after a delay spread by pid
///   ([`crate::ladder::stale_after`]), so processes seen together are not all read again in the
///   same run;
/// - another namespace's mount table is read when the namespace is new, then again after
///   [`MIN_TRUST`], then each time it is twice as old as at its last read, and at least every
///   [`REFRESH`] (a young namespace is still being set up: a runtime mounts the container's
///   `/dev/shm` after creating it);
/// - the agent's own mount table is read on every run (one file).
///
/// A namespace none of whose processes remain is forgotten.
#[derive(Debug)]
pub struct NsCache {
    max_others: usize,
    /// The proc root the cache describes; another root starts afresh.
    root: Option<std::path::PathBuf>,
    /// By pid: its namespace, how many runs have read its link, and until when it is trusted.
    pids: HashMap<u32, (u64, u32, Instant)>,
    /// By namespace inode.
    tables: HashMap<u64, Table>,
}

#[derive(Debug)]
struct Table {
    mounts: Vec<MountInfo>,
    skipped_lines: Vec<String>,
    first_read: Instant,
    read_at: Instant,
}

impl Table {
    /// Whether it may stand at `now` (see [`NsCache`]).
    fn trusted(&self, now: Instant) -> bool {
        let trust = self
            .read_at
            .duration_since(self.first_read)
            .clamp(MIN_TRUST, REFRESH);
        now.duration_since(self.read_at) < trust
    }
}

/// What a process's namespace link said.
enum Link {
    /// The namespace, and until when it is trusted.
    Ns(u64, Instant),
    Skip,
}

impl NsCache {
    pub fn new(max_others: usize) -> NsCache {
        NsCache {
            max_others,
            root: None,
            pids: HashMap::new(),
            tables: HashMap::new(),
        }
    }

    /// The namespaces now (see [`discover`] for what is returned, and the type for what is read).
    pub fn discover(
        &mut self,
        procfs: &ProcFs,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Result<MountNamespaces, ProcError> {
        self.discover_among(procfs, None, buf, now)
    }

    /// [`Self::discover`] over `pids`, the processes of this tick's `statm` pass (`None`: lists
    /// `/proc` itself): a tick lists `/proc` once, not once per collector.
    pub fn discover_among(
        &mut self,
        procfs: &ProcFs,
        pids: Option<&[u32]>,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Result<MountNamespaces, ProcError> {
        if self.root.as_deref() != Some(procfs.root()) {
            *self = NsCache::new(self.max_others);
            self.root = Some(procfs.root().to_path_buf());
        }
        let mut out = MountNamespaces::default();
        let (own_mounts, skipped_lines) = procfs.self_mountinfo(buf)?;
        out.skipped_lines = skipped_lines;
        let own = match procfs.mount_ns("self") {
            Ok(i) => Some(i),
            // A fixture tree, or a proc without namespace links.
            Err(e) if e.is_gone() => None,
            Err(e) => {
                out.error(&e);
                None
            }
        };
        out.namespaces.push(MountNs {
            ns: NsRef {
                inode: own,
                pid: None,
            },
            mounts: own_mounts,
        });
        let pids = match pids {
            Some(p) => p.to_vec(),
            None => match procfs.pids() {
                Ok(p) => p,
                Err(e) => {
                    out.error(&e);
                    return Ok(out);
                }
            },
        };
        let mut pid_ns = HashMap::with_capacity(pids.len());
        let mut seen: HashSet<u64> = own.into_iter().collect();
        let mut over: HashSet<u64> = HashSet::new();
        for pid in pids {
            let (inode, until) = match self.link(procfs, pid, now, &mut out) {
                Link::Ns(inode, until) => (inode, until),
                Link::Skip => continue,
            };
            let sightings = self.pids.get(&pid).map_or(0, |&(_, n, _)| n);
            pid_ns.insert(pid, (inode, sightings.saturating_add(1), until));
            if seen.contains(&inode) || over.contains(&inode) {
                continue;
            }
            if out.namespaces.len() > self.max_others {
                over.insert(inode);
                continue;
            }
            if let Some(t) = self.tables.get(&inode).filter(|t| t.trusted(now)) {
                seen.insert(inode);
                out.skipped_lines.extend(t.skipped_lines.iter().cloned());
                out.namespaces.push(MountNs {
                    ns: NsRef {
                        inode: Some(inode),
                        pid: Some(pid),
                    },
                    mounts: t.mounts.clone(),
                });
                continue;
            }
            match procfs.pid_mountinfo(pid, buf) {
                Ok((mounts, skipped_lines)) => {
                    seen.insert(inode);
                    out.skipped_lines.extend(skipped_lines.iter().cloned());
                    out.namespaces.push(MountNs {
                        ns: NsRef {
                            inode: Some(inode),
                            pid: Some(pid),
                        },
                        mounts: mounts.clone(),
                    });
                    let first_read = self.tables.get(&inode).map_or(now, |t| t.first_read);
                    self.tables.insert(
                        inode,
                        Table {
                            mounts,
                            skipped_lines,
                            first_read,
                            read_at: now,
                        },
                    );
                }
                // Exited meanwhile: the next member of the namespace (if any) is tried.
                Err(e) if e.is_gone() => {}
                Err(e) if e.is_denied() => out.denied += 1,
                Err(e) => {
                    seen.insert(inode);
                    out.error(&e);
                }
            }
        }
        out.skipped = u32::try_from(over.len()).unwrap_or(u32::MAX);
        // Gone processes and namespaces are forgotten (and those beyond the bound not kept).
        self.pids = pid_ns;
        self.tables.retain(|inode, _| seen.contains(inode));
        Ok(out)
    }

    /// `pid`'s namespace and until when it is trusted: remembered, or read from its link (a new
    /// process, its second sighting, or trusted for long enough). Denied and other errors are
    /// counted in `out` as [`discover`] does.
    fn link(&self, procfs: &ProcFs, pid: u32, now: Instant, out: &mut MountNamespaces) -> Link {
        let known = self.pids.get(&pid);
        if let Some(&(inode, sightings, until)) = known
            && sightings >= 2
            && now < until
        {
            return Link::Ns(inode, until);
        }
        // Trusted for REFRESH from now, except after the first reads, which spread the deadlines.
        let until = match known {
            Some(&(_, sightings, _)) if sightings >= 2 => now + REFRESH,
            _ => now + crate::ladder::stale_after(REFRESH, pid),
        };
        match procfs.mount_ns(&pid.to_string()) {
            Ok(i) => Link::Ns(i, until),
            Err(e) if e.is_gone() => Link::Skip,
            Err(e) if e.is_denied() => {
                out.denied += 1;
                Link::Skip
            }
            Err(e) => {
                out.error(&e);
                Link::Skip
            }
        }
    }
}

/// One [`NsCache`] shared by the collectors that read mount namespaces (smaps and tmpfs), so a
/// tick's second discovery costs a directory listing and the agent's own mount table.
#[derive(Debug, Clone)]
pub struct SharedNamespaces(Arc<Mutex<NsCache>>);

impl SharedNamespaces {
    /// At most `max_others` namespaces besides the agent's own.
    pub fn new(max_others: u32) -> SharedNamespaces {
        SharedNamespaces(Arc::new(Mutex::new(NsCache::new(max_others as usize))))
    }

    /// The namespaces now (see [`NsCache`]).
    pub fn discover(
        &self,
        procfs: &ProcFs,
        buf: &mut Vec<u8>,
    ) -> Result<MountNamespaces, ProcError> {
        self.discover_among(procfs, None, buf)
    }

    /// The namespaces now, of `pids` (the tick's `statm` pass; `None`: `/proc` listed here).
    pub fn discover_among(
        &self,
        procfs: &ProcFs,
        pids: Option<&[u32]>,
        buf: &mut Vec<u8>,
    ) -> Result<MountNamespaces, ProcError> {
        // A run that panicked while holding the cache left it consistent enough: every entry is
        // complete when inserted.
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.discover_among(procfs, pids, buf, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link(b"mnt:[4026531841]"), Some(4_026_531_841));
        assert_eq!(parse_ns_link(b"mnt:[0]"), Some(0));
        for bad in [
            &b"net:[4026531841]"[..],
            b"mnt:[]",
            b"mnt:[12",
            b"mnt:[-1]",
            b"mnt:[1 ]",
            b"mnt:[99999999999999999999999]",
            b"mnt:[18446744073709551616]",
            b"/etc/passwd",
        ] {
            assert_eq!(
                parse_ns_link(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A fake proc root: `self` and pids with `ns/mnt` links (to made-up targets) and mountinfo.
    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new() -> FakeProc {
            FakeProc(tempfile::tempdir().expect("tempdir"))
        }

        fn add(&self, who: &str, ns: Option<&str>, mountinfo: Option<&str>) {
            let dir = self.0.path().join(who);
            std::fs::create_dir_all(dir.join("ns")).expect("mkdir");
            if let Some(ns) = ns {
                symlink(ns, dir.join("ns/mnt")).expect("symlink");
            }
            if let Some(m) = mountinfo {
                std::fs::write(dir.join("mountinfo"), m).expect("write");
            }
        }

        fn procfs(&self) -> ProcFs {
            ProcFs::new(self.0.path())
        }
    }

    const ROOT: &str = "1 0 8:1 / / rw - ext4 /dev/sda rw\n";

    #[test]
    fn one_member_per_namespace_own_first_bounded() {
        let p = FakeProc::new();
        p.add("self", Some("mnt:[100]"), Some(ROOT));
        p.add("1", Some("mnt:[100]"), Some(ROOT));
        // Namespace 200: pid 10's mountinfo is gone, pid 11 stands in.
        p.add("10", Some("mnt:[200]"), None);
        p.add(
            "11",
            Some("mnt:[200]"),
            Some("5 0 0:50 / / rw - tmpfs t rw\n"),
        );
        p.add("12", Some("mnt:[300]"), Some(ROOT));
        p.add("13", Some("mnt:[400]"), Some(ROOT));
        p.add("14", Some("mnt:[400]"), Some(ROOT));
        // A hostile link target and a process without a link (a kernel thread's is fine too).
        p.add("20", Some("mnt:[x]"), Some(ROOT));
        p.add("21", None, None);
        let mut buf = Vec::new();
        let all = discover(&p.procfs(), 10, &mut buf).expect("discover");
        let refs: Vec<(Option<u64>, Option<u32>)> = all
            .namespaces
            .iter()
            .map(|n| (n.ns.inode, n.ns.pid))
            .collect();
        assert_eq!(
            refs,
            [
                (Some(100), None),
                (Some(200), Some(11)),
                (Some(300), Some(12)),
                (Some(400), Some(13))
            ]
        );
        assert_eq!(all.namespaces[1].mounts[0].fstype, "tmpfs");
        assert_eq!(all.error_count, 1);
        assert!(all.errors[0].contains("20/ns/mnt"), "{:?}", all.errors);
        assert_eq!((all.denied, all.skipped), (0, 0));

        let bounded = discover(&p.procfs(), 1, &mut buf).expect("discover");
        assert_eq!(bounded.namespaces.len(), 2, "own + 1");
        assert_eq!(bounded.skipped, 2, "300 and 400");
        assert!(
            bounded.warnings().iter().any(|w| w.contains("2 beyond")),
            "{:?}",
            bounded.warnings()
        );
        let none = discover(&p.procfs(), 0, &mut buf).expect("discover");
        assert_eq!(none.namespaces.len(), 1);
    }

    #[test]
    fn own_mountinfo_is_required_its_link_is_not() {
        let p = FakeProc::new();
        p.add("self", None, None);
        let mut buf = Vec::new();
        assert!(discover(&p.procfs(), 4, &mut buf).is_err());
        std::fs::write(p.0.path().join("self/mountinfo"), ROOT).expect("write");
        let all = discover(&p.procfs(), 4, &mut buf).expect("discover");
        assert_eq!(all.namespaces[0].ns, NsRef::default());
        assert!(all.warnings().is_empty());
    }

    fn refs(n: &MountNamespaces) -> Vec<(Option<u64>, Option<u32>)> {
        n.namespaces
            .iter()
            .map(|n| (n.ns.inode, n.ns.pid))
            .collect()
    }

    fn relink(p: &FakeProc, who: &str, target: &str) {
        let link = p.0.path().join(who).join("ns/mnt");
        std::fs::remove_file(&link).expect("rm link");
        symlink(target, link).expect("symlink");
    }

    /// What the cache reads again and what it trusts, on a fake proc root and an explicit clock.
    #[test]
    fn the_cache_reads_only_what_may_have_changed() {
        let p = FakeProc::new();
        let tmpfs = |minor: u32| format!("5 0 0:{minor} / /dev/shm rw - tmpfs t rw\n");
        p.add("self", Some("mnt:[100]"), Some(ROOT));
        p.add("1", Some("mnt:[100]"), Some(ROOT));
        p.add("11", Some("mnt:[200]"), Some(&tmpfs(50)));
        p.add("12", Some("mnt:[300]"), Some(&tmpfs(60)));
        let procfs = p.procfs();
        let reads = || procfs.counters().reads(crate::procfs::FileClass::MOUNTINFO);
        let mut cache = NsCache::new(10);
        let mut buf = Vec::new();
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);

        // A fresh cache reads what `discover` reads, and returns the same.
        let first = cache.discover(&procfs, &mut buf, t0).expect("discover");
        assert_eq!(first, discover(&procfs, 10, &mut buf).expect("discover"));
        let before = reads();
        let again = cache
            .discover(&procfs, &mut buf, at(0.5))
            .expect("discover");
        assert_eq!(again, first);
        assert_eq!(
            reads() - before,
            1,
            "only the agent's own table is read again"
        );

        // A mount in namespace 200: seen once the table's trust (1 s for a new one) is over.
        std::fs::write(p.0.path().join("11/mountinfo"), tmpfs(51)).expect("write");
        let stale = cache
            .discover(&procfs, &mut buf, at(0.9))
            .expect("discover");
        assert_eq!(stale.namespaces[1].mounts[0].dev.minor, 50);
        let fresh = cache
            .discover(&procfs, &mut buf, at(1.0))
            .expect("discover");
        assert_eq!(fresh.namespaces[1].mounts[0].dev.minor, 51);
        // Then trusted twice as long as its age at that read (1 s): until 2 s.
        std::fs::write(p.0.path().join("11/mountinfo"), tmpfs(52)).expect("write");
        let before = reads();
        cache
            .discover(&procfs, &mut buf, at(1.9))
            .expect("discover");
        assert_eq!(reads() - before, 1, "own table only");
        let later = cache
            .discover(&procfs, &mut buf, at(2.0))
            .expect("discover");
        assert_eq!(later.namespaces[1].mounts[0].dev.minor, 52);

        // A new process in a new namespace is seen at once; a gone one's namespace is forgotten.
        p.add("15", Some("mnt:[600]"), Some(&tmpfs(70)));
        std::fs::remove_dir_all(p.0.path().join("12")).expect("rm 12");
        let moved = cache
            .discover(&procfs, &mut buf, at(2.1))
            .expect("discover");
        assert_eq!(
            refs(&moved),
            [
                (Some(100), None),
                (Some(200), Some(11)),
                (Some(600), Some(15))
            ]
        );

        // Pid 15 moves to another namespace (setns) after its second sighting: trusted until
        // its link is read again, at most REFRESH after its last read.
        cache
            .discover(&procfs, &mut buf, at(2.2))
            .expect("discover");
        relink(&p, "15", "mnt:[700]");
        std::fs::write(p.0.path().join("15/mountinfo"), tmpfs(80)).expect("write");
        let trusted = cache
            .discover(&procfs, &mut buf, at(2.3))
            .expect("discover");
        assert_eq!(refs(&trusted)[2], (Some(600), Some(15)));
        let full = cache
            .discover(&procfs, &mut buf, at(2.2) + REFRESH)
            .expect("discover");
        assert_eq!(refs(&full)[2], (Some(700), Some(15)));
        assert_eq!(full.namespaces[2].mounts[0].dev.minor, 80);

        // A process that moves right after its first sighting (`unshare -m` after fork) is
        // caught at its second.
        p.add("16", Some("mnt:[200]"), Some(&tmpfs(52)));
        let now = at(2.2) + REFRESH + Duration::from_secs(1);
        cache.discover(&procfs, &mut buf, now).expect("discover");
        relink(&p, "16", "mnt:[800]");
        let caught = cache
            .discover(&procfs, &mut buf, now + Duration::from_millis(10))
            .expect("discover");
        assert!(
            refs(&caught).contains(&(Some(800), Some(16))),
            "{:?}",
            refs(&caught)
        );

        // Another proc root starts afresh.
        let other = FakeProc::new();
        other.add("self", Some("mnt:[100]"), Some(ROOT));
        let alone = cache
            .discover(&other.procfs(), &mut buf, now)
            .expect("discover");
        assert_eq!(refs(&alone), [(Some(100), None)]);
    }
}
