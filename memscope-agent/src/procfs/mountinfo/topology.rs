//! Mount topology: which tmpfs superblocks a mountinfo shows, their bind mounts, and which mounts
//! no path reaches (stacked under another mount, or below one that is).

use std::collections::{HashMap, HashSet};

use super::MountInfo;
use crate::procfs::{Dev, escape::Name};

/// The filesystem types whose superblocks are shmem (their pages count in meminfo `Shmem`).
pub const SHMEM_FSTYPES: [&str; 2] = ["tmpfs", "devtmpfs"];

/// Where one namespace mounts a superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsMounts {
    /// Index of the namespace in the tables given to [`select_superblocks`] (0: the agent's own).
    pub ns: usize,
    /// Its mount points there, in mountinfo order.
    pub mount_points: Vec<Name>,
}

/// The mount a superblock is measured and walked through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Index of the namespace (as in [`NsMounts::ns`]).
    pub ns: usize,
    pub mount: MountInfo,
}

/// One tmpfs (or devtmpfs) superblock and its mounts in every namespace, as mountinfo shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub dev: Dev,
    /// `tmpfs` or `devtmpfs`.
    pub fstype: String,
    /// Every mount point of the superblock in the first namespace that mounts it (the agent's own
    /// when it does), in mountinfo order.
    pub mount_points: Vec<Name>,
    /// The per-superblock options (`rw,size=1024k,mode=755`).
    pub super_options: String,
    /// Every namespace that mounts it, in namespace order.
    pub namespaces: Vec<NsMounts>,
    /// The mount to walk and measure through: a reachable one whose root is `/` if any (the agent's
    /// own namespace first), else the first reachable one. `None` when every mount is hidden.
    pub via: Option<Via>,
}

impl Superblock {
    /// Every mount of the superblock, in every namespace, is stacked under another: no path reaches it.
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

/// Groups the tmpfs and devtmpfs mounts of every namespace's mount table by superblock (device),
/// in order of first appearance. Table 0 is the agent's own namespace.
pub fn select_superblocks<'a>(
    tables: impl IntoIterator<Item = &'a [MountInfo]>,
) -> Vec<Superblock> {
    let mut out: Vec<Superblock> = Vec::new();
    for (ns, mounts) in tables.into_iter().enumerate() {
        let hidden = hidden_mounts(mounts);
        for m in mounts
            .iter()
            .filter(|m| SHMEM_FSTYPES.contains(&m.fstype.as_str()))
        {
            let i = match out.iter().position(|s| s.dev == m.dev) {
                Some(i) => i,
                None => {
                    out.push(Superblock {
                        dev: m.dev,
                        fstype: m.fstype.clone(),
                        mount_points: Vec::new(),
                        super_options: m.super_options.clone(),
                        namespaces: Vec::new(),
                        via: None,
                    });
                    out.len() - 1
                }
            };
            let sb = &mut out[i];
            if sb.namespaces.last().is_none_or(|n| n.ns != ns) {
                sb.namespaces.push(NsMounts {
                    ns,
                    mount_points: Vec::new(),
                });
            }
            let first_ns = sb.namespaces.len() == 1;
            if let Some(n) = sb.namespaces.last_mut()
                && !n.mount_points.contains(&m.mount_point)
            {
                n.mount_points.push(m.mount_point.clone());
                if first_ns {
                    sb.mount_points.push(m.mount_point.clone());
                }
            }
            // Whole filesystem first, then the agent's own namespace (no /proc/PID/root hop).
            let score = |root: &Name, ns: usize| (root.as_bytes() == b"/", ns == 0);
            let better = match &sb.via {
                None => true,
                Some(v) => score(&m.root, ns) > score(&v.mount.root, v.ns),
            };
            if better && !hidden.contains(&m.mount_id) {
                sb.via = Some(Via {
                    ns,
                    mount: m.clone(),
                });
            }
        }
    }
    out
}

