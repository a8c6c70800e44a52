//! `statvfs(3)` of a mounted filesystem: its block and inode limits and usage.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

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
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path holds a NUL byte", path.display()))?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{}: statvfs: {e}", path.display()));
    }
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
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte")
    })?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The magic's C type differs between libc targets (`c_long`, `c_uint`): compare as i64.
    #[expect(
        clippy::unnecessary_cast,
        reason = "f_type and the magic differ in type per target"
    )]
    let hugetlbfs = st.f_type as i64 == libc::HUGETLBFS_MAGIC as i64;
    Ok(hugetlbfs)
}
