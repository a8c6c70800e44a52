//! Mount namespaces: the distinct ones among the processes under the proc root, one member of each,
//! and the mount table that member sees.
//!
//! A process's namespace is the inode in the target of its `PID/ns/mnt` link (`mnt:[4026531841]`).
//! The agent's own namespace comes first, read through `self`; the others follow in the order of
//! their lowest pid. Reading another process's link needs ptrace-read access to it (root, or
//! CAP_SYS_PTRACE): without it the process is counted as `denied` and its namespace stays unseen.
//! At most `max_others` namespaces besides the agent's own are read; the rest are counted.

use std::collections::HashSet;

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
pub fn discover(
    procfs: &ProcFs,
    max_others: usize,
    buf: &mut Vec<u8>,
) -> Result<MountNamespaces, ProcError> {
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
    let pids = match procfs.pids() {
        Ok(p) => p,
        Err(e) => {
            out.error(&e);
            return Ok(out);
        }
    };
    let mut seen: HashSet<u64> = own.into_iter().collect();
    let mut over: HashSet<u64> = HashSet::new();
    for pid in pids {
        let inode = match procfs.mount_ns(&pid.to_string()) {
            Ok(i) => i,
            Err(e) if e.is_gone() => continue,
            Err(e) if e.is_denied() => {
                out.denied += 1;
                continue;
            }
            Err(e) => {
                out.error(&e);
                continue;
            }
        };
        if seen.contains(&inode) || over.contains(&inode) {
            continue;
        }
        if out.namespaces.len() > max_others {
            over.insert(inode);
            continue;
        }
        match procfs.pid_mountinfo(pid, buf) {
            Ok((mounts, skipped_lines)) => {
                seen.insert(inode);
                out.skipped_lines.extend(skipped_lines);
                out.namespaces.push(MountNs {
                    ns: NsRef {
                        inode: Some(inode),
                        pid: Some(pid),
                    },
                    mounts,
                });
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
    Ok(out)
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
}