/// Devices of the tmpfs mounts of some mount tables (devtmpfs is not among them: its files are
/// device nodes, and a mapped device is no tmpfs file).
pub fn tmpfs_devices<'a>(tables: impl IntoIterator<Item = &'a [MountInfo]>) -> HashSet<Dev> {
    tables
        .into_iter()
        .flatten()
        .filter(|m| m.fstype == "tmpfs")
        .map(|m| m.dev)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::{mountinfo::parse_mountinfo, text::fixture};

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
        let m = parse_mountinfo(MOUNTINFO.as_bytes()).value;
        select_superblocks([m.as_slice()])
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
            (via.mount.mount_id, via.mount.mount_point.lossy()),
            (22, "/mnt/all".into())
        );
        // Only a subdirectory bind: walked through it.
        let via = s[2].via.as_ref().expect("reachable");
        assert_eq!(via.mount.root, Name::from("/sub"));
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
        let m = parse_mountinfo(&fixture("proc/self/mountinfo")).value;
        let s = select_superblocks([m.as_slice()]);
        let shm: Vec<_> = s
            .iter()
            .filter(|s| s.mount_points == vec![Name::from("/dev/shm")])
            .collect();
        assert_eq!(shm.len(), 2);
        assert_eq!((shm[0].dev, shm[0].hidden()), (dev(0, 23), true));
        assert_eq!((shm[1].dev, shm[1].hidden()), (dev(0, 27), false));
        assert_eq!(shm[1].via.as_ref().map(|v| v.mount.mount_id), Some(60));
        assert_eq!(
            s.len(),
            5,
            "0:25, 0:28, the two /dev/shm and devtmpfs on /dev"
        );
        let dev_fs = s.iter().find(|s| s.fstype == "devtmpfs").expect("devtmpfs");
        assert_eq!(dev_fs.mount_points, vec![Name::from("/dev")]);
        assert!(!tmpfs_devices([m.as_slice()]).contains(&dev_fs.dev));
    }

    /// The agent's namespace and a container's: the host's /dev/shm is bind-mounted into the
    /// container (one superblock, two namespaces); the container has a tmpfs of its own on /dev/shm
    /// stacked over nothing, a tmpfs the host also has but hidden there, and one hidden in both.
    const HOST: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda rw
2 1 0:27 / /dev/shm rw - tmpfs tmpfs rw,size=64m
3 1 0:60 / /hidden rw - tmpfs tmpfs rw,size=4k
4 3 0:61 / /hidden rw - tmpfs tmpfs rw,size=8k
5 1 0:70 / /both-hidden rw - tmpfs tmpfs rw,size=4k
6 5 0:71 / /both-hidden rw - tmpfs tmpfs rw,size=4k
";
    const CONTAINER: &str = "\
100 99 0:80 / / rw - overlay overlay rw
101 100 0:27 /sub /host-shm rw - tmpfs tmpfs rw,size=64m
102 100 0:90 / /dev/shm rw - tmpfs shm rw,size=65536k
103 100 0:60 / /seen-here rw - tmpfs tmpfs rw,size=4k
104 100 0:70 / /x rw - tmpfs tmpfs rw,size=4k
105 104 0:72 / /x rw - tmpfs tmpfs rw,size=4k
";

    #[test]
    fn superblocks_across_namespaces() {
        let host = parse_mountinfo(HOST.as_bytes()).value;
        let container = parse_mountinfo(CONTAINER.as_bytes()).value;
        let s = select_superblocks([host.as_slice(), container.as_slice()]);
        let find = |d: Dev| s.iter().find(|s| s.dev == d).expect("dev");
        // Shared by bind: one superblock, both namespaces, walked in the agent's own from its root.
        let shared = find(dev(0, 27));
        let ns: Vec<(usize, Vec<Name>)> = shared
            .namespaces
            .iter()
            .map(|n| (n.ns, n.mount_points.clone()))
            .collect();
        assert_eq!(
            ns,
            [
                (0, vec![Name::from("/dev/shm")]),
                (1, vec![Name::from("/host-shm")])
            ]
        );
        assert_eq!(shared.mount_points, vec![Name::from("/dev/shm")]);
        assert_eq!(shared.via.as_ref().map(|v| v.ns), Some(0));
        // Only in the container: reached there.
        let own = find(dev(0, 90));
        assert_eq!(own.namespaces.len(), 1);
        assert_eq!(own.namespaces[0].ns, 1);
        assert_eq!(own.mount_points, vec![Name::from("/dev/shm")]);
        let via = own.via.as_ref().expect("reachable in the container");
        assert_eq!((via.ns, via.mount.mount_id), (1, 102));
        // Hidden on the host, reachable in the container: measured there.
        let h = find(dev(0, 60));
        assert!(!h.hidden());
        assert_eq!(
            h.via.as_ref().map(|v| (v.ns, v.mount.mount_id)),
            Some((1, 103))
        );
        assert_eq!(h.namespaces.len(), 2);
        // Hidden in both: hidden.
        assert!(find(dev(0, 70)).hidden());
        assert!(!find(dev(0, 72)).hidden());
        let devs = tmpfs_devices([host.as_slice(), container.as_slice()]);
        assert!(devs.contains(&dev(0, 90)) && devs.contains(&dev(0, 27)));
        assert!(!devs.contains(&dev(0, 80)), "overlay is no tmpfs");
    }
}
