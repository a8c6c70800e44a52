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
