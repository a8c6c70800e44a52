//! `statvfs(3)` of a mounted filesystem: its block and inode limits and usage.

use std::{os::unix::ffi::OsStrExt, path::Path};

/// What `statvfs` says of a tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    /// `None` for an unlimited tmpfs (`size=0`): the kernel then reports no block counts.
    pub limit_bytes: Option<u64>,
    pub allocated_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
    pub inodes_limit: Option<u64>,
}

pub fn statvfs(path: &Path) -> Result<FsStat, String> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(format!("{}: path holds a NUL byte", path.display()));
    }
    let st = rustix::fs::statvfs(path)
        .map_err(|e| format!("{}: statvfs: {}", path.display(), std::io::Error::from(e)))?;
    let frsize = st.f_frsize;
    let blocks = st.f_blocks;
    let files = st.f_files;
    let (limit_bytes, allocated_bytes) = if blocks > 0 {
        (
            Some(blocks.saturating_mul(frsize)),
            Some(blocks.saturating_sub(st.f_bfree).saturating_mul(frsize)),
        )
    } else {
        (None, None)
    };
    let (inodes_used, inodes_limit) = if files > 0 {
        (Some(files.saturating_sub(st.f_ffree)), Some(files))
    } else {
        (None, None)
    };
    Ok(FsStat {
        limit_bytes,
        allocated_bytes,
        inodes_used,
        inodes_limit,
    })
}

/// Whether `path` (a file, or a `/proc/PID/fd/N` link, which `statfs` follows) lives on hugetlbfs:
/// an `MFD_HUGETLB` memfd or a hugetlbfs file, whose pages are hugetlb, not `Shmem`.
pub fn is_hugetlbfs(path: &Path) -> std::io::Result<bool> {
    /// `HUGETLBFS_MAGIC` of `linux/magic.h`.
    const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
    let st = rustix::fs::statfs(path)?;
    // `f_type`'s C type differs between targets (signed on some): compare its low 32 bits.
    #[expect(
        clippy::cast_sign_loss,
        reason = "f_type is a signed integer on this target; the magic is its bit pattern"
    )]
    let magic = (st.f_type as u64) & 0xffff_ffff;
    Ok(magic == HUGETLBFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        statvfs(dir.path()).expect("statvfs of an existing directory");
        let missing = dir.path().join("missing");
        let e = statvfs(&missing).expect_err("missing path");
        assert!(
            e.starts_with(&missing.display().to_string()) && e.contains("statvfs"),
            "{e}"
        );
        let nul = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b"));
        assert!(statvfs(nul).expect_err("NUL").contains("NUL byte"));
    }

    #[test]
    fn a_plain_directory_is_not_hugetlbfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_hugetlbfs(dir.path()).expect("statfs"));
        assert!(is_hugetlbfs(&dir.path().join("missing")).is_err());
    }
}
