//! Reaching a mount point safely: `root` (the host root, or `/proc/PID/root` for another mount
//! namespace) is opened as given; the mount point is then resolved *inside* it with `openat2`
//! (`RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`): `..` cannot climb out of the
//! root and no symlink is followed, so a process that owns its namespace's paths cannot point the
//! agent at another filesystem. The descriptor is then used for everything else (fstat, fstatvfs,
//! and the walk through `/proc/self/fd/N`), so the path is looked up once.

use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::procfs::escape::Name;

/// An open mount point.
pub struct MountDir {
    pub fd: OwnedFd,
}

impl MountDir {
    /// A path to the directory through the agent's own descriptor table, for a walk.
    pub fn walk_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Opens `mount_point` (an absolute path as mountinfo shows it) under `root`; errors name `shown`.
pub fn open_mount_point(root: &Path, mount_point: &Name, shown: &Path) -> Result<MountDir, String> {
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open(root, dir_flags, Mode::empty()).map_err(|e| {
        let e = std::io::Error::from(e);
        format!("{}: root {}: {e}", shown.display(), root.display())
    })?;
    let rel = mount_point.as_bytes();
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    if rel.contains(&0) {
        return Err(format!("{}: mount point holds a NUL byte", shown.display()));
    }
    let fd = rustix::fs::openat2(
        &root_fd,
        std::ffi::OsStr::from_bytes(rel),
        dir_flags | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let why = if e == rustix::io::Errno::LOOP {
            "a symlink on the way (not followed)".to_string()
        } else {
            std::io::Error::from(e).to_string()
        };
        format!("{}: {why}", shown.display())
    })?;
    Ok(MountDir { fd })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    #[test]
    fn resolves_inside_the_root_and_follows_no_symlink() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("dev/shm")).expect("mkdir");
        std::fs::write(root.path().join("dev/shm/f"), b"x").expect("write");
        symlink(outside.path(), root.path().join("escape")).expect("symlink");
        symlink("/", root.path().join("abs")).expect("symlink");
        let open = |p: &str| open_mount_point(root.path(), &Name::from(p), Path::new(p));

        let d = open("/dev/shm").expect("a plain directory");
        let want = std::fs::metadata(root.path().join("dev/shm")).expect("stat");
        let got = std::fs::metadata(d.walk_path()).expect("stat via fd");
        assert_eq!((got.dev(), got.ino()), (want.dev(), want.ino()));
        assert!(d.walk_path().join("f").exists(), "walkable through the fd");

        // `..` stays in the root: /../../dev/shm is /dev/shm of the root.
        let d = open("/../../dev/shm").expect("clamped");
        let got = std::fs::metadata(d.walk_path()).expect("stat via fd");
        assert_eq!(got.ino(), want.ino());
        // The root itself.
        let d = open("/").expect("root");
        let got = std::fs::metadata(d.walk_path()).expect("stat via fd");
        assert_eq!(
            got.ino(),
            std::fs::metadata(root.path()).expect("stat").ino()
        );

        for bad in ["/escape", "/abs/tmp", "/escape/x"] {
            let e = open(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} must not resolve"));
            assert!(e.starts_with(bad), "{e}");
        }
        assert!(open("/missing").is_err());
        assert!(open("/dev/shm/f").is_err(), "not a directory");
        let nul = Name::new(&b"/a\0b"[..]);
        assert!(
            open_mount_point(root.path(), &nul, Path::new("/a"))
                .err()
                .is_some_and(|e| e.contains("NUL"))
        );
    }
}
