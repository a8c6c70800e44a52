//! Mount topology: which tmpfs superblocks a mountinfo shows, their bind mounts, and which mounts
//! no path reaches (stacked under another mount, or below one that is).

use std::collections::{HashMap, HashSet};

use super::MountInfo;
use crate::procfs::{Dev, escape::Name};

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
        let dev = m.dev;
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

/// Devices of the tmpfs mounts of a mountinfo.
pub fn tmpfs_devices(mounts: &[MountInfo]) -> HashSet<Dev> {
    mounts
        .iter()
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
}
