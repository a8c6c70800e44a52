//! Which object a mapping belongs to.

use std::collections::HashSet;

use super::object::{ObjectKey, ObjectKind};
use crate::procfs::{
    Dev, ProcError, ProcFs,
    escape::Name,
    mountinfo::{self},
    smaps::{Mapping, MappingPath},
};

/// Decides the object of one mapping.
pub fn classify(m: &Mapping, tmpfs_devs: &HashSet<Dev>) -> (ObjectKey, Name, bool) {
    let inode_key = |kind| ObjectKey::Inode {
        kind,
        dev: m.dev,
        inode: m.inode,
    };
    match &m.path {
        MappingPath::Anonymous => {
            let kind = if m.perms.shared {
                ObjectKind::SharedAnon
            } else {
                ObjectKind::Anon
            };
            if m.perms.shared && m.inode != 0 {
                (inode_key(kind), Name::from("[shared anon]"), false)
            } else {
                (ObjectKey::Kind(kind), Name::from(kind.as_str()), false)
            }
        }
        MappingPath::Memfd { name, deleted } => {
            let mut label = b"memfd:".to_vec();
            label.extend_from_slice(name.as_bytes());
            (inode_key(ObjectKind::Memfd), Name(label), *deleted)
        }
        MappingPath::SysV { key } => (
            ObjectKey::Sysv { shmid: m.inode },
            Name(format!("SYSV{key:08x}").into_bytes()),
            true,
        ),
        MappingPath::Pseudo(p) => {
            if p == "[heap]" {
                (
                    ObjectKey::Kind(ObjectKind::Heap),
                    Name::from("[heap]"),
                    false,
                )
            } else if p == "[stack]" || p.starts_with("[stack:") {
                (
                    ObjectKey::Kind(ObjectKind::Stack),
                    Name::from("[stack]"),
                    false,
                )
            } else if p.starts_with("[anon_shmem:") {
                (
                    inode_key(ObjectKind::SharedAnon),
                    Name::from(p.as_str()),
                    false,
                )
            } else if p.starts_with("[anon:") {
                (ObjectKey::Kind(ObjectKind::Anon), Name::from("anon"), false)
            } else {
                (ObjectKey::Pseudo(p.clone()), Name::from(p.as_str()), false)
            }
        }
        MappingPath::File { path, deleted } => {
            let kind = if path.as_bytes() == b"/dev/zero" && *deleted && m.perms.shared {
                ObjectKind::SharedAnon
            } else if tmpfs_devs.contains(&m.dev) {
                ObjectKind::Tmpfs
            } else if m.inode == 0 || !path.as_bytes().starts_with(b"/") {
                // anon_inode:[…] and similar: no file identity worth keying by inode.
                return (
                    ObjectKey::Pseudo(path.lossy().into_owned()),
                    path.clone(),
                    *deleted,
                );
            } else {
                ObjectKind::File
            };
            let label = if kind == ObjectKind::SharedAnon {
                Name::from("[shared anon]")
            } else {
                path.clone()
            };
            (inode_key(kind), label, *deleted)
        }
    }
}

/// Devices of tmpfs mounts host-wide: in the agent's own mount namespace and in the others
/// `namespaces` reads (at most its bound), and a warning per malformed (skipped) mount table line (what else
/// cannot be read there is the tmpfs collector's to warn about).
pub fn tmpfs_devices(
    procfs: &ProcFs,
    namespaces: &mountinfo::SharedNamespaces,
    buf: &mut Vec<u8>,
) -> Result<(HashSet<Dev>, Vec<String>), ProcError> {
    tmpfs_devices_seen(procfs, namespaces, None, buf).map(|(devs, skipped, _)| (devs, skipped))
}

/// [`tmpfs_devices`], and whether every mount namespace and every line of its mount table was
/// read (else a tmpfs mount may be missing from the set). A namespace whose link was denied does
/// not count: its members' smaps are as unreadable as their link (a busy host has such a process
/// now and then, one in the middle of an exec).
pub fn tmpfs_devices_seen(
    procfs: &ProcFs,
    namespaces: &mountinfo::SharedNamespaces,
    pids: Option<&[u32]>,
    buf: &mut Vec<u8>,
) -> Result<(HashSet<Dev>, Vec<String>, bool), ProcError> {
    let nss = namespaces.discover_among(procfs, pids, buf)?;
    let complete = nss.skipped == 0 && nss.error_count == 0 && nss.skipped_lines.is_empty();
    Ok((
        mountinfo::tmpfs_devices(nss.tables()),
        nss.skipped_lines,
        complete,
    ))
}
